//! `shoal service logs`: the merged output of a service's tasks (or of one task), prefixed
//! as Docker prefixes it (`web.2.abc123def456@node-2    | line`).

use std::io::Write;

use anyhow::{Context, Result};

use super::super::node::encode;
use crate::api::LogEntry;
use crate::api::client::Client;

/// `service logs` flags.
#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Keep streaming new output (also from tasks that start later) until Ctrl-C.
    #[arg(short, long)]
    pub follow: bool,
    /// Only the last N lines of each task (`all`: everything).
    #[arg(long, value_name = "N", default_value = "all")]
    pub tail: String,
    /// Only lines since a time: a duration ago (10m, 1h30m) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Show each line's time (RFC 3339 with nanoseconds).
    #[arg(short, long)]
    pub timestamps: bool,
    /// Print the lines only, without prefixes.
    #[arg(long)]
    pub raw: bool,
    /// Leave the task IDs out of the prefixes.
    #[arg(long)]
    pub no_task_ids: bool,
    /// ID, unique ID prefix or name of a service, or a task ID (or unique prefix).
    pub service: String,
}

/// The prefix of `e`: `name.task-id@node`, or `name@node` without task IDs.
fn prefix(e: &LogEntry, task_ids: bool) -> String {
    let task: String = e.task_id.chars().take(12).collect();
    if task_ids {
        format!("{}.{task}@{}", e.name, e.node)
    } else {
        format!("{}@{}", e.name, e.node)
    }
}

/// One printed line; `width` pads prefixes so the bars align.
fn render(e: &LogEntry, args: &LogsArgs, width: usize) -> String {
    let time = if args.timestamps {
        format!("{} ", e.timestamp)
    } else {
        String::new()
    };
    if args.raw {
        return format!("{time}{}", e.line);
    }
    let p = prefix(e, !args.no_task_ids);
    format!("{p:<width$} | {time}{}", e.line)
}

/// Runs `service logs`.
pub(super) async fn run(client: &Client, args: LogsArgs) -> Result<()> {
    let mut query = vec![format!("tail={}", encode(&args.tail))];
    if args.follow {
        query.push("follow=true".into());
    }
    if let Some(since) = &args.since {
        // Resolved here, so `10m` means ten minutes before the command was typed.
        let ms = crate::logs::parse_since(since, std::time::SystemTime::now())
            .map_err(anyhow::Error::msg)?;
        query.push(format!("since={ms}"));
    }
    if args.timestamps {
        query.push("timestamps=true".into());
    }
    let path = format!(
        "/v1/services/{}/logs?{}",
        encode(&args.service),
        query.join("&")
    );
    let mut width = 0usize;
    let mut stdout = std::io::stdout().lock();
    let mut failed: Option<std::io::Error> = None;
    client
        .stream::<()>(hyper::Method::GET, &path, None, |v| {
            let Ok(e) = serde_json::from_value::<LogEntry>(v) else {
                return true;
            };
            if let Some(w) = &e.warning {
                eprintln!("warning: {w}");
                return true;
            }
            width = width.max(prefix(&e, !args.no_task_ids).chars().count());
            if let Err(err) = writeln!(stdout, "{}", render(&e, &args, width)) {
                failed = Some(err);
                return false;
            }
            if args.follow {
                let _ = stdout.flush();
            }
            true
        })
        .await?;
    if let Some(e) = failed
        && e.kind() != std::io::ErrorKind::BrokenPipe
    {
        return Err(e).context("cannot write the logs to stdout");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_prefixed_as_docker_prefixes_them() {
        let e = LogEntry {
            name: "web.2".into(),
            task_id: "abcdef0123456789".into(),
            node: "node-2".into(),
            timestamp: "2026-12-01T04:33:29.123456789Z".into(),
            line: "hello".into(),
            ..LogEntry::default()
        };
        let mut args = LogsArgs {
            follow: false,
            tail: "all".into(),
            since: None,
            timestamps: false,
            raw: false,
            no_task_ids: false,
            service: "web".into(),
        };
        assert_eq!(
            render(&e, &args, 30),
            format!("{:<30} | hello", "web.2.abcdef012345@node-2")
        );
        args.no_task_ids = true;
        args.timestamps = true;
        assert_eq!(
            render(&e, &args, 0),
            "web.2@node-2 | 2026-12-01T04:33:29.123456789Z hello"
        );
        args.raw = true;
        args.timestamps = false;
        assert_eq!(render(&e, &args, 40), "hello");
    }
}
