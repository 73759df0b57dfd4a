//! busy: counts for ever, making no calls, until fuel or a timeout stops it.

use std::hint::black_box;

fn main() {
    let mut count: u64 = 0;
    loop {
        count = black_box(count.wrapping_add(1));
    }
}
