//! Issue 19, item 1: `shoal service logs` on a real cluster. A manager resolves the tasks,
//! reads its own from its drivers and asks the other nodes over QUIC (tag 11, managers
//! only), and merges the lines by time.
//!
//! Address blocks: 127.0.100.1–.2 (a manager and a worker, process-driver tasks);
//! 127.0.108.1–.3 (two managers and a worker, Docker tasks).
//!
//! Waiting: every wait is a [`poll_until`] with a deadline; the [`Daemon`]s (dropped also
//! when a test fails) kill their daemons and the process driver's tasks, and a
//! [`ClusterContainers`] guard removes the Docker test's containers.

use std::collections::BTreeSet;
use std::time::Duration;

use std::io::Read;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, ensure};
use shoal_tests::{
    ClusterContainers, Daemon, TEST_IMAGE, all_pids, cluster_id, docker, docker_ready,
    output_within, poll_until, service_containers, shoal_bin, start_cluster_from, task_containers,
    tasks,
};

/// Five numbered lines, 200 ms apart, then quiet (the task keeps running).
const TALKER: &str = "i=0; while [ $i -lt 5 ]; do i=$((i+1)); echo \"line $i\"; sleep 0.2; done; \
    echo oops >&2; exec sleep 1000";

/// `shoal service logs ARGS...` once every task printed its lines.
fn logs(m: &Daemon, args: &[&str]) -> Result<String> {
    let mut a = vec!["service", "logs"];
    a.extend_from_slice(args);
    m.ok(&a)
}

#[test]
fn logs_of_tasks_on_two_nodes_arrive_prefixed_and_in_time_order() -> Result<()> {
    let (ms, ws) = start_cluster_from("lg-", 100, 1, 1, 1)?;
    let m = &ms[0];
    let w = &ws[0];
    m.ok(&[
        "service",
        "create",
        "--name",
        "talk",
        "--driver",
        "process",
        "--replicas",
        "2",
        "--replicas-max-per-node",
        "1",
        "/bin/sh",
        "-c",
        TALKER,
    ])?;
    // Both tasks have printed everything (12 lines: 5 + stderr's one, each).
    let all = poll_until(
        "12 lines of talk from both nodes",
        Duration::from_secs(60),
        || {
            let out = logs(m, &["talk"])?;
            Ok((out.lines().count() == 12).then_some(out))
        },
    )?;
    let mut hosts = BTreeSet::new();
    for line in all.lines() {
        let (prefix, text) = line
            .split_once(" | ")
            .ok_or_else(|| anyhow::anyhow!("no prefix in {line:?}:\n{all}"))?;
        let prefix = prefix.trim_end();
        let (name, host) = prefix
            .split_once('@')
            .ok_or_else(|| anyhow::anyhow!("no @host in {prefix:?}"))?;
        let parts: Vec<&str> = name.split('.').collect();
        ensure!(
            parts.len() == 3 && parts[0] == "talk" && parts[2].len() == 12,
            "prefix {prefix:?} is not talk.SLOT.TASKID@host"
        );
        ensure!(
            text.starts_with("line ") || text == "oops",
            "unexpected text {text:?}"
        );
        hosts.insert(host.to_string());
    }
    let want: BTreeSet<String> = [m.name.clone(), w.name.clone()].into();
    ensure!(
        hosts == want,
        "lines came from {hosts:?}, not {want:?}:\n{all}"
    );
    // The bars align.
    let bars: BTreeSet<usize> = all.lines().filter_map(|l| l.find(" | ")).collect();
    ensure!(bars.len() == 1, "bars do not align:\n{all}");

    // -t: RFC 3339 times with nanoseconds, merged in order across both nodes.
    let stamped = logs(m, &["-t", "--no-task-ids", "talk"])?;
    let mut times = Vec::new();
    for line in stamped.lines() {
        let (prefix, rest) = line.split_once(" | ").unwrap_or_default();
        ensure!(
            prefix.trim_end().starts_with("talk.") && prefix.split('.').count() == 2,
            "--no-task-ids left the task ID in {prefix:?}"
        );
        let time = rest.split(' ').next().unwrap_or_default();
        ensure!(
            time.len() == 30,
            "{time:?} is not RFC 3339 with nanoseconds"
        );
        times.push(time.to_string());
    }
    let mut sorted = times.clone();
    sorted.sort();
    ensure!(times == sorted, "lines are not in time order:\n{stamped}");

    // --raw: the bare lines.
    let raw = logs(m, &["--raw", "talk"])?;
    ensure!(
        raw.lines().all(|l| l.starts_with("line ") || l == "oops"),
        "{raw}"
    );

    // --tail 2 per task: per stream for the process driver, the last lines.
    let tail = logs(m, &["--raw", "--tail", "1", "talk"])?;
    let mut got: Vec<&str> = tail.lines().collect();
    got.sort_unstable();
    ensure!(
        got == ["line 5", "line 5", "oops", "oops"],
        "--tail 1 gave:\n{tail}"
    );

    // --since: a time after the last line gives nothing; an hour ago gives everything.
    let last = times.last().cloned().unwrap_or_default();
    let last_ms = shoal::logs::parse_since(&last, std::time::SystemTime::now())
        .map_err(anyhow::Error::msg)?;
    let after = (last_ms + 1).to_string();
    let none = logs(m, &["--since", &after, "talk"])?;
    ensure!(
        none.trim().is_empty(),
        "--since {after} still gave:\n{none}"
    );
    let hour = logs(m, &["--since", "1h", "talk"])?;
    ensure!(hour.lines().count() == 12, "--since 1h gave:\n{hour}");

    // One task by its ID prefix: only its lines.
    let one_id = all
        .lines()
        .next()
        .and_then(|l| l.split('@').next())
        .and_then(|n| n.split('.').nth(2))
        .unwrap_or_default()
        .to_string();
    let one = logs(m, &[&one_id])?;
    ensure!(
        one.lines().count() == 6 && one.lines().all(|l| l.contains(&one_id)),
        "task {one_id} gave:\n{one}"
    );

    // An unknown service: one line, exit 1. A worker is not a manager.
    let err = m.fails(&["service", "logs", "nope"])?;
    ensure!(
        err.trim().lines().count() == 1 && err.contains("nope"),
        "{err}"
    );
    let err = w.fails(&["service", "logs", "talk"])?;
    ensure!(err.contains("not a manager"), "{err}");

    // -f: a replacement's lines arrive after the task on the manager is killed.
    follow_sees_a_replacement(m)?;

    // A worker that goes down is named in a warning; the manager's own lines still come.
    let mut ws = ws;
    ws[0].kill9();
    let out = m.cli(&["service", "logs", "talk"])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "failed: {stderr}");
    ensure!(
        stderr.contains("warning") && stderr.contains(&ws[0].name),
        "no warning naming {}: {stderr}",
        ws[0].name
    );
    ensure!(
        stdout.lines().count() >= 5 && stdout.lines().all(|l| l.contains(&format!("@{}", m.name))),
        "{stdout}"
    );
    Ok(())
}

/// `service logs -f talk` keeps streaming: after `kill -9` of the manager's task, the
/// replacement task's lines (a task ID not seen before) arrive on the same call.
fn follow_sees_a_replacement(m: &Daemon) -> Result<()> {
    let rows = tasks(m, "talk")?;
    let victim = rows
        .iter()
        .find(|r| r["node"] == m.name.as_str() && r["state"] == "running")
        .and_then(|r| r["id"].as_str())
        .context("no running task of talk on the manager")?
        .to_string();
    let mut child = Command::new(shoal_bin())
        .arg("-H")
        .arg(format!("unix://{}", m.socket.display()))
        .args(["service", "logs", "-f", "talk"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()?;
    let seen = Arc::new(Mutex::new(String::new()));
    let mut out = child.stdout.take().context("no stdout")?;
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            if let Ok(mut s) = sink.lock() {
                s.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
    });
    let result = (|| -> Result<()> {
        let text = || seen.lock().map(|s| s.clone()).unwrap_or_default();
        poll_until(
            "the follower's first lines",
            Duration::from_secs(20),
            || Ok((text().lines().count() >= 12).then_some(())),
        )?;
        let want = format!("SHOAL_TASK_ID={victim}");
        let mut killed = 0;
        for pid in all_pids() {
            let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            if env.split(|b| *b == 0).any(|v| v == want.as_bytes()) {
                let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
                killed += 1;
            }
        }
        ensure!(killed > 0, "no process runs task {victim}");
        let old: Vec<String> = rows
            .iter()
            .filter_map(|r| r["id"].as_str())
            .map(|id| id.chars().take(12).collect())
            .collect();
        poll_until(
            "the replacement's line 5 on the follower",
            Duration::from_secs(60),
            || {
                let t = text();
                let fresh = t.lines().any(|l| {
                    l.ends_with("| line 5")
                        && l.split('@')
                            .next()
                            .and_then(|n| n.split('.').nth(2))
                            .is_some_and(|id| !old.iter().any(|o| o == id))
                });
                Ok(fresh.then_some(()))
            },
        )
        .with_context(|| format!("follower output:\n{}", text()))?;
        Ok(())
    })();
    let _ = child.kill();
    let _ = child.wait();
    result
}

// ---- Docker driver (issue 19, item 1) -------------------------------------------------
//
// Address block: 127.0.108.1–.3 (two managers and a worker, Docker tasks).

/// Five numbered lines to stdout and five to stderr, 200 ms apart, then quiet (the task
/// keeps running).
const DOCKER_TALKER: &str = "i=0; while [ $i -lt 5 ]; do i=$((i+1)); echo \"dlog out $i\"; \
    echo \"dlog err $i\" >&2; sleep 0.2; done; exec sleep 1000";

/// One `service logs` line split into its prefix's parts and its text: `(slot, task ID
/// prefix, host, text)`. Fails unless the prefix is Docker's `dlog.SLOT.TASKID@HOST`.
fn docker_line(line: &str) -> Result<(String, String, String, String)> {
    let (prefix, text) = line
        .split_once(" | ")
        .ok_or_else(|| anyhow::anyhow!("no prefix in {line:?}"))?;
    let (name, host) = prefix
        .trim_end()
        .split_once('@')
        .ok_or_else(|| anyhow::anyhow!("no @host in {prefix:?}"))?;
    let parts: Vec<&str> = name.split('.').collect();
    ensure!(
        parts.len() == 3 && parts[0] == "dlog" && parts[2].len() == 12,
        "prefix {prefix:?} is not dlog.SLOT.TASKID@host"
    );
    Ok((
        parts[1].to_string(),
        parts[2].to_string(),
        host.to_string(),
        text.to_string(),
    ))
}

/// `service logs -f ARGS...` on `d`, read line by line as it streams; dropping it kills
/// the call.
struct Follower {
    child: std::process::Child,
    seen: Arc<Mutex<String>>,
}

impl Follower {
    fn start(d: &Daemon, args: &[&str]) -> Result<Follower> {
        let mut child = Command::new(shoal_bin())
            .arg("-H")
            .arg(format!("unix://{}", d.socket.display()))
            .args(["service", "logs", "-f"])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()?;
        let seen = Arc::new(Mutex::new(String::new()));
        let mut out = child.stdout.take().context("no stdout")?;
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                if let Ok(mut s) = sink.lock() {
                    s.push_str(&String::from_utf8_lossy(&buf[..n]));
                }
            }
        });
        Ok(Follower { child, seen })
    }

    /// What it printed so far.
    fn text(&self) -> String {
        self.seen.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Issue 19, item 1, on the Docker driver, asked through a manager that is not the leader:
/// the engine's lines of both tasks (stdout and stderr) arrive prefixed as Docker prefixes
/// them and merged by time; `--tail 1` is one line per task; containers carry the capped
/// `json-file` log config (and `docker logs` still reads them); `-f` shows the lines of the
/// task that replaces one whose container was `docker kill`ed; and the killed task's lines
/// are still there afterwards (its container is kept).
#[test]
fn docker_logs_through_a_follower_with_a_replacement_after_docker_kill() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let (ms, _ws) = start_cluster_from("dl-", 108, 1, 2, 1)?;
    let leader = &ms[0];
    let follower = &ms[1];
    let cluster = cluster_id(leader)?;
    let _containers = ClusterContainers(cluster.clone());
    leader.ok(&[
        "service",
        "create",
        "--name",
        "dlog",
        "--driver",
        "docker",
        "--replicas",
        "2",
        "--replicas-max-per-node",
        "1",
        "--restart-delay",
        "1s",
        "--stop-grace-period",
        "1s",
        TEST_IMAGE,
        "sh",
        "-c",
        DOCKER_TALKER,
    ])?;
    ensure!(
        follower.json(&["info"])?["leader"] != follower.json(&["info"])?["node_id"],
        "{} is the leader",
        follower.name
    );

    // (1) Both tasks' ten lines, through the follower.
    let all = poll_until(
        "20 lines of dlog from both tasks",
        Duration::from_secs(90),
        || {
            let out = logs(follower, &["dlog"])?;
            ensure!(out.lines().count() == 20, "so far:\n{out}");
            Ok(Some(out))
        },
    )?;
    let rows = tasks(leader, "dlog")?;
    let mut per_task: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    let mut hosts = BTreeSet::new();
    for line in all.lines() {
        let (slot, task, host, text) = docker_line(line).with_context(|| all.clone())?;
        let row = rows
            .iter()
            .find(|r| r["id"].as_str().is_some_and(|id| id.starts_with(&task)))
            .with_context(|| format!("task {task} of {line:?} is not in service ps"))?;
        ensure!(
            row["node"] == host.as_str() && row["slot"].as_u64() == slot.parse().ok(),
            "{line:?} does not name the slot and node of {row}"
        );
        hosts.insert(host);
        per_task.entry(task).or_default().push(text);
    }
    ensure!(
        per_task.len() == 2 && hosts.len() == 2,
        "lines came from {hosts:?}:\n{all}"
    );
    for (task, texts) in &per_task {
        let mut got = texts.clone();
        got.sort_unstable();
        let mut want: Vec<String> = (1..=5)
            .flat_map(|i| [format!("dlog err {i}"), format!("dlog out {i}")])
            .collect();
        want.sort_unstable();
        ensure!(
            got == want,
            "task {task} gave {got:?}, not stdout's and stderr's five lines"
        );
    }
    let bars: BTreeSet<usize> = all.lines().filter_map(|l| l.find(" | ")).collect();
    ensure!(bars.len() == 1, "bars do not align:\n{all}");

    // -t: the engine's times, merged in order across both nodes.
    let stamped = logs(follower, &["-t", "dlog"])?;
    let times: Vec<String> = stamped
        .lines()
        .map(|l| {
            let (_, _, _, text) = docker_line(l)?;
            let time = text.split(' ').next().unwrap_or_default().to_string();
            ensure!(
                time.len() == 30,
                "{time:?} is not RFC 3339 with nanoseconds"
            );
            Ok(time)
        })
        .collect::<Result<_>>()?;
    ensure!(times.len() == 20, "-t gave:\n{stamped}");
    let mut sorted = times.clone();
    sorted.sort();
    ensure!(times == sorted, "lines are not in time order:\n{stamped}");

    // --tail 1: the engine's last line of each task.
    let tail = logs(follower, &["--tail", "1", "dlog"])?;
    let tails: Vec<(String, String)> = tail
        .lines()
        .map(|l| docker_line(l).map(|(_, task, _, text)| (task, text)))
        .collect::<Result<_>>()?;
    let tail_tasks: BTreeSet<&String> = tails.iter().map(|(t, _)| t).collect();
    ensure!(
        tails.len() == 2
            && tail_tasks.len() == 2
            && tails.iter().all(|(_, text)| text.ends_with(" 5")),
        "--tail 1 gave:\n{tail}"
    );

    // The containers log to capped json-file logs, which `docker logs` still reads.
    let containers = service_containers(&cluster, "dlog")?;
    ensure!(containers.len() == 2, "containers: {containers:?}");
    for c in &containers {
        let config: serde_json::Value = serde_json::from_str(&docker(&[
            "inspect",
            "--format",
            "{{json .HostConfig.LogConfig}}",
            &c.id,
        ])?)?;
        ensure!(
            config
                == serde_json::json!({
                    "Type": "json-file",
                    "Config": {"max-size": "10m", "max-file": "3"}
                }),
            "container {} logs with {config}",
            c.id
        );
        let out = output_within(
            Command::new("docker")
                .args(["logs", &c.id])
                .stdin(Stdio::null()),
            Duration::from_secs(30),
        )?;
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        ensure!(
            out.status.success() && stdout.contains("dlog out 5") && stderr.contains("dlog err 5"),
            "docker logs {}: {stdout} / {stderr}",
            c.id
        );
    }

    // (2) -f through the follower, then `docker kill` of one task's container: the
    // replacement's lines arrive on the same call.
    let follow = Follower::start(follower, &["dlog"])?;
    poll_until("the first 20 lines on -f", Duration::from_secs(30), || {
        Ok((follow.text().lines().count() >= 20).then_some(()))
    })
    .with_context(|| format!("-f output:\n{}", follow.text()))?;
    let victim = containers[0].task.clone();
    let victim_short: String = victim.chars().take(12).collect();
    let killed = task_containers(&cluster, &victim)?;
    ensure!(killed.len() == 1, "containers of {victim}: {killed:?}");
    docker(&["kill", &killed[0]])?;
    let old: BTreeSet<String> = rows
        .iter()
        .filter_map(|r| r["id"].as_str())
        .map(String::from)
        .collect();
    let replacement = poll_until(
        "a running replacement of the killed task",
        Duration::from_secs(60),
        || {
            Ok(tasks(leader, "dlog")?
                .iter()
                .find(|r| {
                    r["state"] == "running" && r["id"].as_str().is_some_and(|id| !old.contains(id))
                })
                .and_then(|r| r["id"].as_str())
                .map(String::from))
        },
    )?;
    let fresh: String = replacement.chars().take(12).collect();
    poll_until(
        "the replacement's last lines on -f",
        Duration::from_secs(60),
        || {
            let t = follow.text();
            let mine: Vec<String> = t
                .lines()
                .filter_map(|l| docker_line(l).ok())
                .filter(|(_, task, _, _)| *task == fresh)
                .map(|(_, _, _, text)| text)
                .collect();
            Ok(
                (mine.iter().any(|l| l == "dlog out 5") && mine.iter().any(|l| l == "dlog err 5"))
                    .then_some(()),
            )
        },
    )
    .with_context(|| format!("-f output:\n{}", follow.text()))?;
    drop(follow);

    // (3) The killed task ended, and its lines are still returned (its container is kept
    // on its node), beside both running tasks'.
    poll_until(
        "the killed task's ten lines beside the running tasks' twenty",
        Duration::from_secs(30),
        || {
            let out = logs(follower, &["dlog"])?;
            let mut count: std::collections::BTreeMap<String, usize> = Default::default();
            for l in out.lines() {
                *count.entry(docker_line(l)?.1).or_default() += 1;
            }
            let ok = count.len() == 3
                && count.get(&victim_short) == Some(&10)
                && count.get(&fresh) == Some(&10);
            ensure!(ok, "tasks and their lines: {count:?}");
            Ok(Some(()))
        },
    )?;
    let state = tasks(leader, "dlog")?
        .iter()
        .find(|r| r["id"] == victim.as_str())
        .map(|r| r["state"].clone());
    ensure!(
        state.as_ref().and_then(|s| s.as_str()) == Some("failed"),
        "the killed task is {state:?}"
    );
    Ok(())
}
