//! `service create | ls | ps | inspect | scale | update | rollback | rm`; `update` and the
//! flags it shares with `create` are in [`update`]; following create, scale, update and
//! rollback (the daemon's progress stream) in [`progress`].

mod logs;
mod progress;
pub(super) mod update;

use std::collections::BTreeMap;

use anyhow::{Result, bail};

use super::listing::{self, Filters, title};
use super::node::encode;
use super::{Format, InspectArgs, ListArgs, output};
use crate::api::client::Client;
use crate::api::{
    PortBody, ScaleRequest, ServiceModeBody, ServiceRef, ServiceRow, ServiceSpecBody,
    ServiceUpdateResponse, TaskRow,
};
use progress::Watch;

/// `shoal service ...`.
#[derive(Debug, clap::Subcommand)]
pub enum ServiceCmd {
    /// Create a service.
    Create(Box<CreateArgs>),
    /// List services (filters: id, name, label, mode).
    Ls(ListArgs),
    /// List the tasks of a service (filters: id, name, node, desired-state).
    Ps {
        /// ID, unique ID prefix or name.
        service: String,
        /// Listing flags.
        #[command(flatten)]
        list: ListArgs,
    },
    /// Fetch the logs of a service's tasks (or of one task).
    Logs(Box<logs::LogsArgs>),
    /// Show services: a JSON array, one element per argument.
    Inspect {
        /// IDs, unique ID prefixes or names.
        #[arg(required = true)]
        services: Vec<String>,
        /// Output flags.
        #[command(flatten)]
        out: InspectArgs,
    },
    /// Set the replica count of services: SERVICE=N...
    Scale {
        /// SERVICE=REPLICAS pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
        /// Return at once instead of waiting for the tasks.
        #[arg(short, long)]
        detach: bool,
    },
    /// Update a service: a rolling update, unless only --replicas is given.
    Update(Box<update::UpdateArgs>),
    /// Revert a service to its previous spec (a rolling update back).
    Rollback {
        /// Return at once instead of following the rollback.
        #[arg(short, long)]
        detach: bool,
        /// ID, unique ID prefix or name.
        service: String,
    },
    /// Remove services.
    #[command(alias = "remove")]
    Rm {
        /// IDs, unique ID prefixes or names.
        #[arg(required = true)]
        services: Vec<String>,
    },
}

/// `service create` flags.
#[derive(Debug, clap::Args)]
pub struct CreateArgs {
    /// Service name.
    #[arg(long)]
    pub name: String,
    /// Number of tasks (replicated mode).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub replicas: Option<String>,
    /// replicated or global.
    #[arg(long, value_parser = ["replicated", "global"], default_value = "replicated")]
    pub mode: String,
    /// docker or process (default: docker, or process when this node has no Docker engine).
    #[arg(long, value_parser = ["docker", "process"])]
    pub driver: Option<String>,
    /// Environment variables (K=V).
    #[arg(short = 'e', long = "env")]
    pub env: Vec<String>,
    /// Publish a port: PUBLISHED:TARGET[/tcp] or
    /// published=P,target=T[,protocol=tcp][,mode=ingress|host][,proxy-protocol=v2]; repeatable.
    #[arg(
        short = 'p',
        long = "publish",
        value_name = "SPEC",
        allow_hyphen_values = true
    )]
    pub publish: Vec<String>,
    /// Mount on every task: type=bind|volume|tmpfs,source=…,target=…[,readonly]
    /// (Docker's syntax; repeatable). Local to the node each task runs on.
    #[arg(long = "mount", value_name = "SPEC")]
    pub mount: Vec<String>,
    /// Give the tasks a config as a read-only file: NAME (at /NAME) or
    /// source=NAME,target=/path[,uid=N,gid=N,mode=0444]; repeatable.
    #[arg(long = "config", value_name = "CONFIG")]
    pub config: Vec<String>,
    /// Give the tasks a secret as a read-only in-memory file: NAME (at /run/secrets/NAME)
    /// or source=NAME,target=NAME|/path[,uid=N,gid=N,mode=0444]; repeatable.
    #[arg(long = "secret", value_name = "SECRET")]
    pub secret: Vec<String>,
    /// User to run as: name, uid, name:group or uid:gid.
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// Working directory inside the task.
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// The container's hostname.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Replace the image's entrypoint (a command line, split as a shell would).
    #[arg(long, allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    /// Run an init inside each task that reaps processes and forwards signals.
    #[arg(long)]
    pub init: bool,
    /// A device of the node in each task: HOST[:CONTAINER[:PERMISSIONS]] (repeatable).
    #[arg(long = "device", value_name = "DEVICE")]
    pub device: Vec<String>,
    /// Add a Linux capability (repeatable; only on nodes started with --allow-privileged).
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a Linux capability (repeatable).
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Every capability and device (only on nodes started with --allow-privileged).
    #[arg(long)]
    pub privileged: bool,
    /// Read environment variables from a file (KEY=VALUE lines; repeatable; -e wins).
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<String>,
    /// Make a target port reachable by the service's name without publishing it:
    /// PORT[/tcp]; repeatable. Published ports' targets are reachable by name anyway.
    #[arg(long = "expose", value_name = "PORT")]
    pub expose: Vec<String>,
    /// How the service's name resolves: vip (one virtual IP, balanced by every node) or
    /// dnsrr (the addresses of its tasks on the asking node).
    #[arg(long, value_parser = ["vip", "dnsrr"])]
    pub endpoint_mode: Option<String>,
    /// Placement constraint, e.g. node.labels.zone==attic (repeatable).
    #[arg(long)]
    pub constraint: Vec<String>,
    /// At most this many tasks on one node.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub replicas_max_per_node: Option<String>,
    /// Memory reserved per task (e.g. 64m).
    #[arg(long)]
    pub reserve_memory: Option<String>,
    /// CPUs reserved per task (e.g. 0.5).
    #[arg(long)]
    pub reserve_cpu: Option<String>,
    /// Memory limit per task.
    #[arg(long)]
    pub limit_memory: Option<String>,
    /// CPU limit per task.
    #[arg(long)]
    pub limit_cpu: Option<String>,
    /// Restart condition: any, on-failure or none.
    #[arg(long)]
    pub restart_condition: Option<String>,
    /// Delay before a restart (e.g. 5s).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub restart_delay: Option<String>,
    /// Restarts allowed within the window (0 = unlimited).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub restart_max_attempts: Option<String>,
    /// Window over which restarts are counted.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub restart_window: Option<String>,
    /// Health check flags.
    #[command(flatten)]
    pub health: update::HealthFlags,
    /// Rolling update and rollback settings.
    #[command(flatten)]
    pub settings: update::UpdateSettingsFlags,
    /// Time between the stop signal and SIGKILL.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub stop_grace_period: Option<String>,
    /// Task labels (K=V).
    #[arg(long = "label")]
    pub labels: Vec<String>,
    /// Return at once instead of waiting for the tasks.
    #[arg(short, long)]
    pub detach: bool,
    /// Image (docker) or program path (process).
    pub image: String,
    /// Arguments, taken verbatim.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub args: Vec<String>,
}

fn pairs(items: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            bail!("invalid {what} `{item}`: expected KEY=VALUE");
        };
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn spec_of(a: &CreateArgs) -> Result<ServiceSpecBody> {
    let mut spec = ServiceSpecBody::new(a.name.clone(), a.image.clone());
    spec.args.clone_from(&a.args);
    spec.driver = a.driver.clone().unwrap_or_else(|| "docker".into());
    for f in &a.env_file {
        spec.env.extend(update::env_file(f)?);
    }
    spec.env.extend(pairs(&a.env, "environment variable")?);
    spec.mounts = a
        .mount
        .iter()
        .map(|m| update::mount("mount", m))
        .collect::<Result<_>>()?;
    spec.configs = a
        .config
        .iter()
        .map(|c| update::config_ref("config", c))
        .collect::<Result<_>>()?;
    spec.secrets = a
        .secret
        .iter()
        .map(|c| update::secret_ref("secret", c))
        .collect::<Result<_>>()?;
    spec.user.clone_from(&a.user);
    spec.workdir.clone_from(&a.workdir);
    spec.hostname.clone_from(&a.hostname);
    spec.entrypoint = a
        .entrypoint
        .as_deref()
        .map(update::split_args)
        .transpose()?;
    spec.init = a.init;
    spec.devices.clone_from(&a.device);
    spec.cap_add.clone_from(&a.cap_add);
    spec.cap_drop.clone_from(&a.cap_drop);
    spec.privileged = a.privileged;
    spec.labels = pairs(&a.labels, "label")?;
    let replicas = a
        .replicas
        .as_deref()
        .map(|s| update::count("replicas", s))
        .transpose()?;
    spec.mode = match (a.mode.as_str(), replicas) {
        ("global", Some(_)) => bail!("--replicas cannot be used with --mode global"),
        ("global", None) => ServiceModeBody::Global,
        (_, r) => ServiceModeBody::Replicated {
            replicas: r.unwrap_or(1),
        },
    };
    spec.ports = a
        .publish
        .iter()
        .map(|p| update::publish("publish", p))
        .collect::<Result<_>>()?;
    spec.expose = a
        .expose
        .iter()
        .map(|p| update::exposed("expose", p))
        .collect::<Result<_>>()?;
    if let Some(m) = &a.endpoint_mode {
        spec.endpoint_mode.clone_from(m);
    }
    spec.constraints.clone_from(&a.constraint);
    if let Some(n) = &a.replicas_max_per_node {
        spec.max_replicas_per_node = update::count("replicas-max-per-node", n)?;
    }
    let mem = |s: &Option<String>| -> Result<u64> {
        s.as_deref().map_or(Ok(0), |v| {
            shoal_scheduler::parse_memory(v).map_err(|e| anyhow::anyhow!("{e}"))
        })
    };
    let cpu = |s: &Option<String>| -> Result<u64> {
        s.as_deref().map_or(Ok(0), |v| {
            shoal_scheduler::parse_cpus(v).map_err(|e| anyhow::anyhow!("{e}"))
        })
    };
    spec.reservations.memory_bytes = mem(&a.reserve_memory)?;
    spec.reservations.nano_cpus = cpu(&a.reserve_cpu)?;
    spec.limits.memory_bytes = mem(&a.limit_memory)?;
    spec.limits.nano_cpus = cpu(&a.limit_cpu)?;
    if let Some(c) = &a.restart_condition {
        spec.restart_policy.condition = c.parse().map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if let Some(d) = &a.restart_delay {
        spec.restart_policy.delay_ms = update::duration_ms("restart-delay", d)?;
    }
    if let Some(n) = &a.restart_max_attempts {
        spec.restart_policy.max_attempts = update::count("restart-max-attempts", n)?;
    }
    if let Some(w) = &a.restart_window {
        spec.restart_policy.window_ms = update::duration_ms("restart-window", w)?;
    }
    a.health.apply_to_spec(&mut spec)?;
    a.settings.apply_to_spec(&mut spec)?;
    if let Some(g) = &a.stop_grace_period {
        spec.stop_grace_ms = update::duration_ms("stop-grace-period", g)?;
    }
    Ok(spec)
}

pub(super) async fn run(client: &Client, cmd: ServiceCmd) -> Result<()> {
    match cmd {
        ServiceCmd::Create(args) => {
            let mut spec = spec_of(&args)?;
            if args.driver.is_none() {
                // DESIGN §6: the process driver is the default where no Docker engine runs.
                let info: crate::api::Info = client.get("/v1/info").await?;
                if !info.drivers.is_empty() && !info.drivers.iter().any(|d| d == "docker") {
                    eprintln!(
                        "no Docker engine on this node: using the process driver (pass --driver docker to choose Docker)"
                    );
                    spec.driver = "process".into();
                }
            }
            let created: ServiceRef = client.post("/v1/services", &spec).await?;
            println!("{}", created.id);
            if !args.detach {
                progress::follow(client, &created.id, &created.name, Watch::Create).await?;
            }
            Ok(())
        }
        ServiceCmd::Ls(list) => {
            let filters = Filters::parse(&list.filter, &["id", "name", "label", "mode"])?;
            let all: Vec<ServiceRow> = client.get("/v1/services").await?;
            let mut rows = Vec::new();
            for r in all {
                // Labels are in the spec: read it only when a label filter asks.
                let labels = if list.filter.iter().any(|f| f.starts_with("label=")) {
                    let v: serde_json::Value = client
                        .get(&format!("/v1/services/{}", encode(&r.id)))
                        .await?;
                    serde_json::from_value(v["spec"]["labels"].clone()).unwrap_or_default()
                } else {
                    BTreeMap::new()
                };
                if filters.keep(|k, v| service_matches(&r, &labels, k, v)) {
                    rows.push(r);
                }
            }
            if list.quiet {
                rows.iter().for_each(|r| println!("{}", r.id));
                return Ok(());
            }
            match &list.format {
                Format::Json => return output::print_json(&rows),
                Format::Template(t) => {
                    let docker: Vec<serde_json::Value> = rows
                        .iter()
                        .map(|r| docker_service(r, list.no_trunc))
                        .collect();
                    return listing::print_template(t, &docker, &service_header());
                }
                Format::Table => {}
            }
            let table: Vec<Vec<String>> = rows
                .iter()
                .map(|r| {
                    vec![
                        output::id(&r.id, list.no_trunc),
                        r.name.clone(),
                        r.mode.clone(),
                        format!("{}/{}", r.running, r.desired_tasks),
                        r.image.clone(),
                        ports(&r.ports),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(
                    &["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"],
                    &table
                )
            );
            Ok(())
        }
        ServiceCmd::Ps { service, list } => {
            let rows: Vec<TaskRow> = client
                .get(&format!("/v1/services/{}/tasks", encode(&service)))
                .await?;
            print_tasks(rows, &list)
        }
        ServiceCmd::Logs(args) => logs::run(client, *args).await,
        ServiceCmd::Inspect { services, out } => {
            let mut found = Vec::new();
            let mut failed = Vec::new();
            for service in &services {
                match client
                    .get::<serde_json::Value>(&format!("/v1/services/{}", encode(service)))
                    .await
                {
                    Ok(v) => found.push(v),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            output::print_inspect(&found, &out, |i| pretty_service(&found[i]))?;
            output::fail_if_any(failed)
        }
        ServiceCmd::Scale { pairs, detach } => {
            let mut ids = Vec::new();
            for p in &pairs {
                let Some((name, n)) = p.split_once('=') else {
                    bail!("invalid scale `{p}`: expected SERVICE=REPLICAS");
                };
                let replicas: u64 = n
                    .parse()
                    .map_err(|_| anyhow::anyhow!("invalid replica count in `{p}`"))?;
                let r: ServiceRef = client
                    .post(
                        &format!("/v1/services/{}/scale", encode(name)),
                        &ScaleRequest { replicas },
                    )
                    .await?;
                println!("{} scaled to {replicas}", r.name);
                ids.push(r);
            }
            if !detach {
                for r in ids {
                    progress::follow(client, &r.id, &r.name, Watch::Scale).await?;
                }
            }
            Ok(())
        }
        ServiceCmd::Update(args) => {
            let body = update::body_of(&args)?;
            let r: ServiceUpdateResponse = client
                .post(
                    &format!("/v1/services/{}/update", encode(&args.service)),
                    &body,
                )
                .await?;
            println!("{}", r.id);
            if args.detach {
                return Ok(());
            }
            let watch = if r.rolling {
                Watch::Update { version: r.version }
            } else {
                Watch::Scale
            };
            progress::follow(client, &r.id, &r.name, watch).await
        }
        ServiceCmd::Rollback { detach, service } => {
            let r: ServiceUpdateResponse = client
                .post(
                    &format!("/v1/services/{}/rollback", encode(&service)),
                    &serde_json::json!({}),
                )
                .await?;
            println!("{}", r.id);
            if detach {
                return Ok(());
            }
            let watch = Watch::Rollback { version: r.version };
            progress::follow(client, &r.id, &r.name, watch).await
        }
        ServiceCmd::Rm { services } => {
            let mut failed = Vec::new();
            for s in services {
                match client
                    .delete::<ServiceRef>(&format!("/v1/services/{}", encode(&s)))
                    .await
                {
                    Ok(_) => println!("{s}"),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                bail!("{}", failed.join("; "))
            }
        }
    }
}

/// `service inspect --pretty` of one service.
fn pretty_service(v: &serde_json::Value) -> String {
    let mut o = String::new();
    o.push_str(&format!(
        "ID:        {}\n",
        v["id"].as_str().unwrap_or_default()
    ));
    o.push_str(&format!(
        "Name:      {}\n",
        v["name"].as_str().unwrap_or_default()
    ));
    o.push_str(&format!(
        "Mode:      {}\n",
        v["mode"].as_str().unwrap_or_default()
    ));
    if let Some(r) = v["replicas"].as_u64() {
        o.push_str(&format!(" Replicas: {r}\n"));
    }
    o.push_str(&format!("Running:   {}\n", v["running"]));
    o.push_str(&format!(
        "Image:     {}\n",
        v["image"].as_str().unwrap_or_default()
    ));
    o.push_str(&format!(
        "Driver:    {}\n",
        v["driver"].as_str().unwrap_or_default()
    ));
    o.push_str(&format!("Version:   {}\n", v["version"]));
    let ports: Vec<PortBody> = serde_json::from_value(v["ports"].clone()).unwrap_or_default();
    o.push_str(&pretty_ports(&ports));
    for p in v["publish_problems"].as_array().into_iter().flatten() {
        o.push_str(&format!(
            "WARNING: node {} cannot publish port {}: {}\n",
            p["node_id"].as_str().unwrap_or_default(),
            p["published"],
            p["error"].as_str().unwrap_or_default()
        ));
    }
    let spec = serde_json::to_string_pretty(&v["spec"]).unwrap_or_default();
    o.push_str(&format!("Spec:\n{spec}\n"));
    o
}

/// One `service ls` filter: `id` and `name` match a prefix, `label` the spec's labels.
fn service_matches(
    r: &ServiceRow,
    labels: &BTreeMap<String, String>,
    key: &str,
    value: &str,
) -> bool {
    match key {
        "id" => r.id.starts_with(value),
        "name" => r.name.starts_with(value),
        "mode" => r.mode == value,
        "label" => listing::label_matches(labels, value),
        _ => false,
    }
}

/// A service under Docker's `--format` field names.
fn docker_service(r: &ServiceRow, no_trunc: bool) -> serde_json::Value {
    serde_json::json!({
        "ID": output::id(&r.id, no_trunc),
        "Name": r.name,
        "Mode": r.mode,
        "Replicas": format!("{}/{}", r.running, r.desired_tasks),
        "Image": r.image,
        "Ports": ports(&r.ports),
    })
}

/// The column titles of `service ls --format 'table ...'`.
fn service_header() -> serde_json::Value {
    serde_json::json!({
        "ID": "ID",
        "Name": "NAME",
        "Mode": "MODE",
        "Replicas": "REPLICAS",
        "Image": "IMAGE",
        "Ports": "PORTS",
    })
}

/// The PORTS cell of `service ls`, as Docker's: `*:8080->80/tcp, *:8443->443/tcp`.
fn ports(p: &[PortBody]) -> String {
    p.iter()
        .map(|p| format!("*:{}->{}/{}", p.published, p.target, p.protocol))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The `Ports:` block of `service inspect --pretty`, as Docker's (with `ProxyProtocol` when
/// set); empty without ports.
fn pretty_ports(ports: &[PortBody]) -> String {
    if ports.is_empty() {
        return String::new();
    }
    let mut out = String::from("Ports:\n");
    for p in ports {
        out.push_str(&format!(" PublishedPort = {}\n", p.published));
        out.push_str(&format!("  Protocol = {}\n", p.protocol));
        out.push_str(&format!("  TargetPort = {}\n", p.target));
        out.push_str(&format!("  PublishMode = {}\n", p.mode));
        if let Some(proxy) = &p.proxy_protocol {
            out.push_str(&format!("  ProxyProtocol = {proxy}\n"));
        }
    }
    out
}

/// The NAME of a task: `web.2`, or `web.NODEID` for a global task.
fn task_name(r: &TaskRow) -> String {
    match r.slot {
        Some(s) => format!("{}.{s}", r.service),
        None => format!("{}.{}", r.service, r.node_id.as_deref().unwrap_or("")),
    }
}

/// One `service ps` / `node ps` filter: `id` and `name` match a prefix, `node` a node ID
/// prefix or a hostname.
fn task_matches(r: &TaskRow, key: &str, value: &str) -> bool {
    match key {
        "id" => r.id.starts_with(value),
        "name" => task_name(r).starts_with(value),
        "node" => {
            r.node.as_deref() == Some(value)
                || r.node_id.as_deref().is_some_and(|n| n.starts_with(value))
        }
        "desired-state" => r.desired_state == value,
        _ => false,
    }
}

/// The tasks as Docker orders them: by service and slot, the newest attempt first, and the
/// older attempts' NAME as `\_ web.1`.
fn history(mut rows: Vec<TaskRow>) -> Vec<(String, TaskRow)> {
    rows.sort_by(|a, b| {
        (
            &a.service,
            a.slot,
            &a.node_id,
            std::cmp::Reverse(&a.created_at),
        )
            .cmp(&(
                &b.service,
                b.slot,
                &b.node_id,
                std::cmp::Reverse(&b.created_at),
            ))
            .then(b.attempt.cmp(&a.attempt))
    });
    let mut out: Vec<(String, TaskRow)> = Vec::with_capacity(rows.len());
    for r in rows {
        let name = task_name(&r);
        let older = out
            .last()
            .is_some_and(|(_, p)| p.service == r.service && task_name(p) == name);
        out.push((if older { format!("\\_ {name}") } else { name }, r));
    }
    out
}

/// The ERROR cell: the error and a non-zero exit code.
fn task_error(r: &TaskRow, no_trunc: bool) -> String {
    let mut error = r.error.clone().unwrap_or_default();
    if let Some(code) = r.exit_code.filter(|c| *c != 0 && !error.contains("code")) {
        error = if error.is_empty() {
            format!("exit code {code}")
        } else {
            format!("{error} (exit code {code})")
        };
    }
    if !no_trunc && error.chars().count() > 60 {
        error = error.chars().take(59).chain(['…']).collect();
    }
    error
}

/// Prints tasks as `service ps` / `node ps` do.
pub(super) fn print_tasks(rows: Vec<TaskRow>, list: &ListArgs) -> Result<()> {
    let filters = Filters::parse(&list.filter, &["id", "name", "node", "desired-state"])?;
    let rows: Vec<TaskRow> = rows
        .into_iter()
        .filter(|r| filters.keep(|k, v| task_matches(r, k, v)))
        .collect();
    if list.quiet {
        rows.iter().for_each(|r| println!("{}", r.id));
        return Ok(());
    }
    if list.format == Format::Json {
        return output::print_json(&rows);
    }
    let now = std::time::SystemTime::now();
    let lines = history(rows);
    if let Format::Template(t) = &list.format {
        let docker: Vec<serde_json::Value> = lines
            .iter()
            .map(|(name, r)| {
                serde_json::json!({
                    "ID": output::id(&r.id, list.no_trunc),
                    "Name": name,
                    "Image": r.image,
                    "Node": r.node.clone().unwrap_or_default(),
                    "DesiredState": title(&r.desired_state),
                    "CurrentState": listing::state_since(&r.state, &r.updated_at, now),
                    "Error": task_error(r, list.no_trunc),
                    "Version": r.version,
                })
            })
            .collect();
        let header = serde_json::json!({
            "ID": "ID",
            "Name": "NAME",
            "Image": "IMAGE",
            "Node": "NODE",
            "DesiredState": "DESIRED STATE",
            "CurrentState": "CURRENT STATE",
            "Error": "ERROR",
            "Version": "VERSION",
        });
        return listing::print_template(t, &docker, &header);
    }
    let table: Vec<Vec<String>> = lines
        .iter()
        .map(|(name, r)| {
            vec![
                output::id(&r.id, list.no_trunc),
                name.clone(),
                r.image.clone(),
                r.version.to_string(),
                r.node.clone().unwrap_or_default(),
                title(&r.desired_state),
                listing::state_since(&r.state, &r.updated_at, now),
                task_error(r, list.no_trunc),
            ]
        })
        .collect();
    print!(
        "{}",
        output::table(
            &[
                "ID",
                "NAME",
                "IMAGE",
                "VERSION",
                "NODE",
                "DESIRED STATE",
                "CURRENT STATE",
                "ERROR"
            ],
            &table
        )
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Cmd};
    use clap::Parser;

    fn create(line: &[&str]) -> Result<ServiceSpecBody> {
        let mut argv = vec!["shoal", "service", "create", "--name", "web"];
        argv.extend_from_slice(line);
        match Cli::try_parse_from(argv)?.command {
            Cmd::Service(ServiceCmd::Create(a)) => spec_of(&a),
            other => panic!("not a create: {other:?}"),
        }
    }

    fn port(published: u16, target: u16, mode: &str, proxy: Option<&str>) -> PortBody {
        PortBody {
            published,
            target,
            protocol: "tcp".into(),
            mode: mode.into(),
            proxy_protocol: proxy.map(str::to_owned),
        }
    }

    fn usage_error(e: &anyhow::Error) -> bool {
        e.downcast_ref::<crate::cli::UsageError>().is_some()
    }

    /// `-p` takes the short and the long form, repeatedly.
    #[test]
    fn create_publishes_ports_in_both_forms() {
        let s = create(&[
            "-p",
            "8080:80",
            "--publish",
            "8443:443/tcp",
            "-p",
            "published=9000,target=90,mode=host,proxy-protocol=v2",
            "--publish",
            "target=53,published=5353,protocol=tcp,mode=ingress",
            "img",
        ])
        .unwrap();
        assert_eq!(
            s.ports,
            [
                port(8080, 80, "ingress", None),
                port(8443, 443, "ingress", None),
                port(9000, 90, "host", Some("v2")),
                port(5353, 53, "ingress", None),
            ]
        );
        assert!(create(&["img"]).unwrap().ports.is_empty());
    }

    /// A bad `-p` is one line and a usage error (exit code 2); UDP is refused at once.
    #[test]
    fn create_refuses_bad_ports() {
        for (value, needle) in [
            ("8080", "expected PUBLISHED:TARGET"),
            ("0:80", "invalid port 0: ports are 1-65535"),
            ("8080:0", "invalid port 0: ports are 1-65535"),
            ("70000:80", "invalid port `70000`: ports are 1-65535"),
            ("x:80", "invalid port `x`"),
            ("-1:80", "invalid port `-1`"),
            ("127.0.0.1:8080:80", "listen address"),
            ("53:53/udp", "the routing mesh carries TCP only"),
            ("53:53/xyz", "unknown protocol `xyz`"),
            (
                "published=53,target=53,protocol=udp",
                "the routing mesh carries TCP only",
            ),
            ("published=1,target=2,mode=both", "unknown mode `both`"),
            (
                "published=1,target=2,proxy-protocol=v1",
                "unknown proxy-protocol `v1`",
            ),
            ("published=1,target=2,color=red", "unknown field `color`"),
            ("published=1,target", "`target` is not KEY=VALUE"),
            ("target=80", "published= is required"),
            ("published=80", "target= is required"),
            ("published=0,target=80", "invalid port 0"),
            ("published=65536,target=80", "ports are 1-65535"),
        ] {
            let e = create(&["-p", value, "img"]).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains(needle) && !msg.contains('\n'),
                "{value}: {msg}"
            );
            assert!(
                msg.contains(&format!("--publish `{value}`")),
                "{value}: {msg}"
            );
            assert!(usage_error(&e), "{value}: not a usage error");
        }
    }

    /// `service ls` PORTS and the `Ports:` block of `inspect --pretty`.
    #[test]
    fn ports_render_as_docker() {
        assert_eq!(ports(&[]), "");
        assert_eq!(
            ports(&[
                port(8080, 80, "ingress", None),
                port(9000, 90, "host", Some("v2"))
            ]),
            "*:8080->80/tcp, *:9000->90/tcp"
        );
        assert_eq!(pretty_ports(&[]), "");
        assert_eq!(
            pretty_ports(&[
                port(8080, 80, "ingress", None),
                port(9000, 90, "host", Some("v2"))
            ]),
            concat!(
                "Ports:\n",
                " PublishedPort = 8080\n",
                "  Protocol = tcp\n",
                "  TargetPort = 80\n",
                "  PublishMode = ingress\n",
                " PublishedPort = 9000\n",
                "  Protocol = tcp\n",
                "  TargetPort = 90\n",
                "  PublishMode = host\n",
                "  ProxyProtocol = v2\n",
            )
        );
    }

    /// Bad numbers and durations on `create` are one line, as on `update`.
    #[test]
    fn create_flags_give_one_line_errors() {
        for (flags, needle) in [
            (&["--replicas", "-1"][..], "--replicas `-1`"),
            (&["--restart-delay", "soon"], "--restart-delay `soon`"),
            (
                &["--restart-max-attempts", "x"],
                "--restart-max-attempts `x`",
            ),
            (&["--stop-grace-period", "-1s"], "--stop-grace-period"),
            (&["--restart-condition", "sometimes"], "restart condition"),
            (&["--update-parallelism", "-3"], "--update-parallelism `-3`"),
        ] {
            let mut line = flags.to_vec();
            line.push("img");
            let e = create(&line).unwrap_err().to_string();
            assert!(e.contains(needle) && !e.contains('\n'), "{flags:?}: {e}");
        }
        let s = create(&[
            "--replicas",
            "3",
            "--restart-delay",
            "2s",
            "--stop-grace-period",
            "0",
            "img",
            "sleep",
            "1",
        ])
        .unwrap();
        assert_eq!(s.mode, ServiceModeBody::Replicated { replicas: 3 });
        assert_eq!((s.restart_policy.delay_ms, s.stop_grace_ms), (2_000, 0));
        assert_eq!(s.args, ["sleep", "1"]);
    }
}
