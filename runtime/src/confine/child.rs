//! What a job's process does between fork and exec: enter new namespaces,
//! fork the job's init under a supervisor that dies with the daemon, build
//! the job's view of the files, then give up every privilege.
//!
//! This runs in the child of a multi-threaded process, where another thread
//! may have held a lock at the fork: only async-signal-safe system calls are
//! made, on data prepared before the fork. No allocation, no locks, no panics.

#![allow(unsafe_code)]

use std::ffi::{CStr, CString};
use std::io;

use nix::errno::Errno;
use nix::fcntl::{OFlag, open};
use nix::mount::{MsFlags, mount};
use nix::sched::{CloneFlags, unshare};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::{SigHandler, Signal, raise, signal};
use nix::sys::stat::Mode;
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::{
    ForkResult, Gid, Pid, Uid, chdir, fork, getppid, setgroups, setresgid, setresuid,
};

/// The job's `/tmp`, where its working directory is mounted: also its home
/// and its working directory ([`super::JOB_HOME`]).
const TMP: &CStr = c"/tmp";
/// Options of the empty file system laid over hidden directories: read-only
/// (set by flag), no room, and no way in.
const HIDE_OPTIONS: &CStr = c"size=4k,nr_inodes=2,mode=000";
/// Exit code of a supervisor whose daemon died before it could watch it.
const EXIT_ORPHANED: i32 = 125;
/// Exit code of a supervisor that lost track of the job's init.
const EXIT_LOST: i32 = 124;
/// Capability numbers dropped from the bounding set when the kernel does not
/// say how many it knows; dropping stops at the first unknown one.
const FALLBACK_LAST_CAP: u64 = 63;
/// Highest descriptor closed one by one where `close_range` is missing
/// (Linux before 5.9): the daemon's own descriptors stay well below it.
const FALLBACK_MAX_FD: i32 = 65_536;

/// How the job gets its user.
pub(super) enum Switch {
    /// A root daemon: become this uid and gid, with no supplementary groups.
    User { uid: Uid, gid: Gid },
    /// A same-user daemon: a new user namespace whose maps send the daemon's
    /// ids to themselves (`uid_map`, `gid_map` lines).
    Map { uid_map: Vec<u8>, gid_map: Vec<u8> },
}

/// Everything the child needs, prepared by the parent before the fork.
pub(super) struct Plan {
    pub(super) switch: Switch,
    /// The job's working directory on the host, mounted over `/tmp`.
    pub(super) work_dir: CString,
    /// Directories covered by an empty read-only file system.
    pub(super) hidden: Vec<CString>,
    /// Mount options of the job's `/dev/shm`.
    pub(super) shm_options: CString,
    pub(super) memory_bytes: u64,
    pub(super) max_processes: u64,
    pub(super) max_open_files: u64,
    /// The highest capability number this kernel knows.
    pub(super) last_cap: u64,
    /// The daemon's pid: the supervisor checks it is still its parent.
    pub(super) daemon: Pid,
}

impl Plan {
    fn namespaces(&self) -> CloneFlags {
        let own = CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWPID | CloneFlags::CLONE_NEWIPC;
        match self.switch {
            Switch::User { .. } => own,
            Switch::Map { .. } => own | CloneFlags::CLONE_NEWUSER,
        }
    }
}

/// Confines the calling (just forked) process. Returns in the job's init,
/// which then execs the job's program; the process that called it stays
/// behind as the init's supervisor and never returns.
pub(super) fn enter(plan: &Plan) -> io::Result<()> {
    unshare(plan.namespaces())?;
    if let Switch::Map { uid_map, gid_map } = &plan.switch {
        // A non-dumpable process's /proc/self files belong to root, so the
        // maps can only be written while this copy of the daemon is
        // dumpable: for these three writes. Jobs cannot see it meanwhile
        // (they live in PID namespaces of their own).
        nix::sys::prctl::set_dumpable(true)?;
        let written = write_maps(uid_map, gid_map);
        nix::sys::prctl::set_dumpable(false)?;
        written?;
    }
    // SAFETY: the child (the job's init) goes on with async-signal-safe
    // calls only, as this whole module does.
    match unsafe { fork() }? {
        ForkResult::Parent { child } => supervise(child, plan.daemon),
        ForkResult::Child => {}
    }
    build_view(plan)?;
    drop_privileges(plan)?;
    Ok(())
}

/// Ends the calling process at once with `code`, as a `pre_exec` step: for
/// a child that must not go on to exec.
pub(super) fn exit_now(code: i32) -> io::Result<()> {
    exit(code)
}

fn exit(code: i32) -> ! {
    // SAFETY: `_exit` is async-signal-safe and ends the process.
    unsafe { nix::libc::_exit(code) }
}

/// Watches the job's init from outside its PID namespace: dies with the
/// daemon (killing the init, and so the whole job, through its own death
/// signal), and otherwise ends as the init ended, so the daemon sees the
/// job's exit code or signal.
fn supervise(init: Pid, daemon: Pid) -> ! {
    if nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).is_err() || getppid() != daemon {
        exit(EXIT_ORPHANED);
    }
    close_all_descriptors();
    let status = loop {
        match waitpid(init, None) {
            Ok(status) => break status,
            Err(Errno::EINTR) => continue,
            Err(_) => exit(EXIT_LOST),
        }
    };
    match status {
        WaitStatus::Exited(_, code) => exit(code),
        WaitStatus::Signaled(_, killed_by, _) => {
            // SAFETY: restoring a default disposition is async-signal-safe;
            // SIGKILL and SIGSTOP refuse it and need no restoring.
            let _ = unsafe { signal(killed_by, SigHandler::SigDfl) };
            let _ = raise(killed_by);
            exit(128 + killed_by as i32)
        }
        _ => exit(EXIT_LOST),
    }
}

/// Closes every descriptor the supervisor inherited, so that only the job
/// holds the ends of its pipes (EOF arrives when the job is gone) and the
/// daemon's spawn sees its exec-status pipe close once the job execs.
fn close_all_descriptors() {
    // SAFETY: a raw system call with integer arguments.
    let closed = unsafe { nix::libc::syscall(nix::libc::SYS_close_range, 0u32, u32::MAX, 0u32) };
    if closed != 0 {
        for fd in 0..FALLBACK_MAX_FD {
            let _ = nix::unistd::close(fd);
        }
    }
}

/// The job's file system: private mount propagation, its working directory
/// as `/tmp` and `/var/tmp`, its own `/dev/shm`, hidden directories
/// covered, and a `/proc` of its PID namespace.
fn build_view(plan: &Plan) -> io::Result<()> {
    mount_at(
        None,
        c"/",
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )?;
    // Before the hidden directories are covered: the working directory
    // usually lies inside the data directory.
    mount_at(Some(&plan.work_dir), TMP, None, MsFlags::MS_BIND, None)?;
    optional(mount_at(
        Some(TMP),
        c"/var/tmp",
        None,
        MsFlags::MS_BIND,
        None,
    ))?;
    let sealed = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    optional(mount_at(
        Some(c"tmpfs"),
        c"/dev/shm",
        Some(c"tmpfs"),
        sealed,
        Some(&plan.shm_options),
    ))?;
    for path in &plan.hidden {
        // A hidden directory below the host's /tmp is already out of sight:
        // the job's /tmp replaced it.
        optional(mount_at(
            Some(c"tmpfs"),
            path,
            Some(c"tmpfs"),
            sealed | MsFlags::MS_RDONLY,
            Some(HIDE_OPTIONS),
        ))?;
    }
    mount_at(Some(c"proc"), c"/proc", Some(c"proc"), sealed, None)?;
    Ok(())
}

/// Caps, then the user switch, then `no_new_privs` and the death signal
/// (which a credential change clears), then the job's working directory.
fn drop_privileges(plan: &Plan) -> io::Result<()> {
    limit(Resource::RLIMIT_NPROC, plan.max_processes)?;
    limit(Resource::RLIMIT_DATA, plan.memory_bytes)?;
    limit(Resource::RLIMIT_NOFILE, plan.max_open_files)?;
    limit(Resource::RLIMIT_CORE, 0)?;
    drop_bounding_set(plan.last_cap)?;
    if let Switch::User { uid, gid } = plan.switch {
        setgroups(&[])?;
        setresgid(gid, gid, gid)?;
        setresuid(uid, uid, uid)?;
    }
    nix::sys::prctl::set_no_new_privs()?;
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    chdir(TMP)?;
    Ok(())
}

/// Removes every capability from the bounding set, so that nothing the job
/// runs can ever hold one.
fn drop_bounding_set(last_cap: u64) -> io::Result<()> {
    for cap in 0..=last_cap {
        // SAFETY: prctl with integer arguments.
        let dropped = unsafe { nix::libc::prctl(nix::libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if dropped != 0 {
            match Errno::last() {
                // A capability this kernel does not know: the rest are unknown too.
                Errno::EINVAL => break,
                e => return Err(e.into()),
            }
        }
    }
    Ok(())
}

fn limit(resource: Resource, value: u64) -> io::Result<()> {
    Ok(setrlimit(resource, value, value)?)
}

fn mount_at(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: MsFlags,
    data: Option<&CStr>,
) -> nix::Result<()> {
    mount(source, target, fstype, flags, data)
}

/// A mount whose target may be missing on this machine (or hidden already).
fn optional(mounted: nix::Result<()>) -> io::Result<()> {
    match mounted {
        Ok(()) | Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Maps the daemon's ids to themselves in the new user namespace (group
/// changes denied first, as an unprivileged map requires).
fn write_maps(uid_map: &[u8], gid_map: &[u8]) -> io::Result<()> {
    write_file(c"/proc/self/setgroups", b"deny")?;
    write_file(c"/proc/self/uid_map", uid_map)?;
    write_file(c"/proc/self/gid_map", gid_map)
}

fn write_file(path: &CStr, content: &[u8]) -> io::Result<()> {
    let fd = open(path, OFlag::O_WRONLY | OFlag::O_CLOEXEC, Mode::empty())?;
    let written = nix::unistd::write(
        // SAFETY: `fd` was just opened and is closed below, once.
        unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) },
        content,
    );
    let _ = nix::unistd::close(fd);
    match written {
        Ok(n) if n == content.len() => Ok(()),
        Ok(_) => Err(Errno::EIO.into()),
        Err(e) => Err(e.into()),
    }
}

/// The highest capability number the kernel knows; read before any fork.
pub(super) fn last_capability() -> u64 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(FALLBACK_LAST_CAP)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_job_home_is_where_its_directory_is_mounted() {
        assert_eq!(super::TMP.to_str().unwrap(), super::super::JOB_HOME);
    }
}
