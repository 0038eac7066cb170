//! Issue 19: `shoal events` — every manager tells the same story, from its own applied log.
//!
//! Address block: 127.0.102.x.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use shoal_tests::{ClusterContainers, Daemon, cluster_id, docker_ready, node_status, poll_until};

const IMAGE: &str = shoal_tests::TEST_IMAGE;

/// `shoal events --format json` left running with its output in a file (read while it
/// runs); killed when dropped.
struct Stream {
    child: Child,
    path: PathBuf,
}

impl Stream {
    fn start(d: &Daemon, tag: &str) -> Result<Stream> {
        let path =
            std::env::temp_dir().join(format!("shoal-events-{}-{tag}.ndjson", std::process::id()));
        let out = File::create(&path).with_context(|| format!("cannot create {path:?}"))?;
        let child = Command::new(shoal_tests::shoal_bin())
            .arg("-H")
            .arg(format!("unix://{}", d.socket.display()))
            .args(["events", "--format", "json"])
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::null())
            .spawn()
            .context("cannot run shoal events")?;
        Ok(Stream { child, path })
    }

    fn events(&self) -> Result<Vec<Value>> {
        let text = std::fs::read_to_string(&self.path)?;
        // A last line may be half written.
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn key(e: &Value) -> (String, String, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (s(&e["type"]), s(&e["action"]), s(&e["actor"]["id"]))
}

/// The events from the service's creation on.
fn story(events: &[Value]) -> Vec<(String, String, String)> {
    let keys: Vec<_> = events.iter().map(key).collect();
    match keys
        .iter()
        .position(|(t, a, _)| t == "service" && a == "create")
    {
        Some(i) => keys[i..].to_vec(),
        None => Vec::new(),
    }
}

fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn position(s: &[(String, String, String)], t: &str, a: &str, id: Option<&str>) -> Option<usize> {
    s.iter()
        .position(|(et, ea, eid)| et == t && ea == a && id.is_none_or(|i| i == eid))
}

/// Issue 19: a `service scale` and a worker's `kill -9` (node down, its task orphaned, a
/// replacement) arrive live, in the same order, on two managers that are not asked to agree
/// (each streams from its own applied log); `--since`/`--until` replay the kept events and
/// end; `--filter type=service` keeps only those; a bad filter is a one-line error.
#[test]
fn events_tell_the_same_story_on_two_managers() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let (ms, mut ws) = shoal_tests::start_cluster_from("ev-", 102, 1, 3, 1)?;
    let _cleanup = ClusterContainers(cluster_id(&ms[0])?);
    let w1_id = ws[0].json(&["info"])?["node_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();

    // A worker has no events to give.
    let err = ws[0].fails(&["events", "--until", "0"])?;
    ensure!(err.contains("this node is not a manager"), "{err}");
    // Bad filters and times.
    for (args, code) in [
        (vec!["events", "--filter", "colour=red"], 1),
        (vec!["events", "--filter", "type=image"], 1),
        (vec!["events", "--filter", "type"], 1),
        (vec!["events", "--since", "yesterday"], 2),
    ] {
        let out = ms[1].cli(&args)?;
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        ensure!(
            out.status.code() == Some(code),
            "{args:?}: {:?} {err}",
            out.status
        );
        ensure!(
            err.trim().lines().count() == 1 && err.starts_with("Error: "),
            "{args:?}: {err}"
        );
    }

    let a = Stream::start(&ms[1], "m2")?;
    let b = Stream::start(&ms[2], "m3")?;
    // Both streams are open before anything happens (a leader event or none; nothing
    // from a service yet).
    std::thread::sleep(Duration::from_millis(500));
    let t0 = now_secs();

    ms[0].ok(&[
        "service",
        "create",
        "--name",
        "web",
        "--replicas",
        "2",
        IMAGE,
        "sleep",
        "100000",
    ])?;
    ms[0].ok(&["service", "scale", "web=4"])?;
    let service_id = ms[0].json(&["service", "inspect", "web"])?;
    let service_id = service_id.get(0).unwrap_or(&service_id)["id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    ensure!(!service_id.is_empty(), "no service id");
    poll_until(
        "a task of web on the worker",
        Duration::from_secs(60),
        || {
            let ts = shoal_tests::tasks(&ms[0], "web")?;
            Ok(ts
                .iter()
                .any(|t| t["node"] == "ev-w1" && t["state"] == "running")
                .then_some(()))
        },
    )?;
    ws[0].kill9();
    poll_until("ev-w1 down", Duration::from_secs(30), || {
        Ok((node_status(&ms[0], "ev-w1")?.as_deref() == Some("down")).then_some(()))
    })?;

    // Both managers tell the same story, live: service created, scaled, the node down,
    // its task orphaned, then a replacement created.
    let (sa, sb) = poll_until(
        "the same story on m2 and m3",
        Duration::from_secs(60),
        || {
            let sa = story(&a.events()?);
            let sb = story(&b.events()?);
            let Some(down) = position(&sa, "node", "down", Some(&w1_id)) else {
                return Ok(None);
            };
            let Some(orphaned) = position(&sa, "task", "orphaned", None) else {
                return Ok(None);
            };
            let replaced = sa[orphaned..]
                .iter()
                .filter(|(t, a, _)| t == "task" && a == "running")
                .count();
            Ok((sa == sb && orphaned > down && replaced >= 1).then_some((sa, sb)))
        },
    )?;
    eprintln!("{} events on both managers", sa.len());
    let create = position(&sa, "service", "create", Some(&service_id)).context("create")?;
    let scale = position(&sa, "service", "scale", Some(&service_id)).context("scale")?;
    let down = position(&sa, "node", "down", Some(&w1_id)).context("down")?;
    ensure!(create < scale && scale < down, "{sa:?}");
    ensure!(
        sa[create..scale].iter().all(|(t, _, _)| t != "node"),
        "{sa:?}"
    );
    assert_eq!(sa, sb);
    // Every event has the documented fields, and the index grows.
    let raw = a.events()?;
    let mut last = 0;
    for e in &raw {
        let index = e["index"].as_u64().context("index")?;
        ensure!(index >= last, "index went back: {e}");
        last = index;
        ensure!(
            e["time_ms"].as_u64().is_some() && e["time"].is_string(),
            "{e}"
        );
        ensure!(e["actor"]["attributes"].is_object(), "{e}");
    }
    let scale_event = raw
        .iter()
        .find(|e| e["action"] == "scale")
        .context("scale event")?;
    assert_eq!(scale_event["actor"]["attributes"]["replicas.new"], "4");
    assert_eq!(scale_event["actor"]["attributes"]["name"], "web");

    // --since/--until replay the kept events and end; --filter type=service keeps those.
    let t1 = now_secs();
    let since = format!("{t0:.3}");
    let until = format!("{t1:.3}");
    let out = ms[2].ok(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        "type=service",
        "--format",
        "json",
    ])?;
    let replay: Vec<Value> = out
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    let actions: Vec<String> = replay
        .iter()
        .map(|e| {
            assert_eq!(e["type"], "service", "{e}");
            e["action"].as_str().unwrap_or_default().to_string()
        })
        .collect();
    assert_eq!(actions, ["create", "scale"], "{out}");
    let human = ms[1].ok(&[
        "events",
        "--since",
        &since,
        "--until",
        &until,
        "--filter",
        "type=node",
    ])?;
    ensure!(
        human
            .lines()
            .any(|l| l.contains(&format!("node down {w1_id} (")) && l.contains("name=ev-w1")),
        "{human}"
    );
    // Until in the past, since later: nothing, and it ends.
    let out = ms[1].ok(&[
        "events",
        "--since",
        &until,
        "--until",
        &until,
        "--filter",
        "type=task",
    ])?;
    ensure!(
        out.lines().all(|l| !l.contains("task create")),
        "nothing from before --since: {out}"
    );
    drop(ws);
    Ok(())
}
