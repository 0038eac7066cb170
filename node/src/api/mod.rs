//! The control API: HTTP/1.1 + JSON on the daemon's Unix socket.
//!
//! Plain answers are one JSON document. Long answers (progress, logs) stream as
//! newline-delimited JSON over a chunked body. Errors carry a non-2xx status and
//! `{"message": "..."}`, a single line that tells the user what to do next.
//!
//! The contract, apart from the daemon's own records: `types.rs` (info, init, join, tokens,
//! nodes) and `services.rs` (services and tasks). The CLI imports only these (and the
//! scheduler's words).

pub mod client;
pub mod events;
pub mod progress;
pub mod server;
pub mod services;
pub mod types;

pub use services::{
    HealthCheckBody, PortBody, ScaleRequest, ServiceModeBody, ServiceRef, ServiceRow,
    ServiceSpecBody, ServiceUpdateBody, ServiceUpdateResponse, TaskRow, UpdateConfigPatch,
};
pub use types::*;

#[cfg(test)]
mod tests {
    use super::client::{Client, ClientError};
    use super::server::{ApiError, Reply, serve};

    /// The server streams NDJSON as values are produced, answers JSON and errors, and
    /// the client reads all three.
    #[tokio::test]
    async fn json_stream_and_error_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("api.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(serve(listener, stop_rx, |req| async move {
            match req.route().as_slice() {
                ["v1", "count"] => {
                    let (tx, rx) = tokio::sync::mpsc::channel(4);
                    tokio::spawn(async move {
                        for i in 0..3 {
                            tx.send(serde_json::json!({ "n": i })).await.ok();
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                        }
                    });
                    Ok(Reply::Stream(rx))
                }
                ["v1", "hello"] => Reply::json(&serde_json::json!({ "hello": "world" })),
                _ => Err(ApiError::not_found("no such thing: try /v1/hello")),
            }
        }));
        let client = Client::new(&sock);
        let v: serde_json::Value = client.get("/v1/hello").await.unwrap();
        assert_eq!(v["hello"], "world");
        let mut seen = Vec::new();
        client
            .stream::<()>(hyper::Method::GET, "/v1/count", None, |v| {
                seen.push(v["n"].as_u64().unwrap_or(99));
                true
            })
            .await
            .unwrap();
        assert_eq!(seen, vec![0, 1, 2]);
        match client.get::<serde_json::Value>("/v1/nope").await {
            Err(ClientError::Api {
                status: 404,
                message,
            }) => {
                assert_eq!(message, "no such thing: try /v1/hello");
            }
            other => panic!("expected a 404, got {other:?}"),
        }
        let _ = stop_tx.send(true);
        let _ = server.await;
        let gone = Client::new(dir.path().join("nobody.sock"));
        let err = gone
            .get::<serde_json::Value>("/v1/hello")
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("cannot connect to the shoal daemon at unix://")
        );
    }
}
