//! The worker's own types; the session's wire types it uses are in [`crate::session`].

use serde::{Deserialize, Serialize};

pub use crate::session::{
    Assignment, AssignmentSet, DesiredState, TaskHealth, TaskReport, TaskState, health_word,
};

/// The worker's local view of one task (for `node ps` and debugging; not a wire type of the
/// dispatcher protocol, but serde for the control API).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskView {
    /// Task id.
    pub task_id: String,
    /// Service id (empty when unknown).
    pub service_id: String,
    /// Service name (empty when unknown).
    pub service_name: String,
    /// Slot.
    pub slot: u64,
    /// Driver name.
    pub driver: String,
    /// Desired state, `None` when the task is not assigned to this node (about to be stopped, or
    /// waiting for the first full assignment set after a restart).
    pub desired: Option<DesiredState>,
    /// Whether the assignment (or its absence) comes from a manager since this worker started
    /// (`false`: only from the local cache or the runtime).
    pub confirmed: bool,
    /// Observed state.
    pub state: TaskState,
    /// Exit code.
    pub exit_code: Option<i64>,
    /// Error.
    pub error: Option<String>,
    /// Health (in JSON the word, or `null` for none).
    #[serde(with = "health_word")]
    pub health: TaskHealth,
    /// Runtime reference (container id or pid) when present in the runtime.
    pub runtime_id: Option<String>,
    /// An operation (prepare/start/stop/remove) is in flight.
    pub busy: bool,
}
