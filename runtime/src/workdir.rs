//! Working directories for jobs. Each job gets an empty directory (mode 0700,
//! given to the job's user when it is confined) that no other running job
//! uses, under a root only the daemon's user may enter. After the job its
//! contents are removed and the emptied directory is kept for a later job:
//! creating and deleting a directory per job costs more than running a short
//! job itself on ext4, whose inode allocator slows down under that churn.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tracing::warn;

/// Mode of every working directory: only its owner (the job's user while a
/// job runs) may enter it.
const WORK_DIR_MODE: u32 = 0o700;

/// A pool of empty working directories under one root.
#[derive(Debug)]
pub(crate) struct WorkDirs {
    root: PathBuf,
    idle: Mutex<Vec<PathBuf>>,
    /// Emptied directories kept for reuse; one per job slot is enough.
    max_idle: usize,
}

impl WorkDirs {
    pub(crate) fn new(root: PathBuf, max_idle: usize) -> WorkDirs {
        WorkDirs {
            root,
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    /// An empty directory for one job: a kept one, or a new one.
    pub(crate) fn take(&self) -> io::Result<PathBuf> {
        if let Some(dir) = self.idle.lock().expect("work dir pool lock").pop() {
            return Ok(dir);
        }
        std::fs::create_dir_all(&self.root)?;
        let dir = self
            .root
            .join(format!("w-{}", uuid::Uuid::now_v7().simple()));
        std::fs::DirBuilder::new()
            .mode(WORK_DIR_MODE)
            .create(&dir)?;
        Ok(dir)
    }

    /// Empties a job's directory and keeps it, or removes it when it cannot
    /// be emptied or enough are kept already. Blocking: call off the runtime.
    pub(crate) fn give_back(&self, dir: PathBuf) {
        let keep = self.idle.lock().expect("work dir pool lock").len() < self.max_idle;
        if keep && empty(&dir).is_ok() {
            let mut idle = self.idle.lock().expect("work dir pool lock");
            if idle.len() < self.max_idle {
                idle.push(dir);
                return;
            }
        }
        if let Err(e) = remove_all(&dir) {
            warn!(dir = %dir.display(), error = %e, "cannot remove job working directory");
        }
    }
}

/// Removes everything inside `dir` and restores its mode, undoing whatever
/// the job did to it.
fn empty(dir: &Path) -> io::Result<()> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(WORK_DIR_MODE))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_all(&entry.path())?;
        } else {
            std::fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// `remove_dir_all`, after making directories the job locked writable again.
pub(crate) fn remove_all(path: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            unlock_tree(path);
            std::fs::remove_dir_all(path)
        }
    }
}

/// Gives the owner full access to every directory below `path`, so a job that
/// made its directories read-only cannot keep them from being removed.
fn unlock_tree(path: &Path) {
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(WORK_DIR_MODE));
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            unlock_tree(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn directories_come_back_empty_and_private() {
        let tmp = tempfile::tempdir().unwrap();
        let dirs = WorkDirs::new(tmp.path().join("work"), 1);
        let dir = dirs.take().unwrap();
        std::fs::create_dir_all(dir.join("a/b")).unwrap();
        std::fs::write(dir.join("a/b/f"), "x").unwrap();
        std::fs::set_permissions(dir.join("a"), std::fs::Permissions::from_mode(0o500)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        dirs.give_back(dir.clone());

        let again = dirs.take().unwrap();
        assert_eq!(again, dir, "the emptied directory is reused");
        assert_eq!(std::fs::read_dir(&again).unwrap().count(), 0);
        let mode = std::fs::metadata(&again).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, WORK_DIR_MODE);

        let other = dirs.take().unwrap();
        assert_ne!(other, again, "a directory in use is never handed out twice");
        dirs.give_back(again);
        dirs.give_back(other.clone());
        assert!(!other.exists(), "past max_idle a directory is removed");
    }
}
