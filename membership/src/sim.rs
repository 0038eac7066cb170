//! A deterministic discrete-event simulator: N [`Membership`] nodes on an in-memory network
//! with virtual time, packet loss, delay with jitter, partitions, kills, restarts and address
//! changes.
//!
//! Everything (sends, deliveries, timers) is an event in one priority queue ordered by virtual
//! time, then by insertion order. All randomness comes from the seed, so the same seed and the
//! same calls give the same trace ([`Sim::trace_hash`]).
//!
//! The network behaves like Shoal's transport: a datagram goes to the node that currently owns
//! the destination address, and is dropped when that node's key is not the one expected (the
//! TLS check), when the node is not running, when the packet is lost, or across a partition.
//! Every delivered packet carries its authenticated sender (`from`).
//!
//! Each node has a real ed25519 key, derived from its index ([`sim_node_key`]), and signs its
//! facts with it. A test can play a hostile member with [`Sim::send_raw`] and the packet
//! builders [`gossip_packet`] and [`fact_push_packet`]: the datagram is authenticated as the
//! hostile node, whatever it claims inside.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ed25519_dalek::SigningKey;
use foca::{Header, Message};
use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};

use crate::facts::{Fact, FactBody, FactKind, NodeRole};
use crate::identity::{NodeId, NodeIdentity};
use crate::membership::{Event, FRAME_SWIM, Membership, Output, TimerToken};
use crate::tuning::Tuning;

/// Index of a node in the simulation.
pub type NodeIx = usize;

/// Simulation parameters.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Seed of every random choice (network and nodes).
    pub seed: u64,
    /// Probability that a datagram is lost, in `0.0..=1.0`.
    pub loss: f64,
    /// Minimum one-way delay.
    pub delay: Duration,
    /// Extra one-way delay, uniform in `0..jitter`.
    pub jitter: Duration,
    /// SWIM profile of every node.
    pub tuning: Tuning,
    /// Expected cluster size handed to every node ([`Membership::set_cluster_size`]); `None`
    /// lets nodes size themselves from what they see.
    pub cluster_size: Option<u32>,
    /// Every node publishes a [`FactBody::Role`] fact when it boots (nodes 0..3 are managers).
    pub publish_roles: bool,
}

impl SimConfig {
    /// A LAN: 1 ms + up to 2 ms of jitter, no loss, the LAN profile.
    pub fn lan(seed: u64) -> Self {
        SimConfig {
            seed,
            loss: 0.0,
            delay: Duration::from_millis(1),
            jitter: Duration::from_millis(2),
            tuning: Tuning::lan(),
            cluster_size: None,
            publish_roles: false,
        }
    }
}

/// How an observer sees a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeerState {
    /// Never heard of.
    Unknown,
    /// Active (alive or suspect).
    Up,
    /// Declared down.
    Down,
    /// Left on purpose.
    Left,
}

/// An observer's view of one peer: its state and the bump of the identity it refers to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerView {
    /// State.
    pub state: PeerState,
    /// Bump of the identity the state is about.
    pub bump: u64,
}

/// A down event about a node that was running with that very identity, reachable from the
/// observer (same side of any partition).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FalseDown {
    /// Virtual time of the event.
    pub at: Duration,
    /// Who declared it.
    pub observer: NodeIx,
    /// Who was declared down.
    pub target: NodeIx,
}

/// Counters of a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// Datagrams sent by nodes.
    pub packets_sent: u64,
    /// Datagrams handed to a node.
    pub packets_delivered: u64,
    /// Datagrams lost, cut by a partition, or sent to nobody.
    pub packets_dropped: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// Largest datagram sent.
    pub max_packet: usize,
    /// Deliveries that the node rejected with an error.
    pub packet_errors: u64,
    /// Timers whose handling returned an error.
    pub timer_errors: u64,
    /// `MemberSuspect` events.
    pub suspects: u64,
    /// `MemberDown` events.
    pub downs: u64,
    /// `MemberDown` events about nodes that were running and reachable (see [`FalseDown`]).
    pub false_downs: u64,
    /// Events processed by the queue.
    pub steps: u64,
}

enum Payload {
    Deliver {
        from: NodeIx,
        to: NodeIdentity,
        data: Bytes,
    },
    Timer {
        node: NodeIx,
        epoch: u32,
        timer: TimerToken,
    },
}

struct Queued {
    at: u64,
    seq: u64,
    payload: Payload,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    fn cmp(&self, other: &Self) -> Ordering {
        // Min-heap on (time, insertion order).
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct SimNode {
    id: NodeId,
    key: Arc<SigningKey>,
    addr: SocketAddr,
    membership: Option<Membership>,
    epoch: u32,
    boots: u64,
    group: u32,
    left: bool,
    view: Vec<PeerView>,
}

/// The simulator. See the module docs.
pub struct Sim {
    cfg: SimConfig,
    now: u64,
    seq: u64,
    rng: Xoshiro256PlusPlus,
    queue: BinaryHeap<Queued>,
    nodes: Vec<SimNode>,
    by_addr: HashMap<SocketAddr, NodeIx>,
    by_id: HashMap<NodeId, NodeIx>,
    next_addr: u32,
    trace: u64,
    stats: SimStats,
    false_downs: Vec<FalseDown>,
    errors: Vec<String>,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = x;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The deterministic ed25519 key of simulated node `ix` (its secret seed derives from `ix`).
pub fn sim_node_key(ix: NodeIx) -> SigningKey {
    let mut seed = [0u8; 32];
    for (i, chunk) in seed.chunks_mut(8).enumerate() {
        let v = splitmix((ix as u64).wrapping_mul(4).wrapping_add(i as u64) ^ 0x5348_4f41_4c00);
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    SigningKey::from_bytes(&seed)
}

/// The deterministic node id of simulated node `ix`: the public key of [`sim_node_key`] (never
/// nil).
pub fn sim_node_id(ix: NodeIx) -> NodeId {
    NodeId(sim_node_key(ix).verifying_key().to_bytes())
}

/// A SWIM `Gossip` datagram (frame tag included) from `src` to `dst`, with no member update and
/// `facts` (encoded facts, see [`Fact::encode`]) as custom broadcasts: what a member relaying
/// those facts sends. `src_incarnation` is 0.
pub fn gossip_packet(src: NodeIdentity, dst: NodeIdentity, facts: &[Vec<u8>]) -> Bytes {
    let header = Header {
        src,
        src_incarnation: 0,
        dst,
        message: Message::Gossip,
    };
    let mut out = vec![FRAME_SWIM];
    // Encoding our own types into a Vec cannot fail.
    out.extend(postcard::to_stdvec(&header).unwrap_or_default());
    if !facts.is_empty() {
        out.extend(0u16.to_be_bytes());
    }
    for f in facts {
        let len = u16::try_from(f.len()).unwrap_or(u16::MAX);
        out.extend(len.to_be_bytes());
        out.extend(f);
    }
    Bytes::from(out)
}

/// A fact-push datagram (frame tag included) from `src` carrying `facts` (encoded facts), as a
/// member sends to a newcomer or in answer to an announce. Facts that do not fit in one
/// [`crate::MAX_DATAGRAM`] are left out.
pub fn fact_push_packet(src: NodeIdentity, facts: &[Vec<u8>]) -> Bytes {
    crate::wire::encode_fact_push(&src, facts, crate::tuning::MAX_DATAGRAM)
        .into_iter()
        .next()
        .unwrap_or_default()
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

impl Sim {
    /// An empty simulation at time zero.
    pub fn new(cfg: SimConfig) -> Self {
        let rng = Xoshiro256PlusPlus::seed_from_u64(cfg.seed);
        Sim {
            cfg,
            now: 0,
            seq: 0,
            rng,
            queue: BinaryHeap::new(),
            nodes: Vec::new(),
            by_addr: HashMap::new(),
            by_id: HashMap::new(),
            next_addr: 0,
            trace: FNV_OFFSET,
            stats: SimStats::default(),
            false_downs: Vec::new(),
            errors: Vec::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.cfg
    }

    /// Current virtual time.
    pub fn now(&self) -> Duration {
        Duration::from_nanos(self.now)
    }

    /// Number of nodes ever added.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether no node was added.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    fn fresh_addr(&mut self, base: u32) -> SocketAddr {
        self.next_addr += 1;
        SocketAddr::V4(SocketAddrV4::new(
            Ipv4Addr::from(base + self.next_addr),
            4747,
        ))
    }

    /// Adds a running node that has not joined anything yet.
    pub fn add_node(&mut self) -> NodeIx {
        let ix = self.nodes.len();
        let key = Arc::new(sim_node_key(ix));
        let id = NodeId(key.verifying_key().to_bytes());
        let addr = self.fresh_addr(0x0a00_0000);
        for node in &mut self.nodes {
            node.view.push(PeerView {
                state: PeerState::Unknown,
                bump: 0,
            });
        }
        self.nodes.push(SimNode {
            id,
            key,
            addr,
            membership: None,
            epoch: 0,
            boots: 0,
            group: 0,
            left: false,
            view: vec![
                PeerView {
                    state: PeerState::Unknown,
                    bump: 0
                };
                ix + 1
            ],
        });
        self.by_addr.insert(addr, ix);
        self.by_id.insert(id, ix);
        self.boot(ix);
        ix
    }

    fn boot(&mut self, ix: NodeIx) {
        let node = &mut self.nodes[ix];
        node.boots += 1;
        node.epoch += 1;
        node.left = false;
        // A new boot gets a larger bump, like a boot timestamp would.
        let bump = node.boots * 1_000_000;
        let identity = NodeIdentity::new(node.id, node.addr, bump);
        let seed = splitmix(self.cfg.seed ^ splitmix(((ix as u64) << 20) ^ u64::from(node.epoch)));
        let signer = Arc::clone(&node.key);
        match Membership::new(identity, self.cfg.tuning.clone(), seed, signer) {
            Ok(m) => node.membership = Some(m),
            Err(e) => self.errors.push(format!("boot of node {ix}: {e}")),
        }
        if let Some(n) = self.cfg.cluster_size {
            self.with_node(ix, |m| m.set_cluster_size(n));
        }
        if self.cfg.publish_roles {
            let role = if ix < 3 {
                NodeRole::Manager
            } else {
                NodeRole::Worker
            };
            self.with_node(ix, |m| m.publish(FactBody::Role(role)).map(|_| ()));
        }
        self.flush(ix);
    }

    /// Adds `n` nodes that each join via the address of `via`. Returns their indexes.
    pub fn add_nodes_joining(&mut self, n: usize, via: NodeIx) -> Vec<NodeIx> {
        (0..n)
            .map(|_| {
                let ix = self.add_node();
                self.join(ix, via);
                ix
            })
            .collect()
    }

    /// Adds `n` nodes that start *warm*: each is given the full member list, as if restored
    /// from a persisted list after a restart ([`Membership::restore_members`]). Skips the
    /// bootstrap storm for large benchmarks.
    pub fn add_nodes_warm(&mut self, n: usize) -> Vec<NodeIx> {
        let added: Vec<NodeIx> = (0..n).map(|_| self.add_node()).collect();
        let everyone: Vec<NodeIdentity> = added.iter().filter_map(|&i| self.identity(i)).collect();
        for &ix in &added {
            self.with_node(ix, |m| m.restore_members(everyone.iter().copied()));
            self.flush(ix);
        }
        added
    }

    /// Node `ix` joins via the address of node `via` (its key unknown, as with a seed address).
    pub fn join(&mut self, ix: NodeIx, via: NodeIx) {
        let addr = self.nodes[via].addr;
        self.with_node(ix, |m| m.join(addr));
        self.flush(ix);
    }

    /// Runs `f` on a running node's membership, recording errors.
    fn with_node<R>(
        &mut self,
        ix: NodeIx,
        f: impl FnOnce(&mut Membership) -> Result<R, crate::Error>,
    ) -> Option<R> {
        let m = self.nodes[ix].membership.as_mut()?;
        match f(m) {
            Ok(r) => Some(r),
            Err(e) => {
                self.errors.push(format!("node {ix}: {e}"));
                None
            }
        }
    }

    /// Kills node `ix` (no goodbye; its timers are lost, packets to it are dropped).
    pub fn kill(&mut self, ix: NodeIx) {
        let node = &mut self.nodes[ix];
        node.membership = None;
        node.epoch += 1;
        self.fold(&[0xdead, ix as u64]);
    }

    /// Restarts node `ix` with a new boot (new bump), joining via `via`'s address.
    pub fn restart(&mut self, ix: NodeIx, via: NodeIx) {
        self.kill(ix);
        self.boot(ix);
        self.join(ix, via);
    }

    /// Node `ix` leaves the cluster on purpose; it stays up long enough to send its goodbyes.
    pub fn leave(&mut self, ix: NodeIx) {
        self.with_node(ix, Membership::leave);
        self.nodes[ix].left = true;
        self.flush(ix);
    }

    /// Moves node `ix` to a fresh address (its old address stops working). Returns it.
    pub fn change_addr(&mut self, ix: NodeIx) -> SocketAddr {
        let addr = self.fresh_addr(0x0b00_0000);
        let old = self.nodes[ix].addr;
        self.by_addr.remove(&old);
        self.by_addr.insert(addr, ix);
        self.nodes[ix].addr = addr;
        self.with_node(ix, |m| m.set_advertise_addr(addr).map(|_| ()));
        self.flush(ix);
        addr
    }

    /// Publishes a fact from node `ix`.
    pub fn publish(&mut self, ix: NodeIx, body: FactBody) -> Option<Fact> {
        let fact = self.with_node(ix, |m| m.publish(body));
        self.flush(ix);
        fact
    }

    /// Sends `data` as one datagram from node `from` to the current identity of node `to`,
    /// bypassing `from`'s membership: what a hostile (or buggy) member can put on the wire. The
    /// network treats it like any datagram (loss, delay, partitions), and `to` receives it
    /// authenticated as `from`. Does nothing if `to` is not running.
    pub fn send_raw(&mut self, from: NodeIx, to: NodeIx, data: Bytes) {
        if let Some(dst) = self.identity(to) {
            self.send(from, dst, data);
        }
    }

    /// Sum of [`crate::Stats::forged_facts`] over the running nodes.
    pub fn forged_facts(&self) -> u64 {
        self.nodes
            .iter()
            .filter_map(|n| n.membership.as_ref())
            .map(|m| m.stats().forged_facts)
            .sum()
    }

    /// Splits the network: nodes in different groups cannot talk; nodes not listed form one
    /// more group.
    pub fn partition(&mut self, groups: &[Vec<NodeIx>]) {
        for node in &mut self.nodes {
            node.group = 0;
        }
        for (g, members) in groups.iter().enumerate() {
            for &ix in members {
                self.nodes[ix].group = g as u32 + 1;
            }
        }
        self.fold(&[0x9a27, groups.len() as u64]);
    }

    /// Removes every partition.
    pub fn heal(&mut self) {
        for node in &mut self.nodes {
            node.group = 0;
        }
        self.fold(&[0x4ea1]);
    }

    /// Sets the packet loss probability.
    pub fn set_loss(&mut self, loss: f64) {
        self.cfg.loss = loss.clamp(0.0, 1.0);
    }

    /// Runs until virtual time `t`.
    pub fn run_until(&mut self, t: Duration) {
        let end = nanos(t);
        while let Some(top) = self.queue.peek() {
            if top.at > end {
                break;
            }
            let Some(item) = self.queue.pop() else { break };
            self.now = item.at;
            self.stats.steps += 1;
            self.dispatch(item.payload);
        }
        self.now = self.now.max(end);
    }

    /// Runs for `d` of virtual time.
    pub fn run_for(&mut self, d: Duration) {
        self.run_until(self.now() + d);
    }

    /// Runs in steps of `poll` until `cond` holds or `limit` of virtual time passed. Returns
    /// the time (since the call) when `cond` was first seen true.
    pub fn run_until_cond(
        &mut self,
        limit: Duration,
        poll: Duration,
        mut cond: impl FnMut(&Sim) -> bool,
    ) -> Option<Duration> {
        let start = self.now();
        let end = start + limit;
        loop {
            if cond(self) {
                return Some(self.now() - start);
            }
            if self.now() >= end {
                return None;
            }
            let next = (self.now() + poll).min(end);
            self.run_until(next);
        }
    }

    fn dispatch(&mut self, payload: Payload) {
        match payload {
            Payload::Deliver { from, to, data } => {
                let Some(&ix) = self.by_addr.get(&to.addr) else {
                    self.stats.packets_dropped += 1;
                    return;
                };
                let node = &mut self.nodes[ix];
                // The transport authenticates the peer: a datagram meant for another key is
                // not delivered.
                if (!to.id.is_nil() && to.id != node.id) || node.membership.is_none() {
                    self.stats.packets_dropped += 1;
                    return;
                }
                self.stats.packets_delivered += 1;
                let sender = self.nodes[from].id;
                let result = self.nodes[ix]
                    .membership
                    .as_mut()
                    .map(|m| m.handle_packet(Some(sender), &data));
                if let Some(Err(e)) = result {
                    self.stats.packet_errors += 1;
                    if self.errors.len() < 100 {
                        self.errors.push(format!("node {ix} packet: {e}"));
                    }
                }
                self.flush(ix);
            }
            Payload::Timer { node, epoch, timer } => {
                if self.nodes[node].epoch != epoch {
                    return;
                }
                let result = self.nodes[node]
                    .membership
                    .as_mut()
                    .map(|m| m.handle_timer(timer));
                if let Some(Err(e)) = result {
                    self.stats.timer_errors += 1;
                    if self.errors.len() < 100 {
                        self.errors.push(format!("node {node} timer: {e}"));
                    }
                }
                self.flush(node);
            }
        }
    }

    fn push(&mut self, at: u64, payload: Payload) {
        self.seq += 1;
        self.queue.push(Queued {
            at,
            seq: self.seq,
            payload,
        });
    }

    /// Carries out a node's outputs.
    fn flush(&mut self, ix: NodeIx) {
        let outputs = match self.nodes[ix].membership.as_mut() {
            Some(m) => m.drain_outputs(),
            None => return,
        };
        let epoch = self.nodes[ix].epoch;
        for out in outputs {
            match out {
                Output::Send { to, data } => self.send(ix, to, data),
                Output::SetTimer { after, timer } => {
                    let at = self.now.saturating_add(nanos(after));
                    self.push(
                        at,
                        Payload::Timer {
                            node: ix,
                            epoch,
                            timer,
                        },
                    );
                }
                Output::Event(event) => self.observe(ix, &event),
            }
        }
    }

    fn send(&mut self, from: NodeIx, to: NodeIdentity, data: Bytes) {
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += data.len() as u64;
        self.stats.max_packet = self.stats.max_packet.max(data.len());
        let lost = self.cfg.loss > 0.0 && self.rng.random_bool(self.cfg.loss);
        let cut = match self.by_addr.get(&to.addr) {
            Some(&dst) => self.nodes[dst].group != self.nodes[from].group,
            None => true,
        };
        if lost || cut {
            self.stats.packets_dropped += 1;
            return;
        }
        let jitter = nanos(self.cfg.jitter);
        let extra = if jitter > 0 {
            self.rng.random_range(0..jitter)
        } else {
            0
        };
        let at = self
            .now
            .saturating_add(nanos(self.cfg.delay))
            .saturating_add(extra);
        self.push(at, Payload::Deliver { from, to, data });
    }

    fn fold(&mut self, words: &[u64]) {
        let mut h = self.trace;
        for w in std::iter::once(self.now).chain(words.iter().copied()) {
            for b in w.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(FNV_PRIME);
            }
        }
        self.trace = h;
    }

    fn target_of(&self, id: &NodeId) -> Option<NodeIx> {
        self.by_id.get(id).copied()
    }

    fn observe(&mut self, observer: NodeIx, event: &Event) {
        let (code, about) = match event {
            Event::MemberUp(m) => (1, Some(*m)),
            Event::MemberSuspect(m) => (2, Some(*m)),
            Event::MemberDown(m) => (3, Some(*m)),
            Event::MemberLeft(m) => (4, Some(*m)),
            Event::MemberRenamed { new, .. } => (5, Some(*new)),
            Event::Fact(f) => {
                let t = self.target_of(&f.origin).unwrap_or(usize::MAX) as u64;
                self.fold(&[6, observer as u64, t, f.version.bump, f.version.seq]);
                return;
            }
            Event::Joined => (7, None),
            Event::Isolated => (8, None),
            Event::Defunct => (9, None),
            Event::Rejoined(m) => (10, Some(*m)),
        };
        let target = about.and_then(|m| self.target_of(&m.id));
        self.fold(&[
            code,
            observer as u64,
            target.unwrap_or(usize::MAX) as u64,
            about.map_or(0, |m| m.bump),
        ]);
        let (Some(m), Some(t)) = (about, target) else {
            return;
        };
        if t == observer {
            return;
        }
        let view = &mut self.nodes[observer].view[t];
        match event {
            Event::MemberUp(_) => {
                *view = PeerView {
                    state: PeerState::Up,
                    bump: m.bump,
                };
            }
            Event::MemberDown(_) | Event::MemberLeft(_) => {
                if view.bump <= m.bump {
                    view.state = if matches!(event, Event::MemberLeft(_)) {
                        PeerState::Left
                    } else {
                        PeerState::Down
                    };
                    view.bump = m.bump;
                }
                if matches!(event, Event::MemberDown(_)) {
                    self.stats.downs += 1;
                    let truth = &self.nodes[t];
                    let running_as_m = !truth.left
                        && truth
                            .membership
                            .as_ref()
                            .is_some_and(|tm| tm.identity() == m);
                    if running_as_m && truth.group == self.nodes[observer].group {
                        self.stats.false_downs += 1;
                        self.false_downs.push(FalseDown {
                            at: self.now(),
                            observer,
                            target: t,
                        });
                    }
                }
            }
            Event::MemberRenamed { .. } if view.bump <= m.bump => view.bump = m.bump,
            Event::MemberSuspect(_) => self.stats.suspects += 1,
            _ => {}
        }
    }

    /// Whether node `ix` is running (not killed; a node that left still runs).
    pub fn is_running(&self, ix: NodeIx) -> bool {
        self.nodes[ix].membership.is_some()
    }

    /// Whether node `ix` is a running cluster member (running and has not left).
    pub fn is_member(&self, ix: NodeIx) -> bool {
        self.is_running(ix) && !self.nodes[ix].left
    }

    /// Running members.
    pub fn members(&self) -> Vec<NodeIx> {
        (0..self.nodes.len())
            .filter(|&i| self.is_member(i))
            .collect()
    }

    /// The current identity of a running node.
    pub fn identity(&self, ix: NodeIx) -> Option<NodeIdentity> {
        self.nodes[ix].membership.as_ref().map(Membership::identity)
    }

    /// The membership of a running node.
    pub fn membership(&self, ix: NodeIx) -> Option<&Membership> {
        self.nodes[ix].membership.as_ref()
    }

    /// How `observer` sees `target`, from the events it emitted.
    pub fn view(&self, observer: NodeIx, target: NodeIx) -> PeerView {
        self.nodes[observer].view[target]
    }

    /// Whether `observer` sees `target` up with `target`'s current identity.
    pub fn sees_current(&self, observer: NodeIx, target: NodeIx) -> bool {
        let Some(ident) = self.identity(target) else {
            return false;
        };
        let v = self.view(observer, target);
        v.state == PeerState::Up
            && v.bump == ident.bump
            && self
                .membership(observer)
                .and_then(|m| m.member(&ident.id))
                .is_some_and(|seen| *seen == ident)
    }

    /// Whether every running member sees every other running member up, with its current
    /// identity (address and bump).
    pub fn converged(&self) -> bool {
        let members = self.members();
        // Cheap count check first.
        let counts_match = members.iter().all(|&o| {
            self.membership(o)
                .is_some_and(|m| m.num_members() + 1 == members.len())
        });
        if !counts_match {
            return false;
        }
        members
            .iter()
            .all(|&o| members.iter().all(|&t| o == t || self.sees_current(o, t)))
    }

    /// Number of running members (other than `target`) whose view of `target` satisfies `f`.
    pub fn count_views(&self, target: NodeIx, f: impl Fn(PeerView) -> bool) -> usize {
        self.members()
            .into_iter()
            .filter(|&o| o != target && f(self.view(o, target)))
            .count()
    }

    /// Whether every running member other than `target` sees `target` down or left.
    pub fn all_see_gone(&self, target: NodeIx) -> bool {
        self.members().into_iter().all(|o| {
            o == target
                || matches!(
                    self.view(o, target).state,
                    PeerState::Down | PeerState::Left
                )
        })
    }

    /// Number of running members other than `origin` that know `fact` (or something newer).
    pub fn count_knowing(&self, fact: &Fact) -> usize {
        self.members()
            .into_iter()
            .filter(|&o| {
                self.nodes[o].id != fact.origin
                    && self
                        .membership(o)
                        .and_then(|m| m.fact(&fact.origin, fact.kind()))
                        .is_some_and(|f| f.version >= fact.version)
            })
            .count()
    }

    /// The fact of `kind` that `observer` holds about `origin`.
    pub fn fact_at(&self, observer: NodeIx, origin: NodeIx, kind: FactKind) -> Option<Fact> {
        self.membership(observer)?
            .fact(&self.nodes[origin].id, kind)
    }

    /// Counters.
    pub fn stats(&self) -> SimStats {
        self.stats
    }

    /// Down events about running, reachable nodes.
    pub fn false_downs(&self) -> &[FalseDown] {
        &self.false_downs
    }

    /// Errors returned by nodes (first 100).
    pub fn errors(&self) -> &[String] {
        &self.errors
    }

    /// Hash of the trace so far: every event of every node with its virtual time, every fault
    /// injected, and the packet counters.
    pub fn trace_hash(&self) -> u64 {
        let mut h = self.trace;
        for w in [
            self.stats.packets_sent,
            self.stats.packets_delivered,
            self.stats.packets_dropped,
            self.stats.bytes_sent,
        ] {
            for b in w.to_le_bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(FNV_PRIME);
            }
        }
        h
    }
}
