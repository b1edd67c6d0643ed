//! Launchers for kernels/loss.cu: per-sample (row) means of mse, pseudo-Huber and hinge
//! losses, and their backward.

use super::device::CudaDevice;
use super::params::*;
use super::storage::CudaStorage;
use super::views::Rows;
use crate::error::{Error, Result};
use crate::tensor::DType;

pub(crate) const KERNELS: &[&str] = &[
    "mse_fwd_f32",
    "mse_fwd_bf16",
    "mse_bwd_f32",
    "mse_bwd_bf16",
    "pseudo_huber_fwd_f32",
    "pseudo_huber_fwd_bf16",
    "pseudo_huber_bwd_f32",
    "pseudo_huber_bwd_bf16",
    "hinge_fwd_f32",
    "hinge_fwd_bf16",
    "hinge_bwd_f32",
    "hinge_bwd_bf16",
];

const THREADS: u32 = SF_BLOCK_THREADS;

/// Which elementwise loss; every row's loss is its mean over the columns.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Loss {
    /// (p - t)^2
    Mse,
    /// sqrt((p - t)^2 + c^2) - c
    PseudoHuber { c: f32 },
    /// max(0, 1 - sign * p): sign +1 for logits of real samples, -1 for fake ones. No target.
    Hinge { sign: f32 },
}

impl Loss {
    fn names(self, dtype: DType) -> Result<(&'static str, &'static str)> {
        Ok(match self {
            Loss::Mse => (kernel_name!("mse", dtype, "mse_fwd"), kernel_name!("mse", dtype, "mse_bwd")),
            Loss::PseudoHuber { .. } => (
                kernel_name!("pseudo_huber", dtype, "pseudo_huber_fwd"),
                kernel_name!("pseudo_huber", dtype, "pseudo_huber_bwd"),
            ),
            Loss::Hinge { .. } => {
                (kernel_name!("hinge", dtype, "hinge_fwd"), kernel_name!("hinge", dtype, "hinge_bwd"))
            }
        })
    }
    fn c(self) -> f32 {
        if let Loss::PseudoHuber { c } = self {
            c
        } else {
            0.0
        }
    }
    fn sign(self) -> f32 {
        if let Loss::Hinge { sign } = self {
            sign
        } else {
            0.0
        }
    }
}

fn target_ptr(
    op: &'static str,
    loss: Loss,
    pred: &CudaStorage,
    pv: Rows,
    target: Option<(&CudaStorage, Rows)>,
) -> Result<(*const std::ffi::c_void, usize)> {
    match (loss, target) {
        (Loss::Hinge { .. }, None) => Ok((std::ptr::null(), 0)),
        (Loss::Hinge { .. }, Some(_)) => Err(Error::op(op, "hinge takes no target")),
        (_, None) => Err(Error::op(op, "this loss needs a target")),
        (_, Some((t, tv))) => {
            if (tv.rows, tv.cols) != (pv.rows, pv.cols) {
                return Err(Error::ShapeMismatch { op, lhs: vec![pv.rows, pv.cols], rhs: vec![tv.rows, tv.cols] });
            }
            if t.dtype() != pred.dtype() {
                return Err(Error::op(op, format!("target is {}, prediction {}", t.dtype(), pred.dtype())));
            }
            tv.check(op, "target", t)?;
            Ok((t.in_ptr(tv.offset), tv.row_stride))
        }
    }
}

/// loss[r] = mean over columns of the elementwise loss (f32 [rows]).
pub fn loss_fwd(
    dev: &CudaDevice,
    loss: Loss,
    pred: &CudaStorage,
    pv: Rows,
    target: Option<(&CudaStorage, Rows)>,
    out: &mut CudaStorage,
) -> Result<()> {
    const OP: &str = "loss_fwd";
    pv.check(OP, "pred", pred)?;
    let (tptr, tstride) = target_ptr(OP, loss, pred, pv, target)?;
    out.check(OP, "loss", DType::F32, 0, pv.rows)?;
    let (name, _) = loss.names(pred.dtype())?;
    let p = sf_loss_fwd_params {
        pred: pred.in_ptr(pv.offset),
        target: tptr,
        loss: out.out_ptr(0) as *mut f32,
        rows: pv.rows as i64,
        cols: pv.cols as i64,
        pred_row_stride: pv.row_stride as i64,
        target_row_stride: tstride as i64,
        c: loss.c(),
        sign: loss.sign(),
    };
    // SAFETY: pred (and target) were span-checked as [rows, cols] views (target_ptr), loss holds
    // rows f32.
    unsafe { dev.launch(name, (dev.grid_for(pv.rows, 1), 1, 1), THREADS, 0, &p) }
}

/// dpred = dloss[r] / cols * dl/dp, dtarget = -dpred (both contiguous [rows, cols]).
#[allow(clippy::too_many_arguments)]
pub fn loss_bwd(
    dev: &CudaDevice,
    loss: Loss,
    pred: &CudaStorage,
    pv: Rows,
    target: Option<(&CudaStorage, Rows)>,
    dloss: &CudaStorage,
    dpred: Option<&mut CudaStorage>,
    dtarget: Option<&mut CudaStorage>,
) -> Result<()> {
    const OP: &str = "loss_bwd";
    let dt = pred.dtype();
    pv.check(OP, "pred", pred)?;
    let (tptr, tstride) = target_ptr(OP, loss, pred, pv, target)?;
    dloss.check(OP, "dloss", DType::F32, 0, pv.rows)?;
    let n = pv.rows * pv.cols;
    let dpred_ptr = match dpred {
        Some(d) => {
            d.check(OP, "dpred", dt, 0, n)?;
            d.out_ptr(0)
        }
        None => std::ptr::null_mut(),
    };
    let dtarget_ptr = match dtarget {
        Some(d) => {
            d.check(OP, "dtarget", dt, 0, n)?;
            d.out_ptr(0)
        }
        None => std::ptr::null_mut(),
    };
    let (_, name) = loss.names(dt)?;
    let p = sf_loss_bwd_params {
        pred: pred.in_ptr(pv.offset),
        target: tptr,
        dloss: dloss.in_ptr(0) as *const f32,
        dpred: dpred_ptr,
        dtarget: dtarget_ptr,
        rows: pv.rows as i64,
        cols: pv.cols as i64,
        pred_row_stride: pv.row_stride as i64,
        target_row_stride: tstride as i64,
        c: loss.c(),
        sign: loss.sign(),
    };
    // SAFETY: pred / target span-checked as in the forward; dloss holds rows f32; dpred and dtarget
    // (when given) hold rows * cols elements of pred's dtype.
    unsafe { dev.launch(name, (dev.grid_for(n, THREADS as usize), 1, 1), THREADS, 0, &p) }
}
