//! sleep: sleeps for the milliseconds in its first argument (an hour when
//! there is none) with `std::thread::sleep`, which parks the guest in a WASI
//! clock wait on the host, then prints `awake` and exits 0.

use std::time::Duration;

/// How long the guest sleeps when not told: far past any job's time limit.
const DEFAULT_SLEEP_MS: u64 = 3_600_000;

fn main() {
    let ms = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(DEFAULT_SLEEP_MS);
    std::thread::sleep(Duration::from_millis(ms));
    println!("awake");
}
