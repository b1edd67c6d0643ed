//! Supervised training of the demo's label classifiers (the evaluator, and the ViT
//! backbone of the discriminator) on captioned shapes: cross-entropy on shape, color,
//! position and size, AdamW, deterministic per-step data.

use super::evaluator::{argmax_rows, cross_entropy};
use crate::autograd;
use crate::data::shapes::ShapeLabel;
use crate::data::ShapesDataset;
use crate::error::Result;
use crate::optim::{clip_grad_norm, lr_warmup_constant, AdamW, AdamWConfig, ParamGroup};
use crate::tensor::Tensor;
use crate::train::{Progress, RunDir};

/// Logits of the four attribute heads.
pub struct Heads {
    pub shape: Tensor,
    pub color: Tensor,
    pub position: Tensor,
    pub size: Tensor,
}

#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ClassifierTrainConfig {
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    pub warmup: u64,
    pub seed: u64,
}

fn targets(labels: &[ShapeLabel]) -> [Vec<usize>; 4] {
    [
        labels.iter().map(|l| l.shape.index()).collect(),
        labels.iter().map(|l| l.color.index()).collect(),
        labels.iter().map(|l| l.position.index()).collect(),
        labels.iter().map(|l| l.size.index()).collect(),
    ]
}

/// Per-attribute accuracy on `n` held-out samples (indices from 2^40 on, never trained on).
pub fn accuracy(forward: &dyn Fn(&Tensor) -> Result<Heads>, data: &ShapesDataset, n: usize) -> Result<[f64; 4]> {
    let _g = autograd::no_grad();
    let mut correct = [0usize; 4];
    for start in (0..n).step_by(64) {
        let idx: Vec<u64> = (start..(start + 64).min(n)).map(|i| (1u64 << 40) + i as u64).collect();
        let (x, _, labels) = data.batch(&idx);
        let h = forward(&x)?;
        let t = targets(&labels);
        for (k, logits) in [&h.shape, &h.color, &h.position, &h.size].into_iter().enumerate() {
            correct[k] += argmax_rows(logits)?.iter().zip(&t[k]).filter(|(a, b)| a == b).count();
        }
    }
    Ok(correct.map(|c| c as f64 / n as f64))
}

/// Trains `params` so that `forward` classifies the dataset's labels.
pub fn train(
    name: &str,
    forward: &dyn Fn(&Tensor) -> Result<Heads>,
    params: &[(String, Tensor)],
    data: &ShapesDataset,
    cfg: &ClassifierTrainConfig,
    dir: &RunDir,
) -> Result<()> {
    let mut opt = AdamW::with_groups(
        vec![ParamGroup { params: params.to_vec(), weight_decay: None }],
        AdamWConfig { lr: cfg.lr, weight_decay: 1e-4, ..Default::default() },
    )?;
    let tensors: Vec<Tensor> = params.iter().map(|(_, t)| t.clone()).collect();
    let mut log = dir.metrics(false)?;
    let progress = Progress::new(name, 0, cfg.steps);
    for step in 1..=cfg.steps {
        let idx: Vec<u64> = (0..cfg.batch as u64).map(|i| (step - 1) * cfg.batch as u64 + i).collect();
        let (x, _, labels) = data.batch(&idx);
        let h = forward(&x)?;
        let t = targets(&labels);
        let loss = cross_entropy(&h.shape, &t[0])?
            .add(&cross_entropy(&h.color, &t[1])?)?
            .add(&cross_entropy(&h.position, &t[2])?)?
            .add(&cross_entropy(&h.size, &t[3])?)?;
        let lv = loss.to_scalar()?;
        let mut grads = autograd::backward(&loss)?;
        let gn = clip_grad_norm(&mut grads, &tensors, 1.0)?;
        opt.set_lr(lr_warmup_constant(step, cfg.warmup, cfg.lr));
        opt.step(&grads)?;
        if step % 10 == 0 || step == cfg.steps {
            log.log(
                &serde_json::json!({ "step": step, "loss": lv, "grad_norm": gn, "it_per_s": progress.rate(step) }),
            )?;
        }
        progress.update(step, &format!("loss {lv:.4}"));
    }
    Ok(())
}
