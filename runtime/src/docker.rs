//! The Docker driver, through `bollard`.
//!
//! Every container is labelled with [`crate::LABEL_CLUSTER`], [`crate::LABEL_NODE`],
//! [`crate::LABEL_SERVICE`], [`crate::LABEL_SERVICE_NAME`], [`crate::LABEL_SLOT`] and
//! [`crate::LABEL_TASK`], named `SERVICE.SLOT.TASK` (like Swarm), and attached to the `shoal`
//! bridge network. Every query filters on the node *and* cluster labels, so drivers of several
//! nodes sharing one engine never see or touch each other's containers.

use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerStateStatusEnum, DeviceMapping,
    EventMessage, HealthConfig, HealthStatusEnum, HostConfig, HostConfigLogConfig, Ipam,
    IpamConfig, Mount as DockerMount, MountType, NetworkCreateRequest, RestartPolicy,
    RestartPolicyNameEnum,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, EventsOptionsBuilder,
    KillContainerOptionsBuilder, ListContainersOptionsBuilder, ListNetworksOptionsBuilder,
    LogsOptionsBuilder, RemoveContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use futures_util::StreamExt;
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::{Mutex, OnceCell, mpsc};

use crate::driver::{Availability, BoxFuture, BoxStream, Driver, DriverKind};
use crate::error::RuntimeError;
use crate::spec::{
    HealthCheck, HealthTest, LABEL_CLUSTER, LABEL_NODE, LABEL_PREFIX, LABEL_SERVICE,
    LABEL_SERVICE_NAME, LABEL_SLOT, LABEL_TASK, MountKind, Scope, TaskSpec,
};
use crate::status::{
    Event, Health, LogChunk, LogOptions, LogStream, PortEndpoint, RunState, TaskStatus,
};

/// The default engine socket.
pub const DEFAULT_SOCKET: &str = "/var/run/docker.sock";
/// What `DockerDriver::create` found: a container it created, or the task's own container
/// that already existed under the task's name.
enum Created {
    New(String),
    Existing(String),
}

/// The request creating the network `name`: a bridge labelled `shoal.network`, with the
/// addresses of `ipam` when given (service discovery), else Docker's choice.
fn network_request(name: &str, ipam: Option<&NetworkIpam>) -> NetworkCreateRequest {
    NetworkCreateRequest {
        name: name.to_owned(),
        driver: Some("bridge".to_owned()),
        labels: Some(HashMap::from([(
            "shoal.network".to_owned(),
            "true".to_owned(),
        )])),
        ipam: ipam.map(|i| Ipam {
            config: Some(vec![IpamConfig {
                subnet: Some(i.subnet.clone()),
                ip_range: Some(i.ip_range.clone()),
                gateway: Some(i.gateway.clone()),
                auxiliary_addresses: None,
            }]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// The default network name.
pub const DEFAULT_NETWORK: &str = "shoal";
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The engine's log driver for every container: `json-file`, which `docker logs` (and
/// `service logs`, through the engine's logs API) reads, and which is kept with the container
/// after it ends — so an ended task's output stays readable on its node until the worker
/// removes the container (its retention time).
pub const LOG_DRIVER: &str = "json-file";
/// Largest log file of a container before the engine rotates it (`max-size`).
pub const LOG_MAX_SIZE: &str = "10m";
/// Log files kept per container, the current one included (`max-file`): with
/// [`LOG_MAX_SIZE`], at most 30 MiB of output per task on its node.
pub const LOG_MAX_FILES: &str = "3";
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Configuration of a [`DockerDriver`].
#[derive(Debug, Clone)]
pub struct DockerConfig {
    /// Node and cluster this driver works for.
    pub scope: Scope,
    /// Unix socket of the engine. `None`: `DOCKER_HOST` when it is `unix://PATH`, else
    /// [`DEFAULT_SOCKET`].
    pub socket: Option<PathBuf>,
    /// Bridge network the containers join (created when missing).
    pub network: String,
    /// Longest time an image pull may take.
    pub pull_timeout: Duration,
    /// Timeout of one API request (waiting for the response headers; streams are not cut).
    pub request_timeout: Duration,
    /// Service discovery (issue 22): the addresses the network gets when this driver creates
    /// it. `None`: Docker chooses, as before.
    pub ipam: Option<NetworkIpam>,
    /// Service discovery (issue 22): the containers' DNS servers (`HostConfig.dns`: the
    /// upstreams of Docker's embedded resolver on the network). Empty: the engine's, as before.
    pub dns: Vec<String>,
    /// Whether tasks may run `--privileged` or with added capabilities (`daemon
    /// --allow-privileged`); refused otherwise.
    pub allow_privileged: bool,
    /// Where the files given to tasks (configs) are written, one directory per task
    /// (bind-mounted read-only; removed with the task). `None`: tasks with files are refused.
    pub files_dir: Option<std::path::PathBuf>,
    /// Where the tasks' secrets are written, one directory per task, bind-mounted
    /// read-only and removed with the task: a memory-backed (tmpfs) directory. `None`: tasks
    /// with secrets are refused.
    pub secrets_dir: Option<std::path::PathBuf>,
}

/// A network's addresses, as `docker network create --subnet --ip-range --gateway` sets them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkIpam {
    /// The subnet (`10.247.0.0/16`).
    pub subnet: String,
    /// Where containers get their addresses (`10.247.0.0/17`): the rest is never allocated.
    pub ip_range: String,
    /// The bridge's address (`10.247.0.1`).
    pub gateway: String,
}

impl DockerConfig {
    /// Defaults: socket from `DOCKER_HOST`/[`DEFAULT_SOCKET`], network `shoal`, 5 min pulls,
    /// 2 min requests.
    pub fn new(scope: Scope) -> Self {
        Self {
            scope,
            socket: None,
            network: DEFAULT_NETWORK.to_owned(),
            pull_timeout: Duration::from_secs(300),
            request_timeout: Duration::from_secs(120),
            ipam: None,
            allow_privileged: false,
            files_dir: None,
            secrets_dir: None,
            dns: Vec::new(),
        }
    }

    /// Uses this socket path instead of the default.
    pub fn with_socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.socket = Some(socket.into());
        self
    }

    /// The socket path the driver will use, or why none can be used.
    pub fn resolve_socket(&self) -> Result<PathBuf, String> {
        if let Some(path) = &self.socket {
            return Ok(path.clone());
        }
        match std::env::var("DOCKER_HOST") {
            Ok(host) if !host.is_empty() => match host.strip_prefix("unix://") {
                Some(path) => Ok(PathBuf::from(path)),
                None => Err(format!(
                    "DOCKER_HOST={host} is not a unix:// socket (only unix sockets are supported)"
                )),
            },
            _ => Ok(PathBuf::from(DEFAULT_SOCKET)),
        }
    }
}

/// Runs tasks as Docker containers. Cheap to clone. Constructing it does not contact the engine:
/// [`Driver::availability`] says whether it answers, and every call reconnects as needed.
#[derive(Clone)]
pub struct DockerDriver {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for DockerDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerDriver")
            .field("scope", &self.inner.config.scope)
            .field("endpoint", &self.inner.endpoint)
            .finish_non_exhaustive()
    }
}

struct Inner {
    config: DockerConfig,
    socket: Result<PathBuf, String>,
    endpoint: String,
    client: OnceCell<Docker>,
    network_id: Mutex<Option<String>>,
}

/// Serializes network creation among the drivers of this process.
static NETWORK_LOCK: Mutex<()> = Mutex::const_new(());

/// An exclusive lock on `$TMPDIR/shoal-docker-network-NAME.lock`, serializing network creation
/// among processes of this machine. `None` when the lock cannot be had within a few seconds (the
/// caller then proceeds unlocked; duplicates are still cleaned up afterwards).
async fn lock_file(network: &str) -> Option<Flock<std::fs::File>> {
    let path = std::env::temp_dir().join(format!("shoal-docker-network-{network}.lock"));
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .ok()?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Some(lock),
            Err((f, _)) if tokio::time::Instant::now() < deadline => {
                file = f;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => return None,
        }
    }
}

/// Splits `name[:tag]` / `name@digest` into (name, tag-or-digest), defaulting the tag to `latest`
/// (an empty tag would pull every tag).
fn split_reference(image: &str) -> (&str, &str) {
    if let Some((name, digest)) = image.split_once('@') {
        return (name, digest);
    }
    match image.rfind(':') {
        Some(i) if !image[i..].contains('/') => (&image[..i], &image[i + 1..]),
        _ => (image, "latest"),
    }
}

fn is_status(err: &BollardError, code: u16) -> bool {
    matches!(err, BollardError::DockerResponseServerError { status_code, .. } if *status_code == code)
}

fn parse_time(s: Option<&str>) -> Option<SystemTime> {
    let s = s?;
    if s.starts_with("0001-") {
        return None;
    }
    humantime::parse_rfc3339_weak(s).ok()
}

/// Docker counts stop timeouts in whole seconds: round up so the task gets at least its grace.
fn whole_seconds_up(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

fn duration_ns(d: Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

/// Every container's log configuration: [`LOG_DRIVER`] capped at [`LOG_MAX_FILES`] files of
/// [`LOG_MAX_SIZE`], whatever the engine's default driver is.
fn log_config() -> HostConfigLogConfig {
    HostConfigLogConfig {
        typ: Some(LOG_DRIVER.to_owned()),
        config: Some(HashMap::from([
            ("max-size".to_owned(), LOG_MAX_SIZE.to_owned()),
            ("max-file".to_owned(), LOG_MAX_FILES.to_owned()),
        ])),
    }
}

/// Docker's form of a health check; [`HealthTest::None`] is `["NONE"]`, which disables the
/// image's `HEALTHCHECK` too.
fn health_config(h: &HealthCheck) -> HealthConfig {
    let test = match &h.test {
        HealthTest::Cmd(argv) => std::iter::once("CMD".to_owned())
            .chain(argv.iter().cloned())
            .collect(),
        HealthTest::Shell(s) => vec!["CMD-SHELL".to_owned(), s.clone()],
        HealthTest::None => {
            return HealthConfig {
                test: Some(vec!["NONE".to_owned()]),
                ..Default::default()
            };
        }
    };
    HealthConfig {
        test: Some(test),
        interval: Some(duration_ns(h.interval)),
        timeout: Some(duration_ns(h.timeout)),
        retries: Some(i64::from(h.retries)),
        start_period: Some(duration_ns(h.start_period)),
        ..Default::default()
    }
}

/// True when a pull failed because no registry could be reached (as opposed to refused).
fn is_unreachable_registry(msg: &str) -> bool {
    let msg = msg.to_ascii_lowercase();
    [
        "no such host",
        "dial tcp",
        "connection refused",
        "i/o timeout",
        "client.timeout",
        "tls handshake timeout",
        "network is unreachable",
        "server misbehaving",
        "temporary failure in name resolution",
        "timed out",
    ]
    .iter()
    .any(|p| msg.contains(p))
}

impl DockerDriver {
    /// Creates the driver (no I/O).
    pub fn new(config: DockerConfig) -> Result<Self, RuntimeError> {
        config.scope.validate()?;
        let socket = config.resolve_socket();
        let endpoint = match &socket {
            Ok(p) => format!("unix://{}", p.display()),
            Err(_) => std::env::var("DOCKER_HOST").unwrap_or_default(),
        };
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                socket,
                endpoint,
                client: OnceCell::new(),
                network_id: Mutex::new(None),
            }),
        })
    }

    /// The driver's scope.
    pub fn scope(&self) -> &Scope {
        &self.inner.config.scope
    }

    /// The containers' network, created when missing (with [`DockerConfig::ipam`] when
    /// set): its bridge device and addresses, for service discovery.
    pub async fn network_info(&self) -> Result<NetworkInfo, RuntimeError> {
        let inner = &self.inner;
        let id = inner.network().await?;
        let docker = inner.client().await?;
        let net = docker
            .inspect_network(
                &id,
                None::<bollard::query_parameters::InspectNetworkOptions>,
            )
            .await
            .map_err(|e| inner.err(format!("inspecting network {}", inner.config.network), e))?;
        let bridge = net
            .options
            .as_ref()
            .and_then(|o| o.get("com.docker.network.bridge.name").cloned())
            .unwrap_or_else(|| format!("br-{}", id.get(..12).unwrap_or(&id)));
        let config = net.ipam.and_then(|i| i.config).and_then(|c| {
            c.into_iter()
                .find(|c| c.subnet.as_deref().is_some_and(|s| s.contains('.')))
        });
        Ok(NetworkInfo {
            id,
            name: inner.config.network.clone(),
            bridge,
            subnet: config.as_ref().and_then(|c| c.subnet.clone()),
            ip_range: config.as_ref().and_then(|c| c.ip_range.clone()),
            gateway: config.and_then(|c| c.gateway),
        })
    }
}

/// The containers' network as the engine has it ([`DockerDriver::network_info`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkInfo {
    /// The network's ID.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its bridge device on the host (`br-` and the ID's first 12 characters, unless set).
    pub bridge: String,
    /// Its IPv4 subnet.
    pub subnet: Option<String>,
    /// Where containers get their addresses, when limited.
    pub ip_range: Option<String>,
    /// The bridge's address.
    pub gateway: Option<String>,
}

impl Inner {
    fn unavailable(&self, reason: impl Into<String>) -> RuntimeError {
        RuntimeError::DockerUnavailable {
            endpoint: self.endpoint.clone(),
            reason: reason.into(),
        }
    }

    /// Maps a bollard error: transport failures mean the engine is unavailable.
    fn err(&self, action: impl Into<String>, e: BollardError) -> RuntimeError {
        match e {
            BollardError::DockerResponseServerError { .. }
            | BollardError::JsonDataError { .. }
            | BollardError::JsonSerdeError { .. }
            | BollardError::DockerStreamError { .. }
            | BollardError::DockerContainerWaitError { .. } => RuntimeError::docker(action, e),
            other => self.unavailable(format!("{}: {other}", action.into())),
        }
    }

    /// The connected, version-negotiated client.
    async fn client(&self) -> Result<&Docker, RuntimeError> {
        let socket = self
            .socket
            .clone()
            .map_err(|reason| self.unavailable(reason))?;
        self.client
            .get_or_try_init(|| async {
                let path = socket.to_string_lossy().into_owned();
                let timeout = self.config.request_timeout.as_secs().max(1);
                let docker =
                    Docker::connect_with_unix(&path, timeout, bollard::API_DEFAULT_VERSION)
                        .map_err(|e| self.unavailable(e.to_string()))?;
                match tokio::time::timeout(CONNECT_TIMEOUT, docker.negotiate_version()).await {
                    Ok(Ok(docker)) => Ok(docker),
                    Ok(Err(e)) => Err(self.unavailable(format!("version negotiation failed: {e}"))),
                    Err(_) => Err(self.unavailable(format!(
                        "no answer within {}",
                        humantime::format_duration(CONNECT_TIMEOUT)
                    ))),
                }
            })
            .await
    }

    fn scope_filters(&self, task_id: Option<&str>) -> HashMap<String, Vec<String>> {
        let scope = &self.config.scope;
        let mut labels = vec![
            format!("{LABEL_CLUSTER}={}", scope.cluster_id),
            format!("{LABEL_NODE}={}", scope.node_id),
        ];
        if let Some(t) = task_id {
            labels.push(format!("{LABEL_TASK}={t}"));
        }
        HashMap::from([("label".to_owned(), labels)])
    }

    fn owns(&self, labels: Option<&HashMap<String, String>>, task_id: Option<&str>) -> bool {
        let Some(labels) = labels else { return false };
        let scope = &self.config.scope;
        labels.get(LABEL_CLUSTER) == Some(&scope.cluster_id)
            && labels.get(LABEL_NODE) == Some(&scope.node_id)
            && task_id.is_none_or(|t| labels.get(LABEL_TASK).map(String::as_str) == Some(t))
    }

    /// The container id of a task of this scope.
    async fn find(&self, task_id: &str) -> Result<String, RuntimeError> {
        let docker = self.client().await?;
        let filters = self.scope_filters(Some(task_id));
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let found = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.err("listing containers", e))?;
        found
            .into_iter()
            .find(|c| self.owns(c.labels.as_ref(), Some(task_id)))
            .and_then(|c| c.id)
            .ok_or_else(|| RuntimeError::NotFound {
                task_id: task_id.to_owned(),
            })
    }

    async fn inspect_id(&self, id: &str) -> Result<TaskStatus, RuntimeError> {
        let docker = self.client().await?;
        let info = docker
            .inspect_container(id, None)
            .await
            .map_err(|e| self.err(format!("inspecting container {id}"), e))?;
        Ok(self.to_status(info))
    }

    fn to_status(&self, info: ContainerInspectResponse) -> TaskStatus {
        let config = info.config.unwrap_or_default();
        let labels = config.labels.unwrap_or_default();
        let state = info.state.unwrap_or_default();
        let run_state = match state.status {
            Some(ContainerStateStatusEnum::CREATED) => RunState::Created,
            Some(
                ContainerStateStatusEnum::RUNNING
                | ContainerStateStatusEnum::PAUSED
                | ContainerStateStatusEnum::RESTARTING,
            ) => RunState::Running,
            Some(ContainerStateStatusEnum::EXITED) => RunState::Exited,
            _ => RunState::Dead,
        };
        let health = match state.health.and_then(|h| h.status) {
            Some(HealthStatusEnum::HEALTHY) => Health::Healthy,
            Some(HealthStatusEnum::UNHEALTHY) => Health::Unhealthy,
            Some(HealthStatusEnum::STARTING) => Health::Starting,
            _ if config
                .healthcheck
                .as_ref()
                .and_then(|h| h.test.as_ref())
                .is_some_and(|t| t.first().is_some_and(|s| s != "NONE"))
                && run_state == RunState::Created =>
            {
                Health::Starting
            }
            _ => Health::None,
        };
        let mut ports = Vec::new();
        let mut address = None;
        if run_state == RunState::Running {
            let ip = info
                .network_settings
                .and_then(|n| n.networks)
                .and_then(|mut n| n.remove(&self.config.network))
                .and_then(|e| e.ip_address)
                .and_then(|ip| ip.parse::<IpAddr>().ok());
            address = ip;
            if let Some(ip) = ip {
                for p in config.exposed_ports.unwrap_or_default() {
                    if let Some(target) = p.split('/').next().and_then(|n| n.parse::<u16>().ok()) {
                        ports.push(PortEndpoint {
                            target,
                            addr: SocketAddr::new(ip, target),
                        });
                    }
                }
                ports.sort_by_key(|p| p.target);
            }
        }
        let user_labels: BTreeMap<String, String> = labels
            .iter()
            .filter(|(k, _)| !k.starts_with(LABEL_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        TaskStatus {
            task_id: labels.get(LABEL_TASK).cloned().unwrap_or_default(),
            service_id: labels.get(LABEL_SERVICE).cloned().unwrap_or_default(),
            service_name: labels.get(LABEL_SERVICE_NAME).cloned().unwrap_or_default(),
            slot: labels
                .get(LABEL_SLOT)
                .and_then(|s| s.parse().ok())
                .unwrap_or_default(),
            runtime_id: info.id.unwrap_or_default(),
            image: config.image.unwrap_or_default(),
            state: run_state,
            exit_code: if matches!(run_state, RunState::Exited | RunState::Dead) {
                state.exit_code
            } else {
                None
            },
            oom_killed: state.oom_killed.unwrap_or(false),
            health,
            error: state.error.filter(|e| !e.is_empty()),
            started_at: parse_time(state.started_at.as_deref()),
            finished_at: if run_state == RunState::Running {
                None
            } else {
                parse_time(state.finished_at.as_deref())
            },
            ports,
            labels: user_labels,
            address,
        }
    }

    async fn list(&self) -> Result<Vec<TaskStatus>, RuntimeError> {
        let docker = self.client().await?;
        let filters = self.scope_filters(None);
        let options = ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        let found = docker
            .list_containers(Some(options))
            .await
            .map_err(|e| self.err("listing containers", e))?;
        let mut out = Vec::new();
        for c in found
            .into_iter()
            .filter(|c| self.owns(c.labels.as_ref(), None))
        {
            let Some(id) = c.id else { continue };
            match self.inspect_id(&id).await {
                Ok(s) => out.push(s),
                // Removed between the list and the inspect.
                Err(RuntimeError::Docker { source, .. }) if is_status(&source, 404) => {}
                Err(e) => return Err(e),
            }
        }
        out.sort_by(|a, b| a.task_id.cmp(&b.task_id));
        Ok(out)
    }

    /// The id of the `shoal` network, creating it when missing. Concurrent creation by several
    /// drivers sharing the engine can leave duplicates on engines before API 1.44 (which create
    /// a second network of the same name): every driver then settles on the oldest one and
    /// removes the others.
    async fn network(&self) -> Result<String, RuntimeError> {
        let mut cached = self.network_id.lock().await;
        if let Some(id) = cached.as_ref() {
            return Ok(id.clone());
        }
        let docker = self.client().await?;
        let name = self.config.network.clone();
        // Engines before API 1.44 happily create a second network of the same name, after which
        // every container start on it fails ("network shoal is ambiguous"). Serialize creation:
        // within this process, and with a lock file between processes on this machine.
        let _in_process = NETWORK_LOCK.lock().await;
        let _between_processes = lock_file(&name).await;
        let mut ids = self.networks_named(docker, &name).await?;
        if ids.is_empty() {
            let request = network_request(&name, self.config.ipam.as_ref());
            match docker.create_network(request).await {
                Ok(_) => {}
                Err(e) if is_status(&e, 409) || e.to_string().contains("already exists") => {}
                Err(e) => return Err(self.err(format!("creating network {name}"), e)),
            }
            ids = self.networks_named(docker, &name).await?;
        }
        let Some(first) = ids.first().cloned() else {
            return Err(RuntimeError::StartFailed {
                task_id: String::new(),
                reason: format!("network {name} vanished right after being created"),
            });
        };
        for dup in &ids[1..] {
            // Fails harmlessly when containers use it or another driver already removed it.
            let _ = docker.remove_network(dup).await;
        }
        *cached = Some(first.clone());
        Ok(first)
    }

    /// Ids of networks named exactly `name`, oldest first.
    async fn networks_named(
        &self,
        docker: &Docker,
        name: &str,
    ) -> Result<Vec<String>, RuntimeError> {
        let filters = HashMap::from([("name".to_owned(), vec![name.to_owned()])]);
        let options = ListNetworksOptionsBuilder::default()
            .filters(&filters)
            .build();
        let mut found: Vec<(String, String)> = docker
            .list_networks(Some(options))
            .await
            .map_err(|e| self.err("listing networks", e))?
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| Some((n.created.unwrap_or_default(), n.id?)))
            .collect();
        found.sort();
        Ok(found.into_iter().map(|(_, id)| id).collect())
    }

    /// The task's files, written under `files_dir/TASK/` with their owner and mode, as
    /// read-only bind mounts.
    fn write_files(&self, spec: &TaskSpec) -> Result<Vec<DockerMount>, RuntimeError> {
        use std::os::unix::fs::PermissionsExt as _;
        let files = &spec.options.files;
        if files.is_empty() {
            return Ok(Vec::new());
        }
        let Some(root) = &self.config.files_dir else {
            return Err(RuntimeError::StartFailed {
                task_id: spec.task_id.clone(),
                reason: "this driver has no directory for configs".into(),
            });
        };
        let dir = root.join(&spec.task_id);
        let io = |what: String, e: std::io::Error| RuntimeError::io(what, e);
        std::fs::create_dir_all(&dir).map_err(|e| io(format!("creating {}", dir.display()), e))?;
        let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700));
        let mut mounts = Vec::new();
        for (n, f) in files.iter().enumerate() {
            let path = dir.join(n.to_string());
            std::fs::write(&path, &f.data)
                .map_err(|e| io(format!("writing {}", path.display()), e))?;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode & 0o777))
                .map_err(|e| io(format!("setting the mode of {}", path.display()), e))?;
            std::os::unix::fs::chown(&path, Some(f.uid), Some(f.gid))
                .map_err(|e| io(format!("setting the owner of {}", path.display()), e))?;
            mounts.push(DockerMount {
                typ: Some(MountType::BIND),
                source: Some(path.display().to_string()),
                target: Some(f.target.clone()),
                read_only: Some(true),
                ..Default::default()
            });
        }
        Ok(mounts)
    }

    /// The task's secrets, written under `secrets_dir/TASK/` (memory-backed) with their owner
    /// and mode, as read-only bind mounts.
    fn write_secrets(&self, spec: &TaskSpec) -> Result<Vec<DockerMount>, RuntimeError> {
        let secrets = &spec.options.secrets;
        if secrets.is_empty() {
            return Ok(Vec::new());
        }
        let Some(root) = &self.config.secrets_dir else {
            return Err(RuntimeError::StartFailed {
                task_id: spec.task_id.clone(),
                reason: "this driver has no memory-backed directory for secrets".into(),
            });
        };
        let written = crate::secrets::write(
            root,
            &spec.task_id,
            secrets,
            crate::secrets::Naming::Numbered,
        )?;
        Ok(written
            .into_iter()
            .map(|(path, target)| DockerMount {
                typ: Some(MountType::BIND),
                source: Some(path.display().to_string()),
                target: Some(target),
                read_only: Some(true),
                ..Default::default()
            })
            .collect())
    }

    fn create_body(&self, spec: &TaskSpec, network: &str) -> ContainerCreateBody {
        let scope = &self.config.scope;
        let mut labels: HashMap<String, String> = spec
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.insert(LABEL_CLUSTER.into(), scope.cluster_id.clone());
        labels.insert(LABEL_NODE.into(), scope.node_id.clone());
        labels.insert(LABEL_SERVICE.into(), spec.service_id.clone());
        labels.insert(LABEL_SERVICE_NAME.into(), spec.service_name.clone());
        labels.insert(LABEL_SLOT.into(), spec.slot.to_string());
        labels.insert(LABEL_TASK.into(), spec.task_id.clone());
        // No check in the spec: the image's own `HEALTHCHECK` applies (reported from the
        // container's `State.Health`, as any check).
        let healthcheck = spec.health.as_ref().map(health_config);
        let mounts: Vec<DockerMount> = spec
            .mounts
            .iter()
            .map(|m| DockerMount {
                typ: Some(match m.kind {
                    MountKind::Bind => MountType::BIND,
                    MountKind::Volume => MountType::VOLUME,
                    MountKind::Tmpfs => MountType::TMPFS,
                }),
                source: (m.kind != MountKind::Tmpfs).then(|| m.source.clone()),
                target: Some(m.target.clone()),
                read_only: Some(m.read_only),
                ..Default::default()
            })
            .collect();
        let o = &spec.options;
        ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: (!spec.args.is_empty()).then(|| spec.args.clone()),
            entrypoint: o.entrypoint.clone(),
            user: o.user.clone(),
            working_dir: o.workdir.clone(),
            hostname: o.hostname.clone(),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            labels: Some(labels),
            exposed_ports: (!spec.ports.is_empty())
                .then(|| spec.ports.iter().map(|p| format!("{p}/tcp")).collect()),
            healthcheck,
            stop_signal: spec.stop_signal.as_ref().and_then(|s| {
                crate::process::parse_signal(s)
                    .ok()
                    .map(|sig| sig.as_str().to_owned())
            }),
            stop_timeout: Some(
                i64::try_from(whole_seconds_up(spec.stop_grace)).unwrap_or(i64::MAX),
            ),
            host_config: Some(HostConfig {
                memory: spec
                    .resources
                    .memory_bytes
                    .and_then(|m| i64::try_from(m).ok()),
                nano_cpus: spec.resources.nano_cpus.and_then(|c| i64::try_from(c).ok()),
                mounts: (!mounts.is_empty()).then_some(mounts),
                network_mode: Some(network.to_owned()),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::NO),
                    maximum_retry_count: None,
                }),
                log_config: Some(log_config()),
                dns: (!self.config.dns.is_empty()).then(|| self.config.dns.clone()),
                init: o.init.then_some(true),
                devices: (!o.devices.is_empty()).then(|| {
                    o.devices
                        .iter()
                        .map(|d| DeviceMapping {
                            path_on_host: Some(d.host.clone()),
                            path_in_container: Some(d.container.clone()),
                            cgroup_permissions: Some(d.permissions.clone()),
                        })
                        .collect()
                }),
                cap_add: (!o.cap_add.is_empty()).then(|| o.cap_add.clone()),
                cap_drop: (!o.cap_drop.is_empty()).then(|| o.cap_drop.clone()),
                privileged: o.privileged.then_some(true),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    async fn prepare(&self, spec: &TaskSpec) -> Result<(), RuntimeError> {
        spec.validate()?;
        let docker = self.client().await?;
        match docker.inspect_image(&spec.image).await {
            Ok(_) => return Ok(()),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(self.err(format!("inspecting image {}", spec.image), e)),
        }
        let (name, tag) = split_reference(&spec.image);
        let options = CreateImageOptionsBuilder::default()
            .from_image(name)
            .tag(tag)
            .build();
        let pull = async {
            let mut stream = docker.create_image(Some(options), None, None);
            while let Some(item) = stream.next().await {
                if let Err(e) = item {
                    return Err(e.to_string());
                }
            }
            Ok(())
        };
        let outcome = match tokio::time::timeout(self.config.pull_timeout, pull).await {
            Ok(r) => r,
            Err(_) => Err(format!(
                "the pull did not finish within {} (timed out)",
                humantime::format_duration(self.config.pull_timeout)
            )),
        };
        let image = spec.image.clone();
        match outcome {
            Ok(()) => match docker.inspect_image(&spec.image).await {
                Ok(_) => Ok(()),
                Err(e) => Err(RuntimeError::PullFailed {
                    image,
                    reason: format!("pulled but not found: {e}"),
                }),
            },
            Err(reason) if is_unreachable_registry(&reason) => {
                Err(RuntimeError::ImageNotFound { image, reason })
            }
            Err(reason) => Err(RuntimeError::PullFailed { image, reason }),
        }
    }

    async fn start(&self, spec: &TaskSpec) -> Result<TaskStatus, RuntimeError> {
        spec.validate()?;
        let docker = self.client().await?;
        // Create first: the common case is a new task, and a container list (what `find`
        // does) waits behind every container the engine is starting at the moment, so ten
        // concurrent starts would queue behind one another. A container of this task that
        // already exists answers the create with 409 and is picked up by its name.
        let id = match self.create(docker, spec).await? {
            Created::New(id) => id,
            Created::Existing(id) => {
                let status = self.inspect_id(&id).await?;
                if status.state != RunState::Created {
                    return Ok(status);
                }
                id
            }
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match docker.start_container(&id, None).await {
                Ok(()) => break,
                // A duplicate `shoal` network made by someone else: clean up and try again.
                Err(e) if e.to_string().contains("ambiguous") && attempt < 4 => {
                    tracing::warn!(error = %e, "duplicate network; deduplicating");
                    *self.network_id.lock().await = None;
                    self.network().await?;
                    tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
                }
                Err(e) => {
                    let reason = e.to_string();
                    let rm = RemoveContainerOptionsBuilder::default()
                        .force(true)
                        .v(true)
                        .build();
                    let _ = docker.remove_container(&id, Some(rm)).await;
                    return Err(RuntimeError::StartFailed {
                        task_id: spec.task_id.clone(),
                        reason,
                    });
                }
            }
        }
        self.inspect_id(&id).await
    }

    async fn create(&self, docker: &Docker, spec: &TaskSpec) -> Result<Created, RuntimeError> {
        if spec.options.escalates() && !self.config.allow_privileged {
            return Err(RuntimeError::StartFailed {
                task_id: spec.task_id.clone(),
                reason: "this node does not run tasks with --privileged or --cap-add: start its daemon with --allow-privileged".into(),
            });
        }
        let name = format!("{}.{}.{}", spec.service_name, spec.slot, spec.task_id);
        let mut files = self.write_files(spec)?;
        files.extend(self.write_secrets(spec)?);
        let options = CreateContainerOptionsBuilder::default().name(&name).build();
        for attempt in 0..2 {
            let network = self.network().await?;
            let mut body = self.create_body(spec, &network);
            if !files.is_empty()
                && let Some(host) = body.host_config.as_mut()
            {
                host.mounts
                    .get_or_insert_with(Vec::new)
                    .extend(files.iter().cloned());
            }
            match docker.create_container(Some(options.clone()), body).await {
                Ok(created) => return Ok(Created::New(created.id)),
                Err(e) if is_status(&e, 409) => {
                    // Same name: ours (a concurrent start) or someone else's.
                    let existing = docker
                        .inspect_container(&name, None)
                        .await
                        .map_err(|e| self.err(format!("inspecting container {name}"), e))?;
                    let labels = existing.config.as_ref().and_then(|c| c.labels.as_ref());
                    if self.owns(labels, Some(&spec.task_id)) {
                        return existing.id.map(Created::Existing).ok_or_else(|| {
                            RuntimeError::Conflict {
                                task_id: spec.task_id.clone(),
                                reason: format!("container {name} has no id"),
                            }
                        });
                    }
                    return Err(RuntimeError::Conflict {
                        task_id: spec.task_id.clone(),
                        reason: format!(
                            "a container named {name} exists and belongs to another node or cluster"
                        ),
                    });
                }
                Err(e)
                    if is_status(&e, 404) && e.to_string().contains("network") && attempt == 0 =>
                {
                    // Our network was removed (duplicate cleanup by another driver): look again.
                    *self.network_id.lock().await = None;
                }
                Err(e) if is_status(&e, 404) => {
                    return Err(RuntimeError::ImageNotFound {
                        image: spec.image.clone(),
                        reason: format!("{e} (call prepare first)"),
                    });
                }
                Err(e) => return Err(self.err(format!("creating container {name}"), e)),
            }
        }
        Err(RuntimeError::StartFailed {
            task_id: spec.task_id.clone(),
            reason: format!("network {} keeps disappearing", self.config.network),
        })
    }

    async fn wait_not_running(&self, id: &str, timeout: Duration) -> Result<bool, RuntimeError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.inspect_id(id).await {
                Ok(s) if s.state != RunState::Running => return Ok(true),
                Ok(_) => {}
                Err(RuntimeError::Docker { source, .. }) if is_status(&source, 404) => {
                    return Ok(true);
                }
                Err(e) => return Err(e),
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(&self, task_id: &str, grace: Option<Duration>) -> Result<(), RuntimeError> {
        let id = self.find(task_id).await?;
        let docker = self.client().await?;
        let info = docker
            .inspect_container(&id, None)
            .await
            .map_err(|e| self.err(format!("inspecting container {id}"), e))?;
        let running = info.state.as_ref().and_then(|s| s.running).unwrap_or(false);
        if !running {
            return Ok(());
        }
        let grace = match grace {
            Some(g) => g,
            None => Duration::from_secs(
                info.config
                    .as_ref()
                    .and_then(|c| c.stop_timeout)
                    .and_then(|t| u64::try_from(t).ok())
                    .unwrap_or(10),
            ),
        };
        // Docker's `t` is whole seconds: round up so the task gets at least its grace period.
        let secs = whole_seconds_up(grace);
        let options = StopContainerOptionsBuilder::default()
            .t(i32::try_from(secs).unwrap_or(i32::MAX))
            .build();
        let limit = Duration::from_secs(secs) + Duration::from_secs(30);
        // The client's request timeout must not cut a long grace period short.
        let patient = docker.clone().with_timeout(limit);
        match tokio::time::timeout(limit, patient.stop_container(&id, Some(options))).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) if is_status(&e, 404) => return Ok(()),
            Ok(Err(e)) => tracing::warn!(task_id, error = %e, "docker stop failed; killing"),
            Err(_) => tracing::warn!(task_id, "docker stop timed out; killing"),
        }
        if self
            .wait_not_running(&id, Duration::from_millis(500))
            .await?
        {
            return Ok(());
        }
        let kill = KillContainerOptionsBuilder::default()
            .signal("SIGKILL")
            .build();
        match docker.kill_container(&id, Some(kill)).await {
            Ok(()) => {}
            Err(e) if is_status(&e, 404) || is_status(&e, 409) => {}
            Err(e) => return Err(self.err(format!("killing container {id}"), e)),
        }
        if self.wait_not_running(&id, KILL_WAIT).await? {
            Ok(())
        } else {
            Err(RuntimeError::StopTimeout {
                task_id: task_id.to_owned(),
                waited: KILL_WAIT,
            })
        }
    }

    async fn remove(&self, task_id: &str) -> Result<(), RuntimeError> {
        let id = self.find(task_id).await?;
        let docker = self.client().await?;
        let options = RemoveContainerOptionsBuilder::default()
            .force(true)
            .v(true)
            .build();
        let removed = docker.remove_container(&id, Some(options)).await;
        if let Some(root) = &self.config.files_dir {
            let _ = std::fs::remove_dir_all(root.join(task_id));
        }
        if let Some(root) = &self.config.secrets_dir {
            crate::secrets::remove(root, task_id);
        }
        match removed {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Err(RuntimeError::NotFound {
                task_id: task_id.to_owned(),
            }),
            Err(e) => Err(self.err(format!("removing container {id}"), e)),
        }
    }

    fn map_event(&self, msg: EventMessage) -> Option<Event> {
        let actor = msg.actor?;
        let attributes = actor.attributes.unwrap_or_default();
        if !self.owns(Some(&attributes), None) {
            return None;
        }
        let task_id = attributes.get(LABEL_TASK)?.clone();
        let action = msg.action?;
        match action.as_str() {
            "start" => Some(Event::Started { task_id }),
            "die" => {
                let exit_code = attributes.get("exitCode").and_then(|c| c.parse().ok());
                Some(Event::Exited { task_id, exit_code })
            }
            "oom" => Some(Event::Oom { task_id }),
            other => {
                let health = match other.strip_prefix("health_status:")?.trim() {
                    "healthy" => Health::Healthy,
                    "unhealthy" => Health::Unhealthy,
                    "starting" => Health::Starting,
                    _ => return None,
                };
                Some(Event::Health { task_id, health })
            }
        }
    }

    /// Feeds `tx` until it is closed: resync, follow the engine's events, and on any break report
    /// it, back off, reconnect and resync again.
    async fn pump_events(self: Arc<Self>, tx: mpsc::Sender<Event>) {
        let mut backoff = Duration::from_millis(100);
        let mut reported = false;
        loop {
            let since = SystemTime::now()
                .checked_sub(Duration::from_secs(2))
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos()))
                .unwrap_or_default();
            let reason = match self.list().await {
                Ok(tasks) => {
                    if tx.send(Event::Resynced(tasks)).await.is_err() {
                        return;
                    }
                    reported = false;
                    backoff = Duration::from_millis(100);
                    self.follow_events(&tx, &since).await
                }
                Err(e) => Some(e.to_string()),
            };
            let Some(reason) = reason else { return };
            if !reported {
                reported = true;
                if tx.send(Event::Disconnected { reason }).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                () = tx.closed() => return,
                () = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// Follows the engine's event stream; `None` when `tx` closed, else why the stream broke.
    async fn follow_events(&self, tx: &mpsc::Sender<Event>, since: &str) -> Option<String> {
        let docker = match self.client().await {
            Ok(d) => d,
            Err(e) => return Some(e.to_string()),
        };
        let mut filters = self.scope_filters(None);
        filters.insert("type".into(), vec!["container".into()]);
        filters.insert(
            "event".into(),
            vec![
                "start".into(),
                "die".into(),
                "oom".into(),
                "health_status".into(),
            ],
        );
        let options = EventsOptionsBuilder::default()
            .since(since)
            .filters(&filters)
            .build();
        let mut stream = docker.events(Some(options));
        loop {
            tokio::select! {
                () = tx.closed() => return None,
                item = stream.next() => match item {
                    Some(Ok(msg)) => {
                        if let Some(ev) = self.map_event(msg)
                            && tx.send(ev).await.is_err()
                        {
                            return None;
                        }
                    }
                    Some(Err(e)) => return Some(format!("docker event stream broke: {e}")),
                    None => return Some("docker event stream ended".into()),
                }
            }
        }
    }

    async fn pump_logs(
        self: Arc<Self>,
        task_id: String,
        options: LogOptions,
        tx: mpsc::Sender<Result<LogChunk, RuntimeError>>,
    ) {
        let id = match self.find(&task_id).await {
            Ok(id) => id,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let docker = match self.client().await {
            Ok(d) => d,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        let tail = options
            .tail
            .map_or_else(|| "all".to_owned(), |n| n.to_string());
        // The engine takes whole seconds; lines of the second before `since_ms` are dropped
        // below, once their times are known.
        let since_secs = options
            .since_ms
            .map_or(0, |ms| i32::try_from(ms / 1000).unwrap_or(i32::MAX));
        let logs_options = LogsOptionsBuilder::default()
            .follow(options.follow)
            .stdout(true)
            .stderr(true)
            .tail(&tail)
            .since(since_secs)
            .timestamps(options.timestamps || options.since_ms.is_some())
            .build();
        let since_ns = options.since_ms.map(|ms| {
            i64::try_from(ms)
                .unwrap_or(i64::MAX)
                .saturating_mul(1_000_000)
        });
        let stamped = options.timestamps || options.since_ms.is_some();
        let chunk_of = move |stream: LogStream, message: Bytes| -> Option<LogChunk> {
            if !stamped {
                return Some(LogChunk {
                    stream,
                    data: message,
                    timestamp_ns: None,
                });
            }
            let (timestamp_ns, data) = split_docker_stamp(&message);
            if let (Some(since), Some(t)) = (since_ns, timestamp_ns)
                && t < since
            {
                return None;
            }
            let data = message.slice(message.len() - data.len()..);
            Some(LogChunk {
                stream,
                data,
                timestamp_ns,
            })
        };
        let mut stream = docker.logs(&id, Some(logs_options));
        loop {
            tokio::select! {
                () = tx.closed() => return,
                item = stream.next() => {
                    let chunk = match item {
                        None => return,
                        Some(Ok(LogOutput::StdErr { message })) => match chunk_of(LogStream::Stderr, message) {
                            Some(c) => Ok(c),
                            None => continue,
                        },
                        Some(Ok(LogOutput::StdOut { message } | LogOutput::Console { message })) => {
                            match chunk_of(LogStream::Stdout, message) {
                                Some(c) => Ok(c),
                                None => continue,
                            }
                        }
                        Some(Ok(LogOutput::StdIn { .. })) => continue,
                        Some(Err(e)) => Err(self.err(format!("reading logs of {task_id}"), e)),
                    };
                    let stop = chunk.is_err();
                    if tx.send(chunk).await.is_err() || stop {
                        return;
                    }
                }
            }
        }
    }
}

/// Splits the engine's `timestamps=true` prefix (`2026-12-01T04:33:29.123456789Z `) off a
/// log line: its time in nanoseconds since the epoch, and the text after it. A line without
/// one is returned whole.
fn split_docker_stamp(line: &[u8]) -> (Option<i64>, &[u8]) {
    let Some(space) = line.iter().take(40).position(|b| *b == b' ') else {
        return (None, line);
    };
    let parsed = std::str::from_utf8(&line[..space])
        .ok()
        .and_then(|s| humantime::parse_rfc3339_weak(s).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok());
    match parsed {
        Some(d) => (
            Some(i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)),
            &line[space + 1..],
        ),
        None => (None, line),
    }
}

impl Driver for DockerDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Docker
    }

    fn availability(&self) -> BoxFuture<'_, Availability> {
        Box::pin(async move {
            let docker = match self.inner.client().await {
                Ok(d) => d,
                Err(e) => {
                    return Availability::Unavailable {
                        reason: e.to_string(),
                    };
                }
            };
            match tokio::time::timeout(CONNECT_TIMEOUT, docker.version()).await {
                Ok(Ok(v)) => Availability::Available {
                    version: format!(
                        "Docker {}, API {}",
                        v.version.unwrap_or_default(),
                        docker.client_version()
                    ),
                },
                Ok(Err(e)) => Availability::Unavailable {
                    reason: self.inner.err("version", e).to_string(),
                },
                Err(_) => Availability::Unavailable {
                    reason: self
                        .inner
                        .unavailable("no answer to a version request")
                        .to_string(),
                },
            }
        })
    }

    fn prepare<'a>(&'a self, spec: &'a TaskSpec) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.inner.prepare(spec))
    }

    fn start<'a>(&'a self, spec: &'a TaskSpec) -> BoxFuture<'a, Result<TaskStatus, RuntimeError>> {
        Box::pin(self.inner.start(spec))
    }

    fn stop<'a>(
        &'a self,
        task_id: &'a str,
        grace: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.inner.stop(task_id, grace))
    }

    fn remove<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.inner.remove(task_id))
    }

    fn inspect<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<TaskStatus, RuntimeError>> {
        Box::pin(async move {
            let id = self.inner.find(task_id).await?;
            self.inner.inspect_id(&id).await
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<TaskStatus>, RuntimeError>> {
        Box::pin(self.inner.list())
    }

    fn events(&self) -> BoxStream<'static, Event> {
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(Arc::clone(&self.inner).pump_events(tx));
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
            .boxed()
    }

    fn logs(
        &self,
        task_id: &str,
        options: LogOptions,
    ) -> BoxStream<'static, Result<LogChunk, RuntimeError>> {
        let (tx, rx) = mpsc::channel(64);
        tokio::spawn(Arc::clone(&self.inner).pump_logs(task_id.to_owned(), options, tx));
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_stamps_are_split_off() {
        let (t, text) = split_docker_stamp(b"2026-12-01T04:33:29.123456789Z hello\n");
        assert_eq!(text, b"hello\n");
        assert_eq!(t.map(|t| t % 1_000_000_000), Some(123_456_789));
        let (t, text) = split_docker_stamp(b"no stamp here\n");
        assert_eq!((t, text), (None, &b"no stamp here\n"[..]));
    }

    #[test]
    fn splits_image_references() {
        assert_eq!(split_reference("busybox"), ("busybox", "latest"));
        assert_eq!(
            split_reference("shoal-test/busybox:v2"),
            ("shoal-test/busybox", "v2")
        );
        assert_eq!(
            split_reference("localhost:5000/x"),
            ("localhost:5000/x", "latest")
        );
        assert_eq!(
            split_reference("localhost:5000/x:1"),
            ("localhost:5000/x", "1")
        );
        assert_eq!(split_reference("x@sha256:abc"), ("x", "sha256:abc"));
    }

    #[test]
    fn classifies_pull_failures() {
        assert!(is_unreachable_registry(
            "Get \"https://registry-1.docker.io/v2/\": dial tcp: lookup registry-1.docker.io: no such host"
        ));
        assert!(!is_unreachable_registry(
            "pull access denied for x, repository does not exist"
        ));
    }

    #[test]
    fn health_checks_map_to_docker() {
        let mut check = HealthCheck::new(HealthTest::Shell("true".into()));
        check.interval = Duration::from_millis(250);
        check.retries = 2;
        let c = health_config(&check);
        assert_eq!(
            c.test,
            Some(vec!["CMD-SHELL".to_owned(), "true".to_owned()])
        );
        assert_eq!(c.interval, Some(250_000_000));
        assert_eq!(c.retries, Some(2));
        let c = health_config(&HealthCheck::new(HealthTest::Cmd(vec![
            "a".into(),
            "b".into(),
        ])));
        assert_eq!(c.test, Some(vec!["CMD".into(), "a".into(), "b".into()]));
        // `--no-healthcheck`: Docker's NONE, nothing else set.
        let c = health_config(&HealthCheck::new(HealthTest::None));
        assert_eq!(
            c,
            HealthConfig {
                test: Some(vec!["NONE".to_owned()]),
                ..Default::default()
            }
        );
    }

    #[test]
    fn containers_get_capped_json_file_logs() {
        let driver = DockerDriver::new(
            DockerConfig::new(Scope::new("c", "n")).with_socket("/nonexistent/docker.sock"),
        )
        .expect("driver");
        let spec = TaskSpec::new("t1", "s1", "web", 1, "img");
        let body = driver.inner.create_body(&spec, "net");
        let log = body.host_config.and_then(|h| h.log_config);
        assert_eq!(
            log,
            Some(HostConfigLogConfig {
                typ: Some("json-file".to_owned()),
                config: Some(HashMap::from([
                    ("max-size".to_owned(), "10m".to_owned()),
                    ("max-file".to_owned(), "3".to_owned()),
                ])),
            })
        );
    }

    #[test]
    fn discovery_settings_reach_the_network_and_containers_only_when_set() {
        // Defaults: the requests are exactly what they were before issue 22.
        let plain = network_request("shoal", None);
        assert_eq!(plain.ipam, None);
        assert_eq!(plain.driver.as_deref(), Some("bridge"));
        let driver = DockerDriver::new(
            DockerConfig::new(Scope::new("c", "n")).with_socket("/nonexistent/docker.sock"),
        )
        .expect("driver");
        let spec = TaskSpec::new("t1", "s1", "web", 1, "img");
        let body = driver.inner.create_body(&spec, "net");
        assert_eq!(body.host_config.and_then(|h| h.dns), None);
        // With them: the subnet, its range and gateway, and the resolver.
        let ipam = NetworkIpam {
            subnet: "10.214.1.0/24".into(),
            ip_range: "10.214.1.0/25".into(),
            gateway: "10.214.1.1".into(),
        };
        let request = network_request("shoal-dt-1", Some(&ipam));
        let config = request.ipam.and_then(|i| i.config).expect("ipam config");
        assert_eq!(config[0].subnet.as_deref(), Some("10.214.1.0/24"));
        assert_eq!(config[0].ip_range.as_deref(), Some("10.214.1.0/25"));
        assert_eq!(config[0].gateway.as_deref(), Some("10.214.1.1"));
        let mut with_dns = DockerConfig::new(Scope::new("c", "n"));
        with_dns.socket = Some(PathBuf::from("/nonexistent/docker.sock"));
        with_dns.dns = vec!["10.214.1.1".into()];
        let driver = DockerDriver::new(with_dns).expect("driver");
        let body = driver.inner.create_body(&spec, "net");
        assert_eq!(
            body.host_config.and_then(|h| h.dns),
            Some(vec!["10.214.1.1".to_owned()])
        );
    }

    #[test]
    fn docker_host_must_be_a_unix_socket() {
        let mut config = DockerConfig::new(Scope::new("c", "n"));
        config.socket = Some(PathBuf::from("/tmp/x.sock"));
        assert_eq!(config.resolve_socket(), Ok(PathBuf::from("/tmp/x.sock")));
    }
}
