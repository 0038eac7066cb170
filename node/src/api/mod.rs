//! The control API: HTTP/1.1 + JSON on the daemon's Unix socket.
//!
//! Plain answers are one JSON document. Long answers (progress, logs) stream as
//! newline-delimited JSON over a chunked body. Errors carry a non-2xx status and
//! `{"message": "..."}`, a single line that tells the user what to do next.

pub mod client;
pub mod server;
pub mod types;

pub use types::*;
