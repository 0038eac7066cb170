//! Issue 14: removal is enforced everywhere — `node rm` reaches every node with
//! assignments, disconnects the removed node cluster-wide, and its key can never join
//! again by itself.

use std::time::Duration;

use anyhow::{Context, Result};
use shoal_tests::{join_token, poll_until, start_cluster};

/// Issue 14: `node rm` of a running worker reaches the other workers (saved in their
/// `node.json`), disconnects the removed node and tells it why; it stays out of the node
/// table and its key cannot join again, even with the current token.
#[test]
fn issue_14_node_rm_reaches_every_node_and_disconnects_the_removed_one() -> Result<()> {
    let (ms, ws) = start_cluster("rmv", 61, 1, 2)?;
    let m = &ms[0];
    let removed_key = shoal::pki::NodeKey::load(&ws[1].state_dir.join("node.key"))?.public_key();
    let m_key = shoal::pki::NodeKey::load(&m.state_dir.join("node.key"))?.public_key();
    // Every worker learns the managers from the leader (its session) and saves them.
    poll_until("rmvw1 knows the manager", Duration::from_secs(15), || {
        let cfg = shoal::config::SavedConfig::load(&ws[0].state_dir.join("node.json"))?;
        let c = cfg.cluster.context("no cluster")?;
        Ok(c.managers.contains(&m_key).then_some(()))
    })?;

    // Removed while running.
    m.ok(&["node", "rm", "--force", "rmvw2"])?;

    // The other worker is told (and keeps it across restarts: it is in node.json).
    poll_until("rmvw1 told of the removal", Duration::from_secs(15), || {
        let cfg = shoal::config::SavedConfig::load(&ws[0].state_dir.join("node.json"))?;
        let c = cfg.cluster.context("no cluster")?;
        Ok(c.removed.contains(&removed_key).then_some(()))
    })?;
    // The removed node is disconnected by the manager and says what happened.
    let warning = poll_until("rmvw2 told it was removed", Duration::from_secs(15), || {
        let info = ws[1].json(&["info"])?;
        Ok(info["warning"].as_str().map(str::to_string))
    })?;
    assert!(warning.contains("removed"), "{warning}");
    // It is gone from the node table and stays gone: its gossip and reconnects do not
    // bring it back.
    let nodes = m.json(&["node", "ls"])?;
    assert!(
        nodes
            .as_array()
            .is_some_and(|a| a.iter().all(|n| n["hostname"] != "rmvw2")),
        "{nodes}"
    );
    // Its key can never join again by itself, even with the current token.
    let token = join_token(m, "worker")?;
    ws[1].ok(&["leave", "--force"])?;
    let err = ws[1].fails(&["join", "--token", &token, &m.addr.to_string()])?;
    assert!(err.contains("removed"), "{err}");
    let nodes = m.json(&["node", "ls"])?;
    assert_eq!(nodes.as_array().map(Vec::len), Some(2), "{nodes}");
    Ok(())
}
