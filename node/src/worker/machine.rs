//! The worker's decisions, without I/O: a state machine that owns the task entries, takes
//! inputs (assignment sets, what the drivers showed, how operations ended, and the time) and
//! returns [`Effect`]s for the shell (`actor.rs`) to carry out. It reads no clock, spawns
//! nothing and touches no driver, so every decision can be tested by feeding it inputs.
//!
//! Staleness: every observation (driver list, inspect, event) carries a *stamp*, the
//! [`Machine::stamp`] when it was started; every operation bumps the epoch (and records it on its
//! task) when it starts and when it ends. An observation is only applied to a task that has no
//! operation in flight and whose last operation boundary is not newer than the stamp, and a
//! runtime copy never goes backwards ([`Phase`]), so a slow `list()` cannot undo what a
//! `start()` just did. A task missing from a list is only taken as gone after an `inspect`
//! confirms it.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

use shoal_runtime::{Event, Health, RunState, RuntimeError, TaskSpec, TaskStatus};

use super::cache::CachedTask;
use super::types::{
    Assignment, AssignmentSet, DesiredState, TaskHealth, TaskReport, TaskState, TaskView,
};

/// How long a failed stop/remove waits before it is tried again, in milliseconds.
pub(super) const RETRY_AFTER_MS: u64 = 2_000;
/// The error of a task stopped because its health check failed (Swarm: "unhealthy container").
pub(super) const UNHEALTHY_ERROR: &str = "unhealthy container";
/// How long a dropped task's id keeps stale observations from resurrecting it, in milliseconds.
pub(super) const TOMBSTONE_TTL_MS: u64 = 120_000;

/// How far a runtime copy has got. It only moves forward, so an observation showing an earlier
/// phase than the one already seen is stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Phase {
    /// Created, not started.
    Created,
    /// Running.
    Running,
    /// Exited or dead.
    Ended,
}

impl Phase {
    pub(super) fn of(state: RunState) -> Self {
        match state {
            RunState::Created => Phase::Created,
            RunState::Running => Phase::Running,
            RunState::Exited | RunState::Dead => Phase::Ended,
        }
    }

    /// Created or running: it may run (again), so it still needs a stop.
    fn may_run(self) -> bool {
        self < Phase::Ended
    }
}

/// What the runtime was last seen to hold for a task.
#[derive(Debug, Clone)]
pub(super) enum Seen {
    /// Not observed yet (e.g. loaded from the cache after a restart).
    Unknown,
    /// Confirmed absent (inspect said not found, or we removed it, or starting left nothing).
    Absent,
    /// Present with this status.
    Present(Box<TaskStatus>),
}

impl Seen {
    fn phase(&self) -> Option<Phase> {
        match self {
            Seen::Present(s) => Some(Phase::of(s.state)),
            Seen::Unknown | Seen::Absent => None,
        }
    }

    /// Present and created or running.
    fn may_run(&self) -> bool {
        self.phase().is_some_and(Phase::may_run)
    }
}

/// An operation on one task, carried out by the shell with the task's driver.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Op {
    /// Prepare (image, program) and start; progress comes back through [`Machine::progress`].
    Start(Box<TaskSpec>),
    /// Stop, then inspect what is left.
    Stop,
    /// Stop a running task whose health check failed, with its spec's grace period, then
    /// inspect what is left; it is then reported `failed` (never restarted in place).
    StopUnhealthy { grace: Duration },
    /// Stop (if it runs) and remove.
    StopRemove,
    /// Remove an ended task.
    Remove,
}

impl Op {
    pub(super) fn name(&self) -> &'static str {
        match self {
            Op::Start(_) => "start",
            Op::Stop => "stop",
            Op::StopUnhealthy { .. } => "stop-unhealthy",
            Op::StopRemove => "stop+remove",
            Op::Remove => "remove",
        }
    }
}

/// How an [`Op`] ended, as the shell saw it.
#[derive(Debug)]
pub(super) enum Outcome {
    /// Started; the driver's status.
    Started(Box<TaskStatus>),
    /// Could not start; `rejected`: this node cannot run it (see [`is_rejection`]).
    StartFailed { rejected: bool, error: String },
    /// Stopped; what an inspect showed after.
    Stopped(Seen),
    /// Stopped (if it ran) and removed; `found`: the runtime had the task.
    StopRemoved { found: bool },
    /// Removed.
    Removed,
    /// A stop or remove failed; it is retried after [`RETRY_AFTER_MS`].
    Failed(String),
}

/// What an inspect found.
#[derive(Debug)]
pub(super) enum Inspection {
    Found(Box<TaskStatus>),
    NotFound,
    Failed(String),
}

/// What the machine asks the shell to do, in order.
#[derive(Debug)]
pub(super) enum Effect {
    /// Carry out `op` on the task with driver `driver`, then feed [`Machine::op_done`].
    Op {
        task_id: String,
        driver: String,
        op: Op,
    },
    /// List every driver and feed each result to [`Machine::listed`] with `stamp`.
    Resync { stamp: u64 },
    /// Inspect one task and feed [`Machine::inspected`] with `stamp`.
    Inspect {
        driver: String,
        task_id: String,
        stamp: u64,
    },
    /// Write these rows to the cache; call [`Machine::persist_failed`] if that fails.
    Persist(Vec<CachedTask>),
}

/// What one task's entry should do next.
#[derive(Debug)]
enum Next {
    /// Nothing (now).
    Wait,
    /// Start an operation.
    Run(Op),
    /// Forget the task (it is not ours and not in the runtime, or cannot be stopped here).
    Drop,
}

/// What a task's settling may use.
#[derive(Clone, Copy)]
struct Means {
    /// Its driver is available on this node.
    driver: bool,
    /// A failed stop/remove is waiting for its retry time.
    retry_wait: bool,
    now: u64,
}

type ReportKey = (TaskState, Option<i64>, Option<String>, TaskHealth);

struct Entry {
    task_id: String,
    driver: String,
    assignment: Option<Assignment>,
    /// The assignment (or its absence) comes from a manager since this worker started.
    confirmed: bool,
    state: TaskState,
    exit_code: Option<i64>,
    error: Option<String>,
    health: TaskHealth,
    seen: Seen,
    busy: bool,
    op_epoch: u64,
    ended_at_ms: Option<u64>,
    /// Removed from the runtime by the retention clean-up (still assigned).
    removed: bool,
    last_reported: Option<ReportKey>,
    retry_at_ms: Option<u64>,
    /// Said once that the task cannot be stopped because its driver is missing.
    driver_missing_warned: bool,
    /// The operation in flight is an [`Op::StopUnhealthy`].
    stopping_unhealthy: bool,
}

/// The runtime's health as the worker reports it.
pub(super) fn task_health(health: Health) -> TaskHealth {
    match health {
        Health::None => TaskHealth::None,
        Health::Starting => TaskHealth::Starting,
        Health::Healthy => TaskHealth::Healthy,
        Health::Unhealthy => TaskHealth::Unhealthy,
    }
}

/// True before the worker has started anything for the task (`new`, `pending`, `assigned`).
fn is_unstarted(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::New | TaskState::Pending | TaskState::Assigned
    )
}

/// `complete` for a clean exit 0, `failed` (with code and reason) otherwise.
pub(super) fn exit_outcome(s: &TaskStatus) -> (TaskState, Option<i64>, Option<String>) {
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
pub(super) fn is_rejection(e: &RuntimeError) -> bool {
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
pub(super) fn coalesce(reports: Vec<TaskReport>) -> Vec<TaskReport> {
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
            health: TaskHealth::None,
            seen: Seen::Unknown,
            busy: false,
            op_epoch: 0,
            ended_at_ms: None,
            removed: false,
            last_reported: None,
            retry_at_ms: None,
            driver_missing_warned: false,
            stopping_unhealthy: false,
        }
    }

    fn from_cache(cached: CachedTask) -> Self {
        let a = cached.assignment;
        let mut e = Entry::new(a.task_id.clone(), a.driver.clone());
        e.state = cached.state;
        e.exit_code = cached.exit_code;
        e.error = cached.error;
        e.ended_at_ms = cached.ended_at_ms;
        // `seen` stays unknown whatever the cache says (even `removed`): only the runtime says
        // what it has.
        e.removed = cached.removed;
        e.assignment = Some(a);
        e
    }

    fn key(&self) -> ReportKey {
        (self.state, self.exit_code, self.error.clone(), self.health)
    }

    fn report(&self, at_ms: u64) -> TaskReport {
        TaskReport {
            task_id: self.task_id.clone(),
            state: self.state,
            exit_code: self.exit_code,
            error: self.error.clone(),
            health: self.health,
            at_ms,
        }
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

    fn retry_due(&self, now: u64) -> bool {
        self.retry_at_ms.is_none_or(|t| now >= t)
    }

    /// A running copy's health is the runtime's.
    fn follow_health(&mut self) {
        if let Seen::Present(s) = &self.seen
            && s.state == RunState::Running
        {
            self.health = task_health(s.health);
        }
    }

    /// An ended (reported) task whose runtime copy still runs, e.g. one reported failed because
    /// it vanished and then reappeared: it is stopped, its slot has been replaced.
    fn is_stray_running(&self) -> bool {
        self.state.is_terminal()
            && self.confirmed
            && self.assignment.is_some()
            && self.seen.may_run()
    }

    fn settle_stray(&self, means: Means) -> Next {
        if means.driver && !means.retry_wait {
            Next::Run(Op::Stop)
        } else {
            Next::Wait
        }
    }

    /// Desired `running`: follow what the runtime shows; start it when nothing runs; stop it
    /// when its health check says unhealthy (it is then reported `failed`, and the manager's
    /// restart policy replaces it).
    fn settle_running(&mut self, means: Means) -> Next {
        if self.state.is_terminal() {
            return Next::Wait;
        }
        let needs_start = self.follow_runtime(means.now);
        if !self.confirmed {
            // Before a manager spoke (after a restart) nothing is started or stopped.
            return Next::Wait;
        }
        if needs_start {
            return self.start(means);
        }
        if self.is_unhealthy() {
            return self.stop_unhealthy(means);
        }
        Next::Wait
    }

    /// Running, and the runtime's health check says unhealthy.
    fn is_unhealthy(&self) -> bool {
        self.state == TaskState::Running
            && matches!(&self.seen, Seen::Present(s)
                if s.state == RunState::Running && s.health == Health::Unhealthy)
    }

    /// Stops an unhealthy task with its spec's grace period.
    fn stop_unhealthy(&mut self, means: Means) -> Next {
        let Some(a) = self.assignment.as_ref() else {
            return Next::Wait;
        };
        if !means.driver || means.retry_wait {
            return Next::Wait;
        }
        tracing::info!(
            task_id = %self.task_id,
            "the task's health check failed: stopping it ({UNHEALTHY_ERROR})"
        );
        self.stopping_unhealthy = true;
        Next::Run(Op::StopUnhealthy {
            grace: a.spec.stop_grace,
        })
    }

    /// Takes a non-ended task's state from the runtime; true if it needs starting.
    fn follow_runtime(&mut self, now: u64) -> bool {
        match &self.seen {
            Seen::Present(s) => match s.state {
                RunState::Running => {
                    self.set_state(TaskState::Running, None, None);
                    false
                }
                RunState::Created => true,
                RunState::Exited | RunState::Dead => {
                    let (state, code, error) = exit_outcome(s);
                    self.set_ended(state, code, error, now);
                    false
                }
            },
            // It ran and is gone: it failed (never restarted in place).
            Seen::Absent if self.state == TaskState::Running => {
                self.set_ended(
                    TaskState::Failed,
                    None,
                    Some("the task disappeared from the runtime".into()),
                    now,
                );
                false
            }
            Seen::Absent => true,
            // After a restart, a task cached as running is adopted, not started again.
            Seen::Unknown => self.state != TaskState::Running,
        }
    }

    /// Starts the assigned spec, or rejects what this node cannot start.
    fn start(&mut self, means: Means) -> Next {
        let Some(a) = self.assignment.as_ref() else {
            return Next::Wait;
        };
        let rejection = if a.spec.task_id != a.task_id {
            Some(format!(
                "the spec's task id {:?} differs from the assignment's {:?}",
                a.spec.task_id, a.task_id
            ))
        } else if !means.driver {
            Some(format!(
                "driver {:?} is not available on this node",
                self.driver
            ))
        } else {
            None
        };
        match rejection {
            Some(error) => {
                self.set_ended(TaskState::Rejected, None, Some(error), means.now);
                self.seen = Seen::Absent;
                Next::Wait
            }
            None => Next::Run(Op::Start(Box::new(a.spec.clone()))),
        }
    }

    /// Desired `shutdown`: stop it if it may run; it is kept (logs) while assigned.
    fn settle_shutdown(&mut self, means: Means) -> Next {
        if self.state.is_terminal() || !self.confirmed {
            return Next::Wait;
        }
        let needs_stop = match &self.seen {
            Seen::Present(_) => self.seen.may_run(),
            // Whatever the cache says: a start in flight when the daemon was killed leaves the
            // task `assigned` in the cache while the runtime has it. The driver is asked (a task
            // it never had is stopped at once).
            Seen::Unknown => true,
            Seen::Absent => false,
        };
        if !needs_stop {
            self.set_ended(TaskState::Shutdown, None, None, means.now);
            return Next::Wait;
        }
        if means.driver {
            return if means.retry_wait {
                Next::Wait
            } else {
                Next::Run(Op::Stop)
            };
        }
        if is_unstarted(self.state) {
            // Never started by this worker and its driver is not here: nothing to stop.
            self.set_ended(TaskState::Shutdown, None, None, means.now);
            return Next::Wait;
        }
        // Its driver is not available here: it cannot be stopped, and is never reported
        // stopped while it may still run.
        if !self.driver_missing_warned {
            self.driver_missing_warned = true;
            tracing::warn!(
                task_id = %self.task_id,
                driver = %self.driver,
                "cannot stop a task: its driver is not available on this node"
            );
        }
        Next::Wait
    }

    /// No longer assigned (as a manager said): stop and remove it, then forget it. Returns
    /// whether a `shutdown` must be reported although the task is no longer assigned.
    fn settle_unassigned(&mut self, means: Means) -> (Next, bool) {
        if !self.confirmed {
            // Only from the cache or the runtime, before any full set: nothing is stopped.
            return (Next::Wait, false);
        }
        if matches!(self.seen, Seen::Absent) {
            let ran = !self.state.is_terminal() && !is_unstarted(self.state);
            if ran {
                self.set_ended(TaskState::Shutdown, None, None, means.now);
            }
            return (Next::Drop, ran);
        }
        if !means.driver {
            // Its driver is not available here: it cannot be stopped, and is never reported
            // stopped (the manager keeps what it knew, e.g. `orphaned`).
            if !self.state.is_terminal() || self.seen.may_run() {
                tracing::warn!(
                    task_id = %self.task_id,
                    driver = %self.driver,
                    "cannot stop a task no longer assigned to this node: its driver is not \
                     available here"
                );
            }
            return (Next::Drop, false);
        }
        if means.retry_wait {
            return (Next::Wait, false);
        }
        (Next::Run(Op::StopRemove), false)
    }

    /// Takes an operation's outcome; returns whether a report is due even if unassigned.
    fn op_done(&mut self, outcome: Outcome, now: u64) -> bool {
        let unhealthy = std::mem::take(&mut self.stopping_unhealthy);
        match outcome {
            Outcome::Started(status) => {
                if self.state < TaskState::Starting && !self.state.is_terminal() {
                    self.set_state(TaskState::Starting, None, None);
                }
                self.seen = Seen::Present(status);
                false
            }
            Outcome::StartFailed { rejected, error } => {
                let state = if rejected {
                    TaskState::Rejected
                } else {
                    TaskState::Failed
                };
                if !self.state.is_terminal() {
                    self.set_ended(state, None, Some(error), now);
                }
                self.seen = Seen::Absent;
                false
            }
            Outcome::Stopped(seen) => {
                if seen.may_run() {
                    self.retry_at_ms = Some(now.saturating_add(RETRY_AFTER_MS));
                }
                self.seen = seen;
                if self.state.is_terminal() {
                    return false;
                }
                if unhealthy {
                    if self.seen.may_run() {
                        // Still running: stopped again after the retry delay, and reported
                        // `failed` once it has ended.
                        return false;
                    }
                    let exit_code = match &self.seen {
                        Seen::Present(s) => s.exit_code,
                        Seen::Unknown | Seen::Absent => None,
                    };
                    self.set_ended(
                        TaskState::Failed,
                        exit_code,
                        Some(UNHEALTHY_ERROR.to_owned()),
                        now,
                    );
                    // Reported even if it got unassigned while stopping.
                    return true;
                }
                self.set_ended(TaskState::Shutdown, None, None, now);
                // Reported even if it got unassigned while stopping.
                true
            }
            Outcome::StopRemoved { found } => {
                self.seen = Seen::Absent;
                // A copy the runtime had was stopped, whatever the cache said of it (a start in
                // flight when the daemon was killed leaves it `assigned` in the cache): the
                // manager learns it is gone (an orphaned task becomes `shutdown`).
                // One that never ran here and that the runtime did not have is not reported.
                let ran = found || !is_unstarted(self.state);
                if self.state.is_terminal() || !ran {
                    return false;
                }
                self.set_ended(TaskState::Shutdown, None, None, now);
                true
            }
            Outcome::Removed => {
                self.seen = Seen::Absent;
                self.removed = true;
                false
            }
            Outcome::Failed(error) => {
                tracing::warn!(
                    task_id = %self.task_id,
                    error,
                    "worker operation failed; will retry"
                );
                self.retry_at_ms = Some(now.saturating_add(RETRY_AFTER_MS));
                false
            }
        }
    }

    /// Due for removal from the runtime: an assigned, ended copy kept past `retention_ms`.
    fn cleanup_due(&self, now: u64, retention_ms: u64) -> bool {
        self.confirmed
            && self.assignment.is_some()
            && self.state.is_terminal()
            && !self.busy
            && !self.removed
            && self.retry_due(now)
            && self.seen.phase() == Some(Phase::Ended)
            && self
                .ended_at_ms
                .is_some_and(|t| now.saturating_sub(t) >= retention_ms)
    }

    fn view(&self) -> TaskView {
        let (service_id, service_name, slot) = match (&self.assignment, &self.seen) {
            (Some(a), _) => (a.service_id.clone(), a.service_name.clone(), a.slot),
            (None, Seen::Present(s)) => (s.service_id.clone(), s.service_name.clone(), s.slot),
            (None, _) => (String::new(), String::new(), 0),
        };
        TaskView {
            task_id: self.task_id.clone(),
            service_id,
            service_name,
            slot,
            driver: self.driver.clone(),
            desired: self.assignment.as_ref().map(|a| a.desired),
            confirmed: self.confirmed,
            state: self.state,
            exit_code: self.exit_code,
            error: self.error.clone(),
            health: self.health,
            runtime_id: match &self.seen {
                Seen::Present(s) => Some(s.runtime_id.clone()),
                _ => None,
            },
            busy: self.busy,
        }
    }
}

/// A dropped task's id: observations stamped before `epoch` do not bring it back.
struct Tombstone {
    epoch: u64,
    at_ms: u64,
}

/// The worker's state and decisions (see the module documentation).
pub(super) struct Machine {
    /// Names of the drivers this node has.
    drivers: BTreeSet<String>,
    /// Ended, still assigned tasks are removed from the runtime this long after they ended.
    retention_ms: u64,
    entries: BTreeMap<String, Entry>,
    tombstones: HashMap<String, Tombstone>,
    /// A full assignment set arrived since this worker started.
    full_seen: bool,
    epoch: u64,
    pending: Vec<TaskReport>,
    /// The cache is behind the entries.
    dirty: bool,
    effects: Vec<Effect>,
}

impl Machine {
    /// A machine with the tasks of the cache (unconfirmed until a manager speaks).
    pub(super) fn new(
        drivers: BTreeSet<String>,
        retention_ms: u64,
        cached: Vec<CachedTask>,
    ) -> Self {
        let mut entries = BTreeMap::new();
        for c in cached {
            if c.assignment.task_id.is_empty() {
                continue;
            }
            let e = Entry::from_cache(c);
            tracing::debug!(task_id = %e.task_id, state = %e.state, "worker cache entry");
            entries.insert(e.task_id.clone(), e);
        }
        Self {
            drivers,
            retention_ms,
            entries,
            tombstones: HashMap::new(),
            full_seen: false,
            epoch: 1,
            pending: Vec::new(),
            dirty: false,
            effects: Vec::new(),
        }
    }

    /// The stamp for an observation started now.
    pub(super) fn stamp(&self) -> u64 {
        self.epoch
    }

    fn bump(&mut self) -> u64 {
        self.epoch += 1;
        self.epoch
    }

    /// The effects due, in order; the shell carries them out before the next input.
    pub(super) fn take_effects(&mut self) -> Vec<Effect> {
        std::mem::take(&mut self.effects)
    }

    // -----------------------------------------------------------------------------------------
    // Queries
    // -----------------------------------------------------------------------------------------

    /// Every task it knows.
    /// Whether the task is assigned with ports the routing mesh publishes (its stop waits
    /// for other nodes to take it out of rotation first).
    pub(super) fn publishes(&self, task_id: &str) -> bool {
        self.entries
            .get(task_id)
            .and_then(|e| e.assignment.as_ref())
            .is_some_and(|a| !a.spec.ports.is_empty())
    }

    pub(super) fn snapshot(&self) -> Vec<TaskView> {
        self.entries.values().map(Entry::view).collect()
    }

    /// The current state of every assigned, started task (what a new session is told first).
    pub(super) fn current_reports(&self, now: u64) -> Vec<TaskReport> {
        self.entries
            .values()
            .filter(|e| e.assignment.is_some() && !is_unstarted(e.state))
            .map(|e| e.report(now))
            .collect()
    }

    // -----------------------------------------------------------------------------------------
    // Reports and the cache
    // -----------------------------------------------------------------------------------------

    /// Reports waiting to be sent.
    pub(super) fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The next batch to send (at most `max` reports), if any.
    pub(super) fn next_batch(&mut self, max: usize) -> Option<Vec<TaskReport>> {
        if self.pending.is_empty() {
            return None;
        }
        let n = self.pending.len().min(max.max(1));
        Some(self.pending.drain(..n).collect())
    }

    /// A batch that could not be sent: it goes back in front, and everything pending is
    /// coalesced to the latest report per task.
    pub(super) fn unsent(&mut self, mut batch: Vec<TaskReport>) {
        batch.append(&mut self.pending);
        self.pending = coalesce(batch);
    }

    /// Nobody will read reports any more.
    pub(super) fn discard_reports(&mut self) {
        self.pending.clear();
    }

    /// The cache rows of every assigned task.
    pub(super) fn cache_rows(&self) -> Vec<CachedTask> {
        self.entries
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
            .collect()
    }

    /// The rows to write if the cache is behind (it is then taken as written).
    pub(super) fn persist_if_dirty(&mut self) -> Option<Vec<CachedTask>> {
        self.dirty.then(|| {
            self.dirty = false;
            self.cache_rows()
        })
    }

    /// A cache write failed: it is tried again on the next flush tick.
    pub(super) fn persist_failed(&mut self) {
        self.dirty = true;
    }

    fn persist(&mut self) {
        self.dirty = false;
        let rows = self.cache_rows();
        self.effects.push(Effect::Persist(rows));
    }

    /// Queues a report for the task if its reportable state changed since the last report.
    /// Only assigned tasks are reported, unless `force` (an unassigned task we stopped).
    fn report(&mut self, id: &str, force: bool, now: u64) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        if is_unstarted(e.state) || (e.assignment.is_none() && !force) {
            return;
        }
        let key = e.key();
        if e.last_reported.as_ref() == Some(&key) {
            return;
        }
        e.last_reported = Some(key);
        self.pending.push(e.report(now));
    }

    // -----------------------------------------------------------------------------------------
    // Inputs: assignments and time
    // -----------------------------------------------------------------------------------------

    /// An assignment set from the dispatcher: recorded, cached, then acted on. A full set is
    /// also diffed against every driver's listing (all states), not against the cache: a task
    /// of this node the cache does not know (its start was in flight when the daemon was
    /// killed) or that appeared after the listing at start is found and stopped, instead of
    /// running until the next periodic resync.
    pub(super) fn apply(&mut self, set: AssignmentSet, now: u64) {
        tracing::debug!(
            full = set.full,
            tasks = ?set.tasks.iter().map(|a| (a.task_id.as_str(), a.desired)).collect::<Vec<_>>(),
            removed = ?set.removed,
            "worker assignment set"
        );
        let full = set.full;
        let withdrawn: Vec<String> = if full {
            self.full_seen = true;
            let ids: HashSet<&str> = set.tasks.iter().map(|a| a.task_id.as_str()).collect();
            self.entries
                .keys()
                .filter(|id| !ids.contains(id.as_str()))
                .cloned()
                .collect()
        } else {
            Vec::new()
        };
        for id in &withdrawn {
            self.unassign(id);
        }
        for a in set.tasks {
            self.upsert(a);
        }
        if !full {
            for id in &set.removed {
                self.unassign(id);
            }
        }
        self.persist();
        self.settle_all(now);
        if full {
            self.effects.push(Effect::Resync { stamp: self.epoch });
        }
    }

    fn unassign(&mut self, id: &str) {
        if let Some(e) = self.entries.get_mut(id) {
            e.assignment = None;
            e.confirmed = true;
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
        e.driver.clone_from(&a.driver);
        e.assignment = Some(a);
        e.confirmed = true;
        self.tombstones.remove(&e.task_id);
    }

    /// The periodic resync: list every driver, forget old tombstones, settle everything and
    /// remove what was kept long enough.
    pub(super) fn tick(&mut self, now: u64) {
        self.effects.push(Effect::Resync { stamp: self.epoch });
        self.tombstones
            .retain(|_, t| now.saturating_sub(t.at_ms) < TOMBSTONE_TTL_MS);
        self.settle_all(now);
        self.cleanup(now);
    }

    /// An explicit resync's listings have all been fed in.
    pub(super) fn resynced(&mut self, now: u64) {
        self.settle_all(now);
        self.cleanup(now);
    }

    // -----------------------------------------------------------------------------------------
    // Inputs: observations
    // -----------------------------------------------------------------------------------------

    /// An event from a driver's stream, received when the epoch was `stamp`.
    pub(super) fn event(&mut self, driver: &str, stamp: u64, event: Event, now: u64) {
        match event {
            Event::Resynced(tasks) => self.listed(driver, stamp, tasks, now),
            Event::Disconnected { reason } => {
                tracing::info!(driver, reason, "driver event stream disconnected");
            }
            Event::Started { task_id } if self.entries.get(&task_id).is_some_and(|e| e.busy) => {
                // Our own start in flight: its outcome carries the status, and an inspection
                // answered while it runs would be dropped as stale. During a burst of starts
                // this spares the engine one request per container.
            }
            other => {
                if let Some(id) = other.task_id() {
                    self.inspect(driver, id);
                }
            }
        }
    }

    fn inspect(&mut self, driver: &str, task_id: &str) {
        if !self.drivers.contains(driver) {
            return;
        }
        self.effects.push(Effect::Inspect {
            driver: driver.to_owned(),
            task_id: task_id.to_owned(),
            stamp: self.epoch,
        });
    }

    /// Everything `driver` has, listed from `stamp` on. A known task missing from it is
    /// inspected before it is taken as gone.
    pub(super) fn listed(&mut self, driver: &str, stamp: u64, tasks: Vec<TaskStatus>, now: u64) {
        let present: HashSet<String> = tasks.iter().map(|t| t.task_id.clone()).collect();
        for status in tasks {
            self.observe(driver, stamp, status, now);
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
            self.inspect(driver, &id);
        }
    }

    /// What an inspect of `task_id` started at `stamp` found.
    pub(super) fn inspected(
        &mut self,
        driver: &str,
        task_id: &str,
        stamp: u64,
        found: Inspection,
        now: u64,
    ) {
        match found {
            Inspection::Found(status) => self.observe(driver, stamp, *status, now),
            Inspection::NotFound => {
                if let Some(e) = self.entries.get_mut(task_id)
                    && !e.busy
                    && e.op_epoch <= stamp
                    && e.driver == driver
                {
                    e.seen = Seen::Absent;
                    self.settle(task_id, now);
                }
            }
            Inspection::Failed(error) => {
                tracing::debug!(driver, task_id, error, "inspect failed");
            }
        }
    }

    /// One runtime status observed from `stamp` on.
    fn observe(&mut self, driver: &str, stamp: u64, status: TaskStatus, now: u64) {
        let id = status.task_id.clone();
        if id.is_empty() {
            return;
        }
        match self.entries.get_mut(&id) {
            Some(e) => {
                let stale = e.busy || e.op_epoch > stamp || e.driver != driver;
                let backwards = e.seen.phase() > Some(Phase::of(status.state));
                if stale || backwards {
                    return;
                }
                e.seen = Seen::Present(Box::new(status));
            }
            None => {
                if self.tombstones.get(&id).is_some_and(|t| t.epoch > stamp) {
                    return;
                }
                tracing::debug!(
                    task_id = %id,
                    driver,
                    state = ?status.state,
                    confirmed = self.full_seen,
                    "worker found an unknown task"
                );
                let mut e = Entry::new(id.clone(), driver.to_owned());
                let (state, code, error) = state_of_status(&status);
                e.set_state(state, code, error);
                e.health = task_health(status.health);
                // Not assigned: once a full set arrived, that is a manager's word.
                e.confirmed = self.full_seen;
                e.seen = Seen::Present(Box::new(status));
                self.entries.insert(id.clone(), e);
            }
        }
        self.settle(&id, now);
    }

    // -----------------------------------------------------------------------------------------
    // Inputs: operations
    // -----------------------------------------------------------------------------------------

    /// A start got this far (`preparing`, `starting`).
    pub(super) fn progress(&mut self, task_id: &str, state: TaskState, now: u64) {
        if let Some(e) = self.entries.get_mut(task_id)
            && e.state < state
            && !e.state.is_terminal()
        {
            e.set_state(state, None, None);
            self.dirty = true;
            self.report(task_id, false, now);
        }
    }

    /// An operation on `task_id` ended.
    pub(super) fn op_done(&mut self, task_id: &str, outcome: Outcome, now: u64) {
        let epoch = self.bump();
        tracing::debug!(task_id, ?outcome, "worker op done");
        let Some(e) = self.entries.get_mut(task_id) else {
            return;
        };
        e.busy = false;
        e.op_epoch = epoch;
        self.dirty = true;
        let force_report = e.op_done(outcome, now);
        self.report(task_id, force_report, now);
        self.settle(task_id, now);
    }

    // -----------------------------------------------------------------------------------------
    // Decisions
    // -----------------------------------------------------------------------------------------

    fn settle_all(&mut self, now: u64) {
        let ids: Vec<String> = self.entries.keys().cloned().collect();
        for id in ids {
            self.settle(&id, now);
        }
    }

    /// Brings one task's state in line with what the runtime shows, and starts the operation
    /// its assignment calls for, if any.
    fn settle(&mut self, id: &str, now: u64) {
        let Some(e) = self.entries.get_mut(id) else {
            return;
        };
        if e.busy {
            return;
        }
        e.follow_health();
        let means = Means {
            driver: self.drivers.contains(&e.driver),
            retry_wait: !e.retry_due(now),
            now,
        };
        let before = e.key();
        let (next, force_report) = if e.is_stray_running() {
            (e.settle_stray(means), false)
        } else {
            match e.assignment.as_ref().map(|a| a.desired) {
                Some(DesiredState::Running) => (e.settle_running(means), false),
                Some(DesiredState::Shutdown) => (e.settle_shutdown(means), false),
                None => e.settle_unassigned(means),
            }
        };
        if e.key() != before {
            self.dirty = true;
        }
        self.report(id, force_report, now);
        self.act(id, next, now);
    }

    /// Removes ended tasks from the runtime once they have been kept long enough.
    fn cleanup(&mut self, now: u64) {
        let due: Vec<String> = self
            .entries
            .values()
            .filter(|e| e.cleanup_due(now, self.retention_ms) && self.drivers.contains(&e.driver))
            .map(|e| e.task_id.clone())
            .collect();
        for id in due {
            self.act(&id, Next::Run(Op::Remove), now);
        }
    }

    fn act(&mut self, id: &str, next: Next, now: u64) {
        match next {
            Next::Wait => {}
            Next::Drop => {
                tracing::debug!(task_id = id, action = "drop", "worker action");
                self.entries.remove(id);
                let epoch = self.bump();
                self.tombstones
                    .insert(id.to_owned(), Tombstone { epoch, at_ms: now });
                self.dirty = true;
            }
            Next::Run(op) => {
                tracing::debug!(task_id = id, action = op.name(), "worker action");
                let epoch = self.bump();
                let Some(e) = self.entries.get_mut(id) else {
                    return;
                };
                e.busy = true;
                e.op_epoch = epoch;
                e.retry_at_ms = None;
                self.effects.push(Effect::Op {
                    task_id: id.to_owned(),
                    driver: e.driver.clone(),
                    op,
                });
            }
        }
    }
}
