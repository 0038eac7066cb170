//! The whole worker (shell and machine) on the in-memory driver of `fake.rs`: what the old
//! process-driver tests proved about the worker, without the shim or Docker. Current-thread
//! runtimes: deterministic order.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use shoal_runtime::{Driver, Health, RunState, TaskSpec};

use super::fake::{FailOp, FakeEngine, HoldAt};
use super::*;

/// A worker on fake drivers named `drivers` (all on `engine`), with no periodic resync to
/// speak of: only what the worker does on its own may find a task.
fn fake_worker(
    engine: &Arc<FakeEngine>,
    drivers: &[&str],
    cache_dir: &Path,
) -> (WorkerHandle, Reports) {
    let map: BTreeMap<String, Arc<dyn Driver>> = drivers
        .iter()
        .map(|n| ((*n).to_owned(), engine.driver()))
        .collect();
    let mut config = WorkerConfig::new(map, cache_dir);
    config.resync_interval = Duration::from_secs(3600);
    let (handle, rx) = Worker::start(config).expect("worker");
    (handle, Reports::new(rx))
}

fn fake_assignment(task_id: &str, slot: u64) -> Assignment {
    Assignment {
        task_id: task_id.into(),
        service_id: "svc1".into(),
        service_name: "web".into(),
        slot,
        driver: "docker".into(),
        spec: TaskSpec::new(task_id, "svc1", "web", slot, "fake/image:1"),
        desired: DesiredState::Running,
    }
}

/// Reports queued by now (after a flush), without waiting.
async fn settled_reports(handle: &WorkerHandle, reports: &mut Reports) {
    handle.resync().await.expect("resync");
    handle.flush().await.expect("flush");
    reports.drain();
}

#[tokio::test]
async fn issue_15_a_task_unknown_to_the_cache_is_stopped_after_the_full_set() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    // The killed daemon's start of `old` had reached the engine (which has created nothing
    // yet) after the daemon's last report and cache write: the engine finishes it alone.
    let mut hold = engine.hold("old", HoldAt::BeforeCreate);
    let previous = engine.driver();
    let spec = fake_assignment("old", 1).spec;
    let in_flight = tokio::spawn(async move { previous.start(&spec).await });
    hold.reached().await;

    // The restarted daemon's worker lists the runtime at start: nothing yet.
    let (handle, mut reports) = fake_worker(&engine, &["docker"], dir.path());
    handle.resync().await.expect("resync");
    handle.resync().await.expect("resync");
    assert!(view(&handle, "old").await.is_none());
    // Then the engine completes the old start: a running task of this node nobody knows, and
    // no event about it.
    hold.release();
    in_flight.await.expect("join").expect("the old start");
    assert_eq!(engine.state_of("old"), Some(RunState::Running));

    // The manager's full set does not have it: stopped and removed, whatever the cache says.
    handle
        .apply(full(vec![fake_assignment("keep", 2)]))
        .await
        .expect("apply");
    wait_for("the unknown task stopped and removed", || async {
        engine.state_of("old").is_none().then_some(())
    })
    .await;
    reports.wait("old", TaskState::Shutdown).await;
    reports.wait("keep", TaskState::Running).await;
    assert_eq!(engine.state_of("keep"), Some(RunState::Running));
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn issue_15_a_start_in_flight_when_its_assignment_is_withdrawn_is_stopped() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, mut reports) = fake_worker(&engine, &["docker"], dir.path());
    // The start of t1 creates it and is held there (between create and report)...
    let mut hold = engine.hold("t1", HoldAt::AfterCreate);
    handle
        .apply(full(vec![fake_assignment("t1", 1)]))
        .await
        .expect("apply");
    hold.reached().await;
    assert_eq!(engine.state_of("t1"), Some(RunState::Created));
    // ...when a full set without it arrives (the node was marked down, t1 orphaned).
    handle.apply(full(vec![])).await.expect("apply");
    hold.release();
    wait_for("t1 stopped and removed", || async {
        engine.state_of("t1").is_none().then_some(())
    })
    .await;
    reports.wait("t1", TaskState::Shutdown).await;
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn issue_15_a_killed_daemons_start_is_stopped_and_reported_after_the_restart() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache_dir = dir.path().join("worker");
    // The killed daemon: t1 assigned (and cached), its start held after the create...
    let mut hold = engine.hold("t1", HoldAt::AfterCreate);
    let (old, _old_reports) = fake_worker(&engine, &["docker"], &cache_dir);
    old.apply(full(vec![fake_assignment("t1", 1)]))
        .await
        .expect("apply");
    hold.reached().await;
    // ...and its cache written before the start's progress reached it (flushed every 150 ms).
    old.shutdown().await.expect("shutdown");
    write_cache(&cache_dir, fake_assignment("t1", 1), TaskState::Assigned);
    // The engine completes the start the dead daemon sent.
    hold.release();
    wait_for("t1 running", || async {
        (engine.state_of("t1") == Some(RunState::Running)).then_some(())
    })
    .await;

    // The restarted daemon: t1 was orphaned meanwhile; the full set does not have it.
    let (handle, mut reports) = fake_worker(&engine, &["docker"], &cache_dir);
    handle.apply(full(vec![])).await.expect("apply");
    wait_for("t1 stopped and removed", || async {
        engine.state_of("t1").is_none().then_some(())
    })
    .await;
    // The cache said `assigned`, but the runtime had it: the manager hears it stopped (an
    // orphaned task becomes `shutdown` instead of staying orphaned forever).
    reports.wait("t1", TaskState::Shutdown).await;
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn issue_15_a_task_whose_driver_is_missing_is_never_reported_stopped() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache_dir = dir.path().join("worker");
    // A running docker task of this node, cached as running...
    engine
        .driver()
        .start(&fake_assignment("t1", 1).spec)
        .await
        .expect("start");
    engine
        .driver()
        .start(&fake_assignment("t2", 2).spec)
        .await
        .expect("start");
    cache::Cache::open(&cache_dir)
        .and_then(|c| {
            c.store(
                ["t1", "t2"]
                    .iter()
                    .zip(1..)
                    .map(|(t, slot)| cache::CachedTask {
                        assignment: fake_assignment(t, slot),
                        state: TaskState::Running,
                        exit_code: None,
                        error: None,
                        ended_at_ms: None,
                        removed: false,
                    })
                    .collect(),
            )
        })
        .expect("write the cache");
    // ...and a daemon restarted without the docker driver (the engine did not answer its
    // probe in time): it cannot stop them, so it must never say it did.
    let elsewhere = FakeEngine::new();
    let (handle, mut reports) = fake_worker(&elsewhere, &["process"], &cache_dir);
    let mut t2 = fake_assignment("t2", 2);
    t2.desired = DesiredState::Shutdown;
    handle.apply(full(vec![t2])).await.expect("apply");
    settled_reports(&handle, &mut reports).await;
    for task in ["t1", "t2"] {
        assert!(
            !reports.states_of(task).contains(&TaskState::Shutdown),
            "{task} reported shutdown while it runs: {:?}",
            reports.all
        );
        assert_eq!(engine.state_of(task), Some(RunState::Running));
    }
    handle.shutdown().await.expect("shutdown");
}

/// An assignment whose task ends at once with `code`.
fn exiting(task_id: &str, slot: u64, code: i64) -> Assignment {
    let mut a = fake_assignment(task_id, slot);
    a.spec.args = vec!["exit".into(), code.to_string()];
    a
}

#[test]
fn start_outside_a_runtime_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = WorkerConfig::new(BTreeMap::new(), dir.path());
    assert!(matches!(Worker::start(config), Err(WorkerError::NoRuntime)));
}

#[tokio::test]
async fn assigned_task_starts_once_and_reports_preparing_starting_running() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, mut reports) = fake_worker(&engine, &["docker"], dir.path());
    handle
        .apply(full(vec![fake_assignment("t1", 1)]))
        .await
        .expect("apply");
    reports.wait("t1", TaskState::Running).await;
    settled_reports(&handle, &mut reports).await;
    assert_eq!(
        reports.states_of("t1"),
        [
            TaskState::Preparing,
            TaskState::Starting,
            TaskState::Running
        ]
    );
    let v = view(&handle, "t1").await.expect("in snapshot");
    assert_eq!(v.desired, Some(DesiredState::Running));
    assert!(v.confirmed);
    assert_eq!(v.runtime_id.as_deref(), Some("fake-1"));
    assert_eq!(engine.creates("t1"), 1);
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn unassigned_task_is_stopped_and_removed() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, mut reports) = fake_worker(&engine, &["docker"], dir.path());
    let (t1, t2) = (fake_assignment("t1", 1), fake_assignment("t2", 2));
    handle
        .apply(full(vec![t1, t2.clone()]))
        .await
        .expect("apply");
    reports.wait("t1", TaskState::Running).await;
    reports.wait("t2", TaskState::Running).await;
    // A full set without t1: stopped, removed, reported shutdown, forgotten.
    handle.apply(full(vec![t2])).await.expect("apply");
    let r = reports.wait("t1", TaskState::Shutdown).await;
    assert_eq!(r.exit_code, None);
    wait_for("t1 removed and forgotten", || async {
        (engine.state_of("t1").is_none() && view(&handle, "t1").await.is_none()).then_some(())
    })
    .await;
    // A delta removing t2 does the same.
    handle.apply(delta(vec![], &["t2"])).await.expect("apply");
    reports.wait("t2", TaskState::Shutdown).await;
    wait_for("t2 removed", || async {
        engine.task_ids().is_empty().then_some(())
    })
    .await;
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn desired_shutdown_stops_the_task_and_keeps_it() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, mut reports) = fake_worker(&engine, &["docker"], dir.path());
    let mut a = fake_assignment("t1", 1);
    handle.apply(full(vec![a.clone()])).await.expect("apply");
    reports.wait("t1", TaskState::Running).await;
    a.desired = DesiredState::Shutdown;
    handle.apply(delta(vec![a], &[])).await.expect("apply");
    reports.wait("t1", TaskState::Shutdown).await;
    settled_reports(&handle, &mut reports).await;
    // Still assigned: stopped but kept (logs stay available).
    assert_eq!(engine.state_of("t1"), Some(RunState::Exited));
    assert_eq!(reports.states_of("t1").last(), Some(&TaskState::Shutdown));
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn exits_are_reported_and_never_restarted() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, mut reports) = fake_worker(&engine, &["docker"], dir.path());
    let set = full(vec![exiting("ok", 1, 0), exiting("bad", 2, 3)]);
    handle.apply(set.clone()).await.expect("apply");
    let ok = reports.wait("ok", TaskState::Complete).await;
    assert_eq!((ok.exit_code, ok.error), (Some(0), None));
    let bad = reports.wait("bad", TaskState::Failed).await;
    assert_eq!(bad.exit_code, Some(3));
    assert_eq!(bad.error.as_deref(), Some("task exited with code 3"));
    settled_reports(&handle, &mut reports).await;
    let before = reports.all.len();
    // Level-triggered passes and a repeated full set change nothing.
    handle.resync().await.expect("resync");
    handle.apply(set).await.expect("apply");
    settled_reports(&handle, &mut reports).await;
    assert_eq!(reports.all.len(), before, "{:?}", reports.all);
    for task in ["ok", "bad"] {
        assert_eq!(engine.creates(task), 1, "{task} restarted");
        assert_eq!(engine.state_of(task), Some(RunState::Exited));
        let states = reports.states_of(task);
        assert_eq!(
            states.iter().filter(|s| s.is_terminal()).count(),
            1,
            "{states:?}"
        );
    }
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn missing_program_driver_or_invalid_spec_is_rejected() {
    let engine = FakeEngine::new();
    engine.refuse_image("/nonexistent/program");
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, mut reports) = fake_worker(&engine, &["docker"], dir.path());
    let mut missing = fake_assignment("missing", 1);
    missing.spec.image = "/nonexistent/program".into();
    let mut nodriver = fake_assignment("nodriver", 2);
    nodriver.driver = "warp-drive".into();
    let mut badid = fake_assignment("badid", 3);
    badid.spec.task_id = "other".into();
    let invalid = fake_assignment("bad..id", 4);
    handle
        .apply(full(vec![missing, nodriver, badid, invalid]))
        .await
        .expect("apply");
    let r = reports.wait("missing", TaskState::Rejected).await;
    assert!(
        r.error
            .as_deref()
            .is_some_and(|e| e.contains("no such file")),
        "{r:?}"
    );
    let r = reports.wait("nodriver", TaskState::Rejected).await;
    assert!(
        r.error.as_deref().is_some_and(|e| e.contains("warp-drive")),
        "{r:?}"
    );
    let r = reports.wait("badid", TaskState::Rejected).await;
    assert!(
        r.error.as_deref().is_some_and(|e| e.contains("other")),
        "{r:?}"
    );
    let r = reports.wait("bad..id", TaskState::Rejected).await;
    assert!(
        r.error.as_deref().is_some_and(|e| e.contains("invalid")),
        "{r:?}"
    );
    assert!(engine.task_ids().is_empty());
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_killed_task_is_reported_failed_from_its_event() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, mut reports) = fake_worker(&engine, &["docker"], dir.path());
    handle
        .apply(full(vec![fake_assignment("t1", 1)]))
        .await
        .expect("apply");
    reports.wait("t1", TaskState::Running).await;
    // No resync (an hour away): only the exit event can tell.
    engine.kill("t1", 137);
    let r = reports.wait("t1", TaskState::Failed).await;
    assert_eq!(r.exit_code, Some(137));
    assert_eq!(r.error.as_deref(), Some("task exited with code 137"));
    settled_reports(&handle, &mut reports).await;
    assert_eq!(engine.creates("t1"), 1, "restarted in place");
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn task_vanishing_from_the_runtime_is_reported_failed_and_not_restarted() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, mut reports) = fake_worker(&engine, &["docker"], dir.path());
    handle
        .apply(full(vec![fake_assignment("v1", 1)]))
        .await
        .expect("apply");
    reports.wait("v1", TaskState::Running).await;
    // Gone behind the worker's back, no event: the level-triggered resync notices.
    engine.vanish("v1");
    handle.resync().await.expect("resync");
    let r = reports.wait("v1", TaskState::Failed).await;
    assert_eq!(
        r.error.as_deref(),
        Some("the task disappeared from the runtime")
    );
    settled_reports(&handle, &mut reports).await;
    assert!(engine.task_ids().is_empty(), "restarted");
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn health_changes_are_reported_from_events() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, mut reports) = fake_worker(&engine, &["docker"], dir.path());
    handle
        .apply(full(vec![fake_assignment("h1", 1)]))
        .await
        .expect("apply");
    reports.wait("h1", TaskState::Running).await;
    engine.set_health("h1", Health::Starting);
    settled_reports(&handle, &mut reports).await;
    engine.set_health("h1", Health::Healthy);
    settled_reports(&handle, &mut reports).await;
    let healths: Vec<TaskHealth> = reports
        .all
        .iter()
        .filter(|r| r.task_id == "h1")
        .map(|r| r.health)
        .collect();
    assert_eq!(
        healths,
        [
            TaskHealth::None,
            TaskHealth::None,
            TaskHealth::None,
            TaskHealth::Starting,
            TaskHealth::Healthy
        ]
    );
    assert_eq!(
        view(&handle, "h1").await.expect("view").health,
        TaskHealth::Healthy
    );
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn reports_are_batched_and_deduplicated() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, mut reports) = fake_worker(&engine, &["docker"], dir.path());
    let tasks: Vec<Assignment> = (0..8)
        .map(|i| fake_assignment(&format!("t{i}"), i))
        .collect();
    handle.apply(full(tasks.clone())).await.expect("apply");
    for i in 0..8 {
        reports.wait(&format!("t{i}"), TaskState::Running).await;
    }
    settled_reports(&handle, &mut reports).await;
    for i in 0..8 {
        assert_eq!(
            reports.states_of(&format!("t{i}")),
            [
                TaskState::Preparing,
                TaskState::Starting,
                TaskState::Running
            ],
            "{:?}",
            reports.all
        );
    }
    assert!(
        reports.batches < reports.all.len(),
        "{} batches for {} reports: not batched",
        reports.batches,
        reports.all.len()
    );
    // Nothing changed: nothing reported.
    handle.apply(full(tasks)).await.expect("apply");
    settled_reports(&handle, &mut reports).await;
    assert_eq!(reports.all.len(), 24, "{:?}", reports.all);
    // But a new session can ask for everything.
    let current = handle.current_reports().await.expect("current");
    assert_eq!(current.len(), 8);
    assert!(current.iter().all(|r| r.state == TaskState::Running));
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn ended_tasks_are_removed_after_retention_and_not_started_again() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut drivers: BTreeMap<String, Arc<dyn Driver>> = BTreeMap::new();
    drivers.insert("docker".into(), engine.driver());
    let mut config = WorkerConfig::new(drivers, dir.path());
    config.resync_interval = Duration::from_secs(3600);
    config.ended_retention = Duration::ZERO;
    let (handle, rx) = Worker::start(config).expect("worker");
    let mut reports = Reports::new(rx);
    handle
        .apply(full(vec![exiting("done", 1, 0)]))
        .await
        .expect("apply");
    reports.wait("done", TaskState::Complete).await;
    wait_for("ended task removed from the runtime", || async {
        handle.resync().await.expect("resync");
        engine.state_of("done").is_none().then_some(())
    })
    .await;
    // Still assigned: still known, still complete, and not started again.
    settled_reports(&handle, &mut reports).await;
    assert_eq!(
        view(&handle, "done").await.expect("view").state,
        TaskState::Complete
    );
    assert_eq!(engine.creates("done"), 1);
    assert_eq!(reports.states_of("done").last(), Some(&TaskState::Complete));
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_lagging_receiver_gets_the_latest_state_of_every_task() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut drivers: BTreeMap<String, Arc<dyn Driver>> = BTreeMap::new();
    drivers.insert("docker".into(), engine.driver());
    let mut config = WorkerConfig::new(drivers, dir.path());
    config.report_capacity = 1;
    config.max_batch = 2;
    let (handle, rx) = Worker::start(config).expect("worker");
    let tasks: Vec<Assignment> = (0..6)
        .map(|i| fake_assignment(&format!("b{i}"), i))
        .collect();
    handle.apply(full(tasks)).await.expect("apply");
    // Nobody reads until every task runs (the worker's own view).
    wait_for("all running", || async {
        let snap = handle.snapshot().await.expect("snapshot");
        (snap.len() == 6 && snap.iter().all(|v| v.state == TaskState::Running)).then_some(())
    })
    .await;
    let mut reports = Reports::new(rx);
    for i in 0..6 {
        reports.wait(&format!("b{i}"), TaskState::Running).await;
    }
    // Coalesced: fewer than the 18 reports made.
    assert!(reports.all.len() < 18, "{:?}", reports.all);
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn an_unhealthy_task_is_stopped_and_reported_failed_then_replaced() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, mut reports) = fake_worker(&engine, &["docker"], dir.path());
    let mut a = fake_assignment("h1", 1);
    a.spec.stop_grace = Duration::from_millis(1_500);
    handle.apply(full(vec![a.clone()])).await.expect("apply");
    reports.wait("h1", TaskState::Running).await;
    engine.set_health("h1", Health::Healthy);
    settled_reports(&handle, &mut reports).await;
    assert!(engine.stops().is_empty(), "a healthy task was stopped");

    // The check failed `retries` times: stopped with its grace, reported failed.
    engine.set_health("h1", Health::Unhealthy);
    let r = reports.wait("h1", TaskState::Failed).await;
    assert_eq!(
        (r.exit_code, r.error.as_deref(), r.health),
        (
            Some(143),
            Some("unhealthy container"),
            TaskHealth::Unhealthy
        )
    );
    assert_eq!(
        engine.stops(),
        [("h1".to_owned(), Some(Duration::from_millis(1_500)))]
    );
    // Kept (its logs), not restarted in place.
    assert_eq!(engine.state_of("h1"), Some(RunState::Exited));
    assert_eq!(engine.creates("h1"), 1);

    // The manager replaces it: h1 desired shutdown, h2 in its slot.
    let mut old = a;
    old.desired = DesiredState::Shutdown;
    handle
        .apply(full(vec![old, fake_assignment("h2", 1)]))
        .await
        .expect("apply");
    reports.wait("h2", TaskState::Running).await;
    settled_reports(&handle, &mut reports).await;
    assert_eq!(
        reports.states_of("h1"),
        [
            TaskState::Preparing,
            TaskState::Starting,
            TaskState::Running,
            TaskState::Running,
            TaskState::Running,
            TaskState::Failed
        ],
        "{:?}",
        reports.all
    );
    assert_eq!(engine.stops().len(), 1, "{:?}", engine.stops());
    assert_eq!(
        view(&handle, "h1").await.expect("h1 kept").state,
        TaskState::Failed
    );
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn a_failed_stop_is_retried() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut drivers: BTreeMap<String, Arc<dyn Driver>> = BTreeMap::new();
    drivers.insert("docker".into(), engine.driver());
    let mut config = WorkerConfig::new(drivers, dir.path());
    config.resync_interval = Duration::from_millis(50);
    let (handle, rx) = Worker::start(config).expect("worker");
    let mut reports = Reports::new(rx);
    handle
        .apply(full(vec![fake_assignment("t1", 1)]))
        .await
        .expect("apply");
    reports.wait("t1", TaskState::Running).await;
    engine.fail_next(FailOp::Stop, "t1", 1);
    handle.apply(full(vec![])).await.expect("apply");
    // The first stop fails; the retry (after 2 s, on a resync tick) stops and removes it.
    reports.wait("t1", TaskState::Shutdown).await;
    wait_for("t1 removed", || async {
        engine.state_of("t1").is_none().then_some(())
    })
    .await;
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn restarted_worker_adopts_and_stops_nothing_before_a_full_set() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, mut reports) = fake_worker(&engine, &["docker"], dir.path());
    let a = fake_assignment("t1", 1);
    handle.apply(full(vec![a.clone()])).await.expect("apply");
    reports.wait("t1", TaskState::Running).await;
    handle.shutdown().await.expect("shutdown");
    drop((handle, reports));
    // While no worker runs, a stray task of this node appears.
    engine
        .driver()
        .start(&fake_assignment("stray", 9).spec)
        .await
        .expect("start stray");

    let (handle, mut reports) = fake_worker(&engine, &["docker"], dir.path());
    reports.wait("t1", TaskState::Running).await;
    handle.apply(delta(vec![], &[])).await.expect("apply");
    settled_reports(&handle, &mut reports).await;
    let v = view(&handle, "t1").await.expect("t1 known");
    assert!(!v.confirmed);
    assert_eq!(v.runtime_id.as_deref(), Some("fake-1"));
    assert_eq!(engine.state_of("stray"), Some(RunState::Running));
    assert_eq!(engine.creates("t1"), 1);
    // The manager answers: t1 is still ours, the stray is not.
    handle.apply(full(vec![a])).await.expect("apply");
    reports.wait("stray", TaskState::Shutdown).await;
    wait_for("stray removed", || async {
        engine.state_of("stray").is_none().then_some(())
    })
    .await;
    settled_reports(&handle, &mut reports).await;
    assert_eq!(engine.state_of("t1"), Some(RunState::Running));
    assert_eq!(
        reports.states_of("t1"),
        [TaskState::Running],
        "{:?}",
        reports.all
    );
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn corrupt_cache_starts_empty() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(cache::CACHE_FILE), b"\x00garbage").expect("write");
    let (handle, _reports) = fake_worker(&engine, &["docker"], dir.path());
    assert!(handle.snapshot().await.expect("snapshot").is_empty());
    handle.shutdown().await.expect("shutdown");
    // Shut down: further calls say so instead of panicking.
    assert!(matches!(handle.snapshot().await, Err(WorkerError::Stopped)));
    handle.shutdown().await.expect("idempotent");
}
