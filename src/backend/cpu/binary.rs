//! Broadcasting binary maps (NumPy rules: align right, size-1 dims stretch).

use super::PAR_THRESHOLD;
use rayon::prelude::*;

pub fn broadcast_shape(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    let mut out = vec![0; n];
    for i in 0..n {
        let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
        let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => return None,
        };
    }
    Some(out)
}

/// Strides (in elements of a contiguous `shape`) as seen from `out` dims, 0 where broadcast.
pub fn broadcast_strides(shape: &[usize], out: &[usize]) -> Vec<usize> {
    let cs = crate::tensor::Layout::contiguous(shape).strides;
    let pad = out.len() - shape.len();
    (0..out.len()).map(|i| if i < pad || shape[i - pad] == 1 { 0 } else { cs[i - pad] }).collect()
}

/// `f(a, b)` over the broadcast of contiguous `a` and `b`.
pub fn map_broadcast(
    a: &[f32],
    a_shape: &[usize],
    b: &[f32],
    b_shape: &[usize],
    out_shape: &[usize],
    f: impl Fn(f32, f32) -> f32 + Sync + Send,
) -> Vec<f32> {
    if a_shape == b_shape {
        return super::unary::map2(a, b, f);
    }
    let n: usize = out_shape.iter().product();
    if n == 0 {
        return Vec::new();
    }
    let inner = *out_shape.last().unwrap_or(&1);
    let sa = broadcast_strides(a_shape, out_shape);
    let sb = broadcast_strides(b_shape, out_shape);
    let (ia, ib) = (sa.last().copied().unwrap_or(0), sb.last().copied().unwrap_or(0));
    let rows = n / inner.max(1);
    let outer = &out_shape[..out_shape.len().saturating_sub(1)];
    let row_offsets = |r: usize| {
        let (mut oa, mut ob, mut rem) = (0, 0, r);
        for d in (0..outer.len()).rev() {
            let i = rem % outer[d];
            rem /= outer[d];
            oa += i * sa[d];
            ob += i * sb[d];
        }
        (oa, ob)
    };
    // The innermost axis is contiguous or broadcast in each operand; the slice forms
    // vectorize, the general strided form does not.
    let fill_row = |r: usize, dst: &mut [f32]| {
        let (oa, ob) = row_offsets(r);
        let m = dst.len();
        match (ia, ib) {
            (1, 1) => {
                dst.iter_mut().zip(a[oa..oa + m].iter().zip(&b[ob..ob + m])).for_each(|(d, (&x, &y))| *d = f(x, y))
            }
            (1, 0) => dst.iter_mut().zip(&a[oa..oa + m]).for_each(|(d, &x)| *d = f(x, b[ob])),
            (0, 1) => dst.iter_mut().zip(&b[ob..ob + m]).for_each(|(d, &y)| *d = f(a[oa], y)),
            _ => dst.iter_mut().enumerate().for_each(|(j, d)| *d = f(a[oa + j * ia], b[ob + j * ib])),
        }
    };
    let mut out = vec![0f32; n];
    if n >= PAR_THRESHOLD {
        out.par_chunks_mut(inner).enumerate().for_each(|(r, dst)| fill_row(r, dst));
    } else {
        out.chunks_mut(inner).enumerate().for_each(|(r, dst)| fill_row(r, dst));
    }
    debug_assert_eq!(rows * inner, n);
    out
}
