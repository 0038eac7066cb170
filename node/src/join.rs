//! Joining a cluster with a signed token (DESIGN §3): the joiner's side and the
//! manager's side of the handshake, and minting tokens.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use tracing::info;

use crate::daemon::Node;
use crate::manager::state::{ClusterRecord, ClusterState, Command, NodeRecord, Role};
use crate::net::{self, Endpoint};
use crate::pki::token::{JoinToken, TokenPayload, TokenRole};
use crate::pki::{self, ClusterCa, NodeId};
use crate::text::clean_text;
use crate::util::now_ms;

/// Stream tag of the join request: the only request served to a peer without a
/// client certificate.
pub const TAG_JOIN: u8 = 1;
/// Largest join answer (certificates and the member list of a large cluster).
pub(crate) const MAX_JOIN_FRAME: usize = 1 << 20;
/// Largest join request: a token, a key, a proof and a few short strings. This bounds what a
/// peer without a certificate can make a manager buffer per stream.
pub(crate) const MAX_JOIN_REQUEST: usize = 64 * 1024;
/// How far a manager's clock may be behind the one that minted an expiring token.
pub(crate) const EXPIRY_SLACK_SECS: u64 = 60;
/// Longest hostname kept from a joiner, in characters.
pub(crate) const MAX_HOSTNAME: usize = 253;
/// Longest platform (`os/arch`) kept from a joiner.
pub(crate) const MAX_PLATFORM: usize = 64;
/// Longest version kept from a joiner.
pub(crate) const MAX_VERSION: usize = 32;
/// Most drivers kept from a joiner.
pub(crate) const MAX_DRIVERS: usize = 16;
/// Longest driver name kept from a joiner.
pub(crate) const MAX_DRIVER_NAME: usize = 32;

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
    /// Proof that the joiner holds the private key of `public_key`: its ed25519 signature
    /// over [`proof_message`], which binds the TLS connection the request travels on (a
    /// proof cannot be replayed on another connection).
    pub proof: Vec<u8>,
}

/// Label of the TLS keying-material exporter that binds a join proof to its connection.
pub(crate) const PROOF_EXPORTER_LABEL: &[u8] = b"EXPORTER-shoal-join-proof-v1";

/// What a joiner signs: a domain label, the connection's exported keying material, its
/// public key and the token.
pub fn proof_message(exported: &[u8; 32], public_key: &[u8; 32], token: &str) -> Vec<u8> {
    let mut msg = Vec::with_capacity(64 + 32 + token.len());
    msg.extend_from_slice(b"shoal/join-proof/v1\0");
    msg.extend_from_slice(exported);
    msg.extend_from_slice(public_key);
    msg.extend_from_slice(token.as_bytes());
    msg
}

/// The keying material both ends of `conn` derive for a join proof.
pub fn proof_binding(conn: &quinn::Connection) -> Result<[u8; 32], String> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, PROOF_EXPORTER_LABEL, b"")
        .map_err(|_| "cannot derive the join proof binding from the TLS session".to_string())?;
    Ok(out)
}

/// The manager's check of a join proof on the connection `conn` it arrived on.
pub(crate) fn check_proof(req: &JoinRequest, conn: &quinn::Connection) -> Result<(), String> {
    let refused = || {
        "the joiner did not prove it holds the key it presents: upgrade shoal on the joining node"
            .to_string()
    };
    let key = ed25519_dalek::VerifyingKey::from_bytes(&req.public_key)
        .map_err(|_| "the joiner's public key is invalid".to_string())?;
    let sig = ed25519_dalek::Signature::from_slice(&req.proof).map_err(|_| refused())?;
    let binding = proof_binding(conn)?;
    key.verify_strict(&proof_message(&binding, &req.public_key, &req.token), &sig)
        .map_err(|_| refused())
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
pub(crate) fn mint(
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
            (
                Some(now_secs.saturating_add(ttl.as_secs())),
                Some(u64::from_le_bytes(n)),
            )
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
#[cfg(test)]
pub(crate) fn check_token(
    token: &str,
    cluster: &ClusterRecord,
    now_secs: u64,
) -> Result<Role, String> {
    check_token_why(token, cluster, now_secs).map_err(|(_, message)| message)
}

/// [`check_token`], with the reason of a refusal as the metrics name it
/// ([`crate::metrics::refusal`]).
fn check_token_why(
    token: &str,
    cluster: &ClusterRecord,
    now_secs: u64,
) -> Result<Role, (&'static str, String)> {
    use crate::metrics::refusal;
    let bad = |e: String| (refusal::BAD_TOKEN, e);
    let token = JoinToken::parse(token).map_err(|e| bad(e.to_string()))?;
    let ca_key = pki::public_key_from_cert(&cluster.ca_cert_der).map_err(|e| bad(e.to_string()))?;
    token
        .verify_signature(&ca_key)
        .map_err(|e| bad(e.to_string()))?;
    let p = &token.payload;
    if p.cluster_id != cluster.id {
        return Err((
            refusal::OTHER_CLUSTER,
            "this join token is for another cluster".into(),
        ));
    }
    let (role, current) = match p.role {
        TokenRole::Worker => (Role::Worker, cluster.worker_token_generation),
        TokenRole::Manager => (Role::Manager, cluster.manager_token_generation),
    };
    if p.generation != current {
        return Err((
            refusal::ROTATED,
            format!(
                "this {} join token has been rotated: get the current one with `shoal join-token {}` on a manager",
                role.as_str(),
                role.as_str()
            ),
        ));
    }
    if let Some(exp) = p.expires_at
        && now_secs > exp.saturating_add(EXPIRY_SLACK_SECS)
    {
        return Err((
            refusal::EXPIRED,
            format!(
                "this join token expired at {}: get a new one with `shoal join-token {}`",
                humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_secs(exp)),
                role.as_str()
            ),
        ));
    }
    Ok(role)
}

/// The node record a manager commits for an admitted joiner.
pub(crate) fn record_for(req: &JoinRequest, role: Role, now_ms: u64) -> Result<NodeRecord, String> {
    ed25519_dalek::VerifyingKey::from_bytes(&req.public_key)
        .map_err(|_| "the joiner's public key is invalid".to_string())?;
    let addr: SocketAddr = req
        .advertise_addr
        .parse()
        .map_err(|_| format!("invalid advertise address `{}`", req.advertise_addr))?;
    if addr.ip().is_unspecified() {
        return Err("the joiner's advertise address is unspecified".into());
    }
    // Strings from the joiner are stripped of control characters and bounded here,
    // before they are committed and shown by `node ls`/`inspect`.
    let hostname = clean_text(&req.hostname, MAX_HOSTNAME);
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
        platform: clean_text(&req.platform, MAX_PLATFORM),
        memory_bytes: req.memory_bytes,
        cpus: req.cpus,
        drivers: req
            .drivers
            .iter()
            .take(MAX_DRIVERS)
            .map(|d| clean_text(d, MAX_DRIVER_NAME))
            .collect(),
        version: clean_text(&req.version, MAX_VERSION),
        created_at: now_ms,
        updated_at: now_ms,
    })
}

/// The joiner's check of an accepted join against the token it used.
pub(crate) fn check_answer(
    a: &JoinAccepted,
    token: &JoinToken,
    own_key: &[u8; 32],
) -> Result<(), String> {
    let p = &token.payload;
    if pki::sha256(&a.ca_cert) != p.ca_digest {
        return Err("a CA certificate that does not match the token".into());
    }
    if a.cluster_id != p.cluster_id {
        return Err(format!("cluster {} instead of the token's", a.cluster_id));
    }
    let expected = match p.role {
        TokenRole::Worker => Role::Worker,
        TokenRole::Manager => Role::Manager,
    };
    if a.role != expected {
        return Err(format!(
            "the role {} instead of the token's {}",
            a.role.as_str(),
            expected.as_str()
        ));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    pki::verify_node_cert(&a.node_cert, &a.ca_cert, own_key, now)
        .map_err(|e| format!("a certificate this node cannot use: {e}"))
}

/// Members a joiner should gossip with.
pub(crate) fn member_hints(state: &ClusterState) -> Vec<MemberHint> {
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
///
/// `key` signs the proof of possession on each connection. The answer is checked: the
/// certificate must carry this node's key, be signed by the CA pinned in the token and
/// valid now, and the cluster and role must be the token's.
pub(crate) async fn request_join(
    endpoint: &Endpoint,
    key: &pki::NodeKey,
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
        let mut signed = req.clone();
        let binding = match proof_binding(&conn) {
            Ok(b) => b,
            Err(e) => {
                failures.push(format!("{addr}: {e}"));
                continue;
            }
        };
        signed.proof = key
            .sign(&proof_message(&binding, &req.public_key, &req.token))
            .to_bytes()
            .to_vec();
        let answer: Result<JoinResponse, _> = net::request(
            &conn,
            TAG_JOIN,
            &signed,
            MAX_JOIN_FRAME,
            Duration::from_secs(15),
        )
        .await;
        conn.close(0u32.into(), b"joined");
        match answer {
            Ok(JoinResponse::Accepted(a)) => {
                check_answer(&a, &token, &req.public_key)
                    .map_err(|e| format!("{addr} answered with {e}"))?;
                return Ok((a, *addr));
            }
            Ok(JoinResponse::Refused(reason)) => return Err(format!("{addr} refused: {reason}")),
            Err(e) => failures.push(format!("{addr}: {e}")),
        }
    }
    Err(format!(
        "no manager answered the join request ({})",
        failures.join("; ")
    ))
}

/// The manager's side of a join handshake: the joiner's proof of possession, its token,
/// the admission rules, then the record through Raft and a certificate.
pub(crate) async fn serve(node: &Node, req: JoinRequest, conn: &quinn::Connection) -> JoinResponse {
    let admitted = match check_proof(&req, conn) {
        Ok(()) => admit(node, req).await,
        Err(e) => Err((crate::metrics::refusal::PROOF, e)),
    };
    match admitted {
        Ok(a) => {
            crate::metrics::global().join_admitted();
            JoinResponse::Accepted(a)
        }
        Err((why, reason)) => {
            crate::metrics::global().join_refused(why);
            info!(%reason, "join refused");
            JoinResponse::Refused(reason)
        }
    }
}

async fn admit(node: &Node, req: JoinRequest) -> Result<JoinAccepted, (&'static str, String)> {
    use crate::metrics::refusal;
    let not_manager = |m: &str| (refusal::NOT_MANAGER, m.to_string());
    let manager = node.manager_opt().await.ok_or_else(|| {
        not_manager("this node is not a manager of a cluster: join through a manager's address")
    })?;
    let cluster = manager
        .read_local(|s| s.cluster.clone())
        .ok_or_else(|| not_manager("the cluster is not initialized"))?;
    let role = check_token_why(&req.token, &cluster, now_ms() / 1000)?;
    let record = record_for(&req, role, now_ms()).map_err(|e| (refusal::BAD_REQUEST, e))?;
    if record.id == node.node_id {
        return Err((
            refusal::BAD_REQUEST,
            "a node cannot join the cluster it manages".into(),
        ));
    }
    // The state machine has the last word (AdmitNode refuses removed keys and live
    // records); checking here first gives the joiner the reason without a Raft write.
    manager
        .read_local(|s| crate::manager::state::admission(s, &record))
        .map_err(|e| (refusal::ADMISSION, e))?;
    let id = record.id.clone();
    let internal = |e: String| (refusal::INTERNAL, e);
    node.propose(Command::AdmitNode(record))
        .await
        .map_err(|e| internal(e.to_string()))?;
    let ca = ClusterCa::from_der(&cluster.ca_cert_der, &cluster.ca_key_der)
        .map_err(|e| internal(format!("cannot load the cluster CA: {e}")))?;
    let node_cert = node
        .issue_cert(&ca, &req.public_key)
        .map_err(|e| internal(e.to_string()))?;
    info!(node = %id, hostname = %req.hostname, role = role.as_str(), "node joined");
    Ok(JoinAccepted {
        cluster_id: cluster.id.clone(),
        role,
        node_cert,
        ca_cert: cluster.ca_cert_der.clone(),
        members: manager.read_local(member_hints),
    })
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
    fn issue_14_joiner_checks_the_answer_against_its_token() {
        let (c, s) = cluster();
        let ca = ClusterCa::from_der(&c.ca_cert_der, &c.ca_key_der).unwrap();
        let me = crate::pki::NodeKey::generate().unwrap();
        let token = JoinToken::parse(&mint(&c, &s, Role::Worker, None, 0).unwrap()).unwrap();
        let good = JoinAccepted {
            cluster_id: c.id.clone(),
            role: Role::Worker,
            node_cert: ca.issue_node_cert(&me.public_key(), &me.node_id()).unwrap(),
            ca_cert: c.ca_cert_der,
            members: vec![],
        };
        check_answer(&good, &token, &me.public_key()).unwrap();
        // A manager role the token did not grant.
        let promoted = JoinAccepted {
            role: Role::Manager,
            ..good.clone()
        };
        assert!(check_answer(&promoted, &token, &me.public_key()).is_err());
        // Another cluster.
        let other_cluster = JoinAccepted {
            cluster_id: "c2".into(),
            ..good.clone()
        };
        assert!(check_answer(&other_cluster, &token, &me.public_key()).is_err());
        // A certificate not signed by the pinned CA, even with the pinned CA sent along.
        let rogue = ClusterCa::generate("c1").unwrap();
        let forged = JoinAccepted {
            node_cert: rogue
                .issue_node_cert(&me.public_key(), &me.node_id())
                .unwrap(),
            ..good.clone()
        };
        assert!(check_answer(&forged, &token, &me.public_key()).is_err());
        // A certificate for another key.
        let stranger = crate::pki::NodeKey::generate().unwrap();
        assert!(check_answer(&good, &token, &stranger.public_key()).is_err());
    }

    #[test]
    fn issue_14_join_proof_is_bound_to_key_token_and_connection() {
        let me = crate::pki::NodeKey::generate().unwrap();
        let other = crate::pki::NodeKey::generate().unwrap();
        let binding = [5u8; 32];
        let msg = proof_message(&binding, &me.public_key(), "T");
        let sig = me.sign(&msg);
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&me.public_key()).unwrap();
        assert!(vk.verify_strict(&msg, &sig).is_ok());
        // Another connection, another token, another key: the same signature proves nothing.
        for m in [
            proof_message(&[6u8; 32], &me.public_key(), "T"),
            proof_message(&binding, &me.public_key(), "U"),
            proof_message(&binding, &other.public_key(), "T"),
        ] {
            assert!(vk.verify_strict(&m, &sig).is_err());
        }
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
    fn huge_ttl_mints_without_overflow() {
        let (c, s) = cluster();
        let t = mint(
            &c,
            &s,
            Role::Worker,
            Some(Duration::from_secs(u64::MAX)),
            1_700_000_000,
        )
        .unwrap();
        let parsed = JoinToken::parse(&t).unwrap();
        assert_eq!(parsed.payload.expires_at, Some(u64::MAX));
        assert_eq!(check_token(&t, &c, u64::MAX).unwrap(), Role::Worker);
    }

    #[test]
    fn token_expiring_at_u64_max_is_not_expired() {
        let (c, _) = cluster();
        let ca = ClusterCa::from_der(&c.ca_cert_der, &c.ca_key_der).unwrap();
        let payload = TokenPayload {
            version: 1,
            cluster_id: c.id.clone(),
            role: TokenRole::Manager,
            generation: 0,
            ca_digest: ca.digest(),
            expires_at: Some(u64::MAX),
            manager_addrs: vec![],
            nonce: Some(7),
        };
        let t = JoinToken::mint(&ca, &payload).unwrap();
        assert_eq!(check_token(&t, &c, 0).unwrap(), Role::Manager);
        assert_eq!(check_token(&t, &c, u64::MAX).unwrap(), Role::Manager);
    }

    fn join_request() -> JoinRequest {
        let key = crate::pki::NodeKey::generate().unwrap();
        JoinRequest {
            token: String::new(),
            public_key: key.public_key(),
            hostname: "h".into(),
            advertise_addr: "10.0.0.1:4747".into(),
            platform: "linux/x86_64".into(),
            memory_bytes: 1,
            cpus: 1,
            drivers: vec!["process".into()],
            version: "0.1.0".into(),
            availability: crate::manager::state::Availability::Active,
            proof: Vec::new(),
        }
    }

    #[test]
    fn joiner_strings_are_bounded_and_stripped() {
        let mut req = join_request();
        req.hostname = format!("evil\x1b]0;pwned\x07{}", "h".repeat(1000));
        req.platform = format!("linux\n{}", "p".repeat(1000));
        req.version = format!("1.0\r\n{}", "v".repeat(1000));
        req.drivers = (0..100)
            .map(|i| format!("d{i}\x1b{}", "x".repeat(100)))
            .collect();
        let r = record_for(&req, Role::Worker, 5).unwrap();
        assert!(r.hostname.starts_with("evil]0;pwned"));
        assert_eq!(r.hostname.chars().count(), MAX_HOSTNAME);
        assert!(r.platform.starts_with("linuxppp"));
        assert_eq!(r.platform.chars().count(), MAX_PLATFORM);
        assert!(r.version.starts_with("1.0vvv"));
        assert_eq!(r.version.chars().count(), MAX_VERSION);
        assert_eq!(r.drivers.len(), MAX_DRIVERS);
        assert!(
            r.drivers
                .iter()
                .all(|d| d.chars().count() == MAX_DRIVER_NAME)
        );
        assert!(r.drivers[0].starts_with("d0xx"));
        let all = [&r.hostname, &r.platform, &r.version]
            .into_iter()
            .chain(r.drivers.iter());
        for s in all {
            assert!(!s.chars().any(char::is_control), "{s:?}");
        }
    }

    #[test]
    fn token_of_another_cluster_is_refused() {
        let (c, s) = cluster();
        let (other, _) = cluster();
        let t = mint(&other, &s, Role::Worker, None, 0).unwrap();
        assert!(check_token(&t, &c, 0).is_err());
    }
}
