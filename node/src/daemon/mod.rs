//! The daemon: the composition root (state-dir lock, key, socket, QUIC endpoint, drivers,
//! the loops) and its child modules: the shared `Node` (`node.rs`), lifecycle operations
//! (`lifecycle.rs`, with their errors in `error.rs`), what authorizes peers (`authz.rs`),
//! API handlers (`handlers.rs`), and peer requests and forwarding to the leader with their
//! wire types (`forward.rs`). Role changes live beside the voter reconciler, in
//! `crate::roles`.

mod authz;
mod discovery;
mod error;
pub mod forward;
mod handlers;
mod lifecycle;
mod mesh;
mod node;
pub(crate) mod secrets;

use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use tokio::sync::{RwLock, watch};
use tracing::{info, warn};

pub use authz::trust_from_state;
pub use discovery::DiscoveryOptions;
pub use node::{Node, REMOVED_REASON, cpus, facilities, memory_bytes};

use crate::config::{SavedConfig, default_advertise, parse_advertise};
use crate::net::{DEFAULT_DIAL_TIMEOUT, Endpoint, Pool};
use crate::pki::NodeKey;
use crate::state_dir::StateDir;
use crate::trust::{RefusalLog, TrustView};
use node::system_hostname;

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
    /// Where published ports listen (`--publish-addr`).
    pub publish_addr: std::net::IpAddr,
    /// Where to serve Prometheus metrics (`--metrics-addr`), if anywhere.
    pub metrics_addr: Option<SocketAddr>,
    /// The containers' Docker network (`--network`).
    pub network: String,
    /// Whether tasks may run privileged or with added capabilities (`--allow-privileged`).
    pub allow_privileged: bool,
    /// Service discovery (on unless `--no-discovery`), if on.
    pub discovery: Option<discovery::DiscoveryOptions>,
}

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
    let pool = Pool::with_dial_listener(endpoint.clone(), DEFAULT_DIAL_TIMEOUT, dialed_tx.clone());
    let mesh_tasks = Arc::new(mesh::DriverTasks::default());
    let mesh = crate::mesh::Mesh::new(
        node_id.clone(),
        opts.publish_addr,
        mesh_tasks.clone(),
        Arc::new(mesh::PoolPeers(pool.clone())),
    );
    mesh.start();
    let node = Arc::new(Node {
        mesh,
        mesh_tasks,
        worker_secrets: Arc::default(),
        publish_problems: std::sync::Mutex::new(std::collections::BTreeMap::new()),
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
            TrustView::default,
            |c| TrustView {
                managers: c.managers.iter().copied().collect(),
                removed: c.removed.iter().copied().collect(),
            },
        )))
        .0,
        refusals: RefusalLog::default(),
        cert_expiry: opts.cert_expiry,
        force_new_cluster_copies: AtomicBool::new(state_dir.has_force_new_cluster_copies()),
        docker_allowed: opts
            .drivers
            .as_ref()
            .is_none_or(|d| d.iter().any(|x| x == "docker")),
        docker_network: opts.network.clone(),
        allow_privileged: opts.allow_privileged,
        discovery_status: std::sync::RwLock::new(if opts.discovery.is_some() {
            "waiting (it starts with the worker: init or join)".into()
        } else {
            "off (daemon --no-discovery)".into()
        }),
        discovery_opts: opts.discovery.clone(),
        discovery: std::sync::Mutex::new(None),
        state_dir,
    });
    // Bound before the cluster resumes: a taken port stops the daemon before it does anything.
    if let Some(addr) = opts.metrics_addr {
        crate::metrics::serve(node.clone(), addr).await?;
    }
    if let Some(cluster) = saved.cluster.clone() {
        node.resume(cluster).await?;
    }
    tokio::spawn(crate::peer::serve_accepted(node.clone(), accepted));
    tokio::spawn(crate::liveness::run(node.clone()));
    tokio::spawn(crate::daemon::secrets::keep_secrets_key(node.clone()));
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

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::os::unix::fs::PermissionsExt as _;

    use super::{bind_socket, choose_advertise, resolve_socket_group};
    use crate::config::SavedConfig;

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
