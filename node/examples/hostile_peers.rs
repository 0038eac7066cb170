//! The attacker of `scripts/bench-hostile-peers.sh` (issue 14): peers without any
//! certificate trying to make a node hold memory.
//!
//! Opens `--connections` QUIC connections to `--addr` with no client certificate (accepting
//! any server certificate, ALPN `shoal/1`, as a joiner would before checking the CA digest),
//! spread over `--ips` loopback source addresses (127.0.0.101, .102, ...; 1 = all from
//! 127.0.0.1). On each it opens as many bi-directional streams as the node allows, writes on
//! each a frame header announcing `--announce` bytes under tag 1 (JOIN, the one tag a peer
//! without a certificate may use) followed by `--body-bytes` bytes of that body, then stalls;
//! it opens as many uni-directional streams as allowed and writes `--body-bytes` on each;
//! it sends `--datagrams` datagrams of 1100 bytes. It holds everything for `--hold-secs`,
//! then prints one line of `key=value` counters and exits. Streams, bytes and datagrams are
//! counted on the connections the node kept (not closed right after the handshake); bytes
//! are those quinn took for sending (the node's flow control allowing).
//!
//! ```sh
//! cargo run -p shoal --example hostile_peers -- --addr 127.0.0.1:4747
//! ```

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::DigitallySignedStruct;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

/// A verifier that accepts any server: the attacker does not care who it talks to.
#[derive(Debug)]
struct AcceptAnyServer(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyServer {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[derive(Debug, Clone)]
struct Args {
    addr: SocketAddr,
    connections: usize,
    ips: usize,
    announce: u32,
    body_bytes: usize,
    datagrams: usize,
    hold: Duration,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        addr: "127.0.0.1:4747".parse().map_err(|e| format!("{e}"))?,
        connections: 50,
        ips: 1,
        announce: 1 << 20,
        body_bytes: 64 * 1024,
        datagrams: 1000,
        hold: Duration::from_secs(10),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = |e: &dyn std::fmt::Display| format!("bad value for {flag}: {e}");
        match flag.as_str() {
            "--addr" => args.addr = value.parse().map_err(|e| bad(&e))?,
            "--connections" => args.connections = value.parse().map_err(|e| bad(&e))?,
            "--ips" => args.ips = value.parse::<usize>().map_err(|e| bad(&e))?.clamp(1, 150),
            "--announce" => args.announce = value.parse().map_err(|e| bad(&e))?,
            "--body-bytes" => args.body_bytes = value.parse().map_err(|e| bad(&e))?,
            "--datagrams" => args.datagrams = value.parse().map_err(|e| bad(&e))?,
            "--hold-secs" => {
                args.hold = Duration::from_secs(value.parse().map_err(|e| bad(&e))?);
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(args)
}

#[derive(Default)]
struct Counters {
    handshakes: AtomicU64,
    refused: AtomicU64,
    accepted: AtomicU64,
    alive_at_end: AtomicU64,
    streams: AtomicU64,
    uni_streams: AtomicU64,
    bytes_written: AtomicU64,
    datagrams: AtomicU64,
}

fn client_config() -> Result<quinn::ClientConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AcceptAnyServer(provider)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![shoal::pki::ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(Some(quinn::VarInt::from_u32(30_000).into()));
    transport.keep_alive_interval(Some(Duration::from_secs(2)));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// How long to wait for the node to grant one more stream before concluding it will not.
const GRANT_WAIT: Duration = Duration::from_millis(500);
/// Bound on writing one stream's bytes (flow control may hold them back).
const WRITE_WAIT: Duration = Duration::from_secs(2);
/// At most this many streams of each kind per connection (quinn's default grant is 100).
const MAX_STREAMS_TRIED: usize = 1000;

async fn attack(endpoint: quinn::Endpoint, args: Arc<Args>, n: Arc<Counters>) {
    let Ok(connecting) = endpoint.connect(args.addr, shoal::pki::CLUSTER_SAN) else {
        n.refused.fetch_add(1, Ordering::Relaxed);
        return;
    };
    let Ok(Ok(conn)) = tokio::time::timeout(Duration::from_secs(5), connecting).await else {
        n.refused.fetch_add(1, Ordering::Relaxed);
        return;
    };
    n.handshakes.fetch_add(1, Ordering::Relaxed);
    let mut header = vec![1u8];
    header.extend_from_slice(&args.announce.to_be_bytes());
    let body = vec![0u8; args.body_bytes];
    // Counted globally only if the node kept the connection (a connection closed right
    // after its handshake still lets the client open the streams of its first grant).
    let (mut streams, mut uni_streams, mut written) = (0u64, 0u64, 0u64);
    let mut keep = Vec::new();
    for _ in 0..MAX_STREAMS_TRIED {
        let Ok(Ok((mut send, recv))) = tokio::time::timeout(GRANT_WAIT, conn.open_bi()).await
        else {
            break;
        };
        if tokio::time::timeout(WRITE_WAIT, send.write_all(&header))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            streams += 1;
            if tokio::time::timeout(WRITE_WAIT, send.write_all(&body))
                .await
                .is_ok_and(|r| r.is_ok())
            {
                written += body.len() as u64;
            }
        }
        keep.push((send, recv));
    }
    let mut keep_uni = Vec::new();
    for _ in 0..MAX_STREAMS_TRIED {
        let Ok(Ok(mut send)) = tokio::time::timeout(GRANT_WAIT, conn.open_uni()).await else {
            break;
        };
        uni_streams += 1;
        if tokio::time::timeout(WRITE_WAIT, send.write_all(&body))
            .await
            .is_ok_and(|r| r.is_ok())
        {
            written += body.len() as u64;
        }
        keep_uni.push(send);
    }
    let datagram = bytes::Bytes::from(vec![0x53u8; 1100]);
    let mut datagrams = 0u64;
    for i in 0..args.datagrams {
        if conn.send_datagram(datagram.clone()).is_err() {
            break;
        }
        datagrams += 1;
        if i % 64 == 63 {
            tokio::task::yield_now().await;
        }
    }
    if conn.close_reason().is_none() {
        n.accepted.fetch_add(1, Ordering::Relaxed);
        n.streams.fetch_add(streams, Ordering::Relaxed);
        n.uni_streams.fetch_add(uni_streams, Ordering::Relaxed);
        n.bytes_written.fetch_add(written, Ordering::Relaxed);
        n.datagrams.fetch_add(datagrams, Ordering::Relaxed);
    } else {
        n.refused.fetch_add(1, Ordering::Relaxed);
    }
    tokio::time::sleep(args.hold).await;
    if conn.close_reason().is_none() {
        n.alive_at_end.fetch_add(1, Ordering::Relaxed);
    }
    conn.close(0u32.into(), b"bye");
    drop((keep, keep_uni));
}

#[tokio::main]
async fn main() {
    let args = match parse_args() {
        Ok(a) => Arc::new(a),
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::exit(2);
        }
    };
    let config = match client_config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e}");
            std::process::exit(1);
        }
    };
    let mut endpoints = Vec::new();
    for i in 0..args.ips {
        let ip = if args.ips == 1 {
            "127.0.0.1".to_owned()
        } else {
            format!("127.0.0.{}", 101 + i)
        };
        let bind: SocketAddr = match format!("{ip}:0").parse() {
            Ok(a) => a,
            Err(e) => {
                eprintln!("Error: {e}");
                std::process::exit(1);
            }
        };
        match quinn::Endpoint::client(bind) {
            Ok(mut ep) => {
                ep.set_default_client_config(config.clone());
                endpoints.push(ep);
            }
            Err(e) => {
                eprintln!("Error: cannot bind {bind}: {e}");
                std::process::exit(1);
            }
        }
    }
    let counters = Arc::new(Counters::default());
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..args.connections {
        tasks.spawn(attack(
            endpoints[i % endpoints.len()].clone(),
            args.clone(),
            counters.clone(),
        ));
    }
    while tasks.join_next().await.is_some() {}
    let n = &counters;
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "connections_attempted={} handshakes_completed={} connections_accepted={} connections_refused={} connections_alive_at_end={} streams_opened={} uni_streams_opened={} body_bytes_written={} datagrams_sent={}",
        args.connections,
        get(&n.handshakes),
        get(&n.accepted),
        get(&n.refused),
        get(&n.alive_at_end),
        get(&n.streams),
        get(&n.uni_streams),
        get(&n.bytes_written),
        get(&n.datagrams),
    );
    for ep in endpoints {
        ep.close(0u32.into(), b"bye");
    }
}
