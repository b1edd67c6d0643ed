//! Row normalizations: layer_norm, rms_norm and group_norm kernels, plus the row-map
//! and column-sum helpers that the modulate kernels share.
//!
//! Conventions:
//! - `x` is a contiguous buffer of rows; a row holds the values that one mean/rstd
//!   normalizes (the last axis for layer and RMS norm, one (sample, group) slab of
//!   [C/G, *spatial] for group norm). Rows are the unit of parallel work.
//! - Statistics use two passes in f64: the mean, then Σ(x−mean)²/n (biased, like
//!   torch). The one-pass E[x²]−E[x]² cancels catastrophically when |mean| ≫ std.
//!   The mean stays in f64 so that x−mean is formed before rounding to f32.
//! - Backward is fused. With x̂ = (x−mean)·rstd and gw = g·w (w: whatever multiplies
//!   x̂), dx = rstd·(gw − mean(gw) − x̂·mean(gw·x̂)); RMS norm has no mean(gw) term.
//!   Row sums accumulate in f64. Weight and bias gradients are column sums over rows.
//! - Column sums add fixed-size partials in a fixed order, so every result is the
//!   same for any thread count.

use super::PAR_THRESHOLD;
use rayon::prelude::*;

/// Rows summed into one partial of a column sum. Fixed (not one partial per thread)
/// so that the summation order, and hence the result, is reproducible.
const ROWS_PER_PARTIAL: usize = 32;

/// Runs `f(row_index, out_row)` for every `d`-wide row of `out`, in parallel above
/// `PAR_THRESHOLD` elements, and returns the values `f` gives in row order.
pub fn map_rows<T: Send>(out: &mut [f32], d: usize, f: impl Fn(usize, &mut [f32]) -> T + Sync + Send) -> Vec<T> {
    if out.is_empty() || d == 0 {
        return Vec::new();
    }
    if out.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(d).enumerate().map(|(r, o)| f(r, o)).collect()
    } else {
        out.chunks_mut(d).enumerate().map(|(r, o)| f(r, o)).collect()
    }
}

/// Column sums over groups of rows: for each of `groups` groups, the sum over its
/// `rows` rows of the `width` values that `add_row(group, row, acc)` adds into `acc`.
/// Returns [groups, width] in f64.
pub fn group_column_sums(
    groups: usize,
    rows: usize,
    width: usize,
    add_row: impl Fn(usize, usize, &mut [f64]) + Sync + Send,
) -> Vec<f64> {
    let chunks = rows.div_ceil(ROWS_PER_PARTIAL).max(1);
    let partial = |t: usize| {
        let (grp, c) = (t / chunks, t % chunks);
        let mut acc = vec![0f64; width];
        for i in c * ROWS_PER_PARTIAL..((c + 1) * ROWS_PER_PARTIAL).min(rows) {
            add_row(grp, i, &mut acc);
        }
        acc
    };
    let tasks = groups * chunks;
    let parts: Vec<Vec<f64>> = if groups * rows * width >= PAR_THRESHOLD {
        (0..tasks).into_par_iter().map(partial).collect()
    } else {
        (0..tasks).map(partial).collect()
    };
    let mut out = vec![0f64; groups * width];
    for (t, p) in parts.iter().enumerate() {
        let grp = t / chunks;
        for (o, v) in out[grp * width..(grp + 1) * width].iter_mut().zip(p) {
            *o += v;
        }
    }
    out
}

#[inline]
fn row(x: &[f32], r: usize, d: usize) -> &[f32] {
    &x[r * d..(r + 1) * d]
}

/// Two-pass mean and 1/sqrt(biased variance + eps) of one row.
fn mean_rstd(x: &[f32], eps: f32) -> (f64, f32) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|&v| {
            let c = v as f64 - mean;
            c * c
        })
        .sum::<f64>()
        / n;
    (mean, (1.0 / (var + eps as f64).sqrt()) as f32)
}

/// The [d] slice of group `r / rows_per_group` in a [groups, d] parameter.
#[inline]
fn group_slice(p: Option<&[f32]>, r: usize, rows_per_group: usize, d: usize) -> Option<&[f32]> {
    p.map(|p| row(p, r / rows_per_group, d))
}

/// Layer norm of `d`-wide rows: y = (x − mean)·rstd·w + b. `weight`/`bias` are
/// [groups, d]: row r uses group r / `rows_per_group` (one group for plain
/// layer_norm; one per sample for adaLN). Returns (y, mean, rstd) with one statistic
/// per row.
pub fn layer_norm_fwd(
    x: &[f32],
    d: usize,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    rows_per_group: usize,
    eps: f32,
) -> (Vec<f32>, Vec<f64>, Vec<f32>) {
    let mut y = vec![0f32; x.len()];
    let stats = map_rows(&mut y, d, |r, yr| {
        let xr = row(x, r, d);
        let (mean, rstd) = mean_rstd(xr, eps);
        let w = group_slice(weight, r, rows_per_group, d);
        let b = group_slice(bias, r, rows_per_group, d);
        for (i, (o, &v)) in yr.iter_mut().zip(xr).enumerate() {
            let mut h = (v as f64 - mean) as f32 * rstd;
            if let Some(w) = w {
                h *= w[i];
            }
            if let Some(b) = b {
                h += b[i];
            }
            *o = h;
        }
        (mean, rstd)
    });
    let (mean, rstd) = stats.into_iter().unzip();
    (y, mean, rstd)
}

/// dx of [`layer_norm_fwd`] (weight grouped the same way).
pub fn layer_norm_bwd_dx(
    x: &[f32],
    g: &[f32],
    mean: &[f64],
    rstd: &[f32],
    d: usize,
    weight: Option<&[f32]>,
    rows_per_group: usize,
) -> Vec<f32> {
    let mut dx = vec![0f32; x.len()];
    map_rows(&mut dx, d, |r, dxr| {
        let (xr, gr) = (row(x, r, d), row(g, r, d));
        let w = group_slice(weight, r, rows_per_group, d);
        let (m, s) = (mean[r], rstd[r]);
        let (mut sum_gw, mut sum_gwx) = (0f64, 0f64);
        // First pass: x̂ goes into dx, the row sums into f64.
        for i in 0..d {
            let xh = (xr[i] as f64 - m) as f32 * s;
            let gw = gr[i] * w.map_or(1.0, |w| w[i]);
            dxr[i] = xh;
            sum_gw += gw as f64;
            sum_gwx += (gw * xh) as f64;
        }
        let (a, b) = ((sum_gw / d as f64) as f32, (sum_gwx / d as f64) as f32);
        for i in 0..d {
            let gw = gr[i] * w.map_or(1.0, |w| w[i]);
            dxr[i] = s * (gw - a - dxr[i] * b);
        }
    });
    dx
}

/// Weight and bias gradients of [`layer_norm_fwd`] for `groups` groups of
/// `rows_per_group` rows: (Σ g·x̂, Σ g) over each group's rows, each [groups, d].
pub fn layer_norm_bwd_affine(
    x: &[f32],
    g: &[f32],
    mean: &[f64],
    rstd: &[f32],
    d: usize,
    groups: usize,
    rows_per_group: usize,
) -> (Vec<f32>, Vec<f32>) {
    if x.is_empty() {
        return (vec![0.0; groups * d], vec![0.0; groups * d]);
    }
    let sums = group_column_sums(groups, rows_per_group, 2 * d, |grp, i, acc| {
        let r = grp * rows_per_group + i;
        let (xr, gr) = (row(x, r, d), row(g, r, d));
        let (m, s) = (mean[r], rstd[r]);
        let (dw, db) = acc.split_at_mut(d);
        for j in 0..d {
            let xh = (xr[j] as f64 - m) as f32 * s;
            dw[j] += (gr[j] * xh) as f64;
            db[j] += gr[j] as f64;
        }
    });
    split_pairs(&sums, groups, d)
}

/// Splits [groups, 2, d] f64 sums into two [groups, d] f32 buffers.
pub fn split_pairs(sums: &[f64], groups: usize, d: usize) -> (Vec<f32>, Vec<f32>) {
    let (mut a, mut b) = (Vec::with_capacity(groups * d), Vec::with_capacity(groups * d));
    for grp in 0..groups {
        let s = &sums[grp * 2 * d..(grp + 1) * 2 * d];
        a.extend(s[..d].iter().map(|&v| v as f32));
        b.extend(s[d..].iter().map(|&v| v as f32));
    }
    (a, b)
}

/// RMS norm of `d`-wide rows: y = x·rstd·w with rstd = 1/sqrt(mean(x²) + eps).
/// Returns (y, rstd per row).
pub fn rms_norm_fwd(x: &[f32], d: usize, weight: Option<&[f32]>, eps: f32) -> (Vec<f32>, Vec<f32>) {
    let mut y = vec![0f32; x.len()];
    let rstd = map_rows(&mut y, d, |r, yr| {
        let xr = row(x, r, d);
        let ms = xr.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / d as f64;
        let s = (1.0 / (ms + eps as f64).sqrt()) as f32;
        for (i, (o, &v)) in yr.iter_mut().zip(xr).enumerate() {
            *o = v * s * weight.map_or(1.0, |w| w[i]);
        }
        s
    });
    (y, rstd)
}

/// dx of [`rms_norm_fwd`]: rstd·(gw − x̂·mean(gw·x̂)).
pub fn rms_norm_bwd_dx(x: &[f32], g: &[f32], rstd: &[f32], d: usize, weight: Option<&[f32]>) -> Vec<f32> {
    let mut dx = vec![0f32; x.len()];
    map_rows(&mut dx, d, |r, dxr| {
        let (xr, gr, s) = (row(x, r, d), row(g, r, d), rstd[r]);
        let mut sum_gwx = 0f64;
        for i in 0..d {
            let gw = gr[i] * weight.map_or(1.0, |w| w[i]);
            sum_gwx += (gw * xr[i] * s) as f64;
        }
        let b = (sum_gwx / d as f64) as f32;
        for i in 0..d {
            let gw = gr[i] * weight.map_or(1.0, |w| w[i]);
            dxr[i] = s * (gw - xr[i] * s * b);
        }
    });
    dx
}

/// Weight gradient of [`rms_norm_fwd`]: Σ over rows of g·x̂, [d].
pub fn rms_norm_bwd_weight(x: &[f32], g: &[f32], rstd: &[f32], d: usize) -> Vec<f32> {
    let rows = rstd.len();
    group_column_sums(1, rows, d, |_, r, acc| {
        let (xr, gr, s) = (row(x, r, d), row(g, r, d), rstd[r]);
        for j in 0..d {
            acc[j] += (gr[j] * xr[j] * s) as f64;
        }
    })
    .into_iter()
    .map(|v| v as f32)
    .collect()
}

/// Geometry of a group norm input [batch, channels, *spatial] (spatial: the product
/// of the trailing dims, 1 when there are none).
#[derive(Clone, Copy, Debug)]
pub struct GroupNormShape {
    pub batch: usize,
    pub channels: usize,
    pub groups: usize,
    pub spatial: usize,
}

impl GroupNormShape {
    fn channels_per_group(&self) -> usize {
        self.channels / self.groups
    }
    /// Values per normalized row: one (sample, group) slab.
    fn row_len(&self) -> usize {
        self.channels_per_group() * self.spatial
    }
    /// Channel of position `p` in row `r` (rows are ordered sample-major, group-minor).
    #[inline]
    fn channel(&self, r: usize, p: usize) -> usize {
        (r % self.groups) * self.channels_per_group() + p / self.spatial
    }
}

/// Group norm: each (sample, group) slab is normalized with its own mean/rstd, then
/// scaled and shifted per channel by `weight`/`bias` ([channels]). Returns (y, mean,
/// rstd) with rows ordered [batch, groups].
pub fn group_norm_fwd(
    x: &[f32],
    s: GroupNormShape,
    weight: Option<&[f32]>,
    bias: Option<&[f32]>,
    eps: f32,
) -> (Vec<f32>, Vec<f64>, Vec<f32>) {
    let l = s.row_len();
    let mut y = vec![0f32; x.len()];
    let stats = map_rows(&mut y, l, |r, yr| {
        let xr = row(x, r, l);
        let (mean, rstd) = mean_rstd(xr, eps);
        for (p, (o, &v)) in yr.iter_mut().zip(xr).enumerate() {
            let c = s.channel(r, p);
            let mut h = (v as f64 - mean) as f32 * rstd;
            if let Some(w) = weight {
                h *= w[c];
            }
            if let Some(b) = bias {
                h += b[c];
            }
            *o = h;
        }
        (mean, rstd)
    });
    let (mean, rstd) = stats.into_iter().unzip();
    (y, mean, rstd)
}

/// dx of [`group_norm_fwd`].
pub fn group_norm_bwd_dx(
    x: &[f32],
    g: &[f32],
    mean: &[f64],
    rstd: &[f32],
    s: GroupNormShape,
    weight: Option<&[f32]>,
) -> Vec<f32> {
    let l = s.row_len();
    let mut dx = vec![0f32; x.len()];
    map_rows(&mut dx, l, |r, dxr| {
        let (xr, gr) = (row(x, r, l), row(g, r, l));
        let (m, rs) = (mean[r], rstd[r]);
        let (mut sum_gw, mut sum_gwx) = (0f64, 0f64);
        for p in 0..l {
            let xh = (xr[p] as f64 - m) as f32 * rs;
            let gw = gr[p] * weight.map_or(1.0, |w| w[s.channel(r, p)]);
            dxr[p] = xh;
            sum_gw += gw as f64;
            sum_gwx += (gw * xh) as f64;
        }
        let (a, b) = ((sum_gw / l as f64) as f32, (sum_gwx / l as f64) as f32);
        for p in 0..l {
            let gw = gr[p] * weight.map_or(1.0, |w| w[s.channel(r, p)]);
            dxr[p] = rs * (gw - a - dxr[p] * b);
        }
    });
    dx
}

/// Weight and bias gradients of [`group_norm_fwd`]: per channel, Σ over samples and
/// spatial positions of g·x̂ and of g. Each [channels].
pub fn group_norm_bwd_affine(
    x: &[f32],
    g: &[f32],
    mean: &[f64],
    rstd: &[f32],
    s: GroupNormShape,
) -> (Vec<f32>, Vec<f32>) {
    if x.is_empty() {
        return (vec![0.0; s.channels], vec![0.0; s.channels]);
    }
    let (l, cpg) = (s.row_len(), s.channels_per_group());
    // Group `grp` owns channels grp·cpg.. and sums rows (b, grp) over the batch.
    let sums = group_column_sums(s.groups, s.batch, 2 * cpg, |grp, b, acc| {
        let r = b * s.groups + grp;
        let (xr, gr) = (row(x, r, l), row(g, r, l));
        let (m, rs) = (mean[r], rstd[r]);
        let (dw, db) = acc.split_at_mut(cpg);
        for p in 0..l {
            let k = p / s.spatial;
            let xh = (xr[p] as f64 - m) as f32 * rs;
            dw[k] += (gr[p] * xh) as f64;
            db[k] += gr[p] as f64;
        }
    });
    split_pairs(&sums, s.groups, cpg)
}
