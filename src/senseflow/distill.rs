//! The SenseFlow training iteration (SENSEFLOW.md, Algorithm 1 with the published
//! details) and the loop around it: TTUR, backward simulation, DMD + GAN + ISG
//! generator loss, IDA, fake-score and discriminator updates, NaN/Inf skipping,
//! atomic resumable checkpoints and metrics.
//!
//! Determinism: iteration k draws every random number from Philox streams keyed by
//! (seed, k, purpose), and the data of iteration k is fixed, so a run resumed from a
//! checkpoint reproduces the losses of an uninterrupted run exactly.

use super::anchors::Anchors;
use super::augment::diff_augment;
use super::config::DistillConfig;
use super::disc::DiscHeads;
use super::nets::{guided_velocity, velocity, Cond, Guidance};
use super::{dmd_loss, euler_step, generator_turn, ida_blend, isg_loss};
use crate::autograd;
use crate::diffusion::{add_noise, shift_sigma, x0_from_v, Shift, SigmaSampler};
use crate::error::{Error, Result};
use crate::models::Transformer;
use crate::ops;
use crate::optim::{clip_grad_norm, lr_warmup_constant, AdamW, AdamWConfig, ParamGroup};
use crate::rng::Philox;
use crate::tensor::Tensor;
use crate::train::{MetricsLog, Progress, RunDir};

/// A frozen vision backbone giving multi-level feature maps [B, C, h, w] of images in
/// [0, 1] (normalization to the backbone's convention happens inside).
pub trait Backbone {
    fn features(&self, images01: &Tensor) -> Result<Vec<Tensor>>;
    fn level_dims(&self) -> Vec<usize>;
}

/// Maps generator outputs (latents or pixels) to images in [−1, 1] for the
/// discriminator. Pixel-space teachers use the identity.
pub trait Decoder {
    fn decode(&self, x: &Tensor) -> Result<Tensor>;
}

pub struct IdentityDecoder;

impl Decoder for IdentityDecoder {
    fn decode(&self, x: &Tensor) -> Result<Tensor> {
        Ok(x.clone())
    }
}

/// One iteration's data.
pub struct Batch {
    /// Real data in the teacher's input space (latents, or pixels for the demo).
    pub x0: Tensor,
    /// Real images in [−1, 1] for the discriminator.
    pub images: Tensor,
    pub cond: Cond,
    /// The empty-prompt conditioning, batch-sized (CFG).
    pub uncond: Cond,
    /// Text features for the discriminator's cmap [B, T] (L2-normalized pooled text).
    pub text_feat: Tensor,
}

pub trait DistillData {
    fn batch(&self, iteration: u64, size: usize) -> Result<Batch>;
}

/// The VFM discriminator: frozen backbone + trainable heads, with DiffAugment on its
/// input only.
pub struct Discriminator {
    pub backbone: Box<dyn Backbone>,
    pub heads: DiscHeads,
}

impl Discriminator {
    /// Pooled reference features of real images (no augmentation, no gradient).
    pub fn reference(&self, real: &Tensor) -> Result<Vec<Tensor>> {
        let _g = autograd::no_grad();
        self.backbone.features(&real.affine(0.5, 0.5)?)?.iter().map(|f| f.mean(&[2, 3], false)).collect()
    }

    /// Logits [B, levels] of images in [−1, 1].
    pub fn logits(
        &self,
        img: &Tensor,
        text: &Tensor,
        refs: &[Tensor],
        cfg: &DistillConfig,
        rng: &mut Philox,
        train: bool,
    ) -> Result<Tensor> {
        let x = diff_augment(&img.affine(0.5, 0.5)?, cfg.augment, rng)?;
        let feats = self.backbone.features(&x)?;
        self.heads.forward(&feats, text, refs, train)
    }
}

/// The networks of a run. Generator and fake score start as copies of the teacher.
pub struct Networks {
    pub teacher: Transformer,
    pub generator: Transformer,
    pub gen_params: Vec<(String, Tensor)>,
    pub fake: Transformer,
    pub fake_params: Vec<(String, Tensor)>,
    pub disc: Discriminator,
    pub disc_params: Vec<(String, Tensor)>,
    pub decoder: Box<dyn Decoder>,
}

/// Per-iteration random streams.
#[derive(Clone, Copy)]
enum S {
    Anchor = 1,
    Backsim,
    Noise,
    Dmd,
    Guidance,
    Isg,
    Fake,
    AugFake,
    AugReal,
    AugGen,
}

fn stream(seed: u64, iter: u64, s: S) -> Philox {
    Philox::at(seed ^ ((s as u64) << 56), iter << 24)
}

fn sigma_vec(v: f32, b: usize) -> Tensor {
    Tensor::full(v, &[b])
}

/// Losses and diagnostics of one iteration (NaN where a term did not run).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct IterLog {
    pub step: u64,
    pub anchor: usize,
    pub backsim: bool,
    pub generator_turn: bool,
    pub loss_g: f32,
    pub loss_dmd: f32,
    pub dmd_grad_mean_abs: f32,
    pub loss_adv: f32,
    pub loss_isg: f32,
    pub loss_fake: f32,
    pub loss_d: f32,
    pub grad_norm_g: f32,
    pub grad_norm_fake: f32,
    pub grad_norm_d: f32,
    pub lr_g: f64,
    pub skipped: u32,
}

/// Optimizers of the three trainable parts.
pub struct Optimizers {
    pub gen: AdamW,
    pub fake: AdamW,
    pub disc: AdamW,
}

impl Optimizers {
    pub fn new(nets: &Networks, cfg: &DistillConfig) -> Result<Self> {
        let mk = |p: &Vec<(String, Tensor)>, lr: f64| {
            AdamW::with_groups(
                vec![ParamGroup { params: p.clone(), weight_decay: None }],
                AdamWConfig { lr, weight_decay: 0.0, ..Default::default() },
            )
        };
        Ok(Optimizers {
            gen: mk(&nets.gen_params, cfg.lr_generator)?,
            fake: mk(&nets.fake_params, cfg.lr_fake)?,
            disc: mk(&nets.disc_params, cfg.lr_disc)?,
        })
    }
}

fn tensors(p: &[(String, Tensor)]) -> Vec<Tensor> {
    p.iter().map(|(_, t)| t.clone()).collect()
}

fn finite(x: f32) -> bool {
    x.is_finite()
}

/// Runs G from pure noise through anchors 0..i (stochastic sampler, no grad) and
/// re-noises the result to anchor i: the backward-simulated x_τ.
fn backward_simulate(
    nets: &Networks,
    anchors: &Anchors,
    i: usize,
    cond: &Cond,
    shape: &[usize],
    rng: &mut Philox,
) -> Result<Tensor> {
    let _g = autograd::no_grad();
    let b = shape[0];
    let mut x = Tensor::randn(shape, rng);
    for j in 0..i {
        let s = anchors.sigma(j);
        let v = velocity(&nets.generator, &x, &sigma_vec(s, b), cond, None)?;
        let x0 = x0_from_v(&x, &v, &sigma_vec(s, b))?;
        let eps = Tensor::randn(shape, rng);
        x = add_noise(&x0, &eps, &sigma_vec(anchors.sigma(j + 1), b))?;
    }
    Ok(x)
}

/// One SenseFlow iteration. Returns its log; `bad` counts consecutive non-finite
/// updates (each such update is skipped).
pub fn iteration(
    nets: &Networks,
    opt: &mut Optimizers,
    cfg: &DistillConfig,
    anchors: &Anchors,
    data: &dyn DistillData,
    iter: u64,
) -> Result<IterLog> {
    let b = cfg.batch;
    let batch = data.batch(iter, b)?;
    let shape = batch.x0.shape().to_vec();
    let gen_turn = generator_turn(iter, cfg.ttur);
    let mut log = IterLog { step: iter, generator_turn: gen_turn, ..Default::default() };
    let nan = f32::NAN;
    (log.loss_g, log.loss_dmd, log.loss_adv, log.loss_isg, log.dmd_grad_mean_abs, log.grad_norm_g) =
        (nan, nan, nan, nan, nan, nan);

    // Anchor and x_τ (backward simulation or forward diffusion of real data).
    let i = (stream(cfg.seed, iter, S::Anchor).next_u32s(1)[0] as usize) % anchors.len();
    log.anchor = i;
    let tau = anchors.sigma(i);
    let mut brng = stream(cfg.seed, iter, S::Backsim);
    let backsim = cfg.backsim && brng.uniform_vec(1)[0] < cfg.backsim_prob;
    log.backsim = backsim;
    let mut nrng = stream(cfg.seed, iter, S::Noise);
    let x_tau = if backsim {
        // G's own samples re-noised to anchor i (pure noise when i = 0).
        backward_simulate(nets, anchors, i, &batch.cond, &shape, &mut brng)?
    } else {
        let eps = Tensor::randn(&shape, &mut nrng);
        add_noise(&batch.x0, &eps, &sigma_vec(tau, b))?
    };
    let x_tau = x_tau.detach();

    // Generator prediction (with grad only on generator turns).
    let v_g = {
        let _g = (!gen_turn).then(autograd::no_grad);
        velocity(&nets.generator, &x_tau, &sigma_vec(tau, b), &batch.cond, None)?
    };
    let x = x0_from_v(&x_tau, &v_g, &sigma_vec(tau, b))?;
    let w_adv = anchors.adv_weight(i, cfg.adv_weight);
    let refs = if cfg.gan { Some(nets.disc.reference(&batch.images)?) } else { None };

    if gen_turn {
        let mut grng = stream(cfg.seed, iter, S::Guidance);
        let gu = grng.uniform_vec(2);
        let (g_dmd, g_isg) = (cfg.dmd_guidance.draw(gu[0]), cfg.isg_guidance.draw(gu[1]));
        let guidance = |w: f32| match nets.teacher.class_name() {
            "FluxTransformer2DModel" => Guidance::Embedded(w),
            _ => Guidance::Cfg(w),
        };
        // L_DMD: both scores at a re-noised copy of the (detached) sample.
        let (x0_real, x0_fake) = {
            let _g = autograd::no_grad();
            let mut drng = stream(cfg.seed, iter, S::Dmd);
            let s = match cfg.dmd_sigma.as_str() {
                "uniform" => {
                    let u = cfg.dmd_sigma_lo + (cfg.dmd_sigma_hi - cfg.dmd_sigma_lo) * drng.uniform_vec(1)[0];
                    match anchors.shift {
                        Shift::Sd3(sh) => shift_sigma(u as f64, sh) as f32,
                        Shift::Flux { mu } => crate::diffusion::flux_shift_sigma(u as f64, mu) as f32,
                    }
                }
                _ => SigmaSampler::LogitNormal { mean: 0.0, std: 1.0 }.sample(1, &mut drng)[0],
            };
            let sv = sigma_vec(s, b);
            let eps = Tensor::randn(&shape, &mut drng);
            let xs = add_noise(&x.detach(), &eps, &sv)?;
            let vf = velocity(&nets.fake, &xs, &sv, &batch.cond, None)?;
            let vr = guided_velocity(&nets.teacher, &xs, &sv, &batch.cond, &batch.uncond, guidance(g_dmd))?;
            (x0_from_v(&xs, &vr, &sv)?, x0_from_v(&xs, &vf, &sv)?)
        };
        let (l_dmd, gmean) = dmd_loss(&x, &x0_real, &x0_fake)?;
        log.loss_dmd = l_dmd.to_scalar()?;
        log.dmd_grad_mean_abs = gmean;
        let mut loss = l_dmd;
        if let Some(refs) = &refs {
            let img = nets.decoder.decode(&x)?;
            let logits =
                nets.disc.logits(&img, &batch.text_feat, refs, cfg, &mut stream(cfg.seed, iter, S::AugGen), false)?;
            let l_adv = ops::hinge_g(&logits)?.scale(w_adv)?;
            log.loss_adv = l_adv.to_scalar()?;
            loss = loss.add(&l_adv.scale(cfg.lambda_gan)?)?;
        }
        if cfg.isg {
            let mut irng = stream(cfg.seed, iter, S::Isg);
            let s_prev = anchors.next_sigma(i);
            let s_mid = anchors.sample_mid_sigma(i, cfg.isg_margin, &mut irng)?;
            let x_tar = {
                let _g = autograd::no_grad();
                let vt = guided_velocity(
                    &nets.teacher,
                    &x_tau,
                    &sigma_vec(tau, b),
                    &batch.cond,
                    &batch.uncond,
                    guidance(g_isg),
                )?;
                let x_mid = euler_step(&x_tau, &vt, tau, s_mid)?;
                let vgm = velocity(&nets.generator, &x_mid, &sigma_vec(s_mid, b), &batch.cond, None)?;
                euler_step(&x_mid, &vgm, s_mid, s_prev)?
            };
            let x_pred = euler_step(&x_tau, &v_g, tau, s_prev)?;
            let l_isg = isg_loss(&x_pred, &x_tar, cfg.isg_huber_c)?;
            log.loss_isg = l_isg.to_scalar()?;
            loss = loss.add(&l_isg.scale(cfg.lambda_isg)?)?;
        }
        log.loss_g = loss.to_scalar()?;
        if finite(log.loss_g) {
            let mut grads = autograd::backward(&loss)?;
            // Only generator parameters update here; the heads' gradients from L_adv are dropped.
            log.grad_norm_g = clip_grad_norm(&mut grads, &tensors(&nets.gen_params), cfg.grad_clip)?;
            if finite(log.grad_norm_g) {
                let lr = lr_warmup_constant(iter / cfg.ttur, cfg.warmup, cfg.lr_generator);
                log.lr_g = lr;
                opt.gen.set_lr(lr);
                // AdamW skips parameters without a gradient entry, so only θ moves.
                opt.gen.step(&grads)?;
                if cfg.ida {
                    ida_blend(&tensors(&nets.fake_params), &tensors(&nets.gen_params), cfg.lambda_ida)?;
                }
            } else {
                log.skipped += 1;
            }
        } else {
            autograd::clear_tape();
            log.skipped += 1;
        }
    }
    autograd::clear_tape();

    // Fake score: flow matching on the detached sample.
    let xd = x.detach();
    {
        let mut frng = stream(cfg.seed, iter, S::Fake);
        let s = Tensor::from_vec(
            SigmaSampler::LogitNormal { mean: cfg.fake_logit_mean, std: cfg.fake_logit_std }.sample(b, &mut frng),
            &[b],
        )?;
        let eps = Tensor::randn(&shape, &mut frng);
        let xs = add_noise(&xd, &eps, &s)?;
        let v = velocity(&nets.fake, &xs, &s, &batch.cond.detach(), None)?;
        let loss = ops::mse_loss(&v, &eps.sub(&xd)?)?;
        log.loss_fake = loss.to_scalar()?;
        let mut grads = autograd::backward(&loss)?;
        log.grad_norm_fake = clip_grad_norm(&mut grads, &tensors(&nets.fake_params), cfg.grad_clip)?;
        if finite(log.loss_fake) && finite(log.grad_norm_fake) {
            opt.fake.set_lr(lr_warmup_constant(iter, cfg.warmup, cfg.lr_fake));
            opt.fake.step(&grads)?;
        } else {
            log.skipped += 1;
        }
    }

    // Discriminator: hinge loss weighted by w(τ), heads only.
    log.loss_d = nan;
    log.grad_norm_d = nan;
    if let Some(refs) = &refs {
        let fake_img = nets.decoder.decode(&xd)?.detach();
        let lr_ = nets.disc.logits(
            &batch.images,
            &batch.text_feat,
            refs,
            cfg,
            &mut stream(cfg.seed, iter, S::AugReal),
            true,
        )?;
        let lf =
            nets.disc.logits(&fake_img, &batch.text_feat, refs, cfg, &mut stream(cfg.seed, iter, S::AugFake), true)?;
        let loss = ops::hinge_d_real(&lr_)?.add(&ops::hinge_d_fake(&lf)?)?.scale(w_adv)?;
        log.loss_d = loss.to_scalar()?;
        let mut grads = autograd::backward(&loss)?;
        log.grad_norm_d = clip_grad_norm(&mut grads, &tensors(&nets.disc_params), cfg.grad_clip)?;
        if finite(log.loss_d) && finite(log.grad_norm_d) {
            opt.disc.set_lr(lr_warmup_constant(iter, cfg.warmup, cfg.lr_disc));
            opt.disc.step(&grads)?;
        } else {
            log.skipped += 1;
        }
    }
    autograd::clear_tape();
    Ok(log)
}

/// All tensors a checkpoint holds, by name.
fn checkpoint_tensors<'a>(
    nets: &'a Networks,
    opt_state: &'a [(String, Vec<(String, Tensor)>)],
    sn: &'a [(String, Tensor)],
) -> Vec<(String, &'a Tensor)> {
    let mut out: Vec<(String, &Tensor)> = Vec::new();
    for (prefix, params) in
        [("generator/", &nets.gen_params), ("fake/", &nets.fake_params), ("disc/", &nets.disc_params)]
    {
        out.extend(params.iter().map(|(n, t)| (format!("{prefix}{n}"), t)));
    }
    for (prefix, state) in opt_state {
        out.extend(state.iter().map(|(n, t)| (format!("{prefix}{n}"), t)));
    }
    out.extend(sn.iter().map(|(n, t)| (format!("sn/{n}"), t)));
    out
}

fn sn_state(nets: &Networks) -> Result<Vec<(String, Tensor)>> {
    nets.disc
        .heads
        .sn_states()
        .iter()
        .enumerate()
        .map(|(k, c)| {
            let u = c.u.lock().expect("sn lock").clone();
            let n = u.len();
            Ok((format!("{k}"), Tensor::from_vec(u, &[n])?))
        })
        .collect()
}

pub fn save_checkpoint(dir: &RunDir, nets: &Networks, opt: &Optimizers, cfg: &DistillConfig, iter: u64) -> Result<()> {
    let opt_state = vec![
        ("opt_gen/".to_string(), opt.gen.state_tensors()),
        ("opt_fake/".to_string(), opt.fake.state_tensors()),
        ("opt_disc/".to_string(), opt.disc.state_tensors()),
    ];
    let sn = sn_state(nets)?;
    let t = checkpoint_tensors(nets, &opt_state, &sn);
    let meta = serde_json::json!({ "config": cfg, "seed": cfg.seed, "rng": "per-iteration Philox streams keyed by (seed, iteration, purpose)" });
    dir.checkpoints().save(iter, &t, &meta, 2)?;
    Ok(())
}

/// Restores the newest checkpoint; returns the iteration it ended at (0 if none).
pub fn restore_checkpoint(dir: &RunDir, nets: &Networks, opt: &mut Optimizers) -> Result<u64> {
    let Some(ck) = dir.checkpoints().latest()? else { return Ok(0) };
    ck.restore_params("generator/", &nets.gen_params)?;
    ck.restore_params("fake/", &nets.fake_params)?;
    ck.restore_params("disc/", &nets.disc_params)?;
    opt.gen.load_state(&ck.with_prefix("opt_gen/"))?;
    opt.fake.load_state(&ck.with_prefix("opt_fake/"))?;
    opt.disc.load_state(&ck.with_prefix("opt_disc/"))?;
    for (k, c) in nets.disc.heads.sn_states().iter().enumerate() {
        *c.u.lock().expect("sn lock") = ck.get(&format!("sn/{k}"))?.to_vec_f32()?;
    }
    Ok(ck.step)
}

/// The loop: resumes from the latest checkpoint, runs to `cfg.iterations` (or
/// `stop_at`, for tests of interrupted runs), logs and checkpoints.
pub fn run(
    nets: &Networks,
    cfg: &DistillConfig,
    data: &dyn DistillData,
    dir: &RunDir,
    stop_at: Option<u64>,
) -> Result<Vec<IterLog>> {
    let shift = Shift::Sd3(cfg.shift);
    let shift = match &nets.teacher {
        Transformer::Flux(_) => Shift::Flux { mu: crate::diffusion::flux_mu(4096) },
        _ => shift,
    };
    let anchors = Anchors::new(cfg.anchors.clone(), shift)?;
    let mut opt = Optimizers::new(nets, cfg)?;
    let start = restore_checkpoint(dir, nets, &mut opt)?;
    if start > 0 {
        MetricsLog::truncate_after(dir.path("metrics.jsonl"), start)?;
        eprintln!("resuming distillation from iteration {start}");
    }
    let mut metrics = dir.metrics(start > 0)?;
    let end = stop_at.unwrap_or(cfg.iterations).min(cfg.iterations);
    let progress = Progress::new("distill", start, end);
    let mut logs = Vec::new();
    let mut bad_in_a_row = 0u64;
    let mut skipped_total = 0u64;
    for iter in start + 1..=end {
        let log = iteration(nets, &mut opt, cfg, &anchors, data, iter)?;
        if log.skipped > 0 {
            bad_in_a_row += 1;
            skipped_total += log.skipped as u64;
            if bad_in_a_row >= cfg.max_bad_steps {
                return Err(Error::Msg(format!(
                    "distill: {bad_in_a_row} iterations in a row had non-finite losses or gradients (last at {iter}); \
                     stopped, the last good checkpoint is intact in {}",
                    dir.root.display()
                )));
            }
        } else {
            bad_in_a_row = 0;
        }
        if iter % cfg.log_every == 0 || iter == end {
            let mut v = serde_json::to_value(&log).expect("log serializes");
            v["it_per_s"] = progress.rate(iter).into();
            v["skipped_total"] = skipped_total.into();
            metrics.log(&v)?;
        }
        progress.update(
            iter,
            &format!(
                "fake {:.4} D {:.3}{}",
                log.loss_fake,
                log.loss_d,
                if log.generator_turn { format!(" G {:.4}", log.loss_g) } else { String::new() }
            ),
        );
        if iter % cfg.checkpoint_every == 0 || iter == end {
            save_checkpoint(dir, nets, &opt, cfg, iter)?;
        }
        logs.push(log);
    }
    Ok(logs)
}
