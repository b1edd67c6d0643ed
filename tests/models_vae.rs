//! AutoencoderKL parity with diffusers (tools/fixtures/models_vae.py): tiny random-weight
//! VAEs, the posterior moments of an image and the decode of a latent, and the
//! gradients of Le = Σ mean·g1 + Σ logvar·g2 (image + encoder parameters) and
//! Ld = Σ decode(z)·g (z + decoder parameters), with and without decoder recompute.
//! Also: presets (parameter counts computed with diffusers 0.42.1), strict configs, legacy
//! attention key names, the latent scaling helpers and the logvar clamp.
//!
//! Budget: 1e-4 relative to each reference tensor's largest magnitude (f32 vs the float64
//! diffusers run; plain torch f32 lands at ≤ 6.4e-6 on these cases, see case.json).

use senseflow::autograd;
use senseflow::io;
use senseflow::models::vae::{self, load_vae, AutoencoderKL, Config};
use senseflow::nn::{ParamStore, VarBuilder};
use senseflow::rng::Philox;
use senseflow::testing::rel_err;
use senseflow::{DType, Grads, Result, Tensor};
use std::path::{Path, PathBuf};

const BUDGET: f32 = 1e-4;

fn case_dir(case: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vae")).join(case)
}

/// Compares tensors, remembering the worst error and every miss.
struct Checker {
    case: String,
    worst: (f32, String),
    failures: Vec<String>,
    count: usize,
}

impl Checker {
    fn new(case: &str) -> Self {
        Checker { case: case.into(), worst: (0.0, String::new()), failures: Vec::new(), count: 0 }
    }
    /// `floor`: the smallest scale the error is measured against.
    fn check(&mut self, what: &str, got: &[f32], want: &[f32], floor: f32) {
        assert_eq!(got.len(), want.len(), "{}: {what} size", self.case);
        let (e, scale) = rel_err(got, want, floor);
        self.count += 1;
        if e > self.worst.0 {
            self.worst = (e, what.to_string());
        }
        if e > BUDGET {
            self.failures.push(format!("{what}: max|err|/scale = {e:.3e} (scale {scale:.3e})"));
        }
    }
    fn finish(self) {
        println!("{}: {} tensors, worst {:.3e} at {}", self.case, self.count, self.worst.0, self.worst.1);
        assert!(self.failures.is_empty(), "{}: over budget:\n{}", self.case, self.failures.join("\n"));
    }
}

fn grad_of(grads: &Grads, t: &Tensor) -> Result<Vec<f32>> {
    Ok(grads.get(t).map(|g| g.to_vec_f32()).transpose()?.unwrap_or_else(|| vec![0.0; t.numel()]))
}

fn check_case(case: &str, recompute: bool) -> Result<()> {
    autograd::clear_tape();
    let dir = case_dir(case);
    let (mut model, store) = load_vae(&dir, DType::F32, true)?;
    model.set_recompute(recompute);
    let inputs = io::load(dir.join("inputs.safetensors"))?;
    let outputs = io::load(dir.join("outputs.safetensors"))?;
    let out = |name: &str| -> Result<Tensor> { outputs.get_as(name, DType::F32) };
    let x = inputs.get_as("sample", DType::F32)?.var();
    let z = inputs.get_as("z", DType::F32)?.var();
    let (mean, logvar) = model.encode(&x)?;
    let sample = model.decode(&z)?;
    let label = format!("{case}{}", if recompute { " (recompute)" } else { "" });
    let mut c = Checker::new(&label);
    for (name, t) in [("latent_mean", &mean), ("latent_logvar", &logvar), ("sample", &sample)] {
        let want = out(name)?;
        assert_eq!(t.shape(), want.shape(), "{label}: {name} shape");
        let (e, _) = rel_err(&t.to_vec_f32()?, &want.to_vec_f32()?, 1e-12);
        println!("{label}: {name} {:?} max|err|/scale = {e:.3e}", t.shape());
        c.check(name, &t.to_vec_f32()?, &want.to_vec_f32()?, 1e-12);
    }
    let le = mean.mul(&out("grad_out.mean")?)?.sum_all()?.add(&logvar.mul(&out("grad_out.logvar")?)?.sum_all()?)?;
    let ld = sample.mul(&out("grad_out.sample")?)?.sum_all()?;
    let grads = senseflow::backward(&le.add(&ld)?)?;
    c.check("grad.sample", &grad_of(&grads, &x)?, &out("grad.sample")?.to_vec_f32()?, 1e-12);
    c.check("grad.z", &grad_of(&grads, &z)?, &out("grad.z")?.to_vec_f32()?, 1e-12);
    let mut n = 0;
    for (key, _) in outputs.tensors() {
        let Some(pname) = key.strip_prefix("param_grad.") else {
            continue;
        };
        let p = store.get(pname).unwrap_or_else(|| panic!("{label}: no parameter '{pname}'"));
        // A key bias cannot change the attention (softmax cancels q·b): its exact gradient
        // is 0 and the reference holds float64 noise, so measure it against the scale of
        // the value bias's gradient in the same attention.
        let floor = if pname.ends_with("to_k.bias") {
            let vb = out(&key.replace("to_k.bias", "to_v.bias"))?.to_vec_f32()?;
            vb.iter().fold(0f32, |m, v| m.max(v.abs()))
        } else {
            1e-12
        };
        c.check(key, &grad_of(&grads, &p)?, &out(key)?.to_vec_f32()?, floor);
        n += 1;
    }
    assert_eq!(n, store.len(), "{label}: every parameter has a reference gradient");
    c.finish();
    Ok(())
}

#[test]
fn sd3_like_non_square() -> Result<()> {
    check_case("vae_sd3_like", false)
}

#[test]
fn sd3_like_recompute() -> Result<()> {
    check_case("vae_sd3_like", true)
}

#[test]
fn sdxl_like_quant_convs_and_clamp() -> Result<()> {
    check_case("vae_sdxl_like", false)
}

#[test]
fn sdxl_like_recompute() -> Result<()> {
    check_case("vae_sdxl_like", true)
}

#[test]
fn no_attention_odd_sizes_and_channels() -> Result<()> {
    check_case("vae_no_attn_channels", false)
}

#[test]
fn no_attention_recompute() -> Result<()> {
    check_case("vae_no_attn_channels", true)
}

/// Decoder gradients with and without recompute are bit-identical, and the forward with
/// recompute leaves far fewer nodes (saved activations) on the tape.
#[test]
fn recompute_same_gradients_smaller_tape() -> Result<()> {
    autograd::clear_tape();
    let dir = case_dir("vae_sd3_like");
    let (mut model, store) = load_vae(&dir, DType::F32, true)?;
    let inputs = io::load(dir.join("inputs.safetensors"))?;
    let outputs = io::load(dir.join("outputs.safetensors"))?;
    let g = outputs.get_as("grad_out.sample", DType::F32)?;
    let mut run = |recompute: bool| -> Result<(usize, Vec<Vec<f32>>)> {
        model.set_recompute(recompute);
        let z = inputs.get_as("z", DType::F32)?.var();
        let y = model.decode(&z)?;
        let nodes = autograd::tape_len();
        let grads = senseflow::backward(&y.mul(&g)?.sum_all()?)?;
        let mut all = vec![grad_of(&grads, &z)?];
        for (name, p) in store.named() {
            if name.starts_with("decoder.") {
                all.push(grad_of(&grads, &p)?);
            }
        }
        Ok((nodes, all))
    };
    let (plain_nodes, plain) = run(false)?;
    let (ckpt_nodes, ckpt) = run(true)?;
    println!("tape nodes after decode forward: {plain_nodes} plain, {ckpt_nodes} with recompute");
    assert_eq!(plain.len(), ckpt.len());
    for (a, b) in plain.iter().zip(&ckpt) {
        assert_eq!(a, b, "gradients differ with recompute");
    }
    // conv_in, 3 checkpointed blocks, norm/silu/conv_out, and the loss ops.
    assert!(ckpt_nodes * 5 < plain_nodes, "{ckpt_nodes} vs {plain_nodes}");
    assert_eq!(autograd::tape_len(), 0);
    Ok(())
}

/// Under no-grad (or with a frozen decoder and an untracked input) recompute is a no-op.
#[test]
fn recompute_without_grad_records_nothing() -> Result<()> {
    autograd::clear_tape();
    let dir = case_dir("vae_sd3_like");
    let (mut model, _) = load_vae(&dir, DType::F32, false)?;
    model.set_recompute(true);
    let z = io::load(dir.join("inputs.safetensors"))?.get_as("z", DType::F32)?;
    let want = io::load(dir.join("outputs.safetensors"))?.get_as("sample", DType::F32)?.to_vec_f32()?;
    let y = model.decode(&z)?;
    assert_eq!(autograd::tape_len(), 0);
    let (e, _) = rel_err(&y.to_vec_f32()?, &want, 1e-12);
    assert!(e < BUDGET, "{e}");
    Ok(())
}

/// Frozen decoder (the generator's adversarial path): gradients reach z only.
#[test]
fn frozen_decoder_grad_to_latent_only() -> Result<()> {
    autograd::clear_tape();
    let dir = case_dir("vae_sd3_like");
    let (mut model, store) = load_vae(&dir, DType::F32, false)?;
    model.set_recompute(true);
    let inputs = io::load(dir.join("inputs.safetensors"))?;
    let outputs = io::load(dir.join("outputs.safetensors"))?;
    let z = inputs.get_as("z", DType::F32)?.var();
    let y = model.decode(&z)?;
    let grads = senseflow::backward(&y.mul(&outputs.get_as("grad_out.sample", DType::F32)?)?.sum_all()?)?;
    assert_eq!(grads.len(), 1);
    assert!(store.tensors().iter().all(|p| grads.get(p).is_none()));
    let (e, _) = rel_err(&grad_of(&grads, &z)?, &outputs.get_as("grad.z", DType::F32)?.to_vec_f32()?, 1e-12);
    println!("frozen decoder grad.z max|err|/scale = {e:.3e}");
    assert!(e < BUDGET);
    Ok(())
}

#[test]
fn presets_match_diffusers_parameter_counts() -> Result<()> {
    // AutoencoderKL(**published config) on the meta device, diffusers 0.42.1:
    // total / encoder+quant_conv / decoder+post_quant_conv.
    for (name, total, enc, n_tensors) in [
        ("sd3", 83_819_683, 34_274_208, 244),
        ("flux", 83_819_683, 34_274_208, 244),
        ("sdxl", 83_653_863, 34_163_664, 248),
    ] {
        let cfg = Config::preset(name)?;
        let store = ParamStore::new();
        AutoencoderKL::new(cfg.clone(), &VarBuilder::meta(&store))?;
        let enc_n: usize = store
            .named()
            .iter()
            .filter(|(k, _)| k.starts_with("encoder.") || k.starts_with("quant_conv."))
            .map(|(_, t)| t.numel())
            .sum();
        println!("{name}: {} parameters in {} tensors ({enc_n} encoder)", store.num_elements(), store.len());
        assert_eq!(store.num_elements(), total, "{name}");
        assert_eq!(AutoencoderKL::num_parameters(&cfg)?, total);
        assert_eq!(enc_n, enc, "{name} encoder");
        assert_eq!(store.len(), n_tensors, "{name} tensors");
        assert_eq!(cfg.downscale_factor(), 8);
    }
    let (sd3, flux, sdxl) = (Config::sd3(), Config::flux(), Config::sdxl());
    assert_eq!((sd3.latent_channels, sd3.shift_factor, sd3.use_quant_conv), (16, Some(0.0609), false));
    assert_eq!((flux.scaling_factor, flux.shift_factor), (0.3611, Some(0.1159)));
    assert_eq!((sdxl.latent_channels, sdxl.shift_factor, sdxl.use_post_quant_conv), (4, None, true));
    assert!(Config::preset("sd2").is_err());
    Ok(())
}

/// The published vae/config.json files parse to the presets.
#[test]
fn published_configs_parse_to_presets() -> Result<()> {
    let blocks = r#""down_block_types": ["DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D","DownEncoderBlock2D"],
        "up_block_types": ["UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D","UpDecoderBlock2D"],
        "block_out_channels": [128, 256, 512, 512], "act_fn": "silu", "force_upcast": true, "in_channels": 3,
        "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 1024"#;
    let sd3 = format!(
        r#"{{"_class_name": "AutoencoderKL", "_diffusers_version": "0.29.0.dev0", {blocks}, "latent_channels": 16,
        "latents_mean": null, "latents_std": null, "scaling_factor": 1.5305, "shift_factor": 0.0609,
        "use_post_quant_conv": false, "use_quant_conv": false}}"#
    );
    let flux = format!(
        r#"{{"_class_name": "AutoencoderKL", "_diffusers_version": "0.30.0.dev0", {blocks}, "latent_channels": 16,
        "mid_block_add_attention": true, "scaling_factor": 0.3611, "shift_factor": 0.1159,
        "use_post_quant_conv": false, "use_quant_conv": false}}"#
    );
    let sdxl = format!(
        r#"{{"_class_name": "AutoencoderKL", "_diffusers_version": "0.20.0.dev0", "_name_or_path": "",
        {blocks}, "latent_channels": 4, "scaling_factor": 0.13025}}"#
    );
    for (json, want) in [(sd3, Config::sd3()), (flux, Config::flux()), (sdxl, Config::sdxl())] {
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(Config::from_json(&v, Path::new("config.json"))?, want);
    }
    Ok(())
}

#[test]
fn config_errors_are_clear() {
    let parse = |extra: &str| {
        let v: serde_json::Value =
            serde_json::from_str(&format!(r#"{{"_class_name": "AutoencoderKL", "block_out_channels": [32] {extra}}}"#))
                .unwrap();
        Config::from_json(&v, Path::new("vae/config.json")).map(|_| ()).unwrap_err().to_string()
    };
    let cases = [
        (r#", "use_tiling": true"#, "use_tiling"),
        (r#", "down_block_types": ["AttnDownEncoderBlock2D"]"#, "AttnDownEncoderBlock2D"),
        (r#", "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D"]"#, "one entry per block_out_channels"),
        (r#", "act_fn": "mish""#, "mish"),
        (r#", "norm_num_groups": 5"#, "norm_num_groups = 5"),
        (r#", "latents_mean": [0.1, 0.2, 0.3, 0.4]"#, "together"),
        (r#", "latents_mean": [0,0,0,0], "latents_std": [1,1,1,1], "shift_factor": 0.1"#, "shift_factor"),
    ];
    for (extra, needle) in cases {
        let e = parse(extra);
        println!("{e}");
        assert!(e.contains("vae/config.json") && e.contains(needle), "{e}");
    }
    let v: serde_json::Value = serde_json::from_str(r#"{"_class_name": "UNet2DConditionModel"}"#).unwrap();
    assert!(Config::from_json(&v, Path::new("c.json")).unwrap_err().to_string().contains("UNet2DConditionModel"));
}

#[test]
fn bad_inputs_are_errors() -> Result<()> {
    let (model, _) = load_vae(case_dir("vae_sd3_like"), DType::F32, false)?;
    let e = model.decode(&Tensor::zeros(&[1, 4, 6, 6])).unwrap_err().to_string();
    assert!(e.contains("'z'") && e.contains("[B, 16, H, W]"), "{e}");
    let e = model.encode(&Tensor::zeros(&[3, 24, 40])).unwrap_err().to_string();
    assert!(e.contains("'sample'"), "{e}");
    let e = model.encode(&Tensor::zeros(&[1, 3, 1, 40])).unwrap_err().to_string();
    assert!(e.contains("downscale factor 2"), "{e}");
    Ok(())
}

/// Old checkpoints name the attention projections query/key/value/proj_attn; diffusers
/// renames them on load, and so do we.
#[test]
fn legacy_attention_key_names_load() -> Result<()> {
    let src = case_dir("vae_sd3_like");
    let dst = std::env::temp_dir().join(format!("senseflow-vae-legacy-{}", std::process::id()));
    std::fs::create_dir_all(&dst).unwrap();
    std::fs::copy(src.join("config.json"), dst.join("config.json")).unwrap();
    let weights = io::load(src.join("diffusion_pytorch_model.safetensors"))?;
    let renamed: Vec<(String, Tensor)> = weights
        .tensors()
        .map(|(k, _)| {
            let new = k
                .replace(".to_q.", ".query.")
                .replace(".to_k.", ".key.")
                .replace(".to_v.", ".value.")
                .replace(".to_out.0.", ".proj_attn.");
            Ok((new, weights.get(k)?))
        })
        .collect::<Result<_>>()?;
    assert!(renamed.iter().any(|(k, _)| k.ends_with("attentions.0.proj_attn.weight")));
    let refs: Vec<(String, &Tensor)> = renamed.iter().map(|(k, t)| (k.clone(), t)).collect();
    io::save(dst.join("diffusion_pytorch_model.safetensors"), &refs, None)?;
    let (legacy, _) = load_vae(&dst, DType::F32, false)?;
    let (current, _) = load_vae(&src, DType::F32, false)?;
    let z = io::load(src.join("inputs.safetensors"))?.get_as("z", DType::F32)?;
    assert_eq!(legacy.decode(&z)?.to_vec_f32()?, current.decode(&z)?.to_vec_f32()?);
    std::fs::remove_dir_all(&dst).unwrap();
    Ok(())
}

#[test]
fn latent_scaling_helpers_follow_the_pipelines() -> Result<()> {
    let mut rng = Philox::new(7);
    let z = Tensor::randn(&[2, 16, 3, 5], &mut rng);
    let zv = z.to_vec_f32()?;
    let model = |cfg: Config| -> Result<AutoencoderKL> {
        let store = ParamStore::new();
        AutoencoderKL::new(cfg, &VarBuilder::meta(&store))
    };
    // SD3: latents = (z − 0.0609)·1.5305 (img2img), z = latents/1.5305 + 0.0609 (decode).
    let sd3 = model(Config::sd3())?;
    let lat = sd3.latents_from_mean(&z)?.to_vec_f32()?;
    for (l, &v) in lat.iter().zip(&zv) {
        assert_eq!(*l, (v - 0.0609f32) * 1.5305f32);
    }
    let back = sd3.z_from_latents(&Tensor::from_slice(&lat, z.shape())?)?.to_vec_f32()?;
    for (b, &l) in back.iter().zip(&lat) {
        assert_eq!(*b, l / 1.5305f32 + 0.0609f32);
    }
    let (e, _) = rel_err(&back, &zv, 1e-6);
    assert!(e < 1e-6, "round trip {e}");
    // SDXL: no shift.
    let sdxl = model(Config::sdxl())?;
    let z4 = z.narrow(1, 0, 4)?.contiguous()?;
    let lat = sdxl.latents_from_z(&z4)?.to_vec_f32()?;
    for (l, v) in lat.iter().zip(z4.to_vec_f32()?) {
        assert_eq!(*l, v * 0.13025f32);
    }
    // Per-channel statistics (SDXL pipeline form).
    let cfg = Config {
        latents_mean: Some(vec![0.1, -0.2, 0.3, 0.0]),
        latents_std: Some(vec![2.0, 0.5, 1.0, 4.0]),
        ..Config::sdxl()
    };
    let m = model(cfg)?;
    let lat = m.latents_from_z(&z4)?;
    let back = m.z_from_latents(&lat)?.to_vec_f32()?;
    let (lv, zv4) = (lat.to_vec_f32()?, z4.to_vec_f32()?);
    for (i, (&l, &v)) in lv.iter().zip(&zv4).enumerate() {
        let c = (i / 15) % 4;
        let (mu, sd) = ([0.1f32, -0.2, 0.3, 0.0][c], [2.0f32, 0.5, 1.0, 4.0][c]);
        assert_eq!(l, (v - mu) * 0.13025 / sd);
    }
    let (e, _) = rel_err(&back, &zv4, 1e-6);
    assert!(e < 1e-6, "round trip {e}");
    Ok(())
}

#[test]
fn posterior_sample_and_clamp() -> Result<()> {
    let mean = Tensor::from_slice(&[1.0, -2.0, 0.5], &[3])?;
    let logvar = Tensor::from_slice(&[0.0, 2.0, -4.0], &[3])?;
    let noise = Tensor::from_slice(&[0.5, -1.0, 2.0], &[3])?;
    let s = vae::posterior_sample(&mean, &logvar, &noise)?.to_vec_f32()?;
    let want = [1.5, -2.0 - 1f32.exp(), 0.5 + 2.0 * (-2f32).exp()];
    for (a, b) in s.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "{a} vs {b}");
    }
    // torch.clamp: the bounds themselves pass the gradient.
    let x = Tensor::from_slice(&[-31.0, -30.0, 0.0, 20.0, 25.0, f32::NAN], &[6])?.var();
    let y = vae::clamp(&x, vae::LOGVAR_MIN, vae::LOGVAR_MAX)?;
    let yv = y.to_vec_f32()?;
    assert_eq!(&yv[..5], &[-30.0, -30.0, 0.0, 20.0, 20.0]);
    assert!(yv[5].is_nan());
    let g = Tensor::from_slice(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], &[6])?;
    let grads = senseflow::backward(&y.mul(&g)?.sum_all()?)?;
    assert_eq!(grads.get(&x).unwrap().to_vec_f32()?, vec![0.0, 2.0, 3.0, 4.0, 0.0, 0.0]);
    Ok(())
}

#[test]
fn force_upcast_decides_the_compute_dtype() {
    let sdxl = Config::sdxl();
    assert_eq!(sdxl.compute_dtype(DType::F16), DType::F32);
    assert_eq!(sdxl.compute_dtype(DType::BF16), DType::BF16);
    let fixed = Config { force_upcast: false, ..sdxl };
    assert_eq!(fixed.compute_dtype(DType::F16), DType::F16);
}
