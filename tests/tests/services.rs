//! Issue 10: services on real Docker — create, scale, self-heal, node death, adoption.
//!
//! Address block: 127.0.10.x.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use shoal_tests::{
    ClusterContainers, Daemon, Poll, docker_ready, join_token, poll_until, task_containers, tasks,
};

const IMAGE: &str = shoal_tests::TEST_IMAGE;

fn containers(cluster: &str, node: &str) -> Result<Vec<String>> {
    shoal_tests::running_containers(cluster, &format!("shoal.node={node}"))
}

/// Running tasks (desired running) and the nodes they are on.
fn running(d: &Daemon, service: &str) -> Result<Vec<(u64, String)>> {
    Ok(tasks(d, service)?
        .iter()
        .filter(|t| t["desired_state"] == "running" && t["state"] == "running")
        .map(|t| {
            (
                t["slot"].as_u64().unwrap_or(0),
                t["node"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect())
}

/// The worker's resync interval (10 s, `WorkerConfig::new`) and a margin: long enough to see
/// a duplicate a late reconcile would start.
const ADOPTION_WATCH: Duration = Duration::from_secs(13);

/// How many times `d`'s log says its worker session to the leader was established.
fn sessions_established(d: &Daemon) -> usize {
    d.log()
        .matches("worker session to the leader established")
        .count()
}

/// Issue 10: a Docker service is created (Docker's progress output), spread, scaled up
/// and down, heals a killed container in its slot, and runs a dead node's tasks elsewhere;
/// the node coming back stops its stale copies, a restarted worker adopts its containers
/// (no duplicate, none stopped, past a resync), and `service rm` removes every container.
#[test]
fn services_create_scale_heal_and_node_death() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let mut m = Daemon::new("svc-m1", "127.0.10.1:4747")?;
    let mut w1 = Daemon::new("svc-w1", "127.0.10.2:4747")?;
    let mut w2 = Daemon::new("svc-w2", "127.0.10.3:4747")?;
    m.start()?;
    w1.start()?;
    w2.start()?;
    m.ok(&["init"])?;
    let cluster = m.json(&["info"])?["cluster_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let _cleanup = ClusterContainers(cluster.clone());
    let t = join_token(&m, "worker")?;
    w1.ok(&["join", "--token", &t])?;
    w2.ok(&["join", "--token", &t])?;
    let w2_id = w2.json(&["info"])?["node_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    // create waits and shows progress the way Docker does.
    let out = m.ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "3",
        IMAGE,
        "httpd",
        "-f",
        "-p",
        "8080",
    ])?;
    assert!(out.contains("overall progress: 3 out of 3 tasks"), "{out}");
    assert!(out.contains("verify: Service converged"), "{out}");
    let ls = m.json(&["service", "ls"])?;
    assert_eq!(ls[0]["name"], "web");
    assert_eq!(ls[0]["replicas"], 3);
    assert_eq!(ls[0]["running"], 3);
    assert_eq!(ls[0]["mode"], "replicated");
    assert_eq!(ls[0]["image"], IMAGE);
    assert!(m.ok(&["service", "ls"])?.contains("3/3"));
    // Spread over the three nodes, one each.
    let nodes: BTreeSet<String> = running(&m, "web")?.into_iter().map(|(_, n)| n).collect();
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let inspect = m.inspect(&["service", "inspect", "web"])?;
    assert_eq!(
        inspect["spec"]["args"],
        serde_json::json!(["httpd", "-f", "-p", "8080"])
    );
    // A worker refuses manager-only commands; ps from any manager works.
    let err = w1.fails(&["service", "ls"])?;
    assert!(err.contains("this node is not a manager"), "{err}");

    // Scale up and down.
    let out = m.ok(&["service", "scale", "web=5"])?;
    assert!(out.contains("verify: Service converged"), "{out}");
    assert_eq!(running(&m, "web")?.len(), 5);
    m.ok(&["service", "scale", "--detach", "web=2"])?;
    poll_until(
        "2 tasks after scaling down",
        Duration::from_secs(30),
        || {
            let r = running(&m, "web")?;
            let slots: BTreeSet<u64> = r.iter().map(|(s, _)| *s).collect();
            Ok((r.len() == 2 && slots == BTreeSet::from([1, 2])).then_some(()))
        },
    )?;

    // Self-heal: kill the container of a task the test knows (slot 1's); that task fails
    // and a new task for slot 1 replaces it, the old one stays in history.
    let victim = tasks(&m, "web")?
        .into_iter()
        .find(|t| t["slot"] == 1 && t["desired_state"] == "running" && t["state"] == "running")
        .context("slot 1 running")?;
    let victim_id = victim["id"].as_str().unwrap_or_default().to_string();
    let victim_containers = task_containers(&cluster, &victim_id)?;
    assert_eq!(
        victim_containers.len(),
        1,
        "one running container for task {victim_id}: {victim_containers:?}"
    );
    let out = Command::new("docker")
        .args(["kill", &victim_containers[0]])
        .output()?;
    assert!(
        out.status.success(),
        "docker kill {} failed: {}",
        victim_containers[0],
        String::from_utf8_lossy(&out.stderr)
    );
    let replacement = poll_until(
        "the killed task failed and a new task running for its slot",
        Duration::from_secs(60),
        || {
            let ts = tasks(&m, "web")?;
            let killed = ts.iter().find(|t| t["id"] == victim_id.as_str());
            let failed = killed.is_some_and(|t| t["state"] == "failed" && t["exit_code"] == 137);
            let new = ts.iter().find(|t| {
                t["slot"] == 1
                    && t["id"] != victim_id.as_str()
                    && t["desired_state"] == "running"
                    && t["state"] == "running"
            });
            Ok(new
                .filter(|_| failed)
                .map(|t| t["id"].as_str().unwrap_or_default().to_string()))
        },
    )?;
    let r = running(&m, "web")?;
    let slots: BTreeSet<u64> = r.iter().map(|(s, _)| *s).collect();
    assert_eq!(slots, BTreeSet::from([1, 2]), "{r:?}");
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(
        task_containers(&cluster, &replacement)?.len(),
        1,
        "the replacement's container"
    );

    // A node dies (kill -9): its tasks are orphaned and run elsewhere within seconds.
    m.ok(&["service", "scale", "web=3"])?;
    let on_w2 = running(&m, "web")?
        .iter()
        .filter(|(_, n)| n == "svc-w2")
        .count();
    assert!(on_w2 >= 1, "no task on svc-w2 to orphan");
    let killed = Instant::now();
    w2.kill9();
    poll_until(
        "tasks of the dead node running elsewhere",
        Duration::from_secs(30),
        || {
            let r = running(&m, "web")?;
            Ok((r.len() == 3 && r.iter().all(|(_, n)| n != "svc-w2")).then_some(()))
        },
    )?;
    eprintln!(
        "node killed -> its tasks running elsewhere after {} ms",
        killed.elapsed().as_millis()
    );
    let ts = tasks(&m, "web")?;
    assert!(ts.iter().any(|t| t["state"] == "orphaned"), "{ts:?}");
    // Its containers still run (Docker keeps them) until the node returns...
    assert!(!containers(&cluster, &w2_id)?.is_empty());
    // ...and then its worker stops the copies no longer assigned to it.
    w2.start()?;
    poll_until("w2's stale copies stopped", Duration::from_secs(30), || {
        Ok(containers(&cluster, &w2_id)?.is_empty().then_some(()))
    })?;
    assert_eq!(running(&m, "web")?.len(), 3);

    // Restarting a worker's daemon adopts its running containers: no duplicates, none
    // stopped — checked once the restarted worker has reconciled (its session to the
    // leader is back, so it has the full assignment set) and for longer than its resync
    // interval after that.
    let w1_id = w1.json(&["info"])?["node_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let before = containers(&cluster, &w1_id)?;
    assert!(!before.is_empty(), "no container on w1 to adopt");
    let sessions_before = sessions_established(&w1);
    w1.kill9();
    w1.start()?;
    poll_until(
        "w1's worker session back after the restart",
        Duration::from_secs(30),
        || Ok((sessions_established(&w1) > sessions_before).then_some(())),
    )?;
    poll_until("w1 ready", Duration::from_secs(30), || {
        let ready = m.json(&["node", "ls"])?.as_array().is_some_and(|a| {
            a.iter()
                .any(|n| n["hostname"] == "svc-w1" && n["status"] == "ready")
        });
        Ok(ready.then_some(()))
    })?;
    Poll::new(
        "w1 running exactly its containers from before the restart",
        ADOPTION_WATCH,
    )
    .every(Duration::from_millis(100))
    .holds(|| {
        let now = containers(&cluster, &w1_id)?;
        anyhow::ensure!(now == before, "before {before:?}, now {now:?}");
        Ok(())
    })?;
    assert_eq!(running(&m, "web")?.len(), 3);

    // rm: every task stops and its containers go.
    m.ok(&["service", "rm", "web"])?;
    poll_until("containers removed", Duration::from_secs(30), || {
        let all = Command::new("docker")
            .args([
                "ps",
                "-q",
                "--filter",
                &format!("label=shoal.cluster={cluster}"),
            ])
            .output()?;
        Ok(String::from_utf8_lossy(&all.stdout)
            .trim()
            .is_empty()
            .then_some(()))
    })?;
    let err = m.fails(&["service", "ps", "web"])?;
    assert_eq!(err.trim(), "Error: no such service: web", "{err}");
    Ok(())
}

/// Issue 10: a replicated service on the process driver converges and its tasks show in
/// `node ps`.
#[test]
fn process_driver_service() -> Result<()> {
    let mut m = Daemon::new("proc-m1", "127.0.10.11:4747")?;
    m.start()?;
    m.ok(&["init"])?;
    let out = m.ok(&[
        "service",
        "create",
        "--name",
        "loop",
        "--driver",
        "process",
        "--replicas",
        "2",
        "/bin/sh",
        "-c",
        "while true; do sleep 1; done",
    ])?;
    assert!(out.contains("verify: Service converged"), "{out}");
    let rows = m.json(&["node", "ps"])?;
    assert_eq!(rows.as_array().map(Vec::len), Some(2));
    m.ok(&["service", "rm", "loop"])?;
    Ok(())
}

/// Issue 10: a worker that loses its manager keeps its tasks running, and the same tasks
/// are still the running ones when the manager comes back (edge autonomy).
#[test]
fn worker_keeps_tasks_without_managers() -> Result<()> {
    let mut m = Daemon::new("auto-m", "127.0.10.21:4747")?;
    let mut w = Daemon::new("auto-w", "127.0.10.22:4747")?;
    m.start()?;
    w.start()?;
    m.ok(&["init"])?;
    let t = join_token(&m, "worker")?;
    w.ok(&["join", "--token", &t])?;
    m.ok(&[
        "service",
        "create",
        "--name",
        "edge",
        "--driver",
        "process",
        "--constraint",
        "node.role==worker",
        "/bin/sleep",
        "3611",
    ])?;
    let before: Vec<String> = tasks(&m, "edge")?
        .iter()
        .filter(|t| t["state"] == "running")
        .map(|t| t["id"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(before.len(), 1);
    let alive = || -> Result<bool> {
        Ok(Command::new("pgrep")
            .args(["-f", "sleep 3611"])
            .output()?
            .status
            .success())
    };
    m.kill9();
    Poll::new("the task alive", Duration::from_secs(3))
        .every(Duration::from_millis(100))
        .holds(|| {
            anyhow::ensure!(alive()?, "the task died while no manager was reachable");
            Ok(())
        })?;
    m.start()?;
    poll_until(
        "the same task running after the manager returns",
        Duration::from_secs(20),
        || {
            let now: Vec<String> = tasks(&m, "edge")?
                .iter()
                .filter(|t| t["state"] == "running" && t["desired_state"] == "running")
                .map(|t| t["id"].as_str().unwrap_or_default().to_string())
                .collect();
            Ok((now == before).then_some(()))
        },
    )?;
    assert!(alive()?);
    m.ok(&["service", "rm", "edge"])?;
    poll_until(
        "the process stopped after rm",
        Duration::from_secs(20),
        || Ok((!alive()?).then_some(())),
    )?;
    Ok(())
}
