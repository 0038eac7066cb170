//! openraft type configuration.

use std::io::Cursor;

use super::state::{Command, CommandResult};

openraft::declare_raft_types!(
    /// Shoal's Raft types: commands in, results out, u64 node IDs mapped to node keys in
    /// the state machine, and no address baked into membership (looked up at send time).
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::EmptyNode,
        SnapshotData = Cursor<Vec<u8>>,
);

/// A log entry.
pub type Entry = openraft::Entry<TypeConfig>;
/// A log ID.
pub type LogId = openraft::LogId<u64>;
/// Membership as stored.
pub type StoredMembership = openraft::StoredMembership<u64, openraft::EmptyNode>;
/// The Raft handle.
pub type Raft = openraft::Raft<TypeConfig>;
/// A storage error.
pub type StorageError = openraft::StorageError<u64>;
/// Snapshot metadata.
pub type SnapshotMeta = openraft::SnapshotMeta<u64, openraft::EmptyNode>;
