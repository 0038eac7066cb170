//! Issue 22: services find each other by name. Every daemon runs discovery (the default) on
//! its own Docker network (`shoal-dt-N`, `10.214.N.0/24`: containers in `.0/25`, VIPs in
//! `.128/25`), as several nodes sharing one engine must; a container on a node resolves a
//! service through that node's DNS server (the gateway, `.1`) to the service's VIP on that
//! node, and the node's VIP listener balances connections over the service's tasks — local
//! ones directly, remote ones through a QUIC stream (tag 12).
//!
//! Requests are made from inside a client container with `docker exec` (busybox `nc`, one
//! connection per request, HTTP/1.0 to busybox httpd serving the container's hostname), and
//! from a process-driver task that resolves through `$SHOAL_DNS`.
//!
//! Address blocks: 127.0.140.1–.4 (networks 141–144): by name across nodes and a node
//! killed; 127.0.141.1 (network 145): names that do not exist, a removed service, dnsrr;
//! 127.0.141.11 (network 148): a rolling update; 127.0.142.1–.2 (networks 146–147): the
//! benchmark.
//!
//! Cleaning up: the [`Daemon`]s (dropped also when a test fails) kill their daemons and
//! tasks, a [`ClusterContainers`] guard removes the cluster's containers, and a [`Networks`]
//! guard then removes the test networks (the VIP route lives on the bridge and goes with it).
//! The tests need Docker and the test image: they skip without them and fail under
//! `SHOAL_REQUIRE_DOCKER=1`.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use shoal_tests::{
    ClusterContainers, Daemon, cluster_id, docker, docker_ready, mesh_counters, poll_until,
    service_containers, start_cluster_with, tasks,
};

const IMAGE: &str = shoal_tests::TEST_IMAGE;

/// busybox httpd on port 80 serving the container's hostname (its short ID); `sh` as PID 1
/// traps SIGTERM so the task stops at once.
const HTTPD: &str = "mkdir -p /www; hostname > /www/index.html; \
    trap 'exit 0' TERM; httpd -f -p 80 -h /www & wait";

/// A client container that only waits to be exec'd into.
const IDLE: &str = "trap 'exit 0' TERM; sleep 3600 & wait";

/// How long tasks may take to run.
const START_DEADLINE: Duration = Duration::from_secs(60);

/// Removes the test networks when dropped (after the containers: declare it first), and
/// any left by an earlier run when made.
struct Networks(Vec<String>);

impl Networks {
    fn new(numbers: &[u8]) -> Networks {
        let names: Vec<String> = numbers.iter().map(|n| format!("shoal-dt-{n}")).collect();
        for n in &names {
            let _ = docker(&["network", "rm", n]);
        }
        Networks(names)
    }
}

impl Drop for Networks {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = docker(&["network", "rm", n]);
        }
    }
}

/// Daemon flags: discovery (on by default; the harness turns it off for daemons without a
/// network of their own) on network `shoal-dt-N`, subnet `10.214.N.0/24`.
fn discovery_flags(d: &mut Daemon, n: u8) {
    d.extra.extend([
        "--network".to_string(),
        format!("shoal-dt-{n}"),
        "--network-subnet".to_string(),
        format!("10.214.{n}.0/24"),
    ]);
}

/// Waits until `d`'s `info` says discovery is on.
fn wait_discovery_on(d: &Daemon) -> Result<()> {
    poll_until("discovery to be on", Duration::from_secs(30), || {
        let status = d.json(&["info"])?["discovery"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        ensure!(status.starts_with("on"), "info says discovery: {status}");
        Ok(Some(()))
    })
}

/// The running tasks of `service`, once there are `n`.
fn wait_running(d: &Daemon, service: &str, n: usize) -> Result<()> {
    poll_until(
        &format!("{n} tasks of {service} running"),
        START_DEADLINE,
        || {
            let rows = tasks(d, service)?;
            let run = rows
                .iter()
                .filter(|t| t["state"] == "running" && t["desired_state"] == "running")
                .count();
            ensure!(run == n, "{run} of {n} running");
            Ok(Some(()))
        },
    )
}

/// Runs `script` with `sh -c` in container `id`.
fn exec(id: &str, script: &str) -> Result<String> {
    docker(&["exec", id, "sh", "-c", script])
}

/// `count` HTTP requests to `name` port 80 from container `id`, one connection each, in
/// turn: the body of each, or `FAIL`.
fn requests(id: &str, name: &str, count: usize) -> Result<Vec<String>> {
    let script = format!(
        "for i in $(seq {count}); do \
           r=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {name} 80 | tail -n 1); \
           echo \"${{r:-FAIL}}\"; \
         done"
    );
    Ok(exec(id, &script)?
        .lines()
        .map(|l| l.trim().to_string())
        .collect())
}

/// The one running container of `service`.
fn container_of(cluster: &str, service: &str) -> Result<String> {
    poll_until(
        &format!("the container of {service}"),
        START_DEADLINE,
        || {
            let c = service_containers(cluster, service)?;
            ensure!(c.len() == 1, "{} containers", c.len());
            Ok(Some(c[0].id.clone()))
        },
    )
}

/// One node with discovery on network `shoal-dt-{net}`, and an idle `client` container.
/// Dropped in field order: the cluster's containers, then the daemon, then the network.
struct OneNode {
    _containers: ClusterContainers,
    ms: Vec<Daemon>,
    _networks: Networks,
    cluster: String,
    client: String,
}

impl OneNode {
    fn start(prefix: &str, block: u8, first: u8, net: u8) -> Result<OneNode> {
        let networks = Networks::new(&[net]);
        let (ms, _) = start_cluster_with(prefix, block, first, 1, 0, |d| {
            discovery_flags(d, net);
            Ok(())
        })?;
        let cluster = cluster_id(&ms[0])?;
        let containers = ClusterContainers(cluster.clone());
        wait_discovery_on(&ms[0])?;
        ms[0].ok(&[
            "service", "create", "--name", "client", IMAGE, "sh", "-c", IDLE,
        ])?;
        let client = container_of(&cluster, "client")?;
        Ok(OneNode {
            _containers: containers,
            ms,
            _networks: networks,
            cluster,
            client,
        })
    }
}

/// A client container on a fourth node reaches `api` (3 replicas, one on each manager) by
/// name: the requests spread over all three replicas, every one of them remote (the client
/// node's mesh counter of remote forwards moves), a process-driver task on the same node
/// reaches it by name through `$SHOAL_DNS`, and once a node with a replica is killed the
/// requests keep succeeding (each connection to the dead node's task moves on to the next).
#[test]
fn issue_22_a_container_reaches_a_service_by_name_on_other_nodes() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let _networks = Networks::new(&[141, 142, 143, 144]);
    let (mut ms, ws) = start_cluster_with("dn-", 140, 1, 3, 1, |d| {
        let n = 141
            + d.addr
                .ip()
                .to_string()
                .rsplit('.')
                .next()
                .unwrap_or("0")
                .parse::<u8>()?
            - 1;
        discovery_flags(d, n);
        Ok(())
    })?;
    let cluster = cluster_id(&ms[0])?;
    let _containers = ClusterContainers(cluster.clone());
    for d in ms.iter().chain(&ws) {
        wait_discovery_on(d)?;
    }
    ms[0].ok(&[
        "service",
        "create",
        "--name",
        "api",
        "--replicas",
        "3",
        "--replicas-max-per-node",
        "1",
        "--constraint",
        "node.role==manager",
        "--expose",
        "80",
        IMAGE,
        "sh",
        "-c",
        HTTPD,
    ])?;
    wait_running(&ms[0], "api", 3)?;
    let w = &ws[0];
    let placed = format!("node.hostname=={}", w.name);
    ms[0].ok(&[
        "service",
        "create",
        "--name",
        "client",
        "--constraint",
        &placed,
        IMAGE,
        "sh",
        "-c",
        IDLE,
    ])?;
    wait_running(&ms[0], "client", 1)?;
    let client = container_of(&cluster, "client")?;
    let replicas: BTreeSet<String> = service_containers(&cluster, "api")?
        .iter()
        .map(|c| c.id.get(..12).unwrap_or_default().to_string())
        .collect();
    ensure!(replicas.len() == 3, "api runs {replicas:?}");

    let before = mesh_counters(w)?;
    let answers = poll_until(
        "requests to api by name from the client",
        Duration::from_secs(20),
        || {
            let answers = requests(&client, "api", 12)?;
            ensure!(
                answers.iter().all(|a| replicas.contains(a)),
                "answers {answers:?}, replicas {replicas:?}"
            );
            Ok(Some(answers))
        },
    )?;
    let seen: BTreeSet<&String> = answers.iter().collect();
    ensure!(
        seen.len() == 3,
        "12 requests reached only {seen:?} of {replicas:?}: they should be balanced round-robin"
    );
    let after = mesh_counters(w)?;
    ensure!(
        after.remote_forwards >= before.remote_forwards + 12,
        "the client's node forwarded {} connections to other nodes for 12 requests",
        after.remote_forwards - before.remote_forwards
    );
    println!("by name: {answers:?}");

    // A process-driver task on the same node, by name through $SHOAL_DNS.
    let script = "while true; do \
        a=$(nslookup api $SHOAL_DNS | awk '/^Address/ {print $2}' | tail -n 1); \
        r=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 $a 80 | tail -n 1); \
        echo \"vip=$a got=$r\"; sleep 0.5; done";
    ms[0].ok(&[
        "service",
        "create",
        "--name",
        "pclient",
        "--driver",
        "process",
        "--constraint",
        &placed,
        "/bin/busybox",
        "sh",
        "-c",
        script,
    ])?;
    let line = poll_until(
        "the process task to reach api by name",
        Duration::from_secs(30),
        || {
            let logs = ms[0].ok(&["service", "logs", "pclient"])?;
            let hit = logs
                .lines()
                .find(|l| replicas.iter().any(|r| l.ends_with(&format!("got={r}"))));
            ensure!(hit.is_some(), "no answer from api yet:\n{logs}");
            Ok(hit.map(str::to_string))
        },
    )?;
    ensure!(
        line.contains("vip=10.214.144.1"),
        "the process task should resolve api to its node's VIP (10.214.144.128/25): {line}"
    );
    println!("process task: {line}");

    // A node with a replica killed: requests keep succeeding.
    ms[2].kill9();
    let killed_at = Instant::now();
    let answers = requests(&client, "api", 20)?;
    let failed = answers.iter().filter(|a| !replicas.contains(*a)).count();
    println!(
        "after kill -9 of {}: {answers:?} in {:?}",
        ms[2].name,
        killed_at.elapsed()
    );
    ensure!(
        failed <= 1,
        "{failed} of 20 requests failed after a node was killed (at most the one in flight may): {answers:?}"
    );
    Ok(())
}

/// On one node: a name that no service has gets NXDOMAIN at once (not a time-out); a
/// removed service stops resolving within a second of `service rm`; `tasks.NAME` and a
/// `dnsrr` service answer the addresses of the tasks on this node's network.
#[test]
fn issue_22_unknown_and_removed_names_are_nxdomain_and_dnsrr_answers_tasks() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let node = OneNode::start("dx-", 141, 1, 145)?;
    let (m, client) = (&node.ms[0], &node.client);
    m.ok(&[
        "service",
        "create",
        "--name",
        "rr",
        "--replicas",
        "2",
        "--endpoint-mode",
        "dnsrr",
        "--expose",
        "80",
        IMAGE,
        "sh",
        "-c",
        HTTPD,
    ])?;
    m.ok(&[
        "service", "create", "--name", "gone", "--expose", "80", IMAGE, "sh", "-c", HTTPD,
    ])?;
    wait_running(m, "rr", 2)?;
    wait_running(m, "gone", 1)?;

    // Unknown: NXDOMAIN, not a hang.
    let started = Instant::now();
    let out = exec(client, "nslookup nosuch 2>&1; true")?;
    let took = started.elapsed();
    ensure!(out.contains("NXDOMAIN"), "nslookup nosuch printed:\n{out}");
    ensure!(
        took < Duration::from_secs(4),
        "nslookup nosuch took {took:?}: a resolver time-out, not an answer"
    );

    // dnsrr: the tasks' own addresses, no VIP.
    let rr_ips = poll_until("rr to answer its tasks", Duration::from_secs(10), || {
        let out = exec(client, "nslookup rr 2>&1; true")?;
        let ips: BTreeSet<String> = out
            .lines()
            .filter_map(|l| l.strip_prefix("Address:"))
            .map(|a| a.trim().to_string())
            .filter(|a| a.starts_with("10.214.145.") && !a.contains(':'))
            .collect();
        ensure!(ips.len() == 2, "nslookup rr printed:\n{out}");
        Ok(Some(ips))
    })?;
    for ip in &rr_ips {
        let last: u8 = ip.rsplit('.').next().unwrap_or("0").parse()?;
        ensure!(
            (2..128).contains(&last),
            "dnsrr answered {ip}, which is not a container address (10.214.145.0/25)"
        );
    }
    let answers = requests(client, "rr", 2)?;
    ensure!(
        answers.iter().all(|a| a != "FAIL"),
        "rr by name: {answers:?}"
    );

    // Removed: no longer resolves, within a second.
    let out = exec(client, "nslookup gone 2>&1; true")?;
    ensure!(
        out.contains("10.214.145.1"),
        "gone should resolve to its VIP first:\n{out}"
    );
    m.ok(&["service", "rm", "gone"])?;
    let removed = Instant::now();
    poll_until("gone to stop resolving", Duration::from_secs(10), || {
        let out = exec(client, "nslookup gone 2>&1; true")?;
        ensure!(out.contains("NXDOMAIN"), "still resolves:\n{out}");
        Ok(Some(()))
    })
    .context("a removed service's name should stop resolving")?;
    let took = removed.elapsed();
    println!("gone stopped resolving {took:?} after service rm returned");
    ensure!(
        took < Duration::from_secs(2),
        "gone still resolved {took:?} after service rm (one `docker exec` is about 0.2 s)"
    );
    Ok(())
}

/// Requests per second from a client container, `count` HTTP/1.0 requests in turn (one
/// connection each) to `target` port 80; every answer must be one of `ok`.
fn rate(id: &str, target: &str, count: usize, ok: &BTreeSet<String>) -> Result<f64> {
    let started = Instant::now();
    let answers = requests(id, target, count)?;
    let secs = started.elapsed().as_secs_f64();
    let good = answers.iter().filter(|a| ok.contains(*a)).count();
    ensure!(
        good == count,
        "{good} of {count} requests to {target} answered: {:?}",
        &answers[..answers.len().min(5)]
    );
    Ok(count as f64 / secs)
}

/// The benchmark behind BENCHMARKS.md's "Service discovery: by name vs directly": request
/// throughput from a client container to one httpd task, directly at the container's
/// address, by name with the task on the client's node (the VIP proxy's local path), and by
/// name from another node (the QUIC path). Sequential requests, one connection each, timed
/// around one `docker exec` (its ~0.2 s included). Run with `scripts/bench-discovery.sh`.
#[test]
#[ignore = "benchmark: scripts/bench-discovery.sh"]
fn bench_requests_by_name_vs_direct() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    const COUNT: usize = 300;
    let _networks = Networks::new(&[146, 147]);
    let (ms, ws) = start_cluster_with("db-", 142, 1, 1, 1, |d| {
        let n = if d.name.contains('w') { 147 } else { 146 };
        discovery_flags(d, n);
        Ok(())
    })?;
    let m = &ms[0];
    let cluster = cluster_id(m)?;
    let _containers = ClusterContainers(cluster.clone());
    wait_discovery_on(m)?;
    wait_discovery_on(&ws[0])?;
    let on_m = format!("node.hostname=={}", m.name);
    let on_w = format!("node.hostname=={}", ws[0].name);
    m.ok(&[
        "service",
        "create",
        "--name",
        "api",
        "--constraint",
        &on_m,
        "--expose",
        "80",
        IMAGE,
        "sh",
        "-c",
        HTTPD,
    ])?;
    for (name, place) in [("near", &on_m), ("far", &on_w)] {
        m.ok(&[
            "service",
            "create",
            "--name",
            name,
            "--constraint",
            place,
            IMAGE,
            "sh",
            "-c",
            IDLE,
        ])?;
    }
    for s in ["api", "near", "far"] {
        wait_running(m, s, 1)?;
    }
    let api = container_of(&cluster, "api")?;
    let ok: BTreeSet<String> = [api.get(..12).unwrap_or_default().to_string()].into();
    let ip = docker(&[
        "inspect",
        "-f",
        "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
        &api,
    ])?
    .trim()
    .to_string();
    let near = container_of(&cluster, "near")?;
    let far = container_of(&cluster, "far")?;
    // Warm up (name lookups, the QUIC connection), then measure.
    rate(&near, "api", 10, &ok)?;
    rate(&far, "api", 10, &ok)?;
    let direct = rate(&near, &ip, COUNT, &ok)?;
    let local = rate(&near, "api", COUNT, &ok)?;
    let remote = rate(&far, "api", COUNT, &ok)?;
    println!("direct to the container {ip}: {direct:.0} requests/s ({COUNT} in turn)");
    println!(
        "by name, task on the same node: {local:.0} requests/s, {:.2} of direct",
        local / direct
    );
    println!(
        "by name, task on another node (QUIC): {remote:.0} requests/s, {:.2} of direct",
        remote / direct
    );
    Ok(())
}

/// A task leaves rotation before it stops: while `api` (two replicas) rolls to a new version
/// one task at a time, requests by name from a client keep succeeding, and some are answered
/// by the new tasks.
#[test]
fn issue_22_requests_by_name_keep_succeeding_through_a_rolling_update() -> Result<()> {
    if !docker_ready()? {
        return Ok(());
    }
    let node = OneNode::start("du-", 141, 11, 148)?;
    let (m, cluster, client) = (&node.ms[0], &node.cluster, &node.client);
    m.ok(&[
        "service",
        "create",
        "--name",
        "api",
        "--replicas",
        "2",
        "--expose",
        "80",
        IMAGE,
        "sh",
        "-c",
        HTTPD,
    ])?;
    wait_running(m, "api", 2)?;
    let old: BTreeSet<String> = service_containers(cluster, "api")?
        .iter()
        .map(|c| c.id.get(..12).unwrap_or_default().to_string())
        .collect();
    poll_until("api by name", Duration::from_secs(20), || {
        let a = requests(client, "api", 2)?;
        ensure!(a.iter().all(|x| old.contains(x)), "{a:?}");
        Ok(Some(()))
    })?;
    m.ok(&["service", "update", "-d", "--force", "api"])?;
    let answers: Vec<String> = exec(
        client,
        "end=$(( $(date +%s) + 8 )); while [ $(date +%s) -lt $end ]; do \
           r=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 3 api 80 | tail -n 1); \
           echo \"${r:-FAIL}\"; \
         done",
    )?
    .lines()
    .map(|l| l.trim().to_string())
    .collect();
    let failed = answers.iter().filter(|a| *a == "FAIL").count();
    let new = answers
        .iter()
        .filter(|a| *a != "FAIL" && !old.contains(*a))
        .count();
    println!(
        "{} requests during the update: {failed} failed, {new} answered by new tasks",
        answers.len()
    );
    ensure!(
        failed == 0,
        "{failed} of {} requests by name failed during the rolling update",
        answers.len()
    );
    ensure!(
        new > 0,
        "no request reached a new task within 8 s: the update did not overlap the requests"
    );
    Ok(())
}
