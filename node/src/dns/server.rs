//! The DNS server's I/O (issue 22): UDP and TCP loops that answer each query with
//! [`resolve`] against the current snapshot of names, and forward the other names to the
//! node's upstream resolvers. The loops run until their task is aborted; nothing a client
//! sends can panic them or hold them up (forwards run in their own tasks, bounded in number
//! and time; TCP connections are bounded in number and idle time).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};

use super::codec::{Header, Message, Rcode, Reply, TCP_MAX};
use super::{Names, Outcome, Transport};

/// Where and how long to forward names that are not the cluster's.
#[derive(Debug, Clone)]
pub struct Upstreams {
    /// The resolvers, tried in order.
    pub servers: Vec<SocketAddr>,
    /// How long to wait for each.
    pub timeout: Duration,
}

/// At most this many forwarded queries in flight (more are answered SERVFAIL at once).
pub const MAX_FORWARDS: usize = 256;
/// At most this many TCP connections at once (more are closed at once).
pub const MAX_TCP: usize = 64;
/// A TCP connection with no query for this long is closed.
pub const TCP_IDLE: Duration = Duration::from_secs(10);
/// Each upstream's time to answer, by default.
pub const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// The nameservers of a `resolv.conf` text, port 53, without `skip` (this server's own
/// address: forwarding to itself would loop). Unparseable lines are ignored.
#[must_use]
pub fn upstreams_from_resolv_conf(text: &str, skip: &[IpAddr]) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        // A scoped IPv6 address (`fe80::1%eth0`) cannot be parsed: skipped.
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .filter(|ip| !skip.contains(ip))
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// SERVFAIL for a query (no upstream answered), if its header and question can be read.
fn servfail(query: &[u8]) -> Option<Vec<u8>> {
    let m = Message::parse(query).ok()?;
    let question = m.questions.first().map(super::codec::Question::encode);
    Some(Reply::bare(m.header, question.as_deref(), Rcode::ServFail).encode())
}

/// Sends `query` to each upstream in turn and returns the first answer with the query's ID
/// from the address it was sent to; SERVFAIL when none answers in time.
async fn forward(query: &[u8], upstreams: &Upstreams) -> Option<Vec<u8>> {
    let id = Header::parse(query).ok()?.id;
    for server in &upstreams.servers {
        let local: SocketAddr = match server {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let Ok(socket) = UdpSocket::bind(local).await else {
            continue;
        };
        if socket.connect(server).await.is_err() || socket.send(query).await.is_err() {
            continue;
        }
        let mut buf = vec![0u8; TCP_MAX];
        let answer = tokio::time::timeout(upstreams.timeout, async {
            loop {
                // A connected socket receives only from the server.
                let n = socket.recv(&mut buf).await.ok()?;
                if Header::parse(&buf[..n]).is_ok_and(|h| h.id == id && h.is_response()) {
                    return Some(buf[..n].to_vec());
                }
            }
        })
        .await;
        if let Ok(Some(answer)) = answer {
            return Some(answer);
        }
    }
    servfail(query)
}

/// Serves DNS over UDP on `socket` until aborted.
pub async fn serve_udp(
    socket: UdpSocket,
    names: watch::Receiver<Arc<Names>>,
    upstreams: Arc<Upstreams>,
) {
    let socket = Arc::new(socket);
    let forwards = Arc::new(Semaphore::new(MAX_FORWARDS));
    let mut buf = vec![0u8; TCP_MAX];
    loop {
        let (n, from) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                // ICMP errors of earlier sends surface here on some systems: keep serving.
                tracing::debug!(error = %e, "dns: udp receive");
                continue;
            }
        };
        let query = &buf[..n];
        let outcome = {
            let names = names.borrow();
            let asker = match from.ip() {
                std::net::IpAddr::V4(a) => Some(a),
                std::net::IpAddr::V6(_) => None,
            };
            super::resolve::resolve_from(query, &names, Transport::Udp, asker)
        };
        match outcome {
            Outcome::Reply(reply) => {
                let _ = socket.send_to(&reply, from).await;
            }
            Outcome::Drop => {}
            Outcome::Forward => {
                let Ok(permit) = forwards.clone().try_acquire_owned() else {
                    if let Some(reply) = servfail(query) {
                        let _ = socket.send_to(&reply, from).await;
                    }
                    continue;
                };
                let query = query.to_vec();
                let socket = socket.clone();
                let upstreams = upstreams.clone();
                tokio::spawn(async move {
                    if let Some(reply) = forward(&query, &upstreams).await {
                        let _ = socket.send_to(&reply, from).await;
                    }
                    drop(permit);
                });
            }
        }
    }
}

/// Serves DNS over TCP on `listener` until aborted.
pub async fn serve_tcp(
    listener: TcpListener,
    names: watch::Receiver<Arc<Names>>,
    upstreams: Arc<Upstreams>,
) {
    let connections = Arc::new(Semaphore::new(MAX_TCP));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of descriptors, for instance: wait a little rather than spin.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            continue;
        };
        let names = names.clone();
        let upstreams = upstreams.clone();
        tokio::spawn(async move {
            let _ = tcp_connection(stream, names, &upstreams).await;
            drop(permit);
        });
    }
}

/// One TCP connection: length-prefixed queries, answered in order, until the client closes
/// it, sends something that is no query, or is idle for [`TCP_IDLE`].
async fn tcp_connection(
    mut stream: TcpStream,
    names: watch::Receiver<Arc<Names>>,
    upstreams: &Upstreams,
) -> std::io::Result<()> {
    let asker = match stream.peer_addr().map(|a| a.ip()) {
        Ok(std::net::IpAddr::V4(a)) => Some(a),
        _ => None,
    };
    let mut buf = vec![0u8; TCP_MAX];
    loop {
        let Ok(len) = tokio::time::timeout(TCP_IDLE, stream.read_u16()).await else {
            return Ok(());
        };
        let len = usize::from(len?);
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut buf[..len]))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
        let query = &buf[..len];
        let outcome = {
            let names = names.borrow();
            super::resolve::resolve_from(query, &names, Transport::Tcp, asker)
        };
        let reply = match outcome {
            Outcome::Reply(reply) => reply,
            Outcome::Drop => return Ok(()),
            Outcome::Forward => match forward(query, upstreams).await {
                Some(reply) => reply,
                None => return Ok(()),
            },
        };
        let Ok(len) = u16::try_from(reply.len()) else {
            return Ok(());
        };
        let mut out = Vec::with_capacity(2 + reply.len());
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&reply);
        tokio::time::timeout(TCP_IDLE, stream.write_all(&out))
            .await
            .map_err(|_| std::io::ErrorKind::TimedOut)??;
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::super::codec::{TYPE_A, UDP_PLAIN_MAX, query};
    use super::super::{EndpointMode, ServiceName};
    use super::*;

    fn names(with_api: bool) -> Names {
        let mut n = Names::default();
        if with_api {
            n.insert(
                "api",
                ServiceName {
                    mode: EndpointMode::Vip,
                    vip: Some(Ipv4Addr::new(10, 247, 128, 1)),
                    tasks: (0..100).map(|i| Ipv4Addr::new(10, 247, 0, i)).collect(),
                },
            );
        }
        n
    }

    /// A fake upstream: answers every query with its ID and one A record 192.0.2.1.
    async fn fake_upstream() -> (SocketAddr, tokio::task::JoinHandle<()>) {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind upstream");
        let addr = socket.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = socket.recv_from(&mut buf).await {
                let Ok(m) = Message::parse(&buf[..n]) else {
                    continue;
                };
                let question = m.questions[0].encode();
                let reply = Reply {
                    query: m.header,
                    question: Some(&question),
                    rcode: Rcode::NoError,
                    authoritative: false,
                    recursion_available: true,
                    answers: &[Ipv4Addr::new(192, 0, 2, 1)],
                    ttl: 60,
                    edns: false,
                    max: UDP_PLAIN_MAX,
                }
                .encode();
                let _ = socket.send_to(&reply, from).await;
            }
        });
        (addr, task)
    }

    struct Served {
        udp: SocketAddr,
        tcp: SocketAddr,
        names: watch::Sender<Arc<Names>>,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    }

    impl Drop for Served {
        fn drop(&mut self) {
            for t in &self.tasks {
                t.abort();
            }
        }
    }

    async fn serve(upstreams: Vec<SocketAddr>, timeout: Duration) -> Served {
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("bind udp");
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("bind tcp");
        let (udp_addr, tcp_addr) = (udp.local_addr().expect("a"), tcp.local_addr().expect("a"));
        let (tx, rx) = watch::channel(Arc::new(names(true)));
        let up = Arc::new(Upstreams {
            servers: upstreams,
            timeout,
        });
        let tasks = vec![
            tokio::spawn(serve_udp(udp, rx.clone(), up.clone())),
            tokio::spawn(serve_tcp(tcp, rx, up)),
        ];
        Served {
            udp: udp_addr,
            tcp: tcp_addr,
            names: tx,
            tasks,
        }
    }

    async fn ask_udp(server: SocketAddr, q: &[u8]) -> Message {
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind client");
        client.send_to(q, server).await.expect("send");
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), client.recv(&mut buf))
            .await
            .expect("an answer within 5 s")
            .expect("recv");
        Message::parse(&buf[..n]).expect("a DNS reply")
    }

    #[tokio::test]
    async fn cluster_names_answered_others_forwarded_and_changes_seen_at_once() {
        let (up, up_task) = fake_upstream().await;
        let s = serve(vec![up], UPSTREAM_TIMEOUT).await;
        let m = ask_udp(s.udp, &query(1, "api", TYPE_A, None)).await;
        assert_eq!(m.answers[0].a(), Some(Ipv4Addr::new(10, 247, 128, 1)));
        let m = ask_udp(s.udp, &query(2, "example.com", TYPE_A, None)).await;
        assert_eq!(m.header.id, 2);
        assert_eq!(m.answers[0].a(), Some(Ipv4Addr::new(192, 0, 2, 1)));
        let m = ask_udp(s.udp, &query(3, "nope", TYPE_A, None)).await;
        assert_eq!(m.header.rcode(), Rcode::NxDomain as u8);
        // The service removed: NXDOMAIN at the next query.
        s.names.send_replace(Arc::new(names(false)));
        let m = ask_udp(s.udp, &query(4, "api", TYPE_A, None)).await;
        assert_eq!(m.header.rcode(), Rcode::NxDomain as u8);
        up_task.abort();
    }

    #[tokio::test]
    async fn a_silent_upstream_gets_servfail_not_a_hang() {
        // A bound socket that never answers.
        let silent = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let s = serve(
            vec![silent.local_addr().expect("a")],
            Duration::from_millis(200),
        )
        .await;
        let start = Instant::now();
        let m = ask_udp(s.udp, &query(9, "example.org", TYPE_A, None)).await;
        assert_eq!(m.header.rcode(), Rcode::ServFail as u8);
        assert!(start.elapsed() < Duration::from_secs(3));
        // With no upstream at all: SERVFAIL at once.
        let s = serve(Vec::new(), UPSTREAM_TIMEOUT).await;
        let m = ask_udp(s.udp, &query(9, "example.org", TYPE_A, None)).await;
        assert_eq!(m.header.rcode(), Rcode::ServFail as u8);
    }

    #[tokio::test]
    async fn tcp_answers_what_udp_truncates() {
        let s = serve(Vec::new(), UPSTREAM_TIMEOUT).await;
        let q = query(5, "tasks.api", TYPE_A, None);
        let m = ask_udp(s.udp, &q).await;
        assert!(m.header.tc());
        let mut stream = TcpStream::connect(s.tcp).await.expect("connect");
        for _ in 0..2 {
            let len = u16::try_from(q.len()).expect("len");
            stream.write_all(&len.to_be_bytes()).await.expect("w");
            stream.write_all(&q).await.expect("w");
            let n = usize::from(stream.read_u16().await.expect("len"));
            let mut buf = vec![0u8; n];
            stream.read_exact(&mut buf).await.expect("read");
            let m = Message::parse(&buf).expect("reply");
            assert!(!m.header.tc());
            assert_eq!(m.answers.len(), 100);
        }
        // Garbage closes the connection; the server keeps serving.
        stream.write_all(&[0, 3, 1, 2, 3]).await.expect("w");
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
        let m = ask_udp(s.udp, &query(6, "api", TYPE_A, None)).await;
        assert_eq!(m.answers.len(), 1);
    }

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# c\nsearch lan\nnameserver 127.0.0.53\nnameserver  10.247.0.1 \n\
                    nameserver fe80::1%eth0\nnameserver ::1\noptions ndots:0\nnameserver\n";
        assert_eq!(
            upstreams_from_resolv_conf(text, &[IpAddr::V4(Ipv4Addr::new(10, 247, 0, 1))]),
            [
                "127.0.0.53:53".parse::<SocketAddr>().expect("a"),
                "[::1]:53".parse().expect("a"),
            ]
        );
    }

    /// Lookup latency and throughput of this server on loopback, one client asking one query
    /// at a time: a cluster name, and a forwarded name answered by a local fake upstream.
    /// Prints the figures (BENCHMARKS.md, "Service discovery"); run by
    /// `scripts/bench-discovery.sh`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "benchmark: prints figures"]
    async fn bench_lookups() {
        let (up, up_task) = fake_upstream().await;
        let s = serve(vec![up], UPSTREAM_TIMEOUT).await;
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        client.connect(s.udp).await.expect("connect");
        let mut buf = [0u8; 4096];
        for (what, name) in [
            ("cluster name (api -> VIP)", "api"),
            ("forwarded name (fake upstream on loopback)", "example.com"),
        ] {
            let count = 20_000u16;
            let mut lat = Vec::with_capacity(usize::from(count));
            let start = Instant::now();
            for id in 0..count {
                let q = query(id, name, TYPE_A, None);
                let t = Instant::now();
                client.send(&q).await.expect("send");
                let n = client.recv(&mut buf).await.expect("recv");
                lat.push(t.elapsed());
                assert_eq!(Header::parse(&buf[..n]).expect("h").id, id);
            }
            let total = start.elapsed();
            lat.sort();
            let p = |q: f64| lat[((lat.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e6;
            println!(
                "{what}: {count} lookups, {:.0} lookups/s, latency p50 {:.0} us, p99 {:.0} us, max {:.0} us",
                f64::from(count) / total.as_secs_f64(),
                p(0.5),
                p(0.99),
                p(1.0)
            );
        }
        // The pure resolver alone, without sockets.
        let n = names(true);
        let q = query(1, "api", TYPE_A, None);
        let start = Instant::now();
        let rounds = 200_000u32;
        for _ in 0..rounds {
            std::hint::black_box(crate::dns::resolve::resolve(
                std::hint::black_box(&q),
                &n,
                Transport::Udp,
            ));
        }
        println!(
            "resolve() alone: {:.0} ns per query",
            start.elapsed().as_secs_f64() * 1e9 / f64::from(rounds)
        );
        up_task.abort();
    }
}
