//! The daemon's state directory: its lock, and the paths of everything kept in it.
//!
//! The lock is taken before anything else in the directory is touched (the key, the
//! socket, `raft.redb`), so two daemons can never share a state dir.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tracing::{info, warn};

/// Prefix of the copies of `raft.redb` that `init --force-new-cluster` moves aside; the
/// rest of the name is the time of the move in milliseconds since the Unix epoch.
pub const FORCE_NEW_CLUSTER_COPY_PREFIX: &str = "raft.redb.before-force-new-cluster-";

/// Sets `path` to exactly `mode` when it has another one, and logs what it changed
/// ("… had mode 0755: set to 0700"). Returns the old mode when it changed it.
pub fn enforce_mode(path: &Path, mode: u32, what: &str) -> std::io::Result<Option<u32>> {
    let old = std::fs::metadata(path)?.permissions().mode() & 0o7777;
    if old == mode {
        return Ok(None);
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    warn!(
        "{what} {} had mode {old:04o}: set to {mode:04o}",
        path.display()
    );
    Ok(Some(old))
}

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
    ///
    /// At every start, once locked: an existing directory with another mode is set to
    /// 0700, `node.json` to 0600 (it holds the node's certificate and cluster ID), and
    /// the copies `init --force-new-cluster` kept are set to 0600 and pruned to the
    /// newest one. Each change is logged.
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
        enforce_mode(root, 0o700, "state dir")
            .with_context(|| format!("cannot set the mode of state dir {}", root.display()))?;
        let dir = StateDir {
            root: root.to_path_buf(),
            _lock: lock,
        };
        let config = dir.node_config();
        if config.exists() {
            enforce_mode(&config, 0o600, "file")
                .with_context(|| format!("cannot set the mode of {}", config.display()))?;
        }
        dir.prune_force_new_cluster_copies()?;
        Ok(dir)
    }

    /// Keeps only the newest copy of `raft.redb` that `init --force-new-cluster` moved
    /// aside (mode 0600) and deletes older ones. The copy is only needed until the new
    /// cluster runs; deleting it by hand then is safe.
    fn prune_force_new_cluster_copies(&self) -> Result<()> {
        let entries = std::fs::read_dir(&self.root)
            .with_context(|| format!("cannot read state dir {}", self.root.display()))?;
        let mut copies: Vec<(u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name();
                let ms = name
                    .to_str()?
                    .strip_prefix(FORCE_NEW_CLUSTER_COPY_PREFIX)?
                    .parse::<u64>()
                    .ok()?;
                Some((ms, e.path()))
            })
            .collect();
        copies.sort();
        let Some((_, newest)) = copies.pop() else {
            return Ok(());
        };
        enforce_mode(&newest, 0o600, "file")
            .with_context(|| format!("cannot set the mode of {}", newest.display()))?;
        for (_, old) in copies {
            std::fs::remove_file(&old)
                .with_context(|| format!("cannot delete {}", old.display()))?;
            info!(
                "deleted {}, an older copy kept by init --force-new-cluster ({} is the newest and is kept)",
                old.display(),
                newest.display()
            );
        }
        Ok(())
    }

    /// Whether any copy kept by `init --force-new-cluster` is in the directory.
    pub fn has_force_new_cluster_copies(&self) -> bool {
        std::fs::read_dir(&self.root).is_ok_and(|entries| {
            entries.filter_map(|e| e.ok()).any(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.starts_with(FORCE_NEW_CLUSTER_COPY_PREFIX))
            })
        })
    }

    /// Deletes every copy kept by `init --force-new-cluster` (called once the new cluster
    /// has made a snapshot and applied entries beyond it: its state no longer depends on
    /// the old database). Returns what it deleted.
    pub fn remove_force_new_cluster_copies(&self) -> Result<Vec<PathBuf>> {
        let entries = std::fs::read_dir(&self.root)
            .with_context(|| format!("cannot read state dir {}", self.root.display()))?;
        let mut removed = Vec::new();
        for e in entries.filter_map(|e| e.ok()) {
            let is_copy = e
                .file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(FORCE_NEW_CLUSTER_COPY_PREFIX));
            if is_copy {
                std::fs::remove_file(e.path())
                    .with_context(|| format!("cannot delete {}", e.path().display()))?;
                removed.push(e.path());
            }
        }
        Ok(removed)
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

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn loose_state_dir_is_set_to_0700() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("state");
        std::fs::create_dir(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(root.join("node.json"), b"{}").unwrap();
        std::fs::set_permissions(
            root.join("node.json"),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let state = StateDir::open_locked(&root).unwrap();
        assert_eq!(mode(&root), 0o700);
        assert_eq!(mode(&state.node_config()), 0o600);
        // A new directory is created 0700 as well.
        let fresh = dir.path().join("fresh");
        StateDir::open_locked(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
    }

    #[test]
    fn enforce_mode_reports_what_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("f");
        std::fs::write(&f, b"x").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(enforce_mode(&f, 0o600, "file").unwrap(), Some(0o644));
        assert_eq!(enforce_mode(&f, 0o600, "file").unwrap(), None);
        assert_eq!(mode(&f), 0o600);
    }

    #[test]
    fn only_the_newest_force_new_cluster_copy_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for ms in [100u64, 2000, 300] {
            let p = root.join(format!("{FORCE_NEW_CLUSTER_COPY_PREFIX}{ms}"));
            std::fs::write(&p, b"db").unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        }
        // Not ours: left alone.
        std::fs::write(root.join(format!("{FORCE_NEW_CLUSTER_COPY_PREFIX}x")), b"").unwrap();
        std::fs::write(root.join("raft.redb"), b"").unwrap();
        let _state = StateDir::open_locked(root).unwrap();
        let mut names: Vec<String> = std::fs::read_dir(root)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(
            names,
            vec![
                "lock".to_string(),
                "raft.redb".to_string(),
                format!("{FORCE_NEW_CLUSTER_COPY_PREFIX}2000"),
                format!("{FORCE_NEW_CLUSTER_COPY_PREFIX}x"),
            ]
        );
        assert_eq!(
            mode(&root.join(format!("{FORCE_NEW_CLUSTER_COPY_PREFIX}2000"))),
            0o600
        );
    }
}
