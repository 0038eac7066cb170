//! The cluster CA and node certificates.

use std::fmt;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber, SignatureAlgorithm,
    date_time_ymd,
};
use rustls::pki_types::CertificateDer;

use super::{CLUSTER_SAN, NodeId, PkiError, node_san, parse_cert, sha256};

/// `not_before` of every certificate Shoal makes: far in the past, because a Raspberry Pi has
/// no RTC and may boot with a wrong clock (DESIGN §3, trap T11).
const NOT_BEFORE: (i32, u8, u8) = (2000, 1, 1);
/// How long a node certificate is valid by default (Swarm's default `--cert-expiry`). Nodes
/// renew theirs well before (see `daemon/authz.rs`).
pub const DEFAULT_CERT_LIFETIME: std::time::Duration =
    std::time::Duration::from_secs(90 * 24 * 3600);

/// `not_after` of the CA certificate (rcgen's own default).
const NOT_AFTER: (i32, u8, u8) = (4096, 1, 1);

/// The cluster certificate authority: an ed25519 key and a self-signed CA certificate.
///
/// Made once by `init`; its DER certificate and PKCS#8 key ([`ClusterCa::cert_der`],
/// [`ClusterCa::key_pkcs8_der`]) are what managers replicate, and [`ClusterCa::from_der`]
/// rebuilds it. `Debug` does not print the key.
pub struct ClusterCa {
    cert_der: Vec<u8>,
    key_der: Vec<u8>,
    digest: [u8; 32],
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClusterCa")
            .field("digest", &hex(&self.digest))
            .finish_non_exhaustive()
    }
}

impl ClusterCa {
    /// Creates a new CA (fresh ed25519 key, self-signed certificate with CN
    /// `shoal cluster <cluster_id> CA`).
    pub fn generate(cluster_id: &str) -> Result<ClusterCa, PkiError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ED25519)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "shoal");
        dn.push(DnType::CommonName, format!("shoal cluster {cluster_id} CA"));
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = date_time_ymd(NOT_BEFORE.0, NOT_BEFORE.1, NOT_BEFORE.2);
        params.not_after = date_time_ymd(NOT_AFTER.0, NOT_AFTER.1, NOT_AFTER.2);
        params.serial_number = Some(random_serial()?);
        let cert = params.self_signed(&key)?;
        let cert_der = cert.der().to_vec();
        let key_der = key.serialize_der();
        let issuer = Issuer::new(params, key);
        Ok(ClusterCa {
            digest: sha256(&cert_der),
            cert_der,
            key_der,
            issuer,
        })
    }

    /// Rebuilds a CA from its DER certificate and PKCS#8 DER key (as replicated through Raft).
    /// Checks that the key belongs to the certificate and that the certificate is an ed25519
    /// CA.
    pub fn from_der(cert_der: &[u8], key_pkcs8_der: &[u8]) -> Result<ClusterCa, PkiError> {
        let info = parse_cert(cert_der)?;
        if !info.is_ca {
            return Err(PkiError::BadCertificate(
                "the cluster CA certificate is not a CA".into(),
            ));
        }
        let key = KeyPair::try_from(key_pkcs8_der)
            .map_err(|e| PkiError::BadCertificate(format!("cannot parse the CA key: {e}")))?;
        if key.algorithm() != &rcgen::PKCS_ED25519 || key.der_bytes() != info.public_key {
            return Err(PkiError::CaKeyMismatch);
        }
        let issuer = Issuer::from_ca_cert_der(&CertificateDer::from(cert_der), key)?;
        Ok(ClusterCa {
            cert_der: cert_der.to_vec(),
            key_der: key_pkcs8_der.to_vec(),
            digest: sha256(cert_der),
            issuer,
        })
    }

    /// The CA certificate (DER). Safe to share with every node.
    #[must_use]
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA private key (PKCS#8 DER). Secret: replicate to managers only.
    #[must_use]
    pub fn key_pkcs8_der(&self) -> &[u8] {
        &self.key_der
    }

    /// SHA-256 of the CA certificate DER (the digest pinned by join tokens).
    #[must_use]
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// The CA's ed25519 public key (raw 32 bytes), e.g. to verify join tokens it signed.
    #[must_use]
    pub fn public_key(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        let raw = self.issuer.key().der_bytes();
        if raw.len() == 32 {
            out.copy_from_slice(raw);
        }
        out
    }

    /// Signs `msg` with the CA key (ed25519; 64-byte signature), e.g. for join tokens.
    pub fn sign(&self, msg: &[u8]) -> Result<[u8; 64], PkiError> {
        let sig = rcgen::SigningKey::sign(self.issuer.key(), msg)?;
        sig.as_slice()
            .try_into()
            .map_err(|_| PkiError::Tls("unexpected CA signature length".into()))
    }

    /// Issues a node certificate valid for [`DEFAULT_CERT_LIFETIME`] from now (see
    /// [`ClusterCa::issue_node_cert_until`]).
    pub fn issue_node_cert(
        &self,
        node_public_key: &[u8; 32],
        node_id: &NodeId,
    ) -> Result<Vec<u8>, PkiError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2));
        let lifetime = i64::try_from(DEFAULT_CERT_LIFETIME.as_secs()).unwrap_or(0);
        self.issue_node_cert_until(node_public_key, node_id, now.saturating_add(lifetime))
    }

    /// Issues a node certificate (DER) on the node's own ed25519 public key: EKU ServerAuth +
    /// ClientAuth, DNS SANs `<node_id>.node.shoal` and [`CLUSTER_SAN`], CN = node ID, no IP
    /// SANs, valid from 2000-01-01 (a Pi without an RTC) until `not_after` (Unix seconds,
    /// clamped to the years 2000–9999). `node_id` must be the ID of `node_public_key`.
    pub fn issue_node_cert_until(
        &self,
        node_public_key: &[u8; 32],
        node_id: &NodeId,
        not_after: i64,
    ) -> Result<Vec<u8>, PkiError> {
        ed25519_dalek::VerifyingKey::from_bytes(node_public_key)
            .map_err(|_| PkiError::BadCertificate("not a valid ed25519 public key".into()))?;
        if NodeId::from_public_key(node_public_key) != *node_id {
            return Err(PkiError::BadCertificate(format!(
                "node ID {node_id} does not belong to the given public key"
            )));
        }
        let mut params = CertificateParams::new(vec![node_san(node_id), CLUSTER_SAN.to_owned()])?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "shoal");
        dn.push(DnType::CommonName, node_id.to_string());
        params.distinguished_name = dn;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = date_time_ymd(NOT_BEFORE.0, NOT_BEFORE.1, NOT_BEFORE.2);
        // 2000-01-01 … 9999-12-31 in Unix seconds.
        let secs = not_after.clamp(946_684_800, 253_402_300_799);
        params.not_after = date_time_ymd(1970, 1, 1)
            + std::time::Duration::from_secs(u64::try_from(secs).unwrap_or(0));
        params.serial_number = Some(random_serial()?);
        let cert = params.signed_by(&RawEd25519(*node_public_key), &self.issuer)?;
        Ok(cert.der().to_vec())
    }
}

/// A raw ed25519 public key, as rcgen's `PublicKeyData` (so no CSR is needed).
struct RawEd25519([u8; 32]);

impl PublicKeyData for RawEd25519 {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &rcgen::PKCS_ED25519
    }
}

fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| PkiError::Random(e.to_string()))?;
    // Positive and without a leading zero byte.
    bytes[0] = (bytes[0] & 0x7f) | 0x40;
    Ok(SerialNumber::from_slice(&bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
