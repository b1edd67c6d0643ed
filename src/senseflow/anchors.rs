//! The generator's coarse steps (anchors), the intermediate σ of ISG, and the
//! adversarial time weight w(τ).
//!
//! Anchors are indices on the 1000-step training grid of the teacher's scheduler:
//! index i has unshifted time t = (i + 1)/1000 and σ = shift(t) (SD3: s·t/(1+(s−1)t);
//! FLUX: the exponential shift with μ). SD3.5's published anchors {999, 749, 499, 249}
//! give σ ≈ {1.0, 0.9, 0.75, 0.5} at s = 3; after the last anchor comes σ = 0.

use crate::diffusion::{flux_shift_sigma, shift_sigma, Shift};
use crate::error::{Error, Result};
use crate::rng::Philox;

/// Weighting of the GAN terms by anchor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdvWeight {
    /// What the published code computes: SD3 w = σ_shift(1 − i/1000)² (≈ {1e-5, 0.25,
    /// 0.56, 0.81} for SD3.5's anchors), FLUX w = (1 − σ)². ≈0 at pure noise, largest at
    /// the cleanest anchor.
    Published,
    /// The paper's text: w = σ_τ².
    SigmaSq,
    /// No weighting.
    One,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Anchors {
    /// Descending grid indices, e.g. [999, 749, 499, 249].
    pub indices: Vec<usize>,
    pub shift: Shift,
}

impl Anchors {
    pub fn new(indices: Vec<usize>, shift: Shift) -> Result<Self> {
        if indices.is_empty() || indices.windows(2).any(|w| w[1] >= w[0]) || indices[0] > 999 {
            return Err(Error::Msg(format!("anchors must be strictly decreasing indices in 0..=999, got {indices:?}")));
        }
        Ok(Anchors { indices, shift })
    }

    pub fn len(&self) -> usize {
        self.indices.len()
    }

    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// σ of grid index `idx`.
    pub fn sigma_at(&self, idx: usize) -> f32 {
        let t = (idx + 1) as f64 / 1000.0;
        (match self.shift {
            Shift::Sd3(s) => shift_sigma(t, s),
            Shift::Flux { mu } => flux_shift_sigma(t, mu),
        }) as f32
    }

    /// σ of anchor `i`.
    pub fn sigma(&self, i: usize) -> f32 {
        self.sigma_at(self.indices[i])
    }

    /// σ of the anchor after `i` (0 after the last).
    pub fn next_sigma(&self, i: usize) -> f32 {
        self.indices.get(i + 1).map_or(0.0, |&j| self.sigma_at(j))
    }

    /// All anchor σ followed by 0: the few-step sampling schedule.
    pub fn schedule(&self) -> Vec<f32> {
        let mut s: Vec<f32> = (0..self.len()).map(|i| self.sigma(i)).collect();
        s.push(0.0);
        s
    }

    /// ISG's intermediate σ for anchor `i`: a grid index drawn uniformly between the
    /// anchor's and the next one's, `margin` indices away from both (published: 50 for
    /// SD3.5, 20 for FLUX/SDXL); σ = 0 stands at index −1 after the last anchor.
    pub fn sample_mid_sigma(&self, i: usize, margin: usize, rng: &mut Philox) -> Result<f32> {
        let hi = self.indices[i] as i64 - margin as i64;
        let lo = self.indices.get(i + 1).map_or(-1, |&j| j as i64) + margin as i64;
        if lo > hi {
            return Err(Error::Msg(format!(
                "ISG margin {margin} leaves no grid index between anchors {} and {}",
                self.indices[i],
                self.indices.get(i + 1).map_or(-1, |&j| j as i64)
            )));
        }
        let u = rng.next_u32s(1)[0] as u64;
        let idx = lo + (u % (hi - lo + 1) as u64) as i64;
        Ok(if idx < 0 { 0.0 } else { self.sigma_at(idx as usize) })
    }

    /// w(τ) of anchor `i`.
    pub fn adv_weight(&self, i: usize, mode: AdvWeight) -> f32 {
        let sigma = self.sigma(i) as f64;
        (match mode {
            AdvWeight::One => 1.0,
            AdvWeight::SigmaSq => sigma * sigma,
            AdvWeight::Published => match self.shift {
                Shift::Sd3(s) => shift_sigma(1.0 - self.indices[i] as f64 / 1000.0, s).powi(2),
                Shift::Flux { .. } => (1.0 - sigma).powi(2),
            },
        }) as f32
    }
}
