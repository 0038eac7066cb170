//! Reconciliation: desired and observed state in, decisions out.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use crate::ids::{FnvBuild, fnv64};
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::ids::{encode, task_hash};
use crate::model::{
    ClusterView, DesiredState, Node, NodeStatus, Resources, RestartCondition, RestartPolicy,
    RollingUpdate, Service, ServiceMode, Slot, Task, TaskHealth, TaskId, TaskState, Timestamp,
};
use crate::placement::{
    FilterFailure, PendingReason, ServicePlacer, Usage, check_dynamic, check_static, must_leave,
};

/// Tunables of the reconciler.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileConfig {
    /// Ended tasks kept per slot as history (Docker's task history limit). At least one is
    /// always kept: the latest task of a slot carries its attempt count and restart history.
    pub history_limit: usize,
    /// How long a task that must move (drained node, constraint no longer met, driver gone)
    /// keeps running while its replacement is not yet `running`, in milliseconds, counted from
    /// the replacement's creation. After that it is shut down anyway.
    pub handover_timeout_ms: u64,
}

impl Default for ReconcileConfig {
    /// History of 5 per slot; 10 s handover.
    fn default() -> Self {
        Self {
            history_limit: 5,
            handover_timeout_ms: 10_000,
        }
    }
}

/// Why the reconciler stops a task.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ShutdownReason {
    /// Its slot is above the service's replica count.
    ScaledDown,
    /// Its node is drained (the replacement runs elsewhere).
    NodeDrained,
    /// Its node no longer satisfies the service's constraints.
    ConstraintNotMet,
    /// Its node no longer offers the service's driver.
    DriverUnavailable,
    /// Its global node no longer accepts new tasks (paused, unknown status) while it was pending.
    NodeNotEligible,
    /// It ended and a new task for its slot has been created.
    Replaced,
    /// Another task runs the same slot.
    Duplicate,
    /// Its service no longer exists.
    ServiceRemoved,
    /// Its desired state was already `shutdown` but it was never assigned, so no worker will
    /// stop it.
    Requested,
    /// Its slot kind does not match the service's mode (replica slot in a global service or the
    /// other way round, or a global task assigned to another node).
    SlotMismatch,
    /// A rolling update replaces it with a task of the current spec.
    Updated,
}

impl ShutdownReason {
    fn from_filter(f: &FilterFailure) -> Self {
        match f {
            FilterFailure::Drained => Self::NodeDrained,
            FilterFailure::Constraint(_) => Self::ConstraintNotMet,
            FilterFailure::MissingDriver(_) => Self::DriverUnavailable,
            _ => Self::NodeNotEligible,
        }
    }
}

impl fmt::Display for ShutdownReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::ScaledDown => "scaled down",
            Self::NodeDrained => "node drained",
            Self::ConstraintNotMet => "node no longer satisfies the constraints",
            Self::DriverUnavailable => "node no longer offers the driver",
            Self::NodeNotEligible => "node no longer accepts new tasks",
            Self::Replaced => "replaced by a new task",
            Self::Duplicate => "another task runs the same slot",
            Self::ServiceRemoved => "service removed",
            Self::Requested => "shutdown requested",
            Self::SlotMismatch => "slot does not match the service mode",
            Self::Updated => "replaced by a rolling update",
        })
    }
}

/// One change the orchestrator should commit. Applying a plan's decisions in order to the view
/// it was computed from ([`ClusterView::apply`]) gives the intended state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Decision {
    /// Insert this new task. It is either `assigned` (with `node_id`) or `pending` (with
    /// `pending_reason`), desired `running`, `created_at == updated_at == now`.
    CreateTask(Task),
    /// Place a `new`/`pending` task: set `node_id`, state `assigned`, clear `pending_reason`.
    Assign {
        /// The task.
        task: TaskId,
        /// Its node.
        node: crate::model::NodeId,
    },
    /// A `new`/`pending` task still fits nowhere: set state `pending` and this reason.
    UpdatePending {
        /// The task.
        task: TaskId,
        /// Why.
        reason: PendingReason,
    },
    /// Set desired state `shutdown`. For a running task its worker stops it and reports
    /// `shutdown`; for an ended task this retires it to history.
    Shutdown {
        /// The task.
        task: TaskId,
        /// Why.
        reason: ShutdownReason,
    },
    /// A task that was never assigned (`new`/`pending`) is not needed: set desired and observed
    /// state `shutdown` (no worker is involved) and `ended_at = now`.
    Cancel {
        /// The task.
        task: TaskId,
        /// Why.
        reason: ShutdownReason,
    },
    /// The task's node is `down` (or gone): set observed state `orphaned`, desired `shutdown`,
    /// `ended_at = now`. It no longer counts as running; a replacement is created in the same
    /// plan where the service needs one.
    MarkOrphaned {
        /// The task.
        task: TaskId,
    },
    /// Delete the task (history beyond the limit, or a task of a removed service).
    RemoveTask {
        /// The task.
        task: TaskId,
    },
}

/// The outcome of one reconcile pass.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Changes to commit, in order.
    pub decisions: Vec<Decision>,
    /// The earliest future time at which reconciling again would decide something even if
    /// nothing else changes (a restart delay or a handover timeout expiring). Reconcile again at
    /// this time, and whenever nodes, services or tasks change.
    pub next_wakeup: Option<Timestamp>,
}

/// Computes the decisions that move `view` towards its desired state at time `now`.
///
/// Pure and deterministic: the same view (in any vector order) and `now` give the same plan.
/// Steps, in order: tasks on `down` or unknown-ID nodes are orphaned; then each service (by ID)
/// is reconciled — tasks above the replica count or on nodes that no longer qualify are stopped,
/// ended tasks are replaced per the restart policy, missing slots (replicated) or eligible nodes
/// without a task (global) get new tasks, pending tasks are placed again; tasks of removed
/// services are stopped and removed; history beyond `config.history_limit` is removed.
#[must_use]
pub fn reconcile(view: &ClusterView, now: Timestamp, config: &ReconcileConfig) -> Plan {
    let mut pass = Pass::new(view, now, config);
    pass.run();
    Plan {
        decisions: pass.decisions,
        next_wakeup: pass.wakeup,
    }
}

/// A task to place within a service pass.
enum Placement {
    /// An existing `new`/`pending` task (index into the pass's tasks).
    Existing(usize),
    /// A new task for a slot.
    New {
        slot: Slot,
        attempt: u64,
        restart_history: Vec<Timestamp>,
    },
}

struct Pass<'a> {
    now: Timestamp,
    config: &'a ReconcileConfig,
    nodes: Vec<&'a Node>,
    /// Node ID → index in `nodes`. Lookups only: its iteration order is never used.
    node_index: HashMap<&'a str, usize, FnvBuild>,
    capacity: Vec<Resources>,
    services: BTreeMap<&'a str, &'a Service>,
    tasks: Vec<&'a Task>,
    /// Task indices per service ID. Lookups only: its iteration order is never used.
    by_service: HashMap<&'a str, Vec<usize>, FnvBuild>,
    /// FNV hash of each task's ID: tasks are in canonical order by (hash, ID).
    task_keys: Vec<u64>,
    /// Node index of each task's `node_id`, if the view knows that node.
    task_node: Vec<Option<usize>>,
    state: Vec<TaskState>,
    desired: Vec<DesiredState>,
    usage: Usage,
    service_counts: Vec<u64>,
    leave_cache: Vec<Option<Option<ShutdownReason>>>,
    /// Hashes of the IDs created in this pass. Membership tests only: its iteration order is
    /// never used.
    created_ids: HashSet<u128, FnvBuild>,
    /// Reported health of running tasks with a check.
    health: &'a BTreeMap<TaskId, TaskHealth>,
    decisions: Vec<Decision>,
    wakeup: Option<Timestamp>,
}

/// How long (500 ms) the first new task of a rolling update must stay ready (at most the monitor
/// window) before the update replaces further slots: a version that dies at once fails on
/// its first slot instead of taking several good tasks down with it.
pub const CANARY_SETTLE_MS: u64 = 500;

/// Where one slot stands in a rolling update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotUpdate {
    /// Nothing to replace, and no replacement still starting.
    Clean,
    /// Runs an outdated task and nothing is replacing it yet.
    Waiting,
    /// Like [`SlotUpdate::Waiting`], but the outdated task does not serve (not running yet,
    /// or its health check not passing — a task of an earlier update still starting):
    /// replacing it takes nothing out of service, so it goes first and needs no share of
    /// the parallelism, while it counts against the parallelism left for serving slots.
    Unavailable,
    /// Being replaced: an outdated task is stopping or handing over, or its replacement is
    /// not ready yet.
    InFlight,
}

impl<'a> Pass<'a> {
    fn new(view: &'a ClusterView, now: Timestamp, config: &'a ReconcileConfig) -> Self {
        let mut nodes: Vec<&Node> = Vec::with_capacity(view.nodes.len());
        let mut node_index =
            HashMap::with_capacity_and_hasher(view.nodes.len(), FnvBuild::default());
        for n in &view.nodes {
            if !node_index.contains_key(n.id.as_str()) {
                node_index.insert(n.id.as_str(), 0);
                nodes.push(n);
            }
        }
        nodes.sort_by(|a, b| a.id.cmp(&b.id));
        for (i, n) in nodes.iter().enumerate() {
            node_index.insert(n.id.as_str(), i);
        }
        let capacity = nodes.iter().map(|n| n.capacity).collect();

        let mut services = BTreeMap::new();
        for s in &view.services {
            services.entry(s.id.as_str()).or_insert(s);
        }

        // Canonical task order, whatever the input order: by (FNV hash of the ID, ID). Cheaper
        // to sort than by ID alone (mostly integer comparisons). Stable sort, then dedup: for
        // duplicate IDs the first entry wins.
        let mut keyed: Vec<(u64, &Task)> = view
            .tasks
            .iter()
            .map(|t| (fnv64(t.id.as_str()), t))
            .collect();
        keyed.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        keyed.dedup_by(|later, earlier| later.0 == earlier.0 && later.1.id == earlier.1.id);
        let task_keys: Vec<u64> = keyed.iter().map(|&(k, _)| k).collect();
        let tasks: Vec<&Task> = keyed.into_iter().map(|(_, t)| t).collect();
        let task_node = tasks
            .iter()
            .map(|t| {
                t.node_id
                    .as_ref()
                    .and_then(|n| node_index.get(n.as_str()).copied())
            })
            .collect();
        let mut by_service: HashMap<&str, Vec<usize>, FnvBuild> = HashMap::default();
        for (i, t) in tasks.iter().enumerate() {
            by_service.entry(t.service_id.as_str()).or_default().push(i);
        }
        let state = tasks.iter().map(|t| t.state).collect();
        let desired = tasks.iter().map(|t| t.desired_state).collect();
        let n = nodes.len();
        Self {
            now,
            config,
            nodes,
            node_index,
            capacity,
            services,
            tasks,
            by_service,
            task_keys,
            task_node,
            state,
            desired,
            usage: Usage {
                reserved: vec![Resources::ZERO; n],
                active: vec![0; n],
            },
            service_counts: vec![0; n],
            leave_cache: vec![None; n],
            created_ids: HashSet::default(),
            health: &view.health,
            decisions: Vec::new(),
            wakeup: None,
        }
    }

    fn run(&mut self) {
        self.orphan();
        self.load_usage();
        let mut ids: BTreeSet<&'a str> = self.services.keys().copied().collect();
        ids.extend(self.by_service.keys().copied());
        for id in ids {
            let idxs = self.by_service.remove(id).unwrap_or_default();
            self.load_counts(&idxs);
            match self.services.get(id).copied() {
                Some(service) => match service.mode {
                    ServiceMode::Replicated { replicas } => {
                        self.replicated(service, replicas, &idxs);
                    }
                    ServiceMode::Global => self.global(service, &idxs),
                },
                None => self.removed_service(&idxs),
            }
            self.clear_counts();
            if self.services.contains_key(id) {
                self.trim_history(&idxs);
            }
        }
    }

    fn node_of(&self, i: usize) -> Option<usize> {
        self.task_node[i]
    }

    /// Assigned (has a node and is past `pending`).
    fn is_assigned(&self, i: usize) -> bool {
        self.tasks[i].node_id.is_some() && !self.state[i].is_unassigned()
    }

    fn is_active(&self, i: usize) -> bool {
        self.desired[i] == DesiredState::Running && !self.state[i].is_terminal()
    }

    fn wake(&mut self, at: Timestamp) {
        if at > self.now {
            self.wakeup = Some(self.wakeup.map_or(at, |w| w.min(at)));
        }
    }

    /// Tasks on `down` nodes, or on node IDs the view does not know, become `orphaned`;
    /// unassigned tasks already desired `shutdown` are cancelled.
    fn orphan(&mut self) {
        for i in 0..self.tasks.len() {
            if self.state[i].is_terminal() {
                continue;
            }
            if !self.is_assigned(i) {
                if self.desired[i] == DesiredState::Shutdown {
                    self.stop(i, ShutdownReason::Requested);
                }
                continue;
            }
            let gone = match self.node_of(i) {
                None => true,
                Some(k) => self.nodes[k].status == NodeStatus::Down,
            };
            if gone {
                self.decisions.push(Decision::MarkOrphaned {
                    task: self.tasks[i].id.clone(),
                });
                self.state[i] = TaskState::Orphaned;
                self.desired[i] = DesiredState::Shutdown;
            }
        }
    }

    fn load_usage(&mut self) {
        for i in 0..self.tasks.len() {
            if self.state[i].is_terminal() || !self.is_assigned(i) {
                continue;
            }
            if let Some(k) = self.node_of(i) {
                let r = self.tasks[i].reservations;
                self.usage.reserved[k] = self.usage.reserved[k].saturating_add(r);
                if self.desired[i] == DesiredState::Running {
                    self.usage.active[k] += 1;
                }
            }
        }
    }

    fn load_counts(&mut self, idxs: &[usize]) {
        for &i in idxs {
            if self.is_active(i)
                && self.is_assigned(i)
                && let Some(k) = self.node_of(i)
            {
                self.service_counts[k] += 1;
            }
        }
    }

    fn clear_counts(&mut self) {
        // Tasks created in this pass are not in `idxs`; their nodes were counted too.
        self.service_counts.fill(0);
        self.leave_cache.fill(None);
    }

    /// Stops task `i`: cancels it if it was never assigned, otherwise sets desired `shutdown`
    /// (an ended task is retired to history).
    fn stop(&mut self, i: usize, reason: ShutdownReason) {
        if self.desired[i] == DesiredState::Shutdown
            && (self.state[i].is_terminal() || self.is_assigned(i))
        {
            return;
        }
        let task = self.tasks[i].id.clone();
        if self.state[i].is_terminal() {
            self.decisions.push(Decision::Shutdown { task, reason });
        } else if !self.is_assigned(i) {
            self.decisions.push(Decision::Cancel { task, reason });
            self.state[i] = TaskState::Shutdown;
        } else {
            self.decisions.push(Decision::Shutdown { task, reason });
            if self.desired[i] == DesiredState::Running
                && let Some(k) = self.node_of(i)
            {
                self.usage.active[k] = self.usage.active[k].saturating_sub(1);
                self.service_counts[k] = self.service_counts[k].saturating_sub(1);
            }
        }
        self.desired[i] = DesiredState::Shutdown;
    }

    /// Keeps the most advanced (then oldest) of several active tasks of one slot; stops the rest.
    fn dedup(&mut self, keepers: &mut [usize]) -> Option<usize> {
        keepers.sort_by(|&a, &b| {
            self.state[b]
                .cmp(&self.state[a])
                .then(self.tasks[a].created_at.cmp(&self.tasks[b].created_at))
                .then(self.tasks[a].id.cmp(&self.tasks[b].id))
        });
        let (&keep, rest) = keepers.split_first()?;
        for &other in rest {
            self.stop(other, ShutdownReason::Duplicate);
        }
        Some(keep)
    }

    fn latest(&self, idxs: impl Iterator<Item = usize>) -> Option<usize> {
        idxs.max_by(|&a, &b| {
            let (ta, tb) = (self.tasks[a], self.tasks[b]);
            ta.attempt
                .cmp(&tb.attempt)
                .then(ta.created_at.cmp(&tb.created_at))
                .then(ta.id.cmp(&tb.id))
        })
    }

    /// A new task for `slot` beside or after its tasks `v`: the next attempt number, and the
    /// restart history of the latest task carried over (pruned to the policy's window).
    fn next_attempt(&self, service: &Service, slot: Slot, v: &[usize]) -> Placement {
        let latest = self.latest(v.iter().copied());
        Placement::New {
            slot,
            attempt: latest.map_or(0, |i| self.tasks[i].attempt + 1),
            restart_history: latest.map_or_else(Vec::new, |i| {
                prune(
                    &self.tasks[i].restart_history,
                    self.now,
                    &service.restart_policy,
                )
            }),
        }
    }

    /// The slot has no active task: decides whether to create one now, later (wake-up), or
    /// never (restart policy), and retires ended tasks that are replaced.
    fn refill(&mut self, service: &Service, slot: Slot, v: &[usize]) -> Option<Placement> {
        let latest_any = self.latest(v.iter().copied());
        let attempt = latest_any.map_or(0, |i| self.tasks[i].attempt + 1);
        let ended: Vec<usize> = v
            .iter()
            .copied()
            .filter(|&i| self.state[i].is_terminal() && self.desired[i] == DesiredState::Running)
            .collect();
        let Some(e) = self.latest(ended.iter().copied()) else {
            // Free slot (never used, scaled back up, orphaned, moved): create now.
            return Some(self.next_attempt(service, slot, v));
        };
        for &other in &ended {
            if other != e {
                self.stop(other, ShutdownReason::Replaced);
            }
        }
        if service.update.as_ref().is_some_and(|u| !u.paused) && !self.is_current(service, e) {
            // An ended task of an outdated spec (a rollback's failed new version): the update
            // replaces it now; restarting it is not the restart policy's business.
            self.stop(e, ShutdownReason::Updated);
            let history = prune(
                &self.tasks[e].restart_history,
                self.now,
                &service.restart_policy,
            );
            return Some(Placement::New {
                slot,
                attempt,
                restart_history: history,
            });
        }
        let due = restart_due(self.tasks[e], &service.restart_policy)?;
        if self.now < due {
            self.wake(due);
            return None;
        }
        self.stop(e, ShutdownReason::Replaced);
        let mut history = prune(
            &self.tasks[e].restart_history,
            self.now,
            &service.restart_policy,
        );
        if service.restart_policy.max_attempts > 0 {
            history.push(self.now);
            let max = usize::try_from(service.restart_policy.max_attempts).unwrap_or(usize::MAX);
            if history.len() > max {
                history.drain(..history.len() - max);
            }
        }
        Some(Placement::New {
            slot,
            attempt,
            restart_history: history,
        })
    }

    /// Why an assigned task of `service` on node `k` must move (cached per service pass).
    fn leave_reason(&mut self, service: &Service, k: usize) -> Option<ShutdownReason> {
        if let Some(cached) = self.leave_cache[k] {
            return cached;
        }
        let reason = must_leave(self.nodes[k], service).map(|f| ShutdownReason::from_filter(&f));
        self.leave_cache[k] = Some(reason);
        reason
    }

    /// True when task `i` runs the current spec of `service` (always, without an update).
    fn is_current(&self, service: &Service, i: usize) -> bool {
        service
            .update
            .as_ref()
            .is_none_or(|u| u.is_current(service.spec_version, self.tasks[i].spec_version))
    }

    /// True when task `i` is running and, as far as its health check says, ready to serve:
    /// not `starting` or `unhealthy`, and `healthy` when the update requires it.
    fn is_ready(&self, u: &RollingUpdate, i: usize) -> bool {
        if self.state[i] != TaskState::Running {
            return false;
        }
        match self.health.get(&self.tasks[i].id) {
            Some(TaskHealth::Healthy) => true,
            Some(TaskHealth::Starting | TaskHealth::Unhealthy) => false,
            Some(TaskHealth::None) | None => !u.require_healthy,
        }
    }

    /// Where the slot made of tasks `v` stands in the update `u` of `service`, and when its
    /// updated task became ready (if it is).
    fn slot_update(
        &self,
        service: &Service,
        u: &RollingUpdate,
        v: &[usize],
    ) -> (SlotUpdate, Option<Timestamp>) {
        let mut old_active = false;
        let mut old_ready = false;
        let mut old_stopping = false;
        let mut new_active = false;
        let mut new_starting = false;
        let mut ready_at = None;
        for &i in v {
            if self.state[i].is_terminal() {
                continue;
            }
            if self.is_current(service, i) {
                if self.is_active(i) {
                    new_active = true;
                    let ours = self.tasks[i].created_at >= u.started_at;
                    if self.is_ready(u, i) {
                        if ours {
                            ready_at = ready_at.max(Some(self.tasks[i].updated_at));
                        }
                    } else if ours {
                        new_starting = true;
                    }
                }
            } else if self.is_active(i) {
                old_active = true;
                old_ready |= self.is_ready(u, i);
            } else if self.is_assigned(i) {
                old_stopping = true;
            }
        }
        // An empty slot whose last task was an outdated one stopped by the update (stop
        // first) is between its old task and the new one.
        let emptied = !old_active
            && !new_active
            && self.latest(v.iter().copied()).is_some_and(|i| {
                self.state[i] == TaskState::Shutdown && !self.is_current(service, i)
            });
        let status = if old_stopping || (old_active && new_active) || new_starting || emptied {
            SlotUpdate::InFlight
        } else if old_active && !old_ready {
            SlotUpdate::Unavailable
        } else if old_active {
            SlotUpdate::Waiting
        } else {
            SlotUpdate::Clean
        };
        (status, ready_at)
    }

    /// How many waiting slots of `service` may start being replaced in this pass, given the
    /// slots' standing (`slots`: each slot's tasks).
    fn update_budget<'s>(
        &mut self,
        service: &Service,
        slots: impl Iterator<Item = &'s [usize]>,
    ) -> u64 {
        let Some(u) = service.update.as_ref() else {
            return 0;
        };
        let (mut in_flight, mut last_ready) = (0u64, None);
        let mut unavailable = 0u64;
        // The canary: until one new task has stayed ready for the settle time, a slot whose
        // new task is ready more recently still counts as in flight.
        let settle = u.monitor_ms.min(CANARY_SETTLE_MS);
        let mut proven = settle == 0;
        let mut settling = Vec::new();
        for v in slots {
            let (status, ready_at) = self.slot_update(service, u, v);
            in_flight += u64::from(status == SlotUpdate::InFlight);
            unavailable += u64::from(status == SlotUpdate::Unavailable);
            last_ready = last_ready.max(ready_at);
            if let (SlotUpdate::Clean, Some(at)) = (status, ready_at) {
                if at.plus_ms(settle) <= self.now {
                    proven = true;
                } else {
                    settling.push(at.plus_ms(settle));
                }
            }
        }
        if !proven {
            in_flight += settling.len() as u64;
            for at in settling {
                self.wake(at);
            }
        }
        if u.paused {
            return 0;
        }
        let width = if u.parallelism == 0 {
            u64::MAX
        } else {
            u.parallelism
        };
        if u.delay_ms == 0 {
            return width.saturating_sub(in_flight + unavailable);
        }
        // With a delay, batch by batch: the next batch starts `delay` after the last one is
        // ready.
        if in_flight > 0 {
            return 0;
        }
        if let Some(at) = last_ready.map(|t| t.plus_ms(u.delay_ms))
            && self.now < at
        {
            self.wake(at);
            return 0;
        }
        width.saturating_sub(unavailable)
    }

    /// Whether the slot made of tasks `v` is [`SlotUpdate::Unavailable`] in an update of
    /// `service` that is not paused: its turn needs no share of the budget.
    fn unavailable_in_update(&self, service: &Service, v: &[usize]) -> bool {
        service.update.as_ref().is_some_and(|u| {
            !u.paused && self.slot_update(service, u, v).0 == SlotUpdate::Unavailable
        })
    }

    /// Splits the active tasks `keepers` of one slot: with an update, the current ones stay
    /// in `keepers` and the outdated ones move to `old` — unless no current one is active,
    /// when the outdated ones stay keepers (they still serve the slot).
    fn split_outdated(&self, service: &Service, keepers: &mut Vec<usize>, old: &mut Vec<usize>) {
        old.clear();
        if service.update.is_none() || !keepers.iter().any(|&i| self.is_current(service, i)) {
            return;
        }
        keepers.retain(|&i| {
            let current = self.is_current(service, i);
            if !current {
                old.push(i);
            }
            current
        });
    }

    /// An outdated task that a current keeper replaces: stopped once the keeper is ready.
    fn hand_over(&mut self, service: &Service, keeper: Option<usize>, old: &[usize]) {
        let (Some(u), Some(k)) = (service.update.as_ref(), keeper) else {
            return;
        };
        if self.is_assigned(k) && self.is_ready(u, k) {
            for &o in old {
                self.stop(o, ShutdownReason::Updated);
            }
        }
    }

    /// True when, in an update, the slot made of tasks `v` has an outdated task still
    /// stopping: stop-first, so its replacement waits.
    fn old_stopping(&self, service: &Service, v: &[usize]) -> bool {
        service.update.is_some()
            && v.iter().any(|&i| {
                !self.state[i].is_terminal()
                    && self.desired[i] == DesiredState::Shutdown
                    && self.is_assigned(i)
                    && !self.is_current(service, i)
            })
    }

    fn replicated(&mut self, service: &'a Service, replicas: u64, idxs: &[usize]) {
        let mut by_slot: Vec<(u64, usize)> = Vec::with_capacity(idxs.len());
        for &i in idxs {
            match self.tasks[i].slot {
                Slot::Replica(n) => by_slot.push((n, i)),
                Slot::Node(_) => {
                    if self.desired[i] == DesiredState::Running {
                        self.stop(i, ShutdownReason::SlotMismatch);
                    }
                }
            }
        }
        by_slot.sort_unstable();
        let slot_idx: Vec<usize> = by_slot.iter().map(|&(_, i)| i).collect();
        // Scale down first, so that the freed spread counts are seen by placement.
        for &(slot, i) in &by_slot {
            if (slot == 0 || slot > replicas) && self.desired[i] == DesiredState::Running {
                self.stop(i, ShutdownReason::ScaledDown);
            }
        }
        let mut to_place = Vec::new();
        let mut keepers = Vec::new();
        let mut old = Vec::new();
        let mut movers = Vec::new();
        // Each wanted slot's range in `slot_idx` (empty for a slot without tasks).
        let mut ranges = Vec::new();
        let mut cursor = by_slot.partition_point(|&(s, _)| s < 1);
        for slot in 1..=replicas {
            let start = cursor;
            while cursor < by_slot.len() && by_slot[cursor].0 == slot {
                cursor += 1;
            }
            ranges.push((slot, start, cursor));
        }
        let mut budget =
            self.update_budget(service, ranges.iter().map(|&(_, a, b)| &slot_idx[a..b]));
        for &(slot, start, end) in &ranges {
            let v = &slot_idx[start..end];
            keepers.clear();
            movers.clear();
            for &i in v {
                if !self.is_active(i) {
                    continue;
                }
                let leave = match self.node_of(i) {
                    Some(k) if self.is_assigned(i) => self.leave_reason(service, k),
                    _ => None,
                };
                match leave {
                    Some(reason) => movers.push((i, reason)),
                    None => keepers.push(i),
                }
            }
            self.split_outdated(service, &mut keepers, &mut old);
            let mut keeper = if keepers.len() == 1 {
                Some(keepers[0])
            } else {
                self.dedup(&mut keepers)
            };
            // Decided before `hand_over` may change what the slot's tasks want.
            let free_turn = self.unavailable_in_update(service, v);
            self.hand_over(service, keeper, &old);
            let mut start_new = false;
            if let Some(k) = keeper
                && !self.is_current(service, k)
                && movers.is_empty()
                && !self.old_stopping(service, v)
                && (budget > 0 || free_turn)
            {
                // A waiting slot's turn in the update (an unavailable one was counted
                // against the budget already).
                if !free_turn {
                    budget -= 1;
                }
                let start_first = service.update.as_ref().is_some_and(|u| u.start_first);
                if start_first && self.is_assigned(k) {
                    start_new = true;
                } else {
                    self.stop(k, ShutdownReason::Updated);
                    keeper = None;
                }
            }
            if keeper.is_some() || !movers.is_empty() {
                for &i in v {
                    if self.state[i].is_terminal() && self.desired[i] == DesiredState::Running {
                        self.stop(i, ShutdownReason::Replaced);
                    }
                }
            }
            match keeper {
                Some(k) if !self.is_assigned(k) => to_place.push(Placement::Existing(k)),
                Some(k) if start_new => {
                    // The old task leaves once its replacement is ready: spread the
                    // replacement as if it were gone already, so the update keeps the spread.
                    if let Some(n) = self.node_of(k) {
                        self.service_counts[n] = self.service_counts[n].saturating_sub(1);
                    }
                    to_place.push(self.next_attempt(service, Slot::Replica(slot), v));
                }
                Some(_) => {}
                None if movers.is_empty() && self.old_stopping(service, v) => {
                    // Stop first: the replacement waits until the old task has stopped.
                }
                None if !movers.is_empty() => {
                    // Start first: the replacement is created now; the moving task keeps
                    // running until the replacement runs (or the handover times out).
                    to_place.push(self.next_attempt(service, Slot::Replica(slot), v));
                }
                None => {
                    if let Some(p) = self.refill(service, Slot::Replica(slot), v) {
                        to_place.push(p);
                    }
                }
            }
            for &(m, reason) in &movers {
                let timeout = self.config.handover_timeout_ms;
                let handed_over = match keeper {
                    Some(k) => {
                        self.state[k] == TaskState::Running
                            || self.now >= self.tasks[k].created_at.plus_ms(timeout)
                    }
                    None => timeout == 0,
                };
                if self.state[m] != TaskState::Running || handed_over {
                    self.stop(m, reason);
                } else {
                    let since = keeper.map_or(self.now, |k| self.tasks[k].created_at);
                    self.wake(since.plus_ms(timeout));
                }
            }
        }
        if !to_place.is_empty() {
            self.place_spread(service, to_place);
        }
    }

    fn place_spread(&mut self, service: &Service, items: Vec<Placement>) {
        let mut eligible = Vec::new();
        let mut failures = Vec::new();
        for (k, node) in self.nodes.iter().enumerate() {
            match check_static(node, service) {
                Ok(()) => eligible.push(k),
                Err(f) => failures.push(f),
            }
        }
        let mut placer: Option<ServicePlacer> = None;
        for item in items {
            let need = match &item {
                Placement::Existing(i) => self.tasks[*i].reservations,
                Placement::New { .. } => service.reservations,
            };
            let p = match &mut placer {
                Some(p) if p.need() == need => p,
                _ => placer.insert(ServicePlacer::new(
                    service,
                    need,
                    &eligible,
                    &failures,
                    &self.usage,
                    &self.service_counts,
                )),
            };
            let result = p.place(&self.capacity, &mut self.usage, &mut self.service_counts);
            self.settle_placement(service, item, result);
        }
    }

    fn settle_placement(
        &mut self,
        service: &Service,
        item: Placement,
        result: Result<usize, PendingReason>,
    ) {
        match item {
            Placement::Existing(i) => match result {
                Ok(k) => {
                    self.decisions.push(Decision::Assign {
                        task: self.tasks[i].id.clone(),
                        node: self.nodes[k].id.clone(),
                    });
                    self.state[i] = TaskState::Assigned;
                }
                Err(reason) => {
                    let t = self.tasks[i];
                    if self.state[i] != TaskState::Pending
                        || t.pending_reason.as_ref() != Some(&reason)
                    {
                        self.decisions.push(Decision::UpdatePending {
                            task: t.id.clone(),
                            reason,
                        });
                        self.state[i] = TaskState::Pending;
                    }
                }
            },
            Placement::New {
                slot,
                attempt,
                restart_history,
            } => {
                let id = self.new_id(service, &slot, attempt);
                let (node_id, state, pending_reason) = match result {
                    Ok(k) => (Some(self.nodes[k].id.clone()), TaskState::Assigned, None),
                    Err(reason) => (None, TaskState::Pending, Some(reason)),
                };
                self.decisions.push(Decision::CreateTask(Task {
                    id,
                    service_id: service.id.clone(),
                    slot,
                    attempt,
                    node_id,
                    desired_state: DesiredState::Running,
                    state,
                    spec_version: service.spec_version,
                    reservations: service.reservations,
                    created_at: self.now,
                    updated_at: self.now,
                    ended_at: None,
                    exit_code: None,
                    error: None,
                    pending_reason,
                    restart_history,
                }));
            }
        }
    }

    fn new_id(&mut self, service: &Service, slot: &Slot, attempt: u64) -> TaskId {
        let mut salt = 0;
        loop {
            let hash = task_hash(&service.id, slot, attempt, self.now, salt);
            if !self.created_ids.contains(&hash) {
                let id = encode(hash);
                let key = fnv64(id.as_str());
                let start = self.task_keys.partition_point(|&k| k < key);
                let exists = self.task_keys[start..]
                    .iter()
                    .zip(&self.tasks[start..])
                    .take_while(|&(&k, _)| k == key)
                    .any(|(_, t)| t.id == id);
                if !exists {
                    self.created_ids.insert(hash);
                    return id;
                }
            }
            salt += 1;
        }
    }

    /// Places one task on the one node of a global slot.
    fn place_on(
        &mut self,
        k: usize,
        need: Resources,
        service: &Service,
    ) -> Result<usize, PendingReason> {
        match check_dynamic(
            self.capacity[k],
            self.usage.reserved[k],
            self.service_counts[k],
            service.max_replicas_per_node,
            need,
        ) {
            Ok(()) => {
                self.usage.reserved[k] = self.usage.reserved[k].saturating_add(need);
                self.usage.active[k] += 1;
                self.service_counts[k] += 1;
                Ok(k)
            }
            Err(f) => Err(PendingReason::from_failures(1, [f])),
        }
    }

    fn global(&mut self, service: &'a Service, idxs: &[usize]) {
        let mut by_node: BTreeMap<&'a str, Vec<usize>> = BTreeMap::new();
        for &i in idxs {
            match &self.tasks[i].slot {
                Slot::Node(n) => by_node.entry(n.as_str()).or_default().push(i),
                Slot::Replica(_) => {
                    if self.desired[i] == DesiredState::Running {
                        self.stop(i, ShutdownReason::SlotMismatch);
                    }
                }
            }
        }
        let mut keys: BTreeSet<&'a str> = by_node.keys().copied().collect();
        keys.extend(self.nodes.iter().map(|n| n.id.as_str()));
        let empty = Vec::new();
        let mut budget = self.update_budget(service, by_node.values().map(Vec::as_slice));
        let mut old = Vec::new();
        for key in keys {
            let v = by_node.get(key).unwrap_or(&empty);
            let node = self.node_index.get(key).copied();
            let placeable = node.map(|k| check_static(self.nodes[k], service));
            let mut keepers = Vec::new();
            for &i in v {
                if !self.is_active(i) {
                    continue;
                }
                if self.is_assigned(i) {
                    if self.tasks[i].node_id.as_ref().map(|n| n.as_str()) != Some(key) {
                        self.stop(i, ShutdownReason::SlotMismatch);
                    } else if let Some(f) = node.and_then(|k| must_leave(self.nodes[k], service)) {
                        self.stop(i, ShutdownReason::from_filter(&f));
                    } else {
                        keepers.push(i);
                    }
                } else {
                    match &placeable {
                        Some(Ok(())) => keepers.push(i),
                        Some(Err(f)) => self.stop(i, ShutdownReason::from_filter(f)),
                        None => self.stop(i, ShutdownReason::NodeNotEligible),
                    }
                }
            }
            self.split_outdated(service, &mut keepers, &mut old);
            let mut keeper = self.dedup(&mut keepers);
            self.hand_over(service, keeper, &old);
            let mut start_new = false;
            if let Some(k) = keeper
                && !self.is_current(service, k)
                && !self.old_stopping(service, v)
                && budget > 0
            {
                budget -= 1;
                let start_first = service.update.as_ref().is_some_and(|u| u.start_first);
                if start_first && self.is_assigned(k) {
                    start_new = true;
                } else {
                    self.stop(k, ShutdownReason::Updated);
                    keeper = None;
                }
            }
            if keeper.is_some() {
                for &i in v {
                    if self.state[i].is_terminal() && self.desired[i] == DesiredState::Running {
                        self.stop(i, ShutdownReason::Replaced);
                    }
                }
            }
            let Some(k) = node else { continue };
            match keeper {
                Some(i) if !self.is_assigned(i) => {
                    let need = self.tasks[i].reservations;
                    let result = self.place_on(k, need, service);
                    self.settle_placement(service, Placement::Existing(i), result);
                }
                Some(_) if start_new => {
                    if placeable != Some(Ok(())) {
                        continue;
                    }
                    let latest = self.latest(v.iter().copied());
                    let attempt = latest.map_or(0, |i| self.tasks[i].attempt + 1);
                    let p = Placement::New {
                        slot: Slot::Node(self.nodes[k].id.clone()),
                        attempt,
                        restart_history: Vec::new(),
                    };
                    let result = self.place_on(k, service.reservations, service);
                    self.settle_placement(service, p, result);
                }
                Some(_) => {}
                None if self.old_stopping(service, v) => {}
                None => {
                    if placeable != Some(Ok(())) {
                        continue;
                    }
                    if let Some(p) = self.refill(service, Slot::Node(self.nodes[k].id.clone()), v) {
                        let result = self.place_on(k, service.reservations, service);
                        self.settle_placement(service, p, result);
                    }
                }
            }
        }
    }

    fn removed_service(&mut self, idxs: &[usize]) {
        for &i in idxs {
            if self.state[i].is_terminal() {
                self.decisions.push(Decision::RemoveTask {
                    task: self.tasks[i].id.clone(),
                });
            } else if self.desired[i] == DesiredState::Running {
                self.stop(i, ShutdownReason::ServiceRemoved);
            }
        }
    }

    /// Keeps the newest `history_limit` (at least 1) ended tasks per slot; removes older ones
    /// that are retired (desired `shutdown`). Ended tasks of global slots whose node is gone
    /// are all removed.
    fn trim_history(&mut self, idxs: &[usize]) {
        let limit = self.config.history_limit.max(1);
        let mut by_slot: BTreeMap<&Slot, Vec<usize>> = BTreeMap::new();
        for &i in idxs {
            if self.state[i].is_terminal() {
                by_slot.entry(&self.tasks[i].slot).or_default().push(i);
            }
        }
        for (slot, mut ended) in by_slot {
            let node_gone =
                matches!(slot, Slot::Node(n) if !self.node_index.contains_key(n.as_str()));
            let keep = if node_gone { 0 } else { limit };
            if ended.len() <= keep {
                continue;
            }
            ended.sort_by(|&a, &b| {
                let (ta, tb) = (self.tasks[a], self.tasks[b]);
                tb.attempt
                    .cmp(&ta.attempt)
                    .then(tb.created_at.cmp(&ta.created_at))
                    .then(tb.id.cmp(&ta.id))
            });
            for &i in &ended[keep..] {
                if self.desired[i] == DesiredState::Shutdown {
                    self.decisions.push(Decision::RemoveTask {
                        task: self.tasks[i].id.clone(),
                    });
                }
            }
        }
    }
}

/// Restart history entries that still count at `now` (within the policy's window).
fn prune(history: &[Timestamp], now: Timestamp, policy: &RestartPolicy) -> Vec<Timestamp> {
    if policy.max_attempts == 0 {
        return Vec::new();
    }
    if policy.window_ms == 0 {
        return history.to_vec();
    }
    let from = now.minus_ms(policy.window_ms);
    history.iter().copied().filter(|&t| t >= from).collect()
}

/// When an ended task's slot gets a new task under `policy`, or `None` if never.
///
/// `complete` counts as success; `failed`, `rejected` and an unexpected `shutdown` as failure;
/// an `orphaned` task is replaced at once whatever the policy (its node died, not the task).
/// The delay is measured from the task's end; `max_attempts` counts the restarts recorded in
/// the task's `restart_history` within `window_ms` before its end.
#[must_use]
pub fn restart_due(task: &Task, policy: &RestartPolicy) -> Option<Timestamp> {
    let end = task.end_time();
    let failed = match task.state {
        TaskState::Complete => false,
        TaskState::Orphaned => return Some(end),
        s if s.is_terminal() => true,
        _ => return None,
    };
    match policy.condition {
        RestartCondition::Any => {}
        RestartCondition::OnFailure if failed => {}
        RestartCondition::OnFailure | RestartCondition::None => return None,
    }
    if policy.max_attempts > 0 {
        let from = if policy.window_ms > 0 {
            end.minus_ms(policy.window_ms)
        } else {
            Timestamp(0)
        };
        let count = task.restart_history.iter().filter(|&&t| t >= from).count() as u64;
        if count >= policy.max_attempts {
            return None;
        }
    }
    Some(end.plus_ms(policy.delay_ms))
}
