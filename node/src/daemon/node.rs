//! The shared `Node`: the handles every part of the daemon uses (state dir, key, QUIC
//! endpoint and pool, gossip, worker, membership, trust view), facts about this machine,
//! and the error texts and mappings the handlers share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use tokio::sync::{RwLock, mpsc};

use crate::api::server::ApiError;
use crate::config::SavedCluster;
use crate::gossip::Gossip;
use crate::manager::{Manager, ManagerError};
use crate::net::{Endpoint, Pool};
use crate::pki::{NodeId, NodeKey};
use crate::state_dir::StateDir;
use crate::trust::{RefusalLog, TrustWatch};
use crate::worker::WorkerHandle;

/// Why a peer closes the connection of a removed node (close code 2).
pub const REMOVED_REASON: &str = "this node was removed from the cluster";

pub(crate) const NOT_IN_CLUSTER: &str =
    "this node is not part of a cluster: run `shoal init` or `shoal join`";
pub(crate) const NOT_A_MANAGER: &str =
    "this node is not a manager: run it on a manager or point -H at one";

/// Where the Raft leader is.
pub(crate) enum LeaderAt {
    /// This node leads.
    Here,
    /// Another manager leads; a connection to it.
    Remote(Remote),
}

/// The leader when another manager leads.
pub(crate) struct Remote {
    pub(crate) conn: quinn::Connection,
    pub(crate) raft_id: u64,
    pub(crate) key: [u8; 32],
}

/// The node's membership, when it has one.
pub(crate) struct Membership {
    pub(crate) saved: SavedCluster,
    pub(crate) manager: Option<Arc<Manager>>,
}

/// Everything the daemon's handlers share. Built once by `daemon::run`; the lifecycle
/// operations (`lifecycle.rs`, `crate::roles`) replace what is inside the locks.
pub struct Node {
    pub(crate) state_dir: StateDir,
    pub(crate) key: NodeKey,
    pub(crate) node_id: String,
    pub(crate) hostname: String,
    pub(crate) listen_addr: SocketAddr,
    pub(crate) endpoint: Endpoint,
    pub(crate) pool: Pool,
    pub(crate) dialed_tx: mpsc::UnboundedSender<(NodeId, quinn::Connection)>,
    pub(crate) gossip: std::sync::RwLock<Option<Gossip>>,
    pub(crate) worker: std::sync::Mutex<Option<WorkerHandle>>,
    pub(crate) drivers: Vec<String>,
    pub(crate) removed_notice: std::sync::Mutex<Option<String>>,
    pub(crate) advertise: std::sync::RwLock<SocketAddr>,
    pub(crate) membership: RwLock<Option<Membership>>,
    pub(crate) raft_scale: f64,
    /// Serializes `init`/`leave`/`join` and role changes, which replace the membership.
    pub(crate) lifecycle: tokio::sync::Mutex<()>,
    /// Managers and removed keys (see `authz.rs`); every connection watches it.
    pub(crate) trust: TrustWatch,
    /// Refusals of peer requests, logged once per peer and tag.
    pub(crate) refusals: RefusalLog,
    /// Lifetime of the node certificates this node issues (as a manager).
    pub(crate) cert_expiry: Duration,
    /// Whether copies kept by `init --force-new-cluster` may be in the state dir (checked
    /// once at start, set when one is made, cleared once they are deleted), so the
    /// manager's tick does not read the directory for nothing.
    pub(crate) force_new_cluster_copies: AtomicBool,
    /// Whether the worker may use Docker (not excluded by `--drivers`), whether or not the
    /// engine answered at start.
    pub(crate) docker_allowed: bool,
    /// The routing mesh: this node's published ports.
    pub(crate) mesh: crate::mesh::Mesh,
    /// The drivers the mesh finds this node's tasks with (set when the worker starts).
    pub(crate) mesh_tasks: Arc<super::mesh::DriverTasks>,
    /// The secrets of this node's tasks, as the leader sent them (memory only).
    pub(crate) worker_secrets: Arc<crate::worker::SecretStore>,
    /// On the leader: the published ports each node reported it cannot listen on (soft
    /// state, sent again by every worker session; `service inspect` and `ps` show them).
    pub(crate) publish_problems:
        std::sync::Mutex<std::collections::BTreeMap<String, Vec<crate::session::PublishProblem>>>,
    /// The containers' Docker network (`daemon --network`).
    pub(crate) docker_network: String,
    /// `daemon --allow-privileged`.
    pub(crate) allow_privileged: bool,
    /// Service discovery's settings (`daemon --discovery`), if on.
    pub(crate) discovery_opts: Option<super::discovery::DiscoveryOptions>,
    /// What service discovery runs while the worker does.
    pub(crate) discovery: std::sync::Mutex<Option<super::discovery::Running>>,
    /// Service discovery's state, as `info` shows it.
    pub(crate) discovery_status: std::sync::RwLock<String>,
}

impl Node {
    /// Records service discovery's state for `info`.
    pub(crate) fn set_discovery_status(&self, status: String) {
        *self
            .discovery_status
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = status;
    }

    pub(crate) fn advertise(&self) -> SocketAddr {
        *self
            .advertise
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn set_advertise(&self, addr: SocketAddr) {
        *self
            .advertise
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = addr;
    }

    /// The connection pool to other nodes.
    /// On the leader: what node `node_id` reported it cannot publish (empty: nothing).
    pub(crate) fn record_publish_problems(
        &self,
        node_id: &str,
        problems: Vec<crate::session::PublishProblem>,
    ) {
        let mut all = self
            .publish_problems
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for p in &problems {
            let known = all
                .get(node_id)
                .is_some_and(|old| old.iter().any(|o| o == p));
            if !known {
                tracing::warn!(node = %node_id, port = p.published, service = %p.service_id, "a node cannot publish a port: {}", p.error);
            }
        }
        if problems.is_empty() {
            all.remove(node_id);
        } else {
            all.insert(node_id.to_owned(), problems);
        }
    }

    /// On the leader: the nodes that cannot publish a port of `service_id`, and why.
    pub(crate) fn publish_problems_of(
        &self,
        service_id: &str,
    ) -> Vec<(String, crate::session::PublishProblem)> {
        self.publish_problems
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .flat_map(|(node, ps)| {
                ps.iter()
                    .filter(|p| p.service_id == service_id)
                    .map(move |p| (node.clone(), p.clone()))
            })
            .collect()
    }

    pub(crate) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The drivers this node offers.
    pub(crate) fn drivers(&self) -> &[String] {
        &self.drivers
    }

    /// This node's public key.
    pub(crate) fn public_key(&self) -> [u8; 32] {
        self.key.public_key()
    }

    /// A SWIM packet from the peer with `key`.
    pub(crate) fn gossip_packet(&self, from: NodeId, key: [u8; 32], packet: bytes::Bytes) {
        if let Some(g) = self.gossip() {
            g.packet(&from, key, packet);
        }
    }

    /// The gossip handle, while the node is in a cluster.
    pub(crate) fn gossip(&self) -> Option<Gossip> {
        self.gossip
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// This node's ID.
    pub(crate) fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This node's advertise address now.
    pub(crate) fn advertise_addr(&self) -> SocketAddr {
        self.advertise()
    }

    /// The manager, when this node is one (no error path: for background loops).
    pub(crate) async fn manager_opt(&self) -> Option<Arc<Manager>> {
        self.membership
            .read()
            .await
            .as_ref()
            .and_then(|m| m.manager.clone())
    }
}

/// The API answer for a manager error: refusals are conflicts, a lost quorum or leader
/// is unavailability, anything else is internal.
pub(crate) fn manager_err(e: ManagerError) -> ApiError {
    match e {
        ManagerError::Refused(m) => ApiError::conflict(m),
        ManagerError::QuorumLost { .. } | ManagerError::NotLeader { .. } => {
            ApiError::unavailable(e.to_string())
        }
        other => ApiError::internal(other.to_string()),
    }
}

/// This machine's hostname (`localhost` when it has none).
pub(crate) fn system_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// `os/arch` of this machine.
pub(crate) fn platform() -> String {
    format!("{}/{}", std::env::consts::OS, std::env::consts::ARCH)
}

/// Memory of this machine in bytes.
pub fn memory_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .and_then(|v| v.parse::<u64>().ok())
                })
        })
        .map_or(0, |kb| kb * 1024)
}

/// CPUs of this machine.
pub fn cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// At most this many device paths are reported.
const MAX_DEVICES: usize = 1024;

/// The character and block devices under `dev` (and one directory down, such as
/// `/dev/dri/card0`), as absolute paths under `/dev`, sorted; pseudo-filesystems skipped.
pub fn devices_under(dev: &std::path::Path) -> Vec<String> {
    use std::os::unix::fs::FileTypeExt as _;
    let mut out = Vec::new();
    let visit = |dir: &std::path::Path, prefix: &str, depth: u8, out: &mut Vec<String>| {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return Vec::new();
        };
        let mut subdirs = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let Ok(t) = e.file_type() else { continue };
            if t.is_char_device() || t.is_block_device() {
                out.push(format!("{prefix}/{name}"));
            } else if t.is_dir()
                && depth == 0
                && !matches!(name.as_str(), "pts" | "shm" | "mqueue" | "hugepages")
            {
                subdirs.push((e.path(), format!("{prefix}/{name}")));
            }
        }
        subdirs
    };
    for (path, prefix) in visit(dev, "/dev", 0, &mut out) {
        visit(&path, &prefix, 1, &mut out);
    }
    out.sort();
    out.truncate(MAX_DEVICES);
    out
}

/// What this node offers tasks beyond drivers and capacity (reported on every worker
/// session when it is not the default).
pub fn facilities(allow_privileged: bool) -> crate::manager::state::NodeFacilities {
    crate::manager::state::NodeFacilities {
        allow_privileged,
        devices: devices_under(std::path::Path::new("/dev")),
    }
}

#[cfg(test)]
mod device_tests {
    #[test]
    fn issue_23_a_node_reports_its_devices_under_dev() {
        let dir = tempfile::tempdir().unwrap();
        // No device nodes can be made without privileges: /dev itself is the fixture.
        let found = super::devices_under(std::path::Path::new("/dev"));
        assert!(found.contains(&"/dev/null".to_string()), "{found:?}");
        assert!(
            found
                .iter()
                .all(|d| d.starts_with("/dev/") && !d.starts_with("/dev/pts/"))
        );
        // Plain files and an empty tree give nothing.
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        assert!(super::devices_under(dir.path()).is_empty());
    }
}
