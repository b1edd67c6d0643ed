//! Model parity with diffusers: tiny SD3/SD3.5/FLUX models with random non-zero
//! weights (tools/fixtures/models_*.py), forward output and the gradients of
//! L = Σ sample·grad_out with respect to every input and every parameter.
//!
//! Budget: 1e-4 relative to each reference tensor's largest magnitude (f32 on CPU vs
//! the float64 diffusers run). The fixtures' `torch_f32_vs_f64_rel_err` (≤ 2.2e-6) shows
//! what plain f32 arithmetic costs on these models, so the budget leaves room for
//! summation order but not for a wrong formula.

use senseflow::io;
use senseflow::models::flux::FluxInputs;
use senseflow::models::{load_transformer, Transformer};
use senseflow::testing::rel_err;
use senseflow::{DType, Result, Tensor};
use std::path::PathBuf;

const BUDGET: f32 = 1e-4;

fn case_dir(case: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models")).join(case)
}

fn check_case(case: &str) -> Result<()> {
    senseflow::autograd::clear_tape();
    let dir = case_dir(case);
    let (model, store) = load_transformer(&dir, DType::F32, true)?;
    let inputs = io::load(dir.join("inputs.safetensors"))?;
    let outputs = io::load(dir.join("outputs.safetensors"))?;
    let get = |name: &str| -> Result<Tensor> { Ok(inputs.get_as(name, DType::F32)?.contiguous()?) };
    let x = get("hidden_states")?.var();
    let ehs = get("encoder_hidden_states")?.var();
    let pooled = get("pooled_projections")?.var();
    let t = get("timestep")?;
    let sample = match &model {
        Transformer::Mmdit(m) => m.forward(&x, &ehs, &pooled, &t)?,
        Transformer::Flux(m) => {
            let img_ids = get("img_ids")?;
            let txt_ids = get("txt_ids")?;
            let guidance = if inputs.contains("guidance") { Some(get("guidance")?) } else { None };
            m.forward(&FluxInputs {
                hidden_states: &x,
                encoder_hidden_states: &ehs,
                pooled_projections: &pooled,
                timestep: &t,
                img_ids: &img_ids,
                txt_ids: &txt_ids,
                guidance: guidance.as_ref(),
            })?
        }
    };
    let mut failures = Vec::new();
    let mut worst = (0f32, String::new());
    let mut check = |what: String, got: &[f32], want: &[f32]| {
        let (e, scale) = rel_err(got, want, 1e-12);
        if e > worst.0 {
            worst = (e, what.clone());
        }
        if e > BUDGET || got.len() != want.len() {
            failures.push(format!("{what}: max|err|/scale = {e:.3e} (scale {scale:.3e})"));
        }
    };
    let want = outputs.get_as("sample", DType::F32)?;
    assert_eq!(sample.shape(), want.shape(), "{case}: sample shape");
    let (e, _) = rel_err(&sample.to_vec_f32()?, &want.to_vec_f32()?, 1e-12);
    println!("{case}: sample max|err|/scale = {e:.3e} (budget {BUDGET:.0e})");
    check("sample".into(), &sample.to_vec_f32()?, &want.to_vec_f32()?);

    let gout = outputs.get_as("grad_out", DType::F32)?;
    let loss = sample.mul(&gout)?.sum_all()?;
    let grads = senseflow::backward(&loss)?;
    for (name, v) in [("hidden_states", &x), ("encoder_hidden_states", &ehs), ("pooled_projections", &pooled)] {
        let want = outputs.get_as(&format!("grad.{name}"), DType::F32)?.to_vec_f32()?;
        let got = grads.get(v).map(|g| g.to_vec_f32()).transpose()?.unwrap_or(vec![0.0; want.len()]);
        check(format!("grad.{name}"), &got, &want);
    }
    let mut n_params = 0;
    for (key, meta) in outputs.tensors() {
        let Some(pname) = key.strip_prefix("param_grad.") else { continue };
        let p = store.get(pname).unwrap_or_else(|| panic!("{case}: model has no parameter '{pname}'"));
        let want = outputs.get_as(key, DType::F32)?.to_vec_f32()?;
        assert_eq!(p.numel(), meta.numel(), "{case}: {pname} size");
        let got = grads.get(&p).map(|g| g.to_vec_f32()).transpose()?.unwrap_or(vec![0.0; want.len()]);
        check(format!("param_grad.{pname}"), &got, &want);
        n_params += 1;
    }
    assert_eq!(n_params, store.len(), "{case}: every model parameter has a reference gradient");
    println!("{case}: {n_params} parameter gradients + 3 input gradients; worst {:.3e} at {}", worst.0, worst.1);
    assert!(failures.is_empty(), "{case}: {} tensors over budget:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}

#[test]
fn sd3_basic() -> Result<()> {
    check_case("sd3_basic")
}

#[test]
fn sd3_qknorm_rms_non_square() -> Result<()> {
    check_case("sd3_qknorm_rms")
}

#[test]
fn sd35_dual_attention_sharded() -> Result<()> {
    check_case("sd35_dual_attention")
}

#[test]
fn sd3_bf16_weights() -> Result<()> {
    check_case("sd3_bf16_weights")
}

#[test]
fn flux_guidance() -> Result<()> {
    check_case("flux_guidance")
}

#[test]
fn flux_no_guidance_sharded() -> Result<()> {
    check_case("flux_no_guidance")
}
