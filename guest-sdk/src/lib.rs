//! Skyclaw guest SDK: what a job or service author needs to write a Skyclaw
//! WASI job (built for `wasm32-wasip2` or `wasm32-wasip1`) or a wasi:http
//! service (built for `wasm32-wasip2`) in Rust.
//!
//! # Jobs
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

//!
//! # Services
//!
//! A `wasi-http` service is a component exporting `wasi:http/incoming-handler`.
//! [`http`] reads each request whole into a [`http::Request`], hands it to
//! a function of yours, and sends the [`http::Response`] it returns;
//! [`http_handler!`] exports that function. Outbound requests go through
//! [`http::get`] and [`http::fetch`], which block until the whole response
//! is in, and reach only the hosts the service allows.
//!
//! ```no_run
//! use skyclaw_guest::http::{self, Request, Response};
//!
//! fn handle(request: Request) -> Response {
//!     match request.path.as_str() {
//!         "/health" => Response::text("ok"),
//!         "/hello" => {
//!             let name = request.query_param("name").unwrap_or_else(|| "world".into());
//!             Response::text(format!("hello, {name}"))
//!         }
//!         "/upstream" => match http::get("https://api.example.com/v1/status") {
//!             Ok(upstream) => Response::new(upstream.status, upstream.body),
//!             Err(e) => Response::text(e.to_string()).with_status(502),
//!         },
//!         _ => Response::status(404),
//!     }
//! }
//!
//! skyclaw_guest::http_handler!(handle);
//! ```
//!
//! Built as a `cdylib` with `cargo build --release --target wasm32-wasip2`
//! (a binary crate works too, with an empty `main`), and deployed with
//! `kind = "wasi-http"`, the host serves it with a fresh instance per request
//! under the service's per-request limits (`[service.limits]`): a request
//! that traps or runs out of fuel or memory answers 500, one past its time
//! 504, and other requests go on. `examples/hello-http` is a whole service.

pub mod http;
pub mod job;

pub use job::{
    EXIT_BAD_INPUT, EXIT_FAILURE, InputError, InputSource, args, exit, fail, input, input_from,
    output, output_to, run, run_with,
};
