//! What a driver reports about its tasks.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Lifecycle state of a task's process or container, as the runtime sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Created but not started (Docker `created`).
    Created,
    /// Running (Docker `running`, `paused` or `restarting`).
    Running,
    /// Finished: see `exit_code` and `error`.
    Exited,
    /// Being removed, dead, or otherwise unusable.
    Dead,
}

/// Health of a task with a health check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// The task has no health check.
    None,
    /// The check has not succeeded yet (and has not failed `retries` times).
    Starting,
    /// The last check succeeded.
    Healthy,
    /// The last `retries` checks failed.
    Unhealthy,
}

/// Where a target port of a task can be reached from this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PortEndpoint {
    /// The port from the spec.
    pub target: u16,
    /// Docker: the container's address on the `shoal` network. Process: `127.0.0.1:PORT`.
    pub addr: SocketAddr,
}

/// A task as the runtime sees it now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStatus {
    /// Task id (from the `shoal.task` label / the task record).
    pub task_id: String,
    /// Service id.
    pub service_id: String,
    /// Service name.
    pub service_name: String,
    /// Slot.
    pub slot: u64,
    /// Runtime reference: container id, or the program's pid.
    pub runtime_id: String,
    /// The image *name* (or program path) the task was created from — never an image id, so a
    /// re-tagged image compares by name.
    pub image: String,
    /// Lifecycle state.
    pub state: RunState,
    /// Exit code once exited (128 + signal number when killed by a signal); `None` while running
    /// or when the exit status could not be recorded.
    pub exit_code: Option<i64>,
    /// Killed by the kernel's OOM killer.
    pub oom_killed: bool,
    /// Health check state.
    pub health: Health,
    /// Runtime error message (e.g. why a start failed), if any.
    pub error: Option<String>,
    /// When the task started.
    pub started_at: Option<SystemTime>,
    /// When the task finished.
    pub finished_at: Option<SystemTime>,
    /// Where each target port can be reached (only while running).
    pub ports: Vec<PortEndpoint>,
    /// User labels from the spec (without the `shoal.*` ones).
    pub labels: BTreeMap<String, String>,
    /// The task's own address on its network (a container's, while running); `None` for a
    /// process task, which shares the node's.
    #[serde(default)]
    pub address: Option<std::net::IpAddr>,
}

/// Something that happened to the tasks of this driver's scope.
///
/// Events are hints delivered at least once (a reconnection may replay some); the state to act on
/// is the one in [`Event::Resynced`] and [`crate::Driver::inspect`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// The full list of this driver's tasks. The first item of a stream, and sent again
    /// after the engine's event stream broke and was re-established (or events were lost):
    /// reconcile against it (level-triggered).
    Resynced(Vec<TaskStatus>),
    /// The engine's event stream broke; the driver keeps reconnecting and will send
    /// [`Event::Resynced`] when it is back.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// A task started.
    Started {
        /// Task id.
        task_id: String,
    },
    /// A task's process exited (Docker `die`).
    Exited {
        /// Task id.
        task_id: String,
        /// Exit code if known (128 + signal when killed by a signal).
        exit_code: Option<i64>,
    },
    /// A task's health changed.
    Health {
        /// Task id.
        task_id: String,
        /// New health.
        health: Health,
    },
    /// A process of the task was killed by the OOM killer.
    Oom {
        /// Task id.
        task_id: String,
    },
}

impl Event {
    /// The task this event is about, if it is about one.
    pub fn task_id(&self) -> Option<&str> {
        match self {
            Event::Started { task_id }
            | Event::Exited { task_id, .. }
            | Event::Health { task_id, .. }
            | Event::Oom { task_id } => Some(task_id),
            Event::Resynced(_) | Event::Disconnected { .. } => None,
        }
    }
}

/// Which output stream a log chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// A piece of a task's output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunk {
    /// Stream.
    pub stream: LogStream,
    /// Bytes, usually whole lines.
    pub data: Bytes,
    /// When the engine received the (first line of the) chunk, in nanoseconds since the Unix
    /// epoch; `None` when the driver does not know (asked without `timestamps`).
    pub timestamp_ns: Option<i64>,
}

/// What [`crate::Driver::logs`] returns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogOptions {
    /// Keep streaming new output until the task exits (Docker: until the container stops).
    pub follow: bool,
    /// Only the last `tail` lines (of each stream for the process driver); `None` = everything.
    pub tail: Option<usize>,
    /// Only output written at or after this time (milliseconds since the Unix epoch).
    pub since_ms: Option<u64>,
    /// Ask the driver for each line's time ([`LogChunk::timestamp_ns`]); a driver that knows
    /// times splits its output into one chunk per line.
    pub timestamps: bool,
}
