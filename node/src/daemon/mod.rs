//! The daemon: composition root, the shared `Node`, and the pieces every part of it uses.
//! Lifecycle (`lifecycle.rs`), API handlers (`handlers.rs`) and peer requests and
//! forwarding (`forward.rs`) are its child modules.

mod authz;
mod forward;
mod handlers;
mod lifecycle;

pub use authz::{now_secs, trust_from_state};

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
    /// Group given the control socket (`--socket-group`); `None`: root's.
    pub socket_group: Option<String>,
    /// Reported hostname override.
    pub hostname: Option<String>,
    /// Multiplies Raft timing (heartbeat, election) for slow links.
    pub raft_timing_scale: f64,
    /// Drivers to offer (`None`: every driver that works here).
    pub drivers: Option<Vec<String>>,
    /// Lifetime of the node certificates this node issues as a manager (`--cert-expiry`).
    pub cert_expiry: Duration,
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
    /// Managers and removed keys (see `authz.rs`); every connection watches it.
    trust: crate::trust::TrustWatch,
    /// Refusals of peer requests, logged once per peer and tag.
    refusals: crate::trust::RefusalLog,
    /// Lifetime of the node certificates this node issues (as a manager).
    cert_expiry: Duration,
    /// Whether copies kept by `init --force-new-cluster` may be in the state dir (checked
    /// once at start, set when one is made, cleared once they are deleted), so the
    /// manager's tick does not read the directory for nothing.
    force_new_cluster_copies: std::sync::atomic::AtomicBool,
    /// Whether the worker may use Docker (not excluded by `--drivers`), whether or not the
    /// engine answered at start.
    docker_allowed: bool,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// RFC 3339 rendering of a millisecond timestamp, to the second; clamped to the end of year
/// 9999 like [`crate::manager::services::rfc3339`] (never panics).
pub fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_seconds(crate::manager::services::epoch_ms_clamped(ms)).to_string()
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

/// The advertise address at start (DESIGN §2): `daemon --advertise-addr` wins when it is
/// new — an operator changed it, e.g. after an IP change — but the same flag given again
/// by an unchanged unit file does not overwrite an address chosen later by
/// `init`/`join --advertise-addr`. Returns the address and whether `saved` changed.
pub fn choose_advertise(
    saved: &mut SavedConfig,
    flag: Option<SocketAddr>,
    listen: SocketAddr,
) -> (SocketAddr, bool) {
    match flag {
        Some(addr) if saved.daemon_advertise_addr != Some(addr) => {
            saved.daemon_advertise_addr = Some(addr);
            saved.advertise_addr = Some(addr);
            (addr, true)
        }
        Some(addr) => (saved.advertise_addr.unwrap_or(addr), false),
        None => (
            saved
                .advertise_addr
                .unwrap_or_else(|| default_advertise(listen)),
            false,
        ),
    }
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
    let socket_gid = opts
        .socket_group
        .as_deref()
        .map(resolve_socket_group)
        .transpose()?;
    let key = NodeKey::load_or_create(&state_dir.node_key())?;
    let node_id = key.node_id().to_string();
    let mut saved = SavedConfig::load(&state_dir.node_config())?;
    let flag = opts
        .advertise_addr
        .as_deref()
        .map(|a| parse_advertise(a, opts.listen_addr.port()))
        .transpose()?;
    let (advertise, changed) = choose_advertise(&mut saved, flag, opts.listen_addr);
    if changed {
        saved.save(&state_dir.node_config())?;
    }
    let listener = bind_socket(&opts.socket, socket_gid).await?;
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
        trust: watch::channel(Arc::new(saved.cluster.as_ref().map_or_else(
            crate::trust::TrustView::default,
            |c| crate::trust::TrustView {
                managers: c.managers.iter().copied().collect(),
                removed: c.removed.iter().copied().collect(),
            },
        )))
        .0,
        refusals: crate::trust::RefusalLog::default(),
        cert_expiry: opts.cert_expiry,
        force_new_cluster_copies: std::sync::atomic::AtomicBool::new(
            state_dir.has_force_new_cluster_copies(),
        ),
        docker_allowed: opts
            .drivers
            .as_ref()
            .is_none_or(|d| d.iter().any(|x| x == "docker")),
        state_dir,
    });
    if let Some(cluster) = saved.cluster.clone() {
        node.resume(cluster).await?;
    }
    tokio::spawn(crate::peer::serve_accepted(node.clone(), accepted));
    tokio::spawn(crate::liveness::run(node.clone()));
    tokio::spawn(crate::quorum::run(node.clone()));
    tokio::spawn(crate::peer::serve_dialed(node.clone(), dialed_rx));
    tokio::spawn(node.clone().trust_loop());

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

/// The group named by `--socket-group`.
fn resolve_socket_group(name: &str) -> Result<nix::unistd::Gid> {
    match nix::unistd::Group::from_name(name) {
        Ok(Some(group)) => Ok(group.gid),
        Ok(None) => {
            bail!("unknown group `{name}` in --socket-group: create it or pick another")
        }
        Err(e) => bail!("cannot look up group `{name}` in --socket-group: {e}"),
    }
}

/// Binds the control socket (mode 0660, group `gid` when given). A stale socket left by
/// a dead daemon is removed; one that still answers is never touched. The socket is
/// created under umask 077, so no one but root can reach it before its mode is set.
async fn bind_socket(
    path: &std::path::Path,
    gid: Option<nix::unistd::Gid>,
) -> Result<tokio::net::UnixListener> {
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
    // The umask is the process's (tasks inherit it): restored right after the bind.
    let old_umask = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let bound = tokio::net::UnixListener::bind(path);
    nix::sys::stat::umask(old_umask);
    let listener = bound.with_context(|| format!("cannot listen on {}", path.display()))?;
    if let Some(gid) = gid {
        nix::unistd::chown(path, None, Some(gid)).with_context(|| {
            format!(
                "cannot give {} to group {gid} (--socket-group)",
                path.display()
            )
        })?;
    }
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

    /// The connection pool to other nodes.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    /// The drivers this node offers.
    pub fn drivers(&self) -> &[String] {
        &self.drivers
    }

    /// This node's public key.
    pub fn public_key(&self) -> [u8; 32] {
        self.key.public_key()
    }

    /// This node's worker, while it is in a cluster.
    pub fn worker(&self) -> Option<crate::worker::WorkerHandle> {
        self.worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issue_15_unit_file_advertise_addr_does_not_override_init_or_join() {
        let listen: SocketAddr = "0.0.0.0:4747".parse().unwrap();
        let unit: SocketAddr = "10.0.0.1:4747".parse().unwrap();
        let chosen: SocketAddr = "10.0.0.2:4747".parse().unwrap();
        let mut saved = SavedConfig::default();
        // First start with the unit file's flag.
        assert_eq!(
            choose_advertise(&mut saved, Some(unit), listen),
            (unit, true)
        );
        // `join --advertise-addr` chose another address since.
        saved.advertise_addr = Some(chosen);
        // Restarted by the same unit file: the chosen address stands.
        assert_eq!(
            choose_advertise(&mut saved, Some(unit), listen),
            (chosen, false)
        );
        // The operator edits the unit file (the machine's IP changed): the new flag wins.
        let moved: SocketAddr = "10.0.0.3:4747".parse().unwrap();
        assert_eq!(
            choose_advertise(&mut saved, Some(moved), listen),
            (moved, true)
        );
        assert_eq!(saved.advertise_addr, Some(moved));
        // No flag: the saved address.
        assert_eq!(choose_advertise(&mut saved, None, listen), (moved, false));
    }

    #[test]
    fn rfc3339_clamps_past_year_9999_instead_of_panicking() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_500), "1970-01-01T00:00:01Z");
        assert_eq!(rfc3339(253_402_300_799_999), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(253_402_300_800_000), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(u64::MAX), "9999-12-31T23:59:59Z");
    }

    #[test]
    fn unknown_socket_group_is_a_one_line_error() {
        let err = resolve_socket_group("shoal-no-such-group-x9")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "unknown group `shoal-no-such-group-x9` in --socket-group: create it or pick another"
        );
        let own = nix::unistd::getgid();
        let name = nix::unistd::Group::from_gid(own)
            .unwrap()
            .expect("own group has a name")
            .name;
        assert_eq!(resolve_socket_group(&name).unwrap(), own);
    }

    #[tokio::test]
    async fn socket_is_0660_with_the_group_whatever_the_umask() {
        use nix::sys::stat::{Mode, umask};
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let own = nix::unistd::getgid();
        let old = umask(Mode::empty());
        let listener = bind_socket(&path, Some(own)).await;
        let after = umask(old);
        let _listener = listener.unwrap();
        // The umask in force around the bind is restored.
        assert_eq!(after, Mode::empty());
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o660);
        assert_eq!(meta.gid(), own.as_raw());
    }
}
