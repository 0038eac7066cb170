//! Service discovery's VIP listeners (issue 22): which `VIP:PORT` this node listens on (a
//! pure function of the discovery table and this node's VIP range), and the loop that binds
//! and closes them as the table changes, retrying addresses it could not bind. A connection
//! accepted on a VIP goes to the service's next ready task in turn, as a published port's
//! does ([`super::forward`]), remote tasks through a stream of tag [`super::TAG_VIP`].

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::DiscoveryTable;
use super::forward::{Entry, Inner};
use crate::manager::services::EndpointMode;

/// How often an address that could not be bound is tried again.
const RETRY_BIND: Duration = Duration::from_secs(2);
/// Backlog of a VIP listener.
const BACKLOG: u32 = 1024;

/// The VIP addresses this node listens on and the service of each: every port of every
/// `vip`-mode service whose index falls in this node's range (`vip_of`). A service with no
/// ready task still listens: its connections then close at once, as Swarm's VIP without a
/// backend does.
#[must_use]
pub fn wanted_vips(
    table: &DiscoveryTable,
    vip_of: &dyn Fn(u32) -> Option<Ipv4Addr>,
) -> BTreeMap<SocketAddr, String> {
    let mut wanted = BTreeMap::new();
    for svc in &table.services {
        if svc.endpoint_mode != EndpointMode::Vip {
            continue;
        }
        let Some(vip) = svc.vip_index.and_then(vip_of) else {
            continue;
        };
        for &port in &svc.ports {
            wanted.insert(SocketAddr::new(vip.into(), port), svc.service_id.clone());
        }
    }
    wanted
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    // Beside a listener of this node's own mesh on `0.0.0.0:PORT` (the kernel gives a
    // connection to the most specific socket).
    socket.set_reuseport(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

struct Listener {
    service_id: String,
    task: JoinHandle<()>,
}

/// Keeps the VIP listeners in line with the table until the mesh is dropped (or this task
/// is aborted: the listeners close with it).
pub(super) async fn run(
    mesh: Weak<Inner>,
    mut table_rx: watch::Receiver<Arc<DiscoveryTable>>,
    vip_of: Arc<dyn Fn(u32) -> Option<Ipv4Addr> + Send + Sync>,
) {
    struct Closer(BTreeMap<SocketAddr, Listener>);
    impl Drop for Closer {
        fn drop(&mut self) {
            for l in self.0.values() {
                l.task.abort();
            }
        }
    }
    let mut listening = Closer(BTreeMap::new());
    let mut failing: BTreeMap<SocketAddr, String> = BTreeMap::new();
    loop {
        let table = table_rx.borrow_and_update().clone();
        let wanted = wanted_vips(&table, &*vip_of);
        listening.0.retain(|addr, l| {
            let keep = wanted.get(addr) == Some(&l.service_id);
            if !keep {
                l.task.abort();
                info!(%addr, "discovery: stopped listening on a VIP");
            }
            keep
        });
        failing.retain(|addr, _| wanted.contains_key(addr));
        for (&addr, service_id) in &wanted {
            if listening.0.contains_key(&addr) {
                continue;
            }
            match bind(addr) {
                Ok(listener) => {
                    failing.remove(&addr);
                    info!(%addr, service = %service_id, "discovery: listening on a VIP");
                    let task = tokio::spawn(accept_loop(
                        mesh.clone(),
                        listener,
                        service_id.clone(),
                        addr,
                    ));
                    listening.0.insert(
                        addr,
                        Listener {
                            service_id: service_id.clone(),
                            task,
                        },
                    );
                }
                Err(e) => {
                    let error = e.to_string();
                    if failing.get(&addr) != Some(&error) {
                        warn!(%addr, service = %service_id, "discovery: cannot listen on a VIP: {error}; retrying every {}s", RETRY_BIND.as_secs());
                        failing.insert(addr, error);
                    }
                }
            }
        }
        if mesh.strong_count() == 0 {
            break;
        }
        let retry = !failing.is_empty();
        tokio::select! {
            changed = table_rx.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = tokio::time::sleep(RETRY_BIND), if retry => {}
        }
    }
}

async fn accept_loop(
    mesh: Weak<Inner>,
    listener: tokio::net::TcpListener,
    service_id: String,
    addr: SocketAddr,
) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                warn!(%addr, "discovery: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(inner) = mesh.upgrade() else {
            return;
        };
        let _ = stream.set_nodelay(true);
        let entry = Entry::Vip {
            service_id: service_id.clone(),
            addr,
        };
        tokio::spawn(async move { inner.forward(stream, from, entry).await });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mesh::DiscoveredService;

    fn service(
        id: &str,
        mode: EndpointMode,
        index: Option<u32>,
        ports: &[u16],
    ) -> DiscoveredService {
        DiscoveredService {
            service_id: id.into(),
            name: id.into(),
            endpoint_mode: mode,
            vip_index: index,
            ports: ports.to_vec(),
            tasks: Vec::new(),
        }
    }

    #[test]
    fn issue_22_a_node_listens_on_each_port_of_each_vip_in_its_range() {
        let table = DiscoveryTable {
            services: vec![
                service("a", EndpointMode::Vip, Some(0), &[80, 8080]),
                service("b", EndpointMode::Vip, Some(1), &[80]),
                service("c", EndpointMode::Dnsrr, Some(2), &[80]),
                service("d", EndpointMode::Vip, Some(500), &[80]),
                service("e", EndpointMode::Vip, None, &[80]),
            ],
        };
        let range = |i: u32| (i < 127).then(|| Ipv4Addr::new(10, 214, 1, 128 + i as u8));
        let wanted = wanted_vips(&table, &range);
        let got: Vec<(String, &str)> = wanted
            .iter()
            .map(|(a, s)| (a.to_string(), s.as_str()))
            .collect();
        assert_eq!(
            got,
            [
                ("10.214.1.128:80".to_string(), "a"),
                ("10.214.1.128:8080".to_string(), "a"),
                ("10.214.1.129:80".to_string(), "b"),
            ]
        );
    }
}
