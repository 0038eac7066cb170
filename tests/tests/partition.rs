//! Issue 15, item 5: promised behaviour under partitions, failovers and restarts, checked
//! on real daemons with process-driver tasks (no Docker needed).
//!
//! - A partition cut with iptables rules on `lo` (DESIGN §9): the minority cannot write,
//!   the majority elects and serves, the minority's tasks keep running, and after healing
//!   nothing is duplicated.
//! - A new leader marks no live node down and reschedules nothing during its grace period.
//! - A worker restarted while its node is down stops its old copies: no duplicate.
//!
//! Every task runs `/bin/sleep MARKER`, the marker unique to the test process, so the
//! programs are found in `/proc` and through the shim's `status.json` files in each
//! daemon's state dir. A guard kills them (and their shims) even when a test fails; the
//! iptables rules carry the comment `shoal-test-<pid>` and a guard removes them.
//!
//! Address blocks: 127.0.70.x (partition), 127.0.72.x (failover), 127.0.73.x (restart).

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use shoal_tests::{
    Daemon, Poll, all_pids, cmdline, fails_within, poll_until, start_cluster, start_ticks, tasks,
};

/// The program of every task: `/bin/sleep MARKER`.
const PROGRAM: &str = "/bin/sleep";

/// A marker argument unique to this test process (a number, so `sleep` accepts it).
fn marker(base: &str) -> String {
    format!("{base}{}", std::process::id())
}

/// The same process (pid and start time) is still alive.
fn alive(p: Proc) -> bool {
    start_ticks(p.pid) == Some(p.ticks)
}

/// Live programs with this marker, anywhere on the machine.
fn marker_pids(mark: &str) -> BTreeSet<i32> {
    all_pids()
        .into_iter()
        .filter(|pid| {
            cmdline(*pid).is_some_and(|c| c.len() == 2 && c[0] == PROGRAM && c[1] == mark)
                && start_ticks(*pid).is_some()
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Proc {
    pid: i32,
    ticks: u64,
}

/// The task programs alive under a daemon's state dir, by task ID: what the shim recorded
/// in `tasks/<cluster>/<node>/<task>/status.json`, checked against `/proc` (same pid and
/// start time, running our program with our marker).
fn live_programs(d: &Daemon, mark: &str) -> BTreeMap<String, Proc> {
    let mut out = BTreeMap::new();
    let dirs = |p: PathBuf| {
        std::fs::read_dir(p)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect::<Vec<_>>()
    };
    for cluster in dirs(d.state_dir.join("tasks")) {
        for node in dirs(cluster) {
            for task in dirs(node) {
                let Ok(bytes) = std::fs::read(task.join("status.json")) else {
                    continue;
                };
                let Ok(status) = serde_json::from_slice::<Value>(&bytes) else {
                    continue;
                };
                let (Some(pid), Some(ticks)) = (
                    status["pid"].as_i64().and_then(|p| i32::try_from(p).ok()),
                    status["pid_start_ticks"].as_u64(),
                ) else {
                    continue;
                };
                let p = Proc { pid, ticks };
                let ours = cmdline(pid).is_some_and(|c| c.len() == 2 && c[1] == mark);
                if status["state"] == "running" && ours && alive(p) {
                    let id = task
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default();
                    out.insert(id, p);
                }
            }
        }
    }
    out
}

/// Live task programs of all these daemons, by task ID (a task ID twice is an error).
fn live_everywhere(ds: &[&Daemon], mark: &str) -> Result<BTreeMap<String, (String, Proc)>> {
    let mut out = BTreeMap::new();
    for d in ds {
        for (id, p) in live_programs(d, mark) {
            if let Some((other, _)) = out.insert(id.clone(), (d.name.clone(), p)) {
                bail!("task {id} runs on both {other} and {}", d.name);
            }
        }
    }
    Ok(out)
}

/// Kills the tests' programs and shims when dropped (shims outlive a `kill -9`ed daemon).
struct Cleanup {
    mark: String,
    roots: Vec<PathBuf>,
}

impl Cleanup {
    fn new(mark: &str) -> Cleanup {
        Cleanup {
            mark: mark.into(),
            roots: Vec::new(),
        }
    }

    fn watch<'a>(&mut self, ds: impl IntoIterator<Item = &'a Daemon>) {
        self.roots
            .extend(ds.into_iter().map(|d| d.state_dir.clone()));
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for pid in all_pids() {
            let Some(c) = cmdline(pid) else { continue };
            let program = c.len() == 2 && c[0] == PROGRAM && c[1] == self.mark;
            let shim = c.iter().position(|a| a == "--task-dir").is_some_and(|i| {
                c.get(i + 1).is_some_and(|dir| {
                    self.roots
                        .iter()
                        .any(|r| dir.starts_with(&*r.to_string_lossy()))
                })
            });
            if program || shim {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
    }
}

/// iptables rules on `lo` that drop UDP between daemons, tagged with this process's
/// comment; all of them are removed on drop. Should the test process die without
/// unwinding (nextest's timeout kill), a watchdog removes them: an `sh` in a process group
/// of its own that waits for the end of its stdin (a pipe from this process) and then
/// deletes every rule with the comment. Rules of a test process that is gone anyway
/// (`shoal-test-<pid>` of a pid that no longer exists) are removed when one is created.
struct Partition {
    comment: String,
    watchdog: Option<(std::process::Child, std::process::ChildStdin)>,
}

const IPTABLES_WATCHDOG: &str = r#"
cat >/dev/null
iptables -w 10 -S INPUT 2>/dev/null | grep -F -- "--comment $1 " | sed 's/^-A /-D /' |
    while read -r rule; do
        # shellcheck disable=SC2086
        iptables -w 10 $rule
    done
"#;

fn iptables(args: &[&str]) -> Result<String> {
    let out = Command::new("iptables")
        .arg("-w")
        .arg("10")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .context("cannot run iptables (scripts/test.sh installs it; the tests run as root)")?;
    if !out.status.success() {
        bail!(
            "`iptables {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The `INPUT` rules carrying a `shoal-test-…` comment: (comment, rule tokens).
fn tagged_rules() -> Result<Vec<(String, Vec<String>)>> {
    let listing = iptables(&["-S", "INPUT"])?;
    Ok(listing
        .lines()
        .filter_map(|line| {
            let tokens: Vec<String> = line
                .split_whitespace()
                .map(|t| t.trim_matches('"').to_string())
                .collect();
            let i = tokens.iter().position(|t| t == "--comment")?;
            let comment = tokens.get(i + 1)?.clone();
            (tokens.first()? == "-A" && comment.starts_with("shoal-test-"))
                .then_some((comment, tokens))
        })
        .collect())
}

impl Partition {
    fn new() -> Result<Partition> {
        let comment = format!("shoal-test-{}", std::process::id());
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(IPTABLES_WATCHDOG)
            .arg("shoal-test-iptables-watchdog")
            .arg(&comment)
            .stdin(Stdio::piped())
            .stdout(Stdio::null());
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd.spawn().context("cannot start the iptables watchdog")?;
        let stdin = child.stdin.take().context("the watchdog has no stdin")?;
        let p = Partition {
            comment,
            watchdog: Some((child, stdin)),
        };
        for (comment, tokens) in tagged_rules()? {
            let owner_gone = comment
                .strip_prefix("shoal-test-")
                .and_then(|pid| pid.parse::<u32>().ok())
                .is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists());
            if owner_gone {
                eprintln!(
                    "removing a rule left by a dead test process: {}",
                    tokens.join(" ")
                );
                delete_rule(&tokens)?;
            }
        }
        Ok(p)
    }

    /// Drops UDP from every address of `a` to every address of `b`, and back.
    fn cut(&self, a: &[&Daemon], b: &[&Daemon]) -> Result<()> {
        for x in a {
            for y in b {
                for (s, d) in [(x, y), (y, x)] {
                    let (s, d) = (s.addr.ip().to_string(), d.addr.ip().to_string());
                    iptables(&[
                        "-I",
                        "INPUT",
                        "-i",
                        "lo",
                        "-s",
                        &s,
                        "-d",
                        &d,
                        "-p",
                        "udp",
                        "-m",
                        "comment",
                        "--comment",
                        &self.comment,
                        "-j",
                        "DROP",
                    ])?;
                }
            }
        }
        Ok(())
    }

    fn rules(&self) -> Result<Vec<Vec<String>>> {
        Ok(tagged_rules()?
            .into_iter()
            .filter(|(c, _)| *c == self.comment)
            .map(|(_, t)| t)
            .collect())
    }

    /// Removes every rule of this process.
    fn heal(&self) -> Result<()> {
        for tokens in self.rules()? {
            delete_rule(&tokens)?;
        }
        Ok(())
    }
}

fn delete_rule(tokens: &[String]) -> Result<()> {
    let mut args: Vec<&str> = tokens.iter().map(String::as_str).collect();
    args[0] = "-D";
    iptables(&args).map(drop)
}

impl Drop for Partition {
    fn drop(&mut self) {
        if let Err(e) = self.heal() {
            eprintln!("cannot remove the partition's iptables rules: {e:#}");
        }
        // End of input: the watchdog sweeps (nothing left by now) and exits.
        if let Some((mut child, stdin)) = self.watchdog.take() {
            drop(stdin);
            let _ = child.wait();
        }
    }
}

/// Running tasks of a service (desired and observed): task ID -> node hostname.
fn running(d: &Daemon, service: &str) -> Result<BTreeMap<String, String>> {
    Ok(tasks(d, service)?
        .iter()
        .filter(|t| t["desired_state"] == "running" && t["state"] == "running")
        .filter_map(|t| Some((t["id"].as_str()?.into(), t["node"].as_str()?.into())))
        .collect())
}

/// Node hostname -> status (`ready`, `down`, …).
fn statuses(d: &Daemon) -> Result<BTreeMap<String, String>> {
    Ok(d.json(&["node", "ls"])?
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| Some((n["hostname"].as_str()?.into(), n["status"].as_str()?.into())))
        .collect())
}

/// Waits until `node ls` on `d` shows `n` nodes, all ready (so a new service spreads).
fn wait_all_ready(d: &Daemon, n: usize) -> Result<()> {
    poll_until(&format!("{n} ready nodes"), Duration::from_secs(30), || {
        let st = statuses(d)?;
        ensure!(
            st.len() == n && st.values().all(|s| s == "ready"),
            "nodes {st:?}"
        );
        Ok(Some(()))
    })
}

/// The hostnames `node ls` on `d` shows as leader.
fn leaders(d: &Daemon) -> Result<Vec<String>> {
    Ok(d.json(&["node", "ls"])?
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["manager_status"] == "leader")
        .filter_map(|n| n["hostname"].as_str().map(str::to_string))
        .collect())
}

fn create_service(
    d: &Daemon,
    name: &str,
    replicas: usize,
    mark: &str,
    extra: &[&str],
) -> Result<()> {
    let replicas = replicas.to_string();
    let mut args = vec![
        "service",
        "create",
        "--detach",
        "--name",
        name,
        "--driver",
        "process",
        "--replicas",
        &replicas,
    ];
    args.extend_from_slice(extra);
    args.extend([PROGRAM, mark]);
    d.ok(&args).map(drop)
}

/// Issue 15: 3 managers + 2 workers, 6 process tasks. The leader and one worker are cut
/// off from the other two managers and worker: the minority cannot write (the quorum
/// error, never a hang), the majority elects and serves, the minority's tasks keep running,
/// and after healing one leader, 6 tasks and 6 programs run, for good.
#[test]
fn partition_minority_cannot_write_keeps_tasks_and_heals_without_duplicates() -> Result<()> {
    const N: usize = 6;
    let mark = marker("7070");
    let mut cleanup = Cleanup::new(&mark);
    let net = Partition::new()?;
    let (ms, ws) = start_cluster("pt-", 70, 3, 2)?;
    cleanup.watch(ms.iter().chain(&ws));
    let all: Vec<&Daemon> = ms.iter().chain(&ws).collect();
    wait_all_ready(&ms[0], 5)?;
    create_service(&ms[0], "part", N, &mark, &[])?;
    poll_until(
        "6 running tasks and 6 live programs",
        Duration::from_secs(60),
        || {
            Ok((running(&ms[0], "part")?.len() == N
                && live_everywhere(&all, &mark)?.len() == N
                && marker_pids(&mark).len() == N)
                .then_some(()))
        },
    )?;

    let leader = leaders(&ms[0])?;
    ensure!(leader.len() == 1, "one leader expected: {leader:?}");
    let lm = ms
        .iter()
        .find(|m| m.name == leader[0])
        .context("the leader is not one of the managers")?;
    let majority_ms: Vec<&Daemon> = ms.iter().filter(|m| m.name != lm.name).collect();
    let minority: Vec<&Daemon> = vec![lm, &ws[0]];
    let majority: Vec<&Daemon> = vec![majority_ms[0], majority_ms[1], &ws[1]];
    let names = |ds: &[&Daemon]| ds.iter().map(|d| d.name.clone()).collect::<BTreeSet<_>>();
    let (minority_names, majority_names) = (names(&minority), names(&majority));
    let minority_procs: BTreeMap<String, (String, Proc)> = live_everywhere(&minority, &mark)?;
    ensure!(
        minority_procs.len() >= 2,
        "the tasks did not spread over the minority's two nodes: {minority_procs:?}"
    );
    eprintln!("cutting {minority_names:?} from {majority_names:?}");
    net.cut(&minority, &majority)?;
    ensure!(
        net.rules()?.len() == 2 * 2 * 3,
        "the cut's rules are not all in place"
    );

    // The minority cannot write: the quorum-lost error, never a hang.
    let (err, took) = fails_within(
        lm,
        &["node", "update", "--label-add", "cut=minority", "pt-w2"],
        Duration::from_secs(10),
    )?;
    eprintln!(
        "write on the minority's manager failed after {} ms",
        took.as_millis()
    );
    ensure!(err.contains("the cluster has lost quorum"), "{err}");
    ensure!(
        err.contains("the outcome of this request is unknown"),
        "{err}"
    );

    // The majority elects one of its managers and serves writes.
    let new_leader = poll_until(
        "a leader on the majority side",
        Duration::from_secs(30),
        || {
            for m in &majority_ms {
                if let Ok(l) = leaders(m)
                    && let [l] = l.as_slice()
                    && majority_names.contains(l)
                {
                    return Ok(Some(l.clone()));
                }
            }
            Ok(None)
        },
    )?;
    eprintln!("the majority elected {new_leader}");
    let writer = majority_ms[0];
    poll_until(
        "a write on the majority side",
        Duration::from_secs(30),
        || {
            Ok(writer
                .cli(&["node", "update", "--label-add", "cut=majority", "pt-w2"])?
                .status
                .success()
                .then_some(()))
        },
    )?;
    // It marks the minority's nodes down and runs N tasks on its own nodes.
    poll_until(
        "the majority to mark the minority down and run 6 tasks on its own nodes",
        Duration::from_secs(60),
        || {
            let st = statuses(writer)?;
            let down = minority_names
                .iter()
                .all(|n| st.get(n).is_some_and(|s| s == "down"));
            let run = running(writer, "part")?;
            Ok(
                (down && run.len() == N && run.values().all(|n| majority_names.contains(n)))
                    .then_some(()),
            )
        },
    )?;
    // The minority's tasks kept running through all of it, and its manager still refuses
    // writes.
    for (id, (node, p)) in &minority_procs {
        ensure!(
            alive(*p),
            "task {id} on {node} (pid {}) stopped during the cut",
            p.pid
        );
    }
    let (err, _) = fails_within(
        lm,
        &["node", "update", "--label-add", "cut=minority2", "pt-w2"],
        Duration::from_secs(10),
    )?;
    eprintln!(
        "write on the minority after the majority's election: {}",
        err.trim()
    );
    ensure!(
        err.contains("the cluster has lost quorum"),
        "a write on the minority after the majority's election: {err}"
    );

    // Heal: every node ready, one leader that every manager agrees on, N running tasks
    // and N live programs, each a running task's, on its node.
    net.heal()?;
    ensure!(net.rules()?.is_empty(), "rules left after healing");
    let converged = Instant::now();
    let check = || -> Result<()> {
        let mut seen = BTreeSet::new();
        for m in &ms {
            let st = statuses(m)?;
            ensure!(
                st.len() == 5 && st.values().all(|s| s == "ready"),
                "{} shows {st:?}",
                m.name
            );
            let l = leaders(m)?;
            ensure!(l.len() == 1, "{} shows the leaders {l:?}", m.name);
            seen.extend(l);
        }
        ensure!(
            seen.len() == 1,
            "the managers disagree on the leader: {seen:?}"
        );
        let run = running(writer, "part")?;
        let live = live_everywhere(&all, &mark)?;
        let pids = marker_pids(&mark);
        let same = run.len() == live.len()
            && run
                .iter()
                .all(|(id, node)| live.get(id).is_some_and(|(n, _)| n == node));
        ensure!(
            run.len() == N && same && pids.len() == N,
            "running tasks {run:?}, live programs {live:?}, programs with the marker {pids:?}"
        );
        Ok(())
    };
    poll_until(
        "the cluster to converge after healing",
        Duration::from_secs(90),
        || check().map(Some),
    )?;
    eprintln!(
        "converged {} ms after healing",
        converged.elapsed().as_millis()
    );
    Poll::new(
        "one leader, 6 running tasks, 6 live programs",
        Duration::from_secs(10),
    )
    .every(Duration::from_secs(1))
    .holds(check)?;
    Ok(())
}

/// Issue 15: 3 managers + 2 workers, 5 process tasks. `kill -9` the leader: the new leader
/// marks no live node down and moves none of the tasks on live nodes, through its grace
/// period and past it. As a control, the dead leader is seen `down` and its tasks are
/// replaced, so the polling does see such changes.
#[test]
fn new_leader_marks_no_live_node_down_and_reschedules_nothing() -> Result<()> {
    const N: usize = 5;
    let mark = marker("7072");
    let mut cleanup = Cleanup::new(&mark);
    let (mut ms, ws) = start_cluster("gr-", 72, 3, 2)?;
    cleanup.watch(ms.iter().chain(&ws));
    wait_all_ready(&ms[0], 5)?;
    create_service(&ms[0], "grace", N, &mark, &[])?;
    {
        let all: Vec<&Daemon> = ms.iter().chain(&ws).collect();
        poll_until(
            "5 running tasks and 5 live programs",
            Duration::from_secs(60),
            || {
                Ok((running(&ms[0], "grace")?.len() == N
                    && live_everywhere(&all, &mark)?.len() == N)
                    .then_some(()))
            },
        )?;
    }
    let before = running(&ms[0], "grace")?;
    let leader = leaders(&ms[0])?;
    ensure!(leader.len() == 1, "one leader expected: {leader:?}");
    let dead = leader[0].clone();
    let di = ms
        .iter()
        .position(|m| m.name == dead)
        .context("the leader is not one of the managers")?;
    let kept: BTreeMap<String, String> = before
        .iter()
        .filter(|(_, n)| **n != dead)
        .map(|(i, n)| (i.clone(), n.clone()))
        .collect();
    let moved: BTreeSet<String> = before
        .iter()
        .filter(|(_, n)| **n == dead)
        .map(|(i, _)| i.clone())
        .collect();
    ensure!(kept.len() >= 4, "the tasks did not spread: {before:?}");
    let pids_before = {
        let live: Vec<&Daemon> = ms
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != di)
            .map(|(_, m)| m)
            .chain(&ws)
            .collect();
        live_everywhere(&live, &mark)?
    };

    eprintln!("kill -9 the leader {dead}; tasks before: {before:?}");
    ms[di].kill9();
    let survivors: Vec<&Daemon> = ms
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != di)
        .map(|(_, m)| m)
        .collect();
    let mut violations: BTreeSet<String> = BTreeSet::new();
    let mut new_leader: Option<(String, Instant)> = None;
    let mut dead_down = false;
    let mut replaced = moved.is_empty();
    let mut polls = 0;
    // Poll through the election, the grace period, and 8 s past it.
    let awaited = format!("a new leader that marked {dead} down and replaced its tasks");
    Poll::new(&awaited, Duration::from_secs(90))
        .every(Duration::from_millis(100))
        .until(|| {
            for m in &survivors {
                let (Ok(st), Ok(l), Ok(run)) = (statuses(m), leaders(m), running(m, "grace"))
                else {
                    continue;
                };
                polls += 1;
                for (node, status) in &st {
                    if *node != dead && status != "ready" {
                        violations.insert(format!("{} showed {node} {status}", m.name));
                    }
                }
                dead_down |= st.get(&dead).is_some_and(|s| s == "down");
                if new_leader.is_none()
                    && let [l] = l.as_slice()
                    && *l != dead
                {
                    eprintln!("{l} leads (seen on {})", m.name);
                    new_leader = Some((l.clone(), Instant::now()));
                }
                for (id, node) in &kept {
                    if run.get(id) != Some(node) {
                        violations.insert(format!(
                            "{} showed task {id} (running on {node} before) as {}",
                            m.name,
                            tasks(m, "grace")
                                .ok()
                                .and_then(|t| t.into_iter().find(|t| t["id"] == id.as_str()))
                                .map_or("gone".into(), |t| format!(
                                    "{} (desired {}) on {}",
                                    t["state"], t["desired_state"], t["node"]
                                ))
                        ));
                    }
                }
                replaced |= run.len() == N && moved.iter().all(|id| !run.contains_key(id));
            }
            if new_leader
                .as_ref()
                .is_some_and(|(_, at)| at.elapsed() >= Duration::from_secs(8))
                && dead_down
                && replaced
            {
                return Ok(Some(()));
            }
            bail!("leader {new_leader:?}, {dead} down: {dead_down}, replaced: {replaced}")
        })?;
    eprintln!("{polls} polls; {dead} seen down, its tasks {moved:?} replaced");
    ensure!(violations.is_empty(), "after the failover: {violations:#?}");
    let after = running(survivors[0], "grace")?;
    ensure!(after.len() == N, "{N} running tasks expected: {after:?}");
    for (id, node) in &kept {
        ensure!(
            after.get(id) == Some(node),
            "task {id} left {node}: {after:?}"
        );
        let (_, p) = &pids_before[id];
        ensure!(
            alive(*p),
            "the program of task {id} on {node} was restarted or stopped"
        );
    }
    Ok(())
}

/// Issue 15: 1 manager + 2 workers, 4 process tasks on the workers. `kill -9` one worker's
/// daemon (its shims and programs keep running), wait until its node is down and its tasks
/// run elsewhere, then start it again: the old copies end `shutdown`, their programs stop,
/// and exactly 4 tasks and 4 programs run from then on.
#[test]
fn worker_restarted_while_down_gets_no_duplicate() -> Result<()> {
    const N: usize = 4;
    let mark = marker("7073");
    let mut cleanup = Cleanup::new(&mark);
    let (ms, mut ws) = start_cluster("rs-", 73, 1, 2)?;
    cleanup.watch(ms.iter().chain(&ws));
    let m = &ms[0];
    wait_all_ready(m, 3)?;
    create_service(m, "back", N, &mark, &["--constraint", "node.role==worker"])?;
    let all_live = |ws: &[Daemon]| -> Result<BTreeMap<String, (String, Proc)>> {
        let all: Vec<&Daemon> = ms.iter().chain(ws).collect();
        live_everywhere(&all, &mark)
    };
    poll_until(
        "4 running tasks and 4 live programs",
        Duration::from_secs(60),
        || Ok((running(m, "back")?.len() == N && all_live(&ws)?.len() == N).then_some(())),
    )?;
    let victim = ws[0].name.clone();
    let old = live_programs(&ws[0], &mark);
    ensure!(
        !old.is_empty(),
        "no task on {victim}: {:?}",
        running(m, "back")?
    );

    eprintln!("kill -9 {victim}'s daemon; its tasks {:?}", old.keys());
    ws[0].kill9();
    for (id, p) in &old {
        ensure!(alive(*p), "task {id}'s program died with its daemon");
    }
    poll_until(
        "the worker down and 4 tasks running elsewhere",
        Duration::from_secs(60),
        || {
            let down = statuses(m)?.get(&victim).is_some_and(|s| s == "down");
            let run = running(m, "back")?;
            Ok((down && run.len() == N && run.values().all(|n| *n != victim)).then_some(()))
        },
    )?;
    // The copies on the down node still run (nobody can stop them): N + old programs.
    ensure!(
        marker_pids(&mark).len() == N + old.len(),
        "programs while {victim} is down: {:?}",
        marker_pids(&mark)
    );

    ws[0].start()?;
    let back = Instant::now();
    poll_until(
        "the worker back, its old copies shut down, 4 running tasks and 4 programs",
        Duration::from_secs(60),
        || {
            let st = statuses(m)?;
            ensure!(
                st.get(&victim).is_some_and(|s| s == "ready"),
                "nodes {st:?}"
            );
            let all = tasks(m, "back")?;
            let old_states: Vec<(&String, Option<&Value>)> = old
                .keys()
                .map(|id| {
                    (
                        id,
                        all.iter()
                            .find(|t| t["id"] == id.as_str())
                            .map(|t| &t["state"]),
                    )
                })
                .collect();
            ensure!(
                old_states
                    .iter()
                    .all(|(_, s)| s.is_some_and(|s| s == "shutdown")),
                "the old copies' states: {old_states:?}"
            );
            let old_alive: Vec<&Proc> = old.values().filter(|p| alive(**p)).collect();
            ensure!(
                old_alive.is_empty(),
                "old copies still alive: {old_alive:?}"
            );
            let run = running(m, "back")?;
            let live = all_live(&ws)?;
            let pids = marker_pids(&mark);
            ensure!(
                run.len() == N && run.keys().eq(live.keys()) && pids.len() == N,
                "running {run:?}, live {live:?}, programs {pids:?}"
            );
            Ok(Some(()))
        },
    )?;
    eprintln!(
        "old copies stopped {} ms after the restart",
        back.elapsed().as_millis()
    );
    Poll::new("4 running tasks and 4 programs", Duration::from_secs(12))
        .every(Duration::from_secs(1))
        .holds(|| {
            let run = running(m, "back")?;
            let live = all_live(&ws)?;
            let pids = marker_pids(&mark);
            ensure!(
                run.len() == N && run.keys().eq(live.keys()) && pids.len() == N,
                "running {run:?}, live {live:?}, programs {pids:?}"
            );
            Ok(())
        })?;
    Ok(())
}
