use std::os::unix::fs::PermissionsExt as _;

use ed25519_dalek::{SigningKey, Verifier as _};

use super::*;

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[test]
fn key_is_created_once_with_mode_0600_and_reloaded() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.key");
    let a = NodeKey::load_or_create(&path).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let b = NodeKey::load_or_create(&path).unwrap();
    assert_eq!(a.public_key(), b.public_key());
    assert_eq!(a.node_id(), b.node_id());
    // No temporary files left behind.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    let sig = a.sign(b"hello");
    a.verifying_key().verify(b"hello", &sig).unwrap();
    assert_eq!(a.signing_key().verifying_key().to_bytes(), a.public_key());
}

#[test]
fn corrupt_key_file_is_refused_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.key");
    for content in [
        &b"garbage"[..],
        b"",
        b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        &[0xff, 0xfe, 0x00][..],
    ] {
        std::fs::write(&path, content).unwrap();
        let err = NodeKey::load_or_create(&path).unwrap_err();
        assert!(matches!(err, PkiError::KeyCorrupt { .. }), "{err}");
        assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), content);
    }
    // A directory where the key should be: an error naming it.
    let dpath = dir.path().join("dir.key");
    std::fs::create_dir(&dpath).unwrap();
    let err = NodeKey::load_or_create(&dpath).unwrap_err();
    assert!(err.to_string().contains(dpath.to_str().unwrap()), "{err}");
    // Missing parent directory: a write error naming the file.
    let missing = dir.path().join("nope").join("node.key");
    let err = NodeKey::load_or_create(&missing).unwrap_err();
    assert!(matches!(err, PkiError::KeyWrite { .. }), "{err}");
}

#[test]
fn node_id_is_stable_and_round_trips() {
    let key = NodeKey::from_signing_key(SigningKey::from_bytes(&[7u8; 32]));
    let id = key.node_id();
    assert_eq!(id, NodeId::from_public_key(&key.public_key()));
    let s = id.to_string();
    assert_eq!(s.len(), 25);
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
    );
    // Pinned value: the derivation must never change (IDs are stored in Raft).
    assert_eq!(s, "f2f7ccvac6h4d3kn1nzh4rkli");
    let parsed: NodeId = s.parse().unwrap();
    assert_eq!(parsed, id);
    let json = serde_json::to_string(&id).unwrap();
    assert_eq!(json, format!("\"{s}\""));
    assert_eq!(serde_json::from_str::<NodeId>(&json).unwrap(), id);
    let bytes = postcard::to_allocvec(&id).unwrap();
    assert_eq!(postcard::from_bytes::<NodeId>(&bytes).unwrap(), id);
    for bad in [
        "",
        "abc",
        &s[..24],
        &format!("{s}0"),
        &s.to_uppercase(),
        "zzzzzzzzzzzzzzzzzzzzzzzzz", // exceeds 128 bits
        "0000000000000000000000-00",
    ] {
        assert!(bad.parse::<NodeId>().is_err(), "{bad:?} accepted");
    }
    assert!(serde_json::from_str::<NodeId>("\"nope\"").is_err());
    let other = NodeKey::generate().unwrap().node_id();
    assert_ne!(other, id);
    assert_eq!(other.cmp(&id), other.to_string().cmp(&s));
}

#[test]
fn node_id_pinned_vector() {
    // sha256 of the all-zero public key bytes, first 128 bits, base 36, 25 digits.
    let id = NodeId::from_public_key(&[0u8; 32]);
    let digest = sha256(&[0u8; 32]);
    let n = u128::from_be_bytes(digest[..16].try_into().unwrap());
    let mut expect = String::new();
    let mut m = n;
    for _ in 0..25 {
        expect.insert(0, char::from_digit((m % 36) as u32, 36).unwrap());
        m /= 36;
    }
    assert_eq!(id.to_string(), expect);
}

#[test]
fn ca_reloads_from_der_and_issues_node_certs() {
    let ca = ClusterCa::generate("c1").unwrap();
    let info = parse_cert(ca.cert_der()).unwrap();
    assert!(info.is_ca);
    assert_eq!(info.public_key, ca.public_key());
    assert_eq!(ca.digest(), sha256(ca.cert_der()));

    let again = ClusterCa::from_der(ca.cert_der(), ca.key_pkcs8_der()).unwrap();
    assert_eq!(again.digest(), ca.digest());
    assert_eq!(again.public_key(), ca.public_key());

    let node = NodeKey::generate().unwrap();
    for issuer in [&ca, &again] {
        let cert = issuer
            .issue_node_cert(&node.public_key(), &node.node_id())
            .unwrap();
        let info = parse_cert(&cert).unwrap();
        assert_eq!(info.public_key, node.public_key());
        assert_eq!(public_key_from_cert(&cert).unwrap(), node.public_key());
        assert_eq!(node_id_from_cert(&cert).unwrap(), node.node_id());
        assert_eq!(info.ip_sans, 0);
        assert!(!info.is_ca);
        assert!(info.dns_names.contains(&node_san(&node.node_id())));
        assert!(info.dns_names.contains(&CLUSTER_SAN.to_owned()));
        assert!(info.not_before < now_unix() - 10 * 365 * 86_400);
        // Finite lifetime (issue 14): 90 days by default.
        let lifetime = DEFAULT_CERT_LIFETIME.as_secs() as i64;
        assert!((info.not_after - (now_unix() + lifetime)).abs() < 60);
    }
    // An explicit expiry is kept to the second; a certificate is checked under its CA.
    let until = now_unix() + 30;
    let short = ca
        .issue_node_cert_until(&node.public_key(), &node.node_id(), until)
        .unwrap();
    assert_eq!(parse_cert(&short).unwrap().not_after, until);
    verify_node_cert(&short, ca.cert_der(), &node.public_key(), now_unix()).unwrap();
    assert!(verify_node_cert(&short, ca.cert_der(), &node.public_key(), until + 1).is_err());
    let other = ClusterCa::generate("other").unwrap();
    assert!(verify_node_cert(&short, other.cert_der(), &node.public_key(), now_unix()).is_err());
    assert!(verify_node_cert(&short, ca.cert_der(), &[7; 32], now_unix()).is_err());

    // CA signatures verify with its public key.
    let sig = ca.sign(b"token").unwrap();
    let vk = ed25519_dalek::VerifyingKey::from_bytes(&ca.public_key()).unwrap();
    vk.verify_strict(b"token", &ed25519_dalek::Signature::from_bytes(&sig))
        .unwrap();
}

#[test]
fn ca_reload_refuses_a_foreign_key_and_bad_input() {
    let ca = ClusterCa::generate("c1").unwrap();
    let other = ClusterCa::generate("c2").unwrap();
    assert!(matches!(
        ClusterCa::from_der(ca.cert_der(), other.key_pkcs8_der()),
        Err(PkiError::CaKeyMismatch)
    ));
    assert!(ClusterCa::from_der(b"junk", ca.key_pkcs8_der()).is_err());
    assert!(ClusterCa::from_der(ca.cert_der(), b"junk").is_err());
    // A node certificate is not a CA.
    let node = NodeKey::generate().unwrap();
    let cert = ca
        .issue_node_cert(&node.public_key(), &node.node_id())
        .unwrap();
    assert!(ClusterCa::from_der(&cert, ca.key_pkcs8_der()).is_err());
    // The node ID must belong to the key.
    let stranger = NodeKey::generate().unwrap();
    assert!(
        ca.issue_node_cert(&node.public_key(), &stranger.node_id())
            .is_err()
    );
}

#[test]
fn cert_parser_never_panics_on_garbage() {
    let ca = ClusterCa::generate("c1").unwrap();
    let der = ca.cert_der().to_vec();
    for n in 0..der.len() {
        assert!(parse_cert(&der[..n]).is_err());
    }
    for i in 0..der.len() {
        let mut bad = der.clone();
        bad[i] ^= 0xff;
        let _ = parse_cert(&bad);
    }
    let mut long = der;
    long.push(0);
    assert!(parse_cert(&long).is_err());
    assert!(parse_cert(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
}

#[test]
fn tls_configs_build_and_check_the_key() {
    let ca = ClusterCa::generate("c1").unwrap();
    let node = NodeKey::generate().unwrap();
    let cert = ca
        .issue_node_cert(&node.public_key(), &node.node_id())
        .unwrap();
    server_config(&cert, ca.cert_der(), &node).unwrap();
    client_config(&cert, ca.cert_der(), &node).unwrap();
    join_client_config(ca.digest()).unwrap();
    let stranger = NodeKey::generate().unwrap();
    assert!(matches!(
        server_config(&cert, ca.cert_der(), &stranger),
        Err(PkiError::NodeCertKeyMismatch)
    ));
    assert!(client_config(&cert, b"junk", &node).is_err());
}

/// A self-signed certificate on a fresh ed25519 key with `exts` as extra extensions (and no
/// SANs of rcgen's own), to build certificates Shoal never issues.
fn cert_with_extensions(exts: Vec<rcgen::CustomExtension>) -> Vec<u8> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.custom_extensions = exts;
    params.self_signed(&key).unwrap().der().to_vec()
}

fn assert_refused(der: &[u8], what: &str, needle: &str) {
    let err = parse_cert(der).expect_err(what).to_string();
    assert!(err.starts_with("invalid certificate: "), "{what}: {err}");
    assert!(!err.contains('\n'), "{what}: not one line: {err}");
    assert!(err.contains(needle), "{what}: {err:?} lacks {needle:?}");
}

#[test]
fn cert_times_are_read_to_the_second() {
    let ca = ClusterCa::generate("c1").unwrap();
    let info = parse_cert(ca.cert_der()).unwrap();
    assert_eq!(info.not_before, 946_684_800); // 2000-01-01
    assert_eq!(info.not_after, 67_090_118_400); // 4096-01-01 (GeneralizedTime)
    let node = NodeKey::generate().unwrap();
    for (until, expect) in [
        (now_unix() + 30, now_unix() + 30),
        (2_524_607_999, 2_524_607_999), // 2049-12-31 23:59:59, the last UTCTime
        (2_524_608_000, 2_524_608_000), // 2050-01-01, the first GeneralizedTime
        (0, 946_684_800),               // clamped to 2000-01-01
        (i64::MAX, 253_402_300_799),    // clamped to 9999-12-31 23:59:59
    ] {
        let cert = ca
            .issue_node_cert_until(&node.public_key(), &node.node_id(), until)
            .unwrap();
        let info = parse_cert(&cert).unwrap();
        assert_eq!(info.not_after, expect, "until {until}");
        assert_eq!(info.not_before, 946_684_800);
    }
}

#[test]
fn malformed_certificates_are_refused_with_one_line_errors() {
    let ca = ClusterCa::generate("c1").unwrap();
    let node = NodeKey::generate().unwrap();
    let node_cert = ca
        .issue_node_cert(&node.public_key(), &node.node_id())
        .unwrap();
    for der in [ca.cert_der(), &node_cert[..]] {
        // Every truncation, and anything after the certificate.
        for n in 0..der.len() {
            let err = parse_cert(&der[..n]).unwrap_err().to_string();
            assert!(!err.contains('\n'), "{err}");
            assert!(public_key_from_cert(&der[..n]).is_err());
            assert!(node_id_from_cert(&der[..n]).is_err());
        }
        let mut long = der.to_vec();
        long.push(0);
        assert_refused(&long, "trailing byte", "trailing bytes");
        // Every byte flipped: an answer, never a panic.
        for i in 0..der.len() {
            for mask in [0xff, 0x01, 0x80] {
                let mut bad = der.to_vec();
                bad[i] ^= mask;
                if let Err(e) = parse_cert(&bad) {
                    assert!(!e.to_string().contains('\n'), "{e}");
                }
            }
        }
    }
    for junk in [
        &[][..],
        b"junk",
        &[0x30],
        &[0x30, 0x00],
        &[0x30, 0x80, 0x00, 0x00],
        &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
        &[
            0x30, 0x89, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        ],
        &[0x1f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
    ] {
        assert_refused(junk, &format!("{junk:02x?}"), "");
    }

    // The subject key in anything but its one DER form (x509-parser alone would overlook
    // these tag bits).
    let prefix = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let at = node_cert
        .windows(prefix.len())
        .position(|w| w == prefix)
        .unwrap();
    for (i, mask) in [(0, 0x80), (2, 0x80), (4, 0x01), (4, 0x80), (9, 0x80)] {
        let mut bad = node_cert.clone();
        bad[at + i] ^= mask;
        assert!(
            parse_cert(&bad).is_err(),
            "SPKI byte {i} ^ {mask:#x} accepted"
        );
    }

    // A well-formed certificate on a key that is not ed25519.
    let p256 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let params = rcgen::CertificateParams::new(vec![CLUSTER_SAN.to_owned()]).unwrap();
    let ecdsa = params.self_signed(&p256).unwrap().der().to_vec();
    assert_refused(&ecdsa, "P-256 key", "not an ed25519 key");

    // The extensions Shoal reads must be well-formed and appear once.
    let ext = rcgen::CustomExtension::from_oid_content;
    const SAN: &[u64] = &[2, 5, 29, 17];
    const BC: &[u64] = &[2, 5, 29, 19];
    let ok = cert_with_extensions(vec![
        ext(
            SAN,
            vec![0x30, 0x08, 0x82, 0x02, b'a', b'b', 0x87, 0x02, 10, 0],
        ),
        ext(BC, vec![0x30, 0x03, 0x01, 0x01, 0xff]),
    ]);
    let info = parse_cert(&ok).unwrap();
    assert_eq!(info.dns_names, ["ab"]);
    assert_eq!(info.ip_sans, 1);
    assert!(info.is_ca);
    let cases: [(&str, Vec<rcgen::CustomExtension>, &str); 6] = [
        (
            "SAN not a sequence",
            vec![ext(SAN, vec![0x04, 0x00])],
            "subject alternative name",
        ),
        (
            "SAN entry truncated",
            vec![ext(SAN, vec![0x30, 0x03, 0x82, 0x05, b'a'])],
            "subject alternative name",
        ),
        (
            "DNS name not UTF-8",
            vec![ext(SAN, vec![0x30, 0x03, 0x82, 0x01, 0xff])],
            "bad DNS name",
        ),
        (
            "two SAN extensions",
            vec![
                ext(SAN, vec![0x30, 0x03, 0x82, 0x01, b'a']),
                ext(SAN, vec![0x30, 0x03, 0x82, 0x01, b'b']),
            ],
            "duplicate",
        ),
        (
            "basic constraints not a sequence",
            vec![ext(BC, vec![0x01, 0x01, 0xff])],
            "basic constraints",
        ),
        (
            "two basic constraints extensions",
            vec![
                ext(BC, vec![0x30, 0x00]),
                ext(BC, vec![0x30, 0x03, 0x01, 0x01, 0xff]),
            ],
            "duplicate",
        ),
    ];
    for (what, exts, needle) in cases {
        assert_refused(&cert_with_extensions(exts), what, needle);
    }
}
