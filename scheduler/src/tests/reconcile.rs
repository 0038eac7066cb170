use super::*;

/// Ends the active task of a slot as its worker would report it; returns its ID.
fn end_slot(v: &mut ClusterView, svc: &str, slot: u64, state: TaskState, at: Timestamp) -> TaskId {
    let id = task_in_slot(v, svc, slot).id.clone();
    let code = match state {
        TaskState::Complete => Some(0),
        TaskState::Failed => Some(1),
        _ => None,
    };
    sim::end_task(v, &id, state, code, at).expect("end task");
    id
}

fn slot_tasks<'a>(v: &'a ClusterView, svc: &str, slot: &Slot) -> Vec<&'a Task> {
    v.tasks
        .iter()
        .filter(|t| t.service_id.as_str() == svc && t.slot == *slot)
        .collect()
}

#[test]
fn creates_missing_slots_and_scales_down_highest_slots_first() {
    let mut v = view(nodes(&["a", "b", "c"]), vec![service("s", 6)]);
    let now = settle(&mut v, T0);
    assert_eq!(spread(&v, "s"), counts(&[("a", 2), ("b", 2), ("c", 2)]));
    assert!(
        active(&v, "s")
            .iter()
            .all(|t| t.state == TaskState::Running && t.attempt == 0)
    );

    service_mut(&mut v, "s").mode = ServiceMode::Replicated { replicas: 2 };
    let plan = reconcile(&v, now, &cfg());
    let mut stopped: Vec<u64> = plan
        .decisions
        .iter()
        .map(|d| match d {
            Decision::Shutdown {
                task,
                reason: ShutdownReason::ScaledDown,
            } => match v.tasks.iter().find(|t| t.id == *task).map(|t| &t.slot) {
                Some(Slot::Replica(n)) => *n,
                other => panic!("{other:?}"),
            },
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    stopped.sort_unstable();
    assert_eq!(stopped, vec![3, 4, 5, 6]);
    let now = settle(&mut v, now);
    let mut slots: Vec<Slot> = active(&v, "s").iter().map(|t| t.slot.clone()).collect();
    slots.sort();
    assert_eq!(slots, vec![Slot::Replica(1), Slot::Replica(2)]);

    service_mut(&mut v, "s").mode = ServiceMode::Replicated { replicas: 8 };
    settle(&mut v, now);
    assert_eq!(active(&v, "s").len(), 8);
    assert_eq!(
        spread(&v, "s").values().copied().collect::<Vec<_>>(),
        vec![3, 3, 2]
    );
    // Scaled-back-up slots get a new attempt; the stopped ones stay in history.
    assert_eq!(task_in_slot(&v, "s", 3).attempt, 1);
    assert_eq!(task_in_slot(&v, "s", 7).attempt, 0);
    assert_eq!(slot_tasks(&v, "s", &Slot::Replica(3)).len(), 2);
}

#[test]
fn scale_down_cancels_pending_tasks() {
    let svc = Service {
        max_replicas_per_node: Some(1),
        ..service("s", 3)
    };
    let mut v = view(nodes(&["a"]), vec![svc]);
    let now = settle(&mut v, T0);
    assert_eq!(spread(&v, "s"), counts(&[("", 2), ("a", 1)]));
    service_mut(&mut v, "s").mode = ServiceMode::Replicated { replicas: 1 };
    let plan = reconcile(&v, now, &cfg());
    assert_eq!(plan.decisions.len(), 2);
    assert!(plan.decisions.iter().all(|d| matches!(
        d,
        Decision::Cancel {
            reason: ShutdownReason::ScaledDown,
            ..
        }
    )));
    v.apply(&plan.decisions, now).expect("apply");
    assert!(
        v.tasks
            .iter()
            .filter(|t| t.node_id.is_none())
            .all(|t| t.state == TaskState::Shutdown)
    );
    assert!(reconcile(&v, now, &cfg()).decisions.is_empty());
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Replaced,
    WaitUntil(Timestamp),
    Never,
}

#[test]
fn restart_policy_timing() {
    use RestartCondition::{Any, None as Never_, OnFailure};
    use TaskState::{Complete, Failed, Rejected, Shutdown};
    let end = T0.plus_ms(60_000);
    let cases: Vec<(RestartCondition, u64, TaskState, u64, Outcome)> = vec![
        (
            Any,
            5_000,
            Failed,
            0,
            Outcome::WaitUntil(end.plus_ms(5_000)),
        ),
        (
            Any,
            5_000,
            Failed,
            4_999,
            Outcome::WaitUntil(end.plus_ms(5_000)),
        ),
        (Any, 5_000, Failed, 5_000, Outcome::Replaced),
        (Any, 5_000, Failed, 90_000, Outcome::Replaced),
        (Any, 5_000, Complete, 5_000, Outcome::Replaced),
        (Any, 0, Failed, 0, Outcome::Replaced),
        (OnFailure, 5_000, Complete, 60_000, Outcome::Never),
        (
            OnFailure,
            5_000,
            Failed,
            1_000,
            Outcome::WaitUntil(end.plus_ms(5_000)),
        ),
        (OnFailure, 5_000, Failed, 5_000, Outcome::Replaced),
        (OnFailure, 2_000, Rejected, 2_000, Outcome::Replaced),
        (OnFailure, 2_000, Shutdown, 2_000, Outcome::Replaced),
        (Never_, 5_000, Failed, 60_000, Outcome::Never),
        (Never_, 5_000, Complete, 60_000, Outcome::Never),
    ];
    for (condition, delay_ms, ended_as, after, expected) in cases {
        let mut svc = service("s", 1);
        svc.restart_policy = RestartPolicy {
            condition,
            delay_ms,
            max_attempts: 0,
            window_ms: 0,
        };
        let mut v = view(nodes(&["a"]), vec![svc]);
        settle(&mut v, T0);
        let old = end_slot(&mut v, "s", 1, ended_as, end);
        let now = end.plus_ms(after);
        let plan = reconcile(&v, now, &cfg());
        let got = match plan.decisions.as_slice() {
            [] => plan.next_wakeup.map_or(Outcome::Never, Outcome::WaitUntil),
            [
                Decision::Shutdown {
                    task,
                    reason: ShutdownReason::Replaced,
                },
                Decision::CreateTask(t),
            ] => {
                assert_eq!(*task, old);
                assert_eq!(
                    (t.slot.clone(), t.attempt, t.created_at),
                    (Slot::Replica(1), 1, now)
                );
                assert_eq!(t.node_id, Some(NodeId::from("a")));
                Outcome::Replaced
            }
            other => panic!("{condition:?} {ended_as:?}: unexpected {other:?}"),
        };
        assert_eq!(
            got, expected,
            "{condition:?} delay {delay_ms} {ended_as:?} +{after}"
        );
        // The ended task that is never replaced stays as it is: nothing to do next time either.
        if expected == Outcome::Never {
            assert!(
                reconcile(&v, now.plus_ms(3_600_000), &cfg())
                    .decisions
                    .is_empty()
            );
        }
    }
}

/// Fails the task of slot 1 each time it runs, `gap_ms` after it started, until no
/// replacement comes; returns how many times the slot ran.
fn runs_until_given_up(policy: RestartPolicy, gap_ms: u64, limit: usize) -> usize {
    let mut svc = service("s", 1);
    svc.restart_policy = policy;
    let mut v = view(nodes(&["a"]), vec![svc]);
    let mut now = settle(&mut v, T0);
    for run in 1..=limit {
        now = now.plus_ms(gap_ms);
        end_slot(&mut v, "s", 1, TaskState::Failed, now);
        now = settle(&mut v, now);
        if active(&v, "s").is_empty() {
            return run;
        }
    }
    limit
}

#[test]
fn max_attempts_within_window() {
    let policy = |max_attempts, window_ms| RestartPolicy {
        condition: RestartCondition::OnFailure,
        delay_ms: 1_000,
        max_attempts,
        window_ms,
    };
    let cases = [
        // (max attempts, window, time between failures, runs before giving up (cap 12))
        (0, 0, 100, 12),
        (1, 0, 100, 2),
        (2, 0, 100, 3),
        (3, 0, 60_000, 4),
        (2, 10_000, 100, 3),
        // Failures further apart than the window never exhaust the attempts.
        (2, 10_000, 20_000, 12),
        // 3 restarts within 15 s: failures 6 s apart (+1 s delay) exhaust at the 3rd restart.
        (2, 15_000, 6_000, 3),
    ];
    for (max, window, gap, expected) in cases {
        assert_eq!(
            runs_until_given_up(policy(max, window), gap, 12),
            expected,
            "max {max} window {window} gap {gap}"
        );
    }
}

#[test]
fn history_keeps_the_newest_five_ended_tasks_per_slot() {
    let mut svc = service("s", 2);
    svc.restart_policy.delay_ms = 0;
    let mut v = view(nodes(&["a"]), vec![svc]);
    let mut now = settle(&mut v, T0);
    for _ in 0..8 {
        now = now.plus_ms(1_000);
        end_slot(&mut v, "s", 1, TaskState::Failed, now);
        now = settle(&mut v, now);
    }
    let slot1 = slot_tasks(&v, "s", &Slot::Replica(1));
    let mut ended: Vec<u64> = slot1
        .iter()
        .filter(|t| t.state.is_terminal())
        .map(|t| t.attempt)
        .collect();
    ended.sort_unstable();
    assert_eq!(ended, vec![3, 4, 5, 6, 7]);
    assert_eq!(task_in_slot(&v, "s", 1).attempt, 8);
    assert_eq!(slot_tasks(&v, "s", &Slot::Replica(2)).len(), 1);

    let custom = ReconcileConfig {
        history_limit: 2,
        ..cfg()
    };
    let plan = reconcile(&v, now, &custom);
    assert_eq!(
        plan.decisions
            .iter()
            .filter(|d| matches!(d, Decision::RemoveTask { .. }))
            .count(),
        3
    );
}

#[test]
fn tasks_of_down_nodes_are_orphaned_and_replaced_in_the_same_plan() {
    let mut v = view(nodes(&["a", "b", "c"]), vec![service("s", 3)]);
    let now = settle(&mut v, T0);
    let on_c = active(&v, "s")
        .iter()
        .find(|t| t.node_id == Some(NodeId::from("c")))
        .map(|t| (t.id.clone(), t.slot.clone()));
    let Some((orphan, slot)) = on_c else {
        panic!("no task on c")
    };
    node_mut(&mut v, "c").status = NodeStatus::Down;
    let plan = reconcile(&v, now, &cfg());
    match plan.decisions.as_slice() {
        [Decision::MarkOrphaned { task }, Decision::CreateTask(t)] => {
            assert_eq!(*task, orphan);
            assert_eq!(
                (t.slot.clone(), t.attempt, t.node_id.clone()),
                (slot, 1, Some(NodeId::from("a")))
            );
        }
        other => panic!("{other:?}"),
    }
    let now = settle(&mut v, now);
    assert_eq!(spread(&v, "s"), counts(&[("a", 2), ("b", 1)]));
    let o = v
        .tasks
        .iter()
        .find(|t| t.id == orphan)
        .expect("orphan kept in history");
    assert_eq!(
        (o.state, o.desired_state),
        (TaskState::Orphaned, DesiredState::Shutdown)
    );

    // The node comes back: nothing moves back, nothing is duplicated.
    node_mut(&mut v, "c").status = NodeStatus::Ready;
    assert!(reconcile(&v, now, &cfg()).decisions.is_empty());

    // A node removed from the view entirely is treated like a down one.
    v.nodes.retain(|n| n.id.as_str() != "b");
    let plan = reconcile(&v, now, &cfg());
    assert!(
        matches!(plan.decisions.as_slice(), [Decision::MarkOrphaned { .. }, Decision::CreateTask(t)] if t.node_id == Some(NodeId::from("c"))),
        "{plan:?}"
    );
}

#[test]
fn unknown_status_keeps_tasks_and_takes_nothing_new() {
    let mut v = view(nodes(&["a", "b"]), vec![service("s", 2)]);
    let now = settle(&mut v, T0);
    node_mut(&mut v, "b").status = NodeStatus::Unknown;
    assert!(reconcile(&v, now, &cfg()).decisions.is_empty());
    service_mut(&mut v, "s").mode = ServiceMode::Replicated { replicas: 3 };
    settle(&mut v, now);
    assert_eq!(spread(&v, "s"), counts(&[("a", 2), ("b", 1)]));
}

#[test]
fn drain_starts_the_replacement_before_stopping_the_old_task() {
    let mut v = view(nodes(&["a", "b"]), vec![service("s", 2)]);
    let now = settle(&mut v, T0);
    let old = active(&v, "s")
        .iter()
        .find(|t| t.node_id == Some(NodeId::from("a")))
        .map(|t| t.id.clone())
        .expect("task on a");
    node_mut(&mut v, "a").availability = Availability::Drain;

    let plan = reconcile(&v, now, &cfg());
    let [Decision::CreateTask(new)] = plan.decisions.as_slice() else {
        panic!("{plan:?}")
    };
    assert_eq!(new.node_id, Some(NodeId::from("b")));
    assert_eq!(
        plan.next_wakeup,
        Some(now.plus_ms(cfg().handover_timeout_ms))
    );
    v.apply(&plan.decisions, now).expect("apply");
    // Replacement assigned but not running yet: the old task keeps running.
    assert!(reconcile(&v, now.plus_ms(500), &cfg()).decisions.is_empty());
    sim::run_workers(&mut v, now.plus_ms(600));
    let plan = reconcile(&v, now.plus_ms(700), &cfg());
    assert_eq!(
        plan.decisions,
        vec![Decision::Shutdown {
            task: old,
            reason: ShutdownReason::NodeDrained
        }]
    );
    let now = settle(&mut v, now.plus_ms(700));
    assert_eq!(spread(&v, "s"), counts(&[("b", 2)]));

    // Back to active: nothing moves back by itself (Swarm behaviour), new tasks may go there.
    node_mut(&mut v, "a").availability = Availability::Active;
    assert!(reconcile(&v, now, &cfg()).decisions.is_empty());
    service_mut(&mut v, "s").mode = ServiceMode::Replicated { replicas: 4 };
    settle(&mut v, now);
    assert_eq!(spread(&v, "s"), counts(&[("a", 2), ("b", 2)]));
}

#[test]
fn drain_without_room_elsewhere_stops_the_old_task_after_the_handover_timeout() {
    let mut v = view(nodes(&["a"]), vec![service("s", 1)]);
    let now = settle(&mut v, T0);
    let old = task_in_slot(&v, "s", 1).id.clone();
    node_mut(&mut v, "a").availability = Availability::Drain;
    let plan = reconcile(&v, now, &cfg());
    let [Decision::CreateTask(new)] = plan.decisions.as_slice() else {
        panic!("{plan:?}")
    };
    assert_eq!(
        new.pending_reason
            .as_ref()
            .map(ToString::to_string)
            .as_deref(),
        Some("no suitable node: 1 node is drained")
    );
    v.apply(&plan.decisions, now).expect("apply");
    let timeout = cfg().handover_timeout_ms;
    let plan = reconcile(&v, now.plus_ms(timeout - 1), &cfg());
    assert_eq!(
        (plan.decisions.len(), plan.next_wakeup),
        (0, Some(now.plus_ms(timeout)))
    );
    let plan = reconcile(&v, now.plus_ms(timeout), &cfg());
    assert_eq!(
        plan.decisions,
        vec![Decision::Shutdown {
            task: old,
            reason: ShutdownReason::NodeDrained
        }]
    );
}

#[test]
fn drain_stops_tasks_that_are_not_running_yet_at_once() {
    let mut v = view(nodes(&["a", "b"]), vec![service("s", 1)]);
    let plan = reconcile(&v, T0, &cfg());
    v.apply(&plan.decisions, T0).expect("apply");
    let old = task_in_slot(&v, "s", 1).id.clone();
    node_mut(&mut v, "a").availability = Availability::Drain;
    let plan = reconcile(&v, T0, &cfg());
    match plan.decisions.as_slice() {
        [
            Decision::Shutdown {
                task,
                reason: ShutdownReason::NodeDrained,
            },
            Decision::CreateTask(t),
        ] => {
            assert_eq!(*task, old);
            assert_eq!(t.node_id, Some(NodeId::from("b")));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn drain_cancelled_before_handover_keeps_the_old_task() {
    let mut v = view(nodes(&["a", "b"]), vec![service("s", 1)]);
    let now = settle(&mut v, T0);
    let old = task_in_slot(&v, "s", 1).id.clone();
    node_mut(&mut v, "a").availability = Availability::Drain;
    let plan = reconcile(&v, now, &cfg());
    v.apply(&plan.decisions, now).expect("apply");
    node_mut(&mut v, "a").availability = Availability::Active;
    let plan = reconcile(&v, now, &cfg());
    let [
        Decision::Shutdown {
            task,
            reason: ShutdownReason::Duplicate,
        },
    ] = plan.decisions.as_slice()
    else {
        panic!("{plan:?}")
    };
    assert_ne!(*task, old);
    settle(&mut v, now);
    assert_eq!(task_in_slot(&v, "s", 1).id, old);
}

#[test]
fn tasks_move_when_a_constraint_stops_matching() {
    let mut a = node("a");
    a.labels.insert("zone".into(), "attic".into());
    let mut b = node("b");
    b.labels.insert("zone".into(), "attic".into());
    let mut svc = service("s", 2);
    svc.constraints = Constraint::parse_all(&["node.labels.zone==attic"]).unwrap_or_default();
    let mut v = view(vec![a, b, node("c")], vec![svc]);
    let now = settle(&mut v, T0);
    assert_eq!(spread(&v, "s"), counts(&[("a", 1), ("b", 1)]));
    node_mut(&mut v, "a").labels.clear();
    let plan = reconcile(&v, now, &cfg());
    assert!(
        matches!(plan.decisions.as_slice(), [Decision::CreateTask(t)] if t.node_id == Some(NodeId::from("b"))),
        "{plan:?}"
    );
    settle(&mut v, now);
    assert_eq!(spread(&v, "s"), counts(&[("b", 2)]));
    let stopped = v
        .tasks
        .iter()
        .filter(|t| t.node_id == Some(NodeId::from("a")))
        .count();
    assert_eq!(stopped, 1);
}

#[test]
fn global_mode_follows_nodes_joining_leaving_and_changing() {
    let mut v = view(nodes(&["a", "b"]), vec![global("g")]);
    let now = settle(&mut v, T0);
    assert_eq!(spread(&v, "g"), counts(&[("a", 1), ("b", 1)]));

    // A node joins: one more task, on it.
    v.nodes.push(node("c"));
    let plan = reconcile(&v, now, &cfg());
    assert!(
        matches!(plan.decisions.as_slice(), [Decision::CreateTask(t)] if t.slot == Slot::Node(NodeId::from("c")) && t.node_id == Some(NodeId::from("c"))),
        "{plan:?}"
    );
    let now = settle(&mut v, now);

    // A node goes down: its task is orphaned and not replaced elsewhere.
    node_mut(&mut v, "c").status = NodeStatus::Down;
    let plan = reconcile(&v, now, &cfg());
    assert!(
        matches!(plan.decisions.as_slice(), [Decision::MarkOrphaned { .. }]),
        "{plan:?}"
    );
    let now = settle(&mut v, now);
    assert_eq!(spread(&v, "g"), counts(&[("a", 1), ("b", 1)]));

    // It comes back: a new task there.
    node_mut(&mut v, "c").status = NodeStatus::Ready;
    let now = settle(&mut v, now);
    assert_eq!(spread(&v, "g"), counts(&[("a", 1), ("b", 1), ("c", 1)]));
    let c_slot = Slot::Node(NodeId::from("c"));
    assert_eq!(slot_tasks(&v, "g", &c_slot).len(), 2);

    // Drained: shut down, not replaced; paused: kept; a paused node joining gets nothing.
    node_mut(&mut v, "b").availability = Availability::Drain;
    node_mut(&mut v, "a").availability = Availability::Pause;
    let mut d = node("d");
    d.availability = Availability::Pause;
    v.nodes.push(d);
    let plan = reconcile(&v, now, &cfg());
    assert!(
        matches!(
            plan.decisions.as_slice(),
            [Decision::Shutdown {
                reason: ShutdownReason::NodeDrained,
                ..
            }]
        ),
        "{plan:?}"
    );
    let now = settle(&mut v, now);
    assert_eq!(spread(&v, "g"), counts(&[("a", 1), ("c", 1)]));

    // Leaving the view (node rm): orphaned, then its history is removed.
    v.nodes.retain(|n| n.id.as_str() != "c");
    let now = settle(&mut v, now);
    assert_eq!(spread(&v, "g"), counts(&[("a", 1)]));
    assert!(slot_tasks(&v, "g", &c_slot).is_empty());

    // Constraint: only labelled nodes; removing the label stops the task there.
    node_mut(&mut v, "b").availability = Availability::Active;
    node_mut(&mut v, "d").availability = Availability::Active;
    node_mut(&mut v, "d")
        .labels
        .insert("gpu".into(), "yes".into());
    service_mut(&mut v, "g").constraints =
        Constraint::parse_all(&["node.labels.gpu==yes"]).unwrap_or_default();
    let now = settle(&mut v, now);
    assert_eq!(spread(&v, "g"), counts(&[("d", 1)]));
    node_mut(&mut v, "d").labels.clear();
    let plan = reconcile(&v, now, &cfg());
    assert!(
        matches!(
            plan.decisions.as_slice(),
            [Decision::Shutdown {
                reason: ShutdownReason::ConstraintNotMet,
                ..
            }]
        ),
        "{plan:?}"
    );
}

#[test]
fn global_task_pending_on_a_node_without_room_is_placed_when_room_appears() {
    let mut small = node("s1");
    small.capacity.memory_bytes = GIB;
    let mut svc = global("g");
    svc.reservations.memory_bytes = 2 * GIB;
    let mut v = view(vec![node("big"), small], vec![svc]);
    let now = settle(&mut v, T0);
    assert_eq!(spread(&v, "g"), counts(&[("", 1), ("big", 1)]));
    assert_eq!(
        pending_reasons(&v, "g"),
        vec!["no suitable node: 1 node has insufficient free memory for 2 GiB"]
    );
    assert!(reconcile(&v, now, &cfg()).decisions.is_empty());
    node_mut(&mut v, "s1").capacity.memory_bytes = 4 * GIB;
    let plan = reconcile(&v, now, &cfg());
    assert!(
        matches!(plan.decisions.as_slice(), [Decision::Assign { node, .. }] if node.as_str() == "s1"),
        "{plan:?}"
    );
    // A pending global task whose node is drained meanwhile is cancelled.
    node_mut(&mut v, "s1").capacity.memory_bytes = GIB;
    node_mut(&mut v, "s1").availability = Availability::Drain;
    let plan = reconcile(&v, now, &cfg());
    assert!(
        matches!(
            plan.decisions.as_slice(),
            [Decision::Cancel {
                reason: ShutdownReason::NodeDrained,
                ..
            }]
        ),
        "{plan:?}"
    );
}

#[test]
fn removed_service_tasks_are_stopped_then_deleted() {
    let mut v = view(
        nodes(&["a", "b"]),
        vec![service("s", 3), service("keep", 1)],
    );
    let now = settle(&mut v, T0);
    v.services.retain(|s| s.id.as_str() != "s");
    let plan = reconcile(&v, now, &cfg());
    assert_eq!(plan.decisions.len(), 3);
    assert!(plan.decisions.iter().all(|d| matches!(
        d,
        Decision::Shutdown {
            reason: ShutdownReason::ServiceRemoved,
            ..
        }
    )));
    settle(&mut v, now);
    assert!(v.tasks.iter().all(|t| t.service_id.as_str() == "keep"));
    assert_eq!(v.tasks.len(), 1);
}

#[test]
fn duplicate_tasks_in_a_slot_keep_the_most_advanced() {
    let mut v = view(nodes(&["a", "b"]), vec![service("s", 1)]);
    let now = settle(&mut v, T0);
    let mut dup = task_in_slot(&v, "s", 1).clone();
    dup.id = TaskId::from("dup");
    dup.state = TaskState::Assigned;
    dup.node_id = Some(NodeId::from("b"));
    v.tasks.push(dup);
    let plan = reconcile(&v, now, &cfg());
    assert_eq!(
        plan.decisions,
        vec![Decision::Shutdown {
            task: TaskId::from("dup"),
            reason: ShutdownReason::Duplicate
        }]
    );
}

#[test]
fn same_input_in_any_order_gives_the_same_plan() {
    let mut svc = service("s", 7);
    svc.reservations.memory_bytes = 3 * GIB;
    let mut v = view(
        nodes(&["a", "b", "c", "d"]),
        vec![svc, global("g"), service("t", 5)],
    );
    let now = settle(&mut v, T0);
    end_slot(&mut v, "s", 2, TaskState::Failed, now);
    end_slot(&mut v, "t", 1, TaskState::Complete, now);
    node_mut(&mut v, "b").status = NodeStatus::Down;
    node_mut(&mut v, "c").availability = Availability::Drain;
    service_mut(&mut v, "t").mode = ServiceMode::Replicated { replicas: 9 };
    let later = now.plus_ms(6_000);
    let plan = reconcile(&v, later, &cfg());
    assert!(plan.decisions.len() > 5, "{plan:?}");
    assert_eq!(reconcile(&v, later, &cfg()), plan);
    let mut shuffled = v.clone();
    shuffled.nodes.reverse();
    shuffled.services.rotate_left(1);
    shuffled.tasks.reverse();
    shuffled.tasks.rotate_left(3);
    assert_eq!(reconcile(&shuffled, later, &cfg()), plan);
}

#[test]
fn task_ids_are_deterministic_unique_and_docker_shaped() {
    let v = view(nodes(&["a"]), vec![service("s", 50), global("g")]);
    let p1 = reconcile(&v, T0, &cfg());
    let p2 = reconcile(&v, T0, &cfg());
    assert_eq!(p1, p2);
    let ids: BTreeSet<String> = p1
        .decisions
        .iter()
        .filter_map(|d| match d {
            Decision::CreateTask(t) => Some(t.id.0.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(ids.len(), 51);
    assert!(ids.iter().all(|id| {
        id.len() == 25
            && id
                .bytes()
                .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    }));
    // A different time gives different IDs (a re-created slot never reuses an old ID).
    let p3 = reconcile(&v, T0.plus_ms(1), &cfg());
    let CreateIds(later) = CreateIds::from(&p3);
    assert!(later.is_disjoint(&ids));
    // An ID that is already taken is skipped.
    let taken = derive_task_id(&ServiceId::from("s"), &Slot::Replica(1), 0, T0, 0);
    let mut v2 = v;
    v2.services.truncate(1);
    v2.services[0].mode = ServiceMode::Replicated { replicas: 2 };
    let mut squatter = match &p1.decisions[0] {
        Decision::CreateTask(t) => t.clone(),
        other => panic!("{other:?}"),
    };
    squatter.id = taken.clone();
    squatter.service_id = ServiceId::from("s");
    squatter.slot = Slot::Replica(2);
    v2.tasks.push(squatter);
    let plan = reconcile(&v2, T0, &cfg());
    let CreateIds(got) = CreateIds::from(&plan);
    assert_eq!(got.len(), 1);
    assert!(!got.contains(&taken.0));
}

struct CreateIds(BTreeSet<String>);

impl From<&Plan> for CreateIds {
    fn from(plan: &Plan) -> Self {
        Self(
            plan.decisions
                .iter()
                .filter_map(|d| match d {
                    Decision::CreateTask(t) => Some(t.id.0.clone()),
                    _ => None,
                })
                .collect(),
        )
    }
}

#[test]
fn apply_rejects_unknown_and_duplicate_tasks() {
    let mut v = view(nodes(&["a"]), vec![service("s", 1)]);
    let plan = reconcile(&v, T0, &cfg());
    v.apply(&plan.decisions, T0).expect("apply");
    assert_eq!(
        v.apply(&plan.decisions, T0),
        Err(ApplyError::DuplicateTask(
            task_in_slot(&v, "s", 1).id.clone()
        ))
    );
    let ghost = TaskId::from("ghost");
    assert_eq!(
        v.apply(
            &[Decision::RemoveTask {
                task: ghost.clone()
            }],
            T0
        ),
        Err(ApplyError::UnknownTask(ghost))
    );
}
