use super::*;

/// Where the first task of a one-replica service lands (`Ok(node)`) or why it is pending.
fn place_one(nodes: Vec<Node>, svc: Service) -> Result<String, String> {
    let v = view(nodes, vec![svc]);
    let plan = reconcile(&v, T0, &cfg());
    match plan.decisions.as_slice() {
        [Decision::CreateTask(t)] => match (&t.node_id, &t.pending_reason) {
            (Some(n), None) if t.state == TaskState::Assigned => Ok(n.0.clone()),
            (None, Some(r)) if t.state == TaskState::Pending => Err(r.to_string()),
            other => panic!("inconsistent task {other:?}"),
        },
        other => panic!("expected one CreateTask, got {other:?}"),
    }
}

fn with(id: &str, f: impl FnOnce(&mut Node)) -> Node {
    let mut n = node(id);
    f(&mut n);
    n
}

fn constrained(exprs: &[&str]) -> Service {
    Service {
        constraints: Constraint::parse_all(exprs).unwrap_or_else(|e| panic!("{e}")),
        ..service("s", 1)
    }
}

fn labelled(id: &str, key: &str, value: &str) -> Node {
    with(id, |n| {
        n.labels.insert(key.into(), value.into());
    })
}

/// (name, nodes, service, where it lands or why it is pending)
type FilterCase = (
    &'static str,
    Vec<Node>,
    Service,
    Result<&'static str, &'static str>,
);

#[test]
fn every_filter_with_its_pending_reason() {
    let big_mem = Service {
        reservations: Resources {
            memory_bytes: 16 * GIB,
            nano_cpus: 0,
        },
        ..service("s", 1)
    };
    let big_cpu = Service {
        reservations: Resources {
            memory_bytes: 0,
            nano_cpus: 9 * CPU,
        },
        ..service("s", 1)
    };
    let half_cpu = Service {
        reservations: Resources {
            memory_bytes: GIB + GIB / 2,
            nano_cpus: CPU / 2,
        },
        ..service("s", 1)
    };
    let process = Service {
        driver: "process".into(),
        ..service("s", 1)
    };
    let manager = || with("m", |n| n.role = NodeRole::Manager);
    let docker_only = |id| {
        with(id, |n| {
            n.drivers.remove("process");
        })
    };
    let small = |id| {
        with(id, |n| {
            n.capacity = Resources {
                memory_bytes: GIB,
                nano_cpus: CPU / 4,
            }
        })
    };
    let privileged = Service {
        privileged: true,
        ..service("s", 1)
    };
    let gpio = Service {
        devices: vec!["/dev/gpiomem".into()],
        ..service("s", 1)
    };
    let allowing = |id| with(id, |n| n.allows_privileged = true);
    let with_devices = |id, devices: &[&str]| {
        with(id, |n| {
            n.devices = Some(devices.iter().map(|d| (*d).to_owned()).collect());
        })
    };
    let cases: Vec<FilterCase> = vec![
        (
            "issue 23: a privileged task goes to the node that allows it",
            vec![node("a"), allowing("b"), node("c")],
            privileged.clone(),
            Ok("b"),
        ),
        (
            "issue 23: no node allows privileged tasks",
            nodes(&["a", "b"]),
            privileged,
            Err(
                "no suitable node: 2 nodes do not allow privileged tasks (daemon --allow-privileged)",
            ),
        ),
        (
            "issue 23: a device task goes to the node that has the device",
            vec![
                with_devices("a", &["/dev/ttyUSB0"]),
                with_devices("b", &["/dev/gpiomem", "/dev/ttyUSB0"]),
            ],
            gpio.clone(),
            Ok("b"),
        ),
        (
            "issue 23: a node that did not report its devices is not ruled out",
            vec![with_devices("a", &[]), node("b")],
            gpio.clone(),
            Ok("b"),
        ),
        (
            "issue 23: no node has the device",
            vec![with_devices("a", &[]), with_devices("b", &["/dev/i2c-1"])],
            gpio,
            Err("no suitable node: 2 nodes lack device /dev/gpiomem"),
        ),
        (
            "all ready: lowest id wins the tie",
            nodes(&["b", "a", "c"]),
            service("s", 1),
            Ok("a"),
        ),
        (
            "status down and unknown are skipped",
            vec![
                with("a", |n| n.status = NodeStatus::Down),
                with("b", |n| n.status = NodeStatus::Unknown),
                node("c"),
            ],
            service("s", 1),
            Ok("c"),
        ),
        (
            "no ready node",
            vec![
                with("a", |n| n.status = NodeStatus::Down),
                with("b", |n| n.status = NodeStatus::Down),
                with("c", |n| n.status = NodeStatus::Unknown),
            ],
            service("s", 1),
            Err("no suitable node: 2 nodes are down; 1 node has unknown status"),
        ),
        (
            "drained and paused nodes take nothing new",
            vec![
                with("a", |n| n.availability = Availability::Drain),
                with("b", |n| n.availability = Availability::Pause),
                with("c", |n| n.availability = Availability::Pause),
            ],
            service("s", 1),
            Err("no suitable node: 2 nodes are paused; 1 node is drained"),
        ),
        (
            "label constraint: the issue's example",
            vec![
                with("a", |n| {
                    n.availability = Availability::Drain;
                    n.labels.insert("zone".into(), "attic".into());
                }),
                node("b"),
                labelled("c", "zone", "cellar"),
            ],
            constrained(&["node.labels.zone==attic"]),
            Err("no suitable node: 2 of 3 nodes lack label zone=attic; 1 node is drained"),
        ),
        (
            "label constraint satisfied",
            vec![
                node("a"),
                labelled("b", "zone", "attic"),
                labelled("c", "zone", "cellar"),
            ],
            constrained(&["node.labels.zone==attic"]),
            Ok("b"),
        ),
        (
            "label != constraint",
            vec![
                labelled("a", "zone", "attic"),
                labelled("b", "zone", "attic"),
            ],
            constrained(&["node.labels.zone!=attic"]),
            Err("no suitable node: 2 of 2 nodes have label zone=attic"),
        ),
        (
            "role constraint",
            vec![node("a"), manager()],
            constrained(&["node.role==manager"]),
            Ok("m"),
        ),
        (
            "role constraint unmet",
            vec![node("a")],
            constrained(&["node.role==manager"]),
            Err("no suitable node: 1 of 1 node does not satisfy node.role==manager"),
        ),
        (
            "hostname constraint",
            nodes(&["a", "b", "c"]),
            constrained(&["node.hostname!=host-a", "node.hostname!=host-b"]),
            Ok("c"),
        ),
        (
            "id constraint",
            nodes(&["a", "b", "c"]),
            constrained(&["node.id==b"]),
            Ok("b"),
        ),
        (
            "first failing constraint counts",
            vec![node("a"), manager(), labelled("x", "zone", "attic")],
            constrained(&["node.role==manager", "node.labels.zone==attic"]),
            Err(
                "no suitable node: 2 of 3 nodes do not satisfy node.role==manager; 1 of 3 nodes \
                 lacks label zone=attic",
            ),
        ),
        (
            "driver present",
            vec![docker_only("a"), node("b")],
            process.clone(),
            Ok("b"),
        ),
        (
            "driver missing",
            vec![docker_only("a"), docker_only("b")],
            process,
            Err("no suitable node: 2 nodes lack driver process"),
        ),
        (
            "memory reservation larger than any node",
            nodes(&["a", "b", "c"]),
            big_mem,
            Err("no suitable node: 3 nodes have insufficient free memory for 16 GiB"),
        ),
        (
            "cpu reservation larger than any node",
            nodes(&["a"]),
            big_cpu,
            Err("no suitable node: 1 node has insufficient free CPU for 9 CPUs"),
        ),
        (
            "reservation fits one node",
            vec![small("a"), node("b")],
            half_cpu.clone(),
            Ok("b"),
        ),
        (
            "memory checked before cpu",
            vec![small("a"), with("b", |n| n.capacity.nano_cpus = CPU / 4)],
            half_cpu,
            Err(
                "no suitable node: 1 node has insufficient free memory for 1.5 GiB; 1 node has \
                 insufficient free CPU for 0.5 CPUs",
            ),
        ),
        (
            "no nodes at all",
            vec![],
            service("s", 1),
            Err("no suitable node: the cluster has no nodes"),
        ),
    ];
    for (name, nodes, svc, expected) in cases {
        let got = place_one(nodes, svc);
        assert_eq!(got.as_deref().map_err(String::as_str), expected, "{name}");
    }
}

#[test]
fn max_replicas_per_node_leaves_the_rest_pending_then_places_them_when_a_node_joins() {
    let svc = Service {
        max_replicas_per_node: Some(1),
        ..service("s", 4)
    };
    let mut v = view(nodes(&["a", "b"]), vec![svc]);
    let now = settle(&mut v, T0);
    assert_eq!(spread(&v, "s"), counts(&[("", 2), ("a", 1), ("b", 1)]));
    let want =
        "no suitable node: 2 nodes already run the maximum of 1 task of this service per node";
    assert_eq!(pending_reasons(&v, "s"), vec![want, want]);
    v.nodes.push(node("c"));
    let plan = reconcile(&v, now, &cfg());
    // Slot 3 (the lower pending slot) is placed; slot 4's reason changes (3 nodes now).
    let assigned: Vec<_> = plan
        .decisions
        .iter()
        .filter_map(|d| match d {
            Decision::Assign { node, .. } => Some(node.0.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(assigned, vec!["c"]);
    v.apply(&plan.decisions, now).expect("apply");
    assert_eq!(
        pending_reasons(&v, "s"),
        vec![
            "no suitable node: 3 nodes already run the maximum of 1 task of this service per node"
        ]
    );
    v.nodes.push(node("d"));
    settle(&mut v, now);
    assert_eq!(
        spread(&v, "s"),
        counts(&[("a", 1), ("b", 1), ("c", 1), ("d", 1)])
    );
}

/// (nodes, replicas, nodes of other services' tasks, expected spread)
type SpreadCase = (
    Vec<&'static str>,
    u64,
    Vec<&'static str>,
    Vec<(&'static str, usize)>,
);

#[test]
fn spread_table() {
    let cases: Vec<SpreadCase> = vec![
        (
            vec!["a", "b", "c"],
            6,
            vec![],
            vec![("a", 2), ("b", 2), ("c", 2)],
        ),
        (
            vec!["a", "b", "c"],
            4,
            vec![],
            vec![("a", 2), ("b", 1), ("c", 1)],
        ),
        (vec!["c", "b", "a"], 1, vec![], vec![("a", 1)]),
        // Fewest tasks overall breaks ties between nodes with equal counts of this service.
        (
            vec!["a", "b", "c"],
            2,
            vec!["a", "a", "b"],
            vec![("b", 1), ("c", 1)],
        ),
        (
            vec!["a", "b", "c"],
            3,
            vec!["a", "a", "b"],
            vec![("a", 1), ("b", 1), ("c", 1)],
        ),
        // This service's count comes first: even a busy node gets its share.
        (
            vec!["a", "b"],
            4,
            vec!["a", "a", "a", "a"],
            vec![("a", 2), ("b", 2)],
        ),
    ];
    for (names, replicas, others, expected) in cases {
        let mut v = view(nodes(&names), vec![]);
        // Pin the other service's tasks with node.id constraints, one slot at a time.
        for (i, n) in others.iter().enumerate() {
            let mut pinned = service(&format!("other{i}"), 1);
            pinned.constraints =
                Constraint::parse_all(&[format!("node.id=={n}")]).unwrap_or_default();
            v.services.push(pinned);
        }
        let now = settle(&mut v, T0);
        v.services.push(service("s", replicas));
        settle(&mut v, now);
        assert_eq!(
            spread(&v, "s"),
            counts(&expected),
            "{names:?} {replicas} {others:?}"
        );
    }
}

#[test]
fn placement_within_a_pass_accounts_for_earlier_placements() {
    // One node with 3 GiB; three services of 1 GiB × 2 replicas: the first three tasks (in
    // service-ID then slot order) fit, the rest are pending.
    let mut n = node("a");
    n.capacity.memory_bytes = 3 * GIB;
    let svc = |id| Service {
        reservations: Resources {
            memory_bytes: GIB,
            nano_cpus: 0,
        },
        ..service(id, 2)
    };
    let v = view(vec![n], vec![svc("s3"), svc("s1"), svc("s2")]);
    let plan = reconcile(&v, T0, &cfg());
    let got: Vec<(String, String, bool)> = plan
        .decisions
        .iter()
        .map(|d| match d {
            Decision::CreateTask(t) => (
                t.service_id.0.clone(),
                t.slot.to_string(),
                t.node_id.is_some(),
            ),
            other => panic!("{other:?}"),
        })
        .collect();
    let want = [
        ("s1", "1", true),
        ("s1", "2", true),
        ("s2", "1", true),
        ("s2", "2", false),
        ("s3", "1", false),
        ("s3", "2", false),
    ];
    let want: Vec<(String, String, bool)> = want
        .iter()
        .map(|(a, b, c)| ((*a).to_owned(), (*b).to_owned(), *c))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn reservations_of_existing_tasks_count_until_they_end() {
    let mut n = node("a");
    n.capacity = Resources {
        memory_bytes: 2 * GIB,
        nano_cpus: 2 * CPU,
    };
    let svc = Service {
        reservations: Resources {
            memory_bytes: GIB,
            nano_cpus: CPU,
        },
        ..service("s", 2)
    };
    let mut v = view(vec![n], vec![svc]);
    let now = settle(&mut v, T0);
    assert_eq!(spread(&v, "s"), counts(&[("a", 2)]));
    // A second service cannot fit until the first is scaled down and its task has stopped.
    let mut other = service("t", 1);
    other.reservations = Resources {
        memory_bytes: GIB,
        nano_cpus: 0,
    };
    v.services.push(other);
    service_mut(&mut v, "s").mode = ServiceMode::Replicated { replicas: 1 };
    let plan = reconcile(&v, now, &cfg());
    assert!(plan.decisions.iter().any(|d| matches!(
        d,
        Decision::Shutdown {
            reason: ShutdownReason::ScaledDown,
            ..
        }
    )));
    assert!(
        plan.decisions
            .iter()
            .any(|d| matches!(d, Decision::CreateTask(t) if t.state == TaskState::Pending)),
        "the stopping task still holds its reservation: {plan:?}"
    );
    v.apply(&plan.decisions, now).expect("apply");
    sim::run_workers(&mut v, now);
    let plan = reconcile(&v, now.plus_ms(1), &cfg());
    assert!(
        matches!(plan.decisions.as_slice(), [Decision::Assign { node, .. }] if node.as_str() == "a"),
        "{plan:?}"
    );
}

#[test]
fn paused_node_keeps_its_tasks_and_takes_nothing_new() {
    let mut v = view(nodes(&["a", "b"]), vec![service("s", 2)]);
    let now = settle(&mut v, T0);
    node_mut(&mut v, "a").availability = Availability::Pause;
    assert!(
        reconcile(&v, now, &cfg()).decisions.is_empty(),
        "existing tasks stay on a paused node"
    );
    service_mut(&mut v, "s").mode = ServiceMode::Replicated { replicas: 4 };
    let now = settle(&mut v, now);
    assert_eq!(spread(&v, "s"), counts(&[("a", 1), ("b", 3)]));
    node_mut(&mut v, "b").availability = Availability::Pause;
    service_mut(&mut v, "s").mode = ServiceMode::Replicated { replicas: 5 };
    settle(&mut v, now);
    assert_eq!(
        pending_reasons(&v, "s"),
        vec!["no suitable node: 2 nodes are paused"]
    );
}

#[test]
fn pending_tasks_are_placed_when_capacity_frees_or_a_node_changes() {
    let svc = Service {
        driver: "process".into(),
        ..service("s", 2)
    };
    let mut n = node("a");
    n.drivers.remove("process");
    let mut v = view(vec![n], vec![svc]);
    let now = settle(&mut v, T0);
    assert_eq!(
        pending_reasons(&v, "s"),
        vec!["no suitable node: 1 node lacks driver process"; 2]
    );
    // Re-reconciling with no change decides nothing (reason unchanged).
    assert!(reconcile(&v, now, &cfg()).decisions.is_empty());
    node_mut(&mut v, "a").drivers.insert("process".into());
    settle(&mut v, now);
    assert_eq!(spread(&v, "s"), counts(&[("a", 2)]));
}
