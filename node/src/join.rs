//! Joining a cluster with a signed token (DESIGN §3): the joiner's side and the
//! manager's side of the handshake, and minting tokens.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::manager::state::{ClusterRecord, ClusterState, NodeRecord, Role};
use crate::net::{self, Endpoint};
use crate::pki::token::{JoinToken, TokenPayload, TokenRole};
use crate::pki::{self, ClusterCa, NodeId};

/// Stream tag of the join request: the only request served to a peer without a
/// client certificate.
pub const TAG_JOIN: u8 = 1;
/// Largest join request or answer.
pub const MAX_JOIN_FRAME: usize = 1 << 20;
/// How far a manager's clock may be behind the one that minted an expiring token.
pub const EXPIRY_SLACK_SECS: u64 = 60;

/// What a joiner sends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinRequest {
    /// The join token.
    pub token: String,
    /// The joiner's ed25519 public key (its identity).
    pub public_key: [u8; 32],
    /// Reported hostname.
    pub hostname: String,
    /// Advertise address `ip:port`.
    pub advertise_addr: String,
    /// `os/arch`.
    pub platform: String,
    /// Memory in bytes.
    pub memory_bytes: u64,
    /// CPUs.
    pub cpus: u32,
    /// Task drivers offered.
    pub drivers: Vec<String>,
    /// Shoal version.
    pub version: String,
    /// Requested availability.
    pub availability: crate::manager::state::Availability,
}

/// A member the joiner can gossip with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberHint {
    /// Public key.
    pub public_key: [u8; 32],
    /// Advertise address.
    pub addr: String,
    /// Role.
    pub role: Role,
}

/// A successful join.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JoinAccepted {
    /// Cluster ID.
    pub cluster_id: String,
    /// The role granted.
    pub role: Role,
    /// The joiner's certificate (DER).
    pub node_cert: Vec<u8>,
    /// The CA certificate (DER).
    pub ca_cert: Vec<u8>,
    /// Members to gossip with.
    pub members: Vec<MemberHint>,
}

/// The manager's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum JoinResponse {
    /// Admitted.
    Accepted(JoinAccepted),
    /// Refused, with the reason for the user.
    Refused(String),
}

/// Mints the current token of `role` (or a fresh expiring one when `ttl` is set).
pub fn mint(
    cluster: &ClusterRecord,
    state: &ClusterState,
    role: Role,
    ttl: Option<Duration>,
    now_secs: u64,
) -> Result<String, String> {
    let ca = ClusterCa::from_der(&cluster.ca_cert_der, &cluster.ca_key_der)
        .map_err(|e| format!("cannot load the cluster CA: {e}"))?;
    let mut manager_addrs: Vec<String> = state
        .nodes
        .values()
        .filter(|n| n.role == Role::Manager)
        .map(|n| n.addr.clone())
        .collect();
    manager_addrs.sort();
    let (token_role, generation) = match role {
        Role::Worker => (TokenRole::Worker, cluster.worker_token_generation),
        Role::Manager => (TokenRole::Manager, cluster.manager_token_generation),
    };
    let (expires_at, nonce) = match ttl {
        Some(ttl) => {
            let mut n = [0u8; 8];
            getrandom::fill(&mut n).map_err(|e| format!("no randomness: {e}"))?;
            (Some(now_secs + ttl.as_secs()), Some(u64::from_le_bytes(n)))
        }
        None => (None, None),
    };
    let payload = TokenPayload {
        version: 1,
        cluster_id: cluster.id.clone(),
        role: token_role,
        generation,
        ca_digest: ca.digest(),
        expires_at,
        manager_addrs,
        nonce,
    };
    JoinToken::mint(&ca, &payload).map_err(|e| e.to_string())
}

/// Checks a token presented to a manager: signature, cluster, generation, expiry.
/// Returns the role it admits.
pub fn check_token(token: &str, cluster: &ClusterRecord, now_secs: u64) -> Result<Role, String> {
    let token = JoinToken::parse(token).map_err(|e| e.to_string())?;
    let ca_key = pki::public_key_from_cert(&cluster.ca_cert_der).map_err(|e| e.to_string())?;
    token.verify_signature(&ca_key).map_err(|e| e.to_string())?;
    let p = &token.payload;
    if p.cluster_id != cluster.id {
        return Err("this join token is for another cluster".into());
    }
    let (role, current) = match p.role {
        TokenRole::Worker => (Role::Worker, cluster.worker_token_generation),
        TokenRole::Manager => (Role::Manager, cluster.manager_token_generation),
    };
    if p.generation != current {
        return Err(format!(
            "this {} join token has been rotated: get the current one with `shoal join-token {}` on a manager",
            role.as_str(),
            role.as_str()
        ));
    }
    if let Some(exp) = p.expires_at
        && now_secs > exp + EXPIRY_SLACK_SECS
    {
        return Err(format!(
            "this join token expired at {}: get a new one with `shoal join-token {}`",
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(exp)),
            role.as_str()
        ));
    }
    Ok(role)
}

/// The node record a manager commits for an admitted joiner.
pub fn record_for(req: &JoinRequest, role: Role, now_ms: u64) -> Result<NodeRecord, String> {
    ed25519_dalek::VerifyingKey::from_bytes(&req.public_key)
        .map_err(|_| "the joiner's public key is invalid".to_string())?;
    let addr: SocketAddr = req
        .advertise_addr
        .parse()
        .map_err(|_| format!("invalid advertise address `{}`", req.advertise_addr))?;
    if addr.ip().is_unspecified() {
        return Err("the joiner's advertise address is unspecified".into());
    }
    let hostname: String = req
        .hostname
        .chars()
        .filter(|c| !c.is_control())
        .take(253)
        .collect();
    Ok(NodeRecord {
        id: NodeId::from_public_key(&req.public_key).to_string(),
        public_key: req.public_key,
        raft_id: crate::manager::raft_id_for(&req.public_key),
        hostname,
        addr: addr.to_string(),
        role,
        availability: req.availability,
        status: crate::manager::state::NodeStatus::Ready,
        labels: Default::default(),
        platform: req.platform.chars().take(64).collect(),
        memory_bytes: req.memory_bytes,
        cpus: req.cpus,
        drivers: req
            .drivers
            .iter()
            .take(16)
            .map(|d| d.chars().take(32).collect())
            .collect(),
        version: req.version.chars().take(32).collect(),
        created_at: now_ms,
        updated_at: now_ms,
    })
}

/// Members a joiner should gossip with.
pub fn member_hints(state: &ClusterState) -> Vec<MemberHint> {
    state
        .nodes
        .values()
        .map(|n| MemberHint {
            public_key: n.public_key,
            addr: n.addr.clone(),
            role: n.role,
        })
        .collect()
}

/// The joiner's side: tries each manager address in turn until one answers.
/// Returns the answer and the address that gave it.
pub async fn request_join(
    endpoint: &Endpoint,
    req: &JoinRequest,
    addrs: &[SocketAddr],
) -> Result<(JoinAccepted, SocketAddr), String> {
    let token = JoinToken::parse(&req.token).map_err(|e| e.to_string())?;
    let config = pki::join_client_config(token.payload.ca_digest).map_err(|e| e.to_string())?;
    let mut failures = Vec::new();
    for addr in addrs {
        let conn = match endpoint
            .connect(
                *addr,
                pki::CLUSTER_SAN,
                Some(config.clone()),
                Duration::from_secs(3),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                failures.push(format!("{addr}: {e}"));
                continue;
            }
        };
        let answer: Result<JoinResponse, _> = net::request(
            &conn,
            TAG_JOIN,
            req,
            MAX_JOIN_FRAME,
            Duration::from_secs(15),
        )
        .await;
        conn.close(0u32.into(), b"joined");
        match answer {
            Ok(JoinResponse::Accepted(a)) => return Ok((a, *addr)),
            Ok(JoinResponse::Refused(reason)) => return Err(format!("{addr} refused: {reason}")),
            Err(e) => failures.push(format!("{addr}: {e}")),
        }
    }
    Err(format!(
        "no manager answered the join request ({})",
        failures.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> (ClusterRecord, ClusterState) {
        let ca = ClusterCa::generate("c1").unwrap();
        let record = ClusterRecord {
            id: "c1".into(),
            created_at: 0,
            ca_cert_der: ca.cert_der().to_vec(),
            ca_key_der: ca.key_pkcs8_der().to_vec(),
            worker_token_generation: 0,
            manager_token_generation: 0,
            task_history_limit: 5,
        };
        (record, ClusterState::default())
    }

    #[test]
    fn minted_tokens_check_and_rotation_revokes() {
        let (mut c, s) = cluster();
        let w = mint(&c, &s, Role::Worker, None, 100).unwrap();
        assert_eq!(w, mint(&c, &s, Role::Worker, None, 200).unwrap());
        assert_eq!(check_token(&w, &c, 100).unwrap(), Role::Worker);
        let m = mint(&c, &s, Role::Manager, None, 100).unwrap();
        assert_eq!(check_token(&m, &c, 100).unwrap(), Role::Manager);
        c.worker_token_generation += 1;
        assert!(check_token(&w, &c, 100).unwrap_err().contains("rotated"));
        assert_eq!(check_token(&m, &c, 100).unwrap(), Role::Manager);
    }

    #[test]
    fn expiring_tokens_are_fresh_and_expire() {
        let (c, s) = cluster();
        let a = mint(&c, &s, Role::Worker, Some(Duration::from_secs(60)), 1000).unwrap();
        let b = mint(&c, &s, Role::Worker, Some(Duration::from_secs(60)), 1000).unwrap();
        assert_ne!(a, b);
        assert!(check_token(&a, &c, 1050).is_ok());
        assert!(
            check_token(&a, &c, 1000 + 60 + EXPIRY_SLACK_SECS + 1)
                .unwrap_err()
                .contains("expired")
        );
    }

    #[test]
    fn token_of_another_cluster_is_refused() {
        let (c, s) = cluster();
        let (other, _) = cluster();
        let t = mint(&other, &s, Role::Worker, None, 0).unwrap();
        assert!(check_token(&t, &c, 0).is_err());
    }
}
