//! Normalization modules (diffusers `normalization.py` and torch.nn norms), and the
//! adaptive layer norms of the diffusion transformers. Chunk orders follow diffusers:
//! AdaLayerNormZero: (shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp);
//! SD35AdaLayerNormZeroX adds (shift_msa2, scale_msa2, gate_msa2);
//! AdaLayerNormContinuous: (scale, shift) — note the reversed order.

use super::{Init, Linear, VarBuilder};
use crate::error::Result;
use crate::ops;
use crate::tensor::Tensor;

/// diffusers `RMSNorm(dim, eps, elementwise_affine)` over the last axis.
#[derive(Clone, Debug)]
pub struct RmsNorm {
    pub weight: Option<Tensor>,
    pub eps: f32,
}

impl RmsNorm {
    pub fn new(vb: &VarBuilder, dim: usize, eps: f32, affine: bool) -> Result<Self> {
        let weight = if affine { Some(vb.get("weight", &[dim], Init::Ones)?) } else { None };
        Ok(RmsNorm { weight, eps })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::rms_norm(x, self.weight.as_ref(), self.eps)
    }
}

/// torch `nn.LayerNorm(dim, eps, elementwise_affine)` over the last axis.
#[derive(Clone, Debug)]
pub struct LayerNorm {
    pub weight: Option<Tensor>,
    pub bias: Option<Tensor>,
    pub eps: f32,
}

impl LayerNorm {
    pub fn new(vb: &VarBuilder, dim: usize, eps: f32, affine: bool) -> Result<Self> {
        let (weight, bias) = if affine {
            (Some(vb.get("weight", &[dim], Init::Ones)?), Some(vb.get("bias", &[dim], Init::Zeros)?))
        } else {
            (None, None)
        };
        Ok(LayerNorm { weight, bias, eps })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::layer_norm(x, self.weight.as_ref(), self.bias.as_ref(), self.eps)
    }
}

/// Conditioning → n chunks of [B, dim] through SiLU → Linear (the adaLN projections).
#[derive(Clone, Debug)]
pub struct AdaProjection {
    pub linear: Linear,
    pub chunks: usize,
}

impl AdaProjection {
    pub fn new(vb: &VarBuilder, cond_dim: usize, dim: usize, chunks: usize) -> Result<Self> {
        Ok(AdaProjection { linear: Linear::new(&vb.pp("linear"), cond_dim, chunks * dim, true)?, chunks })
    }
    pub fn forward(&self, emb: &Tensor) -> Result<Vec<Tensor>> {
        ops::chunk(&self.linear.forward(&emb.silu()?)?, self.chunks, 1)
    }
}

/// diffusers `AdaLayerNormZero(dim)`: LayerNorm(eps 1e-6, no affine) modulated by
/// (shift_msa, scale_msa); returns the normed input and the other four chunks.
pub struct AdaZeroOut {
    pub x: Tensor,
    pub gate_msa: Tensor,
    pub shift_mlp: Tensor,
    pub scale_mlp: Tensor,
    pub gate_mlp: Tensor,
    /// SD35AdaLayerNormZeroX only: the second attention's input and gate.
    pub x2: Option<Tensor>,
    pub gate_msa2: Option<Tensor>,
}

#[derive(Clone, Debug)]
pub struct AdaLayerNormZero {
    pub proj: AdaProjection,
    /// 9 chunks (SD35AdaLayerNormZeroX) instead of 6.
    pub dual: bool,
}

impl AdaLayerNormZero {
    pub fn new(vb: &VarBuilder, dim: usize, dual: bool) -> Result<Self> {
        Ok(AdaLayerNormZero { proj: AdaProjection::new(vb, dim, dim, if dual { 9 } else { 6 })?, dual })
    }
    pub fn forward(&self, x: &Tensor, emb: &Tensor) -> Result<AdaZeroOut> {
        let c = self.proj.forward(emb)?;
        let (x2, gate_msa2) = if self.dual {
            (Some(ops::layer_norm_modulate(x, &c[6], &c[7], 1e-6)?), Some(c[8].clone()))
        } else {
            (None, None)
        };
        Ok(AdaZeroOut {
            x: ops::layer_norm_modulate(x, &c[0], &c[1], 1e-6)?,
            gate_msa: c[2].clone(),
            shift_mlp: c[3].clone(),
            scale_mlp: c[4].clone(),
            gate_mlp: c[5].clone(),
            x2,
            gate_msa2,
        })
    }
}

/// diffusers `AdaLayerNormContinuous(dim, cond_dim, elementwise_affine=False, eps)`:
/// LayerNorm modulated by (scale, shift) — scale first.
#[derive(Clone, Debug)]
pub struct AdaLayerNormContinuous {
    pub proj: AdaProjection,
    pub eps: f32,
}

impl AdaLayerNormContinuous {
    pub fn new(vb: &VarBuilder, dim: usize, cond_dim: usize, eps: f32) -> Result<Self> {
        Ok(AdaLayerNormContinuous { proj: AdaProjection::new(vb, cond_dim, dim, 2)?, eps })
    }
    pub fn forward(&self, x: &Tensor, cond: &Tensor) -> Result<Tensor> {
        let c = self.proj.forward(cond)?;
        ops::layer_norm_modulate(x, &c[1], &c[0], self.eps)
    }
}
