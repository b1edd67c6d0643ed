//! diffusers `FeedForward(dim, dim_out, activation_fn="gelu-approximate")`:
//! net.0.proj (dim → 4·dim) → GELU(tanh) → net.2 (4·dim → dim_out).

use super::{Linear, VarBuilder};
use crate::error::Result;
use crate::tensor::Tensor;

#[derive(Clone, Debug)]
pub struct FeedForward {
    pub proj_in: Linear,
    pub proj_out: Linear,
}

impl FeedForward {
    pub fn new(vb: &VarBuilder, dim: usize, dim_out: usize, mult: usize) -> Result<Self> {
        Ok(FeedForward {
            proj_in: Linear::new(&vb.pp("net.0.proj"), dim, mult * dim, true)?,
            proj_out: Linear::new(&vb.pp("net.2"), mult * dim, dim_out, true)?,
        })
    }
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.proj_out.forward(&self.proj_in.forward(x)?.gelu_tanh()?)
    }
}
