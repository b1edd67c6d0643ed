//! adaLN kernels for [B, N, D] token activations modulated by per-sample [B, D]
//! vectors broadcast over the N tokens (diffusers SD3/FLUX AdaLayerNormZero:
//! `x * (1 + scale[:, None]) + shift[:, None]`, and the gated residual
//! `residual + gate[:, None] * y`).
//!
//! Conventions:
//! - Rows are the B·N tokens; row r belongs to sample r / N.
//! - Gradients of the [B, D] vectors are column sums over each sample's N rows
//!   (`norm::group_column_sums`: fixed-size f64 partials, reproducible for any
//!   thread count).
//! - layer_norm_modulate is layer_norm with the per-sample weight 1+scale and bias
//!   shift, so it runs the grouped layer-norm kernels: one pass forward, one fused
//!   backward (dscale = Σ g·x̂, dshift = Σ g).

use super::norm::{group_column_sums, layer_norm_bwd_affine, layer_norm_bwd_dx, layer_norm_fwd, map_rows, split_pairs};

#[inline]
fn row(x: &[f32], r: usize, d: usize) -> &[f32] {
    &x[r * d..(r + 1) * d]
}

/// 1 + scale, the per-sample multiplier of the normalized activations.
fn one_plus(scale: &[f32]) -> Vec<f32> {
    scale.iter().map(|&s| 1.0 + s).collect()
}

/// y = x·(1 + scale[b]) + shift[b] for x [B, n, d], shift/scale [B, d].
pub fn modulate_fwd(x: &[f32], shift: &[f32], scale: &[f32], n: usize, d: usize) -> Vec<f32> {
    let mut y = vec![0f32; x.len()];
    map_rows(&mut y, d, |r, yr| {
        let (xr, sh, sc) = (row(x, r, d), row(shift, r / n, d), row(scale, r / n, d));
        for j in 0..d {
            yr[j] = xr[j] * (1.0 + sc[j]) + sh[j];
        }
    });
    y
}

/// dx of [`modulate_fwd`]: g·(1 + scale[b]).
pub fn modulate_bwd_dx(g: &[f32], scale: &[f32], n: usize, d: usize) -> Vec<f32> {
    let mut dx = vec![0f32; g.len()];
    map_rows(&mut dx, d, |r, dr| {
        let (gr, sc) = (row(g, r, d), row(scale, r / n, d));
        for j in 0..d {
            dr[j] = gr[j] * (1.0 + sc[j]);
        }
    });
    dx
}

/// (dshift, dscale) of [`modulate_fwd`]: Σ_n g and Σ_n g·x, each [batch, d], in one
/// pass; dscale only when `x` is given.
pub fn modulate_bwd_shift_scale(
    x: Option<&[f32]>,
    g: &[f32],
    batch: usize,
    n: usize,
    d: usize,
) -> (Vec<f32>, Option<Vec<f32>>) {
    let Some(x) = x else {
        let dshift = group_column_sums(batch, n, d, |b, i, acc| {
            for (a, &v) in acc.iter_mut().zip(row(g, b * n + i, d)) {
                *a += v as f64;
            }
        });
        return (dshift.into_iter().map(|v| v as f32).collect(), None);
    };
    let sums = group_column_sums(batch, n, 2 * d, |b, i, acc| {
        let r = b * n + i;
        let (xr, gr) = (row(x, r, d), row(g, r, d));
        let (dshift, dscale) = acc.split_at_mut(d);
        for j in 0..d {
            dshift[j] += gr[j] as f64;
            dscale[j] += (gr[j] * xr[j]) as f64;
        }
    });
    let (dshift, dscale) = split_pairs(&sums, batch, d);
    (dshift, Some(dscale))
}

/// y = layer_norm(x)·(1 + scale[b]) + shift[b] (no affine of its own) for x [B, n, d].
/// Returns (y, mean, rstd) per row.
pub fn layer_norm_modulate_fwd(
    x: &[f32],
    shift: &[f32],
    scale: &[f32],
    n: usize,
    d: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f64>, Vec<f32>) {
    layer_norm_fwd(x, d, Some(&one_plus(scale)), Some(shift), n.max(1), eps)
}

/// dx of [`layer_norm_modulate_fwd`].
pub fn layer_norm_modulate_bwd_dx(
    x: &[f32],
    g: &[f32],
    mean: &[f64],
    rstd: &[f32],
    scale: &[f32],
    n: usize,
    d: usize,
) -> Vec<f32> {
    layer_norm_bwd_dx(x, g, mean, rstd, d, Some(&one_plus(scale)), n.max(1))
}

/// (dshift, dscale) of [`layer_norm_modulate_fwd`]: Σ_n g and Σ_n g·x̂, each [batch, d].
pub fn layer_norm_modulate_bwd_shift_scale(
    x: &[f32],
    g: &[f32],
    mean: &[f64],
    rstd: &[f32],
    batch: usize,
    n: usize,
    d: usize,
) -> (Vec<f32>, Vec<f32>) {
    let (dscale, dshift) = layer_norm_bwd_affine(x, g, mean, rstd, d, batch, n);
    (dshift, dscale)
}

/// out = residual + gate[b]·y for residual/y [B, n, d], gate [B, d].
pub fn gated_residual_fwd(residual: &[f32], gate: &[f32], y: &[f32], n: usize, d: usize) -> Vec<f32> {
    let mut out = vec![0f32; y.len()];
    map_rows(&mut out, d, |r, o| {
        let (rr, gt, yr) = (row(residual, r, d), row(gate, r / n, d), row(y, r, d));
        for j in 0..d {
            o[j] = rr[j] + gt[j] * yr[j];
        }
    });
    out
}

/// dy of [`gated_residual_fwd`]: g·gate[b] (dresidual is g itself).
pub fn gated_residual_bwd_dy(g: &[f32], gate: &[f32], n: usize, d: usize) -> Vec<f32> {
    let mut dy = vec![0f32; g.len()];
    map_rows(&mut dy, d, |r, o| {
        let (gr, gt) = (row(g, r, d), row(gate, r / n, d));
        for j in 0..d {
            o[j] = gr[j] * gt[j];
        }
    });
    dy
}

/// dgate of [`gated_residual_fwd`]: Σ_n g·y, [batch, d].
pub fn gated_residual_bwd_gate(g: &[f32], y: &[f32], batch: usize, n: usize, d: usize) -> Vec<f32> {
    group_column_sums(batch, n, d, |b, i, acc| {
        let r = b * n + i;
        let (gr, yr) = (row(g, r, d), row(y, r, d));
        for j in 0..d {
            acc[j] += (gr[j] * yr[j]) as f64;
        }
    })
    .into_iter()
    .map(|v| v as f32)
    .collect()
}
