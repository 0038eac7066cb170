//! Role changes on this node, beside the leader's voter reconciler in `quorum.rs`: becoming
//! a manager when the leader asks (promotion, or joining with a manager token) and stepping
//! down to a worker once demoted. `node promote`/`demote` only change the node table; the
//! leader's loop (`quorum.rs`) then asks the node to start Raft, or the demoted node notices
//! its new role and stops its own.

use std::sync::Arc;

use tracing::{info, warn};

use crate::config::SavedConfig;
use crate::daemon::Node;
use crate::manager::ManagerError;
use crate::manager::state::Role;

/// Why this node could not become a manager (sent to the leader as text).
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    /// The node has left, or never joined.
    #[error("this node is not part of a cluster")]
    NotInCluster,
    /// The request names another cluster.
    #[error("this node belongs to another cluster")]
    OtherCluster,
    /// A `raft.redb` left from an earlier stint as a manager could not be removed.
    #[error("cannot remove {path}: {error}")]
    RemoveDb {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// Raft could not start here.
    #[error(transparent)]
    Manager(#[from] ManagerError),
    /// The new role could not be saved in `node.json`.
    #[error("{0}")]
    Save(anyhow::Error),
}

impl Node {
    /// Starts Raft on this node as a new (empty) manager; the leader then adds it as a
    /// learner and a voter. Idempotent.
    pub(crate) async fn become_manager(
        self: &Arc<Self>,
        cluster_id: &str,
    ) -> Result<(), RoleError> {
        let _guard = self.lifecycle.lock().await;
        let mut membership = self.membership.write().await;
        let Some(m) = membership.as_mut() else {
            return Err(RoleError::NotInCluster);
        };
        if m.saved.cluster_id != cluster_id {
            return Err(RoleError::OtherCluster);
        }
        if m.manager.is_some() {
            return Ok(());
        }
        let db = self.state_dir.raft_db();
        if db.exists() {
            // Left over from an earlier stint as a manager: the leader sends a snapshot.
            std::fs::remove_file(&db).map_err(|error| RoleError::RemoveDb {
                path: db.display().to_string(),
                error,
            })?;
        }
        let manager = Arc::new(self.open_manager(cluster_id).await?);
        m.saved.role = Role::Manager;
        let mut cfg = SavedConfig::load(&self.state_dir.node_config()).map_err(RoleError::Save)?;
        cfg.cluster = Some(m.saved.clone());
        cfg.save(&self.state_dir.node_config())
            .map_err(RoleError::Save)?;
        m.manager = Some(manager.clone());
        drop(membership);
        if let Some(g) = self.gossip() {
            g.publish(shoal_membership::FactBody::Role(
                shoal_membership::NodeRole::Manager,
            ));
        }
        self.start_manager_loops(&manager);
        self.watch_leader(manager);
        info!("this node is now a manager");
        Ok(())
    }

    /// Stops Raft on this node after it was demoted; it stays in the cluster as a worker.
    pub(crate) async fn step_down_to_worker(&self) {
        let _guard = self.lifecycle.lock().await;
        let mut membership = self.membership.write().await;
        let Some(m) = membership.as_mut() else { return };
        let Some(manager) = m.manager.take() else {
            return;
        };
        manager.shutdown().await;
        m.saved.role = Role::Worker;
        if let Ok(mut cfg) = SavedConfig::load(&self.state_dir.node_config()) {
            cfg.cluster = Some(m.saved.clone());
            if let Err(e) = cfg.save(&self.state_dir.node_config()) {
                warn!("cannot save the new role: {e:#}");
            }
        }
        let _ = std::fs::remove_file(self.state_dir.raft_db());
        drop(membership);
        if let Some(g) = self.gossip() {
            g.publish(shoal_membership::FactBody::Role(
                shoal_membership::NodeRole::Worker,
            ));
        }
        info!("this node was demoted: it is now a worker");
    }
}
