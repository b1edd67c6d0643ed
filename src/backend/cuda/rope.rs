//! Launchers for kernels/rope.cu: FLUX rotary embedding on interleaved pairs.

use super::device::CudaDevice;
use super::params::*;
use super::storage::CudaStorage;
use super::views::Heads;
use crate::error::{Error, Result};
use crate::tensor::DType;

pub(crate) const KERNELS: &[&str] = &["rope_fwd_f32", "rope_fwd_bf16", "rope_bwd_f32", "rope_bwd_bf16"];

const THREADS: u32 = SF_BLOCK_THREADS;

/// Shape of a rotated tensor [B, H, N, D] (D even).
#[derive(Clone, Copy, Debug)]
pub struct RopeShape {
    pub batch: usize,
    pub heads: usize,
    pub tokens: usize,
    pub dim: usize,
}

/// The cos / sin tables: f32 [B or 1, N, D / 2]; `batch_stride` 0 shares one table.
pub struct RopeTables<'a> {
    pub cos: &'a CudaStorage,
    pub sin: &'a CudaStorage,
    pub batch_stride: usize,
}

/// Rotates each pair (x[2i], x[2i+1]) of `x` (any [B, H, N, D] strides) by its token's angle;
/// `inverse` rotates the other way (the backward: pass dout as `x`, receive dx in `out`).
/// `out` is contiguous [B, H, N, D].
pub fn rope(
    dev: &CudaDevice,
    x: &CudaStorage,
    xv: Heads,
    shape: RopeShape,
    tables: &RopeTables,
    inverse: bool,
    out: &mut CudaStorage,
) -> Result<()> {
    const OP: &str = "rope";
    if shape.dim % 2 != 0 {
        return Err(Error::op(OP, format!("head dim {} is odd", shape.dim)));
    }
    let half = shape.dim / 2;
    xv.check(OP, "x", x, [shape.batch, shape.heads, shape.tokens, shape.dim])?;
    for (t, what) in [(tables.cos, "cos"), (tables.sin, "sin")] {
        if t.dtype() != DType::F32 {
            return Err(Error::op(OP, format!("{what} table is {}, expected f32", t.dtype())));
        }
        t.check_span(OP, what, 0, &[shape.batch, shape.tokens, half], &[tables.batch_stride, half, 1])?;
    }
    let n = shape.batch * shape.heads * shape.tokens * shape.dim;
    out.check(OP, "out", x.dtype(), 0, n)?;
    let name = if inverse { kernel_name!(OP, x.dtype(), "rope_bwd") } else { kernel_name!(OP, x.dtype(), "rope_fwd") };
    let p = sf_rope_params {
        x: x.in_ptr(xv.offset),
        cos: tables.cos.in_ptr(0) as *const f32,
        sin: tables.sin.in_ptr(0) as *const f32,
        out: out.out_ptr(0),
        x_batch_stride: xv.batch_stride as i64,
        x_head_stride: xv.head_stride as i64,
        x_row_stride: xv.row_stride as i64,
        rope_batch_stride: tables.batch_stride as i64,
        batch: shape.batch as i32,
        heads: shape.heads as i32,
        tokens: shape.tokens as i32,
        dim: shape.dim as i32,
    };
    // SAFETY: x was span-checked through its [B, H, N, D] strides, cos / sin as f32 [B, N, D / 2]
    // tables, out holds B * H * N * D elements of x's dtype.
    unsafe { dev.launch(name, (dev.grid_for(n / 2, THREADS as usize), 1, 1), THREADS, 0, &p) }
}
