//! Issue 23 (part 4): mounts and environment files on services, on a real daemon and Docker.
//! One node on 127.0.150.1. A service gets a read-only bind mount of a temp dir, a named
//! volume and a tmpfs, and variables from an `--env-file`; the test looks inside its
//! container with `docker exec`, then removes a mount with `service update --mount-rm` and
//! sees the new task without it.
//!
//! Cleaning up: the [`Daemon`] (dropped also when the test fails) kills the daemon and its
//! tasks, a [`ClusterContainers`] guard removes the cluster's containers, and a [`Volume`]
//! guard then removes the test's volume. Needs Docker and the test image: skips without them
//! and fails under `SHOAL_REQUIRE_DOCKER=1`.

use std::time::Duration;

use anyhow::{Result, ensure};
use shoal_tests::{
    ClusterContainers, cluster_id, docker, docker_ready, poll_until, running_container,
    service_containers, start_cluster_from,
};

const IMAGE: &str = shoal_tests::TEST_IMAGE;

/// Removes a Docker volume when dropped (after the containers: declare it first).
struct Volume(String);

impl Drop for Volume {
    fn drop(&mut self) {
        let _ = docker(&["volume", "rm", "-f", &self.0]);
    }
}

/// A bind mount (read-only), a named volume and a tmpfs reach the task's container as asked,
/// with the variables of an `--env-file`; `--mount-rm` takes one away with a rolling update.
#[test]
fn issue_23_mounts_and_env_files_reach_the_container() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let volume = Volume(format!("shoal-t23-{}", std::process::id()));
    let host = tempfile::tempdir()?;
    std::fs::write(host.path().join("hello"), "from the node\n")?;
    let env_file = host.path().join("app.env");
    std::fs::write(&env_file, "# settings\nGREETING=bonjour\nMODE=test\n")?;
    let (ms, _) = start_cluster_from("mt-", 150, 1, 1, 0)?;
    let m = &ms[0];
    let cluster = cluster_id(m)?;
    let _containers = ClusterContainers(cluster.clone());
    let bind = format!(
        "type=bind,source={},target=/cfg,readonly",
        host.path().display()
    );
    let vol = format!("type=volume,source={},target=/data", volume.0);
    m.ok(&[
        "service",
        "create",
        "--name",
        "app",
        "--mount",
        &bind,
        "--mount",
        &vol,
        "--mount",
        "type=tmpfs,target=/scratch",
        "--env-file",
        &env_file.display().to_string(),
        "-e",
        "MODE=prod",
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; sleep 3600 & wait",
    ])?;
    let id = running_container(m, &cluster, "app", 1)?;
    let exec = |script: &str| docker(&["exec", &id, "sh", "-c", script]);

    ensure!(exec("cat /cfg/hello")?.trim() == "from the node");
    let denied = exec("touch /cfg/new 2>&1 && echo written || echo denied")?;
    ensure!(
        denied.contains("denied") && denied.contains("Read-only"),
        "the bind mount should be read-only: {denied}"
    );
    exec("echo kept > /data/file")?;
    let inspect = docker(&["volume", "inspect", "-f", "{{.Name}}", &volume.0])?;
    ensure!(
        inspect.trim() == volume.0,
        "the volume should exist: {inspect}"
    );
    let mounts = exec("cat /proc/mounts")?;
    ensure!(
        mounts
            .lines()
            .any(|l| l.starts_with("tmpfs /scratch tmpfs")),
        "/scratch should be a tmpfs:\n{mounts}"
    );
    let env = exec("env")?;
    ensure!(
        env.lines().any(|l| l == "GREETING=bonjour") && env.lines().any(|l| l == "MODE=prod"),
        "the env file's variables, -e winning, should be in the task:\n{env}"
    );
    let spec = m.inspect(&["service", "inspect", "app"])?;
    let kinds: Vec<&str> = spec["spec"]["mounts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["type"].as_str())
        .collect();
    ensure!(
        kinds == ["bind", "volume", "tmpfs"],
        "inspect shows {kinds:?}"
    );

    m.ok(&["service", "update", "--mount-rm", "/scratch", "app"])?;
    let id = running_container(m, &cluster, "app", 2)?;
    let mounts = docker(&["exec", &id, "cat", "/proc/mounts"])?;
    ensure!(
        !mounts.lines().any(|l| l.contains(" /scratch ")),
        "/scratch should be gone after --mount-rm:\n{mounts}"
    );
    let kept = docker(&["exec", &id, "cat", "/data/file"])?;
    ensure!(
        kept.trim() == "kept",
        "the volume's data should outlive the task"
    );
    Ok(())
}

/// The bits of `CapBnd` in `/proc/1/status` of container `id`.
fn bounding_caps(id: &str) -> Result<u64> {
    let status = docker(&["exec", id, "cat", "/proc/1/status"])?;
    let hex = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(str::trim)
        .unwrap_or_default()
        .to_string();
    Ok(u64::from_str_radix(&hex, 16)?)
}

/// `CAP_NET_RAW` and `CAP_SYS_RAWIO` (linux/capability.h).
const NET_RAW: u64 = 1 << 13;
const SYS_RAWIO: u64 = 1 << 17;

/// User, working directory, hostname, entrypoint, init, a device and a dropped capability
/// reach the container; a task with an added capability is placed only on a node whose
/// daemon was started with `--allow-privileged` (pending with the scheduler's reason where
/// none may run it) and granted there; a task is placed only where its device is.
#[test]
fn issue_23_task_options_reach_the_container_and_privileges_need_the_nodes_consent() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let (ms, ws) = shoal_tests::start_cluster_with("mo-", 150, 11, 1, 1, |d| {
        if d.name.contains('w') {
            d.extra.push("--allow-privileged".into());
        }
        Ok(())
    })?;
    let (m, w) = (&ms[0], &ws[0]);
    let cluster = cluster_id(m)?;
    let _containers = ClusterContainers(cluster.clone());
    let on_m = format!("node.hostname=={}", m.name);
    let on_w = format!("node.hostname=={}", w.name);
    m.ok(&[
        "service",
        "create",
        "--name",
        "opts",
        "--constraint",
        &on_m,
        "--user",
        "1000:1000",
        "--workdir",
        "/srv",
        "--hostname",
        "pi-web",
        "--entrypoint",
        "sh -c",
        "--init",
        "--device",
        "/dev/null:/dev/gpio-test:rw",
        "--cap-drop",
        "net_raw",
        IMAGE,
        "trap 'exit 0' TERM; sleep 3600 & wait",
    ])?;
    let id = running_container(m, &cluster, "opts", 1)?;
    let out = docker(&[
        "exec",
        &id,
        "sh",
        "-c",
        "id -u; id -g; pwd; hostname; test -c /dev/gpio-test && echo device; tr '\\0' ' ' < /proc/1/cmdline",
    ])?;
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    ensure!(
        lines.len() == 6
            && lines[..5] == ["1000", "1000", "/srv", "pi-web", "device"]
            && lines[5].contains("init"),
        "inside the task: {lines:?}"
    );
    ensure!(
        bounding_caps(&id)? & NET_RAW == 0,
        "NET_RAW should be dropped"
    );
    let spec = m.inspect(&["service", "inspect", "opts"])?;
    ensure!(
        spec["spec"]["cap_drop"] == serde_json::json!(["NET_RAW"]),
        "inspect shows the capability as Docker writes it: {}",
        spec["spec"]["cap_drop"]
    );

    // Never placed where the daemon does not allow it: pending, with the scheduler's reason
    // (the node's own refusal at start stays as the second line of defence).
    m.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "raw-m",
        "--constraint",
        &on_m,
        "--cap-add",
        "SYS_RAWIO",
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; sleep 3600 & wait",
    ])?;
    let reason = poll_until(
        "raw-m's task to wait for a node that allows it",
        Duration::from_secs(60),
        || {
            let rows = shoal_tests::tasks(m, "raw-m")?;
            let reason = rows
                .iter()
                .filter(|t| t["state"] == "pending")
                .filter_map(|t| t["error"].as_str())
                .find(|e| e.contains("not allow privileged tasks"))
                .map(str::to_string);
            ensure!(
                reason.is_some(),
                "not pending with the reason yet: {rows:?}"
            );
            Ok(reason)
        },
    )?;
    ensure!(
        service_containers(&cluster, "raw-m")?.is_empty(),
        "no container may run for a task no node may run ({reason})"
    );
    // Unconstrained, two privileged replicas both land on the one node that allows them.
    m.ok(&[
        "service",
        "create",
        "--name",
        "raw-any",
        "--replicas",
        "2",
        "--cap-add",
        "SYS_RAWIO",
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; sleep 3600 & wait",
    ])?;
    let rows = shoal_tests::tasks(m, "raw-any")?;
    let nodes: Vec<&str> = rows
        .iter()
        .filter(|t| t["state"] == "running")
        .filter_map(|t| t["node"].as_str())
        .collect();
    ensure!(
        nodes == [w.name.as_str(), w.name.as_str()],
        "privileged replicas ran on {nodes:?}, not both on {}",
        w.name
    );
    // A device no node has: pending with the reason; one every node has: placed.
    m.ok(&[
        "service",
        "create",
        "-d",
        "--name",
        "gpio",
        "--device",
        "/dev/shoal-no-such-device",
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; sleep 3600 & wait",
    ])?;
    poll_until(
        "gpio to wait for the device",
        Duration::from_secs(60),
        || {
            let rows = shoal_tests::tasks(m, "gpio")?;
            ensure!(
                rows.iter().any(|t| t["state"] == "pending"
                    && t["error"].as_str().is_some_and(
                        |e| e.contains("2 nodes lack device /dev/shoal-no-such-device")
                    )),
                "not pending with the reason yet: {rows:?}"
            );
            Ok(Some(()))
        },
    )?;
    // Granted where it does.
    m.ok(&[
        "service",
        "create",
        "--name",
        "raw-w",
        "--constraint",
        &on_w,
        "--cap-add",
        "SYS_RAWIO",
        IMAGE,
        "sh",
        "-c",
        "trap 'exit 0' TERM; sleep 3600 & wait",
    ])?;
    let id = running_container(m, &cluster, "raw-w", 1)?;
    ensure!(
        bounding_caps(&id)? & SYS_RAWIO != 0,
        "SYS_RAWIO should be added on the node that allows it"
    );
    Ok(())
}
