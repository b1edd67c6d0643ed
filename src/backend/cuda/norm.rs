//! Launchers for kernels/norm.cu: layer_norm, rms_norm, fused layer_norm + adaLN modulate,
//! group_norm, gated residual, and colsum (second stage of every parameter gradient).
//!
//! Forward launchers write the fp32 statistics (mean, rstd) the backward needs into f32
//! storages the caller keeps. Parameter gradients go through a scratch buffer of per-block
//! partial sums (from the caching allocator) and `colsum_fwd`, which writes or accumulates
//! into the caller's gradient: deterministic, no atomics.

use super::device::CudaDevice;
use super::params::*;
use super::storage::{CudaStorage, DeviceVec};
use super::views::{PerBatch, Rows, Tokens};
use crate::error::{Error, Result};
use crate::tensor::DType;

pub(crate) const KERNELS: &[&str] = &[
    "layernorm_fwd_f32",
    "layernorm_fwd_bf16",
    "layernorm_bwd_f32",
    "layernorm_bwd_bf16",
    "rmsnorm_fwd_f32",
    "rmsnorm_fwd_bf16",
    "rmsnorm_bwd_f32",
    "rmsnorm_bwd_bf16",
    "colsum_fwd_f32",
    "colsum_fwd_bf16",
    "layernorm_modulate_fwd_f32",
    "layernorm_modulate_fwd_bf16",
    "layernorm_modulate_bwd_f32",
    "layernorm_modulate_bwd_bf16",
    "groupnorm_fwd_f32",
    "groupnorm_fwd_bf16",
    "groupnorm_bwd_f32",
    "groupnorm_bwd_bf16",
    "gated_residual_fwd_f32",
    "gated_residual_fwd_bf16",
    "gated_residual_bwd_f32",
    "gated_residual_bwd_bf16",
];

const THREADS: u32 = SF_BLOCK_THREADS;
const BWD_ROWS: usize = SF_NORM_BWD_ROWS_PER_BLOCK as usize;

/// Where a parameter gradient [dim] goes: written, or added to what `out` holds.
pub struct ParamGrad<'a> {
    pub out: &'a mut CudaStorage,
    pub accumulate: bool,
}

/// Where a per-sample gradient [B, D] goes (possibly a chunk of a [B, k * D] gradient).
pub struct BatchGrad<'a> {
    pub out: &'a mut CudaStorage,
    pub view: PerBatch,
    pub accumulate: bool,
}

fn stats(op: &'static str, what: &str, s: &CudaStorage, n: usize) -> Result<()> {
    s.check(op, what, DType::F32, 0, n)
}

fn param(
    op: &'static str,
    what: &str,
    p: Option<&CudaStorage>,
    dtype: DType,
    dim: usize,
) -> Result<*const std::ffi::c_void> {
    match p {
        Some(s) => {
            s.check(op, what, dtype, 0, dim)?;
            Ok(s.in_ptr(0))
        }
        None => Ok(std::ptr::null()),
    }
}

fn dim_i32(op: &'static str, dim: usize) -> Result<i32> {
    i32::try_from(dim).map_err(|_| Error::op(op, format!("dimension {dim} exceeds i32")))
}

/// out[g, :] (+)= sum over chunks of partial[g, chunk, :]; out row g at `view`.
#[allow(clippy::too_many_arguments)]
fn colsum(
    dev: &CudaDevice,
    partial: &DeviceVec<f32>,
    groups: usize,
    chunks: usize,
    dim: usize,
    out: &mut CudaStorage,
    view: PerBatch,
    accumulate: bool,
) -> Result<()> {
    view.check("colsum", "gradient", out, groups, dim)?;
    let name = kernel_name!("colsum", out.dtype(), "colsum_fwd");
    let p = sf_colsum_params {
        partial: partial.in_ptr(),
        out: out.out_ptr(view.offset),
        out_group_stride: view.batch_stride as i64,
        groups: groups as i32,
        chunks: chunks as i32,
        dim: dim as i32,
        accumulate: accumulate as i32,
    };
    // SAFETY: partial holds groups * chunks * dim f32 (its callers allocate exactly that) and the
    // gradient view was span-checked for [groups, dim].
    unsafe { dev.launch(name, (dev.grid_for(groups * dim, THREADS as usize), 1, 1), THREADS, 0, &p) }
}

// ---- layer_norm / rms_norm ------------------------------------------------------------------

#[allow(clippy::too_many_arguments)]
fn norm_fwd(
    dev: &CudaDevice,
    op: &'static str,
    name: &'static str,
    x: &CudaStorage,
    view: Rows,
    weight: Option<&CudaStorage>,
    bias: Option<&CudaStorage>,
    eps: f32,
    y: &mut CudaStorage,
    mean: Option<&mut CudaStorage>,
    rstd: &mut CudaStorage,
) -> Result<()> {
    let dt = x.dtype();
    view.check(op, "x", x)?;
    y.check(op, "y", dt, 0, view.rows * view.cols)?;
    stats(op, "rstd", rstd, view.rows)?;
    let mean_ptr = match mean {
        Some(m) => {
            stats(op, "mean", m, view.rows)?;
            m.out_ptr(0) as *mut f32
        }
        None => std::ptr::null_mut(),
    };
    let p = sf_norm_fwd_params {
        x: x.in_ptr(view.offset),
        weight: param(op, "weight", weight, dt, view.cols)?,
        bias: param(op, "bias", bias, dt, view.cols)?,
        y: y.out_ptr(0),
        mean: mean_ptr,
        rstd: rstd.out_ptr(0) as *mut f32,
        rows: view.rows as i64,
        x_row_stride: view.row_stride as i64,
        dim: dim_i32(op, view.cols)?,
        eps,
    };
    // SAFETY: x was span-checked as a [rows, dim] view, y holds rows * dim, mean / rstd rows f32
    // and the weight / bias (when given) dim elements of x's dtype.
    unsafe { dev.launch(name, (dev.grid_for(view.rows, 1), 1, 1), THREADS, 0, &p) }
}

/// layer_norm over the last axis: y = (x - mean) * rstd * weight + bias (biased variance, as
/// torch.layer_norm); writes mean and rstd [rows] (f32).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_fwd(
    dev: &CudaDevice,
    x: &CudaStorage,
    view: Rows,
    weight: Option<&CudaStorage>,
    bias: Option<&CudaStorage>,
    eps: f32,
    y: &mut CudaStorage,
    mean: &mut CudaStorage,
    rstd: &mut CudaStorage,
) -> Result<()> {
    let name = kernel_name!("layer_norm_fwd", x.dtype(), "layernorm_fwd");
    norm_fwd(dev, "layer_norm_fwd", name, x, view, weight, bias, eps, y, Some(mean), rstd)
}

/// rms_norm over the last axis: y = x * rstd * weight, rstd = 1 / sqrt(mean(x^2) + eps).
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_fwd(
    dev: &CudaDevice,
    x: &CudaStorage,
    view: Rows,
    weight: Option<&CudaStorage>,
    eps: f32,
    y: &mut CudaStorage,
    rstd: &mut CudaStorage,
) -> Result<()> {
    let name = kernel_name!("rms_norm_fwd", x.dtype(), "rmsnorm_fwd");
    norm_fwd(dev, "rms_norm_fwd", name, x, view, weight, None, eps, y, None, rstd)
}

#[allow(clippy::too_many_arguments)]
fn norm_bwd(
    dev: &CudaDevice,
    op: &'static str,
    name: &'static str,
    x: &CudaStorage,
    view: Rows,
    weight: Option<&CudaStorage>,
    dy: &CudaStorage,
    mean: Option<&CudaStorage>,
    rstd: &CudaStorage,
    dx: &mut CudaStorage,
    dweight: Option<ParamGrad>,
    dbias: Option<ParamGrad>,
) -> Result<()> {
    let dt = x.dtype();
    let (rows, dim) = (view.rows, view.cols);
    view.check(op, "x", x)?;
    dy.check(op, "dy", dt, 0, rows * dim)?;
    dx.check(op, "dx", dt, 0, rows * dim)?;
    stats(op, "rstd", rstd, rows)?;
    if let Some(m) = mean {
        stats(op, "mean", m, rows)?;
    }
    let blocks = rows.div_ceil(BWD_ROWS);
    let mut pw = dweight.as_ref().map(|_| DeviceVec::<f32>::alloc(dev, blocks * dim)).transpose()?;
    let mut pb = dbias.as_ref().map(|_| DeviceVec::<f32>::alloc(dev, blocks * dim)).transpose()?;
    let nparams = pw.is_some() as u32 + pb.is_some() as u32;
    let p = sf_norm_bwd_params {
        x: x.in_ptr(view.offset),
        weight: param(op, "weight", weight, dt, dim)?,
        dy: dy.in_ptr(0),
        mean: mean.map_or(std::ptr::null(), |m| m.in_ptr(0) as *const f32),
        rstd: rstd.in_ptr(0) as *const f32,
        dx: dx.out_ptr(0),
        dweight_partial: pw.as_mut().map_or(std::ptr::null_mut(), |v| v.out_ptr()),
        dbias_partial: pb.as_mut().map_or(std::ptr::null_mut(), |v| v.out_ptr()),
        rows: rows as i64,
        x_row_stride: view.row_stride as i64,
        dim: dim_i32(op, dim)?,
    };
    let smem = nparams * dim as u32 * 4;
    // SAFETY: x span-checked, dy / dx hold rows * dim, stats rows f32, partials blocks * dim f32
    // (the grid has `blocks` blocks); the shared memory holds nparams * dim floats, as the kernel
    // expects.
    unsafe { dev.launch(name, (blocks as u32, 1, 1), THREADS, smem, &p) }?;
    let whole = PerBatch { offset: 0, batch_stride: dim };
    if let (Some(g), Some(v)) = (dweight, pw.as_ref()) {
        colsum(dev, v, 1, blocks, dim, g.out, whole, g.accumulate)?;
    }
    if let (Some(g), Some(v)) = (dbias, pb.as_ref()) {
        colsum(dev, v, 1, blocks, dim, g.out, whole, g.accumulate)?;
    }
    Ok(())
}

/// layer_norm backward: dx [rows, dim] and, when asked, dweight / dbias [dim].
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_bwd(
    dev: &CudaDevice,
    x: &CudaStorage,
    view: Rows,
    weight: Option<&CudaStorage>,
    dy: &CudaStorage,
    mean: &CudaStorage,
    rstd: &CudaStorage,
    dx: &mut CudaStorage,
    dweight: Option<ParamGrad>,
    dbias: Option<ParamGrad>,
) -> Result<()> {
    let name = kernel_name!("layer_norm_bwd", x.dtype(), "layernorm_bwd");
    norm_bwd(dev, "layer_norm_bwd", name, x, view, weight, dy, Some(mean), rstd, dx, dweight, dbias)
}

/// rms_norm backward: dx [rows, dim] and, when asked, dweight [dim].
#[allow(clippy::too_many_arguments)]
pub fn rms_norm_bwd(
    dev: &CudaDevice,
    x: &CudaStorage,
    view: Rows,
    weight: Option<&CudaStorage>,
    dy: &CudaStorage,
    rstd: &CudaStorage,
    dx: &mut CudaStorage,
    dweight: Option<ParamGrad>,
) -> Result<()> {
    let name = kernel_name!("rms_norm_bwd", x.dtype(), "rmsnorm_bwd");
    norm_bwd(dev, "rms_norm_bwd", name, x, view, weight, dy, None, rstd, dx, dweight, None)
}

// ---- layer_norm + adaLN modulate --------------------------------------------------------------

/// y[b, n] = layer_norm(x[b, n]) * (1 + scale[b]) + shift[b] (no elementwise affine);
/// writes mean and rstd [B, N] (f32).
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_modulate_fwd(
    dev: &CudaDevice,
    x: &CudaStorage,
    xv: Tokens,
    shift: &CudaStorage,
    shift_v: PerBatch,
    scale: &CudaStorage,
    scale_v: PerBatch,
    eps: f32,
    y: &mut CudaStorage,
    mean: &mut CudaStorage,
    rstd: &mut CudaStorage,
) -> Result<()> {
    const OP: &str = "layer_norm_modulate_fwd";
    let dt = x.dtype();
    let rows = xv.batch * xv.tokens;
    xv.check(OP, "x", x)?;
    shift_v.check(OP, "shift", shift, xv.batch, xv.dim)?;
    scale_v.check(OP, "scale", scale, xv.batch, xv.dim)?;
    for (s, what) in [(shift, "shift"), (scale, "scale")] {
        if s.dtype() != dt {
            return Err(Error::op(OP, format!("{what} is {}, x is {dt}", s.dtype())));
        }
    }
    y.check(OP, "y", dt, 0, rows * xv.dim)?;
    stats(OP, "mean", mean, rows)?;
    stats(OP, "rstd", rstd, rows)?;
    let name = kernel_name!(OP, dt, "layernorm_modulate_fwd");
    let p = sf_layernorm_modulate_fwd_params {
        x: x.in_ptr(xv.offset),
        shift: shift.in_ptr(shift_v.offset),
        scale: scale.in_ptr(scale_v.offset),
        y: y.out_ptr(0),
        mean: mean.out_ptr(0) as *mut f32,
        rstd: rstd.out_ptr(0) as *mut f32,
        x_batch_stride: xv.batch_stride as i64,
        x_row_stride: xv.row_stride as i64,
        shift_batch_stride: shift_v.batch_stride as i64,
        scale_batch_stride: scale_v.batch_stride as i64,
        batch: xv.batch as i32,
        tokens: xv.tokens as i32,
        dim: dim_i32(OP, xv.dim)?,
        eps,
    };
    // SAFETY: x span-checked as [B, N, D], shift / scale as [B, D] views of x's dtype, y holds B *
    // N * D, mean / rstd B * N f32.
    unsafe { dev.launch(name, (dev.grid_for(rows, 1), 1, 1), THREADS, 0, &p) }
}

/// Backward of [`layer_norm_modulate_fwd`]: dx [B, N, D], dshift and dscale [B, D].
#[allow(clippy::too_many_arguments)]
pub fn layer_norm_modulate_bwd(
    dev: &CudaDevice,
    x: &CudaStorage,
    xv: Tokens,
    scale: &CudaStorage,
    scale_v: PerBatch,
    dy: &CudaStorage,
    mean: &CudaStorage,
    rstd: &CudaStorage,
    dx: &mut CudaStorage,
    dshift: BatchGrad,
    dscale: BatchGrad,
) -> Result<()> {
    const OP: &str = "layer_norm_modulate_bwd";
    let dt = x.dtype();
    let (batch, tokens, dim) = (xv.batch, xv.tokens, xv.dim);
    let rows = batch * tokens;
    xv.check(OP, "x", x)?;
    scale_v.check(OP, "scale", scale, batch, dim)?;
    dy.check(OP, "dy", dt, 0, rows * dim)?;
    dx.check(OP, "dx", dt, 0, rows * dim)?;
    stats(OP, "mean", mean, rows)?;
    stats(OP, "rstd", rstd, rows)?;
    let chunks = tokens.div_ceil(BWD_ROWS);
    let mut p_shift = DeviceVec::<f32>::alloc(dev, batch * chunks * dim)?;
    let mut p_scale = DeviceVec::<f32>::alloc(dev, batch * chunks * dim)?;
    let name = kernel_name!(OP, dt, "layernorm_modulate_bwd");
    let p = sf_layernorm_modulate_bwd_params {
        x: x.in_ptr(xv.offset),
        scale: scale.in_ptr(scale_v.offset),
        dy: dy.in_ptr(0),
        mean: mean.in_ptr(0) as *const f32,
        rstd: rstd.in_ptr(0) as *const f32,
        dx: dx.out_ptr(0),
        dshift_partial: p_shift.out_ptr(),
        dscale_partial: p_scale.out_ptr(),
        x_batch_stride: xv.batch_stride as i64,
        x_row_stride: xv.row_stride as i64,
        scale_batch_stride: scale_v.batch_stride as i64,
        batch: batch as i32,
        tokens: tokens as i32,
        dim: dim_i32(OP, dim)?,
    };
    // SAFETY: x, scale span-checked; dy / dx hold B * N * D; stats B * N f32; both partials
    // B * chunks * D f32 for the (chunks, B) grid; shared memory holds 2 * D floats.
    unsafe { dev.launch(name, (chunks as u32, batch as u32, 1), THREADS, 2 * dim as u32 * 4, &p) }?;
    colsum(dev, &p_shift, batch, chunks, dim, dshift.out, dshift.view, dshift.accumulate)?;
    colsum(dev, &p_scale, batch, chunks, dim, dscale.out, dscale.view, dscale.accumulate)
}

// ---- group_norm -------------------------------------------------------------------------------

/// Shape of a group_norm input [B, C, S] (S = H * W, contiguous).
#[derive(Clone, Copy, Debug)]
pub struct GroupNormShape {
    pub batch: usize,
    pub channels: usize,
    pub spatial: usize,
    pub groups: usize,
}

impl GroupNormShape {
    fn check(&self, op: &'static str) -> Result<()> {
        if self.groups == 0 || self.channels % self.groups != 0 {
            return Err(Error::op(op, format!("{} channels do not split into {} groups", self.channels, self.groups)));
        }
        Ok(())
    }
    fn numel(&self) -> usize {
        self.batch * self.channels * self.spatial
    }
}

/// group_norm: statistics per (batch, group), affine per channel; mean / rstd [B, G] (f32).
#[allow(clippy::too_many_arguments)]
pub fn group_norm_fwd(
    dev: &CudaDevice,
    x: &CudaStorage,
    shape: GroupNormShape,
    weight: Option<&CudaStorage>,
    bias: Option<&CudaStorage>,
    eps: f32,
    y: &mut CudaStorage,
    mean: &mut CudaStorage,
    rstd: &mut CudaStorage,
) -> Result<()> {
    const OP: &str = "group_norm_fwd";
    shape.check(OP)?;
    let dt = x.dtype();
    x.check(OP, "x", dt, 0, shape.numel())?;
    y.check(OP, "y", dt, 0, shape.numel())?;
    stats(OP, "mean", mean, shape.batch * shape.groups)?;
    stats(OP, "rstd", rstd, shape.batch * shape.groups)?;
    let name = kernel_name!(OP, dt, "groupnorm_fwd");
    let p = sf_groupnorm_fwd_params {
        x: x.in_ptr(0),
        weight: param(OP, "weight", weight, dt, shape.channels)?,
        bias: param(OP, "bias", bias, dt, shape.channels)?,
        y: y.out_ptr(0),
        mean: mean.out_ptr(0) as *mut f32,
        rstd: rstd.out_ptr(0) as *mut f32,
        spatial: shape.spatial as i64,
        batch: shape.batch as i32,
        channels: shape.channels as i32,
        groups: shape.groups as i32,
        eps,
    };
    // SAFETY: x and y hold B * C * S elements, mean / rstd B * G f32, weight / bias C elements;
    // channels split evenly into groups (shape.check).
    unsafe { dev.launch(name, (shape.groups as u32, shape.batch as u32, 1), THREADS, 0, &p) }
}

/// group_norm backward: dx and, when asked, dweight / dbias [C].
#[allow(clippy::too_many_arguments)]
pub fn group_norm_bwd(
    dev: &CudaDevice,
    x: &CudaStorage,
    shape: GroupNormShape,
    weight: Option<&CudaStorage>,
    dy: &CudaStorage,
    mean: &CudaStorage,
    rstd: &CudaStorage,
    dx: &mut CudaStorage,
    dweight: Option<ParamGrad>,
    dbias: Option<ParamGrad>,
) -> Result<()> {
    const OP: &str = "group_norm_bwd";
    shape.check(OP)?;
    let dt = x.dtype();
    for (s, what) in [(x, "x"), (dy, "dy")] {
        s.check(OP, what, dt, 0, shape.numel())?;
    }
    dx.check(OP, "dx", dt, 0, shape.numel())?;
    stats(OP, "mean", mean, shape.batch * shape.groups)?;
    stats(OP, "rstd", rstd, shape.batch * shape.groups)?;
    let (b, c) = (shape.batch, shape.channels);
    let mut pw = dweight.as_ref().map(|_| DeviceVec::<f32>::alloc(dev, b * c)).transpose()?;
    let mut pb = dbias.as_ref().map(|_| DeviceVec::<f32>::alloc(dev, b * c)).transpose()?;
    let name = kernel_name!(OP, dt, "groupnorm_bwd");
    let p = sf_groupnorm_bwd_params {
        x: x.in_ptr(0),
        weight: param(OP, "weight", weight, dt, c)?,
        dy: dy.in_ptr(0),
        mean: mean.in_ptr(0) as *const f32,
        rstd: rstd.in_ptr(0) as *const f32,
        dx: dx.out_ptr(0),
        dweight_partial: pw.as_mut().map_or(std::ptr::null_mut(), |v| v.out_ptr()),
        dbias_partial: pb.as_mut().map_or(std::ptr::null_mut(), |v| v.out_ptr()),
        spatial: shape.spatial as i64,
        batch: b as i32,
        channels: c as i32,
        groups: shape.groups as i32,
    };
    // SAFETY: x, dy, dx hold B * C * S elements; stats B * G f32; partials (when asked) B * C f32.
    unsafe { dev.launch(name, (shape.groups as u32, b as u32, 1), THREADS, 0, &p) }?;
    let whole = PerBatch { offset: 0, batch_stride: c };
    if let (Some(g), Some(v)) = (dweight, pw.as_ref()) {
        colsum(dev, v, 1, b, c, g.out, whole, g.accumulate)?;
    }
    if let (Some(g), Some(v)) = (dbias, pb.as_ref()) {
        colsum(dev, v, 1, b, c, g.out, whole, g.accumulate)?;
    }
    Ok(())
}

// ---- gated residual ---------------------------------------------------------------------------

/// out[b, n] = x[b, n] + gate[b] * y[b, n]; out contiguous [B, N, D].
#[allow(clippy::too_many_arguments)]
pub fn gated_residual_fwd(
    dev: &CudaDevice,
    x: &CudaStorage,
    xv: Tokens,
    y: &CudaStorage,
    yv: Tokens,
    gate: &CudaStorage,
    gate_v: PerBatch,
    out: &mut CudaStorage,
) -> Result<()> {
    const OP: &str = "gated_residual_fwd";
    if (xv.batch, xv.tokens, xv.dim) != (yv.batch, yv.tokens, yv.dim) {
        return Err(Error::ShapeMismatch {
            op: OP,
            lhs: vec![xv.batch, xv.tokens, xv.dim],
            rhs: vec![yv.batch, yv.tokens, yv.dim],
        });
    }
    let dt = x.dtype();
    xv.check(OP, "x", x)?;
    yv.check(OP, "y", y)?;
    gate_v.check(OP, "gate", gate, xv.batch, xv.dim)?;
    if y.dtype() != dt || gate.dtype() != dt {
        return Err(Error::op(OP, format!("dtypes differ: x {dt}, y {}, gate {}", y.dtype(), gate.dtype())));
    }
    let n = xv.batch * xv.tokens * xv.dim;
    out.check(OP, "out", dt, 0, n)?;
    let name = kernel_name!(OP, dt, "gated_residual_fwd");
    let p = sf_gated_residual_fwd_params {
        x: x.in_ptr(xv.offset),
        y: y.in_ptr(yv.offset),
        gate: gate.in_ptr(gate_v.offset),
        out: out.out_ptr(0),
        x_batch_stride: xv.batch_stride as i64,
        x_row_stride: xv.row_stride as i64,
        y_batch_stride: yv.batch_stride as i64,
        y_row_stride: yv.row_stride as i64,
        gate_batch_stride: gate_v.batch_stride as i64,
        batch: xv.batch as i32,
        tokens: xv.tokens as i32,
        dim: dim_i32(OP, xv.dim)?,
    };
    // SAFETY: x and y span-checked as [B, N, D], gate as [B, D], out holds B * N * D, one dtype.
    unsafe { dev.launch(name, (dev.grid_for(n, THREADS as usize), 1, 1), THREADS, 0, &p) }
}

/// Backward of [`gated_residual_fwd`]: dx is dout itself (no kernel), dy = dout * gate,
/// dgate = sum over tokens of dout * y.
#[allow(clippy::too_many_arguments)]
pub fn gated_residual_bwd(
    dev: &CudaDevice,
    y: &CudaStorage,
    yv: Tokens,
    gate: &CudaStorage,
    gate_v: PerBatch,
    dout: &CudaStorage,
    dy: &mut CudaStorage,
    dgate: BatchGrad,
) -> Result<()> {
    const OP: &str = "gated_residual_bwd";
    let dt = y.dtype();
    let (batch, tokens, dim) = (yv.batch, yv.tokens, yv.dim);
    yv.check(OP, "y", y)?;
    gate_v.check(OP, "gate", gate, batch, dim)?;
    dout.check(OP, "dout", dt, 0, batch * tokens * dim)?;
    dy.check(OP, "dy", dt, 0, batch * tokens * dim)?;
    let chunks = tokens.div_ceil(BWD_ROWS);
    let mut partial = DeviceVec::<f32>::alloc(dev, batch * chunks * dim)?;
    let name = kernel_name!(OP, dt, "gated_residual_bwd");
    let p = sf_gated_residual_bwd_params {
        y: y.in_ptr(yv.offset),
        gate: gate.in_ptr(gate_v.offset),
        dout: dout.in_ptr(0),
        dy: dy.out_ptr(0),
        dgate_partial: partial.out_ptr(),
        y_batch_stride: yv.batch_stride as i64,
        y_row_stride: yv.row_stride as i64,
        gate_batch_stride: gate_v.batch_stride as i64,
        batch: batch as i32,
        tokens: tokens as i32,
        dim: dim_i32(OP, dim)?,
    };
    // SAFETY: y span-checked as [B, N, D], gate as [B, D]; dout / dy hold B * N * D; the partial
    // holds B * chunks * D f32 for the (chunks, B) grid.
    unsafe { dev.launch(name, (chunks as u32, batch as u32, 1), THREADS, 0, &p) }?;
    colsum(dev, &partial, batch, chunks, dim, dgate.out, dgate.view, dgate.accumulate)
}
