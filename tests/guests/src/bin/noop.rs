//! noop: does nothing and exits 0. The benchmarks use it to measure what
//! running a WASI job costs the host, with no work of the job's own.

fn main() {}
