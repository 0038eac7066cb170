//! Errors of the worker.

use std::path::PathBuf;

/// What the worker's API can fail with.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// [`super::Worker::start`] was called outside a Tokio runtime.
    #[error("the worker must be started inside a Tokio runtime")]
    NoRuntime,
    /// The cache directory could not be created or written.
    #[error("worker cache {}: {source}", path.display())]
    Cache {
        /// File or directory.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The worker has stopped (shut down, or its loop ended).
    #[error("the worker has stopped")]
    Stopped,
}
