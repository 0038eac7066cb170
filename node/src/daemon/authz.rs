//! What this node knows to authorize its peers (`crate::trust` holds the rules): who the
//! managers are, which keys were removed, who leads; the loop that keeps that view current
//! on a manager; and renewing this node's own certificate.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use super::node::Node;
use crate::config::{SavedCluster, SavedConfig};
use crate::join::MemberHint;
use crate::manager::state::{ClusterState, Role};
use crate::manager::{Manager, raft_id_for};
use crate::pki::{self, ClusterCa, NodeId, PkiError};
use crate::trust::{PeerFacts, Refusal, Rule, TrustView};
use crate::util::{now_secs, rfc3339};

/// How often a manager refreshes its trust view and checks its own certificate.
const TRUST_TICK: Duration = Duration::from_millis(500);

/// Why a node certificate could not be issued or installed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CertError {
    /// The replicated state holds no cluster (and so no CA) yet.
    #[error("the cluster is not initialized")]
    NoCluster,
    /// The CA in the replicated state does not load.
    #[error("cannot load the cluster CA: {0}")]
    LoadCa(PkiError),
    /// The CA refused to sign.
    #[error("cannot issue a certificate: {0}")]
    Issue(PkiError),
    /// A renewed certificate arrived after this node left.
    #[error("this node is not part of a cluster")]
    NotInCluster,
    /// A renewed certificate is not this node's, or not under the cluster CA, or expired.
    #[error("the renewed certificate is not valid: {0}")]
    Invalid(PkiError),
    /// The TLS configuration could not be rebuilt, or `node.json` not saved.
    #[error("{0:#}")]
    Local(anyhow::Error),
}

/// A node renews its certificate once less than this fraction of the lifetime is left.
pub const RENEW_FRACTION: u32 = 3;

/// The trust view a manager derives from the replicated state.
pub fn trust_from_state(s: &ClusterState) -> TrustView {
    TrustView {
        managers: s
            .nodes
            .values()
            .filter(|n| n.role == Role::Manager)
            .map(|n| n.public_key)
            .collect(),
        removed: s.removed_keys.clone(),
    }
}

impl Node {
    /// The current trust view.
    pub(crate) fn trust_view(&self) -> Arc<TrustView> {
        self.trust.borrow().clone()
    }

    /// Changes of the trust view from now on.
    pub(crate) fn subscribe_trust(&self) -> watch::Receiver<Arc<TrustView>> {
        self.trust.subscribe()
    }

    /// Replaces the trust view when it changed, and saves it in `node.json` so a restarted
    /// worker keeps refusing removed keys.
    pub(crate) async fn update_trust(&self, view: TrustView) {
        let changed = self.trust.send_if_modified(|cur| {
            if **cur == view {
                false
            } else {
                *cur = Arc::new(view.clone());
                true
            }
        });
        if !changed {
            return;
        }
        let mut membership = self.membership.write().await;
        let Some(m) = membership.as_mut() else { return };
        m.saved.managers = view.managers.iter().copied().collect();
        m.saved.removed = view.removed.iter().copied().collect();
        let saved = m.saved.clone();
        drop(membership);
        match SavedConfig::load(&self.state_dir.node_config()) {
            Ok(mut cfg) if cfg.cluster.is_some() => {
                cfg.cluster = Some(saved);
                if let Err(e) = cfg.save(&self.state_dir.node_config()) {
                    warn!("cannot save the cluster's managers and removed keys: {e:#}");
                }
            }
            Ok(_) => {}
            Err(e) => warn!("cannot save the cluster's managers and removed keys: {e:#}"),
        }
    }

    /// Whether the key `key` was removed from the cluster, as far as this node knows.
    pub(crate) fn is_removed_key(&self, key: &[u8; 32]) -> bool {
        self.trust.borrow().removed.contains(key)
    }

    /// The key of the Raft leader as this node knows it: its own Raft on a manager; on a
    /// worker, the highest-term leader hint among the managers it knows.
    pub(crate) async fn leader_key(&self) -> Option<[u8; 32]> {
        if let Some(m) = self.manager_opt().await {
            let leader = m.leader()?;
            return m.read_local(|s| s.node_by_raft_id(leader).map(|n| n.public_key));
        }
        let view = self.gossip()?.view();
        let managers = self.trust_view().managers.clone();
        view.leader_among(&managers).map(|(_, k)| k)
    }

    /// What this node knows about the peer with `key` (`None`: no certificate).
    pub(crate) async fn peer_facts(&self, key: Option<[u8; 32]>) -> PeerFacts {
        let manager = self.manager_opt().await;
        let Some(key) = key else {
            return PeerFacts {
                serving_as_manager: manager.is_some(),
                ..PeerFacts::default()
            };
        };
        let view = self.trust_view();
        let mut facts = PeerFacts {
            certified: true,
            removed: view.removed.contains(&key),
            manager: view.managers.contains(&key),
            serving_as_manager: manager.is_some(),
            ..PeerFacts::default()
        };
        let has_state = match &manager {
            Some(m) => m.read_local(|s| s.cluster.is_some()),
            None => false,
        };
        match manager {
            Some(m) if has_state => {
                if let Some((is_manager, removed)) = m.read_local(|s| {
                    s.cluster.is_some().then(|| {
                        (
                            s.nodes
                                .values()
                                .any(|n| n.public_key == key && n.role == Role::Manager),
                            s.removed_keys.contains(&key),
                        )
                    })
                }) {
                    // The replicated state is the authority once this manager has it.
                    facts.manager = is_manager;
                    facts.removed |= removed;
                }
                let raft_id = raft_id_for(&key);
                let metrics = m.metrics();
                let metrics = metrics.borrow();
                let membership = metrics.membership_config.membership();
                facts.leader = metrics.current_leader == Some(raft_id);
                facts.raft_peer = facts.leader
                    || membership.voter_ids().any(|v| v == raft_id)
                    || membership.learner_ids().any(|l| l == raft_id);
            }
            _ => {
                // A worker, or a new manager whose Raft is still empty: what the leader
                // pushed (managers, removed keys) and the managers' leader hints.
                let view = self.gossip().map(|g| g.view());
                facts.leader = view
                    .and_then(|v| v.leader_among(&self.trust_view().managers))
                    .is_some_and(|(_, k)| k == key);
            }
        }
        facts
    }

    /// Checks a request under `tag` from the peer with `key`; logs a refusal once per peer
    /// and tag.
    pub(crate) async fn authorize(&self, key: Option<[u8; 32]>, tag: u8) -> Result<Rule, Refusal> {
        let in_cluster = self.membership.read().await.is_some();
        let facts = self.peer_facts(key).await;
        let verdict = if in_cluster {
            crate::trust::authorize(tag, &facts)
        } else {
            Err(Refusal::NotInCluster)
        };
        verdict.inspect_err(|refusal| {
            let who = key.map_or_else(
                || "a peer without a certificate".to_string(),
                |k| NodeId::from_public_key(&k).to_string(),
            );
            self.refusals.refused(&who, tag, refusal);
        })
    }

    /// Runs for the daemon's lifetime: on a manager, keeps the trust view equal to the
    /// replicated state (which closes removed nodes' connections everywhere on this node)
    /// and renews this node's certificate from the CA before it expires.
    pub(super) async fn trust_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(TRUST_TICK).await;
            let Some(manager) = self.manager_opt().await else {
                continue;
            };
            if let Some(view) =
                manager.read_local(|s| s.cluster.is_some().then(|| trust_from_state(s)))
            {
                self.update_trust(view).await;
            }
            if let Err(e) = self.renew_own_cert_from_ca(&manager).await {
                warn!("cannot renew this node's certificate: {e}");
            }
            self.drop_force_new_cluster_copies(&manager);
        }
    }

    /// Once the Raft of this manager has a snapshot and has applied entries beyond it, the
    /// copies `init --force-new-cluster` kept of an older database are no longer needed.
    fn drop_force_new_cluster_copies(&self, manager: &Manager) {
        if !self.force_new_cluster_copies.load(Ordering::Relaxed) {
            return;
        }
        let (snapshot, applied) = {
            let m = manager.metrics();
            let m = m.borrow();
            (m.snapshot.map(|s| s.index), m.last_applied.map(|a| a.index))
        };
        let (Some(snapshot), Some(applied)) = (snapshot, applied) else {
            return;
        };
        if applied <= snapshot {
            return;
        }
        match self.state_dir.remove_force_new_cluster_copies() {
            Ok(removed) => {
                self.force_new_cluster_copies
                    .store(false, Ordering::Relaxed);
                for path in removed {
                    info!(
                        "deleted {}: the new cluster has a snapshot and entries beyond it",
                        path.display()
                    );
                }
            }
            Err(e) => warn!("{e:#}"),
        }
    }

    /// When this node's certificate is within the renewal window: a manager issues itself
    /// a new one from the CA it holds.
    async fn renew_own_cert_from_ca(&self, manager: &Manager) -> Result<(), CertError> {
        let current = match self.membership.read().await.as_ref() {
            Some(m) => m.saved.node_cert.clone(),
            None => return Ok(()),
        };
        if !self.cert_needs_renewal(&current) {
            return Ok(());
        }
        let Some(cluster) = manager.read_local(|s| s.cluster.clone()) else {
            return Ok(());
        };
        let ca = ClusterCa::from_der(&cluster.ca_cert_der, &cluster.ca_key_der)
            .map_err(CertError::LoadCa)?;
        let cert = self.issue_cert(&ca, &self.key.public_key())?;
        self.install_cert(cert).await
    }

    /// Whether `cert` has less than a third of its lifetime left (or cannot be read).
    pub(crate) fn cert_needs_renewal(&self, cert: &[u8]) -> bool {
        pki::parse_cert(cert).map_or(true, |info| self.renewal_due(info.not_after))
    }

    /// Whether a certificate expiring at `not_after` (Unix seconds) has less than a third of
    /// the configured lifetime left.
    pub(crate) fn renewal_due(&self, not_after: i64) -> bool {
        let lifetime = i64::try_from(self.cert_expiry.as_secs()).unwrap_or(i64::MAX);
        not_after.saturating_sub(now_secs()) < lifetime / i64::from(RENEW_FRACTION)
    }

    /// On the leader: a fresh certificate for the member with `key` (its worker session
    /// proves it holds the key), from the CA in the replicated state.
    pub(crate) fn issue_cert_for(
        &self,
        manager: &Manager,
        key: &[u8; 32],
    ) -> Result<Vec<u8>, CertError> {
        let cluster = manager
            .read_local(|s| s.cluster.clone())
            .ok_or(CertError::NoCluster)?;
        let ca = ClusterCa::from_der(&cluster.ca_cert_der, &cluster.ca_key_der)
            .map_err(CertError::LoadCa)?;
        self.issue_cert(&ca, key)
    }

    /// Issues a node certificate for `key`, valid for the configured lifetime.
    pub(crate) fn issue_cert(&self, ca: &ClusterCa, key: &[u8; 32]) -> Result<Vec<u8>, CertError> {
        let not_after = now_secs()
            .saturating_add(i64::try_from(self.cert_expiry.as_secs()).unwrap_or(i64::MAX / 2));
        ca.issue_node_cert_until(key, &NodeId::from_public_key(key), not_after)
            .map_err(CertError::Issue)
    }

    /// Installs a renewed certificate for this node: checked under the cluster CA, saved in
    /// `node.json`, and used for every new connection (open ones keep theirs).
    pub(crate) async fn install_cert(&self, cert: Vec<u8>) -> Result<(), CertError> {
        let mut membership = self.membership.write().await;
        let Some(m) = membership.as_mut() else {
            return Err(CertError::NotInCluster);
        };
        pki::verify_node_cert(&cert, &m.saved.ca_cert, &self.key.public_key(), now_secs())
            .map_err(CertError::Invalid)?;
        let mut saved = m.saved.clone();
        saved.node_cert = cert;
        self.serve_quic(&saved).map_err(CertError::Local)?;
        m.saved = saved.clone();
        drop(membership);
        let mut cfg = SavedConfig::load(&self.state_dir.node_config()).map_err(CertError::Local)?;
        cfg.cluster = Some(saved.clone());
        cfg.save(&self.state_dir.node_config())
            .map_err(CertError::Local)?;
        let until = pki::parse_cert(&saved.node_cert)
            .map(|i| i.not_after)
            .unwrap_or(0);
        info!(
            valid_until = %rfc3339(u64::try_from(until).unwrap_or(0).saturating_mul(1000)),
            "node certificate renewed"
        );
        Ok(())
    }

    /// Warns when this node's certificate has expired: it can no longer talk to the cluster
    /// and must join again.
    pub(super) fn check_own_cert_expiry(&self, saved: &SavedCluster) {
        if let Ok(info) = pki::parse_cert(&saved.node_cert)
            && info.not_after < now_secs()
        {
            let at = rfc3339(
                u64::try_from(info.not_after)
                    .unwrap_or(0)
                    .saturating_mul(1000),
            );
            let message = format!(
                "this node's certificate expired at {at} while it was away: run `shoal leave --force`, then `shoal join` with a token from a manager"
            );
            tracing::error!("{message}");
            *self
                .removed_notice
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(message);
        }
    }

    /// Logs a disagreement between gossip and the leader's own check once a minute per node.
    pub(crate) fn liveness_warning(&self, node_id: &str, what: &str) {
        if self.refusals.first_in_a_while(node_id, 0) {
            warn!(node = node_id, "{what}");
        }
    }

    /// The managers a node that just joined knows: those the admitting manager listed.
    pub(super) fn managers_of(members: &[MemberHint]) -> BTreeSet<[u8; 32]> {
        members
            .iter()
            .filter(|m| m.role == Role::Manager)
            .map(|m| m.public_key)
            .collect()
    }
}
