//! Secrets on the node: files in a memory-backed directory (tmpfs), one directory per task,
//! never on disk. The Docker driver bind-mounts each file read-only at its target; the
//! process driver hands the directory to the task (`SHOAL_SECRETS_DIR`).

use std::path::{Path, PathBuf};

use crate::error::RuntimeError;
use crate::spec::TaskFile;

/// Whether `dir` is on a memory-backed filesystem (tmpfs).
#[must_use]
pub fn memory_backed(dir: &Path) -> bool {
    use nix::sys::statfs::{TMPFS_MAGIC, statfs};
    statfs(dir).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC)
}

/// The directory of `task_id`'s secrets under `root`.
#[must_use]
pub fn task_dir(root: &Path, task_id: &str) -> PathBuf {
    root.join(task_id)
}

/// How the files are named in the task's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Naming {
    /// `0`, `1`, … (bind-mounted at their targets).
    Numbered,
    /// The target's file name (the task reads the directory).
    ByTarget,
}

/// Writes `files` under `root/TASK/` (the directory 0700, each file with its owner and mode)
/// and returns each file's path with its target. `root` must be memory-backed: secrets never
/// touch a disk.
pub fn write(
    root: &Path,
    task_id: &str,
    files: &[TaskFile],
    naming: Naming,
) -> Result<Vec<(PathBuf, String)>, RuntimeError> {
    use std::io::Write as _;
    use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
    let io = |what: String, e: std::io::Error| RuntimeError::io(what, e);
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(root)
        .map_err(|e| io(format!("creating {}", root.display()), e))?;
    if !memory_backed(root) {
        return Err(RuntimeError::StartFailed {
            task_id: task_id.to_owned(),
            reason: format!(
                "{} is not memory-backed (tmpfs): secrets are never written to disk",
                root.display()
            ),
        });
    }
    let dir = task_dir(root, task_id);
    let _ = std::fs::remove_dir_all(&dir);
    let make = || std::fs::DirBuilder::new().mode(0o711).create(&dir);
    // Another task's removal may take the (then empty) root away in between: make it again.
    make()
        .or_else(|_| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(root)?;
            make()
        })
        .map_err(|e| io(format!("creating {}", dir.display()), e))?;
    let mut out = Vec::new();
    for (n, f) in files.iter().enumerate() {
        let name = match naming {
            Naming::Numbered => n.to_string(),
            Naming::ByTarget => f
                .target
                .rsplit('/')
                .next()
                .filter(|s| !s.is_empty() && *s != "." && *s != "..")
                .unwrap_or("secret")
                .to_owned(),
        };
        let path = dir.join(name);
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(|e| io(format!("creating {}", path.display()), e))?;
        file.write_all(&f.data)
            .map_err(|e| io(format!("writing {}", path.display()), e))?;
        drop(file);
        std::os::unix::fs::chown(&path, Some(f.uid), Some(f.gid))
            .map_err(|e| io(format!("setting the owner of {}", path.display()), e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode & 0o777))
            .map_err(|e| io(format!("setting the mode of {}", path.display()), e))?;
        out.push((path, f.target.clone()));
    }
    Ok(out)
}

/// Removes `task_id`'s secrets (nothing when there are none), and `root` once no task has
/// any: a node leaves no directory behind.
pub fn remove(root: &Path, task_id: &str) {
    let _ = std::fs::remove_dir_all(task_dir(root, task_id));
    let _ = std::fs::remove_dir(root);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_refused_outside_memory_and_written_with_their_mode_inside() {
        let disk = tempfile::tempdir().unwrap();
        let file = TaskFile {
            target: "/run/secrets/pw".into(),
            data: b"hunter2".to_vec(),
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mode: 0o400,
        };
        if !memory_backed(disk.path()) {
            let e = write(
                disk.path(),
                "t1",
                std::slice::from_ref(&file),
                Naming::Numbered,
            )
            .unwrap_err();
            assert!(e.to_string().contains("not memory-backed"), "{e}");
            assert!(!disk.path().join("t1").exists());
        }
        let shm = Path::new("/dev/shm");
        if memory_backed(shm) {
            let root = tempfile::tempdir_in(shm).unwrap();
            let written = write(root.path(), "t1", &[file], Naming::ByTarget).unwrap();
            let (path, target) = &written[0];
            assert_eq!(target, "/run/secrets/pw");
            assert_eq!(path, &root.path().join("t1/pw"));
            assert_eq!(std::fs::read(path).unwrap(), b"hunter2");
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o400);
            remove(root.path(), "t1");
            assert!(!root.path().join("t1").exists());
            assert!(
                !root.path().exists(),
                "an empty root goes with its last task"
            );
            // And comes back with the next one.
            let again = TaskFile {
                target: "x".into(),
                data: vec![1],
                uid: nix::unistd::getuid().as_raw(),
                gid: nix::unistd::getgid().as_raw(),
                mode: 0o400,
            };
            write(root.path(), "t2", &[again], Naming::Numbered).unwrap();
            remove(root.path(), "t2");
        }
    }
}
