//! Issue 19 item 4: progress streamed by the daemon. `service create | scale | update |
//! rollback` follow the NDJSON stream of `GET /v1/services/{ref}/progress` (computed on the
//! leader, relayed by a follower), print plain lines when stdout is not a terminal, and end
//! with `verify: Service converged` (exit 0) or the reason in one line (exit 1). Every
//! command here runs on a follower manager; the tasks use the process driver.
//!
//! Addresses (127.0.106.x, port 4747 for QUIC, no published ports):
//! - .1–.3: two managers and a worker: create, the raw stream, scale, update, rollback,
//!   unknown service, bad query;
//! - .4–.5: two managers: a version that exits at once pauses the update; a service removed
//!   while it is followed;
//! - .6–.9: three managers and a worker: the leader killed while an update is followed.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Output;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use shoal_tests::{Daemon, Poll, poll_until, start_cluster_from, tasks};

/// A task program that exits on SIGTERM, so that stops are quick.
const LOOP: &str = r#"trap "exit 0" TERM; while true; do sleep 0.2; done"#;

/// How long a followed command may take at most in these tests.
const FOLLOW_DEADLINE: Duration = Duration::from_secs(90);

/// The hostname of the leader as `d`'s `node ls` shows it.
fn leader(d: &Daemon) -> Result<Option<String>> {
    Ok(d.json(&["node", "ls"])?
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["manager_status"] == "leader")
        .and_then(|n| n["hostname"].as_str().map(str::to_string)))
}

/// Waits until `d` sees `name` as the leader.
fn wait_leader(d: &Daemon, name: &str) -> Result<()> {
    poll_until(
        &format!("{name} the leader as {} sees it", d.name),
        Duration::from_secs(30),
        || Ok((leader(d)?.as_deref() == Some(name)).then_some(())),
    )
}

/// Checks the stdout of a followed command that converged: plain lines (no terminal
/// escapes), only progress lines after the first (`lead`) lines, each block printed only
/// where it changed, `overall progress: N out of N tasks` reached, and `verify: Service
/// converged` last.
fn check_followed(out: &Output, lead: usize, n: usize) -> Result<Vec<String>> {
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    ensure!(
        out.status.success(),
        "the command failed ({}): {stderr}\n{stdout}",
        out.status
    );
    ensure!(!stdout.contains('\x1b'), "terminal escapes in {stdout:?}");
    let lines: Vec<String> = stdout.lines().map(str::to_string).collect();
    ensure!(
        lines.last().map(String::as_str) == Some("verify: Service converged"),
        "not ended by the verify line: {stdout}"
    );
    ensure!(
        lines.contains(&format!("overall progress: {n} out of {n} tasks")),
        "never {n} out of {n}: {stdout}"
    );
    let progress = &lines[lead.min(lines.len())..lines.len() - 1];
    ensure!(!progress.is_empty(), "no progress lines: {stdout}");
    for l in progress {
        let slot = l.split_once(": ").is_some_and(|(s, _)| {
            s.split_once('/')
                .is_some_and(|(a, b)| a.parse::<u64>().is_ok() && b.parse::<u64>().is_ok())
        });
        ensure!(
            l.starts_with("overall progress: ") || slot,
            "not a progress line: {l:?} in {stdout}"
        );
    }
    // Only what changed is printed: never the same line twice in a row.
    for w in progress.windows(2) {
        ensure!(w[0] != w[1], "{:?} printed twice in a row: {stdout}", w[0]);
    }
    Ok(lines)
}

/// Runs a followed command on `d` that must converge; returns its stdout lines.
fn followed(d: &Daemon, args: &[&str], lead: usize, n: usize) -> Result<Vec<String>> {
    let out = d.cli_within(args, FOLLOW_DEADLINE)?;
    check_followed(&out, lead, n)
        .with_context(|| format!("`shoal {}` on {}", args.join(" "), d.name))
}

/// The one line a failed command wrote to stderr.
fn one_line_error(out: &Output) -> Result<String> {
    ensure!(!out.status.success(), "the command succeeded");
    ensure!(out.status.code() == Some(1), "exit status {}", out.status);
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    ensure!(err.lines().count() == 1, "not one line: {err:?}");
    Ok(err)
}

/// The answer of a raw `GET path` on a control socket: the status and the body, the chunked
/// encoding undone. The whole exchange must end within `deadline`.
fn raw_get(socket: &Path, path: &str, deadline: Duration) -> Result<(u16, String)> {
    let end = Instant::now() + deadline;
    let mut s = UnixStream::connect(socket).context("connect to the control socket")?;
    s.set_read_timeout(Some(Duration::from_millis(500)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: shoal\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        ensure!(
            Instant::now() < end,
            "GET {path}: no end within {deadline:?}: {}",
            String::from_utf8_lossy(&raw)
        );
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e).context("read the answer"),
        }
    }
    let text = String::from_utf8(raw).context("answer not UTF-8")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .with_context(|| format!("no header end in {text:?}"))?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    let chunked = head
        .lines()
        .any(|l| l.eq_ignore_ascii_case("transfer-encoding: chunked"));
    if !chunked {
        return Ok((status, body.to_string()));
    }
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest
            .split_once("\r\n")
            .with_context(|| format!("bad chunk in {body:?}"))?;
        let size = usize::from_str_radix(size.trim(), 16)
            .with_context(|| format!("bad chunk size {size:?}"))?;
        if size == 0 {
            break;
        }
        ensure!(after.len() >= size + 2, "short chunk in {body:?}");
        out.push_str(&after[..size]);
        rest = &after[size + 2..];
    }
    Ok((status, out))
}

/// The NDJSON lines of a progress stream, each an object with a `type`.
fn messages(body: &str) -> Result<Vec<Value>> {
    body.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).with_context(|| format!("not JSON: {l:?}"))?;
            ensure!(v["type"].is_string(), "no type in {v}");
            Ok(v)
        })
        .collect()
}

/// The running tasks of `service` and their versions.
fn running_versions(d: &Daemon, service: &str) -> Result<Vec<u64>> {
    Ok(tasks(d, service)?
        .iter()
        .filter(|t| t["state"] == "running" && t["desired_state"] == "running")
        .map(|t| t["version"].as_u64().unwrap_or(0))
        .collect())
}

/// The service's current version.
fn version(d: &Daemon, service: &str) -> Result<u64> {
    d.inspect(&["service", "inspect", service])?["version"]
        .as_u64()
        .context("no version")
}

/// (a)–(c), (e): create, scale, update and rollback run on a follower follow the stream to
/// convergence; the raw stream is NDJSON ending with `end`; errors before the stream are
/// ordinary one-line answers.
#[test]
fn commands_on_a_follower_follow_the_streamed_progress() -> Result<()> {
    let (ms, _ws) = start_cluster_from("pg-", 106, 1, 2, 1)?;
    let f = &ms[1];
    wait_leader(f, "pg-m1")?;

    // (a) create on the follower: plain lines, then the verify line.
    let lines = followed(
        f,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--driver",
            "process",
            "--replicas",
            "3",
            "/bin/sh",
            "-c",
            LOOP,
        ],
        1,
        3,
    )?;
    eprintln!("create:\n{}", lines.join("\n"));
    ensure!(lines[0].len() >= 12, "no service ID first: {lines:?}");
    for s in ["1/3: running", "2/3: running", "3/3: running"] {
        ensure!(lines.iter().any(|l| l == s), "no {s:?} in {lines:?}");
    }
    let v1 = version(f, "web")?;
    ensure!(running_versions(f, "web")? == [v1; 3], "not 3 running");

    // (b) the raw stream on the follower's socket: NDJSON objects, the last `end`,
    // converged; create/scale end only after the picture stayed converged for 2 s.
    let start = Instant::now();
    let (status, body) = raw_get(
        &f.socket,
        "/v1/services/web/progress?watch=scale",
        Duration::from_secs(30),
    )?;
    let took = start.elapsed();
    ensure!(status == 200, "HTTP {status}: {body}");
    let msgs = messages(&body)?;
    eprintln!("raw stream ({took:?}):\n{body}");
    let first = msgs.first().context("empty stream")?;
    ensure!(first["type"] == "progress", "{first}");
    ensure!(first["completed"] == 3 && first["total"] == 3, "{first}");
    ensure!(
        first["lines"][0] == "overall progress: 3 out of 3 tasks",
        "{first}"
    );
    let slots = first["slots"].as_array().context("no slots")?;
    ensure!(slots.len() == 3, "{first}");
    for s in slots {
        ensure!(s["state"] == "running" && s["task_id"].is_string(), "{s}");
        ensure!(s["node"].is_string() && s["detail"] == "running", "{s}");
    }
    let last = msgs.last().context("empty stream")?;
    ensure!(
        *last == serde_json::json!({"type": "end", "converged": true}),
        "last: {last}"
    );
    ensure!(
        took >= Duration::from_secs(2),
        "ended after {took:?}, before 2 s stable"
    );
    for w in msgs.windows(2) {
        ensure!(w[0] != w[1], "the same message twice: {}", w[0]);
    }
    // Errors before the stream: ordinary one-line answers.
    let (status, body) = raw_get(
        &f.socket,
        "/v1/services/web/progress?watch=sideways",
        Duration::from_secs(10),
    )?;
    ensure!(status == 400, "HTTP {status}: {body}");
    let msg: Value = serde_json::from_str(&body)?;
    ensure!(
        msg["message"]
            .as_str()
            .is_some_and(|m| m.contains("expected create, scale, update or rollback")),
        "{body}"
    );
    let (status, body) = raw_get(
        &f.socket,
        "/v1/services/web/progress?watch=update",
        Duration::from_secs(10),
    )?;
    ensure!(status == 400, "HTTP {status}: {body}");
    let (status, body) = raw_get(
        &f.socket,
        "/v1/services/nope/progress?watch=create",
        Duration::from_secs(10),
    )?;
    ensure!(status == 404, "HTTP {status}: {body}");
    let msg: Value = serde_json::from_str(&body)?;
    ensure!(msg["message"] == "no such service: nope", "{body}");

    // (c) scale up and down, an update that replaces every task, a rollback.
    let lines = followed(f, &["service", "scale", "web=5"], 1, 5)?;
    eprintln!("scale up:\n{}", lines.join("\n"));
    ensure!(lines[0] == "web scaled to 5", "{lines:?}");
    ensure!(running_versions(f, "web")?.len() == 5, "not 5 running");
    followed(f, &["service", "scale", "web=2"], 1, 2)?;
    let lines = followed(
        f,
        &[
            "service",
            "update",
            "--env-add",
            "COLOUR=blue",
            "--update-parallelism",
            "1",
            "web",
        ],
        1,
        2,
    )?;
    eprintln!("update:\n{}", lines.join("\n"));
    let v2 = version(f, "web")?;
    ensure!(v2 > v1, "version {v2} after the update");
    ensure!(
        running_versions(f, "web")? == [v2; 2],
        "not the new version running"
    );
    let env = f.inspect(&["service", "inspect", "web"])?["spec"]["env"].clone();
    ensure!(env["COLOUR"] == "blue", "{env}");
    let lines = followed(f, &["service", "rollback", "web"], 1, 2)?;
    eprintln!("rollback:\n{}", lines.join("\n"));
    let spec = f.inspect(&["service", "inspect", "web"])?["spec"].clone();
    ensure!(spec["env"].get("COLOUR").is_none(), "{spec}");
    // The rollback's tasks are up to date and running; the command said so only then.
    let v3 = version(f, "web")?;
    ensure!(running_versions(f, "web")?.len() == 2, "not 2 running");
    let rows = tasks(f, "web")?;
    ensure!(
        rows.iter()
            .filter(|t| t["desired_state"] == "running")
            .all(|t| t["up_to_date"] == true && t["state"] == "running"),
        "version {v3}: {rows:?}"
    );

    // (e) an unknown service: one line, exit 1.
    let out = f.cli(&["service", "update", "--env-add", "A=1", "nope"])?;
    let err = one_line_error(&out)?;
    ensure!(err.contains("no such service: nope"), "{err}");
    let out = f.cli(&["service", "scale", "nope=2"])?;
    let err = one_line_error(&out)?;
    ensure!(err.contains("no such service: nope"), "{err}");
    // --detach returns at once, without progress.
    let out = f.ok(&["service", "scale", "--detach", "web=1"])?;
    ensure!(out.trim() == "web scaled to 1", "{out}");
    Ok(())
}

/// (d) an update to a program that exits at once pauses, and the command following it on a
/// follower exits 1 with the reason in one line; the rollback converges. A service removed
/// while it is followed ends the command with that reason.
#[test]
fn a_paused_update_or_a_removed_service_ends_the_command_with_the_reason() -> Result<()> {
    let (ms, _) = start_cluster_from("pgb-", 106, 4, 2, 0)?;
    let f = &ms[1];
    wait_leader(f, "pgb-m1")?;
    followed(
        f,
        &[
            "service",
            "create",
            "--name",
            "loop",
            "--driver",
            "process",
            "--replicas",
            "2",
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
            "/bin/sh",
            "-c",
            LOOP,
        ],
        1,
        2,
    )?;
    let out = f.cli_within(
        &["service", "update", "--image", "/bin/false", "loop"],
        FOLLOW_DEADLINE,
    )?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("update to /bin/false:\n{stdout}");
    let err = one_line_error(&out).with_context(|| stdout.clone())?;
    eprintln!("{err}");
    ensure!(err.starts_with("Error: update paused"), "{err}");
    ensure!(err.contains("exit"), "no reason in {err}");
    ensure!(
        stdout.lines().any(|l| l.starts_with("overall progress: ")),
        "no progress shown: {stdout}"
    );
    let i = f.inspect(&["service", "inspect", "loop"])?;
    ensure!(i["update_status"]["state"] == "paused", "{i}");
    followed(f, &["service", "rollback", "loop"], 1, 2)?;
    ensure!(running_versions(f, "loop")?.len() == 2, "not 2 running");

    // Removed while followed: a slow update (a long delay between its two batches).
    let before = version(f, "loop")?;
    let mut cli = f.spawn_cli(&[
        "service",
        "update",
        "--force",
        "--update-delay",
        "60s",
        "loop",
    ])?;
    Poll::new(
        "the first batch of the slow update",
        Duration::from_secs(30),
    )
    .until(|| {
        let rows = tasks(f, "loop")?;
        let v = version(f, "loop")?;
        let started = rows
            .iter()
            .any(|t| t["version"] == v && t["state"] == "running");
        Ok((v > before && started).then_some(()))
    })?;
    ensure!(
        cli.try_output()?.is_none(),
        "the update command ended early"
    );
    f.ok(&["service", "rm", "loop"])?;
    let out = cli.wait(Duration::from_secs(30))?;
    let err = one_line_error(&out)?;
    ensure!(
        err == "Error: service loop was removed while it was followed",
        "{err}"
    );
    Ok(())
}

/// The leader killed while a follower's `service update` follows: the stream breaks, the
/// CLI asks again (its request reaches the new leader) and still ends converged.
#[test]
fn the_cli_follows_again_when_the_leader_changes() -> Result<()> {
    let (mut ms, _ws) = start_cluster_from("pgc-", 106, 6, 3, 1)?;
    wait_leader(&ms[1], "pgc-m1")?;
    let f = &ms[1];
    followed(
        f,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--driver",
            "process",
            "--replicas",
            "2",
            "--constraint",
            "node.role==worker",
            "--update-parallelism",
            "1",
            "--update-delay",
            "8s",
            "--stop-grace-period",
            "2s",
            "/bin/sh",
            "-c",
            LOOP,
        ],
        1,
        2,
    )?;
    let before = version(f, "web")?;
    let mut cli = f.spawn_cli(&["service", "update", "--force", "web"])?;
    Poll::new("the first batch of the update", Duration::from_secs(30)).until(|| {
        let v = version(f, "web")?;
        let new = tasks(f, "web")?
            .iter()
            .filter(|t| t["version"] == v && t["state"] == "running")
            .count();
        Ok((v > before && new >= 1).then_some(()))
    })?;
    ensure!(
        cli.try_output()?.is_none(),
        "the update command ended early"
    );
    // Mid-update (the second slot waits out the delay): the end can only come from the
    // next leader.
    let i = f.inspect(&["service", "inspect", "web"])?;
    ensure!(i["update_status"]["state"] == "updating", "{i}");
    ms[0].kill9();
    let out = cli.wait(Duration::from_secs(120))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    eprintln!("update across a leader change:\n{stdout}");
    check_followed(&out, 1, 2)?;
    let f = &ms[1];
    let v = version(f, "web")?;
    ensure!(
        running_versions(f, "web")? == [v; 2],
        "not the new version running"
    );
    let now = leader(f)?;
    ensure!(
        now.as_deref().is_some_and(|l| l != "pgc-m1"),
        "leader {now:?}"
    );
    Ok(())
}
