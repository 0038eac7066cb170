//! Issue 19, item 3 and 6: Docker's habits on a real cluster (process driver, so no Docker is
//! needed): every `--filter` key of `node ls`, `service ls`, `service ps` and `node ps`, Go
//! templates in `--format`, `--no-trunc`, `-q`, `self`, `inspect` as a JSON array of DESIGN
//! §8's fields (several arguments, `self`), `service ps`'s "Running N seconds ago" and `\_`
//! history rows, one-line errors with exit code 1 for bad filters, unknown services and
//! malformed templates, and `daemon --log-format json`.
//!
//! Address block: 127.0.104.1–.2. Waiting: `service create/update` wait for their tasks
//! themselves; anything else is a [`poll_until`] with a deadline. Cleaning up: the
//! [`Daemon`]s' drops kill the daemons and the process driver's tasks, also on failure.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use shoal_tests::{Daemon, join_token, poll_until};

/// The tasks' program: runs until stopped.
const LOOP: [&str; 3] = ["/bin/sh", "-c", "while true; do sleep 1; done"];

/// The lines of `shoal args` (which must succeed), as a set.
fn lines(d: &Daemon, args: &[&str]) -> Result<BTreeSet<String>> {
    Ok(d.ok(args)?
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// `shoal args` must fail with exit code 1 and one `Error: …` line containing `needle`;
/// returns its stdout.
fn fails_with(d: &Daemon, args: &[&str], needle: &str) -> Result<String> {
    let out = d.cli(args)?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        out.status.code() == Some(1),
        "`shoal {}` exited {:?}, not 1: {stderr}",
        args.join(" "),
        out.status.code()
    );
    let err = stderr.trim();
    ensure!(
        err.lines().count() == 1 && err.starts_with("Error: ") && err.contains(needle),
        "`shoal {}`: not one line with `{needle}`: {err}",
        args.join(" ")
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn id_of(v: &Value) -> Result<String> {
    v["id"].as_str().map(str::to_string).context("no id")
}

#[test]
fn filters_formats_inspect_and_json_logs() -> Result<()> {
    let mut m = Daemon::new("hb-m1", "127.0.104.1:4747")?;
    m.extra = vec!["--log-format".into(), "json".into()];
    let mut w = Daemon::new("hb-w1", "127.0.104.2:4747")?;
    m.start()?;
    w.start()?;
    m.ok(&["init"])?;
    let token = join_token(&m, "worker")?;
    w.ok(&["join", "--token", &token, "127.0.104.1:4747"])?;
    let m_id = m.json(&["info"])?["node_id"]
        .as_str()
        .context("no node_id")?
        .to_string();
    let w_id = w.json(&["info"])?["node_id"]
        .as_str()
        .context("no node_id")?
        .to_string();
    poll_until("both nodes ready", Duration::from_secs(30), || {
        let nodes = m.json(&["node", "ls"])?;
        let ready = nodes
            .as_array()
            .into_iter()
            .flatten()
            .filter(|n| n["status"] == "ready")
            .count();
        Ok((ready == 2).then_some(()))
    })?;

    // `self` wherever a node is named.
    m.ok(&["node", "update", "self", "--label-add", "zone=attic"])?;
    m.ok(&["node", "update", "hb-w1", "--label-add", "zone=cellar"])?;

    // ---- node ls filters -----------------------------------------------------------
    let ls = |f: &[&str]| -> Result<BTreeSet<String>> {
        let mut a = vec!["node", "ls", "-q"];
        a.extend_from_slice(f);
        lines(&m, &a)
    };
    let both = set(&[&m_id, &w_id]);
    assert_eq!(ls(&[])?, both);
    assert_eq!(ls(&["-f", "role=manager"])?, set(&[&m_id]));
    assert_eq!(ls(&["--filter", "role=worker"])?, set(&[&w_id]));
    assert_eq!(ls(&["-f", "role=manager", "-f", "role=worker"])?, both);
    assert_eq!(ls(&["-f", "name=hb-w"])?, set(&[&w_id]));
    assert_eq!(ls(&["-f", &format!("id={}", &m_id[..8])])?, set(&[&m_id]));
    assert_eq!(ls(&["-f", "membership=accepted"])?, both);
    assert_eq!(ls(&["-f", "membership=pending"])?, set(&[]));
    assert_eq!(ls(&["-f", "node.label=zone=attic"])?, set(&[&m_id]));
    assert_eq!(ls(&["-f", "label=zone"])?, both);
    assert_eq!(
        ls(&["-f", "label=zone=cellar", "-f", "role=manager"])?,
        set(&[])
    );

    // ENGINE VERSION (the node's shoal version: no engine version is recorded) and templates.
    let table = m.ok(&["node", "ls"])?;
    assert!(
        table
            .lines()
            .next()
            .unwrap_or_default()
            .contains("ENGINE VERSION"),
        "{table}"
    );
    let version = m.json(&["info"])?["version"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(
        lines(
            &m,
            &[
                "node",
                "ls",
                "--format",
                "{{.Hostname}} {{.EngineVersion}} {{.Self}}"
            ]
        )?,
        set(&[
            &format!("hb-m1 {version} true"),
            &format!("hb-w1 {version} false")
        ])
    );

    // ---- services --------------------------------------------------------------------
    let mut create = vec![
        "service",
        "create",
        "--name",
        "web",
        "--driver",
        "process",
        "--replicas",
        "2",
        "--label",
        "tier=front",
    ];
    create.extend(LOOP);
    m.ok(&create)?;
    let mut create = vec![
        "service",
        "create",
        "--name",
        "api",
        "--driver",
        "process",
        "--mode",
        "global",
        "--label",
        "tier=back",
    ];
    create.extend(LOOP);
    m.ok(&create)?;
    let web = m.inspect(&["service", "inspect", "web"])?;
    let api = m.inspect(&["service", "inspect", "api"])?;
    let (web_id, api_id) = (id_of(&web)?, id_of(&api)?);

    let sls = |f: &[&str]| -> Result<BTreeSet<String>> {
        let mut a = vec!["service", "ls", "-q"];
        a.extend_from_slice(f);
        lines(&m, &a)
    };
    let both = set(&[&web_id, &api_id]);
    assert_eq!(sls(&[])?, both);
    assert_eq!(sls(&["-f", "name=web"])?, set(&[&web_id]));
    assert_eq!(sls(&["-f", "name=web", "-f", "name=api"])?, both);
    assert_eq!(
        sls(&["-f", &format!("id={}", &api_id[..6])])?,
        set(&[&api_id])
    );
    assert_eq!(sls(&["-f", "mode=global"])?, set(&[&api_id]));
    assert_eq!(sls(&["-f", "mode=replicated"])?, set(&[&web_id]));
    assert_eq!(sls(&["-f", "label=tier=back"])?, set(&[&api_id]));
    assert_eq!(sls(&["-f", "label=tier"])?, both);
    assert_eq!(
        sls(&["-f", "label=tier=front", "-f", "mode=global"])?,
        set(&[])
    );

    // Templates, `table` templates, {{json .}}, --no-trunc.
    assert_eq!(
        m.ok(&[
            "service",
            "ls",
            "--format",
            "{{.Name}} {{.Mode}} {{.Replicas}}"
        ])?,
        "api global 2/2\nweb replicated 2/2\n"
    );
    let t = m.ok(&["service", "ls", "--format", "table {{.ID}}\\t{{.Name}}"])?;
    let rows: Vec<Vec<&str>> = t.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows[0], ["ID", "NAME"], "{t}");
    assert_eq!(rows[2], [&web_id[..12], "web"], "{t}");
    let j: Value = serde_json::from_str(
        m.ok(&["service", "ls", "-f", "name=web", "--format", "{{json .}}"])?
            .trim(),
    )?;
    assert_eq!(
        (j["Name"].as_str(), j["Image"].as_str()),
        (Some("web"), Some("/bin/sh"))
    );
    assert_eq!(
        m.ok(&[
            "service",
            "ls",
            "-f",
            "name=web",
            "--format",
            "{{.ID}}",
            "--no-trunc"
        ])?
        .trim(),
        web_id
    );
    assert_eq!(
        m.ok(&["service", "ls", "-f", "name=web", "--format", "{{.ID}}"])?
            .trim(),
        &web_id[..12]
    );

    // ---- service ps / node ps filters ----------------------------------------------
    let rows = m.json(&["service", "ps", "web"])?;
    let rows = rows.as_array().context("ps is not an array")?.clone();
    let ids = |pred: &dyn Fn(&Value) -> bool| -> BTreeSet<String> {
        rows.iter()
            .filter(|r| pred(r))
            .filter_map(|r| r["id"].as_str().map(str::to_string))
            .collect()
    };
    let ps = |f: &[&str]| -> Result<BTreeSet<String>> {
        let mut a = vec!["service", "ps", "web", "-q"];
        a.extend_from_slice(f);
        lines(&m, &a)
    };
    assert_eq!(ps(&[])?, ids(&|_| true));
    assert_eq!(ps(&["-f", "node=hb-w1"])?, ids(&|r| r["node"] == "hb-w1"));
    assert_eq!(
        ps(&["-f", &format!("node={}", &m_id[..8])])?,
        ids(&|r| r["node_id"] == m_id.as_str())
    );
    assert_eq!(ps(&["-f", "name=web.1"])?, ids(&|r| r["slot"] == 1));
    assert_eq!(ps(&["-f", "desired-state=running"])?.len(), 2);
    assert_eq!(ps(&["-f", "desired-state=shutdown"])?, set(&[]));
    let first = rows[0]["id"].as_str().context("no task id")?;
    assert_eq!(ps(&["-f", &format!("id={}", &first[..10])])?, set(&[first]));
    assert_eq!(
        lines(&m, &["node", "ps", "self", "-q"])?,
        lines(&m, &["node", "ps", &m_id, "-q"])?
    );
    assert_eq!(
        lines(&m, &["node", "ps", "hb-w1", "-q", "-f", "name=api"])?.len(),
        1
    );
    let table = m.ok(&["service", "ps", "web"])?;
    assert!(
        table.contains(" Running ") && table.contains(" ago"),
        "CURRENT STATE is not Docker's: {table}"
    );
    assert_eq!(
        lines(
            &m,
            &[
                "service",
                "ps",
                "web",
                "--format",
                "{{.Name}} {{.DesiredState}}"
            ]
        )?,
        set(&["web.1 Running", "web.2 Running"])
    );

    // History rows: a forced update replaces every task; the old ones read `\_ web.N`.
    m.ok(&["service", "update", "--force", "web"])?;
    let table = m.ok(&["service", "ps", "web"])?;
    assert!(
        table.contains("\\_ web.1") && table.contains("\\_ web.2") && table.contains("Shutdown"),
        "no history rows: {table}"
    );
    let names: Vec<String> = m
        .ok(&["service", "ps", "web", "--format", "{{.Name}}"])?
        .lines()
        .map(str::to_string)
        .collect();
    let slot1: Vec<&str> = names
        .iter()
        .map(String::as_str)
        .filter(|n| n.ends_with("web.1"))
        .collect();
    assert!(
        slot1.first() == Some(&"web.1")
            && slot1.len() >= 2
            && slot1[1..].iter().all(|n| *n == "\\_ web.1"),
        "slot 1 is not the newest first then its history: {names:?}"
    );

    // ---- inspect: arrays, several arguments, `self`, DESIGN §8's fields ----------------
    let both = m.json(&["service", "inspect", "web", "api"])?;
    let both = both.as_array().context("service inspect is not an array")?;
    assert_eq!(both.len(), 2);
    assert_eq!(
        (both[0]["name"].as_str(), both[1]["name"].as_str()),
        (Some("web"), Some("api"))
    );
    for field in [
        "id",
        "name",
        "mode",
        "replicas",
        "running",
        "image",
        "driver",
        "ports",
        "update_status",
    ] {
        assert!(
            both[0].get(field).is_some(),
            "service inspect has no `{field}`: {}",
            both[0]
        );
    }
    assert_eq!(both[0]["mode"], "replicated");
    assert_eq!(both[1]["replicas"], Value::Null);
    // JSON is the default.
    let default: Value = serde_json::from_str(&m.ok(&["service", "inspect", "web"])?)?;
    assert_eq!(default[0]["id"], web_id.as_str());
    assert!(
        m.ok(&["service", "inspect", "--pretty", "web"])?
            .contains("Name:      web")
    );
    let nodes = m.json(&["node", "inspect", "self", "hb-w1"])?;
    let nodes = nodes.as_array().context("node inspect is not an array")?;
    assert_eq!(nodes.len(), 2);
    assert_eq!(nodes[0]["id"], m_id.as_str());
    assert_eq!(nodes[1]["id"], w_id.as_str());
    for field in [
        "id",
        "hostname",
        "role",
        "status",
        "availability",
        "manager_status",
        "addr",
        "labels",
    ] {
        assert!(
            nodes[0].get(field).is_some(),
            "node inspect has no `{field}`: {}",
            nodes[0]
        );
    }
    assert_eq!(nodes[0]["manager_status"], "leader");
    assert_eq!(nodes[1]["manager_status"], Value::Null);
    assert_eq!(nodes[0]["labels"]["zone"], "attic");
    assert_eq!(
        m.ok(&["node", "inspect", "--format", "{{.hostname}}", "self"])?
            .trim(),
        "hb-m1"
    );

    // ---- one-line errors, exit code 1 ---------------------------------------------------
    // What was found is printed, the rest is an error (as `docker inspect`).
    let out = fails_with(&m, &["service", "inspect", "web", "nosuch"], "nosuch")?;
    let found: Value = serde_json::from_str(&out)?;
    assert_eq!(found.as_array().map(Vec::len), Some(1));
    fails_with(&m, &["node", "inspect", "self", "nosuchnode"], "nosuchnode")?;
    fails_with(&m, &["service", "ps", "nosuch"], "nosuch")?;
    fails_with(
        &m,
        &["service", "ls", "-f", "color=red"],
        "invalid filter key `color`",
    )?;
    fails_with(&m, &["node", "ls", "-f", "role"], "expected KEY=VALUE")?;
    fails_with(
        &m,
        &["service", "ps", "web", "-f", "slot=1"],
        "invalid filter key `slot`",
    )?;
    fails_with(&m, &["node", "ps", "-f", "color=red"], "invalid filter key")?;
    fails_with(
        &m,
        &["service", "ls", "--format", "{{.Name"],
        "invalid --format template",
    )?;
    fails_with(
        &m,
        &["node", "ls", "--format", "{{if}}"],
        "invalid --format template",
    )?;

    // ---- --log-format json: every line of the manager's stderr is a JSON object ----------
    let log = m.log();
    let mut seen = 0;
    for line in log.lines().filter(|l| !l.trim().is_empty()) {
        let v: Value =
            serde_json::from_str(line).with_context(|| format!("not a JSON log line: {line}"))?;
        ensure!(v["level"].is_string() && v["fields"].is_object(), "{line}");
        seen += 1;
    }
    ensure!(seen > 0, "the manager logged nothing");
    // The worker logs text, as by default.
    ensure!(
        w.log()
            .lines()
            .any(|l| serde_json::from_str::<Value>(l).is_err()),
        "the worker's text log looks like JSON"
    );
    Ok(())
}
