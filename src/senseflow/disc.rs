//! The VFM discriminator's trainable part: one head per feature level of a frozen
//! vision backbone, conditioned on text and on reference (real-image) features.
//!
//! Head (per level, input [B, C, h, w]): SN-conv1×1 C→ch → GroupNorm → LeakyReLU(0.2)
//! → 3 × (SN-conv3×3 stride 2 → residual block (f(x) + x)/√2 with f = SN-conv3×3 →
//! GroupNorm → LeakyReLU) → SN-conv1×1 ch→64. Conditioning: cmap = Linear(text → 64),
//! refmap = Linear(pooled reference features → 64); the level's logit is
//! Σ_{c,y,x} out·(cmap + refmap)/√64. The published heads use BatchNormLocal (batch
//! norm over small virtual batches); GroupNorm is used here so a logit does not depend
//! on the other samples of the batch (documented deviation).
//! SN = spectral normalization with one power iteration per training forward; the
//! power-iteration vector u is state that persists across steps (and checkpoints).

use crate::error::{Error, Result};
use crate::nn::{Init, Linear, VarBuilder};
use crate::ops;
use crate::rng::Philox;
use crate::tensor::Tensor;
use std::sync::Mutex;

/// Output channels of every head (and of the conditioning projections).
pub const HEAD_OUT: usize = 64;

/// A spectrally normalized conv2d.
#[derive(Debug)]
pub struct SnConv2d {
    pub weight: Tensor,
    pub bias: Tensor,
    /// Power-iteration vector [out]; updated by every training forward.
    pub u: Mutex<Vec<f32>>,
    stride: usize,
    padding: usize,
}

impl SnConv2d {
    pub fn new(vb: &VarBuilder, cin: usize, cout: usize, k: usize, stride: usize, rng: &mut Philox) -> Result<Self> {
        let bound = 1.0 / ((cin * k * k) as f32).sqrt();
        Ok(SnConv2d {
            weight: vb.get("weight", &[cout, cin, k, k], Init::Uniform(bound))?,
            bias: vb.get("bias", &[cout], Init::Zeros)?,
            u: Mutex::new(ops::spectral_norm_init_u(cout, rng, ops::SPECTRAL_NORM_EPS)),
            stride,
            padding: k / 2,
        })
    }

    /// Training forwards (`update_u`) run one power iteration and keep the new u;
    /// other forwards run it on a copy, so evaluating never changes the state.
    pub fn forward(&self, x: &Tensor, update_u: bool) -> Result<Tensor> {
        let w = {
            let mut guard = self.u.lock().expect("spectral norm state lock");
            if update_u {
                ops::spectral_norm_power_iteration(&self.weight, &mut guard, 1, ops::SPECTRAL_NORM_EPS)?
            } else {
                let mut u = guard.clone();
                ops::spectral_norm_power_iteration(&self.weight, &mut u, 1, ops::SPECTRAL_NORM_EPS)?
            }
        };
        ops::conv2d(x, &w, Some(&self.bias), (self.stride, self.stride), (self.padding, self.padding))
    }
}

fn norm_act(x: &Tensor, groups: usize) -> Result<Tensor> {
    ops::leaky_relu(&ops::group_norm(x, groups, None, None, 1e-5)?, 0.2)
}

/// One level's head.
#[derive(Debug)]
pub struct DiscHead {
    stem: SnConv2d,
    down: Vec<(SnConv2d, SnConv2d)>,
    out: SnConv2d,
    cmap: Linear,
    refmap: Linear,
    groups: usize,
}

impl DiscHead {
    pub fn new(vb: &VarBuilder, feat_dim: usize, text_dim: usize, ch: usize, rng: &mut Philox) -> Result<Self> {
        let groups = [8, 4, 2, 1].into_iter().find(|g| ch % g == 0).unwrap_or(1);
        Ok(DiscHead {
            stem: SnConv2d::new(&vb.pp("stem"), feat_dim, ch, 1, 1, rng)?,
            down: (0..3)
                .map(|i| {
                    Ok((
                        SnConv2d::new(&vb.pp(format!("down.{i}.conv")), ch, ch, 3, 2, rng)?,
                        SnConv2d::new(&vb.pp(format!("down.{i}.res")), ch, ch, 3, 1, rng)?,
                    ))
                })
                .collect::<Result<_>>()?,
            out: SnConv2d::new(&vb.pp("out"), ch, HEAD_OUT, 1, 1, rng)?,
            cmap: Linear::new(&vb.pp("cmap"), text_dim, HEAD_OUT, true)?,
            refmap: Linear::new(&vb.pp("refmap"), feat_dim, HEAD_OUT, true)?,
            groups,
        })
    }

    /// feat [B, C, h, w], text [B, T], reference [B, C] → logits [B].
    pub fn forward(&self, feat: &Tensor, text: &Tensor, reference: &Tensor, train: bool) -> Result<Tensor> {
        let mut h = norm_act(&self.stem.forward(feat, train)?, self.groups)?;
        for (down, res) in &self.down {
            h = down.forward(&h, train)?;
            let f = norm_act(&res.forward(&h, train)?, self.groups)?;
            h = f.add(&h)?.scale(std::f32::consts::FRAC_1_SQRT_2)?;
        }
        let out = self.out.forward(&h, train)?; // [B, 64, h', w']
        let b = out.shape()[0];
        let cond = self.cmap.forward(text)?.add(&self.refmap.forward(reference)?)?.reshape(&[b, HEAD_OUT, 1, 1])?;
        out.mul(&cond)?.sum(&[1, 2, 3], false)?.scale(1.0 / (HEAD_OUT as f32).sqrt())
    }
}

/// All heads; `forward` returns logits [B, levels].
#[derive(Debug)]
pub struct DiscHeads {
    pub heads: Vec<DiscHead>,
}

impl DiscHeads {
    /// `feat_dims[l]`: channels of level l's feature map.
    pub fn new(vb: &VarBuilder, feat_dims: &[usize], text_dim: usize, ch: usize, seed: u64) -> Result<Self> {
        let mut rng = Philox::new(seed);
        let heads = feat_dims
            .iter()
            .enumerate()
            .map(|(l, &c)| DiscHead::new(&vb.pp(format!("heads.{l}")), c, text_dim, ch, &mut rng))
            .collect::<Result<_>>()?;
        Ok(DiscHeads { heads })
    }

    pub fn forward(&self, feats: &[Tensor], text: &Tensor, refs: &[Tensor], train: bool) -> Result<Tensor> {
        if feats.len() != self.heads.len() || refs.len() != self.heads.len() {
            return Err(Error::op(
                "discriminator",
                format!("{} heads, {} feature levels, {} reference levels", self.heads.len(), feats.len(), refs.len()),
            ));
        }
        let logits = self
            .heads
            .iter()
            .zip(feats.iter().zip(refs))
            .map(|(h, (f, r))| h.forward(f, text, r, train)?.unsqueeze(1))
            .collect::<Result<Vec<_>>>()?;
        ops::concat(&logits.iter().collect::<Vec<_>>(), 1)
    }

    /// Power-iteration vectors by parameter-path, for checkpoints.
    pub fn sn_states(&self) -> Vec<&SnConv2d> {
        self.heads
            .iter()
            .flat_map(|h| {
                let mut v = vec![&h.stem];
                for (a, b) in &h.down {
                    v.push(a);
                    v.push(b);
                }
                v.push(&h.out);
                v
            })
            .collect()
    }
}

/// Which ViT layers feed the heads: the embeddings (hidden state 0) plus blocks spread
/// like the published choice for ViT-L (24 blocks: {2, 5, 8, 10, 14, 19, 23}, 1-based
/// hidden-state indices 3, 6, 9, 11, 15, 20, 24), scaled to `depth` blocks.
pub fn feature_layers(depth: usize) -> Vec<usize> {
    const VIT_L: [usize; 7] = [2, 5, 8, 10, 14, 19, 23];
    let mut out = vec![0];
    for &b in &VIT_L {
        let scaled = ((b + 1) * depth + 12) / 24; // 1-based hidden-state index
        let idx = scaled.clamp(1, depth);
        if !out.contains(&idx) {
            out.push(idx);
        }
    }
    out
}
