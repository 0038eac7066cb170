//! `mesh-echo`: the routing mesh tests' task program (tests/tests/mesh.rs).
//!
//! ```text
//! mesh-echo [--listen ADDR] [--name NAME] [--proxy-v2]
//! ```
//!
//! Listens on `ADDR` (default `127.0.0.1:$PORT`, the port the process driver gives a task of
//! a published service) and answers every HTTP request (read up to its blank line) with
//! `HTTP/1.0 200 OK` and a plain-text body of `key=value` lines:
//!
//! - `task=NAME`: `--name`, else `$SHOAL_TASK_ID`, else `mesh-echo`;
//! - `conn=N`: how many connections this process has accepted, this one included (the
//!   hostile-peer test checks that a refused mesh stream connected nothing);
//! - with `--proxy-v2`: `client=IP:PORT` and `dest=IP:PORT`, the source and destination the
//!   PROXY protocol v2 header carried.
//!
//! With `--proxy-v2` every connection must start with a PROXY protocol v2 header (command
//! PROXY, TCP over IPv4 or IPv6); without a valid one the answer is `400 Bad Request` and the
//! connection is closed. A request with `Connection: keep-alive` keeps the connection open
//! for the next one (for `mesh-load --keepalive`); otherwise it is closed after the answer.
//!
//! SIGTERM or SIGINT: exit 0 at once. Bad arguments: one line on stderr, exit 2.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use nix::sys::signal::{SigSet, Signal};

/// The 12-byte signature that starts a PROXY protocol v2 header.
const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The fixed part of a v2 header: signature, version/command, family, length.
const FIXED_LEN: usize = 16;
/// Largest request head read before answering 400.
const MAX_HEAD: usize = 64 * 1024;
/// How long a connection may stay silent.
const IDLE: Duration = Duration::from_secs(30);

/// The addresses a PROXY protocol v2 header carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ProxyHeader {
    /// The client (source).
    source: SocketAddr,
    /// The address the client connected to (destination).
    dest: SocketAddr,
}

/// What [`parse_proxy_v2`] made of the bytes so far.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Parsed {
    /// A complete header of `len` bytes (TLVs after the addresses included).
    Header { header: ProxyHeader, len: usize },
    /// Valid so far; more bytes are needed.
    Incomplete,
}

/// Parses a PROXY protocol v2 header at the start of `buf`. Only the command PROXY (0x21)
/// over TCP/IPv4 (0x11) or TCP/IPv6 (0x21) is accepted; anything else is an error (said in
/// the 400 answer). Bytes that already contradict the signature are an error at once, so a
/// client that sends a bare request is not kept waiting.
fn parse_proxy_v2(buf: &[u8]) -> Result<Parsed, String> {
    let sig_seen = buf.len().min(SIGNATURE.len());
    if buf[..sig_seen] != SIGNATURE[..sig_seen] {
        return Err("no PROXY protocol v2 signature".into());
    }
    if buf.len() < FIXED_LEN {
        return Ok(Parsed::Incomplete);
    }
    let version_command = buf[12];
    if version_command >> 4 != 2 {
        return Err(format!(
            "PROXY protocol version {} (want 2)",
            version_command >> 4
        ));
    }
    if version_command & 0x0f != 1 {
        return Err(format!(
            "PROXY command {:#x} (want 0x1, PROXY)",
            version_command & 0x0f
        ));
    }
    let family = buf[13];
    let addr_len = match family {
        0x11 => 12,
        0x21 => 36,
        other => {
            return Err(format!(
                "address family/transport {other:#04x} (want 0x11 TCP/IPv4 or 0x21 TCP/IPv6)"
            ));
        }
    };
    let len = usize::from(u16::from_be_bytes([buf[14], buf[15]]));
    if len < addr_len {
        return Err(format!(
            "header length {len} shorter than the {addr_len} bytes of addresses"
        ));
    }
    if buf.len() < FIXED_LEN + len {
        return Ok(Parsed::Incomplete);
    }
    let a = &buf[FIXED_LEN..FIXED_LEN + addr_len];
    let port = |i: usize| u16::from_be_bytes([a[i], a[i + 1]]);
    let header = if family == 0x11 {
        let ip = |i: usize| IpAddr::V4(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
        ProxyHeader {
            source: SocketAddr::new(ip(0), port(8)),
            dest: SocketAddr::new(ip(4), port(10)),
        }
    } else {
        let ip = |i: usize| {
            let mut o = [0u8; 16];
            o.copy_from_slice(&a[i..i + 16]);
            IpAddr::V6(Ipv6Addr::from(o))
        };
        ProxyHeader {
            source: SocketAddr::new(ip(0), port(32)),
            dest: SocketAddr::new(ip(16), port(34)),
        }
    };
    Ok(Parsed::Header {
        header,
        len: FIXED_LEN + len,
    })
}

/// Where a request head ends in `buf` (just past its blank line), if it does.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whether a request head asks to keep the connection open.
fn wants_keep_alive(head: &[u8]) -> bool {
    String::from_utf8_lossy(head).lines().skip(1).any(|l| {
        l.split_once(':').is_some_and(|(k, v)| {
            k.trim().eq_ignore_ascii_case("connection")
                && v.trim().eq_ignore_ascii_case("keep-alive")
        })
    })
}

/// A whole HTTP/1.0 answer.
fn answer(status: &str, body: &str, keep_alive: bool) -> Vec<u8> {
    format!(
        "HTTP/1.0 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: {}\r\n\r\n{body}",
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes()
}

/// The settings from the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Settings {
    listen: SocketAddr,
    name: String,
    proxy_v2: bool,
}

const USAGE: &str = "usage: mesh-echo [--listen ADDR] [--name NAME] [--proxy-v2]";

/// Reads the arguments (`args` without the program name) and the environment's `PORT` and
/// `SHOAL_TASK_ID`.
fn settings(
    args: impl IntoIterator<Item = String>,
    port: Option<String>,
    task: Option<String>,
) -> Result<Settings, String> {
    let mut listen = None;
    let mut name = None;
    let mut proxy_v2 = false;
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => {
                let v = args.next().ok_or("--listen needs an address (IP:PORT)")?;
                listen = Some(
                    v.parse::<SocketAddr>()
                        .map_err(|_| format!("--listen: invalid address `{v}` (want IP:PORT)"))?,
                );
            }
            "--name" => name = Some(args.next().ok_or("--name needs a value")?),
            "--proxy-v2" => proxy_v2 = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}` ({USAGE})")),
        }
    }
    let listen = match listen {
        Some(l) => l,
        None => {
            let p = port.ok_or("no --listen and no PORT in the environment")?;
            let p: u16 = p.parse().map_err(|_| format!("PORT: invalid port `{p}`"))?;
            SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), p)
        }
    };
    let name = name
        .or(task)
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "mesh-echo".into());
    Ok(Settings {
        listen,
        name,
        proxy_v2,
    })
}

/// Serves one connection until the client is done (or sent something invalid).
fn serve(mut stream: TcpStream, settings: &Settings, conn: u64) -> std::io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    stream.set_write_timeout(Some(IDLE))?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    let mut proxy = None;
    if settings.proxy_v2 {
        loop {
            match parse_proxy_v2(&buf) {
                Ok(Parsed::Header { header, len }) => {
                    proxy = Some(header);
                    buf.drain(..len);
                    break;
                }
                Ok(Parsed::Incomplete) => {}
                Err(why) => {
                    let body = format!("bad PROXY protocol v2 header: {why}\n");
                    return stream.write_all(&answer("400 Bad Request", &body, false));
                }
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                if !buf.is_empty() {
                    let body = "bad PROXY protocol v2 header: the connection ended inside it\n";
                    stream.write_all(&answer("400 Bad Request", body, false))?;
                }
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
    }
    loop {
        let end = loop {
            if let Some(end) = head_end(&buf) {
                break end;
            }
            if buf.len() > MAX_HEAD {
                let body = "request head too long\n";
                return stream.write_all(&answer("400 Bad Request", body, false));
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                // The client left (a probe that only connects, or a half-sent request).
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let keep_alive = wants_keep_alive(&buf[..end]);
        buf.drain(..end);
        let mut body = format!("task={}\nconn={conn}\n", settings.name);
        if let Some(h) = proxy {
            body.push_str(&format!("client={}\ndest={}\n", h.source, h.dest));
        }
        stream.write_all(&answer("200 OK", &body, keep_alive))?;
        if !keep_alive {
            return Ok(());
        }
    }
}

fn main() {
    let settings = match settings(
        std::env::args().skip(1),
        std::env::var("PORT").ok(),
        std::env::var("SHOAL_TASK_ID").ok(),
    ) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mesh-echo: {e}");
            std::process::exit(2);
        }
    };
    // Block SIGTERM and SIGINT in every thread (threads inherit the mask) and take them
    // with sigwait on the main thread: no handler, no unsafe code.
    let mut signals = SigSet::empty();
    signals.add(Signal::SIGTERM);
    signals.add(Signal::SIGINT);
    if let Err(e) = signals.thread_block() {
        eprintln!("mesh-echo: cannot block SIGTERM: {e}");
        std::process::exit(1);
    }
    let listener = match TcpListener::bind(settings.listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("mesh-echo: cannot listen on {}: {e}", settings.listen);
            std::process::exit(1);
        }
    };
    eprintln!(
        "mesh-echo: {} listening on {}{}",
        settings.name,
        settings.listen,
        if settings.proxy_v2 {
            " (PROXY v2 required)"
        } else {
            ""
        }
    );
    let settings = Arc::new(settings);
    let accepted = Arc::new(AtomicU64::new(0));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let conn = accepted.fetch_add(1, Ordering::Relaxed) + 1;
            let settings = Arc::clone(&settings);
            std::thread::spawn(move || {
                let _ = serve(stream, &settings, conn);
            });
        }
    });
    match signals.wait() {
        Ok(sig) => eprintln!("mesh-echo: {sig}: exiting"),
        Err(e) => eprintln!("mesh-echo: sigwait failed: {e}"),
    }
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v2 header: signature, `ver_cmd`, `family`, the announced length, then `rest`.
    fn header(ver_cmd: u8, family: u8, len: u16, rest: &[u8]) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.extend([ver_cmd, family]);
        h.extend(len.to_be_bytes());
        h.extend_from_slice(rest);
        h
    }

    fn v4_addresses() -> Vec<u8> {
        let mut a = vec![127, 0, 0, 1, 127, 0, 93, 2];
        a.extend(40_001u16.to_be_bytes());
        a.extend(29_006u16.to_be_bytes());
        a
    }

    #[test]
    fn parses_a_tcp4_header_and_says_how_long_it_is() {
        let mut bytes = header(0x21, 0x11, 12, &v4_addresses());
        bytes.extend_from_slice(b"GET / HTTP/1.0\r\n\r\n");
        let want = ProxyHeader {
            source: "127.0.0.1:40001".parse().unwrap(),
            dest: "127.0.93.2:29006".parse().unwrap(),
        };
        assert_eq!(
            parse_proxy_v2(&bytes),
            Ok(Parsed::Header {
                header: want,
                len: 28
            })
        );
    }

    #[test]
    fn parses_a_tcp6_header_and_skips_tlvs() {
        let src: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let dst: Ipv6Addr = "::1".parse().unwrap();
        let mut a = src.octets().to_vec();
        a.extend(dst.octets());
        a.extend(443u16.to_be_bytes());
        a.extend(8443u16.to_be_bytes());
        // A TLV (type 0x04 NOOP, length 3) after the addresses.
        a.extend([0x04, 0, 3, 9, 9, 9]);
        let bytes = header(0x21, 0x21, 42, &a);
        assert_eq!(
            parse_proxy_v2(&bytes),
            Ok(Parsed::Header {
                header: ProxyHeader {
                    source: "[2001:db8::1]:443".parse().unwrap(),
                    dest: "[::1]:8443".parse().unwrap(),
                },
                len: 16 + 42,
            })
        );
    }

    #[test]
    fn every_prefix_of_a_valid_header_is_incomplete() {
        let bytes = header(0x21, 0x11, 12, &v4_addresses());
        for n in 0..bytes.len() {
            assert_eq!(
                parse_proxy_v2(&bytes[..n]),
                Ok(Parsed::Incomplete),
                "{n} bytes"
            );
        }
        assert!(matches!(
            parse_proxy_v2(&bytes),
            Ok(Parsed::Header { len: 28, .. })
        ));
    }

    #[test]
    fn refuses_what_is_not_a_proxy_v2_tcp_header() {
        let refused = |bytes: &[u8], why: &str| {
            let err = parse_proxy_v2(bytes).expect_err(why);
            assert!(err.contains(why), "{err} (want {why})");
        };
        refused(b"GET / HTTP/1.0\r\n\r\n", "no PROXY protocol v2 signature");
        // A v1 header, and a signature broken at its last byte.
        refused(b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\n", "signature");
        refused(b"\r\n\r\n\0\r\nQUIT!", "signature");
        refused(&header(0x11, 0x11, 12, &v4_addresses()), "version 1");
        refused(&header(0x20, 0x11, 12, &v4_addresses()), "command 0x0");
        refused(&header(0x22, 0x11, 12, &v4_addresses()), "command 0x2");
        refused(
            &header(0x21, 0x12, 12, &v4_addresses()),
            "family/transport 0x12",
        );
        refused(&header(0x21, 0x31, 216, &[0; 216]), "family/transport 0x31");
        refused(&header(0x21, 0x00, 0, &[]), "family/transport 0x00");
        refused(&header(0x21, 0x11, 11, &v4_addresses()[..11]), "shorter");
        refused(&header(0x21, 0x21, 12, &v4_addresses()), "shorter");
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A small deterministic sweep: every header byte value at each fixed position, and
        // every announced length up to 64, with short bodies.
        let base = header(0x21, 0x11, 12, &v4_addresses());
        for pos in 12..16 {
            for v in 0..=255u8 {
                let mut b = base.clone();
                b[pos] = v;
                for cut in [13, 16, 20, b.len()] {
                    let _ = parse_proxy_v2(&b[..cut.min(b.len())]);
                }
            }
        }
        for len in 0..64u16 {
            let _ = parse_proxy_v2(&header(0x21, 0x21, len, &[1; 40]));
        }
    }

    #[test]
    fn request_heads_end_at_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.0\r\n\r\nrest"), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.0\r\nHost: x\r\n"), None);
        assert!(wants_keep_alive(
            b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"
        ));
        assert!(!wants_keep_alive(
            b"GET / HTTP/1.0\r\nConnection: close\r\n\r\n"
        ));
        assert!(!wants_keep_alive(b"GET /keep-alive HTTP/1.0\r\n\r\n"));
    }

    #[test]
    fn settings_come_from_arguments_then_the_environment() {
        let args = |a: &[&str]| a.iter().map(|s| (*s).to_string()).collect::<Vec<_>>();
        let s = settings(args(&[]), Some("4000".into()), Some("t1".into())).unwrap();
        assert_eq!(s.listen, "127.0.0.1:4000".parse().unwrap());
        assert_eq!(s.name, "t1");
        assert!(!s.proxy_v2);
        let s = settings(
            args(&["--listen", "127.0.0.2:5", "--name", "x", "--proxy-v2"]),
            None,
            Some("t1".into()),
        )
        .unwrap();
        assert_eq!(
            (s.listen.port(), s.name.as_str(), s.proxy_v2),
            (5, "x", true)
        );
        assert_eq!(
            settings(args(&[]), Some("1".into()), None).unwrap().name,
            "mesh-echo"
        );
        for (a, port, why) in [
            (args(&[]), None, "no --listen"),
            (args(&[]), Some("http".to_string()), "invalid port"),
            (args(&["--listen"]), None, "needs an address"),
            (args(&["--listen", "nowhere"]), None, "invalid address"),
            (
                args(&["--bogus"]),
                Some("1".to_string()),
                "unknown argument",
            ),
        ] {
            let err = settings(a, port, None).unwrap_err();
            assert!(err.contains(why), "{err}");
        }
    }

    /// The whole server on a real socket: a bare request is refused with 400 under
    /// `--proxy-v2`, a request after a header gets the header's addresses back.
    #[test]
    fn serves_over_tcp_with_and_without_a_header() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let settings = Arc::new(Settings {
            listen: addr,
            name: "unit".into(),
            proxy_v2: true,
        });
        let server = {
            let settings = Arc::clone(&settings);
            std::thread::spawn(move || {
                for (i, s) in listener.incoming().take(2).enumerate() {
                    let _ = serve(s.unwrap(), &settings, i as u64 + 1);
                }
            })
        };
        let exchange = |bytes: &[u8]| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(bytes).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out
        };
        let bare = exchange(b"GET / HTTP/1.0\r\n\r\n");
        assert!(bare.starts_with("HTTP/1.0 400 "), "{bare}");
        let mut with = header(0x21, 0x11, 12, &v4_addresses());
        with.extend_from_slice(b"GET / HTTP/1.0\r\n\r\n");
        let ok = exchange(&with);
        assert!(ok.starts_with("HTTP/1.0 200 OK\r\n"), "{ok}");
        assert!(
            ok.ends_with("task=unit\nconn=2\nclient=127.0.0.1:40001\ndest=127.0.93.2:29006\n"),
            "{ok}"
        );
        server.join().unwrap();
    }
}
