//! `senseflow train-evaluator`: trains the demo's evaluator (the measuring network of
//! `eval`) on captioned shapes drawn from a seed of its own, and exports it.

use senseflow::data::{ShapesConfig, ShapesDataset};
use senseflow::demo::classifier::{accuracy, train, ClassifierTrainConfig, Heads};
use senseflow::demo::evaluator::Evaluator;
use senseflow::demo::{self, save_folder};
use senseflow::nn::{ParamStore, VarBuilder};
use senseflow::train::RunDir;
use senseflow::DType;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct EvaluatorArgs {
    #[arg(long, default_value = "demo-evaluator")]
    run: String,
    #[arg(long, default_value_t = 800)]
    steps: u64,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    /// Dataset seed: the evaluator sees images the teacher never trained on.
    #[arg(long, default_value_t = 1000)]
    seed: u64,
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn evaluator(a: &EvaluatorArgs) -> anyhow::Result<()> {
    let cfg = ClassifierTrainConfig { steps: a.steps, batch: a.batch, lr: a.lr, warmup: 50, seed: a.seed };
    let dir = RunDir::create(PathBuf::from("runs").join(&a.run))?;
    dir.save_config(&cfg)?;
    let data = ShapesDataset::new(ShapesConfig { size: demo::IMAGE_SIZE, ..Default::default() }, a.seed)?;
    let store = ParamStore::new();
    let ev = Evaluator::new(&VarBuilder::fresh(&store, DType::F32, a.seed), demo::IMAGE_SIZE)?;
    let forward = |x: &senseflow::Tensor| -> senseflow::Result<Heads> {
        let o = ev.forward(x)?;
        Ok(Heads { shape: o.shape, color: o.color, position: o.position, size: o.size })
    };
    train("train-evaluator", &forward, &store.named(), &data, &cfg, &dir)?;
    let acc = accuracy(&forward, &data, 1024)?;
    let report = serde_json::json!({ "held_out_samples": 1024, "shape_acc": acc[0], "color_acc": acc[1], "position_acc": acc[2], "size_acc": acc[3] });
    eprintln!("evaluator held-out accuracy: {report}");
    let out = a.out.clone().unwrap_or_else(|| dir.path("export")).join("evaluator");
    save_folder(
        &out,
        "model.safetensors",
        &store.named(),
        &serde_json::json!({ "image_size": demo::IMAGE_SIZE, "accuracy": report, "train": cfg }),
        DType::F32,
    )?;
    super::plots::loss_curve(&dir, "loss", "train-evaluator cross-entropy")?;
    eprintln!("exported evaluator to {}", out.display());
    Ok(())
}

#[derive(clap::Args)]
pub struct VitArgs {
    #[arg(long, default_value = "demo-vit")]
    run: String,
    #[arg(long, default_value_t = 300)]
    steps: u64,
    #[arg(long, default_value_t = 64)]
    batch: usize,
    #[arg(long, default_value_t = 2e-3)]
    lr: f64,
    #[arg(long, default_value_t = 2000)]
    seed: u64,
    #[arg(long)]
    out: Option<PathBuf>,
}

/// `senseflow train-vit`: pre-trains the demo's DINOv2-architecture backbone on the
/// shapes labels (CLS → attribute heads) and exports it as a transformers folder.
pub fn vit(a: &VitArgs) -> anyhow::Result<()> {
    use senseflow::demo::backbone::{vit_config, VitClassifier};
    use senseflow::models::vit::Dinov2Model;
    let cfg = ClassifierTrainConfig { steps: a.steps, batch: a.batch, lr: a.lr, warmup: 50, seed: a.seed };
    let dir = RunDir::create(PathBuf::from("runs").join(&a.run))?;
    dir.save_config(&cfg)?;
    let data = ShapesDataset::new(ShapesConfig { size: demo::IMAGE_SIZE, ..Default::default() }, a.seed)?;
    let vit_store = ParamStore::new();
    let vit = Dinov2Model::new(vit_config(), &VarBuilder::fresh(&vit_store, DType::F32, a.seed))?;
    let head_store = ParamStore::new();
    let clf = VitClassifier::new(vit, &VarBuilder::fresh(&head_store, DType::F32, a.seed ^ 1))?;
    let mut params = vit_store.named();
    params.extend(head_store.named().into_iter().map(|(n, t)| (format!("heads.{n}"), t)));
    let forward = |x: &senseflow::Tensor| clf.forward(x);
    train("train-vit", &forward, &params, &data, &cfg, &dir)?;
    let acc = accuracy(&forward, &data, 1024)?;
    eprintln!("ViT held-out accuracy (shape, color, position, size): {acc:?}");
    let out = a.out.clone().unwrap_or_else(|| dir.path("export")).join("vit");
    let mut config = serde_json::to_value(vit_config())?;
    config["model_type"] = "dinov2".into();
    config["architectures"] = serde_json::json!(["Dinov2Model"]);
    save_folder(&out, "model.safetensors", &vit_store.named(), &config, DType::F32)?;
    super::plots::loss_curve(&dir, "loss", "train-vit cross-entropy")?;
    eprintln!("exported ViT to {}", out.display());
    Ok(())
}
