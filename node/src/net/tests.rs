use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    Accepted, AcceptedRx, CLOSE_TOO_MANY_CONNECTIONS, CLOSE_UNAUTHENTICATED_EXPIRED,
    ConnectionLimits, Endpoint, FRAME_HEADER_LEN, FRAME_VERSION, MAX_BIDI_STREAMS,
    MAX_CONNECTIONS_PER_IP, MAX_DATAGRAM, MAX_UNAUTHENTICATED_PER_IP, NetError, Pool,
    UNAUTHENTICATED_BIDI_STREAMS, decode_body, peer_node_id, peer_public_key, read_body,
    read_frame, read_frame_raw_within, read_frame_within, read_header, request, respond,
    send_datagram, write_frame,
};
use crate::pki::{self, ClusterCa, NodeKey};

const T: Duration = Duration::from_secs(3);

struct TestNode {
    key: NodeKey,
    endpoint: Endpoint,
    accepted: AcceptedRx,
    addr: SocketAddr,
}

/// Awaits `fut`, failing the test if it does not end within `deadline`: the bound under
/// test must hold, but the deadline is generous (a loaded CI machine), and nothing asserts
/// on how fast it was.
async fn within<T>(deadline: Duration, what: &str, fut: impl std::future::Future<Output = T>) -> T {
    match tokio::time::timeout(deadline, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what} did not end within {deadline:?}"),
    }
}

/// A node with a certificate from `ca`, serving, with its client config installed.
fn node(ca: &ClusterCa) -> TestNode {
    let key = NodeKey::generate().unwrap();
    let cert = ca
        .issue_node_cert(&key.public_key(), &key.node_id())
        .unwrap();
    let (endpoint, accepted) = Endpoint::bind("127.0.0.1:0".parse().unwrap(), &key).unwrap();
    endpoint.set_server_config(pki::server_config(&cert, ca.cert_der(), &key).unwrap());
    endpoint.set_client_config(pki::client_config(&cert, ca.cert_der(), &key).unwrap());
    let addr = endpoint.local_addr().unwrap();
    TestNode {
        key,
        endpoint,
        accepted,
        addr,
    }
}

/// A client-only endpoint with no certificate.
fn bare() -> (Endpoint, AcceptedRx) {
    let key = NodeKey::generate().unwrap();
    Endpoint::bind("127.0.0.1:0".parse().unwrap(), &key).unwrap()
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Ping {
    v: u8,
    text: String,
}

#[derive(Debug, Serialize, Deserialize, PartialEq)]
struct Pong {
    v: u8,
    len: u32,
}

async fn next_accepted(rx: &mut AcceptedRx) -> Accepted {
    tokio::time::timeout(T, rx.recv())
        .await
        .expect("accept timed out")
        .expect("accept loop ended")
}

/// Serves one Ping → Pong on the next bi-stream.
async fn serve_one(conn: quinn::Connection) {
    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
    let (tag, ping): (u8, Ping) = read_frame(&mut recv, 1024).await.unwrap();
    let pong = Pong {
        v: 1,
        len: ping.text.len() as u32,
    };
    respond(&mut send, tag, &pong).await.unwrap();
    // Keep the stream alive until the peer has read the response.
    let _ = send.stopped().await;
}

#[tokio::test]
async fn mutual_tls_stream_and_datagram() {
    let ca = ClusterCa::generate("c1").unwrap();
    let mut a = node(&ca);
    let b = node(&ca);

    let conn = b
        .endpoint
        .connect(a.addr, pki::CLUSTER_SAN, None, T)
        .await
        .unwrap();
    assert_eq!(peer_public_key(&conn), Some(a.key.public_key()));
    assert_eq!(peer_node_id(&conn), Some(a.key.node_id()));
    let acc = next_accepted(&mut a.accepted).await;
    assert_eq!(acc.peer_key, Some(b.key.public_key()));
    assert_eq!(acc.peer_node_id, Some(b.key.node_id()));
    assert_eq!(peer_public_key(&acc.connection), Some(b.key.public_key()));

    let server = tokio::spawn(serve_one(acc.connection.clone()));
    let pong: Pong = request(
        &conn,
        7,
        &Ping {
            v: 1,
            text: "hello".into(),
        },
        1024,
        T,
    )
    .await
    .unwrap();
    assert_eq!(pong, Pong { v: 1, len: 5 });
    server.await.unwrap();

    // Datagrams both ways; the initial limit is 1162 bytes.
    assert!(conn.max_datagram_size().unwrap() >= MAX_DATAGRAM);
    send_datagram(&conn, Bytes::from_static(b"swim")).unwrap();
    let got = tokio::time::timeout(T, acc.connection.read_datagram())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got[..], b"swim");
    send_datagram(&acc.connection, Bytes::from(vec![1u8; MAX_DATAGRAM])).unwrap();
    let got = tokio::time::timeout(T, conn.read_datagram())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.len(), MAX_DATAGRAM);
    assert!(matches!(
        send_datagram(&conn, Bytes::from(vec![0u8; 64 * 1024])),
        Err(NetError::DatagramTooLarge { .. })
    ));

    a.endpoint.close();
    b.endpoint.close();
}

#[tokio::test]
async fn server_refuses_a_client_certificate_from_another_ca() {
    let ca = ClusterCa::generate("c1").unwrap();
    let other = ClusterCa::generate("c2").unwrap();
    let mut a = node(&ca);
    let c = node(&other);
    // c trusts ca's server (so only the server's check of c's certificate can fail).
    let c_cert = other
        .issue_node_cert(&c.key.public_key(), &c.key.node_id())
        .unwrap();
    let mixed = mixed_client(&c_cert, ca.cert_der(), &c.key);
    match c
        .endpoint
        .connect(a.addr, pki::CLUSTER_SAN, Some(mixed), T)
        .await
    {
        Err(NetError::Tls { .. }) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(conn) => {
            // TLS 1.3: the client finishes first; the server's refusal closes the connection.
            let err = tokio::time::timeout(T, conn.closed()).await.unwrap();
            let msg = err.to_string();
            assert!(
                msg.contains("cryptographic handshake failed") || msg.contains("certificate"),
                "{msg}"
            );
        }
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), a.accepted.recv())
            .await
            .is_err(),
        "server accepted a foreign certificate"
    );
}

/// A client that trusts `trusted_ca` but presents `cert`.
fn mixed_client(cert: &[u8], trusted_ca: &[u8], key: &NodeKey) -> quinn::ClientConfig {
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(trusted_ca.to_vec()))
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(pki::crypto_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(
            vec![CertificateDer::from(cert.to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.pkcs8_der().unwrap())),
        )
        .unwrap();
    cfg.alpn_protocols = vec![pki::ALPN.to_vec()];
    quinn::ClientConfig::new(std::sync::Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(cfg).unwrap(),
    ))
}

#[tokio::test]
async fn client_refuses_a_server_from_another_ca() {
    let ca = ClusterCa::generate("c1").unwrap();
    let other = ClusterCa::generate("c2").unwrap();
    let b = node(&ca);
    let mut d = node(&other);
    let err = b
        .endpoint
        .connect(d.addr, pki::CLUSTER_SAN, None, T)
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Tls { .. }), "{err}");
    assert!(err.to_string().contains("certificate"), "{err}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), d.accepted.recv())
            .await
            .is_err()
    );
    // The wrong server name is refused as well.
    let a = node(&ca);
    let err = b
        .endpoint
        .connect(a.addr, "other.name", None, T)
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Tls { .. }), "{err}");
}

#[tokio::test]
async fn client_without_certificate_is_let_in_unauthenticated() {
    let ca = ClusterCa::generate("c1").unwrap();
    let mut a = node(&ca);
    let (joiner, _rx) = bare();
    let cfg = pki::join_client_config(ca.digest()).unwrap();
    let conn = joiner
        .connect(a.addr, pki::CLUSTER_SAN, Some(cfg), T)
        .await
        .unwrap();
    assert_eq!(peer_public_key(&conn), Some(a.key.public_key()));
    let acc = next_accepted(&mut a.accepted).await;
    assert_eq!(acc.peer_key, None);
    assert_eq!(acc.peer_node_id, None);
    assert_eq!(peer_public_key(&acc.connection), None);
    // Streams work (the application decides to serve only JOIN).
    let server = tokio::spawn(serve_one(acc.connection.clone()));
    let pong: Pong = request(
        &conn,
        1,
        &Ping {
            v: 1,
            text: "join".into(),
        },
        1024,
        T,
    )
    .await
    .unwrap();
    assert_eq!(pong.len, 4);
    server.await.unwrap();
}

#[tokio::test]
async fn join_with_a_wrong_ca_digest_is_refused() {
    let ca = ClusterCa::generate("c1").unwrap();
    let other = ClusterCa::generate("c2").unwrap();
    let mut a = node(&ca);
    let (joiner, _rx) = bare();
    for digest in [[0u8; 32], other.digest()] {
        let cfg = pki::join_client_config(digest).unwrap();
        let err = joiner
            .connect(a.addr, pki::CLUSTER_SAN, Some(cfg), T)
            .await
            .unwrap_err();
        assert!(matches!(err, NetError::Tls { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("does not match the CA digest in the join token"),
            "{err}"
        );
    }
    // A server of another CA with this CA's digest: its chain lacks our CA.
    let d = node(&other);
    let cfg = pki::join_client_config(ca.digest()).unwrap();
    let err = joiner
        .connect(d.addr, pki::CLUSTER_SAN, Some(cfg), T)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("CA digest"), "{err}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), a.accepted.recv())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn dial_errors_are_typed_and_bounded() {
    let (client, _rx) = bare();
    let ca = ClusterCa::generate("c1").unwrap();
    client.set_client_config(pki::join_client_config(ca.digest()).unwrap());
    // Nobody answers on this port.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let err = within(
        Duration::from_secs(10),
        "a dial bounded to 300 ms",
        client.connect(addr, pki::CLUSTER_SAN, None, Duration::from_millis(300)),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, NetError::Timeout { .. }), "{err}");
    assert!(err.to_string().contains(&addr.to_string()));
    // A client-only endpoint (no server config) does not answer handshakes.
    let (not_serving, _rx2) = bare();
    let err = client
        .connect(
            not_serving.local_addr().unwrap(),
            pki::CLUSTER_SAN,
            None,
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Timeout { .. }), "{err}");
    // A server whose application stopped accepting refuses.
    let closing = node(&ca);
    drop(closing.accepted);
    let err = client
        .connect(closing.addr, pki::CLUSTER_SAN, None, T)
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Refused { .. }), "{err}");
    // No client config at all.
    let (naked, _rx3) = bare();
    assert!(matches!(
        naked.connect(addr, pki::CLUSTER_SAN, None, T).await,
        Err(NetError::NoClientConfig)
    ));
}

/// A connected pair (client side, server side).
async fn pair() -> (quinn::Connection, quinn::Connection, TestNode, TestNode) {
    let ca = ClusterCa::generate("c1").unwrap();
    let mut a = node(&ca);
    let b = node(&ca);
    let conn = b
        .endpoint
        .connect(a.addr, pki::CLUSTER_SAN, None, T)
        .await
        .unwrap();
    let acc = next_accepted(&mut a.accepted).await;
    (conn, acc.connection, a, b)
}

/// Writes raw bytes on a new stream from `client`; returns the result of `read_frame` on the
/// server side.
async fn read_raw(
    client: &quinn::Connection,
    server: &quinn::Connection,
    raw: Vec<u8>,
    max_len: usize,
) -> Result<(u8, Ping), NetError> {
    let (mut send, _recv) = client.open_bi().await.unwrap();
    send.write_all(&raw).await.unwrap();
    send.finish().unwrap();
    let (_s, mut recv) = tokio::time::timeout(T, server.accept_bi())
        .await
        .unwrap()
        .unwrap();
    tokio::time::timeout(T, read_frame::<Ping>(&mut recv, max_len))
        .await
        .unwrap()
}

#[tokio::test]
async fn bad_frames_are_rejected() {
    let (client, server, _a, _b) = pair().await;
    let ping = Ping {
        v: 1,
        text: "x".repeat(100),
    };
    let mut good = vec![3u8, 0, 0, 0, 0, FRAME_VERSION];
    good.extend(postcard::to_allocvec(&ping).unwrap());
    let body = (good.len() - 5) as u32;
    good[1..5].copy_from_slice(&body.to_be_bytes());
    assert_eq!(
        read_raw(&client, &server, good.clone(), 1024)
            .await
            .unwrap(),
        (
            3,
            Ping {
                v: 1,
                text: "x".repeat(100)
            }
        )
    );
    // Oversized for the reader's limit.
    assert!(matches!(
        read_raw(&client, &server, good.clone(), 50).await,
        Err(NetError::FrameTooLarge { max: 50, .. })
    ));
    // A huge announced length is refused without allocating it.
    assert!(matches!(
        read_raw(
            &client,
            &server,
            vec![3, 0xff, 0xff, 0xff, 0xff, 1],
            1 << 20
        )
        .await,
        Err(NetError::FrameTooLarge { .. })
    ));
    // Unknown version.
    let mut v9 = good.clone();
    v9[5] = 9;
    assert!(matches!(
        read_raw(&client, &server, v9, 1024).await,
        Err(NetError::UnsupportedVersion(9))
    ));
    // Undecodable body (string length beyond the body).
    assert!(matches!(
        read_raw(&client, &server, vec![3, 0, 0, 0, 3, 1, 1, 200], 1024).await,
        Err(NetError::Malformed(_))
    ));
    // Empty body.
    assert!(matches!(
        read_raw(&client, &server, vec![3, 0, 0, 0, 0], 1024).await,
        Err(NetError::Malformed(_))
    ));
    // Truncated: the stream ends before the announced length.
    let mut short = good.clone();
    short.truncate(20);
    assert!(matches!(
        read_raw(&client, &server, short, 1024).await,
        Err(NetError::Read(_))
    ));
    // Truncated header.
    assert!(matches!(
        read_raw(&client, &server, vec![3, 0], 1024).await,
        Err(NetError::Read(_))
    ));
}

#[tokio::test]
async fn request_times_out_and_checks_the_tag() {
    let (client, server, _a, _b) = pair().await;
    // Nobody answers: bounded by the timeout.
    let err = within(
        Duration::from_secs(10),
        "a request bounded to 200 ms",
        request::<Ping, Pong>(
            &client,
            1,
            &Ping {
                v: 1,
                text: String::new(),
            },
            1024,
            Duration::from_millis(200),
        ),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, NetError::RequestTimeout(_)), "{err}");
    // Drain that stream, then answer the next one with another tag.
    let (_s, _r) = server.accept_bi().await.unwrap();
    let srv = server.clone();
    let task = tokio::spawn(async move {
        let (mut send, mut recv) = srv.accept_bi().await.unwrap();
        let (_tag, _ping): (u8, Ping) = read_frame(&mut recv, 1024).await.unwrap();
        respond(&mut send, 99, &Pong { v: 1, len: 0 })
            .await
            .unwrap();
        let _ = send.stopped().await;
    });
    let err = request::<Ping, Pong>(
        &client,
        2,
        &Ping {
            v: 1,
            text: String::new(),
        },
        1024,
        T,
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            NetError::UnexpectedTag {
                expected: 2,
                got: 99
            }
        ),
        "{err}"
    );
    task.await.unwrap();
}

#[tokio::test]
async fn pool_reuses_replaces_and_checks_identity() {
    let ca = ClusterCa::generate("c1").unwrap();
    let mut a = node(&ca);
    let b = node(&ca);
    let (dialed_tx, mut dialed_rx) = tokio::sync::mpsc::unbounded_channel();
    let pool = Pool::with_dial_listener(b.endpoint.clone(), Duration::from_secs(2), dialed_tx);
    let a_id = a.key.node_id();

    let c1 = pool.get_or_dial(&a_id, a.addr).await.unwrap();
    let (id, dialed) = dialed_rx.try_recv().unwrap();
    assert_eq!((id, dialed.stable_id()), (a_id, c1.stable_id()));
    let c2 = pool.get_or_dial(&a_id, a.addr).await.unwrap();
    assert_eq!(c1.stable_id(), c2.stable_id());
    assert!(
        dialed_rx.try_recv().is_err(),
        "a reused connection is not announced"
    );
    assert_eq!(pool.get(&a_id).unwrap().stable_id(), c1.stable_id());
    let _acc = next_accepted(&mut a.accepted).await;

    // A closed connection is replaced by a fresh dial.
    c1.close(0u32.into(), b"test");
    let c3 = pool.get_or_dial(&a_id, a.addr).await.unwrap();
    assert_ne!(c3.stable_id(), c1.stable_id());
    assert!(c3.close_reason().is_none());
    let _acc = next_accepted(&mut a.accepted).await;

    // Concurrent callers share one dial.
    pool.remove(&a_id).unwrap().close(0u32.into(), b"test");
    let (x, y) = tokio::join!(
        pool.get_or_dial(&a_id, a.addr),
        pool.get_or_dial(&a_id, a.addr)
    );
    assert_eq!(x.unwrap().stable_id(), y.unwrap().stable_id());

    // The peer at that address is not the node expected.
    let stranger = NodeKey::generate().unwrap().node_id();
    let err = pool.get_or_dial(&stranger, a.addr).await.unwrap_err();
    assert!(
        matches!(err, NetError::UnexpectedPeer { expected, found: Some(found), .. }
            if expected == stranger && found == a_id),
        "{err}"
    );
    assert!(pool.get(&stranger).is_none());

    // An accepted connection replaces the pooled one.
    let other = b
        .endpoint
        .connect(a.addr, pki::CLUSTER_SAN, None, T)
        .await
        .unwrap();
    pool.insert_accepted(a_id, other.clone());
    assert_eq!(pool.get(&a_id).unwrap().stable_id(), other.stable_id());
    assert_eq!(pool.connections().len(), 1);

    // A dead address is bounded by the dial timeout.
    let short = Pool::new(b.endpoint.clone(), Duration::from_millis(300));
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let err = within(
        Duration::from_secs(10),
        "a pooled dial bounded to 300 ms",
        short.get_or_dial(&a_id, silent.local_addr().unwrap()),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, NetError::Timeout { .. }), "{err}");
}

#[tokio::test]
async fn restarted_peer_resets_stale_connections_quickly() {
    // Node A runs on its own runtime, which is dropped to simulate a crash (no
    // CONNECTION_CLOSE is sent). A restarts on the same port with the same key: the derived
    // stateless-reset key lets B's stale connection die long before the idle timeout.
    let ca = ClusterCa::generate("c1").unwrap();
    let key = NodeKey::generate().unwrap();
    let cert = ca
        .issue_node_cert(&key.public_key(), &key.node_id())
        .unwrap();
    let server_cfg = {
        let (cert, ca_der, key) = (cert.clone(), ca.cert_der().to_vec(), key.clone());
        move || pki::server_config(&cert, &ca_der, &key).unwrap()
    };
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let crashed = {
        let key = key.clone();
        let server_cfg = server_cfg.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (ep, mut acc) = Endpoint::bind("127.0.0.1:0".parse().unwrap(), &key).unwrap();
                ep.set_server_config(server_cfg());
                addr_tx.send(ep.local_addr().unwrap()).unwrap();
                let conn = acc.recv().await.unwrap();
                let _ = stop_rx.await;
                // Leak nothing: hand everything to the runtime, which is dropped mid-flight.
                tokio::spawn(async move {
                    let _keep = (ep, acc, conn);
                    std::future::pending::<()>().await;
                });
            });
            drop(rt);
        })
    };
    let addr = addr_rx.recv().unwrap();
    let b = node(&ca);
    let conn = b
        .endpoint
        .connect(addr, pki::CLUSTER_SAN, None, T)
        .await
        .unwrap();
    assert_eq!(peer_node_id(&conn), Some(key.node_id()));
    stop_tx.send(()).unwrap();
    crashed.join().unwrap();

    let (restarted, _rx) = Endpoint::bind(addr, &key).unwrap();
    restarted.set_server_config(server_cfg());
    let _ = send_datagram(&conn, Bytes::from_static(b"ping"));
    // Well before the idle timeout (10 s): the reset, not the timeout, closed it.
    let err = tokio::time::timeout(Duration::from_secs(8), conn.closed())
        .await
        .expect("stale connection not reset");
    assert!(matches!(err, quinn::ConnectionError::Reset), "{err}");
    // And the node is reachable again at once.
    let fresh = b
        .endpoint
        .connect(addr, pki::CLUSTER_SAN, None, T)
        .await
        .unwrap();
    assert_eq!(peer_node_id(&fresh), Some(key.node_id()));
}

#[tokio::test]
async fn client_only_endpoint_starts_serving_later() {
    // A daemon not yet in a cluster binds client-only; init/join installs the server config
    // and the (already running) accept loop serves from then on.
    let ca = ClusterCa::generate("c1").unwrap();
    let key = NodeKey::generate().unwrap();
    let (ep, mut accepted) = Endpoint::bind("127.0.0.1:0".parse().unwrap(), &key).unwrap();
    let addr = ep.local_addr().unwrap();
    let b = node(&ca);
    assert!(matches!(
        b.endpoint
            .connect(addr, pki::CLUSTER_SAN, None, Duration::from_millis(300))
            .await,
        Err(NetError::Timeout { .. })
    ));
    let cert = ca
        .issue_node_cert(&key.public_key(), &key.node_id())
        .unwrap();
    ep.set_server_config(pki::server_config(&cert, ca.cert_der(), &key).unwrap());
    let conn = b
        .endpoint
        .connect(addr, pki::CLUSTER_SAN, None, T)
        .await
        .unwrap();
    assert_eq!(peer_node_id(&conn), Some(key.node_id()));
    let acc = next_accepted(&mut accepted).await;
    assert_eq!(acc.peer_node_id, Some(b.key.node_id()));
    within(
        Duration::from_secs(10),
        "a shutdown with 500 ms of grace",
        ep.shutdown(Duration::from_millis(500)),
    )
    .await;
    assert!(
        conn.close_reason().is_some() || { tokio::time::timeout(T, conn.closed()).await.is_ok() }
    );
}

// ---- Resource bounds (issue 14 item 5) ----

/// A server with a certificate from `ca` and the given connection caps.
fn node_with_limits(ca: &ClusterCa, limits: ConnectionLimits) -> TestNode {
    let key = NodeKey::generate().unwrap();
    let cert = ca
        .issue_node_cert(&key.public_key(), &key.node_id())
        .unwrap();
    let (endpoint, accepted) =
        Endpoint::bind_with_limits("127.0.0.1:0".parse().unwrap(), &key, limits).unwrap();
    endpoint.set_server_config(pki::server_config(&cert, ca.cert_der(), &key).unwrap());
    endpoint.set_client_config(pki::client_config(&cert, ca.cert_der(), &key).unwrap());
    let addr = endpoint.local_addr().unwrap();
    TestNode {
        key,
        endpoint,
        accepted,
        addr,
    }
}

/// A client with a certificate from `ca`, bound on `ip`.
fn client_at(ca: &ClusterCa, ip: &str) -> Endpoint {
    let key = NodeKey::generate().unwrap();
    let cert = ca
        .issue_node_cert(&key.public_key(), &key.node_id())
        .unwrap();
    let (endpoint, _rx) = Endpoint::bind(format!("{ip}:0").parse().unwrap(), &key).unwrap();
    endpoint.set_client_config(pki::client_config(&cert, ca.cert_der(), &key).unwrap());
    endpoint
}

/// Dials `addr` until it is accepted (the server frees a slot when it sees the close).
async fn connect_eventually(ep: &Endpoint, addr: SocketAddr) -> quinn::Connection {
    crate::testutil::poll_until(
        "a free connection slot",
        T,
        Duration::from_millis(50),
        || async {
            let e = ep.connect(addr, pki::CLUSTER_SAN, None, T).await;
            if let Err(e) = &e {
                assert!(matches!(e, NetError::Refused { .. }), "{e}");
            }
            e
        },
    )
    .await
}

#[tokio::test]
async fn the_33rd_connection_from_one_ip_is_refused_until_one_closes() {
    let ca = ClusterCa::generate("c1").unwrap();
    let mut a = node(&ca);
    let b = client_at(&ca, "127.0.0.1");
    let mut conns = Vec::new();
    for i in 0..MAX_CONNECTIONS_PER_IP {
        let c = b
            .connect(a.addr, pki::CLUSTER_SAN, None, T)
            .await
            .unwrap_or_else(|e| panic!("connection {i} refused: {e}"));
        next_accepted(&mut a.accepted).await;
        conns.push(c);
    }
    let err = b
        .connect(a.addr, pki::CLUSTER_SAN, None, T)
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Refused { .. }), "{err}");
    // Another address is not affected.
    let other = client_at(&ca, "127.0.0.2");
    let c = other
        .connect(a.addr, pki::CLUSTER_SAN, None, T)
        .await
        .unwrap();
    next_accepted(&mut a.accepted).await;
    // Closing one frees its slot.
    conns.pop().unwrap().close(0u32.into(), b"done");
    let again = connect_eventually(&b, a.addr).await;
    next_accepted(&mut a.accepted).await;
    assert!(again.close_reason().is_none());
    assert!(c.close_reason().is_none());
}

#[tokio::test]
async fn small_caps_per_ip_and_in_total() {
    let ca = ClusterCa::generate("c1").unwrap();
    let limits = ConnectionLimits {
        per_ip: 2,
        total: 3,
        ..ConnectionLimits::default()
    };
    let mut a = node_with_limits(&ca, limits);
    let one = client_at(&ca, "127.0.0.1");
    let two = client_at(&ca, "127.0.0.2");
    let c1 = one
        .connect(a.addr, pki::CLUSTER_SAN, None, T)
        .await
        .unwrap();
    let _c2 = one
        .connect(a.addr, pki::CLUSTER_SAN, None, T)
        .await
        .unwrap();
    // Per address.
    let err = one
        .connect(a.addr, pki::CLUSTER_SAN, None, T)
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Refused { .. }), "{err}");
    let _c3 = two
        .connect(a.addr, pki::CLUSTER_SAN, None, T)
        .await
        .unwrap();
    // In total (127.0.0.2 holds one of its two).
    let err = two
        .connect(a.addr, pki::CLUSTER_SAN, None, T)
        .await
        .unwrap_err();
    assert!(matches!(err, NetError::Refused { .. }), "{err}");
    for _ in 0..3 {
        next_accepted(&mut a.accepted).await;
    }
    c1.close(0u32.into(), b"done");
    let _c4 = connect_eventually(&two, a.addr).await;
    next_accepted(&mut a.accepted).await;
}

/// Dials `addr` without a client certificate.
async fn join_dial(ep: &Endpoint, ca: &ClusterCa, addr: SocketAddr) -> quinn::Connection {
    let cfg = pki::join_client_config(ca.digest()).unwrap();
    ep.connect(addr, pki::CLUSTER_SAN, Some(cfg), T)
        .await
        .unwrap()
}

#[tokio::test]
async fn connections_without_a_certificate_have_a_tighter_budget() {
    let ca = ClusterCa::generate("c1").unwrap();
    let mut a = node(&ca);
    let (joiner, _rx) = bare();
    let mut conns = Vec::new();
    for _ in 0..MAX_UNAUTHENTICATED_PER_IP {
        conns.push(join_dial(&joiner, &ca, a.addr).await);
        let acc = next_accepted(&mut a.accepted).await;
        assert_eq!(acc.peer_key, None);
    }
    // The next one completes its handshake (the server cannot know before) and is closed.
    let extra = join_dial(&joiner, &ca, a.addr).await;
    match tokio::time::timeout(T, extra.closed()).await.unwrap() {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, CLOSE_TOO_MANY_CONNECTIONS.into());
        }
        other => panic!("unexpected close: {other}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), a.accepted.recv())
            .await
            .is_err(),
        "the connection over the budget reached the application"
    );
    // A member from the same address still gets in.
    let member = client_at(&ca, "127.0.0.1");
    member
        .connect(a.addr, pki::CLUSTER_SAN, None, T)
        .await
        .unwrap();
    assert!(next_accepted(&mut a.accepted).await.peer_key.is_some());
    // Closing one frees its slot.
    conns.pop().unwrap().close(0u32.into(), b"done");
    let started = Instant::now();
    loop {
        let c = join_dial(&joiner, &ca, a.addr).await;
        if tokio::time::timeout(Duration::from_millis(300), c.closed())
            .await
            .is_err()
        {
            break;
        }
        assert!(started.elapsed() < T, "no slot freed");
    }
    assert_eq!(next_accepted(&mut a.accepted).await.peer_key, None);
}

#[tokio::test]
async fn connections_without_a_certificate_are_closed_after_their_lifetime() {
    let ca = ClusterCa::generate("c1").unwrap();
    let limits = ConnectionLimits {
        unauthenticated_lifetime: Duration::from_millis(300),
        ..ConnectionLimits::default()
    };
    let mut a = node_with_limits(&ca, limits);
    let (joiner, _rx) = bare();
    let unauth = join_dial(&joiner, &ca, a.addr).await;
    next_accepted(&mut a.accepted).await;
    let member = client_at(&ca, "127.0.0.1");
    let auth = member
        .connect(a.addr, pki::CLUSTER_SAN, None, T)
        .await
        .unwrap();
    next_accepted(&mut a.accepted).await;
    match within(
        T,
        "the certificate-less connection's lifetime",
        unauth.closed(),
    )
    .await
    {
        quinn::ConnectionError::ApplicationClosed(c) => {
            assert_eq!(c.error_code, CLOSE_UNAUTHENTICATED_EXPIRED.into());
        }
        other => panic!("unexpected close: {other}"),
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        auth.close_reason().is_none(),
        "a member's connection was closed"
    );
}

#[tokio::test]
async fn stream_budgets_no_uni_streams_and_more_for_members() {
    let ca = ClusterCa::generate("c1").unwrap();
    let mut a = node(&ca);
    let (joiner, _rx) = bare();
    let unauth = join_dial(&joiner, &ca, a.addr).await;
    let _keep = next_accepted(&mut a.accepted).await;
    let short = Duration::from_millis(300);
    // No uni-directional stream, ever.
    assert!(
        tokio::time::timeout(short, unauth.open_uni())
            .await
            .is_err()
    );
    let mut streams = Vec::new();
    for _ in 0..UNAUTHENTICATED_BIDI_STREAMS {
        streams.push(
            tokio::time::timeout(short, unauth.open_bi())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    assert!(tokio::time::timeout(short, unauth.open_bi()).await.is_err());

    let member = client_at(&ca, "127.0.0.1");
    let auth = member
        .connect(a.addr, pki::CLUSTER_SAN, None, T)
        .await
        .unwrap();
    let _keep2 = next_accepted(&mut a.accepted).await;
    assert!(tokio::time::timeout(short, auth.open_uni()).await.is_err());
    for i in 0..MAX_BIDI_STREAMS {
        let s = tokio::time::timeout(T, auth.open_bi())
            .await
            .unwrap_or_else(|_| panic!("member stream {i} not granted"))
            .unwrap();
        streams.push(s);
    }
    assert!(tokio::time::timeout(short, auth.open_bi()).await.is_err());
}

/// Opens a stream from `client`, writes `raw` (not finishing), and returns both ends.
async fn raw_stream(
    client: &quinn::Connection,
    server: &quinn::Connection,
    raw: &[u8],
) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, _recv) = client.open_bi().await.unwrap();
    send.write_all(raw).await.unwrap();
    let (_s, recv) = tokio::time::timeout(T, server.accept_bi())
        .await
        .unwrap()
        .unwrap();
    (send, recv)
}

#[tokio::test]
async fn a_silent_or_trickling_peer_is_cut_off_at_the_deadline() {
    let (client, server, _a, _b) = pair().await;
    let deadline = Duration::from_millis(300);

    // The header never completes.
    let (send, mut recv) = raw_stream(&client, &server, &[3, 0]).await;
    let err = within(
        T,
        "a header read with a 300 ms deadline",
        read_header(&mut recv, deadline),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, NetError::ReadTimeout(d) if d == deadline),
        "{err}"
    );
    // The peer is told to stop sending.
    let stopped = tokio::time::timeout(T, send.stopped())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stopped, Some(2u32.into()));

    // A header announcing 1 MiB, then a byte every 50 ms.
    let (mut send, mut recv) = raw_stream(&client, &server, &[3, 0, 0x10, 0, 0, 1]).await;
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if send.write_all(&[0]).await.is_err() {
                return true;
            }
        }
        false
    });
    // The trickle lasts 5 s; a deadline per chunk instead of per frame would outlast 4 s.
    let err = within(
        Duration::from_secs(4),
        "a frame read with a 300 ms deadline against a trickle",
        read_frame_raw_within(&mut recv, 1 << 20, deadline),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, NetError::ReadTimeout(_)), "{err}");
    assert!(
        tokio::time::timeout(T, trickle).await.unwrap().unwrap(),
        "the trickling writer was not stopped"
    );

    // The same with read_header + read_body: the body's own deadline.
    let (_send, mut recv) = raw_stream(&client, &server, &[3, 0, 0x10, 0, 0, 1, 7]).await;
    let (tag, len) = read_header(&mut recv, deadline).await.unwrap();
    assert_eq!((tag, len), (3, 1 << 20));
    let err = within(
        T,
        "a body read with a 300 ms deadline",
        read_body(&mut recv, tag, len, 1 << 20, deadline),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, NetError::ReadTimeout(_)), "{err}");
}

#[tokio::test]
async fn read_header_and_read_body() {
    let (client, server, _a, _b) = pair().await;
    let ping = Ping {
        v: 1,
        text: "y".repeat(3000),
    };
    let mut good = vec![9u8, 0, 0, 0, 0, FRAME_VERSION];
    good.extend(postcard::to_allocvec(&ping).unwrap());
    let body_len = (good.len() - FRAME_HEADER_LEN) as u32;
    good[1..5].copy_from_slice(&body_len.to_be_bytes());

    // A whole frame.
    let (mut send, mut recv) = raw_stream(&client, &server, &good).await;
    send.finish().unwrap();
    let (tag, len) = read_header(&mut recv, T).await.unwrap();
    assert_eq!((tag, len), (9, body_len));
    let body = read_body(&mut recv, tag, len, 4096, T).await.unwrap();
    assert_eq!(body.len(), body_len as usize);
    assert!(body.capacity() <= body_len as usize);
    assert_eq!(decode_body::<Ping>(tag, &body).unwrap(), ping);

    // Over the limit: refused before reading (or allocating) the body; the peer is stopped.
    let (send, mut recv) = raw_stream(&client, &server, &good).await;
    let (tag, len) = read_header(&mut recv, T).await.unwrap();
    assert!(matches!(
        read_body(&mut recv, tag, len, 100, T).await,
        Err(NetError::FrameTooLarge { max: 100, .. })
    ));
    let stopped = tokio::time::timeout(T, send.stopped())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stopped, Some(1u32.into()));

    // A 4 GiB announcement costs nothing.
    let (_send, mut recv) = raw_stream(&client, &server, &[9, 0xff, 0xff, 0xff, 0xff]).await;
    let (tag, len) = read_header(&mut recv, T).await.unwrap();
    assert_eq!(len, u32::MAX);
    assert!(matches!(
        read_body(&mut recv, tag, len, 1 << 20, T).await,
        Err(NetError::FrameTooLarge { .. })
    ));

    // Empty body.
    let (_send, mut recv) = raw_stream(&client, &server, &[9, 0, 0, 0, 0]).await;
    let (tag, len) = read_header(&mut recv, T).await.unwrap();
    assert!(matches!(
        read_body(&mut recv, tag, len, 1024, T).await,
        Err(NetError::Malformed(_))
    ));

    // The stream ends mid-body.
    let (mut send, mut recv) = raw_stream(&client, &server, &good[..100]).await;
    send.finish().unwrap();
    let (tag, len) = read_header(&mut recv, T).await.unwrap();
    assert!(matches!(
        read_body(&mut recv, tag, len, 4096, T).await,
        Err(NetError::Read(quinn::ReadExactError::FinishedEarly(95)))
    ));
}

#[tokio::test]
async fn read_frame_reads_consecutive_frames_of_a_session() {
    // Several frames on one stream (a worker session): each read stops at its frame's end.
    let (client, server, _a, _b) = pair().await;
    let (mut send, _r) = client.open_bi().await.unwrap();
    let big = Ping {
        v: 1,
        text: "z".repeat(200_000),
    };
    write_frame(&mut send, 8, &big).await.unwrap();
    write_frame(
        &mut send,
        8,
        &Ping {
            v: 2,
            text: "b".into(),
        },
    )
    .await
    .unwrap();
    send.finish().unwrap();
    let (_s, mut recv) = tokio::time::timeout(T, server.accept_bi())
        .await
        .unwrap()
        .unwrap();
    let (_, first): (u8, Ping) = read_frame(&mut recv, 1 << 20).await.unwrap();
    assert_eq!(first, big);
    let (_, second): (u8, Ping) = read_frame_within(&mut recv, 1024, T).await.unwrap();
    assert_eq!(second.v, 2);
}
