//! The process driver's supervisor.
//!
//! The process driver does not run a task's program itself: it starts this shim (the `shoal`
//! binary's hidden `shim` subcommand, or any binary calling [`run`]) as
//! `SHIM... --task-dir DIR`, in its own process group, detached from the daemon's. The shim reads
//! `DIR/shim.json`, starts the program in the program's own process group, copies its stdout and
//! stderr into size-bounded `DIR/stdout.log` / `DIR/stderr.log`, waits for it and records its
//! exit code and finish time in `DIR/status.json` (written atomically). Because the shim, not the
//! daemon, is the program's parent, the exit status is recorded even when the daemon restarted
//! in between and merely adopted the task.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::logfile::RotatingWriter;
use crate::procfs;

/// File names inside a task directory.
pub(crate) const CONFIG_FILE: &str = "shim.json";
pub(crate) const STATUS_FILE: &str = "status.json";
pub(crate) const STDOUT_FILE: &str = "stdout.log";
pub(crate) const STDERR_FILE: &str = "stderr.log";

/// What the shim runs; written by the driver to `DIR/shim.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ShimConfig {
    pub(crate) program: PathBuf,
    pub(crate) args: Vec<String>,
    pub(crate) env: BTreeMap<String, String>,
    pub(crate) workdir: PathBuf,
    pub(crate) log_max_bytes: u64,
}

/// Lifecycle of the supervised program as recorded by the shim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ShimState {
    Running,
    Exited,
}

/// `DIR/status.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct ShimStatus {
    pub(crate) shim_pid: i32,
    pub(crate) shim_start_ticks: u64,
    pub(crate) state: ShimState,
    pub(crate) pid: Option<i32>,
    pub(crate) pid_start_ticks: Option<u64>,
    pub(crate) started_at: Option<SystemTime>,
    pub(crate) finished_at: Option<SystemTime>,
    pub(crate) exit_code: Option<i64>,
    pub(crate) signal: Option<i32>,
    pub(crate) error: Option<String>,
}

impl ShimStatus {
    /// Reads `DIR/status.json`; `Ok(None)` when it does not exist yet.
    pub(crate) fn read(task_dir: &Path) -> io::Result<Option<Self>> {
        match fs::read(task_dir.join(STATUS_FILE)) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Writes `DIR/status.json` atomically (temporary file + rename).
    pub(crate) fn write(&self, task_dir: &Path) -> io::Result<()> {
        write_atomic(
            &task_dir.join(STATUS_FILE),
            &serde_json::to_vec_pretty(self)?,
        )
    }
}

/// Writes `path` through a temporary file in the same directory and a rename.
pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    fs::write(&tmp, data)?;
    fs::File::open(&tmp)?.sync_all()?;
    fs::rename(&tmp, path)
}

/// Errors of the shim itself (before the program runs).
#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    /// Bad command line.
    #[error("usage: shim --task-dir DIR ({0})")]
    Usage(String),
    /// The task directory or its files could not be used.
    #[error("{action}: {source}")]
    Io {
        /// What the shim was doing.
        action: String,
        /// The error.
        #[source]
        source: io::Error,
    },
}

/// Entry point of the shim: `args` are the arguments after the program name (and after the
/// `shim` subcommand in the `shoal` binary), i.e. `--task-dir DIR`. Blocks until the program
/// exits and returns the shim's own exit code (0 once the program's status is recorded, 1 when
/// the shim could not do its job; the error is printed to stderr, which the driver points at
/// `DIR/shim.log`).
///
/// ```no_run
/// // In the node's main, before anything else (no tokio runtime needed):
/// let args: Vec<String> = std::env::args().collect();
/// if args.get(1).map(String::as_str) == Some("shim") {
///     std::process::exit(shoal_runtime::shim::run(args.into_iter().skip(2)));
/// }
/// ```
pub fn run<I, S>(args: I) -> i32
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    match parse_args(args).and_then(|dir| supervise(&dir)) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("shoal shim: {e}");
            1
        }
    }
}

fn parse_args<I, S>(args: I) -> Result<PathBuf, ShimError>
where
    I: IntoIterator<Item = S>,
    S: Into<OsString>,
{
    let mut args = args.into_iter().map(Into::into);
    let mut dir = None;
    while let Some(arg) = args.next() {
        if arg == "--task-dir" {
            let value = args
                .next()
                .ok_or_else(|| ShimError::Usage("--task-dir needs a value".into()))?;
            dir = Some(PathBuf::from(value));
        } else {
            return Err(ShimError::Usage(format!("unexpected argument {arg:?}")));
        }
    }
    dir.ok_or_else(|| ShimError::Usage("--task-dir is required".into()))
}

fn io_err(action: impl Into<String>) -> impl FnOnce(io::Error) -> ShimError {
    let action = action.into();
    move |source| ShimError::Io { action, source }
}

fn supervise(dir: &Path) -> Result<(), ShimError> {
    let config_path = dir.join(CONFIG_FILE);
    let raw =
        fs::read(&config_path).map_err(io_err(format!("reading {}", config_path.display())))?;
    let config: ShimConfig = serde_json::from_slice(&raw).map_err(|e| ShimError::Io {
        action: format!("parsing {}", config_path.display()),
        source: io::Error::new(io::ErrorKind::InvalidData, e),
    })?;
    let shim_pid = procfs::own_pid();
    let shim_start_ticks = procfs::start_ticks(shim_pid).unwrap_or(0);
    let mut status = ShimStatus {
        shim_pid,
        shim_start_ticks,
        state: ShimState::Running,
        pid: None,
        pid_start_ticks: None,
        started_at: None,
        finished_at: None,
        exit_code: None,
        signal: None,
        error: None,
    };
    let mut stdout_log = RotatingWriter::open(&dir.join(STDOUT_FILE), config.log_max_bytes)
        .map_err(io_err("opening stdout.log"))?;
    let mut stderr_log = RotatingWriter::open(&dir.join(STDERR_FILE), config.log_max_bytes)
        .map_err(io_err("opening stderr.log"))?;

    let mut command = Command::new(&config.program);
    command
        .args(&config.args)
        .env_clear()
        .envs(&config.env)
        .current_dir(&config.workdir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            // Record the failure as an exit, like a shell would (126/127).
            let code = if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            };
            status.state = ShimState::Exited;
            status.exit_code = Some(code);
            status.finished_at = Some(SystemTime::now());
            status.error = Some(format!("cannot execute {}: {e}", config.program.display()));
            status.write(dir).map_err(io_err("writing status.json"))?;
            return Ok(());
        }
    };
    let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
    status.pid = Some(pid);
    status.pid_start_ticks = procfs::stat(pid).map(|s| s.start_ticks);
    status.started_at = Some(SystemTime::now());
    status.write(dir).map_err(io_err("writing status.json"))?;

    let (done_tx, done_rx) = mpsc::channel::<()>();
    let mut pumps = 0;
    if let Some(out) = child.stdout.take() {
        pumps += 1;
        let tx = done_tx.clone();
        std::thread::spawn(move || {
            pump(out, &mut stdout_log);
            let _ = tx.send(());
        });
    }
    if let Some(err) = child.stderr.take() {
        pumps += 1;
        let tx = done_tx.clone();
        std::thread::spawn(move || {
            pump(err, &mut stderr_log);
            let _ = tx.send(());
        });
    }
    drop(done_tx);

    let waited = child.wait();
    // Let the pumps drain what the program wrote last; a descendant that keeps the pipes open
    // must not keep the status from being recorded, so wait at most two seconds.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    for _ in 0..pumps {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        if done_rx.recv_timeout(left).is_err() {
            break;
        }
    }
    status.state = ShimState::Exited;
    status.finished_at = Some(SystemTime::now());
    match waited {
        Ok(exit) => {
            if let Some(code) = exit.code() {
                status.exit_code = Some(i64::from(code));
            } else if let Some(sig) = exit.signal() {
                status.signal = Some(sig);
                status.exit_code = Some(128 + i64::from(sig));
            }
        }
        Err(e) => status.error = Some(format!("waiting for the program failed: {e}")),
    }
    status.write(dir).map_err(io_err("writing status.json"))?;
    Ok(())
}

fn pump(mut from: impl Read, to: &mut RotatingWriter) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if let Err(e) = to.write_stamped(&buf[..n]) {
                    eprintln!("shoal shim: writing log: {e}");
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_arguments() {
        assert!(matches!(
            parse_args(Vec::<String>::new()),
            Err(ShimError::Usage(_))
        ));
        assert!(matches!(
            parse_args(["--task-dir"]),
            Err(ShimError::Usage(_))
        ));
        assert!(matches!(parse_args(["--bogus"]), Err(ShimError::Usage(_))));
        assert_eq!(
            parse_args(["--task-dir", "/x"]).expect("ok"),
            PathBuf::from("/x")
        );
        assert_eq!(run(["--nope"]), 1);
    }

    #[test]
    fn supervises_a_program_and_records_its_exit() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ShimConfig {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "echo out; echo err >&2; exit 7".into()],
            env: BTreeMap::new(),
            workdir: dir.path().to_owned(),
            log_max_bytes: 1024,
        };
        fs::write(
            dir.path().join(CONFIG_FILE),
            serde_json::to_vec(&config).expect("json"),
        )
        .expect("write config");
        assert_eq!(
            run([
                OsString::from("--task-dir"),
                dir.path().as_os_str().to_owned()
            ]),
            0
        );
        let status = ShimStatus::read(dir.path()).expect("read").expect("status");
        assert_eq!(status.state, ShimState::Exited);
        assert_eq!(status.exit_code, Some(7));
        assert!(status.pid.is_some() && status.finished_at.is_some());
        let unstamped = |file| {
            let data = fs::read(dir.path().join(file)).expect("log");
            let (at, text) = crate::logfile::unstamp(&data);
            assert!(at.is_some(), "{file} has no stamp");
            String::from_utf8_lossy(text).into_owned()
        };
        assert_eq!(unstamped(STDOUT_FILE), "out\n");
        assert_eq!(unstamped(STDERR_FILE), "err\n");
    }

    #[test]
    fn records_a_missing_program_as_exit_127() {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = ShimConfig {
            program: "/nonexistent/program".into(),
            args: vec![],
            env: BTreeMap::new(),
            workdir: dir.path().to_owned(),
            log_max_bytes: 1024,
        };
        fs::write(
            dir.path().join(CONFIG_FILE),
            serde_json::to_vec(&config).expect("json"),
        )
        .expect("write config");
        assert_eq!(
            run([
                OsString::from("--task-dir"),
                dir.path().as_os_str().to_owned()
            ]),
            0
        );
        let status = ShimStatus::read(dir.path()).expect("read").expect("status");
        assert_eq!(status.exit_code, Some(127));
        assert!(
            status
                .error
                .expect("error")
                .contains("/nonexistent/program")
        );
    }
}
