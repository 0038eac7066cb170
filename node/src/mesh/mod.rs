//! The routing mesh (DESIGN §7): every node listens on every published port and forwards
//! each TCP connection to a ready task of the service — straight to the task when it runs on
//! this node, otherwise through a QUIC stream (tag [`TAG_MESH`]) to the task's node, which
//! connects locally and splices. No overlay, no IPVS: the one UDP port carries it all.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

mod forward;
mod listen;
mod proxy;
mod table;
#[cfg(test)]
mod tests;
mod vip;

pub use forward::{LocalTasks, Mesh, Peers};
pub use proxy::v2_header;
pub use table::{DiscoveredService, DiscoveryTable, EndpointTable, PublishedService, TaskEndpoint};
pub use vip::wanted_vips;

/// Stream tag of a mesh connection: the ingress node asks the task's node to connect.
pub const TAG_MESH: u8 = 10;
/// Stream tag of a VIP connection (service discovery): the node whose VIP a client
/// connected to asks the task's node to connect to the task's target port.
pub const TAG_VIP: u8 = 12;

/// The first frame of a VIP stream (answered with a [`MeshReply`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipOpen {
    /// The service.
    pub service_id: String,
    /// The task (must run on the node that serves the stream).
    pub task_id: String,
    /// The target port (must be one of the service's discovery ports in the serving node's
    /// own table).
    pub target: u16,
    /// The client's address, as the VIP's node saw it.
    pub client: SocketAddr,
}
/// Largest first frame of a mesh stream.
pub const MAX_MESH_OPEN: usize = 4 * 1024;

/// The first frame of a mesh stream: which task, which port, and who the client is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshOpen {
    /// The service.
    pub service_id: String,
    /// The task (must run on the node that serves the stream).
    pub task_id: String,
    /// The published port the client connected to (the task's node looks the target port
    /// and the PROXY setting up in its own table; it never takes them from the peer).
    pub published: u16,
    /// The client's address, as the ingress node saw it (the PROXY header's source).
    pub client: SocketAddr,
    /// The address the client connected to (the PROXY header's destination).
    pub ingress: SocketAddr,
}

/// The answer to a [`MeshOpen`], before the bytes flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MeshReply {
    /// Connected to the task: splice from now on.
    Connected,
    /// Not connected, and why (the ingress node tries the next task).
    Refused(String),
}

/// The mesh's counters on this node, as `info --format json` shows them under `mesh`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshCounters {
    /// Client connections forwarded to a task on this node.
    pub local_forwards: u64,
    /// Client connections forwarded through a QUIC stream to a task on another node.
    pub remote_forwards: u64,
    /// Mesh streams from other nodes served by connecting to a task here.
    pub remote_served: u64,
    /// Connects to a task (local, remote, or for a peer's stream) that failed.
    pub failed_connects: u64,
    /// Client connections closed because no task could take them.
    pub dropped: u64,
    /// Bytes from clients (and peers' streams) to tasks.
    pub bytes_in: u64,
    /// Bytes from tasks to clients (and peers' streams).
    pub bytes_out: u64,
}
