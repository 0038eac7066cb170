//! Cluster tests: real `shoal` daemons, real CLI, real `kill -9`.
//!
//! Address blocks: each test owns `127.0.N.x` for its own N.

use std::time::{Duration, Instant};

use anyhow::Result;
use shoal_tests::{Daemon, poll_until};

/// Issue 2: a daemon you can talk to, a state-dir lock, and the CLI's no-daemon error.
#[test]
fn daemon_info_lock_and_no_daemon_error() -> Result<()> {
    let mut d = Daemon::new("solo", "127.0.2.1:4747")?;
    d.start()?;
    let info = d.json(&["info"])?;
    assert_eq!(info["cluster"], "inactive");
    let id = info["node_id"].as_str().unwrap_or_default().to_string();
    assert_eq!(id.len(), 25, "node id {id}");
    assert_eq!(info["hostname"], "solo");
    assert_eq!(info["listen_addr"], "127.0.2.1:4747");
    assert_eq!(info["advertise_addr"], "127.0.2.1:4747");
    let text = d.ok(&["info"])?;
    assert!(text.starts_with("Cluster: inactive"), "{text}");

    // The key is 0600.
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(d.state_dir.join("node.key"))?.permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // A second daemon on the same state dir is refused and names the first's pid.
    let mut second = Daemon::new("second", "127.0.2.2:4747")?;
    second.state_dir.clone_from(&d.state_dir);
    let out = second.spawn()?.wait_with_output()?;
    assert!(!out.status.success());
    let log = second.log_tail();
    assert!(
        log.contains("is in use by another shoal daemon (pid"),
        "{log}"
    );

    // A clean stop removes the socket; the same key comes back on restart.
    let status = d.stop()?;
    assert!(status.success(), "daemon exit: {status}");
    assert!(!d.socket.exists(), "socket left behind");
    d.start()?;
    assert_eq!(d.json(&["info"])?["node_id"], id.as_str());

    // kill -9: the CLI then says there is no daemon, in one line, exit 1.
    d.kill9();
    let out = d.cli(&["info"])?;
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.starts_with("Error: cannot connect to the shoal daemon at unix://"),
        "{err}"
    );
    assert!(err.trim_end().ends_with("is it running?"), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");

    // A stale socket left by the killed daemon does not stop a restart.
    d.start()?;
    assert_eq!(d.json(&["info"])?["node_id"], id.as_str());
    Ok(())
}

/// Issue 2: a corrupt key file is refused, named, and never overwritten.
#[test]
fn corrupt_key_is_refused_and_kept() -> Result<()> {
    let mut d = Daemon::new("corrupt", "127.0.2.3:4747")?;
    std::fs::create_dir_all(&d.state_dir)?;
    let key = d.state_dir.join("node.key");
    std::fs::write(&key, b"this is not a key")?;
    let out = d.spawn()?.wait_with_output()?;
    assert!(!out.status.success());
    let log = d.log_tail();
    assert!(log.contains("node.key"), "{log}");
    assert_eq!(std::fs::read(&key)?, b"this is not a key");
    // A socket path over the OS limit is refused with the reason.
    let long = format!("/tmp/{}/s.sock", "x".repeat(120));
    d.extra = vec![];
    std::fs::remove_file(&key)?;
    d.socket = long.into();
    let out = d.spawn()?.wait_with_output()?;
    assert!(!out.status.success());
    assert!(d.log_tail().contains("over the limit"), "{}", d.log_tail());
    Ok(())
}

fn leader_of(d: &Daemon) -> Result<Option<String>> {
    let info = d.json(&["info"])?;
    Ok(info["leader"].as_str().map(str::to_string))
}

/// Issue 3: a cluster of one on durable Raft: init, node ls, survive kill -9, leave.
#[test]
fn cluster_of_one_survives_kill_and_leaves() -> Result<()> {
    let mut d = Daemon::new("alpha", "127.0.3.1:4747")?;
    d.start()?;
    assert_eq!(d.json(&["info"])?["cluster"], "inactive");
    let err = d.fails(&["node", "ls"])?;
    assert!(
        err.contains("this node is not part of a cluster: run `shoal init` or `shoal join`"),
        "{err}"
    );

    let out = d.ok(&["init"])?;
    let node_id = d.json(&["info"])?["node_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        out.trim(),
        format!("Cluster initialized: current node ({node_id}) is now a manager.")
    );
    let info = d.json(&["info"])?;
    assert_eq!(info["cluster"], "active");
    assert_eq!(info["role"], "manager");
    assert_eq!(info["leader"], node_id.as_str());
    assert_eq!(info["managers"], 1);
    assert_eq!(info["nodes"], 1);
    let cluster_id = info["cluster_id"].as_str().unwrap_or_default().to_string();

    let nodes = d.json(&["node", "ls"])?;
    let nodes = nodes.as_array().cloned().unwrap_or_default();
    assert_eq!(nodes.len(), 1);
    assert_eq!(nodes[0]["id"], node_id.as_str());
    assert_eq!(nodes[0]["hostname"], "alpha");
    assert_eq!(nodes[0]["role"], "manager");
    assert_eq!(nodes[0]["status"], "ready");
    assert_eq!(nodes[0]["availability"], "active");
    assert_eq!(nodes[0]["manager_status"], "leader");
    assert_eq!(nodes[0]["addr"], "127.0.3.1:4747");
    let table = d.ok(&["node", "ls"])?;
    assert!(table.starts_with("ID"), "{table}");
    assert!(table.contains(&format!("{node_id} *")), "{table}");
    assert!(table.contains("Leader"), "{table}");
    assert_eq!(d.ok(&["node", "ls", "-q"])?.trim(), node_id);
    assert_eq!(
        d.inspect(&["node", "inspect", &node_id[..6]])?["id"],
        node_id.as_str()
    );
    assert_eq!(
        d.inspect(&["node", "inspect", "alpha"])?["id"],
        node_id.as_str()
    );
    let err = d.fails(&["node", "inspect", "nosuchnode"])?;
    assert!(err.contains("no such node: nosuchnode"), "{err}");

    let err = d.fails(&["init"])?;
    assert!(
        err.contains("this node is already part of a cluster"),
        "{err}"
    );
    let err = d.fails(&["leave"])?;
    assert!(err.contains("last manager"), "{err}");

    // kill -9 and restart: same IDs, leader again, node table intact.
    d.kill9();
    let started = Instant::now();
    d.start()?;
    let leader = poll_until("a leader after restart", Duration::from_secs(10), || {
        leader_of(&d)
    })?;
    eprintln!("restart to leader: {} ms", started.elapsed().as_millis());
    assert_eq!(leader, node_id);
    let info = d.json(&["info"])?;
    assert_eq!(info["cluster_id"], cluster_id.as_str());
    assert_eq!(info["node_id"], node_id.as_str());
    let nodes = d.json(&["node", "ls"])?;
    assert_eq!(nodes.as_array().map(Vec::len), Some(1));
    assert_eq!(nodes[0]["hostname"], "alpha");

    d.ok(&["leave", "--force"])?;
    assert_eq!(d.json(&["info"])?["cluster"], "inactive");
    assert_eq!(d.json(&["info"])?["node_id"], node_id.as_str());
    let err = d.fails(&["node", "ls"])?;
    assert!(err.contains("not part of a cluster"), "{err}");
    d.ok(&["init", "--availability", "drain"])?;
    let info = d.json(&["info"])?;
    assert_eq!(info["cluster"], "active");
    assert_ne!(info["cluster_id"], cluster_id.as_str());
    assert_eq!(d.json(&["node", "ls"])?[0]["availability"], "drain");
    Ok(())
}

/// Issue 3: a corrupt raft.redb is named and the daemon refuses to start; the file is kept.
#[test]
fn corrupt_raft_db_refuses_to_start() -> Result<()> {
    let mut d = Daemon::new("beta", "127.0.3.2:4747")?;
    d.start()?;
    d.ok(&["init"])?;
    d.kill9();
    let db = d.state_dir.join("raft.redb");
    let mut bytes = std::fs::read(&db)?;
    for b in bytes.iter_mut().take(4096) {
        *b = 0xAB;
    }
    std::fs::write(&db, &bytes)?;
    let out = d.spawn()?.wait_with_output()?;
    assert!(!out.status.success());
    let log = d.log_tail();
    assert!(log.contains("raft.redb"), "{log}");
    assert_eq!(std::fs::read(&db)?, bytes, "raft.redb was modified");
    Ok(())
}
