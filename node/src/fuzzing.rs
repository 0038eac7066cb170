//! Entry points for the fuzz targets (`fuzz/`), not an API.
//!
//! Each function runs, on bytes from outside (a peer, the control socket, the state dir),
//! the decoding the daemon runs on them, through the daemon's own functions, and must never
//! panic: refusing the bytes is fine. Each returns whether the bytes were accepted (the seed
//! corpus is checked to be accepted, so it is made of real encodings).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use shoal_membership::{Membership, NodeId as MemberId, NodeIdentity, Tuning};

use crate::api::server::{ApiRequest, request_from_parts};
use crate::api::{
    InitRequest, JoinApiRequest, JoinTokenRequest, LeaveRequest, NodeUpdateRequest, ScaleRequest,
    ServiceSpecBody, ServiceUpdateBody,
};
use crate::config::{DEFAULT_PORT, SavedConfig, parse_advertise};
use crate::forward::{
    BecomeManager, BecomeManagerResult, ForwardedApi, ForwardedReply, ForwardedWrite,
    ForwardedWriteResult,
};
use crate::manager::rpc::SnapshotReceipt;
use crate::manager::services::ServiceSpec;
use crate::manager::state::{Availability, Role};
use crate::manager::store::{Row, decode_row};
use crate::manager::types::TypeConfig;
use crate::net::decode_body;
use crate::pki::token::JoinToken;
use crate::session::{SessionHello, ToLeader, ToWorker};

/// The stream tags, in tag order (1 ..= 12): [`frame`] decodes each.
pub const STREAM_TAGS: [u8; 12] = [
    crate::join::TAG_JOIN,
    crate::manager::rpc::TAG_RAFT_APPEND,
    crate::manager::rpc::TAG_RAFT_VOTE,
    crate::manager::rpc::TAG_RAFT_SNAPSHOT,
    crate::forward::TAG_FORWARD_API,
    crate::forward::TAG_FORWARD_WRITE,
    crate::forward::TAG_BECOME_MANAGER,
    crate::dispatch::TAG_DISPATCH,
    crate::trust::TAG_PING,
    crate::mesh::TAG_MESH,
    crate::logs::TAG_LOGS,
    crate::mesh::TAG_VIP,
];

fn ok<T, E>(r: Result<T, E>) -> bool {
    r.is_ok()
}

fn body<T: DeserializeOwned>(tag: u8, bytes: &[u8]) -> Option<T> {
    decode_body::<T>(tag, bytes).ok()
}

/// One stream frame as a peer sends it: the 5-byte header (`tag | len: u32 BE`), refused
/// when the tag has no trust rule or `len` is over the tag's limit or is not the length of
/// what follows; then the body, decoded as the tag's request and as its answer (the side
/// that opened the stream reads answers from a peer just as well).
pub fn frame(bytes: &[u8]) -> bool {
    let Some((header, rest)) = bytes.split_at_checked(crate::net::FRAME_HEADER_LEN) else {
        return false;
    };
    let tag = header[0];
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    let Some(rule) = crate::trust::stream_rule(tag) else {
        return false;
    };
    let len = usize::try_from(len).unwrap_or(usize::MAX);
    if len > rule.max_frame || len == 0 || len != rest.len() {
        return false;
    }
    stream(tag, rest)
}

/// A frame body (version byte included) under `tag`, decoded as that tag's request and as
/// its answer, and handed to the pure checks the server runs on the request next.
pub fn stream(tag: u8, bytes: &[u8]) -> bool {
    match tag {
        crate::join::TAG_JOIN => {
            let request = body::<crate::join::JoinRequest>(tag, bytes).map(|req| {
                let _ = crate::join::record_for(&req, Role::Worker, 0);
                let _ = JoinToken::parse(&req.token);
            });
            request.is_some() | body::<crate::join::JoinResponse>(tag, bytes).is_some()
        }
        crate::manager::rpc::TAG_RAFT_APPEND => {
            body::<AppendEntriesRequest<TypeConfig>>(tag, bytes).is_some()
                | body::<Result<AppendEntriesResponse<u64>, RaftError<u64>>>(tag, bytes).is_some()
        }
        crate::manager::rpc::TAG_RAFT_VOTE => {
            body::<VoteRequest<u64>>(tag, bytes).is_some()
                | body::<Result<VoteResponse<u64>, RaftError<u64>>>(tag, bytes).is_some()
        }
        crate::manager::rpc::TAG_RAFT_SNAPSHOT => {
            let request = body::<InstallSnapshotRequest<TypeConfig>>(tag, bytes).map(|req| {
                let _ = SnapshotReceipt::default().check(
                    &req.meta.snapshot_id,
                    req.offset,
                    req.data.len(),
                );
                // A snapshot in one chunk is decoded as the state machine installs it.
                if req.offset == 0 && req.done {
                    let _ = crate::manager::store::decode_sm(&req.data);
                }
            });
            type Answer =
                Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>;
            request.is_some() | body::<Answer>(tag, bytes).is_some()
        }
        crate::forward::TAG_FORWARD_API => {
            let request = body::<ForwardedApi>(tag, bytes).map(|fwd| {
                if let Ok(method) = fwd.method.parse::<hyper::Method>() {
                    api_request(&ApiRequest {
                        method,
                        segments: fwd.segments,
                        query: fwd.query,
                        body: fwd.body.into(),
                        origin: None,
                    });
                }
            });
            let answer = body::<ForwardedReply>(tag, bytes).map(|reply| match reply {
                ForwardedReply::Full { body, .. } => {
                    let _ = serde_json::from_slice::<crate::api::ErrorBody>(&body);
                }
                ForwardedReply::Item(item) => {
                    let _ = serde_json::from_str::<serde_json::Value>(&item);
                }
                ForwardedReply::End => {}
            });
            request.is_some() | answer.is_some()
        }
        crate::forward::TAG_FORWARD_WRITE => {
            body::<ForwardedWrite>(tag, bytes).is_some()
                | body::<ForwardedWriteResult>(tag, bytes).is_some()
        }
        crate::forward::TAG_BECOME_MANAGER => {
            body::<BecomeManager>(tag, bytes).is_some()
                | body::<BecomeManagerResult>(tag, bytes).is_some()
        }
        crate::dispatch::TAG_DISPATCH => {
            let to_worker = body::<ToWorker>(tag, bytes).map(|msg| {
                if let ToWorker::Cert(der) = msg {
                    let _ = crate::pki::parse_cert(&der);
                }
            });
            body::<SessionHello>(tag, bytes).is_some()
                | body::<ToLeader>(tag, bytes).is_some()
                | to_worker.is_some()
        }
        crate::trust::TAG_PING => body::<()>(tag, bytes).is_some(),
        crate::mesh::TAG_MESH => {
            body::<crate::mesh::MeshOpen>(tag, bytes).is_some()
                | body::<crate::mesh::MeshReply>(tag, bytes).is_some()
        }
        crate::logs::TAG_LOGS => {
            body::<crate::logs::LogsRequest>(tag, bytes).is_some()
                | body::<crate::logs::LogsFrame>(tag, bytes).is_some()
        }
        crate::mesh::TAG_VIP => {
            body::<crate::mesh::VipOpen>(tag, bytes).is_some()
                | body::<crate::mesh::MeshReply>(tag, bytes).is_some()
        }
        _ => false,
    }
}

/// The node whose membership receives [`swim_datagram`]s.
fn swim_node() -> &'static (NodeIdentity, Arc<ed25519_dalek::SigningKey>) {
    static NODE: OnceLock<(NodeIdentity, Arc<ed25519_dalek::SigningKey>)> = OnceLock::new();
    NODE.get_or_init(|| {
        let key = Arc::new(ed25519_dalek::SigningKey::from_bytes(&[0x5a; 32]));
        let id = MemberId(key.verifying_key().to_bytes());
        let addr = SocketAddr::from((Ipv4Addr::new(10, 0, 0, 1), DEFAULT_PORT));
        (NodeIdentity::new(id, addr, 1), key)
    })
}

/// A QUIC datagram as a peer sends it: `0x53` and a SWIM packet, handed to a fresh
/// [`Membership`] as the gossip task does. The sender is not pinned (`from` is `None`), so
/// any claimed sender gets past the check that it is the certificate's key.
pub fn swim_datagram(bytes: &[u8]) -> bool {
    let Some((&crate::peer::DATAGRAM_SWIM, packet)) = bytes.split_first() else {
        return false;
    };
    let (identity, key) = swim_node();
    let Ok(mut membership) = Membership::new(*identity, Tuning::lan(), 1, key.clone()) else {
        return false;
    };
    let accepted = membership.handle_packet(None, packet).is_ok();
    drop(membership.drain_outputs());
    accepted
}

/// A DNS query as a container sends it to the node's server (issue 22): answered from a
/// fixed snapshot of names over UDP and over TCP. Accepted when it is answered or forwarded
/// (not dropped). The fuzzer's oracle besides "no panic": every reply parses as a DNS
/// message with the query's ID, within the transport's size limit.
pub fn dns(bytes: &[u8]) -> bool {
    use crate::dns::codec::{Message, TCP_MAX, UDP_EDNS_MAX};
    use crate::dns::{Outcome, Transport};
    static NAMES: OnceLock<crate::dns::Names> = OnceLock::new();
    let names = NAMES.get_or_init(|| {
        let mut names = crate::dns::Names::default();
        names.insert(
            "api",
            crate::dns::ServiceName {
                mode: crate::dns::EndpointMode::Vip,
                vip: Some(Ipv4Addr::new(10, 247, 128, 1)),
                tasks: (2..60).map(|i| Ipv4Addr::new(10, 247, 0, i)).collect(),
            },
        );
        names.insert(
            "db",
            crate::dns::ServiceName {
                mode: crate::dns::EndpointMode::Dnsrr,
                vip: None,
                tasks: vec![Ipv4Addr::new(10, 247, 0, 70)],
            },
        );
        names
    });
    let mut accepted = false;
    for (transport, max) in [(Transport::Udp, UDP_EDNS_MAX), (Transport::Tcp, TCP_MAX)] {
        match crate::dns::resolve(bytes, names, transport) {
            Outcome::Reply(reply) => {
                assert!(reply.len() <= max, "reply of {} bytes", reply.len());
                let parsed = Message::parse(&reply).expect("a reply parses");
                assert_eq!(parsed.header.id.to_be_bytes(), [bytes[0], bytes[1]]);
                accepted = true;
            }
            Outcome::Forward => accepted = true,
            Outcome::Drop => {}
        }
    }
    accepted
}

/// A join token's text (as `join --token` or a joiner's request carries it): parsed, then
/// its signature checked against a CA key (which fails for any token not minted by it).
pub fn join_token(bytes: &[u8]) -> bool {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return false;
    };
    let Ok(token) = JoinToken::parse(text) else {
        return false;
    };
    let _ = token.verify_signature(&[0x5a; 32]);
    true
}

/// A control API request: the first line is `METHOD TARGET` as an HTTP request line has
/// them (`POST /v1/services?x=1`), the rest is the body. The target is parsed by hyper, the
/// path and query decoded as the server does, and the body decoded as the route's JSON,
/// with the checks the handler runs before it touches any state.
pub fn api(bytes: &[u8]) -> bool {
    let (line, body) = match bytes.iter().position(|&b| b == b'\n') {
        Some(i) => (&bytes[..i], &bytes[i + 1..]),
        None => (bytes, &[][..]),
    };
    let Ok(line) = std::str::from_utf8(line) else {
        return false;
    };
    let Some((method, target)) = line.split_once(' ') else {
        return false;
    };
    let (Ok(method), Ok(uri)) = (
        method.parse::<hyper::Method>(),
        target.parse::<hyper::Uri>(),
    ) else {
        return false;
    };
    api_request(&request_from_parts(
        method,
        &uri,
        Bytes::copy_from_slice(body),
    ))
}

/// The decoding of a request's route, query and body, as in the daemon's route table.
fn api_request(req: &ApiRequest) -> bool {
    let route = req.route();
    match (req.method.as_str(), route.as_slice()) {
        ("POST", ["v1", "init"]) => req.json::<InitRequest>().is_ok_and(|b| {
            b.advertise_addr
                .is_none_or(|a| parse_advertise(&a, DEFAULT_PORT).is_ok())
                & b.availability
                    .is_none_or(|a| a.parse::<Availability>().is_ok())
        }),
        ("POST", ["v1", "leave"]) => ok(req.json::<LeaveRequest>()),
        ("POST", ["v1", "join"]) => req.json::<JoinApiRequest>().is_ok_and(|b| {
            let mut accepted = JoinToken::parse(&b.token).is_ok();
            for a in b.manager_addrs.iter().chain(&b.advertise_addr) {
                accepted &= parse_advertise(a, DEFAULT_PORT).is_ok();
            }
            accepted
                & b.availability
                    .is_none_or(|a| a.parse::<Availability>().is_ok())
        }),
        ("POST", ["v1", "join-token", role]) => {
            ok(req.json::<JoinTokenRequest>()) & matches!(*role, "worker" | "manager")
        }
        ("GET", ["v1", "events"]) => ok(crate::api::events::EventQuery::from_params(&req.query)),
        ("POST", ["v1", "nodes", _, "update"]) => req.json::<NodeUpdateRequest>().is_ok_and(|b| {
            b.availability
                .is_none_or(|a| a.parse::<Availability>().is_ok())
        }),
        ("DELETE", ["v1", "nodes", _]) => {
            let _ = req.flag("force");
            true
        }
        ("POST", ["v1", "services"]) => req
            .json::<ServiceSpecBody>()
            .is_ok_and(|b| ServiceSpec::try_from(b).is_ok_and(|spec| assignable(&spec))),
        ("GET", ["v1", "services", _, "logs"]) => req
            .query
            .get("since")
            .is_none_or(|s| crate::logs::parse_since(s, std::time::SystemTime::now()).is_ok()),
        ("POST", ["v1", "services", _, "scale"]) => ok(req.json::<ScaleRequest>()),
        ("POST", ["v1", "services", _, "update"]) => {
            req.json::<ServiceUpdateBody>().is_ok_and(|b| {
                current_spec().is_some_and(|spec| match b.plan(spec) {
                    Ok(crate::api::services::UpdatePlan::Update(spec)) => assignable(&spec),
                    Ok(crate::api::services::UpdatePlan::Scale(_)) => true,
                    Err(_) => false,
                })
            })
        }
        _ => false,
    }
}

/// Whether the tasks of an accepted `spec` reach a worker: the assignment the leader encodes
/// decodes on the worker's side. A spec the API accepts that a worker cannot decode would
/// end every session of a worker it is assigned to, so this panics (a fuzz finding).
fn assignable(spec: &ServiceSpec) -> bool {
    let task = spec.task_spec("t1", "s1", 1);
    let set = ToWorker::AssignmentsV2(crate::session::AssignmentSet {
        full: true,
        tasks: vec![crate::session::Assignment {
            task_id: "t1".into(),
            service_id: "s1".into(),
            service_name: spec.name.clone(),
            slot: 1,
            driver: spec.driver.clone(),
            spec: task,
            desired: crate::session::DesiredState::Running,
        }],
        removed: Vec::new(),
    });
    let mut bytes = vec![crate::net::FRAME_VERSION];
    bytes.extend(postcard::to_stdvec(&set).unwrap_or_default());
    let decoded = decode_body::<ToWorker>(crate::dispatch::TAG_DISPATCH, &bytes);
    assert!(
        decoded.is_ok(),
        "an accepted spec's assignment does not decode: {decoded:?}"
    );
    true
}

/// The spec a fuzzed `service update` is planned against.
fn current_spec() -> Option<&'static ServiceSpec> {
    static SPEC: OnceLock<Option<ServiceSpec>> = OnceLock::new();
    SPEC.get_or_init(|| ServiceSpec::try_from(ServiceSpecBody::new("web", "nginx:1")).ok())
        .as_ref()
}

/// The contents of `node.json`.
pub fn node_json(bytes: &[u8]) -> bool {
    SavedConfig::parse(bytes).is_ok()
}

/// The contents of the worker cache file (`worker/assignments.json`).
pub fn worker_cache(bytes: &[u8]) -> bool {
    crate::worker::cache::decode(bytes).is_ok()
}

/// A row of `raft.redb`: the first byte says which (0 a log entry, 1 the vote, 2 the
/// committed ID, 3 the purged ID, 4 the stored snapshot down to its cluster state, 5 a
/// cluster state alone), the rest is the row.
pub fn raft_state(bytes: &[u8]) -> bool {
    let Some((&which, row)) = bytes.split_first() else {
        return false;
    };
    let row_kind = match which {
        0 => Row::Entry,
        1 => Row::Vote,
        2 => Row::Committed,
        3 => Row::Purged,
        4 => Row::Snapshot,
        5 => return crate::manager::state::ClusterState::decode(row).is_ok(),
        _ => return false,
    };
    decode_row(row_kind, row).is_ok()
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use shoal_membership::Output;

    use super::*;
    use crate::formats::{self, unhex};

    type Entry = (&'static str, fn(&[u8]) -> bool);

    /// The fuzz targets (`fuzz/fuzz_targets/NAME.rs`) and their entry points.
    const TARGETS: [Entry; 8] = [
        ("frame", frame),
        ("swim", swim_datagram),
        ("token", join_token),
        ("api", api),
        ("node_json", node_json),
        ("worker_cache", worker_cache),
        ("raft_state", raft_state),
        ("dns", dns),
    ];

    fn corpus_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
    }

    /// Real datagrams a fresh node with [`swim_node`]'s identity receives while it joins a
    /// member: the member's answers to its announce (SWIM, member sync, fact push).
    fn swim_datagrams() -> Vec<Vec<u8>> {
        let (identity, key) = swim_node();
        let mut me = Membership::new(*identity, Tuning::lan(), 1, key.clone()).expect("node");
        let other_key = Arc::new(ed25519_dalek::SigningKey::from_bytes(&[0x17; 32]));
        let other_id = NodeIdentity::new(
            MemberId(other_key.verifying_key().to_bytes()),
            SocketAddr::from((Ipv4Addr::new(10, 0, 0, 2), DEFAULT_PORT)),
            2,
        );
        let mut other = Membership::new(other_id, Tuning::lan(), 2, other_key).expect("node");
        other
            .publish(shoal_membership::FactBody::Role(
                shoal_membership::NodeRole::Manager,
            ))
            .expect("publish");
        me.join(other_id.addr).expect("join");
        let mut received = Vec::new();
        for _ in 0..4 {
            for out in me.drain_outputs() {
                if let Output::Send { data, .. } = out {
                    let _ = other.handle_packet(Some(identity.id), &data);
                }
            }
            for out in other.drain_outputs() {
                if let Output::Send { data, .. } = out {
                    let mut datagram = vec![crate::peer::DATAGRAM_SWIM];
                    datagram.extend_from_slice(&data);
                    let _ = me.handle_packet(Some(other_id.id), &data);
                    received.push(datagram);
                }
            }
        }
        received
    }

    /// The seed corpus of every target, from real encodings: the golden bytes of
    /// `formats.rs` and values encoded the way the daemon writes them.
    fn seeds() -> Vec<(&'static str, String, Vec<u8>)> {
        let mut seeds = Vec::new();
        let mut add = |target: &'static str, name: &str, bytes: Vec<u8>| {
            seeds.push((target, name.to_lowercase().replace('_', "-"), bytes));
        };
        for (name, hex) in [
            ("JOIN_REQUEST", formats::JOIN_REQUEST),
            ("JOIN_ACCEPTED", formats::JOIN_ACCEPTED),
            ("JOIN_REFUSED", formats::JOIN_REFUSED),
            ("RPC_APPEND", formats::RPC_APPEND),
            ("RPC_APPEND_OK", formats::RPC_APPEND_OK),
            ("RPC_APPEND_HIGHER_VOTE", formats::RPC_APPEND_HIGHER_VOTE),
            ("RPC_VOTE", formats::RPC_VOTE),
            ("RPC_VOTE_OK", formats::RPC_VOTE_OK),
            ("RPC_SNAPSHOT", formats::RPC_SNAPSHOT),
            ("RPC_SNAPSHOT_OK", formats::RPC_SNAPSHOT_OK),
            ("RPC_SNAPSHOT_MISMATCH", formats::RPC_SNAPSHOT_MISMATCH),
            ("FORWARD_API", formats::FORWARD_API),
            ("FORWARD_REPLY_FULL", formats::FORWARD_REPLY_FULL),
            ("FORWARD_REPLY_ITEM", formats::FORWARD_REPLY_ITEM),
            ("FORWARD_REPLY_END", formats::FORWARD_REPLY_END),
            ("FORWARD_WRITE", formats::FORWARD_WRITE),
            ("FORWARD_WRITE_OK", formats::FORWARD_WRITE_OK),
            (
                "FORWARD_WRITE_GENERATION",
                formats::FORWARD_WRITE_GENERATION,
            ),
            ("FORWARD_WRITE_ERR", formats::FORWARD_WRITE_ERR),
            ("BECOME_MANAGER", formats::BECOME_MANAGER),
            ("BECOME_MANAGER_OK", formats::BECOME_MANAGER_OK),
            ("BECOME_MANAGER_ERR", formats::BECOME_MANAGER_ERR),
            ("SESSION_HELLO", formats::SESSION_HELLO),
            ("TO_WORKER_ASSIGNMENTS", formats::TO_WORKER_ASSIGNMENTS),
            ("TO_WORKER_TRUST", formats::TO_WORKER_TRUST),
            ("TO_WORKER_CERT", formats::TO_WORKER_CERT),
            ("TO_WORKER_ENDPOINTS", formats::TO_WORKER_ENDPOINTS),
            ("TO_WORKER_DISCOVERY", formats::TO_WORKER_DISCOVERY),
            (
                "TO_WORKER_ASSIGNMENTS_V2",
                formats::TO_WORKER_ASSIGNMENTS_V2,
            ),
            ("TO_WORKER_SECRETS", formats::TO_WORKER_SECRETS),
            ("TO_LEADER_REPORTS", formats::TO_LEADER_REPORTS),
            ("TO_LEADER_FACILITIES", formats::TO_LEADER_FACILITIES),
            (
                "TO_LEADER_PUBLISH_PROBLEMS",
                formats::TO_LEADER_PUBLISH_PROBLEMS,
            ),
            ("PING", formats::PING),
            ("MESH_OPEN", formats::MESH_OPEN),
            ("VIP_OPEN", formats::VIP_OPEN),
            ("MESH_CONNECTED", formats::MESH_CONNECTED),
            ("MESH_REFUSED", formats::MESH_REFUSED),
            ("LOGS_REQUEST", formats::LOGS_REQUEST),
            ("LOGS_LINE", formats::LOGS_LINE),
            ("LOGS_ALIVE", formats::LOGS_ALIVE),
            ("LOGS_END", formats::LOGS_END),
            ("LOGS_ERROR", formats::LOGS_ERROR),
        ] {
            add("frame", name, unhex(hex));
        }
        for (i, datagram) in swim_datagrams().into_iter().enumerate() {
            add("swim", &format!("datagram-{i}"), datagram);
        }
        add("token", "worker", formats::TOKEN_TEXT.as_bytes().to_vec());
        for (name, request) in [
            (
                "init",
                "POST /v1/init\n{\"advertise_addr\":\"10.0.0.1\",\"availability\":\"active\"}",
            ),
            ("leave", "POST /v1/leave\n{\"force\":true}"),
            (
                "join-token",
                "POST /v1/join-token/worker\n{\"rotate\":false,\"ttl_secs\":600}",
            ),
            (
                "node-update",
                "POST /v1/nodes/abc/update\n{\"availability\":\"drain\",\"label_add\":{\"zone\":\"a\"},\"label_rm\":[\"x\"]}",
            ),
            ("node-rm", "DELETE /v1/nodes/abc?force=true"),
            (
                "logs",
                "GET /v1/services/web/logs?since=10m&tail=5&follow=1",
            ),
            ("scale", "POST /v1/services/web/scale\n{\"replicas\":3}"),
            (
                "update",
                "POST /v1/services/web/update\n{\"image\":\"nginx:2\",\"replicas\":5,\"env_add\":{\"A\":\"1\"},\"publish_add\":[{\"published\":8080,\"target\":80}]}",
            ),
        ] {
            add("api", name, request.as_bytes().to_vec());
        }
        let events = crate::api::events::EventQuery {
            since: Some(1_700_000_000_000),
            until: Some(1_700_000_060_000),
            filters: crate::api::events::EventFilters::parse(["type=service", "action=create"])
                .expect("filters"),
        };
        add(
            "api",
            "events",
            format!("GET {}", events.path()).into_bytes(),
        );
        let mut join = b"POST /v1/join\n".to_vec();
        join.extend(
            serde_json::to_vec(&serde_json::json!({
                "token": formats::TOKEN_TEXT,
                "manager_addrs": ["10.0.0.1:4747"],
                "advertise_addr": "10.0.0.2",
                "availability": "active",
            }))
            .expect("json"),
        );
        add("api", "join", join);
        let mut create = b"POST /v1/services\n".to_vec();
        let mut body = ServiceSpecBody::new("web", "nginx:1");
        body.args = vec!["-g".into(), "daemon off;".into()];
        body.env.insert("A".into(), "1".into());
        body.constraints = vec!["node.labels.zone==a".into()];
        create.extend(serde_json::to_vec(&body).expect("json"));
        add("api", "create", create);
        add("node_json", "today", formats::NODE_JSON.as_bytes().to_vec());
        add(
            "node_json",
            "old",
            formats::NODE_JSON_OLD.as_bytes().to_vec(),
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = crate::worker::cache::Cache::open(dir.path()).expect("cache");
        let tasks = formats::assignment_set()
            .tasks
            .into_iter()
            .map(|a| crate::worker::cache::CachedTask {
                assignment: a,
                state: shoal_scheduler::TaskState::Running,
                exit_code: Some(0),
                error: None,
                ended_at_ms: Some(1),
                removed: false,
            })
            .collect();
        cache.store(tasks).expect("store");
        let file = dir.path().join(crate::worker::cache::CACHE_FILE);
        add("worker_cache", "tasks", std::fs::read(file).expect("read"));
        for (name, which, hex) in [
            ("entry-normal", 0, formats::ENTRY_NORMAL),
            ("entry-blank", 0, formats::ENTRY_BLANK),
            ("entry-membership", 0, formats::ENTRY_MEMBERSHIP),
            ("vote", 1, formats::META_VOTE),
            ("committed", 2, formats::META_COMMITTED),
            ("purged", 3, formats::META_PURGED),
            ("snapshot", 4, formats::SNAPSHOT_STORED),
            ("snapshot-v2", 4, formats::SNAPSHOT_STORED_V2),
            ("state", 5, formats::STATE_FULL),
            ("state-v2", 5, formats::STATE_FULL_V2),
            ("snapshot-v3", 4, formats::SNAPSHOT_STORED_V3),
            ("state-v3", 5, formats::STATE_FULL_V3),
            ("snapshot-v4", 4, formats::SNAPSHOT_STORED_V4),
            ("state-v4", 5, formats::STATE_FULL_V4),
        ] {
            let mut row = vec![which];
            row.extend(unhex(hex));
            add("raft_state", name, row);
        }
        {
            use crate::dns::codec::{TYPE_A, TYPE_AAAA, TYPE_ANY, query};
            for (name, id, qname, qtype, edns) in [
                ("a-vip", 1, "api", TYPE_A, None),
                ("a-tasks-edns", 2, "tasks.api", TYPE_A, Some(1232)),
                ("any-dnsrr", 3, "DB.", TYPE_ANY, None),
                ("aaaa", 4, "api", TYPE_AAAA, None),
                ("nxdomain", 5, "nope", TYPE_A, None),
                ("forward", 6, "example.com", TYPE_A, Some(4096)),
            ] {
                add("dns", name, query(id, qname, qtype, edns));
            }
        }
        seeds
    }

    /// Writes the seed corpus: `SHOAL_WRITE_FUZZ_CORPUS=1 cargo test -p shoal
    /// write_fuzz_corpus -- --ignored`.
    #[test]
    #[ignore = "writes fuzz/corpus"]
    fn write_fuzz_corpus() {
        if std::env::var_os("SHOAL_WRITE_FUZZ_CORPUS").is_none() {
            return;
        }
        for (target, _) in TARGETS {
            let dir = corpus_dir().join(target);
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).expect("corpus dir");
        }
        for (target, name, bytes) in seeds() {
            std::fs::write(corpus_dir().join(target).join(name), bytes).expect("write seed");
        }
    }

    /// Every seed is a real encoding its target accepts, and every stream tag has one.
    #[test]
    fn fuzz_seeds_are_accepted() {
        let seeds = seeds();
        for (target, name, bytes) in &seeds {
            let accept = TARGETS.iter().find(|(t, _)| t == target).expect("target").1;
            assert!(accept(bytes), "{target}/{name} is refused");
        }
        for tag in STREAM_TAGS {
            assert!(
                seeds.iter().any(|(t, _, b)| *t == "frame" && b[0] == tag),
                "no seed for tag {tag}"
            );
        }
        for (target, _) in TARGETS {
            assert!(
                seeds.iter().filter(|(t, ..)| *t == target).count() >= 1,
                "no seed for {target}"
            );
        }
    }

    /// The checked-in corpus is what [`seeds`] writes, and every fuzz target has an entry.
    #[test]
    fn fuzz_corpus_is_checked_in() {
        let targets: Vec<String> = std::fs::read_dir(corpus_dir().join("../fuzz_targets"))
            .expect("fuzz targets")
            .map(|e| {
                let name = e.expect("entry").file_name();
                name.to_string_lossy().trim_end_matches(".rs").to_owned()
            })
            .collect();
        for t in &targets {
            assert!(
                TARGETS.iter().any(|(name, _)| name == t),
                "{t} has no entry here"
            );
        }
        for (target, accept) in TARGETS {
            let dir = corpus_dir().join(target);
            for e in std::fs::read_dir(&dir).expect("corpus dir") {
                let path = e.expect("entry").path();
                let bytes = std::fs::read(&path).expect("read");
                assert!(accept(&bytes), "{} is refused", path.display());
            }
        }
    }

    /// A few seconds of mutations of one target's checked-in corpus through its entry
    /// point, on stable Rust: what `scripts/test.sh` can afford in CI (the coverage-guided
    /// run, `scripts/fuzz.sh`, needs a nightly instrumented build that does not fit CI's
    /// budget). Not coverage-guided: bit flips, interesting bytes and lengths, inserts,
    /// deletes, duplicated chunks, truncation and splices with another seed, 1–8 per input,
    /// from a fixed seed. A panic prints the input in hex (save it, and it becomes a
    /// regression seed). `SHOAL_FUZZ_SMOKE_MS` sets the time per target (default 2000).
    fn mutate_corpus(target: &str) {
        let accept = TARGETS
            .iter()
            .find(|(t, _)| *t == target)
            .expect("target")
            .1;
        let dir = corpus_dir().join(target);
        let mut seeds: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .expect("corpus dir")
            .map(|e| std::fs::read(e.expect("entry").path()).expect("read"))
            .collect();
        seeds.sort();
        assert!(!seeds.is_empty(), "no corpus for {target}");
        let budget = std::time::Duration::from_millis(
            std::env::var("SHOAL_FUZZ_SMOKE_MS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2000),
        );
        let mut x: u64 = 0x5eed_0000_0000_0020 ^ target.len() as u64;
        let mut rnd = move |n: usize| -> usize {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % (n.max(1) as u64)) as usize
        };
        let start = std::time::Instant::now();
        let mut runs = 0u64;
        while start.elapsed() < budget {
            let mut input = seeds[rnd(seeds.len())].clone();
            for _ in 0..=rnd(8) {
                let len = input.len();
                match rnd(8) {
                    0 if len > 0 => {
                        let i = rnd(len);
                        input[i] ^= 1 << rnd(8);
                    }
                    1 if len > 0 => {
                        let i = rnd(len);
                        input[i] = [0, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'\\'][rnd(8)];
                    }
                    2 => {
                        let i = rnd(len + 1);
                        input.insert(i, rnd(256) as u8);
                    }
                    3 if len > 0 => {
                        input.remove(rnd(len));
                    }
                    4 if len > 1 => {
                        let a = rnd(len);
                        let b = (a + 1 + rnd(16)).min(len);
                        let chunk = input[a..b].to_vec();
                        let at = rnd(len + 1);
                        input.splice(at..at, chunk);
                    }
                    5 => input.truncate(rnd(len + 1)),
                    6 if len >= 4 => {
                        // A length or count field blown up.
                        let i = rnd(len - 3);
                        input[i..i + 4].copy_from_slice(&u32::MAX.to_le_bytes());
                    }
                    _ => {
                        let other = &seeds[rnd(seeds.len())];
                        let cut = rnd(input.len() + 1);
                        input.truncate(cut);
                        input.extend_from_slice(&other[rnd(other.len() + 1)..]);
                    }
                }
            }
            let r = std::panic::catch_unwind(|| accept(&input));
            if let Err(p) = r {
                let hex: String = input.iter().map(|b| format!("{b:02x}")).collect();
                eprintln!("{target}: panicked on input {hex}");
                std::panic::resume_unwind(p);
            }
            runs += 1;
        }
        println!(
            "{target}: {runs} mutated inputs in {:.1} s, 0 panics",
            start.elapsed().as_secs_f64()
        );
        assert!(runs > 100, "{target}: only {runs} runs");
    }

    #[test]
    fn issue_20_mutated_frames_never_panic() {
        mutate_corpus("frame");
    }

    #[test]
    fn issue_20_mutated_swim_datagrams_never_panic() {
        mutate_corpus("swim");
    }

    #[test]
    fn issue_20_mutated_join_tokens_never_panic() {
        mutate_corpus("token");
    }

    #[test]
    fn issue_20_mutated_api_bodies_never_panic() {
        mutate_corpus("api");
    }

    #[test]
    fn issue_20_mutated_node_json_never_panics() {
        mutate_corpus("node_json");
    }

    #[test]
    fn issue_20_mutated_worker_caches_never_panic() {
        mutate_corpus("worker_cache");
    }

    #[test]
    fn issue_20_mutated_raft_states_never_panic() {
        mutate_corpus("raft_state");
    }

    #[test]
    fn issue_22_mutated_dns_queries_never_panic() {
        mutate_corpus("dns");
    }
}
