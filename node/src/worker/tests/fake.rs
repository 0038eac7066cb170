//! An in-memory [`Driver`]: a [`FakeEngine`] that outlives the daemon (as Docker does), shared
//! by the drivers of successive daemons on one node, so the worker's shell can be tested
//! without the shim or Docker.
//!
//! - `start` is idempotent (a created task is started, a running one returned) and can be held
//!   before or after it creates the task, so the interleavings of a `kill -9` replay exactly.
//! - A spec whose args are `["exit", CODE]` ends at once with that code; an image the engine
//!   was told to refuse fails `prepare` with `ProgramNotFound`; a task id with `..` is an
//!   invalid spec.
//! - `stop` of a running task exits it with 143, of a created one does nothing (every stop and
//!   its grace is recorded: [`FakeEngine::stops`]); `remove` kills.
//! - Events: the listing at subscription, then only what the test does to the engine
//!   ([`FakeEngine::kill`], [`FakeEngine::set_health`]): a start by another driver instance is
//!   heard of by no one, as a process driver that did not launch a task hears nothing of it.
//! - Stops and removes can be made to fail ([`FakeEngine::fail_next`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use shoal_runtime::{
    Availability, BoxFuture, BoxStream, Driver, DriverKind, Event, Health, LogChunk, LogOptions,
    RunState, RuntimeError, TaskSpec, TaskStatus,
};
use tokio::sync::{mpsc, watch};

use super::DEADLINE;

/// Where a held start waits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum HoldAt {
    /// The request reached the engine, which has not created anything yet.
    BeforeCreate,
    /// The task exists (created, not running) and the start has not returned.
    AfterCreate,
}

struct Hold {
    at: HoldAt,
    reached: watch::Sender<bool>,
    release: watch::Receiver<bool>,
}

/// The test's side of a hold.
pub(super) struct HoldHandle {
    reached: watch::Receiver<bool>,
    release: watch::Sender<bool>,
}

impl HoldHandle {
    pub(super) async fn reached(&mut self) {
        tokio::time::timeout(DEADLINE, self.reached.wait_for(|r| *r))
            .await
            .expect("the start never reached the hold")
            .expect("hold dropped");
    }

    pub(super) fn release(&self) {
        let _ = self.release.send(true);
    }
}

/// An operation that can be made to fail.
#[derive(Clone, Copy, PartialEq, Eq, Debug, PartialOrd, Ord)]
pub(super) enum FailOp {
    Stop,
    Remove,
}

struct FakeTask {
    spec: TaskSpec,
    state: RunState,
    runtime_id: String,
    exit_code: Option<i64>,
    health: Health,
}

#[derive(Default)]
struct FakeState {
    tasks: BTreeMap<String, FakeTask>,
    holds: BTreeMap<String, Hold>,
    next_id: u64,
    /// Starts that created a task, per task id.
    creates: BTreeMap<String, u32>,
    refused_images: BTreeSet<String>,
    failures: BTreeMap<(FailOp, String), u32>,
    /// Every stop asked for, with its grace.
    stops: Vec<(String, Option<Duration>)>,
    subscribers: Vec<mpsc::UnboundedSender<Event>>,
}

impl FakeState {
    fn emit(&mut self, event: &Event) {
        self.subscribers.retain(|s| s.send(event.clone()).is_ok());
    }

    fn take_failure(&mut self, op: FailOp, task_id: &str) -> bool {
        match self.failures.get_mut(&(op, task_id.to_owned())) {
            Some(n) if *n > 0 => {
                *n -= 1;
                true
            }
            _ => false,
        }
    }
}

/// One "engine" shared by the drivers of successive daemons on one node.
#[derive(Default)]
pub(super) struct FakeEngine {
    state: std::sync::Mutex<FakeState>,
}

impl FakeEngine {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next start of `task_id` waits at `at` until released.
    pub(super) fn hold(&self, task_id: &str, at: HoldAt) -> HoldHandle {
        let (reached_tx, reached_rx) = watch::channel(false);
        let (release_tx, release_rx) = watch::channel(false);
        self.lock().holds.insert(
            task_id.to_owned(),
            Hold {
                at,
                reached: reached_tx,
                release: release_rx,
            },
        );
        HoldHandle {
            reached: reached_rx,
            release: release_tx,
        }
    }

    pub(super) fn state_of(&self, task_id: &str) -> Option<RunState> {
        self.lock().tasks.get(task_id).map(|t| t.state)
    }

    /// How many times a start created `task_id`.
    pub(super) fn creates(&self, task_id: &str) -> u32 {
        self.lock().creates.get(task_id).copied().unwrap_or(0)
    }

    pub(super) fn task_ids(&self) -> Vec<String> {
        self.lock().tasks.keys().cloned().collect()
    }

    /// `prepare` of this image fails as a missing program does.
    pub(super) fn refuse_image(&self, image: &str) {
        self.lock().refused_images.insert(image.to_owned());
    }

    /// The next `times` operations `op` on `task_id` fail.
    pub(super) fn fail_next(&self, op: FailOp, task_id: &str, times: u32) {
        self.lock().failures.insert((op, task_id.to_owned()), times);
    }

    /// The task's process dies with `code` (an exit event is sent).
    pub(super) fn kill(&self, task_id: &str, code: i64) {
        let mut st = self.lock();
        if let Some(t) = st.tasks.get_mut(task_id) {
            t.state = RunState::Exited;
            t.exit_code = Some(code);
        }
        st.emit(&Event::Exited {
            task_id: task_id.to_owned(),
            exit_code: Some(code),
        });
    }

    /// Every stop asked for so far, as `(task, grace)`.
    pub(super) fn stops(&self) -> Vec<(String, Option<Duration>)> {
        self.lock().stops.clone()
    }

    /// The task is gone from the engine, and nobody is told.
    pub(super) fn vanish(&self, task_id: &str) {
        self.lock().tasks.remove(task_id);
    }

    /// The task's health check says `health` (a health event is sent).
    pub(super) fn set_health(&self, task_id: &str, health: Health) {
        let mut st = self.lock();
        if let Some(t) = st.tasks.get_mut(task_id) {
            t.health = health;
        }
        st.emit(&Event::Health {
            task_id: task_id.to_owned(),
            health,
        });
    }

    /// A new driver on this engine (as a restarted daemon makes).
    pub(super) fn driver(self: &Arc<Self>) -> Arc<dyn Driver> {
        Arc::new(FakeDriver(self.clone()))
    }
}

fn fake_status(t: &FakeTask) -> TaskStatus {
    TaskStatus {
        task_id: t.spec.task_id.clone(),
        service_id: t.spec.service_id.clone(),
        service_name: t.spec.service_name.clone(),
        slot: t.spec.slot,
        runtime_id: t.runtime_id.clone(),
        image: t.spec.image.clone(),
        state: t.state,
        exit_code: t.exit_code,
        oom_killed: false,
        health: t.health,
        error: None,
        started_at: None,
        finished_at: None,
        ports: Vec::new(),
        labels: BTreeMap::new(),
        address: None,
    }
}

fn not_found(task_id: &str) -> RuntimeError {
    RuntimeError::NotFound {
        task_id: task_id.to_owned(),
    }
}

/// `["exit", CODE]`: the task ends at once with CODE.
fn exits_with(spec: &TaskSpec) -> Option<i64> {
    match spec.args.as_slice() {
        [word, code] if word == "exit" => code.parse().ok(),
        _ => None,
    }
}

/// Runs a created task (or ends it at once, see [`exits_with`]).
fn run(t: &mut FakeTask) {
    if t.state != RunState::Created {
        return;
    }
    match exits_with(&t.spec) {
        Some(code) => {
            t.state = RunState::Exited;
            t.exit_code = Some(code);
        }
        None => t.state = RunState::Running,
    }
}

/// A Docker-like driver on a [`FakeEngine`].
pub(super) struct FakeDriver(Arc<FakeEngine>);

impl Driver for FakeDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Docker
    }

    fn availability(&self) -> BoxFuture<'_, Availability> {
        Box::pin(async {
            Availability::Available {
                version: "fake".into(),
            }
        })
    }

    fn prepare<'a>(&'a self, spec: &'a TaskSpec) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            if spec.task_id.contains("..") {
                return Err(RuntimeError::InvalidSpec(format!(
                    "task id {:?} is not a valid name",
                    spec.task_id
                )));
            }
            if self.0.lock().refused_images.contains(&spec.image) {
                return Err(RuntimeError::ProgramNotFound {
                    path: spec.image.clone().into(),
                    reason: "no such file or directory".into(),
                });
            }
            Ok(())
        })
    }

    fn start<'a>(&'a self, spec: &'a TaskSpec) -> BoxFuture<'a, Result<TaskStatus, RuntimeError>> {
        Box::pin(async move {
            let id = spec.task_id.clone();
            let hold = self.0.lock().holds.remove(&id);
            let wait = |hold: &Hold| {
                let _ = hold.reached.send(true);
                let mut release = hold.release.clone();
                async move {
                    let _ = release.wait_for(|r| *r).await;
                }
            };
            if let Some(h) = hold.as_ref().filter(|h| h.at == HoldAt::BeforeCreate) {
                wait(h).await;
            }
            {
                let mut st = self.0.lock();
                if let Some(t) = st.tasks.get_mut(&id) {
                    run(t);
                    return Ok(fake_status(t));
                }
                st.next_id += 1;
                let runtime_id = format!("fake-{}", st.next_id);
                *st.creates.entry(id.clone()).or_default() += 1;
                st.tasks.insert(
                    id.clone(),
                    FakeTask {
                        spec: spec.clone(),
                        state: RunState::Created,
                        runtime_id,
                        exit_code: None,
                        health: Health::None,
                    },
                );
            }
            if let Some(h) = hold.as_ref().filter(|h| h.at == HoldAt::AfterCreate) {
                wait(h).await;
            }
            let mut st = self.0.lock();
            match st.tasks.get_mut(&id) {
                Some(t) => {
                    run(t);
                    Ok(fake_status(t))
                }
                None => Err(RuntimeError::StartFailed {
                    task_id: id,
                    reason: "removed while starting".into(),
                }),
            }
        })
    }

    fn stop<'a>(
        &'a self,
        task_id: &'a str,
        grace: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let mut st = self.0.lock();
            st.stops.push((task_id.to_owned(), grace));
            if st.take_failure(FailOp::Stop, task_id) {
                return Err(RuntimeError::StartFailed {
                    task_id: task_id.to_owned(),
                    reason: "the engine failed the stop".into(),
                });
            }
            let t = st
                .tasks
                .get_mut(task_id)
                .ok_or_else(|| not_found(task_id))?;
            if t.state == RunState::Running {
                t.state = RunState::Exited;
                t.exit_code = Some(143);
            }
            Ok(())
        })
    }

    fn remove<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            let mut st = self.0.lock();
            if st.take_failure(FailOp::Remove, task_id) {
                return Err(RuntimeError::StartFailed {
                    task_id: task_id.to_owned(),
                    reason: "the engine failed the remove".into(),
                });
            }
            st.tasks
                .remove(task_id)
                .map(|_| ())
                .ok_or_else(|| not_found(task_id))
        })
    }

    fn inspect<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<TaskStatus, RuntimeError>> {
        Box::pin(async move {
            self.0
                .lock()
                .tasks
                .get(task_id)
                .map(fake_status)
                .ok_or_else(|| not_found(task_id))
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<TaskStatus>, RuntimeError>> {
        Box::pin(async move { Ok(self.0.lock().tasks.values().map(fake_status).collect()) })
    }

    fn events(&self) -> BoxStream<'static, Event> {
        let (tx, rx) = mpsc::unbounded_channel();
        let first = {
            let mut st = self.0.lock();
            st.subscribers.push(tx);
            Event::Resynced(st.tasks.values().map(fake_status).collect())
        };
        let rest =
            futures_util::stream::unfold(
                rx,
                |mut rx| async move { rx.recv().await.map(|e| (e, rx)) },
            );
        futures_util::stream::iter([first])
            .chain(rest)
            .chain(futures_util::stream::pending())
            .boxed()
    }

    fn logs(
        &self,
        _task_id: &str,
        _options: LogOptions,
    ) -> BoxStream<'static, Result<LogChunk, RuntimeError>> {
        futures_util::stream::empty().boxed()
    }
}
