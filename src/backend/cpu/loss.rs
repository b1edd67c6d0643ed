//! Scalar losses: one fused pass for the value (summed in f64, so the mean of millions
//! of terms stays exact to f32 rounding) and one for the gradient. Gradients are the
//! derivative of the *mean*, already scaled by `g / n` where `g` is the upstream scalar.

use super::unary::{map, map2};
use super::PAR_THRESHOLD;
use rayon::prelude::*;

/// Chunk length for parallel partial sums.
const CHUNK: usize = 1 << 14;

fn sum1(x: &[f32], f: impl Fn(f32) -> f64 + Sync + Send) -> f64 {
    let part = |c: &[f32]| c.iter().map(|&v| f(v)).sum::<f64>();
    if x.len() >= PAR_THRESHOLD {
        x.par_chunks(CHUNK).map(part).sum()
    } else {
        part(x)
    }
}

fn sum2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f64 + Sync + Send) -> f64 {
    debug_assert_eq!(a.len(), b.len());
    let part = |(ca, cb): (&[f32], &[f32])| ca.iter().zip(cb).map(|(&x, &y)| f(x, y)).sum::<f64>();
    if a.len() >= PAR_THRESHOLD {
        a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)).map(part).sum()
    } else {
        part((a, b))
    }
}

/// Σ (a − b)².
pub fn mse_sum(a: &[f32], b: &[f32]) -> f64 {
    sum2(a, b, |x, y| {
        let d = x as f64 - y as f64;
        d * d
    })
}

/// d/da of mean((a − b)²) times `scale` = g/n: 2·(a − b)·scale (d/db is its negation).
pub fn mse_grad(a: &[f32], b: &[f32], scale: f32) -> Vec<f32> {
    map2(a, b, |x, y| 2.0 * (x - y) * scale)
}

/// Σ sqrt(d² + c²) − c with d = a − b, evaluated as d² / (sqrt(d² + c²) + c): the same
/// value without the cancellation of the direct form (which in f32 keeps no correct
/// digit once |d| < 3e-4·c).
pub fn pseudo_huber_sum(a: &[f32], b: &[f32], c: f32) -> f64 {
    let c = c as f64;
    sum2(a, b, |x, y| {
        let d = x as f64 - y as f64;
        d * d / ((d * d + c * c).sqrt() + c)
    })
}

/// d/da of the mean pseudo-Huber loss times `scale`: d / sqrt(d² + c²) · scale.
pub fn pseudo_huber_grad(a: &[f32], b: &[f32], c: f32, scale: f32) -> Vec<f32> {
    map2(a, b, |x, y| {
        let d = x - y;
        d / (d * d + c * c).sqrt() * scale
    })
}

/// Σ relu(1 + sign·x): sign −1 is the hinge on real logits, +1 on fake ones.
pub fn hinge_sum(x: &[f32], sign: f32) -> f64 {
    sum1(x, |v| (1.0 + sign as f64 * v as f64).max(0.0))
}

/// d/dx of mean(relu(1 + sign·x)) times `scale`: sign·scale where the hinge is active
/// (the kink itself gets 0, like torch's relu).
pub fn hinge_grad(x: &[f32], sign: f32, scale: f32) -> Vec<f32> {
    map(x, |v| if 1.0 + sign * v > 0.0 { sign * scale } else { 0.0 })
}

/// Σ x.
pub fn sum(x: &[f32]) -> f64 {
    sum1(x, |v| v as f64)
}
