//! Issue 20: a step of the leader's wall clock (NTP correcting a clock it found far off, a
//! Pi booting without a real-time clock) does not stall what the state schedules by time.
//! The daemon runs under libfaketime (Debian's `faketime`, installed by scripts/test.sh),
//! which steps its wall clock and leaves its monotonic clock alone, as a real step does.
//!
//! Address block: 127.0.112.x.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;
use shoal_tests::{Daemon, Poll, faketime_lib, tasks};

/// A task's restart delay: long enough that a clock step lands inside the wait.
const DELAY: Duration = Duration::from_secs(10);
/// How long the replacement may take after the failure: the delay, libfaketime's one-second
/// re-read, a reconcile pass and the start — far less than the hour a followed step
/// would add.
const BOUND: Duration = Duration::from_secs(25);

fn ids_in(ts: &[Value], state: &str) -> Vec<String> {
    ts.iter()
        .filter(|t| t["state"] == state)
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect()
}

/// Waits for a running task of `crash` that is not in `seen`; returns its ID.
fn next_running(m: &Daemon, seen: &[String], what: &str) -> Result<String> {
    Poll::new(what, BOUND)
        .every(Duration::from_millis(200))
        .until(|| {
            let ts = tasks(m, "crash")?;
            Ok(ids_in(&ts, "running")
                .into_iter()
                .find(|id| !seen.contains(id)))
        })
}

/// Waits until task `id` has failed.
fn failed(m: &Daemon, id: &str) -> Result<()> {
    Poll::new(&format!("task {id} to fail"), Duration::from_secs(20))
        .every(Duration::from_millis(100))
        .until(|| {
            let ts = tasks(m, "crash")?;
            Ok(ids_in(&ts, "failed").iter().any(|f| f == id).then_some(()))
        })
}

/// Issue 20: a task fails while the leader's clock is an hour ahead, and the clock steps
/// back before the restart delay is over: the replacement still starts after about the
/// delay. Then a task fails, the clock steps an hour back and stays there: the replacement
/// again starts after about the delay. A leader that followed its wall clock would wait an
/// hour in both cases (the restart "due" an hour after its failure, or an hour behind).
#[test]
fn issue_20_a_stepped_leader_clock_does_not_stall_restarts() -> Result<()> {
    let lib = faketime_lib()
        .context("libfaketime is missing: install Debian's faketime (scripts/test.sh does)")?;
    let mut m = Daemon::new("ck-m", "127.0.112.1:4747")?;
    m.extra = vec!["--drivers".into(), "process".into()];
    m.fake_clock(&lib)?;
    m.start()?;
    m.ok(&["init"])?;
    let delay = format!("{}s", DELAY.as_secs());
    m.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "crash",
        "--driver",
        "process",
        "--restart-condition",
        "any",
        "--restart-delay",
        &delay,
        "/bin/sh",
        "-c",
        "sleep 4; exit 1",
    ])?;
    let mut seen = Vec::new();

    // A step forward inside the wait, then back.
    let first = next_running(&m, &seen, "the first task to run")?;
    seen.push(first.clone());
    m.set_clock(3_600)?;
    failed(&m, &first)?;
    let failed_at = Instant::now();
    m.set_clock(0)?;
    let second = next_running(&m, &seen, "a replacement after a step forward and back")?;
    println!(
        "replacement {second} running {:.1} s after the failure (step +1 h, then back)",
        failed_at.elapsed().as_secs_f64()
    );
    seen.push(second.clone());

    // A step back that stays, inside the wait.
    failed(&m, &second)?;
    let failed_at = Instant::now();
    m.set_clock(-3_600)?;
    let third = next_running(&m, &seen, "a replacement after a step back")?;
    println!(
        "replacement {third} running {:.1} s after the failure (step -1 h, kept)",
        failed_at.elapsed().as_secs_f64()
    );
    assert!(
        m.log().contains("the wall clock"),
        "the daemon did not say its clock stepped"
    );
    Ok(())
}
