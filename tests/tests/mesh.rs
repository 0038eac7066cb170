//! Issue 18: the routing mesh on a real cluster. Every node listens on every published port
//! (on its own `--publish-addr`, which the harness sets to the node's address) and forwards
//! each connection to a ready task: directly when the task is local, over a QUIC stream (tag
//! 10) otherwise. The tests speak plain HTTP/1.0 over `std::net::TcpStream`
//! ([`shoal_tests::http_get`]: one connection per request, connect bounded by 2 s, reads and
//! writes by 5 s) to busybox httpd in containers (serving its hostname, the container's short
//! ID) and to `mesh-echo` (tests/src/bin/mesh-echo.rs) run by the process driver (serving
//! `task=$SHOAL_TASK_ID`, `conn=N` and, with `--proxy-v2`, the PROXY header's addresses).
//!
//! Address blocks (one set of addresses per test, so none collide), and published ports:
//! - 127.0.90.1–.3: requests from every node reach every replica, port 29001;
//! - 127.0.90.11–.13: a worker killed, port 29002;
//! - 127.0.91.1–.3: a start-first rolling update under load, port 29003;
//! - 127.0.91.11–.12: scaled to zero and back, port 29004;
//! - 127.0.92.1–.3: a process-driver service, port 29005;
//! - 127.0.93.1–.2: PROXY protocol v2, local and remote paths, port 29006;
//! - 127.0.94.1–.2: hostile mesh streams, port 29007 (29008 published by nobody);
//! - 127.0.95.1–.3: workers serving with no manager left, port 29009;
//! - 127.0.96.1–.4: a worker follows a new leader at once, port 29010.
//!
//! Waiting: every wait is a [`Poll`] / [`poll_until`] with a deadline (state through the CLI,
//! requests until they are answered), never a bare sleep. Cleaning up: the [`Daemon`]s
//! (dropped also when a test fails) kill their daemons, the process driver's tasks and
//! their nodes' containers; a [`ClusterContainers`] guard removes every container of the
//! cluster; the test process's watchdog does the same if the test process dies.
//!
//! The Docker tests skip without Docker and the test image (`scripts/test-image.sh`) and fail
//! under `SHOAL_REQUIRE_DOCKER=1`; the process-driver tests need no Docker and always run.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use shoal::mesh::{MeshCounters, MeshOpen, MeshReply, TAG_MESH};
use shoal_tests::chaos::net::Firewall;
use shoal_tests::rogue::{Credentials, Outcome, Rogue};
use shoal_tests::{
    ClusterContainers, Daemon, HttpFailure, HttpReply, Poll, all_pids, cluster_id, cmdline,
    docker_ready, http_get, http_ok, mesh_counters, poll_until, published, service_containers,
    start_cluster_from, tasks,
};

const IMAGE: &str = shoal_tests::TEST_IMAGE;

/// The test server the process-driver services run (built with the tests).
const MESH_ECHO: &str = env!("CARGO_BIN_EXE_mesh-echo");

/// The Docker tasks' program: busybox httpd on port 80 serving the container's hostname
/// (Docker's default: the container's short ID, distinct per task). `sh` is PID 1 and traps
/// SIGTERM (PID 1 ignores an untrapped SIGTERM): on it, the server keeps answering for half a
/// second, then the task exits — a server draining the requests it has, as real ones do.
const HTTPD: &str = "mkdir -p /www; hostname > /www/index.html; \
    trap 'sleep 0.5; exit 0' TERM; httpd -f -p 80 -h /www & wait";

/// The httpd tasks' health check.
const HEALTH_CMD: &str = "wget -q -O- http://127.0.0.1/ || exit 1";

/// Quick health checks: a probe every 300 ms, unhealthy after two failures.
const HEALTH_TIMING: [&str; 6] = [
    "--health-interval",
    "300ms",
    "--health-timeout",
    "2s",
    "--health-retries",
    "2",
];

/// How long tasks may take to run, and a published port to answer once they do.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// How long a rolling update may take at most.
const UPDATE_DEADLINE: Duration = Duration::from_secs(120);

// ---- Helpers --------------------------------------------------------------------------

/// The rows of `service ps` running and wanted running.
fn running_rows(d: &Daemon, service: &str) -> Result<Vec<Value>> {
    Ok(tasks(d, service)?
        .into_iter()
        .filter(|t| t["state"] == "running" && t["desired_state"] == "running")
        .collect())
}

/// The rows of `service ps`, one line each, for failure messages.
fn brief(rows: &[Value]) -> String {
    rows.iter()
        .map(|t| {
            format!(
                "\n  slot {} {} on {} {}/{} health={} {}",
                t["slot"],
                t["id"].as_str().unwrap_or_default(),
                t["node"].as_str().unwrap_or_default(),
                t["desired_state"].as_str().unwrap_or_default(),
                t["state"].as_str().unwrap_or_default(),
                t["health"],
                t["error"].as_str().unwrap_or_default(),
            )
        })
        .collect()
}

/// Waits until exactly `n` tasks of `service` run (with `healthy`, all healthy); returns
/// their rows.
fn wait_running(d: &Daemon, service: &str, n: usize, healthy: bool) -> Result<Vec<Value>> {
    poll_until(
        &format!(
            "{n} tasks of {service} running{}",
            if healthy { " and healthy" } else { "" }
        ),
        START_DEADLINE,
        || {
            let rows = tasks(d, service)?;
            let run: Vec<Value> = rows
                .iter()
                .filter(|t| t["state"] == "running" && t["desired_state"] == "running")
                .cloned()
                .collect();
            let ok = run.len() == n && (!healthy || run.iter().all(|t| t["health"] == "healthy"));
            ensure!(ok, "{}", brief(&rows));
            Ok(Some(run))
        },
    )
}

fn task_ids(rows: &[Value]) -> BTreeSet<String> {
    rows.iter()
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect()
}

/// The hostnames of the nodes that run `rows`.
fn task_nodes(rows: &[Value]) -> BTreeSet<String> {
    rows.iter()
        .filter_map(|t| t["node"].as_str().map(str::to_string))
        .collect()
}

/// The running containers of `service`: their hostname (the short container ID, what
/// [`HTTPD`] serves) → task ID.
fn container_hosts(cluster: &str, service: &str) -> Result<BTreeMap<String, String>> {
    Ok(service_containers(cluster, service)?
        .into_iter()
        .map(|c| (c.id.chars().take(12).collect(), c.task))
        .collect())
}

/// Waits until the running containers of `service` are exactly those of the tasks `ids`;
/// returns them as [`container_hosts`] does.
fn wait_containers(
    cluster: &str,
    service: &str,
    ids: &BTreeSet<String>,
) -> Result<BTreeMap<String, String>> {
    poll_until(
        &format!("the containers of {service} to be those of tasks {ids:?}"),
        Duration::from_secs(30),
        || {
            let hosts = container_hosts(cluster, service)?;
            let tasks: BTreeSet<String> = hosts.values().cloned().collect();
            ensure!(&tasks == ids, "containers {hosts:?}");
            Ok(Some(hosts))
        },
    )
}

/// Waits until `addr` (`d`'s published port) answers a request with 200; returns the answer.
fn wait_served(d: &Daemon, addr: SocketAddr) -> Result<HttpReply> {
    poll_until(
        &format!("{} to serve http://{addr}/", d.name),
        START_DEADLINE,
        || http_ok(addr).map(Some),
    )
    .with_context(|| format!("--- daemon log of {} ---\n{}", d.name, d.log_tail()))
}

/// The counters of each of `nodes`.
fn counters(nodes: &[&Daemon]) -> Result<Vec<MeshCounters>> {
    nodes.iter().map(|d| mesh_counters(d)).collect()
}

/// Waits until `moved(before, now)` holds for every node (the counters are updated as
/// connections end, so a look right after the last request may be early).
fn wait_counters(
    what: &str,
    nodes: &[&Daemon],
    before: &[MeshCounters],
    moved: impl Fn(&MeshCounters, &MeshCounters) -> bool,
) -> Result<Vec<MeshCounters>> {
    poll_until(what, Duration::from_secs(10), || {
        let now = counters(nodes)?;
        let behind: Vec<String> = nodes
            .iter()
            .zip(before.iter().zip(&now))
            .filter(|(_, (b, n))| !moved(b, n))
            .map(|(d, (b, n))| format!("{}: before {b:?}, now {n:?}", d.name))
            .collect();
        ensure!(behind.is_empty(), "{}", behind.join("; "));
        Ok(Some(now))
    })
}

/// Creates a replicated Docker service `name` of [`HTTPD`] publishing `port:80`, with
/// `extra` flags before the image.
fn create_httpd(m: &Daemon, name: &str, replicas: usize, port: u16, extra: &[&str]) -> Result<()> {
    let replicas = replicas.to_string();
    let publish = format!("{port}:80");
    let mut args = vec![
        "service",
        "create",
        "--name",
        name,
        "--replicas",
        &replicas,
        "--stop-grace-period",
        "5s",
        "-p",
        &publish,
    ];
    args.extend(extra);
    args.extend([IMAGE, "sh", "-c", HTTPD]);
    m.ok(&args).map(drop)
}

/// Creates `echo`: `replicas` `mesh-echo` tasks on the process driver (2 s stop grace), with
/// the service `flags` (publishing, constraints) and the program's own `args`.
fn create_echo(m: &Daemon, replicas: usize, flags: &[&str], args: &[&str]) -> Result<()> {
    let replicas = replicas.to_string();
    let mut cmd = vec![
        "service",
        "create",
        "--name",
        "echo",
        "--driver",
        "process",
        "--replicas",
        &replicas,
        "--stop-grace-period",
        "2s",
    ];
    cmd.extend(flags);
    cmd.push(MESH_ECHO);
    cmd.extend(args);
    m.ok(&cmd).map(drop)
}

/// Sends `rounds` requests to each of `nodes`' published `port`; every one must answer 200.
/// Returns, per node, the bodies (trimmed) in order.
fn rounds(nodes: &[&Daemon], port: u16, rounds: usize) -> Result<Vec<Vec<HttpReply>>> {
    let mut out = vec![Vec::new(); nodes.len()];
    for round in 0..rounds {
        for (i, d) in nodes.iter().enumerate() {
            let reply = http_ok(published(d, port))
                .with_context(|| format!("request {round} to {}", d.name))?;
            out[i].push(reply);
        }
    }
    Ok(out)
}

/// The `PORT` of the process-driver task `task_id` running `program` (found by its
/// executable, or its first argument, and `SHOAL_TASK_ID` in its environment).
fn process_task_port(program: &str, task_id: &str) -> Result<u16> {
    let want = format!("SHOAL_TASK_ID={task_id}");
    let exe = std::fs::canonicalize(program).unwrap_or_else(|_| program.into());
    for pid in all_pids() {
        let runs_program = std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|e| e == exe)
            || cmdline(pid).is_some_and(|a| a.first().is_some_and(|p| p == program));
        if !runs_program {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let vars: Vec<String> = env
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        if vars.contains(&want) {
            let port = vars
                .iter()
                .find_map(|v| v.strip_prefix("PORT="))
                .with_context(|| format!("task {task_id} (pid {pid}) has no PORT"))?;
            return port
                .parse()
                .with_context(|| format!("task {task_id} has PORT={port}"));
        }
    }
    bail!("no process of {program} runs task {task_id}")
}

// ---- Item 7a: every node reaches every replica ----------------------------------------

/// Issue 18: 1 manager + 2 workers, 3 replicas of httpd (one per node) published on 29001:
/// 30 requests to each node's published port all answer 200, the bodies together name all 3
/// containers, and every node's `remote_forwards` and `remote_served` moved (each node sent
/// client connections over QUIC and served other nodes' streams).
#[test]
fn requests_to_every_node_reach_every_replica() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    const PORT: u16 = 29001;
    let (ms, ws) = start_cluster_from("ma-", 90, 1, 1, 2)?;
    let m = &ms[0];
    let cluster = cluster_id(m)?;
    let _containers = ClusterContainers(cluster.clone());
    let nodes = [&ms[0], &ws[0], &ws[1]];
    let before = counters(&nodes)?;
    create_httpd(m, "web", 3, PORT, &[])?;
    let rows = wait_running(m, "web", 3, false)?;
    ensure!(
        task_nodes(&rows).len() == 3,
        "3 replicas should spread one per node: {}",
        brief(&rows)
    );
    let hosts = wait_containers(&cluster, "web", &task_ids(&rows))?;
    for d in nodes {
        wait_served(d, published(d, PORT))?;
    }

    let replies = rounds(&nodes, PORT, 30)?;
    let mut reached = BTreeSet::new();
    for (d, replies) in nodes.iter().zip(&replies) {
        let mut per: BTreeMap<&str, usize> = BTreeMap::new();
        for r in replies {
            let host = r.body.trim();
            ensure!(
                hosts.contains_key(host),
                "{} answered `{host}`, no container of web ({hosts:?})",
                d.name
            );
            *per.entry(host).or_default() += 1;
            reached.insert(host.to_string());
        }
        eprintln!("{}: replies per container {per:?}", d.name);
    }
    let all: BTreeSet<String> = hosts.keys().cloned().collect();
    ensure!(
        reached == all,
        "the requests reached {reached:?}, not every replica {all:?}"
    );
    let after = wait_counters(
        "remote_forwards and remote_served to move on every node",
        &nodes,
        &before,
        |b, n| n.remote_forwards > b.remote_forwards && n.remote_served > b.remote_served,
    )?;
    for (d, c) in nodes.iter().zip(&after) {
        eprintln!("{}: {c:?}", d.name);
    }
    m.ok(&["service", "rm", "web"])?;
    Ok(())
}

// ---- Item 7b: a worker killed ---------------------------------------------------------

/// How many consecutive answers each surviving node must give once the killed node's task
/// is replaced.
const STREAK: usize = 50;

/// How long after the replacement runs the surviving nodes have to reach [`STREAK`].
const SETTLE: Duration = Duration::from_secs(20);

/// Issue 18: 1 manager + 2 workers, 3 replicas of httpd (one per node) on 29002; worker 1 is
/// `kill -9`ed (its container keeps running, as after a crash). Requests to the manager and
/// worker 2 go on throughout; failures are allowed (counted and printed) until `service ps`
/// shows 3 tasks running on live nodes and then for at most [`SETTLE`] more, in which each
/// surviving node must answer [`STREAK`] requests in a row (a failure starts its count
/// again). Asserted: both streaks are reached within that time; every answer in them names a
/// container of a task running on a live node (never the dead node's, still running, whose
/// daemon is gone); and together they name all 3 such tasks (the replacement is in rotation).
#[test]
fn surviving_nodes_keep_serving_after_a_worker_is_killed() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    const PORT: u16 = 29002;
    let (ms, mut ws) = start_cluster_from("mb-", 90, 11, 1, 2)?;
    let m = &ms[0];
    let cluster = cluster_id(m)?;
    let _containers = ClusterContainers(cluster.clone());
    create_httpd(m, "web", 3, PORT, &[])?;
    let rows = wait_running(m, "web", 3, false)?;
    ensure!(
        task_nodes(&rows).len() == 3,
        "3 replicas should spread one per node: {}",
        brief(&rows)
    );
    let hosts = wait_containers(&cluster, "web", &task_ids(&rows))?;
    for d in [&ms[0], &ws[0], &ws[1]] {
        wait_served(d, published(d, PORT))?;
    }
    let dead = ws[0].name.clone();
    let dead_task = rows
        .iter()
        .find(|t| t["node"] == dead.as_str())
        .and_then(|t| t["id"].as_str())
        .context("no task on the worker to kill")?
        .to_string();
    let dead_host = hosts
        .iter()
        .find(|(_, t)| **t == dead_task)
        .map(|(h, _)| h.clone())
        .unwrap_or_default();

    ws[0].kill9();
    let killed = Instant::now();
    let survivors = [&ms[0], &ws[1]];
    let (mut early_ok, mut early_failed) = (0usize, 0usize);
    let mut last_failure = String::new();
    let replaced = poll_until(
        "the killed worker's task to be replaced on a live node",
        Duration::from_secs(60),
        || {
            for d in survivors {
                match http_get(published(d, PORT)) {
                    Ok(r) if r.status == 200 => early_ok += 1,
                    Ok(r) => {
                        early_failed += 1;
                        last_failure = format!("{}: status {}", d.name, r.status);
                    }
                    Err(e) => {
                        early_failed += 1;
                        last_failure = format!("{}: {e}", d.name);
                    }
                }
            }
            let rows = running_rows(m, "web")?;
            ensure!(
                rows.len() == 3 && rows.iter().all(|t| t["node"] != dead.as_str()),
                "{}",
                brief(&rows)
            );
            Ok(Some(rows))
        },
    )?;
    let replaced_after = killed.elapsed();
    let live_ids = task_ids(&replaced);
    // The dead node's container still runs (its daemon is gone): only the live tasks'
    // containers count.
    let live_hosts = poll_until(
        "a running container for every live task",
        Duration::from_secs(30),
        || {
            let hosts: BTreeMap<String, String> = container_hosts(&cluster, "web")?
                .into_iter()
                .filter(|(_, t)| live_ids.contains(t))
                .collect();
            ensure!(hosts.len() == live_ids.len(), "containers {hosts:?}");
            Ok(Some(hosts))
        },
    )?;

    let mut streak = [0usize; 2];
    let mut failed_after = [0usize; 2];
    let mut bodies: [Vec<String>; 2] = [Vec::new(), Vec::new()];
    let settle_start = Instant::now();
    Poll::new(
        &format!("{STREAK} consecutive answers from every surviving node"),
        SETTLE,
    )
    .every(Duration::ZERO)
    .until(|| {
        for (i, d) in survivors.iter().enumerate() {
            if streak[i] >= STREAK {
                continue;
            }
            match http_get(published(d, PORT)) {
                Ok(r) if r.status == 200 => {
                    streak[i] += 1;
                    bodies[i].push(r.body.trim().to_string());
                }
                other => {
                    streak[i] = 0;
                    bodies[i].clear();
                    failed_after[i] += 1;
                    last_failure = match other {
                        Ok(r) => format!("{}: status {}", d.name, r.status),
                        Err(e) => format!("{}: {e}", d.name),
                    };
                }
            }
        }
        ensure!(
            streak.iter().all(|s| *s >= STREAK),
            "streaks {streak:?}, failures since the replacement {failed_after:?}, last failure: {last_failure}"
        );
        Ok(Some(()))
    })?;
    eprintln!(
        "worker killed: replaced after {replaced_after:?}; before that {early_ok} answers, \
         {early_failed} failures; after it, {failed_after:?} failures and {:?} to the streaks \
         (last failure: {last_failure})",
        settle_start.elapsed()
    );
    // The test's requests are one at a time, so none was in flight on the dead node when
    // it died: every one of them must have been answered (a connect to the dead node's task
    // fails over to another task without the client noticing).
    ensure!(
        early_failed == 0 && failed_after == [0, 0],
        "requests to surviving nodes failed: {early_failed} before the replacement, \
         {failed_after:?} after it (last failure: {last_failure})"
    );
    let mut reached = BTreeSet::new();
    for (d, bodies) in survivors.iter().zip(&bodies) {
        for b in bodies {
            ensure!(
                live_hosts.contains_key(b),
                "{} answered `{b}`, not a container of a task on a live node ({live_hosts:?}; \
                 the dead node's is {dead_host})",
                d.name
            );
            reached.insert(b.clone());
        }
    }
    let all: BTreeSet<String> = live_hosts.keys().cloned().collect();
    ensure!(
        reached == all,
        "the streaks reached {reached:?}, not every live task {all:?}"
    );
    m.ok(&["service", "rm", "web"])?;
    Ok(())
}

// ---- Item 7c: a rolling update under load ---------------------------------------------

/// Requests the load thread must send while the update runs, at least.
const UPDATE_LOAD: usize = 500;

/// Issue 18: 1 manager + 2 workers, 3 httpd replicas with a health check (`wget` of the
/// page, every 300 ms) on 29003, updated start-first, parallelism 1, 1 s between slots
/// (`--env-add`: every task replaced). A thread sends requests back to back, one connection
/// each, to worker 1's published port from before the update starts until it has ended.
/// Asserted: `service update` succeeds and the update is `completed` with 3 new healthy
/// tasks; at least 500 requests were sent while it ran; not one request failed (before,
/// during or after); within 5 s after it, 30 requests in a row are answered by new tasks
/// only.
#[test]
fn no_request_fails_during_a_start_first_rolling_update() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    const PORT: u16 = 29003;
    let (ms, ws) = start_cluster_from("mc-", 91, 1, 1, 2)?;
    let m = &ms[0];
    let cluster = cluster_id(m)?;
    let _containers = ClusterContainers(cluster.clone());
    let mut extra = vec![
        "--update-order",
        "start-first",
        "--update-parallelism",
        "1",
        "--update-delay",
        "1s",
        "--update-monitor",
        "1s",
        "--env",
        "MESH_V=1",
        "--health-cmd",
        HEALTH_CMD,
    ];
    extra.extend(HEALTH_TIMING);
    create_httpd(m, "web", 3, PORT, &extra)?;
    let before_rows = wait_running(m, "web", 3, true)?;
    let before = task_ids(&before_rows);
    let target = published(&ws[0], PORT);
    for d in [&ms[0], &ws[0], &ws[1]] {
        wait_served(d, published(d, PORT))?;
    }

    // (sent while the update ran, elapsed since the load began, outcome)
    type Sample = (bool, Duration, std::result::Result<String, String>);
    let stop = AtomicBool::new(false);
    let updating = AtomicBool::new(false);
    let log: Mutex<Vec<Sample>> = Mutex::new(Vec::new());
    let update = std::thread::scope(|s| {
        let load = s.spawn(|| {
            let start = Instant::now();
            while !stop.load(Ordering::SeqCst) {
                let during = updating.load(Ordering::SeqCst);
                let outcome = match http_get(target) {
                    Ok(r) if r.status == 200 => Ok(r.body.trim().to_string()),
                    Ok(r) => Err(format!("status {}: {}", r.status, r.body.trim())),
                    Err(e) => Err(e.to_string()),
                };
                log.lock().unwrap_or_else(|e| e.into_inner()).push((
                    during,
                    start.elapsed(),
                    outcome,
                ));
            }
        });
        let update = (|| {
            // A few answers before the update starts, so the load is under way.
            poll_until("the load to begin", Duration::from_secs(10), || {
                Ok((log.lock().unwrap_or_else(|e| e.into_inner()).len() >= 10).then_some(()))
            })?;
            updating.store(true, Ordering::SeqCst);
            let cli = m.spawn_cli(&["service", "update", "--env-add", "MESH_V=2", "web"]);
            let out = cli.and_then(|c| c.wait(UPDATE_DEADLINE));
            updating.store(false, Ordering::SeqCst);
            out
        })();
        stop.store(true, Ordering::SeqCst);
        let joined = load.join();
        update.and_then(|out| {
            ensure!(joined.is_ok(), "the load thread panicked");
            Ok(out)
        })
    })?;
    ensure!(
        update.status.success(),
        "service update failed: {}",
        String::from_utf8_lossy(&update.stderr)
    );
    let log = log.into_inner().unwrap_or_else(|e| e.into_inner());
    let during = log.iter().filter(|(d, _, _)| *d).count();
    let failures: Vec<String> = log
        .iter()
        .filter_map(|(d, at, o)| {
            o.as_ref().err().map(|e| {
                format!(
                    "at {at:?}{}: {e}",
                    if *d { " (during the update)" } else { "" }
                )
            })
        })
        .collect();
    eprintln!(
        "rolling update under load: {} requests, {during} while it ran, {} failed",
        log.len(),
        failures.len()
    );
    ensure!(
        failures.is_empty(),
        "{} of {} requests to {target} failed during the rolling update; the first ones:\n{}",
        failures.len(),
        log.len(),
        failures
            .iter()
            .take(10)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    ensure!(
        during >= UPDATE_LOAD,
        "only {during} requests were sent while the update ran (want at least {UPDATE_LOAD})"
    );

    let state = m.inspect(&["service", "inspect", "web"])?["update_status"]["state"].clone();
    ensure!(state == "completed", "update_status.state is {state}");
    let after_rows = wait_running(m, "web", 3, true)?;
    let after = task_ids(&after_rows);
    ensure!(
        after.is_disjoint(&before),
        "an old task survived the update: {}",
        brief(&after_rows)
    );
    let new_hosts = wait_containers(&cluster, "web", &after)?;
    let mut run = 0;
    Poll::new(
        "30 answers in a row from new tasks only",
        Duration::from_secs(5),
    )
    .every(Duration::ZERO)
    .until(|| {
        let r = http_ok(target)?;
        let host = r.body.trim();
        if new_hosts.contains_key(host) {
            run += 1;
        } else {
            run = 0;
            bail!("`{host}` answered, not a new task ({new_hosts:?})");
        }
        Ok((run >= 30).then_some(()))
    })?;
    m.ok(&["service", "rm", "web"])?;
    Ok(())
}

// ---- Item 7d: scaled to zero ----------------------------------------------------------

/// Issue 18: 1 manager + 1 worker, 2 httpd replicas on 29004. `service scale web=0`: within
/// 30 s a connect to the port is refused (ECONNREFUSED, not a timeout or a reset) on every
/// node, and stays refused for 1 s; `service scale web=2`: within 60 s every node serves
/// again.
#[test]
fn a_service_scaled_to_zero_refuses_connections_and_serves_again_when_scaled_up() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    const PORT: u16 = 29004;
    let (ms, ws) = start_cluster_from("md-", 91, 11, 1, 1)?;
    let m = &ms[0];
    let cluster = cluster_id(m)?;
    let _containers = ClusterContainers(cluster);
    let nodes = [&ms[0], &ws[0]];
    create_httpd(m, "web", 2, PORT, &[])?;
    wait_running(m, "web", 2, false)?;
    for d in nodes {
        wait_served(d, published(d, PORT))?;
    }

    m.ok(&["service", "scale", "web=0"])?;
    let refused_everywhere = || -> Result<()> {
        for d in nodes {
            match http_get(published(d, PORT)) {
                Err(HttpFailure::Refused) => {}
                Err(e) => bail!("{}: {e} (want connection refused)", d.name),
                Ok(r) => bail!("{} still answers ({}: {})", d.name, r.status, r.body.trim()),
            }
        }
        Ok(())
    };
    poll_until(
        "connections to every node's port refused",
        Duration::from_secs(30),
        || refused_everywhere().map(Some),
    )?;
    Poll::new("connections refused on every node", Duration::from_secs(1))
        .every(Duration::from_millis(100))
        .holds(refused_everywhere)?;

    m.ok(&["service", "scale", "web=2"])?;
    wait_running(m, "web", 2, false)?;
    for d in nodes {
        wait_served(d, published(d, PORT))?;
    }
    m.ok(&["service", "rm", "web"])?;
    Ok(())
}

// ---- Item 7e: a process-driver service ------------------------------------------------

/// Issue 18 (no Docker needed): 1 manager + 2 workers, 3 replicas of `mesh-echo` with the
/// process driver (it listens on the `PORT` the driver gives it) published on 29005: 30
/// requests to each node all answer 200, their `task=` names a running task, together they
/// name all 3, and every node's `remote_forwards` and `remote_served` moved.
#[test]
fn a_process_driver_service_is_served_from_every_node() -> Result<()> {
    const PORT: u16 = 29005;
    let (ms, ws) = start_cluster_from("me-", 92, 1, 1, 2)?;
    let m = &ms[0];
    let nodes = [&ms[0], &ws[0], &ws[1]];
    let before = counters(&nodes)?;
    let publish = format!("{PORT}:80");
    create_echo(m, 3, &["-p", &publish], &[])?;
    let rows = wait_running(m, "echo", 3, false)?;
    ensure!(
        task_nodes(&rows).len() == 3,
        "3 replicas should spread one per node: {}",
        brief(&rows)
    );
    let ids = task_ids(&rows);
    for d in nodes {
        wait_served(d, published(d, PORT))?;
    }
    let replies = rounds(&nodes, PORT, 30)?;
    let mut reached = BTreeSet::new();
    for (d, replies) in nodes.iter().zip(&replies) {
        for r in replies {
            let task = r.field("task").unwrap_or_default();
            ensure!(
                ids.contains(task),
                "{} answered for task `{task}`, not a running task of echo ({ids:?}): {}",
                d.name,
                r.body
            );
            reached.insert(task.to_string());
        }
    }
    ensure!(
        reached == ids,
        "the requests reached {reached:?}, not every task {ids:?}"
    );
    wait_counters(
        "remote_forwards and remote_served to move on every node",
        &nodes,
        &before,
        |b, n| n.remote_forwards > b.remote_forwards && n.remote_served > b.remote_served,
    )?;
    m.ok(&["service", "rm", "echo"])?;
    Ok(())
}

// ---- Edge autonomy: serving from the last table --------------------------------------

/// Issue 18 (no Docker needed): "every node keeps serving from its last table when
/// managers are unreachable". 1 manager + 2 workers, 2 `mesh-echo` tasks pinned to the
/// workers (`node.role==worker`), published on 29009; once both workers serve, the only
/// manager is `kill -9`ed: for longer than the QUIC idle timeout (so the workers' sessions
/// to it are surely gone) every request to either worker is answered, and together they
/// reach both tasks (the remote path between the two workers needs no manager).
#[test]
fn workers_keep_serving_from_their_last_table_while_no_manager_answers() -> Result<()> {
    const PORT: u16 = 29009;
    let (mut ms, ws) = start_cluster_from("mg-", 95, 1, 1, 2)?;
    let m = &ms[0];
    let publish = format!("{PORT}:80");
    create_echo(
        m,
        2,
        &["--constraint", "node.role==worker", "-p", &publish],
        &[],
    )?;
    let rows = wait_running(m, "echo", 2, false)?;
    let ids = task_ids(&rows);
    let workers = [&ws[0], &ws[1]];
    for d in workers {
        wait_served(d, published(d, PORT))?;
    }
    ms[0].kill9();
    let killed = Instant::now();
    // Requests keep going to both workers for longer than the QUIC idle timeout, after which
    // their sessions to the dead leader are gone for sure; every one must be answered.
    let for_how_long = shoal::net::IDLE_TIMEOUT + Duration::from_secs(5);
    let mut reached = BTreeSet::new();
    let mut answered = 0usize;
    while killed.elapsed() < for_how_long {
        for d in workers {
            let r = http_ok(published(d, PORT)).with_context(|| {
                format!(
                    "{} stopped serving {:?} after the manager died ({answered} answered before)",
                    d.name,
                    killed.elapsed()
                )
            })?;
            let task = r.field("task").unwrap_or_default().to_string();
            ensure!(
                ids.contains(&task),
                "{} answered for task `{task}`, not a task of echo ({ids:?})",
                d.name
            );
            reached.insert(task);
            answered += 1;
        }
    }
    eprintln!("{answered} requests answered in {for_how_long:?} with no manager");
    ensure!(
        reached == ids,
        "with no manager the requests reached {reached:?}, not every task {ids:?}"
    );
    Ok(())
}

/// Issue 20 (chaos seeds 404 and 606; no Docker needed): a leader cut off by a partition
/// (no packet back, not even an ICMP error) keeps its side of the worker sessions, and a
/// worker used to stay on that connection until QUIC's idle timeout (10 s), its endpoint
/// table frozen: a rolling update the new leader ran meanwhile left the worker forwarding
/// to stopped tasks. 3 managers + 1 worker, `echo` (2 process tasks on managers) published
/// on 29010; the leader is cut off from every other node (iptables, chain
/// `SHOAL-CHAOS-96`); the worker's session must reach the new leader within 4 s of the
/// survivors agreeing on it (well inside the idle timeout), and after a forced update the
/// worker serves the new tasks.
#[test]
fn issue_20_a_worker_session_follows_a_new_leader_before_the_idle_timeout() -> Result<()> {
    const PORT: u16 = 29010;
    let (ms, ws) = start_cluster_from("mf-", 96, 1, 3, 1)?;
    let w = &ws[0];
    let publish = format!("{PORT}:80");
    create_echo(
        &ms[0],
        2,
        &["--constraint", "node.role==manager", "-p", &publish],
        &[],
    )?;
    wait_running(&ms[0], "echo", 2, false)?;
    wait_served(w, published(w, PORT))?;
    let old = ms[0].json(&["info"])?["leader"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let ids: Vec<String> = ms.iter().map(shoal_tests::node_id).collect::<Result<_>>()?;
    let cut = ids
        .iter()
        .position(|id| *id == old)
        .with_context(|| format!("the leader {old} should be one of the managers {ids:?}"))?;
    let survivors: Vec<usize> = (0..3).filter(|i| *i != cut).collect();
    let others: Vec<_> = ms
        .iter()
        .chain(&ws)
        .filter(|d| d.name != ms[cut].name)
        .map(|d| d.addr.ip())
        .collect();
    let firewall = Firewall::new(96)?;
    firewall.partition(ms[cut].addr.ip(), &others)?;
    let after_cut = Instant::now();
    let new = poll_until(
        "the survivors to agree on a new leader",
        Duration::from_secs(20),
        || {
            let leaders: BTreeSet<String> = survivors
                .iter()
                .filter_map(|i| ms[*i].json(&["info"]).ok())
                .filter_map(|v| v["leader"].as_str().map(str::to_string))
                .collect();
            Ok(match leaders.into_iter().collect::<Vec<_>>().as_slice() {
                [l] if *l != old => Some(l.clone()),
                _ => None,
            })
        },
    )?;
    let agreed = after_cut.elapsed();
    let moved = Poll::new(
        "the worker's session to reach the new leader",
        Duration::from_secs(4),
    )
    .until(|| {
        Ok(w.log()
            .lines()
            .any(|l| l.contains("worker session to the leader established") && l.contains(&new))
            .then_some(()))
    });
    let moved_after = after_cut.elapsed();
    moved.with_context(|| {
        format!(
            "the survivors agreed on {new} {agreed:?} after the cut; {moved_after:?} after it the worker \
             was still not in session with it (the idle timeout is {:?})",
            shoal::net::IDLE_TIMEOUT
        )
    })?;
    eprintln!(
        "new leader agreed {agreed:?} after the cut, worker session moved by {moved_after:?}"
    );
    let m = &ms[survivors[0]];
    let before = task_ids(&wait_running(m, "echo", 2, false)?);
    m.ok(&["service", "update", "--force", "echo"])?;
    let now = poll_until(
        "the forced update to replace both tasks",
        Duration::from_secs(30),
        || {
            let ids = task_ids(&running_rows(m, "echo")?);
            Ok((ids.len() == 2 && ids.is_disjoint(&before)).then_some(ids))
        },
    )?;
    poll_until(
        "the worker to serve the new tasks",
        Duration::from_secs(5),
        || {
            Ok(http_get(published(w, PORT)).ok().and_then(|r| {
                now.contains(r.field("task").unwrap_or_default())
                    .then_some(())
            }))
        },
    )?;
    drop(firewall);
    Ok(())
}

// ---- Item 7f: PROXY protocol v2 -------------------------------------------------------

/// Issue 18 (no Docker needed): 1 manager + 1 worker, one `mesh-echo --proxy-v2` task
/// pinned to the manager, published `published=29006,target=80,proxy-protocol=v2`. The task
/// itself answers 400 to a request without a PROXY header (so a 200 proves the mesh sent
/// one). Through the manager (local path) and through the worker (remote path), 5 requests
/// each: `client=` is the test socket's own local address, `dest=` the address it connected
/// to, `task=` the task; the manager's `local_forwards` and `remote_served` and the worker's
/// `remote_forwards` moved.
#[test]
fn a_proxy_v2_task_sees_the_clients_address_through_local_and_remote_paths() -> Result<()> {
    const PORT: u16 = 29006;
    let (ms, ws) = start_cluster_from("mf-", 93, 1, 1, 1)?;
    let m = &ms[0];
    let w = &ws[0];
    let publish = format!("published={PORT},target=80,proxy-protocol=v2");
    let pin = format!("node.hostname=={}", m.name);
    create_echo(
        m,
        1,
        &["--constraint", &pin, "--publish", &publish],
        &["--proxy-v2"],
    )?;
    let rows = wait_running(m, "echo", 1, false)?;
    ensure!(
        rows[0]["node"] == m.name.as_str(),
        "the task should run on {}: {}",
        m.name,
        brief(&rows)
    );
    let task = rows[0]["id"].as_str().context("task id")?.to_string();
    let direct: SocketAddr = ([127, 0, 0, 1], process_task_port(MESH_ECHO, &task)?).into();
    let bare = http_get(direct).map_err(|e| anyhow::anyhow!("the task at {direct}: {e}"))?;
    ensure!(
        bare.status == 400,
        "the task answered {} to a request without a PROXY header (want 400): {}",
        bare.status,
        bare.body
    );

    let nodes = [m, w];
    let before = counters(&nodes)?;
    for (d, path) in [(m, "local"), (w, "remote")] {
        let addr = published(d, PORT);
        wait_served(d, addr)?;
        for i in 0..5 {
            let r = http_ok(addr).with_context(|| format!("request {i} through {path} path"))?;
            ensure!(
                r.field("task") == Some(task.as_str()),
                "{path} path: answered by another task: {}",
                r.body
            );
            ensure!(
                r.field("client") == Some(r.local.to_string().as_str()),
                "{path} path through {}: the PROXY header's source should be our socket's {}: {}",
                d.name,
                r.local,
                r.body
            );
            ensure!(
                r.field("dest") == Some(addr.to_string().as_str()),
                "{path} path through {}: the PROXY header's destination should be {addr}: {}",
                d.name,
                r.body
            );
        }
    }
    poll_until(
        "the manager's local_forwards and remote_served, the worker's remote_forwards to move",
        Duration::from_secs(10),
        || {
            let now = counters(&nodes)?;
            ensure!(
                now[0].local_forwards > before[0].local_forwards
                    && now[0].remote_served > before[0].remote_served,
                "{}: local_forwards and remote_served should move: before {:?}, now {:?}",
                m.name,
                before[0],
                now[0]
            );
            ensure!(
                now[1].remote_forwards > before[1].remote_forwards,
                "{}: remote_forwards should move: before {:?}, now {:?}",
                w.name,
                before[1],
                now[1]
            );
            Ok(Some(()))
        },
    )?;
    m.ok(&["service", "rm", "echo"])?;
    Ok(())
}

// ---- Item 7g: hostile mesh streams ----------------------------------------------------

/// How a hostile mesh stream ended, judged: `Ok(how)` when nothing was connected.
fn judge_hostile(outcome: &Outcome, raw: &std::result::Result<Vec<u8>, String>) -> Result<String> {
    let raw_len = raw.as_ref().map_or(0, Vec::len);
    match outcome {
        Outcome::NoConnection(e) => Ok(format!("no connection ({e})")),
        Outcome::NoAnswer(e) => Ok(format!("reset / no answer ({e})")),
        Outcome::Answered { .. } => match outcome.decode::<MeshReply>() {
            Some(MeshReply::Refused(why)) if raw_len == 0 => Ok(format!("refused: {why}")),
            Some(MeshReply::Refused(why)) => {
                bail!("refused ({why}) but then {raw_len} raw bytes came back")
            }
            Some(MeshReply::Connected) => bail!(
                "CONNECTED, and {raw_len} bytes came back: {:?}",
                raw.as_ref()
                    .map(|b| String::from_utf8_lossy(b).into_owned())
            ),
            None => bail!("an answer that is no MeshReply"),
        },
    }
}

/// Issue 18 (no Docker needed): 1 manager + 1 worker, one `mesh-echo` task pinned to the
/// manager, published on 29007. A rogue QUIC peer (tests/src/rogue.rs) opens tag-10 streams
/// with a well-formed `MeshOpen` and a request after it.
///
/// First a control: with a member's certificate (the worker's, taken from its state dir)
/// and a valid open (the service, its task, port 29007) sent to the manager, the stream is
/// `Connected` and the task answers — so the refusals below are the node's choice, not a
/// malformed request. Then, each judged refused (an explicit `Refused` with no bytes after
/// it, or the stream reset) and followed by a check that the task accepted no connection
/// (its `conn=` counter, read through the published port before and after, moved by exactly
/// that one read):
/// - member certificate, port 29008 (published by no service) → manager;
/// - member certificate (the manager's), the manager's task → the worker (not its task);
/// - member certificate, an unknown task ID → manager;
/// - no client certificate (as a joiner dials) → manager: reset, no answer at all;
/// - a certificate of another cluster's CA → manager: no connection or reset.
///
/// The manager's `remote_served` does not move after the control.
#[test]
fn hostile_mesh_streams_connect_nothing() -> Result<()> {
    const PORT: u16 = 29007;
    const UNPUBLISHED: u16 = 29008;
    let (ms, ws) = start_cluster_from("mg-", 94, 1, 1, 1)?;
    let m = &ms[0];
    let w = &ws[0];
    let publish = format!("{PORT}:80");
    let pin = format!("node.hostname=={}", m.name);
    create_echo(m, 1, &["--constraint", &pin, "-p", &publish], &[])?;
    let rows = wait_running(m, "echo", 1, false)?;
    let task = rows[0]["id"].as_str().context("task id")?.to_string();
    ensure!(
        rows[0]["node"] == m.name.as_str(),
        "the task should run on {}: {}",
        m.name,
        brief(&rows)
    );
    let service_id = m.inspect(&["service", "inspect", "echo"])?["id"]
        .as_str()
        .context("service id")?
        .to_string();
    let front = published(m, PORT);
    wait_served(m, front)?;
    let conns = || -> Result<u64> {
        let r = http_ok(front)?;
        r.field("conn")
            .and_then(|c| c.parse().ok())
            .with_context(|| format!("no conn= in {}", r.body))
    };

    let w_creds = Credentials::from_state_dir(&w.state_dir)?;
    let m_creds = Credentials::from_state_dir(&m.state_dir)?;
    let as_worker = Rogue::with_credentials("the worker's member certificate", &w_creds)?;
    let as_manager = Rogue::with_credentials("the manager's member certificate", &m_creds)?;
    let open = |published: u16, task_id: &str, to: &Daemon| MeshOpen {
        service_id: service_id.clone(),
        task_id: task_id.to_string(),
        published,
        client: SocketAddr::from(([127, 0, 0, 1], 40_000)),
        ingress: SocketAddr::new(to.addr.ip(), published),
    };
    let request = b"GET / HTTP/1.0\r\n\r\n";

    // The control: a well-formed stream from a member is served.
    poll_until(
        "a member's well-formed mesh stream to be served",
        Duration::from_secs(20),
        || {
            let (o, raw) =
                as_worker.try_raw_stream(m.addr, TAG_MESH, &open(PORT, &task, m), request);
            match o.decode::<MeshReply>() {
                Some(MeshReply::Connected) => {
                    let raw = raw.map_err(|e| anyhow::anyhow!("connected, then {e}"))?;
                    let text = String::from_utf8_lossy(&raw);
                    ensure!(
                        text.starts_with("HTTP/1.0 200") && text.contains(&format!("task={task}")),
                        "connected, but the task's answer is {text:?}"
                    );
                    Ok(Some(()))
                }
                _ => bail!("{o:?}"),
            }
        },
    )?;
    let served = |d: &Daemon| -> Result<u64> { Ok(mesh_counters(d)?.remote_served) };
    let m_served = poll_until(
        "the control stream counted in remote_served",
        Duration::from_secs(10),
        || Ok(served(m).ok().filter(|n| *n >= 1)),
    )?;
    let w_served = served(w)?;

    let no_cert = Rogue::without_certificate("no certificate", &w_creds.ca_cert, None)?;
    let foreign = Rogue::with_credentials(
        "another cluster's certificate",
        &Credentials::foreign(&w_creds.ca_cert)?,
    )?;
    let attacks: Vec<(&str, &Rogue, &Daemon, MeshOpen, bool)> = vec![
        (
            "member, a port no service publishes",
            &as_worker,
            m,
            open(UNPUBLISHED, &task, m),
            false,
        ),
        (
            "member, a task the node does not run",
            &as_manager,
            w,
            open(PORT, &task, w),
            false,
        ),
        (
            "member, an unknown task",
            &as_worker,
            m,
            open(PORT, "nosuchtask0000000000000000", m),
            false,
        ),
        ("no certificate", &no_cert, m, open(PORT, &task, m), true),
        (
            "another cluster's certificate",
            &foreign,
            m,
            open(PORT, &task, m),
            true,
        ),
    ];
    let mut breaches = Vec::new();
    for (what, rogue, target, msg, must_reset) in attacks {
        let before = conns()?;
        let (outcome, raw) = rogue.try_raw_stream(target.addr, TAG_MESH, &msg, request);
        match judge_hostile(&outcome, &raw) {
            Ok(how) if must_reset && matches!(outcome, Outcome::Answered { .. }) => {
                breaches.push(format!(
                    "{what} → {}: answered ({how}), but a peer without a member certificate \
                     must get the stream reset",
                    target.name
                ));
            }
            Ok(how) => eprintln!("{what} → {}: {how}", target.name),
            Err(e) => breaches.push(format!("{what} → {}: {e:#}", target.name)),
        }
        if matches!(outcome, Outcome::NoConnection(_)) && !must_reset {
            breaches.push(format!(
                "{what}: the rogue could not even connect ({outcome:?}), so this proves nothing"
            ));
        }
        let after = conns()?;
        if after != before + 1 {
            breaches.push(format!(
                "{what}: the task accepted {} connection(s) besides the test's own reads \
                 (conn {before} → {after})",
                after.saturating_sub(before + 1)
            ));
        }
    }
    let (m_now, w_now) = (served(m)?, served(w)?);
    if (m_now, w_now) != (m_served, w_served) {
        breaches.push(format!(
            "remote_served moved after the control: {} {m_served} → {m_now}, {} {w_served} → {w_now}",
            m.name, w.name
        ));
    }
    ensure!(
        breaches.is_empty(),
        "hostile mesh streams got through:\n{}",
        breaches.join("\n")
    );
    m.ok(&["service", "rm", "echo"])?;
    Ok(())
}
