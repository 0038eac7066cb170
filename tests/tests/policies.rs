//! Issue 11: placement limits, reservations, restart policies, role constraints and the
//! process driver in the cluster.
//!
//! Address block: 127.0.12.x.

use std::time::Duration;

use anyhow::{Result, ensure};
use serde_json::Value;
use shoal_tests::{Daemon, Poll, all_pids, cmdline, join_token, poll_until, tasks};

/// Pids of `/bin/sleep ARG` processes whose working directory is under one of `dirs`.
fn task_pids(arg: &str, dirs: &[&std::path::PathBuf]) -> Vec<i32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            let is_sleep = cmdline(*pid).is_some_and(|args| {
                args.first().is_some_and(|a| a.ends_with("sleep"))
                    && args.get(1).is_some_and(|a| a == arg)
            });
            let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).unwrap_or_default();
            is_sleep && dirs.iter().any(|d| cwd.starts_with(d))
        })
        .collect()
}

fn count(ts: &[Value], state: &str) -> usize {
    ts.iter().filter(|t| t["state"] == state).count()
}

/// Issue 11: with the process driver, max replicas per node and a reservation no node
/// fits leave tasks pending with the reason, a role constraint is honoured, restart
/// policies (none, on-failure with a limit, no restart of a completed task) stop where they
/// should, and a killed task's process is replaced.
#[test]
fn limits_reservations_restart_policies_and_process_driver() -> Result<()> {
    let mut m = Daemon::new("po-m", "127.0.12.1:4747")?;
    let mut a = Daemon::new("po-a", "127.0.12.2:4747")?;
    let mut b = Daemon::new("po-b", "127.0.12.3:4747")?;
    m.start()?;
    a.start()?;
    b.start()?;
    m.ok(&["init"])?;
    let t = join_token(&m, "worker")?;
    a.ok(&["join", "--token", &t])?;

    // Max replicas per node: 3 replicas on 2 nodes → one pending with the reason,
    // placed as soon as a third node joins.
    m.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "one-each",
        "--driver",
        "process",
        "--replicas",
        "3",
        "--replicas-max-per-node",
        "1",
        "/bin/sleep",
        "3600",
    ])?;
    poll_until("2 running, 1 pending", Duration::from_secs(20), || {
        let ts = tasks(&m, "one-each")?;
        Ok((count(&ts, "running") == 2 && count(&ts, "pending") == 1).then_some(ts))
    })
    .map(|ts| {
        let reason = ts
            .iter()
            .find(|t| t["state"] == "pending")
            .map(|t| t["error"].clone());
        eprintln!("pending reason: {reason:?}");
        assert!(
            reason
                .and_then(|r| r.as_str().map(|s| s.contains("no suitable node")))
                .unwrap_or(false)
        );
    })?;
    b.ok(&["join", "--token", &t])?;
    poll_until(
        "3 running once a node joins",
        Duration::from_secs(20),
        || Ok((count(&tasks(&m, "one-each")?, "running") == 3).then_some(())),
    )?;

    // A reservation larger than any node: pending with the reason.
    m.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "huge",
        "--driver",
        "process",
        "--reserve-memory",
        "100T",
        "/bin/sleep",
        "3600",
    ])?;
    poll_until("huge pending on memory", Duration::from_secs(20), || {
        let ts = tasks(&m, "huge")?;
        Ok(ts
            .iter()
            .any(|t| {
                t["state"] == "pending" && t["error"].as_str().is_some_and(|e| e.contains("memory"))
            })
            .then_some(()))
    })?;

    // Role constraint: everything on the manager.
    m.ok(&[
        "service",
        "create",
        "--name",
        "on-managers",
        "--driver",
        "process",
        "--replicas",
        "2",
        "--constraint",
        "node.role==manager",
        "/bin/sleep",
        "3600",
    ])?;
    let ts = tasks(&m, "on-managers")?;
    let running: Vec<&Value> = ts.iter().filter(|t| t["state"] == "running").collect();
    assert_eq!(running.len(), 2, "{ts:?}");
    assert!(running.iter().all(|t| t["node"] == "po-m"), "{ts:?}");

    // Restart condition none: one failed attempt, never restarted.
    m.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "once",
        "--driver",
        "process",
        "--restart-condition",
        "none",
        "--restart-delay",
        "100ms",
        "/bin/sh",
        "-c",
        "exit 3",
    ])?;
    poll_until("the single attempt failed", Duration::from_secs(20), || {
        let ts = tasks(&m, "once")?;
        Ok((ts.len() == 1 && ts[0]["state"] == "failed" && ts[0]["exit_code"] == 3).then_some(()))
    })?;
    Poll::new("a single attempt", Duration::from_secs(2))
        .every(Duration::from_millis(100))
        .holds(|| {
            let ts = tasks(&m, "once")?;
            ensure!(ts.len() == 1, "{} tasks: {ts:?}", ts.len());
            Ok(())
        })?;

    // on-failure with at most 2 restarts: three attempts, all failed, then nothing more.
    m.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "twice",
        "--driver",
        "process",
        "--restart-condition",
        "on-failure",
        "--restart-max-attempts",
        "2",
        "--restart-delay",
        "100ms",
        "/bin/sh",
        "-c",
        "exit 4",
    ])?;
    poll_until("three failed attempts", Duration::from_secs(30), || {
        let ts = tasks(&m, "twice")?;
        Ok((ts.len() == 3 && count(&ts, "failed") == 3).then_some(()))
    })?;
    Poll::new("three attempts", Duration::from_secs(2))
        .every(Duration::from_millis(100))
        .holds(|| {
            let ts = tasks(&m, "twice")?;
            ensure!(ts.len() == 3, "{} tasks: {ts:?}", ts.len());
            Ok(())
        })?;

    // on-failure does not restart a task that completed.
    m.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "done",
        "--driver",
        "process",
        "--restart-condition",
        "on-failure",
        "--restart-delay",
        "100ms",
        "/bin/sh",
        "-c",
        "exit 0",
    ])?;
    poll_until("complete", Duration::from_secs(20), || {
        let ts = tasks(&m, "done")?;
        Ok((ts.len() == 1 && ts[0]["state"] == "complete").then_some(()))
    })?;
    Poll::new("one complete task", Duration::from_secs(1))
        .every(Duration::from_millis(100))
        .holds(|| {
            let ts = tasks(&m, "done")?;
            ensure!(ts.len() == 1, "{} tasks: {ts:?}", ts.len());
            Ok(())
        })?;

    // Process driver self-heals: kill its process, a new task replaces it.
    m.ok(&[
        "service",
        "create",
        "--name",
        "heal",
        "--driver",
        "process",
        "--restart-delay",
        "200ms",
        "/bin/sleep",
        "3607",
    ])?;
    poll_until("the heal task running", Duration::from_secs(20), || {
        Ok((count(&tasks(&m, "heal")?, "running") == 1).then_some(()))
    })?;
    // Only this test's task: `/bin/sleep 3607` running under one of its daemons' state dirs
    // (a machine-wide pkill would hit other runs).
    let dirs = [&m.state_dir, &a.state_dir, &b.state_dir];
    let victims = task_pids("3607", &dirs);
    assert_eq!(victims.len(), 1, "the heal task's process: {victims:?}");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(victims[0]),
        nix::sys::signal::Signal::SIGKILL,
    )?;
    poll_until("a replacement running", Duration::from_secs(20), || {
        let ts = tasks(&m, "heal")?;
        Ok((count(&ts, "failed") == 1 && count(&ts, "running") == 1).then_some(()))
    })?;
    for s in [
        "one-each",
        "huge",
        "on-managers",
        "once",
        "twice",
        "done",
        "heal",
    ] {
        m.ok(&["service", "rm", s])?;
    }
    Ok(())
}
