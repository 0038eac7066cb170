//! Node identity as seen by SWIM: the node key, the advertise address and a per-boot bump.

use std::fmt;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// A node's identifier: the 32 bytes of its ed25519 public key.
///
/// The all-zero value is the *nil* id: it stands for "a node whose key is not known yet" and is
/// only ever used to bootstrap by address (see [`NodeAddr`]). It is also the `Default`.
#[derive(Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub [u8; 32]);

impl NodeId {
    /// The nil id (all zeroes): a placeholder for a node known only by its address.
    pub const NIL: NodeId = NodeId([0; 32]);

    /// Whether this is the nil id.
    pub fn is_nil(&self) -> bool {
        self.0 == [0; 32]
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex of the first 6 bytes, for logs.
    pub fn short(&self) -> String {
        self.0[..6].iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl From<[u8; 32]> for NodeId {
    fn from(bytes: [u8; 32]) -> Self {
        NodeId(bytes)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

/// The identity a node gossips under: who it is, where to reach it, and which boot of it this is.
///
/// Two identities with the same [`NodeId`] are the same node. A higher `bump` wins over a lower
/// one, which is how a restart ("per-boot incarnation") or an address change replaces the
/// previous identity everywhere instead of appearing as a new member.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The node's public key bytes (nil while unknown, during bootstrap only).
    pub id: NodeId,
    /// The address peers send to (the node's advertise address).
    pub addr: SocketAddr,
    /// Per-boot counter: pick a fresh, larger value on every start (boot time in nanoseconds is
    /// a good choice). Renewal after being declared down adds one.
    pub bump: u64,
}

impl NodeIdentity {
    /// A new identity.
    pub fn new(id: NodeId, addr: SocketAddr, bump: u64) -> Self {
        NodeIdentity { id, addr, bump }
    }

    /// A placeholder identity for a node known only by its address: nil id, bump 0.
    ///
    /// SWIM accepts an `Announce` addressed to it because [`NodeAddr`] compares by socket
    /// address when either side's id is nil.
    pub fn bootstrap(addr: SocketAddr) -> Self {
        NodeIdentity {
            id: NodeId::NIL,
            addr,
            bump: 0,
        }
    }

    /// The SWIM slot of this identity (see [`NodeAddr`]).
    pub fn node_addr(&self) -> NodeAddr {
        NodeAddr {
            id: self.id,
            addr: self.addr,
        }
    }
}

impl fmt::Debug for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}#{}", self.id.short(), self.addr, self.bump)
    }
}

impl fmt::Display for NodeIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The unique SWIM slot of an identity: foca keeps one member per `NodeAddr`.
///
/// Equality compares the ids when both are known and falls back to the socket address when
/// either id is nil. So an address change of a known node stays in the same slot (it is an
/// update, not a new member), while a joiner that only knows `ip:port` can still address a node.
/// This relation is deliberately not transitive, hence no `Eq`.
#[derive(Clone, Copy, Debug)]
pub struct NodeAddr {
    /// The node id (may be nil).
    pub id: NodeId,
    /// The socket address.
    pub addr: SocketAddr,
}

impl PartialEq for NodeAddr {
    fn eq(&self, other: &Self) -> bool {
        if self.id.is_nil() || other.id.is_nil() {
            self.addr == other.addr
        } else {
            self.id == other.id
        }
    }
}

impl foca::Identity for NodeIdentity {
    type Addr = NodeAddr;

    fn renew(&self) -> Option<Self> {
        if self.id.is_nil() {
            return None;
        }
        self.bump
            .checked_add(1)
            .map(|bump| NodeIdentity { bump, ..*self })
    }

    fn addr(&self) -> NodeAddr {
        self.node_addr()
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        // Higher bump wins; the address breaks ties so that exactly one side wins.
        (self.bump, self.addr) > (adversary.bump, adversary.addr)
    }
}

#[cfg(test)]
mod tests {
    use foca::Identity;

    use super::*;

    fn id(b: u8) -> NodeId {
        let mut k = [0u8; 32];
        k[0] = b;
        NodeId(k)
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().expect("valid socket address")
    }

    #[test]
    fn addr_compares_by_id_when_both_known() {
        let a = NodeIdentity::new(id(1), sa("10.0.0.1:4747"), 5);
        let moved = NodeIdentity::new(id(1), sa("10.0.0.9:4747"), 6);
        let other = NodeIdentity::new(id(2), sa("10.0.0.1:4747"), 5);
        assert!(a.addr() == moved.addr(), "same key, new address: same slot");
        assert!(
            a.addr() != other.addr(),
            "different keys never share a slot"
        );
    }

    #[test]
    fn addr_compares_by_socket_when_id_nil() {
        let a = NodeIdentity::new(id(1), sa("10.0.0.1:4747"), 5);
        let boot = NodeIdentity::bootstrap(sa("10.0.0.1:4747"));
        let boot_other = NodeIdentity::bootstrap(sa("10.0.0.2:4747"));
        assert!(a.addr() == boot.addr());
        assert!(boot.addr() == a.addr());
        assert!(a.addr() != boot_other.addr());
        assert_ne!(a, boot, "identities themselves still differ");
    }

    #[test]
    fn renew_bumps_and_wins() {
        let a = NodeIdentity::new(id(1), sa("10.0.0.1:4747"), 41);
        let r = a.renew().expect("known ids renew");
        assert_eq!(r.bump, 42);
        assert_eq!(r.id, a.id);
        assert_eq!(r.addr, a.addr);
        assert!(r.win_addr_conflict(&a));
        assert!(!a.win_addr_conflict(&r));
        assert_eq!(NodeIdentity::bootstrap(a.addr).renew(), None);
        let maxed = NodeIdentity::new(id(1), a.addr, u64::MAX);
        assert_eq!(maxed.renew(), None, "no wrap-around to a losing bump");
    }

    #[test]
    fn conflict_is_antisymmetric_on_ties() {
        let a = NodeIdentity::new(id(1), sa("10.0.0.1:4747"), 7);
        let b = NodeIdentity::new(id(1), sa("10.0.0.2:4747"), 7);
        assert_ne!(a.win_addr_conflict(&b), b.win_addr_conflict(&a));
    }

    #[test]
    fn display_is_hex() {
        let mut k = [0u8; 32];
        k[0] = 0xab;
        k[31] = 0x01;
        let s = NodeId(k).to_string();
        assert_eq!(s.len(), 64);
        assert!(s.starts_with("ab00"));
        assert!(s.ends_with("01"));
        assert!(NodeId::NIL.is_nil());
        assert!(!NodeId(k).is_nil());
    }
}
