//! Reading certificates: the few fields Shoal uses, through `x509-parser`.
//!
//! Whether a certificate is *trustworthy* (signature, chain, validity at a time) is rustls's
//! and webpki's job (see [`super::verify_node_cert`]); this module only reads what a
//! certificate says. Malformed input is an error, never a panic.

use x509_parser::certificate::X509Certificate;
use x509_parser::der_parser::oid::Oid;
use x509_parser::extensions::{GeneralName, ParsedExtension, X509Extension};
use x509_parser::oid_registry::{
    OID_SIG_ED25519, OID_X509_EXT_BASIC_CONSTRAINTS, OID_X509_EXT_SUBJECT_ALT_NAME,
};
use x509_parser::prelude::FromDer as _;

use super::{NodeId, PkiError};

/// What Shoal reads from a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The ed25519 subject public key (raw 32 bytes).
    pub public_key: [u8; 32],
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// Number of IP-address SANs (Shoal never issues any).
    pub ip_sans: usize,
    /// `notBefore`, Unix seconds.
    pub not_before: i64,
    /// `notAfter`, Unix seconds.
    pub not_after: i64,
    /// Basic constraints `cA` flag.
    pub is_ca: bool,
}

/// Parses the parts of an X.509 DER certificate Shoal cares about. Only ed25519 subject keys
/// are accepted; bytes after the certificate, a duplicated or malformed subject alternative
/// name or basic constraints extension, and a DNS name that is not UTF-8 are refused. Never
/// panics on malformed input. Like `x509-parser`, it overlooks some non-DER tag bits outside
/// the subject key; a certificate that matters is checked by webpki, which does not.
pub fn parse_cert(cert_der: &[u8]) -> Result<CertInfo, PkiError> {
    parse_cert_inner(cert_der).map_err(PkiError::BadCertificate)
}

fn parse_cert_inner(cert_der: &[u8]) -> Result<CertInfo, String> {
    let (rest, cert) = X509Certificate::from_der(cert_der).map_err(|e| match e {
        x509_parser::nom::Err::Incomplete(_) => "truncated DER".to_owned(),
        x509_parser::nom::Err::Error(e) | x509_parser::nom::Err::Failure(e) => {
            format!("not an X.509 DER certificate ({e})")
        }
    })?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate".into());
    }

    let validity = cert.validity();
    let mut info = CertInfo {
        public_key: ed25519_key(&cert)?,
        dns_names: Vec::new(),
        ip_sans: 0,
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        is_ca: false,
    };

    if let Some(ext) = unique_extension(
        &cert,
        &OID_X509_EXT_SUBJECT_ALT_NAME,
        "subject alternative name",
    )? {
        let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() else {
            return Err("malformed subject alternative name extension".into());
        };
        for name in &san.general_names {
            match name {
                GeneralName::DNSName(dns) => info.dns_names.push((*dns).to_owned()),
                GeneralName::IPAddress(_) => info.ip_sans += 1,
                GeneralName::Invalid(tag, _) if tag.0 == 2 => return Err("bad DNS name".into()),
                _ => {}
            }
        }
    }
    if let Some(ext) =
        unique_extension(&cert, &OID_X509_EXT_BASIC_CONSTRAINTS, "basic constraints")?
    {
        let ParsedExtension::BasicConstraints(bc) = ext.parsed_extension() else {
            return Err("malformed basic constraints extension".into());
        };
        info.is_ca = bc.ca;
    }
    Ok(info)
}

/// The extension `oid` (`what`, for the error), if present; an error if it appears twice.
fn unique_extension<'c, 'a>(
    cert: &'c X509Certificate<'a>,
    oid: &Oid<'_>,
    what: &str,
) -> Result<Option<&'c X509Extension<'a>>, String> {
    cert.get_extension_unique(oid)
        .map_err(|e| format!("{what} extension: {e}"))
}

/// DER of an ed25519 SubjectPublicKeyInfo up to the key: SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (no unused bits) }; the 32-byte key follows.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// The subject key, if it is an ed25519 key (RFC 8410: algorithm 1.3.101.112 without
/// parameters, a 32-byte key). The SPKI must also be in its one DER form: `x509-parser`
/// overlooks some non-DER tag bits, and the key is the node's identity.
fn ed25519_key(cert: &X509Certificate<'_>) -> Result<[u8; 32], String> {
    let not_ed25519 = || "the subject key is not an ed25519 key".to_owned();
    let spki = cert.public_key();
    let bits = &spki.subject_public_key;
    if spki.algorithm.algorithm != OID_SIG_ED25519
        || spki.algorithm.parameters.is_some()
        || bits.unused_bits != 0
    {
        return Err(not_ed25519());
    }
    let key: [u8; 32] = bits.data.as_ref().try_into().map_err(|_| not_ed25519())?;
    if spki.raw.strip_prefix(&ED25519_SPKI_PREFIX[..]) != Some(&key[..]) {
        return Err(not_ed25519());
    }
    Ok(key)
}

/// The raw ed25519 public key of a DER certificate (validates the SPKI algorithm and length).
pub fn public_key_from_cert(cert_der: &[u8]) -> Result<[u8; 32], PkiError> {
    Ok(parse_cert(cert_der)?.public_key)
}

/// The node ID of the key a DER certificate carries.
pub fn node_id_from_cert(cert_der: &[u8]) -> Result<NodeId, PkiError> {
    Ok(NodeId::from_public_key(&public_key_from_cert(cert_der)?))
}
