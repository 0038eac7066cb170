//! The worker loop: one task owning all local state, fed by handle commands, driver events,
//! observation results and the outcomes of the operations it spawns.
//!
//! Staleness: every observation (driver list, inspect, event) carries a *stamp*, the value of a
//! shared epoch counter when it was started; every operation bumps the epoch (and records it on
//! its task) when it starts and when it ends. An observation is only applied to a task that has
//! no operation in flight and whose last operation boundary is not newer than the stamp, and a
//! runtime state never goes backwards (created → running → exited), so a slow `list()` cannot
//! undo what a `start()` just did. A task missing from a list is only taken as gone after an
//! `inspect` confirms it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use shoal_runtime::{Driver, Event, Health, RunState, RuntimeError, TaskSpec, TaskStatus};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use super::cache::{Cache, CachedTask};
use super::types::{Assignment, AssignmentSet, DesiredState, TaskReport, TaskState, TaskView};
use super::{Command, WorkerConfig};

/// How long a failed stop/remove waits before it is tried again.
const RETRY_AFTER: Duration = Duration::from_secs(2);
/// How long a dropped task's id keeps stale observations from resurrecting it.
const TOMBSTONE_TTL: Duration = Duration::from_secs(120);

/// What the runtime was last seen to hold for a task.
#[derive(Debug, Clone)]
enum Seen {
    /// Not observed yet (e.g. loaded from the cache after a restart).
    Unknown,
    /// Confirmed absent (inspect said not found, or we removed it, or starting left nothing).
    Absent,
    /// Present with this status.
    Present(Box<TaskStatus>),
}

type ReportKey = (TaskState, Option<i64>, Option<String>, Option<String>);

struct Entry {
    task_id: String,
    driver: String,
    assignment: Option<Assignment>,
    /// The assignment (or its absence) comes from a manager since this worker started.
    confirmed: bool,
    state: TaskState,
    exit_code: Option<i64>,
    error: Option<String>,
    health: Option<String>,
    seen: Seen,
    busy: bool,
    op_epoch: u64,
    ended_at_ms: Option<u64>,
    /// Removed from the runtime by the retention clean-up (still assigned).
    removed: bool,
    last_reported: Option<ReportKey>,
    retry_at: Option<Instant>,
    /// Said once that the task cannot be stopped because its driver is missing.
    driver_missing_warned: bool,
}

impl Entry {
    fn new(task_id: String, driver: String) -> Self {
        Self {
            task_id,
            driver,
            assignment: None,
            confirmed: false,
            state: TaskState::Assigned,
            exit_code: None,
            error: None,
            health: None,
            seen: Seen::Unknown,
            busy: false,
            op_epoch: 0,
            ended_at_ms: None,
            removed: false,
            last_reported: None,
            retry_at: None,
            driver_missing_warned: false,
        }
    }

    fn key(&self) -> ReportKey {
        (
            self.state,
            self.exit_code,
            self.error.clone(),
            self.health.clone(),
        )
    }

    fn set_state(&mut self, state: TaskState, exit_code: Option<i64>, error: Option<String>) {
        self.state = state;
        self.exit_code = exit_code;
        self.error = error;
    }

    fn set_ended(
        &mut self,
        state: TaskState,
        exit_code: Option<i64>,
        error: Option<String>,
        now: u64,
    ) {
        self.set_state(state, exit_code, error);
        if self.ended_at_ms.is_none() {
            self.ended_at_ms = Some(now);
        }
    }
}

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
        result: Box<Result<TaskStatus, RuntimeError>>,
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

enum Outcome {
    Started(Box<TaskStatus>),
    StartFailed {
        rejected: bool,
        error: String,
    },
    Stopped(Seen),
    /// Stopped (if it ran) and removed; `found`: the runtime had the task.
    StopRemoved {
        found: bool,
    },
    Removed,
    Failed(String),
}

enum Action {
    Start(Arc<dyn Driver>, Box<TaskSpec>),
    Stop(Arc<dyn Driver>),
    StopRemove(Arc<dyn Driver>),
    Remove(Arc<dyn Driver>),
    Drop,
}

struct Actor {
    config: WorkerConfig,
    cache: Cache,
    entries: BTreeMap<String, Entry>,
    tombstones: HashMap<String, (u64, Instant)>,
    full_seen: bool,
    epoch: Arc<AtomicU64>,
    internal_tx: mpsc::UnboundedSender<Internal>,
    report_tx: mpsc::Sender<Vec<TaskReport>>,
    pending: Vec<TaskReport>,
    dirty: bool,
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
    let epoch = Arc::new(AtomicU64::new(1));
    let mut actor = Actor {
        config,
        cache,
        entries: BTreeMap::new(),
        tombstones: HashMap::new(),
        full_seen: false,
        epoch,
        internal_tx,
        report_tx,
        pending: Vec::new(),
        dirty: false,
        receiver_gone: false,
    };
    actor.load_cache();
    let forwarders = actor.subscribe();
    tokio::spawn(actor.run(cmd_rx, internal_rx, forwarders))
}

fn rank(state: RunState) -> u8 {
    match state {
        RunState::Created => 0,
        RunState::Running => 1,
        RunState::Exited | RunState::Dead => 2,
    }
}

fn health_word(health: Health) -> Option<String> {
    match health {
        Health::None => None,
        Health::Starting => Some("starting".into()),
        Health::Healthy => Some("healthy".into()),
        Health::Unhealthy => Some("unhealthy".into()),
    }
}

/// `complete` for a clean exit 0, `failed` (with code and reason) otherwise.
fn exit_outcome(s: &TaskStatus) -> (TaskState, Option<i64>, Option<String>) {
    let runtime_error = s.error.clone().filter(|e| !e.trim().is_empty());
    if s.state == RunState::Exited && s.exit_code == Some(0) && !s.oom_killed {
        return (TaskState::Complete, Some(0), None);
    }
    let error = if s.oom_killed {
        "killed by the OOM killer".to_owned()
    } else if let Some(e) = runtime_error {
        e
    } else {
        match s.exit_code {
            Some(code) => format!("task exited with code {code}"),
            None => "task ended; its exit status is unknown".to_owned(),
        }
    };
    (TaskState::Failed, s.exit_code, Some(error))
}

/// The worker state implied by a runtime status of a task nobody told us about.
fn state_of_status(s: &TaskStatus) -> (TaskState, Option<i64>, Option<String>) {
    match s.state {
        RunState::Created => (TaskState::Starting, None, None),
        RunState::Running => (TaskState::Running, None, None),
        RunState::Exited | RunState::Dead => exit_outcome(s),
    }
}

/// Errors meaning "this node cannot run this task" rather than "it broke while starting".
fn is_rejection(e: &RuntimeError) -> bool {
    matches!(
        e,
        RuntimeError::InvalidSpec(_)
            | RuntimeError::ProgramNotFound { .. }
            | RuntimeError::ImageNotFound { .. }
            | RuntimeError::PullFailed { .. }
            | RuntimeError::DockerUnavailable { .. }
    )
}

/// Keeps the last report of each task, in the order of those last reports.
fn coalesce(reports: Vec<TaskReport>) -> Vec<TaskReport> {
    let mut last: HashMap<String, usize> = HashMap::new();
    for (i, r) in reports.iter().enumerate() {
        last.insert(r.task_id.clone(), i);
    }
    reports
        .into_iter()
        .enumerate()
        .filter(|(i, r)| last.get(&r.task_id) == Some(i))
        .map(|(_, r)| r)
        .collect()
}

impl Actor {
    fn now(&self) -> u64 {
        (self.config.now_ms)()
    }

    fn stamp(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    fn bump(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::SeqCst) + 1
    }

    fn load_cache(&mut self) {
        for cached in self.cache.load() {
            let a = cached.assignment;
            if a.task_id.is_empty() {
                continue;
            }
            let mut e = Entry::new(a.task_id.clone(), a.driver.clone());
            e.state = cached.state;
            e.exit_code = cached.exit_code;
            e.error = cached.error;
            e.ended_at_ms = cached.ended_at_ms;
            // `seen` stays unknown whatever the cache says (even `removed`): only the runtime
            // says what it has.
            e.removed = cached.removed;
            e.assignment = Some(a);
            tracing::debug!(task_id = %e.task_id, state = %e.state, "worker cache entry");
            self.entries.insert(e.task_id.clone(), e);
        }
    }

    fn persist(&mut self) {
        let tasks = self
            .entries
            .values()
            .filter_map(|e| {
                Some(CachedTask {
                    assignment: e.assignment.clone()?,
                    state: e.state,
                    exit_code: e.exit_code,
                    error: e.error.clone(),
                    ended_at_ms: e.ended_at_ms,
                    removed: e.removed,
                })
            })
            .collect();
        match self.cache.store(tasks) {
            Ok(()) => self.dirty = false,
            Err(e) => tracing::warn!(error = %e, "cannot write the worker cache"),
        }
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
                    self.flush();
                    if self.dirty {
                        self.persist();
                    }
                }
                _ = resync_tick.tick() => {
                    self.spawn_resync(None);
                    self.tombstones.retain(|_, (_, at)| at.elapsed() < TOMBSTONE_TTL);
                    self.settle_all();
                    self.cleanup();
                }
            }
            if self.pending.len() >= self.config.max_batch {
                self.flush();
            }
        }
        for f in &forwarders {
            f.abort();
        }
        self.flush();
        self.persist();
        if let Some(reply) = shutdown_reply {
            let _ = reply.send(());
        }
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Apply(set, reply) => {
                self.apply(set);
                let _ = reply.send(());
            }
            Command::Snapshot(reply) => {
                let _ = reply.send(self.snapshot());
            }
            Command::CurrentReports(reply) => {
                let now = self.now();
                let reports = self
                    .entries
                    .values()
                    .filter(|e| e.assignment.is_some() && !e.state.is_unstarted())
                    .map(|e| TaskReport {
                        task_id: e.task_id.clone(),
                        state: e.state,
                        exit_code: e.exit_code,
                        error: e.error.clone(),
                        health: e.health.clone(),
                        at_ms: now,
                    })
                    .collect();
                let _ = reply.send(reports);
            }
            Command::Flush(reply) => {
                self.flush();
                let _ = reply.send(());
            }
            Command::Resync(reply) => self.spawn_resync(Some(reply)),
            Command::Shutdown(reply) => {
                let _ = reply.send(());
            }
        }
    }

    fn snapshot(&self) -> Vec<TaskView> {
        self.entries
            .values()
            .map(|e| {
                let (service_id, service_name, slot) = match (&e.assignment, &e.seen) {
                    (Some(a), _) => (a.service_id.clone(), a.service_name.clone(), a.slot),
                    (None, Seen::Present(s)) => {
                        (s.service_id.clone(), s.service_name.clone(), s.slot)
                    }
                    (None, _) => (String::new(), String::new(), 0),
                };
                TaskView {
                    task_id: e.task_id.clone(),
                    service_id,
                    service_name,
                    slot,
                    driver: e.driver.clone(),
                    desired: e.assignment.as_ref().map(|a| a.desired),
                    confirmed: e.confirmed,
                    state: e.state,
                    exit_code: e.exit_code,
                    error: e.error.clone(),
                    health: e.health.clone(),
                    runtime_id: match &e.seen {
                        Seen::Present(s) => Some(s.runtime_id.clone()),
                        _ => None,
                    },
                    busy: e.busy,
                }
            })
            .collect()
    }

    // -----------------------------------------------------------------------------------------
    // Assignments
    // -----------------------------------------------------------------------------------------

    fn apply(&mut self, set: AssignmentSet) {
        tracing::debug!(
            full = set.full,
            tasks = ?set.tasks.iter().map(|a| (a.task_id.as_str(), a.desired)).collect::<Vec<_>>(),
            removed = ?set.removed,
            "worker assignment set"
        );
        let full = set.full;
        if set.full {
            self.full_seen = true;
            let ids: HashSet<String> = set.tasks.iter().map(|a| a.task_id.clone()).collect();
            for e in self.entries.values_mut() {
                if !ids.contains(&e.task_id) {
                    e.assignment = None;
                    e.confirmed = true;
                }
            }
            for a in set.tasks {
                self.upsert(a);
            }
        } else {
            for a in set.tasks {
                self.upsert(a);
            }
            for id in set.removed {
                if let Some(e) = self.entries.get_mut(&id) {
                    e.assignment = None;
                    e.confirmed = true;
                }
            }
        }
        self.persist();
        self.settle_all();
        if full {
            // The set is the whole truth: diff it against what every driver actually has (all
            // states), not against the cache. A task of this node the cache does not know (its
            // start was in flight when the daemon was killed, after the last report and cache
            // write) or that appeared after the listing at start is found here and stopped,
            // instead of running until the next periodic resync.
            self.spawn_resync(None);
        }
    }

    fn upsert(&mut self, a: Assignment) {
        if a.task_id.is_empty() {
            tracing::warn!("ignoring an assignment without a task id");
            return;
        }
        let e = self
            .entries
            .entry(a.task_id.clone())
            .or_insert_with(|| Entry::new(a.task_id.clone(), a.driver.clone()));
        e.driver = a.driver.clone();
        e.assignment = Some(a);
        e.confirmed = true;
        self.tombstones.remove(&e.task_id);
    }

    // -----------------------------------------------------------------------------------------
    // Observations
    // -----------------------------------------------------------------------------------------

    fn spawn_resync(&self, reply: Option<oneshot::Sender<()>>) {
        let stamp = self.stamp();
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

    fn spawn_inspect(&self, driver_name: &str, task_id: &str) {
        let Some(driver) = self.config.drivers.get(driver_name).cloned() else {
            return;
        };
        let stamp = self.stamp();
        let tx = self.internal_tx.clone();
        let (driver_name, task_id) = (driver_name.to_owned(), task_id.to_owned());
        tokio::spawn(async move {
            let result = driver.inspect(&task_id).await;
            let _ = tx.send(Internal::Inspected {
                driver: driver_name,
                task_id,
                stamp,
                result: Box::new(result),
            });
        });
    }

    fn internal(&mut self, msg: Internal) {
        match msg {
            Internal::Event {
                driver,
                stamp,
                event,
            } => match event {
                Event::Resynced(tasks) => self.listed(&driver, stamp, tasks),
                Event::Disconnected { reason } => {
                    tracing::info!(driver, reason, "driver event stream disconnected");
                }
                other => {
                    if let Some(id) = other.task_id() {
                        self.spawn_inspect(&driver, id);
                    }
                }
            },
            Internal::Listed {
                driver,
                stamp,
                tasks,
            } => self.listed(&driver, stamp, tasks),
            Internal::Inspected {
                driver,
                task_id,
                stamp,
                result,
            } => match *result {
                Ok(status) => self.observe(&driver, stamp, status),
                Err(e) if e.is_not_found() => {
                    if let Some(entry) = self.entries.get_mut(&task_id)
                        && !entry.busy
                        && entry.op_epoch <= stamp
                        && entry.driver == driver
                    {
                        entry.seen = Seen::Absent;
                        self.settle(&task_id);
                    }
                }
                Err(e) => tracing::debug!(driver, task_id, error = %e, "inspect failed"),
            },
            Internal::ResyncDone(reply) => {
                self.settle_all();
                self.cleanup();
                let _ = reply.send(());
            }
            Internal::Progress { task_id, state } => {
                if let Some(e) = self.entries.get_mut(&task_id)
                    && e.state < state
                    && !e.state.is_terminal()
                {
                    e.set_state(state, None, None);
                    self.dirty = true;
                    self.report(&task_id, false);
                }
            }
            Internal::OpDone { task_id, outcome } => self.op_done(&task_id, outcome),
        }
    }

    fn listed(&mut self, driver: &str, stamp: u64, tasks: Vec<TaskStatus>) {
        let present: HashSet<String> = tasks.iter().map(|t| t.task_id.clone()).collect();
        for status in tasks {
            self.observe(driver, stamp, status);
        }
        let missing: Vec<String> = self
            .entries
            .values()
            .filter(|e| {
                e.driver == driver
                    && !present.contains(&e.task_id)
                    && !e.busy
                    && !matches!(e.seen, Seen::Absent)
            })
            .map(|e| e.task_id.clone())
            .collect();
        for id in missing {
            self.spawn_inspect(driver, &id);
        }
    }

    fn observe(&mut self, driver: &str, stamp: u64, status: TaskStatus) {
        let id = status.task_id.clone();
        if id.is_empty() {
            return;
        }
        match self.entries.get_mut(&id) {
            Some(e) => {
                if e.busy || e.op_epoch > stamp || e.driver != driver {
                    return;
                }
                if let Seen::Present(prev) = &e.seen
                    && rank(prev.state) > rank(status.state)
                {
                    return;
                }
                e.seen = Seen::Present(Box::new(status));
            }
            None => {
                if self
                    .tombstones
                    .get(&id)
                    .is_some_and(|(epoch, _)| *epoch > stamp)
                {
                    return;
                }
                tracing::debug!(task_id = %id, driver, state = ?status.state, confirmed = self.full_seen, "worker found an unknown task");
                let mut e = Entry::new(id.clone(), driver.to_owned());
                let (state, code, error) = state_of_status(&status);
                e.set_state(state, code, error);
                e.health = health_word(status.health);
                e.confirmed = self.full_seen;
                e.seen = Seen::Present(Box::new(status));
                self.entries.insert(id.clone(), e);
            }
        }
        self.settle(&id);
    }

    // -----------------------------------------------------------------------------------------
    // Reconciliation
    // -----------------------------------------------------------------------------------------

    fn settle_all(&mut self) {
        let ids: Vec<String> = self.entries.keys().cloned().collect();
        for id in ids {
            self.settle(&id);
        }
    }

    /// Brings one task's state in line with what the runtime shows, and starts the operation
    /// its assignment calls for, if any.
    fn settle(&mut self, id: &str) {
        let now = self.now();
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        if e.busy {
            return;
        }
        if let Seen::Present(s) = &e.seen {
            let health = health_word(s.health);
            if health != e.health && s.state == RunState::Running {
                e.health = health;
            }
        }
        let retry_wait = e.retry_at.is_some_and(|t| Instant::now() < t);
        let driver = self.config.drivers.get(&e.driver).cloned();
        let before = e.key();
        let mut force_report = false;
        // An ended (reported) task whose runtime copy still runs, e.g. one reported failed
        // because it vanished and then reappeared: stop it, its slot has been replaced.
        let stray_running = e.state.is_terminal()
            && e.confirmed
            && e.assignment.is_some()
            && matches!(&e.seen, Seen::Present(s) if rank(s.state) < 2);
        let action = match e.assignment.as_ref().map(|a| a.desired) {
            _ if stray_running => match driver {
                Some(d) if !retry_wait => Some(Action::Stop(d)),
                _ => None,
            },
            Some(DesiredState::Running) => {
                if e.state.is_terminal() {
                    None
                } else {
                    let want_start = match &e.seen {
                        Seen::Present(s) => match s.state {
                            RunState::Running => {
                                e.set_state(TaskState::Running, None, None);
                                false
                            }
                            RunState::Created => true,
                            RunState::Exited | RunState::Dead => {
                                let (state, code, error) = exit_outcome(s);
                                e.set_ended(state, code, error, now);
                                false
                            }
                        },
                        Seen::Absent => {
                            if e.state == TaskState::Running {
                                e.set_ended(
                                    TaskState::Failed,
                                    None,
                                    Some("the task disappeared from the runtime".into()),
                                    now,
                                );
                                false
                            } else {
                                true
                            }
                        }
                        Seen::Unknown => e.state != TaskState::Running,
                    };
                    if want_start && e.confirmed {
                        let spec = e
                            .assignment
                            .as_ref()
                            .map(|a| (a.task_id.clone(), a.spec.clone()));
                        match (spec, driver) {
                            (Some((task_id, spec)), _) if spec.task_id != task_id => {
                                e.set_ended(
                                    TaskState::Rejected,
                                    None,
                                    Some(format!(
                                        "the spec's task id {:?} differs from the assignment's {:?}",
                                        spec.task_id, task_id
                                    )),
                                    now,
                                );
                                e.seen = Seen::Absent;
                                None
                            }
                            (Some((_, spec)), Some(d)) => Some(Action::Start(d, Box::new(spec))),
                            (Some(_), None) => {
                                e.set_ended(
                                    TaskState::Rejected,
                                    None,
                                    Some(format!(
                                        "driver {:?} is not available on this node",
                                        e.driver
                                    )),
                                    now,
                                );
                                e.seen = Seen::Absent;
                                None
                            }
                            (None, _) => None,
                        }
                    } else {
                        None
                    }
                }
            }
            Some(DesiredState::Shutdown) => {
                if e.state.is_terminal() || !e.confirmed {
                    None
                } else {
                    let needs_stop = match &e.seen {
                        Seen::Present(s) => {
                            matches!(s.state, RunState::Running | RunState::Created)
                        }
                        // Whatever the cache says: a start in flight when the daemon was
                        // killed leaves the task `assigned` in the cache while the runtime has
                        // it. The driver is asked (a task it never had is stopped at once).
                        Seen::Unknown => true,
                        Seen::Absent => false,
                    };
                    match (needs_stop, driver) {
                        (true, Some(d)) if !retry_wait => Some(Action::Stop(d)),
                        (true, Some(_)) => None,
                        // Its driver is not available here: it cannot be stopped, and is never
                        // reported stopped while it may still run.
                        (true, None) if !e.state.is_unstarted() => {
                            if !e.driver_missing_warned {
                                e.driver_missing_warned = true;
                                tracing::warn!(
                                    task_id = %e.task_id,
                                    driver = %e.driver,
                                    "cannot stop a task: its driver is not available on this node"
                                );
                            }
                            None
                        }
                        _ => {
                            e.set_ended(TaskState::Shutdown, None, None, now);
                            None
                        }
                    }
                }
            }
            None => {
                if !e.confirmed {
                    None
                } else {
                    match (&e.seen, driver) {
                        (Seen::Absent, _) => {
                            if !e.state.is_terminal() && !e.state.is_unstarted() {
                                e.set_ended(TaskState::Shutdown, None, None, now);
                                force_report = true;
                            }
                            Some(Action::Drop)
                        }
                        // Its driver is not available here: it cannot be stopped, and is never
                        // reported stopped (the manager keeps what it knew, e.g. `orphaned`).
                        (_, None) => {
                            let may_run = !e.state.is_terminal()
                                || matches!(&e.seen, Seen::Present(s) if rank(s.state) < 2);
                            if may_run {
                                tracing::warn!(
                                    task_id = %e.task_id,
                                    driver = %e.driver,
                                    "cannot stop a task no longer assigned to this node: its \
                                     driver is not available here"
                                );
                            }
                            Some(Action::Drop)
                        }
                        (_, Some(_)) if retry_wait => None,
                        (_, Some(d)) => Some(Action::StopRemove(d)),
                    }
                }
            }
        };
        if e.key() != before {
            self.dirty = true;
        }
        self.report(id, force_report);
        if let Some(action) = action {
            self.act(id, action);
        }
    }

    /// Removes ended tasks from the runtime once they have been kept long enough.
    fn cleanup(&mut self) {
        let now = self.now();
        let retention = u64::try_from(self.config.ended_retention.as_millis()).unwrap_or(u64::MAX);
        let due: Vec<(String, Arc<dyn Driver>)> = self
            .entries
            .values()
            .filter(|e| {
                e.confirmed
                    && e.assignment.is_some()
                    && e.state.is_terminal()
                    && !e.busy
                    && !e.removed
                    && e.retry_at.is_none_or(|t| Instant::now() >= t)
                    && matches!(&e.seen, Seen::Present(s) if rank(s.state) == 2)
                    && e.ended_at_ms
                        .is_some_and(|t| now.saturating_sub(t) >= retention)
            })
            .filter_map(|e| {
                let d = self.config.drivers.get(&e.driver)?.clone();
                Some((e.task_id.clone(), d))
            })
            .collect();
        for (id, d) in due {
            self.act(&id, Action::Remove(d));
        }
    }

    fn act(&mut self, id: &str, action: Action) {
        tracing::debug!(
            task_id = id,
            action = match &action {
                Action::Start(..) => "start",
                Action::Stop(_) => "stop",
                Action::StopRemove(_) => "stop+remove",
                Action::Remove(_) => "remove",
                Action::Drop => "drop",
            },
            "worker action"
        );
        if let Action::Drop = action {
            self.entries.remove(id);
            let epoch = self.bump();
            self.tombstones
                .insert(id.to_owned(), (epoch, Instant::now()));
            self.dirty = true;
            return;
        }
        let epoch = self.bump();
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        e.busy = true;
        e.op_epoch = epoch;
        e.retry_at = None;
        let tx = self.internal_tx.clone();
        let task_id = id.to_owned();
        tokio::spawn(async move {
            let outcome = match action {
                Action::Start(d, spec) => op_start(d.as_ref(), &spec, &tx).await,
                Action::Stop(d) => op_stop(d.as_ref(), &task_id).await,
                Action::StopRemove(d) => op_stop_remove(d.as_ref(), &task_id).await,
                Action::Remove(d) => match d.remove(&task_id).await {
                    Ok(()) => Outcome::Removed,
                    Err(e) if e.is_not_found() => Outcome::Removed,
                    Err(e) => Outcome::Failed(e.to_string()),
                },
                Action::Drop => return,
            };
            let _ = tx.send(Internal::OpDone { task_id, outcome });
        });
    }

    fn op_done(&mut self, id: &str, outcome: Outcome) {
        let now = self.now();
        let epoch = self.bump();
        tracing::debug!(
            task_id = id,
            outcome = match &outcome {
                Outcome::Started(s) => format!("started {:?}", s.state),
                Outcome::StartFailed { error, .. } => format!("start failed: {error}"),
                Outcome::Stopped(_) => "stopped".into(),
                Outcome::StopRemoved { found } => format!("stopped+removed (found: {found})"),
                Outcome::Removed => "removed".into(),
                Outcome::Failed(e) => format!("failed: {e}"),
            },
            "worker op done"
        );
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        e.busy = false;
        e.op_epoch = epoch;
        self.dirty = true;
        let mut force_report = false;
        match outcome {
            Outcome::Started(status) => {
                if e.state < TaskState::Starting && !e.state.is_terminal() {
                    e.set_state(TaskState::Starting, None, None);
                }
                e.seen = Seen::Present(status);
            }
            Outcome::StartFailed { rejected, error } => {
                let state = if rejected {
                    TaskState::Rejected
                } else {
                    TaskState::Failed
                };
                if !e.state.is_terminal() {
                    e.set_ended(state, None, Some(error), now);
                }
                e.seen = Seen::Absent;
            }
            Outcome::Stopped(seen) => {
                if matches!(&seen, Seen::Present(s) if rank(s.state) < 2) {
                    e.retry_at = Some(Instant::now() + RETRY_AFTER);
                }
                e.seen = seen;
                if !e.state.is_terminal() {
                    e.set_ended(TaskState::Shutdown, None, None, now);
                    // Reported even if it got unassigned while stopping.
                    force_report = true;
                }
            }
            Outcome::StopRemoved { found } => {
                e.seen = Seen::Absent;
                // A copy the runtime had was stopped, whatever the cache said of it (a start
                // in flight when the daemon was killed leaves it `assigned` in the cache): the
                // manager learns it is gone (an orphaned task becomes `shutdown`).
                if !e.state.is_terminal() && (found || !e.state.is_unstarted()) {
                    e.set_ended(TaskState::Shutdown, None, None, now);
                    force_report = true;
                }
            }
            Outcome::Removed => {
                e.seen = Seen::Absent;
                e.removed = true;
            }
            Outcome::Failed(error) => {
                tracing::warn!(task_id = id, error, "worker operation failed; will retry");
                e.retry_at = Some(Instant::now() + RETRY_AFTER);
            }
        }
        self.report(id, force_report);
        self.settle(id);
    }

    // -----------------------------------------------------------------------------------------
    // Reports
    // -----------------------------------------------------------------------------------------

    /// Queues a report for the task if its reportable state changed since the last report.
    /// Only assigned tasks are reported, unless `force` (an unassigned task we stopped).
    fn report(&mut self, id: &str, force: bool) {
        let now = self.now();
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        if e.state.is_unstarted() || (e.assignment.is_none() && !force) {
            return;
        }
        let key = e.key();
        if e.last_reported.as_ref() == Some(&key) {
            return;
        }
        e.last_reported = Some(key);
        self.pending.push(TaskReport {
            task_id: e.task_id.clone(),
            state: e.state,
            exit_code: e.exit_code,
            error: e.error.clone(),
            health: e.health.clone(),
            at_ms: now,
        });
    }

    fn flush(&mut self) {
        while !self.pending.is_empty() {
            if self.receiver_gone {
                self.pending.clear();
                return;
            }
            let n = self.pending.len().min(self.config.max_batch.max(1));
            let batch: Vec<TaskReport> = self.pending.drain(..n).collect();
            match self.report_tx.try_send(batch) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(batch)) => {
                    let mut all = batch;
                    all.append(&mut self.pending);
                    self.pending = coalesce(all);
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

async fn op_stop(driver: &dyn Driver, task_id: &str) -> Outcome {
    match driver.stop(task_id, None).await {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn r(task: &str, state: TaskState) -> TaskReport {
        TaskReport {
            task_id: task.into(),
            state,
            exit_code: None,
            error: None,
            health: None,
            at_ms: 0,
        }
    }

    #[test]
    fn coalesce_keeps_the_last_report_per_task() {
        let out = coalesce(vec![
            r("a", TaskState::Preparing),
            r("b", TaskState::Preparing),
            r("a", TaskState::Running),
            r("b", TaskState::Failed),
            r("c", TaskState::Running),
        ]);
        assert_eq!(
            out,
            vec![
                r("a", TaskState::Running),
                r("b", TaskState::Failed),
                r("c", TaskState::Running)
            ]
        );
    }

    #[test]
    fn exit_outcomes() {
        let mut s = TaskStatus {
            task_id: "t".into(),
            service_id: "s".into(),
            service_name: "n".into(),
            slot: 0,
            runtime_id: "1".into(),
            image: "/bin/true".into(),
            state: RunState::Exited,
            exit_code: Some(0),
            oom_killed: false,
            health: Health::None,
            error: None,
            started_at: None,
            finished_at: None,
            ports: Vec::new(),
            labels: BTreeMap::new(),
        };
        assert_eq!(exit_outcome(&s), (TaskState::Complete, Some(0), None));
        s.oom_killed = true;
        assert_eq!(exit_outcome(&s).0, TaskState::Failed);
        s.oom_killed = false;
        s.exit_code = Some(3);
        assert_eq!(
            exit_outcome(&s),
            (
                TaskState::Failed,
                Some(3),
                Some("task exited with code 3".into())
            )
        );
        s.exit_code = None;
        s.state = RunState::Dead;
        assert_eq!(exit_outcome(&s).0, TaskState::Failed);
    }
}
