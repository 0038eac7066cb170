//! Shoal node: the daemon, the CLI, and the glue between membership, scheduler and
//! runtime. See ARCHITECTURE.md for the map.
//!
//! Public are the modules the binary (`cli`) and the cluster tests' rogue peer (`tests/`)
//! use; everything else is private to the crate, so the compiler reports what is unused.

mod api;
/// The label that puts a service in a stack (`shoal stack deploy`, Docker's name): its tasks
/// reach the stack's other services by their short names.
pub const STACK_NAMESPACE_LABEL: &str = "com.docker.stack.namespace";

pub mod cli;
pub mod clock;
pub mod config;
mod daemon;
pub mod dispatch;
pub mod dns;
#[cfg(test)]
mod formats;
pub mod fuzzing;
mod gossip;
pub mod join;
mod liveness;
pub mod logs;
pub mod manager;
pub mod mesh;
pub mod metrics;
pub mod net;
mod peer;
pub mod pki;
mod quorum;
mod roles;
pub mod session;
mod state_dir;
#[cfg(test)]
mod testutil;
mod text;
pub mod trust;
mod util;
#[cfg(test)]
mod wire_props;
pub mod worker;

/// Wire types of forwarding to the leader and of asking a node to become a manager, beside
/// the daemon's handling of them.
pub use daemon::forward;
