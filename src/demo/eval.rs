//! Measuring generators on the captioned-shapes world.
//!
//! - Prompt adherence: the evaluator reads shape, color and position from each sample;
//!   a sample adheres when all three match its caption. Per-attribute accuracies are
//!   reported too.
//! - FD-T: Fréchet distance, in the evaluator's feature space, between a model's
//!   samples and the teacher's 28-step CFG samples for the same prompts and initial
//!   noise (the paper's FID-T, against the teacher rather than real data).
//!
//! The prompt set and the noise are fixed by (seed, n), so every model is measured on
//! the same inputs.

use super::evaluator::{predict, Evaluator, FEATURE_DIM};
use super::text::TextEncoder;
use crate::data::shapes::{caption_of, ShapeLabel};
use crate::diffusion::{euler_sample, stochastic_sample};
use crate::error::Result;
use crate::eval::frechet::frechet_distance_of;
use crate::models::Transformer;
use crate::ops;
use crate::rng::Philox;
use crate::senseflow::nets::{guided_velocity, Guidance};
use crate::tensor::Tensor;
use serde::Serialize;

/// The evaluation prompts: `n` labels spread over every (shape, color, position, size)
/// combination in a seed-fixed order.
pub fn prompt_set(n: usize, seed: u64) -> Vec<ShapeLabel> {
    let count = ShapeLabel::COUNT;
    let mut order: Vec<usize> = (0..count).collect();
    let mut rng = Philox::new(seed ^ 0xe7a1);
    // Fisher–Yates with Philox draws.
    let u = rng.next_u32s(count);
    for i in (1..count).rev() {
        let j = (u[i] as usize) % (i + 1);
        order.swap(i, j);
    }
    (0..n).map(|k| ShapeLabel::from_index(order[k % count]).expect("index < COUNT")).collect()
}

/// How a model is sampled.
#[derive(Clone, Debug, PartialEq)]
pub enum Sampler {
    /// Euler on a σ list with the given guidance (the teacher).
    Euler { sigmas: Vec<f32>, guidance: Guidance },
    /// The few-step generator's stochastic sampler on its anchors.
    Stochastic { sigmas: Vec<f32> },
}

/// Generates one image per prompt, in chunks of `chunk`, with noise from `seed`.
pub fn generate(
    model: &Transformer,
    text: &dyn TextEncoder,
    prompts: &[String],
    sampler: &Sampler,
    image_shape: [usize; 3],
    seed: u64,
    chunk: usize,
) -> Result<Tensor> {
    let _g = crate::autograd::no_grad();
    let mut out = Vec::new();
    for (c, ps) in prompts.chunks(chunk.max(1)).enumerate() {
        let b = ps.len();
        let cond = text.encode(ps)?;
        let uncond = text.encode(&vec![String::new(); b])?;
        let mut shape = vec![b];
        shape.extend(image_shape);
        let mut rng = Philox::at(seed, (c as u64) << 32);
        let noise = Tensor::randn(&shape, &mut rng);
        let x = match sampler {
            Sampler::Euler { sigmas, guidance } => {
                let mut v =
                    |x: &Tensor, s: f32| guided_velocity(model, x, &Tensor::full(s, &[b]), &cond, &uncond, *guidance);
                euler_sample(&mut v, noise, sigmas)?
            }
            Sampler::Stochastic { sigmas } => {
                let mut v = |x: &Tensor, s: f32| {
                    guided_velocity(model, x, &Tensor::full(s, &[b]), &cond, &uncond, Guidance::None)
                };
                stochastic_sample(&mut v, noise, sigmas, &mut rng)?
            }
        };
        out.push(x.contiguous()?);
    }
    ops::concat(&out.iter().collect::<Vec<_>>(), 0)
}

#[derive(Clone, Debug, Serialize)]
pub struct EvalReport {
    pub samples: usize,
    pub adherence: f64,
    pub shape_acc: f64,
    pub color_acc: f64,
    pub position_acc: f64,
    pub size_acc: f64,
    /// FD-T against the reference features (None when no reference was given).
    pub fd_t: Option<f64>,
}

/// Scores `images` (one per label) with the evaluator; `reference` are the teacher's
/// 28-step features for FD-T.
pub fn score(
    ev: &Evaluator,
    images: &Tensor,
    labels: &[ShapeLabel],
    reference: Option<&[f32]>,
) -> Result<(EvalReport, Vec<f32>)> {
    let mut preds = Vec::new();
    let mut feats = Vec::new();
    let n = labels.len();
    for start in (0..n).step_by(64) {
        let len = 64.min(n - start);
        let (p, f) = predict(ev, &images.narrow(0, start, len)?.contiguous()?.clamp_unit()?)?;
        preds.extend(p);
        feats.extend(f.to_vec_f32()?);
    }
    let frac = |f: &dyn Fn(&ShapeLabel, &ShapeLabel) -> bool| {
        preds.iter().zip(labels).filter(|(p, l)| f(p, l)).count() as f64 / n.max(1) as f64
    };
    let fd_t = match reference {
        Some(r) => Some(frechet_distance_of(&feats, r, FEATURE_DIM)?),
        None => None,
    };
    Ok((
        EvalReport {
            samples: n,
            adherence: frac(&|p, l| p.shape == l.shape && p.color == l.color && p.position == l.position),
            shape_acc: frac(&|p, l| p.shape == l.shape),
            color_acc: frac(&|p, l| p.color == l.color),
            position_acc: frac(&|p, l| p.position == l.position),
            size_acc: frac(&|p, l| p.size == l.size),
            fd_t,
        },
        feats,
    ))
}

/// Captions of labels.
pub fn captions(labels: &[ShapeLabel]) -> Vec<String> {
    labels.iter().map(caption_of).collect()
}

trait ClampUnit {
    fn clamp_unit(&self) -> Result<Tensor>;
}

impl ClampUnit for Tensor {
    /// Samples can overshoot [−1, 1]; images are clipped like a PNG would be.
    fn clamp_unit(&self) -> Result<Tensor> {
        let v: Vec<f32> = self.to_vec_f32()?.into_iter().map(|x| x.clamp(-1.0, 1.0)).collect();
        Tensor::from_vec(v, self.shape())
    }
}
