//! Issue 14: tests that attack. A rogue peer (tests/src/rogue.rs) holds a real worker's
//! key and certificate, a removed node's, none at all, or one from another cluster's CA,
//! and sends well-formed requests under every stream tag. Each must be refused (no
//! success answer) and leave the cluster unchanged: node table, roles, tokens, services
//! and tasks, and each daemon's own role. Afterwards the cluster still takes a write.
//!
//! Every failure message lists the attacks that got through.
//!
//! Address blocks: 127.0.40.x to 127.0.49.x. No Docker: services use the process driver.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{CommittedLeaderId, EntryPayload, LogId, SnapshotMeta, StoredMembership, Vote};
use serde_json::Value;
use shoal::dispatch::TAG_DISPATCH;
use shoal::forward::{
    BecomeManager, BecomeManagerResult, ForwardedApi, ForwardedReply, ForwardedWrite,
    ForwardedWriteResult, TAG_BECOME_MANAGER, TAG_FORWARD_API, TAG_FORWARD_WRITE,
};
use shoal::join::{JoinResponse, TAG_JOIN};
use shoal::manager::rpc::{TAG_RAFT_APPEND, TAG_RAFT_SNAPSHOT, TAG_RAFT_VOTE};
use shoal::manager::services::{ServiceCommand, ServiceSpec};
use shoal::manager::state::{
    Availability, ClusterRecord, ClusterState, ClusterStateV1, ClusterStateV2, ClusterStateV3,
    Command, CommandResult, NodeRecord, NodeStatus, Role,
};
use shoal::manager::types::{Entry, TypeConfig};
use shoal::pki::NodeKey;
use shoal::session::{SessionHello, ToLeader, ToWorker};
use shoal_tests::rogue::{Attacks, Credentials, Outcome, Rogue, TaskReaper, Verdict, join_request};
use shoal_tests::{Daemon, Poll, join_token, poll_until, start_cluster, tasks};

/// A test cluster with a global process service `base` (a task on every node). The
/// reaper comes first so it is dropped (and stops the tasks) before the daemons.
struct Cluster {
    _reaper: TaskReaper,
    ms: Vec<Daemon>,
    ws: Vec<Daemon>,
}

impl Cluster {
    fn start(prefix: &str, block: u8, managers: usize, workers: usize) -> Result<Cluster> {
        let (ms, ws) = start_cluster(prefix, block, managers, workers)?;
        let c = Cluster {
            _reaper: TaskReaper::new(ms.iter().chain(ws.iter())),
            ms,
            ws,
        };
        let total = managers + workers;
        let m = &c.ms[0];
        poll_until("every node ready", Duration::from_secs(30), || {
            let nodes = m.json(&["node", "ls"])?;
            let nodes = nodes.as_array().cloned().unwrap_or_default();
            let ready = nodes.iter().filter(|n| n["status"] == "ready").count();
            let managers_up = nodes
                .iter()
                .filter(|n| matches!(n["manager_status"].as_str(), Some("leader" | "reachable")))
                .count();
            Ok((ready == total && managers_up == managers).then_some(()))
        })?;
        m.ok(&[
            "service",
            "create",
            "--name",
            "base",
            "--mode",
            "global",
            "--driver",
            "process",
            "/bin/sleep",
            "3613",
        ])?;
        poll_until(
            "a running base task on every node",
            Duration::from_secs(30),
            || {
                let running: BTreeSet<String> = tasks(m, "base")?
                    .iter()
                    .filter(|t| t["state"] == "running")
                    .filter_map(|t| t["node_id"].as_str().map(str::to_string))
                    .collect();
                Ok((running.len() == total).then_some(()))
            },
        )?;
        Ok(c)
    }

    fn all(&self) -> Vec<&Daemon> {
        self.ms.iter().chain(self.ws.iter()).collect()
    }

    /// The manager that leads, as the first manager sees it.
    fn leader(&self) -> Result<&Daemon> {
        let leader = self.ms[0].json(&["info"])?["leader"].clone();
        for m in &self.ms {
            if m.json(&["info"])?["node_id"] == leader {
                return Ok(m);
            }
        }
        bail!("no manager is the leader ({leader})")
    }

    /// A manager that does not lead.
    fn follower(&self) -> Result<&Daemon> {
        let leader = self.leader()?.name.clone();
        self.ms
            .iter()
            .find(|m| m.name != leader)
            .context("no follower manager")
    }
}

fn node_id(d: &Daemon) -> Result<String> {
    d.json(&["info"])?["node_id"]
        .as_str()
        .map(str::to_string)
        .context("info has no node_id")
}

fn cluster_id(d: &Daemon) -> Result<String> {
    d.json(&["info"])?["cluster_id"]
        .as_str()
        .map(str::to_string)
        .context("info has no cluster_id")
}

/// The running `base` task of node `id`.
fn base_task_of(m: &Daemon, id: &str) -> Result<String> {
    tasks(m, "base")?
        .iter()
        .find(|t| t["node_id"] == id && t["state"] == "running")
        .and_then(|t| t["id"].as_str().map(str::to_string))
        .with_context(|| format!("no running base task on node {id}"))
}

/// The `node ls` row of node `id`.
fn node_row(m: &Daemon, id: &str) -> Result<Value> {
    m.json(&["node", "ls"])?
        .as_array()
        .into_iter()
        .flatten()
        .find(|n| n["id"] == id)
        .cloned()
        .with_context(|| format!("node {id} is not in `node ls`"))
}

/// The ID of service `name`, from `service ls`.
fn service_id(m: &Daemon, name: &str) -> Result<String> {
    m.json(&["service", "ls"])?
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["name"] == name)
        .and_then(|s| s["id"].as_str().map(str::to_string))
        .with_context(|| format!("service {name} is not in `service ls`"))
}

fn public_key_of(d: &Daemon) -> Result<[u8; 32]> {
    Ok(Credentials::from_state_dir(&d.state_dir)?.key.public_key())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn hex_key(s: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if s.len() != 64 {
        return None;
    }
    for (i, b) in out.iter_mut().enumerate() {
        *b = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A rogue address in the test's block (advertised in join requests).
fn rogue_addr(block: u8) -> String {
    format!("127.0.{block}.250:4747")
}

// --- Judging answers, per tag ----------------------------------------------------------

type RaftAnswer<T> = Result<T, RaftError<u64>>;

fn judge_join(o: &Outcome) -> Verdict {
    o.judge_with::<JoinResponse>(
        |r| matches!(r, JoinResponse::Accepted(_)),
        |r| match r {
            JoinResponse::Accepted(a) => format!(
                "Accepted: admitted as a {} and given a certificate for the presented key",
                a.role.as_str()
            ),
            JoinResponse::Refused(reason) => format!("Refused({reason:?})"),
        },
    )
}

fn judge_raft<T: serde::de::DeserializeOwned + std::fmt::Debug>(o: &Outcome) -> Verdict {
    // Any Ok answer means Raft served the RPC (even a "higher vote" or a conflict).
    o.judge::<RaftAnswer<T>>(Result::is_ok)
}

fn judge_snapshot(o: &Outcome) -> Verdict {
    o.judge::<Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>>(
        Result::is_ok,
    )
}

fn judge_api(o: &Outcome) -> Verdict {
    o.judge_with::<ForwardedReply>(
        |r| {
            matches!(
                r,
                ForwardedReply::Full { status: 200, .. } | ForwardedReply::Item(_)
            )
        },
        |r| match r {
            ForwardedReply::Full { status, body } => {
                format!("HTTP {status}: {}", String::from_utf8_lossy(body))
            }
            ForwardedReply::Item(item) => format!("a streamed item: {item}"),
            ForwardedReply::End => "an empty stream".into(),
        },
    )
}

fn judge_write(o: &Outcome) -> Verdict {
    o.judge::<ForwardedWriteResult>(
        |r| matches!(r, ForwardedWriteResult::Ok(res) if !matches!(res, CommandResult::Refused(_))),
    )
}

fn judge_become(o: &Outcome) -> Verdict {
    o.judge::<BecomeManagerResult>(|r| matches!(r, BecomeManagerResult::Ok))
}

// --- Well-formed messages ----------------------------------------------------------------

fn vote_request(raft_id: u64, term: u64) -> VoteRequest<u64> {
    VoteRequest {
        vote: Vote::new(term, raft_id),
        last_log_id: None,
    }
}

fn heartbeat(raft_id: u64) -> AppendEntriesRequest<TypeConfig> {
    AppendEntriesRequest {
        vote: Vote::new_committed(0, raft_id),
        prev_log_id: None,
        entries: Vec::new(),
        leader_commit: None,
    }
}

fn snapshot_chunk(raft_id: u64) -> InstallSnapshotRequest<TypeConfig> {
    InstallSnapshotRequest {
        vote: Vote::new_committed(0, raft_id),
        meta: SnapshotMeta {
            last_log_id: None,
            last_membership: StoredMembership::default(),
            snapshot_id: "rogue".into(),
        },
        offset: 0,
        data: Vec::new(),
        done: false,
    }
}

fn api(method: &str, segments: &[&str], query: &[(&str, &str)], body: Value) -> ForwardedApi {
    ForwardedApi {
        method: method.into(),
        segments: segments.iter().map(|s| s.to_string()).collect(),
        query: query
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: if body.is_null() {
            Vec::new()
        } else {
            body.to_string().into_bytes()
        },
    }
}

fn hello(node_id: &str, memory_bytes: u64, cpus: u32, drivers: Vec<String>) -> SessionHello {
    SessionHello {
        node_id: node_id.into(),
        memory_bytes,
        cpus,
        drivers,
    }
}

fn report(task_id: &str, state: shoal::worker::TaskState, exit: i64) -> shoal::worker::TaskReport {
    shoal::worker::TaskReport {
        task_id: task_id.into(),
        state,
        exit_code: Some(exit),
        error: Some("rogue report".into()),
        health: shoal::worker::TaskHealth::None,
        at_ms: now_ms(),
    }
}

/// A session hello for node `id` (claiming `claimed_id`) with the capacity and drivers
/// the node table holds for it, so that recording them changes nothing.
fn hello_as(m: &Daemon, id: &str, claimed_id: &str) -> Result<SessionHello> {
    let row = node_row(m, id)?;
    let memory_bytes = row["memory_bytes"]
        .as_u64()
        .context("node ls shows no memory_bytes")?;
    let cpus = row["cpus"]
        .as_u64()
        .and_then(|c| u32::try_from(c).ok())
        .context("node ls shows no cpus")?;
    let drivers: Vec<String> = row["drivers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|d| d.as_str().map(str::to_string))
        .collect();
    if drivers.is_empty() {
        bail!("node ls shows no drivers for {id}: {row}");
    }
    Ok(hello(claimed_id, memory_bytes, cpus, drivers))
}

/// The control: the rogue holding a live worker's certificate can open that worker's own
/// session on the leader (it gets a frame). Without this, refusals would prove nothing
/// (a rogue that cannot connect at all is refused everything).
fn rogue_reaches_leader(rogue: &Rogue, leader: &Daemon, worker_id: &str) -> Result<()> {
    let o = rogue.try_tag(
        leader.addr,
        TAG_DISPATCH,
        &hello_as(leader, worker_id, worker_id)?,
    );
    match o.decode::<ToWorker>() {
        Some(_) => Ok(()),
        None => bail!(
            "control failed: {} cannot open its own worker session on the leader {} ({o:?}); the refusals would prove nothing",
            rogue.label,
            leader.name
        ),
    }
}

/// What a rogue needs to build one well-formed request of every tag.
struct EveryTag {
    /// Presented by JOIN (`None`: JOIN is not tried).
    join_key: Option<[u8; 32]>,
    worker_token: String,
    cluster_id: String,
    raft_id: u64,
    block: u8,
}

/// Sends one well-formed request of every tag to `target`; each must be refused and
/// change nothing. Returns `false` once the cluster no longer answers.
fn attack_every_tag(
    attacks: &mut Attacks<'_>,
    rogue: &Rogue,
    target: &Daemon,
    t: &EveryTag,
) -> Result<bool> {
    let addr: SocketAddr = target.addr;
    let who = format!("{} -> {}", rogue.label, target.name);
    let fresh = NodeKey::generate()?;
    let signer = rogue.key.clone().unwrap_or(fresh);
    if let Some(key) = t.join_key {
        let o = rogue.try_tag_with(addr, TAG_JOIN, |conn| {
            join_request(
                conn,
                &t.worker_token,
                key,
                &signer,
                "rogue",
                &rogue_addr(t.block),
            )
        });
        if !attacks.record(
            &format!("{who}: tag 1 JOIN with a worker token"),
            judge_join(&o),
        ) {
            return Ok(false);
        }
    }
    let o = rogue.try_tag(addr, TAG_RAFT_APPEND, &heartbeat(t.raft_id));
    if !attacks.record(
        &format!("{who}: tag 2 Raft AppendEntries"),
        judge_raft::<AppendEntriesResponse<u64>>(&o),
    ) {
        return Ok(false);
    }
    let o = rogue.try_tag(addr, TAG_RAFT_VOTE, &vote_request(t.raft_id, 0));
    if !attacks.record(
        &format!("{who}: tag 3 Raft Vote"),
        judge_raft::<VoteResponse<u64>>(&o),
    ) {
        return Ok(false);
    }
    let o = rogue.try_tag(addr, TAG_RAFT_SNAPSHOT, &snapshot_chunk(t.raft_id));
    if !attacks.record(
        &format!("{who}: tag 4 Raft InstallSnapshot"),
        judge_snapshot(&o),
    ) {
        return Ok(false);
    }
    let o = rogue.try_tag(
        addr,
        TAG_FORWARD_API,
        &api("POST", &["v1", "join-token", "manager"], &[], Value::Null),
    );
    if !attacks.record(
        &format!("{who}: tag 5 forwarded POST /v1/join-token/manager"),
        judge_api(&o),
    ) {
        return Ok(false);
    }
    let o = rogue.try_tag(
        addr,
        TAG_FORWARD_WRITE,
        &ForwardedWrite {
            command: Command::RotateToken { role: Role::Worker },
        },
    );
    if !attacks.record(
        &format!("{who}: tag 6 forwarded RotateToken"),
        judge_write(&o),
    ) {
        return Ok(false);
    }
    let o = rogue.try_tag(
        addr,
        TAG_BECOME_MANAGER,
        &BecomeManager {
            cluster_id: t.cluster_id.clone(),
        },
    );
    if !attacks.record(&format!("{who}: tag 7 become-manager"), judge_become(&o)) {
        return Ok(false);
    }
    let own_id = rogue
        .key
        .as_ref()
        .map_or_else(String::new, |k| k.node_id().to_string());
    let o = rogue.try_tag(
        addr,
        TAG_DISPATCH,
        &hello(&own_id, 1 << 30, 2, vec!["process".into()]),
    );
    if !attacks.record(
        &format!("{who}: tag 8 worker session"),
        o.judge::<ToWorker>(|_| true),
    ) {
        return Ok(false);
    }
    let o = rogue.try_tag(addr, shoal::trust::TAG_PING, &());
    if !attacks.record(&format!("{who}: tag 9 ping"), o.judge::<()>(|_| true)) {
        return Ok(false);
    }
    Ok(true)
}

// --- (a) a live worker's real key and certificate ------------------------------------------

/// Tags 2–4 from a worker's certificate: Raft RPCs are served only to Raft members. The
/// last attack is a real one: claim a higher term and append entries (make the worker a
/// manager, drain the leader) on a follower, with `prev_log_id` learnt from a vote probe.
#[test]
fn issue_14_worker_certificate_cannot_speak_raft() -> Result<()> {
    const TEST: &str = "issue_14_worker_certificate_cannot_speak_raft";
    let c = Cluster::start("t14r-", 41, 3, 1)?;
    let w1 = &c.ws[0];
    let creds = Credentials::from_state_dir(&w1.state_dir)?;
    let rogue = Rogue::with_credentials("w1's real key and certificate", &creds)?;
    let rid = creds.raft_id();
    let leader = c.leader()?;
    let follower = c.follower()?;
    let leader_id = node_id(leader)?;
    let w1_id = node_id(w1)?;
    rogue_reaches_leader(&rogue, leader, &w1_id)?;
    let mut attacks = Attacks::new(TEST, leader, c.all())?;

    for target in [leader, follower] {
        let who = format!("worker cert -> {}", target.name);
        let o = rogue.try_tag(target.addr, TAG_RAFT_VOTE, &vote_request(rid, 0));
        attacks.record(
            &format!("{who}: tag 3 Vote (term 0)"),
            judge_raft::<VoteResponse<u64>>(&o),
        );
        let o = rogue.try_tag(target.addr, TAG_RAFT_APPEND, &heartbeat(rid));
        attacks.record(
            &format!("{who}: tag 2 AppendEntries heartbeat (term 0)"),
            judge_raft::<AppendEntriesResponse<u64>>(&o),
        );
        let o = rogue.try_tag(target.addr, TAG_RAFT_SNAPSHOT, &snapshot_chunk(rid));
        attacks.record(
            &format!("{who}: tag 4 InstallSnapshot chunk (term 0)"),
            judge_snapshot(&o),
        );
    }

    // The real attack: a higher term, entries after the follower's last log ID.
    let probe = rogue
        .try_tag(follower.addr, TAG_RAFT_VOTE, &vote_request(rid, 0))
        .decode::<RaftAnswer<VoteResponse<u64>>>()
        .and_then(Result::ok);
    let (term, prev) = probe
        .map(|r| (r.vote.leader_id.term + 1, r.last_log_id))
        .unwrap_or((1_000, None));
    let leader_id_in_term = CommittedLeaderId::new(term, rid);
    let first = prev.map_or(1, |p| p.index + 1);
    let entries: Vec<Entry> = vec![
        Entry {
            log_id: LogId::new(leader_id_in_term, first),
            payload: EntryPayload::Normal(Command::SetRole {
                id: w1_id,
                role: Role::Manager,
                at: now_ms(),
            }),
        },
        Entry {
            log_id: LogId::new(leader_id_in_term, first + 1),
            payload: EntryPayload::Normal(Command::UpdateNode {
                id: leader_id,
                availability: Some(Availability::Drain),
                label_add: BTreeMap::from([("pwned".to_string(), "raft".to_string())]),
                label_rm: Vec::new(),
                at: now_ms(),
            }),
        },
    ];
    let inject = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(term, rid),
        prev_log_id: prev,
        entries,
        leader_commit: Some(LogId::new(leader_id_in_term, first + 1)),
    };
    if attacks.broken().is_none() {
        let o = rogue.try_tag(follower.addr, TAG_RAFT_APPEND, &inject);
        attacks.record(
            &format!(
                "worker cert -> {}: tag 2 AppendEntries as leader of term {term} (SetRole w1 manager, drain + label the leader)",
                follower.name
            ),
            judge_raft::<AppendEntriesResponse<u64>>(&o),
        );
    }
    attacks.finish("after-raft-attacks")
}

/// Tag 5 from a worker's certificate: forwarded API requests are served only to
/// managers. Reads, token theft, role changes, services, removal, rotation, and the
/// node-local `init --force-new-cluster` and `leave --force` (last: they break things).
#[test]
fn issue_14_worker_certificate_cannot_use_the_forwarded_api() -> Result<()> {
    const TEST: &str = "issue_14_worker_certificate_cannot_use_the_forwarded_api";
    let c = Cluster::start("t14a-", 42, 3, 2)?;
    let (w1, w2) = (&c.ws[0], &c.ws[1]);
    let creds = Credentials::from_state_dir(&w1.state_dir)?;
    let rogue = Rogue::with_credentials("w1's real key and certificate", &creds)?;
    let leader = c.leader()?;
    let follower = c.follower()?;
    let (w1_id, w2_id) = (node_id(w1)?, node_id(w2)?);
    let (leader_id, follower_id) = (node_id(leader)?, node_id(follower)?);
    let spec = ServiceSpec {
        name: "rogue-svc".into(),
        image: "/bin/sleep".into(),
        args: vec!["3616".into()],
        driver: "process".into(),
        ..ServiceSpec::default()
    };
    let attempts: Vec<(String, &Daemon, ForwardedApi)> = vec![
        (
            "GET /v1/nodes (read the node table)".into(),
            leader,
            api("GET", &["v1", "nodes"], &[], Value::Null),
        ),
        (
            "POST /v1/join-token/manager (steal the manager token)".into(),
            leader,
            api(
                "POST",
                &["v1", "join-token", "manager"],
                &[],
                serde_json::json!({}),
            ),
        ),
        (
            "POST /v1/nodes/<w1>/promote".into(),
            leader,
            api(
                "POST",
                &["v1", "nodes", &w1_id, "promote"],
                &[],
                Value::Null,
            ),
        ),
        (
            "POST /v1/nodes/<follower>/demote".into(),
            leader,
            api(
                "POST",
                &["v1", "nodes", &follower_id, "demote"],
                &[],
                Value::Null,
            ),
        ),
        (
            "POST /v1/nodes/<leader>/update (drain, label)".into(),
            leader,
            api(
                "POST",
                &["v1", "nodes", &leader_id, "update"],
                &[],
                serde_json::json!({"availability": "drain", "label_add": {"pwned": "api"}}),
            ),
        ),
        (
            "POST /v1/services (create a process service)".into(),
            leader,
            api(
                "POST",
                &["v1", "services"],
                &[],
                serde_json::to_value(&spec)?,
            ),
        ),
        (
            "DELETE /v1/services/base".into(),
            leader,
            api("DELETE", &["v1", "services", "base"], &[], Value::Null),
        ),
        (
            "DELETE /v1/nodes/<w2>?force=true".into(),
            leader,
            api(
                "DELETE",
                &["v1", "nodes", &w2_id],
                &[("force", "true")],
                Value::Null,
            ),
        ),
        (
            "POST /v1/join-token/worker with rotate".into(),
            leader,
            api(
                "POST",
                &["v1", "join-token", "worker"],
                &[],
                serde_json::json!({"rotate": true}),
            ),
        ),
        (
            "POST /v1/leave with force, to a follower manager".into(),
            follower,
            api(
                "POST",
                &["v1", "leave"],
                &[],
                serde_json::json!({"force": true}),
            ),
        ),
        (
            "POST /v1/init with force_new_cluster, to the leader".into(),
            leader,
            api(
                "POST",
                &["v1", "init"],
                &[],
                serde_json::json!({"force_new_cluster": true}),
            ),
        ),
        (
            "POST /v1/leave with force, to the leader".into(),
            leader,
            api(
                "POST",
                &["v1", "leave"],
                &[],
                serde_json::json!({"force": true}),
            ),
        ),
    ];
    // Observe through the manager no attack targets directly, when there is one.
    let observer =
        c.ms.iter()
            .find(|m| m.name != leader.name && m.name != follower.name)
            .unwrap_or(leader);
    rogue_reaches_leader(&rogue, leader, &w1_id)?;
    let mut attacks = Attacks::new(TEST, observer, c.all())?;
    for (what, target, req) in attempts {
        if let Some(why) = attacks.broken() {
            attacks.note(&format!("skipped `{what}`: the cluster is broken ({why})"));
            continue;
        }
        let o = rogue.try_tag(target.addr, TAG_FORWARD_API, &req);
        let verdict = judge_api(&o);
        attacks.record(
            &format!("worker cert -> {}: tag 5 forwarded {what}", target.name),
            verdict,
        );
    }
    attacks.finish("after-api-attacks")
}

/// Tag 6 from a worker's certificate: forwarded Raft commands are served only to managers,
/// and `Restore` is never accepted forwarded, not even from a manager's certificate.
#[test]
fn issue_14_worker_certificate_cannot_forward_raft_commands() -> Result<()> {
    const TEST: &str = "issue_14_worker_certificate_cannot_forward_raft_commands";
    let c = Cluster::start("t14w-", 43, 3, 2)?;
    let (w1, w2) = (&c.ws[0], &c.ws[1]);
    let creds = Credentials::from_state_dir(&w1.state_dir)?;
    let rogue = Rogue::with_credentials("w1's real key and certificate", &creds)?;
    let leader = c.leader()?;
    let follower = c.follower()?;
    let (w1_id, w2_id, leader_id) = (node_id(w1)?, node_id(w2)?, node_id(leader)?);
    let w2_task = base_task_of(leader, &w2_id)?;
    let base_id = service_id(leader, "base")?;

    // A whole state in which w1 is the only manager, under a CA the rogue made, with every
    // other node's key removed.
    let cid = cluster_id(leader)?;
    let ca = shoal::pki::ClusterCa::generate(&cid)?;
    let mut state = ClusterState {
        cluster: Some(ClusterRecord {
            id: cid,
            created_at: now_ms(),
            ca_cert_der: ca.cert_der().to_vec(),
            ca_key_der: ca.key_pkcs8_der().to_vec(),
            worker_token_generation: 7,
            manager_token_generation: 7,
            task_history_limit: 5,
        }),
        ..ClusterState::default()
    };
    let w1_key = creds.key.public_key();
    state.nodes.insert(
        w1_id.clone(),
        NodeRecord {
            id: w1_id.clone(),
            public_key: w1_key,
            raft_id: creds.raft_id(),
            hostname: w1.name.clone(),
            addr: w1.addr.to_string(),
            role: Role::Manager,
            availability: Availability::Active,
            status: NodeStatus::Ready,
            labels: BTreeMap::new(),
            platform: "linux/x86_64".into(),
            memory_bytes: 1 << 30,
            cpus: 2,
            drivers: vec!["process".into()],
            version: "0.1.0".into(),
            created_at: now_ms(),
            updated_at: now_ms(),
        },
    );
    state.raft_ids.insert(creds.raft_id(), w1_id.clone());
    for n in leader
        .json(&["node", "ls"])?
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(k) = n["public_key"].as_str().and_then(hex_key)
            && k != w1_key
        {
            state.removed_keys.insert(k);
        }
    }

    let commands: Vec<(&str, Command)> = vec![
        (
            "RotateToken worker",
            Command::RotateToken { role: Role::Worker },
        ),
        (
            "RotateToken manager",
            Command::RotateToken {
                role: Role::Manager,
            },
        ),
        (
            "SetRole w1 -> manager",
            Command::SetRole {
                id: w1_id.clone(),
                role: Role::Manager,
                at: now_ms(),
            },
        ),
        (
            "UpdateNode leader: drain, label",
            Command::UpdateNode {
                id: leader_id,
                availability: Some(Availability::Drain),
                label_add: BTreeMap::from([("pwned".to_string(), "write".to_string())]),
                label_rm: Vec::new(),
                at: now_ms(),
            },
        ),
        ("RemoveNode w2", Command::RemoveNode { id: w2_id.clone() }),
        (
            "TaskReports as w2: its base task failed",
            Command::Services(ServiceCommand::TaskReports {
                node_id: w2_id,
                reports: vec![shoal::manager::services::TaskReport {
                    task_id: w2_task,
                    state: shoal_scheduler::TaskState::Failed,
                    exit_code: Some(1),
                    error: Some("rogue".into()),
                    health: shoal::manager::services::TaskHealth::None,
                    at_ms: now_ms(),
                }],
                at: now_ms(),
            }),
        ),
        (
            "Services Remove base",
            Command::Services(ServiceCommand::Remove {
                id: base_id,
                at: now_ms(),
            }),
        ),
        (
            "Restore a state where w1 is the only manager",
            Command::RestoreV4(Box::new(state.clone())),
        ),
    ];
    rogue_reaches_leader(&rogue, leader, &w1_id)?;
    let mut attacks = Attacks::new(TEST, follower, c.all())?;
    for (what, command) in commands {
        if let Some(why) = attacks.broken() {
            attacks.note(&format!("skipped `{what}`: the cluster is broken ({why})"));
            continue;
        }
        let o = rogue.try_tag(leader.addr, TAG_FORWARD_WRITE, &ForwardedWrite { command });
        attacks.record(
            &format!("worker cert -> {}: tag 6 forwarded {what}", leader.name),
            judge_write(&o),
        );
    }
    // Restore is never accepted forwarded, whoever sends it, in today's shape or an older version's.
    let old_state = ClusterStateV1 {
        cluster: state.cluster.clone(),
        nodes: state.nodes.clone(),
        raft_ids: state.raft_ids.clone(),
        removed_keys: state.removed_keys.clone(),
        ..ClusterStateV1::default()
    };
    let v2_state = ClusterStateV2 {
        cluster: state.cluster.clone(),
        nodes: state.nodes.clone(),
        raft_ids: state.raft_ids.clone(),
        removed_keys: state.removed_keys.clone(),
        ..ClusterStateV2::default()
    };
    let v3_state = ClusterStateV3 {
        cluster: state.cluster.clone(),
        nodes: state.nodes.clone(),
        raft_ids: state.raft_ids.clone(),
        removed_keys: state.removed_keys.clone(),
        ..ClusterStateV3::default()
    };
    let restores = [
        ("RestoreV4", Command::RestoreV4(Box::new(state))),
        (
            "RestoreV3 (version 3)",
            Command::RestoreV3(Box::new(v3_state)),
        ),
        (
            "RestoreV2 (version 2)",
            Command::RestoreV2(Box::new(v2_state)),
        ),
        ("Restore (version 1)", Command::Restore(Box::new(old_state))),
    ];
    let m_creds = Credentials::from_state_dir(&follower.state_dir)?;
    let m_rogue = Rogue::with_credentials("a manager's real key and certificate", &m_creds)?;
    for (what, command) in restores {
        if attacks.broken().is_some() {
            break;
        }
        let o = m_rogue.try_tag(leader.addr, TAG_FORWARD_WRITE, &ForwardedWrite { command });
        attacks.record(
            &format!(
                "manager {} cert -> {}: tag 6 forwarded {what} (w1 the only manager)",
                follower.name, leader.name
            ),
            judge_write(&o),
        );
    }
    attacks.finish("after-write-attacks")
}

/// Tag 7 from a worker's certificate: only the current leader may make a node start Raft.
/// Sent to the leader, to another worker, and to the worker itself.
#[test]
fn issue_14_worker_certificate_cannot_make_a_node_a_manager() -> Result<()> {
    const TEST: &str = "issue_14_worker_certificate_cannot_make_a_node_a_manager";
    let c = Cluster::start("t14b-", 44, 1, 2)?;
    let (w1, w2) = (&c.ws[0], &c.ws[1]);
    let creds = Credentials::from_state_dir(&w1.state_dir)?;
    let rogue = Rogue::with_credentials("w1's real key and certificate", &creds)?;
    let leader = c.leader()?;
    let req = BecomeManager {
        cluster_id: cluster_id(leader)?,
    };
    rogue_reaches_leader(&rogue, leader, &node_id(w1)?)?;
    let mut attacks = Attacks::new(TEST, leader, c.all())?;
    for target in [leader, w2, w1] {
        if attacks.broken().is_some() {
            break;
        }
        let o = rogue.try_tag(target.addr, TAG_BECOME_MANAGER, &req);
        attacks.record(
            &format!("worker cert -> {}: tag 7 become-manager", target.name),
            judge_become(&o),
        );
    }
    attacks.finish("after-become-manager-attacks")
}

/// Tag 8: a worker's session is its own. The rogue holds w1's certificate and says it is
/// w2 in its hello: it must get w1's assignments (or nothing), never w2's; and reports
/// about tasks of other nodes (failed, complete) change nothing.
#[test]
fn issue_14_worker_session_is_its_own() -> Result<()> {
    const TEST: &str = "issue_14_worker_session_is_its_own";
    let c = Cluster::start("t14s-", 45, 1, 2)?;
    let (w1, w2) = (&c.ws[0], &c.ws[1]);
    let creds = Credentials::from_state_dir(&w1.state_dir)?;
    let rogue = Rogue::with_credentials("w1's real key and certificate", &creds)?;
    let leader = c.leader()?;
    let (w1_id, w2_id, m_id) = (node_id(w1)?, node_id(w2)?, node_id(leader)?);
    let w1_tasks: BTreeSet<String> = tasks(leader, "base")?
        .iter()
        .filter(|t| t["node_id"] == w1_id.as_str())
        .filter_map(|t| t["id"].as_str().map(str::to_string))
        .collect();
    let w2_task = base_task_of(leader, &w2_id)?;
    let m_task = base_task_of(leader, &m_id)?;
    // The hello carries w1's real capacity and drivers, so recording them changes nothing.
    let spoofed = hello_as(leader, &w1_id, &w2_id)?;
    rogue_reaches_leader(&rogue, leader, &w1_id)?;
    let mut attacks = Attacks::new(TEST, leader, c.all())?;

    let attack = format!(
        "worker cert -> {}: tag 8 session whose hello claims to be w2",
        leader.name
    );
    match rogue.open_stream(leader.addr, TAG_DISPATCH, &spoofed) {
        Err(o) => attacks.note(&format!("{attack}: not served at all ({o:?})")),
        Ok(mut stream) => {
            // The first assignment set (or the end of the session), for up to 10 s.
            let first = Poll::new("an assignment set on the session", Duration::from_secs(10))
                .every(Duration::ZERO)
                .until(|| match stream.recv(Duration::from_secs(5)) {
                    o @ Outcome::Answered { .. } => match o.decode::<ToWorker>() {
                        Some(ToWorker::Assignments(set)) => Ok(Some(Ok(set))),
                        Some(_) => Ok(None),
                        None => {
                            attacks.note(&format!("{attack}: an undecodable frame"));
                            Ok(None)
                        }
                    },
                    o => Ok(Some(Err(o))),
                });
            match first {
                Ok(Ok(set)) => {
                    let ids: BTreeSet<String> =
                        set.tasks.iter().map(|a| a.task_id.clone()).collect();
                    let foreign: Vec<&String> = ids.difference(&w1_tasks).collect();
                    if foreign.is_empty() {
                        attacks.note(&format!(
                            "{attack}: served as w1 (its own {} task(s)), as it should",
                            ids.len()
                        ));
                    } else {
                        attacks.breach(
                            &attack,
                            format!(
                                "the session was served as another node: it got tasks {foreign:?} that are not w1's ({w1_tasks:?})"
                            ),
                        );
                    }
                }
                Ok(Err(o)) => attacks.note(&format!("{attack}: the session ended ({o:?})")),
                // No assignment set within 10 s: nothing was served.
                Err(_) => {}
            }
            let reports = ToLeader::Reports(vec![
                report(&w2_task, shoal::worker::TaskState::Failed, 1),
                report(&m_task, shoal::worker::TaskState::Complete, 0),
            ]);
            match stream.send(TAG_DISPATCH, &reports) {
                Ok(()) => attacks.note(&format!(
                    "{attack}: sent reports: w2's task {w2_task} failed, the manager's task {m_task} complete"
                )),
                Err(e) => attacks.note(&format!("{attack}: the reports could not be sent: {e:#}")),
            }
            // Checked while the session is still open.
            attacks.check_unchanged(&format!(
                "{attack}: reports about other nodes' tasks ({w2_task} failed, {m_task} complete)"
            ));
            for (task, node) in [(&w2_task, "w2"), (&m_task, "the manager")] {
                let state = tasks(leader, "base")?
                    .iter()
                    .find(|t| t["id"] == task.as_str())
                    .map(|t| t["state"].clone());
                if state != Some(Value::from("running")) {
                    attacks.breach(
                        &attack,
                        format!("{node}'s task {task} is now {state:?} after w1's session reported on it"),
                    );
                }
            }
            drop(stream);
        }
    }
    attacks.finish("after-session-attacks")
}

// --- JOIN presenting another node's key ------------------------------------------------------

/// Tag 1: a join presenting another node's public key (a manager's, a labelled worker's,
/// the leader's) with a valid worker token is refused, through the leader and through a
/// follower; the victims keep their roles and labels. First the rogue cannot prove it
/// holds those keys (it signs the proof with its own); then it holds them (stolen from the
/// state dirs) and proves it: a live worker's record is still not replaced, a manager
/// still not turned into a worker.
#[test]
fn issue_14_join_presenting_another_nodes_key_is_refused() -> Result<()> {
    const TEST: &str = "issue_14_join_presenting_another_nodes_key_is_refused";
    let block = 46;
    let c = Cluster::start("t14j-", block, 2, 1)?;
    let w1 = &c.ws[0];
    let leader = c.leader()?;
    let follower = c.follower()?;
    leader.ok(&["node", "update", "--label-add", "zone=attic", &w1.name])?;
    let ca = Credentials::from_state_dir(&leader.state_dir)?.ca_cert;
    let rogue = Rogue::without_certificate("no certificate", &ca, Some(NodeKey::generate()?))?;
    let token = join_token(leader, "worker")?;
    let own = rogue.key.clone().context("the rogue has a key")?;
    // The keys of the victims, stolen from their state dirs: with them the rogue can also
    // make a valid proof, and the manager's own rules must still refuse (a ready node's
    // record is never replaced; a manager is never turned into a worker).
    let stolen_w1 = Credentials::from_state_dir(&w1.state_dir)?.key;
    let stolen_follower = Credentials::from_state_dir(&follower.state_dir)?.key;
    let w1_key = stolen_w1.public_key();
    let follower_key = stolen_follower.public_key();
    let leader_key = public_key_of(leader)?;
    let victims: Vec<(String, [u8; 32], &NodeKey, &Daemon)> = vec![
        (
            format!("manager {}'s key", follower.name),
            follower_key,
            &own,
            leader,
        ),
        (
            format!("labelled worker {}'s key", w1.name),
            w1_key,
            &own,
            leader,
        ),
        (
            format!("labelled worker {}'s key", w1.name),
            w1_key,
            &own,
            follower,
        ),
        (
            format!("the leader {}'s key", leader.name),
            leader_key,
            &own,
            follower,
        ),
        (
            format!(
                "labelled worker {}'s key with a valid proof (its stolen key)",
                w1.name
            ),
            w1_key,
            &stolen_w1,
            leader,
        ),
        (
            format!(
                "manager {}'s key with a valid proof (its stolen key)",
                follower.name
            ),
            follower_key,
            &stolen_follower,
            leader,
        ),
    ];
    let mut attacks = Attacks::new(TEST, leader, c.all())?;
    for (whose, key, signer, target) in victims {
        if attacks.broken().is_some() {
            break;
        }
        let o = rogue.try_tag_with(target.addr, TAG_JOIN, |conn| {
            join_request(conn, &token, key, signer, "rogue", &rogue_addr(block))
        });
        attacks.record(
            &format!(
                "no certificate -> {}: tag 1 JOIN presenting {whose} with a valid worker token",
                target.name
            ),
            judge_join(&o),
        );
    }
    attacks.finish("after-join-attacks")
}

// --- (b) a removed node's key and certificate ------------------------------------------------

/// Joins a cluster of one manager and two workers, stops the second worker and removes
/// it with `node rm --force`; returns the cluster and the removed node's credentials.
fn cluster_with_removed_worker(prefix: &str, block: u8) -> Result<(Cluster, Credentials)> {
    let mut c = Cluster::start(prefix, block, 1, 2)?;
    let removed_name = c.ws[1].name.clone();
    c.ws[1].stop()?;
    let m = &c.ms[0];
    poll_until("the stopped worker down", Duration::from_secs(20), || {
        let nodes = m.json(&["node", "ls"])?;
        Ok(nodes
            .as_array()
            .into_iter()
            .flatten()
            .any(|n| n["hostname"] == removed_name.as_str() && n["status"] == "down")
            .then_some(()))
    })?;
    m.ok(&["node", "rm", "--force", &removed_name])?;
    let creds = Credentials::from_state_dir(&c.ws[1].state_dir)?;
    Ok((c, creds))
}

/// Waits (at most 15 s) until `worker`'s `node.json` lists `key` as removed: the leader
/// pushes removals to workers over their sessions. Only a note when it does not.
fn wait_until_worker_knows_removed(worker: &Daemon, key: &[u8; 32]) {
    let want: Vec<Value> = key.iter().map(|b| Value::from(*b)).collect();
    let known = poll_until(
        "the worker to learn the removal",
        Duration::from_secs(15),
        || {
            let bytes = std::fs::read(worker.state_dir.join("node.json"))?;
            let cfg: Value = serde_json::from_slice(&bytes)?;
            Ok(cfg["cluster"]["removed"]
                .as_array()
                .is_some_and(|r| r.iter().any(|k| k.as_array() == Some(&want)))
                .then_some(()))
        },
    );
    if let Err(e) = known {
        eprintln!("note: {}: {e:#}", worker.name);
    }
}

/// A removed node's key and certificate: every tag refused, on the manager and on the
/// remaining worker (the leader pushed the removal to it).
#[test]
fn issue_14_removed_node_is_refused_on_every_tag() -> Result<()> {
    const TEST: &str = "issue_14_removed_node_is_refused_on_every_tag";
    let block = 47;
    let (c, creds) = cluster_with_removed_worker("t14x-", block)?;
    let m = &c.ms[0];
    let w1 = &c.ws[0];
    let rogue = Rogue::with_credentials("a removed node's key and certificate", &creds)?;
    let t = EveryTag {
        join_key: Some(creds.key.public_key()),
        worker_token: join_token(m, "worker")?,
        cluster_id: creds.cluster_id.clone(),
        raft_id: creds.raft_id(),
        block,
    };
    wait_until_worker_knows_removed(w1, &creds.key.public_key());
    let mut attacks = Attacks::new(TEST, m, vec![m, w1])?;
    for target in [m, w1] {
        if !attack_every_tag(&mut attacks, &rogue, target, &t)? {
            break;
        }
    }
    attacks.finish("after-removed-node-attacks")
}

/// A removed key cannot come back with a token: a join presenting it, with a valid proof
/// (the rogue holds the key) and the current worker token, is refused.
#[test]
fn issue_14_removed_key_cannot_rejoin_with_a_token() -> Result<()> {
    const TEST: &str = "issue_14_removed_key_cannot_rejoin_with_a_token";
    let block = 48;
    let (c, creds) = cluster_with_removed_worker("t14y-", block)?;
    let m = &c.ms[0];
    let w1 = &c.ws[0];
    let rogue = Rogue::without_certificate(
        "no certificate, holding a removed node's key",
        &creds.ca_cert,
        Some(creds.key.clone()),
    )?;
    let token = join_token(m, "worker")?;
    let mut attacks = Attacks::new(TEST, m, vec![m, w1])?;
    let key = creds.key.public_key();
    let o = rogue.try_tag_with(m.addr, TAG_JOIN, |conn| {
        join_request(conn, &token, key, &creds.key, "t14y-w2", &rogue_addr(block))
    });
    attacks.record(
        &format!(
            "removed key -> {}: tag 1 JOIN with its own key, a valid proof and the current worker token",
            m.name
        ),
        judge_join(&o),
    );
    attacks.finish("after-rejoin-attack")
}

// --- (c) no certificate ------------------------------------------------------------------

/// A peer without a certificate may only join: every other tag is refused, on the
/// manager and on a worker. Its JOIN presents a worker's key it cannot prove it holds.
#[test]
fn issue_14_peer_without_certificate_may_only_join() -> Result<()> {
    const TEST: &str = "issue_14_peer_without_certificate_may_only_join";
    let block = 49;
    let c = Cluster::start("t14n-", block, 1, 1)?;
    let m = &c.ms[0];
    let w1 = &c.ws[0];
    let ca = Credentials::from_state_dir(&m.state_dir)?.ca_cert;
    let rogue = Rogue::without_certificate("no certificate", &ca, None)?;
    let t = EveryTag {
        join_key: Some(public_key_of(w1)?),
        worker_token: join_token(m, "worker")?,
        cluster_id: cluster_id(m)?,
        raft_id: shoal::manager::raft_id_for(&NodeKey::generate()?.public_key()),
        block,
    };
    let mut attacks = Attacks::new(TEST, m, c.all())?;
    for target in [m, w1] {
        if !attack_every_tag(&mut attacks, &rogue, target, &t)? {
            break;
        }
    }
    attacks.finish("after-anonymous-attacks")
}

// --- (d) a certificate from another cluster's CA -----------------------------------------------

/// A certificate issued by another cluster's CA (for a fresh key, sent with the real CA
/// certificate as its chain): the handshake fails, or every tag is refused. (JOIN is not
/// tried: anyone holding a valid token may join.)
#[test]
fn issue_14_certificate_from_another_cluster_is_refused() -> Result<()> {
    const TEST: &str = "issue_14_certificate_from_another_cluster_is_refused";
    let block = 40;
    let c = Cluster::start("t14f-", block, 1, 1)?;
    let m = &c.ms[0];
    let w1 = &c.ws[0];
    let ca = Credentials::from_state_dir(&m.state_dir)?.ca_cert;
    let creds = Credentials::foreign(&ca)?;
    let rogue = Rogue::with_credentials("a certificate from another cluster's CA", &creds)?;
    let t = EveryTag {
        join_key: None,
        worker_token: join_token(m, "worker")?,
        cluster_id: cluster_id(m)?,
        raft_id: creds.raft_id(),
        block,
    };
    let mut attacks = Attacks::new(TEST, m, c.all())?;
    for target in [m, w1] {
        if !attack_every_tag(&mut attacks, &rogue, target, &t)? {
            break;
        }
    }
    attacks.finish("after-foreign-ca-attacks")
}
