//! The cluster's secrets key on the managers (ARCHITECTURE.md, "Secrets"): the leader draws it
//! with the first secret, keeps it sealed to every manager's node key (and to no other node),
//! opens its own copy to encrypt a new secret or to decrypt the secrets a worker's tasks need.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tracing::{debug, info};

use crate::daemon::Node;
use crate::manager::Manager;
use crate::manager::services::{SecretRef, ServiceCommand, ServicesState};
use crate::manager::state::{ClusterState, Command, Role};
use crate::pki::seal::{SealedKey, SecretsKey};

/// How often the leader checks that the managers, and only they, hold the key.
const KEEP_EVERY: Duration = Duration::from_millis(500);

/// The managers without a sealed key and the nodes with one that are no longer managers.
fn key_holders_to_fix(s: &ClusterState) -> (Vec<(String, [u8; 32])>, Vec<String>) {
    let missing = s
        .nodes
        .values()
        .filter(|n| n.role == Role::Manager && !s.services.secrets_key.contains_key(&n.id))
        .map(|n| (n.id.clone(), n.public_key))
        .collect();
    let extra = s
        .services
        .secrets_key
        .keys()
        .filter(|id| s.nodes.get(*id).is_none_or(|n| n.role != Role::Manager))
        .cloned()
        .collect();
    (missing, extra)
}

impl Node {
    /// The cluster's secrets key, opened with this manager's node key. With `create`, a
    /// cluster without one gets one now, sealed to every manager.
    pub(crate) async fn secrets_key(
        &self,
        manager: &Manager,
        create: bool,
    ) -> Result<SecretsKey, String> {
        let own = self.node_id().to_owned();
        let (mine, any, managers) = manager.read_local(|s| {
            (
                s.services.secrets_key.get(&own).cloned(),
                !s.services.secrets_key.is_empty(),
                s.nodes
                    .values()
                    .filter(|n| n.role == Role::Manager)
                    .map(|n| (n.id.clone(), n.public_key))
                    .collect::<Vec<_>>(),
            )
        });
        if let Some(sealed) = mine {
            return SecretsKey::open(&sealed, self.key.signing_key())
                .map_err(|e| format!("cannot open the cluster's secrets key: {e}"));
        }
        if any || !create {
            return Err(
                "the cluster's secrets key has not been shared with this manager yet: try again in a moment"
                    .into(),
            );
        }
        let key = SecretsKey::generate().map_err(|e| e.to_string())?;
        let set = seal_to_all(&key, &managers)?;
        match self
            .propose(Command::Services(ServiceCommand::ShareSecretsKey {
                set,
                drop: Vec::new(),
            }))
            .await
        {
            Ok(_) => {
                info!(
                    "drew the cluster's secrets key and sealed it to {} managers",
                    managers.len()
                );
                Ok(key)
            }
            // Another leader's key won the race: use that one.
            Err(_) => Box::pin(self.secrets_key(manager, false)).await,
        }
    }
}

fn seal_to_all(
    key: &SecretsKey,
    managers: &[(String, [u8; 32])],
) -> Result<BTreeMap<String, SealedKey>, String> {
    managers
        .iter()
        .map(|(id, public)| {
            key.seal_to(public)
                .map(|sealed| (id.clone(), sealed))
                .map_err(|e| format!("cannot seal the secrets key to manager {id}: {e}"))
        })
        .collect()
}

/// Runs for the daemon's lifetime; acts only while this node leads and a key exists: seals it
/// to new managers and drops it from demoted or removed ones.
pub(crate) async fn keep_secrets_key(node: Arc<Node>) {
    loop {
        tokio::time::sleep(KEEP_EVERY).await;
        let Some(manager) = node.manager_opt().await else {
            continue;
        };
        if !manager.is_leader() {
            continue;
        }
        let (missing, extra) = manager.read_local(|s| {
            if s.services.secrets_key.is_empty() {
                (Vec::new(), Vec::new())
            } else {
                key_holders_to_fix(s)
            }
        });
        if missing.is_empty() && extra.is_empty() {
            continue;
        }
        let set = if missing.is_empty() {
            BTreeMap::new()
        } else {
            match node.secrets_key(&manager, false).await {
                Ok(key) => match seal_to_all(&key, &missing) {
                    Ok(set) => set,
                    Err(e) => {
                        debug!("{e}");
                        continue;
                    }
                },
                Err(e) => {
                    debug!("cannot share the secrets key: {e}");
                    continue;
                }
            }
        };
        let added = set.len();
        let cmd = Command::Services(ServiceCommand::ShareSecretsKey { set, drop: extra });
        match node.propose(cmd).await {
            Ok(_) => info!(added, "the secrets key's holders follow the managers"),
            Err(e) => debug!("cannot share the secrets key: {e}"),
        }
    }
}

/// The secret files of `wanted`'s tasks (from [`crate::manager::services::secrets_wanted`]),
/// decrypted with `key`; a secret that is gone or does not decrypt is left out (the task then
/// misses a file, and the leader's log says why).
pub(crate) fn secret_files(
    state: &ServicesState,
    wanted: &BTreeMap<String, Vec<SecretRef>>,
    key: &SecretsKey,
) -> BTreeMap<String, Vec<shoal_runtime::TaskFile>> {
    wanted
        .iter()
        .map(|(task, refs)| {
            let files = refs
                .iter()
                .filter_map(|r| {
                    let secret = state.secrets.get(&r.secret_id)?;
                    match key.decrypt(&secret.id, &secret.nonce, &secret.sealed) {
                        Ok(data) => Some(shoal_runtime::TaskFile {
                            target: r.target.clone(),
                            data,
                            uid: r.uid,
                            gid: r.gid,
                            mode: r.mode,
                        }),
                        Err(e) => {
                            tracing::warn!(secret = %secret.name, "cannot decrypt a secret: {e}");
                            None
                        }
                    }
                })
                .collect();
            (task.clone(), files)
        })
        .collect()
}
