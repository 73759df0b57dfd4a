//! Confinement of native jobs: who a job's processes run as, what of the
//! machine they see, how many of them there may be and how much memory each
//! may take, and that none of them outlives the job or the daemon.
//!
//! Every native process a host starts (shell jobs, OpenClaw turns, the
//! OpenClaw probe) is started by [`Confiner::spawn`]: cloned straight into
//! namespaces of its own, it drops its privileges before it execs
//! (`child`), and the daemon holds it by a pidfd (`process`).
//!
//! - **A user of its own.** A root daemon gives each running job its own uid
//!   (and gid) from a dedicated range (`--job-uids`, in the manner of
//!   systemd's `DynamicUser`), with no supplementary groups. A daemon that is
//!   not root runs jobs as its own user only when the owner allowed it
//!   (`--allow-same-user-jobs`), inside a user namespace. Jobs never run as
//!   root, get `no_new_privs`, and have no capabilities.
//! - **Its own PID namespace.** The job's program is the namespace's init:
//!   when it ends, or is killed, the kernel kills every process in the job,
//!   wherever it moved (`setsid`, double forks). It dies with the daemon
//!   (`PR_SET_PDEATHSIG`), and a starting root host kills whatever an earlier
//!   run left under its uids.
//! - **Its own view of the files.** A private mount namespace: a fresh
//!   `/proc` that shows only the job's processes, the job's working directory
//!   as `/tmp` (also `/var/tmp` and `$HOME`), an empty `/dev/shm` of its own,
//!   and the daemon's data directory (and any `--hide-path`) covered by an
//!   empty read-only file system. SysV IPC is private too.
//! - **Caps.** A process-count cap (`RLIMIT_NPROC`, counted per job because
//!   each job has a uid, or a user namespace, of its own), a memory cap per
//!   process (`RLIMIT_DATA`), an open-file cap and no core dumps.
//!
//! Architecture invariant: no native process is ever spawned unconfined; a
//! host that cannot confine (not root, no same-user opt-in, or namespaces
//! unavailable) offers no native work at all.

mod child;
mod leftovers;
mod process;
mod uids;

use std::collections::BTreeMap;
use std::ffi::{CString, OsString, c_char};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use nix::fcntl::OFlag;
use nix::unistd::{Gid, Uid};

use crate::HostError;
use child::{Caps, Plan, Switch};
pub(crate) use process::Process;
use uids::UidPool;

/// The uids (and gids) a root host gives its jobs by default: 65,536 ids in a
/// stretch that systemd's user and group ranges leave unassigned (above the
/// containers' 524288–1879048191, below 2^31 where signed-id bugs live), so
/// that no account and no container owns files under them.
pub const DEFAULT_JOB_UIDS: UidRange = UidRange {
    first: 1_900_000_000,
    last: 1_900_065_535,
};
/// Memory one job process may allocate by default (`RLIMIT_DATA`: heap and
/// private writable mappings, not reserved address space): room for a node
/// or Python program, and a bound on a runaway one.
pub const DEFAULT_JOB_MEMORY_MB: u64 = 2048;
/// Processes and threads one job may have at once by default: node runs
/// about a dozen threads, builds a few dozen processes; a fork bomb stops here.
pub const DEFAULT_JOB_MAX_PROCESSES: u64 = 256;
/// Files one job process may hold open: plenty for a server, and a bound on
/// the kernel memory a descriptor leak can take.
const JOB_MAX_OPEN_FILES: u64 = 4096;
/// Size of the job's private `/dev/shm`: its pages are not counted against
/// the memory cap, so they get a small bound of their own.
const JOB_SHM_BYTES: u64 = 64 * 1024 * 1024;
/// `$HOME`, `$TMPDIR` and the working directory inside every job: its own
/// empty directory, mounted over `/tmp` in its mount namespace.
pub const JOB_HOME: &str = "/tmp";
/// Bytes in a MiB, the unit of the memory cap.
const MIB: u64 = 1024 * 1024;

/// Who native jobs run as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobUsers {
    /// Each running job gets a uid (and gid) of its own from this range; the
    /// daemon must be root.
    Range(UidRange),
    /// Jobs run as the daemon's own user, in a user namespace; the owner
    /// asked for it (`--allow-same-user-jobs`). They can read whatever that
    /// user can, except what the mount namespace hides.
    SameUser,
}

impl JobUsers {
    /// What a daemon gets when the owner says nothing: users of their own
    /// when it runs as root, no native work otherwise.
    pub fn default_for_this_process() -> Option<JobUsers> {
        Uid::effective()
            .is_root()
            .then_some(JobUsers::Range(DEFAULT_JOB_UIDS))
    }
}

/// An inclusive range of uids, written `FIRST-LAST`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidRange {
    pub first: u32,
    pub last: u32,
}

impl UidRange {
    /// How many ids the range holds (never zero).
    pub fn count(&self) -> u64 {
        u64::from(self.last) - u64::from(self.first) + 1
    }

    pub fn contains(&self, id: u32) -> bool {
        (self.first..=self.last).contains(&id)
    }
}

impl std::fmt::Display for UidRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl FromStr for UidRange {
    type Err = String;

    fn from_str(s: &str) -> Result<UidRange, String> {
        let bad = || {
            format!("{s:?} is not a uid range (expected FIRST-LAST, such as 1900000000-1900065535)")
        };
        let (first, last) = s.trim().split_once('-').ok_or_else(bad)?;
        let first: u32 = first.trim().parse().map_err(|_| bad())?;
        let last: u32 = last.trim().parse().map_err(|_| bad())?;
        if first == 0 {
            return Err("a job uid range must not include 0 (root)".to_string());
        }
        if last < first || last == u32::MAX {
            return Err(bad());
        }
        Ok(UidRange { first, last })
    }
}

/// What the confiner needs from the host's configuration.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) users: JobUsers,
    pub(crate) memory_mb: u64,
    pub(crate) max_processes: u64,
    /// Directories jobs must not see (the data directory first).
    pub(crate) hidden: Vec<PathBuf>,
    /// Jobs that may run at once: the uid range must hold at least this many.
    pub(crate) max_parallel: u32,
}

/// Puts native processes in their confinement; one per host.
#[derive(Debug)]
pub(crate) struct Confiner {
    users: Users,
    memory_bytes: u64,
    max_processes: u64,
    hidden: Vec<CString>,
    shm_options: CString,
    last_cap: u64,
}

#[derive(Debug)]
enum Users {
    Pool(Arc<UidPool>),
    /// The daemon's own user, in a user namespace of the job's own.
    Same,
}

/// What to start: a program (already resolved to a path), its arguments,
/// its whole environment, and whether it gets a stdin pipe (else
/// `/dev/null`).
#[derive(Debug)]
pub(crate) struct Launch<'a> {
    pub(crate) program: &'a Path,
    pub(crate) args: &'a [String],
    pub(crate) env: &'a BTreeMap<String, OsString>,
    pub(crate) stdin: bool,
}

impl Confiner {
    /// Checks the settings against this process and machine (a uid range
    /// needs root and must be free of accounts; same-user jobs must not be
    /// root's) and prepares what every spawn needs.
    pub(crate) fn new(settings: &Settings) -> Result<Confiner, HostError> {
        let invalid = |msg: String| Err(HostError::Config(msg));
        let root = Uid::effective().is_root();
        let users = match settings.users {
            JobUsers::Range(range) => {
                if !root {
                    return invalid(format!(
                        "job uids {range} need the host to run as root; \
                         a host that is not root may run jobs as its own user only with --allow-same-user-jobs"
                    ));
                }
                if range.count() < u64::from(settings.max_parallel) {
                    return invalid(format!(
                        "job uids {range} hold {} ids, fewer than the {} jobs that may run at once",
                        range.count(),
                        settings.max_parallel
                    ));
                }
                if let Some(owner) = uids::account_in(range) {
                    return invalid(format!(
                        "job uids {range} include {owner}: pick a range (--job-uids) that no account uses"
                    ));
                }
                let claim = uids::claim(range).map_err(|e| {
                    HostError::Config(format!(
                        "job uids {range}: {e}; give each host on a machine a range of its own (--job-uids)"
                    ))
                })?;
                Users::Pool(Arc::new(UidPool::new(range, claim)))
            }
            JobUsers::SameUser => {
                if root {
                    return invalid(
                        "same-user jobs would run as root; a root host gives each job a user of its own (--job-uids)"
                            .to_string(),
                    );
                }
                Users::Same
            }
        };
        let hidden = settings
            .hidden
            .iter()
            .map(|path| c_path(&std::path::absolute(path).unwrap_or_else(|_| path.clone())))
            .collect::<io::Result<Vec<_>>>()
            .map_err(|e| HostError::Config(format!("hidden path: {e}")))?;
        Ok(Confiner {
            users,
            memory_bytes: settings.memory_mb.saturating_mul(MIB),
            max_processes: settings.max_processes,
            hidden,
            shm_options: CString::new(format!("size={JOB_SHM_BYTES},mode=1777"))
                .expect("no NUL in shm options"),
            last_cap: child::last_capability(),
        })
    }

    /// Starts `launch` confined, with `work_dir` as its `/tmp`: takes a uid
    /// for it (held until the returned process is reaped) and gives it the
    /// directory. Call it from a runtime worker thread, never a blocking-pool
    /// one: the job dies when the thread that started it ends.
    pub(crate) fn spawn(&self, launch: &Launch<'_>, work_dir: &Path) -> io::Result<Process> {
        self.start(launch, work_dir, true)
    }

    /// Checks that this machine lets the host confine a process: confines a
    /// child that exits where it would exec. The error says why not.
    pub(crate) async fn probe(&self, work_dir: &Path) -> io::Result<()> {
        let launch = Launch {
            program: Path::new("/"),
            args: &[],
            env: &BTreeMap::new(),
            stdin: false,
        };
        let status = self.start(&launch, work_dir, false)?.wait().await?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "the confined probe ended with {status}"
            )))
        }
    }

    fn start(&self, launch: &Launch<'_>, work_dir: &Path, exec: bool) -> io::Result<Process> {
        let (user, switch) = match &self.users {
            Users::Pool(pool) => {
                let user = pool
                    .take()
                    .ok_or_else(|| io::Error::other("every job uid of this host is in use"))?;
                let (uid, gid) = (Uid::from_raw(user.id()), Gid::from_raw(user.id()));
                nix::unistd::chown(work_dir, Some(uid), Some(gid))?;
                (Some(user), Switch::User { uid, gid })
            }
            Users::Same => (None, Switch::Namespace),
        };
        let stdin = if launch.stdin { Some(pipe()?) } else { None };
        let null = std::fs::File::open("/dev/null")?;
        let (stdout_read, stdout_write) = pipe()?;
        let (stderr_read, stderr_write) = pipe()?;
        let (report_read, report_write) = pipe()?;
        let job_stdin = stdin
            .as_ref()
            .map_or(null.as_raw_fd(), |(read, _)| read.as_raw_fd());
        let (argv, envp, strings) = exec_arrays(launch)?;
        let plan = Plan {
            switch,
            work_dir: c_path(work_dir)?,
            hidden: self.hidden.clone(),
            shm_options: self.shm_options.clone(),
            caps: Caps {
                memory_bytes: self.memory_bytes,
                max_processes: self.max_processes,
                max_open_files: JOB_MAX_OPEN_FILES,
            },
            last_cap: self.last_cap,
            program: c_path(launch.program)?,
            argv,
            envp,
            _strings: strings,
            stdio: [
                job_stdin,
                stdout_write.as_raw_fd(),
                stderr_write.as_raw_fd(),
            ],
            report: report_write.as_raw_fd(),
            exec,
        };
        let started = child::launch(&plan)?;
        // The child has exec'd or exited: its ends of the pipes are its own.
        drop((plan, stdout_write, stderr_write, report_write, null));
        let stdin = stdin.map(|(_, write)| write);
        let mut process = Process::new(started, stdin, stdout_read, stderr_read, user)?;
        if let Some(errno) = failed_start(report_read)? {
            process.reap_blocking();
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(process)
    }

    /// Kills every process a previous run of the daemon left running under
    /// the job uids (it died without its jobs noticing, or they outlived
    /// it). Blocking: reads `/proc`. Same-user jobs cannot be told apart from
    /// the user's other processes and rely on their namespaces alone.
    pub(crate) fn kill_leftovers(&self) -> usize {
        match &self.users {
            Users::Pool(pool) => leftovers::kill_all(pool.range()),
            Users::Same => 0,
        }
    }
}

/// Marks this process non-dumpable, so that no other process of its user
/// (a same-user job among them) can read its memory or environment through
/// `/proc` or ptrace it: they hold the cluster token.
pub fn protect_process() -> io::Result<()> {
    nix::sys::prctl::set_dumpable(false).map_err(io::Error::from)
}

/// A pipe whose ends close on exec (the child's end is dup'ed onto 0-2).
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(OFlag::O_CLOEXEC)?)
}

/// `argv` (program first) and `envp` as null-terminated pointer arrays,
/// with the strings they point into.
type ExecArrays = (Vec<*const c_char>, Vec<*const c_char>, Vec<CString>);

fn exec_arrays(launch: &Launch<'_>) -> io::Result<ExecArrays> {
    let nul = |what: &str| io::Error::other(format!("{what} holds a NUL byte"));
    let mut argv_strings = vec![c_path(launch.program)?];
    for arg in launch.args {
        argv_strings.push(CString::new(arg.as_bytes()).map_err(|_| nul("an argument"))?);
    }
    let mut env_strings = Vec::with_capacity(launch.env.len());
    for (name, value) in launch.env {
        let mut entry = name.as_bytes().to_vec();
        entry.push(b'=');
        entry.extend_from_slice(value.as_bytes());
        env_strings.push(CString::new(entry).map_err(|_| nul("an environment variable"))?);
    }
    let pointers = |strings: &[CString]| {
        strings
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect::<Vec<_>>()
    };
    let (argv, envp) = (pointers(&argv_strings), pointers(&env_strings));
    // The pointers point into the strings' heap buffers, which moving the
    // vectors does not move.
    argv_strings.extend(env_strings);
    Ok((argv, envp, argv_strings))
}

/// The errno a child reported before it could exec, if it did.
fn failed_start(report: OwnedFd) -> io::Result<Option<i32>> {
    let mut bytes = [0u8; 4];
    let mut file = std::fs::File::from(report);
    match std::io::Read::read(&mut file, &mut bytes)? {
        0 => Ok(None),
        4 => Ok(Some(i32::from_ne_bytes(bytes))),
        n => Err(io::Error::other(format!(
            "a confined child reported {n} bytes instead of an errno"
        ))),
    }
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::other(format!("{} holds a NUL byte", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_ranges_parse_and_refuse_root() {
        let range: UidRange = "100-199".parse().unwrap();
        assert_eq!(
            range,
            UidRange {
                first: 100,
                last: 199
            }
        );
        assert_eq!(range.count(), 100);
        assert!(range.contains(100) && range.contains(199) && !range.contains(200));
        assert_eq!(range.to_string(), "100-199");
        assert!("0-10".parse::<UidRange>().unwrap_err().contains("root"));
        for bad in ["", "5", "10-5", "a-b", "1-4294967295", "-3"] {
            assert!(bad.parse::<UidRange>().is_err(), "{bad:?} accepted");
        }
        assert_eq!(DEFAULT_JOB_UIDS.count(), 65_536);
    }
}
