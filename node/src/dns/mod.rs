//! Service discovery's DNS (issue 22; ARCHITECTURE.md, "Service discovery"): the wire format
//! (`codec`) and the resolver's decision (`resolve`), both pure — bytes and a snapshot of
//! the cluster's names in, bytes out — and the server's I/O (`server`: the UDP and TCP
//! loops that answer with them and forward other names upstream), which the daemon is to
//! start on its bridge gateway (not wired yet); `vip` splits a node's bridge subnet into
//! the containers' half and the VIPs' half and gives a service's VIP from its index.

pub mod codec;
mod resolve;
pub mod server;
pub mod vip;

pub use resolve::{EndpointMode, Names, Outcome, ServiceName, TTL, Transport, resolve};
