//! flood: writes the number of bytes in its first argument to stdout (all
//! `o`), then the number in its second to stderr (all `e`), in 64 KiB chunks,
//! and exits 0; both default to 0. A failed write ends it with exit code 1.

use std::io::Write;

const CHUNK: usize = 64 * 1024;

fn count(args: &[String], index: usize) -> usize {
    match args.get(index) {
        None => 0,
        Some(arg) => arg
            .parse()
            .unwrap_or_else(|_| skyclaw_guest::fail(format!("{arg:?} is not a number of bytes"))),
    }
}

fn flood(mut out: impl Write, byte: u8, mut left: usize) -> std::io::Result<()> {
    let chunk = [byte; CHUNK];
    while left > 0 {
        let n = left.min(CHUNK);
        out.write_all(&chunk[..n])?;
        left -= n;
    }
    out.flush()
}

fn main() {
    let args = skyclaw_guest::args();
    let (stdout, stderr) = (count(&args, 0), count(&args, 1));
    if let Err(e) = flood(std::io::stdout().lock(), b'o', stdout) {
        skyclaw_guest::fail(format!("cannot write stdout: {e}"));
    }
    if let Err(e) = flood(std::io::stderr().lock(), b'e', stderr) {
        skyclaw_guest::fail(format!("cannot write stderr: {e}"));
    }
    skyclaw_guest::exit(0)
}
