//! service: a wasi:http component for the serving tests. Routes: `/health`
//! → 200 `ok`; `/hello` → `hello from a wasi:http guest`; `/version` →
//! [`VERSION`]; `/loop` → counts for ever (until fuel or the time limit
//! stops it); `/sleep?ms=N` → parks in a WASI clock wait for N ms (an hour
//! when not told), then `slept N`; `/alloc?mb=N` → allocates and writes N
//! MiB, then `allocated N`; `/fetch?url=U` → GETs U and answers its status
//! and body, or 502 with the error; `/echo` → the request's body and its
//! method in `x-method`. Anything else is 404.

use std::hint::black_box;
use std::time::Duration;

use skyclaw_guest::http::{self, Request, Response};

/// What `/version` answers: tests tell versions of a service apart by it.
const VERSION: &str = "service 1";
/// How long `/sleep` sleeps when not told: far past any request's limit.
const DEFAULT_SLEEP_MS: u64 = 3_600_000;
const MIB: usize = 1 << 20;

fn handle(request: Request) -> Response {
    match request.path.as_str() {
        "/health" => Response::text("ok"),
        "/hello" => Response::text("hello from a wasi:http guest"),
        "/version" => Response::text(VERSION),
        "/echo" => {
            let method = request.method.clone();
            Response::new(200, request.body).with_header("x-method", method)
        }
        "/loop" => {
            let mut count: u64 = 0;
            loop {
                count = black_box(count.wrapping_add(1));
            }
        }
        "/sleep" => {
            let ms = number(&request, "ms").unwrap_or(DEFAULT_SLEEP_MS);
            std::thread::sleep(Duration::from_millis(ms));
            Response::text(format!("slept {ms}"))
        }
        "/alloc" => {
            let mb = number(&request, "mb").unwrap_or(1) as usize;
            let mut chunks = Vec::with_capacity(mb);
            for _ in 0..mb {
                chunks.push(black_box(vec![1u8; MIB]));
            }
            Response::text(format!("allocated {}", black_box(chunks).len()))
        }
        "/fetch" => {
            let Some(url) = request.query_param("url") else {
                return Response::text("no url").with_status(400);
            };
            match http::get(&url) {
                Ok(upstream) => Response::new(upstream.status, upstream.body),
                Err(e) => Response::text(format!("error: {e}")).with_status(502),
            }
        }
        _ => Response::text("no such route").with_status(404),
    }
}

fn number(request: &Request, name: &str) -> Option<u64> {
    request.query_param(name)?.parse().ok()
}

skyclaw_guest::http_handler!(handle);

/// Never called: the host calls the handler, not a command's `main`.
fn main() {}
