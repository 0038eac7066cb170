//! Small cluster facts (role, advertise address, leader hint, …) spread by SWIM custom broadcasts.
//!
//! Every fact is about the node that published it (its *origin*) and has a kind; for each
//! `(origin, kind)` the newest [`FactVersion`] wins, both in each node's store and in foca's
//! dissemination backlog (through [`foca::Invalidates`]).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::identity::{NodeId, NodeIdentity};

/// Wire format version of an encoded fact (first byte of every item).
pub const FACT_FORMAT: u8 = 1;

/// Largest encoded fact accepted or produced, in bytes.
pub const MAX_FACT_LEN: usize = 300;

/// Largest payload of an [`FactBody::App`] fact, in bytes.
pub const MAX_APP_FACT_LEN: usize = 200;

/// A node's role in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NodeRole {
    /// A Raft voter.
    Manager,
    /// Runs tasks only.
    Worker,
}

/// What a fact says. Append new variants at the end only (postcard encodes the variant index).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FactBody {
    /// The origin's role.
    Role(NodeRole),
    /// The origin's advertise address (as configured, which may differ from the SWIM address
    /// during an address change).
    AdvertiseAddr(SocketAddr),
    /// Who the origin believes the Raft leader is, at which term.
    LeaderHint {
        /// Raft term of the belief.
        term: u64,
        /// The leader's node id, if one is known.
        leader: Option<NodeId>,
    },
    /// The origin is leaving the cluster on purpose (sent just before SWIM's leave), for the
    /// boot identified by `bump`. Lets peers tell a clean leave from a crash.
    Leaving {
        /// The bump of the identity that leaves.
        bump: u64,
    },
    /// An application-defined small fact, keyed by `tag` (at most [`MAX_APP_FACT_LEN`] bytes).
    App {
        /// Application tag: facts with distinct tags are independent.
        tag: u16,
        /// Opaque payload.
        data: Vec<u8>,
    },
}

impl FactBody {
    /// The kind of this fact; newest version wins per `(origin, kind)`.
    pub fn kind(&self) -> FactKind {
        match self {
            FactBody::Role(_) => FactKind::Role,
            FactBody::AdvertiseAddr(_) => FactKind::AdvertiseAddr,
            FactBody::LeaderHint { .. } => FactKind::LeaderHint,
            FactBody::Leaving { .. } => FactKind::Leaving,
            FactBody::App { tag, .. } => FactKind::App(*tag),
        }
    }
}

/// The kind of a fact (see [`FactBody::kind`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum FactKind {
    /// [`FactBody::Role`]
    Role,
    /// [`FactBody::AdvertiseAddr`]
    AdvertiseAddr,
    /// [`FactBody::LeaderHint`]
    LeaderHint,
    /// [`FactBody::Leaving`]
    Leaving,
    /// [`FactBody::App`] with this tag.
    App(u16),
}

/// Version of a fact: ordered by the origin's boot bump, then by a per-boot sequence number, so
/// a restarted node's facts replace those of its previous boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FactVersion {
    /// The origin's bump when it published the fact.
    pub bump: u64,
    /// Sequence number within that boot.
    pub seq: u64,
}

/// One cluster fact: `origin` says `body`, at `version`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fact {
    /// The node the fact is about, which published it.
    pub origin: NodeId,
    /// Newest wins per `(origin, kind)`.
    pub version: FactVersion,
    /// The content.
    pub body: FactBody,
}

/// Errors decoding or validating a fact.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FactError {
    /// The item is empty.
    #[error("empty fact")]
    Empty,
    /// The item exceeds [`MAX_FACT_LEN`].
    #[error("fact of {0} bytes exceeds the {MAX_FACT_LEN}-byte limit")]
    TooLarge(usize),
    /// The fact could not be decoded.
    #[error("undecodable fact: {0}")]
    Decode(String),
    /// Trailing bytes after the fact.
    #[error("{0} trailing bytes after fact")]
    Trailing(usize),
    /// The fact's origin is the nil id.
    #[error("fact with nil origin")]
    NilOrigin,
    /// An [`FactBody::App`] payload is too large.
    #[error("app fact payload of {0} bytes exceeds {MAX_APP_FACT_LEN}")]
    AppTooLarge(usize),
}

impl Fact {
    /// The kind of this fact.
    pub fn kind(&self) -> FactKind {
        self.body.kind()
    }

    /// Encodes as `[FACT_FORMAT, postcard(fact)]`.
    pub fn encode(&self) -> Result<Vec<u8>, FactError> {
        self.check()?;
        let mut out = vec![FACT_FORMAT];
        let body = postcard::to_stdvec(self).map_err(|e| FactError::Decode(e.to_string()))?;
        out.extend_from_slice(&body);
        if out.len() > MAX_FACT_LEN {
            return Err(FactError::TooLarge(out.len()));
        }
        Ok(out)
    }

    /// Decodes one item. `Ok(None)` means a newer format this node does not understand (it is
    /// ignored and not relayed, so that nodes can be upgraded one at a time).
    pub fn decode(data: &[u8]) -> Result<Option<Fact>, FactError> {
        let (&format, rest) = data.split_first().ok_or(FactError::Empty)?;
        if data.len() > MAX_FACT_LEN {
            return Err(FactError::TooLarge(data.len()));
        }
        if format > FACT_FORMAT {
            return Ok(None);
        }
        if format != FACT_FORMAT {
            return Err(FactError::Decode(format!("unknown fact format {format}")));
        }
        let (fact, trailing) = postcard::take_from_bytes::<Fact>(rest)
            .map_err(|e| FactError::Decode(e.to_string()))?;
        if !trailing.is_empty() {
            return Err(FactError::Trailing(trailing.len()));
        }
        fact.check()?;
        Ok(Some(fact))
    }

    fn check(&self) -> Result<(), FactError> {
        if self.origin.is_nil() {
            return Err(FactError::NilOrigin);
        }
        if let FactBody::App { data, .. } = &self.body
            && data.len() > MAX_APP_FACT_LEN
        {
            return Err(FactError::AppTooLarge(data.len()));
        }
        Ok(())
    }
}

/// The dissemination key of a fact: a newer version of the same `(origin, kind)` evicts older
/// ones still waiting in foca's backlog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FactKey {
    /// Origin of the fact.
    pub origin: NodeId,
    /// Kind of the fact.
    pub kind: FactKind,
    /// Version of the fact.
    pub version: FactVersion,
}

impl foca::Invalidates for FactKey {
    fn invalidates(&self, other: &Self) -> bool {
        self.origin == other.origin && self.kind == other.kind && self.version >= other.version
    }
}

/// The facts a node knows: the newest per `(origin, kind)`.
#[derive(Debug, Default)]
pub(crate) struct FactStore {
    pub(crate) facts: BTreeMap<(NodeId, FactKind), Fact>,
    /// Facts that became known since the last drain, in arrival order.
    pub(crate) fresh: Vec<Fact>,
    /// This node's id: facts about it are only taken from itself.
    pub(crate) own: NodeId,
}

impl FactStore {
    /// Stores `fact` if newer than what is known; returns whether it was.
    pub(crate) fn offer(&mut self, fact: Fact) -> bool {
        let key = (fact.origin, fact.kind());
        match self.facts.get(&key) {
            Some(known) if known.version >= fact.version => false,
            _ => {
                self.fresh.push(fact.clone());
                self.facts.insert(key, fact);
                true
            }
        }
    }
}

/// Shared handle to the fact store (foca owns the broadcast handler and offers no accessor).
pub(crate) type SharedFacts = Arc<Mutex<FactStore>>;

pub(crate) fn lock(store: &SharedFacts) -> MutexGuard<'_, FactStore> {
    // The store holds plain data and no invariant spans a panic; recover from poisoning.
    store
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// foca broadcast handler: decodes facts, keeps the newest, relays only what is new.
pub(crate) struct FactHandler {
    pub(crate) store: SharedFacts,
}

impl foca::BroadcastHandler<NodeIdentity> for FactHandler {
    type Key = FactKey;
    type Error = FactError;

    fn receive_item(
        &mut self,
        data: &[u8],
        sender: Option<&NodeIdentity>,
    ) -> Result<Option<FactKey>, FactError> {
        let Some(fact) = Fact::decode(data)? else {
            return Ok(None);
        };
        let key = FactKey {
            origin: fact.origin,
            kind: fact.kind(),
            version: fact.version,
        };
        let mut store = lock(&self.store);
        if fact.origin == store.own {
            if sender.is_some() {
                // About us but relayed by someone: a previous boot's fact, or our own coming
                // back. Only we speak for ourselves; do not store or relay it.
                return Ok(None);
            }
            // Our own fact, added locally: always (re)queue it for dissemination, even when the
            // same version is already stored (periodic refresh).
            store.offer(fact);
            return Ok(Some(key));
        }
        Ok(store.offer(fact).then_some(key))
    }
}

#[cfg(test)]
mod tests {
    use foca::Invalidates;

    use super::*;

    fn nid(b: u8) -> NodeId {
        let mut k = [7u8; 32];
        k[0] = b;
        NodeId(k)
    }

    fn fact(origin: u8, bump: u64, seq: u64, body: FactBody) -> Fact {
        Fact {
            origin: nid(origin),
            version: FactVersion { bump, seq },
            body,
        }
    }

    #[test]
    fn roundtrip_every_kind() {
        let bodies = [
            FactBody::Role(NodeRole::Manager),
            FactBody::AdvertiseAddr("[2001:db8::1]:4747".parse().expect("addr")),
            FactBody::LeaderHint {
                term: 9,
                leader: Some(nid(3)),
            },
            FactBody::Leaving { bump: 77 },
            FactBody::App {
                tag: 4,
                data: vec![1, 2, 3],
            },
        ];
        for body in bodies {
            let f = fact(1, 10, 2, body);
            let bytes = f.encode().expect("encodes");
            assert!(bytes.len() < 80, "facts stay small: {} bytes", bytes.len());
            assert_eq!(Fact::decode(&bytes), Ok(Some(f)));
        }
    }

    #[test]
    fn malformed_facts_are_errors() {
        let good = fact(1, 1, 1, FactBody::Role(NodeRole::Worker))
            .encode()
            .expect("encodes");
        assert_eq!(Fact::decode(&[]), Err(FactError::Empty));
        assert!(matches!(
            Fact::decode(&good[..good.len() - 1]),
            Err(FactError::Decode(_))
        ));
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(Fact::decode(&trailing), Err(FactError::Trailing(1)));
        let mut old_format = good.clone();
        old_format[0] = 0;
        assert!(matches!(
            Fact::decode(&old_format),
            Err(FactError::Decode(_))
        ));
        let mut future = good;
        future[0] = FACT_FORMAT + 1;
        assert_eq!(Fact::decode(&future), Ok(None), "newer formats are skipped");
        let nil = Fact {
            origin: NodeId::NIL,
            version: FactVersion { bump: 1, seq: 1 },
            body: FactBody::Role(NodeRole::Worker),
        };
        assert_eq!(nil.encode(), Err(FactError::NilOrigin));
        let big = fact(
            1,
            1,
            1,
            FactBody::App {
                tag: 1,
                data: vec![0; MAX_APP_FACT_LEN + 1],
            },
        );
        assert_eq!(
            big.encode(),
            Err(FactError::AppTooLarge(MAX_APP_FACT_LEN + 1))
        );
        assert_eq!(
            Fact::decode(&vec![FACT_FORMAT; MAX_FACT_LEN + 1]),
            Err(FactError::TooLarge(MAX_FACT_LEN + 1))
        );
    }

    #[test]
    fn handler_relays_only_new_facts_and_never_adopts_relayed_own_facts() {
        use foca::BroadcastHandler;
        let store: SharedFacts = Arc::new(Mutex::new(FactStore {
            own: nid(9),
            ..FactStore::default()
        }));
        let mut h = FactHandler {
            store: Arc::clone(&store),
        };
        let peer = NodeIdentity::new(nid(1), "10.0.0.1:1".parse().expect("addr"), 1);
        let theirs = fact(1, 1, 1, FactBody::Role(NodeRole::Worker));
        let bytes = theirs.encode().expect("encodes");
        assert!(matches!(h.receive_item(&bytes, Some(&peer)), Ok(Some(_))));
        assert_eq!(
            h.receive_item(&bytes, Some(&peer)),
            Ok(None),
            "not new: not relayed"
        );
        // A fact about us from a previous boot, relayed by a peer.
        let old_own = fact(9, 1, 7, FactBody::Role(NodeRole::Manager))
            .encode()
            .expect("encodes");
        assert_eq!(h.receive_item(&old_own, Some(&peer)), Ok(None));
        assert_eq!(lock(&store).facts.len(), 1);
        // Our own fact added locally is always queued, even when already known.
        let own = fact(9, 2, 0, FactBody::Role(NodeRole::Worker))
            .encode()
            .expect("encodes");
        assert!(matches!(h.receive_item(&own, None), Ok(Some(_))));
        assert!(matches!(h.receive_item(&own, None), Ok(Some(_))));
        assert_eq!(lock(&store).facts.len(), 2);
        assert!(h.receive_item(&[FACT_FORMAT, 0xff], Some(&peer)).is_err());
    }

    #[test]
    fn newest_wins_in_store_and_backlog() {
        let mut store = FactStore {
            own: nid(9),
            ..FactStore::default()
        };
        assert!(store.offer(fact(1, 5, 1, FactBody::Role(NodeRole::Worker))));
        assert!(!store.offer(fact(1, 5, 1, FactBody::Role(NodeRole::Worker))));
        assert!(!store.offer(fact(1, 4, 9, FactBody::Role(NodeRole::Manager))));
        assert!(store.offer(fact(1, 5, 2, FactBody::Role(NodeRole::Manager))));
        assert!(store.offer(fact(1, 6, 0, FactBody::Role(NodeRole::Worker))));
        // Different kind, same origin: independent.
        assert!(store.offer(fact(1, 1, 0, FactBody::Leaving { bump: 1 })));
        assert_eq!(store.facts.len(), 2);
        assert_eq!(store.fresh.len(), 4);

        let k = |bump, seq, kind| FactKey {
            origin: nid(1),
            kind,
            version: FactVersion { bump, seq },
        };
        assert!(k(5, 2, FactKind::Role).invalidates(&k(5, 1, FactKind::Role)));
        assert!(!k(5, 1, FactKind::Role).invalidates(&k(5, 2, FactKind::Role)));
        assert!(!k(5, 2, FactKind::Role).invalidates(&k(5, 1, FactKind::LeaderHint)));
        let mut other = k(5, 1, FactKind::Role);
        other.origin = nid(2);
        assert!(!k(5, 2, FactKind::Role).invalidates(&other));
    }
}
