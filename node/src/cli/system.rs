//! `daemon`, `info`, `init`, `leave`.

use anyhow::Result;

use super::{DaemonArgs, Format, LogFormat, listing, output};
use crate::api::client::Client;
use crate::api::{
    Info, InitRequest, InitResponse, JoinApiRequest, JoinApiResponse, JoinTokenRequest,
    JoinTokenResponse, LeaveRequest,
};
use crate::daemon::{self, DaemonOptions};

pub(super) fn daemon(runtime: &tokio::runtime::Runtime, args: DaemonArgs) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&args.log_level))
        .map_err(|e| anyhow::anyhow!("invalid --log-level `{}`: {e}", args.log_level))?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    runtime.block_on(daemon::run(DaemonOptions {
        state_dir: args.state_dir,
        listen_addr: args.listen_addr,
        advertise_addr: args.advertise_addr,
        socket: args.socket,
        socket_group: args.socket_group,
        hostname: args.hostname,
        raft_timing_scale: args.raft_timing_scale,
        drivers: args.drivers,
        cert_expiry: args.cert_expiry,
        publish_addr: args.publish_addr,
        metrics_addr: args.metrics_addr,
        network: args.network,
        allow_privileged: args.allow_privileged,
        discovery: (!args.no_discovery).then_some(daemon::DiscoveryOptions {
            subnet: args.network_subnet,
        }),
    }))
}

pub(super) async fn info(client: &Client, format: Format) -> Result<()> {
    let info: Info = client.get("/v1/info").await?;
    match &format {
        Format::Json => return output::print_json(&info),
        Format::Template(t) => {
            let t = listing::Template::parse(t)?;
            println!("{}", t.render(&serde_json::to_value(&info)?)?);
            return Ok(());
        }
        Format::Table => {}
    }
    println!("Cluster: {}", info.cluster);
    println!(" Node ID: {}", info.node_id);
    println!(" Hostname: {}", info.hostname);
    println!(" Listen address: {}", info.listen_addr);
    println!(" Advertise address: {}", info.advertise_addr);
    if let Some(id) = &info.cluster_id {
        println!(" Cluster ID: {id}");
    }
    if let Some(role) = &info.role {
        println!(" Role: {role}");
    }
    if info.cluster == "active" {
        println!(" Leader: {}", info.leader.as_deref().unwrap_or("unknown"));
    }
    if let Some(m) = info.managers {
        println!(" Managers: {m}");
    }
    if let Some(n) = info.nodes {
        println!(" Nodes: {n}");
    }
    println!(" Version: {}", info.version);
    if !info.publish_addr.is_empty() {
        println!(" Publish address: {}", info.publish_addr);
    }
    if !info.discovery.is_empty() {
        println!(" Service discovery: {}", info.discovery);
    }
    let m = &info.mesh;
    println!(
        " Routing mesh: {} local and {} remote forwards, {} served for other nodes, {} failed connects, {} dropped, {} bytes in, {} bytes out",
        m.local_forwards,
        m.remote_forwards,
        m.remote_served,
        m.failed_connects,
        m.dropped,
        m.bytes_in,
        m.bytes_out
    );
    if let Some(w) = &info.warning {
        println!("WARNING: {w}");
    }
    Ok(())
}

pub(super) async fn init(
    client: &Client,
    advertise_addr: Option<String>,
    availability: Option<String>,
    force_new_cluster: bool,
) -> Result<()> {
    let req = InitRequest {
        advertise_addr,
        availability,
        force_new_cluster,
    };
    let resp: InitResponse = client.post("/v1/init", &req).await?;
    if force_new_cluster {
        println!(
            "Cluster recovered: current node ({}) is now the only manager; the other managers must leave and join again.",
            resp.node_id
        );
    } else {
        println!(
            "Cluster initialized: current node ({}) is now a manager.",
            resp.node_id
        );
    }
    Ok(())
}

pub(super) async fn leave(client: &Client, force: bool) -> Result<()> {
    let _: serde_json::Value = client.post("/v1/leave", &LeaveRequest { force }).await?;
    println!("Node left the cluster.");
    Ok(())
}

pub(super) async fn join(
    client: &Client,
    token: String,
    manager_addrs: Vec<String>,
    advertise_addr: Option<String>,
    availability: Option<String>,
) -> Result<()> {
    let req = JoinApiRequest {
        token,
        manager_addrs,
        advertise_addr,
        availability,
    };
    let resp: JoinApiResponse = client.post("/v1/join", &req).await?;
    println!(
        "This node joined the cluster as a {} (via {}).",
        resp.role, resp.via
    );
    Ok(())
}

pub(super) async fn join_token(
    client: &Client,
    role: &str,
    quiet: bool,
    rotate: bool,
    ttl: Option<std::time::Duration>,
) -> Result<()> {
    let req = JoinTokenRequest {
        rotate,
        ttl_secs: ttl.map(|d| d.as_secs().max(1)),
    };
    let resp: JoinTokenResponse = client.post(&format!("/v1/join-token/{role}"), &req).await?;
    if quiet {
        println!("{}", resp.token);
        return Ok(());
    }
    if rotate {
        println!("Successfully rotated {role} join token.\n");
    }
    println!("To add a {role} to this cluster, run the following command:\n");
    println!(
        "    shoal join --token {} {}\n",
        resp.token, resp.manager_addr
    );
    Ok(())
}
