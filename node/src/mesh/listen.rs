//! The listeners: which published ports this node listens on (a pure function of the table),
//! and the loop that binds and closes them as the table changes, retrying ports it could not
//! bind.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::EndpointTable;
use super::forward::Inner;
use crate::manager::services::PublishMode;
use crate::session::PublishProblem;

/// How often a port that could not be bound is tried again.
const RETRY_BIND: Duration = Duration::from_secs(2);
/// Backlog of a published port's listener.
const BACKLOG: u32 = 1024;

/// The ports node `node_id` listens on, and the service each belongs to: an ingress port
/// while the service has a ready task anywhere, a host port while it has one on this node.
/// With no task to take them, connections are refused rather than accepted and dropped.
#[must_use]
pub fn wanted_ports(table: &EndpointTable, node_id: &str) -> BTreeMap<u16, String> {
    let mut wanted = BTreeMap::new();
    for svc in &table.services {
        for port in &svc.ports {
            let serves = svc
                .tasks
                .iter()
                .any(|t| t.ready && (port.mode == PublishMode::Ingress || t.node_id == node_id));
            if serves {
                wanted
                    .entry(port.published)
                    .or_insert_with(|| svc.service_id.clone());
            }
        }
    }
    wanted
}

struct Listener {
    service_id: String,
    task: JoinHandle<()>,
}

fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(BACKLOG)
}

/// Keeps the listeners in line with the table until the mesh is dropped.
pub(super) async fn run(mesh: Weak<Inner>, mut table_rx: watch::Receiver<Arc<EndpointTable>>) {
    let mut listening: BTreeMap<u16, Listener> = BTreeMap::new();
    let mut failing: BTreeMap<u16, String> = BTreeMap::new();
    loop {
        let Some(inner) = mesh.upgrade() else {
            break;
        };
        let table = table_rx.borrow_and_update().clone();
        let wanted = wanted_ports(&table, &inner.node_id);
        listening.retain(|port, l| {
            let keep = wanted.get(port) == Some(&l.service_id);
            if !keep {
                l.task.abort();
                info!(port, "mesh: stopped listening (no task to serve it)");
            }
            keep
        });
        failing.retain(|port, _| wanted.contains_key(port));
        let mut problems = Vec::new();
        for (&port, service_id) in &wanted {
            if listening.contains_key(&port) {
                continue;
            }
            let addr = SocketAddr::new(inner.publish_addr, port);
            match bind(addr) {
                Ok(listener) => {
                    if failing.remove(&port).is_some() {
                        info!(%addr, "mesh: the published port is free again");
                    }
                    info!(%addr, service = %service_id, "mesh: listening");
                    let weak = Arc::downgrade(&inner);
                    let task = tokio::spawn(accept_loop(weak, listener, port));
                    listening.insert(
                        port,
                        Listener {
                            service_id: service_id.clone(),
                            task,
                        },
                    );
                }
                Err(e) => {
                    let error = format!("cannot listen on {addr}: {e}");
                    if failing.get(&port) != Some(&error) {
                        warn!(service = %service_id, "mesh: {error}; retrying every {}s", RETRY_BIND.as_secs());
                        failing.insert(port, error.clone());
                    }
                    problems.push(PublishProblem {
                        published: port,
                        service_id: service_id.clone(),
                        error,
                    });
                }
            }
        }
        inner.problems.send_if_modified(|p| {
            if *p == problems {
                return false;
            }
            *p = problems;
            true
        });
        let retry = !failing.is_empty();
        drop(inner);
        tokio::select! {
            changed = table_rx.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            () = tokio::time::sleep(RETRY_BIND), if retry => {}
        }
    }
    for l in listening.into_values() {
        l.task.abort();
    }
}

async fn accept_loop(mesh: Weak<Inner>, listener: tokio::net::TcpListener, port: u16) {
    loop {
        let (stream, from) = match listener.accept().await {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: wait a moment rather than spin.
                warn!(port, "mesh: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(inner) = mesh.upgrade() else {
            return;
        };
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            inner
                .forward(stream, from, super::forward::Entry::Published(port))
                .await;
        });
    }
}
