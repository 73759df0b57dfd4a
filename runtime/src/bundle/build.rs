//! Building a bundle from a directory: the walk (patterns, `.git`, file
//! types), the unpacker's rules applied to every entry, and the archive
//! written the same way from the same files.

use std::collections::BTreeMap;
use std::fs::{self, File, Metadata};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use tar::{EntryType, Header};

use super::{
    ALWAYS_EXCLUDED, BUNDLE_MTIME, BuildSummary, BundleError, EXEC_MODE, LINK_MODE, Limits, Rule,
    Summary, check_link_target, entry_path, io_error, normal_mode, parent_dir, refused,
};

/// Builds a bundle of `dir` into `out`, which is replaced only once the
/// bundle is complete.
///
/// `include` and `exclude` are globs matched against paths relative to `dir`,
/// components separated by `/`: `*` stays within one component, `**` crosses
/// them, a trailing `/` is ignored, and a pattern that matches a directory
/// selects (or drops) everything beneath it. No `include` selects everything;
/// `exclude` wins over `include`; names in [`super::ALWAYS_EXCLUDED`] are never
/// bundled. The directories above a selected entry are bundled with it.
///
/// Blocking: async callers run it on a blocking thread.
pub fn build(
    dir: &Path,
    include: &[String],
    exclude: &[String],
    out: &Path,
) -> Result<BuildSummary, BundleError> {
    build_with(dir, include, exclude, out, &Limits::BUNDLE)
}

fn build_with(
    dir: &Path,
    include: &[String],
    exclude: &[String],
    out: &Path,
    limits: &Limits,
) -> Result<Summary, BundleError> {
    let patterns = Patterns::new(include, exclude)?;
    check_output(dir, out)?;
    let entries = collect(dir, &patterns, limits)?;
    if entries.is_empty() {
        return Err(BundleError::Empty {
            dir: dir.to_path_buf(),
        });
    }
    let summary = tally(&entries, limits)?;
    write_archive(dir, &entries, out)?;
    Ok(summary)
}

/// What one bundled path is, as read from the directory.
enum Item {
    Dir,
    File { size: u64, mode: u32 },
    Symlink { target: PathBuf },
}

/// The bundle's entries by path; a `BTreeMap` so they are written sorted,
/// each directory before what it holds.
type Entries = BTreeMap<String, Item>;

/// The include and exclude globs.
struct Patterns {
    /// `None` selects everything.
    include: Option<GlobSet>,
    exclude: GlobSet,
}

impl Patterns {
    fn new(include: &[String], exclude: &[String]) -> Result<Patterns, BundleError> {
        let include = if include.is_empty() {
            None
        } else {
            Some(glob_set(include)?)
        };
        Ok(Patterns {
            include,
            exclude: glob_set(exclude)?,
        })
    }

    fn excludes(&self, rel: &Path) -> bool {
        let always = rel
            .file_name()
            .is_some_and(|name| ALWAYS_EXCLUDED.iter().any(|never| name == *never));
        always || self.exclude.is_match(rel)
    }

    fn includes(&self, rel: &Path) -> bool {
        self.include.as_ref().is_none_or(|set| set.is_match(rel))
    }
}

fn glob_set(patterns: &[String]) -> Result<GlobSet, BundleError> {
    let mut set = GlobSetBuilder::new();
    for pattern in patterns {
        let glob = GlobBuilder::new(pattern.trim_end_matches('/'))
            .literal_separator(true)
            .build()
            .map_err(|source| BundleError::Glob {
                pattern: pattern.clone(),
                source,
            })?;
        set.add(glob);
    }
    set.build().map_err(|source| BundleError::Glob {
        pattern: patterns.join(" "),
        source,
    })
}

/// Refuses an output inside `dir`: the next build would bundle it.
fn check_output(dir: &Path, out: &Path) -> Result<(), BundleError> {
    let dir_real = fs::canonicalize(dir).map_err(io_error("open", dir))?;
    let out_dir = parent_dir(out);
    let out_dir_real = fs::canonicalize(out_dir).map_err(io_error("open", out_dir))?;
    if out_dir_real.starts_with(&dir_real) {
        return Err(BundleError::OutputInsideDir {
            out: out.to_path_buf(),
            dir: dir.to_path_buf(),
        });
    }
    Ok(())
}

/// Walks `dir` without following symlinks, collecting the selected entries,
/// each checked against the bundle rules.
fn collect(dir: &Path, patterns: &Patterns, limits: &Limits) -> Result<Entries, BundleError> {
    let mut entries = Entries::new();
    // Directories still to read: their path under `dir`, and whether an
    // `include` pattern matched them or a directory above them.
    let mut pending = vec![(PathBuf::new(), false)];
    while let Some((rel_dir, selected_above)) = pending.pop() {
        let at = dir.join(&rel_dir);
        for child in fs::read_dir(&at).map_err(io_error("read directory", &at))? {
            let child = child.map_err(io_error("read directory", &at))?;
            let rel = rel_dir.join(child.file_name());
            if patterns.excludes(&rel) {
                continue;
            }
            let selected = selected_above || patterns.includes(&rel);
            let meta = child
                .metadata()
                .map_err(io_error("inspect", &child.path()))?;
            if meta.is_dir() {
                pending.push((rel.clone(), selected));
            }
            if selected {
                let item = item(dir, &rel, &meta, limits)?;
                insert(&mut entries, &rel, item, limits)?;
            }
        }
    }
    Ok(entries)
}

/// What the entry at `rel` is, refusing file types a bundle cannot hold and
/// symlinks that lead outside it.
fn item(dir: &Path, rel: &Path, meta: &Metadata, limits: &Limits) -> Result<Item, BundleError> {
    let file_type = meta.file_type();
    if file_type.is_dir() {
        return Ok(Item::Dir);
    }
    if file_type.is_file() {
        return Ok(Item::File {
            size: meta.len(),
            mode: normal_mode(meta.permissions().mode(), false),
        });
    }
    let name = rel.to_string_lossy();
    if file_type.is_symlink() {
        let link = dir.join(rel);
        let target = fs::read_link(&link).map_err(io_error("read symlink", &link))?;
        check_link_target(rel, target.as_os_str().as_bytes(), limits)
            .map_err(|rule| refused(&name, rule))?;
        return Ok(Item::Symlink { target });
    }
    let kind = if file_type.is_fifo() {
        "fifo"
    } else if file_type.is_socket() {
        "socket"
    } else if file_type.is_char_device() {
        "character device"
    } else if file_type.is_block_device() {
        "block device"
    } else {
        "unknown file type"
    };
    Err(refused(&name, Rule::SpecialFile { kind }))
}

/// Adds `item` at `rel`, and the directories above it, once its path passes
/// the unpacker's path rules.
fn insert(
    entries: &mut Entries,
    rel: &Path,
    item: Item,
    limits: &Limits,
) -> Result<(), BundleError> {
    let name = rel.to_string_lossy();
    let checked =
        entry_path(rel.as_os_str().as_bytes(), limits).map_err(|rule| refused(&name, rule))?;
    debug_assert_eq!(checked, rel, "a walked path is already normal");
    // `entry_path` accepted the path, so it and its ancestors are UTF-8.
    for above in rel.ancestors().skip(1) {
        if let Some(above) = above.to_str().filter(|above| !above.is_empty()) {
            entries.entry(above.to_owned()).or_insert(Item::Dir);
        }
    }
    entries.insert(name.into_owned(), item);
    Ok(())
}

/// Counts the entries in archive order, refusing the first one past the
/// limits, as the unpacker would.
fn tally(entries: &Entries, limits: &Limits) -> Result<Summary, BundleError> {
    let mut summary = Summary::default();
    for (path, item) in entries {
        let bytes = match item {
            Item::File { size, .. } => *size,
            Item::Dir | Item::Symlink { .. } => 0,
        };
        summary
            .count(bytes, limits)
            .map_err(|rule| refused(path, rule))?;
    }
    Ok(summary)
}

/// Writes the archive to a temporary file beside `out`, then renames it over
/// `out`, so a failed build leaves no partial bundle behind.
fn write_archive(dir: &Path, entries: &Entries, out: &Path) -> Result<(), BundleError> {
    let out_dir = parent_dir(out);
    let temp = tempfile::Builder::new()
        .prefix(".bundle-")
        .tempfile_in(out_dir)
        .map_err(io_error("create a file in", out_dir))?;
    let mut tar = tar::Builder::new(BufWriter::new(temp.as_file()));
    for (path, item) in entries {
        append(&mut tar, dir, path, item, out)?;
    }
    tar.into_inner()
        .and_then(|buffered| {
            buffered
                .into_inner()
                .map_err(io::IntoInnerError::into_error)
        })
        .map_err(io_error("write", out))?;
    temp.persist(out)
        .map_err(|failed| io_error("write", out)(failed.error))?;
    Ok(())
}

fn append<W: Write>(
    tar: &mut tar::Builder<W>,
    dir: &Path,
    path: &str,
    item: &Item,
    out: &Path,
) -> Result<(), BundleError> {
    match item {
        Item::Dir => {
            let mut header = header(EntryType::Directory, EXEC_MODE, 0);
            tar.append_data(&mut header, path, io::empty())
                .map_err(io_error("write", out))
        }
        Item::Symlink { target } => {
            let mut header = header(EntryType::Symlink, LINK_MODE, 0);
            tar.append_link(&mut header, path, target)
                .map_err(io_error("write", out))
        }
        Item::File { size, mode } => {
            let source = dir.join(path);
            let file = File::open(&source).map_err(io_error("read", &source))?;
            let now = file.metadata().map_err(io_error("inspect", &source))?;
            if now.len() != *size {
                return Err(BundleError::Changed { path: source });
            }
            let mut header = header(EntryType::Regular, *mode, *size);
            tar.append_data(&mut header, path, Exact(file.take(*size)))
                .map_err(io_error("bundle", &source))
        }
    }
}

/// A header that says what the entry is and nothing about the disk it came
/// from: no owner, no time.
fn header(entry_type: EntryType, mode: u32, size: u64) -> Header {
    // A ustar header, so a bundle starts with the `ustar` magic that
    // `ArtifactKind::detect` knows bundles by; user and group names and
    // device numbers stay empty.
    let mut header = Header::new_ustar();
    header.set_entry_type(entry_type);
    header.set_mode(mode);
    header.set_size(size);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(BUNDLE_MTIME);
    header
}

/// A file's first `size` bytes, failing if it ends sooner: a file that
/// shrinks while it is read must fail the build, not leave an entry shorter
/// than its header says.
struct Exact(io::Take<File>);

impl Read for Exact {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.0.read(buf)?;
        if n == 0 && !buf.is_empty() && self.0.limit() > 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "it shrank while being bundled",
            ));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::os::unix::net::UnixListener;
    use std::time::{Duration, SystemTime};

    use skyclaw_api::artifacts::{ArtifactKind, KIND_SNIFF_BYTES};
    use tempfile::TempDir;

    use super::super::{FILE_MODE, TargetProblem};
    use super::*;

    /// A directory holding `files` (path, content, mode), parents made.
    fn tree(files: &[(&str, &[u8], u32)]) -> TempDir {
        let dir = TempDir::new().unwrap();
        for (path, content, mode) in files {
            let at = dir.path().join(path);
            fs::create_dir_all(at.parent().unwrap()).unwrap();
            fs::write(&at, content).unwrap();
            fs::set_permissions(&at, fs::Permissions::from_mode(*mode)).unwrap();
        }
        dir
    }

    fn patterns(globs: &[&str]) -> Vec<String> {
        globs.iter().map(|glob| glob.to_string()).collect()
    }

    /// The bundle of `dir` as bytes, built into a directory of its own.
    fn bundle(dir: &Path, include: &[&str], exclude: &[&str]) -> Vec<u8> {
        let out_dir = TempDir::new().unwrap();
        let out = out_dir.path().join("bundle.tar");
        build(dir, &patterns(include), &patterns(exclude), &out).unwrap();
        fs::read(out).unwrap()
    }

    fn build_err(dir: &Path, include: &[&str], exclude: &[&str], limits: &Limits) -> BundleError {
        let out_dir = TempDir::new().unwrap();
        let out = out_dir.path().join("bundle.tar");
        let err = build_with(dir, &patterns(include), &patterns(exclude), &out, limits)
            .expect_err("the build must be refused");
        assert!(!out.exists(), "a refused build leaves no output");
        err
    }

    /// The paths in a bundle, in archive order.
    fn names(bytes: &[u8]) -> Vec<String> {
        let mut archive = tar::Archive::new(bytes);
        archive
            .entries()
            .unwrap()
            .map(|entry| {
                let entry = entry.unwrap();
                String::from_utf8(entry.path_bytes().into_owned()).unwrap()
            })
            .collect()
    }

    fn app() -> TempDir {
        tree(&[
            ("package.json", b"{}", 0o644),
            ("dist/server.js", b"console.log(1)", 0o600),
            ("dist/lib/util.js", b"exports.x = 1", 0o664),
            ("bin/start", b"#!/bin/sh\nexec node dist/server.js\n", 0o700),
            ("node_modules/dep/index.js", b"module.exports = 2", 0o644),
            ("src/server.ts", b"console.log(1 as number)", 0o644),
        ])
    }

    #[test]
    fn the_same_directory_gives_the_same_bytes() {
        let dir = app();
        assert_eq!(bundle(dir.path(), &[], &[]), bundle(dir.path(), &[], &[]));
    }

    #[test]
    fn times_owners_and_other_mode_bits_do_not_change_the_bytes() {
        let dir = app();
        let before = bundle(dir.path(), &[], &[]);
        let server = dir.path().join("dist/server.js");
        let long_ago = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        File::options()
            .write(true)
            .open(&server)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        fs::set_permissions(&server, fs::Permissions::from_mode(0o640)).unwrap();
        fs::set_permissions(
            dir.path().join("bin/start"),
            fs::Permissions::from_mode(0o4711),
        )
        .unwrap();
        fs::set_permissions(dir.path().join("dist"), fs::Permissions::from_mode(0o700)).unwrap();
        // Only root can give a file away; anyone else keeps their own uid.
        let owner = if nix::unistd::geteuid().is_root() {
            4242
        } else {
            nix::unistd::geteuid().as_raw()
        };
        std::os::unix::fs::chown(&server, Some(owner), Some(owner)).unwrap();
        assert_eq!(bundle(dir.path(), &[], &[]), before);
    }

    #[test]
    fn different_content_gives_different_bytes() {
        let dir = app();
        let before = bundle(dir.path(), &[], &[]);
        fs::write(dir.path().join("dist/server.js"), b"console.log(2)").unwrap();
        assert_ne!(bundle(dir.path(), &[], &[]), before);
    }

    #[test]
    fn headers_carry_no_owner_time_or_stray_mode() {
        let dir = app();
        let bytes = bundle(dir.path(), &[], &[]);
        let mut archive = tar::Archive::new(&bytes[..]);
        for entry in archive.entries().unwrap() {
            let entry = entry.unwrap();
            let header = entry.header();
            let path = String::from_utf8(entry.path_bytes().into_owned()).unwrap();
            assert_eq!(header.uid().unwrap(), 0, "{path}");
            assert_eq!(header.gid().unwrap(), 0, "{path}");
            assert_eq!(header.mtime().unwrap(), BUNDLE_MTIME, "{path}");
            assert_eq!(header.username_bytes(), Some(&b""[..]), "{path}");
            assert_eq!(header.groupname_bytes(), Some(&b""[..]), "{path}");
            let expected = match path.as_str() {
                "bin" | "dist" | "dist/lib" | "node_modules" | "node_modules/dep" | "src"
                | "bin/start" => EXEC_MODE,
                _ => FILE_MODE,
            };
            assert_eq!(header.mode().unwrap(), expected, "{path}");
        }
    }

    #[test]
    fn entries_are_sorted_with_directories_first() {
        let dir = app();
        assert_eq!(
            names(&bundle(dir.path(), &[], &[])),
            [
                "bin",
                "bin/start",
                "dist",
                "dist/lib",
                "dist/lib/util.js",
                "dist/server.js",
                "node_modules",
                "node_modules/dep",
                "node_modules/dep/index.js",
                "package.json",
                "src",
                "src/server.ts",
            ]
        );
    }

    #[test]
    fn a_bundle_is_detected_as_a_bundle() {
        let dir = app();
        let bytes = bundle(dir.path(), &[], &[]);
        let head = &bytes[..KIND_SNIFF_BYTES.min(bytes.len())];
        assert_eq!(ArtifactKind::detect(head), ArtifactKind::Bundle);
    }

    #[test]
    fn include_selects_and_exclude_drops() {
        let dir = app();
        assert_eq!(
            names(&bundle(dir.path(), &["dist", "package.json"], &["**/lib"])),
            ["dist", "dist/server.js", "package.json"]
        );
        assert_eq!(
            names(&bundle(dir.path(), &["**/*.js"], &["node_modules/"])),
            ["dist", "dist/lib", "dist/lib/util.js", "dist/server.js"]
        );
        // `*` stays within one component.
        assert_eq!(
            names(&bundle(dir.path(), &["*.json", "*.js"], &[])),
            ["package.json"]
        );
        assert_eq!(
            names(&bundle(
                dir.path(),
                &[],
                &["src", "node_modules", "bin", "dist/lib"]
            )),
            ["dist", "dist/server.js", "package.json"]
        );
    }

    #[test]
    fn git_is_never_bundled() {
        let dir = tree(&[
            ("a.js", b"1", 0o644),
            (".git/HEAD", b"ref: refs/heads/main", 0o644),
            ("vendor/sub/.git", b"gitdir: ../../.git/modules/sub", 0o644),
            ("vendor/sub/b.js", b"2", 0o644),
        ]);
        let expected = ["a.js", "vendor", "vendor/sub", "vendor/sub/b.js"];
        assert_eq!(names(&bundle(dir.path(), &[], &[])), expected);
        assert_eq!(names(&bundle(dir.path(), &["**"], &[])), expected);
        // Not even when asked for by name.
        let err = build_err(dir.path(), &[".git"], &[], &Limits::BUNDLE);
        assert!(matches!(err, BundleError::Empty { .. }), "{err:?}");
    }

    #[test]
    fn symlinks_inside_are_kept_and_escaping_ones_refused() {
        let dir = tree(&[("lib/real.js", b"1", 0o644)]);
        symlink("real.js", dir.path().join("lib/alias.js")).unwrap();
        symlink("../lib", dir.path().join("lib/self")).unwrap();
        assert_eq!(
            names(&bundle(dir.path(), &[], &[])),
            ["lib", "lib/alias.js", "lib/real.js", "lib/self"]
        );

        for (name, target, problem) in [
            ("up", "../../outside", TargetProblem::Escapes),
            ("abs", "/etc/passwd", TargetProblem::Absolute),
            ("twisty", "lib/../../x", TargetProblem::ParentAfterName),
        ] {
            let dir = tree(&[("a.js", b"1", 0o644)]);
            symlink(target, dir.path().join(name)).unwrap();
            let err = build_err(dir.path(), &[], &[], &Limits::BUNDLE);
            assert!(
                matches!(
                    &err,
                    BundleError::Refused { entry, rule: Rule::LinkTarget { problem: p, .. } }
                        if entry == name && *p == problem
                ),
                "{err:?}"
            );
            assert!(err.to_string().contains(name), "{err}");
        }
    }

    #[test]
    fn special_files_are_refused() {
        let dir = tree(&[("a.js", b"1", 0o644)]);
        let _listener = UnixListener::bind(dir.path().join("control.sock")).unwrap();
        let err = build_err(dir.path(), &[], &[], &Limits::BUNDLE);
        assert!(
            matches!(&err, BundleError::Refused { entry, rule: Rule::SpecialFile { kind: "socket" } }
                if entry == "control.sock"),
            "{err:?}"
        );
        // Excluded, it is no longer in the way.
        assert_eq!(names(&bundle(dir.path(), &[], &["*.sock"])), ["a.js"]);
    }

    #[test]
    fn a_bundle_the_unpacker_would_refuse_is_not_built() {
        let dir = tree(&[
            ("a", b"12345", 0o644),
            ("b", b"12345", 0o644),
            ("c", b"12345", 0o644),
        ]);
        let entries = Limits {
            entries: 2,
            ..Limits::BUNDLE
        };
        let err = build_err(dir.path(), &[], &[], &entries);
        assert!(
            matches!(&err, BundleError::Refused { entry, rule: Rule::TooManyEntries { limit: 2 } }
                if entry == "c"),
            "{err:?}"
        );
        let bytes = Limits {
            bytes: 9,
            ..Limits::BUNDLE
        };
        let err = build_err(dir.path(), &[], &[], &bytes);
        assert!(
            matches!(&err, BundleError::Refused { entry, rule: Rule::TooManyBytes { limit: 9 } }
                if entry == "b"),
            "{err:?}"
        );
        let dir = tree(&[("deep/name.js", b"1", 0o644)]);
        let paths = Limits {
            path_bytes: 8,
            ..Limits::BUNDLE
        };
        let err = build_err(dir.path(), &[], &[], &paths);
        assert!(
            matches!(&err, BundleError::Refused { entry, rule: Rule::PathTooLong { limit: 8 } }
                if entry == "deep/name.js"),
            "{err:?}"
        );
    }

    #[test]
    fn an_empty_selection_is_refused() {
        let dir = app();
        let err = build_err(dir.path(), &["nothing/*"], &[], &Limits::BUNDLE);
        assert!(matches!(err, BundleError::Empty { .. }), "{err:?}");
    }

    #[test]
    fn a_bad_glob_is_refused_by_name() {
        let dir = app();
        let err = build_err(dir.path(), &["dist/[a"], &[], &Limits::BUNDLE);
        assert!(
            matches!(&err, BundleError::Glob { pattern, .. } if pattern == "dist/[a"),
            "{err:?}"
        );
    }

    #[test]
    fn an_output_inside_the_directory_is_refused() {
        let dir = app();
        let out = dir.path().join("dist/bundle.tar");
        let err = build(dir.path(), &[], &[], &out).expect_err("output inside the directory");
        assert!(
            matches!(err, BundleError::OutputInsideDir { .. }),
            "{err:?}"
        );
        assert!(!out.exists());
    }
}
