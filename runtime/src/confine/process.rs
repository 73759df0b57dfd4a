//! A running confined process, held by a pidfd: its pipes, waiting for its
//! end without blocking the runtime, and killing it (and with it its whole
//! PID namespace) without racing pid reuse. Dropped unreaped, it is killed
//! and reaped off the runtime, and its uid is freed only then.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;

use nix::errno::Errno;
use nix::libc;
use nix::unistd::Pid;
use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;
use tracing::warn;

use super::child::Started;
use super::uids::JobUid;

/// A confined job's init, as the daemon holds it.
pub(crate) struct Process {
    pid: Pid,
    pidfd: AsyncFd<OwnedFd>,
    pub(crate) stdin: Option<pipe::Sender>,
    pub(crate) stdout: Option<pipe::Receiver>,
    pub(crate) stderr: Option<pipe::Receiver>,
    reaped: bool,
    /// Freed once the process is reaped: no other job may get the uid while
    /// any process of this one may still run.
    user: Option<JobUid>,
}

impl std::fmt::Debug for Process {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Process").field("pid", &self.pid).finish()
    }
}

impl Process {
    pub(super) fn new(
        started: Started,
        stdin: Option<OwnedFd>,
        stdout: OwnedFd,
        stderr: OwnedFd,
        user: Option<JobUid>,
    ) -> io::Result<Process> {
        Ok(Process {
            pid: started.pid,
            // SAFETY: the pidfd is owned by the AsyncFd from here on and
            // stays open, the same descriptor, until it drops.
            pidfd: unsafe { AsyncFd::register(started.pidfd) }.map_err(|e| e.into_parts().1)?,
            stdin: stdin.map(pipe::Sender::from_owned_fd).transpose()?,
            stdout: Some(pipe::Receiver::from_owned_fd(stdout)?),
            stderr: Some(pipe::Receiver::from_owned_fd(stderr)?),
            reaped: false,
            user,
        })
    }

    /// The process's pid, as the daemon's PID namespace numbers it.
    pub(crate) fn pid(&self) -> Pid {
        self.pid
    }

    /// Waits until the process (and so every process of its namespace) has
    /// ended, and reaps it.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            self.pidfd.readable().await?.clear_ready();
            if let Some(status) = self.try_reap()? {
                return Ok(status);
            }
        }
    }

    /// SIGKILLs the process; its PID namespace goes with it. A process that
    /// has ended already is left alone.
    pub(crate) fn kill(&self) {
        self.signal(libc::SIGKILL);
    }

    /// SIGTERMs the process, asking it to finish what it is doing and exit.
    /// As its PID namespace's init it gets the signal only if it handles it.
    pub(crate) fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    fn signal(&self, signal: libc::c_int) {
        if self.reaped {
            return;
        }
        // SAFETY: pidfd_send_signal on a pidfd this process owns.
        let sent = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                self.pidfd.get_ref().as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if sent < 0 && Errno::last() != Errno::ESRCH {
            warn!(pid = self.pid.as_raw(), signal, error = %Errno::last(), "cannot signal a job process");
        }
    }

    /// Reaps the process if it has ended.
    fn try_reap(&mut self) -> io::Result<Option<ExitStatus>> {
        let mut status = 0;
        // SAFETY: waitpid on our own unreaped child; its pid cannot be reused
        // before this call reaps it.
        let reaped = unsafe { libc::waitpid(self.pid.as_raw(), &mut status, libc::WNOHANG) };
        match reaped {
            0 => Ok(None),
            pid if pid == self.pid.as_raw() => {
                self.reaped = true;
                self.user = None;
                Ok(Some(ExitStatus::from_raw(status)))
            }
            _ => Err(io::Error::last_os_error()),
        }
    }

    /// Kills and reaps the process on this thread: for a child known to have
    /// exited already, or about to.
    pub(super) fn reap_blocking(&mut self) {
        self.kill();
        reap(self.pid);
        self.reaped = true;
        self.user = None;
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        self.kill();
        let (pid, user) = (self.pid, self.user.take());
        let reap_then_free = move || {
            reap(pid);
            drop(user);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(reap_then_free)),
            Err(_) => reap_then_free(),
        }
    }
}

/// Waits for `pid` to end and reaps it (blocking).
fn reap(pid: Pid) {
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child.
        let reaped = unsafe { libc::waitpid(pid.as_raw(), &mut status, 0) };
        if reaped >= 0 || Errno::last() != Errno::EINTR {
            return;
        }
    }
}
