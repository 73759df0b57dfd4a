//! A job's captured output stream, native or WASI alike: the bytes kept up to
//! the host's limit and a count of those dropped past it, and how a stream
//! becomes text in a [`JobResult`] without being altered.

use skyclaw_api::jobs::{JobResult, OutputEncoding};

use crate::spawned::OutputSink;

/// Longest UTF-8 encoding of one character.
const MAX_UTF8_CHAR_BYTES: usize = 4;

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

    /// The stream as a JSON string carries it (text when it is UTF-8, else
    /// base64) and the bytes dropped.
    fn encode(mut self) -> (String, OutputEncoding, u64) {
        if self.dropped > 0 {
            self.drop_cut_character();
        }
        let (text, encoding) = OutputEncoding::encode(self.kept);
        (text, encoding, self.dropped)
    }

    /// The limit may cut the last character kept in two, which would make
    /// valid UTF-8 output look like bytes; the part kept is dropped with the
    /// rest, so the output stays text and the dropped count stays exact.
    /// Output that was not cut keeps every byte, whole or not.
    fn drop_cut_character(&mut self) {
        let Err(e) = std::str::from_utf8(&self.kept) else {
            return;
        };
        let tail = self.kept.len() - e.valid_up_to();
        // `error_len() == None`: the bytes end inside a character, not at an
        // invalid one.
        if e.error_len().is_none() && tail < MAX_UTF8_CHAR_BYTES {
            self.kept.truncate(e.valid_up_to());
            self.dropped += tail as u64;
        }
    }
}

/// A stream captured as a native process writes it: [`Captured`] under the
/// host's limit.
#[derive(Debug)]
pub(crate) struct Bounded {
    captured: Captured,
    limit: usize,
}

impl Bounded {
    /// A stream that keeps at most `limit` bytes.
    pub(crate) fn new(limit: usize) -> Bounded {
        Bounded {
            captured: Captured::default(),
            limit,
        }
    }

    pub(crate) fn into_captured(self) -> Captured {
        self.captured
    }
}

impl OutputSink for Bounded {
    fn write(&mut self, chunk: &[u8]) {
        self.captured.push(chunk, self.limit);
    }
}

/// A result holding a job's two output streams (as text, or base64 when not
/// UTF-8, and what was cut); the caller sets the rest.
pub(crate) fn output_result(stdout: Captured, stderr: Captured) -> JobResult {
    let (stdout, stdout_encoding, stdout_dropped) = stdout.encode();
    let (stderr, stderr_encoding, stderr_dropped) = stderr.encode();
    JobResult {
        stdout,
        stderr,
        stdout_encoding,
        stderr_encoding,
        stdout_truncated: stdout_dropped > 0,
        stderr_truncated: stderr_dropped > 0,
        stdout_dropped_bytes: stdout_dropped,
        stderr_dropped_bytes: stderr_dropped,
        ..JobResult::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn captured(bytes: &[u8], limit: usize) -> Captured {
        let mut c = Captured::default();
        c.push(bytes, limit);
        c
    }

    #[test]
    fn utf8_output_stays_text_and_other_bytes_are_base64() {
        let result = output_result(captured("héllo\n".as_bytes(), 100), captured(&[0xff], 100));
        assert_eq!(result.stdout, "héllo\n");
        assert!(result.stdout_encoding.is_utf8());
        assert_eq!(result.stderr_encoding, OutputEncoding::Base64);
        assert_eq!(result.stderr_bytes().unwrap().as_ref(), [0xff]);
    }

    #[test]
    fn a_character_cut_by_the_limit_is_dropped_whole() {
        // "é" is two bytes: a limit of 4 keeps "a", "é" and half of the next "é".
        let result = output_result(captured("aéé".as_bytes(), 4), Captured::default());
        assert_eq!(result.stdout, "aé");
        assert!(result.stdout_encoding.is_utf8());
        assert_eq!(
            result.stdout_dropped_bytes, 2,
            "the cut half counts as dropped"
        );
        let euro = "€€"; // three bytes each
        let result = output_result(captured(euro.as_bytes(), 5), Captured::default());
        assert_eq!(
            (result.stdout.as_str(), result.stdout_dropped_bytes),
            ("€", 3)
        );
    }

    #[test]
    fn output_that_ends_mid_character_uncut_keeps_every_byte() {
        let bytes = &"é".as_bytes()[..1];
        let result = output_result(captured(bytes, 100), Captured::default());
        assert_eq!(result.stdout_encoding, OutputEncoding::Base64);
        assert_eq!(result.stdout_bytes().unwrap().as_ref(), bytes);
        assert!(!result.stdout_truncated);
        // Cut, but with an invalid byte before the cut: not text anyway.
        let result = output_result(captured(&[0xff, b'a', 0xc3, 0xa9], 3), Captured::default());
        assert_eq!(result.stdout_encoding, OutputEncoding::Base64);
        assert_eq!(result.stdout_bytes().unwrap().as_ref(), [0xff, b'a', 0xc3]);
    }
}
