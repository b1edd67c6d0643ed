//! Flow-matching training of a teacher (and, for the demo, its text encoder, trained
//! jointly from scratch): logit-normal σ, AdamW with linear warm-up then constant lr,
//! global grad-norm clipping, EMA weights, caption dropout for classifier-free
//! guidance, atomic resumable checkpoints, metrics.jsonl and a loss-curve PNG.
//!
//! Determinism: every random draw of step s comes from Philox streams keyed by
//! (seed, s), and the data indices of step s are fixed, so a resumed run repeats the
//! exact losses of an uninterrupted one.

use super::text::TextEncoder;
use crate::autograd;
use crate::data::shapes::ShapesDataset;
use crate::diffusion::{add_noise, velocity_target, SigmaSampler};
use crate::error::Result;
use crate::models::mmdit::SD3Transformer2DModel;
use crate::optim::{clip_grad_norm, ema_update, lr_warmup_constant, AdamW, AdamWConfig};
use crate::rng::Philox;
use crate::tensor::Tensor;
use crate::train::{MetricsLog, Progress, RunDir};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TeacherTrainConfig {
    pub steps: u64,
    pub batch: usize,
    pub lr: f64,
    pub warmup: u64,
    pub weight_decay: f64,
    pub grad_clip: f32,
    pub ema_decay: f64,
    /// Probability that a caption is replaced by the empty prompt (for CFG).
    pub caption_dropout: f32,
    pub logit_mean: f32,
    pub logit_std: f32,
    pub seed: u64,
    pub log_every: u64,
    pub checkpoint_every: u64,
}

impl Default for TeacherTrainConfig {
    fn default() -> Self {
        TeacherTrainConfig {
            steps: 3000,
            batch: 32,
            lr: 1e-3,
            warmup: 100,
            weight_decay: 0.0,
            grad_clip: 1.0,
            ema_decay: 0.995,
            caption_dropout: 0.1,
            logit_mean: 0.0,
            logit_std: 1.0,
            seed: 0,
            log_every: 10,
            checkpoint_every: 250,
        }
    }
}

/// Stream ids for the per-step random draws.
const STREAM_NOISE: u64 = 1;
const STREAM_SIGMA: u64 = 2;
const STREAM_DROP: u64 = 3;

fn stream(seed: u64, id: u64, step: u64) -> Philox {
    Philox::at(seed ^ (id << 56), step << 20)
}

/// Everything a teacher training step touches.
pub struct TeacherRun<'a> {
    pub teacher: &'a SD3Transformer2DModel,
    pub text: &'a dyn TextEncoder,
    /// Trainable parameters by name (`transformer.*`, `text_encoder.*`).
    pub params: Vec<(String, Tensor)>,
    /// EMA copies, same order.
    pub ema: Vec<(String, Tensor)>,
    pub data: &'a ShapesDataset,
}

/// Trains for `cfg.steps` (resuming from the run's latest checkpoint if present).
pub fn train(run: &mut TeacherRun, cfg: &TeacherTrainConfig, dir: &RunDir) -> Result<()> {
    let params: Vec<Tensor> = run.params.iter().map(|(_, t)| t.clone()).collect();
    let mut opt = AdamW::with_groups(
        vec![crate::optim::ParamGroup { params: run.params.clone(), weight_decay: None }],
        AdamWConfig { lr: cfg.lr, weight_decay: cfg.weight_decay, ..Default::default() },
    )?;
    let ckpts = dir.checkpoints();
    let mut start = 0;
    if let Some(ck) = ckpts.latest()? {
        ck.restore_params("model/", &run.params)?;
        ck.restore_params("ema/", &run.ema)?;
        opt.load_state(&ck.with_prefix("opt/"))?;
        start = ck.step;
        MetricsLog::truncate_after(dir.path("metrics.jsonl"), start)?;
        eprintln!("resuming from step {start}");
    }
    let mut log = dir.metrics(start > 0)?;
    let progress = Progress::new("train-teacher", start, cfg.steps);
    let sampler = SigmaSampler::LogitNormal { mean: cfg.logit_mean, std: cfg.logit_std };
    for step in start + 1..=cfg.steps {
        let b = cfg.batch;
        let indices: Vec<u64> = (0..b as u64).map(|i| (step - 1) * b as u64 + i).collect();
        let (x0, mut captions, _) = run.data.batch(&indices);
        crate::data::drop_captions(&mut captions, cfg.caption_dropout, &mut stream(cfg.seed, STREAM_DROP, step))?;
        let eps = Tensor::randn(x0.shape(), &mut stream(cfg.seed, STREAM_NOISE, step));
        let sigma = Tensor::from_vec(sampler.sample(b, &mut stream(cfg.seed, STREAM_SIGMA, step)), &[b])?;
        let x = add_noise(&x0, &eps, &sigma)?;
        let target = velocity_target(&x0, &eps)?;
        let cond = run.text.encode(&captions)?;
        let v = run.teacher.forward(&x, &cond.states, &cond.pooled, &sigma.scale(1000.0)?)?;
        let loss = crate::ops::mse_loss(&v, &target)?;
        let mut grads = autograd::backward(&loss)?;
        let loss_v = loss.to_scalar()?;
        if !loss_v.is_finite() {
            return Err(crate::error::Error::Msg(format!("train-teacher: loss became {loss_v} at step {step}")));
        }
        let gnorm = clip_grad_norm(&mut grads, &params, cfg.grad_clip)?;
        let lr = lr_warmup_constant(step, cfg.warmup, cfg.lr);
        opt.set_lr(lr);
        opt.step(&grads)?;
        drop(grads);
        let ema: Vec<Tensor> = run.ema.iter().map(|(_, t)| t.clone()).collect();
        ema_update(&ema, &params, cfg.ema_decay)?;
        if step % cfg.log_every == 0 || step == cfg.steps {
            log.log(&serde_json::json!({
                "step": step, "loss": loss_v, "grad_norm": gnorm, "lr": lr, "it_per_s": progress.rate(step),
            }))?;
        }
        progress.update(step, &format!("loss {loss_v:.4} |g| {gnorm:.3}"));
        if step % cfg.checkpoint_every == 0 || step == cfg.steps {
            save(run, &opt, step, cfg, dir)?;
        }
    }
    Ok(())
}

fn save(run: &TeacherRun, opt: &AdamW, step: u64, cfg: &TeacherTrainConfig, dir: &RunDir) -> Result<()> {
    let state = opt.state_tensors();
    let mut tensors: Vec<(String, &Tensor)> = Vec::new();
    for (n, t) in &run.params {
        tensors.push((format!("model/{n}"), t));
    }
    for (n, t) in &run.ema {
        tensors.push((format!("ema/{n}"), t));
    }
    for (n, t) in &state {
        tensors.push((format!("opt/{n}"), t));
    }
    dir.checkpoints().save(step, &tensors, &serde_json::to_value(cfg).expect("config serializes"), 2)?;
    Ok(())
}
