//! AdamW against torch.optim.AdamW, bf16 master weights, state save/restore,
//! gradient clipping against torch.nn.utils.clip_grad_norm_, the warm-up schedule and EMA.

use senseflow::optim::{clip_grad_norm, ema_update, lr_warmup_constant, AdamW, AdamWConfig, ParamGroup};
use senseflow::rng::Philox;
use senseflow::tensor::bf16_round;
use senseflow::testing::{check_close, Fixture};
use senseflow::{DType, Grads, Result, Tensor};
use std::collections::HashMap;

/// f32 updates vs float64 torch after 5 steps: each step adds a few roundings of
/// values of the parameters' scale.
const TOL: f32 = 1e-5;

fn fixture(case: &str) -> Result<Fixture> {
    Fixture::load(format!("{}/tests/fixtures/ops/optim/{case}.safetensors", env!("CARGO_MANIFEST_DIR")))
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, &mut Philox::new(seed))
}

#[test]
fn adamw_matches_torch() -> Result<()> {
    for case in ["adamw_wd0.01", "adamw_wd0.0"] {
        let f = fixture(case)?;
        let cfg = AdamWConfig {
            lr: f.params["lr"].as_f64().unwrap(),
            beta1: f.params["beta1"].as_f64().unwrap(),
            beta2: f.params["beta2"].as_f64().unwrap(),
            eps: f.params["eps"].as_f64().unwrap(),
            weight_decay: f.params["weight_decay"].as_f64().unwrap(),
        };
        let n = f.param_usize("params")?;
        // Fresh storage: the optimizer writes in place and must not touch the fixture.
        let params: Vec<Tensor> = (0..n)
            .map(|i| {
                let p = f.get(&format!("p.p{i}"))?;
                Ok(Tensor::from_vec(p.to_vec_f32()?, p.shape())?.var())
            })
            .collect::<Result<_>>()?;
        let mut opt = AdamW::new(params.clone(), cfg)?;
        for step in 1..=f.param_usize("steps")? {
            let mut grads = Grads::new();
            for (i, p) in params.iter().enumerate() {
                if let Some(g) = f.tensors.get(&format!("g.s{step}.p{i}")) {
                    grads.insert(p, g.clone());
                }
            }
            opt.step(&grads)?;
            for (i, p) in params.iter().enumerate() {
                check_close(
                    &format!("{case} step {step} param {i}"),
                    &p.to_vec_f32()?,
                    &f.get(&format!("p.s{step}.p{i}"))?.to_vec_f32()?,
                    TOL,
                )?;
            }
        }
        let state: HashMap<String, Tensor> = opt.state_tensors().into_iter().collect();
        for i in 0..n {
            for m in ["exp_avg", "exp_avg_sq"] {
                let got = state[&format!("{i}.{m}")].to_vec_f32()?;
                check_close(&format!("{case} {m} {i}"), &got, &f.get(&format!("{m}.p{i}"))?.to_vec_f32()?, TOL)?;
            }
        }
        // Parameter 2 had no gradient at step 3: skipped, its step count lags.
        assert_eq!(opt.state("0").unwrap().step, 5);
        assert_eq!(opt.state("2").unwrap().step, 4);
        assert_eq!(state["2.step"].to_scalar()?, 4.0);
    }
    Ok(())
}

/// Runs `steps` AdamW steps on `param` with gradients 1 + 0.3·noise from a fixed
/// stream (a steady direction, so each Adam step moves a weight by about lr).
fn run_adamw(
    param: &Tensor,
    cfg: AdamWConfig,
    steps: usize,
    after_step: impl Fn(&Tensor) -> Result<()>,
) -> Result<AdamW> {
    let mut opt =
        AdamW::with_groups(vec![ParamGroup { params: vec![("w".into(), param.clone())], weight_decay: None }], cfg)?;
    let mut rng = Philox::new(99);
    for _ in 0..steps {
        let mut grads = Grads::new();
        grads.insert(param, Tensor::randn(param.shape(), &mut rng).affine(0.3, 1.0)?);
        opt.step(&grads)?;
        after_step(param)?;
    }
    Ok(opt)
}

#[test]
fn bf16_parameters_keep_an_f32_master() -> Result<()> {
    // lr 1e-4 on weights of size ~1: each update is ~1e-4, below half a bf16 ulp
    // (≥ 2^-9 ≈ 2e-3 for |w| ≥ 0.5), so rounding every step freezes most weights, while
    // 200 steps move them by ~2e-2, several ulps.
    let cfg = AdamWConfig { lr: 1e-4, weight_decay: 0.01, ..AdamWConfig::default() };
    let init: Vec<f32> = randn(&[13, 11], 1).to_vec_f32()?.into_iter().map(bf16_round).collect();
    let steps = 200;

    let reference = Tensor::from_vec(init.clone(), &[13, 11])?.var();
    run_adamw(&reference, cfg, steps, |_| Ok(()))?;
    let reference = reference.to_vec_f32()?;

    let p16 = Tensor::from_f32(init.clone(), &[13, 11], DType::BF16)?.var();
    let opt = run_adamw(&p16, cfg, steps, |_| Ok(()))?;
    assert_eq!(p16.dtype(), DType::BF16);
    let master = opt.state("w").unwrap().master.clone().expect("bf16 parameter has a master copy");
    // The master follows exactly the f32 run (same kernel, same inputs)...
    assert_eq!(master, reference);
    // ...and the stored parameter is its rounding.
    assert_eq!(p16.to_vec_f32()?, master.iter().map(|&v| bf16_round(v)).collect::<Vec<_>>());

    // Naive bf16 updates (round the parameter after every step, no master) lose the
    // small steps: most weights never move and end far from the f32 run's rounding.
    let naive = Tensor::from_vec(init.clone(), &[13, 11])?.var();
    run_adamw(&naive, cfg, steps, |p| p.assign_f32(&p.to_vec_f32()?.into_iter().map(bf16_round).collect::<Vec<_>>()))?;
    let naive = naive.to_vec_f32()?;
    let mean_err =
        |v: &[f32]| v.iter().zip(&reference).map(|(a, b)| (a - b).abs() as f64).sum::<f64>() / v.len() as f64;
    println!(
        "mean |bf16 param − f32 run|: with master {:.3e}, naive {:.3e}",
        mean_err(&p16.to_vec_f32()?),
        mean_err(&naive)
    );
    let frozen = naive.iter().zip(&init).filter(|(a, b)| a == b).count();
    let off = naive.iter().zip(&reference).filter(|(&a, &b)| a != bf16_round(b)).count();
    println!("naive: {frozen}/{} weights never moved, {off} differ from the rounded f32 run", init.len());
    assert!(frozen > init.len() / 2 && off > init.len() / 2, "naive bf16 updates should lose the small steps");
    Ok(())
}

#[test]
fn state_roundtrip_resumes_exactly() -> Result<()> {
    let cfg = AdamWConfig { lr: 3e-3, ..AdamWConfig::default() };
    let init = randn(&[7, 5], 2).to_vec_f32()?;
    let make = |dtype| -> Result<Tensor> { Ok(Tensor::from_f32(init.clone(), &[7, 5], dtype)?.var()) };
    for dtype in [DType::F32, DType::BF16] {
        let grads_at = |p: &Tensor, k: u64| {
            let mut g = Grads::new();
            g.insert(p, randn(&[7, 5], 1000 + k));
            g
        };
        // Uninterrupted: 5 steps.
        let a = make(dtype)?;
        let mut opt_a = AdamW::new(vec![a.clone()], cfg)?;
        for k in 0..5 {
            opt_a.step(&grads_at(&a, k))?;
        }
        // Interrupted after 3: new parameter (weights restored), new optimizer, load state.
        let b = make(dtype)?;
        let mut opt_b = AdamW::new(vec![b.clone()], cfg)?;
        for k in 0..3 {
            opt_b.step(&grads_at(&b, k))?;
        }
        let saved: HashMap<String, Tensor> = opt_b.state_tensors().into_iter().collect();
        let names: Vec<&str> = {
            let mut n: Vec<&str> = saved.keys().map(|s| s.as_str()).collect();
            n.sort();
            n
        };
        let want: &[&str] = if dtype == DType::F32 {
            &["0.exp_avg", "0.exp_avg_sq", "0.step"]
        } else {
            &["0.exp_avg", "0.exp_avg_sq", "0.master", "0.step"]
        };
        assert_eq!(names, want);
        let c = Tensor::from_f32(b.to_vec_f32()?, &[7, 5], dtype)?.var();
        let mut opt_c = AdamW::new(vec![c.clone()], cfg)?;
        opt_c.load_state(&saved)?;
        for k in 3..5 {
            opt_c.step(&grads_at(&c, k))?;
        }
        assert_eq!(c.to_vec_f32()?, a.to_vec_f32()?, "{dtype}: resumed run matches");
        assert_eq!(opt_c.state("0"), opt_a.state("0"));
        // A missing or misshapen tensor is an error and leaves the state alone.
        let mut broken = saved.clone();
        broken.remove("0.exp_avg_sq");
        assert!(opt_c.load_state(&broken).is_err());
        broken.insert("0.exp_avg_sq".into(), Tensor::zeros(&[5, 7]));
        assert!(opt_c.load_state(&broken).is_err());
        assert_eq!(opt_c.state("0"), opt_a.state("0"));
    }
    Ok(())
}

#[test]
fn param_groups_and_validation() -> Result<()> {
    let w = randn(&[4, 3], 3).var();
    let b = randn(&[4], 4).var();
    let (w0, b0) = (w.to_vec_f32()?, b.to_vec_f32()?);
    let cfg = AdamWConfig { lr: 0.1, weight_decay: 0.5, ..AdamWConfig::default() };
    let groups = vec![
        ParamGroup { params: vec![("w".into(), w.clone())], weight_decay: None },
        ParamGroup { params: vec![("b".into(), b.clone())], weight_decay: Some(0.0) },
    ];
    let mut opt = AdamW::with_groups(groups, cfg)?;
    // Zero gradients: the Adam term is 0/(0 + eps) = 0, leaving only the decay.
    let mut g = Grads::new();
    g.insert(&w, Tensor::zeros(&[4, 3]));
    g.insert(&b, Tensor::zeros(&[4]));
    opt.step(&g)?;
    let want: Vec<f32> = w0.iter().map(|v| v * (1.0 - 0.1 * 0.5) as f32).collect();
    assert_eq!(w.to_vec_f32()?, want);
    assert_eq!(b.to_vec_f32()?, b0);
    // Errors: duplicate names, bad hyperparameters, gradient of the wrong shape.
    let dup = vec![ParamGroup { params: vec![("w".into(), w.clone()), ("w".into(), b.clone())], weight_decay: None }];
    assert!(AdamW::with_groups(dup, cfg).is_err());
    assert!(AdamW::new(vec![w.clone()], AdamWConfig { beta2: 1.0, ..cfg }).is_err());
    let mut bad = Grads::new();
    bad.insert(&w, Tensor::zeros(&[3, 4]));
    assert!(opt.step(&bad).is_err());
    Ok(())
}

#[test]
fn clip_grad_norm_matches_torch() -> Result<()> {
    for case in ["clip_active", "clip_inactive"] {
        let f = fixture(case)?;
        let n = f.param_usize("params")?;
        let params: Vec<Tensor> =
            (0..n).map(|i| Ok(Tensor::zeros(f.get(&format!("g.p{i}"))?.shape()).var())).collect::<Result<_>>()?;
        let mut grads = Grads::new();
        for (i, p) in params.iter().enumerate() {
            grads.insert(p, f.get(&format!("g.p{i}"))?.clone());
        }
        let norm = clip_grad_norm(&mut grads, &params, f.param_f32("max_norm")?)?;
        check_close(&format!("{case}: norm"), &[norm], &[f.get("norm")?.to_scalar()?], 1e-6)?;
        for (i, p) in params.iter().enumerate() {
            let got = grads.get(p).unwrap().to_vec_f32()?;
            check_close(&format!("{case}: grad {i}"), &got, &f.get(&format!("clipped.p{i}"))?.to_vec_f32()?, 1e-6)?;
        }
    }
    Ok(())
}

#[test]
fn clip_grad_norm_scales_shared_storage_once() -> Result<()> {
    // The tape can hand one gradient buffer to several leaves (add's backward does):
    // clipping must replace the tensors, not scale the shared buffer twice.
    let (a, b, c) = (Tensor::zeros(&[2]).var(), Tensor::zeros(&[2]).var(), Tensor::zeros(&[3]).var());
    let shared = Tensor::from_vec(vec![3.0, 4.0], &[2])?;
    let mut grads = Grads::new();
    grads.insert(&a, shared.clone());
    grads.insert(&b, shared.clone());
    let norm = clip_grad_norm(&mut grads, &[a.clone(), b.clone(), c.clone(), a.clone()], 1.0)?;
    assert!((norm - 50f32.sqrt()).abs() < 1e-6, "c has no gradient, a counts once: {norm}");
    let s = 1.0 / (50f64.sqrt() + 1e-6);
    for p in [&a, &b] {
        let g = grads.get(p).unwrap().to_vec_f32()?;
        assert!((g[0] as f64 - 3.0 * s).abs() < 1e-6 && (g[1] as f64 - 4.0 * s).abs() < 1e-6, "{g:?}");
    }
    assert_eq!(shared.to_vec_f32()?, vec![3.0, 4.0], "the shared buffer is untouched");
    assert!(grads.get(&c).is_none());
    assert_eq!(clip_grad_norm(&mut Grads::new(), &[a], 1.0)?, 0.0);
    Ok(())
}

#[test]
fn warmup_then_constant() {
    let lr = 1e-5;
    assert_eq!(lr_warmup_constant(0, 500, lr), 0.0);
    assert_eq!(lr_warmup_constant(1, 500, lr), 1e-5 / 500.0);
    assert_eq!(lr_warmup_constant(250, 500, lr), 5e-6);
    assert!(lr_warmup_constant(499, 500, lr) < lr);
    assert_eq!(lr_warmup_constant(500, 500, lr), lr);
    assert_eq!(lr_warmup_constant(10_000, 500, lr), lr);
    assert_eq!(lr_warmup_constant(0, 0, lr), lr);
}

#[test]
fn ema_blends_in_place() -> Result<()> {
    let p = randn(&[3, 5], 5);
    let e = randn(&[3, 5], 6);
    let view = e.detach(); // shares storage: sees the in-place update
    let (p0, e0) = (p.to_vec_f32()?, e.to_vec_f32()?);
    ema_update(std::slice::from_ref(&e), std::slice::from_ref(&p), 0.9)?;
    let one_m = (1.0f64 - 0.9) as f32;
    let want: Vec<f32> = e0.iter().zip(&p0).map(|(&e, &p)| e - one_m * (e - p)).collect();
    assert_eq!(view.to_vec_f32()?, want);
    ema_update(std::slice::from_ref(&e), std::slice::from_ref(&p), 0.0)?;
    check_close("ema with decay 0 copies the parameters", &e.to_vec_f32()?, &p0, 1e-7)?;
    assert!(ema_update(std::slice::from_ref(&e), &[randn(&[5, 3], 7)], 0.9).is_err());
    assert!(ema_update(std::slice::from_ref(&e), &[], 0.9).is_err());
    assert!(ema_update(&[e], &[p], 1.5).is_err());
    Ok(())
}
