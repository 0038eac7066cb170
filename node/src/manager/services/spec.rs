//! Service specs: what a user asks for (`service create`/`update`) as Raft stores it, and
//! [`ServiceSpec::validate`] giving one-line errors. Encoded with postcard inside the Raft log
//! and snapshots: a field added, removed or reordered breaks older entries (see
//! ARCHITECTURE.md "Formats and upgrades"); the JSON the API speaks is `crate::api::services`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_runtime::{HealthCheck, HealthTest, TaskSpec};
use shoal_scheduler::Constraint;

/// Longest service name (Docker's limit).
pub const MAX_NAME_LEN: usize = 63;
/// Most replicas a service may ask for (the leader plans every slot on every pass).
pub const MAX_REPLICAS: u64 = 10_000;
/// Drivers a service may name.
pub const DRIVERS: [&str; 2] = ["docker", "process"];
/// Longest error message stored for a task (longer ones are cut).
pub const MAX_TASK_ERROR_LEN: usize = 1024;

/// Replicated with a count, or one task per eligible node: the scheduler's type (same
/// variants in the same order as the record always had, so the same postcard bytes).
pub use shoal_scheduler::ServiceMode;

/// `replicated` or `global`: the word for a [`ServiceMode`] in JSON and tables.
pub fn mode_word(mode: ServiceMode) -> &'static str {
    match mode {
        ServiceMode::Replicated { .. } => "replicated",
        ServiceMode::Global => "global",
    }
}

/// The replica count; `None` for global.
pub fn mode_replicas(mode: ServiceMode) -> Option<u64> {
    match mode {
        ServiceMode::Replicated { replicas } => Some(replicas),
        ServiceMode::Global => None,
    }
}

/// The transport of a published port. Only TCP is carried by the routing mesh; the type
/// leaves room for UDP without another format change.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    /// TCP.
    #[default]
    Tcp,
}

shoal_scheduler::words!(PortProtocol, "protocol", "tcp (the routing mesh carries TCP only)", {
    PortProtocol::Tcp => "tcp",
});

/// Where a published port listens (`--publish mode=`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// On every node, forwarded to any task of the service (the routing mesh; Docker's default).
    #[default]
    Ingress,
    /// Only on the nodes that run a task of the service, to that node's task.
    Host,
}

shoal_scheduler::words!(PublishMode, "publish mode", "ingress or host", {
    PublishMode::Ingress => "ingress",
    PublishMode::Host => "host",
});

/// A published port: `-p PUBLISHED:TARGET` or
/// `--publish published=P,target=T,protocol=tcp,mode=ingress|host,proxy-protocol=v2`.
///
/// On the wire and on disk it keeps the bytes it had before protocol, mode and PROXY
/// protocol existed: `published` then `target` as postcard varints, with the new settings in
/// the bits above the target's 16 (see [`PortSpecWire`]). A varint of a `u16` reads as the
/// same `u32`, so every stored `{published, target}` still decodes — as TCP, ingress, no
/// PROXY header, which is what it meant — and the default settings encode to the old bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "PortSpecWire", into = "PortSpecWire")]
pub struct PortSpec {
    /// The port the nodes listen on.
    pub published: u16,
    /// The port the task listens on.
    pub target: u16,
    /// TCP.
    pub protocol: PortProtocol,
    /// Every node (ingress) or the task's node only (host).
    pub mode: PublishMode,
    /// Send a PROXY protocol v2 header to the task before the client's bytes.
    pub proxy_protocol: bool,
}

/// [`PortSpec`]'s stored shape: the target port in the low 16 bits of `target`, and above
/// them [`HOST_MODE_BIT`] and [`PROXY_V2_BIT`] (a set bit this release does not know is
/// refused, so a newer setting is never silently dropped).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct PortSpecWire {
    /// The published port.
    pub published: u16,
    /// The target port and the setting bits.
    pub target: u32,
}

/// `mode=host` in [`PortSpecWire::target`].
pub const HOST_MODE_BIT: u32 = 1 << 16;
/// `proxy-protocol=v2` in [`PortSpecWire::target`].
pub const PROXY_V2_BIT: u32 = 1 << 17;

impl From<PortSpec> for PortSpecWire {
    fn from(p: PortSpec) -> Self {
        let PortProtocol::Tcp = p.protocol;
        let mut target = u32::from(p.target);
        if p.mode == PublishMode::Host {
            target |= HOST_MODE_BIT;
        }
        if p.proxy_protocol {
            target |= PROXY_V2_BIT;
        }
        PortSpecWire {
            published: p.published,
            target,
        }
    }
}

impl TryFrom<PortSpecWire> for PortSpec {
    type Error = String;

    fn try_from(w: PortSpecWire) -> Result<Self, String> {
        let unknown = w.target & !(0xffff | HOST_MODE_BIT | PROXY_V2_BIT);
        if unknown != 0 {
            return Err(format!(
                "published port {} has settings this release does not know ({unknown:#x})",
                w.published
            ));
        }
        Ok(PortSpec {
            published: w.published,
            target: u16::try_from(w.target & 0xffff).unwrap_or_default(),
            protocol: PortProtocol::Tcp,
            mode: if w.target & HOST_MODE_BIT == 0 {
                PublishMode::Ingress
            } else {
                PublishMode::Host
            },
            proxy_protocol: w.target & PROXY_V2_BIT != 0,
        })
    }
}

impl PortSpec {
    /// An ingress TCP port without PROXY protocol.
    #[must_use]
    pub fn tcp(published: u16, target: u16) -> Self {
        PortSpec {
            published,
            target,
            protocol: PortProtocol::Tcp,
            mode: PublishMode::Ingress,
            proxy_protocol: false,
        }
    }
}

impl std::fmt::Display for PortSpec {
    /// Docker's `service ls` form: `*:8080->80/tcp`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "*:{}->{}/{}", self.published, self.target, self.protocol)
    }
}

/// Memory and CPU amounts; zero means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceSpec {
    /// Memory in bytes (0: none).
    pub memory_bytes: u64,
    /// CPU in nano-CPUs, 1 CPU = 1 000 000 000 (0: none).
    pub nano_cpus: u64,
}

/// When an ended task is replaced (`--restart-condition`): the scheduler's type and words
/// (same variants in the same order, so the same postcard bytes).
pub use shoal_scheduler::RestartCondition;

/// Docker's `--restart-*` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicySpec {
    /// When to restart.
    pub condition: RestartCondition,
    /// Delay between a task's end and its replacement, in milliseconds.
    pub delay_ms: u64,
    /// Most restarts (within `window_ms` when non-zero); 0 = unlimited.
    pub max_attempts: u64,
    /// Window over which restarts are counted, in milliseconds; 0 = forever.
    pub window_ms: u64,
}

impl Default for RestartPolicySpec {
    /// Docker's defaults: `any`, 5 s, unlimited, no window.
    fn default() -> Self {
        RestartPolicySpec {
            condition: RestartCondition::Any,
            delay_ms: 5_000,
            max_attempts: 0,
            window_ms: 0,
        }
    }
}

/// What a health check runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthTestSpec {
    /// An argv run directly (Docker `CMD`).
    Cmd(Vec<String>),
    /// A string run with `/bin/sh -c` (Docker `CMD-SHELL`, what `--health-cmd` gives).
    Shell(String),
}

/// `--health-*` flags.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckSpec {
    /// The command.
    pub test: HealthTestSpec,
    /// Time between checks, in milliseconds.
    pub interval_ms: u64,
    /// A check running longer fails, in milliseconds.
    pub timeout_ms: u64,
    /// Consecutive failures that make the task unhealthy (at least 1).
    pub retries: u32,
    /// Failures during this time after start do not count, in milliseconds.
    pub start_period_ms: u64,
}

impl HealthCheckSpec {
    /// A shell check with Docker's defaults (30 s interval, 30 s timeout, 3 retries).
    pub fn shell(cmd: impl Into<String>) -> Self {
        HealthCheckSpec {
            test: HealthTestSpec::Shell(cmd.into()),
            interval_ms: 30_000,
            timeout_ms: 30_000,
            retries: 3,
            start_period_ms: 0,
        }
    }
}

/// `--update-order`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    /// Stop the old task, then start the new one (Docker's default).
    #[default]
    StopFirst,
    /// Start the new task, then stop the old one.
    StartFirst,
}

shoal_scheduler::words!(UpdateOrder, "update order", "stop-first or start-first", {
    UpdateOrder::StopFirst => "stop-first",
    UpdateOrder::StartFirst => "start-first",
});

/// `--update-failure-action`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureAction {
    /// Pause the update (Docker's default).
    #[default]
    Pause,
    /// Go on with the next tasks.
    Continue,
    /// Roll back to the previous spec.
    Rollback,
}

shoal_scheduler::words!(FailureAction, "update failure action", "pause, continue or rollback", {
    FailureAction::Pause => "pause",
    FailureAction::Continue => "continue",
    FailureAction::Rollback => "rollback",
});

/// The whole of a failure ratio in [`UpdateConfig::max_failure_ratio_ppm`]: parts per million.
pub const RATIO_ONE_PPM: u32 = 1_000_000;

/// `--update-*` (and `--rollback-*`) flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Tasks replaced at once (0 = all at once).
    pub parallelism: u64,
    /// Pause between batches, in milliseconds.
    pub delay_ms: u64,
    /// Stop-first or start-first.
    pub order: UpdateOrder,
    /// What to do when a new task fails.
    pub failure_action: FailureAction,
    /// How long after the last task of the update is ready a failure still counts, in
    /// milliseconds.
    pub monitor_ms: u64,
    /// Failures tolerated before the failure action, as a fraction of the tasks updated, in
    /// parts per million (0..=1 000 000).
    pub max_failure_ratio_ppm: u32,
}

impl Default for UpdateConfig {
    /// Docker's defaults: one at a time, no delay, stop-first, pause, 5 s monitor, ratio 0.
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            order: UpdateOrder::StopFirst,
            failure_action: FailureAction::Pause,
            monitor_ms: 5_000,
            max_failure_ratio_ppm: 0,
        }
    }
}

/// How a service's name is answered (Docker's `--endpoint-mode`; ARCHITECTURE.md, "Service
/// discovery").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndpointMode {
    /// One virtual IP, balanced by every node's proxy.
    #[default]
    Vip,
    /// The addresses of its tasks (those reachable from the asker).
    Dnsrr,
}

/// At most this many `--expose` ports per service.
pub const MAX_EXPOSE: usize = 64;

/// At most this many `--mount`s per service.
pub const MAX_MOUNTS: usize = 64;

/// What a mount is (Docker's `--mount type=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MountType {
    /// A path of the node's filesystem.
    Bind,
    /// A Docker volume on the node (named, or anonymous when the source is empty).
    Volume,
    /// A tmpfs in the task's memory.
    Tmpfs,
}

shoal_scheduler::words!(MountType, "mount type", "bind, volume or tmpfs", {
    MountType::Bind => "bind",
    MountType::Volume => "volume",
    MountType::Tmpfs => "tmpfs",
});

/// The less common task settings of a service (issue 23): user, directory, entrypoint,
/// hostname, an init, devices and privileges (Docker driver only).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOptionsSpec {
    /// `--entrypoint` (argv; `Some(vec![])` clears the image's).
    pub entrypoint: Option<Vec<String>>,
    /// `--user`.
    pub user: Option<String>,
    /// `--workdir`.
    pub workdir: Option<String>,
    /// `--hostname`.
    pub hostname: Option<String>,
    /// `--init`.
    pub init: bool,
    /// `--device`.
    pub devices: Vec<DeviceSpec>,
    /// `--cap-add` (upper case, without `CAP_`; `ALL` for all).
    pub cap_add: Vec<String>,
    /// `--cap-drop`.
    pub cap_drop: Vec<String>,
    /// `--privileged`.
    pub privileged: bool,
}

/// A device of the node in every task (`--device HOST[:CONTAINER[:PERMISSIONS]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceSpec {
    /// The node's path.
    pub host: String,
    /// The path in the task.
    pub container: String,
    /// Some of `rwm`.
    pub permissions: String,
}

impl std::str::FromStr for DeviceSpec {
    type Err = String;

    /// `HOST[:CONTAINER[:PERMISSIONS]]`, Docker's `--device`.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut parts = s.split(':');
        let host = parts.next().unwrap_or_default().to_string();
        let container = parts
            .next()
            .filter(|c| !c.is_empty())
            .unwrap_or(&host)
            .to_string();
        let permissions = parts.next().unwrap_or("rwm").to_string();
        if parts.next().is_some() {
            return Err(format!(
                "invalid device `{s}`: expected HOST[:CONTAINER[:PERMISSIONS]]"
            ));
        }
        let d = DeviceSpec {
            host,
            container,
            permissions,
        };
        d.validate()?;
        Ok(d)
    }
}

impl DeviceSpec {
    /// Absolute paths, and permissions of `r`, `w`, `m`.
    pub fn validate(&self) -> Result<(), String> {
        let path_ok = |p: &str| p.starts_with('/') && !p.chars().any(|c| c.is_control());
        if !path_ok(&self.host) || !path_ok(&self.container) {
            return Err(format!(
                "invalid device `{}:{}`: absolute paths are required (e.g. /dev/gpiomem)",
                self.host.escape_debug(),
                self.container.escape_debug()
            ));
        }
        let mut seen = BTreeSet::new();
        if self.permissions.is_empty()
            || !self
                .permissions
                .chars()
                .all(|c| matches!(c, 'r' | 'w' | 'm') && seen.insert(c))
        {
            return Err(format!(
                "invalid device permissions `{}`: some of r, w and m (e.g. rwm)",
                self.permissions.escape_debug()
            ));
        }
        Ok(())
    }
}

/// A capability as Docker takes it: upper case, without the `CAP_` prefix (`NET_ADMIN`,
/// `ALL`).
pub fn capability(s: &str) -> Result<String, String> {
    let up = s.trim().to_ascii_uppercase();
    let name = up.strip_prefix("CAP_").unwrap_or(&up);
    if name.is_empty()
        || name.len() > 32
        || !name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
    {
        return Err(format!(
            "invalid capability `{}`: a name such as NET_ADMIN, SYS_RAWIO or ALL",
            s.escape_debug()
        ));
    }
    Ok(name.to_string())
}

impl TaskOptionsSpec {
    /// The options' checks, one line each.
    pub fn validate(&self) -> Result<(), String> {
        let text_ok = |s: &str| {
            !s.is_empty()
                && s.len() <= 256
                && !s.chars().any(|c| c.is_control() || c.is_whitespace())
        };
        if let Some(u) = &self.user
            && !text_ok(u)
        {
            return Err(format!(
                "invalid user `{}`: name, uid, name:group or uid:gid",
                u.escape_debug()
            ));
        }
        if let Some(w) = &self.workdir
            && (!w.starts_with('/') || w.chars().any(char::is_control))
        {
            return Err(format!(
                "invalid workdir `{}`: an absolute path is required",
                w.escape_debug()
            ));
        }
        if let Some(h) = &self.hostname {
            let ok = !h.is_empty()
                && h.len() <= 63
                && h.starts_with(|c: char| c.is_ascii_alphanumeric())
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
            if !ok {
                return Err(format!(
                    "invalid hostname `{}`: letters, digits, - and ., at most 63",
                    h.escape_debug()
                ));
            }
        }
        if let Some(e) = &self.entrypoint
            && e.iter().any(|a| a.contains('\0'))
        {
            return Err("the entrypoint may not contain NUL characters".into());
        }
        for d in &self.devices {
            d.validate()?;
        }
        for c in self.cap_add.iter().chain(&self.cap_drop) {
            if capability(c)? != *c {
                return Err(format!(
                    "invalid capability `{c}`: write it as {}",
                    capability(c)?
                ));
            }
        }
        Ok(())
    }

    /// The runtime's options.
    #[must_use]
    pub fn to_runtime(&self) -> shoal_runtime::TaskOptions {
        shoal_runtime::TaskOptions {
            entrypoint: self.entrypoint.clone(),
            user: self.user.clone(),
            workdir: self.workdir.clone(),
            hostname: self.hostname.clone(),
            init: self.init,
            devices: self
                .devices
                .iter()
                .map(|d| shoal_runtime::Device {
                    host: d.host.clone(),
                    container: d.container.clone(),
                    permissions: d.permissions.clone(),
                })
                .collect(),
            cap_add: self.cap_add.clone(),
            cap_drop: self.cap_drop.clone(),
            privileged: self.privileged,
            files: Vec::new(),
            secrets: Vec::new(),
        }
    }
}

/// A config given to every task of a service (`--config NAME[,target=…,uid=…,gid=…,mode=…]`):
/// a file at `target`, read-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRef {
    /// The config's ID (the API handler resolves the name; the state machine checks it).
    pub config_id: String,
    /// Its name (as given; shown by `inspect`).
    pub config_name: String,
    /// The file's path in the task (default `/NAME`).
    pub target: String,
    /// Owner (numeric, default `0`).
    pub uid: u32,
    /// Group (numeric, default `0`).
    pub gid: u32,
    /// Permissions (default `0o444`).
    pub mode: u32,
}

/// A secret given to every task of a service (`--secret NAME[,target=…,uid=…,gid=…,mode=…]`):
/// an in-memory file, read-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRef {
    /// The secret's ID (the API handler resolves the name; the state machine checks it).
    pub secret_id: String,
    /// Its name (as given; shown by `inspect`).
    pub secret_name: String,
    /// The file's path in the task: absolute (default `/run/secrets/NAME`).
    pub target: String,
    /// Owner (numeric, default `0`).
    pub uid: u32,
    /// Group (numeric, default `0`).
    pub gid: u32,
    /// Permissions (default `0o444`).
    pub mode: u32,
}

/// A mount on every task of a service (`--mount`; Docker driver only). Local to the node the
/// task runs on: a bind's path and a volume live on that node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountSpec {
    /// Bind, volume or tmpfs.
    pub kind: MountType,
    /// The node's path (bind, absolute) or the volume's name (empty: anonymous); empty for
    /// tmpfs.
    pub source: String,
    /// Where in the task's filesystem (absolute).
    pub target: String,
    /// Mounted read-only.
    pub read_only: bool,
}

impl MountSpec {
    /// The mount's own checks, one line each.
    pub fn validate(&self) -> Result<(), String> {
        let bad = |s: &str| s.contains('\0') || s.contains(',') || s.chars().any(char::is_control);
        if !self.target.starts_with('/') || bad(&self.target) {
            return Err(format!(
                "invalid mount target `{}`: an absolute path is required",
                self.target.escape_debug()
            ));
        }
        match self.kind {
            MountType::Bind if !self.source.starts_with('/') || bad(&self.source) => Err(format!(
                "invalid bind mount source `{}`: an absolute path on the node is required",
                self.source.escape_debug()
            )),
            MountType::Volume
                if !self.source.is_empty()
                    && (!self.source.starts_with(|c: char| c.is_ascii_alphanumeric())
                        || !self.source.chars().all(|c| {
                            c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')
                        })) =>
            {
                Err(format!(
                    "invalid volume name `{}`: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed",
                    self.source.escape_debug()
                ))
            }
            MountType::Tmpfs if !self.source.is_empty() => Err(format!(
                "a tmpfs mount takes no source (got `{}`)",
                self.source.escape_debug()
            )),
            _ => Ok(()),
        }
    }
}

/// A service's spec as Raft stores it (inside [`super::ServiceRecord`]); the API's JSON body
/// is `crate::api::ServiceSpecBody`, converted into this with validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpec {
    /// Unique name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 63 characters.
    pub name: String,
    /// Docker: image reference. Process: absolute path of the program.
    pub image: String,
    /// Command arguments (Docker: replaces the image's `CMD` when not empty).
    pub args: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// `docker` or `process`.
    pub driver: String,
    /// Replicated or global.
    pub mode: ServiceMode,
    /// Published ports.
    pub ports: Vec<PortSpec>,
    /// Placement constraints (`node.labels.zone==attic`), checked by [`ServiceSpec::validate`].
    pub constraints: Vec<String>,
    /// Reserved per task (placement).
    pub reservations: ResourceSpec,
    /// Limits per task (enforced by the driver).
    pub limits: ResourceSpec,
    /// Restart policy.
    pub restart_policy: RestartPolicySpec,
    /// At most this many tasks per node (0 = unlimited).
    pub max_replicas_per_node: u64,
    /// Health check.
    pub health_check: Option<HealthCheckSpec>,
    /// Labels put on the tasks (may not start with `shoal.`).
    pub labels: BTreeMap<String, String>,
    /// Time between the stop signal and SIGKILL, in milliseconds.
    pub stop_grace_ms: u64,
    /// Rolling update settings.
    pub update_config: UpdateConfig,
    /// Rollback settings (`--rollback-*`; the failure action is pause or continue).
    pub rollback_config: UpdateConfig,
    /// `--no-healthcheck`: disable any health check, the image's `HEALTHCHECK` included.
    pub no_healthcheck: bool,
    /// Bumped by `service update --force`: a changed value replaces every task.
    pub force_update: u64,
    /// How the service's name resolves (`--endpoint-mode`).
    pub endpoint_mode: EndpointMode,
    /// Target ports reachable by name without publishing them (`--expose`, compose's
    /// `expose:`): with the published ports' targets, the ports of its VIP.
    pub expose: Vec<u16>,
    /// Mounts on every task (`--mount`; Docker driver only).
    pub mounts: Vec<MountSpec>,
    /// User, directory, entrypoint, hostname, init, devices and privileges of every task
    /// (Docker driver only).
    pub options: TaskOptionsSpec,
    /// Configs given to every task as files (`--config`; Docker driver only).
    pub configs: Vec<ConfigRef>,
    /// Secrets given to every task as in-memory files (`--secret`).
    pub secrets: Vec<SecretRef>,
}

impl Default for ServiceSpec {
    fn default() -> Self {
        ServiceSpec {
            name: String::new(),
            image: String::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            driver: "docker".into(),
            mode: ServiceMode::Replicated { replicas: 1 },
            ports: Vec::new(),
            constraints: Vec::new(),
            reservations: ResourceSpec::default(),
            limits: ResourceSpec::default(),
            restart_policy: RestartPolicySpec::default(),
            max_replicas_per_node: 0,
            health_check: None,
            labels: BTreeMap::new(),
            stop_grace_ms: 10_000,
            update_config: UpdateConfig::default(),
            rollback_config: UpdateConfig::default(),
            no_healthcheck: false,
            force_update: 0,
            endpoint_mode: EndpointMode::Vip,
            expose: Vec::new(),
            mounts: Vec::new(),
            options: TaskOptionsSpec::default(),
            configs: Vec::new(),
            secrets: Vec::new(),
        }
    }
}

/// Checks a service name against Docker's rules.
pub fn validate_service_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("a service name is required".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "invalid service name `{name}`: at most {MAX_NAME_LEN} characters"
        ));
    }
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    let rest_ok = chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if !first_ok || !rest_ok {
        return Err(format!(
            "invalid service name `{name}`: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed"
        ));
    }
    Ok(())
}

/// Checks the name of a config (or secret): `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 64.
pub fn validate_object_name(what: &str, name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} name `{}`: 1-64 of [a-zA-Z0-9_.-], starting with a letter or digit",
            name.escape_debug()
        ))
    }
}

/// Checks an ID that the runtime uses in labels and names: 1–64 of `[A-Za-z0-9_.-]`, not
/// starting with `.`.
pub(crate) fn validate_ident(what: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && !value.starts_with('.')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid {what} `{value}`: 1-64 characters of [A-Za-z0-9_.-], not starting with '.'"
        ))
    }
}

impl ServiceSpec {
    /// A replicated service of one task with Docker's defaults elsewhere.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        ServiceSpec {
            name: name.into(),
            image: image.into(),
            ..ServiceSpec::default()
        }
    }

    /// The parsed constraints.
    pub fn parsed_constraints(&self) -> Result<Vec<Constraint>, String> {
        Constraint::parse_all(&self.constraints).map_err(|e| e.to_string())
    }

    /// Checks everything a node would otherwise refuse later; the error is one line.
    pub fn validate(&self) -> Result<(), String> {
        validate_service_name(&self.name)?;
        if !DRIVERS.contains(&self.driver.as_str()) {
            return Err(format!(
                "invalid driver `{}`: expected docker or process",
                self.driver
            ));
        }
        if self.image.trim().is_empty() {
            return Err("an image (or, with --driver process, a program path) is required".into());
        }
        if self
            .image
            .chars()
            .any(|c| c.is_control() || c.is_whitespace())
        {
            return Err(format!(
                "invalid image `{}`: it may not contain spaces or control characters",
                self.image.escape_debug()
            ));
        }
        if self.driver == "process" && !self.image.starts_with('/') {
            return Err(format!(
                "invalid program `{}`: with --driver process the image must be an absolute path",
                self.image
            ));
        }
        if let ServiceMode::Replicated { replicas } = self.mode
            && replicas > MAX_REPLICAS
        {
            return Err(format!(
                "invalid replicas {replicas}: at most {MAX_REPLICAS}"
            ));
        }
        if self.args.iter().any(|a| a.contains('\0')) {
            return Err("arguments may not contain NUL characters".into());
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(format!(
                    "invalid environment variable name `{}`",
                    k.escape_debug()
                ));
            }
            if v.contains('\0') {
                return Err(format!(
                    "environment variable `{k}` may not contain NUL characters"
                ));
            }
        }
        for k in self.labels.keys() {
            if k.is_empty() {
                return Err("a label key may not be empty".into());
            }
            if k.starts_with(shoal_runtime::LABEL_PREFIX) {
                return Err(format!(
                    "label `{k}` uses the reserved prefix `{}`",
                    shoal_runtime::LABEL_PREFIX
                ));
            }
        }
        self.validate_ports()?;
        self.validate_mounts()?;
        self.validate_configs()?;
        self.validate_secrets()?;
        self.options.validate()?;
        if self.driver != "docker" && self.options != TaskOptionsSpec::default() {
            return Err("--user, --workdir, --hostname, --entrypoint, --init, --device, --cap-add, --cap-drop and --privileged need the docker driver".into());
        }
        self.parsed_constraints()?;
        let (r, l) = (self.reservations, self.limits);
        if l.memory_bytes > 0 && r.memory_bytes > l.memory_bytes {
            return Err(format!(
                "the memory reservation ({} bytes) exceeds the memory limit ({} bytes)",
                r.memory_bytes, l.memory_bytes
            ));
        }
        if l.nano_cpus > 0 && r.nano_cpus > l.nano_cpus {
            return Err(format!(
                "the CPU reservation ({} nano-CPUs) exceeds the CPU limit ({} nano-CPUs)",
                r.nano_cpus, l.nano_cpus
            ));
        }
        for (what, u) in [
            ("update", &self.update_config),
            ("rollback", &self.rollback_config),
        ] {
            if u.max_failure_ratio_ppm > RATIO_ONE_PPM {
                return Err(format!(
                    "invalid {what} max failure ratio {}: it must be between 0 and 1",
                    f64::from(u.max_failure_ratio_ppm) / f64::from(RATIO_ONE_PPM)
                ));
            }
        }
        if self.rollback_config.failure_action == FailureAction::Rollback {
            return Err(
                "invalid rollback failure action `rollback`: expected pause or continue".into(),
            );
        }
        if self.no_healthcheck && self.health_check.is_some() {
            return Err("--no-healthcheck conflicts with the --health-* options".into());
        }
        if let Some(h) = &self.health_check {
            let empty = match &h.test {
                HealthTestSpec::Cmd(argv) => argv.first().is_none_or(|a| a.is_empty()),
                HealthTestSpec::Shell(s) => s.trim().is_empty(),
            };
            if empty {
                return Err("the health check command is empty".into());
            }
            if h.interval_ms < 10 || h.timeout_ms < 10 {
                return Err("health check interval and timeout must be at least 10ms".into());
            }
            if h.retries == 0 {
                return Err("health check retries must be at least 1".into());
            }
        }
        Ok(())
    }

    /// The published ports' own checks (one line each): ports 1-65535, each published port
    /// once, and `mode=host` only where no node can run two tasks of the service (two tasks
    /// cannot both listen on the node's one port).
    fn validate_ports(&self) -> Result<(), String> {
        let mut published = BTreeSet::new();
        for p in &self.ports {
            if p.published == 0 || p.target == 0 {
                return Err("invalid port 0: ports are 1-65535".into());
            }
            if !published.insert(p.published) {
                return Err(format!("port {} is published twice", p.published));
            }
        }
        let mut exposed = BTreeSet::new();
        for &p in &self.expose {
            if p == 0 {
                return Err("invalid exposed port 0: ports are 1-65535".into());
            }
            if !exposed.insert(p) {
                return Err(format!("port {p} is exposed twice"));
            }
        }
        if self.expose.len() > MAX_EXPOSE {
            return Err(format!("at most {MAX_EXPOSE} ports may be exposed"));
        }
        if self.endpoint_mode == EndpointMode::Dnsrr
            && let Some(p) = self.ports.iter().find(|p| p.mode == PublishMode::Ingress)
        {
            return Err(format!(
                "port {} is published in ingress mode, which --endpoint-mode dnsrr cannot serve (no virtual IP): publish it with mode=host, or use --endpoint-mode vip",
                p.published
            ));
        }
        let host = self.ports.iter().find(|p| p.mode == PublishMode::Host);
        if let Some(p) = host
            && self.mode != ServiceMode::Global
            && self.max_replicas_per_node != 1
        {
            return Err(format!(
                "port {} is published in host mode, where two tasks on one node would share it: use --replicas-max-per-node 1 or --mode global",
                p.published
            ));
        }
        Ok(())
    }

    /// The configs' checks: absolute targets, each once (and not a mount's), modes of at most
    /// `0o777`, Docker driver only.
    fn validate_configs(&self) -> Result<(), String> {
        if self.configs.is_empty() {
            return Ok(());
        }
        if self.driver != "docker" {
            return Err("--config needs the docker driver".into());
        }
        let mut targets: BTreeSet<&str> = self
            .mounts
            .iter()
            .map(|m| m.target.trim_end_matches('/'))
            .collect();
        for c in &self.configs {
            if !c.target.starts_with('/')
                || c.target.ends_with('/')
                || c.target.chars().any(|ch| ch.is_control() || ch == ',')
            {
                return Err(format!(
                    "invalid config target `{}`: an absolute file path is required",
                    c.target.escape_debug()
                ));
            }
            if c.mode > 0o777 {
                return Err(format!("invalid config mode {:o}: at most 0777", c.mode));
            }
            if !targets.insert(c.target.as_str()) {
                return Err(format!(
                    "two configs or mounts have the target {}",
                    c.target
                ));
            }
        }
        Ok(())
    }

    /// The secrets' checks: absolute targets, each once (and not a config's or a mount's),
    /// modes of at most `0o777`; for the process driver, whose tasks find them in one
    /// directory (`$SHOAL_SECRETS_DIR`), distinct file names.
    fn validate_secrets(&self) -> Result<(), String> {
        let mut targets: BTreeSet<&str> = self
            .mounts
            .iter()
            .map(|m| m.target.trim_end_matches('/'))
            .chain(self.configs.iter().map(|c| c.target.as_str()))
            .collect();
        let mut names: BTreeSet<&str> = BTreeSet::new();
        for c in &self.secrets {
            if !c.target.starts_with('/')
                || c.target.ends_with('/')
                || c.target.chars().any(|ch| ch.is_control() || ch == ',')
            {
                return Err(format!(
                    "invalid secret target `{}`: a file name or an absolute file path is required",
                    c.target.escape_debug()
                ));
            }
            if c.mode > 0o777 {
                return Err(format!("invalid secret mode {:o}: at most 0777", c.mode));
            }
            if !targets.insert(c.target.as_str()) {
                return Err(format!(
                    "two secrets, configs or mounts have the target {}",
                    c.target
                ));
            }
            let name = c.target.rsplit('/').next().unwrap_or_default();
            if self.driver == "process" && !names.insert(name) {
                return Err(format!(
                    "two secrets have the file name `{name}`: a process task finds its secrets in one directory"
                ));
            }
        }
        Ok(())
    }

    /// The mounts' checks: each valid, each target once, at most [`MAX_MOUNTS`], and only
    /// with the Docker driver.
    fn validate_mounts(&self) -> Result<(), String> {
        if self.mounts.is_empty() {
            return Ok(());
        }
        if self.driver != "docker" {
            return Err(
                "--mount needs the docker driver: the process driver runs programs on the node's own filesystem"
                    .into(),
            );
        }
        if self.mounts.len() > MAX_MOUNTS {
            return Err(format!("at most {MAX_MOUNTS} mounts are allowed"));
        }
        let mut targets = BTreeSet::new();
        for m in &self.mounts {
            m.validate()?;
            if !targets.insert(m.target.trim_end_matches('/')) {
                return Err(format!("two mounts have the target {}", m.target));
            }
        }
        Ok(())
    }

    /// The target ports a task is given (deduplicated, in the spec's order: the first is the
    /// process driver's `PORT`).
    fn task_targets(&self) -> Vec<u16> {
        let mut seen = BTreeSet::new();
        self.ports
            .iter()
            .map(|p| p.target)
            .chain(self.expose.iter().copied())
            .filter(|t| seen.insert(*t))
            .collect()
    }

    /// The ports the service is reached on by name (its VIP's ports): the published ports'
    /// targets, then the exposed ones, each once.
    #[must_use]
    pub fn discovery_ports(&self) -> Vec<u16> {
        self.task_targets()
    }

    /// The ports that are part of a task (see [`ServiceSpec::same_task`]): the target ports
    /// the runtime opens for it, and every host-mode port whole.
    fn task_ports(&self) -> (Vec<u16>, Vec<PortSpec>) {
        let host = self
            .ports
            .iter()
            .filter(|p| p.mode == PublishMode::Host)
            .copied()
            .collect();
        (self.task_targets(), host)
    }

    /// True when a task created from `self` runs what `other` asks for: every field the task
    /// is made of is equal (image, args, env, driver, the task's ports, reservations, limits,
    /// health, labels, stop grace, the force counter). Replica count, placement (constraints
    /// and max per node, which the scheduler applies to running tasks), restart policy and
    /// the update and rollback settings are not part of a task: changing them alone replaces
    /// nothing.
    ///
    /// Of the published ports, a task is made of its target ports (the runtime exposes them,
    /// and the process driver hands the task `PORT`/`PORT_<target>` for them) and of its
    /// host-mode ports (bound on the task's own node for that task, as Swarm replaces tasks
    /// when host-published ports change). An ingress port's published number and its PROXY
    /// protocol setting live in the routing mesh alone, which every node re-binds from the
    /// spec: changing them replaces no task, so `-p 8081:80` instead of `-p 8080:80` is not
    /// a restart of every replica.
    pub fn same_task(&self, other: &ServiceSpec) -> bool {
        self.image == other.image
            && self.args == other.args
            && self.env == other.env
            && self.driver == other.driver
            && self.task_ports() == other.task_ports()
            && self.reservations == other.reservations
            && self.limits == other.limits
            && self.health_check == other.health_check
            && self.no_healthcheck == other.no_healthcheck
            && self.labels == other.labels
            && self.stop_grace_ms == other.stop_grace_ms
            && self.force_update == other.force_update
            && self.mounts == other.mounts
            && self.options == other.options
            && self.configs == other.configs
            && self.secrets == other.secrets
    }

    /// The runtime spec of one task of this service.
    pub fn task_spec(&self, task_id: &str, service_id: &str, slot: u64) -> TaskSpec {
        let mut spec = TaskSpec::new(task_id, service_id, &self.name, slot, &self.image);
        spec.args.clone_from(&self.args);
        spec.env.clone_from(&self.env);
        spec.labels.clone_from(&self.labels);
        if !self.secrets.is_empty() {
            // The worker starts the task only with these, sent apart (never the bytes here).
            let names: Vec<&str> = self
                .secrets
                .iter()
                .map(|s| s.secret_name.as_str())
                .collect();
            spec.labels
                .insert(crate::worker::LABEL_SECRETS.into(), names.join(","));
        }
        spec.ports = self.task_targets();
        spec.resources = shoal_runtime::Resources {
            memory_bytes: Some(self.limits.memory_bytes).filter(|&m| m > 0),
            nano_cpus: Some(self.limits.nano_cpus).filter(|&c| c > 0),
        };
        spec.health = self.health_check.as_ref().map(|h| HealthCheck {
            test: match &h.test {
                HealthTestSpec::Cmd(argv) => HealthTest::Cmd(argv.clone()),
                HealthTestSpec::Shell(s) => HealthTest::Shell(s.clone()),
            },
            interval: Duration::from_millis(h.interval_ms),
            timeout: Duration::from_millis(h.timeout_ms),
            retries: h.retries,
            start_period: Duration::from_millis(h.start_period_ms),
        });
        if self.no_healthcheck {
            // `--no-healthcheck`: no check, the image's HEALTHCHECK disabled too.
            spec.health = Some(HealthCheck::new(HealthTest::None));
        }
        spec.stop_grace = Duration::from_millis(self.stop_grace_ms);
        spec.options = self.options.to_runtime();
        spec.mounts = self
            .mounts
            .iter()
            .map(|m| shoal_runtime::Mount {
                kind: match m.kind {
                    MountType::Bind => shoal_runtime::MountKind::Bind,
                    MountType::Volume => shoal_runtime::MountKind::Volume,
                    MountType::Tmpfs => shoal_runtime::MountKind::Tmpfs,
                },
                source: m.source.clone(),
                target: m.target.clone(),
                read_only: m.read_only,
            })
            .collect();
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::services::tests::replicated;

    /// The words keep the one-line errors they always had.
    #[test]
    fn words_parse_and_print() {
        assert_eq!("start-first".parse(), Ok(UpdateOrder::StartFirst));
        assert_eq!(FailureAction::Continue.to_string(), "continue");
        assert_eq!(
            "x".parse::<UpdateOrder>().unwrap_err().to_string(),
            "invalid update order `x`: expected stop-first or start-first"
        );
        assert_eq!(
            "x".parse::<FailureAction>().unwrap_err().to_string(),
            "invalid update failure action `x`: expected pause, continue or rollback"
        );
        assert_eq!(
            "x".parse::<RestartCondition>().unwrap_err().to_string(),
            "invalid restart condition `x`: expected any, on-failure or none"
        );
        assert_eq!(mode_word(ServiceMode::Global), "global");
        assert_eq!(
            mode_replicas(ServiceMode::Replicated { replicas: 3 }),
            Some(3)
        );
    }

    #[test]
    fn spec_validation() {
        assert_eq!(replicated("web", 3).validate(), Ok(()));
        let mut ok = replicated("a.b_c-1", 0);
        ok.constraints = vec![
            "node.role==manager".into(),
            "node.labels.zone != attic".into(),
        ];
        ok.ports = vec![PortSpec::tcp(8080, 80)];
        ok.health_check = Some(HealthCheckSpec::shell("true"));
        assert_eq!(ok.validate(), Ok(()));
        let mut p = ServiceSpec::new("p", "/bin/sleep");
        p.driver = "process".into();
        assert_eq!(p.validate(), Ok(()));

        let bad = |f: &dyn Fn(&mut ServiceSpec), needle: &str| {
            let mut s = replicated("web", 1);
            f(&mut s);
            let err = s.validate().expect_err(needle);
            assert!(err.contains(needle), "`{err}` should mention `{needle}`");
            assert!(!err.contains('\n'));
        };
        bad(&|s| s.name = String::new(), "name is required");
        bad(&|s| s.name = "-web".into(), "invalid service name");
        bad(&|s| s.name = "we b".into(), "invalid service name");
        bad(&|s| s.name = "x".repeat(64), "at most 63");
        bad(&|s| s.image = " ".into(), "image");
        bad(&|s| s.image = "a b".into(), "invalid image");
        bad(&|s| s.driver = "podman".into(), "invalid driver `podman`");
        bad(&|s| s.driver = "process".into(), "absolute path");
        bad(
            &|s| s.mode = ServiceMode::Replicated { replicas: u64::MAX },
            "invalid replicas",
        );
        bad(
            &|s| s.constraints = vec!["node.role=manager".into()],
            "invalid constraint",
        );
        bad(
            &|s| s.constraints = vec!["node.color==red".into()],
            "unknown field",
        );
        bad(
            &|s| {
                s.ports = vec![PortSpec::tcp(0, 80)];
            },
            "invalid port 0: ports are 1-65535",
        );
        bad(
            &|s| {
                s.ports = vec![PortSpec::tcp(8080, 0)];
            },
            "invalid port 0: ports are 1-65535",
        );
        bad(
            &|s| {
                s.ports = vec![PortSpec::tcp(80, 80), PortSpec::tcp(80, 81)];
            },
            "published twice",
        );
        bad(
            &|s| drop(s.env.insert("A=B".into(), "x".into())),
            "environment variable",
        );
        bad(
            &|s| drop(s.labels.insert("shoal.task".into(), "x".into())),
            "reserved prefix",
        );
        bad(
            &|s| {
                s.reservations.memory_bytes = 2;
                s.limits.memory_bytes = 1;
            },
            "exceeds the memory limit",
        );
        bad(
            &|s| s.health_check = Some(HealthCheckSpec::shell(" ")),
            "health check command is empty",
        );
        bad(
            &|s| {
                let mut h = HealthCheckSpec::shell("true");
                h.retries = 0;
                s.health_check = Some(h);
            },
            "retries",
        );
    }
}

#[cfg(test)]
mod update_tests {
    use super::*;

    fn host(published: u16, target: u16) -> PortSpec {
        PortSpec {
            mode: PublishMode::Host,
            ..PortSpec::tcp(published, target)
        }
    }

    /// `mode=host` needs at most one task per node; the refusal says how to get that.
    #[test]
    fn host_mode_ports_need_one_task_per_node() {
        let mut s = ServiceSpec::new("web", "img");
        s.mode = ServiceMode::Replicated { replicas: 3 };
        s.ports = vec![PortSpec::tcp(8080, 80), host(9090, 90)];
        let err = s.validate().unwrap_err();
        assert!(err.contains("port 9090"), "{err}");
        assert!(
            err.contains("--replicas-max-per-node 1") && err.contains("--mode global"),
            "{err}"
        );
        assert!(!err.contains('\n'));
        s.max_replicas_per_node = 2;
        assert!(s.validate().is_err());
        s.max_replicas_per_node = 1;
        assert_eq!(s.validate(), Ok(()));
        s.max_replicas_per_node = 0;
        s.mode = ServiceMode::Global;
        assert_eq!(s.validate(), Ok(()));
        // Ingress ports alone are fine with any number of tasks per node.
        s.mode = ServiceMode::Replicated { replicas: 3 };
        s.ports = vec![PortSpec::tcp(8080, 80)];
        assert_eq!(s.validate(), Ok(()));
    }

    /// A task is given each target port once, in the spec's order.
    #[test]
    fn task_spec_gets_each_target_once() {
        let mut s = ServiceSpec::new("web", "img");
        s.ports = vec![
            PortSpec::tcp(8081, 81),
            PortSpec::tcp(8080, 80),
            PortSpec::tcp(8082, 81),
        ];
        assert_eq!(s.task_spec("t", "s", 1).ports, [81, 80]);
    }

    /// Ingress published ports and PROXY protocol live in the mesh: changing them replaces
    /// no task. Target ports and host-mode ports are part of the task.
    #[test]
    fn same_task_and_ports() {
        let mut a = ServiceSpec::new("web", "img:1");
        a.max_replicas_per_node = 1;
        a.ports = vec![PortSpec::tcp(8080, 80)];
        let mesh_only: [&dyn Fn(&mut ServiceSpec); 3] = [
            &|s| s.ports[0].published = 8081,
            &|s| s.ports[0].proxy_protocol = true,
            &|s| s.ports.push(PortSpec::tcp(8081, 80)),
        ];
        for change in mesh_only {
            let mut b = a.clone();
            change(&mut b);
            assert!(a.same_task(&b), "{:?}", b.ports);
        }
        let task: [&dyn Fn(&mut ServiceSpec); 5] = [
            &|s| s.ports[0].target = 81,
            &|s| s.ports.clear(),
            &|s| s.ports.push(PortSpec::tcp(9090, 90)),
            &|s| s.ports[0].mode = PublishMode::Host,
            &|s| s.ports.push(host(9090, 80)),
        ];
        for change in task {
            let mut b = a.clone();
            change(&mut b);
            assert!(!a.same_task(&b), "{:?}", b.ports);
        }
        // A host-mode port's published number is part of the task.
        let mut h = a;
        h.ports = vec![host(8080, 80)];
        let mut h2 = h.clone();
        h2.ports[0].published = 8081;
        assert!(!h.same_task(&h2));
    }

    /// `--no-healthcheck` reaches the runtime as a disabled check (the image's too).
    #[test]
    fn no_healthcheck_disables_every_check_in_the_task_spec() {
        let mut s = ServiceSpec::new("web", "img");
        assert_eq!(s.task_spec("t", "s", 1).health, None);
        s.no_healthcheck = true;
        let h = s.task_spec("t", "s", 1).health.expect("a disabled check");
        assert_eq!(h.test, HealthTest::None);
    }

    /// Only what a task is made of makes tasks outdated.
    #[test]
    fn same_task_ignores_replicas_placement_restart_and_update_settings() {
        let a = ServiceSpec::new("web", "img:1");
        let mut b = a.clone();
        b.mode = ServiceMode::Replicated { replicas: 9 };
        b.constraints = vec!["node.role==manager".into()];
        b.max_replicas_per_node = 2;
        b.restart_policy.delay_ms = 1;
        b.update_config.parallelism = 4;
        b.rollback_config.order = UpdateOrder::StartFirst;
        assert!(a.same_task(&b));
        let changes: [&dyn Fn(&mut ServiceSpec); 5] = [
            &|s| s.image = "img:2".into(),
            &|s| s.force_update += 1,
            &|s| drop(s.env.insert("A".into(), "1".into())),
            &|s| s.stop_grace_ms += 1,
            &|s| s.no_healthcheck = true,
        ];
        for change in changes {
            let mut c = a.clone();
            change(&mut c);
            assert!(!a.same_task(&c), "{c:?}");
        }
    }
}
