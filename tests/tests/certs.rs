//! Issue 14: node certificates have a finite lifetime, are renewed over the worker session
//! before they expire, and a node that was away past expiry must join again.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use shoal_tests::{Daemon, Poll, join_token, node_status, poll_until};

/// The node certificate's `notAfter` (Unix seconds) from a daemon's `node.json`.
fn cert_not_after(d: &Daemon) -> Result<i64> {
    let cfg = shoal::config::SavedConfig::load(&d.state_dir.join("node.json"))?;
    let cluster = cfg.cluster.context("no cluster in node.json")?;
    Ok(shoal::pki::parse_cert(&cluster.node_cert)?.not_after)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Issue 14: node certificates have a finite lifetime and are renewed over the worker
/// session before they expire; a node away past expiry is refused until it joins again.
#[test]
fn issue_14_certificates_expire_renew_over_the_session_and_expired_nodes_rejoin() -> Result<()> {
    const LIFETIME: i64 = 24;
    let mut m = Daemon::new("cm1", "127.0.60.1:4747")?;
    m.extra = vec!["--cert-expiry".into(), format!("{LIFETIME}s")];
    let mut w = Daemon::new("cw1", "127.0.60.2:4747")?;
    let mut late = Daemon::new("cw2", "127.0.60.3:4747")?;
    m.start()?;
    w.start()?;
    late.start()?;
    m.ok(&["init"])?;
    let token = join_token(&m, "worker")?;
    w.ok(&["join", "--token", &token, "127.0.60.1:4747"])?;
    late.ok(&["join", "--token", &token, "127.0.60.1:4747"])?;

    // Issued with the manager's lifetime, not forever.
    let first = cert_not_after(&w)?;
    assert!(
        (first - (now() + LIFETIME)).abs() <= 3,
        "worker certificate valid until {first}, expected about now + {LIFETIME}s"
    );
    let manager_first = cert_not_after(&m)?;
    assert!(manager_first <= now() + LIFETIME + 3, "{manager_first}");

    // `late` goes away before its certificate expires.
    late.stop()?;

    // The worker gets a new certificate over its session (a third of the lifetime before
    // expiry), and the manager renews its own from the CA.
    let renewed = poll_until(
        "the worker's certificate renewed",
        Duration::from_secs(LIFETIME as u64 + 10),
        || {
            let t = cert_not_after(&w)?;
            Ok((t > first).then_some(t))
        },
    )?;
    assert!(renewed > first);
    poll_until(
        "the manager's certificate renewed",
        Duration::from_secs(LIFETIME as u64 + 10),
        || Ok((cert_not_after(&m)? > manager_first).then_some(())),
    )?;

    // Past the first certificate's expiry, the worker still talks to the cluster: a
    // restart makes it connect afresh, with the renewed certificate only.
    let wait_until = Instant::now() + Duration::from_secs((first - now()).max(0) as u64 + 2);
    poll_until(
        "the first certificate to expire",
        Duration::from_secs(60),
        || Ok((Instant::now() >= wait_until).then_some(())),
    )?;
    w.stop()?;
    poll_until("cw1 down", Duration::from_secs(20), || {
        Ok((node_status(&m, "cw1")?.as_deref() == Some("down")).then_some(()))
    })?;
    w.start()?;
    poll_until(
        "cw1 ready again on its renewed certificate",
        Duration::from_secs(20),
        || Ok((node_status(&m, "cw1")?.as_deref() == Some("ready")).then_some(())),
    )?;

    // The node that was away past its certificate's expiry cannot come back by itself; it
    // says what to do, and joins again with a token.
    late.start()?;
    let warning = poll_until("cw2's expiry warning", Duration::from_secs(10), || {
        let info = late.json(&["info"])?;
        Ok(info["warning"]
            .as_str()
            .filter(|w| w.contains("expired"))
            .map(str::to_string))
    })?;
    assert!(warning.contains("shoal join"), "{warning}");
    poll_until("cw2 down", Duration::from_secs(20), || {
        Ok((node_status(&m, "cw2")?.as_deref() == Some("down")).then_some(()))
    })?;
    // It stays down: an expired certificate gets no connection.
    Poll::new("cw2 down", Duration::from_secs(3))
        .every(Duration::ZERO)
        .holds(|| {
            let status = node_status(&m, "cw2")?;
            ensure!(
                status.as_deref() == Some("down"),
                "cw2 is {status:?}\n{}",
                m.log_tail()
            );
            Ok(())
        })?;
    late.ok(&["leave", "--force"])?;
    late.ok(&["join", "--token", &token, "127.0.60.1:4747"])?;
    poll_until(
        "cw2 ready after joining again",
        Duration::from_secs(20),
        || Ok((node_status(&m, "cw2")?.as_deref() == Some("ready")).then_some(())),
    )?;
    Ok(())
}
