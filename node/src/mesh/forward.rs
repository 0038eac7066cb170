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

use super::{
    DiscoveryTable, EndpointTable, MeshCounters, MeshOpen, MeshReply, TAG_MESH, TAG_VIP,
    TaskEndpoint, VipOpen, proxy,
};
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

    /// The address and stack (`com.docker.stack.namespace` label) of the task `task_id` on
    /// this node, when it runs here with an address of its own and belongs to a stack.
    fn stack_member<'a>(
        &'a self,
        task_id: &'a str,
        driver: &'a str,
    ) -> BoxFut<'a, Option<(std::net::IpAddr, String)>> {
        let _ = (task_id, driver);
        Box::pin(async { None })
    }
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

/// Whose round-robin position a connection takes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Turn {
    /// A published port.
    Published(u16),
    /// A service's VIP port.
    Vip(String, u16),
}

/// What a client connected to: a published port, or a service's VIP on one of its ports.
#[derive(Debug, Clone)]
pub(super) enum Entry {
    /// The routing mesh's published port.
    Published(u16),
    /// Service discovery: `service_id`'s VIP (`addr`, the port its target).
    Vip {
        /// The service.
        service_id: String,
        /// The VIP and port the client connected to.
        addr: SocketAddr,
    },
}

pub(super) struct Inner {
    pub(super) node_id: String,
    pub(super) publish_addr: IpAddr,
    pub(super) table: watch::Sender<Arc<EndpointTable>>,
    pub(super) discovery: watch::Sender<Arc<DiscoveryTable>>,
    pub(super) problems: watch::Sender<Vec<PublishProblem>>,
    counters: Counters,
    local: Arc<dyn LocalTasks>,
    peers: Arc<dyn Peers>,
    /// Next round-robin position per published port or per service's VIP port.
    turns: Mutex<HashMap<Turn, usize>>,
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
                discovery: watch::channel(Arc::new(DiscoveryTable::default())).0,
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

    /// Serves names and VIPs from `table` from now on (the leader's latest).
    pub fn set_discovery(&self, table: DiscoveryTable) {
        self.inner.discovery.send_if_modified(|t| {
            if **t == table {
                return false;
            }
            *t = Arc::new(table);
            true
        });
    }

    /// The discovery table served from.
    #[must_use]
    pub fn discovery(&self) -> Arc<DiscoveryTable> {
        self.inner.discovery.borrow().clone()
    }

    /// The discovery table, and its changes.
    #[must_use]
    pub fn discovery_changes(&self) -> watch::Receiver<Arc<DiscoveryTable>> {
        self.inner.discovery.subscribe()
    }

    /// Serves this node's VIPs (`vip_of(index)`: the VIP of a service's index on this
    /// node's network) until the mesh is dropped or the returned task is aborted.
    pub fn start_vips(
        &self,
        vip_of: Arc<dyn Fn(u32) -> Option<std::net::Ipv4Addr> + Send + Sync>,
    ) -> tokio::task::JoinHandle<()> {
        tokio::spawn(super::vip::run(
            Arc::downgrade(&self.inner),
            self.inner.discovery.subscribe(),
            vip_of,
        ))
    }

    /// Serves a peer's VIP stream (tag 12): connects to the task it names if that task runs
    /// here and its service is reached on that port (this node's own discovery table
    /// decides, never the peer), answers, then splices.
    pub async fn serve_vip_stream(
        &self,
        open: VipOpen,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Result<(), crate::net::NetError> {
        let inner = &self.inner;
        let table = self.discovery();
        let found = table.service(&open.service_id).and_then(|svc| {
            svc.ports.contains(&open.target).then_some(())?;
            svc.tasks
                .iter()
                .find(|t| t.task_id == open.task_id && t.node_id == inner.node_id)
                .cloned()
        });
        let Some(task) = found else {
            let why = format!(
                "no service is reached on port {} with task {} on this node",
                open.target, open.task_id
            );
            crate::net::write_frame(&mut send, TAG_VIP, &MeshReply::Refused(why)).await?;
            let _ = send.finish();
            return Ok(());
        };
        let port = PortSpec::tcp(open.target, open.target);
        let mut stream = match inner
            .connect_local(&task, port, open.client, open.client, LAST_CONNECT_TIMEOUT)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                bump(&inner.counters.failed_connects, 1);
                crate::net::write_frame(&mut send, TAG_VIP, &MeshReply::Refused(e)).await?;
                let _ = send.finish();
                return Ok(());
            }
        };
        crate::net::write_frame(&mut send, TAG_VIP, &MeshReply::Connected).await?;
        bump(&inner.counters.remote_served, 1);
        let mut io = tokio::io::join(recv, send);
        inner.splice(&mut stream, &mut io).await;
        Ok(())
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
    pub(super) async fn forward(&self, client: TcpStream, from: SocketAddr, entry: Entry) {
        // The table the candidates are borrowed from stays alive for the whole connection
        // (an `Arc` of the one the node serves from: nothing is copied per connection).
        let published_table;
        let discovery_table;
        // The service, its tasks that may take the connection, the port to reach them on,
        // where the client connected, and whose round-robin turn it is.
        let (service_id, candidates, port, ingress, turn) = match &entry {
            Entry::Published(published) => {
                let published = *published;
                published_table = self.table.borrow().clone();
                let Some((svc, port)) = published_table.by_published(published) else {
                    bump(&self.counters.dropped, 1);
                    return;
                };
                // Where the client connected: only a PROXY header needs the exact address
                // (a system call per connection otherwise saved).
                let listening = SocketAddr::new(self.publish_addr, published);
                let ingress = if port.proxy_protocol {
                    client.local_addr().unwrap_or(listening)
                } else {
                    listening
                };
                let tasks: Vec<&TaskEndpoint> = svc
                    .tasks
                    .iter()
                    .filter(|t| {
                        t.ready && (port.mode == PublishMode::Ingress || t.node_id == self.node_id)
                    })
                    .collect();
                let turn = Turn::Published(published);
                (svc.service_id.as_str(), tasks, port, ingress, turn)
            }
            Entry::Vip { service_id, addr } => {
                discovery_table = self.discovery.borrow().clone();
                let Some(svc) = discovery_table
                    .service(service_id)
                    .filter(|s| s.ports.contains(&addr.port()))
                else {
                    bump(&self.counters.dropped, 1);
                    return;
                };
                let tasks: Vec<&TaskEndpoint> = svc.tasks.iter().filter(|t| t.ready).collect();
                let port = PortSpec::tcp(addr.port(), addr.port());
                let turn = Turn::Vip(service_id.clone(), addr.port());
                (svc.service_id.as_str(), tasks, port, *addr, turn)
            }
        };
        self.forward_to(
            client, from, &entry, service_id, candidates, port, ingress, turn,
        )
        .await;
    }

    /// [`Inner::forward`] once the candidates are known.
    #[allow(clippy::too_many_arguments)]
    async fn forward_to(
        &self,
        mut client: TcpStream,
        from: SocketAddr,
        entry: &Entry,
        service_id: &str,
        mut candidates: Vec<&TaskEndpoint>,
        port: PortSpec,
        ingress: SocketAddr,
        turn: Turn,
    ) {
        if candidates.is_empty() {
            bump(&self.counters.dropped, 1);
            return;
        }
        let start = {
            let mut turns = lock(&self.turns);
            let turn = turns.entry(turn).or_default();
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
                    .open_remote(service_id, task, entry, from, ingress, timeout)
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

    /// Opens a mesh stream (tag 10 for a published port, 12 for a VIP) to the task's node
    /// and waits for it to connect.
    async fn open_remote(
        &self,
        service_id: &str,
        task: &TaskEndpoint,
        entry: &Entry,
        client: SocketAddr,
        ingress: SocketAddr,
        timeout: Duration,
    ) -> Result<tokio::io::Join<quinn::RecvStream, quinn::SendStream>, String> {
        let attempt = async {
            let (mut send, mut recv) = self.peers.open(&task.node_id, task.node_addr).await?;
            let written = match entry {
                Entry::Published(published) => {
                    let open = MeshOpen {
                        service_id: service_id.to_owned(),
                        task_id: task.task_id.clone(),
                        published: *published,
                        client,
                        ingress,
                    };
                    crate::net::write_frame(&mut send, TAG_MESH, &open).await
                }
                Entry::Vip { addr, .. } => {
                    let open = VipOpen {
                        service_id: service_id.to_owned(),
                        task_id: task.task_id.clone(),
                        target: addr.port(),
                        client,
                    };
                    crate::net::write_frame(&mut send, TAG_VIP, &open).await
                }
            };
            written.map_err(|e| e.to_string())?;
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
