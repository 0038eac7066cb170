//! The worker's local cache: its assignments and their last known states, persisted atomically
//! so that after a daemon restart it can adopt its running tasks before any manager answers.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
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

/// What a cache file holds.
#[derive(Debug)]
pub(crate) enum Decoded {
    /// The tasks of a cache of this version.
    Tasks(Vec<CachedTask>),
    /// A cache of another version (ignored).
    OtherVersion(u32),
}

/// Decodes the contents of a cache file.
pub(crate) fn decode(bytes: &[u8]) -> serde_json::Result<Decoded> {
    let file = serde_json::from_slice::<CacheFile>(bytes)?;
    Ok(if file.version == CACHE_VERSION {
        Decoded::Tasks(file.tasks)
    } else {
        Decoded::OtherVersion(file.version)
    })
}

/// The cache file of one worker.
#[derive(Debug, Clone)]
pub(crate) struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// Creates the directory if needed. It holds the tasks' specs (environment included):
    /// the directory is set to 0700 and its files to 0600 at every open, whatever the umask.
    pub(crate) fn open(dir: &Path) -> Result<Self, WorkerError> {
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| WorkerError::Cache { path, source }
        };
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err(dir))?;
        crate::state_dir::enforce_mode(dir, 0o700, "worker cache dir").map_err(err(dir))?;
        for name in [CACHE_FILE.to_string(), format!("{CACHE_FILE}.corrupt")] {
            let file = dir.join(name);
            if file.exists() {
                crate::state_dir::enforce_mode(&file, 0o600, "file").map_err(err(&file))?;
            }
        }
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
        match decode(&bytes) {
            Ok(Decoded::Tasks(tasks)) => tasks,
            Ok(Decoded::OtherVersion(version)) => {
                tracing::warn!(version, "ignoring a worker cache of another version");
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
            let mut file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(err)?;
            // A left-over temporary file keeps its mode, and the umask may take bits away.
            file.set_permissions(fs::Permissions::from_mode(0o600))
                .map_err(err)?;
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

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).expect("metadata").permissions().mode() & 0o7777
    }

    #[test]
    fn cache_files_are_private_whatever_the_umask() {
        use nix::sys::stat::{Mode, umask};
        let dir = tempfile::tempdir().expect("tempdir");
        let worker = dir.path().join("worker");
        // A cache left loose by an older version is tightened at open.
        fs::create_dir(&worker).expect("mkdir");
        fs::set_permissions(&worker, fs::Permissions::from_mode(0o755)).expect("chmod");
        fs::write(worker.join(CACHE_FILE), b"{}").expect("write");
        fs::set_permissions(worker.join(CACHE_FILE), fs::Permissions::from_mode(0o644))
            .expect("chmod");
        // Under umask 0, a new file would be 0666 without the explicit mode.
        let open_and_store = |dir: &Path| {
            let old = umask(Mode::empty());
            let result = Cache::open(dir).and_then(|c| c.store(Vec::new()));
            umask(old);
            result.expect("open and store");
        };
        open_and_store(&worker);
        assert_eq!(mode(&worker), 0o700);
        assert_eq!(mode(&worker.join(CACHE_FILE)), 0o600);
        let fresh = dir.path().join("fresh");
        open_and_store(&fresh);
        assert_eq!(mode(&fresh), 0o700);
        assert_eq!(mode(&fresh.join(CACHE_FILE)), 0o600);
    }
}
