//! What the scheduler and the workers see of the services state: [`to_view`], the scheduler's
//! [`ClusterView`] for the orchestrator, and [`assignments_for`], what a node's worker must run
//! or stop as runtime `TaskSpec`s. The node records and specs already speak the scheduler's
//! words (role, status, availability, mode, restart condition), so the view copies them.

use std::collections::BTreeMap;

use shoal_scheduler::{
    ClusterView, Constraint, ConstraintField, ConstraintOp, DesiredState, NodeId, ServiceId, Slot,
    TaskId, Timestamp,
};

use super::spec::UpdateOrder;
use super::state::{ServiceRecord, ServicesState, UpdateState};
use crate::manager::state::{NodeFacilities, NodeRecord};
/// What a worker must run or stop: the worker's own wire type.
pub use crate::session::Assignment;

/// The secrets the tasks assigned to `node_id` need, by task ID: each secret's ID and its
/// use. Only tasks meant to run (the bytes go nowhere else). The dispatcher decrypts them.
pub fn secrets_wanted(
    state: &ServicesState,
    node_id: &str,
) -> BTreeMap<String, Vec<super::SecretRef>> {
    state
        .tasks
        .values()
        .filter(|t| {
            t.node_id.as_ref().is_some_and(|n| n.as_str() == node_id)
                && t.desired_state == DesiredState::Running
                && !t.state.is_terminal()
                && !t.state.is_unassigned()
        })
        .filter_map(|t| {
            let rec = state.services.get(t.service_id.as_str())?;
            let spec = rec.spec_for_version(t.spec_version);
            (!spec.secrets.is_empty()).then(|| (t.id.0.clone(), spec.secrets.clone()))
        })
        .collect()
}

/// The scheduler's node for a node record.
pub fn view_node(n: &NodeRecord, facilities: Option<&NodeFacilities>) -> shoal_scheduler::Node {
    shoal_scheduler::Node {
        id: NodeId(n.id.clone()),
        hostname: n.hostname.clone(),
        role: n.role,
        status: n.status,
        availability: n.availability,
        labels: n.labels.clone(),
        capacity: shoal_scheduler::Resources {
            memory_bytes: n.memory_bytes,
            nano_cpus: u64::from(n.cpus).saturating_mul(1_000_000_000),
        },
        drivers: n.drivers.iter().cloned().collect(),
        allows_privileged: facilities.is_some_and(|f| f.allow_privileged),
        devices: facilities.map(|f| f.devices.iter().cloned().collect()),
    }
}

/// The scheduler's service for a record. A constraint that no longer parses (a spec stored
/// by another version) becomes one no node satisfies, so its tasks wait as `pending` with a
/// reason instead of running anywhere.
pub fn view_service(rec: &ServiceRecord) -> shoal_scheduler::Service {
    let spec = &rec.spec;
    let constraints = spec.parsed_constraints().unwrap_or_else(|e| {
        vec![Constraint {
            field: ConstraintField::Id,
            op: ConstraintOp::Eq,
            value: format!("<{e}>"),
        }]
    });
    let p = spec.restart_policy;
    shoal_scheduler::Service {
        id: ServiceId(rec.id.clone()),
        name: spec.name.clone(),
        mode: spec.mode,
        driver: spec.driver.clone(),
        privileged: spec.options.privileged || !spec.options.cap_add.is_empty(),
        devices: spec
            .options
            .devices
            .iter()
            .map(|d| d.host.clone())
            .collect(),
        constraints,
        reservations: shoal_scheduler::Resources {
            memory_bytes: spec.reservations.memory_bytes,
            nano_cpus: spec.reservations.nano_cpus,
        },
        max_replicas_per_node: Some(spec.max_replicas_per_node).filter(|&m| m > 0),
        restart_policy: shoal_scheduler::RestartPolicy {
            condition: p.condition,
            delay_ms: p.delay_ms,
            max_attempts: p.max_attempts,
            window_ms: p.window_ms,
        },
        spec_version: rec.version,
        update: rolling_update(rec),
    }
}

/// The scheduler's rolling update for a record whose update is in progress or paused
/// (`None` once completed, or before any update).
pub fn rolling_update(rec: &ServiceRecord) -> Option<shoal_scheduler::RollingUpdate> {
    let status = rec.update_status.as_ref()?;
    let (config, paused) = match status.state {
        UpdateState::Updating => (&rec.spec.update_config, false),
        UpdateState::Paused => (&rec.spec.update_config, true),
        UpdateState::RollbackStarted => (&rec.spec.rollback_config, false),
        UpdateState::RollbackPaused => (&rec.spec.rollback_config, true),
        UpdateState::Completed | UpdateState::RollbackCompleted => return None,
    };
    Some(shoal_scheduler::RollingUpdate {
        current_versions: rec.current_versions(),
        parallelism: config.parallelism,
        delay_ms: config.delay_ms,
        start_first: config.order == UpdateOrder::StartFirst,
        paused,
        started_at: Timestamp(status.started_at.unwrap_or(rec.updated_at)),
        monitor_ms: config.monitor_ms,
        max_failure_ratio_ppm: config.max_failure_ratio_ppm,
        require_healthy: rec.spec.health_check.is_some() && !rec.spec.no_healthcheck,
    })
}

/// Everything the scheduler reads: nodes, live services, all tasks.
pub fn to_view(
    state: &ServicesState,
    nodes: &BTreeMap<String, NodeRecord>,
    facilities: &BTreeMap<String, NodeFacilities>,
) -> ClusterView {
    ClusterView {
        nodes: nodes
            .values()
            .map(|n| view_node(n, facilities.get(&n.id)))
            .collect(),
        services: state.services.values().map(view_service).collect(),
        tasks: state.tasks.values().cloned().collect(),
        health: state
            .health
            .iter()
            .map(|(id, h)| (TaskId(id.clone()), *h))
            .collect(),
    }
}

/// The slot number a runtime sees: the replica number, or 0 for a global task.
pub fn slot_number(slot: &Slot) -> u64 {
    match slot {
        Slot::Replica(n) => *n,
        Slot::Node(_) => 0,
    }
}

/// What the worker of `node_id` must do: every task assigned to it that has not ended, to
/// run (desired `running`) or to stop (desired `shutdown`); and the ended tasks of live
/// services still in their history, as `shutdown` (a failed task is never restarted in
/// place), whose runtime copies the worker keeps — their logs stay readable — until they
/// leave the history or the worker's retention time has passed, as Swarm keeps a service's
/// exited containers. Left out: orphaned copies and the ended tasks of removed services (the
/// worker stops and removes anything it has that is not listed, such as an orphaned copy on
/// a node that came back). Sorted by task ID.
pub fn assignments_for(state: &ServicesState, node_id: &str) -> Vec<Assignment> {
    state
        .tasks
        .values()
        .filter(|t| {
            t.node_id.as_ref().is_some_and(|n| n.as_str() == node_id)
                && !t.state.is_unassigned()
                && t.state != shoal_scheduler::TaskState::Orphaned
                && (!t.state.is_terminal() || state.services.contains_key(t.service_id.as_str()))
        })
        .filter_map(|t| {
            let live = state.services.get(t.service_id.as_str());
            let rec = live.or_else(|| state.removed.get(t.service_id.as_str()))?;
            let spec = rec.spec_for_version(t.spec_version);
            let slot = slot_number(&t.slot);
            let mut task_spec = spec.task_spec(t.id.as_str(), &rec.id, slot);
            // Configs travel with the assignment (a removed config's file is left out).
            task_spec.options.files = spec
                .configs
                .iter()
                .filter_map(|c| {
                    let config = state.configs.get(&c.config_id)?;
                    Some(shoal_runtime::TaskFile {
                        target: c.target.clone(),
                        data: config.data.clone(),
                        uid: c.uid,
                        gid: c.gid,
                        mode: c.mode,
                    })
                })
                .collect();
            Some(Assignment {
                task_id: t.id.0.clone(),
                service_id: rec.id.clone(),
                service_name: spec.name.clone(),
                slot,
                driver: spec.driver.clone(),
                spec: task_spec,
                desired: if live.is_some()
                    && t.desired_state == DesiredState::Running
                    && !t.state.is_terminal()
                {
                    crate::worker::DesiredState::Running
                } else {
                    crate::worker::DesiredState::Shutdown
                },
            })
        })
        .collect()
}

/// The routing mesh's endpoint table: every live service with published ports and its
/// tasks that are running and meant to (a task the orchestrator stops has left the table
/// before its worker stops it), on nodes not known to be down, with their node's address.
/// `ready` is the scheduler's readiness: a task with a health check is in rotation only once
/// healthy.
pub fn endpoint_table(
    state: &ServicesState,
    nodes: &BTreeMap<String, NodeRecord>,
) -> crate::mesh::EndpointTable {
    let mut running = running_tasks(state);
    let services = state
        .services
        .values()
        .filter(|rec| !rec.spec.ports.is_empty())
        .map(|rec| crate::mesh::PublishedService {
            service_id: rec.id.clone(),
            name: rec.spec.name.clone(),
            ports: rec.spec.ports.clone(),
            tasks: task_endpoints(state, nodes, rec, running.remove(rec.id.as_str())),
        })
        .collect();
    crate::mesh::EndpointTable { services }
}

/// Service discovery's table (issue 22): every live service with its endpoint mode, VIP
/// index and ports, and its tasks as [`endpoint_table`] lists them.
pub fn discovery_table(
    state: &ServicesState,
    nodes: &BTreeMap<String, NodeRecord>,
) -> crate::mesh::DiscoveryTable {
    let mut running = running_tasks(state);
    let services = state
        .services
        .values()
        .map(|rec| crate::mesh::DiscoveredService {
            service_id: rec.id.clone(),
            name: rec.spec.name.clone(),
            endpoint_mode: rec.spec.endpoint_mode,
            vip_index: rec.vip_index,
            ports: rec.spec.discovery_ports(),
            tasks: task_endpoints(state, nodes, rec, running.remove(rec.id.as_str())),
        })
        .collect();
    crate::mesh::DiscoveryTable { services }
}

/// The tasks that run and are meant to, by service, in one pass over the tasks.
fn running_tasks(state: &ServicesState) -> BTreeMap<&str, Vec<&shoal_scheduler::Task>> {
    let mut by_service: BTreeMap<&str, Vec<&shoal_scheduler::Task>> = BTreeMap::new();
    for t in state.tasks.values().filter(|t| {
        t.desired_state == DesiredState::Running && t.state == shoal_scheduler::TaskState::Running
    }) {
        by_service.entry(t.service_id.as_str()).or_default().push(t);
    }
    by_service
}

/// `tasks` (the running tasks of `rec`) on nodes not known to be down, with their readiness.
fn task_endpoints(
    state: &ServicesState,
    nodes: &BTreeMap<String, NodeRecord>,
    rec: &ServiceRecord,
    tasks: Option<Vec<&shoal_scheduler::Task>>,
) -> Vec<crate::mesh::TaskEndpoint> {
    tasks
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| {
            let node = nodes.get(t.node_id.as_ref()?.0.as_str())?;
            if node.status == shoal_scheduler::NodeStatus::Down {
                return None;
            }
            let node_addr = node.addr.parse().ok()?;
            // The task's own spec says whether it has a check: during an update that adds
            // one, the old tasks still serve.
            let spec = rec.spec_for_version(t.spec_version);
            let require_healthy = spec.health_check.is_some() && !spec.no_healthcheck;
            let ready = match state.health.get(t.id.as_str()) {
                Some(shoal_scheduler::TaskHealth::Healthy) => true,
                Some(
                    shoal_scheduler::TaskHealth::Starting | shoal_scheduler::TaskHealth::Unhealthy,
                ) => false,
                Some(shoal_scheduler::TaskHealth::None) | None => !require_healthy,
            };
            Some(crate::mesh::TaskEndpoint {
                task_id: t.id.0.clone(),
                node_id: node.id.clone(),
                node_addr,
                driver: spec.driver.clone(),
                ready,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use shoal_runtime::HealthTest;
    use shoal_scheduler::TaskState;

    use super::*;
    use crate::api::services::ServiceRow;
    use crate::manager::services::tests::{
        active_on, cluster, converge, create, orchestrate, replicated, svc,
    };
    use crate::manager::services::{
        HealthCheckSpec, PortSpec, ResourceSpec, RestartCondition, ServiceCommand, ServiceMode,
        ServiceSpec,
    };
    use crate::manager::state::Command;

    /// The routing mesh's table: only published services; only tasks running and meant to;
    /// readiness by each task's own spec's health check; a down node's tasks left out.
    #[test]
    fn the_endpoint_table_lists_running_tasks_of_published_services_and_their_readiness() {
        let mut s = cluster();
        let mut web = replicated("web", 3);
        web.ports = vec![PortSpec::tcp(8080, 80)];
        create(&mut s, "s1", web);
        create(&mut s, "s2", replicated("quiet", 2));
        let now = converge(&mut s, 1_000);
        let table = endpoint_table(&s.services, &s.nodes);
        assert_eq!(
            table.services.len(),
            1,
            "only services with published ports"
        );
        let web = &table.services[0];
        assert_eq!((web.service_id.as_str(), web.name.as_str()), ("s1", "web"));
        assert_eq!(web.ports, [PortSpec::tcp(8080, 80)]);
        assert_eq!(web.tasks.len(), 3);
        assert!(web.tasks.iter().all(|t| t.ready && t.driver == "docker"));
        let nodes: std::collections::BTreeSet<_> =
            web.tasks.iter().map(|t| t.node_id.as_str()).collect();
        assert_eq!(nodes.len(), 3, "spread over the three nodes");

        // A health check added by an update: the old tasks (no check) still serve, the new
        // ones only once healthy.
        let mut checked = s.services.services["s1"].spec.clone();
        checked.health_check = Some(HealthCheckSpec::shell("true"));
        checked.update_config.order = crate::manager::services::UpdateOrder::StartFirst;
        let cmd = ServiceCommand::update("s1", checked, now);
        assert_eq!(svc(&mut s, cmd), crate::manager::state::CommandResult::Done);
        orchestrate(&mut s, now + 10);
        crate::manager::services::tests::run_workers(&mut s, now + 10);
        let table = endpoint_table(&s.services, &s.nodes);
        let tasks = &table.services[0].tasks;
        let new: Vec<_> = tasks
            .iter()
            .filter(|t| s.services.tasks[&t.task_id].spec_version == 2)
            .collect();
        let old: Vec<_> = tasks
            .iter()
            .filter(|t| s.services.tasks[&t.task_id].spec_version == 1)
            .collect();
        assert!(!new.is_empty(), "the update started a task: {tasks:?}");
        assert!(new.iter().all(|t| !t.ready), "not healthy yet: {new:?}");
        assert_eq!(old.len(), 3);
        assert!(
            old.iter().all(|t| t.ready),
            "old tasks stay in rotation: {old:?}"
        );

        // A task to stop leaves the table; so do the tasks of a node known to be down.
        let victim = old[0].task_id.clone();
        s.services.tasks.get_mut(&victim).unwrap().desired_state = DesiredState::Shutdown;
        let down = old[1].node_id.clone();
        s.nodes.get_mut(&down).unwrap().status = shoal_scheduler::NodeStatus::Down;
        let table = endpoint_table(&s.services, &s.nodes);
        let tasks = &table.services[0].tasks;
        assert!(tasks.iter().all(|t| t.task_id != victim), "{tasks:?}");
        assert!(tasks.iter().all(|t| t.node_id != down), "{tasks:?}");
    }

    /// A task that failed stays assigned to its node as `shutdown` (its container and logs
    /// are kept) beside its replacement; the ended tasks of a removed service are not.
    #[test]
    fn ended_tasks_stay_assigned_as_shutdown_until_their_service_goes() {
        let mut s = cluster();
        create(&mut s, "s1", replicated("web", 1));
        let now = converge(&mut s, 1_000);
        let first = s.services.tasks.values().next().unwrap().clone();
        let cmd = ServiceCommand::TaskReports {
            node_id: first.node_id.clone().unwrap().0,
            reports: vec![crate::manager::services::tests::report(
                first.id.as_str(),
                TaskState::Failed,
            )],
            at: now,
        };
        svc(&mut s, cmd);
        let now = converge(&mut s, now + 10_000);
        assert_eq!(active_on(&s, "s1").values().sum::<usize>(), 1);
        let all: Vec<Assignment> = ["n1", "n2", "n3"]
            .iter()
            .flat_map(|n| assignments_for(&s.services, n))
            .collect();
        let failed = all
            .iter()
            .find(|a| a.task_id == first.id.as_str())
            .expect("the failed task is still assigned");
        assert_eq!(failed.desired, crate::worker::DesiredState::Shutdown);
        assert!(
            all.iter().any(|a| a.task_id != first.id.as_str()
                && a.desired == crate::worker::DesiredState::Running),
            "{all:?}"
        );
        let remove = ServiceCommand::Remove {
            id: "s1".into(),
            at: now,
        };
        svc(&mut s, remove);
        converge(&mut s, now + 10);
        for n in ["n1", "n2", "n3"] {
            assert!(assignments_for(&s.services, n).is_empty());
        }
    }

    #[test]
    fn assignments_carry_runtime_specs() {
        let mut s = cluster();
        let mut spec = replicated("web", 3);
        spec.args = vec!["httpd".into(), "-f".into()];
        spec.env.insert("A".into(), "1".into());
        spec.labels.insert("team".into(), "x".into());
        spec.ports = vec![PortSpec::tcp(8080, 80)];
        spec.limits = ResourceSpec {
            memory_bytes: 64 << 20,
            nano_cpus: 0,
        };
        spec.health_check = Some(HealthCheckSpec::shell("wget -q localhost"));
        spec.stop_grace_ms = 1_500;
        create(&mut s, "s1", spec);
        let mut g = ServiceSpec::new("agent", "/usr/bin/agent");
        g.driver = "process".into();
        g.mode = ServiceMode::Global;
        create(&mut s, "g1", g);
        converge(&mut s, 1_000);
        let all: Vec<Assignment> = ["n1", "n2", "n3"]
            .iter()
            .flat_map(|n| assignments_for(&s.services, n))
            .collect();
        assert_eq!(all.len(), 6);
        let mut slots: Vec<u64> = all
            .iter()
            .filter(|a| a.service_id == "s1")
            .map(|a| a.slot)
            .collect();
        slots.sort_unstable();
        assert_eq!(slots, vec![1, 2, 3]);
        let a = all.iter().find(|a| a.service_id == "s1").unwrap();
        assert_eq!(a.driver, "docker");
        assert_eq!(a.desired, crate::worker::DesiredState::Running);
        assert_eq!(a.spec.task_id, a.task_id);
        assert_eq!(a.spec.service_id, "s1");
        assert_eq!(a.spec.service_name, "web");
        assert_eq!(a.spec.slot, a.slot);
        assert_eq!(a.spec.image, "shoal-test/busybox:latest");
        assert_eq!(a.spec.args, vec!["httpd", "-f"]);
        assert_eq!(a.spec.env.get("A").map(String::as_str), Some("1"));
        assert_eq!(a.spec.labels.get("team").map(String::as_str), Some("x"));
        assert_eq!(a.spec.ports, vec![80]);
        assert_eq!(a.spec.resources.memory_bytes, Some(64 << 20));
        assert_eq!(a.spec.resources.nano_cpus, None);
        assert_eq!(a.spec.stop_grace, Duration::from_millis(1_500));
        let h = a.spec.health.as_ref().unwrap();
        assert_eq!(h.test, HealthTest::Shell("wget -q localhost".into()));
        assert_eq!(h.interval, Duration::from_secs(30));
        let g: Vec<&Assignment> = all.iter().filter(|a| a.service_id == "g1").collect();
        assert_eq!(g.len(), 3);
        assert!(g.iter().all(|a| a.slot == 0 && a.driver == "process"));
        let row = ServiceRow::of(&s.services, &s.services.services["g1"]);
        assert_eq!(
            (row.mode.as_str(), row.replicas, row.running),
            ("global", None, 3)
        );
        assert_eq!(row.desired_tasks, 3);

        // Tasks keep the spec they were created from until replaced.
        let mut v2 = s.services.services["s1"].spec.clone();
        v2.image = "img:v2".into();
        svc(&mut s, ServiceCommand::update("s1", v2, 2_000));
        let a = assignments_for(&s.services, "n1")
            .into_iter()
            .find(|a| a.service_id == "s1")
            .unwrap();
        assert_eq!(a.spec.image, "shoal-test/busybox:latest");
    }

    #[test]
    fn view_maps_nodes_and_services() {
        let mut s = cluster();
        let mut spec = replicated("web", 2);
        spec.constraints = vec!["node.labels.zone==attic".into()];
        spec.max_replicas_per_node = 1;
        spec.reservations.nano_cpus = 500_000_000;
        spec.restart_policy.condition = RestartCondition::OnFailure;
        create(&mut s, "s1", spec);
        let view = to_view(&s.services, &s.nodes, &s.facilities);
        assert_eq!(view.nodes.len(), 3);
        let n1 = view.nodes.iter().find(|n| n.id.as_str() == "n1").unwrap();
        assert_eq!(n1.role, shoal_scheduler::NodeRole::Manager);
        assert_eq!(n1.capacity.nano_cpus, 4_000_000_000);
        assert!(n1.drivers.contains("docker"));
        let sv = &view.services[0];
        assert_eq!(sv.constraints.len(), 1);
        assert_eq!(sv.max_replicas_per_node, Some(1));
        assert_eq!(sv.reservations.nano_cpus, 500_000_000);
        assert_eq!(
            sv.restart_policy.condition,
            shoal_scheduler::RestartCondition::OnFailure
        );
        assert_eq!(sv.spec_version, 1);
        // No node has the label: pending with the reason, then placed when one gets it.
        orchestrate(&mut s, 1_000);
        assert!(
            s.services
                .tasks
                .values()
                .all(|t| t.state == TaskState::Pending)
        );
        let mut add = BTreeMap::new();
        add.insert("zone".to_string(), "attic".to_string());
        s.apply(&Command::UpdateNode {
            id: "n2".into(),
            availability: None,
            label_add: add,
            label_rm: vec![],
            at: 1_001,
        });
        converge(&mut s, 1_010);
        // max one per node: one runs on n2, the other stays pending.
        assert_eq!(active_on(&s, "s1").get("n2"), Some(&1));
        assert_eq!(
            s.services
                .tasks
                .values()
                .filter(|t| t.state == TaskState::Pending)
                .count(),
            1
        );
    }
}
