//! 2-D convolution (torch `F.conv2d`, groups 1, dilation 1) by im2col + GEMM, and
//! nearest-neighbour upsampling by an integer factor.
//!
//! Conventions:
//! - All buffers are contiguous row-major f32: x [B, Cin, H, W], w [Cout, Cin, kh, kw]
//!   (read as the matrix [Cout, K] with K = Cin·kh·kw), y [B, Cout, Ho, Wo].
//! - The column matrix of one image is [K, L] with L = Ho·Wo and row
//!   `(ci·kh + i)·kw + j` holding x[ci, oh·sh + i − ph, ow·sw + j − pw] (0 in the padding),
//!   so its row order matches the flattened weight.
//! - Pointwise convolutions (1×1, stride 1, no padding) use the image itself as the
//!   column matrix: no im2col, no col2im.
//! - The column matrix is built for a band of output rows at a time (at most
//!   `COL_BUDGET` values), so scratch memory stays bounded for large images (a full
//!   [K, L] matrix of a 256-channel 3×3 conv at 1024² would be 9.7 GB); each band is
//!   one GEMM into (or from) the matching columns of the output.
//! - Threading: with several images and enough work, images run in parallel and each
//!   GEMM is single-threaded; otherwise images run one after another and each GEMM is
//!   threaded. Only the weight gradient sums over images, so only its summation order
//!   depends on the thread count.

use super::matmul::MatRef;
use super::{num_threads, PAR_THRESHOLD};
use gemm::Parallelism;
use rayon::prelude::*;

/// Values per column-matrix band (16 MiB of f32): wide enough (≥ 900 output positions
/// for K = 4608) that the band GEMMs run at full speed.
const COL_BUDGET: usize = 1 << 22;

/// Sizes of one convolution; built (and validated) by the op layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dGeom {
    pub b: usize,
    pub cin: usize,
    pub h: usize,
    pub w: usize,
    pub cout: usize,
    pub kh: usize,
    pub kw: usize,
    pub sh: usize,
    pub sw: usize,
    pub ph: usize,
    pub pw: usize,
    pub ho: usize,
    pub wo: usize,
}

impl Conv2dGeom {
    /// Rows of the column matrix (= columns of the flattened weight).
    pub fn k(&self) -> usize {
        self.cin * self.kh * self.kw
    }
    /// Output positions per image.
    pub fn l(&self) -> usize {
        self.ho * self.wo
    }
    fn in_len(&self) -> usize {
        self.cin * self.h * self.w
    }
    fn out_len(&self) -> usize {
        self.cout * self.l()
    }
    /// Multiply-adds ×2 of one product (forward, input gradient and weight gradient
    /// each cost this much): 2·B·Cout·L·K.
    pub fn flops(&self) -> u64 {
        2 * (self.b * self.cout * self.l() * self.k()) as u64
    }
    /// 1×1, stride 1, no padding: the image already is its column matrix.
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.sh == 1 && self.sw == 1 && self.ph == 0 && self.pw == 0
    }
    /// Output rows per column-matrix band holding at most `budget` values (at least 1).
    fn band_rows(&self, budget: usize) -> usize {
        (budget / (self.k() * self.wo).max(1)).clamp(1, self.ho.max(1))
    }
    /// Whether to run images in parallel (else each GEMM threads on its own).
    fn batch_parallel(&self) -> bool {
        self.b > 1 && num_threads() > 1 && self.b * self.out_len() * self.k() >= PAR_THRESHOLD
    }
    /// Whether im2col/col2im of a band of `cols` output positions splits its channels
    /// over the pool (images run one after another and the band is big enough).
    fn split_channels(&self, cols: usize) -> bool {
        !self.batch_parallel() && num_threads() > 1 && self.k() * cols >= PAR_THRESHOLD
    }
    /// GEMM threading for one image's product of the given size.
    fn gemm_par(&self, m: usize, n: usize, k: usize) -> Parallelism {
        let threads = num_threads();
        // Same cut-off as the matmul kernel: small products do not amortize the pool.
        if !self.batch_parallel() && threads > 1 && (m * n * k) as f64 >= 48.0 * 48.0 * 48.0 {
            Parallelism::Rayon(threads)
        } else {
            Parallelism::None
        }
    }
}

/// Output positions `o` in `0..out` whose input index `o·stride + koff − pad` lies in
/// `0..size`, as a half-open range.
fn valid_range(out: usize, stride: usize, koff: usize, pad: usize, size: usize) -> (usize, usize) {
    let lo = if pad > koff { (pad - koff).div_ceil(stride) } else { 0 }.min(out);
    let hi = if size + pad > koff { (size + pad - koff).div_ceil(stride) } else { 0 }.min(out);
    (lo, hi.max(lo))
}

/// Fills `cols` [K, (r1 − r0)·Wo] from one image `x` [Cin, H, W]: the columns of output
/// rows r0..r1. Channels fill disjoint row blocks, so they run in parallel when
/// `parallel` (one image at a time: the GEMM threads, and so does this).
fn im2col(g: &Conv2dGeom, x: &[f32], cols: &mut [f32], band: (usize, usize), parallel: bool) {
    let per_ci = g.kh * g.kw * (band.1 - band.0) * g.wo;
    if per_ci == 0 {
        return;
    }
    let fill =
        |(ci, rows): (usize, &mut [f32])| im2col_channel(g, &x[ci * g.h * g.w..(ci + 1) * g.h * g.w], rows, band);
    if parallel {
        cols.par_chunks_mut(per_ci).enumerate().for_each(fill);
    } else {
        cols.chunks_mut(per_ci).enumerate().for_each(fill);
    }
}

/// The kh·kw rows of one input channel `xc` [H, W].
fn im2col_channel(g: &Conv2dGeom, xc: &[f32], rows: &mut [f32], (r0, r1): (usize, usize)) {
    let l = (r1 - r0) * g.wo;
    for i in 0..g.kh {
        let (v0, v1) = valid_range(g.ho, g.sh, i, g.ph, g.h);
        let (oh0, oh1) = (v0.clamp(r0, r1), v1.clamp(r0, r1));
        for j in 0..g.kw {
            let (ow0, ow1) = valid_range(g.wo, g.sw, j, g.pw, g.w);
            let row = &mut rows[(i * g.kw + j) * l..][..l];
            row[..(oh0 - r0) * g.wo].fill(0.0);
            row[(oh1 - r0) * g.wo..].fill(0.0);
            for oh in oh0..oh1 {
                let r = &mut row[(oh - r0) * g.wo..(oh - r0 + 1) * g.wo];
                let xr = &xc[(oh * g.sh + i - g.ph) * g.w..][..g.w];
                r[..ow0].fill(0.0);
                r[ow1..].fill(0.0);
                if g.sw == 1 {
                    // ow0 + j ≥ pw by construction of the valid range.
                    r[ow0..ow1].copy_from_slice(&xr[ow0 + j - g.pw..ow1 + j - g.pw]);
                } else {
                    for (ow, v) in r.iter_mut().enumerate().take(ow1).skip(ow0) {
                        *v = xr[ow * g.sw + j - g.pw];
                    }
                }
            }
        }
    }
}

/// Adds the columns `cols` [K, (r1 − r0)·Wo] of output rows r0..r1 back onto the image
/// gradient `dx` [Cin, H, W] (the adjoint of [`im2col`]); channels in parallel when
/// `parallel` (each writes only its own plane of dx).
fn col2im(g: &Conv2dGeom, cols: &[f32], dx: &mut [f32], band: (usize, usize), parallel: bool) {
    let (plane, per_ci) = (g.h * g.w, g.kh * g.kw * (band.1 - band.0) * g.wo);
    if plane == 0 || per_ci == 0 {
        return;
    }
    let add = |(dc, rows): (&mut [f32], &[f32])| col2im_channel(g, rows, dc, band);
    if parallel {
        dx.par_chunks_mut(plane).zip(cols.par_chunks(per_ci)).for_each(add);
    } else {
        dx.chunks_mut(plane).zip(cols.chunks(per_ci)).for_each(add);
    }
}

/// The adjoint of [`im2col_channel`]: adds one channel's rows onto its plane `dc` [H, W].
fn col2im_channel(g: &Conv2dGeom, rows: &[f32], dc: &mut [f32], (r0, r1): (usize, usize)) {
    let l = (r1 - r0) * g.wo;
    for i in 0..g.kh {
        let (v0, v1) = valid_range(g.ho, g.sh, i, g.ph, g.h);
        let (oh0, oh1) = (v0.clamp(r0, r1), v1.clamp(r0, r1));
        for j in 0..g.kw {
            let (ow0, ow1) = valid_range(g.wo, g.sw, j, g.pw, g.w);
            let row = &rows[(i * g.kw + j) * l..][..l];
            for oh in oh0..oh1 {
                let r = &row[(oh - r0) * g.wo..(oh - r0 + 1) * g.wo];
                let dr = &mut dc[(oh * g.sh + i - g.ph) * g.w..][..g.w];
                if g.sw == 1 {
                    let d = &mut dr[ow0 + j - g.pw..ow1 + j - g.pw];
                    d.iter_mut().zip(&r[ow0..ow1]).for_each(|(a, &v)| *a += v);
                } else {
                    for (ow, &v) in r.iter().enumerate().take(ow1).skip(ow0) {
                        dr[ow * g.sw + j - g.pw] += v;
                    }
                }
            }
        }
    }
}

/// `dst [m, n] (row stride dst_rs) = a [m, k] @ b [k, n]`, plus the old `dst` when
/// `accumulate`.
#[allow(clippy::too_many_arguments)]
fn gemm_into(
    dst: &mut [f32],
    dst_rs: usize,
    (m, n, k): (usize, usize, usize),
    a: MatRef,
    b: MatRef,
    accumulate: bool,
    par: Parallelism,
) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(dst_rs >= n && (m - 1) * dst_rs + n <= dst.len(), "conv gemm: destination size");
    if k == 0 {
        if !accumulate {
            dst.chunks_mut(dst_rs).take(m).for_each(|r| r[..n].fill(0.0));
        }
        return;
    }
    let in_bounds = |x: MatRef, rows: usize, cols: usize| {
        x.rs >= 0 && x.cs >= 0 && x.offset + (rows - 1) * x.rs as usize + (cols - 1) * (x.cs as usize) < x.data.len()
    };
    assert!(in_bounds(a, m, k) && in_bounds(b, k, n), "conv gemm operand out of bounds");
    // SAFETY: the assertions above prove every (i, j) read of a and b lies inside their
    // slices and every write (i·dst_rs + j, i < m, j < n) inside dst; with read_dst the
    // old values are scaled by alpha = 1, otherwise they are overwritten.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            dst_rs as isize,
            accumulate,
            a.data.as_ptr().add(a.offset),
            a.cs,
            a.rs,
            b.data.as_ptr().add(b.offset),
            b.cs,
            b.rs,
            1.0,
            1.0,
            false,
            false,
            false,
            par,
        );
    }
}

/// Row-major `[rows, cols]` view of `data` at `offset`.
fn row_major(data: &[f32], offset: usize, cols: usize) -> MatRef<'_> {
    MatRef { data, offset, rs: cols as isize, cs: 1 }
}

/// Transposed view: element (i, j) is `data[offset + j·cols + i]` of a row-major
/// `[·, cols]` matrix.
fn transposed(data: &[f32], offset: usize, cols: usize) -> MatRef<'_> {
    MatRef { data, offset, rs: 1, cs: cols as isize }
}

/// Runs `f(image index, output chunk)` over `out` split into per-image chunks of `len`,
/// in parallel when the geometry says so.
fn per_image(g: &Conv2dGeom, out: &mut [f32], len: usize, f: impl Fn(usize, &mut [f32]) + Sync + Send) {
    if len == 0 {
        return;
    }
    if g.batch_parallel() {
        out.par_chunks_mut(len).enumerate().for_each(|(bi, o)| f(bi, o));
    } else {
        out.chunks_mut(len).enumerate().for_each(|(bi, o)| f(bi, o));
    }
}

/// Forward: y[b] = W [Cout, K] @ cols(x[b]) [K, L] + bias.
pub fn conv2d_fwd(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    conv2d_fwd_banded(g, x, w, bias, COL_BUDGET)
}

fn conv2d_fwd_banded(g: &Conv2dGeom, x: &[f32], w: &[f32], bias: Option<&[f32]>, budget: usize) -> Vec<f32> {
    let (k, l) = (g.k(), g.l());
    let mut y = vec![0f32; g.b * g.out_len()];
    let band = g.band_rows(budget);
    let split = g.split_channels(band * g.wo);
    let par = g.gemm_par(g.cout, (band * g.wo).min(l), k);
    per_image(g, &mut y, g.out_len(), |bi, yb| {
        if let Some(bias) = bias {
            for (row, &bv) in yb.chunks_mut(l).zip(bias) {
                row.fill(bv);
            }
        }
        let xb = &x[bi * g.in_len()..(bi + 1) * g.in_len()];
        let wm = row_major(w, 0, k);
        if g.is_pointwise() {
            let xm = row_major(xb, 0, l);
            gemm_into(yb, l, (g.cout, l, k), wm, xm, bias.is_some(), par);
            return;
        }
        let mut cols = vec![0f32; k * band * g.wo];
        for r0 in (0..g.ho).step_by(band) {
            let r1 = (r0 + band).min(g.ho);
            let n = (r1 - r0) * g.wo;
            im2col(g, xb, &mut cols[..k * n], (r0, r1), split);
            let dst = &mut yb[r0 * g.wo..];
            gemm_into(dst, l, (g.cout, n, k), wm, row_major(&cols, 0, n), bias.is_some(), par);
        }
    });
    y
}

/// Input gradient: dx[b] = col2im(Wᵀ [K, Cout] @ dy[b] [Cout, L]).
pub fn conv2d_bwd_input(g: &Conv2dGeom, w: &[f32], dy: &[f32]) -> Vec<f32> {
    conv2d_bwd_input_banded(g, w, dy, COL_BUDGET)
}

fn conv2d_bwd_input_banded(g: &Conv2dGeom, w: &[f32], dy: &[f32], budget: usize) -> Vec<f32> {
    let (k, l) = (g.k(), g.l());
    let mut dx = vec![0f32; g.b * g.in_len()];
    let band = g.band_rows(budget);
    let split = g.split_channels(band * g.wo);
    let par = g.gemm_par(k, (band * g.wo).min(l), g.cout);
    per_image(g, &mut dx, g.in_len(), |bi, dxb| {
        let wt = transposed(w, 0, k);
        if g.is_pointwise() {
            let dyb = row_major(dy, bi * g.out_len(), l);
            gemm_into(dxb, l, (k, l, g.cout), wt, dyb, false, par);
            return;
        }
        let mut dcols = vec![0f32; k * band * g.wo];
        for r0 in (0..g.ho).step_by(band) {
            let r1 = (r0 + band).min(g.ho);
            let n = (r1 - r0) * g.wo;
            let dyb = row_major(dy, bi * g.out_len() + r0 * g.wo, l);
            gemm_into(&mut dcols[..k * n], n, (k, n, g.cout), wt, dyb, false, par);
            col2im(g, &dcols[..k * n], dxb, (r0, r1), split);
        }
    });
    dx
}

/// Weight gradient: dW = Σ_b dy[b] [Cout, L] @ cols(x[b])ᵀ [L, K].
pub fn conv2d_bwd_weight(g: &Conv2dGeom, x: &[f32], dy: &[f32]) -> Vec<f32> {
    conv2d_bwd_weight_banded(g, x, dy, COL_BUDGET)
}

fn conv2d_bwd_weight_banded(g: &Conv2dGeom, x: &[f32], dy: &[f32], budget: usize) -> Vec<f32> {
    let (k, l) = (g.k(), g.l());
    let wlen = g.cout * k;
    let band = g.band_rows(budget);
    let split = g.split_channels(band * g.wo);
    let par = g.gemm_par(g.cout, k, (band * g.wo).min(l));
    // Adds image bi's contribution into `dw`, reusing `cols` as scratch.
    let add_image = |bi: usize, dw: &mut [f32], cols: &mut Vec<f32>| {
        let xb = &x[bi * g.in_len()..(bi + 1) * g.in_len()];
        if g.is_pointwise() {
            let dyb = row_major(dy, bi * g.out_len(), l);
            gemm_into(dw, k, (g.cout, k, l), dyb, transposed(xb, 0, l), true, par);
            return;
        }
        cols.resize(k * band * g.wo, 0.0);
        for r0 in (0..g.ho).step_by(band) {
            let r1 = (r0 + band).min(g.ho);
            let n = (r1 - r0) * g.wo;
            im2col(g, xb, &mut cols[..k * n], (r0, r1), split);
            let dyb = row_major(dy, bi * g.out_len() + r0 * g.wo, l);
            gemm_into(dw, k, (g.cout, k, n), dyb, transposed(cols, 0, n), true, par);
        }
    };
    if g.batch_parallel() {
        (0..g.b)
            .into_par_iter()
            .fold(
                || (vec![0f32; wlen], Vec::new()),
                |(mut dw, mut cols), bi| {
                    add_image(bi, &mut dw, &mut cols);
                    (dw, cols)
                },
            )
            .map(|(dw, _)| dw)
            .reduce(
                || vec![0f32; wlen],
                |mut a, b| {
                    a.iter_mut().zip(&b).for_each(|(x, y)| *x += y);
                    a
                },
            )
    } else {
        let mut dw = vec![0f32; wlen];
        let mut cols = Vec::new();
        for bi in 0..g.b {
            add_image(bi, &mut dw, &mut cols);
        }
        dw
    }
}

/// Bias gradient: db[co] = Σ_{b, l} dy[b, co, l], accumulated in f64.
pub fn conv2d_bwd_bias(g: &Conv2dGeom, dy: &[f32]) -> Vec<f32> {
    let l = g.l();
    (0..g.cout)
        .map(|co| {
            let s: f64 = (0..g.b).flat_map(|bi| &dy[bi * g.out_len() + co * l..][..l]).map(|&v| v as f64).sum();
            s as f32
        })
        .collect()
}

/// Nearest upsampling of `planes` images [H, W] to [H·f, W·f]: y[oh, ow] = x[oh/f, ow/f].
pub fn upsample_nearest2d_fwd(x: &[f32], planes: usize, h: usize, w: usize, f: usize) -> Vec<f32> {
    let (ho, wo) = (h * f, w * f);
    let mut y = vec![0f32; planes * ho * wo];
    let plane = |(xp, yp): (&[f32], &mut [f32])| {
        for (oh, yr) in yp.chunks_mut(wo).enumerate() {
            let xr = &xp[(oh / f) * w..(oh / f + 1) * w];
            for (ow, v) in yr.iter_mut().enumerate() {
                *v = xr[ow / f];
            }
        }
    };
    if ho * wo == 0 {
        return y;
    }
    if y.len() >= PAR_THRESHOLD {
        x.par_chunks(h * w).zip(y.par_chunks_mut(ho * wo)).for_each(plane);
    } else {
        x.chunks(h * w).zip(y.chunks_mut(ho * wo)).for_each(plane);
    }
    y
}

/// Adjoint of [`upsample_nearest2d_fwd`]: each input pixel sums its f×f output block.
pub fn upsample_nearest2d_bwd(dy: &[f32], planes: usize, h: usize, w: usize, f: usize) -> Vec<f32> {
    let (ho, wo) = (h * f, w * f);
    let mut dx = vec![0f32; planes * h * w];
    let plane = |(dyp, dxp): (&[f32], &mut [f32])| {
        for (oh, dyr) in dyp.chunks(wo).enumerate() {
            let dxr = &mut dxp[(oh / f) * w..(oh / f + 1) * w];
            for (ow, &v) in dyr.iter().enumerate() {
                dxr[ow / f] += v;
            }
        }
    };
    if h * w == 0 {
        return dx;
    }
    if dy.len() >= PAR_THRESHOLD {
        dy.par_chunks(ho * wo).zip(dx.par_chunks_mut(h * w)).for_each(plane);
    } else {
        dy.chunks(ho * wo).zip(dx.chunks_mut(h * w)).for_each(plane);
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32).map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0).collect()
    }

    fn close(a: &[f32], b: &[f32]) {
        let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
        let err = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        assert!(err <= 1e-5 * scale, "max err {err} (scale {scale})");
    }

    /// Bands of one output row (and of a few rows) give what one whole-image band gives,
    /// for strided, padded, asymmetric convolutions; the large single-image cases split
    /// im2col/col2im over channels for whole-image bands but not for one-row bands.
    #[test]
    fn banded_equals_whole_image() {
        let cases = [
            (2, 3, 7, 5, 3, 1, 1),
            (2, 3, 9, 6, 3, 2, 0),
            (2, 3, 8, 11, 2, 2, 1),
            (2, 3, 5, 4, 1, 1, 0),
            (1, 16, 40, 37, 3, 1, 1),
            (1, 16, 41, 38, 3, 2, 0),
        ];
        for (b, cin, h, w, k, s, p) in cases {
            let (ho, wo) = ((h + 2 * p - k) / s + 1, (w + 2 * p - k) / s + 1);
            let g = Conv2dGeom { b, cin, h, w, cout: 4, kh: k, kw: k, sh: s, sw: s, ph: p, pw: p, ho, wo };
            let x = values(g.b * g.in_len(), 1);
            let wt = values(g.cout * g.k(), 2);
            let bias = values(g.cout, 3);
            let dy = values(g.b * g.out_len(), 4);
            let whole = usize::MAX;
            for budget in [1, 2 * g.k() * wo] {
                close(
                    &conv2d_fwd_banded(&g, &x, &wt, Some(&bias), budget),
                    &conv2d_fwd_banded(&g, &x, &wt, Some(&bias), whole),
                );
                close(&conv2d_bwd_input_banded(&g, &wt, &dy, budget), &conv2d_bwd_input_banded(&g, &wt, &dy, whole));
                close(&conv2d_bwd_weight_banded(&g, &x, &dy, budget), &conv2d_bwd_weight_banded(&g, &x, &dy, whole));
            }
        }
    }
}
