//! The quinn endpoint: one UDP socket, client and server.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

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

/// The transport parameters Shoal uses on every connection: idle timeout [`IDLE_TIMEOUT`],
/// keep-alives every [`KEEP_ALIVE_INTERVAL`], datagrams enabled.
#[must_use]
pub fn transport_config() -> TransportConfig {
    let mut t = TransportConfig::default();
    let idle_ms = u32::try_from(IDLE_TIMEOUT.as_millis()).unwrap_or(10_000);
    t.max_idle_timeout(Some(VarInt::from_u32(idle_ms).into()));
    t.keep_alive_interval(Some(KEEP_ALIVE_INTERVAL));
    t.datagram_receive_buffer_size(Some(1024 * 1024));
    t.datagram_send_buffer_size(1024 * 1024);
    t
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
        tokio::spawn(accept_loop(inner.clone(), tx));
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
            Ok(Ok(conn)) => Ok(conn),
            Ok(Err(e)) => Err(classify(addr, e, timeout)),
        }
    }

    /// Closes every connection and the endpoint (the accept loop ends).
    pub fn close(&self) {
        self.inner.close(VarInt::from_u32(0), b"shutdown");
    }

    /// Waits until all connections are cleanly closed (call after [`Endpoint::close`]). This
    /// can take up to the idle timeout when a half-open handshake lingers; prefer
    /// [`Endpoint::shutdown`].
    pub async fn wait_idle(&self) {
        self.inner.wait_idle().await;
    }

    /// Closes the endpoint and waits at most `grace` (e.g. 1 s) for peers to be told.
    pub async fn shutdown(&self, grace: Duration) {
        self.close();
        let _ = tokio::time::timeout(grace, self.inner.wait_idle()).await;
    }

    /// The underlying quinn endpoint.
    #[must_use]
    pub fn quinn(&self) -> &quinn::Endpoint {
        &self.inner
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

async fn accept_loop(endpoint: quinn::Endpoint, tx: mpsc::Sender<Accepted>) {
    while let Some(incoming) = endpoint.accept().await {
        if tx.is_closed() {
            incoming.refuse();
            continue;
        }
        let tx = tx.clone();
        tokio::spawn(async move {
            let remote = incoming.remote_address();
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
