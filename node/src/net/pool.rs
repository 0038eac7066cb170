//! Connection pool keyed by node ID.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{Connection, VarInt};
use tokio::sync::mpsc;

use super::{Endpoint, NetError, peer_node_id};
use crate::pki::{CLUSTER_SAN, NodeId};

/// One live connection per peer node, dialed on demand (with the endpoint's installed client
/// configuration and [`CLUSTER_SAN`]) or inserted when accepted. Cheap to clone.
///
/// - Dials to one node are serialized (a per-node async lock) and reused while
///   `close_reason()` is `None`.
/// - A dialed peer must present the key of the node asked for, else the connection is closed
///   and [`NetError::UnexpectedPeer`] returned.
/// - [`Pool::get_or_dial`] never blocks its caller for longer than the dial timeout, waiting
///   for another caller's dial included.
#[derive(Clone)]
pub struct Pool {
    endpoint: Endpoint,
    dial_timeout: Duration,
    slots: Arc<Mutex<HashMap<NodeId, Slot>>>,
    dialed: Option<mpsc::UnboundedSender<(NodeId, Connection)>>,
}

#[derive(Default)]
struct Slot {
    conn: Option<Connection>,
    dial_lock: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("dial_timeout", &self.dial_timeout)
            .finish_non_exhaustive()
    }
}

fn live(conn: Option<&Connection>) -> Option<Connection> {
    conn.filter(|c| c.close_reason().is_none()).cloned()
}

impl Pool {
    /// A pool dialing through `endpoint`, each dial bounded by `dial_timeout`
    /// (e.g. [`super::DEFAULT_DIAL_TIMEOUT`]).
    #[must_use]
    pub fn new(endpoint: Endpoint, dial_timeout: Duration) -> Pool {
        Pool {
            endpoint,
            dial_timeout,
            slots: Arc::new(Mutex::new(HashMap::new())),
            dialed: None,
        }
    }

    /// Like [`Pool::new`], and every connection this pool dials (after its identity check) is
    /// also sent to `dialed`, so the caller can serve it like an accepted one: read its
    /// datagrams and accept the streams the peer opens on it.
    #[must_use]
    pub fn with_dial_listener(
        endpoint: Endpoint,
        dial_timeout: Duration,
        dialed: mpsc::UnboundedSender<(NodeId, Connection)>,
    ) -> Pool {
        Pool {
            dialed: Some(dialed),
            ..Pool::new(endpoint, dial_timeout)
        }
    }

    /// The endpoint this pool dials through.
    #[must_use]
    pub fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The live pooled connection to `node_id`, if any (never dials, never waits).
    #[must_use]
    pub fn get(&self, node_id: &NodeId) -> Option<Connection> {
        live(self.lock_slots().get(node_id).and_then(|s| s.conn.as_ref()))
    }

    /// The live pooled connection to `node_id`, or a new one dialed at `addr` (mutual TLS with
    /// the endpoint's installed client configuration, server name [`CLUSTER_SAN`]). The peer
    /// must present `node_id`'s key. Bounded by the pool's dial timeout in all cases.
    pub async fn get_or_dial(
        &self,
        node_id: &NodeId,
        addr: SocketAddr,
    ) -> Result<Connection, NetError> {
        let lock = {
            let mut slots = self.lock_slots();
            let slot = slots.entry(*node_id).or_default();
            if let Some(conn) = live(slot.conn.as_ref()) {
                return Ok(conn);
            }
            slot.dial_lock.clone()
        };
        let started = tokio::time::Instant::now();
        let dial = async {
            let _guard = lock.lock().await;
            // Someone else may have dialed, or the peer may have connected to us, meanwhile.
            if let Some(conn) = self.get(node_id) {
                return Ok(conn);
            }
            let remaining = self.dial_timeout.saturating_sub(started.elapsed());
            let conn = self
                .endpoint
                .connect(addr, CLUSTER_SAN, None, remaining)
                .await?;
            let found = peer_node_id(&conn);
            if found != Some(*node_id) {
                conn.close(VarInt::from_u32(0), b"unexpected peer identity");
                return Err(NetError::UnexpectedPeer {
                    addr,
                    expected: *node_id,
                    found,
                });
            }
            self.lock_slots().entry(*node_id).or_default().conn = Some(conn.clone());
            if let Some(tx) = &self.dialed {
                let _ = tx.send((*node_id, conn.clone()));
            }
            Ok(conn)
        };
        tokio::time::timeout(self.dial_timeout, dial)
            .await
            .unwrap_or(Err(NetError::Timeout {
                addr,
                after: self.dial_timeout,
            }))
    }

    /// Pools an accepted connection from `node_id` (authenticated: the caller checked its
    /// certificate), replacing any older one — a peer that reconnects has usually restarted.
    /// The replaced connection is not closed (in-flight streams finish; a dead one is reset
    /// by the restarted peer or times out).
    pub fn insert_accepted(&self, node_id: NodeId, conn: Connection) {
        self.lock_slots().entry(node_id).or_default().conn = Some(conn);
    }

    /// Forgets the connection to `node_id` and returns it (not closed; close it if wanted).
    pub fn remove(&self, node_id: &NodeId) -> Option<Connection> {
        let mut slots = self.lock_slots();
        let slot = slots.get_mut(node_id)?;
        let conn = slot.conn.take();
        if Arc::strong_count(&slot.dial_lock) == 1 {
            slots.remove(node_id);
        }
        conn
    }

    /// Every live pooled connection.
    #[must_use]
    pub fn connections(&self) -> Vec<(NodeId, Connection)> {
        self.lock_slots()
            .iter()
            .filter_map(|(id, s)| live(s.conn.as_ref()).map(|c| (*id, c)))
            .collect()
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Slot>> {
        // A poisoned map is still consistent: every critical section is a single insert/take.
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
