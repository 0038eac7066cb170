//! rustls/quinn configurations: ring provider only, TLS 1.3 only, ALPN `shoal/1`, no session
//! resumption (every handshake verifies certificates in full).

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::{ALPN, NodeKey, PkiError, public_key_from_cert, sha256};

/// The only crypto provider Shoal uses: rustls's ring provider (trap T1: never rely on the
/// process-default provider).
#[must_use]
pub fn crypto_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> PkiError {
    PkiError::Tls(e.to_string())
}

fn roots_for(ca_cert_der: &[u8]) -> Result<Arc<RootCertStore>, PkiError> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from(ca_cert_der.to_vec()))
        .map_err(|e| PkiError::BadCertificate(format!("unusable CA certificate: {e}")))?;
    Ok(Arc::new(roots))
}

/// The node's chain (`[node cert, CA cert]`, so a joiner can check the CA digest) and its key.
fn identity(
    node_key: &NodeKey,
    node_cert_der: &[u8],
    ca_cert_der: &[u8],
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
    if public_key_from_cert(node_cert_der)? != node_key.public_key() {
        return Err(PkiError::NodeCertKeyMismatch);
    }
    let chain = vec![
        CertificateDer::from(node_cert_der.to_vec()),
        CertificateDer::from(ca_cert_der.to_vec()),
    ];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(node_key.pkcs8_der()?));
    Ok((chain, key))
}

/// Server side of the cluster port: presents `[node cert, CA cert]`; client certificates are
/// verified under the CA but optional (`allow_unauthenticated`) so joiners can connect — the
/// application must serve only JOIN to a peer whose [`crate::net::peer_public_key`] is `None`.
///
/// The transport parameters are applied by [`crate::net::Endpoint::set_server_config`].
pub fn server_config(
    node_cert_der: &[u8],
    ca_cert_der: &[u8],
    node_key: &NodeKey,
) -> Result<quinn::ServerConfig, PkiError> {
    let provider = crypto_provider();
    let (chain, key) = identity(node_key, node_cert_der, ca_cert_der)?;
    let verifier =
        WebPkiClientVerifier::builder_with_provider(roots_for(ca_cert_der)?, provider.clone())
            .allow_unauthenticated()
            .build()
            .map_err(tls_err)?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(tls_err)?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    cfg.send_tls13_tickets = 0;
    cfg.max_early_data_size = 0;
    let quic = QuicServerConfig::try_from(cfg).map_err(tls_err)?;
    Ok(quinn::ServerConfig::with_crypto(Arc::new(quic)))
}

/// Client side for cluster members: mutual TLS with the node certificate; the server must
/// present a certificate under the CA valid for the server name dialed (use
/// [`super::CLUSTER_SAN`], then check the peer's key).
pub fn client_config(
    node_cert_der: &[u8],
    ca_cert_der: &[u8],
    node_key: &NodeKey,
) -> Result<quinn::ClientConfig, PkiError> {
    let provider = crypto_provider();
    let (chain, key) = identity(node_key, node_cert_der, ca_cert_der)?;
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_root_certificates(roots_for(ca_cert_der)?)
        .with_client_auth_cert(chain, key)
        .map_err(tls_err)?;
    finish_client(cfg)
}

/// Client side for a joiner (no client certificate): the server's chain must contain a
/// certificate whose SHA-256 is `pinned_ca_digest` (from the join token), and the server's
/// certificate must be valid under that CA for the name dialed. Otherwise the handshake fails
/// with "the manager's certificate does not match the CA digest in the join token".
pub fn join_client_config(pinned_ca_digest: [u8; 32]) -> Result<quinn::ClientConfig, PkiError> {
    let provider = crypto_provider();
    let verifier = Arc::new(PinnedCaVerifier {
        digest: pinned_ca_digest,
        provider: provider.clone(),
    });
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    finish_client(cfg)
}

fn finish_client(mut cfg: rustls::ClientConfig) -> Result<quinn::ClientConfig, PkiError> {
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    cfg.resumption = rustls::client::Resumption::disabled();
    cfg.enable_early_data = false;
    let quic = QuicClientConfig::try_from(cfg).map_err(tls_err)?;
    Ok(quinn::ClientConfig::new(Arc::new(quic)))
}

/// Verifies a manager's certificate against the CA pinned by a join token.
#[derive(Debug)]
struct PinnedCaVerifier {
    digest: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCaVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mismatch =
            || rustls::Error::Other(rustls::OtherError(Arc::new(PkiError::CaDigestMismatch)));
        let ca = intermediates
            .iter()
            .find(|c| sha256(c.as_ref()) == self.digest)
            .ok_or_else(mismatch)?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned()).map_err(|_| mismatch())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Checks a node certificate as a peer would: signed by the CA `ca_cert_der`, valid at `now`
/// (Unix seconds) for [`super::CLUSTER_SAN`], and carrying `expected_key`. A joiner checks the
/// certificate a manager issued it this way; a worker checks a renewed one.
pub fn verify_node_cert(
    node_cert_der: &[u8],
    ca_cert_der: &[u8],
    expected_key: &[u8; 32],
    now: i64,
) -> Result<(), PkiError> {
    if public_key_from_cert(node_cert_der)? != *expected_key {
        return Err(PkiError::NodeCertKeyMismatch);
    }
    let verifier =
        WebPkiServerVerifier::builder_with_provider(roots_for(ca_cert_der)?, crypto_provider())
            .build()
            .map_err(tls_err)?;
    let name = ServerName::try_from(super::CLUSTER_SAN).map_err(tls_err)?;
    let at = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
        u64::try_from(now).unwrap_or(0),
    ));
    verifier
        .verify_server_cert(
            &CertificateDer::from(node_cert_der.to_vec()),
            &[],
            &name,
            &[],
            at,
        )
        .map_err(tls_err)?;
    Ok(())
}
