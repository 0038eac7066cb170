//! Failure detection and dissemination figures from the simulator.
//!
//! `cargo run --release -p shoal-membership --example swim_figures [-- --quick] [--only N]
//! [--bootstrap-1000]` (the last adds a 1000-node row that joins through one address: ~5 min)
//!
//! For 10, 100 and 1000 nodes at 0 % and 5 % packet loss (one-way delay 1–3 ms), over several
//! seeds: each seed builds a cluster that joins through one seed address (or, for the 1000-node
//! rows marked `w`, starts warm from a full member list: the bootstrap storm of 1000
//! simultaneous joins costs minutes of wall time), waits for convergence, then runs trials:
//! - *detect first / detect all*: a random node is killed at a random instant; time until the
//!   first node, then every node, reports it down;
//! - *fact*: a random node publishes a fact; time until every other node has it;
//! - *join*: a new node joins through a random member; time until every node sees it up.
//!
//! Also prints the time to converge and the false downs (must be 0).

use std::time::{Duration, Instant};

use rand::rngs::Xoshiro256PlusPlus;
use rand::{RngExt, SeedableRng};
use shoal_membership::FactBody;
use shoal_membership::sim::{PeerState, Sim, SimConfig};

struct Row {
    converge: Vec<f64>,
    converge_wall: Vec<f64>,
    detect_first: Vec<f64>,
    detect_all: Vec<f64>,
    fact: Vec<f64>,
    join: Vec<f64>,
    false_downs: u64,
    timeouts: u64,
    packets_per_node_sec: Vec<f64>,
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn fmt(v: &mut [f64]) -> String {
    format!("{:>5.2} / {:>5.2}", pct(v, 50.0), pct(v, 99.0))
}

fn run(n: usize, loss: f64, seeds: u64, trials: usize, warm: bool) -> Row {
    let mut row = Row {
        converge: vec![],
        converge_wall: vec![],
        detect_first: vec![],
        detect_all: vec![],
        fact: vec![],
        join: vec![],
        false_downs: 0,
        timeouts: 0,
        packets_per_node_sec: vec![],
    };
    let limit = Duration::from_secs(60);
    let poll = Duration::from_millis(10);
    for seed in 0..seeds {
        let mut cfg = SimConfig::lan(seed * 7919 + n as u64);
        cfg.loss = loss;
        let wall = Instant::now();
        let mut sim = Sim::new(cfg);
        if warm {
            sim.add_nodes_warm(n);
        } else {
            let first = sim.add_node();
            sim.add_nodes_joining(n - 1, first);
        }
        match sim.run_until_cond(
            Duration::from_secs(120),
            Duration::from_millis(100),
            Sim::converged,
        ) {
            Some(t) => {
                row.converge.push(t.as_secs_f64());
                row.converge_wall.push(wall.elapsed().as_secs_f64());
            }
            None => {
                row.timeouts += 1;
                continue;
            }
        }
        let mut rng = Xoshiro256PlusPlus::seed_from_u64(seed);
        let p0 = sim.stats().packets_sent;
        let t0 = sim.now();
        for _ in 0..trials {
            // Detection.
            sim.run_for(Duration::from_millis(rng.random_range(0..1000)));
            let members = sim.members();
            let victim = members[rng.random_range(0..members.len())];
            sim.kill(victim);
            let first_seen = sim.run_until_cond(limit, poll, |s| {
                s.count_views(victim, |v| v.state == PeerState::Down) > 0
            });
            let all_seen = sim.run_until_cond(limit, poll, |s| s.all_see_gone(victim));
            match (first_seen, all_seen) {
                (Some(a), Some(b)) => {
                    row.detect_first.push(a.as_secs_f64());
                    row.detect_all.push((a + b).as_secs_f64());
                }
                _ => row.timeouts += 1,
            }
            // Fact dissemination.
            let members = sim.members();
            let origin = members[rng.random_range(0..members.len())];
            let tag = rng.random_range(0..u16::MAX);
            if let Some(fact) = sim.publish(
                origin,
                FactBody::App {
                    tag,
                    data: vec![1; 16],
                },
            ) {
                let others = members.len() - 1;
                match sim.run_until_cond(limit, poll, |s| s.count_knowing(&fact) == others) {
                    Some(t) => row.fact.push(t.as_secs_f64()),
                    None => row.timeouts += 1,
                }
            }
            // Join dissemination (keeps the cluster size steady).
            let members = sim.members();
            let via = members[rng.random_range(0..members.len())];
            let newcomer = sim.add_node();
            sim.join(newcomer, via);
            match sim.run_until_cond(limit, poll, |s| {
                s.members()
                    .into_iter()
                    .all(|o| o == newcomer || s.sees_current(o, newcomer))
            }) {
                Some(t) => row.join.push(t.as_secs_f64()),
                None => row.timeouts += 1,
            }
        }
        let dt = (sim.now() - t0).as_secs_f64();
        row.packets_per_node_sec
            .push((sim.stats().packets_sent - p0) as f64 / dt / n as f64);
        row.false_downs += sim.stats().false_downs;
    }
    row
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    // `--only N` runs one cluster size.
    let only: Option<usize> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok());
    // (nodes, seeds, trials per seed, warm start)
    let plan: Vec<(usize, u64, usize, bool)> = if quick {
        vec![(10, 10, 5, false), (100, 4, 5, false), (1000, 1, 3, true)]
    } else {
        vec![
            (10, 100, 10, false),
            (100, 25, 8, false),
            (1000, 2, 4, true),
        ]
    };
    let mut plan = plan;
    if args.iter().any(|a| a == "--bootstrap-1000") {
        plan.push((1000, 1, 2, false));
    }
    let plan: Vec<_> = plan
        .into_iter()
        .filter(|(n, _, _, _)| only.is_none_or(|o| o == *n))
        .collect();
    let t = shoal_membership::Tuning::lan();
    println!(
        "SWIM LAN profile: probe {:?} / rtt {:?}, {} indirect probes, gossip every {:?} to {}, \
         max packet {} B; one-way delay 1-3 ms",
        t.probe_period,
        t.probe_rtt,
        t.num_indirect_probes,
        t.gossip_period,
        t.gossip_fanout,
        t.max_packet_size
    );
    println!(
        "times in seconds of virtual time, p50 / p99 over all trials (seeds x trials per seed)"
    );
    println!(
        "nodes marked w start warm (every node restored with the full member list; 'converge' \
         is then the time to a consistent view); others all join at once via one seed address"
    );
    println!(
        "{:>5} {:>5} {:>11} {:>7} {:>13} {:>13} {:>13} {:>13} {:>13} {:>9} {:>6} {:>8}",
        "nodes",
        "loss",
        "seeds x tr",
        "susp s",
        "converge",
        "detect first",
        "detect all",
        "fact to all",
        "join seen",
        "pkt/n/s",
        "false",
        "timeouts"
    );
    for &(n, seeds, trials, warm) in &plan {
        for loss in [0.0, 0.05] {
            let start = Instant::now();
            let mut r = run(n, loss, seeds, trials, warm);
            let pps = pct(&mut r.packets_per_node_sec, 50.0);
            println!(
                "{:>4}{} {:>4.0}% {:>6} x {:<2} {:>7.2} {:>13} {:>13} {:>13} {:>13} {:>13} {:>9.1} {:>6} {:>8}   ({:.0?} wall, {:.0}s of it bootstrapping)",
                n,
                if warm { "w" } else { " " },
                loss * 100.0,
                seeds,
                trials,
                t.suspicion(n as u32).as_secs_f64(),
                fmt(&mut r.converge),
                fmt(&mut r.detect_first),
                fmt(&mut r.detect_all),
                fmt(&mut r.fact),
                fmt(&mut r.join),
                pps,
                r.false_downs,
                r.timeouts,
                start.elapsed(),
                r.converge_wall.iter().sum::<f64>()
            );
        }
    }
}
