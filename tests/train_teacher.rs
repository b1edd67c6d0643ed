//! A short flow-matching training run of a small demo-architecture teacher and text
//! encoder: the loss falls, metrics and checkpoints are written, and resuming from a
//! checkpoint continues with the same losses as an uninterrupted run.

use senseflow::data::{ShapesConfig, ShapesDataset};
use senseflow::demo::teacher::{train, TeacherRun, TeacherTrainConfig};
use senseflow::demo::text::DemoTextEncoder;
use senseflow::demo::{self};
use senseflow::models::mmdit::SD3Transformer2DModel;
use senseflow::nn::{ParamStore, VarBuilder};
use senseflow::train::{MetricsLog, RunDir};
use senseflow::{DType, Result, Tensor};

fn run(steps: u64, dir: &RunDir) -> Result<Vec<(f64, f64)>> {
    let cfg = TeacherTrainConfig {
        steps,
        batch: 8,
        lr: 2e-3,
        warmup: 5,
        log_every: 1,
        checkpoint_every: 10,
        ema_decay: 0.9,
        ..Default::default()
    };
    let data = ShapesDataset::new(ShapesConfig { size: demo::IMAGE_SIZE, supersample: 1 }, 0)?;
    let (ts, ms) = (ParamStore::new(), ParamStore::new());
    let text = DemoTextEncoder::new(&VarBuilder::fresh(&ts, DType::F32, 1), demo::tokenizer()?, demo::text_config())?;
    let mut mc = demo::teacher_config();
    mc.num_layers = 2;
    let teacher = SD3Transformer2DModel::new(mc, &VarBuilder::fresh(&ms, DType::F32, 2))?;
    let mut params: Vec<(String, Tensor)> =
        ms.named().into_iter().map(|(n, t)| (format!("transformer.{n}"), t)).collect();
    params.extend(ts.named().into_iter().map(|(n, t)| (format!("text_encoder.{n}"), t)));
    let ema = params
        .iter()
        .map(|(n, t)| Ok((n.clone(), Tensor::from_vec(t.to_vec_f32()?, t.shape())?)))
        .collect::<Result<Vec<_>>>()?;
    let mut r = TeacherRun { teacher: &teacher, text: &text, params, ema, data: &data };
    train(&mut r, &cfg, dir)?;
    MetricsLog::read_series(dir.path("metrics.jsonl"), "loss")
}

#[test]
fn loss_falls_and_resume_is_exact() -> Result<()> {
    let root = std::env::temp_dir().join(format!("senseflow-teacher-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let a = RunDir::create(root.join("a"))?;
    let losses = run(30, &a)?;
    assert_eq!(losses.len(), 30);
    let mean = |s: &[(f64, f64)]| s.iter().map(|p| p.1).sum::<f64>() / s.len() as f64;
    let (first, last) = (mean(&losses[..5]), mean(&losses[25..]));
    println!("flow-matching loss: first 5 steps {first:.4}, last 5 steps {last:.4}");
    assert!(last < 0.8 * first, "loss did not fall: {first} → {last}");
    // Stop at 20 (checkpoint), resume to 30: identical losses.
    let b = RunDir::create(root.join("b"))?;
    run(20, &b)?;
    let resumed = run(30, &b)?;
    assert_eq!(resumed.len(), 30);
    for (x, y) in losses.iter().zip(&resumed) {
        assert_eq!(x.1.to_bits(), y.1.to_bits(), "step {}", x.0);
    }
    let _ = std::fs::remove_dir_all(&root);
    Ok(())
}
