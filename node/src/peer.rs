//! Serving other nodes on the QUIC endpoint: every accepted (or dialed) connection
//! gets a datagram loop (SWIM) and a stream loop (requests by tag).
//!
//! A peer without a client certificate may only ask to JOIN. A peer whose key was
//! removed from the cluster is disconnected at once.

use std::sync::Arc;

use quinn::Connection;
use tracing::debug;

use crate::daemon::Node;
use crate::join::{JoinRequest, MAX_JOIN_FRAME, TAG_JOIN};
use crate::net::{self, AcceptedRx};
use crate::pki::NodeId;

/// First byte of a datagram carrying a SWIM packet.
pub const DATAGRAM_SWIM: u8 = 0x53;

/// Largest request frame any tag may send (Raft appends are the big ones).
pub const MAX_REQUEST_FRAME: usize = 64 << 20;

/// Serves every connection the endpoint accepts.
pub async fn serve_accepted(node: Arc<Node>, mut accepted: AcceptedRx) {
    while let Some(a) = accepted.recv().await {
        if let Some(id) = a.peer_node_id {
            node.pool().insert_accepted(id, a.connection.clone());
        }
        tokio::spawn(serve_connection(node.clone(), a.connection, a.peer_node_id));
    }
}

/// Serves connections this node dialed (the peer may open streams on them too).
pub async fn serve_dialed(
    node: Arc<Node>,
    mut dialed: tokio::sync::mpsc::UnboundedReceiver<(NodeId, Connection)>,
) {
    while let Some((id, conn)) = dialed.recv().await {
        tokio::spawn(serve_connection(node.clone(), conn, Some(id)));
    }
}

/// Serves one connection until it closes.
pub async fn serve_connection(node: Arc<Node>, conn: Connection, peer: Option<NodeId>) {
    if let Some(id) = peer
        && node.is_removed(&id).await
    {
        debug!(peer = %id, "refusing a removed node");
        conn.close(2u32.into(), crate::daemon::REMOVED_REASON.as_bytes());
        return;
    }
    tracing::trace!(peer = ?peer.map(|p| p.to_string()), key = net::peer_public_key(&conn).is_some(), "serving connection");
    if let (Some(id), Some(key)) = (peer, net::peer_public_key(&conn)) {
        let node = node.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            loop {
                let bytes = match conn.read_datagram().await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::trace!("datagram loop ended: {e}");
                        break;
                    }
                };
                tracing::trace!(len = bytes.len(), "datagram received");
                if bytes.first() == Some(&DATAGRAM_SWIM) {
                    node.gossip_packet(id, key, bytes.slice(1..));
                }
            }
        });
    }
    loop {
        let (send, recv) = match conn.accept_bi().await {
            Ok(s) => s,
            Err(quinn::ConnectionError::ApplicationClosed(close))
                if close.error_code == quinn::VarInt::from_u32(2) =>
            {
                node.note_removed(&String::from_utf8_lossy(&close.reason));
                return;
            }
            Err(e) => {
                debug!(peer = ?peer.map(|p| p.to_string()), "connection closed: {e}");
                return;
            }
        };
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_stream(node, peer, send, recv).await {
                debug!(peer = ?peer.map(|p| p.to_string()), "peer request failed: {e}");
            }
        });
    }
}

async fn serve_stream(
    node: Arc<Node>,
    peer: Option<NodeId>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), net::NetError> {
    let limit = if peer.is_some() {
        MAX_REQUEST_FRAME
    } else {
        MAX_JOIN_FRAME
    };
    let (tag, body) = net::read_frame_raw(&mut recv, limit).await?;
    match (tag, peer) {
        (crate::dispatch::TAG_DISPATCH, Some(peer)) => {
            let hello: crate::dispatch::SessionHello = net::decode_body(tag, &body)?;
            crate::dispatch::serve_session(node, peer, hello, send, recv).await
        }
        (TAG_JOIN, _) => {
            let req: JoinRequest = net::decode_body(tag, &body)?;
            let answer = node.handle_join(req).await;
            net::respond(&mut send, tag, &answer).await
        }
        (_, None) => {
            // Unauthenticated peers may only join.
            let _ = send.reset(1u32.into());
            Ok(())
        }
        (_, Some(peer)) => node.handle_peer_request(peer, tag, &body, send).await,
    }
}
