//! Kernels of spectral normalization: matrix-vector products for the power iteration,
//! the scaled output W/σ, and its backward. W is a contiguous row-major [rows, cols]
//! f32 matrix; products accumulate in f64 (σ and the iterates feed a division, and
//! the rows of a conv weight are thousands of terms long). The op layer guarantees
//! rows, cols > 0.

use super::PAR_THRESHOLD;
use rayon::prelude::*;

/// Rows per task in the parallel Wᵀu (each task sums into its own [cols] vector).
const ROWS_PER_TASK: usize = 64;

/// W v: one dot product per row.
pub fn mv(w: &[f32], cols: usize, v: &[f32]) -> Vec<f64> {
    let dot = |row: &[f32]| row.iter().zip(v).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>();
    if w.len() >= PAR_THRESHOLD {
        w.par_chunks(cols).map(dot).collect()
    } else {
        w.chunks(cols).map(dot).collect()
    }
}

/// Wᵀ u: rows scaled by u and summed.
pub fn mtv(w: &[f32], cols: usize, u: &[f32]) -> Vec<f64> {
    let part = |(rows, us): (&[f32], &[f32])| {
        let mut acc = vec![0f64; cols];
        for (row, &ui) in rows.chunks(cols).zip(us) {
            for (a, &x) in acc.iter_mut().zip(row) {
                *a += ui as f64 * x as f64;
            }
        }
        acc
    };
    if w.len() >= PAR_THRESHOLD {
        w.par_chunks(cols * ROWS_PER_TASK).zip(u.par_chunks(ROWS_PER_TASK)).map(part).reduce(
            || vec![0f64; cols],
            |mut a, b| {
                a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                a
            },
        )
    } else {
        part((w, u))
    }
}

/// torch `F.normalize(x, dim=0, eps)`: x / max(‖x‖₂, eps), rounded to f32.
pub fn normalize(x: &[f64], eps: f32) -> Vec<f32> {
    let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt().max(eps as f64);
    x.iter().map(|v| (v / norm) as f32).collect()
}

/// W / σ.
pub fn scale_by_inverse(w: &[f32], sigma: f64) -> Vec<f32> {
    let f = |&x: &f32| (x as f64 / sigma) as f32;
    if w.len() >= PAR_THRESHOLD {
        w.par_iter().map(f).collect()
    } else {
        w.iter().map(f).collect()
    }
}

/// Gradient of W/σ(W) with σ = uᵀWv (u, v constants): dW = g/σ − (⟨g, W⟩/σ²)·u vᵀ.
pub fn backward(w: &[f32], g: &[f32], u: &[f32], v: &[f32], sigma: f64) -> Vec<f32> {
    let cols = v.len();
    let gw: f64 = if w.len() >= PAR_THRESHOLD {
        w.par_iter().zip(g).map(|(&a, &b)| a as f64 * b as f64).sum()
    } else {
        w.iter().zip(g).map(|(&a, &b)| a as f64 * b as f64).sum()
    };
    let c = gw / (sigma * sigma);
    let row = |(i, (out, gr)): (usize, (&mut [f32], &[f32]))| {
        let cu = c * u[i] as f64;
        for ((o, &gij), &vj) in out.iter_mut().zip(gr).zip(v) {
            *o = (gij as f64 / sigma - cu * vj as f64) as f32;
        }
    };
    let mut dw = vec![0f32; w.len()];
    if w.len() >= PAR_THRESHOLD {
        dw.par_chunks_mut(cols).zip(g.par_chunks(cols)).enumerate().for_each(row);
    } else {
        dw.chunks_mut(cols).zip(g.chunks(cols)).enumerate().for_each(row);
    }
    dw
}
