//! `chaos`: the chaos run of issue 20 (see `shoal_tests::chaos` for what it does and
//! checks). Run it through `scripts/chaos.sh`, which checks root, iptables and Docker and
//! cleans the firewall chain up even when this process is killed.
//!
//! ```text
//! chaos [--duration SECONDS] [--seed N] [--nodes M+W] [--no-docker]
//! ```
//!
//! Prints the seed first, one line per event, and last the counts; exit 0 when no
//! invariant was violated, 1 otherwise (or when the harness itself failed), 2 on bad
//! arguments. SIGINT/SIGTERM stop the run and clean up (daemons, tasks, containers, rules).

use std::sync::atomic::Ordering;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use nix::sys::signal::{SigSet, Signal};
use shoal_tests::chaos::{Config, STOP, run};

fn usage(msg: &str) -> ! {
    eprintln!("chaos: {msg}");
    eprintln!("usage: chaos [--duration SECONDS] [--seed N] [--nodes M+W] [--no-docker]");
    std::process::exit(2)
}

fn parse() -> Config {
    let mut cfg = Config {
        seed: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs() % 1_000_000),
        duration: Duration::from_secs(300),
        managers: 3,
        workers: 3,
        docker: true,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut value = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match a.as_str() {
            "--duration" => {
                let v = value("--duration");
                let s: f64 = v
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("bad --duration {v}")));
                if !(1.0..=86_400.0).contains(&s) {
                    usage("--duration must be 1..86400 seconds");
                }
                cfg.duration = Duration::from_secs_f64(s);
            }
            "--seed" => {
                let v = value("--seed");
                cfg.seed = v
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("bad --seed {v}")));
            }
            "--nodes" => {
                let v = value("--nodes");
                let (m, w) = v
                    .split_once('+')
                    .unwrap_or_else(|| usage("--nodes is M+W, e.g. 3+3"));
                cfg.managers = m
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("bad --nodes {v}")));
                cfg.workers = w
                    .parse()
                    .unwrap_or_else(|_| usage(&format!("bad --nodes {v}")));
                if cfg.managers == 0 || cfg.managers + cfg.workers > 9 {
                    usage("--nodes: at least one manager, at most 9 nodes (127.0.120.1-9)");
                }
            }
            "--no-docker" => cfg.docker = false,
            "-h" | "--help" => usage("the chaos run of issue 20"),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    cfg
}

fn main() {
    let cfg = parse();
    // SIGINT and SIGTERM are blocked in every thread (threads inherit the mask) and taken
    // by one thread with sigwait, which asks the run to stop: it unwinds and its guards
    // clean up. No handler, no unsafe code; children start with an empty mask (std resets
    // it before exec), so daemons and tasks see signals as usual.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(e) = signals.thread_block() {
        eprintln!("chaos: cannot block SIGINT/SIGTERM: {e}");
        std::process::exit(1);
    }
    std::thread::spawn(move || {
        while let Ok(sig) = signals.wait() {
            println!("chaos: {sig}: stopping and cleaning up");
            STOP.store(true, Ordering::Relaxed);
        }
    });
    println!(
        "chaos: seed {} ({} managers + {} workers, {} s, {})",
        cfg.seed,
        cfg.managers,
        cfg.workers,
        cfg.duration.as_secs_f64(),
        if cfg.docker {
            "Docker and process driver"
        } else {
            "process driver only"
        }
    );
    let seed = cfg.seed;
    match run(&cfg) {
        Ok(summary) => {
            if summary.violations.is_empty() {
                println!("chaos: PASS (seed {seed})");
            } else {
                println!(
                    "chaos: FAIL (seed {seed}): {} violations:",
                    summary.violations.len()
                );
                for v in &summary.violations {
                    println!("  - {v}");
                }
            }
            println!("{}", summary.line());
            std::process::exit(i32::from(!summary.violations.is_empty()));
        }
        Err(e) => {
            println!("chaos: ERROR (seed {seed}): {e:#}");
            std::process::exit(1);
        }
    }
}
