//! `node ls`, `node inspect`.

use anyhow::Result;

use super::{Format, NodeCmd, output};
use crate::api::client::Client;
use crate::api::{Info, NodeView};

fn title(word: &str) -> String {
    let mut c = word.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

pub(super) async fn run(client: &Client, cmd: NodeCmd) -> Result<()> {
    match cmd {
        NodeCmd::Ls { quiet, format } => {
            let nodes: Vec<NodeView> = client.get("/v1/nodes").await?;
            if quiet {
                nodes.iter().for_each(|n| println!("{}", n.id));
                return Ok(());
            }
            if format == Format::Json {
                return output::print_json(&nodes);
            }
            let me: Info = client.get("/v1/info").await?;
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
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(
                    &["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS"],
                    &rows
                )
            );
            Ok(())
        }
        NodeCmd::Update {
            availability,
            label_add,
            label_rm,
            node,
        } => {
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
            set_role(client, &nodes, "promote", "promoted to a manager").await
        }
        NodeCmd::Demote { nodes } => {
            set_role(client, &nodes, "demote", "demoted in the cluster").await
        }
        NodeCmd::Ps {
            node,
            quiet,
            format,
        } => {
            let n = match node {
                Some(n) => n,
                None => client.get::<Info>("/v1/info").await?.node_id,
            };
            let rows: Vec<crate::api::TaskRow> = client
                .get(&format!("/v1/nodes/{}/tasks", encode(&n)))
                .await?;
            super::service::print_tasks(&rows, quiet, format)
        }
        NodeCmd::Rm { nodes, force } => {
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
        NodeCmd::Inspect { node, format } => {
            let path = format!("/v1/nodes/{}", encode(&node));
            let n: NodeView = client.get(&path).await?;
            if format == Format::Json {
                return output::print_json(&n);
            }
            println!("ID:             {}", n.id);
            println!("Hostname:       {}", n.hostname);
            println!("Role:           {}", n.role);
            println!("Status:         {}", n.status);
            println!("Availability:   {}", n.availability);
            if let Some(ms) = &n.manager_status {
                println!("Manager status: {ms}");
            }
            println!("Address:        {}", n.addr);
            println!("Platform:       {}", n.platform);
            println!(
                "Resources:      {} CPUs, {} MiB",
                n.cpus,
                n.memory_bytes >> 20
            );
            println!("Drivers:        {}", n.drivers.join(", "));
            if !n.labels.is_empty() {
                println!("Labels:");
                for (k, v) in &n.labels {
                    println!(" - {k}={v}");
                }
            }
            println!("Version:        {}", n.version);
            println!("Created:        {}", n.created_at);
            println!("Updated:        {}", n.updated_at);
            Ok(())
        }
    }
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
