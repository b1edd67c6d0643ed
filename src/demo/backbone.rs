//! The demo discriminator's frozen backbone: a tiny DINOv2-architecture ViT trained on
//! the captioned-shapes labels (CLS token → attribute heads), giving multi-level patch
//! feature maps for the SenseFlow discriminator heads.

use super::classifier::Heads;
use crate::error::Result;
use crate::models::vit::{Config, Dinov2Model, Extent};
use crate::nn::{Linear, VarBuilder};
use crate::senseflow::disc::feature_layers;
use crate::senseflow::distill::Backbone;
use crate::tensor::Tensor;

/// ImageNet normalization, as DINOv2 expects its pixel_values.
const MEAN: [f32; 3] = [0.485, 0.456, 0.406];
const STD: [f32; 3] = [0.229, 0.224, 0.225];

pub fn vit_config() -> Config {
    Config {
        hidden_size: 64,
        num_hidden_layers: 4,
        num_attention_heads: 4,
        image_size: Extent::Square(super::IMAGE_SIZE),
        patch_size: Extent::Square(4),
        ..Default::default()
    }
}

/// `pixel_values` from images in [0, 1].
pub fn normalize(images01: &Tensor) -> Result<Tensor> {
    let mean = Tensor::from_vec(MEAN.to_vec(), &[1, 3, 1, 1])?;
    let inv_std = Tensor::from_vec(STD.iter().map(|s| 1.0 / s).collect(), &[1, 3, 1, 1])?;
    images01.sub(&mean)?.mul(&inv_std)
}

/// Attribute heads on the CLS token, for pre-training the ViT on the labels.
pub struct VitClassifier {
    pub vit: Dinov2Model,
    heads: [Linear; 4],
}

impl VitClassifier {
    pub fn new(vit: Dinov2Model, vb: &VarBuilder) -> Result<Self> {
        use crate::data::shapes::{Color, Position, Shape, Size};
        let d = vit.cfg.hidden_size;
        Ok(VitClassifier {
            heads: [
                Linear::new(&vb.pp("head_shape"), d, Shape::ALL.len(), true)?,
                Linear::new(&vb.pp("head_color"), d, Color::ALL.len(), true)?,
                Linear::new(&vb.pp("head_position"), d, Position::ALL.len(), true)?,
                Linear::new(&vb.pp("head_size"), d, Size::ALL.len(), true)?,
            ],
            vit,
        })
    }

    /// Images in [−1, 1] → attribute logits.
    pub fn forward(&self, x: &Tensor) -> Result<Heads> {
        let cls = self.vit.forward(&normalize(&x.affine(0.5, 0.5)?)?)?.pooler_output;
        Ok(Heads {
            shape: self.heads[0].forward(&cls)?,
            color: self.heads[1].forward(&cls)?,
            position: self.heads[2].forward(&cls)?,
            size: self.heads[3].forward(&cls)?,
        })
    }
}

/// A frozen DINOv2 as the discriminator's backbone: patch tokens of the embeddings and
/// of the blocks `feature_layers(depth)` picks, as [B, C, h, w] maps.
pub struct VitBackbone {
    pub vit: Dinov2Model,
    layers: Vec<usize>,
}

impl VitBackbone {
    pub fn new(vit: Dinov2Model) -> Self {
        let layers = feature_layers(vit.cfg.num_hidden_layers);
        VitBackbone { vit, layers }
    }
}

impl Backbone for VitBackbone {
    fn features(&self, images01: &Tensor) -> Result<Vec<Tensor>> {
        let out = self.vit.forward(&normalize(images01)?)?;
        let (b, h, w) = (images01.shape()[0], images01.shape()[2], images01.shape()[3]);
        let p = self.vit.cfg.patch();
        let (gh, gw) = (h / p, w / p);
        let skip = self.vit.cfg.num_prefix_tokens();
        let d = self.vit.cfg.hidden_size;
        self.layers
            .iter()
            .map(|&l| {
                out.hidden_states[l]
                    .narrow(1, skip, gh * gw)?
                    .reshape(&[b, gh, gw, d])?
                    .permute(&[0, 3, 1, 2])?
                    .contiguous()
            })
            .collect()
    }

    fn level_dims(&self) -> Vec<usize> {
        vec![self.vit.cfg.hidden_size; self.layers.len()]
    }
}
