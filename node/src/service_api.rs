//! Control API handlers for services and tasks (run on the leader; followers forward).

use serde::{Deserialize, Serialize};

use crate::api::server::{ApiError, ApiRequest, Reply};
use crate::daemon::{Node, now_ms};
use crate::manager::services::{
    self, ServiceCommand, ServiceMode, ServiceRecord, ServiceSpec, TaskFilter,
};
use crate::manager::state::Command;
use crate::manager::{Manager, ManagerError};

/// `POST /v1/services/{ref}/scale`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScaleRequest {
    /// New replica count.
    pub replicas: u64,
}

/// Answer to create/scale/rm.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceRef {
    /// Service ID.
    pub id: String,
    /// Service name.
    pub name: String,
}

fn err(e: ManagerError) -> ApiError {
    match e {
        ManagerError::Refused(m) => ApiError::conflict(m),
        ManagerError::QuorumLost { .. } | ManagerError::NotLeader { .. } => {
            ApiError::unavailable(e.to_string())
        }
        other => ApiError::internal(other.to_string()),
    }
}

async fn resolve(manager: &Manager, reference: &str) -> Result<ServiceRecord, ApiError> {
    manager
        .read_linearizable(|s| s.services.resolve_service(reference).cloned())
        .await
        .map_err(err)?
        .map_err(ApiError::not_found)
}

/// Routes `/v1/services...`; `None` when the path is not a service route.
pub async fn route(
    node: &Node,
    manager: &Manager,
    req: &ApiRequest,
) -> Option<Result<Reply, ApiError>> {
    use hyper::Method;
    let route = req.route();
    let result = match (&req.method, route.as_slice()) {
        (&Method::POST, ["v1", "services"]) => create(node, manager, req).await,
        (&Method::GET, ["v1", "services"]) => list(manager).await,
        (&Method::GET, ["v1", "services", r]) => inspect(manager, r).await,
        (&Method::GET, ["v1", "services", r, "tasks"]) => tasks(manager, r).await,
        (&Method::POST, ["v1", "services", r, "scale"]) => scale(node, manager, r, req).await,
        (&Method::DELETE, ["v1", "services", r]) => remove(node, manager, r).await,
        (&Method::GET, ["v1", "nodes", r, "tasks"]) => node_tasks(node, manager, r).await,
        _ => return None,
    };
    Some(result)
}

async fn create(node: &Node, manager: &Manager, req: &ApiRequest) -> Result<Reply, ApiError> {
    let spec: ServiceSpec = req.json()?;
    spec.validate().map_err(ApiError::bad_request)?;
    if !spec.ports.is_empty() {
        return Err(ApiError::bad_request(
            "publishing ports needs the routing mesh, which this version does not have yet: create the service without -p",
        ));
    }
    let id = services::new_service_id().map_err(ApiError::internal)?;
    let name = spec.name.clone();
    let record = ServiceRecord::new(id.clone(), spec, now_ms());
    let _ = manager;
    node.propose(Command::Services(ServiceCommand::Create(Box::new(record))))
        .await
        .map_err(err)?;
    Reply::json(&ServiceRef { id, name })
}

async fn list(manager: &Manager) -> Result<Reply, ApiError> {
    let rows = manager
        .read_linearizable(|s| services::service_rows(&s.services))
        .await
        .map_err(err)?;
    Reply::json(&rows)
}

async fn inspect(manager: &Manager, reference: &str) -> Result<Reply, ApiError> {
    let value = manager
        .read_linearizable(|s| {
            s.services.resolve_service(reference).map(|rec| {
                let row = services::service_row(&s.services, rec);
                let mut v = serde_json::to_value(&row).unwrap_or_default();
                if let Some(obj) = v.as_object_mut() {
                    obj.insert(
                        "spec".into(),
                        serde_json::to_value(&rec.spec).unwrap_or_default(),
                    );
                    obj.insert(
                        "previous_spec".into(),
                        serde_json::to_value(&rec.previous_spec).unwrap_or_default(),
                    );
                }
                v
            })
        })
        .await
        .map_err(err)?
        .map_err(ApiError::not_found)?;
    Reply::json(&value)
}

async fn tasks(manager: &Manager, reference: &str) -> Result<Reply, ApiError> {
    let rows = manager
        .read_linearizable(|s| {
            s.services
                .resolve_service(reference)
                .map(|rec| services::task_rows(&s.services, &s.nodes, TaskFilter::Service(&rec.id)))
        })
        .await
        .map_err(err)?
        .map_err(ApiError::not_found)?;
    Reply::json(&rows)
}

async fn scale(
    node: &Node,
    manager: &Manager,
    reference: &str,
    req: &ApiRequest,
) -> Result<Reply, ApiError> {
    let body: ScaleRequest = req.json()?;
    let rec = resolve(manager, reference).await?;
    if rec.spec.mode == ServiceMode::Global {
        return Err(ApiError::conflict(format!(
            "service {} is global: scale applies to replicated services only",
            rec.spec.name
        )));
    }
    let cmd = ServiceCommand::Scale {
        id: rec.id.clone(),
        replicas: body.replicas,
        at: now_ms(),
    };
    node.propose(Command::Services(cmd)).await.map_err(err)?;
    Reply::json(&ServiceRef {
        id: rec.id,
        name: rec.spec.name,
    })
}

async fn remove(node: &Node, manager: &Manager, reference: &str) -> Result<Reply, ApiError> {
    let rec = resolve(manager, reference).await?;
    let cmd = ServiceCommand::Remove {
        id: rec.id.clone(),
        at: now_ms(),
    };
    node.propose(Command::Services(cmd)).await.map_err(err)?;
    Reply::json(&ServiceRef {
        id: rec.id,
        name: rec.spec.name,
    })
}

async fn node_tasks(node: &Node, manager: &Manager, reference: &str) -> Result<Reply, ApiError> {
    let own = node.node_id().to_string();
    let rows = manager
        .read_linearizable(|s| {
            let id = if reference == "self" {
                Ok(own.clone())
            } else {
                s.resolve_node(reference).map(|n| n.id.clone())
            };
            id.map(|id| services::task_rows(&s.services, &s.nodes, TaskFilter::Node(&id)))
        })
        .await
        .map_err(err)?
        .map_err(ApiError::not_found)?;
    Reply::json(&rows)
}
