//! Background WAL checkpoints: copying the state database's write-ahead log
//! back into the database file on a thread of its own, so that the writer
//! that applies Raft entries never stalls to do it.

use std::path::Path;
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::Duration;

use rusqlite::Connection;
use tracing::warn;

/// How often the WAL is copied into the database: under full load a second
/// of writes is a few thousand pages, so the WAL stays far below
/// [`WRITER_CHECKPOINT_PAGES`].
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
/// WAL pages (4 KiB) past which the writer checkpoints by itself, as SQLite
/// does by default at 1,000: a safety net that bounds the WAL (to 64 MiB)
/// should the checkpoint thread fall behind.
pub const WRITER_CHECKPOINT_PAGES: i64 = 16_384;
/// How long the checkpoint connection waits on a lock before giving up on
/// this round; the next one comes soon.
const BUSY_TIMEOUT: Duration = Duration::from_secs(1);

/// Checkpoints one database's WAL until dropped.
pub struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Checkpointer {
    /// Opens a connection of its own to the WAL-mode database at `path` and
    /// checkpoints it every [`CHECKPOINT_INTERVAL`].
    pub fn start(path: &Path) -> Result<Checkpointer, rusqlite::Error> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let (stop, stopped) = mpsc::channel::<()>();
        // Like std::thread::spawn, this fails only when the process is out
        // of threads or memory.
        let thread = std::thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || run(&conn, &stopped))
            .expect("start the WAL checkpoint thread");
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// Checkpoints until the sending side is dropped.
fn run(conn: &Connection, stopped: &mpsc::Receiver<()>) {
    while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_INTERVAL) {
        // PASSIVE copies what no reader still needs and never waits for the
        // writer; the writer starts the WAL over once all of it was copied.
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            warn!(error = %e, "WAL checkpoint failed; the writer checkpoints if this persists");
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    #[test]
    fn the_thread_copies_the_wal_into_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let writer = Connection::open(&path).unwrap();
        writer.pragma_update(None, "journal_mode", "WAL").unwrap();
        // The writer never checkpoints: only the thread can grow the file.
        writer.pragma_update(None, "wal_autocheckpoint", 0).unwrap();
        writer
            .execute_batch("CREATE TABLE t (v TEXT NOT NULL)")
            .unwrap();
        let checkpointer = Checkpointer::start(&path).unwrap();
        let before = std::fs::metadata(&path).unwrap().len();
        for _ in 0..200 {
            writer
                .execute("INSERT INTO t (v) VALUES (?1)", ["x".repeat(1000)])
                .unwrap();
        }
        let deadline = Instant::now() + 10 * CHECKPOINT_INTERVAL;
        while std::fs::metadata(&path).unwrap().len() < before + 100 * 1000 {
            assert!(
                Instant::now() < deadline,
                "no checkpoint within the deadline"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        drop(checkpointer);
        let rows: i64 = writer
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 200);
    }
}
