//! Rolling updates: the reconciler's replacing and `assess`'s verdicts, driven round by round
//! by a simulated worker that starts, stops and health-checks tasks.

use super::*;

fn rolling(parallelism: u64, start_first: bool, started_at: Timestamp) -> RollingUpdate {
    RollingUpdate {
        current_versions: Vec::new(),
        parallelism,
        delay_ms: 0,
        start_first,
        paused: false,
        started_at,
        monitor_ms: 1_000,
        max_failure_ratio_ppm: 0,
        require_healthy: false,
    }
}

/// Starts an update of service `svc` to `version` with `u`.
fn begin(v: &mut ClusterView, svc: &str, version: u64, u: RollingUpdate) {
    let s = service_mut(v, svc);
    s.spec_version = version;
    s.update = Some(u);
}

/// One simulated worker round: stops what is to stop, starts what is assigned; a started
/// task of a service that requires health reports `starting` first, then `healthy` a round
/// later (unless its version is in `sick`, which stays `starting`).
fn work(v: &mut ClusterView, now: Timestamp, sick: &[u64]) {
    let require: BTreeSet<ServiceId> = v
        .services
        .iter()
        .filter(|s| s.update.as_ref().is_some_and(|u| u.require_healthy))
        .map(|s| s.id.clone())
        .collect();
    for t in &mut v.tasks {
        if t.state.is_terminal() || t.state.is_unassigned() {
            continue;
        }
        match t.desired_state {
            DesiredState::Shutdown => {
                t.state = TaskState::Shutdown;
                t.ended_at = Some(now);
                t.updated_at = now;
                v.health.remove(&t.id);
            }
            DesiredState::Running if t.state != TaskState::Running => {
                t.state = TaskState::Running;
                t.updated_at = now;
                if require.contains(&t.service_id) {
                    v.health.insert(t.id.clone(), TaskHealth::Starting);
                }
            }
            DesiredState::Running => {
                if v.health.get(&t.id) == Some(&TaskHealth::Starting)
                    && !sick.contains(&t.spec_version)
                {
                    v.health.insert(t.id.clone(), TaskHealth::Healthy);
                }
            }
        }
    }
}

/// Tasks wanted running that run (and are healthy, when `healthy`).
fn serving(v: &ClusterView, svc: &str, healthy: bool) -> usize {
    active(v, svc)
        .iter()
        .filter(|t| t.state == TaskState::Running)
        .filter(|t| !healthy || v.health.get(&t.id) == Some(&TaskHealth::Healthy))
        .count()
}

/// Runs reconcile → apply → check → work for at most `rounds` rounds, 100 ms apart, calling
/// `check` after every apply; returns the time when the update was judged complete.
fn drive(
    v: &mut ClusterView,
    svc: &str,
    mut now: Timestamp,
    rounds: usize,
    sick: &[u64],
    mut check: impl FnMut(&ClusterView),
) -> Option<Timestamp> {
    for _ in 0..rounds {
        let plan = reconcile(v, now, &cfg());
        v.apply(&plan.decisions, now).expect("apply");
        check(v);
        let service = v.services.iter().find(|s| s.id.as_str() == svc).cloned();
        if let Some(service) = service
            && assess(v, &service, now) == Some(UpdateAssessment::Completed)
        {
            return Some(now);
        }
        work(v, now, sick);
        check(v);
        now = now.plus_ms(100);
    }
    None
}

fn versions(v: &ClusterView, svc: &str) -> Vec<u64> {
    let mut out: Vec<u64> = active(v, svc).iter().map(|t| t.spec_version).collect();
    out.sort_unstable();
    out
}

fn healthy_start(v: &mut ClusterView) {
    let ids: Vec<TaskId> = v.tasks.iter().map(|t| t.id.clone()).collect();
    for id in ids {
        v.health.insert(id, TaskHealth::Healthy);
    }
}

#[test]
fn stop_first_replaces_one_slot_at_a_time_and_never_drops_below_replicas_minus_parallelism() {
    for parallelism in [1, 2] {
        let mut v = view(nodes(&["a", "b"]), vec![service("s", 4)]);
        let now = settle(&mut v, T0);
        begin(&mut v, "s", 2, rolling(parallelism, false, now));
        let mut least = usize::MAX;
        let done = drive(&mut v, "s", now, 200, &[], |v| {
            least = least.min(serving(v, "s", false));
        });
        assert!(done.is_some(), "parallelism {parallelism}: not completed");
        assert_eq!(versions(&v, "s"), vec![2; 4]);
        assert_eq!(least, 4 - parallelism as usize, "parallelism {parallelism}");
        // Every slot was replaced exactly once: one task of version 2 per slot.
        let new: Vec<&Task> = v.tasks.iter().filter(|t| t.spec_version == 2).collect();
        assert_eq!(new.len(), 4);
    }
}

#[test]
fn start_first_with_health_keeps_every_slot_healthy_and_stops_old_only_after_new_is_healthy() {
    let mut v = view(nodes(&["a", "b"]), vec![service("s", 4)]);
    let now = settle(&mut v, T0);
    healthy_start(&mut v);
    let mut u = rolling(2, true, now);
    u.require_healthy = true;
    begin(&mut v, "s", 2, u);
    let mut least = usize::MAX;
    let done = drive(&mut v, "s", now, 200, &[], |v| {
        least = least.min(serving(v, "s", true));
    });
    assert!(done.is_some());
    assert_eq!(versions(&v, "s"), vec![2; 4]);
    assert_eq!(least, 4, "a moment had fewer healthy tasks than replicas");
}

#[test]
fn start_first_never_stops_an_old_task_while_the_new_one_is_unhealthy() {
    let mut v = view(nodes(&["a", "b"]), vec![service("s", 3)]);
    let now = settle(&mut v, T0);
    healthy_start(&mut v);
    let mut u = rolling(1, true, now);
    u.require_healthy = true;
    begin(&mut v, "s", 2, u);
    assert_eq!(drive(&mut v, "s", now, 50, &[2], |_| {}), None);
    // The first slot has both tasks; nothing old was stopped and no other slot started.
    let old: Vec<&Task> = active(&v, "s")
        .into_iter()
        .filter(|t| t.spec_version == 1)
        .collect();
    assert_eq!(old.len(), 3);
    assert_eq!(versions(&v, "s"), vec![1, 1, 1, 2]);
}

#[test]
fn paused_update_starts_no_further_slot() {
    let mut v = view(nodes(&["a"]), vec![service("s", 3)]);
    let now = settle(&mut v, T0);
    let mut u = rolling(1, false, now);
    u.paused = true;
    begin(&mut v, "s", 2, u);
    assert_eq!(drive(&mut v, "s", now, 30, &[], |_| {}), None);
    assert_eq!(versions(&v, "s"), vec![1, 1, 1]);
}

#[test]
fn rollback_replaces_only_tasks_of_the_spec_rolled_back_from() {
    let mut v = view(nodes(&["a", "b"]), vec![service("s", 4)]);
    let now = settle(&mut v, T0);
    // Version 2 reached two slots, then the update paused.
    begin(&mut v, "s", 2, rolling(2, true, now));
    let mut now = now;
    for _ in 0..10 {
        let plan = reconcile(&v, now, &cfg());
        v.apply(&plan.decisions, now).expect("apply");
        work(&mut v, now, &[]);
        now = now.plus_ms(100);
        if versions(&v, "s") == vec![1, 1, 2, 2] {
            break;
        }
    }
    assert_eq!(versions(&v, "s"), vec![1, 1, 2, 2]);
    let untouched: BTreeSet<TaskId> = active(&v, "s")
        .iter()
        .filter(|t| t.spec_version == 1)
        .map(|t| t.id.clone())
        .collect();
    // Rollback: version 3 is version 1's spec again.
    let mut u = rolling(1, true, now);
    u.current_versions = vec![1];
    begin(&mut v, "s", 3, u);
    let done = drive(&mut v, "s", now, 200, &[], |_| {});
    assert!(done.is_some());
    let still: BTreeSet<TaskId> = active(&v, "s")
        .iter()
        .filter(|t| t.spec_version == 1)
        .map(|t| t.id.clone())
        .collect();
    assert_eq!(
        still, untouched,
        "the tasks of the restored spec were replaced"
    );
    assert_eq!(versions(&v, "s"), vec![1, 1, 3, 3]);
}

#[test]
fn delay_waits_between_batches() {
    let mut v = view(nodes(&["a"]), vec![service("s", 3)]);
    let now = settle(&mut v, T0);
    let mut u = rolling(1, false, now);
    u.delay_ms = 5_000;
    u.monitor_ms = 0;
    begin(&mut v, "s", 2, u);
    // 100 ms rounds: three slots with two 5 s delays between them cannot finish in 5 s.
    assert_eq!(drive(&mut v, "s", now, 50, &[], |_| {}), None);
    assert_eq!(versions(&v, "s"), vec![1, 1, 2]);
    let plan = reconcile(&v, now.plus_ms(5_000), &cfg());
    assert!(plan.next_wakeup.is_some() || !plan.decisions.is_empty());
    assert!(drive(&mut v, "s", now.plus_ms(5_000), 200, &[], |_| {}).is_some());
}

#[test]
fn global_services_update_node_by_node() {
    let mut v = view(nodes(&["a", "b", "c"]), vec![global("g")]);
    let now = settle(&mut v, T0);
    begin(&mut v, "g", 2, rolling(1, false, now));
    let mut least = usize::MAX;
    assert!(
        drive(&mut v, "g", now, 200, &[], |v| least =
            least.min(serving(v, "g", false)))
        .is_some()
    );
    assert_eq!(versions(&v, "g"), vec![2; 3]);
    assert_eq!(least, 2);
}

#[test]
fn assess_counts_failures_of_the_new_spec_but_not_orphans() {
    let mut v = view(nodes(&["a", "b"]), vec![service("s", 2)]);
    let now = settle(&mut v, T0);
    begin(&mut v, "s", 2, rolling(1, false, now));
    // Replace the first slot.
    let mut now = now;
    while !versions(&v, "s").contains(&2)
        || active(&v, "s")
            .iter()
            .any(|t| t.state != TaskState::Running)
    {
        let plan = reconcile(&v, now, &cfg());
        v.apply(&plan.decisions, now).expect("apply");
        work(&mut v, now, &[]);
        now = now.plus_ms(100);
    }
    let new = active(&v, "s")
        .into_iter()
        .find(|t| t.spec_version == 2)
        .expect("new")
        .id
        .clone();
    let svc = v.services[0].clone();
    assert!(matches!(
        assess(&v, &svc, now),
        Some(UpdateAssessment::InProgress {
            updated: 1,
            total: 2,
            ..
        })
    ));
    // Its node dies: not a failure.
    let mut dead = v.clone();
    dead.tasks
        .iter_mut()
        .find(|t| t.id == new)
        .expect("t")
        .state = TaskState::Orphaned;
    assert!(matches!(
        assess(&dead, &svc, now),
        Some(UpdateAssessment::InProgress { .. })
    ));
    // It fails: a failure, with ratio 0.
    sim::end_task(&mut v, &new, TaskState::Failed, Some(3), now).expect("end");
    match assess(&v, &svc, now) {
        Some(UpdateAssessment::Failed { task, message }) => {
            assert_eq!(task, new);
            assert!(message.contains("failed (exit code 3)"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    // One failure of two slots is within a ratio of 0.5.
    let mut lenient = svc;
    if let Some(u) = lenient.update.as_mut() {
        u.max_failure_ratio_ppm = 500_000;
    }
    assert!(matches!(
        assess(&v, &lenient, now),
        Some(UpdateAssessment::InProgress { .. })
    ));
}

#[test]
fn assess_completes_only_after_the_monitor_window() {
    let mut v = view(nodes(&["a"]), vec![service("s", 1)]);
    let now = settle(&mut v, T0);
    let mut u = rolling(1, false, now);
    u.monitor_ms = 5_000;
    begin(&mut v, "s", 2, u);
    let mut now = now;
    for _ in 0..10 {
        let plan = reconcile(&v, now, &cfg());
        v.apply(&plan.decisions, now).expect("apply");
        work(&mut v, now, &[]);
        now = now.plus_ms(100);
    }
    let svc = v.services[0].clone();
    let ready_at = task_in_slot(&v, "s", 1).updated_at;
    match assess(&v, &svc, now) {
        Some(UpdateAssessment::InProgress {
            updated: 1,
            total: 1,
            wakeup,
        }) => {
            assert_eq!(wakeup, Some(ready_at.plus_ms(5_000)));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        assess(&v, &svc, ready_at.plus_ms(5_000)),
        Some(UpdateAssessment::Completed)
    );
}

#[test]
fn rollback_replaces_a_failed_new_task_at_once_without_the_restart_delay() {
    let mut v = view(nodes(&["a"]), vec![service("s", 1)]);
    let now = settle(&mut v, T0);
    begin(&mut v, "s", 2, rolling(1, false, now));
    let mut now = now;
    while versions(&v, "s") != vec![2] || task_in_slot(&v, "s", 1).state != TaskState::Running {
        let plan = reconcile(&v, now, &cfg());
        v.apply(&plan.decisions, now).expect("apply");
        work(&mut v, now, &[]);
        now = now.plus_ms(100);
    }
    let new = task_in_slot(&v, "s", 1).id.clone();
    sim::end_task(&mut v, &new, TaskState::Failed, Some(1), now).expect("end");
    // Rolled back to version 1's spec (as version 3).
    let mut u = rolling(1, false, now);
    u.current_versions = vec![1];
    begin(&mut v, "s", 3, u);
    let plan = reconcile(&v, now, &cfg());
    assert!(
        plan.decisions
            .iter()
            .any(|d| matches!(d, Decision::CreateTask(t) if t.spec_version == 3)),
        "{plan:?}"
    );
}

#[test]
fn start_first_update_keeps_the_spread() {
    let mut v = view(nodes(&["a", "b", "c"]), vec![service("s", 3)]);
    let now = settle(&mut v, T0);
    assert_eq!(spread(&v, "s"), counts(&[("a", 1), ("b", 1), ("c", 1)]));
    begin(&mut v, "s", 2, rolling(1, true, now));
    assert!(drive(&mut v, "s", now, 200, &[], |_| {}).is_some());
    assert_eq!(versions(&v, "s"), vec![2; 3]);
    assert_eq!(spread(&v, "s"), counts(&[("a", 1), ("b", 1), ("c", 1)]));
}

#[test]
fn a_version_that_dies_just_after_starting_takes_down_only_the_first_slot() {
    let mut v = view(nodes(&["a", "b"]), vec![service("s", 4)]);
    let now = settle(&mut v, T0);
    let mut u = rolling(1, false, now);
    u.monitor_ms = 5_000;
    begin(&mut v, "s", 2, u);
    let mut now = now;
    for _ in 0..30 {
        let plan = reconcile(&v, now, &cfg());
        v.apply(&plan.decisions, now).expect("apply");
        work(&mut v, now, &[]);
        // Version 2 runs for 300 ms, then exits.
        let dying: Vec<TaskId> = v
            .tasks
            .iter()
            .filter(|t| {
                t.spec_version == 2
                    && t.state == TaskState::Running
                    && t.updated_at.plus_ms(300) <= now
            })
            .map(|t| t.id.clone())
            .collect();
        for id in dying {
            sim::end_task(&mut v, &id, TaskState::Failed, Some(1), now).expect("end");
        }
        // The orchestrator pauses a failed update.
        let svc = v.services[0].clone();
        if let Some(UpdateAssessment::Failed { .. }) = assess(&v, &svc, now) {
            service_mut(&mut v, "s")
                .update
                .as_mut()
                .expect("update")
                .paused = true;
        }
        now = now.plus_ms(100);
    }
    let stopped_good = v
        .tasks
        .iter()
        .filter(|t| t.spec_version == 1 && t.desired_state == DesiredState::Shutdown)
        .count();
    assert_eq!(
        stopped_good, 1,
        "good tasks stopped before the first new one proved itself"
    );
}

/// Chaos seed 404 (issue 20): an update that replaces one still in flight found slot 1
/// serving its old version and slot 2 running the previous update's task, not healthy yet.
/// It took its one slot of parallelism on slot 1 — the only task serving — and the service
/// served nothing until slot 2 became healthy. A slot whose outdated task is not ready is
/// replaced first, and counts against the parallelism for the ready ones.
#[test]
fn issue_20_an_update_over_an_update_in_flight_replaces_the_unready_slot_first() {
    let mut v = view(nodes(&["a", "b"]), vec![service("s", 2)]);
    let now = settle(&mut v, T0);
    healthy_start(&mut v);
    // Slot 2 runs the task of an earlier update (version 2), still starting.
    let t2 = v
        .tasks
        .iter_mut()
        .find(|t| t.slot == Slot::Replica(2) && t.desired_state == DesiredState::Running)
        .expect("slot 2");
    t2.spec_version = 2;
    let t2 = t2.id.clone();
    v.health.insert(t2.clone(), TaskHealth::Starting);
    let mut u = rolling(1, false, now);
    u.require_healthy = true;
    begin(&mut v, "s", 3, u);
    let plan = reconcile(&v, now, &cfg());
    v.apply(&plan.decisions, now).expect("apply");
    let stopping: Vec<&Task> = v
        .tasks
        .iter()
        .filter(|t| t.desired_state == DesiredState::Shutdown)
        .collect();
    assert_eq!(stopping.len(), 1, "{stopping:?}");
    assert_eq!(stopping[0].id, t2, "the serving task was taken instead");
    let mut least = usize::MAX;
    let done = drive(&mut v, "s", now, 200, &[], |v| {
        least = least.min(serving(v, "s", true));
    });
    assert!(done.is_some(), "not completed");
    assert_eq!(versions(&v, "s"), vec![3, 3]);
    assert_eq!(least, 1, "a moment with no healthy task");
}
