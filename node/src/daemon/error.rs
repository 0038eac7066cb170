//! Why a lifecycle operation (`init`, `join`, `leave`, resuming after a restart) failed:
//! one line that says what to do next, and the HTTP status the control API answers with.

use crate::api::server::ApiError;
use crate::manager::ManagerError;
use crate::roles::RoleError;

use super::authz::CertError;
use super::node::manager_err;

/// A failed `init`, `init --force-new-cluster`, `join`, `leave` or resume.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LifecycleError {
    /// `init` on a node that is in a cluster.
    #[error(
        "this node is already part of a cluster: run `shoal leave --force` first to start a new one"
    )]
    InitInCluster,
    /// `join` on a node that is in a cluster.
    #[error("this node is already part of a cluster: run `shoal leave` first")]
    JoinInCluster,
    /// `leave` on a node that is in no cluster.
    #[error("this node is not part of a cluster")]
    NotInCluster,
    /// `init --force-new-cluster` on a node without cluster state.
    #[error("this node has no cluster state to recover: run `shoal init` to create a cluster")]
    NothingToRecover,
    /// `init --force-new-cluster` on a worker.
    #[error(
        "--force-new-cluster runs on a manager that kept the cluster state; this node is a worker"
    )]
    ForceNewClusterOnWorker,
    /// `leave` without `--force` on the last manager.
    #[error(
        "this node is the last manager: leaving wipes the cluster state; use `shoal leave --force` to do it anyway"
    )]
    LastManager,
    /// `leave` without `--force` on a manager.
    #[error(
        "this node is a manager: demote it first (`shoal node demote`) or use `shoal leave --force`"
    )]
    StillManager,
    /// An `--availability` that is not one.
    #[error("{0}")]
    Availability(String),
    /// An `--advertise-addr` that is not one.
    #[error("{0}")]
    Advertise(anyhow::Error),
    /// A join token that does not parse.
    #[error("{0}")]
    Token(String),
    /// A manager address given to `join` that is not one.
    #[error("manager address: {0}")]
    ManagerAddr(anyhow::Error),
    /// `join` with neither an address nor a token that carries one.
    #[error(
        "no manager address: give one (shoal join --token T ADDR) or use a token that carries them"
    )]
    NoManagerAddr,
    /// No manager admitted this node (the reasons of each).
    #[error("{0}")]
    JoinRefused(String),
    /// `node.json` could not be read or written, or the TLS configuration not built.
    #[error("{0:#}")]
    Local(anyhow::Error),
    /// The cluster CA could not be created.
    #[error("cannot create the cluster CA: {0}")]
    CreateCa(String),
    /// This node's certificate could not be issued.
    #[error(transparent)]
    IssueCert(#[from] CertError),
    /// A `raft.redb` left by an `init` that died could not be removed.
    #[error("cannot remove unfinished {path}: {error}")]
    RemoveUnfinished {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// `raft.redb` could not be removed when leaving.
    #[error("cannot remove {path}: {error}")]
    RemoveDb {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// `init --force-new-cluster` could not move the old `raft.redb` aside.
    #[error("cannot move {path} aside: {error}")]
    MoveAside {
        /// The file.
        path: String,
        /// Why.
        error: std::io::Error,
    },
    /// Raft did not elect this node after `init`.
    #[error("raft did not elect this node within 10 s")]
    NoElection,
    /// Raft refused or failed.
    #[error(transparent)]
    Manager(#[from] ManagerError),
    /// Gossip, the worker or a driver could not start.
    #[error("{0}")]
    Start(String),
    /// Joined with a manager token, but Raft could not start here.
    #[error(transparent)]
    BecomeManager(#[from] RoleError),
    /// Joined with a manager token, but the leader did not make this node a voter.
    #[error(
        "joined, but the leader has not made this node a voter within 60 s: check `shoal node ls` on a manager"
    )]
    NotAVoterYet,
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> Self {
        use LifecycleError as E;
        match e {
            E::Manager(m) => manager_err(m),
            E::InitInCluster
            | E::JoinInCluster
            | E::NotInCluster
            | E::NothingToRecover
            | E::ForceNewClusterOnWorker
            | E::LastManager
            | E::StillManager => ApiError::conflict(e.to_string()),
            E::Availability(_)
            | E::Advertise(_)
            | E::Token(_)
            | E::ManagerAddr(_)
            | E::NoManagerAddr
            | E::JoinRefused(_) => ApiError::bad_request(e.to_string()),
            E::NoElection | E::NotAVoterYet => ApiError::unavailable(e.to_string()),
            E::Local(_)
            | E::CreateCa(_)
            | E::IssueCert(_)
            | E::RemoveUnfinished { .. }
            | E::RemoveDb { .. }
            | E::MoveAside { .. }
            | E::Start(_)
            | E::BecomeManager(_) => ApiError::internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use hyper::StatusCode;

    use super::{ApiError, LifecycleError, ManagerError};

    #[test]
    fn lifecycle_errors_keep_their_texts_and_statuses() {
        let cases = [
            (
                LifecycleError::InitInCluster,
                StatusCode::CONFLICT,
                "this node is already part of a cluster: run `shoal leave --force` first to start a new one",
            ),
            (
                LifecycleError::LastManager,
                StatusCode::CONFLICT,
                "this node is the last manager: leaving wipes the cluster state; use `shoal leave --force` to do it anyway",
            ),
            (
                LifecycleError::ManagerAddr(anyhow::anyhow!("invalid advertise address `x`")),
                StatusCode::BAD_REQUEST,
                "manager address: invalid advertise address `x`",
            ),
            (
                LifecycleError::Local(
                    anyhow::anyhow!("disk full").context("cannot write node.json"),
                ),
                StatusCode::INTERNAL_SERVER_ERROR,
                "cannot write node.json: disk full",
            ),
            (
                LifecycleError::NoElection,
                StatusCode::SERVICE_UNAVAILABLE,
                "raft did not elect this node within 10 s",
            ),
            (
                LifecycleError::Manager(ManagerError::Refused("no".into())),
                StatusCode::CONFLICT,
                "no",
            ),
        ];
        for (error, status, message) in cases {
            let api = ApiError::from(error);
            assert_eq!((api.status, api.message.as_str()), (status, message));
        }
    }
}
