//! `daemon --metrics-addr IP:PORT`: the daemon's metrics for Prometheus (issue 19).
//!
//! Served at `GET /metrics` in the OpenMetrics text format (which Prometheus scrapes
//! natively) by the `prometheus-client` crate. Two kinds of figures:
//!
//! - **counted as they happen**, in the process-wide [`global`] set: join attempts refused
//!   (by reason), dispatch sessions open on the leader, the worker's reconcile operations
//!   (a histogram of their duration, by operation and driver);
//! - **read at scrape time** from the node ([`render`]): Raft (term, leader, log, commit and
//!   applied indexes, apply lag), membership counts (the gossip view and, on managers, the
//!   Raft node records), tasks by state and services (managers), the routing mesh's counters.
//!
//! The names are listed in README.md ("Metrics"); keep both in step.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::{debug, info, warn};

use crate::daemon::Node;

/// A label set: `(name, value)` pairs.
type Labels = Vec<(String, String)>;

/// The content type of the answer (OpenMetrics text, which Prometheus negotiates).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The reasons a join attempt is refused, as the `reason` label of
/// `shoal_join_refused_total`.
pub mod refusal {
    /// The joiner did not prove it holds the key it presents.
    pub const PROOF: &str = "proof";
    /// The node asked is not a manager (or the cluster is not initialized).
    pub const NOT_MANAGER: &str = "not_manager";
    /// The token does not parse or its signature is not the cluster CA's.
    pub const BAD_TOKEN: &str = "bad_token";
    /// The token is another cluster's.
    pub const OTHER_CLUSTER: &str = "other_cluster";
    /// The token was rotated.
    pub const ROTATED: &str = "rotated";
    /// The token expired.
    pub const EXPIRED: &str = "expired";
    /// The request is malformed (key, address).
    pub const BAD_REQUEST: &str = "bad_request";
    /// A removed key, or a node that is already a ready member.
    pub const ADMISSION: &str = "admission";
    /// The record could not be committed or the certificate issued.
    pub const INTERNAL: &str = "internal";
}

/// The figures counted as they happen, shared by the whole process.
pub struct Metrics {
    registry: Mutex<Registry>,
    /// Join attempts refused, by `reason` ([`refusal`]).
    join_refused: Family<Labels, Counter>,
    /// Join attempts admitted.
    join_admitted: Counter,
    /// Worker sessions served by this node as the leader.
    sessions: Gauge,
    /// Secret files this node's worker received from the leader (the bytes of one secret
    /// for one task count once per message that carries them).
    secrets_received: Counter,
    /// Secret files this node's worker holds in memory now.
    secrets_held: Gauge,
    /// Duration of the worker's runtime operations, by `op` and `driver`.
    reconcile: Family<Labels, Histogram>,
    scrape: Scraped,
}

/// What [`render`] sets from the node before encoding.
struct Scraped {
    raft_term: Gauge,
    raft_is_leader: Gauge,
    raft_has_leader: Gauge,
    raft_voters: Gauge,
    raft_last_log_index: Gauge,
    raft_last_applied_index: Gauge,
    raft_commit_index: Gauge,
    raft_apply_lag: Gauge,
    members: Family<Labels, Gauge>,
    nodes: Family<Labels, Gauge>,
    services: Gauge,
    tasks: Family<Labels, Gauge>,
    mesh: Family<Labels, Counter>,
    mesh_bytes: Family<Labels, Counter>,
}

fn reconcile_histogram() -> Histogram {
    // 1 ms to ~33 s: a process start is milliseconds, a Docker start with a pull seconds.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Metrics {
    fn new() -> Metrics {
        let mut r = Registry::with_prefix("shoal");
        let join_refused = Family::<Labels, Counter>::default();
        r.register(
            "join_refused",
            "Join attempts this node refused, by reason",
            join_refused.clone(),
        );
        let join_admitted = Counter::default();
        r.register(
            "join_admitted",
            "Join attempts this node admitted",
            join_admitted.clone(),
        );
        let sessions = Gauge::default();
        r.register(
            "dispatch_sessions",
            "Worker sessions open on this node as the leader",
            sessions.clone(),
        );
        let secrets_received = Counter::default();
        r.register(
            "worker_secrets_received",
            "Secret files this node's worker received for its tasks (never a secret of another node's task)",
            secrets_received.clone(),
        );
        let secrets_held = Gauge::default();
        r.register(
            "worker_secrets_held",
            "Secret files this node's worker holds in memory for its tasks",
            secrets_held.clone(),
        );
        let reconcile =
            Family::<Labels, Histogram>::new_with_constructor(reconcile_histogram as fn() -> _);
        r.register(
            "worker_reconcile_seconds",
            "Time from the worker deciding a runtime operation (start, stop, remove) to the runtime finishing it",
            reconcile.clone(),
        );
        let gauge = |r: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            r.register(name, help, g.clone());
            g
        };
        let family = |r: &mut Registry, name: &str, help: &str| {
            let f = Family::<Labels, Gauge>::default();
            r.register(name, help, f.clone());
            f
        };
        let scrape = Scraped {
            raft_term: gauge(&mut r, "raft_term", "Current Raft term (managers)"),
            raft_is_leader: gauge(&mut r, "raft_is_leader", "1 when this node leads Raft"),
            raft_has_leader: gauge(
                &mut r,
                "raft_has_leader",
                "1 when this manager knows a Raft leader",
            ),
            raft_voters: gauge(&mut r, "raft_voters", "Raft voters (managers)"),
            raft_last_log_index: gauge(
                &mut r,
                "raft_last_log_index",
                "Index of the last entry in this manager's Raft log",
            ),
            raft_last_applied_index: gauge(
                &mut r,
                "raft_last_applied_index",
                "Index of the last Raft entry applied to this manager's state",
            ),
            raft_commit_index: gauge(
                &mut r,
                "raft_commit_index",
                "Highest index replicated on a quorum (on the leader; on a follower its applied index)",
            ),
            raft_apply_lag: gauge(
                &mut r,
                "raft_apply_lag",
                "Raft entries in this manager's log not applied yet",
            ),
            members: family(
                &mut r,
                "gossip_members",
                "Other nodes in this node's SWIM view, by state",
            ),
            nodes: family(
                &mut r,
                "nodes",
                "Node records in the Raft state, by status and role (managers)",
            ),
            services: gauge(&mut r, "services", "Services (managers)"),
            tasks: family(
                &mut r,
                "tasks",
                "Tasks in the Raft state (history included), by state and desired state (managers)",
            ),
            mesh: {
                let f = Family::<Labels, Counter>::default();
                r.register(
                    "mesh_connections",
                    "Routing mesh connections on this node, by outcome",
                    f.clone(),
                );
                f
            },
            mesh_bytes: {
                let f = Family::<Labels, Counter>::default();
                r.register(
                    "mesh_bytes",
                    "Bytes the routing mesh carried on this node, by direction",
                    f.clone(),
                );
                f
            },
        };
        Metrics {
            registry: Mutex::new(r),
            join_refused,
            join_admitted,
            sessions,
            secrets_received,
            secrets_held,
            reconcile,
            scrape,
        }
    }

    /// A join attempt refused for `reason` (one of [`refusal`]).
    pub fn join_refused(&self, reason: &str) {
        self.join_refused
            .get_or_create(&vec![("reason".into(), reason.into())])
            .inc();
    }

    /// A join attempt admitted.
    pub fn join_admitted(&self) {
        self.join_admitted.inc();
    }

    /// A worker session opened on the leader; it counts until the guard is dropped.
    pub fn session_opened(&self) -> SessionGuard {
        self.sessions.inc();
        SessionGuard
    }

    /// The worker received `files` secret files and now holds that many.
    pub fn secrets_received(&self, files: usize) {
        self.secrets_received.inc_by(files as u64);
        self.secrets_held
            .set(i64::try_from(files).unwrap_or(i64::MAX));
    }

    /// A worker runtime operation `op` on `driver` took `took`.
    pub fn reconciled(&self, op: &str, driver: &str, took: Duration) {
        self.reconcile
            .get_or_create(&vec![
                ("op".into(), op.into()),
                ("driver".into(), driver.into()),
            ])
            .observe(took.as_secs_f64());
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self
            .registry
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Err(e) = encode(&mut out, &registry) {
            warn!(error = %e, "cannot encode metrics");
        }
        out
    }
}

/// Counts an open dispatch session until dropped.
pub struct SessionGuard;

impl Drop for SessionGuard {
    fn drop(&mut self) {
        global().sessions.dec();
    }
}

/// The process's metrics.
pub fn global() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Sets a counter that mirrors a monotonic value kept elsewhere.
fn mirror(counter: &Counter, value: u64) {
    let have = counter.get();
    if value > have {
        counter.inc_by(value - have);
    }
}

/// The index a quorum of `voters` holds: the leader's last log index and each follower's
/// matched index (`None`: nothing matched), the majority-th highest.
pub fn quorum_index(matched: &[Option<u64>]) -> Option<u64> {
    if matched.is_empty() {
        return None;
    }
    let mut v: Vec<Option<u64>> = matched.to_vec();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v[matched.len() / 2]
}

/// Reads the node's figures into the gauges and encodes everything. One scrape at a time:
/// the node and task families are cleared and counted up again, which two interleaved
/// scrapes would double.
pub async fn render(node: &Node) -> String {
    static SCRAPE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let _one = SCRAPE.lock().await;
    let m = global();
    let s = &m.scrape;
    // Gossip: every node.
    let view = node
        .gossip
        .read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .as_ref()
        .map(crate::gossip::Gossip::view);
    use shoal_membership::MemberState;
    for (state, word) in [
        (MemberState::Alive, "alive"),
        (MemberState::Suspect, "suspect"),
        (MemberState::Down, "down"),
    ] {
        let n = view.as_ref().map_or(0, |v| {
            v.members.values().filter(|(_, st)| *st == state).count()
        });
        s.members
            .get_or_create(&vec![("state".into(), word.into())])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    // Mesh: every node.
    let c = node.mesh.counters();
    for (outcome, v) in [
        ("local_forward", c.local_forwards),
        ("remote_forward", c.remote_forwards),
        ("remote_served", c.remote_served),
        ("failed_connect", c.failed_connects),
        ("dropped", c.dropped),
    ] {
        mirror(
            &s.mesh
                .get_or_create(&vec![("outcome".into(), outcome.into())]),
            v,
        );
    }
    for (direction, v) in [("in", c.bytes_in), ("out", c.bytes_out)] {
        mirror(
            &s.mesh_bytes
                .get_or_create(&vec![("direction".into(), direction.into())]),
            v,
        );
    }
    // Raft and the cluster state: managers.
    let i = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    s.nodes.clear();
    s.tasks.clear();
    if let Some(manager) = node.manager_opt().await {
        let metrics = manager.metrics().borrow().clone();
        let last_log = metrics.last_log_index.unwrap_or(0);
        let applied = metrics.last_applied.map_or(0, |l| l.index);
        let is_leader = metrics.current_leader == Some(metrics.id);
        let voters = manager.voters();
        let commit = match (&metrics.replication, is_leader) {
            (Some(rep), true) => {
                let matched: Vec<Option<u64>> = voters
                    .iter()
                    .map(|v| {
                        if *v == metrics.id {
                            metrics.last_log_index
                        } else {
                            rep.get(v).and_then(|l| l.as_ref().map(|l| l.index))
                        }
                    })
                    .collect();
                quorum_index(&matched).unwrap_or(0)
            }
            _ => applied,
        };
        s.raft_term.set(i(metrics.current_term));
        s.raft_is_leader.set(i64::from(is_leader));
        s.raft_has_leader
            .set(i64::from(metrics.current_leader.is_some()));
        s.raft_voters.set(i64::try_from(voters.len()).unwrap_or(0));
        s.raft_last_log_index.set(i(last_log));
        s.raft_last_applied_index.set(i(applied));
        s.raft_commit_index.set(i(commit));
        s.raft_apply_lag.set(i(last_log.saturating_sub(applied)));
        manager.read_local(|state| {
            for n in state.nodes.values() {
                s.nodes
                    .get_or_create(&vec![
                        ("status".into(), n.status.as_str().into()),
                        ("role".into(), n.role.as_str().into()),
                    ])
                    .inc();
            }
            s.services
                .set(i64::try_from(state.services.services.len()).unwrap_or(0));
            for t in state.services.tasks.values() {
                s.tasks
                    .get_or_create(&vec![
                        ("state".into(), t.state.as_str().into()),
                        ("desired".into(), t.desired_state.as_str().into()),
                    ])
                    .inc();
            }
        });
    } else {
        for g in [
            &s.raft_term,
            &s.raft_is_leader,
            &s.raft_has_leader,
            &s.raft_voters,
            &s.raft_last_log_index,
            &s.raft_last_applied_index,
            &s.raft_commit_index,
            &s.raft_apply_lag,
            &s.services,
        ] {
            g.set(0);
        }
    }
    m.encode()
}

/// Serves `GET /metrics` on `addr` until the process ends.
pub async fn serve(node: Arc<Node>, addr: SocketAddr) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} (--metrics-addr)"))?;
    info!(%addr, "metrics served at /metrics");
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    debug!(error = %e, "metrics: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let node = node.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                        let node = node.clone();
                        async move { Ok::<_, std::convert::Infallible>(answer(&node, &req).await) }
                    });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), service);
                if let Err(e) = conn.await {
                    debug!(error = %e, "metrics: connection ended");
                }
            });
        }
    });
    Ok(())
}

async fn answer<B>(node: &Node, req: &Request<B>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => reply(StatusCode::OK, CONTENT_TYPE, render(node).await),
        (&Method::GET, _) => reply(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".into(),
        ),
        _ => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET /metrics\n".into(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_index_is_the_majority_th_highest() {
        assert_eq!(quorum_index(&[]), None);
        assert_eq!(quorum_index(&[Some(7)]), Some(7));
        assert_eq!(quorum_index(&[Some(9), Some(5), None]), Some(5));
        assert_eq!(quorum_index(&[Some(9), None, None]), None);
        assert_eq!(
            quorum_index(&[Some(9), Some(8), Some(3), Some(1), None]),
            Some(3)
        );
        assert_eq!(quorum_index(&[Some(4), Some(4)]), Some(4));
        assert_eq!(quorum_index(&[Some(4), Some(2)]), Some(2));
    }

    #[test]
    fn counted_figures_are_encoded_with_their_labels() {
        let m = global();
        m.join_refused(refusal::EXPIRED);
        m.join_refused(refusal::EXPIRED);
        m.reconciled("start", "process", Duration::from_millis(3));
        {
            let _s = m.session_opened();
            assert!(m.encode().contains("shoal_dispatch_sessions 1"));
        }
        let text = m.encode();
        assert!(
            text.lines()
                .any(|l| l.starts_with("shoal_join_refused_total{reason=\"expired\"} ")),
            "{text}"
        );
        assert!(text.contains("shoal_dispatch_sessions 0"), "{text}");
        assert!(
            text.contains("shoal_worker_reconcile_seconds_count{op=\"start\",driver=\"process\"}"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn mirrored_counters_follow_the_source() {
        let c = Counter::default();
        mirror(&c, 5);
        mirror(&c, 5);
        assert_eq!(c.get(), 5);
        mirror(&c, 9);
        assert_eq!(c.get(), 9);
    }
}
