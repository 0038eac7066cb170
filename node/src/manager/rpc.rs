//! The server side of Raft between managers: one RPC per bi-directional stream.
//!
//! Wire format (DESIGN §2, the framing of [`crate::net`]): the requester writes
//! `tag | len: u32 BE | FRAME_VERSION | postcard(request)` and finishes its side; the server
//! answers with one frame under the same tag whose message is
//! `Result<response, RaftError<..>>`, then finishes. Tags:
//!
//! | tag | request | answer |
//! |---|---|---|
//! | [`TAG_RAFT_APPEND`] | `AppendEntriesRequest` | `Result<AppendEntriesResponse, RaftError>` |
//! | [`TAG_RAFT_VOTE`] | `VoteRequest` | `Result<VoteResponse, RaftError>` |
//! | [`TAG_RAFT_SNAPSHOT`] | `InstallSnapshotRequest` (one chunk) | `Result<InstallSnapshotResponse, RaftError<InstallSnapshotError>>` |
//!
//! Tag 1 is JOIN; tags from 5 on belong to other services.

use std::time::Duration;

use quinn::{RecvStream, SendStream};

use super::types::Raft;
use crate::net::{NetError, decode_body, read_frame_raw, respond};

/// Stream tag of AppendEntries (heartbeats included).
pub const TAG_RAFT_APPEND: u8 = 2;
/// Stream tag of RequestVote.
pub const TAG_RAFT_VOTE: u8 = 3;
/// Stream tag of one InstallSnapshot chunk.
pub const TAG_RAFT_SNAPSHOT: u8 = 4;

/// Largest AppendEntries request accepted (a batch of up to openraft's `max_payload_entries`).
pub const MAX_APPEND_FRAME: usize = 64 * 1024 * 1024;
/// Largest RequestVote request accepted.
pub const MAX_VOTE_FRAME: usize = 64 * 1024;
/// Largest InstallSnapshot chunk accepted (openraft's chunks are 3 MiB by default).
pub const MAX_SNAPSHOT_FRAME: usize = 64 * 1024 * 1024;
/// Largest answer a requester accepts.
pub const MAX_RESPONSE_FRAME: usize = 1024 * 1024;

/// Bound on reading one request in [`serve_raft_stream`]. The requester gives up far sooner
/// (its RPC TTL); this only stops a stuck stream from holding a task forever.
pub const REQUEST_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether `tag` is one of the Raft tags served by [`serve_raft_request`].
#[must_use]
pub fn is_raft_tag(tag: u8) -> bool {
    matches!(tag, TAG_RAFT_APPEND | TAG_RAFT_VOTE | TAG_RAFT_SNAPSHOT)
}

/// The largest request body accepted under `tag` (0 for a tag that is not Raft's).
#[must_use]
pub fn max_request_frame(tag: u8) -> usize {
    match tag {
        TAG_RAFT_APPEND => MAX_APPEND_FRAME,
        TAG_RAFT_VOTE => MAX_VOTE_FRAME,
        TAG_RAFT_SNAPSHOT => MAX_SNAPSHOT_FRAME,
        _ => 0,
    }
}

/// Serves one Raft RPC whose request frame the stream router has already read with
/// [`crate::net::read_frame_raw`]: decodes `body` (version byte included) as the request
/// for `tag`, calls Raft, and answers on `send` under the same tag (then finishes it).
///
/// Call it only for authenticated manager peers, in its own task per stream (an
/// AppendEntries waits for the log's fsync; a vote must not wait behind it).
///
/// Errors: a tag that is not Raft's, a body over the tag's limit ([`max_request_frame`]) or
/// undecodable, or a failed answer. Raft's own refusals are not errors here: they travel
/// back to the requester as `Err`.
pub async fn serve_raft_request(
    raft: &Raft,
    tag: u8,
    body: &[u8],
    mut send: SendStream,
) -> Result<(), NetError> {
    let max = max_request_frame(tag);
    if max == 0 {
        let _ = send.reset(quinn::VarInt::from_u32(1));
        return Err(NetError::Malformed(format!(
            "{tag} is not a raft stream tag"
        )));
    }
    if body.len() > max {
        let _ = send.reset(quinn::VarInt::from_u32(1));
        return Err(NetError::FrameTooLarge {
            len: body.len() as u64,
            max,
        });
    }
    match tag {
        TAG_RAFT_APPEND => {
            let answer = raft.append_entries(decode_body(tag, body)?).await;
            respond(&mut send, tag, &answer).await
        }
        TAG_RAFT_VOTE => {
            let answer = raft.vote(decode_body(tag, body)?).await;
            respond(&mut send, tag, &answer).await
        }
        _ => {
            let answer = raft.install_snapshot(decode_body(tag, body)?).await;
            respond(&mut send, tag, &answer).await
        }
    }
}

/// Serves one Raft RPC on a fresh bi-stream, reading the whole request frame itself
/// (bounded by [`REQUEST_READ_TIMEOUT`] and the tag's limit): for a loop that serves only
/// Raft. A router that reads frames itself calls [`serve_raft_request`].
pub async fn serve_raft_stream(
    raft: &Raft,
    mut recv: RecvStream,
    send: SendStream,
) -> Result<(), NetError> {
    let (tag, body) = tokio::time::timeout(
        REQUEST_READ_TIMEOUT,
        read_frame_raw(&mut recv, MAX_APPEND_FRAME.max(MAX_SNAPSHOT_FRAME)),
    )
    .await
    .map_err(|_| NetError::RequestTimeout(REQUEST_READ_TIMEOUT))??;
    serve_raft_request(raft, tag, &body, send).await
}
