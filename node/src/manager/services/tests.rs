//! Tests of the services state machine (create, scale, update, remove, the orchestrator's
//! decisions, worker reports) and helpers the other services tests share.

use std::collections::BTreeMap;

use shoal_scheduler::{Decision, NodeId, ServiceId, TaskState, Timestamp};

use super::*;
use crate::api::services::{ServiceRow, TaskFilter, task_rows};
use crate::manager::orchestrator::plan;
use crate::manager::state::{
    Availability, ClusterRecord, ClusterState, Command, CommandResult, NodeRecord, NodeStatus, Role,
};

pub(crate) fn node(id: &str, role: Role) -> NodeRecord {
    NodeRecord {
        id: id.into(),
        public_key: [id.bytes().fold(0u8, u8::wrapping_add); 32],
        raft_id: u64::from(id.bytes().fold(0u8, u8::wrapping_add)),
        hostname: format!("host-{id}"),
        addr: "127.0.0.1:4747".into(),
        role,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        labels: BTreeMap::new(),
        platform: "linux/x86_64".into(),
        memory_bytes: 4 << 30,
        cpus: 4,
        drivers: vec!["docker".into(), "process".into()],
        version: "0".into(),
        created_at: 1,
        updated_at: 1,
    }
}

/// A cluster of three ready nodes (n1 manager, n2 and n3 workers).
pub(crate) fn cluster() -> ClusterState {
    let mut s = ClusterState::default();
    let init = Command::InitCluster {
        cluster: ClusterRecord {
            id: "c1".into(),
            created_at: 1,
            ca_cert_der: vec![1],
            ca_key_der: vec![2],
            worker_token_generation: 0,
            manager_token_generation: 0,
            task_history_limit: 5,
        },
        node: node("n1", Role::Manager),
    };
    assert_eq!(s.apply(&init), CommandResult::Done);
    for id in ["n2", "n3"] {
        assert_eq!(
            s.apply(&Command::UpsertNode(node(id, Role::Worker))),
            CommandResult::Done
        );
    }
    s
}

pub(crate) fn svc(s: &mut ClusterState, cmd: ServiceCommand) -> CommandResult {
    s.apply(&Command::Services(cmd))
}

pub(crate) fn replicated(name: &str, replicas: u64) -> ServiceSpec {
    let mut spec = ServiceSpec::new(name, "shoal-test/busybox:latest");
    spec.mode = ServiceMode::Replicated { replicas };
    spec
}

pub(crate) fn create(s: &mut ClusterState, id: &str, spec: ServiceSpec) -> CommandResult {
    svc(s, ServiceCommand::create(ServiceRecord::new(id, spec, 100)))
}

pub(crate) fn report(task: &str, state: TaskState) -> TaskReport {
    TaskReport {
        task_id: task.into(),
        state,
        exit_code: None,
        error: None,
        health: TaskHealth::None,
        at_ms: 0,
    }
}

/// Commits one orchestrator pass; returns how many decisions it had.
/// The update verdicts it commits count too.
pub(crate) fn orchestrate(s: &mut ClusterState, now: u64) -> usize {
    let (mut view, config, watches) = crate::manager::orchestrator::view(s).expect("initialized");
    let (judged, _) =
        crate::manager::orchestrator::verdicts(&view, &watches, shoal_scheduler::Timestamp(now));
    crate::manager::orchestrator::hold_failed(&mut view, &judged);
    let decisions =
        shoal_scheduler::reconcile(&view, shoal_scheduler::Timestamp(now), &config).decisions;
    let n = decisions.len() + judged.len();
    if !decisions.is_empty() {
        let cmd = ServiceCommand::ApplyDecisions { decisions, now };
        assert_eq!(svc(s, cmd), CommandResult::Done);
    }
    for cmd in judged {
        assert_eq!(svc(s, cmd), CommandResult::Done);
    }
    n
}

/// What the workers of ready nodes report: assigned tasks run, stopped ones shut down.
pub(crate) fn run_workers(s: &mut ClusterState, now: u64) -> usize {
    let ready: Vec<String> = s
        .nodes
        .values()
        .filter(|n| n.status == NodeStatus::Ready)
        .map(|n| n.id.clone())
        .collect();
    let mut changed = 0;
    for n in ready {
        let reports: Vec<TaskReport> = assignments_for(&s.services, &n)
            .into_iter()
            .filter_map(|a| {
                let cur = s.services.tasks[&a.task_id].state;
                match a.desired {
                    crate::worker::DesiredState::Running if cur != TaskState::Running => {
                        Some(report(&a.task_id, TaskState::Running))
                    }
                    crate::worker::DesiredState::Shutdown if !cur.is_terminal() => {
                        Some(report(&a.task_id, TaskState::Shutdown))
                    }
                    // Ended: kept (its logs), nothing to report.
                    crate::worker::DesiredState::Shutdown => None,
                    crate::worker::DesiredState::Running => None,
                }
            })
            .collect();
        changed += reports.len();
        if !reports.is_empty() {
            let cmd = ServiceCommand::TaskReports {
                node_id: n,
                reports,
                at: now,
            };
            assert_eq!(svc(s, cmd), CommandResult::Done);
        }
    }
    changed
}

/// Orchestrator passes and worker reports until nothing changes; returns the time.
pub(crate) fn converge(s: &mut ClusterState, mut now: u64) -> u64 {
    for _ in 0..50 {
        let decided = orchestrate(s, now);
        let reported = run_workers(s, now);
        if decided == 0 && reported == 0 {
            return now;
        }
        now += 10;
    }
    panic!("no fixed point after 50 rounds");
}

pub(crate) fn active_on(s: &ClusterState, service: &str) -> BTreeMap<String, usize> {
    let mut per_node = BTreeMap::new();
    for t in s.services.tasks_of(service) {
        if t.is_active() && t.state == TaskState::Running {
            let n = t.node_id.as_ref().map(|n| n.0.clone()).unwrap_or_default();
            *per_node.entry(n).or_insert(0) += 1;
        }
    }
    per_node
}

#[test]
fn create_scale_update_remove() {
    let mut s = cluster();
    assert_eq!(
        create(&mut s, "s1", replicated("web", 2)),
        CommandResult::Done
    );
    let before = s.clone();
    // Duplicate ID and name, bad spec, bad ID: refused, nothing changed.
    for (id, spec) in [
        ("s1", replicated("other", 1)),
        ("s2", replicated("web", 1)),
        ("s2", replicated("-bad", 1)),
        ("bad id", replicated("fine", 1)),
    ] {
        assert!(matches!(
            create(&mut s, id, spec),
            CommandResult::Refused(_)
        ));
    }
    assert_eq!(s, before);

    let scale = |id: &str, replicas| ServiceCommand::Scale {
        id: id.into(),
        replicas,
        at: 200,
    };
    assert_eq!(svc(&mut s, scale("s1", 5)), CommandResult::Done);
    let rec = &s.services.services["s1"];
    assert_eq!(rec.spec.mode, ServiceMode::Replicated { replicas: 5 });
    assert_eq!((rec.version, rec.updated_at), (1, 200));
    assert!(
        matches!(svc(&mut s, scale("nope", 1)), CommandResult::Refused(r) if r.contains("no such service"))
    );
    assert!(matches!(
        svc(&mut s, scale("s1", MAX_REPLICAS + 1)),
        CommandResult::Refused(_)
    ));
    let mut global = replicated("g", 1);
    global.mode = ServiceMode::Global;
    assert_eq!(create(&mut s, "g1", global), CommandResult::Done);
    assert!(
        matches!(svc(&mut s, scale("g1", 3)), CommandResult::Refused(r) if r.contains("global"))
    );

    // Update bumps the version and keeps the old spec; rollback swaps back.
    let mut v2 = s.services.services["s1"].spec.clone();
    v2.image = "img:v2".into();
    let update = ServiceCommand::update("s1", v2.clone(), 300);
    assert_eq!(svc(&mut s, update), CommandResult::Done);
    let rec = &s.services.services["s1"];
    assert_eq!(rec.version, 2);
    assert_eq!(rec.spec.image, "img:v2");
    assert_eq!(
        rec.previous_spec.as_ref().map(|p| p.image.as_str()),
        Some("shoal-test/busybox:latest")
    );
    let mut renamed = v2;
    renamed.name = "web2".into();
    let update = ServiceCommand::update("s1", renamed, 301);
    assert!(matches!(svc(&mut s, update), CommandResult::Refused(r) if r.contains("renamed")));
    let rollback = ServiceCommand::Rollback {
        id: "s1".into(),
        at: 302,
    };
    assert_eq!(svc(&mut s, rollback), CommandResult::Done);
    let rec = &s.services.services["s1"];
    assert_eq!(
        (rec.version, rec.spec.image.as_str()),
        (3, "shoal-test/busybox:latest")
    );

    // Ports: one publisher per port.
    let mut p1 = replicated("p1", 1);
    p1.ports = vec![PortSpec::tcp(8080, 80)];
    assert_eq!(create(&mut s, "p1", p1.clone()), CommandResult::Done);
    p1.name = "p2".into();
    assert!(
        matches!(create(&mut s, "p2", p1), CommandResult::Refused(r) if r.contains("already published"))
    );

    // Resolve by ID, name, prefix.
    assert_eq!(s.services.resolve_service("s1").unwrap().id, "s1");
    assert_eq!(s.services.resolve_service("web").unwrap().id, "s1");
    assert_eq!(s.services.resolve_service("g").unwrap().id, "g1");
    assert_eq!(s.services.resolve_service("p").unwrap().id, "p1");
    assert_eq!(
        create(&mut s, "p3", replicated("other", 1)),
        CommandResult::Done
    );
    assert!(
        s.services
            .resolve_service("p")
            .unwrap_err()
            .contains("ambiguous")
    );
    assert!(
        s.services
            .resolve_service("zz")
            .unwrap_err()
            .contains("no such service")
    );
    assert!(s.services.resolve_service("").is_err());

    // Remove without tasks: gone entirely; the name is free again.
    let remove = ServiceCommand::Remove {
        id: "s1".into(),
        at: 400,
    };
    assert_eq!(svc(&mut s, remove.clone()), CommandResult::Done);
    assert!(!s.services.services.contains_key("s1"));
    assert!(s.services.removed.is_empty());
    assert!(matches!(svc(&mut s, remove), CommandResult::Refused(_)));
    assert_eq!(
        create(&mut s, "s9", replicated("web", 1)),
        CommandResult::Done
    );
}

#[test]
fn decisions_place_on_ready_nodes_and_converge() {
    let mut s = cluster();
    assert_eq!(
        create(&mut s, "s1", replicated("web", 6)),
        CommandResult::Done
    );
    let now = converge(&mut s, 1_000);
    let per_node = active_on(&s, "s1");
    assert_eq!(per_node.values().sum::<usize>(), 6);
    assert!(per_node.values().all(|&n| n == 2), "{per_node:?}");
    let row = ServiceRow::of(&s.services, &s.services.services["s1"]);
    assert_eq!(
        (row.running, row.replicas, row.desired_tasks),
        (6, Some(6), 6)
    );

    // Scale down then up.
    let scale = ServiceCommand::Scale {
        id: "s1".into(),
        replicas: 2,
        at: now,
    };
    svc(&mut s, scale);
    let now = converge(&mut s, now + 10);
    assert_eq!(active_on(&s, "s1").values().sum::<usize>(), 2);
    let scale = ServiceCommand::Scale {
        id: "s1".into(),
        replicas: 8,
        at: now,
    };
    svc(&mut s, scale);
    let now = converge(&mut s, now + 10);
    assert_eq!(active_on(&s, "s1").values().sum::<usize>(), 8);

    // A node goes down: its tasks are orphaned and replaced on the others.
    s.apply(&Command::SetNodeStatus {
        id: "n3".into(),
        status: NodeStatus::Down,
        at: now,
    });
    let now = converge(&mut s, now + 10);
    let per_node = active_on(&s, "s1");
    assert_eq!(per_node.values().sum::<usize>(), 8);
    assert!(!per_node.contains_key("n3"));
    assert!(
        s.services
            .tasks
            .values()
            .any(|t| t.state == TaskState::Orphaned)
    );
    // It comes back: its orphans are not assigned to it, so its worker stops the old
    // copies; only tasks that ended there before (the scale-down) are, as `shutdown`, kept
    // for their logs.
    s.apply(&Command::SetNodeStatus {
        id: "n3".into(),
        status: NodeStatus::Ready,
        at: now,
    });
    let kept = assignments_for(&s.services, "n3");
    assert!(
        kept.iter().all(|a| {
            let t = &s.services.tasks[&a.task_id];
            a.desired == crate::worker::DesiredState::Shutdown && t.state == TaskState::Shutdown
        }),
        "{kept:?}"
    );
    // Orphaned → shutdown is the one move out of a terminal state.
    let orphan = s
        .services
        .tasks
        .values()
        .find(|t| t.state == TaskState::Orphaned)
        .map(|t| t.id.0.clone())
        .unwrap();
    let cmd = ServiceCommand::TaskReports {
        node_id: "n3".into(),
        reports: vec![report(&orphan, TaskState::Shutdown)],
        at: now + 1,
    };
    svc(&mut s, cmd);
    assert_eq!(s.services.tasks[&orphan].state, TaskState::Shutdown);

    // Remove: tasks are stopped, then removed, then the record goes.
    let remove = ServiceCommand::Remove {
        id: "s1".into(),
        at: now + 2,
    };
    assert_eq!(svc(&mut s, remove), CommandResult::Done);
    assert!(s.services.removed.contains_key("s1"));
    let stopping = assignments_for(&s.services, "n1");
    orchestrate(&mut s, now + 3);
    let stopping_after = assignments_for(&s.services, "n1");
    assert_eq!(stopping.len(), stopping_after.len());
    assert!(
        stopping_after
            .iter()
            .all(|a| a.desired == crate::worker::DesiredState::Shutdown)
    );
    converge(&mut s, now + 10);
    assert!(s.services.tasks.is_empty(), "{:?}", s.services.tasks);
    assert!(s.services.removed.is_empty());
}

#[test]
fn failed_task_is_replaced_after_the_delay_and_stays_in_history() {
    let mut s = cluster();
    let mut spec = replicated("web", 1);
    spec.restart_policy.delay_ms = 100;
    create(&mut s, "s1", spec);
    let now = converge(&mut s, 1_000);
    let t = s.services.tasks.values().next().unwrap().clone();
    let node = t.node_id.clone().unwrap().0;
    let mut r = report(t.id.as_str(), TaskState::Failed);
    r.exit_code = Some(137);
    r.error = Some("killed".into());
    let cmd = ServiceCommand::TaskReports {
        node_id: node,
        reports: vec![r],
        at: now + 1,
    };
    svc(&mut s, cmd);
    let failed = &s.services.tasks[t.id.as_str()];
    assert_eq!(failed.state, TaskState::Failed);
    assert_eq!(failed.exit_code, Some(137));
    assert_eq!(failed.ended_at, Some(Timestamp(now + 1)));
    // Not before the delay.
    let (d, wakeup) = plan(&s, now + 2).unwrap();
    assert!(d.is_empty());
    assert_eq!(wakeup, Some(Timestamp(now + 101)));
    converge(&mut s, now + 101);
    assert_eq!(s.services.tasks.len(), 2);
    assert_eq!(active_on(&s, "s1").values().sum::<usize>(), 1);
    let rows = task_rows(&s.services, &s.nodes, TaskFilter::Service("s1"));
    assert_eq!(rows.len(), 2);
    // Newest attempt first, then the failed one with its error and exit code.
    assert_eq!(rows[0].state, "running");
    assert_eq!(rows[1].state, "failed");
    assert_eq!(rows[1].desired_state, "shutdown");
    assert_eq!(rows[1].exit_code, Some(137));
    assert_eq!(rows[1].error.as_deref(), Some("killed"));
    assert_eq!(rows[1].service, "web");
    assert_eq!(rows[1].slot, Some(1));
    assert!(
        rows[1]
            .node
            .as_deref()
            .is_some_and(|h| h.starts_with("host-"))
    );
    assert!(
        rows[1]
            .ended_at
            .as_deref()
            .is_some_and(|e| e.ends_with('Z'))
    );
}

#[test]
fn pending_tasks_say_why() {
    let mut s = cluster();
    let mut spec = replicated("big", 1);
    spec.reservations.memory_bytes = 1 << 40;
    create(&mut s, "s1", spec);
    orchestrate(&mut s, 1_000);
    let rows = task_rows(&s.services, &s.nodes, TaskFilter::All);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].state, "pending");
    assert_eq!(rows[0].node_id, None);
    assert!(
        rows[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("insufficient free memory")),
        "{:?}",
        rows[0].error
    );
    // No change: no further decision.
    assert_eq!(orchestrate(&mut s, 1_010), 0);
}

#[test]
fn reports_from_another_node_are_ignored() {
    let mut s = cluster();
    create(&mut s, "s1", replicated("web", 1));
    orchestrate(&mut s, 1_000);
    let t = s.services.tasks.values().next().unwrap().clone();
    let owner = t.node_id.clone().unwrap().0;
    let other = ["n1", "n2", "n3"]
        .into_iter()
        .find(|n| *n != owner)
        .unwrap();
    let before = s.clone();
    let mut ss = s.services.clone();
    let out = ss.apply(
        &ServiceCommand::TaskReports {
            node_id: other.into(),
            reports: vec![
                report(t.id.as_str(), TaskState::Running),
                report("no-such-task", TaskState::Running),
            ],
            at: 1_001,
        },
        &s.nodes,
    );
    assert_eq!(
        out,
        Ok(ServiceOutcome::Reports {
            accepted: 0,
            ignored: 2
        })
    );
    assert_eq!(ss, before.services);
    // Workers may not claim orchestrator states.
    let out = ss.apply(
        &ServiceCommand::TaskReports {
            node_id: owner.clone(),
            reports: vec![
                report(t.id.as_str(), TaskState::Orphaned),
                report(t.id.as_str(), TaskState::Pending),
            ],
            at: 1_001,
        },
        &s.nodes,
    );
    assert!(matches!(
        out,
        Ok(ServiceOutcome::Reports { accepted: 0, .. })
    ));
    assert_eq!(ss, before.services);
}

#[test]
fn terminal_states_never_regress() {
    let mut s = cluster();
    create(&mut s, "s1", replicated("web", 1));
    orchestrate(&mut s, 1_000);
    let t = s.services.tasks.values().next().unwrap().clone();
    let owner = t.node_id.clone().unwrap().0;
    let id = t.id.0;
    let send = |s: &mut ClusterState, states: &[TaskState], at: u64| {
        let reports = states.iter().map(|&st| report(&id, st)).collect();
        let cmd = ServiceCommand::TaskReports {
            node_id: owner.clone(),
            reports,
            at,
        };
        svc(s, cmd);
    };
    send(&mut s, &[TaskState::Running, TaskState::Starting], 1_001);
    assert_eq!(s.services.tasks[&id].state, TaskState::Running);
    send(&mut s, &[TaskState::Complete], 1_002);
    send(
        &mut s,
        &[TaskState::Running, TaskState::Failed, TaskState::Shutdown],
        1_003,
    );
    let task = &s.services.tasks[&id];
    assert_eq!(task.state, TaskState::Complete);
    assert_eq!(task.ended_at, Some(Timestamp(1_002)));
    assert_eq!(task.updated_at, Timestamp(1_002));
}

#[test]
fn stale_decisions_are_skipped() {
    let mut s = cluster();
    create(&mut s, "s1", replicated("web", 2));
    let (decisions, _) = plan(&s, 1_000).unwrap();
    let mut ss = s.services.clone();
    let cmd = ServiceCommand::ApplyDecisions {
        decisions,
        now: 1_000,
    };
    assert_eq!(
        ss.apply(&cmd, &s.nodes),
        Ok(ServiceOutcome::Decisions {
            applied: 2,
            skipped: 0
        })
    );
    // The same plan again: every CreateTask exists already.
    let again = ss.clone();
    assert_eq!(
        ss.apply(&cmd, &s.nodes),
        Ok(ServiceOutcome::Decisions {
            applied: 0,
            skipped: 2
        })
    );
    assert_eq!(ss, again);
    // Decisions for unknown tasks, a removed service, a gone node: skipped, no error.
    let tid = ss.tasks.keys().next().unwrap().clone();
    let mut orphan_task = ss.tasks[&tid].clone();
    orphan_task.id = shoal_scheduler::TaskId("x".into());
    orphan_task.service_id = ServiceId("gone".into());
    let bogus = vec![
        Decision::Assign {
            task: shoal_scheduler::TaskId("nope".into()),
            node: NodeId("n1".into()),
        },
        Decision::RemoveTask {
            task: shoal_scheduler::TaskId(tid.clone()),
        },
        Decision::CreateTask(orphan_task),
        Decision::MarkOrphaned {
            task: shoal_scheduler::TaskId(tid.clone()),
        },
        Decision::MarkOrphaned {
            task: shoal_scheduler::TaskId(tid.clone()),
        },
    ];
    let out = ss.apply(
        &ServiceCommand::ApplyDecisions {
            decisions: bogus,
            now: 1_001,
        },
        &s.nodes,
    );
    assert_eq!(
        out,
        Ok(ServiceOutcome::Decisions {
            applied: 1,
            skipped: 4
        })
    );
    assert_eq!(ss.tasks[&tid].state, TaskState::Orphaned);
    assert_eq!(ss.tasks.len(), 2);
}

#[test]
fn health_is_recorded_while_running() {
    let mut s = cluster();
    create(&mut s, "s1", replicated("web", 1));
    orchestrate(&mut s, 1_000);
    let t = s.services.tasks.values().next().unwrap().clone();
    let mut r = report(t.id.as_str(), TaskState::Running);
    r.health = TaskHealth::Healthy;
    let node_id = t.node_id.clone().unwrap().0;
    svc(
        &mut s,
        ServiceCommand::TaskReports {
            node_id: node_id.clone(),
            reports: vec![r],
            at: 1_001,
        },
    );
    let rows = task_rows(&s.services, &s.nodes, TaskFilter::Node(&node_id));
    assert_eq!(rows[0].health.as_deref(), Some("healthy"));
    svc(
        &mut s,
        ServiceCommand::TaskReports {
            node_id,
            reports: vec![report(t.id.as_str(), TaskState::Failed)],
            at: 1_002,
        },
    );
    assert!(s.services.health.is_empty());
}

fn script() -> Vec<Command> {
    let mut cmds = vec![
        Command::Services(ServiceCommand::create(ServiceRecord::new(
            "s1",
            replicated("web", 4),
            10,
        ))),
        Command::Services(ServiceCommand::create(ServiceRecord::new(
            "s2",
            replicated("web", 1),
            11,
        ))),
    ];
    cmds.push(Command::Services(ServiceCommand::Scale {
        id: "s1".into(),
        replicas: 3,
        at: 12,
    }));
    cmds
}

#[test]
fn state_round_trips_and_apply_is_deterministic() {
    let run = || {
        let mut s = cluster();
        for c in script() {
            s.apply(&c);
        }
        let now = converge(&mut s, 1_000);
        s.apply(&Command::SetNodeStatus {
            id: "n2".into(),
            status: NodeStatus::Down,
            at: now,
        });
        converge(&mut s, now + 10);
        s.services.services.get_mut("s1").unwrap().update_status = Some(UpdateStatus {
            state: UpdateState::Completed,
            started_at: Some(1),
            completed_at: Some(2),
            message: "done".into(),
        });
        s
    };
    let a = run();
    let b = run();
    assert!(!a.services.tasks.is_empty());
    assert_eq!(a.encode(), b.encode());
    let decoded = ClusterState::decode(&a.encode()).unwrap();
    assert_eq!(decoded, a);
    // Commands round-trip too (they are what the log holds).
    let (decisions, _) = plan(&cluster_with_service(), 5).unwrap();
    let cmd = Command::Services(ServiceCommand::ApplyDecisions { decisions, now: 5 });
    let bytes = postcard::to_stdvec(&cmd).unwrap();
    assert_eq!(postcard::from_bytes::<Command>(&bytes).unwrap(), cmd);
    // And rows serialize to JSON with the documented field names.
    let row =
        serde_json::to_value(ServiceRow::of(&a.services, &a.services.services["s1"])).unwrap();
    for key in [
        "id",
        "name",
        "mode",
        "replicas",
        "running",
        "image",
        "driver",
        "ports",
        "update_status",
    ] {
        assert!(row.get(key).is_some(), "{key}");
    }
    assert_eq!(row["update_status"]["state"], "completed");
    let task = serde_json::to_value(&task_rows(&a.services, &a.nodes, TaskFilter::All)[0]).unwrap();
    for key in [
        "id",
        "service",
        "slot",
        "node_id",
        "node",
        "image",
        "desired_state",
        "state",
        "error",
        "exit_code",
    ] {
        assert!(task.get(key).is_some(), "{key}");
    }
}

fn cluster_with_service() -> ClusterState {
    let mut s = cluster();
    create(&mut s, "s1", replicated("web", 2));
    s
}

/// Versions of the running tasks of `service`, sorted.
fn running_versions(s: &ClusterState, service: &str) -> Vec<u64> {
    let mut v: Vec<u64> = s
        .services
        .tasks_of(service)
        .filter(|t| t.is_active() && t.state == TaskState::Running)
        .map(|t| t.spec_version)
        .collect();
    v.sort_unstable();
    v
}

fn update_state(s: &ClusterState, service: &str) -> (UpdateState, String) {
    let u = s.services.services[service]
        .update_status
        .clone()
        .expect("an update status");
    (u.state, u.message)
}

/// Orchestrator and workers, where the workers' tasks of version `broken` exit at once.
/// Sixty rounds one second apart (restart delays pass; a broken slot keeps being restarted
/// by its restart policy, as in Swarm, so there is no fixed point to wait for).
fn converge_with_broken(s: &mut ClusterState, mut now: u64, broken: u64) -> u64 {
    for _ in 0..60 {
        let decided = orchestrate(s, now);
        let mut reported = run_workers(s, now);
        let failing: Vec<(String, String)> = s
            .services
            .tasks
            .values()
            .filter(|t| t.spec_version == broken && t.is_active() && t.state == TaskState::Running)
            .map(|t| (t.id.0.clone(), t.node_id.clone().expect("node").0))
            .collect();
        for (task, node) in failing {
            let mut r = report(&task, TaskState::Failed);
            r.exit_code = Some(1);
            let cmd = ServiceCommand::TaskReports {
                node_id: node,
                reports: vec![r],
                at: now,
            };
            assert_eq!(svc(s, cmd), CommandResult::Done);
            reported += 1;
        }
        let _ = (decided, reported);
        now += 1_000;
    }
    now
}

#[test]
fn update_rolls_out_completes_and_a_broken_version_pauses_then_rolls_back_only_its_tasks() {
    let mut s = cluster();
    let mut spec = replicated("web", 3);
    spec.update_config.monitor_ms = 0;
    spec.rollback_config.monitor_ms = 0;
    create(&mut s, "s1", spec.clone());
    let now = converge(&mut s, 1_000);
    assert_eq!(running_versions(&s, "s1"), vec![1, 1, 1]);

    // A new image rolls out to every slot and the update completes.
    spec.image = "shoal-test/busybox:v2".into();
    assert_eq!(
        svc(&mut s, ServiceCommand::update("s1", spec.clone(), now)),
        CommandResult::Done
    );
    assert_eq!(update_state(&s, "s1").0, UpdateState::Updating);
    let now = converge(&mut s, now + 10);
    assert_eq!(running_versions(&s, "s1"), vec![2, 2, 2]);
    assert_eq!(
        update_state(&s, "s1"),
        (UpdateState::Completed, "update completed".into())
    );

    // Settings alone (and the replica count) replace nothing.
    spec.update_config.parallelism = 2;
    svc(&mut s, ServiceCommand::update("s1", spec.clone(), now));
    let now = converge(&mut s, now + 10);
    assert_eq!(running_versions(&s, "s1"), vec![2, 2, 2]);
    assert_eq!(update_state(&s, "s1").0, UpdateState::Completed);

    // Version 4 exits at once: the update pauses with the reason, the good tasks stay.
    spec.update_config.parallelism = 1;
    spec.image = "shoal-test/busybox:broken".into();
    svc(&mut s, ServiceCommand::update("s1", spec, now));
    let now = converge_with_broken(&mut s, now + 10, 4);
    let (state, message) = update_state(&s, "s1");
    assert_eq!(state, UpdateState::Paused, "{message}");
    assert!(
        message.starts_with("update paused due to failure or early termination of task"),
        "{message}"
    );
    // Version 3 changed only settings: its tasks are still version 2's.
    assert_eq!(
        running_versions(&s, "s1"),
        vec![2, 2],
        "two good slots untouched"
    );
    let good: Vec<String> = s
        .services
        .tasks_of("s1")
        .filter(|t| t.is_active() && t.spec_version == 2)
        .map(|t| t.id.0.clone())
        .collect();

    // Rollback: only the broken slot is replaced; the good tasks keep running.
    svc(
        &mut s,
        ServiceCommand::Rollback {
            id: "s1".into(),
            at: now,
        },
    );
    assert_eq!(update_state(&s, "s1").0, UpdateState::RollbackStarted);
    converge_with_broken(&mut s, now + 10, 4);
    assert_eq!(update_state(&s, "s1").0, UpdateState::RollbackCompleted);
    let versions = running_versions(&s, "s1");
    assert_eq!(versions, vec![2, 2, 5]);
    for id in &good {
        assert!(
            s.services.tasks[id].is_active(),
            "good task {id} was replaced"
        );
    }
    assert_eq!(
        s.services.services["s1"].spec.image,
        "shoal-test/busybox:v2"
    );
}

#[test]
fn a_failed_update_rolls_back_by_itself_when_so_configured() {
    let mut s = cluster();
    let mut spec = replicated("web", 2);
    spec.update_config.failure_action = FailureAction::Rollback;
    spec.update_config.monitor_ms = 0;
    spec.rollback_config.monitor_ms = 0;
    create(&mut s, "s1", spec.clone());
    let now = converge(&mut s, 1_000);
    spec.image = "shoal-test/busybox:broken".into();
    svc(&mut s, ServiceCommand::update("s1", spec, now));
    converge_with_broken(&mut s, now + 10, 2);
    let (state, message) = update_state(&s, "s1");
    assert_eq!(state, UpdateState::RollbackCompleted, "{message}");
    assert!(
        message.starts_with("update rolled back due to failure or early termination of task")
            && message.contains("exit code 1")
            && message.ends_with("(rollback completed)"),
        "{message}"
    );
    assert_eq!(
        s.services.services["s1"].spec.image,
        "shoal-test/busybox:latest"
    );
    // The good task was never stopped: once the update failed, no further slot started.
    assert_eq!(running_versions(&s, "s1"), vec![1, 3]);
}

#[test]
fn a_stale_verdict_never_overrides_a_newer_update() {
    let mut s = cluster();
    create(&mut s, "s1", replicated("web", 1));
    let now = converge(&mut s, 1_000);
    let mut spec = replicated("web", 1);
    spec.image = "a:2".into();
    svc(&mut s, ServiceCommand::update("s1", spec.clone(), now));
    spec.image = "a:3".into();
    svc(&mut s, ServiceCommand::update("s1", spec, now));
    let stale = ServiceCommand::UpdateVerdict {
        id: "s1".into(),
        version: 2,
        state: UpdateState::Completed,
        message: "update completed".into(),
        at: now,
    };
    assert!(matches!(svc(&mut s, stale), CommandResult::Refused(_)));
    assert_eq!(update_state(&s, "s1").0, UpdateState::Updating);
}

/// A published port has one owner among the live services: a create or an update that takes
/// another's port is refused when applied (so racing creates cannot both win), a service's
/// own ports never conflict with themselves, and removing a service frees its ports.
#[test]
fn a_published_port_has_one_owner() {
    let mut s = cluster();
    let mut web = replicated("web", 1);
    web.ports = vec![PortSpec::tcp(8080, 80)];
    assert_eq!(create(&mut s, "w1", web.clone()), CommandResult::Done);

    // Another service, by create or by update.
    let mut api = replicated("api", 1);
    api.ports = vec![PortSpec::tcp(9090, 90), PortSpec::tcp(8080, 80)];
    assert_eq!(
        create(&mut s, "a1", api.clone()),
        CommandResult::Refused("port 8080 is already published by service `web`".into())
    );
    api.ports.pop();
    assert_eq!(create(&mut s, "a1", api.clone()), CommandResult::Done);
    let mut take = api.clone();
    take.ports.push(PortSpec::tcp(8080, 81));
    assert_eq!(
        svc(&mut s, ServiceCommand::update("a1", take, 200)),
        CommandResult::Refused("port 8080 is already published by service `web`".into())
    );
    assert_eq!(s.services.services["a1"].spec.ports, api.ports);

    // Its own ports: kept, retargeted or added to.
    web.ports = vec![PortSpec::tcp(8080, 81), PortSpec::tcp(8443, 443)];
    assert_eq!(
        svc(&mut s, ServiceCommand::update("w1", web.clone(), 201)),
        CommandResult::Done
    );
    assert_eq!(
        s.services.check_ports(&web, "w1"),
        Ok(()),
        "own ports are no conflict"
    );
    assert!(s.services.check_ports(&web, "a1").is_err());

    // Removed: the port is free again.
    let remove = ServiceCommand::Remove {
        id: "w1".into(),
        at: 300,
    };
    assert_eq!(svc(&mut s, remove), CommandResult::Done);
    let mut again = replicated("web2", 1);
    again.ports = vec![PortSpec::tcp(8080, 80)];
    assert_eq!(create(&mut s, "w2", again), CommandResult::Done);
}

/// Moving an ingress port to another published number is a new version whose update
/// replaces no task (the mesh re-binds); changing the target port replaces them all.
#[test]
fn an_ingress_port_change_replaces_no_task() {
    let mut s = cluster();
    let mut spec = replicated("web", 2);
    spec.update_config.monitor_ms = 0;
    spec.ports = vec![PortSpec::tcp(8080, 80)];
    create(&mut s, "s1", spec.clone());
    let now = converge(&mut s, 1_000);
    assert_eq!(running_versions(&s, "s1"), vec![1, 1]);

    spec.ports = vec![PortSpec::tcp(8081, 80)];
    assert_eq!(
        svc(&mut s, ServiceCommand::update("s1", spec.clone(), now)),
        CommandResult::Done
    );
    let now = converge(&mut s, now + 10);
    assert_eq!(running_versions(&s, "s1"), vec![1, 1]);
    assert_eq!(s.services.services["s1"].version, 2);

    spec.ports = vec![PortSpec::tcp(8081, 81)];
    assert_eq!(
        svc(&mut s, ServiceCommand::update("s1", spec, now)),
        CommandResult::Done
    );
    converge(&mut s, now + 10);
    assert_eq!(running_versions(&s, "s1"), vec![3, 3]);
}

/// Issue 22: every live service holds a VIP index, the lowest free one at create, whatever
/// the command carried; a removed service's index is given to the next service; update and
/// scale keep it.
#[test]
fn issue_22_vip_indexes_are_the_lowest_free_and_freed_on_remove() {
    let mut s = cluster();
    let create = |s: &mut ClusterState, id: &str, name: &str, carried: Option<u32>| {
        let mut rec = ServiceRecord::new(id, ServiceSpec::new(name, "img:1"), 10);
        rec.vip_index = carried;
        let cmd = Command::Services(ServiceCommand::create(rec));
        assert_eq!(s.apply(&cmd), CommandResult::Done);
    };
    let index = |s: &ClusterState, id: &str| s.services.services[id].vip_index;
    create(&mut s, "s1", "a", Some(77));
    create(&mut s, "s2", "b", None);
    create(&mut s, "s3", "c", Some(0));
    assert_eq!(
        (index(&s, "s1"), index(&s, "s2"), index(&s, "s3")),
        (Some(0), Some(1), Some(2))
    );
    let remove = Command::Services(ServiceCommand::Remove {
        id: "s2".into(),
        at: 11,
    });
    assert_eq!(s.apply(&remove), CommandResult::Done);
    let mut spec = ServiceSpec::new("a", "img:2");
    spec.expose = vec![8080];
    spec.endpoint_mode = EndpointMode::Dnsrr;
    let update = Command::Services(ServiceCommand::update("s1", spec, 12));
    assert_eq!(s.apply(&update), CommandResult::Done);
    assert_eq!(index(&s, "s1"), Some(0), "an update keeps the index");
    create(&mut s, "s4", "d", None);
    assert_eq!(
        index(&s, "s4"),
        Some(1),
        "the removed service's index is reused"
    );
    create(&mut s, "s5", "e", None);
    assert_eq!(index(&s, "s5"), Some(3));
}

/// Issue 22: exposed ports are checked, and `dnsrr` refuses ingress ports (Docker's rule:
/// without a VIP the mesh has nothing to balance to).
#[test]
fn issue_22_endpoint_mode_and_expose_are_validated() {
    let mut spec = ServiceSpec::new("api", "img:1");
    spec.expose = vec![8080, 8080];
    assert!(spec.validate().unwrap_err().contains("exposed twice"));
    spec.expose = vec![0];
    assert!(spec.validate().unwrap_err().contains("port 0"));
    spec.expose = vec![8080];
    spec.endpoint_mode = EndpointMode::Dnsrr;
    assert_eq!(spec.validate(), Ok(()));
    spec.ports = vec![PortSpec::tcp(80, 8080)];
    assert!(spec.validate().unwrap_err().contains("dnsrr"));
    spec.ports[0].mode = PublishMode::Host;
    spec.max_replicas_per_node = 1;
    assert_eq!(spec.validate(), Ok(()));
    assert_eq!(spec.discovery_ports(), vec![8080]);
    spec.expose = vec![9090, 8080];
    assert_eq!(spec.discovery_ports(), vec![8080, 9090]);
}

/// Issue 23: mounts are checked (absolute targets, each once; a bind's absolute source; a
/// volume's name; no source for tmpfs; Docker driver only) and are part of the task: a
/// changed mount replaces the tasks.
#[test]
fn issue_23_mounts_are_validated_and_part_of_the_task() {
    let m = |kind, source: &str, target: &str| MountSpec {
        kind,
        source: source.into(),
        target: target.into(),
        read_only: false,
    };
    let mut spec = ServiceSpec::new("db", "img:1");
    spec.mounts = vec![
        m(MountType::Bind, "/srv/db", "/var/lib/db"),
        m(MountType::Volume, "pgdata", "/data"),
        m(MountType::Volume, "", "/anon"),
        m(MountType::Tmpfs, "", "/run/cache"),
    ];
    assert_eq!(spec.validate(), Ok(()));
    let task = spec.task_spec("t1", "s1", 1);
    assert_eq!(task.mounts.len(), 4);
    assert_eq!(task.mounts[0].kind, shoal_runtime::MountKind::Bind);
    let cases: [(MountSpec, &str); 5] = [
        (m(MountType::Bind, "srv", "/x"), "absolute path on the node"),
        (m(MountType::Bind, "/srv", "x"), "invalid mount target"),
        (m(MountType::Volume, "../etc", "/x"), "invalid volume name"),
        (m(MountType::Tmpfs, "/srv", "/x"), "takes no source"),
        (
            m(MountType::Tmpfs, "", "/data/"),
            "two mounts have the target",
        ),
    ];
    for (bad, why) in cases {
        let mut s = spec.clone();
        s.mounts.push(bad);
        let e = s.validate().unwrap_err();
        assert!(e.contains(why), "{e}");
    }
    let mut process = spec.clone();
    process.driver = "process".into();
    process.image = "/bin/true".into();
    assert!(process.validate().unwrap_err().contains("docker driver"));
    let mut ro = spec.clone();
    ro.mounts[0].read_only = true;
    assert!(!spec.same_task(&ro), "a changed mount replaces the tasks");
}

/// Issue 23: `--device` takes Docker's `HOST[:CONTAINER[:PERMISSIONS]]`, capabilities are
/// written as Docker writes them, and the options are checked, Docker driver only, part of
/// the task.
#[test]
fn issue_23_task_options_parse_and_validate() {
    let d: DeviceSpec = "/dev/gpiomem".parse().unwrap();
    assert_eq!(
        (
            d.host.as_str(),
            d.container.as_str(),
            d.permissions.as_str()
        ),
        ("/dev/gpiomem", "/dev/gpiomem", "rwm")
    );
    let d: DeviceSpec = "/dev/ttyUSB0:/dev/modem:rw".parse().unwrap();
    assert_eq!(
        (d.container.as_str(), d.permissions.as_str()),
        ("/dev/modem", "rw")
    );
    for bad in ["dev/x", "/dev/x:/y:rx", "/dev/x:/y:rr", "/a:/b:r:w"] {
        assert!(bad.parse::<DeviceSpec>().is_err(), "{bad}");
    }
    assert_eq!(capability("cap_net_admin").as_deref(), Ok("NET_ADMIN"));
    assert_eq!(capability("all").as_deref(), Ok("ALL"));
    assert!(capability("net admin").is_err());

    let mut spec = ServiceSpec::new("gpio", "img:1");
    spec.options = TaskOptionsSpec {
        user: Some("pi".into()),
        workdir: Some("/home/pi".into()),
        hostname: Some("pi-1".into()),
        entrypoint: Some(vec!["/init".into()]),
        init: true,
        devices: vec!["/dev/gpiomem".parse().unwrap()],
        cap_add: vec!["SYS_RAWIO".into()],
        cap_drop: vec!["NET_RAW".into()],
        privileged: false,
    };
    assert_eq!(spec.validate(), Ok(()));
    let task = spec.task_spec("t1", "s1", 1);
    assert_eq!(task.options.user.as_deref(), Some("pi"));
    assert!(task.options.escalates());
    for (change, why) in [
        (
            (|s: &mut ServiceSpec| s.options.workdir = Some("rel".into())) as fn(&mut ServiceSpec),
            "absolute path",
        ),
        (
            |s| s.options.hostname = Some("-x".into()),
            "invalid hostname",
        ),
        (|s| s.options.user = Some("a b".into()), "invalid user"),
        (
            |s| s.options.cap_add = vec!["net_admin".into()],
            "write it as NET_ADMIN",
        ),
        (
            |s| {
                s.driver = "process".into();
                s.image = "/bin/true".into();
            },
            "need the docker driver",
        ),
    ] {
        let mut s = spec.clone();
        change(&mut s);
        let e = s.validate().unwrap_err();
        assert!(e.contains(why), "{e}");
    }
    let mut other = spec.clone();
    other.options.init = false;
    assert!(
        !spec.same_task(&other),
        "a changed option replaces the tasks"
    );
}

/// Issue 23: configs have unique names and a size limit, a service may use only configs that
/// exist, a config in use cannot be removed, and the assignments carry its bytes.
#[test]
fn issue_23_configs_are_checked_kept_while_used_and_sent_with_the_tasks() {
    let mut s = cluster();
    let config = |id: &str, name: &str, data: &[u8]| {
        Command::Services(ServiceCommand::CreateConfig(Box::new(ConfigRecord {
            id: id.into(),
            name: name.into(),
            data: data.to_vec(),
            labels: BTreeMap::new(),
            created_at: 5,
        })))
    };
    assert_eq!(
        s.apply(&config("c1", "app.conf", b"a=1\n")),
        CommandResult::Done
    );
    let refused = |r: CommandResult, why: &str| match r {
        CommandResult::Refused(e) => assert!(e.contains(why), "{e}"),
        other => panic!("expected a refusal ({why}), got {other:?}"),
    };
    refused(s.apply(&config("c2", "app.conf", b"")), "already exists");
    refused(
        s.apply(&config("c3", "bad name", b"")),
        "invalid config name",
    );
    refused(
        s.apply(&config("c4", "big", &vec![0; MAX_CONFIG_BYTES + 1])),
        "at most",
    );
    let mut spec = ServiceSpec::new("web", "img:1");
    spec.configs = vec![ConfigRef {
        config_id: String::new(),
        config_name: "app.conf".into(),
        target: "/etc/app.conf".into(),
        uid: 0,
        gid: 0,
        mode: 0o440,
    }];
    let mut unknown = spec.clone();
    unknown.configs[0].config_name = "nope".into();
    assert!(s.services.resolve_config_refs(&mut unknown).is_err());
    s.services.resolve_config_refs(&mut spec).unwrap();
    assert_eq!(spec.configs[0].config_id, "c1");
    let mut dangling = spec.clone();
    dangling.configs[0].config_id = "c9".into();
    refused(create(&mut s, "s0", dangling), "no such config");
    assert_eq!(create(&mut s, "s1", spec), CommandResult::Done);
    converge(&mut s, 100);
    let files: Vec<_> = ["n1", "n2", "n3"]
        .iter()
        .flat_map(|n| assignments_for(&s.services, n))
        .flat_map(|a| a.spec.options.files)
        .collect();
    assert_eq!(files.len(), 1);
    assert_eq!(
        (
            files[0].target.as_str(),
            files[0].data.as_slice(),
            files[0].mode
        ),
        ("/etc/app.conf", b"a=1\n".as_slice(), 0o440)
    );
    let remove = Command::Services(ServiceCommand::RemoveConfig { id: "c1".into() });
    refused(s.apply(&remove), "in use by service `web`");
    let rm = Command::Services(ServiceCommand::Remove {
        id: "s1".into(),
        at: 200,
    });
    assert_eq!(s.apply(&rm), CommandResult::Done);
    assert_eq!(s.apply(&remove), CommandResult::Done);
    assert!(s.services.configs.is_empty());
}
