//! Issue 11: placement in the running cluster — labels and constraints, drain, global.
//!
//! Address block: 127.0.11.x.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Result;
use serde_json::Value;
use shoal_tests::{ClusterContainers, Daemon, docker_ready, join_token, poll_until, tasks};

const IMAGE: &str = shoal_tests::TEST_IMAGE;

/// Running tasks per node hostname, and the pending reasons.
fn placement(m: &Daemon, service: &str) -> Result<(BTreeMap<String, usize>, Vec<String>)> {
    let mut on = BTreeMap::new();
    let mut pending = Vec::new();
    for t in &tasks(m, service)? {
        if t["desired_state"] != "running" {
            continue;
        }
        if t["state"] == "running" {
            *on.entry(t["node"].as_str().unwrap_or_default().to_string())
                .or_insert(0) += 1;
        } else if t["state"] == "pending" {
            pending.push(t["error"].as_str().unwrap_or_default().to_string());
        }
    }
    Ok((on, pending))
}

fn node_field(m: &Daemon, host: &str, field: &str) -> Result<Value> {
    let nodes = m.json(&["node", "ls"])?;
    Ok(nodes
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["hostname"] == host)
        .map(|n| n[field].clone())
        .unwrap_or(Value::Null))
}

/// Issue 11: on real Docker, label constraints are honoured (tasks wait pending with the
/// reason while no node fits, and are placed once one does), a bad constraint is refused,
/// drain moves tasks off a node, and a global service runs one task on every eligible node,
/// following joins, availability and the drivers a node offers.
#[test]
fn labels_constraints_drain_and_global() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let mut m = Daemon::new("pl-m", "127.0.11.1:4747")?;
    let mut a = Daemon::new("pl-a", "127.0.11.2:4747")?;
    let mut b = Daemon::new("pl-b", "127.0.11.3:4747")?;
    m.start()?;
    a.start()?;
    b.start()?;
    m.ok(&["init"])?;
    let cluster = m.json(&["info"])?["cluster_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let _cleanup = ClusterContainers(cluster);
    let t = join_token(&m, "worker")?;
    a.ok(&["join", "--token", &t])?;
    b.ok(&["join", "--token", &t])?;

    // Labels: add, shown in node ls JSON.
    m.ok(&["node", "update", "--label-add", "zone=attic", "pl-a"])?;
    assert_eq!(node_field(&m, "pl-a", "labels")?["zone"], "attic");

    // A label constraint is honoured.
    m.ok(&[
        "service",
        "create",
        "--name",
        "attic",
        "--replicas",
        "2",
        "--constraint",
        "node.labels.zone==attic",
        IMAGE,
        "sleep",
        "3600",
    ])?;
    let (on, _) = placement(&m, "attic")?;
    assert_eq!(on.get("pl-a"), Some(&2), "{on:?}");

    // A bad constraint is refused with the parser's reason; nothing is created.
    let err = m.fails(&[
        "service",
        "create",
        "--name",
        "bad",
        "--constraint",
        "node.foo==x",
        IMAGE,
    ])?;
    assert!(err.contains("node.foo"), "{err}");

    // Removing the label: the tasks cannot stay; none fits, so they wait pending with why.
    m.ok(&["node", "update", "--label-rm", "zone", "pl-a"])?;
    poll_until(
        "attic tasks pending with a reason",
        Duration::from_secs(30),
        || {
            let (on, pending) = placement(&m, "attic")?;
            Ok((on.is_empty()
                && pending.len() == 2
                && pending.iter().all(|p| p.contains("zone=attic")))
            .then_some(()))
        },
    )?;
    // Placed again as soon as a node qualifies.
    m.ok(&["node", "update", "--label-add", "zone=attic", "pl-b"])?;
    poll_until("attic tasks on pl-b", Duration::from_secs(30), || {
        let (on, _) = placement(&m, "attic")?;
        Ok((on.get("pl-b") == Some(&2)).then_some(()))
    })?;

    // Drain: tasks move off; back to active.
    m.ok(&[
        "service",
        "create",
        "--name",
        "spread",
        "--replicas",
        "3",
        IMAGE,
        "sleep",
        "3600",
    ])?;
    m.ok(&["node", "update", "--availability", "drain", "pl-b"])?;
    assert_eq!(node_field(&m, "pl-b", "availability")?, "drain");
    poll_until(
        "nothing on the drained node",
        Duration::from_secs(30),
        || {
            let (on, _) = placement(&m, "spread")?;
            Ok((!on.contains_key("pl-b") && on.values().sum::<usize>() == 3).then_some(()))
        },
    )?;

    // Global: one task per eligible node, none on the drained one; a node back to
    // active gets one.
    m.ok(&[
        "service",
        "create",
        "--name",
        "everywhere",
        "--mode",
        "global",
        IMAGE,
        "sleep",
        "3600",
    ])?;
    let (on, _) = placement(&m, "everywhere")?;
    assert_eq!(on.len(), 2, "{on:?}");
    assert!(!on.contains_key("pl-b"), "{on:?}");
    m.ok(&["node", "update", "--availability", "active", "pl-b"])?;
    poll_until("a global task on pl-b", Duration::from_secs(30), || {
        let (on, _) = placement(&m, "everywhere")?;
        Ok((on.len() == 3).then_some(()))
    })?;

    // Nodes joining later: one offering Docker gets a global task; one that offers only
    // the process driver gets none (tasks go only where their driver is).
    let mut c = Daemon::new("pl-c", "127.0.11.4:4747")?;
    c.extra = vec!["--drivers".into(), "process".into()];
    let mut d = Daemon::new("pl-d", "127.0.11.5:4747")?;
    c.start()?;
    d.start()?;
    c.ok(&["join", "--token", &t])?;
    d.ok(&["join", "--token", &t])?;
    assert_eq!(
        node_field(&m, "pl-c", "drivers")?,
        serde_json::json!(["process"])
    );
    poll_until(
        "a global task on the late node",
        Duration::from_secs(30),
        || {
            let (on, _) = placement(&m, "everywhere")?;
            Ok((on.contains_key("pl-d") && on.len() == 4).then_some(()))
        },
    )?;
    let (on, _) = placement(&m, "everywhere")?;
    assert!(!on.contains_key("pl-c"), "{on:?}");
    // Its drivers change (restarted offering Docker too): the record follows and the
    // global service covers it.
    c.kill9();
    c.extra.clear();
    c.start()?;
    poll_until(
        "pl-c reports docker and gets a global task",
        Duration::from_secs(30),
        || {
            let drivers = node_field(&m, "pl-c", "drivers")?;
            let has_docker = drivers
                .as_array()
                .is_some_and(|a| a.iter().any(|d| d == "docker"));
            let (on, _) = placement(&m, "everywhere")?;
            Ok((has_docker && on.contains_key("pl-c")).then_some(()))
        },
    )?;
    Ok(())
}
