//! Launchers for kernels/reduce.cu: sum / mean / max over the last axis of a [rows, cols]
//! view, and their backward.

use super::device::CudaDevice;
use super::params::*;
use super::storage::{CudaStorage, DeviceVec};
use super::views::Rows;
use crate::error::{Error, Result};

pub use super::params::sf_reduce_op as ReduceOp;

pub(crate) const KERNELS: &[&str] = &["reduce_fwd_f32", "reduce_fwd_bf16", "reduce_bwd_f32", "reduce_bwd_bf16"];

const THREADS: u32 = SF_BLOCK_THREADS;
const ROWS_PER_BLOCK: usize = (SF_BLOCK_THREADS / 32) as usize;

/// out[r] = reduce(x[r, :]); with `argmax` (MAX only) also the index of each row's maximum.
pub fn reduce_fwd(
    dev: &CudaDevice,
    op: ReduceOp,
    x: &CudaStorage,
    view: Rows,
    out: &mut CudaStorage,
    argmax: Option<&mut DeviceVec<i32>>,
) -> Result<()> {
    view.check("reduce_fwd", "x", x)?;
    out.check("reduce_fwd", "out", x.dtype(), 0, view.rows)?;
    if view.cols > i32::MAX as usize {
        return Err(Error::op("reduce_fwd", format!("{} columns exceed the i32 argmax range", view.cols)));
    }
    let argmax_ptr = match argmax {
        Some(a) if op == ReduceOp::SF_REDUCE_MAX => {
            if a.len() < view.rows {
                return Err(Error::op(
                    "reduce_fwd",
                    format!("argmax holds {} entries for {} rows", a.len(), view.rows),
                ));
            }
            a.out_ptr()
        }
        Some(_) => return Err(Error::op("reduce_fwd", "argmax is only produced by max")),
        None => std::ptr::null_mut(),
    };
    let name = kernel_name!("reduce_fwd", x.dtype(), "reduce_fwd");
    let p = sf_reduce_fwd_params {
        x: x.in_ptr(view.offset),
        out: out.out_ptr(0),
        argmax: argmax_ptr,
        rows: view.rows as i64,
        cols: view.cols as i64,
        row_stride: view.row_stride as i64,
        op: op as i32,
    };
    // SAFETY: x was span-checked as a [rows, cols] view, out holds rows elements of its dtype and
    // argmax (max only) at least rows entries.
    unsafe { dev.launch(name, (dev.grid_for(view.rows, ROWS_PER_BLOCK), 1, 1), THREADS, 0, &p) }
}

/// dx [rows, cols] (contiguous) from dout [rows]: broadcast (sum), / cols (mean), or routed
/// to each row's argmax (max).
pub fn reduce_bwd(
    dev: &CudaDevice,
    op: ReduceOp,
    dout: &CudaStorage,
    argmax: Option<&DeviceVec<i32>>,
    rows: usize,
    cols: usize,
    dx: &mut CudaStorage,
) -> Result<()> {
    dout.check("reduce_bwd", "dout", dout.dtype(), 0, rows)?;
    dx.check("reduce_bwd", "dx", dout.dtype(), 0, rows * cols)?;
    let argmax_ptr = match (op, argmax) {
        (ReduceOp::SF_REDUCE_MAX, Some(a)) if a.len() >= rows => a.in_ptr(),
        (ReduceOp::SF_REDUCE_MAX, _) => {
            return Err(Error::op("reduce_bwd", format!("max needs an argmax of {rows} entries")))
        }
        _ => std::ptr::null(),
    };
    let name = kernel_name!("reduce_bwd", dout.dtype(), "reduce_bwd");
    let p = sf_reduce_bwd_params {
        dout: dout.in_ptr(0),
        argmax: argmax_ptr,
        dx: dx.out_ptr(0),
        rows: rows as i64,
        cols: cols as i64,
        op: op as i32,
    };
    // SAFETY: dout holds rows and dx rows * cols elements of one dtype; argmax (max) at least rows.
    unsafe { dev.launch(name, (dev.grid_for(rows * cols, THREADS as usize), 1, 1), THREADS, 0, &p) }
}
