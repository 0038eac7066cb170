//! `service update` and the flags it shares with `service create`: the rolling update and
//! rollback settings and the health check. Numbers, durations and words are taken as text
//! and parsed here, so a bad value is one line on stderr (clap's errors are several) and
//! nothing is sent to the daemon.

use std::collections::BTreeMap;

use anyhow::{Result, anyhow, bail};

use crate::api::services::UpdateConfigBody;
use crate::api::{
    HealthCheckBody, PortBody, ServiceSpecBody, ServiceUpdateBody, UpdateConfigPatch,
};
use crate::manager::services::{FailureAction, RATIO_ONE_PPM, UpdateOrder};

/// `--update-*` and `--rollback-*` flags (on `create` and `update`).
#[derive(Debug, Default, clap::Args)]
pub struct UpdateSettingsFlags {
    /// Tasks updated at once (0 = all at once).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub update_parallelism: Option<String>,
    /// Delay between updates of batches (e.g. 10s).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub update_delay: Option<String>,
    /// How long to watch each updated task for failure (e.g. 5s).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub update_monitor: Option<String>,
    /// stop-first or start-first.
    #[arg(long, value_name = "ORDER")]
    pub update_order: Option<String>,
    /// pause, continue or rollback.
    #[arg(long, value_name = "ACTION")]
    pub update_failure_action: Option<String>,
    /// Failure rate tolerated during an update (0 to 1).
    #[arg(long, value_name = "RATIO", allow_hyphen_values = true)]
    pub update_max_failure_ratio: Option<String>,
    /// Tasks rolled back at once (0 = all at once).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub rollback_parallelism: Option<String>,
    /// Delay between rollbacks of batches.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub rollback_delay: Option<String>,
    /// How long to watch each rolled back task for failure.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub rollback_monitor: Option<String>,
    /// stop-first or start-first.
    #[arg(long, value_name = "ORDER")]
    pub rollback_order: Option<String>,
    /// pause or continue.
    #[arg(long, value_name = "ACTION")]
    pub rollback_failure_action: Option<String>,
    /// Failure rate tolerated during a rollback (0 to 1).
    #[arg(long, value_name = "RATIO", allow_hyphen_values = true)]
    pub rollback_max_failure_ratio: Option<String>,
}

/// `--health-*` and `--no-healthcheck` (on `create` and `update`).
#[derive(Debug, Default, clap::Args)]
pub struct HealthFlags {
    /// Health check command (run with sh -c).
    #[arg(long, value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Time between health checks (e.g. 30s).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub health_interval: Option<String>,
    /// A check running longer fails (e.g. 30s).
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub health_timeout: Option<String>,
    /// Consecutive failures that make a task unhealthy.
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub health_retries: Option<String>,
    /// Failures during this time after start do not count.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub health_start_period: Option<String>,
    /// Disable any health check (the image's included).
    #[arg(long)]
    pub no_healthcheck: bool,
}

/// `service update` flags.
#[derive(Debug, clap::Args)]
pub struct UpdateArgs {
    /// New image (or program path, with the process driver).
    #[arg(long)]
    pub image: Option<String>,
    /// New arguments, as one string split like a shell would ("sh -c 'echo hi'").
    #[arg(long, allow_hyphen_values = true)]
    pub args: Option<String>,
    /// Add or replace an environment variable (K=V), repeatable.
    #[arg(long = "env-add", value_name = "K=V")]
    pub env_add: Vec<String>,
    /// Remove an environment variable (K), repeatable.
    #[arg(long = "env-rm", value_name = "K")]
    pub env_rm: Vec<String>,
    /// Add or replace a task label (K=V), repeatable.
    #[arg(long = "label-add", value_name = "K=V")]
    pub label_add: Vec<String>,
    /// Remove a task label (K), repeatable.
    #[arg(long = "label-rm", value_name = "K")]
    pub label_rm: Vec<String>,
    /// Add a placement constraint, repeatable.
    #[arg(long = "constraint-add", value_name = "EXPR")]
    pub constraint_add: Vec<String>,
    /// Remove a placement constraint (the exact expression), repeatable.
    #[arg(long = "constraint-rm", value_name = "EXPR")]
    pub constraint_rm: Vec<String>,
    /// Publish a port, replacing the entry with the same published port; repeatable:
    /// PUBLISHED:TARGET[/tcp] or published=P,target=T[,mode=ingress|host][,proxy-protocol=v2]
    #[arg(long = "publish-add", value_name = "SPEC", allow_hyphen_values = true)]
    pub publish_add: Vec<String>,
    /// Stop publishing a port (PUBLISHED or PUBLISHED:TARGET), repeatable.
    #[arg(
        long = "publish-rm",
        value_name = "PUBLISHED",
        allow_hyphen_values = true
    )]
    pub publish_rm: Vec<String>,
    /// New user to run as (empty: the image's).
    #[arg(short = 'u', long)]
    pub user: Option<String>,
    /// New working directory (empty: the image's).
    #[arg(short = 'w', long)]
    pub workdir: Option<String>,
    /// New hostname (empty: Docker's default).
    #[arg(long)]
    pub hostname: Option<String>,
    /// New entrypoint, a command line (empty: the image's).
    #[arg(long, allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    /// Run an init inside each task.
    #[arg(long, conflicts_with = "no_init")]
    pub init: bool,
    /// No init inside the tasks.
    #[arg(long)]
    pub no_init: bool,
    /// Add a Linux capability (repeatable).
    #[arg(long = "cap-add", value_name = "CAP")]
    pub cap_add: Vec<String>,
    /// Drop a Linux capability (repeatable).
    #[arg(long = "cap-drop", value_name = "CAP")]
    pub cap_drop: Vec<String>,
    /// Give the tasks a config: NAME or source=NAME,target=/path[,uid,gid,mode]; repeatable.
    #[arg(long = "config-add", value_name = "CONFIG")]
    pub config_add: Vec<String>,
    /// Stop giving the tasks a config (by name), repeatable.
    #[arg(long = "config-rm", value_name = "NAME")]
    pub config_rm: Vec<String>,
    /// Give the tasks a secret: NAME or source=NAME,target=NAME|/path[,uid,gid,mode];
    /// repeatable.
    #[arg(long = "secret-add", value_name = "SECRET")]
    pub secret_add: Vec<String>,
    /// Stop giving the tasks a secret (by name), repeatable.
    #[arg(long = "secret-rm", value_name = "NAME")]
    pub secret_rm: Vec<String>,
    /// Add a mount (type=bind|volume|tmpfs,source=…,target=…[,readonly]), replacing the mount
    /// with the same target; repeatable.
    #[arg(long = "mount-add", value_name = "SPEC")]
    pub mount_add: Vec<String>,
    /// Remove the mount at this target, repeatable.
    #[arg(long = "mount-rm", value_name = "TARGET")]
    pub mount_rm: Vec<String>,
    /// Make a target port reachable by name (PORT[/tcp]), repeatable.
    #[arg(long = "expose-add", value_name = "PORT")]
    pub expose_add: Vec<String>,
    /// Stop exposing a port, repeatable.
    #[arg(long = "expose-rm", value_name = "PORT")]
    pub expose_rm: Vec<String>,
    /// How the service's name resolves: vip or dnsrr.
    #[arg(long, value_parser = ["vip", "dnsrr"])]
    pub endpoint_mode: Option<String>,
    /// Number of tasks (alone: a scale, not a rolling update).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub replicas: Option<String>,
    /// At most this many tasks on one node (0 = unlimited).
    #[arg(long, value_name = "N", allow_hyphen_values = true)]
    pub replicas_max_per_node: Option<String>,
    /// Memory reserved per task (e.g. 64m; 0: none).
    #[arg(long)]
    pub reserve_memory: Option<String>,
    /// CPUs reserved per task (e.g. 0.5; 0: none).
    #[arg(long)]
    pub reserve_cpu: Option<String>,
    /// Memory limit per task (0: none).
    #[arg(long)]
    pub limit_memory: Option<String>,
    /// CPU limit per task (0: none).
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
    pub health: HealthFlags,
    /// Time between the stop signal and SIGKILL.
    #[arg(long, value_name = "DURATION", allow_hyphen_values = true)]
    pub stop_grace_period: Option<String>,
    /// Replace every task, even when nothing changes.
    #[arg(long)]
    pub force: bool,
    /// Rolling update and rollback settings.
    #[command(flatten)]
    pub settings: UpdateSettingsFlags,
    /// Return at once instead of following the update.
    #[arg(short, long)]
    pub detach: bool,
    /// ID, unique ID prefix or name.
    pub service: String,
}

/// A whole number `>= 0` given to `--flag`.
pub(super) fn count(flag: &str, v: &str) -> Result<u64> {
    v.trim().parse().map_err(|_| {
        crate::cli::usage(anyhow!(
            "invalid --{flag} `{v}`: expected a whole number, 0 or more"
        ))
    })
}

/// A duration (`10s`, `500ms`, `1m30s`, `0`) in milliseconds, if it is one.
pub(crate) fn parse_duration_ms(v: &str) -> Option<u64> {
    let t = v.trim();
    let d = if t == "0" {
        Ok(std::time::Duration::ZERO)
    } else {
        humantime::parse_duration(t)
    };
    d.ok().and_then(|d| u64::try_from(d.as_millis()).ok())
}

/// A duration given to `--flag` (`10s`, `500ms`, `1m`, `0`), in milliseconds.
pub(super) fn duration_ms(flag: &str, v: &str) -> Result<u64> {
    parse_duration_ms(v).ok_or_else(|| {
        crate::cli::usage(anyhow!(
            "invalid --{flag} `{v}`: expected a duration such as 10s, 500ms or 1m"
        ))
    })
}

/// A fraction 0..=1 given to `--flag`, in parts per million.
pub(super) fn ratio_ppm(flag: &str, v: &str) -> Result<u32> {
    let r: f64 = v
        .trim()
        .parse()
        .ok()
        .filter(|r: &f64| r.is_finite() && (0.0..=1.0).contains(r))
        .ok_or_else(|| {
            crate::cli::usage(anyhow!(
                "invalid --{flag} `{v}`: expected a number between 0 and 1"
            ))
        })?;
    // In range 0..=1, so the product fits.
    Ok((r * f64::from(RATIO_ONE_PPM)).round() as u32)
}

/// What `-p`/`--publish-add` accept, for the messages.
const PUBLISH_FORMS: &str = "expected PUBLISHED:TARGET[/tcp] or published=P,target=T[,protocol=tcp][,mode=ingress|host][,proxy-protocol=v2]";

/// A port number in a `--flag` value: 1-65535.
fn port_number(flag: &str, spec: &str, v: &str) -> Result<u16> {
    let v = v.trim();
    match v.parse::<u16>() {
        Ok(0) => Err(crate::cli::usage(anyhow!(
            "invalid --{flag} `{spec}`: invalid port 0: ports are 1-65535"
        ))),
        Ok(n) => Ok(n),
        Err(_) => Err(crate::cli::usage(anyhow!(
            "invalid --{flag} `{spec}`: invalid port `{v}`: ports are 1-65535"
        ))),
    }
}

/// A published port given to `--flag` (`-p`/`--publish` on create, `--publish-add`): the
/// short form `PUBLISHED:TARGET[/tcp]` or Docker's long form
/// `published=P,target=T[,protocol=tcp][,mode=ingress|host][,proxy-protocol=v2]`. A bad
/// value is a usage error; UDP is refused at once (the routing mesh carries TCP only).
pub(super) fn publish(flag: &str, v: &str) -> Result<PortBody> {
    let bad = |why: &str| crate::cli::usage(anyhow!("invalid --{flag} `{v}`: {why}"));
    let udp = |proto: &str| {
        crate::cli::usage(anyhow!(
            "invalid --{flag} `{v}`: protocol {proto} cannot be published: the routing mesh carries TCP only"
        ))
    };
    let mut port = PortBody {
        published: 0,
        target: 0,
        protocol: "tcp".into(),
        mode: "ingress".into(),
        proxy_protocol: None,
    };
    if !v.contains('=') {
        let (ports, proto) = match v.split_once('/') {
            Some((ports, proto)) => (ports, proto.trim()),
            None => (v, "tcp"),
        };
        match proto.to_ascii_lowercase().as_str() {
            "tcp" => {}
            "udp" | "sctp" => return Err(udp(proto)),
            _ => return Err(bad(&format!("unknown protocol `{proto}`: expected tcp"))),
        }
        let Some((published, target)) = ports.split_once(':') else {
            return Err(bad(PUBLISH_FORMS));
        };
        if target.contains(':') {
            return Err(bad(&format!(
                "a listen address cannot be given ({PUBLISH_FORMS})"
            )));
        }
        port.published = port_number(flag, v, published)?;
        port.target = port_number(flag, v, target)?;
        return Ok(port);
    }
    let (mut published, mut target) = (None, None);
    for field in v.split(',') {
        let Some((key, value)) = field.split_once('=') else {
            return Err(bad(&format!(
                "`{field}` is not KEY=VALUE ({PUBLISH_FORMS})"
            )));
        };
        let value = value.trim();
        match key.trim().to_ascii_lowercase().as_str() {
            "published" => published = Some(port_number(flag, v, value)?),
            "target" => target = Some(port_number(flag, v, value)?),
            "protocol" => match value.to_ascii_lowercase().as_str() {
                "tcp" => {}
                "udp" | "sctp" => return Err(udp(value)),
                _ => return Err(bad(&format!("unknown protocol `{value}`: expected tcp"))),
            },
            "mode" => match value.to_ascii_lowercase().as_str() {
                m @ ("ingress" | "host") => m.clone_into(&mut port.mode),
                _ => {
                    return Err(bad(&format!(
                        "unknown mode `{value}`: expected ingress or host"
                    )));
                }
            },
            "proxy-protocol" | "proxy_protocol" => match value.to_ascii_lowercase().as_str() {
                "v2" => port.proxy_protocol = Some("v2".into()),
                "none" => port.proxy_protocol = None,
                _ => {
                    return Err(bad(&format!(
                        "unknown proxy-protocol `{value}`: expected v2 (PROXY protocol version 2) or none"
                    )));
                }
            },
            other => {
                return Err(bad(&format!(
                    "unknown field `{other}`: expected published, target, protocol, mode or proxy-protocol"
                )));
            }
        }
    }
    port.published = published.ok_or_else(|| bad("published= is required"))?;
    port.target = target.ok_or_else(|| bad("target= is required"))?;
    Ok(port)
}

/// A port given to `--publish-rm`: `PUBLISHED` or `PUBLISHED:TARGET[/tcp]` (the published
/// port is the one removed).
pub(super) fn unpublish(v: &str) -> Result<u16> {
    let ports = v.split_once('/').map_or(v, |(ports, _)| ports);
    match ports.split_once(':') {
        None => port_number("publish-rm", v, ports),
        Some((published, target)) => {
            port_number("publish-rm", v, target)?;
            port_number("publish-rm", v, published)
        }
    }
}

fn word<T: std::str::FromStr>(v: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    v.trim().parse().map_err(|e| anyhow!("{e}"))
}

impl UpdateSettingsFlags {
    /// The `--update-*` and `--rollback-*` changes asked.
    pub fn patches(&self) -> Result<(UpdateConfigPatch, UpdateConfigPatch)> {
        let update = patch(
            "update",
            [
                &self.update_parallelism,
                &self.update_delay,
                &self.update_monitor,
                &self.update_order,
                &self.update_failure_action,
                &self.update_max_failure_ratio,
            ],
        )?;
        let rollback = patch(
            "rollback",
            [
                &self.rollback_parallelism,
                &self.rollback_delay,
                &self.rollback_monitor,
                &self.rollback_order,
                &self.rollback_failure_action,
                &self.rollback_max_failure_ratio,
            ],
        )?;
        if rollback.failure_action == Some(FailureAction::Rollback) {
            bail!("invalid --rollback-failure-action `rollback`: expected pause or continue");
        }
        Ok((update, rollback))
    }

    /// `spec` with the settings asked on `create`.
    pub fn apply_to_spec(&self, spec: &mut ServiceSpecBody) -> Result<()> {
        let (u, r) = self.patches()?;
        apply_patch(&u, &mut spec.update_config);
        apply_patch(&r, &mut spec.rollback_config);
        Ok(())
    }
}

/// Parses one group: parallelism, delay, monitor, order, failure action, ratio.
fn patch(prefix: &str, v: [&Option<String>; 6]) -> Result<UpdateConfigPatch> {
    let f = |name: &str| format!("{prefix}-{name}");
    Ok(UpdateConfigPatch {
        parallelism: v[0]
            .as_deref()
            .map(|s| count(&f("parallelism"), s))
            .transpose()?,
        delay_ms: v[1]
            .as_deref()
            .map(|s| duration_ms(&f("delay"), s))
            .transpose()?,
        monitor_ms: v[2]
            .as_deref()
            .map(|s| duration_ms(&f("monitor"), s))
            .transpose()?,
        order: v[3].as_deref().map(word::<UpdateOrder>).transpose()?,
        failure_action: v[4].as_deref().map(word::<FailureAction>).transpose()?,
        max_failure_ratio_ppm: v[5]
            .as_deref()
            .map(|s| ratio_ppm(&f("max-failure-ratio"), s))
            .transpose()?,
    })
}

fn apply_patch(p: &UpdateConfigPatch, c: &mut UpdateConfigBody) {
    let mut spec: crate::manager::services::UpdateConfig = (*c).into();
    p.apply_to(&mut spec);
    *c = spec.into();
}

/// The parsed `--health-*` values: (interval, timeout, retries, start period).
type HealthTuning = (Option<u64>, Option<u64>, Option<u32>, Option<u64>);

impl HealthFlags {
    fn tuning(&self) -> Result<HealthTuning> {
        let retries = self
            .health_retries
            .as_deref()
            .map(|s| {
                count("health-retries", s).and_then(|n| {
                    u32::try_from(n)
                        .map_err(|_| anyhow!("invalid --health-retries `{s}`: too large"))
                })
            })
            .transpose()?;
        Ok((
            self.health_interval
                .as_deref()
                .map(|s| duration_ms("health-interval", s))
                .transpose()?,
            self.health_timeout
                .as_deref()
                .map(|s| duration_ms("health-timeout", s))
                .transpose()?,
            retries,
            self.health_start_period
                .as_deref()
                .map(|s| duration_ms("health-start-period", s))
                .transpose()?,
        ))
    }

    fn check_conflict(&self, t: &HealthTuning) -> Result<()> {
        let tuned = t.0.is_some() || t.1.is_some() || t.2.is_some() || t.3.is_some();
        if self.no_healthcheck && (tuned || self.health_cmd.is_some()) {
            bail!("--no-healthcheck conflicts with the --health-* options");
        }
        Ok(())
    }

    /// `spec` with the health flags asked on `create`.
    pub fn apply_to_spec(&self, spec: &mut ServiceSpecBody) -> Result<()> {
        let t = self.tuning()?;
        self.check_conflict(&t)?;
        spec.no_healthcheck = self.no_healthcheck;
        let tuned = t.0.is_some() || t.1.is_some() || t.2.is_some() || t.3.is_some();
        match &self.health_cmd {
            None if tuned => bail!("the --health-* options need --health-cmd"),
            None => {}
            Some(cmd) => {
                let mut h = HealthCheckBody::shell(cmd.clone());
                h.interval_ms = t.0.unwrap_or(h.interval_ms);
                h.timeout_ms = t.1.unwrap_or(h.timeout_ms);
                h.retries = t.2.unwrap_or(h.retries);
                h.start_period_ms = t.3.unwrap_or(h.start_period_ms);
                spec.health_check = Some(h);
            }
        }
        Ok(())
    }

    fn apply_to_body(&self, b: &mut ServiceUpdateBody) -> Result<()> {
        let t = self.tuning()?;
        self.check_conflict(&t)?;
        b.health_cmd.clone_from(&self.health_cmd);
        (
            b.health_interval_ms,
            b.health_timeout_ms,
            b.health_retries,
            b.health_start_period_ms,
        ) = t;
        b.no_healthcheck = self.no_healthcheck;
        Ok(())
    }
}

fn pairs(items: &[String], flag: &str) -> Result<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for item in items {
        let Some((k, v)) = item.split_once('=') else {
            bail!("invalid --{flag} `{item}`: expected KEY=VALUE");
        };
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

fn amount(v: &Option<String>, parse: fn(&str) -> Result<u64, String>) -> Result<Option<u64>> {
    v.as_deref()
        .map(|s| if s.trim() == "0" { Ok(0) } else { parse(s) })
        .transpose()
        .map_err(|e| anyhow!("{e}"))
}

/// A `--mount` value, Docker's syntax: `type=bind|volume|tmpfs,source=…,target=…[,readonly]`
/// (`src`, `dst`/`destination`, `ro` too; `readonly=true|false`). Options Shoal does not
/// support (`volume-driver`, `bind-propagation`, `tmpfs-size`, …) are refused by name.
pub fn mount(flag: &str, s: &str) -> Result<crate::api::services::MountBody> {
    let mut kind = None;
    let mut source = String::new();
    let mut target = None;
    let mut read_only = false;
    for field in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
        let (key, value) = match field.split_once('=') {
            Some((k, v)) => (k.trim().to_ascii_lowercase(), Some(v.trim())),
            None => (field.to_ascii_lowercase(), None),
        };
        match (key.as_str(), value) {
            ("type", Some(v)) => kind = Some(v.to_string()),
            ("source" | "src", Some(v)) => source = v.to_string(),
            ("target" | "destination" | "dst", Some(v)) => target = Some(v.to_string()),
            ("readonly" | "ro", None) => read_only = true,
            ("readonly" | "ro", Some(v)) => {
                read_only = match v.to_ascii_lowercase().as_str() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => bail!("invalid --{flag} `{s}`: readonly is true or false, not `{v}`"),
                };
            }
            _ => bail!(
                "invalid --{flag} `{s}`: `{key}` is not supported (type, source, target and readonly are)"
            ),
        }
    }
    let Some(target) = target else {
        bail!("invalid --{flag} `{s}`: a target is required (target=/path/in/the/task)");
    };
    Ok(crate::api::services::MountBody {
        kind: kind.unwrap_or_else(|| "volume".into()),
        source,
        target,
        read_only,
    })
}

/// A `--config` value: `NAME`, or `source=NAME[,target=/path][,uid=N][,gid=N][,mode=0444]`
/// (Docker's syntax).
pub fn config_ref(flag: &str, s: &str) -> Result<crate::api::services::ConfigRefBody> {
    let mut body = crate::api::services::ConfigRefBody {
        name: String::new(),
        id: String::new(),
        target: String::new(),
        uid: 0,
        gid: 0,
        mode: 0o444,
    };
    if !s.contains('=') {
        body.name = s.trim().to_string();
    } else {
        for field in s.split(',').map(str::trim).filter(|f| !f.is_empty()) {
            let Some((k, v)) = field.split_once('=') else {
                bail!("invalid --{flag} `{s}`: `{field}` is not KEY=VALUE");
            };
            let num = |v: &str, radix| {
                u32::from_str_radix(v, radix)
                    .map_err(|_| anyhow::anyhow!("invalid --{flag} `{s}`: {k}={v} is not a number"))
            };
            match k.trim() {
                "source" | "src" => body.name = v.to_string(),
                "target" | "dst" | "destination" => body.target = v.to_string(),
                "uid" => body.uid = num(v, 10)?,
                "gid" => body.gid = num(v, 10)?,
                "mode" => body.mode = num(v, 8)?,
                other => bail!(
                    "invalid --{flag} `{s}`: `{other}` is not supported (source, target, uid, gid and mode are)"
                ),
            }
        }
    }
    if body.name.is_empty() {
        bail!("invalid --{flag} `{s}`: the name is required (source=NAME)");
    }
    Ok(body)
}

/// A `--secret` value: `NAME` (at `/run/secrets/NAME`), or
/// `source=NAME[,target=NAME|/path][,uid=N][,gid=N][,mode=0444]` (Docker's syntax).
pub fn secret_ref(flag: &str, s: &str) -> Result<crate::api::services::SecretRefBody> {
    let c = config_ref(flag, s)?;
    Ok(crate::api::services::SecretRefBody {
        name: c.name,
        id: c.id,
        target: c.target,
        uid: c.uid,
        gid: c.gid,
        mode: c.mode,
    })
}

/// The variables of `--env-file` files, Docker's format: `KEY=VALUE` per line, `#` comments
/// and blank lines skipped, and a lone `KEY` taken from this environment (left out when it is
/// not set there).
pub fn env_file(path: &str) -> Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read --env-file {path}: {e}"))?;
    let mut out = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.insert(k.trim().to_string(), v.to_string());
            }
            Some(_) => bail!(
                "--env-file {path}, line {}: a variable name is missing",
                n + 1
            ),
            None => {
                let k = line.trim();
                if k.contains(char::is_whitespace) {
                    bail!("--env-file {path}, line {}: `{k}` is not KEY=VALUE", n + 1);
                }
                if let Ok(v) = std::env::var(k) {
                    out.insert(k.to_string(), v);
                }
            }
        }
    }
    Ok(out)
}

/// An exposed port, `PORT` or `PORT/tcp` (UDP is not served by name).
pub fn exposed(flag: &str, s: &str) -> Result<u16> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    if !proto.eq_ignore_ascii_case("tcp") {
        bail!("invalid --{flag} `{s}`: only tcp ports can be reached by name");
    }
    match port.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => bail!("invalid --{flag} `{s}`: expected a port 1-65535, e.g. 8080 or 8080/tcp"),
    }
}

/// The request body of `service update` (everything checked that can be checked here).
pub fn body_of(a: &UpdateArgs) -> Result<ServiceUpdateBody> {
    let mut b = ServiceUpdateBody {
        image: a.image.clone(),
        args: a.args.as_deref().map(split_args).transpose()?,
        env_add: pairs(&a.env_add, "env-add")?,
        env_rm: a.env_rm.clone(),
        label_add: pairs(&a.label_add, "label-add")?,
        label_rm: a.label_rm.clone(),
        constraint_add: a.constraint_add.clone(),
        constraint_rm: a.constraint_rm.clone(),
        publish_add: a
            .publish_add
            .iter()
            .map(|p| publish("publish-add", p))
            .collect::<Result<_>>()?,
        publish_rm: a
            .publish_rm
            .iter()
            .map(|p| unpublish(p))
            .collect::<Result<_>>()?,
        replicas: a
            .replicas
            .as_deref()
            .map(|s| count("replicas", s))
            .transpose()?,
        max_replicas_per_node: a
            .replicas_max_per_node
            .as_deref()
            .map(|s| count("replicas-max-per-node", s))
            .transpose()?,
        reserve_memory_bytes: amount(&a.reserve_memory, |s| {
            shoal_scheduler::parse_memory(s).map_err(|e| e.to_string())
        })?,
        reserve_nano_cpus: amount(&a.reserve_cpu, |s| {
            shoal_scheduler::parse_cpus(s).map_err(|e| e.to_string())
        })?,
        limit_memory_bytes: amount(&a.limit_memory, |s| {
            shoal_scheduler::parse_memory(s).map_err(|e| e.to_string())
        })?,
        limit_nano_cpus: amount(&a.limit_cpu, |s| {
            shoal_scheduler::parse_cpus(s).map_err(|e| e.to_string())
        })?,
        restart_condition: a
            .restart_condition
            .as_deref()
            .map(|s| word::<shoal_scheduler::RestartCondition>(s).map(|c| c.as_str().to_string()))
            .transpose()?,
        restart_delay_ms: a
            .restart_delay
            .as_deref()
            .map(|s| duration_ms("restart-delay", s))
            .transpose()?,
        restart_max_attempts: a
            .restart_max_attempts
            .as_deref()
            .map(|s| count("restart-max-attempts", s))
            .transpose()?,
        restart_window_ms: a
            .restart_window
            .as_deref()
            .map(|s| duration_ms("restart-window", s))
            .transpose()?,
        stop_grace_ms: a
            .stop_grace_period
            .as_deref()
            .map(|s| duration_ms("stop-grace-period", s))
            .transpose()?,
        force: a.force,
        endpoint_mode: a.endpoint_mode.clone(),
        mount_add: a
            .mount_add
            .iter()
            .map(|m| mount("mount-add", m))
            .collect::<Result<_>>()?,
        mount_rm: a.mount_rm.clone(),
        user: a.user.clone(),
        workdir: a.workdir.clone(),
        hostname: a.hostname.clone(),
        entrypoint: a.entrypoint.as_deref().map(split_args).transpose()?,
        init: if a.init {
            Some(true)
        } else if a.no_init {
            Some(false)
        } else {
            None
        },
        cap_add: a.cap_add.clone(),
        cap_drop: a.cap_drop.clone(),
        config_add: a
            .config_add
            .iter()
            .map(|c| config_ref("config-add", c))
            .collect::<Result<_>>()?,
        config_rm: a.config_rm.clone(),
        secret_add: a
            .secret_add
            .iter()
            .map(|c| secret_ref("secret-add", c))
            .collect::<Result<_>>()?,
        secret_rm: a.secret_rm.clone(),
        expose_add: a
            .expose_add
            .iter()
            .map(|p| exposed("expose-add", p))
            .collect::<Result<_>>()?,
        expose_rm: a
            .expose_rm
            .iter()
            .map(|p| exposed("expose-rm", p))
            .collect::<Result<_>>()?,
        ..ServiceUpdateBody::default()
    };
    a.health.apply_to_body(&mut b)?;
    (b.update_config, b.rollback_config) = a.settings.patches()?;
    if let Some(image) = &b.image
        && image.trim().is_empty()
    {
        bail!("invalid --image: it may not be empty");
    }
    Ok(b)
}

/// Splits `line` into words as a POSIX shell would (without expansions): blanks separate
/// words, single quotes keep everything literally, double quotes keep everything but `\"`,
/// `\\`, `` \` `` and `\$`, and a backslash outside quotes keeps the next character.
pub fn split_args(line: &str) -> Result<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => cur.push(c),
                        None => bail!("invalid --args: unterminated single quote"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(c @ ('"' | '\\' | '`' | '$')) => cur.push(c),
                            Some('\n') => {}
                            Some(c) => {
                                cur.push('\\');
                                cur.push(c);
                            }
                            None => bail!("invalid --args: unterminated double quote"),
                        },
                        Some(c) => cur.push(c),
                        None => bail!("invalid --args: unterminated double quote"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some('\n') => {}
                    Some(c) => cur.push(c),
                    None => bail!("invalid --args: a trailing backslash escapes nothing"),
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Cmd};
    use clap::Parser;

    fn args(line: &[&str]) -> UpdateArgs {
        let mut argv = vec!["shoal", "service", "update"];
        argv.extend_from_slice(line);
        match Cli::try_parse_from(argv).expect("parses").command {
            Cmd::Service(super::super::ServiceCmd::Update(a)) => *a,
            other => panic!("not an update: {other:?}"),
        }
    }

    fn err(line: &[&str]) -> String {
        let e = body_of(&args(line)).unwrap_err().to_string();
        assert!(!e.contains('\n'), "one line: {e}");
        e
    }

    #[test]
    fn splitter_respects_quotes() {
        let s = |l: &str| split_args(l).unwrap();
        assert_eq!(s("sh -c 'x y'"), ["sh", "-c", "x y"]);
        assert_eq!(s("  a   b  "), ["a", "b"]);
        assert_eq!(
            s(r#"echo "a \"b\" $c" d\ e"#),
            ["echo", r#"a "b" $c"#, "d e"]
        );
        assert_eq!(s("a''b '' \"\""), ["ab", "", ""]);
        assert_eq!(s(r#""it's" 'say "hi"'"#), ["it's", r#"say "hi""#]);
        assert_eq!(s(r#""a\nb""#), [r"a\nb"]);
        assert!(s("").is_empty());
        assert!(split_args("'open").is_err());
        assert!(split_args("\"open").is_err());
        assert!(split_args("x\\").is_err());
    }

    #[test]
    fn flags_become_the_body() {
        let b = body_of(&args(&[
            "--image",
            "/bin/true",
            "--args",
            "sh -c 'sleep 1'",
            "--env-add",
            "A=1",
            "--env-rm",
            "B",
            "--label-add",
            "x=y",
            "--constraint-rm",
            "node.role==manager",
            "--force",
            "--update-parallelism",
            "2",
            "--update-delay",
            "1m",
            "--update-monitor",
            "500ms",
            "--update-order",
            "start-first",
            "--update-failure-action",
            "rollback",
            "--update-max-failure-ratio",
            "0.25",
            "--rollback-failure-action",
            "continue",
            "--health-cmd",
            "true",
            "--health-retries",
            "5",
            "--stop-grace-period",
            "3s",
            "web",
        ]))
        .unwrap();
        assert_eq!(b.image.as_deref(), Some("/bin/true"));
        assert_eq!(
            b.args,
            Some(vec!["sh".into(), "-c".into(), "sleep 1".into()])
        );
        assert_eq!(b.env_add["A"], "1");
        assert_eq!(b.env_rm, ["B"]);
        assert_eq!(b.label_add["x"], "y");
        assert_eq!(b.constraint_rm, ["node.role==manager"]);
        assert!(b.force);
        let u = b.update_config;
        assert_eq!(u.parallelism, Some(2));
        assert_eq!(u.delay_ms, Some(60_000));
        assert_eq!(u.monitor_ms, Some(500));
        assert_eq!(u.order, Some(UpdateOrder::StartFirst));
        assert_eq!(u.failure_action, Some(FailureAction::Rollback));
        assert_eq!(u.max_failure_ratio_ppm, Some(250_000));
        assert_eq!(
            b.rollback_config.failure_action,
            Some(FailureAction::Continue)
        );
        assert_eq!(b.rollback_config.parallelism, None);
        assert_eq!(b.health_cmd.as_deref(), Some("true"));
        assert_eq!(b.health_retries, Some(5));
        assert_eq!(b.stop_grace_ms, Some(3_000));
        assert_eq!(b.replicas, None);
    }

    #[test]
    fn bad_flags_are_one_line_errors() {
        assert_eq!(
            err(&["--update-parallelism", "-1", "web"]),
            "invalid --update-parallelism `-1`: expected a whole number, 0 or more"
        );
        assert_eq!(
            err(&["--update-parallelism=x", "web"]),
            "invalid --update-parallelism `x`: expected a whole number, 0 or more"
        );
        assert_eq!(
            err(&["--update-max-failure-ratio", "1.5", "web"]),
            "invalid --update-max-failure-ratio `1.5`: expected a number between 0 and 1"
        );
        assert!(err(&["--rollback-max-failure-ratio", "-0.1", "web"]).contains("between 0 and 1"));
        assert!(err(&["--update-delay", "soon", "web"]).contains("--update-delay `soon`"));
        assert!(err(&["--update-monitor", "-5s", "web"]).contains("--update-monitor"));
        assert_eq!(
            err(&["--update-order", "whenever", "web"]),
            "invalid update order `whenever`: expected stop-first or start-first"
        );
        assert!(err(&["--update-failure-action", "panic", "web"]).contains("pause, continue"));
        assert!(
            err(&["--rollback-failure-action", "rollback", "web"]).contains("pause or continue")
        );
        assert!(err(&["--replicas", "-2", "web"]).contains("--replicas `-2`"));
        assert!(err(&["--env-add", "A", "web"]).contains("KEY=VALUE"));
        assert!(err(&["--restart-condition", "sometimes", "web"]).contains("restart condition"));
        assert!(err(&["--health-retries", "-1", "web"]).contains("--health-retries"));
        assert!(err(&["--no-healthcheck", "--health-cmd", "true", "web"]).contains("conflicts"));
        assert!(err(&["--args", "sh -c 'x", "web"]).contains("unterminated"));
        assert!(err(&["--limit-memory", "lots", "web"]).contains("lots"));
        // Zero is a value, not an error.
        let b = body_of(&args(&[
            "--update-delay",
            "0",
            "--update-parallelism",
            "0",
            "web",
        ]))
        .unwrap();
        assert_eq!(b.update_config.delay_ms, Some(0));
        assert_eq!(b.update_config.parallelism, Some(0));
    }

    /// `--publish-add` takes both forms; `--publish-rm` a published port or
    /// `PUBLISHED:TARGET`; bad values are usage errors.
    #[test]
    fn publish_add_and_rm_become_the_body() {
        let b = body_of(&args(&[
            "--publish-add",
            "8080:80",
            "--publish-add",
            "published=9000,target=90,mode=host",
            "--publish-rm",
            "8443",
            "--publish-rm",
            "7000:70/tcp",
            "web",
        ]))
        .unwrap();
        assert_eq!(
            b.publish_add
                .iter()
                .map(|p| (p.published, p.target, p.mode.as_str()))
                .collect::<Vec<_>>(),
            [(8080, 80, "ingress"), (9000, 90, "host")]
        );
        assert_eq!(b.publish_rm, [8443, 7000]);
        let none = body_of(&args(&["--image", "x", "web"])).unwrap();
        assert!(none.publish_add.is_empty() && none.publish_rm.is_empty());

        for (flags, needle) in [
            (
                ["--publish-add", "53:53/udp"],
                "the routing mesh carries TCP only",
            ),
            (
                ["--publish-add", "0:80"],
                "invalid port 0: ports are 1-65535",
            ),
            (["--publish-add", "80"], "expected PUBLISHED:TARGET"),
            (["--publish-rm", "0"], "invalid port 0"),
            (["--publish-rm", "http"], "invalid port `http`"),
            (["--publish-rm", "8080:99999"], "ports are 1-65535"),
            (["--publish-rm", "-1"], "invalid port `-1`"),
        ] {
            let e = body_of(&args(&[flags[0], flags[1], "web"])).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.contains(needle) && !msg.contains('\n'),
                "{flags:?}: {msg}"
            );
            assert!(
                e.downcast_ref::<crate::cli::UsageError>().is_some(),
                "{flags:?}: not a usage error"
            );
        }
    }

    #[test]
    fn create_flags_fill_the_spec() {
        let mut spec = ServiceSpecBody::new("web", "img");
        let flags = UpdateSettingsFlags {
            update_parallelism: Some("3".into()),
            update_failure_action: Some("continue".into()),
            rollback_monitor: Some("2s".into()),
            ..UpdateSettingsFlags::default()
        };
        flags.apply_to_spec(&mut spec).unwrap();
        assert_eq!(spec.update_config.parallelism, 3);
        assert_eq!(spec.update_config.failure_action, FailureAction::Continue);
        assert_eq!(spec.update_config.monitor_ms, 5_000);
        assert_eq!(spec.rollback_config.monitor_ms, 2_000);
        let health = HealthFlags {
            health_cmd: Some("curl -f localhost".into()),
            health_interval: Some("2s".into()),
            ..HealthFlags::default()
        };
        health.apply_to_spec(&mut spec).unwrap();
        let h = spec.health_check.clone().unwrap();
        assert_eq!((h.interval_ms, h.retries), (2_000, 3));
        let lonely = HealthFlags {
            health_timeout: Some("2s".into()),
            ..HealthFlags::default()
        };
        assert!(lonely.apply_to_spec(&mut spec).is_err());
    }

    /// Issue 23: `--mount` takes Docker's syntax, its aliases and a bare `readonly`, and names
    /// what it does not support.
    #[test]
    fn issue_23_mount_flags_take_dockers_syntax() {
        let m = mount("mount", "type=bind,src=/srv/www,dst=/www,ro").unwrap();
        assert_eq!(
            (
                m.kind.as_str(),
                m.source.as_str(),
                m.target.as_str(),
                m.read_only
            ),
            ("bind", "/srv/www", "/www", true)
        );
        let m = mount("mount", "source=data,target=/data,readonly=false").unwrap();
        assert_eq!((m.kind.as_str(), m.read_only), ("volume", false));
        let m = mount("mount", "type=tmpfs,destination=/run/x").unwrap();
        assert_eq!((m.kind.as_str(), m.source.as_str()), ("tmpfs", ""));
        let e = mount("mount", "type=bind,source=/a")
            .unwrap_err()
            .to_string();
        assert!(e.contains("a target is required"), "{e}");
        let e = mount("mount", "type=tmpfs,target=/t,tmpfs-size=64m")
            .unwrap_err()
            .to_string();
        assert!(e.contains("`tmpfs-size` is not supported"), "{e}");
        let e = mount("mount-add", "target=/t,readonly=maybe")
            .unwrap_err()
            .to_string();
        assert!(e.contains("--mount-add") && e.contains("maybe"), "{e}");
    }

    /// Issue 23: `--env-file` reads Docker's format: comments and blank lines skipped, a lone
    /// name taken from this environment, a line without a name refused with its number.
    #[test]
    fn issue_23_env_file_reads_dockers_format() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("env");
        // PATH is set in every test environment.
        std::fs::write(
            &path,
            "# db\nDB_USER=app\n\n  DB_URL=postgres://db/x?a=b\nPATH\nSHOAL_UNSET_VAR_FOR_TEST\n",
        )
        .unwrap();
        let env = env_file(path.to_str().unwrap()).unwrap();
        assert_eq!(env.get("DB_USER").map(String::as_str), Some("app"));
        assert_eq!(
            env.get("DB_URL").map(String::as_str),
            Some("postgres://db/x?a=b")
        );
        assert_eq!(env.get("PATH"), std::env::var("PATH").ok().as_ref());
        assert!(!env.contains_key("SHOAL_UNSET_VAR_FOR_TEST"));
        std::fs::write(&path, "A=1\n=2\n").unwrap();
        let e = env_file(path.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let e = env_file("/nonexistent/env").unwrap_err().to_string();
        assert!(e.contains("cannot read --env-file /nonexistent/env"), "{e}");
    }
}
