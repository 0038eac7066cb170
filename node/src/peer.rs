//! Serving other nodes on the QUIC endpoint: every accepted (or dialed) connection
//! gets a datagram loop (SWIM) and a stream loop (requests by tag).
//!
//! Every stream is authorized before its body is read: the 5-byte frame header gives the
//! tag, `crate::trust` gives the tag's rule (who may send it, how large it may be), and the
//! peer's facts (certificate, removed, manager, Raft member, leader) decide. A refused
//! stream is reset with [`crate::trust::REFUSED`]; nothing of its body is read. A peer
//! whose key is (or becomes) removed is disconnected, on every connection.

use std::sync::Arc;
use std::time::Duration;

use quinn::Connection;
use tracing::debug;

use crate::daemon::Node;
use crate::join::{JoinRequest, TAG_JOIN};
use crate::net::{self, AcceptedRx};
use crate::pki::NodeId;
use crate::trust::{REFUSED, TAG_PING};

/// First byte of a datagram carrying a SWIM packet.
pub const DATAGRAM_SWIM: u8 = 0x53;

/// Close code telling a peer it was removed from the cluster.
pub const CLOSE_REMOVED: u32 = 2;

/// Bound on receiving a request's header once a stream is open.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on receiving a request's body once its header is in (a Raft snapshot chunk of
/// 64 MiB over a slow link included).
pub const BODY_TIMEOUT: Duration = Duration::from_secs(60);

/// Serves every connection the endpoint accepts.
pub async fn serve_accepted(node: Arc<Node>, mut accepted: AcceptedRx) {
    while let Some(a) = accepted.recv().await {
        if let (Some(id), Some(key)) = (a.peer_node_id, a.peer_key)
            && !node.is_removed_key(&key)
        {
            node.pool().insert_accepted(id, a.connection.clone());
        }
        tokio::spawn(serve_connection(node.clone(), a.connection));
    }
}

/// Serves connections this node dialed (the peer may open streams on them too).
pub async fn serve_dialed(
    node: Arc<Node>,
    mut dialed: tokio::sync::mpsc::UnboundedReceiver<(NodeId, Connection)>,
) {
    while let Some((_, conn)) = dialed.recv().await {
        tokio::spawn(serve_connection(node.clone(), conn));
    }
}

/// Closes `conn` as the connection of a removed node.
fn close_removed(conn: &Connection) {
    conn.close(
        CLOSE_REMOVED.into(),
        crate::daemon::REMOVED_REASON.as_bytes(),
    );
}

/// Serves one connection until it closes, or until its peer's key is removed.
pub async fn serve_connection(node: Arc<Node>, conn: Connection) {
    let key = net::peer_public_key(&conn);
    let peer = key.map(|k| NodeId::from_public_key(&k));
    if let Some(k) = key
        && node.is_removed_key(&k)
    {
        debug!(peer = ?peer.map(|p| p.to_string()), "refusing a removed node");
        close_removed(&conn);
        return;
    }
    if let (Some(id), Some(key)) = (peer, key) {
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
                if bytes.first() == Some(&DATAGRAM_SWIM) {
                    node.gossip_packet(id, key, bytes.slice(1..));
                }
            }
        });
    }
    let mut trust = node.subscribe_trust();
    loop {
        let accepted = tokio::select! {
            a = conn.accept_bi() => a,
            changed = trust.changed() => {
                if changed.is_ok()
                    && let Some(k) = key
                    && trust.borrow().removed.contains(&k)
                {
                    debug!(peer = ?peer.map(|p| p.to_string()), "disconnecting a removed node");
                    close_removed(&conn);
                    return;
                }
                continue;
            }
        };
        let (send, recv) = match accepted {
            Ok(s) => s,
            Err(quinn::ConnectionError::ApplicationClosed(close))
                if close.error_code == quinn::VarInt::from_u32(CLOSE_REMOVED) =>
            {
                // Believed only from a manager: anyone else could plant the warning.
                if let Some(k) = key
                    && node.trust_view().managers.contains(&k)
                {
                    node.note_removed(crate::daemon::REMOVED_REASON);
                }
                return;
            }
            Err(e) => {
                debug!(peer = ?peer.map(|p| p.to_string()), "connection closed: {e}");
                return;
            }
        };
        let node = node.clone();
        let conn = conn.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_stream(node, conn, key, send, recv).await {
                debug!(peer = ?peer.map(|p| p.to_string()), "peer request failed: {e}");
            }
        });
    }
}

fn refuse(send: &mut quinn::SendStream, recv: &mut quinn::RecvStream) {
    let _ = send.reset(REFUSED.into());
    let _ = recv.stop(REFUSED.into());
}

async fn serve_stream(
    node: Arc<Node>,
    conn: Connection,
    key: Option<[u8; 32]>,
    mut send: quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> Result<(), net::NetError> {
    let (tag, len) = net::read_header(&mut recv, HEADER_TIMEOUT).await?;
    let Ok(rule) = node.authorize(key, tag).await else {
        refuse(&mut send, &mut recv);
        return Ok(());
    };
    let body = net::read_body(&mut recv, tag, len, rule.max_frame, BODY_TIMEOUT).await?;
    match (tag, key) {
        (TAG_JOIN, _) => {
            let req: JoinRequest = net::decode_body(tag, &body)?;
            let answer = crate::join::serve(&node, req, &conn).await;
            net::respond(&mut send, tag, &answer).await
        }
        (TAG_PING, _) => net::respond(&mut send, tag, &()).await,
        (crate::dispatch::TAG_DISPATCH, Some(key)) => {
            let hello: crate::session::SessionHello = net::decode_body(tag, &body)?;
            let cert_not_after = conn
                .peer_identity()
                .and_then(|i| {
                    i.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
                        .ok()
                })
                .and_then(|certs| {
                    certs
                        .first()
                        .and_then(|c| crate::pki::parse_cert(c.as_ref()).ok())
                })
                .map(|info| info.not_after);
            crate::dispatch::serve_session(node, key, cert_not_after, hello, send, recv).await
        }
        (crate::mesh::TAG_MESH, Some(_)) => {
            let open: crate::mesh::MeshOpen = net::decode_body(tag, &body)?;
            node.mesh.serve_stream(open, send, recv).await
        }
        (crate::mesh::TAG_VIP, Some(_)) => {
            let open: crate::mesh::VipOpen = net::decode_body(tag, &body)?;
            node.mesh.serve_vip_stream(open, send, recv).await
        }
        (crate::logs::TAG_LOGS, Some(_)) => {
            let req: crate::logs::LogsRequest = net::decode_body(tag, &body)?;
            crate::logs::serve_stream(node.mesh_tasks.all(), req, send).await
        }
        (_, Some(key)) => node.handle_peer_request(key, tag, &body, send).await,
        (_, None) => {
            refuse(&mut send, &mut recv);
            Ok(())
        }
    }
}
