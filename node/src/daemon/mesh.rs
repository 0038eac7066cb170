//! The routing mesh's seams on a real node: task addresses from the runtime drivers, streams
//! to other nodes from the QUIC pool.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use shoal_runtime::{Driver, RunState};

use crate::mesh::{LocalTasks, Peers};
use crate::net::Pool;
use crate::pki::NodeId;

type BoxFut<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;

/// The worker's drivers, set when the worker starts (none before: no task runs here).
#[derive(Default)]
pub(crate) struct DriverTasks {
    drivers: RwLock<BTreeMap<String, Arc<dyn Driver>>>,
}

impl DriverTasks {
    /// The drivers the worker runs tasks with.
    pub(crate) fn set(&self, drivers: BTreeMap<String, Arc<dyn Driver>>) {
        *self
            .drivers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = drivers;
    }

    /// Every driver the worker runs tasks with (`service logs` asks each for a task).
    pub(crate) fn all(&self) -> Vec<Arc<dyn Driver>> {
        self.drivers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect()
    }
}

impl DriverTasks {
    /// The status of `task_id` (run by `driver`) while it runs here.
    async fn running(&self, task_id: &str, driver: &str) -> Option<shoal_runtime::TaskStatus> {
        let driver = self
            .drivers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(driver)
            .cloned();
        let status = driver?.inspect(task_id).await.ok()?;
        (status.state == RunState::Running).then_some(status)
    }
}

impl LocalTasks for DriverTasks {
    fn endpoint<'a>(
        &'a self,
        task_id: &'a str,
        driver: &'a str,
        target: u16,
    ) -> BoxFut<'a, Option<SocketAddr>> {
        Box::pin(async move {
            self.running(task_id, driver)
                .await?
                .ports
                .iter()
                .find(|p| p.target == target)
                .map(|p| p.addr)
        })
    }

    fn stack_member<'a>(
        &'a self,
        task_id: &'a str,
        driver: &'a str,
    ) -> BoxFut<'a, Option<(std::net::IpAddr, String)>> {
        Box::pin(async move {
            let status = self.running(task_id, driver).await?;
            let stack = status.labels.get(crate::STACK_NAMESPACE_LABEL)?.clone();
            Some((status.address?, stack))
        })
    }
}

/// Mesh streams over the node's QUIC pool.
pub(crate) struct PoolPeers(pub(crate) Pool);

impl Peers for PoolPeers {
    fn open<'a>(
        &'a self,
        node_id: &'a str,
        addr: SocketAddr,
    ) -> BoxFut<'a, Result<(quinn::SendStream, quinn::RecvStream), String>> {
        Box::pin(async move {
            let id: NodeId = node_id
                .parse()
                .map_err(|e| format!("bad node ID {node_id}: {e}"))?;
            let conn = self
                .0
                .get_or_dial(&id, addr)
                .await
                .map_err(|e| e.to_string())?;
            conn.open_bi().await.map_err(|e| e.to_string())
        })
    }
}
