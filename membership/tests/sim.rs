//! Cluster scenarios on the simulator. Each test is seeded and deterministic.

use std::time::Duration;

use shoal_membership::sim::{
    NodeIx, PeerState, Sim, SimConfig, fact_push_packet, gossip_packet, sim_node_id, sim_node_key,
};
use shoal_membership::{
    Fact, FactBody, FactKind, FactSignature, FactVersion, MAX_DATAGRAM, NodeRole,
};

const POLL: Duration = Duration::from_millis(20);

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s)
}

/// `n` nodes joining through node 0, run until converged (asserted).
fn converged_cluster(cfg: SimConfig, n: usize, limit: Duration) -> (Sim, Duration) {
    let mut sim = Sim::new(cfg);
    let seed = sim.add_node();
    sim.add_nodes_joining(n - 1, seed);
    let took = sim
        .run_until_cond(limit, Duration::from_millis(100), Sim::converged)
        .unwrap_or_else(|| {
            panic!(
                "{n} nodes did not converge within {limit:?}; errors: {:?}",
                &sim.errors()[..sim.errors().len().min(5)]
            )
        });
    (sim, took)
}

fn assert_clean(sim: &Sim) {
    let st = sim.stats();
    assert_eq!(st.packet_errors, 0, "packet errors: {:?}", sim.errors());
    assert_eq!(st.timer_errors, 0, "timer errors: {:?}", sim.errors());
    assert!(sim.errors().is_empty(), "errors: {:?}", sim.errors());
    assert!(
        st.max_packet <= MAX_DATAGRAM,
        "datagram of {} bytes",
        st.max_packet
    );
}

#[test]
fn hundred_nodes_converge_from_one_seed_address() {
    let mut cfg = SimConfig::lan(100);
    cfg.publish_roles = true;
    let (mut sim, took) = converged_cluster(cfg, 100, secs(60.0));
    eprintln!("100 nodes converged in {took:?}, {:?}", sim.stats());
    assert_clean(&sim);
    // Every node knows every other node's role, whenever it joined.
    let all_roles = sim.run_until_cond(secs(30.0), Duration::from_millis(250), |s| {
        (0..100).all(|o| (0..100).all(|t| o == t || s.fact_at(o, t, FactKind::Role).is_some()))
    });
    assert!(all_roles.is_some(), "role facts did not reach everyone");
    let manager = sim.fact_at(50, 1, FactKind::Role).map(|f| f.body);
    assert_eq!(manager, Some(FactBody::Role(NodeRole::Manager)));
    let worker = sim.fact_at(1, 50, FactKind::Role).map(|f| f.body);
    assert_eq!(worker, Some(FactBody::Role(NodeRole::Worker)));
    // Nobody was ever declared down while everything was healthy.
    assert_eq!(sim.stats().downs, 0);
    assert_clean(&sim);
}

#[test]
fn killed_node_is_seen_down_by_all_within_three_seconds() {
    for seed in [1u64, 2, 3, 4, 5] {
        let (mut sim, _) = converged_cluster(SimConfig::lan(seed), 50, secs(30.0));
        let victim: NodeIx = 17 + seed as usize;
        sim.kill(victim);
        let took = sim
            .run_until_cond(secs(10.0), POLL, |s| s.all_see_gone(victim))
            .expect("every node sees the killed node down");
        eprintln!("seed {seed}: killed node seen down by all after {took:?}");
        assert!(took <= secs(3.0), "seed {seed}: took {took:?}");
        assert_eq!(
            sim.count_views(victim, |v| v.state == PeerState::Down),
            sim.members().len(),
            "every survivor reports a down, not a leave"
        );
        assert_eq!(sim.stats().false_downs, 0, "{:?}", sim.false_downs());
        assert_clean(&sim);
    }
}

#[test]
fn node_that_changes_address_keeps_its_identity() {
    let (mut sim, _) = converged_cluster(SimConfig::lan(7), 30, secs(30.0));
    let mover = 12;
    let before = sim.identity(mover).expect("running");
    let downs_before = sim.stats().downs;
    let new_addr = sim.change_addr(mover);
    let took = sim
        .run_until_cond(secs(10.0), POLL, Sim::converged)
        .expect("everyone sees the new address");
    eprintln!("address change seen by all after {took:?}");
    let after = sim.identity(mover).expect("running");
    assert_eq!(after.id, before.id);
    assert_eq!(after.addr, new_addr);
    assert!(after.bump > before.bump);
    for o in sim.members() {
        if o == mover {
            continue;
        }
        let m = sim.membership(o).expect("running");
        assert_eq!(m.num_members(), 29, "no duplicate member at node {o}");
        assert_eq!(m.member(&before.id).map(|i| i.addr), Some(new_addr));
        assert_eq!(sim.view(o, mover).state, PeerState::Up);
    }
    assert_eq!(
        sim.stats().downs,
        downs_before,
        "an address change is not a down"
    );
    // The old address is dead, yet the node keeps being probed successfully.
    sim.run_for(secs(20.0));
    assert!(sim.converged());
    assert_eq!(sim.stats().false_downs, 0);
    assert_clean(&sim);
}

#[test]
fn partition_heals_into_one_view() {
    let (mut sim, _) = converged_cluster(SimConfig::lan(11), 40, secs(30.0));
    let left: Vec<NodeIx> = (0..20).collect();
    let right: Vec<NodeIx> = (20..40).collect();
    sim.partition(&[left, right]);
    // Long enough for each side to declare the other down.
    let split = sim.run_until_cond(secs(30.0), Duration::from_millis(100), |s| {
        (0..20).all(|a| (20..40).all(|b| s.view(a, b).state == PeerState::Down))
            && (20..40).all(|a| (0..20).all(|b| s.view(a, b).state == PeerState::Down))
    });
    assert!(split.is_some(), "each side sees the other down");
    sim.heal();
    let took = sim
        .run_until_cond(secs(30.0), Duration::from_millis(100), Sim::converged)
        .expect("one view after healing");
    eprintln!("partition healed into one view after {took:?}");
    assert_clean(&sim);
}

#[test]
fn restarted_node_is_back_up_at_once() {
    let (mut sim, _) = converged_cluster(SimConfig::lan(21), 30, secs(30.0));
    let node = 9;
    let before = sim.identity(node).expect("running");
    sim.restart(node, 0);
    let after = sim.identity(node).expect("running");
    assert_eq!(after.id, before.id);
    assert!(after.bump > before.bump, "a new boot has a larger bump");
    let took = sim
        .run_until_cond(secs(5.0), POLL, Sim::converged)
        .expect("restarted node back in everyone's view");
    eprintln!("restarted node seen up by all after {took:?}");
    assert!(took <= secs(2.0), "took {took:?}");
    // The old boot was replaced, never reported down.
    assert_eq!(sim.stats().downs, 0);
    assert_clean(&sim);
}

#[test]
fn long_run_at_five_percent_loss_has_no_false_downs() {
    let mut cfg = SimConfig::lan(31);
    cfg.jitter = Duration::from_millis(5);
    let (mut sim, _) = converged_cluster(cfg, 50, secs(30.0));
    sim.set_loss(0.05);
    sim.run_for(secs(200.0));
    let st = sim.stats();
    eprintln!("5% loss, 50 nodes, 200 s: {st:?}");
    assert!(st.packets_dropped > 1000, "loss was applied");
    assert_eq!(st.false_downs, 0, "{:?}", sim.false_downs());
    assert_eq!(st.downs, 0);
    assert!(sim.converged());
    assert_clean(&sim);
}

#[test]
fn leaving_is_told_apart_from_a_crash() {
    let (mut sim, _) = converged_cluster(SimConfig::lan(41), 30, secs(30.0));
    sim.leave(5);
    sim.kill(6);
    let took = sim.run_until_cond(secs(10.0), POLL, |s| s.all_see_gone(5) && s.all_see_gone(6));
    assert!(took.is_some());
    assert_eq!(sim.count_views(5, |v| v.state == PeerState::Left), 28);
    assert_eq!(sim.count_views(6, |v| v.state == PeerState::Down), 28);
    assert_eq!(sim.stats().false_downs, 0);
    assert_clean(&sim);
}

#[test]
fn newest_fact_wins_everywhere() {
    let (mut sim, _) = converged_cluster(SimConfig::lan(51), 40, secs(30.0));
    let first = sim
        .publish(
            3,
            FactBody::LeaderHint {
                term: 1,
                leader: None,
            },
        )
        .expect("published");
    let second = sim
        .publish(
            3,
            FactBody::LeaderHint {
                term: 2,
                leader: Some(sim.identity(0).expect("running").id),
            },
        )
        .expect("published");
    assert!(second.version > first.version);
    let took = sim
        .run_until_cond(secs(10.0), POLL, |s| s.count_knowing(&second) == 39)
        .expect("fact reaches everyone");
    eprintln!("fact disseminated to 39 nodes in {took:?}");
    for o in sim.members() {
        if o != 3 {
            assert_eq!(
                sim.fact_at(o, 3, FactKind::LeaderHint),
                Some(second.clone())
            );
        }
    }
    // A restarted node's facts (new boot) replace those of its previous boot.
    sim.restart(3, 0);
    let third = sim
        .publish(
            3,
            FactBody::LeaderHint {
                term: 1,
                leader: None,
            },
        )
        .expect("published");
    assert!(
        third.version > second.version,
        "versions order by boot first"
    );
    sim.run_until_cond(secs(10.0), POLL, |s| s.count_knowing(&third) == 39)
        .expect("new boot's fact wins");
    assert_clean(&sim);
}

fn scenario_hash(seed: u64) -> (u64, u64) {
    let mut cfg = SimConfig::lan(seed);
    cfg.loss = 0.05;
    cfg.jitter = Duration::from_millis(4);
    cfg.publish_roles = true;
    let mut sim = Sim::new(cfg);
    let s = sim.add_node();
    sim.add_nodes_joining(24, s);
    sim.run_for(secs(10.0));
    sim.kill(4);
    sim.change_addr(7);
    sim.partition(&[(0..10).collect()]);
    sim.run_for(secs(8.0));
    sim.heal();
    sim.restart(4, 1);
    sim.run_for(secs(10.0));
    (sim.trace_hash(), sim.stats().steps)
}

#[test]
fn same_seed_same_trace() {
    let a = scenario_hash(99);
    let b = scenario_hash(99);
    assert_eq!(a, b, "two runs with one seed differ");
    let c = scenario_hash(100);
    assert_ne!(a.0, c.0, "another seed gives another trace");
}

// Issue 14: gossip claims are bound to their sender. Node `HOSTILE` plays a member that puts
// whatever it likes on the wire (`Sim::send_raw`); its datagrams are authenticated as itself.

/// A converged cluster of `n` nodes (0..3 managers) where every node knows every role.
fn cluster_with_roles(seed: u64, n: usize) -> Sim {
    let mut cfg = SimConfig::lan(seed);
    cfg.publish_roles = true;
    let (mut sim, _) = converged_cluster(cfg, n, secs(30.0));
    sim.run_until_cond(secs(20.0), Duration::from_millis(100), |s| {
        (0..n).all(|o| (0..n).all(|t| o == t || s.fact_at(o, t, FactKind::Role).is_some()))
    })
    .expect("roles reach everyone");
    sim
}

/// `hostile` sends `facts` to every other member, both as SWIM broadcasts (the epidemic path)
/// and as a fact push (the anti-entropy path).
fn spray(sim: &mut Sim, hostile: NodeIx, facts: &[Fact]) {
    let items: Vec<Vec<u8>> = facts.iter().map(|f| f.encode().expect("encodes")).collect();
    let me = sim.identity(hostile).expect("running");
    for to in sim.members() {
        if to == hostile {
            continue;
        }
        let dst = sim.identity(to).expect("running");
        sim.send_raw(hostile, to, gossip_packet(me, dst, &items));
        sim.send_raw(hostile, to, fact_push_packet(me, &items));
    }
}

fn version(bump: u64, seq: u64) -> FactVersion {
    FactVersion { bump, seq }
}

const HOSTILE: NodeIx = 10;

#[test]
fn issue_14_forged_fact_origin_is_dropped() {
    let n = 20;
    let mut sim = cluster_with_roles(140, n);
    let victim: NodeIx = 2; // a manager
    let victim_id = sim_node_id(victim);
    let genuine = sim.fact_at(0, victim, FactKind::Role).expect("known role");
    assert_eq!(genuine.body, FactBody::Role(NodeRole::Manager));
    let newer = version(genuine.version.bump, genuine.version.seq + 100);
    let demoted = FactBody::Role(NodeRole::Worker);
    let app = FactBody::App {
        tag: 7,
        data: b"victim says so".to_vec(),
    };
    let forged = [
        // No signature.
        Fact {
            version: newer,
            body: demoted.clone(),
            signature: FactSignature([0; 64]),
            ..genuine.clone()
        },
        // Signed, but by the hostile node's own key.
        Fact::signed(victim_id, newer, demoted.clone(), &sim_node_key(HOSTILE)).expect("signs"),
        // The victim's genuine signature, replayed on another body (same version, then newer).
        Fact {
            body: demoted.clone(),
            ..genuine.clone()
        },
        Fact {
            version: newer,
            body: demoted,
            ..genuine
        },
        // A kind the victim never published.
        Fact::signed(victim_id, newer, app, &sim_node_key(HOSTILE)).expect("signs"),
    ];
    spray(&mut sim, HOSTILE, &forged);
    sim.run_for(secs(5.0));
    for o in sim.members() {
        if o == victim {
            continue;
        }
        assert_eq!(
            sim.fact_at(o, victim, FactKind::Role).as_ref(),
            Some(&genuine),
            "node {o}: the victim's real role stands"
        );
        assert_eq!(sim.fact_at(o, victim, FactKind::App(7)), None, "node {o}");
        let m = sim.membership(o).expect("running");
        assert!(
            m.facts()
                .iter()
                .all(|f| f.verify().is_ok() && !forged.contains(f)),
            "node {o} holds a forged fact"
        );
    }
    // Every receiver but the victim (which ignores claims about itself) dropped the four
    // forgeries newer than what it knew, once per path; nobody relayed them.
    assert_eq!(sim.forged_facts(), 8 * (n as u64 - 2));
    // The packets themselves were well-formed and accepted.
    assert_clean(&sim);
    assert!(sim.converged());
}

#[test]
fn issue_14_forged_leader_hint_is_not_believed() {
    let n = 20;
    let mut sim = cluster_with_roles(141, n);
    let leader_id = sim_node_id(0);
    let real = sim
        .publish(
            0,
            FactBody::LeaderHint {
                term: 3,
                leader: Some(leader_id),
            },
        )
        .expect("published");
    sim.run_until_cond(secs(10.0), POLL, |s| s.count_knowing(&real) == n - 1)
        .expect("the real hint reaches everyone");
    assert_eq!(
        sim.fact_at(HOSTILE, HOSTILE, FactKind::Role)
            .map(|f| f.body),
        Some(FactBody::Role(NodeRole::Worker))
    );
    // The worker claims that manager 1 saw it elected at term 100, and that manager 0 moved on.
    let coup = FactBody::LeaderHint {
        term: 100,
        leader: Some(sim_node_id(HOSTILE)),
    };
    let m1 = sim.identity(1).expect("running");
    let forged = [
        Fact {
            origin: m1.id,
            version: version(m1.bump, 50),
            body: coup.clone(),
            signature: FactSignature([0; 64]),
        },
        Fact::signed(
            m1.id,
            version(m1.bump, 51),
            coup.clone(),
            &sim_node_key(HOSTILE),
        )
        .expect("signs"),
        // Manager 0's real signature moved to manager 1, and onto the new term.
        Fact {
            origin: m1.id,
            ..real.clone()
        },
        Fact {
            version: version(real.version.bump, real.version.seq + 1),
            body: coup,
            ..real.clone()
        },
    ];
    spray(&mut sim, HOSTILE, &forged);
    sim.run_for(secs(5.0));
    for o in sim.members() {
        let m = sim.membership(o).expect("running");
        // What a node would believe: the highest-term hint among the facts it holds.
        let believed = m
            .facts()
            .into_iter()
            .filter_map(|f| match f.body {
                FactBody::LeaderHint { term, leader } => Some((term, leader)),
                _ => None,
            })
            .max();
        assert_eq!(believed, Some((3, Some(leader_id))), "node {o}");
        if o != 1 {
            assert_eq!(sim.fact_at(o, 1, FactKind::LeaderHint), None, "node {o}");
        }
        if o != 0 {
            assert_eq!(sim.fact_at(o, 0, FactKind::LeaderHint), Some(real.clone()));
        }
    }
    // Per receiver and path: the four forgeries (three about manager 1, one about manager 0),
    // less those about the receiver itself, which it ignores uncounted.
    assert_eq!(sim.forged_facts(), 8 * (n as u64 - 2));
    assert_clean(&sim);
}

#[test]
fn issue_14_relayed_genuine_fact_still_reaches_everyone() {
    let n = 30;
    let (mut sim, _) = converged_cluster(SimConfig::lan(142), n, secs(30.0));
    let origin: NodeIx = 4;
    let first_hop: NodeIx = 20;
    let o_ident = sim.identity(origin).expect("running");
    // A fact the origin signed but never sent itself: whoever has it, has it through relays.
    let genuine = Fact::signed(
        o_ident.id,
        version(o_ident.bump, 1000),
        FactBody::App {
            tag: 9,
            data: vec![42; 100],
        },
        &sim_node_key(origin),
    )
    .expect("signs");
    let tampered = Fact {
        body: FactBody::App {
            tag: 9,
            data: vec![43; 100],
        },
        version: version(o_ident.bump, 1001),
        ..genuine.clone()
    };
    // HOSTILE hands both to one member only, in one packet.
    let items = vec![
        tampered.encode().expect("encodes"),
        genuine.encode().expect("encodes"),
    ];
    let src = sim.identity(HOSTILE).expect("running");
    let dst = sim.identity(first_hop).expect("running");
    sim.send_raw(HOSTILE, first_hop, gossip_packet(src, dst, &items));
    let took = sim
        .run_until_cond(secs(10.0), POLL, |s| s.count_knowing(&genuine) == n - 1)
        .expect("the relayed fact reaches everyone");
    eprintln!(
        "fact relayed from one member to {} nodes in {took:?}",
        n - 1
    );
    for o in sim.members() {
        if o != origin {
            assert_eq!(
                sim.fact_at(o, origin, FactKind::App(9)).as_ref(),
                Some(&genuine),
                "node {o} holds the fact with its signature intact"
            );
        }
    }
    assert_eq!(
        sim.forged_facts(),
        1,
        "the tampered copy died at the first hop"
    );
    assert_clean(&sim);
}

#[test]
fn issue_14_packet_claiming_another_sender_is_refused() {
    let n = 10;
    let mut sim = cluster_with_roles(143, n);
    let hostile: NodeIx = 5;
    let victim: NodeIx = 1;
    let v_ident = sim.identity(victim).expect("running");
    // A fact genuinely signed by the victim (the hostile node holds its key in this test), sent
    // in packets whose header claims the victim as sender: the transport says otherwise.
    let fact = Fact::signed(
        v_ident.id,
        version(v_ident.bump, 500),
        FactBody::Leaving { bump: v_ident.bump },
        &sim_node_key(victim),
    )
    .expect("signs");
    let items = vec![fact.encode().expect("encodes")];
    for to in sim.members() {
        if to == hostile || to == victim {
            continue;
        }
        let dst = sim.identity(to).expect("running");
        sim.send_raw(hostile, to, gossip_packet(v_ident, dst, &items));
        sim.send_raw(hostile, to, fact_push_packet(v_ident, &items));
    }
    sim.run_for(secs(3.0));
    let st = sim.stats();
    assert_eq!(st.packet_errors, 2 * (n as u64 - 2));
    assert!(
        sim.errors()
            .iter()
            .all(|e| e.contains("claims to come from")),
        "{:?}",
        sim.errors()
    );
    assert_eq!(sim.count_knowing(&fact), 0);
    assert_eq!(st.downs, 0);
    assert!(sim.converged());
}
