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

use crate::daemon::Node;
use crate::manager::state::{Command, NodeRecord, NodeStatus};
use crate::net;
use crate::pki::NodeId;
use crate::trust::TAG_PING;
use crate::util::now_ms;

/// How long a new leader waits before it declares nodes down.
pub const GRACE: Duration = Duration::from_secs(3);
/// How often the table is compared with the view when nothing happens.
const TICK: Duration = Duration::from_millis(250);

/// Runs for the daemon's lifetime; acts only while this node leads.
pub async fn run(node: Arc<Node>) {
    let mut leader_since: Option<Instant> = None;
    let mut events = None;
    let early = EarlyProbes::default();
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
        let mut commands = Vec::new();
        // Gossip is what the members say; before writing a member's word about another
        // node into Raft, the leader checks for itself (issue 14): a node gossip calls down
        // must not answer the leader's ping, and a new address must be one where the
        // node's own key answers.
        let mut checks = Vec::new();
        for n in nodes {
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
                continue;
            }
            let Ok(id) = n.id.parse::<NodeId>() else {
                continue;
            };
            match view.members.get(&n.public_key) {
                Some((ident, state @ (MemberState::Alive | MemberState::Suspect))) => {
                    if *state == MemberState::Suspect && n.status == NodeStatus::Ready {
                        // Probe early, so the verdict is ready if gossip declares it down.
                        early.start(&node, id, n.addr.parse().ok());
                    }
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
                        checks.push(Check::Addr(n, id, addr));
                    }
                }
                _ => {
                    if past_grace && n.status == NodeStatus::Ready {
                        let addr = n.addr.parse::<SocketAddr>().ok();
                        let prior = early.failed_recently(&id);
                        checks.push(Check::Down(n, id, addr, prior));
                    }
                }
            }
        }
        let verdicts =
            futures_util::future::join_all(checks.into_iter().map(|c| verify(&node, c))).await;
        commands.extend(verdicts.into_iter().flatten());
        {
            for cmd in commands {
                if let Err(e) = manager.write(cmd).await {
                    debug!("cannot record node status: {e}");
                }
            }
        }
    }
}

/// A claim of gossip the leader checks before acting on it.
enum Check {
    /// Gossip says this node is down (and whether an early probe already went unanswered).
    Down(NodeRecord, NodeId, Option<SocketAddr>, bool),
    /// Gossip says this node moved to this address.
    Addr(NodeRecord, NodeId, SocketAddr),
}

/// The command a check leads to, if any.
async fn verify(node: &Node, check: Check) -> Option<Command> {
    let confirmed = match &check {
        Check::Down(_, id, addr, failed_early) => *failed_early || !answers(node, *id, *addr).await,
        Check::Addr(_, id, addr) => key_answers_at(node, *id, *addr).await,
    };
    let (n, what) = match &check {
        Check::Down(n, ..) => (
            n,
            "gossip reports this node down, but it answers the leader",
        ),
        Check::Addr(n, ..) => (
            n,
            "gossip reports a new address for this node, but its key does not answer there",
        ),
    };
    if !confirmed {
        warn_once(node, n, what);
    }
    verdict(check, confirmed, now_ms())
}

/// What the leader writes for a claim of gossip, given whether its own probe confirmed it
/// (a down node does not answer; a moved node's key answers at the new address). An
/// unconfirmed claim writes nothing: a member's word about another member never reaches
/// Raft by itself.
fn verdict(check: Check, confirmed: bool, at: u64) -> Option<Command> {
    if !confirmed {
        return None;
    }
    match check {
        Check::Down(n, ..) => {
            info!(node = %n.id, hostname = %n.hostname, "node is down");
            Some(Command::SetNodeStatus {
                id: n.id,
                status: NodeStatus::Down,
                at,
            })
        }
        Check::Addr(n, _, addr) => {
            info!(node = %n.id, old = %n.addr, new = %addr, "node address changed");
            Some(Command::SetNodeAddr {
                id: n.id,
                addr: addr.to_string(),
                at,
            })
        }
    }
}

/// Probes started while gossip suspects a node, so that a "down" verdict does not wait
/// for a probe of its own.
#[derive(Default, Clone)]
struct EarlyProbes {
    results: Arc<std::sync::Mutex<ProbeResults>>,
}

/// When each probe started or ended, and its answer (`None` while in flight).
type ProbeResults = std::collections::HashMap<NodeId, (Instant, Option<bool>)>;

impl EarlyProbes {
    /// How long an unanswered early probe stands for the node being down.
    const FRESH: Duration = Duration::from_secs(3);

    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, std::collections::HashMap<NodeId, (Instant, Option<bool>)>> {
        self.results
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Starts a probe of `id` unless one is in flight or fresh.
    fn start(&self, node: &Arc<Node>, id: NodeId, addr: Option<SocketAddr>) {
        {
            let mut results = self.lock();
            results.retain(|_, (at, _)| at.elapsed() < Self::FRESH * 4);
            if let Some((at, r)) = results.get(&id)
                && (r.is_none() || at.elapsed() < PROBE_TIMEOUT * 2)
            {
                return;
            }
            results.insert(id, (Instant::now(), None));
        }
        let this = self.clone();
        let node = node.clone();
        tokio::spawn(async move {
            let answered = answers(&node, id, addr).await;
            this.lock().insert(id, (Instant::now(), Some(answered)));
        });
    }

    /// Whether a probe of `id` went unanswered in the last [`Self::FRESH`].
    fn failed_recently(&self, id: &NodeId) -> bool {
        self.lock()
            .get(id)
            .is_some_and(|(at, r)| *r == Some(false) && at.elapsed() < Self::FRESH)
    }
}

/// How long the leader's own probe of a node may take.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(400);

/// Whether node `id` answers a ping from this node: on the open connection to it (a dead
/// peer's stays open until the idle timeout, so the ping is what tells), else on a fresh
/// connection to its recorded address.
async fn answers(node: &Node, id: NodeId, addr: Option<SocketAddr>) -> bool {
    if let Some(conn) = node.pool().get(&id) {
        return ping(&conn).await;
    }
    let Some(addr) = addr else { return false };
    match dial_checked(node, id, addr).await {
        Some(conn) => {
            let ok = ping(&conn).await;
            conn.close(0u32.into(), b"probe");
            ok
        }
        None => false,
    }
}

/// Whether node `id`'s key answers at `addr`: the open connection to it comes from there,
/// or a fresh connection to `addr` finds that key.
async fn key_answers_at(node: &Node, id: NodeId, addr: SocketAddr) -> bool {
    if node
        .pool()
        .get(&id)
        .is_some_and(|c| c.remote_address() == addr)
    {
        return true;
    }
    match dial_checked(node, id, addr).await {
        Some(conn) => {
            conn.close(0u32.into(), b"probe");
            true
        }
        None => false,
    }
}

async fn dial_checked(node: &Node, id: NodeId, addr: SocketAddr) -> Option<quinn::Connection> {
    let conn = node
        .pool()
        .endpoint()
        .connect(addr, crate::pki::CLUSTER_SAN, None, Duration::from_secs(1))
        .await
        .ok()?;
    if net::peer_node_id(&conn) == Some(id) {
        Some(conn)
    } else {
        conn.close(0u32.into(), b"unexpected peer");
        None
    }
}

async fn ping(conn: &quinn::Connection) -> bool {
    net::request::<(), ()>(conn, TAG_PING, &(), 64, PROBE_TIMEOUT)
        .await
        .is_ok()
}

/// Logs a disagreement between gossip and the leader's own probe once per node per minute.
fn warn_once(node: &Node, n: &NodeRecord, what: &str) {
    node.liveness_warning(&n.id, what);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> (NodeRecord, NodeId) {
        let key = crate::pki::NodeKey::generate().unwrap();
        let mut n = crate::manager::state::tests::node(key.node_id().as_str(), "w1", 9);
        n.public_key = key.public_key();
        (n, key.node_id())
    }

    #[test]
    fn issue_14_gossip_claims_reach_raft_only_when_the_leaders_probe_agrees() {
        let (n, id) = record();
        let moved: SocketAddr = "10.9.9.9:4747".parse().unwrap();
        // A member says the node is down, but it answers the leader: nothing is written.
        assert_eq!(
            verdict(Check::Down(n.clone(), id, None, false), false, 5),
            None
        );
        // A member says it moved, but its key does not answer there: nothing is written.
        assert_eq!(verdict(Check::Addr(n.clone(), id, moved), false, 5), None);
        // Confirmed by the leader's own probe: written.
        assert!(matches!(
            verdict(Check::Down(n.clone(), id, None, false), true, 5),
            Some(Command::SetNodeStatus {
                status: NodeStatus::Down,
                ..
            })
        ));
        assert_eq!(
            verdict(Check::Addr(n.clone(), id, moved), true, 5),
            Some(Command::SetNodeAddr {
                id: n.id,
                addr: moved.to_string(),
                at: 5
            })
        );
    }
}
