//! The mesh on one node, with real TCP on loopback and fake seams for the drivers and peers.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use super::forward::BoxFut;
use super::listen::wanted_ports;
use super::*;
use crate::manager::services::{PortSpec, PublishMode};
use crate::testutil::poll_until;

struct FakeTasks(HashMap<String, SocketAddr>);

impl LocalTasks for FakeTasks {
    fn endpoint<'a>(
        &'a self,
        task_id: &'a str,
        _driver: &'a str,
        _target: u16,
    ) -> BoxFut<'a, Option<SocketAddr>> {
        let found = self.0.get(task_id).copied();
        Box::pin(async move { found })
    }
}

struct NoPeers;

impl Peers for NoPeers {
    fn open<'a>(
        &'a self,
        node_id: &'a str,
        _addr: SocketAddr,
    ) -> BoxFut<'a, Result<(quinn::SendStream, quinn::RecvStream), String>> {
        Box::pin(async move { Err(format!("no route to {node_id}")) })
    }
}

fn task(id: &str, node: &str, ready: bool) -> TaskEndpoint {
    TaskEndpoint {
        task_id: id.into(),
        node_id: node.into(),
        node_addr: "127.0.0.1:4747".parse().unwrap(),
        driver: "process".into(),
        ready,
    }
}

fn service(id: &str, port: PortSpec, tasks: Vec<TaskEndpoint>) -> PublishedService {
    PublishedService {
        service_id: id.into(),
        name: id.into(),
        ports: vec![port],
        tasks,
    }
}

fn host(mut p: PortSpec) -> PortSpec {
    p.mode = PublishMode::Host;
    p
}

#[test]
fn a_node_listens_only_while_a_ready_task_can_take_the_connection() {
    let table = EndpointTable {
        services: vec![
            service("a", PortSpec::tcp(8080, 80), vec![task("a1", "n2", true)]),
            service("b", PortSpec::tcp(8081, 80), vec![task("b1", "n1", false)]),
            service(
                "c",
                host(PortSpec::tcp(8082, 80)),
                vec![task("c1", "n2", true)],
            ),
            service(
                "d",
                host(PortSpec::tcp(8083, 80)),
                vec![task("d1", "n1", true)],
            ),
        ],
    };
    let wanted = wanted_ports(&table, "n1");
    // Ingress: a ready task anywhere. Not ready: not in rotation. Host: only its own node.
    assert_eq!(
        wanted.into_iter().collect::<Vec<_>>(),
        [(8080, "a".to_string()), (8083, "d".to_string())]
    );
    assert_eq!(
        wanted_ports(&table, "n2")
            .keys()
            .copied()
            .collect::<Vec<_>>(),
        [8080, 8082]
    );
}

/// A backend that answers each connection with its name and what it read first (up to
/// `first` bytes), then closes.
async fn backend(name: &'static str, first: usize) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let h = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; first];
                let _ = s.read_exact(&mut buf).await;
                let mut out = name.as_bytes().to_vec();
                out.push(b'|');
                out.extend_from_slice(&buf);
                let _ = s.write_all(&out).await;
            });
        }
    });
    (addr, h)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn ask(port: u16, msg: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.write_all(msg).await?;
    s.shutdown().await?;
    let mut out = Vec::new();
    s.read_to_end(&mut out).await?;
    Ok(out)
}

fn mesh_with(tasks: &[(&str, SocketAddr)]) -> Mesh {
    let tasks = tasks.iter().map(|(t, a)| ((*t).to_string(), *a)).collect();
    let mesh = Mesh::new(
        "n1",
        "127.0.0.1".parse().unwrap(),
        Arc::new(FakeTasks(tasks)),
        Arc::new(NoPeers),
    );
    mesh.start();
    mesh
}

async fn wait_listening(port: u16, listening: bool) {
    poll_until(
        "the listener to follow the table",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || async move {
            let ok = TcpStream::connect(("127.0.0.1", port)).await.is_ok();
            if ok == listening {
                Ok(())
            } else {
                Err(format!("listening: {ok}"))
            }
        },
    )
    .await;
}

#[tokio::test]
async fn connections_go_round_robin_and_a_dead_task_is_skipped_unnoticed() {
    let (a, _ha) = backend("a", 2).await;
    let (b, _hb) = backend("b", 2).await;
    // t3's address refuses connections: its listener is gone.
    let dead = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let mesh = mesh_with(&[("t1", a), ("t2", b), ("t3", dead)]);
    let port = free_port();
    mesh.set_table(EndpointTable {
        services: vec![service(
            "s",
            PortSpec::tcp(port, 80),
            vec![
                task("t1", "n1", true),
                task("t2", "n1", true),
                task("t3", "n1", true),
            ],
        )],
    });
    wait_listening(port, true).await;
    let before = mesh.counters();
    let mut seen = Vec::new();
    for _ in 0..6 {
        let answer = ask(port, b"hi").await.expect("every connection is served");
        seen.push(String::from_utf8(answer).unwrap());
    }
    assert!(seen.iter().all(|s| s == "a|hi" || s == "b|hi"), "{seen:?}");
    assert!(
        seen.iter().any(|s| s == "a|hi") && seen.iter().any(|s| s == "b|hi"),
        "{seen:?}"
    );
    let c = mesh.counters();
    // (The listening probe's own connection may be counted after `before`.)
    assert!(c.local_forwards - before.local_forwards >= 6, "{c:?}");
    assert!(c.failed_connects >= 1, "the dead task was tried: {c:?}");
    assert_eq!(c.dropped, 0);
    assert!(c.bytes_in >= 12 && c.bytes_out >= 24, "{c:?}");
}

#[tokio::test]
async fn the_task_gets_a_proxy_v2_header_naming_the_client() {
    let (a, _ha) = backend("a", 16 + 12).await;
    let mesh = mesh_with(&[("t1", a)]);
    let port = free_port();
    let mut spec = PortSpec::tcp(port, 80);
    spec.proxy_protocol = true;
    mesh.set_table(EndpointTable {
        services: vec![service("s", spec, vec![task("t1", "n1", true)])],
    });
    wait_listening(port, true).await;
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let me = s.local_addr().unwrap();
    s.shutdown().await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    assert_eq!(&out[..2], b"a|");
    let header = &out[2..];
    let SocketAddr::V4(me) = me else {
        panic!("IPv4 loopback")
    };
    assert_eq!(
        header,
        v2_header(me.into(), SocketAddr::from(([127, 0, 0, 1], port)))
    );
}

#[tokio::test]
async fn no_ready_task_refuses_connections_and_a_ready_one_reopens_the_port() {
    let (a, _ha) = backend("a", 1).await;
    let mesh = mesh_with(&[("t1", a)]);
    let port = free_port();
    let table = |ready| EndpointTable {
        services: vec![service(
            "s",
            PortSpec::tcp(port, 80),
            vec![task("t1", "n1", ready)],
        )],
    };
    mesh.set_table(table(true));
    wait_listening(port, true).await;
    mesh.set_table(table(false));
    wait_listening(port, false).await;
    let refused = TcpStream::connect(("127.0.0.1", port)).await.unwrap_err();
    assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);
    mesh.set_table(table(true));
    wait_listening(port, true).await;
    assert_eq!(ask(port, b"x").await.unwrap(), b"a|x");
}

#[tokio::test]
async fn a_port_taken_by_someone_else_is_reported_and_taken_once_free() {
    let squatter = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = squatter.local_addr().unwrap().port();
    let (a, _ha) = backend("a", 1).await;
    let mesh = mesh_with(&[("t1", a)]);
    let mut problems = mesh.problems();
    mesh.set_table(EndpointTable {
        services: vec![service(
            "s",
            PortSpec::tcp(port, 80),
            vec![task("t1", "n1", true)],
        )],
    });
    let reported = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            problems.changed().await.unwrap();
            let p = problems.borrow().clone();
            if !p.is_empty() {
                return p;
            }
        }
    })
    .await
    .expect("the conflict is reported");
    assert_eq!(reported[0].published, port);
    assert_eq!(reported[0].service_id, "s");
    assert!(
        reported[0].error.contains("in use"),
        "{}",
        reported[0].error
    );
    drop(squatter);
    // Retried until it binds; then the problem is gone.
    wait_listening(port, true).await;
    poll_until(
        "the problem to clear",
        Duration::from_secs(5),
        Duration::from_millis(20),
        || {
            let empty = problems.borrow().is_empty();
            std::future::ready(if empty { Ok(()) } else { Err("still reported") })
        },
    )
    .await;
    assert_eq!(ask(port, b"y").await.unwrap(), b"a|y");
}
