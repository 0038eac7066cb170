//! Placement: node filters, spread, and pending reasons that count why nothing fits.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::constraint::Constraint;
use crate::model::{Availability, Node, NodeStatus, Resources, Service};

/// One reason a node was rejected for a task. Each node is counted under the first filter it
/// fails, in the order of the variants (status, availability, constraints in the service's
/// order, driver, max replicas per node, memory, CPU).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum FilterFailure {
    /// The node's status is `down`.
    Down,
    /// The node's status is `unknown`.
    StatusUnknown,
    /// The node is drained.
    Drained,
    /// The node is paused.
    Paused,
    /// The node does not satisfy this constraint.
    Constraint(Constraint),
    /// The node does not offer this driver.
    MissingDriver(String),
    /// The node already runs this many tasks of the service (the service's maximum per node).
    MaxReplicasPerNode(u64),
    /// Not enough unreserved memory for this reservation (bytes).
    InsufficientMemory(u64),
    /// Not enough unreserved CPU for this reservation (nano-CPUs).
    InsufficientCpu(u64),
    /// The node does not run privileged tasks (its daemon lacks `--allow-privileged`).
    NotPrivileged,
    /// The node does not have this device.
    MissingDevice(String),
}

impl FilterFailure {
    /// Rank used to order reasons with equal counts (the filter order).
    fn rank(&self) -> u8 {
        match self {
            Self::Down => 0,
            Self::StatusUnknown => 1,
            Self::Drained => 2,
            Self::Paused => 3,
            Self::Constraint(_) => 4,
            Self::MissingDriver(_) => 5,
            Self::MaxReplicasPerNode(_) => 6,
            Self::InsufficientMemory(_) => 7,
            Self::InsufficientCpu(_) => 8,
            Self::NotPrivileged => 9,
            Self::MissingDevice(_) => 10,
        }
    }

    fn describe(&self, count: u64, total: u64) -> String {
        let one = count == 1;
        let nodes = if one {
            "1 node".to_owned()
        } else {
            format!("{count} nodes")
        };
        let (is, has, lacks, runs) = if one {
            ("is", "has", "lacks", "runs")
        } else {
            ("are", "have", "lack", "run")
        };
        match self {
            Self::Down => format!("{nodes} {is} down"),
            Self::StatusUnknown => format!("{nodes} {has} unknown status"),
            Self::Drained => format!("{nodes} {is} drained"),
            Self::Paused => format!("{nodes} {is} paused"),
            Self::Constraint(c) => {
                let of = if total == 1 { "node" } else { "nodes" };
                format!("{count} of {total} {of} {}", c.failure_phrase(one))
            }
            Self::MissingDriver(d) => format!("{nodes} {lacks} driver {d}"),
            Self::MaxReplicasPerNode(max) => {
                let tasks = if *max == 1 { "task" } else { "tasks" };
                format!(
                    "{nodes} already {runs} the maximum of {max} {tasks} of this service per node"
                )
            }
            Self::InsufficientMemory(bytes) => {
                format!(
                    "{nodes} {has} insufficient free memory for {}",
                    format_bytes(*bytes)
                )
            }
            Self::InsufficientCpu(nano) => {
                format!(
                    "{nodes} {has} insufficient free CPU for {}",
                    format_cpus(*nano)
                )
            }
            Self::NotPrivileged => {
                let (does, allow) = if one {
                    ("does", "allow")
                } else {
                    ("do", "allow")
                };
                format!("{nodes} {does} not {allow} privileged tasks (daemon --allow-privileged)")
            }
            Self::MissingDevice(d) => format!("{nodes} {lacks} device {d}"),
        }
    }
}

/// How many nodes failed one filter.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FilterCount {
    /// The filter.
    pub filter: FilterFailure,
    /// How many nodes failed it (as their first failing filter).
    pub nodes: u64,
}

/// Why a task is pending: how many nodes were considered and, per filter, how many failed it.
/// `failures` is ordered by count (most first), then filter order; the counts add up to
/// `total_nodes`.
///
/// Displays as e.g. `no suitable node: 2 of 3 nodes lack label zone=attic; 1 node is drained`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PendingReason {
    /// Nodes considered (all nodes, or the one node of a global task).
    pub total_nodes: u64,
    /// Per-filter counts.
    pub failures: Vec<FilterCount>,
}

impl PendingReason {
    /// Builds a reason from per-node failures (any order; sorted here).
    #[must_use]
    pub fn from_failures(
        total_nodes: u64,
        failures: impl IntoIterator<Item = FilterFailure>,
    ) -> Self {
        let mut sorted: Vec<FilterFailure> = failures.into_iter().collect();
        sorted.sort();
        let mut counts: Vec<FilterCount> = Vec::new();
        for f in sorted {
            match counts.last_mut() {
                Some(last) if last.filter == f => last.nodes += 1,
                _ => counts.push(FilterCount {
                    filter: f,
                    nodes: 1,
                }),
            }
        }
        Self::from_counts(total_nodes, counts)
    }

    fn from_counts(total_nodes: u64, mut failures: Vec<FilterCount>) -> Self {
        failures.sort_by(|a, b| {
            b.nodes
                .cmp(&a.nodes)
                .then(a.filter.rank().cmp(&b.filter.rank()))
                .then(a.filter.cmp(&b.filter))
        });
        Self {
            total_nodes,
            failures,
        }
    }
}

impl fmt::Display for PendingReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("no suitable node: ")?;
        if self.total_nodes == 0 {
            return f.write_str("the cluster has no nodes");
        }
        for (i, c) in self.failures.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            f.write_str(&c.filter.describe(c.nodes, self.total_nodes))?;
        }
        Ok(())
    }
}

fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size {
            return if bytes.is_multiple_of(size) {
                format!("{} {unit}", bytes / size)
            } else {
                format!("{:.1} {unit}", bytes as f64 / size as f64)
            };
        }
    }
    format!("{bytes} B")
}

fn format_cpus(nano: u64) -> String {
    let whole = nano / 1_000_000_000;
    let frac = nano % 1_000_000_000;
    let word = if nano == 1_000_000_000 { "CPU" } else { "CPUs" };
    if frac == 0 {
        format!("{whole} {word}")
    } else {
        let s = format!("{whole}.{frac:09}");
        format!("{} {word}", s.trim_end_matches('0'))
    }
}

/// The static filters (everything but per-node usage) for placing a *new* task of `service` on
/// `node`: status ready, availability active, constraints, driver, privileges, devices.
///
/// # Errors
/// The first filter the node fails.
pub fn check_static(node: &Node, service: &Service) -> Result<(), FilterFailure> {
    match node.status {
        NodeStatus::Ready => {}
        NodeStatus::Down => return Err(FilterFailure::Down),
        NodeStatus::Unknown => return Err(FilterFailure::StatusUnknown),
    }
    match node.availability {
        Availability::Active => {}
        Availability::Drain => return Err(FilterFailure::Drained),
        Availability::Pause => return Err(FilterFailure::Paused),
    }
    if let Some(c) = service.constraints.iter().find(|c| !c.matches(node)) {
        return Err(FilterFailure::Constraint(c.clone()));
    }
    if !node.drivers.contains(&service.driver) {
        return Err(FilterFailure::MissingDriver(service.driver.clone()));
    }
    if service.privileged && !node.allows_privileged {
        return Err(FilterFailure::NotPrivileged);
    }
    if let Some(have) = &node.devices
        && let Some(d) = service.devices.iter().find(|d| !have.contains(*d))
    {
        return Err(FilterFailure::MissingDevice(d.clone()));
    }
    Ok(())
}

/// Why an already placed task of `service` must leave `node`, if it must: the node is drained,
/// no longer satisfies a constraint, or no longer offers the driver. Paused and `unknown` nodes
/// keep their tasks; `down` nodes are handled by orphaning.
#[must_use]
pub fn must_leave(node: &Node, service: &Service) -> Option<FilterFailure> {
    if node.availability == Availability::Drain {
        return Some(FilterFailure::Drained);
    }
    if let Some(c) = service.constraints.iter().find(|c| !c.matches(node)) {
        return Some(FilterFailure::Constraint(c.clone()));
    }
    if !node.drivers.contains(&service.driver) {
        return Some(FilterFailure::MissingDriver(service.driver.clone()));
    }
    None
}

/// The dynamic filters: max replicas per node, then free memory, then free CPU.
///
/// # Errors
/// The first filter the node fails.
pub fn check_dynamic(
    capacity: Resources,
    reserved: Resources,
    service_tasks_on_node: u64,
    max_per_node: Option<u64>,
    need: Resources,
) -> Result<(), FilterFailure> {
    if let Some(max) = max_per_node
        && service_tasks_on_node >= max
    {
        return Err(FilterFailure::MaxReplicasPerNode(max));
    }
    let free = capacity.saturating_sub(reserved);
    if need.memory_bytes > 0 && need.memory_bytes > free.memory_bytes {
        return Err(FilterFailure::InsufficientMemory(need.memory_bytes));
    }
    if need.nano_cpus > 0 && need.nano_cpus > free.nano_cpus {
        return Err(FilterFailure::InsufficientCpu(need.nano_cpus));
    }
    Ok(())
}

/// Per-node usage during one reconcile pass. Nodes are addressed by their index in the pass's
/// sorted node list.
#[derive(Debug)]
pub(crate) struct Usage {
    /// Resources reserved by non-terminal tasks.
    pub reserved: Vec<Resources>,
    /// Active tasks (desired running, not terminal), all services: spread's second key.
    pub active: Vec<u64>,
}

/// Places the tasks of one service (one reservation size) onto nodes, keeping a heap ordered by
/// spread: fewest tasks of this service, then fewest tasks overall, then node ID.
pub(crate) struct ServicePlacer {
    need: Resources,
    max_per_node: Option<u64>,
    heap: BinaryHeap<Reverse<(u64, u64, usize)>>,
    total_nodes: u64,
    failures: Vec<FilterFailure>,
    exhausted: Option<PendingReason>,
}

impl ServicePlacer {
    /// `eligible` are the indices of the nodes that pass the static filters (sorted by ID);
    /// `static_failures` the failures of the others.
    pub fn new(
        service: &Service,
        need: Resources,
        eligible: &[usize],
        static_failures: &[FilterFailure],
        usage: &Usage,
        service_counts: &[u64],
    ) -> Self {
        let heap = eligible
            .iter()
            .map(|&i| Reverse((service_counts[i], usage.active[i], i)))
            .collect();
        Self {
            need,
            max_per_node: service.max_replicas_per_node,
            heap,
            total_nodes: (eligible.len() + static_failures.len()) as u64,
            failures: static_failures.to_vec(),
            exhausted: None,
        }
    }

    /// The reservation this placer places.
    pub fn need(&self) -> Resources {
        self.need
    }

    /// Picks a node for one task and records its usage, or says why none fits. Nodes that fail a
    /// dynamic filter are dropped for the rest of this placer's life (usage only grows within a
    /// pass).
    pub fn place(
        &mut self,
        capacity: &[Resources],
        usage: &mut Usage,
        service_counts: &mut [u64],
    ) -> Result<usize, PendingReason> {
        if let Some(reason) = &self.exhausted {
            return Err(reason.clone());
        }
        while let Some(Reverse((svc, total, i))) = self.heap.pop() {
            if svc != service_counts[i] || total != usage.active[i] {
                // Stale entry (counts changed since it was pushed): re-queue with fresh keys.
                self.heap
                    .push(Reverse((service_counts[i], usage.active[i], i)));
                continue;
            }
            match check_dynamic(
                capacity[i],
                usage.reserved[i],
                svc,
                self.max_per_node,
                self.need,
            ) {
                Ok(()) => {
                    usage.reserved[i] = usage.reserved[i].saturating_add(self.need);
                    usage.active[i] += 1;
                    service_counts[i] += 1;
                    self.heap
                        .push(Reverse((service_counts[i], usage.active[i], i)));
                    return Ok(i);
                }
                Err(f) => self.failures.push(f),
            }
        }
        let reason = PendingReason::from_failures(self.total_nodes, self.failures.drain(..));
        self.exhausted = Some(reason.clone());
        Err(reason)
    }
}
