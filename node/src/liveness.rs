//! The leader turns what gossip sees into node status in Raft (`ready`/`down`) and
//! keeps each node's recorded address current.
//!
//! Level-triggered: every tick, and at once on any membership event, the leader
//! compares the node table with the gossip view and writes the differences. A newly
//! elected leader waits [`GRACE`] before declaring anyone down, so a leader change
//! never mass-reschedules (moby/moby#32218).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use shoal_membership::MemberState;
use tracing::{debug, info};

use crate::daemon::{Node, now_ms};
use crate::manager::state::{Command, NodeStatus};

/// How long a new leader waits before it declares nodes down.
pub const GRACE: Duration = Duration::from_secs(3);
/// How often the table is compared with the view when nothing happens.
const TICK: Duration = Duration::from_millis(250);

/// Runs for the daemon's lifetime; acts only while this node leads.
pub async fn run(node: Arc<Node>) {
    let mut leader_since: Option<Instant> = None;
    let mut events = None;
    loop {
        // Wake on a tick or on the next membership event.
        match &mut events {
            Some(rx) => {
                let _ = tokio::time::timeout(TICK, async {
                    let _ = tokio::sync::broadcast::Receiver::recv(rx).await;
                })
                .await;
            }
            None => tokio::time::sleep(TICK).await,
        }
        let (Some(manager), Some(gossip)) = (node.manager_opt().await, node.gossip()) else {
            leader_since = None;
            events = None;
            continue;
        };
        if events.is_none() {
            events = Some(gossip.subscribe());
        }
        if !manager.is_leader() {
            leader_since = None;
            continue;
        }
        let since = *leader_since.get_or_insert_with(Instant::now);
        let past_grace = since.elapsed() >= GRACE;
        let view = gossip.view();
        let nodes = manager.read_local(|s| s.nodes.values().cloned().collect::<Vec<_>>());
        let own_addr = node.advertise_addr().to_string();
        for n in nodes {
            let mut commands = Vec::new();
            if n.id == node.node_id() {
                if n.status != NodeStatus::Ready {
                    commands.push(Command::SetNodeStatus {
                        id: n.id.clone(),
                        status: NodeStatus::Ready,
                        at: now_ms(),
                    });
                }
                if n.addr != own_addr {
                    commands.push(Command::SetNodeAddr {
                        id: n.id.clone(),
                        addr: own_addr.clone(),
                        at: now_ms(),
                    });
                }
            } else {
                match view.members.get(&n.public_key) {
                    Some((ident, MemberState::Alive | MemberState::Suspect)) => {
                        if n.status != NodeStatus::Ready {
                            info!(node = %n.id, hostname = %n.hostname, "node is ready");
                            commands.push(Command::SetNodeStatus {
                                id: n.id.clone(),
                                status: NodeStatus::Ready,
                                at: now_ms(),
                            });
                        }
                        let addr: SocketAddr = ident.addr;
                        if n.addr != addr.to_string() {
                            info!(node = %n.id, old = %n.addr, new = %addr, "node address changed");
                            commands.push(Command::SetNodeAddr {
                                id: n.id.clone(),
                                addr: addr.to_string(),
                                at: now_ms(),
                            });
                        }
                    }
                    _ => {
                        if past_grace && n.status == NodeStatus::Ready {
                            info!(node = %n.id, hostname = %n.hostname, "node is down");
                            commands.push(Command::SetNodeStatus {
                                id: n.id.clone(),
                                status: NodeStatus::Down,
                                at: now_ms(),
                            });
                        }
                    }
                }
            }
            for cmd in commands {
                if let Err(e) = manager.write(cmd).await {
                    debug!("cannot record node status: {e}");
                }
            }
        }
    }
}
