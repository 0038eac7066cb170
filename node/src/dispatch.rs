//! The dispatcher (leader side) and the worker's session to it (DESIGN §5).
//!
//! Each node's worker keeps one long-lived bi-stream to the leader, found through any
//! manager (its own Raft when it is a manager, the gossip leader hint otherwise). The
//! leader sends the node's full assignment set, then changes as the state machine
//! moves; the worker sends batched task reports, which the leader commits through
//! Raft. When the leader changes or the connection breaks, the worker reconnects and
//! the new leader starts again with a full set. With no leader reachable the worker
//! simply keeps running what it has.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::{debug, info};

use crate::daemon::Node;
use crate::manager::network::resolve_in;
use crate::manager::services::{self, ServiceCommand};
use crate::manager::state::Command;
use crate::net::{self, NetError};
use crate::pki::NodeId;
use crate::session::{self, AssignmentSet, SessionHello, TaskReport, ToLeader, ToWorker};
use crate::util::now_ms;
use crate::worker::WorkerHandle;

/// Stream tag of a worker session.
pub const TAG_DISPATCH: u8 = 8;
/// Largest frame of a session (a full assignment set of a busy node).
pub const MAX_SESSION_FRAME: usize = 16 << 20;

/// Longest task error kept from a worker's report, in characters.
pub const MAX_REPORT_ERROR: usize = 1024;

/// A worker's report as the manager records it (same words for state and health); the error
/// text is the worker's and is cleaned and bounded here.
fn to_service_report(r: TaskReport) -> services::TaskReport {
    services::TaskReport {
        task_id: r.task_id,
        state: r.state,
        exit_code: r.exit_code,
        // From the worker: stripped and bounded before it is committed and shown.
        error: r
            .error
            .map(|e| crate::text::clean_text(&e, MAX_REPORT_ERROR)),
        health: r.health,
        at_ms: r.at_ms,
    }
}

/// What to send a worker whose last sent assignments were `sent` (`None`: nothing yet) now
/// that its assignments are `current`: the full set first, then only what changed (tasks
/// added or changed, ids no longer assigned), or nothing when nothing changed.
fn assignment_change(
    sent: Option<&BTreeMap<String, session::Assignment>>,
    current: &BTreeMap<String, session::Assignment>,
) -> Option<AssignmentSet> {
    let Some(prev) = sent else {
        return Some(AssignmentSet {
            full: true,
            tasks: current.values().cloned().collect(),
            removed: vec![],
        });
    };
    let tasks: Vec<_> = current
        .iter()
        .filter(|(id, a)| prev.get(*id) != Some(*a))
        .map(|(_, a)| a.clone())
        .collect();
    let removed: Vec<_> = prev
        .keys()
        .filter(|id| !current.contains_key(*id))
        .cloned()
        .collect();
    (!tasks.is_empty() || !removed.is_empty()).then_some(AssignmentSet {
        full: false,
        tasks,
        removed,
    })
}

/// Records what a worker reported it offers, when it differs from the state.
async fn record_facilities(
    node: &Node,
    node_id: &str,
    facilities: crate::manager::state::NodeFacilities,
) {
    let Some(manager) = node.manager_opt().await else {
        return;
    };
    if manager.read_local(|s| s.facilities.get(node_id) == Some(&facilities)) {
        return;
    }
    let cmd = Command::SetNodeFacilities {
        id: node_id.to_owned(),
        facilities,
    };
    if let Err(e) = node.propose(cmd).await {
        debug!(node = %node_id, "cannot record node facilities: {e}");
    }
}

/// The leader's side of one worker session, until the worker goes or this node stops
/// leading.
///
/// The worker is the owner of `peer_key` (its certificate); `hello.node_id` is not
/// trusted. `cert_not_after` is when the certificate it connected with expires: the leader
/// sends a renewed one when a third of the lifetime is left.
pub async fn serve_session(
    node: Arc<Node>,
    peer_key: [u8; 32],
    cert_not_after: Option<i64>,
    hello: SessionHello,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), NetError> {
    let Some(manager) = node.manager_opt().await else {
        let _ = send.reset(crate::trust::REFUSED.into());
        return Ok(());
    };
    let node_id = NodeId::from_public_key(&peer_key).to_string();
    let known = manager.read_local(|s| s.nodes.contains_key(&node_id));
    if !manager.is_leader() || !known {
        let _ = send.reset(crate::trust::REFUSED.into());
        return Ok(());
    }
    let _ = &hello.node_id;
    debug!(node = %node_id, "worker session opened");
    let _open = crate::metrics::global().session_opened();
    // Capacity and drivers are reported on every session: record them when they changed.
    let changed = manager.read_local(|s| {
        s.nodes.get(&node_id).is_some_and(|n| {
            n.memory_bytes != hello.memory_bytes
                || n.cpus != hello.cpus
                || n.drivers != hello.drivers
        })
    });
    if changed {
        let cmd = Command::SetNodeResources {
            id: node_id.clone(),
            memory_bytes: hello.memory_bytes,
            cpus: hello.cpus,
            drivers: hello.drivers.clone(),
            at: now_ms(),
        };
        if let Err(e) = node.propose(cmd).await {
            debug!(node = %node_id, "cannot record node resources: {e}");
        }
    }
    // Reports arrive on their own task: a frame read must not be cut by the select. The
    // ports the node cannot publish are soft state, kept while the session lasts.
    let (reports_tx, mut reports_rx) = mpsc::channel::<Vec<TaskReport>>(64);
    {
        let node = node.clone();
        let node_id = node_id.clone();
        tokio::spawn(async move {
            while let Ok((_, msg)) = net::read_frame::<ToLeader>(&mut recv, MAX_SESSION_FRAME).await
            {
                match msg {
                    ToLeader::Reports(r) => {
                        if reports_tx.send(r).await.is_err() {
                            break;
                        }
                    }
                    ToLeader::PublishProblems(problems) => {
                        node.record_publish_problems(&node_id, problems);
                    }
                    ToLeader::Facilities(facilities) => {
                        record_facilities(&node, &node_id, facilities).await;
                    }
                }
            }
            node.record_publish_problems(&node_id, Vec::new());
        });
    }
    let mut sent_endpoints: Option<crate::mesh::EndpointTable> = None;
    let mut sent_discovery: Option<crate::mesh::DiscoveryTable> = None;
    let mut metrics = manager.metrics();
    let mut sent: Option<BTreeMap<String, session::Assignment>> = None;
    let mut sent_trust = None;
    let mut sent_secrets: Option<BTreeMap<String, Vec<services::SecretRef>>> = None;
    let mut renewed = false;
    loop {
        if !manager.is_leader() {
            let _ = send.finish();
            return Ok(());
        }
        let trust = manager.read_local(crate::daemon::trust_from_state);
        if trust.removed.contains(&peer_key) {
            let _ = send.reset(crate::trust::REFUSED.into());
            return Ok(());
        }
        if sent_trust.as_ref() != Some(&trust) {
            let msg = ToWorker::Trust {
                managers: trust.managers.iter().copied().collect(),
                removed: trust.removed.iter().copied().collect(),
            };
            net::write_frame(&mut send, TAG_DISPATCH, &msg).await?;
            sent_trust = Some(trust);
        }
        if !renewed && cert_not_after.is_some_and(|t| node.renewal_due(t)) {
            renewed = true;
            match node.issue_cert_for(&manager, &peer_key) {
                Ok(cert) => {
                    net::write_frame(&mut send, TAG_DISPATCH, &ToWorker::Cert(cert)).await?;
                    info!(node = %node_id, "sent a renewed certificate");
                }
                Err(e) => debug!(node = %node_id, "cannot renew the certificate: {e}"),
            }
        }
        let current: BTreeMap<String, session::Assignment> = manager
            .read_local(|s| services::assignments_for(&s.services, &node_id))
            .into_iter()
            .map(|a| (a.task_id.clone(), a))
            .collect();
        // The endpoint table goes first: a task that leaves rotation does so on every node
        // no later than its own node hears it is to stop.
        let endpoints = manager.read_local(|s| services::endpoint_table(&s.services, &s.nodes));
        if sent_endpoints.as_ref() != Some(&endpoints) {
            net::write_frame(
                &mut send,
                TAG_DISPATCH,
                &ToWorker::Endpoints(endpoints.clone()),
            )
            .await?;
            sent_endpoints = Some(endpoints);
        }
        let discovery = manager.read_local(|s| services::discovery_table(&s.services, &s.nodes));
        if sent_discovery.as_ref() != Some(&discovery) {
            net::write_frame(
                &mut send,
                TAG_DISPATCH,
                &ToWorker::Discovery(discovery.clone()),
            )
            .await?;
            sent_discovery = Some(discovery);
        }
        // Secrets go before the assignments that need them, and only to this node's tasks.
        let wanted = manager.read_local(|s| services::secrets_wanted(&s.services, &node_id));
        if sent_secrets.as_ref() != Some(&wanted) {
            let files = if wanted.is_empty() {
                Some(BTreeMap::new())
            } else {
                match node.secrets_key(&manager, false).await {
                    Ok(key) => Some(manager.read_local(|s| {
                        crate::daemon::secrets::secret_files(&s.services, &wanted, &key)
                    })),
                    Err(e) => {
                        tracing::warn!(node = %node_id, "cannot send secrets: {e}");
                        None
                    }
                }
            };
            if let Some(files) = files {
                if !(files.is_empty() && sent_secrets.is_none()) {
                    let msg = ToWorker::Secrets(
                        files
                            .into_iter()
                            .map(|(task_id, files)| session::TaskSecrets { task_id, files })
                            .collect(),
                    );
                    net::write_frame(&mut send, TAG_DISPATCH, &msg).await?;
                }
                sent_secrets = Some(wanted);
            }
        }
        if let Some(set) = assignment_change(sent.as_ref(), &current) {
            net::write_frame(&mut send, TAG_DISPATCH, &ToWorker::AssignmentsV2(set)).await?;
            sent = Some(current);
        }
        tokio::select! {
            changed = metrics.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            batch = reports_rx.recv() => {
                let Some(batch) = batch else {
                    debug!(node = %node_id, "worker session closed");
                    return Ok(());
                };
                let reports: Vec<_> = batch.into_iter().map(to_service_report).collect();
                if !reports.is_empty() {
                    let cmd = Command::Services(ServiceCommand::TaskReports {
                        node_id: node_id.clone(),
                        reports,
                        at: now_ms(),
                    });
                    if let Err(e) = node.propose(cmd).await {
                        debug!(node = %node_id, "cannot record task reports: {e}");
                    }
                }
            }
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

/// How often a worker session checks that its peer is still the leader.
const LEADER_CHECK: Duration = Duration::from_millis(250);

/// Where the leader is, as this node knows it (on a worker: from the leader hints of the
/// managers it knows, never from another worker's claim).
async fn find_leader(node: &Node) -> Option<(NodeId, SocketAddr)> {
    if let Some(manager) = node.manager_opt().await {
        let leader = manager.leader()?;
        return manager.read_local(|s| resolve_in(s, leader));
    }
    let key = node.leader_key().await?;
    if key == node.public_key() {
        return None;
    }
    let view = node.gossip()?.view();
    let (ident, _) = view.members.get(&key)?;
    Some((NodeId::from_public_key(&key), ident.addr))
}

/// The worker's side: keeps a session to the leader for as long as `worker` runs.
pub async fn run_worker_session(
    node: Arc<Node>,
    worker: WorkerHandle,
    mut reports: mpsc::Receiver<Vec<TaskReport>>,
) {
    let mut announced = None;
    loop {
        let Some((leader, addr)) = find_leader(&node).await else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        match session(&node, &worker, &mut reports, leader, addr).await {
            Ok(()) => debug!(%leader, "session ended"),
            Err(e) => debug!(%leader, "session failed: {e}"),
        }
        if worker.snapshot().await.is_err() {
            return; // the worker stopped
        }
        if announced != Some(leader) {
            announced = Some(leader);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn session(
    node: &Node,
    worker: &WorkerHandle,
    reports: &mut mpsc::Receiver<Vec<TaskReport>>,
    leader: NodeId,
    addr: SocketAddr,
) -> Result<(), String> {
    let conn = node
        .pool()
        .get_or_dial(&leader, addr)
        .await
        .map_err(|e| e.to_string())?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let hello = SessionHello {
        node_id: node.node_id().to_string(),
        memory_bytes: crate::daemon::memory_bytes(),
        cpus: crate::daemon::cpus(),
        drivers: node.drivers().to_vec(),
    };
    net::write_frame(&mut send, TAG_DISPATCH, &hello)
        .await
        .map_err(|e| e.to_string())?;
    let facilities = crate::daemon::facilities(node.allow_privileged);
    if facilities != crate::manager::state::NodeFacilities::default() {
        net::write_frame(&mut send, TAG_DISPATCH, &ToLeader::Facilities(facilities))
            .await
            .map_err(|e| e.to_string())?;
    }
    // The new leader learns everything this worker knows.
    let current = worker.current_reports().await.map_err(|e| e.to_string())?;
    if !current.is_empty() {
        net::write_frame(&mut send, TAG_DISPATCH, &ToLeader::Reports(current))
            .await
            .map_err(|e| e.to_string())?;
    }
    let (sets_tx, mut sets_rx) = mpsc::channel::<ToWorker>(16);
    let reader = tokio::spawn(async move {
        while let Ok((_, msg)) = net::read_frame::<ToWorker>(&mut recv, MAX_SESSION_FRAME).await {
            if sets_tx.send(msg).await.is_err() {
                return;
            }
        }
    });
    info!(%leader, "worker session to the leader established");
    let mut problems = node.mesh.problems();
    let initial = problems.borrow_and_update().clone();
    if !initial.is_empty() {
        net::write_frame(&mut send, TAG_DISPATCH, &ToLeader::PublishProblems(initial))
            .await
            .map_err(|e| e.to_string())?;
    }
    // A leader killed with `kill -9` never closes its side: without this check the session
    // would hang on until QUIC's idle timeout, the endpoint table and the assignments frozen
    // meanwhile (the chaos run saw stale mesh tables 10 s after a failover).
    let mut leader_check = tokio::time::interval(LEADER_CHECK);
    leader_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        tokio::select! {
            _ = leader_check.tick() => {
                if let Some((now, _)) = find_leader(node).await
                    && now != leader
                {
                    info!(old = %leader, new = %now, "the leader changed: moving the worker session");
                    break Ok(());
                }
            }
            changed = problems.changed() => {
                if changed.is_err() {
                    break Ok(());
                }
                let now = problems.borrow_and_update().clone();
                if let Err(e) = net::write_frame(&mut send, TAG_DISPATCH, &ToLeader::PublishProblems(now)).await {
                    break Err(e.to_string());
                }
            }
            msg = sets_rx.recv() => match msg {
                Some(ToWorker::AssignmentsV2(set)) => {
                    if let Err(e) = worker.apply(set).await {
                        break Err(e.to_string());
                    }
                }
                Some(ToWorker::Assignments(old)) => {
                    let Some(set) = old.into_today() else {
                        break Err("the leader sent assignments this worker cannot read".into());
                    };
                    if let Err(e) = worker.apply(set).await {
                        break Err(e.to_string());
                    }
                }
                Some(ToWorker::Trust { managers, removed }) => {
                    node.update_trust(crate::trust::TrustView {
                        managers: managers.into_iter().collect(),
                        removed: removed.into_iter().collect(),
                    })
                    .await;
                }
                Some(ToWorker::Cert(cert)) => {
                    if let Err(e) = node.install_cert(cert).await {
                        tracing::warn!("{e}");
                    }
                }
                Some(ToWorker::Endpoints(table)) => node.mesh.set_table(table),
                Some(ToWorker::Discovery(table)) => node.mesh.set_discovery(table),
                Some(ToWorker::Secrets(tasks)) => {
                    crate::metrics::global()
                        .secrets_received(tasks.iter().map(|t| t.files.len()).sum());
                    node.worker_secrets
                        .replace(tasks.into_iter().map(|t| (t.task_id, t.files)).collect());
                }
                None => break Ok(()),
            },
            batch = reports.recv() => match batch {
                Some(batch) => {
                    if let Err(e) = net::write_frame(&mut send, TAG_DISPATCH, &ToLeader::Reports(batch)).await {
                        break Err(e.to_string());
                    }
                }
                None => break Ok(()),
            },
        }
    };
    reader.abort();
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_error_from_a_worker_is_bounded_and_stripped() {
        let report = TaskReport {
            task_id: "t1".into(),
            state: session::TaskState::Failed,
            exit_code: Some(1),
            error: Some(format!("bad\x1b[2J\r\nthing{}", "e".repeat(5000))),
            health: session::TaskHealth::None,
            at_ms: 1,
        };
        let r = to_service_report(report);
        let error = r.error.unwrap();
        assert!(error.starts_with("bad[2Jthingeee"), "{error}");
        assert_eq!(error.chars().count(), MAX_REPORT_ERROR);
        assert!(!error.chars().any(char::is_control));
    }

    fn assignment(id: &str, desired: session::DesiredState) -> (String, session::Assignment) {
        let a = session::Assignment {
            task_id: id.into(),
            service_id: "s1".into(),
            service_name: "web".into(),
            slot: 1,
            driver: "process".into(),
            spec: shoal_runtime::TaskSpec::new(id, "s1", "web", 1, "/bin/sleep"),
            desired,
        };
        (id.to_owned(), a)
    }

    #[test]
    fn a_session_gets_the_full_set_first_then_only_changes() {
        use session::DesiredState::{Running, Shutdown};
        let empty = BTreeMap::new();
        let first = assignment_change(None, &empty).unwrap();
        assert!(first.full && first.tasks.is_empty() && first.removed.is_empty());

        let sent: BTreeMap<_, _> = [assignment("a", Running), assignment("b", Running)].into();
        // Nothing changed: nothing is sent.
        assert_eq!(assignment_change(Some(&sent), &sent), None);
        // b is to stop, c is new, a is gone.
        let now: BTreeMap<_, _> = [assignment("b", Shutdown), assignment("c", Running)].into();
        let change = assignment_change(Some(&sent), &now).unwrap();
        assert!(!change.full);
        let ids: Vec<_> = change
            .tasks
            .iter()
            .map(|t| (t.task_id.as_str(), t.desired))
            .collect();
        assert_eq!(ids, [("b", Shutdown), ("c", Running)]);
        assert_eq!(change.removed, ["a"]);
    }
}
