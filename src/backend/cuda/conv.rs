//! Launchers for kernels/conv.cu: im2col and col2im, the data movement around the cuBLAS
//! GEMMs of a convolution (see the kernel file for the GEMM formulas).

use super::device::CudaDevice;
use super::params::*;
use super::storage::CudaStorage;
use crate::error::{Error, Result};
use crate::tensor::Layout;

pub(crate) const KERNELS: &[&str] = &["im2col_fwd_f32", "im2col_fwd_bf16", "im2col_bwd_f32", "im2col_bwd_bf16"];

const THREADS: u32 = SF_BLOCK_THREADS;

/// A 2-d convolution's geometry; the output size follows torch.nn.Conv2d.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub padding: (usize, usize),
    pub dilation: (usize, usize),
}

impl ConvGeometry {
    /// (out_h, out_w) = ((H + 2p - d (k - 1) - 1) / s + 1, likewise for W).
    pub fn out_hw(&self) -> Option<(usize, usize)> {
        let dim = |n: usize, k: usize, s: usize, p: usize, d: usize| {
            let span = d * (k.checked_sub(1)?) + 1;
            (n + 2 * p).checked_sub(span).filter(|_| s > 0).map(|r| r / s + 1)
        };
        Some((
            dim(self.height, self.kernel.0, self.stride.0, self.padding.0, self.dilation.0)?,
            dim(self.width, self.kernel.1, self.stride.1, self.padding.1, self.dilation.1)?,
        ))
    }

    /// Elements of the col buffer [B, C * KH * KW, OH * OW].
    pub fn col_len(&self) -> Option<usize> {
        let (oh, ow) = self.out_hw()?;
        Some(self.batch * self.channels * self.kernel.0 * self.kernel.1 * oh * ow)
    }

    fn raw(&self, op: &'static str) -> Result<sf_conv_geometry> {
        let (oh, ow) = self.out_hw().ok_or_else(|| Error::op(op, format!("{self:?} has no valid output size")))?;
        let i = |v: usize| i32::try_from(v).map_err(|_| Error::op(op, format!("{v} exceeds i32")));
        Ok(sf_conv_geometry {
            batch: i(self.batch)?,
            channels: i(self.channels)?,
            height: i(self.height)?,
            width: i(self.width)?,
            kernel_h: i(self.kernel.0)?,
            kernel_w: i(self.kernel.1)?,
            stride_h: i(self.stride.0)?,
            stride_w: i(self.stride.1)?,
            pad_h: i(self.padding.0)?,
            pad_w: i(self.padding.1)?,
            dilation_h: i(self.dilation.0)?,
            dilation_w: i(self.dilation.1)?,
            out_h: i(oh)?,
            out_w: i(ow)?,
        })
    }
}

/// col [B, C*KH*KW, OH*OW] from x [B, C, H, W] (any strides, given by `x_layout`).
pub fn im2col(
    dev: &CudaDevice,
    x: &CudaStorage,
    x_layout: &Layout,
    g: &ConvGeometry,
    col: &mut CudaStorage,
) -> Result<()> {
    const OP: &str = "im2col";
    let raw = g.raw(OP)?;
    if x_layout.shape != [g.batch, g.channels, g.height, g.width] {
        return Err(Error::ShapeMismatch {
            op: OP,
            lhs: x_layout.shape.clone(),
            rhs: vec![g.batch, g.channels, g.height, g.width],
        });
    }
    x.check_span(OP, "x", x_layout.offset, &x_layout.shape, &x_layout.strides)?;
    let n = g.col_len().unwrap_or(0);
    col.check(OP, "col", x.dtype(), 0, n)?;
    let name = kernel_name!(OP, x.dtype(), "im2col_fwd");
    let s = &x_layout.strides;
    let p = sf_im2col_params {
        x: x.in_ptr(x_layout.offset),
        col: col.out_ptr(0),
        x_strides: [s[0] as i64, s[1] as i64, s[2] as i64, s[3] as i64],
        g: raw,
    };
    // SAFETY: x was span-checked through its layout against the geometry's [B, C, H, W], col holds
    // B * C * KH * KW * OH * OW elements of x's dtype; padding reads are skipped by the kernel.
    unsafe { dev.launch(name, (dev.grid_for(n, THREADS as usize), 1, 1), THREADS, 0, &p) }
}

/// dx [B, C, H, W] (contiguous) from dcol: the backward of [`im2col`].
pub fn col2im(dev: &CudaDevice, col: &CudaStorage, g: &ConvGeometry, dx: &mut CudaStorage) -> Result<()> {
    const OP: &str = "col2im";
    let raw = g.raw(OP)?;
    col.check(OP, "col", col.dtype(), 0, g.col_len().unwrap_or(0))?;
    let n = g.batch * g.channels * g.height * g.width;
    dx.check(OP, "dx", col.dtype(), 0, n)?;
    let name = kernel_name!(OP, col.dtype(), "im2col_bwd");
    let p = sf_col2im_params { col: col.in_ptr(0), dx: dx.out_ptr(0), g: raw };
    // SAFETY: col holds the geometry's col_len and dx B * C * H * W elements, both of one dtype.
    unsafe { dev.launch(name, (dev.grid_for(n, THREADS as usize), 1, 1), THREADS, 0, &p) }
}
