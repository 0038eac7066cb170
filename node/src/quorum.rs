//! Keeping Raft's voters equal to the managers of the node table.
//!
//! `node promote`/`demote` and joining with a manager token only change a node's role
//! in the table. The leader's loop here makes Raft follow: a ready manager that is not
//! a voter is asked to start Raft, added as a learner (caught up), then made a voter;
//! a voter whose node is no longer a manager is removed. A demoted node notices its
//! new role in its own copy of the state and stops its Raft.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::{ChangeMembers, EmptyNode};
use tracing::{info, warn};

use crate::daemon::Node;
use crate::forward::{BecomeManager, BecomeManagerResult, MAX_FORWARD_FRAME, TAG_BECOME_MANAGER};
use crate::manager::Manager;
use crate::manager::network::resolve_in;
use crate::manager::state::{NodeStatus, Role};

const TICK: Duration = Duration::from_millis(500);
/// How long a new learner may take to catch up before the leader tries again later.
const CATCH_UP: Duration = Duration::from_secs(30);

/// The leader's voter reconciler; runs for the daemon's lifetime.
pub async fn run(node: Arc<Node>) {
    let mut demoted_since: Option<Instant> = None;
    loop {
        tokio::time::sleep(TICK).await;
        let Some(manager) = node.manager_opt().await else {
            demoted_since = None;
            continue;
        };
        if check_demotion(&node, &manager, &mut demoted_since).await {
            continue;
        }
        if !manager.is_leader() {
            continue;
        }
        if let Err(e) = step(&node, &manager).await {
            warn!("cannot align raft voters with managers: {e}");
        }
    }
}

async fn step(node: &Node, manager: &Manager) -> Result<(), String> {
    let voters = manager.voters();
    let (cluster_id, managers, workers): (String, Vec<(u64, bool)>, BTreeSet<u64>) = manager
        .read_local(|s| {
            let managers = s
                .nodes
                .values()
                .filter(|n| n.role == Role::Manager)
                .map(|n| (n.raft_id, n.status == NodeStatus::Ready))
                .collect();
            let known: BTreeSet<u64> = s
                .nodes
                .values()
                .filter(|n| n.role == Role::Manager)
                .map(|n| n.raft_id)
                .collect();
            let not_managers = voters
                .iter()
                .copied()
                .filter(|v| !known.contains(v))
                .collect();
            (
                s.cluster.as_ref().map(|c| c.id.clone()).unwrap_or_default(),
                managers,
                not_managers,
            )
        });
    // Remove voters first: never grow a configuration that has a voter to drop.
    if let Some(&gone) = workers.iter().next() {
        if voters.len() <= 1 {
            return Ok(());
        }
        info!(raft_id = gone, "removing a demoted manager from the voters");
        let ids: BTreeSet<u64> = [gone].into();
        manager
            .raft()
            .change_membership(ChangeMembers::RemoveVoters(ids), false)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    for (raft_id, ready) in managers {
        if voters.contains(&raft_id) || !ready {
            continue;
        }
        let target = manager
            .read_local(|s| resolve_in(s, raft_id))
            .ok_or("no address")?;
        let conn = node
            .pool()
            .get_or_dial(&target.0, target.1)
            .await
            .map_err(|e| e.to_string())?;
        let answer: BecomeManagerResult = crate::net::request(
            &conn,
            TAG_BECOME_MANAGER,
            &BecomeManager {
                cluster_id: cluster_id.clone(),
            },
            MAX_FORWARD_FRAME,
            Duration::from_secs(10),
        )
        .await
        .map_err(|e| e.to_string())?;
        if let BecomeManagerResult::Err(e) = answer {
            return Err(format!("{} cannot become a manager: {e}", target.0));
        }
        info!(raft_id, node = %target.0, "adding a manager as a learner");
        let started = Instant::now();
        tokio::time::timeout(
            CATCH_UP,
            manager.raft().add_learner(raft_id, EmptyNode {}, true),
        )
        .await
        .map_err(|_| "the new manager did not catch up in time".to_string())?
        .map_err(|e| e.to_string())?;
        let ids: BTreeSet<u64> = [raft_id].into();
        manager
            .raft()
            .change_membership(ChangeMembers::AddVoterIds(ids), false)
            .await
            .map_err(|e| e.to_string())?;
        info!(
            raft_id,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "manager is now a voter"
        );
        return Ok(());
    }
    Ok(())
}

/// On a manager: when this node's own record says worker (it was demoted), stop Raft
/// once the leader removed it from the voters, or after a bound if that news never
/// reaches it. Returns whether it stepped down.
async fn check_demotion(node: &Node, manager: &Manager, since: &mut Option<Instant>) -> bool {
    let own = manager.raft_id();
    let role = manager.read_local(|s| s.node_by_raft_id(own).map(|n| n.role));
    if role != Some(Role::Worker) {
        *since = None;
        return false;
    }
    let started = *since.get_or_insert_with(Instant::now);
    if !manager.voters().contains(&own) || started.elapsed() > Duration::from_secs(10) {
        node.step_down_to_worker().await;
        *since = None;
        return true;
    }
    false
}
