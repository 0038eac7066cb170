//! A rogue peer for the trust tests (issue 14): a QUIC client that holds some identity —
//! a real node's key and certificate (stolen from its state dir), a removed node's, none
//! at all, or one issued by another cluster's CA — and sends well-formed requests under
//! any stream tag, using the node's own wire types.
//!
//! Also here: [`ClusterView`], what the tests compare before and after each attack (node
//! table, tokens, services and tasks, every daemon's own idea of its role), [`Attacks`],
//! which records each attack's verdict and whether the cluster changed, and
//! [`TaskReaper`], which stops the process-driver tasks the test clusters started.

use std::collections::BTreeSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use shoal::pki::{CLUSTER_SAN, ClusterCa, NodeKey};

use crate::{Daemon, Poll};

/// How long a request may go unanswered before it counts as refused.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on a dial (TLS handshake included).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer frame read.
const MAX_ANSWER: usize = 64 << 20;

/// What became of one request.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// The dial or the TLS handshake failed.
    NoConnection(String),
    /// Connected, but no answer frame came: the stream was reset or stopped, the
    /// connection was closed, or nothing arrived before [`ANSWER_TIMEOUT`].
    NoAnswer(String),
    /// An answer frame: its tag and body (version byte included).
    Answered {
        /// The answer's tag.
        tag: u8,
        /// The body, for [`shoal::net::decode_body`].
        body: Vec<u8>,
    },
}

impl Outcome {
    /// Judges the outcome: no answer is a refusal; an answer decoded as `T` is a success
    /// when `success` says so (its text then says what the peer got), else an explicit
    /// refusal. An answer that does not decode as `T` is no success frame either.
    pub fn judge<T: DeserializeOwned + fmt::Debug>(
        &self,
        success: impl FnOnce(&T) -> bool,
    ) -> Verdict {
        self.judge_with(success, |answer: &T| format!("{answer:?}"))
    }

    /// [`Outcome::judge`], with the answer described by `describe`.
    pub fn judge_with<T: DeserializeOwned>(
        &self,
        success: impl FnOnce(&T) -> bool,
        describe: impl FnOnce(&T) -> String,
    ) -> Verdict {
        match self {
            Outcome::NoConnection(e) => Verdict::Refused(format!("no connection: {e}")),
            Outcome::NoAnswer(e) => Verdict::Refused(format!("no answer: {e}")),
            Outcome::Answered { tag, body } => match shoal::net::decode_body::<T>(*tag, body) {
                Ok(answer) => {
                    let served = success(&answer);
                    let text = short(&describe(&answer));
                    if served {
                        Verdict::Served(format!("answered {text}"))
                    } else {
                        Verdict::Refused(format!("explicit refusal: {text}"))
                    }
                }
                Err(e) => Verdict::Refused(format!("an answer that is no success frame: {e}")),
            },
        }
    }

    /// The answer decoded as `T`, if there is one that decodes.
    pub fn decode<T: DeserializeOwned>(&self) -> Option<T> {
        match self {
            Outcome::Answered { tag, body } => shoal::net::decode_body(*tag, body).ok(),
            _ => None,
        }
    }
}

/// Whether an attack got through.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// Refused (how).
    Refused(String),
    /// Served: the attack got a success answer (what it got).
    Served(String),
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Refused(how) => write!(f, "refused ({how})"),
            Verdict::Served(what) => write!(f, "SERVED ({what})"),
        }
    }
}

fn short(s: &str) -> String {
    const MAX: usize = 300;
    if s.chars().count() <= MAX {
        s.to_string()
    } else {
        let cut: String = s.chars().take(MAX).collect();
        format!("{cut}…")
    }
}

/// A node's credentials as its state dir holds them.
#[derive(Debug, Clone)]
pub struct Credentials {
    /// The node key (`node.key`).
    pub key: NodeKey,
    /// The node certificate (DER, from `node.json`).
    pub cert: Vec<u8>,
    /// The cluster CA certificate (DER, from `node.json`).
    pub ca_cert: Vec<u8>,
    /// The cluster ID (from `node.json`).
    pub cluster_id: String,
}

impl Credentials {
    /// Reads `node.key` and `node.json` from a daemon's state dir (the daemon may run).
    pub fn from_state_dir(dir: &Path) -> Result<Credentials> {
        let key = NodeKey::load(&dir.join("node.key"))
            .with_context(|| format!("cannot read the node key in {}", dir.display()))?;
        let saved = shoal::config::SavedConfig::load(&dir.join("node.json"))?;
        let Some(cluster) = saved.cluster else {
            bail!("{} holds no cluster credentials", dir.display());
        };
        Ok(Credentials {
            key,
            cert: cluster.node_cert,
            ca_cert: cluster.ca_cert,
            cluster_id: cluster.cluster_id,
        })
    }

    /// A fresh key with a certificate from a brand-new CA of another cluster; `ca_cert` is
    /// the real cluster's CA (so the rogue still checks the servers it dials).
    pub fn foreign(real_ca_cert: &[u8]) -> Result<Credentials> {
        let ca = ClusterCa::generate("rogue-cluster")?;
        let key = NodeKey::generate()?;
        let cert = ca.issue_node_cert(&key.public_key(), &key.node_id())?;
        Ok(Credentials {
            key,
            cert,
            ca_cert: real_ca_cert.to_vec(),
            cluster_id: "rogue-cluster".into(),
        })
    }

    /// The Raft ID this key would have.
    pub fn raft_id(&self) -> u64 {
        shoal::manager::raft_id_for(&self.key.public_key())
    }
}

/// A rogue QUIC client with one identity (see the module doc).
pub struct Rogue {
    /// What the rogue is, for messages.
    pub label: String,
    /// The key it holds, if any.
    pub key: Option<NodeKey>,
    rt: tokio::runtime::Runtime,
    endpoint: quinn::Endpoint,
    config: quinn::ClientConfig,
}

impl fmt::Debug for Rogue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rogue")
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl Rogue {
    /// A rogue presenting `creds` (mutual TLS; it checks servers against `creds.ca_cert`).
    /// The certificate goes out with `creds.ca_cert` as its chain, as a node's does.
    pub fn with_credentials(label: &str, creds: &Credentials) -> Result<Rogue> {
        let config = shoal::pki::client_config(&creds.cert, &creds.ca_cert, &creds.key)?;
        Rogue::build(label, Some(creds.key.clone()), config)
    }

    /// A rogue without a client certificate, as a joiner dials: it checks the server
    /// against the CA whose certificate is `ca_cert`. `key` is a key it holds anyway (to
    /// sign join proofs), if any.
    pub fn without_certificate(label: &str, ca_cert: &[u8], key: Option<NodeKey>) -> Result<Rogue> {
        let config = shoal::pki::join_client_config(shoal::pki::sha256(ca_cert))?;
        Rogue::build(label, key, config)
    }

    fn build(label: &str, key: Option<NodeKey>, mut config: quinn::ClientConfig) -> Result<Rogue> {
        config.transport_config(Arc::new(shoal::net::transport_config()));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        let endpoint = {
            let _guard = rt.enter();
            quinn::Endpoint::client("127.0.0.1:0".parse()?)?
        };
        Ok(Rogue {
            label: label.into(),
            key,
            rt,
            endpoint,
            config,
        })
    }

    /// Dials `addr` (a fresh connection for every attack, so per-connection checks run).
    async fn connect(&self, addr: SocketAddr) -> Result<quinn::Connection, String> {
        let connecting = self
            .endpoint
            .connect_with(self.config.clone(), addr, CLUSTER_SAN)
            .map_err(|e| format!("cannot dial {addr}: {e}"))?;
        match tokio::time::timeout(DIAL_TIMEOUT, connecting).await {
            Err(_) => Err(format!("handshake with {addr} timed out")),
            Ok(Err(e)) => Err(format!("handshake with {addr} failed: {e}")),
            Ok(Ok(conn)) => Ok(conn),
        }
    }

    /// Sends `msg` under `tag` on a fresh stream of a fresh connection to `addr` and reads
    /// one answer frame.
    pub fn try_tag<M: Serialize>(&self, addr: SocketAddr, tag: u8, msg: &M) -> Outcome {
        self.try_tag_with::<M, &M>(addr, tag, |_| msg)
    }

    /// Like [`Rogue::try_tag`], with the message built from the connection (a join proof
    /// is bound to its TLS session).
    pub fn try_tag_with<M: Serialize, B: std::borrow::Borrow<M>>(
        &self,
        addr: SocketAddr,
        tag: u8,
        build: impl FnOnce(&quinn::Connection) -> B,
    ) -> Outcome {
        self.rt.block_on(async {
            let conn = match self.connect(addr).await {
                Ok(c) => c,
                Err(e) => return Outcome::NoConnection(e),
            };
            let msg = build(&conn);
            let exchange = async {
                let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                shoal::net::write_frame(&mut send, tag, msg.borrow())
                    .await
                    .map_err(|e| e.to_string())?;
                send.finish().map_err(|e| e.to_string())?;
                shoal::net::read_frame_raw(&mut recv, MAX_ANSWER)
                    .await
                    .map_err(|e| e.to_string())
            };
            let outcome = match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
                Err(_) => Outcome::NoAnswer(format!("nothing within {ANSWER_TIMEOUT:?}")),
                Ok(Err(e)) => Outcome::NoAnswer(match conn.close_reason() {
                    Some(reason) => format!("{e} (connection closed: {reason})"),
                    None => e,
                }),
                Ok(Ok((tag, body))) => Outcome::Answered { tag, body },
            };
            // Do not linger: the server pools this connection under the stolen identity.
            conn.close(0u32.into(), b"rogue done");
            outcome
        })
    }

    /// Opens a long-lived stream (a worker session): sends `msg` under `tag` and keeps
    /// both sides open.
    pub fn open_stream<M: Serialize>(
        &self,
        addr: SocketAddr,
        tag: u8,
        msg: &M,
    ) -> Result<RogueStream<'_>, Outcome> {
        self.rt.block_on(async {
            let conn = self.connect(addr).await.map_err(Outcome::NoConnection)?;
            let opened = async {
                let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                shoal::net::write_frame(&mut send, tag, msg)
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>((send, recv))
            };
            match tokio::time::timeout(ANSWER_TIMEOUT, opened).await {
                Ok(Ok((send, recv))) => Ok(RogueStream {
                    rogue: self,
                    conn,
                    send,
                    recv,
                }),
                Ok(Err(e)) => Err(Outcome::NoAnswer(e)),
                Err(_) => Err(Outcome::NoAnswer("the stream did not open".into())),
            }
        })
    }
}

impl Drop for Rogue {
    fn drop(&mut self) {
        let _guard = self.rt.enter();
        self.endpoint.close(0u32.into(), b"rogue gone");
    }
}

/// A stream the rogue keeps open (see [`Rogue::open_stream`]).
pub struct RogueStream<'a> {
    rogue: &'a Rogue,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
}

impl RogueStream<'_> {
    /// Sends one more frame.
    pub fn send<M: Serialize>(&mut self, tag: u8, msg: &M) -> Result<()> {
        self.rogue.rt.block_on(async {
            shoal::net::write_frame(&mut self.send, tag, msg)
                .await
                .map_err(|e| anyhow::anyhow!("cannot send on the rogue stream: {e}"))
        })
    }

    /// Reads the next frame, waiting at most `timeout`.
    pub fn recv(&mut self, timeout: Duration) -> Outcome {
        self.rogue.rt.block_on(async {
            match tokio::time::timeout(
                timeout,
                shoal::net::read_frame_raw(&mut self.recv, MAX_ANSWER),
            )
            .await
            {
                Err(_) => Outcome::NoAnswer(format!("nothing within {timeout:?}")),
                Ok(Err(e)) => Outcome::NoAnswer(e.to_string()),
                Ok(Ok((tag, body))) => Outcome::Answered { tag, body },
            }
        })
    }
}

impl Drop for RogueStream<'_> {
    fn drop(&mut self) {
        let _guard = self.rogue.rt.enter();
        self.conn.close(0u32.into(), b"rogue done");
    }
}

/// A join request presenting `public_key`, signed (the proof of key possession, bound to
/// `conn`'s TLS session) with `signer`: the owner of `public_key` makes a valid proof; a
/// rogue that does not hold that key can only sign with another one.
pub fn join_request(
    conn: &quinn::Connection,
    token: &str,
    public_key: [u8; 32],
    signer: &NodeKey,
    hostname: &str,
    advertise_addr: &str,
) -> shoal::join::JoinRequest {
    let proof = match shoal::join::proof_binding(conn) {
        Ok(binding) => signer
            .sign(&shoal::join::proof_message(&binding, &public_key, token))
            .to_bytes()
            .to_vec(),
        Err(_) => vec![0; 64],
    };
    shoal::join::JoinRequest {
        token: token.into(),
        public_key,
        hostname: hostname.into(),
        advertise_addr: advertise_addr.into(),
        platform: "linux/x86_64".into(),
        memory_bytes: 1 << 30,
        cpus: 2,
        drivers: vec!["process".into()],
        version: "0.1.0".into(),
        availability: shoal::manager::state::Availability::Active,
        proof,
    }
}

/// What the trust tests compare before and after each attack, as sorted lines: the node
/// table (ID, hostname, role, manager status, availability, status, address, labels), both
/// join tokens, services, every task of every service, and each running daemon's own
/// view (`info`: cluster, role) and whether it holds a Raft database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterView {
    lines: BTreeSet<String>,
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

impl ClusterView {
    /// Captures the view through `observer` (a manager) and `daemons` (all running ones).
    pub fn capture(observer: &Daemon, daemons: &[&Daemon]) -> Result<ClusterView> {
        let mut lines = BTreeSet::new();
        let nodes = observer.json(&["node", "ls"])?;
        for n in nodes.as_array().into_iter().flatten() {
            lines.insert(format!(
                "node {} id={} role={} manager_status={} availability={} status={} addr={} labels={}",
                text(&n["hostname"]),
                text(&n["id"]),
                text(&n["role"]),
                text(&n["manager_status"]),
                text(&n["availability"]),
                text(&n["status"]),
                text(&n["addr"]),
                n["labels"],
            ));
        }
        for role in ["worker", "manager"] {
            let token = observer.ok(&["join-token", "-q", role])?;
            lines.insert(format!("{role} join token {}", token.trim()));
        }
        let services = observer.json(&["service", "ls"])?;
        for s in services.as_array().into_iter().flatten() {
            lines.insert(format!(
                "service {} id={} mode={} replicas={} running={} image={} driver={}",
                text(&s["name"]),
                text(&s["id"]),
                text(&s["mode"]),
                text(&s["replicas"]),
                text(&s["running"]),
                text(&s["image"]),
                text(&s["driver"]),
            ));
            let name = text(&s["name"]);
            let tasks = observer.json(&["service", "ps", &name])?;
            for t in tasks.as_array().into_iter().flatten() {
                lines.insert(format!(
                    "task {} service={} node_id={} desired_state={} state={} exit_code={}",
                    text(&t["id"]),
                    text(&t["service"]),
                    text(&t["node_id"]),
                    text(&t["desired_state"]),
                    text(&t["state"]),
                    text(&t["exit_code"]),
                ));
            }
        }
        for d in daemons {
            let info = d.json(&["info"])?;
            lines.insert(format!(
                "daemon {}: cluster={} cluster_id={} role={} raft.redb={}",
                d.name,
                text(&info["cluster"]),
                text(&info["cluster_id"]),
                text(&info["role"]),
                if d.state_dir.join("raft.redb").exists() {
                    "present"
                } else {
                    "absent"
                },
            ));
        }
        Ok(ClusterView { lines })
    }

    /// The lines that differ, `-` before and `+` after.
    pub fn diff(&self, after: &ClusterView) -> String {
        let gone = self
            .lines
            .difference(&after.lines)
            .map(|l| format!("  - {l}"));
        let new = after
            .lines
            .difference(&self.lines)
            .map(|l| format!("  + {l}"));
        gone.chain(new).collect::<Vec<_>>().join("\n")
    }

    /// The view, one line per fact.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.lines.iter().map(String::as_str)
    }
}

/// How long the cluster must stay equal to its view before an attack counts as having
/// changed nothing.
pub const SETTLED_FOR: Duration = Duration::from_millis(1500);
/// How long an attack's effects have to go away (a transient flap, e.g. a node briefly
/// suspected while the rogue held its connection) before they count as a change.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs a test's attacks: records each verdict, checks the cluster is unchanged after
/// each, and fails at the end listing every attack that got through.
pub struct Attacks<'a> {
    test: String,
    observer: &'a Daemon,
    daemons: Vec<&'a Daemon>,
    baseline: ClusterView,
    breaches: Vec<String>,
    broken: Option<String>,
}

impl<'a> Attacks<'a> {
    /// Takes the baseline once the cluster is steady (the same view for [`SETTLED_FOR`]).
    pub fn new(test: &str, observer: &'a Daemon, daemons: Vec<&'a Daemon>) -> Result<Attacks<'a>> {
        let mut last: Option<(ClusterView, Instant)> = None;
        let baseline = crate::poll_until("a steady cluster view", Duration::from_secs(30), || {
            let now = ClusterView::capture(observer, &daemons)?;
            match &last {
                Some((v, since)) if *v == now => {
                    if since.elapsed() >= SETTLED_FOR {
                        return Ok(Some(now));
                    }
                }
                _ => last = Some((now, Instant::now())),
            }
            Ok(None)
        })?;
        eprintln!("[{test}] baseline:");
        for l in baseline.lines() {
            eprintln!("[{test}]   {l}");
        }
        Ok(Attacks {
            test: test.into(),
            observer,
            daemons,
            baseline,
            breaches: Vec::new(),
            broken: None,
        })
    }

    /// Whether the cluster is too broken to go on (why).
    pub fn broken(&self) -> Option<&str> {
        self.broken.as_deref()
    }

    /// Records an attack: its verdict, then whether the cluster still equals the view
    /// taken before it. Returns `false` when the cluster no longer answers (the caller
    /// should stop attacking).
    pub fn record(&mut self, attack: &str, verdict: Verdict) -> bool {
        eprintln!("[{}] {attack}: {verdict}", self.test);
        if let Verdict::Served(what) = &verdict {
            self.breaches
                .push(format!("{attack}: got a success answer: {what}"));
        }
        self.check_unchanged(attack)
    }

    /// Records a breach found by the test itself.
    pub fn breach(&mut self, attack: &str, what: String) {
        eprintln!("[{}] {attack}: BREACH: {what}", self.test);
        self.breaches.push(format!("{attack}: {what}"));
    }

    /// Notes something that is neither a refusal nor a breach.
    pub fn note(&self, what: &str) {
        eprintln!("[{}] {what}", self.test);
    }

    /// Polls until the cluster has equalled the baseline for [`SETTLED_FOR`]; when it
    /// still differs after [`SETTLE_TIMEOUT`], records the difference against `attack`
    /// and takes the new state as the baseline for the next attack.
    pub fn check_unchanged(&mut self, attack: &str) -> bool {
        let mut equal_since: Option<Instant> = None;
        let mut last: Result<ClusterView, String> = Err("not looked yet".into());
        let settled = Poll::new("the cluster view back to its baseline", SETTLE_TIMEOUT)
            .every(Duration::from_millis(200))
            .until(|| {
                last = ClusterView::capture(self.observer, &self.daemons)
                    .map_err(|e| format!("{e:#}"));
                match &last {
                    Ok(v) if *v == self.baseline => {
                        let since = *equal_since.get_or_insert_with(Instant::now);
                        Ok((since.elapsed() >= SETTLED_FOR).then_some(()))
                    }
                    _ => {
                        equal_since = None;
                        Ok(None)
                    }
                }
            });
        if settled.is_ok() {
            return true;
        }
        match last {
            Ok(after) => {
                let diff = self.baseline.diff(&after);
                eprintln!("[{}] {attack}: THE CLUSTER CHANGED:\n{diff}", self.test);
                self.breaches
                    .push(format!("{attack}: the cluster changed:\n{diff}"));
                self.baseline = after;
                true
            }
            Err(e) => {
                eprintln!(
                    "[{}] {attack}: THE CLUSTER NO LONGER ANSWERS: {e}",
                    self.test
                );
                self.breaches
                    .push(format!("{attack}: the cluster no longer answers: {e}"));
                self.broken = Some(format!("after {attack}: {e}"));
                false
            }
        }
    }

    /// Ends the test: the cluster must still take a write from the real CLI (a process
    /// service named `name`), and no attack may have got through.
    pub fn finish(mut self, name: &str) -> Result<()> {
        if self.broken.is_none() {
            let created = self.observer.ok(&[
                "service",
                "create",
                "--name",
                name,
                "--driver",
                "process",
                "/bin/sleep",
                "3614",
            ]);
            match created {
                Ok(_) => eprintln!(
                    "[{}] the cluster still works: `service create {name}` succeeded",
                    self.test
                ),
                Err(e) => self.breaches.push(format!(
                    "after the attacks, the cluster no longer takes a `service create`: {e:#}"
                )),
            }
        }
        if self.breaches.is_empty() {
            return Ok(());
        }
        bail!(
            "issue 14: {} attack(s) got through in {} (in order: a later one may follow from an earlier one):\n{}",
            self.breaches.len(),
            self.test,
            self.breaches
                .iter()
                .enumerate()
                .map(|(i, b)| format!("{}. {b}", i + 1))
                .collect::<Vec<_>>()
                .join("\n")
        )
    }
}

/// Stops, when dropped, every process-driver task (shim and program) that the daemons in
/// `state_dirs` started: those survive their daemon by design (adoption after a restart).
/// Each is found through its `status.json` and ended by pid, only while `/proc` shows the
/// recorded start time (never a reused pid). Drop it before the daemons.
#[derive(Debug, Default)]
pub struct TaskReaper {
    state_dirs: Vec<PathBuf>,
}

impl TaskReaper {
    /// Watches the state dirs of `daemons`.
    pub fn new<'d>(daemons: impl IntoIterator<Item = &'d Daemon>) -> TaskReaper {
        TaskReaper {
            state_dirs: daemons.into_iter().map(|d| d.state_dir.clone()).collect(),
        }
    }
}

fn status_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let path = e.path();
        if path.is_dir() {
            status_files(&path, out);
        } else if path.file_name().is_some_and(|n| n == "status.json") {
            out.push(path);
        }
    }
}

impl Drop for TaskReaper {
    fn drop(&mut self) {
        use nix::sys::signal::{Signal, kill, killpg};
        use nix::unistd::Pid;
        let mut files = Vec::new();
        for dir in &self.state_dirs {
            status_files(&dir.join("tasks"), &mut files);
        }
        for f in files {
            let Ok(bytes) = std::fs::read(&f) else {
                continue;
            };
            let Ok(status) = serde_json::from_slice::<Value>(&bytes) else {
                continue;
            };
            let same = |pid: &Value, ticks: &Value| -> Option<i32> {
                let pid = i32::try_from(pid.as_i64()?).ok()?;
                (crate::start_ticks(pid)? == ticks.as_u64()?).then_some(pid)
            };
            if let Some(pid) = same(&status["pid"], &status["pid_start_ticks"]) {
                // The program leads its own process group.
                let _ = killpg(Pid::from_raw(pid), Signal::SIGKILL);
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            if let Some(pid) = same(&status["shim_pid"], &status["shim_start_ticks"]) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
}

// ---- Routing mesh (issue 18) ----------------------------------------------------------

/// Largest number of raw bytes [`Rogue::try_raw_stream`] reads after the answer frame.
const MAX_RAW: usize = 1 << 20;

impl Rogue {
    /// For a stream that turns raw after its first answer (a mesh stream, tag 10): on a
    /// fresh connection to `addr`, sends `msg` under `tag`, then `payload` raw, keeping its
    /// side open; reads one answer frame, then (only when one came) every raw byte that
    /// follows until the peer finishes, within [`ANSWER_TIMEOUT`]. Returns the answer's
    /// outcome and those bytes (`Err` says why they stopped short).
    pub fn try_raw_stream<M: Serialize>(
        &self,
        addr: SocketAddr,
        tag: u8,
        msg: &M,
        payload: &[u8],
    ) -> (Outcome, Result<Vec<u8>, String>) {
        self.rt.block_on(async {
            let conn = match self.connect(addr).await {
                Ok(c) => c,
                Err(e) => return (Outcome::NoConnection(e), Ok(Vec::new())),
            };
            let exchange = async {
                let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
                shoal::net::write_frame(&mut send, tag, msg)
                    .await
                    .map_err(|e| e.to_string())?;
                // The peer may refuse before reading these: a failed write is no answer yet.
                // This side stays open (as a client that waits for the answer before it
                // closes): the raw bytes end when the task closes its side.
                let wrote = send.write_all(payload).await.map_err(|e| e.to_string());
                match shoal::net::read_frame_raw(&mut recv, MAX_ANSWER).await {
                    Ok(frame) => Ok((frame, recv, send)),
                    Err(e) => Err(match wrote {
                        Err(w) => format!("{e} (writing the payload: {w})"),
                        Ok(()) => e.to_string(),
                    }),
                }
            };
            let result = match tokio::time::timeout(ANSWER_TIMEOUT, exchange).await {
                Err(_) => (
                    Outcome::NoAnswer(format!("nothing within {ANSWER_TIMEOUT:?}")),
                    Ok(Vec::new()),
                ),
                Ok(Err(e)) => (
                    Outcome::NoAnswer(match conn.close_reason() {
                        Some(reason) => format!("{e} (connection closed: {reason})"),
                        None => e,
                    }),
                    Ok(Vec::new()),
                ),
                Ok(Ok(((tag, body), mut recv, send))) => {
                    let raw = match tokio::time::timeout(ANSWER_TIMEOUT, recv.read_to_end(MAX_RAW))
                        .await
                    {
                        Err(_) => Err(format!(
                            "the raw bytes did not end within {ANSWER_TIMEOUT:?}"
                        )),
                        Ok(Err(e)) => Err(e.to_string()),
                        Ok(Ok(bytes)) => Ok(bytes),
                    };
                    drop(send);
                    (Outcome::Answered { tag, body }, raw)
                }
            };
            conn.close(0u32.into(), b"rogue done");
            result
        })
    }
}
