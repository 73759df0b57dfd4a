//! memhog: allocates the number of MiB in its first argument (default 1024),
//! 1 MiB at a time, writing every byte and keeping all of it, then prints
//! `{"asked":N,"got":M}`; exits 0 when it got all it asked for, 1 when an
//! allocation failed first.

use std::hint::black_box;

use serde::Serialize;

const MIB: usize = 1 << 20;

#[derive(Serialize)]
struct Got {
    asked: usize,
    got: usize,
}

fn main() {
    let asked = match skyclaw_guest::args().first() {
        None => 1024,
        Some(arg) => arg
            .parse()
            .unwrap_or_else(|_| skyclaw_guest::fail(format!("{arg:?} is not a number of MiB"))),
    };
    let mut chunks: Vec<Vec<u8>> = Vec::new();
    if chunks.try_reserve_exact(asked).is_ok() {
        while chunks.len() < asked {
            let mut chunk = Vec::new();
            if chunk.try_reserve_exact(MIB).is_err() {
                break;
            }
            chunk.resize(MIB, 1);
            chunks.push(black_box(chunk));
        }
    }
    let got = black_box(&chunks).len();
    if let Err(e) = skyclaw_guest::output(&Got { asked, got }) {
        skyclaw_guest::fail(format!("cannot write the output: {e}"));
    }
    skyclaw_guest::exit(if got == asked { 0 } else { 1 })
}
