//! recurse: recurses without bound until the call stack runs out (a trap).

use std::hint::black_box;

/// Calls itself and uses the result after the call returns, through
/// `black_box`, so the optimiser can neither see the end nor make it a loop.
fn recurse(depth: u64) -> u64 {
    if black_box(depth) == u64::MAX {
        return depth;
    }
    let below = recurse(black_box(depth + 1));
    black_box(below).wrapping_add(depth)
}

fn main() {
    let depth = recurse(0);
    println!("{depth}");
}
