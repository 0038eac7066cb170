//! Rolling updates: how far one has come, and whether it failed. Pure, like the reconciler,
//! which does the replacing itself (a [`Service`](crate::Service)'s `update` tells it which
//! task versions are outdated and how many slots may be replaced at once); this module is
//! the orchestrator's judge of when an update is over.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::model::{
    ClusterView, RollingUpdate, Service, ServiceMode, Slot, Task, TaskHealth, TaskId, TaskState,
    Timestamp,
};

/// Where a rolling update stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum UpdateAssessment {
    /// Still replacing tasks, or watching the last ones through the monitor window.
    InProgress {
        /// Slots that run a ready task of the current spec and nothing older.
        updated: u64,
        /// Slots the service has.
        total: u64,
        /// When to look again even if nothing changes (the monitor window's end).
        wakeup: Option<Timestamp>,
    },
    /// Every slot runs a ready task of the current spec and the monitor window is over.
    Completed,
    /// More tasks of the current spec failed than the failure ratio allows.
    Failed {
        /// The first task that failed.
        task: TaskId,
        /// What happened to it, for the update status.
        message: String,
    },
}

/// True when `task` (observed in `state`) is running and ready as far as its health check
/// says: not `starting` or `unhealthy`, and `healthy` when `require_healthy`.
#[must_use]
pub fn task_ready(
    task: &Task,
    health: &BTreeMap<TaskId, TaskHealth>,
    require_healthy: bool,
) -> bool {
    if task.state != TaskState::Running {
        return false;
    }
    match health.get(&task.id) {
        Some(TaskHealth::Healthy) => true,
        Some(TaskHealth::Starting | TaskHealth::Unhealthy) => false,
        Some(TaskHealth::None) | None => !require_healthy,
    }
}

/// A task that failed the update: it runs the current spec, was created by the update, and
/// ended on its own (failed, rejected, or exited — not stopped, not orphaned by its node's
/// death).
fn failed_in_update(service: &Service, u: &RollingUpdate, t: &Task) -> bool {
    u.is_current(service.spec_version, t.spec_version)
        && t.created_at >= u.started_at
        && matches!(
            t.state,
            TaskState::Failed | TaskState::Rejected | TaskState::Complete
        )
}

fn describe(t: &Task) -> String {
    let mut s = format!("task {} {}", t.id, t.state.as_str());
    if let Some(code) = t.exit_code {
        s.push_str(&format!(" (exit code {code})"));
    }
    if let Some(e) = t.error.as_deref().filter(|e| !e.is_empty()) {
        s.push_str(": ");
        s.push_str(e);
    }
    s
}

/// Judges the update of service `service` in `view` at `now`; `None` when the service does
/// not exist or has no update.
///
/// A slot is updated when it runs an active, ready task of the current spec and no older
/// task is left in it (running or stopping). Failures are tasks of the current spec created
/// since the update began that ended on their own; more than `max_failure_ratio` of the
/// slots is a failure. The update is complete once every slot is updated and `monitor_ms`
/// has passed since the last one became ready (a failure in that window still counts).
#[must_use]
pub fn assess(view: &ClusterView, service: &Service, now: Timestamp) -> Option<UpdateAssessment> {
    let u = service.update.as_ref()?;
    let mut slots: BTreeMap<&Slot, Vec<&Task>> = BTreeMap::new();
    let mut failures: Vec<&Task> = Vec::new();
    for t in view.tasks.iter().filter(|t| t.service_id == service.id) {
        slots.entry(&t.slot).or_default().push(t);
        if failed_in_update(service, u, t) {
            failures.push(t);
        }
    }
    let wanted: Vec<Slot> = match service.mode {
        ServiceMode::Replicated { replicas } => (1..=replicas).map(Slot::Replica).collect(),
        ServiceMode::Global => slots
            .iter()
            .filter(|(slot, tasks)| {
                matches!(slot, Slot::Node(_)) && tasks.iter().any(|t| t.is_active())
            })
            .map(|(slot, _)| (*slot).clone())
            .collect(),
    };
    let total = wanted.len() as u64;
    failures.sort_by(|a, b| a.end_time().cmp(&b.end_time()).then(a.id.cmp(&b.id)));
    let ppm = u64::from(u.max_failure_ratio_ppm);
    if let Some(first) = failures.first()
        && (failures.len() as u64).saturating_mul(1_000_000) > ppm.saturating_mul(total)
    {
        return Some(UpdateAssessment::Failed {
            task: first.id.clone(),
            message: describe(first),
        });
    }
    let empty = Vec::new();
    let mut updated = 0u64;
    let mut last_ready: Option<Timestamp> = None;
    for slot in &wanted {
        let tasks = slots.get(slot).unwrap_or(&empty);
        let current = |t: &Task| u.is_current(service.spec_version, t.spec_version);
        let old_left = tasks.iter().any(|t| {
            !current(t) && !t.state.is_terminal() && (t.is_active() || !t.state.is_unassigned())
        });
        let ready = tasks.iter().find(|t| {
            current(t) && t.is_active() && task_ready(t, &view.health, u.require_healthy)
        });
        if let (false, Some(t)) = (old_left, ready) {
            updated += 1;
            if t.created_at >= u.started_at {
                last_ready = last_ready.max(Some(t.updated_at));
            }
        }
    }
    if updated < total {
        return Some(UpdateAssessment::InProgress {
            updated,
            total,
            wakeup: None,
        });
    }
    match last_ready.map(|t| t.plus_ms(u.monitor_ms)) {
        Some(end) if now < end => Some(UpdateAssessment::InProgress {
            updated,
            total,
            wakeup: Some(end),
        }),
        _ => Some(UpdateAssessment::Completed),
    }
}
