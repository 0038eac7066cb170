//! `shoal config`: configs, named immutable files given to the tasks of the services that
//! use them (`service create --config NAME`).

use std::collections::BTreeMap;
use std::io::Read as _;

use anyhow::{Context as _, Result, bail};
use base64::Engine as _;

use super::output;
use crate::api::client::Client;
use crate::api::services::{ConfigCreateBody, ConfigView};

/// `shoal config …`.
#[derive(Debug, clap::Subcommand)]
pub enum ConfigCmd {
    /// Create a config from a file, or from standard input with `-`.
    Create {
        /// Labels (K=V), repeatable.
        #[arg(short = 'l', long = "label")]
        labels: Vec<String>,
        /// Its name.
        name: String,
        /// The file (`-`: standard input).
        file: String,
    },
    /// List configs.
    #[command(alias = "list")]
    Ls {
        /// Only IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show configs, their data included (base64).
    Inspect {
        /// IDs, unique ID prefixes or names.
        #[arg(required = true)]
        configs: Vec<String>,
    },
    /// Remove configs (refused while a service uses one).
    #[command(alias = "remove")]
    Rm {
        /// IDs, unique ID prefixes or names.
        #[arg(required = true)]
        configs: Vec<String>,
    },
}

/// The bytes of `file` (`-`: standard input) for a `what` (`config`, `secret`).
pub(super) fn read_input(file: &str, what: &str) -> Result<Vec<u8>> {
    let mut data = Vec::new();
    if file == "-" {
        std::io::stdin()
            .read_to_end(&mut data)
            .with_context(|| format!("cannot read the {what} from standard input"))?;
    } else {
        data = std::fs::read(file).with_context(|| format!("cannot read {file}"))?;
    }
    Ok(data)
}

/// `-l K=V` labels.
pub(super) fn label_map(labels: &[String]) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for l in labels {
        let Some((k, v)) = l.split_once('=') else {
            bail!("invalid label `{l}`: expected KEY=VALUE");
        };
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// `inspect` of each of `refs` under `base` (`/v1/configs`): the ones found as a JSON
/// array, then one error line for each one not found.
pub(super) async fn inspect_each<T: serde::de::DeserializeOwned + serde::Serialize>(
    client: &Client,
    base: &str,
    refs: &[String],
) -> Result<()> {
    let mut found = Vec::new();
    let mut failed = Vec::new();
    for r in refs {
        match client.get::<T>(&format!("{base}/{r}")).await {
            Ok(v) => found.push(v),
            Err(e) => failed.push(e.to_string()),
        }
    }
    if !found.is_empty() {
        output::print_json(&found)?;
    }
    output::fail_if_any(failed)
}

/// `rm` of each of `refs` under `base`: the name of each one removed, then one error line
/// for each one that was not.
pub(super) async fn remove_each<T: serde::de::DeserializeOwned>(
    client: &Client,
    base: &str,
    refs: &[String],
    name: fn(&T) -> &str,
) -> Result<()> {
    let mut failed = Vec::new();
    for r in refs {
        match client.delete::<T>(&format!("{base}/{r}")).await {
            Ok(v) => println!("{}", name(&v)),
            Err(e) => failed.push(e.to_string()),
        }
    }
    output::fail_if_any(failed)
}

/// Runs `shoal config …`.
pub async fn run(client: &Client, cmd: ConfigCmd) -> Result<()> {
    match cmd {
        ConfigCmd::Create { labels, name, file } => {
            let data = read_input(&file, "config")?;
            let body = ConfigCreateBody {
                name,
                data: base64::engine::general_purpose::STANDARD.encode(&data),
                labels: label_map(&labels)?,
            };
            let view: ConfigView = client.post("/v1/configs", &body).await?;
            println!("{}", view.id);
            Ok(())
        }
        ConfigCmd::Ls { quiet } => {
            let mut list: Vec<ConfigView> = client.get("/v1/configs").await?;
            list.sort_by(|a, b| a.name.cmp(&b.name));
            if quiet {
                for c in &list {
                    println!("{}", c.id);
                }
                return Ok(());
            }
            let rows: Vec<Vec<String>> = list
                .iter()
                .map(|c| {
                    vec![
                        output::id(&c.id, false),
                        c.name.clone(),
                        c.size.to_string(),
                        c.created_at.clone(),
                    ]
                })
                .collect();
            print!(
                "{}",
                output::table(&["ID", "NAME", "SIZE", "CREATED"], &rows)
            );
            Ok(())
        }
        ConfigCmd::Inspect { configs } => {
            inspect_each::<ConfigView>(client, "/v1/configs", &configs).await
        }
        ConfigCmd::Rm { configs } => {
            remove_each::<ConfigView>(client, "/v1/configs", &configs, |v| &v.name).await
        }
    }
}
