//! The manager: openraft over redb holding the cluster state, and the API a node uses
//! to change and read it.

pub(crate) mod events;
pub(crate) mod network;
// Public only until `orchestrator::plan` (used by its tests alone) is `#[cfg(test)]` or goes.
pub(crate) mod orchestrator;
pub mod rpc;
pub mod services;
pub mod state;
pub(crate) mod store;
pub mod types;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::network::RaftNetworkFactory;
use openraft::{EmptyNode, ServerState, SnapshotPolicy};

use self::network::{NoPeersFactory, PeerHealth, QuicNetworkFactory};
use self::state::{ClusterState, Command, CommandResult};
use self::store::{LogStore, SmData, StateMachineStore};
use self::types::Raft;

/// How long a write or a linearizable read may wait for a quorum.
pub const QUORUM_TIMEOUT: Duration = Duration::from_secs(3);

/// Why a request to the cluster state failed.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// No quorum answered in time: the write may or may not be applied later.
    #[error(
        "the cluster has lost quorum ({reachable} of {managers} managers reachable): the outcome of this request is unknown"
    )]
    QuorumLost {
        /// Managers this node can reach, itself included.
        reachable: usize,
        /// Voters in the configuration.
        managers: usize,
    },
    /// This node is not the leader; the request should go to `leader`.
    #[error("this manager is not the leader")]
    NotLeader {
        /// The leader's Raft ID, when known.
        leader: Option<u64>,
    },
    /// The state machine refused the command; nothing changed.
    #[error("{0}")]
    Refused(String),
    /// Raft stopped (shutdown or a storage fault).
    #[error("the cluster state is unavailable: {0}")]
    Fatal(String),
    /// Opening the storage failed.
    #[error(transparent)]
    Open(#[from] store::OpenError),
}

/// Raft timing from DESIGN §4, multiplied by `scale` for slow links.
pub fn raft_config(cluster_id: &str, scale: f64) -> Result<openraft::Config, ManagerError> {
    let ms = |v: f64| (v * scale.max(0.1)).round() as u64;
    let config = openraft::Config {
        cluster_name: cluster_id.to_string(),
        heartbeat_interval: ms(150.0),
        // openraft 0.9 adds a leader lease of `election_timeout_max` before a follower that
        // heard a leader may elect: silence must last lease + a random 300–600 ms, i.e.
        // 900–1200 ms in all (DESIGN §4), which keeps failover near 1.2 s.
        election_timeout_min: ms(300.0),
        election_timeout_max: ms(600.0),
        install_snapshot_timeout: ms(10_000.0).max(5_000),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(1000),
        max_in_snapshot_log_to_keep: 200,
        purge_batch_size: 64,
        ..Default::default()
    };
    config
        .validate()
        .map_err(|e| ManagerError::Fatal(format!("bad raft timing: {e}")))
}

/// The Raft ID of the node with `public_key`: the first 8 bytes of its SHA-256,
/// never zero. Recorded in the state machine next to the key.
pub fn raft_id_for(public_key: &[u8; 32]) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA256, public_key);
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(b).max(1)
}

/// A running Raft member.
pub struct Manager {
    raft: Raft,
    sm: Arc<RwLock<SmData>>,
    /// The events derived from the log this manager applied.
    events: Arc<events::EventLog>,
    raft_id: u64,
    /// Which peers answered lately (none without a transport).
    health: Option<PeerHealth>,
    /// How recent an answer must be for a peer to count as reachable.
    reachable_within: Duration,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("raft_id", &self.raft_id)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// Opens `raft.redb` (creating it when absent) and starts Raft with no transport: a
    /// cluster of one. Refuses a corrupt file.
    pub async fn open(
        db_path: &Path,
        raft_id: u64,
        cluster_name: &str,
        scale: f64,
    ) -> Result<Manager, ManagerError> {
        let config = raft_config(cluster_name, scale)?;
        Self::open_inner(db_path, raft_id, config, |_| (NoPeersFactory, None)).await
    }

    /// Like [`Manager::open`], with Raft talking to the other managers through `factory`
    /// (QUIC bi-streams; serve the peers' streams with [`rpc::serve_raft_request`]). A factory
    /// made with [`QuicNetworkFactory::node_table`] finds peers in this manager's own node
    /// table.
    pub async fn open_with_network(
        db_path: &Path,
        raft_id: u64,
        cluster_name: &str,
        scale: f64,
        factory: QuicNetworkFactory,
    ) -> Result<Manager, ManagerError> {
        let config = raft_config(cluster_name, scale)?;
        Self::open_quic(db_path, raft_id, config, factory).await
    }

    /// [`Manager::open_with_network`] with a given (validated) configuration.
    pub(crate) async fn open_quic(
        db_path: &Path,
        raft_id: u64,
        config: openraft::Config,
        mut factory: QuicNetworkFactory,
    ) -> Result<Manager, ManagerError> {
        Self::open_inner(db_path, raft_id, config, move |sm| {
            factory.resolve_through(sm);
            let health = factory.health();
            (factory, Some(health))
        })
        .await
    }

    async fn open_inner<N: RaftNetworkFactory<types::TypeConfig>>(
        db_path: &Path,
        raft_id: u64,
        config: openraft::Config,
        network: impl FnOnce(&Arc<RwLock<SmData>>) -> (N, Option<PeerHealth>),
    ) -> Result<Manager, ManagerError> {
        let db = store::open_db(db_path)?;
        let log = LogStore::new(db.clone());
        let sm = StateMachineStore::open(db).map_err(|reason| {
            ManagerError::Open(store::OpenError::Corrupt {
                path: db_path.display().to_string(),
                reason: reason.to_string(),
            })
        })?;
        let shared = sm.shared();
        let events = sm.events();
        // A peer counts as reachable when it answered within two election timeouts: fresh
        // for a leader (heartbeats) or a candidate (votes), stale well before a write gives
        // up after QUORUM_TIMEOUT.
        let reachable_within = Duration::from_millis(config.election_timeout_max * 2)
            .clamp(Duration::from_millis(500), QUORUM_TIMEOUT * 2 / 3);
        let (network, health) = network(&shared);
        let raft = Raft::new(raft_id, Arc::new(config), network, log, sm)
            .await
            .map_err(|e| ManagerError::Fatal(e.to_string()))?;
        Ok(Manager {
            raft,
            sm: shared,
            events,
            raft_id,
            health,
            reachable_within,
        })
    }

    /// `GET /v1/events` on this manager: see [`events::stream`].
    pub fn event_stream(
        &self,
        query: crate::api::events::EventQuery,
    ) -> tokio::sync::mpsc::Receiver<serde_json::Value> {
        events::stream(&self.events, query)
    }

    /// The Raft handle (for [`rpc::serve_raft_request`], membership changes and metrics).
    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Makes this node the only voter of a new cluster. Called once per cluster, by `init`.
    pub async fn initialize(&self) -> Result<(), ManagerError> {
        let mut members = BTreeMap::new();
        members.insert(self.raft_id, EmptyNode {});
        self.raft
            .initialize(members)
            .await
            .map_err(|e| ManagerError::Fatal(e.to_string()))
    }

    /// This node's Raft ID.
    pub fn raft_id(&self) -> u64 {
        self.raft_id
    }

    /// The leader's Raft ID as this node knows it.
    pub fn leader(&self) -> Option<u64> {
        self.raft.metrics().borrow().current_leader
    }

    /// Raft metrics (leader, term, membership), as a watch.
    pub fn metrics(&self) -> tokio::sync::watch::Receiver<openraft::RaftMetrics<u64, EmptyNode>> {
        self.raft.metrics()
    }

    /// Whether this node is the leader now.
    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.state == ServerState::Leader && m.current_leader == Some(self.raft_id)
    }

    /// Voter IDs of the current configuration.
    pub fn voters(&self) -> BTreeSet<u64> {
        self.raft
            .metrics()
            .borrow()
            .membership_config
            .membership()
            .voter_ids()
            .collect()
    }

    /// Waits until some leader is known, up to `timeout`.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Option<u64> {
        let mut rx = self.raft.metrics();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(l) = rx.borrow().current_leader {
                return Some(l);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return None;
            }
        }
    }

    /// The error for a request that found no quorum. `reachable` counts the voters that
    /// answered this node's Raft RPCs lately, this node included.
    /// The error a request gets when no quorum answers (with the reachable count).
    pub fn quorum_error(&self) -> ManagerError {
        self.quorum_lost()
    }

    fn quorum_lost(&self) -> ManagerError {
        let voters = self.voters();
        let managers = voters.len().max(1);
        let reachable = voters
            .iter()
            .filter(|&&v| {
                v == self.raft_id
                    || self
                        .health
                        .as_ref()
                        .is_some_and(|h| h.answered_within(v, self.reachable_within))
            })
            .count()
            .clamp(1, managers);
        ManagerError::QuorumLost {
            reachable,
            managers,
        }
    }

    /// Waits until a leader is known that is another node, or this node leads. `None` when
    /// `deadline` passes first (or Raft stopped).
    async fn wait_for_usable_leader(&self, deadline: tokio::time::Instant) -> Option<u64> {
        let mut rx = self.raft.metrics();
        loop {
            {
                let m = rx.borrow_and_update();
                match m.current_leader {
                    Some(l) if l != self.raft_id => return Some(l),
                    Some(l) if m.state == ServerState::Leader => return Some(l),
                    _ => {}
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => return None,
            }
        }
    }

    /// Proposes `cmd` and waits until it is committed and applied, up to
    /// [`QUORUM_TIMEOUT`]. While an election is under way (no leader known) it waits for
    /// one within the same bound; another node leading → [`ManagerError::NotLeader`].
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, ManagerError> {
        let deadline = tokio::time::Instant::now() + QUORUM_TIMEOUT;
        loop {
            let attempt = self.raft.client_write(cmd.clone());
            match tokio::time::timeout_at(deadline, attempt).await {
                Err(_) => return Err(self.quorum_lost()),
                Ok(Ok(resp)) => {
                    return match resp.data {
                        CommandResult::Refused(reason) => Err(ManagerError::Refused(reason)),
                        other => Ok(other),
                    };
                }
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    // Not proposed: retrying is safe.
                    match f.leader_id.filter(|&l| l != self.raft_id) {
                        Some(leader) => {
                            return Err(ManagerError::NotLeader {
                                leader: Some(leader),
                            });
                        }
                        None => match self.wait_for_usable_leader(deadline).await {
                            None => return Err(self.quorum_lost()),
                            Some(l) if l != self.raft_id => {
                                return Err(ManagerError::NotLeader { leader: Some(l) });
                            }
                            Some(_) => {}
                        },
                    }
                }
                Ok(Err(e)) => return Err(ManagerError::Fatal(e.to_string())),
            }
        }
    }

    /// Confirms leadership with a quorum, then reads the applied state: what it returns
    /// reflects every write acknowledged before the call. Like [`Manager::write`], it waits
    /// out an election and gives up after [`QUORUM_TIMEOUT`].
    pub async fn read_linearizable<T>(
        &self,
        f: impl FnOnce(&ClusterState) -> T,
    ) -> Result<T, ManagerError> {
        use openraft::error::CheckIsLeaderError;
        let deadline = tokio::time::Instant::now() + QUORUM_TIMEOUT;
        loop {
            match tokio::time::timeout_at(deadline, self.raft.ensure_linearizable()).await {
                Err(_) => return Err(self.quorum_lost()),
                Ok(Ok(_)) => return Ok(self.read_local(f)),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(fwd)))) => {
                    match fwd.leader_id.filter(|&l| l != self.raft_id) {
                        Some(leader) => {
                            return Err(ManagerError::NotLeader {
                                leader: Some(leader),
                            });
                        }
                        None => match self.wait_for_usable_leader(deadline).await {
                            None => return Err(self.quorum_lost()),
                            Some(l) if l != self.raft_id => {
                                return Err(ManagerError::NotLeader { leader: Some(l) });
                            }
                            Some(_) => {}
                        },
                    }
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(_)))) => {
                    // One heartbeat round found no quorum; try again (a slow peer, a
                    // follower restarting) until the deadline, one heartbeat apart.
                    let pause = Duration::from_millis(self.raft.config().heartbeat_interval);
                    if tokio::time::Instant::now() + pause >= deadline {
                        tokio::time::sleep_until(deadline).await;
                        return Err(self.quorum_lost());
                    }
                    tokio::time::sleep(pause).await;
                }
                Ok(Err(e)) => return Err(ManagerError::Fatal(e.to_string())),
            }
        }
    }

    /// Reads this node's applied state without asking anyone (may be stale).
    pub fn read_local<T>(&self, f: impl FnOnce(&ClusterState) -> T) -> T {
        let sm = self
            .sm
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(&sm.state)
    }

    /// Stops Raft.
    pub async fn shutdown(&self) {
        let _ = self.raft.shutdown().await;
    }
}
