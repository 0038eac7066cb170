//! The process driver (Nomad's `raw_exec`): the "image" is a program path, run directly under the
//! [`crate::shim`] supervisor.
//!
//! State lives under `STATE_DIR/<cluster id>/<node id>/<task id>/`:
//! `task.json` (spec, allocated ports), `shim.json` (what the shim runs), `status.json` (written
//! by the shim: pid, start time, exit code), `health.json`, `stdout.log`/`stderr.log` (plus one
//! rotated `.1` each), `shim.log` (the shim's own errors), `work/` (the working directory).
//!
//! A task is adopted after a restart from those files: its pid counts as the task only while
//! `/proc/PID/stat` shows the same start time, so a reused pid is never mistaken for it.

mod health;

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::str::FromStr;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime};

use futures_util::StreamExt;
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::{AccessFlags, Pid, access};
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};

use crate::driver::{Availability, BoxFuture, BoxStream, Driver, DriverKind};
use crate::error::RuntimeError;
use crate::logfile;
use crate::procfs;
use crate::shim::{self, ShimConfig, ShimState, ShimStatus};
use crate::spec::{Scope, TaskSpec};
use crate::status::{Event, Health, LogChunk, LogOptions, PortEndpoint, RunState, TaskStatus};

const RECORD_FILE: &str = "task.json";
const LAUNCH_FILE: &str = "launch.json";
const HEALTH_FILE: &str = "health.json";
const SHIM_LOG: &str = "shim.log";
const WORK_DIR: &str = "work";
const POLL: Duration = Duration::from_millis(50);
const KILL_WAIT: Duration = Duration::from_secs(5);
const START_WAIT: Duration = Duration::from_secs(10);

/// How the process driver starts its supervisor: `program args... --task-dir DIR`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShimCommand {
    /// The executable: the `shoal` binary (with `args = ["shim"]`) or a stand-alone shim.
    pub program: PathBuf,
    /// Arguments before `--task-dir DIR`.
    pub args: Vec<OsString>,
}

impl ShimCommand {
    /// The `shoal` binary's hidden subcommand: `SHOAL_BIN shim --task-dir DIR`.
    pub fn shoal_subcommand(shoal_bin: impl Into<PathBuf>) -> Self {
        Self {
            program: shoal_bin.into(),
            args: vec!["shim".into()],
        }
    }

    /// A stand-alone shim binary (such as this crate's `shoal-shim`): `PROGRAM --task-dir DIR`.
    pub fn standalone(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
        }
    }
}

/// Configuration of a [`ProcessDriver`].
#[derive(Debug, Clone)]
pub struct ProcessConfig {
    /// Directory for task state and logs (e.g. `/var/lib/shoal/process`).
    pub state_dir: PathBuf,
    /// Node and cluster this driver works for.
    pub scope: Scope,
    /// How to start the supervisor.
    pub shim: ShimCommand,
    /// Size at which each of stdout.log / stderr.log is rotated (one old copy is kept).
    pub log_max_bytes: u64,
    /// Environment every task gets (before its spec's own, which may override it): e.g.
    /// `SHOAL_DNS`, the node's resolver of service names.
    pub env: BTreeMap<String, String>,
    /// Where the tasks' secrets are written (memory-backed; one directory per task, handed
    /// to it as `SHOAL_SECRETS_DIR`). `None`: tasks with secrets are refused.
    pub secrets_dir: Option<PathBuf>,
}

impl ProcessConfig {
    /// A configuration with 10 MiB log files.
    pub fn new(state_dir: impl Into<PathBuf>, scope: Scope, shim: ShimCommand) -> Self {
        Self {
            state_dir: state_dir.into(),
            scope,
            shim,
            log_max_bytes: 10 * 1024 * 1024,
            env: BTreeMap::new(),
            secrets_dir: None,
        }
    }
}

/// `task.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TaskRecord {
    scope: Scope,
    spec: TaskSpec,
    ports: Vec<PortEndpoint>,
    created_at: SystemTime,
}

/// `launch.json`: the shim the driver started, to tell a shim that died before writing its
/// status from one that is still starting.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct LaunchRecord {
    shim_pid: i32,
    shim_start_ticks: u64,
}

/// Runs tasks as plain processes. Cheap to clone (shared state).
#[derive(Clone)]
pub struct ProcessDriver {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    config: ProcessConfig,
    /// `state_dir/<cluster>/<node>`.
    dir: PathBuf,
    events: broadcast::Sender<Event>,
    /// Tasks with a monitor running.
    monitored: Mutex<HashSet<String>>,
}

impl std::fmt::Debug for ProcessDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessDriver")
            .field("dir", &self.inner.dir)
            .finish_non_exhaustive()
    }
}

/// Parses `SIGTERM`, `TERM`, `sigterm` or `15`.
pub(crate) fn parse_signal(s: &str) -> Result<Signal, RuntimeError> {
    let bad = || RuntimeError::InvalidSpec(format!("unknown stop signal {s:?}"));
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    Signal::from_str(&name).map_err(|_| bad())
}

/// Checks that `program` is an absolute path to an executable regular file.
fn check_program(program: &str) -> Result<PathBuf, RuntimeError> {
    let path = PathBuf::from(program);
    let fail = |reason: &str| RuntimeError::ProgramNotFound {
        path: path.clone(),
        reason: reason.into(),
    };
    if !path.is_absolute() {
        return Err(fail("the program path must be absolute"));
    }
    let meta = match fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(fail("no such file")),
        Err(e) => return Err(fail(&e.to_string())),
    };
    if !meta.is_file() {
        return Err(fail("not a regular file"));
    }
    if meta.permissions().mode() & 0o111 == 0 || access(&path, AccessFlags::X_OK).is_err() {
        return Err(fail("not executable"));
    }
    Ok(path)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Option<T>, RuntimeError> {
    match fs::read(path) {
        Ok(bytes) => {
            serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| RuntimeError::CorruptState {
                    path: path.to_owned(),
                    reason: e.to_string(),
                })
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(RuntimeError::io(format!("reading {}", path.display()), e)),
    }
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<(), RuntimeError> {
    let data = serde_json::to_vec_pretty(value)
        .map_err(|e| RuntimeError::io("serializing state", io::Error::other(e)))?;
    shim::write_atomic(path, &data)
        .map_err(|e| RuntimeError::io(format!("writing {}", path.display()), e))
}

impl ProcessDriver {
    /// Creates the driver and its state directory. Tasks already recorded there for this scope
    /// are adopted: they show up in [`Driver::list`] and are monitored (exit, health) again.
    pub fn new(config: ProcessConfig) -> Result<Self, RuntimeError> {
        config.scope.validate()?;
        let dir = config
            .state_dir
            .join(&config.scope.cluster_id)
            .join(&config.scope.node_id);
        fs::create_dir_all(&dir)
            .map_err(|e| RuntimeError::io(format!("creating {}", dir.display()), e))?;
        let (events, _) = broadcast::channel(1024);
        let driver = Self {
            inner: Arc::new(Inner {
                config,
                dir,
                events,
                monitored: Mutex::new(HashSet::new()),
            }),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            driver.inner.ensure_monitors();
        }
        Ok(driver)
    }

    /// The directory holding this scope's tasks.
    pub fn task_root(&self) -> &Path {
        &self.inner.dir
    }
}

impl Inner {
    fn task_dir(&self, task_id: &str) -> PathBuf {
        self.dir.join(task_id)
    }

    fn record(&self, task_id: &str) -> Result<TaskRecord, RuntimeError> {
        let not_found = || RuntimeError::NotFound {
            task_id: task_id.to_owned(),
        };
        if crate::spec::check_ident("task id", task_id).is_err() {
            return Err(not_found());
        }
        let record: TaskRecord =
            read_json(&self.task_dir(task_id).join(RECORD_FILE))?.ok_or_else(not_found)?;
        if record.scope != self.config.scope || record.spec.task_id != task_id {
            return Err(not_found());
        }
        Ok(record)
    }

    /// The status of a task from its files and `/proc`.
    fn status_of(&self, record: &TaskRecord) -> Result<TaskStatus, RuntimeError> {
        let dir = self.task_dir(&record.spec.task_id);
        let shim_status = ShimStatus::read(&dir).map_err(|e| RuntimeError::CorruptState {
            path: dir.join(shim::STATUS_FILE),
            reason: e.to_string(),
        })?;
        let mut status = TaskStatus {
            task_id: record.spec.task_id.clone(),
            service_id: record.spec.service_id.clone(),
            service_name: record.spec.service_name.clone(),
            slot: record.spec.slot,
            runtime_id: String::new(),
            image: record.spec.image.clone(),
            state: RunState::Created,
            exit_code: None,
            oom_killed: false,
            health: Health::None,
            error: None,
            started_at: None,
            finished_at: None,
            ports: Vec::new(),
            labels: record.spec.labels.clone(),
            address: None,
        };
        match shim_status {
            None => {
                let launch: Option<LaunchRecord> = read_json(&dir.join(LAUNCH_FILE))?;
                let starting = match launch {
                    Some(l) => procfs::is_same_process(l.shim_pid, l.shim_start_ticks),
                    // Recorded, and the supervisor not yet: a start in progress, here or by a
                    // daemon killed right after spawning the supervisor (which may be starting
                    // the program). Created until the start would have timed out.
                    None => record
                        .created_at
                        .elapsed()
                        .is_ok_and(|age| age < START_WAIT),
                };
                if !starting {
                    status.state = RunState::Dead;
                    status.error = Some(format!(
                        "the supervisor exited before starting the program: {}",
                        read_shim_log(&dir)
                    ));
                }
            }
            Some(s) => {
                status.runtime_id = s.pid.map(|p| p.to_string()).unwrap_or_default();
                status.started_at = s.started_at;
                status.error = s.error.clone();
                match s.state {
                    ShimState::Exited => {
                        status.state = RunState::Exited;
                        status.exit_code = s.exit_code;
                        status.finished_at = s.finished_at;
                    }
                    ShimState::Running => {
                        let program_alive = match (s.pid, s.pid_start_ticks) {
                            (Some(pid), Some(ticks)) => procfs::is_same_process(pid, ticks),
                            _ => false,
                        };
                        let shim_alive = procfs::is_same_process(s.shim_pid, s.shim_start_ticks);
                        if program_alive || shim_alive {
                            // With the shim alive and the program gone, the shim is about to
                            // record the exit: still running for a moment.
                            status.state = RunState::Running;
                        } else {
                            status.state = RunState::Exited;
                            status.error = Some(
                                "the program ended while its supervisor was not running; its \
                                 exit status is unknown"
                                    .into(),
                            );
                        }
                    }
                }
            }
        }
        if record.spec.active_health().is_some() {
            let saved: Option<Health> = read_json(&dir.join(HEALTH_FILE)).unwrap_or(None);
            status.health = saved.unwrap_or(Health::Starting);
        }
        if status.state == RunState::Running {
            status.ports = record.ports.clone();
        }
        Ok(status)
    }

    fn records(&self) -> Result<Vec<TaskRecord>, RuntimeError> {
        let entries = fs::read_dir(&self.dir)
            .map_err(|e| RuntimeError::io(format!("listing {}", self.dir.display()), e))?;
        let mut out = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(task_id) = name.to_str() else {
                continue;
            };
            match self.record(task_id) {
                Ok(r) => out.push(r),
                Err(RuntimeError::NotFound { .. }) => {}
                Err(e) => tracing::warn!(task_id, error = %e, "skipping unreadable task state"),
            }
        }
        out.sort_by(|a, b| a.spec.task_id.cmp(&b.spec.task_id));
        Ok(out)
    }

    fn list(&self) -> Result<Vec<TaskStatus>, RuntimeError> {
        let mut out = Vec::new();
        for record in self.records()? {
            match self.status_of(&record) {
                Ok(s) => out.push(s),
                Err(e) => {
                    tracing::warn!(task_id = %record.spec.task_id, error = %e, "skipping task");
                }
            }
        }
        Ok(out)
    }

    /// Starts monitors for running tasks that have none (adoption).
    fn ensure_monitors(self: &Arc<Self>) {
        let Ok(records) = self.records() else { return };
        for record in records {
            if let Ok(status) = self.status_of(&record)
                && matches!(status.state, RunState::Running | RunState::Created)
            {
                self.monitor(&record);
            }
        }
    }

    /// Watches one task for its exit (and runs its health check), once per task.
    fn monitor(self: &Arc<Self>, record: &TaskRecord) {
        let task_id = record.spec.task_id.clone();
        {
            let mut monitored = self.monitored.lock().unwrap_or_else(|p| p.into_inner());
            if !monitored.insert(task_id.clone()) {
                return;
            }
        }
        if let Some(check) = record.spec.active_health().cloned() {
            tokio::spawn(health::run(Arc::downgrade(self), record.clone(), check));
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let Some(inner) = weak.upgrade() else { return };
                let status = inner.record(&task_id).and_then(|r| inner.status_of(&r));
                let exited = match status {
                    Ok(s) if matches!(s.state, RunState::Exited | RunState::Dead) => {
                        Some(s.exit_code)
                    }
                    Ok(_) => None,
                    Err(_) => {
                        // Removed (remove() stops it first, which the owner already knows).
                        inner
                            .monitored
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&task_id);
                        return;
                    }
                };
                if let Some(exit_code) = exited {
                    inner
                        .monitored
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&task_id);
                    let _ = inner.events.send(Event::Exited { task_id, exit_code });
                    return;
                }
            }
        });
    }

    fn set_health(&self, task_id: &str, health: Health) {
        let path = self.task_dir(task_id).join(HEALTH_FILE);
        if let Err(e) = write_json(&path, &health) {
            tracing::warn!(task_id, error = %e, "cannot record health");
        }
        let _ = self.events.send(Event::Health {
            task_id: task_id.to_owned(),
            health,
        });
    }

    fn allocate_ports(&self, targets: &[u16]) -> Result<Vec<PortEndpoint>, RuntimeError> {
        let taken: HashSet<u16> = self
            .records()?
            .iter()
            .flat_map(|r| r.ports.iter().map(|p| p.addr.port()))
            .collect();
        let mut listeners = Vec::new();
        let mut out = Vec::new();
        while out.len() < targets.len() {
            let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                .map_err(|e| RuntimeError::io("allocating a port", e))?;
            let addr = listener
                .local_addr()
                .map_err(|e| RuntimeError::io("allocating a port", e))?;
            if !taken.contains(&addr.port()) {
                out.push(PortEndpoint {
                    target: targets[out.len()],
                    addr,
                });
            }
            listeners.push(listener);
            if listeners.len() > targets.len() + 64 {
                return Err(RuntimeError::io(
                    "allocating a port",
                    io::Error::other("no free port"),
                ));
            }
        }
        Ok(out)
    }

    async fn start(self: &Arc<Self>, spec: &TaskSpec) -> Result<TaskStatus, RuntimeError> {
        spec.validate()?;
        if !spec.mounts.is_empty() {
            return Err(RuntimeError::InvalidSpec(
                "the process driver does not support mounts".into(),
            ));
        }
        let secrets = &spec.options.secrets;
        if (crate::spec::TaskOptions {
            secrets: Vec::new(),
            ..spec.options.clone()
        }) != crate::spec::TaskOptions::default()
        {
            return Err(RuntimeError::InvalidSpec(
                "the process driver does not support --user, --workdir, --hostname, --entrypoint, --init, --device, --cap-add, --cap-drop, --privileged or --config".into(),
            ));
        }
        let program = check_program(&spec.image)?;
        match self.record(&spec.task_id) {
            Ok(record) => return self.status_of(&record),
            Err(RuntimeError::NotFound { .. }) => {}
            Err(e) => return Err(e),
        }
        let dir = self.task_dir(&spec.task_id);
        if dir.exists() {
            // Left over from a start that did not complete (or another scope's files).
            fs::remove_dir_all(&dir)
                .map_err(|e| RuntimeError::io(format!("removing stale {}", dir.display()), e))?;
        }
        let with_secrets;
        let spec = if secrets.is_empty() {
            spec
        } else {
            with_secrets = self.write_secrets(spec)?;
            &with_secrets
        };
        let result = self.launch(spec, &program, &dir).await;
        if result.is_err() {
            let _ = fs::remove_dir_all(&dir);
            if let Some(root) = &self.config.secrets_dir {
                crate::secrets::remove(root, &spec.task_id);
            }
        }
        result
    }

    /// Writes the task's secrets as 0400 files of the daemon's user in its memory-backed
    /// directory, and returns the spec with `SHOAL_SECRETS_DIR` naming it.
    fn write_secrets(&self, spec: &TaskSpec) -> Result<TaskSpec, RuntimeError> {
        let Some(root) = &self.config.secrets_dir else {
            return Err(RuntimeError::StartFailed {
                task_id: spec.task_id.clone(),
                reason: "this driver has no memory-backed directory for secrets".into(),
            });
        };
        let files: Vec<crate::spec::TaskFile> = spec
            .options
            .secrets
            .iter()
            .map(|f| crate::spec::TaskFile {
                mode: 0o400,
                uid: nix::unistd::getuid().as_raw(),
                gid: nix::unistd::getgid().as_raw(),
                ..f.clone()
            })
            .collect();
        crate::secrets::write(
            root,
            &spec.task_id,
            &files,
            crate::secrets::Naming::ByTarget,
        )?;
        let mut spec = spec.clone();
        spec.env.insert(
            "SHOAL_SECRETS_DIR".to_owned(),
            crate::secrets::task_dir(root, &spec.task_id)
                .display()
                .to_string(),
        );
        Ok(spec)
    }

    async fn launch(
        self: &Arc<Self>,
        spec: &TaskSpec,
        program: &Path,
        dir: &Path,
    ) -> Result<TaskStatus, RuntimeError> {
        let workdir = dir.join(WORK_DIR);
        fs::create_dir_all(&workdir)
            .map_err(|e| RuntimeError::io(format!("creating {}", workdir.display()), e))?;
        let ports = self.allocate_ports(&spec.ports)?;
        let env = self.task_env(spec, &ports, &workdir);
        let record = TaskRecord {
            scope: self.config.scope.clone(),
            spec: spec.clone(),
            ports,
            created_at: SystemTime::now(),
        };
        let config = ShimConfig {
            program: program.to_owned(),
            args: spec.args.clone(),
            env,
            workdir,
            log_max_bytes: self.config.log_max_bytes,
        };
        write_json(&dir.join(shim::CONFIG_FILE), &config)?;
        // The record before the supervisor: no program ever runs without a record that lists
        // it. A daemon killed between spawning the shim and recording it would otherwise leave
        // a program nobody lists or stops, and a later start would run a second copy.
        write_json(&dir.join(RECORD_FILE), &record)?;
        let shim_log = fs::File::create(dir.join(SHIM_LOG))
            .map_err(|e| RuntimeError::io("creating shim.log", e))?;
        let shim_log2 = shim_log
            .try_clone()
            .map_err(|e| RuntimeError::io("creating shim.log", e))?;
        let mut child = tokio::process::Command::new(&self.config.shim.program)
            .args(&self.config.shim.args)
            .arg("--task-dir")
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(shim_log)
            .stderr(shim_log2)
            .process_group(0)
            .spawn()
            .map_err(|e| RuntimeError::StartFailed {
                task_id: spec.task_id.clone(),
                reason: format!(
                    "cannot run the supervisor {}: {e}",
                    self.config.shim.program.display()
                ),
            })?;
        let shim_pid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
        let launch = LaunchRecord {
            shim_pid,
            shim_start_ticks: procfs::start_ticks(shim_pid).unwrap_or(0),
        };
        // Reap the shim when it exits while this process still runs.
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        let kill_shim = || {
            if procfs::is_same_process(launch.shim_pid, launch.shim_start_ticks) {
                let _ = kill(Pid::from_raw(launch.shim_pid), Signal::SIGKILL);
            }
        };
        if let Err(e) = write_json(&dir.join(LAUNCH_FILE), &launch) {
            kill_shim();
            return Err(e);
        }
        let deadline = tokio::time::Instant::now() + START_WAIT;
        loop {
            let status = self.status_of(&record)?;
            match status.state {
                RunState::Running | RunState::Exited => {
                    self.monitor(&record);
                    let _ = self.events.send(Event::Started {
                        task_id: spec.task_id.clone(),
                    });
                    return Ok(status);
                }
                RunState::Dead => {
                    return Err(RuntimeError::StartFailed {
                        task_id: spec.task_id.clone(),
                        reason: status.error.unwrap_or_default(),
                    });
                }
                RunState::Created if tokio::time::Instant::now() >= deadline => {
                    kill_shim();
                    return Err(RuntimeError::StartFailed {
                        task_id: spec.task_id.clone(),
                        reason: format!(
                            "the supervisor did not start the program within {}: {}",
                            humantime::format_duration(START_WAIT),
                            read_shim_log(dir)
                        ),
                    });
                }
                RunState::Created => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn task_env(
        &self,
        spec: &TaskSpec,
        ports: &[PortEndpoint],
        workdir: &Path,
    ) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        env.insert(
            "PATH".to_owned(),
            std::env::var("PATH").unwrap_or_else(|_| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            }),
        );
        env.insert("HOME".to_owned(), workdir.display().to_string());
        env.insert("SHOAL_TASK_ID".to_owned(), spec.task_id.clone());
        env.insert("SHOAL_SERVICE_ID".to_owned(), spec.service_id.clone());
        env.insert("SHOAL_SERVICE_NAME".to_owned(), spec.service_name.clone());
        env.insert("SHOAL_TASK_SLOT".to_owned(), spec.slot.to_string());
        env.insert(
            "SHOAL_NODE_ID".to_owned(),
            self.config.scope.node_id.clone(),
        );
        if let Some(first) = ports.first() {
            env.insert("PORT".to_owned(), first.addr.port().to_string());
        }
        for p in ports {
            env.insert(format!("PORT_{}", p.target), p.addr.port().to_string());
        }
        env.extend(self.config.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        env
    }

    async fn wait_until_not_running(&self, record: &TaskRecord, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match self.status_of(record) {
                Ok(s) if s.state != RunState::Running && s.state != RunState::Created => {
                    return true;
                }
                Err(_) => return true,
                Ok(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Signals the program's process group if the recorded pid is still the program.
    fn signal_program(&self, record: &TaskRecord, signal: Signal) {
        let dir = self.task_dir(&record.spec.task_id);
        if let Ok(Some(s)) = ShimStatus::read(&dir)
            && s.state == ShimState::Running
            && let (Some(pid), Some(ticks)) = (s.pid, s.pid_start_ticks)
            && procfs::is_same_process(pid, ticks)
        {
            // The program leads its own process group: this reaches its children too.
            if let Err(e) = killpg(Pid::from_raw(pid), signal) {
                tracing::debug!(task_id = %record.spec.task_id, %e, "killpg failed");
            }
        }
    }

    async fn stop(&self, task_id: &str, grace: Option<Duration>) -> Result<(), RuntimeError> {
        let record = self.record(task_id)?;
        // A task still being launched gets a moment to record its pid.
        let _ = self.wait_until_state_known(&record).await;
        let status = self.status_of(&record)?;
        if status.state != RunState::Running {
            return Ok(());
        }
        let signal = match &record.spec.stop_signal {
            Some(s) => parse_signal(s)?,
            None => Signal::SIGTERM,
        };
        let grace = grace.unwrap_or(record.spec.stop_grace);
        self.signal_program(&record, signal);
        if self.wait_until_not_running(&record, grace).await {
            return Ok(());
        }
        self.signal_program(&record, Signal::SIGKILL);
        if self.wait_until_not_running(&record, KILL_WAIT).await {
            Ok(())
        } else {
            Err(RuntimeError::StopTimeout {
                task_id: task_id.to_owned(),
                waited: KILL_WAIT,
            })
        }
    }

    async fn wait_until_state_known(&self, record: &TaskRecord) -> bool {
        let deadline = tokio::time::Instant::now() + START_WAIT;
        loop {
            match self.status_of(record) {
                Ok(s) if s.state != RunState::Created => return true,
                Err(_) => return true,
                Ok(_) => {}
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn remove(&self, task_id: &str) -> Result<(), RuntimeError> {
        let record = self.record(task_id)?;
        self.stop(task_id, Some(Duration::ZERO)).await?;
        // Let the shim finish writing before its directory goes away.
        let dir = self.task_dir(task_id);
        let shim = ShimStatus::read(&dir)
            .ok()
            .flatten()
            .map(|s| (s.shim_pid, s.shim_start_ticks));
        let launch: Option<LaunchRecord> = read_json(&dir.join(LAUNCH_FILE)).unwrap_or(None);
        let shim = shim.or(launch.map(|l| (l.shim_pid, l.shim_start_ticks)));
        if let Some((pid, ticks)) = shim {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
            while procfs::is_same_process(pid, ticks) && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(POLL).await;
            }
            if procfs::is_same_process(pid, ticks) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
        if let Some(root) = &self.config.secrets_dir {
            crate::secrets::remove(root, task_id);
        }
        self.monitored
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(task_id);
        drop(record);
        fs::remove_dir_all(&dir)
            .map_err(|e| RuntimeError::io(format!("removing {}", dir.display()), e))
    }
}

fn read_shim_log(dir: &Path) -> String {
    let text = fs::read_to_string(dir.join(SHIM_LOG)).unwrap_or_default();
    let text = text.trim();
    if text.is_empty() {
        "no message".to_owned()
    } else {
        text.to_owned()
    }
}

impl Driver for ProcessDriver {
    fn kind(&self) -> DriverKind {
        DriverKind::Process
    }

    fn availability(&self) -> BoxFuture<'_, Availability> {
        Box::pin(async move {
            let shim = &self.inner.config.shim.program;
            match check_program(&shim.display().to_string()) {
                Ok(_) => Availability::Available {
                    version: format!("process (supervisor {})", shim.display()),
                },
                Err(e) => Availability::Unavailable {
                    reason: format!("supervisor unusable: {e}"),
                },
            }
        })
    }

    fn prepare<'a>(&'a self, spec: &'a TaskSpec) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(async move {
            spec.validate()?;
            check_program(&spec.image).map(drop)
        })
    }

    fn start<'a>(&'a self, spec: &'a TaskSpec) -> BoxFuture<'a, Result<TaskStatus, RuntimeError>> {
        Box::pin(self.inner.start(spec))
    }

    fn stop<'a>(
        &'a self,
        task_id: &'a str,
        grace: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.inner.stop(task_id, grace))
    }

    fn remove<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<(), RuntimeError>> {
        Box::pin(self.inner.remove(task_id))
    }

    fn inspect<'a>(&'a self, task_id: &'a str) -> BoxFuture<'a, Result<TaskStatus, RuntimeError>> {
        Box::pin(async move {
            let record = self.inner.record(task_id)?;
            self.inner.status_of(&record)
        })
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<TaskStatus>, RuntimeError>> {
        Box::pin(async move {
            self.inner.ensure_monitors();
            self.inner.list()
        })
    }

    fn events(&self) -> BoxStream<'static, Event> {
        self.inner.ensure_monitors();
        let rx = self.inner.events.subscribe();
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let first = match self.inner.list() {
            Ok(tasks) => Event::Resynced(tasks),
            Err(e) => Event::Disconnected {
                reason: e.to_string(),
            },
        };
        let rest = futures_util::stream::unfold((rx, weak), |(mut rx, weak)| async move {
            loop {
                match rx.recv().await {
                    Ok(ev) => return Some((ev, (rx, weak))),
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        let inner = weak.upgrade()?;
                        if let Ok(tasks) = inner.list() {
                            return Some((Event::Resynced(tasks), (rx, weak)));
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        futures_util::stream::iter([first]).chain(rest).boxed()
    }

    fn logs(
        &self,
        task_id: &str,
        options: LogOptions,
    ) -> BoxStream<'static, Result<LogChunk, RuntimeError>> {
        let record = match self.inner.record(task_id) {
            Ok(r) => r,
            Err(e) => return futures_util::stream::iter([Err(e)]).boxed(),
        };
        let dir = self.inner.task_dir(task_id);
        let (tx, rx) = mpsc::channel(64);
        let weak = Arc::downgrade(&self.inner);
        let finished = move || match weak.upgrade() {
            Some(inner) => inner
                .status_of(&record)
                .map(|s| !matches!(s.state, RunState::Running | RunState::Created))
                .unwrap_or(true),
            None => true,
        };
        tokio::spawn(logfile::stream_logs(
            dir.join(shim::STDOUT_FILE),
            dir.join(shim::STDERR_FILE),
            options,
            finished,
            tx,
        ));
        futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_signals() {
        assert_eq!(parse_signal("SIGTERM").expect("term"), Signal::SIGTERM);
        assert_eq!(parse_signal("int").expect("int"), Signal::SIGINT);
        assert_eq!(parse_signal("9").expect("9"), Signal::SIGKILL);
        assert!(parse_signal("SIGBOGUS").is_err());
        assert!(parse_signal("999").is_err());
    }

    #[test]
    fn rejects_bad_programs() {
        assert!(matches!(
            check_program("sh"),
            Err(RuntimeError::ProgramNotFound { .. })
        ));
        assert!(matches!(
            check_program("/nonexistent/x"),
            Err(RuntimeError::ProgramNotFound { .. })
        ));
        assert!(matches!(
            check_program("/"),
            Err(RuntimeError::ProgramNotFound { .. })
        ));
        assert!(matches!(
            check_program("/etc/passwd"),
            Err(RuntimeError::ProgramNotFound { .. })
        ));
        assert!(check_program("/bin/sh").is_ok());
    }

    /// Issue 15: the supervisor finds the task's record already written when it starts (a
    /// stand-in shim reports what it saw as its program's exit code).
    #[tokio::test]
    async fn the_record_exists_before_the_supervisor_starts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let script = r#"d="$2"; if [ -e "$d/task.json" ]; then c=0; else c=42; fi
printf '{"shim_pid":%s,"shim_start_ticks":0,"state":"exited","pid":null,"pid_start_ticks":null,"started_at":null,"finished_at":null,"exit_code":%s,"signal":null,"error":null}' $$ $c > "$d/status.json.tmp" && mv "$d/status.json.tmp" "$d/status.json""#;
        let shim = ShimCommand {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into(), "stand-in-shim".into()],
        };
        let driver =
            ProcessDriver::new(ProcessConfig::new(dir.path(), Scope::new("c1", "n1"), shim))
                .expect("driver");
        let status = driver
            .start(&TaskSpec::new("t1", "s1", "web", 1, "/bin/sleep"))
            .await
            .expect("start");
        assert_eq!(status.state, RunState::Exited);
        assert_eq!(
            status.exit_code,
            Some(0),
            "the supervisor ran before the record: {status:?}"
        );
    }

    /// Issue 15: the record is written before the supervisor is spawned, so a daemon killed
    /// in between leaves a task that is listed (starting, then dead if no supervisor ever
    /// recorded itself), never a program nobody lists.
    #[test]
    fn a_recorded_task_whose_supervisor_never_showed_is_starting_then_dead() {
        let dir = tempfile::tempdir().expect("tempdir");
        let scope = Scope::new("c1", "n1");
        let driver = ProcessDriver::new(ProcessConfig::new(
            dir.path(),
            scope.clone(),
            ShimCommand::standalone("/nonexistent/shim"),
        ))
        .expect("driver");
        let inner = &driver.inner;
        let mut record = TaskRecord {
            scope,
            spec: TaskSpec::new("t1", "s1", "web", 1, "/bin/sleep"),
            ports: Vec::new(),
            created_at: SystemTime::now(),
        };
        let task_dir = inner.task_dir("t1");
        fs::create_dir_all(&task_dir).expect("mkdir");
        write_json(&task_dir.join(RECORD_FILE), &record).expect("record");
        let listed = inner.list().expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].state, RunState::Created);
        record.created_at = SystemTime::now() - 2 * START_WAIT;
        write_json(&task_dir.join(RECORD_FILE), &record).expect("record");
        let listed = inner.list().expect("list");
        assert_eq!(listed[0].state, RunState::Dead);
        assert!(
            listed[0]
                .error
                .as_deref()
                .is_some_and(|e| e.contains("supervisor exited before starting")),
            "{listed:?}"
        );
    }
}
