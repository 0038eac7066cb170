//! Managers talking Raft over real QUIC on 127.0.0.1: election, replication, failover,
//! quorum loss, snapshot install, and the wire format of the Raft RPCs.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{Fatal, InstallSnapshotError, RPCError, RaftError, SnapshotMismatch};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{VoteRequest, VoteResponse};
use openraft::{
    AnyError, EmptyNode, ErrorSubject, ErrorVerb, SnapshotSegmentId, StorageError, StorageIOError,
    Vote,
};
use quinn::Connection;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::network::{QuicNetworkFactory, Resolver};
use super::rpc::{self, TAG_RAFT_VOTE};
use super::state::{
    Availability, ClusterRecord, Command, CommandResult, NodeRecord, NodeStatus, Role,
};
use super::{Manager, ManagerError, raft_config};
use crate::net::{self, DEFAULT_DIAL_TIMEOUT, Endpoint, NetError, Pool};
use crate::pki::{self, ClusterCa, NodeId, NodeKey};
use crate::testutil::poll_until;

const DEADLINE: Duration = Duration::from_secs(10);
/// Poll interval of the `wait_until` loops (they always have a deadline).
const POLL: Duration = Duration::from_millis(10);

/// One manager: its endpoint, pool, Raft and the task serving its peers' streams.
struct TestNode {
    ca: Arc<ClusterCa>,
    book: Book,
    key: NodeKey,
    raft_id: u64,
    addr: SocketAddr,
    endpoint: Endpoint,
    /// Kept so that [`TestNode::hang`] leaves the connections open.
    pool: Pool,
    manager: Arc<Manager>,
    serve: tokio::task::JoinHandle<()>,
    dir: Arc<tempfile::TempDir>,
}

impl TestNode {
    /// Stops Raft and stops serving, but leaves the endpoint and every connection open:
    /// peers' requests go unanswered, as with a `kill -9`ed node before the idle timeout.
    async fn hang(&self) {
        self.manager.shutdown().await;
        self.serve.abort();
        assert!(!self.pool.connections().is_empty());
    }

    /// Stops Raft, closes the endpoint (peers are told) and stops serving.
    async fn stop(&self) {
        self.manager.shutdown().await;
        self.endpoint.close();
        self.serve.abort();
    }

    fn record(&self) -> NodeRecord {
        manager_record(&self.key, self.raft_id, self.addr)
    }
}

/// The node-table record of a manager.
fn manager_record(key: &NodeKey, raft_id: u64, addr: SocketAddr) -> NodeRecord {
    NodeRecord {
        id: key.node_id().to_string(),
        public_key: key.public_key(),
        raft_id,
        hostname: format!("m{raft_id}"),
        addr: addr.to_string(),
        role: Role::Manager,
        availability: Availability::Active,
        status: NodeStatus::Ready,
        labels: BTreeMap::new(),
        platform: "linux/x86_64".into(),
        memory_bytes: 1 << 30,
        cpus: 2,
        drivers: vec!["process".into()],
        version: "0".into(),
        created_at: 1,
        updated_at: 1,
    }
}

/// An endpoint bound on 127.0.0.1:0 with a certificate from `ca`, serving and dialing.
fn endpoint(ca: &ClusterCa, key: &NodeKey) -> (Endpoint, net::AcceptedRx) {
    let cert = ca
        .issue_node_cert(&key.public_key(), &key.node_id())
        .unwrap();
    let (endpoint, accepted) = Endpoint::bind("127.0.0.1:0".parse().unwrap(), key).unwrap();
    endpoint.set_server_config(pki::server_config(&cert, ca.cert_der(), key).unwrap());
    endpoint.set_client_config(pki::client_config(&cert, ca.cert_der(), key).unwrap());
    (endpoint, accepted)
}

/// The daemon's job in miniature: pool accepted connections, and serve Raft on every stream
/// a peer opens, on accepted and dialed connections alike, one task per stream.
async fn serve(
    manager: Arc<Manager>,
    pool: Pool,
    mut accepted: net::AcceptedRx,
    mut dialed: mpsc::UnboundedReceiver<(NodeId, Connection)>,
) {
    let mut conns = JoinSet::new();
    loop {
        // Accepted connections go through a router (as the daemon's); dialed ones through
        // `serve_raft_stream`, so both server entry points are exercised.
        let (conn, routed) = tokio::select! {
            Some(acc) = accepted.recv() => {
                let Some(peer) = acc.peer_node_id else { continue };
                pool.insert_accepted(peer, acc.connection.clone());
                (acc.connection, true)
            }
            Some((_, conn)) = dialed.recv() => (conn, false),
            else => return,
        };
        let manager = manager.clone();
        conns.spawn(async move {
            let mut streams = JoinSet::new();
            while let Ok((send, mut recv)) = conn.accept_bi().await {
                let manager = manager.clone();
                streams.spawn(async move {
                    if routed {
                        if let Ok((tag, body)) = net::read_frame_raw(&mut recv, 64 << 20).await {
                            let _ = rpc::serve_raft_request(manager.raft(), tag, &body, send).await;
                        }
                    } else {
                        let _ = rpc::serve_raft_stream(manager.raft(), recv, send).await;
                    }
                });
                while streams.try_join_next().is_some() {}
            }
        });
        while conns.try_join_next().is_some() {}
    }
}

/// How a test cluster finds its peers.
#[derive(Clone, Copy)]
enum Resolve {
    /// A fixed map of every member (raft id → node id, address).
    Static,
    /// The managers' own node tables (as the daemon does).
    NodeTable,
}

/// Raft ID → (node ID, address) of every member, for [`Resolve::Static`]; updated when a
/// member restarts at a new address.
type Book = Arc<std::sync::RwLock<HashMap<u64, (NodeId, SocketAddr)>>>;

/// `n` managers, opened (not initialized), each serving its endpoint.
async fn start(n: usize, resolve: Resolve, tweak: impl Fn(&mut openraft::Config)) -> Vec<TestNode> {
    let ca = Arc::new(ClusterCa::generate("test-cluster").unwrap());
    let book = Book::default();
    let mut nodes = Vec::new();
    for _ in 0..n {
        let key = NodeKey::generate().unwrap();
        let dir = Arc::new(tempfile::tempdir().unwrap());
        let mut config = raft_config("test-cluster", 1.0).unwrap();
        tweak(&mut config);
        let config = config.validate().unwrap();
        nodes.push(launch(&ca, key, dir, resolve, &book, config).await);
    }
    nodes
}

/// Starts (or restarts, on the same key and state dir) one manager on a fresh endpoint.
async fn launch(
    ca: &Arc<ClusterCa>,
    key: NodeKey,
    dir: Arc<tempfile::TempDir>,
    resolve: Resolve,
    book: &Book,
    config: openraft::Config,
) -> TestNode {
    let (endpoint, accepted) = endpoint(ca, &key);
    let addr = endpoint.local_addr().unwrap();
    let raft_id = super::raft_id_for(&key.public_key());
    book.write().unwrap().insert(raft_id, (key.node_id(), addr));
    let (dialed_tx, dialed_rx) = mpsc::unbounded_channel();
    let pool = Pool::with_dial_listener(endpoint.clone(), DEFAULT_DIAL_TIMEOUT, dialed_tx);
    let factory = match resolve {
        Resolve::Static => {
            let book = book.clone();
            let resolver: Resolver =
                Arc::new(move |id| book.read().ok().and_then(|b| b.get(&id).copied()));
            QuicNetworkFactory::new(pool.clone(), resolver)
        }
        Resolve::NodeTable => QuicNetworkFactory::node_table(pool.clone()),
    };
    // A restarted manager may find its database still held by the stopping Raft for a
    // moment: retry the open until the deadline.
    let db = dir.path().join("raft.redb");
    let manager = Arc::new(
        poll_until("the database to reopen", DEADLINE, POLL, || {
            Manager::open_quic(&db, raft_id, config.clone(), factory.clone())
        })
        .await,
    );
    let serve = tokio::spawn(serve(manager.clone(), pool.clone(), accepted, dialed_rx));
    TestNode {
        ca: ca.clone(),
        book: book.clone(),
        key,
        raft_id,
        addr,
        endpoint,
        pool,
        manager,
        serve,
        dir,
    }
}

/// The same manager (key, state dir) started again on a new port.
async fn restart(old: &TestNode) -> TestNode {
    let key = NodeKey::from_signing_key(old.key.signing_key().clone());
    let config = raft_config("test-cluster", 1.0).unwrap();
    launch(
        &old.ca,
        key,
        old.dir.clone(),
        Resolve::Static,
        &old.book,
        config,
    )
    .await
}

fn cluster_record() -> ClusterRecord {
    ClusterRecord {
        id: "test-cluster".into(),
        created_at: 1,
        ca_cert_der: vec![1],
        ca_key_der: vec![2],
        worker_token_generation: 0,
        manager_token_generation: 0,
        task_history_limit: 5,
    }
}

/// Polls `cond` until it holds; panics with `what` at the deadline.
async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    poll_until(what, timeout, POLL, || {
        std::future::ready(if cond() { Ok(()) } else { Err("not yet") })
    })
    .await;
}

/// The index (in `nodes`) of the leader all live `nodes` agree on.
async fn agreed_leader(nodes: &[&TestNode]) -> usize {
    let mut found = None;
    wait_until("an agreed leader", DEADLINE, || {
        found = nodes
            .iter()
            .position(|n| n.manager.is_leader())
            .filter(|&i| {
                let id = nodes[i].raft_id;
                nodes.iter().all(|n| n.manager.leader() == Some(id))
            });
        found.is_some()
    })
    .await;
    found.unwrap_or_default()
}

fn worker_generation(node: &TestNode) -> Option<u64> {
    node.manager
        .read_local(|s| s.cluster.as_ref().map(|c| c.worker_token_generation))
}

fn all_members(nodes: &[TestNode]) -> BTreeMap<u64, EmptyNode> {
    nodes.iter().map(|n| (n.raft_id, EmptyNode {})).collect()
}

fn rotate() -> Command {
    Command::RotateToken { role: Role::Worker }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_replicate_fail_over_then_lose_quorum() {
    let nodes = start(3, Resolve::Static, |_| {}).await;
    nodes[0]
        .manager
        .raft()
        .initialize(all_members(&nodes))
        .await
        .unwrap();
    let all: Vec<&TestNode> = nodes.iter().collect();
    let l = agreed_leader(&all).await;
    let leader = &nodes[l];
    assert_eq!(leader.manager.voters().len(), 3);

    leader
        .manager
        .write(Command::InitCluster {
            cluster: cluster_record(),
            node: leader.record(),
        })
        .await
        .unwrap();
    let mut acked = Vec::new();
    for _ in 0..5 {
        match leader.manager.write(rotate()).await.unwrap() {
            CommandResult::Generation(g) => acked.push(g),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acked, vec![1, 2, 3, 4, 5]);
    wait_until("replication to all three", DEADLINE, || {
        nodes.iter().all(|n| worker_generation(n) == Some(5))
    })
    .await;

    // A follower refuses the write and names the leader.
    let follower = &nodes[(l + 1) % 3];
    match follower.manager.write(rotate()).await {
        Err(ManagerError::NotLeader { leader: Some(id) }) => assert_eq!(id, leader.raft_id),
        other => panic!("expected NotLeader, got {other:?}"),
    }

    // Failover: stop the leader; a survivor must accept writes again.
    let survivors: Vec<&TestNode> = nodes
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != l)
        .map(|(_, n)| n)
        .collect();
    let stopped_at = Instant::now();
    leader.stop().await;
    let mut unknown = 0;
    let mut target = 0;
    let new_leader = loop {
        assert!(
            stopped_at.elapsed() < DEADLINE,
            "no new leader accepted a write within {DEADLINE:?}"
        );
        match survivors[target].manager.write(rotate()).await {
            Ok(CommandResult::Generation(g)) => {
                acked.push(g);
                break target;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(ManagerError::NotLeader { leader }) => {
                if let Some(i) = survivors.iter().position(|n| Some(n.raft_id) == leader) {
                    target = i;
                } else {
                    // Still names the dead leader: ask the other one after a moment.
                    target = 1 - target;
                    tokio::time::sleep(POLL).await;
                }
            }
            Err(ManagerError::QuorumLost { .. }) => unknown += 1,
            Err(e) => panic!("unexpected error {e}"),
        }
    };
    let failover = stopped_at.elapsed();
    eprintln!(
        "failover: leader stopped → write accepted by the new leader in {} ms ({unknown} writes with unknown outcome)",
        failover.as_millis()
    );

    // No acknowledged write lost: every acknowledged generation is there, on both survivors.
    let newest = *acked.iter().max().unwrap_or(&0);
    let distinct: BTreeSet<u64> = acked.iter().copied().collect();
    assert_eq!(
        distinct.len(),
        acked.len(),
        "a generation acknowledged twice"
    );
    let nl = survivors[new_leader];
    let generation = nl
        .manager
        .read_linearizable(|s| s.cluster.as_ref().map(|c| c.worker_token_generation))
        .await
        .unwrap()
        .unwrap();
    assert!(generation >= newest && generation <= newest + unknown);
    wait_until("replication to the other survivor", DEADLINE, || {
        survivors
            .iter()
            .all(|n| worker_generation(n) == Some(generation))
    })
    .await;

    // Quorum loss: stop the other survivor; the new leader, alone, fails after ≈3 s.
    survivors[1 - new_leader].stop().await;
    let started = Instant::now();
    let err = tokio::time::timeout(DEADLINE, nl.manager.write(rotate()))
        .await
        .expect("the write with quorum lost hung past the deadline")
        .unwrap_err();
    let took = started.elapsed();
    eprintln!(
        "quorum lost on the leader after {} ms: {err}",
        took.as_millis()
    );
    assert!(
        matches!(
            err,
            ManagerError::QuorumLost {
                reachable: 1,
                managers: 3
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("1 of 3 managers reachable"),
        "{err}"
    );
    let err = tokio::time::timeout(DEADLINE, nl.manager.read_linearizable(|_| ()))
        .await
        .expect("the read with quorum lost hung past the deadline")
        .unwrap_err();
    assert!(
        matches!(err, ManagerError::QuorumLost { reachable: 1, .. }),
        "{err:?}"
    );
    nl.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lone_follower_reports_quorum_lost_and_counts_reachable_peers() {
    let nodes = start(3, Resolve::Static, |_| {}).await;
    nodes[1]
        .manager
        .raft()
        .initialize(all_members(&nodes))
        .await
        .unwrap();
    let all: Vec<&TestNode> = nodes.iter().collect();
    let l = agreed_leader(&all).await;
    let leader = &nodes[l];
    leader
        .manager
        .write(Command::InitCluster {
            cluster: cluster_record(),
            node: leader.record(),
        })
        .await
        .unwrap();

    // With one follower stopped the leader still has a quorum: 2 of 3 reachable.
    let f1 = &nodes[(l + 1) % 3];
    let f2 = &nodes[(l + 2) % 3];
    f1.stop().await;
    leader.manager.write(rotate()).await.unwrap();
    wait_until(
        "the stopped follower to count as unreachable",
        DEADLINE,
        || {
            matches!(
                leader.manager.quorum_lost(),
                ManagerError::QuorumLost {
                    reachable: 2,
                    managers: 3
                }
            )
        },
    )
    .await;

    // Stop the leader too: the last follower never finds a leader and says so after ≈3 s.
    leader.stop().await;
    // Until its election timer fires the follower still names the old leader.
    wait_until(
        "the follower to give up on the old leader",
        DEADLINE,
        || f2.manager.leader() != Some(leader.raft_id),
    )
    .await;
    let started = Instant::now();
    let err = tokio::time::timeout(DEADLINE, f2.manager.write(rotate()))
        .await
        .expect("the write on a lone follower hung past the deadline")
        .unwrap_err();
    let took = started.elapsed();
    eprintln!(
        "quorum lost on a follower after {} ms: {err}",
        took.as_millis()
    );
    assert!(
        matches!(
            err,
            ManagerError::QuorumLost {
                reachable: 1,
                managers: 3
            }
        ),
        "{err:?}"
    );
    f2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_resume_when_a_manager_returns_at_a_new_address() {
    let nodes = start(3, Resolve::Static, |_| {}).await;
    nodes[0]
        .manager
        .raft()
        .initialize(all_members(&nodes))
        .await
        .unwrap();
    let all: Vec<&TestNode> = nodes.iter().collect();
    let l = agreed_leader(&all).await;
    let leader = &nodes[l];
    leader
        .manager
        .write(Command::InitCluster {
            cluster: cluster_record(),
            node: leader.record(),
        })
        .await
        .unwrap();
    assert_eq!(
        leader.manager.write(rotate()).await.unwrap(),
        CommandResult::Generation(1)
    );
    let (f1, f2) = (&nodes[(l + 1) % 3], &nodes[(l + 2) % 3]);
    f1.stop().await;
    // ~1 MiB of entries f1 misses: it must catch up through split AppendEntries batches.
    for i in 0..10 {
        let mut big = f2.record();
        big.id = format!("big{i}");
        big.raft_id = 1000 + i;
        big.labels.insert("blob".into(), "x".repeat(100 * 1024));
        leader
            .manager
            .write(Command::UpsertNode(big))
            .await
            .unwrap();
    }
    f2.stop().await;
    assert!(matches!(
        leader.manager.write(rotate()).await,
        Err(ManagerError::QuorumLost { .. })
    ));

    // f1 comes back on its state dir and key, on another port: the leader finds it at the
    // new address (looked up at send time) and writes are accepted again.
    let back = restart(f1).await;
    assert_ne!(back.addr, f1.addr);
    let returned_at = Instant::now();
    let generation = loop {
        assert!(
            returned_at.elapsed() < DEADLINE,
            "no quorum after the return"
        );
        match leader.manager.write(rotate()).await {
            Ok(CommandResult::Generation(g)) => break g,
            Err(ManagerError::QuorumLost { .. }) => {}
            other => panic!("unexpected {other:?}"),
        }
    };
    eprintln!(
        "quorum back {} ms after a manager returned at a new address",
        returned_at.elapsed().as_millis()
    );
    // 1 acknowledged, then 1 or more with unknown outcome, then this one.
    assert!(generation >= 2);
    wait_until("the returned manager caught up", DEADLINE, || {
        worker_generation(&back) == Some(generation)
    })
    .await;
    assert_eq!(
        back.manager.read_local(Clone::clone),
        leader.manager.read_local(Clone::clone)
    );
    leader.stop().await;
    back.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_when_the_leader_hangs_with_its_connections_open() {
    let nodes = start(3, Resolve::Static, |_| {}).await;
    nodes[2]
        .manager
        .raft()
        .initialize(all_members(&nodes))
        .await
        .unwrap();
    let all: Vec<&TestNode> = nodes.iter().collect();
    let l = agreed_leader(&all).await;
    let leader = &nodes[l];
    leader
        .manager
        .write(Command::InitCluster {
            cluster: cluster_record(),
            node: leader.record(),
        })
        .await
        .unwrap();
    let acked = leader.manager.write(rotate()).await.unwrap();
    assert_eq!(acked, CommandResult::Generation(1));

    let survivors: Vec<&TestNode> = nodes
        .iter()
        .enumerate()
        .filter(|&(i, _)| i != l)
        .map(|(_, n)| n)
        .collect();
    let stopped_at = Instant::now();
    leader.hang().await;
    let i = agreed_leader(&survivors).await;
    let g = survivors[i].manager.write(rotate()).await.unwrap();
    eprintln!(
        "failover (leader hung, connections open): write accepted {} ms after the leader stopped",
        stopped_at.elapsed().as_millis()
    );
    assert_eq!(g, CommandResult::Generation(2));
    for n in &nodes {
        n.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_through_node_table_installs_a_chunked_snapshot_then_fails_over() {
    // Small chunks so the snapshot travels in several InstallSnapshot RPCs.
    let nodes = start(3, Resolve::NodeTable, |c| c.snapshot_max_chunk_size = 256).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    a.manager.initialize().await.unwrap();
    agreed_leader(&[a]).await;
    a.manager
        .write(Command::InitCluster {
            cluster: cluster_record(),
            node: a.record(),
        })
        .await
        .unwrap();
    a.manager
        .write(Command::UpsertNode(b.record()))
        .await
        .unwrap();
    a.manager
        .write(Command::UpsertNode(c.record()))
        .await
        .unwrap();
    for _ in 0..20 {
        a.manager.write(rotate()).await.unwrap();
    }

    // Snapshot and purge the whole log: a new member can only catch up by snapshot.
    let raft = a.manager.raft();
    raft.trigger().snapshot().await.unwrap();
    let m = raft
        .wait(Some(DEADLINE))
        .metrics(
            |m| m.snapshot.is_some() && m.snapshot == m.last_applied,
            "snapshot of everything applied on a",
        )
        .await
        .unwrap();
    let snapshot = m.snapshot;
    let upto = snapshot.map(|s| s.index).unwrap_or_default();
    assert!(upto >= 24, "{m:?}");
    let current = raft.get_snapshot().await.unwrap().unwrap();
    let size = current.snapshot.get_ref().len();
    assert!(
        size > 2 * 256,
        "a {size}-byte snapshot would not need several chunks"
    );
    raft.trigger().purge_log(upto).await.unwrap();
    raft.wait(Some(DEADLINE))
        .purged(snapshot, "log purged on a")
        .await
        .unwrap();

    // Promote b and c (learner, caught up, then voters), found through the node table.
    for n in [b, c] {
        tokio::time::timeout(DEADLINE, raft.add_learner(n.raft_id, EmptyNode {}, true))
            .await
            .expect("add_learner timed out")
            .unwrap();
    }
    let voters: BTreeSet<u64> = nodes.iter().map(|n| n.raft_id).collect();
    tokio::time::timeout(DEADLINE, raft.change_membership(voters.clone(), false))
        .await
        .expect("change_membership timed out")
        .unwrap();
    assert_eq!(a.manager.voters(), voters);

    // A learner's metrics follow its snapshot install asynchronously: wait for them (the
    // promotion above only returns once the learners caught up).
    for n in [b, c] {
        let waited = n
            .manager
            .raft()
            .wait(Some(DEADLINE))
            .metrics(
                |m| m.snapshot.is_some_and(|s| s.index >= upto),
                "the snapshot installed",
            )
            .await;
        let m = n.manager.raft().metrics().borrow().clone();
        assert!(
            waited.is_ok(),
            "{} did not install the snapshot: {:?}",
            n.raft_id,
            m.snapshot
        );
    }
    a.manager.write(rotate()).await.unwrap();
    let expected = a.manager.read_local(Clone::clone);
    wait_until("b and c caught up", DEADLINE, || {
        [b, c]
            .iter()
            .all(|n| n.manager.read_local(Clone::clone) == expected)
    })
    .await;

    // Failover among managers found through the node table.
    let stopped_at = Instant::now();
    a.stop().await;
    let l = agreed_leader(&[b, c]).await;
    let nl = [b, c][l];
    let g = nl.manager.write(rotate()).await.unwrap();
    eprintln!(
        "failover (node-table resolver): write accepted by the new leader {} ms after the old one stopped",
        stopped_at.elapsed().as_millis()
    );
    assert_eq!(g, CommandResult::Generation(22));
    b.stop().await;
    c.stop().await;
}

#[tokio::test]
async fn unknown_or_dead_peers_are_unreachable() {
    let ca = ClusterCa::generate("test-cluster").unwrap();
    let (ep, _accepted) = endpoint(&ca, &NodeKey::generate().unwrap());
    let pool = Pool::new(ep.clone(), Duration::from_millis(300));
    // A dead address: a bound UDP socket that never answers.
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let silent_addr = silent.local_addr().unwrap();
    let ghost = NodeKey::generate().unwrap().node_id();
    let resolver: Resolver = Arc::new(move |id| (id == 2).then_some((ghost, silent_addr)));
    let mut factory = QuicNetworkFactory::new(pool, resolver);
    let vote = VoteRequest::new(Vote::new(1, 1), None);

    let mut net = factory.new_client(1, &EmptyNode {}).await;
    let res = net
        .vote(vote.clone(), RPCOption::new(Duration::from_millis(600)))
        .await;
    assert!(matches!(res, Err(RPCError::Unreachable(_))), "{res:?}");

    // A silent address: the RPC ends (the dial is bounded by the pool's 300 ms and the
    // option's TTL) and says unreachable, as with no address at all.
    let mut net = factory.new_client(2, &EmptyNode {}).await;
    let started = Instant::now();
    let res = tokio::time::timeout(
        DEADLINE,
        net.vote(vote, RPCOption::new(Duration::from_millis(600))),
    )
    .await
    .expect("a vote to a silent address hung past the deadline");
    assert!(matches!(res, Err(RPCError::Unreachable(_))), "{res:?}");
    eprintln!(
        "vote to a silent address: unreachable after {} ms",
        started.elapsed().as_millis()
    );
    ep.close();
}

#[tokio::test]
async fn server_refuses_bad_requests_without_panicking() {
    let nodes = start(2, Resolve::Static, |_| {}).await;
    let (client, server) = (&nodes[0], &nodes[1]);
    let conn = client
        .endpoint
        .connect(server.addr, pki::CLUSTER_SAN, None, DEADLINE)
        .await
        .unwrap();
    // An oversized vote, an undecodable vote, an unknown tag: the stream is dropped.
    let cases: [(u8, Vec<u8>); 3] = [
        (TAG_RAFT_VOTE, vec![0; rpc::MAX_VOTE_FRAME + 10]),
        (TAG_RAFT_VOTE, vec![0xff; 40]),
        (9, vec![1, 2, 3]),
    ];
    for (tag, body) in cases {
        let res: Result<Result<VoteResponse<u64>, RaftError<u64>>, NetError> =
            net::request(&conn, tag, &body, rpc::MAX_RESPONSE_FRAME, DEADLINE).await;
        assert!(res.is_err(), "tag {tag}: {res:?}");
    }
    // The server still answers a good one (a vote from an unknown, lower term: refused).
    let vote = VoteRequest::new(Vote::new(0, client.raft_id), None);
    let res: Result<VoteResponse<u64>, RaftError<u64>> = net::request(
        &conn,
        TAG_RAFT_VOTE,
        &vote,
        rpc::MAX_RESPONSE_FRAME,
        DEADLINE,
    )
    .await
    .unwrap();
    assert!(res.is_ok(), "{res:?}");
    for n in &nodes {
        n.stop().await;
    }
}

#[test]
fn large_append_batches_are_split() {
    use openraft::raft::AppendEntriesRequest;
    use openraft::{Entry, EntryPayload, LogId};
    let key = NodeKey::generate().unwrap();
    let mut big = manager_record(&key, 1, "127.0.0.1:4747".parse().unwrap());
    big.labels.insert("blob".into(), "x".repeat(100 * 1024));
    let entries = |n: u64| -> Vec<Entry<super::types::TypeConfig>> {
        (1..=n)
            .map(|i| Entry {
                log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), i),
                payload: EntryPayload::Normal(Command::UpsertNode(big.clone())),
            })
            .collect()
    };
    let req = |n| AppendEntriesRequest {
        vote: Vote::new_committed(1, 1),
        prev_log_id: None,
        leader_commit: None,
        entries: entries(n),
    };
    // 20 × 100 KiB: split to about 5 entries; one entry, however large, goes as it is.
    let hint = super::network::split_hint(&req(20)).unwrap();
    assert!((1..=5).contains(&hint), "{hint}");
    assert_eq!(super::network::split_hint(&req(1)), None);
    assert_eq!(super::network::split_hint(&req(4)), None);
}

#[test]
fn raft_errors_round_trip_through_postcard() {
    fn round_trip<T>(v: &T)
    where
        T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
    {
        let bytes = postcard::to_stdvec(v).unwrap();
        let back: T = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(&back, v);
    }
    let io = StorageIOError::new(
        ErrorSubject::Logs,
        ErrorVerb::Write,
        AnyError::error("disk full"),
    );
    let fatal: RaftError<u64> =
        RaftError::Fatal(Fatal::StorageError(StorageError::IO { source: io }));
    round_trip(&Err::<VoteResponse<u64>, _>(fatal));
    round_trip(&Err::<VoteResponse<u64>, RaftError<u64>>(RaftError::Fatal(
        Fatal::Stopped,
    )));
    let mismatch: RaftError<u64, InstallSnapshotError> =
        RaftError::APIError(InstallSnapshotError::SnapshotMismatch(SnapshotMismatch {
            expect: SnapshotSegmentId {
                id: "a".into(),
                offset: 0,
            },
            got: SnapshotSegmentId {
                id: "a".into(),
                offset: 7,
            },
        }));
    round_trip(&mismatch);
    round_trip(&Ok::<_, RaftError<u64>>(VoteResponse::new(
        Vote::new(3, 2),
        None,
        true,
    )));
}
