//! Reductions over the innermost run of a contiguous buffer: `x` is viewed as
//! [outer, r] and each row reduces to one value. The op layer permutes reduced axes
//! to the end first. Sums accumulate in f64 so long rows stay exact to f32 rounding.

use super::PAR_THRESHOLD;
use rayon::prelude::*;

/// `r` must be > 0 (the op layer handles empty reductions).
fn rows(x: &[f32], r: usize, f: impl Fn(&[f32]) -> f32 + Sync + Send) -> Vec<f32> {
    if x.len() >= PAR_THRESHOLD {
        x.par_chunks(r).map(f).collect()
    } else {
        x.chunks(r).map(f).collect()
    }
}

pub fn sum_rows(x: &[f32], r: usize) -> Vec<f32> {
    rows(x, r, |row| row.iter().map(|&v| v as f64).sum::<f64>() as f32)
}

/// Column sums of `x` viewed as [rows, cols]: out[j] = Σᵢ x[i·cols + j], in f64 and in
/// row order (the order `sum_rows` uses on the transpose, so the same result), without
/// transposing. Threads split the columns.
pub fn sum_cols(x: &[f32], cols: usize) -> Vec<f32> {
    const BLOCK: usize = 64;
    let rows = x.len() / cols.max(1);
    let block = |j0: usize, out: &mut [f32]| {
        let w = out.len();
        let mut acc = vec![0f64; w];
        for i in 0..rows {
            let row = &x[i * cols + j0..i * cols + j0 + w];
            acc.iter_mut().zip(row).for_each(|(a, &v)| *a += v as f64);
        }
        out.iter_mut().zip(acc).for_each(|(o, a)| *o = a as f32);
    };
    let mut out = vec![0f32; cols];
    if x.len() >= PAR_THRESHOLD && cols > BLOCK {
        out.par_chunks_mut(BLOCK).enumerate().for_each(|(b, o)| block(b * BLOCK, o));
    } else {
        block(0, &mut out);
    }
    out
}

/// Max of each row and the index of its first maximum.
pub fn max_rows(x: &[f32], r: usize) -> (Vec<f32>, Vec<usize>) {
    let idx: Vec<usize> = if x.len() >= PAR_THRESHOLD {
        x.par_chunks(r).map(argmax).collect()
    } else {
        x.chunks(r).map(argmax).collect()
    };
    let vals = idx.iter().enumerate().map(|(i, &j)| x[i * r + j]).collect();
    (vals, idx)
}

fn argmax(row: &[f32]) -> usize {
    let mut best = 0;
    for (i, &v) in row.iter().enumerate() {
        // NaN wins so that it propagates like torch.max.
        if v > row[best] || (v.is_nan() && !row[best].is_nan()) {
            best = i;
        }
    }
    best
}
