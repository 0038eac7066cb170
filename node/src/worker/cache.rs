//! The worker's local cache: its assignments and their last known states, persisted atomically
//! so that after a daemon restart it can adopt its running tasks before any manager answers.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::WorkerError;
use super::types::{Assignment, TaskState};

/// File name inside the cache directory.
pub(crate) const CACHE_FILE: &str = "assignments.json";
const CACHE_VERSION: u32 = 1;

/// One cached task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct CachedTask {
    pub(crate) assignment: Assignment,
    pub(crate) state: TaskState,
    pub(crate) exit_code: Option<i64>,
    pub(crate) error: Option<String>,
    pub(crate) ended_at_ms: Option<u64>,
    pub(crate) removed: bool,
}

#[derive(Debug, Serialize, Deserialize)]
struct CacheFile {
    version: u32,
    tasks: Vec<CachedTask>,
}

/// The cache file of one worker.
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// Creates the directory if needed.
    pub(crate) fn open(dir: &Path) -> Result<Self, WorkerError> {
        fs::create_dir_all(dir).map_err(|source| WorkerError::Cache {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    fn path(&self) -> PathBuf {
        self.dir.join(CACHE_FILE)
    }

    /// The cached tasks; an unreadable or corrupt cache is set aside (renamed `*.corrupt`) and
    /// reads as empty: the next full assignment set rebuilds it.
    pub(crate) fn load(&self) -> Vec<CachedTask> {
        let path = self.path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Vec::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the worker cache");
                return Vec::new();
            }
        };
        match serde_json::from_slice::<CacheFile>(&bytes) {
            Ok(file) if file.version == CACHE_VERSION => file.tasks,
            Ok(file) => {
                tracing::warn!(
                    version = file.version,
                    "ignoring a worker cache of another version"
                );
                Vec::new()
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "worker cache is corrupt; set aside");
                let _ = fs::rename(&path, self.dir.join(format!("{CACHE_FILE}.corrupt")));
                Vec::new()
            }
        }
    }

    /// Writes the tasks atomically (temporary file, fsync, rename, fsync of the directory).
    pub(crate) fn store(&self, tasks: Vec<CachedTask>) -> Result<(), WorkerError> {
        let path = self.path();
        let err = |source: io::Error| WorkerError::Cache {
            path: path.clone(),
            source,
        };
        let data = serde_json::to_vec(&CacheFile {
            version: CACHE_VERSION,
            tasks,
        })
        .map_err(|e| err(io::Error::other(e)))?;
        let tmp = self.dir.join(format!(".{CACHE_FILE}.tmp"));
        {
            let mut file = fs::File::create(&tmp).map_err(err)?;
            file.write_all(&data).map_err(err)?;
            file.sync_all().map_err(err)?;
        }
        fs::rename(&tmp, &path).map_err(err)?;
        if let Ok(dir) = fs::File::open(&self.dir) {
            let _ = dir.sync_all();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::worker::types::DesiredState;
    use shoal_runtime::TaskSpec;

    #[test]
    fn round_trips_and_survives_corruption() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(&dir.path().join("worker")).expect("open");
        assert!(cache.load().is_empty());
        let task = CachedTask {
            assignment: Assignment {
                task_id: "t1".into(),
                service_id: "s".into(),
                service_name: "web".into(),
                slot: 1,
                driver: "process".into(),
                spec: TaskSpec::new("t1", "s", "web", 1, "/bin/true"),
                desired: DesiredState::Running,
            },
            state: TaskState::Running,
            exit_code: None,
            error: None,
            ended_at_ms: None,
            removed: false,
        };
        cache.store(vec![task.clone()]).expect("store");
        assert_eq!(cache.load(), vec![task]);
        fs::write(cache.path(), b"{not json").expect("write");
        assert!(cache.load().is_empty());
        assert!(
            dir.path()
                .join("worker")
                .join("assignments.json.corrupt")
                .exists()
        );
    }
}
