//! Skyclaw guest SDK: what a job author needs to write a Skyclaw WASI job in
//! Rust and build it for `wasm32-wasip2` (or `wasm32-wasip1`).
//!
//! A Skyclaw WASI job is a command: the host runs it in a sandbox with the
//! job's arguments (`argv[0]` is the program's file name as it was pushed,
//! `main.wasm` when the job names none; the job's own arguments follow), its
//! environment and its stdin, and nothing else: no filesystem, no network. The job writes its result to stdout, diagnostics to stderr, and
//! exits 0 when it succeeded; any other exit code makes the job fail.
//!
//! This crate follows one convention on top of that:
//!
//! - **Input** is one JSON value, read from stdin; when stdin is empty (or
//!   holds only whitespace), from the first argument instead; when neither is
//!   given, the input is JSON `null`, so an `Option<T>` input is `None`.
//! - **Output** is one JSON value on stdout, followed by a newline.
//! - **Exit codes**: 0 when the job succeeded, 1 when it failed
//!   ([`EXIT_FAILURE`]), 2 when its input could not be read or parsed
//!   ([`EXIT_BAD_INPUT`]). A `wasm32-wasip2` component can only report
//!   success or failure (the `exit` of WASI 0.2's `wasi:cli/exit`, which
//!   Rust's std calls, takes no code), so the host sees every nonzero code of
//!   a component as 1; a `wasm32-wasip1` module keeps its code. The message
//!   on stderr says what went wrong.
//!
//! [`run`] ties these together; [`input`], [`output`], [`args`], [`exit`] and
//! [`fail`] are there for jobs that want to do part of it themselves.
//!
//! # Example
//!
//! ```no_run
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Deserialize)]
//! struct Add {
//!     a: i64,
//!     b: i64,
//! }
//!
//! #[derive(Serialize)]
//! struct Sum {
//!     sum: i64,
//! }
//!
//! fn main() {
//!     skyclaw_guest::run(|add: Add| -> Result<Sum, String> {
//!         let sum = add.a.checked_add(add.b).ok_or("the sum overflows")?;
//!         Ok(Sum { sum })
//!     })
//! }
//! ```
//!
//! Built with `cargo build --release --target wasm32-wasip2` and submitted
//! with `skyclaw job wasi add.wasm --wait -- '{"a":2,"b":3}'`, it prints
//! `{"sum":5}` and exits 0; given `{"a":2}` it says on stderr that field `b`
//! is missing and fails.
//!
//! The IO functions have variants over any [`std::io::Read`] /
//! [`std::io::Write`] ([`input_from`], [`output_to`], [`run_with`]), so a
//! job's logic and its handling of input can be tested natively with
//! `cargo test`.

pub mod job;

pub use job::{
    EXIT_BAD_INPUT, EXIT_FAILURE, InputError, InputSource, args, exit, fail, input, input_from,
    output, output_to, run, run_with,
};
