//! Fused scaled-dot-product attention, FlashAttention-2 style, on the CPU.
//!
//! Invariants:
//! - Operands are [B, H, N, E] read in place through `HeadsRef` strides (the last axis
//!   contiguous; a stride of 0 broadcasts), so permuted or broadcast views need no copy.
//!   Outputs (O, LSE, dQ, dK, dV) are fresh contiguous buffers.
//! - Forward walks key blocks per (b, h, query block) with an online softmax (running
//!   max m, running sum l, accumulator rescaled by exp(m_old − m_new)); the N×N score
//!   matrix only ever exists one BLOCK_Q×BLOCK_K tile at a time. It saves
//!   LSE = m + ln(l) per query row for the backward.
//! - Backward recomputes P = exp(S − LSE) tile by tile and applies
//!   dV += Pᵀ dO, dP = dO Vᵀ, dS = P ⊙ (dP − Dᵢ) with Dᵢ = rowsum(dO ⊙ O),
//!   dQ += scale·dS K, dK += scale·dSᵀ Q. One (b, h) is one task, so dQ, dK, dV of a
//!   head are owned by one thread and need no atomics or reduction.
//! - Key mask: `mask[b·Nk + j] == false` drops key j for every query of batch b
//!   (its score is −∞). A query whose keys are all masked has l = 0: its output row is
//!   zeros and its LSE is +∞, which makes the recomputed P exactly 0 in the backward.
//! - Causal (`causal`): query i sees keys j ≤ i only (top-left aligned, torch SDPA
//!   `is_causal=True`). Tiles wholly above the diagonal are skipped in both passes;
//!   tiles crossing it get −∞ scores above it, before the softmax and before the
//!   recomputation of P, so forward and backward see the same probabilities.
//! - Block products run on the gemm crate's microkernels, single-threaded inside a
//!   task; rayon parallelizes over tasks once the work passes `PAR_THRESHOLD`.

use super::fastmath::exp_fast;
use super::matmul::MatRef;
use super::PAR_THRESHOLD;
use gemm::Parallelism;
use rayon::prelude::*;

/// Query rows per tile: the forward's unit of parallel work.
pub const BLOCK_Q: usize = 64;
/// Keys per tile. Measured on one core (Xeon, AVX2 gemm kernels) over
/// BLOCK_Q×BLOCK_K ∈ {32, 64, 128}×{64, 128, 256} at B8 H4 N80/N272 D32 and
/// B2 H4 N1024 D64: 64×128 was best or within noise (±10%) of the best everywhere;
/// 64×64 was 5–20% slower (more gemm calls and online-softmax rescales).
pub const BLOCK_K: usize = 128;

/// One [B, H, N, E] operand: element (b, h, n, e) is
/// `data[offset + b·sb + h·sh + n·sn + e]`.
#[derive(Clone, Copy)]
pub struct HeadsRef<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub sb: usize,
    pub sh: usize,
    pub sn: usize,
}

impl<'a> HeadsRef<'a> {
    /// A contiguous [B, H, N, E] buffer.
    pub fn contiguous(data: &'a [f32], h: usize, n: usize, e: usize) -> Self {
        HeadsRef { data, offset: 0, sb: h * n * e, sh: n * e, sn: e }
    }

    fn at(&self, b: usize, h: usize, n: usize) -> usize {
        self.offset + b * self.sb + h * self.sh + n * self.sn
    }

    /// Rows n0.. of head (b, h) as a matrix [rows × E].
    fn rows(&self, b: usize, h: usize, n0: usize) -> MatRef<'a> {
        MatRef { data: self.data, offset: self.at(b, h, n0), rs: self.sn as isize, cs: 1 }
    }

    /// Rows n0.. of head (b, h) transposed: a matrix [E × rows].
    fn rows_t(&self, b: usize, h: usize, n0: usize) -> MatRef<'a> {
        MatRef { data: self.data, offset: self.at(b, h, n0), rs: 1, cs: self.sn as isize }
    }

    fn row(&self, b: usize, h: usize, n: usize, e: usize) -> &'a [f32] {
        let o = self.at(b, h, n);
        &self.data[o..o + e]
    }

    /// Panics unless every element of a [B, H, N, E] operand lies inside `data`
    /// (the gemm calls below read through raw pointers).
    fn check(&self, what: &str, [b, h, n, e]: [usize; 4]) {
        if b * h * n * e == 0 {
            return;
        }
        let last = self.at(b - 1, h - 1, n - 1) + e - 1;
        assert!(last < self.data.len(), "attention: {what} view reads past its storage");
    }
}

/// Problem sizes: q [B, H, Nq, D], k [B, H, Nk, D], v [B, H, Nk, Dv].
#[derive(Clone, Copy, Debug)]
pub struct AttnShape {
    pub b: usize,
    pub h: usize,
    pub nq: usize,
    pub nk: usize,
    pub d: usize,
    pub dv: usize,
}

impl AttnShape {
    /// Multiply-adds of one forward pass, the unit the parallel threshold is measured in.
    fn work(&self) -> usize {
        self.b * self.h * self.nq * self.nk * (self.d + self.dv)
    }
}

/// The attention inputs shared by forward and backward.
#[derive(Clone, Copy)]
pub struct AttnArgs<'a> {
    pub shape: AttnShape,
    pub q: HeadsRef<'a>,
    pub k: HeadsRef<'a>,
    pub v: HeadsRef<'a>,
    /// [B, Nk]; true = attend.
    pub mask: Option<&'a [bool]>,
    pub scale: f32,
    /// Query i attends keys j ≤ i only.
    pub causal: bool,
}

impl AttnArgs<'_> {
    fn check(&self) {
        let AttnShape { b, h, nq, nk, d, dv } = self.shape;
        self.q.check("q", [b, h, nq, d]);
        self.k.check("k", [b, h, nk, d]);
        self.v.check("v", [b, h, nk, dv]);
        if let Some(m) = self.mask {
            assert_eq!(m.len(), b * nk, "attention: key mask length");
        }
    }

    /// The mask of keys j0..j0+bc of batch `bi`, or None when the tile has no
    /// attended key at all (it can be skipped).
    fn tile_mask(&self, bi: usize, j0: usize, bc: usize) -> Option<Option<&[bool]>> {
        match self.mask {
            None => Some(None),
            Some(m) => {
                let t = &m[bi * self.shape.nk + j0..bi * self.shape.nk + j0 + bc];
                t.iter().any(|&a| a).then_some(Some(t))
            }
        }
    }

    /// Whether the tile of queries i0..i0+br and keys j0.. has no visible entry
    /// under the causal mask (every key after every query).
    fn above_diagonal(&self, i0: usize, br: usize, j0: usize) -> bool {
        self.causal && j0 >= i0 + br
    }

    /// Blanks the scores of an S tile [rows × bc] (queries i0.., keys j0..) that the
    /// causal mask hides to −∞; no-op for non-causal attention.
    fn apply_causal(&self, s: &mut [f32], bc: usize, i0: usize, j0: usize) {
        if !self.causal || j0 + bc <= i0 + 1 {
            return;
        }
        for (r, row) in s.chunks_exact_mut(bc).enumerate() {
            // Keys j0+c > i0+r are hidden: c ≥ i0 + r + 1 − j0.
            let first = (i0 + r + 1).saturating_sub(j0).min(bc);
            row[first..].fill(f32::NEG_INFINITY);
        }
    }
}

/// `dst = beta·(a @ b)`, or `dst += beta·(a @ b)` when `accumulate`: a is [m × k],
/// b is [k × n], dst is [m × n] row-major with row stride `ld`.
#[allow(clippy::too_many_arguments)]
fn gemm_tile(
    m: usize,
    n: usize,
    k: usize,
    dst: &mut [f32],
    ld: usize,
    a: MatRef,
    b: MatRef,
    beta: f32,
    accumulate: bool,
) {
    if m == 0 || n == 0 {
        return;
    }
    let in_bounds = |x: &MatRef, rows: usize, cols: usize| {
        rows == 0
            || cols == 0
            || x.rs >= 0
                && x.cs >= 0
                && x.offset + (rows - 1) * x.rs as usize + (cols - 1) * (x.cs as usize) < x.data.len()
    };
    assert!(
        in_bounds(&a, m, k) && in_bounds(&b, k, n) && n <= ld && (m - 1) * ld + n <= dst.len(),
        "attention tile out of bounds"
    );
    // SAFETY: the assert above proves every (i, j) read of a and b and every write of
    // dst lies inside its slice; dst is a unique borrow so it aliases neither operand.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            ld as isize,
            accumulate,
            a.data.as_ptr().add(a.offset),
            a.cs,
            a.rs,
            b.data.as_ptr().add(b.offset),
            b.cs,
            b.rs,
            1.0,
            beta,
            false,
            false,
            false,
            Parallelism::None,
        );
    }
}

/// `row[j] = exp(row[j] − shift)`; returns the sum. Two passes: LLVM vectorizes each
/// of them but not the fused loop; eight lanes keep the sum vectorized.
#[inline(always)]
fn exp_shift_sum(row: &mut [f32], shift: f32) -> f32 {
    row.iter_mut().for_each(|x| *x = exp_fast(*x - shift));
    let mut acc = [0f32; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for i in 0..8 {
            acc[i] += c[i];
        }
    }
    for (&x, a) in chunks.remainder().iter().zip(acc.iter_mut()) {
        *a += x;
    }
    acc.iter().sum()
}

#[inline(always)]
fn row_max(row: &[f32]) -> f32 {
    let mut acc = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for c in &mut chunks {
        for (&x, a) in c.iter().zip(acc.iter_mut()) {
            *a = if x > *a { x } else { *a };
        }
    }
    for (&x, a) in chunks.remainder().iter().zip(acc.iter_mut()) {
        *a = if x > *a { x } else { *a };
    }
    acc.iter().fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let (ra, rb) = (ca.remainder(), cb.remainder());
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    for (i, (x, y)) in ra.iter().zip(rb).enumerate() {
        acc[i] += x * y;
    }
    acc.iter().sum()
}

/// Blanks masked key columns of an S tile [rows × mask.len()] to −∞.
fn apply_mask(s: &mut [f32], mask: &[bool]) {
    for row in s.chunks_exact_mut(mask.len()) {
        for (x, &keep) in row.iter_mut().zip(mask) {
            if !keep {
                *x = f32::NEG_INFINITY;
            }
        }
    }
}

/// A row-major scratch tile [rows × ld] as a gemm operand.
fn tile(data: &[f32], ld: usize) -> MatRef<'_> {
    MatRef { data, offset: 0, rs: ld as isize, cs: 1 }
}

/// The transpose of a row-major scratch tile [rows × ld]: a matrix [ld × rows].
fn tile_t(data: &[f32], ld: usize) -> MatRef<'_> {
    MatRef { data, offset: 0, rs: 1, cs: ld as isize }
}

/// Defines `$name` calling the `#[inline(always)]` `$generic` compiled for AVX2+FMA
/// when the CPU has them, else for the build target. The default x86-64 target only
/// assumes SSE2, and these row loops (exp above all) vectorize to its 4 lanes; with
/// AVX2 they take 8 and the forward's softmax share of the time halves.
macro_rules! simd_dispatch {
    ($(fn $name:ident($($arg:ident: $ty:ty),*) => $generic:ident;)*) => {$(
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $generic($($arg),*)
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    // SAFETY: the running CPU has the features avx2() is compiled for.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    )*};
}

simd_dispatch! {
    fn softmax_update(
        s: &mut [f32], bc: usize, m: &mut [f32], l: &mut [f32], acc: &mut [f32], dv: usize
    ) => softmax_update_generic;
    fn probs(p: &mut [f32], bc: usize, lse: &[f32]) => probs_generic;
    fn dscores(ds: &mut [f32], p: &[f32], bc: usize, di: &[f32]) => dscores_generic;
}

/// Online-softmax step for one S tile [rows × bc]: folds the tile into the running
/// max m and sum l, rescales the accumulator rows [rows × dv] to the new max, and
/// leaves the unnormalized probabilities exp(S − m_new) in `s`.
#[inline(always)]
fn softmax_update_generic(s: &mut [f32], bc: usize, m: &mut [f32], l: &mut [f32], acc: &mut [f32], dv: usize) {
    for (r, row) in s.chunks_exact_mut(bc).enumerate() {
        let m_new = m[r].max(row_max(row));
        if m_new == f32::NEG_INFINITY {
            // Only reachable with −∞ scores: nothing attended yet, the P row is zero.
            row.fill(0.0);
            continue;
        }
        let alpha = exp_fast(m[r] - m_new);
        l[r] = l[r] * alpha + exp_shift_sum(row, m_new);
        if alpha != 1.0 {
            acc[r * dv..(r + 1) * dv].iter_mut().for_each(|x| *x *= alpha);
        }
        m[r] = m_new;
    }
}

/// P = exp(S − LSE) in place for a tile [rows × bc].
#[inline(always)]
fn probs_generic(p: &mut [f32], bc: usize, lse: &[f32]) {
    for (row, &shift) in p.chunks_exact_mut(bc).zip(lse) {
        row.iter_mut().for_each(|x| *x = exp_fast(*x - shift));
    }
}

/// dS = P ⊙ (dP − Dᵢ) in place over dP for a tile [rows × bc].
#[inline(always)]
fn dscores_generic(ds: &mut [f32], p: &[f32], bc: usize, di: &[f32]) {
    for ((dsr, pr), &d) in ds.chunks_exact_mut(bc).zip(p.chunks_exact(bc)).zip(di) {
        dsr.iter_mut().zip(pr).for_each(|(x, &pv)| *x = pv * (*x - d));
    }
}

/// Runs `f` over `tasks`, in parallel when the problem is big enough to pay for it.
fn run_tasks<T: Send>(parallel: bool, tasks: Vec<T>, f: impl Fn(T) + Sync + Send) {
    if parallel {
        tasks.into_par_iter().for_each(f);
    } else {
        tasks.into_iter().for_each(f);
    }
}

/// Forward: returns (O [B, H, Nq, Dv], LSE [B, H, Nq]).
pub fn attention_fwd(args: &AttnArgs) -> (Vec<f32>, Vec<f32>) {
    args.check();
    let AttnShape { b, h, nq, dv, .. } = args.shape;
    let mut out = vec![0f32; b * h * nq * dv];
    let mut lse = vec![0f32; b * h * nq];
    if nq == 0 || dv == 0 {
        return (out, lse);
    }
    let tasks: Vec<_> = out
        .chunks_mut(nq * dv)
        .zip(lse.chunks_mut(nq))
        .enumerate()
        .flat_map(|(bh, (o, l))| {
            o.chunks_mut(BLOCK_Q * dv)
                .zip(l.chunks_mut(BLOCK_Q))
                .enumerate()
                .map(move |(qb, (o, l))| (bh, qb * BLOCK_Q, o, l))
        })
        .collect();
    run_tasks(args.shape.work() >= PAR_THRESHOLD, tasks, |(bh, i0, o, l)| {
        fwd_query_block(args, bh / h, bh % h, i0, o, l)
    });
    (out, lse)
}

/// One query block of one head: rows i0..i0+lse.len(); `acc` [rows × Dv] starts zeroed
/// and ends as the output.
fn fwd_query_block(args: &AttnArgs, bi: usize, hi: usize, i0: usize, acc: &mut [f32], lse: &mut [f32]) {
    let AttnShape { nk, d, dv, .. } = args.shape;
    let br = lse.len();
    let mut m = vec![f32::NEG_INFINITY; br];
    let mut l = vec![0f32; br];
    let mut s = vec![0f32; br * BLOCK_K];
    let q = args.q.rows(bi, hi, i0);
    for j0 in (0..nk).step_by(BLOCK_K) {
        if args.above_diagonal(i0, br, j0) {
            break;
        }
        let bc = BLOCK_K.min(nk - j0);
        let Some(mask) = args.tile_mask(bi, j0, bc) else {
            continue;
        };
        let s = &mut s[..br * bc];
        let kt = args.k.rows_t(bi, hi, j0);
        gemm_tile(br, bc, d, s, bc, q, kt, args.scale, false);
        if let Some(mask) = mask {
            apply_mask(s, mask);
        }
        args.apply_causal(s, bc, i0, j0);
        softmax_update(s, bc, &mut m, &mut l, acc, dv);
        let v = args.v.rows(bi, hi, j0);
        gemm_tile(br, dv, bc, acc, dv, tile(s, bc), v, 1.0, true);
    }
    for r in 0..br {
        let row = &mut acc[r * dv..(r + 1) * dv];
        if l[r] > 0.0 {
            let inv = 1.0 / l[r];
            row.iter_mut().for_each(|x| *x *= inv);
            lse[r] = m[r] + l[r].ln();
        } else {
            row.fill(0.0);
            lse[r] = f32::INFINITY;
        }
    }
}

/// Backward: given O [B, H, Nq, Dv] and LSE [B, H, Nq] from the forward and dO,
/// returns (dQ [B, H, Nq, D], dK [B, H, Nk, D], dV [B, H, Nk, Dv]).
pub fn attention_bwd(args: &AttnArgs, o: HeadsRef, d_o: HeadsRef, lse: &[f32]) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    args.check();
    let AttnShape { b, h, nq, nk, d, dv } = args.shape;
    o.check("o", [b, h, nq, dv]);
    d_o.check("grad_out", [b, h, nq, dv]);
    assert_eq!(lse.len(), b * h * nq, "attention: lse length");
    let mut dq = vec![0f32; b * h * nq * d];
    let mut dk = vec![0f32; b * h * nk * d];
    let mut dvv = vec![0f32; b * h * nk * dv];
    if nq == 0 || nk == 0 || d == 0 || dv == 0 {
        return (dq, dk, dvv);
    }
    let tasks: Vec<_> = dq
        .chunks_mut(nq * d)
        .zip(dk.chunks_mut(nk * d))
        .zip(dvv.chunks_mut(nk * dv))
        .enumerate()
        .map(|(bh, ((q, k), v))| (bh, q, k, v))
        .collect();
    run_tasks(args.shape.work() >= PAR_THRESHOLD, tasks, |(bh, dq, dk, dv)| {
        let lse = &lse[bh * nq..(bh + 1) * nq];
        bwd_head(args, o, d_o, lse, bh / h, bh % h, dq, dk, dv)
    });
    (dq, dk, dvv)
}

/// Backward of one head (b, h); dq/dk/dv are that head's zeroed gradient buffers.
#[allow(clippy::too_many_arguments)]
fn bwd_head(
    args: &AttnArgs,
    o: HeadsRef,
    d_o: HeadsRef,
    lse: &[f32],
    bi: usize,
    hi: usize,
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let AttnShape { nq, nk, d, dv: dvn, .. } = args.shape;
    let scale = args.scale;
    let di: Vec<f32> = (0..nq).map(|i| dot(o.row(bi, hi, i, dvn), d_o.row(bi, hi, i, dvn))).collect();
    let mut p = vec![0f32; BLOCK_Q * BLOCK_K];
    let mut ds = vec![0f32; BLOCK_Q * BLOCK_K];
    for j0 in (0..nk).step_by(BLOCK_K) {
        let bc = BLOCK_K.min(nk - j0);
        let Some(mask) = args.tile_mask(bi, j0, bc) else {
            continue;
        };
        let (kt, kr, vt) = (args.k.rows_t(bi, hi, j0), args.k.rows(bi, hi, j0), args.v.rows_t(bi, hi, j0));
        let dk_j = &mut dk[j0 * d..(j0 + bc) * d];
        let dv_j = &mut dv[j0 * dvn..(j0 + bc) * dvn];
        for i0 in (0..nq).step_by(BLOCK_Q) {
            let br = BLOCK_Q.min(nq - i0);
            if args.above_diagonal(i0, br, j0) {
                continue;
            }
            let (p, ds) = (&mut p[..br * bc], &mut ds[..br * bc]);
            let (qi, doi) = (args.q.rows(bi, hi, i0), d_o.rows(bi, hi, i0));
            // P = exp(scale·Q Kᵀ − LSE): the forward's probabilities, recomputed.
            gemm_tile(br, bc, d, p, bc, qi, kt, scale, false);
            if let Some(mask) = mask {
                apply_mask(p, mask);
            }
            args.apply_causal(p, bc, i0, j0);
            probs(p, bc, &lse[i0..i0 + br]);
            gemm_tile(bc, dvn, br, dv_j, dvn, tile_t(p, bc), doi, 1.0, true);
            // dS = P ⊙ (dO Vᵀ − Dᵢ)
            gemm_tile(br, bc, dvn, ds, bc, doi, vt, 1.0, false);
            dscores(ds, p, bc, &di[i0..i0 + br]);
            let dq_i = &mut dq[i0 * d..(i0 + br) * d];
            gemm_tile(br, d, bc, dq_i, d, tile(ds, bc), kr, scale, true);
            gemm_tile(bc, d, br, dk_j, d, tile_t(ds, bc), qi, scale, true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::exp_fast;

    #[test]
    fn exp_fast_accuracy() {
        // The softmax only evaluates exp at x ≤ 0 (scores minus their running max).
        let mut worst = 0f64;
        for i in 0..=200_000 {
            let x = -87.0 * i as f32 / 200_000.0;
            let want = (x as f64).exp();
            worst = worst.max((exp_fast(x) as f64 - want).abs() / want);
        }
        println!("exp_fast max rel err on [-87, 0]: {worst:.3e}");
        assert!(worst < 2.0 * f32::EPSILON as f64, "exp_fast rel err {worst:e}");
        assert_eq!(exp_fast(0.0), 1.0);
        assert_eq!(exp_fast(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_fast(-100.0), 0.0);
        assert!(exp_fast(f32::NAN).is_nan());
        assert!((exp_fast(10.0) as f64 - 10f64.exp()).abs() / 10f64.exp() < 4.0 * f32::EPSILON as f64);
    }
}
