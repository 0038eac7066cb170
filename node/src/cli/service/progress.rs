//! Following `service create | scale | update | rollback` as `docker service …` does: the
//! overall count, one line per slot, then `verify: Service converged`; a paused, rolled back
//! or superseded update, or a removed service, ends the command with the reason in one line.
//! The daemon computes the progress and streams it (`GET /v1/services/{id}/progress`, see
//! `api::progress`); this only prints what it is sent, and asks again when the stream breaks
//! (the leader changed).

use std::cell::Cell;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hyper::Method;

use super::super::node::encode;
use crate::api::client::{Client, ClientError};
pub use crate::api::progress::Watch;
use crate::api::progress::{ALIVE_EVERY_MS, ProgressMessage};

/// How long the CLI keeps asking again after the stream broke before it gives up.
const RECONNECT_WITHIN: Duration = Duration::from_secs(30);

/// The pause between two attempts.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

/// A stream silent this long (three missed `alive` messages) is taken as broken.
const SILENCE_LIMIT: Duration = Duration::from_millis(3 * ALIVE_EVERY_MS);

/// Prints frames: redrawn in place on a terminal; otherwise only the lines that changed.
struct Printer {
    tty: bool,
    last: Vec<String>,
}

impl Printer {
    fn show(&mut self, lines: &[String]) {
        if lines == self.last.as_slice() {
            return;
        }
        let mut out = std::io::stdout().lock();
        if self.tty {
            if !self.last.is_empty() {
                let _ = write!(out, "\x1b[{}A\x1b[J", self.last.len());
            }
            for l in lines {
                let _ = writeln!(out, "{l}");
            }
        } else {
            for (i, l) in lines.iter().enumerate() {
                if self.last.get(i) != Some(l) {
                    let _ = writeln!(out, "{l}");
                }
            }
        }
        let _ = out.flush();
        self.last = lines.to_vec();
    }
}

/// How one stream ended.
enum Ended {
    /// The daemon's `end`: converged, or why not.
    End(Result<(), String>),
    /// A message this CLI cannot read.
    Bad(String),
}

/// Follows service `id` (called `name`) until the daemon says the command's `watch`
/// converged (Ok: `verify: Service converged`) or why it did not (Err, one line). No overall
/// timeout, as Docker. A stream that breaks without its end (the leader changed) is asked
/// for again, for up to [`RECONNECT_WITHIN`]; so is one silent for [`SILENCE_LIMIT`].
pub async fn follow(client: &Client, id: &str, name: &str, watch: Watch) -> Result<()> {
    let mut printer = Printer {
        tty: std::io::stdout().is_terminal(),
        last: Vec::new(),
    };
    let path = format!("/v1/services/{}/progress?{}", encode(id), watch.query());
    let mut connected = false;
    let mut broken_since: Option<Instant> = None;
    loop {
        let mut ended: Option<Ended> = None;
        let heard = Cell::new(Instant::now());
        let stream = client.stream::<()>(Method::GET, &path, None, |v| {
            heard.set(Instant::now());
            connected = true;
            match serde_json::from_value::<ProgressMessage>(v) {
                Ok(ProgressMessage::Progress { lines, .. }) => {
                    printer.show(&lines);
                    broken_since = None;
                    true
                }
                Ok(ProgressMessage::Alive | ProgressMessage::Other) => true,
                Ok(ProgressMessage::End { converged, error }) => {
                    ended = Some(Ended::End(if converged {
                        Ok(())
                    } else {
                        Err(error.unwrap_or_else(|| format!("service {name} did not converge")))
                    }));
                    false
                }
                Err(e) => {
                    ended = Some(Ended::Bad(e.to_string()));
                    false
                }
            }
        });
        let silence = async {
            loop {
                let left = SILENCE_LIMIT.saturating_sub(heard.get().elapsed());
                if left.is_zero() {
                    return;
                }
                tokio::time::sleep(left).await;
            }
        };
        let result = tokio::select! {
            r = stream => Some(r),
            () = silence => None,
        };
        match ended {
            Some(Ended::End(Ok(()))) => {
                println!("verify: Service converged");
                return Ok(());
            }
            Some(Ended::End(Err(e))) => bail!("{e}"),
            Some(Ended::Bad(e)) => {
                bail!("the daemon sent a progress message this CLI cannot read: {e}")
            }
            None => {}
        }
        let why = match result {
            None => format!("nothing heard for {}s", SILENCE_LIMIT.as_secs()),
            // The first answer's errors (unknown service, bad query) are the command's.
            Some(Err(e)) if !connected => return Err(e.into()),
            Some(Err(ClientError::Api { status: 404, .. })) => {
                bail!("service {name} was removed while it was followed")
            }
            Some(Err(e)) => e.to_string(),
            Some(Ok(())) => "the stream ended early".to_string(),
        };
        let since = *broken_since.get_or_insert_with(Instant::now);
        if since.elapsed() >= RECONNECT_WITHIN {
            bail!(
                "lost the progress of service {name} and could not follow it again within {}s ({why}): see `shoal service ps {name}`",
                RECONNECT_WITHIN.as_secs()
            );
        }
        tokio::time::sleep(RECONNECT_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::api::server::{ApiError, Reply, serve};

    /// A fake daemon whose `n`-th progress request (from 0) is answered by `answer(n)`.
    async fn with_daemon<F>(answer: F, check: impl AsyncFnOnce(Client)) -> usize
    where
        F: Fn(usize) -> Result<Vec<serde_json::Value>, ApiError> + Send + Sync + 'static,
    {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let calls = Arc::new(AtomicUsize::new(0));
        let answer = Arc::new(answer);
        let counted = calls.clone();
        let server = tokio::spawn(serve(listener, stop_rx, move |req| {
            let answer = answer.clone();
            let calls = counted.clone();
            async move {
                assert_eq!(
                    req.route(),
                    ["v1", "services", "svc1", "progress"],
                    "{req:?}"
                );
                assert_eq!(req.query.get("watch").map(String::as_str), Some("update"));
                assert_eq!(req.query.get("version").map(String::as_str), Some("2"));
                let values = answer(calls.fetch_add(1, Ordering::SeqCst))?;
                let (tx, rx) = tokio::sync::mpsc::channel(values.len().max(1));
                for v in values {
                    tx.send(v).await.ok();
                }
                Ok(Reply::Stream(rx))
            }
        }));
        check(Client::new(&sock)).await;
        let _ = stop_tx.send(true);
        let _ = server.await;
        calls.load(Ordering::SeqCst)
    }

    fn progress(k: u64) -> serde_json::Value {
        serde_json::json!({
            "type": "progress", "completed": k, "total": 2, "slots": [],
            "lines": [format!("overall progress: {k} out of 2 tasks")],
        })
    }

    const WATCH: Watch = Watch::Update { version: 2 };

    #[tokio::test]
    async fn a_stream_that_breaks_is_followed_again_until_its_end() {
        let calls = with_daemon(
            |n| {
                Ok(match n {
                    0 => vec![progress(0), progress(1)],
                    _ => vec![
                        progress(1),
                        serde_json::json!({"type": "alive"}),
                        serde_json::json!({"type": "something-newer"}),
                        progress(2),
                        serde_json::json!({"type": "end", "converged": true}),
                    ],
                })
            },
            async |client| follow(&client, "svc1", "web", WATCH).await.unwrap(),
        )
        .await;
        assert_eq!(calls, 2);
    }

    #[tokio::test]
    async fn the_end_says_why_in_one_line() {
        with_daemon(
            |_| {
                Ok(vec![
                    progress(0),
                    serde_json::json!({"type": "end", "converged": false, "error": "update paused: task x failed"}),
                ])
            },
            async |client| {
                let e = follow(&client, "svc1", "web", WATCH).await.unwrap_err();
                assert_eq!(format!("{e:#}"), "update paused: task x failed");
            },
        )
        .await;
    }

    #[tokio::test]
    async fn errors_before_the_stream_are_the_commands_and_a_404_later_is_a_removal() {
        let calls = with_daemon(
            |_| Err(ApiError::not_found("no such service: svc1")),
            async |client| {
                let e = follow(&client, "svc1", "web", WATCH).await.unwrap_err();
                assert_eq!(format!("{e:#}"), "no such service: svc1");
            },
        )
        .await;
        assert_eq!(calls, 1, "not asked again");
        with_daemon(
            |n| match n {
                0 => Ok(vec![progress(0)]),
                _ => Err(ApiError::not_found("no such service: svc1")),
            },
            async |client| {
                let e = follow(&client, "svc1", "web", WATCH).await.unwrap_err();
                assert_eq!(
                    format!("{e:#}"),
                    "service web was removed while it was followed"
                );
            },
        )
        .await;
    }
}
