//! Wiring SenseFlow distillation to the demo world: data from the captioned-shapes
//! generator, conditioning from the frozen demo text encoder, the DINOv2-architecture
//! backbone for the discriminator, identity decoding (pixel space).

use super::text::{DemoTextEncoder, TextEncoder};
use crate::autograd;
use crate::data::ShapesDataset;
use crate::error::Result;
use crate::senseflow::distill::{Batch, DistillData};
use crate::tensor::Tensor;

pub struct DemoDistillData<'a> {
    pub data: &'a ShapesDataset,
    pub text: &'a DemoTextEncoder,
}

/// Rows scaled to unit L2 norm.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = x.sqr()?.sum(&[-1], true)?.affine(1.0, 1e-12)?.sqrt()?;
    x.div(&n)
}

impl DistillData for DemoDistillData<'_> {
    fn batch(&self, iteration: u64, size: usize) -> Result<Batch> {
        let _g = autograd::no_grad();
        let idx: Vec<u64> = (0..size as u64).map(|i| (iteration - 1) * size as u64 + i).collect();
        let (x0, captions, _) = self.data.batch(&idx);
        let cond = self.text.encode(&captions)?.detach();
        let uncond = self.text.encode(&vec![String::new(); size])?.detach();
        let text_feat = l2_normalize(&cond.pooled)?;
        Ok(Batch { images: x0.clone(), x0, cond, uncond, text_feat })
    }
}
