//! Any manager serves the API: a follower forwards requests that need the leader
//! (cluster-state reads and writes) over QUIC, and Raft commands proposed by a follower (a
//! join it admits) travel the same way. This module holds the wire types of forwarding and
//! of asking a node to become a manager, serves peers' requests by tag, and reaches the
//! leader.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use serde::{Deserialize, Serialize};

use super::node::{LeaderAt, Node, Remote, manager_err};
use crate::api::ErrorBody;
use crate::api::server::{ApiError, ApiRequest, Reply};
use crate::manager::network::resolve_in;
use crate::manager::state::{Command, CommandResult};
use crate::manager::{Manager, ManagerError, QUORUM_TIMEOUT, rpc};
use crate::net::{NetError, decode_body, read_frame, request, respond, write_frame};
use crate::pki::NodeId;
use crate::trust::{REFUSED, Refusal, Sender};

/// Stream tag: an API request executed by the leader.
pub const TAG_FORWARD_API: u8 = 5;
/// Stream tag: a Raft command proposed by a follower.
pub const TAG_FORWARD_WRITE: u8 = 6;
/// Stream tag: the leader asks a node to start Raft as a manager (promotion).
pub const TAG_BECOME_MANAGER: u8 = 7;
/// Largest forwarded request or answer frame.
pub const MAX_FORWARD_FRAME: usize = 8 << 20;

/// An API request as the follower received it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedApi {
    /// HTTP method.
    pub method: String,
    /// Path segments.
    pub segments: Vec<String>,
    /// Query parameters.
    pub query: BTreeMap<String, String>,
    /// Body.
    pub body: Vec<u8>,
}

/// One frame of the leader's answer to a forwarded API request.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardedReply {
    /// The whole answer: HTTP status and JSON body.
    Full {
        /// HTTP status.
        status: u16,
        /// JSON body (an error body when status is not 200).
        body: Vec<u8>,
    },
    /// One value of a streamed answer (JSON text).
    Item(String),
    /// The streamed answer is over.
    End,
}

/// A command proposed through the leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForwardedWrite {
    /// The command.
    pub command: Command,
}

/// The leader's verdict on a forwarded command.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ForwardedWriteResult {
    /// Applied.
    Ok(CommandResult),
    /// Refused by the state machine, or not applied (message for the user).
    Err {
        /// Whether the outcome is unknown (no quorum) rather than a clean refusal.
        unknown: bool,
        /// The message.
        message: String,
    },
}

/// Asks a node to start Raft as a manager (it is then added as a learner and a voter).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BecomeManager {
    /// The cluster, as a check.
    pub cluster_id: String,
}

/// Answer to [`BecomeManager`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum BecomeManagerResult {
    /// Raft runs on the node.
    Ok,
    /// It could not start Raft.
    Err(String),
}

impl Node {
    /// A request on a stream from an authenticated peer, by tag, once `crate::trust` has
    /// authorized the peer for the tag (peer.rs).
    pub(crate) async fn handle_peer_request(
        self: &Arc<Self>,
        peer: [u8; 32],
        tag: u8,
        body: &[u8],
        mut send: quinn::SendStream,
    ) -> Result<(), NetError> {
        let peer_id = NodeId::from_public_key(&peer);
        if rpc::is_raft_tag(tag) {
            return match self.manager_opt().await {
                Some(m) => rpc::serve_raft_request(m.raft(), tag, body, send).await,
                None => {
                    let _ = send.reset(REFUSED.into());
                    Ok(())
                }
            };
        }
        match tag {
            TAG_FORWARD_API => {
                let fwd: ForwardedApi = decode_body(tag, body)?;
                self.serve_forwarded_api(peer_id, fwd, send).await
            }
            TAG_FORWARD_WRITE => {
                let fwd: ForwardedWrite = decode_body(tag, body)?;
                let answer = match (self.manager_opt().await, forwardable(&fwd.command)) {
                    (_, Err(message)) => {
                        self.refusals.refused(
                            peer_id.as_str(),
                            tag,
                            &Refusal::NotAllowed {
                                name: "this forwarded Raft command",
                                sender: Sender::Leader,
                            },
                        );
                        ForwardedWriteResult::Err {
                            unknown: false,
                            message,
                        }
                    }
                    (None, _) => ForwardedWriteResult::Err {
                        unknown: false,
                        message: "this node is not a manager".into(),
                    },
                    (Some(m), Ok(())) => match m.write(fwd.command).await {
                        Ok(r) => ForwardedWriteResult::Ok(r),
                        Err(ManagerError::Refused(message)) => ForwardedWriteResult::Err {
                            unknown: false,
                            message,
                        },
                        Err(e) => ForwardedWriteResult::Err {
                            unknown: true,
                            message: e.to_string(),
                        },
                    },
                };
                respond(&mut send, tag, &answer).await
            }
            TAG_BECOME_MANAGER => {
                let req: BecomeManager = decode_body(tag, body)?;
                let answer = match self.become_manager(&req.cluster_id).await {
                    Ok(()) => BecomeManagerResult::Ok,
                    Err(e) => BecomeManagerResult::Err(e.to_string()),
                };
                respond(&mut send, tag, &answer).await
            }
            _ => {
                tracing::debug!(tag, peer = %peer_id, "unknown peer request tag");
                let _ = send.reset(REFUSED.into());
                Ok(())
            }
        }
    }

    /// Proposes `cmd`: here when this node leads, else through the leader.
    pub(crate) async fn propose(&self, cmd: Command) -> Result<CommandResult, ManagerError> {
        let manager = self
            .manager_opt()
            .await
            .ok_or_else(|| ManagerError::Fatal("this node is not a manager".into()))?;
        match manager.write(cmd.clone()).await {
            Err(ManagerError::NotLeader { .. }) => {}
            other => return other,
        }
        let leader = match self.find_leader(&manager).await? {
            LeaderAt::Here => return manager.write(cmd).await,
            LeaderAt::Remote(r) => r,
        };
        let fwd = ForwardedWrite { command: cmd };
        let answer: Result<ForwardedWriteResult, _> = tokio::select! {
            a = request(
                &leader.conn,
                TAG_FORWARD_WRITE,
                &fwd,
                MAX_FORWARD_FRAME,
                QUORUM_TIMEOUT + Duration::from_secs(2),
            ) => a,
            () = self.leader_lost(&manager, &leader) => {
                return Err(match self.find_leader(&manager).await {
                    Err(e) => e,
                    Ok(_) => ManagerError::Fatal(
                        "the leader changed while handling this request: the outcome of this request is unknown".into(),
                    ),
                });
            }
        };
        match answer {
            Ok(ForwardedWriteResult::Ok(r)) => Ok(r),
            Ok(ForwardedWriteResult::Err {
                unknown: false,
                message,
            }) => Err(ManagerError::Refused(message)),
            Ok(ForwardedWriteResult::Err {
                unknown: true,
                message,
            }) => Err(ManagerError::Fatal(message)),
            Err(_) => Err(manager.quorum_error()),
        }
    }

    /// The current leader: this node, or a connection to it. A leader that gossip sees
    /// as suspect or down is not trusted: this waits (up to the quorum timeout) for Raft
    /// to elect another rather than talk to a dead node.
    pub(super) async fn find_leader(&self, manager: &Manager) -> Result<LeaderAt, ManagerError> {
        let deadline = tokio::time::Instant::now() + QUORUM_TIMEOUT;
        let mut metrics = manager.metrics();
        loop {
            if let Some(leader) = manager.leader() {
                if leader == manager.raft_id() {
                    return Ok(LeaderAt::Here);
                }
                let node = manager.read_local(|s| s.node_by_raft_id(leader).cloned());
                let trusted = node.as_ref().is_some_and(|n| {
                    self.gossip().is_none_or(|g| {
                        g.view()
                            .members
                            .get(&n.public_key)
                            .is_none_or(|(_, st)| *st == shoal_membership::MemberState::Alive)
                    })
                });
                if trusted
                    && let Some(n) = node
                    && let Some(target) = manager.read_local(|s| resolve_in(s, leader))
                    && let Ok(conn) = self.pool.get_or_dial(&target.0, target.1).await
                {
                    return Ok(LeaderAt::Remote(Remote {
                        conn,
                        raft_id: leader,
                        key: n.public_key,
                    }));
                }
            }
            let wait = tokio::time::timeout_at(deadline, metrics.changed());
            match tokio::time::timeout(Duration::from_millis(100), wait).await {
                Ok(Err(_)) => return Err(manager.quorum_error()),
                _ if tokio::time::Instant::now() >= deadline => {
                    return Err(manager.quorum_error());
                }
                _ => {}
            }
        }
    }

    /// Resolves when `leader` stops being the leader this node knows, or gossip stops
    /// seeing it alive: a request in flight to it will not be answered.
    pub(super) async fn leader_lost(&self, manager: &Manager, leader: &Remote) {
        loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let alive = self.gossip().is_none_or(|g| {
                g.view()
                    .members
                    .get(&leader.key)
                    .is_none_or(|(_, st)| *st == shoal_membership::MemberState::Alive)
            });
            if manager.leader() != Some(leader.raft_id) || !alive {
                return;
            }
        }
    }

    /// Runs an API request on the leader and relays its answer.
    pub(super) async fn forward_api(
        self: &Arc<Self>,
        manager: &Manager,
        req: ApiRequest,
    ) -> Result<Reply, ApiError> {
        let leader = match self.find_leader(manager).await.map_err(manager_err)? {
            LeaderAt::Here => return self.route_local(req).await,
            LeaderAt::Remote(r) => r,
        };
        let conn = leader.conn.clone();
        let fwd = ForwardedApi {
            method: req.method.to_string(),
            segments: req.segments.clone(),
            query: req.query.clone(),
            body: req.body.to_vec(),
        };
        let lost = || manager_err(manager.quorum_error());
        let (mut send, mut recv) = conn.open_bi().await.map_err(|_| lost())?;
        write_frame(&mut send, TAG_FORWARD_API, &fwd)
            .await
            .map_err(|_| lost())?;
        let _ = send.finish();
        // A live leader answers within the quorum timeout (it fails a write it cannot
        // commit by then); silence past that means it died meanwhile.
        let first = tokio::select! {
            r = tokio::time::timeout(
                QUORUM_TIMEOUT + Duration::from_secs(2),
                read_frame::<ForwardedReply>(&mut recv, MAX_FORWARD_FRAME),
            ) => r.map_err(|_| lost())?.map_err(|_| lost())?,
            () = self.leader_lost(manager, &leader) => {
                // Say "no quorum" when no new leader comes; else that the leader changed.
                return Err(match self.find_leader(manager).await {
                    Err(e) => manager_err(e),
                    Ok(_) => ApiError::unavailable(
                        "the leader changed while handling this request: the outcome of this request is unknown; retry it",
                    ),
                });
            }
        };
        match first.1 {
            ForwardedReply::Full { status: 200, body } => Ok(Reply::Json(body.into())),
            ForwardedReply::Full { status, body } => {
                let message = serde_json::from_slice::<ErrorBody>(&body)
                    .map(|b| b.message)
                    .unwrap_or_else(|_| format!("the leader answered HTTP {status}"));
                Err(ApiError {
                    status: hyper::StatusCode::from_u16(status)
                        .unwrap_or(hyper::StatusCode::INTERNAL_SERVER_ERROR),
                    message,
                })
            }
            ForwardedReply::End => Err(ApiError::internal("the leader sent an empty answer")),
            ForwardedReply::Item(first) => {
                let (tx, rx) = tokio::sync::mpsc::channel(64);
                tokio::spawn(async move {
                    let mut next = Some(first);
                    while let Some(item) = next.take() {
                        let Ok(v) = serde_json::from_str(&item) else {
                            return;
                        };
                        if tx.send(v).await.is_err() {
                            return;
                        }
                        match read_frame::<ForwardedReply>(&mut recv, MAX_FORWARD_FRAME).await {
                            Ok((_, ForwardedReply::Item(i))) => next = Some(i),
                            _ => return,
                        }
                    }
                });
                Ok(Reply::Stream(rx))
            }
        }
    }

    /// The leader's side of a forwarded API request (the sender is a manager: trust.rs).
    /// Only cluster-state routes are served forwarded; node-local ones (`info`, `init`,
    /// `join`, `leave`) act on the node they are sent to and are never forwarded.
    pub(super) async fn serve_forwarded_api(
        self: &Arc<Self>,
        from: NodeId,
        fwd: ForwardedApi,
        mut send: quinn::SendStream,
    ) -> Result<(), NetError> {
        let Ok(method) = fwd.method.parse::<Method>() else {
            let _ = send.reset(REFUSED.into());
            return Ok(());
        };
        let req = ApiRequest {
            origin: Some(from.to_string()),
            method,
            segments: fwd.segments,
            query: fwd.query,
            body: fwd.body.into(),
        };
        let answer = if is_node_local(&req) {
            tracing::warn!(peer = %from, route = %req.segments.join("/"), "refused a forwarded request for a node-local route");
            Err(ApiError::forbidden(
                "this request acts on the node it is sent to and is never forwarded",
            ))
        } else {
            self.route_local(req).await
        };
        match answer {
            Ok(Reply::Json(bytes)) => {
                let reply = ForwardedReply::Full {
                    status: 200,
                    body: bytes.to_vec(),
                };
                respond(&mut send, TAG_FORWARD_API, &reply).await
            }
            Err(e) => {
                let body =
                    serde_json::to_vec(&ErrorBody { message: e.message }).unwrap_or_default();
                let reply = ForwardedReply::Full {
                    status: e.status.as_u16(),
                    body,
                };
                respond(&mut send, TAG_FORWARD_API, &reply).await
            }
            Ok(Reply::Stream(mut rx)) => {
                while let Some(v) = rx.recv().await {
                    let item = ForwardedReply::Item(v.to_string());
                    write_frame(&mut send, TAG_FORWARD_API, &item).await?;
                }
                respond(&mut send, TAG_FORWARD_API, &ForwardedReply::End).await
            }
        }
    }
}

/// Whether a request acts on the node that receives it (never forwarded, never served
/// when forwarded).
pub(super) fn is_node_local(req: &ApiRequest) -> bool {
    matches!(
        req.route().as_slice(),
        ["v1", "info"] | ["v1", "init"] | ["v1", "join"] | ["v1", "leave"] | ["v1", "events"]
    )
}

/// Which Raft commands a follower may forward to the leader: those a follower proposes on
/// behalf of a request it serves (a join it admits, service changes, worker reports and
/// resources). `InitCluster` and `Restore` (`RestoreV2`, `RestoreV3`, `RestoreV4`) replace cluster-wide state and are
/// only ever proposed locally, by `init` on the node itself.
pub(super) fn forwardable(cmd: &Command) -> Result<(), String> {
    match cmd {
        Command::InitCluster { .. }
        | Command::Restore(_)
        | Command::RestoreV2(_)
        | Command::RestoreV3(_)
        | Command::RestoreV4(_) => Err("this command is never accepted from another node".into()),
        _ => Ok(()),
    }
}
