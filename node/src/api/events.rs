//! `GET /v1/events`: the cluster events a manager derived from its applied Raft log, one
//! JSON object per line ([`EventView`]), and the filters both the CLI and the daemon parse
//! ([`EventFilters`]).
//!
//! Query: `since` and `until` in milliseconds since the Unix epoch, `filters` as
//! `KEY=VALUE` pairs separated by `,` (`type=service,name=web`). Values of one key are
//! alternatives; different keys must all match (Docker's rule).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Who an event is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventActor {
    /// Node, service or task ID (the leader's node ID for `cluster leader`, the cluster ID
    /// for other cluster events).
    pub id: String,
    /// `name` and what else describes the change (`replicas.new`, `state`, `node`, …).
    pub attributes: BTreeMap<String, String>,
}

/// One cluster event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventView {
    /// RFC 3339 with milliseconds.
    pub time: String,
    /// Milliseconds since the Unix epoch: the time inside the Raft command (the proposer's
    /// clock), never the applying manager's.
    pub time_ms: u64,
    /// `node`, `service`, `task` or `cluster`.
    #[serde(rename = "type")]
    pub kind: String,
    /// What happened (`create`, `scale`, `down`, `running`, `leader`, …).
    pub action: String,
    /// Who it happened to.
    pub actor: EventActor,
    /// The Raft log index of the entry that caused it.
    pub index: u64,
}

impl EventView {
    /// Docker's one-line form: `TIME TYPE ACTION ID (k=v, …)`.
    pub fn line(&self) -> String {
        let attrs: Vec<String> = self
            .actor
            .attributes
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        format!(
            "{} {} {} {} ({})",
            self.time,
            self.kind,
            self.action,
            self.actor.id,
            attrs.join(", ")
        )
    }
}

/// The event types.
pub const EVENT_TYPES: [&str; 4] = ["node", "service", "task", "cluster"];

/// The filter keys `shoal events --filter` knows.
pub const FILTER_KEYS: [&str; 6] = ["type", "action", "id", "name", "service", "node"];

/// Parsed `--filter KEY=VALUE` arguments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilters {
    by_key: BTreeMap<String, Vec<String>>,
}

impl EventFilters {
    /// Parses `KEY=VALUE` items; an unknown key, a missing `=`, an empty value or an unknown
    /// type is a one-line error.
    pub fn parse<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Self, String> {
        let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for item in items {
            let Some((k, v)) = item.split_once('=') else {
                return Err(format!(
                    "bad filter `{item}`: expected KEY=VALUE, e.g. type=service"
                ));
            };
            let k = k.trim().to_ascii_lowercase();
            let v = v.trim();
            if !FILTER_KEYS.contains(&k.as_str()) {
                return Err(format!(
                    "unknown filter `{k}`: use one of {}",
                    FILTER_KEYS.join(", ")
                ));
            }
            if v.is_empty() || v.contains(',') {
                return Err(format!(
                    "bad filter `{item}`: the value must be one non-empty word without commas"
                ));
            }
            if k == "type" && !EVENT_TYPES.contains(&v) {
                return Err(format!(
                    "unknown event type `{v}`: use one of {}",
                    EVENT_TYPES.join(", ")
                ));
            }
            by_key.entry(k).or_default().push(v.to_string());
        }
        Ok(EventFilters { by_key })
    }

    /// The `filters` query value (empty when there is none).
    pub fn to_query(&self) -> String {
        let mut out = Vec::new();
        for (k, vs) in &self.by_key {
            for v in vs {
                out.push(format!("{k}={v}"));
            }
        }
        out.join(",")
    }

    /// Parses the `filters` query value.
    pub fn from_query(q: &str) -> Result<Self, String> {
        Self::parse(q.split(',').filter(|s| !s.is_empty()))
    }

    /// Whether `e` passes every key.
    pub fn matches(&self, e: &EventView) -> bool {
        self.by_key.iter().all(|(k, vs)| {
            vs.iter().any(|v| {
                let attr = |name: &str| e.actor.attributes.get(name).map(String::as_str);
                match k.as_str() {
                    "type" => e.kind == *v,
                    "action" => e.action == *v,
                    "id" => e.actor.id.starts_with(v.as_str()),
                    "name" => attr("name") == Some(v),
                    "service" => {
                        (e.kind == "service"
                            && (e.actor.id.starts_with(v.as_str()) || attr("name") == Some(v)))
                            || attr("service") == Some(v)
                            || attr("service_id").is_some_and(|s| s.starts_with(v.as_str()))
                    }
                    "node" => {
                        (e.kind == "node"
                            && (e.actor.id.starts_with(v.as_str()) || attr("name") == Some(v)))
                            || attr("node").is_some_and(|s| s.starts_with(v.as_str()))
                    }
                    _ => false,
                }
            })
        })
    }
}

/// The query of `GET /v1/events`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventQuery {
    /// Kept events from this time on (ms) come first; without it, only new ones.
    pub since: Option<u64>,
    /// The stream ends once this time (ms) has passed; without it, it stays open.
    pub until: Option<u64>,
    /// Which events.
    pub filters: EventFilters,
}

impl EventQuery {
    /// Parses the query parameters `since`, `until` (ms) and `filters`.
    pub fn from_params(params: &BTreeMap<String, String>) -> Result<Self, String> {
        let ms = |name: &str| -> Result<Option<u64>, String> {
            match params.get(name).map(String::as_str) {
                None | Some("") => Ok(None),
                Some(v) => v.parse().map(Some).map_err(|_| {
                    format!("bad `{name}` value `{v}`: expected milliseconds since the Unix epoch")
                }),
            }
        };
        Ok(EventQuery {
            since: ms("since")?,
            until: ms("until")?,
            filters: EventFilters::from_query(
                params.get("filters").map(String::as_str).unwrap_or(""),
            )?,
        })
    }

    /// The request path with this query.
    pub fn path(&self) -> String {
        let mut q = Vec::new();
        if let Some(s) = self.since {
            q.push(format!("since={s}"));
        }
        if let Some(u) = self.until {
            q.push(format!("until={u}"));
        }
        let f = self.filters.to_query();
        if !f.is_empty() {
            q.push(format!("filters={}", percent_encode(&f)));
        }
        if q.is_empty() {
            "/v1/events".into()
        } else {
            format!("/v1/events?{}", q.join("&"))
        }
    }
}

/// Escapes everything but unreserved characters.
fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: &str, action: &str, id: &str, attrs: &[(&str, &str)]) -> EventView {
        EventView {
            time: String::new(),
            time_ms: 0,
            kind: kind.into(),
            action: action.into(),
            actor: EventActor {
                id: id.into(),
                attributes: attrs
                    .iter()
                    .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
                    .collect(),
            },
            index: 1,
        }
    }

    #[test]
    fn filters_parse_and_match() {
        let f = EventFilters::parse(["type=service", "type=task", "name=web.1"]).unwrap();
        assert_eq!(EventFilters::from_query(&f.to_query()).unwrap(), f);
        assert!(f.matches(&ev("task", "running", "t1", &[("name", "web.1")])));
        assert!(!f.matches(&ev("node", "down", "n1", &[("name", "web.1")])));
        assert!(!f.matches(&ev("task", "running", "t1", &[("name", "web.2")])));
        let s = EventFilters::parse(["service=web"]).unwrap();
        assert!(s.matches(&ev("service", "scale", "s1", &[("name", "web")])));
        assert!(s.matches(&ev("task", "create", "t1", &[("service", "web")])));
        assert!(!s.matches(&ev("node", "ready", "n1", &[("name", "web")])));
        assert!(
            EventFilters::parse([])
                .unwrap()
                .matches(&ev("node", "x", "n", &[]))
        );
    }

    #[test]
    fn query_round_trips() {
        let q = EventQuery {
            since: Some(5),
            until: None,
            filters: EventFilters::parse(["type=task", "name=web.1"]).unwrap(),
        };
        let path = q.path();
        let (_, query) = path.split_once('?').unwrap();
        let params: BTreeMap<String, String> = query
            .split('&')
            .map(|p| {
                let (k, v) = p.split_once('=').unwrap();
                (k.to_string(), crate::api::server::percent_decode(v))
            })
            .collect();
        assert_eq!(EventQuery::from_params(&params).unwrap(), q);
        let mut bad = BTreeMap::new();
        bad.insert("since".to_string(), "yesterday".to_string());
        assert!(EventQuery::from_params(&bad).is_err());
    }

    #[test]
    fn bad_filters_are_one_line_errors() {
        for bad in ["type", "type=bogus", "colour=red", "name=", "name=a,b"] {
            let e = EventFilters::parse([bad]).unwrap_err();
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
