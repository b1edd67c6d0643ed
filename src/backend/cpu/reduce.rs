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
