//! Shoal node: the daemon, the CLI, and the glue between membership, scheduler and
//! runtime. See ARCHITECTURE.md for the map.

pub mod api;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod dispatch;
#[cfg(test)]
mod formats;
pub mod forward;
pub mod gossip;
pub mod join;
pub mod liveness;
pub mod manager;
pub mod net;
pub mod peer;
pub mod pki;
pub mod quorum;
pub mod state_dir;
pub mod text;
pub mod trust;
pub mod worker;
