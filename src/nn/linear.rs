//! `Linear`: y = x Wᵀ + b with W [out, in] (torch.nn.Linear, checkpoint keys
//! `weight`, `bias`).

use super::{Init, VarBuilder};
use crate::error::Result;
use crate::tensor::Tensor;

#[derive(Clone, Debug)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    pub fn new(vb: &VarBuilder, in_dim: usize, out_dim: usize, bias: bool) -> Result<Self> {
        let bound = 1.0 / (in_dim as f32).sqrt();
        let weight = vb.get("weight", &[out_dim, in_dim], Init::Uniform(bound))?;
        let bias = if bias { Some(vb.get("bias", &[out_dim], Init::Uniform(bound))?) } else { None };
        Ok(Linear { weight, bias })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::ops::linear(x, &self.weight, self.bias.as_ref())
    }

    pub fn out_dim(&self) -> usize {
        self.weight.shape()[0]
    }
}
