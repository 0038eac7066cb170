//! Applying decisions to a [`ClusterView`], and a small worker simulation for tests.

use std::collections::{BTreeSet, HashMap};

use crate::model::{ClusterView, DesiredState, NodeStatus, TaskId, TaskState, Timestamp};
use crate::reconcile::{Decision, Plan, ReconcileConfig, reconcile};

/// A decision that cannot be applied to the view.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ApplyError {
    /// The decision names a task the view does not have.
    #[error("decision for unknown task {0}")]
    UnknownTask(TaskId),
    /// `CreateTask` with an ID that already exists.
    #[error("task {0} already exists")]
    DuplicateTask(TaskId),
}

impl ClusterView {
    /// Applies decisions in order, exactly as documented on each [`Decision`] variant, using
    /// `now` for the `updated_at`/`ended_at` timestamps they set. This is the reference
    /// semantics for the orchestrator's Raft commands.
    ///
    /// # Errors
    /// [`ApplyError`] on the first decision that names an unknown task or duplicates one; the
    /// decisions before it stay applied.
    pub fn apply(&mut self, decisions: &[Decision], now: Timestamp) -> Result<(), ApplyError> {
        // Lookups only: the map's iteration order is never used.
        let mut index: HashMap<TaskId, usize> = self
            .tasks
            .iter()
            .enumerate()
            .map(|(i, t)| (t.id.clone(), i))
            .collect();
        let mut removed = BTreeSet::new();
        let mut result = Ok(());
        for d in decisions {
            let id = match d {
                Decision::CreateTask(t) => &t.id,
                Decision::Assign { task, .. }
                | Decision::UpdatePending { task, .. }
                | Decision::Shutdown { task, .. }
                | Decision::Cancel { task, .. }
                | Decision::MarkOrphaned { task }
                | Decision::RemoveTask { task } => task,
            };
            let existing = index.get(id).copied().filter(|i| !removed.contains(i));
            let i = match (d, existing) {
                (Decision::CreateTask(t), None) => {
                    index.insert(t.id.clone(), self.tasks.len());
                    self.tasks.push(t.clone());
                    continue;
                }
                (Decision::CreateTask(t), Some(_)) => {
                    result = Err(ApplyError::DuplicateTask(t.id.clone()));
                    break;
                }
                (_, None) => {
                    result = Err(ApplyError::UnknownTask(id.clone()));
                    break;
                }
                (_, Some(i)) => i,
            };
            let t = &mut self.tasks[i];
            match d {
                Decision::CreateTask(_) => {}
                Decision::Assign { node, .. } => {
                    t.node_id = Some(node.clone());
                    t.state = TaskState::Assigned;
                    t.pending_reason = None;
                    t.updated_at = now;
                }
                Decision::UpdatePending { reason, .. } => {
                    t.state = TaskState::Pending;
                    t.pending_reason = Some(reason.clone());
                    t.updated_at = now;
                }
                Decision::Shutdown { .. } => t.desired_state = DesiredState::Shutdown,
                Decision::Cancel { .. } => {
                    t.desired_state = DesiredState::Shutdown;
                    t.state = TaskState::Shutdown;
                    t.updated_at = now;
                    t.ended_at = Some(now);
                }
                Decision::MarkOrphaned { .. } => {
                    t.desired_state = DesiredState::Shutdown;
                    t.state = TaskState::Orphaned;
                    t.updated_at = now;
                    t.ended_at = Some(now);
                }
                Decision::RemoveTask { .. } => {
                    removed.insert(i);
                }
            }
        }
        if !removed.is_empty() {
            let mut i = 0;
            self.tasks.retain(|_| {
                let keep = !removed.contains(&i);
                i += 1;
                keep
            });
        }
        result
    }
}

/// A worker simulation for tests: what workers on `ready` nodes would report at `now`.
/// Tasks on `down` or `unknown` nodes are left alone (nobody can act there).
pub mod sim {
    use super::{
        ApplyError, ClusterView, DesiredState, NodeStatus, Plan, ReconcileConfig, TaskId,
        TaskState, Timestamp, reconcile,
    };

    /// Workers start what is assigned (`assigned`..`starting` → `running`) and stop what is
    /// desired `shutdown` (→ `shutdown`). Returns how many tasks changed.
    pub fn run_workers(view: &mut ClusterView, now: Timestamp) -> usize {
        let ready: std::collections::BTreeSet<String> = view
            .nodes
            .iter()
            .filter(|n| n.status == NodeStatus::Ready)
            .map(|n| n.id.0.clone())
            .collect();
        let mut changed = 0;
        for t in &mut view.tasks {
            let on_ready = t
                .node_id
                .as_ref()
                .is_some_and(|n| ready.contains(n.as_str()));
            if !on_ready || t.state.is_terminal() || t.state.is_unassigned() {
                continue;
            }
            match t.desired_state {
                DesiredState::Shutdown => {
                    t.state = TaskState::Shutdown;
                    t.ended_at = Some(now);
                }
                DesiredState::Running if t.state != TaskState::Running => {
                    t.state = TaskState::Running;
                }
                DesiredState::Running => continue,
            }
            t.updated_at = now;
            changed += 1;
        }
        changed
    }

    /// Ends a task as its worker would report it (`complete`, `failed`, `rejected` or
    /// `shutdown`), with an exit code.
    ///
    /// # Errors
    /// [`ApplyError::UnknownTask`] if the view has no such task.
    pub fn end_task(
        view: &mut ClusterView,
        task: &TaskId,
        state: TaskState,
        exit_code: Option<i32>,
        now: Timestamp,
    ) -> Result<(), ApplyError> {
        let t = view
            .tasks
            .iter_mut()
            .find(|t| t.id == *task)
            .ok_or_else(|| ApplyError::UnknownTask(task.clone()))?;
        t.state = state;
        t.exit_code = exit_code;
        t.ended_at = Some(now);
        t.updated_at = now;
        Ok(())
    }

    /// The outcome of [`converge`].
    #[derive(Debug)]
    pub struct Converged {
        /// Reconcile passes that produced decisions.
        pub rounds: usize,
        /// The time when no decision was left.
        pub now: Timestamp,
        /// Every plan, in order (including the final empty one).
        pub plans: Vec<Plan>,
    }

    /// Why [`converge`] failed.
    #[derive(Debug, thiserror::Error)]
    pub enum ConvergeError {
        /// A decision could not be applied.
        #[error(transparent)]
        Apply(#[from] ApplyError),
        /// Still deciding after the round limit.
        #[error("no fixed point after {0} rounds")]
        NoFixedPoint(usize),
    }

    /// Repeats reconcile → apply → [`run_workers`] until a pass decides nothing, no worker
    /// changes anything and no wake-up is pending. Time advances by `step_ms` per round, or
    /// jumps to the plan's wake-up when nothing else happened.
    ///
    /// # Errors
    /// [`ConvergeError`] if a decision does not apply or `max_rounds` is exceeded.
    pub fn converge(
        view: &mut ClusterView,
        start: Timestamp,
        step_ms: u64,
        max_rounds: usize,
        config: &ReconcileConfig,
    ) -> Result<Converged, ConvergeError> {
        let mut now = start;
        let mut plans = Vec::new();
        for rounds in 0..max_rounds {
            let plan = reconcile(view, now, config);
            view.apply(&plan.decisions, now)?;
            let changed = run_workers(view, now);
            let idle = plan.decisions.is_empty() && changed == 0;
            let wakeup = plan.next_wakeup;
            plans.push(plan);
            match (idle, wakeup) {
                (true, None) => return Ok(Converged { rounds, now, plans }),
                (true, Some(w)) => now = w.max(now.plus_ms(1)),
                (false, _) => now = now.plus_ms(step_ms),
            }
        }
        Err(ConvergeError::NoFixedPoint(max_rounds))
    }
}
