//! `GET /v1/services/{ref}/progress?watch=create|scale|update|rollback&version=N`: the
//! progress of a service as an NDJSON stream (see `api::progress` for the messages and the
//! pure computation). Served on the leader (a follower forwards it and relays the stream):
//! the loop reads the applied state after every Raft apply, and at least every
//! [`WAKE_EVERY`], and sends a message only when the picture changed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::read;
use crate::api::progress::{Follower, ProgressMessage, Watch, render};
use crate::api::server::{ApiError, ApiRequest, Reply};
use crate::api::services::{ServiceRow, TaskFilter, task_rows};
use crate::daemon::node::Node;
use crate::manager::Manager;
use crate::manager::types::LogId;
use crate::util::now_ms;

/// The loop looks again at least this often (soft state such as port problems, the
/// stability wait of create and scale).
const WAKE_EVERY: Duration = Duration::from_millis(500);

/// Messages buffered for a slow reader (each is a whole picture; the loop waits when full).
const BUFFER: usize = 16;

impl Node {
    /// Starts following service `reference` for `req`'s watch. An unknown service (404) or
    /// a bad query (400) is an ordinary error answer, before the stream starts.
    pub(super) async fn service_progress(
        self: &Arc<Self>,
        reference: &str,
        req: &ApiRequest,
    ) -> Result<Reply, ApiError> {
        let watch = Watch::from_query(
            req.query.get("watch").map(String::as_str),
            req.query.get("version").map(String::as_str),
        )
        .map_err(ApiError::bad_request)?;
        let manager = self.manager().await?;
        let (id, name) = read(&manager, |s| {
            s.services
                .resolve_service(reference)
                .map(|r| (r.id.clone(), r.spec.name.clone()))
        })
        .await?
        .map_err(ApiError::not_found)?;
        let (tx, rx) = mpsc::channel(BUFFER);
        tokio::spawn(follow(self.clone(), manager, id, name, watch, tx));
        Ok(Reply::Stream(rx))
    }
}

/// Sends the progress of service `id` into `tx` until the end (sent as the last message),
/// the reader goes away, or this node stops leading (then the stream ends without `end`, and
/// the reader asks again: its request reaches the new leader).
async fn follow(
    node: Arc<Node>,
    manager: Arc<Manager>,
    id: String,
    name: String,
    watch: Watch,
    tx: mpsc::Sender<serde_json::Value>,
) {
    let mut metrics = manager.metrics();
    let mut applied = metrics.borrow_and_update().last_applied;
    let mut follower = Follower::new(watch);
    loop {
        if !manager.is_leader() {
            return;
        }
        let picture = manager.read_local(|s| {
            s.services.services.get(&id).map(|rec| {
                (
                    ServiceRow::of(&s.services, rec),
                    task_rows(&s.services, &s.nodes, TaskFilter::Service(&id)),
                )
            })
        });
        let now = now_ms();
        let messages = match picture {
            None => vec![ProgressMessage::end(Err(format!(
                "service {name} was removed while it was followed"
            )))],
            Some((row, mut rows)) => {
                node.add_publish_problems(&id, &mut rows);
                follower.step(&render(&row, &rows, watch), now)
            }
        };
        for m in &messages {
            if tx.send(m.to_value()).await.is_err() {
                return;
            }
        }
        if messages
            .iter()
            .any(|m| matches!(m, ProgressMessage::End { .. }))
        {
            return;
        }
        let wait = Duration::from_millis(follower.due_in(now)).min(WAKE_EVERY);
        tokio::select! {
            () = tx.closed() => return,
            () = tokio::time::sleep(wait) => {}
            more = next_apply(&mut metrics, &mut applied) => if !more {
                return;
            },
        }
    }
}

/// Waits until Raft applied a new entry on this node; false when Raft has stopped.
async fn next_apply(
    metrics: &mut watch::Receiver<openraft::RaftMetrics<u64, openraft::EmptyNode>>,
    applied: &mut Option<LogId>,
) -> bool {
    loop {
        if metrics.changed().await.is_err() {
            return false;
        }
        let now = metrics.borrow_and_update().last_applied;
        if now != *applied {
            *applied = now;
            return true;
        }
    }
}
