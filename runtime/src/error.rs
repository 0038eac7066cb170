//! Errors of this crate.

use std::path::PathBuf;
use std::time::Duration;

/// Everything a driver can fail with. Every variant leaves nothing half-created behind unless it
/// says otherwise.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The Docker engine cannot be reached (or refused the API handshake).
    #[error("docker engine at {endpoint} is unavailable: {reason}")]
    DockerUnavailable {
        /// Socket path or URL tried.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The image is not present locally and could not be pulled because no registry answered.
    #[error("image {image} not found locally and no registry reachable ({reason})")]
    ImageNotFound {
        /// Image reference.
        image: String,
        /// What the pull attempt said.
        reason: String,
    },
    /// The image is not present locally and a registry refused it (unknown, denied).
    #[error("image {image} not found locally and the registry refused it: {reason}")]
    PullFailed {
        /// Image reference.
        image: String,
        /// What the registry said.
        reason: String,
    },
    /// The process driver's program is missing or not executable.
    #[error("program {} cannot be run: {reason}", path.display())]
    ProgramNotFound {
        /// Program path from the spec.
        path: PathBuf,
        /// Why (missing, not a file, not executable, not absolute).
        reason: String,
    },
    /// The spec is invalid.
    #[error("invalid task spec: {0}")]
    InvalidSpec(String),
    /// No task with this id in this driver's scope.
    #[error("task {task_id} not found on this node")]
    NotFound {
        /// Task id.
        task_id: String,
    },
    /// A task with this id exists but belongs to another node or cluster, or conflicts.
    #[error("task {task_id} conflicts with an existing task: {reason}")]
    Conflict {
        /// Task id.
        task_id: String,
        /// Why.
        reason: String,
    },
    /// The task could not be started (and was cleaned up).
    #[error("task {task_id} failed to start: {reason}")]
    StartFailed {
        /// Task id.
        task_id: String,
        /// Why.
        reason: String,
    },
    /// The task did not exit even after SIGKILL.
    #[error("task {task_id} did not exit within {} after SIGKILL", humantime::format_duration(*waited))]
    StopTimeout {
        /// Task id.
        task_id: String,
        /// How long the driver waited after the kill.
        waited: Duration,
    },
    /// The Docker engine answered with an error.
    #[error("docker: {action}: {source}")]
    Docker {
        /// What the driver was doing.
        action: String,
        /// The engine's error.
        #[source]
        source: bollard::errors::Error,
    },
    /// A file-system or process operation failed.
    #[error("{action}: {source}")]
    Io {
        /// What the driver was doing.
        action: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A state file of the process driver is unreadable.
    #[error("state file {} is corrupt: {reason}", path.display())]
    CorruptState {
        /// File.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl RuntimeError {
    /// True for [`RuntimeError::NotFound`] (a reconcile loop usually treats it as "already gone").
    pub fn is_not_found(&self) -> bool {
        matches!(self, RuntimeError::NotFound { .. })
    }

    pub(crate) fn io(action: impl Into<String>, source: std::io::Error) -> Self {
        RuntimeError::Io {
            action: action.into(),
            source,
        }
    }

    pub(crate) fn docker(action: impl Into<String>, source: bollard::errors::Error) -> Self {
        RuntimeError::Docker {
            action: action.into(),
            source,
        }
    }
}
