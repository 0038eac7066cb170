//! The cluster state machine: what Raft replicates, and how a command changes it.
//!
//! Applying a command is pure and deterministic: every timestamp comes inside the
//! command (stamped by the node that proposed it), never from the clock of the node
//! applying it. The encoding is postcard with a leading version byte.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::services::legacy::{ServicesStateV1, ServicesStateV2, ServicesStateV3};
use super::services::{ServiceCommand, ServicesState};

/// Version byte that starts every encoded [`ClusterState`]. Version 1 ([`ClusterStateV1`],
/// services without the rollback settings, `--no-healthcheck`, the force counter and the
/// older specs) and version 2 ([`ClusterStateV2`], services without the endpoint mode, the
/// exposed ports and the VIP index) and version 3 ([`ClusterStateV3`], before secrets) are
/// still read, and converted.
pub const STATE_VERSION: u8 = 4;

/// The version byte of a [`ClusterStateV1`].
pub const STATE_VERSION_V1: u8 = 1;

/// The version byte of a [`ClusterStateV2`].
pub const STATE_VERSION_V2: u8 = 2;

/// The version byte of a [`ClusterStateV3`].
pub const STATE_VERSION_V3: u8 = 3;

/// Milliseconds since the Unix epoch.
pub type Millis = u64;

/// A node's role (`manager`, `worker`), its scheduling availability (`active`, `pause`,
/// `drain`) and liveness (`ready`, `down`, `unknown`): the scheduler's types and words. The
/// records always had the same variants in the same order, so their postcard bytes (and the
/// variant names `node.json` writes) are the same.
pub use shoal_scheduler::{Availability, NodeRole as Role, NodeStatus};

/// The cluster itself: identity, CA and token generations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterRecord {
    /// Cluster ID.
    pub id: String,
    /// When `init` ran.
    pub created_at: Millis,
    /// CA certificate (DER).
    pub ca_cert_der: Vec<u8>,
    /// CA private key (PKCS#8 DER). Replicated to managers only: workers never run Raft.
    pub ca_key_der: Vec<u8>,
    /// Current generation of worker join tokens.
    pub worker_token_generation: u64,
    /// Current generation of manager join tokens.
    pub manager_token_generation: u64,
    /// Ended tasks kept per slot.
    pub task_history_limit: u32,
}

/// A node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// Node ID (derived from the key).
    pub id: String,
    /// ed25519 public key.
    pub public_key: [u8; 32],
    /// The u64 this node is known by in Raft.
    pub raft_id: u64,
    /// Reported hostname.
    pub hostname: String,
    /// Advertise address `ip:port`.
    pub addr: String,
    /// Manager or worker.
    pub role: Role,
    /// Scheduling availability.
    pub availability: Availability,
    /// Liveness.
    pub status: NodeStatus,
    /// Operator labels.
    pub labels: BTreeMap<String, String>,
    /// `os/arch`.
    pub platform: String,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// CPUs.
    pub cpus: u32,
    /// Drivers offered.
    pub drivers: Vec<String>,
    /// Shoal version.
    pub version: String,
    /// When the node was added.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
}

/// Everything Raft replicates.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// Set by `init`.
    pub cluster: Option<ClusterRecord>,
    /// Nodes by ID.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Raft IDs to node IDs.
    pub raft_ids: BTreeMap<u64, String>,
    /// Keys of removed nodes: refused on every connection.
    pub removed_keys: BTreeSet<[u8; 32]>,
    /// Services and tasks.
    pub services: ServicesState,
    /// What each node offers tasks beyond drivers and capacity, by node ID, as its daemon
    /// reports it ([`Command::SetNodeFacilities`]); a node without an entry reported nothing.
    pub facilities: BTreeMap<String, NodeFacilities>,
}

/// What a node offers tasks beyond drivers and capacity, as its daemon reports it on every
/// worker session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFacilities {
    /// Started with `--allow-privileged`: runs `--privileged` and `--cap-add` tasks.
    pub allow_privileged: bool,
    /// Its device paths (character and block devices under `/dev`).
    pub devices: Vec<String>,
}

/// [`ClusterState`] as version 3 stored it (in snapshots after the byte
/// [`STATE_VERSION_V3`], and in [`Command::RestoreV3`]): services before secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStateV3 {
    /// Set by `init`.
    pub cluster: Option<ClusterRecord>,
    /// Nodes by ID.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Raft IDs to node IDs.
    pub raft_ids: BTreeMap<u64, String>,
    /// Keys of removed nodes.
    pub removed_keys: BTreeSet<[u8; 32]>,
    /// Services and tasks.
    pub services: ServicesStateV3,
}

impl From<ClusterStateV3> for ClusterState {
    fn from(s: ClusterStateV3) -> Self {
        let ClusterStateV3 {
            cluster,
            nodes,
            raft_ids,
            removed_keys,
            services,
        } = s;
        ClusterState {
            cluster,
            nodes,
            raft_ids,
            removed_keys,
            services: services.into(),
            facilities: BTreeMap::new(),
        }
    }
}

/// [`ClusterState`] as version 1 stored it (in snapshots after the byte
/// [`STATE_VERSION_V1`], and in [`Command::Restore`]): services of the version-1 shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStateV1 {
    /// Set by `init`.
    pub cluster: Option<ClusterRecord>,
    /// Nodes by ID.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Raft IDs to node IDs.
    pub raft_ids: BTreeMap<u64, String>,
    /// Keys of removed nodes.
    pub removed_keys: BTreeSet<[u8; 32]>,
    /// Services and tasks.
    pub services: ServicesStateV1,
}

impl From<ClusterStateV1> for ClusterState {
    fn from(s: ClusterStateV1) -> Self {
        let ClusterStateV1 {
            cluster,
            nodes,
            raft_ids,
            removed_keys,
            services,
        } = s;
        ClusterState {
            cluster,
            nodes,
            raft_ids,
            removed_keys,
            services: services.into(),
            facilities: BTreeMap::new(),
        }
    }
}

/// [`ClusterState`] as version 2 stored it (in snapshots after the byte
/// [`STATE_VERSION_V2`], and in [`Command::RestoreV2`]): services of the version-2 shape.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStateV2 {
    /// Set by `init`.
    pub cluster: Option<ClusterRecord>,
    /// Nodes by ID.
    pub nodes: BTreeMap<String, NodeRecord>,
    /// Raft IDs to node IDs.
    pub raft_ids: BTreeMap<u64, String>,
    /// Keys of removed nodes.
    pub removed_keys: BTreeSet<[u8; 32]>,
    /// Services and tasks.
    pub services: ServicesStateV2,
}

impl From<ClusterStateV2> for ClusterState {
    fn from(s: ClusterStateV2) -> Self {
        let ClusterStateV2 {
            cluster,
            nodes,
            raft_ids,
            removed_keys,
            services,
        } = s;
        ClusterState {
            cluster,
            nodes,
            raft_ids,
            removed_keys,
            services: services.into(),
            facilities: BTreeMap::new(),
        }
    }
}

/// A change to the cluster state, proposed through Raft.
///
/// New variants are only ever appended: the log holds encoded commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// `init`: creates the cluster with its first manager.
    InitCluster {
        /// The cluster.
        cluster: ClusterRecord,
        /// The first manager.
        node: NodeRecord,
    },
    /// Adds a node or replaces its record (re-registration after an address change).
    UpsertNode(NodeRecord),
    /// Records a node's liveness.
    SetNodeStatus {
        /// Node ID.
        id: String,
        /// New status.
        status: NodeStatus,
        /// When.
        at: Millis,
    },
    /// Records a node's advertise address.
    SetNodeAddr {
        /// Node ID.
        id: String,
        /// New address.
        addr: String,
        /// When.
        at: Millis,
    },
    /// `node update`.
    UpdateNode {
        /// Node ID.
        id: String,
        /// New availability.
        availability: Option<Availability>,
        /// Labels to add or replace.
        label_add: BTreeMap<String, String>,
        /// Labels to remove.
        label_rm: Vec<String>,
        /// When.
        at: Millis,
    },
    /// `join-token --rotate ROLE`.
    RotateToken {
        /// Which role's generation to bump.
        role: Role,
    },
    /// `node rm`: the node's key is refused from then on.
    RemoveNode {
        /// Node ID.
        id: String,
    },
    /// A node admitted with a valid join token (and proof it holds its key): added, or,
    /// when its key is already known and the node is down, its record refreshed (labels and
    /// availability kept). Refused for a removed key, a ready node, and a manager joining
    /// with a worker token (see [`admission`]).
    AdmitNode(NodeRecord),
    /// `node promote` / `node demote`: the leader then changes Raft's voters to match.
    SetRole {
        /// Node ID.
        id: String,
        /// New role.
        role: Role,
        /// When.
        at: Millis,
    },
    /// Services and tasks: see [`ServiceCommand`].
    Services(ServiceCommand),
    /// `init --force-new-cluster` as version 1 wrote it (a state of version 1): applied as
    /// [`Command::RestoreV3`] of the converted state. Kept for the log; not proposed.
    Restore(Box<ClusterStateV1>),
    /// A node reported capacity or drivers different from its record.
    SetNodeResources {
        /// Node ID.
        id: String,
        /// Memory in bytes.
        memory_bytes: u64,
        /// CPUs.
        cpus: u32,
        /// Drivers offered.
        drivers: Vec<String>,
        /// When.
        at: Millis,
    },
    /// `init --force-new-cluster` as version 2 wrote it (a state of version 2): applied as
    /// [`Command::RestoreV3`] of the converted state. Kept for the log; not proposed.
    RestoreV2(Box<ClusterStateV2>),
    /// `init --force-new-cluster` as version 3 wrote it: applied as [`Command::RestoreV4`] of
    /// the converted state. Kept for the log; not proposed.
    RestoreV3(Box<ClusterStateV3>),
    /// `init --force-new-cluster`: a new Raft group starts from this whole state, taken
    /// from the surviving manager (its other managers already dropped from it).
    RestoreV4(Box<ClusterState>),
    /// A node reported facilities different from the recorded ones.
    SetNodeFacilities {
        /// Node ID.
        id: String,
        /// What it offers.
        facilities: NodeFacilities,
    },
}

/// Whether a joiner's `record` may be admitted: never for a removed key (a join does not
/// clear a removal), never over a ready node's record, and never to turn a manager into a
/// worker.
pub fn admission(state: &ClusterState, record: &NodeRecord) -> Result<(), String> {
    if state.removed_keys.contains(&record.public_key) {
        return Err(format!(
            "node {} was removed from this cluster and cannot join again with the same key: on that machine stop the daemon, delete node.key in its state dir, start it and join again as a new node",
            record.id
        ));
    }
    if let Some(old) = state.nodes.get(&record.id) {
        if old.status == NodeStatus::Ready {
            return Err(format!(
                "node {} ({}) is already a ready member of this cluster: run `shoal leave` on it first",
                old.hostname, old.id
            ));
        }
        if old.role == Role::Manager && record.role != Role::Manager {
            return Err(format!(
                "node {} is a manager of this cluster: join it with a manager token, or demote it first",
                old.hostname
            ));
        }
    }
    Ok(())
}

/// The answer to a command once applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Nothing to report (membership and blank entries, too).
    Done,
    /// A token generation after a rotation.
    Generation(u64),
    /// The command was refused by the state machine; nothing changed.
    Refused(String),
}

impl ClusterState {
    /// Applies `cmd`; a refused command changes nothing.
    pub fn apply(&mut self, cmd: &Command) -> CommandResult {
        match cmd {
            Command::InitCluster { cluster, node } => {
                if self.cluster.is_some() {
                    return CommandResult::Refused("the cluster is already initialized".into());
                }
                self.cluster = Some(cluster.clone());
                self.insert_node(node.clone());
                CommandResult::Done
            }
            Command::UpsertNode(node) => {
                if self.removed_keys.contains(&node.public_key) {
                    return CommandResult::Refused(format!(
                        "node {} was removed from the cluster",
                        node.id
                    ));
                }
                self.insert_node(node.clone());
                CommandResult::Done
            }
            Command::SetNodeStatus { id, status, at } => match self.nodes.get_mut(id) {
                Some(n) => {
                    n.status = *status;
                    n.updated_at = *at;
                    CommandResult::Done
                }
                None => unknown_node(id),
            },
            Command::SetNodeAddr { id, addr, at } => match self.nodes.get_mut(id) {
                Some(n) => {
                    n.addr.clone_from(addr);
                    n.updated_at = *at;
                    CommandResult::Done
                }
                None => unknown_node(id),
            },
            Command::UpdateNode {
                id,
                availability,
                label_add,
                label_rm,
                at,
            } => match self.nodes.get_mut(id) {
                Some(n) => {
                    if let Some(a) = availability {
                        n.availability = *a;
                    }
                    for k in label_rm {
                        n.labels.remove(k);
                    }
                    for (k, v) in label_add {
                        n.labels.insert(k.clone(), v.clone());
                    }
                    n.updated_at = *at;
                    CommandResult::Done
                }
                None => unknown_node(id),
            },
            Command::RotateToken { role } => match self.cluster.as_mut() {
                Some(c) => {
                    let generation = match role {
                        Role::Worker => &mut c.worker_token_generation,
                        Role::Manager => &mut c.manager_token_generation,
                    };
                    *generation += 1;
                    CommandResult::Generation(*generation)
                }
                None => CommandResult::Refused("the cluster is not initialized".into()),
            },
            Command::SetRole { id, role, at } => {
                if *role == Role::Worker
                    && self.nodes.get(id).is_some_and(|n| n.role == Role::Manager)
                    && self
                        .nodes
                        .values()
                        .filter(|n| n.role == Role::Manager)
                        .count()
                        <= 1
                {
                    return CommandResult::Refused(
                        "cannot demote the last manager of the cluster: promote another node first"
                            .into(),
                    );
                }
                match self.nodes.get_mut(id) {
                    Some(n) => {
                        n.role = *role;
                        n.updated_at = *at;
                        CommandResult::Done
                    }
                    None => unknown_node(id),
                }
            }
            Command::AdmitNode(node) => {
                if let Err(reason) = admission(self, node) {
                    return CommandResult::Refused(reason);
                }
                let mut node = node.clone();
                if let Some(old) = self.nodes.get(&node.id) {
                    // The same node joining again (it proved it holds the key): what the
                    // operator set on it stays.
                    node.labels.clone_from(&old.labels);
                    node.availability = old.availability;
                    node.created_at = old.created_at;
                }
                self.insert_node(node);
                CommandResult::Done
            }
            Command::SetNodeResources {
                id,
                memory_bytes,
                cpus,
                drivers,
                at,
            } => match self.nodes.get_mut(id) {
                Some(n) => {
                    n.memory_bytes = *memory_bytes;
                    n.cpus = *cpus;
                    n.drivers.clone_from(drivers);
                    n.updated_at = *at;
                    CommandResult::Done
                }
                None => unknown_node(id),
            },
            Command::Restore(state) => {
                *self = ClusterState::from((**state).clone());
                CommandResult::Done
            }
            Command::RestoreV2(state) => {
                *self = ClusterState::from((**state).clone());
                CommandResult::Done
            }
            Command::RestoreV3(state) => {
                *self = ClusterState::from((**state).clone());
                CommandResult::Done
            }
            Command::RestoreV4(state) => {
                *self = (**state).clone();
                CommandResult::Done
            }
            Command::SetNodeFacilities { id, facilities } => {
                if self.nodes.contains_key(id) {
                    self.facilities.insert(id.clone(), facilities.clone());
                    CommandResult::Done
                } else {
                    unknown_node(id)
                }
            }

            Command::Services(cmd) => match self.services.apply(cmd, &self.nodes) {
                Ok(_) => CommandResult::Done,
                Err(reason) => CommandResult::Refused(reason),
            },
            Command::RemoveNode { id } => match self.nodes.remove(id) {
                Some(n) => {
                    self.facilities.remove(id);
                    self.raft_ids.remove(&n.raft_id);
                    self.removed_keys.insert(n.public_key);
                    CommandResult::Done
                }
                None => unknown_node(id),
            },
        }
    }

    fn insert_node(&mut self, node: NodeRecord) {
        self.raft_ids.insert(node.raft_id, node.id.clone());
        self.nodes.insert(node.id.clone(), node);
    }

    /// The node known to Raft as `raft_id`.
    pub fn node_by_raft_id(&self, raft_id: u64) -> Option<&NodeRecord> {
        self.raft_ids
            .get(&raft_id)
            .and_then(|id| self.nodes.get(id))
    }

    /// Resolves a user's NODE argument: an exact ID, a hostname, or a unique ID prefix.
    pub fn resolve_node(&self, reference: &str) -> Result<&NodeRecord, String> {
        if reference.is_empty() {
            return Err("a node ID, ID prefix or hostname is required".into());
        }
        if let Some(n) = self.nodes.get(reference) {
            return Ok(n);
        }
        let by_name: Vec<&NodeRecord> = self
            .nodes
            .values()
            .filter(|n| n.hostname == reference)
            .collect();
        match by_name.len() {
            1 => return Ok(by_name[0]),
            0 => {}
            k => {
                return Err(format!(
                    "node `{reference}` is ambiguous: {k} nodes have that hostname; use an ID"
                ));
            }
        }
        let by_prefix: Vec<&NodeRecord> = self
            .nodes
            .values()
            .filter(|n| n.id.starts_with(reference))
            .collect();
        match by_prefix.len() {
            1 => Ok(by_prefix[0]),
            0 => Err(format!("no such node: {reference}")),
            k => Err(format!(
                "node `{reference}` is ambiguous: it matches {k} node IDs; give more characters"
            )),
        }
    }

    /// Encodes the state with its version byte.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![STATE_VERSION];
        out.extend(postcard::to_stdvec(self).unwrap_or_default());
        out
    }

    /// Decodes a state written by [`ClusterState::encode`], or by an earlier version (then
    /// converted into today's).
    pub fn decode(bytes: &[u8]) -> Result<ClusterState, String> {
        match bytes.split_first() {
            Some((&STATE_VERSION, rest)) => {
                postcard::from_bytes(rest).map_err(|e| format!("corrupt cluster state: {e}"))
            }
            Some((&STATE_VERSION_V1, rest)) => postcard::from_bytes::<ClusterStateV1>(rest)
                .map(ClusterState::from)
                .map_err(|e| format!("corrupt cluster state (version {STATE_VERSION_V1}): {e}")),
            Some((&STATE_VERSION_V2, rest)) => postcard::from_bytes::<ClusterStateV2>(rest)
                .map(ClusterState::from)
                .map_err(|e| format!("corrupt cluster state (version {STATE_VERSION_V2}): {e}")),
            Some((&STATE_VERSION_V3, rest)) => postcard::from_bytes::<ClusterStateV3>(rest)
                .map(ClusterState::from)
                .map_err(|e| format!("corrupt cluster state (version {STATE_VERSION_V3}): {e}")),
            Some((v, _)) => Err(format!(
                "cluster state version {v} is not supported by this shoal (expects {STATE_VERSION})"
            )),
            None => Err("empty cluster state".into()),
        }
    }
}

fn unknown_node(id: &str) -> CommandResult {
    CommandResult::Refused(format!("no such node: {id}"))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn node(id: &str, host: &str, raft_id: u64) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            public_key: [raft_id as u8; 32],
            raft_id,
            hostname: host.into(),
            addr: "127.0.0.1:4747".into(),
            role: Role::Manager,
            availability: Availability::Active,
            status: NodeStatus::Ready,
            labels: BTreeMap::new(),
            platform: "linux/x86_64".into(),
            memory_bytes: 1 << 30,
            cpus: 2,
            drivers: vec!["process".into()],
            version: "0".into(),
            created_at: 1,
            updated_at: 1,
        }
    }

    fn cluster() -> ClusterRecord {
        ClusterRecord {
            id: "c1".into(),
            created_at: 1,
            ca_cert_der: vec![1],
            ca_key_der: vec![2],
            worker_token_generation: 0,
            manager_token_generation: 0,
            task_history_limit: 5,
        }
    }

    #[test]
    fn init_once_then_refused() {
        let mut s = ClusterState::default();
        let init = Command::InitCluster {
            cluster: cluster(),
            node: node("abc", "h1", 7),
        };
        assert_eq!(s.apply(&init), CommandResult::Done);
        let before = s.clone();
        assert!(matches!(s.apply(&init), CommandResult::Refused(_)));
        assert_eq!(s, before);
        assert_eq!(
            s.node_by_raft_id(7).map(|n| n.hostname.as_str()),
            Some("h1")
        );
    }

    #[test]
    fn issue_14_a_join_never_replaces_a_live_record_nor_demotes_a_manager() {
        let mut s = ClusterState::default();
        s.apply(&Command::InitCluster {
            cluster: cluster(),
            node: node("a", "m1", 1),
        });
        let mut w = node("b", "w", 2);
        w.role = Role::Worker;
        assert_eq!(s.apply(&Command::AdmitNode(w.clone())), CommandResult::Done);
        s.apply(&Command::UpdateNode {
            id: "b".into(),
            availability: Some(Availability::Drain),
            label_add: [("zone".to_string(), "attic".to_string())].into(),
            label_rm: vec![],
            at: 2,
        });
        // Ready: a second join with the same key is refused, the record is untouched.
        let mut again = w;
        again.hostname = "renamed".into();
        assert!(matches!(
            s.apply(&Command::AdmitNode(again.clone())),
            CommandResult::Refused(_)
        ));
        assert_eq!(s.nodes["b"].hostname, "w");
        // Down (it left): it may join again, keeping its labels and availability.
        s.apply(&Command::SetNodeStatus {
            id: "b".into(),
            status: NodeStatus::Down,
            at: 3,
        });
        assert_eq!(s.apply(&Command::AdmitNode(again)), CommandResult::Done);
        assert_eq!(s.nodes["b"].hostname, "renamed");
        assert_eq!(s.nodes["b"].labels["zone"], "attic");
        assert_eq!(s.nodes["b"].availability, Availability::Drain);
        // A down manager cannot be turned into a worker by a worker token.
        s.apply(&Command::SetNodeStatus {
            id: "a".into(),
            status: NodeStatus::Down,
            at: 4,
        });
        let mut as_worker = node("a", "m1", 1);
        as_worker.role = Role::Worker;
        assert!(matches!(
            s.apply(&Command::AdmitNode(as_worker)),
            CommandResult::Refused(_)
        ));
        assert_eq!(s.nodes["a"].role, Role::Manager);
    }

    #[test]
    fn resolve_by_id_prefix_and_hostname() {
        let mut s = ClusterState::default();
        s.apply(&Command::InitCluster {
            cluster: cluster(),
            node: node("abc1", "alpha", 1),
        });
        s.apply(&Command::UpsertNode(node("abd2", "beta", 2)));
        s.apply(&Command::UpsertNode(node("xyz3", "beta", 3)));
        assert_eq!(s.resolve_node("abc1").unwrap().id, "abc1");
        assert_eq!(s.resolve_node("alpha").unwrap().id, "abc1");
        assert_eq!(s.resolve_node("abd").unwrap().id, "abd2");
        assert!(s.resolve_node("ab").unwrap_err().contains("ambiguous"));
        assert!(s.resolve_node("beta").unwrap_err().contains("ambiguous"));
        assert!(s.resolve_node("nope").unwrap_err().contains("no such node"));
        assert!(s.resolve_node("").is_err());
    }

    #[test]
    fn removed_key_is_refused_and_rotation_counts() {
        let mut s = ClusterState::default();
        s.apply(&Command::InitCluster {
            cluster: cluster(),
            node: node("a", "h", 1),
        });
        s.apply(&Command::UpsertNode(node("b", "w", 2)));
        assert_eq!(
            s.apply(&Command::RemoveNode { id: "b".into() }),
            CommandResult::Done
        );
        assert!(s.node_by_raft_id(2).is_none());
        assert!(matches!(
            s.apply(&Command::UpsertNode(node("b", "w", 2))),
            CommandResult::Refused(_)
        ));
        // A join never clears a removal by itself (issue 14).
        assert!(matches!(
            s.apply(&Command::AdmitNode(node("b", "w", 2))),
            CommandResult::Refused(_)
        ));
        assert!(s.removed_keys.contains(&[2u8; 32]));
        assert!(s.node_by_raft_id(2).is_none());
        assert_eq!(
            s.apply(&Command::RotateToken { role: Role::Worker }),
            CommandResult::Generation(1)
        );
        assert_eq!(
            s.apply(&Command::RotateToken { role: Role::Worker }),
            CommandResult::Generation(2)
        );
        assert!(matches!(
            s.apply(&Command::SetNodeStatus {
                id: "zz".into(),
                status: NodeStatus::Down,
                at: 2
            }),
            CommandResult::Refused(_)
        ));
    }

    #[test]
    fn update_node_labels_and_availability() {
        let mut s = ClusterState::default();
        s.apply(&Command::InitCluster {
            cluster: cluster(),
            node: node("a", "h", 1),
        });
        let mut add = BTreeMap::new();
        add.insert("zone".to_string(), "attic".to_string());
        s.apply(&Command::UpdateNode {
            id: "a".into(),
            availability: Some(Availability::Drain),
            label_add: add,
            label_rm: vec![],
            at: 9,
        });
        let n = &s.nodes["a"];
        assert_eq!(n.availability, Availability::Drain);
        assert_eq!(n.labels.get("zone").map(String::as_str), Some("attic"));
        assert_eq!(n.updated_at, 9);
    }

    #[test]
    fn encode_decode_round_trip_and_version_check() {
        let mut s = ClusterState::default();
        s.apply(&Command::InitCluster {
            cluster: cluster(),
            node: node("a", "h", 1),
        });
        let bytes = s.encode();
        assert_eq!(ClusterState::decode(&bytes).unwrap(), s);
        let mut bad = bytes.clone();
        bad[0] = 99;
        assert!(
            ClusterState::decode(&bad)
                .unwrap_err()
                .contains("version 99")
        );
        assert!(ClusterState::decode(&bytes[..bytes.len() / 2]).is_err());
        assert!(ClusterState::decode(&[]).is_err());
    }
}
