//! Placement benchmark: 100 000 tasks on 1 000 nodes with constraints and reservations.
//!
//! Run with `cargo run --release -p shoal-scheduler --example place_bench`.
//!
//! Prints, per phase, the on-CPU time of the benchmark thread (`/proc/thread-self/schedstat`,
//! which does not count waiting for a core on a busy machine) and the wall time (median of 5
//! runs for the big placement), and the process's peak resident memory (`VmHWM` from
//! `/proc/self/status`). Allocations of the big placement are counted in a separate,
//! untimed pass with dhat's heap profiler (which records a backtrace per allocation, so
//! it must not run during the timed passes).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use shoal_scheduler::{
    Availability, ClusterView, Constraint, Decision, Node, NodeId, NodeRole, NodeStatus,
    ReconcileConfig, Resources, RestartPolicy, Service, ServiceId, ServiceMode, TaskState,
    Timestamp, reconcile,
};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const NODES: usize = 1_000;
const SERVICES: usize = 200;
const REPLICAS: u64 = 500;
const MIB: u64 = 1 << 20;
const CPU: u64 = 1_000_000_000;

fn cluster() -> ClusterView {
    let nodes = (0..NODES)
        .map(|i| Node {
            id: NodeId(format!("node{i:04}")),
            hostname: format!("host{i}"),
            role: if i % 10 == 0 {
                NodeRole::Manager
            } else {
                NodeRole::Worker
            },
            status: NodeStatus::Ready,
            availability: match i % 50 {
                7 => Availability::Drain,
                13 => Availability::Pause,
                _ => Availability::Active,
            },
            labels: BTreeMap::from([
                ("zone".to_owned(), format!("z{}", i % 4)),
                (
                    "disk".to_owned(),
                    if i % 3 == 0 { "hdd" } else { "ssd" }.to_owned(),
                ),
            ]),
            capacity: Resources {
                memory_bytes: 16 * 1024 * MIB,
                nano_cpus: 16 * CPU,
            },
            drivers: if i % 2 == 0 {
                BTreeSet::from(["docker".to_owned(), "process".to_owned()])
            } else {
                BTreeSet::from(["docker".to_owned()])
            },
            allows_privileged: false,
            devices: None,
        })
        .collect();
    let constraint_sets: [&[&str]; 5] = [
        &["node.labels.zone!=z0"],
        &["node.role==worker", "node.labels.disk==ssd"],
        &["node.labels.zone!=z3", "node.hostname!=host1"],
        &[],
        &["node.role!=manager"],
    ];
    let services = (0..SERVICES)
        .map(|i| Service {
            id: ServiceId(format!("svc{i:03}")),
            name: format!("service-{i}"),
            mode: ServiceMode::Replicated { replicas: REPLICAS },
            driver: if i % 10 == 9 { "process" } else { "docker" }.to_owned(),
            privileged: false,
            devices: Vec::new(),
            constraints: Constraint::parse_all(constraint_sets[i % constraint_sets.len()])
                .expect("valid constraints"),
            reservations: Resources {
                memory_bytes: [64, 100, 128][i % 3] * MIB,
                nano_cpus: [CPU / 20, CPU / 10, CPU / 8][i % 3],
            },
            max_replicas_per_node: if i % 7 == 0 { Some(2) } else { None },
            restart_policy: RestartPolicy::default(),
            spec_version: 1,
            update: None,
        })
        .collect();
    ClusterView {
        nodes,
        services,
        tasks: Vec::new(),
        health: Default::default(),
    }
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Time this thread has spent on a CPU (first field of `/proc/thread-self/schedstat`, in ns):
/// unlike wall time, it does not count waiting for a core on a busy machine.
fn cpu_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// Runs `f`, returning its result, wall time and on-CPU time.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration, Duration) {
    let (wall, cpu) = (Instant::now(), cpu_time());
    let out = f();
    (out, wall.elapsed(), cpu_time().saturating_sub(cpu))
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let config = ReconcileConfig::default();
    let now = Timestamp(1_700_000_000_000);
    let mut view = cluster();
    println!(
        "cluster: {} nodes, {} services x {} replicas = {} tasks to place",
        view.nodes.len(),
        SERVICES,
        REPLICAS,
        SERVICES as u64 * REPLICAS
    );
    println!("peak RSS before: {} KiB", peak_rss_kib().unwrap_or(0));

    let mut runs = Vec::new();
    let mut plan = None;
    for _ in 0..5 {
        let (p, wall, cpu) = timed(|| reconcile(&view, now, &config));
        runs.push((cpu, wall));
        plan = Some(p);
    }
    let plan = plan.expect("ran at least once");
    runs.sort();
    let (mut assigned, mut pending) = (0, 0);
    for d in &plan.decisions {
        if let Decision::CreateTask(t) = d {
            match t.state {
                TaskState::Assigned => assigned += 1,
                _ => pending += 1,
            }
        }
    }
    println!(
        "initial placement: {} decisions ({assigned} assigned, {pending} pending): on-CPU {} \
         (median of 5; min {}, max {}), wall {} for the median run",
        plan.decisions.len(),
        ms(runs[2].0),
        ms(runs[0].0),
        ms(runs[4].0),
        ms(runs[2].1),
    );
    {
        let profiler = dhat::Profiler::builder().testing().build();
        let before = dhat::HeapStats::get();
        let counted = reconcile(&view, now, &config);
        let after = dhat::HeapStats::get();
        drop(profiler);
        println!(
            "initial placement allocations: {} blocks, {} MiB in total ({} decisions; untimed pass)",
            after.total_blocks - before.total_blocks,
            (after.total_bytes - before.total_bytes) >> 20,
            counted.decisions.len()
        );
    }
    if let Some(reason) = plan.decisions.iter().find_map(|d| match d {
        Decision::CreateTask(t) => t.pending_reason.as_ref(),
        _ => None,
    }) {
        println!("  e.g. pending: {reason}");
    }

    let ((), wall, cpu) = timed(|| {
        view.apply(&plan.decisions, now).expect("apply");
        shoal_scheduler::sim::run_workers(&mut view, now);
    });
    println!(
        "apply + run workers (test helpers): on-CPU {}, wall {}",
        ms(cpu),
        ms(wall)
    );

    let (steady, wall, cpu) = timed(|| reconcile(&view, now, &config));
    println!(
        "steady state ({} tasks, nothing to do): {} decisions, on-CPU {}, wall {}",
        view.tasks.len(),
        steady.decisions.len(),
        ms(cpu),
        ms(wall)
    );

    // Ten nodes die: their tasks are orphaned and re-placed.
    for n in view
        .nodes
        .iter_mut()
        .filter(|n| n.id.0.ends_with('5'))
        .take(10)
    {
        n.status = NodeStatus::Down;
    }
    let (failover, wall, cpu) = timed(|| reconcile(&view, now.plus_ms(1_000), &config));
    let orphaned = failover
        .decisions
        .iter()
        .filter(|d| matches!(d, Decision::MarkOrphaned { .. }))
        .count();
    println!(
        "10 nodes down: {} decisions ({orphaned} orphaned, {} created), on-CPU {}, wall {}",
        failover.decisions.len(),
        failover
            .decisions
            .iter()
            .filter(|d| matches!(d, Decision::CreateTask(_)))
            .count(),
        ms(cpu),
        ms(wall)
    );
    println!("peak RSS after: {} KiB", peak_rss_kib().unwrap_or(0));
}
