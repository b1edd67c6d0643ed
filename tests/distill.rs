//! SenseFlow distillation end to end on tiny freshly initialized demo-architecture
//! networks: every component runs, a stopped-and-resumed run reproduces the losses of
//! an uninterrupted one exactly, and checkpoints hold everything needed.

use senseflow::data::{ShapesConfig, ShapesDataset};
use senseflow::demo::backbone::{vit_config, VitBackbone};
use senseflow::demo::distill::DemoDistillData;
use senseflow::demo::text::DemoTextEncoder;
use senseflow::demo::{self};
use senseflow::models::mmdit::SD3Transformer2DModel;
use senseflow::models::vit::Dinov2Model;
use senseflow::models::Transformer;
use senseflow::nn::{ParamStore, VarBuilder};
use senseflow::senseflow::config::DistillConfig;
use senseflow::senseflow::disc::DiscHeads;
use senseflow::senseflow::distill::{self, Backbone, Discriminator, IdentityDecoder, IterLog, Networks};
use senseflow::train::RunDir;
use senseflow::{DType, Result};

fn tiny_teacher_config() -> senseflow::models::mmdit::Config {
    let mut c = demo::teacher_config();
    c.num_layers = 2;
    c.num_attention_heads = 2;
    c.caption_projection_dim = 64;
    c
}

/// Fresh networks with fixed seeds: the teacher's weights are shared by G and fake
/// score (copied), as `distill` does with a loaded teacher.
fn networks(cfg: &DistillConfig) -> Result<Networks> {
    let ts = ParamStore::new();
    let teacher = SD3Transformer2DModel::new(tiny_teacher_config(), &VarBuilder::fresh(&ts, DType::F32, 1).frozen())?;
    let copy = |seed_store: &ParamStore| -> Result<SD3Transformer2DModel> {
        let m = SD3Transformer2DModel::new(tiny_teacher_config(), &VarBuilder::fresh(seed_store, DType::F32, 1))?;
        Ok(m)
    };
    let (gs, fs) = (ParamStore::new(), ParamStore::new());
    let (generator, fake) = (copy(&gs)?, copy(&fs)?);
    let vs = ParamStore::new();
    let mut vc = vit_config();
    vc.num_hidden_layers = 2;
    let backbone = VitBackbone::new(Dinov2Model::new(vc, &VarBuilder::fresh(&vs, DType::F32, 2).frozen())?);
    let hs = ParamStore::new();
    let heads = DiscHeads::new(
        &VarBuilder::fresh(&hs, DType::F32, 3),
        &backbone.level_dims(),
        demo::text_config().hidden_size,
        cfg.disc_channels,
        4,
    )?;
    Ok(Networks {
        teacher: Transformer::Mmdit(teacher),
        generator: Transformer::Mmdit(generator),
        gen_params: gs.named(),
        fake: Transformer::Mmdit(fake),
        fake_params: fs.named(),
        disc: Discriminator { backbone: Box::new(backbone), heads },
        disc_params: hs.named(),
        decoder: Box::new(IdentityDecoder),
    })
}

fn config() -> Result<DistillConfig> {
    let mut cfg = DistillConfig::preset("demo")?;
    cfg.apply_overrides(&[
        "iterations=6".into(),
        "batch=2".into(),
        "ttur=2".into(),
        "checkpoint_every=3".into(),
        "log_every=1".into(),
        "disc_channels=8".into(),
        "warmup=2".into(),
    ])?;
    Ok(cfg)
}

fn temp_run(name: &str) -> RunDir {
    let p = std::env::temp_dir().join(format!("senseflow-distill-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    RunDir::create(p).unwrap()
}

fn run(stop_at: Option<u64>, dir: &RunDir) -> Result<Vec<IterLog>> {
    let cfg = config()?;
    let nets = networks(&cfg)?;
    let ts = ParamStore::new();
    let text =
        DemoTextEncoder::new(&VarBuilder::fresh(&ts, DType::F32, 5).frozen(), demo::tokenizer()?, demo::text_config())?;
    let data = ShapesDataset::new(ShapesConfig { size: demo::IMAGE_SIZE, ..Default::default() }, 9)?;
    distill::run(&nets, &cfg, &DemoDistillData { data: &data, text: &text }, dir, stop_at)
}

fn losses(l: &IterLog) -> [f32; 7] {
    [l.loss_g, l.loss_dmd, l.loss_adv, l.loss_isg, l.loss_fake, l.loss_d, l.grad_norm_fake]
}

#[test]
fn resumed_run_reproduces_the_uninterrupted_one() -> Result<()> {
    let straight_dir = temp_run("straight");
    let straight = run(None, &straight_dir)?;
    assert_eq!(straight.len(), 6);
    // Every component ran: generator turns at 2, 4, 6 with DMD, GAN and ISG terms.
    for l in &straight {
        assert!(l.loss_fake.is_finite() && l.loss_d.is_finite(), "{l:?}");
        assert_eq!(l.generator_turn, l.step % 2 == 0);
        if l.generator_turn {
            assert!(l.loss_dmd.is_finite() && l.loss_adv.is_finite() && l.loss_isg.is_finite(), "{l:?}");
        }
    }
    let resumed_dir = temp_run("resumed");
    let first = run(Some(3), &resumed_dir)?; // stops after the checkpoint at 3
    let second = run(None, &resumed_dir)?; // a fresh process would do exactly this
    assert_eq!(first.len(), 3);
    assert_eq!(second.len(), 3);
    for (a, b) in straight.iter().zip(first.iter().chain(&second)) {
        assert_eq!(a.step, b.step);
        assert_eq!(losses(a).map(f32::to_bits), losses(b).map(f32::to_bits), "iteration {}", a.step);
    }
    let lines = std::fs::read_to_string(resumed_dir.path("metrics.jsonl")).unwrap().lines().count();
    assert_eq!(lines, 6, "metrics.jsonl continues without duplicates after resuming");
    for d in [straight_dir, resumed_dir] {
        let _ = std::fs::remove_dir_all(&d.root);
    }
    Ok(())
}

#[test]
fn config_overrides_and_errors() -> Result<()> {
    let mut cfg = DistillConfig::preset("demo")?;
    cfg.apply_overrides(&[
        "ida=false".into(),
        "adv_weight=one".into(),
        "dmd_guidance={ lo = 1.5, hi = 2.5 }".into(),
        "anchors=[999, 499]".into(),
    ])?;
    assert!(!cfg.ida);
    assert_eq!(cfg.anchors, vec![999, 499]);
    assert_eq!(cfg.dmd_guidance.hi, 2.5);
    for bad in ["nope=1", "lambda_ida=1.5", "anchors=[1, 2]", "ttur=0", "ida"] {
        let e = DistillConfig::preset("demo")?.apply_overrides(&[bad.into()]).unwrap_err().to_string();
        assert!(!e.contains('\n'), "one line: {e}");
    }
    for p in ["sd35-large", "sd35-medium", "flux-dev"] {
        let c = DistillConfig::preset(p)?;
        assert_eq!(c.preset, p);
    }
    let medium = DistillConfig::preset("sd35-medium")?;
    assert_eq!((medium.ttur, medium.lambda_ida, medium.lambda_isg), (10, 0.98, 0.5));
    assert!(DistillConfig::preset("sdxl").is_err());
    Ok(())
}
