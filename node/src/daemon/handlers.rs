//! The control API's route table and write path, and the node and cluster handlers
//! (`info`, `node …`, `join-token`); the service and task handlers are in `services`.

mod progress;
mod services;

use std::sync::Arc;
use std::time::Duration;

use hyper::Method;
use tracing::info;

use super::forward;
use super::node::{Membership, NOT_A_MANAGER, NOT_IN_CLUSTER, Node, REMOVED_REASON, manager_err};
use crate::api::server::{ApiError, ApiRequest, Reply};
use crate::api::{
    Info, InitRequest, JoinApiRequest, JoinTokenRequest, JoinTokenResponse, LeaveRequest, NodeView,
};
use crate::join;
use crate::manager::Manager;
use crate::manager::state::{Availability, Command, CommandResult, NodeRecord, NodeStatus, Role};
use crate::pki::NodeId;
use crate::util::{now_ms, rfc3339};

/// A linearizable read of the cluster state for a handler, its error mapped once.
pub(super) async fn read<T>(
    manager: &Manager,
    f: impl FnOnce(&crate::manager::state::ClusterState) -> T,
) -> Result<T, ApiError> {
    manager.read_linearizable(f).await.map_err(manager_err)
}

impl Node {
    pub(super) async fn manager(&self) -> Result<Arc<Manager>, ApiError> {
        match self.membership.read().await.as_ref() {
            None => Err(ApiError::conflict(NOT_IN_CLUSTER)),
            Some(Membership { manager: None, .. }) => Err(ApiError::conflict(NOT_A_MANAGER)),
            Some(Membership {
                manager: Some(m), ..
            }) => Ok(m.clone()),
        }
    }

    pub(super) async fn route(self: &Arc<Self>, req: ApiRequest) -> Result<Reply, ApiError> {
        // Cluster-state requests go to the leader; node-local ones never leave.
        let local = forward::is_node_local(&req);
        if !local
            && let Some(manager) = self.manager_opt().await
            && !manager.is_leader()
        {
            return self.forward_api(&manager, req).await;
        }
        self.route_local(req).await
    }

    /// The route table: every call of the control API, node-local, node and cluster, and
    /// services and tasks. Runs on the leader for cluster-state calls (see [`Node::route`]).
    pub(super) async fn route_local(self: &Arc<Self>, req: ApiRequest) -> Result<Reply, ApiError> {
        let route = req.route();
        match (&req.method, route.as_slice()) {
            // Node-local: never forwarded (`forward::is_node_local`).
            (&Method::GET, ["v1", "info"]) => Reply::json(&self.info().await),
            (&Method::POST, ["v1", "init"]) => {
                let body: InitRequest = req.json()?;
                Reply::json(&self.init(body).await?)
            }
            (&Method::POST, ["v1", "leave"]) => {
                let body: LeaveRequest = req.json()?;
                self.leave(body).await?;
                Reply::json(&serde_json::json!({}))
            }
            (&Method::POST, ["v1", "join"]) => {
                let body: JoinApiRequest = req.json()?;
                Reply::json(&self.join(body).await?)
            }
            // The cluster: tokens and nodes.
            (&Method::POST, ["v1", "join-token", role]) => {
                let body: JoinTokenRequest = req.json()?;
                Reply::json(&self.join_token(role, body).await?)
            }
            // Node-local on a manager: its own applied log, never the leader's.
            (&Method::GET, ["v1", "events"]) => {
                let query = crate::api::events::EventQuery::from_params(&req.query)
                    .map_err(ApiError::bad_request)?;
                Ok(Reply::Stream(self.manager().await?.event_stream(query)))
            }
            (&Method::GET, ["v1", "nodes"]) => Reply::json(&self.node_list().await?),
            (&Method::GET, ["v1", "nodes", reference]) => {
                Reply::json(&self.node_inspect(reference).await?)
            }
            (&Method::GET, ["v1", "nodes", reference, "tasks"]) => {
                Reply::json(&self.node_tasks(reference).await?)
            }
            (&Method::DELETE, ["v1", "nodes", reference]) => {
                let current = req.origin.as_deref().unwrap_or(&self.node_id);
                self.node_rm(reference, current, req.flag("force")).await?;
                Reply::json(&serde_json::json!({}))
            }
            (&Method::POST, ["v1", "nodes", reference, "update"]) => {
                let body: crate::api::NodeUpdateRequest = req.json()?;
                Reply::json(&self.node_update(reference, body).await?)
            }
            (&Method::POST, ["v1", "nodes", reference, "promote"]) => {
                Reply::json(&self.set_role(reference, Role::Manager).await?)
            }
            (&Method::POST, ["v1", "nodes", reference, "demote"]) => {
                Reply::json(&self.set_role(reference, Role::Worker).await?)
            }
            // Services and their tasks.
            (&Method::POST, ["v1", "configs"]) => Reply::json(&self.config_create(&req).await?),
            (&Method::GET, ["v1", "configs"]) => Reply::json(&self.config_list().await?),
            (&Method::GET, ["v1", "configs", reference]) => {
                Reply::json(&self.config_inspect(reference).await?)
            }
            (&Method::DELETE, ["v1", "configs", reference]) => {
                Reply::json(&self.config_remove(reference).await?)
            }
            (&Method::POST, ["v1", "secrets"]) => Reply::json(&self.secret_create(&req).await?),
            (&Method::GET, ["v1", "secrets"]) => Reply::json(&self.secret_list().await?),
            (&Method::GET, ["v1", "secrets", reference]) => {
                Reply::json(&self.secret_inspect(reference).await?)
            }
            (&Method::DELETE, ["v1", "secrets", reference]) => {
                Reply::json(&self.secret_remove(reference).await?)
            }
            (&Method::POST, ["v1", "secrets", reference, "compare"]) => {
                Reply::json(&self.secret_compare(reference, &req).await?)
            }
            (&Method::POST, ["v1", "services"]) => Reply::json(&self.service_create(&req).await?),
            (&Method::GET, ["v1", "services"]) => Reply::json(&self.service_list().await?),
            (&Method::GET, ["v1", "services", reference]) => {
                Reply::json(&self.service_inspect(reference).await?)
            }
            (&Method::GET, ["v1", "services", reference, "tasks"]) => {
                Reply::json(&self.service_tasks(reference).await?)
            }
            (&Method::GET, ["v1", "services", reference, "logs"]) => {
                crate::logs::serve_api(self.clone(), self.manager().await?, reference, &req).await
            }
            (&Method::GET, ["v1", "services", reference, "progress"]) => {
                self.service_progress(reference, &req).await
            }
            (&Method::POST, ["v1", "services", reference, "scale"]) => {
                Reply::json(&self.service_scale(reference, &req).await?)
            }
            (&Method::POST, ["v1", "services", reference, "update"]) => {
                Reply::json(&self.service_update(reference, &req).await?)
            }
            (&Method::POST, ["v1", "services", reference, "rollback"]) => {
                Reply::json(&self.service_rollback(reference).await?)
            }
            (&Method::DELETE, ["v1", "services", reference]) => {
                Reply::json(&self.service_remove(reference).await?)
            }
            (_, ["v1", ..]) => Err(ApiError::not_found(format!(
                "unknown API call {} /{}",
                req.method,
                req.segments.join("/")
            ))),
            _ => Err(ApiError::not_found("unknown API version: expected /v1/...")),
        }
    }

    /// The one write path of the control API: every handler that changes the cluster state
    /// proposes through here. [`Node::propose`] writes on this manager when it leads and
    /// forwards the command to the leader when it does not (leadership may move while a
    /// request is served); a manager error becomes an API error once, in `manager_err`.
    pub(super) async fn write(&self, cmd: Command) -> Result<CommandResult, ApiError> {
        self.propose(cmd).await.map_err(manager_err)
    }

    pub(super) async fn info(&self) -> Info {
        let mut info = Info {
            cluster: "inactive".into(),
            node_id: self.node_id.clone(),
            hostname: self.hostname.clone(),
            listen_addr: self.listen_addr.to_string(),
            advertise_addr: self.advertise().to_string(),
            version: env!("CARGO_PKG_VERSION").into(),
            cluster_id: None,
            role: None,
            leader: None,
            managers: None,
            nodes: None,
            drivers: self.drivers.clone(),
            publish_addr: self.mesh.publish_addr().to_string(),
            mesh: self.mesh.counters(),
            discovery: self
                .discovery_status
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
            warning: self
                .removed_notice
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone(),
        };
        let membership = self.membership.read().await;
        if let Some(m) = membership.as_ref() {
            info.cluster = "active".into();
            info.cluster_id = Some(m.saved.cluster_id.clone());
            info.role = Some(m.saved.role.as_str().into());
            if m.manager.is_none()
                && let Some(g) = self.gossip()
            {
                let view = g.view();
                info.leader = view
                    .leader_among(&self.trust_view().managers)
                    .map(|(_, k)| NodeId::from_public_key(&k).to_string());
                let alive: Vec<&[u8; 32]> = view
                    .members
                    .iter()
                    .filter(|(_, (_, st))| *st != shoal_membership::MemberState::Down)
                    .map(|(k, _)| k)
                    .collect();
                info.nodes = Some(alive.len() as u64 + 1);
                info.managers = Some(
                    alive
                        .iter()
                        .filter(|k| {
                            view.roles.get(**k) == Some(&shoal_membership::NodeRole::Manager)
                        })
                        .count() as u64,
                );
            }
            if let Some(manager) = &m.manager {
                let leader = manager.leader();
                manager.read_local(|s| {
                    info.leader = leader
                        .and_then(|l| s.node_by_raft_id(l))
                        .map(|n| n.id.clone());
                    info.managers =
                        Some(s.nodes.values().filter(|n| n.role == Role::Manager).count() as u64);
                    info.nodes = Some(s.nodes.len() as u64);
                });
            }
        }
        info
    }

    pub(super) async fn join_token(
        &self,
        role: &str,
        req: JoinTokenRequest,
    ) -> Result<JoinTokenResponse, ApiError> {
        let role = match role {
            "worker" => Role::Worker,
            "manager" => Role::Manager,
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown role `{other}`: expected worker or manager"
                )));
            }
        };
        let manager = self.manager().await?;
        if req.rotate {
            self.write(Command::RotateToken { role }).await?;
        }
        let token = read(&manager, |s| {
            s.cluster.as_ref().map(|c| {
                let ttl = req.ttl_secs.map(Duration::from_secs);
                join::mint(c, s, role, ttl, now_ms() / 1000)
            })
        })
        .await?
        .ok_or_else(|| ApiError::conflict(NOT_IN_CLUSTER))?
        .map_err(ApiError::internal)?;
        Ok(JoinTokenResponse {
            role: role.as_str().into(),
            token,
            manager_addr: self.advertise().to_string(),
        })
    }

    pub(super) async fn node_update(
        &self,
        reference: &str,
        req: crate::api::NodeUpdateRequest,
    ) -> Result<serde_json::Value, ApiError> {
        let manager = self.manager().await?;
        let node = read(&manager, |s| s.resolve_node(reference).cloned())
            .await?
            .map_err(ApiError::not_found)?;
        let availability = match req.availability.as_deref() {
            Some(a) => Some(a.parse::<Availability>().map_err(ApiError::bad_request)?),
            None => None,
        };
        for k in req.label_add.keys().chain(req.label_rm.iter()) {
            if k.is_empty() || k.len() > 128 || k.chars().any(|c| c.is_whitespace() || c == '=') {
                return Err(ApiError::bad_request(format!("invalid label key `{k}`")));
            }
        }
        let cmd = Command::UpdateNode {
            id: node.id.clone(),
            availability,
            label_add: req.label_add,
            label_rm: req.label_rm,
            at: now_ms(),
        };
        self.write(cmd).await?;
        Ok(serde_json::json!({ "id": node.id, "hostname": node.hostname }))
    }

    pub(super) async fn set_role(
        &self,
        reference: &str,
        role: Role,
    ) -> Result<serde_json::Value, ApiError> {
        let manager = self.manager().await?;
        let node = read(&manager, |s| s.resolve_node(reference).cloned())
            .await?
            .map_err(ApiError::not_found)?;
        let verb = if role == Role::Manager {
            "promote"
        } else {
            "demote"
        };
        if node.role == role {
            return Err(ApiError::conflict(format!(
                "node {} is already a {}",
                node.hostname,
                role.as_str()
            )));
        }
        if node.status != NodeStatus::Ready {
            return Err(ApiError::conflict(format!(
                "node {} is {}: only a ready node can be {verb}d",
                node.hostname,
                node.status.as_str()
            )));
        }
        self.write(Command::SetRole {
            id: node.id.clone(),
            role,
            at: now_ms(),
        })
        .await?;
        info!(node = %node.id, role = role.as_str(), "role changed");
        Ok(serde_json::json!({ "id": node.id, "hostname": node.hostname, "role": role.as_str() }))
    }

    /// `node rm`: `current` is the node the user ran it on (which may have forwarded it
    /// here), the one that cannot remove itself.
    pub(super) async fn node_rm(
        &self,
        reference: &str,
        current: &str,
        force: bool,
    ) -> Result<(), ApiError> {
        let manager = self.manager().await?;
        let node = read(&manager, |s| s.resolve_node(reference).cloned())
            .await?
            .map_err(ApiError::not_found)?;
        if node.id == current {
            return Err(ApiError::conflict(
                "cannot remove the current node: run `shoal leave` on it instead",
            ));
        }
        if node.role == Role::Manager {
            return Err(ApiError::conflict(format!(
                "node {} is a manager: demote it first with `shoal node demote {}`",
                node.hostname, node.id
            )));
        }
        if node.status == NodeStatus::Ready && !force {
            return Err(ApiError::conflict(format!(
                "node {} is ready: run `shoal leave` on it first, or use --force to remove it anyway",
                node.hostname
            )));
        }
        self.write(Command::RemoveNode {
            id: node.id.clone(),
        })
        .await?;
        if let Ok(id) = node.id.parse::<NodeId>()
            && let Some(conn) = self.pool.remove(&id)
        {
            conn.close(2u32.into(), REMOVED_REASON.as_bytes());
        }
        info!(node = %node.id, "node removed");
        Ok(())
    }

    pub(super) fn view(&self, manager: &Manager, n: &NodeRecord) -> NodeView {
        let leader = manager.leader();
        let manager_status = (n.role == Role::Manager).then(|| {
            if Some(n.raft_id) == leader {
                "leader"
            } else if n.status == NodeStatus::Ready {
                "reachable"
            } else {
                "unreachable"
            }
            .to_string()
        });
        NodeView {
            id: n.id.clone(),
            hostname: n.hostname.clone(),
            role: n.role.as_str().into(),
            status: n.status.as_str().into(),
            availability: n.availability.as_str().into(),
            manager_status,
            addr: n.addr.clone(),
            labels: n.labels.clone(),
            public_key: n.public_key.iter().map(|b| format!("{b:02x}")).collect(),
            platform: n.platform.clone(),
            memory_bytes: n.memory_bytes,
            cpus: n.cpus,
            drivers: n.drivers.clone(),
            version: n.version.clone(),
            created_at: rfc3339(n.created_at),
            updated_at: rfc3339(n.updated_at),
        }
    }

    pub(super) async fn node_list(&self) -> Result<Vec<NodeView>, ApiError> {
        let manager = self.manager().await?;
        let nodes = read(&manager, |s| s.nodes.values().cloned().collect::<Vec<_>>()).await?;
        Ok(nodes.iter().map(|n| self.view(&manager, n)).collect())
    }

    pub(super) async fn node_inspect(&self, reference: &str) -> Result<NodeView, ApiError> {
        let manager = self.manager().await?;
        let node = read(&manager, |s| s.resolve_node(reference).cloned())
            .await?
            .map_err(ApiError::not_found)?;
        Ok(self.view(&manager, &node))
    }
}
