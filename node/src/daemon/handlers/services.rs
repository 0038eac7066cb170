//! Service and task handlers of the control API (run on the leader; followers forward). The
//! routes are in the table of `handlers.rs`; writes go through [`Node::write`].

use super::read;
use crate::api::server::{ApiError, ApiRequest};
use crate::api::services::{
    ScaleRequest, ServiceInspect, ServiceRef, ServiceRow, ServiceSpecBody, ServiceUpdateBody,
    ServiceUpdateResponse, TaskFilter, TaskRow, UpdatePlan, service_rows, task_rows,
};
use crate::daemon::node::Node;
use crate::manager::Manager;
use crate::manager::services::{ServiceCommand, ServiceMode, ServiceRecord, ServiceSpec};
use crate::manager::state::Command;
use crate::util::now_ms;

/// The live service `reference` names (ID, name or unique ID prefix).
async fn resolve(manager: &Manager, reference: &str) -> Result<ServiceRecord, ApiError> {
    read(manager, |s| s.services.resolve_service(reference).cloned())
        .await?
        .map_err(ApiError::not_found)
}

impl Node {
    /// `POST /v1/services`: validates the body into a spec, draws the ID, refuses a port
    /// another service publishes (409) and proposes the create.
    pub(super) async fn service_create(&self, req: &ApiRequest) -> Result<ServiceRef, ApiError> {
        let manager = self.manager().await?;
        let body: ServiceSpecBody = req.json()?;
        let mut spec = ServiceSpec::try_from(body).map_err(ApiError::bad_request)?;
        let id = crate::util::random_id();
        if !spec.configs.is_empty() || !spec.secrets.is_empty() {
            spec = read(&manager, |s| {
                let mut spec = spec;
                s.services.resolve_config_refs(&mut spec)?;
                s.services.resolve_secret_refs(&mut spec).map(|()| spec)
            })
            .await?
            .map_err(ApiError::not_found)?;
        }
        if !spec.ports.is_empty() {
            // The state machine refuses it too (racing creates); this is the early answer.
            read(&manager, |s| s.services.check_ports(&spec, &id))
                .await?
                .map_err(ApiError::conflict)?;
        }
        let name = spec.name.clone();
        let record = ServiceRecord::new(id.clone(), spec, now_ms());
        self.write(Command::Services(ServiceCommand::create(record)))
            .await?;
        Ok(ServiceRef { id, name })
    }

    /// `POST /v1/configs`: a new config (`{"name", "data": base64, "labels"}`).
    pub(super) async fn config_create(
        &self,
        req: &ApiRequest,
    ) -> Result<crate::api::services::ConfigView, ApiError> {
        use base64::Engine as _;
        let body: crate::api::services::ConfigCreateBody = req.json()?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(body.data.as_bytes())
            .map_err(|e| ApiError::bad_request(format!("the config's data is not base64: {e}")))?;
        crate::manager::services::validate_object_name("config", &body.name)
            .map_err(ApiError::bad_request)?;
        let record = crate::manager::services::ConfigRecord {
            id: crate::util::random_id(),
            name: body.name,
            data,
            labels: body.labels,
            created_at: now_ms(),
        };
        let view = crate::api::services::ConfigView::of(&record, true);
        self.write(Command::Services(ServiceCommand::CreateConfig(Box::new(
            record,
        ))))
        .await?;
        Ok(view)
    }

    /// `GET /v1/configs`.
    pub(super) async fn config_list(
        &self,
    ) -> Result<Vec<crate::api::services::ConfigView>, ApiError> {
        let manager = self.manager().await?;
        read(&manager, |s| {
            s.services
                .configs
                .values()
                .map(|c| crate::api::services::ConfigView::of(c, false))
                .collect()
        })
        .await
    }

    /// `GET /v1/configs/{ref}`: with its data.
    pub(super) async fn config_inspect(
        &self,
        reference: &str,
    ) -> Result<crate::api::services::ConfigView, ApiError> {
        let manager = self.manager().await?;
        read(&manager, |s| {
            s.services
                .resolve_config(reference)
                .map(|c| crate::api::services::ConfigView::of(c, true))
        })
        .await?
        .map_err(ApiError::not_found)
    }

    /// `DELETE /v1/configs/{ref}`: refused (409) while a service uses it.
    pub(super) async fn config_remove(
        &self,
        reference: &str,
    ) -> Result<crate::api::services::ConfigView, ApiError> {
        let manager = self.manager().await?;
        let (view, in_use) = read(&manager, |s| {
            let c = s.services.resolve_config(reference)?;
            let in_use = s
                .services
                .services
                .values()
                .find(|r| r.spec.configs.iter().any(|x| x.config_id == c.id))
                .map(|r| r.spec.name.clone());
            Ok::<_, String>((crate::api::services::ConfigView::of(c, false), in_use))
        })
        .await?
        .map_err(ApiError::not_found)?;
        if let Some(service) = in_use {
            return Err(ApiError::conflict(format!(
                "config `{}` is in use by service `{service}`: remove it from the service first (`service update --config-rm {}`)",
                view.name, view.name
            )));
        }
        self.write(Command::Services(ServiceCommand::RemoveConfig {
            id: view.id.clone(),
        }))
        .await?;
        Ok(view)
    }

    /// `POST /v1/secrets`: a new secret (`{"name", "data": base64, "labels"}`), encrypted
    /// here under the cluster's secrets key (drawn with the first secret) before it is
    /// proposed: the log never holds its bytes. Its bytes are in no answer and no message.
    pub(super) async fn secret_create(
        &self,
        req: &ApiRequest,
    ) -> Result<crate::api::services::SecretView, ApiError> {
        use base64::Engine as _;
        let manager = self.manager().await?;
        let body: crate::api::services::SecretCreateBody = req.json()?;
        crate::manager::services::validate_object_name("secret", &body.name)
            .map_err(ApiError::bad_request)?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(body.data.as_bytes())
            .map_err(|_| ApiError::bad_request("the secret's data is not base64"))?;
        if data.is_empty() {
            return Err(ApiError::bad_request("a secret cannot be empty"));
        }
        if data.len() > crate::manager::services::MAX_SECRET_BYTES {
            return Err(ApiError::bad_request(format!(
                "secret `{}` is {} bytes: at most {}",
                body.name,
                data.len(),
                crate::manager::services::MAX_SECRET_BYTES
            )));
        }
        let key = self
            .secrets_key(&manager, true)
            .await
            .map_err(ApiError::unavailable)?;
        let id = crate::util::random_id();
        let (nonce, sealed) = key
            .encrypt(&id, &data)
            .map_err(|e| ApiError::unavailable(e.to_string()))?;
        let record = crate::manager::services::SecretRecord {
            id,
            name: body.name,
            labels: body.labels,
            created_at: now_ms(),
            key_id: key.id(),
            nonce,
            sealed,
        };
        let view = crate::api::services::SecretView::of(&record);
        self.write(Command::Services(ServiceCommand::CreateSecret(Box::new(
            record,
        ))))
        .await?;
        Ok(view)
    }

    /// `GET /v1/secrets`.
    pub(super) async fn secret_list(
        &self,
    ) -> Result<Vec<crate::api::services::SecretView>, ApiError> {
        let manager = self.manager().await?;
        read(&manager, |s| {
            s.services
                .secrets
                .values()
                .map(crate::api::services::SecretView::of)
                .collect()
        })
        .await
    }

    /// `GET /v1/secrets/{ref}`: never the bytes.
    pub(super) async fn secret_inspect(
        &self,
        reference: &str,
    ) -> Result<crate::api::services::SecretView, ApiError> {
        let manager = self.manager().await?;
        read(&manager, |s| {
            s.services
                .resolve_secret(reference)
                .map(crate::api::services::SecretView::of)
        })
        .await?
        .map_err(ApiError::not_found)
    }

    /// `POST /v1/secrets/{ref}/compare`: whether the secret holds the body's bytes (decrypted
    /// here on the leader and compared in constant time; the answer is one bit).
    pub(super) async fn secret_compare(
        &self,
        reference: &str,
        req: &ApiRequest,
    ) -> Result<crate::api::services::SecretCompared, ApiError> {
        use base64::Engine as _;
        let manager = self.manager().await?;
        let body: crate::api::services::SecretCompareBody = req.json()?;
        let data = base64::engine::general_purpose::STANDARD
            .decode(body.data.as_bytes())
            .map_err(|_| ApiError::bad_request("the data is not base64"))?;
        let secret = read(&manager, |s| s.services.resolve_secret(reference).cloned())
            .await?
            .map_err(ApiError::not_found)?;
        let key = self
            .secrets_key(&manager, false)
            .await
            .map_err(ApiError::unavailable)?;
        let value = key
            .decrypt(&secret.id, &secret.nonce, &secret.sealed)
            .map_err(|e| ApiError::unavailable(format!("secret `{}`: {e}", secret.name)))?;
        let same = value.len() == data.len()
            && value
                .iter()
                .zip(&data)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        Ok(crate::api::services::SecretCompared { same })
    }

    /// `DELETE /v1/secrets/{ref}`: refused (409) while a service uses it.
    pub(super) async fn secret_remove(
        &self,
        reference: &str,
    ) -> Result<crate::api::services::SecretView, ApiError> {
        let manager = self.manager().await?;
        let (view, in_use) = read(&manager, |s| {
            let c = s.services.resolve_secret(reference)?;
            Ok::<_, String>((
                crate::api::services::SecretView::of(c),
                s.services.secret_user(&c.id),
            ))
        })
        .await?
        .map_err(ApiError::not_found)?;
        if let Some(service) = in_use {
            return Err(ApiError::conflict(format!(
                "secret `{}` is in use by service `{service}`: remove it from the service first (`service update --secret-rm {}`)",
                view.name, view.name
            )));
        }
        self.write(Command::Services(ServiceCommand::RemoveSecret {
            id: view.id.clone(),
        }))
        .await?;
        Ok(view)
    }

    /// `GET /v1/services`.
    pub(super) async fn service_list(&self) -> Result<Vec<ServiceRow>, ApiError> {
        let manager = self.manager().await?;
        read(&manager, |s| service_rows(&s.services)).await
    }

    /// `GET /v1/services/{ref}`: the row with the spec and the previous spec. Answered as a
    /// JSON value (keys sorted) as it always was.
    pub(super) async fn service_inspect(
        &self,
        reference: &str,
    ) -> Result<serde_json::Value, ApiError> {
        let manager = self.manager().await?;
        let inspect = read(&manager, |s| {
            s.services
                .resolve_service(reference)
                .map(|rec| ServiceInspect::of(&s.services, rec))
        })
        .await?
        .map_err(ApiError::not_found)?;
        let mut value = serde_json::to_value(&inspect)
            .map_err(|e| ApiError::internal(format!("cannot encode answer: {e}")))?;
        // The ports some node cannot listen on (soft state the nodes report to the leader).
        let problems: Vec<serde_json::Value> = self
            .publish_problems_of(&inspect.row.id)
            .into_iter()
            .map(|(node, p)| {
                serde_json::json!({"node_id": node, "published": p.published, "error": p.error})
            })
            .collect();
        if let Some(obj) = value.as_object_mut() {
            obj.insert(
                "publish_problems".into(),
                serde_json::Value::Array(problems),
            );
        }
        Ok(value)
    }

    /// `GET /v1/services/{ref}/tasks`.
    pub(super) async fn service_tasks(&self, reference: &str) -> Result<Vec<TaskRow>, ApiError> {
        let manager = self.manager().await?;
        read(&manager, |s| {
            s.services.resolve_service(reference).map(|rec| {
                (
                    rec.id.clone(),
                    task_rows(&s.services, &s.nodes, TaskFilter::Service(&rec.id)),
                )
            })
        })
        .await?
        .map_err(ApiError::not_found)
        .map(|(id, mut rows)| {
            self.add_publish_problems(&id, &mut rows);
            rows
        })
    }

    /// A node that cannot listen on one of service `id`'s ports says so on the service's
    /// running tasks there (as Docker shows a host-port conflict).
    pub(super) fn add_publish_problems(&self, id: &str, rows: &mut [TaskRow]) {
        for (node, p) in self.publish_problems_of(id) {
            for row in rows.iter_mut() {
                if row.node_id.as_deref() == Some(node.as_str())
                    && row.desired_state == "running"
                    && row.error.is_none()
                {
                    row.error = Some(format!("port {}: {}", p.published, p.error));
                }
            }
        }
    }

    /// `POST /v1/services/{ref}/scale`.
    pub(super) async fn service_scale(
        &self,
        reference: &str,
        req: &ApiRequest,
    ) -> Result<ServiceRef, ApiError> {
        let manager = self.manager().await?;
        let body: ScaleRequest = req.json()?;
        let rec = resolve(&manager, reference).await?;
        if rec.spec.mode == ServiceMode::Global {
            return Err(ApiError::conflict(format!(
                "service {} is global: scale applies to replicated services only",
                rec.spec.name
            )));
        }
        self.write(Command::Services(ServiceCommand::Scale {
            id: rec.id.clone(),
            replicas: body.replicas,
            at: now_ms(),
        }))
        .await?;
        Ok(ServiceRef {
            id: rec.id,
            name: rec.spec.name,
        })
    }

    /// `POST /v1/services/{ref}/update`: applies the body's changes to the current spec and
    /// proposes a scale when only the replica count is asked (scaling alone is not a rolling
    /// update), else an update (even of an unchanged spec: the version moves on and a paused
    /// update starts again, as Docker does). A port another service publishes is refused
    /// (409) before anything is proposed.
    pub(super) async fn service_update(
        &self,
        reference: &str,
        req: &ApiRequest,
    ) -> Result<ServiceUpdateResponse, ApiError> {
        let manager = self.manager().await?;
        let body: ServiceUpdateBody = req.json()?;
        let (rec, plan) = read(&manager, |s| {
            let rec = s
                .services
                .resolve_service(reference)
                .map_err(ApiError::not_found)?;
            let mut plan = body.plan(&rec.spec).map_err(ApiError::bad_request)?;
            if let UpdatePlan::Update(spec) = &mut plan {
                s.services
                    .resolve_config_refs(spec)
                    .map_err(ApiError::not_found)?;
                s.services
                    .resolve_secret_refs(spec)
                    .map_err(ApiError::not_found)?;
                // The service's own ports do not conflict with themselves; the state machine
                // checks again when the update is applied.
                s.services
                    .check_ports(spec, &rec.id)
                    .map_err(ApiError::conflict)?;
            }
            Ok::<_, ApiError>((rec.clone(), plan))
        })
        .await??;
        let rolling = matches!(plan, UpdatePlan::Update(_));
        let cmd = match plan {
            UpdatePlan::Scale(replicas) => ServiceCommand::Scale {
                id: rec.id.clone(),
                replicas,
                at: now_ms(),
            },
            UpdatePlan::Update(spec) => ServiceCommand::update(rec.id.clone(), *spec, now_ms()),
        };
        self.write(Command::Services(cmd)).await?;
        self.changed(&manager, rec, rolling).await
    }

    /// `POST /v1/services/{ref}/rollback`: back to the previous spec.
    pub(super) async fn service_rollback(
        &self,
        reference: &str,
    ) -> Result<ServiceUpdateResponse, ApiError> {
        let manager = self.manager().await?;
        let rec = resolve(&manager, reference).await?;
        if rec.previous_spec.is_none() {
            return Err(ApiError::conflict(format!(
                "service `{}` has no previous spec to roll back to",
                rec.spec.name
            )));
        }
        self.write(Command::Services(ServiceCommand::Rollback {
            id: rec.id.clone(),
            at: now_ms(),
        }))
        .await?;
        self.changed(&manager, rec, true).await
    }

    /// The answer after a write to service `rec`: its version as now read.
    async fn changed(
        &self,
        manager: &Manager,
        rec: ServiceRecord,
        rolling: bool,
    ) -> Result<ServiceUpdateResponse, ApiError> {
        let version = read(manager, |s| {
            s.services.services.get(&rec.id).map(|r| r.version)
        })
        .await?
        .unwrap_or(rec.version + u64::from(rolling));
        Ok(ServiceUpdateResponse {
            id: rec.id,
            name: rec.spec.name,
            version,
            rolling,
        })
    }

    /// `DELETE /v1/services/{ref}`.
    pub(super) async fn service_remove(&self, reference: &str) -> Result<ServiceRef, ApiError> {
        let manager = self.manager().await?;
        let rec = resolve(&manager, reference).await?;
        self.write(Command::Services(ServiceCommand::Remove {
            id: rec.id.clone(),
            at: now_ms(),
        }))
        .await?;
        Ok(ServiceRef {
            id: rec.id,
            name: rec.spec.name,
        })
    }

    /// `GET /v1/nodes/{ref}/tasks` (`self` is the node serving the call).
    pub(super) async fn node_tasks(&self, reference: &str) -> Result<Vec<TaskRow>, ApiError> {
        let manager = self.manager().await?;
        let own = self.node_id().to_string();
        read(&manager, |s| {
            let id = if reference == "self" {
                Ok(own.clone())
            } else {
                s.resolve_node(reference).map(|n| n.id.clone())
            };
            id.map(|id| task_rows(&s.services, &s.nodes, TaskFilter::Node(&id)))
        })
        .await?
        .map_err(ApiError::not_found)
    }
}
