//! Shoal's task runtime: one [`Driver`] trait and two drivers behind it.
//!
//! - [`docker::DockerDriver`] runs tasks as Docker containers through `bollard`, labelled
//!   `shoal.cluster`, `shoal.node`, `shoal.service`, `shoal.slot`, `shoal.task` and attached to the
//!   `shoal` bridge network. Drivers of different nodes (or clusters) sharing one engine only ever
//!   see and touch containers carrying their own node and cluster labels.
//! - [`process::ProcessDriver`] runs the program directly (Nomad's `raw_exec`) under a small
//!   supervisor, the [`shim`], which writes the task's logs and records its exit status, so a task
//!   adopted after the daemon restarts still reports how it ended.
//!
//! The node's worker talks to drivers only through [`Driver`] (object safe: `Arc<dyn Driver>`),
//! with this crate's own vocabulary: [`TaskSpec`] in, [`TaskStatus`] and [`Event`] out.
//!
//! # Using it from the node
//!
//! ```no_run
//! use std::sync::Arc;
//! use shoal_runtime::docker::{DockerConfig, DockerDriver};
//! use shoal_runtime::process::{ProcessConfig, ProcessDriver, ShimCommand};
//! use shoal_runtime::{Driver, Scope};
//!
//! # async fn f() -> Result<(), shoal_runtime::RuntimeError> {
//! let scope = Scope::new("cluster-id", "node-id");
//! let docker: Arc<dyn Driver> = Arc::new(DockerDriver::new(DockerConfig::new(scope.clone()))?);
//! let shim = ShimCommand::shoal_subcommand(std::env::current_exe().expect("own path"));
//! let process: Arc<dyn Driver> =
//!     Arc::new(ProcessDriver::new(ProcessConfig::new("/var/lib/shoal/process", scope, shim))?);
//! let usable = docker.availability().await.is_available();
//! # let _ = (usable, process);
//! # Ok(()) }
//! ```
//!
//! - The node and cluster ids are the driver's [`Scope`], not part of [`TaskSpec`]: one source
//!   of truth, needed before any spec exists (adoption lists by scope after a restart).
//! - The `shoal` binary must dispatch `shoal shim ARGS...` to [`shim::run`] before anything else
//!   (no runtime, no logging set-up needed); see [`shim`].
//! - Events are level-triggered hints: act on [`Event::Resynced`] (first item of every stream,
//!   and again after an outage) and on [`Driver::inspect`]; the other events may repeat.
//! - [`Driver::events`] and [`Driver::logs`] spawn Tokio tasks: call them inside a runtime.
//!
//! # Layout
//! - `spec`: what to run ([`TaskSpec`], [`HealthCheck`], [`Mount`], [`Scope`]).
//! - `status`: what is running ([`TaskStatus`], [`RunState`], [`Health`], [`Event`], logs).
//! - `driver`: the [`Driver`] trait and [`Availability`].
//! - `docker`, `process`, `shim`: the drivers and the process supervisor.

#![deny(missing_docs)]

pub mod docker;
mod driver;
mod error;
mod logfile;
pub mod process;
mod procfs;
pub mod secrets;
pub mod shim;
mod spec;
mod status;

pub use driver::{Availability, BoxFuture, BoxStream, Driver, DriverKind};
pub use error::RuntimeError;
pub use spec::{
    Device, HealthCheck, HealthTest, LABEL_CLUSTER, LABEL_NODE, LABEL_PREFIX, LABEL_SERVICE,
    LABEL_SERVICE_NAME, LABEL_SLOT, LABEL_TASK, Mount, MountKind, Resources, Scope, TaskFile,
    TaskOptions, TaskSpec,
};
pub use status::{
    Event, Health, LogChunk, LogOptions, LogStream, PortEndpoint, RunState, TaskStatus,
};
