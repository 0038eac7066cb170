//! Join tokens: capabilities signed by the cluster CA key.
//!
//! `SHOAL1-<base64url(payload)>.<base64url(signature)>`, the payload postcard-encoded
//! with a leading version, the signature ed25519 over `b"shoal-join-v1" || payload`,
//! checked with `verify_strict`. Base64url is decoded strictly (no padding, no
//! non-zero trailing bits), so changing any character of a token invalidates it.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::{ClusterCa, PkiError};

/// Token prefix, with the format version.
pub const TOKEN_PREFIX: &str = "SHOAL1-";
const SIGNING_DOMAIN: &[u8] = b"shoal-join-v1";
const PAYLOAD_VERSION: u8 = 1;
/// Longest token accepted (a few manager addresses fit easily).
pub const MAX_TOKEN_LEN: usize = 2048;

/// The role a token admits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TokenRole {
    /// Joins as a worker.
    Worker,
    /// Joins as a manager.
    Manager,
}

impl TokenRole {
    /// `worker` or `manager`.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenRole::Worker => "worker",
            TokenRole::Manager => "manager",
        }
    }
}

/// What a token grants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenPayload {
    /// Payload format version.
    pub version: u8,
    /// The cluster the token admits to.
    pub cluster_id: String,
    /// The role it admits as.
    pub role: TokenRole,
    /// The role's token generation when minted; rotation makes older ones invalid.
    pub generation: u64,
    /// SHA-256 of the CA certificate: the joiner pins the manager's TLS chain to it.
    pub ca_digest: [u8; 32],
    /// Expiry, seconds since the Unix epoch.
    pub expires_at: Option<u64>,
    /// Manager addresses (`ip:port`) to try when the joiner names none.
    pub manager_addrs: Vec<String>,
    /// Makes expiring tokens distinct from each other.
    pub nonce: Option<u64>,
}

/// A decoded token whose signature has not been checked yet (a joiner has no CA key:
/// it checks the CA digest during the TLS handshake instead).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The payload.
    pub payload: TokenPayload,
    payload_bytes: Vec<u8>,
    signature: [u8; 64],
}

fn bad(reason: &str) -> PkiError {
    PkiError::Token(reason.to_string())
}

impl JoinToken {
    /// Signs `payload` with the cluster CA key and renders the token.
    pub fn mint(ca: &ClusterCa, payload: &TokenPayload) -> Result<String, PkiError> {
        let bytes = postcard::to_stdvec(payload).map_err(|e| PkiError::Token(e.to_string()))?;
        let mut msg = SIGNING_DOMAIN.to_vec();
        msg.extend_from_slice(&bytes);
        let sig = ca.sign(&msg)?;
        Ok(format!(
            "{TOKEN_PREFIX}{}.{}",
            URL_SAFE_NO_PAD.encode(&bytes),
            URL_SAFE_NO_PAD.encode(sig)
        ))
    }

    /// Parses a token's text. Says nothing about its validity beyond the format.
    pub fn parse(text: &str) -> Result<JoinToken, PkiError> {
        let text = text.trim();
        if text.len() > MAX_TOKEN_LEN {
            return Err(bad("the join token is too long"));
        }
        let rest = text
            .strip_prefix(TOKEN_PREFIX)
            .ok_or_else(|| bad("this is not a shoal join token (it should start with SHOAL1-)"))?;
        let (p, s) = rest
            .split_once('.')
            .ok_or_else(|| bad("the join token is malformed"))?;
        let payload_bytes = URL_SAFE_NO_PAD
            .decode(p)
            .map_err(|_| bad("the join token is malformed"))?;
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| bad("the join token is malformed"))?;
        let signature: [u8; 64] = sig
            .try_into()
            .map_err(|_| bad("the join token is malformed"))?;
        let (payload, rest): (TokenPayload, &[u8]) = postcard::take_from_bytes(&payload_bytes)
            .map_err(|_| bad("the join token is malformed"))?;
        if !rest.is_empty() || payload.version != PAYLOAD_VERSION {
            return Err(bad(
                "the join token is malformed or from an unsupported version",
            ));
        }
        Ok(JoinToken {
            payload,
            payload_bytes,
            signature,
        })
    }

    /// Checks the signature against the CA's public key (`verify_strict`).
    pub fn verify_signature(&self, ca_public_key: &[u8; 32]) -> Result<(), PkiError> {
        let vk = VerifyingKey::from_bytes(ca_public_key).map_err(|_| bad("invalid CA key"))?;
        let mut msg = SIGNING_DOMAIN.to_vec();
        msg.extend_from_slice(&self.payload_bytes);
        vk.verify_strict(&msg, &Signature::from_bytes(&self.signature))
            .map_err(|_| bad("the join token's signature is invalid"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(ca: &ClusterCa) -> TokenPayload {
        TokenPayload {
            version: PAYLOAD_VERSION,
            cluster_id: "c1".into(),
            role: TokenRole::Worker,
            generation: 3,
            ca_digest: ca.digest(),
            expires_at: None,
            manager_addrs: vec!["127.0.0.1:4747".into()],
            nonce: None,
        }
    }

    #[test]
    fn mint_parse_verify_round_trip_and_deterministic() {
        let ca = ClusterCa::generate("c1").unwrap();
        let p = payload(&ca);
        let t1 = JoinToken::mint(&ca, &p).unwrap();
        let t2 = JoinToken::mint(&ca, &p).unwrap();
        assert_eq!(t1, t2, "the same token until rotated");
        assert!(t1.starts_with(TOKEN_PREFIX));
        let parsed = JoinToken::parse(&t1).unwrap();
        assert_eq!(parsed.payload, p);
        parsed.verify_signature(&ca.public_key()).unwrap();
        let other = ClusterCa::generate("c2").unwrap();
        assert!(parsed.verify_signature(&other.public_key()).is_err());
    }

    #[test]
    fn changing_any_character_invalidates() {
        let ca = ClusterCa::generate("c1").unwrap();
        let token = JoinToken::mint(&ca, &payload(&ca)).unwrap();
        let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
        for i in 0..token.len() {
            let original = token.as_bytes()[i] as char;
            for c in alphabet.chars().filter(|c| *c != original).take(3) {
                let mut t = token.clone();
                t.replace_range(i..=i, &c.to_string());
                let ok = JoinToken::parse(&t)
                    .and_then(|p| p.verify_signature(&ca.public_key()).map(|()| p));
                assert!(
                    ok.is_err(),
                    "token with char {i} changed to {c} was accepted"
                );
            }
        }
    }

    #[test]
    fn garbage_is_refused_without_panic() {
        for t in [
            "",
            "SHOAL1-",
            "SHOAL1-.",
            "SHOAL1-abc.def",
            "SWMTKN-1-abc",
            "SHOAL1-%%%.%%%",
        ] {
            assert!(JoinToken::parse(t).is_err(), "{t}");
        }
        assert!(JoinToken::parse(&"SHOAL1-".repeat(1000)).is_err());
    }
}
