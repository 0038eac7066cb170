//! The manager: openraft over redb holding the cluster state, and the API a node uses
//! to change and read it.

pub mod network;
pub mod state;
pub mod store;
pub mod types;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::{EmptyNode, ServerState, SnapshotPolicy};

use self::network::NoPeersFactory;
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
        election_timeout_min: ms(600.0),
        election_timeout_max: ms(1200.0),
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
    raft_id: u64,
}

impl std::fmt::Debug for Manager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Manager")
            .field("raft_id", &self.raft_id)
            .finish_non_exhaustive()
    }
}

impl Manager {
    /// Opens `raft.redb` (creating it when absent) and starts Raft. Refuses a corrupt file.
    pub async fn open(
        db_path: &Path,
        raft_id: u64,
        cluster_name: &str,
        scale: f64,
    ) -> Result<Manager, ManagerError> {
        let db = store::open_db(db_path)?;
        let log = LogStore::new(db.clone());
        let sm = StateMachineStore::open(db).map_err(|reason| {
            ManagerError::Open(store::OpenError::Corrupt {
                path: db_path.display().to_string(),
                reason,
            })
        })?;
        let shared = sm.shared();
        let config = Arc::new(raft_config(cluster_name, scale)?);
        let raft = Raft::new(raft_id, config, NoPeersFactory, log, sm)
            .await
            .map_err(|e| ManagerError::Fatal(e.to_string()))?;
        Ok(Manager {
            raft,
            sm: shared,
            raft_id,
        })
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

    /// Whether Raft has any state (a restarted member, as opposed to a fresh one).
    pub async fn is_initialized(&self) -> Result<bool, ManagerError> {
        self.raft
            .is_initialized()
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

    fn quorum_lost(&self) -> ManagerError {
        let managers = self.voters().len().max(1);
        // With no leader in sight we can vouch only for ourselves.
        ManagerError::QuorumLost {
            reachable: 1,
            managers,
        }
    }

    /// Proposes `cmd` and waits until it is committed and applied, up to
    /// [`QUORUM_TIMEOUT`].
    pub async fn write(&self, cmd: Command) -> Result<CommandResult, ManagerError> {
        match tokio::time::timeout(QUORUM_TIMEOUT, self.raft.client_write(cmd)).await {
            Err(_) => Err(self.quorum_lost()),
            Ok(Ok(resp)) => match resp.data {
                CommandResult::Refused(reason) => Err(ManagerError::Refused(reason)),
                other => Ok(other),
            },
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(ManagerError::NotLeader {
                    leader: f.leader_id,
                })
            }
            Ok(Err(e)) => Err(ManagerError::Fatal(e.to_string())),
        }
    }

    /// Confirms leadership with a quorum, then reads the applied state: what it returns
    /// reflects every write acknowledged before the call.
    pub async fn read_linearizable<T>(
        &self,
        f: impl FnOnce(&ClusterState) -> T,
    ) -> Result<T, ManagerError> {
        match tokio::time::timeout(QUORUM_TIMEOUT, self.raft.ensure_linearizable()).await {
            Err(_) => return Err(self.quorum_lost()),
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::ForwardToLeader(
                fwd,
            )))) => {
                return Err(ManagerError::NotLeader {
                    leader: fwd.leader_id,
                });
            }
            Ok(Err(RaftError::APIError(openraft::error::CheckIsLeaderError::QuorumNotEnough(
                _,
            )))) => return Err(self.quorum_lost()),
            Ok(Err(e)) => return Err(ManagerError::Fatal(e.to_string())),
            Ok(Ok(_)) => {}
        }
        Ok(self.read_local(f))
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
