//! Launchers for kernels/softmax.cu: softmax over the last axis and its backward.

use super::device::CudaDevice;
use super::params::*;
use super::storage::CudaStorage;
use super::views::Rows;
use crate::error::Result;

pub(crate) const KERNELS: &[&str] = &["softmax_fwd_f32", "softmax_fwd_bf16", "softmax_bwd_f32", "softmax_bwd_bf16"];

const THREADS: u32 = SF_BLOCK_THREADS;
const ROWS_PER_BLOCK: usize = (SF_BLOCK_THREADS / 32) as usize;

/// y = softmax(x) row by row; y is contiguous [rows, cols].
pub fn softmax_fwd(dev: &CudaDevice, x: &CudaStorage, view: Rows, y: &mut CudaStorage) -> Result<()> {
    view.check("softmax_fwd", "x", x)?;
    y.check("softmax_fwd", "y", x.dtype(), 0, view.rows * view.cols)?;
    let name = kernel_name!("softmax_fwd", x.dtype(), "softmax_fwd");
    let p = sf_softmax_fwd_params {
        x: x.in_ptr(view.offset),
        y: y.out_ptr(0),
        rows: view.rows as i64,
        cols: view.cols as i64,
        x_row_stride: view.row_stride as i64,
    };
    // SAFETY: x was span-checked as a [rows, cols] view and y holds rows * cols elements of its
    // dtype.
    unsafe { dev.launch(name, (dev.grid_for(view.rows, ROWS_PER_BLOCK), 1, 1), THREADS, 0, &p) }
}

/// dx = y * (dy - sum(dy * y)); all contiguous [rows, cols].
pub fn softmax_bwd(
    dev: &CudaDevice,
    y: &CudaStorage,
    dy: &CudaStorage,
    rows: usize,
    cols: usize,
    dx: &mut CudaStorage,
) -> Result<()> {
    let n = rows * cols;
    y.check("softmax_bwd", "y", y.dtype(), 0, n)?;
    dy.check("softmax_bwd", "dy", y.dtype(), 0, n)?;
    dx.check("softmax_bwd", "dx", y.dtype(), 0, n)?;
    let name = kernel_name!("softmax_bwd", y.dtype(), "softmax_bwd");
    let p = sf_softmax_bwd_params {
        y: y.in_ptr(0),
        dy: dy.in_ptr(0),
        dx: dx.out_ptr(0),
        rows: rows as i64,
        cols: cols as i64,
    };
    // SAFETY: y, dy and dx hold rows * cols elements of one dtype.
    unsafe { dev.launch(name, (dev.grid_for(rows, ROWS_PER_BLOCK), 1, 1), THREADS, 0, &p) }
}
