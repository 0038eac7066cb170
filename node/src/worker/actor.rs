//! The worker loop: a thin shell around the [`Machine`]. One task owns it and feeds it inputs
//! (handle commands, driver events, listings, inspections, the outcomes of operations and the
//! time from the configured clock); it carries out the machine's [`Effect`]s through the
//! [`Driver`]s, each operation in a task of its own so operations on different tasks run
//! concurrently, and sends the reports.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use shoal_runtime::{Driver, Event, TaskSpec, TaskStatus};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::cache::Cache;
use super::machine::{Effect, Inspection, Machine, Op, Outcome, Seen, is_rejection};
use super::types::{TaskReport, TaskState};
use super::{Command, WorkerConfig};

/// How long the stop of a published service's task waits for the mesh: the endpoint table
/// that takes it out of rotation goes out to every node with the stop itself, and a
/// connection forwarded to it just before then gets this long to be answered before the
/// task is signalled.
pub(crate) const MESH_DRAIN: Duration = Duration::from_millis(500);

/// What the spawned observations and operations send back to the loop.
enum Internal {
    Event {
        driver: String,
        stamp: u64,
        event: Event,
    },
    Listed {
        driver: String,
        stamp: u64,
        tasks: Vec<TaskStatus>,
    },
    Inspected {
        driver: String,
        task_id: String,
        stamp: u64,
        found: Inspection,
    },
    ResyncDone(oneshot::Sender<()>),
    Progress {
        task_id: String,
        state: TaskState,
    },
    OpDone {
        task_id: String,
        outcome: Outcome,
    },
}

struct Actor {
    config: WorkerConfig,
    cache: Cache,
    machine: Machine,
    /// The machine's epoch, for the event forwarders to stamp events with.
    epoch: Arc<AtomicU64>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    report_tx: mpsc::Sender<Vec<TaskReport>>,
    receiver_gone: bool,
}

/// Starts the loop; the returned handle ends when the loop does.
pub(super) fn spawn(
    config: WorkerConfig,
    cache: Cache,
    cmd_rx: mpsc::Receiver<Command>,
    report_tx: mpsc::Sender<Vec<TaskReport>>,
) -> JoinHandle<()> {
    let (internal_tx, internal_rx) = mpsc::unbounded_channel();
    let machine = Machine::new(
        config.drivers.keys().cloned().collect(),
        u64::try_from(config.ended_retention.as_millis()).unwrap_or(u64::MAX),
        cache.load(),
    );
    let actor = Actor {
        epoch: Arc::new(AtomicU64::new(machine.stamp())),
        config,
        cache,
        machine,
        internal_tx,
        report_tx,
        receiver_gone: false,
    };
    let forwarders = actor.subscribe();
    tokio::spawn(actor.run(cmd_rx, internal_rx, forwarders))
}

impl Actor {
    fn now(&self) -> u64 {
        (self.config.now_ms)()
    }

    /// One forwarding task per driver event stream.
    fn subscribe(&self) -> Vec<JoinHandle<()>> {
        self.config
            .drivers
            .iter()
            .map(|(name, driver)| {
                let mut events = driver.events();
                let tx = self.internal_tx.clone();
                let epoch = self.epoch.clone();
                let driver = name.clone();
                tokio::spawn(async move {
                    while let Some(event) = events.next().await {
                        let stamp = epoch.load(Ordering::SeqCst);
                        let msg = Internal::Event {
                            driver: driver.clone(),
                            stamp,
                            event,
                        };
                        if tx.send(msg).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect()
    }

    async fn run(
        mut self,
        mut cmd_rx: mpsc::Receiver<Command>,
        mut internal_rx: mpsc::UnboundedReceiver<Internal>,
        forwarders: Vec<JoinHandle<()>>,
    ) {
        let mut flush_tick =
            tokio::time::interval(self.config.flush_interval.max(Duration::from_millis(1)));
        flush_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut resync_tick =
            tokio::time::interval(self.config.resync_interval.max(Duration::from_millis(10)));
        resync_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown_reply = None;
        // Reports go out at once when none went out for a flush interval (a lone change,
        // such as a task stopping in a rolling update, waits for nothing); a burst after
        // that is batched by the tick.
        let mut last_flush = tokio::time::Instant::now();
        loop {
            tokio::select! {
                cmd = cmd_rx.recv() => match cmd {
                    None => break,
                    Some(Command::Shutdown(reply)) => {
                        shutdown_reply = Some(reply);
                        break;
                    }
                    Some(cmd) => self.command(cmd),
                },
                Some(msg) = internal_rx.recv() => self.internal(msg),
                _ = flush_tick.tick() => {
                    if self.machine.pending_len() > 0 {
                        last_flush = tokio::time::Instant::now();
                    }
                    self.flush();
                    if let Some(rows) = self.machine.persist_if_dirty() {
                        self.persist(rows);
                    }
                }
                _ = resync_tick.tick() => {
                    let now = self.now();
                    self.machine.tick(now);
                }
            }
            self.carry_out();
            let pending = self.machine.pending_len();
            if pending >= self.config.max_batch
                || (pending > 0 && last_flush.elapsed() >= self.config.flush_interval)
            {
                last_flush = tokio::time::Instant::now();
                self.flush();
            }
        }
        for f in &forwarders {
            f.abort();
        }
        self.flush();
        let rows = self.machine.cache_rows();
        self.persist(rows);
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Apply(set, reply) => {
                let now = self.now();
                self.machine.apply(set, now);
                // Recorded and cached (and reports it caused queued) before the reply.
                self.carry_out();
                let _ = reply.send(());
            }
            Command::Snapshot(reply) => {
                let _ = reply.send(self.machine.snapshot());
            }
            Command::CurrentReports(reply) => {
                let _ = reply.send(self.machine.current_reports(self.now()));
            }
            Command::Flush(reply) => {
                self.flush();
                let _ = reply.send(());
            }
            Command::Resync(reply) => self.spawn_resync(self.machine.stamp(), Some(reply)),
            Command::Shutdown(reply) => {
                let _ = reply.send(());
            }
        }
    }

    fn internal(&mut self, msg: Internal) {
        let now = self.now();
        let m = &mut self.machine;
        match msg {
            Internal::Event {
                driver,
                stamp,
                event,
            } => m.event(&driver, stamp, event, now),
            Internal::Listed {
                driver,
                stamp,
                tasks,
            } => m.listed(&driver, stamp, tasks, now),
            Internal::Inspected {
                driver,
                task_id,
                stamp,
                found,
            } => m.inspected(&driver, &task_id, stamp, found, now),
            Internal::ResyncDone(reply) => {
                m.resynced(now);
                self.carry_out();
                let _ = reply.send(());
            }
            Internal::Progress { task_id, state } => m.progress(&task_id, state, now),
            Internal::OpDone { task_id, outcome } => m.op_done(&task_id, outcome, now),
        }
    }

    // -----------------------------------------------------------------------------------------
    // Effects
    // -----------------------------------------------------------------------------------------

    /// Carries out what the machine asked for, in order.
    fn carry_out(&mut self) {
        for effect in self.machine.take_effects() {
            match effect {
                Effect::Op {
                    task_id,
                    driver,
                    op,
                } => {
                    let drain = matches!(op, Op::Stop) && self.machine.publishes(&task_id);
                    self.spawn_op(task_id, &driver, op, drain);
                }
                Effect::Resync { stamp } => self.spawn_resync(stamp, None),
                Effect::Inspect {
                    driver,
                    task_id,
                    stamp,
                } => self.spawn_inspect(driver, task_id, stamp),
                Effect::Persist(rows) => self.persist(rows),
            }
        }
        self.epoch.store(self.machine.stamp(), Ordering::SeqCst);
    }

    fn persist(&mut self, rows: Vec<super::cache::CachedTask>) {
        if let Err(e) = self.cache.store(rows) {
            tracing::warn!(error = %e, "cannot write the worker cache");
            self.machine.persist_failed();
        }
    }

    /// Runs `op` on its own task. With `drain`, a stop first waits [`MESH_DRAIN`]: the
    /// task of a published service left every node's rotation when its stop was decided,
    /// and connections the mesh handed it just before then still get their answer.
    fn spawn_op(&self, task_id: String, driver_name: &str, op: Op, drain: bool) {
        let tx = self.internal_tx.clone();
        let Some(driver) = self.config.drivers.get(driver_name).cloned() else {
            // The machine only acts through drivers it was told exist.
            let outcome = Outcome::Failed(format!("driver {driver_name:?} is not available"));
            let _ = tx.send(Internal::OpDone { task_id, outcome });
            return;
        };
        let op = match op {
            Op::Start(mut spec) if spec.labels.contains_key(super::LABEL_SECRETS) => {
                let Some(files) = self.config.secrets.get(&task_id) else {
                    let outcome = Outcome::StartFailed {
                        rejected: false,
                        error: "the task's secrets have not reached this node (they are sent by the leader and kept in memory only)".into(),
                    };
                    let _ = tx.send(Internal::OpDone { task_id, outcome });
                    return;
                };
                spec.options.secrets = files;
                Op::Start(spec)
            }
            op => op,
        };
        let name = op.name();
        let driver_name = driver_name.to_owned();
        tokio::spawn(async move {
            let began = tokio::time::Instant::now();
            if drain {
                tokio::time::sleep(MESH_DRAIN).await;
            }
            let outcome = match op {
                Op::Start(spec) => op_start(driver.as_ref(), &spec, &tx).await,
                Op::Stop => op_stop(driver.as_ref(), &task_id, None).await,
                Op::StopUnhealthy { grace } => {
                    op_stop(driver.as_ref(), &task_id, Some(grace)).await
                }
                Op::StopRemove => op_stop_remove(driver.as_ref(), &task_id).await,
                Op::Remove => match driver.remove(&task_id).await {
                    Ok(()) => Outcome::Removed,
                    Err(e) if e.is_not_found() => Outcome::Removed,
                    Err(e) => Outcome::Failed(e.to_string()),
                },
            };
            crate::metrics::global().reconciled(name, &driver_name, began.elapsed());
            let _ = tx.send(Internal::OpDone { task_id, outcome });
        });
    }

    /// Lists every driver (one after the other) from `stamp`; `reply` once all are in.
    fn spawn_resync(&self, stamp: u64, reply: Option<oneshot::Sender<()>>) {
        let drivers: Vec<(String, Arc<dyn Driver>)> = self
            .config
            .drivers
            .iter()
            .map(|(n, d)| (n.clone(), d.clone()))
            .collect();
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            for (driver, d) in drivers {
                match d.list().await {
                    Ok(tasks) => {
                        let _ = tx.send(Internal::Listed {
                            driver,
                            stamp,
                            tasks,
                        });
                    }
                    Err(e) => tracing::debug!(driver, error = %e, "resync: list failed"),
                }
            }
            if let Some(reply) = reply {
                let _ = tx.send(Internal::ResyncDone(reply));
            }
        });
    }

    fn spawn_inspect(&self, driver_name: String, task_id: String, stamp: u64) {
        let Some(driver) = self.config.drivers.get(&driver_name).cloned() else {
            return;
        };
        let tx = self.internal_tx.clone();
        tokio::spawn(async move {
            let found = match driver.inspect(&task_id).await {
                Ok(status) => Inspection::Found(Box::new(status)),
                Err(e) if e.is_not_found() => Inspection::NotFound,
                Err(e) => Inspection::Failed(e.to_string()),
            };
            let _ = tx.send(Internal::Inspected {
                driver: driver_name,
                task_id,
                stamp,
                found,
            });
        });
    }

    /// Sends the pending reports in batches while the channel has room; what does not fit stays
    /// pending, coalesced to the latest report per task.
    fn flush(&mut self) {
        while let Some(batch) = self.machine.next_batch(self.config.max_batch) {
            if self.receiver_gone {
                self.machine.discard_reports();
                return;
            }
            match self.report_tx.try_send(batch) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(batch)) => {
                    self.machine.unsent(batch);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::debug!("report receiver dropped; reports are discarded");
                    self.receiver_gone = true;
                }
            }
        }
    }
}

async fn op_start(
    driver: &dyn Driver,
    spec: &TaskSpec,
    tx: &mpsc::UnboundedSender<Internal>,
) -> Outcome {
    let progress = |state| {
        let _ = tx.send(Internal::Progress {
            task_id: spec.task_id.clone(),
            state,
        });
    };
    progress(TaskState::Preparing);
    if let Err(e) = driver.prepare(spec).await {
        return Outcome::StartFailed {
            rejected: true,
            error: e.to_string(),
        };
    }
    progress(TaskState::Starting);
    match driver.start(spec).await {
        Ok(status) => Outcome::Started(Box::new(status)),
        Err(e) => Outcome::StartFailed {
            rejected: is_rejection(&e),
            error: e.to_string(),
        },
    }
}

/// Stops with `grace` (`None`: the spec's, as the driver recorded it), then inspects.
async fn op_stop(driver: &dyn Driver, task_id: &str, grace: Option<Duration>) -> Outcome {
    match driver.stop(task_id, grace).await {
        Ok(()) => {}
        Err(e) if e.is_not_found() => return Outcome::Stopped(Seen::Absent),
        Err(e) => return Outcome::Failed(e.to_string()),
    }
    match driver.inspect(task_id).await {
        Ok(s) => Outcome::Stopped(Seen::Present(Box::new(s))),
        Err(e) if e.is_not_found() => Outcome::Stopped(Seen::Absent),
        Err(_) => Outcome::Stopped(Seen::Unknown),
    }
}

async fn op_stop_remove(driver: &dyn Driver, task_id: &str) -> Outcome {
    match driver.stop(task_id, None).await {
        Ok(()) => {}
        Err(e) if e.is_not_found() => return Outcome::StopRemoved { found: false },
        Err(e) => return Outcome::Failed(e.to_string()),
    }
    match driver.remove(task_id).await {
        Ok(()) => Outcome::StopRemoved { found: true },
        Err(e) if e.is_not_found() => Outcome::StopRemoved { found: true },
        Err(e) => Outcome::Failed(e.to_string()),
    }
}
