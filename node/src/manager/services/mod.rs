//! Services and their tasks in the cluster state (DESIGN §4, §5, §8), by layer:
//!
//! - [`spec`]: [`ServiceSpec`] and its parts as Raft stores them, with
//!   [`ServiceSpec::validate`] giving one-line errors.
//! - [`state`]: the records, [`ServicesState`] (the part of the replicated state holding
//!   services and tasks) and its deterministic [`ServicesState::apply`] for
//!   [`ServiceCommand`]s. Every timestamp and ID comes inside the command; nothing reads a
//!   clock, draws randomness or iterates a hash map.
//! - [`legacy`]: the records as version 1 of the log and state stored them
//!   ([`legacy::ServiceSpecV1`], [`legacy::ServiceRecordV1`], …) and their conversions into
//!   today's, so that old entries and snapshots still decode.
//! - [`view`]: [`to_view`], the scheduler's [`shoal_scheduler::ClusterView`] of the state for
//!   the orchestrator, and [`assignments_for`], what a node's worker must run or stop.
//!
//! The JSON the control API speaks about services and tasks (the spec body, `service ls` and
//! `service ps` rows) is in [`crate::api::services`], converted from and into these types.
//!
//! Encoded with postcard inside the Raft log and snapshots: a changed record needs a new
//! command variant and a migration (golden bytes in `formats.rs`).

pub mod legacy;
pub mod secrets;
pub mod spec;
pub mod state;
pub mod view;

#[cfg(test)]
pub(crate) mod tests;

pub use secrets::*;
pub use spec::*;
pub use state::*;
pub use view::*;
