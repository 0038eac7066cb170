//! Any manager serves the API: a follower forwards requests that need the leader
//! (cluster-state reads and writes) over QUIC, and Raft commands proposed by a
//! follower (a join it admits) travel the same way.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::manager::state::{Command, CommandResult};

/// Stream tag: an API request executed by the leader.
pub const TAG_FORWARD_API: u8 = 5;
/// Stream tag: a Raft command proposed by a follower.
pub const TAG_FORWARD_WRITE: u8 = 6;
/// Stream tag: the leader asks a node to start Raft as a manager (promotion).
pub const TAG_BECOME_MANAGER: u8 = 7;
/// Largest forwarded request or answer frame.
pub const MAX_FORWARD_FRAME: usize = 8 << 20;
/// How long a forwarded request may take end to end (a streamed answer excepted).
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(20);

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
