//! The node's membership lifecycle: `init` (and `--force-new-cluster`), `join` (both
//! sides), `leave`, resuming after a restart, becoming a manager and stepping down, and the
//! loops that run while the node is in a cluster (gossip, worker, manager loops).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::watch;
use tracing::{info, warn};

use super::error::LifecycleError;
use super::node::{Membership, Node, REMOVED_REASON, cpus, memory_bytes, platform};
use crate::api::{InitRequest, InitResponse, JoinApiRequest, JoinApiResponse, LeaveRequest};
use crate::config::{DEFAULT_PORT, SavedCluster, SavedConfig, parse_advertise};
use crate::gossip::Gossip;
use crate::join::{self, JoinRequest};
use crate::manager::network::QuicNetworkFactory;
use crate::manager::state::{Availability, ClusterRecord, Command, NodeRecord, NodeStatus, Role};
use crate::manager::{Manager, ManagerError, raft_id_for};
use crate::pki::token::JoinToken;
use crate::pki::{self, ClusterCa, NodeId};
use crate::trust::TrustView;
use crate::util::{now_ms, random_id};
use crate::worker::{AssignmentSet, Worker, WorkerConfig};

impl Node {
    /// Starts serving, and dialing peers, with the node certificate.
    pub(super) fn serve_quic(&self, saved: &SavedCluster) -> anyhow::Result<()> {
        let server = pki::server_config(&saved.node_cert, &saved.ca_cert, &self.key)
            .context("cannot build the TLS server configuration")?;
        let client = pki::client_config(&saved.node_cert, &saved.ca_cert, &self.key)
            .context("cannot build the TLS client configuration")?;
        self.endpoint.set_server_config(server);
        self.endpoint.set_client_config(client);
        Ok(())
    }

    /// Where this node's tasks' secrets live: a directory of its own on a memory-backed
    /// filesystem (`/dev/shm`, else `/run`), never on disk. `None` when neither is a tmpfs:
    /// tasks with secrets are then refused here.
    fn secrets_dir(&self) -> Option<std::path::PathBuf> {
        let name = format!("shoal-secrets-{}", self.node_id);
        ["/dev/shm", "/run"]
            .iter()
            .map(std::path::Path::new)
            .find(|p| shoal_runtime::secrets::memory_backed(p))
            .map(|p| p.join(name))
    }

    /// Starts this node's worker and its session to the leader.
    pub(super) fn start_worker(self: &Arc<Self>, cluster_id: &str) -> Result<(), LifecycleError> {
        use shoal_runtime::Driver as _;
        let scope = shoal_runtime::Scope::new(cluster_id, self.node_id.clone());
        let mut drivers: BTreeMap<String, Arc<dyn shoal_runtime::Driver>> = BTreeMap::new();
        let exe = std::env::current_exe()
            .map_err(|e| LifecycleError::Start(format!("cannot find the shoal binary: {e}")))?;
        let mut process_config = shoal_runtime::process::ProcessConfig::new(
            self.state_dir.root().join("tasks"),
            scope.clone(),
            shoal_runtime::process::ShimCommand::shoal_subcommand(exe),
        );
        if let Some(d) = &self.discovery_opts {
            // Service names for process tasks: the same server the containers use.
            process_config
                .env
                .insert("SHOAL_DNS".into(), d.subnet.gateway().to_string());
        }
        let secrets_dir = self.secrets_dir();
        process_config.secrets_dir.clone_from(&secrets_dir);
        let process = shoal_runtime::process::ProcessDriver::new(process_config)
            .map_err(|e| LifecycleError::Start(format!("cannot start the process driver: {e}")))?;
        if self.drivers.iter().any(|d| d == "process") {
            drivers.insert(process.kind().as_str().into(), Arc::new(process));
        }
        // The worker gets the Docker driver even when Docker did not answer at start (it
        // connects lazily and retries): a node restarted while the engine is busy must
        // still be able to list and stop its containers once the engine answers (issue 15:
        // an orphaned copy outlived its full assignment set). What the node *offers* for
        // placement still follows the start-up check; `--drivers` without docker excludes it.
        if self.docker_allowed {
            let mut config = shoal_runtime::docker::DockerConfig::new(scope);
            config.network.clone_from(&self.docker_network);
            config.allow_privileged = self.allow_privileged;
            config.files_dir = Some(self.state_dir.root().join("files"));
            config.secrets_dir.clone_from(&secrets_dir);
            if let Some(d) = &self.discovery_opts {
                config.ipam = Some(d.ipam());
                config.dns = vec![d.subnet.gateway().to_string()];
            }
            match shoal_runtime::docker::DockerDriver::new(config) {
                Ok(d) => {
                    if let Some(opts) = self.discovery_opts.clone() {
                        super::discovery::start(self, d.clone(), opts);
                    }
                    drivers.insert("docker".into(), Arc::new(d));
                }
                Err(e) => warn!("docker driver unavailable: {e}"),
            }
        } else if self.discovery_opts.is_some() {
            self.set_discovery_status(
                "off (no Docker driver: names and VIPs live on the containers' network)".into(),
            );
        }
        self.mesh_tasks.set(drivers.clone());
        let mut config = WorkerConfig::new(drivers, self.state_dir.root().join("worker"));
        config.secrets = self.worker_secrets.clone();
        let (handle, reports) = Worker::start(config)
            .map_err(|e| LifecycleError::Start(format!("cannot start the worker: {e}")))?;
        *self
            .worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(handle.clone());
        tokio::spawn(crate::dispatch::run_worker_session(
            self.clone(),
            handle,
            reports,
        ));
        Ok(())
    }

    /// Stops the worker. With `stop_tasks`, its tasks are stopped first (leaving the
    /// cluster); otherwise they keep running (a daemon restart adopts them).
    pub(super) async fn stop_worker(&self, stop_tasks: bool) {
        let handle = self
            .worker
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        super::discovery::stop(self).await;
        if stop_tasks {
            // Leaving: this node serves no published port any more.
            self.mesh.set_table(crate::mesh::EndpointTable::default());
        }
        if let Some(h) = handle {
            if stop_tasks {
                let _ = h
                    .apply(AssignmentSet {
                        full: true,
                        tasks: vec![],
                        removed: vec![],
                    })
                    .await;
                let _ = h.resync().await;
            }
            let _ = h.shutdown().await;
        }
    }

    /// Starts the loops a manager runs (they act only while it leads).
    pub(crate) fn start_manager_loops(&self, manager: &Arc<Manager>) {
        let (_tx, rx) = watch::channel(false);
        // The loop ends with Raft; the sender is kept alive by the loop's own clone.
        let manager = manager.clone();
        tokio::spawn(async move {
            let _keep = _tx;
            crate::manager::orchestrator::run(
                manager,
                crate::manager::orchestrator::OrchestratorConfig::default(),
                rx,
            )
            .await;
        });
    }

    pub(super) fn start_gossip(
        &self,
        role: Role,
        seeds: Vec<SocketAddr>,
    ) -> Result<(), LifecycleError> {
        let role = match role {
            Role::Manager => shoal_membership::NodeRole::Manager,
            Role::Worker => shoal_membership::NodeRole::Worker,
        };
        let gossip = Gossip::start(
            self.key.public_key(),
            self.key.secret_bytes(),
            self.advertise(),
            role,
            self.pool.clone(),
            self.dialed_tx.clone(),
            1.0,
        )
        .map_err(LifecycleError::Start)?;
        gossip.join(seeds);
        *self
            .gossip
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(gossip);
        Ok(())
    }

    pub(super) async fn stop_gossip(&self, leave: bool) {
        let g = self
            .gossip
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        if let (Some(g), true) = (g, leave) {
            g.leave(Duration::from_secs(2)).await;
        }
    }

    /// Publishes the Raft leader to gossip whenever it changes, so workers know it.
    pub(crate) fn watch_leader(&self, manager: Arc<Manager>) {
        let Some(gossip) = self.gossip() else { return };
        tokio::spawn(async move {
            let mut rx = manager.metrics();
            let mut last = None;
            loop {
                let (term, leader) = {
                    let m = rx.borrow();
                    (m.current_term, m.current_leader)
                };
                if last != Some((term, leader)) {
                    last = Some((term, leader));
                    if let Some(key) = leader.and_then(|l| {
                        manager.read_local(|s| s.node_by_raft_id(l).map(|n| n.public_key))
                    }) {
                        gossip.publish(shoal_membership::FactBody::LeaderHint {
                            term,
                            leader: Some(shoal_membership::NodeId(key)),
                        });
                    }
                }
                if rx.changed().await.is_err() {
                    return;
                }
            }
        });
    }

    /// Restarts the node's part in the cluster after a daemon restart.
    pub(super) async fn resume(
        self: &Arc<Self>,
        saved: SavedCluster,
    ) -> Result<(), LifecycleError> {
        let manager = if saved.role == Role::Manager {
            let started = Instant::now();
            let manager = self.open_manager(&saved.cluster_id).await?;
            let manager = Arc::new(manager);
            let m = manager.clone();
            tokio::spawn(async move {
                if let Some(leader) = m.wait_for_leader(Duration::from_secs(30)).await {
                    info!(
                        leader,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "raft leader known"
                    );
                }
            });
            Some(manager)
        } else {
            None
        };
        self.check_own_cert_expiry(&saved);
        self.serve_quic(&saved).map_err(LifecycleError::Local)?;
        let mut seeds: Vec<SocketAddr> =
            saved.seeds.iter().filter_map(|a| a.parse().ok()).collect();
        if let Some(m) = &manager {
            seeds.extend(m.read_local(|s| {
                s.nodes
                    .values()
                    .filter_map(|n| n.addr.parse::<SocketAddr>().ok())
                    .collect::<Vec<_>>()
            }));
        }
        self.start_gossip(saved.role, seeds)?;
        if let Some(m) = &manager {
            self.watch_leader(m.clone());
            self.start_manager_loops(m);
        }
        self.start_worker(&saved.cluster_id)?;
        info!(cluster_id = %saved.cluster_id, role = saved.role.as_str(), "rejoined cluster");
        *self.membership.write().await = Some(Membership { saved, manager });
        Ok(())
    }

    pub(super) async fn stop(&self) {
        self.stop_worker(false).await;
        let taken = self.membership.write().await.take();
        if let Some(manager) = taken.and_then(|m| m.manager) {
            manager.shutdown().await;
        }
        self.endpoint.shutdown(Duration::from_millis(500)).await;
    }

    /// Opens this node's Raft, talking to the other managers over QUIC.
    pub(crate) async fn open_manager(&self, cluster_id: &str) -> Result<Manager, ManagerError> {
        Manager::open_with_network(
            &self.state_dir.raft_db(),
            raft_id_for(&self.key.public_key()),
            cluster_id,
            self.raft_scale,
            QuicNetworkFactory::node_table(self.pool.clone()),
        )
        .await
    }

    pub(super) fn record_for_self(&self, role: Role, availability: Availability) -> NodeRecord {
        let now = now_ms();
        NodeRecord {
            id: self.node_id.clone(),
            public_key: self.key.public_key(),
            raft_id: raft_id_for(&self.key.public_key()),
            hostname: self.hostname.clone(),
            addr: self.advertise().to_string(),
            role,
            availability,
            status: NodeStatus::Ready,
            labels: Default::default(),
            platform: platform(),
            memory_bytes: memory_bytes(),
            cpus: cpus(),
            drivers: self.drivers.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            created_at: now,
            updated_at: now,
        }
    }

    /// `init --force-new-cluster`: this manager starts a new Raft group of one from its
    /// own copy of the state. The other managers are dropped from it and their keys
    /// refused until they leave and join again with a token; workers carry on.
    pub(super) async fn force_new_cluster(
        self: &Arc<Self>,
    ) -> Result<InitResponse, LifecycleError> {
        let _guard = self.lifecycle.lock().await;
        let (saved, old) = match self.membership.read().await.as_ref() {
            None => return Err(LifecycleError::NothingToRecover),
            Some(Membership { manager: None, .. }) => {
                return Err(LifecycleError::ForceNewClusterOnWorker);
            }
            Some(Membership {
                saved,
                manager: Some(m),
            }) => (saved.clone(), m.clone()),
        };
        let mut state = old.read_local(|s| s.clone());
        let own = self.node_id.clone();
        let others: Vec<(String, [u8; 32])> = state
            .nodes
            .values()
            .filter(|n| n.role == Role::Manager && n.id != own)
            .map(|n| (n.id.clone(), n.public_key))
            .collect();
        for (id, key) in &others {
            if let Some(n) = state.nodes.remove(id) {
                state.raft_ids.remove(&n.raft_id);
            }
            state.removed_keys.insert(*key);
        }
        if let Some(me) = state.nodes.get_mut(&own) {
            me.status = NodeStatus::Ready;
        }
        old.shutdown().await;
        let db = self.state_dir.raft_db();
        // Kept (0600: it holds the CA key) until the new cluster has a snapshot and entries
        // beyond it (`authz.rs`); each start also prunes all but the newest.
        let kept = db.with_file_name(format!(
            "{}{}",
            crate::state_dir::FORCE_NEW_CLUSTER_COPY_PREFIX,
            now_ms()
        ));
        std::fs::rename(&db, &kept).map_err(|error| LifecycleError::MoveAside {
            path: db.display().to_string(),
            error,
        })?;
        self.force_new_cluster_copies.store(true, Ordering::Relaxed);
        if let Err(e) = crate::state_dir::enforce_mode(&kept, 0o600, "file") {
            warn!("cannot set the mode of {} to 0600: {e}", kept.display());
        }
        info!(
            "moved {} aside to {} (safe to delete once the new cluster runs)",
            db.display(),
            kept.display()
        );
        let manager = Arc::new(self.open_manager(&saved.cluster_id).await?);
        manager.initialize().await?;
        manager
            .wait_for_leader(Duration::from_secs(10))
            .await
            .ok_or(LifecycleError::NoElection)?;
        manager.write(Command::RestoreV4(Box::new(state))).await?;
        for (id, _) in &others {
            if let Ok(id) = id.parse::<NodeId>()
                && let Some(conn) = self.pool.remove(&id)
            {
                conn.close(2u32.into(), REMOVED_REASON.as_bytes());
            }
        }
        if let Some(m) = self.membership.write().await.as_mut() {
            m.manager = Some(manager.clone());
        }
        self.watch_leader(manager.clone());
        self.start_manager_loops(&manager);
        warn!(
            dropped = others.len(),
            kept = %kept.display(),
            "forced a new cluster of one manager from this node's state"
        );
        Ok(InitResponse {
            node_id: own,
            cluster_id: saved.cluster_id,
        })
    }

    /// Remembers that a peer refused this node as removed, for `info` and the log.
    pub(crate) fn note_removed(&self, reason: &str) {
        let mut notice = self
            .removed_notice
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if notice.is_none() {
            tracing::error!(
                "{reason}: this node is no longer part of the cluster; run `shoal leave --force`, then join again with a token"
            );
        }
        *notice = Some(format!(
            "{reason}: run `shoal leave --force`, then `shoal join` with a token from a manager"
        ));
    }

    pub(super) async fn init(
        self: &Arc<Self>,
        req: InitRequest,
    ) -> Result<InitResponse, LifecycleError> {
        let _guard = self.lifecycle.lock().await;
        if req.force_new_cluster {
            drop(_guard);
            return self.force_new_cluster().await;
        }
        if self.membership.read().await.is_some() {
            return Err(LifecycleError::InitInCluster);
        }
        let availability: Availability = match req.availability.as_deref() {
            Some(a) => a.parse().map_err(|e: shoal_scheduler::UnknownWord| {
                LifecycleError::Availability(e.to_string())
            })?,
            None => Availability::Active,
        };
        let mut saved_cfg =
            SavedConfig::load(&self.state_dir.node_config()).map_err(LifecycleError::Local)?;
        if let Some(a) = &req.advertise_addr {
            let addr =
                parse_advertise(a, self.listen_addr.port()).map_err(LifecycleError::Advertise)?;
            self.set_advertise(addr);
            saved_cfg.advertise_addr = Some(addr);
        }
        let cluster_id = random_id();
        let ca = ClusterCa::generate(&cluster_id)
            .map_err(|e| LifecycleError::CreateCa(e.to_string()))?;
        let node_cert = self
            .issue_cert(&ca, &self.key.public_key())
            .map_err(LifecycleError::IssueCert)?;
        let db_path = self.state_dir.raft_db();
        if db_path.exists() {
            // Left by an `init` that died before it finished: it holds no cluster.
            std::fs::remove_file(&db_path).map_err(|error| LifecycleError::RemoveUnfinished {
                path: db_path.display().to_string(),
                error,
            })?;
        }
        let manager = self.open_manager(&cluster_id).await?;
        manager.initialize().await?;
        manager
            .wait_for_leader(Duration::from_secs(10))
            .await
            .ok_or(LifecycleError::NoElection)?;
        let record = ClusterRecord {
            id: cluster_id.clone(),
            created_at: now_ms(),
            ca_cert_der: ca.cert_der().to_vec(),
            ca_key_der: ca.key_pkcs8_der().to_vec(),
            worker_token_generation: 0,
            manager_token_generation: 0,
            task_history_limit: 5,
        };
        let cmd = Command::InitCluster {
            cluster: record,
            node: self.record_for_self(Role::Manager, availability),
        };
        if let Err(e) = manager.write(cmd).await {
            manager.shutdown().await;
            let _ = std::fs::remove_file(&db_path);
            return Err(e.into());
        }
        let saved = SavedCluster {
            cluster_id: cluster_id.clone(),
            role: Role::Manager,
            node_cert,
            ca_cert: ca.cert_der().to_vec(),
            seeds: Vec::new(),
            managers: vec![self.key.public_key()],
            removed: Vec::new(),
        };
        saved_cfg.cluster = Some(saved.clone());
        saved_cfg
            .save(&self.state_dir.node_config())
            .map_err(LifecycleError::Local)?;
        self.serve_quic(&saved).map_err(LifecycleError::Local)?;
        self.start_gossip(Role::Manager, Vec::new())?;
        let manager = Arc::new(manager);
        self.watch_leader(manager.clone());
        self.start_manager_loops(&manager);
        self.start_worker(&cluster_id)?;
        info!(%cluster_id, "cluster initialized");
        *self.membership.write().await = Some(Membership {
            saved,
            manager: Some(manager),
        });
        Ok(InitResponse {
            node_id: self.node_id.clone(),
            cluster_id,
        })
    }

    pub(super) async fn leave(&self, req: LeaveRequest) -> Result<(), LifecycleError> {
        let _guard = self.lifecycle.lock().await;
        let mut membership = self.membership.write().await;
        let Some(m) = membership.as_ref() else {
            return Err(LifecycleError::NotInCluster);
        };
        if let Some(manager) = &m.manager {
            let voters = manager.voters();
            if !req.force {
                return Err(if voters.len() <= 1 {
                    LifecycleError::LastManager
                } else {
                    LifecycleError::StillManager
                });
            }
            manager.shutdown().await;
        }
        *membership = None;
        drop(membership);
        self.stop_worker(true).await;
        self.stop_gossip(true).await;
        self.endpoint.clear_server_config();
        for (id, conn) in self.pool.connections() {
            self.pool.remove(&id);
            conn.close(0u32.into(), b"left the cluster");
        }
        self.trust.send_replace(Arc::new(TrustView::default()));
        let mut saved =
            SavedConfig::load(&self.state_dir.node_config()).map_err(LifecycleError::Local)?;
        saved.cluster = None;
        saved
            .save(&self.state_dir.node_config())
            .map_err(LifecycleError::Local)?;
        let db = self.state_dir.raft_db();
        if db.exists() {
            std::fs::remove_file(&db).map_err(|error| LifecycleError::RemoveDb {
                path: db.display().to_string(),
                error,
            })?;
        }
        warn!("left the cluster: cluster state wiped, node key kept");
        Ok(())
    }

    pub(super) async fn join(
        self: &Arc<Self>,
        req: JoinApiRequest,
    ) -> Result<JoinApiResponse, LifecycleError> {
        let guard = self.lifecycle.lock().await;
        if self.membership.read().await.is_some() {
            return Err(LifecycleError::JoinInCluster);
        }
        let token =
            JoinToken::parse(&req.token).map_err(|e| LifecycleError::Token(e.to_string()))?;
        let availability: Availability = match req.availability.as_deref() {
            Some(a) => a.parse().map_err(|e: shoal_scheduler::UnknownWord| {
                LifecycleError::Availability(e.to_string())
            })?,
            None => Availability::Active,
        };
        let given = if req.manager_addrs.is_empty() {
            token.payload.manager_addrs.clone()
        } else {
            req.manager_addrs.clone()
        };
        let mut addrs = Vec::new();
        for a in &given {
            addrs.push(parse_advertise(a, DEFAULT_PORT).map_err(LifecycleError::ManagerAddr)?);
        }
        if addrs.is_empty() {
            return Err(LifecycleError::NoManagerAddr);
        }
        let mut saved_cfg =
            SavedConfig::load(&self.state_dir.node_config()).map_err(LifecycleError::Local)?;
        let previous_advertise = self.advertise();
        if let Some(a) = &req.advertise_addr {
            let addr =
                parse_advertise(a, self.listen_addr.port()).map_err(LifecycleError::Advertise)?;
            self.set_advertise(addr);
            saved_cfg.advertise_addr = Some(addr);
        }
        let jr = JoinRequest {
            token: req.token.clone(),
            public_key: self.key.public_key(),
            hostname: self.hostname.clone(),
            advertise_addr: self.advertise().to_string(),
            platform: platform(),
            memory_bytes: memory_bytes(),
            cpus: cpus(),
            drivers: self.drivers.clone(),
            version: env!("CARGO_PKG_VERSION").into(),
            availability,
            proof: Vec::new(),
        };
        let (accepted, via) = match join::request_join(&self.endpoint, &self.key, &jr, &addrs).await
        {
            Ok(v) => v,
            Err(e) => {
                self.set_advertise(previous_advertise);
                return Err(LifecycleError::JoinRefused(e));
            }
        };
        let managers = Self::managers_of(&accepted.members);
        let saved = SavedCluster {
            cluster_id: accepted.cluster_id.clone(),
            role: accepted.role,
            node_cert: accepted.node_cert,
            ca_cert: accepted.ca_cert,
            seeds: accepted.members.iter().map(|m| m.addr.clone()).collect(),
            managers: managers.iter().copied().collect(),
            removed: Vec::new(),
        };
        self.trust.send_replace(Arc::new(TrustView {
            managers,
            removed: Default::default(),
        }));
        saved_cfg.cluster = Some(saved.clone());
        saved_cfg
            .save(&self.state_dir.node_config())
            .map_err(LifecycleError::Local)?;
        self.serve_quic(&saved).map_err(LifecycleError::Local)?;
        let seeds = saved.seeds.iter().filter_map(|a| a.parse().ok()).collect();
        self.start_gossip(saved.role, seeds)?;
        self.start_worker(&saved.cluster_id)?;
        info!(cluster_id = %saved.cluster_id, %via, "joined the cluster");
        let resp = JoinApiResponse {
            node_id: self.node_id.clone(),
            cluster_id: saved.cluster_id.clone(),
            role: saved.role.as_str().into(),
            via: via.to_string(),
        };
        let role = saved.role;
        let cluster_id = saved.cluster_id.clone();
        *self.membership.write().await = Some(Membership {
            saved,
            manager: None,
        });
        drop(guard);
        if role == Role::Manager {
            // The leader adds this node as a learner, then as a voter, once Raft runs here.
            self.become_manager(&cluster_id).await?;
            // Answer once this node votes, as `docker swarm join` does for managers.
            if let Some(manager) = self.manager_opt().await {
                let own = manager.raft_id();
                let mut metrics = manager.metrics();
                let _ = tokio::time::timeout(Duration::from_secs(60), async {
                    while !manager.voters().contains(&own) {
                        if metrics.changed().await.is_err() {
                            return;
                        }
                    }
                })
                .await;
                if !manager.voters().contains(&own) {
                    return Err(LifecycleError::NotAVoterYet);
                }
            }
        }
        Ok(resp)
    }
}
