//! The recent output of a native instance: its stdout and stderr cut into
//! lines and kept in a ring bounded in lines and bytes, read by `skyclaw
//! services logs` (through the coordinator and the host's listener) and by
//! the crash report (`last_error`).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use skyclaw_api::services::{LogLine, LogStream};
use skyclaw_api::{Millis, now_ms};

use crate::spawned::OutputSink;

/// Lines kept per instance: a few screens of recent output, what an operator
/// reads to see why an instance misbehaves.
pub(crate) const MAX_LOG_LINES: usize = 2_000;
/// Bytes kept per instance, whatever the line count: bounds what a chatty
/// process costs the host (a few hundred instances stay within tens of MiB).
pub(crate) const MAX_LOG_BYTES: usize = 256 * 1024;
/// Longest line kept whole; a longer one is cut into pieces this long, so a
/// process writing without newlines still shows up.
pub(crate) const MAX_LINE_BYTES: usize = 4 * 1024;

/// One instance's ring of lines, shared by its two output pumps and readers.
#[derive(Debug, Clone, Default)]
pub(crate) struct Logs {
    ring: Arc<Mutex<Ring>>,
}

#[derive(Debug, Default)]
struct Ring {
    lines: VecDeque<LogLine>,
    bytes: usize,
}

impl Logs {
    /// The sink one stream of a process writes into.
    pub(crate) fn sink(&self, stream: LogStream) -> LineSink {
        LineSink {
            logs: self.clone(),
            stream,
            partial: Vec::new(),
        }
    }

    /// The newest `n` lines, oldest first.
    pub(crate) fn tail(&self, n: usize) -> Vec<LogLine> {
        let ring = self.ring.lock().expect("log ring lock");
        let skip = ring.lines.len().saturating_sub(n);
        ring.lines.iter().skip(skip).cloned().collect()
    }

    /// The newest `n` lines written at or after `since`, oldest first.
    pub(crate) fn tail_since(&self, since: Millis, n: usize) -> Vec<LogLine> {
        let ring = self.ring.lock().expect("log ring lock");
        let newer = ring.lines.iter().rev().take_while(|l| l.at >= since);
        let mut lines: Vec<LogLine> = newer.take(n).cloned().collect();
        lines.reverse();
        lines
    }

    fn push(&self, stream: LogStream, bytes: &[u8], at: Millis) {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let mut ring = self.ring.lock().expect("log ring lock");
        ring.bytes += text.len();
        ring.lines.push_back(LogLine { stream, at, text });
        while ring.lines.len() > MAX_LOG_LINES || ring.bytes > MAX_LOG_BYTES {
            let Some(old) = ring.lines.pop_front() else {
                break;
            };
            ring.bytes -= old.text.len();
        }
    }
}

/// Cuts one stream into lines as the process writes it.
#[derive(Debug)]
pub(crate) struct LineSink {
    logs: Logs,
    stream: LogStream,
    /// The start of a line whose newline has not come yet.
    partial: Vec<u8>,
}

impl OutputSink for LineSink {
    fn write(&mut self, chunk: &[u8]) {
        let at = now_ms();
        for &byte in chunk {
            if byte == b'\n' {
                self.logs.push(self.stream, &self.partial, at);
                self.partial.clear();
                continue;
            }
            self.partial.push(byte);
            if self.partial.len() == MAX_LINE_BYTES {
                self.logs.push(self.stream, &self.partial, at);
                self.partial.clear();
            }
        }
    }
}

impl Drop for LineSink {
    /// The last line, when the stream ended without a newline.
    fn drop(&mut self) {
        if !self.partial.is_empty() {
            self.logs.push(self.stream, &self.partial, now_ms());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_cut_kept_and_bounded() {
        let logs = Logs::default();
        let mut out = logs.sink(LogStream::Stdout);
        out.write(b"one\ntw");
        out.write(b"o\nthree");
        drop(out);
        let texts: Vec<String> = logs.tail(10).into_iter().map(|l| l.text).collect();
        assert_eq!(texts, ["one", "two", "three"]);
        assert_eq!(logs.tail(1)[0].text, "three");
        assert_eq!(logs.tail_since(0, 2).len(), 2);
        assert!(logs.tail_since(u64::MAX, 10).is_empty());

        let mut err = logs.sink(LogStream::Stderr);
        err.write(&vec![b'x'; MAX_LINE_BYTES * 2 + 1]);
        drop(err);
        let last = logs.tail(3);
        assert_eq!(last[1].text.len(), MAX_LINE_BYTES);
        assert_eq!(last[2].text, "x");
        assert_eq!(last[2].stream, LogStream::Stderr);

        let mut flood = logs.sink(LogStream::Stdout);
        for _ in 0..MAX_LOG_LINES * 2 {
            flood.write(b"line\n");
        }
        assert_eq!(logs.tail(usize::MAX).len(), MAX_LOG_LINES);
        flood.write(&vec![b'y'; MAX_LOG_BYTES]);
        let ring = logs.ring.lock().unwrap();
        assert!(ring.bytes <= MAX_LOG_BYTES, "{} bytes kept", ring.bytes);
    }
}
