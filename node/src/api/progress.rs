//! `GET /v1/services/{ref}/progress`: what `service create | scale | update | rollback` follow,
//! as `docker service …` shows it: the overall count, one line per slot, then the end
//! (converged, or why not). The daemon computes a [`Frame`] from the service and its tasks
//! ([`render`], pure: rows in, frame out) and streams it as NDJSON [`ProgressMessage`]s; the
//! CLI only prints what it is sent.
//!
//! The stream: a `progress` object whenever the picture changed (the first one at once), an
//! `alive` object after [`ALIVE_EVERY_MS`] without one (so a relay notices a reader that went
//! away), and one last `end` object: `{"type":"end","converged":true}` or
//! `{"type":"end","converged":false,"error":"…"}`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::services::{ServiceRow, TaskRow};

/// How long `create` and `scale` must stay converged before the end is sent (Docker's CLI
/// "verify" wait): a task that dies just after starting is still seen.
pub const STABLE_FOR_MS: u64 = 2_000;

/// An `alive` message is sent after this long without any other.
pub const ALIVE_EVERY_MS: u64 = 10_000;

/// What the command started, and so what "converged" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Watch {
    /// `service create`: every slot runs a task of the current spec (healthy if checked).
    Create,
    /// `service scale` (and an update that only changes the replica count): as `Create`.
    Scale,
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

impl Watch {
    /// The watch of the route's `watch` and `version` query parameters. `version` is needed
    /// with `update` and `rollback` (the version their command answered) and ignored else.
    pub fn from_query(watch: Option<&str>, version: Option<&str>) -> Result<Watch, String> {
        let version = || -> Result<u64, String> {
            let v = version.ok_or_else(|| {
                format!(
                    "watch={} needs version=N: the version the command answered",
                    watch.unwrap_or_default()
                )
            })?;
            v.parse()
                .map_err(|_| format!("bad version {v:?}: expected a number"))
        };
        match watch {
            Some("create") => Ok(Watch::Create),
            Some("scale") => Ok(Watch::Scale),
            Some("update") => Ok(Watch::Update {
                version: version()?,
            }),
            Some("rollback") => Ok(Watch::Rollback {
                version: version()?,
            }),
            Some(other) => Err(format!(
                "bad watch {other:?}: expected create, scale, update or rollback"
            )),
            None => Err("watch=create|scale|update|rollback is required".into()),
        }
    }

    /// The query string that asks for this watch (`watch=update&version=3`).
    pub fn query(self) -> String {
        match self {
            Watch::Create => "watch=create".into(),
            Watch::Scale => "watch=scale".into(),
            Watch::Update { version } => format!("watch=update&version={version}"),
            Watch::Rollback { version } => format!("watch=rollback&version={version}"),
        }
    }

    /// True when a converged frame must stay so for [`STABLE_FOR_MS`] before the end.
    pub fn needs_stability(self) -> bool {
        matches!(self, Watch::Create | Watch::Scale)
    }
}

/// One slot of a [`Frame`]: the task shown for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotProgress {
    /// `S/N`.
    pub slot: String,
    /// The task shown, none while the slot has none yet.
    pub task_id: Option<String>,
    /// Its node's hostname (its ID when the node is gone), none while unplaced.
    pub node: Option<String>,
    /// Its state word (`pending` without a task).
    pub state: String,
    /// What is shown: the state, `starting` while a health check has not passed yet, with
    /// the error of a pending, failed or rejected task.
    pub detail: String,
}

/// One picture of the progress: what to show, and the end if it has come.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Slots whose task is done.
    pub completed: u64,
    /// Slots.
    pub total: u64,
    /// Slot by slot.
    pub slots: Vec<SlotProgress>,
    /// `overall progress: K out of N tasks`, then `S/N: detail` per slot.
    pub lines: Vec<String>,
    /// `Some(Ok)`: converged (for create and scale: not yet stable); `Some(Err(message))`:
    /// paused, rolled back or superseded.
    pub outcome: Option<Result<(), String>>,
}

/// One line of the progress stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ProgressMessage {
    /// The picture changed.
    Progress {
        /// Slots whose task is done.
        completed: u64,
        /// Slots.
        total: u64,
        /// Slot by slot.
        slots: Vec<SlotProgress>,
        /// The lines to print.
        lines: Vec<String>,
    },
    /// Nothing changed for a while.
    Alive,
    /// The last message.
    End {
        /// True: converged (the command succeeds).
        converged: bool,
        /// Why not, in one line.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// A message type this reader does not know (a newer daemon's): skipped.
    #[serde(other)]
    Other,
}

impl ProgressMessage {
    /// The `progress` message of `frame`.
    pub fn of(frame: &Frame) -> ProgressMessage {
        ProgressMessage::Progress {
            completed: frame.completed,
            total: frame.total,
            slots: frame.slots.clone(),
            lines: frame.lines.clone(),
        }
    }

    /// The `end` message of an outcome.
    pub fn end(outcome: Result<(), String>) -> ProgressMessage {
        match outcome {
            Ok(()) => ProgressMessage::End {
                converged: true,
                error: None,
            },
            Err(e) => ProgressMessage::End {
                converged: false,
                error: Some(e),
            },
        }
    }

    /// As one JSON value (never fails: plain strings and numbers).
    pub fn to_value(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or_default()
    }
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

/// True when `t` runs and is wanted running (and is healthy when it has a health check).
fn ready(t: &TaskRow) -> bool {
    t.desired_state == "running"
        && t.state == "running"
        && !matches!(t.health.as_deref(), Some("starting" | "unhealthy"))
}

/// True when `t` counts as done: it runs the current spec and is [`ready`].
fn done(t: &TaskRow) -> bool {
    t.up_to_date && ready(t)
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
///
/// Create and scale converge once every slot is done — while an update is paused, a task of
/// an older version counts too (nothing replaces it until the user acts) — and end with an
/// error when the service's update pauses meanwhile. Update and rollback converge once their
/// update completed and every slot is done; they end with an error when it pauses, is rolled
/// back, or another command changed the service again.
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
    let status = service.update_status.as_ref();
    let state = status.map_or("", |u| u.state.as_str());
    let message = status.map_or("", |u| u.message.as_str());
    let paused = matches!(state, "paused" | "rollback_paused");
    let counts = |t: &TaskRow| match watch {
        Watch::Create | Watch::Scale if paused => ready(t),
        _ => done(t),
    };
    let total = slots.len() as u64;
    let mut completed = 0;
    let mut per_slot = Vec::with_capacity(slots.len());
    for (i, tasks) in slots.values().enumerate() {
        let shown = pick(tasks);
        if shown.is_some_and(counts) {
            completed += 1;
        }
        per_slot.push(SlotProgress {
            slot: format!("{}/{total}", i + 1),
            task_id: shown.map(|t| t.id.clone()),
            node: shown.and_then(|t| t.node.clone().or_else(|| t.node_id.clone())),
            state: shown.map_or_else(|| "pending".to_string(), |t| t.state.clone()),
            detail: shown.map_or_else(|| "pending".to_string(), detail),
        });
    }
    let mut lines = vec![format!(
        "overall progress: {completed} out of {total} tasks"
    )];
    lines.extend(per_slot.iter().map(|s| format!("{}: {}", s.slot, s.detail)));
    let converged = completed == total;
    let superseded = || {
        Some(Err(format!(
            "service {} was changed again by another command (now version {})",
            service.name, service.version
        )))
    };
    let outcome = match watch {
        Watch::Create | Watch::Scale => match state {
            _ if converged => Some(Ok(())),
            "paused" => Some(Err(said("update paused", message))),
            "rollback_paused" => Some(Err(said("rollback paused", message))),
            _ => None,
        },
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
    Frame {
        completed,
        total,
        slots: per_slot,
        lines,
        outcome,
    }
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

/// The daemon's side of one followed service, without clock or I/O: frames in (with the
/// time), messages out. Sends a frame only when its content changed; ends at once on an
/// error or a converged update or rollback, and for create and scale once the frame has
/// been converged for [`STABLE_FOR_MS`].
#[derive(Debug)]
pub struct Follower {
    watch: Watch,
    last: Option<ProgressMessage>,
    last_sent_ms: u64,
    converged_since: Option<u64>,
}

impl Follower {
    /// A follower of `watch`.
    pub fn new(watch: Watch) -> Follower {
        Follower {
            watch,
            last: None,
            last_sent_ms: 0,
            converged_since: None,
        }
    }

    /// The messages to send for `frame` seen at `now_ms` (`end` last, when the end came).
    pub fn step(&mut self, frame: &Frame, now_ms: u64) -> Vec<ProgressMessage> {
        let mut out = Vec::new();
        let msg = ProgressMessage::of(frame);
        if self.last.as_ref() != Some(&msg) {
            self.last = Some(msg.clone());
            out.push(msg);
        }
        match &frame.outcome {
            Some(Err(e)) => out.push(ProgressMessage::end(Err(e.clone()))),
            Some(Ok(())) if !self.watch.needs_stability() => {
                out.push(ProgressMessage::end(Ok(())));
            }
            Some(Ok(())) => {
                let since = *self.converged_since.get_or_insert(now_ms);
                if now_ms.saturating_sub(since) >= STABLE_FOR_MS {
                    out.push(ProgressMessage::end(Ok(())));
                }
            }
            None => self.converged_since = None,
        }
        if out.is_empty() && now_ms.saturating_sub(self.last_sent_ms) >= ALIVE_EVERY_MS {
            out.push(ProgressMessage::Alive);
        }
        if !out.is_empty() {
            self.last_sent_ms = now_ms;
        }
        out
    }

    /// How long after `now_ms` the next step is due at the latest (the stability deadline or
    /// the next `alive`), in ms.
    pub fn due_in(&self, now_ms: u64) -> u64 {
        let alive = (self.last_sent_ms + ALIVE_EVERY_MS).saturating_sub(now_ms);
        match self.converged_since {
            Some(since) => alive.min((since + STABLE_FOR_MS).saturating_sub(now_ms)),
            None => alive,
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
        assert_eq!((f.completed, f.total), (1, 4));
        assert_eq!(f.slots[0].task_id.as_deref(), Some("tSome(1)n12"));
        assert_eq!(f.slots[0].node.as_deref(), Some("n1"));
        assert_eq!(f.slots[2].task_id.as_deref(), Some("tSome(3)n11"));
        assert_eq!(f.slots[3].task_id, None);
        assert_eq!(f.slots[3].state, "pending");
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
        assert_eq!(f.slots[1].state, "running");
        assert_eq!(f.slots[1].detail, "starting");
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

    #[test]
    fn create_converges_when_every_slot_runs_the_current_spec() {
        let svc = service("replicated", Some(3), 1, "");
        let mut rows = vec![
            task(Some(1), "n1", 1, true, "running", "running"),
            task(Some(2), "n2", 1, true, "running", "preparing"),
        ];
        let f = render(&svc, &rows, Watch::Create);
        assert_eq!(
            f.lines,
            [
                "overall progress: 1 out of 3 tasks",
                "1/3: running",
                "2/3: preparing",
                "3/3: pending",
            ]
        );
        assert_eq!(f.outcome, None);
        rows[1].state = "running".into();
        rows.push(task(Some(3), "n1", 1, true, "running", "pending"));
        rows[2].error = Some("no suitable node".into());
        let f = render(&svc, &rows, Watch::Create);
        assert_eq!(f.lines[3], "3/3: pending: no suitable node");
        assert_eq!(f.outcome, None);
        rows[2].state = "running".into();
        rows[2].health = Some("starting".into());
        let f = render(&svc, &rows, Watch::Create);
        assert_eq!(f.outcome, None, "a health check still starting");
        rows[2].health = Some("healthy".into());
        let f = render(&svc, &rows, Watch::Create);
        assert_eq!(f.lines[0], "overall progress: 3 out of 3 tasks");
        assert_eq!(f.outcome, Some(Ok(())));
    }

    #[test]
    fn scale_counts_the_new_replica_count_and_old_versions_only_while_paused() {
        // Scaled from 1 to 2: slot 2 has no task yet.
        let rows = vec![task(Some(1), "n1", 1, true, "running", "running")];
        let f = render(&service("replicated", Some(2), 1, ""), &rows, Watch::Scale);
        assert_eq!(f.lines[0], "overall progress: 1 out of 2 tasks");
        assert_eq!(f.outcome, None);
        // Scaled down: the removed slot's task is no longer shown.
        let rows = vec![
            task(Some(1), "n1", 1, true, "running", "running"),
            task(Some(2), "n1", 1, true, "shutdown", "running"),
        ];
        let f = render(&service("replicated", Some(1), 1, ""), &rows, Watch::Scale);
        assert_eq!(
            f.lines,
            ["overall progress: 1 out of 1 tasks", "1/1: running"]
        );
        assert_eq!(f.outcome, Some(Ok(())));
        // An older version's task is not done while an update runs…
        let rows = vec![
            task(Some(1), "n1", 2, true, "running", "running"),
            task(Some(2), "n1", 1, false, "running", "running"),
        ];
        let f = render(
            &service("replicated", Some(2), 2, "updating"),
            &rows,
            Watch::Scale,
        );
        assert_eq!(f.outcome, None);
        // …but is while the update is paused; a paused update with a slot not running ends
        // the scale with the reason.
        let paused = service("replicated", Some(2), 2, "paused");
        let f = render(&paused, &rows, Watch::Scale);
        assert_eq!(f.outcome, Some(Ok(())));
        let f = render(&paused, &rows[..1], Watch::Scale);
        assert_eq!(
            f.outcome,
            Some(Err("update paused: task abc failed: exit code 1".into()))
        );
    }

    #[test]
    fn watch_from_the_query() {
        assert_eq!(Watch::from_query(Some("create"), None), Ok(Watch::Create));
        assert_eq!(
            Watch::from_query(Some("scale"), Some("x")),
            Ok(Watch::Scale)
        );
        assert_eq!(
            Watch::from_query(Some("update"), Some("4")),
            Ok(Watch::Update { version: 4 })
        );
        for w in [
            Watch::Create,
            Watch::Scale,
            Watch::Update { version: 7 },
            Watch::Rollback { version: 8 },
        ] {
            let query = w.query();
            let q: BTreeMap<&str, &str> = query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .collect();
            assert_eq!(
                Watch::from_query(q.get("watch").copied(), q.get("version").copied()),
                Ok(w)
            );
        }
        assert!(
            Watch::from_query(Some("rollback"), None)
                .unwrap_err()
                .contains("needs version=N")
        );
        assert!(
            Watch::from_query(Some("update"), Some("x"))
                .unwrap_err()
                .contains("bad version")
        );
        assert!(
            Watch::from_query(Some("sideways"), None)
                .unwrap_err()
                .contains("expected create, scale, update or rollback")
        );
        assert!(Watch::from_query(None, None).is_err());
    }

    fn frame(completed: u64, outcome: Option<Result<(), String>>) -> Frame {
        Frame {
            completed,
            total: 2,
            slots: vec![],
            lines: vec![format!("overall progress: {completed} out of 2 tasks")],
            outcome,
        }
    }

    #[test]
    fn follower_sends_changes_only_and_ends_create_after_two_stable_seconds() {
        let mut f = Follower::new(Watch::Create);
        let first = f.step(&frame(1, None), 0);
        assert!(matches!(
            first.as_slice(),
            [ProgressMessage::Progress { completed: 1, .. }]
        ));
        assert_eq!(f.step(&frame(1, None), 100), []);
        let conv = f.step(&frame(2, Some(Ok(()))), 200);
        assert_eq!(conv.len(), 1, "the frame, no end yet: {conv:?}");
        assert_eq!(f.due_in(300), 1_900);
        assert_eq!(f.step(&frame(2, Some(Ok(()))), 1_000), []);
        // A task that dies starts the wait again.
        assert_eq!(f.step(&frame(1, None), 1_500).len(), 1);
        assert_eq!(f.step(&frame(2, Some(Ok(()))), 1_600).len(), 1);
        assert_eq!(f.step(&frame(2, Some(Ok(()))), 3_599), []);
        assert_eq!(
            f.step(&frame(2, Some(Ok(()))), 3_600),
            [ProgressMessage::End {
                converged: true,
                error: None
            }]
        );
    }

    #[test]
    fn follower_ends_an_update_at_once_and_says_alive_when_quiet() {
        let mut f = Follower::new(Watch::Update { version: 2 });
        assert_eq!(f.step(&frame(1, None), 0).len(), 1);
        assert_eq!(f.step(&frame(1, None), ALIVE_EVERY_MS - 1), []);
        assert_eq!(f.due_in(ALIVE_EVERY_MS - 1), 1);
        assert_eq!(
            f.step(&frame(1, None), ALIVE_EVERY_MS),
            [ProgressMessage::Alive]
        );
        let end = f.step(&frame(1, Some(Err("update paused: x".into()))), 10_100);
        assert_eq!(
            end,
            [ProgressMessage::End {
                converged: false,
                error: Some("update paused: x".into())
            }]
        );
        let mut f = Follower::new(Watch::Rollback { version: 3 });
        let end = f.step(&frame(2, Some(Ok(()))), 0);
        assert!(matches!(
            end.as_slice(),
            [
                ProgressMessage::Progress { .. },
                ProgressMessage::End {
                    converged: true,
                    ..
                }
            ]
        ));
    }

    #[test]
    fn messages_are_tagged_json_lines() {
        let f = render(
            &service("replicated", Some(1), 1, ""),
            &[task(Some(1), "n1", 1, true, "running", "running")],
            Watch::Create,
        );
        let v = ProgressMessage::of(&f).to_value();
        assert_eq!(v["type"], "progress");
        assert_eq!(v["completed"], 1);
        assert_eq!(v["total"], 1);
        assert_eq!(v["slots"][0]["slot"], "1/1");
        assert_eq!(v["slots"][0]["node"], "n1");
        assert_eq!(v["slots"][0]["state"], "running");
        assert_eq!(v["lines"][1], "1/1: running");
        assert_eq!(
            ProgressMessage::end(Ok(())).to_value(),
            serde_json::json!({"type": "end", "converged": true})
        );
        assert_eq!(
            ProgressMessage::end(Err("no".into())).to_value(),
            serde_json::json!({"type": "end", "converged": false, "error": "no"})
        );
        let unknown: ProgressMessage =
            serde_json::from_value(serde_json::json!({"type": "later", "x": 1})).unwrap();
        assert_eq!(unknown, ProgressMessage::Other);
    }
}
