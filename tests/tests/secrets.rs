//! Issue 23 (part 2): secrets on real daemons and Docker: a manager and two workers on
//! 127.0.152.1–.3, each serving metrics on port 29211.
//!
//! A secret given to a service reaches its tasks as an in-memory read-only file (a container's
//! `/run/secrets/NAME`, a process task's `$SHOAL_SECRETS_DIR/NAME` at 0400), and nothing else:
//! its bytes are in no log (the daemons log at debug), no answer of the API, and no file of
//! any state directory (the Raft log and snapshots, the worker cache, the tasks' records); the
//! worker that runs no task using it never receives it (its metrics count none); a secret in
//! use cannot be removed.
//!
//! Cleaning up: the [`Daemon`]s (dropped also when the test fails) kill the daemons and their
//! tasks, and a [`ClusterContainers`] guard removes the cluster's containers; the secrets'
//! memory directories go with their tasks (checked), and a [`shoal_tests::SecretDirs`] guard
//! removes them when the test fails first. Needs Docker and the test image: skips without them and fails under
//! `SHOAL_REQUIRE_DOCKER=1`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};
use base64::Engine as _;
use shoal_tests::{
    ClusterContainers, Poll, cluster_id, docker, docker_ready, node_id, running_container,
    start_cluster_with,
};

const IMAGE: &str = shoal_tests::TEST_IMAGE;
const METRICS_PORT: u16 = 29211;

/// `name VALUE` of one sample in the node's `/metrics`.
fn metric(addr: SocketAddr, name: &str) -> Result<f64> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let line = raw
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .with_context(|| format!("no sample {name} at {addr}"))?;
    Ok(line.rsplit(' ').next().unwrap_or_default().parse()?)
}

/// Every file under `dir` (symlinks not followed).
fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_dir() {
            files_under(&e.path(), out);
        } else if t.is_file() {
            out.push(e.path());
        }
    }
}

/// The files under `dir` holding `needle`.
fn holding(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut files = Vec::new();
    files_under(dir, &mut files);
    files
        .into_iter()
        .filter(|f| std::fs::read(f).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)))
        .collect()
}

/// The web-and-database shape of a homelab stack, at the level of services: the database
/// reads its password from `/run/secrets/db_password`; a process task on the same node gets
/// it too; the other worker runs a task without it.
#[test]
fn issue_23_a_secret_reaches_only_its_tasks_in_memory_and_is_stored_nowhere_in_clear() -> Result<()>
{
    if !docker_ready()? {
        return Ok(());
    }
    let value = format!("pw-{:016x}-s3cr3t", rand_u64());
    let b64 = base64::engine::general_purpose::STANDARD.encode(value.as_bytes());
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("db_password.txt");
    std::fs::write(&file, &value)?;
    let (ms, ws) = start_cluster_with("sc-", 152, 1, 1, 2, |d| {
        let metrics = format!("{}:{METRICS_PORT}", d.addr.ip());
        d.extra.extend(["--metrics-addr".into(), metrics]);
        d.env.push(("RUST_LOG".into(), "shoal=debug,info".into()));
        Ok(())
    })?;
    let (m, w1, w2) = (&ms[0], &ws[0], &ws[1]);
    let cluster = cluster_id(m)?;
    let _containers = ClusterContainers(cluster.clone());
    let _secret_dirs = shoal_tests::SecretDirs::of(ms.iter().chain(&ws))?;
    let shm_of = |d: &shoal_tests::Daemon| -> Result<PathBuf> {
        Ok(Path::new("/dev/shm").join(format!("shoal-secrets-{}", node_id(d)?)))
    };
    let metrics_of = |d: &shoal_tests::Daemon| SocketAddr::new(d.addr.ip(), METRICS_PORT);

    m.ok(&[
        "secret",
        "create",
        "db_password",
        &file.display().to_string(),
    ])?;
    let ls = m.ok(&["secret", "ls"])?;
    ensure!(ls.contains("db_password"), "secret ls:\n{ls}");
    let dup = m.fails(&[
        "secret",
        "create",
        "db_password",
        &file.display().to_string(),
    ])?;
    ensure!(
        dup.contains("already exists"),
        "a second db_password: {dup}"
    );

    let on = |d: &shoal_tests::Daemon| format!("node.hostname=={}", d.name);
    m.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "db",
        "--constraint",
        &on(w1),
        "--secret",
        "db_password",
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; test -s /run/secrets/db_password && sleep 3600 & wait",
    ])?;
    m.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "dbtool",
        "--driver",
        "process",
        "--constraint",
        &on(w1),
        "--secret",
        "source=db_password,target=pw",
        "/bin/sh",
        "-c",
        "trap 'exit 0' TERM; test -s \"$SHOAL_SECRETS_DIR/pw\" && sleep 3600 & wait",
    ])?;
    m.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "web",
        "--constraint",
        &on(w2),
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; sleep 3600 & wait",
    ])?;

    // Inside the container: the bytes, Docker's default mode, read-only.
    let id = running_container(m, &cluster, "db", 1)?;
    let out = docker(&[
        "exec",
        &id,
        "sh",
        "-c",
        "cat /run/secrets/db_password; echo; stat -c '%a' /run/secrets/db_password; echo x >> /run/secrets/db_password 2>/dev/null && echo written || echo read-only",
    ])?;
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    ensure!(
        lines == [value.as_str(), "444", "read-only"],
        "inside the task: {lines:?}"
    );
    // Its source is a file on the node's memory-backed directory.
    let mounts = docker(&[
        "inspect",
        "-f",
        "{{range .Mounts}}{{.Source}} {{.Destination}}\n{{end}}",
        &id,
    ])?;
    let w1_shm = shm_of(w1)?;
    let source = mounts
        .lines()
        .find_map(|l| l.strip_suffix(" /run/secrets/db_password"))
        .with_context(|| format!("no mount at /run/secrets/db_password: {mounts}"))?;
    ensure!(
        Path::new(source).starts_with(&w1_shm),
        "the secret is mounted from {source}, not from {}",
        w1_shm.display()
    );
    ensure!(
        String::from_utf8_lossy(
            &std::process::Command::new("stat")
                .args(["-f", "-c", "%T", source])
                .output()?
                .stdout
        )
        .trim()
            == "tmpfs",
        "{source} is not on a tmpfs"
    );
    // The process task's copy: 0400, in the same memory-backed directory.
    let process_copy = Poll::new("dbtool's secret file", Duration::from_secs(30)).until(|| {
        let mut files = Vec::new();
        files_under(&w1_shm, &mut files);
        Ok(files.into_iter().find(|f| f.ends_with("pw")))
    })?;
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&process_copy)?.permissions().mode() & 0o777;
    ensure!(mode == 0o400, "the process task's secret has mode {mode:o}");
    ensure!(std::fs::read(&process_copy)? == value.as_bytes());
    Poll::new("dbtool running", Duration::from_secs(30)).until(|| {
        let ps = m.ok(&["service", "ps", "dbtool"])?;
        Ok(ps.contains("Running").then_some(()))
    })?;

    // Only w1 ever received the secret: two files (db and dbtool), never on w2 or the manager.
    let received = metric(metrics_of(w1), "shoal_worker_secrets_received_total")?;
    ensure!(received >= 2.0, "w1 received {received} secret files");
    for d in [w2, m] {
        let n = metric(metrics_of(d), "shoal_worker_secrets_received_total")?;
        ensure!(n == 0.0, "{} received {n} secret files", d.name);
        ensure!(!shm_of(d)?.exists(), "{} has a secrets directory", d.name);
    }
    running_container(m, &cluster, "web", 1)?;

    // In use: not removable. Never in an answer.
    let in_use = m.fails(&["secret", "rm", "db_password"])?;
    ensure!(
        in_use.contains("in use by service"),
        "removing a secret in use: {in_use}"
    );
    for args in [
        vec!["secret", "inspect", "db_password"],
        vec!["service", "inspect", "db"],
        vec!["service", "inspect", "dbtool"],
        vec!["service", "ps", "--no-trunc", "db"],
        vec!["events", "--since", "0", "--until", "0s"],
    ] {
        let out = m.ok(&args)?;
        ensure!(
            !out.contains(&value) && !out.contains(&b64),
            "`shoal {}` shows the secret:\n{out}",
            args.join(" ")
        );
    }
    // Nowhere on disk in clear or base64: state directories (Raft log and snapshots, worker
    // caches, task records) and the daemons' logs (at debug).
    for d in [m, w1, w2] {
        let root = d.state_dir.parent().unwrap_or(&d.state_dir);
        for needle in [value.as_bytes(), b64.as_bytes()] {
            let found = holding(root, needle);
            ensure!(found.is_empty(), "{} holds the secret in {found:?}", d.name);
        }
    }
    let mut stores = Vec::new();
    files_under(&m.state_dir, &mut stores);
    ensure!(
        stores.iter().any(|f| f.ends_with("raft.redb")),
        "no Raft store among the files checked: {stores:?}"
    );

    // Removed with its users: the memory copies go with the tasks, then the secret can go.
    m.ok(&["service", "rm", "db", "dbtool"])?;
    Poll::new(
        "the secrets' memory copies and their directory removed",
        Duration::from_secs(30),
    )
    .until(|| Ok((!w1_shm.exists()).then_some(())))?;
    m.ok(&["secret", "rm", "db_password"])?;
    let ls = m.ok(&["secret", "ls"])?;
    ensure!(!ls.contains("db_password"), "still listed:\n{ls}");
    Ok(())
}

fn rand_u64() -> u64 {
    let mut b = [0u8; 8];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        let _ = f.read_exact(&mut b);
    }
    u64::from_le_bytes(b) ^ u64::from(std::process::id())
}
