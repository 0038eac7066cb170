//! Issue 19: `daemon --metrics-addr` serves Prometheus metrics, scraped over HTTP and parsed
//! here line by line.
//!
//! Address block: 127.0.110.1–.3 (a manager and two workers, process-driver tasks); metrics
//! on port 29201, the published port 29202.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use shoal_tests::{Daemon, Poll, join_token, node_status};

const METRICS_PORT: u16 = 29201;
const PUBLISHED: u16 = 29202;
const MESH_ECHO: &str = env!("CARGO_BIN_EXE_mesh-echo");

/// One sample: its name and labels (`name{k="v",…}`) as written, and its value.
type Samples = BTreeMap<String, f64>;

/// A plain HTTP/1.0 GET: status, headers and body.
fn get(addr: SocketAddr, path: &str) -> Result<(u16, String, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let (head, body) = raw.split_once("\r\n\r\n").context("no end of headers")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status")?;
    Ok((status, head.to_string(), body.to_string()))
}

/// Scrapes `addr` and parses the OpenMetrics text strictly: every line a comment (`# HELP`,
/// `# TYPE`, `# UNIT`, the last `# EOF`) or `NAME[{LABELS}] VALUE`.
fn scrape(addr: SocketAddr) -> Result<Samples> {
    let (status, head, body) = get(addr, "/metrics")?;
    ensure!(status == 200, "GET /metrics: {status}\n{head}");
    ensure!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    ensure!(body.ends_with("# EOF\n"), "no # EOF at the end:\n{body}");
    let mut samples = Samples::new();
    for line in body.lines() {
        if let Some(comment) = line.strip_prefix("# ") {
            let kind = comment.split_whitespace().next().unwrap_or_default();
            ensure!(
                ["HELP", "TYPE", "UNIT", "EOF"].contains(&kind),
                "bad comment line: {line}"
            );
            continue;
        }
        let (series, value) = line.rsplit_once(' ').context(format!("bad line: {line}"))?;
        let name_end = series.find('{').unwrap_or(series.len());
        let name = &series[..name_end];
        ensure!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in: {line}"
        );
        if name_end < series.len() {
            ensure!(series.ends_with('}'), "unclosed labels in: {line}");
        }
        let value: f64 = value
            .parse()
            .with_context(|| format!("bad value in: {line}"))?;
        ensure!(
            samples.insert(series.to_string(), value).is_none(),
            "sample twice: {line}"
        );
    }
    Ok(samples)
}

fn value(s: &Samples, series: &str) -> Result<f64> {
    s.get(series).copied().with_context(|| {
        let names: Vec<&String> = s.keys().collect();
        format!("no sample {series} among {names:?}")
    })
}

fn metrics_addr(d: &Daemon) -> SocketAddr {
    SocketAddr::new(d.addr.ip(), METRICS_PORT)
}

/// Waits until `check` holds for `d`'s scrape; returns that scrape.
fn wait_scrape(d: &Daemon, what: &str, check: impl Fn(&Samples) -> bool) -> Result<Samples> {
    let addr = metrics_addr(d);
    let mut last = None;
    Poll::new(what, Duration::from_secs(30))
        .until(|| {
            let s = scrape(addr)?;
            let ok = check(&s);
            last = Some(s.clone());
            Ok(ok.then_some(s))
        })
        .with_context(|| format!("last scrape of {}: {last:?}", d.name))
}

#[test]
fn issue_19_metrics_are_scraped_and_parsed() -> Result<()> {
    let mut nodes: Vec<Daemon> = (1..=3)
        .map(|i| Daemon::new(&format!("mx{i}"), &format!("127.0.110.{i}:4747")))
        .collect::<Result<_>>()?;
    for d in &mut nodes {
        let addr = metrics_addr(d).to_string();
        d.extra = vec![
            "--metrics-addr".into(),
            addr,
            "--drivers".into(),
            "process".into(),
        ];
        d.start()?;
    }
    let (m, rest) = nodes.split_first().context("nodes")?;
    let (w1, w2) = (&rest[0], &rest[1]);

    // Before init: served, no Raft, nothing in the gossip view.
    let s = scrape(metrics_addr(m))?;
    assert_eq!(value(&s, "shoal_raft_is_leader")?, 0.0);
    assert_eq!(value(&s, "shoal_gossip_members{state=\"alive\"}")?, 0.0);
    // Only /metrics.
    let (status, _, _) = get(metrics_addr(m), "/other")?;
    assert_eq!(status, 404);

    m.ok(&["init"])?;
    let token = join_token(m, "worker")?;
    w1.ok(&["join", "--token", &token, &m.addr.to_string()])?;
    // A rotated token is refused, and counted by reason on the manager.
    m.ok(&["join-token", "--rotate", "worker"])?;
    let err = w2.fails(&["join", "--token", &token, &m.addr.to_string()])?;
    ensure!(err.contains("rotated"), "{err}");
    let fresh = join_token(m, "worker")?;
    w2.ok(&["join", "--token", &fresh, &m.addr.to_string()])?;
    for w in ["mx2", "mx3"] {
        Poll::new("workers ready", Duration::from_secs(20))
            .until(|| Ok((node_status(m, w)?.as_deref() == Some("ready")).then_some(())))?;
    }

    let s = wait_scrape(m, "the leader's figures", |s| {
        s.get("shoal_dispatch_sessions") == Some(&3.0)
            && s.get("shoal_gossip_members{state=\"alive\"}") == Some(&2.0)
    })?;
    assert_eq!(value(&s, "shoal_raft_is_leader")?, 1.0);
    assert_eq!(value(&s, "shoal_raft_has_leader")?, 1.0);
    assert_eq!(value(&s, "shoal_raft_voters")?, 1.0);
    ensure!(value(&s, "shoal_raft_term")? >= 1.0);
    let last_log = value(&s, "shoal_raft_last_log_index")?;
    let applied = value(&s, "shoal_raft_last_applied_index")?;
    let commit = value(&s, "shoal_raft_commit_index")?;
    ensure!(
        applied > 0.0 && commit <= last_log && applied <= last_log,
        "{s:?}"
    );
    assert_eq!(
        value(&s, "shoal_raft_apply_lag")?,
        last_log - applied,
        "apply lag is the log not applied yet"
    );
    assert_eq!(
        value(&s, "shoal_nodes{status=\"ready\",role=\"manager\"}")?,
        1.0
    );
    assert_eq!(
        value(&s, "shoal_nodes{status=\"ready\",role=\"worker\"}")?,
        2.0
    );
    assert_eq!(
        value(&s, "shoal_join_refused_total{reason=\"rotated\"}")?,
        1.0
    );
    assert_eq!(value(&s, "shoal_join_admitted_total")?, 2.0);

    // A worker has no Raft, but its own view, sessions none.
    let ws = wait_scrape(w1, "a worker's view", |s| {
        s.get("shoal_gossip_members{state=\"alive\"}") == Some(&2.0)
    })?;
    assert_eq!(value(&ws, "shoal_raft_is_leader")?, 0.0);
    assert_eq!(value(&ws, "shoal_dispatch_sessions")?, 0.0);

    // Three published process tasks: tasks by state, reconcile times, the mesh's counters.
    let publish = format!("{PUBLISHED}:8080");
    m.ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "echo",
        "--driver",
        "process",
        "--replicas",
        "3",
        "-p",
        &publish,
        MESH_ECHO,
    ])?;
    let s = wait_scrape(m, "3 running tasks", |s| {
        s.get("shoal_tasks{state=\"running\",desired=\"running\"}") == Some(&3.0)
    })?;
    assert_eq!(value(&s, "shoal_services")?, 1.0);
    let starts: f64 = [m, w1, w2]
        .iter()
        .map(|d| {
            scrape(metrics_addr(d)).and_then(|s| {
                value(
                    &s,
                    "shoal_worker_reconcile_seconds_count{op=\"start\",driver=\"process\"}",
                )
            })
        })
        .sum::<Result<f64>>()?;
    assert_eq!(starts, 3.0, "one timed start per task across the nodes");

    let before = scrape(metrics_addr(w1))?;
    let forwards = |s: &Samples| -> f64 {
        ["local_forward", "remote_forward"]
            .iter()
            .filter_map(|o| s.get(&format!("shoal_mesh_connections_total{{outcome=\"{o}\"}}")))
            .sum()
    };
    let target = SocketAddr::new(w1.addr.ip(), PUBLISHED);
    Poll::new("the published port answers", Duration::from_secs(20)).until(|| {
        Ok(get(target, "/")
            .ok()
            .filter(|(status, _, _)| *status == 200)
            .map(drop))
    })?;
    for _ in 0..5 {
        let (status, _, body) = get(target, "/")?;
        ensure!(status == 200, "{status} {body}");
    }
    let after = scrape(metrics_addr(w1))?;
    ensure!(
        forwards(&after) >= forwards(&before) + 5.0,
        "mesh connections did not count: before {before:?} after {after:?}"
    );
    ensure!(
        value(&after, "shoal_mesh_bytes_total{direction=\"out\"}")?
            > value(&before, "shoal_mesh_bytes_total{direction=\"out\"}")?,
        "bytes out did not move"
    );
    m.ok(&["service", "rm", "echo"])?;
    Ok(())
}

#[test]
fn issue_19_a_taken_metrics_address_is_a_one_line_error() -> Result<()> {
    let holder = std::net::TcpListener::bind("127.0.110.9:29201")?;
    let mut d = Daemon::new("mxbad", "127.0.110.9:4747")?;
    d.extra = vec!["--metrics-addr".into(), "127.0.110.9:29201".into()];
    let mut child = d.spawn()?;
    let status = child
        .wait_timeout(Duration::from_secs(20))?
        .context("the daemon kept running with its metrics address taken")?;
    drop(holder);
    ensure!(!status.success(), "exit {status}");
    let log = d.log();
    if !log.contains("cannot listen on 127.0.110.9:29201 (--metrics-addr)") {
        bail!("no clear error in the log:\n{log}");
    }
    Ok(())
}
