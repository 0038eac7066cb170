//! Support for cluster tests: start real `shoal` daemons in temp dirs on their own
//! loopback addresses, drive them with the real CLI, and always clean up.
//!
//! Each test owns a block of loopback addresses (`127.0.N.x`) so tests never collide.
//! Daemons run in their own process group and are `kill -9`ed on drop, even when the
//! test fails.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;

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

/// Polls `check` every 50 ms until it returns `Some`, or fails after `timeout`
/// with `what` and the last error seen.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => "condition not met".to_string(),
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}: {last}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `shoal daemon` process with its own state dir, socket and address.
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
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Daemon {
    /// Prepares (does not start) a daemon called `name` on `addr`.
    pub fn new(name: &str, addr: &str) -> Result<Daemon> {
        let dir = tempfile::Builder::new()
            .prefix("shoal-t-")
            .tempdir_in("/tmp")?;
        Ok(Daemon {
            name: name.into(),
            addr: addr.parse().context("bad test address")?,
            state_dir: dir.path().join("state"),
            socket: dir.path().join("s.sock"),
            extra: Vec::new(),
            child: None,
            log: dir.path().join("daemon.log"),
            _dir: dir,
        })
    }

    /// Starts the daemon and waits until its API answers.
    pub fn start(&mut self) -> Result<()> {
        let child = self.spawn()?;
        self.child = Some(child);
        let socket = self.socket.clone();
        wait_for("the daemon's API", Duration::from_secs(20), || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!("daemon exited with {status}: {}", self.log_tail());
            }
            Ok(std::os::unix::net::UnixStream::connect(&socket).ok())
        })?;
        Ok(())
    }

    /// Spawns the daemon process without waiting; the caller owns the child.
    pub fn spawn(&self) -> Result<Child> {
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
            .arg("--hostname")
            .arg(&self.name)
            .args(&self.extra)
            .env(
                "RUST_LOG",
                std::env::var("SHOAL_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd.spawn()
            .with_context(|| format!("cannot start {}", shoal_bin().display()))
    }

    /// `kill -9` the daemon's process group and reap it.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
        }
    }

    /// SIGTERM and wait for a clean exit (up to 10 s, then SIGKILL).
    pub fn stop(&mut self) -> Result<std::process::ExitStatus> {
        let Some(mut child) = self.child.take() else {
            bail!("daemon not running")
        };
        let _ = nix::sys::signal::kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
                bail!("daemon did not stop within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of the daemon's log, for failure messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Runs `shoal -H unix://SOCKET args...`.
    pub fn cli(&self, args: &[&str]) -> Result<Output> {
        let out = Command::new(shoal_bin())
            .arg("-H")
            .arg(format!("unix://{}", self.socket.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        Ok(out)
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
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// The local test image (built by `scripts/test-image.sh`).
pub const TEST_IMAGE: &str = "shoal-test/busybox:latest";

/// Whether Docker and the test image are there. Without them a test skips (returns
/// `Ok(false)` after a note), or fails under `SHOAL_REQUIRE_DOCKER=1`.
pub fn docker_ready() -> Result<bool> {
    let ok = Command::new("docker")
        .args(["image", "inspect", TEST_IMAGE])
        .output()
        .is_ok_and(|o| o.status.success());
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
        let out = Command::new("docker")
            .args([
                "ps",
                "-aq",
                "--filter",
                &format!("label=shoal.cluster={}", self.0),
            ])
            .output();
        if let Ok(out) = out {
            let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(String::from)
                .collect();
            if !ids.is_empty() {
                let _ = Command::new("docker")
                    .arg("rm")
                    .arg("-f")
                    .args(&ids)
                    .output();
            }
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
