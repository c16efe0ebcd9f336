//! Envelope benchmarks (see scripts/bench-crypto.sh).

fn main() {}
