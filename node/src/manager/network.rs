//! Raft's network: openraft RPCs between managers on bi-directional QUIC streams of the node's
//! one endpoint (DESIGN §2, §4).
//!
//! - Addresses are not in Raft membership: a [`Resolver`] maps a Raft ID to the peer's node ID
//!   and advertise address at *send* time (normally through the state machine's node table,
//!   see [`QuicNetworkFactory::node_table`]), so a manager whose IP changed is reached at its
//!   new address on the next RPC.
//! - Connections come from the node's [`Pool`] (mutual TLS; the peer must present the key of
//!   the node asked for). When none is live, a dial is started in the background (bounded by
//!   the pool's dial timeout) and the RPC waits for it at most `option.soft_ttl()`, so a
//!   handshake in progress is never cancelled by openraft's short heartbeat TTL, and a dead
//!   peer costs one bounded dial, not one per heartbeat.
//! - Error mapping: no address or a failed dial → [`RPCError::Unreachable`] (openraft backs
//!   off); a failed or timed-out exchange → [`RPCError::Network`]; the peer's own `Err` →
//!   [`RPCError::RemoteError`].
//! - Each RPC is bounded by `option.hard_ttl()` (heartbeat interval for AppendEntries,
//!   election timeout for votes, `install_snapshot_timeout` per snapshot chunk).
//!
//! The server side is [`super::rpc::serve_raft_request`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use openraft::EmptyNode;
use openraft::error::{
    InstallSnapshotError, NetworkError, PayloadTooLarge, RPCError, RaftError, RemoteError,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use quinn::Connection;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio::time::Instant;

use super::rpc::{MAX_RESPONSE_FRAME, TAG_RAFT_APPEND, TAG_RAFT_SNAPSHOT, TAG_RAFT_VOTE};
use super::state::ClusterState;
use super::store::SmData;
use super::types::TypeConfig;
use crate::net::{self, NetError, Pool};
use crate::pki::NodeId;

/// AppendEntries batches whose encoding exceeds this are refused locally as
/// [`RPCError::PayloadTooLarge`] with a smaller entry count, and openraft resends at once with
/// fewer entries: one RPC must fit in its heartbeat-long TTL even on a slow link.
pub const APPEND_SOFT_LIMIT: usize = 512 * 1024;

/// Maps a Raft ID to the peer's node ID (whose key its certificate must carry) and its
/// current address; `None` when unknown (the RPC then fails as unreachable).
pub type Resolver = Arc<dyn Fn(u64) -> Option<(NodeId, SocketAddr)> + Send + Sync>;

/// Looks `raft_id` up in a cluster state's node table: the node's ID (from its key) and its
/// advertise address. `None` for an unknown Raft ID or an address that is not `ip:port`.
#[must_use]
pub fn resolve_in(state: &ClusterState, raft_id: u64) -> Option<(NodeId, SocketAddr)> {
    let node = state.node_by_raft_id(raft_id)?;
    let addr = node.addr.parse().ok()?;
    Some((NodeId::from_public_key(&node.public_key), addr))
}

/// A resolver reading the node table of a live state machine.
pub(crate) fn node_table_resolver(sm: Arc<RwLock<SmData>>) -> Resolver {
    Arc::new(move |raft_id| {
        let sm = sm.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        resolve_in(&sm.state, raft_id)
    })
}

/// When each peer last answered an RPC (any answer, refusals included). Cheap to clone.
///
/// This is what "reachable" means in [`super::ManagerError::QuorumLost`].
#[derive(Clone, Default)]
pub struct PeerHealth {
    last_ok: Arc<Mutex<HashMap<u64, Instant>>>,
}

impl std::fmt::Debug for PeerHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerHealth").finish_non_exhaustive()
    }
}

impl PeerHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Instant>> {
        self.last_ok
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn record(&self, raft_id: u64) {
        self.lock().insert(raft_id, Instant::now());
    }

    /// Whether `raft_id` answered an RPC within the last `within`.
    #[must_use]
    pub fn answered_within(&self, raft_id: u64, within: Duration) -> bool {
        self.lock()
            .get(&raft_id)
            .is_some_and(|t| t.elapsed() <= within)
    }
}

/// Dials in progress, by peer: each waiter watches the one background dial.
type Dials = Arc<Mutex<HashMap<NodeId, watch::Receiver<Option<Result<(), String>>>>>>;

/// Builds [`QuicNetwork`] clients: openraft's network factory for Shoal's QUIC transport.
/// Cheap to clone.
#[derive(Clone)]
pub struct QuicNetworkFactory {
    pool: Pool,
    /// `None`: resolve through the node table of the manager this factory is given to.
    resolver: Option<Resolver>,
    health: PeerHealth,
    dials: Dials,
}

impl std::fmt::Debug for QuicNetworkFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicNetworkFactory")
            .field("pool", &self.pool)
            .field("resolver", &self.resolver.as_ref().map(|_| "custom"))
            .finish_non_exhaustive()
    }
}

impl QuicNetworkFactory {
    /// A factory dialing through `pool` and finding peers with `resolver`.
    #[must_use]
    pub fn new(pool: Pool, resolver: Resolver) -> QuicNetworkFactory {
        QuicNetworkFactory {
            pool,
            resolver: Some(resolver),
            health: PeerHealth::default(),
            dials: Arc::default(),
        }
    }

    /// A factory dialing through `pool` that resolves Raft IDs through the node table of the
    /// manager it is given to ([`super::Manager::open_with_network`]): the address of a node
    /// is its `addr` in the replicated state, read at every RPC.
    #[must_use]
    pub fn node_table(pool: Pool) -> QuicNetworkFactory {
        QuicNetworkFactory {
            pool,
            resolver: None,
            health: PeerHealth::default(),
            dials: Arc::default(),
        }
    }

    /// Installs the node-table resolver unless a custom one was given.
    pub(crate) fn resolve_through(&mut self, sm: &Arc<RwLock<SmData>>) {
        if self.resolver.is_none() {
            self.resolver = Some(node_table_resolver(sm.clone()));
        }
    }

    /// When each peer last answered.
    #[must_use]
    pub fn health(&self) -> PeerHealth {
        self.health.clone()
    }
}

impl RaftNetworkFactory<TypeConfig> for QuicNetworkFactory {
    type Network = QuicNetwork;

    async fn new_client(&mut self, target: u64, _node: &EmptyNode) -> QuicNetwork {
        QuicNetwork {
            target,
            factory: self.clone(),
        }
    }
}

/// Raft RPCs to one peer (connects lazily, looks its address up at every RPC).
#[derive(Debug, Clone)]
pub struct QuicNetwork {
    target: u64,
    factory: QuicNetworkFactory,
}

/// Why an RPC could not be carried out (the payload of openraft's `Unreachable`/`Network`).
#[derive(Debug, thiserror::Error)]
pub enum RaftNetError {
    /// The node table has no (usable) address for the peer.
    #[error("manager {0} has no known address")]
    NoAddress(u64),
    /// The dial failed.
    #[error("cannot connect to manager {raft_id} at {addr}: {reason}")]
    Dial {
        /// The peer's Raft ID.
        raft_id: u64,
        /// The address dialed.
        addr: SocketAddr,
        /// What went wrong.
        reason: String,
    },
    /// The dial did not complete within the RPC's budget (it goes on in the background).
    #[error("connecting to manager {raft_id} at {addr} takes longer than {} ms", .after.as_millis())]
    DialPending {
        /// The peer's Raft ID.
        raft_id: u64,
        /// The address dialed.
        addr: SocketAddr,
        /// The budget.
        after: Duration,
    },
    /// The exchange failed after the connection was there.
    #[error("raft RPC to manager {raft_id} failed: {source}")]
    Exchange {
        /// The peer's Raft ID.
        raft_id: u64,
        /// The transport error.
        source: NetError,
    },
}

type RpcResult<T, E = openraft::error::Infallible> =
    Result<T, RPCError<u64, EmptyNode, RaftError<u64, E>>>;

impl QuicNetwork {
    /// A live connection to the target, dialing (in the background) if needed and waiting at
    /// most `wait` for the dial.
    async fn connect(&self, wait: Duration) -> Result<Connection, RaftNetError> {
        let f = &self.factory;
        let resolver = f
            .resolver
            .as_ref()
            .ok_or(RaftNetError::NoAddress(self.target))?;
        let (node_id, addr) = resolver(self.target).ok_or(RaftNetError::NoAddress(self.target))?;
        if let Some(conn) = f.pool.get(&node_id) {
            return Ok(conn);
        }
        let mut rx = {
            let mut dials = f
                .dials
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(rx) = dials.get(&node_id) {
                rx.clone()
            } else {
                let (tx, rx) = watch::channel(None);
                dials.insert(node_id, rx.clone());
                let pool = f.pool.clone();
                let all = f.dials.clone();
                tokio::spawn(async move {
                    let res = pool
                        .get_or_dial(&node_id, addr)
                        .await
                        .map(|_| ())
                        .map_err(|e| e.to_string());
                    if let Err(e) = &res {
                        tracing::debug!(%node_id, %addr, "raft dial failed: {e}");
                    }
                    all.lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&node_id);
                    let _ = tx.send(Some(res));
                });
                rx
            }
        };
        let outcome = tokio::time::timeout(wait, rx.wait_for(Option::is_some)).await;
        let result = match outcome {
            Err(_) => {
                return Err(RaftNetError::DialPending {
                    raft_id: self.target,
                    addr,
                    after: wait,
                });
            }
            Ok(Err(_)) => Err("the dial task ended".to_owned()),
            Ok(Ok(v)) => v
                .clone()
                .unwrap_or_else(|| Err("no dial result".to_owned())),
        };
        let dial_err = |reason| RaftNetError::Dial {
            raft_id: self.target,
            addr,
            reason,
        };
        result.map_err(dial_err)?;
        f.pool
            .get(&node_id)
            .ok_or_else(|| dial_err("the connection closed right after the dial".to_owned()))
    }

    /// One request/response under `tag`, bounded by `option.hard_ttl()`.
    async fn call<Req, Resp, E>(&self, tag: u8, req: &Req, option: &RPCOption) -> RpcResult<Resp, E>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let started = Instant::now();
        let ttl = option.hard_ttl();
        let conn = self
            .connect(option.soft_ttl())
            .await
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let remaining = ttl.saturating_sub(started.elapsed());
        let answer: Result<Resp, RaftError<u64, E>> =
            net::request(&conn, tag, req, MAX_RESPONSE_FRAME, remaining)
                .await
                .map_err(|source| {
                    RPCError::Network(NetworkError::new(&RaftNetError::Exchange {
                        raft_id: self.target,
                        source,
                    }))
                })?;
        self.factory.health.record(self.target);
        answer.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for QuicNetwork {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, EmptyNode, RaftError<u64>>> {
        if let Some(hint) = split_hint(&rpc) {
            return Err(RPCError::PayloadTooLarge(
                PayloadTooLarge::new_entries_hint(hint),
            ));
        }
        self.call(TAG_RAFT_APPEND, &rpc, &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, EmptyNode, RaftError<u64, InstallSnapshotError>>,
    > {
        // openraft gives each chunk `install_snapshot_timeout` (≥ 5 s, see `raft_config`).
        self.call(TAG_RAFT_SNAPSHOT, &rpc, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, EmptyNode, RaftError<u64>>> {
        self.call(TAG_RAFT_VOTE, &rpc, &option).await
    }
}

/// How many entries to send instead when `rpc` is over [`APPEND_SOFT_LIMIT`] (`None`: send
/// it as it is; a single entry is always sent).
pub(crate) fn split_hint(rpc: &AppendEntriesRequest<TypeConfig>) -> Option<u64> {
    let n = rpc.entries.len() as u64;
    if n < 2 {
        return None;
    }
    let size = postcard::serialize_with_flavor::<_, postcard::ser_flavors::Size, usize>(
        rpc,
        postcard::ser_flavors::Size::default(),
    )
    .ok()? as u64;
    (size > APPEND_SOFT_LIMIT as u64).then(|| (n * APPEND_SOFT_LIMIT as u64 / size).clamp(1, n - 1))
}

/// Builds [`NoPeers`] clients: the network of a manager opened without a transport
/// ([`super::Manager::open`]), which can only be a cluster of one.
#[derive(Debug, Clone, Default)]
pub struct NoPeersFactory;

/// A client for a peer this node has no transport to: every RPC reports it unreachable.
#[derive(Debug, Clone)]
pub struct NoPeers {
    target: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("raft peer {0} is not reachable: this manager was started without a transport")]
struct NoTransport(u64);

impl NoPeers {
    fn err<E: std::error::Error>(&self) -> RPCError<u64, EmptyNode, E> {
        RPCError::Unreachable(Unreachable::new(&NoTransport(self.target)))
    }
}

impl RaftNetworkFactory<TypeConfig> for NoPeersFactory {
    type Network = NoPeers;
    async fn new_client(&mut self, target: u64, _node: &EmptyNode) -> NoPeers {
        NoPeers { target }
    }
}

impl RaftNetwork<TypeConfig> for NoPeers {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, EmptyNode, RaftError<u64>>> {
        Err(self.err())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, EmptyNode, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(self.err())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, EmptyNode, RaftError<u64>>> {
        Err(self.err())
    }
}
