//! `senseflow sample` (a PNG grid from a model folder and prompts) and `senseflow eval`
//! (prompt adherence and FD-T of a model on the demo's fixed prompt set).

use senseflow::data::png::{write_png_grid, GridLayout};
use senseflow::demo::eval::{captions, generate, prompt_set, score, EvalReport, Sampler};
use senseflow::demo::{self, anchor_sigmas, DemoWorld};
use senseflow::diffusion::{inference_sigmas, Shift};
use senseflow::models::load_transformer;
use senseflow::senseflow::nets::Guidance;
use senseflow::{io, DType, Tensor};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Clone)]
pub struct SamplingArgs {
    /// Euler steps for a teacher (ignored with --sampler stochastic, which uses --anchors).
    #[arg(long, default_value_t = 28)]
    steps: usize,
    /// euler (teacher or generator) or stochastic (the few-step generator's sampler).
    #[arg(long, default_value = "euler")]
    sampler: String,
    /// Classifier-free guidance weight (1 = none); generators run without guidance.
    #[arg(long, default_value_t = 4.0)]
    cfg: f32,
    /// Generator anchors on the 1000-step grid (with --sampler stochastic, or euler --few-step).
    #[arg(long, value_delimiter = ',', default_value = "999,749,499,249")]
    anchors: Vec<usize>,
    /// Euler on the anchors instead of an N-step schedule ("Ours (Euler)").
    #[arg(long)]
    few_step: bool,
    /// Time shift of the schedule (the demo teacher trains unshifted: 1.0; SD3: 3.0).
    #[arg(long, default_value_t = 1.0)]
    shift: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

impl SamplingArgs {
    fn sampler(&self) -> anyhow::Result<Sampler> {
        Ok(match self.sampler.as_str() {
            "stochastic" => Sampler::Stochastic { sigmas: anchor_sigmas(&self.anchors, self.shift)? },
            "euler" => {
                let sigmas = if self.few_step {
                    anchor_sigmas(&self.anchors, self.shift)?
                } else {
                    inference_sigmas(self.steps, Shift::Sd3(self.shift))
                };
                let guidance = if self.cfg == 1.0 { Guidance::None } else { Guidance::Cfg(self.cfg) };
                Sampler::Euler { sigmas, guidance }
            }
            s => anyhow::bail!("unknown sampler '{s}' (euler or stochastic)"),
        })
    }
}

#[derive(clap::Args)]
pub struct SampleArgs {
    /// A diffusers SD3Transformer2DModel folder (teacher or distilled generator).
    #[arg(long)]
    model: PathBuf,
    /// The demo text encoder folder (default: the shipped assets).
    #[arg(long)]
    text_encoder: Option<PathBuf>,
    /// Prompts (repeat the flag); each is sampled --n times.
    #[arg(long, required = true)]
    prompt: Vec<String>,
    #[arg(long, default_value_t = 4)]
    n: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[arg(long, default_value = "samples.png")]
    out: PathBuf,
}

pub fn sample(a: &SampleArgs) -> anyhow::Result<()> {
    let text = demo::load_text_encoder(
        &a.text_encoder.clone().unwrap_or_else(|| demo::assets_dir().join("text_encoder")),
        false,
    )?;
    let (model, _) = load_transformer(&a.model, DType::F32, false)?;
    let prompts: Vec<String> = a.prompt.iter().flat_map(|p| std::iter::repeat_n(p.clone(), a.n)).collect();
    let t = std::time::Instant::now();
    let images = generate(
        &model,
        &text,
        &prompts,
        &a.sampling.sampler()?,
        [3, demo::IMAGE_SIZE, demo::IMAGE_SIZE],
        a.sampling.seed,
        64,
    )?;
    let secs = t.elapsed().as_secs_f64();
    write_png_grid(&a.out, &images, GridLayout { cols: a.n, pad: 2, zoom: 4 })?;
    eprintln!(
        "wrote {} samples ({} prompts × {}) to {} in {secs:.2} s",
        prompts.len(),
        a.prompt.len(),
        a.n,
        a.out.display()
    );
    Ok(())
}

#[derive(clap::Args)]
pub struct EvalArgs {
    /// Model folder to evaluate (default: the shipped demo teacher).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Demo assets (teacher, text encoder, evaluator).
    #[arg(long)]
    assets: Option<PathBuf>,
    /// Number of (prompt, noise) pairs.
    #[arg(long, default_value_t = 256)]
    n: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Teacher CFG weight of the 28-step FD-T reference.
    #[arg(long, default_value_t = 4.0)]
    reference_cfg: f32,
    /// Output folder for eval.json and the side-by-side image.
    #[arg(long, default_value = "runs/eval")]
    out: PathBuf,
}

/// The teacher's 28-step CFG features of the fixed prompt set (cached next to the run).
pub fn reference_features(
    world: &DemoWorld,
    n: usize,
    seed: u64,
    cfg: f32,
    cache: &Path,
) -> anyhow::Result<(Vec<f32>, Tensor)> {
    let labels = prompt_set(n, seed);
    if cache.exists() {
        let f = io::load(cache)?;
        if f.contains("features") && f.meta("features").is_some_and(|m| m.shape[0] == n) {
            return Ok((f.get("features")?.to_vec_f32()?, f.get("images")?.contiguous()?));
        }
    }
    let sampler = Sampler::Euler { sigmas: inference_sigmas(28, Shift::Sd3(1.0)), guidance: Guidance::Cfg(cfg) };
    let images = generate(
        &world.teacher,
        &world.text,
        &captions(&labels),
        &sampler,
        [3, demo::IMAGE_SIZE, demo::IMAGE_SIZE],
        seed,
        64,
    )?;
    let (_, feats) = score(&world.evaluator, &images, &labels, None)?;
    let ft = Tensor::from_vec(feats.clone(), &[n, demo::evaluator::FEATURE_DIM])?;
    if let Some(p) = cache.parent() {
        std::fs::create_dir_all(p)?;
    }
    io::save(cache, &[("features".into(), &ft), ("images".into(), &images)], None)?;
    Ok((feats, images))
}

/// Evaluates one model on the fixed prompt set; returns the report and its images.
pub fn evaluate(
    world: &DemoWorld,
    model: &senseflow::models::Transformer,
    s: &SamplingArgs,
    n: usize,
    reference: &[f32],
) -> anyhow::Result<(EvalReport, Tensor)> {
    let labels = prompt_set(n, s.seed);
    let images = generate(
        model,
        &world.text,
        &captions(&labels),
        &s.sampler()?,
        [3, demo::IMAGE_SIZE, demo::IMAGE_SIZE],
        s.seed,
        64,
    )?;
    let (report, _) = score(&world.evaluator, &images, &labels, Some(reference))?;
    Ok((report, images))
}

pub fn eval(a: &EvalArgs) -> anyhow::Result<()> {
    let assets = a.assets.clone().unwrap_or_else(demo::assets_dir);
    let world = DemoWorld::load(&assets)?;
    std::fs::create_dir_all(&a.out)?;
    let (reference, ref_images) = reference_features(
        &world,
        a.n,
        a.sampling.seed,
        a.reference_cfg,
        &a.out.join("teacher28_reference.safetensors"),
    )?;
    let owned;
    let model = match &a.model {
        Some(dir) => {
            owned = load_transformer(dir, DType::F32, false)?.0;
            &owned
        }
        None => &world.teacher,
    };
    let (report, images) = evaluate(&world, model, &a.sampling, a.n, &reference)?;
    let json = serde_json::json!({ "model": a.model.as_ref().map_or("assets teacher".into(), |p| p.display().to_string()), "sampler": a.sampling.sampler.clone(), "steps": a.sampling.steps, "cfg": a.sampling.cfg, "report": report });
    io::atomic_write_json(a.out.join("eval.json"), &json)?;
    let k = 16.min(a.n);
    let side = senseflow::ops::concat(&[&ref_images.narrow(0, 0, k)?, &images.narrow(0, 0, k)?], 0)?;
    write_png_grid(a.out.join("side_by_side.png"), &side, GridLayout { cols: k, pad: 2, zoom: 3 })?;
    println!("{}", serde_json::to_string_pretty(&json)?);
    Ok(())
}
