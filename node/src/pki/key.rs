//! The node's ed25519 identity key and the node ID derived from it.

use std::fmt;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use base64::Engine as _;
use ed25519_dalek::pkcs8::{DecodePrivateKey as _, EncodePrivateKey as _};
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};

use super::{PkiError, sha256};

const PEM_BEGIN: &str = "-----BEGIN PRIVATE KEY-----";
const PEM_END: &str = "-----END PRIVATE KEY-----";
/// Largest key file we are willing to read (a PKCS#8 PEM ed25519 key is ~120 bytes).
const MAX_KEY_FILE: u64 = 16 * 1024;

/// The node's ed25519 identity key. It is also the node's TLS key.
///
/// Stored as PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`), mode 0600. `Debug` never prints the
/// secret.
#[derive(Clone)]
pub struct NodeKey {
    signing: SigningKey,
}

impl fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKey")
            .field("node_id", &self.node_id())
            .finish_non_exhaustive()
    }
}

impl NodeKey {
    /// Generates a fresh random key (OS randomness via `getrandom`).
    pub fn generate() -> Result<NodeKey, PkiError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| PkiError::Random(e.to_string()))?;
        let signing = SigningKey::from_bytes(&seed);
        seed.fill(0);
        Ok(NodeKey { signing })
    }

    /// Wraps an existing ed25519-dalek key.
    #[must_use]
    pub fn from_signing_key(signing: SigningKey) -> NodeKey {
        NodeKey { signing }
    }

    /// Loads the key at `path`, or creates it (mode 0600, written atomically) if the file does
    /// not exist. An unreadable or corrupt file is an error naming the file and is never
    /// overwritten. The parent directory must exist.
    pub fn load_or_create(path: &Path) -> Result<NodeKey, PkiError> {
        match fs::symlink_metadata(path) {
            Ok(_) => Self::load(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate()?;
                match key.write_new(path) {
                    Ok(()) => Ok(key),
                    // Someone else created it meanwhile: use theirs.
                    Err(PkiError::KeyWrite { source, .. })
                        if source.kind() == std::io::ErrorKind::AlreadyExists =>
                    {
                        Self::load(path)
                    }
                    Err(e) => Err(e),
                }
            }
            Err(source) => Err(PkiError::KeyRead {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Loads an existing key file.
    pub fn load(path: &Path) -> Result<NodeKey, PkiError> {
        let read_err = |source| PkiError::KeyRead {
            path: path.to_path_buf(),
            source,
        };
        let corrupt = |reason: &str| PkiError::KeyCorrupt {
            path: path.to_path_buf(),
            reason: reason.to_owned(),
        };
        let meta = fs::metadata(path).map_err(read_err)?;
        if !meta.is_file() {
            return Err(corrupt("not a regular file"));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "node key file {} is accessible by other users (mode {:o}); it should be 0600",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
        if meta.len() > MAX_KEY_FILE {
            return Err(corrupt("file too large"));
        }
        let bytes = fs::read(path).map_err(read_err)?;
        let text = std::str::from_utf8(&bytes).map_err(|_| corrupt("not a PEM file"))?;
        let body = text
            .trim()
            .strip_prefix(PEM_BEGIN)
            .and_then(|rest| rest.strip_suffix(PEM_END))
            .ok_or_else(|| corrupt("expected a PKCS#8 PEM private key"))?;
        let b64: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64.as_bytes())
            .map_err(|_| corrupt("bad base64"))?;
        let signing =
            SigningKey::from_pkcs8_der(&der).map_err(|_| corrupt("not an ed25519 PKCS#8 key"))?;
        Ok(NodeKey { signing })
    }

    /// Writes the key to a new file at `path` (fails with `AlreadyExists` if it exists):
    /// a temporary file created with mode 0600, fsynced, then hard-linked into place.
    fn write_new(&self, path: &Path) -> Result<(), PkiError> {
        let write_err = |source| PkiError::KeyWrite {
            path: path.to_path_buf(),
            source,
        };
        let pem = self.to_pem()?;
        let tmp = tmp_path(path);
        let result = (|| {
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            // The umask cannot widen 0600, but make sure anyway.
            f.set_permissions(fs::Permissions::from_mode(0o600))?;
            f.write_all(pem.as_bytes())?;
            f.sync_all()?;
            drop(f);
            // A hard link never replaces an existing file, unlike rename.
            fs::hard_link(&tmp, path)?;
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
                && let Ok(d) = fs::File::open(dir)
            {
                let _ = d.sync_all();
            }
            Ok(())
        })();
        let _ = fs::remove_file(&tmp);
        result.map_err(write_err)
    }

    fn to_pem(&self) -> Result<String, PkiError> {
        let der = self.pkcs8_der()?;
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut out = String::with_capacity(b64.len() + 80);
        out.push_str(PEM_BEGIN);
        out.push('\n');
        for chunk in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            out.push('\n');
        }
        out.push_str(PEM_END);
        out.push('\n');
        Ok(out)
    }

    /// The key as PKCS#8 DER (the TLS private key; treat as secret).
    pub fn pkcs8_der(&self) -> Result<Vec<u8>, PkiError> {
        let doc = self
            .signing
            .to_pkcs8_der()
            .map_err(|e| PkiError::Tls(format!("cannot encode node key: {e}")))?;
        Ok(doc.as_bytes().to_vec())
    }

    /// The raw 32-byte ed25519 public key.
    #[must_use]
    pub fn public_key(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// The ed25519-dalek verifying key.
    #[must_use]
    pub fn verifying_key(&self) -> VerifyingKey {
        self.signing.verifying_key()
    }

    /// The node ID derived from the public key.
    #[must_use]
    pub fn node_id(&self) -> NodeId {
        NodeId::from_public_key(&self.public_key())
    }

    /// Signs `msg` with the node key.
    #[must_use]
    pub fn sign(&self, msg: &[u8]) -> Signature {
        self.signing.sign(msg)
    }

    /// The underlying ed25519-dalek signing key.
    #[must_use]
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// Secret bytes used to derive per-node secrets (e.g. the QUIC stateless-reset key).
    pub(crate) fn secret_bytes(&self) -> [u8; 32] {
        self.signing.to_bytes()
    }
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let mut nonce = [0u8; 8];
    let _ = getrandom::fill(&mut nonce);
    name.push(format!(
        ".tmp.{}.{:016x}",
        std::process::id(),
        u64::from_le_bytes(nonce)
    ));
    path.with_file_name(name)
}

/// Length of a node ID string.
pub const NODE_ID_LEN: usize = 25;
const ALPHABET: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";

/// A node's identity: 25 characters of `[0-9a-z]` (Docker's node ID format), the base-36
/// encoding of the first 128 bits of `sha256(public key)`.
///
/// Ordering and equality match the string form. Serialized (serde) as the string.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId([u8; NODE_ID_LEN]);

impl NodeId {
    /// Derives the node ID of an ed25519 public key.
    #[must_use]
    pub fn from_public_key(public_key: &[u8; 32]) -> NodeId {
        let digest = sha256(public_key);
        let mut first = [0u8; 16];
        first.copy_from_slice(&digest[..16]);
        let mut n = u128::from_be_bytes(first);
        let mut out = [b'0'; NODE_ID_LEN];
        for slot in out.iter_mut().rev() {
            *slot = ALPHABET[(n % 36) as usize];
            n /= 36;
        }
        NodeId(out)
    }

    /// The ID as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // Only ASCII alphanumerics are ever stored.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.as_str())
    }
}

impl FromStr for NodeId {
    type Err = PkiError;

    /// Parses a full node ID: exactly 25 characters of `[0-9a-z]` whose base-36 value fits in
    /// 128 bits.
    fn from_str(s: &str) -> Result<NodeId, PkiError> {
        let bad = || PkiError::InvalidNodeId(s.chars().take(64).collect());
        let bytes = s.as_bytes();
        if bytes.len() != NODE_ID_LEN {
            return Err(bad());
        }
        let mut value: u128 = 0;
        let mut out = [0u8; NODE_ID_LEN];
        for (i, &b) in bytes.iter().enumerate() {
            let digit = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'z' => b - b'a' + 10,
                _ => return Err(bad()),
            };
            value = value
                .checked_mul(36)
                .and_then(|v| v.checked_add(u128::from(digit)))
                .ok_or_else(bad)?;
            out[i] = b;
        }
        Ok(NodeId(out))
    }
}

impl serde::Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<NodeId, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = NodeId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a 25-character shoal node ID")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<NodeId, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}
