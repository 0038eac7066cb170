//! `chaos`: the chaos run of issue 20 (see `shoal_tests::chaos` for what it does and
//! checks). Run it through `scripts/chaos.sh`, which checks root, iptables and Docker and
//! cleans the firewall chain up even when this process is killed.
//!
//! ```text
//! chaos [--duration SECONDS] [--seed N] [--nodes M+W] [--block B] [--faketime LIB] [--no-docker]
//! ```
//!
//! `--block B` runs on `127.0.B.x` (default 120) with its own firewall chain, so several
//! runs can go at once; `--faketime LIB` (libfaketime's library) adds wall-clock steps to
//! the schedule.
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
    eprintln!(
        "usage: chaos [--duration SECONDS] [--seed N] [--nodes M+W] [--block B] [--faketime LIB] [--no-docker]"
    );
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
        block: shoal_tests::chaos::BLOCK,
        faketime: None,
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
                    usage("--nodes: at least one manager, at most 9 nodes (127.0.BLOCK.1-9)");
                }
            }
            "--block" => {
                let v = value("--block");
                cfg.block = v
                    .parse()
                    .ok()
                    .filter(|b| (1..=254).contains(b))
                    .unwrap_or_else(|| usage(&format!("bad --block {v}: 1..254")));
            }
            "--faketime" => {
                let v = std::path::PathBuf::from(value("--faketime"));
                if !v.is_file() {
                    usage(&format!("--faketime {}: no such file", v.display()));
                }
                cfg.faketime = Some(v);
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
        "chaos: seed {} ({} managers + {} workers on 127.0.{}.x, {} s, {}, {})",
        cfg.seed,
        cfg.managers,
        cfg.workers,
        cfg.block,
        cfg.duration.as_secs_f64(),
        if cfg.docker {
            "Docker and process driver"
        } else {
            "process driver only"
        },
        if cfg.faketime.is_some() {
            "clock steps"
        } else {
            "no clock steps (no libfaketime)"
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
