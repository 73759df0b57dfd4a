//! Bundles, the tar archives native services ship as: built from a directory
//! by `skyclaw deploy` ([`build`]) and unpacked on hosts ([`unpack`]). Both
//! ends live here, in the runtime crate, because the runtime owns artifacts on
//! hosts and the CLI already depends on it; sharing one module means the
//! builder applies the unpacker's rules and bounds, so it never makes a bundle
//! a host would refuse.
//!
//! A bundle holds regular files, directories and symlinks whose targets stay
//! inside it, nothing else. Entries are sorted by path and carry no owner,
//! time or permission beyond the execute bit, so the same files always give
//! the same bytes and the same digest.
//!
//! Architecture invariant: unpacking never writes outside its destination,
//! not even partially: every entry is checked before anything is written for
//! it, the archive is unpacked into a staging directory, and only a complete
//! unpack is renamed into place.

mod build;
mod unpack;

use std::path::{Component, Path, PathBuf};

pub use build::build;
pub use unpack::{UNPACK_STAGING_PREFIX, unpack};

/// Entries in one bundle: far more than any built API with its runtime
/// dependencies, and few enough that a host never tracks an unbounded set of
/// paths or fills its disk with inodes.
pub const MAX_BUNDLE_ENTRIES: u64 = 100_000;
/// File bytes one bundle unpacks to: a host keeps one unpacked copy per
/// deployed version, so a bundle must not be able to fill its disk.
pub const MAX_BUNDLE_BYTES: u64 = 1024 * 1024 * 1024;
/// Bytes in one entry's path or symlink target: Linux's `PATH_MAX`, so every
/// path a bundle names can be opened on a host.
pub const MAX_BUNDLE_PATH_BYTES: usize = 4096;
/// The modification time every entry carries: times on the builder's disk
/// must not change a bundle's digest.
pub const BUNDLE_MTIME: u64 = 0;
/// Mode of directories and of files with any execute bit: everyone may read
/// and run them (a service runs as a job user, not the user who unpacked it),
/// only the owner may write.
pub const EXEC_MODE: u32 = 0o755;
/// Mode of every other file.
pub const FILE_MODE: u32 = 0o644;
/// Mode stored for symlinks: what Linux reports for every symlink; nothing
/// reads it.
const LINK_MODE: u32 = 0o777;
/// Names never bundled, wherever they appear: repository metadata is not part
/// of a service. `node_modules` is not among them: include it to ship a
/// service's runtime dependencies, exclude it to leave them out.
pub const ALWAYS_EXCLUDED: &[&str] = &[".git"];

/// What a bundle held: its entries and the bytes of its files.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Files, directories and symlinks.
    pub entries: u64,
    /// Bytes of file content, what unpacking writes.
    pub bytes: u64,
}

impl Summary {
    /// Counts one more entry, with `bytes` of file content, refusing it if it
    /// takes the bundle past `limits`. The builder and the unpacker count
    /// with this one function, so they refuse at the same entry.
    fn count(&mut self, bytes: u64, limits: &Limits) -> Result<(), Rule> {
        if self.entries >= limits.entries {
            return Err(Rule::TooManyEntries {
                limit: limits.entries,
            });
        }
        let total = self.bytes.saturating_add(bytes);
        if total > limits.bytes {
            return Err(Rule::TooManyBytes {
                limit: limits.bytes,
            });
        }
        self.entries += 1;
        self.bytes = total;
        Ok(())
    }
}

/// What [`build`] returns.
pub type BuildSummary = Summary;
/// What [`unpack`] returns.
pub type UnpackSummary = Summary;

/// Why a bundle could not be built or unpacked.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    /// One entry breaks a rule; `entry` is its path as in the directory or
    /// the archive.
    #[error("bundle entry {entry:?} refused: {rule}")]
    Refused { entry: String, rule: Rule },
    /// A file or directory could not be read or written.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// An include or exclude pattern is not a glob.
    #[error("bad bundle pattern {pattern:?}: {source}")]
    Glob {
        pattern: String,
        source: globset::Error,
    },
    /// Nothing was selected: an archive without entries is no bundle.
    #[error("nothing to bundle in {}: the include and exclude patterns select nothing", dir.display())]
    Empty { dir: PathBuf },
    /// The output file would be inside the directory bundled, and so in the
    /// next bundle built from it.
    #[error("bundle output {} is inside the directory being bundled {}", out.display(), dir.display())]
    OutputInsideDir { out: PathBuf, dir: PathBuf },
    /// A file changed size between being listed and being read.
    #[error("{} changed while it was being bundled", path.display())]
    Changed { path: PathBuf },
    /// Unpacking needs a fresh destination.
    #[error("cannot unpack into {}: it exists and is not an empty directory", path.display())]
    DestinationNotEmpty { path: PathBuf },
}

fn refused(entry: &str, rule: Rule) -> BundleError {
    BundleError::Refused {
        entry: entry.to_owned(),
        rule,
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> BundleError {
    let path = path.to_path_buf();
    move |source| BundleError::Io {
        action,
        path,
        source,
    }
}

/// The directory `path` is in, `.` for a bare name.
fn parent_dir(path: &Path) -> &Path {
    path.parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The rule an entry breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rule {
    #[error("its path is not UTF-8")]
    NotUtf8,
    #[error("its path is longer than {limit} bytes")]
    PathTooLong { limit: usize },
    #[error("absolute paths are not allowed")]
    AbsolutePath,
    #[error("'..' is not allowed in paths")]
    ParentComponent,
    #[error("it names no file (an empty path, or the root as something other than a directory)")]
    EmptyPath,
    #[error("its path goes through the symlink {link:?}")]
    ThroughSymlink { link: String },
    #[error("its parent {parent:?} is not a directory")]
    ParentNotDirectory { parent: String },
    #[error("an entry with the same path came before it")]
    Duplicate,
    #[error("hard links are not allowed")]
    HardLink,
    #[error("{kind} entries are not allowed, only files, directories and symlinks")]
    SpecialFile { kind: &'static str },
    #[error("a bundle holds at most {limit} entries")]
    TooManyEntries { limit: u64 },
    #[error("a bundle unpacks to at most {limit} bytes of files")]
    TooManyBytes { limit: u64 },
    #[error("its symlink target {target:?} {problem}")]
    LinkTarget {
        target: String,
        problem: TargetProblem,
    },
}

/// What is wrong with a symlink's target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TargetProblem {
    #[error("is empty")]
    Empty,
    #[error("is not UTF-8")]
    NotUtf8,
    #[error("is longer than {limit} bytes")]
    TooLong { limit: usize },
    #[error("is absolute")]
    Absolute,
    #[error("leads outside the bundle")]
    Escapes,
    // Only leading '..' can be counted against the link's depth: after a name,
    // which may itself be a symlink, '..' could climb anywhere.
    #[error("has '..' after a name (only leading '..' are allowed)")]
    ParentAfterName,
}

/// The bounds one build or unpack enforces: [`Limits::BUNDLE`] everywhere but
/// in tests, which use smaller ones.
#[derive(Debug, Clone, Copy)]
struct Limits {
    entries: u64,
    bytes: u64,
    path_bytes: usize,
}

impl Limits {
    const BUNDLE: Limits = Limits {
        entries: MAX_BUNDLE_ENTRIES,
        bytes: MAX_BUNDLE_BYTES,
        path_bytes: MAX_BUNDLE_PATH_BYTES,
    };
}

/// An entry's path as the bundle rules allow it: UTF-8, within the length
/// bound, relative, without `..`; `.` components are dropped. The result may
/// be empty (the root).
fn entry_path(raw: &[u8], limits: &Limits) -> Result<PathBuf, Rule> {
    if raw.len() > limits.path_bytes {
        return Err(Rule::PathTooLong {
            limit: limits.path_bytes,
        });
    }
    let text = std::str::from_utf8(raw).map_err(|_| Rule::NotUtf8)?;
    let mut path = PathBuf::new();
    for component in Path::new(text).components() {
        match component {
            Component::Normal(name) => path.push(name),
            Component::CurDir => {}
            Component::ParentDir => return Err(Rule::ParentComponent),
            Component::RootDir | Component::Prefix(_) => return Err(Rule::AbsolutePath),
        }
    }
    Ok(path)
}

/// Checks the target of a symlink at `link` (an [`entry_path`]): relative,
/// and its leading `..` climb no higher than the bundle's root. Resolving such
/// a target never leaves the bundle, whatever other symlinks it passes,
/// because no entry is ever written beneath a symlink.
fn check_link_target(link: &Path, raw: &[u8], limits: &Limits) -> Result<(), Rule> {
    let problem = |problem| Rule::LinkTarget {
        target: String::from_utf8_lossy(raw).into_owned(),
        problem,
    };
    if raw.is_empty() {
        return Err(problem(TargetProblem::Empty));
    }
    if raw.len() > limits.path_bytes {
        return Err(problem(TargetProblem::TooLong {
            limit: limits.path_bytes,
        }));
    }
    let text = std::str::from_utf8(raw).map_err(|_| problem(TargetProblem::NotUtf8))?;
    // Directories above the link, all of them real directories inside the bundle.
    let mut room = link.components().count().saturating_sub(1);
    let mut seen_name = false;
    for component in Path::new(text).components() {
        match component {
            Component::Normal(_) => seen_name = true,
            Component::CurDir => {}
            Component::ParentDir if seen_name => {
                return Err(problem(TargetProblem::ParentAfterName));
            }
            Component::ParentDir => {
                room = room
                    .checked_sub(1)
                    .ok_or_else(|| problem(TargetProblem::Escapes))?;
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(problem(TargetProblem::Absolute));
            }
        }
    }
    Ok(())
}

/// The mode a file (or directory) is stored and unpacked with: the execute
/// bit kept, everything else (setuid, setgid, sticky, write for others)
/// dropped.
fn normal_mode(mode: u32, is_dir: bool) -> u32 {
    if is_dir || mode & 0o111 != 0 {
        EXEC_MODE
    } else {
        FILE_MODE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits::BUNDLE;

    #[test]
    fn entry_paths_are_relative_without_parent_components() {
        assert_eq!(entry_path(b"./a/./b/", &LIMITS), Ok(PathBuf::from("a/b")));
        assert_eq!(entry_path(b"./", &LIMITS), Ok(PathBuf::new()));
        assert_eq!(entry_path(b"/etc/passwd", &LIMITS), Err(Rule::AbsolutePath));
        assert_eq!(entry_path(b"a/../b", &LIMITS), Err(Rule::ParentComponent));
        assert_eq!(entry_path(b"a/\xff", &LIMITS), Err(Rule::NotUtf8));
        let long = vec![b'a'; MAX_BUNDLE_PATH_BYTES + 1];
        assert_eq!(
            entry_path(&long, &LIMITS),
            Err(Rule::PathTooLong {
                limit: MAX_BUNDLE_PATH_BYTES
            })
        );
    }

    fn target_problem(link: &str, target: &str) -> Option<TargetProblem> {
        match check_link_target(Path::new(link), target.as_bytes(), &LIMITS) {
            Ok(()) => None,
            Err(Rule::LinkTarget { problem, .. }) => Some(problem),
            Err(other) => panic!("unexpected rule {other:?}"),
        }
    }

    #[test]
    fn link_targets_stay_inside_the_bundle() {
        assert_eq!(target_problem("l", "a/b"), None);
        assert_eq!(target_problem("l", "."), None);
        assert_eq!(target_problem("a/b/l", "../../c"), None);
        assert_eq!(target_problem("a/l", "./../c/d"), None);
        assert_eq!(target_problem("l", ".."), Some(TargetProblem::Escapes));
        assert_eq!(
            target_problem("a/l", "../../c"),
            Some(TargetProblem::Escapes)
        );
        assert_eq!(target_problem("l", "/etc"), Some(TargetProblem::Absolute));
        assert_eq!(
            target_problem("a/b/l", "c/../x"),
            Some(TargetProblem::ParentAfterName)
        );
        assert_eq!(target_problem("l", ""), Some(TargetProblem::Empty));
    }

    #[test]
    fn modes_keep_only_the_execute_bit() {
        assert_eq!(normal_mode(0o4755, false), EXEC_MODE);
        assert_eq!(normal_mode(0o700, false), EXEC_MODE);
        assert_eq!(normal_mode(0o100, false), EXEC_MODE);
        assert_eq!(normal_mode(0o666, false), FILE_MODE);
        assert_eq!(normal_mode(0o1777, true), EXEC_MODE);
        assert_eq!(normal_mode(0o600, false), FILE_MODE);
    }
}
