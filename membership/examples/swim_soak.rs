//! Membership soak under packet loss (issue 20): no healthy node may ever be marked down.
//!
//! `cargo run --release -p shoal-membership --example swim_soak [-- --nodes 100,1000]
//! [--minutes 10] [--loss 0.05] [--seed 20]`
//!
//! For each size: the nodes start warm (each with the full member list, as after a restart
//! from a persisted list), run until every node sees every other one up, then run the given
//! number of virtual minutes with every datagram lost with probability `--loss` and a one-way
//! delay of 1–3 ms. One line per virtual minute (suspicions raised so far, false downs, wall
//! time), then the totals. Exits 1 if any healthy node was marked down, or a view did not
//! converge at the end.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use shoal_membership::sim::{Sim, SimConfig};

struct Args {
    nodes: Vec<usize>,
    minutes: u64,
    loss: f64,
    seed: u64,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        nodes: vec![100, 1000],
        minutes: 10,
        loss: 0.05,
        seed: 20,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--nodes" => {
                a.nodes = value()?
                    .split(',')
                    .map(|n| n.parse().map_err(|_| format!("bad node count `{n}`")))
                    .collect::<Result<_, _>>()?;
            }
            "--minutes" => a.minutes = value()?.parse().map_err(|_| "bad --minutes")?,
            "--loss" => a.loss = value()?.parse().map_err(|_| "bad --loss")?,
            "--seed" => a.seed = value()?.parse().map_err(|_| "bad --seed")?,
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    Ok(a)
}

fn soak(n: usize, a: &Args) -> bool {
    let wall = Instant::now();
    let mut cfg = SimConfig::lan(a.seed);
    cfg.cluster_size = u32::try_from(n).ok();
    let mut sim = Sim::new(cfg);
    sim.add_nodes_warm(n);
    let Some(took) = sim.run_until_cond(
        Duration::from_secs(120),
        Duration::from_millis(100),
        Sim::converged,
    ) else {
        println!("{n} nodes: the views did not converge before the loss started");
        return false;
    };
    println!(
        "{n} nodes, seed {}: converged in {:.1} s virtual ({:.1} s wall); loss {:.0} % for {} virtual minutes",
        a.seed,
        took.as_secs_f64(),
        wall.elapsed().as_secs_f64(),
        a.loss * 100.0,
        a.minutes
    );
    let before = sim.stats();
    sim.set_loss(a.loss);
    for minute in 1..=a.minutes {
        sim.run_for(Duration::from_secs(60));
        let st = sim.stats();
        println!(
            "  minute {minute:>3}: suspicions {:>6}  downs {}  false downs {}  dropped {:>9}  wall {:.0} s",
            st.suspects - before.suspects,
            st.downs - before.downs,
            st.false_downs,
            st.packets_dropped - before.packets_dropped,
            wall.elapsed().as_secs_f64()
        );
    }
    sim.set_loss(0.0);
    let settled = sim
        .run_until_cond(
            Duration::from_secs(30),
            Duration::from_millis(100),
            Sim::converged,
        )
        .is_some();
    let st = sim.stats();
    let sent = st.packets_sent - before.packets_sent;
    let dropped = st.packets_dropped - before.packets_dropped;
    println!(
        "{n} nodes: {} virtual minutes at {:.0} % loss: packets sent {sent}, dropped {dropped} ({:.2} %), suspicions {}, downs {}, false downs {}, packet errors {}, views converged after: {}, wall {:.0} s",
        a.minutes,
        a.loss * 100.0,
        100.0 * dropped as f64 / sent.max(1) as f64,
        st.suspects - before.suspects,
        st.downs - before.downs,
        st.false_downs,
        st.packet_errors,
        if settled { "yes" } else { "NO" },
        wall.elapsed().as_secs_f64()
    );
    for f in sim.false_downs().iter().take(5) {
        println!("  false down: {f:?}");
    }
    st.false_downs == 0 && st.downs == before.downs && st.packet_errors == 0 && settled
}

fn main() -> ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("swim_soak: {e}");
            return ExitCode::from(2);
        }
    };
    let mut ok = true;
    for &n in &args.nodes {
        ok &= soak(n, &args);
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        println!("FAILED: a healthy node was marked down or the views did not converge");
        ExitCode::FAILURE
    }
}
