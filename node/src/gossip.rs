//! SWIM over QUIC: the daemon's driver for the `membership` crate.
//!
//! One task owns the [`Membership`] state and is the only one to touch it. Packets,
//! timer firings and commands reach it through a channel; after each input it drains
//! the outputs: datagrams are sent by separate tasks (a dial to a dead peer never
//! holds up the loop), timers are spawned sleeps that send the token back, events go
//! to subscribers and into a shared view.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use shoal_membership::{
    Event, FactBody, MemberState, Membership, NodeId as MemberId, NodeIdentity, NodeRole, Output,
    TimerToken, Tuning,
};
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::net::{self, Pool};
use crate::peer::DATAGRAM_SWIM;
use crate::pki::{self, NodeId};

enum Input {
    Packet(MemberId, Bytes),
    Timer(TimerToken),
    Join(Vec<SocketAddr>),
    Publish(FactBody),
    Leave(oneshot::Sender<()>),
}

/// What this node's SWIM layer currently believes.
#[derive(Debug, Clone, Default)]
pub struct GossipView {
    /// Members other than this node, by public key: their identity and state.
    pub members: BTreeMap<[u8; 32], (NodeIdentity, MemberState)>,
    /// Who each live member says leads Raft: origin key → (term, leader key). Facts are
    /// signed by their origin, but anyone may claim anything about the leader: only the
    /// hints of nodes known as managers count ([`GossipView::leader_among`]).
    pub leader_hints: BTreeMap<[u8; 32], (u64, [u8; 32])>,
    /// Roles members announced.
    pub roles: BTreeMap<[u8; 32], NodeRole>,
}

impl GossipView {
    /// The leader named by the highest-term hint among `managers`' hints (a worker's or a
    /// stranger's claim about the leader never counts).
    pub fn leader_among(
        &self,
        managers: &std::collections::BTreeSet<[u8; 32]>,
    ) -> Option<(u64, [u8; 32])> {
        self.leader_hints
            .iter()
            .filter(|(origin, _)| managers.contains(*origin))
            .map(|(_, hint)| *hint)
            .max_by_key(|(term, _)| *term)
    }
}

/// Handle to the gossip task.
#[derive(Clone)]
pub struct Gossip {
    tx: mpsc::UnboundedSender<Input>,
    events: broadcast::Sender<Event>,
    view: Arc<RwLock<GossipView>>,
}

impl std::fmt::Debug for Gossip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gossip").finish_non_exhaustive()
    }
}

/// Boot "bump": nanoseconds since the epoch, so each boot is a fresh identity that wins.
fn boot_bump() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

impl Gossip {
    /// Starts gossiping as `public_key` at `advertise`, sending through `pool`.
    /// `secret` is the node's ed25519 secret key (the private half of `public_key`): it
    /// signs this node's gossip facts. `dialed` receives connections opened by address
    /// (bootstrap), so the caller serves them like any other.
    pub fn start(
        public_key: [u8; 32],
        secret: [u8; 32],
        advertise: SocketAddr,
        role: NodeRole,
        pool: Pool,
        dialed: mpsc::UnboundedSender<(NodeId, quinn::Connection)>,
        timing_scale: f64,
    ) -> Result<Gossip, String> {
        let identity = NodeIdentity::new(MemberId(public_key), advertise, boot_bump());
        let mut tuning = Tuning::lan();
        if (timing_scale - 1.0).abs() > f64::EPSILON {
            tuning = tuning.scaled(timing_scale);
        }
        let mut seed = [0u8; 8];
        let _ = getrandom::fill(&mut seed);
        let signer = Arc::new(ed25519_dalek::SigningKey::from_bytes(&secret));
        let mut membership = Membership::new(identity, tuning, u64::from_le_bytes(seed), signer)
            .map_err(|e| format!("cannot start gossip: {e}"))?;
        let _ = membership.publish(FactBody::Role(role));
        let (tx, rx) = mpsc::unbounded_channel();
        let (events, _) = broadcast::channel(1024);
        let view = Arc::new(RwLock::new(GossipView::default()));
        let gossip = Gossip {
            tx: tx.clone(),
            events: events.clone(),
            view: view.clone(),
        };
        let mut own_facts = BTreeMap::new();
        own_facts.insert(0u8, FactBody::Role(role));
        let driver = Driver {
            membership,
            tx,
            events,
            view,
            pool,
            dialed,
            own_facts,
        };
        tokio::spawn(driver.run(rx));
        Ok(gossip)
    }

    /// A packet received from `from`.
    pub fn packet(&self, from: &NodeId, key: [u8; 32], data: Bytes) {
        let _ = from;
        let _ = self.tx.send(Input::Packet(MemberId(key), data));
    }

    /// Joins through these addresses (ours is skipped).
    pub fn join(&self, addrs: Vec<SocketAddr>) {
        let _ = self.tx.send(Input::Join(addrs));
    }

    /// Spreads a small fact about this node.
    pub fn publish(&self, body: FactBody) {
        let _ = self.tx.send(Input::Publish(body));
    }

    /// Leaves cleanly: tells peers, then stops. Waits at most `timeout`.
    pub async fn leave(&self, timeout: Duration) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Input::Leave(done)).is_ok() {
            let _ = tokio::time::timeout(timeout, wait).await;
        }
    }

    /// Membership events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// A copy of the current view.
    pub fn view(&self) -> GossipView {
        self.view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

struct Driver {
    membership: Membership,
    tx: mpsc::UnboundedSender<Input>,
    events: broadcast::Sender<Event>,
    view: Arc<RwLock<GossipView>>,
    pool: Pool,
    dialed: mpsc::UnboundedSender<(NodeId, quinn::Connection)>,
    /// This node's latest fact of each kind, re-published when a member comes up so
    /// that newcomers learn them at once instead of at the next periodic refresh.
    own_facts: BTreeMap<u8, FactBody>,
}

fn fact_slot(body: &FactBody) -> u8 {
    match body {
        FactBody::Role(_) => 0,
        FactBody::AdvertiseAddr(_) => 1,
        FactBody::LeaderHint { .. } => 2,
        FactBody::Leaving { .. } => 3,
        FactBody::App { .. } => 4,
    }
}

impl Driver {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Input>) {
        self.flush();
        let mut leaving: Option<oneshot::Sender<()>> = None;
        while let Some(input) = rx.recv().await {
            let result = match input {
                Input::Packet(from, data) => {
                    tracing::trace!(from = %from.short(), len = data.len(), "gossip packet");
                    self.membership.handle_packet(Some(from), &data)
                }
                Input::Timer(t) => self.membership.handle_timer(t),
                Input::Join(addrs) => {
                    let own = self.membership.identity().addr;
                    for a in addrs.into_iter().filter(|a| *a != own) {
                        if let Err(e) = self.membership.join(a) {
                            debug!("cannot join via {a}: {e}");
                        }
                    }
                    Ok(())
                }
                Input::Publish(body) => {
                    self.own_facts.insert(fact_slot(&body), body.clone());
                    self.membership.publish(body).map(|_| ())
                }
                Input::Leave(done) => {
                    let r = self.membership.leave();
                    leaving = Some(done);
                    r
                }
            };
            if let Err(e) = result {
                debug!("gossip input rejected: {e}");
            }
            self.flush();
            if let Some(done) = leaving.take() {
                // Give the leave notices a moment on the wire, then stop.
                tokio::time::sleep(Duration::from_millis(200)).await;
                let _ = done.send(());
                info!("left gossip");
                return;
            }
        }
    }

    fn flush(&mut self) {
        let mut changed = false;
        let mut newcomer = false;
        for out in self.membership.drain_outputs() {
            match out {
                Output::Send { to, data } => {
                    tracing::trace!(to = %to.addr, len = data.len(), "gossip send");
                    self.send(to, data);
                }
                Output::SetTimer { after, timer } => {
                    let tx = self.tx.clone();
                    tokio::spawn(async move {
                        tokio::time::sleep(after).await;
                        let _ = tx.send(Input::Timer(timer));
                    });
                }
                Output::Event(event) => {
                    changed = true;
                    newcomer |= matches!(event, Event::MemberUp(_));
                    match &event {
                        Event::MemberUp(m) => {
                            info!(member = %m.id.short(), addr = %m.addr, "member up");
                        }
                        Event::MemberDown(m) => {
                            warn!(member = %m.id.short(), addr = %m.addr, "member down");
                        }
                        Event::MemberLeft(m) => info!(member = %m.id.short(), "member left"),
                        Event::MemberRenamed { old, new } => {
                            info!(member = %new.id.short(), old = %old.addr, new = %new.addr, "member renamed");
                        }
                        _ => {}
                    }
                    let _ = self.events.send(event);
                }
            }
        }
        if newcomer {
            for body in self.own_facts.values().cloned().collect::<Vec<_>>() {
                let _ = self.membership.publish(body);
            }
            // Publishing queued sends of its own; carry them out.
            for out in self.membership.drain_outputs() {
                match out {
                    Output::Send { to, data } => self.send(to, data),
                    Output::SetTimer { after, timer } => {
                        let tx = self.tx.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(after).await;
                            let _ = tx.send(Input::Timer(timer));
                        });
                    }
                    Output::Event(event) => {
                        let _ = self.events.send(event);
                    }
                }
            }
        }
        if changed {
            let n = self.membership.num_members() as u32 + 1;
            if n != self.membership.sized_for() {
                let _ = self.membership.set_cluster_size(n);
            }
            self.refresh_view();
        }
    }

    fn refresh_view(&self) {
        let own = self.membership.identity().id.0;
        let mut view = GossipView::default();
        for (ident, state) in self.membership.membership_state() {
            view.members.insert(ident.id.0, (ident, state));
        }
        for fact in self.membership.facts() {
            match fact.body {
                // Only live members' beliefs count: a dead or removed manager's last
                // hint (perhaps of a higher term) must not outvote the living.
                FactBody::LeaderHint {
                    term,
                    leader: Some(l),
                } if fact.origin.0 == own
                    || view
                        .members
                        .get(&fact.origin.0)
                        .is_some_and(|(_, st)| *st != MemberState::Down) =>
                {
                    view.leader_hints.insert(fact.origin.0, (term, l.0));
                }
                FactBody::Role(r) => {
                    view.roles.insert(fact.origin.0, r);
                }
                _ => {}
            }
        }
        *self
            .view
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = view;
    }

    fn send(&self, to: NodeIdentity, data: Bytes) {
        let pool = self.pool.clone();
        let dialed = self.dialed.clone();
        let mut framed = BytesMut::with_capacity(data.len() + 1);
        framed.put_u8(DATAGRAM_SWIM);
        framed.extend_from_slice(&data);
        let framed = framed.freeze();
        tokio::spawn(async move {
            let conn = if to.id.is_nil() {
                // Bootstrap by address: whoever answers under the cluster CA.
                match pool
                    .endpoint()
                    .connect(to.addr, pki::CLUSTER_SAN, None, net::DEFAULT_DIAL_TIMEOUT)
                    .await
                {
                    Ok(conn) => match net::peer_node_id(&conn) {
                        Some(id) => {
                            pool.insert_accepted(id, conn.clone());
                            let _ = dialed.send((id, conn.clone()));
                            conn
                        }
                        None => return,
                    },
                    Err(e) => {
                        debug!(addr = %to.addr, "gossip dial failed: {e}");
                        return;
                    }
                }
            } else {
                let id = NodeId::from_public_key(&to.id.0);
                match pool.get_or_dial(&id, to.addr).await {
                    Ok(c) => c,
                    Err(e) => {
                        debug!(addr = %to.addr, "gossip dial failed: {e}");
                        return;
                    }
                }
            };
            if let Err(e) = net::send_datagram(&conn, framed) {
                debug!(addr = %to.addr, "gossip send failed: {e}");
            }
        });
    }
}
