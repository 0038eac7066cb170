//! The mesh on one node: the table it serves from, its counters, and the forwarding of one
//! client connection (or one peer's stream) to a task.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::debug;

use super::{EndpointTable, MeshCounters, MeshOpen, MeshReply, TAG_MESH, TaskEndpoint, proxy};
use crate::manager::services::{PortSpec, PublishMode};
use crate::session::PublishProblem;

/// A boxed future (the seams below are object safe).
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where this node's tasks listen: the runtime drivers, behind a seam for the tests.
pub trait LocalTasks: Send + Sync {
    /// The address of `target` of the task `task_id` (run by `driver`) on this node, when it
    /// runs here.
    fn endpoint<'a>(
        &'a self,
        task_id: &'a str,
        driver: &'a str,
        target: u16,
    ) -> BoxFut<'a, Option<SocketAddr>>;
}

/// Streams to other nodes: the QUIC pool, behind a seam for the tests.
pub trait Peers: Send + Sync {
    /// A new bi-stream to `node_id`, dialed at `addr` when no connection is pooled.
    fn open<'a>(
        &'a self,
        node_id: &'a str,
        addr: SocketAddr,
    ) -> BoxFut<'a, Result<(quinn::SendStream, quinn::RecvStream), String>>;
}

/// How long a connect to a task (local TCP, or a peer's answer to a mesh stream) may take
/// before the next task is tried.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// The same for the last task left to try: long enough for the kernel's SYN retries
/// (1 s, then 2 s more), so a task whose accept queue overflowed under load still gets the
/// connection, as a client connecting directly would.
pub const LAST_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// A node whose stream failed is tried last for this long.
const SUSPECT_FOR: Duration = Duration::from_secs(3);

#[derive(Default)]
struct Counters {
    local_forwards: AtomicU64,
    remote_forwards: AtomicU64,
    remote_served: AtomicU64,
    failed_connects: AtomicU64,
    dropped: AtomicU64,
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

pub(super) struct Inner {
    pub(super) node_id: String,
    pub(super) publish_addr: IpAddr,
    pub(super) table: watch::Sender<Arc<EndpointTable>>,
    pub(super) problems: watch::Sender<Vec<PublishProblem>>,
    counters: Counters,
    local: Arc<dyn LocalTasks>,
    peers: Arc<dyn Peers>,
    /// Next round-robin position per published port.
    turns: Mutex<HashMap<u16, usize>>,
    /// Task endpoints found, by (task, target).
    endpoints: Mutex<HashMap<(String, u16), SocketAddr>>,
    /// Nodes whose stream failed lately, and when.
    suspects: Mutex<HashMap<String, Instant>>,
}

/// The routing mesh of this node. Cheap to clone.
#[derive(Clone)]
pub struct Mesh {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("node_id", &self.inner.node_id)
            .field("publish_addr", &self.inner.publish_addr)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Mesh {
    /// A mesh for node `node_id`, listening on `publish_addr`, with an empty table. Its
    /// listeners run once [`Mesh::start`] is called (inside a tokio runtime).
    pub fn new(
        node_id: impl Into<String>,
        publish_addr: IpAddr,
        local: Arc<dyn LocalTasks>,
        peers: Arc<dyn Peers>,
    ) -> Mesh {
        Mesh {
            inner: Arc::new(Inner {
                node_id: node_id.into(),
                publish_addr,
                table: watch::channel(Arc::new(EndpointTable::default())).0,
                problems: watch::channel(Vec::new()).0,
                counters: Counters::default(),
                local,
                peers,
                turns: Mutex::new(HashMap::new()),
                endpoints: Mutex::new(HashMap::new()),
                suspects: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Starts the listeners' loop; it ends when every clone of this mesh is dropped.
    pub fn start(&self) {
        tokio::spawn(super::listen::run(
            Arc::downgrade(&self.inner),
            self.inner.table.subscribe(),
        ));
    }

    /// Serves from `table` from now on (the leader's latest).
    pub fn set_table(&self, table: EndpointTable) {
        self.inner.table.send_if_modified(|t| {
            if **t == table {
                return false;
            }
            *t = Arc::new(table);
            true
        });
        let table = self.table();
        let mut endpoints = lock(&self.inner.endpoints);
        endpoints.retain(|(task, _), _| {
            table
                .services
                .iter()
                .any(|s| s.tasks.iter().any(|t| &t.task_id == task))
        });
    }

    /// Where published ports listen.
    #[must_use]
    pub fn publish_addr(&self) -> IpAddr {
        self.inner.publish_addr
    }

    /// The table served from.
    #[must_use]
    pub fn table(&self) -> Arc<EndpointTable> {
        self.inner.table.borrow().clone()
    }

    /// The ports this node cannot listen on now; changes are announced on the receiver.
    #[must_use]
    pub fn problems(&self) -> watch::Receiver<Vec<PublishProblem>> {
        self.inner.problems.subscribe()
    }

    /// The counters so far.
    #[must_use]
    pub fn counters(&self) -> MeshCounters {
        let c = &self.inner.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        MeshCounters {
            local_forwards: get(&c.local_forwards),
            remote_forwards: get(&c.remote_forwards),
            remote_served: get(&c.remote_served),
            failed_connects: get(&c.failed_connects),
            dropped: get(&c.dropped),
            bytes_in: get(&c.bytes_in),
            bytes_out: get(&c.bytes_out),
        }
    }

    /// Serves a peer's mesh stream: connects to the task it names if that task runs here
    /// and its service publishes the port (this node's own table decides, never the peer),
    /// answers, then splices.
    pub async fn serve_stream(
        &self,
        open: MeshOpen,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Result<(), crate::net::NetError> {
        let inner = &self.inner;
        let table = self.table();
        let found = table.service(&open.service_id).and_then(|svc| {
            let port = svc.ports.iter().find(|p| p.published == open.published)?;
            let task = svc
                .tasks
                .iter()
                .find(|t| t.task_id == open.task_id && t.node_id == inner.node_id)?;
            Some((*port, task.clone()))
        });
        let Some((port, task)) = found else {
            let why = format!(
                "no service publishes port {} with task {} on this node",
                open.published, open.task_id
            );
            crate::net::write_frame(&mut send, TAG_MESH, &MeshReply::Refused(why)).await?;
            let _ = send.finish();
            return Ok(());
        };
        let mut stream = match inner
            // The ingress node bounds its wait itself (short while it has other tasks).
            .connect_local(&task, port, open.client, open.ingress, LAST_CONNECT_TIMEOUT)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                bump(&inner.counters.failed_connects, 1);
                crate::net::write_frame(&mut send, TAG_MESH, &MeshReply::Refused(e)).await?;
                let _ = send.finish();
                return Ok(());
            }
        };
        crate::net::write_frame(&mut send, TAG_MESH, &MeshReply::Connected).await?;
        bump(&inner.counters.remote_served, 1);
        let mut io = tokio::io::join(recv, send);
        inner.splice(&mut stream, &mut io).await;
        Ok(())
    }
}

impl Inner {
    /// Forwards one client connection accepted on `published`: to the next ready task in
    /// turn, trying the others when a connect fails; dropped when none takes it.
    pub(super) async fn forward(&self, mut client: TcpStream, from: SocketAddr, published: u16) {
        let table = self.table.borrow().clone();
        let Some((svc, port)) = table.by_published(published) else {
            bump(&self.counters.dropped, 1);
            return;
        };
        // Where the client connected: only a PROXY header needs the exact address (a
        // system call per connection otherwise saved).
        let listening = SocketAddr::new(self.publish_addr, published);
        let ingress = if port.proxy_protocol {
            client.local_addr().unwrap_or(listening)
        } else {
            listening
        };
        let mut candidates: Vec<&TaskEndpoint> = svc
            .tasks
            .iter()
            .filter(|t| t.ready && (port.mode == PublishMode::Ingress || t.node_id == self.node_id))
            .collect();
        if candidates.is_empty() {
            bump(&self.counters.dropped, 1);
            return;
        }
        let start = {
            let mut turns = lock(&self.turns);
            let turn = turns.entry(published).or_default();
            *turn = turn.wrapping_add(1);
            *turn
        };
        let n = candidates.len();
        candidates.rotate_left(start % n);
        // Nodes that failed lately go last (a dead node costs one timeout, not one per
        // connection).
        {
            let now = Instant::now();
            let mut suspects = lock(&self.suspects);
            suspects.retain(|_, at| now.duration_since(*at) < SUSPECT_FOR);
            candidates.sort_by_key(|t| suspects.contains_key(&t.node_id));
        }
        let last = candidates.len() - 1;
        for (n, task) in candidates.into_iter().enumerate() {
            let timeout = if n == last {
                LAST_CONNECT_TIMEOUT
            } else {
                CONNECT_TIMEOUT
            };
            if task.node_id == self.node_id {
                match self.connect_local(task, port, from, ingress, timeout).await {
                    Ok(mut stream) => {
                        bump(&self.counters.local_forwards, 1);
                        self.splice(&mut client, &mut stream).await;
                        return;
                    }
                    Err(e) => {
                        bump(&self.counters.failed_connects, 1);
                        debug!(task = %task.task_id, "mesh: local connect failed: {e}");
                    }
                }
            } else {
                match self
                    .open_remote(&svc.service_id, task, published, from, ingress, timeout)
                    .await
                {
                    Ok(mut io) => {
                        bump(&self.counters.remote_forwards, 1);
                        self.splice(&mut client, &mut io).await;
                        return;
                    }
                    Err(e) => {
                        bump(&self.counters.failed_connects, 1);
                        lock(&self.suspects).insert(task.node_id.clone(), Instant::now());
                        debug!(task = %task.task_id, node = %task.node_id, "mesh: remote connect failed: {e}");
                    }
                }
            }
        }
        bump(&self.counters.dropped, 1);
    }

    /// Connects to a task on this node, and writes the PROXY header when the port asks.
    async fn connect_local(
        &self,
        task: &TaskEndpoint,
        port: PortSpec,
        client: SocketAddr,
        ingress: SocketAddr,
        timeout: Duration,
    ) -> Result<TcpStream, String> {
        let key = (task.task_id.clone(), port.target);
        let cached = lock(&self.endpoints).get(&key).copied();
        let addr = match cached {
            Some(a) => a,
            None => {
                let found = self
                    .local
                    .endpoint(&task.task_id, &task.driver, port.target)
                    .await
                    .ok_or_else(|| {
                        format!(
                            "task {} has no address for port {} on this node",
                            task.task_id, port.target
                        )
                    })?;
                lock(&self.endpoints).insert(key.clone(), found);
                found
            }
        };
        let connect = tokio::time::timeout(timeout, TcpStream::connect(addr)).await;
        let mut stream = match connect {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => {
                lock(&self.endpoints).remove(&key);
                return Err(format!("cannot connect to {addr}: {e}"));
            }
            Err(_) => {
                lock(&self.endpoints).remove(&key);
                return Err(format!("connecting to {addr} timed out"));
            }
        };
        let _ = stream.set_nodelay(true);
        if port.proxy_protocol {
            stream
                .write_all(&proxy::v2_header(client, ingress))
                .await
                .map_err(|e| format!("cannot send the PROXY header to {addr}: {e}"))?;
        }
        Ok(stream)
    }

    /// Opens a mesh stream to the task's node and waits for it to connect.
    async fn open_remote(
        &self,
        service_id: &str,
        task: &TaskEndpoint,
        published: u16,
        client: SocketAddr,
        ingress: SocketAddr,
        timeout: Duration,
    ) -> Result<tokio::io::Join<quinn::RecvStream, quinn::SendStream>, String> {
        let attempt = async {
            let (mut send, mut recv) = self.peers.open(&task.node_id, task.node_addr).await?;
            let open = MeshOpen {
                service_id: service_id.to_owned(),
                task_id: task.task_id.clone(),
                published,
                client,
                ingress,
            };
            crate::net::write_frame(&mut send, TAG_MESH, &open)
                .await
                .map_err(|e| e.to_string())?;
            let (_, reply) = crate::net::read_frame::<MeshReply>(&mut recv, super::MAX_MESH_OPEN)
                .await
                .map_err(|e| e.to_string())?;
            match reply {
                MeshReply::Connected => Ok(tokio::io::join(recv, send)),
                MeshReply::Refused(why) => Err(crate::text::clean_text(&why, 256)),
            }
        };
        tokio::time::timeout(timeout, attempt)
            .await
            .unwrap_or_else(|_| Err(format!("node {} did not answer in time", task.node_id)))
    }

    /// Copies both ways until both sides are done, counting the bytes.
    async fn splice<A, B>(&self, a: &mut A, b: &mut B)
    where
        A: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
        B: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        match tokio::io::copy_bidirectional(a, b).await {
            Ok((to_task, to_client)) => {
                bump(&self.counters.bytes_in, to_task);
                bump(&self.counters.bytes_out, to_client);
            }
            Err(e) => debug!("mesh: connection ended: {e}"),
        }
    }
}
