//! The control API server: hyper HTTP/1.1 over the daemon's Unix socket.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixListener;
use tokio::sync::{mpsc, watch};
use tracing::debug;

use super::ErrorBody;

/// Largest request body the API accepts.
const MAX_BODY: usize = 4 << 20;

/// A parsed request handed to the router.
#[derive(Debug)]
pub struct ApiRequest {
    /// HTTP method.
    pub method: Method,
    /// Path segments after the leading `/`, e.g. `["v1", "nodes", "abc"]`.
    pub segments: Vec<String>,
    /// Query parameters (last one wins).
    pub query: BTreeMap<String, String>,
    /// Raw body.
    pub body: Bytes,
    /// The node whose control socket received the request, when another manager forwarded
    /// it here (`None`: this node's own socket). Requests about "the current node" mean
    /// that one.
    pub origin: Option<String>,
}

impl ApiRequest {
    /// Decodes the JSON body; an empty body decodes as `{}`.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, ApiError> {
        let body: &[u8] = if self.body.is_empty() {
            b"{}"
        } else {
            &self.body
        };
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("malformed request body: {e}")))
    }

    /// The segments as `&str`, for matching.
    pub fn route(&self) -> Vec<&str> {
        self.segments.iter().map(String::as_str).collect()
    }

    /// A query flag such as `?force=true`.
    pub fn flag(&self, name: &str) -> bool {
        self.query
            .get(name)
            .is_some_and(|v| v == "true" || v == "1" || v.is_empty())
    }
}

/// An error answer.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// One line for the user.
    pub message: String,
}

impl ApiError {
    /// Bad request (400). Takes anything printable, so that a parse error such as the
    /// scheduler's [`shoal_scheduler::UnknownWord`] is passed as it is.
    pub fn bad_request(message: impl std::fmt::Display) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.to_string(),
        }
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::NOT_FOUND,
            message: message.into(),
        }
    }
    /// 403: the sender may not make this request.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::FORBIDDEN,
            message: message.into(),
        }
    }
    /// 409: the request conflicts with the node's current state.
    pub fn conflict(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::CONFLICT,
            message: message.into(),
        }
    }
    /// 503: the cluster cannot answer now (no quorum, no leader).
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: message.into(),
        }
    }
    /// 500.
    pub fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: message.into(),
        }
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::internal(format!("{e:#}"))
    }
}

/// What a handler answers.
pub enum Reply {
    /// One JSON document with status 200.
    Json(Bytes),
    /// Newline-delimited JSON values, streamed as they are sent; the stream ends
    /// when the sender is dropped.
    Stream(mpsc::Receiver<serde_json::Value>),
}

impl Reply {
    /// Serializes `value` as the answer.
    pub fn json<T: Serialize>(value: &T) -> Result<Reply, ApiError> {
        serde_json::to_vec(value)
            .map(|v| Reply::Json(Bytes::from(v)))
            .map_err(|e| ApiError::internal(format!("cannot encode answer: {e}")))
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, bytes: Bytes) -> Response<Body> {
    let mut resp = Response::new(Full::new(bytes).boxed());
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    resp
}

fn error_response(err: &ApiError) -> Response<Body> {
    let body = serde_json::to_vec(&ErrorBody {
        message: err.message.clone(),
    })
    .unwrap_or_default();
    full(err.status, Bytes::from(body))
}

fn parse_query(q: Option<&str>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for pair in q.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(percent_decode(k), percent_decode(v));
    }
    out
}

/// Decodes `%XX` escapes and `+`; invalid escapes are kept verbatim.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    out.push(v);
                    i += 3;
                    continue;
                }
                out.push(b'%');
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn to_request(req: Request<Incoming>) -> Result<ApiRequest, ApiError> {
    let (parts, body) = req.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| ApiError::bad_request(format!("cannot read request body: {e}")))?
        .to_bytes();
    Ok(request_from_parts(parts.method, &parts.uri, body))
}

/// The request the router sees for `method`, `uri` and `body`: path segments and query
/// parameters percent-decoded.
pub(crate) fn request_from_parts(method: Method, uri: &hyper::Uri, body: Bytes) -> ApiRequest {
    let segments = uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    ApiRequest {
        origin: None,
        method,
        segments,
        query: parse_query(uri.query()),
        body,
    }
}

fn stream_response(rx: mpsc::Receiver<serde_json::Value>) -> Response<Body> {
    let body = stream::unfold(rx, |mut rx| async move {
        let value = rx.recv().await?;
        let mut line = serde_json::to_vec(&value).unwrap_or_default();
        line.push(b'\n');
        Some((Ok::<_, Infallible>(Frame::data(Bytes::from(line))), rx))
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(body)));
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/x-ndjson"),
    );
    resp
}

/// Serves the API on `listener` until `shutdown` turns true. Every connection is
/// served on its own task; `route` is called once per request.
pub async fn serve<F, Fut>(listener: UnixListener, mut shutdown: watch::Receiver<bool>, route: F)
where
    F: Fn(ApiRequest) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Reply, ApiError>> + Send + 'static,
{
    let route = Arc::new(route);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    debug!("control socket accept failed: {e}");
                    continue;
                }
            },
            _ = shutdown.changed() => break,
        };
        let route = route.clone();
        let mut conn_shutdown = shutdown.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let route = route.clone();
                async move {
                    let resp = match to_request(req).await {
                        Ok(req) => match route(req).await {
                            Ok(Reply::Json(bytes)) => full(StatusCode::OK, bytes),
                            Ok(Reply::Stream(rx)) => stream_response(rx),
                            Err(e) => error_response(&e),
                        },
                        Err(e) => error_response(&e),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            tokio::pin!(conn);
            tokio::select! {
                res = conn.as_mut() => {
                    if let Err(e) = res {
                        debug!("control connection ended: {e}");
                    }
                }
                _ = conn_shutdown.changed() => {}
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding() {
        assert_eq!(percent_decode("a%20b+c"), "a b c");
        assert_eq!(percent_decode("100%"), "100%");
        assert_eq!(percent_decode("%zz"), "%zz");
        assert_eq!(percent_decode("%41"), "A");
    }

    #[test]
    fn query_parsing() {
        let q = parse_query(Some("force=true&x&name=a%3Db"));
        assert_eq!(q.get("force").map(String::as_str), Some("true"));
        assert_eq!(q.get("x").map(String::as_str), Some(""));
        assert_eq!(q.get("name").map(String::as_str), Some("a=b"));
    }
}
