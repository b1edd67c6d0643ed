//! `senseflow train-teacher`: trains the demo world's teacher (tiny SD3 MMDiT, pixel
//! space) jointly with its tiny CLIP-architecture text encoder on captioned shapes,
//! then exports the EMA weights as loadable folders.

use senseflow::data::{ShapesConfig, ShapesDataset};
use senseflow::demo::teacher::{train, TeacherRun, TeacherTrainConfig};
use senseflow::demo::{self, text::DemoTextEncoder};
use senseflow::models::mmdit::SD3Transformer2DModel;
use senseflow::nn::{ParamStore, VarBuilder};
use senseflow::train::RunDir;
use senseflow::{DType, Tensor};
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// Run name: outputs go to runs/NAME/.
    #[arg(long, default_value = "demo-teacher")]
    run: String,
    #[arg(long, default_value_t = TeacherTrainConfig::default().steps)]
    steps: u64,
    #[arg(long, default_value_t = TeacherTrainConfig::default().batch)]
    batch: usize,
    #[arg(long, default_value_t = TeacherTrainConfig::default().lr)]
    lr: f64,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Where to export the trained teacher and text encoder (default runs/NAME/export).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn copy(params: &[(String, Tensor)]) -> senseflow::Result<Vec<(String, Tensor)>> {
    params.iter().map(|(n, t)| Ok((n.clone(), Tensor::from_f32(t.to_vec_f32()?, t.shape(), t.dtype())?))).collect()
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let cfg = TeacherTrainConfig { steps: a.steps, batch: a.batch, lr: a.lr, seed: a.seed, ..Default::default() };
    let dir = RunDir::create(PathBuf::from("runs").join(&a.run))?;
    dir.save_config(&serde_json::json!({
        "train": cfg, "teacher": demo::teacher_config(), "text_encoder": demo::text_config(), "image_size": demo::IMAGE_SIZE,
    }))?;
    let data = ShapesDataset::new(ShapesConfig { size: demo::IMAGE_SIZE, ..Default::default() }, cfg.seed)?;
    let text_store = ParamStore::new();
    let text = DemoTextEncoder::new(
        &VarBuilder::fresh(&text_store, DType::F32, cfg.seed ^ 0x7e47),
        demo::tokenizer()?,
        demo::text_config(),
    )?;
    let teacher_store = ParamStore::new();
    let teacher = SD3Transformer2DModel::new(
        demo::teacher_config(),
        &VarBuilder::fresh(&teacher_store, DType::F32, cfg.seed ^ 0x7eac),
    )?;
    let mut params: Vec<(String, Tensor)> =
        teacher_store.named().into_iter().map(|(n, t)| (format!("transformer.{n}"), t)).collect();
    params.extend(text_store.named().into_iter().map(|(n, t)| (format!("text_encoder.{n}"), t)));
    let ema = copy(&params)?;
    eprintln!(
        "train-teacher: teacher {} params, text encoder {} params, {} steps of batch {}",
        teacher_store.num_elements(),
        text_store.num_elements(),
        cfg.steps,
        cfg.batch
    );
    let mut run = TeacherRun { teacher: &teacher, text: &text, params, ema, data: &data };
    train(&mut run, &cfg, &dir)?;
    let out = a.out.clone().unwrap_or_else(|| dir.path("export"));
    let pick = |prefix: &str| -> Vec<(String, Tensor)> {
        run.ema.iter().filter_map(|(n, t)| n.strip_prefix(prefix).map(|k| (k.to_string(), t.clone()))).collect()
    };
    // Shipped in f16 (half the size; the loader computes in f32 from the stored values).
    demo::export_teacher(&out.join("teacher"), &demo::teacher_config(), &pick("transformer."), DType::F16)?;
    demo::save_text_encoder(&out.join("text_encoder"), &text, &pick("text_encoder."))?;
    super::plots::loss_curve(&dir, "loss", "train-teacher flow-matching loss")?;
    eprintln!("exported EMA teacher and text encoder to {}", out.display());
    Ok(())
}
