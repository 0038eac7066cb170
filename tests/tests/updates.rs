//! Issue 17: rolling updates and rollbacks on a real cluster, with real Docker and the
//! process driver: the bounds on running and healthy tasks sampled throughout, broken
//! versions (paused or rolled back), rollback after a partial start-first update, the leader
//! killed mid-update, an unhealthy task replaced, `--force`, bad flags.
//!
//! Address blocks (one set of addresses per test, so none collide):
//! - 127.0.80.x: Docker, converging updates (stop-first .1–.3, start-first .11–.13);
//! - 127.0.81.x: process driver (stop-first .1–.3, start-first .11–.13), `--force` .21,
//!   unhealthy tasks (Docker .31, process .41);
//! - 127.0.82.x: broken versions (Docker exits .1–.3, Docker health .11–.13, process .21);
//! - 127.0.83.x: rollback after start-first .1–.3, bad flags .11;
//! - 127.0.84.x: leader killed mid-update .1–.5.
//!
//! How the bounds are watched: a poll loop ([`watch_until`]) takes a sample about every
//! 100 ms — `service ps --format json` and, for Docker, `docker ps` filtered by the
//! service's labels (for the process driver, the tasks' processes found by a marker in
//! their command line) — and fails at the first sample that breaks the bound. Every sample
//! also checks that no slot has two running tasks (or containers) of one spec version.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use shoal_tests::{
    BackgroundCli, ClusterContainers, Daemon, ImageTag, Poll, all_pids, cluster_id, cmdline,
    docker, docker_ready, poll_until, service_containers, start_cluster, start_cluster_from, tasks,
};

const IMAGE: &str = shoal_tests::TEST_IMAGE;

/// A task program that exits on SIGTERM, so that stops are quick: busybox `sh` as PID 1 of
/// a container ignores SIGTERM unless it traps it.
const LOOP: &str = r#"trap "exit 0" TERM; while true; do sleep 0.2; done"#;

/// [`LOOP`] that first creates `/tmp/ok`, the file its health check ([`HEALTH_CMD`]) tests.
const HEALTHY_LOOP: &str = r#"touch /tmp/ok; trap "exit 0" TERM; while true; do sleep 0.2; done"#;

/// The Docker tasks' health check.
const HEALTH_CMD: &str = "test -f /tmp/ok";

/// Quick health checks: unhealthy after two failed probes 300 ms apart.
const HEALTH_TIMING: [&str; 6] = [
    "--health-interval",
    "300ms",
    "--health-timeout",
    "2s",
    "--health-retries",
    "2",
];

/// How long an update (or rollback) may take in these tests at most.
const UPDATE_DEADLINE: Duration = Duration::from_secs(120);

/// How often the watch samples.
const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// What an update must keep to, sample by sample.
#[derive(Debug, Clone, Copy)]
enum Bound {
    /// Stop-first: never fewer than `replicas - parallelism` tasks running, never more than
    /// `replicas` (an old task stops before its replacement is created).
    StopFirst { replicas: usize, parallelism: usize },
    /// Start-first: never fewer than `replicas` running, never more than
    /// `replicas + parallelism`; with `healthy`, never fewer than `replicas` running and
    /// healthy.
    StartFirst {
        replicas: usize,
        parallelism: usize,
        healthy: bool,
    },
    /// Nothing on the counts (only the per-slot check and the tracked tasks).
    None,
}

impl Bound {
    /// Checks a count of running tasks (or containers, or processes); `healthy` is the
    /// number of those known healthy, when known.
    fn check(self, what: &str, running: usize, healthy: Option<usize>) -> Result<()> {
        match self {
            Bound::StopFirst {
                replicas,
                parallelism,
            } => {
                let min = replicas.saturating_sub(parallelism);
                ensure!(
                    running >= min,
                    "stop-first: {running} {what} running, fewer than replicas - parallelism = {min}"
                );
                ensure!(
                    running <= replicas,
                    "stop-first: {running} {what} running, more than the {replicas} replicas"
                );
            }
            Bound::StartFirst {
                replicas,
                parallelism,
                healthy: with_check,
            } => {
                ensure!(
                    running >= replicas,
                    "start-first: {running} {what} running, fewer than the {replicas} replicas"
                );
                ensure!(
                    running <= replicas + parallelism,
                    "start-first: {running} {what} running, more than replicas + parallelism = {}",
                    replicas + parallelism
                );
                if let (true, Some(h)) = (with_check, healthy) {
                    ensure!(
                        h >= replicas,
                        "start-first: {h} {what} healthy, fewer than the {replicas} replicas"
                    );
                }
            }
            Bound::None => {}
        }
        Ok(())
    }
}

/// Where the tasks of the watched service really run.
enum Source {
    /// Docker containers of this cluster.
    Docker { cluster: String },
    /// Process-driver tasks: processes whose command line holds this marker.
    Process { marker: String },
}

/// The lowest and highest counts seen, for the test's output.
#[derive(Debug, Default)]
struct Seen {
    samples: usize,
    cli_misses: usize,
    min_running: Option<usize>,
    max_running: Option<usize>,
    min_healthy: Option<usize>,
    min_engine: Option<usize>,
    max_engine: Option<usize>,
}

fn lower(slot: &mut Option<usize>, v: usize) {
    *slot = Some(slot.map_or(v, |s| s.min(v)));
}

fn raise(slot: &mut Option<usize>, v: usize) {
    *slot = Some(slot.map_or(v, |s| s.max(v)));
}

/// Samples one service and checks each sample (see the module's doc).
struct Watch {
    service: String,
    bound: Bound,
    source: Source,
    /// Tasks that must be running at every sample (the good tasks a failure or a rollback
    /// must not touch).
    must_run: BTreeSet<String>,
    /// Tasks to follow: the IDs of those seen not running at some sample.
    tracked: BTreeSet<String>,
    stopped: BTreeSet<String>,
    /// The version of every task seen in `service ps`.
    versions: BTreeMap<String, u64>,
    /// The last `service ps`, for failure messages.
    last_rows: String,
    /// Whether a failed `service ps` (an election under way) is skipped rather than fatal.
    tolerate_cli_errors: bool,
    seen: Seen,
}

impl Watch {
    fn new(service: &str, bound: Bound, source: Source) -> Watch {
        Watch {
            service: service.to_string(),
            bound,
            source,
            must_run: BTreeSet::new(),
            tracked: BTreeSet::new(),
            stopped: BTreeSet::new(),
            versions: BTreeMap::new(),
            last_rows: String::new(),
            tolerate_cli_errors: false,
            seen: Seen::default(),
        }
    }

    fn docker(service: &str, bound: Bound, cluster: &str) -> Watch {
        Watch::new(
            service,
            bound,
            Source::Docker {
                cluster: cluster.to_string(),
            },
        )
    }

    fn process(service: &str, bound: Bound, marker: &str) -> Watch {
        Watch::new(
            service,
            bound,
            Source::Process {
                marker: marker.to_string(),
            },
        )
    }

    /// One sample through `d`; fails when it breaks a rule.
    fn sample(&mut self, d: &Daemon) -> Result<()> {
        match tasks(d, &self.service) {
            Ok(rows) => {
                for t in &rows {
                    if let (Some(id), Some(v)) = (t["id"].as_str(), t["version"].as_u64()) {
                        self.versions.insert(id.to_string(), v);
                    }
                }
                self.last_rows = brief(&rows);
                self.check_rows(&rows)
                    .with_context(|| format!("service ps: {}", self.last_rows))?;
            }
            Err(e) if self.tolerate_cli_errors => {
                self.seen.cli_misses += 1;
                let _ = e;
            }
            Err(e) => return Err(e),
        }
        match &self.source {
            Source::Docker { cluster } => {
                let cs = service_containers(cluster, &self.service)?;
                // A container's version is its task's (the image name alone does not tell
                // versions that differ by their arguments apart); a task not yet seen in
                // `service ps` counts as a version of its own.
                let mut per_slot: BTreeMap<(&str, String), usize> = BTreeMap::new();
                for c in &cs {
                    let version = self
                        .versions
                        .get(&c.task)
                        .map_or_else(|| format!("of task {}", c.task), |v| v.to_string());
                    *per_slot.entry((&c.slot, version)).or_default() += 1;
                }
                if let Some(((slot, version), n)) = per_slot.iter().find(|(_, n)| **n > 1) {
                    bail!(
                        "docker ps: slot {slot} has {n} running containers of version {version}: {cs:?}"
                    );
                }
                self.bound
                    .check("containers", cs.len(), None)
                    .with_context(|| {
                        format!(
                            "docker ps: {cs:?}\nservice ps just before: {}",
                            self.last_rows
                        )
                    })?;
                for id in &self.must_run {
                    ensure!(
                        cs.iter().any(|c| &c.task == id),
                        "docker ps: no running container for task {id}, which must stay untouched: {cs:?}"
                    );
                }
                lower(&mut self.seen.min_engine, cs.len());
                raise(&mut self.seen.max_engine, cs.len());
            }
            Source::Process { marker } => {
                let procs = processes(marker);
                self.bound
                    .check("processes", procs.len(), None)
                    .with_context(|| {
                        format!(
                            "processes: {procs:?}\nservice ps just before: {}",
                            self.last_rows
                        )
                    })?;
                lower(&mut self.seen.min_engine, procs.len());
                raise(&mut self.seen.max_engine, procs.len());
            }
        }
        self.seen.samples += 1;
        Ok(())
    }

    fn check_rows(&mut self, rows: &[Value]) -> Result<()> {
        let running: Vec<&Value> = rows.iter().filter(|t| t["state"] == "running").collect();
        let healthy = running.iter().filter(|t| t["health"] == "healthy").count();
        let mut per_slot: BTreeMap<(u64, u64), usize> = BTreeMap::new();
        for t in &running {
            let key = (
                t["slot"].as_u64().unwrap_or(0),
                t["version"].as_u64().unwrap_or(0),
            );
            *per_slot.entry(key).or_default() += 1;
        }
        if let Some(((slot, version), n)) = per_slot.iter().find(|(_, n)| **n > 1) {
            bail!("slot {slot} has {n} running tasks of version {version}");
        }
        self.bound.check("tasks", running.len(), Some(healthy))?;
        let is_running = |id: &str| running.iter().any(|t| t["id"] == id);
        for id in &self.must_run {
            ensure!(
                is_running(id),
                "task {id}, which must stay untouched, is not running"
            );
        }
        for id in &self.tracked {
            if !is_running(id) {
                self.stopped.insert(id.clone());
            }
        }
        lower(&mut self.seen.min_running, running.len());
        raise(&mut self.seen.max_running, running.len());
        lower(&mut self.seen.min_healthy, healthy);
        Ok(())
    }

    /// Prints what was seen (figures for the log, not assertions).
    fn report(&self, what: &str) {
        eprintln!("{what}: {:?}", self.seen);
    }
}

/// Samples with `watch` through `d` about every [`SAMPLE_EVERY`] until `done` returns a
/// value (an error from `done` is an observation, a broken rule fails at once), then takes
/// one more sample. Fails after `timeout` with `what` and the last observation.
fn watch_until<T>(
    what: &str,
    timeout: Duration,
    watch: &mut Watch,
    d: &Daemon,
    mut done: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let start = Instant::now();
        watch
            .sample(d)
            .with_context(|| format!("while waiting for {what}"))?;
        let last = match done() {
            Ok(Some(v)) => {
                watch.sample(d).with_context(|| format!("after {what}"))?;
                return Ok(v);
            }
            Ok(None) => "condition not met".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        std::thread::sleep(SAMPLE_EVERY.saturating_sub(start.elapsed()));
    }
}

/// Waits for a background CLI call while watching; returns its output.
fn watch_cli(watch: &mut Watch, d: &Daemon, cli: &mut BackgroundCli, what: &str) -> Result<Output> {
    watch_until(what, UPDATE_DEADLINE, watch, d, || cli.try_output())
}

/// The rows of `service ps`, one line each, for failure messages.
fn brief(rows: &[Value]) -> String {
    rows.iter()
        .map(|t| {
            format!(
                "\n  slot {} {} v{} {} {}/{} health={} up_to_date={} {}",
                t["slot"],
                t["id"].as_str().unwrap_or_default(),
                t["version"],
                t["image"].as_str().unwrap_or_default(),
                t["desired_state"].as_str().unwrap_or_default(),
                t["state"].as_str().unwrap_or_default(),
                t["health"],
                t["up_to_date"],
                t["error"].as_str().unwrap_or_default(),
            )
        })
        .collect()
}

/// Rows of tasks running and wanted running.
fn running_rows(d: &Daemon, service: &str) -> Result<Vec<Value>> {
    Ok(tasks(d, service)?
        .into_iter()
        .filter(|t| t["state"] == "running" && t["desired_state"] == "running")
        .collect())
}

fn ids(rows: &[Value]) -> BTreeSet<String> {
    rows.iter()
        .map(|t| t["id"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Waits until exactly `n` tasks run (and, with `healthy`, all are healthy); returns them.
fn wait_running(d: &Daemon, service: &str, n: usize, healthy: bool) -> Result<Vec<Value>> {
    poll_until(
        &format!(
            "{n} tasks of {service} running{}",
            if healthy { " and healthy" } else { "" }
        ),
        Duration::from_secs(60),
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

/// `service inspect` of `service`.
fn inspect(d: &Daemon, service: &str) -> Result<Value> {
    d.inspect(&["service", "inspect", service])
}

fn version(d: &Daemon, service: &str) -> Result<u64> {
    inspect(d, service)?["version"]
        .as_u64()
        .context("inspect has no version")
}

/// `update_status.state` of `service`, or "" when there is none.
fn update_state(d: &Daemon, service: &str) -> Result<String> {
    Ok(inspect(d, service)?["update_status"]["state"]
        .as_str()
        .unwrap_or_default()
        .to_string())
}

/// Waits until `update_status.state` is `state`; returns the inspect.
fn wait_update_state(d: &Daemon, service: &str, state: &str) -> Result<Value> {
    poll_until(
        &format!("the update status of {service} to be {state}"),
        UPDATE_DEADLINE,
        || {
            let i = inspect(d, service)?;
            ensure!(
                i["update_status"]["state"] == state,
                "update_status {}",
                i["update_status"]
            );
            Ok(Some(i))
        },
    )
}

/// Checks that every running task is up to date, runs version `version` (when given) and
/// `image`; there are `n` of them. Returns them.
fn check_converged(
    d: &Daemon,
    service: &str,
    n: usize,
    image: &str,
    version: Option<u64>,
) -> Result<Vec<Value>> {
    let rows = tasks(d, service)?;
    let run: Vec<Value> = rows
        .iter()
        .filter(|t| t["state"] == "running")
        .cloned()
        .collect();
    ensure!(
        run.len() == n,
        "{} running instead of {n}: {}",
        run.len(),
        brief(&rows)
    );
    for t in &run {
        ensure!(
            t["desired_state"] == "running"
                && t["up_to_date"] == true
                && t["image"] == image
                && version.is_none_or(|v| t["version"] == v),
            "a running task is not the current spec ({image}, version {version:?}): {}",
            brief(&rows)
        );
    }
    Ok(run)
}

/// Checks the containers of `service`: `n` running, all created from the image *name*
/// `image`, one per task of `rows`.
fn check_containers(
    cluster: &str,
    service: &str,
    n: usize,
    image: &str,
    rows: &[Value],
) -> Result<()> {
    let cs = service_containers(cluster, service)?;
    ensure!(
        cs.len() == n,
        "{} containers instead of {n}: {cs:?}",
        cs.len()
    );
    ensure!(
        cs.iter().all(|c| c.image == image),
        "not all of {image}: {cs:?}"
    );
    let tasks: BTreeSet<&str> = cs.iter().map(|c| c.task.as_str()).collect();
    let want: BTreeSet<&str> = rows.iter().filter_map(|t| t["id"].as_str()).collect();
    ensure!(
        tasks == want,
        "containers of tasks {tasks:?}, running tasks {want:?}"
    );
    Ok(())
}

/// The process-driver tasks running `/bin/sh` whose command line holds `marker`: their pid
/// and the value of `UPD_V` in their environment. (A broken version's `/bin/false` gets the
/// same arguments, marker included: it is not counted, however briefly it lives.)
fn processes(marker: &str) -> Vec<(i32, String)> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            cmdline(*pid).is_some_and(|a| {
                a.first().is_some_and(|p| p == "/bin/sh") && a.iter().any(|s| s.contains(marker))
            })
        })
        .map(|pid| {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            let v = env
                .split(|b| *b == 0)
                .find_map(|e| e.strip_prefix(b"UPD_V="))
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            (pid, v)
        })
        .collect()
}

/// A marker unique to this test process and `name`, put in a process task's script.
fn marker(name: &str) -> String {
    format!("shoal-upd-{}-{name}", std::process::id())
}

/// The process-driver task script: [`LOOP`] with `marker` in a comment.
fn marked_loop(marker: &str) -> String {
    format!("{LOOP} # {marker}")
}

/// The hostname of the leader, as `d`'s `node ls` shows it.
fn leader(d: &Daemon) -> Result<Option<String>> {
    Ok(d.json(&["node", "ls"])?
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["manager_status"] == "leader")
        .and_then(|n| n["hostname"].as_str().map(str::to_string)))
}

/// The output of a CLI call that must have failed: its stderr, one line.
fn failed_one_line(what: &str, out: &Output) -> Result<String> {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        !out.status.success(),
        "`{what}` succeeded but should have failed; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    ensure!(
        !err.trim().is_empty() && err.trim_end().lines().count() == 1,
        "`{what}`: one line of error expected, got: {err:?}"
    );
    Ok(err.trim().to_string())
}

// ---- Converging updates ---------------------------------------------------------------

/// Issue 17: 4 Docker replicas, `--image` to a new tag of the same image (same image ID: a
/// change of spec all the same), stop-first, parallelism 1: every task is replaced, and at
/// every sample 3 to 4 tasks and containers run; the update command follows the update and
/// exits 0 once it is completed.
#[test]
fn stop_first_update_never_drops_below_replicas_minus_parallelism() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let tag = ImageTag::new("upd-stop")?;
    let (ms, _ws) = start_cluster("us-", 80, 1, 2)?;
    let m = &ms[0];
    let cluster = cluster_id(m)?;
    let _containers = ClusterContainers(cluster.clone());
    m.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "4",
        "--update-parallelism",
        "1",
        "--update-order",
        "stop-first",
        "--update-monitor",
        "1s",
        "--stop-grace-period",
        "2s",
        IMAGE,
        "sh",
        "-c",
        LOOP,
    ])?;
    let before = ids(&wait_running(m, "web", 4, false)?);
    let v1 = version(m, "web")?;

    let bound = Bound::StopFirst {
        replicas: 4,
        parallelism: 1,
    };
    let mut watch = Watch::docker("web", bound, &cluster);
    let mut cli = m.spawn_cli(&["service", "update", "--image", tag.name(), "web"])?;
    let out = watch_cli(&mut watch, m, &mut cli, "`service update --image` to end")?;
    watch.report("stop-first, 4 replicas, parallelism 1");
    ensure!(
        out.status.success(),
        "service update failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let i = inspect(m, "web")?;
    assert_eq!(i["update_status"]["state"], "completed", "{i}");
    assert_eq!(i["spec"]["image"], tag.name());
    let v2 = i["version"].as_u64().context("version")?;
    assert!(v2 > v1, "version {v1} -> {v2}");
    let rows = check_converged(m, "web", 4, tag.name(), Some(v2))?;
    assert!(ids(&rows).is_disjoint(&before), "an old task survived");
    check_containers(&cluster, "web", 4, tag.name(), &rows)?;
    m.ok(&["service", "rm", "web"])?;
    Ok(())
}

/// Issue 17: start-first with a health check, parallelism 2: at every sample at least 4
/// tasks are running *and healthy*, at least 4 containers run, never more than 6.
#[test]
fn start_first_update_with_health_check_never_has_fewer_healthy_than_replicas() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let tag = ImageTag::new("upd-start")?;
    let (ms, _ws) = start_cluster_from("ut-", 80, 11, 1, 2)?;
    let m = &ms[0];
    let cluster = cluster_id(m)?;
    let _containers = ClusterContainers(cluster.clone());
    let mut create = vec![
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "4",
        "--update-parallelism",
        "2",
        "--update-order",
        "start-first",
        "--update-monitor",
        "1s",
        "--stop-grace-period",
        "2s",
        "--health-cmd",
        HEALTH_CMD,
    ];
    create.extend(HEALTH_TIMING);
    create.extend([IMAGE, "sh", "-c", HEALTHY_LOOP]);
    m.ok(&create)?;
    let before = ids(&wait_running(m, "web", 4, true)?);

    let bound = Bound::StartFirst {
        replicas: 4,
        parallelism: 2,
        healthy: true,
    };
    let mut watch = Watch::docker("web", bound, &cluster);
    let mut cli = m.spawn_cli(&["service", "update", "--image", tag.name(), "web"])?;
    let out = watch_cli(&mut watch, m, &mut cli, "`service update --image` to end")?;
    watch.report("start-first with a health check, 4 replicas, parallelism 2");
    ensure!(
        out.status.success(),
        "service update failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(update_state(m, "web")?, "completed");
    let rows = check_converged(m, "web", 4, tag.name(), None)?;
    assert!(ids(&rows).is_disjoint(&before), "an old task survived");
    assert!(
        rows.iter().all(|t| t["health"] == "healthy"),
        "{}",
        brief(&rows)
    );
    check_containers(&cluster, "web", 4, tag.name(), &rows)?;
    m.ok(&["service", "rm", "web"])?;
    Ok(())
}

/// Issue 17, process driver: 4 replicas, stop-first, parallelism 2, a new version made of a
/// changed environment variable: at every sample 2 to 4 tasks and task processes run; at
/// the end the 4 processes have the new environment.
#[test]
fn process_driver_stop_first_update_never_drops_below_replicas_minus_parallelism() -> Result<()> {
    let (ms, _ws) = start_cluster_from("up-", 81, 1, 1, 2)?;
    let m = &ms[0];
    let mark = marker("stop-first");
    let script = marked_loop(&mark);
    m.ok(&[
        "service",
        "create",
        "--name",
        "loop",
        "--driver",
        "process",
        "--replicas",
        "4",
        "--env",
        "UPD_V=1",
        "--update-parallelism",
        "2",
        "--update-order",
        "stop-first",
        "--update-monitor",
        "1s",
        "--stop-grace-period",
        "2s",
        "/bin/sh",
        "-c",
        &script,
    ])?;
    let before = ids(&wait_running(m, "loop", 4, false)?);
    let bound = Bound::StopFirst {
        replicas: 4,
        parallelism: 2,
    };
    let mut watch = Watch::process("loop", bound, &mark);
    let mut cli = m.spawn_cli(&["service", "update", "--env-add", "UPD_V=2", "loop"])?;
    let out = watch_cli(&mut watch, m, &mut cli, "`service update --env-add` to end")?;
    watch.report("process driver, stop-first, 4 replicas, parallelism 2");
    ensure!(
        out.status.success(),
        "service update failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let i = inspect(m, "loop")?;
    assert_eq!(i["update_status"]["state"], "completed", "{i}");
    assert_eq!(i["spec"]["env"]["UPD_V"], "2", "{i}");
    let rows = check_converged(m, "loop", 4, "/bin/sh", i["version"].as_u64())?;
    assert!(ids(&rows).is_disjoint(&before), "an old task survived");
    let procs = poll_until(
        "4 task processes, all UPD_V=2",
        Duration::from_secs(10),
        || {
            let p = processes(&mark);
            ensure!(p.len() == 4 && p.iter().all(|(_, v)| v == "2"), "{p:?}");
            Ok(Some(p))
        },
    )?;
    eprintln!("task processes after the update: {procs:?}");
    m.ok(&["service", "rm", "loop"])?;
    Ok(())
}

/// Issue 17, process driver: start-first with a health check run on the node, parallelism 1:
/// at every sample at least 4 tasks running and healthy, 4 to 5 task processes.
#[test]
fn process_driver_start_first_update_never_has_fewer_healthy_than_replicas() -> Result<()> {
    let (ms, _ws) = start_cluster_from("uq-", 81, 11, 1, 2)?;
    let m = &ms[0];
    let ok_dir = tempfile::Builder::new()
        .prefix("shoal-upd-ok-")
        .tempdir_in("/tmp")?;
    let ok = ok_dir.path().join("ok");
    std::fs::write(&ok, b"")?;
    let health = format!("test -f {}", ok.display());
    let mark = marker("start-first");
    let script = marked_loop(&mark);
    let mut create = vec![
        "service",
        "create",
        "--name",
        "loop",
        "--driver",
        "process",
        "--replicas",
        "4",
        "--env",
        "UPD_V=1",
        "--update-parallelism",
        "1",
        "--update-order",
        "start-first",
        "--update-monitor",
        "1s",
        "--stop-grace-period",
        "2s",
        "--health-cmd",
        &health,
    ];
    create.extend(HEALTH_TIMING);
    create.extend(["/bin/sh", "-c", &script]);
    m.ok(&create)?;
    let before = ids(&wait_running(m, "loop", 4, true)?);
    let bound = Bound::StartFirst {
        replicas: 4,
        parallelism: 1,
        healthy: true,
    };
    let mut watch = Watch::process("loop", bound, &mark);
    let mut cli = m.spawn_cli(&["service", "update", "--env-add", "UPD_V=2", "loop"])?;
    let out = watch_cli(&mut watch, m, &mut cli, "`service update --env-add` to end")?;
    watch.report("process driver, start-first with a health check, 4 replicas, parallelism 1");
    ensure!(
        out.status.success(),
        "service update failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(update_state(m, "loop")?, "completed");
    let rows = check_converged(m, "loop", 4, "/bin/sh", None)?;
    assert!(ids(&rows).is_disjoint(&before), "an old task survived");
    assert!(
        rows.iter().all(|t| t["health"] == "healthy"),
        "{}",
        brief(&rows)
    );
    poll_until(
        "4 task processes, all UPD_V=2",
        Duration::from_secs(10),
        || {
            let p = processes(&mark);
            ensure!(p.len() == 4 && p.iter().all(|(_, v)| v == "2"), "{p:?}");
            Ok(Some(()))
        },
    )?;
    m.ok(&["service", "rm", "loop"])?;
    Ok(())
}

/// Issue 17: an update that changes only update settings replaces no task (the task spec is
/// the same); `update --force` then replaces every task, though nothing else changed.
#[test]
fn update_force_replaces_every_task_and_a_settings_only_update_none() -> Result<()> {
    let (ms, _) = start_cluster_from("uf-", 81, 21, 1, 0)?;
    let m = &ms[0];
    m.ok(&[
        "service",
        "create",
        "--name",
        "loop",
        "--driver",
        "process",
        "--replicas",
        "3",
        "--update-monitor",
        "1s",
        "--stop-grace-period",
        "2s",
        "/bin/sh",
        "-c",
        LOOP,
    ])?;
    let before = ids(&wait_running(m, "loop", 3, false)?);
    let v1 = version(m, "loop")?;

    // Settings only: a new version, the same tasks, all still up to date.
    m.ok(&[
        "service",
        "update",
        "--detach",
        "--update-parallelism",
        "2",
        "--update-delay",
        "100ms",
        "loop",
    ])?;
    let v2 = version(m, "loop")?;
    assert!(v2 > v1, "version {v1} -> {v2}");
    Poll::new("the same 3 tasks, up to date", Duration::from_secs(3))
        .every(Duration::from_millis(100))
        .holds(|| {
            let rows = tasks(m, "loop")?;
            let run: Vec<Value> = rows
                .iter()
                .filter(|t| t["state"] == "running")
                .cloned()
                .collect();
            ensure!(ids(&run) == before, "{}", brief(&rows));
            ensure!(
                run.iter().all(|t| t["up_to_date"] == true),
                "{}",
                brief(&rows)
            );
            Ok(())
        })?;

    // --force: every task replaced.
    let force_before = inspect(m, "loop")?["spec"]["force_update"]
        .as_u64()
        .unwrap_or(0);
    let out = m.ok(&["service", "update", "--force", "loop"])?;
    eprintln!("service update --force:\n{out}");
    let i = inspect(m, "loop")?;
    assert_eq!(i["update_status"]["state"], "completed", "{i}");
    assert!(
        i["spec"]["force_update"].as_u64().unwrap_or(0) > force_before,
        "force counter not bumped: {i}"
    );
    let rows = check_converged(m, "loop", 3, "/bin/sh", i["version"].as_u64())?;
    assert!(
        ids(&rows).is_disjoint(&before),
        "a task survived --force: {}",
        brief(&rows)
    );
    m.ok(&["service", "rm", "loop"])?;
    Ok(())
}

// ---- Health ---------------------------------------------------------------------------

/// Issue 17: a Docker task whose health check starts failing (its `/tmp/ok` removed with
/// `docker exec`) is failed by its worker and replaced in its slot by a healthy task; the
/// other task is never touched.
#[test]
fn unhealthy_task_is_replaced_in_its_slot_and_the_others_untouched() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let (ms, _) = start_cluster_from("uh-", 81, 31, 1, 0)?;
    let m = &ms[0];
    let cluster = cluster_id(m)?;
    let _containers = ClusterContainers(cluster.clone());
    let mut create = vec![
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        "--restart-delay",
        "100ms",
        "--stop-grace-period",
        "2s",
        "--health-cmd",
        HEALTH_CMD,
    ];
    create.extend(HEALTH_TIMING);
    create.extend([IMAGE, "sh", "-c", HEALTHY_LOOP]);
    m.ok(&create)?;
    let rows = wait_running(m, "web", 2, true)?;
    let slot_of = |t: &Value| t["slot"].as_u64().unwrap_or(0);
    let victim = rows
        .iter()
        .find(|t| slot_of(t) == 1)
        .context("slot 1")?
        .clone();
    let other = rows
        .iter()
        .find(|t| slot_of(t) == 2)
        .context("slot 2")?
        .clone();
    let victim_id = victim["id"].as_str().unwrap_or_default().to_string();
    let container = service_containers(&cluster, "web")?
        .into_iter()
        .find(|c| c.task == victim_id)
        .context("the victim's container")?;
    docker(&["exec", &container.id, "rm", "-f", "/tmp/ok"])?;

    let mut watch = Watch::docker("web", Bound::None, &cluster);
    watch
        .must_run
        .insert(other["id"].as_str().unwrap_or_default().to_string());
    let replacement = watch_until(
        "the unhealthy task failed and a healthy task running in its slot",
        Duration::from_secs(60),
        &mut watch,
        m,
        || {
            let rows = tasks(m, "web")?;
            let old = rows
                .iter()
                .find(|t| t["id"] == victim_id.as_str())
                .context("the victim's row")?;
            let failed = old["state"] == "failed";
            let new = rows.iter().find(|t| {
                slot_of(t) == 1
                    && t["id"] != victim_id.as_str()
                    && t["state"] == "running"
                    && t["health"] == "healthy"
            });
            ensure!(failed && new.is_some(), "{}", brief(&rows));
            Ok(new.cloned().map(|n| (old.clone(), n)))
        },
    )?;
    let (old, new) = replacement;
    eprintln!("unhealthy task: {old}\nreplacement: {new}");
    let err = old["error"].as_str().unwrap_or_default().to_lowercase();
    assert!(err.contains("unhealthy"), "the failed task's error: {old}");
    assert!(
        !service_containers(&cluster, "web")?
            .iter()
            .any(|c| c.task == victim_id),
        "the unhealthy task's container still runs"
    );
    m.ok(&["service", "rm", "web"])?;
    Ok(())
}

/// Issue 17, process driver: a task whose health check (run on the node) fails is replaced
/// by a new task once the check passes again.
#[test]
fn process_driver_unhealthy_task_is_replaced() -> Result<()> {
    let (ms, _) = start_cluster_from("ui-", 81, 41, 1, 0)?;
    let m = &ms[0];
    let ok_dir = tempfile::Builder::new()
        .prefix("shoal-upd-ok-")
        .tempdir_in("/tmp")?;
    let ok = ok_dir.path().join("ok");
    std::fs::write(&ok, b"")?;
    let health = format!("test -f {}", ok.display());
    let mut create = vec![
        "service",
        "create",
        "--name",
        "loop",
        "--driver",
        "process",
        "--restart-delay",
        "100ms",
        "--stop-grace-period",
        "2s",
        "--health-cmd",
        &health,
    ];
    create.extend(HEALTH_TIMING);
    create.extend(["/bin/sh", "-c", LOOP]);
    m.ok(&create)?;
    let victim = wait_running(m, "loop", 1, true)?[0].clone();
    let victim_id = victim["id"].as_str().unwrap_or_default().to_string();
    std::fs::remove_file(&ok)?;
    let old = poll_until(
        "the task failed as unhealthy",
        Duration::from_secs(30),
        || {
            let rows = tasks(m, "loop")?;
            let old = rows
                .iter()
                .find(|t| t["id"] == victim_id.as_str())
                .context("the task's row")?;
            ensure!(old["state"] == "failed", "{}", brief(&rows));
            Ok(Some(old.clone()))
        },
    )?;
    std::fs::write(&ok, b"")?;
    let err = old["error"].as_str().unwrap_or_default().to_lowercase();
    assert!(err.contains("unhealthy"), "the failed task's error: {old}");
    let new = poll_until("a healthy replacement", Duration::from_secs(30), || {
        let rows = tasks(m, "loop")?;
        let new = rows.iter().find(|t| {
            t["id"] != victim_id.as_str() && t["state"] == "running" && t["health"] == "healthy"
        });
        ensure!(new.is_some(), "{}", brief(&rows));
        Ok(new.cloned())
    })?;
    assert_eq!(new["slot"], victim["slot"], "{new}");
    m.ok(&["service", "rm", "loop"])?;
    Ok(())
}

// ---- Broken versions ------------------------------------------------------------------

/// Issue 17: a version that exits at once (`--args false`), stop-first, parallelism 1,
/// failure action pause: the update pauses with the reason (the update command exits
/// non-zero and says so), only one slot was touched, the three other tasks run on
/// throughout and after; `service rollback` then brings the slot back, touching nothing else.
#[test]
fn broken_version_that_exits_pauses_the_update_and_leaves_the_good_tasks() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let (ms, _ws) = start_cluster_from("ub-", 82, 1, 1, 2)?;
    let m = &ms[0];
    let cluster = cluster_id(m)?;
    let _containers = ClusterContainers(cluster.clone());
    m.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "4",
        "--update-parallelism",
        "1",
        "--update-order",
        "stop-first",
        "--update-failure-action",
        "pause",
        "--update-monitor",
        "2s",
        "--restart-delay",
        "1s",
        "--stop-grace-period",
        "2s",
        IMAGE,
        "sh",
        "-c",
        LOOP,
    ])?;
    let good = ids(&wait_running(m, "web", 4, false)?);
    let bound = Bound::StopFirst {
        replicas: 4,
        parallelism: 1,
    };
    let mut watch = Watch::docker("web", bound, &cluster);
    watch.tracked = good.clone();
    let mut cli = m.spawn_cli(&["service", "update", "--args", "false", "web"])?;
    let out = watch_cli(
        &mut watch,
        m,
        &mut cli,
        "`service update --args false` to end",
    )?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("service update of a broken version: {err}");
    ensure!(
        !out.status.success(),
        "the update of a broken version succeeded"
    );
    assert!(err.to_lowercase().contains("paused"), "{err:?}");
    let i = inspect(m, "web")?;
    assert_eq!(i["update_status"]["state"], "paused", "{i}");
    let message = i["update_status"]["message"].as_str().unwrap_or_default();
    assert!(!message.trim().is_empty(), "no reason in {i}");
    // Paused means paused: no further slot is touched.
    Poll::new("the update staying paused", Duration::from_secs(3))
        .every(SAMPLE_EVERY)
        .holds(|| {
            watch.sample(m)?;
            ensure!(update_state(m, "web")? == "paused", "no longer paused");
            Ok(())
        })?;
    watch.report("broken version (exits), stop-first, parallelism 1");
    assert!(
        watch.stopped.len() <= 1,
        "more than one good task stopped: {:?}",
        watch.stopped
    );
    let untouched: BTreeSet<String> = good.difference(&watch.stopped).cloned().collect();
    assert!(untouched.len() >= 3, "{untouched:?}");
    let running = ids(&running_rows(m, "web")?);
    assert!(
        untouched.is_subset(&running),
        "{untouched:?} not all in {running:?}"
    );

    // Rollback: only the broken slot changes.
    let mut watch = Watch::docker("web", bound, &cluster);
    watch.must_run = untouched.clone();
    let mut cli = m.spawn_cli(&["service", "rollback", "web"])?;
    let out = watch_cli(&mut watch, m, &mut cli, "`service rollback` to end")?;
    watch.report("rollback of the paused update");
    ensure!(
        out.status.success(),
        "service rollback failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let i = inspect(m, "web")?;
    assert_eq!(i["update_status"]["state"], "rollback_completed", "{i}");
    assert_eq!(
        i["spec"]["args"],
        serde_json::json!(["sh", "-c", LOOP]),
        "{i}"
    );
    let rows = check_converged(m, "web", 4, IMAGE, None)?;
    assert!(untouched.is_subset(&ids(&rows)), "{}", brief(&rows));
    check_containers(&cluster, "web", 4, IMAGE, &rows)?;
    m.ok(&["service", "rm", "web"])?;
    Ok(())
}

/// Issue 17: a version whose health check fails (it never creates `/tmp/ok`), start-first,
/// failure action rollback: the update is rolled back by itself (the update command exits
/// non-zero), the four good tasks run and stay healthy throughout and are the ones running
/// after.
#[test]
fn broken_version_failing_its_health_check_is_rolled_back_when_so_configured() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let (ms, _ws) = start_cluster_from("ur-", 82, 11, 1, 2)?;
    let m = &ms[0];
    let cluster = cluster_id(m)?;
    let _containers = ClusterContainers(cluster.clone());
    let mut create = vec![
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "4",
        "--update-parallelism",
        "1",
        "--update-order",
        "start-first",
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        "2s",
        "--rollback-order",
        "start-first",
        "--restart-delay",
        "1s",
        "--stop-grace-period",
        "1s",
        "--health-cmd",
        HEALTH_CMD,
    ];
    create.extend(HEALTH_TIMING);
    create.extend([IMAGE, "sh", "-c", HEALTHY_LOOP]);
    m.ok(&create)?;
    let good = ids(&wait_running(m, "web", 4, true)?);
    let bound = Bound::StartFirst {
        replicas: 4,
        parallelism: 1,
        healthy: true,
    };
    let mut watch = Watch::docker("web", bound, &cluster);
    watch.must_run = good.clone();
    // `sleep` never creates /tmp/ok: the new task never gets healthy.
    let mut cli = m.spawn_cli(&["service", "update", "--args", "sleep 100000", "web"])?;
    let out = watch_cli(
        &mut watch,
        m,
        &mut cli,
        "`service update` of an unhealthy version",
    )?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("service update of an unhealthy version: {err}");
    ensure!(
        !out.status.success(),
        "the update of an unhealthy version succeeded"
    );
    let i = wait_update_state(m, "web", "rollback_completed")?;
    // Until the rollback's own tasks are gone, keep watching.
    watch_until(
        "only the good tasks running",
        Duration::from_secs(30),
        &mut watch,
        m,
        || {
            let rows = tasks(m, "web")?;
            let running = rows.iter().filter(|t| t["state"] == "running").count();
            ensure!(running == 4, "{}", brief(&rows));
            Ok(Some(()))
        },
    )?;
    watch.report("unhealthy version rolled back, start-first");
    eprintln!("update status: {}", i["update_status"]);
    // The command says why the update was rolled back: the new task was unhealthy.
    assert!(err.contains("unhealthy"), "no reason in {err:?}");
    assert!(
        !i["update_status"]["message"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .is_empty(),
        "{i}"
    );
    assert_eq!(
        i["spec"]["args"],
        serde_json::json!(["sh", "-c", HEALTHY_LOOP]),
        "{i}"
    );
    let rows = check_converged(m, "web", 4, IMAGE, None)?;
    assert_eq!(ids(&rows), good, "{}", brief(&rows));
    check_containers(&cluster, "web", 4, IMAGE, &rows)?;
    m.ok(&["service", "rm", "web"])?;
    Ok(())
}

/// Issue 17, process driver: a version that exits at once (`--image /bin/false`),
/// stop-first, parallelism 2, failure action rollback: rolled back by itself, at most the
/// first batch's two good tasks were replaced, the others never touched.
#[test]
fn process_driver_broken_version_is_rolled_back_when_so_configured() -> Result<()> {
    let (ms, _) = start_cluster_from("uc-", 82, 21, 1, 0)?;
    let m = &ms[0];
    let mark = marker("broken");
    let script = marked_loop(&mark);
    m.ok(&[
        "service",
        "create",
        "--name",
        "loop",
        "--driver",
        "process",
        "--replicas",
        "4",
        "--update-parallelism",
        "2",
        "--update-order",
        "stop-first",
        "--update-failure-action",
        "rollback",
        "--update-monitor",
        "2s",
        "--restart-delay",
        "1s",
        "--stop-grace-period",
        "2s",
        "/bin/sh",
        "-c",
        &script,
    ])?;
    let good = ids(&wait_running(m, "loop", 4, false)?);
    let bound = Bound::StopFirst {
        replicas: 4,
        parallelism: 2,
    };
    let mut watch = Watch::process("loop", bound, &mark);
    watch.tracked = good.clone();
    let mut cli = m.spawn_cli(&["service", "update", "--image", "/bin/false", "loop"])?;
    let out = watch_cli(
        &mut watch,
        m,
        &mut cli,
        "`service update --image /bin/false` to end",
    )?;
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    eprintln!("service update of a broken version: {err}");
    ensure!(
        !out.status.success(),
        "the update of a broken version succeeded"
    );
    let i = wait_update_state(m, "loop", "rollback_completed")?;
    eprintln!("update status: {}", i["update_status"]);
    // The command says why the update was rolled back: the new task exited.
    assert!(err.contains("exit"), "no reason in {err:?}");
    assert_eq!(i["spec"]["image"], "/bin/sh", "{i}");
    let rows = watch_until(
        "4 tasks of the good version running",
        Duration::from_secs(30),
        &mut watch,
        m,
        || Ok(Some(check_converged(m, "loop", 4, "/bin/sh", None)?)),
    )?;
    watch.report("process driver, broken version rolled back, stop-first, parallelism 2");
    assert!(
        watch.stopped.len() <= 2,
        "more good tasks stopped than one batch: {:?}",
        watch.stopped
    );
    let untouched: BTreeSet<String> = good.difference(&watch.stopped).cloned().collect();
    assert!(untouched.is_subset(&ids(&rows)), "{}", brief(&rows));
    assert_eq!(processes(&mark).len(), 4);
    m.ok(&["service", "rm", "loop"])?;
    Ok(())
}

// ---- Rollback -------------------------------------------------------------------------

/// Issue 17: a start-first update stopped half-way (two of four slots updated, the update
/// waiting out its delay) by `service rollback`: the rollback replaces the two updated tasks
/// and only those; the two tasks never updated run on untouched; healthy tasks never fewer
/// than the replicas throughout.
#[test]
fn rollback_after_start_first_update_touches_only_updated_tasks() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let tag = ImageTag::new("upd-rb")?;
    let (ms, _ws) = start_cluster_from("uo-", 83, 1, 1, 2)?;
    let m = &ms[0];
    let cluster = cluster_id(m)?;
    let _containers = ClusterContainers(cluster.clone());
    let mut create = vec![
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "4",
        "--update-parallelism",
        "1",
        "--update-order",
        "start-first",
        "--update-delay",
        "5s",
        "--update-monitor",
        "1s",
        "--rollback-parallelism",
        "1",
        "--rollback-order",
        "start-first",
        "--rollback-monitor",
        "1s",
        "--stop-grace-period",
        "2s",
        "--health-cmd",
        HEALTH_CMD,
    ];
    create.extend(HEALTH_TIMING);
    create.extend([IMAGE, "sh", "-c", HEALTHY_LOOP]);
    m.ok(&create)?;
    let original = ids(&wait_running(m, "web", 4, true)?);
    let bound = Bound::StartFirst {
        replicas: 4,
        parallelism: 1,
        healthy: true,
    };
    let mut watch = Watch::docker("web", bound, &cluster);
    m.ok(&[
        "service",
        "update",
        "--detach",
        "--image",
        tag.name(),
        "web",
    ])?;
    // Two slots updated (their old tasks gone), two not: the update waits out its delay.
    let (old, new) = watch_until(
        "two slots updated and two not",
        UPDATE_DEADLINE,
        &mut watch,
        m,
        || {
            let run = running_rows(m, "web")?;
            let old: Vec<Value> = run
                .iter()
                .filter(|t| t["image"] == IMAGE)
                .cloned()
                .collect();
            let new: Vec<Value> = run
                .iter()
                .filter(|t| t["image"] == tag.name() && t["health"] == "healthy")
                .cloned()
                .collect();
            ensure!(
                old.len() + new.len() <= 4,
                "a third slot started already: {}",
                brief(&run)
            );
            Ok((old.len() == 2 && new.len() == 2).then(|| (ids(&old), ids(&new))))
        },
    )?;
    assert!(old.is_subset(&original), "{old:?}");

    watch.must_run = old.clone();
    let mut cli = m.spawn_cli(&["service", "rollback", "web"])?;
    let out = watch_cli(&mut watch, m, &mut cli, "`service rollback` to end")?;
    watch.report("rollback after half a start-first update");
    ensure!(
        out.status.success(),
        "service rollback failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let i = inspect(m, "web")?;
    assert_eq!(i["update_status"]["state"], "rollback_completed", "{i}");
    assert_eq!(i["spec"]["image"], IMAGE, "{i}");
    let rows = check_converged(m, "web", 4, IMAGE, None)?;
    let now = ids(&rows);
    assert!(
        old.is_subset(&now),
        "a task never updated was replaced: {}",
        brief(&rows)
    );
    assert!(
        now.is_disjoint(&new),
        "an updated task survived the rollback"
    );
    let created: BTreeSet<&String> = now.difference(&old).collect();
    assert_eq!(created.len(), 2, "the rollback made {created:?}");
    check_containers(&cluster, "web", 4, IMAGE, &rows)?;
    m.ok(&["service", "rm", "web"])?;
    Ok(())
}

// ---- Bad flags ------------------------------------------------------------------------

/// Issue 17: bad update flags (negative parallelism, a failure ratio above 1 or below 0) and
/// an unknown service: each fails with one line of error (no usage text) and changes
/// nothing; `service create` with a bad flag creates nothing.
#[test]
fn bad_update_flags_fail_in_one_line_and_change_nothing() -> Result<()> {
    let (ms, _) = start_cluster_from("uv-", 83, 11, 1, 0)?;
    let m = &ms[0];
    m.ok(&[
        "service", "create", "--name", "loop", "--driver", "process", "/bin/sh", "-c", LOOP,
    ])?;
    let before_tasks = ids(&wait_running(m, "loop", 1, false)?);
    let before = inspect(m, "loop")?;
    let cases: &[&[&str]] = &[
        &["service", "update", "--update-parallelism", "-1", "loop"],
        &[
            "service",
            "update",
            "--update-max-failure-ratio",
            "1.5",
            "loop",
        ],
        &[
            "service",
            "update",
            "--update-max-failure-ratio",
            "-0.1",
            "loop",
        ],
        &["service", "update", "--rollback-parallelism", "-2", "loop"],
        &[
            "service",
            "update",
            "--rollback-max-failure-ratio",
            "2",
            "loop",
        ],
        &["service", "update", "--image", "/bin/true", "nosuch"],
        &["service", "update", "--force", "nosuch"],
        &["service", "rollback", "nosuch"],
    ];
    for args in cases {
        let what = format!("shoal {}", args.join(" "));
        let out = m.cli(args)?;
        let err = failed_one_line(&what, &out)?;
        eprintln!("{what}: {err}");
        if args.last() == Some(&"nosuch") {
            assert!(err.contains("nosuch"), "`{what}`: {err}");
        }
    }
    let after = inspect(m, "loop")?;
    assert_eq!(after["version"], before["version"], "{after}");
    assert_eq!(after["spec"], before["spec"], "{after}");
    assert_eq!(after["update_status"], before["update_status"], "{after}");
    assert_eq!(ids(&running_rows(m, "loop")?), before_tasks);

    let out = m.cli(&[
        "service",
        "create",
        "--name",
        "bad",
        "--driver",
        "process",
        "--update-parallelism",
        "-1",
        "/bin/sh",
        "-c",
        LOOP,
    ])?;
    failed_one_line("service create --update-parallelism -1", &out)?;
    let out = m.cli(&[
        "service",
        "create",
        "--name",
        "bad",
        "--driver",
        "process",
        "--rollback-max-failure-ratio",
        "1.01",
        "/bin/sh",
        "-c",
        LOOP,
    ])?;
    failed_one_line("service create --rollback-max-failure-ratio 1.01", &out)?;
    let names: Vec<String> = m
        .json(&["service", "ls"])?
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["name"].as_str().map(str::to_string))
        .collect();
    assert_eq!(names, ["loop"], "a bad create created something");
    m.ok(&["service", "rm", "loop"])?;
    Ok(())
}

// ---- Leader killed --------------------------------------------------------------------

/// Issue 17: three managers, two workers (the tasks run on the workers), a start-first
/// update with a 2 s delay between slots; the leader is killed (`kill -9`) once the first
/// slot is updated. The update completes under the new leader, and at no sample does a slot
/// have two running tasks of one version (nor two running containers of one version).
#[test]
fn leader_killed_mid_update_completes_without_two_tasks_of_one_version_in_a_slot() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let tag = ImageTag::new("upd-lk")?;
    let (mut ms, _ws) = start_cluster("ul-", 84, 3, 2)?;
    let cluster = cluster_id(&ms[0])?;
    let _containers = ClusterContainers(cluster.clone());
    ms[0].ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "4",
        "--constraint",
        "node.role==worker",
        "--update-parallelism",
        "1",
        "--update-order",
        "start-first",
        "--update-delay",
        "2s",
        "--update-monitor",
        "1s",
        "--stop-grace-period",
        "2s",
        IMAGE,
        "sh",
        "-c",
        LOOP,
    ])?;
    wait_running(&ms[0], "web", 4, false)?;
    let leader_name = poll_until("a leader", Duration::from_secs(20), || leader(&ms[0]))?;
    let li = ms
        .iter()
        .position(|d| d.name == leader_name)
        .context("the leader among the managers")?;
    let si = (li + 1) % ms.len();
    eprintln!("leader {leader_name}, watching through {}", ms[si].name);

    let bound = Bound::StartFirst {
        replicas: 4,
        parallelism: 1,
        healthy: false,
    };
    let mut watch = Watch::docker("web", bound, &cluster);
    watch.tolerate_cli_errors = true;
    ms[si].ok(&[
        "service",
        "update",
        "--detach",
        "--image",
        tag.name(),
        "web",
    ])?;
    let updated = watch_until(
        "the first slot updated",
        UPDATE_DEADLINE,
        &mut watch,
        &ms[si],
        || {
            let run = running_rows(&ms[si], "web")?;
            let n = run
                .iter()
                .filter(|t| t["image"] == tag.name() && t["up_to_date"] == true)
                .count();
            Ok((n >= 1).then_some(n))
        },
    )?;
    ensure!(
        updated < 4,
        "the update was over before the leader could be killed mid-way ({updated} updated)"
    );
    let killed = Instant::now();
    ms[li].kill9();
    eprintln!("killed the leader {leader_name} with {updated} of 4 slots updated");

    let survivor = &ms[si];
    watch_until(
        "the update completed under a new leader",
        UPDATE_DEADLINE,
        &mut watch,
        survivor,
        || {
            ensure!(
                update_state(survivor, "web")? == "completed",
                "not completed yet"
            );
            Ok(Some(check_converged(survivor, "web", 4, tag.name(), None)?))
        },
    )?;
    eprintln!(
        "leader killed -> update completed after {} ms",
        killed.elapsed().as_millis()
    );
    watch.report("start-first update across a leader kill");
    let new_leader = leader(survivor)?.context("no leader after the update")?;
    assert_ne!(new_leader, leader_name);
    let rows = check_converged(survivor, "web", 4, tag.name(), None)?;
    check_containers(&cluster, "web", 4, tag.name(), &rows)?;
    // One more look a little later: no late duplicate from the old leader's plan.
    Poll::new(
        "4 containers of the new image, one per slot",
        Duration::from_secs(3),
    )
    .every(SAMPLE_EVERY)
    .holds(|| {
        watch.sample(survivor)?;
        check_containers(&cluster, "web", 4, tag.name(), &rows)
    })?;
    survivor.ok(&["service", "rm", "web"])?;
    Ok(())
}
