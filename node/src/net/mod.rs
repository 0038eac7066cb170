//! The cluster transport (DESIGN §2, §11): one quinn endpoint on one UDP port, client and
//! server; a connection pool keyed by node ID; request/response framing on bi-directional
//! streams; datagram helpers.
//!
//! Stream frame format (every request/response on a bi-stream):
//! `tag: u8 | len: u32 big-endian | body[len]`, where `body = version: u8 (=`[`FRAME_VERSION`]`)
//! ++ postcard(message)`. Frames larger than the reader's `max_len` are rejected before any
//! allocation, and a body's buffer grows with the bytes that arrive, not with the announced
//! length. A request is read under a deadline ([`frame::FRAME_READ_TIMEOUT`], or the caller's
//! with [`read_header`]/[`read_body`]), so a silent or trickling peer is cut off.
//!
//! Bounds on what a peer can make this node hold (streams, windows, connections per address,
//! connections without a certificate) are in [`endpoint`] (`ConnectionLimits`) and
//! [`transport_config`].

mod endpoint;
mod frame;
mod pool;

// Public: what the cluster tests use (the rogue peer, `tests/src/rogue.rs`; the idle timeout).
pub use endpoint::{IDLE_TIMEOUT, transport_config};
pub use frame::{decode_body, read_frame_raw, write_frame};

#[cfg(test)]
pub(crate) use endpoint::{
    Accepted, CLOSE_TOO_MANY_CONNECTIONS, CLOSE_UNAUTHENTICATED_EXPIRED, ConnectionLimits,
    MAX_BIDI_STREAMS, MAX_CONNECTIONS_PER_IP, MAX_UNAUTHENTICATED_PER_IP,
    UNAUTHENTICATED_BIDI_STREAMS,
};
pub(crate) use endpoint::{AcceptedRx, Endpoint, peer_node_id, peer_public_key};
pub(crate) use frame::{
    FRAME_HEADER_LEN, FRAME_VERSION, read_body, read_frame, read_frame_raw_within, read_header,
    request, respond, send_datagram,
};
#[cfg(test)]
pub(crate) use frame::{MAX_DATAGRAM, read_frame_within};
pub(crate) use pool::Pool;

use std::net::SocketAddr;
use std::time::Duration;

use crate::pki::NodeId;

/// Default bound on a dial (DESIGN §11: ≈ 1 s; a dead peer must not stall anyone for longer).
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_millis(1500);

/// Errors of the transport. Messages are meant to be shown to a user as-is.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The UDP socket could not be bound.
    #[error("cannot bind the QUIC endpoint on {addr}: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The underlying error.
        source: std::io::Error,
    },
    /// quinn refused to set up the endpoint or a connection attempt.
    #[error("QUIC endpoint error: {0}")]
    Endpoint(String),
    /// No client configuration was given or installed.
    #[error("no TLS client configuration installed on the endpoint")]
    NoClientConfig,
    /// The peer did not answer in time.
    #[error("connection to {addr} timed out after {} ms", .after.as_millis())]
    Timeout {
        /// The peer dialed.
        addr: SocketAddr,
        /// The bound that expired.
        after: Duration,
    },
    /// The peer refused the connection (no server running there, closed, reset).
    #[error("connection to {addr} refused: {reason}")]
    Refused {
        /// The peer dialed.
        addr: SocketAddr,
        /// What the peer or quinn said.
        reason: String,
    },
    /// The TLS handshake failed (wrong CA, pinned digest mismatch, no/bad client cert, ...).
    #[error("TLS handshake with {addr} failed: {reason}")]
    Tls {
        /// The peer dialed.
        addr: SocketAddr,
        /// The TLS error.
        reason: String,
    },
    /// The peer's certificate carries a different key than the node we meant to reach.
    #[error("peer at {addr} is not node {expected} (it presented {})", .found.map_or_else(|| "no certificate".to_owned(), |id| format!("node {id}")))]
    UnexpectedPeer {
        /// The peer dialed.
        addr: SocketAddr,
        /// The node we expected.
        expected: NodeId,
        /// The node we found, if the peer presented a certificate.
        found: Option<NodeId>,
    },
    /// The connection failed after it was established.
    #[error("connection lost: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to a stream failed.
    #[error("stream write failed: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading from a stream failed (including the stream ending mid-frame).
    #[error("stream read failed: {0}")]
    Read(#[from] quinn::ReadExactError),
    /// The stream was already finished or reset.
    #[error("stream already closed")]
    ClosedStream(#[from] quinn::ClosedStream),
    /// A frame announced a body longer than allowed.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    FrameTooLarge {
        /// Announced length.
        len: u64,
        /// The limit.
        max: usize,
    },
    /// A frame had an unknown format version.
    #[error("unsupported frame version {0}")]
    UnsupportedVersion(u8),
    /// A frame could not be decoded (or encoded).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// A response carried a different tag than the request.
    #[error("unexpected response tag {got} (expected {expected})")]
    UnexpectedTag {
        /// The request's tag.
        expected: u8,
        /// The tag received.
        got: u8,
    },
    /// A request did not complete in time.
    #[error("request timed out after {} ms", .0.as_millis())]
    RequestTimeout(Duration),
    /// The peer did not send a whole frame within the reader's deadline (it sent nothing, or
    /// trickled); the stream was stopped.
    #[error("the peer sent no complete frame within {} ms", .0.as_millis())]
    ReadTimeout(Duration),
    /// A datagram is larger than the connection currently allows.
    #[error("datagram of {len} bytes exceeds the limit of {max} bytes")]
    DatagramTooLarge {
        /// The datagram's length.
        len: usize,
        /// The current limit.
        max: usize,
    },
    /// Datagrams cannot be sent on this connection.
    #[error("datagram send failed: {0}")]
    Datagram(#[from] quinn::SendDatagramError),
}

#[cfg(test)]
mod tests;
