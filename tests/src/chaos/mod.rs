//! The chaos run (issue 20): a real cluster on loopback, a seeded schedule of faults and
//! client writes, and invariants checked as it goes and at the end. Driven by
//! `tests/src/bin/chaos.rs` (`scripts/chaos.sh`).
//!
//! The cluster: managers `cm1…` and workers `cw1…` on `127.0.120.1…` (`:4747`; `--block B`
//! moves it to `127.0.B.x`, so that several runs can go at once), published
//! ports 29301 (`echo`: `mesh-echo` on the process driver) and, with Docker, 29302 (`web`:
//! busybox httpd on the test image, with a health check). `hc` is health-checked (Docker
//! when present, else the process driver). Writes create, scale, update and remove
//! process-driver services `x1…` too.
//!
//! Faults (see [`schedule`]): `kill -9` and restart of a manager, the leader, a worker, or
//! a majority of the managers (then the recovery is timed); a partition of one node from
//! all others (UDP both ways, iptables); a lossy link one way between two nodes (iptables'
//! `statistic` match: 30–100 % of the datagrams); `docker kill` of a task container; a
//! step of one node's wall clock (a second to a day, forward or back, as NTP steps a clock
//! it finds far off — a Pi without a real-time clock boots with the wrong time), stepped
//! back after the hold. A daemon cannot be given a wall clock of its own by the kernel (a
//! time namespace offsets only the monotonic clocks), so the daemons run under
//! libfaketime (`LD_PRELOAD`, its offset read from a file per node, the monotonic clock
//! left alone); without the library the schedule has no clock faults. A clock step is no
//! excuse for a failed mesh request.
//!
//! Invariants (a violation prints the seed):
//! - no acknowledged write is lost ([`history`]: a register check per field);
//! - after the faults stop (every rule removed, every node running), the cluster converges
//!   within [`CONVERGENCE_DEADLINE`]: every service runs exactly its replicas, one task per
//!   slot `1..=N`, nothing pending; every manager's `node ls` agrees and shows every node
//!   ready; every node's `info` names the same leader; no running container of the
//!   cluster and no process-driver task process is a task that is not running in the
//!   state. The same check, timed, follows each majority kill's restart;
//! - no slot shows two tasks running with desired state running in the leader's
//!   `service ps` (sampled every [`SAMPLE_EVERY`]) for longer than [`DUPLICATE_BOUND`],
//!   and no slot has two process-driver task processes (different task IDs, found in
//!   `/proc`) on nodes that are not killed or cut off for longer than that either (a copy
//!   on a node that was cut off must stop within the bound once it is back), nor two
//!   running containers (from `docker ps`, same rule);
//! - a mesh request (every node's published ports, continuously) fails only while a node
//!   fault (kill, partition, lossy link) of the node it entered at or of a node where its
//!   service had a task assigned, starting, running or stopping (sampled with the
//!   duplicates) — or a `docker kill` of one of that service's containers — is active or
//!   ended less than [`MESH_GRACE`] before; client writes and clock steps do not excuse a
//!   failure;
//! - no daemon log says `panicked at`.
//!
//! A seed replays the same schedule (the schedule is a function of the seed and the
//! configuration only); the outcome may differ with timing.

pub mod history;
pub mod net;
pub mod schedule;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use crate::{
    ClusterContainers, Daemon, Poll, docker, http_get, output_within, shoal_bin, start_cluster_with,
};
use history::{Final, Record};
use schedule::{Fault, Schedule};

/// Set by the binary's SIGINT/SIGTERM handler: the run stops at its next look and unwinds
/// (so every guard cleans up).
pub static STOP: AtomicBool = AtomicBool::new(false);

/// The default address block: `127.0.120.x` (`--block` picks another, so that runs can
/// go side by side).
pub const BLOCK: u8 = 120;
/// The `echo` service's published port (process driver, `mesh-echo`).
pub const ECHO_PORT: u16 = 29301;
/// The `web` service's published port (Docker, busybox httpd).
pub const WEB_PORT: u16 = 29302;
/// How long the cluster has to converge once the faults stop (and after a majority kill).
pub const CONVERGENCE_DEADLINE: Duration = Duration::from_secs(60);
/// How long a slot may show two running copies in the leader's state.
pub const DUPLICATE_BOUND: Duration = Duration::from_secs(5);
/// The observed task states in which a task's node counts as hosting its service (for
/// the mesh rule): assigned and not yet ended.
const HOSTING_STATES: [&str; 4] = ["assigned", "preparing", "starting", "running"];

/// How often the leader's `service ps` is sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(1);
/// How long after a fault ends a mesh failure is still excused.
pub const MESH_GRACE: Duration = Duration::from_secs(10);

/// What to run.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub duration: Duration,
    pub managers: usize,
    pub workers: usize,
    pub docker: bool,
    /// The third byte of the run's addresses, `127.0.BLOCK.x`.
    pub block: u8,
    /// libfaketime's library: with it, the daemons run under it and the schedule steps
    /// their wall clocks; without it, no clock faults.
    pub faketime: Option<PathBuf>,
}

/// A fault's time span and the nodes it hit: a mesh request that fails in it (or up to
/// [`MESH_GRACE`] after it) is excused when it entered at one of those nodes or its
/// service had a task on one of them.
#[derive(Debug, Clone)]
struct Window {
    from: Duration,
    to: Option<Duration>,
    /// The nodes killed, cut off or whose container was killed.
    nodes: BTreeSet<usize>,
    /// Only for this service's port (a `docker kill` hits one service).
    service: Option<String>,
}

/// Which service's port a mesh probe goes to.
fn service_of_port(port: u16) -> &'static str {
    if port == WEB_PORT { "web" } else { "echo" }
}

/// What the run's threads share.
struct Shared {
    start: Instant,
    seed: u64,
    violations: Mutex<Vec<String>>,
    windows: Mutex<Vec<Window>>,
    stop_threads: AtomicBool,
    pause_writer: AtomicBool,
    writer_idle: AtomicBool,
    failovers: AtomicU64,
    /// Nodes killed or cut off (partition, lossy link) right now.
    faulted: Mutex<BTreeSet<usize>>,
    /// Where each service's tasks were (in [`HOSTING_STATES`]), sampled with the duplicates:
    /// `(when, service, node indices)`.
    hosts: Mutex<Vec<(Duration, String, BTreeSet<usize>)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn new(seed: u64) -> Shared {
        Shared {
            start: Instant::now(),
            seed,
            violations: Mutex::new(Vec::new()),
            windows: Mutex::new(Vec::new()),
            stop_threads: AtomicBool::new(false),
            pause_writer: AtomicBool::new(false),
            writer_idle: AtomicBool::new(true),
            failovers: AtomicU64::new(0),
            faulted: Mutex::new(BTreeSet::new()),
            hosts: Mutex::new(Vec::new()),
        }
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn say(&self, text: &str) {
        println!("[{:>9.3}s] {text}", self.now().as_secs_f64());
    }

    fn violation(&self, text: String) {
        self.say(&format!("VIOLATION (seed {}): {text}", self.seed));
        lock(&self.violations).push(text);
    }

    fn open_window(&self, nodes: &[usize], service: Option<String>) -> usize {
        let mut w = lock(&self.windows);
        w.push(Window {
            from: self.now(),
            to: None,
            nodes: nodes.iter().copied().collect(),
            service,
        });
        w.len() - 1
    }

    /// Marks `nodes` as killed or cut off until the next [`Shared::close_window`].
    fn fault(&self, nodes: &[usize]) {
        lock(&self.faulted).extend(nodes.iter().copied());
    }

    fn close_window(&self, i: usize) {
        lock(&self.faulted).clear();
        let now = self.now();
        if let Some(w) = lock(&self.windows).get_mut(i) {
            w.to = Some(now);
        }
    }

    /// Whether a mesh failure over `[from, to]` of a request to `service` that entered at
    /// node `entry` is excused by a fault window: one that overlaps it (with the grace),
    /// hit the entry node or a node where `service` ran a task around then, and, for a
    /// `docker kill`, killed a task of `service`.
    fn excused(&self, from: Duration, to: Duration, service: &str, entry: usize) -> bool {
        let hosts = lock(&self.hosts);
        lock(&self.windows).iter().any(|w| {
            let end = w.to.map(|end| end + MESH_GRACE);
            if w.from > to || end.is_some_and(|end| end < from) {
                return false;
            }
            if w.service.as_deref().is_some_and(|s| s != service) {
                return false;
            }
            if w.nodes.contains(&entry) {
                return true;
            }
            // Where the service's tasks were from a sample before the fault to the end
            // of its grace.
            let lo = w.from.saturating_sub(SAMPLE_EVERY * 10);
            hosts.iter().any(|(at, s, nodes)| {
                s == service
                    && *at >= lo
                    && end.is_none_or(|end| *at <= end)
                    && !nodes.is_disjoint(&w.nodes)
            })
        })
    }
}

/// Sleeps `d` in short steps; fails when the run is interrupted.
fn pace(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        if STOP.load(Ordering::Relaxed) {
            bail!("interrupted");
        }
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(100)));
    }
    Ok(())
}

/// `shoal -H unix://SOCK ARGS --format json` with a deadline.
fn cli_json(sock: &Path, args: &[&str], deadline: Duration) -> Result<Value> {
    let mut cmd = Command::new(shoal_bin());
    cmd.arg("-H")
        .arg(format!("unix://{}", sock.display()))
        .args(args)
        .args(["--format", "json"])
        .stdin(Stdio::null());
    let out = output_within(&mut cmd, deadline)?;
    ensure!(
        out.status.success(),
        "`shoal {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// The `mesh-echo` binary: built next to this one.
fn mesh_echo() -> Result<PathBuf> {
    let p = std::env::current_exe()?.with_file_name("mesh-echo");
    ensure!(
        p.exists(),
        "{} is missing: build the tests crate's binaries (cargo build -p shoal-tests --bins)",
        p.display()
    );
    Ok(p)
}

/// The Docker tasks' program: busybox httpd answering its hostname, healthy from the start.
const HTTPD: &str = "mkdir -p /www; hostname > /www/index.html; touch /tmp/ok; \
    trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait";

/// The cluster and what the run knows about it.
struct Cluster {
    nodes: Vec<Daemon>,
    names: Vec<String>,
    ids: Vec<String>,
    managers: usize,
    running: Vec<bool>,
    cluster_id: String,
    docker: bool,
}

impl Cluster {
    fn manager_sockets(&self) -> Vec<PathBuf> {
        self.nodes[..self.managers]
            .iter()
            .map(|d| d.socket.clone())
            .collect()
    }

    fn ip(&self, i: usize) -> IpAddr {
        self.nodes[i].addr.ip()
    }

    /// The leader as the running managers name it, when they agree.
    fn leader(&self) -> Option<usize> {
        let mut named = BTreeSet::new();
        for i in 0..self.managers {
            if self.running[i] {
                let v = self.nodes[i].json(&["info"]).ok()?;
                named.insert(v["leader"].as_str().map(str::to_string));
            }
        }
        match named.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(l)] => self.ids.iter().position(|id| id == l),
            _ => None,
        }
    }

    /// A running manager that answers, the leader first.
    fn any_manager(&self) -> Option<&Daemon> {
        self.leader().map(|i| &self.nodes[i]).or_else(|| {
            (0..self.managers)
                .find(|i| self.running[*i])
                .map(|i| &self.nodes[i])
        })
    }

    /// One look at convergence: `Ok(())` when every end-state invariant holds, else what
    /// does not.
    fn converged(&self) -> Result<()> {
        // One leader, named by every node.
        let mut leaders = BTreeMap::new();
        for (i, d) in self.nodes.iter().enumerate() {
            let v = d.json(&["info"])?;
            leaders.insert(
                self.names[i].clone(),
                v["leader"].as_str().unwrap_or("").to_string(),
            );
        }
        let distinct: BTreeSet<&String> = leaders.values().collect();
        ensure!(
            distinct.len() == 1 && distinct.iter().all(|l| !l.is_empty()),
            "leaders named: {leaders:?}"
        );
        let leader_id = distinct.into_iter().next().cloned().unwrap_or_default();
        let li = self
            .ids
            .iter()
            .position(|id| *id == leader_id)
            .context("the leader is no node of the run")?;
        ensure!(
            li < self.managers,
            "the leader {} is a worker",
            self.names[li]
        );
        // Every manager's node table agrees and shows every node ready.
        let mut views = BTreeSet::new();
        for d in &self.nodes[..self.managers] {
            let v = d.json(&["node", "ls"])?;
            let rows: BTreeSet<(String, String, String)> = v
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| {
                    let s = |k: &str| n[k].as_str().unwrap_or("").to_string();
                    (s("hostname"), s("status"), s("role"))
                })
                .collect();
            ensure!(
                rows.len() == self.nodes.len() && rows.iter().all(|r| r.1 == "ready"),
                "{}: node ls shows {rows:?}",
                d.name
            );
            views.insert(rows);
        }
        ensure!(views.len() == 1, "managers disagree: {views:?}");
        // Every service at its replica count, one running task per slot.
        let leader = &self.nodes[li];
        let mut running_tasks = BTreeSet::new();
        for s in leader
            .json(&["service", "ls"])?
            .as_array()
            .into_iter()
            .flatten()
        {
            let name = s["name"].as_str().unwrap_or("").to_string();
            let want = s["replicas"]
                .as_u64()
                .context("a service without replicas")?;
            let rows = crate::tasks(leader, &name)?;
            let mut slots = Vec::new();
            for t in &rows {
                let live = t["desired_state"] == "running";
                if live && t["state"] == "running" {
                    slots.push(t["slot"].as_u64().unwrap_or(0));
                    running_tasks.insert(t["id"].as_str().unwrap_or("").to_string());
                } else if live {
                    bail!(
                        "{name}: task {} is {} (desired running)",
                        t["id"],
                        t["state"]
                    );
                } else if t["state"] == "running" {
                    bail!(
                        "{name}: task {} runs with desired state {}",
                        t["id"],
                        t["desired_state"]
                    );
                }
            }
            slots.sort_unstable();
            let expected: Vec<u64> = (1..=want).collect();
            ensure!(
                slots == expected,
                "{name}: running slots {slots:?}, want 1..={want}"
            );
        }
        // No task process or container that is not a running task.
        let dirs: Vec<PathBuf> = self.nodes.iter().map(|d| d.state_dir.clone()).collect();
        for (pid, task, _) in task_processes(&dirs) {
            ensure!(
                running_tasks.contains(&task),
                "process {pid} runs task {task}, which is not running in the state"
            );
        }
        if self.docker {
            let out = docker(&[
                "ps",
                "--filter",
                &format!("label=shoal.cluster={}", self.cluster_id),
                "--format",
                r#"{{.ID}} {{.Label "shoal.task"}}"#,
            ])?;
            for line in out.lines() {
                let mut f = line.split_whitespace();
                let (id, task) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
                ensure!(
                    running_tasks.contains(task),
                    "container {id} runs task {task}, which is not running in the state"
                );
            }
        }
        Ok(())
    }
}

/// Process-driver task processes of these daemons: `(pid, task ID)`, found by `HOME` under
/// a state dir and `SHOAL_TASK_ID` in their environment (health checks included: they
/// carry their task's ID).
fn task_processes(state_dirs: &[PathBuf]) -> Vec<(i32, String, usize)> {
    let dirs: Vec<String> = state_dirs
        .iter()
        .map(|d| format!("HOME={}/", d.display()))
        .collect();
    let mut out = Vec::new();
    for pid in crate::all_pids() {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        let vars: Vec<String> = env
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        let Some(node) = vars
            .iter()
            .find_map(|v| dirs.iter().position(|d| v.starts_with(d.as_str())))
        else {
            continue;
        };
        if crate::start_ticks(pid).is_none() {
            continue;
        }
        if let Some(task) = vars.iter().find_map(|v| v.strip_prefix("SHOAL_TASK_ID=")) {
            out.push((pid, task.to_string(), node));
        }
    }
    out
}

/// Waits up to [`CONVERGENCE_DEADLINE`] for [`Cluster::converged`]; returns how long it
/// took, or records a violation with the last observation.
fn converge(c: &Cluster, sh: &Shared, what: &str) -> Result<Option<Duration>> {
    let start = Instant::now();
    let r = Poll::new(what, CONVERGENCE_DEADLINE)
        .every(Duration::from_millis(500))
        .until(|| {
            if STOP.load(Ordering::Relaxed) {
                return Ok(Some(false));
            }
            c.converged().map(|()| Some(true))
        });
    match r {
        Ok(true) => {
            let took = start.elapsed();
            sh.say(&format!(
                "converged ({what}) in {:.1} s",
                took.as_secs_f64()
            ));
            Ok(Some(took))
        }
        Ok(false) => bail!("interrupted"),
        Err(e) => {
            sh.violation(format!(
                "no convergence within {CONVERGENCE_DEADLINE:?} ({what}): {e:#}"
            ));
            Ok(None)
        }
    }
}

/// The mesh prober: one request to every node's published ports in turn, all the time.
/// Prints when a (port, node) starts and stops failing; returns the failures as
/// `(from, to, port, node, error)`.
fn probe_mesh(
    sh: &Shared,
    targets: Vec<(String, IpAddr)>,
    ports: Vec<u16>,
) -> Vec<(Duration, Duration, u16, String, String)> {
    let mut failures = Vec::new();
    let mut failing: BTreeMap<(u16, String), usize> = BTreeMap::new();
    while !sh.stop_threads.load(Ordering::Relaxed) {
        for port in &ports {
            for (name, ip) in &targets {
                let from = sh.now();
                let r = http_get(SocketAddr::new(*ip, *port));
                let to = sh.now();
                let key = (*port, name.clone());
                match r {
                    Ok(reply) if reply.status == 200 => {
                        if let Some(n) = failing.remove(&key) {
                            sh.say(&format!(
                                "mesh :{port} via {name} answers again (after {n} failures)"
                            ));
                        }
                    }
                    other => {
                        let err = match other {
                            Ok(reply) => format!("status {}", reply.status),
                            Err(e) => e.to_string(),
                        };
                        let n = failing.entry(key).or_insert(0);
                        if *n == 0 {
                            sh.say(&format!("mesh :{port} via {name} fails: {err}"));
                        }
                        *n += 1;
                        failures.push((from, to, *port, name.clone(), err));
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    failures
}

/// The node (its index in `names`) a `service ps` row makes a host of its service: one
/// where the task is on the way up, up, or on the way down (running, desired shutdown). A
/// task that started between two samples and serves when its node is killed counts as
/// much as one seen running.
fn hosting_node(row: &Value, names: &[String]) -> Option<usize> {
    if !HOSTING_STATES.contains(&row["state"].as_str().unwrap_or("")) {
        return None;
    }
    let node = row["node"].as_str()?;
    names.iter().position(|n| n == node)
}

/// The duplicate sampler: every [`SAMPLE_EVERY`], the leader's `service ps` of every
/// service; a slot with two running copies for longer than [`DUPLICATE_BOUND`] is a
/// violation. Also counts leader changes (failovers).
fn sample_duplicates(
    sh: &Shared,
    sockets: Vec<PathBuf>,
    ids: Vec<String>,
    names: Vec<String>,
    sockets_by_id: Vec<PathBuf>,
    state_dirs: Vec<PathBuf>,
    docker_cluster: Option<String>,
) {
    let mut seen: BTreeMap<(String, u64), (Duration, bool)> = BTreeMap::new();
    let mut leader: Option<String> = None;
    let mut k = 0usize;
    while !sh.stop_threads.load(Ordering::Relaxed) {
        std::thread::sleep(SAMPLE_EVERY);
        k += 1;
        let sock = &sockets[k % sockets.len()];
        let Ok(info) = cli_json(sock, &["info"], Duration::from_secs(5)) else {
            continue;
        };
        let Some(l) = info["leader"].as_str().map(str::to_string) else {
            continue;
        };
        if leader.as_ref().is_some_and(|old| *old != l) {
            sh.failovers.fetch_add(1, Ordering::Relaxed);
        }
        leader = Some(l.clone());
        // Ask the leader itself when this run knows its socket.
        let sock = ids
            .iter()
            .position(|id| *id == l)
            .map(|i| &sockets_by_id[i])
            .unwrap_or(sock);
        let Ok(services) = cli_json(sock, &["service", "ls"], Duration::from_secs(5)) else {
            continue;
        };
        let now = sh.now();
        let mut doubled = BTreeSet::new();
        // Task ID → (service, slot), from every row seen this round.
        let mut slot_of: BTreeMap<String, (String, u64)> = BTreeMap::new();
        for s in services.as_array().into_iter().flatten() {
            let name = s["name"].as_str().unwrap_or("").to_string();
            let Ok(rows) = cli_json(sock, &["service", "ps", &name], Duration::from_secs(5)) else {
                continue;
            };
            let mut per_slot: BTreeMap<u64, Vec<String>> = BTreeMap::new();
            let mut on: BTreeSet<usize> = BTreeSet::new();
            for t in rows.as_array().into_iter().flatten() {
                if let Some(i) = hosting_node(t, &names) {
                    on.insert(i);
                }
                if let Some(slot) = t["slot"].as_u64() {
                    slot_of.insert(
                        t["id"].as_str().unwrap_or("").to_string(),
                        (name.clone(), slot),
                    );
                }
                if t["desired_state"] == "running" && t["state"] == "running" {
                    per_slot
                        .entry(t["slot"].as_u64().unwrap_or(0))
                        .or_default()
                        .push(format!(
                            "{}@{}",
                            t["id"].as_str().unwrap_or(""),
                            t["node"].as_str().unwrap_or("")
                        ));
                }
            }
            lock(&sh.hosts).push((now, name.clone(), on));
            for (slot, copies) in per_slot {
                if copies.len() > 1 {
                    let key = (name.clone(), slot);
                    doubled.insert(key.clone());
                    let entry = seen.entry(key).or_insert((now, false));
                    if !entry.1 && now - entry.0 > DUPLICATE_BOUND {
                        entry.1 = true;
                        sh.violation(format!(
                            "slot {name}.{slot} has run two copies for {:.1} s: {copies:?}",
                            (now - entry.0).as_secs_f64()
                        ));
                    }
                }
            }
        }
        // What really runs: process-driver task processes on nodes that are neither
        // killed nor cut off, two task IDs of one slot at once.
        let faulted = lock(&sh.faulted).clone();
        let mut running: BTreeMap<(String, u64), BTreeSet<String>> = BTreeMap::new();
        for (_, task, node) in task_processes(&state_dirs) {
            if faulted.contains(&node) {
                continue;
            }
            if let Some((svc, slot)) = slot_of.get(&task) {
                running
                    .entry((format!("{svc} (processes)"), *slot))
                    .or_default()
                    .insert(format!("{task}@{}", node + 1));
            }
        }
        // And running containers of the cluster, likewise.
        if let Some(cluster) = &docker_cluster
            && let Ok(out) = docker(&[
                "ps",
                "--filter",
                &format!("label=shoal.cluster={cluster}"),
                "--format",
                r#"{{.Label "shoal.task"}} {{.Label "shoal.node"}}"#,
            ])
        {
            for line in out.lines() {
                let mut f = line.split_whitespace();
                let (task, node) = (f.next().unwrap_or(""), f.next().unwrap_or(""));
                let Some(node) = ids.iter().position(|id| id == node) else {
                    continue;
                };
                if faulted.contains(&node) {
                    continue;
                }
                if let Some((svc, slot)) = slot_of.get(task) {
                    running
                        .entry((format!("{svc} (containers)"), *slot))
                        .or_default()
                        .insert(format!("{task}@{}", node + 1));
                }
            }
        }
        for (key, copies) in running {
            if copies.len() > 1 {
                doubled.insert(key.clone());
                let entry = seen.entry(key.clone()).or_insert((now, false));
                if !entry.1 && now - entry.0 > DUPLICATE_BOUND {
                    entry.1 = true;
                    sh.violation(format!(
                        "slot {}.{} has run two task processes or containers on reachable nodes for {:.1} s: {copies:?} (task@node number)",
                        key.0,
                        key.1,
                        (now - entry.0).as_secs_f64()
                    ));
                }
            }
        }
        seen.retain(|k, _| doubled.contains(k));
    }
}

/// Creates the base services on `m` and returns their names and replica counts.
fn create_base(m: &Daemon, docker: bool) -> Result<Vec<(&'static str, u64)>> {
    let echo = mesh_echo()?;
    let echo = echo.to_string_lossy();
    let publish = format!("{ECHO_PORT}:80");
    m.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "echo",
        "--driver",
        "process",
        "--replicas",
        "2",
        "--stop-grace-period",
        "2s",
        "-p",
        &publish,
        &echo,
    ])?;
    let health = [
        "--health-interval",
        "1s",
        "--health-timeout",
        "2s",
        "--health-retries",
        "3",
    ];
    if docker {
        let mut hc = vec![
            "service",
            "create",
            "--detach",
            "--name",
            "hc",
            "--replicas",
            "2",
            "--stop-grace-period",
            "2s",
            "--health-cmd",
            "test -f /tmp/ok",
        ];
        hc.extend(health);
        hc.extend([crate::TEST_IMAGE, "sh", "-c", HTTPD]);
        m.ok(&hc)?;
        let publish = format!("{WEB_PORT}:80");
        let mut web = vec![
            "service",
            "create",
            "--detach",
            "--name",
            "web",
            "--replicas",
            "2",
            "--stop-grace-period",
            "2s",
            "-p",
            &publish,
            "--health-cmd",
            "wget -q -O- http://127.0.0.1/ || exit 1",
        ];
        web.extend(health);
        web.extend([crate::TEST_IMAGE, "sh", "-c", HTTPD]);
        m.ok(&web)?;
        Ok(vec![("echo", 2), ("hc", 2), ("web", 2)])
    } else {
        let mut hc = vec![
            "service",
            "create",
            "--detach",
            "--name",
            "hc",
            "--driver",
            "process",
            "--replicas",
            "2",
            "--stop-grace-period",
            "1s",
            "--health-cmd",
            "true",
        ];
        hc.extend(health);
        hc.extend(["/bin/sleep", "1000000"]);
        m.ok(&hc)?;
        Ok(vec![("echo", 2), ("hc", 2)])
    }
}

/// What the run counted, for the last line.
#[derive(Debug, Default)]
pub struct Summary {
    pub faults: usize,
    pub acknowledged: usize,
    pub lost: usize,
    pub failovers: u64,
    pub convergence: Vec<Duration>,
    pub violations: Vec<String>,
}

impl Summary {
    /// The last line of a run.
    pub fn line(&self) -> String {
        let mut c = self.convergence.clone();
        c.sort_unstable();
        let p50 = c
            .get(c.len().saturating_sub(1) / 2)
            .map_or(f64::NAN, Duration::as_secs_f64);
        let max = c.last().map_or(f64::NAN, Duration::as_secs_f64);
        format!(
            "faults {}, writes acknowledged {}, lost {}, failovers {}, convergence p50 {p50:.1} s max {max:.1} s",
            self.faults, self.acknowledged, self.lost, self.failovers
        )
    }
}

/// Runs the whole thing. `Err` is a harness failure (the cluster could not be set up, an
/// interrupt); violations are in the summary.
pub fn run(cfg: &Config) -> Result<Summary> {
    let n = cfg.managers + cfg.workers;
    ensure!(
        cfg.managers >= 1 && n <= 9,
        "1..9 nodes with a manager, on 127.0.BLOCK.1-9"
    );
    let sh = Arc::new(Shared::new(cfg.seed));
    let schedule = Schedule::new(
        cfg.seed,
        cfg.managers,
        cfg.workers,
        cfg.duration,
        cfg.docker,
        cfg.faketime.is_some(),
    );
    sh.say(&format!(
        "schedule of seed {}: {} faults, {} writes",
        cfg.seed,
        schedule.episodes.len(),
        schedule.writes.len()
    ));
    let fw = net::Firewall::new(cfg.block)?;
    let (ms, ws) = start_cluster_with("c", cfg.block, 1, cfg.managers, cfg.workers, |d| {
        if let Some(lib) = &cfg.faketime {
            d.fake_clock(lib)?;
        }
        Ok(())
    })?;
    let mut nodes: Vec<Daemon> = ms.into_iter().chain(ws).collect();
    if !cfg.docker {
        // Restarts keep the flag: the nodes offer only the process driver.
        for d in &mut nodes {
            d.extra = vec!["--drivers".into(), "process".into()];
        }
    }
    let cluster_id = crate::cluster_id(&nodes[0])?;
    let _containers = ClusterContainers(cluster_id.clone());
    let ids = nodes
        .iter()
        .map(|d| {
            Ok(d.json(&["info"])?["node_id"]
                .as_str()
                .unwrap_or("")
                .to_string())
        })
        .collect::<Result<Vec<_>>>()?;
    let names: Vec<String> = nodes.iter().map(|d| d.name.clone()).collect();
    let mut c = Cluster {
        nodes,
        names: names.clone(),
        ids: ids.clone(),
        managers: cfg.managers,
        running: vec![true; n],
        cluster_id,
        docker: cfg.docker,
    };
    sh.say(&format!("cluster {} up: {}", c.cluster_id, names.join(" ")));
    let base = create_base(&c.nodes[0], cfg.docker)?;
    let mut ports = vec![ECHO_PORT];
    if cfg.docker {
        ports.push(WEB_PORT);
    }
    let mut summary = Summary::default();
    let Some(_) = converge(&c, &sh, "services created")? else {
        save_logs(&c, &sh);
        summary.violations = lock(&sh.violations).clone();
        return Ok(summary);
    };

    // Before any fault, every node serves every published port (a Docker task's port
    // opens once its health check passed).
    for port in &ports {
        for (i, name) in names.iter().enumerate() {
            let addr = SocketAddr::new(c.ip(i), *port);
            Poll::new(&format!("{name} to serve :{port}"), CONVERGENCE_DEADLINE)
                .every(Duration::from_millis(200))
                .until(|| Ok(crate::http_ok(addr).ok().map(drop)))?;
        }
    }
    sh.say(&format!("every node serves {ports:?}"));

    // The threads: writer, mesh prober, duplicate sampler.
    let history: Arc<Mutex<Vec<Record>>> = Arc::new(Mutex::new(Vec::new()));
    let faults_start = Instant::now();
    let writer = {
        let (sh, history, writes, names) = (
            sh.clone(),
            history.clone(),
            schedule.writes.clone(),
            names.clone(),
        );
        let sockets = c.manager_sockets();
        let duration = cfg.duration;
        std::thread::spawn(move || {
            for pw in writes {
                std::thread::sleep(pw.gap);
                sh.writer_idle.store(true, Ordering::Relaxed);
                while sh.pause_writer.load(Ordering::Relaxed)
                    && !sh.stop_threads.load(Ordering::Relaxed)
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                if sh.stop_threads.load(Ordering::Relaxed) || faults_start.elapsed() > duration {
                    break;
                }
                sh.writer_idle.store(false, Ordering::Relaxed);
                let at = sh.now();
                let outcome = history::run(&pw.write, &names, &sockets, pw.manager);
                sh.say(&format!(
                    "write {} -> {}",
                    history::describe(&pw.write, &names),
                    outcome.word()
                ));
                lock(&history).push(Record {
                    at,
                    write: pw.write,
                    outcome,
                });
            }
            sh.writer_idle.store(true, Ordering::Relaxed);
        })
    };
    let prober = {
        let sh = sh.clone();
        let targets: Vec<(String, IpAddr)> = (0..n).map(|i| (names[i].clone(), c.ip(i))).collect();
        std::thread::spawn(move || probe_mesh(&sh, targets, ports))
    };
    let sampler = {
        let sh = sh.clone();
        let sockets = c.manager_sockets();
        let all: Vec<PathBuf> = c.nodes.iter().map(|d| d.socket.clone()).collect();
        let dirs: Vec<PathBuf> = c.nodes.iter().map(|d| d.state_dir.clone()).collect();
        let names = names.clone();
        let cluster = cfg.docker.then(|| c.cluster_id.clone());
        std::thread::spawn(move || {
            sample_duplicates(&sh, sockets, ids, names, all, dirs, cluster);
        })
    };

    let result = drive(
        &mut c,
        &sh,
        &fw,
        &schedule,
        faults_start,
        cfg.duration,
        &mut summary,
    );
    sh.stop_threads.store(true, Ordering::Relaxed);
    let _ = writer.join();
    if let Err(e) = result {
        let _ = prober.join();
        let _ = sampler.join();
        save_logs(&c, &sh);
        return Err(e);
    }

    // The end: no faults, every node running, every clock right; convergence.
    fw.heal()?;
    ensure!(fw.rules()? == 0, "rules left in {}", fw.chain());
    let mut restarted = Vec::new();
    for i in 0..n {
        if cfg.faketime.is_some() {
            c.nodes[i].set_clock(0)?;
        }
        if !c.running[i] {
            c.nodes[i].start()?;
            c.running[i] = true;
            restarted.push(i);
        }
    }
    sh.say("faults stopped: every node running, no rules, every clock right");
    let end_window = sh.open_window(&restarted, None);
    if let Some(t) = converge(&c, &sh, "end of the run")? {
        summary.convergence.push(t);
    }
    sh.close_window(end_window);
    let failures = prober.join().unwrap_or_default();
    let _ = sampler.join();
    for (from, to, port, node, err) in &failures {
        let entry = names.iter().position(|n| n == node).unwrap_or(usize::MAX);
        if !sh.excused(*from, *to, service_of_port(*port), entry) {
            sh.violation(format!(
                "mesh request to :{port} via {node} at {:.3}–{:.3}s failed with no fault on its node or its service's nodes: {err}",
                from.as_secs_f64(),
                to.as_secs_f64()
            ));
        }
    }

    // Acknowledged writes.
    let fin = read_final(&c)?;
    let history = lock(&history).clone();
    let verdict = history::check(&history, &base, &names, &fin);
    for l in &verdict.lost {
        sh.violation(format!("lost write: {l}"));
    }
    summary.acknowledged = verdict.acknowledged;
    summary.lost = verdict.lost.len();
    // Panics.
    for d in &c.nodes {
        if let Some(line) = d.log().lines().find(|l| l.contains("panicked at")) {
            sh.violation(format!("{} panicked: {line}", d.name));
        }
    }
    summary.failovers = sh.failovers.load(Ordering::Relaxed);
    summary.violations = lock(&sh.violations).clone();
    if !summary.violations.is_empty() {
        save_logs(&c, &sh);
    }
    Ok(summary)
}

/// Copies every daemon's log to `/tmp/shoal-chaos-SEED-PID/NAME.log` (the state dirs go
/// with the run) and says where.
fn save_logs(c: &Cluster, sh: &Shared) {
    let dir = PathBuf::from(format!(
        "/tmp/shoal-chaos-{}-{}",
        sh.seed,
        std::process::id()
    ));
    if let Err(e) = std::fs::create_dir_all(&dir) {
        sh.say(&format!(
            "cannot keep the daemon logs in {}: {e}",
            dir.display()
        ));
        return;
    }
    for d in &c.nodes {
        let _ = std::fs::write(dir.join(format!("{}.log", d.name)), d.log());
    }
    sh.say(&format!("daemon logs kept in {}", dir.display()));
}

/// The final state, read through the leader (polling: the first reads after convergence
/// may meet an election).
fn read_final(c: &Cluster) -> Result<Final> {
    Poll::new("the final state", Duration::from_secs(30)).until(|| {
        let m = c.any_manager().context("no manager answers")?;
        let mut fin = Final::default();
        for s in m.json(&["service", "ls"])?.as_array().into_iter().flatten() {
            let name = s["name"].as_str().unwrap_or("").to_string();
            let ins = m.inspect(&["service", "inspect", &name])?;
            let replicas = s["replicas"].as_u64().unwrap_or(0);
            let seq = ins["spec"]["env"]["SEQ"].as_str().map(str::to_string);
            fin.services.insert(name, (replicas, seq));
        }
        for node in m.json(&["node", "ls"])?.as_array().into_iter().flatten() {
            fin.labels.insert(
                node["hostname"].as_str().unwrap_or("").to_string(),
                node["labels"]["chaos"].as_str().map(str::to_string),
            );
        }
        Ok(Some(fin))
    })
}

/// Plays the fault schedule.
fn drive(
    c: &mut Cluster,
    sh: &Shared,
    fw: &net::Firewall,
    schedule: &Schedule,
    start: Instant,
    duration: Duration,
    summary: &mut Summary,
) -> Result<()> {
    let n = c.nodes.len();
    for e in &schedule.episodes {
        let due = start + e.at;
        pace(due.saturating_duration_since(Instant::now()))?;
        summary.faults += 1;
        match &e.fault {
            Fault::DockerKill { pick } => {
                let out = docker(&[
                    "ps",
                    "--no-trunc",
                    "--filter",
                    &format!("label=shoal.cluster={}", c.cluster_id),
                    "--format",
                    r#"{{.ID}} {{.Label "shoal.service.name"}}.{{.Label "shoal.slot"}} {{.Label "shoal.node"}}"#,
                ])?;
                let mut rows: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
                rows.sort_unstable();
                if rows.is_empty() {
                    sh.say("docker kill: no running container");
                    continue;
                }
                let row = rows[(*pick % rows.len() as u64) as usize];
                let mut f = row.split_whitespace();
                let (id, task, node) = (
                    f.next().unwrap_or(""),
                    f.next().unwrap_or(""),
                    f.next().unwrap_or(""),
                );
                let service = task.split('.').next().unwrap_or("").to_string();
                let on: Vec<usize> = c.ids.iter().position(|i| i == node).into_iter().collect();
                let w = sh.open_window(&on, Some(service));
                match docker(&["kill", id]) {
                    Ok(_) => sh.say(&format!("docker kill {} ({task})", &id[..12.min(id.len())])),
                    Err(e) => sh.say(&format!("docker kill {task}: {e:#}")),
                }
                sh.close_window(w);
            }
            Fault::Kill(victims) => {
                let majority = e.majority(c.managers);
                let w = sh.open_window(victims, None);
                sh.fault(victims);
                for v in victims {
                    c.nodes[*v].kill9();
                    c.running[*v] = false;
                }
                let who: Vec<&str> = victims.iter().map(|v| c.names[*v].as_str()).collect();
                sh.say(&format!(
                    "kill -9 {}{}",
                    who.join(" "),
                    if majority {
                        " (a majority of the managers)"
                    } else {
                        ""
                    }
                ));
                pace(e.hold)?;
                if majority {
                    sh.pause_writer.store(true, Ordering::Relaxed);
                }
                restart(c, sh, victims)?;
                if majority {
                    sh.say("writes paused: timing the recovery");
                    Poll::new("the writer to pause", Duration::from_secs(30))
                        .until(|| Ok(sh.writer_idle.load(Ordering::Relaxed).then_some(())))?;
                    if let Some(t) = converge(c, sh, "after a majority kill")? {
                        summary.convergence.push(t);
                    }
                    sh.pause_writer.store(false, Ordering::Relaxed);
                }
                sh.close_window(w);
            }
            Fault::KillLeader => {
                let leader = Poll::new("a leader to kill", Duration::from_secs(10))
                    .every(Duration::from_millis(200))
                    .until(|| Ok(c.leader()))
                    .ok();
                let Some(l) = leader else {
                    sh.say("kill -9 the leader: no leader agreed on within 10 s, skipped");
                    continue;
                };
                let w = sh.open_window(&[l], None);
                sh.fault(&[l]);
                c.nodes[l].kill9();
                c.running[l] = false;
                sh.say(&format!("kill -9 {} (leader)", c.names[l]));
                pace(e.hold)?;
                restart(c, sh, &[l])?;
                sh.close_window(w);
            }
            Fault::ClockJump { node, secs } => {
                c.nodes[*node].set_clock(*secs)?;
                sh.say(&format!("clock of {} steps {secs:+} s", c.names[*node]));
                pace(e.hold)?;
                c.nodes[*node].set_clock(0)?;
                sh.say(&format!("clock of {} steps back", c.names[*node]));
            }
            Fault::Partition(node) => {
                let others: Vec<IpAddr> = (0..n).filter(|i| i != node).map(|i| c.ip(i)).collect();
                let w = sh.open_window(&[*node], None);
                sh.fault(&[*node]);
                fw.partition(c.ip(*node), &others)?;
                sh.say(&format!("partition {} | rest", c.names[*node]));
                pace(e.hold)?;
                fw.heal()?;
                sh.say(&format!("heal partition of {}", c.names[*node]));
                sh.close_window(w);
            }
            Fault::Loss { from, to, percent } => {
                let w = sh.open_window(&[*from, *to], None);
                sh.fault(&[*from, *to]);
                fw.loss(c.ip(*from), c.ip(*to), *percent)?;
                sh.say(&format!(
                    "loss {percent}% {} -> {}",
                    c.names[*from], c.names[*to]
                ));
                pace(e.hold)?;
                fw.heal()?;
                sh.say(&format!("heal loss {} -> {}", c.names[*from], c.names[*to]));
                sh.close_window(w);
            }
        }
    }
    pace((start + duration).saturating_duration_since(Instant::now()))?;
    Ok(())
}

/// Restarts `victims`; a node that does not come back is a violation, and the run goes on.
fn restart(c: &mut Cluster, sh: &Shared, victims: &[usize]) -> Result<()> {
    for v in victims {
        match c.nodes[*v].start() {
            Ok(()) => {
                c.running[*v] = true;
                sh.say(&format!("restart {}", c.names[*v]));
            }
            Err(e) => {
                sh.violation(format!("{} did not restart: {e:#}", c.names[*v]));
                bail!("{} did not restart", c.names[*v]);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    /// Issue 20 (seed 404's first long run): a task still starting when its node was killed
    /// was not counted, so the outage that followed was not excused.
    #[test]
    fn issue_20_a_task_on_the_way_up_or_down_makes_its_node_a_host() {
        let names: Vec<String> = ["cm1", "cm2", "cw1"].map(String::from).to_vec();
        let row = |state: &str, desired: &str, node: &str| serde_json::json!({"state": state, "desired_state": desired, "node": node});
        for (state, desired) in [
            ("assigned", "running"),
            ("preparing", "running"),
            ("starting", "running"),
            ("running", "running"),
            ("running", "shutdown"),
        ] {
            assert_eq!(
                hosting_node(&row(state, desired, "cw1"), &names),
                Some(2),
                "{state}/{desired}"
            );
        }
        for state in [
            "new", "pending", "complete", "failed", "shutdown", "rejected", "orphaned",
        ] {
            assert_eq!(
                hosting_node(&row(state, "running", "cm2"), &names),
                None,
                "{state}"
            );
        }
        assert_eq!(
            hosting_node(&row("running", "running", "elsewhere"), &names),
            None
        );
    }

    fn window(sh: &Shared, from: u64, to: u64, nodes: &[usize], service: Option<&str>) {
        lock(&sh.windows).push(Window {
            from: secs(from),
            to: Some(secs(to)),
            nodes: nodes.iter().copied().collect(),
            service: service.map(str::to_string),
        });
    }

    #[test]
    fn a_mesh_failure_is_excused_only_by_a_fault_on_its_entry_node_or_its_services_nodes() {
        let sh = Shared::new(1);
        // echo ran on nodes 1 and 2, web on 0 and 3.
        for t in [95, 100, 105, 110, 130] {
            lock(&sh.hosts).push((secs(t), "echo".into(), [1, 2].into()));
            lock(&sh.hosts).push((secs(t), "web".into(), [0, 3].into()));
        }
        // Node 1 killed from 100 s to 105 s.
        window(&sh, 100, 105, &[1], None);
        // A failure via node 4 to echo (on node 1) during it and within the grace: excused.
        assert!(sh.excused(secs(101), secs(102), "echo", 4));
        assert!(sh.excused(secs(114), secs(114), "echo", 4));
        // After the grace: not.
        assert!(!sh.excused(secs(116), secs(116), "echo", 4));
        // Before the fault: not.
        assert!(!sh.excused(secs(90), secs(91), "echo", 4));
        // web had no task on node 1 and the request entered at node 4: not excused.
        assert!(!sh.excused(secs(101), secs(102), "web", 4));
        // ... but entering at the killed node is.
        assert!(sh.excused(secs(101), secs(102), "web", 1));
        // A docker kill of a web container on node 3 excuses web failures, not echo's.
        window(&sh, 120, 120, &[3], Some("web"));
        assert!(sh.excused(secs(121), secs(121), "web", 5));
        assert!(!sh.excused(secs(121), secs(121), "echo", 3));
    }
}
