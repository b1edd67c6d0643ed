//! The demo's evaluator: a small CNN trained on the captioned-shapes labels, separate
//! from every network that is distilled or used as a discriminator backbone. Its
//! heads read shape, color, position and size; its 128-d penultimate features are
//! the space in which FD-T (Fréchet distance to the teacher's samples) is measured.
//!
//! [B, 3, S, S] in [−1, 1] → conv3×3 stack (GroupNorm, SiLU; three stride-2 stages)
//! → flatten → Linear → SiLU = features → one Linear head per attribute.

use crate::data::shapes::{Color, Position, Shape, ShapeLabel, Size};
use crate::error::{Error, Result};
use crate::nn::{Init, Linear, VarBuilder};
use crate::ops;
use crate::tensor::Tensor;

/// Feature width used for FD-T.
pub const FEATURE_DIM: usize = 128;

#[derive(Clone, Debug)]
struct Conv {
    w: Tensor,
    b: Tensor,
    stride: usize,
}

impl Conv {
    fn new(vb: &VarBuilder, cin: usize, cout: usize, stride: usize) -> Result<Self> {
        let bound = 1.0 / ((cin * 9) as f32).sqrt();
        Ok(Conv {
            w: vb.get("weight", &[cout, cin, 3, 3], Init::Uniform(bound))?,
            b: vb.get("bias", &[cout], Init::Zeros)?,
            stride,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let y = ops::conv2d(x, &self.w, Some(&self.b), (self.stride, self.stride), (1, 1))?;
        ops::group_norm(&y, 8, None, None, 1e-5)?.silu()
    }
}

#[derive(Clone, Debug)]
pub struct Evaluator {
    convs: Vec<Conv>,
    feat: Linear,
    heads: [Linear; 4],
    pub image_size: usize,
}

/// Logits per attribute, and the features.
pub struct EvalOutput {
    pub features: Tensor,
    pub shape: Tensor,
    pub color: Tensor,
    pub position: Tensor,
    pub size: Tensor,
}

impl Evaluator {
    pub fn new(vb: &VarBuilder, image_size: usize) -> Result<Self> {
        if image_size % 8 != 0 {
            return Err(Error::Msg(format!("evaluator image size {image_size} must be a multiple of 8")));
        }
        let plan = [(3, 32, 1), (32, 64, 2), (64, 64, 1), (64, 128, 2), (128, 128, 2)];
        let convs = plan
            .iter()
            .enumerate()
            .map(|(i, &(ci, co, s))| Conv::new(&vb.pp(format!("convs.{i}")), ci, co, s))
            .collect::<Result<_>>()?;
        let flat = 128 * (image_size / 8) * (image_size / 8);
        let n = [Shape::ALL.len(), Color::ALL.len(), Position::ALL.len(), Size::ALL.len()];
        Ok(Evaluator {
            convs,
            feat: Linear::new(&vb.pp("feat"), flat, FEATURE_DIM, true)?,
            heads: [
                Linear::new(&vb.pp("head_shape"), FEATURE_DIM, n[0], true)?,
                Linear::new(&vb.pp("head_color"), FEATURE_DIM, n[1], true)?,
                Linear::new(&vb.pp("head_position"), FEATURE_DIM, n[2], true)?,
                Linear::new(&vb.pp("head_size"), FEATURE_DIM, n[3], true)?,
            ],
            image_size,
        })
    }

    pub fn forward(&self, x: &Tensor) -> Result<EvalOutput> {
        let &[b, 3, h, w] = x.shape() else {
            return Err(Error::Msg(format!("evaluator input must be [B, 3, H, W], got {:?}", x.shape())));
        };
        if h != self.image_size || w != self.image_size {
            return Err(Error::Msg(format!("evaluator expects {0}×{0} images, got {h}×{w}", self.image_size)));
        }
        let mut y = x.clone();
        for c in &self.convs {
            y = c.forward(&y)?;
        }
        let features = self.feat.forward(&y.reshape(&[b, y.numel() / b])?)?.silu()?;
        Ok(EvalOutput {
            shape: self.heads[0].forward(&features)?,
            color: self.heads[1].forward(&features)?,
            position: self.heads[2].forward(&features)?,
            size: self.heads[3].forward(&features)?,
            features,
        })
    }
}

/// Mean cross-entropy of `logits` [B, K] against class indices.
pub fn cross_entropy(logits: &Tensor, targets: &[usize]) -> Result<Tensor> {
    let &[b, k] = logits.shape() else {
        return Err(Error::Msg(format!("cross_entropy: logits must be [B, K], got {:?}", logits.shape())));
    };
    if targets.len() != b || targets.iter().any(|&t| t >= k) {
        return Err(Error::Msg(format!("cross_entropy: {} targets for {b} rows of {k} classes", targets.len())));
    }
    let mut onehot = vec![0f32; b * k];
    for (i, &t) in targets.iter().enumerate() {
        onehot[i * k + t] = 1.0;
    }
    let onehot = Tensor::from_vec(onehot, &[b, k])?;
    ops::log_softmax(logits, -1)?.mul(&onehot)?.sum_all()?.scale(-1.0 / b as f32)
}

/// Row-wise argmax of [B, K] logits.
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<usize>> {
    let k = logits.shape()[1];
    Ok(logits
        .to_vec_f32()?
        .chunks(k)
        .map(|r| r.iter().enumerate().fold(0, |best, (i, &v)| if v > r[best] { i } else { best }))
        .collect())
}

/// Predicted labels for a batch of images.
pub fn predict(ev: &Evaluator, x: &Tensor) -> Result<(Vec<ShapeLabel>, Tensor)> {
    let _g = crate::autograd::no_grad();
    let o = ev.forward(x)?;
    let (s, c, p, z) =
        (argmax_rows(&o.shape)?, argmax_rows(&o.color)?, argmax_rows(&o.position)?, argmax_rows(&o.size)?);
    let labels = (0..s.len())
        .map(|i| ShapeLabel {
            shape: Shape::ALL[s[i]],
            color: Color::ALL[c[i]],
            position: Position::ALL[p[i]],
            size: Size::ALL[z[i]],
        })
        .collect();
    Ok((labels, o.features))
}
