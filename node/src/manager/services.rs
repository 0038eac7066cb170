//! Services and their tasks in the cluster state (DESIGN §4, §5, §8).
//!
//! - [`ServiceSpec`]: what a user asks for (`service create`/`update`), with
//!   [`ServiceSpec::validate`] giving one-line errors.
//! - [`ServicesState`]: the part of the replicated state holding services and tasks, and its
//!   deterministic [`ServicesState::apply`] for [`ServiceCommand`]s. Every timestamp comes
//!   inside the command; nothing reads a clock or iterates a hash map.
//! - [`to_view`]: the scheduler's [`ClusterView`] of the state, for the orchestrator.
//! - [`assignments_for`]: what a node's worker must run or stop, as runtime [`TaskSpec`]s.
//! - [`task_rows`], [`service_row`]: the JSON rows of `service ps`, `node ps` and `service ls`.
//!
//! Encoded with postcard inside the Raft log and snapshots: externally tagged enums, no
//! skipped or flattened fields. New enum variants go at the end only; a field added to a
//! struct breaks decoding of older log entries, so a changed record needs a new command
//! variant and a migration (golden bytes in `formats.rs`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use shoal_runtime::{HealthCheck, HealthTest, TaskSpec};
use shoal_scheduler::{
    ClusterView, Constraint, ConstraintField, ConstraintOp, Decision, DesiredState, NodeId,
    ServiceId, Slot, Task, TaskState, Timestamp,
};

use super::state::{Availability, Millis, NodeRecord, NodeStatus, Role};

/// Longest service name (Docker's limit).
pub const MAX_NAME_LEN: usize = 63;
/// Most replicas a service may ask for (the leader plans every slot on every pass).
pub const MAX_REPLICAS: u64 = 10_000;
/// Drivers a service may name.
pub const DRIVERS: [&str; 2] = ["docker", "process"];
/// Longest error message stored for a task (longer ones are cut).
pub const MAX_TASK_ERROR_LEN: usize = 1024;

// ---------------------------------------------------------------------------------------------
// Specs
// ---------------------------------------------------------------------------------------------

/// Replicated with a count, or one task per eligible node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceMode {
    /// `--replicas N`: slots `1..=N`.
    Replicated {
        /// Desired number of tasks.
        replicas: u64,
    },
    /// `--mode global`: one task on every eligible node.
    Global,
}

impl ServiceMode {
    /// `replicated` or `global`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceMode::Replicated { .. } => "replicated",
            ServiceMode::Global => "global",
        }
    }

    /// The replica count; `None` for global.
    pub fn replicas(self) -> Option<u64> {
        match self {
            ServiceMode::Replicated { replicas } => Some(replicas),
            ServiceMode::Global => None,
        }
    }
}

/// A published port: `-p PUBLISHED:TARGET`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortSpec {
    /// The port every node listens on (routing mesh).
    pub published: u16,
    /// The port the task listens on.
    pub target: u16,
}

/// Memory and CPU amounts; zero means none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceSpec {
    /// Memory in bytes (0: none).
    pub memory_bytes: u64,
    /// CPU in nano-CPUs, 1 CPU = 1 000 000 000 (0: none).
    pub nano_cpus: u64,
}

/// When an ended task is replaced (`--restart-condition`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    /// After any exit.
    #[default]
    Any,
    /// After a failure only.
    OnFailure,
    /// Never.
    None,
}

impl RestartCondition {
    /// `any`, `on-failure` or `none`.
    pub fn as_str(self) -> &'static str {
        match self {
            RestartCondition::Any => "any",
            RestartCondition::OnFailure => "on-failure",
            RestartCondition::None => "none",
        }
    }
}

impl std::str::FromStr for RestartCondition {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "any" => Ok(RestartCondition::Any),
            "on-failure" => Ok(RestartCondition::OnFailure),
            "none" => Ok(RestartCondition::None),
            other => Err(format!(
                "invalid restart condition `{other}`: expected any, on-failure or none"
            )),
        }
    }
}

/// Docker's `--restart-*` flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
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

impl std::str::FromStr for UpdateOrder {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stop-first" => Ok(UpdateOrder::StopFirst),
            "start-first" => Ok(UpdateOrder::StartFirst),
            other => Err(format!(
                "invalid update order `{other}`: expected stop-first or start-first"
            )),
        }
    }
}

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

impl std::str::FromStr for FailureAction {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "pause" => Ok(FailureAction::Pause),
            "continue" => Ok(FailureAction::Continue),
            "rollback" => Ok(FailureAction::Rollback),
            other => Err(format!(
                "invalid update failure action `{other}`: expected pause, continue or rollback"
            )),
        }
    }
}

/// `--update-*` flags (stored now; rolling updates use them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UpdateConfig {
    /// Tasks replaced at once (0 = all at once).
    pub parallelism: u64,
    /// Pause between batches, in milliseconds.
    pub delay_ms: u64,
    /// Stop-first or start-first.
    pub order: UpdateOrder,
    /// What to do when a new task fails.
    pub failure_action: FailureAction,
}

impl Default for UpdateConfig {
    /// Docker's defaults: one at a time, no delay, stop-first, pause.
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            order: UpdateOrder::StopFirst,
            failure_action: FailureAction::Pause,
        }
    }
}

/// What a user asks for with `service create` / `service update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
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

/// Checks an ID that the runtime uses in labels and names: 1–64 of `[A-Za-z0-9_.-]`, not
/// starting with `.`.
fn validate_ident(what: &str, value: &str) -> Result<(), String> {
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
        let mut published = BTreeSet::new();
        for p in &self.ports {
            if p.published == 0 || p.target == 0 {
                return Err(format!(
                    "invalid port mapping {}:{}: ports must be between 1 and 65535",
                    p.published, p.target
                ));
            }
            if !published.insert(p.published) {
                return Err(format!("port {} is published twice", p.published));
            }
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

    /// The runtime spec of one task of this service.
    pub fn task_spec(&self, task_id: &str, service_id: &str, slot: u64) -> TaskSpec {
        let mut spec = TaskSpec::new(task_id, service_id, &self.name, slot, &self.image);
        spec.args.clone_from(&self.args);
        spec.env.clone_from(&self.env);
        spec.labels.clone_from(&self.labels);
        spec.ports = self.ports.iter().map(|p| p.target).collect();
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
        spec.stop_grace = Duration::from_millis(self.stop_grace_ms);
        spec
    }
}

// ---------------------------------------------------------------------------------------------
// Records
// ---------------------------------------------------------------------------------------------

/// Phase of a rolling update or rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// Tasks are being replaced.
    Updating,
    /// Paused after a failure.
    Paused,
    /// All tasks run the new spec.
    Completed,
    /// Rolling back to the previous spec.
    RollbackStarted,
    /// A rollback paused after a failure.
    RollbackPaused,
    /// The rollback finished.
    RollbackCompleted,
}

impl UpdateState {
    /// The lowercase word used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            UpdateState::Updating => "updating",
            UpdateState::Paused => "paused",
            UpdateState::Completed => "completed",
            UpdateState::RollbackStarted => "rollback_started",
            UpdateState::RollbackPaused => "rollback_paused",
            UpdateState::RollbackCompleted => "rollback_completed",
        }
    }
}

/// Progress of the latest update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// Phase.
    pub state: UpdateState,
    /// When it started.
    pub started_at: Option<Millis>,
    /// When it ended.
    pub completed_at: Option<Millis>,
    /// A human sentence (e.g. why it paused).
    pub message: String,
}

/// A service as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Service ID (25 lowercase alphanumerics, see [`new_service_id`]).
    pub id: String,
    /// Current spec.
    pub spec: ServiceSpec,
    /// Spec version: 1 at creation, +1 on every update or rollback (not on scale). Tasks
    /// record the version they were created from.
    pub version: u64,
    /// The spec before the last update (for `service rollback`).
    pub previous_spec: Option<ServiceSpec>,
    /// When it was created.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
    /// Latest rolling update, if any.
    pub update_status: Option<UpdateStatus>,
}

impl ServiceRecord {
    /// A new record at version 1.
    pub fn new(id: impl Into<String>, spec: ServiceSpec, at: Millis) -> Self {
        ServiceRecord {
            id: id.into(),
            spec,
            version: 1,
            previous_spec: None,
            created_at: at,
            updated_at: at,
            update_status: None,
        }
    }

    /// The spec a task created from `version` runs: the previous spec for `version - 1`,
    /// the current one otherwise.
    pub fn spec_for_version(&self, version: u64) -> &ServiceSpec {
        match &self.previous_spec {
            Some(prev) if version.saturating_add(1) == self.version => prev,
            _ => &self.spec,
        }
    }
}

/// A fresh random service ID: 25 characters of `[0-9a-z]`, like Docker's.
pub fn new_service_id() -> Result<String, String> {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut bytes = [0u8; 25];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness for a service ID: {e}"))?;
    Ok(bytes
        .iter()
        .map(|b| char::from(DIGITS[usize::from(*b) % DIGITS.len()]))
        .collect())
}

/// Health of a task as its worker last reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskHealth {
    /// No health check.
    #[default]
    None,
    /// Not yet healthy.
    Starting,
    /// Last check passed.
    Healthy,
    /// Failed `retries` checks in a row.
    Unhealthy,
}

impl TaskHealth {
    /// The lowercase word used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskHealth::None => "none",
            TaskHealth::Starting => "starting",
            TaskHealth::Healthy => "healthy",
            TaskHealth::Unhealthy => "unhealthy",
        }
    }
}

impl From<shoal_runtime::Health> for TaskHealth {
    fn from(h: shoal_runtime::Health) -> Self {
        match h {
            shoal_runtime::Health::None => TaskHealth::None,
            shoal_runtime::Health::Starting => TaskHealth::Starting,
            shoal_runtime::Health::Healthy => TaskHealth::Healthy,
            shoal_runtime::Health::Unhealthy => TaskHealth::Unhealthy,
        }
    }
}

/// A worker's report of one task's state (batched in [`ServiceCommand::TaskReports`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// The task.
    pub task_id: String,
    /// `preparing`, `starting`, `running`, `complete`, `failed`, `shutdown` or `rejected`.
    pub state: TaskState,
    /// Exit code once exited.
    pub exit_code: Option<i64>,
    /// Why it failed or was rejected.
    pub error: Option<String>,
    /// Health check state.
    pub health: TaskHealth,
    /// When the worker saw it (the worker's clock: informational only).
    pub at_ms: Millis,
}

/// What a worker must run or stop: the worker's own wire type.
pub use crate::worker::Assignment;

// ---------------------------------------------------------------------------------------------
// State and commands
// ---------------------------------------------------------------------------------------------

/// Services and tasks as Raft replicates them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicesState {
    /// Live services by ID.
    pub services: BTreeMap<String, ServiceRecord>,
    /// Every task (current and history) by ID.
    pub tasks: BTreeMap<String, Task>,
    /// Removed services whose tasks still exist (their workers still need the driver and
    /// name to stop them); dropped once their last task is removed.
    pub removed: BTreeMap<String, ServiceRecord>,
    /// Last reported health of running tasks that have a health check.
    pub health: BTreeMap<String, TaskHealth>,
}

/// A change to services or tasks, proposed through Raft inside
/// `Command::Services`. Variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceCommand {
    /// `service create`: unique ID and name; the spec must validate.
    Create(Box<ServiceRecord>),
    /// `service update`: a new spec (same name and mode kind); bumps the version and keeps
    /// the old spec for rollback.
    Update {
        /// Service ID.
        id: String,
        /// The whole new spec.
        spec: Box<ServiceSpec>,
        /// When.
        at: Millis,
    },
    /// `service scale`: replicated services only; the version does not change.
    Scale {
        /// Service ID.
        id: String,
        /// New replica count.
        replicas: u64,
        /// When.
        at: Millis,
    },
    /// `service rm`: the service goes; the orchestrator then stops and removes its tasks.
    Remove {
        /// Service ID.
        id: String,
        /// When.
        at: Millis,
    },
    /// The orchestrator's decisions (from `shoal_scheduler::reconcile`), applied in order;
    /// decisions that no longer apply are skipped.
    ApplyDecisions {
        /// The plan's decisions.
        decisions: Vec<Decision>,
        /// The `now` the plan was computed for.
        now: Millis,
    },
    /// State reports from the worker of `node_id`; reports for tasks not assigned to it are
    /// ignored.
    TaskReports {
        /// The reporting node.
        node_id: String,
        /// Reports in the order observed.
        reports: Vec<TaskReport>,
        /// When the manager received them (stamps `updated_at`/`ended_at`: the leader's
        /// clock, not the worker's).
        at: Millis,
    },
    /// `service rollback`: back to the previous spec (version + 1).
    Rollback {
        /// Service ID.
        id: String,
        /// When.
        at: Millis,
    },
    /// Records a rolling update's progress.
    SetUpdateStatus {
        /// Service ID.
        id: String,
        /// New status.
        status: Option<UpdateStatus>,
        /// When.
        at: Millis,
    },
}

/// What an applied [`ServiceCommand`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceOutcome {
    /// A service was created.
    Created {
        /// Its ID.
        id: String,
    },
    /// A service's spec changed (update or rollback).
    Updated {
        /// Its ID.
        id: String,
        /// The new version.
        version: u64,
    },
    /// A service was scaled.
    Scaled {
        /// Its ID.
        id: String,
        /// The new count.
        replicas: u64,
    },
    /// A service was removed.
    Removed {
        /// Its ID.
        id: String,
        /// Its tasks still to be stopped and removed.
        tasks_left: usize,
    },
    /// A rolling update status was recorded.
    StatusSet,
    /// Decisions applied.
    Decisions {
        /// Applied.
        applied: usize,
        /// Skipped because they no longer applied.
        skipped: usize,
    },
    /// Reports applied.
    Reports {
        /// Accepted.
        accepted: usize,
        /// Ignored (unknown task, another node's task, or a backward move).
        ignored: usize,
    },
}

impl ServiceCommand {
    /// [`ServiceCommand::Create`] for `record`.
    pub fn create(record: ServiceRecord) -> Self {
        ServiceCommand::Create(Box::new(record))
    }

    /// [`ServiceCommand::Update`] of service `id` to `spec`.
    pub fn update(id: impl Into<String>, spec: ServiceSpec, at: Millis) -> Self {
        ServiceCommand::Update {
            id: id.into(),
            spec: Box::new(spec),
            at,
        }
    }
}

fn no_such_service(id: &str) -> String {
    format!("no such service: {id}")
}

impl ServicesState {
    /// Applies `cmd` against the node table `nodes`; a refused command changes nothing.
    pub fn apply(
        &mut self,
        cmd: &ServiceCommand,
        nodes: &BTreeMap<String, NodeRecord>,
    ) -> Result<ServiceOutcome, String> {
        match cmd {
            ServiceCommand::Create(record) => self.create(record),
            ServiceCommand::Update { id, spec, at } => self.update(id, spec, *at),
            ServiceCommand::Rollback { id, at } => {
                let rec = self.services.get(id).ok_or_else(|| no_such_service(id))?;
                let Some(prev) = rec.previous_spec.clone() else {
                    return Err(format!(
                        "service `{}` has no previous spec to roll back to",
                        rec.spec.name
                    ));
                };
                self.update(id, &prev, *at)
            }
            ServiceCommand::Scale { id, replicas, at } => {
                let rec = self
                    .services
                    .get_mut(id)
                    .ok_or_else(|| no_such_service(id))?;
                if rec.spec.mode == ServiceMode::Global {
                    return Err(format!(
                        "service `{}` is global: only replicated services can be scaled",
                        rec.spec.name
                    ));
                }
                if *replicas > MAX_REPLICAS {
                    return Err(format!(
                        "invalid replicas {replicas}: at most {MAX_REPLICAS}"
                    ));
                }
                rec.spec.mode = ServiceMode::Replicated {
                    replicas: *replicas,
                };
                rec.updated_at = *at;
                Ok(ServiceOutcome::Scaled {
                    id: id.clone(),
                    replicas: *replicas,
                })
            }
            ServiceCommand::Remove { id, at } => {
                let mut rec = self
                    .services
                    .remove(id)
                    .ok_or_else(|| no_such_service(id))?;
                rec.updated_at = *at;
                let tasks_left = self
                    .tasks
                    .values()
                    .filter(|t| t.service_id.as_str() == id)
                    .count();
                if tasks_left > 0 {
                    self.removed.insert(id.clone(), rec);
                }
                Ok(ServiceOutcome::Removed {
                    id: id.clone(),
                    tasks_left,
                })
            }
            ServiceCommand::SetUpdateStatus { id, status, at } => {
                let rec = self
                    .services
                    .get_mut(id)
                    .ok_or_else(|| no_such_service(id))?;
                rec.update_status.clone_from(status);
                rec.updated_at = *at;
                Ok(ServiceOutcome::StatusSet)
            }
            ServiceCommand::ApplyDecisions { decisions, now } => {
                Ok(self.apply_decisions(decisions, Timestamp(*now), nodes))
            }
            ServiceCommand::TaskReports {
                node_id,
                reports,
                at,
            } => Ok(self.apply_reports(node_id, reports, Timestamp(*at))),
        }
    }

    fn create(&mut self, record: &ServiceRecord) -> Result<ServiceOutcome, String> {
        validate_ident("service ID", &record.id)?;
        record.spec.validate()?;
        if self.services.contains_key(&record.id) || self.removed.contains_key(&record.id) {
            return Err(format!("service ID {} already exists", record.id));
        }
        if self.service_by_name(&record.spec.name).is_some() {
            return Err(format!(
                "a service named `{}` already exists",
                record.spec.name
            ));
        }
        self.check_ports(&record.spec, &record.id)?;
        self.services.insert(record.id.clone(), record.clone());
        Ok(ServiceOutcome::Created {
            id: record.id.clone(),
        })
    }

    fn update(
        &mut self,
        id: &str,
        spec: &ServiceSpec,
        at: Millis,
    ) -> Result<ServiceOutcome, String> {
        spec.validate()?;
        let rec = self.services.get(id).ok_or_else(|| no_such_service(id))?;
        if spec.name != rec.spec.name {
            return Err(format!(
                "service `{}` cannot be renamed to `{}`",
                rec.spec.name, spec.name
            ));
        }
        if spec.mode.as_str() != rec.spec.mode.as_str() {
            return Err(format!(
                "the mode of service `{}` cannot be changed from {} to {}",
                rec.spec.name,
                rec.spec.mode.as_str(),
                spec.mode.as_str()
            ));
        }
        self.check_ports(spec, id)?;
        let rec = self
            .services
            .get_mut(id)
            .ok_or_else(|| no_such_service(id))?;
        let old = std::mem::replace(&mut rec.spec, spec.clone());
        rec.previous_spec = Some(old);
        rec.version = rec.version.saturating_add(1);
        rec.updated_at = at;
        Ok(ServiceOutcome::Updated {
            id: id.to_string(),
            version: rec.version,
        })
    }

    /// Refuses a published port that another live service already publishes.
    fn check_ports(&self, spec: &ServiceSpec, own_id: &str) -> Result<(), String> {
        for p in &spec.ports {
            if let Some(other) = self
                .services
                .values()
                .find(|s| s.id != own_id && s.spec.ports.iter().any(|q| q.published == p.published))
            {
                return Err(format!(
                    "port {} is already published by service `{}`",
                    p.published, other.spec.name
                ));
            }
        }
        Ok(())
    }

    fn apply_decisions(
        &mut self,
        decisions: &[Decision],
        now: Timestamp,
        nodes: &BTreeMap<String, NodeRecord>,
    ) -> ServiceOutcome {
        let (mut applied, mut skipped) = (0, 0);
        let mut removed_any = false;
        for d in decisions {
            let done = match d {
                Decision::CreateTask(t) => {
                    let fresh = !self.tasks.contains_key(t.id.as_str())
                        && self.services.contains_key(t.service_id.as_str());
                    if fresh {
                        self.tasks.insert(t.id.0.clone(), t.clone());
                    }
                    fresh
                }
                Decision::Assign { task, node } => match self.tasks.get_mut(task.as_str()) {
                    Some(t)
                        if t.state.is_unassigned()
                            && t.desired_state == DesiredState::Running
                            && nodes.contains_key(node.as_str()) =>
                    {
                        t.node_id = Some(node.clone());
                        t.state = TaskState::Assigned;
                        t.pending_reason = None;
                        t.updated_at = now;
                        true
                    }
                    _ => false,
                },
                Decision::UpdatePending { task, reason } => match self.tasks.get_mut(task.as_str())
                {
                    Some(t) if t.state.is_unassigned() => {
                        t.state = TaskState::Pending;
                        t.pending_reason = Some(reason.clone());
                        t.updated_at = now;
                        true
                    }
                    _ => false,
                },
                Decision::Shutdown { task, .. } => match self.tasks.get_mut(task.as_str()) {
                    Some(t) if t.desired_state != DesiredState::Shutdown => {
                        t.desired_state = DesiredState::Shutdown;
                        true
                    }
                    _ => false,
                },
                Decision::Cancel { task, .. } => match self.tasks.get_mut(task.as_str()) {
                    Some(t) if t.state.is_unassigned() => {
                        t.desired_state = DesiredState::Shutdown;
                        t.state = TaskState::Shutdown;
                        t.updated_at = now;
                        t.ended_at = Some(now);
                        true
                    }
                    // Assigned since the plan was made: its worker must stop it.
                    Some(t)
                        if !t.state.is_terminal() && t.desired_state != DesiredState::Shutdown =>
                    {
                        t.desired_state = DesiredState::Shutdown;
                        true
                    }
                    _ => false,
                },
                Decision::MarkOrphaned { task } => match self.tasks.get_mut(task.as_str()) {
                    Some(t) if !t.state.is_terminal() && !t.state.is_unassigned() => {
                        t.desired_state = DesiredState::Shutdown;
                        t.state = TaskState::Orphaned;
                        t.updated_at = now;
                        t.ended_at = Some(now);
                        self.health.remove(task.as_str());
                        true
                    }
                    _ => false,
                },
                Decision::RemoveTask { task } => {
                    let terminal = self
                        .tasks
                        .get(task.as_str())
                        .is_some_and(|t| t.state.is_terminal());
                    if terminal {
                        self.tasks.remove(task.as_str());
                        self.health.remove(task.as_str());
                        removed_any = true;
                    }
                    terminal
                }
            };
            if done {
                applied += 1;
            } else {
                skipped += 1;
            }
        }
        if removed_any && !self.removed.is_empty() {
            let live: BTreeSet<&str> = self.tasks.values().map(|t| t.service_id.as_str()).collect();
            self.removed.retain(|id, _| live.contains(id.as_str()));
        }
        ServiceOutcome::Decisions { applied, skipped }
    }

    fn apply_reports(
        &mut self,
        node_id: &str,
        reports: &[TaskReport],
        at: Timestamp,
    ) -> ServiceOutcome {
        let (mut accepted, mut ignored) = (0, 0);
        for r in reports {
            let Some(t) = self.tasks.get_mut(&r.task_id) else {
                ignored += 1;
                continue;
            };
            let reportable = matches!(
                r.state,
                TaskState::Preparing
                    | TaskState::Starting
                    | TaskState::Running
                    | TaskState::Complete
                    | TaskState::Failed
                    | TaskState::Shutdown
                    | TaskState::Rejected
            );
            let own = t.node_id.as_ref().is_some_and(|n| n.as_str() == node_id);
            let allowed = if t.state.is_terminal() {
                // The only move out of a terminal state: a returning node stops an orphaned
                // copy (the scheduler's worker contract).
                t.state == TaskState::Orphaned && r.state == TaskState::Shutdown
            } else {
                !t.state.is_unassigned() && r.state >= t.state
            };
            if !reportable || !own || !allowed {
                ignored += 1;
                continue;
            }
            accepted += 1;
            if r.state != t.state {
                if r.state.is_terminal() && !t.state.is_terminal() {
                    t.ended_at = Some(at);
                }
                t.state = r.state;
                t.updated_at = at;
            }
            if let Some(code) = r.exit_code {
                t.exit_code =
                    Some(i32::try_from(code).unwrap_or(if code < 0 { i32::MIN } else { i32::MAX }));
            }
            if let Some(e) = r.error.as_deref().filter(|e| !e.is_empty()) {
                t.error = Some(truncate(e, MAX_TASK_ERROR_LEN));
            }
            if t.state.is_terminal() || r.health == TaskHealth::None {
                self.health.remove(&r.task_id);
            } else {
                self.health.insert(r.task_id.clone(), r.health);
            }
        }
        ServiceOutcome::Reports { accepted, ignored }
    }

    /// The live service named `name`.
    pub fn service_by_name(&self, name: &str) -> Option<&ServiceRecord> {
        self.services.values().find(|s| s.spec.name == name)
    }

    /// A live or removed service record (removed ones stay while their tasks exist).
    pub fn any_service(&self, id: &str) -> Option<&ServiceRecord> {
        self.services.get(id).or_else(|| self.removed.get(id))
    }

    /// Resolves a user's SERVICE argument: an exact ID, a name, or a unique ID prefix.
    pub fn resolve_service(&self, reference: &str) -> Result<&ServiceRecord, String> {
        if reference.is_empty() {
            return Err("a service ID, ID prefix or name is required".into());
        }
        if let Some(s) = self.services.get(reference) {
            return Ok(s);
        }
        if let Some(s) = self.service_by_name(reference) {
            return Ok(s);
        }
        let by_prefix: Vec<&ServiceRecord> = self
            .services
            .values()
            .filter(|s| s.id.starts_with(reference))
            .collect();
        match by_prefix.as_slice() {
            [one] => Ok(one),
            [] => Err(format!("no such service: {reference}")),
            many => Err(format!(
                "service `{reference}` is ambiguous: it matches {} service IDs; give more characters",
                many.len()
            )),
        }
    }

    /// Resolves a task by exact ID or unique ID prefix.
    pub fn resolve_task(&self, reference: &str) -> Result<&Task, String> {
        if reference.is_empty() {
            return Err("a task ID or ID prefix is required".into());
        }
        if let Some(t) = self.tasks.get(reference) {
            return Ok(t);
        }
        let mut matches = self
            .tasks
            .range::<str, _>((
                std::ops::Bound::Included(reference),
                std::ops::Bound::Unbounded,
            ))
            .take_while(|(id, _)| id.starts_with(reference))
            .map(|(_, t)| t);
        match (matches.next(), matches.next()) {
            (Some(t), None) => Ok(t),
            (None, _) => Err(format!("no such task: {reference}")),
            (Some(_), Some(_)) => Err(format!(
                "task `{reference}` is ambiguous: give more characters"
            )),
        }
    }

    /// Tasks of a service (current and history).
    pub fn tasks_of<'a>(&'a self, service_id: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks
            .values()
            .filter(move |t| t.service_id.as_str() == service_id)
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

// ---------------------------------------------------------------------------------------------
// Scheduler view and assignments
// ---------------------------------------------------------------------------------------------

/// The scheduler's node for a node record.
pub fn view_node(n: &NodeRecord) -> shoal_scheduler::Node {
    shoal_scheduler::Node {
        id: NodeId(n.id.clone()),
        hostname: n.hostname.clone(),
        role: match n.role {
            Role::Manager => shoal_scheduler::NodeRole::Manager,
            Role::Worker => shoal_scheduler::NodeRole::Worker,
        },
        status: match n.status {
            NodeStatus::Ready => shoal_scheduler::NodeStatus::Ready,
            NodeStatus::Down => shoal_scheduler::NodeStatus::Down,
            NodeStatus::Unknown => shoal_scheduler::NodeStatus::Unknown,
        },
        availability: match n.availability {
            Availability::Active => shoal_scheduler::Availability::Active,
            Availability::Pause => shoal_scheduler::Availability::Pause,
            Availability::Drain => shoal_scheduler::Availability::Drain,
        },
        labels: n.labels.clone(),
        capacity: shoal_scheduler::Resources {
            memory_bytes: n.memory_bytes,
            nano_cpus: u64::from(n.cpus).saturating_mul(1_000_000_000),
        },
        drivers: n.drivers.iter().cloned().collect(),
    }
}

/// The scheduler's service for a record. A constraint that no longer parses (a spec stored
/// by another version) becomes one no node satisfies, so its tasks wait as `pending` with a
/// reason instead of running anywhere.
pub fn view_service(rec: &ServiceRecord) -> shoal_scheduler::Service {
    let spec = &rec.spec;
    let constraints = spec.parsed_constraints().unwrap_or_else(|e| {
        vec![Constraint {
            field: ConstraintField::Id,
            op: ConstraintOp::Eq,
            value: format!("<{e}>"),
        }]
    });
    let p = spec.restart_policy;
    shoal_scheduler::Service {
        id: ServiceId(rec.id.clone()),
        name: spec.name.clone(),
        mode: match spec.mode {
            ServiceMode::Replicated { replicas } => {
                shoal_scheduler::ServiceMode::Replicated { replicas }
            }
            ServiceMode::Global => shoal_scheduler::ServiceMode::Global,
        },
        driver: spec.driver.clone(),
        constraints,
        reservations: shoal_scheduler::Resources {
            memory_bytes: spec.reservations.memory_bytes,
            nano_cpus: spec.reservations.nano_cpus,
        },
        max_replicas_per_node: Some(spec.max_replicas_per_node).filter(|&m| m > 0),
        restart_policy: shoal_scheduler::RestartPolicy {
            condition: match p.condition {
                RestartCondition::Any => shoal_scheduler::RestartCondition::Any,
                RestartCondition::OnFailure => shoal_scheduler::RestartCondition::OnFailure,
                RestartCondition::None => shoal_scheduler::RestartCondition::None,
            },
            delay_ms: p.delay_ms,
            max_attempts: p.max_attempts,
            window_ms: p.window_ms,
        },
        spec_version: rec.version,
    }
}

/// Everything the scheduler reads: nodes, live services, all tasks.
pub fn to_view(state: &ServicesState, nodes: &BTreeMap<String, NodeRecord>) -> ClusterView {
    ClusterView {
        nodes: nodes.values().map(view_node).collect(),
        services: state.services.values().map(view_service).collect(),
        tasks: state.tasks.values().cloned().collect(),
    }
}

/// The slot number a runtime sees: the replica number, or 0 for a global task.
pub fn slot_number(slot: &Slot) -> u64 {
    match slot {
        Slot::Replica(n) => *n,
        Slot::Node(_) => 0,
    }
}

/// What the worker of `node_id` must do: every task assigned to it that has not ended, to
/// run (desired `running`) or to stop (desired `shutdown`). Ended tasks are left out (a
/// failed task is never restarted in place; the worker stops anything it runs that is not
/// listed, such as an orphaned copy on a node that came back). Sorted by task ID.
pub fn assignments_for(state: &ServicesState, node_id: &str) -> Vec<Assignment> {
    state
        .tasks
        .values()
        .filter(|t| {
            t.node_id.as_ref().is_some_and(|n| n.as_str() == node_id)
                && !t.state.is_terminal()
                && !t.state.is_unassigned()
        })
        .filter_map(|t| {
            let live = state.services.get(t.service_id.as_str());
            let rec = live.or_else(|| state.removed.get(t.service_id.as_str()))?;
            let spec = rec.spec_for_version(t.spec_version);
            let slot = slot_number(&t.slot);
            Some(Assignment {
                task_id: t.id.0.clone(),
                service_id: rec.id.clone(),
                service_name: spec.name.clone(),
                slot,
                driver: spec.driver.clone(),
                spec: spec.task_spec(t.id.as_str(), &rec.id, slot),
                desired: if live.is_some() && t.desired_state == DesiredState::Running {
                    crate::worker::DesiredState::Running
                } else {
                    crate::worker::DesiredState::Shutdown
                },
            })
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// API rows
// ---------------------------------------------------------------------------------------------

/// `ms` milliseconds after the Unix epoch, clamped to the last millisecond of year 9999:
/// humantime cannot format a later time (it panics), and a timestamp from a peer or the disk
/// may be anything. Every RFC 3339 rendering goes through this.
pub fn epoch_ms_clamped(ms: Millis) -> SystemTime {
    const MAX_MS: u64 = 253_402_300_799_999;
    SystemTime::UNIX_EPOCH
        .checked_add(Duration::from_millis(ms.min(MAX_MS)))
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

/// Milliseconds since the epoch as RFC 3339 (UTC, millisecond precision).
pub fn rfc3339(ms: Millis) -> String {
    humantime::format_rfc3339_millis(epoch_ms_clamped(ms)).to_string()
}

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
}

/// Which tasks [`task_rows`] lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskFilter<'a> {
    /// Every task.
    All,
    /// Tasks of this service ID.
    Service(&'a str),
    /// Tasks on this node ID.
    Node(&'a str),
}

/// The row of one task.
pub fn task_row(state: &ServicesState, nodes: &BTreeMap<String, NodeRecord>, t: &Task) -> TaskRow {
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
        created_at: rfc3339(t.created_at.0),
        updated_at: rfc3339(t.updated_at.0),
        ended_at: t.ended_at.map(|e| rfc3339(e.0)),
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
        .map(|t| task_row(state, nodes, t))
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
    pub ports: Vec<PortSpec>,
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

/// The row of one service.
pub fn service_row(state: &ServicesState, rec: &ServiceRecord) -> ServiceRow {
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
        mode: rec.spec.mode.as_str().to_string(),
        replicas: rec.spec.mode.replicas(),
        running,
        image: rec.spec.image.clone(),
        driver: rec.spec.driver.clone(),
        ports: rec.spec.ports.clone(),
        update_status: rec.update_status.as_ref().map(|u| UpdateStatusRow {
            state: u.state.as_str().to_string(),
            started_at: u.started_at.map(rfc3339),
            completed_at: u.completed_at.map(rfc3339),
            message: u.message.clone(),
        }),
        desired_tasks: rec.spec.mode.replicas().unwrap_or(active),
        version: rec.version,
        created_at: rfc3339(rec.created_at),
        updated_at: rfc3339(rec.updated_at),
    }
}

/// Rows of every live service, sorted by name.
pub fn service_rows(state: &ServicesState) -> Vec<ServiceRow> {
    let mut recs: Vec<&ServiceRecord> = state.services.values().collect();
    recs.sort_by(|a, b| a.spec.name.cmp(&b.spec.name).then(a.id.cmp(&b.id)));
    recs.into_iter().map(|r| service_row(state, r)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::orchestrator::plan;
    use crate::manager::state::{ClusterRecord, ClusterState, Command, CommandResult};

    fn node(id: &str, role: Role) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            public_key: [id.bytes().fold(0u8, u8::wrapping_add); 32],
            raft_id: u64::from(id.bytes().fold(0u8, u8::wrapping_add)),
            hostname: format!("host-{id}"),
            addr: "127.0.0.1:4747".into(),
            role,
            availability: Availability::Active,
            status: NodeStatus::Ready,
            labels: BTreeMap::new(),
            platform: "linux/x86_64".into(),
            memory_bytes: 4 << 30,
            cpus: 4,
            drivers: vec!["docker".into(), "process".into()],
            version: "0".into(),
            created_at: 1,
            updated_at: 1,
        }
    }

    /// A cluster of three ready nodes (n1 manager, n2 and n3 workers).
    fn cluster() -> ClusterState {
        let mut s = ClusterState::default();
        let init = Command::InitCluster {
            cluster: ClusterRecord {
                id: "c1".into(),
                created_at: 1,
                ca_cert_der: vec![1],
                ca_key_der: vec![2],
                worker_token_generation: 0,
                manager_token_generation: 0,
                task_history_limit: 5,
            },
            node: node("n1", Role::Manager),
        };
        assert_eq!(s.apply(&init), CommandResult::Done);
        for id in ["n2", "n3"] {
            assert_eq!(
                s.apply(&Command::UpsertNode(node(id, Role::Worker))),
                CommandResult::Done
            );
        }
        s
    }

    fn svc(s: &mut ClusterState, cmd: ServiceCommand) -> CommandResult {
        s.apply(&Command::Services(cmd))
    }

    fn replicated(name: &str, replicas: u64) -> ServiceSpec {
        let mut spec = ServiceSpec::new(name, "shoal-test/busybox:latest");
        spec.mode = ServiceMode::Replicated { replicas };
        spec
    }

    fn create(s: &mut ClusterState, id: &str, spec: ServiceSpec) -> CommandResult {
        svc(s, ServiceCommand::create(ServiceRecord::new(id, spec, 100)))
    }

    fn report(task: &str, state: TaskState) -> TaskReport {
        TaskReport {
            task_id: task.into(),
            state,
            exit_code: None,
            error: None,
            health: TaskHealth::None,
            at_ms: 0,
        }
    }

    /// Commits one orchestrator pass; returns how many decisions it had.
    fn orchestrate(s: &mut ClusterState, now: u64) -> usize {
        let (decisions, _) = plan(s, now).expect("initialized");
        let n = decisions.len();
        if n > 0 {
            let cmd = ServiceCommand::ApplyDecisions { decisions, now };
            assert_eq!(svc(s, cmd), CommandResult::Done);
        }
        n
    }

    /// What the workers of ready nodes report: assigned tasks run, stopped ones shut down.
    fn run_workers(s: &mut ClusterState, now: u64) -> usize {
        let ready: Vec<String> = s
            .nodes
            .values()
            .filter(|n| n.status == NodeStatus::Ready)
            .map(|n| n.id.clone())
            .collect();
        let mut changed = 0;
        for n in ready {
            let reports: Vec<TaskReport> = assignments_for(&s.services, &n)
                .into_iter()
                .filter_map(|a| {
                    let cur = s.services.tasks[&a.task_id].state;
                    match a.desired {
                        crate::worker::DesiredState::Running if cur != TaskState::Running => {
                            Some(report(&a.task_id, TaskState::Running))
                        }
                        crate::worker::DesiredState::Shutdown => {
                            Some(report(&a.task_id, TaskState::Shutdown))
                        }
                        crate::worker::DesiredState::Running => None,
                    }
                })
                .collect();
            changed += reports.len();
            if !reports.is_empty() {
                let cmd = ServiceCommand::TaskReports {
                    node_id: n,
                    reports,
                    at: now,
                };
                assert_eq!(svc(s, cmd), CommandResult::Done);
            }
        }
        changed
    }

    /// Orchestrator passes and worker reports until nothing changes; returns the time.
    fn converge(s: &mut ClusterState, mut now: u64) -> u64 {
        for _ in 0..50 {
            let decided = orchestrate(s, now);
            let reported = run_workers(s, now);
            if decided == 0 && reported == 0 {
                return now;
            }
            now += 10;
        }
        panic!("no fixed point after 50 rounds");
    }

    fn active_on(s: &ClusterState, service: &str) -> BTreeMap<String, usize> {
        let mut per_node = BTreeMap::new();
        for t in s.services.tasks_of(service) {
            if t.is_active() && t.state == TaskState::Running {
                let n = t.node_id.as_ref().map(|n| n.0.clone()).unwrap_or_default();
                *per_node.entry(n).or_insert(0) += 1;
            }
        }
        per_node
    }

    #[test]
    fn spec_validation() {
        assert_eq!(replicated("web", 3).validate(), Ok(()));
        let mut ok = replicated("a.b_c-1", 0);
        ok.constraints = vec![
            "node.role==manager".into(),
            "node.labels.zone != attic".into(),
        ];
        ok.ports = vec![PortSpec {
            published: 8080,
            target: 80,
        }];
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
                s.ports = vec![PortSpec {
                    published: 0,
                    target: 80,
                }];
            },
            "invalid port mapping",
        );
        bad(
            &|s| {
                s.ports = vec![
                    PortSpec {
                        published: 80,
                        target: 80,
                    },
                    PortSpec {
                        published: 80,
                        target: 81,
                    },
                ];
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

    #[test]
    fn create_scale_update_remove() {
        let mut s = cluster();
        assert_eq!(
            create(&mut s, "s1", replicated("web", 2)),
            CommandResult::Done
        );
        let before = s.clone();
        // Duplicate ID and name, bad spec, bad ID: refused, nothing changed.
        for (id, spec) in [
            ("s1", replicated("other", 1)),
            ("s2", replicated("web", 1)),
            ("s2", replicated("-bad", 1)),
            ("bad id", replicated("fine", 1)),
        ] {
            assert!(matches!(
                create(&mut s, id, spec),
                CommandResult::Refused(_)
            ));
        }
        assert_eq!(s, before);

        let scale = |id: &str, replicas| ServiceCommand::Scale {
            id: id.into(),
            replicas,
            at: 200,
        };
        assert_eq!(svc(&mut s, scale("s1", 5)), CommandResult::Done);
        let rec = &s.services.services["s1"];
        assert_eq!(rec.spec.mode, ServiceMode::Replicated { replicas: 5 });
        assert_eq!((rec.version, rec.updated_at), (1, 200));
        assert!(
            matches!(svc(&mut s, scale("nope", 1)), CommandResult::Refused(r) if r.contains("no such service"))
        );
        assert!(matches!(
            svc(&mut s, scale("s1", MAX_REPLICAS + 1)),
            CommandResult::Refused(_)
        ));
        let mut global = replicated("g", 1);
        global.mode = ServiceMode::Global;
        assert_eq!(create(&mut s, "g1", global), CommandResult::Done);
        assert!(
            matches!(svc(&mut s, scale("g1", 3)), CommandResult::Refused(r) if r.contains("global"))
        );

        // Update bumps the version and keeps the old spec; rollback swaps back.
        let mut v2 = s.services.services["s1"].spec.clone();
        v2.image = "img:v2".into();
        let update = ServiceCommand::update("s1", v2.clone(), 300);
        assert_eq!(svc(&mut s, update), CommandResult::Done);
        let rec = &s.services.services["s1"];
        assert_eq!(rec.version, 2);
        assert_eq!(rec.spec.image, "img:v2");
        assert_eq!(
            rec.previous_spec.as_ref().map(|p| p.image.as_str()),
            Some("shoal-test/busybox:latest")
        );
        let mut renamed = v2;
        renamed.name = "web2".into();
        let update = ServiceCommand::update("s1", renamed, 301);
        assert!(matches!(svc(&mut s, update), CommandResult::Refused(r) if r.contains("renamed")));
        let rollback = ServiceCommand::Rollback {
            id: "s1".into(),
            at: 302,
        };
        assert_eq!(svc(&mut s, rollback), CommandResult::Done);
        let rec = &s.services.services["s1"];
        assert_eq!(
            (rec.version, rec.spec.image.as_str()),
            (3, "shoal-test/busybox:latest")
        );

        // Ports: one publisher per port.
        let mut p1 = replicated("p1", 1);
        p1.ports = vec![PortSpec {
            published: 8080,
            target: 80,
        }];
        assert_eq!(create(&mut s, "p1", p1.clone()), CommandResult::Done);
        p1.name = "p2".into();
        assert!(
            matches!(create(&mut s, "p2", p1), CommandResult::Refused(r) if r.contains("already published"))
        );

        // Resolve by ID, name, prefix.
        assert_eq!(s.services.resolve_service("s1").unwrap().id, "s1");
        assert_eq!(s.services.resolve_service("web").unwrap().id, "s1");
        assert_eq!(s.services.resolve_service("g").unwrap().id, "g1");
        assert_eq!(s.services.resolve_service("p").unwrap().id, "p1");
        assert_eq!(
            create(&mut s, "p3", replicated("other", 1)),
            CommandResult::Done
        );
        assert!(
            s.services
                .resolve_service("p")
                .unwrap_err()
                .contains("ambiguous")
        );
        assert!(
            s.services
                .resolve_service("zz")
                .unwrap_err()
                .contains("no such service")
        );
        assert!(s.services.resolve_service("").is_err());

        // Remove without tasks: gone entirely; the name is free again.
        let remove = ServiceCommand::Remove {
            id: "s1".into(),
            at: 400,
        };
        assert_eq!(svc(&mut s, remove.clone()), CommandResult::Done);
        assert!(!s.services.services.contains_key("s1"));
        assert!(s.services.removed.is_empty());
        assert!(matches!(svc(&mut s, remove), CommandResult::Refused(_)));
        assert_eq!(
            create(&mut s, "s9", replicated("web", 1)),
            CommandResult::Done
        );
    }

    #[test]
    fn decisions_place_on_ready_nodes_and_converge() {
        let mut s = cluster();
        assert_eq!(
            create(&mut s, "s1", replicated("web", 6)),
            CommandResult::Done
        );
        let now = converge(&mut s, 1_000);
        let per_node = active_on(&s, "s1");
        assert_eq!(per_node.values().sum::<usize>(), 6);
        assert!(per_node.values().all(|&n| n == 2), "{per_node:?}");
        let row = service_row(&s.services, &s.services.services["s1"]);
        assert_eq!(
            (row.running, row.replicas, row.desired_tasks),
            (6, Some(6), 6)
        );

        // Scale down then up.
        let scale = ServiceCommand::Scale {
            id: "s1".into(),
            replicas: 2,
            at: now,
        };
        svc(&mut s, scale);
        let now = converge(&mut s, now + 10);
        assert_eq!(active_on(&s, "s1").values().sum::<usize>(), 2);
        let scale = ServiceCommand::Scale {
            id: "s1".into(),
            replicas: 8,
            at: now,
        };
        svc(&mut s, scale);
        let now = converge(&mut s, now + 10);
        assert_eq!(active_on(&s, "s1").values().sum::<usize>(), 8);

        // A node goes down: its tasks are orphaned and replaced on the others.
        s.apply(&Command::SetNodeStatus {
            id: "n3".into(),
            status: NodeStatus::Down,
            at: now,
        });
        let now = converge(&mut s, now + 10);
        let per_node = active_on(&s, "s1");
        assert_eq!(per_node.values().sum::<usize>(), 8);
        assert!(!per_node.contains_key("n3"));
        assert!(
            s.services
                .tasks
                .values()
                .any(|t| t.state == TaskState::Orphaned)
        );
        // It comes back: nothing is assigned to it, so its worker stops the old copies.
        s.apply(&Command::SetNodeStatus {
            id: "n3".into(),
            status: NodeStatus::Ready,
            at: now,
        });
        assert!(assignments_for(&s.services, "n3").is_empty());
        // Orphaned → shutdown is the one move out of a terminal state.
        let orphan = s
            .services
            .tasks
            .values()
            .find(|t| t.state == TaskState::Orphaned)
            .map(|t| t.id.0.clone())
            .unwrap();
        let cmd = ServiceCommand::TaskReports {
            node_id: "n3".into(),
            reports: vec![report(&orphan, TaskState::Shutdown)],
            at: now + 1,
        };
        svc(&mut s, cmd);
        assert_eq!(s.services.tasks[&orphan].state, TaskState::Shutdown);

        // Remove: tasks are stopped, then removed, then the record goes.
        let remove = ServiceCommand::Remove {
            id: "s1".into(),
            at: now + 2,
        };
        assert_eq!(svc(&mut s, remove), CommandResult::Done);
        assert!(s.services.removed.contains_key("s1"));
        let stopping = assignments_for(&s.services, "n1");
        orchestrate(&mut s, now + 3);
        let stopping_after = assignments_for(&s.services, "n1");
        assert_eq!(stopping.len(), stopping_after.len());
        assert!(
            stopping_after
                .iter()
                .all(|a| a.desired == crate::worker::DesiredState::Shutdown)
        );
        converge(&mut s, now + 10);
        assert!(s.services.tasks.is_empty(), "{:?}", s.services.tasks);
        assert!(s.services.removed.is_empty());
    }

    #[test]
    fn failed_task_is_replaced_after_the_delay_and_stays_in_history() {
        let mut s = cluster();
        let mut spec = replicated("web", 1);
        spec.restart_policy.delay_ms = 100;
        create(&mut s, "s1", spec);
        let now = converge(&mut s, 1_000);
        let t = s.services.tasks.values().next().unwrap().clone();
        let node = t.node_id.clone().unwrap().0;
        let mut r = report(t.id.as_str(), TaskState::Failed);
        r.exit_code = Some(137);
        r.error = Some("killed".into());
        let cmd = ServiceCommand::TaskReports {
            node_id: node,
            reports: vec![r],
            at: now + 1,
        };
        svc(&mut s, cmd);
        let failed = &s.services.tasks[t.id.as_str()];
        assert_eq!(failed.state, TaskState::Failed);
        assert_eq!(failed.exit_code, Some(137));
        assert_eq!(failed.ended_at, Some(Timestamp(now + 1)));
        // Not before the delay.
        let (d, wakeup) = plan(&s, now + 2).unwrap();
        assert!(d.is_empty());
        assert_eq!(wakeup, Some(Timestamp(now + 101)));
        converge(&mut s, now + 101);
        assert_eq!(s.services.tasks.len(), 2);
        assert_eq!(active_on(&s, "s1").values().sum::<usize>(), 1);
        let rows = task_rows(&s.services, &s.nodes, TaskFilter::Service("s1"));
        assert_eq!(rows.len(), 2);
        // Newest attempt first, then the failed one with its error and exit code.
        assert_eq!(rows[0].state, "running");
        assert_eq!(rows[1].state, "failed");
        assert_eq!(rows[1].desired_state, "shutdown");
        assert_eq!(rows[1].exit_code, Some(137));
        assert_eq!(rows[1].error.as_deref(), Some("killed"));
        assert_eq!(rows[1].service, "web");
        assert_eq!(rows[1].slot, Some(1));
        assert!(
            rows[1]
                .node
                .as_deref()
                .is_some_and(|h| h.starts_with("host-"))
        );
        assert!(
            rows[1]
                .ended_at
                .as_deref()
                .is_some_and(|e| e.ends_with('Z'))
        );
    }

    #[test]
    fn pending_tasks_say_why() {
        let mut s = cluster();
        let mut spec = replicated("big", 1);
        spec.reservations.memory_bytes = 1 << 40;
        create(&mut s, "s1", spec);
        orchestrate(&mut s, 1_000);
        let rows = task_rows(&s.services, &s.nodes, TaskFilter::All);
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].state, "pending");
        assert_eq!(rows[0].node_id, None);
        assert!(
            rows[0]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("insufficient free memory")),
            "{:?}",
            rows[0].error
        );
        // No change: no further decision.
        assert_eq!(orchestrate(&mut s, 1_010), 0);
    }

    #[test]
    fn reports_from_another_node_are_ignored() {
        let mut s = cluster();
        create(&mut s, "s1", replicated("web", 1));
        orchestrate(&mut s, 1_000);
        let t = s.services.tasks.values().next().unwrap().clone();
        let owner = t.node_id.clone().unwrap().0;
        let other = ["n1", "n2", "n3"]
            .into_iter()
            .find(|n| *n != owner)
            .unwrap();
        let before = s.clone();
        let mut ss = s.services.clone();
        let out = ss.apply(
            &ServiceCommand::TaskReports {
                node_id: other.into(),
                reports: vec![
                    report(t.id.as_str(), TaskState::Running),
                    report("no-such-task", TaskState::Running),
                ],
                at: 1_001,
            },
            &s.nodes,
        );
        assert_eq!(
            out,
            Ok(ServiceOutcome::Reports {
                accepted: 0,
                ignored: 2
            })
        );
        assert_eq!(ss, before.services);
        // Workers may not claim orchestrator states.
        let out = ss.apply(
            &ServiceCommand::TaskReports {
                node_id: owner.clone(),
                reports: vec![
                    report(t.id.as_str(), TaskState::Orphaned),
                    report(t.id.as_str(), TaskState::Pending),
                ],
                at: 1_001,
            },
            &s.nodes,
        );
        assert!(matches!(
            out,
            Ok(ServiceOutcome::Reports { accepted: 0, .. })
        ));
        assert_eq!(ss, before.services);
    }

    #[test]
    fn terminal_states_never_regress() {
        let mut s = cluster();
        create(&mut s, "s1", replicated("web", 1));
        orchestrate(&mut s, 1_000);
        let t = s.services.tasks.values().next().unwrap().clone();
        let owner = t.node_id.clone().unwrap().0;
        let id = t.id.0;
        let send = |s: &mut ClusterState, states: &[TaskState], at: u64| {
            let reports = states.iter().map(|&st| report(&id, st)).collect();
            let cmd = ServiceCommand::TaskReports {
                node_id: owner.clone(),
                reports,
                at,
            };
            svc(s, cmd);
        };
        send(&mut s, &[TaskState::Running, TaskState::Starting], 1_001);
        assert_eq!(s.services.tasks[&id].state, TaskState::Running);
        send(&mut s, &[TaskState::Complete], 1_002);
        send(
            &mut s,
            &[TaskState::Running, TaskState::Failed, TaskState::Shutdown],
            1_003,
        );
        let task = &s.services.tasks[&id];
        assert_eq!(task.state, TaskState::Complete);
        assert_eq!(task.ended_at, Some(Timestamp(1_002)));
        assert_eq!(task.updated_at, Timestamp(1_002));
    }

    #[test]
    fn stale_decisions_are_skipped() {
        let mut s = cluster();
        create(&mut s, "s1", replicated("web", 2));
        let (decisions, _) = plan(&s, 1_000).unwrap();
        let mut ss = s.services.clone();
        let cmd = ServiceCommand::ApplyDecisions {
            decisions,
            now: 1_000,
        };
        assert_eq!(
            ss.apply(&cmd, &s.nodes),
            Ok(ServiceOutcome::Decisions {
                applied: 2,
                skipped: 0
            })
        );
        // The same plan again: every CreateTask exists already.
        let again = ss.clone();
        assert_eq!(
            ss.apply(&cmd, &s.nodes),
            Ok(ServiceOutcome::Decisions {
                applied: 0,
                skipped: 2
            })
        );
        assert_eq!(ss, again);
        // Decisions for unknown tasks, a removed service, a gone node: skipped, no error.
        let tid = ss.tasks.keys().next().unwrap().clone();
        let mut orphan_task = ss.tasks[&tid].clone();
        orphan_task.id = shoal_scheduler::TaskId("x".into());
        orphan_task.service_id = ServiceId("gone".into());
        let bogus = vec![
            Decision::Assign {
                task: shoal_scheduler::TaskId("nope".into()),
                node: NodeId("n1".into()),
            },
            Decision::RemoveTask {
                task: shoal_scheduler::TaskId(tid.clone()),
            },
            Decision::CreateTask(orphan_task),
            Decision::MarkOrphaned {
                task: shoal_scheduler::TaskId(tid.clone()),
            },
            Decision::MarkOrphaned {
                task: shoal_scheduler::TaskId(tid.clone()),
            },
        ];
        let out = ss.apply(
            &ServiceCommand::ApplyDecisions {
                decisions: bogus,
                now: 1_001,
            },
            &s.nodes,
        );
        assert_eq!(
            out,
            Ok(ServiceOutcome::Decisions {
                applied: 1,
                skipped: 4
            })
        );
        assert_eq!(ss.tasks[&tid].state, TaskState::Orphaned);
        assert_eq!(ss.tasks.len(), 2);
    }

    #[test]
    fn assignments_carry_runtime_specs() {
        let mut s = cluster();
        let mut spec = replicated("web", 3);
        spec.args = vec!["httpd".into(), "-f".into()];
        spec.env.insert("A".into(), "1".into());
        spec.labels.insert("team".into(), "x".into());
        spec.ports = vec![PortSpec {
            published: 8080,
            target: 80,
        }];
        spec.limits = ResourceSpec {
            memory_bytes: 64 << 20,
            nano_cpus: 0,
        };
        spec.health_check = Some(HealthCheckSpec::shell("wget -q localhost"));
        spec.stop_grace_ms = 1_500;
        create(&mut s, "s1", spec);
        let mut g = ServiceSpec::new("agent", "/usr/bin/agent");
        g.driver = "process".into();
        g.mode = ServiceMode::Global;
        create(&mut s, "g1", g);
        converge(&mut s, 1_000);
        let all: Vec<Assignment> = ["n1", "n2", "n3"]
            .iter()
            .flat_map(|n| assignments_for(&s.services, n))
            .collect();
        assert_eq!(all.len(), 6);
        let mut slots: Vec<u64> = all
            .iter()
            .filter(|a| a.service_id == "s1")
            .map(|a| a.slot)
            .collect();
        slots.sort_unstable();
        assert_eq!(slots, vec![1, 2, 3]);
        let a = all.iter().find(|a| a.service_id == "s1").unwrap();
        assert_eq!(a.driver, "docker");
        assert_eq!(a.desired, crate::worker::DesiredState::Running);
        assert_eq!(a.spec.task_id, a.task_id);
        assert_eq!(a.spec.service_id, "s1");
        assert_eq!(a.spec.service_name, "web");
        assert_eq!(a.spec.slot, a.slot);
        assert_eq!(a.spec.image, "shoal-test/busybox:latest");
        assert_eq!(a.spec.args, vec!["httpd", "-f"]);
        assert_eq!(a.spec.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(a.spec.labels.get("team").map(String::as_str), Some("x"));
        assert_eq!(a.spec.ports, vec![80]);
        assert_eq!(a.spec.resources.memory_bytes, Some(64 << 20));
        assert_eq!(a.spec.resources.nano_cpus, None);
        assert_eq!(a.spec.stop_grace, Duration::from_millis(1_500));
        let h = a.spec.health.as_ref().unwrap();
        assert_eq!(h.test, HealthTest::Shell("wget -q localhost".into()));
        assert_eq!(h.interval, Duration::from_secs(30));
        let g: Vec<&Assignment> = all.iter().filter(|a| a.service_id == "g1").collect();
        assert_eq!(g.len(), 3);
        assert!(g.iter().all(|a| a.slot == 0 && a.driver == "process"));
        let row = service_row(&s.services, &s.services.services["g1"]);
        assert_eq!(
            (row.mode.as_str(), row.replicas, row.running),
            ("global", None, 3)
        );
        assert_eq!(row.desired_tasks, 3);

        // Tasks keep the spec they were created from until replaced.
        let mut v2 = s.services.services["s1"].spec.clone();
        v2.image = "img:v2".into();
        svc(&mut s, ServiceCommand::update("s1", v2, 2_000));
        let a = assignments_for(&s.services, "n1")
            .into_iter()
            .find(|a| a.service_id == "s1")
            .unwrap();
        assert_eq!(a.spec.image, "shoal-test/busybox:latest");
    }

    #[test]
    fn health_is_recorded_while_running() {
        let mut s = cluster();
        create(&mut s, "s1", replicated("web", 1));
        orchestrate(&mut s, 1_000);
        let t = s.services.tasks.values().next().unwrap().clone();
        let mut r = report(t.id.as_str(), TaskState::Running);
        r.health = TaskHealth::Healthy;
        let node_id = t.node_id.clone().unwrap().0;
        svc(
            &mut s,
            ServiceCommand::TaskReports {
                node_id: node_id.clone(),
                reports: vec![r],
                at: 1_001,
            },
        );
        let rows = task_rows(&s.services, &s.nodes, TaskFilter::Node(&node_id));
        assert_eq!(rows[0].health.as_deref(), Some("healthy"));
        svc(
            &mut s,
            ServiceCommand::TaskReports {
                node_id,
                reports: vec![report(t.id.as_str(), TaskState::Failed)],
                at: 1_002,
            },
        );
        assert!(s.services.health.is_empty());
    }

    fn script() -> Vec<Command> {
        let mut cmds = vec![
            Command::Services(ServiceCommand::create(ServiceRecord::new(
                "s1",
                replicated("web", 4),
                10,
            ))),
            Command::Services(ServiceCommand::create(ServiceRecord::new(
                "s2",
                replicated("web", 1),
                11,
            ))),
        ];
        cmds.push(Command::Services(ServiceCommand::Scale {
            id: "s1".into(),
            replicas: 3,
            at: 12,
        }));
        cmds
    }

    #[test]
    fn state_round_trips_and_apply_is_deterministic() {
        let run = || {
            let mut s = cluster();
            for c in script() {
                s.apply(&c);
            }
            let now = converge(&mut s, 1_000);
            s.apply(&Command::SetNodeStatus {
                id: "n2".into(),
                status: NodeStatus::Down,
                at: now,
            });
            converge(&mut s, now + 10);
            s.services.services.get_mut("s1").unwrap().update_status = Some(UpdateStatus {
                state: UpdateState::Completed,
                started_at: Some(1),
                completed_at: Some(2),
                message: "done".into(),
            });
            s
        };
        let a = run();
        let b = run();
        assert!(!a.services.tasks.is_empty());
        assert_eq!(a.encode(), b.encode());
        let decoded = ClusterState::decode(&a.encode()).unwrap();
        assert_eq!(decoded, a);
        // Commands round-trip too (they are what the log holds).
        let (decisions, _) = plan(&cluster_with_service(), 5).unwrap();
        let cmd = Command::Services(ServiceCommand::ApplyDecisions { decisions, now: 5 });
        let bytes = postcard::to_stdvec(&cmd).unwrap();
        assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), cmd);
        // And rows serialize to JSON with the documented field names.
        let row =
            serde_json::to_value(service_row(&a.services, &a.services.services["s1"])).unwrap();
        for key in [
            "id",
            "name",
            "mode",
            "replicas",
            "running",
            "image",
            "driver",
            "ports",
            "update_status",
        ] {
            assert!(row.get(key).is_some(), "{key}");
        }
        assert_eq!(row["update_status"]["state"], "completed");
        let task =
            serde_json::to_value(&task_rows(&a.services, &a.nodes, TaskFilter::All)[0]).unwrap();
        for key in [
            "id",
            "service",
            "slot",
            "node_id",
            "node",
            "image",
            "desired_state",
            "state",
            "error",
            "exit_code",
        ] {
            assert!(task.get(key).is_some(), "{key}");
        }
    }

    fn cluster_with_service() -> ClusterState {
        let mut s = cluster();
        create(&mut s, "s1", replicated("web", 2));
        s
    }

    #[test]
    fn view_maps_nodes_and_services() {
        let mut s = cluster();
        let mut spec = replicated("web", 2);
        spec.constraints = vec!["node.labels.zone==attic".into()];
        spec.max_replicas_per_node = 1;
        spec.reservations.nano_cpus = 500_000_000;
        spec.restart_policy.condition = RestartCondition::OnFailure;
        create(&mut s, "s1", spec);
        let view = to_view(&s.services, &s.nodes);
        assert_eq!(view.nodes.len(), 3);
        let n1 = view.nodes.iter().find(|n| n.id.as_str() == "n1").unwrap();
        assert_eq!(n1.role, shoal_scheduler::NodeRole::Manager);
        assert_eq!(n1.capacity.nano_cpus, 4_000_000_000);
        assert!(n1.drivers.contains("docker"));
        let sv = &view.services[0];
        assert_eq!(sv.constraints.len(), 1);
        assert_eq!(sv.max_replicas_per_node, Some(1));
        assert_eq!(sv.reservations.nano_cpus, 500_000_000);
        assert_eq!(
            sv.restart_policy.condition,
            shoal_scheduler::RestartCondition::OnFailure
        );
        assert_eq!(sv.spec_version, 1);
        // No node has the label: pending with the reason, then placed when one gets it.
        orchestrate(&mut s, 1_000);
        assert!(
            s.services
                .tasks
                .values()
                .all(|t| t.state == TaskState::Pending)
        );
        let mut add = BTreeMap::new();
        add.insert("zone".to_string(), "attic".to_string());
        s.apply(&Command::UpdateNode {
            id: "n2".into(),
            availability: None,
            label_add: add,
            label_rm: vec![],
            at: 1_001,
        });
        converge(&mut s, 1_010);
        // max one per node: one runs on n2, the other stays pending.
        assert_eq!(active_on(&s, "s1").get("n2"), Some(&1));
        assert_eq!(
            s.services
                .tasks
                .values()
                .filter(|t| t.state == TaskState::Pending)
                .count(),
            1
        );
    }

    #[test]
    fn rfc3339_never_panics() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert!(rfc3339(u64::MAX).starts_with("9999-12-31"));
        assert!(new_service_id().unwrap().len() == 25);
        assert_eq!(truncate("ééé", 3), "é…");
    }
}
