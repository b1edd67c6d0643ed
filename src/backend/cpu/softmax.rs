//! Softmax and log-softmax along one axis.
//!
//! Conventions:
//! - The input is viewed as [outer, n, inner] with n the softmax axis, so no
//!   transpose is needed for inner axes: each outer block of n·inner values holds
//!   `inner` independent columns, processed together row by row (unit-stride loops).
//!   Blocks are the unit of parallel work.
//! - Each column is shifted by its maximum before exp (no overflow, exp ≤ 1); sums of
//!   exponentials and of g·y accumulate in f64.
//! - Backward takes the saved output y: softmax dx = y·(g − Σg·y), log-softmax
//!   dx = g − exp(y)·Σg.

use super::PAR_THRESHOLD;
use rayon::prelude::*;

/// Runs `f(scratch, block_index, out_block)` over the `block`-sized chunks of `out`,
/// with one scratch value (from `init`) per worker rather than one per block.
fn for_blocks<S: Send>(
    out: &mut [f32],
    block: usize,
    init: impl Fn() -> S + Sync + Send,
    f: impl Fn(&mut S, usize, &mut [f32]) + Sync + Send,
) {
    if out.is_empty() || block == 0 {
        return;
    }
    if out.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(block).enumerate().for_each_init(&init, |s, (i, o)| f(s, i, o));
    } else {
        let mut s = init();
        for (i, o) in out.chunks_mut(block).enumerate() {
            f(&mut s, i, o);
        }
    }
}

/// Softmax (or log-softmax when `log`) of `x` viewed as [outer, n, inner] along n.
pub fn softmax_fwd(x: &[f32], n: usize, inner: usize, log: bool) -> Vec<f32> {
    let block = n * inner;
    let mut y = vec![0f32; x.len()];
    let scratch = || (vec![0f32; inner], vec![0f64; inner]);
    for_blocks(&mut y, block, scratch, |(maxes, sums), k, yb| {
        let xb = &x[k * block..(k + 1) * block];
        maxes.fill(f32::NEG_INFINITY);
        for xr in xb.chunks(inner) {
            for (m, &v) in maxes.iter_mut().zip(xr) {
                *m = m.max(v);
            }
        }
        sums.fill(0.0);
        for (yr, xr) in yb.chunks_mut(inner).zip(xb.chunks(inner)) {
            for j in 0..inner {
                let e = (xr[j] - maxes[j]).exp();
                yr[j] = e;
                sums[j] += e as f64;
            }
        }
        if log {
            for (yr, xr) in yb.chunks_mut(inner).zip(xb.chunks(inner)) {
                for j in 0..inner {
                    yr[j] = (xr[j] - maxes[j]) - sums[j].ln() as f32;
                }
            }
        } else {
            for yr in yb.chunks_mut(inner) {
                for j in 0..inner {
                    yr[j] = (yr[j] as f64 / sums[j]) as f32;
                }
            }
        }
    });
    y
}

/// Input gradient of [`softmax_fwd`] from its output `y` and the output gradient `g`.
pub fn softmax_bwd(y: &[f32], g: &[f32], n: usize, inner: usize, log: bool) -> Vec<f32> {
    let block = n * inner;
    let mut dx = vec![0f32; y.len()];
    for_blocks(
        &mut dx,
        block,
        || vec![0f64; inner],
        |sums, k, db| {
            let (yb, gb) = (&y[k * block..(k + 1) * block], &g[k * block..(k + 1) * block]);
            sums.fill(0.0);
            for (yr, gr) in yb.chunks(inner).zip(gb.chunks(inner)) {
                for j in 0..inner {
                    sums[j] += if log { gr[j] as f64 } else { gr[j] as f64 * yr[j] as f64 };
                }
            }
            for ((dr, yr), gr) in db.chunks_mut(inner).zip(yb.chunks(inner)).zip(gb.chunks(inner)) {
                for j in 0..inner {
                    dr[j] = if log {
                        gr[j] - yr[j].exp() * sums[j] as f32
                    } else {
                        // g − Σg·y cancels where y ≈ 1: form it in f64.
                        (yr[j] as f64 * (gr[j] as f64 - sums[j])) as f32
                    };
                }
            }
        },
    );
    dx
}
