//! Issue 23 (part 3): configs on a real daemon and Docker, one node on 127.0.151.1. A config
//! made from a file reaches the task's container as a read-only file with the owner and mode
//! asked for; a config in use cannot be removed; a new config given with `service update`
//! rolls the tasks and the old one can then be removed.
//!
//! Cleaning up: the [`Daemon`] (dropped also when the test fails) kills the daemon and its
//! tasks, and a [`ClusterContainers`] guard removes the cluster's containers (the files live
//! in the daemon's state dir, removed with it). Needs Docker and the test image: skips
//! without them and fails under `SHOAL_REQUIRE_DOCKER=1`.

use anyhow::{Result, ensure};
use shoal_tests::{
    ClusterContainers, cluster_id, docker, docker_ready, running_container, start_cluster_from,
};

const IMAGE: &str = shoal_tests::TEST_IMAGE;

/// A config reaches the task as a read-only file; in use it cannot be removed; a new one
/// rolls the service and frees the old one.
#[test]
fn issue_23_a_config_reaches_the_task_and_cannot_be_removed_while_used() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let v1 = dir.path().join("v1.conf");
    std::fs::write(&v1, "greeting = hello\n")?;
    let v2 = dir.path().join("v2.conf");
    std::fs::write(&v2, "greeting = bonjour\n")?;
    let (ms, _) = start_cluster_from("cf-", 151, 1, 1, 0)?;
    let m = &ms[0];
    let cluster = cluster_id(m)?;
    let _containers = ClusterContainers(cluster.clone());
    m.ok(&["config", "create", "app-v1", &v1.display().to_string()])?;
    m.ok(&["config", "create", "app-v2", &v2.display().to_string()])?;
    let dup = m.fails(&["config", "create", "app-v1", &v2.display().to_string()])?;
    ensure!(dup.contains("already exists"), "a second app-v1: {dup}");
    let ls = m.ok(&["config", "ls"])?;
    ensure!(
        ls.contains("app-v1") && ls.contains("app-v2"),
        "config ls:\n{ls}"
    );

    m.ok(&[
        "service",
        "create",
        "--name",
        "app",
        "--config",
        "source=app-v1,target=/etc/app.conf,uid=100,gid=101,mode=0440",
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; sleep 3600 & wait",
    ])?;
    let id = running_container(m, &cluster, "app", 1)?;
    let out = docker(&[
        "exec",
        &id,
        "sh",
        "-c",
        "cat /etc/app.conf; stat -c '%u %g %a' /etc/app.conf; echo x >> /etc/app.conf 2>/dev/null && echo written || echo read-only",
    ])?;
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    ensure!(
        lines == ["greeting = hello", "100 101 440", "read-only"],
        "inside the task: {lines:?}"
    );
    let missing = m.fails(&["service", "update", "--config-add", "nope", "app"])?;
    ensure!(missing.contains("no such config: nope"), "{missing}");
    let in_use = m.fails(&["config", "rm", "app-v1"])?;
    ensure!(
        in_use.contains("in use by service `app`"),
        "removing a config in use: {in_use}"
    );

    m.ok(&[
        "service",
        "update",
        "--config-rm",
        "app-v1",
        "--config-add",
        "source=app-v2,target=/etc/app.conf",
        "app",
    ])?;
    let id = running_container(m, &cluster, "app", 2)?;
    let now = docker(&["exec", &id, "cat", "/etc/app.conf"])?;
    ensure!(
        now.trim() == "greeting = bonjour",
        "after the update: {now}"
    );
    m.ok(&["config", "rm", "app-v1"])?;
    let ls = m.ok(&["config", "ls"])?;
    ensure!(!ls.contains("app-v1"), "app-v1 should be gone:\n{ls}");
    Ok(())
}
