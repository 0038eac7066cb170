//! SWIM membership for Shoal: [foca](https://docs.rs/foca) behind a packet seam, plus an
//! in-memory network simulator.
//!
//! - [`Membership`] is one node's membership. It does no I/O and reads no clock: the caller
//!   feeds it datagrams, timer firings and commands, and carries out the [`Output`]s (send a
//!   datagram, set a timer, report an [`Event`]).
//! - [`NodeIdentity`] is who a node is (its key), where it is (advertise address) and which boot
//!   it is (bump). Same key = same node: an address change or a restart renames the member.
//! - [`Tuning::lan`] is the failure-detection profile, sized by cluster size.
//! - Cluster [`Fact`]s (role, advertise address, leader hint, leave notice) ride SWIM custom
//!   broadcasts; newest version wins. Each is signed by its origin's ed25519 key (the
//!   [`NodeId`]) through a [`FactSigner`]; a fact whose signature does not verify is dropped
//!   (counted in [`Stats::forged_facts`]), so a member cannot speak for another one.
//! - [`sim`] runs hundreds of nodes on a virtual network with loss, delay, partitions, kills
//!   and restarts, deterministically from a seed.
//!
//! # Driving a node
//!
//! ```text
//! let signer: Arc<dyn FactSigner> = Arc::new(signing_key);   // holds the private half of `key`
//! let mut m = Membership::new(NodeIdentity::new(key, advertise, boot_nanos), Tuning::lan(), seed, signer)?;
//! m.publish(FactBody::Role(NodeRole::Worker))?;
//! m.join(seed_addr)?;                              // retried with backoff until answered
//! loop {
//!     for out in m.drain_outputs() {
//!         match out {
//!             Output::Send { to, data } => /* QUIC datagram to to.addr; check to.id if not nil */,
//!             Output::SetTimer { after, timer } => /* after `after`, call m.handle_timer(timer) */,
//!             Output::Event(e) => /* MemberUp / MemberDown / MemberLeft / MemberRenamed / Fact … */,
//!         }
//!     }
//!     // wait for: a datagram -> m.handle_packet(Some(peer_key), &bytes)
//!     //           a timer    -> m.handle_timer(token)
//!     //           a command  -> m.publish(..) / m.set_advertise_addr(..) / m.set_cluster_size(..) / m.leave()
//! }
//! ```
//!
//! Never await a send or a dial inside that loop, and deliver every timer, even late.
//!
//! # Wire
//!
//! Each datagram starts with a frame tag: [`FRAME_SWIM`] (a foca packet, postcard-encoded, with
//! facts as custom broadcasts), [`FRAME_MEMBERS`] (the sender's active members, sent in answer
//! to every announce) or [`FRAME_FACTS`] (the sender's own facts, pushed to a member that just
//! came up). Datagrams never exceed [`Tuning::max_packet_size`] (≤ [`MAX_DATAGRAM`] = 1100).
//! A received datagram is validated in full before it touches any state.

#![warn(missing_docs)]

mod error;
mod facts;
mod identity;
mod membership;
pub mod sim;
mod tuning;
mod wire;

pub use error::Error;
pub use facts::{
    FACT_FORMAT, Fact, FactBody, FactError, FactKey, FactKind, FactSignature, FactSigner,
    FactVersion, MAX_APP_FACT_LEN, MAX_FACT_LEN, NodeRole,
};
pub use identity::{NodeAddr, NodeId, NodeIdentity};
pub use membership::{
    Event, FRAME_FACTS, FRAME_MEMBERS, FRAME_SWIM, MemberState, Membership, Output, Stats,
    TimerToken, is_announce, peek_header,
};
pub use tuning::{MAX_DATAGRAM, Tuning};

/// foca types that appear in this crate's API (packet headers, for logs and tests).
pub use foca::{Header, Message};
