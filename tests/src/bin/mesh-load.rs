//! `mesh-load`: a small HTTP load generator for scripts/bench-mesh.sh.
//!
//! ```text
//! mesh-load --addr IP:PORT [--connections N] [--duration SECS] [--keepalive] [--path /]
//! ```
//!
//! `N` threads (default 8) each send `GET PATH HTTP/1.0` back to back for `SECS` seconds
//! (default 5, fractions allowed): by default one new connection per request, read to the
//! server's close (so the closing side, and its TIME_WAIT, is the server's). With
//! `--keepalive` a request asks `Connection: keep-alive` and the connection is reused while the
//! server answers with a `Content-Length` and keeps it open (busybox httpd never does: then it
//! is one connection per request all the same).
//!
//! A request counts as a success when the answer's status is 200 and its body arrived
//! whole; anything else (refused, reset, timed out, another status) is an error. Prints one
//! line of JSON: `{"addr", "connections", "duration_s", "keepalive", "requests", "errors",
//! "req_per_s", "p50_us", "p99_us", "max_us"}` (requests counts successes; latencies are of
//! successes, from connect, or from the write on a reused connection, to the last byte).
//! Exit status 1 when not one request succeeded. Bad arguments: one line on stderr, exit 2.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(5);
const USAGE: &str =
    "usage: mesh-load --addr IP:PORT [--connections N] [--duration SECS] [--keepalive] [--path /]";

#[derive(Debug, Clone, PartialEq)]
struct Settings {
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    keepalive: bool,
    path: String,
}

fn settings(args: impl IntoIterator<Item = String>) -> Result<Settings, String> {
    let mut addr = None;
    let mut connections = 8usize;
    let mut duration = Duration::from_secs(5);
    let mut keepalive = false;
    let mut path = "/".to_string();
    let mut args = args.into_iter();
    while let Some(a) = args.next() {
        let mut value = |flag: &str| args.next().ok_or(format!("{flag} needs a value ({USAGE})"));
        match a.as_str() {
            "--addr" => {
                let v = value("--addr")?;
                addr = Some(
                    v.parse::<SocketAddr>()
                        .map_err(|_| format!("--addr: invalid address `{v}` (want IP:PORT)"))?,
                );
            }
            "--connections" => {
                let v = value("--connections")?;
                connections = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=4096).contains(n))
                    .ok_or(format!(
                        "--connections: `{v}` is not a number from 1 to 4096"
                    ))?;
            }
            "--duration" => {
                let v = value("--duration")?;
                let secs: f64 = v
                    .parse()
                    .ok()
                    .filter(|s: &f64| s.is_finite() && *s > 0.0 && *s <= 86_400.0)
                    .ok_or(format!(
                        "--duration: `{v}` is not a number of seconds (0 < s ≤ 86400)"
                    ))?;
                duration = Duration::from_secs_f64(secs);
            }
            "--path" => {
                let v = value("--path")?;
                if !v.starts_with('/') || v.bytes().any(|b| b <= b' ' || b == 0x7f) {
                    return Err(format!("--path: `{v}` is not a request path"));
                }
                path = v;
            }
            "--keepalive" => keepalive = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument `{other}` ({USAGE})")),
        }
    }
    Ok(Settings {
        addr: addr.ok_or(format!("--addr is required ({USAGE})"))?,
        connections,
        duration,
        keepalive,
        path,
    })
}

/// One answer's head: status, `Content-Length`, whether the server keeps the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Head {
    status: u16,
    content_length: Option<usize>,
    keep_alive: bool,
    /// Length of the head, blank line included.
    len: usize,
}

fn parse_head(buf: &[u8]) -> Option<Result<Head, String>> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let text = String::from_utf8_lossy(&buf[..end]);
    let mut lines = text.lines();
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.split_whitespace();
    let (Some(version), Some(code)) = (parts.next(), parts.next()) else {
        return Some(Err(format!("bad status line `{status_line}`")));
    };
    let Some(status) = version
        .starts_with("HTTP/1.")
        .then(|| code.parse().ok())
        .flatten()
    else {
        return Some(Err(format!("bad status line `{status_line}`")));
    };
    let mut content_length = None;
    let mut keep_alive = false;
    for l in lines {
        if let Some((k, v)) = l.split_once(':') {
            let (k, v) = (k.trim(), v.trim());
            if k.eq_ignore_ascii_case("content-length") {
                content_length = v.parse().ok();
            } else if k.eq_ignore_ascii_case("connection") {
                keep_alive = v.eq_ignore_ascii_case("keep-alive");
            }
        }
    }
    Some(Ok(Head {
        status,
        content_length,
        keep_alive,
        len: end,
    }))
}

/// Sends one request on `stream` and reads its answer; `Ok(true)` when the connection may
/// be reused.
fn exchange(stream: &mut TcpStream, request: &[u8], keepalive: bool) -> Result<bool, String> {
    stream
        .write_all(request)
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 8192];
    let head = loop {
        if let Some(h) = parse_head(&buf) {
            break h?;
        }
        let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("closed before the answer's head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > 1 << 20 {
            return Err("answer head too long".into());
        }
    };
    if head.status != 200 {
        return Err(format!("status {}", head.status));
    }
    let reuse = keepalive && head.keep_alive && head.content_length.is_some();
    match head.content_length {
        Some(len) if reuse => {
            while buf.len() < head.len + len {
                let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    return Err("closed inside the body".into());
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
        _ => {
            // Read to the server's close, so the server side closes first.
            loop {
                let n = stream.read(&mut chunk).map_err(|e| format!("read: {e}"))?;
                if n == 0 {
                    break;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            if let Some(len) = head.content_length
                && buf.len() < head.len + len
            {
                return Err("closed inside the body".into());
            }
        }
    }
    Ok(reuse)
}

fn connect(addr: SocketAddr) -> Result<TcpStream, String> {
    let s = TcpStream::connect_timeout(&addr, TIMEOUT).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(TIMEOUT))
        .and_then(|()| s.set_write_timeout(Some(TIMEOUT)))
        .and_then(|()| s.set_nodelay(true))
        .map_err(|e| format!("socket options: {e}"))?;
    Ok(s)
}

/// One thread's work: latencies of successes (µs), errors, the first error seen.
fn worker(s: &Settings, until: Instant) -> (Vec<u32>, u64, Option<String>) {
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: mesh-load\r\n{}\r\n",
        s.path,
        s.addr,
        if s.keepalive {
            "Connection: keep-alive\r\n"
        } else {
            ""
        }
    );
    let mut latencies = Vec::new();
    let mut errors = 0u64;
    let mut first_error = None;
    let mut open: Option<TcpStream> = None;
    while Instant::now() < until {
        let start = Instant::now();
        let result = match open.take() {
            Some(mut stream) => {
                exchange(&mut stream, request.as_bytes(), true).map(|r| (r, stream))
            }
            None => connect(s.addr).and_then(|mut stream| {
                exchange(&mut stream, request.as_bytes(), s.keepalive).map(|r| (r, stream))
            }),
        };
        match result {
            Ok((reuse, stream)) => {
                latencies.push(u32::try_from(start.elapsed().as_micros()).unwrap_or(u32::MAX));
                if reuse {
                    open = Some(stream);
                }
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    (latencies, errors, first_error)
}

/// The `q`-quantile (0..=1) of sorted `v` (nearest rank), 0 when empty.
fn quantile(v: &[u32], q: f64) -> u32 {
    if v.is_empty() {
        return 0;
    }
    let rank = (q * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

fn main() {
    let s = match settings(std::env::args().skip(1)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mesh-load: {e}");
            std::process::exit(2);
        }
    };
    let start = Instant::now();
    let until = start + s.duration;
    let results: Vec<(Vec<u32>, u64, Option<String>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..s.connections)
            .map(|_| scope.spawn(|| worker(&s, until)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| (Vec::new(), 1, Some("a thread panicked".into())))
            })
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut all: Vec<u32> = results.iter().flat_map(|r| r.0.iter().copied()).collect();
    all.sort_unstable();
    let errors: u64 = results.iter().map(|r| r.1).sum();
    if let Some(e) = results.iter().find_map(|r| r.2.as_ref()) {
        eprintln!("mesh-load: {errors} error(s), the first: {e}");
    }
    let requests = all.len();
    println!(
        "{{\"addr\":\"{}\",\"connections\":{},\"duration_s\":{:.3},\"keepalive\":{},\"requests\":{},\"errors\":{},\"req_per_s\":{:.1},\"p50_us\":{},\"p99_us\":{},\"max_us\":{}}}",
        s.addr,
        s.connections,
        elapsed,
        s.keepalive,
        requests,
        errors,
        requests as f64 / elapsed.max(1e-9),
        quantile(&all, 0.50),
        quantile(&all, 0.99),
        all.last().copied().unwrap_or(0),
    );
    if requests == 0 {
        std::process::exit(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_string()).collect()
    }

    #[test]
    fn settings_and_their_errors() {
        let s = settings(args(&["--addr", "127.0.0.1:80"])).unwrap();
        assert_eq!(
            (s.connections, s.duration, s.keepalive, s.path.as_str()),
            (8, Duration::from_secs(5), false, "/")
        );
        let s = settings(args(&[
            "--addr",
            "127.0.0.1:80",
            "--connections",
            "3",
            "--duration",
            "0.5",
            "--keepalive",
        ]))
        .unwrap();
        assert_eq!(
            (s.connections, s.duration, s.keepalive),
            (3, Duration::from_millis(500), true)
        );
        for (a, why) in [
            (args(&[]), "--addr is required"),
            (args(&["--addr"]), "needs a value"),
            (args(&["--addr", "x"]), "invalid address"),
            (
                args(&["--addr", "127.0.0.1:1", "--connections", "0"]),
                "1 to 4096",
            ),
            (
                args(&["--addr", "127.0.0.1:1", "--duration", "-1"]),
                "seconds",
            ),
            (
                args(&["--addr", "127.0.0.1:1", "--duration", "NaN"]),
                "seconds",
            ),
            (
                args(&["--addr", "127.0.0.1:1", "--path", "a b"]),
                "request path",
            ),
            (args(&["--nope"]), "unknown argument"),
        ] {
            let err = settings(a).unwrap_err();
            assert!(err.contains(why), "{err} (want {why})");
        }
    }

    #[test]
    fn answer_heads() {
        assert_eq!(parse_head(b"HTTP/1.0 200 OK\r\n"), None);
        let h = parse_head(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: Keep-Alive\r\n\r\nhello",
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            h,
            Head {
                status: 200,
                content_length: Some(5),
                keep_alive: true,
                len: 62
            }
        );
        assert!(parse_head(b"SSH-2.0 x\r\n\r\n").unwrap().is_err());
        assert_eq!(
            parse_head(b"HTTP/1.0 404 Not Found\r\n\r\n")
                .unwrap()
                .unwrap()
                .status,
            404
        );
    }

    #[test]
    fn quantiles_by_nearest_rank() {
        let v: Vec<u32> = (1..=100).collect();
        assert_eq!(quantile(&v, 0.5), 50);
        assert_eq!(quantile(&v, 0.99), 99);
        assert_eq!(quantile(&[7], 0.99), 7);
        assert_eq!(quantile(&[], 0.5), 0);
    }
}
