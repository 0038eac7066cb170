//! The driver trait.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use futures_util::Stream;
use serde::{Deserialize, Serialize};

use crate::error::RuntimeError;
use crate::spec::TaskSpec;
use crate::status::{Event, LogChunk, LogOptions, TaskStatus};

/// A boxed, sendable future (keeps [`Driver`] object safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A boxed, sendable stream.
pub type BoxStream<'a, T> = Pin<Box<dyn Stream<Item = T> + Send + 'a>>;

/// Which driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DriverKind {
    /// Docker containers.
    Docker,
    /// Plain processes.
    Process,
}

impl DriverKind {
    /// `"docker"` or `"process"` (the `--driver` value).
    pub fn as_str(self) -> &'static str {
        match self {
            DriverKind::Docker => "docker",
            DriverKind::Process => "process",
        }
    }
}

impl fmt::Display for DriverKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a driver can run tasks on this node now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Availability {
    /// Usable.
    Available {
        /// Runtime version (e.g. "Docker 20.10.24, API 1.41").
        version: String,
    },
    /// Not usable, and why.
    Unavailable {
        /// Human-readable reason.
        reason: String,
    },
}

impl Availability {
    /// True when [`Availability::Available`].
    pub fn is_available(&self) -> bool {
        matches!(self, Availability::Available { .. })
    }
}

/// A task runtime on one node. Object safe: the node holds drivers as `Arc<dyn Driver>`.
///
/// Tasks are addressed by task id. Every method only ever sees tasks of the driver's own
/// [`crate::Scope`] (node and cluster): a task of another node is [`RuntimeError::NotFound`].
/// All methods are idempotent where that makes sense: starting a task that already exists returns
/// its status, stopping an exited task succeeds.
pub trait Driver: Send + Sync {
    /// Which driver this is.
    fn kind(&self) -> DriverKind;

    /// Whether the driver can run tasks now (Docker: the engine answers), with the reason if not.
    fn availability(&self) -> BoxFuture<'_, Availability>;

    /// Makes what the task needs present: Docker pulls the image only when it is missing locally
    /// (failing with [`RuntimeError::ImageNotFound`] when no registry answers); the process driver
    /// checks that the program exists and is executable. Idempotent.
    fn prepare<'a>(&'a self, spec: &'a TaskSpec) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Creates and starts the task (call [`Driver::prepare`] first). Returns its status just
    /// after the start. A task id that already exists is not started twice: its status is
    /// returned. Nothing is left behind when starting fails.
    fn start<'a>(&'a self, spec: &'a TaskSpec) -> BoxFuture<'a, Result<TaskStatus, RuntimeError>>;

    /// Sends the stop signal, waits up to `grace` (or the spec's grace period when `None`), then
    /// kills. Returns once the task has exited. Stopping an exited task is a no-op.
    fn stop<'a>(
        &'a self,
        task_id: &'a str,
        grace: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Removes the task (killing it if still running) and what it left behind (container, logs,
    /// state). [`RuntimeError::NotFound`] when it does not exist.
    fn remove<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>>;

    /// Current status of one task.
    fn inspect<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<TaskStatus, RuntimeError>>;

    /// All tasks of this driver's scope, running or not (adoption after a restart).
    fn list(&self) -> BoxFuture<'_, Result<Vec<TaskStatus>, RuntimeError>>;

    /// Events about this scope's tasks. Starts with [`Event::Resynced`] (or
    /// [`Event::Disconnected`] when the engine is unreachable); never ends on its own while the
    /// driver exists: while the engine is unreachable it yields [`Event::Disconnected`] once and
    /// keeps retrying with back-off, then yields [`Event::Resynced`] again. Drop the stream to
    /// stop it. Must be called inside a Tokio runtime.
    fn events(&self) -> BoxStream<'static, Event>;

    /// The task's stdout and stderr. With `follow`, the stream continues until the task exits.
    fn logs(
        &self,
        task_id: &str,
        options: LogOptions,
    ) -> BoxStream<'static, Result<LogChunk, RuntimeError>>;
}
