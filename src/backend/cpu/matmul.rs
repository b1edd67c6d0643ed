//! GEMM on the `gemm` crate (runtime-dispatched SIMD microkernels). Operands are
//! strided so transposed views multiply without a copy.
//!
//! Threading is ours, not the crate's: its own rayon split leaves the second thread
//! idle on the thin products of small transformers (2048×128 @ 128×128 ran at one
//! thread's speed on two). A product is cut into one block per thread, along the
//! batch, else the longer of m and n, and each block is a single-threaded gemm call
//! writing its own disjoint part of dst.

use gemm::Parallelism;
use rayon::prelude::*;

/// One strided matrix operand: `data[offset + i*rs + j*cs]` is element (i, j).
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub rs: isize,
    pub cs: isize,
}

/// Below this many multiply-adds a product runs on one thread.
const PAR_WORK: usize = 64 * 64 * 64;
/// Blocks are cut at multiples of this many rows or columns (the microkernel's tile
/// height in f32 lanes), so no block ends in a ragged tile it did not need.
const ALIGN: usize = 16;

/// One block of the output: matrix `bi`, rows r0..r1, columns c0..c1.
#[derive(Clone, Copy)]
struct Block {
    bi: usize,
    r0: usize,
    r1: usize,
    c0: usize,
    c1: usize,
}

/// The destination pointer, shared by blocks that write disjoint elements.
#[derive(Clone, Copy)]
struct DstPtr(*mut f32);
// SAFETY: every block writes only its own (rows × columns) of its own matrix; the
// blocks of one call partition dst, so no element is written by two threads.
unsafe impl Send for DstPtr {}
unsafe impl Sync for DstPtr {}

impl DstPtr {
    /// Taken through a method so closures capture the whole (Send) wrapper.
    fn at(self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// `dst[b] = a[b] @ b[b]` for each of `batch` matrices ([m,k] @ [k,n] -> [m,n]);
/// `a_bs`/`b_bs` are batch strides (0 broadcasts one matrix to all), dst is contiguous.
/// With `bias` (length n), every row of dst starts from it: `dst = bias + a @ b`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
    a: MatRef,
    a_bs: usize,
    b: MatRef,
    b_bs: usize,
    bias: Option<&[f32]>,
) -> Vec<f32> {
    let mut dst = match bias {
        Some(row) => {
            assert_eq!(row.len(), n, "bias length");
            row.repeat(batch * m)
        }
        None => vec![0f32; batch * m * n],
    };
    if m == 0 || n == 0 {
        return dst;
    }
    for bi in 0..batch {
        check_bounds(a, a.offset + bi * a_bs, m, k);
        check_bounds(b, b.offset + bi * b_bs, k, n);
    }
    let threads = super::num_threads();
    let blocks = if threads > 1 && batch * m * n * k >= PAR_WORK {
        split(batch, m, n, threads)
    } else {
        (0..batch).map(|bi| Block { bi, r0: 0, r1: m, c0: 0, c1: n }).collect()
    };
    let ptr = DstPtr(dst.as_mut_ptr());
    let run = |blk: Block| {
        let ao = a.offset + blk.bi * a_bs;
        let bo = b.offset + blk.bi * b_bs;
        let d = blk.bi * m * n + blk.r0 * n + blk.c0;
        // SAFETY: check_bounds proved every (i, j) read of a and b lies inside their
        // slices, so the offsets of this block's rows of a and columns of b do too; dst
        // has batch·m·n elements and this block writes its rows r0..r1 × columns c0..c1
        // of matrix bi only (see DstPtr). gemm computes dst = alpha·dst + beta·a@b,
        // reading dst only with a bias to start from.
        unsafe {
            gemm::gemm(
                blk.r1 - blk.r0,
                blk.c1 - blk.c0,
                k,
                ptr.at(d),
                1,
                n as isize,
                bias.is_some(),
                a.data.as_ptr().add(ao).offset(blk.r0 as isize * a.rs),
                a.cs,
                a.rs,
                b.data.as_ptr().add(bo).offset(blk.c0 as isize * b.cs),
                b.cs,
                b.rs,
                if bias.is_some() { 1.0 } else { 0.0 },
                1.0,
                false,
                false,
                false,
                Parallelism::None,
            );
        }
    };
    if blocks.len() > 1 {
        blocks.into_par_iter().for_each(run);
    } else {
        blocks.into_iter().for_each(run);
    }
    dst
}

/// About `parts` blocks covering every matrix: whole matrices when the batch alone
/// gives enough, else each matrix cut along its longer side into aligned strips.
fn split(batch: usize, m: usize, n: usize, parts: usize) -> Vec<Block> {
    if batch >= parts {
        return (0..batch).map(|bi| Block { bi, r0: 0, r1: m, c0: 0, c1: n }).collect();
    }
    let per = parts.div_ceil(batch);
    let len = m.max(n);
    let step = len.div_ceil(per).div_ceil(ALIGN) * ALIGN;
    let mut out = Vec::with_capacity(batch * per);
    for bi in 0..batch {
        for s in (0..len).step_by(step.max(1)) {
            let e = (s + step).min(len);
            out.push(if m >= n {
                Block { bi, r0: s, r1: e, c0: 0, c1: n }
            } else {
                Block { bi, r0: 0, r1: m, c0: s, c1: e }
            });
        }
    }
    out
}

fn check_bounds(x: MatRef, off: usize, rows: usize, cols: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    let last = off as isize + (rows as isize - 1) * x.rs + (cols as isize - 1) * x.cs;
    assert!(x.rs >= 0 && x.cs >= 0 && (last as usize) < x.data.len(), "matmul operand out of bounds");
}
