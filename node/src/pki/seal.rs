//! Secrets at rest: the cluster's secrets key, sealed to each manager's node key, and the
//! secrets encrypted under it (ARCHITECTURE.md, "Secrets").
//!
//! - The **secrets key** is 32 random bytes, drawn by the leader that stores the first secret.
//!   Raft never holds it in the clear: for every manager it holds a [`SealedKey`], the key
//!   encrypted to that manager's ed25519 node key turned into an X25519 key (an ECIES-style
//!   seal: an ephemeral key pair, X25519 with the manager's key, HKDF-SHA256 over the shared
//!   value with both public keys as salt, ChaCha20-Poly1305). Only a node holding a manager's
//!   `node.key` opens it.
//! - Each **secret** is encrypted under the secrets key with ChaCha20-Poly1305, a random nonce,
//!   and the secret's ID as associated data (a ciphertext cannot be moved to another record).
//!
//! So `raft.redb` (log and snapshots) alone reveals the secrets' names and sizes, never their
//! bytes. The ed25519-to-X25519 use of one key for signing and key agreement is the one
//! analysed in "On using the same key pair for Ed25519 and an X25519 based KEM" (ePrint
//! 2021/509), which finds the combination secure.

use ed25519_dalek::{SigningKey, VerifyingKey};
use ring::aead::{self, Aad, CHACHA20_POLY1305, LessSafeKey, Nonce, UnboundKey};
use ring::hkdf;
use ring::rand::{SecureRandom as _, SystemRandom};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What went wrong sealing or opening.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SealError {
    /// The public key is not a valid ed25519 key.
    #[error("the manager's public key is not a valid ed25519 key")]
    BadPublicKey,
    /// A weak or invalid shared value (a small-order point).
    #[error("key agreement failed (an invalid ephemeral key)")]
    BadAgreement,
    /// Authentication failed: another key, or altered bytes.
    #[error("the sealed bytes do not open with this key (another key, or altered bytes)")]
    Open,
    /// The system's random source failed.
    #[error("the system's random source failed")]
    Random,
}

/// Label of the key derivation (and of this format's version).
const SEAL_INFO: &[u8] = b"shoal sealed secrets key v1";

/// The cluster's secrets key sealed to one manager's node key.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedKey {
    /// Which secrets key this is ([`SecretsKey::id`]), so that two keys are never mixed.
    pub key_id: [u8; 8],
    /// The ephemeral public key (an ed25519 public key; its X25519 form is used).
    pub ephemeral: [u8; 32],
    /// The key encrypted (32 bytes and a 16-byte tag).
    pub sealed: Vec<u8>,
}

impl std::fmt::Debug for SealedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedKey")
            .field("key_id", &hex(&self.key_id))
            .finish_non_exhaustive()
    }
}

/// The cluster's secrets key (in memory only; zeroed on drop).
#[derive(Clone, PartialEq, Eq)]
pub struct SecretsKey([u8; 32]);

impl std::fmt::Debug for SecretsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretsKey({})", hex(&self.id()))
    }
}

impl Drop for SecretsKey {
    fn drop(&mut self) {
        // Best effort: the optimiser may have copied it elsewhere.
        self.0 = [0; 32];
        std::hint::black_box(&self.0);
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn random<const N: usize>() -> Result<[u8; N], SealError> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| SealError::Random)?;
    Ok(out)
}

/// HKDF-SHA256 output length for a ChaCha20-Poly1305 key.
struct KeyLen;

impl hkdf::KeyType for KeyLen {
    fn len(&self) -> usize {
        32
    }
}

fn aead_key(bytes: &[u8; 32]) -> LessSafeKey {
    // 32 bytes is ChaCha20-Poly1305's key length: `new` cannot fail.
    LessSafeKey::new(UnboundKey::new(&CHACHA20_POLY1305, bytes).unwrap_or_else(|_| unreachable!()))
}

/// The key sealing and opening use: HKDF over the X25519 value, salted with both public keys.
fn wrap_key(shared: &[u8; 32], ephemeral: &[u8; 32], recipient: &[u8; 32]) -> LessSafeKey {
    let mut salt = [0u8; 64];
    salt[..32].copy_from_slice(ephemeral);
    salt[32..].copy_from_slice(recipient);
    let prk = hkdf::Salt::new(hkdf::HKDF_SHA256, &salt).extract(shared);
    let mut key = [0u8; 32];
    // The length is KeyLen's, 32: neither call can fail.
    let okm = prk
        .expand(&[SEAL_INFO], KeyLen)
        .unwrap_or_else(|_| unreachable!());
    okm.fill(&mut key).unwrap_or_else(|_| unreachable!());
    let k = aead_key(&key);
    key = [0; 32];
    std::hint::black_box(&key);
    k
}

impl SecretsKey {
    /// A new random key.
    pub fn generate() -> Result<SecretsKey, SealError> {
        random::<32>().map(SecretsKey)
    }

    /// Its fingerprint: the first 8 bytes of SHA-256 over a label and the key (not the key).
    #[must_use]
    pub fn id(&self) -> [u8; 8] {
        let mut d = ring::digest::Context::new(&ring::digest::SHA256);
        d.update(b"shoal secrets key id");
        d.update(&self.0);
        let mut id = [0u8; 8];
        id.copy_from_slice(&d.finish().as_ref()[..8]);
        id
    }

    /// This key sealed to the manager whose ed25519 public key is `recipient`.
    pub fn seal_to(&self, recipient: &[u8; 32]) -> Result<SealedKey, SealError> {
        let point = VerifyingKey::from_bytes(recipient)
            .map_err(|_| SealError::BadPublicKey)?
            .to_montgomery();
        let ephemeral = SigningKey::from_bytes(&random::<32>()?);
        let ephemeral_public = ephemeral.verifying_key().to_bytes();
        let shared = point.mul_clamped(ephemeral.to_scalar_bytes()).to_bytes();
        if shared == [0; 32] {
            return Err(SealError::BadAgreement);
        }
        let key = wrap_key(&shared, &ephemeral_public, recipient);
        let mut sealed = self.0.to_vec();
        // Each wrapping key is used once (a fresh ephemeral key): a zero nonce is safe.
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key([0; 12]),
            Aad::empty(),
            &mut sealed,
        )
        .map_err(|_| SealError::Open)?;
        Ok(SealedKey {
            key_id: self.id(),
            ephemeral: ephemeral_public,
            sealed,
        })
    }

    /// Opens `sealed` with the manager's own node key.
    pub fn open(sealed: &SealedKey, own: &SigningKey) -> Result<SecretsKey, SealError> {
        let point = VerifyingKey::from_bytes(&sealed.ephemeral)
            .map_err(|_| SealError::BadAgreement)?
            .to_montgomery();
        let shared = point.mul_clamped(own.to_scalar_bytes()).to_bytes();
        if shared == [0; 32] {
            return Err(SealError::BadAgreement);
        }
        let key = wrap_key(&shared, &sealed.ephemeral, &own.verifying_key().to_bytes());
        let mut buf = sealed.sealed.clone();
        let plain = key
            .open_in_place(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::empty(),
                &mut buf,
            )
            .map_err(|_| SealError::Open)?;
        let bytes: [u8; 32] = plain.try_into().map_err(|_| SealError::Open)?;
        buf.iter_mut().for_each(|b| *b = 0);
        let key = SecretsKey(bytes);
        if key.id() != sealed.key_id {
            return Err(SealError::Open);
        }
        Ok(key)
    }

    /// `data` encrypted for the secret `secret_id`: the nonce and the ciphertext with its tag.
    pub fn encrypt(&self, secret_id: &str, data: &[u8]) -> Result<([u8; 12], Vec<u8>), SealError> {
        let nonce = random::<12>()?;
        let mut out = data.to_vec();
        aead_key(&self.0)
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(secret_id.as_bytes()),
                &mut out,
            )
            .map_err(|_| SealError::Open)?;
        Ok((nonce, out))
    }

    /// The bytes of the secret `secret_id` from [`SecretsKey::encrypt`]'s output.
    pub fn decrypt(
        &self,
        secret_id: &str,
        nonce: &[u8; 12],
        sealed: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let mut buf = sealed.to_vec();
        let n = aead_key(&self.0)
            .open_in_place(
                Nonce::assume_unique_for_key(*nonce),
                Aad::from(secret_id.as_bytes()),
                &mut buf,
            )
            .map_err(|_| SealError::Open)?
            .len();
        buf.truncate(n);
        Ok(buf)
    }
}

/// The tag's length, for sizes.
pub const TAG_LEN: usize = 16;

const _: () = assert!(aead::MAX_TAG_LEN == TAG_LEN);

#[cfg(test)]
mod tests {
    use super::*;

    fn manager(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn a_sealed_key_opens_only_with_its_managers_key() {
        let key = SecretsKey::generate().unwrap();
        let m1 = manager(1);
        let m2 = manager(2);
        let sealed = key.seal_to(&m1.verifying_key().to_bytes()).unwrap();
        assert_eq!(sealed.key_id, key.id());
        assert!(!sealed.sealed.windows(32).any(|w| w == key.0));
        assert_eq!(SecretsKey::open(&sealed, &m1).unwrap(), key);
        assert_eq!(SecretsKey::open(&sealed, &m2), Err(SealError::Open));
        let mut altered = sealed.clone();
        altered.sealed[3] ^= 1;
        assert_eq!(SecretsKey::open(&altered, &m1), Err(SealError::Open));
        // Two seals of one key differ (fresh ephemeral keys).
        let again = key.seal_to(&m1.verifying_key().to_bytes()).unwrap();
        assert_ne!(again.sealed, sealed.sealed);
    }

    #[test]
    fn secrets_decrypt_only_with_the_key_and_their_own_id() {
        let key = SecretsKey::generate().unwrap();
        let (nonce, ct) = key.encrypt("s1", b"hunter2").unwrap();
        assert!(!ct.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(ct.len(), 7 + TAG_LEN);
        assert_eq!(key.decrypt("s1", &nonce, &ct).unwrap(), b"hunter2");
        assert_eq!(key.decrypt("s2", &nonce, &ct), Err(SealError::Open));
        let other = SecretsKey::generate().unwrap();
        assert_eq!(other.decrypt("s1", &nonce, &ct), Err(SealError::Open));
    }

    #[test]
    fn a_bad_public_key_is_an_error_not_a_panic() {
        let key = SecretsKey::generate().unwrap();
        // Not a point on the curve: y = 2 has no x.
        let mut bad = [0u8; 32];
        bad[0] = 2;
        assert!(key.seal_to(&bad).is_err());
        let garbage = SealedKey {
            key_id: [0; 8],
            ephemeral: bad,
            sealed: vec![1, 2, 3],
        };
        assert!(SecretsKey::open(&garbage, &manager(1)).is_err());
    }
}
