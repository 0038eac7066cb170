//! Small cluster facts (role, advertise address, leader hint, …) spread by SWIM custom broadcasts.
//!
//! Every fact is about the node that published it (its *origin*) and has a kind; for each
//! `(origin, kind)` the newest [`FactVersion`] wins, both in each node's store and in foca's
//! dissemination backlog (through [`foca::Invalidates`]).
//!
//! Facts are relayed by any member, so each one carries an ed25519 signature by its origin's key
//! (a [`NodeId`] is that public key) over a domain-separated encoding of `(origin, version,
//! body)`. A node stores and relays a fact from the network only if that signature verifies
//! ([`Fact::verify`]): a member cannot speak for another one.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use ed25519_dalek::{Signature, VerifyingKey};
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::identity::{NodeId, NodeIdentity};

/// Wire format version of an encoded fact (first byte of every item). Format 2 added the
/// origin's signature.
pub const FACT_FORMAT: u8 = 2;

/// The format before facts were signed: such facts are ignored (neither stored nor relayed),
/// like a newer format, so that a cluster can be upgraded one node at a time.
const UNSIGNED_FACT_FORMAT: u8 = 1;

/// Largest encoded fact accepted or produced, in bytes (the largest [`FactBody::App`] fact,
/// signature included, is about 330 bytes).
pub const MAX_FACT_LEN: usize = 400;

/// Largest payload of an [`FactBody::App`] fact, in bytes.
pub const MAX_APP_FACT_LEN: usize = 200;

/// Prefix of every signed message: a fact signature can never be mistaken for a signature the
/// node key makes elsewhere (TLS handshakes, join tokens, …), nor the other way round.
const SIGNING_DOMAIN: &[u8] = b"shoal-membership/fact/v2\0";

/// Signs this node's facts with its ed25519 key: the key whose public half is the node's
/// [`NodeId`]. Implemented for [`ed25519_dalek::SigningKey`].
pub trait FactSigner: Send + Sync {
    /// The 64-byte ed25519 signature of `msg` (RFC 8032, pure Ed25519).
    fn sign(&self, msg: &[u8]) -> [u8; 64];
}

impl FactSigner for ed25519_dalek::SigningKey {
    fn sign(&self, msg: &[u8]) -> [u8; 64] {
        ed25519_dalek::Signer::sign(self, msg).to_bytes()
    }
}

/// Whether `signer` signs for `id`: a probe message (never sent, and outside the fact domain)
/// is signed and checked against `id`.
pub(crate) fn signs_for(signer: &dyn FactSigner, id: &NodeId) -> bool {
    let probe = b"shoal-membership/signer-check/v1";
    verify_signature(id, probe, &FactSignature(signer.sign(probe)))
}

fn verify_signature(id: &NodeId, msg: &[u8], signature: &FactSignature) -> bool {
    let Ok(key) = VerifyingKey::from_bytes(id.as_bytes()) else {
        return false;
    };
    key.verify_strict(msg, &Signature::from_bytes(&signature.0))
        .is_ok()
}

/// An ed25519 signature of a fact by its origin (64 bytes, encoded without a length prefix).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct FactSignature(pub [u8; 64]);

impl fmt::Debug for FactSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FactSignature(")?;
        for b in &self.0[..6] {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…)")
    }
}

impl Serialize for FactSignature {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut t = serializer.serialize_tuple(self.0.len())?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}

impl<'de> Deserialize<'de> for FactSignature {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Bytes64;
        impl<'de> Visitor<'de> for Bytes64 {
            type Value = FactSignature;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("64 signature bytes")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<FactSignature, A::Error> {
                let mut out = [0u8; 64];
                for (i, slot) in out.iter_mut().enumerate() {
                    *slot = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::invalid_length(i, &self))?;
                }
                Ok(FactSignature(out))
            }
        }
        deserializer.deserialize_tuple(64, Bytes64)
    }
}

/// A node's role in the cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum NodeRole {
    /// A Raft voter.
    Manager,
    /// Runs tasks only.
    Worker,
}

/// What a fact says. postcard encodes the variant index, and a node that cannot decode a
/// fact refuses the whole datagram carrying it: a new kind of fact needs a new
/// [`FACT_FORMAT`] (older nodes ignore facts of another format), never just a new variant.
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

/// One cluster fact: `origin` says `body`, at `version`, signed by `origin`'s key.
///
/// Build one with [`Fact::signed`]. A fact decoded from the network is only trusted once
/// [`Fact::verify`] succeeds (the membership does this before storing or relaying it).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Fact {
    /// The node the fact is about, which published it.
    pub origin: NodeId,
    /// Newest wins per `(origin, kind)`.
    pub version: FactVersion,
    /// The content.
    pub body: FactBody,
    /// `origin`'s signature of `(origin, version, body)` (see [`Fact::signed`]).
    pub signature: FactSignature,
}

/// The signed part of a fact, serialized the way [`Fact`] serializes its first three fields.
#[derive(Serialize)]
struct Claim<'a> {
    origin: &'a NodeId,
    version: &'a FactVersion,
    body: &'a FactBody,
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
    /// The signature does not verify against the origin's key (forged or altered fact).
    #[error("fact signature does not verify against its origin's key")]
    BadSignature,
}

impl Fact {
    /// The kind of this fact.
    pub fn kind(&self) -> FactKind {
        self.body.kind()
    }

    /// A fact signed by `signer`, which must hold `origin`'s key (otherwise the fact is
    /// refused by every receiver). Fails only on an oversized [`FactBody::App`] payload or a
    /// nil origin.
    pub fn signed(
        origin: NodeId,
        version: FactVersion,
        body: FactBody,
        signer: &dyn FactSigner,
    ) -> Result<Fact, FactError> {
        let mut fact = Fact {
            origin,
            version,
            body,
            signature: FactSignature([0; 64]),
        };
        fact.check()?;
        fact.signature = FactSignature(signer.sign(&fact.signed_message()?));
        Ok(fact)
    }

    /// Checks the signature with `verify_strict` against the origin's key.
    pub fn verify(&self) -> Result<(), FactError> {
        let msg = self.signed_message()?;
        if verify_signature(&self.origin, &msg, &self.signature) {
            Ok(())
        } else {
            Err(FactError::BadSignature)
        }
    }

    /// What the origin signs: a domain prefix, then `postcard((origin, version, body))`.
    fn signed_message(&self) -> Result<Vec<u8>, FactError> {
        let claim = Claim {
            origin: &self.origin,
            version: &self.version,
            body: &self.body,
        };
        let encoded = postcard::to_stdvec(&claim).map_err(|e| FactError::Decode(e.to_string()))?;
        let mut msg = Vec::with_capacity(SIGNING_DOMAIN.len() + encoded.len());
        msg.extend_from_slice(SIGNING_DOMAIN);
        msg.extend_from_slice(&encoded);
        Ok(msg)
    }

    /// Encodes as `[FACT_FORMAT, postcard(fact)]` (the signature last, as 64 raw bytes). The
    /// signature is not checked.
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

    /// Decodes one item, without checking its signature (see [`Fact::verify`]). `Ok(None)`
    /// means a newer format this node does not understand, or the older unsigned format: such
    /// an item is ignored and not relayed, so that nodes can be upgraded one at a time.
    pub fn decode(data: &[u8]) -> Result<Option<Fact>, FactError> {
        let (&format, rest) = data.split_first().ok_or(FactError::Empty)?;
        if data.len() > MAX_FACT_LEN {
            return Err(FactError::TooLarge(data.len()));
        }
        if format > FACT_FORMAT || format == UNSIGNED_FACT_FORMAT {
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
    /// Facts from the network, newer than what was known, dropped because their signature
    /// did not verify.
    pub(crate) forged: u64,
}

impl FactStore {
    /// Whether `fact` is newer than what is known of its `(origin, kind)`.
    fn is_newer(&self, fact: &Fact) -> bool {
        self.facts
            .get(&(fact.origin, fact.kind()))
            .is_none_or(|known| known.version < fact.version)
    }

    /// Stores `fact` if newer than what is known; returns whether it was. The signature is not
    /// checked: for this node's own facts only (use [`FactStore::accept`] for received ones).
    pub(crate) fn offer(&mut self, fact: Fact) -> bool {
        if !self.is_newer(&fact) {
            return false;
        }
        self.fresh.push(fact.clone());
        self.facts.insert((fact.origin, fact.kind()), fact);
        true
    }

    /// Stores a fact received from the network if it is newer than what is known and its
    /// origin signed it; returns whether it was. A newer fact whose signature does not verify
    /// is counted in `forged` and changes nothing else. (Staleness is checked first: most
    /// received facts are repeats, and a stale one is dropped whatever its signature.)
    pub(crate) fn accept(&mut self, fact: Fact) -> bool {
        if !self.is_newer(&fact) {
            return false;
        }
        if fact.verify().is_err() {
            self.forged += 1;
            return false;
        }
        self.offer(fact)
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

/// foca broadcast handler: decodes facts, keeps the newest whose signature verifies, relays only
/// what it kept.
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
        Ok(store.accept(fact).then_some(key))
    }
}

#[cfg(test)]
mod tests {
    use foca::Invalidates;

    use super::*;

    use ed25519_dalek::SigningKey;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn nid(b: u8) -> NodeId {
        NodeId(key(b).verifying_key().to_bytes())
    }

    fn fact(origin: u8, bump: u64, seq: u64, body: FactBody) -> Fact {
        Fact::signed(nid(origin), FactVersion { bump, seq }, body, &key(origin)).expect("signs")
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
            assert!(bytes.len() < 150, "facts stay small: {} bytes", bytes.len());
            let back = Fact::decode(&bytes)
                .expect("decodes")
                .expect("known format");
            assert_eq!(back, f);
            assert_eq!(back.verify(), Ok(()));
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
        let mut future = good.clone();
        future[0] = FACT_FORMAT + 1;
        assert_eq!(Fact::decode(&future), Ok(None), "newer formats are skipped");
        let mut unsigned = good;
        unsigned[0] = UNSIGNED_FACT_FORMAT;
        assert_eq!(
            Fact::decode(&unsigned),
            Ok(None),
            "the unsigned format is skipped"
        );
        let nil = Fact {
            origin: NodeId::NIL,
            version: FactVersion { bump: 1, seq: 1 },
            body: FactBody::Role(NodeRole::Worker),
            signature: FactSignature([0; 64]),
        };
        assert_eq!(nil.encode(), Err(FactError::NilOrigin));
        assert!(matches!(
            Fact::signed(NodeId::NIL, nil.version, nil.body, &key(1)),
            Err(FactError::NilOrigin)
        ));
        let big = Fact::signed(
            nid(1),
            FactVersion { bump: 1, seq: 1 },
            FactBody::App {
                tag: 1,
                data: vec![0; MAX_APP_FACT_LEN + 1],
            },
            &key(1),
        );
        assert_eq!(big, Err(FactError::AppTooLarge(MAX_APP_FACT_LEN + 1)));
        let largest = fact(
            1,
            u64::MAX,
            u64::MAX,
            FactBody::App {
                tag: u16::MAX,
                data: vec![0xff; MAX_APP_FACT_LEN],
            },
        );
        let bytes = largest.encode().expect("the largest fact fits");
        assert!(bytes.len() <= MAX_FACT_LEN, "{} bytes", bytes.len());
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
    fn issue_14_signature_binds_origin_version_and_body() {
        let good = fact(1, 5, 3, FactBody::Role(NodeRole::Worker));
        assert_eq!(good.verify(), Ok(()));
        let wrong_key =
            Fact::signed(good.origin, good.version, good.body.clone(), &key(2)).expect("signs");
        let unsigned = Fact {
            signature: FactSignature([0; 64]),
            ..good.clone()
        };
        let other_body = Fact {
            body: FactBody::Role(NodeRole::Manager),
            ..good
        };
        let other_version = Fact {
            version: FactVersion { bump: 5, seq: 4 },
            ..good.clone()
        };
        let other_origin = Fact {
            origin: nid(2),
            ..good.clone()
        };
        let mut flipped = good.clone();
        flipped.signature.0[10] ^= 1;
        let not_a_key = Fact {
            origin: NodeId([0xff; 32]),
            ..good.clone()
        };
        for (name, f) in [
            ("wrong key", wrong_key),
            ("unsigned", unsigned),
            ("other body", other_body),
            ("other version", other_version),
            ("other origin", other_origin),
            ("flipped bit", flipped),
            ("origin not a curve point", not_a_key),
        ] {
            assert_eq!(f.verify(), Err(FactError::BadSignature), "{name}");
            // Still well-formed: decoding does not judge the signature.
            let bytes = f.encode().expect("encodes");
            assert_eq!(Fact::decode(&bytes), Ok(Some(f)), "{name}");
        }
        // The signature is exactly the 64 last bytes of the encoding.
        let bytes = good.encode().expect("encodes");
        assert_eq!(bytes[bytes.len() - 64..], good.signature.0);
        assert!(signs_for(&key(1), &nid(1)));
        assert!(!signs_for(&key(1), &nid(2)));
    }

    #[test]
    fn issue_14_handler_drops_forged_facts() {
        use foca::BroadcastHandler;
        let store: SharedFacts = Arc::new(Mutex::new(FactStore {
            own: nid(9),
            ..FactStore::default()
        }));
        let mut h = FactHandler {
            store: Arc::clone(&store),
        };
        let relayer = NodeIdentity::new(nid(3), "10.0.0.3:1".parse().expect("addr"), 1);
        let genuine = fact(1, 1, 1, FactBody::Role(NodeRole::Worker));
        let forged = [
            // Signed by the relayer, claiming node 1.
            Fact::signed(
                nid(1),
                FactVersion { bump: 1, seq: 2 },
                FactBody::Role(NodeRole::Manager),
                &key(3),
            )
            .expect("signs"),
            // Node 1's genuine signature, replayed on another body and a newer version.
            Fact {
                version: FactVersion { bump: 1, seq: 3 },
                body: FactBody::Role(NodeRole::Manager),
                ..genuine.clone()
            },
            // No signature at all.
            Fact {
                version: FactVersion { bump: 2, seq: 0 },
                signature: FactSignature([0; 64]),
                ..genuine.clone()
            },
        ];
        for f in &forged {
            let bytes = f.encode().expect("encodes");
            assert_eq!(h.receive_item(&bytes, Some(&relayer)), Ok(None), "{f:?}");
        }
        assert!(lock(&store).facts.is_empty());
        assert!(lock(&store).fresh.is_empty());
        assert_eq!(lock(&store).forged, 3);
        // The genuine fact, relayed by the same member, is kept and relayed on.
        let bytes = genuine.encode().expect("encodes");
        assert!(matches!(
            h.receive_item(&bytes, Some(&relayer)),
            Ok(Some(_))
        ));
        assert_eq!(
            lock(&store).facts.get(&(nid(1), FactKind::Role)),
            Some(&genuine)
        );
        // A forgery older than what is known is dropped without being counted.
        let stale = Fact {
            version: FactVersion { bump: 0, seq: 9 },
            signature: FactSignature([0; 64]),
            ..genuine.clone()
        };
        let bytes = stale.encode().expect("encodes");
        assert_eq!(h.receive_item(&bytes, Some(&relayer)), Ok(None));
        assert_eq!(lock(&store).forged, 3);
        // Newer forgeries never replace it.
        for f in &forged {
            let bytes = f.encode().expect("encodes");
            assert_eq!(h.receive_item(&bytes, Some(&relayer)), Ok(None));
        }
        assert_eq!(
            lock(&store).facts.get(&(nid(1), FactKind::Role)),
            Some(&genuine)
        );
        assert_eq!(lock(&store).forged, 6);
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
