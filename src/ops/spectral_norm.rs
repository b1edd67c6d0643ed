//! Spectral normalization of a weight, as `torch.nn.utils.spectral_norm` computes it in
//! training mode (the discriminator heads' convolutions).
//!
//! Conventions:
//! - The weight [out, ...] is read as the matrix W [out, rest] (torch's `dim=0`).
//! - The persistent left singular vector estimate `u` [out] belongs to the caller
//!   (a buffer saved with the module, torch's `weight_u`); each call runs the power
//!   iteration without gradient and updates it in place.
//! - σ = uᵀ W v with u, v treated as constants, so the gradient reaches W through both
//!   the numerator and σ: d(W/σ) = dW/σ − W·(u ᵀdW v)/σ².

use super::{cpu_out, same_device};
use crate::autograd::{record, Backward};
use crate::backend::cpu::spectral_norm as k;
use crate::error::{Error, Result};
use crate::rng::Philox;
use crate::tensor::Tensor;

/// torch's default `eps` of `spectral_norm` (clamps the norm in `F.normalize`).
pub const SPECTRAL_NORM_EPS: f32 = 1e-12;

/// Returns W / σ(W) for `w` [out, ...] and updates `u` [out] in place.
///
/// Under no gradient, `n_iters` times: v = normalize(Wᵀu), u = normalize(W v), where
/// normalize(x) = x / max(‖x‖₂, eps) (torch `F.normalize`); then σ = uᵀ W v. Exactly
/// torch's `SpectralNorm.compute_weight(do_power_iteration=True)`. `n_iters` must be
/// at least 1: torch's zero-iteration (eval) path reuses a persistent `v` that this API
/// does not keep. Pass a copy of `u` to evaluate without moving the estimate (as the
/// gradient checks do).
pub fn spectral_norm_power_iteration(w: &Tensor, u: &mut [f32], n_iters: usize, eps: f32) -> Result<Tensor> {
    same_device("spectral_norm", &[w])?;
    if w.dims() == 0 || w.numel() == 0 {
        return Err(Error::op("spectral_norm", format!("needs a non-empty weight [out, ...], got {:?}", w.shape())));
    }
    let rows = w.shape()[0];
    let cols = w.numel() / rows;
    if u.len() != rows {
        return Err(Error::ShapeMismatch { op: "spectral_norm u", lhs: vec![u.len()], rhs: vec![rows] });
    }
    if n_iters == 0 {
        return Err(Error::op("spectral_norm", "n_iters must be at least 1 (the eval path needs a stored v)"));
    }
    let wv = w.cpu_f32()?;
    let mut v = Vec::new();
    for _ in 0..n_iters {
        v = k::normalize(&k::mtv(&wv, cols, u), eps);
        u.copy_from_slice(&k::normalize(&k::mv(&wv, cols, &v), eps));
    }
    let sigma: f64 = k::mv(&wv, cols, &v).iter().zip(u.iter()).map(|(wv, &ui)| wv * ui as f64).sum();
    let out = cpu_out(k::scale_by_inverse(&wv, sigma), w.shape(), w.dtype());
    drop(wv);
    Ok(record(out, &[w], || SpectralNormBackward { w: w.detach(), u: u.to_vec(), v, sigma }))
}

struct SpectralNormBackward {
    w: Tensor,
    u: Vec<f32>, // [out]
    v: Vec<f32>, // [rest]
    sigma: f64,
}

impl Backward for SpectralNormBackward {
    fn name(&self) -> &'static str {
        "spectral_norm"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let dw = k::backward(&self.w.cpu_f32()?, &g.cpu_f32()?, &self.u, &self.v, self.sigma);
        Ok(vec![Some(cpu_out(dw, self.w.shape(), self.w.dtype()))])
    }
}

/// The initial `u` [out]: standard normal samples from `rng`, normalized with `eps`
/// (torch draws `normal_(0, 1)` and normalizes the same way; the stream differs).
pub fn spectral_norm_init_u(out: usize, rng: &mut Philox, eps: f32) -> Vec<f32> {
    let z: Vec<f64> = rng.normal_vec(out).into_iter().map(f64::from).collect();
    k::normalize(&z, eps)
}
