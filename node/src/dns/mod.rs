//! Service discovery's DNS (issue 22; ARCHITECTURE.md, "Service discovery"): the wire format
//! (`codec`) and the resolver's decision (`resolve`), both pure — bytes and a snapshot of
//! the cluster's names in, bytes out. The server that feeds them (UDP and TCP on the
//! bridge gateway, forwarding to the host's resolvers) is the daemon's.

pub mod codec;
mod resolve;

pub use resolve::{EndpointMode, Names, Outcome, ServiceName, TTL, Transport, resolve};
