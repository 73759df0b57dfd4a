//! What client commands print: pretty JSON, aligned tables, short ages.

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

/// Writes text to stdout; a closed pipe (`| head`) is an error, not a panic.
pub fn out(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .context("cannot write to stdout")
}

/// Prints a value exactly as the API represents it, pretty-printed.
pub fn print_json(value: &impl Serialize) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).context("cannot encode JSON")?;
    text.push('\n');
    out(&text)
}

/// Rows under a header, each column as wide as its widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
    std::iter::once(&header)
        .chain(rows)
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
