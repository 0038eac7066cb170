//! `node ls | update | promote | demote | ps | rm | inspect`.

use anyhow::Result;

use super::listing::{self, Filters, title};
use super::{Format, NodeCmd, output};
use crate::api::client::Client;
use crate::api::{Info, NodeView};

pub(super) async fn run(client: &Client, cmd: NodeCmd) -> Result<()> {
    match cmd {
        NodeCmd::Ls(list) => {
            let filters = Filters::parse(
                &list.filter,
                &["id", "name", "role", "membership", "label", "node.label"],
            )?;
            let mut nodes: Vec<NodeView> = client.get("/v1/nodes").await?;
            nodes.retain(|n| filters.keep(|k, v| node_matches(n, k, v)));
            if list.quiet {
                nodes.iter().for_each(|n| println!("{}", n.id));
                return Ok(());
            }
            let me: Info = client.get("/v1/info").await?;
            match &list.format {
                Format::Json => output::print_json(&nodes),
                Format::Template(t) => {
                    let rows: Vec<serde_json::Value> =
                        nodes.iter().map(|n| docker_node(n, &me.node_id)).collect();
                    listing::print_template(t, &rows, &node_header())
                }
                Format::Table => {
                    let rows: Vec<Vec<String>> = nodes
                        .iter()
                        .map(|n| {
                            let star = if n.id == me.node_id { " *" } else { "" };
                            vec![
                                format!("{}{star}", n.id),
                                n.hostname.clone(),
                                title(&n.status),
                                title(&n.availability),
                                n.manager_status.as_deref().map(title).unwrap_or_default(),
                                n.version.clone(),
                            ]
                        })
                        .collect();
                    print!(
                        "{}",
                        output::table(
                            &[
                                "ID",
                                "HOSTNAME",
                                "STATUS",
                                "AVAILABILITY",
                                "MANAGER STATUS",
                                "ENGINE VERSION"
                            ],
                            &rows
                        )
                    );
                    Ok(())
                }
            }
        }
        NodeCmd::Update {
            availability,
            label_add,
            label_rm,
            node,
        } => {
            let node = resolve(client, node).await?;
            let mut add = std::collections::BTreeMap::new();
            for l in &label_add {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                add.insert(k.to_string(), v.to_string());
            }
            let body = crate::api::NodeUpdateRequest {
                availability,
                label_add: add,
                label_rm,
            };
            let v: serde_json::Value = client
                .post(&format!("/v1/nodes/{}/update", encode(&node)), &body)
                .await?;
            println!("{}", v["id"].as_str().unwrap_or(&node));
            Ok(())
        }
        NodeCmd::Promote { nodes } => {
            let nodes = resolve_all(client, nodes).await?;
            set_role(client, &nodes, "promote", "promoted to a manager").await
        }
        NodeCmd::Demote { nodes } => {
            let nodes = resolve_all(client, nodes).await?;
            set_role(client, &nodes, "demote", "demoted in the cluster").await
        }
        NodeCmd::Ps { node, list } => {
            let n = resolve(client, node.unwrap_or_else(|| SELF.to_string())).await?;
            let rows: Vec<crate::api::TaskRow> = client
                .get(&format!("/v1/nodes/{}/tasks", encode(&n)))
                .await?;
            super::service::print_tasks(rows, &list)
        }
        NodeCmd::Rm { nodes, force } => {
            let nodes = resolve_all(client, nodes).await?;
            let mut failed = Vec::new();
            for n in nodes {
                let path = format!("/v1/nodes/{}?force={force}", encode(&n));
                match client.delete::<serde_json::Value>(&path).await {
                    Ok(_) => println!("{n}"),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                anyhow::bail!("{}", failed.join("; "))
            }
        }
        NodeCmd::Inspect { nodes, out } => {
            let nodes = resolve_all(client, nodes).await?;
            let mut found = Vec::new();
            let mut failed = Vec::new();
            for node in &nodes {
                let path = format!("/v1/nodes/{}", encode(node));
                match client.get::<NodeView>(&path).await {
                    Ok(n) => found.push(n),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            let values = found
                .iter()
                .map(serde_json::to_value)
                .collect::<Result<Vec<_>, _>>()?;
            output::print_inspect(&values, &out, |i| pretty_node(&found[i]))?;
            output::fail_if_any(failed)
        }
    }
}

/// What names this node wherever a node is named.
const SELF: &str = "self";

/// `self` → this node's ID; anything else as given.
async fn resolve(client: &Client, node: String) -> Result<String> {
    if node == SELF {
        Ok(client.get::<Info>("/v1/info").await?.node_id)
    } else {
        Ok(node)
    }
}

async fn resolve_all(client: &Client, nodes: Vec<String>) -> Result<Vec<String>> {
    let mut out = Vec::with_capacity(nodes.len());
    for n in nodes {
        out.push(resolve(client, n).await?);
    }
    Ok(out)
}

/// One `node ls` filter: `id` and `name` match a prefix; `label` and `node.label` the
/// node's labels (Shoal has no engine labels); every listed node is `accepted`.
fn node_matches(n: &NodeView, key: &str, value: &str) -> bool {
    match key {
        "id" => n.id.starts_with(value),
        "name" => n.hostname.starts_with(value),
        "role" => n.role == value,
        "membership" => value == "accepted",
        "label" | "node.label" => listing::label_matches(&n.labels, value),
        _ => false,
    }
}

/// A node under Docker's `--format` field names.
fn docker_node(n: &NodeView, me: &str) -> serde_json::Value {
    serde_json::json!({
        "ID": n.id,
        "Self": n.id == me,
        "Hostname": n.hostname,
        "Status": title(&n.status),
        "Availability": title(&n.availability),
        "ManagerStatus": n.manager_status.as_deref().map(title).unwrap_or_default(),
        "EngineVersion": n.version,
        "Role": n.role,
        "Addr": n.addr,
        "Labels": n.labels,
    })
}

/// The column titles of `node ls --format 'table ...'`.
fn node_header() -> serde_json::Value {
    serde_json::json!({
        "ID": "ID",
        "Self": "",
        "Hostname": "HOSTNAME",
        "Status": "STATUS",
        "Availability": "AVAILABILITY",
        "ManagerStatus": "MANAGER STATUS",
        "EngineVersion": "ENGINE VERSION",
        "Role": "ROLE",
        "Addr": "ADDRESS",
        "Labels": "LABELS",
    })
}

/// `node inspect --pretty`.
fn pretty_node(n: &NodeView) -> String {
    let mut o = String::new();
    o.push_str(&format!("ID:             {}\n", n.id));
    o.push_str(&format!("Hostname:       {}\n", n.hostname));
    o.push_str(&format!("Role:           {}\n", n.role));
    o.push_str(&format!("Status:         {}\n", n.status));
    o.push_str(&format!("Availability:   {}\n", n.availability));
    if let Some(ms) = &n.manager_status {
        o.push_str(&format!("Manager status: {ms}\n"));
    }
    o.push_str(&format!("Address:        {}\n", n.addr));
    o.push_str(&format!("Platform:       {}\n", n.platform));
    o.push_str(&format!(
        "Resources:      {} CPUs, {} MiB\n",
        n.cpus,
        n.memory_bytes >> 20
    ));
    o.push_str(&format!("Drivers:        {}\n", n.drivers.join(", ")));
    if !n.labels.is_empty() {
        o.push_str("Labels:\n");
        for (k, v) in &n.labels {
            o.push_str(&format!(" - {k}={v}\n"));
        }
    }
    o.push_str(&format!("Version:        {}\n", n.version));
    o.push_str(&format!("Created:        {}\n", n.created_at));
    o.push_str(&format!("Updated:        {}\n", n.updated_at));
    o
}

/// Percent-encodes a path segment.
pub(super) fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn set_role(client: &Client, nodes: &[String], verb: &str, done: &str) -> Result<()> {
    let mut failed = Vec::new();
    for n in nodes {
        let path = format!("/v1/nodes/{}/{verb}", encode(n));
        match client
            .post::<_, serde_json::Value>(&path, &serde_json::json!({}))
            .await
        {
            Ok(v) => println!("Node {} {done}.", v["hostname"].as_str().unwrap_or(n)),
            Err(e) => failed.push(e.to_string()),
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("{}", failed.join("; "))
    }
}
