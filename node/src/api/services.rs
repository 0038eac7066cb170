//! The JSON of services and tasks in the control API (DESIGN §8): the body of
//! `service create` ([`ServiceSpecBody`]), `service ls`/`inspect` ([`ServiceRow`],
//! [`ServiceInspect`]) and `service ps`/`node ps` ([`TaskRow`]) rows, scale and answers.
//!
//! These are the contract, apart from the Raft records in [`crate::manager::services`]: one
//! conversion each way between them (`TryFrom<ServiceSpecBody> for ServiceSpec`, which
//! validates, and `From<&ServiceSpec> for ServiceSpecBody`; the rows are built from the
//! records by [`ServiceRow::of`] and [`TaskRow::of`]). Field names, defaults and words must not
//! change; the JSON names its fields, so a new one is `#[serde(default)]` on input.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_scheduler::{RestartCondition, Slot, Task, TaskState};

use crate::manager::services::{
    ConfigRef, FailureAction, HealthCheckSpec, HealthTestSpec, MountSpec, PortSpec, ResourceSpec,
    RestartPolicySpec, SecretRef, ServiceMode, ServiceRecord, ServiceSpec, ServicesState,
    TaskOptionsSpec, UpdateConfig, UpdateOrder, capability, mode_replicas, mode_word,
};
use crate::manager::state::NodeRecord;
use crate::util::rfc3339_millis;

// ---------------------------------------------------------------------------------------------
// The spec body
// ---------------------------------------------------------------------------------------------

/// Replicated with a count, or one task per eligible node: `{"replicated": {"replicas": 3}}`
/// or `"global"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceModeBody {
    /// `--replicas N`: slots `1..=N`.
    Replicated {
        /// Desired number of tasks.
        replicas: u64,
    },
    /// `--mode global`: one task on every eligible node.
    Global,
}

/// A published port: `-p PUBLISHED:TARGET` or the long form `--publish
/// published=P,target=T,protocol=tcp,mode=ingress|host,proxy-protocol=v2`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortBody {
    /// The port the nodes listen on.
    pub published: u16,
    /// The port the task listens on.
    pub target: u16,
    /// `tcp` (the only one the routing mesh carries).
    #[serde(default = "tcp_word")]
    pub protocol: String,
    /// `ingress` (every node) or `host` (the task's node only).
    #[serde(default = "ingress_word")]
    pub mode: String,
    /// `v2`: the task gets a PROXY protocol v2 header first; `null`: none.
    #[serde(default)]
    pub proxy_protocol: Option<String>,
}

fn tcp_word() -> String {
    "tcp".into()
}

fn ingress_word() -> String {
    "ingress".into()
}

/// Memory and CPU amounts; zero means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourcesBody {
    /// Memory in bytes (0: none).
    pub memory_bytes: u64,
    /// CPU in nano-CPUs, 1 CPU = 1 000 000 000 (0: none).
    pub nano_cpus: u64,
}

/// Docker's `--restart-*` flags; a missing field takes Docker's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RestartPolicyBody {
    /// When to restart: `any`, `on-failure` or `none`.
    #[serde(with = "restart_condition_word")]
    pub condition: RestartCondition,
    /// Delay between a task's end and its replacement, in milliseconds.
    pub delay_ms: u64,
    /// Most restarts (within `window_ms` when non-zero); 0 = unlimited.
    pub max_attempts: u64,
    /// Window over which restarts are counted, in milliseconds; 0 = forever.
    pub window_ms: u64,
}

impl Default for RestartPolicyBody {
    fn default() -> Self {
        RestartPolicySpec::default().into()
    }
}

/// What a health check runs: `{"cmd": [...]}` or `{"shell": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthTestBody {
    /// An argv run directly (Docker `CMD`).
    Cmd(Vec<String>),
    /// A string run with `/bin/sh -c` (Docker `CMD-SHELL`, what `--health-cmd` gives).
    Shell(String),
}

/// `--health-*` flags (every field required).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheckBody {
    /// The command.
    pub test: HealthTestBody,
    /// Time between checks, in milliseconds.
    pub interval_ms: u64,
    /// A check running longer fails, in milliseconds.
    pub timeout_ms: u64,
    /// Consecutive failures that make the task unhealthy (at least 1).
    pub retries: u32,
    /// Failures during this time after start do not count, in milliseconds.
    pub start_period_ms: u64,
}

impl HealthCheckBody {
    /// A shell check with Docker's defaults (those of [`HealthCheckSpec::shell`]).
    pub fn shell(cmd: impl Into<String>) -> Self {
        (&HealthCheckSpec::shell(cmd)).into()
    }
}

/// `--update-*` flags; a missing field takes Docker's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateConfigBody {
    /// Tasks replaced at once (0 = all at once).
    pub parallelism: u64,
    /// Pause between batches, in milliseconds.
    pub delay_ms: u64,
    /// `stop-first` or `start-first`.
    pub order: UpdateOrder,
    /// `pause`, `continue` or `rollback`.
    pub failure_action: FailureAction,
    /// How long after the last task is ready a failure still counts, in milliseconds.
    pub monitor_ms: u64,
    /// Failures tolerated, as a fraction of the tasks updated, in parts per million.
    pub max_failure_ratio_ppm: u32,
}

impl Default for UpdateConfigBody {
    fn default() -> Self {
        UpdateConfig::default().into()
    }
}

/// `POST /v1/services`: what a user asks for with `service create`; a missing field takes the
/// default of [`ServiceSpec::default`] (Docker's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceSpecBody {
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
    pub mode: ServiceModeBody,
    /// Published ports.
    pub ports: Vec<PortBody>,
    /// Placement constraints (`node.labels.zone==attic`).
    pub constraints: Vec<String>,
    /// Reserved per task (placement).
    pub reservations: ResourcesBody,
    /// Limits per task (enforced by the driver).
    pub limits: ResourcesBody,
    /// Restart policy.
    pub restart_policy: RestartPolicyBody,
    /// At most this many tasks per node (0 = unlimited).
    pub max_replicas_per_node: u64,
    /// Health check.
    pub health_check: Option<HealthCheckBody>,
    /// Labels put on the tasks (may not start with `shoal.`).
    pub labels: BTreeMap<String, String>,
    /// Time between the stop signal and SIGKILL, in milliseconds.
    pub stop_grace_ms: u64,
    /// Rolling update settings.
    pub update_config: UpdateConfigBody,
    /// Rollback settings.
    pub rollback_config: UpdateConfigBody,
    /// Disable any health check, the image's included.
    pub no_healthcheck: bool,
    /// Bumped by `service update --force`.
    pub force_update: u64,
    /// `vip` (one virtual IP, balanced by every node) or `dnsrr` (the tasks' addresses).
    pub endpoint_mode: String,
    /// Target ports reachable by name without publishing them (`--expose`).
    pub expose: Vec<u16>,
    /// Mounts on every task (`--mount`).
    pub mounts: Vec<MountBody>,
    /// Replaces the image's entrypoint (`--entrypoint`).
    pub entrypoint: Option<Vec<String>>,
    /// User to run as (`--user`).
    pub user: Option<String>,
    /// Working directory (`--workdir`).
    pub workdir: Option<String>,
    /// The container's hostname (`--hostname`).
    pub hostname: Option<String>,
    /// An init as PID 1 (`--init`).
    pub init: bool,
    /// Devices, `HOST[:CONTAINER[:PERMISSIONS]]` (`--device`).
    pub devices: Vec<String>,
    /// Capabilities added (`--cap-add`).
    pub cap_add: Vec<String>,
    /// Capabilities dropped (`--cap-drop`).
    pub cap_drop: Vec<String>,
    /// Every capability and device (`--privileged`; only on nodes that allow it).
    pub privileged: bool,
    /// Configs given to the tasks as files (`--config`).
    pub configs: Vec<ConfigRefBody>,
    /// Secrets given to the tasks as in-memory files (`--secret`).
    pub secrets: Vec<SecretRefBody>,
}

/// `POST /v1/configs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigCreateBody {
    /// Its name.
    pub name: String,
    /// Its bytes, base64.
    pub data: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// `POST /v1/secrets`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretCreateBody {
    /// Its name.
    pub name: String,
    /// Its bytes, base64.
    pub data: String,
    /// Labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl std::fmt::Debug for SecretCreateBody {
    /// Without the bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCreateBody")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// `POST /v1/secrets/{ref}/compare`: whether the secret holds these bytes (what `stack
/// deploy` asks instead of keeping a digest of a secret anywhere).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretCompareBody {
    /// The bytes, base64.
    pub data: String,
}

impl std::fmt::Debug for SecretCompareBody {
    /// Without the bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretCompareBody").finish_non_exhaustive()
    }
}

/// The answer to [`SecretCompareBody`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretCompared {
    /// The secret holds exactly those bytes.
    pub same: bool,
}

/// A secret as `secret ls` and `secret inspect` show it: never its bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretView {
    /// ID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// RFC 3339.
    pub created_at: String,
}

impl SecretView {
    /// The view of `s`.
    #[must_use]
    pub fn of(s: &crate::manager::services::SecretRecord) -> SecretView {
        SecretView {
            id: s.id.clone(),
            name: s.name.clone(),
            labels: s.labels.clone(),
            created_at: rfc3339_millis(s.created_at),
        }
    }
}

/// A config as `config ls` and `config inspect` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigView {
    /// ID.
    pub id: String,
    /// Name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// RFC 3339.
    pub created_at: String,
    /// The bytes, base64 (`inspect` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

impl ConfigView {
    /// The view of `c`, with its data or not.
    #[must_use]
    pub fn of(c: &crate::manager::services::ConfigRecord, with_data: bool) -> ConfigView {
        use base64::Engine as _;
        ConfigView {
            id: c.id.clone(),
            name: c.name.clone(),
            size: c.data.len() as u64,
            labels: c.labels.clone(),
            created_at: rfc3339_millis(c.created_at),
            data: with_data.then(|| base64::engine::general_purpose::STANDARD.encode(&c.data)),
        }
    }
}

/// A service's use of a config, as the API takes and shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRefBody {
    /// The config's name.
    pub name: String,
    /// Its ID (shown; ignored when given).
    #[serde(default)]
    pub id: String,
    /// The file's path in the task (empty: `/NAME`).
    #[serde(default)]
    pub target: String,
    /// Owner.
    #[serde(default)]
    pub uid: u32,
    /// Group.
    #[serde(default)]
    pub gid: u32,
    /// Permissions (default 0444).
    #[serde(default = "default_config_mode")]
    pub mode: u32,
}

fn default_config_mode() -> u32 {
    0o444
}

/// A service's use of a secret, as the API takes and shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretRefBody {
    /// The secret's name.
    pub name: String,
    /// Its ID (shown; ignored when given).
    #[serde(default)]
    pub id: String,
    /// The file in the task: a name under `/run/secrets/` or an absolute path (empty:
    /// `/run/secrets/NAME`).
    #[serde(default)]
    pub target: String,
    /// Owner.
    #[serde(default)]
    pub uid: u32,
    /// Group.
    #[serde(default)]
    pub gid: u32,
    /// Permissions (default 0444, as Docker's).
    #[serde(default = "default_config_mode")]
    pub mode: u32,
}

impl From<SecretRefBody> for SecretRef {
    /// The ID is the handler's to resolve from the name; a relative target is a file under
    /// `/run/secrets/`.
    fn from(b: SecretRefBody) -> Self {
        let target = if b.target.is_empty() {
            format!("/run/secrets/{}", b.name)
        } else if b.target.starts_with('/') {
            b.target
        } else {
            format!("/run/secrets/{}", b.target)
        };
        SecretRef {
            secret_id: String::new(),
            secret_name: b.name,
            target,
            uid: b.uid,
            gid: b.gid,
            mode: b.mode,
        }
    }
}

impl From<&SecretRef> for SecretRefBody {
    fn from(c: &SecretRef) -> Self {
        SecretRefBody {
            name: c.secret_name.clone(),
            id: c.secret_id.clone(),
            target: c.target.clone(),
            uid: c.uid,
            gid: c.gid,
            mode: c.mode,
        }
    }
}

impl From<ConfigRefBody> for ConfigRef {
    /// The ID is the handler's to resolve from the name.
    fn from(b: ConfigRefBody) -> Self {
        let target = if b.target.is_empty() {
            format!("/{}", b.name)
        } else {
            b.target
        };
        ConfigRef {
            config_id: String::new(),
            config_name: b.name,
            target,
            uid: b.uid,
            gid: b.gid,
            mode: b.mode,
        }
    }
}

impl From<&ConfigRef> for ConfigRefBody {
    fn from(c: &ConfigRef) -> Self {
        ConfigRefBody {
            name: c.config_name.clone(),
            id: c.config_id.clone(),
            target: c.target.clone(),
            uid: c.uid,
            gid: c.gid,
            mode: c.mode,
        }
    }
}

/// Capabilities as Docker takes them (upper case, without `CAP_`), each once.
fn capabilities(caps: &[String]) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for c in caps {
        let c = capability(c)?;
        if !out.contains(&c) {
            out.push(c);
        }
    }
    Ok(out)
}

/// A mount as the API shows it: Docker's `--mount` fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MountBody {
    /// `bind`, `volume` or `tmpfs`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The node's path (bind) or the volume's name; empty for tmpfs.
    #[serde(default)]
    pub source: String,
    /// Where in the task.
    pub target: String,
    /// Read-only.
    #[serde(default)]
    pub read_only: bool,
}

impl TryFrom<MountBody> for MountSpec {
    type Error = String;

    fn try_from(m: MountBody) -> Result<Self, String> {
        Ok(MountSpec {
            kind: m.kind.parse().map_err(|e| format!("{e}"))?,
            source: m.source,
            target: m.target,
            read_only: m.read_only,
        })
    }
}

impl From<&MountSpec> for MountBody {
    fn from(m: &MountSpec) -> Self {
        MountBody {
            kind: m.kind.to_string(),
            source: m.source.clone(),
            target: m.target.clone(),
            read_only: m.read_only,
        }
    }
}

impl Default for ServiceSpecBody {
    fn default() -> Self {
        (&ServiceSpec::default()).into()
    }
}

impl ServiceSpecBody {
    /// A replicated service of one task with Docker's defaults elsewhere.
    pub fn new(name: impl Into<String>, image: impl Into<String>) -> Self {
        (&ServiceSpec::new(name, image)).into()
    }
}

/// The API's body into the Raft spec: the one way in, and it validates
/// ([`ServiceSpec::validate`]: the error is one line for the user).
impl TryFrom<ServiceSpecBody> for ServiceSpec {
    type Error = String;

    fn try_from(b: ServiceSpecBody) -> Result<Self, String> {
        let spec = ServiceSpec {
            name: b.name,
            image: b.image,
            args: b.args,
            env: b.env,
            driver: b.driver,
            mode: match b.mode {
                ServiceModeBody::Replicated { replicas } => ServiceMode::Replicated { replicas },
                ServiceModeBody::Global => ServiceMode::Global,
            },
            ports: b
                .ports
                .into_iter()
                .map(PortSpec::try_from)
                .collect::<Result<_, _>>()?,
            constraints: b.constraints,
            reservations: b.reservations.into(),
            limits: b.limits.into(),
            restart_policy: b.restart_policy.into(),
            max_replicas_per_node: b.max_replicas_per_node,
            health_check: b.health_check.map(HealthCheckSpec::from),
            labels: b.labels,
            stop_grace_ms: b.stop_grace_ms,
            update_config: b.update_config.into(),
            rollback_config: b.rollback_config.into(),
            no_healthcheck: b.no_healthcheck,
            force_update: b.force_update,
            endpoint_mode: b.endpoint_mode.parse().map_err(|e| format!("{e}"))?,
            expose: b.expose,
            mounts: b
                .mounts
                .into_iter()
                .map(MountSpec::try_from)
                .collect::<Result<_, _>>()?,
            options: TaskOptionsSpec {
                entrypoint: b.entrypoint,
                user: b.user,
                workdir: b.workdir,
                hostname: b.hostname,
                init: b.init,
                devices: b
                    .devices
                    .iter()
                    .map(|d| d.parse())
                    .collect::<Result<_, _>>()?,
                cap_add: capabilities(&b.cap_add)?,
                cap_drop: capabilities(&b.cap_drop)?,
                privileged: b.privileged,
            },
            configs: b.configs.into_iter().map(ConfigRef::from).collect(),
            secrets: b.secrets.into_iter().map(SecretRef::from).collect(),
        };
        spec.validate()?;
        Ok(spec)
    }
}

/// The Raft spec as the API shows it (`service inspect`): the one way out.
impl From<&ServiceSpec> for ServiceSpecBody {
    fn from(s: &ServiceSpec) -> Self {
        ServiceSpecBody {
            name: s.name.clone(),
            image: s.image.clone(),
            args: s.args.clone(),
            env: s.env.clone(),
            driver: s.driver.clone(),
            mode: match s.mode {
                ServiceMode::Replicated { replicas } => ServiceModeBody::Replicated { replicas },
                ServiceMode::Global => ServiceModeBody::Global,
            },
            ports: s.ports.iter().map(|&p| PortBody::from(p)).collect(),
            constraints: s.constraints.clone(),
            reservations: s.reservations.into(),
            limits: s.limits.into(),
            restart_policy: s.restart_policy.into(),
            max_replicas_per_node: s.max_replicas_per_node,
            health_check: s.health_check.as_ref().map(HealthCheckBody::from),
            labels: s.labels.clone(),
            stop_grace_ms: s.stop_grace_ms,
            update_config: s.update_config.into(),
            rollback_config: s.rollback_config.into(),
            no_healthcheck: s.no_healthcheck,
            force_update: s.force_update,
            endpoint_mode: s.endpoint_mode.to_string(),
            expose: s.expose.clone(),
            mounts: s.mounts.iter().map(MountBody::from).collect(),
            entrypoint: s.options.entrypoint.clone(),
            user: s.options.user.clone(),
            workdir: s.options.workdir.clone(),
            hostname: s.options.hostname.clone(),
            init: s.options.init,
            devices: s
                .options
                .devices
                .iter()
                .map(|d| format!("{}:{}:{}", d.host, d.container, d.permissions))
                .collect(),
            cap_add: s.options.cap_add.clone(),
            cap_drop: s.options.cap_drop.clone(),
            privileged: s.options.privileged,
            configs: s.configs.iter().map(ConfigRefBody::from).collect(),
            secrets: s.secrets.iter().map(SecretRefBody::from).collect(),
        }
    }
}

impl TryFrom<PortBody> for PortSpec {
    type Error = String;

    fn try_from(p: PortBody) -> Result<Self, String> {
        let proxy_protocol = match p.proxy_protocol.as_deref() {
            None | Some("" | "none") => false,
            Some("v2") => true,
            Some(other) => {
                return Err(format!(
                    "invalid proxy protocol `{other}`: expected v2 (PROXY protocol version 2)"
                ));
            }
        };
        Ok(PortSpec {
            published: p.published,
            target: p.target,
            protocol: p.protocol.parse().map_err(|e| format!("{e}"))?,
            mode: p.mode.parse().map_err(|e| format!("{e}"))?,
            proxy_protocol,
        })
    }
}

impl From<PortSpec> for PortBody {
    fn from(p: PortSpec) -> Self {
        PortBody {
            published: p.published,
            target: p.target,
            protocol: p.protocol.to_string(),
            mode: p.mode.to_string(),
            proxy_protocol: p.proxy_protocol.then(|| "v2".to_owned()),
        }
    }
}

impl From<ResourcesBody> for ResourceSpec {
    fn from(r: ResourcesBody) -> Self {
        ResourceSpec {
            memory_bytes: r.memory_bytes,
            nano_cpus: r.nano_cpus,
        }
    }
}

impl From<ResourceSpec> for ResourcesBody {
    fn from(r: ResourceSpec) -> Self {
        ResourcesBody {
            memory_bytes: r.memory_bytes,
            nano_cpus: r.nano_cpus,
        }
    }
}

impl From<RestartPolicyBody> for RestartPolicySpec {
    fn from(p: RestartPolicyBody) -> Self {
        RestartPolicySpec {
            condition: p.condition,
            delay_ms: p.delay_ms,
            max_attempts: p.max_attempts,
            window_ms: p.window_ms,
        }
    }
}

impl From<RestartPolicySpec> for RestartPolicyBody {
    fn from(p: RestartPolicySpec) -> Self {
        RestartPolicyBody {
            condition: p.condition,
            delay_ms: p.delay_ms,
            max_attempts: p.max_attempts,
            window_ms: p.window_ms,
        }
    }
}

impl From<HealthCheckBody> for HealthCheckSpec {
    fn from(h: HealthCheckBody) -> Self {
        HealthCheckSpec {
            test: match h.test {
                HealthTestBody::Cmd(argv) => HealthTestSpec::Cmd(argv),
                HealthTestBody::Shell(s) => HealthTestSpec::Shell(s),
            },
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            retries: h.retries,
            start_period_ms: h.start_period_ms,
        }
    }
}

impl From<&HealthCheckSpec> for HealthCheckBody {
    fn from(h: &HealthCheckSpec) -> Self {
        HealthCheckBody {
            test: match &h.test {
                HealthTestSpec::Cmd(argv) => HealthTestBody::Cmd(argv.clone()),
                HealthTestSpec::Shell(s) => HealthTestBody::Shell(s.clone()),
            },
            interval_ms: h.interval_ms,
            timeout_ms: h.timeout_ms,
            retries: h.retries,
            start_period_ms: h.start_period_ms,
        }
    }
}

impl From<UpdateConfigBody> for UpdateConfig {
    fn from(u: UpdateConfigBody) -> Self {
        UpdateConfig {
            parallelism: u.parallelism,
            delay_ms: u.delay_ms,
            order: u.order,
            failure_action: u.failure_action,
            monitor_ms: u.monitor_ms,
            max_failure_ratio_ppm: u.max_failure_ratio_ppm,
        }
    }
}

impl From<UpdateConfig> for UpdateConfigBody {
    fn from(u: UpdateConfig) -> Self {
        UpdateConfigBody {
            parallelism: u.parallelism,
            delay_ms: u.delay_ms,
            order: u.order,
            failure_action: u.failure_action,
            monitor_ms: u.monitor_ms,
            max_failure_ratio_ppm: u.max_failure_ratio_ppm,
        }
    }
}

/// The restart condition as its JSON word (`any`, `on-failure`, `none`), with the scheduler's
/// words; an unknown word is refused with the message serde gives an unknown variant.
mod restart_condition_word {
    use serde::{Deserialize, Deserializer, Serializer, de};
    use shoal_scheduler::RestartCondition;

    /// The words, for serde's "expected one of" message.
    const WORDS: &[&str] = &["any", "on-failure", "none"];

    pub(super) fn serialize<S: Serializer>(c: &RestartCondition, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(c.as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<RestartCondition, D::Error> {
        let word = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        word.parse()
            .map_err(|_| de::Error::unknown_variant(&word, WORDS))
    }
}

/// `POST /v1/services/{ref}/scale`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleRequest {
    /// New replica count.
    pub replicas: u64,
}

/// The `--update-*` (or `--rollback-*`) settings a `service update` changes; a missing
/// field keeps the current value.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateConfigPatch {
    /// Tasks replaced at once (0 = all at once).
    pub parallelism: Option<u64>,
    /// Pause between batches, in milliseconds.
    pub delay_ms: Option<u64>,
    /// `stop-first` or `start-first`.
    pub order: Option<UpdateOrder>,
    /// `pause`, `continue` or `rollback` (rollback settings: `pause` or `continue`).
    pub failure_action: Option<FailureAction>,
    /// How long after a task is ready a failure still counts, in milliseconds.
    pub monitor_ms: Option<u64>,
    /// Failures tolerated, as a fraction of the tasks updated, in parts per million.
    pub max_failure_ratio_ppm: Option<u32>,
}

impl UpdateConfigPatch {
    /// True when nothing is asked.
    pub fn is_empty(&self) -> bool {
        *self == UpdateConfigPatch::default()
    }

    /// `c` with the asked fields changed.
    pub fn apply_to(&self, c: &mut UpdateConfig) {
        if let Some(v) = self.parallelism {
            c.parallelism = v;
        }
        if let Some(v) = self.delay_ms {
            c.delay_ms = v;
        }
        if let Some(v) = self.order {
            c.order = v;
        }
        if let Some(v) = self.failure_action {
            c.failure_action = v;
        }
        if let Some(v) = self.monitor_ms {
            c.monitor_ms = v;
        }
        if let Some(v) = self.max_failure_ratio_ppm {
            c.max_failure_ratio_ppm = v;
        }
    }
}

/// `POST /v1/services/{ref}/update`: the changes `service update` asks for; a missing field
/// keeps the current value. The handler applies them to the current spec
/// ([`ServiceUpdateBody::plan`]) and proposes a scale when only `replicas` is given, a
/// rolling update otherwise.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ServiceUpdateBody {
    /// New image (or program path).
    pub image: Option<String>,
    /// New arguments (replacing all of them).
    pub args: Option<Vec<String>>,
    /// Environment variables added or replaced.
    pub env_add: BTreeMap<String, String>,
    /// Environment variables removed (by name).
    pub env_rm: Vec<String>,
    /// Labels added or replaced.
    pub label_add: BTreeMap<String, String>,
    /// Labels removed (by key).
    pub label_rm: Vec<String>,
    /// Placement constraints added.
    pub constraint_add: Vec<String>,
    /// Placement constraints removed (the exact expression).
    pub constraint_rm: Vec<String>,
    /// Ports published (`--publish-add`), each replacing the entry with the same published
    /// port if there is one.
    pub publish_add: Vec<PortBody>,
    /// Published ports removed, by published port (`--publish-rm`); applied before
    /// `publish_add`. A port not published is ignored, as `env_rm` ignores a missing name.
    pub publish_rm: Vec<u16>,
    /// New replica count (replicated services only).
    pub replicas: Option<u64>,
    /// New cap of tasks per node (0 = unlimited).
    pub max_replicas_per_node: Option<u64>,
    /// New memory reservation in bytes.
    pub reserve_memory_bytes: Option<u64>,
    /// New CPU reservation in nano-CPUs.
    pub reserve_nano_cpus: Option<u64>,
    /// New memory limit in bytes.
    pub limit_memory_bytes: Option<u64>,
    /// New CPU limit in nano-CPUs.
    pub limit_nano_cpus: Option<u64>,
    /// New restart condition: `any`, `on-failure` or `none`.
    pub restart_condition: Option<String>,
    /// New restart delay, in milliseconds.
    pub restart_delay_ms: Option<u64>,
    /// New restart attempt cap (0 = unlimited).
    pub restart_max_attempts: Option<u64>,
    /// New restart window, in milliseconds.
    pub restart_window_ms: Option<u64>,
    /// New health check command (run with `sh -c`); creates a check with Docker's defaults
    /// when the service has none.
    pub health_cmd: Option<String>,
    /// New health check interval, in milliseconds.
    pub health_interval_ms: Option<u64>,
    /// New health check timeout, in milliseconds.
    pub health_timeout_ms: Option<u64>,
    /// New health check retries.
    pub health_retries: Option<u32>,
    /// New health check start period, in milliseconds.
    pub health_start_period_ms: Option<u64>,
    /// `--no-healthcheck`: drop the health check (and the image's).
    pub no_healthcheck: bool,
    /// New time between the stop signal and SIGKILL, in milliseconds.
    pub stop_grace_ms: Option<u64>,
    /// `--force`: replace every task even when nothing else changes.
    pub force: bool,
    /// Rolling update settings changed.
    pub update_config: UpdateConfigPatch,
    /// Rollback settings changed.
    pub rollback_config: UpdateConfigPatch,
    /// New endpoint mode: `vip` or `dnsrr`.
    pub endpoint_mode: Option<String>,
    /// Ports exposed (`--expose-add`).
    pub expose_add: Vec<u16>,
    /// Exposed ports removed (`--expose-rm`); applied before `expose_add`.
    pub expose_rm: Vec<u16>,
    /// Mounts added (`--mount-add`), each replacing the mount with the same target.
    pub mount_add: Vec<MountBody>,
    /// Mounts removed, by target (`--mount-rm`); applied before `mount_add`.
    pub mount_rm: Vec<String>,
    /// New entrypoint (`--entrypoint`; empty: the image's again).
    pub entrypoint: Option<Vec<String>>,
    /// New user (`--user`; empty: the image's again).
    pub user: Option<String>,
    /// New working directory (`--workdir`; empty: the image's again).
    pub workdir: Option<String>,
    /// New hostname (`--hostname`; empty: Docker's default again).
    pub hostname: Option<String>,
    /// An init or not (`--init`).
    pub init: Option<bool>,
    /// Capabilities added (`--cap-add`; also taken off the dropped ones).
    pub cap_add: Vec<String>,
    /// Capabilities dropped (`--cap-drop`; also taken off the added ones).
    pub cap_drop: Vec<String>,
    /// Configs added (`--config-add`), each replacing the use of the same target.
    pub config_add: Vec<ConfigRefBody>,
    /// Configs no longer used, by name (`--config-rm`); applied before `config_add`.
    pub config_rm: Vec<String>,
    /// Secrets added (`--secret-add`), each replacing the use of the same target.
    pub secret_add: Vec<SecretRefBody>,
    /// Secrets no longer used, by name (`--secret-rm`); applied before `secret_add`.
    pub secret_rm: Vec<String>,
    /// A whole new spec (what `stack deploy` sends), applied before every other field; its
    /// name must be the service's.
    pub spec: Option<Box<ServiceSpecBody>>,
}

/// What a [`ServiceUpdateBody`] becomes against the current spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpdatePlan {
    /// Only the replica count changes: a scale, not a rolling update.
    Scale(u64),
    /// A new spec (validated): a rolling update, even when it equals the current one.
    Update(Box<ServiceSpec>),
}

impl ServiceUpdateBody {
    /// True when the body asks for a replica count and nothing else.
    fn replicas_only(&self) -> bool {
        self.replicas.is_some()
            && ServiceUpdateBody {
                replicas: None,
                ..self.clone()
            } == ServiceUpdateBody::default()
    }

    /// True when the body is a whole spec and nothing else.
    fn spec_only(&self) -> bool {
        self.spec.is_some()
            && ServiceUpdateBody {
                spec: None,
                ..self.clone()
            } == ServiceUpdateBody::default()
    }

    /// The changes applied to `current`: a scale when only the replica count is asked, else
    /// the new spec, validated ([`ServiceSpec::validate`]); the error is one line.
    pub fn plan(&self, current: &ServiceSpec) -> Result<UpdatePlan, String> {
        if self.replicas.is_some() && current.mode == ServiceMode::Global {
            return Err(format!(
                "service `{}` is global: --replicas applies to replicated services only",
                current.name
            ));
        }
        if let Some(r) = self.replicas.filter(|_| self.replicas_only()) {
            if r > crate::manager::services::MAX_REPLICAS {
                return Err(format!(
                    "invalid replicas {r}: at most {}",
                    crate::manager::services::MAX_REPLICAS
                ));
            }
            return Ok(UpdatePlan::Scale(r));
        }
        let mut s = match &self.spec {
            Some(body) => {
                let mut s = ServiceSpec::try_from((**body).clone())?;
                if s.name != current.name {
                    return Err(format!(
                        "the new spec names `{}`, not `{}`: a service cannot be renamed",
                        s.name, current.name
                    ));
                }
                // `--force` counts on; a whole spec does not restart tasks by resetting it.
                s.force_update = s.force_update.max(current.force_update);
                if let (
                    ServiceMode::Replicated { replicas },
                    ServiceMode::Replicated { .. },
                    true,
                ) = (s.mode, current.mode, self.spec_only())
                {
                    let same_but_replicas = ServiceSpec {
                        mode: current.mode,
                        ..s.clone()
                    };
                    if same_but_replicas == *current && s.mode != current.mode {
                        return Ok(UpdatePlan::Scale(replicas));
                    }
                }
                s
            }
            None => current.clone(),
        };
        if let Some(image) = &self.image {
            s.image.clone_from(image);
        }
        if let Some(args) = &self.args {
            s.args.clone_from(args);
        }
        for k in &self.env_rm {
            s.env.remove(k);
        }
        s.env
            .extend(self.env_add.iter().map(|(k, v)| (k.clone(), v.clone())));
        for k in &self.label_rm {
            s.labels.remove(k);
        }
        s.labels
            .extend(self.label_add.iter().map(|(k, v)| (k.clone(), v.clone())));
        for c in &self.constraint_rm {
            let c = c.trim();
            s.constraints.retain(|x| x.trim() != c);
        }
        for c in &self.constraint_add {
            if !s.constraints.iter().any(|x| x.trim() == c.trim()) {
                s.constraints.push(c.clone());
            }
        }
        s.ports.retain(|p| !self.publish_rm.contains(&p.published));
        for p in &self.publish_add {
            let p = PortSpec::try_from(p.clone())?;
            match s.ports.iter_mut().find(|q| q.published == p.published) {
                Some(q) => *q = p,
                None => s.ports.push(p),
            }
        }
        if let Some(r) = self.replicas {
            s.mode = ServiceMode::Replicated { replicas: r };
        }
        if let Some(v) = self.max_replicas_per_node {
            s.max_replicas_per_node = v;
        }
        if let Some(v) = self.reserve_memory_bytes {
            s.reservations.memory_bytes = v;
        }
        if let Some(v) = self.reserve_nano_cpus {
            s.reservations.nano_cpus = v;
        }
        if let Some(v) = self.limit_memory_bytes {
            s.limits.memory_bytes = v;
        }
        if let Some(v) = self.limit_nano_cpus {
            s.limits.nano_cpus = v;
        }
        if let Some(c) = &self.restart_condition {
            s.restart_policy.condition = c.parse().map_err(|e| format!("{e}"))?;
        }
        if let Some(v) = self.restart_delay_ms {
            s.restart_policy.delay_ms = v;
        }
        if let Some(v) = self.restart_max_attempts {
            s.restart_policy.max_attempts = v;
        }
        if let Some(v) = self.restart_window_ms {
            s.restart_policy.window_ms = v;
        }
        self.apply_health(&mut s)?;
        if let Some(v) = self.stop_grace_ms {
            s.stop_grace_ms = v;
        }
        if self.force {
            s.force_update = s.force_update.wrapping_add(1);
        }
        self.update_config.apply_to(&mut s.update_config);
        self.rollback_config.apply_to(&mut s.rollback_config);
        if let Some(m) = &self.endpoint_mode {
            s.endpoint_mode = m.parse().map_err(|e| format!("{e}"))?;
        }
        s.mounts.retain(|m| {
            !self
                .mount_rm
                .iter()
                .any(|t| t.trim_end_matches('/') == m.target.trim_end_matches('/'))
        });
        for m in &self.mount_add {
            let m = MountSpec::try_from(m.clone())?;
            match s.mounts.iter_mut().find(|x| x.target == m.target) {
                Some(x) => *x = m,
                None => s.mounts.push(m),
            }
        }
        let o = &mut s.options;
        let text = |v: &String| (!v.is_empty()).then(|| v.clone());
        if let Some(e) = &self.entrypoint {
            o.entrypoint = (!e.is_empty()).then(|| e.clone());
        }
        if let Some(v) = &self.user {
            o.user = text(v);
        }
        if let Some(v) = &self.workdir {
            o.workdir = text(v);
        }
        if let Some(v) = &self.hostname {
            o.hostname = text(v);
        }
        if let Some(v) = self.init {
            o.init = v;
        }
        for c in capabilities(&self.cap_add)? {
            o.cap_drop.retain(|x| *x != c);
            if !o.cap_add.contains(&c) {
                o.cap_add.push(c);
            }
        }
        for c in capabilities(&self.cap_drop)? {
            o.cap_add.retain(|x| *x != c);
            if !o.cap_drop.contains(&c) {
                o.cap_drop.push(c);
            }
        }
        s.configs
            .retain(|c| !self.config_rm.contains(&c.config_name));
        for c in &self.config_add {
            let c = ConfigRef::from(c.clone());
            s.configs.retain(|x| x.target != c.target);
            s.configs.push(c);
        }
        s.secrets
            .retain(|c| !self.secret_rm.contains(&c.secret_name));
        for c in &self.secret_add {
            let c = SecretRef::from(c.clone());
            s.secrets.retain(|x| x.target != c.target);
            s.secrets.push(c);
        }
        s.expose.retain(|p| !self.expose_rm.contains(p));
        for &p in &self.expose_add {
            if !s.expose.contains(&p) {
                s.expose.push(p);
            }
        }
        s.validate()?;
        Ok(UpdatePlan::Update(Box::new(s)))
    }

    fn apply_health(&self, s: &mut ServiceSpec) -> Result<(), String> {
        let tuning = self.health_interval_ms.is_some()
            || self.health_timeout_ms.is_some()
            || self.health_retries.is_some()
            || self.health_start_period_ms.is_some();
        if self.no_healthcheck {
            if self.health_cmd.is_some() || tuning {
                return Err("--no-healthcheck conflicts with the --health-* options".into());
            }
            s.health_check = None;
            s.no_healthcheck = true;
            return Ok(());
        }
        if let Some(cmd) = &self.health_cmd {
            match &mut s.health_check {
                Some(h) => h.test = HealthTestSpec::Shell(cmd.clone()),
                None => s.health_check = Some(HealthCheckSpec::shell(cmd.clone())),
            }
            s.no_healthcheck = false;
        }
        if tuning {
            let Some(h) = s.health_check.as_mut() else {
                return Err(format!(
                    "service `{}` has no health check to tune: give --health-cmd too",
                    s.name
                ));
            };
            if let Some(v) = self.health_interval_ms {
                h.interval_ms = v;
            }
            if let Some(v) = self.health_timeout_ms {
                h.timeout_ms = v;
            }
            if let Some(v) = self.health_retries {
                h.retries = v;
            }
            if let Some(v) = self.health_start_period_ms {
                h.start_period_ms = v;
            }
        }
        Ok(())
    }
}

/// Answer to `service update` and `service rollback`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceUpdateResponse {
    /// Service ID.
    pub id: String,
    /// Service name.
    pub name: String,
    /// The spec version after the change (unchanged by a scale).
    pub version: u64,
    /// True when a rolling update (or rollback) was started; false for a scale.
    pub rolling: bool,
}

/// Answer to create/scale/rm.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceRef {
    /// Service ID.
    pub id: String,
    /// Service name.
    pub name: String,
}

// ---------------------------------------------------------------------------------------------
// Rows and times
// ---------------------------------------------------------------------------------------------

/// One task as `service ps` / `node ps` show it (DESIGN §8 fields, then extras).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRow {
    /// Task ID.
    pub id: String,
    /// Service name.
    pub service: String,
    /// Slot number; null for a global task.
    pub slot: Option<u64>,
    /// Node ID; null while pending.
    pub node_id: Option<String>,
    /// Node hostname; null while pending or when the node is gone.
    pub node: Option<String>,
    /// Image (or program path).
    pub image: String,
    /// `running` or `shutdown`.
    pub desired_state: String,
    /// Observed state (`pending`, `running`, `failed`, ...).
    pub state: String,
    /// Why it failed, was rejected, or is pending.
    pub error: Option<String>,
    /// Exit code once exited.
    pub exit_code: Option<i32>,
    /// Service ID.
    pub service_id: String,
    /// Attempt number within the slot (0 first).
    pub attempt: u64,
    /// Health (`starting`, `healthy`, `unhealthy`), null without a check or once ended.
    pub health: Option<String>,
    /// Creation time, RFC 3339.
    pub created_at: String,
    /// Last state change, RFC 3339.
    pub updated_at: String,
    /// End time, RFC 3339.
    pub ended_at: Option<String>,
    /// The spec version the task was created from.
    #[serde(default)]
    pub version: u64,
    /// True when the task runs what the current spec asks for (its version is one of the
    /// service's current versions).
    #[serde(default)]
    pub up_to_date: bool,
}

/// Which tasks [`task_rows`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskFilter<'a> {
    /// Every task (the tests' view; the API always filters).
    #[cfg(test)]
    All,
    /// Tasks of this service ID.
    Service(&'a str),
    /// Tasks on this node ID.
    Node(&'a str),
}

impl TaskRow {
    /// The row of task `t` (the record of its service and the node table fill it in).
    pub fn of(state: &ServicesState, nodes: &BTreeMap<String, NodeRecord>, t: &Task) -> TaskRow {
        let rec = state.any_service(t.service_id.as_str());
        let spec = rec.map(|r| r.spec_for_version(t.spec_version));
        let error = t.error.clone().or_else(|| {
            (t.state == TaskState::Pending)
                .then(|| t.pending_reason.as_ref().map(ToString::to_string))
                .flatten()
        });
        TaskRow {
            id: t.id.0.clone(),
            service: spec.map_or_else(|| t.service_id.0.clone(), |s| s.name.clone()),
            slot: match t.slot {
                Slot::Replica(n) => Some(n),
                Slot::Node(_) => None,
            },
            node_id: t.node_id.as_ref().map(|n| n.0.clone()),
            node: t
                .node_id
                .as_ref()
                .and_then(|n| nodes.get(n.as_str()))
                .map(|n| n.hostname.clone()),
            image: spec.map(|s| s.image.clone()).unwrap_or_default(),
            desired_state: t.desired_state.as_str().to_string(),
            state: t.state.as_str().to_string(),
            error,
            exit_code: t.exit_code,
            service_id: t.service_id.0.clone(),
            attempt: t.attempt,
            health: state
                .health
                .get(t.id.as_str())
                .filter(|_| !t.state.is_terminal())
                .map(|h| h.as_str().to_string()),
            created_at: rfc3339_millis(t.created_at.0),
            updated_at: rfc3339_millis(t.updated_at.0),
            ended_at: t.ended_at.map(|e| rfc3339_millis(e.0)),
            version: t.spec_version,
            up_to_date: rec.is_some_and(|r| r.current_versions().contains(&t.spec_version)),
        }
    }
}

/// Task rows, sorted by service name, slot, then newest attempt first (Docker's order).
pub fn task_rows(
    state: &ServicesState,
    nodes: &BTreeMap<String, NodeRecord>,
    filter: TaskFilter<'_>,
) -> Vec<TaskRow> {
    let mut tasks: Vec<&Task> = state
        .tasks
        .values()
        .filter(|t| match filter {
            #[cfg(test)]
            TaskFilter::All => true,
            TaskFilter::Service(id) => t.service_id.as_str() == id,
            TaskFilter::Node(id) => t.node_id.as_ref().is_some_and(|n| n.as_str() == id),
        })
        .collect();
    let name = |t: &Task| {
        state
            .any_service(t.service_id.as_str())
            .map_or("", |r| r.spec.name.as_str())
    };
    tasks.sort_by(|a, b| {
        name(a)
            .cmp(name(b))
            .then_with(|| a.service_id.cmp(&b.service_id))
            .then_with(|| a.slot.cmp(&b.slot))
            .then_with(|| b.attempt.cmp(&a.attempt))
            .then_with(|| b.created_at.cmp(&a.created_at))
            .then_with(|| a.id.cmp(&b.id))
    });
    tasks
        .into_iter()
        .map(|t| TaskRow::of(state, nodes, t))
        .collect()
}

/// `update_status` as JSON shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatusRow {
    /// `updating`, `paused`, `completed`, `rollback_started`, ...
    pub state: String,
    /// RFC 3339.
    pub started_at: Option<String>,
    /// RFC 3339.
    pub completed_at: Option<String>,
    /// A sentence.
    pub message: String,
}

/// One service as `service ls` shows it (DESIGN §8 fields, then extras).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRow {
    /// Service ID.
    pub id: String,
    /// Name.
    pub name: String,
    /// `replicated` or `global`.
    pub mode: String,
    /// Desired replicas; null for global.
    pub replicas: Option<u64>,
    /// Tasks running (and wanted running).
    pub running: u64,
    /// Image (or program path).
    pub image: String,
    /// `docker` or `process`.
    pub driver: String,
    /// Published ports.
    pub ports: Vec<PortBody>,
    /// Latest rolling update, or null.
    pub update_status: Option<UpdateStatusRow>,
    /// Tasks wanted: the replica count, or for global the active tasks (Docker's `3/3`).
    pub desired_tasks: u64,
    /// Spec version.
    pub version: u64,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

impl ServiceRow {
    /// The row of service `rec` (its tasks in `state` give the counts).
    pub fn of(state: &ServicesState, rec: &ServiceRecord) -> ServiceRow {
        let (mut running, mut active) = (0u64, 0u64);
        for t in state.tasks_of(&rec.id) {
            if t.is_active() {
                active += 1;
                if t.state == TaskState::Running {
                    running += 1;
                }
            }
        }
        ServiceRow {
            id: rec.id.clone(),
            name: rec.spec.name.clone(),
            mode: mode_word(rec.spec.mode).to_string(),
            replicas: mode_replicas(rec.spec.mode),
            running,
            image: rec.spec.image.clone(),
            driver: rec.spec.driver.clone(),
            ports: rec.spec.ports.iter().map(|&p| PortBody::from(p)).collect(),
            update_status: rec.update_status.as_ref().map(|u| UpdateStatusRow {
                state: u.state.as_str().to_string(),
                started_at: u.started_at.map(rfc3339_millis),
                completed_at: u.completed_at.map(rfc3339_millis),
                message: u.message.clone(),
            }),
            desired_tasks: mode_replicas(rec.spec.mode).unwrap_or(active),
            version: rec.version,
            created_at: rfc3339_millis(rec.created_at),
            updated_at: rfc3339_millis(rec.updated_at),
        }
    }
}

/// Rows of every live service, sorted by name.
pub fn service_rows(state: &ServicesState) -> Vec<ServiceRow> {
    let mut recs: Vec<&ServiceRecord> = state.services.values().collect();
    recs.sort_by(|a, b| a.spec.name.cmp(&b.spec.name).then(a.id.cmp(&b.id)));
    recs.into_iter().map(|r| ServiceRow::of(state, r)).collect()
}

/// `GET /v1/services/{ref}`: the row, then the spec and the previous spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceInspect {
    /// The `service ls` row.
    #[serde(flatten)]
    pub row: ServiceRow,
    /// The current spec.
    pub spec: ServiceSpecBody,
    /// The spec before the last update, or null.
    pub previous_spec: Option<ServiceSpecBody>,
    /// The index of its virtual IP in every node's VIP range (the address is the range's
    /// base plus it: `10.247.128.0` + index with the default `--network-subnet`).
    pub vip_index: Option<u32>,
}

impl ServiceInspect {
    /// What `service inspect` shows of `rec`.
    pub fn of(state: &ServicesState, rec: &ServiceRecord) -> ServiceInspect {
        ServiceInspect {
            row: ServiceRow::of(state, rec),
            spec: (&rec.spec).into(),
            previous_spec: rec.previous_spec.as_ref().map(ServiceSpecBody::from),
            vip_index: rec.vip_index,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The JSON of a spec is the contract `service create` sends and `service inspect` shows:
    /// field names and order, the words, the defaults of missing fields and the message for
    /// an unknown word are those the API always had.
    #[test]
    fn spec_body_json_is_the_contract() {
        use crate::manager::services::HealthCheckSpec;

        let mut spec = ServiceSpec::new("web", "img:1");
        spec.mode = ServiceMode::Replicated { replicas: 2 };
        spec.ports = vec![PortSpec::tcp(8080, 80)];
        spec.restart_policy.condition = RestartCondition::OnFailure;
        spec.health_check = Some(HealthCheckSpec::shell("true"));
        spec.update_config.order = UpdateOrder::StartFirst;
        spec.update_config.failure_action = FailureAction::Rollback;
        let json = serde_json::to_string(&ServiceSpecBody::from(&spec)).unwrap();
        assert_eq!(
            json,
            concat!(
                r#"{"name":"web","image":"img:1","args":[],"env":{},"driver":"docker","#,
                r#""mode":{"replicated":{"replicas":2}},"#,
                r#""ports":[{"published":8080,"target":80,"protocol":"tcp","mode":"ingress","proxy_protocol":null}],"#,
                r#""constraints":[],"reservations":{"memory_bytes":0,"nano_cpus":0},"#,
                r#""limits":{"memory_bytes":0,"nano_cpus":0},"#,
                r#""restart_policy":{"condition":"on-failure","delay_ms":5000,"max_attempts":0,"window_ms":0},"#,
                r#""max_replicas_per_node":0,"#,
                r#""health_check":{"test":{"shell":"true"},"interval_ms":30000,"timeout_ms":30000,"retries":3,"start_period_ms":0},"#,
                r#""labels":{},"stop_grace_ms":10000,"#,
                r#""update_config":{"parallelism":1,"delay_ms":0,"order":"start-first","failure_action":"rollback","#,
                r#""monitor_ms":5000,"max_failure_ratio_ppm":0},"#,
                r#""rollback_config":{"parallelism":1,"delay_ms":0,"order":"stop-first","failure_action":"pause","#,
                r#""monitor_ms":5000,"max_failure_ratio_ppm":0},"#,
                r#""no_healthcheck":false,"force_update":0,"endpoint_mode":"vip","expose":[],"mounts":[],"#,
                r#""entrypoint":null,"user":null,"workdir":null,"hostname":null,"init":false,"devices":[],"#,
                r#""cap_add":[],"cap_drop":[],"privileged":false,"configs":[],"secrets":[]}"#,
            )
        );
        let back = serde_json::from_str::<ServiceSpecBody>(&json).unwrap();
        assert_eq!(ServiceSpec::try_from(back), Ok(spec.clone()));
        // The JSON of a client from before the update monitor, the rollback settings,
        // `--no-healthcheck`, the force counter and the ports' protocol, mode and PROXY
        // protocol: those take their defaults.
        let older = concat!(
            r#"{"name":"web","image":"img:1","args":[],"env":{},"driver":"docker","#,
            r#""mode":{"replicated":{"replicas":2}},"ports":[{"published":8080,"target":80}],"#,
            r#""constraints":[],"reservations":{"memory_bytes":0,"nano_cpus":0},"#,
            r#""limits":{"memory_bytes":0,"nano_cpus":0},"#,
            r#""restart_policy":{"condition":"on-failure","delay_ms":5000,"max_attempts":0,"window_ms":0},"#,
            r#""max_replicas_per_node":0,"#,
            r#""health_check":{"test":{"shell":"true"},"interval_ms":30000,"timeout_ms":30000,"retries":3,"start_period_ms":0},"#,
            r#""labels":{},"stop_grace_ms":10000,"#,
            r#""update_config":{"parallelism":1,"delay_ms":0,"order":"start-first","failure_action":"rollback"}}"#,
        );
        let back = serde_json::from_str::<ServiceSpecBody>(older).unwrap();
        assert_eq!(ServiceSpec::try_from(back), Ok(spec));

        // Missing fields take Docker's defaults, at every level.
        let min: ServiceSpecBody = serde_json::from_str(
            r#"{"name":"web","image":"img","mode":"global","restart_policy":{"condition":"none"}}"#,
        )
        .unwrap();
        let min = ServiceSpec::try_from(min).unwrap();
        assert_eq!(min.mode, ServiceMode::Global);
        assert_eq!(min.restart_policy.condition, RestartCondition::None);
        assert_eq!(min.restart_policy.delay_ms, 5_000);
        assert_eq!((min.driver.as_str(), min.stop_grace_ms), ("docker", 10_000));
        assert_eq!(min.update_config, UpdateConfig::default());
        assert_eq!(
            ServiceSpecBody::default(),
            ServiceSpecBody::from(&ServiceSpec::default())
        );

        // An unknown word is refused as serde refuses an unknown variant.
        for (body, expected) in [
            (
                r#"{"restart_policy":{"condition":"sometimes"}}"#,
                "unknown variant `sometimes`, expected one of `any`, `on-failure`, `none`",
            ),
            (
                r#"{"update_config":{"order":"whenever"}}"#,
                "unknown variant `whenever`, expected `stop-first` or `start-first`",
            ),
            (
                r#"{"mode":"sometimes"}"#,
                "unknown variant `sometimes`, expected `replicated` or `global`",
            ),
        ] {
            let err = serde_json::from_str::<ServiceSpecBody>(body)
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(expected), "{err}");
        }

        // The conversion in validates.
        let err = ServiceSpec::try_from(ServiceSpecBody::new("-web", "img")).unwrap_err();
        assert!(err.contains("invalid service name"), "{err}");
    }

    /// A port's JSON: the words of protocol, mode and PROXY protocol, and one-line refusals.
    #[test]
    fn port_body_json() {
        use crate::manager::services::PublishMode;

        let p: PortBody = serde_json::from_str(
            r#"{"published":8080,"target":80,"mode":"host","proxy_protocol":"v2"}"#,
        )
        .unwrap();
        let spec = PortSpec::try_from(p.clone()).unwrap();
        assert_eq!(spec.mode, PublishMode::Host);
        assert!(spec.proxy_protocol);
        assert_eq!(PortBody::from(spec), p);
        for (json, needle) in [
            (
                r#"{"published":53,"target":53,"protocol":"udp"}"#,
                "the routing mesh carries TCP only",
            ),
            (
                r#"{"published":1,"target":1,"mode":"both"}"#,
                "ingress or host",
            ),
            (
                r#"{"published":1,"target":1,"proxy_protocol":"v1"}"#,
                "expected v2",
            ),
        ] {
            let p: PortBody = serde_json::from_str(json).unwrap();
            let err = PortSpec::try_from(p).unwrap_err();
            assert!(err.contains(needle) && !err.contains('\n'), "{json}: {err}");
        }
    }

    fn update(json: &str, current: &ServiceSpec) -> Result<UpdatePlan, String> {
        serde_json::from_str::<ServiceUpdateBody>(json)
            .map_err(|e| e.to_string())?
            .plan(current)
    }

    fn updated(json: &str, current: &ServiceSpec) -> ServiceSpec {
        match update(json, current) {
            Ok(UpdatePlan::Update(s)) => *s,
            other => panic!("expected an update, got {other:?}"),
        }
    }

    /// `publish_rm` drops by published port, then `publish_add` replaces the entry with the
    /// same published port in place or appends; the result is validated.
    #[test]
    fn update_body_publishes_and_unpublishes() {
        use crate::manager::services::PublishMode;

        let mut cur = ServiceSpec::new("web", "img:1");
        cur.ports = vec![PortSpec::tcp(8080, 80), PortSpec::tcp(8443, 443)];
        let s = updated(
            r#"{"publish_add":[{"published":8080,"target":81},{"published":9000,"target":90}]}"#,
            &cur,
        );
        assert_eq!(
            s.ports,
            [
                PortSpec::tcp(8080, 81),
                PortSpec::tcp(8443, 443),
                PortSpec::tcp(9000, 90)
            ]
        );
        let s = updated(r#"{"publish_rm":[8080,1234]}"#, &cur);
        assert_eq!(s.ports, [PortSpec::tcp(8443, 443)]);
        // Removed, then added again: the new entry.
        let s = updated(
            r#"{"publish_rm":[8443],"publish_add":[{"published":8443,"target":8443,"proxy_protocol":"v2"}]}"#,
            &cur,
        );
        assert_eq!(s.ports[1].target, 8443);
        assert!(s.ports[1].proxy_protocol);
        // Nothing about ports: unchanged.
        assert_eq!(updated(r#"{"image":"img:2"}"#, &cur).ports, cur.ports);
        // Old clients send neither field.
        let body: ServiceUpdateBody = serde_json::from_str(r#"{"image":"x"}"#).unwrap();
        assert!(body.publish_add.is_empty() && body.publish_rm.is_empty());

        for (body, needle) in [
            (
                r#"{"publish_add":[{"published":0,"target":80}]}"#,
                "invalid port 0: ports are 1-65535",
            ),
            (
                r#"{"publish_add":[{"published":53,"target":53,"protocol":"udp"}]}"#,
                "TCP only",
            ),
            (
                r#"{"publish_add":[{"published":9090,"target":90,"mode":"host"}]}"#,
                "--replicas-max-per-node 1",
            ),
        ] {
            let err = update(body, &cur).unwrap_err();
            assert!(err.contains(needle) && !err.contains('\n'), "{body}: {err}");
        }
        let mut one = cur;
        one.max_replicas_per_node = 1;
        let s = updated(
            r#"{"publish_add":[{"published":9090,"target":90,"mode":"host"}]}"#,
            &one,
        );
        assert_eq!(s.ports[2].mode, PublishMode::Host);
    }

    /// The changes of `service update` land on the current spec; scaling alone is a scale.
    #[test]
    fn update_body_applies_to_the_spec() {
        let mut cur = ServiceSpec::new("web", "img:1");
        cur.mode = ServiceMode::Replicated { replicas: 2 };
        cur.env.insert("A".into(), "1".into());
        cur.env.insert("B".into(), "2".into());
        cur.labels.insert("x".into(), "1".into());
        cur.constraints = vec!["node.role==manager".into(), "node.labels.z==a".into()];

        assert_eq!(update(r#"{"replicas":5}"#, &cur), Ok(UpdatePlan::Scale(5)));
        assert!(
            update(r#"{"replicas":20000}"#, &cur)
                .unwrap_err()
                .contains("at most")
        );

        let s = updated(
            r#"{"image":"img:2","env_add":{"C":"3","A":"9"},"env_rm":["B"],
                "label_add":{"y":"2"},"label_rm":["x"],
                "constraint_rm":["node.role==manager"],"constraint_add":["node.labels.z==a","node.hostname!=h"],
                "replicas":3,"args":["sh","-c","x y"],"stop_grace_ms":1000,
                "update_config":{"parallelism":2,"order":"start-first"},
                "rollback_config":{"failure_action":"continue","max_failure_ratio_ppm":500000}}"#,
            &cur,
        );
        assert_eq!(s.image, "img:2");
        assert_eq!(
            s.env.iter().collect::<Vec<_>>(),
            [(&"A".into(), &"9".into()), (&"C".into(), &"3".into())]
        );
        assert_eq!(s.labels.keys().collect::<Vec<_>>(), ["y"]);
        assert_eq!(s.constraints, ["node.labels.z==a", "node.hostname!=h"]);
        assert_eq!(s.mode, ServiceMode::Replicated { replicas: 3 });
        assert_eq!(s.args, ["sh", "-c", "x y"]);
        assert_eq!(s.stop_grace_ms, 1000);
        assert_eq!(s.update_config.parallelism, 2);
        assert_eq!(s.update_config.order, UpdateOrder::StartFirst);
        assert_eq!(s.update_config.failure_action, FailureAction::Pause);
        assert_eq!(s.rollback_config.failure_action, FailureAction::Continue);
        assert_eq!(s.rollback_config.max_failure_ratio_ppm, 500_000);
        assert_eq!(s.force_update, 0);

        // --force bumps the counter; an empty body is still an update (version moves on).
        assert_eq!(updated(r#"{"force":true}"#, &cur).force_update, 1);
        assert_eq!(updated("{}", &cur), cur);
        assert!(matches!(
            update(r#"{"replicas":2,"force":true}"#, &cur),
            Ok(UpdatePlan::Update(_))
        ));

        // Health: a command makes a check with Docker's defaults, tuning changes it, and
        // --no-healthcheck drops it.
        let h = updated(r#"{"health_cmd":"true","health_retries":5}"#, &cur);
        let check = h.health_check.clone().unwrap();
        assert_eq!((check.retries, check.interval_ms), (5, 30_000));
        let h2 = updated(r#"{"health_interval_ms":1000}"#, &h);
        assert_eq!(h2.health_check.unwrap().interval_ms, 1000);
        let none = updated(r#"{"no_healthcheck":true}"#, &h);
        assert_eq!((none.health_check, none.no_healthcheck), (None, true));
        assert!(
            update(r#"{"health_timeout_ms":1000}"#, &cur)
                .unwrap_err()
                .contains("no health check")
        );

        // Validation gives one line, and a global service has no replicas.
        for (body, needle) in [
            (
                r#"{"update_config":{"max_failure_ratio_ppm":1500000}}"#,
                "between 0 and 1",
            ),
            (
                r#"{"rollback_config":{"failure_action":"rollback"}}"#,
                "pause or continue",
            ),
            (r#"{"constraint_add":["node.color==red"]}"#, "unknown field"),
            (r#"{"restart_condition":"sometimes"}"#, "restart condition"),
            (r#"{"image":"a b"}"#, "invalid image"),
            (r#"{"label_add":{"shoal.x":"1"}}"#, "reserved prefix"),
        ] {
            let err = update(body, &cur).unwrap_err();
            assert!(err.contains(needle) && !err.contains('\n'), "{body}: {err}");
        }
        let mut global = cur.clone();
        global.mode = ServiceMode::Global;
        assert!(
            update(
                r#"{"publish_add":[{"published":9090,"target":90,"mode":"host"}]}"#,
                &global
            )
            .is_ok()
        );
        assert!(
            update(r#"{"replicas":1}"#, &global)
                .unwrap_err()
                .contains("global")
        );
    }

    /// Issue 23: `service update` sets and clears the task options (an empty value clears),
    /// and a capability moves between the added and the dropped ones as Docker's does.
    #[test]
    fn issue_23_update_sets_and_clears_task_options() {
        let mut cur = ServiceSpec::new("web", "img:1");
        cur.options.cap_add = vec!["SYS_RAWIO".into()];
        let s = updated(
            r#"{"user":"1000","workdir":"/srv","hostname":"h1","entrypoint":["/init","--"],"init":true,"cap_add":["cap_net_admin"],"cap_drop":["sys_rawio"],"mount_add":[{"type":"tmpfs","target":"/t"}]}"#,
            &cur,
        );
        assert_eq!(s.options.user.as_deref(), Some("1000"));
        assert_eq!(s.options.workdir.as_deref(), Some("/srv"));
        assert_eq!(s.options.hostname.as_deref(), Some("h1"));
        assert_eq!(
            s.options.entrypoint,
            Some(vec!["/init".to_string(), "--".to_string()])
        );
        assert!(s.options.init);
        assert_eq!(s.options.cap_add, ["NET_ADMIN"]);
        assert_eq!(s.options.cap_drop, ["SYS_RAWIO"]);
        assert_eq!(s.mounts.len(), 1);
        let cleared = updated(
            r#"{"user":"","workdir":"","hostname":"","entrypoint":[],"init":false,"mount_rm":["/t/"]}"#,
            &s,
        );
        assert_eq!(cleared.options.user, None);
        assert_eq!(cleared.options.workdir, None);
        assert_eq!(cleared.options.hostname, None);
        assert_eq!(cleared.options.entrypoint, None);
        assert!(!cleared.options.init);
        assert!(cleared.mounts.is_empty());
    }

    #[test]
    fn issue_23_secret_refs_are_added_removed_and_default_to_run_secrets() {
        let cur = ServiceSpec::new("db", "img:1");
        let s = updated(
            r#"{"secret_add":[{"name":"db_password"},{"name":"api_key","target":"key","mode":256},{"name":"tls","target":"/etc/tls.pem"}]}"#,
            &cur,
        );
        let targets: Vec<(&str, &str, u32)> = s
            .secrets
            .iter()
            .map(|r| (r.secret_name.as_str(), r.target.as_str(), r.mode))
            .collect();
        assert_eq!(
            targets,
            [
                ("db_password", "/run/secrets/db_password", 0o444),
                ("api_key", "/run/secrets/key", 0o400),
                ("tls", "/etc/tls.pem", 0o444),
            ]
        );
        let s = updated(r#"{"secret_rm":["api_key","nosuch"]}"#, &s);
        assert_eq!(s.secrets.len(), 2);
        // A later use of a target replaces the earlier one; a secret over a config's target is
        // refused.
        let body: ServiceUpdateBody =
            serde_json::from_str(r#"{"secret_add":[{"name":"other","target":"/etc/tls.pem"},{"name":"x","target":"/etc/tls.pem"}]}"#)
                .unwrap();
        let mut with_config = s.clone();
        with_config.configs.push(ConfigRef::from(ConfigRefBody {
            name: "c".into(),
            id: "c1".into(),
            target: "/run/secrets/db_password".into(),
            uid: 0,
            gid: 0,
            mode: 0o444,
        }));
        assert!(with_config.validate().is_err());
        assert!(
            body.plan(&s).is_ok(),
            "the later use of a target replaces the earlier"
        );
    }

    #[test]
    fn issue_23_a_whole_spec_update_is_a_scale_when_only_replicas_differ() {
        let mut cur = ServiceSpec::new("web", "img:1");
        cur.force_update = 3;
        let whole = |replicas: u64, image: &str| ServiceUpdateBody {
            spec: Some(Box::new(ServiceSpecBody {
                mode: ServiceModeBody::Replicated { replicas },
                ..ServiceSpecBody::new("web", image)
            })),
            ..ServiceUpdateBody::default()
        };
        assert_eq!(whole(4, "img:1").plan(&cur), Ok(UpdatePlan::Scale(4)));
        match whole(1, "img:2").plan(&cur) {
            Ok(UpdatePlan::Update(s)) => {
                assert_eq!(s.image, "img:2");
                assert_eq!(s.force_update, 3, "a whole spec does not reset --force");
            }
            other => panic!("{other:?}"),
        }
        let renamed = ServiceUpdateBody {
            spec: Some(Box::new(ServiceSpecBody::new("other", "img:1"))),
            ..ServiceUpdateBody::default()
        };
        assert!(
            renamed
                .plan(&cur)
                .unwrap_err()
                .contains("cannot be renamed")
        );
    }
}
