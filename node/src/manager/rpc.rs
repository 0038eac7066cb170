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
//!
//! Snapshot chunks are checked before openraft sees them ([`install_snapshot_chunk`]):
//! openraft writes a chunk at its `offset` into a `Cursor<Vec<u8>>`, so a chunk far beyond
//! the bytes received would make it allocate (and zero) everything up to that offset. Each
//! chunk must continue the snapshot being received, and no snapshot may exceed
//! [`MAX_SNAPSHOT_BYTES`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{Fatal, InstallSnapshotError, RaftError, SnapshotMismatch};
use openraft::raft::{InstallSnapshotRequest, InstallSnapshotResponse};
use openraft::{AnyError, ErrorSubject, ErrorVerb, SnapshotSegmentId, StorageIOError};
use quinn::{RecvStream, SendStream};
use tokio::sync::watch;

use super::types::{Raft, SnapshotMeta, StorageError, TypeConfig};
use crate::net::{NetError, decode_body, respond};

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
/// Largest snapshot a manager receives: the encoded state machine of a Shoal cluster is a
/// few MB (nodes, services, tasks); the receiver assembles it in memory, so this is also
/// the most memory a leader (or a member posing as one) can make a manager spend on it.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;

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
            let answer = install_snapshot_chunk(raft, decode_body(tag, body)?).await;
            respond(&mut send, tag, &answer).await
        }
    }
}

/// Hands one InstallSnapshot chunk to `raft` if it continues the snapshot being received:
/// its offset must be the number of bytes received so far (or 0, to start a snapshot or
/// restart this one, or the offset of the previous chunk, which the leader resends when its
/// answer was lost), and the snapshot must stay within [`MAX_SNAPSHOT_BYTES`]. Nothing is
/// allocated from a peer's numbers: a refused chunk never reaches openraft.
///
/// A chunk out of order is answered with openraft's `SnapshotMismatch` (the leader restarts
/// from offset 0); a snapshot too large with a fatal storage error for that transfer (the
/// receiving Raft is unaffected).
pub async fn install_snapshot_chunk(
    raft: &Raft,
    req: InstallSnapshotRequest<TypeConfig>,
) -> Result<InstallSnapshotResponse<u64>, RaftError<u64, InstallSnapshotError>> {
    let receipt = receipt_of(raft);
    let mut receipt = receipt.lock().await;
    let id = req.meta.snapshot_id.clone();
    let (offset, len, done, vote) = (req.offset, req.data.len(), req.done, req.vote);
    if let Err(refusal) = receipt.check(&id, offset, len) {
        tracing::warn!(snapshot = %id, offset, len, "refusing a snapshot chunk: {refusal}");
        return Err(refusal.into_raft_error(&req.meta, offset));
    }
    let answer = raft.install_snapshot(req).await;
    match &answer {
        // A stale leader (openraft accepts a vote >= its own): it wrote nothing.
        Ok(resp)
            if !matches!(
                vote.partial_cmp(&resp.vote),
                Some(std::cmp::Ordering::Greater | std::cmp::Ordering::Equal)
            ) => {}
        Ok(_) if !done => receipt.accepted(&id, offset, len),
        // Done (openraft dropped its stream), or failed: the next chunk must start at 0.
        _ => receipt.reset(),
    }
    answer
}

/// Where the snapshot being received stands, as far as [`install_snapshot_chunk`] let
/// chunks through. It never lets openraft's stream position run ahead of it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SnapshotReceipt {
    /// The snapshot being received; `None`: the next chunk must be at offset 0.
    id: Option<String>,
    /// Bytes received so far: the offset of the next chunk.
    received: u64,
    /// The offset of the last chunk let through (a resend of it is let through again).
    last_start: u64,
}

/// Why a snapshot chunk was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkRefusal {
    /// The chunk does not continue the snapshot being received.
    #[error("chunk at offset {got}, expected offset {expected}")]
    OutOfOrder {
        /// The offset a chunk of this snapshot must have.
        expected: u64,
        /// The chunk's offset.
        got: u64,
    },
    /// The snapshot would exceed [`MAX_SNAPSHOT_BYTES`].
    #[error("the snapshot would reach {end} bytes, over the limit of {MAX_SNAPSHOT_BYTES}")]
    TooLarge {
        /// Where the chunk would end (saturated at `u64::MAX`).
        end: u64,
    },
}

impl ChunkRefusal {
    /// The answer sent back to the leader for a chunk of `meta` at `offset`.
    fn into_raft_error(
        self,
        meta: &SnapshotMeta,
        offset: u64,
    ) -> RaftError<u64, InstallSnapshotError> {
        match self {
            ChunkRefusal::OutOfOrder { expected, .. } => {
                RaftError::APIError(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
                    expect: SnapshotSegmentId {
                        id: meta.snapshot_id.clone(),
                        offset: expected,
                    },
                    got: SnapshotSegmentId {
                        id: meta.snapshot_id.clone(),
                        offset,
                    },
                }))
            }
            too_large @ ChunkRefusal::TooLarge { .. } => {
                let err: StorageError = StorageIOError::new(
                    ErrorSubject::Snapshot(Some(meta.signature())),
                    ErrorVerb::Write,
                    AnyError::error(too_large.to_string()),
                )
                .into();
                RaftError::Fatal(Fatal::StorageError(err))
            }
        }
    }
}

impl SnapshotReceipt {
    /// Whether a chunk of snapshot `id` at `offset`, `len` bytes long, may be written.
    ///
    /// # Errors
    ///
    /// [`ChunkRefusal::TooLarge`] when `offset + len` exceeds [`MAX_SNAPSHOT_BYTES`];
    /// [`ChunkRefusal::OutOfOrder`] when the chunk does not start a snapshot (offset 0) and
    /// is neither the next chunk of the one being received nor a resend of its last chunk.
    pub fn check(&self, id: &str, offset: u64, len: usize) -> Result<(), ChunkRefusal> {
        let end = offset.saturating_add(u64::try_from(len).unwrap_or(u64::MAX));
        if end > MAX_SNAPSHOT_BYTES {
            return Err(ChunkRefusal::TooLarge { end });
        }
        let expected = match &self.id {
            Some(current) if current == id => self.received,
            _ => 0,
        };
        let resend = self.id.as_deref() == Some(id) && offset == self.last_start;
        if offset == 0 || offset == expected || resend {
            Ok(())
        } else {
            Err(ChunkRefusal::OutOfOrder {
                expected,
                got: offset,
            })
        }
    }

    /// Records a chunk that [`SnapshotReceipt::check`] let through and Raft accepted.
    pub fn accepted(&mut self, id: &str, offset: u64, len: usize) {
        if self.id.as_deref() != Some(id) {
            self.id = Some(id.to_owned());
        }
        self.received = offset.saturating_add(u64::try_from(len).unwrap_or(u64::MAX));
        self.last_start = offset;
    }

    /// Forgets the snapshot being received: the next chunk must be at offset 0.
    pub fn reset(&mut self) {
        *self = SnapshotReceipt::default();
    }

    /// Bytes received so far of the snapshot being received.
    #[must_use]
    pub fn received(&self) -> u64 {
        self.received
    }
}

type Metrics = watch::Receiver<openraft::RaftMetrics<u64, openraft::EmptyNode>>;
type SharedReceipt = Arc<tokio::sync::Mutex<SnapshotReceipt>>;

/// The receipt of each running Raft of this process, found by its metrics channel (a Raft
/// handle has no other identity; tests run several in one process). Entries of Rafts that
/// stopped are dropped on the next lookup.
static RECEIPTS: Mutex<Vec<(Metrics, SharedReceipt)>> = Mutex::new(Vec::new());

fn receipt_of(raft: &Raft) -> SharedReceipt {
    let metrics = raft.metrics();
    let mut all = RECEIPTS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    all.retain(|(m, _)| m.has_changed().is_ok());
    if let Some((_, receipt)) = all.iter().find(|(m, _)| m.same_channel(&metrics)) {
        return receipt.clone();
    }
    let receipt = SharedReceipt::default();
    all.push((metrics, receipt.clone()));
    receipt
}

/// Serves one Raft RPC on a fresh bi-stream, reading the whole request frame itself
/// (bounded by [`REQUEST_READ_TIMEOUT`] and the tag's limit): for a loop that serves only
/// Raft. A router that reads frames itself calls [`serve_raft_request`].
pub async fn serve_raft_stream(
    raft: &Raft,
    mut recv: RecvStream,
    send: SendStream,
) -> Result<(), NetError> {
    // On expiry the stream is stopped and `NetError::ReadTimeout` returned.
    let (tag, body) = crate::net::read_frame_raw_within(
        &mut recv,
        MAX_APPEND_FRAME.max(MAX_SNAPSHOT_FRAME),
        REQUEST_READ_TIMEOUT,
    )
    .await?;
    serve_raft_request(raft, tag, &body, send).await
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use openraft::{CommittedLeaderId, Membership, Vote};

    use super::*;
    use crate::manager::Manager;
    use crate::manager::state::ClusterState;
    use crate::manager::types::{LogId, StoredMembership};

    #[test]
    fn receipt_lets_only_continuing_chunks_through() {
        let mut r = SnapshotReceipt::default();
        // A new snapshot starts at 0.
        assert_eq!(
            r.check("s1", 5, 10),
            Err(ChunkRefusal::OutOfOrder {
                expected: 0,
                got: 5
            })
        );
        r.check("s1", 0, 10).unwrap();
        r.accepted("s1", 0, 10);
        assert_eq!(r.received(), 10);
        // The next chunk continues at 10; a gap or a chunk behind is refused.
        r.check("s1", 10, 10).unwrap();
        assert_eq!(
            r.check("s1", 11, 10),
            Err(ChunkRefusal::OutOfOrder {
                expected: 10,
                got: 11
            })
        );
        assert!(r.check("s1", 1 << 45, 1).is_err());
        r.accepted("s1", 10, 10);
        // A resend of the last chunk (its answer was lost), or a restart at 0, is fine.
        r.check("s1", 10, 10).unwrap();
        r.check("s1", 0, 10).unwrap();
        assert!(r.check("s1", 5, 10).is_err());
        // Another snapshot must start at 0.
        assert!(r.check("s2", 20, 10).is_err());
        r.check("s2", 0, 10).unwrap();
        // Never beyond the cap, whatever the offset.
        assert_eq!(
            r.check("s1", 20, (MAX_SNAPSHOT_BYTES - 19) as usize),
            Err(ChunkRefusal::TooLarge {
                end: MAX_SNAPSHOT_BYTES + 1
            })
        );
        assert_eq!(
            r.check("s1", u64::MAX, 10),
            Err(ChunkRefusal::TooLarge { end: u64::MAX })
        );
        r.check("s1", 20, (MAX_SNAPSHOT_BYTES - 20) as usize)
            .unwrap();
        r.reset();
        assert_eq!(r, SnapshotReceipt::default());
    }

    fn log_id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, 2), index)
    }

    /// A snapshot of a state whose Raft-ID table holds `marker`, as `store.rs` encodes one.
    fn snapshot(marker: &str) -> (SnapshotMeta, Vec<u8>) {
        let membership = StoredMembership::new(
            Some(log_id(1)),
            Membership::new(vec![BTreeSet::from([1, 2])], ()),
        );
        let state = ClusterState {
            raft_ids: BTreeMap::from([(7, marker.to_owned())]),
            ..ClusterState::default()
        };
        let data =
            postcard::to_stdvec(&(Some(log_id(10)), membership.clone(), state.encode())).unwrap();
        let meta = SnapshotMeta {
            last_log_id: Some(log_id(10)),
            last_membership: membership,
            snapshot_id: format!("snap-{marker}"),
        };
        (meta, data)
    }

    fn chunk(
        meta: &SnapshotMeta,
        offset: u64,
        data: &[u8],
        done: bool,
    ) -> InstallSnapshotRequest<TypeConfig> {
        InstallSnapshotRequest {
            vote: Vote::new_committed(1, 2),
            meta: meta.clone(),
            offset,
            data: data.to_vec(),
            done,
        }
    }

    #[tokio::test]
    async fn hostile_chunks_are_refused_and_in_order_chunks_install() {
        let dir = tempfile::tempdir().unwrap();
        let manager = Manager::open(&dir.path().join("raft.redb"), 1, "c1", 1.0)
            .await
            .unwrap();
        let raft = manager.raft();
        let (meta, data) = snapshot("installed");
        let half = data.len() / 2;

        // The first chunk starts the snapshot.
        install_snapshot_chunk(raft, chunk(&meta, 0, &data[..half], false))
            .await
            .unwrap();
        // A chunk at 2^45 would make openraft's cursor allocate 32 TiB: refused before it.
        let err = install_snapshot_chunk(raft, chunk(&meta, 1 << 45, b"x", false))
            .await
            .unwrap_err();
        assert!(matches!(&err, RaftError::Fatal(_)), "{err}");
        // A gap within the cap (512 MiB of zeroes) is refused just as well.
        let err = install_snapshot_chunk(raft, chunk(&meta, 1 << 29, b"x", false))
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                RaftError::APIError(InstallSnapshotError::SnapshotMismatch(m))
                    if m.expect.offset == half as u64 && m.got.offset == 1 << 29
            ),
            "{err}"
        );
        // Out of order (a gap of one byte).
        let err = install_snapshot_chunk(raft, chunk(&meta, half as u64 + 1, &data[half..], true))
            .await
            .unwrap_err();
        assert!(
            matches!(
                &err,
                RaftError::APIError(InstallSnapshotError::SnapshotMismatch(_))
            ),
            "{err}"
        );
        // Over the cap.
        let err = install_snapshot_chunk(raft, chunk(&meta, MAX_SNAPSHOT_BYTES, b"x", true))
            .await
            .unwrap_err();
        assert!(matches!(&err, RaftError::Fatal(_)), "{err}");
        assert!(err.to_string().contains("over the limit"), "{err}");

        // The in-order rest completes the snapshot, which Raft installs.
        install_snapshot_chunk(raft, chunk(&meta, half as u64, &data[half..], true))
            .await
            .unwrap();
        raft.wait(Some(Duration::from_secs(5)))
            .snapshot(log_id(10), "snapshot installed")
            .await
            .unwrap();
        let marker = manager.read_local(|s| s.raft_ids.get(&7).cloned());
        assert_eq!(marker.as_deref(), Some("installed"));

        // The receipt was reset by the last chunk: a new snapshot starts at 0 again.
        let (meta2, data2) = snapshot("second");
        assert!(
            install_snapshot_chunk(raft, chunk(&meta2, 10, &data2[10..], true))
                .await
                .is_err()
        );
        manager.shutdown().await;
    }
}
