//! Services and tasks in the replicated state: the records, [`ServicesState`] and its
//! deterministic [`ServicesState::apply`] for [`ServiceCommand`]s. Every timestamp and every ID
//! comes inside the command (the API handler stamps and draws them); nothing here reads a
//! clock, draws randomness or iterates a hash map.
//!
//! Encoded with postcard inside the Raft log and snapshots: externally tagged enums, no
//! skipped or flattened fields. New enum variants go at the end only; a field added to a
//! struct breaks decoding of older log entries, so a changed record needs a new command
//! variant and a migration (golden bytes in `formats.rs`).

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use shoal_scheduler::{Decision, DesiredState, Task, TaskState, Timestamp};

use super::legacy::{
    ServiceRecordV1, ServiceRecordV2, ServiceRecordV3, ServiceSpecV1, ServiceSpecV2, ServiceSpecV3,
};
use super::spec::{
    MAX_REPLICAS, MAX_TASK_ERROR_LEN, ServiceMode, ServiceSpec, mode_word, validate_ident,
};
use crate::manager::state::{Millis, NodeRecord};

/// Phase of a rolling update or rollback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    /// Tasks are being replaced.
    Updating,
    /// Paused after a failure.
    Paused,
    /// All tasks run the new spec.
    Completed,
    /// Rolling back to the previous spec.
    RollbackStarted,
    /// A rollback paused after a failure.
    RollbackPaused,
    /// The rollback finished.
    RollbackCompleted,
}

shoal_scheduler::words!(UpdateState, "update state",
    "updating, paused, completed, rollback_started, rollback_paused or rollback_completed", {
    UpdateState::Updating => "updating",
    UpdateState::Paused => "paused",
    UpdateState::Completed => "completed",
    UpdateState::RollbackStarted => "rollback_started",
    UpdateState::RollbackPaused => "rollback_paused",
    UpdateState::RollbackCompleted => "rollback_completed",
});

/// Progress of the latest update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpdateStatus {
    /// Phase.
    pub state: UpdateState,
    /// When it started.
    pub started_at: Option<Millis>,
    /// When it ended.
    pub completed_at: Option<Millis>,
    /// A human sentence (e.g. why it paused).
    pub message: String,
}

/// A service as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceRecord {
    /// Service ID (25 lowercase alphanumerics, made by the API handler that proposes the
    /// create: nothing here draws randomness).
    pub id: String,
    /// Current spec.
    pub spec: ServiceSpec,
    /// Spec version: 1 at creation, +1 on every update or rollback (not on scale). Tasks
    /// record the version they were created from.
    pub version: u64,
    /// The spec before the last update (for `service rollback`).
    pub previous_spec: Option<ServiceSpec>,
    /// When it was created.
    pub created_at: Millis,
    /// Last change.
    pub updated_at: Millis,
    /// Latest rolling update, if any.
    pub update_status: Option<UpdateStatus>,
    /// The specs of earlier versions that tasks still run (or ran: history), by version; the
    /// current and previous specs are in `spec` and `previous_spec` too. Dropped once no task
    /// of the version is left.
    pub older_specs: BTreeMap<u64, ServiceSpec>,
    /// Its virtual IP's index in every node's VIP range (service discovery): given by the
    /// state machine at create, the lowest index no other live service holds; freed when the
    /// service is removed. `None` only past the end of every range (never in practice).
    pub vip_index: Option<u32>,
}

impl ServiceRecord {
    /// A new record at version 1.
    pub fn new(id: impl Into<String>, spec: ServiceSpec, at: Millis) -> Self {
        ServiceRecord {
            id: id.into(),
            spec,
            version: 1,
            previous_spec: None,
            created_at: at,
            updated_at: at,
            update_status: None,
            older_specs: BTreeMap::new(),
            vip_index: None,
        }
    }

    /// The spec a task created from `version` runs (the current spec for the current version
    /// or a version no longer known).
    pub fn spec_for_version(&self, version: u64) -> &ServiceSpec {
        if version == self.version {
            return &self.spec;
        }
        self.older_specs.get(&version).unwrap_or(&self.spec)
    }

    /// The versions whose tasks run what the current spec asks for (the current version, and
    /// an older one with the same task fields: after a rollback, or an update that changed
    /// only settings).
    pub fn current_versions(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .older_specs
            .iter()
            .filter(|(_, s)| s.same_task(&self.spec))
            .map(|(&k, _)| k)
            .collect();
        v.push(self.version);
        v
    }

    /// True while a rolling update or rollback is replacing tasks (not paused, not done).
    pub fn update_in_progress(&self) -> bool {
        self.update_status.as_ref().is_some_and(|u| {
            matches!(
                u.state,
                UpdateState::Updating | UpdateState::RollbackStarted
            )
        })
    }
}

/// Health of a task as its worker last reported it: the scheduler's vocabulary, shared with
/// the worker's reports.
pub use shoal_scheduler::TaskHealth;

/// A worker's report of one task's state (batched in [`ServiceCommand::TaskReports`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// The task.
    pub task_id: String,
    /// `preparing`, `starting`, `running`, `complete`, `failed`, `shutdown` or `rejected`.
    pub state: TaskState,
    /// Exit code once exited.
    pub exit_code: Option<i64>,
    /// Why it failed or was rejected.
    pub error: Option<String>,
    /// Health check state.
    pub health: TaskHealth,
    /// When the worker saw it (the worker's clock: informational only).
    pub at_ms: Millis,
}

/// At most this many bytes in a config (Swarm's limit).
pub const MAX_CONFIG_BYTES: usize = 500 * 1024;

/// A config (`shoal config create`): a named, immutable file given to the tasks of the
/// services that reference it. Not secret: stored and sent as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigRecord {
    /// Config ID (drawn by the API handler).
    pub id: String,
    /// Unique name: `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, at most 64 characters.
    pub name: String,
    /// The file's bytes (at most [`MAX_CONFIG_BYTES`]).
    pub data: Vec<u8>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// When it was created.
    pub created_at: Millis,
}

/// Services and tasks as Raft replicates them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServicesState {
    /// Live services by ID.
    pub services: BTreeMap<String, ServiceRecord>,
    /// Every task (current and history) by ID.
    pub tasks: BTreeMap<String, Task>,
    /// Removed services whose tasks still exist (their workers still need the driver and
    /// name to stop them); dropped once their last task is removed.
    pub removed: BTreeMap<String, ServiceRecord>,
    /// Last reported health of running tasks that have a health check.
    pub health: BTreeMap<String, TaskHealth>,
    /// Configs by ID.
    pub configs: BTreeMap<String, ConfigRecord>,
    /// Secrets by ID (encrypted).
    pub secrets: BTreeMap<String, super::SecretRecord>,
    /// The cluster's secrets key sealed to each manager's node key, by node ID.
    pub secrets_key: BTreeMap<String, crate::pki::seal::SealedKey>,
}

/// A change to services or tasks, proposed through Raft inside
/// `Command::Services`. Variants are only ever appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServiceCommand {
    /// `service create` as version 1 wrote it (a record without the later fields): applied as
    /// [`ServiceCommand::CreateV2`] of the converted record. Kept for the log; not proposed.
    Create(Box<ServiceRecordV1>),
    /// `service update` as version 1 wrote it: applied as [`ServiceCommand::UpdateV2`] of the
    /// converted spec. Kept for the log; not proposed.
    Update {
        /// Service ID.
        id: String,
        /// The whole new spec.
        spec: Box<ServiceSpecV1>,
        /// When.
        at: Millis,
    },
    /// `service scale`: replicated services only; the version does not change.
    Scale {
        /// Service ID.
        id: String,
        /// New replica count.
        replicas: u64,
        /// When.
        at: Millis,
    },
    /// `service rm`: the service goes; the orchestrator then stops and removes its tasks.
    Remove {
        /// Service ID.
        id: String,
        /// When.
        at: Millis,
    },
    /// The orchestrator's decisions (from `shoal_scheduler::reconcile`), applied in order;
    /// decisions that no longer apply are skipped.
    ApplyDecisions {
        /// The plan's decisions.
        decisions: Vec<Decision>,
        /// The `now` the plan was computed for.
        now: Millis,
    },
    /// State reports from the worker of `node_id`; reports for tasks not assigned to it are
    /// ignored.
    TaskReports {
        /// The reporting node.
        node_id: String,
        /// Reports in the order observed.
        reports: Vec<TaskReport>,
        /// When the manager received them (stamps `updated_at`/`ended_at`: the leader's
        /// clock, not the worker's).
        at: Millis,
    },
    /// `service rollback`: back to the previous spec (version + 1).
    Rollback {
        /// Service ID.
        id: String,
        /// When.
        at: Millis,
    },
    /// Records a rolling update's progress.
    SetUpdateStatus {
        /// Service ID.
        id: String,
        /// New status.
        status: Option<UpdateStatus>,
        /// When.
        at: Millis,
    },
    /// The orchestrator's verdict on the rolling update (or rollback) of `version`: applied
    /// only while the service is still at that version with its update in progress, so a
    /// stale verdict never overrides a newer update. `Completed`/`RollbackCompleted` end it,
    /// `Paused`/`RollbackPaused` pause it, `RollbackStarted` rolls back to the previous spec
    /// (the failure action `rollback`). `message` says why.
    UpdateVerdict {
        /// Service ID.
        id: String,
        /// The spec version the verdict is about.
        version: u64,
        /// The new state.
        state: UpdateState,
        /// Why (shown by `service inspect` and `service update`).
        message: String,
        /// When.
        at: Millis,
    },
    /// `service create` as version 2 wrote it (before the endpoint mode, the exposed ports and
    /// the VIP index): applied as [`ServiceCommand::CreateV3`] of the converted record. Kept
    /// for the log; not proposed.
    CreateV2(Box<ServiceRecordV2>),
    /// `service update` as version 2 wrote it: applied as [`ServiceCommand::UpdateV3`] of the
    /// converted spec. Kept for the log; not proposed.
    UpdateV2 {
        /// Service ID.
        id: String,
        /// The whole new spec.
        spec: Box<ServiceSpecV2>,
        /// When.
        at: Millis,
    },
    /// `service create` as version 3 wrote it (before secrets): applied as
    /// [`ServiceCommand::CreateV4`] of the converted record. Kept for the log; not proposed.
    CreateV3(Box<ServiceRecordV3>),
    /// `service update` as version 3 wrote it: applied as [`ServiceCommand::UpdateV4`] of the
    /// converted spec. Kept for the log; not proposed.
    UpdateV3 {
        /// Service ID.
        id: String,
        /// The whole new spec.
        spec: Box<ServiceSpecV3>,
        /// When.
        at: Millis,
    },
    /// `config create`: unique ID and name, at most [`MAX_CONFIG_BYTES`].
    CreateConfig(Box<ConfigRecord>),
    /// `config rm`: refused while a service's current spec uses it.
    RemoveConfig {
        /// Config ID.
        id: String,
    },
    /// `service create`: unique ID and name; the spec must validate. The record's VIP index
    /// is the state machine's to give: whatever the command carries is replaced.
    CreateV4(Box<ServiceRecord>),
    /// `service update`: a new spec (same name and mode kind); bumps the version and keeps
    /// the old spec for rollback.
    UpdateV4 {
        /// Service ID.
        id: String,
        /// The whole new spec.
        spec: Box<ServiceSpec>,
        /// When.
        at: Millis,
    },
    /// `secret create`: unique ID and name, at most [`super::MAX_SECRET_BYTES`], encrypted
    /// under the secrets key the managers hold.
    CreateSecret(Box<super::SecretRecord>),
    /// `secret rm`: refused while a service's current spec uses it.
    RemoveSecret {
        /// Secret ID.
        id: String,
    },
    /// The secrets key sealed to managers (by node ID: added or replaced), and taken from
    /// others (`drop`: demoted or removed nodes). Refused when it would mix two keys.
    ShareSecretsKey {
        /// Sealed keys by node ID.
        set: BTreeMap<String, crate::pki::seal::SealedKey>,
        /// Node IDs whose sealed key is dropped.
        drop: Vec<String>,
    },
}

/// What an applied [`ServiceCommand`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceOutcome {
    /// A service was created.
    Created {
        /// Its ID.
        id: String,
    },
    /// A service's spec changed (update or rollback).
    Updated {
        /// Its ID.
        id: String,
        /// The new version.
        version: u64,
    },
    /// A service was scaled.
    Scaled {
        /// Its ID.
        id: String,
        /// The new count.
        replicas: u64,
    },
    /// A service was removed.
    Removed {
        /// Its ID.
        id: String,
        /// Its tasks still to be stopped and removed.
        tasks_left: usize,
    },
    /// A rolling update status was recorded.
    StatusSet,
    /// A config was created or removed.
    Config {
        /// Its ID.
        id: String,
    },
    /// Decisions applied.
    Decisions {
        /// Applied.
        applied: usize,
        /// Skipped because they no longer applied.
        skipped: usize,
    },
    /// Reports applied.
    Reports {
        /// Accepted.
        accepted: usize,
        /// Ignored (unknown task, another node's task, or a backward move).
        ignored: usize,
    },
}

impl ServiceCommand {
    /// [`ServiceCommand::CreateV4`] for `record`.
    pub fn create(record: ServiceRecord) -> Self {
        ServiceCommand::CreateV4(Box::new(record))
    }

    /// [`ServiceCommand::UpdateV4`] of service `id` to `spec`.
    pub fn update(id: impl Into<String>, spec: ServiceSpec, at: Millis) -> Self {
        ServiceCommand::UpdateV4 {
            id: id.into(),
            spec: Box::new(spec),
            at,
        }
    }
}

fn no_such_config(id: &str) -> String {
    format!("no such config: {id}")
}

fn no_such_service(id: &str) -> String {
    format!("no such service: {id}")
}

impl ServicesState {
    /// The lowest VIP index no live service holds (a removed service's index is free again).
    #[must_use]
    pub fn free_vip_index(&self) -> Option<u32> {
        crate::dns::vip::lowest_free(self.services.values().filter_map(|r| r.vip_index), u32::MAX)
    }

    /// Gives every live service without a VIP index one, in the order they were created (then
    /// by ID): what a state written before VIP indexes existed gets when it is converted.
    pub fn assign_vip_indexes(&mut self) {
        let mut order: Vec<(Millis, String)> = self
            .services
            .values()
            .filter(|r| r.vip_index.is_none())
            .map(|r| (r.created_at, r.id.clone()))
            .collect();
        order.sort();
        for (_, id) in order {
            let index = self.free_vip_index();
            if let Some(rec) = self.services.get_mut(&id) {
                rec.vip_index = index;
            }
        }
    }

    /// Applies `cmd` against the node table `nodes`; a refused command changes nothing.
    pub fn apply(
        &mut self,
        cmd: &ServiceCommand,
        nodes: &BTreeMap<String, NodeRecord>,
    ) -> Result<ServiceOutcome, String> {
        match cmd {
            ServiceCommand::Create(record) => self.create(&ServiceRecord::from((**record).clone())),
            ServiceCommand::CreateV2(record) => {
                self.create(&ServiceRecord::from((**record).clone()))
            }
            ServiceCommand::CreateV3(record) => {
                self.create(&ServiceRecord::from((**record).clone()))
            }
            ServiceCommand::CreateV4(record) => self.create(record),
            ServiceCommand::CreateSecret(secret) => self.create_secret(secret),
            ServiceCommand::RemoveSecret { id } => self.remove_secret(id),
            ServiceCommand::ShareSecretsKey { set, drop } => self.share_secrets_key(set, drop),
            ServiceCommand::CreateConfig(config) => self.create_config(config),
            ServiceCommand::RemoveConfig { id } => {
                let config = self.configs.get(id).ok_or_else(|| no_such_config(id))?;
                if let Some(user) = self
                    .services
                    .values()
                    .find(|s| s.spec.configs.iter().any(|c| c.config_id == *id))
                {
                    return Err(format!(
                        "config `{}` is in use by service `{}`: remove it from the service first (`service update --config-rm {}`)",
                        config.name, user.spec.name, config.name
                    ));
                }
                self.configs.remove(id);
                Ok(ServiceOutcome::Config { id: id.clone() })
            }
            ServiceCommand::Update { id, spec, at } => {
                let spec = ServiceSpec::from((**spec).clone());
                self.update(id, &spec, *at, false, "update in progress")
            }
            ServiceCommand::UpdateV2 { id, spec, at } => {
                let spec = ServiceSpec::from((**spec).clone());
                self.update(id, &spec, *at, false, "update in progress")
            }
            ServiceCommand::UpdateV3 { id, spec, at } => {
                let spec = ServiceSpec::from((**spec).clone());
                self.update(id, &spec, *at, false, "update in progress")
            }
            ServiceCommand::UpdateV4 { id, spec, at } => {
                self.update(id, spec, *at, false, "update in progress")
            }
            ServiceCommand::Rollback { id, at } => {
                let rec = self.services.get(id).ok_or_else(|| no_such_service(id))?;
                let Some(prev) = rec.previous_spec.clone() else {
                    return Err(format!(
                        "service `{}` has no previous spec to roll back to",
                        rec.spec.name
                    ));
                };
                let message = match &rec.update_status {
                    Some(u) if u.state == UpdateState::Paused => "rollback of a paused update",
                    _ => "manually requested rollback",
                };
                self.update(id, &prev, *at, true, message)
            }
            ServiceCommand::Scale { id, replicas, at } => {
                let rec = self
                    .services
                    .get_mut(id)
                    .ok_or_else(|| no_such_service(id))?;
                if rec.spec.mode == ServiceMode::Global {
                    return Err(format!(
                        "service `{}` is global: only replicated services can be scaled",
                        rec.spec.name
                    ));
                }
                if *replicas > MAX_REPLICAS {
                    return Err(format!(
                        "invalid replicas {replicas}: at most {MAX_REPLICAS}"
                    ));
                }
                rec.spec.mode = ServiceMode::Replicated {
                    replicas: *replicas,
                };
                rec.updated_at = *at;
                Ok(ServiceOutcome::Scaled {
                    id: id.clone(),
                    replicas: *replicas,
                })
            }
            ServiceCommand::Remove { id, at } => {
                let mut rec = self
                    .services
                    .remove(id)
                    .ok_or_else(|| no_such_service(id))?;
                rec.updated_at = *at;
                let tasks_left = self
                    .tasks
                    .values()
                    .filter(|t| t.service_id.as_str() == id)
                    .count();
                if tasks_left > 0 {
                    self.removed.insert(id.clone(), rec);
                }
                Ok(ServiceOutcome::Removed {
                    id: id.clone(),
                    tasks_left,
                })
            }
            ServiceCommand::SetUpdateStatus { id, status, at } => {
                let rec = self
                    .services
                    .get_mut(id)
                    .ok_or_else(|| no_such_service(id))?;
                rec.update_status.clone_from(status);
                rec.updated_at = *at;
                Ok(ServiceOutcome::StatusSet)
            }
            ServiceCommand::UpdateVerdict {
                id,
                version,
                state,
                message,
                at,
            } => self.verdict(id, *version, *state, message, *at),
            ServiceCommand::ApplyDecisions { decisions, now } => {
                Ok(self.apply_decisions(decisions, Timestamp(*now), nodes))
            }
            ServiceCommand::TaskReports {
                node_id,
                reports,
                at,
            } => Ok(self.apply_reports(node_id, reports, Timestamp(*at))),
        }
    }

    fn create(&mut self, record: &ServiceRecord) -> Result<ServiceOutcome, String> {
        validate_ident("service ID", &record.id)?;
        record.spec.validate()?;
        if self.services.contains_key(&record.id) || self.removed.contains_key(&record.id) {
            return Err(format!("service ID {} already exists", record.id));
        }
        if self.service_by_name(&record.spec.name).is_some() {
            return Err(format!(
                "a service named `{}` already exists",
                record.spec.name
            ));
        }
        self.check_ports(&record.spec, &record.id)?;
        self.check_configs(&record.spec)?;
        self.check_secrets(&record.spec)?;
        let mut record = record.clone();
        record.vip_index = self.free_vip_index();
        let id = record.id.clone();
        self.services.insert(id.clone(), record);
        Ok(ServiceOutcome::Created { id })
    }

    /// A new spec for service `id` (an update, or with `rollback` the previous spec back),
    /// starting a rolling update (or rollback) whose status says `message`.
    fn update(
        &mut self,
        id: &str,
        spec: &ServiceSpec,
        at: Millis,
        rollback: bool,
        message: &str,
    ) -> Result<ServiceOutcome, String> {
        spec.validate()?;
        let rec = self.services.get(id).ok_or_else(|| no_such_service(id))?;
        if spec.name != rec.spec.name {
            return Err(format!(
                "service `{}` cannot be renamed to `{}`",
                rec.spec.name, spec.name
            ));
        }
        if mode_word(spec.mode) != mode_word(rec.spec.mode) {
            return Err(format!(
                "the mode of service `{}` cannot be changed from {} to {}",
                rec.spec.name,
                mode_word(rec.spec.mode),
                mode_word(spec.mode)
            ));
        }
        self.check_ports(spec, id)?;
        self.check_configs(spec)?;
        self.check_secrets(spec)?;
        let rec = self
            .services
            .get_mut(id)
            .ok_or_else(|| no_such_service(id))?;
        let old = std::mem::replace(&mut rec.spec, spec.clone());
        rec.older_specs.insert(rec.version, old.clone());
        rec.previous_spec = Some(old);
        rec.version = rec.version.saturating_add(1);
        rec.updated_at = at;
        rec.update_status = Some(UpdateStatus {
            state: if rollback {
                UpdateState::RollbackStarted
            } else {
                UpdateState::Updating
            },
            started_at: Some(at),
            completed_at: None,
            message: message.to_string(),
        });
        let id = id.to_string();
        self.prune_specs(&id);
        let rec = self.services.get(&id).ok_or_else(|| no_such_service(&id))?;
        Ok(ServiceOutcome::Updated {
            id,
            version: rec.version,
        })
    }

    fn verdict(
        &mut self,
        id: &str,
        version: u64,
        state: UpdateState,
        message: &str,
        at: Millis,
    ) -> Result<ServiceOutcome, String> {
        let rec = self.services.get(id).ok_or_else(|| no_such_service(id))?;
        if rec.version != version || !rec.update_in_progress() {
            return Err(format!(
                "service `{}` is no longer updating version {version}",
                rec.spec.name
            ));
        }
        if state == UpdateState::RollbackStarted {
            let prev = rec.previous_spec.clone().ok_or_else(|| {
                format!(
                    "service `{}` has no previous spec to roll back to",
                    rec.spec.name
                )
            })?;
            return self.update(id, &prev, at, true, message);
        }
        if state == UpdateState::Updating {
            return Err("a verdict cannot start an update".into());
        }
        let rec = self
            .services
            .get_mut(id)
            .ok_or_else(|| no_such_service(id))?;
        let done = matches!(
            state,
            UpdateState::Completed | UpdateState::RollbackCompleted
        );
        if let Some(u) = rec.update_status.as_mut() {
            u.state = state;
            u.message = message.to_string();
            u.completed_at = done.then_some(at);
        }
        rec.updated_at = at;
        Ok(ServiceOutcome::StatusSet)
    }

    /// Drops the older specs of service `id` that no task runs any more.
    fn prune_specs(&mut self, id: &str) {
        let used: BTreeSet<u64> = self.tasks_of(id).map(|t| t.spec_version).collect();
        if let Some(rec) = self.services.get_mut(id) {
            rec.older_specs.retain(|v, _| used.contains(v));
        }
    }

    /// Refuses a published port that another live service already publishes (the service
    /// `own_id` may keep its own). Checked when a create or update is applied, so two racing
    /// creates cannot both win, and by the control API's handlers before they propose.
    pub(crate) fn check_ports(&self, spec: &ServiceSpec, own_id: &str) -> Result<(), String> {
        for p in &spec.ports {
            if let Some(other) = self
                .services
                .values()
                .find(|s| s.id != own_id && s.spec.ports.iter().any(|q| q.published == p.published))
            {
                return Err(format!(
                    "port {} is already published by service `{}`",
                    p.published, other.spec.name
                ));
            }
        }
        Ok(())
    }

    fn apply_decisions(
        &mut self,
        decisions: &[Decision],
        now: Timestamp,
        nodes: &BTreeMap<String, NodeRecord>,
    ) -> ServiceOutcome {
        let (mut applied, mut skipped) = (0, 0);
        let mut removed_any = false;
        for d in decisions {
            let done = match d {
                Decision::CreateTask(t) => {
                    let fresh = !self.tasks.contains_key(t.id.as_str())
                        && self.services.contains_key(t.service_id.as_str());
                    if fresh {
                        self.tasks.insert(t.id.0.clone(), t.clone());
                    }
                    fresh
                }
                Decision::Assign { task, node } => match self.tasks.get_mut(task.as_str()) {
                    Some(t)
                        if t.state.is_unassigned()
                            && t.desired_state == DesiredState::Running
                            && nodes.contains_key(node.as_str()) =>
                    {
                        t.node_id = Some(node.clone());
                        t.state = TaskState::Assigned;
                        t.pending_reason = None;
                        t.updated_at = now;
                        true
                    }
                    _ => false,
                },
                Decision::UpdatePending { task, reason } => match self.tasks.get_mut(task.as_str())
                {
                    Some(t) if t.state.is_unassigned() => {
                        t.state = TaskState::Pending;
                        t.pending_reason = Some(reason.clone());
                        t.updated_at = now;
                        true
                    }
                    _ => false,
                },
                Decision::Shutdown { task, .. } => match self.tasks.get_mut(task.as_str()) {
                    Some(t) if t.desired_state != DesiredState::Shutdown => {
                        t.desired_state = DesiredState::Shutdown;
                        true
                    }
                    _ => false,
                },
                Decision::Cancel { task, .. } => match self.tasks.get_mut(task.as_str()) {
                    Some(t) if t.state.is_unassigned() => {
                        t.desired_state = DesiredState::Shutdown;
                        t.state = TaskState::Shutdown;
                        t.updated_at = now;
                        t.ended_at = Some(now);
                        true
                    }
                    // Assigned since the plan was made: its worker must stop it.
                    Some(t)
                        if !t.state.is_terminal() && t.desired_state != DesiredState::Shutdown =>
                    {
                        t.desired_state = DesiredState::Shutdown;
                        true
                    }
                    _ => false,
                },
                Decision::MarkOrphaned { task } => match self.tasks.get_mut(task.as_str()) {
                    Some(t) if !t.state.is_terminal() && !t.state.is_unassigned() => {
                        t.desired_state = DesiredState::Shutdown;
                        t.state = TaskState::Orphaned;
                        t.updated_at = now;
                        t.ended_at = Some(now);
                        self.health.remove(task.as_str());
                        true
                    }
                    _ => false,
                },
                Decision::RemoveTask { task } => {
                    let terminal = self
                        .tasks
                        .get(task.as_str())
                        .is_some_and(|t| t.state.is_terminal());
                    if terminal {
                        self.tasks.remove(task.as_str());
                        self.health.remove(task.as_str());
                        removed_any = true;
                    }
                    terminal
                }
            };
            if done {
                applied += 1;
            } else {
                skipped += 1;
            }
        }
        if removed_any {
            let mut used: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
            for t in self.tasks.values() {
                used.entry(t.service_id.as_str())
                    .or_default()
                    .insert(t.spec_version);
            }
            for (id, rec) in &mut self.services {
                let used = used.get(id.as_str());
                rec.older_specs
                    .retain(|v, _| used.is_some_and(|u| u.contains(v)));
            }
        }
        if removed_any && !self.removed.is_empty() {
            let live: BTreeSet<&str> = self.tasks.values().map(|t| t.service_id.as_str()).collect();
            self.removed.retain(|id, _| live.contains(id.as_str()));
        }
        ServiceOutcome::Decisions { applied, skipped }
    }

    fn apply_reports(
        &mut self,
        node_id: &str,
        reports: &[TaskReport],
        at: Timestamp,
    ) -> ServiceOutcome {
        let (mut accepted, mut ignored) = (0, 0);
        for r in reports {
            let Some(t) = self.tasks.get_mut(&r.task_id) else {
                ignored += 1;
                continue;
            };
            let reportable = matches!(
                r.state,
                TaskState::Preparing
                    | TaskState::Starting
                    | TaskState::Running
                    | TaskState::Complete
                    | TaskState::Failed
                    | TaskState::Shutdown
                    | TaskState::Rejected
            );
            let own = t.node_id.as_ref().is_some_and(|n| n.as_str() == node_id);
            let allowed = if t.state.is_terminal() {
                // The only move out of a terminal state: a returning node stops an orphaned
                // copy (the scheduler's worker contract).
                t.state == TaskState::Orphaned && r.state == TaskState::Shutdown
            } else {
                !t.state.is_unassigned() && r.state >= t.state
            };
            if !reportable || !own || !allowed {
                ignored += 1;
                continue;
            }
            accepted += 1;
            if r.state != t.state {
                if r.state.is_terminal() && !t.state.is_terminal() {
                    t.ended_at = Some(at);
                }
                t.state = r.state;
                t.updated_at = at;
            }
            if let Some(code) = r.exit_code {
                t.exit_code =
                    Some(i32::try_from(code).unwrap_or(if code < 0 { i32::MIN } else { i32::MAX }));
            }
            if let Some(e) = r.error.as_deref().filter(|e| !e.is_empty()) {
                t.error = Some(truncate(e, MAX_TASK_ERROR_LEN));
            }
            if t.state.is_terminal() || r.health == TaskHealth::None {
                self.health.remove(&r.task_id);
            } else {
                self.health.insert(r.task_id.clone(), r.health);
            }
        }
        ServiceOutcome::Reports { accepted, ignored }
    }

    /// The live service named `name`.
    pub fn service_by_name(&self, name: &str) -> Option<&ServiceRecord> {
        self.services.values().find(|s| s.spec.name == name)
    }

    /// A live or removed service record (removed ones stay while their tasks exist).
    pub fn any_service(&self, id: &str) -> Option<&ServiceRecord> {
        self.services.get(id).or_else(|| self.removed.get(id))
    }

    /// Resolves a user's SERVICE argument: an exact ID, a name, or a unique ID prefix.
    pub fn resolve_service(&self, reference: &str) -> Result<&ServiceRecord, String> {
        if reference.is_empty() {
            return Err("a service ID, ID prefix or name is required".into());
        }
        if let Some(s) = self.services.get(reference) {
            return Ok(s);
        }
        if let Some(s) = self.service_by_name(reference) {
            return Ok(s);
        }
        let by_prefix: Vec<&ServiceRecord> = self
            .services
            .values()
            .filter(|s| s.id.starts_with(reference))
            .collect();
        match by_prefix.as_slice() {
            [one] => Ok(one),
            [] => Err(format!("no such service: {reference}")),
            many => Err(format!(
                "service `{reference}` is ambiguous: it matches {} service IDs; give more characters",
                many.len()
            )),
        }
    }

    /// Refuses a spec that uses a config that does not exist.
    fn check_configs(&self, spec: &ServiceSpec) -> Result<(), String> {
        match spec
            .configs
            .iter()
            .find(|c| !self.configs.contains_key(&c.config_id))
        {
            Some(c) => Err(format!(
                "no such config: {} (create it with `shoal config create`)",
                c.config_name
            )),
            None => Ok(()),
        }
    }

    fn create_config(&mut self, config: &ConfigRecord) -> Result<ServiceOutcome, String> {
        validate_ident("config ID", &config.id)?;
        super::spec::validate_object_name("config", &config.name)?;
        if config.data.len() > MAX_CONFIG_BYTES {
            return Err(format!(
                "config `{}` is {} bytes: at most {MAX_CONFIG_BYTES}",
                config.name,
                config.data.len()
            ));
        }
        if self.configs.contains_key(&config.id) {
            return Err(format!("config ID {} already exists", config.id));
        }
        if self.configs.values().any(|c| c.name == config.name) {
            return Err(format!("a config named `{}` already exists", config.name));
        }
        self.configs.insert(config.id.clone(), config.clone());
        Ok(ServiceOutcome::Config {
            id: config.id.clone(),
        })
    }

    /// The config `reference` names: ID, name or unique ID prefix.
    pub fn resolve_config(&self, reference: &str) -> Result<&ConfigRecord, String> {
        super::secrets::resolve_named(&self.configs, reference, "config", |c| &c.name)
    }

    /// Gives the config references of `spec` that name a config but have no ID yet (what
    /// the API body carries) the ID of the config of that name.
    pub fn resolve_config_refs(&self, spec: &mut ServiceSpec) -> Result<(), String> {
        for r in &mut spec.configs {
            if r.config_id.is_empty() {
                r.config_id = self
                    .configs
                    .values()
                    .find(|c| c.name == r.config_name)
                    .map(|c| c.id.clone())
                    .ok_or_else(|| {
                        format!(
                            "no such config: {} (create it with `shoal config create {} FILE`)",
                            r.config_name, r.config_name
                        )
                    })?;
            }
        }
        Ok(())
    }

    /// Tasks of a service (current and history).
    pub fn tasks_of<'a>(&'a self, service_id: &'a str) -> impl Iterator<Item = &'a Task> + 'a {
        self.tasks
            .values()
            .filter(move |t| t.service_id.as_str() == service_id)
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_errors_are_cut_at_a_char_boundary() {
        assert_eq!(truncate("ééé", 3), "é…");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
