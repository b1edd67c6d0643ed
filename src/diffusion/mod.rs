//! Flow-matching math in the SD3/FLUX (rectified flow) convention.
//!
//! - σ ∈ [0, 1] is the noise level (σ = 1: pure noise); x_σ = (1 − σ)·x0 + σ·ε.
//! - Models predict the velocity v = ε − x0, so x0 = x_σ − σ·v and ε = x_σ + (1 − σ)·v.
//! - One Euler step from σ_a to σ_b: x_b = x_a + (σ_b − σ_a)·v(x_a, σ_a).
//! - SD3 timesteps are 1000·σ; FLUX takes σ itself (and scales it inside the model).
//! - Schedules reproduce diffusers' `FlowMatchEulerDiscreteScheduler.set_timesteps`
//!   exactly, including its shifting of the already-shifted σ_min endpoint.

pub mod sample;

pub use sample::{euler_sample, stochastic_sample};

use crate::error::{Error, Result};
use crate::rng::Philox;
use crate::tensor::Tensor;

/// σ per batch element [B] → a shape that broadcasts against x [B, ...].
fn per_sample(sigma: &Tensor, x: &Tensor) -> Result<Tensor> {
    if sigma.dims() != 1 || x.dims() == 0 || sigma.shape()[0] != x.shape()[0] {
        return Err(Error::ShapeMismatch {
            op: "flow-matching σ",
            lhs: sigma.shape().to_vec(),
            rhs: x.shape().to_vec(),
        });
    }
    let mut s = vec![1; x.dims()];
    s[0] = x.shape()[0];
    sigma.reshape(&s)
}

/// x_σ = (1 − σ)·x0 + σ·ε with σ [B].
pub fn add_noise(x0: &Tensor, eps: &Tensor, sigma: &Tensor) -> Result<Tensor> {
    let s = per_sample(sigma, x0)?;
    let keep = s.affine(-1.0, 1.0)?;
    x0.mul(&keep)?.add(&eps.mul(&s)?)
}

/// The flow-matching regression target v = ε − x0.
pub fn velocity_target(x0: &Tensor, eps: &Tensor) -> Result<Tensor> {
    eps.sub(x0)
}

/// x0 = x_σ − σ·v.
pub fn x0_from_v(x: &Tensor, v: &Tensor, sigma: &Tensor) -> Result<Tensor> {
    x.sub(&v.mul(&per_sample(sigma, x)?)?)
}

/// ε = x_σ + (1 − σ)·v.
pub fn eps_from_v(x: &Tensor, v: &Tensor, sigma: &Tensor) -> Result<Tensor> {
    x.add(&v.mul(&per_sample(sigma, x)?.affine(-1.0, 1.0)?)?)
}

/// v = (x_σ − x0)/σ: the velocity that maps x_σ to a given x0 (σ > 0).
pub fn v_from_x0(x: &Tensor, x0: &Tensor, sigma: &Tensor) -> Result<Tensor> {
    x.sub(x0)?.div(&per_sample(sigma, x)?)
}

/// Classifier-free guidance: v_u + w·(v_c − v_u).
pub fn cfg_combine(v_uncond: &Tensor, v_cond: &Tensor, w: f32) -> Result<Tensor> {
    v_uncond.add(&v_cond.sub(v_uncond)?.scale(w)?)
}

/// SD3 time shift σ' = sσ / (1 + (s − 1)σ).
pub fn shift_sigma(sigma: f64, shift: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// FLUX's resolution-dependent μ (diffusers `calculate_shift`): linear in the image
/// token count between (256, 0.5) and (4096, 1.15).
pub fn flux_mu(image_seq_len: usize) -> f64 {
    let (base_seq, max_seq, base_shift, max_shift) = (256.0, 4096.0, 0.5, 1.15);
    let m = (max_shift - base_shift) / (max_seq - base_seq);
    image_seq_len as f64 * m + (base_shift - m * base_seq)
}

/// FLUX's exponential time shift e^μ / (e^μ + (1/σ − 1)) — the SD3 shift with s = e^μ.
pub fn flux_shift_sigma(sigma: f64, mu: f64) -> f64 {
    let e = mu.exp();
    e / (e + (1.0 / sigma - 1.0))
}

/// How inference σ lists are shifted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Shift {
    /// SD3/SD3.5: constant shift s (3.0 for the published models).
    Sd3(f64),
    /// FLUX: dynamic shift with μ from the image token count.
    Flux { mu: f64 },
}

/// The σ list (with the trailing 0) that diffusers' FlowMatchEulerDiscreteScheduler
/// uses for `steps` inference steps: SD3 as `set_timesteps(steps)`, FLUX as the FLUX
/// pipeline calls it (`sigmas = linspace(1, 1/steps, steps)`, dynamic μ).
pub fn inference_sigmas(steps: usize, shift: Shift) -> Vec<f32> {
    let steps = steps.max(1);
    let linspace = |a: f64, b: f64| -> Vec<f64> {
        if steps == 1 {
            return vec![a];
        }
        (0..steps).map(|i| a + (b - a) * i as f64 / (steps - 1) as f64).collect()
    };
    let mut out: Vec<f32> = match shift {
        Shift::Sd3(s) => {
            // The scheduler's σ_min is the shifted last training σ (t = 1/1000), and the
            // linspace between the shifted endpoints is shifted once more.
            // diffusers keeps σ_min as f32 and does the rest in f64.
            let sigma_min = shift_sigma(1.0 / 1000.0, s) as f32 as f64;
            linspace(1.0, sigma_min).into_iter().map(|v| shift_sigma(v, s) as f32).collect()
        }
        Shift::Flux { mu } => {
            // The FLUX pipeline's σ arrive as f32 and numpy shifts them in f32.
            let e = mu.exp() as f32;
            linspace(1.0, 1.0 / steps as f64).into_iter().map(|v| e / (e + (1.0 / v as f32 - 1.0))).collect()
        }
    };
    out.push(0.0);
    out
}

/// Distributions of training σ.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum SigmaSampler {
    /// U(lo, hi).
    Uniform { lo: f32, hi: f32 },
    /// sigmoid(N(mean, std²)) (SD3's logit-normal, mean 0, std 1).
    LogitNormal { mean: f32, std: f32 },
}

impl SigmaSampler {
    pub fn sample(&self, n: usize, rng: &mut Philox) -> Vec<f32> {
        match *self {
            SigmaSampler::Uniform { lo, hi } => rng.uniform_vec(n).into_iter().map(|u| lo + (hi - lo) * u).collect(),
            SigmaSampler::LogitNormal { mean, std } => rng.logit_normal_vec(n, mean, std),
        }
    }
}
