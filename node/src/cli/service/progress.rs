//! Following a rolling update or rollback as `docker service update` does: the overall count,
//! one line per slot, then `verify: Service converged`; a paused or rolled back update ends
//! the command with an error. [`render`] is pure (rows in, lines and verdict out); [`follow`]
//! polls the daemon and prints.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::time::Duration;

use anyhow::{Result, bail};

use crate::api::client::{Client, ClientError};
use crate::api::{ServiceRow, TaskRow};

/// What the command started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// `service update`: a rolling update to `version`.
    Update {
        /// The version the update made.
        version: u64,
    },
    /// `service rollback`: a rollback to the previous spec, as `version`.
    Rollback {
        /// The version the rollback made.
        version: u64,
    },
}

/// One poll's picture: the lines to show, and the end if it has come (`Err`: the message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// `overall progress: K out of N tasks`, then `S/N: state` per slot.
    pub lines: Vec<String>,
    /// `Some(Ok)`: converged; `Some(Err(message))`: paused, rolled back or superseded.
    pub outcome: Option<Result<(), String>>,
}

/// The state shown for a task: its state word, `starting` while a running task's health
/// check has not passed yet, with the error of a pending, failed or rejected task.
fn detail(t: &TaskRow) -> String {
    match (t.state.as_str(), t.health.as_deref(), t.error.as_deref()) {
        ("running", Some("starting"), _) => "starting".into(),
        ("running", Some("unhealthy"), _) => "unhealthy".into(),
        (s @ ("pending" | "failed" | "rejected"), _, Some(e)) if !e.is_empty() => {
            format!("{s}: {e}")
        }
        (s, _, _) => s.to_string(),
    }
}

/// True when `t` counts as done: it runs the current spec and is running (and healthy when
/// it has a health check).
fn done(t: &TaskRow) -> bool {
    t.up_to_date
        && t.desired_state == "running"
        && t.state == "running"
        && !matches!(t.health.as_deref(), Some("starting" | "unhealthy"))
}

/// The task shown for a slot: its up-to-date task wanted running, else the old one still
/// wanted running, else its newest task.
fn pick<'a>(tasks: &[&'a TaskRow]) -> Option<&'a TaskRow> {
    let wanted = |t: &&&TaskRow| t.desired_state == "running";
    tasks
        .iter()
        .filter(wanted)
        .find(|t| t.up_to_date)
        .or_else(|| tasks.iter().find(wanted))
        .or_else(|| tasks.first())
        .copied()
}

/// The progress of `service` from its task `rows` (as `service ps` lists them: by slot, newest
/// first). Replicated: N is the replica count and the slots are `1..=N`; global: N is the
/// number of nodes with a task wanted running. K counts the slots whose task is done.
pub fn render(service: &ServiceRow, rows: &[TaskRow], watch: Watch) -> Frame {
    let mut slots: BTreeMap<(u64, String), Vec<&TaskRow>> = BTreeMap::new();
    let global = service.mode == "global";
    if global {
        for t in rows.iter().filter(|t| t.slot.is_none()) {
            let node = t.node_id.clone().unwrap_or_default();
            slots.entry((0, node)).or_default().push(t);
        }
        // Only nodes with a task wanted running count.
        slots.retain(|_, ts| ts.iter().any(|t| t.desired_state == "running"));
    } else {
        let n = service.replicas.unwrap_or(service.desired_tasks);
        for s in 1..=n {
            slots.insert((s, String::new()), Vec::new());
        }
        for t in rows {
            if let Some(v) = t.slot.and_then(|s| slots.get_mut(&(s, String::new()))) {
                v.push(t);
            }
        }
    }
    let total = slots.len();
    let mut finished = 0;
    let mut per_slot = Vec::with_capacity(total);
    for (i, tasks) in slots.values().enumerate() {
        let shown = pick(tasks);
        if shown.is_some_and(done) {
            finished += 1;
        }
        let state = shown.map_or_else(|| "pending".to_string(), detail);
        per_slot.push(format!("{}/{total}: {state}", i + 1));
    }
    let mut lines = vec![format!("overall progress: {finished} out of {total} tasks")];
    lines.extend(per_slot);
    let converged = finished == total;
    let status = service.update_status.as_ref();
    let state = status.map_or("", |u| u.state.as_str());
    let message = status.map_or("", |u| u.message.as_str());
    let superseded = || {
        Some(Err(format!(
            "service {} was changed again by another command (now version {})",
            service.name, service.version
        )))
    };
    let outcome = match watch {
        Watch::Update { version } => match state {
            "paused" if service.version == version => Some(Err(said("update paused", message))),
            "rollback_paused" if service.version <= version + 1 => {
                Some(Err(said("update paused", message)))
            }
            "rollback_completed" if service.version <= version + 1 => {
                Some(Err(said("update rolled back", message)))
            }
            "rollback_started" if service.version <= version + 1 => None,
            _ if service.version != version => superseded(),
            "completed" | "" if converged => Some(Ok(())),
            _ => None,
        },
        Watch::Rollback { version } => match state {
            _ if service.version != version => superseded(),
            "rollback_paused" => Some(Err(said("rollback paused", message))),
            "rollback_completed" | "completed" | "" if converged => Some(Ok(())),
            _ => None,
        },
    };
    Frame { lines, outcome }
}

/// `what: message`, or the message alone when it already says `what` (the leader's own
/// messages do: "update paused due to failure or early termination of task …").
fn said(what: &str, message: &str) -> String {
    if message.starts_with(what) {
        message.to_string()
    } else {
        format!("{what}: {message}")
    }
}

/// Prints frames: redrawn in place on a terminal; otherwise only the lines that changed.
struct Printer {
    tty: bool,
    last: Vec<String>,
}

impl Printer {
    fn show(&mut self, lines: &[String]) {
        if lines == self.last.as_slice() {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.tty {
            if !self.last.is_empty() {
                let _ = write!(out, "\x1b[{}A\x1b[J", self.last.len());
            }
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
        } else {
            for (i, l) in lines.iter().enumerate() {
                if self.last.get(i) != Some(l) {
                    let _ = writeln!(out, "{l}");
                }
            }
        }
        let _ = out.flush();
        self.last = lines.to_vec();
    }
}

/// Follows the update (or rollback) of service `id` until it converges (Ok), pauses, rolls
/// back or the service goes (Err, the reason in one line). No overall timeout, as Docker.
pub async fn follow(client: &Client, id: &str, watch: Watch) -> Result<()> {
    let mut printer = Printer {
        tty: std::io::stdout().is_terminal(),
        last: Vec::new(),
    };
    loop {
        let service: ServiceRow = match client.get(&format!("/v1/services/{id}")).await {
            Err(ClientError::Api { status: 404, .. }) => {
                bail!("service {id} was removed while its update was followed")
            }
            r => r?,
        };
        let rows: Vec<TaskRow> = match client.get(&format!("/v1/services/{id}/tasks")).await {
            Err(ClientError::Api { status: 404, .. }) => {
                bail!("service {id} was removed while its update was followed")
            }
            r => r?,
        };
        let frame = render(&service, &rows, watch);
        printer.show(&frame.lines);
        match frame.outcome {
            Some(Ok(())) => {
                println!("verify: Service converged");
                return Ok(());
            }
            Some(Err(e)) => bail!("{e}"),
            None => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::services::UpdateStatusRow;

    fn service(mode: &str, replicas: Option<u64>, version: u64, state: &str) -> ServiceRow {
        ServiceRow {
            id: "svc1".into(),
            name: "web".into(),
            mode: mode.into(),
            replicas,
            running: 0,
            image: "img".into(),
            driver: "process".into(),
            ports: vec![],
            update_status: (!state.is_empty()).then(|| UpdateStatusRow {
                state: state.into(),
                started_at: None,
                completed_at: None,
                message: "task abc failed: exit code 1".into(),
            }),
            desired_tasks: replicas.unwrap_or(0),
            version,
            created_at: String::new(),
            updated_at: String::new(),
        }
    }

    fn task(
        slot: Option<u64>,
        node: &str,
        version: u64,
        up: bool,
        desired: &str,
        state: &str,
    ) -> TaskRow {
        TaskRow {
            id: format!("t{slot:?}{node}{version}"),
            service: "web".into(),
            slot,
            node_id: Some(node.into()),
            node: Some(node.into()),
            image: "img".into(),
            desired_state: desired.into(),
            state: state.into(),
            error: None,
            exit_code: None,
            service_id: "svc1".into(),
            attempt: 0,
            health: None,
            created_at: String::new(),
            updated_at: String::new(),
            ended_at: None,
            version,
            up_to_date: up,
        }
    }

    #[test]
    fn slots_show_the_new_task_or_the_old_one() {
        let rows = vec![
            task(Some(1), "n1", 2, true, "running", "running"),
            task(Some(1), "n1", 1, false, "shutdown", "shutdown"),
            task(Some(2), "n1", 2, true, "running", "starting"),
            task(Some(2), "n1", 1, false, "shutdown", "running"),
            task(Some(3), "n1", 1, false, "running", "running"),
        ];
        let f = render(
            &service("replicated", Some(4), 2, "updating"),
            &rows,
            Watch::Update { version: 2 },
        );
        assert_eq!(
            f.lines,
            [
                "overall progress: 1 out of 4 tasks",
                "1/4: running",
                "2/4: starting",
                "3/4: running",
                "4/4: pending",
            ]
        );
        assert_eq!(f.outcome, None);
    }

    #[test]
    fn converges_when_completed_and_every_slot_is_done() {
        let mut rows = vec![
            task(Some(1), "n1", 2, true, "running", "running"),
            task(Some(2), "n2", 2, true, "running", "running"),
        ];
        let done = service("replicated", Some(2), 2, "completed");
        let f = render(&done, &rows, Watch::Update { version: 2 });
        assert_eq!(f.lines[0], "overall progress: 2 out of 2 tasks");
        assert_eq!(f.outcome, Some(Ok(())));
        // A health check still starting is not done.
        rows[1].health = Some("starting".into());
        let f = render(&done, &rows, Watch::Update { version: 2 });
        assert_eq!(f.lines[0], "overall progress: 1 out of 2 tasks");
        assert_eq!(f.lines[2], "2/2: starting");
        assert_eq!(f.outcome, None);
    }

    #[test]
    fn pause_and_automatic_rollback_end_with_the_reason() {
        let rows = vec![task(Some(1), "n1", 2, true, "running", "failed")];
        let f = render(
            &service("replicated", Some(1), 2, "paused"),
            &rows,
            Watch::Update { version: 2 },
        );
        assert_eq!(
            f.outcome,
            Some(Err("update paused: task abc failed: exit code 1".into()))
        );
        // The automatic rollback makes version 3: still ours.
        let f = render(
            &service("replicated", Some(1), 3, "rollback_started"),
            &rows,
            Watch::Update { version: 2 },
        );
        assert_eq!(f.outcome, None);
        let f = render(
            &service("replicated", Some(1), 3, "rollback_completed"),
            &rows,
            Watch::Update { version: 2 },
        );
        assert_eq!(
            f.outcome,
            Some(Err(
                "update rolled back: task abc failed: exit code 1".into()
            ))
        );
        // Another update after ours.
        let f = render(
            &service("replicated", Some(1), 3, "updating"),
            &rows,
            Watch::Update { version: 2 },
        );
        assert!(f.outcome.unwrap().unwrap_err().contains("changed again"));
    }

    #[test]
    fn rollback_converges_on_rollback_completed() {
        let rows = vec![task(Some(1), "n1", 3, true, "running", "running")];
        let f = render(
            &service("replicated", Some(1), 3, "rollback_started"),
            &rows,
            Watch::Rollback { version: 3 },
        );
        assert_eq!(f.outcome, None);
        let f = render(
            &service("replicated", Some(1), 3, "rollback_completed"),
            &rows,
            Watch::Rollback { version: 3 },
        );
        assert_eq!(f.outcome, Some(Ok(())));
        let f = render(
            &service("replicated", Some(1), 3, "rollback_paused"),
            &rows,
            Watch::Rollback { version: 3 },
        );
        assert_eq!(
            f.outcome,
            Some(Err("rollback paused: task abc failed: exit code 1".into()))
        );
    }

    #[test]
    fn global_counts_nodes_with_a_task() {
        let rows = vec![
            task(None, "a", 2, true, "running", "running"),
            task(None, "a", 1, false, "shutdown", "shutdown"),
            task(None, "b", 1, false, "running", "running"),
            task(None, "c", 1, false, "shutdown", "complete"),
        ];
        let f = render(
            &service("global", None, 2, "updating"),
            &rows,
            Watch::Update { version: 2 },
        );
        assert_eq!(
            f.lines,
            [
                "overall progress: 1 out of 2 tasks",
                "1/2: running",
                "2/2: running"
            ]
        );
    }
}
