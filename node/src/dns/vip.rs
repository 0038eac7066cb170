//! Virtual IPs (issue 22; ARCHITECTURE.md, "Service discovery"), pure: a node's bridge
//! subnet split into the half Docker allocates containers from (the network's `ip_range`)
//! and the half its VIPs come from, a service's VIP on this node from its index, and the
//! lowest free index for a new service (what the state machine is to give at create).

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use thiserror::Error;

shoal_scheduler::words!(super::EndpointMode, "endpoint mode", "vip or dnsrr", {
    super::EndpointMode::Vip => "vip",
    super::EndpointMode::Dnsrr => "dnsrr",
});

/// The default `daemon --network-subnet`.
pub const DEFAULT_SUBNET: &str = "10.247.0.0/16";

/// Why a subnet cannot hold containers and VIPs.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VipError {
    /// Not `A.B.C.D/N`.
    #[error("{0:?} is not an IPv4 subnet (A.B.C.D/N)")]
    NotASubnet(String),
    /// Host bits set.
    #[error("{0:?} has host bits set (the subnet is {1})")]
    HostBits(String, String),
    /// Too small (each half needs room) or too large.
    #[error("a subnet of /{0} does not fit: use /8 to /28 (half for containers, half for VIPs)")]
    Size(u8),
}

/// A node's bridge subnet, split in two halves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subnet {
    /// The network address.
    pub network: Ipv4Addr,
    /// The prefix length.
    pub prefix: u8,
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl std::str::FromStr for Subnet {
    type Err = VipError;

    fn from_str(s: &str) -> Result<Self, VipError> {
        let bad = || VipError::NotASubnet(s.to_owned());
        let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
        let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(8..=28).contains(&prefix) {
            return Err(VipError::Size(prefix));
        }
        let mask = u32::MAX << (32 - prefix);
        let network = Ipv4Addr::from(u32::from(ip) & mask);
        if network != ip {
            return Err(VipError::HostBits(
                s.to_owned(),
                format!("{network}/{prefix}"),
            ));
        }
        Ok(Self { network, prefix })
    }
}

impl Subnet {
    fn half_size(self) -> u32 {
        1 << (31 - u32::from(self.prefix))
    }

    /// The gateway (the bridge's address, where the DNS server listens): the first host.
    #[must_use]
    pub fn gateway(self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network) + 1)
    }

    /// The lower half: the network's IPAM `ip_range`, where Docker puts containers.
    #[must_use]
    pub fn container_range(self) -> Subnet {
        Subnet {
            network: self.network,
            prefix: self.prefix + 1,
        }
    }

    /// The upper half: the VIP range (the AnyIP route's destination).
    #[must_use]
    pub fn vip_range(self) -> Subnet {
        Subnet {
            network: Ipv4Addr::from(u32::from(self.network) + self.half_size()),
            prefix: self.prefix + 1,
        }
    }

    /// How many VIPs: the upper half without the subnet's broadcast address.
    #[must_use]
    pub fn vip_count(self) -> u32 {
        self.half_size() - 1
    }

    /// The VIP of index `index` (0-based), if the range has it.
    #[must_use]
    pub fn vip(self, index: u32) -> Option<Ipv4Addr> {
        (index < self.vip_count())
            .then(|| Ipv4Addr::from(u32::from(self.vip_range().network) + index))
    }

    /// The index of a VIP, if `ip` is one.
    #[must_use]
    pub fn vip_index(self, ip: Ipv4Addr) -> Option<u32> {
        let index = u32::from(ip).checked_sub(u32::from(self.vip_range().network))?;
        (index < self.vip_count()).then_some(index)
    }

    /// Whether `ip` is in this subnet.
    #[must_use]
    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & (u32::MAX << (32 - self.prefix)) == u32::from(self.network)
    }
}

/// The lowest index not in `used`, below `limit`: what a new service gets. Freed indexes
/// (removed services) are reused, lowest first; none when all are taken.
#[must_use]
pub fn lowest_free(used: impl IntoIterator<Item = u32>, limit: u32) -> Option<u32> {
    let used: BTreeSet<u32> = used.into_iter().collect();
    (0..limit).find(|i| !used.contains(i))
}

#[cfg(test)]
mod tests {
    use super::super::EndpointMode;
    use super::*;

    #[test]
    fn the_default_subnet_splits_in_halves() {
        let s: Subnet = DEFAULT_SUBNET.parse().expect("subnet");
        assert_eq!(s.gateway(), Ipv4Addr::new(10, 247, 0, 1));
        assert_eq!(s.container_range().to_string(), "10.247.0.0/17");
        assert_eq!(s.vip_range().to_string(), "10.247.128.0/17");
        assert_eq!(s.vip_count(), 32_767);
        assert_eq!(s.vip(0), Some(Ipv4Addr::new(10, 247, 128, 0)));
        assert_eq!(s.vip(32_766), Some(Ipv4Addr::new(10, 247, 255, 254)));
        assert_eq!(s.vip(32_767), None, "the broadcast address is no VIP");
        assert_eq!(s.vip_index(Ipv4Addr::new(10, 247, 128, 5)), Some(5));
        assert_eq!(s.vip_index(Ipv4Addr::new(10, 247, 0, 5)), None);
        assert_eq!(s.vip_index(Ipv4Addr::new(10, 247, 255, 255)), None);
        assert!(s.contains(Ipv4Addr::new(10, 247, 3, 4)));
        assert!(!s.contains(Ipv4Addr::new(10, 248, 0, 1)));
    }

    #[test]
    fn a_test_nodes_slash_24() {
        let s: Subnet = "10.214.3.0/24".parse().expect("subnet");
        assert_eq!(s.container_range().to_string(), "10.214.3.0/25");
        assert_eq!(s.vip(0), Some(Ipv4Addr::new(10, 214, 3, 128)));
        assert_eq!(s.vip_count(), 127);
        // The same index on another node's subnet: another address, no clash on one kernel.
        let t: Subnet = "10.214.4.0/24".parse().expect("subnet");
        assert_ne!(s.vip(7), t.vip(7));
    }

    #[test]
    fn bad_subnets_are_refused_with_the_reason() {
        assert!(matches!(
            "10.0.0.0".parse::<Subnet>(),
            Err(VipError::NotASubnet(_))
        ));
        assert!(matches!(
            "x/16".parse::<Subnet>(),
            Err(VipError::NotASubnet(_))
        ));
        assert!(matches!(
            "10.0.0.0/33".parse::<Subnet>(),
            Err(VipError::Size(33))
        ));
        assert!(matches!(
            "10.0.0.0/29".parse::<Subnet>(),
            Err(VipError::Size(29))
        ));
        assert!(matches!(
            "10.0.0.0/7".parse::<Subnet>(),
            Err(VipError::Size(7))
        ));
        assert_eq!(
            "10.0.0.1/16".parse::<Subnet>(),
            Err(VipError::HostBits(
                "10.0.0.1/16".into(),
                "10.0.0.0/16".into()
            ))
        );
        let s: Subnet = "10.0.0.0/28".parse().expect("smallest");
        assert_eq!(s.vip_count(), 7);
    }

    #[test]
    fn lowest_free_reuses_freed_indexes_and_knows_when_full() {
        assert_eq!(lowest_free([], 10), Some(0));
        assert_eq!(lowest_free([0, 1, 2], 10), Some(3));
        assert_eq!(lowest_free([0, 2, 3], 10), Some(1));
        assert_eq!(lowest_free([0, 1], 2), None);
        assert_eq!(lowest_free([5, 5, 0], 10), Some(1));
    }

    #[test]
    fn endpoint_modes_are_dockers_words() {
        assert_eq!("vip".parse::<EndpointMode>(), Ok(EndpointMode::Vip));
        assert_eq!("dnsrr".parse::<EndpointMode>(), Ok(EndpointMode::Dnsrr));
        assert_eq!(EndpointMode::Dnsrr.to_string(), "dnsrr");
        let e = "rr".parse::<EndpointMode>().expect_err("unknown");
        assert!(e.to_string().contains("vip or dnsrr"), "{e}");
        assert_eq!(EndpointMode::default(), EndpointMode::Vip);
    }
}
