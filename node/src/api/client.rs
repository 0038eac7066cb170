//! The control API client the CLI uses: HTTP/1.1 over the daemon's Unix socket.

use std::path::PathBuf;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ErrorBody;

/// Why a call to the daemon failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nothing answers on the socket.
    #[error("cannot connect to the shoal daemon at unix://{}: is it running?", .0.display())]
    NoDaemon(PathBuf),
    /// The daemon answered with an error.
    #[error("{message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The daemon's one-line message.
        message: String,
    },
    /// The connection broke or the answer was not understood.
    #[error("talking to the shoal daemon at unix://{}: {reason}", path.display())]
    Protocol {
        /// Socket path.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// A client bound to one daemon socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client for the daemon listening on `socket`.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
        }
    }

    fn protocol(&self, reason: impl ToString) -> ClientError {
        ClientError::Protocol {
            path: self.socket.clone(),
            reason: reason.to_string(),
        }
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<hyper::Response<hyper::body::Incoming>, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|_| ClientError::NoDaemon(self.socket.clone()))?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| self.protocol(e))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header(hyper::header::HOST, "shoal")
            .header(hyper::header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| self.protocol(e))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| self.protocol(e))?;
        if resp.status() == StatusCode::OK {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.protocol(e))?
            .to_bytes();
        let message = serde_json::from_slice::<ErrorBody>(&bytes)
            .map(|b| b.message)
            .unwrap_or_else(|_| format!("the daemon answered HTTP {status}"));
        Err(ClientError::Api { status, message })
    }

    async fn decode<T: DeserializeOwned>(
        &self,
        resp: hyper::Response<hyper::body::Incoming>,
    ) -> Result<T, ClientError> {
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| self.protocol(e))?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|e| self.protocol(format!("bad answer: {e}")))
    }

    /// `GET path` decoded as `T`.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.send(Method::GET, path, None).await?;
        self.decode(resp).await
    }

    /// `POST path` with a JSON body, decoded as `T`.
    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| self.protocol(e))?;
        let resp = self.send(Method::POST, path, Some(body)).await?;
        self.decode(resp).await
    }

    /// `DELETE path`, decoded as `T`.
    pub async fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let resp = self.send(Method::DELETE, path, None).await?;
        self.decode(resp).await
    }

    /// A streamed answer: calls `each` with every JSON value as it arrives, until the
    /// daemon ends the stream or `each` returns `false` (`shoal events`, `service logs`).
    pub async fn stream<B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        mut each: impl FnMut(serde_json::Value) -> bool,
    ) -> Result<(), ClientError> {
        let body = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| self.protocol(e))?),
            None => None,
        };
        let resp = self.send(method, path, body).await?;
        let mut body = resp.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| self.protocol(e))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            buf.extend_from_slice(&data);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let value = serde_json::from_slice(&line[..line.len() - 1])
                    .map_err(|e| self.protocol(format!("bad streamed answer: {e}")))?;
                if !each(value) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}
