//! `shoal stack`: compose files deployed as a group of services, as `docker stack` does it —
//! on the client. The CLI reads the files ([`compose`]), turns them into the control API's
//! bodies, and calls the API; the stack is the label `com.docker.stack.namespace=NAME` on
//! its services, secrets and configs.
//!
//! `deploy` checks everything before the first write: the files, the files they name, the
//! bodies (the API's own conversion), the external secrets and configs, the services it
//! would take over. Then it creates the missing secrets and configs, creates or updates the
//! services (an unchanged one is left alone), and with `--prune` removes what the files no
//! longer name.

mod compose;
mod interpolate;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::api::services::{SecretCompareBody, SecretCompared, SecretCreateBody, SecretView};
use anyhow::{Context as _, Result, anyhow, bail};
use base64::Engine as _;

use super::listing;
use super::node::encode;
use super::service::{ServiceCmd, print_tasks};
use super::{Format, ListArgs, output};
use crate::api::client::{Client, ClientError};
use crate::api::services::{
    ConfigCreateBody, ConfigView, ServiceInspect, ServiceRef, ServiceRow, ServiceSpecBody,
    ServiceUpdateBody, TaskRow,
};
use compose::{ComposeFile, NAMESPACE_LABEL, Object, Stack};

/// The label holding the SHA-256 (hex) of a stack secret's or config's bytes: a secret
/// cannot be read back, so a changed file is told by this.
pub const DIGEST_LABEL: &str = "com.docker.stack.digest";

/// How long `stack rm` and `deploy --prune` retry removing a secret or config the API still
/// refuses (409) while the removal of its services settles.
const SETTLE: Duration = Duration::from_secs(10);

/// `shoal stack …`.
#[derive(Debug, clap::Subcommand)]
pub enum StackCmd {
    /// Deploy a new stack or update an existing one from compose files.
    #[command(alias = "up")]
    Deploy {
        /// A compose file, repeatable: later files override earlier ones.
        #[arg(
            short = 'c',
            long = "compose-file",
            required = true,
            value_name = "FILE"
        )]
        compose_files: Vec<PathBuf>,
        /// Also remove the stack's services no longer in the files, then its unused secrets
        /// and configs.
        #[arg(long)]
        prune: bool,
        /// The stack's name (its services are NAME_SERVICE).
        name: String,
    },
    /// List stacks.
    #[command(alias = "list")]
    Ls {
        /// table, json, or a Go template (`{{.Name}} {{.Services}}`).
        #[arg(long, default_value = "table")]
        format: Format,
    },
    /// List the tasks of a stack.
    Ps {
        /// The stack.
        name: String,
        /// Listing flags.
        #[command(flatten)]
        list: ListArgs,
    },
    /// List the services of a stack.
    Services {
        /// The stack.
        name: String,
        /// Listing flags.
        #[command(flatten)]
        list: ListArgs,
    },
    /// Remove stacks: their services, then their secrets and configs.
    #[command(alias = "remove", alias = "down")]
    Rm {
        /// The stacks.
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// Runs `shoal stack …`.
pub async fn run(client: &Client, cmd: StackCmd) -> Result<()> {
    match cmd {
        StackCmd::Deploy {
            compose_files,
            prune,
            name,
        } => deploy(client, &compose_files, prune, &name).await,
        StackCmd::Ls { format } => ls(client, &format).await,
        StackCmd::Ps { name, list } => {
            let services = stack_services(client, &name).await?;
            if services.is_empty() {
                bail!("nothing found in stack: {name}");
            }
            let mut rows: Vec<TaskRow> = Vec::new();
            for s in &services {
                match client
                    .get::<Vec<TaskRow>>(&format!("/v1/services/{}/tasks", encode(&s.row.id)))
                    .await
                {
                    Ok(r) => rows.extend(r),
                    Err(ClientError::Api { status: 404, .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            print_tasks(rows, &list)
        }
        StackCmd::Services { name, mut list } => {
            if stack_services(client, &name).await?.is_empty() {
                bail!("nothing found in stack: {name}");
            }
            list.filter.push(format!("label={NAMESPACE_LABEL}={name}"));
            super::service::run(client, ServiceCmd::Ls(list)).await
        }
        StackCmd::Rm { names } => {
            let mut failed = Vec::new();
            for name in &names {
                if let Err(e) = rm(client, name).await {
                    failed.push(format!("{e:#}"));
                }
            }
            output::fail_if_any(failed)
        }
    }
}

/// A stack name: what a service name may start with.
fn check_name(name: &str) -> Result<()> {
    let ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        && name.len() <= 50;
    if !ok {
        bail!("invalid stack name `{name}`: [a-zA-Z0-9][a-zA-Z0-9_.-]*, at most 50 characters");
    }
    Ok(())
}

/// Every service, inspected (the rows do not carry labels).
async fn all_services(client: &Client) -> Result<Vec<ServiceInspect>> {
    let rows: Vec<ServiceRow> = client.get("/v1/services").await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in rows {
        match client
            .get::<ServiceInspect>(&format!("/v1/services/{}", encode(&r.id)))
            .await
        {
            Ok(i) => out.push(i),
            // Removed in between.
            Err(ClientError::Api { status: 404, .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(out)
}

fn in_stack(labels: &BTreeMap<String, String>, name: &str) -> bool {
    labels.get(NAMESPACE_LABEL).is_some_and(|n| n == name)
}

async fn stack_services(client: &Client, name: &str) -> Result<Vec<ServiceInspect>> {
    Ok(all_services(client)
        .await?
        .into_iter()
        .filter(|s| in_stack(&s.spec.labels, name))
        .collect())
}

/// The cluster's secrets.
async fn secrets(client: &Client) -> Result<Vec<SecretView>> {
    Ok(client.get::<Vec<SecretView>>("/v1/secrets").await?)
}

/// SHA-256 of `data`, hex.
fn digest(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// What holds a stack secret's or config's bytes in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Choice {
    /// This object already has these bytes.
    Reuse(String),
    /// Create it under this name.
    Create(String),
}

/// Where the bytes of digest `d` for the object `name` go: `name` when it is free or already
/// holds them; else (it holds other bytes, and objects are immutable) `name_<8 hex>`.
/// `existing` gives an existing object's digest (`Some(None)`: exists, digest unknown).
fn choose(name: &str, d: &str, existing: &dyn Fn(&str) -> Option<Option<String>>) -> Choice {
    match existing(name) {
        None => Choice::Create(name.to_string()),
        Some(Some(have)) if have == d => Choice::Reuse(name.to_string()),
        Some(_) => {
            let alt = format!("{name}_{}", &d[..8]);
            match existing(&alt) {
                Some(_) => Choice::Reuse(alt),
                None => Choice::Create(alt),
            }
        }
    }
}

/// A spec as the daemon would store and show it: through the API's conversion and back, the
/// secrets (which this branch's conversion does not carry) kept with their default target.
fn normalise(b: &ServiceSpecBody) -> Result<ServiceSpecBody, String> {
    let spec = compose::validate(b)?;
    let mut out = ServiceSpecBody::from(&spec);
    out.secrets.clone_from(&b.secrets);
    Ok(out)
}

/// The parts of a spec a redeploy compares: no IDs, no force counter, secret targets absolute.
fn comparable(b: &ServiceSpecBody) -> ServiceSpecBody {
    let mut b = b.clone();
    b.force_update = 0;
    for c in &mut b.configs {
        c.id.clear();
    }
    for s in &mut b.secrets {
        s.id.clear();
        if s.target.is_empty() {
            s.target = format!("/run/secrets/{}", s.name);
        } else if !s.target.starts_with('/') {
            s.target = format!("/run/secrets/{}", s.target);
        }
    }
    b.secrets.sort_by(|a, b| a.name.cmp(&b.name));
    b
}

/// Whether deploying `new` over `current` changes nothing.
fn unchanged(new: &ServiceSpecBody, current: &ServiceSpecBody) -> bool {
    match normalise(new) {
        Ok(n) => comparable(&n) == comparable(current),
        Err(_) => false,
    }
}

/// The variables for interpolation: a `.env` file in `dir` (compose's format: `KEY=VALUE`,
/// quotes around a value removed), overridden by the process environment.
fn variables(dir: &Path) -> Result<BTreeMap<String, String>> {
    let mut env = BTreeMap::new();
    let dot = dir.join(".env");
    if dot.is_file() {
        for (k, v) in super::service::update::env_file(&dot.to_string_lossy())? {
            env.insert(k, unquote(&v).to_string());
        }
    }
    env.extend(std::env::vars());
    Ok(env)
}

fn unquote(v: &str) -> &str {
    let t = v.trim();
    for q in ['"', '\''] {
        if t.len() >= 2 && t.starts_with(q) && t.ends_with(q) {
            return &t[1..t.len() - 1];
        }
    }
    t
}

/// The deploy's work, decided before any write.
#[derive(Debug, Default)]
struct Plan {
    /// Secrets to create: name, bytes, labels.
    new_secrets: Vec<(String, Vec<u8>, BTreeMap<String, String>)>,
    /// Configs to create.
    new_configs: Vec<(String, Vec<u8>, BTreeMap<String, String>)>,
    /// Services to create.
    create: Vec<ServiceSpecBody>,
    /// Services to update: ID and the whole new spec.
    update: Vec<(String, ServiceSpecBody)>,
    /// Services of the stack no longer in the files: ID and name.
    gone: Vec<(String, String)>,
}

/// Chooses the cluster objects for the stack's secrets or configs; fills `create` and renames
/// the services' references when a changed file needs a new object. `what` is `secret` or
/// `config`.
fn place_objects(
    stack: &str,
    objects: &[Object],
    existing: &BTreeMap<String, Option<String>>,
    what: &str,
    create: &mut Vec<(String, Vec<u8>, BTreeMap<String, String>)>,
    renames: &mut BTreeMap<String, String>,
) -> Result<()> {
    for o in objects {
        let Some(data) = &o.data else {
            if !existing.contains_key(&o.name) {
                bail!(
                    "{}:{}: {what}s.{}: external {what} `{}` not found in the cluster",
                    o.file,
                    o.line,
                    o.key,
                    o.name
                );
            }
            continue;
        };
        let d = digest(data);
        let choice = choose(&o.name, &d, &|n| existing.get(n).cloned());
        let name = match choice {
            Choice::Reuse(n) => n,
            Choice::Create(n) => {
                let mut labels = o.labels.clone();
                labels.insert(NAMESPACE_LABEL.into(), stack.into());
                labels.insert(DIGEST_LABEL.into(), d);
                create.push((n.clone(), data.clone(), labels));
                n
            }
        };
        if name != o.name {
            renames.insert(o.name.clone(), name);
        }
    }
    Ok(())
}

/// Chooses the cluster secrets for the stack's secrets, as [`place_objects`] does for configs,
/// but without a digest anywhere (a digest of a weak password in Raft could be tried offline):
/// the leader says whether an existing secret of the stack holds the same bytes (`POST
/// /v1/secrets/{ref}/compare`). A changed file gets a new secret, `NAME_2`, `NAME_3`, …
async fn place_secrets(
    client: &Client,
    stack: &str,
    objects: &[Object],
    existing: &[SecretView],
    create: &mut Vec<(String, Vec<u8>, BTreeMap<String, String>)>,
    renames: &mut BTreeMap<String, String>,
) -> Result<()> {
    for o in objects {
        let Some(data) = &o.data else {
            if !existing.iter().any(|s| s.name == o.name) {
                bail!(
                    "{}:{}: secrets.{}: external secret `{}` not found in the cluster",
                    o.file,
                    o.line,
                    o.key,
                    o.name
                );
            }
            continue;
        };
        let mut reuse = None;
        for s in existing.iter().filter(|s| is_version_of(&s.name, &o.name)) {
            let body = SecretCompareBody {
                data: base64::engine::general_purpose::STANDARD.encode(data),
            };
            let answer: SecretCompared = client
                .post(&format!("/v1/secrets/{}/compare", encode(&s.id)), &body)
                .await
                .with_context(|| format!("comparing secret {}", s.name))?;
            if answer.same {
                reuse = Some(s.name.clone());
                break;
            }
        }
        let name = match reuse {
            Some(n) => n,
            None => {
                let n = (1..)
                    .map(|i| {
                        if i == 1 {
                            o.name.clone()
                        } else {
                            format!("{}_{i}", o.name)
                        }
                    })
                    .find(|n| existing.iter().all(|s| s.name != *n))
                    .unwrap_or_else(|| o.name.clone());
                let mut labels = o.labels.clone();
                labels.insert(NAMESPACE_LABEL.into(), stack.into());
                create.push((n.clone(), data.clone(), labels));
                n
            }
        };
        if name != o.name {
            renames.insert(o.name.clone(), name);
        }
    }
    Ok(())
}

/// Whether `name` is `base` or one of its later versions (`base_2`, `base_3`, …).
fn is_version_of(name: &str, base: &str) -> bool {
    name == base
        || name
            .strip_prefix(base)
            .and_then(|r| r.strip_prefix('_'))
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

async fn deploy(client: &Client, files: &[PathBuf], prune: bool, name: &str) -> Result<()> {
    check_name(name)?;
    let mut compose_files = Vec::new();
    for f in files {
        let text = if f.as_os_str() == "-" {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
                .context("cannot read the compose file from standard input")?;
            s
        } else {
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?
        };
        compose_files.push(ComposeFile {
            name: f.display().to_string(),
            text,
        });
    }
    let first = files
        .first()
        .ok_or_else(|| anyhow!("a compose file is required (-c FILE)"))?;
    let dir = if first.as_os_str() == "-" {
        std::env::current_dir()?
    } else {
        std::path::absolute(first)?
            .parent()
            .map_or_else(|| PathBuf::from("/"), Path::to_path_buf)
    };
    let env = variables(&dir)?;
    let mut stack = compose::parse(name, &compose_files, &dir, &env)?;
    if let Some(w) = stack.warning() {
        eprintln!("{w}");
    }
    if !stack.unset.is_empty() {
        eprintln!(
            "warning: variables not set, so blank: {}",
            stack.unset.join(", ")
        );
    }

    // Reads only, from here to the first write.
    let services = all_services(client).await?;
    let configs: Vec<ConfigView> = client.get("/v1/configs").await?;
    let secrets = if stack.secrets.is_empty() && !prune {
        Vec::new()
    } else {
        secrets(client).await?
    };
    let mut config_digests: BTreeMap<String, Option<String>> = BTreeMap::new();
    for c in &configs {
        let mut d = c.labels.get(DIGEST_LABEL).cloned();
        let ours = stack.configs.iter().any(|o| c.name.starts_with(&o.name));
        if d.is_none() && ours {
            // A config made by hand under the stack's name: compare its bytes.
            let full: ConfigView = client
                .get(&format!("/v1/configs/{}", encode(&c.id)))
                .await?;
            d = full
                .data
                .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                .map(|b| digest(&b));
        }
        config_digests.insert(c.name.clone(), d);
    }
    let mut plan = Plan::default();
    let mut renames = BTreeMap::new();
    place_secrets(
        client,
        name,
        &stack.secrets,
        &secrets,
        &mut plan.new_secrets,
        &mut renames,
    )
    .await?;
    let mut config_renames = BTreeMap::new();
    place_objects(
        name,
        &stack.configs,
        &config_digests,
        "config",
        &mut plan.new_configs,
        &mut config_renames,
    )?;
    for s in &mut stack.services {
        rename_refs(s, &renames, &config_renames);
    }
    plan_services(name, &stack, &services, &mut plan)?;

    // Writes.
    for (n, data, labels) in &plan.new_secrets {
        println!("Creating secret {n}");
        let body = SecretCreateBody {
            name: n.clone(),
            data: base64::engine::general_purpose::STANDARD.encode(data),
            labels: labels.clone(),
        };
        client
            .post::<_, serde_json::Value>("/v1/secrets", &body)
            .await
            .with_context(|| format!("creating secret {n}"))?;
    }
    for (n, data, labels) in &plan.new_configs {
        println!("Creating config {n}");
        let body = ConfigCreateBody {
            name: n.clone(),
            data: base64::engine::general_purpose::STANDARD.encode(data),
            labels: labels.clone(),
        };
        client
            .post::<_, ConfigView>("/v1/configs", &body)
            .await
            .with_context(|| format!("creating config {n}"))?;
    }
    for body in &plan.create {
        println!("Creating service {}", body.name);
        client
            .post::<_, ServiceRef>("/v1/services", body)
            .await
            .with_context(|| format!("creating service {}", body.name))?;
    }
    for (id, body) in &plan.update {
        println!("Updating service {}", body.name);
        let update = ServiceUpdateBody {
            spec: Some(Box::new(body.clone())),
            ..ServiceUpdateBody::default()
        };
        client
            .post::<_, serde_json::Value>(&format!("/v1/services/{}/update", encode(id)), &update)
            .await
            .with_context(|| format!("updating service {}", body.name))?;
    }
    if !prune {
        for (_, n) in &plan.gone {
            eprintln!(
                "Service {n} is no longer in the compose files: `stack deploy --prune` removes it"
            );
        }
        return Ok(());
    }
    let mut failed = Vec::new();
    for (id, n) in &plan.gone {
        println!("Removing service {n}");
        if let Err(e) = client
            .delete::<serde_json::Value>(&format!("/v1/services/{}", encode(id)))
            .await
        {
            failed.push(format!("removing service {n}: {e}"));
        }
    }
    // Unused: the stack's objects that no service of the files uses and the files do not
    // declare (any more, or under this name).
    let mut keep: BTreeSet<String> = BTreeSet::new();
    for s in &stack.services {
        keep.extend(s.secrets.iter().map(|r| r.name.clone()));
        keep.extend(s.configs.iter().map(|r| r.name.clone()));
    }
    for o in stack.secrets.iter().chain(&stack.configs) {
        keep.insert(
            renames
                .get(&o.name)
                .or(config_renames.get(&o.name))
                .unwrap_or(&o.name)
                .clone(),
        );
    }
    for s in &secrets {
        if in_stack(&s.labels, name) && !keep.contains(&s.name) {
            println!("Removing secret {}", s.name);
            if let Err(e) = delete_settling(client, &format!("/v1/secrets/{}", encode(&s.id))).await
            {
                failed.push(format!("removing secret {}: {e}", s.name));
            }
        }
    }
    for c in &configs {
        if in_stack(&c.labels, name) && !keep.contains(&c.name) {
            println!("Removing config {}", c.name);
            if let Err(e) = delete_settling(client, &format!("/v1/configs/{}", encode(&c.id))).await
            {
                failed.push(format!("removing config {}: {e}", c.name));
            }
        }
    }
    output::fail_if_any(failed)
}

/// Points a service's references at the objects chosen for them.
fn rename_refs(
    s: &mut ServiceSpecBody,
    secrets: &BTreeMap<String, String>,
    configs: &BTreeMap<String, String>,
) {
    for r in &mut s.secrets {
        if let Some(n) = secrets.get(&r.name) {
            r.name.clone_from(n);
        }
    }
    for r in &mut s.configs {
        if let Some(n) = configs.get(&r.name) {
            r.name.clone_from(n);
        }
    }
}

/// Which services to create, update (changed ones only) or leave, against the cluster's.
fn plan_services(
    name: &str,
    stack: &Stack,
    cluster: &[ServiceInspect],
    plan: &mut Plan,
) -> Result<()> {
    let mut wanted = BTreeSet::new();
    for body in &stack.services {
        // The references may have been renamed: check again.
        compose::validate(body).map_err(|e| anyhow!("service {}: {e}", body.name))?;
        wanted.insert(body.name.clone());
        match cluster.iter().find(|s| s.row.name == body.name) {
            None => plan.create.push(body.clone()),
            Some(cur) if !in_stack(&cur.spec.labels, name) => bail!(
                "service {} exists and is not part of stack {name} (no label {NAMESPACE_LABEL}={name}): remove or rename it first",
                body.name
            ),
            Some(cur) if unchanged(body, &cur.spec) => {}
            Some(cur) => {
                let mut b = body.clone();
                // Not a forced update: keep the service's counter.
                b.force_update = cur.spec.force_update;
                plan.update.push((cur.row.id.clone(), b));
            }
        }
    }
    for s in cluster {
        if in_stack(&s.spec.labels, name) && !wanted.contains(&s.row.name) {
            plan.gone.push((s.row.id.clone(), s.row.name.clone()));
        }
    }
    Ok(())
}

/// `DELETE path`, retried while the API answers 409 (a service's removal still settling).
async fn delete_settling(client: &Client, path: &str) -> Result<(), ClientError> {
    let deadline = Instant::now() + SETTLE;
    loop {
        match client.delete::<serde_json::Value>(path).await {
            Ok(_) => return Ok(()),
            Err(ClientError::Api { status: 409, .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// `stack rm NAME`.
async fn rm(client: &Client, name: &str) -> Result<()> {
    let services = stack_services(client, name).await?;
    let configs: Vec<ConfigView> = client.get("/v1/configs").await?;
    let secrets = secrets(client).await?;
    let configs: Vec<&ConfigView> = configs
        .iter()
        .filter(|c| in_stack(&c.labels, name))
        .collect();
    let secrets: Vec<&SecretView> = secrets
        .iter()
        .filter(|s| in_stack(&s.labels, name))
        .collect();
    if services.is_empty() && configs.is_empty() && secrets.is_empty() {
        bail!("nothing found in stack: {name}");
    }
    let mut failed = Vec::new();
    for s in &services {
        println!("Removing service {}", s.row.name);
        if let Err(e) = client
            .delete::<serde_json::Value>(&format!("/v1/services/{}", encode(&s.row.id)))
            .await
        {
            failed.push(format!("removing service {}: {e}", s.row.name));
        }
    }
    for s in &secrets {
        println!("Removing secret {}", s.name);
        if let Err(e) = delete_settling(client, &format!("/v1/secrets/{}", encode(&s.id))).await {
            failed.push(format!("removing secret {}: {e}", s.name));
        }
    }
    for c in &configs {
        println!("Removing config {}", c.name);
        if let Err(e) = delete_settling(client, &format!("/v1/configs/{}", encode(&c.id))).await {
            failed.push(format!("removing config {}: {e}", c.name));
        }
    }
    output::fail_if_any(failed)
}

/// `stack ls`: each stack with its number of services.
async fn ls(client: &Client, format: &Format) -> Result<()> {
    let mut stacks: BTreeMap<String, u64> = BTreeMap::new();
    for s in all_services(client).await? {
        if let Some(n) = s.spec.labels.get(NAMESPACE_LABEL) {
            *stacks.entry(n.clone()).or_default() += 1;
        }
    }
    match format {
        Format::Json => {
            let rows: Vec<serde_json::Value> = stacks
                .iter()
                .map(|(n, c)| serde_json::json!({"name": n, "services": c}))
                .collect();
            output::print_json(&rows)
        }
        Format::Template(t) => {
            let rows: Vec<serde_json::Value> = stacks
                .iter()
                .map(|(n, c)| serde_json::json!({"Name": n, "Services": c.to_string()}))
                .collect();
            listing::print_template(
                t,
                &rows,
                &serde_json::json!({"Name": "NAME", "Services": "SERVICES"}),
            )
        }
        Format::Table => {
            let rows: Vec<Vec<String>> = stacks
                .iter()
                .map(|(n, c)| vec![n.clone(), c.to_string()])
                .collect();
            print!("{}", output::table(&["NAME", "SERVICES"], &rows));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::services::{ConfigRefBody, SecretRefBody};

    fn body(name: &str) -> ServiceSpecBody {
        let mut b = ServiceSpecBody::new(name, "nginx");
        b.labels.insert(NAMESPACE_LABEL.into(), "home".into());
        b
    }

    #[test]
    fn issue_23_stack_secret_versions_are_numbered_not_digested() {
        assert!(is_version_of("home_pw", "home_pw"));
        assert!(is_version_of("home_pw_2", "home_pw"));
        assert!(is_version_of("home_pw_10", "home_pw"));
        assert!(!is_version_of("home_pw_", "home_pw"));
        assert!(!is_version_of("home_pw_x2", "home_pw"));
        assert!(!is_version_of("home_pwd", "home_pw"));
        assert!(!is_version_of("home_pw_2_3", "home_pw"));
    }

    #[test]
    fn issue_23_stack_changed_file_gets_a_new_object() {
        let d = digest(b"one");
        let none = |_: &str| None;
        assert_eq!(
            choose("home_pw", &d, &none),
            Choice::Create("home_pw".into())
        );
        let same = |n: &str| (n == "home_pw").then(|| Some(digest(b"one")));
        assert_eq!(
            choose("home_pw", &d, &same),
            Choice::Reuse("home_pw".into())
        );
        let other = |n: &str| (n == "home_pw").then(|| Some(digest(b"two")));
        assert_eq!(
            choose("home_pw", &d, &other),
            Choice::Create(format!("home_pw_{}", &d[..8]))
        );
        let both = |n: &str| (n.starts_with("home_pw")).then(|| Some(digest(b"two")));
        assert_eq!(
            choose("home_pw", &d, &both),
            Choice::Reuse(format!("home_pw_{}", &d[..8]))
        );
        assert_eq!(
            digest(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn issue_23_stack_external_object_must_exist() {
        let o = Object {
            key: "api_key".into(),
            name: "shared_api_key".into(),
            data: None,
            labels: BTreeMap::new(),
            file: "compose.yml".into(),
            line: 12,
        };
        let mut create = Vec::new();
        let mut renames = BTreeMap::new();
        let e = place_objects(
            "home",
            std::slice::from_ref(&o),
            &BTreeMap::new(),
            "secret",
            &mut create,
            &mut renames,
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "compose.yml:12: secrets.api_key: external secret `shared_api_key` not found in the cluster"
        );
        let existing = BTreeMap::from([("shared_api_key".to_string(), None)]);
        place_objects("home", &[o], &existing, "secret", &mut create, &mut renames).unwrap();
        assert!(create.is_empty() && renames.is_empty());
    }

    #[test]
    fn issue_23_stack_changed_secret_renames_the_references() {
        let o = Object {
            key: "pw".into(),
            name: "home_pw".into(),
            data: Some(b"new".to_vec()),
            labels: BTreeMap::new(),
            file: "compose.yml".into(),
            line: 3,
        };
        let existing = BTreeMap::from([("home_pw".to_string(), Some(digest(b"old")))]);
        let mut create = Vec::new();
        let mut renames = BTreeMap::new();
        place_objects("home", &[o], &existing, "secret", &mut create, &mut renames).unwrap();
        let alt = format!("home_pw_{}", &digest(b"new")[..8]);
        assert_eq!(create.len(), 1);
        assert_eq!(create[0].0, alt);
        assert_eq!(create[0].2[NAMESPACE_LABEL], "home");
        assert_eq!(create[0].2[DIGEST_LABEL], digest(b"new"));
        let mut s = body("home_db");
        s.secrets.push(SecretRefBody {
            name: "home_pw".into(),
            id: String::new(),
            target: "pw".into(),
            uid: 0,
            gid: 0,
            mode: 0o444,
        });
        rename_refs(&mut s, &renames, &BTreeMap::new());
        assert_eq!(s.secrets[0].name, alt);
    }

    #[test]
    fn issue_23_stack_redeploy_skips_unchanged_services() {
        let mut new = body("home_web");
        new.configs.push(ConfigRefBody {
            name: "home_nginx".into(),
            id: String::new(),
            target: "/nginx".into(),
            uid: 0,
            gid: 0,
            mode: 0o444,
        });
        // What the daemon shows: IDs filled in, a force counter.
        let mut current = normalise(&new).unwrap();
        current.configs[0].id = "c0ffee".into();
        current.force_update = 2;
        assert!(unchanged(&new, &current));
        let mut scaled = new.clone();
        scaled.mode = crate::api::services::ServiceModeBody::Replicated { replicas: 3 };
        assert!(!unchanged(&scaled, &current));

        let cluster = vec![ServiceInspect {
            row: ServiceRow {
                id: "s1".into(),
                name: "home_web".into(),
                mode: "replicated".into(),
                replicas: Some(1),
                running: 1,
                image: "nginx".into(),
                driver: "docker".into(),
                ports: Vec::new(),
                update_status: None,
                desired_tasks: 1,
                version: 1,
                created_at: String::new(),
                updated_at: String::new(),
            },
            spec: current,
            previous_spec: None,
            vip_index: None,
        }];
        let mut old = cluster[0].clone();
        old.row.id = "s2".into();
        old.row.name = "home_old".into();
        let mut cluster = cluster;
        cluster.push(old);
        let stack = Stack {
            services: vec![scaled, body("home_db")],
            ..Stack::default()
        };
        let mut plan = Plan::default();
        plan_services("home", &stack, &cluster, &mut plan).unwrap();
        assert_eq!(plan.create.len(), 1);
        assert_eq!(plan.create[0].name, "home_db");
        assert_eq!(plan.update.len(), 1);
        assert_eq!(plan.update[0].0, "s1");
        assert_eq!(plan.update[0].1.force_update, 2, "not a forced update");
        assert_eq!(plan.gone, [("s2".to_string(), "home_old".to_string())]);

        // A service of the same name outside the stack is not taken over.
        let mut foreign = cluster[0].clone();
        foreign.spec.labels.clear();
        let mut plan = Plan::default();
        let e = plan_services("home", &stack, &[foreign], &mut plan).unwrap_err();
        assert!(e.to_string().contains("is not part of stack home"), "{e}");
    }

    #[test]
    fn issue_23_stack_names_and_dotenv_quotes() {
        assert!(check_name("home").is_ok());
        assert!(check_name("-x").is_err());
        assert!(check_name("a b").is_err());
        assert_eq!(unquote("\"a b\""), "a b");
        assert_eq!(unquote("'x'"), "x");
        assert_eq!(unquote("plain"), "plain");
    }
}
