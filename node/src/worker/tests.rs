//! Worker tests against real drivers: the process driver in temporary directories, and the
//! Docker driver with `shoal-test/busybox:latest` (`scripts/test-image.sh`).
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
use std::time::{Duration, Instant};

use shoal_runtime::docker::{DockerConfig, DockerDriver};
use shoal_runtime::process::{ProcessConfig, ProcessDriver, ShimCommand};
use shoal_runtime::{Driver, RunState, Scope, TaskSpec};
use tokio::sync::mpsc;

use super::*;

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
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

// ---------------------------------------------------------------------------------------------
// Process driver
// ---------------------------------------------------------------------------------------------

#[test]
fn start_outside_a_runtime_is_an_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = WorkerConfig::new(BTreeMap::new(), dir.path());
    assert!(matches!(Worker::start(config), Err(WorkerError::NoRuntime)));
}

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
async fn unassigned_task_is_stopped_and_removed() {
    let fx = Fixture::process("unassigned");
    let driver = fx.driver();
    let (handle, mut reports) = fx.start_worker(driver.clone());
    handle
        .apply(full(vec![
            fx.shell("t1", 1, SLEEP_FOREVER),
            fx.shell("t2", 2, SLEEP_FOREVER),
        ]))
        .await
        .expect("apply");
    reports.wait("t1", TaskState::Running).await;
    reports.wait("t2", TaskState::Running).await;
    // A full set without t1: stopped, removed, reported shutdown.
    handle
        .apply(full(vec![fx.shell("t2", 2, SLEEP_FOREVER)]))
        .await
        .expect("apply");
    let r = reports.wait("t1", TaskState::Shutdown).await;
    assert_eq!(r.exit_code, None);
    wait_for("t1 removed from the runtime", || async {
        driver
            .inspect("t1")
            .await
            .err()
            .filter(|e| e.is_not_found())
    })
    .await;
    wait_for("t1 gone from the snapshot", || async {
        view(&handle, "t1").await.is_none().then_some(())
    })
    .await;
    // A delta removing t2 does the same.
    handle.apply(delta(vec![], &["t2"])).await.expect("apply");
    reports.wait("t2", TaskState::Shutdown).await;
    wait_for("t2 removed", || async {
        driver.list().await.ok().filter(|l| l.is_empty())
    })
    .await;
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desired_shutdown_stops_the_task() {
    let fx = Fixture::process("desiredshutdown");
    let driver = fx.driver();
    let (handle, mut reports) = fx.start_worker(driver.clone());
    let mut a = fx.shell("t1", 1, SLEEP_FOREVER);
    handle.apply(full(vec![a.clone()])).await.expect("apply");
    reports.wait("t1", TaskState::Running).await;
    a.desired = DesiredState::Shutdown;
    handle.apply(delta(vec![a], &[])).await.expect("apply");
    reports.wait("t1", TaskState::Shutdown).await;
    // Still assigned: stopped but kept (logs stay available).
    let status = driver.inspect("t1").await.expect("still present");
    assert_ne!(status.state, RunState::Running);
    assert_eq!(
        reports.states_of("t1").last(),
        Some(&TaskState::Shutdown),
        "{:?}",
        reports.all
    );
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exits_are_reported_and_never_restarted() {
    let fx = Fixture::process("exits");
    let driver = fx.driver();
    let (handle, mut reports) = fx.start_worker(driver.clone());
    let set = full(vec![
        fx.shell("ok", 1, "exit 0"),
        fx.shell("bad", 2, "echo oops >&2; exit 3"),
    ]);
    handle.apply(set.clone()).await.expect("apply");
    let ok = reports.wait("ok", TaskState::Complete).await;
    assert_eq!(ok.exit_code, Some(0));
    assert_eq!(ok.error, None);
    let bad = reports.wait("bad", TaskState::Failed).await;
    assert_eq!(bad.exit_code, Some(3));
    assert!(
        bad.error.as_deref().is_some_and(|e| e.contains('3')),
        "{bad:?}"
    );
    let before = driver.inspect("bad").await.expect("inspect");
    // Level-triggered passes and a repeated full set change nothing.
    handle.resync().await.expect("resync");
    handle.apply(set).await.expect("apply");
    handle.resync().await.expect("resync");
    handle.flush().await.expect("flush");
    let late = reports.drain();
    assert_eq!(late, 0, "unexpected reports: {:?}", reports.all);
    let after = driver.inspect("bad").await.expect("inspect");
    assert_eq!(after.state, RunState::Exited);
    assert_eq!(after.started_at, before.started_at, "restarted in place");
    assert_eq!(
        view(&handle, "bad").await.expect("view").state,
        TaskState::Failed
    );
    assert_eq!(
        view(&handle, "ok").await.expect("view").state,
        TaskState::Complete
    );
    for task in ["ok", "bad"] {
        let states = reports.states_of(task);
        assert_eq!(
            states.iter().filter(|s| s.is_terminal()).count(),
            1,
            "{states:?}"
        );
    }
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_program_or_driver_is_rejected() {
    let fx = Fixture::process("rejected");
    let driver = fx.driver();
    let (handle, mut reports) = fx.start_worker(driver.clone());
    let mut missing = fx.shell("missing", 1, "true");
    missing.spec.image = "/nonexistent/shoal-test-program".into();
    let mut nodriver = fx.shell("nodriver", 2, "true");
    nodriver.driver = "warp-drive".into();
    let mut badid = fx.shell("badid", 3, "true");
    badid.spec.task_id = "other".into();
    let mut invalid = fx.shell("bad..id/x", 4, "true");
    invalid.spec.task_id = "bad..id/x".into();
    handle
        .apply(full(vec![missing, nodriver, badid, invalid]))
        .await
        .expect("apply");
    let r = reports.wait("missing", TaskState::Rejected).await;
    assert!(
        r.error
            .as_deref()
            .is_some_and(|e| e.contains("no such file")),
        "{r:?}"
    );
    let r = reports.wait("nodriver", TaskState::Rejected).await;
    assert!(
        r.error.as_deref().is_some_and(|e| e.contains("warp-drive")),
        "{r:?}"
    );
    let r = reports.wait("badid", TaskState::Rejected).await;
    assert!(r.error.is_some());
    let r = reports.wait("bad..id/x", TaskState::Rejected).await;
    assert!(
        r.error.as_deref().is_some_and(|e| e.contains("invalid")),
        "{r:?}"
    );
    assert!(driver.list().await.expect("list").is_empty());
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
async fn task_vanishing_from_the_runtime_is_reported_failed() {
    let fx = Fixture::process("vanished");
    let driver = fx.driver();
    let (handle, mut reports) = fx.start_worker(driver.clone());
    handle
        .apply(full(vec![fx.shell("v1", 1, SLEEP_FOREVER)]))
        .await
        .expect("apply");
    reports.wait("v1", TaskState::Running).await;
    // Removed behind the worker's back (no exit event): the level-triggered resync notices.
    driver.remove("v1").await.expect("remove");
    let r = reports.wait("v1", TaskState::Failed).await;
    // Either the removal's kill was seen first (exit code) or only the absence was.
    assert!(r.error.is_some(), "{r:?}");
    handle.resync().await.expect("resync");
    assert!(driver.list().await.expect("list").is_empty(), "restarted");
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_are_batched_and_deduplicated() {
    let fx = Fixture::process("batches");
    let driver = fx.driver();
    let (handle, mut reports) = fx.start_worker(driver.clone());
    let tasks: Vec<Assignment> = (0..8)
        .map(|i| fx.shell(&format!("t{i}"), i, SLEEP_FOREVER))
        .collect();
    handle.apply(full(tasks.clone())).await.expect("apply");
    for i in 0..8 {
        reports.wait(&format!("t{i}"), TaskState::Running).await;
    }
    handle.flush().await.expect("flush");
    reports.drain();
    for i in 0..8 {
        assert_eq!(
            reports.states_of(&format!("t{i}")),
            [
                TaskState::Preparing,
                TaskState::Starting,
                TaskState::Running
            ],
            "{:?}",
            reports.all
        );
    }
    assert!(
        reports.batches < reports.all.len(),
        "{} batches for {} reports: not batched",
        reports.batches,
        reports.all.len()
    );
    // Nothing changed: nothing reported.
    handle.apply(full(tasks)).await.expect("apply");
    handle.resync().await.expect("resync");
    handle.flush().await.expect("flush");
    assert_eq!(reports.drain(), 0, "{:?}", reports.all);
    // But a new session can ask for everything.
    let current = handle.current_reports().await.expect("current");
    assert_eq!(current.len(), 8);
    assert!(current.iter().all(|r| r.state == TaskState::Running));
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
            .any(|r| r.task_id == "h1" && r.health.as_deref() == Some("healthy"));
        let batch = reports.rx.try_recv().ok();
        if let Some(batch) = batch {
            reports.all.extend(batch);
        }
        async move { found.then_some(()) }
    })
    .await;
    assert_eq!(
        view(&handle, "h1").await.expect("view").health.as_deref(),
        Some("healthy")
    );
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ended_tasks_are_removed_after_retention() {
    let fx = Fixture::process("retention");
    let driver = fx.driver();
    let mut config = fx.config(driver.clone());
    config.ended_retention = Duration::ZERO;
    let (handle, rx) = Worker::start(config).expect("worker");
    let mut reports = Reports::new(rx);
    handle
        .apply(full(vec![fx.shell("done", 1, "exit 0")]))
        .await
        .expect("apply");
    reports.wait("done", TaskState::Complete).await;
    wait_for("ended task removed from the runtime", || async {
        handle.resync().await.expect("resync");
        driver
            .inspect("done")
            .await
            .err()
            .filter(|e| e.is_not_found())
    })
    .await;
    // Still assigned: still known, still complete, and not started again.
    handle.resync().await.expect("resync");
    let v = view(&handle, "done").await.expect("view");
    assert_eq!(v.state, TaskState::Complete);
    assert!(driver.list().await.expect("list").is_empty());
    handle.flush().await.expect("flush");
    reports.drain();
    assert_eq!(reports.states_of("done").last(), Some(&TaskState::Complete));
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_receiver_gets_the_latest_state_of_every_task() {
    let fx = Fixture::process("backpressure");
    let driver = fx.driver();
    let mut config = fx.config(driver.clone());
    config.report_capacity = 1;
    config.max_batch = 2;
    let (handle, rx) = Worker::start(config).expect("worker");
    let tasks: Vec<Assignment> = (0..6)
        .map(|i| fx.shell(&format!("b{i}"), i, SLEEP_FOREVER))
        .collect();
    handle.apply(full(tasks)).await.expect("apply");
    // Nobody reads until every task runs (the worker's own view).
    wait_for("all running", || async {
        let snap = handle.snapshot().await.expect("snapshot");
        (snap.len() == 6 && snap.iter().all(|v| v.state == TaskState::Running)).then_some(())
    })
    .await;
    let mut reports = Reports::new(rx);
    for i in 0..6 {
        reports.wait(&format!("b{i}"), TaskState::Running).await;
    }
    assert!(reports.all.iter().all(|r| r.task_id.starts_with('b')));
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_cache_starts_empty() {
    let fx = Fixture::process("corruptcache");
    let cache_dir = fx.dir.path().join("worker");
    std::fs::create_dir_all(&cache_dir).expect("mkdir");
    std::fs::write(cache_dir.join(cache::CACHE_FILE), b"\x00garbage").expect("write");
    let (handle, _reports) = fx.start_worker(fx.driver());
    assert!(handle.snapshot().await.expect("snapshot").is_empty());
    handle.shutdown().await.expect("shutdown");
    // Shut down: further calls say so instead of panicking.
    assert!(matches!(handle.snapshot().await, Err(WorkerError::Stopped)));
    handle.shutdown().await.expect("idempotent");
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
// Issue 15, item 7: a duplicate found by a kill/restart run. An in-memory engine that outlives
// the daemon (as Docker does) and can hold a start before or after it creates the task, so the
// interleavings of a `kill -9` replay exactly. Current-thread runtimes: deterministic order.
// ---------------------------------------------------------------------------------------------

/// Where a held start waits.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum HoldAt {
    /// The request reached the engine, which has not created anything yet.
    BeforeCreate,
    /// The task exists (created, not running) and the start has not returned.
    AfterCreate,
}

struct Hold {
    at: HoldAt,
    reached: tokio::sync::watch::Sender<bool>,
    release: tokio::sync::watch::Receiver<bool>,
}

/// The test's side of a hold.
struct HoldHandle {
    reached: tokio::sync::watch::Receiver<bool>,
    release: tokio::sync::watch::Sender<bool>,
}

impl HoldHandle {
    async fn reached(&mut self) {
        tokio::time::timeout(DEADLINE, self.reached.wait_for(|r| *r))
            .await
            .expect("the start never reached the hold")
            .expect("hold dropped");
    }

    fn release(&self) {
        let _ = self.release.send(true);
    }
}

struct FakeTask {
    spec: TaskSpec,
    state: RunState,
    runtime_id: String,
    exit_code: Option<i64>,
}

#[derive(Default)]
struct FakeState {
    tasks: BTreeMap<String, FakeTask>,
    holds: BTreeMap<String, Hold>,
    next_id: u64,
}

/// One "engine" shared by the drivers of successive daemons on one node.
#[derive(Default)]
struct FakeEngine {
    state: std::sync::Mutex<FakeState>,
}

impl FakeEngine {
    fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The next start of `task_id` waits at `at` until released.
    fn hold(&self, task_id: &str, at: HoldAt) -> HoldHandle {
        let (reached_tx, reached_rx) = tokio::sync::watch::channel(false);
        let (release_tx, release_rx) = tokio::sync::watch::channel(false);
        self.lock().holds.insert(
            task_id.to_owned(),
            Hold {
                at,
                reached: reached_tx,
                release: release_rx,
            },
        );
        HoldHandle {
            reached: reached_rx,
            release: release_tx,
        }
    }

    fn state_of(&self, task_id: &str) -> Option<RunState> {
        self.lock().tasks.get(task_id).map(|t| t.state)
    }

    /// A new driver on this engine (as a restarted daemon makes).
    fn driver(self: &Arc<Self>) -> Arc<dyn Driver> {
        Arc::new(FakeDriver(self.clone()))
    }
}

fn fake_status(t: &FakeTask) -> shoal_runtime::TaskStatus {
    shoal_runtime::TaskStatus {
        task_id: t.spec.task_id.clone(),
        service_id: t.spec.service_id.clone(),
        service_name: t.spec.service_name.clone(),
        slot: t.spec.slot,
        runtime_id: t.runtime_id.clone(),
        image: t.spec.image.clone(),
        state: t.state,
        exit_code: t.exit_code,
        oom_killed: false,
        health: shoal_runtime::Health::None,
        error: None,
        started_at: None,
        finished_at: None,
        ports: Vec::new(),
        labels: BTreeMap::new(),
    }
}

fn not_found(task_id: &str) -> shoal_runtime::RuntimeError {
    shoal_runtime::RuntimeError::NotFound {
        task_id: task_id.to_owned(),
    }
}

/// A Docker-like driver on a [`FakeEngine`]: idempotent start (a created task is started, a
/// running one returned), stop of a created task is a no-op, remove kills. Its event stream is
/// the listing at subscription and nothing after (as a process driver that did not launch a
/// task hears nothing of it), so only listings reveal what others started.
struct FakeDriver(Arc<FakeEngine>);

impl Driver for FakeDriver {
    fn kind(&self) -> shoal_runtime::DriverKind {
        shoal_runtime::DriverKind::Docker
    }

    fn availability(&self) -> shoal_runtime::BoxFuture<'_, shoal_runtime::Availability> {
        Box::pin(async {
            shoal_runtime::Availability::Available {
                version: "fake".into(),
            }
        })
    }

    fn prepare<'a>(
        &'a self,
        _spec: &'a TaskSpec,
    ) -> shoal_runtime::BoxFuture<'a, Result<(), shoal_runtime::RuntimeError>> {
        Box::pin(async { Ok(()) })
    }

    fn start<'a>(
        &'a self,
        spec: &'a TaskSpec,
    ) -> shoal_runtime::BoxFuture<'a, Result<shoal_runtime::TaskStatus, shoal_runtime::RuntimeError>>
    {
        Box::pin(async move {
            let id = spec.task_id.clone();
            let hold = self.0.lock().holds.remove(&id);
            let wait = |hold: &Hold| {
                let _ = hold.reached.send(true);
                let mut release = hold.release.clone();
                async move {
                    let _ = release.wait_for(|r| *r).await;
                }
            };
            if let Some(h) = hold.as_ref().filter(|h| h.at == HoldAt::BeforeCreate) {
                wait(h).await;
            }
            {
                let mut st = self.0.lock();
                if let Some(t) = st.tasks.get_mut(&id) {
                    if t.state == RunState::Created {
                        t.state = RunState::Running;
                    }
                    return Ok(fake_status(t));
                }
                st.next_id += 1;
                let runtime_id = format!("fake-{}", st.next_id);
                st.tasks.insert(
                    id.clone(),
                    FakeTask {
                        spec: spec.clone(),
                        state: RunState::Created,
                        runtime_id,
                        exit_code: None,
                    },
                );
            }
            if let Some(h) = hold.as_ref().filter(|h| h.at == HoldAt::AfterCreate) {
                wait(h).await;
            }
            let mut st = self.0.lock();
            match st.tasks.get_mut(&id) {
                Some(t) => {
                    if t.state == RunState::Created {
                        t.state = RunState::Running;
                    }
                    Ok(fake_status(t))
                }
                None => Err(shoal_runtime::RuntimeError::StartFailed {
                    task_id: id,
                    reason: "removed while starting".into(),
                }),
            }
        })
    }

    fn stop<'a>(
        &'a self,
        task_id: &'a str,
        _grace: Option<Duration>,
    ) -> shoal_runtime::BoxFuture<'a, Result<(), shoal_runtime::RuntimeError>> {
        Box::pin(async move {
            let mut st = self.0.lock();
            let t = st
                .tasks
                .get_mut(task_id)
                .ok_or_else(|| not_found(task_id))?;
            if t.state == RunState::Running {
                t.state = RunState::Exited;
                t.exit_code = Some(143);
            }
            Ok(())
        })
    }

    fn remove<'a>(
        &'a self,
        task_id: &'a str,
    ) -> shoal_runtime::BoxFuture<'a, Result<(), shoal_runtime::RuntimeError>> {
        Box::pin(async move {
            self.0
                .lock()
                .tasks
                .remove(task_id)
                .map(|_| ())
                .ok_or_else(|| not_found(task_id))
        })
    }

    fn inspect<'a>(
        &'a self,
        task_id: &'a str,
    ) -> shoal_runtime::BoxFuture<'a, Result<shoal_runtime::TaskStatus, shoal_runtime::RuntimeError>>
    {
        Box::pin(async move {
            self.0
                .lock()
                .tasks
                .get(task_id)
                .map(fake_status)
                .ok_or_else(|| not_found(task_id))
        })
    }

    fn list(
        &self,
    ) -> shoal_runtime::BoxFuture<
        '_,
        Result<Vec<shoal_runtime::TaskStatus>, shoal_runtime::RuntimeError>,
    > {
        Box::pin(async move { Ok(self.0.lock().tasks.values().map(fake_status).collect()) })
    }

    fn events(&self) -> shoal_runtime::BoxStream<'static, shoal_runtime::Event> {
        use futures_util::StreamExt as _;
        let first =
            shoal_runtime::Event::Resynced(self.0.lock().tasks.values().map(fake_status).collect());
        futures_util::stream::iter([first])
            .chain(futures_util::stream::pending())
            .boxed()
    }

    fn logs(
        &self,
        _task_id: &str,
        _options: shoal_runtime::LogOptions,
    ) -> shoal_runtime::BoxStream<
        'static,
        Result<shoal_runtime::LogChunk, shoal_runtime::RuntimeError>,
    > {
        use futures_util::StreamExt as _;
        futures_util::stream::empty().boxed()
    }
}

/// A worker on fake drivers named `drivers` (all on `engine`), with no periodic resync to
/// speak of: only what the worker does on its own may find a task.
fn fake_worker(
    engine: &Arc<FakeEngine>,
    drivers: &[&str],
    cache_dir: &Path,
) -> (WorkerHandle, Reports) {
    let map: BTreeMap<String, Arc<dyn Driver>> = drivers
        .iter()
        .map(|n| ((*n).to_owned(), engine.driver()))
        .collect();
    let mut config = WorkerConfig::new(map, cache_dir);
    config.resync_interval = Duration::from_secs(3600);
    let (handle, rx) = Worker::start(config).expect("worker");
    (handle, Reports::new(rx))
}

fn fake_assignment(task_id: &str, slot: u64) -> Assignment {
    Assignment {
        task_id: task_id.into(),
        service_id: "svc1".into(),
        service_name: "web".into(),
        slot,
        driver: "docker".into(),
        spec: TaskSpec::new(task_id, "svc1", "web", slot, "fake/image:1"),
        desired: DesiredState::Running,
    }
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

/// Reports queued by now (after a flush), without waiting.
async fn settled_reports(handle: &WorkerHandle, reports: &mut Reports) {
    handle.resync().await.expect("resync");
    handle.flush().await.expect("flush");
    reports.drain();
}

#[tokio::test]
async fn issue_15_a_task_unknown_to_the_cache_is_stopped_after_the_full_set() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    // The killed daemon's start of `old` had reached the engine (which has created nothing
    // yet) after the daemon's last report and cache write: the engine finishes it alone.
    let mut hold = engine.hold("old", HoldAt::BeforeCreate);
    let previous = engine.driver();
    let spec = fake_assignment("old", 1).spec;
    let in_flight = tokio::spawn(async move { previous.start(&spec).await });
    hold.reached().await;

    // The restarted daemon's worker lists the runtime at start: nothing yet.
    let (handle, mut reports) = fake_worker(&engine, &["docker"], dir.path());
    handle.resync().await.expect("resync");
    handle.resync().await.expect("resync");
    assert!(view(&handle, "old").await.is_none());
    // Then the engine completes the old start: a running task of this node nobody knows, and
    // no event about it.
    hold.release();
    in_flight.await.expect("join").expect("the old start");
    assert_eq!(engine.state_of("old"), Some(RunState::Running));

    // The manager's full set does not have it: stopped and removed, whatever the cache says.
    handle
        .apply(full(vec![fake_assignment("keep", 2)]))
        .await
        .expect("apply");
    wait_for("the unknown task stopped and removed", || async {
        engine.state_of("old").is_none().then_some(())
    })
    .await;
    reports.wait("old", TaskState::Shutdown).await;
    reports.wait("keep", TaskState::Running).await;
    assert_eq!(engine.state_of("keep"), Some(RunState::Running));
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn issue_15_a_start_in_flight_when_its_assignment_is_withdrawn_is_stopped() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let (handle, mut reports) = fake_worker(&engine, &["docker"], dir.path());
    // The start of t1 creates it and is held there (between create and report)...
    let mut hold = engine.hold("t1", HoldAt::AfterCreate);
    handle
        .apply(full(vec![fake_assignment("t1", 1)]))
        .await
        .expect("apply");
    hold.reached().await;
    assert_eq!(engine.state_of("t1"), Some(RunState::Created));
    // ...when a full set without it arrives (the node was marked down, t1 orphaned).
    handle.apply(full(vec![])).await.expect("apply");
    hold.release();
    wait_for("t1 stopped and removed", || async {
        engine.state_of("t1").is_none().then_some(())
    })
    .await;
    reports.wait("t1", TaskState::Shutdown).await;
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn issue_15_a_killed_daemons_start_is_stopped_and_reported_after_the_restart() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache_dir = dir.path().join("worker");
    // The killed daemon: t1 assigned (and cached), its start held after the create...
    let mut hold = engine.hold("t1", HoldAt::AfterCreate);
    let (old, _old_reports) = fake_worker(&engine, &["docker"], &cache_dir);
    old.apply(full(vec![fake_assignment("t1", 1)]))
        .await
        .expect("apply");
    hold.reached().await;
    // ...and its cache written before the start's progress reached it (flushed every 150 ms).
    old.shutdown().await.expect("shutdown");
    write_cache(&cache_dir, fake_assignment("t1", 1), TaskState::Assigned);
    // The engine completes the start the dead daemon sent.
    hold.release();
    wait_for("t1 running", || async {
        (engine.state_of("t1") == Some(RunState::Running)).then_some(())
    })
    .await;

    // The restarted daemon: t1 was orphaned meanwhile; the full set does not have it.
    let (handle, mut reports) = fake_worker(&engine, &["docker"], &cache_dir);
    handle.apply(full(vec![])).await.expect("apply");
    wait_for("t1 stopped and removed", || async {
        engine.state_of("t1").is_none().then_some(())
    })
    .await;
    // The cache said `assigned`, but the runtime had it: the manager hears it stopped (an
    // orphaned task becomes `shutdown` instead of staying orphaned forever).
    reports.wait("t1", TaskState::Shutdown).await;
    handle.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn issue_15_a_task_whose_driver_is_missing_is_never_reported_stopped() {
    let engine = FakeEngine::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let cache_dir = dir.path().join("worker");
    // A running docker task of this node, cached as running...
    engine
        .driver()
        .start(&fake_assignment("t1", 1).spec)
        .await
        .expect("start");
    engine
        .driver()
        .start(&fake_assignment("t2", 2).spec)
        .await
        .expect("start");
    cache::Cache::open(&cache_dir)
        .and_then(|c| {
            c.store(
                ["t1", "t2"]
                    .iter()
                    .zip(1..)
                    .map(|(t, slot)| cache::CachedTask {
                        assignment: fake_assignment(t, slot),
                        state: TaskState::Running,
                        exit_code: None,
                        error: None,
                        ended_at_ms: None,
                        removed: false,
                    })
                    .collect(),
            )
        })
        .expect("write the cache");
    // ...and a daemon restarted without the docker driver (the engine did not answer its
    // probe in time): it cannot stop them, so it must never say it did.
    let elsewhere = FakeEngine::new();
    let (handle, mut reports) = fake_worker(&elsewhere, &["process"], &cache_dir);
    let mut t2 = fake_assignment("t2", 2);
    t2.desired = DesiredState::Shutdown;
    handle.apply(full(vec![t2])).await.expect("apply");
    settled_reports(&handle, &mut reports).await;
    for task in ["t1", "t2"] {
        assert!(
            !reports.states_of(task).contains(&TaskState::Shutdown),
            "{task} reported shutdown while it runs: {:?}",
            reports.all
        );
        assert_eq!(engine.state_of(task), Some(RunState::Running));
    }
    handle.shutdown().await.expect("shutdown");
}

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
