//! Shoal's scheduler: pure, deterministic orchestration decisions (DESIGN §5).
//!
//! Desired state (services, node availability and labels) and observed state (node status, task
//! states) come in as a [`ClusterView`]; [`reconcile`] returns a [`Plan`] of [`Decision`]s for the
//! orchestrator on the Raft leader to commit. No I/O, no clock (time is the `now` argument), no
//! randomness; the same input gives the same plan.
//!
//! # Contract with the orchestrator (node crate)
//!
//! - On the Raft leader, build a [`ClusterView`] from the state machine and call
//!   [`reconcile`]`(&view, now_ms, &config)` whenever nodes, services or tasks change, and again
//!   at [`Plan::next_wakeup`] (restart delays, drain handovers). Commit the plan's decisions in
//!   order; their meaning is exactly [`ClusterView::apply`]. Followers never recompute: task IDs
//!   and placements are in the decisions.
//! - A worker on node `N` runs the tasks with `node_id == N`, `desired_state == Running` and a
//!   non-terminal state, and stops those with `desired_state == Shutdown` that are not terminal
//!   yet. It reports `preparing`/`starting`/`running`/`complete`/`failed`/`rejected`/`shutdown`
//!   with `exit_code`/`error`; the orchestrator stores them with `updated_at` and, for terminal
//!   states, `ended_at`.
//! - Node `down` comes from membership (after the leader's grace period); the scheduler turns its
//!   tasks `orphaned` and replaces them. When the node returns, its worker stops those copies and
//!   may report them `shutdown`; overwriting `orphaned` with `shutdown` is fine.
//! - Pending tasks are placed again on every pass, so reconcile when a node joins, changes
//!   availability, labels, drivers or capacity, or when a task ends.
//! - Existing tasks are not moved for capacity or `max_replicas_per_node` changes (only for
//!   drain, constraints and drivers), as in Swarm; draining a node moves nothing back when it is
//!   active again.
//! - CLI input: [`Constraint::parse`], [`parse_memory`], [`parse_cpus`] and `FromStr` on
//!   [`Availability`], [`NodeRole`], [`RestartCondition`], [`TaskState`], [`TaskHealth`] give
//!   typed errors.
//!
//! ```
//! use shoal_scheduler::*;
//! use std::collections::{BTreeMap, BTreeSet};
//!
//! let node = Node {
//!     id: NodeId::from("n1"),
//!     hostname: "pi1".into(),
//!     role: NodeRole::Worker,
//!     status: NodeStatus::Ready,
//!     availability: Availability::Active,
//!     labels: BTreeMap::new(),
//!     capacity: Resources { memory_bytes: 1 << 30, nano_cpus: 4_000_000_000 },
//!     drivers: BTreeSet::from(["docker".to_owned()]),
//!     allows_privileged: false,
//!     devices: None,
//! };
//! let service = Service {
//!     id: ServiceId::from("s1"),
//!     name: "web".into(),
//!     mode: ServiceMode::Replicated { replicas: 2 },
//!     driver: "docker".into(),
//!     privileged: false,
//!     devices: vec![],
//!     constraints: Constraint::parse_all(&["node.role==worker"]).unwrap(),
//!     reservations: Resources::ZERO,
//!     max_replicas_per_node: None,
//!     restart_policy: RestartPolicy::default(),
//!     spec_version: 1,
//!     update: None,
//! };
//! let mut view = ClusterView { nodes: vec![node], services: vec![service], tasks: vec![], health: Default::default() };
//! let now = Timestamp(1_000);
//! let plan = reconcile(&view, now, &ReconcileConfig::default());
//! assert_eq!(plan.decisions.len(), 2); // two CreateTask, both assigned to n1
//! view.apply(&plan.decisions, now).unwrap();
//! assert!(reconcile(&view, now, &ReconcileConfig::default()).decisions.is_empty());
//! ```

mod apply;
mod constraint;
mod ids;
mod model;
mod placement;
mod reconcile;
mod update;
mod words;

pub use apply::{ApplyError, sim};
pub use constraint::{
    Constraint, ConstraintError, ConstraintErrorKind, ConstraintField, ConstraintOp,
};
pub use ids::derive_task_id;
pub use model::{
    Availability, ClusterView, DesiredState, Node, NodeId, NodeRole, NodeStatus, Resources,
    RestartCondition, RestartPolicy, RollingUpdate, Service, ServiceId, ServiceMode, Slot, Task,
    TaskHealth, TaskId, TaskState, Timestamp,
};
pub use placement::{
    FilterCount, FilterFailure, PendingReason, check_dynamic, check_static, must_leave,
};
pub use reconcile::{
    CANARY_SETTLE_MS, Decision, Plan, ReconcileConfig, ShutdownReason, reconcile, restart_due,
};
pub use update::{UpdateAssessment, assess, task_ready};
pub use words::{AmountError, UnknownWord, parse_cpus, parse_memory};

#[cfg(test)]
mod tests;
