//! Node identity and the cluster PKI (DESIGN §3).
//!
//! - [`NodeKey`]: the node's ed25519 identity key, created on first start (file mode 0600);
//!   the same key is the node's TLS key, so a certificate's SPKI *is* the node's public key.
//! - [`NodeId`]: Docker-style 25-character ID derived from the public key (stable across IP
//!   changes).
//! - [`ClusterCa`]: the cluster CA (ed25519, rcgen) that issues node certificates on the node's
//!   own key (ServerAuth + ClientAuth, no IP SANs, `not_before` far in the past).
//! - [`server_config`], [`client_config`], [`join_client_config`]: rustls/quinn configurations
//!   (ring provider only, TLS 1.3 only, ALPN [`ALPN`]).
//! - [`parse_cert`], [`public_key_from_cert`], [`node_id_from_cert`]: the certificate fields
//!   Shoal reads (subject key, SANs, validity, CA flag), through `x509-parser`.

mod ca;
mod cert;
mod key;
pub mod seal;
mod tls;
pub mod token;

pub use ca::{ClusterCa, DEFAULT_CERT_LIFETIME};
pub use cert::{CertInfo, node_id_from_cert, parse_cert, public_key_from_cert};
pub use key::{NodeId, NodeKey};
pub use tls::{
    client_config, crypto_provider, join_client_config, server_config, verify_node_cert,
};

use std::path::PathBuf;

/// ALPN protocol spoken on the cluster port (set on both sides of every handshake).
pub const ALPN: &[u8] = b"shoal/1";

/// The DNS SAN every node certificate carries; dial with this name when only `ip:port` is
/// known, then check the peer's public key (see [`crate::net::peer_public_key`]).
pub const CLUSTER_SAN: &str = "peer.shoal";

/// Suffix of the per-node DNS SAN: `<node_id>.node.shoal`.
pub const NODE_SAN_SUFFIX: &str = ".node.shoal";

/// The per-node DNS SAN for `node_id`: `<node_id>.node.shoal`.
#[must_use]
pub fn node_san(node_id: &NodeId) -> String {
    format!("{node_id}{NODE_SAN_SUFFIX}")
}

/// SHA-256 of `data` (used for node IDs and CA digests).
#[must_use]
pub fn sha256(data: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, data);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Errors of the PKI layer. Messages are meant to be shown to a user as-is.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// The node key file exists but cannot be read (permissions, I/O).
    #[error("cannot read node key file {path}: {source}")]
    KeyRead {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The node key file exists but does not hold a valid key; it is left untouched.
    #[error("node key file {path} is corrupt ({reason}); refusing to overwrite it")]
    KeyCorrupt {
        /// The key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The node key file could not be created.
    #[error("cannot create node key file {path}: {source}")]
    KeyWrite {
        /// The key file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The operating system's random number generator failed.
    #[error("random number generator failed: {0}")]
    Random(String),
    /// A string is not a valid node ID.
    #[error("invalid node ID {0:?}: expected 25 characters of [0-9a-z]")]
    InvalidNodeId(String),
    /// rcgen failed to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    CertGen(#[from] rcgen::Error),
    /// A certificate (or key) could not be parsed or is not what Shoal expects.
    #[error("invalid certificate: {0}")]
    BadCertificate(String),
    /// The CA key does not belong to the CA certificate.
    #[error("the CA key does not match the CA certificate")]
    CaKeyMismatch,
    /// The node certificate does not carry the node's key.
    #[error("the node certificate does not carry this node's public key")]
    NodeCertKeyMismatch,
    /// A TLS configuration could not be built.
    #[error("TLS configuration error: {0}")]
    Tls(String),
    /// The joiner's pinned CA digest did not match any certificate the manager presented.
    #[error("the manager's certificate does not match the CA digest in the join token")]
    CaDigestMismatch,
    /// A join token is malformed, forged, expired or revoked.
    #[error("{0}")]
    Token(String),
}

#[cfg(test)]
mod tests;
