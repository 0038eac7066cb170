//! Wire types between the dispatcher (manager side) and the worker.
//!
//! All types are serde, postcard friendly (no untagged enums, no flattening, no skipped
//! fields). postcard is not self-describing: a field added to a struct breaks decoding of
//! older bytes, so a changed message gets a new enum variant (see `formats.rs`, the
//! golden-bytes tests, and ARCHITECTURE.md "Formats and upgrades").

use std::fmt;

use serde::{Deserialize, Serialize};
use shoal_runtime::TaskSpec;

/// What the orchestrator wants for an assigned task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum DesiredState {
    /// Run it (start it if it has not been started; never restart it once it ended).
    Running,
    /// Stop it if it runs; it is not to run again.
    Shutdown,
}

impl DesiredState {
    /// `"running"` or `"shutdown"`.
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredState::Running => "running",
            DesiredState::Shutdown => "shutdown",
        }
    }
}

impl fmt::Display for DesiredState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One task assigned to this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// Task id (must equal `spec.task_id`).
    pub task_id: String,
    /// Service id.
    pub service_id: String,
    /// Service name.
    pub service_name: String,
    /// Slot number (0 for global services).
    pub slot: u64,
    /// Driver name: `"docker"` or `"process"`.
    pub driver: String,
    /// What to run.
    pub spec: TaskSpec,
    /// Desired state.
    pub desired: DesiredState,
}

/// A batch of assignments from the dispatcher.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AssignmentSet {
    /// `true`: `tasks` is the complete set for this node and replaces everything (`removed` is
    /// ignored); any runtime task of this node not in it gets stopped and removed. `false`: a
    /// change: `tasks` are added or updated and the ids in `removed` are no longer assigned.
    pub full: bool,
    /// Tasks added or updated (or all of them when `full`).
    pub tasks: Vec<Assignment>,
    /// Task ids no longer assigned (only when not `full`).
    pub removed: Vec<String>,
}

/// Swarm's task states. The worker reports `preparing` onwards; the others belong to the
/// manager but are part of the same vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaskState {
    /// Created by the orchestrator.
    New,
    /// Waiting for a node (the scheduler says why).
    Pending,
    /// Assigned to a node.
    Assigned,
    /// The worker is preparing (image present / pulled, program checked).
    Preparing,
    /// The worker is starting it.
    Starting,
    /// Running.
    Running,
    /// Exited with code 0.
    Complete,
    /// Exited with a non-zero code, was killed, vanished or could not be started.
    Failed,
    /// Stopped because it was no longer wanted.
    Shutdown,
    /// The node could not run it (image or program missing, driver missing, invalid spec).
    Rejected,
    /// Its node went down; the task is replaced elsewhere.
    Orphaned,
}

impl TaskState {
    /// The lowercase word (`"running"`, `"failed"`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Preparing => "preparing",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Failed => "failed",
            TaskState::Shutdown => "shutdown",
            TaskState::Rejected => "rejected",
            TaskState::Orphaned => "orphaned",
        }
    }

    /// Parses [`TaskState::as_str`]'s words.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "new" => TaskState::New,
            "pending" => TaskState::Pending,
            "assigned" => TaskState::Assigned,
            "preparing" => TaskState::Preparing,
            "starting" => TaskState::Starting,
            "running" => TaskState::Running,
            "complete" => TaskState::Complete,
            "failed" => TaskState::Failed,
            "shutdown" => TaskState::Shutdown,
            "rejected" => TaskState::Rejected,
            "orphaned" => TaskState::Orphaned,
            _ => return None,
        })
    }

    /// True for the final states (`complete`, `failed`, `shutdown`, `rejected`, `orphaned`).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskState::Complete
                | TaskState::Failed
                | TaskState::Shutdown
                | TaskState::Rejected
                | TaskState::Orphaned
        )
    }

    /// True before the worker has started anything for the task (`new`, `pending`,
    /// `assigned`).
    pub fn is_unstarted(self) -> bool {
        matches!(
            self,
            TaskState::New | TaskState::Pending | TaskState::Assigned
        )
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A change of one task's observed state, sent from the worker to the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// Task id.
    pub task_id: String,
    /// New state.
    pub state: TaskState,
    /// Exit code, once the task exited (128 + signal when killed by a signal).
    pub exit_code: Option<i64>,
    /// Why it failed or was rejected.
    pub error: Option<String>,
    /// Health (`"starting"`, `"healthy"`, `"unhealthy"`) for tasks with a health check.
    pub health: Option<String>,
    /// When the worker observed it (milliseconds since the Unix epoch).
    pub at_ms: u64,
}

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
    /// Health.
    pub health: Option<String>,
    /// Runtime reference (container id or pid) when present in the runtime.
    pub runtime_id: Option<String>,
    /// An operation (prepare/start/stop/remove) is in flight.
    pub busy: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_types_round_trip_through_postcard() {
        let mut spec = TaskSpec::new("t1", "s1", "web", 2, "/bin/sleep");
        spec.args = vec!["10".into()];
        let set = AssignmentSet {
            full: true,
            tasks: vec![Assignment {
                task_id: "t1".into(),
                service_id: "s1".into(),
                service_name: "web".into(),
                slot: 2,
                driver: "process".into(),
                spec,
                desired: DesiredState::Running,
            }],
            removed: vec!["t0".into()],
        };
        let bytes = postcard::to_allocvec(&set).expect("encode");
        let back: AssignmentSet = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, set);

        let report = TaskReport {
            task_id: "t1".into(),
            state: TaskState::Failed,
            exit_code: Some(3),
            error: Some("task exited with code 3".into()),
            health: None,
            at_ms: 17,
        };
        let bytes = postcard::to_allocvec(&report).expect("encode");
        let back: TaskReport = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, report);
        // Garbage never panics.
        assert!(postcard::from_bytes::<AssignmentSet>(&[0xff, 0xff, 0x01]).is_err());
    }

    #[test]
    fn states_have_lowercase_words() {
        for s in [
            TaskState::New,
            TaskState::Pending,
            TaskState::Assigned,
            TaskState::Preparing,
            TaskState::Starting,
            TaskState::Running,
            TaskState::Complete,
            TaskState::Failed,
            TaskState::Shutdown,
            TaskState::Rejected,
            TaskState::Orphaned,
        ] {
            assert_eq!(TaskState::parse(s.as_str()), Some(s));
            assert_eq!(s.as_str(), s.as_str().to_lowercase());
        }
        assert!(TaskState::Failed.is_terminal());
        assert!(!TaskState::Running.is_terminal());
        assert_eq!(TaskState::parse("bogus"), None);
    }
}
