//! `senseflow distill` — the main job — and `senseflow ablate`.
//!
//! With no arguments `distill` distills the shipped demo teacher (assets/demo) on CPU
//! and ends by printing the evaluation table (teacher 28 steps + CFG, teacher 4 Euler
//! steps, student 4 steps). `ablate` runs the demo once per removed component and
//! writes a table shaped like the paper's Table 3.

use super::sample_eval::{evaluate, reference_features, SamplingArgs};
use clap::Parser;
use senseflow::data::png::{write_png_grid, GridLayout};
use senseflow::data::{ShapesConfig, ShapesDataset};
use senseflow::demo::backbone::VitBackbone;
use senseflow::demo::distill::DemoDistillData;
use senseflow::demo::eval::EvalReport;
use senseflow::demo::{self, DemoWorld};
use senseflow::models::{load_transformer, Transformer};
use senseflow::nn::{ParamStore, VarBuilder};
use senseflow::senseflow::config::DistillConfig;
use senseflow::senseflow::disc::DiscHeads;
use senseflow::senseflow::distill::{self, Discriminator, IdentityDecoder, Networks};
use senseflow::train::RunDir;
use senseflow::{DType, Device, Tensor};
use std::path::{Path, PathBuf};

#[derive(clap::Args, Clone)]
pub struct Args {
    /// A preset name (demo, sd35-large, sd35-medium, flux-dev) or a .toml file.
    #[arg(long, default_value = "demo")]
    preset: String,
    /// Override any preset value: --set key=value (TOML literal), repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    #[arg(long)]
    no_ida: bool,
    #[arg(long)]
    no_isg: bool,
    #[arg(long)]
    no_gan: bool,
    #[arg(long)]
    no_backsim: bool,
    /// TTUR ratio f (generator every f-th iteration).
    #[arg(long)]
    ttur: Option<u64>,
    #[arg(long)]
    iterations: Option<u64>,
    #[arg(long)]
    lambda_ida: Option<f32>,
    #[arg(long)]
    lambda_isg: Option<f32>,
    #[arg(long)]
    lambda_gan: Option<f32>,
    /// Run name: outputs in runs/NAME/ (resumes if it has a checkpoint).
    #[arg(long)]
    run: Option<String>,
    /// Teacher diffusers folder (real presets; the demo uses assets/demo/teacher).
    #[arg(long)]
    teacher: Option<PathBuf>,
    /// Training data folder (real presets: precomputed latents and text embeddings).
    #[arg(long)]
    data: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// Skip the final evaluation.
    #[arg(long)]
    no_eval: bool,
}

impl Args {
    pub fn config(&self) -> anyhow::Result<DistillConfig> {
        let mut cfg = if self.preset.ends_with(".toml") {
            let p = Path::new(&self.preset);
            DistillConfig::from_toml(&std::fs::read_to_string(p).map_err(|e| senseflow::Error::io(p, e))?, p)?
        } else {
            DistillConfig::preset(&self.preset)?
        };
        let mut sets = self.sets.clone();
        let mut flag = |k: &str, v: String| sets.push(format!("{k}={v}"));
        if self.no_ida {
            flag("ida", "false".into());
        }
        if self.no_isg {
            flag("isg", "false".into());
        }
        if self.no_gan {
            flag("gan", "false".into());
        }
        if self.no_backsim {
            flag("backsim", "false".into());
        }
        if let Some(v) = self.ttur {
            flag("ttur", v.to_string());
        }
        if let Some(v) = self.iterations {
            flag("iterations", v.to_string());
        }
        if let Some(v) = self.lambda_ida {
            flag("lambda_ida", v.to_string());
        }
        if let Some(v) = self.lambda_isg {
            flag("lambda_isg", v.to_string());
        }
        if let Some(v) = self.lambda_gan {
            flag("lambda_gan", v.to_string());
        }
        cfg.apply_overrides(&sets)?;
        Ok(cfg)
    }
}

/// Refuses real-teacher presets with what they still need.
fn check_real_preset(cfg: &DistillConfig, a: &Args) -> anyhow::Result<()> {
    if cfg.preset == "demo" {
        return Ok(());
    }
    let teacher = a.teacher.as_ref().ok_or_else(|| {
        anyhow::anyhow!("preset '{}' needs --teacher DIR (a diffusers transformer folder)", cfg.preset)
    })?;
    senseflow::models::TransformerConfig::from_folder(&senseflow::io::ModelFolder::open(teacher)?)?;
    if a.data.is_none() {
        anyhow::bail!("preset '{}' needs --data DIR (precomputed latents and text embeddings)", cfg.preset);
    }
    senseflow::backend::cuda::require(a.device)?;
    anyhow::bail!(
        "preset '{}': distilling a real teacher needs a VAE decoder for the image-domain discriminator, the \
         precomputed latent/text-embedding shards and the CUDA op dispatch; the engine does not wire these into \
         distill yet, so it refuses rather than running without them (the demo preset runs end to end)",
        cfg.preset
    )
}

/// Loads the demo networks: teacher (frozen), generator and fake score (trainable copies),
/// discriminator (frozen ViT + fresh heads).
fn demo_networks(assets: &Path, cfg: &DistillConfig) -> anyhow::Result<Networks> {
    let tdir = assets.join("teacher");
    let (teacher, _) = load_transformer(&tdir, DType::F32, false)?;
    let (generator, gs) = load_transformer(&tdir, DType::F32, true)?;
    let (fake, fs) = load_transformer(&tdir, DType::F32, true)?;
    let (vit, _) = senseflow::models::vit::load(assets.join("vit"), DType::F32, false)?;
    let backbone = VitBackbone::new(vit);
    let dims = senseflow::senseflow::distill::Backbone::level_dims(&backbone);
    let hs = ParamStore::new();
    let text_dim = demo::text_config().hidden_size;
    let heads = DiscHeads::new(
        &VarBuilder::fresh(&hs, DType::F32, cfg.seed ^ 0xd15c),
        &dims,
        text_dim,
        cfg.disc_channels,
        cfg.seed ^ 0x5eed,
    )?;
    Ok(Networks {
        teacher,
        generator,
        gen_params: gs.named(),
        fake,
        fake_params: fs.named(),
        disc: Discriminator { backbone: Box::new(backbone), heads },
        disc_params: hs.named(),
        decoder: Box::new(IdentityDecoder),
    })
}

/// One row of the evaluation table.
#[derive(serde::Serialize, Clone)]
pub struct Row {
    pub model: String,
    pub report: EvalReport,
}

fn sampling(steps: usize, sampler: &str, cfg: f32, few_step: bool, anchors: &[usize], shift: f64) -> SamplingArgs {
    let mut args = vec![
        "x".to_string(),
        "--steps".into(),
        steps.to_string(),
        "--sampler".into(),
        sampler.into(),
        "--cfg".into(),
        cfg.to_string(),
        "--shift".into(),
        shift.to_string(),
    ];
    args.push("--anchors".into());
    args.push(anchors.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","));
    if few_step {
        args.push("--few-step".into());
    }
    #[derive(clap::Parser)]
    struct P {
        #[command(flatten)]
        s: SamplingArgs,
    }
    P::parse_from(args).s
}

pub const TEACHER_CFG: f32 = 4.0;

/// Evaluates teacher (28 steps CFG, 4 Euler steps) and student (4 steps) on the fixed
/// prompt set; writes eval.json and the sample grids into `dir`.
pub fn evaluate_run(
    world: &DemoWorld,
    student: &Transformer,
    cfg: &DistillConfig,
    dir: &RunDir,
    with_teacher: bool,
) -> anyhow::Result<Vec<Row>> {
    let n = cfg.eval_samples.max(16);
    let cache = PathBuf::from("runs/eval-cache").join(format!("teacher28_cfg{TEACHER_CFG}_n{n}.safetensors"));
    let (reference, ref_images) = reference_features(world, n, 0, TEACHER_CFG, &cache)?;
    let mut rows = Vec::new();
    let mut grids: Vec<Tensor> = vec![ref_images.narrow(0, 0, 16)?];
    let mut runs: Vec<(String, &Transformer, SamplingArgs)> = Vec::new();
    if with_teacher {
        runs.push((
            "teacher 28 steps (CFG)".into(),
            &world.teacher,
            sampling(28, "euler", TEACHER_CFG, false, &cfg.anchors, cfg.shift),
        ));
        runs.push((
            "teacher 4 Euler steps (CFG)".into(),
            &world.teacher,
            sampling(4, "euler", TEACHER_CFG, false, &cfg.anchors, cfg.shift),
        ));
    }
    runs.push((
        "student 4 steps (stochastic)".into(),
        student,
        sampling(4, "stochastic", 1.0, false, &cfg.anchors, cfg.shift),
    ));
    runs.push(("student 4 steps (Euler)".into(), student, sampling(4, "euler", 1.0, true, &cfg.anchors, cfg.shift)));
    for (name, model, s) in runs {
        let (report, images) = evaluate(world, model, &s, n, &reference)?;
        if name != "teacher 28 steps (CFG)" {
            grids.push(images.narrow(0, 0, 16)?);
        }
        rows.push(Row { model: name, report });
    }
    let all = senseflow::ops::concat(&grids.iter().collect::<Vec<_>>(), 0)?;
    write_png_grid(dir.path("samples.png"), &all, GridLayout { cols: 16, pad: 2, zoom: 3 })?;
    senseflow::io::atomic_write_json(dir.path("eval.json"), &rows)?;
    Ok(rows)
}

pub fn print_table(rows: &[Row]) {
    println!("{:<32} {:>9} {:>7} {:>7} {:>9} {:>8}", "model", "adherence", "shape", "color", "position", "FD-T");
    for r in rows {
        let p = &r.report;
        println!(
            "{:<32} {:>8.1}% {:>6.1}% {:>6.1}% {:>8.1}% {:>8.3}",
            r.model,
            100.0 * p.adherence,
            100.0 * p.shape_acc,
            100.0 * p.color_acc,
            100.0 * p.position_acc,
            p.fd_t.unwrap_or(f64::NAN)
        );
    }
}

/// Runs one demo distillation to the end (resuming if the run has a checkpoint) and
/// returns the exported generator folder.
pub fn distill_demo(cfg: &DistillConfig, run: &str) -> anyhow::Result<(RunDir, PathBuf)> {
    let assets = demo::assets_dir();
    let world_text = demo::load_text_encoder(&assets.join("text_encoder"), false)?;
    let nets = demo_networks(&assets, cfg)?;
    let dir = RunDir::create(PathBuf::from("runs").join(run))?;
    dir.save_config(cfg)?;
    let data = ShapesDataset::new(ShapesConfig { size: demo::IMAGE_SIZE, ..Default::default() }, cfg.seed ^ 0xda7a)?;
    let dd = DemoDistillData { data: &data, text: &world_text };
    distill::run(&nets, cfg, &dd, &dir, None)?;
    let gen_dir = dir.path("generator");
    demo::export_teacher(&gen_dir, &demo::teacher_config(), &nets.gen_params, DType::F32)?;
    super::plots::loss_curves(&dir, &["loss_fake", "loss_dmd", "loss_isg", "loss_d"], &format!("distill {run}"))?;
    Ok((dir, gen_dir))
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let cfg = a.config()?;
    check_real_preset(&cfg, a)?;
    let run = a.run.clone().unwrap_or_else(|| format!("distill-{}", cfg.preset));
    let (dir, gen_dir) = distill_demo(&cfg, &run)?;
    eprintln!("generator exported to {}", gen_dir.display());
    if a.no_eval {
        return Ok(());
    }
    let world = DemoWorld::load(&demo::assets_dir())?;
    let (student, _) = load_transformer(&gen_dir, DType::F32, false)?;
    let rows = evaluate_run(&world, &student, &cfg, &dir, true)?;
    print_table(&rows);
    Ok(())
}

#[derive(clap::Args)]
pub struct AblateArgs {
    /// Iterations per variant (default: the demo preset's).
    #[arg(long)]
    iterations: Option<u64>,
    #[arg(long = "set", value_name = "KEY=VALUE")]
    sets: Vec<String>,
    /// Output folder for ablation.json / ablation.md.
    #[arg(long, default_value = "runs/ablate")]
    out: PathBuf,
}

/// `senseflow ablate`: the demo with each component removed, a Table-3-shaped summary.
pub fn ablate(a: &AblateArgs) -> anyhow::Result<()> {
    let variants: [(&str, &[&str]); 5] = [
        ("SenseFlow (all)", &[]),
        ("w/o IDA", &["ida=false"]),
        ("w/o ISG", &["isg=false"]),
        ("w/o GAN (VFM disc.)", &["gan=false"]),
        ("w/o backward simulation", &["backsim=false"]),
    ];
    let world = DemoWorld::load(&demo::assets_dir())?;
    std::fs::create_dir_all(&a.out)?;
    let mut table = Vec::new();
    for (i, (name, sets)) in variants.iter().enumerate() {
        let mut cfg = DistillConfig::preset("demo")?;
        let mut all: Vec<String> = a.sets.clone();
        all.extend(sets.iter().map(|s| s.to_string()));
        if let Some(n) = a.iterations {
            all.push(format!("iterations={n}"));
        }
        cfg.apply_overrides(&all)?;
        eprintln!("ablate: {name}");
        let (dir, gen_dir) = distill_demo(&cfg, &format!("ablate-{i}"))?;
        let (student, _) = load_transformer(&gen_dir, DType::F32, false)?;
        let rows = evaluate_run(&world, &student, &cfg, &dir, i == 0)?;
        for r in rows {
            let label = if r.model.starts_with("teacher") { r.model.clone() } else { format!("{name}: {}", r.model) };
            table.push(Row { model: label, report: r.report });
        }
    }
    senseflow::io::atomic_write_json(a.out.join("ablation.json"), &table)?;
    let mut md = String::from("| variant | adherence | shape | color | position | FD-T |\n|---|---|---|---|---|---|\n");
    for r in &table {
        let p = &r.report;
        md += &format!(
            "| {} | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {:.3} |\n",
            r.model,
            100.0 * p.adherence,
            100.0 * p.shape_acc,
            100.0 * p.color_acc,
            100.0 * p.position_acc,
            p.fd_t.unwrap_or(f64::NAN)
        );
    }
    std::fs::write(a.out.join("ablation.md"), &md)?;
    print_table(&table);
    Ok(())
}
