//! Following `service create | scale | update | rollback` as `docker service …` does: the
//! overall count, one line per slot, then `verify: Service converged`; a paused, rolled back
//! or superseded update, or a removed service, ends the command with the reason in one line.
//! The daemon computes the progress and streams it (`GET /v1/services/{id}/progress`, see
//! `api::progress`); this only prints what it is sent, and asks again when the stream breaks
//! (the leader changed).

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use hyper::Method;

use super::super::node::encode;
use crate::api::client::{Client, ClientError};
use crate::api::progress::ProgressMessage;
pub use crate::api::progress::Watch;

/// How long the CLI keeps asking again after the stream broke before it gives up.
const RECONNECT_WITHIN: Duration = Duration::from_secs(30);

/// The pause between two attempts.
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

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
/// for again, for up to [`RECONNECT_WITHIN`].
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
        let result = client
            .stream::<()>(Method::GET, &path, None, |v| {
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
            })
            .await;
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
            // The first answer's errors (unknown service, bad query) are the command's.
            Err(e) if !connected => return Err(e.into()),
            Err(ClientError::Api { status: 404, .. }) => {
                bail!("service {name} was removed while it was followed")
            }
            Err(e) => e.to_string(),
            Ok(()) => "the stream ended early".to_string(),
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
