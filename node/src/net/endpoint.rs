//! The quinn endpoint: one UDP socket, client and server.
//!
//! Resource bounds (issue 14): no peer, certified or not, can make this node buffer more
//! than the windows below, and the accept loop caps how many connections one address, and
//! everyone together, may hold ([`ConnectionLimits`]). A connection starts with the small
//! budget of an unauthenticated peer ([`UNAUTHENTICATED_BIDI_STREAMS`],
//! [`UNAUTHENTICATED_RECEIVE_WINDOW`]): QUIC announces its limits before the client's
//! certificate arrives. Once the peer is known to hold a cluster certificate (the server
//! checked it, or we dialed a verified server) the budget is raised to [`MAX_BIDI_STREAMS`]
//! and [`RECEIVE_WINDOW`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quinn::{Connection, ConnectionError, TransportConfig, VarInt};
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;

use super::NetError;
use crate::pki::{NodeId, NodeKey, public_key_from_cert};

/// Idle timeout of every connection (DESIGN §11: ≤ 10 s, so a dead peer is noticed quickly).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive interval of every connection.
pub const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(3);
/// Bound on an inbound handshake (server side) before it is abandoned.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
/// Capacity of the accepted-connections channel.
const ACCEPT_QUEUE: usize = 256;

/// Bi-directional streams a peer with a cluster certificate may have open at once on one
/// connection. Between two nodes at most a handful are busy: Raft's append (with its
/// heartbeat), vote and snapshot RPCs (openraft keeps one of each in flight per target), a
/// worker's dispatch session, and the API requests a follower forwards (one per CLI call in
/// progress). A peer over the limit waits for a stream to end (back-pressure), it gets no
/// error.
pub const MAX_BIDI_STREAMS: u32 = 64;
/// Bi-directional streams a peer without a certificate may open at once: a joiner sends one
/// request; one more lets a retry overlap the end of the first stream. This is also the
/// budget of every connection until its peer is authenticated.
pub const UNAUTHENTICATED_BIDI_STREAMS: u32 = 2;
/// Bytes a peer may send on one stream beyond what the application has read (QUIC
/// per-stream flow control). 1 MiB per round trip is 1 GB/s on a LAN and 10 MB/s at 100 ms.
pub const STREAM_RECEIVE_WINDOW: u32 = 1024 * 1024;
/// Bytes a certified peer may send on a connection, all streams together, beyond what the
/// application has read: the most this node buffers for one member's connection.
pub const RECEIVE_WINDOW: u32 = 8 * 1024 * 1024;
/// [`RECEIVE_WINDOW`] for a peer without a certificate (and every connection until its peer
/// is authenticated): a join request is a few hundred bytes.
pub const UNAUTHENTICATED_RECEIVE_WINDOW: u32 = 256 * 1024;
/// Bytes this node buffers for sending on one connection before writers wait.
pub const SEND_WINDOW: u64 = 8 * 1024 * 1024;
/// Datagram bytes buffered per connection before the oldest are dropped. SWIM packets are
/// ≤ 1100 bytes and drained at once by the datagram loop; 128 KiB is ~110 of them.
pub const DATAGRAM_RECEIVE_BUFFER: usize = 128 * 1024;
/// Datagram bytes buffered for sending per connection.
pub const DATAGRAM_SEND_BUFFER: usize = 1024 * 1024;

/// Connections (handshakes in progress included) one remote IP address may hold with this
/// node. Every node of a cluster has its own address; a node keeps one or two connections
/// to another (its own dial and the peer's), so 32 leaves room for NAT and restarts.
pub const MAX_CONNECTIONS_PER_IP: usize = 32;
/// Connections (handshakes in progress included) this node holds in all.
pub const MAX_CONNECTIONS: usize = 1024;
/// Established connections without a client certificate one IP address may hold (a joiner
/// needs one, for one request).
pub const MAX_UNAUTHENTICATED_PER_IP: usize = 8;
/// Established connections without a client certificate this node holds in all.
pub const MAX_UNAUTHENTICATED: usize = 64;
/// How long a connection without a client certificate may stay open: a join is one request,
/// answered within the quorum timeout (3 s).
pub const UNAUTHENTICATED_LIFETIME: Duration = Duration::from_secs(10);
/// A refused address is logged at most once per this interval.
pub const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// Addresses whose last refusal is remembered (for [`REFUSAL_LOG_INTERVAL`]); past that,
/// refusals are logged as one summary line per interval.
const REFUSAL_LOG_ENTRIES: usize = 1024;

/// Application close code: the node holds too many connections (from this address).
pub const CLOSE_TOO_MANY_CONNECTIONS: u32 = 3;
/// Application close code: a connection without a client certificate stayed open longer
/// than [`UNAUTHENTICATED_LIFETIME`].
pub const CLOSE_UNAUTHENTICATED_EXPIRED: u32 = 4;

// The budgets nest.
const _: () = assert!(UNAUTHENTICATED_RECEIVE_WINDOW <= RECEIVE_WINDOW);
const _: () = assert!(STREAM_RECEIVE_WINDOW <= RECEIVE_WINDOW);
const _: () = assert!(UNAUTHENTICATED_BIDI_STREAMS <= MAX_BIDI_STREAMS);
const _: () = assert!(MAX_UNAUTHENTICATED_PER_IP <= MAX_CONNECTIONS_PER_IP);
const _: () = assert!(MAX_UNAUTHENTICATED <= MAX_CONNECTIONS);

/// Caps on inbound connections, enforced by the accept loop. [`Default`] gives the
/// constants of this module; tests use smaller ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Connections (handshakes in progress included) per remote IP address.
    pub per_ip: usize,
    /// Connections (handshakes in progress included) in all.
    pub total: usize,
    /// Established connections without a client certificate, per remote IP address.
    pub unauthenticated_per_ip: usize,
    /// Established connections without a client certificate, in all.
    pub unauthenticated_total: usize,
    /// How long a connection without a client certificate may stay open.
    pub unauthenticated_lifetime: Duration,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            per_ip: MAX_CONNECTIONS_PER_IP,
            total: MAX_CONNECTIONS,
            unauthenticated_per_ip: MAX_UNAUTHENTICATED_PER_IP,
            unauthenticated_total: MAX_UNAUTHENTICATED,
            unauthenticated_lifetime: UNAUTHENTICATED_LIFETIME,
        }
    }
}

/// The transport parameters Shoal uses on every connection: idle timeout [`IDLE_TIMEOUT`],
/// keep-alives every [`KEEP_ALIVE_INTERVAL`], datagrams enabled ([`DATAGRAM_RECEIVE_BUFFER`]),
/// no uni-directional streams (Shoal uses none: a peer cannot park data in streams nobody
/// reads), the unauthenticated stream and window budget ([`UNAUTHENTICATED_BIDI_STREAMS`],
/// [`UNAUTHENTICATED_RECEIVE_WINDOW`]), raised per connection by [`authenticated_budget`],
/// and per-stream windows of [`STREAM_RECEIVE_WINDOW`].
#[must_use]
pub fn transport_config() -> TransportConfig {
    let mut t = TransportConfig::default();
    let idle_ms = u32::try_from(IDLE_TIMEOUT.as_millis()).unwrap_or(10_000);
    t.max_idle_timeout(Some(VarInt::from_u32(idle_ms).into()));
    t.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    t.max_concurrent_bidi_streams(VarInt::from_u32(UNAUTHENTICATED_BIDI_STREAMS));
    t.stream_receive_window(VarInt::from_u32(STREAM_RECEIVE_WINDOW));
    t.receive_window(VarInt::from_u32(UNAUTHENTICATED_RECEIVE_WINDOW));
    t.send_window(SEND_WINDOW);
    t.datagram_receive_buffer_size(Some(DATAGRAM_RECEIVE_BUFFER));
    t.datagram_send_buffer_size(DATAGRAM_SEND_BUFFER);
    t
}

/// Raises a connection to the budget of a peer known to hold a cluster certificate (or a
/// server we verified): [`MAX_BIDI_STREAMS`] streams and a [`RECEIVE_WINDOW`] window.
pub fn authenticated_budget(conn: &Connection) {
    conn.set_max_concurrent_bi_streams(VarInt::from_u32(MAX_BIDI_STREAMS));
    conn.set_receive_window(VarInt::from_u32(RECEIVE_WINDOW));
}

/// An inbound connection whose handshake completed.
#[derive(Debug)]
pub struct Accepted {
    /// The connection.
    pub connection: Connection,
    /// The peer's ed25519 key from its client certificate, or `None` for a peer without a
    /// certificate (a joiner: serve it JOIN only).
    pub peer_key: Option<[u8; 32]>,
    /// The node ID of `peer_key`.
    pub peer_node_id: Option<NodeId>,
}

/// Receiving side of the accept loop. Dropping it makes the loop close further connections.
pub type AcceptedRx = mpsc::Receiver<Accepted>;

/// One quinn endpoint (one UDP socket) used as client and server. Cheap to clone.
///
/// Created client-only by [`Endpoint::bind`]; [`Endpoint::set_server_config`] starts serving
/// when the node inits or joins. The accept loop is always running (trap T3).
#[derive(Clone)]
pub struct Endpoint {
    inner: quinn::Endpoint,
    shared: Arc<Shared>,
}

struct Shared {
    transport: Arc<TransportConfig>,
    client: Mutex<Option<quinn::ClientConfig>>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_addr", &self.inner.local_addr().ok())
            .finish_non_exhaustive()
    }
}

impl Endpoint {
    /// Binds the UDP socket at `listen` (use `[::]:port` for dual-stack) and spawns the accept
    /// loop. Client-only until [`Endpoint::set_server_config`]. The stateless-reset key is
    /// derived from `node_key`, so after a restart the node resets its peers' stale
    /// connections at once (trap in DESIGN §11). Must be called inside a tokio runtime.
    ///
    /// Returns the endpoint and the stream of accepted connections (handshake done, bounded
    /// by [`HANDSHAKE_TIMEOUT`]).
    pub fn bind(
        listen: SocketAddr,
        node_key: &NodeKey,
    ) -> Result<(Endpoint, AcceptedRx), NetError> {
        Self::bind_with_limits(listen, node_key, ConnectionLimits::default())
    }

    /// [`Endpoint::bind`] with other caps on inbound connections than the defaults.
    pub fn bind_with_limits(
        listen: SocketAddr,
        node_key: &NodeKey,
        limits: ConnectionLimits,
    ) -> Result<(Endpoint, AcceptedRx), NetError> {
        let runtime = quinn::default_runtime()
            .ok_or_else(|| NetError::Endpoint("no async runtime".into()))?;
        let socket = std::net::UdpSocket::bind(listen).map_err(|source| NetError::Bind {
            addr: listen,
            source,
        })?;
        let mut config = quinn::EndpointConfig::new(Arc::new(reset_key(node_key)));
        // quinn's default CID generator validates CIDs with a per-process random key, so after a
        // restart packets on a peer's stale connection are silently dropped instead of being
        // answered with a stateless reset. Unvalidated random CIDs make the reset happen.
        config.cid_generator(|| Box::new(RandomCids));
        let inner = quinn::Endpoint::new(config, None, socket, runtime).map_err(|source| {
            NetError::Bind {
                addr: listen,
                source,
            }
        })?;
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let table = Arc::new(Mutex::new(ConnTable::new(limits)));
        tokio::spawn(accept_loop(inner.clone(), tx, table));
        let endpoint = Endpoint {
            inner,
            shared: Arc::new(Shared {
                transport: Arc::new(transport_config()),
                client: Mutex::new(None),
            }),
        };
        Ok((endpoint, rx))
    }

    /// The local address of the UDP socket.
    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        self.inner
            .local_addr()
            .map_err(|e| NetError::Endpoint(e.to_string()))
    }

    /// Starts (or replaces) serving with `config` (from [`crate::pki::server_config`]); Shoal's
    /// transport parameters are applied to it.
    pub fn set_server_config(&self, mut config: quinn::ServerConfig) {
        config.transport_config(self.shared.transport.clone());
        self.inner.set_server_config(Some(config));
    }

    /// Stops accepting new connections (existing ones stay open).
    pub fn clear_server_config(&self) {
        self.inner.set_server_config(None);
    }

    /// Installs the default client configuration used by [`Endpoint::connect`] when none is
    /// given (from [`crate::pki::client_config`]).
    pub fn set_client_config(&self, config: quinn::ClientConfig) {
        if let Ok(mut slot) = self.shared.client.lock() {
            *slot = Some(config);
        }
    }

    /// The installed default client configuration, if any.
    #[must_use]
    pub fn client_config(&self) -> Option<quinn::ClientConfig> {
        self.shared.client.lock().ok().and_then(|c| c.clone())
    }

    /// Dials `addr`, presenting `server_name` for certificate verification (normally
    /// [`crate::pki::CLUSTER_SAN`]), with `config` or else the installed client configuration.
    /// The handshake is bounded by `timeout` (use [`super::DEFAULT_DIAL_TIMEOUT`]).
    ///
    /// Errors: [`NetError::Timeout`], [`NetError::Refused`], [`NetError::Tls`] (with the TLS
    /// reason, e.g. the CA-digest mismatch of a join). Note that in TLS 1.3 a server refusing
    /// *our client certificate* is only seen after the client's side of the handshake is done:
    /// `connect` may then succeed and the connection closes right after with a TLS error.
    pub async fn connect(
        &self,
        addr: SocketAddr,
        server_name: &str,
        config: Option<quinn::ClientConfig>,
        timeout: Duration,
    ) -> Result<Connection, NetError> {
        let mut config = match config {
            Some(c) => c,
            None => self.client_config().ok_or(NetError::NoClientConfig)?,
        };
        config.transport_config(self.shared.transport.clone());
        let connecting = self
            .inner
            .connect_with(config, addr, server_name)
            .map_err(|e| NetError::Endpoint(format!("cannot dial {addr}: {e}")))?;
        match tokio::time::timeout(timeout, connecting).await {
            Err(_) => Err(NetError::Timeout {
                addr,
                after: timeout,
            }),
            Ok(Ok(conn)) => {
                // The server proved it holds a certificate of the cluster CA (or of the CA
                // in our join token): full budget for the streams it opens towards us.
                authenticated_budget(&conn);
                Ok(conn)
            }
            Ok(Err(e)) => Err(classify(addr, e, timeout)),
        }
    }

    /// Closes every connection and the endpoint (the accept loop ends).
    pub fn close(&self) {
        self.inner.close(VarInt::from_u32(0), b"shutdown");
    }

    /// Closes the endpoint and waits at most `grace` (e.g. 1 s) for peers to be told.
    pub async fn shutdown(&self, grace: Duration) {
        self.close();
        let _ = tokio::time::timeout(grace, self.inner.wait_idle()).await;
    }
}

/// Maps a failed handshake to a typed error.
pub(crate) fn classify(addr: SocketAddr, e: ConnectionError, timeout: Duration) -> NetError {
    let is_crypto = |code: u64| (0x100..0x200).contains(&code);
    match e {
        ConnectionError::TransportError(te) if is_crypto(u64::from(te.code)) => NetError::Tls {
            addr,
            reason: if te.reason.is_empty() {
                te.code.to_string()
            } else {
                // rustls prefixes errors raised by a custom verifier with "other error: ".
                te.reason
                    .strip_prefix("other error: ")
                    .unwrap_or(&te.reason)
                    .to_owned()
            },
        },
        ConnectionError::ConnectionClosed(cc) if is_crypto(u64::from(cc.error_code)) => {
            let reason = String::from_utf8_lossy(&cc.reason).into_owned();
            NetError::Tls {
                addr,
                reason: if reason.is_empty() {
                    format!("rejected by the peer: {}", cc.error_code)
                } else {
                    format!("rejected by the peer: {reason}")
                },
            }
        }
        ConnectionError::TimedOut => NetError::Timeout {
            addr,
            after: timeout,
        },
        other => NetError::Refused {
            addr,
            reason: other.to_string(),
        },
    }
}

/// The ed25519 public key of the peer's certificate, or `None` when it presented none.
#[must_use]
pub fn peer_public_key(conn: &Connection) -> Option<[u8; 32]> {
    let identity = conn.peer_identity()?;
    let certs = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    public_key_from_cert(certs.first()?.as_ref()).ok()
}

/// The node ID of the peer's certificate key, or `None` when it presented none.
#[must_use]
pub fn peer_node_id(conn: &Connection) -> Option<NodeId> {
    peer_public_key(conn).map(|k| NodeId::from_public_key(&k))
}

/// HMAC key for QUIC stateless resets, derived from the node's secret key with a domain label:
/// the same after a restart, so peers' stale connections are reset immediately.
fn reset_key(node_key: &NodeKey) -> ring::hmac::Key {
    let mut secret = node_key.secret_bytes();
    let kdf = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
    secret.fill(0);
    let derived = ring::hmac::sign(&kdf, b"shoal/quic-stateless-reset/v1");
    ring::hmac::Key::new(ring::hmac::HMAC_SHA256, derived.as_ref())
}

/// Random 8-byte connection IDs, without validation (see [`Endpoint::bind`]).
struct RandomCids;

impl quinn::ConnectionIdGenerator for RandomCids {
    fn generate_cid(&mut self) -> quinn::ConnectionId {
        let mut bytes = [0u8; CID_LEN];
        if getrandom::fill(&mut bytes).is_err() {
            // Practically unreachable; CIDs only need to be unique, not secret.
            let n = NEXT_CID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            bytes = n.to_le_bytes();
        }
        quinn::ConnectionId::new(&bytes)
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

const CID_LEN: usize = 8;
static NEXT_CID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Live connection counts, by remote address and in all.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    all: usize,
    unauthenticated: usize,
}

/// What the accept loop counts: connections (handshakes in progress included) by remote IP
/// address and in all, and when each refused address was last logged.
struct ConnTable {
    limits: ConnectionLimits,
    by_ip: HashMap<IpAddr, Counts>,
    total: Counts,
    refusals: RefusalLog,
}

type SharedTable = Arc<Mutex<ConnTable>>;

fn lock(table: &SharedTable) -> std::sync::MutexGuard<'_, ConnTable> {
    table
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl ConnTable {
    fn new(limits: ConnectionLimits) -> Self {
        ConnTable {
            limits,
            by_ip: HashMap::new(),
            total: Counts::default(),
            refusals: RefusalLog::default(),
        }
    }

    fn count(&self, ip: IpAddr) -> Counts {
        self.by_ip.get(&ip).copied().unwrap_or_default()
    }

    /// Whether an unvalidated address (its Initial may carry a spoofed source) should prove
    /// it with a Retry before it takes a slot: once its IP, or the node, holds half its cap,
    /// so a spoofer cannot use up a real node's connections.
    fn wants_validation(&self, ip: IpAddr) -> bool {
        self.count(ip).all * 2 >= self.limits.per_ip || self.total.all * 2 >= self.limits.total
    }

    /// Why a new connection from `ip` is refused, if it is.
    fn refusal(&self, ip: IpAddr) -> Option<String> {
        if self.total.all >= self.limits.total {
            Some(format!(
                "this node holds {} connections (the limit)",
                self.total.all
            ))
        } else if self.count(ip).all >= self.limits.per_ip {
            Some(format!(
                "{ip} holds {} connections (the limit per address)",
                self.count(ip).all
            ))
        } else {
            None
        }
    }

    /// Why an established connection from `ip` without a certificate is refused, if it is.
    fn unauthenticated_refusal(&self, ip: IpAddr) -> Option<String> {
        if self.total.unauthenticated >= self.limits.unauthenticated_total {
            Some(format!(
                "this node holds {} connections without a certificate (the limit)",
                self.total.unauthenticated
            ))
        } else if self.count(ip).unauthenticated >= self.limits.unauthenticated_per_ip {
            Some(format!(
                "{ip} holds {} connections without a certificate (the limit per address)",
                self.count(ip).unauthenticated
            ))
        } else {
            None
        }
    }
}

/// One counted connection; dropping it gives the slot back.
struct Slot {
    table: SharedTable,
    ip: IpAddr,
    unauthenticated: bool,
}

impl Slot {
    /// Takes a slot for a new connection from `ip`, or says why not.
    fn take(table: &SharedTable, ip: IpAddr) -> Result<Slot, String> {
        let mut t = lock(table);
        if let Some(why) = t.refusal(ip) {
            return Err(why);
        }
        t.by_ip.entry(ip).or_default().all += 1;
        t.total.all += 1;
        Ok(Slot {
            table: table.clone(),
            ip,
            unauthenticated: false,
        })
    }

    /// Counts this connection as one without a certificate, or says why it must close.
    fn mark_unauthenticated(&mut self) -> Result<(), String> {
        let mut t = lock(&self.table);
        if let Some(why) = t.unauthenticated_refusal(self.ip) {
            return Err(why);
        }
        t.by_ip.entry(self.ip).or_default().unauthenticated += 1;
        t.total.unauthenticated += 1;
        self.unauthenticated = true;
        Ok(())
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut t = lock(&self.table);
        let unauth = usize::from(self.unauthenticated);
        t.total.all = t.total.all.saturating_sub(1);
        t.total.unauthenticated = t.total.unauthenticated.saturating_sub(unauth);
        if let Some(c) = t.by_ip.get_mut(&self.ip) {
            c.all = c.all.saturating_sub(1);
            c.unauthenticated = c.unauthenticated.saturating_sub(unauth);
            if c.all == 0 {
                t.by_ip.remove(&self.ip);
            }
        }
    }
}

/// Rate limit of refusal logs: once per address per [`REFUSAL_LOG_INTERVAL`], with a bounded
/// memory (source addresses of unvalidated packets can be forged in any number).
#[derive(Default)]
struct RefusalLog {
    last: HashMap<IpAddr, Instant>,
    /// When the summary line was last logged, and refusals not logged since.
    overflow: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    /// Whether to log a refusal of `ip` now; `Some(n)` = yes, with `n` refusals of
    /// unremembered addresses suppressed before it.
    fn note(&mut self, ip: IpAddr, now: Instant) -> Option<u64> {
        let fresh = |t: &Instant| now.saturating_duration_since(*t) < REFUSAL_LOG_INTERVAL;
        if let Some(t) = self.last.get(&ip) {
            return if fresh(t) {
                None
            } else {
                self.last.insert(ip, now);
                Some(0)
            };
        }
        if self.last.len() >= REFUSAL_LOG_ENTRIES {
            self.last.retain(|_, t| fresh(t));
        }
        if self.last.len() < REFUSAL_LOG_ENTRIES {
            self.last.insert(ip, now);
            return Some(0);
        }
        // Too many addresses refused lately: one summary line per interval.
        if self.overflow.as_ref().is_some_and(fresh) {
            self.suppressed += 1;
            return None;
        }
        self.overflow = Some(now);
        Some(std::mem::take(&mut self.suppressed))
    }
}

fn log_refusal(table: &SharedTable, ip: IpAddr, why: &str) {
    let note = lock(table).refusals.note(ip, Instant::now());
    match note {
        Some(0) => tracing::warn!(
            "refusing a connection from {ip}: {why} (refusals of this address are logged once a minute)"
        ),
        Some(n) => tracing::warn!(
            "refusing a connection from {ip}: {why} ({n} refusals of other addresses not logged)"
        ),
        None => tracing::debug!("refusing a connection from {ip}: {why}"),
    }
}

/// The IP address a connection is counted under (an IPv4-mapped IPv6 address is its IPv4).
fn counted_ip(addr: SocketAddr) -> IpAddr {
    addr.ip().to_canonical()
}

async fn accept_loop(endpoint: quinn::Endpoint, tx: mpsc::Sender<Accepted>, table: SharedTable) {
    while let Some(incoming) = endpoint.accept().await {
        if tx.is_closed() {
            incoming.refuse();
            continue;
        }
        let remote = incoming.remote_address();
        let ip = counted_ip(remote);
        if !incoming.remote_address_validated()
            && incoming.may_retry()
            && lock(&table).wants_validation(ip)
        {
            // Stateless: costs one packet, and a forged source never comes back.
            if let Err(e) = incoming.retry() {
                e.into_incoming().refuse();
            }
            continue;
        }
        let slot = match Slot::take(&table, ip) {
            Ok(slot) => slot,
            Err(why) => {
                log_refusal(&table, ip, &why);
                incoming.refuse();
                continue;
            }
        };
        let tx = tx.clone();
        let table = table.clone();
        tokio::spawn(async move {
            let mut slot = slot;
            let connecting = match incoming.accept() {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(%remote, "inbound connection failed: {e}");
                    return;
                }
            };
            let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
                Ok(Ok(conn)) => conn,
                Ok(Err(e)) => {
                    match classify(remote, e, HANDSHAKE_TIMEOUT) {
                        err @ NetError::Tls { .. } => {
                            tracing::warn!("inbound handshake refused: {err}");
                        }
                        err => tracing::debug!("inbound handshake failed: {err}"),
                    }
                    return;
                }
                Err(_) => {
                    tracing::debug!(%remote, "inbound handshake timed out");
                    return;
                }
            };
            let peer_key = peer_public_key(&conn);
            let lifetime = if peer_key.is_some() {
                authenticated_budget(&conn);
                None
            } else {
                if let Err(why) = slot.mark_unauthenticated() {
                    log_refusal(&table, ip, &why);
                    conn.close(
                        VarInt::from_u32(CLOSE_TOO_MANY_CONNECTIONS),
                        b"too many connections without a certificate",
                    );
                    return;
                }
                Some(lock(&table).limits.unauthenticated_lifetime)
            };
            // The slot is given back when the connection closes (whoever closes it); a
            // connection without a certificate is closed when its lifetime is over.
            let watched = conn.clone();
            tokio::spawn(async move {
                let _slot = slot;
                match lifetime {
                    None => {
                        watched.closed().await;
                    }
                    Some(lifetime) => {
                        tokio::select! {
                            _ = watched.closed() => {}
                            () = tokio::time::sleep(lifetime) => {
                                tracing::debug!(%remote, "closing a connection without a certificate: open too long");
                                watched.close(
                                    VarInt::from_u32(CLOSE_UNAUTHENTICATED_EXPIRED),
                                    b"a connection without a certificate may only join",
                                );
                            }
                        }
                    }
                }
            });
            let accepted = Accepted {
                peer_node_id: peer_key.map(|k| NodeId::from_public_key(&k)),
                peer_key,
                connection: conn,
            };
            if let Err(mpsc::error::SendError(a)) = tx.send(accepted).await {
                a.connection
                    .close(VarInt::from_u32(0), b"not accepting connections");
            }
        });
    }
}
