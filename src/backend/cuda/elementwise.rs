//! Launchers for kernels/elementwise.cu: unary maps and their derivatives, affine, casts,
//! broadcasting binary ops and their reducing backward.
//!
//! Unary, affine and cast launchers work on whole contiguous storages (the op layer makes
//! inputs contiguous); binary ops take each operand's strided [`Layout`] directly, so
//! broadcasts and transposed views need no copy.

use super::device::CudaDevice;
use super::params::*;
use super::storage::CudaStorage;
use crate::error::{Error, Result};
use crate::tensor::{DType, Layout};

pub use super::params::{sf_binary_op as BinaryOp, sf_unary_op as UnaryOp};

pub(crate) const KERNELS: &[&str] = &[
    "unary_fwd_f32",
    "unary_fwd_bf16",
    "unary_bwd_f32",
    "unary_bwd_bf16",
    "affine_fwd_f32",
    "affine_fwd_bf16",
    "binary_fwd_f32",
    "binary_fwd_bf16",
    "binary_bwd_f32",
    "binary_bwd_bf16",
    "cast_bf16_to_f32",
    "cast_f32_to_bf16",
];

const THREADS: u32 = SF_BLOCK_THREADS;

/// Elements one thread handles per step of the vectorized path (16 bytes).
fn per_thread(dtype: DType) -> usize {
    16 / dtype.size_in_bytes()
}

fn same_len(op: &'static str, a: &CudaStorage, b: &CudaStorage) -> Result<()> {
    if a.len() != b.len() || a.dtype() != b.dtype() {
        return Err(Error::op(op, format!("{a:?} and {b:?} differ in length or dtype")));
    }
    Ok(())
}

/// y = f(x); `alpha` is leaky_relu's slope (ignored by other ops).
pub fn unary_fwd(dev: &CudaDevice, op: UnaryOp, alpha: f32, x: &CudaStorage, y: &mut CudaStorage) -> Result<()> {
    same_len("unary_fwd", x, y)?;
    let name = kernel_name!("unary_fwd", x.dtype(), "unary_fwd");
    let n = x.len();
    let p = sf_unary_fwd_params { x: x.in_ptr(0), y: y.out_ptr(0), n: n as i64, op: op as i32, alpha };
    // SAFETY: x and y hold n elements of one dtype (same_len); the kernel touches [0, n) of each.
    unsafe { dev.launch(name, (dev.grid_for(n, THREADS as usize * per_thread(x.dtype())), 1, 1), THREADS, 0, &p) }
}

/// dx = dy * f'(x).
pub fn unary_bwd(
    dev: &CudaDevice,
    op: UnaryOp,
    alpha: f32,
    x: &CudaStorage,
    dy: &CudaStorage,
    dx: &mut CudaStorage,
) -> Result<()> {
    same_len("unary_bwd", x, dy)?;
    same_len("unary_bwd", x, dx)?;
    let name = kernel_name!("unary_bwd", x.dtype(), "unary_bwd");
    let n = x.len();
    let p =
        sf_unary_bwd_params { x: x.in_ptr(0), dy: dy.in_ptr(0), dx: dx.out_ptr(0), n: n as i64, op: op as i32, alpha };
    // SAFETY: x, dy and dx hold n elements of one dtype (same_len); the kernel touches [0, n).
    unsafe { dev.launch(name, (dev.grid_for(n, THREADS as usize * per_thread(x.dtype())), 1, 1), THREADS, 0, &p) }
}

/// y = x * scale + shift (one fma). The backward is `affine(dy, scale, 0)`.
pub fn affine(dev: &CudaDevice, x: &CudaStorage, y: &mut CudaStorage, scale: f32, shift: f32) -> Result<()> {
    same_len("affine", x, y)?;
    let name = kernel_name!("affine", x.dtype(), "affine_fwd");
    let n = x.len();
    let p = sf_affine_params { x: x.in_ptr(0), y: y.out_ptr(0), n: n as i64, scale, shift };
    // SAFETY: x and y hold n elements of one dtype (same_len).
    unsafe { dev.launch(name, (dev.grid_for(n, THREADS as usize * per_thread(x.dtype())), 1, 1), THREADS, 0, &p) }
}

/// y = x converted to y's dtype (f32 <-> bf16, round to nearest even).
pub fn cast(dev: &CudaDevice, x: &CudaStorage, y: &mut CudaStorage) -> Result<()> {
    if x.len() != y.len() {
        return Err(Error::op("cast", format!("{x:?} into {y:?}: lengths differ")));
    }
    let name = match (x.dtype(), y.dtype()) {
        (DType::BF16, DType::F32) => "cast_bf16_to_f32",
        (DType::F32, DType::BF16) => "cast_f32_to_bf16",
        (a, b) => return Err(Error::op("cast", format!("no cast kernel from {a} to {b}"))),
    };
    let n = x.len();
    let p = sf_cast_params { x: x.in_ptr(0), y: y.out_ptr(0), n: n as i64 };
    // SAFETY: x and y hold n elements each, of the dtypes the kernel name says.
    unsafe { dev.launch(name, (dev.grid_for(n, THREADS as usize * 8), 1, 1), THREADS, 0, &p) }
}

/// Right-aligned NumPy broadcast of two shapes.
fn broadcast(a: &[usize], b: &[usize]) -> Option<Vec<usize>> {
    let n = a.len().max(b.len());
    (0..n)
        .map(|i| {
            let da = if i + a.len() >= n { a[i + a.len() - n] } else { 1 };
            let db = if i + b.len() >= n { b[i + b.len() - n] } else { 1 };
            match (da, db) {
                (x, y) if x == y => Some(x),
                (1, y) => Some(y),
                (x, 1) => Some(x),
                _ => None,
            }
        })
        .collect()
}

/// An operand's shape padded to `rank` and its strides seen from the output dims (0 where
/// broadcast), both as the kernel's fixed-size arrays.
fn padded(l: &Layout, rank: usize) -> ([i64; SF_MAX_DIMS as usize], [i64; SF_MAX_DIMS as usize]) {
    let mut shape = [1i64; SF_MAX_DIMS as usize];
    let mut strides = [0i64; SF_MAX_DIMS as usize];
    let pad = rank - l.shape.len();
    for (i, (&d, &s)) in l.shape.iter().zip(&l.strides).enumerate() {
        shape[pad + i] = d as i64;
        strides[pad + i] = if d == 1 { 0 } else { s as i64 };
    }
    (shape, strides)
}

struct Broadcast {
    out: Vec<usize>,
    shape: [i64; SF_MAX_DIMS as usize],
    a: ([i64; SF_MAX_DIMS as usize], [i64; SF_MAX_DIMS as usize]),
    b: ([i64; SF_MAX_DIMS as usize], [i64; SF_MAX_DIMS as usize]),
}

fn plan(op: &'static str, a: &CudaStorage, al: &Layout, b: &CudaStorage, bl: &Layout) -> Result<Broadcast> {
    if a.dtype() != b.dtype() {
        return Err(Error::op(op, format!("dtype mismatch: {} vs {}", a.dtype(), b.dtype())));
    }
    let out = broadcast(&al.shape, &bl.shape).ok_or_else(|| Error::ShapeMismatch {
        op,
        lhs: al.shape.clone(),
        rhs: bl.shape.clone(),
    })?;
    if out.len() > SF_MAX_DIMS as usize {
        return Err(Error::op(op, format!("rank {} exceeds the kernel's {SF_MAX_DIMS}", out.len())));
    }
    a.check_span(op, "a", al.offset, &al.shape, &al.strides)?;
    b.check_span(op, "b", bl.offset, &bl.shape, &bl.strides)?;
    let rank = out.len().max(1);
    let mut shape = [1i64; SF_MAX_DIMS as usize];
    for (i, &d) in out.iter().enumerate() {
        shape[rank - out.len() + i] = d as i64;
    }
    Ok(Broadcast { shape, a: padded(al, rank), b: padded(bl, rank), out })
}

/// out = a op b, broadcast; `out` is contiguous with the broadcast shape.
pub fn binary_fwd(
    dev: &CudaDevice,
    op: BinaryOp,
    a: &CudaStorage,
    a_layout: &Layout,
    b: &CudaStorage,
    b_layout: &Layout,
    out: &mut CudaStorage,
) -> Result<()> {
    let bc = plan("binary_fwd", a, a_layout, b, b_layout)?;
    let n: usize = bc.out.iter().product();
    out.check("binary_fwd", "out", a.dtype(), 0, n)?;
    let name = kernel_name!("binary_fwd", a.dtype(), "binary_fwd");
    let contiguous =
        a_layout.shape == bc.out && b_layout.shape == bc.out && a_layout.is_contiguous() && b_layout.is_contiguous();
    let p = sf_binary_fwd_params {
        a: a.in_ptr(a_layout.offset),
        b: b.in_ptr(b_layout.offset),
        out: out.out_ptr(0),
        n: n as i64,
        op: op as i32,
        rank: bc.out.len().max(1) as i32,
        contiguous: contiguous as i32,
        shape: bc.shape,
        a_strides: bc.a.1,
        b_strides: bc.b.1,
    };
    let per = if contiguous { THREADS as usize * per_thread(a.dtype()) } else { THREADS as usize };
    // SAFETY: a and b were span-checked through their broadcast layouts (`plan`) and out holds the
    // broadcast shape's n elements; rank <= SF_MAX_DIMS.
    unsafe { dev.launch(name, (dev.grid_for(n, per), 1, 1), THREADS, 0, &p) }
}

/// Gradients of `a op b` given `dout` (contiguous, broadcast shape): `da` has a's shape and
/// `db` b's (contiguous); either may be skipped.
#[allow(clippy::too_many_arguments)]
pub fn binary_bwd(
    dev: &CudaDevice,
    op: BinaryOp,
    a: &CudaStorage,
    a_layout: &Layout,
    b: &CudaStorage,
    b_layout: &Layout,
    dout: &CudaStorage,
    da: Option<&mut CudaStorage>,
    db: Option<&mut CudaStorage>,
) -> Result<()> {
    let bc = plan("binary_bwd", a, a_layout, b, b_layout)?;
    let dt = a.dtype();
    let n: usize = bc.out.iter().product();
    dout.check("binary_bwd", "dout", dt, 0, n)?;
    let (na, nb) = (a_layout.numel(), b_layout.numel());
    if let Some(d) = da.as_deref() {
        d.check("binary_bwd", "da", dt, 0, na)?;
    }
    if let Some(d) = db.as_deref() {
        d.check("binary_bwd", "db", dt, 0, nb)?;
    }
    let name = kernel_name!("binary_bwd", dt, "binary_bwd");
    let p = sf_binary_bwd_params {
        a: a.in_ptr(a_layout.offset),
        b: b.in_ptr(b_layout.offset),
        dout: dout.in_ptr(0),
        da: da.map_or(std::ptr::null_mut(), |d| d.out_ptr(0)),
        db: db.map_or(std::ptr::null_mut(), |d| d.out_ptr(0)),
        na: na as i64,
        nb: nb as i64,
        op: op as i32,
        rank: bc.out.len().max(1) as i32,
        shape: bc.shape,
        a_shape: bc.a.0,
        b_shape: bc.b.0,
        a_strides: bc.a.1,
        b_strides: bc.b.1,
    };
    // SAFETY: a, b span-checked by `plan`; dout holds the broadcast shape, da and db (when given)
    // their operand's element count, all of one dtype.
    unsafe { dev.launch(name, (dev.grid_for(na.max(nb), THREADS as usize), 2, 1), THREADS, 0, &p) }
}
