//! Raft's network. A cluster of one has no peers to reach; every RPC to another node
//! reports the peer unreachable, which openraft treats as a transient failure. The
//! QUIC transport between managers replaces this when managers can join.

use openraft::EmptyNode;
use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};

use super::types::TypeConfig;

/// Builds [`NoPeers`] clients.
#[derive(Debug, Clone, Default)]
pub struct NoPeersFactory;

/// A client for a peer this node has no transport to.
#[derive(Debug, Clone)]
pub struct NoPeers {
    target: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("raft peer {0} is not reachable: this node has no transport to other managers")]
struct NoTransport(u64);

impl NoPeers {
    fn err<E: std::error::Error>(&self) -> RPCError<u64, EmptyNode, E> {
        RPCError::Unreachable(Unreachable::new(&NoTransport(self.target)))
    }
}

impl RaftNetworkFactory<TypeConfig> for NoPeersFactory {
    type Network = NoPeers;
    async fn new_client(&mut self, target: u64, _node: &EmptyNode) -> NoPeers {
        NoPeers { target }
    }
}

impl RaftNetwork<TypeConfig> for NoPeers {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, EmptyNode, RaftError<u64>>> {
        Err(self.err())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, EmptyNode, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(self.err())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, EmptyNode, RaftError<u64>>> {
        Err(self.err())
    }
}
