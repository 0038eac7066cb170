//! Issue 5: join tokens, joining over QUIC, live node status from gossip.
//!
//! Address block: 127.0.5.x.

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use serde_json::Value;
use shoal_tests::{Daemon, Poll, join_token, node_status, poll_until};

/// Issue 5: join tokens (Docker's wording, stable until rotated, `--ttl`, tampering
/// refused), joining over QUIC as a worker, live node status from gossip (`down` after a
/// `kill -9`, `ready` again), `leave`, and `node rm` of a worker, which is told and stays
/// out.
#[test]
fn join_tokens_status_leave_and_rm() -> Result<()> {
    let mut m = Daemon::new("m1", "127.0.5.1:4747")?;
    let mut w1 = Daemon::new("w1", "127.0.5.2:4747")?;
    let mut w2 = Daemon::new("w2", "127.0.5.3:4747")?;
    m.start()?;
    w1.start()?;
    w2.start()?;
    m.ok(&["init"])?;

    // Docker's wording; the same token until rotated.
    let text = m.ok(&["join-token", "worker"])?;
    assert!(
        text.starts_with("To add a worker to this cluster, run the following command:"),
        "{text}"
    );
    let t1 = join_token(&m, "worker")?;
    assert!(
        text.contains(&format!("shoal join --token {t1} 127.0.5.1:4747")),
        "{text}"
    );
    assert_eq!(join_token(&m, "worker")?, t1);
    // --ttl mints a fresh one each time.
    let e1 = m.ok(&["join-token", "-q", "--ttl", "1h", "worker"])?;
    let e2 = m.ok(&["join-token", "-q", "--ttl", "1h", "worker"])?;
    assert_ne!(e1, e2);

    // A tampered token changes nothing.
    let mut bad = t1.clone();
    let last = bad.pop().unwrap_or('A');
    bad.push(if last == 'A' { 'B' } else { 'A' });
    let err = w1.fails(&["join", "--token", &bad, "127.0.5.1:4747"])?;
    assert!(err.starts_with("Error:"), "{err}");
    assert_eq!(w1.json(&["info"])?["cluster"], "inactive");

    // Join with no address: the token carries the manager's.
    let out = w1.ok(&["join", "--token", &t1])?;
    assert!(
        out.contains("joined the cluster as a worker (via 127.0.5.1:4747)"),
        "{out}"
    );
    let info = w1.json(&["info"])?;
    assert_eq!(info["cluster"], "active");
    assert_eq!(info["role"], "worker");
    let err = w1.fails(&["node", "ls"])?;
    assert!(
        err.contains("this node is not a manager: run it on a manager or point -H at one"),
        "{err}"
    );
    poll_until("w1 ready", Duration::from_secs(10), || {
        Ok((node_status(&m, "w1")?.as_deref() == Some("ready")).then_some(()))
    })?;
    // Workers learn the leader through gossip.
    let leader = m.json(&["info"])?["node_id"].clone();
    poll_until("w1 knows the leader", Duration::from_secs(10), || {
        Ok((w1.json(&["info"])?["leader"] == leader).then_some(()))
    })?;

    // Rotation: the old token is refused from then on.
    let rotated = m.ok(&["join-token", "--rotate", "worker"])?;
    assert!(
        rotated.contains("Successfully rotated worker join token."),
        "{rotated}"
    );
    let t2 = join_token(&m, "worker")?;
    assert_ne!(t1, t2);
    let err = w2.fails(&["join", "--token", &t1, "127.0.5.1:4747"])?;
    assert!(err.contains("rotated"), "{err}");
    w2.ok(&["join", "--token", &t2, "127.0.5.1:4747"])?;
    poll_until("w2 ready", Duration::from_secs(10), || {
        Ok((node_status(&m, "w2")?.as_deref() == Some("ready")).then_some(()))
    })?;

    // kill -9 a worker: down within the detection bound.
    let killed = Instant::now();
    w2.kill9();
    poll_until("w2 down", Duration::from_secs(15), || {
        Ok((node_status(&m, "w2")?.as_deref() == Some("down")).then_some(()))
    })?;
    eprintln!(
        "killed worker marked down after {} ms",
        killed.elapsed().as_millis()
    );
    // Restart it: ready again, same ID.
    w2.start()?;
    poll_until("w2 ready again", Duration::from_secs(15), || {
        Ok((node_status(&m, "w2")?.as_deref() == Some("ready")).then_some(()))
    })?;

    // leave on a worker: shown down; a ready node needs --force to be removed.
    let err = m.fails(&["node", "rm", "w2"])?;
    assert!(err.contains("--force"), "{err}");
    w1.ok(&["leave"])?;
    assert_eq!(w1.json(&["info"])?["cluster"], "inactive");
    poll_until("w1 down after leave", Duration::from_secs(10), || {
        Ok((node_status(&m, "w1")?.as_deref() == Some("down")).then_some(()))
    })?;
    let w1_id = w1.json(&["info"])?["node_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    m.ok(&["node", "rm", "w1"])?;
    let nodes: Value = m.json(&["node", "ls"])?;
    assert!(
        nodes
            .as_array()
            .is_some_and(|a| a.iter().all(|n| n["id"] != w1_id.as_str()))
    );
    let err = m.fails(&["node", "rm", "nosuch"])?;
    assert!(err.contains("no such node"), "{err}");
    // A removed key is refused for good, even with a valid token (issue 14); the machine
    // joins again as a new node.
    let err = w1.fails(&["join", "--token", &t2, "127.0.5.1:4747"])?;
    assert!(err.contains("removed"), "{err}");
    w1.stop()?;
    std::fs::remove_file(w1.state_dir.join("node.key"))?;
    w1.start()?;
    w1.ok(&["join", "--token", &t2, "127.0.5.1:4747"])?;
    poll_until("w1 back", Duration::from_secs(10), || {
        Ok((node_status(&m, "w1")?.as_deref() == Some("ready")).then_some(()))
    })?;
    // --force removes a ready (running) node: it is disconnected and told so, and it does
    // not come back into the table.
    assert_eq!(node_status(&m, "w2")?.as_deref(), Some("ready"));
    m.ok(&["node", "rm", "--force", "w2"])?;
    assert!(node_status(&m, "w2")?.is_none());
    poll_until("w2 told it was removed", Duration::from_secs(30), || {
        let info = w2.json(&["info"])?;
        Ok(info["warning"]
            .as_str()
            .filter(|w| w.contains("removed"))
            .map(|_| ()))
    })?;
    Poll::new("the removed w2 out of node ls", Duration::from_secs(5))
        .every(Duration::from_millis(100))
        .holds(|| {
            ensure!(
                node_status(&m, "w2")?.is_none(),
                "the removed w2 is back in node ls"
            );
            Ok(())
        })?;
    Ok(())
}
