//! A job's captured output stream, native or WASI alike: the bytes kept up to
//! the host's limit and a count of those dropped past it.

use skyclaw_api::jobs::JobResult;

/// One output stream: the bytes kept and how many past the limit were dropped.
#[derive(Debug, Default)]
pub(crate) struct Captured {
    pub(crate) kept: Vec<u8>,
    pub(crate) dropped: u64,
}

impl Captured {
    /// Keeps what fits under `limit` of `chunk` and counts the rest.
    pub(crate) fn push(&mut self, chunk: &[u8], limit: usize) {
        let room = limit.saturating_sub(self.kept.len());
        let take = room.min(chunk.len());
        self.kept.extend_from_slice(&chunk[..take]);
        self.dropped += (chunk.len() - take) as u64;
    }
}

/// A result holding a job's two output streams (as text, and what was cut);
/// the caller sets the rest.
pub(crate) fn output_result(stdout: Captured, stderr: Captured) -> JobResult {
    JobResult {
        stdout: String::from_utf8_lossy(&stdout.kept).into_owned(),
        stderr: String::from_utf8_lossy(&stderr.kept).into_owned(),
        stdout_truncated: stdout.dropped > 0,
        stderr_truncated: stderr.dropped > 0,
        stdout_dropped_bytes: stdout.dropped,
        stderr_dropped_bytes: stderr.dropped,
        ..JobResult::default()
    }
}
