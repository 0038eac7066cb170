//! What the node keeps about itself in `node.json`: its advertise address override
//! and, once it belongs to a cluster, its credentials. Written atomically.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::manager::state::Role;

/// The QUIC port a node listens on and advertises when none is given (DESIGN §2).
pub const DEFAULT_PORT: u16 = 4747;

/// Saved node settings.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SavedConfig {
    /// Advertise address given to `init`/`join`, or to a restarted daemon.
    pub advertise_addr: Option<SocketAddr>,
    /// The `daemon --advertise-addr` value last started with: the same value again (an
    /// unchanged unit file) does not override an address `init`/`join` chose since.
    #[serde(default)]
    pub daemon_advertise_addr: Option<SocketAddr>,
    /// Present while the node belongs to a cluster.
    pub cluster: Option<SavedCluster>,
}

/// The node's membership credentials.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SavedCluster {
    /// Cluster ID.
    pub cluster_id: String,
    /// Role when last saved.
    pub role: Role,
    /// This node's certificate (DER, base64).
    #[serde(with = "b64")]
    pub node_cert: Vec<u8>,
    /// The cluster CA certificate (DER, base64).
    #[serde(with = "b64")]
    pub ca_cert: Vec<u8>,
    /// Addresses of members last known, to gossip with after a restart.
    #[serde(default)]
    pub seeds: Vec<String>,
    /// Public keys of the managers, as the leader last told this node (a worker believes
    /// leader hints and become-manager requests only from them).
    #[serde(default)]
    pub managers: Vec<[u8; 32]>,
    /// Public keys removed from the cluster, as the leader last told this node: refused on
    /// every stream, even after a restart.
    #[serde(default)]
    pub removed: Vec<[u8; 32]>,
}

mod b64 {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(v))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        STANDARD.decode(s).map_err(serde::de::Error::custom)
    }
}

impl SavedConfig {
    /// Reads `path`; absent means defaults. A corrupt file is an error naming it.
    pub fn load(path: &Path) -> Result<SavedConfig> {
        match std::fs::read(path) {
            Ok(bytes) => SavedConfig::parse(&bytes).with_context(|| {
                format!(
                    "{} is corrupt: fix or remove it (the node key is kept apart)",
                    path.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(SavedConfig::default()),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }

    /// Decodes the contents of `node.json` (unknown fields are ignored).
    pub fn parse(bytes: &[u8]) -> serde_json::Result<SavedConfig> {
        serde_json::from_slice(bytes)
    }

    /// Writes `path` atomically (temp file, fsync, rename), mode 0600 whatever the umask.
    pub fn save(&self, path: &Path) -> Result<()> {
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(self)?;
        {
            use std::io::Write;
            use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .with_context(|| format!("cannot write {}", tmp.display()))?;
            // A left-over temporary file keeps its old mode; the umask may take bits away.
            f.set_permissions(std::fs::Permissions::from_mode(0o600))
                .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
            f.write_all(&bytes)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(())
    }
}

/// Parses an advertise address: `IP:PORT`, or a bare IP that takes `default_port`.
pub(crate) fn parse_advertise(s: &str, default_port: u16) -> Result<SocketAddr> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        if addr.ip().is_unspecified() {
            bail!("advertise address {s} is unspecified: give an address other nodes can reach");
        }
        return Ok(addr);
    }
    match s.trim_matches(|c| c == '[' || c == ']').parse::<IpAddr>() {
        Ok(ip) if ip.is_unspecified() => {
            bail!("advertise address {s} is unspecified: give an address other nodes can reach")
        }
        Ok(ip) => Ok(SocketAddr::new(ip, default_port)),
        Err(_) => bail!("invalid advertise address `{s}`: expected IP or IP:PORT"),
    }
}

/// The address to advertise when none was given: the listen address when it is
/// specific, otherwise the first IPv4 address of an interface that is up and not
/// loopback, else loopback (a single-machine cluster).
pub(crate) fn default_advertise(listen: SocketAddr) -> SocketAddr {
    if !listen.ip().is_unspecified() {
        return listen;
    }
    let found = nix::ifaddrs::getifaddrs().ok().and_then(|addrs| {
        addrs
            .filter(|a| a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP))
            .filter_map(|a| a.address.and_then(|s| s.as_sockaddr_in().map(|v4| v4.ip())))
            .find(|ip| !ip.is_loopback() && !ip.is_unspecified())
    });
    let ip = found.map_or(IpAddr::from([127, 0, 0, 1]), IpAddr::V4);
    SocketAddr::new(ip, listen.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertise_parsing() {
        assert_eq!(
            parse_advertise("10.0.0.5", 4747).unwrap().to_string(),
            "10.0.0.5:4747"
        );
        assert_eq!(
            parse_advertise("10.0.0.5:5000", 4747).unwrap().to_string(),
            "10.0.0.5:5000"
        );
        assert!(parse_advertise("0.0.0.0", 4747).is_err());
        assert!(
            parse_advertise("pi.local", 4747)
                .unwrap_err()
                .to_string()
                .contains("IP")
        );
    }

    #[test]
    fn config_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.json");
        assert!(SavedConfig::load(&path).unwrap().cluster.is_none());
        let cfg = SavedConfig {
            advertise_addr: Some("127.0.0.9:4747".parse().unwrap()),
            daemon_advertise_addr: None,
            cluster: Some(SavedCluster {
                cluster_id: "c".into(),
                role: Role::Manager,
                node_cert: vec![1, 2, 3],
                ca_cert: vec![4],
                seeds: vec![],
                managers: vec![[7; 32]],
                removed: vec![[9; 32]],
            }),
        };
        cfg.save(&path).unwrap();
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode, 0o600);
        }
        let back = SavedConfig::load(&path).unwrap();
        assert_eq!(back.cluster.unwrap().node_cert, vec![1, 2, 3]);
        std::fs::write(&path, b"{nope").unwrap();
        assert!(
            SavedConfig::load(&path)
                .unwrap_err()
                .to_string()
                .contains("corrupt")
        );
    }
}
