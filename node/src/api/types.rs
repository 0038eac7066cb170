//! Request and response bodies of the control API. Field names are the JSON contract
//! of DESIGN §8 (snake_case, bare lowercase values, RFC 3339 times).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// An error answer: the HTTP status and one line for the user.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong and what to do next.
    pub message: String,
}

/// `GET /v1/info`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Info {
    /// `inactive` or `active`.
    pub cluster: String,
    /// This node's ID (derived from its key).
    pub node_id: String,
    /// Reported hostname.
    pub hostname: String,
    /// The QUIC listen address.
    pub listen_addr: String,
    /// The address other nodes use to reach this one.
    pub advertise_addr: String,
    /// Shoal version.
    pub version: String,
    /// Cluster ID when active.
    pub cluster_id: Option<String>,
    /// `manager` or `worker` when active.
    pub role: Option<String>,
    /// Node ID of the Raft leader, when known.
    pub leader: Option<String>,
    /// Number of managers when known.
    pub managers: Option<u64>,
    /// Number of nodes when known.
    pub nodes: Option<u64>,
    /// Something the user must act on (e.g. this node was removed from the cluster).
    #[serde(default)]
    pub warning: Option<String>,
    /// Task drivers this node offers (`docker`, `process`).
    #[serde(default)]
    pub drivers: Vec<String>,
    /// Where published ports listen on this node (`daemon --publish-addr`).
    #[serde(default)]
    pub publish_addr: String,
    /// The routing mesh's counters on this node since it started.
    #[serde(default)]
    pub mesh: crate::mesh::MeshCounters,
    /// Service discovery on this node: `on (…)`, `off (why)` or `starting (…)`.
    #[serde(default)]
    pub discovery: String,
}

/// `POST /v1/init`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InitRequest {
    /// Overrides the daemon's advertise address; saved in the state dir.
    pub advertise_addr: Option<String>,
    /// Availability of this first node (`active` by default).
    pub availability: Option<String>,
    /// Rewrite Raft membership to this node alone, keeping all state.
    #[serde(default)]
    pub force_new_cluster: bool,
}

/// Answer to `init`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct InitResponse {
    /// This node's ID.
    pub node_id: String,
    /// The new cluster's ID.
    pub cluster_id: String,
}

/// `POST /v1/leave`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LeaveRequest {
    /// Leave even when this node is a manager (the last manager wipes the cluster).
    #[serde(default)]
    pub force: bool,
}

/// A node as `node ls` and `node inspect` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeView {
    /// Node ID.
    pub id: String,
    /// Reported hostname.
    pub hostname: String,
    /// `manager` or `worker`.
    pub role: String,
    /// `ready`, `down` or `unknown`.
    pub status: String,
    /// `active`, `pause` or `drain`.
    pub availability: String,
    /// `leader`, `reachable`, `unreachable`, or null for workers.
    pub manager_status: Option<String>,
    /// Advertise address `ip:port`.
    pub addr: String,
    /// Node labels.
    pub labels: BTreeMap<String, String>,
    /// Public key, hex.
    pub public_key: String,
    /// Operating system and architecture, e.g. `linux/x86_64`.
    pub platform: String,
    /// Memory in bytes reported by the node.
    pub memory_bytes: u64,
    /// CPUs reported by the node.
    pub cpus: u32,
    /// Task drivers the node offers.
    pub drivers: Vec<String>,
    /// Shoal version of the node.
    pub version: String,
    /// When the node joined (RFC 3339).
    pub created_at: String,
    /// When the record last changed (RFC 3339).
    pub updated_at: String,
}

/// `POST /v1/join`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JoinApiRequest {
    /// The join token.
    pub token: String,
    /// Managers to try (`IP` or `IP:PORT`); empty means the addresses in the token.
    #[serde(default)]
    pub manager_addrs: Vec<String>,
    /// Overrides the daemon's advertise address; saved in the state dir.
    pub advertise_addr: Option<String>,
    /// Availability of this node (`active` by default).
    pub availability: Option<String>,
}

/// Answer to `join`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinApiResponse {
    /// This node's ID.
    pub node_id: String,
    /// The cluster joined.
    pub cluster_id: String,
    /// `worker` or `manager`.
    pub role: String,
    /// The manager address that answered.
    pub via: String,
}

/// `POST /v1/join-token/{role}`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct JoinTokenRequest {
    /// Bump the role's generation first: older tokens are refused from then on.
    #[serde(default)]
    pub rotate: bool,
    /// Mint a fresh token that expires after this many seconds.
    pub ttl_secs: Option<u64>,
}

/// A join token and where to use it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinTokenResponse {
    /// `worker` or `manager`.
    pub role: String,
    /// The token.
    pub token: String,
    /// This manager's advertise address, for the printed command.
    pub manager_addr: String,
}

/// `POST /v1/nodes/{ref}/update`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct NodeUpdateRequest {
    /// New availability.
    pub availability: Option<String>,
    /// Labels to add or replace.
    #[serde(default)]
    pub label_add: BTreeMap<String, String>,
    /// Labels to remove.
    #[serde(default)]
    pub label_rm: Vec<String>,
}

// ---- Logs (`GET /v1/services/{ref}/logs`, NDJSON) ----

/// One line of a task's output, or a warning (then only `warning` is set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogEntry {
    /// `service.slot` (`service.node-id` for a global task), as Docker names it.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Task ID.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub task_id: String,
    /// ID of the node that runs the task.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node_id: String,
    /// Hostname of that node.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub node: String,
    /// When the line was written, RFC 3339 with nanoseconds.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub timestamp: String,
    /// The same, nanoseconds since the Unix epoch.
    #[serde(default)]
    pub timestamp_ns: i64,
    /// `stdout` or `stderr`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stream: String,
    /// The line, without its newline.
    #[serde(default)]
    pub line: String,
    /// A node that could not be asked, or a task whose logs could not be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warning: Option<String>,
}
