//! Optimizer kernels: the fused AdamW update (one pass reads g, m, v, p and writes
//! m, v, p), the EMA blend and the squared-norm reduction for gradient clipping.
//! Long buffers are split into fixed chunks processed in parallel; every element's
//! arithmetic is independent of the split, so results do not depend on the thread count
//! (the squared norm excepted: its f64 partial sums are added in chunk order).

use super::PAR_THRESHOLD;
use rayon::prelude::*;

/// Elements per parallel task.
const CHUNK: usize = 1 << 14;

/// Per-step scalars of one AdamW update, computed once per parameter in f64 (torch
/// computes them in Python floats) and applied in f32. 1 − β is passed separately
/// because forming it from an f32 β loses digits (1 − f32(0.999) is off by 1.3e-5).
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    /// 1 − lr·weight_decay (decoupled decay, applied before the Adam update).
    pub decay: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    /// lr / (1 − β₁^t).
    pub step_size: f32,
    /// sqrt(1 − β₂^t).
    pub bias_correction2_sqrt: f32,
    pub eps: f32,
}

/// torch.optim.AdamW (single-tensor path, no amsgrad) on one buffer, in place:
/// p ← p·(1 − lr·wd); m ← m + (1 − β₁)(g − m); v ← β₂v + (1 − β₂)g²;
/// p ← p − step_size · m / (sqrt(v)/sqrt(1 − β₂^t) + eps).
pub fn adamw_update(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: AdamWStep) {
    debug_assert!(p.len() == m.len() && m.len() == v.len() && v.len() == g.len());
    if p.len() >= PAR_THRESHOLD {
        p.par_chunks_mut(CHUNK)
            .zip(m.par_chunks_mut(CHUNK))
            .zip(v.par_chunks_mut(CHUNK))
            .zip(g.par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| adamw_chunk(p, m, v, g, s));
    } else {
        adamw_chunk(p, m, v, g, s);
    }
}

/// The fused update of [`adamw_update`] on one chunk.
fn adamw_chunk(p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], s: AdamWStep) {
    for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
        let mi = *m + s.one_minus_beta1 * (g - *m);
        let vi = s.beta2 * *v + s.one_minus_beta2 * g * g;
        let denom = vi.sqrt() / s.bias_correction2_sqrt + s.eps;
        *p = *p * s.decay - s.step_size * (mi / denom);
        *m = mi;
        *v = vi;
    }
}

/// EMA blend in place: e ← e − (1 − decay)·(e − p) (diffusers `EMAModel.step`), with
/// `one_minus_decay` formed in f64 by the caller.
pub fn ema_update(e: &mut [f32], p: &[f32], one_minus_decay: f32) {
    debug_assert_eq!(e.len(), p.len());
    let run = |(e, p): (&mut [f32], &[f32])| {
        for (e, &p) in e.iter_mut().zip(p) {
            *e -= one_minus_decay * (*e - p);
        }
    };
    if e.len() >= PAR_THRESHOLD {
        e.par_chunks_mut(CHUNK).zip(p.par_chunks(CHUNK)).for_each(run);
    } else {
        run((e, p));
    }
}

/// Σ x² in f64.
pub fn sum_sq(x: &[f32]) -> f64 {
    let part = |c: &[f32]| c.iter().map(|&v| v as f64 * v as f64).sum::<f64>();
    if x.len() >= PAR_THRESHOLD {
        x.par_chunks(CHUNK).map(part).collect::<Vec<_>>().into_iter().sum()
    } else {
        part(x)
    }
}
