//! The worker's decisions, fed inputs by hand: no runtime, no driver, no clock.

use std::collections::BTreeMap;

use shoal_runtime::{Event, Health, RunState, RuntimeError, TaskSpec, TaskStatus};

use super::super::cache::CachedTask;
use super::super::machine::{
    Effect, Inspection, Machine, Op, Outcome, RETRY_AFTER_MS, Seen, TOMBSTONE_TTL_MS, coalesce,
    exit_outcome, is_rejection,
};
use super::*;

const T0: u64 = 1_000_000;
const HOUR_MS: u64 = 3_600_000;

fn machine(cached: Vec<CachedTask>) -> Machine {
    Machine::new(["docker".to_owned()].into(), HOUR_MS, cached)
}

fn assignment(task_id: &str, desired: DesiredState) -> Assignment {
    Assignment {
        task_id: task_id.into(),
        service_id: "svc".into(),
        service_name: "web".into(),
        slot: 1,
        driver: "docker".into(),
        spec: TaskSpec::new(task_id, "svc", "web", 1, "img"),
        desired,
    }
}

fn running(task_id: &str) -> Assignment {
    assignment(task_id, DesiredState::Running)
}

fn cached(task_id: &str, state: TaskState) -> CachedTask {
    CachedTask {
        assignment: running(task_id),
        state,
        exit_code: None,
        error: None,
        ended_at_ms: None,
        removed: false,
    }
}

fn status(task_id: &str, state: RunState, exit_code: Option<i64>) -> TaskStatus {
    TaskStatus {
        task_id: task_id.into(),
        service_id: "svc".into(),
        service_name: "web".into(),
        slot: 1,
        runtime_id: format!("rt-{task_id}"),
        image: "img".into(),
        state,
        exit_code,
        oom_killed: false,
        health: Health::None,
        error: None,
        started_at: None,
        finished_at: None,
        ports: Vec::new(),
        labels: BTreeMap::new(),
        address: None,
    }
}

fn full_set(tasks: Vec<Assignment>) -> AssignmentSet {
    AssignmentSet {
        full: true,
        tasks,
        removed: Vec::new(),
    }
}

/// The operations among the effects, as `(task, op)`.
fn ops(effects: &[Effect]) -> Vec<(String, &'static str)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Op { task_id, op, .. } => Some((task_id.clone(), op.name())),
            _ => None,
        })
        .collect()
}

fn op(task: &str, name: &'static str) -> (String, &'static str) {
    (task.to_owned(), name)
}

/// The inspections among the effects, as `(task, stamp)`.
fn inspections(effects: &[Effect]) -> Vec<(String, u64)> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Inspect { task_id, stamp, .. } => Some((task_id.clone(), *stamp)),
            _ => None,
        })
        .collect()
}

/// Every pending report, as `(task, state)`.
fn sent(m: &mut Machine) -> Vec<(String, TaskState)> {
    m.next_batch(usize::MAX)
        .unwrap_or_default()
        .into_iter()
        .map(|r| (r.task_id, r.state))
        .collect()
}

fn rep(task: &str, state: TaskState) -> (String, TaskState) {
    (task.to_owned(), state)
}

/// Starts `task` (assigned by a full set) through to running, and clears the effects and
/// reports that took.
fn started(m: &mut Machine, tasks: Vec<Assignment>, now: u64) {
    let ids: Vec<String> = tasks.iter().map(|a| a.task_id.clone()).collect();
    m.apply(full_set(tasks), now);
    m.take_effects();
    for id in &ids {
        m.progress(id, TaskState::Preparing, now);
        m.progress(id, TaskState::Starting, now);
        m.op_done(
            id,
            Outcome::Started(Box::new(status(id, RunState::Running, None))),
            now,
        );
    }
    m.take_effects();
    sent(m);
}

fn state_of(m: &Machine, task: &str) -> Option<TaskState> {
    m.snapshot()
        .into_iter()
        .find(|v| v.task_id == task)
        .map(|v| v.state)
}

// ---------------------------------------------------------------------------------------------
// Starting
// ---------------------------------------------------------------------------------------------

#[test]
fn a_full_set_is_cached_then_started_then_diffed_against_every_driver() {
    let mut m = machine(vec![]);
    m.apply(full_set(vec![running("t1")]), T0);
    let effects = m.take_effects();
    assert!(matches!(effects[0], Effect::Persist(ref rows) if rows.len() == 1));
    assert!(
        matches!(&effects[1], Effect::Op { task_id, driver, op: Op::Start(spec) }
            if task_id == "t1" && driver == "docker" && spec.task_id == "t1")
    );
    assert!(matches!(effects[2], Effect::Resync { stamp } if stamp == m.stamp()));
    assert_eq!(effects.len(), 3);
    // Nothing is reported before the start makes progress.
    assert!(sent(&mut m).is_empty());
}

#[test]
fn a_start_reports_preparing_starting_running_once() {
    let mut m = machine(vec![]);
    m.apply(full_set(vec![running("t1")]), T0);
    m.take_effects();
    m.progress("t1", TaskState::Preparing, T0);
    m.progress("t1", TaskState::Starting, T0);
    m.op_done(
        "t1",
        Outcome::Started(Box::new(status("t1", RunState::Running, None))),
        T0 + 5,
    );
    assert!(ops(&m.take_effects()).is_empty());
    let reports = m.next_batch(usize::MAX).expect("reports");
    let states: Vec<TaskState> = reports.iter().map(|r| r.state).collect();
    assert_eq!(
        states,
        [
            TaskState::Preparing,
            TaskState::Starting,
            TaskState::Running
        ]
    );
    assert_eq!(reports[2].at_ms, T0 + 5);
    // The same state again (a listing, a repeated set) is not reported again.
    m.listed(
        "docker",
        m.stamp(),
        vec![status("t1", RunState::Running, None)],
        T0,
    );
    m.apply(full_set(vec![running("t1")]), T0);
    assert!(ops(&m.take_effects()).is_empty());
    assert!(sent(&mut m).is_empty());
    // A new session is told everything.
    let current = m.current_reports(T0 + 9);
    assert_eq!(current.len(), 1);
    assert_eq!(
        (current[0].state, current[0].at_ms),
        (TaskState::Running, T0 + 9)
    );
}

#[test]
fn what_this_node_cannot_start_is_rejected() {
    let mut m = machine(vec![]);
    let mut nodriver = running("nodriver");
    nodriver.driver = "warp-drive".into();
    let mut badid = running("badid");
    badid.spec.task_id = "other".into();
    m.apply(
        full_set(vec![nodriver, badid, running("missing"), running("broken")]),
        T0,
    );
    assert_eq!(
        ops(&m.take_effects()),
        [op("broken", "start"), op("missing", "start")]
    );
    m.op_done(
        "missing",
        Outcome::StartFailed {
            rejected: true,
            error: "program /x cannot be run: no such file".into(),
        },
        T0,
    );
    m.op_done(
        "broken",
        Outcome::StartFailed {
            rejected: false,
            error: "it broke".into(),
        },
        T0,
    );
    let reports = m.next_batch(usize::MAX).expect("reports");
    let by_task: BTreeMap<&str, (TaskState, Option<&str>)> = reports
        .iter()
        .map(|r| (r.task_id.as_str(), (r.state, r.error.as_deref())))
        .collect();
    assert_eq!(by_task["missing"].0, TaskState::Rejected);
    assert_eq!(by_task["broken"], (TaskState::Failed, Some("it broke")));
    assert_eq!(by_task["nodriver"].0, TaskState::Rejected);
    assert!(
        by_task["nodriver"]
            .1
            .is_some_and(|e| e.contains("warp-drive"))
    );
    assert_eq!(by_task["badid"].0, TaskState::Rejected);
    assert!(by_task["badid"].1.is_some_and(|e| e.contains("other")));
    // Never started again.
    m.tick(T0 + HOUR_MS);
    assert!(ops(&m.take_effects()).is_empty());
}

#[test]
fn rejections_are_what_the_node_cannot_run() {
    assert!(is_rejection(&RuntimeError::InvalidSpec("x".into())));
    assert!(is_rejection(&RuntimeError::ProgramNotFound {
        path: "/x".into(),
        reason: "missing".into()
    }));
    assert!(!is_rejection(&RuntimeError::StartFailed {
        task_id: "t".into(),
        reason: "broke".into()
    }));
}

// ---------------------------------------------------------------------------------------------
// Stopping
// ---------------------------------------------------------------------------------------------

#[test]
fn an_unassigned_task_is_stopped_removed_reported_and_forgotten() {
    let mut m = machine(vec![]);
    started(&mut m, vec![running("t1"), running("t2")], T0);
    m.apply(full_set(vec![running("t2")]), T0);
    assert_eq!(ops(&m.take_effects()), [op("t1", "stop+remove")]);
    m.op_done("t1", Outcome::StopRemoved { found: true }, T0);
    assert_eq!(sent(&mut m), [rep("t1", TaskState::Shutdown)]);
    assert_eq!(state_of(&m, "t1"), None, "still known");
    // A delta removing t2 does the same.
    m.apply(
        AssignmentSet {
            full: false,
            tasks: vec![],
            removed: vec!["t2".into()],
        },
        T0,
    );
    assert_eq!(ops(&m.take_effects()), [op("t2", "stop+remove")]);
}

#[test]
fn desired_shutdown_stops_the_task_and_keeps_it() {
    let mut m = machine(vec![]);
    started(&mut m, vec![running("t1")], T0);
    m.apply(
        AssignmentSet {
            full: false,
            tasks: vec![assignment("t1", DesiredState::Shutdown)],
            removed: vec![],
        },
        T0,
    );
    assert_eq!(ops(&m.take_effects()), [op("t1", "stop")]);
    m.op_done(
        "t1",
        Outcome::Stopped(Seen::Present(Box::new(status(
            "t1",
            RunState::Exited,
            Some(143),
        )))),
        T0,
    );
    assert_eq!(sent(&mut m), [rep("t1", TaskState::Shutdown)]);
    assert_eq!(state_of(&m, "t1"), Some(TaskState::Shutdown));
    m.tick(T0 + 1);
    assert!(ops(&m.take_effects()).is_empty());
}

#[test]
fn a_failed_stop_is_retried_after_the_delay_only() {
    let mut m = machine(vec![]);
    started(&mut m, vec![running("t1")], T0);
    m.apply(full_set(vec![]), T0);
    assert_eq!(ops(&m.take_effects()), [op("t1", "stop+remove")]);
    m.op_done("t1", Outcome::Failed("engine said no".into()), T0);
    assert!(ops(&m.take_effects()).is_empty());
    m.tick(T0 + RETRY_AFTER_MS - 1);
    assert!(ops(&m.take_effects()).is_empty(), "retried too early");
    m.tick(T0 + RETRY_AFTER_MS);
    assert_eq!(ops(&m.take_effects()), [op("t1", "stop+remove")]);
    assert!(sent(&mut m).is_empty(), "reported before it stopped");
}

#[test]
fn a_stop_that_leaves_it_running_is_retried() {
    let mut m = machine(vec![]);
    started(&mut m, vec![running("t1")], T0);
    m.apply(
        AssignmentSet {
            full: false,
            tasks: vec![assignment("t1", DesiredState::Shutdown)],
            removed: vec![],
        },
        T0,
    );
    m.take_effects();
    let still = status("t1", RunState::Running, None);
    m.op_done("t1", Outcome::Stopped(Seen::Present(Box::new(still))), T0);
    // Reported stopped (it was asked to stop), but the copy still runs: stopped again later.
    assert_eq!(sent(&mut m), [rep("t1", TaskState::Shutdown)]);
    assert!(ops(&m.take_effects()).is_empty());
    m.tick(T0 + RETRY_AFTER_MS);
    assert_eq!(ops(&m.take_effects()), [op("t1", "stop")]);
}

// ---------------------------------------------------------------------------------------------
// Observations
// ---------------------------------------------------------------------------------------------

#[test]
fn exit_outcomes() {
    let mut s = status("t", RunState::Exited, Some(0));
    assert_eq!(exit_outcome(&s), (TaskState::Complete, Some(0), None));
    s.oom_killed = true;
    assert_eq!(
        exit_outcome(&s),
        (
            TaskState::Failed,
            Some(0),
            Some("killed by the OOM killer".into())
        )
    );
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
    s.error = Some("engine: died".into());
    assert_eq!(exit_outcome(&s).2.as_deref(), Some("engine: died"));
    s.error = None;
    s.exit_code = None;
    s.state = RunState::Dead;
    assert_eq!(exit_outcome(&s).0, TaskState::Failed);
}

#[test]
fn an_exit_event_is_inspected_then_reported_and_never_restarted() {
    let mut m = machine(vec![]);
    started(&mut m, vec![running("t1")], T0);
    let stamp = m.stamp();
    m.event(
        "docker",
        stamp,
        Event::Exited {
            task_id: "t1".into(),
            exit_code: Some(137),
        },
        T0,
    );
    assert_eq!(inspections(&m.take_effects()), [("t1".to_owned(), stamp)]);
    let dead = status("t1", RunState::Exited, Some(137));
    m.inspected(
        "docker",
        "t1",
        stamp,
        Inspection::Found(Box::new(dead)),
        T0 + 1,
    );
    let r = m.next_batch(usize::MAX).expect("report");
    assert_eq!((r[0].state, r[0].exit_code), (TaskState::Failed, Some(137)));
    m.tick(T0 + 2);
    assert!(ops(&m.take_effects()).is_empty(), "restarted in place");
}

#[test]
fn a_start_event_of_our_own_start_in_flight_is_not_inspected() {
    let mut m = machine(vec![]);
    m.apply(full_set(vec![running("t1")]), T0);
    assert_eq!(ops(&m.take_effects()), [("t1".to_owned(), "start")]);
    let started_event = || Event::Started {
        task_id: "t1".into(),
    };
    // The engine reports the start before our start request has returned: its outcome
    // will carry the status, so nothing is asked of the engine.
    let stamp = m.stamp();
    m.event("docker", stamp, started_event(), T0);
    assert!(inspections(&m.take_effects()).is_empty());
    m.op_done(
        "t1",
        Outcome::Started(Box::new(status("t1", RunState::Running, None))),
        T0,
    );
    m.take_effects();
    // Once no operation is in flight, a start event is inspected as any other.
    let stamp = m.stamp();
    m.event("docker", stamp, started_event(), T0 + 1);
    assert_eq!(inspections(&m.take_effects()), [("t1".to_owned(), stamp)]);
}

#[test]
fn a_task_missing_from_a_listing_is_inspected_before_it_counts_as_gone() {
    let mut m = machine(vec![]);
    started(&mut m, vec![running("t1")], T0);
    let stamp = m.stamp();
    m.listed("docker", stamp, vec![], T0);
    assert_eq!(inspections(&m.take_effects()), [("t1".to_owned(), stamp)]);
    assert!(sent(&mut m).is_empty(), "gone before the inspect said so");
    m.inspected("docker", "t1", stamp, Inspection::NotFound, T0);
    let r = m.next_batch(usize::MAX).expect("report");
    assert_eq!(r[0].state, TaskState::Failed);
    assert_eq!(
        r[0].error.as_deref(),
        Some("the task disappeared from the runtime")
    );
    assert!(ops(&m.take_effects()).is_empty(), "started again");
}

#[test]
fn observations_older_than_an_operation_or_backwards_are_ignored() {
    let mut m = machine(vec![]);
    m.apply(full_set(vec![running("t1")]), T0);
    m.take_effects();
    let before_start = m.stamp();
    // While the start is in flight, a listing without it changes nothing.
    m.listed("docker", before_start, vec![], T0);
    assert!(inspections(&m.take_effects()).is_empty());
    m.op_done(
        "t1",
        Outcome::Started(Box::new(status("t1", RunState::Running, None))),
        T0,
    );
    sent(&mut m);
    // An inspect started before the start ended says "not found": stale.
    m.inspected("docker", "t1", before_start, Inspection::NotFound, T0);
    // A listing from before the start shows it created: stale, and backwards anyway.
    m.listed(
        "docker",
        before_start,
        vec![status("t1", RunState::Created, None)],
        T0,
    );
    assert_eq!(state_of(&m, "t1"), Some(TaskState::Running));
    assert!(ops(&m.take_effects()).is_empty());
    // An exit seen, then a late "running": the runtime never goes backwards.
    let now = m.stamp();
    m.listed(
        "docker",
        now,
        vec![status("t1", RunState::Exited, Some(1))],
        T0,
    );
    m.listed(
        "docker",
        now,
        vec![status("t1", RunState::Running, None)],
        T0,
    );
    assert_eq!(state_of(&m, "t1"), Some(TaskState::Failed));
    // Another driver's copy of the same id is not this task.
    m.listed(
        "process",
        now,
        vec![status("t1", RunState::Running, None)],
        T0,
    );
    assert!(ops(&m.take_effects()).is_empty());
}

#[test]
fn health_follows_a_running_copy() {
    let mut m = machine(vec![]);
    started(&mut m, vec![running("t1")], T0);
    let mut s = status("t1", RunState::Running, None);
    s.health = Health::Healthy;
    m.listed("docker", m.stamp(), vec![s], T0);
    let r = m.next_batch(usize::MAX).expect("report");
    assert_eq!(
        (r[0].state, r[0].health),
        (TaskState::Running, TaskHealth::Healthy)
    );
    let v = m.snapshot();
    assert_eq!(v[0].health, TaskHealth::Healthy);
}

#[test]
fn a_stray_running_copy_of_an_ended_task_is_stopped() {
    let mut m = machine(vec![]);
    started(&mut m, vec![running("t1")], T0);
    let stamp = m.stamp();
    m.listed("docker", stamp, vec![], T0);
    m.inspected("docker", "t1", stamp, Inspection::NotFound, T0);
    assert_eq!(state_of(&m, "t1"), Some(TaskState::Failed));
    // It comes back (the engine had it after all): its slot has been replaced.
    m.listed(
        "docker",
        m.stamp(),
        vec![status("t1", RunState::Running, None)],
        T0,
    );
    assert_eq!(ops(&m.take_effects()), [op("t1", "stop")]);
}

// ---------------------------------------------------------------------------------------------
// Health
// ---------------------------------------------------------------------------------------------

fn unhealthy(task_id: &str) -> TaskStatus {
    let mut s = status(task_id, RunState::Running, None);
    s.health = Health::Unhealthy;
    s
}

fn stopped_unhealthy(task_id: &str, exit_code: i64) -> Outcome {
    let mut s = status(task_id, RunState::Exited, Some(exit_code));
    s.health = Health::Unhealthy;
    Outcome::Stopped(Seen::Present(Box::new(s)))
}

/// The grace of the one `stop-unhealthy` among the effects.
fn unhealthy_stop_grace(effects: &[Effect]) -> Option<std::time::Duration> {
    let graces: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Op {
                op: Op::StopUnhealthy { grace },
                ..
            } => Some(*grace),
            _ => None,
        })
        .collect();
    assert!(graces.len() <= 1, "{effects:?}");
    graces.first().copied()
}

#[test]
fn an_unhealthy_task_is_stopped_with_its_grace_and_reported_failed_once() {
    let mut m = machine(vec![]);
    let mut a = running("t1");
    a.spec.stop_grace = std::time::Duration::from_millis(2_500);
    started(&mut m, vec![a], T0);
    m.listed("docker", m.stamp(), vec![unhealthy("t1")], T0);
    let effects = m.take_effects();
    assert_eq!(ops(&effects), [op("t1", "stop-unhealthy")]);
    assert_eq!(
        unhealthy_stop_grace(&effects),
        Some(std::time::Duration::from_millis(2_500))
    );
    // Still running while it stops: only the health changed.
    let r = m.next_batch(usize::MAX).expect("report");
    assert_eq!(
        (r.len(), r[0].state, r[0].health),
        (1, TaskState::Running, TaskHealth::Unhealthy)
    );
    // Observations made while it stops change nothing (nor start a second stop).
    let stamp = m.stamp();
    m.listed("docker", stamp, vec![unhealthy("t1")], T0);
    m.event(
        "docker",
        stamp,
        Event::Exited {
            task_id: "t1".into(),
            exit_code: Some(143),
        },
        T0,
    );
    assert!(ops(&m.take_effects()).is_empty());

    m.op_done("t1", stopped_unhealthy("t1", 143), T0 + 10);
    let r = m.next_batch(usize::MAX).expect("report");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(
        (
            r[0].state,
            r[0].exit_code,
            r[0].error.as_deref(),
            r[0].health
        ),
        (
            TaskState::Failed,
            Some(143),
            Some("unhealthy container"),
            TaskHealth::Unhealthy
        )
    );
    // Never restarted in place, never reported twice: not by the exit event's inspection, not
    // by a resync, not by a later desired `shutdown` (the manager's replacement).
    let stamp = m.stamp();
    m.inspected(
        "docker",
        "t1",
        stamp,
        Inspection::Found(Box::new(status("t1", RunState::Exited, Some(143)))),
        T0 + 11,
    );
    m.listed(
        "docker",
        m.stamp(),
        vec![status("t1", RunState::Exited, Some(143))],
        T0 + 12,
    );
    m.tick(T0 + 13);
    m.apply(
        AssignmentSet {
            full: false,
            tasks: vec![assignment("t1", DesiredState::Shutdown)],
            removed: vec![],
        },
        T0 + 14,
    );
    assert!(ops(&m.take_effects()).is_empty());
    assert!(sent(&mut m).is_empty());
    assert_eq!(state_of(&m, "t1"), Some(TaskState::Failed));
    // The manager lets it go: removed, never reported again.
    m.apply(full_set(vec![]), T0 + 15);
    assert_eq!(ops(&m.take_effects()), [op("t1", "stop+remove")]);
    m.op_done("t1", Outcome::StopRemoved { found: true }, T0 + 16);
    assert!(sent(&mut m).is_empty());
}

#[test]
fn an_unhealthy_stop_that_fails_or_leaves_it_running_is_retried_then_shutdown_wins() {
    let mut m = machine(vec![]);
    started(&mut m, vec![running("t1")], T0);
    m.listed("docker", m.stamp(), vec![unhealthy("t1")], T0);
    assert_eq!(ops(&m.take_effects()), [op("t1", "stop-unhealthy")]);
    m.op_done("t1", Outcome::Failed("engine said no".into()), T0);
    m.tick(T0 + RETRY_AFTER_MS - 1);
    assert!(ops(&m.take_effects()).is_empty(), "retried too early");
    m.tick(T0 + RETRY_AFTER_MS);
    assert_eq!(ops(&m.take_effects()), [op("t1", "stop-unhealthy")]);
    // It still runs after the stop: not reported failed while it runs.
    m.op_done(
        "t1",
        Outcome::Stopped(Seen::Present(Box::new(unhealthy("t1")))),
        T0 + RETRY_AFTER_MS,
    );
    assert!(ops(&m.take_effects()).is_empty());
    let states: Vec<TaskState> = sent(&mut m).into_iter().map(|(_, s)| s).collect();
    assert!(
        states.iter().all(|s| *s == TaskState::Running),
        "{states:?}"
    );
    // Meanwhile the manager wants it shut down: a plain stop, reported `shutdown`.
    m.apply(
        AssignmentSet {
            full: false,
            tasks: vec![assignment("t1", DesiredState::Shutdown)],
            removed: vec![],
        },
        T0 + 2 * RETRY_AFTER_MS,
    );
    assert_eq!(ops(&m.take_effects()), [op("t1", "stop")]);
    m.op_done("t1", stopped_unhealthy("t1", 137), T0 + 2 * RETRY_AFTER_MS);
    let r = m.next_batch(usize::MAX).expect("report");
    assert_eq!(
        (r.len(), r[0].state, r[0].error.as_deref()),
        (1, TaskState::Shutdown, None)
    );
}

#[test]
fn an_unhealthy_task_is_not_stopped_before_a_manager_speaks() {
    // After a restart: adopted from the cache, unhealthy, no full set yet.
    let mut m = machine(vec![cached("t1", TaskState::Running)]);
    m.listed("docker", m.stamp(), vec![unhealthy("t1")], T0);
    assert!(ops(&m.take_effects()).is_empty());
    // The manager confirms it: now it is stopped.
    m.apply(full_set(vec![running("t1")]), T0);
    assert_eq!(ops(&m.take_effects()), [op("t1", "stop-unhealthy")]);
}

// ---------------------------------------------------------------------------------------------
// Restarts, tombstones, retention
// ---------------------------------------------------------------------------------------------

#[test]
fn after_a_restart_nothing_is_stopped_or_started_before_a_full_set() {
    let mut m = machine(vec![
        cached("t1", TaskState::Running),
        cached("t2", TaskState::Assigned),
    ]);
    // The drivers' first listing: t1 runs (adopted), a stray of this node runs too.
    m.listed(
        "docker",
        m.stamp(),
        vec![
            status("t1", RunState::Running, None),
            status("stray", RunState::Running, None),
        ],
        T0,
    );
    let effects = m.take_effects();
    assert!(ops(&effects).is_empty(), "{:?}", ops(&effects));
    assert_eq!(sent(&mut m), [rep("t1", TaskState::Running)]);
    m.apply(
        AssignmentSet {
            full: false,
            tasks: vec![],
            removed: vec![],
        },
        T0,
    );
    m.tick(T0 + HOUR_MS);
    assert!(ops(&m.take_effects()).is_empty());
    let snap = m.snapshot();
    assert!(snap.iter().all(|v| !v.confirmed));
    // The manager answers: t1 and t2 are ours, the stray is not.
    m.apply(full_set(vec![running("t1"), running("t2")]), T0);
    assert_eq!(
        ops(&m.take_effects()),
        [op("stray", "stop+remove"), op("t2", "start")]
    );
    m.op_done("stray", Outcome::StopRemoved { found: true }, T0);
    assert_eq!(sent(&mut m), [rep("stray", TaskState::Shutdown)]);
}

#[test]
fn a_copy_cached_as_assigned_that_the_runtime_had_is_reported_shutdown() {
    // The killed daemon's start was in flight: the cache says `assigned`.
    let mut m = machine(vec![
        cached("had", TaskState::Assigned),
        cached("never", TaskState::Assigned),
    ]);
    m.apply(full_set(vec![]), T0);
    assert_eq!(
        ops(&m.take_effects()),
        [op("had", "stop+remove"), op("never", "stop+remove")]
    );
    m.op_done("had", Outcome::StopRemoved { found: true }, T0);
    m.op_done("never", Outcome::StopRemoved { found: false }, T0);
    assert_eq!(sent(&mut m), [rep("had", TaskState::Shutdown)]);
}

#[test]
fn a_start_in_flight_when_withdrawn_is_stopped_once_it_returns() {
    let mut m = machine(vec![]);
    m.apply(full_set(vec![running("t1")]), T0);
    m.take_effects();
    m.progress("t1", TaskState::Preparing, T0);
    m.apply(full_set(vec![]), T0);
    assert!(ops(&m.take_effects()).is_empty(), "acted while busy");
    m.op_done(
        "t1",
        Outcome::Started(Box::new(status("t1", RunState::Created, None))),
        T0,
    );
    assert_eq!(ops(&m.take_effects()), [op("t1", "stop+remove")]);
    m.op_done("t1", Outcome::StopRemoved { found: true }, T0);
    assert_eq!(
        sent(&mut m),
        [
            rep("t1", TaskState::Preparing),
            rep("t1", TaskState::Shutdown)
        ]
    );
}

#[test]
fn a_task_whose_driver_is_missing_is_never_reported_stopped() {
    let mut m = Machine::new(
        ["process".to_owned()].into(),
        HOUR_MS,
        vec![
            cached("t1", TaskState::Running),
            cached("t2", TaskState::Running),
        ],
    );
    m.apply(full_set(vec![assignment("t2", DesiredState::Shutdown)]), T0);
    m.tick(T0 + HOUR_MS);
    let effects = m.take_effects();
    assert!(ops(&effects).is_empty());
    let reports = sent(&mut m);
    assert!(
        !reports.iter().any(|(_, s)| *s == TaskState::Shutdown),
        "reported stopped while it may run: {reports:?}"
    );
    // t1 (unassigned) is forgotten, t2 (assigned) kept as it was.
    assert_eq!(state_of(&m, "t1"), None);
    assert_eq!(state_of(&m, "t2"), Some(TaskState::Running));
}

#[test]
fn a_dropped_task_is_not_brought_back_by_a_stale_listing() {
    let mut m = machine(vec![]);
    started(&mut m, vec![running("t1")], T0);
    let old = m.stamp();
    m.apply(full_set(vec![]), T0);
    m.take_effects();
    m.op_done("t1", Outcome::StopRemoved { found: true }, T0);
    assert_eq!(state_of(&m, "t1"), None);
    // A listing started before the removal still shows it.
    m.listed(
        "docker",
        old,
        vec![status("t1", RunState::Running, None)],
        T0,
    );
    assert_eq!(state_of(&m, "t1"), None, "resurrected by a stale listing");
    // A newer listing that shows it is believed (and it is stopped).
    m.listed(
        "docker",
        m.stamp(),
        vec![status("t1", RunState::Running, None)],
        T0,
    );
    assert_eq!(ops(&m.take_effects()), [op("t1", "stop+remove")]);
}

#[test]
fn tombstones_expire() {
    let mut m = machine(vec![]);
    started(&mut m, vec![running("t1")], T0);
    let old = m.stamp();
    m.apply(full_set(vec![]), T0);
    m.op_done("t1", Outcome::StopRemoved { found: true }, T0);
    m.tick(T0 + TOMBSTONE_TTL_MS - 1);
    m.listed(
        "docker",
        old,
        vec![status("t1", RunState::Exited, Some(0))],
        T0,
    );
    assert_eq!(state_of(&m, "t1"), None);
    m.tick(T0 + TOMBSTONE_TTL_MS);
    m.listed(
        "docker",
        old,
        vec![status("t1", RunState::Exited, Some(0))],
        T0,
    );
    assert_eq!(state_of(&m, "t1"), Some(TaskState::Complete));
}

#[test]
fn ended_tasks_are_removed_after_retention_and_not_started_again() {
    let mut m = machine(vec![]);
    started(&mut m, vec![running("t1")], T0);
    m.listed(
        "docker",
        m.stamp(),
        vec![status("t1", RunState::Exited, Some(0))],
        T0,
    );
    assert_eq!(sent(&mut m), [rep("t1", TaskState::Complete)]);
    m.tick(T0 + HOUR_MS - 1);
    assert!(ops(&m.take_effects()).is_empty(), "removed too early");
    m.tick(T0 + HOUR_MS);
    assert_eq!(ops(&m.take_effects()), [op("t1", "remove")]);
    m.op_done("t1", Outcome::Removed, T0 + HOUR_MS);
    m.tick(T0 + 2 * HOUR_MS);
    assert!(ops(&m.take_effects()).is_empty());
    assert!(sent(&mut m).is_empty());
    assert_eq!(state_of(&m, "t1"), Some(TaskState::Complete));
    let rows = m.cache_rows();
    assert!(rows[0].removed);
    assert_eq!(rows[0].ended_at_ms, Some(T0));
}

// ---------------------------------------------------------------------------------------------
// Reports and the cache
// ---------------------------------------------------------------------------------------------

#[test]
fn coalesce_keeps_the_last_report_per_task() {
    let r = |task: &str, state| TaskReport {
        task_id: task.into(),
        state,
        exit_code: None,
        error: None,
        health: TaskHealth::None,
        at_ms: 0,
    };
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
fn batches_are_bounded_and_an_unsent_batch_is_coalesced_in_front() {
    let mut m = machine(vec![]);
    m.apply(full_set(vec![running("a"), running("b")]), T0);
    m.progress("a", TaskState::Preparing, T0);
    m.progress("b", TaskState::Preparing, T0);
    m.progress("a", TaskState::Starting, T0);
    assert_eq!(m.pending_len(), 3);
    let first = m.next_batch(2).expect("batch");
    assert_eq!(first.len(), 2);
    // The channel was full: back in front, coalesced with what is pending.
    m.unsent(first);
    assert_eq!(
        sent(&mut m),
        [
            rep("b", TaskState::Preparing),
            rep("a", TaskState::Starting)
        ]
    );
    assert!(m.next_batch(2).is_none());
}

#[test]
fn the_cache_is_written_when_behind_and_again_after_a_failed_write() {
    let mut m = machine(vec![]);
    assert!(m.persist_if_dirty().is_none());
    m.apply(full_set(vec![running("t1")]), T0);
    m.take_effects();
    // The set was written as part of applying it; the start's progress is not yet.
    m.progress("t1", TaskState::Preparing, T0);
    let rows = m.persist_if_dirty().expect("behind");
    assert_eq!(rows[0].state, TaskState::Preparing);
    assert!(m.persist_if_dirty().is_none());
    m.persist_failed();
    assert!(m.persist_if_dirty().is_some());
}
