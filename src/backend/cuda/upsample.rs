//! Launchers for kernels/upsample.cu: nearest-neighbour upsampling by integer factors.

use super::device::CudaDevice;
use super::params::*;
use super::storage::CudaStorage;
use crate::error::{Error, Result};
use crate::tensor::Layout;

pub(crate) const KERNELS: &[&str] =
    &["upsample_nearest_fwd_f32", "upsample_nearest_fwd_bf16", "upsample_nearest_bwd_f32", "upsample_nearest_bwd_bf16"];

const THREADS: u32 = SF_BLOCK_THREADS;

fn i32_of(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::op(op, format!("{v} exceeds i32")))
}

/// y [B, C, H * sh, W * sw] (contiguous) from x [B, C, H, W] (strided).
pub fn upsample_nearest_fwd(
    dev: &CudaDevice,
    x: &CudaStorage,
    x_layout: &Layout,
    scale: (usize, usize),
    y: &mut CudaStorage,
) -> Result<()> {
    const OP: &str = "upsample_nearest_fwd";
    let [b, c, h, w] = x_layout.shape[..] else {
        return Err(Error::op(OP, format!("expected [B, C, H, W], got {:?}", x_layout.shape)));
    };
    if scale.0 == 0 || scale.1 == 0 {
        return Err(Error::op(OP, "scale factors must be positive"));
    }
    x.check_span(OP, "x", x_layout.offset, &x_layout.shape, &x_layout.strides)?;
    let n = b * c * h * scale.0 * w * scale.1;
    y.check(OP, "y", x.dtype(), 0, n)?;
    let name = kernel_name!(OP, x.dtype(), "upsample_nearest_fwd");
    let s = &x_layout.strides;
    let p = sf_upsample_nearest_fwd_params {
        x: x.in_ptr(x_layout.offset),
        y: y.out_ptr(0),
        x_strides: [s[0] as i64, s[1] as i64, s[2] as i64, s[3] as i64],
        batch: i32_of(OP, b)?,
        channels: i32_of(OP, c)?,
        height: i32_of(OP, h)?,
        width: i32_of(OP, w)?,
        scale_h: i32_of(OP, scale.0)?,
        scale_w: i32_of(OP, scale.1)?,
    };
    // SAFETY: x was span-checked through its 4-d layout and y holds the upsampled element count.
    unsafe { dev.launch(name, (dev.grid_for(n, THREADS as usize), 1, 1), THREADS, 0, &p) }
}

/// dx [B, C, H, W] = block sums of dy [B, C, H * sh, W * sw] (both contiguous).
pub fn upsample_nearest_bwd(
    dev: &CudaDevice,
    dy: &CudaStorage,
    x_shape: [usize; 4],
    scale: (usize, usize),
    dx: &mut CudaStorage,
) -> Result<()> {
    const OP: &str = "upsample_nearest_bwd";
    let [b, c, h, w] = x_shape;
    let n = b * c * h * w;
    dy.check(OP, "dy", dy.dtype(), 0, n * scale.0 * scale.1)?;
    dx.check(OP, "dx", dy.dtype(), 0, n)?;
    let name = kernel_name!(OP, dy.dtype(), "upsample_nearest_bwd");
    let p = sf_upsample_nearest_bwd_params {
        dy: dy.in_ptr(0),
        dx: dx.out_ptr(0),
        batch: i32_of(OP, b)?,
        channels: i32_of(OP, c)?,
        height: i32_of(OP, h)?,
        width: i32_of(OP, w)?,
        scale_h: i32_of(OP, scale.0)?,
        scale_w: i32_of(OP, scale.1)?,
    };
    // SAFETY: dy holds the upsampled and dx the input element count, of one dtype.
    unsafe { dev.launch(name, (dev.grid_for(n, THREADS as usize), 1, 1), THREADS, 0, &p) }
}
