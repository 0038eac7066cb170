//! PROXY protocol version 2 (haproxy's spec, section 2.2): the binary header a task asks for
//! with `--publish …,proxy-protocol=v2`, so it sees the client's address instead of the
//! mesh's.

use std::net::{IpAddr, SocketAddr};

/// The 12-byte signature every v2 header starts with.
pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Version 2, command PROXY.
const VERSION_PROXY: u8 = 0x21;
/// TCP over IPv4.
const TCP4: u8 = 0x11;
/// TCP over IPv6.
const TCP6: u8 = 0x21;

/// The header for a TCP connection from `client` to `server` (the address the client
/// connected to). Two IPv4 addresses give a TCP4 header; otherwise both are written as IPv6
/// (an IPv4 one as `::ffff:a.b.c.d`).
#[must_use]
pub fn v2_header(client: SocketAddr, server: SocketAddr) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + 36);
    out.extend_from_slice(&SIGNATURE);
    out.push(VERSION_PROXY);
    match (client.ip(), server.ip()) {
        (IpAddr::V4(src), IpAddr::V4(dst)) => {
            out.push(TCP4);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&src.octets());
            out.extend_from_slice(&dst.octets());
        }
        (src, dst) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            out.push(TCP6);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(src).octets());
            out.extend_from_slice(&v6(dst).octets());
        }
    }
    out.extend_from_slice(&client.port().to_be_bytes());
    out.extend_from_slice(&server.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_header_has_the_spec_layout() {
        let h = v2_header(
            "192.0.2.7:51000".parse().unwrap(),
            "10.0.0.1:8080".parse().unwrap(),
        );
        assert_eq!(h.len(), 16 + 12);
        assert_eq!(&h[..12], &SIGNATURE);
        assert_eq!(h[12], 0x21, "version 2, PROXY");
        assert_eq!(h[13], 0x11, "TCP over IPv4");
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 12);
        assert_eq!(&h[16..20], &[192, 0, 2, 7]);
        assert_eq!(&h[20..24], &[10, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes([h[24], h[25]]), 51000);
        assert_eq!(u16::from_be_bytes([h[26], h[27]]), 8080);
    }

    #[test]
    fn mixed_families_are_written_as_ipv6() {
        let h = v2_header(
            "[2001:db8::1]:4000".parse().unwrap(),
            "127.0.0.1:80".parse().unwrap(),
        );
        assert_eq!(h.len(), 16 + 36);
        assert_eq!(h[13], 0x21, "TCP over IPv6");
        assert_eq!(u16::from_be_bytes([h[14], h[15]]), 36);
        let dst: [u8; 16] = h[32..48].try_into().unwrap();
        assert_eq!(
            std::net::Ipv6Addr::from(dst),
            "::ffff:127.0.0.1".parse::<std::net::Ipv6Addr>().unwrap()
        );
        assert_eq!(u16::from_be_bytes([h[48], h[49]]), 4000);
        assert_eq!(u16::from_be_bytes([h[50], h[51]]), 80);
    }
}
