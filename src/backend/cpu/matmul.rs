//! GEMM on the `gemm` crate (runtime-dispatched SIMD microkernels, rayon threading).
//! Operands are strided so transposed views multiply without a copy.

use gemm::Parallelism;

/// One strided matrix operand: `data[offset + i*rs + j*cs]` is element (i, j).
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    pub data: &'a [f32],
    pub offset: usize,
    pub rs: isize,
    pub cs: isize,
}

/// `dst[b] = a[b] @ b[b]` for each of `batch` matrices ([m,k] @ [k,n] -> [m,n]);
/// `a_bs`/`b_bs` are batch strides (0 broadcasts one matrix to all), dst is contiguous.
#[allow(clippy::too_many_arguments)]
pub fn matmul(batch: usize, m: usize, n: usize, k: usize, a: MatRef, a_bs: usize, b: MatRef, b_bs: usize) -> Vec<f32> {
    let mut dst = vec![0f32; batch * m * n];
    if m == 0 || n == 0 {
        return dst;
    }
    let threads = super::num_threads();
    // Small products do not amortize the pool; gemm's own rule is coarse.
    let par = if (m * n * k) as f64 >= 48.0 * 48.0 * 48.0 && threads > 1 { Parallelism::Rayon(threads) } else { Parallelism::None };
    for bi in 0..batch {
        let ao = a.offset + bi * a_bs;
        let bo = b.offset + bi * b_bs;
        let d = &mut dst[bi * m * n..(bi + 1) * m * n];
        check_bounds(a, ao, m, k);
        check_bounds(b, bo, k, n);
        // SAFETY: check_bounds proved every (i, j) read of a and b lies inside their
        // slices; dst is a fresh contiguous m×n buffer; read_dst=false so alpha is unused.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                d.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.data.as_ptr().add(ao),
                a.cs,
                a.rs,
                b.data.as_ptr().add(bo),
                b.cs,
                b.rs,
                0.0,
                1.0,
                false,
                false,
                false,
                par,
            );
        }
    }
    dst
}

fn check_bounds(x: MatRef, off: usize, rows: usize, cols: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    let last = off as isize + (rows as isize - 1) * x.rs + (cols as isize - 1) * x.cs;
    assert!(x.rs >= 0 && x.cs >= 0 && (last as usize) < x.data.len(), "matmul operand out of bounds");
}
