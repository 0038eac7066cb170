//! Support for cluster tests: start real `shoal` daemons in temp dirs on their own
//! loopback addresses, drive them with the real CLI, and always clean up.
//!
//! Each test owns a block of loopback addresses (`127.0.N.x`) so tests never collide.
//!
//! Cleaning up. Daemons, the process driver's shims and their tasks each lead a process
//! group of their own (tasks outlive their daemon by design: a restarted daemon adopts
//! them), so killing one never reaches the others. Hence:
//! - dropping a [`Daemon`] (also while a failing test unwinds) `kill -9`s its daemon,
//!   then every shim and task of its state dir (with their process groups), then the
//!   Docker containers labelled with its node ID;
//! - every test process has a watchdog (`reaper`): a small `sh` in a process group of
//!   its own that does the same for every daemon still registered when the test process
//!   disappears (nextest's timeout SIGTERM/SIGKILL, a SIGKILL, an abort);
//! - every command the helpers run has a deadline ([`output_within`]): a hung call is
//!   killed and fails the test with its command line.
//!
//! Under `scripts/test.sh` (`SHOAL_TEST_LEDGER` set), each daemon's state dir and node ID
//! are appended to that file, so the script can check afterwards that nothing the suite
//! started remains.

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use serde_json::Value;

pub mod chaos;
pub mod rogue;

/// The `shoal` binary under test: `SHOAL_BIN` (set by scripts/test.sh), else the
/// workspace's debug build.
pub fn shoal_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SHOAL_BIN") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/shoal")
}

/// Whether Docker is required (CI): tests that need it must fail, not skip.
pub fn docker_required() -> bool {
    std::env::var("SHOAL_REQUIRE_DOCKER").is_ok_and(|v| v == "1")
}

/// How often [`poll_until`] (and a [`Poll`] without [`Poll::every`]) looks.
pub const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A bounded poll: what is awaited, how long at most, how often to look. Every wait for a
/// condition in the cluster tests is one of these: polling with a deadline, never a bare
/// sleep.
///
/// - [`Poll::until`] waits for a value (`check` returns `Ok(Some(value))`);
/// - [`Poll::holds`] checks that a condition keeps holding for the whole period.
///
/// [`poll_until`] is the short form of the first with the default interval.
///
/// ```
/// use std::time::Duration;
/// use shoal_tests::{Poll, poll_until};
///
/// let mut n = 0;
/// let three = poll_until("n to reach 3", Duration::from_secs(5), || {
///     n += 1;
///     Ok((n >= 3).then_some(n))
/// })?;
/// assert_eq!(three, 3);
///
/// // An error is an observation, not the end: the wait goes on, and the message of a
/// // wait that timed out says what was awaited and what was seen last.
/// let err = Poll::new("a value that never comes", Duration::from_millis(100))
///     .every(Duration::from_millis(10))
///     .until(|| -> anyhow::Result<Option<()>> { anyhow::bail!("saw 41") })
///     .unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "timed out after 100ms waiting for a value that never comes: saw 41"
/// );
///
/// // A condition that must keep holding fails at its first miss.
/// let mut left = 3;
/// let err = Poll::new("left above 0", Duration::from_secs(5))
///     .every(Duration::ZERO)
///     .holds(|| {
///         left -= 1;
///         anyhow::ensure!(left > 0, "left is {left}");
///         Ok(())
///     })
///     .unwrap_err();
/// assert!(format!("{err:#}").ends_with("left is 0"), "{err:#}");
/// # Ok::<(), anyhow::Error>(())
/// ```
#[derive(Debug, Clone, Copy)]
#[must_use = "a Poll does nothing until `until` or `holds` is called"]
pub struct Poll<'a> {
    what: &'a str,
    timeout: Duration,
    every: Duration,
    at_most: Duration,
}

impl<'a> Poll<'a> {
    /// A poll for `what` (said in the failure message: "waiting for {what}", or "{what}
    /// stopped holding") that lasts `timeout`, looking every [`POLL_INTERVAL`].
    pub fn new(what: &'a str, timeout: Duration) -> Poll<'a> {
        Poll {
            what,
            timeout,
            every: POLL_INTERVAL,
            at_most: POLL_INTERVAL,
        }
    }

    /// Looks every `interval` instead (`Duration::ZERO`: back to back), without backoff
    /// (call [`Poll::backoff_to`] after this).
    pub fn every(self, interval: Duration) -> Poll<'a> {
        Poll {
            every: interval,
            at_most: interval,
            ..self
        }
    }

    /// Doubles the pause after each look, from the interval up to `max`: quick to see a
    /// fast event, cheap while waiting for a slow one.
    pub fn backoff_to(self, max: Duration) -> Poll<'a> {
        Poll {
            at_most: max.max(self.every),
            ..self
        }
    }

    /// Calls `check` until it returns `Ok(Some(value))` and returns that value. `Ok(None)`
    /// means "not yet"; so does an error, which is also what was seen (a CLI call refused
    /// during an election, a count that is still wrong: `bail!` with what you saw). The
    /// first look is at once and one is made at or past the deadline; when that one does
    /// not succeed either, fails with "timed out after {timeout} waiting for {what}: "
    /// and the last error (or "condition not met").
    pub fn until<T>(self, mut check: impl FnMut() -> Result<Option<T>>) -> Result<T> {
        let deadline = Instant::now() + self.timeout;
        let mut pause = self.every;
        loop {
            let last = match check() {
                Ok(Some(v)) => return Ok(v),
                Ok(None) => "condition not met".to_string(),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {:?} waiting for {}: {last}",
                    self.timeout,
                    self.what
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(self.at_most);
        }
    }

    /// Checks that `check` keeps passing for the whole timeout: the first look at once,
    /// the last at or past the end. Fails at the first error, with it as the cause of
    /// "{what} stopped holding after {elapsed} of {timeout}".
    pub fn holds(self, mut check: impl FnMut() -> Result<()>) -> Result<()> {
        let start = Instant::now();
        let end = start + self.timeout;
        let mut pause = self.every;
        loop {
            check().with_context(|| {
                format!(
                    "{} stopped holding after {:?} of {:?}",
                    self.what,
                    start.elapsed(),
                    self.timeout
                )
            })?;
            if Instant::now() >= end {
                return Ok(());
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(self.at_most);
        }
    }
}

/// Polls `check` every [`POLL_INTERVAL`] until it returns `Ok(Some(value))`, for at most
/// `timeout`; fails with `what` and the last observation. See [`Poll::until`].
pub fn poll_until<T>(
    what: &str,
    timeout: Duration,
    check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    Poll::new(what, timeout).until(check)
}

/// How long one CLI call ([`Daemon::cli`]) may take before it is killed and fails.
pub const CLI_DEADLINE: Duration = Duration::from_secs(60);

/// How long [`DaemonProcess::wait_with_output`] waits for a daemon to exit by itself.
pub const DAEMON_EXIT_DEADLINE: Duration = Duration::from_secs(30);

/// Deadline of each `docker` call the helpers make.
const DOCKER_DEADLINE: Duration = Duration::from_secs(30);

/// The command line of `cmd`, for messages.
fn describe(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Reads `r` to its end on a thread of its own.
fn read_to_end_in_thread(mut r: impl std::io::Read + Send + 'static) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        let _ = tx.send(buf);
    });
    rx
}

/// [`Command::output`] with a deadline: runs `cmd` with stdout and stderr captured (stdin
/// as the caller set it); one that has not ended within `deadline` is killed (SIGKILL)
/// and fails with its command line.
pub fn output_within(cmd: &mut Command, deadline: Duration) -> Result<Output> {
    let what = describe(cmd);
    let end = Instant::now() + deadline;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run `{what}`"))?;
    let stdout = child.stdout.take().map(read_to_end_in_thread);
    let stderr = child.stderr.take().map(read_to_end_in_thread);
    // The child stays ours (unreaped) until `try_wait` sees it exit, so killing it on
    // time-out can never hit a reused pid.
    let exited = Poll::new(&what, deadline)
        .every(Duration::from_millis(1))
        .backoff_to(Duration::from_millis(20))
        .until(|| Ok(child.try_wait().transpose()));
    let status = match exited {
        Ok(status) => status?,
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            bail!("`{what}` did not finish within {deadline:?}: killed it");
        }
    };
    // A grandchild may hold the pipes open: do not wait for them past the deadline.
    let collect = |rx: Option<mpsc::Receiver<Vec<u8>>>| -> Result<Vec<u8>> {
        let Some(rx) = rx else {
            return Ok(Vec::new());
        };
        let left = end
            .saturating_duration_since(Instant::now())
            .max(Duration::from_secs(1));
        rx.recv_timeout(left).map_err(|_| {
            anyhow::anyhow!(
                "`{what}` exited ({status}) but its output stayed open past the deadline"
            )
        })
    };
    let stdout = collect(stdout)?;
    let stderr = collect(stderr)?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Appends `line` to the file named by `SHOAL_TEST_LEDGER` (set by `scripts/test.sh`),
/// which lists the state dirs (`dir PATH`) and node IDs (`node ID`) the suite used.
fn ledger(line: &str) {
    let Some(path) = std::env::var_os("SHOAL_TEST_LEDGER") else {
        return;
    };
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path);
    if let Ok(mut file) = file {
        // One short write per line: appends from concurrent tests do not interleave.
        let _ = file.write_all(format!("{line}\n").as_bytes());
    }
}

/// The watchdog of this test process (see [`reaper`]). It reads `dir ID PATH`,
/// `node ID NODE_ID` and `done ID` lines; at end of input, i.e. once the test process is
/// gone however it ended, it `kill -9`s every process that names a registered state dir
/// (daemons: `--state-dir DIR`; shims: `--task-dir DIR/tasks/…`; tasks and their
/// children: `HOME=DIR/tasks/…`) with its process group, and removes the registered
/// nodes' containers. Patterns go to `grep` on its stdin, so no `grep` matches itself.
const REAPER_SCRIPT: &str = r#"
dirs=
nodes=
while read -r op id arg; do
    case $op in
    dir) dirs="$dirs
$id $arg" ;;
    node) nodes="$nodes
$id $arg" ;;
    done)
        dirs=$(printf '%s\n' "$dirs" | grep -v "^$id ")
        nodes=$(printf '%s\n' "$nodes" | grep -v "^$id ") ;;
    esac
done
ds=$(printf '%s\n' "$dirs" | awk 'NF == 2 { print $2 }' | sort -u)
ns=$(printf '%s\n' "$nodes" | awk 'NF == 2 { print $2 }' | sort -u)
[ -n "$ds$ns" ] || exit 0
n=0
while [ -n "$ds" ] && [ "$n" -lt 25 ]; do
    found=
    for f in $(printf '%s\n' $ds | grep -laF -f - /proc/[0-9]*/cmdline /proc/[0-9]*/environ 2>/dev/null); do
        p=${f#/proc/}
        p=${p%%/*}
        [ "$p" = "$$" ] && continue
        kill -9 -"$p" "$p" 2>/dev/null
        found=1
    done
    [ -n "$found" ] || break
    n=$((n + 1))
    sleep 0.2
done
for node in $ns; do
    ids=$(timeout 30 docker ps -aq --filter "label=shoal.node=$node" 2>/dev/null)
    [ -z "$ids" ] || timeout 60 docker rm -f $ids >/dev/null 2>&1
done
"#;

/// Sends `line` to this test process's watchdog, starting it on first use: an `sh` in a
/// process group of its own (so nextest's signals to the test's group do not reach it)
/// whose stdin is a pipe only this process holds (close-on-exec, so no child inherits
/// it). When the test process dies, even by SIGKILL, the pipe closes and the watchdog
/// kills what is still registered.
fn reaper(line: &str) {
    static REAPER: OnceLock<Option<Mutex<ChildStdin>>> = OnceLock::new();
    let stdin = REAPER.get_or_init(|| {
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(REAPER_SCRIPT)
            .arg("shoal-test-reaper")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        match cmd.spawn() {
            // The child is never waited for: it outlives this process by design.
            Ok(mut child) => child.stdin.take().map(Mutex::new),
            Err(e) => {
                eprintln!("warning: cannot start the test reaper: {e}");
                None
            }
        }
    });
    if let Some(stdin) = stdin {
        let mut stdin = stdin.lock().unwrap_or_else(|e| e.into_inner());
        let _ = stdin.write_all(format!("{line}\n").as_bytes());
        let _ = stdin.flush();
    }
}

/// `/proc/PID/<file>` split at NUL bytes.
fn proc_strings(pid: i32, file: &str) -> Vec<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(<[u8]>::to_vec)
        .collect()
}

/// Whether `text` names `dir` or a path under it.
fn mentions(text: &[u8], dir: &[u8]) -> bool {
    !dir.is_empty()
        && text
            .windows(dir.len())
            .enumerate()
            .any(|(i, w)| w == dir && matches!(text.get(i + dir.len()), None | Some(b'/')))
}

/// The process group of `pid`, from `/proc/PID/stat`.
fn pgid_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command name (which may hold spaces): state, ppid, pgrp.
    stat[stat.rfind(')')? + 1..]
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()
}

/// Processes that belong to `state_dir`: `(daemons, others)`. A daemon runs with
/// `--state-dir DIR`; the others are the process driver's shims (`--task-dir
/// DIR/tasks/…`), their tasks and the tasks' children and health checks (`HOME` or the
/// working directory under `DIR/tasks/`).
fn processes_of(state_dir: &Path) -> (Vec<i32>, Vec<i32>) {
    let dir = state_dir.as_os_str().as_bytes();
    let me = i32::try_from(std::process::id()).unwrap_or(0);
    let (mut daemons, mut others) = (Vec::new(), Vec::new());
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return (daemons, others);
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if pid == me {
            continue;
        }
        let args = proc_strings(pid, "cmdline");
        if args.iter().any(|a| a == b"daemon") && args.iter().any(|a| a == dir) {
            daemons.push(pid);
            continue;
        }
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
        if args.iter().any(|a| mentions(a, dir))
            || mentions(cwd.as_os_str().as_bytes(), dir)
            || proc_strings(pid, "environ")
                .iter()
                .any(|e| e.starts_with(b"HOME=") && mentions(e, dir))
        {
            others.push(pid);
        }
    }
    (daemons, others)
}

/// `kill -9` `pid`, and its process group when it leads one (never this process's own).
fn kill_with_group(pid: i32) {
    let own_group = nix::unistd::getpgrp().as_raw();
    if pgid_of(pid) == Some(pid) && pid != own_group {
        let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
}

/// The node ID of the key in `state_dir`, once a daemon created it.
fn node_id_of(state_dir: &Path) -> Option<String> {
    let key = state_dir.join("node.key");
    key.exists()
        .then(|| shoal::pki::NodeKey::load(&key).ok())
        .flatten()
        .map(|k| k.node_id().to_string())
}

/// `docker rm -f` every container (running or not) that matches `filter`, e.g.
/// `label=shoal.node=ID`. Best effort, each call with a deadline; quiet without Docker.
fn remove_containers(filter: &str) {
    let mut ps = Command::new("docker");
    ps.args(["ps", "-aq", "--filter", filter])
        .stdin(Stdio::null());
    let Ok(out) = output_within(&mut ps, DOCKER_DEADLINE) else {
        return;
    };
    let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect();
    if ids.is_empty() {
        return;
    }
    let mut rm = Command::new("docker");
    rm.args(["rm", "-f"]).args(&ids).stdin(Stdio::null());
    match output_within(&mut rm, DOCKER_DEADLINE) {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "warning: cannot remove containers {filter}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("warning: cannot remove containers {filter}: {e:#}"),
    }
}

/// Stops everything that `state_dir`'s daemons left behind, unless a daemon still runs
/// on it (then its owner's drop does this): every shim and task with its process group,
/// then the containers labelled with the state dir's node ID.
fn clean_up_state_dir(state_dir: &Path) {
    let what = format!("the processes of {} to die of SIGKILL", state_dir.display());
    let cleared = Poll::new(&what, Duration::from_secs(5))
        .every(Duration::from_millis(20))
        .until(|| {
            let (daemons, others) = processes_of(state_dir);
            if !daemons.is_empty() {
                return Ok(Some(false));
            }
            if others.is_empty() {
                return Ok(Some(true));
            }
            for pid in &others {
                kill_with_group(*pid);
            }
            bail!("still running: {others:?}")
        });
    match cleared {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => eprintln!("warning: {e:#}"),
    }
    if let Some(node) = node_id_of(state_dir) {
        ledger(&format!("node {node}"));
        remove_containers(&format!("label=shoal.node={node}"));
    }
}

/// A `shoal daemon` process with its own state dir, socket and address.
///
/// Dropping it (also while a failing test unwinds) kills the daemon, then every
/// process-driver shim and task of its state dir and its node's Docker containers.
pub struct Daemon {
    /// Name (also the hostname it reports).
    pub name: String,
    /// QUIC listen address.
    pub addr: SocketAddr,
    /// State directory.
    pub state_dir: PathBuf,
    /// Control socket.
    pub socket: PathBuf,
    /// Extra daemon flags.
    pub extra: Vec<String>,
    /// Extra environment variables of every start (e.g. libfaketime's).
    pub env: Vec<(String, String)>,
    child: Option<DaemonProcess>,
    log: PathBuf,
    /// This value's registration with the test process's watchdog.
    watch_id: u64,
    _dir: tempfile::TempDir,
}

/// A `shoal daemon` started by [`Daemon::spawn`]: dropping it `kill -9`s its process
/// group and reaps it.
pub struct DaemonProcess {
    child: Child,
    log: PathBuf,
}

impl DaemonProcess {
    /// The daemon's pid (also its process group).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status, if the daemon has exited.
    pub fn try_wait(&mut self) -> std::io::Result<Option<ExitStatus>> {
        self.child.try_wait()
    }

    /// Waits up to `timeout` for the daemon to exit by itself.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let child = &mut self.child;
        let exited = Poll::new("the daemon to exit", timeout)
            .every(Duration::from_millis(20))
            .until(|| Ok(child.try_wait().transpose()));
        // The check never fails: an error is the timeout.
        match exited {
            Ok(status) => Ok(Some(status?)),
            Err(_) => Ok(None),
        }
    }

    /// Waits up to `timeout` until the daemon's API answers on `socket`; fails (with the
    /// daemon's log) when it does not, e.g. because the daemon exited.
    pub fn wait_for_api(&mut self, what: &str, socket: &Path, timeout: Duration) -> Result<()> {
        poll_until(what, timeout, || {
            if let Some(status) = self.child.try_wait().ok().flatten() {
                bail!("daemon exited with {status}: {}", log_tail(&self.log));
            }
            Ok(std::os::unix::net::UnixStream::connect(socket).ok())
        })
        .map(drop)
    }

    /// Waits for a daemon that must exit by itself (a refused start, say), up to
    /// [`DAEMON_EXIT_DEADLINE`]: one still running then is killed and the call fails with
    /// its log. Its output is in its log, so `stdout` and `stderr` are empty.
    pub fn wait_with_output(mut self) -> Result<Output> {
        match self.wait_timeout(DAEMON_EXIT_DEADLINE)? {
            Some(status) => Ok(Output {
                status,
                stdout: Vec::new(),
                stderr: Vec::new(),
            }),
            None => {
                let log = log_tail(&self.log);
                drop(self);
                bail!(
                    "the daemon did not exit within {DAEMON_EXIT_DEADLINE:?}: killed it\n--- daemon log ---\n{log}"
                )
            }
        }
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        // Only while not reaped: a reaped pid may belong to someone else by now.
        if !matches!(self.child.try_wait(), Ok(Some(_))) {
            if let Ok(pid) = i32::try_from(self.child.id()) {
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        // A daemon run under libfaketime (`Daemon::fake_clock`) that was killed never ran
        // the library's exit hook: its shared memory and semaphore stay in /dev/shm.
        let pid = self.child.id();
        let _ = std::fs::remove_file(format!("/dev/shm/faketime_shm_{pid}"));
        let _ = std::fs::remove_file(format!("/dev/shm/sem.faketime_sem_{pid}"));
    }
}

/// The last 30 lines of the log at `path`.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

impl Daemon {
    /// Prepares (does not start) a daemon called `name` on `addr`.
    pub fn new(name: &str, addr: &str) -> Result<Daemon> {
        static NEXT_WATCH_ID: AtomicU64 = AtomicU64::new(1);
        let dir = tempfile::Builder::new()
            .prefix("shoal-t-")
            .tempdir_in("/tmp")?;
        Ok(Daemon {
            name: name.into(),
            addr: addr.parse().context("bad test address")?,
            state_dir: dir.path().join("state"),
            socket: dir.path().join("s.sock"),
            extra: Vec::new(),
            env: Vec::new(),
            child: None,
            log: dir.path().join("daemon.log"),
            watch_id: NEXT_WATCH_ID.fetch_add(1, Ordering::Relaxed),
            _dir: dir,
        })
    }

    /// Starts the daemon and waits until its API answers.
    pub fn start(&mut self) -> Result<()> {
        let child = self.child.insert(self.spawn()?);
        child.wait_for_api("the daemon's API", &self.socket, Duration::from_secs(20))?;
        if let Some(node) = node_id_of(&self.state_dir) {
            reaper(&format!("node {} {node}", self.watch_id));
            ledger(&format!("node {node}"));
        }
        Ok(())
    }

    /// Spawns the daemon process without waiting; the caller owns it (dropping it kills
    /// the daemon). This value's drop still cleans up after it (shims, tasks,
    /// containers), and the test process's watchdog kills it if the test process dies.
    pub fn spawn(&self) -> Result<DaemonProcess> {
        self.spawn_with_env(&[])
    }

    /// The directory this value owns (the state dir, the socket and the log are in it).
    pub fn dir(&self) -> &Path {
        self._dir.path()
    }

    /// Runs this daemon (from its next start on) under libfaketime `lib`: its wall clock
    /// offset by what [`Daemon::set_clock`] last wrote (0 to begin with), its monotonic
    /// clock untouched — as a real clock step leaves it.
    pub fn fake_clock(&mut self, lib: &Path) -> Result<()> {
        self.set_clock(0)?;
        let file = self.dir().join("faketime");
        self.env
            .retain(|(k, _)| !k.starts_with("FAKETIME") && k != "LD_PRELOAD");
        self.env.extend([
            ("LD_PRELOAD".into(), lib.display().to_string()),
            ("FAKETIME_TIMESTAMP_FILE".into(), file.display().to_string()),
            // Re-read every second, so a step lands within one.
            ("FAKETIME_CACHE_DURATION".into(), "1".into()),
            ("DONT_FAKE_MONOTONIC".into(), "1".into()),
        ]);
        Ok(())
    }

    /// Steps the wall clock of a daemon run under [`Daemon::fake_clock`] to `secs` seconds
    /// off the real one (it takes effect within a second).
    pub fn set_clock(&self, secs: i64) -> Result<()> {
        let file = self.dir().join("faketime");
        // Written aside and renamed, so the library never reads half a line.
        let tmp = file.with_extension("new");
        std::fs::write(&tmp, format!("{secs:+}\n"))?;
        std::fs::rename(&tmp, &file).with_context(|| format!("cannot set {}", file.display()))
    }

    /// [`Daemon::spawn`] with extra environment variables (e.g. `DOCKER_HOST`).
    pub fn spawn_with_env(&self, env: &[(&str, &str)]) -> Result<DaemonProcess> {
        reaper(&format!(
            "dir {} {}",
            self.watch_id,
            self.state_dir.display()
        ));
        ledger(&format!("dir {}", self.state_dir.display()));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut cmd = Command::new(shoal_bin());
        cmd.arg("daemon")
            .arg("--state-dir")
            .arg(&self.state_dir)
            .arg("--socket")
            .arg(&self.socket)
            .arg("--listen-addr")
            .arg(self.addr.to_string())
            .arg("--publish-addr")
            .arg(self.addr.ip().to_string())
            .arg("--hostname")
            .arg(&self.name)
            .args(&self.extra)
            // Service discovery is on by default, on the engine's one `shoal` network: the
            // daemons of the tests share one engine, so only a test that gives a daemon a
            // network of its own (`--network`, tests/tests/discovery.rs) runs it.
            .args((!self.extra.iter().any(|a| a == "--network")).then_some("--no-discovery"))
            .env(
                "RUST_LOG",
                std::env::var("SHOAL_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", shoal_bin().display()))?;
        Ok(DaemonProcess {
            child,
            log: self.log.clone(),
        })
    }

    /// `kill -9` the daemon's process group and reap it. Its process-driver tasks keep
    /// running, as after a real crash (a restart adopts them).
    pub fn kill9(&mut self) {
        drop(self.child.take());
    }

    /// SIGTERM and wait for a clean exit (up to 10 s, then SIGKILL).
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("daemon not running")
        };
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if let Ok(pid) = i32::try_from(child.id()) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
        }
        match child.wait_timeout(Duration::from_secs(10))? {
            Some(status) => Ok(status),
            // Dropping the child kills its process group.
            None => bail!("daemon did not stop within 10 s of SIGTERM"),
        }
    }

    /// The last lines of the daemon's log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(&self.log)
    }

    /// The daemon's whole log (every start of it), empty when there is none.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Runs `shoal -H unix://SOCKET args...`; a call that has not ended within
    /// [`CLI_DEADLINE`] is killed and fails.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        self.cli_within(args, CLI_DEADLINE)
    }

    /// [`Daemon::cli`] with another deadline.
    pub fn cli_within(&self, args: &[&str], deadline: Duration) -> Result<Output> {
        let mut cmd = Command::new(shoal_bin());
        cmd.arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null());
        output_within(&mut cmd, deadline)
            .with_context(|| format!("--- daemon log of {} ---\n{}", self.name, self.log_tail()))
    }

    /// Runs a command that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args)?;
        if !out.status.success() {
            bail!(
                "`shoal {}` failed ({}): {}\n--- daemon log ---\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim(),
                self.log_tail()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Runs a command that must fail; returns its stderr.
    pub fn fails(&self, args: &[&str]) -> Result<String> {
        let out = self.cli(args)?;
        if out.status.success() {
            bail!(
                "`shoal {}` succeeded but should have failed",
                args.join(" ")
            );
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// Runs a command with `--format json` appended and parses its output.
    pub fn json(&self, args: &[&str]) -> Result<Value> {
        let mut a = args.to_vec();
        a.extend(["--format", "json"]);
        let out = self.ok(&a)?;
        serde_json::from_str(&out)
            .with_context(|| format!("bad JSON from `shoal {}`: {out}", a.join(" ")))
    }

    /// `shoal <args>` of one `inspect` (a JSON array, as `docker inspect`): its one element.
    pub fn inspect(&self, args: &[&str]) -> Result<Value> {
        let v = self.json(args)?;
        match v.as_array().map(Vec::as_slice) {
            Some([one]) => Ok(one.clone()),
            _ => anyhow::bail!("`shoal {}` is not a one-element array: {v}", args.join(" ")),
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
        clean_up_state_dir(&self.state_dir);
        reaper(&format!("done {}", self.watch_id));
    }
}

/// The local test image (built by `scripts/test-image.sh`).
pub const TEST_IMAGE: &str = "shoal-test/busybox:latest";

/// Whether Docker and the test image are there. Without them a test skips (returns
/// `Ok(false)` after a note), or fails under `SHOAL_REQUIRE_DOCKER=1`.
pub fn docker_ready() -> Result<bool> {
    let mut cmd = Command::new("docker");
    cmd.args(["image", "inspect", TEST_IMAGE])
        .stdin(Stdio::null());
    let ok = output_within(&mut cmd, DOCKER_DEADLINE).is_ok_and(|o| o.status.success());
    if !ok && docker_required() {
        bail!(
            "Docker or the image {TEST_IMAGE} is missing and SHOAL_REQUIRE_DOCKER=1: run scripts/test-image.sh"
        );
    }
    if !ok {
        eprintln!("skipping: Docker or {TEST_IMAGE} is not available");
    }
    Ok(ok)
}

/// Removes every container of a cluster when dropped, even when the test fails.
pub struct ClusterContainers(pub String);

impl Drop for ClusterContainers {
    fn drop(&mut self) {
        remove_containers(&format!("label=shoal.cluster={}", self.0));
    }
}

/// Removes the nodes' secrets directories on drop (`/dev/shm/shoal-secrets-NODE`): a test
/// that fails while tasks hold secrets leaves none of their bytes behind. Declare it after
/// the daemons (dropped before them is fine: a killed daemon writes nothing more there).
pub struct SecretDirs(pub Vec<PathBuf>);

impl SecretDirs {
    /// The secrets directories of `daemons` (by node ID).
    pub fn of<'a>(daemons: impl IntoIterator<Item = &'a Daemon>) -> Result<SecretDirs> {
        Ok(SecretDirs(
            daemons
                .into_iter()
                .map(|d| {
                    Ok(std::path::Path::new("/dev/shm")
                        .join(format!("shoal-secrets-{}", node_id(d)?)))
                })
                .collect::<Result<_>>()?,
        ))
    }
}

impl Drop for SecretDirs {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Starts `managers` managers and `workers` workers named `{prefix}m{i}` and
/// `{prefix}w{i}` on `127.0.{block}.x` (managers first), makes the first manager
/// `init` the cluster and the others join it by its address. Joining as a manager
/// answers once the node votes, so the quorum is complete on return.
pub fn start_cluster(
    prefix: &str,
    block: u8,
    managers: usize,
    workers: usize,
) -> Result<(Vec<Daemon>, Vec<Daemon>)> {
    let mut ms: Vec<Daemon> = (1..=managers)
        .map(|i| Daemon::new(&format!("{prefix}m{i}"), &format!("127.0.{block}.{i}:4747")))
        .collect::<Result<_>>()?;
    let mut ws: Vec<Daemon> = (1..=workers)
        .map(|i| {
            Daemon::new(
                &format!("{prefix}w{i}"),
                &format!("127.0.{block}.{}:4747", managers + i),
            )
        })
        .collect::<Result<_>>()?;
    for d in ms.iter_mut().chain(ws.iter_mut()) {
        d.start()?;
    }
    ms[0].ok(&["init"])?;
    let first = ms[0].addr.to_string();
    let mt = ms[0]
        .ok(&["join-token", "-q", "manager"])?
        .trim()
        .to_string();
    let wt = ms[0]
        .ok(&["join-token", "-q", "worker"])?
        .trim()
        .to_string();
    for d in &ms[1..] {
        let out = d.ok(&["join", "--token", &mt, &first])?;
        if !out.contains("joined the cluster as a manager") {
            bail!("{} did not join as a manager: {out}", d.name);
        }
    }
    for d in &ws {
        d.ok(&["join", "--token", &wt, &first])?;
    }
    Ok((ms, ws))
}

/// The status (`ready`, `down`, …) of the node called `hostname`, as `m`'s `node ls` shows
/// it; `None` when it is not in the table.
pub fn node_status(m: &Daemon, hostname: &str) -> Result<Option<String>> {
    Ok(m.json(&["node", "ls"])?
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["hostname"] == hostname)
        .and_then(|n| n["status"].as_str().map(str::to_string)))
}

/// IDs of the running containers of `cluster` that also carry `label` (`KEY=VALUE`, e.g.
/// `shoal.node=<id>` or `shoal.task=<id>`).
pub fn running_containers(cluster: &str, label: &str) -> Result<Vec<String>> {
    let out = output_within(
        Command::new("docker").args([
            "ps",
            "-q",
            "--filter",
            &format!("label=shoal.cluster={cluster}"),
            "--filter",
            &format!("label={label}"),
        ]),
        Duration::from_secs(30),
    )?;
    if !out.status.success() {
        bail!("docker ps failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect())
}

/// Running containers of one task of `cluster` (by its `shoal.task` label).
pub fn task_containers(cluster: &str, task: &str) -> Result<Vec<String>> {
    running_containers(cluster, &format!("shoal.task={task}"))
}

/// The rows of `service ps SERVICE` on `d`.
pub fn tasks(d: &Daemon, service: &str) -> Result<Vec<Value>> {
    Ok(d.json(&["service", "ps", service])?
        .as_array()
        .cloned()
        .unwrap_or_default())
}

/// The current join token for `role` (`worker` or `manager`), from `m`.
pub fn join_token(m: &Daemon, role: &str) -> Result<String> {
    Ok(m.ok(&["join-token", "-q", role])?.trim().to_string())
}

/// Runs a command on `d` that must fail and must end within `deadline` (a hung command is
/// killed and fails the test); returns its stderr and how long it took.
pub fn fails_within(d: &Daemon, args: &[&str], deadline: Duration) -> Result<(String, Duration)> {
    let start = Instant::now();
    let out = d.cli_within(args, deadline)?;
    let took = start.elapsed();
    anyhow::ensure!(
        !out.status.success(),
        "`shoal {}` on {} succeeded but should have failed",
        args.join(" "),
        d.name
    );
    Ok((String::from_utf8_lossy(&out.stderr).into_owned(), took))
}

/// Every pid in `/proc`.
pub fn all_pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse().ok())
        .collect()
}

/// The command line of `pid` (its arguments, empty ones left out), while it exists.
pub fn cmdline(pid: i32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// The start time (clock ticks after boot) of a live, non-zombie process: with the pid,
/// it names one process, never a later one that reuses the pid.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command name (which may hold spaces): state, …, starttime
    // (field 22).
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    if state == 'Z' || state == 'X' {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// A tiny deterministic generator (xorshift64*), so a failing seed replays the same
/// schedule of kills.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_within_kills_a_command_past_its_deadline() {
        let start = Instant::now();
        let err = output_within(Command::new("sleep").arg("30"), Duration::from_millis(300))
            .expect_err("sleep 30 must be killed");
        assert!(err.to_string().contains("did not finish within"), "{err}");
        assert!(start.elapsed() < Duration::from_secs(5));

        let out = output_within(
            Command::new("sh").args(["-c", "echo out; echo err >&2; exit 3"]),
            Duration::from_secs(20),
        )
        .expect("sh runs");
        assert_eq!(out.status.code(), Some(3));
        assert_eq!(out.stdout, b"out\n");
        assert_eq!(out.stderr, b"err\n");
    }

    #[test]
    fn poll_until_fails_after_its_timeout_with_the_last_observation() {
        let start = Instant::now();
        let mut looks = 0;
        let err = Poll::new("a count that never comes", Duration::from_millis(200))
            .every(Duration::from_millis(10))
            .until(|| -> Result<Option<()>> {
                looks += 1;
                bail!("seen {looks}")
            })
            .expect_err("the condition never comes");
        assert!(start.elapsed() >= Duration::from_millis(200));
        assert!(start.elapsed() < Duration::from_secs(5));
        assert_eq!(
            err.to_string(),
            format!("timed out after 200ms waiting for a count that never comes: seen {looks}")
        );
        let err = poll_until("nothing", Duration::ZERO, || Ok(None::<()>)).unwrap_err();
        assert_eq!(
            err.to_string(),
            "timed out after 0ns waiting for nothing: condition not met"
        );
        // Errors are observations: a later success still counts.
        let mut n = 0;
        let v = Poll::new("the third look", Duration::from_secs(5))
            .every(Duration::ZERO)
            .until(|| {
                n += 1;
                anyhow::ensure!(n >= 3, "look {n}");
                Ok(Some(n))
            })
            .expect("the third look succeeds");
        assert_eq!(v, 3);
    }

    #[test]
    fn poll_backoff_doubles_the_pause_up_to_its_bound() {
        let mut at = Vec::new();
        let start = Instant::now();
        let _ = Poll::new("six looks", Duration::from_secs(5))
            .every(Duration::from_millis(10))
            .backoff_to(Duration::from_millis(40))
            .until(|| {
                at.push(start.elapsed());
                Ok((at.len() == 6).then_some(()))
            });
        let gaps: Vec<Duration> = at.windows(2).map(|w| w[1] - w[0]).collect();
        // Pauses of 10, 20, 40, 40, 40 ms (sleep may overshoot, never undershoot).
        for (gap, min) in gaps.iter().zip([10, 20, 40, 40, 40]) {
            assert!(*gap >= Duration::from_millis(min), "{gaps:?}");
        }
    }

    #[test]
    fn holds_checks_the_whole_period_and_fails_at_the_first_miss() {
        let start = Instant::now();
        let mut looks = 0;
        Poll::new("always", Duration::from_millis(100))
            .every(Duration::from_millis(10))
            .holds(|| {
                looks += 1;
                Ok(())
            })
            .expect("it holds");
        assert!(start.elapsed() >= Duration::from_millis(100));
        assert!(looks >= 2, "{looks} looks");

        let mut looks = 0;
        let err = Poll::new("fewer than 3 looks", Duration::from_secs(5))
            .every(Duration::ZERO)
            .holds(|| {
                looks += 1;
                anyhow::ensure!(looks < 3, "look {looks}");
                Ok(())
            })
            .expect_err("the third look misses");
        assert_eq!(looks, 3);
        let text = format!("{err:#}");
        assert!(
            text.starts_with("fewer than 3 looks stopped holding after ")
                && text.ends_with(": look 3"),
            "{text}"
        );
    }

    #[test]
    fn mentions_only_the_dir_or_paths_under_it() {
        let dir = b"/tmp/shoal-t-ab/state";
        assert!(mentions(b"/tmp/shoal-t-ab/state", dir));
        assert!(mentions(
            b"HOME=/tmp/shoal-t-ab/state/tasks/c/n/t/work",
            dir
        ));
        assert!(!mentions(b"/tmp/shoal-t-ab/state2/tasks", dir));
        assert!(!mentions(b"/tmp/shoal-t-ab/s.sock", dir));
    }
}

// ---- Rolling updates (issue 17) -------------------------------------------------------

/// A `shoal` CLI call left running in the background (e.g. a `service update` that follows
/// the update's progress while the test samples the cluster). Dropping it kills the call.
pub struct BackgroundCli {
    what: String,
    child: Option<Child>,
    stdout: Option<mpsc::Receiver<Vec<u8>>>,
    stderr: Option<mpsc::Receiver<Vec<u8>>>,
}

impl Daemon {
    /// Starts `shoal -H unix://SOCKET args...` without waiting for it.
    pub fn spawn_cli(&self, args: &[&str]) -> Result<BackgroundCli> {
        let what = format!("shoal {}", args.join(" "));
        let mut child = Command::new(shoal_bin())
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot run `{what}`"))?;
        let stdout = child.stdout.take().map(read_to_end_in_thread);
        let stderr = child.stderr.take().map(read_to_end_in_thread);
        Ok(BackgroundCli {
            what,
            child: Some(child),
            stdout,
            stderr,
        })
    }
}

impl BackgroundCli {
    /// The call's output once it has ended, `None` while it runs.
    pub fn try_output(&mut self) -> Result<Option<Output>> {
        let Some(child) = self.child.as_mut() else {
            bail!("`{}`: output already taken", self.what);
        };
        let Some(status) = child.try_wait()? else {
            return Ok(None);
        };
        self.child = None;
        let what = &self.what;
        let collect = |rx: Option<mpsc::Receiver<Vec<u8>>>| -> Result<Vec<u8>> {
            let Some(rx) = rx else {
                return Ok(Vec::new());
            };
            rx.recv_timeout(Duration::from_secs(10))
                .map_err(|_| anyhow::anyhow!("`{what}` exited but its output stayed open"))
        };
        let stdout = collect(self.stdout.take())?;
        let stderr = collect(self.stderr.take())?;
        Ok(Some(Output {
            status,
            stdout,
            stderr,
        }))
    }

    /// Waits up to `deadline` for the call to end; one still running then is killed and
    /// fails.
    pub fn wait(mut self, deadline: Duration) -> Result<Output> {
        let what = self.what.clone();
        Poll::new(&what, deadline)
            .every(Duration::from_millis(20))
            .backoff_to(Duration::from_millis(200))
            .until(|| self.try_output())
            .with_context(|| format!("`{what}` did not end within {deadline:?}"))
    }
}

impl Drop for BackgroundCli {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take()
            && !matches!(child.try_wait(), Ok(Some(_)))
        {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A tag of the test image under another name (`docker tag`: same image ID, a new name),
/// removed when dropped. Declare it before the [`ClusterContainers`] guard of the cluster
/// that uses it, so the containers go first.
pub struct ImageTag(pub String);

impl ImageTag {
    /// Tags [`TEST_IMAGE`] as `shoal-test/busybox:{prefix}-{pid}-{n}` (unique per call).
    pub fn new(prefix: &str) -> Result<ImageTag> {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        let name = format!(
            "shoal-test/busybox:{prefix}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let out = output_within(
            Command::new("docker")
                .args(["tag", TEST_IMAGE, &name])
                .stdin(Stdio::null()),
            DOCKER_DEADLINE,
        )?;
        if !out.status.success() {
            bail!(
                "docker tag {TEST_IMAGE} {name} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(ImageTag(name))
    }

    /// The tagged name.
    pub fn name(&self) -> &str {
        &self.0
    }
}

impl Drop for ImageTag {
    fn drop(&mut self) {
        let mut rmi = Command::new("docker");
        rmi.args(["rmi", &self.0]).stdin(Stdio::null());
        match output_within(&mut rmi, DOCKER_DEADLINE) {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: cannot remove the tag {}: {}",
                self.0,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("warning: cannot remove the tag {}: {e:#}", self.0),
        }
    }
}

/// One running container of a service, as `docker ps` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceContainer {
    /// Container ID.
    pub id: String,
    /// The image *name* it was created from (a tag, not the image ID).
    pub image: String,
    /// Its `shoal.slot` label.
    pub slot: String,
    /// Its `shoal.task` label.
    pub task: String,
}

/// The running containers of service `service` (by name) of `cluster`.
pub fn service_containers(cluster: &str, service: &str) -> Result<Vec<ServiceContainer>> {
    let out = output_within(
        Command::new("docker")
            .args([
                "ps",
                "--no-trunc",
                "--filter",
                &format!("label=shoal.cluster={cluster}"),
                "--filter",
                &format!("label=shoal.service.name={service}"),
                "--format",
                r#"{{.ID}}|{{.Image}}|{{.Label "shoal.slot"}}|{{.Label "shoal.task"}}"#,
            ])
            .stdin(Stdio::null()),
        DOCKER_DEADLINE,
    )?;
    if !out.status.success() {
        bail!("docker ps failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let mut f = l.splitn(4, '|').map(str::to_string);
            ServiceContainer {
                id: f.next().unwrap_or_default(),
                image: f.next().unwrap_or_default(),
                slot: f.next().unwrap_or_default(),
                task: f.next().unwrap_or_default(),
            }
        })
        .collect())
}

/// The one running container of `service` of `cluster`, once `d` shows a task of spec
/// `version` running (waits up to a minute).
pub fn running_container(d: &Daemon, cluster: &str, service: &str, version: u64) -> Result<String> {
    poll_until(
        &format!("the container of {service} at version {version}"),
        Duration::from_secs(60),
        || {
            let rows = tasks(d, service)?;
            let current = rows.iter().any(|t| {
                t["state"] == "running"
                    && t["desired_state"] == "running"
                    && t["version"].as_u64() == Some(version)
            });
            anyhow::ensure!(current, "no running task of version {version}: {rows:?}");
            let c = service_containers(cluster, service)?;
            anyhow::ensure!(c.len() == 1, "{} containers", c.len());
            Ok(Some(c[0].id.clone()))
        },
    )
}

/// Runs `docker ARGS...` (with a deadline); fails with its stderr unless it succeeds.
pub fn docker(args: &[&str]) -> Result<String> {
    let out = output_within(
        Command::new("docker").args(args).stdin(Stdio::null()),
        DOCKER_DEADLINE,
    )?;
    if !out.status.success() {
        bail!(
            "`docker {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cluster ID `d` belongs to.
pub fn cluster_id(d: &Daemon) -> Result<String> {
    let id = d.json(&["info"])?["cluster_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    anyhow::ensure!(!id.is_empty(), "{} is in no cluster", d.name);
    Ok(id)
}

/// `d`'s node ID (from `info`).
pub fn node_id(d: &Daemon) -> Result<String> {
    let id = d.json(&["info"])?["node_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    anyhow::ensure!(!id.is_empty(), "{} reports no node ID", d.name);
    Ok(id)
}

/// libfaketime's library for multi-threaded programs (Debian's `faketime` package), if
/// installed.
pub fn faketime_lib() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("faketime"))
        .collect();
    dirs.push(PathBuf::from("/usr/lib/faketime"));
    dirs.into_iter()
        .map(|d| d.join("libfaketimeMT.so.1"))
        .find(|f| f.is_file())
}

/// [`start_cluster`] on `127.0.{block}.{first}` and up instead of `.1` and up, so that
/// several tests can share a block: managers `{prefix}m{i}` first, then workers
/// `{prefix}w{i}`; the first manager `init`s, the others join it by its address.
pub fn start_cluster_from(
    prefix: &str,
    block: u8,
    first: u8,
    managers: usize,
    workers: usize,
) -> Result<(Vec<Daemon>, Vec<Daemon>)> {
    start_cluster_with(prefix, block, first, managers, workers, |_| Ok(()))
}

/// [`start_cluster_from`] with `configure` applied to every daemon before its first start
/// (extra flags, environment).
pub fn start_cluster_with(
    prefix: &str,
    block: u8,
    first: u8,
    managers: usize,
    workers: usize,
    configure: impl Fn(&mut Daemon) -> Result<()>,
) -> Result<(Vec<Daemon>, Vec<Daemon>)> {
    let host = |i: usize| -> Result<String> {
        let h = usize::from(first) + i;
        anyhow::ensure!(h <= 254, "host number {h} out of range");
        Ok(format!("127.0.{block}.{h}:4747"))
    };
    let mut ms: Vec<Daemon> = (0..managers)
        .map(|i| Daemon::new(&format!("{prefix}m{}", i + 1), &host(i)?))
        .collect::<Result<_>>()?;
    let mut ws: Vec<Daemon> = (0..workers)
        .map(|i| Daemon::new(&format!("{prefix}w{}", i + 1), &host(managers + i)?))
        .collect::<Result<_>>()?;
    for d in ms.iter_mut().chain(ws.iter_mut()) {
        configure(d)?;
        d.start()?;
    }
    ms[0].ok(&["init"])?;
    let first_addr = ms[0].addr.to_string();
    let mt = join_token(&ms[0], "manager")?;
    let wt = join_token(&ms[0], "worker")?;
    for d in &ms[1..] {
        let out = d.ok(&["join", "--token", &mt, &first_addr])?;
        if !out.contains("joined the cluster as a manager") {
            bail!("{} did not join as a manager: {out}", d.name);
        }
    }
    for d in &ws {
        d.ok(&["join", "--token", &wt, &first_addr])?;
    }
    Ok((ms, ws))
}

// ---- Routing mesh (issue 18) ----------------------------------------------------------

/// Bound on connecting to a published port in [`http_get`].
pub const HTTP_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on each read and write of [`http_get`].
pub const HTTP_IO_TIMEOUT: Duration = Duration::from_secs(5);

/// The answer to one [`http_get`].
#[derive(Debug, Clone)]
pub struct HttpReply {
    /// The status code.
    pub status: u16,
    /// The body (after the blank line), lossily decoded.
    pub body: String,
    /// This side's address of the connection (what a PROXY header must carry as source).
    pub local: SocketAddr,
    /// The address connected to.
    pub peer: SocketAddr,
}

impl HttpReply {
    /// The value of a `key=value` line of the body (mesh-echo's form).
    pub fn field(&self, key: &str) -> Option<&str> {
        self.body.lines().find_map(|l| {
            l.split_once('=')
                .and_then(|(k, v)| (k == key).then_some(v.trim()))
        })
    }
}

/// Why an [`http_get`] got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpFailure {
    /// The connect was refused (ECONNREFUSED: nothing listens on the port).
    Refused,
    /// Anything else: a connect or read timeout, a reset, a close before any answer, an
    /// answer that is no HTTP.
    Failed(String),
}

impl std::fmt::Display for HttpFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpFailure::Refused => f.write_str("connection refused"),
            HttpFailure::Failed(e) => f.write_str(e),
        }
    }
}

/// One `GET / HTTP/1.0` on a new connection to `addr` (connect bounded by
/// [`HTTP_CONNECT_TIMEOUT`], each read and write by [`HTTP_IO_TIMEOUT`]), read to the server's
/// close. Any HTTP answer is `Ok`, whatever its status.
pub fn http_get(addr: SocketAddr) -> std::result::Result<HttpReply, HttpFailure> {
    use std::io::Read;
    let failed = |what: &str, e: std::io::Error| HttpFailure::Failed(format!("{what} {addr}: {e}"));
    let mut stream = match std::net::TcpStream::connect_timeout(&addr, HTTP_CONNECT_TIMEOUT) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err(HttpFailure::Refused);
        }
        Err(e) => return Err(failed("connect to", e)),
    };
    let local = stream
        .local_addr()
        .map_err(|e| failed("local address of", e))?;
    stream
        .set_read_timeout(Some(HTTP_IO_TIMEOUT))
        .and_then(|()| stream.set_write_timeout(Some(HTTP_IO_TIMEOUT)))
        .map_err(|e| failed("socket options for", e))?;
    stream
        .write_all(format!("GET / HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .map_err(|e| failed("write to", e))?;
    let mut raw = Vec::new();
    (&mut stream)
        .take(1 << 20)
        .read_to_end(&mut raw)
        .map_err(|e| failed("read from", e))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| HttpFailure::Failed(format!("{addr}: no HTTP answer: {text:?}")))?;
    let status = head
        .lines()
        .next()
        .and_then(|l| {
            let mut parts = l.split_whitespace();
            let version = parts.next()?;
            version.starts_with("HTTP/1.").then_some(())?;
            parts.next()?.parse().ok()
        })
        .ok_or_else(|| HttpFailure::Failed(format!("{addr}: bad status line in {text:?}")))?;
    Ok(HttpReply {
        status,
        body: body.to_string(),
        local,
        peer: addr,
    })
}

/// [`http_get`] that must answer `200`; any other outcome is an error that names `addr`.
pub fn http_ok(addr: SocketAddr) -> Result<HttpReply> {
    match http_get(addr) {
        Ok(r) if r.status == 200 => Ok(r),
        Ok(r) => bail!("{addr} answered {}: {}", r.status, r.body.trim()),
        Err(e) => bail!("GET http://{addr}/: {e}"),
    }
}

/// `d`'s published port `port`: its own address (the harness starts every daemon with
/// `--publish-addr` set to it).
pub fn published(d: &Daemon, port: u16) -> SocketAddr {
    SocketAddr::new(d.addr.ip(), port)
}

/// The routing mesh's counters of `d` (`info --format json`, object `mesh`).
pub fn mesh_counters(d: &Daemon) -> Result<shoal::mesh::MeshCounters> {
    let info = d.json(&["info"])?;
    serde_json::from_value(info["mesh"].clone()).with_context(|| {
        format!(
            "{}: `info` has no valid `mesh` object: {}",
            d.name, info["mesh"]
        )
    })
}

#[cfg(test)]
mod mesh_helper_tests {
    use super::*;

    #[test]
    fn http_get_reads_an_answer_and_tells_a_refused_connect() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("address");
        let server = std::thread::spawn(move || {
            use std::io::Read;
            let (mut s, _) = listener.accept().expect("accept");
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.0 400 Bad Request\r\nX: y\r\n\r\ntask=t1\nconn=7\n");
        });
        let r = http_get(addr).expect("an answer");
        server.join().expect("server");
        assert_eq!(r.status, 400);
        assert_eq!(r.peer, addr);
        assert_eq!(r.field("task"), Some("t1"));
        assert_eq!(r.field("conn"), Some("7"));
        assert_eq!(r.field("client"), None);
        assert!(http_ok(addr).is_err(), "nothing listens any more");

        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        assert_eq!(http_get(closed).unwrap_err(), HttpFailure::Refused);
    }
}
