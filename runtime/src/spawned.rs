//! A confined native process the host started and holds, whatever it runs
//! for: starting it through [`Confiner::spawn`] (retrying while its program
//! file is busy), feeding its stdin, pumping its stdout and stderr into sinks
//! as it writes them, waiting for its end and stopping it. What an exit means
//! (a job's result, say) is the caller's to decide.

use std::io;
use std::path::Path;
use std::process::ExitStatus;
use std::time::Duration;

use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::confine::{Confiner, Launch, Process};

/// Bytes read from an output pipe at a time.
const READ_CHUNK: usize = 16 * 1024;
/// How long output pipes may stay open after the process ended or was killed:
/// its PID namespace is torn down by then, so this only bounds the kernel's
/// teardown, and a stuck pipe must not keep the caller waiting.
pub(crate) const PIPE_DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Spawn attempts while the program file is busy (ETXTBSY): another thread may
/// be between fork and exec holding the file's just-closed write descriptor.
const SPAWN_ATTEMPTS: u32 = 5;
/// Pause between those attempts; the window it waits out is microseconds long.
const SPAWN_RETRY_DELAY: Duration = Duration::from_millis(20);

/// Where one output stream of a process goes, chunk by chunk, as the process
/// writes it.
pub(crate) trait OutputSink: Send + 'static {
    /// Takes the next chunk of the stream. It must not block: the process's
    /// writes wait on it.
    fn write(&mut self, chunk: &[u8]);
}

/// A started process, with its stdin being fed and its output being pumped.
/// Dropped, it kills the process (see [`Process`]) and stops feeding and
/// pumping.
pub(crate) struct Spawned<S: OutputSink> {
    process: Process,
    /// Turns true once the process has ended: from then on the pumps have
    /// [`PIPE_DRAIN_TIMEOUT`] to reach the ends of their pipes.
    ended: watch::Sender<bool>,
    /// Held to be aborted with the handle: a process that never read all of
    /// its stdin must not keep the task writing it.
    _feeder: Option<Task<()>>,
    stdout: Task<S>,
    stderr: Task<S>,
}

impl<S: OutputSink> Spawned<S> {
    /// Starts `launch` confined, with `work_dir` as its `/tmp`. `stdin` is
    /// written to it from a task of its own, then closed (`launch.stdin` says
    /// whether there is any); what it writes to stdout and stderr goes to the
    /// sinks. Call it from a runtime worker thread (see [`Confiner::spawn`]).
    pub(crate) async fn start(
        confiner: &Confiner,
        launch: &Launch<'_>,
        work_dir: &Path,
        stdin: Vec<u8>,
        stdout: S,
        stderr: S,
    ) -> io::Result<Spawned<S>> {
        debug_assert_eq!(launch.stdin, !stdin.is_empty(), "a stdin pipe iff input");
        let mut process = spawn(confiner, launch, work_dir).await?;
        // Written from a task so that a process that never reads its stdin
        // cannot block the caller.
        let feeder = process
            .stdin
            .take()
            .map(|pipe| Task(tokio::spawn(feed(pipe, stdin))));
        let (ended, ended_rx) = watch::channel(false);
        let stdout = Task(tokio::spawn(pump(
            process.stdout.take(),
            stdout,
            ended_rx.clone(),
        )));
        let stderr = Task(tokio::spawn(pump(process.stderr.take(), stderr, ended_rx)));
        Ok(Spawned {
            process,
            ended,
            _feeder: feeder,
            stdout,
            stderr,
        })
    }

    /// The process's pid, as the daemon's PID namespace numbers it.
    pub(crate) fn pid(&self) -> Pid {
        self.process.pid()
    }

    /// Waits until the process has ended on its own (and with it every
    /// process of its PID namespace) and reaps it. Cancel-safe: callers race
    /// it against their deadline or stop order, then [`Spawned::stop`] it.
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        let status = self.process.wait().await;
        self.ended.send_replace(true);
        status
    }

    /// Asks the process to exit (SIGTERM); [`Spawned::wait`] tells when it did.
    pub(crate) fn terminate(&self) {
        self.process.terminate();
    }

    /// Kills the process, and with it its whole PID namespace, at once, and
    /// reaps it.
    pub(crate) async fn stop(&mut self) {
        self.process.kill();
        if let Err(e) = self.process.wait().await {
            warn!(pid = self.pid().as_raw(), error = %e, "cannot reap a killed process");
        }
        self.ended.send_replace(true);
    }

    /// The sinks, once each pump has reached the end of its pipe or given up
    /// on it. Call it after [`Spawned::wait`] or [`Spawned::stop`]: before,
    /// it waits for as long as the process keeps its output open.
    pub(crate) async fn output(mut self) -> (S, S) {
        let stdout = self.stdout.join().await;
        let stderr = self.stderr.join().await;
        (stdout, stderr)
    }
}

async fn spawn(confiner: &Confiner, launch: &Launch<'_>, work_dir: &Path) -> io::Result<Process> {
    let mut attempt = 1;
    loop {
        match confiner.spawn(launch, work_dir) {
            Err(e) if e.kind() == io::ErrorKind::ExecutableFileBusy && attempt < SPAWN_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(SPAWN_RETRY_DELAY).await;
            }
            other => return other,
        }
    }
}

/// Writes `data` to a process's stdin and closes it. A process that exits
/// early closes the pipe (EPIPE), which is no error of ours.
async fn feed(mut pipe: pipe::Sender, data: Vec<u8>) {
    if let Err(e) = pipe.write_all(&data).await
        && e.kind() != io::ErrorKind::BrokenPipe
    {
        debug!(error = %e, "cannot write process stdin");
    }
}

/// Reads a pipe to its end into `sink`, so the writer never blocks on a full
/// pipe. Gives up [`PIPE_DRAIN_TIMEOUT`] after `ended` turns true.
async fn pump<S: OutputSink>(
    pipe: Option<pipe::Receiver>,
    mut sink: S,
    mut ended: watch::Receiver<bool>,
) -> S {
    let Some(mut pipe) = pipe else {
        return sink;
    };
    let give_up = async move {
        if ended.wait_for(|e| *e).await.is_err() {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(PIPE_DRAIN_TIMEOUT).await;
    };
    tokio::pin!(give_up);
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        tokio::select! {
            read = pipe.read(&mut buf) => match read {
                Ok(0) => break,
                Ok(n) => sink.write(&buf[..n]),
                Err(e) => {
                    debug!(error = %e, "cannot read process output");
                    break;
                }
            },
            () = &mut give_up => {
                warn!("process output still open after its process group was killed; a process left the group");
                break;
            }
        }
    }
    sink
}

/// A task that is aborted when its handle drops.
struct Task<T>(JoinHandle<T>);

impl<T> Task<T> {
    /// The task's value; its panic, if it panicked.
    async fn join(&mut self) -> T {
        match (&mut self.0).await {
            Ok(value) => value,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("a process's output task was cancelled: {e}"),
        }
    }
}

impl<T> Drop for Task<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
