//! The LAN profile: foca's `Config::new_lan` retuned for fast failure detection, sized by the
//! number of nodes in the cluster.

use std::num::{NonZeroU8, NonZeroU32, NonZeroUsize};
use std::time::Duration;

use foca::{Config, PeriodicParams};

/// Largest datagram the transport carries: quinn's datagram limit before path MTU discovery is
/// 1162 bytes, so stay well below it.
pub const MAX_DATAGRAM: usize = 1100;

/// Knobs of the SWIM profile. [`Tuning::lan`] is the default; [`Tuning::foca_config`] turns
/// it into a foca [`Config`] for a given cluster size.
///
/// `probe_period` and `probe_rtt` are fixed for the lifetime of a [`crate::Membership`] (foca
/// refuses to change them); everything derived from the cluster size is recomputed on
/// [`crate::Membership::set_cluster_size`].
#[derive(Clone, Debug, PartialEq)]
pub struct Tuning {
    /// How often each node probes one random member.
    pub probe_period: Duration,
    /// How long to wait for a direct ack before asking others to probe indirectly.
    pub probe_rtt: Duration,
    /// How many members are asked to probe indirectly.
    pub num_indirect_probes: usize,
    /// Suspicion lasts `max(1, log10 n) × suspicion_mult × probe_period`, at least
    /// `min_suspicion`.
    pub suspicion_mult: f64,
    /// Lower bound for the suspicion timeout.
    pub min_suspicion: Duration,
    /// Each update is piggybacked `max(min_transmissions, ⌈transmission_mult × log10(n+1)⌉)`
    /// times.
    pub transmission_mult: f64,
    /// Lower bound for the number of transmissions of each update.
    pub min_transmissions: u8,
    /// Period of the extra gossip round (only sent when there is something to spread).
    pub gossip_period: Duration,
    /// Members per gossip round.
    pub gossip_fanout: usize,
    /// Period of the announce round (asks one member for more members; repairs partial views).
    pub announce_period: Duration,
    /// Period of announces to members believed down (heals partitions).
    pub announce_down_period: Duration,
    /// How long a down identity is remembered (refuses its packets meanwhile).
    pub remove_down_after: Duration,
    /// Largest datagram produced or accepted, frame tag included (≤ [`MAX_DATAGRAM`]).
    pub max_packet_size: usize,
    /// How often this node re-queues its own facts so that late joiners learn them.
    pub fact_refresh: Duration,
    /// First delay before re-sending a join request that got no answer (doubles up to 8 s).
    pub join_retry: Duration,
}

impl Tuning {
    /// The LAN profile: probe every 200 ms with an 80 ms round trip budget, five indirect
    /// probes (so 5 % packet loss almost never fails a whole probe), suspicion of
    /// 0.75 s × max(1, log10 n).
    ///
    /// For slow links (Wi-Fi, WAN) use [`Tuning::scaled`]: a factor of 3 gives a 600 ms probe
    /// period with a 240 ms round trip budget.
    pub fn lan() -> Self {
        Tuning {
            probe_period: Duration::from_millis(200),
            probe_rtt: Duration::from_millis(80),
            num_indirect_probes: 5,
            suspicion_mult: 3.75,
            min_suspicion: Duration::from_millis(600),
            transmission_mult: 6.0,
            min_transmissions: 8,
            gossip_period: Duration::from_millis(100),
            gossip_fanout: 3,
            announce_period: Duration::from_secs(5),
            announce_down_period: Duration::from_secs(3),
            remove_down_after: Duration::from_secs(24 * 3600),
            max_packet_size: MAX_DATAGRAM,
            fact_refresh: Duration::from_secs(20),
            join_retry: Duration::from_millis(500),
        }
    }

    /// Scales every period by `factor` (e.g. 2.5 for Wi-Fi links), keeping the counts.
    pub fn scaled(&self, factor: f64) -> Self {
        let s = |d: Duration| d.mul_f64(factor.max(0.1));
        Tuning {
            probe_period: s(self.probe_period),
            probe_rtt: s(self.probe_rtt),
            min_suspicion: s(self.min_suspicion),
            gossip_period: s(self.gossip_period),
            join_retry: s(self.join_retry),
            ..self.clone()
        }
    }

    /// Checks the knobs against foca's and the transport's constraints.
    pub fn validate(&self) -> Result<(), &'static str> {
        if self.probe_rtt.is_zero() || self.probe_rtt >= self.probe_period {
            return Err("probe_rtt must be non-zero and smaller than probe_period");
        }
        if self.num_indirect_probes == 0 || self.gossip_fanout == 0 {
            return Err("num_indirect_probes and gossip_fanout must be at least 1");
        }
        if self.min_transmissions == 0 {
            return Err("min_transmissions must be at least 1");
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(self.suspicion_mult) || !positive(self.transmission_mult) {
            return Err("multipliers must be finite and positive");
        }
        if self.max_packet_size < 256 || self.max_packet_size > MAX_DATAGRAM {
            return Err("max_packet_size must be within 256..=1100");
        }
        if self.gossip_period.is_zero()
            || self.announce_period.is_zero()
            || self.announce_down_period.is_zero()
            || self.fact_refresh.is_zero()
            || self.join_retry.is_zero()
        {
            return Err("periods must be non-zero");
        }
        Ok(())
    }

    /// Suspicion timeout for a cluster of `n` nodes.
    pub fn suspicion(&self, n: u32) -> Duration {
        let scale = f64::from(n.max(1)).log10().max(1.0);
        self.probe_period
            .mul_f64(scale * self.suspicion_mult)
            .max(self.min_suspicion)
    }

    /// Period of the announce round for a cluster of `n` nodes: `announce_period` up to 100
    /// nodes, then growing with √(n/100) (16 s at 1000 nodes), because each announce is
    /// answered with the whole member list: anti-entropy traffic per node grows with √n
    /// instead of n.
    pub fn announce_period_for(&self, n: u32) -> Duration {
        self.announce_period
            .mul_f64((f64::from(n) / 100.0).sqrt().max(1.0))
    }

    /// Number of transmissions of each update for a cluster of `n` nodes.
    pub fn transmissions(&self, n: u32) -> NonZeroU8 {
        let t = (self.transmission_mult * f64::from(n.saturating_add(1)).log10()).ceil();
        let t = t.clamp(f64::from(self.min_transmissions.max(1)), 255.0) as u8;
        NonZeroU8::new(t).unwrap_or(NonZeroU8::MIN)
    }

    /// The foca configuration for a cluster of `cluster_size` nodes, starting from
    /// `Config::new_lan(cluster_size)`. The foca packet size is one byte below
    /// `max_packet_size` (the frame tag).
    pub fn foca_config(&self, cluster_size: u32) -> Config {
        let n = cluster_size.max(1);
        let mut c = Config::new_lan(NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN));
        c.probe_period = self.probe_period;
        c.probe_rtt = self.probe_rtt;
        c.num_indirect_probes =
            NonZeroUsize::new(self.num_indirect_probes).unwrap_or(NonZeroUsize::MIN);
        c.max_transmissions = self.transmissions(n);
        c.suspect_to_down_after = self.suspicion(n);
        c.remove_down_after = Some(self.remove_down_after);
        c.max_packet_size = NonZeroUsize::new(self.max_packet_size.saturating_sub(1).max(1))
            .unwrap_or(NonZeroUsize::MIN);
        c.notify_down_members = true;
        c.periodic_announce = Some(PeriodicParams {
            frequency: self.announce_period_for(n),
            num_members: NonZeroUsize::MIN,
        });
        c.periodic_announce_to_down_members = Some(PeriodicParams {
            frequency: self.announce_down_period,
            num_members: NonZeroUsize::new(2).unwrap_or(NonZeroUsize::MIN),
        });
        c.periodic_gossip = Some(PeriodicParams {
            frequency: self.gossip_period,
            num_members: NonZeroUsize::new(self.gossip_fanout).unwrap_or(NonZeroUsize::MIN),
        });
        c
    }
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning::lan()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lan_profile_is_valid_and_small_packets() {
        let t = Tuning::lan();
        assert_eq!(t.validate(), Ok(()));
        for n in [1, 3, 10, 50, 100, 1000, 100_000] {
            let c = t.foca_config(n);
            assert!(c.max_packet_size.get() < MAX_DATAGRAM);
            assert!(c.probe_rtt < c.probe_period);
            assert!(c.suspect_to_down_after >= t.min_suspicion);
        }
    }

    #[test]
    fn sizes_grow_slowly() {
        let t = Tuning::lan();
        assert!(t.transmissions(1000) > t.transmissions(10));
        assert!(t.suspicion(1000) > t.suspicion(10));
        assert_eq!(t.suspicion(10), t.suspicion(2), "flat below 10 nodes");
        assert!(t.transmissions(10).get() >= t.min_transmissions);
        assert_eq!(t.announce_period_for(50), t.announce_period);
        assert_eq!(t.announce_period_for(100), t.announce_period);
        let big = t.announce_period_for(1000).as_secs_f64();
        assert!((15.0..17.0).contains(&big), "{big}");
    }

    #[test]
    fn validate_rejects_bad_knobs() {
        let mut t = Tuning::lan();
        t.probe_rtt = t.probe_period;
        assert!(t.validate().is_err());
        let mut t = Tuning::lan();
        t.max_packet_size = 1400;
        assert!(t.validate().is_err());
        let mut t = Tuning::lan();
        t.suspicion_mult = f64::NAN;
        assert!(t.validate().is_err());
        let scaled = Tuning::lan().scaled(2.0);
        assert_eq!(scaled.probe_period, Tuning::lan().probe_period * 2);
        assert_eq!(scaled.validate(), Ok(()));
    }
}
