//! Who may send what: the one table of stream tags and the checks behind it (issue 14).
//!
//! Authentication (mutual TLS under the cluster CA) says *who* a peer is; this module says
//! what that peer may ask. Every stream tag has exactly one [`Rule`] in [`stream_rule`]: the
//! kind of sender it admits and the largest frame it may send. `peer.rs` reads a stream's
//! 5-byte header, looks the tag up here, checks the sender with [`authorize`] and only then
//! reads (and allocates) the body. A tag without a row is refused, so a new tag cannot be
//! served without one. ARCHITECTURE.md's trust table is this table written out.
//!
//! The checks are a pure function of [`PeerFacts`], which the daemon gathers from its own
//! state (Raft on a manager; on a worker, what the leader pushed over its session).

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::dispatch::TAG_DISPATCH;
use crate::forward::{TAG_BECOME_MANAGER, TAG_FORWARD_API, TAG_FORWARD_WRITE};
use crate::join::{MAX_JOIN_REQUEST, TAG_JOIN};
use crate::logs::{MAX_LOGS_REQUEST, TAG_LOGS};
use crate::manager::rpc::{
    MAX_APPEND_FRAME, MAX_SNAPSHOT_FRAME, MAX_VOTE_FRAME, TAG_RAFT_APPEND, TAG_RAFT_SNAPSHOT,
    TAG_RAFT_VOTE,
};
use crate::mesh::{MAX_MESH_OPEN, TAG_MESH, TAG_VIP};

/// Stream tag of a liveness probe: the leader checks a node answers before it believes
/// gossip that says it is down.
pub const TAG_PING: u8 = 9;

/// Application error code a refused stream is reset (and stopped) with.
pub(crate) const REFUSED: u32 = 3;

/// Largest first frame of a worker session (its hello).
pub(crate) const MAX_SESSION_HELLO: usize = 64 * 1024;
/// Largest become-manager request.
pub(crate) const MAX_BECOME_MANAGER: usize = 4 * 1024;
/// Largest ping.
pub(crate) const MAX_PING: usize = 64;

/// The kinds of sender a rule admits, from the widest to the narrowest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Sender {
    /// Anyone who completes the TLS handshake, with or without a client certificate.
    Anyone,
    /// A node with a certificate of this cluster whose key was not removed.
    Member,
    /// A member this node knows as a manager (the node table on a manager; the list the
    /// leader pushed on a worker).
    Manager,
    /// A member of this node's Raft configuration (voter or learner), this node's current
    /// Raft leader, or a known manager (a new manager, whose Raft is still empty, hears from
    /// the leader before it knows any configuration).
    RaftPeer,
    /// The current Raft leader, as this node knows it.
    Leader,
}

impl Sender {
    /// How the rule reads in a refusal.
    pub fn describe(self) -> &'static str {
        match self {
            Sender::Anyone => "anyone",
            Sender::Member => "cluster members",
            Sender::Manager => "managers",
            Sender::RaftPeer => "Raft members",
            Sender::Leader => "the current leader",
        }
    }
}

/// One row of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rule {
    /// What the tag carries (for logs).
    pub name: &'static str,
    /// Who may send it.
    pub sender: Sender,
    /// Largest request frame body, checked from the header before anything is allocated.
    pub max_frame: usize,
    /// Whether this node must be a manager to serve it at all.
    pub managers_only: bool,
}

/// The rule of stream `tag`, or `None`: an unknown tag is refused.
#[must_use]
pub(crate) fn stream_rule(tag: u8) -> Option<Rule> {
    let rule = |name, sender, max_frame, managers_only| Rule {
        name,
        sender,
        max_frame,
        managers_only,
    };
    Some(match tag {
        TAG_JOIN => rule("join", Sender::Anyone, MAX_JOIN_REQUEST, true),
        TAG_RAFT_APPEND => rule("raft append", Sender::RaftPeer, MAX_APPEND_FRAME, true),
        TAG_RAFT_VOTE => rule("raft vote", Sender::RaftPeer, MAX_VOTE_FRAME, true),
        TAG_RAFT_SNAPSHOT => rule("raft snapshot", Sender::RaftPeer, MAX_SNAPSHOT_FRAME, true),
        TAG_FORWARD_API => rule(
            "forwarded API request",
            Sender::Manager,
            crate::forward::MAX_FORWARD_FRAME,
            true,
        ),
        TAG_FORWARD_WRITE => rule(
            "forwarded Raft command",
            Sender::Manager,
            crate::forward::MAX_FORWARD_FRAME,
            true,
        ),
        TAG_BECOME_MANAGER => rule("become manager", Sender::Leader, MAX_BECOME_MANAGER, false),
        TAG_DISPATCH => rule("worker session", Sender::Member, MAX_SESSION_HELLO, true),
        TAG_PING => rule("ping", Sender::Member, MAX_PING, false),
        // Any member may be the ingress node of a published port; what the stream may reach
        // is checked by the serving node's own endpoint table (`Mesh::serve_stream`): only
        // a task running here, of a service that publishes the port asked for.
        TAG_MESH => rule("mesh stream", Sender::Member, MAX_MESH_OPEN, false),
        // Served by every node, for the tasks its own drivers run (`logs::serve_stream`).
        TAG_LOGS => rule("logs request", Sender::Manager, MAX_LOGS_REQUEST, false),
        // Any member may hold the VIP a client connected to; what the stream may reach is
        // checked by the serving node's own discovery table (`Mesh::serve_vip_stream`): only
        // a task running here, of a service reached by name on the port asked for.
        TAG_VIP => rule("VIP stream", Sender::Member, MAX_MESH_OPEN, false),
        _ => return None,
    })
}

/// Every tag with a rule (for the tests).
#[cfg(test)]
const TAGS: [u8; 12] = [
    TAG_JOIN,
    TAG_RAFT_APPEND,
    TAG_RAFT_VOTE,
    TAG_RAFT_SNAPSHOT,
    TAG_FORWARD_API,
    TAG_FORWARD_WRITE,
    TAG_BECOME_MANAGER,
    TAG_DISPATCH,
    TAG_PING,
    TAG_MESH,
    TAG_LOGS,
    TAG_VIP,
];

/// What this node knows about a peer when it asks for something.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct PeerFacts {
    /// It presented a certificate of this cluster.
    pub certified: bool,
    /// Its key was removed from the cluster.
    pub removed: bool,
    /// This node knows it as a manager.
    pub manager: bool,
    /// It is in this node's Raft configuration, or is this node's Raft leader.
    pub raft_peer: bool,
    /// It is the current leader as this node knows it.
    pub leader: bool,
    /// This node is a manager (runs Raft).
    pub serving_as_manager: bool,
}

/// Why a request was refused (one line, for the log).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refusal {
    /// No rule for the tag.
    #[error("unknown stream tag {0}")]
    UnknownTag(u8),
    /// The peer's key was removed.
    #[error("the peer was removed from the cluster")]
    Removed,
    /// The peer has no certificate and the tag needs one.
    #[error("{0} needs a cluster certificate")]
    Unauthenticated(&'static str),
    /// The peer is not of the kind the rule admits.
    #[error("{name} is accepted only from {}", .sender.describe())]
    NotAllowed {
        /// The tag's name.
        name: &'static str,
        /// Who may send it.
        sender: Sender,
    },
    /// This node is not part of a cluster (it left, or never joined).
    #[error("this node is not part of a cluster")]
    NotInCluster,
    /// This node does not serve the tag in its role.
    #[error("{0} is served by managers only")]
    NotServedHere(&'static str),
}

/// Checks `facts` against the rule of `tag`.
pub(crate) fn authorize(tag: u8, facts: &PeerFacts) -> Result<Rule, Refusal> {
    let rule = stream_rule(tag).ok_or(Refusal::UnknownTag(tag))?;
    if facts.removed {
        return Err(Refusal::Removed);
    }
    if rule.sender != Sender::Anyone && !facts.certified {
        return Err(Refusal::Unauthenticated(rule.name));
    }
    let allowed = match rule.sender {
        Sender::Anyone | Sender::Member => true,
        Sender::Manager => facts.manager,
        Sender::RaftPeer => facts.raft_peer || facts.manager,
        Sender::Leader => facts.leader,
    };
    if !allowed {
        return Err(Refusal::NotAllowed {
            name: rule.name,
            sender: rule.sender,
        });
    }
    if rule.managers_only && !facts.serving_as_manager {
        return Err(Refusal::NotServedHere(rule.name));
    }
    Ok(rule)
}

/// What every node knows about the cluster's managers and removed keys. On a manager it is
/// derived from Raft; on a worker the leader pushes it over the worker session (and it is
/// saved in `node.json`, so a restarted worker still refuses removed keys).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TrustView {
    /// Public keys of the managers.
    pub managers: BTreeSet<[u8; 32]>,
    /// Public keys removed from the cluster (`node rm`, `init --force-new-cluster`).
    pub removed: BTreeSet<[u8; 32]>,
}

/// A shared, watchable [`TrustView`].
pub(crate) type TrustWatch = tokio::sync::watch::Sender<Arc<TrustView>>;

/// Logs a refusal once per (peer, tag) for a while, so a hostile peer cannot flood the log.
#[derive(Debug, Default)]
pub(crate) struct RefusalLog {
    seen: std::sync::Mutex<std::collections::HashMap<(String, u8), std::time::Instant>>,
}

impl RefusalLog {
    /// How long a refusal stays quiet after it was logged.
    const QUIET: std::time::Duration = std::time::Duration::from_secs(60);
    /// Entries kept at most (older ones are dropped).
    const MAX_ENTRIES: usize = 4096;

    /// Logs `refusal` of `tag` from `peer` unless the same was logged recently.
    pub fn refused(&self, peer: &str, tag: u8, refusal: &Refusal) {
        if self.first_in_a_while(peer, tag) {
            tracing::warn!(peer, tag, "refused a peer request: {refusal}");
        }
    }

    /// Whether `(peer, tag)` was not seen in the last minute (and records it now).
    pub fn first_in_a_while(&self, peer: &str, tag: u8) -> bool {
        let now = std::time::Instant::now();
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() >= Self::MAX_ENTRIES {
            seen.retain(|_, at| now.duration_since(*at) < Self::QUIET);
            if seen.len() >= Self::MAX_ENTRIES {
                seen.clear();
            }
        }
        let key = (peer.to_string(), tag);
        if seen
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < Self::QUIET)
        {
            return false;
        }
        seen.insert(key, now);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker() -> PeerFacts {
        PeerFacts {
            certified: true,
            serving_as_manager: true,
            ..PeerFacts::default()
        }
    }

    #[test]
    fn issue_14_every_tag_has_a_row_and_unknown_tags_are_refused() {
        for tag in TAGS {
            assert!(stream_rule(tag).is_some(), "tag {tag} has no rule");
        }
        for tag in (0..=255u8).filter(|t| !TAGS.contains(t)) {
            assert_eq!(
                authorize(tag, &PeerFacts::default()),
                Err(Refusal::UnknownTag(tag))
            );
        }
    }

    #[test]
    fn issue_14_a_worker_may_use_only_member_tags() {
        let w = worker();
        for tag in TAGS {
            let rule = stream_rule(tag).unwrap();
            let ok = authorize(tag, &w).is_ok();
            let expected = matches!(rule.sender, Sender::Anyone | Sender::Member);
            assert_eq!(ok, expected, "tag {tag} ({})", rule.name);
        }
    }

    #[test]
    fn issue_19_only_managers_may_ask_for_logs_and_every_node_serves_them() {
        assert!(matches!(
            authorize(TAG_LOGS, &worker()),
            Err(Refusal::NotAllowed { .. })
        ));
        let manager_asking_a_worker = PeerFacts {
            certified: true,
            manager: true,
            ..PeerFacts::default()
        };
        assert!(authorize(TAG_LOGS, &manager_asking_a_worker).is_ok());
    }

    #[test]
    fn issue_14_anonymous_peers_may_only_join() {
        let anon = PeerFacts {
            serving_as_manager: true,
            ..PeerFacts::default()
        };
        for tag in TAGS {
            assert_eq!(authorize(tag, &anon).is_ok(), tag == TAG_JOIN, "tag {tag}");
        }
    }

    #[test]
    fn issue_14_removed_keys_are_refused_everything() {
        let removed = PeerFacts {
            certified: true,
            removed: true,
            manager: true,
            raft_peer: true,
            leader: true,
            serving_as_manager: true,
        };
        for tag in TAGS {
            assert_eq!(authorize(tag, &removed), Err(Refusal::Removed), "tag {tag}");
        }
    }

    #[test]
    fn issue_14_managers_and_leader() {
        let manager = PeerFacts {
            manager: true,
            ..worker()
        };
        assert!(authorize(TAG_FORWARD_API, &manager).is_ok());
        assert!(authorize(TAG_FORWARD_WRITE, &manager).is_ok());
        assert!(authorize(TAG_RAFT_APPEND, &manager).is_ok());
        assert!(authorize(TAG_BECOME_MANAGER, &manager).is_err());
        let leader = PeerFacts {
            leader: true,
            ..manager
        };
        assert!(authorize(TAG_BECOME_MANAGER, &leader).is_ok());
        // A demoted leader replicating its own removal: no longer a manager in the node
        // table, but still this follower's Raft leader.
        let demoted = PeerFacts {
            raft_peer: true,
            ..worker()
        };
        assert!(authorize(TAG_RAFT_APPEND, &demoted).is_ok());
        assert!(authorize(TAG_FORWARD_API, &demoted).is_err());
    }

    #[test]
    fn issue_14_workers_do_not_serve_manager_tags() {
        let manager_on_worker = PeerFacts {
            certified: true,
            manager: true,
            leader: true,
            raft_peer: true,
            ..PeerFacts::default()
        };
        for tag in [TAG_JOIN, TAG_RAFT_APPEND, TAG_FORWARD_API, TAG_DISPATCH] {
            assert!(matches!(
                authorize(tag, &manager_on_worker),
                Err(Refusal::NotServedHere(_))
            ));
        }
        assert!(authorize(TAG_BECOME_MANAGER, &manager_on_worker).is_ok());
        assert!(authorize(TAG_PING, &manager_on_worker).is_ok());
    }
}
