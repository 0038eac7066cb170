//! The worker session's wire types: what the leader's dispatcher and a node's worker say to
//! each other. The manager produces `Assignment`s, the dispatcher sends them, the worker runs
//! them and answers with `TaskReport`s; all three import them from here, so none of them
//! depends on another for its vocabulary.
//!
//! All types are serde, postcard friendly (no untagged enums, no flattening, no skipped
//! fields). postcard is not self-describing: a field added to a struct breaks decoding of
//! older bytes, so a changed message gets a new enum variant (see `formats.rs`, the
//! golden-bytes tests, and ARCHITECTURE.md "Formats and upgrades").

use serde::{Deserialize, Serialize};
use shoal_runtime::TaskSpec;

/// The scheduler's words, the session's too (one vocabulary; the variant order is the wire's).
pub use shoal_scheduler::{DesiredState, TaskHealth, TaskState};

/// The worker's first frame.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionHello {
    /// The worker's node ID (also proven by its certificate).
    pub node_id: String,
    /// Memory in bytes the node offers now.
    pub memory_bytes: u64,
    /// CPUs the node offers now.
    pub cpus: u32,
    /// Drivers the node offers now.
    pub drivers: Vec<String>,
}

/// Leader to worker.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToWorker {
    /// Assignments as releases before the task options wrote them (tasks without
    /// `TaskSpec::options`): read from an older leader, converted; never sent.
    Assignments(legacy::AssignmentSetV1),
    /// Who the managers are and which keys were removed: sent first, then on change. The
    /// worker believes leader hints and become-manager requests only from these managers
    /// and refuses removed keys on every stream.
    Trust {
        /// Managers' public keys.
        managers: Vec<[u8; 32]>,
        /// Removed public keys.
        removed: Vec<[u8; 32]>,
    },
    /// A renewed certificate for the worker (DER), issued when a third of its lifetime is
    /// left.
    Cert(Vec<u8>),
    /// The routing mesh's endpoint table (every published service's running tasks, on every
    /// node): sent first, then whenever it changes.
    Endpoints(crate::mesh::EndpointTable),
    /// Service discovery's table (every live service, its VIP and its running tasks, on
    /// every node): sent first, then whenever it changes.
    Discovery(crate::mesh::DiscoveryTable),
    /// Assignments: the full set first, then changes.
    AssignmentsV2(AssignmentSet),
    /// The secrets of the tasks assigned to this worker that need some, by task ID: the whole
    /// set, sent before the assignments that need them and again whenever it changes (only
    /// when there are or were some). Kept in memory only; never in the worker's cache.
    Secrets(Vec<TaskSecrets>),
}

/// One task's secrets (`ToWorker::Secrets`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskSecrets {
    /// The task.
    pub task_id: String,
    /// Its secret files (the bytes: `Debug` leaves them out).
    pub files: Vec<shoal_runtime::TaskFile>,
}

/// The worker session's messages as earlier releases wrote them, kept so that a worker reads
/// an older leader's (workers are upgraded first: ARCHITECTURE.md, "Formats and upgrades").
pub mod legacy {
    use std::collections::BTreeMap;

    use serde::{Deserialize, Serialize};
    use shoal_runtime::{HealthCheck, Mount, Resources, TaskSpec};

    use super::{Assignment, AssignmentSet, DesiredState};

    /// [`TaskSpec`] before `options`.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct TaskSpecV1 {
        /// Task id.
        pub task_id: String,
        /// Service id.
        pub service_id: String,
        /// Service name.
        pub service_name: String,
        /// Slot.
        pub slot: u64,
        /// Image or program.
        pub image: String,
        /// Arguments.
        pub args: Vec<String>,
        /// Environment.
        pub env: BTreeMap<String, String>,
        /// Labels.
        pub labels: BTreeMap<String, String>,
        /// Target ports.
        pub ports: Vec<u16>,
        /// Limits.
        pub resources: Resources,
        /// Health check.
        pub health: Option<HealthCheck>,
        /// Stop signal.
        pub stop_signal: Option<String>,
        /// Stop grace period, as humantime wrote it (`TaskSpec` writes it the same way).
        pub stop_grace: String,
        /// Mounts.
        pub mounts: Vec<Mount>,
    }

    impl TaskSpecV1 {
        /// Today's spec, with the default options; `None` when the stop grace period does not
        /// parse (the whole message is then refused, as any undecodable one).
        #[must_use]
        pub fn into_today(self) -> Option<TaskSpec> {
            let stop_grace = humantime::parse_duration(&self.stop_grace).ok()?;
            Some(TaskSpec {
                task_id: self.task_id,
                service_id: self.service_id,
                service_name: self.service_name,
                slot: self.slot,
                image: self.image,
                args: self.args,
                env: self.env,
                labels: self.labels,
                ports: self.ports,
                resources: self.resources,
                health: self.health,
                stop_signal: self.stop_signal,
                stop_grace,
                mounts: self.mounts,
                options: shoal_runtime::TaskOptions::default(),
            })
        }

        /// A spec as version 1 wrote it (for the golden tests): the options dropped.
        #[must_use]
        pub fn from_today(s: &TaskSpec) -> TaskSpecV1 {
            TaskSpecV1 {
                task_id: s.task_id.clone(),
                service_id: s.service_id.clone(),
                service_name: s.service_name.clone(),
                slot: s.slot,
                image: s.image.clone(),
                args: s.args.clone(),
                env: s.env.clone(),
                labels: s.labels.clone(),
                ports: s.ports.clone(),
                resources: s.resources,
                health: s.health.clone(),
                stop_signal: s.stop_signal.clone(),
                stop_grace: humantime::format_duration(s.stop_grace).to_string(),
                mounts: s.mounts.clone(),
            }
        }
    }

    /// [`Assignment`] holding a [`TaskSpecV1`].
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    pub struct AssignmentV1 {
        /// Task id.
        pub task_id: String,
        /// Service id.
        pub service_id: String,
        /// Service name.
        pub service_name: String,
        /// Slot.
        pub slot: u64,
        /// Driver.
        pub driver: String,
        /// What to run.
        pub spec: TaskSpecV1,
        /// Desired state.
        pub desired: DesiredState,
    }

    /// [`AssignmentSet`] of [`AssignmentV1`]s.
    #[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
    pub struct AssignmentSetV1 {
        /// Full set or change.
        pub full: bool,
        /// Tasks added or updated.
        pub tasks: Vec<AssignmentV1>,
        /// Task ids no longer assigned.
        pub removed: Vec<String>,
    }

    impl AssignmentSetV1 {
        /// Today's set; `None` when a spec does not convert.
        #[must_use]
        pub fn into_today(self) -> Option<AssignmentSet> {
            let tasks = self
                .tasks
                .into_iter()
                .map(|a| {
                    Some(Assignment {
                        task_id: a.task_id,
                        service_id: a.service_id,
                        service_name: a.service_name,
                        slot: a.slot,
                        driver: a.driver,
                        spec: a.spec.into_today()?,
                        desired: a.desired,
                    })
                })
                .collect::<Option<Vec<_>>>()?;
            Some(AssignmentSet {
                full: self.full,
                tasks,
                removed: self.removed,
            })
        }

        /// A set as version 1 wrote it (for the golden tests).
        #[must_use]
        pub fn from_today(s: &AssignmentSet) -> AssignmentSetV1 {
            AssignmentSetV1 {
                full: s.full,
                tasks: s
                    .tasks
                    .iter()
                    .map(|a| AssignmentV1 {
                        task_id: a.task_id.clone(),
                        service_id: a.service_id.clone(),
                        service_name: a.service_name.clone(),
                        slot: a.slot,
                        driver: a.driver.clone(),
                        spec: TaskSpecV1::from_today(&a.spec),
                        desired: a.desired,
                    })
                    .collect(),
                removed: s.removed.clone(),
            }
        }
    }
}

/// Worker to leader.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToLeader {
    /// Task state changes.
    Reports(Vec<TaskReport>),
    /// The published ports this node cannot listen on and why (all of them, each time the
    /// set changes; empty: every port listens). Sent first on a session when not empty.
    PublishProblems(Vec<PublishProblem>),
    /// What this node offers tasks beyond drivers and capacity (privileges, devices): sent
    /// first on a session, only when it is not the default (an older leader does not read it).
    Facilities(crate::manager::state::NodeFacilities),
}

/// A published port a node cannot listen on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishProblem {
    /// The published port.
    pub published: u16,
    /// The service that publishes it.
    pub service_id: String,
    /// Why (the bind error, e.g. "address already in use").
    pub error: String,
}

/// One task assigned to this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    /// Task id (must equal `spec.task_id`).
    pub task_id: String,
    /// Service id.
    pub service_id: String,
    /// Service name.
    pub service_name: String,
    /// Slot number (0 for global services).
    pub slot: u64,
    /// Driver name: `"docker"` or `"process"`.
    pub driver: String,
    /// What to run.
    pub spec: TaskSpec,
    /// Desired state.
    pub desired: DesiredState,
}

/// A batch of assignments from the dispatcher.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AssignmentSet {
    /// `true`: `tasks` is the complete set for this node and replaces everything (`removed` is
    /// ignored); any runtime task of this node not in it gets stopped and removed. `false`: a
    /// change: `tasks` are added or updated and the ids in `removed` are no longer assigned.
    pub full: bool,
    /// Tasks added or updated (or all of them when `full`).
    pub tasks: Vec<Assignment>,
    /// Task ids no longer assigned (only when not `full`).
    pub removed: Vec<String>,
}

/// A change of one task's observed state, sent from the worker to the dispatcher.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskReport {
    /// Task id.
    pub task_id: String,
    /// New state.
    pub state: TaskState,
    /// Exit code, once the task exited (128 + signal when killed by a signal).
    pub exit_code: Option<i64>,
    /// Why it failed or was rejected.
    pub error: Option<String>,
    /// Health, for tasks with a health check. On the wire the word or nothing (see
    /// [`health_word`]).
    #[serde(with = "health_word")]
    pub health: TaskHealth,
    /// When the worker observed it (milliseconds since the Unix epoch).
    pub at_ms: u64,
}

/// A [`TaskHealth`] as its bytes have always been: an `Option<String>` of the word, `None` for
/// [`TaskHealth::None`]. A word this release does not know (a newer worker's) reads as
/// [`TaskHealth::None`] instead of failing: that is what the leader did with it before the
/// type existed, and a decode error would drop the whole batch of reports it came in.
pub mod health_word {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    use super::TaskHealth;

    /// Writes `None` or `Some(word)`.
    pub fn serialize<S: Serializer>(health: &TaskHealth, s: S) -> Result<S::Ok, S::Error> {
        let word = match health {
            TaskHealth::None => None,
            other => Some(other.as_str()),
        };
        word.serialize(s)
    }

    /// Reads `None` or `Some(word)`; an unknown word is [`TaskHealth::None`].
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<TaskHealth, D::Error> {
        let word = Option::<String>::deserialize(d)?;
        Ok(word.and_then(|w| w.parse().ok()).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_types_round_trip_through_postcard() {
        let mut spec = TaskSpec::new("t1", "s1", "web", 2, "/bin/sleep");
        spec.args = vec!["10".into()];
        let set = AssignmentSet {
            full: true,
            tasks: vec![Assignment {
                task_id: "t1".into(),
                service_id: "s1".into(),
                service_name: "web".into(),
                slot: 2,
                driver: "process".into(),
                spec,
                desired: DesiredState::Running,
            }],
            removed: vec!["t0".into()],
        };
        let bytes = postcard::to_allocvec(&set).expect("encode");
        let back: AssignmentSet = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, set);

        let report = TaskReport {
            task_id: "t1".into(),
            state: TaskState::Failed,
            exit_code: Some(3),
            error: Some("task exited with code 3".into()),
            health: TaskHealth::None,
            at_ms: 17,
        };
        let bytes = postcard::to_allocvec(&report).expect("encode");
        let back: TaskReport = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!(back, report);
        for health in [
            TaskHealth::None,
            TaskHealth::Starting,
            TaskHealth::Healthy,
            TaskHealth::Unhealthy,
        ] {
            let r = TaskReport {
                health,
                ..report.clone()
            };
            let bytes = postcard::to_allocvec(&r).expect("encode");
            assert_eq!(
                postcard::from_bytes::<TaskReport>(&bytes).expect("decode"),
                r
            );
        }
        // Garbage never panics.
        assert!(postcard::from_bytes::<AssignmentSet>(&[0xff, 0xff, 0x01]).is_err());
    }

    /// The report's health is the `Option<String>` it was before it was typed: same bytes, and
    /// an unknown word from a newer worker is no health rather than an undecodable batch.
    #[test]
    fn health_keeps_its_option_of_a_word_bytes() {
        #[derive(Serialize, Deserialize)]
        struct Before {
            task_id: String,
            state: TaskState,
            exit_code: Option<i64>,
            error: Option<String>,
            health: Option<String>,
            at_ms: u64,
        }
        let before = |health: Option<&str>| Before {
            task_id: "t".into(),
            state: TaskState::Running,
            exit_code: None,
            error: None,
            health: health.map(str::to_owned),
            at_ms: 5,
        };
        let now = |health| TaskReport {
            task_id: "t".into(),
            state: TaskState::Running,
            exit_code: None,
            error: None,
            health,
            at_ms: 5,
        };
        for (word, health) in [
            (None, TaskHealth::None),
            (Some("starting"), TaskHealth::Starting),
            (Some("healthy"), TaskHealth::Healthy),
            (Some("unhealthy"), TaskHealth::Unhealthy),
        ] {
            let old = postcard::to_allocvec(&before(word)).expect("encode");
            assert_eq!(postcard::to_allocvec(&now(health)).expect("encode"), old);
            assert_eq!(
                postcard::from_bytes::<TaskReport>(&old).expect("decode"),
                now(health)
            );
        }
        let unknown = postcard::to_allocvec(&before(Some("sleepy"))).expect("encode");
        assert_eq!(
            postcard::from_bytes::<TaskReport>(&unknown).expect("decode"),
            now(TaskHealth::None)
        );
    }

    /// The worker's words are the scheduler's, in the same order (postcard writes the index).
    #[test]
    fn states_are_the_schedulers_in_wire_order() {
        let all = [
            TaskState::New,
            TaskState::Pending,
            TaskState::Assigned,
            TaskState::Preparing,
            TaskState::Starting,
            TaskState::Running,
            TaskState::Complete,
            TaskState::Failed,
            TaskState::Shutdown,
            TaskState::Rejected,
            TaskState::Orphaned,
        ];
        for (i, s) in all.into_iter().enumerate() {
            assert_eq!(
                postcard::to_allocvec(&s).expect("encode"),
                [u8::try_from(i).expect("small")]
            );
            assert_eq!(s.as_str().parse::<TaskState>(), Ok(s));
        }
        assert_eq!(
            postcard::to_allocvec(&DesiredState::Shutdown).expect("encode"),
            [1]
        );
        assert!(TaskState::Failed.is_terminal());
        assert!(!TaskState::Running.is_terminal());
    }
}
