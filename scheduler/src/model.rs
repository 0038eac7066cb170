//! The scheduler's own vocabulary: nodes, services and tasks.
//!
//! These types are plain data with serde derives (externally tagged enums only, no skipped or
//! flattened fields) so that the node crate can store them in Raft with postcard as they are.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::constraint::Constraint;

/// A point in time: milliseconds since the Unix epoch. The scheduler never reads a clock; the
/// caller passes `now` in.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// This timestamp moved `ms` milliseconds later (saturating).
    #[must_use]
    pub fn plus_ms(self, ms: u64) -> Self {
        Self(self.0.saturating_add(ms))
    }

    /// This timestamp moved `ms` milliseconds earlier (saturating at zero).
    #[must_use]
    pub fn minus_ms(self, ms: u64) -> Self {
        Self(self.0.saturating_sub(ms))
    }
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        pub struct $name(pub String);

        impl $name {
            /// The ID as a string slice.
            #[must_use]
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

string_id!(
    /// A node's ID (opaque to the scheduler; compared and sorted as a string).
    NodeId
);
string_id!(
    /// A service's ID.
    ServiceId
);
string_id!(
    /// A task's ID.
    TaskId
);

/// Reservations or capacity: memory in bytes and CPU in nano-CPUs (1 CPU = 1 000 000 000, as
/// Docker's `NanoCPUs`). A reservation of zero always fits.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Resources {
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// CPU in nano-CPUs (1e9 = one CPU).
    pub nano_cpus: u64,
}

impl Resources {
    /// No resources.
    pub const ZERO: Self = Self {
        memory_bytes: 0,
        nano_cpus: 0,
    };

    /// Component-wise saturating sum.
    #[must_use]
    pub fn saturating_add(self, other: Self) -> Self {
        Self {
            memory_bytes: self.memory_bytes.saturating_add(other.memory_bytes),
            nano_cpus: self.nano_cpus.saturating_add(other.nano_cpus),
        }
    }

    /// Component-wise saturating difference.
    #[must_use]
    pub fn saturating_sub(self, other: Self) -> Self {
        Self {
            memory_bytes: self.memory_bytes.saturating_sub(other.memory_bytes),
            nano_cpus: self.nano_cpus.saturating_sub(other.nano_cpus),
        }
    }

    /// True when both components are zero.
    #[must_use]
    pub fn is_zero(self) -> bool {
        self == Self::ZERO
    }
}

/// A node's role in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NodeRole {
    /// A Raft voter that can also run tasks.
    Manager,
    /// A node that only runs tasks.
    Worker,
}

/// A node's liveness as decided by membership and committed by the leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NodeStatus {
    /// Alive: can receive new tasks.
    Ready,
    /// Declared dead: its tasks are orphaned and replaced elsewhere.
    Down,
    /// Not known yet (e.g. just after a leader change): existing tasks stay, nothing new is placed.
    Unknown,
}

/// An operator's choice of what may run on a node.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Availability {
    /// New tasks may be placed here.
    Active,
    /// Nothing new is placed here; existing tasks stay.
    Pause,
    /// Existing tasks move elsewhere (replacement started first) and nothing new is placed.
    Drain,
}

/// A node as the scheduler sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    /// Unique node ID.
    pub id: NodeId,
    /// Hostname (matched by `node.hostname` constraints).
    pub hostname: String,
    /// Manager or worker (matched by `node.role` constraints).
    pub role: NodeRole,
    /// Liveness.
    pub status: NodeStatus,
    /// Operator availability.
    pub availability: Availability,
    /// Operator labels (matched by `node.labels.KEY` constraints).
    pub labels: BTreeMap<String, String>,
    /// Total resources the node offers to tasks.
    pub capacity: Resources,
    /// Task drivers the node offers (e.g. `docker`, `process`).
    pub drivers: BTreeSet<String>,
    /// Whether it runs tasks with more privileges than a container gets by default.
    pub allows_privileged: bool,
    /// The device paths it has; `None`: not reported (devices are then not checked).
    pub devices: Option<BTreeSet<String>>,
}

/// How many tasks a service wants.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceMode {
    /// A fixed number of replicas, in slots `1..=replicas`.
    Replicated {
        /// Desired number of running tasks.
        replicas: u64,
    },
    /// One task on every eligible node.
    Global,
}

/// When an ended task is replaced by a new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum RestartCondition {
    /// Replace after any exit (success or failure).
    Any,
    /// Replace only after a failure (`failed`, `rejected`, or an unexpected `shutdown`).
    OnFailure,
    /// Never replace an ended task.
    None,
}

/// A service's restart policy (Docker's `--restart-*` flags).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    /// When to restart.
    pub condition: RestartCondition,
    /// Delay between the end of a task and the creation of its replacement, in milliseconds.
    pub delay_ms: u64,
    /// Maximum number of restarts (within `window_ms` if non-zero); 0 means unlimited.
    pub max_attempts: u64,
    /// Window, in milliseconds, over which restarts are counted; 0 means forever.
    pub window_ms: u64,
}

impl Default for RestartPolicy {
    /// Docker's defaults: condition `any`, delay 5 s, unlimited attempts, no window.
    fn default() -> Self {
        Self {
            condition: RestartCondition::Any,
            delay_ms: 5_000,
            max_attempts: 0,
            window_ms: 0,
        }
    }
}

/// A service's desired state, as far as scheduling is concerned.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    /// Unique service ID.
    pub id: ServiceId,
    /// Service name (for messages only).
    pub name: String,
    /// Replicated with a count, or global.
    pub mode: ServiceMode,
    /// Task driver the service needs (a node must offer it).
    pub driver: String,
    /// Its tasks need more privileges than a container gets by default (`--privileged`,
    /// `--cap-add`): only nodes that allow it are eligible.
    pub privileged: bool,
    /// Device paths of the node its tasks need (`--device`): only nodes that have them (or
    /// have not reported their devices) are eligible.
    pub devices: Vec<String>,
    /// Placement constraints; all must hold.
    pub constraints: Vec<Constraint>,
    /// Resources reserved per task.
    pub reservations: Resources,
    /// At most this many tasks of the service per node (`None`: unlimited).
    pub max_replicas_per_node: Option<u64>,
    /// Restart policy.
    pub restart_policy: RestartPolicy,
    /// Spec version; copied into every task created for it.
    pub spec_version: u64,
    /// The rolling update (or rollback) in progress or paused, if any: without one, tasks
    /// of older spec versions are left alone.
    pub update: Option<RollingUpdate>,
}

/// A rolling update (or rollback) of a service: which task versions are up to date and how
/// fast the others are replaced. The service's `spec_version` is always up to date.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RollingUpdate {
    /// Spec versions whose tasks run what the current spec asks for (besides
    /// `spec_version`): after a rollback, the version rolled back to; after an update that
    /// changed only settings, the one before. Tasks of any other version are replaced.
    pub current_versions: Vec<u64>,
    /// Slots replaced at once (0: all at once).
    pub parallelism: u64,
    /// Wait between a batch being ready and the next batch, in milliseconds.
    pub delay_ms: u64,
    /// Start the new task before stopping the old one (otherwise stop first).
    pub start_first: bool,
    /// Paused after a failure: no further slot is started (a started one still finishes).
    pub paused: bool,
    /// When the update began: tasks created since are its work.
    pub started_at: Timestamp,
    /// How long after the last slot is ready a failure still counts, in milliseconds.
    pub monitor_ms: u64,
    /// Failures tolerated as a fraction of the slots, in parts per million.
    pub max_failure_ratio_ppm: u32,
    /// The current spec has a health check: an updated task is ready only once `healthy`.
    pub require_healthy: bool,
}

impl RollingUpdate {
    /// True when a task of spec `version` runs the current spec of a service at
    /// `spec_version`.
    #[must_use]
    pub fn is_current(&self, spec_version: u64, version: u64) -> bool {
        version == spec_version || self.current_versions.contains(&version)
    }
}

/// Which part of a service a task implements.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Slot {
    /// Slot number of a replicated service (1-based).
    Replica(u64),
    /// The node a global service's task is for.
    Node(NodeId),
}

impl fmt::Display for Slot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Replica(n) => write!(f, "{n}"),
            Self::Node(id) => write!(f, "{id}"),
        }
    }
}

/// What the orchestrator wants for a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum DesiredState {
    /// Run it (or keep it, if it ended and is not to be replaced).
    Running,
    /// Stop it; it is finished with (history only).
    Shutdown,
}

/// A task's observed state (Swarm's task model, DESIGN §5), in lifecycle order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum TaskState {
    /// Created, not yet considered by placement.
    New,
    /// No node fits; the task's `pending_reason` says why.
    Pending,
    /// Placed on a node; the worker has not started it yet.
    Assigned,
    /// The worker is preparing it (e.g. pulling the image).
    Preparing,
    /// The worker is starting it.
    Starting,
    /// Running.
    Running,
    /// Exited with code 0.
    Complete,
    /// Exited with a non-zero code or could not run.
    Failed,
    /// Stopped by the worker.
    Shutdown,
    /// The worker refused it (e.g. the image cannot be found).
    Rejected,
    /// Its node went down; the task no longer counts as running.
    Orphaned,
}

impl TaskState {
    /// True for states a task never leaves (`complete`, `failed`, `shutdown`, `rejected`,
    /// `orphaned`).
    #[must_use]
    pub fn is_terminal(self) -> bool {
        self >= Self::Complete
    }

    /// True for states in which the task has no node yet (`new`, `pending`).
    #[must_use]
    pub fn is_unassigned(self) -> bool {
        matches!(self, Self::New | Self::Pending)
    }
}

/// A task's health as its worker last saw it (the runtime's health check), in the order of
/// the manager's copy of the same words (postcard encodes the variant index).
///
/// The serde names are the lowercase words (`none`, `starting`, ...), as the manager's JSON
/// has always shown them.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum TaskHealth {
    /// No health check (or none reported yet).
    #[default]
    None,
    /// Checks run, not yet passed.
    Starting,
    /// The last check passed.
    Healthy,
    /// Failed `retries` checks in a row.
    Unhealthy,
}

/// One attempt at running one slot of a service.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// Unique task ID.
    pub id: TaskId,
    /// The service it belongs to.
    pub service_id: ServiceId,
    /// Its slot (replicated) or node (global).
    pub slot: Slot,
    /// Attempt number within the slot, starting at 0; each new task for the slot gets the
    /// previous attempt + 1.
    pub attempt: u64,
    /// The node it is assigned to (`None` while `new` or `pending`).
    pub node_id: Option<NodeId>,
    /// What the orchestrator wants.
    pub desired_state: DesiredState,
    /// What was observed (reported by the worker, or set by the orchestrator).
    pub state: TaskState,
    /// The service spec version it was created from.
    pub spec_version: u64,
    /// Resources reserved for it on its node (copied from the spec when created).
    pub reservations: Resources,
    /// When it was created.
    pub created_at: Timestamp,
    /// When its state last changed.
    pub updated_at: Timestamp,
    /// When it reached a terminal state (`None` while not terminal). If missing on a terminal
    /// task, `updated_at` is used.
    pub ended_at: Option<Timestamp>,
    /// Exit code, if it exited.
    pub exit_code: Option<i32>,
    /// Error reported by the worker (e.g. why it was rejected or failed).
    pub error: Option<String>,
    /// Why it is pending (set while `state == Pending`).
    pub pending_reason: Option<crate::placement::PendingReason>,
    /// Times of this slot's earlier restarts that still count towards `max_attempts`, oldest
    /// first (bounded by `max_attempts`).
    pub restart_history: Vec<Timestamp>,
}

impl Task {
    /// True if the task is not terminal and is wanted running: it occupies its slot.
    #[must_use]
    pub fn is_active(&self) -> bool {
        self.desired_state == DesiredState::Running && !self.state.is_terminal()
    }

    /// When it ended (`ended_at`, or `updated_at` for a terminal task without one).
    #[must_use]
    pub fn end_time(&self) -> Timestamp {
        self.ended_at.unwrap_or(self.updated_at)
    }
}

/// Everything the scheduler reads: desired state (services, node availability and labels) and
/// observed state (node status, task states). Order of the vectors does not matter; IDs must be
/// unique within each vector (for duplicates, the first entry wins).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterView {
    /// All known nodes.
    pub nodes: Vec<Node>,
    /// All services.
    pub services: Vec<Service>,
    /// All tasks (including history).
    pub tasks: Vec<Task>,
    /// The last reported health of running tasks that have a health check (others: none).
    pub health: BTreeMap<TaskId, TaskHealth>,
}
