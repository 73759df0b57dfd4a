//! Unpacking a bundle on a host: every entry checked against the bundle rules
//! before anything is written for it, into a staging directory beside the
//! destination that is renamed into place only once the whole archive is in.

use std::borrow::Cow;
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::EntryType;

use super::{
    BundleError, EXEC_MODE, Limits, Rule, Summary, UnpackSummary, check_link_target, entry_path,
    io_error, normal_mode, parent_dir, refused,
};

/// Prefix of the staging directories made beside a destination. One is left
/// behind only by a crash; whoever owns that directory may remove it.
pub const UNPACK_STAGING_PREFIX: &str = ".bundle-unpack-";

/// Mode a file is created with while its bytes are written: no one else may
/// open it before it is complete and given its bundle mode.
const WRITING_MODE: u32 = 0o600;

/// Unpacks the bundle `archive` into `dest`, which must not exist yet or be
/// an empty directory. On any refusal or error nothing is left behind: `dest`
/// is as it was, and nothing was written outside it.
///
/// Blocking: async callers run it on a blocking thread.
pub fn unpack(archive: &Path, dest: &Path) -> Result<UnpackSummary, BundleError> {
    unpack_with(archive, dest, &Limits::BUNDLE)
}

fn unpack_with(archive: &Path, dest: &Path, limits: &Limits) -> Result<Summary, BundleError> {
    check_destination(dest)?;
    let parent = parent_dir(dest);
    // Dropped (and so removed) on every early return.
    let mut staging = tempfile::Builder::new()
        .prefix(UNPACK_STAGING_PREFIX)
        .tempdir_in(parent)
        .map_err(io_error("create a staging directory in", parent))?;
    let summary = Unpacker::new(staging.path(), limits).unpack(archive)?;
    set_mode(staging.path(), EXEC_MODE)?;
    // rename(2) replaces an empty directory, and fails on anything else.
    fs::rename(staging.path(), dest).map_err(io_error("move the unpacked bundle to", dest))?;
    // The staging path is now `dest`'s: it must outlive `staging`.
    staging.disable_cleanup(true);
    Ok(summary)
}

/// Refuses a destination that exists and is anything but an empty directory.
fn check_destination(dest: &Path) -> Result<(), BundleError> {
    let not_empty = || BundleError::DestinationNotEmpty {
        path: dest.to_path_buf(),
    };
    match fs::symlink_metadata(dest) {
        Err(missing) if missing.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_error("inspect", dest)(source)),
        Ok(meta) if !meta.is_dir() => Err(not_empty()),
        Ok(_) => {
            let mut children = fs::read_dir(dest).map_err(io_error("read directory", dest))?;
            match children.next() {
                None => Ok(()),
                Some(_) => Err(not_empty()),
            }
        }
    }
}

/// What an entry is once unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    File,
    Symlink,
}

/// The kind of entry an archive's entry type makes, refusing hard links and
/// every special file.
fn kind(entry_type: EntryType) -> Result<Kind, Rule> {
    let special = match entry_type {
        EntryType::Regular => return Ok(Kind::File),
        EntryType::Directory => return Ok(Kind::Dir),
        EntryType::Symlink => return Ok(Kind::Symlink),
        // A hard link may name any file on the host, /etc/passwd included;
        // the builder never writes one.
        EntryType::Link => return Err(Rule::HardLink),
        EntryType::Char => "character device",
        EntryType::Block => "block device",
        EntryType::Fifo => "fifo",
        EntryType::Continuous => "contiguous file",
        EntryType::GNUSparse => "sparse file",
        EntryType::XGlobalHeader => "pax global header",
        _ => "unknown type",
    };
    Err(Rule::SpecialFile { kind: special })
}

/// An entry that passed the rules it must pass on its own.
struct Checked {
    /// Relative to the destination; empty for the root.
    path: PathBuf,
    kind: Kind,
    /// File bytes, 0 for anything but a file.
    size: u64,
    /// A symlink's target, empty for anything else.
    target: Vec<u8>,
}

/// One unpack in progress under `root`. `written` records every path made,
/// so an entry's parents are known to be directories made here, never
/// symlinks, without asking the filesystem.
struct Unpacker<'a> {
    root: &'a Path,
    limits: &'a Limits,
    written: HashMap<PathBuf, Kind>,
    summary: Summary,
}

impl<'a> Unpacker<'a> {
    fn new(root: &'a Path, limits: &'a Limits) -> Unpacker<'a> {
        Unpacker {
            root,
            limits,
            written: HashMap::new(),
            summary: Summary::default(),
        }
    }

    fn unpack(mut self, archive: &Path) -> Result<Summary, BundleError> {
        let file = File::open(archive).map_err(io_error("open", archive))?;
        let mut tar = tar::Archive::new(BufReader::new(file));
        for entry in tar.entries().map_err(io_error("read", archive))? {
            let mut entry = entry.map_err(io_error("read", archive))?;
            self.entry(&mut entry, archive)?;
        }
        Ok(self.summary)
    }

    /// Checks one entry against every rule, then writes it.
    fn entry<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        archive: &Path,
    ) -> Result<(), BundleError> {
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let checked = self.check(entry).map_err(|rule| refused(&name, rule))?;
        if checked.path.as_os_str().is_empty() {
            // `./`, as `tar -C dir .` writes it: the root, which exists.
            return Ok(());
        }
        self.make_parents(&checked.path, &name)?;
        match self.written.get(&checked.path) {
            None => self.write(entry, checked, archive),
            // A directory listed after something inside it made it.
            Some(Kind::Dir) if checked.kind == Kind::Dir => Ok(()),
            Some(_) => Err(refused(&name, Rule::Duplicate)),
        }
    }

    /// The rules one entry must pass on its own, before anything is written
    /// for it: its kind, the bounds, its path and its symlink target.
    fn check<R: Read>(&mut self, entry: &tar::Entry<'_, R>) -> Result<Checked, Rule> {
        let kind = kind(entry.header().entry_type())?;
        let size = if kind == Kind::File { entry.size() } else { 0 };
        self.summary.count(size, self.limits)?;
        let path = entry_path(&entry.path_bytes(), self.limits)?;
        if path.as_os_str().is_empty() && kind != Kind::Dir {
            return Err(Rule::EmptyPath);
        }
        let target = match kind {
            Kind::Symlink => {
                let target = entry.link_name_bytes().unwrap_or(Cow::Borrowed(&[]));
                check_link_target(&path, &target, self.limits)?;
                target.into_owned()
            }
            Kind::Dir | Kind::File => Vec::new(),
        };
        Ok(Checked {
            path,
            kind,
            size,
            target,
        })
    }

    /// Writes a checked entry whose parents exist and whose path is free.
    fn write<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        checked: Checked,
        archive: &Path,
    ) -> Result<(), BundleError> {
        let at = self.root.join(&checked.path);
        match checked.kind {
            Kind::Dir => make_dir(&at)?,
            Kind::File => {
                let mode = entry.header().mode().map_err(io_error("read", archive))?;
                write_file(entry, &at, checked.size, normal_mode(mode, false))?;
            }
            Kind::Symlink => std::os::unix::fs::symlink(OsStr::from_bytes(&checked.target), &at)
                .map_err(io_error("create symlink", &at))?,
        }
        self.written.insert(checked.path, checked.kind);
        Ok(())
    }

    /// Makes the directories above `path` that no entry made yet, refusing a
    /// path through a symlink or a file.
    fn make_parents(&mut self, path: &Path, name: &str) -> Result<(), BundleError> {
        let mut above = PathBuf::new();
        for component in path.parent().into_iter().flat_map(Path::components) {
            above.push(component);
            let shown = || above.to_string_lossy().into_owned();
            match self.written.get(&above) {
                Some(Kind::Dir) => {}
                Some(Kind::Symlink) => {
                    return Err(refused(name, Rule::ThroughSymlink { link: shown() }));
                }
                Some(Kind::File) => {
                    return Err(refused(name, Rule::ParentNotDirectory { parent: shown() }));
                }
                None => {
                    make_dir(&self.root.join(&above))?;
                    self.written.insert(above.clone(), Kind::Dir);
                }
            }
        }
        Ok(())
    }
}

/// Makes a directory that must not exist yet.
fn make_dir(at: &Path) -> Result<(), BundleError> {
    fs::create_dir(at).map_err(io_error("create directory", at))?;
    set_mode(at, EXEC_MODE)
}

/// Writes a new file (never one that exists, nor through a symlink) with
/// exactly `size` bytes from `data`, then gives it `mode`.
fn write_file(data: &mut impl Read, at: &Path, size: u64, mode: u32) -> Result<(), BundleError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(WRITING_MODE)
        .open(at)
        .map_err(io_error("create", at))?;
    let copied = io::copy(data, &mut file).map_err(io_error("write", at))?;
    if copied != size {
        return Err(io_error("write", at)(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the archive ends inside this file",
        )));
    }
    file.set_permissions(Permissions::from_mode(mode))
        .map_err(io_error("set the mode of", at))
}

/// Sets a mode whatever the process's umask.
fn set_mode(at: &Path, mode: u32) -> Result<(), BundleError> {
    fs::set_permissions(at, Permissions::from_mode(mode)).map_err(io_error("set the mode of", at))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use tar::Header;
    use tempfile::TempDir;

    use super::super::{FILE_MODE, TargetProblem, build};
    use super::*;

    /// A temporary directory holding `archive.tar` and `parent/`, in which
    /// `dest` is to be unpacked.
    struct Scene {
        tmp: TempDir,
    }

    impl Scene {
        fn new(archive: Vec<u8>) -> Scene {
            let tmp = TempDir::new().unwrap();
            fs::write(tmp.path().join("archive.tar"), archive).unwrap();
            fs::create_dir(tmp.path().join("parent")).unwrap();
            Scene { tmp }
        }

        fn archive(&self) -> PathBuf {
            self.tmp.path().join("archive.tar")
        }

        fn parent(&self) -> PathBuf {
            self.tmp.path().join("parent")
        }

        fn dest(&self) -> PathBuf {
            self.parent().join("dest")
        }

        fn unpack(&self, limits: &Limits) -> Result<Summary, BundleError> {
            unpack_with(&self.archive(), &self.dest(), limits)
        }

        /// Unpacking is refused for `entry` by a rule `matches` accepts, and
        /// leaves nothing behind: no `dest`, nothing beside it, nothing
        /// beside the archive.
        fn assert_refused(&self, limits: &Limits, entry: &str, matches: impl Fn(&Rule) -> bool) {
            let err = self
                .unpack(limits)
                .expect_err("the archive must be refused");
            match &err {
                BundleError::Refused { entry: named, rule } => {
                    assert_eq!(named, entry, "{err}");
                    assert!(matches(rule), "unexpected rule: {err}");
                }
                other => panic!("refused for the wrong reason: {other:?}"),
            }
            assert!(err.to_string().contains(entry), "{err}");
            assert_eq!(listing(&self.parent()), Vec::<String>::new());
            assert_eq!(listing(self.tmp.path()), ["archive.tar", "parent"]);
        }
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|child| child.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// An archive made by hand: names and link targets are written raw into
    /// the header, past every check the tar crate's setters make.
    struct Crafted {
        builder: tar::Builder<Vec<u8>>,
    }

    impl Crafted {
        fn new() -> Crafted {
            Crafted {
                builder: tar::Builder::new(Vec::new()),
            }
        }

        fn raw(
            mut self,
            name: &[u8],
            entry_type: EntryType,
            link: &[u8],
            data: &[u8],
            mode: u32,
        ) -> Crafted {
            let mut header = Header::new_ustar();
            header.as_old_mut().name[..name.len()].copy_from_slice(name);
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link);
            header.set_entry_type(entry_type);
            header.set_size(data.len() as u64);
            header.set_mode(mode);
            header.set_cksum();
            self.builder.append(&header, data).unwrap();
            self
        }

        fn file(self, name: &str, data: &[u8]) -> Crafted {
            self.raw(name.as_bytes(), EntryType::Regular, b"", data, 0o644)
        }

        fn dir(self, name: &str) -> Crafted {
            self.raw(name.as_bytes(), EntryType::Directory, b"", b"", 0o755)
        }

        fn symlink(self, name: &str, target: &str) -> Crafted {
            self.raw(
                name.as_bytes(),
                EntryType::Symlink,
                target.as_bytes(),
                b"",
                0o777,
            )
        }

        fn bytes(self) -> Vec<u8> {
            self.builder.into_inner().unwrap()
        }
    }

    fn no_limits() -> Limits {
        Limits::BUNDLE
    }

    /// A directory to bundle: an executable, a private file (readable by all
    /// once bundled), an empty directory, a symlink and a path long enough to
    /// need the GNU long-name extension.
    fn app() -> (TempDir, String) {
        let dir = TempDir::new().unwrap();
        let deep = format!(
            "{}/{}/{}.js",
            "d".repeat(100),
            "e".repeat(100),
            "f".repeat(90)
        );
        let files: [(&str, &[u8], u32); 4] = [
            ("bin/start", b"#!/bin/sh\necho hi\n", 0o700),
            ("dist/server.js", b"console.log(1)", 0o600),
            ("package.json", b"{}", 0o664),
            (&deep, b"deep", 0o644),
        ];
        for (path, content, mode) in files {
            let at = dir.path().join(path);
            fs::create_dir_all(at.parent().unwrap()).unwrap();
            fs::write(&at, content).unwrap();
            fs::set_permissions(&at, Permissions::from_mode(mode)).unwrap();
        }
        fs::create_dir(dir.path().join("empty")).unwrap();
        std::os::unix::fs::symlink("../dist/server.js", dir.path().join("bin/server.js")).unwrap();
        (dir, deep)
    }

    fn built(dir: &Path) -> (Vec<u8>, Summary) {
        let out_dir = TempDir::new().unwrap();
        let out = out_dir.path().join("bundle.tar");
        let summary = build(dir, &[], &[], &out).unwrap();
        (fs::read(out).unwrap(), summary)
    }

    fn mode_of(path: &Path) -> u32 {
        fs::symlink_metadata(path).unwrap().mode() & 0o7777
    }

    #[test]
    fn a_built_bundle_round_trips() {
        let (dir, deep) = app();
        let (bytes, built) = built(dir.path());
        let scene = Scene::new(bytes);
        let unpacked = scene.unpack(&no_limits()).unwrap();
        assert_eq!(unpacked, built);
        assert_eq!(unpacked.entries, 10);
        let dest = scene.dest();
        assert_eq!(listing(&scene.parent()), ["dest"]);
        assert_eq!(
            listing(&dest),
            [
                "bin",
                "d".repeat(100).as_str(),
                "dist",
                "empty",
                "package.json"
            ]
        );
        assert_eq!(
            fs::read(dest.join("bin/start")).unwrap(),
            b"#!/bin/sh\necho hi\n"
        );
        assert_eq!(fs::read(dest.join(&deep)).unwrap(), b"deep");
        assert_eq!(
            fs::read(dest.join("bin/server.js")).unwrap(),
            b"console.log(1)"
        );
        assert_eq!(
            fs::read_link(dest.join("bin/server.js")).unwrap(),
            Path::new("../dist/server.js")
        );
        assert_eq!(mode_of(&dest), EXEC_MODE);
        assert_eq!(mode_of(&dest.join("empty")), EXEC_MODE);
        assert_eq!(mode_of(&dest.join("bin/start")), EXEC_MODE);
        assert_eq!(mode_of(&dest.join("dist/server.js")), FILE_MODE);
        assert_eq!(mode_of(&dest.join("package.json")), FILE_MODE);
    }

    #[test]
    fn an_existing_empty_destination_is_filled() {
        let (dir, _) = app();
        let scene = Scene::new(built(dir.path()).0);
        fs::create_dir(scene.dest()).unwrap();
        scene.unpack(&no_limits()).unwrap();
        assert!(scene.dest().join("package.json").is_file());
    }

    #[test]
    fn a_destination_with_anything_in_it_is_refused() {
        let (dir, _) = app();
        let scene = Scene::new(built(dir.path()).0);
        fs::create_dir(scene.dest()).unwrap();
        fs::write(scene.dest().join("old"), b"old").unwrap();
        let err = scene.unpack(&no_limits()).expect_err("dest is not empty");
        assert!(
            matches!(err, BundleError::DestinationNotEmpty { .. }),
            "{err:?}"
        );
        assert_eq!(listing(&scene.parent()), ["dest"]);
        assert_eq!(listing(&scene.dest()), ["old"]);

        fs::remove_dir_all(scene.dest()).unwrap();
        fs::write(scene.dest(), b"a file").unwrap();
        let err = scene.unpack(&no_limits()).expect_err("dest is a file");
        assert!(
            matches!(err, BundleError::DestinationNotEmpty { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn modes_keep_the_execute_bit_and_nothing_else() {
        let archive = Crafted::new()
            .raw(b"setuid", EntryType::Regular, b"", b"x", 0o4777)
            .raw(b"shared", EntryType::Regular, b"", b"x", 0o666)
            .raw(b"private", EntryType::Regular, b"", b"x", 0o600)
            .raw(b"sticky", EntryType::Directory, b"", b"", 0o1777)
            .bytes();
        let scene = Scene::new(archive);
        scene.unpack(&no_limits()).unwrap();
        let dest = scene.dest();
        assert_eq!(mode_of(&dest.join("setuid")), EXEC_MODE);
        assert_eq!(mode_of(&dest.join("shared")), FILE_MODE);
        assert_eq!(mode_of(&dest.join("private")), FILE_MODE);
        assert_eq!(mode_of(&dest.join("sticky")), EXEC_MODE);
    }

    #[test]
    fn archives_made_by_tar_dot_unpack() {
        let archive = Crafted::new()
            .dir("./")
            .file("./lib/a.js", b"a")
            .dir("./lib/")
            .bytes();
        let scene = Scene::new(archive);
        let summary = scene.unpack(&no_limits()).unwrap();
        assert_eq!(
            summary,
            Summary {
                entries: 3,
                bytes: 1
            }
        );
        assert_eq!(fs::read(scene.dest().join("lib/a.js")).unwrap(), b"a");
    }

    #[test]
    fn a_parent_escape_is_refused() {
        let scene = Scene::new(
            Crafted::new()
                .file("ok", b"1")
                .file("../escape", b"x")
                .bytes(),
        );
        scene.assert_refused(&no_limits(), "../escape", |rule| {
            *rule == Rule::ParentComponent
        });
    }

    #[test]
    fn an_absolute_path_is_refused() {
        let scene = Scene::new(
            Crafted::new()
                .file("ok", b"1")
                .file("/abs/path", b"x")
                .bytes(),
        );
        scene.assert_refused(&no_limits(), "/abs/path", |rule| {
            *rule == Rule::AbsolutePath
        });
        assert!(!Path::new("/abs").exists());
    }

    #[test]
    fn a_parent_component_inside_a_path_is_refused() {
        let scene = Scene::new(Crafted::new().dir("a").file("a/../../x", b"x").bytes());
        scene.assert_refused(&no_limits(), "a/../../x", |rule| {
            *rule == Rule::ParentComponent
        });
    }

    #[test]
    fn a_symlink_to_an_absolute_path_is_refused_before_anything_goes_through_it() {
        let archive = Crafted::new()
            .file("ok", b"1")
            .symlink("link", "/etc")
            .file("link/passwd", b"root::0:0::/:/bin/sh\n")
            .bytes();
        let scene = Scene::new(archive);
        scene.assert_refused(&no_limits(), "link", |rule| {
            matches!(rule, Rule::LinkTarget { target, problem: TargetProblem::Absolute } if target == "/etc")
        });
    }

    #[test]
    fn a_path_through_a_symlink_is_refused() {
        let archive = Crafted::new()
            .dir("sub")
            .symlink("link", "sub")
            .file("link/passwd", b"x")
            .bytes();
        let scene = Scene::new(archive);
        scene.assert_refused(
            &no_limits(),
            "link/passwd",
            |rule| matches!(rule, Rule::ThroughSymlink { link } if link == "link"),
        );
    }

    #[test]
    fn an_escaping_symlink_is_refused() {
        let archive = Crafted::new()
            .dir("a")
            .symlink("a/out", "../../outside")
            .bytes();
        let scene = Scene::new(archive);
        scene.assert_refused(&no_limits(), "a/out", |rule| {
            matches!(
                rule,
                Rule::LinkTarget {
                    problem: TargetProblem::Escapes,
                    ..
                }
            )
        });
    }

    #[test]
    fn a_hard_link_is_refused() {
        let archive = Crafted::new()
            .file("ok", b"1")
            .raw(b"passwd", EntryType::Link, b"/etc/passwd", b"", 0o644)
            .bytes();
        let scene = Scene::new(archive);
        scene.assert_refused(&no_limits(), "passwd", |rule| *rule == Rule::HardLink);
    }

    #[test]
    fn devices_and_fifos_are_refused() {
        for (entry_type, kind) in [
            (EntryType::Char, "character device"),
            (EntryType::Block, "block device"),
            (EntryType::Fifo, "fifo"),
        ] {
            let mut header = Header::new_ustar();
            header.set_path("dev").unwrap();
            header.set_entry_type(entry_type);
            header.set_device_major(1).unwrap();
            header.set_device_minor(3).unwrap();
            header.set_size(0);
            header.set_cksum();
            let mut crafted = Crafted::new().file("ok", b"1");
            crafted.builder.append(&header, io::empty()).unwrap();
            let scene = Scene::new(crafted.bytes());
            scene.assert_refused(&no_limits(), "dev", |rule| {
                *rule == Rule::SpecialFile { kind }
            });
        }
    }

    #[test]
    fn one_entry_more_than_the_cap_is_refused() {
        let limits = Limits {
            entries: 3,
            ..Limits::BUNDLE
        };
        let at_cap = Crafted::new()
            .file("a", b"")
            .file("b", b"")
            .file("c", b"")
            .bytes();
        let scene = Scene::new(at_cap);
        assert_eq!(scene.unpack(&limits).unwrap().entries, 3);

        let over = Crafted::new()
            .file("a", b"")
            .file("b", b"")
            .file("c", b"")
            .file("d", b"")
            .bytes();
        let scene = Scene::new(over);
        scene.assert_refused(&limits, "d", |rule| {
            *rule == Rule::TooManyEntries { limit: 3 }
        });
    }

    #[test]
    fn bytes_over_the_cap_are_refused() {
        let limits = Limits {
            bytes: 10,
            ..Limits::BUNDLE
        };
        let scene = Scene::new(
            Crafted::new()
                .file("a", b"123456")
                .file("b", b"123456")
                .bytes(),
        );
        scene.assert_refused(&limits, "b", |rule| {
            *rule == Rule::TooManyBytes { limit: 10 }
        });
    }

    #[test]
    fn a_path_over_the_cap_is_refused() {
        let limits = Limits {
            path_bytes: 8,
            ..Limits::BUNDLE
        };
        let scene = Scene::new(
            Crafted::new()
                .file("12345678", b"")
                .file("123456789", b"")
                .bytes(),
        );
        scene.assert_refused(&limits, "123456789", |rule| {
            *rule == Rule::PathTooLong { limit: 8 }
        });
    }

    #[test]
    fn a_second_entry_at_the_same_path_is_refused() {
        let archive = Crafted::new()
            .symlink("config.js", "real.js")
            .file("config.js", b"overwritten")
            .bytes();
        let scene = Scene::new(archive);
        scene.assert_refused(&no_limits(), "config.js", |rule| *rule == Rule::Duplicate);
    }

    #[test]
    fn a_path_under_a_file_is_refused() {
        let archive = Crafted::new().file("a", b"1").file("a/b", b"2").bytes();
        let scene = Scene::new(archive);
        scene.assert_refused(
            &no_limits(),
            "a/b",
            |rule| matches!(rule, Rule::ParentNotDirectory { parent } if parent == "a"),
        );
    }

    #[test]
    fn a_truncated_archive_leaves_nothing_behind() {
        let mut archive = Crafted::new()
            .file("ok", b"1")
            .file("big", &[7; 4096])
            .bytes();
        archive.truncate(512 * 4);
        let scene = Scene::new(archive);
        let err = scene
            .unpack(&no_limits())
            .expect_err("the archive is cut short");
        assert!(matches!(err, BundleError::Io { .. }), "{err:?}");
        assert_eq!(listing(&scene.parent()), Vec::<String>::new());
    }
}
