//! The sans-IO membership seam over foca: packets, timer firings and commands in; packets to
//! send, timers to set and events out.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use foca::{
    AccumulatingRuntime, Foca, Header, Member, Message, OwnedNotification, PostcardCodec, State,
    Timer,
};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;

use crate::error::Error;
use crate::facts::{
    Fact, FactBody, FactHandler, FactKind, FactSigner, FactStore, FactVersion, SharedFacts, lock,
    signs_for,
};
use crate::identity::{NodeId, NodeIdentity};
use crate::tuning::Tuning;

/// First byte of a datagram carrying a foca (SWIM) packet.
pub const FRAME_SWIM: u8 = 0x53;
/// First byte of a datagram carrying facts: the sender's own facts, pushed to members that just
/// came up, or every fact the sender knows, in answer to an announce.
pub const FRAME_FACTS: u8 = 0x46;
/// First byte of a datagram carrying the sender's view of the active members, sent in answer
/// to every announce (a feed only holds what fits in one packet).
pub const FRAME_MEMBERS: u8 = 0x4d;

/// How many extra members a node asks for their member list after joining.
const JOIN_FAN_OUT: usize = 3;

/// When a node asks them, after joining.
const JOIN_FAN_OUT_DELAY: Duration = Duration::from_secs(1);

/// Longest delay between two join attempts.
const MAX_JOIN_RETRY: Duration = Duration::from_secs(8);

type Swim = Foca<NodeIdentity, PostcardCodec, Xoshiro256PlusPlus, FactHandler>;

/// An opaque timer: schedule it after the requested delay and hand it back to
/// [`Membership::handle_timer`]. Every timer must come back, even late; dropping one stalls
/// probing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TimerToken(TimerKind);

#[derive(Clone, Debug, PartialEq, Eq)]
enum TimerKind {
    Swim(Timer<NodeIdentity>),
    RefreshFacts,
    JoinRetry,
    FanOut,
}

impl TimerToken {
    /// A stable small number naming the timer's kind, for logs and deterministic ordering of
    /// timers that fire at the same instant.
    pub fn kind_code(&self) -> u8 {
        match &self.0 {
            TimerKind::Swim(Timer::SendIndirectProbe { .. }) => 0,
            TimerKind::Swim(Timer::ProbeRandomMember(_)) => 1,
            TimerKind::Swim(Timer::ChangeSuspectToDown { .. }) => 2,
            TimerKind::Swim(Timer::PeriodicAnnounce(_)) => 3,
            TimerKind::Swim(Timer::PeriodicGossip(_)) => 4,
            TimerKind::Swim(Timer::RemoveDown(_)) => 5,
            TimerKind::Swim(Timer::PeriodicAnnounceDown(_)) => 6,
            TimerKind::RefreshFacts => 7,
            TimerKind::JoinRetry => 8,
            TimerKind::FanOut => 9,
        }
    }
}

/// Something the caller must do, drained with [`Membership::drain_outputs`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Output {
    /// Send `data` as one datagram to `to` (at `to.addr`; when `to.id` is not nil, the peer
    /// must authenticate as that key). The id is nil only when joining by address.
    Send {
        /// Destination.
        to: NodeIdentity,
        /// The datagram (≤ the tuning's `max_packet_size`).
        data: Bytes,
    },
    /// Call [`Membership::handle_timer`] with `timer` after `after`.
    SetTimer {
        /// Delay from now.
        after: Duration,
        /// The token to hand back.
        timer: TimerToken,
    },
    /// Something happened.
    Event(Event),
}

/// Membership events, in the order they happened.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A member became active.
    MemberUp(NodeIdentity),
    /// This node probed the member and got no answer, directly or indirectly: it is now
    /// suspect and will be declared down unless it refutes in time. Only suspicions raised by
    /// this node are reported (foca does not expose suspicions learned by gossip), and the
    /// same suspicion may be reported again if the member is probed again before it is
    /// declared down.
    MemberSuspect(NodeIdentity),
    /// A member was declared down (crash, partition, or a leave whose notice has not arrived).
    MemberDown(NodeIdentity),
    /// A member left on purpose. May follow a `MemberDown` of the same identity when the leave
    /// notice arrives after the down update.
    MemberLeft(NodeIdentity),
    /// The same node (same id) now has another identity: a new address and/or a new boot
    /// (bump). If `old` was down and `new` is alive, a `MemberUp(new)` follows.
    MemberRenamed {
        /// The identity known until now.
        old: NodeIdentity,
        /// The identity that replaced it.
        new: NodeIdentity,
    },
    /// A fact from another node, newer than what this node knew.
    Fact(Fact),
    /// This node's identity is known by at least one active member (first join, or after an
    /// identity change).
    Joined,
    /// Every known member is down or gone: this node is alone.
    Isolated,
    /// This node was declared down and could not renew its identity (or it left).
    Defunct,
    /// This node was declared down and rejoined at once with a renewed identity (bump + 1).
    Rejoined(NodeIdentity),
}

/// A member as the SWIM layer currently sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberState {
    /// Alive.
    Alive,
    /// Suspected by someone, still counted as active.
    Suspect,
    /// Declared down (kept for a while so that its identity stays refused).
    Down,
}

/// Counters, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    /// Datagrams handed to [`Membership::handle_packet`].
    pub packets_received: u64,
    /// Datagrams rejected with an error.
    pub packets_rejected: u64,
    /// Datagrams emitted.
    pub packets_sent: u64,
    /// Bytes emitted.
    pub bytes_sent: u64,
    /// Facts received (relayed by a member or pushed) that were newer than what this node knew
    /// but whose signature did not verify against their origin's key: dropped, changing
    /// nothing. The packet that carried them is still accepted.
    pub forged_facts: u64,
}

/// SWIM membership of one node, driven from outside: no sockets, no clock, no tasks.
///
/// Feed it datagrams ([`Membership::handle_packet`]), timer firings
/// ([`Membership::handle_timer`]) and commands ([`Membership::join`], [`Membership::leave`],
/// [`Membership::publish`], …), then call [`Membership::drain_outputs`] and carry out every
/// [`Output`]. Randomness comes from the seed given to [`Membership::new`], so a run is
/// reproducible.
pub struct Membership {
    swim: Swim,
    rt: AccumulatingRuntime<NodeIdentity>,
    facts: SharedFacts,
    signer: Arc<dyn FactSigner>,
    tuning: Tuning,
    size_hint: u32,
    applied_size: u32,
    outputs: Vec<Output>,
    active: BTreeMap<NodeId, NodeIdentity>,
    down: BTreeMap<NodeId, NodeIdentity>,
    left: BTreeMap<NodeId, u64>,
    push_facts_to: Vec<NodeIdentity>,
    next_seq: u64,
    has_left: bool,
    fan_out_announces: bool,
    join_targets: Vec<NodeIdentity>,
    join_attempt: u32,
    join_armed: bool,
    stats: Stats,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("identity", self.swim.identity())
            .field("members", &self.active.len())
            .finish_non_exhaustive()
    }
}

impl Membership {
    /// A node with `identity` (non-nil id, fresh bump per boot), not yet joined. `seed` drives
    /// every random choice (use OS randomness in production, a fixed seed in simulations).
    /// `signer` signs this node's facts: it must hold the private key of `identity.id`
    /// ([`Error::SignerMismatch`] otherwise; checked by signing and verifying a probe message).
    ///
    /// The first output is the fact refresh timer.
    pub fn new(
        identity: NodeIdentity,
        tuning: Tuning,
        seed: u64,
        signer: Arc<dyn FactSigner>,
    ) -> Result<Self, Error> {
        if identity.id.is_nil() {
            return Err(Error::InvalidIdentity("the node id must not be nil"));
        }
        tuning.validate().map_err(Error::InvalidTuning)?;
        if !signs_for(signer.as_ref(), &identity.id) {
            return Err(Error::SignerMismatch(identity.id));
        }
        let facts: SharedFacts = Arc::new(Mutex::new(FactStore {
            own: identity.id,
            ..FactStore::default()
        }));
        let swim = Foca::with_custom_broadcast(
            identity,
            tuning.foca_config(1),
            Xoshiro256PlusPlus::seed_from_u64(seed),
            PostcardCodec,
            FactHandler {
                store: Arc::clone(&facts),
            },
        );
        let outputs = vec![Output::SetTimer {
            after: tuning.fact_refresh,
            timer: TimerToken(TimerKind::RefreshFacts),
        }];
        Ok(Membership {
            swim,
            rt: AccumulatingRuntime::new(),
            facts,
            signer,
            tuning,
            size_hint: 1,
            applied_size: 1,
            outputs,
            active: BTreeMap::new(),
            down: BTreeMap::new(),
            left: BTreeMap::new(),
            push_facts_to: Vec::new(),
            next_seq: 0,
            has_left: false,
            fan_out_announces: false,
            join_targets: Vec::new(),
            join_attempt: 0,
            join_armed: false,
            stats: Stats::default(),
        })
    }

    /// This node's current identity (its bump grows on renewal and address changes).
    pub fn identity(&self) -> NodeIdentity {
        *self.swim.identity()
    }

    /// The tuning in use.
    pub fn tuning(&self) -> &Tuning {
        &self.tuning
    }

    /// Asks the node at `addr` (id unknown) to let us in. Retried with backoff (from
    /// `Tuning::join_retry` up to 8 s) until some member answers, and again whenever this node
    /// finds itself alone.
    pub fn join(&mut self, addr: SocketAddr) -> Result<(), Error> {
        if addr == self.identity().addr {
            return Err(Error::InvalidIdentity("cannot join via our own address"));
        }
        self.add_join_target(NodeIdentity::bootstrap(addr))
    }

    /// Asks a known member to let us in (retried like [`Membership::join`]).
    pub fn join_member(&mut self, member: NodeIdentity) -> Result<(), Error> {
        if member.id == self.identity().id || member.id.is_nil() {
            return Err(Error::InvalidIdentity(
                "cannot join via ourselves or a nil id",
            ));
        }
        self.add_join_target(member)
    }

    fn add_join_target(&mut self, target: NodeIdentity) -> Result<(), Error> {
        if !self.join_targets.contains(&target) {
            self.join_targets.push(target);
        }
        self.swim.announce(target, &mut self.rt)?;
        self.join_attempt = 0;
        self.arm_join_retry();
        self.pump();
        Ok(())
    }

    fn arm_join_retry(&mut self) {
        if self.join_armed || self.join_targets.is_empty() {
            return;
        }
        self.join_armed = true;
        let after = self
            .tuning
            .join_retry
            .saturating_mul(1 << self.join_attempt.min(5))
            .min(MAX_JOIN_RETRY.max(self.tuning.join_retry));
        self.outputs.push(Output::SetTimer {
            after,
            timer: TimerToken(TimerKind::JoinRetry),
        });
    }

    fn retry_join(&mut self) -> Result<(), Error> {
        self.join_armed = false;
        if !self.active.is_empty() || self.has_left {
            return Ok(());
        }
        self.join_attempt = self.join_attempt.saturating_add(1);
        for target in self.join_targets.clone() {
            self.swim.announce(target, &mut self.rt)?;
        }
        self.arm_join_retry();
        Ok(())
    }

    /// Warm start: treats `members` as alive (e.g. a member list persisted before a restart)
    /// without gossiping about them. Unreachable ones are suspected and declared down as usual.
    pub fn restore_members(
        &mut self,
        members: impl IntoIterator<Item = NodeIdentity>,
    ) -> Result<(), Error> {
        let own = self.identity().id;
        let members: Vec<_> = members
            .into_iter()
            .filter(|m| !m.id.is_nil() && m.id != own)
            .map(Member::alive)
            .collect();
        self.swim
            .apply_many(members.into_iter(), false, &mut self.rt)?;
        self.pump();
        Ok(())
    }

    /// Leaves the cluster on purpose: spreads a [`FactBody::Leaving`] fact, then SWIM's own
    /// leave (our identity declared down). Peers report [`Event::MemberLeft`]. Flush the
    /// outputs before shutting down.
    pub fn leave(&mut self) -> Result<(), Error> {
        let bump = self.identity().bump;
        self.publish(FactBody::Leaving { bump })?;
        self.swim.leave_cluster(&mut self.rt)?;
        self.has_left = true;
        self.pump();
        Ok(())
    }

    /// Whether [`Membership::leave`] was called.
    pub fn has_left(&self) -> bool {
        self.has_left
    }

    /// Publishes a fact about this node, signed with its key; it replaces the previous fact of
    /// the same kind everywhere. Returns the fact as published.
    pub fn publish(&mut self, body: FactBody) -> Result<Fact, Error> {
        let version = FactVersion {
            bump: self.identity().bump,
            seq: self.next_seq,
        };
        let fact = Fact::signed(self.identity().id, version, body, self.signer.as_ref())?;
        let bytes = fact.encode()?;
        self.swim.add_broadcast(&bytes)?;
        self.next_seq += 1;
        self.pump();
        Ok(fact)
    }

    /// Moves this node to a new advertise address: same id, bump + 1. Peers see
    /// [`Event::MemberRenamed`] with the same id. Returns the new identity.
    pub fn set_advertise_addr(&mut self, addr: SocketAddr) -> Result<NodeIdentity, Error> {
        let old = self.identity();
        let bump = old
            .bump
            .checked_add(1)
            .ok_or(Error::InvalidIdentity("bump exhausted"))?;
        let new = NodeIdentity::new(old.id, addr, bump);
        self.swim.change_identity(new, &mut self.rt)?;
        // change_identity leaves foca disconnected until someone addresses the new identity:
        // ask a few members for a feed so that this happens at once.
        let peers: Vec<NodeIdentity> = self.active.values().take(3).copied().collect();
        for peer in peers {
            self.swim.announce(peer, &mut self.rt)?;
        }
        self.pump();
        Ok(new)
    }

    /// Sets the expected cluster size (e.g. the number of nodes in the cluster state); the
    /// profile is sized by the larger of this and the number of members seen.
    pub fn set_cluster_size(&mut self, n: u32) -> Result<(), Error> {
        self.size_hint = n.max(1);
        self.resize()
    }

    /// Handles one received datagram. `from` is the authenticated peer key when the transport
    /// knows it: a packet claiming another sender is refused.
    ///
    /// The whole packet is validated before anything is applied: a malformed packet returns an
    /// error and changes nothing.
    pub fn handle_packet(&mut self, from: Option<NodeId>, data: &[u8]) -> Result<(), Error> {
        self.stats.packets_received += 1;
        let result = self.handle_packet_inner(from, data);
        if result.is_err() {
            self.stats.packets_rejected += 1;
        }
        self.pump();
        result
    }

    fn handle_packet_inner(&mut self, from: Option<NodeId>, data: &[u8]) -> Result<(), Error> {
        let (&tag, body) = data.split_first().ok_or(Error::EmptyPacket)?;
        if data.len() > self.tuning.max_packet_size {
            return Err(Error::TooBig {
                len: data.len(),
                max: self.tuning.max_packet_size,
            });
        }
        match tag {
            FRAME_SWIM => {
                let header = crate::wire::validate_swim(body, from, &self.identity())?;
                self.swim.handle_data(body, &mut self.rt)?;
                // Announces come from joiners and, every `announce_period`, from members
                // repairing their view: answer each with our whole member list (pull
                // anti-entropy), beyond the one-packet feed foca sends.
                if header.message == Message::Announce
                    && header.dst.node_addr() == self.identity().node_addr()
                    && !self.has_left
                {
                    self.send_member_sync(header.src);
                }
                Ok(())
            }
            FRAME_MEMBERS => {
                let members = crate::wire::decode_member_sync(body, from, &self.identity())?;
                self.swim
                    .apply_many(members.into_iter(), false, &mut self.rt)?;
                Ok(())
            }
            FRAME_FACTS => {
                let facts = crate::wire::decode_fact_push(body, from, &self.identity())?;
                // Repair, not news: stored (and reported when newer) but not gossiped again.
                // Only facts signed by their origin are kept, whoever pushes them.
                let mut store = lock(&self.facts);
                for fact in facts {
                    store.accept(fact);
                }
                Ok(())
            }
            other => Err(Error::UnknownFrame(other)),
        }
    }

    /// Handles a timer previously requested with [`Output::SetTimer`].
    pub fn handle_timer(&mut self, timer: TimerToken) -> Result<(), Error> {
        let result = match timer.0 {
            TimerKind::Swim(t) => self.swim.handle_timer(t, &mut self.rt).map_err(Error::from),
            TimerKind::RefreshFacts => {
                self.outputs.push(Output::SetTimer {
                    after: self.tuning.fact_refresh,
                    timer: TimerToken(TimerKind::RefreshFacts),
                });
                self.requeue_own_facts()
            }
            TimerKind::JoinRetry => self.retry_join(),
            TimerKind::FanOut => {
                self.announce_to_some();
                Ok(())
            }
        };
        self.pump();
        result
    }

    /// Takes every pending output, oldest first.
    pub fn drain_outputs(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outputs)
    }

    /// Active members (alive or suspect) as this node sees them, by id.
    pub fn members(&self) -> impl Iterator<Item = &NodeIdentity> {
        self.active.values()
    }

    /// The active identity of node `id`, if it is an active member.
    pub fn member(&self, id: &NodeId) -> Option<&NodeIdentity> {
        self.active.get(id)
    }

    /// Number of active members (not counting this node).
    pub fn num_members(&self) -> usize {
        self.active.len()
    }

    /// Full SWIM state, down members included (to persist for [`Membership::restore_members`]).
    pub fn membership_state(&self) -> Vec<(NodeIdentity, MemberState)> {
        self.swim
            .iter_membership_state()
            .map(|m| {
                let state = match m.state() {
                    State::Alive => MemberState::Alive,
                    State::Suspect => MemberState::Suspect,
                    State::Down => MemberState::Down,
                };
                (*m.id(), state)
            })
            .collect()
    }

    /// The newest known fact of `kind` about `origin` (this node's own facts included).
    pub fn fact(&self, origin: &NodeId, kind: FactKind) -> Option<Fact> {
        lock(&self.facts).facts.get(&(*origin, kind)).cloned()
    }

    /// Every known fact, ordered by origin then kind.
    pub fn facts(&self) -> Vec<Fact> {
        lock(&self.facts).facts.values().cloned().collect()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        Stats {
            forged_facts: lock(&self.facts).forged,
            ..self.stats
        }
    }

    /// Cluster size the profile is currently sized for.
    pub fn sized_for(&self) -> u32 {
        self.applied_size
    }

    fn own_facts(&self) -> Vec<Fact> {
        let own = self.identity().id;
        lock(&self.facts)
            .facts
            .values()
            .filter(|f| f.origin == own && (self.has_left || f.kind() != FactKind::Leaving))
            .cloned()
            .collect()
    }

    fn requeue_own_facts(&mut self) -> Result<(), Error> {
        for fact in self.own_facts() {
            let bytes = fact.encode()?;
            self.swim.add_broadcast(&bytes)?;
        }
        Ok(())
    }

    fn resize(&mut self) -> Result<(), Error> {
        let seen = u32::try_from(self.active.len().saturating_add(1)).unwrap_or(u32::MAX);
        let n = seen.max(self.size_hint);
        let t = &self.tuning;
        if t.transmissions(n) != t.transmissions(self.applied_size)
            || t.announce_period_for(n) != t.announce_period_for(self.applied_size)
            || t.suspicion(n) != t.suspicion(self.applied_size)
        {
            self.swim.set_config(t.foca_config(n))?;
        }
        self.applied_size = n;
        Ok(())
    }

    /// Translates everything foca accumulated into outputs.
    fn pump(&mut self) {
        let fresh = std::mem::take(&mut lock(&self.facts).fresh);
        let own = self.identity().id;
        for fact in &fresh {
            if let FactBody::Leaving { bump } = fact.body {
                self.left.insert(fact.origin, bump);
            }
        }
        while let Some(note) = self.rt.to_notify() {
            match note {
                OwnedNotification::MemberUp(m) => {
                    self.down.remove(&m.id);
                    self.active.insert(m.id, m);
                    self.push_facts_to.push(m);
                    self.emit(Event::MemberUp(m));
                }
                OwnedNotification::MemberDown(m) => {
                    if self.active.get(&m.id) == Some(&m) {
                        self.active.remove(&m.id);
                    }
                    if self.left.get(&m.id) == Some(&m.bump) {
                        self.emit(Event::MemberLeft(m));
                    } else {
                        self.down.insert(m.id, m);
                        self.emit(Event::MemberDown(m));
                    }
                }
                OwnedNotification::Rename(old, new) => {
                    if let Some(slot) = self.active.get_mut(&old.id) {
                        *slot = new;
                        self.push_facts_to.push(new);
                    }
                    if self.down.get(&old.id) == Some(&old) {
                        self.down.remove(&old.id);
                    }
                    self.emit(Event::MemberRenamed { old, new });
                }
                OwnedNotification::Active => {
                    self.fan_out_announces = true;
                    self.emit(Event::Joined);
                }
                OwnedNotification::Idle => {
                    self.join_attempt = 0;
                    self.arm_join_retry();
                    self.emit(Event::Isolated);
                }
                OwnedNotification::Defunct => self.emit(Event::Defunct),
                OwnedNotification::Rejoin(me) => self.emit(Event::Rejoined(me)),
                OwnedNotification::ProbeFailed(_, m) => {
                    if self.active.get(&m.id) == Some(&m) {
                        self.emit(Event::MemberSuspect(m));
                    }
                }
                OwnedNotification::DataSent(_) | OwnedNotification::DataReceived(_) => {}
            }
        }
        for fact in fresh {
            if let FactBody::Leaving { bump } = fact.body
                && let Some(gone) = self.down.get(&fact.origin).copied()
                && gone.bump == bump
            {
                self.down.remove(&fact.origin);
                self.emit(Event::MemberLeft(gone));
            }
            if fact.origin != own {
                self.emit(Event::Fact(fact));
            }
        }
        if std::mem::take(&mut self.fan_out_announces) {
            self.outputs.push(Output::SetTimer {
                after: JOIN_FAN_OUT_DELAY,
                timer: TimerToken(TimerKind::FanOut),
            });
        }
        while let Some((to, data)) = self.rt.to_send() {
            let mut framed = BytesMut::with_capacity(data.len() + 1);
            framed.put_u8(FRAME_SWIM);
            framed.put_slice(&data);
            self.send(to, framed.freeze());
        }
        while let Some((after, timer)) = self.rt.to_schedule() {
            self.outputs.push(Output::SetTimer {
                after,
                timer: TimerToken(TimerKind::Swim(timer)),
            });
        }
        self.push_facts();
        // Resizing only changes counts and timeouts, which foca always accepts; an error here
        // would be a bug in `Tuning::foca_config`, and keeping the old sizing is harmless.
        let _ = self.resize();
    }

    /// Answers an announce with our active members and every fact we know (pull
    /// anti-entropy for both).
    fn send_member_sync(&mut self, to: NodeIdentity) {
        let me = self.identity();
        let facts: Vec<Vec<u8>> = lock(&self.facts)
            .facts
            .values()
            .filter(|f| f.origin != to.id)
            .filter_map(|f| f.encode().ok())
            .collect();
        if !facts.is_empty() {
            for frame in crate::wire::encode_fact_push(&me, &facts, self.tuning.max_packet_size) {
                self.send(to, frame);
            }
        }
        let members: Vec<Member<NodeIdentity>> = self
            .swim
            .iter_members()
            .filter(|m| m.id().id != to.id)
            .cloned()
            .collect();
        if members.is_empty() {
            return;
        }
        for frame in crate::wire::encode_member_sync(&me, &members, self.tuning.max_packet_size) {
            self.send(to, frame);
        }
    }

    /// A second after joining, ask a few members for their member lists: the first answer
    /// misses whoever joined at the same time (spread over the id space, deterministic).
    fn announce_to_some(&mut self) {
        let n = self.active.len();
        if n < 2 {
            return;
        }
        let me = self.identity();
        let start = usize::from(me.id.0[1]) ^ (me.bump as usize);
        let picks: Vec<NodeIdentity> = (0..JOIN_FAN_OUT.min(n))
            .filter_map(|k| self.active.values().nth((start + k * n / JOIN_FAN_OUT) % n))
            .copied()
            .collect();
        for peer in picks {
            // Announce errors only come from encoding, which cannot fail for our types.
            let _ = self.swim.announce(peer, &mut self.rt);
        }
    }

    fn push_facts(&mut self) {
        if self.push_facts_to.is_empty() {
            return;
        }
        let targets = std::mem::take(&mut self.push_facts_to);
        if self.has_left {
            return;
        }
        let encoded: Vec<Vec<u8>> = self
            .own_facts()
            .iter()
            .filter_map(|f| f.encode().ok())
            .collect();
        if encoded.is_empty() {
            return;
        }
        let me = self.identity();
        let frames = crate::wire::encode_fact_push(&me, &encoded, self.tuning.max_packet_size);
        for to in targets {
            // Only to members that are still active with that identity.
            if self.active.get(&to.id) != Some(&to) {
                continue;
            }
            for frame in &frames {
                self.send(to, frame.clone());
            }
        }
    }

    fn send(&mut self, to: NodeIdentity, data: Bytes) {
        self.stats.packets_sent += 1;
        self.stats.bytes_sent += data.len() as u64;
        self.outputs.push(Output::Send { to, data });
    }

    fn emit(&mut self, event: Event) {
        self.outputs.push(Output::Event(event));
    }
}

/// Decodes the foca header of a SWIM frame (tag included), for logs and tests.
pub fn peek_header(data: &[u8]) -> Result<Header<NodeIdentity>, Error> {
    match data.split_first() {
        Some((&FRAME_SWIM, body)) => postcard::take_from_bytes::<Header<NodeIdentity>>(body)
            .map(|(h, _)| h)
            .map_err(|e| Error::Malformed(e.to_string())),
        Some((&other, _)) => Err(Error::UnknownFrame(other)),
        None => Err(Error::EmptyPacket),
    }
}

/// Whether a SWIM message is an `Announce` (join request).
pub fn is_announce(header: &Header<NodeIdentity>) -> bool {
    header.message == Message::Announce
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use foca::{Header, Member, Message};
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::facts::{FACT_FORMAT, NodeRole};

    fn key(b: u8) -> Arc<ed25519_dalek::SigningKey> {
        Arc::new(ed25519_dalek::SigningKey::from_bytes(&[b; 32]))
    }

    fn ident(b: u8, port: u16, bump: u64) -> NodeIdentity {
        let id = NodeId(key(b).verifying_key().to_bytes());
        NodeIdentity::new(id, SocketAddr::from(([10, 0, 0, b], port)), bump)
    }

    fn node(b: u8) -> Membership {
        Membership::new(ident(b, 4747, 100), Tuning::lan(), u64::from(b), key(b))
            .expect("valid node")
    }

    /// Delivers packets between `nodes` (by address) until none is left; timers are ignored.
    fn exchange(nodes: &mut [Membership]) -> Vec<(usize, Event)> {
        let mut events = Vec::new();
        for _ in 0..50 {
            let mut packets = Vec::new();
            for (i, n) in nodes.iter_mut().enumerate() {
                for out in n.drain_outputs() {
                    match out {
                        Output::Send { to, data } => packets.push((i, to, data)),
                        Output::Event(e) => events.push((i, e)),
                        Output::SetTimer { .. } => {}
                    }
                }
            }
            if packets.is_empty() {
                return events;
            }
            for (from, to, data) in packets {
                let sender = nodes[from].identity().id;
                if let Some(dst) = nodes.iter_mut().find(|n| n.identity().addr == to.addr) {
                    dst.handle_packet(Some(sender), &data)
                        .expect("valid packet");
                }
            }
        }
        panic!("packets never stopped flowing");
    }

    fn swim_packet(
        header: &Header<NodeIdentity>,
        updates: &[Member<NodeIdentity>],
        facts: &[Vec<u8>],
    ) -> Vec<u8> {
        let mut out = vec![FRAME_SWIM];
        out.extend(postcard::to_stdvec(header).expect("encodes"));
        if !updates.is_empty() || !facts.is_empty() {
            out.extend((updates.len() as u16).to_be_bytes());
            for u in updates {
                out.extend(postcard::to_stdvec(u).expect("encodes"));
            }
        }
        for f in facts {
            out.extend((f.len() as u16).to_be_bytes());
            out.extend(f);
        }
        out
    }

    type Snapshot = (Vec<(NodeIdentity, MemberState)>, Vec<Fact>, usize);

    fn snapshot(m: &Membership) -> Snapshot {
        let mut state = m.membership_state();
        state.sort_by_key(|(i, _)| i.id);
        (state, m.facts(), m.num_members())
    }

    fn joined_pair() -> (Membership, Membership) {
        let mut nodes = vec![node(1), node(2)];
        let a_addr = nodes[0].identity().addr;
        nodes[1].join(a_addr).expect("join");
        let events = exchange(&mut nodes);
        assert!(events.contains(&(0, Event::MemberUp(nodes[1].identity()))));
        assert!(events.contains(&(1, Event::MemberUp(nodes[0].identity()))));
        assert!(events.contains(&(1, Event::Joined)));
        let b = nodes.pop().expect("two nodes");
        let a = nodes.pop().expect("two nodes");
        (a, b)
    }

    /// A role fact of node `b` (the one of `ident(b, ..)`), signed with its key.
    fn role_fact(b: u8, seq: u64) -> Vec<u8> {
        Fact::signed(
            ident(b, 4747, 100).id,
            FactVersion { bump: 100, seq },
            FactBody::Role(NodeRole::Worker),
            key(b).as_ref(),
        )
        .and_then(|f| f.encode())
        .expect("encodes")
    }

    #[test]
    fn new_rejects_nil_ids_and_bad_tuning() {
        let nil = NodeIdentity::bootstrap(SocketAddr::from(([10, 0, 0, 1], 1)));
        assert!(matches!(
            Membership::new(nil, Tuning::lan(), 1, key(1)),
            Err(Error::InvalidIdentity(_))
        ));
        let mut t = Tuning::lan();
        t.max_packet_size = 1500;
        assert!(matches!(
            Membership::new(ident(1, 1, 1), t, 1, key(1)),
            Err(Error::InvalidTuning(_))
        ));
        // The signer must hold the node id's key.
        let me = ident(1, 1, 1);
        assert!(matches!(
            Membership::new(me, Tuning::lan(), 1, key(2)),
            Err(Error::SignerMismatch(id)) if id == me.id
        ));
        let mut a = node(1);
        let own = a.identity().addr;
        assert!(a.join(own).is_err());
    }

    #[test]
    fn membership_can_move_between_threads() {
        fn assert_send<T: Send + 'static>() {}
        assert_send::<Membership>();
        assert_send::<Output>();
    }

    #[test]
    fn two_nodes_join_by_address() {
        let (a, b) = joined_pair();
        assert_eq!(a.member(&b.identity().id), Some(&b.identity()));
        assert_eq!(b.member(&a.identity().id), Some(&a.identity()));
        assert_eq!(a.num_members(), 1);
    }

    #[test]
    fn facts_travel_and_newest_wins() {
        let (a, b) = joined_pair();
        let mut nodes = vec![a, b];
        let first = nodes[0]
            .publish(FactBody::Role(NodeRole::Manager))
            .expect("publish");
        let hint = FactBody::LeaderHint {
            term: 3,
            leader: Some(nodes[0].identity().id),
        };
        let second = nodes[0].publish(hint.clone()).expect("publish");
        let newer_role = nodes[0]
            .publish(FactBody::Role(NodeRole::Worker))
            .expect("publish");
        assert!(newer_role.version > first.version);
        // Trigger a message from a to b: b pings nobody without timers, so have b announce.
        let a_id = nodes[0].identity();
        nodes[1].join_member(a_id).expect("announce");
        let events = exchange(&mut nodes);
        let got: Vec<&Fact> = events
            .iter()
            .filter_map(|(i, e)| match e {
                Event::Fact(f) if *i == 1 => Some(f),
                _ => None,
            })
            .collect();
        assert!(got.contains(&&second));
        assert!(
            !got.iter().any(|f| **f == first),
            "the invalidated fact is not sent"
        );
        let b = &nodes[1];
        assert_eq!(
            b.fact(&a_id.id, FactKind::Role).map(|f| f.body),
            Some(FactBody::Role(NodeRole::Worker))
        );
        assert_eq!(
            b.fact(&a_id.id, FactKind::LeaderHint).map(|f| f.body),
            Some(hint)
        );
        // Own facts are not reported as events to ourselves.
        assert!(
            !events
                .iter()
                .any(|(i, e)| *i == 0 && matches!(e, Event::Fact(_)))
        );
    }

    #[test]
    fn malformed_packets_are_errors_and_change_nothing() {
        let (mut a, b) = joined_pair();
        let me = a.identity();
        let bi = b.identity();
        let c = ident(3, 4747, 100);
        a.drain_outputs();
        let gossip = |src: NodeIdentity, message: Message<NodeIdentity>| Header {
            src,
            src_incarnation: 0,
            dst: me,
            message,
        };
        let good_fact = role_fact(2, 1);
        let mut bad_fact = good_fact.clone();
        let role_at = bad_fact.len() - 65; // the last byte before the signature
        bad_fact[role_at] = 0xff; // role variant out of range
        let nil_member = Member::alive(NodeIdentity::bootstrap(c.addr));
        let valid = swim_packet(
            &gossip(bi, Message::Gossip),
            &[Member::alive(c)],
            std::slice::from_ref(&good_fact),
        );

        let mut bad_len = swim_packet(&gossip(bi, Message::Gossip), &[Member::alive(c)], &[]);
        bad_len.extend([0x00, 0x40, 1, 2, 3]);
        let mut zero_len = swim_packet(&gossip(bi, Message::Gossip), &[Member::alive(c)], &[]);
        zero_len.extend([0x00, 0x00, 0x01]);
        let mut one_trailing = swim_packet(&gossip(bi, Message::Gossip), &[], &[]);
        one_trailing.push(0);
        let mut announce_trailing = swim_packet(&gossip(bi, Message::Announce), &[], &[]);
        announce_trailing.extend([0, 0]);
        let mut truncated_push = vec![FRAME_FACTS];
        truncated_push.extend(postcard::to_stdvec(&bi).expect("encodes"));
        let pushed = role_fact(3, 1);
        truncated_push.extend((pushed.len() as u16).to_be_bytes());
        truncated_push.extend(&pushed[..pushed.len() - 1]);
        let sync_frame = crate::wire::encode_member_sync(&bi, &[Member::alive(c)], 1100)
            .pop()
            .expect("one frame")
            .to_vec();
        let mut sync_trailing = sync_frame.clone();
        sync_trailing.push(0);
        let sync_nil =
            crate::wire::encode_member_sync(&bi, std::slice::from_ref(&nil_member), 1100)
                .pop()
                .expect("one frame")
                .to_vec();
        let mut bad_item_push = vec![FRAME_FACTS];
        bad_item_push.extend(postcard::to_stdvec(&bi).expect("encodes"));
        bad_item_push.extend((pushed.len() as u16).to_be_bytes());
        bad_item_push.extend(&pushed);
        bad_item_push.extend([0x00, 0x02, FACT_FORMAT, 0xff]);
        let mut empty_push = vec![FRAME_FACTS];
        empty_push.extend(postcard::to_stdvec(&bi).expect("encodes"));

        let cases: Vec<(&str, Option<NodeId>, Vec<u8>)> = vec![
            ("empty", None, vec![]),
            ("unknown tag", None, vec![0x00, 1, 2, 3]),
            ("too big", None, vec![FRAME_SWIM; MAX_PACKET_FOR_TEST + 1]),
            (
                "garbage header",
                None,
                vec![FRAME_SWIM, 0xff, 0xff, 0xff, 0xff],
            ),
            ("truncated", None, valid[..valid.len() - 3].to_vec()),
            (
                "bad fact after valid updates",
                None,
                swim_packet(
                    &gossip(bi, Message::Gossip),
                    &[Member::alive(c)],
                    &[bad_fact],
                ),
            ),
            ("bad broadcast length", None, bad_len),
            ("zero broadcast length", None, zero_len),
            ("one trailing byte", None, one_trailing),
            ("announce with payload", None, announce_trailing),
            (
                "nil sender",
                None,
                swim_packet(
                    &gossip(NodeIdentity::bootstrap(bi.addr), Message::Gossip),
                    &[],
                    &[],
                ),
            ),
            ("spoofed sender", Some(c.id), valid.clone()),
            (
                "from ourselves",
                None,
                swim_packet(
                    &gossip(ident(1, 9999, 7), Message::Gossip),
                    &[Member::alive(c)],
                    &[],
                ),
            ),
            (
                "nil id in update",
                None,
                swim_packet(&gossip(bi, Message::Gossip), &[nil_member], &[]),
            ),
            (
                "ping-req about ourselves",
                None,
                swim_packet(
                    &gossip(
                        bi,
                        Message::PingReq {
                            target: me,
                            probe_number: 1,
                        },
                    ),
                    &[Member::alive(c)],
                    &[],
                ),
            ),
            ("truncated fact push", None, truncated_push),
            (
                "truncated member sync",
                None,
                sync_frame[..sync_frame.len() - 2].to_vec(),
            ),
            ("member sync with trailing byte", None, sync_trailing),
            ("member sync with a nil id", None, sync_nil),
            ("fact push with one bad item", None, bad_item_push),
            ("empty fact push", None, empty_push),
        ];
        for (name, from, data) in cases {
            let before = snapshot(&a);
            let stats = a.stats();
            let result = a.handle_packet(from, &data);
            assert!(result.is_err(), "{name}: accepted");
            assert_eq!(snapshot(&a), before, "{name}: state changed");
            assert!(a.drain_outputs().is_empty(), "{name}: produced outputs");
            assert_eq!(a.stats().packets_rejected, stats.packets_rejected + 1);
        }
        // The well-formed versions are accepted and applied.
        a.handle_packet(Some(bi.id), &sync_frame)
            .expect("valid sync");
        assert_eq!(a.member(&c.id), Some(&c));
        let mut push = vec![FRAME_FACTS];
        push.extend(postcard::to_stdvec(&bi).expect("encodes"));
        for f in [role_fact(3, 4), role_fact(1, 9)] {
            push.extend((f.len() as u16).to_be_bytes());
            push.extend(f);
        }
        a.handle_packet(Some(bi.id), &push).expect("valid push");
        assert_eq!(
            a.fact(&c.id, FactKind::Role).map(|f| f.version.seq),
            Some(4)
        );
        assert_eq!(
            a.fact(&me.id, FactKind::Role),
            None,
            "facts about us come from us only"
        );
        a.handle_packet(Some(bi.id), &valid).expect("valid packet");
        assert_eq!(a.member(&c.id), Some(&c));
        assert_eq!(
            a.fact(&bi.id, FactKind::Role).map(|f| f.version.seq),
            Some(1)
        );
    }

    /// A fact of node `origin` signed with the key of node `signer`.
    fn fact_signed_by(origin: u8, signer: u8, seq: u64, body: FactBody) -> Fact {
        Fact::signed(
            ident(origin, 4747, 100).id,
            FactVersion { bump: 100, seq },
            body,
            key(signer).as_ref(),
        )
        .expect("signs")
    }

    #[test]
    fn issue_14_packet_speaking_as_another_member_is_refused() {
        let (mut a, b) = joined_pair();
        let me = a.identity();
        let bi = b.identity();
        let c = ident(3, 4747, 100);
        a.drain_outputs();
        // Member c (authenticated by its certificate) sends packets that claim to be b's.
        let swim = swim_packet(
            &Header {
                src: bi,
                src_incarnation: 0,
                dst: me,
                message: Message::Gossip,
            },
            &[Member::alive(c)],
            &[role_fact(2, 1)],
        );
        let members = crate::wire::encode_member_sync(&bi, &[Member::alive(c)], 1100)
            .pop()
            .expect("one frame")
            .to_vec();
        let push = crate::wire::encode_fact_push(&bi, &[role_fact(2, 2)], 1100)
            .pop()
            .expect("one frame")
            .to_vec();
        for (name, data) in [
            ("swim", &swim),
            ("member sync", &members),
            ("fact push", &push),
        ] {
            let before = snapshot(&a);
            let result = a.handle_packet(Some(c.id), data);
            assert!(
                matches!(result, Err(Error::SpoofedSender { claimed, peer }) if claimed == bi.id && peer == c.id),
                "{name}: {result:?}"
            );
            assert_eq!(snapshot(&a), before, "{name}: state changed");
            assert!(a.drain_outputs().is_empty(), "{name}: produced outputs");
        }
        assert_eq!(a.stats().packets_rejected, 3);
        // The same packets from b itself are accepted.
        for data in [&swim, &members, &push] {
            a.handle_packet(Some(bi.id), data).expect("b speaks for b");
        }
        assert_eq!(a.member(&c.id), Some(&c));
        assert_eq!(
            a.fact(&bi.id, FactKind::Role).map(|f| f.version.seq),
            Some(2)
        );
    }

    #[test]
    fn issue_14_forged_facts_in_accepted_packets_are_dropped() {
        let (mut a, b) = joined_pair();
        let me = a.identity();
        let bi = b.identity();
        let c = ident(3, 4747, 100);
        a.drain_outputs();
        let genuine = fact_signed_by(3, 3, 1, FactBody::Role(NodeRole::Worker));
        let hint = FactBody::LeaderHint {
            term: 99,
            leader: Some(bi.id),
        };
        let by_b = fact_signed_by(3, 2, 5, hint.clone());
        let replayed = Fact {
            version: FactVersion { bump: 100, seq: 6 },
            body: hint.clone(),
            ..genuine
        };
        let unsigned = Fact {
            signature: crate::facts::FactSignature([0; 64]),
            ..fact_signed_by(3, 3, 7, hint)
        };
        let forged = [&by_b, &replayed, &unsigned];
        let items = |facts: &[&Fact]| -> Vec<Vec<u8>> {
            facts.iter().map(|f| f.encode().expect("encodes")).collect()
        };
        // Relayed by b in a SWIM packet, next to a genuine fact: the packet is accepted, the
        // genuine fact kept, the forged ones dropped.
        let mut with_genuine = items(&forged);
        with_genuine.insert(1, genuine.encode().expect("encodes"));
        let gossip = |facts: &[Vec<u8>]| {
            swim_packet(
                &Header {
                    src: bi,
                    src_incarnation: 0,
                    dst: me,
                    message: Message::Gossip,
                },
                &[],
                facts,
            )
        };
        a.handle_packet(Some(bi.id), &gossip(&with_genuine))
            .expect("accepted");
        assert_eq!(a.stats().forged_facts, 3);
        assert_eq!(a.facts(), vec![genuine.clone()]);
        let events: Vec<Output> = a.drain_outputs();
        assert!(
            events.contains(&Output::Event(Event::Fact(genuine.clone()))),
            "{events:?}"
        );
        assert_eq!(
            events
                .iter()
                .filter(|o| matches!(o, Output::Event(Event::Fact(_))))
                .count(),
            1
        );
        // Pushed by b: same.
        let push = crate::wire::encode_fact_push(&bi, &items(&forged), 1100)
            .pop()
            .expect("one frame");
        a.handle_packet(Some(bi.id), &push).expect("accepted");
        assert_eq!(a.stats().forged_facts, 6);
        assert_eq!(a.facts(), vec![genuine.clone()]);
        assert_eq!(a.fact(&c.id, FactKind::LeaderHint), None);
        assert_eq!(a.stats().packets_rejected, 0);
        // What a relays afterwards holds the genuine fact only.
        let mut nodes = vec![a, b];
        let a_id = nodes[0].identity();
        nodes[1].join_member(a_id).expect("announce");
        exchange(&mut nodes);
        assert_eq!(nodes[1].fact(&c.id, FactKind::Role), Some(genuine));
        assert_eq!(nodes[1].fact(&c.id, FactKind::LeaderHint), None);
        assert_eq!(
            nodes[1].stats().forged_facts,
            0,
            "nothing forged was relayed"
        );
    }

    const MAX_PACKET_FOR_TEST: usize = crate::tuning::MAX_DATAGRAM;

    #[test]
    fn random_and_mutated_packets_never_panic_nor_half_apply() {
        let (mut a, b) = joined_pair();
        let bi = b.identity();
        let me = a.identity();
        a.drain_outputs();
        let header = Header {
            src: bi,
            src_incarnation: 0,
            dst: me,
            message: Message::Gossip,
        };
        let updates: Vec<_> = (3..10).map(|i| Member::alive(ident(i, 4747, 5))).collect();
        let valid = swim_packet(&header, &updates, &[role_fact(2, 1), role_fact(2, 2)]);
        let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(7);
        let (mut rejected, mut accepted) = (0u32, 0u32);
        for round in 0..4000 {
            let data: Vec<u8> = if round % 2 == 0 {
                let len = rng.random_range(0..300);
                let mut d: Vec<u8> = (0..len).map(|_| rng.random()).collect();
                if let Some(first) = d.first_mut() {
                    *first = [FRAME_SWIM, FRAME_FACTS, FRAME_MEMBERS, rng.random()]
                        [rng.random_range(0..4)];
                }
                d
            } else {
                let mut d = valid.clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(1..d.len());
                    d[at] = rng.random();
                }
                d.truncate(rng.random_range(1..=d.len()));
                d
            };
            let before = snapshot(&a);
            match a.handle_packet(Some(bi.id), &data) {
                Err(_) => {
                    rejected += 1;
                    assert_eq!(
                        snapshot(&a),
                        before,
                        "rejected packet changed state: {data:?}"
                    );
                    assert!(a.drain_outputs().is_empty());
                }
                Ok(()) => {
                    accepted += 1;
                    a.drain_outputs();
                }
            }
        }
        assert!(rejected > 3000, "most garbage is refused ({rejected})");
        assert!(accepted > 0, "some mutations stay valid ({accepted})");
    }

    #[test]
    fn header_codec_roundtrip_and_peek() {
        let src = NodeIdentity::new(
            NodeId([9; 32]),
            "[2001:db8::7]:4747".parse().expect("addr"),
            u64::MAX,
        );
        let header = Header {
            src,
            src_incarnation: 3,
            dst: NodeIdentity::bootstrap("10.1.2.3:1".parse().expect("addr")),
            message: Message::Announce,
        };
        let data = swim_packet(&header, &[], &[]);
        assert!(data.len() < 120, "identities stay small: {}", data.len());
        let back = peek_header(&data).expect("decodes");
        assert_eq!(back, header);
        assert!(is_announce(&back));
        assert!(matches!(peek_header(&[]), Err(Error::EmptyPacket)));
        assert!(matches!(peek_header(&[1, 2]), Err(Error::UnknownFrame(1))));
    }

    #[test]
    fn timers_and_resizing() {
        let mut a = node(1);
        let outs = a.drain_outputs();
        assert!(matches!(
            outs.as_slice(),
            [Output::SetTimer { timer, .. }] if timer.kind_code() == 7
        ));
        a.set_cluster_size(500).expect("resize");
        assert_eq!(a.sized_for(), 500);
        a.set_cluster_size(1).expect("resize");
        assert_eq!(a.sized_for(), 1);
        // A join request arms a retry timer and sends a bootstrap announce.
        a.join(SocketAddr::from(([10, 0, 0, 2], 4747)))
            .expect("join");
        let outs = a.drain_outputs();
        let kinds: BTreeMap<u8, usize> = outs.iter().fold(BTreeMap::new(), |mut m, o| {
            if let Output::SetTimer { timer, .. } = o {
                *m.entry(timer.kind_code()).or_default() += 1;
            }
            m
        });
        assert_eq!(kinds.get(&8), Some(&1), "join retry armed: {outs:?}");
        let sent: Vec<_> = outs
            .iter()
            .filter_map(|o| match o {
                Output::Send { to, data } => Some((to, data)),
                _ => None,
            })
            .collect();
        assert_eq!(sent.len(), 1);
        assert!(sent[0].0.id.is_nil());
        assert!(is_announce(&peek_header(sent[0].1).expect("swim frame")));
        // Firing the retry while still alone re-sends the announce and re-arms.
        let retry = outs
            .into_iter()
            .find_map(|o| match o {
                Output::SetTimer { timer, .. } if timer.kind_code() == 8 => Some(timer),
                _ => None,
            })
            .expect("retry timer");
        a.handle_timer(retry).expect("timer");
        let outs = a.drain_outputs();
        assert_eq!(
            outs.iter()
                .filter(|o| matches!(o, Output::Send { .. }))
                .count(),
            1
        );
        assert!(outs.iter().any(|o| matches!(o, Output::SetTimer { after, timer } if timer.kind_code() == 8 && *after == Duration::from_secs(1))));
    }

    #[test]
    fn leave_is_reported_as_left() {
        let (a, b) = joined_pair();
        let mut nodes = vec![a, b];
        let b_ident = nodes[1].identity();
        nodes[1].leave().expect("leave");
        assert!(nodes[1].has_left());
        let events = exchange(&mut nodes);
        assert!(
            events.contains(&(0, Event::MemberLeft(b_ident))),
            "{events:?}"
        );
        assert!(!events.contains(&(0, Event::MemberDown(b_ident))));
        assert!(events.contains(&(1, Event::Defunct)));
        assert_eq!(nodes[0].num_members(), 0);
    }

    #[test]
    fn address_change_renames_the_same_node() {
        let (a, b) = joined_pair();
        let mut nodes = vec![a, b];
        let old = nodes[1].identity();
        let new = nodes[1]
            .set_advertise_addr(SocketAddr::from(([10, 9, 9, 9], 4747)))
            .expect("moved");
        assert_eq!(new.id, old.id);
        assert_eq!(new.bump, old.bump + 1);
        let events = exchange(&mut nodes);
        assert!(
            events.contains(&(0, Event::MemberRenamed { old, new })),
            "{events:?}"
        );
        assert!(
            !events
                .iter()
                .any(|(i, e)| *i == 0 && matches!(e, Event::MemberDown(_)))
        );
        assert_eq!(nodes[0].member(&old.id), Some(&new));
        assert_eq!(nodes[0].num_members(), 1);
    }
}
