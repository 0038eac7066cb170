//! The daemon's state directory: its lock, and the paths of everything kept in it.
//!
//! The lock is taken before anything else in the directory is touched (the key, the
//! socket, `raft.redb`), so two daemons can never share a state dir.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// An open, locked state directory. The lock is released when this is dropped
/// (or when the process dies: it is an `flock`, held by the open file).
#[derive(Debug)]
pub struct StateDir {
    root: PathBuf,
    _lock: File,
}

impl StateDir {
    /// Creates the directory if needed (mode 0700) and takes its lock, writing our pid
    /// into it. Fails naming the other daemon's pid when the lock is held.
    pub fn open_locked(root: &Path) -> Result<StateDir> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(root)
            .with_context(|| format!("cannot create state dir {}", root.display()))?;
        let lock_path = root.join("lock");
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("cannot open lock file {}", lock_path.display()))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = lock.read_to_string(&mut pid);
                let pid = pid.trim();
                let who = if pid.is_empty() {
                    "another shoal daemon".to_string()
                } else {
                    format!("another shoal daemon (pid {pid})")
                };
                bail!(
                    "state dir {} is in use by {who}: stop it first or pass a different --state-dir",
                    root.display()
                );
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("cannot lock {}", lock_path.display()));
            }
        }
        lock.set_len(0)?;
        lock.seek(SeekFrom::Start(0))?;
        writeln!(lock, "{}", std::process::id())?;
        lock.sync_all()?;
        Ok(StateDir {
            root: root.to_path_buf(),
            _lock: lock,
        })
    }

    /// The directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The node's ed25519 key (mode 0600).
    pub fn node_key(&self) -> PathBuf {
        self.root.join("node.key")
    }

    /// The Raft log and state machine.
    pub fn raft_db(&self) -> PathBuf {
        self.root.join("raft.redb")
    }

    /// The node's saved settings and cluster credentials (certificate, CA, cluster id).
    pub fn node_config(&self) -> PathBuf {
        self.root.join("node.json")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused_with_pid() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateDir::open_locked(dir.path()).unwrap();
        let err = StateDir::open_locked(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        drop(first);
        StateDir::open_locked(dir.path()).unwrap();
    }
}
