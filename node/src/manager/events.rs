//! Cluster events (`shoal events`), derived from the applied Raft log.
//!
//! [`derive`] is a pure function of the applied command, the state before and after it (as
//! [`Summary`]s) and the entry's log index: every manager applies the same entries and so
//! tells the same story. Times come from the command's own time fields; a command without
//! one (`node rm`, a token rotation, Raft's blank entry that makes a leader) takes the time
//! of the event before it ([`EventLog`] keeps it). Each manager keeps the last
//! [`EVENT_BUFFER`] events in memory and broadcasts new ones to live subscribers. Nothing is
//! stored: after a restart a manager re-derives only the entries it re-applies (those after
//! its last snapshot), and a manager that installs a snapshot has no events before it.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Mutex;

use shoal_scheduler::{DesiredState, Slot, TaskState};
use tokio::sync::{broadcast, mpsc};

use super::services::{ServiceCommand, UpdateState};
use super::state::{ClusterState, Command, Millis, NodeStatus, Role};
use crate::api::events::{EventActor, EventQuery, EventView};
use crate::util::{now_ms, rfc3339_millis};

/// Events kept in memory on each manager.
pub const EVENT_BUFFER: usize = 10_000;

/// Live events a slow subscriber may fall behind by before its stream ends.
const BROADCAST_CAPACITY: usize = 4096;

/// A node as events describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSummary {
    hostname: String,
    role: Role,
    status: NodeStatus,
    availability: String,
    addr: String,
    labels: BTreeMap<String, String>,
}

/// A service as events describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSummary {
    name: String,
    version: u64,
    replicas: Option<u64>,
    update_state: Option<UpdateState>,
    update_message: String,
}

/// A task as events describe it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSummary {
    service_id: String,
    slot: String,
    node_id: Option<String>,
    state: TaskState,
    desired: DesiredState,
    error: Option<String>,
}

/// What events are derived from: the parts of the state a command can change (tasks only
/// around service commands, which alone change them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    cluster_id: Option<String>,
    nodes: BTreeMap<String, NodeSummary>,
    services: BTreeMap<String, ServiceSummary>,
    tasks: BTreeMap<String, TaskSummary>,
}

impl Summary {
    /// The summary of `state` for deriving the events of `cmd`.
    pub fn of(state: &ClusterState, cmd: &Command) -> Self {
        let with_tasks = matches!(
            cmd,
            Command::Services(_)
                | Command::Restore(_)
                | Command::RestoreV2(_)
                | Command::RestoreV3(_)
        );
        Summary {
            cluster_id: state.cluster.as_ref().map(|c| c.id.clone()),
            nodes: state
                .nodes
                .iter()
                .map(|(id, n)| {
                    (
                        id.clone(),
                        NodeSummary {
                            hostname: n.hostname.clone(),
                            role: n.role,
                            status: n.status,
                            availability: n.availability.as_str().to_string(),
                            addr: n.addr.clone(),
                            labels: n.labels.clone(),
                        },
                    )
                })
                .collect(),
            services: state
                .services
                .services
                .iter()
                .map(|(id, s)| {
                    (
                        id.clone(),
                        ServiceSummary {
                            name: s.spec.name.clone(),
                            version: s.version,
                            replicas: match s.spec.mode {
                                shoal_scheduler::ServiceMode::Replicated { replicas } => {
                                    Some(replicas)
                                }
                                shoal_scheduler::ServiceMode::Global => None,
                            },
                            update_state: s.update_status.as_ref().map(|u| u.state),
                            update_message: s
                                .update_status
                                .as_ref()
                                .map(|u| u.message.clone())
                                .unwrap_or_default(),
                        },
                    )
                })
                .collect(),
            tasks: if with_tasks {
                state
                    .services
                    .tasks
                    .iter()
                    .map(|(id, t)| {
                        (
                            id.clone(),
                            TaskSummary {
                                service_id: t.service_id.to_string(),
                                slot: match &t.slot {
                                    Slot::Replica(n) => n.to_string(),
                                    Slot::Node(n) => n.to_string(),
                                },
                                node_id: t.node_id.as_ref().map(ToString::to_string),
                                state: t.state,
                                desired: t.desired_state,
                                error: t.error.clone(),
                            },
                        )
                    })
                    .collect()
            } else {
                BTreeMap::new()
            },
        }
    }

    fn service_name(&self, id: &str, other: &Summary) -> String {
        self.services
            .get(id)
            .or_else(|| other.services.get(id))
            .map(|s| s.name.clone())
            .unwrap_or_default()
    }
}

/// The time a command carries, if any.
pub fn command_time(cmd: &Command) -> Option<Millis> {
    match cmd {
        Command::InitCluster { cluster, .. } => Some(cluster.created_at),
        Command::UpsertNode(n) | Command::AdmitNode(n) => Some(n.updated_at),
        Command::SetNodeStatus { at, .. }
        | Command::SetNodeAddr { at, .. }
        | Command::UpdateNode { at, .. }
        | Command::SetRole { at, .. }
        | Command::SetNodeResources { at, .. } => Some(*at),
        Command::RotateToken { .. }
        | Command::RemoveNode { .. }
        | Command::Restore(_)
        | Command::RestoreV2(_)
        | Command::RestoreV3(_)
        | Command::RestoreV4(_)
        | Command::SetNodeFacilities { .. } => None,
        Command::Services(s) => Some(match s {
            ServiceCommand::CreateConfig(c) => c.created_at,
            ServiceCommand::CreateSecret(c) => c.created_at,
            ServiceCommand::RemoveConfig { .. }
            | ServiceCommand::RemoveSecret { .. }
            | ServiceCommand::ShareSecretsKey { .. } => return None,
            ServiceCommand::Create(r) => r.created_at,
            ServiceCommand::CreateV2(r) => r.created_at,
            ServiceCommand::CreateV3(r) => r.created_at,
            ServiceCommand::CreateV4(r) => r.created_at,
            ServiceCommand::Update { at, .. }
            | ServiceCommand::UpdateV4 { at, .. }
            | ServiceCommand::UpdateV2 { at, .. }
            | ServiceCommand::UpdateV3 { at, .. }
            | ServiceCommand::Scale { at, .. }
            | ServiceCommand::Remove { at, .. }
            | ServiceCommand::TaskReports { at, .. }
            | ServiceCommand::Rollback { at, .. }
            | ServiceCommand::SetUpdateStatus { at, .. }
            | ServiceCommand::UpdateVerdict { at, .. } => *at,
            ServiceCommand::ApplyDecisions { now, .. } => *now,
        }),
    }
}

/// Builds events with one time and index.
struct Out {
    time_ms: Millis,
    index: u64,
    events: Vec<EventView>,
}

impl Out {
    fn push(&mut self, kind: &str, action: &str, id: &str, attrs: Vec<(&str, String)>) {
        self.events.push(EventView {
            time: rfc3339_millis(self.time_ms),
            time_ms: self.time_ms,
            kind: kind.into(),
            action: action.into(),
            actor: EventActor {
                id: id.into(),
                attributes: attrs
                    .into_iter()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(k, v)| (k.to_string(), v))
                    .collect(),
            },
            index: self.index,
        });
    }
}

/// The events of applying `cmd` at log `index`, from the state `before` and `after` it.
/// `time_ms` is [`command_time`] or, for a command without one, the caller's fallback.
pub fn derive(
    cmd: &Command,
    before: &Summary,
    after: &Summary,
    index: u64,
    time_ms: Millis,
) -> Vec<EventView> {
    let mut out = Out {
        time_ms,
        index,
        events: Vec::new(),
    };
    if before == after {
        return out.events;
    }
    if let Command::InitCluster { cluster, .. } = cmd {
        out.push("cluster", "init", &cluster.id, vec![]);
    }
    if matches!(
        cmd,
        Command::Restore(_) | Command::RestoreV2(_) | Command::RestoreV3(_) | Command::RestoreV4(_)
    ) {
        let id = after.cluster_id.clone().unwrap_or_default();
        out.push("cluster", "restore", &id, vec![]);
        return out.events;
    }
    if let Command::RotateToken { role } = cmd {
        let id = after.cluster_id.clone().unwrap_or_default();
        out.push(
            "cluster",
            "rotate_token",
            &id,
            vec![("role", role.as_str().to_string())],
        );
    }
    nodes(&mut out, before, after);
    services(&mut out, cmd, before, after);
    tasks(&mut out, before, after);
    out.events
}

fn node_attrs(n: &NodeSummary) -> Vec<(&'static str, String)> {
    vec![
        ("name", n.hostname.clone()),
        ("role", n.role.as_str().to_string()),
        ("status", n.status.as_str().to_string()),
        ("availability", n.availability.clone()),
        ("addr", n.addr.clone()),
    ]
}

fn nodes(out: &mut Out, before: &Summary, after: &Summary) {
    for (id, old) in &before.nodes {
        if !after.nodes.contains_key(id) {
            out.push("node", "remove", id, node_attrs(old));
        }
    }
    for (id, new) in &after.nodes {
        let Some(old) = before.nodes.get(id) else {
            out.push("node", "join", id, node_attrs(new));
            continue;
        };
        if old == new {
            continue;
        }
        if old.role != new.role {
            let action = if new.role == Role::Manager {
                "promote"
            } else {
                "demote"
            };
            out.push("node", action, id, node_attrs(new));
        }
        if old.status != new.status {
            out.push("node", new.status.as_str(), id, node_attrs(new));
        }
        if old.availability != new.availability || old.addr != new.addr || old.labels != new.labels
        {
            let mut attrs = node_attrs(new);
            if old.availability != new.availability {
                attrs.push(("availability.old", old.availability.clone()));
            }
            if old.addr != new.addr {
                attrs.push(("addr.old", old.addr.clone()));
            }
            out.push("node", "update", id, attrs);
        }
    }
}

fn update_action(state: UpdateState) -> &'static str {
    match state {
        UpdateState::Updating => "update_started",
        UpdateState::Paused => "update_paused",
        UpdateState::Completed => "update_completed",
        UpdateState::RollbackStarted => "rollback_started",
        UpdateState::RollbackPaused => "rollback_paused",
        UpdateState::RollbackCompleted => "rollback_completed",
    }
}

fn services(out: &mut Out, cmd: &Command, before: &Summary, after: &Summary) {
    for (id, old) in &before.services {
        if !after.services.contains_key(id) {
            out.push("service", "remove", id, vec![("name", old.name.clone())]);
        }
    }
    for (id, new) in &after.services {
        let name = ("name", new.name.clone());
        let Some(old) = before.services.get(id) else {
            let mut attrs = vec![name];
            if let Some(r) = new.replicas {
                attrs.push(("replicas", r.to_string()));
            }
            out.push("service", "create", id, attrs);
            continue;
        };
        if old.version != new.version {
            let action = if matches!(cmd, Command::Services(ServiceCommand::Rollback { .. })) {
                "rollback"
            } else {
                "update"
            };
            out.push(
                "service",
                action,
                id,
                vec![
                    name.clone(),
                    ("version.old", old.version.to_string()),
                    ("version.new", new.version.to_string()),
                ],
            );
        }
        if old.replicas != new.replicas
            && let (Some(o), Some(n)) = (old.replicas, new.replicas)
        {
            out.push(
                "service",
                "scale",
                id,
                vec![
                    name.clone(),
                    ("replicas.old", o.to_string()),
                    ("replicas.new", n.to_string()),
                ],
            );
        }
        if old.update_state != new.update_state
            && let Some(state) = new.update_state
        {
            out.push(
                "service",
                update_action(state),
                id,
                vec![name, ("message", new.update_message.clone())],
            );
        }
    }
}

fn task_attrs(t: &TaskSummary, name: &str) -> Vec<(&'static str, String)> {
    vec![
        ("name", format!("{name}.{}", t.slot)),
        ("service", name.to_string()),
        ("service_id", t.service_id.clone()),
        ("node", t.node_id.clone().unwrap_or_default()),
        ("state", t.state.as_str().to_string()),
        ("desired_state", t.desired.as_str().to_string()),
    ]
}

fn tasks(out: &mut Out, before: &Summary, after: &Summary) {
    for (id, new) in &after.tasks {
        let name = after.service_name(&new.service_id, before);
        let Some(old) = before.tasks.get(id) else {
            out.push("task", "create", id, task_attrs(new, &name));
            continue;
        };
        if old.state != new.state {
            let mut attrs = task_attrs(new, &name);
            attrs.push(("state.old", old.state.as_str().to_string()));
            if let Some(e) = &new.error {
                attrs.push(("error", e.clone()));
            }
            out.push("task", new.state.as_str(), id, attrs);
        } else if old.desired != new.desired || old.node_id != new.node_id {
            out.push("task", "update", id, task_attrs(new, &name));
        }
    }
    for (id, old) in &before.tasks {
        if !after.tasks.contains_key(id) {
            let name = before.service_name(&old.service_id, after);
            out.push("task", "remove", id, task_attrs(old, &name));
        }
    }
}

/// The event of Raft's blank entry: a leader elected in `term`, known by `node_id` and
/// `hostname` (empty when the node table does not know its Raft ID).
pub fn leader_elected(
    node_id: &str,
    hostname: &str,
    term: u64,
    index: u64,
    time_ms: Millis,
) -> EventView {
    let mut out = Out {
        time_ms,
        index,
        events: Vec::new(),
    };
    out.push(
        "cluster",
        "leader",
        node_id,
        vec![("name", hostname.to_string()), ("term", term.to_string())],
    );
    out.events.remove(0)
}

/// The events a manager keeps, and their live subscribers.
#[derive(Debug)]
pub struct EventLog {
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    buffer: VecDeque<EventView>,
    last_time: Millis,
    tx: broadcast::Sender<EventView>,
}

impl Default for EventLog {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(BROADCAST_CAPACITY);
        EventLog {
            inner: Mutex::new(Inner {
                buffer: VecDeque::new(),
                last_time: 0,
                tx,
            }),
        }
    }
}

impl EventLog {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The time for an event whose command carries none: the last event's, or, before
    /// any, the latest change recorded in `state`.
    pub fn fallback_time(&self, state: &ClusterState) -> Millis {
        let last = self.lock().last_time;
        if last > 0 {
            return last;
        }
        let nodes = state.nodes.values().map(|n| n.updated_at);
        let services = state.services.services.values().map(|s| s.updated_at);
        nodes.chain(services).max().unwrap_or(0)
    }

    /// Keeps and broadcasts `events`.
    pub fn push(&self, events: Vec<EventView>) {
        if events.is_empty() {
            return;
        }
        let mut inner = self.lock();
        for e in events {
            inner.last_time = inner.last_time.max(e.time_ms);
            if inner.buffer.len() >= EVENT_BUFFER {
                inner.buffer.pop_front();
            }
            // No receiver is not an error.
            let _ = inner.tx.send(e.clone());
            inner.buffer.push_back(e);
        }
    }

    /// The kept events at or after `since` (all with `None`), and a receiver of every later
    /// one: taken together, so none is missed or seen twice.
    pub fn subscribe(
        &self,
        since: Option<Millis>,
    ) -> (Vec<EventView>, broadcast::Receiver<EventView>) {
        let inner = self.lock();
        let past = match since {
            Some(s) => inner
                .buffer
                .iter()
                .filter(|e| e.time_ms >= s)
                .cloned()
                .collect(),
            None => Vec::new(),
        };
        (past, inner.tx.subscribe())
    }
}

/// Streams the events `query` asks for, as JSON values: the kept ones from `since`, then
/// new ones as they are applied, until `until` passes (never without it), the receiver goes
/// away, or this manager stops (its Raft state machine is dropped). A subscriber that falls
/// more than a few thousand events behind gets a last `{"message": …}` line.
pub fn stream(log: &EventLog, query: EventQuery) -> mpsc::Receiver<serde_json::Value> {
    let (tx, out) = mpsc::channel(256);
    let (past, mut rx) = log.subscribe(query.since);
    let until = query.until;
    let wanted =
        move |e: &EventView| query.filters.matches(e) && until.is_none_or(|u| e.time_ms <= u);
    tokio::spawn(async move {
        for e in past.iter().filter(|e| wanted(e)) {
            if tx.send(json(e)).await.is_err() {
                return;
            }
        }
        let deadline = until.map(|u| {
            let wait = u.saturating_sub(now_ms());
            tokio::time::Instant::now() + std::time::Duration::from_millis(wait)
        });
        loop {
            let ended = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let e = tokio::select! {
                () = ended => return,
                () = tx.closed() => return,
                e = rx.recv() => e,
            };
            match e {
                Ok(e) if wanted(&e) => {
                    if tx.send(json(&e)).await.is_err() {
                        return;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Closed) => return,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let message = format!(
                        "this event stream fell {n} events behind and was ended: run `shoal events` again (with --since to go back)"
                    );
                    let _ = tx.send(serde_json::json!({ "message": message })).await;
                    return;
                }
            }
        }
    });
    out
}

fn json(e: &EventView) -> serde_json::Value {
    serde_json::to_value(e).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manager::services::ServiceCommand;
    use crate::manager::state::{Availability, NodeRecord};

    fn node(id: &str, status: NodeStatus) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            public_key: [id.as_bytes()[0]; 32],
            raft_id: u64::from(id.as_bytes()[0]),
            hostname: format!("host-{id}"),
            addr: "127.0.0.1:4747".into(),
            role: Role::Worker,
            availability: Availability::Active,
            status,
            labels: BTreeMap::new(),
            platform: "linux/x86_64".into(),
            memory_bytes: 1 << 30,
            cpus: 2,
            drivers: vec!["process".into()],
            version: "0".into(),
            created_at: 1,
            updated_at: 1,
        }
    }

    /// Applies `cmd` to `state` and derives its events the way the store does.
    fn apply(state: &mut ClusterState, cmd: &Command, index: u64) -> Vec<EventView> {
        let before = Summary::of(state, cmd);
        state.apply(cmd);
        let after = Summary::of(state, cmd);
        derive(cmd, &before, &after, index, command_time(cmd).unwrap_or(7))
    }

    fn kinds(events: &[EventView]) -> Vec<(String, String, String)> {
        events
            .iter()
            .map(|e| (e.kind.clone(), e.action.clone(), e.actor.id.clone()))
            .collect()
    }

    fn t(kind: &str, action: &str, id: &str) -> (String, String, String) {
        (kind.into(), action.into(), id.into())
    }

    #[test]
    fn node_events_follow_the_records() {
        let mut s = ClusterState::default();
        let e = apply(
            &mut s,
            &Command::UpsertNode(node("a", NodeStatus::Ready)),
            3,
        );
        assert_eq!(kinds(&e), vec![t("node", "join", "a")]);
        assert_eq!(e[0].index, 3);
        assert_eq!(e[0].time_ms, 1);
        assert_eq!(e[0].actor.attributes["name"], "host-a");
        let down = Command::SetNodeStatus {
            id: "a".into(),
            status: NodeStatus::Down,
            at: 50,
        };
        let e = apply(&mut s, &down, 4);
        assert_eq!(kinds(&e), vec![t("node", "down", "a")]);
        assert_eq!(e[0].time, "1970-01-01T00:00:00.050Z");
        // The same status again changes nothing, and says nothing.
        assert!(apply(&mut s, &down, 5).is_empty());
        let promote = Command::SetRole {
            id: "a".into(),
            role: Role::Manager,
            at: 60,
        };
        assert_eq!(
            kinds(&apply(&mut s, &promote, 6)),
            vec![t("node", "promote", "a")]
        );
        let drain = Command::UpdateNode {
            id: "a".into(),
            availability: Some(Availability::Drain),
            label_add: BTreeMap::new(),
            label_rm: vec![],
            at: 70,
        };
        let e = apply(&mut s, &drain, 7);
        assert_eq!(kinds(&e), vec![t("node", "update", "a")]);
        assert_eq!(e[0].actor.attributes["availability.old"], "active");
        // Demoting the last manager is refused: no event.
        let demote = Command::SetRole {
            id: "a".into(),
            role: Role::Worker,
            at: 80,
        };
        assert!(apply(&mut s, &demote, 8).is_empty());
        s.apply(&Command::SetRole {
            id: "a".into(),
            role: Role::Worker,
            at: 1,
        });
        let e = apply(&mut s, &Command::RemoveNode { id: "a".into() }, 9);
        assert_eq!(kinds(&e), vec![t("node", "remove", "a")]);
        assert_eq!(e[0].time_ms, 7, "a command without time takes the fallback");
    }

    #[test]
    fn same_entries_give_the_same_events() {
        let cmds = [
            Command::UpsertNode(node("a", NodeStatus::Ready)),
            Command::UpsertNode(node("b", NodeStatus::Ready)),
            Command::SetNodeStatus {
                id: "b".into(),
                status: NodeStatus::Down,
                at: 9,
            },
        ];
        let run = || {
            let mut s = ClusterState::default();
            cmds.iter()
                .enumerate()
                .flat_map(|(i, c)| apply(&mut s, c, i as u64))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(), run());
        assert_eq!(run().len(), 3);
    }

    #[test]
    fn service_scale_orchestration_and_remove() {
        use crate::manager::services::tests as st;
        let mut s = st::cluster();
        let record =
            crate::manager::services::ServiceRecord::new("s1", st::replicated("web", 1), 100);
        let e = apply(
            &mut s,
            &Command::Services(ServiceCommand::create(record)),
            2,
        );
        assert_eq!(kinds(&e), vec![t("service", "create", "s1")]);
        assert_eq!(e[0].actor.attributes["name"], "web");
        assert_eq!(e[0].time_ms, 100);
        let scale = Command::Services(ServiceCommand::Scale {
            id: "s1".into(),
            replicas: 2,
            at: 200,
        });
        let e = apply(&mut s, &scale, 3);
        assert_eq!(kinds(&e), vec![t("service", "scale", "s1")]);
        assert_eq!(e[0].actor.attributes["replicas.old"], "1");
        assert_eq!(e[0].actor.attributes["replicas.new"], "2");
        // The orchestrator's decisions: two tasks created (and assigned in the same pass).
        let (view, _, _) = crate::manager::orchestrator::view(&s).expect("initialized");
        let config = crate::manager::orchestrator::view(&s)
            .expect("initialized")
            .1;
        let decisions =
            shoal_scheduler::reconcile(&view, shoal_scheduler::Timestamp(300), &config).decisions;
        let cmd = Command::Services(ServiceCommand::ApplyDecisions {
            decisions,
            now: 300,
        });
        let e = apply(&mut s, &cmd, 4);
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e.iter()
                .all(|e| e.kind == "task" && e.action == "create" && e.time_ms == 300)
        );
        let names: Vec<&str> = e
            .iter()
            .map(|e| e.actor.attributes["name"].as_str())
            .collect();
        assert!(
            names.contains(&"web.1") && names.contains(&"web.2"),
            "{names:?}"
        );
        let rm = Command::Services(ServiceCommand::Remove {
            id: "s1".into(),
            at: 400,
        });
        let e = apply(&mut s, &rm, 5);
        assert_eq!(e[0], {
            let mut x = e[0].clone();
            x.kind = "service".into();
            x
        });
        assert_eq!(kinds(&e[..1]), vec![t("service", "remove", "s1")]);
    }

    #[test]
    fn task_state_changes() {
        let svc = ServiceSummary {
            name: "web".into(),
            version: 1,
            replicas: Some(1),
            update_state: None,
            update_message: String::new(),
        };
        let task = |state, node: Option<&str>| TaskSummary {
            service_id: "s1".into(),
            slot: "1".into(),
            node_id: node.map(Into::into),
            state,
            desired: DesiredState::Running,
            error: None,
        };
        let mut before = Summary::default();
        before.services.insert("s1".into(), svc);
        let mut after = before.clone();
        after
            .tasks
            .insert("t1".into(), task(TaskState::Assigned, Some("n1")));
        let cmd = Command::RotateToken { role: Role::Worker };
        let e = derive(&cmd, &before, &after, 1, 5);
        // (RotateToken is only the command's shape here; the summaries decide.)
        assert_eq!(
            kinds(&e),
            vec![t("cluster", "rotate_token", ""), t("task", "create", "t1")]
        );
        assert_eq!(e[1].actor.attributes["name"], "web.1");
        assert_eq!(e[1].actor.attributes["node"], "n1");
        let mut orphaned = after.clone();
        orphaned
            .tasks
            .insert("t1".into(), task(TaskState::Orphaned, Some("n1")));
        let e = derive(
            &Command::Services(ServiceCommand::Remove {
                id: "x".into(),
                at: 1,
            }),
            &after,
            &orphaned,
            2,
            5,
        );
        assert_eq!(kinds(&e), vec![t("task", "orphaned", "t1")]);
        assert_eq!(e[0].actor.attributes["state.old"], "assigned");
    }

    #[test]
    fn leader_event_and_log() {
        let log = EventLog::default();
        let (past, mut rx) = log.subscribe(Some(0));
        assert!(past.is_empty());
        log.push(vec![leader_elected("n1", "pi1", 3, 10, 1000)]);
        let got = rx.try_recv().unwrap();
        assert_eq!(got.kind, "cluster");
        assert_eq!(got.action, "leader");
        assert_eq!(got.actor.attributes["term"], "3");
        assert_eq!(log.fallback_time(&ClusterState::default()), 1000);
        log.push(vec![leader_elected("n2", "pi2", 4, 11, 2000)]);
        assert_eq!(log.subscribe(Some(1500)).0.len(), 1);
        assert_eq!(log.subscribe(Some(0)).0.len(), 2);
        assert!(log.subscribe(None).0.is_empty());
        for i in 0..EVENT_BUFFER as u64 {
            log.push(vec![leader_elected("n", "h", 5, i, 3000)]);
        }
        assert_eq!(log.subscribe(Some(0)).0.len(), EVENT_BUFFER);
    }
}
