//! What client commands print: pretty JSON, aligned tables, short ages, and
//! the escaping that keeps what jobs, hosts and key owners wrote from acting
//! on an operator's terminal.

use std::fmt::Write as _;
use std::io::Write;

use anyhow::{Context, Result};
use serde::Serialize;

/// Spaces between table columns.
const COLUMN_GAP: usize = 2;
/// Placeholder for an empty cell.
pub const NONE: &str = "-";

const SECOND_MS: u64 = 1000;
const MINUTE_MS: u64 = 60 * SECOND_MS;
const HOUR_MS: u64 = 60 * MINUTE_MS;
const DAY_MS: u64 = 24 * HOUR_MS;

/// Unicode's bidirectional controls: they reorder the text around them, so
/// `abc\u{202e}txt.exe` shows as `abcexe.txt`.
const BIDI_CONTROLS: &[char] = &[
    '\u{061c}', '\u{200e}', '\u{200f}', '\u{202a}', '\u{202b}', '\u{202c}', '\u{202d}', '\u{202e}',
    '\u{2066}', '\u{2067}', '\u{2068}', '\u{2069}',
];

/// How much of the layout of escaped text is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// One table cell or line: newlines and tabs are escaped too.
    Line,
    /// Multi-line text (a job's output, an error): newlines and tabs stay.
    Block,
}

/// `text` safe to show on a terminal: C0 and C1 controls (escape sequences
/// begin with one), DEL and Unicode bidi controls become visible escapes such
/// as `\u{1b}` and `\u{202e}`, and bytes that are not UTF-8 become `\xff`.
/// Backslashes are left alone, so paths read as they are; the escape of a
/// control can thus look like text that spells it, which is harmless.
pub fn escape(text: impl AsRef<[u8]>, layout: Layout) -> String {
    let bytes = text.as_ref();
    let mut escaped = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            let kept = layout == Layout::Block && (c == '\n' || c == '\t');
            if kept || !(c.is_control() || BIDI_CONTROLS.contains(&c)) {
                escaped.push(c);
                continue;
            }
            match c {
                '\n' => escaped.push_str("\\n"),
                '\t' => escaped.push_str("\\t"),
                '\r' => escaped.push_str("\\r"),
                _ => {
                    let _ = write!(escaped, "\\u{{{:x}}}", c as u32);
                }
            }
        }
        for byte in chunk.invalid() {
            let _ = write!(escaped, "\\x{byte:02x}");
        }
    }
    escaped
}

/// Writes text to stdout; a closed pipe (`| head`) is an error, not a panic.
pub fn out(text: &str) -> Result<()> {
    out_bytes(text.as_bytes())
}

/// Writes bytes to stdout as they are: a job's output, for scripts to read.
pub fn out_bytes(bytes: &[u8]) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

/// Writes bytes to stderr as they are: a job's stderr.
pub fn err_bytes(bytes: &[u8]) -> Result<()> {
    let mut stderr = std::io::stderr().lock();
    stderr
        .write_all(bytes)
        .and_then(|()| stderr.flush())
        .context("cannot write to stderr")
}

/// Prints a value exactly as the API represents it, pretty-printed.
pub fn print_json(value: &impl Serialize) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("cannot encode JSON")?;
    text.push('\n');
    out(&text)
}

/// Rows under a header, each column as wide as its widest cell. Every cell is
/// escaped ([`Layout::Line`]): tables show names and commands others chose.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|row| row.iter().map(|cell| escape(cell, Layout::Line)).collect())
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    std::iter::once(&header)
        .chain(&rows)
        .map(|row| format_row(row, &widths))
        .collect()
}

fn format_row(row: &[String], widths: &[usize]) -> String {
    let mut line = String::new();
    for (cell, width) in row.iter().zip(widths) {
        let pad = width.saturating_sub(cell.chars().count()) + COLUMN_GAP;
        line.push_str(cell);
        line.extend(std::iter::repeat_n(' ', pad));
    }
    let mut line = line.trim_end().to_string();
    line.push('\n');
    line
}

/// Labelled lines, `label  value`, the values aligned and escaped
/// ([`Layout::Line`]): a job's or host's details.
pub fn fields(lines: &[(&str, String)]) -> String {
    let width = lines
        .iter()
        .map(|(label, _)| label.chars().count())
        .max()
        .unwrap_or(0);
    lines
        .iter()
        .map(|(label, value)| {
            let pad = width - label.chars().count() + COLUMN_GAP;
            format!(
                "{label}{}{}\n",
                " ".repeat(pad),
                escape(value, Layout::Line)
            )
        })
        .collect()
}

/// Characters a word may hold and still be typed to a POSIX shell as it is.
const SHELL_PLAIN: &str = "-_./=:,+@%";

/// Words (a command line) as one would type them to a POSIX shell: plain
/// words as they are, any other in single quotes (a quote in it as `'\''`),
/// so `sh -c 'exit 3'` reads back as three words. Not escaped: a view passes
/// the result through [`escape`] (tables do).
pub fn shell_words<'a>(words: impl IntoIterator<Item = &'a str>) -> String {
    words
        .into_iter()
        .map(|word| {
            let plain = !word.is_empty()
                && word
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || SHELL_PLAIN.contains(c));
            if plain {
                word.to_string()
            } else {
                format!("'{}'", word.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// The end of `bytes`: its last `max_lines` lines, and at most `max_bytes`
/// of them, starting on a character (not inside one) when the bytes are
/// UTF-8 there. Returns the part and whether anything was left out.
pub fn tail(bytes: &[u8], max_lines: usize, max_bytes: usize) -> (&[u8], bool) {
    // A final newline ends the last line; it does not start another.
    let body = bytes.strip_suffix(b"\n").unwrap_or(bytes);
    let mut start = body
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, b)| **b == b'\n')
        .nth(max_lines.saturating_sub(1))
        .map_or(0, |(at, _)| at + 1);
    if bytes.len() - start > max_bytes {
        start = bytes.len() - max_bytes;
        while start < bytes.len() && bytes[start] & 0xC0 == 0x80 {
            start += 1;
        }
    }
    (&bytes[start..], start > 0)
}

/// A duration in milliseconds as its largest whole unit: `42s`, `5m`, `3h`, `2d`.
pub fn age(ms: u64) -> String {
    if ms < MINUTE_MS {
        format!("{}s", ms / SECOND_MS)
    } else if ms < HOUR_MS {
        format!("{}m", ms / MINUTE_MS)
    } else if ms < DAY_MS {
        format!("{}h", ms / HOUR_MS)
    } else {
        format!("{}d", ms / DAY_MS)
    }
}

/// The first line of `text`, cut to `max_chars` characters with an ellipsis.
pub fn ellipsize(text: &str, max_chars: usize) -> String {
    let line = text.lines().next().unwrap_or("");
    let cut = line.chars().count() > max_chars || line.len() < text.trim_end().len();
    if !cut {
        return line.to_string();
    }
    let mut short: String = line.chars().take(max_chars.saturating_sub(1)).collect();
    short.push('…');
    short
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let rows = vec![
            vec!["a".to_string(), "longer".to_string(), "x".to_string()],
            vec!["bbb".to_string(), "c".to_string(), "y".to_string()],
        ];
        assert_eq!(
            table(&["ID", "NAME", "Z"], &rows),
            "ID   NAME    Z\na    longer  x\nbbb  c       y\n"
        );
    }

    #[test]
    fn controls_bidi_and_stray_bytes_are_escaped() {
        let text = "red\u{1b}[31m \u{202e}txt\u{9b}\tend\r\n";
        assert_eq!(
            escape(text, Layout::Line),
            "red\\u{1b}[31m \\u{202e}txt\\u{9b}\\tend\\r\\n"
        );
        assert_eq!(
            escape(text, Layout::Block),
            "red\\u{1b}[31m \\u{202e}txt\\u{9b}\tend\\r\n"
        );
        assert_eq!(escape(b"ok\xff\xfe", Layout::Block), "ok\\xff\\xfe");
        for c in BIDI_CONTROLS.iter().chain(&['\u{0}', '\u{7f}']) {
            assert!(
                escape(c.to_string(), Layout::Block).starts_with("\\u{"),
                "{c:?}"
            );
        }
        assert_eq!(escape("C:\\dir é 日本", Layout::Line), "C:\\dir é 日本");
        let cells = vec![vec!["a\u{1b}b".to_string(), "x".to_string()]];
        assert_eq!(table(&["ID", "Z"], &cells), "ID        Z\na\\u{1b}b  x\n");
    }

    #[test]
    fn words_are_quoted_as_a_shell_needs_them() {
        assert_eq!(shell_words(["sh", "-c", "exit 3"]), "sh -c 'exit 3'");
        assert_eq!(shell_words(["echo", "it's", ""]), "echo 'it'\\''s' ''");
        assert_eq!(
            shell_words(["ls", "-la", "/tmp/a_b.c", "k=v"]),
            "ls -la /tmp/a_b.c k=v"
        );
        assert_eq!(shell_words(["echo", "$HOME", "a;b"]), "echo '$HOME' 'a;b'");
    }

    #[test]
    fn tails_keep_the_last_lines_and_whole_characters() {
        let text = b"1\n2\n3\n4\n";
        assert_eq!(tail(text, 2, 100), (&b"3\n4\n"[..], true));
        assert_eq!(tail(text, 4, 100), (&text[..], false));
        assert_eq!(tail(b"no newline", 2, 100), (&b"no newline"[..], false));
        assert_eq!(tail(b"abcdef", 5, 3), (&b"def"[..], true));
        // "é" is two bytes: a cut inside it moves past it.
        assert_eq!(tail("aéé".as_bytes(), 5, 3), ("é".as_bytes(), true));
    }

    #[test]
    fn fields_align_and_escape_values() {
        let text = fields(&[("id", "j-1".into()), ("command", "a\u{1b}b".into())]);
        assert_eq!(text, "id       j-1\ncommand  a\\u{1b}b\n");
    }

    #[test]
    fn ages_use_the_largest_unit() {
        assert_eq!(age(999), "0s");
        assert_eq!(age(59_999), "59s");
        assert_eq!(age(60_000), "1m");
        assert_eq!(age(2 * HOUR_MS + 5), "2h");
        assert_eq!(age(3 * DAY_MS), "3d");
    }

    #[test]
    fn long_or_multiline_text_is_cut() {
        assert_eq!(ellipsize("short", 10), "short");
        assert_eq!(ellipsize("0123456789abc", 10), "012345678…");
        assert_eq!(ellipsize("one\ntwo", 10), "one…");
        assert_eq!(ellipsize("line\n", 10), "line");
    }
}
