//! The leader's orchestrator (DESIGN §5): it feeds the cluster state to the scheduler and
//! commits the scheduler's decisions through Raft.
//!
//! [`plan`] is the pure step; [`run`] is the loop a manager runs for its lifetime. The loop
//! acts only while this node leads, once the leader's own first entry of its term is applied
//! (so it plans from a state that holds everything committed before) and a grace period has
//! passed since it became leader. It reconciles when the applied state changes, when the
//! scheduler's wake-up comes due (restart delays, handovers), and on a slow tick.
//!
//! Nodes are marked `down` by the separate liveness loop (which has its own grace period);
//! the orchestrator only reacts to node status.

use std::sync::Arc;
use std::time::Duration;

use openraft::ServerState;
use shoal_scheduler::{
    ClusterView, Decision, ReconcileConfig, Timestamp, UpdateAssessment, assess, reconcile,
};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::services::{FailureAction, ServiceCommand, UpdateState, to_view};
use super::state::{ClusterState, Command};
use super::{Manager, ManagerError};
use crate::util::now_ms;

/// Tunables of the orchestrator loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrchestratorConfig {
    /// How long a new leader waits after its election before it acts.
    pub grace: Duration,
    /// Reconcile at least this often even when nothing changes.
    pub tick: Duration,
    /// Least time between two commits of decisions (a guard against busy loops).
    pub min_interval: Duration,
    /// Most decisions per Raft entry (a large plan is committed in several entries, in
    /// order).
    pub max_batch: usize,
    /// After this many passes in a row that all produced decisions, wait `tick` between
    /// passes (a plan that keeps coming back means something does not apply).
    pub busy_passes: u32,
}

impl Default for OrchestratorConfig {
    /// 2 s grace, 1 s tick, 50 ms between commits, 500 decisions per entry.
    fn default() -> Self {
        OrchestratorConfig {
            grace: Duration::from_secs(2),
            tick: Duration::from_secs(1),
            min_interval: Duration::from_millis(50),
            max_batch: 500,
            busy_passes: 8,
        }
    }
}

/// The scheduler's settings for this cluster (task history limit from the cluster record).
pub fn reconcile_config(state: &ClusterState) -> ReconcileConfig {
    let mut config = ReconcileConfig::default();
    if let Some(c) = &state.cluster {
        config.history_limit = usize::try_from(c.task_history_limit)
            .unwrap_or(usize::MAX)
            .max(1);
    }
    config
}

/// A rolling update (or rollback) in progress that the orchestrator judges on every pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateWatch {
    /// Service ID.
    pub id: String,
    /// The spec version being rolled out.
    pub version: u64,
    /// A rollback (else an update).
    pub rollback: bool,
    /// What a failure leads to.
    pub failure_action: FailureAction,
    /// The status message so far (an automatic rollback's says why it began).
    pub message: String,
}

/// The updates in progress (not paused, not done) in `state`.
pub fn update_watches(state: &ClusterState) -> Vec<UpdateWatch> {
    state
        .services
        .services
        .values()
        .filter(|r| r.update_in_progress())
        .map(|r| {
            let rollback = r
                .update_status
                .as_ref()
                .is_some_and(|u| u.state == UpdateState::RollbackStarted);
            let config = if rollback {
                &r.spec.rollback_config
            } else {
                &r.spec.update_config
            };
            UpdateWatch {
                id: r.id.clone(),
                version: r.version,
                rollback,
                failure_action: config.failure_action,
                message: r
                    .update_status
                    .as_ref()
                    .map(|u| u.message.clone())
                    .unwrap_or_default(),
            }
        })
        .collect()
}

/// The scheduler's input for `state` and the updates to judge, or `None` before `init`.
pub fn view(state: &ClusterState) -> Option<(ClusterView, ReconcileConfig, Vec<UpdateWatch>)> {
    state.cluster.as_ref()?;
    Some((
        to_view(&state.services, &state.nodes, &state.facilities),
        reconcile_config(state),
        update_watches(state),
    ))
}

/// Pauses, in `view`, the updates that `judged` stops (paused, rolled back): a failed update
/// starts no further slot in the same pass that judges it.
pub fn hold_failed(view: &mut ClusterView, judged: &[ServiceCommand]) {
    for cmd in judged {
        if let ServiceCommand::UpdateVerdict { id, state, .. } = cmd
            && matches!(
                state,
                UpdateState::Paused | UpdateState::RollbackStarted | UpdateState::RollbackPaused
            )
            && let Some(u) = view
                .services
                .iter_mut()
                .find(|s| s.id.as_str() == id)
                .and_then(|s| s.update.as_mut())
        {
            u.paused = true;
        }
    }
}

/// The verdicts on the updates `watches` at `now` (completed, paused, rolled back: commands
/// to commit) and the earliest time to judge again (a monitor window ending).
pub fn verdicts(
    view: &ClusterView,
    watches: &[UpdateWatch],
    now: Timestamp,
) -> (Vec<ServiceCommand>, Option<Timestamp>) {
    let mut commands = Vec::new();
    let mut wakeup: Option<Timestamp> = None;
    for w in watches {
        let Some(service) = view.services.iter().find(|s| s.id.as_str() == w.id) else {
            continue;
        };
        let verdict = |state: UpdateState, message: String| ServiceCommand::UpdateVerdict {
            id: w.id.clone(),
            version: w.version,
            state,
            message,
            at: now.0,
        };
        match assess(view, service, now) {
            None => {}
            Some(UpdateAssessment::InProgress {
                wakeup: Some(at), ..
            }) => {
                wakeup = Some(wakeup.map_or(at, |w| w.min(at)));
            }
            Some(UpdateAssessment::InProgress { wakeup: None, .. }) => {}
            Some(UpdateAssessment::Completed) => commands.push(if w.rollback {
                // An automatic rollback keeps saying why it happened.
                let message = if w.message.starts_with("update rolled back") {
                    format!("{} (rollback completed)", w.message)
                } else {
                    "rollback completed".into()
                };
                verdict(UpdateState::RollbackCompleted, message)
            } else {
                verdict(UpdateState::Completed, "update completed".into())
            }),
            Some(UpdateAssessment::Failed { message, .. }) => {
                let why = format!("due to failure or early termination of {message}");
                match (w.rollback, w.failure_action) {
                    (_, FailureAction::Continue) => {}
                    (false, FailureAction::Pause) => {
                        commands.push(verdict(UpdateState::Paused, format!("update paused {why}")));
                    }
                    (false, FailureAction::Rollback) => commands.push(verdict(
                        UpdateState::RollbackStarted,
                        format!("update rolled back {why}"),
                    )),
                    (true, _) => commands.push(verdict(
                        UpdateState::RollbackPaused,
                        format!("rollback paused {why}"),
                    )),
                }
            }
        }
    }
    (commands, wakeup)
}

/// One reconcile pass over `state` at `now_ms`: the decisions to commit (possibly none) and
/// when to reconcile again at the latest. `None` before the cluster is initialized. (The
/// loop does the same in two halves: the view under the state lock, the scheduler outside.)
#[cfg(test)]
pub fn plan(state: &ClusterState, now_ms: u64) -> Option<(Vec<Decision>, Option<Timestamp>)> {
    let (view, config, _) = view(state)?;
    let plan = reconcile(&view, Timestamp(now_ms), &config);
    Some((plan.decisions, plan.next_wakeup))
}

/// The command that commits `decisions` computed at `now_ms`.
pub fn decisions_command(decisions: Vec<Decision>, now_ms: u64) -> Command {
    Command::Services(ServiceCommand::ApplyDecisions {
        decisions,
        now: now_ms,
    })
}

/// The term this node leads with its state caught up (its own first entry of the term is
/// applied), if it does.
fn ready_term(m: &openraft::RaftMetrics<u64, openraft::EmptyNode>, me: u64) -> Option<u64> {
    let caught_up = m
        .last_applied
        .is_some_and(|l| l.leader_id.get_term() == m.current_term);
    (m.state == ServerState::Leader && m.current_leader == Some(me) && caught_up)
        .then_some(m.current_term)
}

/// One pass: plan from the local state (the leader's, caught up) and commit the decisions.
/// Returns how many decisions were committed and the scheduler's wake-up.
async fn step(
    manager: &Manager,
    config: &OrchestratorConfig,
) -> Result<(usize, Option<Timestamp>), ManagerError> {
    let Some((view, rconfig, watches)) = manager.read_local(view) else {
        return Ok((0, None));
    };
    // The state's times come from earlier leaders' clocks: when they are ahead of ours
    // (theirs was ahead, or ours stepped back), go on from them, so that a wait they
    // started ends when they meant it to.
    if let Some(latest) = latest_time(&view) {
        crate::clock::observe(latest);
    }
    let now = now_ms();
    let (plan, (judged, judge_again)) = tokio::task::spawn_blocking(move || {
        let mut view = view;
        let judged = verdicts(&view, &watches, Timestamp(now));
        hold_failed(&mut view, &judged.0);
        (reconcile(&view, Timestamp(now), &rconfig), judged)
    })
    .await
    .map_err(|e| ManagerError::Fatal(format!("the scheduler failed: {e}")))?;
    let count = plan.decisions.len() + judged.len();
    for chunk in plan.decisions.chunks(config.max_batch.max(1)) {
        manager
            .write(decisions_command(chunk.to_vec(), now))
            .await?;
    }
    for cmd in judged {
        // A verdict that no longer applies (the user updated again) is refused: fine.
        match manager.write(Command::Services(cmd)).await {
            Ok(_) => {}
            Err(ManagerError::Refused(why)) => {
                debug!("orchestrator: update verdict not applied: {why}");
            }
            Err(e) => return Err(e),
        }
    }
    let wakeup = match (plan.next_wakeup, judge_again) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    Ok((count, wakeup))
}

/// The latest time written into `view` (tasks' and services' times).
fn latest_time(view: &ClusterView) -> Option<u64> {
    view.tasks
        .iter()
        .map(|t| t.updated_at.0.max(t.created_at.0))
        .max()
}

/// Where the loop stands while this node leads.
#[derive(Debug, Clone, Copy)]
struct Pace {
    /// When this leadership began (the grace period runs from here).
    since: Instant,
    /// When the next pass is due even if nothing changed.
    due: Instant,
    /// When decisions were last committed.
    last_commit: Option<Instant>,
    /// Passes in a row that all produced decisions.
    busy: u32,
}

/// What one turn of the loop does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Plan and commit now.
    Plan,
    /// Sleep until then (or until the state or the leadership changes).
    WaitUntil(Instant),
}

/// The loop's decision at `now`: plan when the grace period is over (or this leader is
/// `alone`: it has no other node's state to confirm, as in every cluster right after
/// `init`), the last commit is `min_interval` behind, and either the state `changed` or a
/// pass is due — unless every recent pass kept deciding (`busy`), which waits for `due`.
fn next_turn(
    config: &OrchestratorConfig,
    pace: &Pace,
    now: Instant,
    changed: bool,
    alone: bool,
) -> Turn {
    let grace_end = pace.since + config.grace;
    if !alone && now < grace_end {
        return Turn::WaitUntil(grace_end);
    }
    if let Some(next) = pace.last_commit.map(|c| c + config.min_interval)
        && now < next
    {
        return Turn::WaitUntil(next);
    }
    let calm = pace.busy < config.busy_passes || now >= pace.due;
    if (changed || now >= pace.due) && calm {
        Turn::Plan
    } else {
        Turn::WaitUntil(pace.due)
    }
}

/// True when the node table holds no node but the one with Raft ID `me`.
fn alone_in(state: &ClusterState, me: u64) -> bool {
    state.nodes.values().all(|n| n.raft_id == me)
}

/// Converts a scheduler wake-up (wall clock) into a monotonic deadline.
fn wakeup_deadline(at: Timestamp) -> Instant {
    Instant::now() + Duration::from_millis(at.0.saturating_sub(now_ms()))
}

/// Runs the orchestrator until `shutdown` becomes true (or is dropped) or Raft stops. Acts
/// only while this node leads (see the module docs); call it once per [`Manager`], e.g.
/// `tokio::spawn(orchestrator::run(manager, OrchestratorConfig::default(), shutdown_rx))`.
pub async fn run(
    manager: Arc<Manager>,
    config: OrchestratorConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let me = manager.raft_id();
    let mut metrics = manager.raft().metrics();
    // (term, since) of the leadership we act for.
    let mut leading: Option<(u64, Instant)> = None;
    // The applied log index the last pass planned from.
    let mut planned_at_applied = None;
    // When the next pass is due even if nothing is applied.
    let mut due = Instant::now();
    let mut last_commit: Option<Instant> = None;
    let mut busy = 0u32;
    loop {
        if *shutdown.borrow() {
            return;
        }
        let (term, applied) = {
            let m = metrics.borrow_and_update();
            (ready_term(&m, me), m.last_applied.map(|l| l.index))
        };
        let mut wait_until = Instant::now() + config.tick;
        match term {
            None => {
                leading = None;
                planned_at_applied = None;
                busy = 0;
            }
            Some(term) => {
                let since = match leading {
                    Some((t, s)) if t == term => s,
                    _ => {
                        debug!(term, "orchestrator: leading; waiting out the grace period");
                        let now = Instant::now();
                        leading = Some((term, now));
                        planned_at_applied = None;
                        due = now + config.grace;
                        now
                    }
                };
                let now = Instant::now();
                let pace = Pace {
                    since,
                    due,
                    last_commit,
                    busy,
                };
                let changed = applied != planned_at_applied;
                let alone = manager.read_local(|s| alone_in(s, me));
                match next_turn(&config, &pace, now, changed, alone) {
                    Turn::WaitUntil(at) => wait_until = at,
                    Turn::Plan => {
                        planned_at_applied = applied;
                        due = now + config.tick;
                        match step(&manager, &config).await {
                            Ok((0, wakeup)) => {
                                busy = 0;
                                if let Some(w) = wakeup {
                                    due = due.min(wakeup_deadline(w));
                                }
                            }
                            Ok((n, wakeup)) => {
                                debug!(decisions = n, "orchestrator: committed decisions");
                                last_commit = Some(Instant::now());
                                busy += 1;
                                if busy >= config.busy_passes {
                                    warn!(
                                        passes = busy,
                                        "orchestrator: every pass keeps deciding; slowing down"
                                    );
                                } else if let Some(w) = wakeup {
                                    due = due.min(wakeup_deadline(w));
                                }
                                // Plan again from the state our own entry produced.
                                planned_at_applied = None;
                            }
                            Err(ManagerError::NotLeader { .. }) => {}
                            // Retried at the next tick, or sooner when the state changes.
                            Err(e) => warn!("orchestrator: cannot commit decisions: {e}"),
                        }
                        wait_until = due;
                    }
                }
            }
        }
        tokio::select! {
            r = shutdown.changed() => {
                if r.is_err() {
                    return;
                }
            }
            r = metrics.changed() => {
                if r.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(wait_until) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::manager::services::{ServiceRecord, ServiceSpec, TaskReport};
    use crate::manager::state::{
        Availability, ClusterRecord, CommandResult, NodeRecord, NodeStatus, Role,
    };

    fn node(id: &str) -> NodeRecord {
        NodeRecord {
            id: id.into(),
            public_key: [id.len() as u8; 32],
            raft_id: id.len() as u64,
            hostname: format!("host-{id}"),
            addr: "127.0.0.1:4747".into(),
            role: Role::Worker,
            availability: Availability::Active,
            status: NodeStatus::Ready,
            labels: BTreeMap::new(),
            platform: "linux/x86_64".into(),
            memory_bytes: 1 << 30,
            cpus: 2,
            drivers: vec!["docker".into(), "process".into()],
            version: "0".into(),
            created_at: 1,
            updated_at: 1,
        }
    }

    #[test]
    fn the_loop_waits_out_the_grace_spaces_commits_and_calms_down() {
        let c = OrchestratorConfig::default();
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let fresh = Pace {
            since: t0,
            due: ms(2000),
            last_commit: None,
            busy: 0,
        };
        // A new leader waits out the grace, even when the state changed...
        assert_eq!(
            next_turn(&c, &fresh, ms(10), true, false),
            Turn::WaitUntil(ms(2000))
        );
        // ...unless it is alone.
        assert_eq!(next_turn(&c, &fresh, ms(10), true, true), Turn::Plan);
        // After the grace: a change plans, no change waits for the due pass.
        let settled = Pace {
            due: ms(3000),
            ..fresh
        };
        assert_eq!(next_turn(&c, &settled, ms(2500), true, false), Turn::Plan);
        assert_eq!(
            next_turn(&c, &settled, ms(2500), false, false),
            Turn::WaitUntil(ms(3000))
        );
        assert_eq!(next_turn(&c, &settled, ms(3000), false, false), Turn::Plan);
        // Commits are spaced by min_interval.
        let committed = Pace {
            last_commit: Some(ms(2490)),
            ..settled
        };
        assert_eq!(
            next_turn(&c, &committed, ms(2500), true, false),
            Turn::WaitUntil(ms(2540))
        );
        assert_eq!(next_turn(&c, &committed, ms(2540), true, false), Turn::Plan);
        // A plan that keeps deciding waits for the tick even when the state changed.
        let busy = Pace {
            busy: c.busy_passes,
            ..committed
        };
        assert_eq!(
            next_turn(&c, &busy, ms(2600), true, false),
            Turn::WaitUntil(ms(3000))
        );
        assert_eq!(next_turn(&c, &busy, ms(3000), true, false), Turn::Plan);
    }

    #[test]
    fn only_a_leader_alone_in_the_node_table_skips_the_grace() {
        let mut s = ClusterState::default();
        let a = node("a");
        let me = a.raft_id;
        s.nodes.insert(a.id.clone(), a);
        assert!(alone_in(&s, me));
        let b = node("bb");
        s.nodes.insert(b.id.clone(), b);
        assert!(!alone_in(&s, me));
    }

    #[test]
    fn plan_is_none_before_init_and_converges_through_commands() {
        let mut s = ClusterState::default();
        assert!(plan(&s, 1).is_none());
        s.apply(&Command::InitCluster {
            cluster: ClusterRecord {
                id: "c".into(),
                created_at: 1,
                ca_cert_der: vec![],
                ca_key_der: vec![],
                worker_token_generation: 0,
                manager_token_generation: 0,
                task_history_limit: 5,
            },
            node: node("a"),
        });
        s.apply(&Command::UpsertNode(node("bb")));
        let mut spec = ServiceSpec::new("web", "img");
        spec.mode = crate::manager::services::ServiceMode::Replicated { replicas: 4 };
        let create = Command::Services(ServiceCommand::create(ServiceRecord::new("s1", spec, 1)));
        assert_eq!(s.apply(&create), CommandResult::Done);
        let (decisions, _) = plan(&s, 10).unwrap();
        assert_eq!(decisions.len(), 4);
        assert_eq!(
            s.apply(&decisions_command(decisions, 10)),
            CommandResult::Done
        );
        assert_eq!(s.services.tasks.len(), 4);
        // Both nodes got two tasks.
        for n in ["a", "bb"] {
            let on = s
                .services
                .tasks
                .values()
                .filter(|t| t.node_id.as_ref().is_some_and(|x| x.as_str() == n))
                .count();
            assert_eq!(on, 2);
        }
        // Workers report running: nothing left to do.
        for n in ["a", "bb"] {
            let reports = s
                .services
                .tasks
                .values()
                .filter(|t| t.node_id.as_ref().is_some_and(|x| x.as_str() == n))
                .map(|t| TaskReport {
                    task_id: t.id.0.clone(),
                    state: shoal_scheduler::TaskState::Running,
                    exit_code: None,
                    error: None,
                    health: Default::default(),
                    at_ms: 11,
                })
                .collect();
            s.apply(&Command::Services(ServiceCommand::TaskReports {
                node_id: n.into(),
                reports,
                at: 11,
            }));
        }
        let (decisions, wakeup) = plan(&s, 12).unwrap();
        assert!(decisions.is_empty());
        assert!(wakeup.is_none());
        // Refused service commands surface as Refused.
        assert!(matches!(s.apply(&create), CommandResult::Refused(_)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_loop_places_tasks_on_a_single_manager_and_stops_on_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let raft_id = 7;
        let manager = Manager::open(&dir.path().join("raft.redb"), raft_id, "c", 1.0)
            .await
            .unwrap();
        manager.initialize().await.unwrap();
        manager
            .wait_for_leader(Duration::from_secs(5))
            .await
            .unwrap();
        let mut n = node("a");
        n.raft_id = raft_id;
        manager
            .write(Command::InitCluster {
                cluster: ClusterRecord {
                    id: "c".into(),
                    created_at: 1,
                    ca_cert_der: vec![],
                    ca_key_der: vec![],
                    worker_token_generation: 0,
                    manager_token_generation: 0,
                    task_history_limit: 5,
                },
                node: n,
            })
            .await
            .unwrap();
        let mut spec = ServiceSpec::new("web", "img");
        spec.mode = crate::manager::services::ServiceMode::Replicated { replicas: 3 };
        manager
            .write(Command::Services(ServiceCommand::create(
                ServiceRecord::new("s1", spec, 1),
            )))
            .await
            .unwrap();
        let manager = Arc::new(manager);
        let (tx, rx) = watch::channel(false);
        let config = OrchestratorConfig {
            grace: Duration::from_millis(100),
            ..OrchestratorConfig::default()
        };
        let task = tokio::spawn(run(manager.clone(), config, rx));
        let deadline = Instant::now() + Duration::from_secs(10);
        while manager.read_local(|s| s.services.tasks.len()) < 3 {
            assert!(Instant::now() < deadline, "tasks were not placed");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Nothing more to decide: the loop stays quiet.
        let applied = manager.raft().metrics().borrow().last_applied;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(manager.raft().metrics().borrow().last_applied, applied);
        assert!(manager.read_local(|s| {
            s.services
                .tasks
                .values()
                .all(|t| t.node_id.as_ref().is_some_and(|n| n.as_str() == "a"))
        }));
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the loop stops on shutdown")
            .unwrap();
        manager.shutdown().await;
    }

    #[test]
    fn history_limit_comes_from_the_cluster_record() {
        let mut s = ClusterState::default();
        assert_eq!(reconcile_config(&s).history_limit, 5);
        s.cluster = Some(ClusterRecord {
            id: "c".into(),
            created_at: 1,
            ca_cert_der: vec![],
            ca_key_der: vec![],
            worker_token_generation: 0,
            manager_token_generation: 0,
            task_history_limit: 0,
        });
        assert_eq!(reconcile_config(&s).history_limit, 1);
    }
}
