//! `shoal events`: the cluster events of the manager the CLI talks to, as `docker events`
//! prints them (one line each) or as JSON lines.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Result;
use hyper::Method;

use super::{Format, usage};
use crate::api::client::Client;
use crate::api::events::{EventFilters, EventQuery, EventView};

/// `shoal events` flags.
#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Show kept events from this time on: RFC 3339, Unix seconds, or a duration ago (10m).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Stop at this time (same forms); without it the stream stays open.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Only events matching KEY=VALUE (type=node|service|task|cluster, action, id, name,
    /// service, node); repeat for more.
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
    /// Output format: one line per event (table), JSON lines (json), or a Go template
    /// applied to each event's JSON (`{{.type}} {{.action}} {{.actor.id}}`).
    #[arg(long, default_value = "table")]
    pub format: Format,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Parses `--since`/`--until`: RFC 3339, Unix seconds (with a fraction), or a duration
/// before `now` (ms).
pub fn parse_time(s: &str, now: u64) -> Result<u64, String> {
    let s = s.trim();
    if let Ok(t) = humantime::parse_rfc3339_weak(s) {
        return Ok(t
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)));
    }
    if let Ok(secs) = s.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Ok((secs * 1000.0) as u64);
    }
    if let Ok(d) = humantime::parse_duration(s) {
        let ago = u64::try_from(Duration::as_millis(&d)).unwrap_or(u64::MAX);
        return Ok(now.saturating_sub(ago));
    }
    Err(format!(
        "bad time `{s}`: use RFC 3339 (2026-12-01T04:00:00Z), Unix seconds, or a duration ago (10m)"
    ))
}

pub(super) async fn run(client: &Client, args: EventsArgs) -> Result<()> {
    let now = now_ms();
    let time = |flag: &str, v: &Option<String>| -> Result<Option<u64>> {
        v.as_deref()
            .map(|s| parse_time(s, now))
            .transpose()
            .map_err(|e| usage(anyhow::anyhow!("--{flag}: {e}")))
    };
    let since = time("since", &args.since)?;
    let until = time("until", &args.until)?;
    let filters =
        EventFilters::parse(args.filter.iter().map(String::as_str)).map_err(anyhow::Error::msg)?;
    let query = EventQuery {
        since,
        until,
        filters,
    };
    let template = match &args.format {
        Format::Template(text) => Some(super::listing::Template::parse(text)?),
        _ => None,
    };
    let mut failure: Option<String> = None;
    client
        .stream::<()>(
            Method::GET,
            &query.path(),
            None,
            |value| match serde_json::from_value::<EventView>(value.clone()) {
                Ok(e) => {
                    match &template {
                        Some(t) => match t.render(&value) {
                            Ok(line) => println!("{line}"),
                            Err(err) => {
                                failure = Some(err.to_string());
                                return false;
                            }
                        },
                        None if args.format == Format::Json => println!("{value}"),
                        None => println!("{}", e.line()),
                    }
                    true
                }
                Err(_) => {
                    failure = Some(
                        value
                            .get("message")
                            .and_then(|m| m.as_str())
                            .unwrap_or("the daemon sent an event this shoal cannot read")
                            .to_string(),
                    );
                    false
                }
            },
        )
        .await?;
    match failure {
        Some(m) => Err(anyhow::Error::msg(m)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_three_forms() {
        let now = 1_800_000_000_000;
        assert_eq!(parse_time("10m", now), Ok(now - 600_000));
        assert_eq!(parse_time("1700000000.5", now), Ok(1_700_000_000_500));
        assert_eq!(
            parse_time("2026-12-01T04:00:00.123Z", now),
            Ok(1_796_097_600_123)
        );
        assert!(parse_time("yesterday", now).is_err());
    }
}
