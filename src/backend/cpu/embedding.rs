//! Table lookups and sinusoidal timestep embeddings.
//!
//! Conventions: tables are [V, D] row-major; ids are already validated (< V) by the
//! op layer. Sinusoids are evaluated in f64 and rounded once, so large timesteps
//! (t ≈ 1000) keep full f32 accuracy.

use super::PAR_THRESHOLD;
use rayon::prelude::*;

/// out[i] = table[ids[i]] for rows of width d.
pub fn gather_rows(ids: &[usize], table: &[f32], d: usize) -> Vec<f32> {
    let mut out = vec![0f32; ids.len() * d];
    if d == 0 {
        return out;
    }
    let copy = |(o, &id): (&mut [f32], &usize)| o.copy_from_slice(&table[id * d..(id + 1) * d]);
    if out.len() >= PAR_THRESHOLD {
        out.par_chunks_mut(d).zip(ids.par_iter()).for_each(copy);
    } else {
        out.chunks_mut(d).zip(ids).for_each(copy);
    }
    out
}

/// The table gradient: grad[v] = Σ_{i: ids[i] = v} g[i] for a [v_rows, d] table.
/// Sequential: repeated ids make rows collide, and the work is O(ids·d).
pub fn scatter_add_rows(ids: &[usize], g: &[f32], v_rows: usize, d: usize) -> Vec<f32> {
    let mut grad = vec![0f32; v_rows * d];
    if d == 0 {
        return grad;
    }
    for (gr, &id) in g.chunks_exact(d).zip(ids) {
        grad[id * d..(id + 1) * d].iter_mut().zip(gr).for_each(|(a, &b)| *a += b);
    }
    grad
}

/// The sinusoid parameters of diffusers `get_timestep_embedding`.
#[derive(Clone, Copy, Debug)]
pub struct TimestepParams {
    pub dim: usize,
    pub flip_sin_to_cos: bool,
    pub downscale_freq_shift: f64,
    pub scale: f64,
    pub max_period: f64,
}

impl TimestepParams {
    /// freq_k = exp(−ln(max_period)·k / (dim/2 − shift)), k < dim/2.
    fn freqs(&self) -> Vec<f64> {
        let half = self.dim / 2;
        (0..half)
            .map(|k| (-self.max_period.ln() * k as f64 / (half as f64 - self.downscale_freq_shift)).exp())
            .collect()
    }

    /// The frequencies as diffusers evaluates them, in float32: exponent
    /// f32(−ln max_period)·k / f32(half − shift), then exp (correctly rounded here).
    fn freqs_f32(&self) -> Vec<f32> {
        let half = self.dim / 2;
        let neg_log = -self.max_period.ln() as f32;
        let denom = (half as f64 - self.downscale_freq_shift) as f32;
        (0..half).map(|k| ((neg_log * k as f32 / denom) as f64).exp() as f32).collect()
    }

    /// Columns of sin and cos of frequency k (the flip swaps the two halves).
    fn cols(&self, k: usize) -> (usize, usize) {
        let half = self.dim / 2;
        if self.flip_sin_to_cos {
            (half + k, k)
        } else {
            (k, half + k)
        }
    }
}

/// [B, dim]: sin(scale·t·freq_k) and cos(scale·t·freq_k) in two halves, a zero column
/// last when dim is odd.
///
/// The argument a = scale·t·freq_k is formed in float32 exactly as diffusers does
/// (its sinusoid is a float32 island even in a float64 model): at t·1000-scale
/// arguments one f32 rounding of a moves sin/cos by ~|a|·2⁻²⁴, which is visible at the
/// 1e-4 model-parity budget. sin/cos of that argument are correctly rounded.
pub fn timestep_fwd(t: &[f32], p: &TimestepParams) -> Vec<f32> {
    let freqs = p.freqs_f32();
    let scale = p.scale as f32;
    let mut out = vec![0f32; t.len() * p.dim];
    for (row, &tb) in out.chunks_exact_mut(p.dim.max(1)).zip(t) {
        for (k, &f) in freqs.iter().enumerate() {
            let (s, c) = ((scale * (tb * f)) as f64).sin_cos();
            let (cs, cc) = p.cols(k);
            row[cs] = s as f32;
            row[cc] = c as f32;
        }
    }
    out
}

/// dL/dt[b] = Σ_k g[b, sin_k]·scale·freq_k·cos(·) − g[b, cos_k]·scale·freq_k·sin(·).
pub fn timestep_bwd(t: &[f32], g: &[f32], p: &TimestepParams) -> Vec<f32> {
    let freqs = p.freqs();
    t.iter()
        .zip(g.chunks_exact(p.dim.max(1)))
        .map(|(&tb, gr)| {
            let mut acc = 0f64;
            for (k, &f) in freqs.iter().enumerate() {
                let w = p.scale * f;
                let (s, c) = (w * tb as f64).sin_cos();
                let (cs, cc) = p.cols(k);
                acc += w * (gr[cs] as f64 * c - gr[cc] as f64 * s);
            }
            acc as f32
        })
        .collect()
}
