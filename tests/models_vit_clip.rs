//! Parity with transformers for the DINOv2 and CLIP text encoders: tiny models with
//! random non-zero weights (tools/fixtures/models_vit_clip.py), every output
//! (last_hidden_state, pooler_output, each hidden state, text_embeds) and the gradients of
//! L = Σ output·grad_out (last_hidden_state, pooler_output, the penultimate hidden state,
//! text_embeds) with respect to pixel_values and every parameter. Also: the tokenizers
//! against transformers' CLIPTokenizer, the bicubic weights against torch, and the
//! parameter counts of the presets against transformers.
//!
//! Budget: 1e-4 relative to each reference tensor's largest magnitude (f32 on CPU vs the
//! float64 transformers run); torch's own f32 run of these models is within 1.4e-6
//! (`torch_f32_vs_f64_rel_err` in case.json). Gradients that vanish identically (attention
//! key biases, DINOv2's unused mask_token; `params_with_zero_grad`) have a reference of pure
//! rounding noise, so they are bounded by the budget times the model's largest parameter
//! gradient instead.

use senseflow::io;
use senseflow::models::clip_text::{self, Tokenizer};
use senseflow::models::vit::{self, bicubic_matrix};
use senseflow::nn::ParamStore;
use senseflow::testing::rel_err;
use senseflow::{DType, Result, Tensor};
use std::collections::BTreeMap;
use std::path::PathBuf;

const BUDGET: f32 = 1e-4;

fn case_dir(case: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models")).join(case)
}

fn case_json(case: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(case_dir(case).join("case.json")).expect("case.json");
    serde_json::from_str(&text).expect("case.json parses")
}

/// Compares `outputs` (every reference output must be produced), backpropagates
/// L = Σ outputs[k]·grad_out.k and compares the gradients of `inputs` and of every
/// parameter in `store` with the reference.
fn check_case(
    case: &str,
    outputs: &BTreeMap<String, Tensor>,
    inputs: &[(&str, &Tensor)],
    store: &ParamStore,
) -> Result<()> {
    let reference = io::load(case_dir(case).join("outputs.safetensors"))?;
    let info = case_json(case);
    let zero_grad: Vec<&str> = info["params_with_zero_grad"]
        .as_array()
        .expect("params_with_zero_grad")
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let mut failures = Vec::new();
    let mut worst = (0f32, String::new());
    let mut check = |what: String, got: &Tensor, want: &Tensor| -> Result<()> {
        if got.shape() != want.shape() {
            failures.push(format!("{what}: shape {:?}, expected {:?}", got.shape(), want.shape()));
            return Ok(());
        }
        let (e, scale) = rel_err(&got.to_vec_f32()?, &want.to_vec_f32()?, 1e-12);
        if e > worst.0 {
            worst = (e, what.clone());
        }
        if e > BUDGET {
            failures.push(format!("{what}: max|err|/scale = {e:.3e} (scale {scale:.3e})"));
        }
        Ok(())
    };

    let reference_outputs: Vec<&str> = reference
        .tensors()
        .map(|(k, _)| k)
        .filter(|k| !k.starts_with("grad") && !k.starts_with("param_grad."))
        .collect();
    let produced: Vec<&str> = outputs.keys().map(String::as_str).collect();
    assert_eq!(produced, reference_outputs, "{case}: produced outputs vs reference outputs");
    for (name, t) in outputs {
        check(name.clone(), t, &reference.get_as(name, DType::F32)?)?;
    }
    let mut loss: Option<Tensor> = None;
    for (key, _) in reference.tensors() {
        let Some(out) = key.strip_prefix("grad_out.") else {
            continue;
        };
        let term = outputs[out].mul(&reference.get_as(key, DType::F32)?)?.sum_all()?;
        loss = Some(match loss {
            Some(l) => l.add(&term)?,
            None => term,
        });
    }
    let grads = senseflow::backward(&loss.expect("a grad_out"))?;
    for (name, t) in inputs {
        let want = reference.get_as(&format!("grad.{name}"), DType::F32)?;
        let got = grads.get(t).cloned().unwrap_or_else(|| Tensor::zeros(want.shape()));
        check(format!("grad.{name}"), &got, &want)?;
    }
    let mut n_params = 0;
    let mut zero_checks = Vec::new();
    let mut model_scale = 0f32;
    for (key, _) in reference.tensors() {
        let Some(pname) = key.strip_prefix("param_grad.") else {
            continue;
        };
        let p = store.get(pname).unwrap_or_else(|| panic!("{case}: model has no parameter '{pname}'"));
        let want = reference.get_as(key, DType::F32)?;
        let got = grads.get(&p).cloned().unwrap_or_else(|| Tensor::zeros(want.shape()));
        n_params += 1;
        if zero_grad.contains(&pname) {
            zero_checks.push((pname.to_string(), got));
            continue;
        }
        model_scale = model_scale.max(want.to_vec_f32()?.iter().fold(0f32, |m, v| m.max(v.abs())));
        check(format!("param_grad.{pname}"), &got, &want)?;
    }
    assert_eq!(n_params, store.len(), "{case}: every model parameter has a reference gradient");
    for (pname, got) in &zero_checks {
        let m = got.to_vec_f32()?.iter().fold(0f32, |m, v| m.max(v.abs()));
        println!("{case}: {pname} (identically zero) max|grad| = {m:.3e} = {:.3e} of the largest", m / model_scale);
        if m > BUDGET * model_scale {
            failures.push(format!("param_grad.{pname}: {m:.3e} should vanish (largest grad {model_scale:.3e})"));
        }
    }
    println!(
        "{case}: {} outputs, {} input and {n_params} parameter gradients; worst {:.3e} at {}",
        outputs.len(),
        inputs.len(),
        worst.0,
        worst.1
    );
    assert!(failures.is_empty(), "{case}: {} tensors over budget:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}

fn check_vit(case: &str) -> Result<()> {
    senseflow::autograd::clear_tape();
    let dir = case_dir(case);
    let (model, store) = vit::load(&dir, DType::F32, true)?;
    let inputs = io::load(dir.join("inputs.safetensors"))?;
    let x = inputs.get_as("pixel_values", DType::F32)?.var();
    let out = model.forward(&x)?;
    let mut outputs = BTreeMap::new();
    outputs.insert("last_hidden_state".to_string(), out.last_hidden_state);
    outputs.insert("pooler_output".to_string(), out.pooler_output);
    for (i, h) in out.hidden_states.into_iter().enumerate() {
        outputs.insert(format!("hidden_states.{i}"), h);
    }
    check_case(case, &outputs, &[("pixel_values", &x)], &store)
}

fn check_clip(case: &str) -> Result<()> {
    senseflow::autograd::clear_tape();
    let dir = case_dir(case);
    let (model, store) = clip_text::load(&dir, DType::F32, true)?;
    let inputs = io::load(dir.join("inputs.safetensors"))?;
    let ids = inputs.get_i64("input_ids")?;
    let shape = inputs.meta("input_ids").expect("input_ids").shape.clone();
    let out = model.forward(&ids, [shape[0], shape[1]])?;
    let mut outputs = BTreeMap::new();
    outputs.insert("last_hidden_state".to_string(), out.last_hidden_state);
    outputs.insert("pooler_output".to_string(), out.pooler_output);
    for (i, h) in out.hidden_states.into_iter().enumerate() {
        outputs.insert(format!("hidden_states.{i}"), h);
    }
    if let Some(t) = out.text_embeds {
        outputs.insert("text_embeds".to_string(), t);
    }
    check_case(case, &outputs, &[], &store)
}

#[test]
fn dinov2_interp_upsampled_positions() -> Result<()> {
    check_vit("dinov2_interp")
}

#[test]
fn dinov2_registers_swiglu_antialiased_downsampling() -> Result<()> {
    check_vit("dinov2_registers_swiglu")
}

#[test]
fn dinov2_native_grid_no_qkv_bias() -> Result<()> {
    check_vit("dinov2_native_nobias")
}

#[test]
fn clip_text_quick_gelu_legacy_layout() -> Result<()> {
    check_clip("clip_text_quick_gelu")
}

#[test]
fn clip_text_with_projection_gelu() -> Result<()> {
    check_clip("clip_text_projection_gelu")
}

#[test]
fn tokenizers_match_transformers() -> Result<()> {
    for case in ["clip_text_quick_gelu", "clip_text_projection_gelu"] {
        let check = &case_json(case)["tokenizer_check"];
        let texts: Vec<&str> = check["texts"].as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
        let max_length = check["max_length"].as_u64().unwrap() as usize;
        let want: Vec<i64> = check["input_ids"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_i64().unwrap()))
            .collect();
        let tk = Tokenizer::from_folder(case_dir(case))?;
        assert_eq!(tk.model_max_length(), Some(max_length), "{case}: model_max_length");
        let got = tk.encode(&texts, max_length)?;
        println!("{case} ({}): {got:?}", check["source"]);
        assert_eq!(got, want, "{case}: ids differ from transformers' CLIPTokenizer");
    }
    // The quick_gelu case's model inputs are the tokenizer's output.
    let ids = io::load(case_dir("clip_text_quick_gelu").join("inputs.safetensors"))?.get_i64("input_ids")?;
    let tk = Tokenizer::from_folder(case_dir("clip_text_quick_gelu"))?;
    let texts = case_json("clip_text_quick_gelu")["tokenizer_check"]["texts"].clone();
    let texts: Vec<&str> = texts.as_array().unwrap().iter().map(|t| t.as_str().unwrap()).collect();
    assert_eq!(tk.encode(&texts, 16)?, ids);
    Ok(())
}

#[test]
fn bicubic_matrix_matches_torch() -> Result<()> {
    let f = io::load(case_dir("bicubic_weights.safetensors"))?;
    let mut worst = 0f32;
    let mut n = 0;
    for (key, _) in f.tensors() {
        let parts: Vec<&str> = key.split('.').collect();
        let (n_in, n_out): (usize, usize) = (parts[1].parse().unwrap(), parts[2].parse().unwrap());
        let got = bicubic_matrix(n_in, n_out, parts[0] == "aa");
        let want = f.get_as(key, DType::F32)?.to_vec_f32()?;
        let err = got.iter().zip(&want).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        // torch computes the weights in f32, we in f64 (see bicubic_matrix): its rounding.
        assert!(err <= 2e-6, "{key}: max|err| {err:e}\ngot  {got:?}\nwant {want:?}");
        worst = worst.max(err);
        n += 1;
    }
    println!("bicubic weights: {n} matrices, max|err| {worst:.3e}");
    Ok(())
}

#[test]
fn preset_parameter_counts_match_transformers() -> Result<()> {
    // transformers 5.24 `num_parameters()` of the models built from the published configs.
    let want = [
        ("dinov2-small", 22_056_576),
        ("dinov2-base", 86_580_480),
        ("dinov2-large", 304_368_640),
        ("dinov2-giant", 1_136_480_768),
        ("dinov2-with-registers-small", 22_058_112),
        ("dinov2-with-registers-base", 86_583_552),
        ("dinov2-with-registers-large", 304_372_736),
        ("dinov2-with-registers-giant", 1_136_486_912),
    ];
    for (name, n) in want {
        assert_eq!(vit::Config::preset(name)?.num_parameters()?, n, "{name}");
    }
    let want = [("clip-l", 123_060_480), ("clip-l-projection", 123_650_304), ("clip-g-projection", 694_659_840)];
    for (name, n) in want {
        assert_eq!(clip_text::Config::preset(name)?.num_parameters()?, n, "{name}");
    }
    assert!(vit::Config::preset("dinov2-huge").is_err());
    Ok(())
}

#[test]
fn configs_are_strict() {
    let origin = std::path::Path::new("config.json");
    let base = serde_json::json!({
        "architectures": ["Dinov2Model"], "model_type": "dinov2", "hidden_size": 32,
        "num_attention_heads": 2, "num_hidden_layers": 1, "image_size": 28, "patch_size": 14,
        "torch_dtype": "float32", "transformers_version": "4.31.0", "_name_or_path": "x",
        "out_features": ["stage1"], "out_indices": [1], "stage_names": ["stem", "stage1"]
    });
    vit::Config::from_json(&base, origin).expect("metadata keys are ignored");
    let bad = |patch: serde_json::Value| {
        let mut v = base.clone();
        for (k, x) in patch.as_object().unwrap() {
            v[k] = x.clone();
        }
        let e = vit::Config::from_json(&v, origin).expect_err("rejected").to_string();
        println!("{e}");
        e
    };
    assert!(bad(serde_json::json!({"use_new_thing": true})).contains("use_new_thing"));
    assert!(bad(serde_json::json!({"hidden_act": "mish"})).contains("mish"));
    assert!(bad(serde_json::json!({"num_register_tokens": 4})).contains("num_register_tokens"));
    assert!(bad(serde_json::json!({"image_size": [28, 42]})).contains("non-square"));
    assert!(bad(serde_json::json!({"architectures": ["Dinov2ForImageClassification"]})).contains("Dinov2ForImage"));
    assert!(bad(serde_json::json!({"model_type": "vit"})).contains("not a DINOv2 config"));

    let clip = serde_json::json!({
        "architectures": ["CLIPTextModelWithProjection"], "model_type": "clip_text_model",
        "hidden_size": 32, "num_attention_heads": 4, "dropout": 0.0, "pad_token_id": 1,
        "bos_token_id": 0, "eos_token_id": 2, "initializer_factor": 1.0
    });
    let c = clip_text::Config::from_json(&clip, origin).expect("a transformers 4 CLIP config");
    assert!(c.with_projection && c.eos_token_id == Some(2));
    let mut v = clip.clone();
    v["eos_token_id"] = serde_json::json!([2, 3]);
    println!("{}", clip_text::Config::from_json(&v, origin).expect_err("list eos"));
    v = clip.clone();
    v["pruned_heads"] = serde_json::json!({"0": [1]});
    assert!(clip_text::Config::from_json(&v, origin).expect_err("pruned heads").to_string().contains("pruned_heads"));
}

#[test]
fn bad_inputs_are_errors() -> Result<()> {
    let (vit_model, _) = vit::load(case_dir("dinov2_native_nobias"), DType::F32, false)?;
    for shape in [vec![1, 4, 42, 42], vec![1, 3, 10, 42], vec![3, 42, 42]] {
        let e = vit_model.forward(&Tensor::zeros(&shape)).expect_err("bad pixel_values");
        println!("{e}");
        assert!(e.to_string().contains("pixel_values"));
    }
    let (clip, _) = clip_text::load(case_dir("clip_text_quick_gelu"), DType::F32, false)?;
    let e = clip.forward(&[0; 17], [1, 17]).expect_err("too long").to_string();
    assert!(e.contains("max_position_embeddings"), "{e}");
    let e = clip.forward(&[0, 1, 554], [1, 3]).expect_err("id outside the vocabulary").to_string();
    assert!(e.contains("554") && e.contains("vocabulary"), "{e}");
    let e = clip.forward(&[0, 1, 2], [2, 2]).expect_err("shape").to_string();
    println!("{e}");
    Ok(())
}

#[test]
fn frozen_backbone_passes_input_gradients() -> Result<()> {
    // The SenseFlow use: DINOv2 frozen, gradients flow through it to the generator's image.
    senseflow::autograd::clear_tape();
    let dir = case_dir("dinov2_interp");
    let (model, store) = vit::load(&dir, DType::F32, false)?;
    let reference = io::load(dir.join("outputs.safetensors"))?;
    let x = io::load(dir.join("inputs.safetensors"))?.get_as("pixel_values", DType::F32)?.var();
    let out = model.forward(&x)?;
    let n = model.cfg.num_hidden_layers;
    let mut loss = out.pooler_output.mul(&reference.get_as("grad_out.pooler_output", DType::F32)?)?.sum_all()?;
    for (name, t) in [
        ("last_hidden_state", &out.last_hidden_state),
        (&format!("hidden_states.{}", n - 1), &out.hidden_states[n - 1]),
    ] {
        let g = reference.get_as(&format!("grad_out.{name}"), DType::F32)?;
        loss = loss.add(&t.mul(&g)?.sum_all()?)?;
    }
    let grads = senseflow::backward(&loss)?;
    let got = grads.get(&x).expect("pixel_values gradient").to_vec_f32()?;
    let want = reference.get_as("grad.pixel_values", DType::F32)?.to_vec_f32()?;
    let (e, _) = rel_err(&got, &want, 1e-12);
    println!("frozen: grad.pixel_values max|err|/scale = {e:.3e}");
    assert!(e <= BUDGET);
    for (name, p) in store.named() {
        assert!(!p.tracks_grad() && grads.get(&p).is_none(), "{name} is frozen");
    }
    Ok(())
}

#[test]
fn bf16_compute_follows_f32() -> Result<()> {
    // bf16 storage (ops compute in f32): outputs within a few bf16 roundings of f32.
    let dir = case_dir("dinov2_registers_swiglu");
    let x = io::load(dir.join("inputs.safetensors"))?.get_as("pixel_values", DType::F32)?;
    let (m32, _) = vit::load(&dir, DType::F32, false)?;
    let (m16, _) = vit::load(&dir, DType::BF16, false)?;
    let want = m32.forward(&x)?.last_hidden_state.to_vec_f32()?;
    let out = m16.forward(&x.to_dtype(DType::BF16)?)?;
    assert_eq!(out.last_hidden_state.dtype(), DType::BF16);
    let (e, _) = rel_err(&out.last_hidden_state.to_vec_f32()?, &want, 1e-12);
    println!("dinov2 bf16 vs f32: {e:.3e}");
    assert!(e < 5e-2, "{e}");
    assert!(m16.forward(&x).is_err(), "f32 pixels into a bf16 model are rejected");

    let dir = case_dir("clip_text_projection_gelu");
    let inputs = io::load(dir.join("inputs.safetensors"))?;
    let ids = inputs.get_i64("input_ids")?;
    let (c32, _) = clip_text::load(&dir, DType::F32, false)?;
    let (c16, _) = clip_text::load(&dir, DType::BF16, false)?;
    let want = c32.forward(&ids, [3, 12])?.text_embeds.unwrap().to_vec_f32()?;
    let got = c16.forward(&ids, [3, 12])?.text_embeds.unwrap().to_vec_f32()?;
    let (e, _) = rel_err(&got, &want, 1e-12);
    println!("clip bf16 vs f32: {e:.3e}");
    assert!(e < 5e-2, "{e}");
    Ok(())
}
