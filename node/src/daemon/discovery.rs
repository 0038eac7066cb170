//! Service discovery on a node (issue 22; ARCHITECTURE.md, "Service discovery"): the
//! containers' network with its two halves, the AnyIP route that makes the VIP range local,
//! the DNS server on the bridge's gateway, and the VIP listeners — started with the worker
//! when the daemon runs with `--discovery` and Docker, stopped with it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::Node;
use crate::dns::vip::Subnet;
use crate::dns::{Names, ServiceName};
use crate::manager::services::EndpointMode;
use crate::mesh::{DiscoveryTable, LocalTasks};

/// `daemon --discovery --network NAME --network-subnet CIDR`.
#[derive(Debug, Clone)]
pub struct DiscoveryOptions {
    /// The network's subnet when Shoal creates it.
    pub subnet: Subnet,
}

impl DiscoveryOptions {
    /// The network's addresses when Shoal creates it: containers in the lower half.
    #[must_use]
    pub fn ipam(&self) -> shoal_runtime::docker::NetworkIpam {
        shoal_runtime::docker::NetworkIpam {
            subnet: self.subnet.to_string(),
            ip_range: self.subnet.container_range().to_string(),
            gateway: self.subnet.gateway().to_string(),
        }
    }
}

/// What runs while discovery is on: stopped (listeners closed, then the route removed) by
/// [`stop`].
pub(crate) struct Running {
    tasks: Vec<JoinHandle<()>>,
    route: Option<(String, Subnet)>,
}

/// How long to wait between attempts to reach the engine's network at start.
const RETRY: Duration = Duration::from_secs(2);

/// Starts discovery for the worker's Docker driver, in the background: retried until the
/// engine answers; its status is in `info`.
pub(crate) fn start(
    node: &Arc<Node>,
    docker: shoal_runtime::docker::DockerDriver,
    opts: DiscoveryOptions,
) {
    let old = lock(node).replace(Running {
        tasks: Vec::new(),
        route: None,
    });
    if let Some(old) = old {
        tokio::spawn(stop_running(old));
    }
    let owner = node;
    let node = node.clone();
    let handle = tokio::spawn(async move {
        let info = loop {
            match docker.network_info().await {
                Ok(info) => break info,
                Err(e) => {
                    node.set_discovery_status(format!("starting (the engine's network: {e})"));
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        match setup(&node, &info, &opts).await {
            Ok(running) => {
                let mut slot = lock(&node);
                if let Some(r) = slot.as_mut() {
                    r.tasks.extend(running.tasks);
                    r.route = running.route;
                } else {
                    // Stopped meanwhile.
                    drop(slot);
                    tokio::spawn(stop_running(running));
                }
            }
            Err(why) => {
                warn!("service discovery is off on this node: {why}");
                node.set_discovery_status(format!("off ({why})"));
            }
        }
    });
    match lock(owner).as_mut() {
        Some(r) => r.tasks.push(handle),
        None => handle.abort(),
    }
}

fn lock(node: &Node) -> std::sync::MutexGuard<'_, Option<Running>> {
    node.discovery
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Stops discovery on this node (the worker stops, or the daemon).
pub(crate) async fn stop(node: &Node) {
    let running = lock(node).take();
    if let Some(r) = running {
        stop_running(r).await;
    }
}

async fn stop_running(r: Running) {
    for t in &r.tasks {
        t.abort();
    }
    for t in r.tasks {
        let _ = t.await;
    }
    // The listeners are closed (a socket bound to a VIP outlives its route): the route goes.
    if let Some((bridge, range)) = r.route
        && let Err(e) = route("del", &bridge, range).await
    {
        warn!("cannot remove the VIP route {range} from {bridge}: {e}");
    }
}

async fn route(verb: &str, bridge: &str, range: Subnet) -> Result<(), String> {
    let out = tokio::process::Command::new("ip")
        .args([
            "route",
            verb,
            "local",
            &range.to_string(),
            "dev",
            bridge,
            "table",
            "local",
        ])
        .output()
        .await
        .map_err(|e| format!("cannot run `ip`: {e} (install iproute2)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(crate::text::clean_text(
            String::from_utf8_lossy(&out.stderr).trim(),
            200,
        ))
    }
}

async fn setup(
    node: &Arc<Node>,
    info: &shoal_runtime::docker::NetworkInfo,
    opts: &DiscoveryOptions,
) -> Result<Running, String> {
    if info.ip_range.is_none() {
        return Err(format!(
            "network {} has no ip_range (made by an older Shoal or by hand); remove it after draining the node, or use --network NAME",
            info.name
        ));
    }
    let subnet: Subnet = info
        .subnet
        .as_deref()
        .ok_or_else(|| format!("network {} has no IPv4 subnet", info.name))?
        .parse()
        .map_err(|e| format!("network {}: {e}", info.name))?;
    if subnet != opts.subnet {
        info!(network = %info.name, %subnet, "discovery: the network's own subnet is used (not --network-subnet)");
    }
    let gateway = info
        .gateway
        .as_deref()
        .and_then(|g| g.parse::<Ipv4Addr>().ok())
        .unwrap_or_else(|| subnet.gateway());
    let range = subnet.vip_range();
    route("replace", &info.bridge, range).await.map_err(|e| {
        format!(
            "cannot make the VIP range {range} local on {}: {e}",
            info.bridge
        )
    })?;
    let dns_addr = SocketAddr::new(IpAddr::V4(gateway), 53);
    let udp = tokio::net::UdpSocket::bind(dns_addr)
        .await
        .map_err(|e| format!("cannot serve DNS on {dns_addr}/udp: {e}"))?;
    let tcp = tokio::net::TcpListener::bind(dns_addr)
        .await
        .map_err(|e| format!("cannot serve DNS on {dns_addr}/tcp: {e}"))?;
    let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
    let upstreams = Arc::new(crate::dns::server::Upstreams {
        servers: crate::dns::server::upstreams_from_resolv_conf(&resolv, &[IpAddr::V4(gateway)]),
        timeout: crate::dns::server::UPSTREAM_TIMEOUT,
    });
    let (names_tx, names_rx) = watch::channel(Arc::new(Names::default()));
    let mut tasks = vec![
        tokio::spawn(crate::dns::server::serve_udp(
            udp,
            names_rx.clone(),
            upstreams.clone(),
        )),
        tokio::spawn(crate::dns::server::serve_tcp(tcp, names_rx, upstreams)),
    ];
    tasks.push(tokio::spawn(keep_names(node.clone(), subnet, names_tx)));
    tasks.push(
        node.mesh
            .start_vips(Arc::new(move |index| subnet.vip(index))),
    );
    let status = format!(
        "on (network {} {subnet}, VIPs {range}, DNS {gateway}:53)",
        info.name
    );
    info!("service discovery: {status}");
    node.set_discovery_status(status);
    Ok(Running {
        tasks,
        route: Some((info.bridge.clone(), range)),
    })
}

/// Keeps the DNS server's names in line with the discovery table.
async fn keep_names(node: Arc<Node>, subnet: Subnet, names: watch::Sender<Arc<Names>>) {
    let mut changes = node.mesh.discovery_changes();
    loop {
        let table = changes.borrow_and_update().clone();
        let built = names_of(&table, subnet, &node.node_id, &*node.mesh_tasks).await;
        names.send_if_modified(|n| {
            if **n == built {
                return false;
            }
            *n = Arc::new(built);
            true
        });
        if changes.changed().await.is_err() {
            return;
        }
    }
}

/// The names this node answers: every service's VIP (vip mode) and the addresses of its
/// ready Docker tasks on this node (the only ones reachable from this node's network), found
/// through one of its ports.
pub(crate) async fn names_of(
    table: &DiscoveryTable,
    subnet: Subnet,
    node_id: &str,
    local: &dyn LocalTasks,
) -> Names {
    let mut names = Names::default();
    for svc in &table.services {
        let vip = match svc.endpoint_mode {
            EndpointMode::Vip => svc.vip_index.and_then(|i| subnet.vip(i)),
            EndpointMode::Dnsrr => None,
        };
        let mut tasks = Vec::new();
        if let Some(&port) = svc.ports.first() {
            for t in &svc.tasks {
                if !t.ready || t.node_id != node_id || t.driver != "docker" {
                    continue;
                }
                if let Some(SocketAddr::V4(a)) = local.endpoint(&t.task_id, &t.driver, port).await
                    && subnet.contains(*a.ip())
                {
                    tasks.push(*a.ip());
                }
            }
        }
        // Each local task of a stack, ports or not: its queries resolve its stack's names.
        for t in &svc.tasks {
            if t.ready
                && t.node_id == node_id
                && t.driver == "docker"
                && let Some((IpAddr::V4(ip), stack)) =
                    local.stack_member(&t.task_id, &t.driver).await
                && subnet.contains(ip)
            {
                names.insert_stack_member(ip, &stack);
            }
        }
        names.insert(
            &svc.name,
            ServiceName {
                mode: svc.endpoint_mode,
                vip,
                tasks,
            },
        );
    }
    names
}
