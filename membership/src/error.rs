//! Errors of the membership seam.

use crate::facts::FactError;
use crate::identity::NodeId;

/// What went wrong. Unless a variant says otherwise, the call changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The packet is empty.
    #[error("empty packet")]
    EmptyPacket,
    /// The packet exceeds the configured maximum size.
    #[error("packet of {len} bytes exceeds the {max}-byte limit")]
    TooBig {
        /// Size received.
        len: usize,
        /// Configured limit.
        max: usize,
    },
    /// The first byte is not a known frame tag.
    #[error("unknown frame tag {0:#04x}")]
    UnknownFrame(u8),
    /// The packet does not decode, or is inconsistent.
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// A fact inside the packet is malformed.
    #[error("malformed fact: {0}")]
    Fact(#[from] FactError),
    /// The packet claims to come from another node than the authenticated peer.
    #[error("packet claims to come from {claimed} but the peer is {peer}")]
    SpoofedSender {
        /// Sender named in the packet.
        claimed: NodeId,
        /// Authenticated peer it arrived from.
        peer: NodeId,
    },
    /// The packet claims to come from this node (a stale packet from a previous boot, or a
    /// loop).
    #[error("packet from this node's own id")]
    FromOurselves,
    /// The identity given is unusable (nil id, or joining ourselves).
    #[error("invalid identity: {0}")]
    InvalidIdentity(&'static str),
    /// The fact signer given to [`crate::Membership::new`] does not hold the node id's key.
    #[error("the fact signer does not hold the private key of node id {0}")]
    SignerMismatch(NodeId),
    /// The tuning is invalid.
    #[error("invalid tuning: {0}")]
    InvalidTuning(&'static str),
    /// foca reported an error. For a packet or timer this may have left partial state changes
    /// (foca's own error docs say which); packets are fully validated before reaching foca, so
    /// this is not expected from network input.
    #[error("swim: {0}")]
    Swim(#[from] foca::Error),
}
