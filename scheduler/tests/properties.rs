//! Property tests: random clusters and random events, driven to a fixed point with the crate's
//! `apply` and worker simulation. Checked on every intermediate state: no node over capacity,
//! the same plan for the same input in any order; at the fixed point: the desired number of
//! tasks, one per slot, global tasks exactly on eligible nodes, pending reasons that add up,
//! unique IDs; and, where nothing else constrains, a spread within one.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;
use shoal_scheduler::*;

const GIB: u64 = 1 << 30;
const CPU: u64 = 1_000_000_000;
const T0: Timestamp = Timestamp(1_700_000_000_000);

fn base_node(i: usize) -> Node {
    Node {
        id: NodeId(format!("n{i:02}")),
        hostname: format!("host{i}"),
        role: NodeRole::Worker,
        status: NodeStatus::Ready,
        availability: Availability::Active,
        labels: BTreeMap::new(),
        capacity: Resources {
            memory_bytes: 4 * GIB,
            nano_cpus: 2 * CPU,
        },
        drivers: BTreeSet::from(["docker".to_owned()]),
        allows_privileged: false,
        devices: None,
    }
}

fn base_service(i: usize, mode: ServiceMode) -> Service {
    Service {
        id: ServiceId(format!("s{i}")),
        name: format!("svc{i}"),
        mode,
        driver: "docker".to_owned(),
        privileged: false,
        devices: Vec::new(),
        constraints: Vec::new(),
        reservations: Resources::ZERO,
        max_replicas_per_node: None,
        restart_policy: RestartPolicy {
            delay_ms: 1_000,
            ..RestartPolicy::default()
        },
        spec_version: 1,
        update: None,
    }
}

fn arb_node() -> impl Strategy<Value = (u8, u8, bool, u8, u8, u8, bool)> {
    // status, availability, manager, zone, memory GiB, CPUs, process driver
    (
        0u8..10,
        0u8..10,
        any::<bool>(),
        0u8..3,
        1u8..9,
        1u8..5,
        any::<bool>(),
    )
}

fn make_node(i: usize, spec: (u8, u8, bool, u8, u8, u8, bool)) -> Node {
    let (status, avail, manager, zone, mem, cpus, process) = spec;
    let mut n = base_node(i);
    n.status = match status {
        0 => NodeStatus::Down,
        1 => NodeStatus::Unknown,
        _ => NodeStatus::Ready,
    };
    n.availability = match avail {
        0 => Availability::Drain,
        1 => Availability::Pause,
        _ => Availability::Active,
    };
    if manager {
        n.role = NodeRole::Manager;
    }
    match zone {
        1 => drop(n.labels.insert("zone".into(), "a".into())),
        2 => drop(n.labels.insert("zone".into(), "b".into())),
        _ => {}
    }
    n.capacity = Resources {
        memory_bytes: u64::from(mem) * GIB,
        nano_cpus: u64::from(cpus) * CPU,
    };
    if process {
        n.drivers.insert("process".into());
    }
    n
}

const CONSTRAINTS: [&str; 5] = [
    "node.labels.zone==a",
    "node.labels.zone!=b",
    "node.role==worker",
    "node.role==manager",
    "node.hostname!=host0",
];

fn arb_service() -> impl Strategy<Value = (Option<u8>, bool, u8, u8, u8, u8)> {
    // replicas (None = global), process driver, constraint bits, memory, cpu, max per node
    (
        prop_oneof![4 => (0u8..12).prop_map(Some), 1 => Just(None)],
        prop::bool::weighted(0.2),
        0u8..32,
        0u8..4,
        0u8..3,
        0u8..4,
    )
}

fn make_service(i: usize, spec: (Option<u8>, bool, u8, u8, u8, u8)) -> Service {
    let (replicas, process, bits, mem, cpu, max) = spec;
    let mode = match replicas {
        Some(r) => ServiceMode::Replicated {
            replicas: u64::from(r),
        },
        None => ServiceMode::Global,
    };
    let mut s = base_service(i, mode);
    if process {
        s.driver = "process".into();
    }
    s.constraints = CONSTRAINTS
        .iter()
        .enumerate()
        .filter(|(b, _)| bits & (1 << b) != 0 && (*b != 3 || bits & (1 << 2) == 0))
        .map(|(_, e)| e.parse().expect("valid constraint"))
        .collect();
    s.reservations = Resources {
        memory_bytes: [0, GIB / 4, GIB, 3 * GIB][mem as usize],
        nano_cpus: [0, CPU / 2, CPU][cpu as usize],
    };
    s.max_replicas_per_node = if max == 0 { None } else { Some(u64::from(max)) };
    s
}

#[derive(Clone, Debug)]
enum Event {
    Status(usize, u8),
    Availability(usize, u8),
    Zone(usize, u8),
    Scale(usize, u8),
    FailTask(usize, bool),
    AddNode((u8, u8, bool, u8, u8, u8, bool)),
    RemoveNode(usize),
    RemoveService(usize),
}

fn arb_event() -> impl Strategy<Value = Event> {
    prop_oneof![
        (0usize..16, 0u8..4).prop_map(|(n, s)| Event::Status(n, s)),
        (0usize..16, 0u8..4).prop_map(|(n, a)| Event::Availability(n, a)),
        (0usize..16, 0u8..3).prop_map(|(n, z)| Event::Zone(n, z)),
        (0usize..8, 0u8..14).prop_map(|(s, r)| Event::Scale(s, r)),
        (0usize..64, any::<bool>()).prop_map(|(t, ok)| Event::FailTask(t, ok)),
        arb_node().prop_map(Event::AddNode),
        (0usize..16).prop_map(Event::RemoveNode),
        (0usize..8).prop_map(Event::RemoveService),
    ]
}

fn apply_event(v: &mut ClusterView, e: &Event, next_node: &mut usize, now: Timestamp) {
    let nn = v.nodes.len();
    match *e {
        Event::Status(i, s) if nn > 0 => {
            v.nodes[i % nn].status = match s {
                0 => NodeStatus::Down,
                1 => NodeStatus::Unknown,
                _ => NodeStatus::Ready,
            };
        }
        Event::Availability(i, a) if nn > 0 => {
            v.nodes[i % nn].availability = match a {
                0 => Availability::Drain,
                1 => Availability::Pause,
                _ => Availability::Active,
            };
        }
        Event::Zone(i, z) if nn > 0 => {
            let labels = &mut v.nodes[i % nn].labels;
            match z {
                0 => drop(labels.remove("zone")),
                1 => drop(labels.insert("zone".into(), "a".into())),
                _ => drop(labels.insert("zone".into(), "b".into())),
            }
        }
        Event::Scale(i, r) if !v.services.is_empty() => {
            let n = v.services.len();
            let s = &mut v.services[i % n];
            if let ServiceMode::Replicated { replicas } = &mut s.mode {
                *replicas = u64::from(r);
            }
        }
        Event::FailTask(i, ok) => {
            let running: Vec<TaskId> = v
                .tasks
                .iter()
                .filter(|t| t.is_active() && t.state == TaskState::Running)
                .map(|t| t.id.clone())
                .collect();
            if !running.is_empty() {
                let id = running[i % running.len()].clone();
                let (state, code) = if ok {
                    (TaskState::Complete, Some(0))
                } else {
                    (TaskState::Failed, Some(137))
                };
                sim::end_task(v, &id, state, code, now).expect("task exists");
            }
        }
        Event::AddNode(spec) => {
            v.nodes.push(make_node(*next_node, spec));
            *next_node += 1;
        }
        Event::RemoveNode(i) if nn > 0 => {
            v.nodes.remove(i % nn);
        }
        Event::RemoveService(i) if !v.services.is_empty() => {
            let n = v.services.len();
            v.services.remove(i % n);
        }
        _ => {}
    }
}

fn shuffled(v: &ClusterView) -> ClusterView {
    let mut s = v.clone();
    s.nodes.reverse();
    s.services.reverse();
    s.tasks.reverse();
    if !s.tasks.is_empty() {
        let k = s.tasks.len() / 3;
        s.tasks.rotate_left(k);
    }
    s
}

fn check_capacity(v: &ClusterView) -> Result<(), TestCaseError> {
    for n in &v.nodes {
        let used = v
            .tasks
            .iter()
            .filter(|t| t.node_id.as_ref() == Some(&n.id) && !t.state.is_terminal())
            .fold(Resources::ZERO, |acc, t| acc.saturating_add(t.reservations));
        prop_assert!(
            used.memory_bytes <= n.capacity.memory_bytes && used.nano_cpus <= n.capacity.nano_cpus,
            "node {} over capacity: {:?} > {:?}",
            n.id,
            used,
            n.capacity
        );
    }
    Ok(())
}

/// Every node a task is placed on passes the static filters for its service.
fn check_targets(v: &ClusterView, plan: &Plan) -> Result<(), TestCaseError> {
    for d in &plan.decisions {
        let (service, node) = match d {
            Decision::CreateTask(t) => match &t.node_id {
                Some(n) => (t.service_id.clone(), n.clone()),
                None => continue,
            },
            Decision::Assign { task, node } => {
                let t = v
                    .tasks
                    .iter()
                    .find(|t| t.id == *task)
                    .expect("assigned task exists");
                (t.service_id.clone(), node.clone())
            }
            _ => continue,
        };
        let s = v
            .services
            .iter()
            .find(|s| s.id == service)
            .expect("service exists");
        let n = v.nodes.iter().find(|n| n.id == node).expect("node exists");
        prop_assert_eq!(check_static(n, s), Ok(()), "placed {} on {}", s.id, n.id);
    }
    Ok(())
}

/// Reconcile → check → apply → workers, until a fixed point; returns the time reached.
fn drive(v: &mut ClusterView, mut now: Timestamp) -> Result<Timestamp, TestCaseError> {
    let config = ReconcileConfig::default();
    for _ in 0..400 {
        let plan = reconcile(v, now, &config);
        prop_assert_eq!(
            &plan,
            &reconcile(&shuffled(v), now, &config),
            "order-dependent plan"
        );
        check_targets(v, &plan)?;
        v.apply(&plan.decisions, now)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        check_capacity(v)?;
        let changed = sim::run_workers(v, now);
        if plan.decisions.is_empty() && changed == 0 {
            match plan.next_wakeup {
                None => return Ok(now),
                Some(w) => now = w,
            }
        } else {
            now = now.plus_ms(100);
        }
    }
    Err(TestCaseError::fail("no fixed point after 400 rounds"))
}

fn check_fixed_point(v: &ClusterView) -> Result<(), TestCaseError> {
    let ids: BTreeSet<&TaskId> = v.tasks.iter().map(|t| &t.id).collect();
    prop_assert_eq!(ids.len(), v.tasks.len(), "duplicate task IDs");
    for s in &v.services {
        let active: Vec<&Task> = v
            .tasks
            .iter()
            .filter(|t| t.service_id == s.id && t.is_active())
            .collect();
        for t in &active {
            if t.state == TaskState::Pending {
                let r = t
                    .pending_reason
                    .as_ref()
                    .expect("pending task has a reason");
                let sum: u64 = r.failures.iter().map(|f| f.nodes).sum();
                prop_assert_eq!(sum, r.total_nodes, "reason counts: {}", r);
            }
        }
        match s.mode {
            ServiceMode::Replicated { replicas } => {
                let slots: BTreeSet<Slot> = active.iter().map(|t| t.slot.clone()).collect();
                prop_assert_eq!(slots.len(), active.len(), "two active tasks in one slot");
                let want: BTreeSet<Slot> = (1..=replicas).map(Slot::Replica).collect();
                prop_assert_eq!(slots, want, "service {} slots", s.id);
            }
            ServiceMode::Global => {
                for n in &v.nodes {
                    let here: Vec<&&Task> = active
                        .iter()
                        .filter(|t| t.slot == Slot::Node(n.id.clone()))
                        .collect();
                    let eligible = check_static(n, s).is_ok();
                    let may_stay = n.status != NodeStatus::Down && must_leave(n, s).is_none();
                    prop_assert!(here.len() <= 1, "two global tasks on {}", n.id);
                    if eligible {
                        prop_assert_eq!(here.len(), 1, "no global task on eligible {}", n.id);
                    } else if !may_stay {
                        prop_assert!(here.is_empty(), "global task on ineligible {}", n.id);
                    }
                }
            }
        }
    }
    Ok(())
}

proptest! {
    // 256 cases by default; PROPTEST_CASES=N runs more.
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn random_clusters_converge_within_capacity(
        node_specs in prop::collection::vec(arb_node(), 0..8),
        service_specs in prop::collection::vec(arb_service(), 1..5),
        events in prop::collection::vec(prop::collection::vec(arb_event(), 1..4), 0..5),
    ) {
        let mut v = ClusterView {
            nodes: node_specs.into_iter().enumerate().map(|(i, s)| make_node(i, s)).collect(),
            services: service_specs.into_iter().enumerate().map(|(i, s)| make_service(i, s)).collect(),
            tasks: Vec::new(),
            health: Default::default(),
        };
        let mut next_node = v.nodes.len();
        let mut now = drive(&mut v, T0)?;
        check_fixed_point(&v)?;
        for batch in &events {
            for e in batch {
                apply_event(&mut v, e, &mut next_node, now);
            }
            now = drive(&mut v, now.plus_ms(10))?;
            check_fixed_point(&v)?;
        }
    }

    #[test]
    fn unconstrained_spread_differs_by_at_most_one(
        node_count in 1usize..9,
        steps in prop::collection::vec(prop::collection::vec(0u64..25, 1..4), 1..5),
    ) {
        let mut v = ClusterView {
            nodes: (0..node_count).map(base_node).collect(),
            services: Vec::new(),
            tasks: Vec::new(),
            health: Default::default(),
        };
        let mut now = T0;
        for (round, step) in steps.iter().enumerate() {
            // Each round adds services, or grows the existing ones (scale-ups only).
            for (i, &extra) in step.iter().enumerate() {
                match v.services.get_mut(i) {
                    Some(Service { mode: ServiceMode::Replicated { replicas }, .. }) => *replicas += extra,
                    _ => v.services.push(base_service(round * 10 + i, ServiceMode::Replicated { replicas: extra })),
                }
            }
            now = drive(&mut v, now)?;
            check_fixed_point(&v)?;
            for s in &v.services {
                let mut per_node: BTreeMap<&NodeId, u64> = v.nodes.iter().map(|n| (&n.id, 0)).collect();
                for t in v.tasks.iter().filter(|t| t.service_id == s.id && t.is_active()) {
                    let node = t.node_id.as_ref().expect("unconstrained tasks are placed");
                    *per_node.get_mut(node).expect("known node") += 1;
                }
                let max = per_node.values().max().copied().unwrap_or(0);
                let min = per_node.values().min().copied().unwrap_or(0);
                prop_assert!(max - min <= 1, "service {} spread {:?}", s.id, per_node);
            }
        }
    }
}
