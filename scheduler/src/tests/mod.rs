//! Table-style unit tests. Shared builders live here; each area has its own module.

use std::collections::{BTreeMap, BTreeSet};

use crate::*;

mod constraints;
mod placement;
mod reconcile;
mod update;
mod words;

pub(crate) const T0: Timestamp = Timestamp(1_700_000_000_000);
pub(crate) const GIB: u64 = 1 << 30;
pub(crate) const CPU: u64 = 1_000_000_000;

pub(crate) fn node(id: &str) -> Node {
    Node {
        id: NodeId::from(id),
        hostname: format!("host-{id}"),
        role: NodeRole::Worker,
        status: NodeStatus::Ready,
        availability: Availability::Active,
        labels: BTreeMap::new(),
        capacity: Resources {
            memory_bytes: 8 * GIB,
            nano_cpus: 8 * CPU,
        },
        drivers: BTreeSet::from(["docker".to_owned(), "process".to_owned()]),
        allows_privileged: false,
        devices: None,
    }
}

pub(crate) fn nodes(ids: &[&str]) -> Vec<Node> {
    ids.iter().map(|id| node(id)).collect()
}

pub(crate) fn service(id: &str, replicas: u64) -> Service {
    Service {
        id: ServiceId::from(id),
        name: format!("svc-{id}"),
        mode: ServiceMode::Replicated { replicas },
        driver: "docker".to_owned(),
        privileged: false,
        devices: Vec::new(),
        constraints: Vec::new(),
        reservations: Resources::ZERO,
        max_replicas_per_node: None,
        restart_policy: RestartPolicy::default(),
        spec_version: 1,
        update: None,
    }
}

pub(crate) fn global(id: &str) -> Service {
    Service {
        mode: ServiceMode::Global,
        ..service(id, 0)
    }
}

pub(crate) fn cfg() -> ReconcileConfig {
    ReconcileConfig::default()
}

pub(crate) fn view(nodes: Vec<Node>, services: Vec<Service>) -> ClusterView {
    ClusterView {
        nodes,
        services,
        tasks: Vec::new(),
        health: Default::default(),
    }
}

/// Reconciles, applies and runs workers until nothing changes; panics if it does not converge.
pub(crate) fn settle(view: &mut ClusterView, now: Timestamp) -> Timestamp {
    match sim::converge(view, now, 100, 200, &cfg()) {
        Ok(c) => c.now,
        Err(e) => panic!("did not converge: {e}"),
    }
}

/// Active tasks (desired running, not terminal) of a service per node ("" for unassigned).
pub(crate) fn spread(view: &ClusterView, service: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for t in view
        .tasks
        .iter()
        .filter(|t| t.service_id.as_str() == service && t.is_active())
    {
        let node = t.node_id.as_ref().map_or(String::new(), |n| n.0.clone());
        *out.entry(node).or_insert(0) += 1;
    }
    out
}

pub(crate) fn counts(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

pub(crate) fn active<'a>(view: &'a ClusterView, service: &str) -> Vec<&'a Task> {
    view.tasks
        .iter()
        .filter(|t| t.service_id.as_str() == service && t.is_active())
        .collect()
}

pub(crate) fn task_in_slot<'a>(view: &'a ClusterView, service: &str, slot: u64) -> &'a Task {
    let found: Vec<&Task> = active(view, service)
        .into_iter()
        .filter(|t| t.slot == Slot::Replica(slot))
        .collect();
    assert_eq!(found.len(), 1, "slot {slot} of {service}: {found:?}");
    found[0]
}

pub(crate) fn node_mut<'a>(view: &'a mut ClusterView, id: &str) -> &'a mut Node {
    match view.nodes.iter_mut().find(|n| n.id.as_str() == id) {
        Some(n) => n,
        None => panic!("no node {id}"),
    }
}

pub(crate) fn service_mut<'a>(view: &'a mut ClusterView, id: &str) -> &'a mut Service {
    match view.services.iter_mut().find(|s| s.id.as_str() == id) {
        Some(s) => s,
        None => panic!("no service {id}"),
    }
}

pub(crate) fn pending_reasons(view: &ClusterView, service: &str) -> Vec<String> {
    active(view, service)
        .iter()
        .filter(|t| t.state == TaskState::Pending)
        .map(|t| {
            t.pending_reason
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default()
        })
        .collect()
}

#[test]
fn model_and_plan_round_trip_through_postcard() {
    let mut v = view(nodes(&["a", "b"]), vec![service("s", 3), global("g")]);
    v.services[0].constraints = Constraint::parse_all(&["node.labels.zone!=x"]).unwrap_or_default();
    v.services[0].max_replicas_per_node = Some(1);
    let plan = reconcile(&v, T0, &cfg());
    assert!(plan.decisions.iter().any(|d| matches!(
        d,
        Decision::UpdatePending { .. }
            | Decision::CreateTask(Task {
                pending_reason: Some(_),
                ..
            })
    )));
    let bytes = postcard::to_stdvec(&plan).expect("serialize plan");
    let back: Plan = postcard::from_bytes(&bytes).expect("deserialize plan");
    assert_eq!(back, plan);
    v.apply(&plan.decisions, T0).expect("apply");
    let bytes = postcard::to_stdvec(&v).expect("serialize view");
    let back: ClusterView = postcard::from_bytes(&bytes).expect("deserialize view");
    assert_eq!(back, v);
}
