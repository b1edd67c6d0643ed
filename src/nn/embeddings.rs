//! Embedding modules shared by the diffusion transformers (diffusers
//! `embeddings.py`): timestep MLP, pooled-text projection, sin-cos position tables.

use super::{Linear, VarBuilder};
use crate::error::Result;
use crate::ops;
use crate::tensor::Tensor;

/// diffusers `TimestepEmbedding` (act_fn "silu"): linear_1 → SiLU → linear_2.
#[derive(Clone, Debug)]
pub struct TimestepEmbedding {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl TimestepEmbedding {
    pub fn new(vb: &VarBuilder, in_channels: usize, dim: usize) -> Result<Self> {
        Ok(TimestepEmbedding {
            linear_1: Linear::new(&vb.pp("linear_1"), in_channels, dim, true)?,
            linear_2: Linear::new(&vb.pp("linear_2"), dim, dim, true)?,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)
    }
}

/// diffusers `PixArtAlphaTextProjection` with act_fn "silu": linear_1 → SiLU → linear_2.
#[derive(Clone, Debug)]
pub struct TextProjection {
    pub linear_1: Linear,
    pub linear_2: Linear,
}

impl TextProjection {
    pub fn new(vb: &VarBuilder, in_features: usize, hidden: usize) -> Result<Self> {
        Ok(TextProjection {
            linear_1: Linear::new(&vb.pp("linear_1"), in_features, hidden, true)?,
            linear_2: Linear::new(&vb.pp("linear_2"), hidden, hidden, true)?,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.linear_2.forward(&self.linear_1.forward(x)?.silu()?)
    }
}

/// diffusers `Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0)` as used by
/// SD3 and FLUX: [B] → [B, 256].
pub fn sd3_time_proj(t: &Tensor) -> Result<Tensor> {
    ops::timestep_embedding(t, 256, true, 0.0, 1.0, 10000.0)
}

/// diffusers `get_1d_sincos_pos_embed_from_grid` (no flip): [M] positions → [M, dim],
/// first half sin, second half cos, frequencies 1/10000^(i/(dim/2)); computed in f64.
fn sincos_1d(dim: usize, pos: &[f64]) -> Vec<Vec<f64>> {
    let half = dim / 2;
    let omega: Vec<f64> = (0..half).map(|i| 1.0 / 10000f64.powf(i as f64 / half as f64)).collect();
    pos.iter()
        .map(|&p| {
            let mut row = Vec::with_capacity(dim);
            row.extend(omega.iter().map(|&w| (p * w).sin()));
            row.extend(omega.iter().map(|&w| (p * w).cos()));
            row
        })
        .collect()
}

/// Rows `top..top+rows` × columns `left..left+cols` of diffusers
/// `get_2d_sincos_pos_embed(dim, grid, base_size, interpolation_scale)` (a square
/// grid×grid table), as [rows·cols, dim] in row-major order — SD3's cropped position
/// embedding without building the full table. Each row is `[emb(col) | emb(row)]`:
/// diffusers' meshgrid puts the column coordinate in grid[0], embedded first.
#[allow(clippy::too_many_arguments)]
pub fn sincos_2d_pos_embed_crop(
    dim: usize,
    grid: usize,
    base_size: f64,
    interpolation_scale: f64,
    top: usize,
    left: usize,
    rows: usize,
    cols: usize,
) -> Vec<f32> {
    // diffusers builds the coordinate grid in float32: reproduce that rounding.
    let step = (grid as f64 / base_size) as f32;
    let coord = |i: usize| (i as f32 / step / interpolation_scale as f32) as f64;
    let col_emb = sincos_1d(dim / 2, &(left..left + cols).map(coord).collect::<Vec<_>>());
    let row_emb = sincos_1d(dim / 2, &(top..top + rows).map(coord).collect::<Vec<_>>());
    let mut out = Vec::with_capacity(rows * cols * dim);
    for r in &row_emb {
        for c in &col_emb {
            out.extend(c.iter().map(|&v| v as f32));
            out.extend(r.iter().map(|&v| v as f32));
        }
    }
    out
}
