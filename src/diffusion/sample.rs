//! Samplers on an arbitrary σ list (descending, ending at 0). The model is a closure
//! `velocity(x, σ) -> v` so guidance (CFG or embedded) and conditioning stay with the
//! caller; everything runs under no-grad.

use super::{add_noise, x0_from_v};
use crate::error::{Error, Result};
use crate::rng::Philox;
use crate::tensor::Tensor;

fn check_sigmas(sigmas: &[f32]) -> Result<()> {
    if sigmas.len() < 2 || sigmas.windows(2).any(|w| w[1] >= w[0]) {
        return Err(Error::Msg(format!("σ list must be strictly decreasing with at least 2 entries, got {sigmas:?}")));
    }
    Ok(())
}

fn batch_sigma(x: &Tensor, s: f32) -> Tensor {
    Tensor::full(s, &[x.shape()[0]])
}

/// Deterministic Euler: x ← x + (σ_{i+1} − σ_i)·v(x, σ_i) along the list (teacher
/// sampling, and the few-step "Euler" mode of a distilled generator).
pub fn euler_sample(
    velocity: &mut dyn FnMut(&Tensor, f32) -> Result<Tensor>,
    x: Tensor,
    sigmas: &[f32],
) -> Result<Tensor> {
    check_sigmas(sigmas)?;
    let _g = crate::autograd::no_grad();
    let mut x = x;
    for w in sigmas.windows(2) {
        let v = velocity(&x, w[0])?;
        x = x.add(&v.scale(w[1] - w[0])?)?;
    }
    Ok(x)
}

/// The few-step generator's stochastic sampler: at each σ predict x0, then re-noise it
/// with fresh ε to the next σ; the last step returns the x0 prediction.
pub fn stochastic_sample(
    velocity: &mut dyn FnMut(&Tensor, f32) -> Result<Tensor>,
    x: Tensor,
    sigmas: &[f32],
    rng: &mut Philox,
) -> Result<Tensor> {
    check_sigmas(sigmas)?;
    let _g = crate::autograd::no_grad();
    let mut x = x;
    for w in sigmas.windows(2) {
        let v = velocity(&x, w[0])?;
        let x0 = x0_from_v(&x, &v, &batch_sigma(&x, w[0]))?;
        if w[1] <= 0.0 {
            return Ok(x0);
        }
        let eps = Tensor::randn(x.shape(), rng);
        x = add_noise(&x0, &eps, &batch_sigma(&x, w[1]))?;
    }
    Ok(x)
}
