//! `service logs`: a task's output fetched from the node that runs it (issue 19).
//!
//! A manager serving `GET /v1/services/{ref}/logs` resolves the tasks from the cluster state,
//! reads its own tasks straight from its drivers and asks every other node over a
//! [`TAG_LOGS`] stream ([`LogsRequest`] in; [`LogsFrame`]s out until `End` or `Error`). Only
//! managers may ask (trust.rs); a node answers for tasks its own drivers run, nothing else.
//! Lines carry the time the engine (Docker) or the shim (process driver) saw them, so the
//! manager can merge tasks by time.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use shoal_runtime::{BoxStream, Driver, LogOptions, LogStream};
use tokio::sync::mpsc;

use crate::api::server::{ApiError, ApiRequest, Reply};
use crate::api::services::{TaskFilter, TaskRow, task_rows};
use crate::api::types::LogEntry;
use crate::daemon::Node;
use crate::manager::Manager;
use crate::net::{self, NetError};
use crate::pki::NodeId;

/// Stream tag of a logs request (manager → the node running the task).
pub const TAG_LOGS: u8 = 11;
/// Largest [`LogsRequest`] frame.
pub const MAX_LOGS_REQUEST: usize = 4 * 1024;
/// Longest line sent; longer ones are cut (Docker splits at 16 KiB too).
pub const MAX_LINE: usize = 16 * 1024;
/// Largest [`LogsFrame`]: one line and its envelope.
pub const MAX_LOGS_FRAME: usize = MAX_LINE + 1024;
/// A following server sends [`LogsFrame::Alive`] after this long without a line.
const ALIVE_EVERY: Duration = Duration::from_secs(10);
/// A reader gives up on a node silent for this long (three missed `Alive`s).
const READ_DEADLINE: Duration = Duration::from_secs(30);
/// A server gives up on a reader that does not take a frame for this long.
const WRITE_DEADLINE: Duration = Duration::from_secs(30);
/// How often `--follow` looks for new tasks of the service.
const RESCAN_EVERY: Duration = Duration::from_secs(1);

/// Asks a node for the output of one of its tasks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsRequest {
    /// The task.
    pub task_id: String,
    /// Keep streaming until the task ends or the asker goes away.
    pub follow: bool,
    /// Only the last lines (per stream for the process driver).
    pub tail: Option<u64>,
    /// Only lines at or after this time (milliseconds since the Unix epoch).
    pub since_ms: Option<u64>,
}

/// One line of a task's output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    /// When it was written, nanoseconds since the Unix epoch (the serving node's clock when
    /// the driver did not know).
    pub timestamp_ns: i64,
    /// From stderr (else stdout).
    pub stderr: bool,
    /// The bytes, newline included when there was one.
    pub data: Vec<u8>,
}

/// What a node answers a [`LogsRequest`] with, frame after frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LogsFrame {
    /// A line.
    Line(LogLine),
    /// Nothing new while following (so the asker can tell a quiet task from a dead node).
    Alive,
    /// No more lines (the last frame).
    End,
    /// The request failed (the last frame): one line.
    Error(String),
}

fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// The lines of `req.task_id` from whichever of `drivers` runs it here.
async fn local_lines(
    drivers: Vec<Arc<dyn Driver>>,
    req: &LogsRequest,
) -> Result<BoxStream<'static, Result<LogLine, String>>, String> {
    let mut found = None;
    for d in drivers {
        if d.inspect(&req.task_id).await.is_ok() {
            found = Some(d);
            break;
        }
    }
    let Some(driver) = found else {
        return Err(format!("task {} does not run on this node", req.task_id));
    };
    let options = LogOptions {
        follow: req.follow,
        tail: req.tail.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
        since_ms: req.since_ms,
        timestamps: true,
    };
    let task = req.task_id.clone();
    Ok(driver
        .logs(&req.task_id, options)
        .map(move |chunk| match chunk {
            Ok(c) => {
                let mut data = c.data.to_vec();
                data.truncate(MAX_LINE);
                Ok(LogLine {
                    timestamp_ns: c.timestamp_ns.unwrap_or_else(now_ns),
                    stderr: c.stream == LogStream::Stderr,
                    data,
                })
            }
            Err(e) => Err(format!("reading the logs of task {task}: {e}")),
        })
        .boxed())
}

async fn write_within(send: &mut quinn::SendStream, frame: &LogsFrame) -> Result<(), NetError> {
    tokio::time::timeout(WRITE_DEADLINE, net::write_frame(send, TAG_LOGS, frame))
        .await
        .map_err(|_| NetError::RequestTimeout(WRITE_DEADLINE))?
}

/// Serves a [`TAG_LOGS`] stream (the asker is a manager: trust.rs) from this node's drivers.
pub(crate) async fn serve_stream(
    drivers: Vec<Arc<dyn Driver>>,
    req: LogsRequest,
    mut send: quinn::SendStream,
) -> Result<(), NetError> {
    let mut lines = match local_lines(drivers, &req).await {
        Ok(l) => l,
        Err(message) => return net::respond(&mut send, TAG_LOGS, &LogsFrame::Error(message)).await,
    };
    let stopped = send.stopped();
    tokio::pin!(stopped);
    loop {
        let next = tokio::select! {
            _ = &mut stopped => return Ok(()),
            n = tokio::time::timeout(ALIVE_EVERY, lines.next()) => n,
        };
        let frame = match next {
            Err(_) => LogsFrame::Alive,
            Ok(None) => break,
            Ok(Some(Ok(line))) => LogsFrame::Line(line),
            Ok(Some(Err(message))) => {
                return net::respond(&mut send, TAG_LOGS, &LogsFrame::Error(message)).await;
            }
        };
        write_within(&mut send, &frame).await?;
    }
    net::respond(&mut send, TAG_LOGS, &LogsFrame::End).await
}

/// Reads one task's lines from node `node_id` at `addr` into `out`.
async fn fetch_remote(
    node: &Node,
    node_id: &str,
    addr: &str,
    req: &LogsRequest,
    out: &mpsc::Sender<Result<LogLine, String>>,
) -> Result<(), String> {
    let id: NodeId = node_id
        .parse()
        .map_err(|e| format!("bad node ID {node_id}: {e}"))?;
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad address {addr} of node {node_id}: {e}"))?;
    let conn = node
        .pool
        .get_or_dial(&id, addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = tokio::time::timeout(READ_DEADLINE, conn.open_bi())
        .await
        .map_err(|_| "opening a stream timed out".to_string())?
        .map_err(|e| e.to_string())?;
    net::write_frame(&mut send, TAG_LOGS, req)
        .await
        .map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    loop {
        let frame = tokio::time::timeout(
            READ_DEADLINE,
            net::read_frame::<LogsFrame>(&mut recv, MAX_LOGS_FRAME),
        )
        .await
        .map_err(|_| format!("no answer for {} s", READ_DEADLINE.as_secs()))?
        .map_err(|e| e.to_string())?;
        match frame {
            (TAG_LOGS, LogsFrame::Line(line)) => {
                if out.send(Ok(line)).await.is_err() {
                    let _ = recv.stop(0u32.into());
                    return Ok(());
                }
            }
            (TAG_LOGS, LogsFrame::Alive) => {
                if out.is_closed() {
                    let _ = recv.stop(0u32.into());
                    return Ok(());
                }
            }
            (TAG_LOGS, LogsFrame::End) => return Ok(()),
            (TAG_LOGS, LogsFrame::Error(message)) => return Err(message),
            (tag, _) => return Err(format!("unexpected answer tag {tag}")),
        }
    }
}

/// A task whose logs are read, as the prefix shows it.
#[derive(Debug, Clone)]
struct Source {
    row: TaskRow,
    addr: Option<String>,
}

/// What a task reader reports to the merger.
enum Event {
    Line(usize, LogLine),
    /// The node of the task could not be asked (node ID, hostname, why).
    Unreachable(String, String, String),
    /// The task's node answered that it cannot give its logs (why).
    Failed(usize, String),
    Done,
}

/// Which tasks a reference names: a service's tasks placed on a node, or one task (ID or
/// unique prefix). Ended tasks are included, as `docker service logs` includes them: their
/// node keeps their container (or process record), and so their lines, while they stay in
/// the service's history and within the worker's retention time (`assignments_for`); one
/// whose copy is gone gives no lines and no warning.
fn resolve(
    state: &crate::manager::state::ClusterState,
    reference: &str,
) -> Result<Vec<Source>, String> {
    let rows = if let Ok(rec) = state.services.resolve_service(reference) {
        task_rows(&state.services, &state.nodes, TaskFilter::Service(&rec.id))
    } else {
        let matches: Vec<&String> = state
            .services
            .tasks
            .keys()
            .filter(|id| !reference.is_empty() && id.starts_with(reference))
            .collect();
        match matches.as_slice() {
            [one] => state
                .services
                .tasks
                .get(one.as_str())
                .map(|t| {
                    vec![crate::api::services::TaskRow::of(
                        &state.services,
                        &state.nodes,
                        t,
                    )]
                })
                .unwrap_or_default(),
            [] => {
                return Err(format!(
                    "no such service or task: {reference} (see `shoal service ls`)"
                ));
            }
            _ => {
                return Err(format!(
                    "task prefix {reference} is ambiguous: give more of the ID"
                ));
            }
        }
    };
    Ok(rows
        .into_iter()
        .filter(|r| r.node_id.is_some() && !matches!(r.state.as_str(), "pending" | "assigned"))
        .map(|row| {
            let addr = row
                .node_id
                .as_deref()
                .and_then(|n| state.nodes.get(n))
                .map(|n| n.addr.clone());
            Source { row, addr }
        })
        .collect())
}

/// Parses `--since`: milliseconds since the epoch, an RFC 3339 time, or a duration ago
/// (`10m`, `1h30m`).
pub fn parse_since(value: &str, now: std::time::SystemTime) -> Result<u64, String> {
    let to_ms = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    };
    if let Ok(ms) = value.parse::<u64>() {
        return Ok(ms);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(value) {
        return Ok(to_ms(t));
    }
    match humantime::parse_duration(value) {
        Ok(d) => Ok(to_ms(now.checked_sub(d).unwrap_or(std::time::UNIX_EPOCH))),
        Err(_) => Err(format!(
            "bad --since {value:?}: give a duration (10m, 1h30m) or an RFC 3339 time (2026-01-02T15:04:05Z)"
        )),
    }
}

/// The entry of one line of task `row`.
fn entry(row: &TaskRow, line: &LogLine) -> LogEntry {
    let secs = line.timestamp_ns.div_euclid(1_000_000_000);
    let nanos = line.timestamp_ns.rem_euclid(1_000_000_000);
    let time = std::time::UNIX_EPOCH
        + Duration::new(
            u64::try_from(secs).unwrap_or(0),
            u32::try_from(nanos).unwrap_or(0),
        );
    let name = match row.slot {
        Some(slot) => format!("{}.{slot}", row.service),
        None => format!(
            "{}.{}",
            row.service,
            row.node_id.as_deref().unwrap_or("").get(..12).unwrap_or("")
        ),
    };
    LogEntry {
        name,
        task_id: row.id.clone(),
        node_id: row.node_id.clone().unwrap_or_default(),
        node: row.node.clone().unwrap_or_default(),
        timestamp: humantime::format_rfc3339_nanos(time).to_string(),
        timestamp_ns: line.timestamp_ns,
        stream: if line.stderr { "stderr" } else { "stdout" }.into(),
        line: String::from_utf8_lossy(&line.data)
            .trim_end_matches('\n')
            .to_owned(),
        warning: None,
    }
}

fn warning(message: String) -> LogEntry {
    LogEntry {
        warning: Some(message),
        ..LogEntry::default()
    }
}

/// `GET /v1/services/{ref}/logs?follow=&tail=&since=`: the merged lines as NDJSON
/// [`LogEntry`]s (and `{"warning": …}` entries for nodes that could not be asked).
pub(crate) async fn serve_api(
    node: Arc<Node>,
    manager: Arc<Manager>,
    reference: &str,
    req: &ApiRequest,
) -> Result<Reply, ApiError> {
    let follow = req.flag("follow");
    let tail = match req.query.get("tail").map(String::as_str) {
        None | Some("" | "all") => None,
        Some(n) => Some(n.parse::<u64>().map_err(|_| {
            ApiError::bad_request(format!("bad tail {n:?}: give a number of lines or `all`"))
        })?),
    };
    let since_ms = match req.query.get("since").map(String::as_str) {
        None | Some("") => None,
        Some(s) => {
            Some(parse_since(s, std::time::SystemTime::now()).map_err(ApiError::bad_request)?)
        }
    };
    let reference = reference.to_owned();
    let sources = manager
        .read_linearizable(|s| resolve(s, &reference))
        .await
        .map_err(|e| ApiError::unavailable(e.to_string()))?
        .map_err(ApiError::not_found)?;
    let (tx, rx) = mpsc::channel(256);
    tokio::spawn(merge(
        node, manager, reference, sources, follow, tail, since_ms, tx,
    ));
    Ok(Reply::Stream(rx))
}

/// Reads every source, and (following) the tasks that appear later, into `tx`.
#[allow(clippy::too_many_arguments)]
async fn merge(
    node: Arc<Node>,
    manager: Arc<Manager>,
    reference: String,
    sources: Vec<Source>,
    follow: bool,
    tail: Option<u64>,
    since_ms: Option<u64>,
    tx: mpsc::Sender<serde_json::Value>,
) {
    let (events_tx, mut events) = mpsc::channel::<Event>(256);
    let mut started: Vec<TaskRow> = Vec::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut running = 0usize;
    let start = |src: Source, index: usize| {
        let node = node.clone();
        let events_tx = events_tx.clone();
        let req = LogsRequest {
            task_id: src.row.id.clone(),
            follow,
            tail,
            since_ms,
        };
        tokio::spawn(read_task(node, src, index, req, events_tx));
    };
    for src in sources {
        seen.insert(src.row.id.clone());
        start(src.clone(), started.len());
        started.push(src.row);
        running += 1;
    }
    let mut warned: BTreeSet<String> = BTreeSet::new();
    let mut collected: Vec<(i64, usize, LogLine)> = Vec::new();
    let mut rescan = tokio::time::interval(RESCAN_EVERY);
    rescan.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let send = |e: LogEntry| serde_json::to_value(e).unwrap_or_default();
    loop {
        if !follow && running == 0 {
            break;
        }
        let event = tokio::select! {
            () = tx.closed() => return,
            e = events.recv() => e,
            _ = rescan.tick(), if follow => {
                let found = manager.read_local(|s| resolve(s, &reference)).unwrap_or_default();
                for src in found {
                    if src.row.desired_state == "running" && seen.insert(src.row.id.clone()) {
                        start(src.clone(), started.len());
                        started.push(src.row);
                        running += 1;
                    }
                }
                continue;
            }
        };
        match event {
            None | Some(Event::Done) => running = running.saturating_sub(1),
            Some(Event::Line(i, line)) => {
                if follow {
                    if tx.send(send(entry(&started[i], &line))).await.is_err() {
                        return;
                    }
                } else {
                    collected.push((line.timestamp_ns, i, line));
                }
            }
            Some(Event::Unreachable(node_id, host, why)) => {
                if warned.insert(node_id.clone()) {
                    let message = format!(
                        "node {host} ({node_id}) did not answer for its tasks' logs: {why}"
                    );
                    if tx.send(send(warning(message))).await.is_err() {
                        return;
                    }
                }
            }
            Some(Event::Failed(i, why)) => {
                // A task that ended may have had its container removed: say so only for
                // tasks meant to run.
                if started[i].desired_state == "running" {
                    let message = format!("task {}: {why}", started[i].id);
                    if tx.send(send(warning(message))).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
    collected.sort_by_key(|(ts, i, _)| (*ts, *i));
    for (_, i, line) in collected {
        if tx.send(send(entry(&started[i], &line))).await.is_err() {
            return;
        }
    }
}

/// Reads one task's lines (from this node's drivers or over QUIC) into `events`.
async fn read_task(
    node: Arc<Node>,
    src: Source,
    index: usize,
    req: LogsRequest,
    events: mpsc::Sender<Event>,
) {
    let node_id = src.row.node_id.clone().unwrap_or_default();
    let (line_tx, mut line_rx) = mpsc::channel::<Result<LogLine, String>>(64);
    let forward = {
        let events = events.clone();
        async move {
            while let Some(item) = line_rx.recv().await {
                let event = match item {
                    Ok(line) => Event::Line(index, line),
                    Err(why) => Event::Failed(index, why),
                };
                if events.send(event).await.is_err() {
                    return;
                }
            }
        }
    };
    let fetch = async {
        if node_id == node.node_id {
            match local_lines(node.mesh_tasks.all(), &req).await {
                Ok(mut lines) => {
                    while let Some(l) = lines.next().await {
                        if line_tx.send(l).await.is_err() {
                            break;
                        }
                    }
                }
                Err(why) => {
                    let _ = line_tx.send(Err(why)).await;
                }
            }
        } else {
            let addr = src.addr.clone().unwrap_or_default();
            if let Err(why) = fetch_remote(&node, &node_id, &addr, &req, &line_tx).await {
                let is_answer = why.contains("does not run on this node")
                    || why.starts_with("reading the logs");
                let event = if is_answer {
                    Event::Failed(index, why)
                } else {
                    Event::Unreachable(
                        node_id.clone(),
                        src.row.node.clone().unwrap_or_else(|| node_id.clone()),
                        why,
                    )
                };
                let _ = events.send(event).await;
            }
        }
        drop(line_tx);
    };
    tokio::join!(fetch, forward);
    let _ = events.send(Event::Done).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_times_and_millis() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(10_000);
        assert_eq!(parse_since("10s", now), Ok(9_990_000));
        assert_eq!(parse_since("1500", now), Ok(1500));
        assert_eq!(parse_since("1970-01-01T00:00:02Z", now), Ok(2000));
        assert!(parse_since("yesterday", now).is_err());
        assert_eq!(parse_since("100000h", now), Ok(0));
    }

    #[test]
    fn entries_name_the_task_as_docker_does() {
        let row: TaskRow = serde_json::from_value(serde_json::json!({
            "id": "abcdef0123456789", "service": "web", "slot": 2, "node_id": "n1",
            "node": "node-2", "image": "x", "desired_state": "running", "state": "running",
            "error": null, "exit_code": null, "service_id": "s", "attempt": 0, "health": null,
            "created_at": "", "updated_at": "", "ended_at": null
        }))
        .expect("row");
        let e = entry(
            &row,
            &LogLine {
                timestamp_ns: 1_500_000_000,
                stderr: true,
                data: b"hello\n".to_vec(),
            },
        );
        assert_eq!(e.name, "web.2");
        assert_eq!(e.line, "hello");
        assert_eq!(e.stream, "stderr");
        assert_eq!(e.timestamp, "1970-01-01T00:00:01.500000000Z");
    }
}
