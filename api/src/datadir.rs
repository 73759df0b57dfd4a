//! Nodes' data directories: private to the user the node runs as, because
//! they hold job specs (env, stdin), output, the Raft log and secrets.

use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;

/// Mode of a data directory and of every directory a node makes in it.
pub const PRIVATE_DIR_MODE: u32 = 0o700;

/// Creates `dir` (and missing parents) with mode 0700, or narrows an
/// existing one to 0700: a directory made by an older version, or by hand,
/// must not stay open to other users.
pub fn create_private(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(PRIVATE_DIR_MODE)
        .create(dir)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(PRIVATE_DIR_MODE))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_and_existing_directories_end_private() {
        let tmp = tempfile::tempdir().unwrap();
        let new = tmp.path().join("a/b");
        create_private(&new).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&new), PRIVATE_DIR_MODE);
        let open = tmp.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private(&open).unwrap();
        assert_eq!(mode(&open), PRIVATE_DIR_MODE);
    }
}
