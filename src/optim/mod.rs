//! Optimization: AdamW with fp32 state and master weights, global gradient-norm
//! clipping, the warm-up-then-constant learning-rate schedule, and EMA of weights.
//!
//! Conventions: parameters are the tracked leaves the model computes with (gradients
//! are found by tensor id in `Grads`); in-place updates write through
//! `Tensor::assign_f32`, so every view sharing the storage sees them. Gradients are
//! never written through: the tape may hand the same storage to several leaves.

mod adamw;

pub use adamw::{AdamW, AdamWConfig, AdamWState, ParamGroup};

use crate::autograd::Grads;
use crate::backend::cpu::{optim as k, unary};
use crate::error::{Error, Result};
use crate::tensor::Tensor;
use std::collections::HashSet;

/// torch `nn.utils.clip_grad_norm_(params, max_norm)` (L2, `error_if_nonfinite=False`):
/// the global norm N = sqrt(Σ over the params' gradients of Σ g²) (params without a
/// gradient are left out); when max_norm / (N + 1e-6) < 1 every such gradient is
/// replaced in `grads` by a fresh tensor scaled by that factor. Returns N, the norm
/// before clipping (0 when no param has a gradient; NaN/inf propagate as in torch).
pub fn clip_grad_norm(grads: &mut Grads, params: &[Tensor], max_norm: f32) -> Result<f32> {
    let mut seen = HashSet::new();
    let mut present: Vec<&Tensor> = Vec::new();
    let mut total = 0f64;
    for p in params {
        // A parameter listed twice counts (and is scaled) once.
        if !seen.insert(p.id()) {
            continue;
        }
        if let Some(g) = grads.get(p) {
            total += k::sum_sq(&g.cpu_f32()?);
            present.push(p);
        }
    }
    let norm = total.sqrt();
    let coef = max_norm as f64 / (norm + 1e-6);
    // `coef < 1` is false for NaN: torch then multiplies by NaN; do the same.
    if coef < 1.0 || coef.is_nan() {
        let c = coef as f32;
        for p in present {
            let g = grads.get(p).expect("collected above");
            let scaled = unary::map(&g.cpu_f32()?, |v| v * c);
            let t = Tensor::from_f32(scaled, g.shape(), g.dtype())?;
            grads.insert(p, t);
        }
    }
    Ok(norm as f32)
}

/// Linear warm-up then constant, diffusers `get_constant_schedule_with_warmup`:
/// lr·step/warmup for step < warmup, then lr. `step` counts the optimizer steps
/// already taken, so the first update (step 0) runs at lr 0 exactly as in the
/// diffusers training scripts, which step the scheduler after the optimizer.
pub fn lr_warmup_constant(step: u64, warmup: u64, lr: f64) -> f64 {
    if step < warmup {
        lr * step as f64 / warmup as f64
    } else {
        lr
    }
}

/// Exponential moving average of weights, in place: e ← e − (1 − decay)·(e − p)
/// (diffusers `EMAModel.step` with a fixed decay; 1 − decay is formed in f64, since
/// 1 − f32(0.9999) is off by 1.7e-4). Keep EMA weights in f32: their per-step change
/// (1 − decay)·(e − p) is far below a bf16 ulp.
pub fn ema_update(ema_params: &[Tensor], params: &[Tensor], decay: f64) -> Result<()> {
    if ema_params.len() != params.len() {
        return Err(Error::op(
            "ema_update",
            format!("{} EMA tensors for {} parameters", ema_params.len(), params.len()),
        ));
    }
    if !(0.0..=1.0).contains(&decay) {
        return Err(Error::op("ema_update", format!("decay {decay} outside [0, 1]")));
    }
    for (e, p) in ema_params.iter().zip(params) {
        if e.shape() != p.shape() {
            return Err(Error::ShapeMismatch { op: "ema_update", lhs: e.shape().to_vec(), rhs: p.shape().to_vec() });
        }
        let mut ev = e.to_vec_f32()?;
        k::ema_update(&mut ev, &p.cpu_f32()?, (1.0 - decay) as f32);
        e.assign_f32(&ev)?;
    }
    Ok(())
}
