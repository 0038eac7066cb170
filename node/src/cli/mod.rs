//! The `shoal` command line: the daemon itself, and commands that talk to it.

mod completion;
mod config;
mod events;
mod listing;
mod node;
mod output;
mod secret;
mod service;
mod stack;
mod system;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};

pub use completion::Shell;
pub use listing::Format;

use crate::api::client::Client;

/// Default control socket.
pub const DEFAULT_SOCKET: &str = "/run/shoal/shoal.sock";

/// Shoal: a peer-to-peer container orchestrator.
#[derive(Debug, Parser)]
#[command(name = "shoal", version, about, propagate_version = true)]
pub struct Cli {
    /// Daemon to talk to, e.g. unix:///run/shoal/shoal.sock
    #[arg(short = 'H', long = "host", env = "SHOAL_HOST", global = true)]
    pub host: Option<String>,
    /// The command.
    #[command(subcommand)]
    pub command: Cmd,
}

/// `--filter`, `--format`, `--no-trunc` and `-q` of every listing.
#[derive(Debug, Clone, clap::Args)]
pub struct ListArgs {
    /// Only IDs.
    #[arg(short, long)]
    pub quiet: bool,
    /// table, json, or a Go template (`{{.ID}} {{.Name}}`, `table {{.ID}}\t{{.Name}}`).
    #[arg(long, default_value = "table")]
    pub format: Format,
    /// Filter rows: KEY=VALUE, repeatable (same key: any value; different keys: all).
    #[arg(short = 'f', long = "filter", value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
    /// Do not truncate IDs and errors.
    #[arg(long)]
    pub no_trunc: bool,
}

/// `--format` and `--pretty` of every inspect.
#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// The readable form instead of JSON.
    #[arg(long)]
    pub pretty: bool,
    /// json (the default), or a Go template applied to each object.
    #[arg(long)]
    pub format: Option<Format>,
}

/// Daemon log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (tracing-subscriber's JSON formatter).
    Json,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Run the node daemon.
    Daemon(Box<DaemonArgs>),
    /// Show this node and its cluster.
    Info {
        /// json, table, or a Go template.
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// Show the version.
    Version,
    /// Create a new cluster with this node as its first manager.
    Init {
        /// Address other nodes use to reach this one (IP or IP:PORT).
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Availability of this node.
        #[arg(long, value_parser = ["active", "pause", "drain"])]
        availability: Option<String>,
        /// Rewrite Raft membership to this manager alone, keeping all state.
        #[arg(long)]
        force_new_cluster: bool,
    },
    /// Join a cluster with a token from `shoal join-token`.
    Join {
        /// The join token.
        #[arg(long)]
        token: String,
        /// Managers to try (IP or IP:PORT); default: the addresses in the token.
        #[arg(value_name = "MANAGER_ADDR")]
        managers: Vec<String>,
        /// Address other nodes use to reach this one (IP or IP:PORT).
        #[arg(long)]
        advertise_addr: Option<String>,
        /// Availability of this node.
        #[arg(long, value_parser = ["active", "pause", "drain"])]
        availability: Option<String>,
    },
    /// Show or rotate the token that joins nodes as workers or managers. A token is valid
    /// until rotated (or its --ttl ends); its text carries the current managers' addresses,
    /// so it changes when managers are added or move, and earlier texts stay valid.
    JoinToken {
        /// worker or manager.
        #[arg(value_parser = ["worker", "manager"])]
        role: String,
        /// Print only the token.
        #[arg(short, long)]
        quiet: bool,
        /// Invalidate the current token of this role and show the new one.
        #[arg(long)]
        rotate: bool,
        /// Mint a fresh token that expires after this long (e.g. 30m, 24h).
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<std::time::Duration>,
    },
    /// Leave the cluster.
    Leave {
        /// Leave even as a manager (the last manager wipes the cluster state).
        #[arg(short, long)]
        force: bool,
    },
    /// Manage nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Manage services.
    #[command(subcommand)]
    Service(service::ServiceCmd),
    /// Manage configs (files given to services' tasks).
    #[command(subcommand)]
    Config(config::ConfigCmd),
    /// Manage secrets (values given to services' tasks as in-memory files).
    #[command(subcommand)]
    Secret(secret::SecretCmd),
    /// Manage stacks (services deployed together from compose files).
    #[command(subcommand)]
    Stack(stack::StackCmd),
    /// Stream cluster events (from this manager's applied Raft log).
    Events(events::EventsArgs),
    /// Print a shell completion script (bash, zsh or fish).
    Completion {
        /// The shell.
        #[arg(value_enum)]
        shell: Shell,
    },
    /// Print the manual page shoal(1), or write one page per command into a directory.
    Man {
        /// Write shoal.1, shoal-service.1, shoal-service-create.1, … here (and list them).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// `shoal daemon` flags.
#[derive(Debug, clap::Args)]
pub struct DaemonArgs {
    /// State directory (key, certificates, raft.redb).
    #[arg(long, env = "SHOAL_STATE_DIR", default_value = "/var/lib/shoal")]
    pub state_dir: PathBuf,
    /// UDP address for QUIC between nodes.
    #[arg(long, default_value = "0.0.0.0:4747")]
    pub listen_addr: SocketAddr,
    /// Address other nodes use to reach this one (IP or IP:PORT).
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Control socket.
    #[arg(long, default_value = DEFAULT_SOCKET)]
    pub socket: PathBuf,
    /// Group to give the control socket (like dockerd's -G); its members can run
    /// anything as root on every node. Default: root's group.
    #[arg(long, value_name = "NAME")]
    pub socket_group: Option<String>,
    /// Hostname to report instead of the machine's.
    #[arg(long)]
    pub hostname: Option<String>,
    /// Log level or filter, e.g. debug or shoal=debug,info (RUST_LOG overrides it).
    #[arg(long, default_value = "info")]
    pub log_level: String,
    /// Log lines as text or JSON (one object per line).
    #[arg(long, value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// Multiply Raft heartbeat and election timing (e.g. 3 for slow Wi-Fi).
    #[arg(long, default_value_t = 1.0)]
    pub raft_timing_scale: f64,
    /// Task drivers to offer, comma-separated (docker,process); default: every driver
    /// that works here.
    #[arg(long, value_delimiter = ',')]
    pub drivers: Option<Vec<String>>,
    /// Lifetime of the node certificates this node issues while it is a manager (Swarm's
    /// --cert-expiry); nodes renew theirs when a third of it is left.
    #[arg(long, default_value = "90d", value_parser = humantime::parse_duration)]
    pub cert_expiry: std::time::Duration,
    /// Address published ports listen on (the routing mesh and `mode=host`); default: every
    /// address. Several nodes on one machine each take their own (127.0.0.x).
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    pub publish_addr: std::net::IpAddr,
    /// Serve Prometheus metrics at http://IP:PORT/metrics (off by default).
    #[arg(long, value_name = "IP:PORT")]
    pub metrics_addr: Option<SocketAddr>,
    /// The Docker network the containers join (created when missing).
    #[arg(long, default_value = shoal_runtime::docker::DEFAULT_NETWORK, value_name = "NAME")]
    pub network: String,
    /// Run tasks that ask for --privileged or --cap-add on this node (refused otherwise: a
    /// stolen node's certificate must not be able to get root on the others).
    #[arg(long)]
    pub allow_privileged: bool,
    /// Turn off service discovery (on by default with Docker: services reached by name from
    /// containers — DNS on the network's gateway — through a virtual IP per service, balanced
    /// by this node). Several daemons on one machine need a --network each, or this.
    #[arg(long)]
    pub no_discovery: bool,
    /// The network's subnet when Shoal creates it: containers get the lower half, the
    /// services' virtual IPs are the upper half.
    #[arg(long, default_value = crate::dns::vip::DEFAULT_SUBNET, value_name = "CIDR")]
    pub network_subnet: crate::dns::vip::Subnet,
}

/// `shoal node ...`.
#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// List nodes (filters: id, name, role, membership, label, node.label).
    Ls(ListArgs),
    /// Change a node's availability or labels.
    Update {
        /// active, pause or drain.
        #[arg(long, value_parser = ["active", "pause", "drain"])]
        availability: Option<String>,
        /// Add or replace a label (KEY=VALUE), repeatable.
        #[arg(long = "label-add")]
        label_add: Vec<String>,
        /// Remove a label (KEY), repeatable.
        #[arg(long = "label-rm")]
        label_rm: Vec<String>,
        /// ID, unique ID prefix, hostname or `self`.
        node: String,
    },
    /// Make nodes managers (Raft voters).
    Promote {
        /// IDs, unique ID prefixes, hostnames or `self`.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Make managers workers again.
    Demote {
        /// IDs, unique ID prefixes, hostnames or `self`.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Remove a node from the cluster; its key is refused from then on.
    #[command(alias = "remove")]
    Rm {
        /// IDs, unique ID prefixes, hostnames or `self`.
        #[arg(required = true)]
        nodes: Vec<String>,
        /// Remove even a node that is still ready.
        #[arg(short, long)]
        force: bool,
    },
    /// List the tasks on a node (default: this one; filters: id, name, node, desired-state).
    Ps {
        /// ID, unique ID prefix, hostname or `self`.
        node: Option<String>,
        /// Listing flags.
        #[command(flatten)]
        list: ListArgs,
    },
    /// Show nodes: a JSON array, one element per argument.
    Inspect {
        /// IDs, unique ID prefixes, hostnames or `self`.
        #[arg(required = true)]
        nodes: Vec<String>,
        /// Output flags.
        #[command(flatten)]
        out: InspectArgs,
    },
}

/// The socket the CLI talks to: `-H`, `SHOAL_HOST`, or the default.
fn socket_of(host: Option<&str>) -> Result<PathBuf> {
    match host {
        None => Ok(PathBuf::from(DEFAULT_SOCKET)),
        Some(h) => {
            if let Some(path) = h.strip_prefix("unix://") {
                Ok(PathBuf::from(path))
            } else if h.starts_with('/') {
                Ok(PathBuf::from(h))
            } else {
                anyhow::bail!("unsupported host `{h}`: use unix:///path/to/shoal.sock")
            }
        }
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.command {
        Cmd::Daemon(args) => system::daemon(&runtime, *args),
        Cmd::Version => {
            println!("shoal {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Cmd::Completion { shell } => completion::completion(shell, &mut std::io::stdout().lock()),
        Cmd::Man { dir: None } => completion::man_page(&mut std::io::stdout().lock()),
        Cmd::Man { dir: Some(dir) } => {
            for page in completion::man_pages(&dir)? {
                println!("{}", page.display());
            }
            Ok(())
        }
        command => {
            let client = Client::new(socket_of(cli.host.as_deref())?);
            runtime.block_on(dispatch(&client, command))
        }
    }
}

async fn dispatch(client: &Client, command: Cmd) -> Result<()> {
    match command {
        Cmd::Info { format } => system::info(client, format).await,
        Cmd::Init {
            advertise_addr,
            availability,
            force_new_cluster,
        } => system::init(client, advertise_addr, availability, force_new_cluster).await,
        Cmd::Leave { force } => system::leave(client, force).await,
        Cmd::Join {
            token,
            managers,
            advertise_addr,
            availability,
        } => system::join(client, token, managers, advertise_addr, availability).await,
        Cmd::JoinToken {
            role,
            quiet,
            rotate,
            ttl,
        } => system::join_token(client, &role, quiet, rotate, ttl).await,
        Cmd::Node(cmd) => node::run(client, cmd).await,
        Cmd::Service(cmd) => service::run(client, cmd).await,
        Cmd::Config(cmd) => config::run(client, cmd).await,
        Cmd::Secret(cmd) => secret::run(client, cmd).await,
        Cmd::Stack(cmd) => stack::run(client, cmd).await,
        Cmd::Events(args) => events::run(client, args).await,
        Cmd::Daemon(_) | Cmd::Version | Cmd::Completion { .. } | Cmd::Man { .. } => {
            unreachable!("handled before connecting")
        }
    }
}

/// A bad flag value found by Shoal's own parsing (not clap's): the command exits with code 2,
/// as for clap's usage errors.
#[derive(Debug)]
pub struct UsageError(pub String);

impl std::fmt::Display for UsageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for UsageError {}

/// Marks `e` as a usage error (exit code 2).
pub(crate) fn usage(e: anyhow::Error) -> anyhow::Error {
    anyhow::Error::new(UsageError(format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn host_parsing() {
        assert_eq!(
            socket_of(Some("unix:///tmp/x.sock")).unwrap(),
            PathBuf::from("/tmp/x.sock")
        );
        assert_eq!(socket_of(None).unwrap(), PathBuf::from(DEFAULT_SOCKET));
        assert!(socket_of(Some("tcp://1.2.3.4:1")).is_err());
    }
}
