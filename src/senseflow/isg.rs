//! Intra-segment guidance. For anchor τ with next anchor σ_prev and an intermediate
//! σ_mid, without gradient:
//!   x_mid = x_τ + (σ_mid − τ)·v_teacher(x_τ, τ)          (teacher Euler step, guided)
//!   x_tar = x_mid + (σ_prev − σ_mid)·v_G(x_mid, σ_mid)   (generator Euler step)
//! and the prediction is the generator's direct step x_pred = x_τ + (σ_prev − τ)·v_G(x_τ, τ)
//! (with gradient). L_ISG = mean(√((x_pred − x_tar)² + c²) − c) (pseudo-Huber; the paper
//! writes MSE, the published code uses c = 0.001).

use crate::error::Result;
use crate::ops;
use crate::tensor::Tensor;

/// One Euler step of the flow ODE from σ `from` to σ `to`.
pub fn euler_step(x: &Tensor, v: &Tensor, from: f32, to: f32) -> Result<Tensor> {
    x.add(&v.scale(to - from)?)
}

/// L_ISG between the generator's direct step and the (constant) two-step target.
pub fn isg_loss(x_pred: &Tensor, x_target: &Tensor, c: f32) -> Result<Tensor> {
    ops::pseudo_huber_loss(x_pred, &x_target.detach(), c)
}
