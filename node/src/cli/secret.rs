//! `shoal secret`: secrets, named immutable values given to the tasks of the services that
//! use them as in-memory files (`service create --secret NAME`). Stored encrypted; no command
//! ever shows the value.

use anyhow::Result;
use base64::Engine as _;

use super::config::{inspect_each, label_map, read_input, remove_each};
use super::output;
use crate::api::client::Client;
use crate::api::services::{SecretCreateBody, SecretView};

/// `shoal secret …`.
#[derive(Debug, clap::Subcommand)]
pub enum SecretCmd {
    /// Create a secret from a file, or from standard input with `-`.
    Create {
        /// Labels (K=V), repeatable.
        #[arg(short = 'l', long = "label")]
        labels: Vec<String>,
        /// Its name.
        name: String,
        /// The file (`-`: standard input).
        file: String,
    },
    /// List secrets.
    #[command(alias = "list")]
    Ls {
        /// Only IDs.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Show secrets (never their value).
    Inspect {
        /// IDs, unique ID prefixes or names.
        #[arg(required = true)]
        secrets: Vec<String>,
    },
    /// Remove secrets (refused while a service uses one).
    #[command(alias = "remove")]
    Rm {
        /// IDs, unique ID prefixes or names.
        #[arg(required = true)]
        secrets: Vec<String>,
    },
}

/// Runs `shoal secret …`.
pub async fn run(client: &Client, cmd: SecretCmd) -> Result<()> {
    match cmd {
        SecretCmd::Create { labels, name, file } => {
            let data = read_input(&file, "secret")?;
            let body = SecretCreateBody {
                name,
                data: base64::engine::general_purpose::STANDARD.encode(&data),
                labels: label_map(&labels)?,
            };
            let view: SecretView = client.post("/v1/secrets", &body).await?;
            println!("{}", view.id);
            Ok(())
        }
        SecretCmd::Ls { quiet } => {
            let mut list: Vec<SecretView> = client.get("/v1/secrets").await?;
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
                        c.created_at.clone(),
                    ]
                })
                .collect();
            print!("{}", output::table(&["ID", "NAME", "CREATED"], &rows));
            Ok(())
        }
        SecretCmd::Inspect { secrets } => {
            inspect_each::<SecretView>(client, "/v1/secrets", &secrets).await
        }
        SecretCmd::Rm { secrets } => {
            remove_each::<SecretView>(client, "/v1/secrets", &secrets, |v| &v.name).await
        }
    }
}
