//! The worker: runs the tasks the managers assign to this node.
//!
//! Every node runs one. It receives [`AssignmentSet`]s from the dispatcher session (plugged in
//! by the caller through [`WorkerHandle::apply`]) and reconciles them against the runtime
//! drivers ([`shoal_runtime::Driver`]), sending batched [`TaskReport`]s back on a channel.
//!
//! - Starts what is assigned with desired `Running` (reports `preparing`, `starting`,
//!   `running`; `rejected` when the node cannot run it: driver missing, image or program
//!   missing, invalid spec; `failed` when starting fails otherwise).
//! - Stops what is assigned with desired `Shutdown` (reports `shutdown`).
//! - Once a *full* set has been received since this worker started, stops and removes every
//!   runtime task of this node that is not assigned (reports `shutdown` for those that ran).
//!   Until then (after a daemon restart, before any manager answered) it stops nothing. Each
//!   full set is diffed at once against every driver's listing (all states), not against the
//!   cache: a copy the cache does not know (a start in flight when the daemon was killed) is
//!   stopped too. A task whose driver is missing cannot be stopped and is never reported
//!   stopped.
//! - Never restarts a task in place: an exit is reported `complete` (code 0) or `failed` (code,
//!   error), and the orchestrator makes a new task.
//! - Stops a running task whose health check says `unhealthy` (the check failed `retries`
//!   times; Docker's own check, an image's `HEALTHCHECK` included, or the process driver's),
//!   with its spec's stop grace, and reports it `failed` with the error `unhealthy container`
//!   and the exit code the stop gave: the manager's restart policy replaces it, as Swarm does.
//! - Learns about exits, OOM kills and health changes from the drivers' event streams, plus a
//!   periodic level-triggered resync (`list`), so nothing is missed.
//! - Keeps running what it has when no manager is reachable (edge autonomy): nothing here
//!   depends on a session being up. Assignments and states are cached atomically in the cache
//!   directory; after a restart running tasks are adopted (the drivers adopt them too) instead of
//!   started again.
//! - Ended tasks are removed from the runtime when unassigned, or after
//!   [`WorkerConfig::ended_retention`] (logs stay available until then).
//!
//! Reports only carry changes (a task's state, exit code, error or health differing from what
//! was last reported), batched every [`WorkerConfig::flush_interval`] or as soon as
//! [`WorkerConfig::max_batch`] accumulate. Only assigned tasks are reported, plus `shutdown` for
//! unassigned runtime tasks the worker stopped. When the receiver does not keep up (or is not
//! read while no session is up), pending reports are coalesced to the latest state per task
//! and delivered once there is room: order per task is kept and a final state is never lost.
//!
//! # Layout
//!
//! - `machine.rs`: every decision, without I/O (sans-IO, as the `membership` crate): the task
//!   entries, fed assignment sets, driver observations, operation outcomes and the time, giving
//!   back effects (operations on a task with its driver and spec, listings, inspections, cache
//!   writes) and reports.
//! - `actor.rs`: the tokio shell: one task owning the machine, feeding it and carrying out its
//!   effects through the [`Driver`]s (each operation in a task of its own), sending reports.
//! - `cache.rs`, `types.rs` (the wire types), `error.rs`.
//!
//! # Plugging in the dispatcher session
//!
//! ```no_run
//! # use std::{collections::BTreeMap, sync::Arc};
//! # use shoal::worker::{Worker, WorkerConfig, AssignmentSet};
//! # async fn f(drivers: BTreeMap<String, Arc<dyn shoal_runtime::Driver>>,
//! #            state_dir: std::path::PathBuf) -> Result<(), shoal::worker::WorkerError> {
//! let (worker, mut reports) = Worker::start(WorkerConfig::new(drivers, state_dir.join("worker")))?;
//! // On every new session: send `worker.current_reports().await?` first, then forward the
//! // batches from `reports`. The manager sends a full set first, then changes:
//! let set = AssignmentSet { full: true, tasks: vec![], removed: vec![] };
//! worker.apply(set).await?;
//! while let Some(batch) = reports.recv().await {
//!     // session.send(batch)
//! #   let _ = batch;
//! }
//! worker.shutdown().await?; // on daemon exit; the tasks keep running
//! # Ok(()) }
//! ```

mod actor;
pub(crate) mod cache;
mod error;
mod machine;
mod types;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_runtime::Driver;
use tokio::sync::{mpsc, oneshot};

pub use error::WorkerError;
pub use types::{
    Assignment, AssignmentSet, DesiredState, TaskHealth, TaskReport, TaskState, TaskView,
    health_word,
};

/// How a [`Worker`] is set up.
#[derive(Clone)]
pub struct WorkerConfig {
    /// Drivers by name (`"docker"`, `"process"`): the names [`Assignment::driver`] uses.
    pub drivers: BTreeMap<String, Arc<dyn Driver>>,
    /// Directory for the worker's cache (e.g. `STATE_DIR/worker`); created if missing.
    pub cache_dir: PathBuf,
    /// The worker's one clock (milliseconds since the epoch): [`TaskReport::at_ms`], retention,
    /// retry delays and tombstone lifetimes. The decisions read no other.
    pub now_ms: fn() -> u64,
    /// Reports are sent at least this often while there are some.
    pub flush_interval: Duration,
    /// Reports are sent as soon as this many accumulate.
    pub max_batch: usize,
    /// Period of the level-triggered resync against every driver's `list()`.
    pub resync_interval: Duration,
    /// Ended tasks still assigned are removed from the runtime (their logs go with them) this
    /// long after they ended. Unassigned ended tasks are removed at once.
    pub ended_retention: Duration,
    /// Capacity of the report channel, in batches. When the receiver lags, pending reports are
    /// coalesced (latest state per task) until there is room again.
    pub report_capacity: usize,
    /// The secrets of this node's tasks, as the leader last sent them (memory only).
    pub secrets: Arc<SecretStore>,
}

/// The label a task's spec carries when it needs secrets (their names): the worker starts
/// it only with its secrets from the [`SecretStore`].
pub const LABEL_SECRETS: &str = "io.shoal.secrets";

/// The secrets of this node's tasks, by task ID, in memory only (never in the cache): what
/// the leader sends apart from the assignments (`ToWorker::Secrets`).
#[derive(Default)]
pub struct SecretStore {
    tasks: std::sync::Mutex<BTreeMap<String, Vec<shoal_runtime::TaskFile>>>,
}

impl std::fmt::Debug for SecretStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretStore").finish_non_exhaustive()
    }
}

impl SecretStore {
    /// Replaces every task's secrets.
    pub fn replace(&self, tasks: BTreeMap<String, Vec<shoal_runtime::TaskFile>>) {
        *self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = tasks;
    }

    /// The secrets of `task_id`, if the leader sent them.
    #[must_use]
    pub fn get(&self, task_id: &str) -> Option<Vec<shoal_runtime::TaskFile>> {
        self.tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(task_id)
            .cloned()
    }
}

impl std::fmt::Debug for WorkerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerConfig")
            .field("drivers", &self.drivers.keys().collect::<Vec<_>>())
            .field("cache_dir", &self.cache_dir)
            .field("flush_interval", &self.flush_interval)
            .field("max_batch", &self.max_batch)
            .field("resync_interval", &self.resync_interval)
            .field("ended_retention", &self.ended_retention)
            .field("report_capacity", &self.report_capacity)
            .finish_non_exhaustive()
    }
}

impl WorkerConfig {
    /// Defaults: system clock, flush every 150 ms or at 64 reports, resync every 10 s, ended
    /// tasks kept for 1 hour, 64 batches of channel capacity.
    pub fn new(drivers: BTreeMap<String, Arc<dyn Driver>>, cache_dir: impl Into<PathBuf>) -> Self {
        Self {
            drivers,
            cache_dir: cache_dir.into(),
            now_ms: crate::util::now_ms,
            flush_interval: Duration::from_millis(150),
            max_batch: 64,
            resync_interval: Duration::from_secs(10),
            ended_retention: Duration::from_secs(3600),
            report_capacity: 64,
            secrets: Arc::default(),
        }
    }
}

/// Requests from handles to the worker loop.
pub(crate) enum Command {
    Apply(AssignmentSet, oneshot::Sender<()>),
    Snapshot(oneshot::Sender<Vec<TaskView>>),
    CurrentReports(oneshot::Sender<Vec<TaskReport>>),
    Flush(oneshot::Sender<()>),
    Resync(oneshot::Sender<()>),
    Shutdown(oneshot::Sender<()>),
}

/// The worker (see the module documentation). Start it with [`Worker::start`].
#[derive(Debug)]
pub struct Worker;

impl Worker {
    /// Loads the cache, subscribes to every driver's events and starts the reconcile loop.
    /// Returns the handle and the receiver of report batches (never empty batches; in order per
    /// task). Must be called inside a Tokio runtime.
    ///
    /// The loop ends on [`WorkerHandle::shutdown`] or when every handle is dropped; the tasks it
    /// runs keep running either way (a new worker on the same cache directory adopts them).
    pub fn start(
        config: WorkerConfig,
    ) -> Result<(WorkerHandle, mpsc::Receiver<Vec<TaskReport>>), WorkerError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(WorkerError::NoRuntime);
        }
        let cache = cache::Cache::open(&config.cache_dir)?;
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        let (report_tx, report_rx) = mpsc::channel(config.report_capacity.max(1));
        let done = actor::spawn(config, cache, cmd_rx, report_tx);
        Ok((
            WorkerHandle {
                tx: cmd_tx,
                done: Arc::new(tokio::sync::Mutex::new(Some(done))),
            },
            report_rx,
        ))
    }
}

/// Talks to a running [`Worker`]. Cheap to clone.
#[derive(Clone, Debug)]
pub struct WorkerHandle {
    tx: mpsc::Sender<Command>,
    done: Arc<tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>>,
}

impl WorkerHandle {
    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, WorkerError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(make(tx))
            .await
            .map_err(|_| WorkerError::Stopped)?;
        rx.await.map_err(|_| WorkerError::Stopped)
    }

    /// Hands the worker an assignment set from the dispatcher. Returns once the set is
    /// recorded (and cached); starting and stopping happen in the background and show in the
    /// reports. Reports caused directly by the set (e.g. `rejected` for a missing driver) are
    /// queued before this returns.
    pub async fn apply(&self, set: AssignmentSet) -> Result<(), WorkerError> {
        self.ask(|tx| Command::Apply(set, tx)).await
    }

    /// The worker's current view of every task it knows (assigned or found in the runtime).
    pub async fn snapshot(&self) -> Result<Vec<TaskView>, WorkerError> {
        self.ask(Command::Snapshot).await
    }

    /// The current state of every assigned task as reports (not deduplicated): what a new
    /// dispatcher session should be told first.
    pub async fn current_reports(&self) -> Result<Vec<TaskReport>, WorkerError> {
        self.ask(Command::CurrentReports).await
    }

    /// Sends the pending reports now (waiting for room in the channel is not done: if the
    /// receiver lags they stay pending, coalesced).
    pub async fn flush(&self) -> Result<(), WorkerError> {
        self.ask(Command::Flush).await
    }

    /// Lists every driver now and reconciles against the result; returns once that is done.
    pub async fn resync(&self) -> Result<(), WorkerError> {
        self.ask(Command::Resync).await
    }

    /// Stops the worker loop after flushing reports and writing the cache. Tasks keep running.
    /// Idempotent.
    pub async fn shutdown(&self) -> Result<(), WorkerError> {
        let _ = self.ask(Command::Shutdown).await;
        let handle = self.done.lock().await.take();
        if let Some(handle) = handle {
            let _ = handle.await;
        }
        Ok(())
    }
}
