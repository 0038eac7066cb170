//! What a driver is asked to run.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::RuntimeError;

/// Prefix of every label Shoal sets; user labels may not use it.
pub const LABEL_PREFIX: &str = "shoal.";
/// Label holding the cluster id.
pub const LABEL_CLUSTER: &str = "shoal.cluster";
/// Label holding the id of the node that owns the task.
pub const LABEL_NODE: &str = "shoal.node";
/// Label holding the service id.
pub const LABEL_SERVICE: &str = "shoal.service";
/// Label holding the service name.
pub const LABEL_SERVICE_NAME: &str = "shoal.service.name";
/// Label holding the slot number (replicated services) of the task.
pub const LABEL_SLOT: &str = "shoal.slot";
/// Label holding the task id.
pub const LABEL_TASK: &str = "shoal.task";

/// The node and cluster a driver works for. Every task a driver creates is tagged with both, and
/// a driver lists, stops and removes only tasks tagged with its own scope.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Scope {
    /// Cluster id.
    pub cluster_id: String,
    /// Node id of the node running this driver.
    pub node_id: String,
}

impl Scope {
    /// A scope for `node_id` in `cluster_id`.
    pub fn new(cluster_id: impl Into<String>, node_id: impl Into<String>) -> Self {
        Self {
            cluster_id: cluster_id.into(),
            node_id: node_id.into(),
        }
    }

    pub(crate) fn validate(&self) -> Result<(), RuntimeError> {
        check_ident("cluster id", &self.cluster_id)?;
        check_ident("node id", &self.node_id)
    }
}

/// One attempt at running one slot of a service, in the driver's own vocabulary.
///
/// The node and cluster are not part of the spec: they come from the driver's [`Scope`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    /// Task id, unique in the cluster (`[A-Za-z0-9_.-]`, 1–64 characters).
    pub task_id: String,
    /// Id of the service the task belongs to.
    pub service_id: String,
    /// Name of the service (used in container names; `[A-Za-z0-9_.-]`).
    pub service_name: String,
    /// Slot number (replicated services); global services use 0.
    pub slot: u64,
    /// Docker: the image reference (`name[:tag]`). Process: the absolute path of the program.
    pub image: String,
    /// Docker: the command, replacing the image's `CMD` when not empty. Process: the arguments.
    pub args: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Extra labels (Docker labels; recorded by the process driver). Keys may not start with
    /// `shoal.`.
    pub labels: BTreeMap<String, String>,
    /// Ports the task listens on (target ports of published services). Docker: exposed on the
    /// container, reachable at the container's address on the `shoal` network. Process: the
    /// driver allocates one free local port per entry and passes the first as `PORT` and each as
    /// `PORT_<target>`; the program must listen on those.
    pub ports: Vec<u16>,
    /// Memory and CPU limits (enforced by Docker; recorded but not enforced by the process
    /// driver, like Nomad's `raw_exec`).
    pub resources: Resources,
    /// Health check. `None`: the image's own (Docker `HEALTHCHECK`), if any; a check whose test
    /// is [`HealthTest::None`]: no check at all.
    pub health: Option<HealthCheck>,
    /// Signal sent to stop the task (`SIGTERM`, `TERM` or a number); `None` means SIGTERM.
    pub stop_signal: Option<String>,
    /// Time between the stop signal and SIGKILL.
    #[serde(with = "humantime_serde_compat")]
    pub stop_grace: Duration,
    /// Mounts (Docker only; the process driver rejects them).
    pub mounts: Vec<Mount>,
    /// The process's user, directory and entrypoint, its hostname, an init, devices and
    /// privileges (Docker; the process driver takes the directory only and rejects the rest).
    /// Missing in files written before it (the worker cache, `task.json`): the defaults.
    #[serde(default)]
    pub options: TaskOptions,
}

/// The less common settings of a task, Docker's names in brackets.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOptions {
    /// Replaces the image's entrypoint (`Entrypoint`); `Some(vec![])` clears it.
    pub entrypoint: Option<Vec<String>>,
    /// User (and group) to run as: `name`, `uid`, `name:group` or `uid:gid` (`User`).
    pub user: Option<String>,
    /// Working directory (`WorkingDir`; the process driver's directory for the program).
    pub workdir: Option<String>,
    /// The container's hostname (`Hostname`).
    pub hostname: Option<String>,
    /// Run an init as PID 1 that reaps zombies and forwards signals (`HostConfig.Init`).
    pub init: bool,
    /// Devices of the node given to the task (`HostConfig.Devices`).
    pub devices: Vec<Device>,
    /// Capabilities added (`HostConfig.CapAdd`).
    pub cap_add: Vec<String>,
    /// Capabilities dropped (`HostConfig.CapDrop`).
    pub cap_drop: Vec<String>,
    /// Every capability and device (`HostConfig.Privileged`).
    pub privileged: bool,
    /// Files given to the task, read-only (configs): written on the node, bind-mounted.
    pub files: Vec<TaskFile>,
    /// Secrets given to the task, read-only, in memory (a tmpfs on the node). Never
    /// serialized: not on the wire (they travel apart), not in the worker cache, not in a
    /// process task's `task.json`; the worker fills them in from memory at start.
    #[serde(skip)]
    pub secrets: Vec<TaskFile>,
}

/// A file given to a task (a config), read-only at `target`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskFile {
    /// Its path in the task.
    pub target: String,
    /// Its bytes.
    pub data: Vec<u8>,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Permissions.
    pub mode: u32,
}

impl std::fmt::Debug for TaskFile {
    /// Without the bytes (logs stay short).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskFile")
            .field("target", &self.target)
            .field("bytes", &self.data.len())
            .field("mode", &format_args!("{:o}", self.mode))
            .finish_non_exhaustive()
    }
}

impl TaskOptions {
    /// Whether the task asks for more than a container gets by default: `--privileged` or an
    /// added capability (what a node allows only with `daemon --allow-privileged`).
    #[must_use]
    pub fn escalates(&self) -> bool {
        self.privileged || !self.cap_add.is_empty()
    }
}

/// A device of the node inside a task (`--device HOST[:CONTAINER[:PERMISSIONS]]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Device {
    /// The node's device path (`/dev/gpiomem`).
    pub host: String,
    /// Its path in the task (the same by default).
    pub container: String,
    /// cgroup permissions: some of `r`, `w`, `m` (`rwm` by default).
    pub permissions: String,
}

impl TaskSpec {
    /// The check to run, if any: [`HealthTest::None`] is none.
    pub fn active_health(&self) -> Option<&HealthCheck> {
        self.health.as_ref().filter(|h| h.is_enabled())
    }

    /// A spec with the given identity and image/program and defaults elsewhere (no args, no env,
    /// no ports, no limits, no health check, SIGTERM with a 10 s grace period).
    pub fn new(
        task_id: impl Into<String>,
        service_id: impl Into<String>,
        service_name: impl Into<String>,
        slot: u64,
        image: impl Into<String>,
    ) -> Self {
        Self {
            task_id: task_id.into(),
            service_id: service_id.into(),
            service_name: service_name.into(),
            slot,
            image: image.into(),
            args: Vec::new(),
            env: BTreeMap::new(),
            labels: BTreeMap::new(),
            ports: Vec::new(),
            resources: Resources::default(),
            health: None,
            stop_signal: None,
            stop_grace: Duration::from_secs(10),
            mounts: Vec::new(),
            options: TaskOptions::default(),
        }
    }

    /// Checks identifiers, labels, env names, ports and the health check.
    pub(crate) fn validate(&self) -> Result<(), RuntimeError> {
        check_ident("task id", &self.task_id)?;
        check_ident("service id", &self.service_id)?;
        check_ident("service name", &self.service_name)?;
        if self.image.trim().is_empty() {
            return Err(RuntimeError::InvalidSpec(
                "the image (or program path) is empty".into(),
            ));
        }
        if let Some(key) = self.labels.keys().find(|k| k.starts_with(LABEL_PREFIX)) {
            return Err(RuntimeError::InvalidSpec(format!(
                "label {key:?} uses the reserved prefix {LABEL_PREFIX:?}"
            )));
        }
        if let Some(key) = self
            .env
            .keys()
            .find(|k| k.is_empty() || k.contains('=') || k.contains('\0'))
        {
            return Err(RuntimeError::InvalidSpec(format!(
                "invalid environment variable name {key:?}"
            )));
        }
        if self.ports.contains(&0) {
            return Err(RuntimeError::InvalidSpec("target port 0".into()));
        }
        if let Some(sig) = &self.stop_signal {
            crate::process::parse_signal(sig)?;
        }
        if let Some(h) = &self.health {
            h.validate()?;
        }
        Ok(())
    }
}

pub(crate) fn check_ident(what: &str, value: &str) -> Result<(), RuntimeError> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
        && !value.starts_with('.');
    if ok {
        Ok(())
    } else {
        Err(RuntimeError::InvalidSpec(format!(
            "{what} {value:?} must be 1-64 characters of [A-Za-z0-9_.-], not starting with '.'"
        )))
    }
}

/// Resource limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Memory limit in bytes.
    pub memory_bytes: Option<u64>,
    /// CPU limit in billionths of a CPU (Docker's `NanoCpus`; 1.5 CPUs = 1_500_000_000).
    pub nano_cpus: Option<u64>,
}

/// What a health check runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum HealthTest {
    /// Run this argv directly (Docker `CMD`).
    Cmd(Vec<String>),
    /// Run this string with `/bin/sh -c` (Docker `CMD-SHELL`).
    Shell(String),
    /// No check at all, the image's own `HEALTHCHECK` disabled too (`--no-healthcheck`; Docker
    /// `NONE`). The task's health stays [`crate::Health::None`].
    ///
    /// Last variant on purpose: postcard encodes a variant as its index, so new variants go at
    /// the end only (ARCHITECTURE.md, "Formats and upgrades").
    None,
}

/// A periodic health check. Exit status 0 is healthy; `retries` consecutive failures (not counting
/// those during `start_period` before the first success) make the task unhealthy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// The command.
    pub test: HealthTest,
    /// Time between checks.
    #[serde(with = "humantime_serde_compat")]
    pub interval: Duration,
    /// A check running longer than this fails.
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Consecutive failures needed to become unhealthy (at least 1).
    pub retries: u32,
    /// Grace period after start during which failures do not count.
    #[serde(with = "humantime_serde_compat")]
    pub start_period: Duration,
}

impl HealthCheck {
    /// A check with Docker's defaults: every 30 s, 30 s timeout, 3 retries, no start period.
    pub fn new(test: HealthTest) -> Self {
        Self {
            test,
            interval: Duration::from_secs(30),
            timeout: Duration::from_secs(30),
            retries: 3,
            start_period: Duration::ZERO,
        }
    }

    /// False for [`HealthTest::None`]: nothing runs, and no image check either.
    pub fn is_enabled(&self) -> bool {
        !matches!(self.test, HealthTest::None)
    }

    fn validate(&self) -> Result<(), RuntimeError> {
        let empty = match &self.test {
            HealthTest::Cmd(argv) => argv.is_empty() || argv[0].is_empty(),
            HealthTest::Shell(s) => s.trim().is_empty(),
            // Nothing runs: interval, timeout and retries do not matter.
            HealthTest::None => return Ok(()),
        };
        if empty {
            return Err(RuntimeError::InvalidSpec(
                "empty health check command".into(),
            ));
        }
        if self.interval < Duration::from_millis(10) || self.timeout < Duration::from_millis(10) {
            return Err(RuntimeError::InvalidSpec(
                "health check interval and timeout must be at least 10ms".into(),
            ));
        }
        if self.retries == 0 {
            return Err(RuntimeError::InvalidSpec(
                "health check retries must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Kind of a [`Mount`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MountKind {
    /// A host path.
    Bind,
    /// A named Docker volume.
    Volume,
    /// A tmpfs (no source).
    Tmpfs,
}

/// A filesystem mount (Docker driver).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mount {
    /// Kind of mount.
    pub kind: MountKind,
    /// Host path (bind) or volume name; ignored for tmpfs.
    pub source: String,
    /// Path inside the container.
    pub target: String,
    /// Mount read-only.
    pub read_only: bool,
}

/// Durations serialized as humantime strings ("1s 500ms").
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_rejects_bad_input() {
        let ok = TaskSpec::new("t1", "s1", "web", 1, "img");
        assert!(ok.validate().is_ok());
        let mut bad = ok.clone();
        bad.task_id = "../etc".into();
        assert!(matches!(bad.validate(), Err(RuntimeError::InvalidSpec(_))));
        let mut bad = ok.clone();
        bad.labels.insert("shoal.node".into(), "x".into());
        assert!(matches!(bad.validate(), Err(RuntimeError::InvalidSpec(_))));
        let mut bad = ok.clone();
        bad.stop_signal = Some("SIGNOPE".into());
        assert!(matches!(bad.validate(), Err(RuntimeError::InvalidSpec(_))));
        let mut bad = ok;
        bad.health = Some(HealthCheck {
            retries: 0,
            ..HealthCheck::new(HealthTest::Shell("true".into()))
        });
        assert!(matches!(bad.validate(), Err(RuntimeError::InvalidSpec(_))));
    }

    #[test]
    fn no_healthcheck_is_valid_and_inactive() {
        let mut spec = TaskSpec::new("t1", "s1", "web", 1, "img");
        // Nothing runs, so the timings do not matter either.
        spec.health = Some(HealthCheck {
            retries: 0,
            interval: Duration::ZERO,
            ..HealthCheck::new(HealthTest::None)
        });
        assert!(spec.validate().is_ok());
        assert!(spec.active_health().is_none());
        spec.health = Some(HealthCheck::new(HealthTest::Shell("true".into())));
        assert!(spec.active_health().is_some());
    }

    /// `HealthTest` travels in postcard (inside the worker session's assignments and the Raft
    /// log's task specs): a variant is its index, so the old variants keep theirs and `None`
    /// comes last.
    #[test]
    fn health_test_variants_keep_their_postcard_indexes() {
        let bytes = |t: &HealthTest| postcard::to_allocvec(t).expect("encode");
        assert_eq!(bytes(&HealthTest::Cmd(vec!["x".into()])), [0, 1, 1, b'x']);
        assert_eq!(bytes(&HealthTest::Shell("x".into())), [1, 1, b'x']);
        assert_eq!(bytes(&HealthTest::None), [2]);
        let back: HealthTest = postcard::from_bytes(&[2]).expect("decode");
        assert_eq!(back, HealthTest::None);
    }

    #[test]
    fn spec_round_trips_through_json() {
        let mut spec = TaskSpec::new("t1", "s1", "web", 1, "/bin/true");
        spec.stop_grace = Duration::from_millis(1500);
        spec.health = Some(HealthCheck::new(HealthTest::Cmd(vec!["true".into()])));
        let json = serde_json::to_string(&spec).expect("serialize");
        let back: TaskSpec = serde_json::from_str(&json).expect("deserialize");
        assert_eq!(back, spec);
    }
}
