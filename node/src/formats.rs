//! Golden bytes of every format that crosses the wire or lands on disk (issue 16, item 5):
//! the Raft log and its snapshots, the Raft RPCs, the worker session, join, forwarding,
//! join tokens, gossip facts, the SWIM header and `node.json`. The rule these pin is in
//! ARCHITECTURE.md, "Formats and upgrades".
//!
//! Each case builds a fixed value (fixed keys, IDs and times), encodes it exactly as the
//! daemon does (frames as `tag | len | FRAME_VERSION | postcard`, the state with its version
//! byte, …) and compares the bytes with a hex constant taken from an earlier build; then it
//! decodes the constant, through the same code the daemon decodes with, and checks that it
//! gives the value back. The constants are bytes that running clusters hold in their logs,
//! snapshots and `node.json` files, and send each other during a rolling upgrade.
//!
//! **When a case fails**
//! - You did not mean to change a format: undo the change. Postcard is not self-describing,
//!   so a field added, removed, reordered or retyped anywhere inside the type, an enum
//!   variant inserted anywhere but at the end, or a dependency upgrade that changed its serde
//!   (openraft, foca, humantime) all change the bytes.
//! - You meant to change it: **never just update the constant**. The old bytes still exist.
//!   Keep the old shape decodable (a new enum variant at the end, or a new version byte —
//!   `FRAME_VERSION`, `STATE_VERSION`, `FACT_FORMAT`, the token payload version — with the old
//!   type kept as `…V1` and an explicit migration), keep this case decoding its constant, and
//!   add a new case with a new constant for the new bytes.
//! - Only the decode half fails: bytes already written can no longer be read. That breaks
//!   restarts and rolling upgrades; fix the decoder.
//!
//! A failing case prints the bytes it produced, to paste into a *new* case.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::net::SocketAddr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::SigningKey;
use openraft::error::{InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::storage::{RaftLogStorage as _, RaftSnapshotBuilder as _};
use openraft::{
    CommittedLeaderId, EntryPayload, Membership, RaftLogReader as _, SnapshotSegmentId, Vote,
};
use redb::{ReadableDatabase as _, TableDefinition};
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_runtime::{HealthCheck, HealthTest, Mount, MountKind, TaskSpec};
use shoal_scheduler::{
    Constraint, ConstraintField, ConstraintOp, Decision, FilterCount, FilterFailure, PendingReason,
    ShutdownReason, Slot, Task, TaskId, Timestamp,
};

use crate::config::{SavedCluster, SavedConfig};
use crate::dispatch::TAG_DISPATCH;
use crate::forward::{
    BecomeManager, BecomeManagerResult, ForwardedApi, ForwardedReply, ForwardedWrite,
    ForwardedWriteResult, TAG_BECOME_MANAGER, TAG_FORWARD_API, TAG_FORWARD_WRITE,
};
use crate::join::{JoinAccepted, JoinRequest, JoinResponse, MemberHint, TAG_JOIN};
use crate::manager::rpc::{TAG_RAFT_APPEND, TAG_RAFT_SNAPSHOT, TAG_RAFT_VOTE};
use crate::manager::services::legacy::{
    ServiceRecordV1, ServiceRecordV2, ServiceRecordV3, ServiceSpecV1, ServiceSpecV2, ServiceSpecV3,
    ServicesStateV1, ServicesStateV2, ServicesStateV3, UpdateConfigV1,
};
use crate::manager::services::{
    ConfigRecord, ConfigRef, DeviceSpec, EndpointMode, FailureAction, HealthCheckSpec,
    HealthTestSpec, MountSpec, MountType, PortSpec, PublishMode, ResourceSpec, RestartCondition,
    RestartPolicySpec, SecretRecord, SecretRef, ServiceCommand, ServiceMode, ServiceRecord,
    ServiceSpec, ServicesState, TaskHealth, TaskOptionsSpec, UpdateConfig, UpdateOrder,
    UpdateState, UpdateStatus,
};
use crate::manager::state::{
    Availability, ClusterRecord, ClusterState, ClusterStateV1, ClusterStateV2, ClusterStateV3,
    Command, CommandResult, NodeFacilities, NodeRecord, NodeStatus, Role, STATE_VERSION,
    STATE_VERSION_V1, STATE_VERSION_V2, STATE_VERSION_V3,
};
use crate::manager::store::{LogStore, SmData, StateMachineStore, open_db};
use crate::manager::types::{Entry, LogId, SnapshotMeta, StoredMembership, TypeConfig};
use crate::mesh::{
    DiscoveredService, DiscoveryTable, EndpointTable, MeshOpen, MeshReply, PublishedService,
    TAG_MESH, TAG_VIP, TaskEndpoint, VipOpen,
};
use crate::net::{FRAME_HEADER_LEN, FRAME_VERSION, NetError, decode_body};
use crate::pki::token::{JoinToken, TOKEN_PREFIX, TokenPayload, TokenRole};
use crate::session::PublishProblem;
use crate::session::legacy::AssignmentSetV1;
use crate::session::{Assignment, AssignmentSet, DesiredState, TaskReport, TaskState};
use crate::session::{SessionHello, ToLeader, ToWorker};

// ---------------------------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------------------------

/// Lowercase hex.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Bytes of a hex constant; whitespace is ignored.
pub(crate) fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len().is_multiple_of(2), "odd number of hex digits");
    digits
        .chunks(2)
        .map(|pair| {
            let s = std::str::from_utf8(pair).expect("ascii");
            u8::from_str_radix(s, 16).expect("hex digit")
        })
        .collect()
}

/// `bytes` as a Rust constant to paste (lines of 40 bytes).
fn as_constant(name: &str, bytes: &[u8]) -> String {
    let h = hex(bytes);
    let lines: Vec<&str> = h
        .as_bytes()
        .chunks(80)
        .map(|c| std::str::from_utf8(c).expect("ascii"))
        .collect();
    format!(
        "const {name}: &str = \"\\\n    {}\";",
        lines.join("\\\n    ")
    )
}

/// Collects every mismatch of a test, so that one run shows them all.
#[derive(Default)]
struct Golden {
    failures: Vec<String>,
}

impl Golden {
    /// Compares the bytes `actual` produced today with the constant `golden` (named `name`).
    fn bytes(&mut self, name: &str, actual: &[u8], golden: &str) {
        if actual != unhex(golden).as_slice() {
            self.failures.push(format!(
                "{name}: today's encoding differs from the checked-in bytes. It produced:\n{}",
                as_constant(name, actual)
            ));
        }
    }

    /// Records a failure of the decode half.
    fn fail(&mut self, name: &str, what: impl std::fmt::Display) {
        self.failures.push(format!("{name}: {what}"));
    }

    /// One case: `value` encodes to `golden` with `encode`, and `golden` decodes back to
    /// `value` with `decode` (compared through `Debug` and by encoding the result again, since
    /// several wire types have no `PartialEq`).
    fn case<T: Debug>(
        &mut self,
        name: &str,
        value: &T,
        golden: &str,
        encode: impl Fn(&T) -> Vec<u8>,
        decode: impl Fn(&[u8]) -> Result<T, String>,
    ) {
        self.bytes(name, &encode(value), golden);
        let old = unhex(golden);
        match decode(&old) {
            Ok(back) => {
                if format!("{back:?}") != format!("{value:?}") || encode(&back) != old {
                    self.fail(
                        name,
                        format_args!(
                            "the checked-in bytes decode to another value:\n{back:?}\nexpected:\n{value:?}"
                        ),
                    );
                }
            }
            Err(e) => self.fail(
                name,
                format_args!("the checked-in bytes no longer decode: {e}"),
            ),
        }
    }

    /// A message as plain postcard (a value inside another, a token payload).
    fn plain<T: Serialize + DeserializeOwned + Debug>(
        &mut self,
        name: &str,
        value: &T,
        golden: &str,
    ) {
        self.case(
            name,
            value,
            golden,
            |v| postcard::to_stdvec(v).expect("encode"),
            |b| postcard::from_bytes(b).map_err(|e| e.to_string()),
        );
    }

    /// A whole frame as [`crate::net::write_frame`] writes it: `tag | len: u32 BE |
    /// FRAME_VERSION | postcard(msg)`, decoded the way the readers do ([`decode_body`]).
    fn frame<T: Serialize + DeserializeOwned + Debug>(
        &mut self,
        name: &str,
        tag: u8,
        value: &T,
        golden: &str,
    ) {
        self.case(name, value, golden, |v| frame(tag, v), |b| unframe(tag, b));
    }

    /// Fails the test with every mismatch.
    fn finish(self) {
        assert!(
            self.failures.is_empty(),
            "\n{}\n\nA deliberate format change needs a version bump or a new enum variant and a \
             migration, with the old bytes still decoding: never just update a constant. See the \
             top of node/src/formats.rs and ARCHITECTURE.md, \"Formats and upgrades\".\n",
            self.failures.join("\n\n")
        );
    }
}

/// Mirror of [`crate::net::write_frame`] (which writes to a QUIC stream).
fn frame<T: Serialize>(tag: u8, msg: &T) -> Vec<u8> {
    let mut buf = postcard::to_extend(msg, vec![tag, 0, 0, 0, 0, FRAME_VERSION]).expect("encode");
    let len = u32::try_from(buf.len() - FRAME_HEADER_LEN).expect("small frame");
    buf[1..FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    buf
}

/// Reads a frame as the servers do: header, then [`decode_body`].
fn unframe<T: DeserializeOwned>(tag: u8, bytes: &[u8]) -> Result<T, String> {
    if bytes.len() < FRAME_HEADER_LEN {
        return Err("shorter than a frame header".into());
    }
    let (header, body) = bytes.split_at(FRAME_HEADER_LEN);
    if header[0] != tag {
        return Err(format!("tag {} instead of {tag}", header[0]));
    }
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if usize::try_from(len).ok() != Some(body.len()) {
        return Err(format!("length {len} for a body of {} bytes", body.len()));
    }
    decode_body(tag, body).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Fixed values
// ---------------------------------------------------------------------------------------------

/// 2023-11-14T22:13:20Z.
const T0: u64 = 1_700_000_000_000;
const CLUSTER_ID: &str = "c0ffee0c0ffee0c0ffee0c0ff";
const MANAGER_ID: &str = "m0000000000000000000000m1";
const WORKER_ID: &str = "w0000000000000000000000w2";
const SERVICE_ID: &str = "s00000000000000000000000a";

pub(crate) fn cluster_record() -> ClusterRecord {
    ClusterRecord {
        id: CLUSTER_ID.into(),
        created_at: T0,
        ca_cert_der: vec![0x30, 0x82, 0x01, 0x02],
        ca_key_der: vec![0x30, 0x2e, 0x03, 0x04],
        worker_token_generation: 1,
        manager_token_generation: 2,
        task_history_limit: 5,
    }
}

pub(crate) fn manager_record() -> NodeRecord {
    NodeRecord {
        id: MANAGER_ID.into(),
        public_key: [7; 32],
        raft_id: 0x0707_0707_0707_0707,
        hostname: "pi-1".into(),
        addr: "10.0.0.1:4747".into(),
        role: Role::Manager,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        labels: BTreeMap::new(),
        platform: "linux/aarch64".into(),
        memory_bytes: 8 << 30,
        cpus: 4,
        drivers: vec!["docker".into(), "process".into()],
        version: "0.1.0".into(),
        created_at: T0,
        updated_at: T0,
    }
}

fn worker_record() -> NodeRecord {
    NodeRecord {
        id: WORKER_ID.into(),
        public_key: [8; 32],
        raft_id: 0x0808_0808_0808_0808,
        hostname: "pi-2".into(),
        addr: "10.0.0.2:4747".into(),
        role: Role::Worker,
        availability: Availability::Drain,
        status: NodeStatus::Down,
        labels: BTreeMap::from([("zone".into(), "attic".into())]),
        platform: "linux/x86_64".into(),
        memory_bytes: 1 << 30,
        cpus: 1,
        drivers: vec!["process".into()],
        version: "0.1.0".into(),
        created_at: T0 + 1,
        updated_at: T0 + 2,
    }
}

/// A spec as version 1 stored it (the log's `Create` and `Update`, state version 1), with
/// every field away from its default.
fn service_spec_v1() -> ServiceSpecV1 {
    ServiceSpecV1 {
        name: "web".into(),
        image: "/usr/bin/python3".into(),
        args: vec!["-m".into(), "http.server".into()],
        env: BTreeMap::from([("MODE".into(), "prod".into())]),
        driver: "process".into(),
        mode: ServiceMode::Replicated { replicas: 2 },
        ports: vec![PortSpec::tcp(8080, 80)],
        constraints: vec!["node.labels.zone==attic".into()],
        reservations: ResourceSpec {
            memory_bytes: 64 << 20,
            nano_cpus: 500_000_000,
        },
        limits: ResourceSpec {
            memory_bytes: 128 << 20,
            nano_cpus: 1_000_000_000,
        },
        restart_policy: RestartPolicySpec {
            condition: RestartCondition::OnFailure,
            delay_ms: 1_000,
            max_attempts: 3,
            window_ms: 60_000,
        },
        max_replicas_per_node: 1,
        health_check: Some(HealthCheckSpec {
            test: HealthTestSpec::Cmd(vec!["/bin/true".into()]),
            interval_ms: 5_000,
            timeout_ms: 1_000,
            retries: 2,
            start_period_ms: 10_000,
        }),
        labels: BTreeMap::from([("team".into(), "ops".into())]),
        stop_grace_ms: 3_000,
        update_config: UpdateConfigV1 {
            parallelism: 2,
            delay_ms: 500,
            order: UpdateOrder::StartFirst,
            failure_action: FailureAction::Rollback,
        },
    }
}

/// What version 1's `ServiceSpec::new(name, image)` made: its defaults (Docker's).
pub(crate) fn spec_v1(name: &str, image: &str) -> ServiceSpecV1 {
    ServiceSpecV1 {
        name: name.into(),
        image: image.into(),
        args: Vec::new(),
        env: BTreeMap::new(),
        driver: "docker".into(),
        mode: ServiceMode::Replicated { replicas: 1 },
        ports: Vec::new(),
        constraints: Vec::new(),
        reservations: ResourceSpec {
            memory_bytes: 0,
            nano_cpus: 0,
        },
        limits: ResourceSpec {
            memory_bytes: 0,
            nano_cpus: 0,
        },
        restart_policy: RestartPolicySpec {
            condition: RestartCondition::Any,
            delay_ms: 5_000,
            max_attempts: 0,
            window_ms: 0,
        },
        max_replicas_per_node: 0,
        health_check: None,
        labels: BTreeMap::new(),
        stop_grace_ms: 10_000,
        update_config: UpdateConfigV1 {
            parallelism: 1,
            delay_ms: 0,
            order: UpdateOrder::StopFirst,
            failure_action: FailureAction::Pause,
        },
    }
}

/// Today's spec with every field away from its default, the later ones included — but
/// `no_healthcheck`, which a health check excludes (see [`service_spec_no_health`]).
pub(crate) fn service_spec() -> ServiceSpec {
    ServiceSpec {
        name: "web".into(),
        image: "/usr/bin/python3".into(),
        args: vec!["-m".into(), "http.server".into()],
        env: BTreeMap::from([("MODE".into(), "prod".into())]),
        driver: "process".into(),
        mode: ServiceMode::Replicated { replicas: 2 },
        ports: vec![PortSpec::tcp(8080, 80)],
        constraints: vec!["node.labels.zone==attic".into()],
        reservations: ResourceSpec {
            memory_bytes: 64 << 20,
            nano_cpus: 500_000_000,
        },
        limits: ResourceSpec {
            memory_bytes: 128 << 20,
            nano_cpus: 1_000_000_000,
        },
        restart_policy: RestartPolicySpec {
            condition: RestartCondition::OnFailure,
            delay_ms: 1_000,
            max_attempts: 3,
            window_ms: 60_000,
        },
        max_replicas_per_node: 1,
        health_check: Some(HealthCheckSpec {
            test: HealthTestSpec::Cmd(vec!["/bin/true".into()]),
            interval_ms: 5_000,
            timeout_ms: 1_000,
            retries: 2,
            start_period_ms: 10_000,
        }),
        labels: BTreeMap::from([("team".into(), "ops".into())]),
        stop_grace_ms: 3_000,
        update_config: UpdateConfig {
            parallelism: 2,
            delay_ms: 500,
            order: UpdateOrder::StartFirst,
            failure_action: FailureAction::Rollback,
            monitor_ms: 30_000,
            max_failure_ratio_ppm: 200_000,
        },
        rollback_config: UpdateConfig {
            parallelism: 3,
            delay_ms: 250,
            order: UpdateOrder::StartFirst,
            failure_action: FailureAction::Continue,
            monitor_ms: 10_000,
            max_failure_ratio_ppm: 500_000,
        },
        no_healthcheck: false,
        force_update: 4,
        endpoint_mode: EndpointMode::Vip,
        expose: vec![9090, 9091],
        mounts: Vec::new(),
        options: TaskOptionsSpec::default(),
        configs: Vec::new(),
        secrets: Vec::new(),
    }
}

/// Today's spec with `--no-healthcheck` (and no health check), the rest as [`service_spec`]
/// but an older force counter.
fn service_spec_no_health() -> ServiceSpec {
    ServiceSpec {
        health_check: None,
        no_healthcheck: true,
        force_update: 3,
        ..service_spec()
    }
}

/// A record as version 1 stored it.
pub(crate) fn service_record_v1() -> ServiceRecordV1 {
    ServiceRecordV1 {
        id: SERVICE_ID.into(),
        spec: service_spec_v1(),
        version: 2,
        previous_spec: Some(spec_v1("web", "/bin/true")),
        created_at: T0,
        updated_at: T0 + 10,
        update_status: Some(UpdateStatus {
            state: UpdateState::Completed,
            started_at: Some(T0 + 5),
            completed_at: Some(T0 + 10),
            message: "update completed".into(),
        }),
    }
}

/// Today's record, with older specs.
pub(crate) fn service_record() -> ServiceRecord {
    ServiceRecord {
        id: SERVICE_ID.into(),
        spec: service_spec(),
        version: 3,
        previous_spec: Some(service_spec_no_health()),
        created_at: T0,
        updated_at: T0 + 10,
        update_status: Some(UpdateStatus {
            state: UpdateState::Completed,
            started_at: Some(T0 + 5),
            completed_at: Some(T0 + 10),
            message: "update completed".into(),
        }),
        older_specs: BTreeMap::from([
            (1, dnsrr_spec("web", "/bin/true")),
            (2, service_spec_no_health()),
        ]),
        vip_index: Some(5),
    }
}

/// A spec of `--endpoint-mode dnsrr` with a read-only bind mount, a named volume and a
/// tmpfs, the rest Docker's defaults.
fn dnsrr_spec(name: &str, image: &str) -> ServiceSpec {
    let mount = |kind, source: &str, target: &str, read_only| MountSpec {
        kind,
        source: source.into(),
        target: target.into(),
        read_only,
    };
    ServiceSpec {
        endpoint_mode: EndpointMode::Dnsrr,
        mounts: vec![
            mount(MountType::Bind, "/srv/www", "/www", true),
            mount(MountType::Volume, "data", "/data", false),
            mount(MountType::Tmpfs, "", "/tmp", false),
        ],
        options: task_options(),
        configs: vec![ConfigRef {
            config_id: CONFIG_ID.into(),
            config_name: "nginx.conf".into(),
            target: "/etc/nginx/nginx.conf".into(),
            uid: 101,
            gid: 101,
            mode: 0o440,
        }],
        ..ServiceSpec::new(name, image)
    }
}

/// The config of the fixtures.
const CONFIG_ID: &str = "c00000000000000000000000a";

/// A config.
fn config_record() -> ConfigRecord {
    ConfigRecord {
        id: CONFIG_ID.into(),
        name: "nginx.conf".into(),
        data: b"worker_processes 1;\n".to_vec(),
        labels: BTreeMap::from([("app".into(), "web".into())]),
        created_at: T0 + 1,
    }
}

/// Every task option set.
fn task_options() -> TaskOptionsSpec {
    TaskOptionsSpec {
        entrypoint: Some(vec!["/bin/tini".into(), "--".into()]),
        user: Some("1000:1000".into()),
        workdir: Some("/srv".into()),
        hostname: Some("pi-web".into()),
        init: true,
        devices: vec![DeviceSpec {
            host: "/dev/gpiomem".into(),
            container: "/dev/gpiomem".into(),
            permissions: "rw".into(),
        }],
        cap_add: vec!["SYS_RAWIO".into()],
        cap_drop: vec!["NET_RAW".into()],
        privileged: true,
    }
}

/// Today's spec as version 2 held it (the later fields dropped).
pub(crate) fn spec_v2(s: &ServiceSpec) -> ServiceSpecV2 {
    let s = s.clone();
    ServiceSpecV2 {
        name: s.name,
        image: s.image,
        args: s.args,
        env: s.env,
        driver: s.driver,
        mode: s.mode,
        ports: s.ports,
        constraints: s.constraints,
        reservations: s.reservations,
        limits: s.limits,
        restart_policy: s.restart_policy,
        max_replicas_per_node: s.max_replicas_per_node,
        health_check: s.health_check,
        labels: s.labels,
        stop_grace_ms: s.stop_grace_ms,
        update_config: s.update_config,
        rollback_config: s.rollback_config,
        no_healthcheck: s.no_healthcheck,
        force_update: s.force_update,
    }
}

/// Today's record as version 2 held it.
pub(crate) fn record_v2(r: &ServiceRecord) -> ServiceRecordV2 {
    ServiceRecordV2 {
        id: r.id.clone(),
        spec: spec_v2(&r.spec),
        version: r.version,
        previous_spec: r.previous_spec.as_ref().map(spec_v2),
        created_at: r.created_at,
        updated_at: r.updated_at,
        update_status: r.update_status.clone(),
        older_specs: r
            .older_specs
            .iter()
            .map(|(&v, s)| (v, spec_v2(s)))
            .collect(),
    }
}

/// Today's state as version 2 held it.
pub(crate) fn state_v2(s: &ClusterState) -> ClusterStateV2 {
    let records = |m: &BTreeMap<String, ServiceRecord>| {
        m.iter().map(|(id, r)| (id.clone(), record_v2(r))).collect()
    };
    ClusterStateV2 {
        cluster: s.cluster.clone(),
        nodes: s.nodes.clone(),
        raft_ids: s.raft_ids.clone(),
        removed_keys: s.removed_keys.clone(),
        services: ServicesStateV2 {
            services: records(&s.services.services),
            tasks: s.services.tasks.clone(),
            removed: records(&s.services.removed),
            health: s.services.health.clone(),
        },
    }
}

/// Today's spec as version 3 held it (no secrets).
pub(crate) fn spec_v3(s: &ServiceSpec) -> ServiceSpecV3 {
    let ServiceSpec {
        name,
        image,
        args,
        env,
        driver,
        mode,
        ports,
        constraints,
        reservations,
        limits,
        restart_policy,
        max_replicas_per_node,
        health_check,
        labels,
        stop_grace_ms,
        update_config,
        rollback_config,
        no_healthcheck,
        force_update,
        endpoint_mode,
        expose,
        mounts,
        options,
        configs,
        secrets: _,
    } = s.clone();
    ServiceSpecV3 {
        name,
        image,
        args,
        env,
        driver,
        mode,
        ports,
        constraints,
        reservations,
        limits,
        restart_policy,
        max_replicas_per_node,
        health_check,
        labels,
        stop_grace_ms,
        update_config,
        rollback_config,
        no_healthcheck,
        force_update,
        endpoint_mode,
        expose,
        mounts,
        options,
        configs,
    }
}

/// Today's record as version 3 held it.
pub(crate) fn record_v3(r: &ServiceRecord) -> ServiceRecordV3 {
    ServiceRecordV3 {
        id: r.id.clone(),
        spec: spec_v3(&r.spec),
        version: r.version,
        previous_spec: r.previous_spec.as_ref().map(spec_v3),
        created_at: r.created_at,
        updated_at: r.updated_at,
        update_status: r.update_status.clone(),
        older_specs: r
            .older_specs
            .iter()
            .map(|(&v, s)| (v, spec_v3(s)))
            .collect(),
        vip_index: r.vip_index,
    }
}

/// Today's state as version 3 held it (no secrets).
pub(crate) fn state_v3(s: &ClusterState) -> ClusterStateV3 {
    let records = |m: &BTreeMap<String, ServiceRecord>| {
        m.iter().map(|(id, r)| (id.clone(), record_v3(r))).collect()
    };
    ClusterStateV3 {
        cluster: s.cluster.clone(),
        nodes: s.nodes.clone(),
        raft_ids: s.raft_ids.clone(),
        removed_keys: s.removed_keys.clone(),
        services: ServicesStateV3 {
            services: records(&s.services.services),
            tasks: s.services.tasks.clone(),
            removed: records(&s.services.removed),
            health: s.services.health.clone(),
            configs: s.services.configs.clone(),
        },
    }
}

/// A secret's fixed record (its "ciphertext" is fixed bytes: the format is what is pinned).
pub(crate) fn secret_record() -> SecretRecord {
    SecretRecord {
        id: "k0000000000000000000000001".into(),
        name: "db_password".into(),
        labels: BTreeMap::from([("com.docker.stack.namespace".into(), "home".into())]),
        created_at: T0 + 70,
        key_id: [7; 8],
        nonce: [3; 12],
        sealed: vec![0xaa; 24],
    }
}

/// The secrets key sealed to the manager (fixed bytes).
pub(crate) fn sealed_key() -> crate::pki::seal::SealedKey {
    crate::pki::seal::SealedKey {
        key_id: [7; 8],
        ephemeral: [5; 32],
        sealed: vec![0xbb; 48],
    }
}

/// Today's spec with a secret.
pub(crate) fn service_spec_with_secret() -> ServiceSpec {
    ServiceSpec {
        secrets: vec![SecretRef {
            secret_id: "k0000000000000000000000001".into(),
            secret_name: "db_password".into(),
            target: "/run/secrets/db_password".into(),
            uid: 0,
            gid: 70,
            mode: 0o440,
        }],
        ..service_spec_no_health()
    }
}

/// [`full_state`] with a secret, its use and the sealed key: version 4's state.
pub(crate) fn full_state_v4() -> ClusterState {
    let mut s = full_state();
    if let Some(r) = s.services.services.get_mut(SERVICE_ID) {
        r.spec = service_spec_with_secret();
    }
    s.services.secrets = BTreeMap::from([(secret_record().id, secret_record())]);
    s.services.secrets_key = BTreeMap::from([(MANAGER_ID.into(), sealed_key())]);
    s.facilities = BTreeMap::from([(WORKER_ID.into(), node_facilities())]);
    s
}

/// A Pi's facilities.
pub(crate) fn node_facilities() -> NodeFacilities {
    NodeFacilities {
        allow_privileged: true,
        devices: vec!["/dev/gpiomem".into(), "/dev/i2c-1".into()],
    }
}

/// A version-3 state as version 3 wrote it: its version byte, then postcard.
fn encode_state_v3(s: &ClusterStateV3) -> Vec<u8> {
    let mut out = vec![STATE_VERSION_V3];
    out.extend(postcard::to_stdvec(s).expect("encode"));
    out
}

/// Reads a state of version 3 as version 3 did.
fn decode_state_v3(bytes: &[u8]) -> Result<ClusterStateV3, String> {
    match bytes.split_first() {
        Some((&STATE_VERSION_V3, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("state version {v} instead of {STATE_VERSION_V3}")),
        None => Err("empty".into()),
    }
}

fn zone_constraint() -> Constraint {
    Constraint {
        field: ConstraintField::Label("zone".into()),
        op: ConstraintOp::Eq,
        value: "attic".into(),
    }
}

/// A running task of slot 1.
fn running_task() -> Task {
    Task {
        id: TaskId("t00000000000000000000001".into()),
        service_id: SERVICE_ID.into(),
        slot: Slot::Replica(1),
        attempt: 1,
        node_id: Some(MANAGER_ID.into()),
        desired_state: shoal_scheduler::DesiredState::Running,
        state: shoal_scheduler::TaskState::Running,
        spec_version: 2,
        reservations: shoal_scheduler::Resources {
            memory_bytes: 64 << 20,
            nano_cpus: 500_000_000,
        },
        created_at: Timestamp(T0 + 20),
        updated_at: Timestamp(T0 + 30),
        ended_at: None,
        exit_code: None,
        error: None,
        pending_reason: None,
        restart_history: vec![Timestamp(T0 + 15)],
    }
}

/// A pending task of a global slot, and a failed one.
pub(crate) fn pending_task() -> Task {
    Task {
        id: TaskId("t00000000000000000000002".into()),
        slot: Slot::Node(WORKER_ID.into()),
        attempt: 0,
        node_id: None,
        state: shoal_scheduler::TaskState::Pending,
        pending_reason: Some(PendingReason {
            total_nodes: 2,
            failures: vec![
                FilterCount {
                    filter: FilterFailure::Constraint(zone_constraint()),
                    nodes: 1,
                },
                FilterCount {
                    filter: FilterFailure::InsufficientMemory(64 << 20),
                    nodes: 1,
                },
            ],
        }),
        restart_history: Vec::new(),
        ..running_task()
    }
}

fn failed_task() -> Task {
    Task {
        id: TaskId("t00000000000000000000000".into()),
        attempt: 0,
        desired_state: shoal_scheduler::DesiredState::Shutdown,
        state: shoal_scheduler::TaskState::Failed,
        ended_at: Some(Timestamp(T0 + 14)),
        exit_code: Some(137),
        error: Some("task exited with code 137".into()),
        restart_history: Vec::new(),
        ..running_task()
    }
}

/// A cluster state touching every type it holds.
pub(crate) fn full_state() -> ClusterState {
    let mut removed = service_record();
    removed.id = "s00000000000000000000000b".into();
    removed.spec = ServiceSpec::new("old", "nginx:1");
    removed.previous_spec = None;
    removed.update_status = None;
    removed.older_specs = BTreeMap::new();
    ClusterState {
        cluster: Some(cluster_record()),
        nodes: BTreeMap::from([
            (MANAGER_ID.into(), manager_record()),
            (WORKER_ID.into(), worker_record()),
        ]),
        raft_ids: BTreeMap::from([(0x0707_0707_0707_0707, MANAGER_ID.into())]),
        removed_keys: BTreeSet::from([[9; 32]]),
        services: ServicesState {
            services: BTreeMap::from([(SERVICE_ID.into(), service_record())]),
            tasks: [running_task(), pending_task(), failed_task()]
                .into_iter()
                .map(|t| (t.id.0.clone(), t))
                .collect(),
            removed: BTreeMap::from([(removed.id.clone(), removed)]),
            health: BTreeMap::from([("t00000000000000000000001".into(), TaskHealth::Healthy)]),
            configs: BTreeMap::from([(CONFIG_ID.into(), config_record())]),
            ..ServicesState::default()
        },
        facilities: BTreeMap::new(),
    }
}

/// [`full_state`] as version 1 held it (version-1 records, the same nodes and tasks).
pub(crate) fn full_state_v1() -> ClusterStateV1 {
    let today = full_state();
    let mut removed = service_record_v1();
    removed.id = "s00000000000000000000000b".into();
    removed.spec = spec_v1("old", "nginx:1");
    removed.previous_spec = None;
    removed.update_status = None;
    ClusterStateV1 {
        cluster: today.cluster,
        nodes: today.nodes,
        raft_ids: today.raft_ids,
        removed_keys: today.removed_keys,
        services: ServicesStateV1 {
            services: BTreeMap::from([(SERVICE_ID.into(), service_record_v1())]),
            tasks: today.services.tasks,
            removed: BTreeMap::from([(removed.id.clone(), removed)]),
            health: today.services.health,
        },
    }
}

/// A small state: the cluster and its manager.
fn small_state() -> ClusterState {
    ClusterState {
        cluster: Some(cluster_record()),
        nodes: BTreeMap::from([(MANAGER_ID.into(), manager_record())]),
        raft_ids: BTreeMap::from([(0x0707_0707_0707_0707, MANAGER_ID.into())]),
        ..ClusterState::default()
    }
}

/// [`small_state`] as version 1 held it.
fn small_state_v1() -> ClusterStateV1 {
    ClusterStateV1 {
        cluster: Some(cluster_record()),
        nodes: BTreeMap::from([(MANAGER_ID.into(), manager_record())]),
        raft_ids: BTreeMap::from([(0x0707_0707_0707_0707, MANAGER_ID.into())]),
        ..ClusterStateV1::default()
    }
}

/// [`small_state`] with today's service record: every later field set.
fn restore_state() -> ClusterState {
    let mut s = small_state();
    s.services
        .services
        .insert(SERVICE_ID.into(), service_record());
    s
}

/// A version-1 state as version 1 wrote it: its version byte, then postcard.
fn encode_state_v1(s: &ClusterStateV1) -> Vec<u8> {
    let mut out = vec![STATE_VERSION_V1];
    out.extend(postcard::to_stdvec(s).expect("encode"));
    out
}

/// Reads a state of version 1 as version 1 did (today's reader converts it: see
/// `old_bytes_decode_into_todays_types`).
fn decode_state_v1(bytes: &[u8]) -> Result<ClusterStateV1, String> {
    match bytes.split_first() {
        Some((&STATE_VERSION_V1, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("state version {v} instead of {STATE_VERSION_V1}")),
        None => Err("empty".into()),
    }
}

fn log_id(term: u64, node: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, node), index)
}

fn membership() -> Membership<u64, openraft::EmptyNode> {
    Membership::new(vec![BTreeSet::from([1, 2, 3])], ())
}

/// [`assignment_set`] with every task option set (what `ToWorker::AssignmentsV2` adds).
pub(crate) fn assignment_set_with_options() -> AssignmentSet {
    let mut set = assignment_set();
    for a in &mut set.tasks {
        a.spec.options = task_options().to_runtime();
        a.spec.options.files = vec![shoal_runtime::TaskFile {
            target: "/etc/nginx/nginx.conf".into(),
            data: config_record().data,
            uid: 101,
            gid: 101,
            mode: 0o440,
        }];
    }
    set
}

// Version 2 of the assignments (`ToWorker::AssignmentsV2`): the task options.
// `TO_WORKER_ASSIGNMENTS` is version 1's, read by today's worker and converted.
pub(crate) const TO_WORKER_ASSIGNMENTS_V2: &str = "\
    080000018f0105000118743030303030303030303030303030303030303030303031197330303030\
    303030303030303030303030303030303030306103776562010770726f6365737318743030303030\
    30303030303030303030303030303030303119733030303030303030303030303030303030303030\
    3030306103776562010a2f62696e2f736c6565700102363001044d4f44450470726f640104746561\
    6d036f7073015001808080400001010f74657374202d65202f746d702f6f6b023573083173203530\
    306d73020230730106534947494e540233730100092f7372762f64617461052f6461746101010209\
    2f62696e2f74696e69022d2d0109313030303a3130303001042f737276010670692d77656201010c\
    2f6465762f6770696f6d656d0c2f6465762f6770696f6d656d02727701095359535f524157494f01\
    074e45545f5241570101152f6574632f6e67696e782f6e67696e782e636f6e6614776f726b65725f\
    70726f63657373657320313b0a6565a0020001187430303030303030303030303030303030303030\
    30303030";
pub(crate) const ASSIGNMENT_SET_V2: &str = "\
    00011874303030303030303030303030303030303030303030303119733030303030303030303030\
    3030303030303030303030306103776562010770726f636573731874303030303030303030303030\
    30303030303030303030311973303030303030303030303030303030303030303030303061037765\
    62010a2f62696e2f736c6565700102363001044d4f44450470726f6401047465616d036f70730150\
    01808080400001010f74657374202d65202f746d702f6f6b023573083173203530306d7302023073\
    0106534947494e540233730100092f7372762f64617461052f64617461010102092f62696e2f7469\
    6e69022d2d0109313030303a3130303001042f737276010670692d77656201010c2f6465762f6770\
    696f6d656d0c2f6465762f6770696f6d656d02727701095359535f524157494f01074e45545f5241\
    570101152f6574632f6e67696e782f6e67696e782e636f6e6614776f726b65725f70726f63657373\
    657320313b0a6565a002000118743030303030303030303030303030303030303030303030";

pub(crate) fn assignment_set() -> AssignmentSet {
    let mut spec = TaskSpec::new(
        "t00000000000000000000001",
        SERVICE_ID,
        "web",
        1,
        "/bin/sleep",
    );
    spec.args = vec!["60".into()];
    spec.env = BTreeMap::from([("MODE".into(), "prod".into())]);
    spec.labels = BTreeMap::from([("team".into(), "ops".into())]);
    spec.ports = vec![80];
    spec.resources = shoal_runtime::Resources {
        memory_bytes: Some(128 << 20),
        nano_cpus: None,
    };
    spec.health = Some(HealthCheck {
        test: HealthTest::Shell("test -e /tmp/ok".into()),
        interval: std::time::Duration::from_secs(5),
        timeout: std::time::Duration::from_millis(1_500),
        retries: 2,
        start_period: std::time::Duration::ZERO,
    });
    spec.stop_signal = Some("SIGINT".into());
    spec.stop_grace = std::time::Duration::from_secs(3);
    spec.mounts = vec![Mount {
        kind: MountKind::Bind,
        source: "/srv/data".into(),
        target: "/data".into(),
        read_only: true,
    }];
    AssignmentSet {
        full: false,
        tasks: vec![Assignment {
            task_id: "t00000000000000000000001".into(),
            service_id: SERVICE_ID.into(),
            service_name: "web".into(),
            slot: 1,
            driver: "process".into(),
            spec,
            desired: DesiredState::Running,
        }],
        removed: vec!["t00000000000000000000000".into()],
    }
}

fn task_report() -> TaskReport {
    TaskReport {
        task_id: "t00000000000000000000000".into(),
        state: TaskState::Failed,
        exit_code: Some(137),
        error: Some("task exited with code 137".into()),
        health: crate::session::TaskHealth::Unhealthy,
        at_ms: T0 + 14,
    }
}

// ---------------------------------------------------------------------------------------------
// Raft log: every Command variant
// ---------------------------------------------------------------------------------------------

// When one of these fails: the Raft log holds these bytes on every manager, and a manager
// replays them at each start until a snapshot covers them. A `Command` variant is only ever
// appended; a changed command is a new variant (e.g. `UpsertNodeV2`) and the old one stays
// decodable and applied as before. The types inside a command (NodeRecord, ServiceRecord,
// scheduler::Task, …) are part of the log format too.
const CMD_INIT_CLUSTER: &str = "\
    00196330666665653063306666656530633066666565306330666680d095ffbc3104308201020430\
    2e0304010205196d303030303030303030303030303030303030303030306d310707070707070707\
    070707070707070707070707070707070707070707070707878e9cb8f0e0c183070470692d310d31\
    302e302e302e313a34373437000000000d6c696e75782f616172636836348080808020040206646f\
    636b65720770726f6365737305302e312e3080d095ffbc3180d095ffbc31";
const CMD_UPSERT_NODE: &str = "\
    01197730303030303030303030303030303030303030303030773208080808080808080808080808\
    080808080808080808080808080808080808088890a0c080818284080470692d320d31302e302e30\
    2e323a3437343701020101047a6f6e650561747469630c6c696e75782f7838365f36348080808004\
    01010770726f6365737305302e312e3081d095ffbc3182d095ffbc31";
const CMD_SET_NODE_STATUS: &str = "\
    02197730303030303030303030303030303030303030303030773201a8d095ffbc31";
const CMD_SET_NODE_ADDR: &str = "\
    0319773030303030303030303030303030303030303030303077320e31302e302e302e32323a3437\
    3437a9d095ffbc31";
const CMD_UPDATE_NODE: &str = "\
    041977303030303030303030303030303030303030303030307732010101047a6f6e650663656c6c\
    617201036f6c64aad095ffbc31";
const CMD_ROTATE_TOKEN: &str = "\
    0501";
const CMD_REMOVE_NODE: &str = "\
    061977303030303030303030303030303030303030303030307732";
const CMD_ADMIT_NODE: &str = "\
    07197730303030303030303030303030303030303030303030773208080808080808080808080808\
    080808080808080808080808080808080808088890a0c080818284080470692d320d31302e302e30\
    2e323a3437343701020101047a6f6e650561747469630c6c696e75782f7838365f36348080808004\
    01010770726f6365737305302e312e3081d095ffbc3182d095ffbc31";
const CMD_SET_ROLE: &str = "\
    08197730303030303030303030303030303030303030303030773200abd095ffbc31";
const CMD_RESTORE: &str = "\
    0a01196330666665653063306666656530633066666565306330666680d095ffbc31043082010204\
    302e030401020501196d303030303030303030303030303030303030303030306d31196d30303030\
    3030303030303030303030303030303030306d310707070707070707070707070707070707070707\
    070707070707070707070707878e9cb8f0e0c183070470692d310d31302e302e302e313a34373437\
    000000000d6c696e75782f616172636836348080808020040206646f636b65720770726f63657373\
    05302e312e3080d095ffbc3180d095ffbc3101878e9cb8f0e0c18307196d30303030303030303030\
    3030303030303030303030306d310000000000";
const CMD_SET_NODE_RESOURCES: &str = "\
    0b19773030303030303030303030303030303030303030303077328080808008020106646f636b65\
    72acd095ffbc31";
const CMD_SERVICE_CREATE: &str = "\
    0900197330303030303030303030303030303030303030303030306103776562102f7573722f6269\
    6e2f707974686f6e3302022d6d0b687474702e73657276657201044d4f44450470726f640770726f\
    63657373000201903f5001176e6f64652e6c6162656c732e7a6f6e653d3d61747469638080802080\
    cab5ee01808080408094ebdc0301e80703e0d40301010001092f62696e2f747275658827e8070290\
    4e01047465616d036f7073b81702f4030102020103776562092f62696e2f74727565000006646f63\
    6b657200010000000000000088270000000000904e0100000080d095ffbc318ad095ffbc31010201\
    85d095ffbc31018ad095ffbc311075706461746520636f6d706c65746564";
const CMD_SERVICE_UPDATE: &str = "\
    09011973303030303030303030303030303030303030303030303061037765620a2f62696e2f6661\
    6c7365000006646f636b657200010000000000000088270000000000904e01000000b2d095ffbc31";
const CMD_SERVICE_SCALE: &str = "\
    0902197330303030303030303030303030303030303030303030306103b3d095ffbc31";
const CMD_SERVICE_REMOVE: &str = "\
    09031973303030303030303030303030303030303030303030303061b4d095ffbc31";
const CMD_SERVICE_APPLY_DECISIONS: &str = "\
    09040700187430303030303030303030303030303030303030303030321973303030303030303030\
    30303030303030303030303030306101197730303030303030303030303030303030303030303030\
    773200000001028080802080cab5ee0194d095ffbc319ed095ffbc310000000102020403047a6f6e\
    65000561747469630107808080200100011874303030303030303030303030303030303030303030\
    30321977303030303030303030303030303030303030303030307732021874303030303030303030\
    303030303030303030303030303201010506646f636b657201031874303030303030303030303030\
    30303030303030303030310004187430303030303030303030303030303030303030303030320705\
    18743030303030303030303030303030303030303030303031061874303030303030303030303030\
    3030303030303030303030b5d095ffbc31";
const CMD_SERVICE_TASK_REPORTS: &str = "\
    0905196d303030303030303030303030303030303030303030306d31021874303030303030303030\
    303030303030303030303030303105000001b6d095ffbc3118743030303030303030303030303030\
    303030303030303030070102010665786974203100b7d095ffbc31b8d095ffbc31";
const CMD_SERVICE_ROLLBACK: &str = "\
    09061973303030303030303030303030303030303030303030303061b9d095ffbc31";
const CMD_SERVICE_SET_UPDATE_STATUS: &str = "\
    09071973303030303030303030303030303030303030303030303061010401bad095ffbc31001370\
    61757365643a207461736b206661696c6564bbd095ffbc31";
// Version 2 of the service records (the rollback settings, `--no-healthcheck`, the force
// counter, the older specs): `CMD_SERVICE_CREATE`, `CMD_SERVICE_UPDATE` and `CMD_RESTORE`
// above are version 1's, decoded into the `…V1` types and applied converted.
const CMD_SERVICE_UPDATE_VERDICT: &str = "\
    0908197330303030303030303030303030303030303030303030306103032d757064617465206661\
    696c65643a2032206f662034207461736b732028726174696f20302e35203e20302e3229bdd095ff\
    bc31";
const CMD_SERVICE_CREATE_V2: &str = "\
    0909197330303030303030303030303030303030303030303030306103776562102f7573722f6269\
    6e2f707974686f6e3302022d6d0b687474702e73657276657201044d4f44450470726f640770726f\
    63657373000201903f5001176e6f64652e6c6162656c732e7a6f6e653d3d61747469638080802080\
    cab5ee01808080408094ebdc0301e80703e0d40301010001092f62696e2f747275658827e8070290\
    4e01047465616d036f7073b81702f4030102b0ea01c09a0c03fa010101904ea0c21e000403010377\
    6562102f7573722f62696e2f707974686f6e3302022d6d0b687474702e73657276657201044d4f44\
    450470726f640770726f63657373000201903f5001176e6f64652e6c6162656c732e7a6f6e653d3d\
    61747469638080802080cab5ee01808080408094ebdc0301e80703e0d403010001047465616d036f\
    7073b81702f4030102b0ea01c09a0c03fa010101904ea0c21e010380d095ffbc318ad095ffbc3101\
    020185d095ffbc31018ad095ffbc311075706461746520636f6d706c65746564020103776562092f\
    62696e2f74727565000006646f636b657200010000000000000088270000000000904e0100000088\
    27000100000088270000000203776562102f7573722f62696e2f707974686f6e3302022d6d0b6874\
    74702e73657276657201044d4f44450470726f640770726f63657373000201903f5001176e6f6465\
    2e6c6162656c732e7a6f6e653d3d61747469638080802080cab5ee01808080408094ebdc0301e807\
    03e0d403010001047465616d036f7073b81702f4030102b0ea01c09a0c03fa010101904ea0c21e01\
    03";
const CMD_SERVICE_UPDATE_V2: &str = "\
    090a197330303030303030303030303030303030303030303030306103776562102f7573722f6269\
    6e2f707974686f6e3302022d6d0b687474702e73657276657201044d4f44450470726f640770726f\
    63657373000201903f5001176e6f64652e6c6162656c732e7a6f6e653d3d61747469638080802080\
    cab5ee01808080408094ebdc0301e80703e0d403010001047465616d036f7073b81702f4030102b0\
    ea01c09a0c03fa010101904ea0c21e0103bed095ffbc31";
// Version 3 (`STATE_VERSION` 3): the endpoint mode, the exposed ports and the VIP index.
// `CMD_SERVICE_CREATE_V2`, `CMD_SERVICE_UPDATE_V2` and `CMD_RESTORE_V2` are version 2's,
// decoded into the `…V2` types and applied converted.
const CMD_CREATE_CONFIG: &str = "\
    090d19633030303030303030303030303030303030303030303030610a6e67696e782e636f6e6614\
    776f726b65725f70726f63657373657320313b0a01036170700377656281d095ffbc31";
const CMD_REMOVE_CONFIG: &str = "\
    090e1963303030303030303030303030303030303030303030303061";
const CMD_SERVICE_CREATE_V3: &str = "\
    090b197330303030303030303030303030303030303030303030306103776562102f7573722f6269\
    6e2f707974686f6e3302022d6d0b687474702e73657276657201044d4f44450470726f640770726f\
    63657373000201903f5001176e6f64652e6c6162656c732e7a6f6e653d3d61747469638080802080\
    cab5ee01808080408094ebdc0301e80703e0d40301010001092f62696e2f747275658827e8070290\
    4e01047465616d036f7073b81702f4030102b0ea01c09a0c03fa010101904ea0c21e000400028247\
    83470000000000000000000000030103776562102f7573722f62696e2f707974686f6e3302022d6d\
    0b687474702e73657276657201044d4f44450470726f640770726f63657373000201903f5001176e\
    6f64652e6c6162656c732e7a6f6e653d3d61747469638080802080cab5ee01808080408094ebdc03\
    01e80703e0d403010001047465616d036f7073b81702f4030102b0ea01c09a0c03fa010101904ea0\
    c21e0103000282478347000000000000000000000080d095ffbc318ad095ffbc3101020185d095ff\
    bc31018ad095ffbc311075706461746520636f6d706c65746564020103776562092f62696e2f7472\
    7565000006646f636b657200010000000000000088270000000000904e0100000088270001000000\
    882700000001000300082f7372762f777777042f77777701010464617461052f6461746100020004\
    2f746d70000102092f62696e2f74696e69022d2d0109313030303a3130303001042f737276010670\
    692d77656201010c2f6465762f6770696f6d656d0c2f6465762f6770696f6d656d02727701095359\
    535f524157494f01074e45545f524157010119633030303030303030303030303030303030303030\
    303030610a6e67696e782e636f6e66152f6574632f6e67696e782f6e67696e782e636f6e666565a0\
    020203776562102f7573722f62696e2f707974686f6e3302022d6d0b687474702e73657276657201\
    044d4f44450470726f640770726f63657373000201903f5001176e6f64652e6c6162656c732e7a6f\
    6e653d3d61747469638080802080cab5ee01808080408094ebdc0301e80703e0d403010001047465\
    616d036f7073b81702f4030102b0ea01c09a0c03fa010101904ea0c21e0103000282478347000000\
    00000000000000000105";
const CMD_SERVICE_UPDATE_V3: &str = "\
    090c197330303030303030303030303030303030303030303030306103776562102f7573722f6269\
    6e2f707974686f6e3302022d6d0b687474702e73657276657201044d4f44450470726f640770726f\
    63657373000201903f5001176e6f64652e6c6162656c732e7a6f6e653d3d61747469638080802080\
    cab5ee01808080408094ebdc0301e80703e0d403010001047465616d036f7073b81702f4030102b0\
    ea01c09a0c03fa010101904ea0c21e01030002824783470000000000000000000000bfd095ffbc31";
const CMD_RESTORE_V3: &str = "\
    0d01196330666665653063306666656530633066666565306330666680d095ffbc31043082010204\
    302e030401020501196d303030303030303030303030303030303030303030306d31196d30303030\
    3030303030303030303030303030303030306d310707070707070707070707070707070707070707\
    070707070707070707070707878e9cb8f0e0c183070470692d310d31302e302e302e313a34373437\
    000000000d6c696e75782f616172636836348080808020040206646f636b65720770726f63657373\
    05302e312e3080d095ffbc3180d095ffbc3101878e9cb8f0e0c18307196d30303030303030303030\
    3030303030303030303030306d310001197330303030303030303030303030303030303030303030\
    3061197330303030303030303030303030303030303030303030306103776562102f7573722f6269\
    6e2f707974686f6e3302022d6d0b687474702e73657276657201044d4f44450470726f640770726f\
    63657373000201903f5001176e6f64652e6c6162656c732e7a6f6e653d3d61747469638080802080\
    cab5ee01808080408094ebdc0301e80703e0d40301010001092f62696e2f747275658827e8070290\
    4e01047465616d036f7073b81702f4030102b0ea01c09a0c03fa010101904ea0c21e000400028247\
    83470000000000000000000000030103776562102f7573722f62696e2f707974686f6e3302022d6d\
    0b687474702e73657276657201044d4f44450470726f640770726f63657373000201903f5001176e\
    6f64652e6c6162656c732e7a6f6e653d3d61747469638080802080cab5ee01808080408094ebdc03\
    01e80703e0d403010001047465616d036f7073b81702f4030102b0ea01c09a0c03fa010101904ea0\
    c21e0103000282478347000000000000000000000080d095ffbc318ad095ffbc3101020185d095ff\
    bc31018ad095ffbc311075706461746520636f6d706c65746564020103776562092f62696e2f7472\
    7565000006646f636b657200010000000000000088270000000000904e0100000088270001000000\
    882700000001000300082f7372762f777777042f77777701010464617461052f6461746100020004\
    2f746d70000102092f62696e2f74696e69022d2d0109313030303a3130303001042f737276010670\
    692d77656201010c2f6465762f6770696f6d656d0c2f6465762f6770696f6d656d02727701095359\
    535f524157494f01074e45545f524157010119633030303030303030303030303030303030303030\
    303030610a6e67696e782e636f6e66152f6574632f6e67696e782f6e67696e782e636f6e666565a0\
    020203776562102f7573722f62696e2f707974686f6e3302022d6d0b687474702e73657276657201\
    044d4f44450470726f640770726f63657373000201903f5001176e6f64652e6c6162656c732e7a6f\
    6e653d3d61747469638080802080cab5ee01808080408094ebdc0301e80703e0d403010001047465\
    616d036f7073b81702f4030102b0ea01c09a0c03fa010101904ea0c21e0103000282478347000000\
    0000000000000000010500000000";
const CMD_SERVICE_CREATE_V4: &str = "\
    090f197330303030303030303030303030303030303030303030306103776562102f7573722f6269\
    6e2f707974686f6e3302022d6d0b687474702e73657276657201044d4f44450470726f640770726f\
    63657373000201903f5001176e6f64652e6c6162656c732e7a6f6e653d3d61747469638080802080\
    cab5ee01808080408094ebdc0301e80703e0d403010001047465616d036f7073b81702f4030102b0\
    ea01c09a0c03fa010101904ea0c21e01030002824783470000000000000000000000011a6b303030\
    303030303030303030303030303030303030303030310b64625f70617373776f7264182f72756e2f\
    736563726574732f64625f70617373776f72640046a002030103776562102f7573722f62696e2f70\
    7974686f6e3302022d6d0b687474702e73657276657201044d4f44450470726f640770726f636573\
    73000201903f5001176e6f64652e6c6162656c732e7a6f6e653d3d61747469638080802080cab5ee\
    01808080408094ebdc0301e80703e0d403010001047465616d036f7073b81702f4030102b0ea01c0\
    9a0c03fa010101904ea0c21e010300028247834700000000000000000000000080d095ffbc318ad0\
    95ffbc3101020185d095ffbc31018ad095ffbc311075706461746520636f6d706c65746564020103\
    776562092f62696e2f74727565000006646f636b657200010000000000000088270000000000904e\
    0100000088270001000000882700000001000300082f7372762f777777042f777777010104646174\
    61052f64617461000200042f746d70000102092f62696e2f74696e69022d2d0109313030303a3130\
    303001042f737276010670692d77656201010c2f6465762f6770696f6d656d0c2f6465762f677069\
    6f6d656d02727701095359535f524157494f01074e45545f52415701011963303030303030303030\
    3030303030303030303030303030610a6e67696e782e636f6e66152f6574632f6e67696e782f6e67\
    696e782e636f6e666565a002000203776562102f7573722f62696e2f707974686f6e3302022d6d0b\
    687474702e73657276657201044d4f44450470726f640770726f63657373000201903f5001176e6f\
    64652e6c6162656c732e7a6f6e653d3d61747469638080802080cab5ee01808080408094ebdc0301\
    e80703e0d403010001047465616d036f7073b81702f4030102b0ea01c09a0c03fa010101904ea0c2\
    1e01030002824783470000000000000000000000000105";
const CMD_SERVICE_UPDATE_V4: &str = "\
    0910197330303030303030303030303030303030303030303030306103776562102f7573722f6269\
    6e2f707974686f6e3302022d6d0b687474702e73657276657201044d4f44450470726f640770726f\
    63657373000201903f5001176e6f64652e6c6162656c732e7a6f6e653d3d61747469638080802080\
    cab5ee01808080408094ebdc0301e80703e0d403010001047465616d036f7073b81702f4030102b0\
    ea01c09a0c03fa010101904ea0c21e01030002824783470000000000000000000000011a6b303030\
    303030303030303030303030303030303030303030310b64625f70617373776f7264182f72756e2f\
    736563726574732f64625f70617373776f72640046a002c0d095ffbc31";
const CMD_CREATE_SECRET: &str = "\
    09111a6b303030303030303030303030303030303030303030303030310b64625f70617373776f72\
    64011a636f6d2e646f636b65722e737461636b2e6e616d65737061636504686f6d65c6d095ffbc31\
    070707070707070703030303030303030303030318aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\
    aaaaaaaaaa";
const CMD_REMOVE_SECRET: &str = "\
    09121a6b30303030303030303030303030303030303030303030303031";
const CMD_SHARE_SECRETS_KEY: &str = "\
    091301196d303030303030303030303030303030303030303030306d310707070707070707050505\
    050505050505050505050505050505050505050505050505050505050530bbbbbbbbbbbbbbbbbbbb\
    bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb0119\
    77303030303030303030303030303030303030303030307732";
const CMD_RESTORE_V4: &str = "\
    0e01196330666665653063306666656530633066666565306330666680d095ffbc31043082010204\
    302e030401020501196d303030303030303030303030303030303030303030306d31196d30303030\
    3030303030303030303030303030303030306d310707070707070707070707070707070707070707\
    070707070707070707070707878e9cb8f0e0c183070470692d310d31302e302e302e313a34373437\
    000000000d6c696e75782f616172636836348080808020040206646f636b65720770726f63657373\
    05302e312e3080d095ffbc3180d095ffbc3101878e9cb8f0e0c18307196d30303030303030303030\
    3030303030303030303030306d310001197330303030303030303030303030303030303030303030\
    3061197330303030303030303030303030303030303030303030306103776562102f7573722f6269\
    6e2f707974686f6e3302022d6d0b687474702e73657276657201044d4f44450470726f640770726f\
    63657373000201903f5001176e6f64652e6c6162656c732e7a6f6e653d3d61747469638080802080\
    cab5ee01808080408094ebdc0301e80703e0d40301010001092f62696e2f747275658827e8070290\
    4e01047465616d036f7073b81702f4030102b0ea01c09a0c03fa010101904ea0c21e000400028247\
    8347000000000000000000000000030103776562102f7573722f62696e2f707974686f6e3302022d\
    6d0b687474702e73657276657201044d4f44450470726f640770726f63657373000201903f500117\
    6e6f64652e6c6162656c732e7a6f6e653d3d61747469638080802080cab5ee01808080408094ebdc\
    0301e80703e0d403010001047465616d036f7073b81702f4030102b0ea01c09a0c03fa010101904e\
    a0c21e010300028247834700000000000000000000000080d095ffbc318ad095ffbc3101020185d0\
    95ffbc31018ad095ffbc311075706461746520636f6d706c65746564020103776562092f62696e2f\
    74727565000006646f636b657200010000000000000088270000000000904e010000008827000100\
    0000882700000001000300082f7372762f777777042f77777701010464617461052f646174610002\
    00042f746d70000102092f62696e2f74696e69022d2d0109313030303a3130303001042f73727601\
    0670692d77656201010c2f6465762f6770696f6d656d0c2f6465762f6770696f6d656d0272770109\
    5359535f524157494f01074e45545f52415701011963303030303030303030303030303030303030\
    3030303030610a6e67696e782e636f6e66152f6574632f6e67696e782f6e67696e782e636f6e6665\
    65a002000203776562102f7573722f62696e2f707974686f6e3302022d6d0b687474702e73657276\
    657201044d4f44450470726f640770726f63657373000201903f5001176e6f64652e6c6162656c73\
    2e7a6f6e653d3d61747469638080802080cab5ee01808080408094ebdc0301e80703e0d403010001\
    047465616d036f7073b81702f4030102b0ea01c09a0c03fa010101904ea0c21e0103000282478347\
    000000000000000000000000010500000000000000";
const CMD_SET_NODE_FACILITIES: &str = "\
    0f197730303030303030303030303030303030303030303030773201020c2f6465762f6770696f6d\
    656d0a2f6465762f6932632d31";
const CMD_RESTORE_V2: &str = "\
    0c01196330666665653063306666656530633066666565306330666680d095ffbc31043082010204\
    302e030401020501196d303030303030303030303030303030303030303030306d31196d30303030\
    3030303030303030303030303030303030306d310707070707070707070707070707070707070707\
    070707070707070707070707878e9cb8f0e0c183070470692d310d31302e302e302e313a34373437\
    000000000d6c696e75782f616172636836348080808020040206646f636b65720770726f63657373\
    05302e312e3080d095ffbc3180d095ffbc3101878e9cb8f0e0c18307196d30303030303030303030\
    3030303030303030303030306d310001197330303030303030303030303030303030303030303030\
    3061197330303030303030303030303030303030303030303030306103776562102f7573722f6269\
    6e2f707974686f6e3302022d6d0b687474702e73657276657201044d4f44450470726f640770726f\
    63657373000201903f5001176e6f64652e6c6162656c732e7a6f6e653d3d61747469638080802080\
    cab5ee01808080408094ebdc0301e80703e0d40301010001092f62696e2f747275658827e8070290\
    4e01047465616d036f7073b81702f4030102b0ea01c09a0c03fa010101904ea0c21e000403010377\
    6562102f7573722f62696e2f707974686f6e3302022d6d0b687474702e73657276657201044d4f44\
    450470726f640770726f63657373000201903f5001176e6f64652e6c6162656c732e7a6f6e653d3d\
    61747469638080802080cab5ee01808080408094ebdc0301e80703e0d403010001047465616d036f\
    7073b81702f4030102b0ea01c09a0c03fa010101904ea0c21e010380d095ffbc318ad095ffbc3101\
    020185d095ffbc31018ad095ffbc311075706461746520636f6d706c65746564020103776562092f\
    62696e2f74727565000006646f636b657200010000000000000088270000000000904e0100000088\
    27000100000088270000000203776562102f7573722f62696e2f707974686f6e3302022d6d0b6874\
    74702e73657276657201044d4f44450470726f640770726f63657373000201903f5001176e6f6465\
    2e6c6162656c732e7a6f6e653d3d61747469638080802080cab5ee01808080408094ebdc0301e807\
    03e0d403010001047465616d036f7073b81702f4030102b0ea01c09a0c03fa010101904ea0c21e01\
    03000000";

#[test]
fn raft_log_commands_keep_their_bytes() {
    let mut g = Golden::default();
    let node_commands = [
        (
            "CMD_INIT_CLUSTER",
            Command::InitCluster {
                cluster: cluster_record(),
                node: manager_record(),
            },
            CMD_INIT_CLUSTER,
        ),
        (
            "CMD_UPSERT_NODE",
            Command::UpsertNode(worker_record()),
            CMD_UPSERT_NODE,
        ),
        (
            "CMD_SET_NODE_STATUS",
            Command::SetNodeStatus {
                id: WORKER_ID.into(),
                status: NodeStatus::Down,
                at: T0 + 40,
            },
            CMD_SET_NODE_STATUS,
        ),
        (
            "CMD_SET_NODE_ADDR",
            Command::SetNodeAddr {
                id: WORKER_ID.into(),
                addr: "10.0.0.22:4747".into(),
                at: T0 + 41,
            },
            CMD_SET_NODE_ADDR,
        ),
        (
            "CMD_UPDATE_NODE",
            Command::UpdateNode {
                id: WORKER_ID.into(),
                availability: Some(Availability::Pause),
                label_add: BTreeMap::from([("zone".into(), "cellar".into())]),
                label_rm: vec!["old".into()],
                at: T0 + 42,
            },
            CMD_UPDATE_NODE,
        ),
        (
            "CMD_ROTATE_TOKEN",
            Command::RotateToken { role: Role::Worker },
            CMD_ROTATE_TOKEN,
        ),
        (
            "CMD_REMOVE_NODE",
            Command::RemoveNode {
                id: WORKER_ID.into(),
            },
            CMD_REMOVE_NODE,
        ),
        (
            "CMD_ADMIT_NODE",
            Command::AdmitNode(worker_record()),
            CMD_ADMIT_NODE,
        ),
        (
            "CMD_SET_ROLE",
            Command::SetRole {
                id: WORKER_ID.into(),
                role: Role::Manager,
                at: T0 + 43,
            },
            CMD_SET_ROLE,
        ),
        (
            "CMD_RESTORE",
            Command::Restore(Box::new(small_state_v1())),
            CMD_RESTORE,
        ),
        (
            "CMD_SET_NODE_RESOURCES",
            Command::SetNodeResources {
                id: WORKER_ID.into(),
                memory_bytes: 2 << 30,
                cpus: 2,
                drivers: vec!["docker".into()],
                at: T0 + 44,
            },
            CMD_SET_NODE_RESOURCES,
        ),
        (
            "CMD_RESTORE_V2",
            Command::RestoreV2(Box::new(state_v2(&restore_state()))),
            CMD_RESTORE_V2,
        ),
        (
            "CMD_RESTORE_V3",
            Command::RestoreV3(Box::new(state_v3(&restore_state()))),
            CMD_RESTORE_V3,
        ),
        (
            "CMD_RESTORE_V4",
            Command::RestoreV4(Box::new(restore_state())),
            CMD_RESTORE_V4,
        ),
        (
            "CMD_SET_NODE_FACILITIES",
            Command::SetNodeFacilities {
                id: WORKER_ID.into(),
                facilities: node_facilities(),
            },
            CMD_SET_NODE_FACILITIES,
        ),
    ];
    let service_commands = [
        (
            "CMD_SERVICE_CREATE",
            ServiceCommand::Create(Box::new(service_record_v1())),
            CMD_SERVICE_CREATE,
        ),
        (
            "CMD_SERVICE_UPDATE",
            ServiceCommand::Update {
                id: SERVICE_ID.into(),
                spec: Box::new(spec_v1("web", "/bin/false")),
                at: T0 + 50,
            },
            CMD_SERVICE_UPDATE,
        ),
        (
            "CMD_SERVICE_SCALE",
            ServiceCommand::Scale {
                id: SERVICE_ID.into(),
                replicas: 3,
                at: T0 + 51,
            },
            CMD_SERVICE_SCALE,
        ),
        (
            "CMD_SERVICE_REMOVE",
            ServiceCommand::Remove {
                id: SERVICE_ID.into(),
                at: T0 + 52,
            },
            CMD_SERVICE_REMOVE,
        ),
        (
            "CMD_SERVICE_APPLY_DECISIONS",
            ServiceCommand::ApplyDecisions {
                decisions: vec![
                    Decision::CreateTask(pending_task()),
                    Decision::Assign {
                        task: TaskId("t00000000000000000000002".into()),
                        node: WORKER_ID.into(),
                    },
                    Decision::UpdatePending {
                        task: TaskId("t00000000000000000000002".into()),
                        reason: PendingReason {
                            total_nodes: 1,
                            failures: vec![FilterCount {
                                filter: FilterFailure::MissingDriver("docker".into()),
                                nodes: 1,
                            }],
                        },
                    },
                    Decision::Shutdown {
                        task: TaskId("t00000000000000000000001".into()),
                        reason: ShutdownReason::ScaledDown,
                    },
                    Decision::Cancel {
                        task: TaskId("t00000000000000000000002".into()),
                        reason: ShutdownReason::ServiceRemoved,
                    },
                    Decision::MarkOrphaned {
                        task: TaskId("t00000000000000000000001".into()),
                    },
                    Decision::RemoveTask {
                        task: TaskId("t00000000000000000000000".into()),
                    },
                ],
                now: T0 + 53,
            },
            CMD_SERVICE_APPLY_DECISIONS,
        ),
        (
            "CMD_SERVICE_TASK_REPORTS",
            ServiceCommand::TaskReports {
                node_id: MANAGER_ID.into(),
                reports: vec![
                    crate::manager::services::TaskReport {
                        task_id: "t00000000000000000000001".into(),
                        state: shoal_scheduler::TaskState::Running,
                        exit_code: None,
                        error: None,
                        health: TaskHealth::Starting,
                        at_ms: T0 + 54,
                    },
                    crate::manager::services::TaskReport {
                        task_id: "t00000000000000000000000".into(),
                        state: shoal_scheduler::TaskState::Failed,
                        exit_code: Some(1),
                        error: Some("exit 1".into()),
                        health: TaskHealth::None,
                        at_ms: T0 + 55,
                    },
                ],
                at: T0 + 56,
            },
            CMD_SERVICE_TASK_REPORTS,
        ),
        (
            "CMD_SERVICE_ROLLBACK",
            ServiceCommand::Rollback {
                id: SERVICE_ID.into(),
                at: T0 + 57,
            },
            CMD_SERVICE_ROLLBACK,
        ),
        (
            "CMD_SERVICE_SET_UPDATE_STATUS",
            ServiceCommand::SetUpdateStatus {
                id: SERVICE_ID.into(),
                status: Some(UpdateStatus {
                    state: UpdateState::RollbackPaused,
                    started_at: Some(T0 + 58),
                    completed_at: None,
                    message: "paused: task failed".into(),
                }),
                at: T0 + 59,
            },
            CMD_SERVICE_SET_UPDATE_STATUS,
        ),
        (
            "CMD_SERVICE_UPDATE_VERDICT",
            ServiceCommand::UpdateVerdict {
                id: SERVICE_ID.into(),
                version: 3,
                state: UpdateState::RollbackStarted,
                message: "update failed: 2 of 4 tasks (ratio 0.5 > 0.2)".into(),
                at: T0 + 61,
            },
            CMD_SERVICE_UPDATE_VERDICT,
        ),
        (
            "CMD_SERVICE_CREATE_V2",
            ServiceCommand::CreateV2(Box::new(record_v2(&service_record()))),
            CMD_SERVICE_CREATE_V2,
        ),
        (
            "CMD_SERVICE_UPDATE_V2",
            ServiceCommand::UpdateV2 {
                id: SERVICE_ID.into(),
                spec: Box::new(spec_v2(&service_spec_no_health())),
                at: T0 + 62,
            },
            CMD_SERVICE_UPDATE_V2,
        ),
        (
            "CMD_SERVICE_CREATE_V3",
            ServiceCommand::CreateV3(Box::new(record_v3(&service_record()))),
            CMD_SERVICE_CREATE_V3,
        ),
        (
            "CMD_SERVICE_UPDATE_V3",
            ServiceCommand::UpdateV3 {
                id: SERVICE_ID.into(),
                spec: Box::new(spec_v3(&service_spec_no_health())),
                at: T0 + 63,
            },
            CMD_SERVICE_UPDATE_V3,
        ),
        (
            "CMD_CREATE_CONFIG",
            ServiceCommand::CreateConfig(Box::new(config_record())),
            CMD_CREATE_CONFIG,
        ),
        (
            "CMD_REMOVE_CONFIG",
            ServiceCommand::RemoveConfig {
                id: CONFIG_ID.into(),
            },
            CMD_REMOVE_CONFIG,
        ),
        (
            "CMD_SERVICE_CREATE_V4",
            ServiceCommand::create(ServiceRecord {
                spec: service_spec_with_secret(),
                ..service_record()
            }),
            CMD_SERVICE_CREATE_V4,
        ),
        (
            "CMD_SERVICE_UPDATE_V4",
            ServiceCommand::update(SERVICE_ID, service_spec_with_secret(), T0 + 64),
            CMD_SERVICE_UPDATE_V4,
        ),
        (
            "CMD_CREATE_SECRET",
            ServiceCommand::CreateSecret(Box::new(secret_record())),
            CMD_CREATE_SECRET,
        ),
        (
            "CMD_REMOVE_SECRET",
            ServiceCommand::RemoveSecret {
                id: secret_record().id,
            },
            CMD_REMOVE_SECRET,
        ),
        (
            "CMD_SHARE_SECRETS_KEY",
            ServiceCommand::ShareSecretsKey {
                set: BTreeMap::from([(MANAGER_ID.into(), sealed_key())]),
                drop: vec![WORKER_ID.into()],
            },
            CMD_SHARE_SECRETS_KEY,
        ),
    ];
    let all = node_commands.into_iter().chain(
        service_commands
            .into_iter()
            .map(|(name, cmd, golden)| (name, Command::Services(cmd), golden)),
    );
    for (name, cmd, golden) in all {
        g.plain(name, &cmd, golden);
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Raft storage: log entries, vote, committed, purged, snapshots (raft.redb)
// ---------------------------------------------------------------------------------------------

const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("raft_log");
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("raft_meta");

// When one of these fails: these are the rows of `raft.redb` on every manager. An entry is
// `postcard(openraft::Entry)` with no version byte of its own (its command keeps old bytes
// decodable by the append-only rule above); an openraft upgrade that changes its serde
// needs a migration of the database.
pub(crate) const ENTRY_NORMAL: &str = "\
    0301070102197730303030303030303030303030303030303030303030773200bcd095ffbc31";
pub(crate) const ENTRY_BLANK: &str = "\
    03010500";
pub(crate) const ENTRY_MEMBERSHIP: &str = "\
    03010602010301020303010203";
pub(crate) const META_VOTE: &str = "\
    030101";
pub(crate) const META_COMMITTED: &str = "\
    01030107";
pub(crate) const META_PURGED: &str = "\
    01030104";

fn entries() -> [(&'static str, Entry, &'static str); 3] {
    [
        (
            "ENTRY_BLANK",
            Entry {
                log_id: log_id(3, 1, 5),
                payload: EntryPayload::Blank,
            },
            ENTRY_BLANK,
        ),
        (
            "ENTRY_MEMBERSHIP",
            Entry {
                log_id: log_id(3, 1, 6),
                payload: EntryPayload::Membership(membership()),
            },
            ENTRY_MEMBERSHIP,
        ),
        (
            "ENTRY_NORMAL",
            Entry {
                log_id: log_id(3, 1, 7),
                payload: EntryPayload::Normal(Command::SetNodeStatus {
                    id: WORKER_ID.into(),
                    status: NodeStatus::Ready,
                    at: T0 + 60,
                }),
            },
            ENTRY_NORMAL,
        ),
    ]
}

/// A row of `raft_meta`, as the store wrote it.
fn read_meta_row(db: &redb::Database, key: &str) -> Vec<u8> {
    let tx = db.begin_read().expect("read tx");
    let table = tx.open_table(META).expect("table");
    table
        .get(key)
        .expect("get")
        .map(|v| v.value().to_vec())
        .unwrap_or_default()
}

/// Writes checked-in bytes as a row of `raft_log` (by index) or `raft_meta` (by key).
fn write_row(db: &redb::Database, index: Option<u64>, key: &str, value: &[u8]) {
    let tx = db.begin_write().expect("write tx");
    match index {
        Some(i) => {
            let mut table = tx.open_table(LOG).expect("table");
            table.insert(i, value).expect("insert");
        }
        None => {
            let mut table = tx.open_table(META).expect("table");
            table.insert(key, value).expect("insert");
        }
    }
    tx.commit().expect("commit");
}

#[tokio::test]
async fn raft_storage_rows_keep_their_bytes() {
    let mut g = Golden::default();
    let dir = tempfile::tempdir().expect("tempdir");

    // Log entries: written as `LogStore::append` encodes them, read back through the store.
    let db = open_db(&dir.path().join("log.redb")).expect("db");
    for (name, entry, golden) in entries() {
        g.bytes(name, &postcard::to_stdvec(&entry).expect("encode"), golden);
        write_row(&db, Some(entry.log_id.index), "", &unhex(golden));
    }
    let mut store = LogStore::new(db.clone());
    match store.try_get_log_entries(5..8).await {
        Ok(back) => {
            let want: Vec<Entry> = entries().into_iter().map(|(_, e, _)| e).collect();
            if format!("{back:?}") != format!("{want:?}") {
                g.fail("ENTRY_*", format_args!("decode to {back:?}"));
            }
        }
        Err(e) => g.fail("ENTRY_*", format_args!("no longer decode: {e}")),
    }

    // Vote, committed and purged: written by the store itself.
    let vote = Vote::new_committed(3, 1);
    store.save_vote(&vote).await.expect("save vote");
    store
        .save_committed(Some(log_id(3, 1, 7)))
        .await
        .expect("save committed");
    store.purge(log_id(3, 1, 4)).await.expect("purge");
    for (name, key, golden) in [
        ("META_VOTE", "vote", META_VOTE),
        ("META_COMMITTED", "committed", META_COMMITTED),
        ("META_PURGED", "last_purged", META_PURGED),
    ] {
        g.bytes(name, &read_meta_row(&db, key), golden);
    }
    let db = open_db(&dir.path().join("meta.redb")).expect("db");
    write_row(&db, None, "vote", &unhex(META_VOTE));
    write_row(&db, None, "committed", &unhex(META_COMMITTED));
    write_row(&db, None, "last_purged", &unhex(META_PURGED));
    let mut store = LogStore::new(db);
    match store.read_vote().await {
        Ok(Some(v)) if v == vote => {}
        other => g.fail("META_VOTE", format_args!("decodes to {other:?}")),
    }
    match store.read_committed().await {
        Ok(Some(c)) if c == log_id(3, 1, 7) => {}
        other => g.fail("META_COMMITTED", format_args!("decodes to {other:?}")),
    }
    match store.get_log_state().await {
        Ok(s) if s.last_purged_log_id == Some(log_id(3, 1, 4)) => {}
        other => g.fail("META_PURGED", format_args!("decodes to {other:?}")),
    }
    g.finish();
}

/// The `last_purged` row is read back as it was written: a manager whose log was ever purged
/// (after ~1200 commands) restarts. It did not, before this row was decoded as `Option`.
#[tokio::test]
async fn raft_log_purged_then_manager_restarts() {
    use crate::manager::Manager;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("raft.redb");
    let id = crate::manager::raft_id_for(&[7; 32]);
    let deadline = std::time::Duration::from_secs(10);
    let m = Manager::open(&path, id, "c1", 1.0).await.expect("open");
    m.initialize().await.expect("initialize");
    m.raft()
        .wait(Some(deadline))
        .current_leader(id, "leader")
        .await
        .expect("leader");
    let init = Command::InitCluster {
        cluster: cluster_record(),
        node: manager_record(),
    };
    m.write(init).await.expect("init");
    let rotate = || Command::RotateToken { role: Role::Worker };
    for _ in 0..20 {
        m.write(rotate()).await.expect("rotate");
    }
    m.raft().trigger().snapshot().await.expect("snapshot");
    let metrics = m
        .raft()
        .wait(Some(deadline))
        .metrics(
            |x| x.snapshot.is_some() && x.snapshot == x.last_applied,
            "snapshot",
        )
        .await
        .expect("snapshot taken");
    let upto = metrics.snapshot.map(|s| s.index).unwrap_or_default() - 5;
    m.raft().trigger().purge_log(upto).await.expect("purge");
    m.raft()
        .wait(Some(deadline))
        .metrics(|x| x.purged.is_some(), "purged")
        .await
        .expect("purged");
    m.shutdown().await;
    drop(m);

    let m = Manager::open(&path, id, "c1", 1.0)
        .await
        .expect("a manager with a purged log opens again");
    m.raft()
        .wait(Some(deadline))
        .current_leader(id, "leader again")
        .await
        .expect("leader again");
    // The state survived (generation 1 + 20 rotations) and the log goes on.
    assert_eq!(
        m.write(rotate()).await.expect("write"),
        CommandResult::Generation(22)
    );
    m.shutdown().await;
}

// When one of these fails: every manager's `raft.redb` holds a snapshot, and a leader sends
// it to new managers. `ClusterState` starts with `STATE_VERSION`: a change to it, or to any
// type inside it, bumps `STATE_VERSION`, keeps the old types to decode the old version and
// converts them (a migration in `ClusterState::decode`). `Command::Restore` embeds the state
// without that byte: such a change also needs a new `Restore` variant.
pub(crate) const STATE_FULL: &str = "\
    0101196330666665653063306666656530633066666565306330666680d095ffbc31043082010204\
    302e030401020502196d303030303030303030303030303030303030303030306d31196d30303030\
    3030303030303030303030303030303030306d310707070707070707070707070707070707070707\
    070707070707070707070707878e9cb8f0e0c183070470692d310d31302e302e302e313a34373437\
    000000000d6c696e75782f616172636836348080808020040206646f636b65720770726f63657373\
    05302e312e3080d095ffbc3180d095ffbc3119773030303030303030303030303030303030303030\
    30307732197730303030303030303030303030303030303030303030773208080808080808080808\
    080808080808080808080808080808080808080808088890a0c080818284080470692d320d31302e\
    302e302e323a3437343701020101047a6f6e650561747469630c6c696e75782f7838365f36348080\
    80800401010770726f6365737305302e312e3081d095ffbc3182d095ffbc3101878e9cb8f0e0c183\
    07196d303030303030303030303030303030303030303030306d3101090909090909090909090909\
    09090909090909090909090909090909090909090119733030303030303030303030303030303030\
    30303030303061197330303030303030303030303030303030303030303030306103776562102f75\
    73722f62696e2f707974686f6e3302022d6d0b687474702e73657276657201044d4f44450470726f\
    640770726f63657373000201903f5001176e6f64652e6c6162656c732e7a6f6e653d3d6174746963\
    8080802080cab5ee01808080408094ebdc0301e80703e0d40301010001092f62696e2f7472756588\
    27e80702904e01047465616d036f7073b81702f4030102020103776562092f62696e2f7472756500\
    0006646f636b657200010000000000000088270000000000904e0100000080d095ffbc318ad095ff\
    bc3101020185d095ffbc31018ad095ffbc311075706461746520636f6d706c657465640318743030\
    30303030303030303030303030303030303030303018743030303030303030303030303030303030\
    303030303030197330303030303030303030303030303030303030303030306100010001196d3030\
    30303030303030303030303030303030303030306d310107028080802080cab5ee0194d095ffbc31\
    9ed095ffbc31018ed095ffbc3101920201197461736b20657869746564207769746820636f646520\
    31333700001874303030303030303030303030303030303030303030303118743030303030303030\
    30303030303030303030303030303119733030303030303030303030303030303030303030303030\
    6100010101196d303030303030303030303030303030303030303030306d310005028080802080ca\
    b5ee0194d095ffbc319ed095ffbc3100000000018fd095ffbc311874303030303030303030303030\
    30303030303030303030321874303030303030303030303030303030303030303030303219733030\
    30303030303030303030303030303030303030303061011977303030303030303030303030303030\
    30303030303030773200000001028080802080cab5ee0194d095ffbc319ed095ffbc310000000102\
    020403047a6f6e650005617474696301078080802001000119733030303030303030303030303030\
    303030303030303030621973303030303030303030303030303030303030303030303062036f6c64\
    076e67696e783a31000006646f636b657200010000000000000088270000000000904e0100000002\
    0080d095ffbc318ad095ffbc31000118743030303030303030303030303030303030303030303031\
    02";
const SNAPSHOT_DATA: &str = "\
    01030107010301060103010203030102038302010119633066666565306330666665653063306666\
    6565306330666680d095ffbc31043082010204302e030401020501196d3030303030303030303030\
    30303030303030303030306d31196d303030303030303030303030303030303030303030306d3107\
    07070707070707070707070707070707070707070707070707070707070707878e9cb8f0e0c18307\
    0470692d310d31302e302e302e313a34373437000000000d6c696e75782f61617263683634808080\
    8020040206646f636b65720770726f6365737305302e312e3080d095ffbc3180d095ffbc3101878e\
    9cb8f0e0c18307196d303030303030303030303030303030303030303030306d310000000000";
pub(crate) const SNAPSHOT_STORED: &str = "\
    01030107010301060103010203030102030b54332d4e312d372d3237389602010301070103010601\
    030102030301020383020101196330666665653063306666656530633066666565306330666680d0\
    95ffbc31043082010204302e030401020501196d3030303030303030303030303030303030303030\
    30306d31196d303030303030303030303030303030303030303030306d3107070707070707070707\
    07070707070707070707070707070707070707070707878e9cb8f0e0c183070470692d310d31302e\
    302e302e313a34373437000000000d6c696e75782f616172636836348080808020040206646f636b\
    65720770726f6365737305302e312e3080d095ffbc3180d095ffbc3101878e9cb8f0e0c18307196d\
    303030303030303030303030303030303030303030306d310000000000";

// Version 2 (`STATE_VERSION` 2): the service records' later fields. `STATE_FULL`,
// `SNAPSHOT_DATA` and `SNAPSHOT_STORED` above are version 1's: they still load, converted.
pub(crate) const STATE_FULL_V2: &str = "\
    0201196330666665653063306666656530633066666565306330666680d095ffbc31043082010204\
    302e030401020502196d303030303030303030303030303030303030303030306d31196d30303030\
    3030303030303030303030303030303030306d310707070707070707070707070707070707070707\
    070707070707070707070707878e9cb8f0e0c183070470692d310d31302e302e302e313a34373437\
    000000000d6c696e75782f616172636836348080808020040206646f636b65720770726f63657373\
    05302e312e3080d095ffbc3180d095ffbc3119773030303030303030303030303030303030303030\
    30307732197730303030303030303030303030303030303030303030773208080808080808080808\
    080808080808080808080808080808080808080808088890a0c080818284080470692d320d31302e\
    302e302e323a3437343701020101047a6f6e650561747469630c6c696e75782f7838365f36348080\
    80800401010770726f6365737305302e312e3081d095ffbc3182d095ffbc3101878e9cb8f0e0c183\
    07196d303030303030303030303030303030303030303030306d3101090909090909090909090909\
    09090909090909090909090909090909090909090119733030303030303030303030303030303030\
    30303030303061197330303030303030303030303030303030303030303030306103776562102f75\
    73722f62696e2f707974686f6e3302022d6d0b687474702e73657276657201044d4f44450470726f\
    640770726f63657373000201903f5001176e6f64652e6c6162656c732e7a6f6e653d3d6174746963\
    8080802080cab5ee01808080408094ebdc0301e80703e0d40301010001092f62696e2f7472756588\
    27e80702904e01047465616d036f7073b81702f4030102b0ea01c09a0c03fa010101904ea0c21e00\
    04030103776562102f7573722f62696e2f707974686f6e3302022d6d0b687474702e736572766572\
    01044d4f44450470726f640770726f63657373000201903f5001176e6f64652e6c6162656c732e7a\
    6f6e653d3d61747469638080802080cab5ee01808080408094ebdc0301e80703e0d4030100010474\
    65616d036f7073b81702f4030102b0ea01c09a0c03fa010101904ea0c21e010380d095ffbc318ad0\
    95ffbc3101020185d095ffbc31018ad095ffbc311075706461746520636f6d706c65746564020103\
    776562092f62696e2f74727565000006646f636b657200010000000000000088270000000000904e\
    010000008827000100000088270000000203776562102f7573722f62696e2f707974686f6e330202\
    2d6d0b687474702e73657276657201044d4f44450470726f640770726f63657373000201903f5001\
    176e6f64652e6c6162656c732e7a6f6e653d3d61747469638080802080cab5ee01808080408094eb\
    dc0301e80703e0d403010001047465616d036f7073b81702f4030102b0ea01c09a0c03fa01010190\
    4ea0c21e010303187430303030303030303030303030303030303030303030301874303030303030\
    30303030303030303030303030303030301973303030303030303030303030303030303030303030\
    30306100010001196d303030303030303030303030303030303030303030306d3101070280808020\
    80cab5ee0194d095ffbc319ed095ffbc31018ed095ffbc3101920201197461736b20657869746564\
    207769746820636f6465203133370000187430303030303030303030303030303030303030303030\
    31187430303030303030303030303030303030303030303030311973303030303030303030303030\
    30303030303030303030306100010101196d30303030303030303030303030303030303030303030\
    6d310005028080802080cab5ee0194d095ffbc319ed095ffbc3100000000018fd095ffbc31187430\
    30303030303030303030303030303030303030303032187430303030303030303030303030303030\
    30303030303032197330303030303030303030303030303030303030303030306101197730303030\
    303030303030303030303030303030303030773200000001028080802080cab5ee0194d095ffbc31\
    9ed095ffbc310000000102020403047a6f6e65000561747469630107808080200100011973303030\
    30303030303030303030303030303030303030306219733030303030303030303030303030303030\
    30303030303062036f6c64076e67696e783a31000006646f636b6572000100000000000000882700\
    00000000904e01000000882700010000008827000000030080d095ffbc318ad095ffbc3100000118\
    74303030303030303030303030303030303030303030303102";
const SNAPSHOT_DATA_V4: &str = "\
    01030107010301060103010203030102038702040119633066666565306330666665653063306666\
    6565306330666680d095ffbc31043082010204302e030401020501196d3030303030303030303030\
    30303030303030303030306d31196d303030303030303030303030303030303030303030306d3107\
    07070707070707070707070707070707070707070707070707070707070707878e9cb8f0e0c18307\
    0470692d310d31302e302e302e313a34373437000000000d6c696e75782f61617263683634808080\
    8020040206646f636b65720770726f6365737305302e312e3080d095ffbc3180d095ffbc3101878e\
    9cb8f0e0c18307196d303030303030303030303030303030303030303030306d3100000000000000\
    0000";
pub(crate) const SNAPSHOT_STORED_V4: &str = "\
    01030107010301060103010203030102030b54332d4e312d372d3238329a02010301070103010601\
    030102030301020387020401196330666665653063306666656530633066666565306330666680d0\
    95ffbc31043082010204302e030401020501196d3030303030303030303030303030303030303030\
    30306d31196d303030303030303030303030303030303030303030306d3107070707070707070707\
    07070707070707070707070707070707070707070707878e9cb8f0e0c183070470692d310d31302e\
    302e302e313a34373437000000000d6c696e75782f616172636836348080808020040206646f636b\
    65720770726f6365737305302e312e3080d095ffbc3180d095ffbc3101878e9cb8f0e0c18307196d\
    303030303030303030303030303030303030303030306d31000000000000000000";
const SNAPSHOT_DATA_V3: &str = "\
    01030107010301060103010203030102038402030119633066666565306330666665653063306666\
    6565306330666680d095ffbc31043082010204302e030401020501196d3030303030303030303030\
    30303030303030303030306d31196d303030303030303030303030303030303030303030306d3107\
    07070707070707070707070707070707070707070707070707070707070707878e9cb8f0e0c18307\
    0470692d310d31302e302e302e313a34373437000000000d6c696e75782f61617263683634808080\
    8020040206646f636b65720770726f6365737305302e312e3080d095ffbc3180d095ffbc3101878e\
    9cb8f0e0c18307196d303030303030303030303030303030303030303030306d31000000000000";
pub(crate) const SNAPSHOT_STORED_V3: &str = "\
    01030107010301060103010203030102030b54332d4e312d372d3237399702010301070103010601\
    030102030301020384020301196330666665653063306666656530633066666565306330666680d0\
    95ffbc31043082010204302e030401020501196d3030303030303030303030303030303030303030\
    30306d31196d303030303030303030303030303030303030303030306d3107070707070707070707\
    07070707070707070707070707070707070707070707878e9cb8f0e0c183070470692d310d31302e\
    302e302e313a34373437000000000d6c696e75782f616172636836348080808020040206646f636b\
    65720770726f6365737305302e312e3080d095ffbc3180d095ffbc3101878e9cb8f0e0c18307196d\
    303030303030303030303030303030303030303030306d31000000000000";
const SNAPSHOT_DATA_V2: &str = "\
    01030107010301060103010203030102038302020119633066666565306330666665653063306666\
    6565306330666680d095ffbc31043082010204302e030401020501196d3030303030303030303030\
    30303030303030303030306d31196d303030303030303030303030303030303030303030306d3107\
    07070707070707070707070707070707070707070707070707070707070707878e9cb8f0e0c18307\
    0470692d310d31302e302e302e313a34373437000000000d6c696e75782f61617263683634808080\
    8020040206646f636b65720770726f6365737305302e312e3080d095ffbc3180d095ffbc3101878e\
    9cb8f0e0c18307196d303030303030303030303030303030303030303030306d310000000000";
pub(crate) const SNAPSHOT_STORED_V2: &str = "\
    01030107010301060103010203030102030b54332d4e312d372d3237389602010301070103010601\
    030102030301020383020201196330666665653063306666656530633066666565306330666680d0\
    95ffbc31043082010204302e030401020501196d3030303030303030303030303030303030303030\
    30306d31196d303030303030303030303030303030303030303030306d3107070707070707070707\
    07070707070707070707070707070707070707070707878e9cb8f0e0c183070470692d310d31302e\
    302e302e313a34373437000000000d6c696e75782f616172636836348080808020040206646f636b\
    65720770726f6365737305302e312e3080d095ffbc3180d095ffbc3101878e9cb8f0e0c18307196d\
    303030303030303030303030303030303030303030306d310000000000";

// Version 3: the endpoint mode, the exposed ports and the VIP index. `STATE_FULL_V2` above
// is version 2's: it still loads, converted.
pub(crate) const STATE_FULL_V4: &str = "\
    0401196330666665653063306666656530633066666565306330666680d095ffbc31043082010204\
    302e030401020502196d303030303030303030303030303030303030303030306d31196d30303030\
    3030303030303030303030303030303030306d310707070707070707070707070707070707070707\
    070707070707070707070707878e9cb8f0e0c183070470692d310d31302e302e302e313a34373437\
    000000000d6c696e75782f616172636836348080808020040206646f636b65720770726f63657373\
    05302e312e3080d095ffbc3180d095ffbc3119773030303030303030303030303030303030303030\
    30307732197730303030303030303030303030303030303030303030773208080808080808080808\
    080808080808080808080808080808080808080808088890a0c080818284080470692d320d31302e\
    302e302e323a3437343701020101047a6f6e650561747469630c6c696e75782f7838365f36348080\
    80800401010770726f6365737305302e312e3081d095ffbc3182d095ffbc3101878e9cb8f0e0c183\
    07196d303030303030303030303030303030303030303030306d3101090909090909090909090909\
    09090909090909090909090909090909090909090119733030303030303030303030303030303030\
    30303030303061197330303030303030303030303030303030303030303030306103776562102f75\
    73722f62696e2f707974686f6e3302022d6d0b687474702e73657276657201044d4f44450470726f\
    640770726f63657373000201903f5001176e6f64652e6c6162656c732e7a6f6e653d3d6174746963\
    8080802080cab5ee01808080408094ebdc0301e80703e0d403010001047465616d036f7073b81702\
    f4030102b0ea01c09a0c03fa010101904ea0c21e0103000282478347000000000000000000000001\
    1a6b303030303030303030303030303030303030303030303030310b64625f70617373776f726418\
    2f72756e2f736563726574732f64625f70617373776f72640046a002030103776562102f7573722f\
    62696e2f707974686f6e3302022d6d0b687474702e73657276657201044d4f44450470726f640770\
    726f63657373000201903f5001176e6f64652e6c6162656c732e7a6f6e653d3d6174746963808080\
    2080cab5ee01808080408094ebdc0301e80703e0d403010001047465616d036f7073b81702f40301\
    02b0ea01c09a0c03fa010101904ea0c21e010300028247834700000000000000000000000080d095\
    ffbc318ad095ffbc3101020185d095ffbc31018ad095ffbc311075706461746520636f6d706c6574\
    6564020103776562092f62696e2f74727565000006646f636b657200010000000000000088270000\
    000000904e0100000088270001000000882700000001000300082f7372762f777777042f77777701\
    010464617461052f64617461000200042f746d70000102092f62696e2f74696e69022d2d01093130\
    30303a3130303001042f737276010670692d77656201010c2f6465762f6770696f6d656d0c2f6465\
    762f6770696f6d656d02727701095359535f524157494f01074e45545f5241570101196330303030\
    30303030303030303030303030303030303030610a6e67696e782e636f6e66152f6574632f6e6769\
    6e782f6e67696e782e636f6e666565a002000203776562102f7573722f62696e2f707974686f6e33\
    02022d6d0b687474702e73657276657201044d4f44450470726f640770726f63657373000201903f\
    5001176e6f64652e6c6162656c732e7a6f6e653d3d61747469638080802080cab5ee018080804080\
    94ebdc0301e80703e0d403010001047465616d036f7073b81702f4030102b0ea01c09a0c03fa0101\
    01904ea0c21e01030002824783470000000000000000000000000105031874303030303030303030\
    30303030303030303030303030301874303030303030303030303030303030303030303030303019\
    7330303030303030303030303030303030303030303030306100010001196d303030303030303030\
    303030303030303030303030306d310107028080802080cab5ee0194d095ffbc319ed095ffbc3101\
    8ed095ffbc3101920201197461736b20657869746564207769746820636f64652031333700001874\
    30303030303030303030303030303030303030303030311874303030303030303030303030303030\
    3030303030303031197330303030303030303030303030303030303030303030306100010101196d\
    303030303030303030303030303030303030303030306d310005028080802080cab5ee0194d095ff\
    bc319ed095ffbc3100000000018fd095ffbc31187430303030303030303030303030303030303030\
    30303032187430303030303030303030303030303030303030303030321973303030303030303030\
    30303030303030303030303030306101197730303030303030303030303030303030303030303030\
    773200000001028080802080cab5ee0194d095ffbc319ed095ffbc310000000102020403047a6f6e\
    65000561747469630107808080200100011973303030303030303030303030303030303030303030\
    3030621973303030303030303030303030303030303030303030303062036f6c64076e67696e783a\
    31000006646f636b657200010000000000000088270000000000904e010000008827000100000088\
    270000000000000000000000000000000000030080d095ffbc318ad095ffbc310000010501187430\
    30303030303030303030303030303030303030303031020119633030303030303030303030303030\
    3030303030303030306119633030303030303030303030303030303030303030303030610a6e6769\
    6e782e636f6e6614776f726b65725f70726f63657373657320313b0a01036170700377656281d095\
    ffbc31011a6b303030303030303030303030303030303030303030303030311a6b30303030303030\
    3030303030303030303030303030303030310b64625f70617373776f7264011a636f6d2e646f636b\
    65722e737461636b2e6e616d65737061636504686f6d65c6d095ffbc310707070707070707030303\
    03030303030303030318aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa01196d303030\
    303030303030303030303030303030303030306d3107070707070707070505050505050505050505\
    05050505050505050505050505050505050505050530bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb\
    bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb01197730303030303030\
    303030303030303030303030303030773201020c2f6465762f6770696f6d656d0a2f6465762f6932\
    632d31";
pub(crate) const STATE_FULL_V3: &str = "\
    0301196330666665653063306666656530633066666565306330666680d095ffbc31043082010204\
    302e030401020502196d303030303030303030303030303030303030303030306d31196d30303030\
    3030303030303030303030303030303030306d310707070707070707070707070707070707070707\
    070707070707070707070707878e9cb8f0e0c183070470692d310d31302e302e302e313a34373437\
    000000000d6c696e75782f616172636836348080808020040206646f636b65720770726f63657373\
    05302e312e3080d095ffbc3180d095ffbc3119773030303030303030303030303030303030303030\
    30307732197730303030303030303030303030303030303030303030773208080808080808080808\
    080808080808080808080808080808080808080808088890a0c080818284080470692d320d31302e\
    302e302e323a3437343701020101047a6f6e650561747469630c6c696e75782f7838365f36348080\
    80800401010770726f6365737305302e312e3081d095ffbc3182d095ffbc3101878e9cb8f0e0c183\
    07196d303030303030303030303030303030303030303030306d3101090909090909090909090909\
    09090909090909090909090909090909090909090119733030303030303030303030303030303030\
    30303030303061197330303030303030303030303030303030303030303030306103776562102f75\
    73722f62696e2f707974686f6e3302022d6d0b687474702e73657276657201044d4f44450470726f\
    640770726f63657373000201903f5001176e6f64652e6c6162656c732e7a6f6e653d3d6174746963\
    8080802080cab5ee01808080408094ebdc0301e80703e0d40301010001092f62696e2f7472756588\
    27e80702904e01047465616d036f7073b81702f4030102b0ea01c09a0c03fa010101904ea0c21e00\
    040002824783470000000000000000000000030103776562102f7573722f62696e2f707974686f6e\
    3302022d6d0b687474702e73657276657201044d4f44450470726f640770726f6365737300020190\
    3f5001176e6f64652e6c6162656c732e7a6f6e653d3d61747469638080802080cab5ee0180808040\
    8094ebdc0301e80703e0d403010001047465616d036f7073b81702f4030102b0ea01c09a0c03fa01\
    0101904ea0c21e0103000282478347000000000000000000000080d095ffbc318ad095ffbc310102\
    0185d095ffbc31018ad095ffbc311075706461746520636f6d706c65746564020103776562092f62\
    696e2f74727565000006646f636b657200010000000000000088270000000000904e010000008827\
    0001000000882700000001000300082f7372762f777777042f77777701010464617461052f646174\
    61000200042f746d70000102092f62696e2f74696e69022d2d0109313030303a3130303001042f73\
    7276010670692d77656201010c2f6465762f6770696f6d656d0c2f6465762f6770696f6d656d0272\
    7701095359535f524157494f01074e45545f52415701011963303030303030303030303030303030\
    3030303030303030610a6e67696e782e636f6e66152f6574632f6e67696e782f6e67696e782e636f\
    6e666565a0020203776562102f7573722f62696e2f707974686f6e3302022d6d0b687474702e7365\
    7276657201044d4f44450470726f640770726f63657373000201903f5001176e6f64652e6c616265\
    6c732e7a6f6e653d3d61747469638080802080cab5ee01808080408094ebdc0301e80703e0d40301\
    0001047465616d036f7073b81702f4030102b0ea01c09a0c03fa010101904ea0c21e010300028247\
    83470000000000000000000000010503187430303030303030303030303030303030303030303030\
    30187430303030303030303030303030303030303030303030301973303030303030303030303030\
    30303030303030303030306100010001196d30303030303030303030303030303030303030303030\
    6d310107028080802080cab5ee0194d095ffbc319ed095ffbc31018ed095ffbc3101920201197461\
    736b20657869746564207769746820636f6465203133370000187430303030303030303030303030\
    30303030303030303031187430303030303030303030303030303030303030303030311973303030\
    30303030303030303030303030303030303030306100010101196d30303030303030303030303030\
    3030303030303030306d310005028080802080cab5ee0194d095ffbc319ed095ffbc310000000001\
    8fd095ffbc3118743030303030303030303030303030303030303030303032187430303030303030\
    30303030303030303030303030303032197330303030303030303030303030303030303030303030\
    306101197730303030303030303030303030303030303030303030773200000001028080802080ca\
    b5ee0194d095ffbc319ed095ffbc310000000102020403047a6f6e65000561747469630107808080\
    20010001197330303030303030303030303030303030303030303030306219733030303030303030\
    30303030303030303030303030303062036f6c64076e67696e783a31000006646f636b6572000100\
    00000000000088270000000000904e01000000882700010000008827000000000000000000000000\
    00000000030080d095ffbc318ad095ffbc3100000105011874303030303030303030303030303030\
    30303030303030310201196330303030303030303030303030303030303030303030306119633030\
    303030303030303030303030303030303030303030610a6e67696e782e636f6e6614776f726b6572\
    5f70726f63657373657320313b0a01036170700377656281d095ffbc31";

/// A version-2 state as version 2 wrote it: its version byte, then postcard.
fn encode_state_v2(s: &ClusterStateV2) -> Vec<u8> {
    let mut out = vec![STATE_VERSION_V2];
    out.extend(postcard::to_stdvec(s).expect("encode"));
    out
}

/// Reads a state of version 2 as version 2 did.
fn decode_state_v2(bytes: &[u8]) -> Result<ClusterStateV2, String> {
    match bytes.split_first() {
        Some((&STATE_VERSION_V2, rest)) => postcard::from_bytes(rest).map_err(|e| e.to_string()),
        Some((v, _)) => Err(format!("state version {v} instead of {STATE_VERSION_V2}")),
        None => Err("empty".into()),
    }
}

#[test]
fn cluster_state_keeps_its_bytes() {
    let mut g = Golden::default();
    assert_eq!(
        STATE_VERSION, 4,
        "a new state version needs a migration and a new case"
    );
    // Version 1, as version 1 wrote and read it (today's reader converts it: see
    // `old_bytes_decode_into_todays_types`).
    g.case(
        "STATE_FULL",
        &full_state_v1(),
        STATE_FULL,
        encode_state_v1,
        decode_state_v1,
    );
    g.case(
        "STATE_FULL_V2",
        &state_v2(&full_state()),
        STATE_FULL_V2,
        encode_state_v2,
        decode_state_v2,
    );
    g.case(
        "STATE_FULL_V3",
        &state_v3(&full_state()),
        STATE_FULL_V3,
        encode_state_v3,
        decode_state_v3,
    );
    g.case(
        "STATE_FULL_V4",
        &full_state_v4(),
        STATE_FULL_V4,
        ClusterState::encode,
        ClusterState::decode,
    );
    g.finish();
}

fn sm_data() -> SmData {
    SmData {
        last_applied: Some(log_id(3, 1, 7)),
        membership: StoredMembership::new(Some(log_id(3, 1, 6)), membership()),
        state: small_state(),
    }
}

/// The snapshot bytes of `state` (already encoded with its version byte) as the store writes
/// them: `SNAPSHOT_DATA` is `postcard((last_applied, membership, state))` and the stored row
/// `postcard((meta, data))`, the snapshot ID ending with the data's length.
fn snapshot_rows(state: Vec<u8>) -> (Vec<u8>, Vec<u8>) {
    let sm = sm_data();
    let data = postcard::to_stdvec(&(sm.last_applied, &sm.membership, state)).expect("encode data");
    let meta = SnapshotMeta {
        last_log_id: sm.last_applied,
        last_membership: sm.membership,
        snapshot_id: format!("T3-N1-7-{}", data.len()),
    };
    let stored = postcard::to_stdvec(&(meta, &data)).expect("encode row");
    (data, stored)
}

#[tokio::test]
async fn raft_snapshot_keeps_its_bytes() {
    let mut g = Golden::default();
    let dir = tempfile::tempdir().expect("tempdir");

    // Built by the store, as openraft asks for it.
    let db = open_db(&dir.path().join("build.redb")).expect("db");
    let mut sm = StateMachineStore::open(db.clone()).expect("open");
    *sm.shared().write().expect("lock") = sm_data();
    let snapshot = sm.build_snapshot().await.expect("build");
    g.bytes(
        "SNAPSHOT_DATA_V4",
        snapshot.snapshot.get_ref(),
        SNAPSHOT_DATA_V4,
    );
    let stored = read_meta_row(&db, "snapshot");
    g.bytes("SNAPSHOT_STORED_V4", &stored, SNAPSHOT_STORED_V4);
    // The same layout as the mirror that pins version 1's rows below.
    let (data, row) = snapshot_rows(small_state().encode());
    if data != snapshot.snapshot.get_ref().as_slice() || row != stored {
        g.fail(
            "SNAPSHOT_*",
            "the store no longer writes `(last_applied, membership, state)` in `(meta, data)`",
        );
    }

    // Version 1's rows: the same layout around a version-1 state.
    let (data, row) = snapshot_rows(encode_state_v1(&small_state_v1()));
    g.bytes("SNAPSHOT_DATA", &data, SNAPSHOT_DATA);
    g.bytes("SNAPSHOT_STORED", &row, SNAPSHOT_STORED);
    // Version 2's rows, the same way.
    let (data, row) = snapshot_rows(encode_state_v2(&state_v2(&small_state())));
    g.bytes("SNAPSHOT_DATA_V2", &data, SNAPSHOT_DATA_V2);
    g.bytes("SNAPSHOT_STORED_V2", &row, SNAPSHOT_STORED_V2);
    // Version 3's rows, the same way.
    let (data, row) = snapshot_rows(encode_state_v3(&state_v3(&small_state())));
    g.bytes("SNAPSHOT_DATA_V3", &data, SNAPSHOT_DATA_V3);
    g.bytes("SNAPSHOT_STORED_V3", &row, SNAPSHOT_STORED_V3);

    // The checked-in rows load at start, version 1's converted.
    for (i, (name, golden)) in [
        ("SNAPSHOT_STORED", SNAPSHOT_STORED),
        ("SNAPSHOT_STORED_V2", SNAPSHOT_STORED_V2),
        ("SNAPSHOT_STORED_V3", SNAPSHOT_STORED_V3),
        ("SNAPSHOT_STORED_V4", SNAPSHOT_STORED_V4),
    ]
    .into_iter()
    .enumerate()
    {
        let db = open_db(&dir.path().join(format!("load-{i}.redb"))).expect("db");
        write_row(&db, None, "snapshot", &unhex(golden));
        match StateMachineStore::open(db) {
            Ok(sm) => {
                let back = sm.shared().read().expect("lock").clone();
                if format!("{back:?}") != format!("{:?}", sm_data()) {
                    g.fail(name, format_args!("loads as {back:?}"));
                }
            }
            Err(e) => g.fail(name, format_args!("no longer loads: {e}")),
        }
    }
    g.finish();
}

/// Bytes version 1 wrote (the log's `Create`, `Update` and `Restore`, a snapshot's state)
/// decode through today's readers into today's types: the later fields take Docker's
/// defaults, the previous spec is also the older spec of `version - 1`, and applying an old
/// command does what applying its `…V2` of the converted value does.
#[test]
fn old_bytes_decode_into_todays_types() {
    let decode = |name: &str, golden: &str| -> Command {
        postcard::from_bytes(&unhex(golden)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    // What version 1's values are today.
    let update_defaults = |u: UpdateConfigV1| UpdateConfig {
        parallelism: u.parallelism,
        delay_ms: u.delay_ms,
        order: u.order,
        failure_action: u.failure_action,
        monitor_ms: 5_000,
        max_failure_ratio_ppm: 0,
    };
    let spec_today = |s: ServiceSpecV1| ServiceSpec {
        name: s.name,
        image: s.image,
        args: s.args,
        env: s.env,
        driver: s.driver,
        mode: s.mode,
        ports: s.ports,
        constraints: s.constraints,
        reservations: s.reservations,
        limits: s.limits,
        restart_policy: s.restart_policy,
        max_replicas_per_node: s.max_replicas_per_node,
        health_check: s.health_check,
        labels: s.labels,
        stop_grace_ms: s.stop_grace_ms,
        update_config: update_defaults(s.update_config),
        rollback_config: UpdateConfig::default(),
        no_healthcheck: false,
        force_update: 0,
        endpoint_mode: EndpointMode::Vip,
        expose: Vec::new(),
        mounts: Vec::new(),
        options: TaskOptionsSpec::default(),
        configs: Vec::new(),
        secrets: Vec::new(),
    };
    let old = service_record_v1();
    let record_today = ServiceRecord {
        id: old.id.clone(),
        spec: spec_today(old.spec.clone()),
        version: 2,
        previous_spec: Some(ServiceSpec::new("web", "/bin/true")),
        created_at: old.created_at,
        updated_at: old.updated_at,
        update_status: old.update_status.clone(),
        older_specs: BTreeMap::from([(1, ServiceSpec::new("web", "/bin/true"))]),
        vip_index: None,
    };
    assert_eq!(ServiceRecord::from(old), record_today);
    // What the state machine makes of it: the first VIP index.
    let record_today = ServiceRecord {
        vip_index: Some(0),
        ..record_today
    };
    assert_eq!(
        UpdateConfig::from(spec_v1("web", "/bin/true").update_config),
        UpdateConfig::default()
    );
    assert_eq!(
        ServiceSpec::from(spec_v1("web", "/bin/false")),
        ServiceSpec::new("web", "/bin/false")
    );
    assert_eq!(record_today.spec.update_config.monitor_ms, 5_000);
    assert_eq!(record_today.spec.update_config.max_failure_ratio_ppm, 0);
    assert_eq!(
        record_today.spec_for_version(1),
        &ServiceSpec::new("web", "/bin/true")
    );
    assert_eq!(record_today.spec_for_version(2), &record_today.spec);

    // A cluster to apply the commands to.
    let mut base = ClusterState::default();
    base.apply(&Command::InitCluster {
        cluster: cluster_record(),
        node: manager_record(),
    });
    let apply_both = |old: &Command, new: &Command, base: &ClusterState| {
        let (mut a, mut b) = (base.clone(), base.clone());
        let (ra, rb) = (a.apply(old), b.apply(new));
        assert_eq!(ra, rb, "{old:?}");
        assert_eq!(a, b, "{old:?}");
        a
    };

    // `Create`: the record converted.
    let create = decode("CMD_SERVICE_CREATE", CMD_SERVICE_CREATE);
    let Command::Services(ServiceCommand::Create(rec)) = &create else {
        panic!("CMD_SERVICE_CREATE decodes to {create:?}");
    };
    assert_eq!(
        ServiceRecord::from((**rec).clone()),
        ServiceRecord {
            vip_index: None,
            ..record_today.clone()
        }
    );
    let created = apply_both(
        &create,
        &Command::Services(ServiceCommand::create(record_today.clone())),
        &base,
    );
    assert_eq!(
        created.services.services.get(SERVICE_ID),
        Some(&record_today)
    );

    // `Update`: the spec converted, applied as an update to it.
    let update = decode("CMD_SERVICE_UPDATE", CMD_SERVICE_UPDATE);
    let Command::Services(ServiceCommand::Update { id, spec, at }) = &update else {
        panic!("CMD_SERVICE_UPDATE decodes to {update:?}");
    };
    let new_spec = ServiceSpec::new("web", "/bin/false");
    assert_eq!(ServiceSpec::from((**spec).clone()), new_spec);
    assert_eq!((id.as_str(), *at), (SERVICE_ID, T0 + 50));
    let mut running = base.clone();
    running.apply(&Command::Services(ServiceCommand::create(
        ServiceRecord::new(SERVICE_ID, ServiceSpec::new("web", "/bin/true"), T0),
    )));
    let updated = apply_both(
        &update,
        &Command::Services(ServiceCommand::update(
            SERVICE_ID,
            new_spec.clone(),
            T0 + 50,
        )),
        &running,
    );
    let rec = &updated.services.services[SERVICE_ID];
    assert_eq!((rec.version, &rec.spec), (2, &new_spec));

    // `Restore`: the state converted.
    let restore = decode("CMD_RESTORE", CMD_RESTORE);
    let Command::Restore(state) = &restore else {
        panic!("CMD_RESTORE decodes to {restore:?}");
    };
    assert_eq!(ClusterState::from((**state).clone()), small_state());
    let restored = apply_both(
        &restore,
        &Command::RestoreV4(Box::new(small_state())),
        &created,
    );
    assert_eq!(restored, small_state());

    // A version-1 snapshot's state: every record converted, the rest as it was.
    let state = ClusterState::decode(&unhex(STATE_FULL)).expect("STATE_FULL decodes");
    let mut want = full_state_v1();
    let removed_v1 = want.services.removed.clone();
    want.services.removed = BTreeMap::new();
    want.services.services = BTreeMap::new();
    let mut want = ClusterState::from(want);
    want.services
        .services
        .insert(SERVICE_ID.into(), record_today);
    for (id, r) in removed_v1 {
        let mut today = ServiceRecord::new(r.id, spec_today(r.spec), r.created_at);
        today.version = r.version;
        today.updated_at = r.updated_at;
        want.services.removed.insert(id, today);
    }
    assert_eq!(state, want);
    assert_eq!(state, ClusterState::from(full_state_v1()));
    assert_eq!(state.services.tasks, full_state().services.tasks);
}

// ---------------------------------------------------------------------------------------------
// Raft RPCs between managers (tags 2-4)
// ---------------------------------------------------------------------------------------------

// When one of these fails: managers of two versions exchange these during a rolling upgrade.
// They are openraft's types: an openraft upgrade that changes them needs a new frame version
// (or a new tag) for as long as older managers may run.
pub(crate) const RPC_APPEND: &str = "\
    02000000330103010101030106010301070102197730303030303030303030303030303030303030\
    303030773200bcd095ffbc3101030106";
pub(crate) const RPC_APPEND_OK: &str = "\
    0200000003010000";
pub(crate) const RPC_APPEND_HIGHER_VOTE: &str = "\
    0200000006010003040200";
pub(crate) const RPC_VOTE: &str = "\
    03000000080104020001030107";
pub(crate) const RPC_VOTE_OK: &str = "\
    030000000a01000402000101030107";
pub(crate) const RPC_SNAPSHOT: &str = "\
    040000002201030101010301070103010601030102030301020306332d372d3432000301020301";
pub(crate) const RPC_SNAPSHOT_OK: &str = "\
    04000000050100030101";
pub(crate) const RPC_SNAPSHOT_MISMATCH: &str = "\
    04000000140101000006332d372d34320006332d372d343203";

#[test]
fn raft_rpc_frames_keep_their_bytes() {
    type AppendAnswer = Result<AppendEntriesResponse<u64>, RaftError<u64>>;
    type VoteAnswer = Result<VoteResponse<u64>, RaftError<u64>>;
    type SnapshotAnswer =
        Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>>;
    let mut g = Golden::default();
    let append = AppendEntriesRequest::<TypeConfig> {
        vote: Vote::new_committed(3, 1),
        prev_log_id: Some(log_id(3, 1, 6)),
        entries: entries().into_iter().skip(2).map(|(_, e, _)| e).collect(),
        leader_commit: Some(log_id(3, 1, 6)),
    };
    g.frame("RPC_APPEND", TAG_RAFT_APPEND, &append, RPC_APPEND);
    g.frame(
        "RPC_APPEND_OK",
        TAG_RAFT_APPEND,
        &AppendAnswer::Ok(AppendEntriesResponse::Success),
        RPC_APPEND_OK,
    );
    g.frame(
        "RPC_APPEND_HIGHER_VOTE",
        TAG_RAFT_APPEND,
        &AppendAnswer::Ok(AppendEntriesResponse::HigherVote(Vote::new(4, 2))),
        RPC_APPEND_HIGHER_VOTE,
    );
    let vote = VoteRequest::<u64>::new(Vote::new(4, 2), Some(log_id(3, 1, 7)));
    g.frame("RPC_VOTE", TAG_RAFT_VOTE, &vote, RPC_VOTE);
    g.frame(
        "RPC_VOTE_OK",
        TAG_RAFT_VOTE,
        &VoteAnswer::Ok(VoteResponse {
            vote: Vote::new(4, 2),
            vote_granted: true,
            last_log_id: Some(log_id(3, 1, 7)),
        }),
        RPC_VOTE_OK,
    );
    let meta = SnapshotMeta {
        last_log_id: Some(log_id(3, 1, 7)),
        last_membership: StoredMembership::new(Some(log_id(3, 1, 6)), membership()),
        snapshot_id: "3-7-42".into(),
    };
    let chunk = InstallSnapshotRequest::<TypeConfig> {
        vote: Vote::new_committed(3, 1),
        meta,
        offset: 0,
        data: vec![1, 2, 3],
        done: true,
    };
    g.frame("RPC_SNAPSHOT", TAG_RAFT_SNAPSHOT, &chunk, RPC_SNAPSHOT);
    g.frame(
        "RPC_SNAPSHOT_OK",
        TAG_RAFT_SNAPSHOT,
        &SnapshotAnswer::Ok(InstallSnapshotResponse {
            vote: Vote::new_committed(3, 1),
        }),
        RPC_SNAPSHOT_OK,
    );
    g.frame(
        "RPC_SNAPSHOT_MISMATCH",
        TAG_RAFT_SNAPSHOT,
        &SnapshotAnswer::Err(RaftError::APIError(InstallSnapshotError::SnapshotMismatch(
            SnapshotMismatch {
                expect: SnapshotSegmentId {
                    id: "3-7-42".into(),
                    offset: 0,
                },
                got: SnapshotSegmentId {
                    id: "3-7-42".into(),
                    offset: 3,
                },
            },
        ))),
        RPC_SNAPSHOT_MISMATCH,
    );
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Worker session (tag 8)
// ---------------------------------------------------------------------------------------------

// When one of these fails: a leader and a worker of different versions talk this during a
// rolling upgrade. `AssignmentSet` and `TaskReport` also travel alone in these cases' bytes.
// A changed message is a new enum variant at the end (sent only once the peer is known to
// read it) or a new frame version.
pub(crate) const ASSIGNMENT_SET: &str = "\
    00011874303030303030303030303030303030303030303030303119733030303030303030303030\
    3030303030303030303030306103776562010770726f636573731874303030303030303030303030\
    30303030303030303030311973303030303030303030303030303030303030303030303061037765\
    62010a2f62696e2f736c6565700102363001044d4f44450470726f6401047465616d036f70730150\
    01808080400001010f74657374202d65202f746d702f6f6b023573083173203530306d7302023073\
    0106534947494e540233730100092f7372762f64617461052f646174610100011874303030303030\
    3030303030303030303030303030303030";
pub(crate) const TO_LEADER_FACILITIES: &str = "\
    080000001c010201020c2f6465762f6770696f6d656d0a2f6465762f6932632d31";
pub(crate) const TO_WORKER_SECRETS: &str = "\
    080000004c0106011874303030303030303030303030303030303030303030303101182f72756e2f\
    736563726574732f64625f70617373776f7264116e6f742d612d7265616c2d7365637265740046a0\
    02";
const TASK_REPORT: &str = "\
    187430303030303030303030303030303030303030303030300701920201197461736b2065786974\
    6564207769746820636f6465203133370109756e6865616c7468798ed095ffbc31";
pub(crate) const SESSION_HELLO: &str = "\
    080000002a0119773030303030303030303030303030303030303030303077328080808004010107\
    70726f63657373";
pub(crate) const TO_WORKER_ASSIGNMENTS: &str = "\
    08000001030100000118743030303030303030303030303030303030303030303031197330303030\
    303030303030303030303030303030303030306103776562010770726f6365737318743030303030\
    30303030303030303030303030303030303119733030303030303030303030303030303030303030\
    3030306103776562010a2f62696e2f736c6565700102363001044d4f44450470726f640104746561\
    6d036f7073015001808080400001010f74657374202d65202f746d702f6f6b023573083173203530\
    306d73020230730106534947494e540233730100092f7372762f64617461052f6461746101000118\
    743030303030303030303030303030303030303030303030";
pub(crate) const TO_WORKER_TRUST: &str = "\
    08000000440101010707070707070707070707070707070707070707070707070707070707070707\
    010909090909090909090909090909090909090909090909090909090909090909";
pub(crate) const TO_WORKER_CERT: &str = "\
    080000000701020430820506";
pub(crate) const TO_LEADER_REPORTS: &str = "\
    080000004c0100011874303030303030303030303030303030303030303030303007019202011974\
    61736b20657869746564207769746820636f6465203133370109756e6865616c7468798ed095ffbc\
    31";

#[test]
fn worker_session_frames_keep_their_bytes() {
    let mut g = Golden::default();
    // Version 1's set (inside `ToWorker::Assignments`), and today's.
    g.plain(
        "ASSIGNMENT_SET",
        &AssignmentSetV1::from_today(&assignment_set()),
        ASSIGNMENT_SET,
    );
    g.plain(
        "ASSIGNMENT_SET_V2",
        &assignment_set_with_options(),
        ASSIGNMENT_SET_V2,
    );
    g.plain("TASK_REPORT", &task_report(), TASK_REPORT);
    let hello = SessionHello {
        node_id: WORKER_ID.into(),
        memory_bytes: 1 << 30,
        cpus: 1,
        drivers: vec!["process".into()],
    };
    g.frame("SESSION_HELLO", TAG_DISPATCH, &hello, SESSION_HELLO);
    g.frame(
        "TO_WORKER_ASSIGNMENTS",
        TAG_DISPATCH,
        &ToWorker::Assignments(AssignmentSetV1::from_today(&assignment_set())),
        TO_WORKER_ASSIGNMENTS,
    );
    g.frame(
        "TO_WORKER_ASSIGNMENTS_V2",
        TAG_DISPATCH,
        &ToWorker::AssignmentsV2(assignment_set_with_options()),
        TO_WORKER_ASSIGNMENTS_V2,
    );
    g.frame(
        "TO_WORKER_TRUST",
        TAG_DISPATCH,
        &ToWorker::Trust {
            managers: vec![[7; 32]],
            removed: vec![[9; 32]],
        },
        TO_WORKER_TRUST,
    );
    g.frame(
        "TO_WORKER_CERT",
        TAG_DISPATCH,
        &ToWorker::Cert(vec![0x30, 0x82, 0x05, 0x06]),
        TO_WORKER_CERT,
    );
    g.frame(
        "TO_LEADER_REPORTS",
        TAG_DISPATCH,
        &ToLeader::Reports(vec![task_report()]),
        TO_LEADER_REPORTS,
    );
    g.frame(
        "TO_WORKER_ENDPOINTS",
        TAG_DISPATCH,
        &ToWorker::Endpoints(endpoint_table()),
        TO_WORKER_ENDPOINTS,
    );
    g.frame(
        "TO_WORKER_DISCOVERY",
        TAG_DISPATCH,
        &ToWorker::Discovery(discovery_table()),
        TO_WORKER_DISCOVERY,
    );
    g.frame(
        "TO_WORKER_SECRETS",
        TAG_DISPATCH,
        &ToWorker::Secrets(vec![crate::session::TaskSecrets {
            task_id: "t00000000000000000000001".into(),
            files: vec![shoal_runtime::TaskFile {
                target: "/run/secrets/db_password".into(),
                data: b"not-a-real-secret".to_vec(),
                uid: 0,
                gid: 70,
                mode: 0o440,
            }],
        }]),
        TO_WORKER_SECRETS,
    );
    g.frame(
        "TO_LEADER_PUBLISH_PROBLEMS",
        TAG_DISPATCH,
        &ToLeader::PublishProblems(vec![PublishProblem {
            published: 8080,
            service_id: SERVICE_ID.into(),
            error: "cannot listen on 10.0.0.2:8080: Address in use (os error 98)".into(),
        }]),
        TO_LEADER_PUBLISH_PROBLEMS,
    );
    g.frame(
        "TO_LEADER_FACILITIES",
        TAG_DISPATCH,
        &ToLeader::Facilities(node_facilities()),
        TO_LEADER_FACILITIES,
    );
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Routing mesh (tag 10) and published ports
// ---------------------------------------------------------------------------------------------

// When one of these fails: nodes of two versions cannot forward published ports to each
// other, or stored services with ports no longer decode.
const PORT_SPEC_PLAIN: &str = "\
    903f50";
const PORT_SPEC_HOST_PROXY: &str = "\
    903fd0800c";
pub(crate) const TO_WORKER_ENDPOINTS: &str = "\
    080000006d0103011973303030303030303030303030303030303030303030303061037765620290\
    3f50a846a8c60c011874303030303030303030303030303030303030303030303119773030303030\
    30303030303030303030303030303030307732000a0000028b2506646f636b657201";
pub(crate) const TO_LEADER_PUBLISH_PROBLEMS: &str = "\
    080000005c010101903f19733030303030303030303030303030303030303030303030613c63616e\
    6e6f74206c697374656e206f6e2031302e302e302e323a383038303a204164647265737320696e20\
    75736520286f73206572726f7220393829";
pub(crate) const MESH_OPEN: &str = "\
    0a000000450119733030303030303030303030303030303030303030303030611874303030303030\
    3030303030303030303030303030303031903f00c0000207b88e03000a000001903f";
pub(crate) const MESH_CONNECTED: &str = "\
    0a000000020100";
pub(crate) const MESH_REFUSED: &str = "\
    0a0000002101011e6e6f2073657276696365207075626c697368657320706f72742038303830";

pub(crate) const TO_WORKER_DISCOVERY: &str = "\
    080000008c0104021973303030303030303030303030303030303030303030303061037765620001\
    05025082470118743030303030303030303030303030303030303030303031197730303030303030\
    3030303030303030303030303030307732000a0000028b2506646f636b6572011973303030303030\
    30303030303030303030303030303030306202646201000000";
pub(crate) const VIP_OPEN: &str = "\
    0c0000003d0119733030303030303030303030303030303030303030303030611874303030303030\
    303030303030303030303030303030303150000af70005b88e03";

/// A discovery table with both endpoint modes.
pub(crate) fn discovery_table() -> DiscoveryTable {
    let task = endpoint_table().services[0].tasks[0].clone();
    DiscoveryTable {
        services: vec![
            DiscoveredService {
                service_id: SERVICE_ID.into(),
                name: "web".into(),
                endpoint_mode: EndpointMode::Vip,
                vip_index: Some(5),
                ports: vec![80, 9090],
                tasks: vec![task],
            },
            DiscoveredService {
                service_id: "s00000000000000000000000b".into(),
                name: "db".into(),
                endpoint_mode: EndpointMode::Dnsrr,
                vip_index: None,
                ports: Vec::new(),
                tasks: Vec::new(),
            },
        ],
    }
}

pub(crate) fn endpoint_table() -> EndpointTable {
    let mut host = PortSpec::tcp(9000, 9000);
    host.mode = PublishMode::Host;
    host.proxy_protocol = true;
    EndpointTable {
        services: vec![PublishedService {
            service_id: SERVICE_ID.into(),
            name: "web".into(),
            ports: vec![PortSpec::tcp(8080, 80), host],
            tasks: vec![TaskEndpoint {
                task_id: "t00000000000000000000001".into(),
                node_id: WORKER_ID.into(),
                node_addr: "10.0.0.2:4747".parse().expect("address"),
                driver: "docker".into(),
                ready: true,
            }],
        }],
    }
}

#[test]
fn mesh_frames_and_published_ports_keep_their_bytes() {
    let mut g = Golden::default();
    // `-p 8080:80` keeps the bytes `{published, target}` had before the mesh.
    g.plain("PORT_SPEC_PLAIN", &PortSpec::tcp(8080, 80), PORT_SPEC_PLAIN);
    let mut host = PortSpec::tcp(8080, 80);
    host.mode = PublishMode::Host;
    host.proxy_protocol = true;
    g.plain("PORT_SPEC_HOST_PROXY", &host, PORT_SPEC_HOST_PROXY);
    let open = MeshOpen {
        service_id: SERVICE_ID.into(),
        task_id: "t00000000000000000000001".into(),
        published: 8080,
        client: "192.0.2.7:51000".parse().expect("address"),
        ingress: "10.0.0.1:8080".parse().expect("address"),
    };
    g.frame("MESH_OPEN", TAG_MESH, &open, MESH_OPEN);
    let vip = VipOpen {
        service_id: SERVICE_ID.into(),
        task_id: "t00000000000000000000001".into(),
        target: 80,
        client: "10.247.0.5:51000".parse().expect("address"),
    };
    g.frame("VIP_OPEN", TAG_VIP, &vip, VIP_OPEN);
    g.frame(
        "MESH_CONNECTED",
        TAG_MESH,
        &MeshReply::Connected,
        MESH_CONNECTED,
    );
    g.frame(
        "MESH_REFUSED",
        TAG_MESH,
        &MeshReply::Refused("no service publishes port 8080".into()),
        MESH_REFUSED,
    );
    g.finish();
}

#[test]
fn a_port_stored_before_the_mesh_reads_as_tcp_ingress_and_unknown_settings_are_refused() {
    let old = postcard::to_allocvec(&(8080u16, 80u16)).expect("encode");
    assert_eq!(
        postcard::from_bytes::<PortSpec>(&old).expect("decode"),
        PortSpec::tcp(8080, 80)
    );
    let newer = postcard::to_allocvec(&(8080u16, 80u32 | (1 << 20))).expect("encode");
    assert!(postcard::from_bytes::<PortSpec>(&newer).is_err());
}

// ---------------------------------------------------------------------------------------------
// Join (tag 1), forwarding (tags 5-7), ping (tag 9)
// ---------------------------------------------------------------------------------------------

// When one of these fails: a node of one version joins, forwards to, or promotes a node of
// another. A joiner is often newer than the managers: keep `JoinRequest` decodable by them.
pub(crate) const JOIN_REQUEST: &str = "\
    01000000b1011853484f414c312d7061796c6f61642e7369676e6174757265080808080808080808\
    08080808080808080808080808080808080808080808080470692d320d31302e302e302e323a3437\
    34370c6c696e75782f7838365f3634808080800401010770726f6365737305302e312e300040aaaa\
    aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\
    aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
pub(crate) const JOIN_ACCEPTED: &str = "\
    01000000570100196330666665653063306666656530633066666565306330666601043082050604\
    308201020107070707070707070707070707070707070707070707070707070707070707070d3130\
    2e302e302e313a3437343700";
pub(crate) const JOIN_REFUSED: &str = "\
    010000001d01011a746865206a6f696e20746f6b656e2077617320726f7461746564";
const JOIN_PROOF_MESSAGE: &str = "\
    73686f616c2f6a6f696e2d70726f6f662f7631001111111111111111111111111111111111111111\
    11111111111111111111111108080808080808080808080808080808080808080808080808080808\
    0808080853484f414c312d782e79";

#[test]
fn join_frames_keep_their_bytes() {
    let mut g = Golden::default();
    let request = JoinRequest {
        token: "SHOAL1-payload.signature".into(),
        public_key: [8; 32],
        hostname: "pi-2".into(),
        advertise_addr: "10.0.0.2:4747".into(),
        platform: "linux/x86_64".into(),
        memory_bytes: 1 << 30,
        cpus: 1,
        drivers: vec!["process".into()],
        version: "0.1.0".into(),
        availability: Availability::Active,
        proof: vec![0xaa; 64],
    };
    g.frame("JOIN_REQUEST", TAG_JOIN, &request, JOIN_REQUEST);
    let accepted = JoinResponse::Accepted(JoinAccepted {
        cluster_id: CLUSTER_ID.into(),
        role: Role::Worker,
        node_cert: vec![0x30, 0x82, 0x05, 0x06],
        ca_cert: vec![0x30, 0x82, 0x01, 0x02],
        members: vec![MemberHint {
            public_key: [7; 32],
            addr: "10.0.0.1:4747".into(),
            role: Role::Manager,
        }],
    });
    g.frame("JOIN_ACCEPTED", TAG_JOIN, &accepted, JOIN_ACCEPTED);
    let refused = JoinResponse::Refused("the join token was rotated".into());
    g.frame("JOIN_REFUSED", TAG_JOIN, &refused, JOIN_REFUSED);
    // What the joiner signs (the domain label is part of the format).
    let proof = crate::join::proof_message(&[0x11; 32], &[8; 32], "SHOAL1-x.y");
    g.bytes("JOIN_PROOF_MESSAGE", &proof, JOIN_PROOF_MESSAGE);
    g.finish();
}

pub(crate) const FORWARD_API: &str = "\
    05000000330104504f53540308736572766963657303776562057363616c65010664657461636801\
    310e7b227265706c69636173223a337d";
pub(crate) const FORWARD_REPLY_FULL: &str = "\
    050000002701009403227b226d657373616765223a226e6f207375636820736572766963653a2077\
    6562227d";
pub(crate) const FORWARD_REPLY_ITEM: &str = "\
    050000000e01010b7b226964223a227431227d";
pub(crate) const FORWARD_REPLY_END: &str = "\
    05000000020102";
pub(crate) const FORWARD_WRITE: &str = "\
    06000000950107197730303030303030303030303030303030303030303030773208080808080808\
    080808080808080808080808080808080808080808080808088890a0c080818284080470692d320d\
    31302e302e302e323a3437343701020101047a6f6e650561747469630c6c696e75782f7838365f36\
    34808080800401010770726f6365737305302e312e3081d095ffbc3182d095ffbc31";
pub(crate) const FORWARD_WRITE_OK: &str = "\
    0600000003010000";
pub(crate) const FORWARD_WRITE_GENERATION: &str = "\
    060000000401000104";
pub(crate) const FORWARD_WRITE_ERR: &str = "\
    060000001f0101011b74686520636c757374657220686173206c6f73742071756f72756d";
pub(crate) const BECOME_MANAGER: &str = "\
    070000001b011963306666656530633066666565306330666665653063306666";
pub(crate) const BECOME_MANAGER_OK: &str = "\
    07000000020100";
pub(crate) const BECOME_MANAGER_ERR: &str = "\
    0700000016010113726166742e72656462206973206c6f636b6564";
pub(crate) const PING: &str = "\
    090000000101";

#[test]
fn forward_frames_keep_their_bytes() {
    let mut g = Golden::default();
    let api = ForwardedApi {
        method: "POST".into(),
        segments: vec!["services".into(), "web".into(), "scale".into()],
        query: BTreeMap::from([("detach".into(), "1".into())]),
        body: br#"{"replicas":3}"#.to_vec(),
    };
    g.frame("FORWARD_API", TAG_FORWARD_API, &api, FORWARD_API);
    let replies = [
        (
            "FORWARD_REPLY_FULL",
            ForwardedReply::Full {
                status: 404,
                body: br#"{"message":"no such service: web"}"#.to_vec(),
            },
            FORWARD_REPLY_FULL,
        ),
        (
            "FORWARD_REPLY_ITEM",
            ForwardedReply::Item(r#"{"id":"t1"}"#.into()),
            FORWARD_REPLY_ITEM,
        ),
        ("FORWARD_REPLY_END", ForwardedReply::End, FORWARD_REPLY_END),
    ];
    for (name, reply, golden) in replies {
        g.frame(name, TAG_FORWARD_API, &reply, golden);
    }
    let write = ForwardedWrite {
        command: Command::AdmitNode(worker_record()),
    };
    g.frame("FORWARD_WRITE", TAG_FORWARD_WRITE, &write, FORWARD_WRITE);
    let results = [
        (
            "FORWARD_WRITE_OK",
            ForwardedWriteResult::Ok(CommandResult::Done),
            FORWARD_WRITE_OK,
        ),
        (
            "FORWARD_WRITE_GENERATION",
            ForwardedWriteResult::Ok(CommandResult::Generation(4)),
            FORWARD_WRITE_GENERATION,
        ),
        (
            "FORWARD_WRITE_ERR",
            ForwardedWriteResult::Err {
                unknown: true,
                message: "the cluster has lost quorum".into(),
            },
            FORWARD_WRITE_ERR,
        ),
    ];
    for (name, result, golden) in results {
        g.frame(name, TAG_FORWARD_WRITE, &result, golden);
    }
    let promote = BecomeManager {
        cluster_id: CLUSTER_ID.into(),
    };
    g.frame(
        "BECOME_MANAGER",
        TAG_BECOME_MANAGER,
        &promote,
        BECOME_MANAGER,
    );
    g.frame(
        "BECOME_MANAGER_OK",
        TAG_BECOME_MANAGER,
        &BecomeManagerResult::Ok,
        BECOME_MANAGER_OK,
    );
    g.frame(
        "BECOME_MANAGER_ERR",
        TAG_BECOME_MANAGER,
        &BecomeManagerResult::Err("raft.redb is locked".into()),
        BECOME_MANAGER_ERR,
    );
    g.frame("PING", crate::trust::TAG_PING, &(), PING);
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Join tokens
// ---------------------------------------------------------------------------------------------

// When one of these fails: tokens already handed out (in scripts, in `--token` flags) must
// keep parsing. The payload starts with its own version; a new payload is a new version
// (and, for a new text format, a new `SHOAL<n>-` prefix), parsed alongside the old one.
const TOKEN_PAYLOAD: &str = "\
    0119633066666565306330666665653063306666656530633066660102cdcdcdcdcdcdcdcdcdcdcd\
    cdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcdcd0190fecfaa06010d31302e302e302e313a3437\
    3437012a";
/// A token signed by the CA key `[9; 32]` (ed25519 signatures are deterministic).
pub(crate) const TOKEN_TEXT: &str = concat!(
    "SHOAL1-ARljMGZmZWUwYzBmZmVlMGMwZmZlZTBjMGZmAQLNzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3NzQGQ_s-qBgENMTAuMC4wLjE6NDc0NwEq",
    ".Pepz3bv9Dv5q8nqhcRHa-fwJLQ1JIb45Y4_dDHFq7wqxYHrUvNx1_MRoGfkXcrTjuVcsmimoVRqb1LlqfBepAA"
);

fn token_payload() -> TokenPayload {
    TokenPayload {
        version: 1,
        cluster_id: CLUSTER_ID.into(),
        role: TokenRole::Manager,
        generation: 2,
        ca_digest: [0xcd; 32],
        expires_at: Some(T0 / 1000 + 3_600),
        manager_addrs: vec!["10.0.0.1:4747".into()],
        nonce: Some(42),
    }
}

#[test]
fn join_token_keeps_its_bytes() {
    let mut g = Golden::default();
    let payload = token_payload();
    g.case(
        "TOKEN_PAYLOAD",
        &payload,
        TOKEN_PAYLOAD,
        |p| postcard::to_stdvec(p).expect("encode"),
        |b| {
            let text = format!(
                "{TOKEN_PREFIX}{}.{}",
                URL_SAFE_NO_PAD.encode(b),
                URL_SAFE_NO_PAD.encode([0u8; 64])
            );
            JoinToken::parse(&text)
                .map(|t| t.payload)
                .map_err(|e| e.to_string())
        },
    );

    // The whole text, signed as `JoinToken::mint` signs (domain `shoal-join-v1`).
    let ca = SigningKey::from_bytes(&[9; 32]);
    let bytes = postcard::to_stdvec(&payload).expect("encode");
    let mut msg = b"shoal-join-v1".to_vec();
    msg.extend_from_slice(&bytes);
    let sig = ed25519_dalek::Signer::sign(&ca, &msg).to_bytes();
    let text = format!(
        "{TOKEN_PREFIX}{}.{}",
        URL_SAFE_NO_PAD.encode(&bytes),
        URL_SAFE_NO_PAD.encode(sig)
    );
    if text != TOKEN_TEXT {
        g.fail(
            "TOKEN_TEXT",
            format_args!("today's token text differs: {text}"),
        );
    }
    let golden_text = TOKEN_TEXT;
    match JoinToken::parse(golden_text) {
        Ok(t) => {
            if t.payload != payload {
                g.fail("TOKEN_TEXT", format_args!("parses to {:?}", t.payload));
            }
            if let Err(e) = t.verify_signature(&ca.verifying_key().to_bytes()) {
                g.fail(
                    "TOKEN_TEXT",
                    format_args!("signature no longer verifies: {e}"),
                );
            }
        }
        Err(e) => g.fail("TOKEN_TEXT", format_args!("no longer parses: {e}")),
    }

    // `mint` encodes the payload the same way (its CA is random, so only the payload part).
    let real_ca = crate::pki::ClusterCa::generate(CLUSTER_ID).expect("ca");
    let minted = JoinToken::mint(&real_ca, &payload).expect("mint");
    let minted_payload = minted.split_once('.').map(|(p, _)| p.to_owned());
    let golden_payload = golden_text.split_once('.').map(|(p, _)| p.to_owned());
    if minted_payload != golden_payload {
        g.fail("TOKEN_TEXT", format_args!("mint now writes {minted}"));
    }
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// Gossip: facts and the SWIM header
// ---------------------------------------------------------------------------------------------

// When one of these fails: members of two versions gossip these during a rolling upgrade.
// A fact starts with `FACT_FORMAT`; a node ignores (and does not relay) a fact of a format it
// does not know. A changed fact, and a new `FactBody` variant too, is published under a new
// format: a format-2 item an older node cannot decode makes it refuse the whole SWIM datagram
// it rode on (pings and acks included), so the newer node would look dead to it. The SWIM
// header is foca's: a foca upgrade that changes it splits the cluster by version.
const FACT_ROLE: &str = "\
    02ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c8080a8b1e39fe7\
    cb17040000802cb715ee7d900937919ace22ecf614713cc394e8821f706e27384824a4ecd04394cf\
    48d97e3ebb89b9279e619b1cb9195ecc7ace9b6bf437c66e6c020f1609";
const FACT_ADVERTISE_ADDR: &str = "\
    02ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c8080a8b1e39fe7\
    cb170401000a0000018b2536a9e7f8cb1f46a2912365581b0d04ae2512d7c7814f1ce37b77ec08c5\
    9991c0e8f028f92591e543e84e186a5ae55536629b94ed98f644ada7f3c32e62335a06";
const FACT_LEADER_HINT: &str = "\
    02ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c8080a8b1e39fe7\
    cb1704020301ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22cd817\
    f204c061ef04c66a3634297946e0a5292c0cc67bef263d156fb9e74cca96e255ea215f2e1ef3c6d9\
    ce18e416189d978d00a299ac8b8f5151592e754b4e08";
const FACT_LEAVING: &str = "\
    02ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c8080a8b1e39fe7\
    cb17040305325ced40e83bc7d1272eaf8c9a39b4cb66135e477ad2f79f832d2d2a74b64747b14546\
    198b49623afa4e5ec01b9b47fe4c22330418ccbdf92ba09372cc2d4207";
const FACT_APP: &str = "\
    02ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c8080a8b1e39fe7\
    cb1704040103010203712e19a23927476db28c1316f25d29f1edb843d3e5f15cd93b29a491cd267d\
    bf3002bd70686fce3f6572ed2f56d77d998ece7353a19f3f356d2245b4d703bf06";
const SWIM_HEADER: &str = "\
    ea4a6c63e29c520abef5507b132ec5f9954776aebebe7b92421eea691446d22c000a0000018b2580\
    80a8b1e39fe7cb170208080808080808080808080808080808080808080808080808080808080808\
    08000a0000028b258180a8b1e39fe7cb170009";

#[test]
fn gossip_facts_keep_their_bytes() {
    use shoal_membership::{
        FACT_FORMAT, Fact, FactBody, FactVersion, Header, Message, NodeId, NodeIdentity, NodeRole,
    };
    let mut g = Golden::default();
    assert_eq!(FACT_FORMAT, 2, "a new fact format needs a new case");
    let key = SigningKey::from_bytes(&[7; 32]);
    let origin = NodeId(key.verifying_key().to_bytes());
    let addr: SocketAddr = "10.0.0.1:4747".parse().expect("addr");
    let bodies = [
        ("FACT_ROLE", FactBody::Role(NodeRole::Manager), FACT_ROLE),
        (
            "FACT_ADVERTISE_ADDR",
            FactBody::AdvertiseAddr(addr),
            FACT_ADVERTISE_ADDR,
        ),
        (
            "FACT_LEADER_HINT",
            FactBody::LeaderHint {
                term: 3,
                leader: Some(origin),
            },
            FACT_LEADER_HINT,
        ),
        ("FACT_LEAVING", FactBody::Leaving { bump: 5 }, FACT_LEAVING),
        (
            "FACT_APP",
            FactBody::App {
                tag: 1,
                data: vec![1, 2, 3],
            },
            FACT_APP,
        ),
    ];
    for (name, body, golden) in bodies {
        let version = FactVersion {
            bump: 1_700_000_000_000_000_000,
            seq: 4,
        };
        let fact = Fact::signed(origin, version, body, &key).expect("sign");
        g.case(
            name,
            &fact,
            golden,
            |f| f.encode().expect("encode"),
            |b| match Fact::decode(b) {
                Ok(Some(f)) => f.verify().map(|()| f).map_err(|e| e.to_string()),
                Ok(None) => Err("ignored as another format".into()),
                Err(e) => Err(e.to_string()),
            },
        );
    }
    // Format 1 (unsigned) and newer formats are ignored, not errors.
    let mut old = unhex(FACT_ROLE);
    old[0] = 1;
    assert_eq!(Fact::decode(&old), Ok(None));
    old[0] = FACT_FORMAT + 1;
    assert_eq!(Fact::decode(&old), Ok(None));

    // The SWIM datagram starts `0x53 | postcard(foca::Header)`: foca's type.
    let header = Header {
        src: NodeIdentity::new(origin, addr, 1_700_000_000_000_000_000),
        src_incarnation: 2,
        dst: NodeIdentity::new(
            NodeId([8; 32]),
            "10.0.0.2:4747".parse().expect("addr"),
            1_700_000_000_000_000_001,
        ),
        message: Message::Ping(9),
    };
    g.plain("SWIM_HEADER", &header, SWIM_HEADER);
    g.finish();
}

// ---------------------------------------------------------------------------------------------
// node.json
// ---------------------------------------------------------------------------------------------

// When this fails: every node has a node.json. It is JSON: a new field must be
// `#[serde(default)]` (older files lack it) and must not change the meaning of old files; a
// field is never renamed or retyped in place.
pub(crate) const NODE_JSON: &str = r#"{
  "advertise_addr": "10.0.0.2:4747",
  "daemon_advertise_addr": "10.0.0.2:4747",
  "cluster": {
    "cluster_id": "c0ffee0c0ffee0c0ffee0c0ff",
    "role": "Worker",
    "node_cert": "MIIFBg==",
    "ca_cert": "MIIBAg==",
    "seeds": [
      "10.0.0.1:4747"
    ],
    "managers": [
      [
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7,
        7
      ]
    ],
    "removed": []
  }
}"#;

/// A node.json written before `daemon_advertise_addr`, `seeds`, `managers` and `removed`.
pub(crate) const NODE_JSON_OLD: &str = r#"{
  "advertise_addr": null,
  "cluster": {
    "cluster_id": "c0ffee0c0ffee0c0ffee0c0ff",
    "role": "Manager",
    "node_cert": "MIIFBg==",
    "ca_cert": "MIIBAg=="
  }
}"#;

fn saved_config() -> SavedConfig {
    let addr: SocketAddr = "10.0.0.2:4747".parse().expect("addr");
    SavedConfig {
        advertise_addr: Some(addr),
        daemon_advertise_addr: Some(addr),
        cluster: Some(SavedCluster {
            cluster_id: CLUSTER_ID.into(),
            role: Role::Worker,
            node_cert: vec![0x30, 0x82, 0x05, 0x06],
            ca_cert: vec![0x30, 0x82, 0x01, 0x02],
            seeds: vec!["10.0.0.1:4747".into()],
            managers: vec![[7; 32]],
            removed: Vec::new(),
        }),
    }
}

#[test]
fn node_json_keeps_its_format_and_old_files_load() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("node.json");
    let config = saved_config();
    config.save(&path).expect("save");
    let written = std::fs::read_to_string(&path).expect("read");
    assert_eq!(
        written, NODE_JSON,
        "node.json is written differently: existing files must still load (see the comment above)"
    );

    std::fs::write(&path, NODE_JSON).expect("write");
    let back = SavedConfig::load(&path).expect("today's node.json loads");
    assert_eq!(format!("{back:?}"), format!("{config:?}"));

    // An old file: the later fields take their defaults.
    std::fs::write(&path, NODE_JSON_OLD).expect("write");
    let old = SavedConfig::load(&path).expect("an old node.json loads");
    assert_eq!(old.advertise_addr, None);
    assert_eq!(old.daemon_advertise_addr, None);
    let cluster = old.cluster.expect("cluster");
    assert_eq!(cluster.cluster_id, CLUSTER_ID);
    assert_eq!(cluster.role, Role::Manager);
    assert_eq!(cluster.node_cert, vec![0x30, 0x82, 0x05, 0x06]);
    assert!(cluster.seeds.is_empty());
    assert!(cluster.managers.is_empty());
    assert!(cluster.removed.is_empty());

    // A file from a newer version (an extra field) still loads: a downgrade keeps the node.
    let newer = NODE_JSON.replacen('{', "{\n  \"some_future_field\": 1,", 1);
    std::fs::write(&path, newer).expect("write");
    let back = SavedConfig::load(&path).expect("a newer node.json loads");
    assert_eq!(format!("{back:?}"), format!("{config:?}"));
}

// ---------------------------------------------------------------------------------------------
// The rule, demonstrated
// ---------------------------------------------------------------------------------------------

/// Why "new fields are only ever appended" does not make postcard compatible: the bytes carry
/// no field names or count. What is and is not compatible, as executable facts.
#[test]
fn postcard_appended_fields_break_old_bytes_but_appended_variants_do_not() {
    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct V1 {
        a: u32,
    }
    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    struct V2 {
        a: u32,
        #[serde(default)]
        b: u32,
    }
    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    enum E1 {
        A(u32),
    }
    #[derive(Debug, PartialEq, Serialize, serde::Deserialize)]
    enum E2 {
        A(u32),
        B(String),
    }
    let v1 = postcard::to_stdvec(&V1 { a: 1 }).expect("encode");
    // A field appended to a struct: older bytes no longer decode, `serde(default)` or not.
    assert!(postcard::from_bytes::<V2>(&v1).is_err());
    // The newer bytes do decode as the older struct when it is the outermost value (trailing
    // bytes are ignored) — but not when anything follows it, as in a Vec or a later field.
    let v2 = postcard::to_stdvec(&V2 { a: 1, b: 2 }).expect("encode");
    assert_eq!(
        postcard::from_bytes::<V1>(&v2).expect("decode"),
        V1 { a: 1 }
    );
    let two = postcard::to_stdvec(&vec![V2 { a: 1, b: 2 }, V2 { a: 3, b: 4 }]).expect("encode");
    assert_ne!(
        postcard::from_bytes::<Vec<V1>>(&two).ok(),
        Some(vec![V1 { a: 1 }, V1 { a: 3 }])
    );
    // A variant appended to an enum: older bytes decode; the new variant does not decode in an
    // older node (so it is sent only once every reader knows it).
    let e1 = postcard::to_stdvec(&E1::A(7)).expect("encode");
    assert_eq!(postcard::from_bytes::<E2>(&e1).expect("decode"), E2::A(7));
    let e2 = postcard::to_stdvec(&E2::B("x".into())).expect("encode");
    assert!(postcard::from_bytes::<E1>(&e2).is_err());
}

/// The version markers that refuse what a node cannot read.
#[test]
fn version_markers_refuse_other_versions() {
    assert_eq!(FRAME_VERSION, 1);
    assert_eq!(crate::pki::ALPN, b"shoal/1");
    assert_eq!(TOKEN_PREFIX, "SHOAL1-");
    // A frame of another version is refused before its body is looked at.
    assert!(matches!(
        decode_body::<()>(TAG_DISPATCH, &[FRAME_VERSION + 1]),
        Err(NetError::UnsupportedVersion(2))
    ));
    // A state of another version is refused with a message saying so.
    let mut newer = small_state().encode();
    newer[0] = STATE_VERSION + 1;
    let err = ClusterState::decode(&newer).expect_err("newer state");
    assert!(err.contains("not supported by this shoal"), "{err}");
    // A token payload of another version is refused.
    let mut payload = token_payload();
    payload.version = 2;
    let text = format!(
        "{TOKEN_PREFIX}{}.{}",
        URL_SAFE_NO_PAD.encode(postcard::to_stdvec(&payload).expect("encode")),
        URL_SAFE_NO_PAD.encode([0u8; 64])
    );
    let err = JoinToken::parse(&text).expect_err("newer token");
    assert!(err.to_string().contains("unsupported version"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Logs (tag 11)
// ---------------------------------------------------------------------------------------------

// When one of these fails: a manager of one version asks a node of another for a task's logs.
pub(crate) const LOGS_REQUEST: &str = "\
    0b00000024011874303030303030303030303030303030303030303030303101010a0180d095ffbc\
    31";
pub(crate) const LOGS_LINE: &str = "\
    0b000000130100aab4aed8c7bfce972f010668656c6c6f0a";
pub(crate) const LOGS_ALIVE: &str = "\
    0b000000020101";
pub(crate) const LOGS_END: &str = "\
    0b000000020102";
pub(crate) const LOGS_ERROR: &str = "\
    0b000000240103217461736b20743120646f6573206e6f742072756e206f6e2074686973206e6f64\
    65";

#[test]
fn logs_frames_keep_their_bytes() {
    use crate::logs::{LogLine, LogsFrame, LogsRequest, TAG_LOGS};
    let mut g = Golden::default();
    let req = LogsRequest {
        task_id: "t00000000000000000000001".into(),
        follow: true,
        tail: Some(10),
        since_ms: Some(1_700_000_000_000),
    };
    g.frame("LOGS_REQUEST", TAG_LOGS, &req, LOGS_REQUEST);
    let line = LogsFrame::Line(LogLine {
        timestamp_ns: 1_700_000_000_123_456_789,
        stderr: true,
        data: b"hello\n".to_vec(),
    });
    g.frame("LOGS_LINE", TAG_LOGS, &line, LOGS_LINE);
    g.frame("LOGS_ALIVE", TAG_LOGS, &LogsFrame::Alive, LOGS_ALIVE);
    g.frame("LOGS_END", TAG_LOGS, &LogsFrame::End, LOGS_END);
    let error = LogsFrame::Error("task t1 does not run on this node".into());
    g.frame("LOGS_ERROR", TAG_LOGS, &error, LOGS_ERROR);
    g.finish();
}

/// Bytes version 2 wrote (the log's `CreateV2`, `UpdateV2` and `RestoreV2`, a snapshot's
/// state) decode into today's types: endpoint mode `vip`, no exposed ports, and every live
/// service a VIP index in the order it was created; an old command applies as its `…V3`.
#[test]
fn version_2_bytes_decode_into_todays_types() {
    let as_v2 = |s: &ServiceSpec| ServiceSpec {
        endpoint_mode: EndpointMode::Vip,
        expose: Vec::new(),
        mounts: Vec::new(),
        options: TaskOptionsSpec::default(),
        configs: Vec::new(),
        ..s.clone()
    };
    let record_as_v2 = |r: &ServiceRecord| ServiceRecord {
        spec: as_v2(&r.spec),
        previous_spec: r.previous_spec.as_ref().map(as_v2),
        older_specs: r.older_specs.iter().map(|(&v, s)| (v, as_v2(s))).collect(),
        vip_index: None,
        ..r.clone()
    };
    let state = ClusterState::decode(&unhex(STATE_FULL_V2)).expect("STATE_FULL_V2 decodes");
    let mut want = full_state();
    for r in want
        .services
        .services
        .values_mut()
        .chain(want.services.removed.values_mut())
    {
        *r = record_as_v2(r);
    }
    if let Some(r) = want.services.services.get_mut(SERVICE_ID) {
        r.vip_index = Some(0);
    }
    want.services.configs = BTreeMap::new();
    assert_eq!(state, want);

    let decode = |name: &str, golden: &str| -> Command {
        postcard::from_bytes(&unhex(golden)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let mut base = ClusterState::default();
    base.apply(&Command::InitCluster {
        cluster: cluster_record(),
        node: manager_record(),
    });
    let apply_both = |old: &Command, new: &Command, base: &ClusterState| {
        let (mut a, mut b) = (base.clone(), base.clone());
        assert_eq!(a.apply(old), b.apply(new), "{old:?}");
        assert_eq!(a, b, "{old:?}");
        a
    };
    // `CreateV2`: the record converted, the VIP index the state machine's.
    let today = record_as_v2(&service_record());
    let created = apply_both(
        &decode("CMD_SERVICE_CREATE_V2", CMD_SERVICE_CREATE_V2),
        &Command::Services(ServiceCommand::create(today.clone())),
        &base,
    );
    assert_eq!(
        created.services.services[SERVICE_ID],
        ServiceRecord {
            vip_index: Some(0),
            ..today
        }
    );
    // `UpdateV2`: the spec converted.
    let updated = apply_both(
        &decode("CMD_SERVICE_UPDATE_V2", CMD_SERVICE_UPDATE_V2),
        &Command::Services(ServiceCommand::update(
            SERVICE_ID,
            as_v2(&service_spec_no_health()),
            T0 + 62,
        )),
        &created,
    );
    assert_eq!(
        updated.services.services[SERVICE_ID].spec,
        as_v2(&service_spec_no_health())
    );
    // `RestoreV2`: the state converted.
    let restored = apply_both(
        &decode("CMD_RESTORE_V2", CMD_RESTORE_V2),
        &Command::RestoreV4(Box::new(ClusterState::from(state_v2(&restore_state())))),
        &updated,
    );
    assert_eq!(
        restored.services.services[SERVICE_ID].vip_index,
        Some(0),
        "a converted state gives its live services VIP indexes"
    );
}

/// Assignments an older leader sends (`ToWorker::Assignments`, without the task options)
/// read as today's with the default options; today's converts back to the same bytes.
#[test]
fn version_1_assignments_read_as_todays_without_options() {
    let old: ToWorker = crate::net::decode_body(TAG_DISPATCH, &unhex(TO_WORKER_ASSIGNMENTS)[5..])
        .expect("TO_WORKER_ASSIGNMENTS decodes");
    let ToWorker::Assignments(set) = old else {
        panic!("TO_WORKER_ASSIGNMENTS decodes to {old:?}");
    };
    assert_eq!(set.clone().into_today(), Some(assignment_set()));
    assert_eq!(AssignmentSetV1::from_today(&assignment_set()), set);
    assert_eq!(
        assignment_set().tasks[0].spec.options,
        shoal_runtime::TaskOptions::default()
    );
}
