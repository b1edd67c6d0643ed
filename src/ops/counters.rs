//! Work counters for benchmarks and profiles: ops that dominate the arithmetic
//! (matmul, conv2d, attention; forward and backward) add their FLOPs here, so `senseflow bench model` can report
//! achieved GFLOP/s from what actually ran. Relaxed atomics: one add per op call.

use std::sync::atomic::{AtomicU64, Ordering};

static FLOPS: AtomicU64 = AtomicU64::new(0);

pub fn add_flops(n: u64) {
    FLOPS.fetch_add(n, Ordering::Relaxed);
}

/// FLOPs counted since the last `take_flops`.
pub fn take_flops() -> u64 {
    FLOPS.swap(0, Ordering::Relaxed)
}
