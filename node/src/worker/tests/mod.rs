//! Worker tests.
//!
//! - `machine.rs`: the decisions, fed inputs by hand (no runtime, no driver, no clock).
//! - `shell.rs`: the whole worker on the in-memory driver of `fake.rs`.
//! - Here: the few end-to-end tests only real drivers prove (the process driver's start,
//!   events, health checks and adoption after a restart; Docker's), in temporary directories
//!   and with `shoal-test/busybox:latest` (`scripts/test-image.sh`).
//!
//! The process driver needs the `shoal-shim` binary: `SHOAL_SHIM_BIN`, or `shoal-shim` (or
//! `shoal`, used as `shoal shim`) next to the test binary's `deps/` directory. Build it with
//! `cargo build -p shoal-runtime --bin shoal-shim` in the same target directory.
//!
//! Docker tests print a note and return when Docker or the image is missing, unless
//! `SHOAL_REQUIRE_DOCKER=1`, in which case they fail. Every test uses its own cluster id and a
//! guard that removes every task of that cluster, even when the test fails.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use shoal_runtime::docker::{DockerConfig, DockerDriver};
use shoal_runtime::process::{ProcessConfig, ProcessDriver, ShimCommand};
use shoal_runtime::{Driver, RunState, Scope, TaskSpec};
use tokio::sync::mpsc;

use super::*;

mod fake;
mod machine;
mod shell;

const DEADLINE: Duration = Duration::from_secs(20);
const TEST_IMAGE: &str = "shoal-test/busybox:latest";
const NODE: &str = "node-a";
const SLEEP_FOREVER: &str = "while true; do sleep 0.2; done";

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

fn unique_cluster(test: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let short: String = test
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(24)
        .collect();
    format!("w{}-{n}-{short}", std::process::id())
}

/// How the process driver starts its supervisor in tests.
fn shim_command() -> ShimCommand {
    if let Some(path) = std::env::var_os("SHOAL_SHIM_BIN") {
        let path = PathBuf::from(path);
        assert!(
            path.is_file(),
            "SHOAL_SHIM_BIN={} is not a file",
            path.display()
        );
        return ShimCommand::standalone(path);
    }
    let exe = std::env::current_exe().expect("own path");
    // target/<profile>/deps/shoal-HASH → target/<profile>/
    let profile_dir = exe.parent().and_then(Path::parent).map(Path::to_owned);
    if let Some(dir) = profile_dir {
        let shim = dir.join("shoal-shim");
        if shim.is_file() {
            return ShimCommand::standalone(shim);
        }
        let shoal = dir.join("shoal");
        if shoal.is_file() {
            return ShimCommand::shoal_subcommand(shoal);
        }
    }
    panic!(
        "the process-driver tests need the shoal-shim binary: build it with \
         `cargo build -p shoal-runtime --bin shoal-shim` (same CARGO_TARGET_DIR) or set \
         SHOAL_SHIM_BIN to its path (looked next to {})",
        exe.display()
    );
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Docker,
    Process,
}

struct Fixture {
    kind: Kind,
    cluster: String,
    // Before `dir`: fields drop in order, and the guard needs the state files.
    _guard: Guard,
    dir: tempfile::TempDir,
}

fn require_docker() -> bool {
    std::env::var("SHOAL_REQUIRE_DOCKER").is_ok_and(|v| v == "1")
}

fn docker_missing(test: &str, reason: &str) -> Option<Fixture> {
    assert!(
        !require_docker(),
        "{test}: Docker is required (SHOAL_REQUIRE_DOCKER=1) but {reason}"
    );
    let note = format!(
        "skipping docker test {test}: {reason} (set SHOAL_REQUIRE_DOCKER=1 to fail instead)\n"
    );
    let _ = std::io::Write::write_all(&mut std::io::stderr(), note.as_bytes());
    None
}

impl Fixture {
    fn process(test: &str) -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster = unique_cluster(test);
        Fixture {
            kind: Kind::Process,
            _guard: Guard {
                kind: Kind::Process,
                cluster: cluster.clone(),
                state_dir: dir.path().join("process"),
            },
            cluster,
            dir,
        }
    }

    async fn docker(test: &str) -> Option<Fixture> {
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster = unique_cluster(test);
        let fx = Fixture {
            kind: Kind::Docker,
            _guard: Guard {
                kind: Kind::Docker,
                cluster: cluster.clone(),
                state_dir: dir.path().join("process"),
            },
            cluster,
            dir,
        };
        let driver = match DockerDriver::new(DockerConfig::new(fx.scope())) {
            Ok(d) => d,
            Err(e) => return docker_missing(test, &format!("no Docker driver: {e}")),
        };
        if let shoal_runtime::Availability::Unavailable { reason } = driver.availability().await {
            return docker_missing(test, &format!("the engine is unavailable: {reason}"));
        }
        let probe = TaskSpec::new("probe", "svc", "probe", 0, TEST_IMAGE);
        if let Err(e) = driver.prepare(&probe).await {
            return docker_missing(test, &format!("{e}; run scripts/test-image.sh"));
        }
        Some(fx)
    }

    fn scope(&self) -> Scope {
        Scope::new(self.cluster.clone(), NODE)
    }

    fn driver_name(&self) -> &'static str {
        match self.kind {
            Kind::Docker => "docker",
            Kind::Process => "process",
        }
    }

    /// A fresh driver (same engine / state directory every time), as after a daemon restart.
    fn driver(&self) -> Arc<dyn Driver> {
        make_driver(self.kind, &self.scope(), &self.dir.path().join("process"))
    }

    fn config(&self, driver: Arc<dyn Driver>) -> WorkerConfig {
        let mut drivers = BTreeMap::new();
        drivers.insert(self.driver_name().to_owned(), driver);
        let mut config = WorkerConfig::new(drivers, self.dir.path().join("worker"));
        config.resync_interval = Duration::from_millis(500);
        config
    }

    fn start_worker(&self, driver: Arc<dyn Driver>) -> (WorkerHandle, Reports) {
        let (handle, rx) = Worker::start(self.config(driver)).expect("worker");
        (handle, Reports::new(rx))
    }

    /// An assignment running `script` with a POSIX shell.
    fn shell(&self, task_id: &str, slot: u64, script: &str) -> Assignment {
        let (image, args) = match self.kind {
            Kind::Docker => (
                TEST_IMAGE,
                vec!["sh".to_owned(), "-c".to_owned(), script.to_owned()],
            ),
            Kind::Process => ("/bin/sh", vec!["-c".to_owned(), script.to_owned()]),
        };
        let mut spec = TaskSpec::new(task_id, "svc1", "web", slot, image);
        spec.args = args;
        spec.stop_grace = Duration::from_secs(2);
        Assignment {
            task_id: task_id.into(),
            service_id: "svc1".into(),
            service_name: "web".into(),
            slot,
            driver: self.driver_name().into(),
            spec,
            desired: DesiredState::Running,
        }
    }
}

fn make_driver(kind: Kind, scope: &Scope, state_dir: &Path) -> Arc<dyn Driver> {
    match kind {
        Kind::Docker => {
            Arc::new(DockerDriver::new(DockerConfig::new(scope.clone())).expect("docker driver"))
        }
        Kind::Process => {
            let mut config = ProcessConfig::new(state_dir, scope.clone(), shim_command());
            config.log_max_bytes = 64 * 1024;
            Arc::new(ProcessDriver::new(config).expect("process driver"))
        }
    }
}

/// Removes every task of the test's cluster (node `NODE`), even when the test panicked.
struct Guard {
    kind: Kind,
    cluster: String,
    state_dir: PathBuf,
}

impl Drop for Guard {
    fn drop(&mut self) {
        let (kind, scope, dir) = (
            self.kind,
            Scope::new(self.cluster.clone(), NODE),
            self.state_dir.clone(),
        );
        if kind == Kind::Process && !dir.exists() {
            return;
        }
        // Drop cannot await: a private runtime on a thread of its own.
        let cleanup = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let driver = make_driver(kind, &scope, &dir);
                for task in driver.list().await.unwrap_or_default() {
                    let _ = driver.remove(&task.task_id).await;
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Collects report batches.
struct Reports {
    rx: mpsc::Receiver<Vec<TaskReport>>,
    all: Vec<TaskReport>,
    batches: usize,
}

impl Reports {
    fn new(rx: mpsc::Receiver<Vec<TaskReport>>) -> Self {
        Self {
            rx,
            all: Vec::new(),
            batches: 0,
        }
    }

    fn take_batch(&mut self, batch: Vec<TaskReport>) {
        assert!(!batch.is_empty(), "empty report batch");
        self.batches += 1;
        self.all.extend(batch);
    }

    /// Waits for a report of `task` in `state`.
    async fn wait(&mut self, task: &str, state: TaskState) -> TaskReport {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            if let Some(r) = self
                .all
                .iter()
                .find(|r| r.task_id == task && r.state == state)
            {
                return r.clone();
            }
            match tokio::time::timeout_at(deadline, self.rx.recv()).await {
                Ok(Some(batch)) => self.take_batch(batch),
                Ok(None) => panic!("report channel closed waiting for {task} {state}"),
                Err(_) => panic!(
                    "timed out waiting for {task} to be reported {state}; reports: {:?}",
                    self.all
                ),
            }
        }
    }

    /// Takes whatever is queued right now.
    fn drain(&mut self) -> usize {
        let mut n = 0;
        while let Ok(batch) = self.rx.try_recv() {
            n += batch.len();
            self.take_batch(batch);
        }
        n
    }

    fn states_of(&self, task: &str) -> Vec<TaskState> {
        self.all
            .iter()
            .filter(|r| r.task_id == task)
            .map(|r| r.state)
            .collect()
    }
}

/// Polls `check` until it returns `Some`, failing after `DEADLINE`.
async fn wait_for<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    crate::testutil::poll_until(what, DEADLINE, Duration::from_millis(50), || {
        let fut = check();
        async move { fut.await.ok_or("not yet") }
    })
    .await
}

fn full(tasks: Vec<Assignment>) -> AssignmentSet {
    AssignmentSet {
        full: true,
        tasks,
        removed: Vec::new(),
    }
}

fn delta(tasks: Vec<Assignment>, removed: &[&str]) -> AssignmentSet {
    AssignmentSet {
        full: false,
        tasks,
        removed: removed.iter().map(|s| (*s).to_owned()).collect(),
    }
}

async fn view(handle: &WorkerHandle, task: &str) -> Option<TaskView> {
    handle
        .snapshot()
        .await
        .expect("snapshot")
        .into_iter()
        .find(|v| v.task_id == task)
}

/// What the killed daemon's cache says: `task` assigned and in `state`.
fn write_cache(cache_dir: &Path, a: Assignment, state: TaskState) {
    cache::Cache::open(cache_dir)
        .and_then(|c| {
            c.store(vec![cache::CachedTask {
                assignment: a,
                state,
                exit_code: None,
                error: None,
                ended_at_ms: None,
                removed: false,
            }])
        })
        .expect("write the cache");
}

// ---------------------------------------------------------------------------------------------
// Process driver
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assigned_task_starts_and_reports_running() {
    let fx = Fixture::process("starts");
    let driver = fx.driver();
    let (handle, mut reports) = fx.start_worker(driver.clone());
    handle
        .apply(full(vec![fx.shell("t1", 1, SLEEP_FOREVER)]))
        .await
        .expect("apply");
    let running = reports.wait("t1", TaskState::Running).await;
    assert_eq!(running.exit_code, None);
    assert_eq!(running.error, None);
    assert_eq!(
        reports.states_of("t1"),
        [
            TaskState::Preparing,
            TaskState::Starting,
            TaskState::Running
        ]
    );
    let v = view(&handle, "t1").await.expect("in snapshot");
    assert_eq!(v.state, TaskState::Running);
    assert_eq!(v.desired, Some(DesiredState::Running));
    assert!(v.confirmed);
    assert!(v.runtime_id.is_some_and(|id| !id.is_empty()));
    let listed = driver.list().await.expect("list");
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].state, RunState::Running);
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_worker_adopts_without_duplicates() {
    let fx = Fixture::process("restart");
    let driver = fx.driver();
    let (handle, mut reports) = fx.start_worker(driver.clone());
    let a = fx.shell("t1", 1, SLEEP_FOREVER);
    handle.apply(full(vec![a.clone()])).await.expect("apply");
    reports.wait("t1", TaskState::Running).await;
    let pid = driver.inspect("t1").await.expect("inspect").runtime_id;
    handle.shutdown().await.expect("shutdown");
    drop(handle);
    drop(reports);
    drop(driver);

    // While no worker runs, a stray task of this node appears (e.g. a copy the cluster has
    // since replaced elsewhere).
    let driver = fx.driver();
    driver
        .start(&fx.shell("stray", 9, SLEEP_FOREVER).spec)
        .await
        .expect("start stray");

    // A new daemon: new driver, new worker, same cache. No manager yet.
    let driver = fx.driver();
    let (handle, mut reports) = fx.start_worker(driver.clone());
    let r = reports.wait("t1", TaskState::Running).await;
    assert_eq!(r.error, None);
    handle.resync().await.expect("resync");
    let v = view(&handle, "t1").await.expect("t1 known");
    assert_eq!(v.state, TaskState::Running);
    assert!(!v.confirmed);
    assert_eq!(
        v.runtime_id.as_deref(),
        Some(pid.as_str()),
        "not the same process"
    );
    // Before any full set nothing is stopped, the stray included.
    let stray = driver.inspect("stray").await.expect("stray present");
    assert_eq!(stray.state, RunState::Running);
    assert_eq!(driver.list().await.expect("list").len(), 2);
    assert!(
        !reports.states_of("t1").contains(&TaskState::Preparing),
        "{:?}",
        reports.all
    );

    // The manager answers: t1 is still ours, the stray is not.
    handle.apply(full(vec![a])).await.expect("apply");
    reports.wait("stray", TaskState::Shutdown).await;
    wait_for("stray removed", || async {
        driver
            .inspect("stray")
            .await
            .err()
            .filter(|e| e.is_not_found())
    })
    .await;
    let t1 = driver.inspect("t1").await.expect("t1");
    assert_eq!(t1.state, RunState::Running);
    assert_eq!(t1.runtime_id, pid);
    assert_eq!(driver.list().await.expect("list").len(), 1);
    assert_eq!(
        reports.states_of("t1"),
        [TaskState::Running],
        "{:?}",
        reports.all
    );
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn externally_killed_task_is_reported_failed() {
    let fx = Fixture::process("killed");
    let driver = fx.driver();
    let (handle, mut reports) = fx.start_worker(driver.clone());
    handle
        .apply(full(vec![fx.shell("t1", 1, SLEEP_FOREVER)]))
        .await
        .expect("apply");
    reports.wait("t1", TaskState::Running).await;
    let status = driver.inspect("t1").await.expect("inspect");
    let pid: i32 = status.runtime_id.parse().expect("pid");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill -9");
    let r = reports.wait("t1", TaskState::Failed).await;
    assert_eq!(r.exit_code, Some(137), "{r:?}");
    assert!(r.error.is_some());
    handle.resync().await.expect("resync");
    let after = driver.inspect("t1").await.expect("inspect");
    assert_eq!(after.state, RunState::Exited, "restarted in place");
    assert_eq!(
        view(&handle, "t1").await.expect("view").state,
        TaskState::Failed
    );
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_changes_are_reported() {
    let fx = Fixture::process("health");
    let driver = fx.driver();
    let (handle, mut reports) = fx.start_worker(driver.clone());
    let mut a = fx.shell("h1", 1, SLEEP_FOREVER);
    let mut check =
        shoal_runtime::HealthCheck::new(shoal_runtime::HealthTest::Shell("test -e healthy".into()));
    check.interval = Duration::from_millis(100);
    check.timeout = Duration::from_secs(2);
    check.retries = 1;
    a.spec.health = Some(check);
    a.spec.args = vec!["-c".into(), format!("touch healthy; {SLEEP_FOREVER}")];
    handle.apply(full(vec![a])).await.expect("apply");
    reports.wait("h1", TaskState::Running).await;
    wait_for("h1 reported healthy", || {
        let found = reports
            .all
            .iter()
            .any(|r| r.task_id == "h1" && r.health == TaskHealth::Healthy);
        let batch = reports.rx.try_recv().ok();
        if let Some(batch) = batch {
            reports.all.extend(batch);
        }
        async move { found.then_some(()) }
    })
    .await;
    assert_eq!(
        view(&handle, "h1").await.expect("view").health,
        TaskHealth::Healthy
    );
    handle.shutdown().await.expect("shutdown");
}

/// The process driver's check fails `retries` times: the worker stops the task with its grace
/// and reports it failed (`unhealthy container`, the stop's exit code), once, and starts
/// nothing in its place (the manager's restart policy does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_task_is_stopped_and_reported_failed() {
    let fx = Fixture::process("unhealthy");
    let driver = fx.driver();
    let (handle, mut reports) = fx.start_worker(driver.clone());
    let mut a = fx.shell("u1", 1, SLEEP_FOREVER);
    let mut check =
        shoal_runtime::HealthCheck::new(shoal_runtime::HealthTest::Shell("test -e healthy".into()));
    check.interval = Duration::from_millis(200);
    check.timeout = Duration::from_secs(2);
    check.retries = 2;
    a.spec.health = Some(check);
    a.spec.stop_grace = Duration::from_secs(5);
    // Healthy for a second, then the check fails; TERM ends it at once with 143.
    a.spec.args = vec![
        "-c".into(),
        format!("touch healthy; sleep 1; rm healthy; {SLEEP_FOREVER}"),
    ];
    handle.apply(full(vec![a])).await.expect("apply");
    let r = reports.wait("u1", TaskState::Failed).await;
    assert_eq!(
        (r.exit_code, r.error.as_deref(), r.health),
        (
            Some(143),
            Some("unhealthy container"),
            TaskHealth::Unhealthy
        )
    );
    let s = driver.inspect("u1").await.expect("kept");
    assert_eq!(s.state, RunState::Exited);
    handle.resync().await.expect("resync");
    handle.flush().await.expect("flush");
    reports.drain();
    let failed = reports
        .all
        .iter()
        .filter(|r| r.task_id == "u1" && r.state == TaskState::Failed)
        .count();
    assert_eq!(failed, 1, "{:?}", reports.all);
    assert!(
        reports
            .all
            .iter()
            .any(|r| r.task_id == "u1" && r.health == TaskHealth::Healthy),
        "{:?}",
        reports.all
    );
    handle.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// Docker driver
// ---------------------------------------------------------------------------------------------

fn docker_kill(container: &str) {
    let out = std::process::Command::new("docker")
        .args(["kill", container])
        .output()
        .expect("run docker kill");
    assert!(out.status.success(), "docker kill: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_task_runs_fails_when_killed_and_is_removed_when_unassigned() {
    let Some(fx) = Fixture::docker("docker_kill").await else {
        return;
    };
    let driver = fx.driver();
    let (handle, mut reports) = fx.start_worker(driver.clone());
    handle
        .apply(full(vec![
            fx.shell("k1", 1, "sleep 1000"),
            fx.shell("k2", 2, "exit 3"),
        ]))
        .await
        .expect("apply");
    reports.wait("k1", TaskState::Running).await;
    let failed = reports.wait("k2", TaskState::Failed).await;
    assert_eq!(failed.exit_code, Some(3));
    let container = driver.inspect("k1").await.expect("inspect").runtime_id;
    docker_kill(&container);
    let r = reports.wait("k1", TaskState::Failed).await;
    assert_eq!(r.exit_code, Some(137), "{r:?}");
    handle.resync().await.expect("resync");
    assert_eq!(
        driver.inspect("k1").await.expect("inspect").state,
        RunState::Exited,
        "restarted in place"
    );
    handle.apply(full(vec![])).await.expect("apply");
    wait_for("containers removed", || async {
        driver.list().await.ok().filter(|l| l.is_empty())
    })
    .await;
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_restart_adopts_then_stops_unassigned() {
    let Some(fx) = Fixture::docker("docker_restart").await else {
        return;
    };
    let driver = fx.driver();
    let (handle, mut reports) = fx.start_worker(driver.clone());
    handle
        .apply(full(vec![fx.shell("r1", 1, "sleep 1000")]))
        .await
        .expect("apply");
    reports.wait("r1", TaskState::Running).await;
    let container = driver.inspect("r1").await.expect("inspect").runtime_id;
    handle.shutdown().await.expect("shutdown");
    drop((handle, reports, driver));

    let driver = fx.driver();
    let (handle, mut reports) = fx.start_worker(driver.clone());
    reports.wait("r1", TaskState::Running).await;
    let listed = driver.list().await.expect("list");
    assert_eq!(listed.len(), 1, "duplicated: {listed:?}");
    assert_eq!(listed[0].runtime_id, container);
    // The node was down meanwhile and r1 was replaced elsewhere: the full set drops it.
    handle.apply(full(vec![])).await.expect("apply");
    reports.wait("r1", TaskState::Shutdown).await;
    wait_for("container removed", || async {
        driver.list().await.ok().filter(|l| l.is_empty())
    })
    .await;
    handle.shutdown().await.expect("shutdown");
}

// ---------------------------------------------------------------------------------------------
// Issue 15, item 7: copies a killed daemon left (the in-memory interleavings are in `shell.rs`)
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_15_process_task_started_after_the_listing_is_stopped_after_the_full_set() {
    let fx = Fixture::process("issue15process");
    let mut config = fx.config(fx.driver());
    config.resync_interval = Duration::from_secs(3600);
    let (handle, rx) = Worker::start(config).expect("worker");
    let mut reports = Reports::new(rx);
    handle.resync().await.expect("resync");
    handle.resync().await.expect("resync");
    // The previous daemon's driver (another instance: the worker hears no event of it) starts
    // a task of this node after the worker's listing at start.
    let previous = fx.driver();
    previous
        .start(&fx.shell("old", 1, SLEEP_FOREVER).spec)
        .await
        .expect("start");
    let driver = fx.driver();
    handle.apply(full(vec![])).await.expect("apply");
    reports.wait("old", TaskState::Shutdown).await;
    wait_for("old removed", || async {
        driver
            .inspect("old")
            .await
            .err()
            .filter(|e| e.is_not_found())
    })
    .await;
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issue_15_docker_copy_a_killed_daemon_left_is_stopped_and_reported() {
    let Some(fx) = Fixture::docker("issue15docker").await else {
        return;
    };
    let cache_dir = fx.dir.path().join("worker");
    let a = fx.shell("d1", 1, "sleep 1000");
    // The killed daemon's container (started after its last report), cached as `assigned`.
    fx.driver().start(&a.spec).await.expect("start");
    write_cache(&cache_dir, a, TaskState::Assigned);
    let mut config = fx.config(fx.driver());
    config.resync_interval = Duration::from_secs(3600);
    let (handle, rx) = Worker::start(config).expect("worker");
    let mut reports = Reports::new(rx);
    let driver = fx.driver();
    handle.apply(full(vec![])).await.expect("apply");
    wait_for("d1 removed", || async {
        driver
            .inspect("d1")
            .await
            .err()
            .filter(|e| e.is_not_found())
    })
    .await;
    reports.wait("d1", TaskState::Shutdown).await;
    handle.shutdown().await.expect("shutdown");
}
