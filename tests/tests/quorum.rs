//! Issue 6: a manager quorum — joining managers, promote/demote, failover, quorum loss.
//!
//! Address block: 127.0.6.x.

use std::time::{Duration, Instant};

use anyhow::Result;
use shoal_tests::{Daemon, fails_within, join_token, poll_until, start_cluster};

fn manager_status(d: &Daemon) -> Result<Vec<(String, String, Option<String>)>> {
    let nodes = d.json(&["node", "ls"])?;
    Ok(nodes
        .as_array()
        .into_iter()
        .flatten()
        .map(|n| {
            (
                n["hostname"].as_str().unwrap_or_default().to_string(),
                n["role"].as_str().unwrap_or_default().to_string(),
                n["manager_status"].as_str().map(str::to_string),
            )
        })
        .collect())
}

fn leader_host(d: &Daemon) -> Result<Option<String>> {
    Ok(manager_status(d)?
        .into_iter()
        .find(|(_, _, s)| s.as_deref() == Some("leader"))
        .map(|(h, _, _)| h))
}

/// Polls a write (a label on node `w1`, which leaves the join tokens alone) on `d` until
/// it is acknowledged; returns how long that took.
fn wait_for_write(d: &Daemon, label: &str, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    poll_until("a write to be accepted", timeout, || {
        Ok(d.cli(&["node", "update", "--label-add", label, "w1"])?
            .status
            .success()
            .then_some(()))
    })?;
    Ok(start.elapsed())
}

/// Issue 6: three managers — any manager serves the API, workers refuse it; `kill -9` of
/// the leader: a new leader accepts writes and a rotation acknowledged before the kill
/// survives; with 2 of 3 down, writes fail with the quorum error (never hang) and work
/// again once a majority is back. Prints the failover time (`scripts/bench-failover.sh`).
#[test]
fn three_managers_failover_and_quorum_loss() -> Result<()> {
    let (mut ms, workers) = start_cluster("", 6, 3, 1)?;
    let w = &workers[0];
    let mt = join_token(&ms[0], "manager")?;
    let wt = join_token(&ms[0], "worker")?;
    poll_until("three reachable managers", Duration::from_secs(20), || {
        let s = manager_status(&ms[0])?;
        let managers = s.iter().filter(|(_, r, _)| r == "manager").count();
        let reachable = s
            .iter()
            .filter(|(_, _, st)| matches!(st.as_deref(), Some("leader" | "reachable")))
            .count();
        Ok((managers == 3 && reachable == 3).then_some(()))
    })?;
    // Any manager serves the API (forwarded to the leader); workers refuse.
    assert_eq!(leader_host(&ms[2])?.as_deref(), Some("m1"));
    let err = w.fails(&["node", "ls"])?;
    assert!(
        err.contains("this node is not a manager: run it on a manager or point -H at one"),
        "{err}"
    );
    // A manager token on a node already in the cluster: clear error, nothing changed.
    let err = ms[1].fails(&["join", "--token", &mt, "127.0.6.1:4747"])?;
    assert!(err.contains("already part of a cluster"), "{err}");

    // Bad input: unknown nodes, the last-manager rule is tested below.
    let err = ms[0].fails(&["node", "promote", "nosuch"])?;
    assert!(err.contains("no such node"), "{err}");
    let err = ms[0].fails(&["node", "promote", "m2"])?;
    assert!(err.contains("already a manager"), "{err}");

    // kill -9 the leader right after a rotation it acknowledged: a new leader accepts
    // writes, and that rotation survived (nothing rotates the worker token again before
    // this is checked: the writes below are labels).
    let rotated = ms[1]
        .ok(&["join-token", "--rotate", "-q", "worker"])?
        .trim()
        .to_string();
    assert_ne!(rotated, wt, "the rotation did not change the worker token");
    ms[0].kill9();
    let took = wait_for_write(&ms[1], "failover=1", Duration::from_secs(30))?;
    eprintln!(
        "leader killed -> write accepted after {} ms",
        took.as_millis()
    );
    let new_leader = poll_until("a new leader", Duration::from_secs(20), || {
        leader_host(&ms[1])
    })?;
    assert_ne!(new_leader, "m1");
    let err = ms[2].fails(&["join", "--token", &rotated, "127.0.6.2:4747"])?;
    assert!(err.contains("already part of a cluster"), "{err}");
    // The rotation acknowledged before the kill survived: the token it minted is still the
    // current one on both survivors, the pre-rotation token is refused as rotated, and the
    // minted one admits a new node.
    for d in &ms[1..] {
        assert_eq!(
            d.ok(&["join-token", "-q", "worker"])?.trim(),
            rotated,
            "the worker token on {} after the failover",
            d.name
        );
    }
    let mut w2 = Daemon::new("w2", "127.0.6.5:4747")?;
    w2.start()?;
    let err = w2.fails(&["join", "--token", &wt, "127.0.6.2:4747"])?;
    assert!(
        err.contains("this worker join token has been rotated"),
        "{err}"
    );
    w2.ok(&["join", "--token", &rotated, "127.0.6.2:4747"])?;

    // Quorum loss: 2 of 3 down. Writes fail with the reason (about 3 s), never hang.
    let survivor = if new_leader == "m2" { 2 } else { 1 };
    let other = 3 - survivor;
    ms[other].kill9();
    let (err, waited) = fails_within(
        &ms[survivor],
        &["join-token", "--rotate", "-q", "worker"],
        Duration::from_secs(60),
    )?;
    eprintln!(
        "write with quorum lost failed after {} ms",
        waited.as_millis()
    );
    assert!(err.contains("the cluster has lost quorum"), "{err}");
    assert!(
        err.contains("the outcome of this request is unknown"),
        "{err}"
    );
    let err = ms[survivor].fails(&["node", "ls"])?;
    assert!(err.contains("lost quorum"), "{err}");

    // A majority back: writes work again.
    ms[other].start()?;
    let took = wait_for_write(&ms[survivor], "restored=1", Duration::from_secs(30))?;
    eprintln!(
        "quorum restored -> write accepted after {} ms",
        took.as_millis()
    );
    ms[0].start()?;
    poll_until(
        "m1 back as a reachable manager",
        Duration::from_secs(20),
        || {
            let s = manager_status(&ms[survivor])?;
            Ok(s.iter()
                .any(|(h, _, st)| {
                    h == "m1" && matches!(st.as_deref(), Some("reachable" | "leader"))
                })
                .then_some(()))
        },
    )?;
    Ok(())
}

/// Issue 6: a worker promoted to a manager serves the API; the last manager cannot be
/// demoted; a demoted leader steps down and the other manager leads.
#[test]
fn promote_and_demote() -> Result<()> {
    let mut m = Daemon::new("pm1", "127.0.6.11:4747")?;
    let mut w = Daemon::new("pw1", "127.0.6.12:4747")?;
    m.start()?;
    w.start()?;
    m.ok(&["init"])?;
    let wt = join_token(&m, "worker")?;
    w.ok(&["join", "--token", &wt])?;
    let err = m.fails(&["node", "demote", "pm1"])?;
    assert!(err.contains("last manager"), "{err}");
    poll_until("pw1 ready", Duration::from_secs(10), || {
        let s = manager_status(&m)?;
        Ok(s.iter().any(|(h, _, _)| h == "pw1").then_some(()))
    })?;
    let out = m.ok(&["node", "promote", "pw1"])?;
    assert!(out.contains("Node pw1 promoted to a manager."), "{out}");
    poll_until(
        "pw1 is a manager that serves the API",
        Duration::from_secs(20),
        || Ok(w.cli(&["node", "ls"])?.status.success().then_some(())),
    )?;
    assert_eq!(w.json(&["info"])?["role"], "manager");
    // Demote the leader itself: it steps down and the other manager leads.
    let out = m.ok(&["node", "demote", "pm1"])?;
    assert!(out.contains("demoted"), "{out}");
    poll_until(
        "pw1 leads and pm1 is a worker",
        Duration::from_secs(20),
        || {
            let ok = leader_host(&w).ok().flatten().as_deref() == Some("pw1")
                && m.json(&["info"])?["role"] == "worker";
            Ok(ok.then_some(()))
        },
    )?;
    let err = m.fails(&["node", "ls"])?;
    assert!(err.contains("this node is not a manager"), "{err}");
    Ok(())
}
