//! The daemon: composition root, lifecycle and the control API's handlers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};
use hyper::Method;
use tokio::sync::{RwLock, watch};
use tracing::{info, warn};

use crate::api::server::{ApiError, ApiRequest, Reply};
use crate::api::{
    Info, InitRequest, InitResponse, JoinApiRequest, JoinApiResponse, JoinTokenRequest,
    JoinTokenResponse, LeaveRequest, NodeView,
};
use crate::config::{SavedCluster, SavedConfig, default_advertise, parse_advertise};
use crate::forward::{
    BecomeManager, BecomeManagerResult, ForwardedApi, ForwardedReply, ForwardedWrite,
    ForwardedWriteResult, MAX_FORWARD_FRAME, TAG_BECOME_MANAGER, TAG_FORWARD_API,
    TAG_FORWARD_WRITE,
};
use crate::gossip::Gossip;
use crate::join::{self, JoinAccepted, JoinRequest, JoinResponse};
use crate::manager::network::{QuicNetworkFactory, resolve_in};
use crate::manager::state::CommandResult;
use crate::manager::state::{Availability, ClusterRecord, Command, NodeRecord, NodeStatus, Role};
use crate::manager::{Manager, ManagerError, QUORUM_TIMEOUT, raft_id_for, rpc};
use crate::net::{Endpoint, Pool};
use crate::pki::NodeId;
use crate::pki::{self, ClusterCa, NodeKey};
use crate::state_dir::StateDir;

/// Longest Unix socket path the kernel accepts (`sun_path` is 108 bytes with its NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// `shoal daemon` settings.
#[derive(Debug, Clone)]
pub struct DaemonOptions {
    /// State directory.
    pub state_dir: PathBuf,
    /// QUIC listen address.
    pub listen_addr: SocketAddr,
    /// Advertise address override (`IP` or `IP:PORT`).
    pub advertise_addr: Option<String>,
    /// Control socket.
    pub socket: PathBuf,
    /// Reported hostname override.
    pub hostname: Option<String>,
    /// Multiplies Raft timing (heartbeat, election) for slow links.
    pub raft_timing_scale: f64,
    /// Drivers to offer (`None`: every driver that works here).
    pub drivers: Option<Vec<String>>,
}

/// Where the Raft leader is.
enum LeaderAt {
    /// This node leads.
    Here,
    /// Another manager leads; a connection to it.
    Remote(Remote),
}

/// The leader when another manager leads.
struct Remote {
    conn: quinn::Connection,
    raft_id: u64,
    key: [u8; 32],
}

/// The node's membership, when it has one.
struct Membership {
    saved: SavedCluster,
    manager: Option<Arc<Manager>>,
}

/// Everything the daemon's handlers share.
pub struct Node {
    state_dir: StateDir,
    key: NodeKey,
    node_id: String,
    hostname: String,
    listen_addr: SocketAddr,
    endpoint: Endpoint,
    pool: Pool,
    dialed_tx: tokio::sync::mpsc::UnboundedSender<(NodeId, quinn::Connection)>,
    gossip: std::sync::RwLock<Option<Gossip>>,
    worker: std::sync::Mutex<Option<crate::worker::WorkerHandle>>,
    drivers: Vec<String>,
    removed_notice: std::sync::Mutex<Option<String>>,
    advertise: std::sync::RwLock<SocketAddr>,
    membership: RwLock<Option<Membership>>,
    raft_scale: f64,
    /// Serializes `init`/`leave`/`join`, which replace the membership.
    lifecycle: tokio::sync::Mutex<()>,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// RFC 3339 rendering of a millisecond timestamp.
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// A random 25-character lowercase alphanumeric ID (cluster IDs).
pub fn random_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut bytes = [0u8; 25];
    getrandom::fill(&mut bytes).unwrap_or_else(|_| {
        // Without OS randomness, fall back to the clock and pid: still unique enough
        // for a cluster ID, which is not a secret.
        let seed = now_ms() ^ u64::from(std::process::id()) << 32;
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (seed >> ((i % 8) * 8)) as u8 ^ i as u8;
        }
    });
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

fn system_hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn platform() -> String {
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

fn manager_err(e: ManagerError) -> ApiError {
    match e {
        ManagerError::Refused(m) => ApiError::conflict(m),
        ManagerError::QuorumLost { .. } | ManagerError::NotLeader { .. } => {
            ApiError::unavailable(e.to_string())
        }
        other => ApiError::internal(other.to_string()),
    }
}

/// Why a peer closes the connection of a removed node (close code 2).
pub const REMOVED_REASON: &str = "this node was removed from the cluster";

const NOT_IN_CLUSTER: &str = "this node is not part of a cluster: run `shoal init` or `shoal join`";
const NOT_A_MANAGER: &str = "this node is not a manager: run it on a manager or point -H at one";

/// The task drivers this machine offers: `process` always, `docker` when an engine
/// answers; `only` restricts them (`--drivers`).
async fn detect_drivers(only: Option<&[String]>) -> Result<Vec<String>> {
    if let Some(only) = only {
        for d in only {
            if d != "docker" && d != "process" {
                bail!("unknown driver `{d}` in --drivers: expected docker and/or process");
            }
        }
    }
    let wanted = |d: &str| only.is_none_or(|o| o.iter().any(|x| x == d));
    let mut drivers = Vec::new();
    if wanted("process") {
        drivers.push("process".to_string());
    }
    if !wanted("docker") {
        return Ok(drivers);
    }
    let probe = shoal_runtime::docker::DockerDriver::new(shoal_runtime::docker::DockerConfig::new(
        shoal_runtime::Scope::new("probe", "probe"),
    ));
    match probe {
        Ok(d) => match shoal_runtime::Driver::availability(&d).await {
            shoal_runtime::Availability::Available { version } => {
                info!(%version, "docker driver available");
                drivers.insert(0, "docker".to_string());
            }
            shoal_runtime::Availability::Unavailable { reason } => {
                warn!("docker driver unavailable: {reason}");
            }
        },
        Err(e) => warn!("docker driver unavailable: {e}"),
    }
    Ok(drivers)
}

/// Runs the daemon until SIGINT or SIGTERM.
pub async fn run(opts: DaemonOptions) -> Result<()> {
    // The lock comes first: nothing in the state dir is touched without it.
    let state_dir = StateDir::open_locked(&opts.state_dir)?;
    let socket_len = opts.socket.as_os_str().len();
    if socket_len > MAX_SOCKET_PATH {
        bail!(
            "socket path {} is {socket_len} bytes, over the limit of {MAX_SOCKET_PATH}: choose a shorter --socket",
            opts.socket.display()
        );
    }
    let key = NodeKey::load_or_create(&state_dir.node_key())?;
    let node_id = key.node_id().to_string();
    let mut saved = SavedConfig::load(&state_dir.node_config())?;
    let advertise = match &opts.advertise_addr {
        Some(a) => {
            let addr = parse_advertise(a, opts.listen_addr.port())?;
            if saved.advertise_addr != Some(addr) {
                saved.advertise_addr = Some(addr);
                saved.save(&state_dir.node_config())?;
            }
            addr
        }
        None => saved
            .advertise_addr
            .unwrap_or_else(|| default_advertise(opts.listen_addr)),
    };
    let listener = bind_socket(&opts.socket).await?;
    let (endpoint, accepted) = Endpoint::bind(opts.listen_addr, &key)
        .with_context(|| format!("cannot bind the QUIC endpoint on {}", opts.listen_addr))?;
    let hostname = opts.hostname.clone().unwrap_or_else(system_hostname);
    info!(node_id = %node_id, %hostname, listen = %opts.listen_addr, %advertise, "shoal daemon starting");

    let (dialed_tx, dialed_rx) = tokio::sync::mpsc::unbounded_channel();
    let pool = Pool::with_dial_listener(
        endpoint.clone(),
        crate::net::DEFAULT_DIAL_TIMEOUT,
        dialed_tx.clone(),
    );
    let node = Arc::new(Node {
        pool,
        dialed_tx,
        gossip: std::sync::RwLock::new(None),
        worker: std::sync::Mutex::new(None),
        drivers: detect_drivers(opts.drivers.as_deref()).await?,
        removed_notice: std::sync::Mutex::new(None),
        key,
        node_id,
        hostname,
        listen_addr: opts.listen_addr,
        endpoint,
        advertise: std::sync::RwLock::new(advertise),
        membership: RwLock::new(None),
        raft_scale: opts.raft_timing_scale,
        lifecycle: tokio::sync::Mutex::new(()),
        state_dir,
    });
    if let Some(cluster) = saved.cluster.clone() {
        node.resume(cluster).await?;
    }
    tokio::spawn(crate::peer::serve_accepted(node.clone(), accepted));
    tokio::spawn(crate::liveness::run(node.clone()));
    tokio::spawn(crate::quorum::run(node.clone()));
    tokio::spawn(crate::peer::serve_dialed(node.clone(), dialed_rx));

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let server = {
        let node = node.clone();
        tokio::spawn(crate::api::server::serve(
            listener,
            shutdown_rx,
            move |req| {
                let node = node.clone();
                async move { node.route(req).await }
            },
        ))
    };
    wait_for_signal().await;
    info!("shutting down");
    let _ = shutdown_tx.send(true);
    let _ = server.await;
    let _ = std::fs::remove_file(&opts.socket);
    node.stop().await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Binds the control socket (mode 0660). A stale socket left by a dead daemon is
/// removed; one that still answers is never touched.
async fn bind_socket(path: &std::path::Path) -> Result<tokio::net::UnixListener> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create socket directory {}", parent.display()))?;
    }
    if path.exists() {
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            bail!(
                "another daemon is serving on {}: stop it or pass a different --socket",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove stale socket {}", path.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .with_context(|| format!("cannot listen on {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .with_context(|| format!("cannot set the mode of {}", path.display()))?;
    Ok(listener)
}

impl Node {
    fn advertise(&self) -> SocketAddr {
        *self
            .advertise
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_advertise(&self, addr: SocketAddr) {
        *self
            .advertise
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = addr;
    }

    /// Starts serving, and dialing peers, with the node certificate.
    fn serve_quic(&self, saved: &SavedCluster) -> Result<()> {
        let server = pki::server_config(&saved.node_cert, &saved.ca_cert, &self.key)
            .context("cannot build the TLS server configuration")?;
        let client = pki::client_config(&saved.node_cert, &saved.ca_cert, &self.key)
            .context("cannot build the TLS client configuration")?;
        self.endpoint.set_server_config(server);
        self.endpoint.set_client_config(client);
        Ok(())
    }

    /// The connection pool to other nodes.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Whether `id` was removed from the cluster (`node rm`), as far as this node knows.
    pub async fn is_removed(&self, id: &NodeId) -> bool {
        match self
            .membership
            .read()
            .await
            .as_ref()
            .and_then(|m| m.manager.clone())
        {
            Some(m) => m.read_local(|s| {
                s.removed_keys
                    .iter()
                    .any(|k| NodeId::from_public_key(k) == *id)
            }),
            None => false,
        }
    }

    /// The drivers this node offers.
    pub fn drivers(&self) -> &[String] {
        &self.drivers
    }

    /// This node's public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.public_key()
    }

    /// Starts this node's worker and its session to the leader.
    fn start_worker(self: &Arc<Self>, cluster_id: &str) -> Result<(), String> {
        use shoal_runtime::Driver as _;
        let scope = shoal_runtime::Scope::new(cluster_id, self.node_id.clone());
        let mut drivers: BTreeMap<String, Arc<dyn shoal_runtime::Driver>> = BTreeMap::new();
        let exe =
            std::env::current_exe().map_err(|e| format!("cannot find the shoal binary: {e}"))?;
        let process =
            shoal_runtime::process::ProcessDriver::new(shoal_runtime::process::ProcessConfig::new(
                self.state_dir.root().join("tasks"),
                scope.clone(),
                shoal_runtime::process::ShimCommand::shoal_subcommand(exe),
            ))
            .map_err(|e| format!("cannot start the process driver: {e}"))?;
        if self.drivers.iter().any(|d| d == "process") {
            drivers.insert(process.kind().as_str().into(), Arc::new(process));
        }
        if self.drivers.iter().any(|d| d == "docker") {
            match shoal_runtime::docker::DockerDriver::new(
                shoal_runtime::docker::DockerConfig::new(scope),
            ) {
                Ok(d) => {
                    drivers.insert("docker".into(), Arc::new(d));
                }
                Err(e) => warn!("docker driver unavailable: {e}"),
            }
        }
        let config =
            crate::worker::WorkerConfig::new(drivers, self.state_dir.root().join("worker"));
        let (handle, reports) = crate::worker::Worker::start(config)
            .map_err(|e| format!("cannot start the worker: {e}"))?;
        *self
            .worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handle.clone());
        tokio::spawn(crate::dispatch::run_worker_session(
            self.clone(),
            handle,
            reports,
        ));
        Ok(())
    }

    /// Stops the worker. With `stop_tasks`, its tasks are stopped first (leaving the
    /// cluster); otherwise they keep running (a daemon restart adopts them).
    async fn stop_worker(&self, stop_tasks: bool) {
        let handle = self
            .worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let Some(h) = handle {
            if stop_tasks {
                let _ = h
                    .apply(crate::worker::AssignmentSet {
                        full: true,
                        tasks: vec![],
                        removed: vec![],
                    })
                    .await;
                let _ = h.resync().await;
            }
            let _ = h.shutdown().await;
        }
    }

    /// This node's worker, while it is in a cluster.
    pub fn worker(&self) -> Option<crate::worker::WorkerHandle> {
        self.worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Starts the loops a manager runs (they act only while it leads).
    fn start_manager_loops(&self, manager: &Arc<Manager>) {
        let (_tx, rx) = watch::channel(false);
        // The loop ends with Raft; the sender is kept alive by the loop's own clone.
        let manager = manager.clone();
        tokio::spawn(async move {
            let _keep = _tx;
            crate::manager::orchestrator::run(
                manager,
                crate::manager::orchestrator::OrchestratorConfig::default(),
                rx,
            )
            .await;
        });
    }

    /// A SWIM packet from the peer with `key`.
    pub fn gossip_packet(&self, from: NodeId, key: [u8; 32], packet: bytes::Bytes) {
        if let Some(g) = self.gossip() {
            g.packet(&from, key, packet);
        }
    }

    /// The gossip handle, while the node is in a cluster.
    pub fn gossip(&self) -> Option<Gossip> {
        self.gossip
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// This node's ID.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// This node's advertise address now.
    pub fn advertise_addr(&self) -> SocketAddr {
        self.advertise()
    }

    /// The manager, when this node is one (no error path: for background loops).
    pub async fn manager_opt(&self) -> Option<Arc<Manager>> {
        self.membership
            .read()
            .await
            .as_ref()
            .and_then(|m| m.manager.clone())
    }

    fn start_gossip(&self, role: Role, seeds: Vec<SocketAddr>) -> Result<(), String> {
        let role = match role {
            Role::Manager => shoal_membership::NodeRole::Manager,
            Role::Worker => shoal_membership::NodeRole::Worker,
        };
        let gossip = Gossip::start(
            self.key.public_key(),
            self.advertise(),
            role,
            self.pool.clone(),
            self.dialed_tx.clone(),
            1.0,
        )?;
        gossip.join(seeds);
        *self
            .gossip
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(gossip);
        Ok(())
    }

    async fn stop_gossip(&self, leave: bool) {
        let g = self
            .gossip
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let (Some(g), true) = (g, leave) {
            g.leave(Duration::from_secs(2)).await;
        }
    }

    /// Publishes the Raft leader to gossip whenever it changes, so workers know it.
    fn watch_leader(&self, manager: Arc<Manager>) {
        let Some(gossip) = self.gossip() else { return };
        tokio::spawn(async move {
            let mut rx = manager.metrics();
            let mut last = None;
            loop {
                let (term, leader) = {
                    let m = rx.borrow();
                    (m.current_term, m.current_leader)
                };
                if last != Some((term, leader)) {
                    last = Some((term, leader));
                    if let Some(key) = leader.and_then(|l| {
                        manager.read_local(|s| s.node_by_raft_id(l).map(|n| n.public_key))
                    }) {
                        gossip.publish(shoal_membership::FactBody::LeaderHint {
                            term,
                            leader: Some(shoal_membership::NodeId(key)),
                        });
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// A request on a stream from an authenticated peer, by tag.
    pub async fn handle_peer_request(
        self: &Arc<Self>,
        peer: NodeId,
        tag: u8,
        body: &[u8],
        mut send: quinn::SendStream,
    ) -> Result<(), crate::net::NetError> {
        use crate::net::{decode_body, respond};
        if rpc::is_raft_tag(tag) {
            // Any authenticated member may carry Raft traffic: a demoted leader still
            // replicates its own removal, and a new manager does not know the leader
            // until it has caught up. Removed keys never get this far (peer.rs).
            let manager = self.manager_opt().await;
            return match manager {
                Some(m) => rpc::serve_raft_request(m.raft(), tag, body, send).await,
                None => {
                    let _ = send.reset(1u32.into());
                    Ok(())
                }
            };
        }
        match tag {
            TAG_FORWARD_API => {
                let fwd: ForwardedApi = decode_body(tag, body)?;
                self.serve_forwarded_api(fwd, send).await
            }
            TAG_FORWARD_WRITE => {
                let fwd: ForwardedWrite = decode_body(tag, body)?;
                let answer = match self.manager_opt().await {
                    None => ForwardedWriteResult::Err {
                        unknown: false,
                        message: "this node is not a manager".into(),
                    },
                    Some(m) => match m.write(fwd.command).await {
                        Ok(r) => ForwardedWriteResult::Ok(r),
                        Err(ManagerError::Refused(message)) => ForwardedWriteResult::Err {
                            unknown: false,
                            message,
                        },
                        Err(e) => ForwardedWriteResult::Err {
                            unknown: true,
                            message: e.to_string(),
                        },
                    },
                };
                respond(&mut send, tag, &answer).await
            }
            TAG_BECOME_MANAGER => {
                let req: BecomeManager = decode_body(tag, body)?;
                let answer = match self.become_manager(&req.cluster_id).await {
                    Ok(()) => BecomeManagerResult::Ok,
                    Err(e) => BecomeManagerResult::Err(e),
                };
                respond(&mut send, tag, &answer).await
            }
            _ => {
                tracing::debug!(tag, peer = %peer, "unknown peer request tag");
                let _ = send.reset(1u32.into());
                Ok(())
            }
        }
    }

    /// The manager's side of a join handshake.
    pub async fn handle_join(&self, req: JoinRequest) -> JoinResponse {
        match self.admit(req).await {
            Ok(a) => JoinResponse::Accepted(a),
            Err(reason) => {
                info!(%reason, "join refused");
                JoinResponse::Refused(reason)
            }
        }
    }

    async fn admit(&self, req: JoinRequest) -> Result<JoinAccepted, String> {
        let manager = self.manager().await.map_err(|_| {
            "this node is not a manager of a cluster: join through a manager's address".to_string()
        })?;
        let cluster = manager
            .read_local(|s| s.cluster.clone())
            .ok_or_else(|| "the cluster is not initialized".to_string())?;
        let role = join::check_token(&req.token, &cluster, now_ms() / 1000)?;
        let record = join::record_for(&req, role, now_ms())?;
        if record.id == self.node_id {
            return Err("a node cannot join the cluster it manages".into());
        }
        if let Some(existing) = manager.read_local(|s| s.nodes.get(&record.id).cloned())
            && existing.role == Role::Manager
            && existing.status == NodeStatus::Ready
        {
            return Err(format!(
                "node {} is already a manager of this cluster: run `shoal leave --force` on it first",
                existing.hostname
            ));
        }
        let id = record.id.clone();
        self.propose(Command::AdmitNode(record))
            .await
            .map_err(|e| e.to_string())?;
        let ca = ClusterCa::from_der(&cluster.ca_cert_der, &cluster.ca_key_der)
            .map_err(|e| format!("cannot load the cluster CA: {e}"))?;
        let node_cert = ca
            .issue_node_cert(&req.public_key, &NodeId::from_public_key(&req.public_key))
            .map_err(|e| format!("cannot issue a certificate: {e}"))?;
        info!(node = %id, hostname = %req.hostname, role = role.as_str(), "node joined");
        Ok(JoinAccepted {
            cluster_id: cluster.id.clone(),
            role,
            node_cert,
            ca_cert: cluster.ca_cert_der.clone(),
            members: manager.read_local(join::member_hints),
        })
    }

    /// Restarts the node's part in the cluster after a daemon restart.
    async fn resume(self: &Arc<Self>, saved: SavedCluster) -> Result<()> {
        let manager = if saved.role == Role::Manager {
            let started = Instant::now();
            let manager = self.open_manager(&saved.cluster_id).await?;
            let manager = Arc::new(manager);
            let m = manager.clone();
            tokio::spawn(async move {
                if let Some(leader) = m.wait_for_leader(Duration::from_secs(30)).await {
                    info!(
                        leader,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "raft leader known"
                    );
                }
            });
            Some(manager)
        } else {
            None
        };
        self.serve_quic(&saved)?;
        let mut seeds: Vec<SocketAddr> =
            saved.seeds.iter().filter_map(|a| a.parse().ok()).collect();
        if let Some(m) = &manager {
            seeds.extend(m.read_local(|s| {
                s.nodes
                    .values()
                    .filter_map(|n| n.addr.parse::<SocketAddr>().ok())
                    .collect::<Vec<_>>()
            }));
        }
        self.start_gossip(saved.role, seeds)
            .map_err(anyhow::Error::msg)?;
        if let Some(m) = &manager {
            self.watch_leader(m.clone());
            self.start_manager_loops(m);
        }
        self.start_worker(&saved.cluster_id)
            .map_err(anyhow::Error::msg)?;
        info!(cluster_id = %saved.cluster_id, role = saved.role.as_str(), "rejoined cluster");
        *self.membership.write().await = Some(Membership { saved, manager });
        Ok(())
    }

    async fn stop(&self) {
        self.stop_worker(false).await;
        let taken = self.membership.write().await.take();
        if let Some(manager) = taken.and_then(|m| m.manager) {
            manager.shutdown().await;
        }
        self.endpoint.shutdown(Duration::from_millis(500)).await;
    }

    async fn manager(&self) -> Result<Arc<Manager>, ApiError> {
        match self.membership.read().await.as_ref() {
            None => Err(ApiError::conflict(NOT_IN_CLUSTER)),
            Some(Membership { manager: None, .. }) => Err(ApiError::conflict(NOT_A_MANAGER)),
            Some(Membership {
                manager: Some(m), ..
            }) => Ok(m.clone()),
        }
    }

    async fn route(self: &Arc<Self>, req: ApiRequest) -> Result<Reply, ApiError> {
        // Cluster-state requests go to the leader; node-local ones never leave.
        let local = matches!(
            req.route().as_slice(),
            ["v1", "info"] | ["v1", "init"] | ["v1", "join"] | ["v1", "leave"]
        );
        if !local
            && let Some(manager) = self.manager_opt().await
            && !manager.is_leader()
        {
            return self.forward_api(&manager, req).await;
        }
        self.route_local(req).await
    }

    async fn route_local(self: &Arc<Self>, req: ApiRequest) -> Result<Reply, ApiError> {
        let route = req.route();
        match (&req.method, route.as_slice()) {
            (&Method::GET, ["v1", "info"]) => Reply::json(&self.info().await),
            (&Method::POST, ["v1", "init"]) => {
                let body: InitRequest = req.json()?;
                Reply::json(&self.init(body).await?)
            }
            (&Method::POST, ["v1", "leave"]) => {
                let body: LeaveRequest = req.json()?;
                self.leave(body).await?;
                Reply::json(&serde_json::json!({}))
            }
            (&Method::POST, ["v1", "join"]) => {
                let body: JoinApiRequest = req.json()?;
                Reply::json(&self.join(body).await?)
            }
            (&Method::POST, ["v1", "join-token", role]) => {
                let body: JoinTokenRequest = req.json()?;
                Reply::json(&self.join_token(role, body).await?)
            }
            (&Method::DELETE, ["v1", "nodes", reference]) => {
                self.node_rm(reference, req.flag("force")).await?;
                Reply::json(&serde_json::json!({}))
            }
            (&Method::POST, ["v1", "nodes", reference, "update"]) => {
                let body: crate::api::NodeUpdateRequest = req.json()?;
                Reply::json(&self.node_update(reference, body).await?)
            }
            (&Method::POST, ["v1", "nodes", reference, "promote"]) => {
                Reply::json(&self.set_role(reference, Role::Manager).await?)
            }
            (&Method::POST, ["v1", "nodes", reference, "demote"]) => {
                Reply::json(&self.set_role(reference, Role::Worker).await?)
            }
            (&Method::GET, ["v1", "nodes"]) => Reply::json(&self.node_list().await?),
            (&Method::GET, ["v1", "nodes", reference]) => {
                Reply::json(&self.node_inspect(reference).await?)
            }
            (_, ["v1", "services", ..]) | (&Method::GET, ["v1", "nodes", _, "tasks"]) => {
                let manager = self.manager().await?;
                match crate::service_api::route(self, &manager, &req).await {
                    Some(r) => r,
                    None => Err(ApiError::not_found(format!(
                        "unknown API call {} /{}",
                        req.method,
                        req.segments.join("/")
                    ))),
                }
            }
            (_, ["v1", ..]) => Err(ApiError::not_found(format!(
                "unknown API call {} /{}",
                req.method,
                req.segments.join("/")
            ))),
            _ => Err(ApiError::not_found("unknown API version: expected /v1/...")),
        }
    }

    async fn info(&self) -> Info {
        let mut info = Info {
            cluster: "inactive".into(),
            node_id: self.node_id.clone(),
            hostname: self.hostname.clone(),
            listen_addr: self.listen_addr.to_string(),
            advertise_addr: self.advertise().to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            cluster_id: None,
            role: None,
            leader: None,
            managers: None,
            nodes: None,
            warning: self
                .removed_notice
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        };
        let membership = self.membership.read().await;
        if let Some(m) = membership.as_ref() {
            info.cluster = "active".into();
            info.cluster_id = Some(m.saved.cluster_id.clone());
            info.role = Some(m.saved.role.as_str().into());
            if m.manager.is_none()
                && let Some(g) = self.gossip()
            {
                let view = g.view();
                info.leader = view
                    .leader_hint
                    .map(|(_, k)| NodeId::from_public_key(&k).to_string());
                let alive: Vec<&[u8; 32]> = view
                    .members
                    .iter()
                    .filter(|(_, (_, st))| *st != shoal_membership::MemberState::Down)
                    .map(|(k, _)| k)
                    .collect();
                info.nodes = Some(alive.len() as u64 + 1);
                info.managers = Some(
                    alive
                        .iter()
                        .filter(|k| {
                            view.roles.get(**k) == Some(&shoal_membership::NodeRole::Manager)
                        })
                        .count() as u64,
                );
            }
            if let Some(manager) = &m.manager {
                let leader = manager.leader();
                manager.read_local(|s| {
                    info.leader = leader
                        .and_then(|l| s.node_by_raft_id(l))
                        .map(|n| n.id.clone());
                    info.managers =
                        Some(s.nodes.values().filter(|n| n.role == Role::Manager).count() as u64);
                    info.nodes = Some(s.nodes.len() as u64);
                });
            }
        }
        info
    }

    /// Opens this node's Raft, talking to the other managers over QUIC.
    async fn open_manager(&self, cluster_id: &str) -> Result<Manager, ManagerError> {
        Manager::open_with_network(
            &self.state_dir.raft_db(),
            raft_id_for(&self.key.public_key()),
            cluster_id,
            self.raft_scale,
            QuicNetworkFactory::node_table(self.pool.clone()),
        )
        .await
    }

    /// Starts Raft on this node as a new (empty) manager; the leader then adds it as a
    /// learner and a voter. Idempotent.
    pub async fn become_manager(self: &Arc<Self>, cluster_id: &str) -> Result<(), String> {
        let _guard = self.lifecycle.lock().await;
        let mut membership = self.membership.write().await;
        let Some(m) = membership.as_mut() else {
            return Err("this node is not part of a cluster".into());
        };
        if m.saved.cluster_id != cluster_id {
            return Err("this node belongs to another cluster".into());
        }
        if m.manager.is_some() {
            return Ok(());
        }
        let db = self.state_dir.raft_db();
        if db.exists() {
            // Left over from an earlier stint as a manager: the leader sends a snapshot.
            std::fs::remove_file(&db)
                .map_err(|e| format!("cannot remove {}: {e}", db.display()))?;
        }
        let manager = Arc::new(
            self.open_manager(cluster_id)
                .await
                .map_err(|e| e.to_string())?,
        );
        m.saved.role = Role::Manager;
        let mut cfg =
            SavedConfig::load(&self.state_dir.node_config()).map_err(|e| e.to_string())?;
        cfg.cluster = Some(m.saved.clone());
        cfg.save(&self.state_dir.node_config())
            .map_err(|e| e.to_string())?;
        m.manager = Some(manager.clone());
        drop(membership);
        if let Some(g) = self.gossip() {
            g.publish(shoal_membership::FactBody::Role(
                shoal_membership::NodeRole::Manager,
            ));
        }
        self.start_manager_loops(&manager);
        self.watch_leader(manager);
        info!("this node is now a manager");
        Ok(())
    }

    /// Stops Raft on this node after it was demoted; it stays in the cluster as a worker.
    pub async fn step_down_to_worker(&self) {
        let _guard = self.lifecycle.lock().await;
        let mut membership = self.membership.write().await;
        let Some(m) = membership.as_mut() else { return };
        let Some(manager) = m.manager.take() else {
            return;
        };
        manager.shutdown().await;
        m.saved.role = Role::Worker;
        if let Ok(mut cfg) = SavedConfig::load(&self.state_dir.node_config()) {
            cfg.cluster = Some(m.saved.clone());
            if let Err(e) = cfg.save(&self.state_dir.node_config()) {
                warn!("cannot save the new role: {e:#}");
            }
        }
        let _ = std::fs::remove_file(self.state_dir.raft_db());
        drop(membership);
        if let Some(g) = self.gossip() {
            g.publish(shoal_membership::FactBody::Role(
                shoal_membership::NodeRole::Worker,
            ));
        }
        info!("this node was demoted: it is now a worker");
    }

    /// Proposes `cmd`: here when this node leads, else through the leader.
    pub async fn propose(&self, cmd: Command) -> Result<CommandResult, ManagerError> {
        let manager = self
            .manager_opt()
            .await
            .ok_or_else(|| ManagerError::Fatal("this node is not a manager".into()))?;
        match manager.write(cmd.clone()).await {
            Err(ManagerError::NotLeader { .. }) => {}
            other => return other,
        }
        let leader = match self.find_leader(&manager).await? {
            LeaderAt::Here => return manager.write(cmd).await,
            LeaderAt::Remote(r) => r,
        };
        let fwd = ForwardedWrite { command: cmd };
        let answer: Result<ForwardedWriteResult, _> = tokio::select! {
            a = crate::net::request(
                &leader.conn,
                TAG_FORWARD_WRITE,
                &fwd,
                MAX_FORWARD_FRAME,
                QUORUM_TIMEOUT + Duration::from_secs(2),
            ) => a,
            () = self.leader_lost(&manager, &leader) => {
                return Err(match self.find_leader(&manager).await {
                    Err(e) => e,
                    Ok(_) => ManagerError::Fatal(
                        "the leader changed while handling this request: the outcome of this request is unknown".into(),
                    ),
                });
            }
        };
        match answer {
            Ok(ForwardedWriteResult::Ok(r)) => Ok(r),
            Ok(ForwardedWriteResult::Err {
                unknown: false,
                message,
            }) => Err(ManagerError::Refused(message)),
            Ok(ForwardedWriteResult::Err {
                unknown: true,
                message,
            }) => Err(ManagerError::Fatal(message)),
            Err(_) => Err(manager.quorum_error()),
        }
    }

    /// The current leader: this node, or a connection to it. A leader that gossip sees
    /// as suspect or down is not trusted: this waits (up to the quorum timeout) for Raft
    /// to elect another rather than talk to a dead node.
    async fn find_leader(&self, manager: &Manager) -> Result<LeaderAt, ManagerError> {
        let deadline = tokio::time::Instant::now() + QUORUM_TIMEOUT;
        let mut metrics = manager.metrics();
        loop {
            if let Some(leader) = manager.leader() {
                if leader == manager.raft_id() {
                    return Ok(LeaderAt::Here);
                }
                let node = manager.read_local(|s| s.node_by_raft_id(leader).cloned());
                let trusted = node.as_ref().is_some_and(|n| {
                    self.gossip().is_none_or(|g| {
                        g.view()
                            .members
                            .get(&n.public_key)
                            .is_none_or(|(_, st)| *st == shoal_membership::MemberState::Alive)
                    })
                });
                if trusted
                    && let Some(n) = node
                    && let Some(target) = manager.read_local(|s| resolve_in(s, leader))
                    && let Ok(conn) = self.pool.get_or_dial(&target.0, target.1).await
                {
                    return Ok(LeaderAt::Remote(Remote {
                        conn,
                        raft_id: leader,
                        key: n.public_key,
                    }));
                }
            }
            let wait = tokio::time::timeout_at(deadline, metrics.changed());
            match tokio::time::timeout(Duration::from_millis(100), wait).await {
                Ok(Err(_)) => return Err(manager.quorum_error()),
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(manager.quorum_error());
                }
                _ => {}
            }
        }
    }

    /// Resolves when `leader` stops being the leader this node knows, or gossip stops
    /// seeing it alive: a request in flight to it will not be answered.
    async fn leader_lost(&self, manager: &Manager, leader: &Remote) {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let alive = self.gossip().is_none_or(|g| {
                g.view()
                    .members
                    .get(&leader.key)
                    .is_none_or(|(_, st)| *st == shoal_membership::MemberState::Alive)
            });
            if manager.leader() != Some(leader.raft_id) || !alive {
                return;
            }
        }
    }

    /// Runs an API request on the leader and relays its answer.
    async fn forward_api(
        self: &Arc<Self>,
        manager: &Manager,
        req: ApiRequest,
    ) -> Result<Reply, ApiError> {
        let leader = match self.find_leader(manager).await.map_err(manager_err)? {
            LeaderAt::Here => return self.route_local(req).await,
            LeaderAt::Remote(r) => r,
        };
        let conn = leader.conn.clone();
        let fwd = ForwardedApi {
            method: req.method.to_string(),
            segments: req.segments.clone(),
            query: req.query.clone(),
            body: req.body.to_vec(),
        };
        let lost = || manager_err(manager.quorum_error());
        let (mut send, mut recv) = conn.open_bi().await.map_err(|_| lost())?;
        crate::net::write_frame(&mut send, TAG_FORWARD_API, &fwd)
            .await
            .map_err(|_| lost())?;
        let _ = send.finish();
        // A live leader answers within the quorum timeout (it fails a write it cannot
        // commit by then); silence past that means it died meanwhile.
        let first = tokio::select! {
            r = tokio::time::timeout(
                QUORUM_TIMEOUT + Duration::from_secs(2),
                crate::net::read_frame::<ForwardedReply>(&mut recv, MAX_FORWARD_FRAME),
            ) => r.map_err(|_| lost())?.map_err(|_| lost())?,
            () = self.leader_lost(manager, &leader) => {
                // Say "no quorum" when no new leader comes; else that the leader changed.
                return Err(match self.find_leader(manager).await {
                    Err(e) => manager_err(e),
                    Ok(_) => ApiError::unavailable(
                        "the leader changed while handling this request: the outcome of this request is unknown; retry it",
                    ),
                });
            }
        };
        match first.1 {
            ForwardedReply::Full { status: 200, body } => Ok(Reply::Json(body.into())),
            ForwardedReply::Full { status, body } => {
                let message = serde_json::from_slice::<crate::api::ErrorBody>(&body)
                    .map(|b| b.message)
                    .unwrap_or_else(|_| format!("the leader answered HTTP {status}"));
                Err(ApiError {
                    status: hyper::StatusCode::from_u16(status)
                        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR),
                    message,
                })
            }
            ForwardedReply::End => Err(ApiError::internal("the leader sent an empty answer")),
            ForwardedReply::Item(first) => {
                let (tx, rx) = tokio::sync::mpsc::channel(64);
                tokio::spawn(async move {
                    let mut next = Some(first);
                    while let Some(item) = next.take() {
                        let Ok(v) = serde_json::from_str(&item) else {
                            return;
                        };
                        if tx.send(v).await.is_err() {
                            return;
                        }
                        match crate::net::read_frame::<ForwardedReply>(&mut recv, MAX_FORWARD_FRAME)
                            .await
                        {
                            Ok((_, ForwardedReply::Item(i))) => next = Some(i),
                            _ => return,
                        }
                    }
                });
                Ok(Reply::Stream(rx))
            }
        }
    }

    /// The leader's side of a forwarded API request.
    async fn serve_forwarded_api(
        self: &Arc<Self>,
        fwd: ForwardedApi,
        mut send: quinn::SendStream,
    ) -> Result<(), crate::net::NetError> {
        let req = ApiRequest {
            method: fwd.method.parse().unwrap_or(Method::GET),
            segments: fwd.segments,
            query: fwd.query,
            body: fwd.body.into(),
        };
        match self.route_local(req).await {
            Ok(Reply::Json(bytes)) => {
                let reply = ForwardedReply::Full {
                    status: 200,
                    body: bytes.to_vec(),
                };
                crate::net::respond(&mut send, TAG_FORWARD_API, &reply).await
            }
            Err(e) => {
                let body = serde_json::to_vec(&crate::api::ErrorBody { message: e.message })
                    .unwrap_or_default();
                let reply = ForwardedReply::Full {
                    status: e.status.as_u16(),
                    body,
                };
                crate::net::respond(&mut send, TAG_FORWARD_API, &reply).await
            }
            Ok(Reply::Stream(mut rx)) => {
                while let Some(v) = rx.recv().await {
                    let item = ForwardedReply::Item(v.to_string());
                    crate::net::write_frame(&mut send, TAG_FORWARD_API, &item).await?;
                }
                crate::net::respond(&mut send, TAG_FORWARD_API, &ForwardedReply::End).await
            }
        }
    }

    fn record_for_self(&self, role: Role, availability: Availability) -> NodeRecord {
        let now = now_ms();
        NodeRecord {
            id: self.node_id.clone(),
            public_key: self.key.public_key(),
            raft_id: raft_id_for(&self.key.public_key()),
            hostname: self.hostname.clone(),
            addr: self.advertise().to_string(),
            role,
            availability,
            status: NodeStatus::Ready,
            labels: Default::default(),
            platform: platform(),
            memory_bytes: memory_bytes(),
            cpus: cpus(),
            drivers: self.drivers.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            created_at: now,
            updated_at: now,
        }
    }

    /// `init --force-new-cluster`: this manager starts a new Raft group of one from its
    /// own copy of the state. The other managers are dropped from it and their keys
    /// refused until they leave and join again with a token; workers carry on.
    async fn force_new_cluster(self: &Arc<Self>) -> Result<InitResponse, ApiError> {
        let _guard = self.lifecycle.lock().await;
        let (saved, old) = match self.membership.read().await.as_ref() {
            None => {
                return Err(ApiError::conflict(
                    "this node has no cluster state to recover: run `shoal init` to create a cluster",
                ));
            }
            Some(Membership { manager: None, .. }) => {
                return Err(ApiError::conflict(
                    "--force-new-cluster runs on a manager that kept the cluster state; this node is a worker",
                ));
            }
            Some(Membership {
                saved,
                manager: Some(m),
            }) => (saved.clone(), m.clone()),
        };
        let mut state = old.read_local(|s| s.clone());
        let own = self.node_id.clone();
        let others: Vec<(String, [u8; 32])> = state
            .nodes
            .values()
            .filter(|n| n.role == Role::Manager && n.id != own)
            .map(|n| (n.id.clone(), n.public_key))
            .collect();
        for (id, key) in &others {
            if let Some(n) = state.nodes.remove(id) {
                state.raft_ids.remove(&n.raft_id);
            }
            state.removed_keys.insert(*key);
        }
        if let Some(me) = state.nodes.get_mut(&own) {
            me.status = NodeStatus::Ready;
        }
        old.shutdown().await;
        let db = self.state_dir.raft_db();
        let kept = db.with_extension(format!("redb.before-force-new-cluster-{}", now_ms()));
        std::fs::rename(&db, &kept)
            .map_err(|e| ApiError::internal(format!("cannot move {} aside: {e}", db.display())))?;
        let manager = Arc::new(
            self.open_manager(&saved.cluster_id)
                .await
                .map_err(manager_err)?,
        );
        manager.initialize().await.map_err(manager_err)?;
        manager
            .wait_for_leader(Duration::from_secs(10))
            .await
            .ok_or_else(|| ApiError::unavailable("raft did not elect this node within 10 s"))?;
        manager
            .write(Command::Restore(Box::new(state)))
            .await
            .map_err(manager_err)?;
        for (id, _) in &others {
            if let Ok(id) = id.parse::<NodeId>()
                && let Some(conn) = self.pool.remove(&id)
            {
                conn.close(2u32.into(), REMOVED_REASON.as_bytes());
            }
        }
        if let Some(m) = self.membership.write().await.as_mut() {
            m.manager = Some(manager.clone());
        }
        self.watch_leader(manager.clone());
        self.start_manager_loops(&manager);
        warn!(
            dropped = others.len(),
            kept = %kept.display(),
            "forced a new cluster of one manager from this node's state"
        );
        Ok(InitResponse {
            node_id: own,
            cluster_id: saved.cluster_id,
        })
    }

    /// Remembers that a peer refused this node as removed, for `info` and the log.
    pub fn note_removed(&self, reason: &str) {
        let mut notice = self
            .removed_notice
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if notice.is_none() {
            tracing::error!(
                "{reason}: this node is no longer part of the cluster; run `shoal leave --force`, then join again with a token"
            );
        }
        *notice = Some(format!(
            "{reason}: run `shoal leave --force`, then `shoal join` with a token from a manager"
        ));
    }

    async fn init(self: &Arc<Self>, req: InitRequest) -> Result<InitResponse, ApiError> {
        let _guard = self.lifecycle.lock().await;
        if req.force_new_cluster {
            drop(_guard);
            return self.force_new_cluster().await;
        }
        if self.membership.read().await.is_some() {
            return Err(ApiError::conflict(
                "this node is already part of a cluster: run `shoal leave --force` first to start a new one",
            ));
        }
        let availability: Availability = match req.availability.as_deref() {
            Some(a) => a.parse().map_err(ApiError::bad_request)?,
            None => Availability::Active,
        };
        let mut saved_cfg =
            SavedConfig::load(&self.state_dir.node_config()).map_err(ApiError::from)?;
        if let Some(a) = &req.advertise_addr {
            let addr = parse_advertise(a, self.listen_addr.port())
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            self.set_advertise(addr);
            saved_cfg.advertise_addr = Some(addr);
        }
        let cluster_id = random_id();
        let ca = ClusterCa::generate(&cluster_id)
            .map_err(|e| ApiError::internal(format!("cannot create the cluster CA: {e}")))?;
        let node_cert = ca
            .issue_node_cert(&self.key.public_key(), &self.key.node_id())
            .map_err(|e| ApiError::internal(format!("cannot issue the node certificate: {e}")))?;
        let db_path = self.state_dir.raft_db();
        if db_path.exists() {
            // Left by an `init` that died before it finished: it holds no cluster.
            std::fs::remove_file(&db_path).map_err(|e| {
                ApiError::internal(format!(
                    "cannot remove unfinished {}: {e}",
                    db_path.display()
                ))
            })?;
        }
        let manager = self.open_manager(&cluster_id).await.map_err(manager_err)?;
        manager.initialize().await.map_err(manager_err)?;
        manager
            .wait_for_leader(Duration::from_secs(10))
            .await
            .ok_or_else(|| ApiError::unavailable("raft did not elect this node within 10 s"))?;
        let record = ClusterRecord {
            id: cluster_id.clone(),
            created_at: now_ms(),
            ca_cert_der: ca.cert_der().to_vec(),
            ca_key_der: ca.key_pkcs8_der().to_vec(),
            worker_token_generation: 0,
            manager_token_generation: 0,
            task_history_limit: 5,
        };
        let cmd = Command::InitCluster {
            cluster: record,
            node: self.record_for_self(Role::Manager, availability),
        };
        if let Err(e) = manager.write(cmd).await {
            manager.shutdown().await;
            let _ = std::fs::remove_file(&db_path);
            return Err(manager_err(e));
        }
        let saved = SavedCluster {
            cluster_id: cluster_id.clone(),
            role: Role::Manager,
            node_cert,
            ca_cert: ca.cert_der().to_vec(),
            seeds: Vec::new(),
        };
        saved_cfg.cluster = Some(saved.clone());
        saved_cfg
            .save(&self.state_dir.node_config())
            .map_err(ApiError::from)?;
        self.serve_quic(&saved).map_err(ApiError::from)?;
        self.start_gossip(Role::Manager, Vec::new())
            .map_err(ApiError::internal)?;
        let manager = Arc::new(manager);
        self.watch_leader(manager.clone());
        self.start_manager_loops(&manager);
        self.start_worker(&cluster_id).map_err(ApiError::internal)?;
        info!(%cluster_id, "cluster initialized");
        *self.membership.write().await = Some(Membership {
            saved,
            manager: Some(manager),
        });
        Ok(InitResponse {
            node_id: self.node_id.clone(),
            cluster_id,
        })
    }

    async fn leave(&self, req: LeaveRequest) -> Result<(), ApiError> {
        let _guard = self.lifecycle.lock().await;
        let mut membership = self.membership.write().await;
        let Some(m) = membership.as_ref() else {
            return Err(ApiError::conflict("this node is not part of a cluster"));
        };
        if let Some(manager) = &m.manager {
            let voters = manager.voters();
            if !req.force {
                return Err(ApiError::conflict(if voters.len() <= 1 {
                    "this node is the last manager: leaving wipes the cluster state; use `shoal leave --force` to do it anyway"
                } else {
                    "this node is a manager: demote it first (`shoal node demote`) or use `shoal leave --force`"
                }));
            }
            manager.shutdown().await;
        }
        *membership = None;
        drop(membership);
        self.stop_worker(true).await;
        self.stop_gossip(true).await;
        self.endpoint.clear_server_config();
        let mut saved = SavedConfig::load(&self.state_dir.node_config()).map_err(ApiError::from)?;
        saved.cluster = None;
        saved
            .save(&self.state_dir.node_config())
            .map_err(ApiError::from)?;
        let db = self.state_dir.raft_db();
        if db.exists() {
            std::fs::remove_file(&db)
                .map_err(|e| ApiError::internal(format!("cannot remove {}: {e}", db.display())))?;
        }
        warn!("left the cluster: cluster state wiped, node key kept");
        Ok(())
    }

    async fn join_token(
        &self,
        role: &str,
        req: JoinTokenRequest,
    ) -> Result<JoinTokenResponse, ApiError> {
        let role = match role {
            "worker" => Role::Worker,
            "manager" => Role::Manager,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown role `{other}`: expected worker or manager"
                )));
            }
        };
        let manager = self.manager().await?;
        if req.rotate {
            manager
                .write(Command::RotateToken { role })
                .await
                .map_err(manager_err)?;
        }
        let token = manager
            .read_linearizable(|s| {
                s.cluster.as_ref().map(|c| {
                    let ttl = req.ttl_secs.map(Duration::from_secs);
                    join::mint(c, s, role, ttl, now_ms() / 1000)
                })
            })
            .await
            .map_err(manager_err)?
            .ok_or_else(|| ApiError::conflict(NOT_IN_CLUSTER))?
            .map_err(ApiError::internal)?;
        Ok(JoinTokenResponse {
            role: role.as_str().into(),
            token,
            manager_addr: self.advertise().to_string(),
        })
    }

    async fn join(self: &Arc<Self>, req: JoinApiRequest) -> Result<JoinApiResponse, ApiError> {
        let guard = self.lifecycle.lock().await;
        if self.membership.read().await.is_some() {
            return Err(ApiError::conflict(
                "this node is already part of a cluster: run `shoal leave` first",
            ));
        }
        let token = crate::pki::token::JoinToken::parse(&req.token)
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
        let availability: Availability = match req.availability.as_deref() {
            Some(a) => a.parse().map_err(ApiError::bad_request)?,
            None => Availability::Active,
        };
        let given = if req.manager_addrs.is_empty() {
            token.payload.manager_addrs.clone()
        } else {
            req.manager_addrs.clone()
        };
        let mut addrs = Vec::new();
        for a in &given {
            addrs.push(
                parse_advertise(a, crate::cli::DEFAULT_PORT)
                    .map_err(|e| ApiError::bad_request(format!("manager address: {e}")))?,
            );
        }
        if addrs.is_empty() {
            return Err(ApiError::bad_request(
                "no manager address: give one (shoal join --token T ADDR) or use a token that carries them",
            ));
        }
        let mut saved_cfg =
            SavedConfig::load(&self.state_dir.node_config()).map_err(ApiError::from)?;
        let previous_advertise = self.advertise();
        if let Some(a) = &req.advertise_addr {
            let addr = parse_advertise(a, self.listen_addr.port())
                .map_err(|e| ApiError::bad_request(e.to_string()))?;
            self.set_advertise(addr);
            saved_cfg.advertise_addr = Some(addr);
        }
        let jr = JoinRequest {
            token: req.token.clone(),
            public_key: self.key.public_key(),
            hostname: self.hostname.clone(),
            advertise_addr: self.advertise().to_string(),
            platform: platform(),
            memory_bytes: memory_bytes(),
            cpus: cpus(),
            drivers: self.drivers.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            availability,
        };
        let (accepted, via) = match join::request_join(&self.endpoint, &jr, &addrs).await {
            Ok(v) => v,
            Err(e) => {
                self.set_advertise(previous_advertise);
                return Err(ApiError::bad_request(e));
            }
        };
        if pki::public_key_from_cert(&accepted.node_cert).ok() != Some(self.key.public_key())
            || pki::sha256(&accepted.ca_cert) != token.payload.ca_digest
        {
            self.set_advertise(previous_advertise);
            return Err(ApiError::internal(
                "the manager answered with a certificate that does not match this node or the token",
            ));
        }
        let saved = SavedCluster {
            cluster_id: accepted.cluster_id.clone(),
            role: accepted.role,
            node_cert: accepted.node_cert,
            ca_cert: accepted.ca_cert,
            seeds: accepted.members.iter().map(|m| m.addr.clone()).collect(),
        };
        saved_cfg.cluster = Some(saved.clone());
        saved_cfg
            .save(&self.state_dir.node_config())
            .map_err(ApiError::from)?;
        self.serve_quic(&saved).map_err(ApiError::from)?;
        let seeds = saved.seeds.iter().filter_map(|a| a.parse().ok()).collect();
        self.start_gossip(saved.role, seeds)
            .map_err(ApiError::internal)?;
        self.start_worker(&saved.cluster_id)
            .map_err(ApiError::internal)?;
        info!(cluster_id = %saved.cluster_id, %via, "joined the cluster");
        let resp = JoinApiResponse {
            node_id: self.node_id.clone(),
            cluster_id: saved.cluster_id.clone(),
            role: saved.role.as_str().into(),
            via: via.to_string(),
        };
        let role = saved.role;
        let cluster_id = saved.cluster_id.clone();
        *self.membership.write().await = Some(Membership {
            saved,
            manager: None,
        });
        drop(guard);
        if role == Role::Manager {
            // The leader adds this node as a learner, then as a voter, once Raft runs here.
            self.become_manager(&cluster_id)
                .await
                .map_err(ApiError::internal)?;
            // Answer once this node votes, as `docker swarm join` does for managers.
            if let Some(manager) = self.manager_opt().await {
                let own = manager.raft_id();
                let mut metrics = manager.metrics();
                let _ = tokio::time::timeout(Duration::from_secs(60), async {
                    while !manager.voters().contains(&own) {
                        if metrics.changed().await.is_err() {
                            return;
                        }
                    }
                })
                .await;
                if !manager.voters().contains(&own) {
                    return Err(ApiError::unavailable(
                        "joined, but the leader has not made this node a voter within 60 s: check `shoal node ls` on a manager",
                    ));
                }
            }
        }
        Ok(resp)
    }

    async fn node_update(
        &self,
        reference: &str,
        req: crate::api::NodeUpdateRequest,
    ) -> Result<serde_json::Value, ApiError> {
        let manager = self.manager().await?;
        let node = manager
            .read_linearizable(|s| s.resolve_node(reference).cloned())
            .await
            .map_err(manager_err)?
            .map_err(ApiError::not_found)?;
        let availability = match req.availability.as_deref() {
            Some(a) => Some(a.parse::<Availability>().map_err(ApiError::bad_request)?),
            None => None,
        };
        for k in req.label_add.keys().chain(req.label_rm.iter()) {
            if k.is_empty() || k.len() > 128 || k.chars().any(|c| c.is_whitespace() || c == '=') {
                return Err(ApiError::bad_request(format!("invalid label key `{k}`")));
            }
        }
        let cmd = Command::UpdateNode {
            id: node.id.clone(),
            availability,
            label_add: req.label_add,
            label_rm: req.label_rm,
            at: now_ms(),
        };
        manager.write(cmd).await.map_err(manager_err)?;
        Ok(serde_json::json!({ "id": node.id, "hostname": node.hostname }))
    }

    async fn set_role(&self, reference: &str, role: Role) -> Result<serde_json::Value, ApiError> {
        let manager = self.manager().await?;
        let node = manager
            .read_linearizable(|s| s.resolve_node(reference).cloned())
            .await
            .map_err(manager_err)?
            .map_err(ApiError::not_found)?;
        let verb = if role == Role::Manager {
            "promote"
        } else {
            "demote"
        };
        if node.role == role {
            return Err(ApiError::conflict(format!(
                "node {} is already a {}",
                node.hostname,
                role.as_str()
            )));
        }
        if node.status != NodeStatus::Ready {
            return Err(ApiError::conflict(format!(
                "node {} is {}: only a ready node can be {verb}d",
                node.hostname,
                node.status.as_str()
            )));
        }
        manager
            .write(Command::SetRole {
                id: node.id.clone(),
                role,
                at: now_ms(),
            })
            .await
            .map_err(manager_err)?;
        info!(node = %node.id, role = role.as_str(), "role changed");
        Ok(serde_json::json!({ "id": node.id, "hostname": node.hostname, "role": role.as_str() }))
    }

    async fn node_rm(&self, reference: &str, force: bool) -> Result<(), ApiError> {
        let manager = self.manager().await?;
        let node = manager
            .read_linearizable(|s| s.resolve_node(reference).cloned())
            .await
            .map_err(manager_err)?
            .map_err(ApiError::not_found)?;
        if node.id == self.node_id {
            return Err(ApiError::conflict(
                "cannot remove the current node: run `shoal leave` on it instead",
            ));
        }
        if node.role == Role::Manager {
            return Err(ApiError::conflict(format!(
                "node {} is a manager: demote it first with `shoal node demote {}`",
                node.hostname, node.id
            )));
        }
        if node.status == NodeStatus::Ready && !force {
            return Err(ApiError::conflict(format!(
                "node {} is ready: run `shoal leave` on it first, or use --force to remove it anyway",
                node.hostname
            )));
        }
        manager
            .write(Command::RemoveNode {
                id: node.id.clone(),
            })
            .await
            .map_err(manager_err)?;
        if let Ok(id) = node.id.parse::<NodeId>()
            && let Some(conn) = self.pool.remove(&id)
        {
            conn.close(2u32.into(), REMOVED_REASON.as_bytes());
        }
        info!(node = %node.id, "node removed");
        Ok(())
    }

    fn view(&self, manager: &Manager, n: &NodeRecord) -> NodeView {
        let leader = manager.leader();
        let manager_status = (n.role == Role::Manager).then(|| {
            if Some(n.raft_id) == leader {
                "leader"
            } else if n.status == NodeStatus::Ready {
                "reachable"
            } else {
                "unreachable"
            }
            .to_string()
        });
        NodeView {
            id: n.id.clone(),
            hostname: n.hostname.clone(),
            role: n.role.as_str().into(),
            status: n.status.as_str().into(),
            availability: n.availability.as_str().into(),
            manager_status,
            addr: n.addr.clone(),
            labels: n.labels.clone(),
            public_key: n.public_key.iter().map(|b| format!("{b:02x}")).collect(),
            platform: n.platform.clone(),
            memory_bytes: n.memory_bytes,
            cpus: n.cpus,
            drivers: n.drivers.clone(),
            version: n.version.clone(),
            created_at: rfc3339(n.created_at),
            updated_at: rfc3339(n.updated_at),
        }
    }

    async fn node_list(&self) -> Result<Vec<NodeView>, ApiError> {
        let manager = self.manager().await?;
        let nodes = manager
            .read_linearizable(|s| s.nodes.values().cloned().collect::<Vec<_>>())
            .await
            .map_err(manager_err)?;
        Ok(nodes.iter().map(|n| self.view(&manager, n)).collect())
    }

    async fn node_inspect(&self, reference: &str) -> Result<NodeView, ApiError> {
        let manager = self.manager().await?;
        let node = manager
            .read_linearizable(|s| s.resolve_node(reference).cloned())
            .await
            .map_err(manager_err)?
            .map_err(ApiError::not_found)?;
        Ok(self.view(&manager, &node))
    }
}
