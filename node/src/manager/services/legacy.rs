//! The service types as version 1 of the Raft log and of the cluster state stored them
//! (before the rollback settings, `--no-healthcheck`, the force counter and the older specs),
//! and as version 2 did (before the endpoint mode, the exposed ports and the VIP index), kept
//! so that every entry and snapshot written then still decodes, and converted into today's
//! types with Docker's defaults for what they lack.
//!
//! Postcard is not self-describing: these are the old field lists, in the old order, with the
//! old types. Never change them (golden bytes in `formats.rs`); a later change of the records
//! adds `…V2` types here the same way. They appear in the old command variants
//! ([`super::ServiceCommand::Create`], [`super::ServiceCommand::Update`]), in
//! `Command::Restore` and in the version-1 cluster state (`ClusterStateV1`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use shoal_scheduler::Task;

use super::spec::{
    ConfigRef, EndpointMode, FailureAction, HealthCheckSpec, MountSpec, PortSpec, ResourceSpec,
    RestartPolicySpec, ServiceMode, ServiceSpec, TaskOptionsSpec, UpdateConfig, UpdateOrder,
};
use super::state::{ConfigRecord, ServiceRecord, ServicesState, TaskHealth, UpdateStatus};
use crate::manager::state::Millis;

/// [`UpdateConfig`] before `monitor_ms` and `max_failure_ratio_ppm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateConfigV1 {
    /// Tasks replaced at once (0 = all at once).
    pub parallelism: u64,
    /// Pause between batches, in milliseconds.
    pub delay_ms: u64,
    /// Stop-first or start-first.
    pub order: UpdateOrder,
    /// What to do when a new task fails.
    pub failure_action: FailureAction,
}

impl From<UpdateConfigV1> for UpdateConfig {
    /// Docker's defaults for the rest: a 5 s monitor, a failure ratio of 0.
    fn from(u: UpdateConfigV1) -> Self {
        let UpdateConfigV1 {
            parallelism,
            delay_ms,
            order,
            failure_action,
        } = u;
        UpdateConfig {
            parallelism,
            delay_ms,
            order,
            failure_action,
            ..UpdateConfig::default()
        }
    }
}

/// [`ServiceSpec`] before `rollback_config`, `no_healthcheck` and `force_update`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpecV1 {
    /// Unique name.
    pub name: String,
    /// Docker: image reference. Process: absolute path of the program.
    pub image: String,
    /// Command arguments.
    pub args: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// `docker` or `process`.
    pub driver: String,
    /// Replicated or global.
    pub mode: ServiceMode,
    /// Published ports.
    pub ports: Vec<PortSpec>,
    /// Placement constraints.
    pub constraints: Vec<String>,
    /// Reserved per task.
    pub reservations: ResourceSpec,
    /// Limits per task.
    pub limits: ResourceSpec,
    /// Restart policy.
    pub restart_policy: RestartPolicySpec,
    /// At most this many tasks per node (0 = unlimited).
    pub max_replicas_per_node: u64,
    /// Health check.
    pub health_check: Option<HealthCheckSpec>,
    /// Labels put on the tasks.
    pub labels: BTreeMap<String, String>,
    /// Time between the stop signal and SIGKILL, in milliseconds.
    pub stop_grace_ms: u64,
    /// Rolling update settings.
    pub update_config: UpdateConfigV1,
}

impl From<ServiceSpecV1> for ServiceSpec {
    /// Docker's defaults for the rest: default rollback settings, the health check as the spec
    /// (or the image) says, the force counter at 0.
    fn from(s: ServiceSpecV1) -> Self {
        let ServiceSpecV1 {
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
        } = s;
        ServiceSpec {
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
            update_config: update_config.into(),
            rollback_config: UpdateConfig::default(),
            no_healthcheck: false,
            force_update: 0,
            endpoint_mode: EndpointMode::default(),
            expose: Vec::new(),
            mounts: Vec::new(),
            options: super::spec::TaskOptionsSpec::default(),
            configs: Vec::new(),
            secrets: Vec::new(),
        }
    }
}

/// [`ServiceRecord`] before `older_specs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecordV1 {
    /// Service ID.
    pub id: String,
    /// Current spec.
    pub spec: ServiceSpecV1,
    /// Spec version.
    pub version: u64,
    /// The spec before the last update: what tasks of `version - 1` run.
    pub previous_spec: Option<ServiceSpecV1>,
    /// When it was created.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
    /// Latest rolling update, if any.
    pub update_status: Option<UpdateStatus>,
}

impl From<ServiceRecordV1> for ServiceRecord {
    /// The previous spec is also the older spec of `version - 1`: in version 1 a task of that
    /// version ran the previous spec, and a task of any other version the current one.
    fn from(r: ServiceRecordV1) -> Self {
        let ServiceRecordV1 {
            id,
            spec,
            version,
            previous_spec,
            created_at,
            updated_at,
            update_status,
        } = r;
        let previous_spec = previous_spec.map(ServiceSpec::from);
        let older_specs = match (&previous_spec, version.checked_sub(1)) {
            (Some(prev), Some(v)) => BTreeMap::from([(v, prev.clone())]),
            _ => BTreeMap::new(),
        };
        ServiceRecord {
            id,
            spec: spec.into(),
            version,
            previous_spec,
            created_at,
            updated_at,
            update_status,
            older_specs,
            vip_index: None,
        }
    }
}

/// [`ServicesState`] holding version-1 records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicesStateV1 {
    /// Live services by ID.
    pub services: BTreeMap<String, ServiceRecordV1>,
    /// Every task (current and history) by ID.
    pub tasks: BTreeMap<String, Task>,
    /// Removed services whose tasks still exist.
    pub removed: BTreeMap<String, ServiceRecordV1>,
    /// Last reported health of running tasks that have a health check.
    pub health: BTreeMap<String, TaskHealth>,
}

impl From<ServicesStateV1> for ServicesState {
    fn from(s: ServicesStateV1) -> Self {
        let ServicesStateV1 {
            services,
            tasks,
            removed,
            health,
        } = s;
        let records = |m: BTreeMap<String, ServiceRecordV1>| {
            m.into_iter()
                .map(|(id, r)| (id, ServiceRecord::from(r)))
                .collect()
        };
        let mut state = ServicesState {
            services: records(services),
            tasks,
            removed: records(removed),
            health,
            ..ServicesState::default()
        };
        state.assign_vip_indexes();
        state
    }
}

/// [`ServiceSpec`] as version 2 stored it: before `endpoint_mode` and `expose`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpecV2 {
    /// Unique name.
    pub name: String,
    /// Docker: image reference. Process: absolute path of the program.
    pub image: String,
    /// Command arguments.
    pub args: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// `docker` or `process`.
    pub driver: String,
    /// Replicated or global.
    pub mode: ServiceMode,
    /// Published ports.
    pub ports: Vec<PortSpec>,
    /// Placement constraints.
    pub constraints: Vec<String>,
    /// Reserved per task.
    pub reservations: ResourceSpec,
    /// Limits per task.
    pub limits: ResourceSpec,
    /// Restart policy.
    pub restart_policy: RestartPolicySpec,
    /// At most this many tasks per node (0 = unlimited).
    pub max_replicas_per_node: u64,
    /// Health check.
    pub health_check: Option<HealthCheckSpec>,
    /// Labels put on the tasks.
    pub labels: BTreeMap<String, String>,
    /// Time between the stop signal and SIGKILL, in milliseconds.
    pub stop_grace_ms: u64,
    /// Rolling update settings.
    pub update_config: UpdateConfig,
    /// Rollback settings.
    pub rollback_config: UpdateConfig,
    /// `--no-healthcheck`.
    pub no_healthcheck: bool,
    /// The force counter.
    pub force_update: u64,
}

impl From<ServiceSpecV2> for ServiceSpec {
    /// Docker's defaults for the rest: endpoint mode `vip`, no exposed ports.
    fn from(s: ServiceSpecV2) -> Self {
        let ServiceSpecV2 {
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
        } = s;
        ServiceSpec {
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
            endpoint_mode: EndpointMode::default(),
            expose: Vec::new(),
            mounts: Vec::new(),
            options: super::spec::TaskOptionsSpec::default(),
            configs: Vec::new(),
            secrets: Vec::new(),
        }
    }
}

/// [`ServiceRecord`] as version 2 stored it: version-2 specs, no VIP index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecordV2 {
    /// Service ID.
    pub id: String,
    /// Current spec.
    pub spec: ServiceSpecV2,
    /// Spec version.
    pub version: u64,
    /// The spec before the last update.
    pub previous_spec: Option<ServiceSpecV2>,
    /// When it was created.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
    /// Latest rolling update, if any.
    pub update_status: Option<UpdateStatus>,
    /// The specs of earlier versions that tasks still run.
    pub older_specs: BTreeMap<u64, ServiceSpecV2>,
}

impl From<ServiceRecordV2> for ServiceRecord {
    /// The specs converted; the VIP index is given by the state machine (at create, or when a
    /// whole state is converted).
    fn from(r: ServiceRecordV2) -> Self {
        let ServiceRecordV2 {
            id,
            spec,
            version,
            previous_spec,
            created_at,
            updated_at,
            update_status,
            older_specs,
        } = r;
        ServiceRecord {
            id,
            spec: spec.into(),
            version,
            previous_spec: previous_spec.map(ServiceSpec::from),
            created_at,
            updated_at,
            update_status,
            older_specs: older_specs
                .into_iter()
                .map(|(v, s)| (v, ServiceSpec::from(s)))
                .collect(),
            vip_index: None,
        }
    }
}

/// [`ServicesState`] holding version-2 records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicesStateV2 {
    /// Live services by ID.
    pub services: BTreeMap<String, ServiceRecordV2>,
    /// Every task (current and history) by ID.
    pub tasks: BTreeMap<String, Task>,
    /// Removed services whose tasks still exist.
    pub removed: BTreeMap<String, ServiceRecordV2>,
    /// Last reported health of running tasks that have a health check.
    pub health: BTreeMap<String, TaskHealth>,
}

impl From<ServicesStateV2> for ServicesState {
    /// Every live service gets a VIP index, in the order they were created.
    fn from(s: ServicesStateV2) -> Self {
        let ServicesStateV2 {
            services,
            tasks,
            removed,
            health,
        } = s;
        let records = |m: BTreeMap<String, ServiceRecordV2>| {
            m.into_iter()
                .map(|(id, r)| (id, ServiceRecord::from(r)))
                .collect()
        };
        let mut state = ServicesState {
            services: records(services),
            tasks,
            removed: records(removed),
            health,
            ..ServicesState::default()
        };
        state.assign_vip_indexes();
        state
    }
}

/// [`ServiceSpec`] as version 3 stored it: before `secrets`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSpecV3 {
    /// Unique name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 63 characters.
    pub name: String,
    /// Docker: image reference. Process: absolute path of the program.
    pub image: String,
    /// Command arguments (Docker: replaces the image's `CMD` when not empty).
    pub args: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// `docker` or `process`.
    pub driver: String,
    /// Replicated or global.
    pub mode: ServiceMode,
    /// Published ports.
    pub ports: Vec<PortSpec>,
    /// Placement constraints (`node.labels.zone==attic`), checked by [`ServiceSpec::validate`].
    pub constraints: Vec<String>,
    /// Reserved per task (placement).
    pub reservations: ResourceSpec,
    /// Limits per task (enforced by the driver).
    pub limits: ResourceSpec,
    /// Restart policy.
    pub restart_policy: RestartPolicySpec,
    /// At most this many tasks per node (0 = unlimited).
    pub max_replicas_per_node: u64,
    /// Health check.
    pub health_check: Option<HealthCheckSpec>,
    /// Labels put on the tasks (may not start with `shoal.`).
    pub labels: BTreeMap<String, String>,
    /// Time between the stop signal and SIGKILL, in milliseconds.
    pub stop_grace_ms: u64,
    /// Rolling update settings.
    pub update_config: UpdateConfig,
    /// Rollback settings (`--rollback-*`; the failure action is pause or continue).
    pub rollback_config: UpdateConfig,
    /// `--no-healthcheck`: disable any health check, the image's `HEALTHCHECK` included.
    pub no_healthcheck: bool,
    /// Bumped by `service update --force`: a changed value replaces every task.
    pub force_update: u64,
    /// How the service's name resolves (`--endpoint-mode`).
    pub endpoint_mode: EndpointMode,
    /// Target ports reachable by name without publishing them (`--expose`, compose's
    /// `expose:`): with the published ports' targets, the ports of its VIP.
    pub expose: Vec<u16>,
    /// Mounts on every task (`--mount`; Docker driver only).
    pub mounts: Vec<MountSpec>,
    /// User, directory, entrypoint, hostname, init, devices and privileges of every task
    /// (Docker driver only).
    pub options: TaskOptionsSpec,
    /// Configs given to every task as files (`--config`; Docker driver only).
    pub configs: Vec<ConfigRef>,
}

impl From<ServiceSpecV3> for ServiceSpec {
    /// No secrets.
    fn from(s: ServiceSpecV3) -> Self {
        let ServiceSpecV3 {
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
        } = s;
        ServiceSpec {
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
            secrets: Vec::new(),
        }
    }
}

/// [`ServiceRecord`] as version 3 stored it: version-3 specs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecordV3 {
    /// Service ID.
    pub id: String,
    /// Current spec.
    pub spec: ServiceSpecV3,
    /// Spec version.
    pub version: u64,
    /// The spec before the last update.
    pub previous_spec: Option<ServiceSpecV3>,
    /// When it was created.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
    /// Latest rolling update, if any.
    pub update_status: Option<UpdateStatus>,
    /// The specs of earlier versions that tasks still run.
    pub older_specs: BTreeMap<u64, ServiceSpecV3>,
    /// Its VIP index.
    pub vip_index: Option<u32>,
}

impl From<ServiceRecordV3> for ServiceRecord {
    fn from(r: ServiceRecordV3) -> Self {
        let ServiceRecordV3 {
            id,
            spec,
            version,
            previous_spec,
            created_at,
            updated_at,
            update_status,
            older_specs,
            vip_index,
        } = r;
        ServiceRecord {
            id,
            spec: spec.into(),
            version,
            previous_spec: previous_spec.map(ServiceSpec::from),
            created_at,
            updated_at,
            update_status,
            older_specs: older_specs
                .into_iter()
                .map(|(v, s)| (v, ServiceSpec::from(s)))
                .collect(),
            vip_index,
        }
    }
}

/// [`ServicesState`] as version 3 stored it: version-3 records, no secrets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicesStateV3 {
    /// Live services by ID.
    pub services: BTreeMap<String, ServiceRecordV3>,
    /// Every task (current and history) by ID.
    pub tasks: BTreeMap<String, Task>,
    /// Removed services whose tasks still exist.
    pub removed: BTreeMap<String, ServiceRecordV3>,
    /// Last reported health of running tasks that have a health check.
    pub health: BTreeMap<String, TaskHealth>,
    /// Configs by ID.
    pub configs: BTreeMap<String, ConfigRecord>,
}

impl From<ServicesStateV3> for ServicesState {
    fn from(s: ServicesStateV3) -> Self {
        let ServicesStateV3 {
            services,
            tasks,
            removed,
            health,
            configs,
        } = s;
        let records = |m: BTreeMap<String, ServiceRecordV3>| {
            m.into_iter()
                .map(|(id, r)| (id, ServiceRecord::from(r)))
                .collect()
        };
        ServicesState {
            services: records(services),
            tasks,
            removed: records(removed),
            health,
            configs,
            ..ServicesState::default()
        }
    }
}
