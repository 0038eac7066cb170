//! Round-trip properties of every wire type: a value encoded as its frame body (version byte
//! and postcard) decodes to the same value, and its bytes are accepted by the fuzz entry
//! point of its stream tag (`crate::fuzzing`). Values come from proptest strategies over
//! the fields, every enum variant included; the deepest records (service specs, tasks,
//! whole states) start from the fixed values of `formats.rs` with their scalars drawn.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::Duration;

use proptest::collection::{btree_map, btree_set, vec};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_membership::{Fact, FactBody, FactVersion, NodeId as MemberId, NodeRole};
use shoal_scheduler::{Decision, TaskId};

use crate::dispatch::TAG_DISPATCH;
use crate::formats;
use crate::forward::{
    BecomeManager, BecomeManagerResult, ForwardedApi, ForwardedReply, ForwardedWrite,
    ForwardedWriteResult, TAG_BECOME_MANAGER, TAG_FORWARD_API, TAG_FORWARD_WRITE,
};
use crate::join::{JoinAccepted, JoinRequest, JoinResponse, MemberHint, TAG_JOIN};
use crate::logs::{LogLine, LogsFrame, LogsRequest, TAG_LOGS};
use crate::manager::services::{
    PortProtocol, PortSpec, PublishMode, ServiceCommand, UpdateState, UpdateStatus,
};
use crate::manager::state::{
    Availability, ClusterRecord, Command, CommandResult, NodeRecord, NodeStatus, Role,
};
use crate::mesh::{EndpointTable, MeshOpen, MeshReply, PublishedService, TAG_MESH, TaskEndpoint};
use crate::net::{FRAME_VERSION, decode_body};
use crate::pki::ClusterCa;
use crate::pki::token::{JoinToken, TokenPayload, TokenRole};
use crate::session::{
    Assignment, AssignmentSet, DesiredState, PublishProblem, SessionHello, TaskHealth, TaskReport,
    TaskState, ToLeader, ToWorker,
};

/// Encodes `value` as a frame body under `tag`, decodes it back as the readers do, and
/// checks the value (through `Debug`: several wire types have no `PartialEq`), the bytes,
/// and that the fuzz entry point of `tag` accepts them.
fn round_trip<T: Serialize + DeserializeOwned + Debug>(
    tag: u8,
    value: &T,
) -> Result<(), TestCaseError> {
    let mut body = vec![FRAME_VERSION];
    body.extend(postcard::to_stdvec(value).map_err(|e| TestCaseError::fail(e.to_string()))?);
    let back: T = decode_body(tag, &body).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(format!("{back:?}"), format!("{value:?}"));
    let again = postcard::to_stdvec(&back).map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(again.as_slice(), &body[1..]);
    prop_assert!(
        crate::fuzzing::stream(tag, &body),
        "not accepted under tag {tag}"
    );
    Ok(())
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![".{0,12}", "[a-z0-9]{1,25}"]
}

fn key() -> impl Strategy<Value = [u8; 32]> {
    any::<[u8; 32]>()
}

fn addr() -> impl Strategy<Value = SocketAddr> {
    // serde writes an IPv6 socket address without its flow info and scope: draw neither.
    (any::<IpAddr>(), any::<u16>()).prop_map(SocketAddr::from)
}

fn words() -> impl Strategy<Value = Vec<String>> {
    vec(text(), 0..4)
}

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map(text(), text(), 0..4)
}

fn task_state() -> impl Strategy<Value = TaskState> {
    prop_oneof![
        Just(TaskState::New),
        Just(TaskState::Pending),
        Just(TaskState::Assigned),
        Just(TaskState::Preparing),
        Just(TaskState::Starting),
        Just(TaskState::Running),
        Just(TaskState::Complete),
        Just(TaskState::Failed),
        Just(TaskState::Shutdown),
        Just(TaskState::Rejected),
        Just(TaskState::Orphaned),
    ]
}

fn health() -> impl Strategy<Value = TaskHealth> {
    prop_oneof![
        Just(TaskHealth::None),
        Just(TaskHealth::Starting),
        Just(TaskHealth::Healthy),
        Just(TaskHealth::Unhealthy),
    ]
}

fn role() -> impl Strategy<Value = Role> {
    prop_oneof![Just(Role::Manager), Just(Role::Worker)]
}

fn availability() -> impl Strategy<Value = Availability> {
    prop_oneof![
        Just(Availability::Active),
        Just(Availability::Pause),
        Just(Availability::Drain),
    ]
}

fn node_status() -> impl Strategy<Value = NodeStatus> {
    prop_oneof![
        Just(NodeStatus::Ready),
        Just(NodeStatus::Down),
        Just(NodeStatus::Unknown),
    ]
}

fn update_state() -> impl Strategy<Value = UpdateState> {
    prop_oneof![
        Just(UpdateState::Updating),
        Just(UpdateState::Paused),
        Just(UpdateState::Completed),
        Just(UpdateState::RollbackStarted),
        Just(UpdateState::RollbackPaused),
        Just(UpdateState::RollbackCompleted),
    ]
}

prop_compose! {
    fn task_report()(
        task_id in text(),
        state in task_state(),
        exit_code in any::<Option<i64>>(),
        error in proptest::option::of(text()),
        health in health(),
        at_ms in any::<u64>(),
    ) -> TaskReport {
        TaskReport { task_id, state, exit_code, error, health, at_ms }
    }
}

prop_compose! {
    fn assignment()(
        task_id in text(),
        service_id in text(),
        service_name in text(),
        slot in any::<u64>(),
        driver in text(),
        desired in prop_oneof![Just(DesiredState::Running), Just(DesiredState::Shutdown)],
        image in text(),
        args in words(),
        env in labels(),
        ports in vec(any::<u16>(), 0..3),
        stop_grace in (0..1u64 << 40, 0..1_000_000_000u32),
    ) -> Assignment {
        let mut a = formats::assignment_set().tasks.remove(0);
        a.task_id = task_id;
        a.service_id = service_id;
        a.service_name = service_name;
        a.slot = slot;
        a.driver = driver;
        a.desired = desired;
        a.spec.image = image;
        a.spec.args = args;
        a.spec.env = env;
        a.spec.ports = ports;
        a.spec.stop_grace = Duration::new(stop_grace.0, stop_grace.1);
        a
    }
}

prop_compose! {
    fn assignment_set()(
        full in any::<bool>(),
        tasks in vec(assignment(), 0..3),
        removed in words(),
    ) -> AssignmentSet {
        AssignmentSet { full, tasks, removed }
    }
}

prop_compose! {
    fn port_spec()(
        published in any::<u16>(),
        target in any::<u16>(),
        host in any::<bool>(),
        proxy_protocol in any::<bool>(),
    ) -> PortSpec {
        PortSpec {
            published,
            target,
            protocol: PortProtocol::Tcp,
            mode: if host { PublishMode::Host } else { PublishMode::Ingress },
            proxy_protocol,
        }
    }
}

prop_compose! {
    fn endpoint_table()(
        services in vec(
            (
                text(),
                text(),
                vec(port_spec(), 0..3),
                vec((text(), text(), addr(), text(), any::<bool>()), 0..3),
            ),
            0..3,
        ),
    ) -> EndpointTable {
        EndpointTable {
            services: services
                .into_iter()
                .map(|(service_id, name, ports, tasks)| PublishedService {
                    service_id,
                    name,
                    ports,
                    tasks: tasks
                        .into_iter()
                        .map(|(task_id, node_id, node_addr, driver, ready)| TaskEndpoint {
                            task_id,
                            node_id,
                            node_addr,
                            driver,
                            ready,
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

fn to_worker() -> impl Strategy<Value = ToWorker> {
    prop_oneof![
        assignment_set().prop_map(ToWorker::AssignmentsV2),
        (vec(key(), 0..3), vec(key(), 0..3))
            .prop_map(|(managers, removed)| ToWorker::Trust { managers, removed }),
        vec(any::<u8>(), 0..64).prop_map(ToWorker::Cert),
        endpoint_table().prop_map(ToWorker::Endpoints),
    ]
}

fn to_leader() -> impl Strategy<Value = ToLeader> {
    prop_oneof![
        vec(task_report(), 0..4).prop_map(ToLeader::Reports),
        vec((any::<u16>(), text(), text()), 0..3).prop_map(|p| {
            ToLeader::PublishProblems(
                p.into_iter()
                    .map(|(published, service_id, error)| PublishProblem {
                        published,
                        service_id,
                        error,
                    })
                    .collect(),
            )
        }),
    ]
}

prop_compose! {
    fn node_record()(
        (id, public_key, raft_id, hostname, addr) in (text(), key(), any::<u64>(), text(), text()),
        (role, availability, status, labels) in (role(), availability(), node_status(), labels()),
        (platform, memory_bytes, cpus, drivers, version) in
            (text(), any::<u64>(), any::<u32>(), words(), text()),
        (created_at, updated_at) in (any::<u64>(), any::<u64>()),
    ) -> NodeRecord {
        NodeRecord {
            id, public_key, raft_id, hostname, addr, role, availability, status, labels,
            platform, memory_bytes, cpus, drivers, version, created_at, updated_at,
        }
    }
}

prop_compose! {
    fn cluster_record()(
        id in text(),
        created_at in any::<u64>(),
        ca_cert_der in vec(any::<u8>(), 0..32),
        ca_key_der in vec(any::<u8>(), 0..32),
        worker_token_generation in any::<u64>(),
        manager_token_generation in any::<u64>(),
        task_history_limit in any::<u32>(),
    ) -> ClusterRecord {
        ClusterRecord {
            id, created_at, ca_cert_der, ca_key_der, worker_token_generation,
            manager_token_generation, task_history_limit,
        }
    }
}

fn service_command() -> impl Strategy<Value = ServiceCommand> {
    let id = text;
    prop_oneof![
        (id(), any::<u64>()).prop_map(|(id, at)| {
            let mut rec = formats::service_record_v1();
            rec.id = id;
            rec.created_at = at;
            ServiceCommand::Create(Box::new(rec))
        }),
        (id(), text(), text(), any::<u64>()).prop_map(|(id, name, image, at)| {
            ServiceCommand::Update {
                id,
                spec: Box::new(formats::spec_v1(&name, &image)),
                at,
            }
        }),
        (id(), any::<u64>(), any::<u64>()).prop_map(|(id, replicas, at)| ServiceCommand::Scale {
            id,
            replicas,
            at
        }),
        (id(), any::<u64>()).prop_map(|(id, at)| ServiceCommand::Remove { id, at }),
        (text(), text(), any::<u64>()).prop_map(|(task, node, now)| {
            ServiceCommand::ApplyDecisions {
                decisions: vec![
                    Decision::CreateTask(formats::pending_task()),
                    Decision::Assign {
                        task: TaskId(task.clone()),
                        node: shoal_scheduler::NodeId(node),
                    },
                    Decision::MarkOrphaned { task: TaskId(task) },
                ],
                now,
            }
        }),
        (id(), vec(task_report(), 0..3), any::<u64>()).prop_map(|(node_id, reports, at)| {
            ServiceCommand::TaskReports {
                node_id,
                reports: reports
                    .into_iter()
                    .map(|r| crate::manager::services::TaskReport {
                        task_id: r.task_id,
                        state: r.state,
                        exit_code: r.exit_code,
                        error: r.error,
                        health: r.health,
                        at_ms: r.at_ms,
                    })
                    .collect(),
                at,
            }
        }),
        (id(), any::<u64>()).prop_map(|(id, at)| ServiceCommand::Rollback { id, at }),
        (
            id(),
            proptest::option::of((
                update_state(),
                any::<Option<u64>>(),
                any::<Option<u64>>(),
                text()
            )),
            any::<u64>()
        )
            .prop_map(|(id, status, at)| ServiceCommand::SetUpdateStatus {
                id,
                status: status.map(|(state, started_at, completed_at, message)| {
                    UpdateStatus {
                        state,
                        started_at,
                        completed_at,
                        message,
                    }
                }),
                at,
            }),
        (id(), any::<u64>(), update_state(), text(), any::<u64>()).prop_map(
            |(id, version, state, message, at)| ServiceCommand::UpdateVerdict {
                id,
                version,
                state,
                message,
                at,
            }
        ),
        (id(), any::<u64>()).prop_map(|(id, version)| {
            let mut rec = formats::service_record();
            rec.id = id;
            rec.version = version;
            ServiceCommand::create(rec)
        }),
        (id(), any::<u64>()).prop_map(|(id, at)| ServiceCommand::update(
            id,
            formats::service_spec_with_secret(),
            at
        )),
        (id(), btree_set(id(), 0..3)).prop_map(|(id, drop)| ServiceCommand::ShareSecretsKey {
            set: BTreeMap::from([(id, formats::sealed_key())]),
            drop: drop.into_iter().collect(),
        }),
        id().prop_map(|id| ServiceCommand::CreateSecret(Box::new(
            crate::manager::services::SecretRecord {
                id,
                ..formats::secret_record()
            }
        ))),
    ]
}

fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (cluster_record(), node_record())
            .prop_map(|(cluster, node)| Command::InitCluster { cluster, node }),
        node_record().prop_map(Command::UpsertNode),
        (text(), node_status(), any::<u64>()).prop_map(|(id, status, at)| Command::SetNodeStatus {
            id,
            status,
            at
        }),
        (text(), text(), any::<u64>()).prop_map(|(id, addr, at)| Command::SetNodeAddr {
            id,
            addr,
            at
        }),
        (
            text(),
            proptest::option::of(availability()),
            labels(),
            words(),
            any::<u64>()
        )
            .prop_map(|(id, availability, label_add, label_rm, at)| {
                Command::UpdateNode {
                    id,
                    availability,
                    label_add,
                    label_rm,
                    at,
                }
            }),
        role().prop_map(|role| Command::RotateToken { role }),
        text().prop_map(|id| Command::RemoveNode { id }),
        node_record().prop_map(Command::AdmitNode),
        (text(), role(), any::<u64>()).prop_map(|(id, role, at)| Command::SetRole { id, role, at }),
        service_command().prop_map(Command::Services),
        (btree_set(key(), 0..3)).prop_map(|removed_keys| {
            let mut state = formats::full_state_v1();
            state.removed_keys = removed_keys;
            Command::Restore(Box::new(state))
        }),
        (text(), any::<u64>(), any::<u32>(), words(), any::<u64>()).prop_map(
            |(id, memory_bytes, cpus, drivers, at)| Command::SetNodeResources {
                id,
                memory_bytes,
                cpus,
                drivers,
                at,
            }
        ),
        (btree_set(key(), 0..3)).prop_map(|removed_keys| {
            let mut state = formats::full_state_v4();
            state.removed_keys = removed_keys;
            Command::RestoreV4(Box::new(state))
        }),
    ]
}

fn command_result() -> impl Strategy<Value = CommandResult> {
    prop_oneof![
        Just(CommandResult::Done),
        any::<u64>().prop_map(CommandResult::Generation),
        text().prop_map(CommandResult::Refused),
    ]
}

prop_compose! {
    fn join_request()(
        (token, public_key, hostname, advertise_addr, platform) in
            (text(), key(), text(), text(), text()),
        (memory_bytes, cpus, drivers, version, availability, proof) in (
            any::<u64>(),
            any::<u32>(),
            words(),
            text(),
            availability(),
            vec(any::<u8>(), 0..64),
        ),
    ) -> JoinRequest {
        JoinRequest {
            token, public_key, hostname, advertise_addr, platform, memory_bytes, cpus, drivers,
            version, availability, proof,
        }
    }
}

fn join_response() -> impl Strategy<Value = JoinResponse> {
    prop_oneof![
        (
            text(),
            role(),
            vec(any::<u8>(), 0..32),
            vec(any::<u8>(), 0..32),
            vec((key(), text(), role()), 0..3),
        )
            .prop_map(|(cluster_id, role, node_cert, ca_cert, members)| {
                JoinResponse::Accepted(JoinAccepted {
                    cluster_id,
                    role,
                    node_cert,
                    ca_cert,
                    members: members
                        .into_iter()
                        .map(|(public_key, addr, role)| MemberHint {
                            public_key,
                            addr,
                            role,
                        })
                        .collect(),
                })
            }),
        text().prop_map(JoinResponse::Refused),
    ]
}

fn logs_frame() -> impl Strategy<Value = LogsFrame> {
    prop_oneof![
        (any::<i64>(), any::<bool>(), vec(any::<u8>(), 0..64)).prop_map(
            |(timestamp_ns, stderr, data)| LogsFrame::Line(LogLine {
                timestamp_ns,
                stderr,
                data,
            })
        ),
        Just(LogsFrame::Alive),
        Just(LogsFrame::End),
        text().prop_map(LogsFrame::Error),
    ]
}

fn forwarded_reply() -> impl Strategy<Value = ForwardedReply> {
    prop_oneof![
        (any::<u16>(), vec(any::<u8>(), 0..64))
            .prop_map(|(status, body)| ForwardedReply::Full { status, body }),
        text().prop_map(ForwardedReply::Item),
        Just(ForwardedReply::End),
    ]
}

fn fact_body() -> impl Strategy<Value = FactBody> {
    prop_oneof![
        prop_oneof![Just(NodeRole::Manager), Just(NodeRole::Worker)].prop_map(FactBody::Role),
        addr().prop_map(FactBody::AdvertiseAddr),
        (any::<u64>(), proptest::option::of(key())).prop_map(|(term, leader)| {
            FactBody::LeaderHint {
                term,
                leader: leader.map(MemberId),
            }
        }),
        any::<u64>().prop_map(|bump| FactBody::Leaving { bump }),
        (
            any::<u16>(),
            vec(any::<u8>(), 0..=shoal_membership::MAX_APP_FACT_LEN)
        )
            .prop_map(|(tag, data)| FactBody::App { tag, data }),
    ]
}

prop_compose! {
    fn token_payload()(
        cluster_id in text(),
        manager in any::<bool>(),
        generation in any::<u64>(),
        ca_digest in key(),
        expires_at in any::<Option<u64>>(),
        manager_addrs in words(),
        nonce in any::<Option<u64>>(),
    ) -> TokenPayload {
        TokenPayload {
            version: 1,
            cluster_id,
            role: if manager { TokenRole::Manager } else { TokenRole::Worker },
            generation,
            ca_digest,
            expires_at,
            manager_addrs,
            nonce,
        }
    }
}

/// One CA for the token properties (generating one per case would dominate the run).
fn ca() -> &'static ClusterCa {
    static CA: OnceLock<ClusterCa> = OnceLock::new();
    CA.get_or_init(|| ClusterCa::generate("props").expect("a CA"))
}

proptest! {
    #[test]
    fn session_messages_round_trip(
        hello in (text(), any::<u64>(), any::<u32>(), words()),
        to_worker in to_worker(),
        to_leader in to_leader(),
    ) {
        let (node_id, memory_bytes, cpus, drivers) = hello;
        round_trip(TAG_DISPATCH, &SessionHello { node_id, memory_bytes, cpus, drivers })?;
        round_trip(TAG_DISPATCH, &to_worker)?;
        round_trip(TAG_DISPATCH, &to_leader)?;
    }

    #[test]
    fn mesh_and_logs_frames_round_trip(
        open in (text(), text(), any::<u16>(), addr(), addr()),
        refused in proptest::option::of(text()),
        request in (text(), any::<bool>(), any::<Option<u64>>(), any::<Option<u64>>()),
        frame in logs_frame(),
    ) {
        let (service_id, task_id, published, client, ingress) = open;
        round_trip(TAG_MESH, &MeshOpen { service_id, task_id, published, client, ingress })?;
        round_trip(TAG_MESH, &refused.map_or(MeshReply::Connected, MeshReply::Refused))?;
        let (task_id, follow, tail, since_ms) = request;
        round_trip(TAG_LOGS, &LogsRequest { task_id, follow, tail, since_ms })?;
        round_trip(TAG_LOGS, &frame)?;
    }

    #[test]
    fn forwarding_round_trips(
        api in (text(), words(), labels(), vec(any::<u8>(), 0..64)),
        reply in forwarded_reply(),
        command in command(),
        result in prop_oneof![
            command_result().prop_map(ForwardedWriteResult::Ok),
            (any::<bool>(), text())
                .prop_map(|(unknown, message)| ForwardedWriteResult::Err { unknown, message }),
        ],
        cluster_id in text(),
        become_result in proptest::option::of(text()),
    ) {
        let (method, segments, query, body) = api;
        round_trip(TAG_FORWARD_API, &ForwardedApi { method, segments, query, body })?;
        round_trip(TAG_FORWARD_API, &reply)?;
        round_trip(TAG_FORWARD_WRITE, &ForwardedWrite { command })?;
        round_trip(TAG_FORWARD_WRITE, &result)?;
        round_trip(TAG_BECOME_MANAGER, &BecomeManager { cluster_id })?;
        round_trip(
            TAG_BECOME_MANAGER,
            &become_result.map_or(BecomeManagerResult::Ok, BecomeManagerResult::Err),
        )?;
    }

    #[test]
    fn raft_commands_round_trip(command in command(), result in command_result()) {
        // As a Raft log entry holds them: plain postcard, compared by value.
        let bytes = postcard::to_stdvec(&command).expect("encode");
        prop_assert_eq!(postcard::from_bytes::<Command>(&bytes).ok(), Some(command));
        let bytes = postcard::to_stdvec(&result).expect("encode");
        prop_assert_eq!(postcard::from_bytes::<CommandResult>(&bytes).ok(), Some(result));
    }

    #[test]
    fn join_round_trips(request in join_request(), response in join_response()) {
        round_trip(TAG_JOIN, &request)?;
        round_trip(TAG_JOIN, &response)?;
    }

    #[test]
    fn gossip_facts_round_trip(
        seed in any::<[u8; 32]>(),
        version in (any::<u64>(), any::<u64>()),
        body in fact_body(),
    ) {
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let origin = MemberId(key.verifying_key().to_bytes());
        let version = FactVersion { bump: version.0, seq: version.1 };
        let fact = Fact::signed(origin, version, body, &key).expect("a valid fact");
        let bytes = fact.encode().expect("encode");
        prop_assert_eq!(Fact::decode(&bytes).ok().flatten(), Some(fact));
    }

    #[test]
    fn join_token_payloads_round_trip(payload in token_payload()) {
        let bytes = postcard::to_stdvec(&payload).expect("encode");
        prop_assert_eq!(postcard::from_bytes::<TokenPayload>(&bytes).ok(), Some(payload.clone()));
        let text = JoinToken::mint(ca(), &payload).expect("mint");
        prop_assert!(crate::fuzzing::join_token(text.as_bytes()));
        let token = JoinToken::parse(&text).expect("parse");
        prop_assert_eq!(&token.payload, &payload);
        prop_assert!(token.verify_signature(&ca().public_key()).is_ok());
    }
}
