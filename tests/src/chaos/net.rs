//! Network faults: iptables rules in the root namespace, all in one chain of their own
//! (`SHOAL-CHAOS-B` for the run on `127.0.B.x`, jumped to from `INPUT` for packets on
//! `lo`), matching only UDP between the run's loopback addresses, so that runs on
//! different blocks do not touch each other's rules. The chain is flushed and deleted when the guard is
//! created (the leftovers of a crashed run) and when it is dropped (also while a failing
//! run unwinds); `scripts/chaos.sh` does the same in its trap, for a harness killed
//! without unwinding.

use std::net::IpAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Result, bail};

use crate::output_within;

/// The chain every rule of the chaos run on `127.0.{block}.x` lives in.
pub fn chain(block: u8) -> String {
    format!("SHOAL-CHAOS-{block}")
}

fn iptables(args: &[&str]) -> Result<String> {
    let mut cmd = Command::new("iptables");
    cmd.args(["-w", "10"]).args(args).stdin(Stdio::null());
    let out = output_within(&mut cmd, Duration::from_secs(30))?;
    if !out.status.success() {
        bail!(
            "`iptables {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes the chain and every jump to it; quiet when there is none.
pub fn remove_chain(chain: &str) {
    while iptables(&["-D", "INPUT", "-i", "lo", "-j", chain]).is_ok() {}
    let _ = iptables(&["-F", chain]);
    let _ = iptables(&["-X", chain]);
}

/// The chain, present while this value lives.
pub struct Firewall {
    chain: String,
}

impl Firewall {
    /// Removes what an earlier run on `block` left, creates the chain and the jump from
    /// `INPUT`.
    pub fn new(block: u8) -> Result<Firewall> {
        let chain = chain(block);
        remove_chain(&chain);
        iptables(&["-N", &chain])?;
        iptables(&["-I", "INPUT", "-i", "lo", "-j", &chain])?;
        Ok(Firewall { chain })
    }

    /// The chain's name.
    pub fn chain(&self) -> &str {
        &self.chain
    }

    /// Appends a rule dropping UDP from `from` to `to` that also matches `extra`.
    fn drop_udp(&self, from: &str, to: &str, extra: &[&str]) -> Result<()> {
        let mut args = vec!["-A", self.chain.as_str(), "-p", "udp", "-s", from, "-d", to];
        args.extend_from_slice(extra);
        args.extend(["-j", "DROP"]);
        iptables(&args).map(drop)
    }

    /// Drops every UDP datagram between `node` and each of `others`, both directions.
    pub fn partition(&self, node: IpAddr, others: &[IpAddr]) -> Result<()> {
        let n = node.to_string();
        for o in others {
            let o = o.to_string();
            self.drop_udp(&n, &o, &[])?;
            self.drop_udp(&o, &n, &[])?;
        }
        Ok(())
    }

    /// Drops `percent` % of the UDP datagrams from `from` to `to` (one direction).
    pub fn loss(&self, from: IpAddr, to: IpAddr, percent: u32) -> Result<()> {
        let (s, d) = (from.to_string(), to.to_string());
        if percent >= 100 {
            return self.drop_udp(&s, &d, &[]);
        }
        let p = format!("{:.2}", f64::from(percent) / 100.0);
        self.drop_udp(
            &s,
            &d,
            &["-m", "statistic", "--mode", "random", "--probability", &p],
        )
    }

    /// Removes every rule of the chain (the chain and its jump stay).
    pub fn heal(&self) -> Result<()> {
        iptables(&["-F", &self.chain]).map(drop)
    }

    /// The number of rules in the chain.
    pub fn rules(&self) -> Result<usize> {
        Ok(iptables(&["-S", &self.chain])?
            .lines()
            .filter(|l| l.starts_with("-A "))
            .count())
    }
}

impl Drop for Firewall {
    fn drop(&mut self) {
        remove_chain(&self.chain);
    }
}
