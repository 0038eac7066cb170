//! Docker's habits on listings: `--filter KEY=VALUE`, Go-template `--format` strings (with
//! the `gtmpl` crate), `table` templates, and Docker's relative times ("5 seconds ago").

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use anyhow::{Result, bail};
use serde_json::Value as Json;

/// `--filter KEY=VALUE` flags: values of one key OR, different keys AND, as Docker's.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Filters(BTreeMap<String, Vec<String>>);

impl Filters {
    /// Parses `items` (KEY=VALUE each), accepting only `keys`.
    pub fn parse(items: &[String], keys: &[&str]) -> Result<Filters> {
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for item in items {
            let Some((k, v)) = item.split_once('=') else {
                bail!(
                    "invalid filter `{item}`: expected KEY=VALUE (keys: {})",
                    keys.join(", ")
                );
            };
            let k = k.trim().to_ascii_lowercase();
            if !keys.contains(&k.as_str()) {
                bail!("invalid filter key `{k}`: use one of {}", keys.join(", "));
            }
            out.entry(k).or_default().push(v.to_string());
        }
        Ok(Filters(out))
    }

    /// Whether a row passes: for every key given, `matches(key, value)` holds for one of
    /// its values.
    pub fn keep(&self, matches: impl Fn(&str, &str) -> bool) -> bool {
        self.0
            .iter()
            .all(|(k, values)| values.iter().any(|v| matches(k, v)))
    }
}

/// `label=KEY` or `label=KEY=VALUE` against `labels`.
pub fn label_matches(labels: &BTreeMap<String, String>, wanted: &str) -> bool {
    match wanted.split_once('=') {
        Some((k, v)) => labels.get(k).is_some_and(|have| have == v),
        None => labels.contains_key(wanted),
    }
}

/// Output format of listings and inspections.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Format {
    /// Human-readable table or text.
    #[default]
    Table,
    /// JSON: an array for listings and inspect, an object for info.
    Json,
    /// A Go template (`{{.ID}} {{.Name}}`); `table ...` prints a header and aligns columns.
    Template(String),
}

impl std::str::FromStr for Format {
    type Err = String;

    /// `table`, `json`, or a template: text with `{{` in it (so a typo such as `yaml` is a
    /// usage error, not a template that prints `yaml` on every line).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "table" | "" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            t if t.contains("{{") => Ok(Format::Template(t.to_string())),
            t => Err(format!(
                "unknown format `{t}`: use table, json or a Go template such as '{{{{.ID}}}}'"
            )),
        }
    }
}

/// Converts JSON to a template value.
fn to_value(v: &Json) -> gtmpl::Value {
    match v {
        Json::Null => gtmpl::Value::Nil,
        Json::Bool(b) => (*b).into(),
        Json::Number(n) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u.into(),
            (None, Some(i)) => i.into(),
            _ => n.as_f64().unwrap_or_default().into(),
        },
        Json::String(s) => s.clone().into(),
        Json::Array(a) => gtmpl::Value::Array(a.iter().map(to_value).collect()),
        Json::Object(o) => {
            gtmpl::Value::Object(o.iter().map(|(k, v)| (k.clone(), to_value(v))).collect())
        }
    }
}

/// Converts a template value back to JSON (for `{{json .}}`).
fn to_json(v: &gtmpl::Value) -> Json {
    match v {
        gtmpl::Value::NoValue | gtmpl::Value::Nil | gtmpl::Value::Function(_) => Json::Null,
        gtmpl::Value::Bool(b) => Json::Bool(*b),
        gtmpl::Value::String(s) => Json::String(s.clone()),
        gtmpl::Value::Number(n) => match (n.as_u64(), n.as_i64(), n.as_f64()) {
            (Some(u), _, _) => u.into(),
            (None, Some(i), _) => i.into(),
            (None, None, f) => f.unwrap_or_default().into(),
        },
        gtmpl::Value::Array(a) => Json::Array(a.iter().map(to_json).collect()),
        gtmpl::Value::Object(o) | gtmpl::Value::Map(o) => {
            let sorted: BTreeMap<&String, Json> = o.iter().map(|(k, v)| (k, to_json(v))).collect();
            Json::Object(sorted.into_iter().map(|(k, v)| (k.clone(), v)).collect())
        }
    }
}

/// The template function `json`, as Docker's.
fn json_func(args: &[gtmpl::Value]) -> Result<gtmpl::Value, gtmpl::FuncError> {
    let [arg] = args else {
        return Err(gtmpl::FuncError::ExactlyXArgs("json".into(), 1));
    };
    serde_json::to_string(&to_json(arg))
        .map(gtmpl::Value::from)
        .map_err(|e| gtmpl::FuncError::Generic(e.to_string()))
}

/// One line of an error: templates' errors may span lines.
fn one_line(e: impl std::fmt::Display) -> String {
    e.to_string()
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// A parsed `--format` template.
pub struct Template {
    inner: gtmpl::Template,
    table: bool,
}

impl Template {
    /// Parses `text`: `table ` in front asks for a header and aligned columns; `\t` and
    /// `\n` written as two characters are a tab and a newline, as Docker's.
    pub fn parse(text: &str) -> Result<Template> {
        let (table, body) = match text.strip_prefix("table") {
            Some(rest) if rest.is_empty() || rest.starts_with(char::is_whitespace) => {
                (true, rest.trim_start())
            }
            _ => (false, text),
        };
        let body = body.replace("\\t", "\t").replace("\\n", "\n");
        let mut inner = gtmpl::Template::default();
        inner.add_func("json", json_func);
        inner
            .parse(body)
            .map_err(|e| anyhow::anyhow!("invalid --format template `{text}`: {}", one_line(e)))?;
        Ok(Template { inner, table })
    }

    /// Renders the template for one value.
    pub fn render(&self, value: &Json) -> Result<String> {
        self.inner
            .render(&gtmpl::Context::from(to_value(value)))
            .map_err(|e| anyhow::anyhow!("cannot apply the --format template: {}", one_line(e)))
    }

    /// Renders every row (and, for a `table` template, the header rendered from `header`),
    /// one line each; a table's tab-separated cells are aligned as Docker's.
    pub fn render_all(&self, rows: &[Json], header: &Json) -> Result<String> {
        let mut lines = Vec::new();
        if self.table {
            lines.push(self.render(header)?);
        }
        for r in rows {
            lines.push(self.render(r)?);
        }
        if !self.table {
            return Ok(lines.iter().map(|l| format!("{l}\n")).collect());
        }
        let cells: Vec<Vec<&str>> = lines.iter().map(|l| l.split('\t').collect()).collect();
        let mut widths: Vec<usize> = Vec::new();
        for row in &cells {
            for (i, c) in row.iter().enumerate() {
                if widths.len() <= i {
                    widths.push(0);
                }
                widths[i] = widths[i].max(c.chars().count());
            }
        }
        let mut out = String::new();
        for row in &cells {
            let mut l = String::new();
            for (i, c) in row.iter().enumerate() {
                l.push_str(c);
                if i + 1 < row.len() {
                    let pad = widths[i] - c.chars().count() + 3;
                    l.extend(std::iter::repeat_n(' ', pad));
                }
            }
            out.push_str(l.trim_end());
            out.push('\n');
        }
        Ok(out)
    }
}

/// Prints `rows` (Docker-named objects) with a template `text`; `header` maps each field
/// to its column title.
pub fn print_template(text: &str, rows: &[Json], header: &Json) -> Result<()> {
    let t = Template::parse(text)?;
    print!("{}", t.render_all(rows, header)?);
    Ok(())
}

/// Docker's human duration ("Less than a second", "5 seconds", "About a minute", ...).
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let mins = secs / 60;
    let hours = (d.as_secs_f64() / 3600.0).round() as u64;
    match () {
        _ if secs < 1 => "Less than a second".into(),
        _ if secs == 1 => "1 second".into(),
        _ if secs < 60 => format!("{secs} seconds"),
        _ if mins == 1 => "About a minute".into(),
        _ if mins < 60 => format!("{mins} minutes"),
        _ if hours == 1 => "About an hour".into(),
        _ if hours < 48 => format!("{hours} hours"),
        _ if hours < 24 * 7 * 2 => format!("{} days", hours / 24),
        _ if hours < 24 * 30 * 2 => format!("{} weeks", hours / 24 / 7),
        _ if hours < 24 * 365 * 2 => format!("{} months", hours / 24 / 30),
        _ => format!("{} years", hours / 24 / 365),
    }
}

/// "Running 5 seconds ago" for a task in `state` since the RFC 3339 time `since`; the
/// bare state when the time cannot be read.
pub fn state_since(state: &str, since: &str, now: SystemTime) -> String {
    let word = title(state);
    match humantime::parse_rfc3339_weak(since.trim_end_matches('Z'))
        .or_else(|_| humantime::parse_rfc3339(since))
    {
        Ok(t) => {
            let ago = now.duration_since(t).unwrap_or_default();
            format!("{word} {} ago", human_duration(ago).to_lowercase())
        }
        Err(_) => word,
    }
}

/// `running` → `Running`.
pub fn title(word: &str) -> String {
    let mut c = word.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn f(items: &[&str]) -> Result<Filters> {
        let items: Vec<String> = items.iter().map(|s| s.to_string()).collect();
        Filters::parse(&items, &["id", "name", "label"])
    }

    #[test]
    fn same_key_ors_different_keys_and() {
        let fl = f(&["name=web", "name=api", "id=ab"]).unwrap();
        let row = |id: &str, name: &str| {
            fl.keep(|k, v| match k {
                "id" => id.starts_with(v),
                "name" => name == v,
                _ => false,
            })
        };
        assert!(row("abc", "web"));
        assert!(row("abd", "api"));
        assert!(!row("abc", "db"));
        assert!(!row("xyz", "web"));
        assert!(f(&[]).unwrap().keep(|_, _| false));
    }

    #[test]
    fn bad_filters_are_one_line_errors() {
        let e = f(&["color=red"]).unwrap_err().to_string();
        assert!(e.contains("invalid filter key `color`") && e.contains("id, name, label"));
        let e = f(&["name"]).unwrap_err().to_string();
        assert!(e.contains("expected KEY=VALUE") && !e.contains('\n'));
    }

    #[test]
    fn labels_match_by_key_or_pair() {
        let labels = BTreeMap::from([("zone".to_string(), "attic".to_string())]);
        assert!(label_matches(&labels, "zone"));
        assert!(label_matches(&labels, "zone=attic"));
        assert!(!label_matches(&labels, "zone=cellar"));
        assert!(!label_matches(&labels, "rack"));
    }

    #[test]
    fn formats_parse() {
        assert_eq!("json".parse::<Format>().unwrap(), Format::Json);
        assert_eq!("table".parse::<Format>().unwrap(), Format::Table);
        assert_eq!(
            "{{.ID}}".parse::<Format>().unwrap(),
            Format::Template("{{.ID}}".into())
        );
        let e = "yaml".parse::<Format>().unwrap_err();
        assert!(
            e.contains("unknown format `yaml`") && e.contains("'{{.ID}}'"),
            "{e}"
        );
    }

    #[test]
    fn templates_render_fields_json_and_tables() {
        let rows = [
            json!({"ID": "a1", "Name": "web", "Replicas": "1/1"}),
            json!({"ID": "b22", "Name": "api", "Replicas": "0/3"}),
        ];
        let header = json!({"ID": "ID", "Name": "NAME", "Replicas": "REPLICAS"});
        let t = Template::parse("{{.ID}} {{.Name}}").unwrap();
        assert_eq!(t.render_all(&rows, &header).unwrap(), "a1 web\nb22 api\n");
        let t = Template::parse("table {{.ID}}\\t{{.Name}}").unwrap();
        assert_eq!(
            t.render_all(&rows, &header).unwrap(),
            "ID    NAME\na1    web\nb22   api\n"
        );
        let t = Template::parse("{{json .}}").unwrap();
        assert_eq!(
            t.render(&rows[0]).unwrap(),
            r#"{"ID":"a1","Name":"web","Replicas":"1/1"}"#
        );
        let t = Template::parse("{{json .Name}}").unwrap();
        assert_eq!(t.render(&rows[1]).unwrap(), r#""api""#);
    }

    #[test]
    fn malformed_templates_are_one_line_errors() {
        for bad in ["{{.ID", "{{if}}", "{{.ID}} {{end}}", "{{nosuchfunc .}}"] {
            let e = Template::parse(bad).map(|_| ()).unwrap_err().to_string();
            assert!(
                e.starts_with("invalid --format template") && !e.contains('\n'),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn durations_read_as_docker() {
        let s = Duration::from_secs;
        assert_eq!(
            human_duration(Duration::from_millis(300)),
            "Less than a second"
        );
        assert_eq!(human_duration(s(1)), "1 second");
        assert_eq!(human_duration(s(5)), "5 seconds");
        assert_eq!(human_duration(s(60)), "About a minute");
        assert_eq!(human_duration(s(119)), "About a minute");
        assert_eq!(human_duration(s(120)), "2 minutes");
        assert_eq!(human_duration(s(3600)), "About an hour");
        assert_eq!(human_duration(s(3 * 3600)), "3 hours");
        assert_eq!(human_duration(s(3 * 86_400)), "3 days");
        assert_eq!(human_duration(s(21 * 86_400)), "3 weeks");
        assert_eq!(human_duration(s(90 * 86_400)), "3 months");
        assert_eq!(human_duration(s(3 * 365 * 86_400)), "3 years");
    }

    #[test]
    fn states_read_with_their_age() {
        let now = humantime::parse_rfc3339("2026-01-01T00:01:00Z").unwrap();
        assert_eq!(
            state_since("running", "2026-01-01T00:00:55Z", now),
            "Running 5 seconds ago"
        );
        assert_eq!(
            state_since("shutdown", "2025-12-31T23:59:50.250Z", now),
            "Shutdown about a minute ago"
        );
        assert_eq!(state_since("pending", "garbage", now), "Pending");
    }
}
