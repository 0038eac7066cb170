//! The endpoint table: which tasks of which published service run where, as the leader pushes
//! it to every node over the worker session (`ToWorker::Endpoints`). A node serves its
//! published ports from the last table it got, also while no manager answers.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::manager::services::{EndpointMode, PortSpec};

/// Every service with published ports, and its running tasks.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointTable {
    /// Services with at least one published port, by ID.
    pub services: Vec<PublishedService>,
}

/// One service's ports and endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedService {
    /// Service ID.
    pub service_id: String,
    /// Service name (for logs).
    pub name: String,
    /// Its published ports (the current spec's).
    pub ports: Vec<PortSpec>,
    /// Its tasks that run (desired and observed), in a stable order.
    pub tasks: Vec<TaskEndpoint>,
}

/// A running task of a published service.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskEndpoint {
    /// Task ID.
    pub task_id: String,
    /// The node that runs it.
    pub node_id: String,
    /// That node's advertise address (its QUIC port).
    pub node_addr: SocketAddr,
    /// `docker` or `process`.
    pub driver: String,
    /// Running and, when it has a health check, healthy: in rotation.
    pub ready: bool,
}

impl EndpointTable {
    /// The service that publishes `published`, and that port's spec.
    #[must_use]
    pub fn by_published(&self, published: u16) -> Option<(&PublishedService, PortSpec)> {
        self.services.iter().find_map(|s| {
            s.ports
                .iter()
                .find(|p| p.published == published)
                .map(|p| (s, *p))
        })
    }

    /// The service with this ID.
    #[must_use]
    pub fn service(&self, service_id: &str) -> Option<&PublishedService> {
        self.services.iter().find(|s| s.service_id == service_id)
    }
}

/// Service discovery's table (issue 22): every live service, how its name resolves, its VIP
/// index and the ports reached through it, and its running tasks — as the leader pushes it
/// to every node (`ToWorker::Discovery`). A node answers names and serves its VIPs from the
/// last table it got.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveryTable {
    /// Every live service.
    pub services: Vec<DiscoveredService>,
}

/// One service as discovery sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoveredService {
    /// Service ID.
    pub service_id: String,
    /// Service name (what resolves).
    pub name: String,
    /// `vip` or `dnsrr`.
    pub endpoint_mode: EndpointMode,
    /// Its VIP's index in every node's VIP range.
    pub vip_index: Option<u32>,
    /// The target ports its VIP serves (published ports' targets and exposed ports).
    pub ports: Vec<u16>,
    /// Its tasks that run (desired and observed), in a stable order.
    pub tasks: Vec<TaskEndpoint>,
}

impl DiscoveryTable {
    /// The service with this ID.
    #[must_use]
    pub fn service(&self, service_id: &str) -> Option<&DiscoveredService> {
        self.services.iter().find(|s| s.service_id == service_id)
    }
}
