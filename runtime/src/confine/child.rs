//! Starting a confined process: `clone` straight into new PID, mount and IPC
//! namespaces (and a user namespace for same-user jobs), then, in the child,
//! the job's view of the files, its caps, its user, and `execve`.
//!
//! The child is made with `CLONE_VM | CLONE_VFORK`, as `posix_spawn` makes
//! its children: it borrows the daemon's memory, on a stack of its own, and
//! the calling thread sleeps until the child has exec'd or exited. No page
//! of the daemon is copied, which a `fork` of a daemon holding wasmtime's
//! instance pool would do (and its exit tear down again) for every job. The
//! price is discipline: the child runs on memory other threads are using,
//! so it makes raw system calls on data prepared before the clone. No
//! allocation, no locks, no panics, and no libc call that acts on the whole
//! process (glibc's `setuid` family signals every thread of the daemon).

#![allow(unsafe_code)]

use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::libc;
use nix::mount::{MsFlags, mount};
use nix::sys::resource::{Resource, setrlimit};
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Pid, Uid};

/// The job's `/tmp`, where its working directory is mounted: also its home
/// and its working directory ([`super::JOB_HOME`]).
const TMP: &CStr = c"/tmp";
/// Options of the empty file system laid over hidden directories: read-only
/// (set by flag), no room, and no way in.
const HIDE_OPTIONS: &CStr = c"size=4k,nr_inodes=2,mode=000";
/// Stack of the child until it execs: it runs a few system calls in shallow
/// frames. There is no guard page (it borrows the daemon's memory), so this
/// is generous.
const CHILD_STACK_BYTES: usize = 256 * 1024;
/// Exit code of a child that could not start its program; the reason goes
/// through the report pipe.
const EXIT_NOT_STARTED: c_int = 127;
/// Capability numbers dropped from the bounding set when the kernel does not
/// say how many it knows; dropping stops at the first unknown one.
const FALLBACK_LAST_CAP: u64 = 63;
/// Signals numbered up to this are reset to their default action in the
/// child: it must not run a daemon signal handler on borrowed memory, and
/// the job must not inherit an ignored SIGPIPE.
const LAST_SIGNAL: c_int = 64;

/// How the job gets its user.
pub(super) enum Switch {
    /// A root daemon: become this uid and gid, with no supplementary groups.
    User { uid: Uid, gid: Gid },
    /// A same-user daemon: a new user namespace with no id maps. The job
    /// keeps the daemon's ids on the host and sees itself as the overflow
    /// user (`nobody`); it holds capabilities in that namespace only until
    /// it execs.
    Namespace,
}

/// Caps set on the job's init, inherited by everything it starts.
pub(super) struct Caps {
    pub(super) memory_bytes: u64,
    pub(super) max_processes: u64,
    pub(super) max_open_files: u64,
}

/// Everything the child reads, prepared by the parent before the clone.
pub(super) struct Plan {
    pub(super) switch: Switch,
    /// The job's working directory on the host, mounted over `/tmp`.
    pub(super) work_dir: CString,
    /// Directories covered by an empty read-only file system.
    pub(super) hidden: Vec<CString>,
    /// Mount options of the job's `/dev/shm`.
    pub(super) shm_options: CString,
    pub(super) caps: Caps,
    /// The highest capability number this kernel knows.
    pub(super) last_cap: u64,
    /// The program, and `argv` and `envp` as null-terminated pointer arrays
    /// into `_strings`, which keeps them alive.
    pub(super) program: CString,
    pub(super) argv: Vec<*const c_char>,
    pub(super) envp: Vec<*const c_char>,
    pub(super) _strings: Vec<CString>,
    /// Descriptors that become the job's stdin, stdout and stderr.
    pub(super) stdio: [RawFd; 3],
    /// Write end of the pipe that carries the errno of a failed start.
    pub(super) report: RawFd,
    /// False for a probe: confine, then exit 0 instead of exec.
    pub(super) exec: bool,
}

impl Plan {
    fn clone_flags(&self) -> c_int {
        let own = libc::CLONE_VM
            | libc::CLONE_VFORK
            | libc::CLONE_PIDFD
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWIPC;
        match self.switch {
            Switch::User { .. } => own,
            Switch::Namespace => own | libc::CLONE_NEWUSER,
        }
    }
}

/// A started child: its pid (in the daemon's namespace) and a pidfd.
pub(super) struct Started {
    pub(super) pid: Pid,
    pub(super) pidfd: OwnedFd,
}

/// Clones the child and lets it run `plan`. Returns once it has exec'd or
/// exited; whether it started is for the caller to read from the report pipe.
pub(super) fn launch(plan: &Plan) -> io::Result<Started> {
    let mut stack = vec![0u8; CHILD_STACK_BYTES];
    // The stack grows down from its end, which must be 16-byte aligned.
    let top = stack.as_mut_ptr().wrapping_add(CHILD_STACK_BYTES);
    let top = top.wrapping_sub(top as usize % 16);
    let mut pidfd: c_int = -1;
    // No signal handler may run in the child (it would run on borrowed
    // memory): block every signal across the clone; the child resets their
    // actions before it unblocks them.
    let mut all = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    let mut before = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: the sets are initialised by sigfillset and pthread_sigmask.
    // The clone child only reads `plan` (kept alive by this frame, which
    // sleeps until the child has exec'd or exited) and runs on `stack`.
    let pid = unsafe {
        libc::sigfillset(all.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, all.as_ptr(), before.as_mut_ptr());
        let pid = libc::clone(
            child_main,
            top.cast::<c_void>(),
            plan.clone_flags() | libc::SIGCHLD,
            std::ptr::from_ref(plan).cast_mut().cast::<c_void>(),
            &mut pidfd as *mut c_int,
        );
        let error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, before.as_ptr(), std::ptr::null_mut());
        if pid < 0 {
            return Err(error);
        }
        pid
    };
    drop(stack);
    Ok(Started {
        pid: Pid::from_raw(pid),
        // SAFETY: CLONE_PIDFD stored a new descriptor that nothing else owns.
        pidfd: unsafe { OwnedFd::from_raw_fd(pidfd) },
    })
}

/// The child's entry point: confine, exec; on failure report the errno and
/// exit.
extern "C" fn child_main(arg: *mut c_void) -> c_int {
    // SAFETY: `launch` passes a pointer to a `Plan` that outlives the child's
    // use of it (the parent sleeps until the child execs or exits).
    let plan = unsafe { &*arg.cast::<Plan>() };
    let errno = match start(plan) {
        Ok(()) => exit(0),
        Err(errno) => errno,
    };
    let bytes = (errno as i32).to_ne_bytes();
    // SAFETY: a write of a local buffer to a descriptor the plan names.
    unsafe { libc::write(plan.report, bytes.as_ptr().cast(), bytes.len()) };
    exit(EXIT_NOT_STARTED)
}

/// Everything between clone and exec; returns only on failure (or, for a
/// probe, once confined).
fn start(plan: &Plan) -> Result<(), Errno> {
    reset_signal_actions();
    redirect(&plan.stdio)?;
    build_view(plan)?;
    drop_privileges(plan)?;
    if !plan.exec {
        return Ok(());
    }
    // SAFETY: an empty set, then the mask every program expects to start with.
    unsafe {
        let mut none = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
        libc::sigemptyset(none.as_mut_ptr());
        libc::pthread_sigmask(libc::SIG_SETMASK, none.as_ptr(), std::ptr::null_mut());
        libc::execve(
            plan.program.as_ptr(),
            plan.argv.as_ptr(),
            plan.envp.as_ptr(),
        );
    }
    Err(Errno::last())
}

fn exit(code: c_int) -> ! {
    // SAFETY: `_exit` ends this (child) process and touches no shared state.
    unsafe { libc::_exit(code) }
}

fn reset_signal_actions() {
    for signal in 1..=LAST_SIGNAL {
        if signal == libc::SIGKILL || signal == libc::SIGSTOP {
            continue;
        }
        // SAFETY: installing the default action; a zeroed sigaction is
        // SIG_DFL with no flags and an empty mask.
        unsafe {
            let default: libc::sigaction = std::mem::zeroed();
            libc::sigaction(signal, &default, std::ptr::null_mut());
        }
    }
}

/// Makes the planned descriptors the job's 0, 1 and 2 (without close-on-exec).
fn redirect(stdio: &[RawFd; 3]) -> Result<(), Errno> {
    for (target, &source) in stdio.iter().enumerate() {
        // SAFETY: dup2 on descriptors the parent opened for this child.
        if unsafe { libc::dup2(source, target as c_int) } < 0 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

/// The job's file system: private mount propagation, its working directory
/// as `/tmp` and `/var/tmp`, its own `/dev/shm`, hidden directories
/// covered, and a `/proc` of its PID namespace.
fn build_view(plan: &Plan) -> Result<(), Errno> {
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
    mount_at(Some(c"proc"), c"/proc", Some(c"proc"), sealed, None)
}

/// Caps, an empty capability bounding set, the user switch, then
/// `no_new_privs` and the death signal (which a credential change clears),
/// then the job's working directory.
fn drop_privileges(plan: &Plan) -> Result<(), Errno> {
    let caps = &plan.caps;
    limit(Resource::RLIMIT_NPROC, caps.max_processes)?;
    limit(Resource::RLIMIT_DATA, caps.memory_bytes)?;
    limit(Resource::RLIMIT_NOFILE, caps.max_open_files)?;
    limit(Resource::RLIMIT_CORE, 0)?;
    drop_bounding_set(plan.last_cap)?;
    if let Switch::User { uid, gid } = plan.switch {
        // Raw system calls: they change this task alone.
        syscall(libc::SYS_setgroups, 0, 0, 0)?;
        let gid = gid.as_raw() as libc::c_long;
        syscall(libc::SYS_setresgid, gid, gid, gid)?;
        let uid = uid.as_raw() as libc::c_long;
        syscall(libc::SYS_setresuid, uid, uid, uid)?;
    }
    nix::sys::prctl::set_no_new_privs()?;
    // Relative to the daemon's thread that cloned this child: the runner
    // spawns from runtime worker threads, which live as long as the daemon.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
    // SAFETY: chdir to a constant path.
    if unsafe { libc::chdir(TMP.as_ptr()) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

fn syscall(
    number: libc::c_long,
    a: libc::c_long,
    b: libc::c_long,
    c: libc::c_long,
) -> Result<(), Errno> {
    // SAFETY: credential system calls with integer arguments.
    if unsafe { libc::syscall(number, a, b, c) } < 0 {
        return Err(Errno::last());
    }
    Ok(())
}

/// Removes every capability from the bounding set, so that nothing the job
/// runs can ever hold one.
fn drop_bounding_set(last_cap: u64) -> Result<(), Errno> {
    for cap in 0..=last_cap {
        // SAFETY: prctl with integer arguments.
        let dropped = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) };
        if dropped != 0 {
            match Errno::last() {
                // A capability this kernel does not know: the rest are unknown too.
                Errno::EINVAL => break,
                e => return Err(e),
            }
        }
    }
    Ok(())
}

fn limit(resource: Resource, value: u64) -> Result<(), Errno> {
    setrlimit(resource, value, value)
}

fn mount_at(
    source: Option<&CStr>,
    target: &CStr,
    fstype: Option<&CStr>,
    flags: MsFlags,
    data: Option<&CStr>,
) -> Result<(), Errno> {
    mount(source, target, fstype, flags, data)
}

/// A mount whose target may be missing on this machine (or hidden already).
fn optional(mounted: Result<(), Errno>) -> Result<(), Errno> {
    match mounted {
        Ok(()) | Err(Errno::ENOENT) | Err(Errno::ENOTDIR) => Ok(()),
        Err(e) => Err(e),
    }
}

/// The highest capability number the kernel knows; read before any clone.
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
