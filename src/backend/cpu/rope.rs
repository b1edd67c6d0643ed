//! Rotary position embedding in FLUX's interleaved-pair layout, and the FLUX
//! cos/sin tables.
//!
//! Conventions: x is viewed as [rows, N, D] (rows = B·H), cos/sin as [N, D]; the pair
//! (x[2i], x[2i+1]) of position n rotates by the angle whose cos/sin sit at columns
//! 2i and 2i+1 (the tables repeat each value twice, diffusers `repeat_interleave_real`):
//!   out[2i]   = x[2i]·cos[2i]     − x[2i+1]·sin[2i]
//!   out[2i+1] = x[2i+1]·cos[2i+1] + x[2i]·sin[2i+1]
//! The backward applies the transposed rotation to the incoming gradient.

use super::PAR_THRESHOLD;
use rayon::prelude::*;

/// Applies `f(row, cos_row, sin_row, out_row)` to every [D] row of `x` ([.., N, D]).
fn per_row(
    x: &[f32],
    cos: &[f32],
    sin: &[f32],
    nd: usize,
    d: usize,
    f: impl Fn(&[f32], &[f32], &[f32], &mut [f32]) + Sync,
) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    if nd == 0 {
        return out;
    }
    let head = |(o, xh): (&mut [f32], &[f32])| {
        for (((o, xr), c), s) in
            o.chunks_exact_mut(d).zip(xh.chunks_exact(d)).zip(cos.chunks_exact(d)).zip(sin.chunks_exact(d))
        {
            f(xr, c, s, o);
        }
    };
    if x.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(nd).zip(x.par_chunks(nd)).for_each(head);
    } else {
        out.chunks_mut(nd).zip(x.chunks(nd)).for_each(head);
    }
    out
}

/// Forward rotation; `x` is [.., N, D] with D even, cos/sin [N, D].
pub fn rope_fwd(x: &[f32], cos: &[f32], sin: &[f32], n: usize, d: usize) -> Vec<f32> {
    per_row(x, cos, sin, n * d, d, |x, c, s, o| {
        for i in (0..d).step_by(2) {
            o[i] = x[i] * c[i] - x[i + 1] * s[i];
            o[i + 1] = x[i + 1] * c[i + 1] + x[i] * s[i + 1];
        }
    })
}

/// Gradient with respect to x given the output gradient `g` (same layout as x).
pub fn rope_bwd(g: &[f32], cos: &[f32], sin: &[f32], n: usize, d: usize) -> Vec<f32> {
    per_row(g, cos, sin, n * d, d, |g, c, s, o| {
        for i in (0..d).step_by(2) {
            o[i] = g[i] * c[i] + g[i + 1] * s[i + 1];
            o[i + 1] = g[i + 1] * c[i + 1] - g[i] * s[i];
        }
    })
}

/// FLUX's rotary tables: for each axis a with width axes_dim[a] (even) and each
/// k < axes_dim[a]/2, the angle pos[n, a] · θ^(−2k/axes_dim[a]) fills columns 2k, 2k+1
/// of that axis' slice; axes are concatenated. Computed in f64 (diffusers uses
/// `freqs_dtype=torch.float64`) and rounded once. `ids` is [N, axes], row-major.
pub fn flux_cos_sin(ids: &[f32], n: usize, axes_dim: &[usize], theta: f64) -> (Vec<f32>, Vec<f32>) {
    let d: usize = axes_dim.iter().sum();
    let (mut cos, mut sin) = (vec![0f32; n * d], vec![0f32; n * d]);
    let mut col = 0;
    for (a, &dim) in axes_dim.iter().enumerate() {
        for k in 0..dim / 2 {
            let freq = 1.0 / theta.powf((2 * k) as f64 / dim as f64);
            for p in 0..n {
                let (s, c) = (ids[p * axes_dim.len() + a] as f64 * freq).sin_cos();
                let at = p * d + col + 2 * k;
                cos[at..at + 2].fill(c as f32);
                sin[at..at + 2].fill(s as f32);
            }
        }
        col += dim;
    }
    (cos, sin)
}
