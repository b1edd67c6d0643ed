//! `senseflow forward` as a user meets it: the committed tiny diffusers folders
//! (tests/fixtures/models/<case>/) give diffusers' `sample` within 1e-4 relative to its
//! scale, and every kind of bad input (wrong model class, a config that does not match
//! the weights, missing or mis-shaped input tensors, an unavailable device, a missing
//! folder) ends with exit code 1 and one stderr line naming the problem, never a panic.

use senseflow::io;
use senseflow::testing::rel_err;
use senseflow::Tensor;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Same budget as tests/models_parity.rs: f32 engine vs the float64 diffusers reference.
const BUDGET: f32 = 1e-4;

fn case_dir(case: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models")).join(case)
}

/// A fresh directory under the system temp dir, removed (with its contents) on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("senseflow-cli-forward-{}-{n}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating a temp dir");
        TempDir(dir)
    }
    fn path(&self) -> &Path {
        &self.0
    }
    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn senseflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_senseflow")).args(args).output().expect("running the senseflow binary")
}

fn forward(model: &Path, inputs: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    senseflow(&args)
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The failure contract: exit code 1, exactly one stderr line `error: ...` containing
/// every string of `needles`, no panic, and no output file left behind.
fn assert_fails(out: &Output, out_file: &Path, needles: &[&str]) -> String {
    let err = text(&out.stderr);
    println!("stderr: {err}");
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {err}");
    assert_eq!(err.lines().count(), 1, "stderr is not one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(!err.contains("panicked") && !err.contains("internal error"), "{err}");
    for n in needles {
        assert!(err.contains(n), "error does not mention '{n}': {err}");
    }
    assert!(!out_file.exists(), "a failed run wrote {}", out_file.display());
    err
}

/// A copy of the fixture folder `case` (config.json and weights) in `tmp`, with
/// `edit` applied to its config.json.
fn copy_case(case: &str, tmp: &TempDir, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let src = case_dir(case);
    let dst = tmp.join(case);
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        if name.starts_with("diffusion_pytorch_model") || name == "config.json" {
            std::fs::copy(&p, dst.join(&name)).unwrap();
        }
    }
    let cfg_path = dst.join("config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&cfg_path).unwrap()).unwrap();
    edit(&mut cfg);
    std::fs::write(&cfg_path, serde_json::to_string_pretty(&cfg).unwrap()).unwrap();
    dst
}

/// The case's inputs with `name` left out (`None`) or replaced.
fn write_inputs(case: &str, path: &Path, name: &str, replace: Option<Tensor>) {
    let src = io::load(case_dir(case).join("inputs.safetensors")).unwrap();
    let mut tensors: Vec<(String, Tensor)> =
        src.names().filter(|n| *n != name).map(|n| (n.to_string(), src.get(n).unwrap())).collect();
    if let Some(t) = replace {
        tensors.push((name.to_string(), t));
    }
    let refs: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    io::save(path, &refs, None).unwrap();
}

fn check_forward_matches_diffusers(case: &str) {
    let tmp = TempDir::new(case);
    let dir = case_dir(case);
    let out_file = tmp.join("out.safetensors");
    let out = forward(&dir, &dir.join("inputs.safetensors"), &out_file, &[]);
    assert!(out.status.success(), "{case}: {}", text(&out.stderr));
    let got = io::load(&out_file).unwrap().get("sample").unwrap();
    let want = io::load(dir.join("outputs.safetensors")).unwrap().get("sample").unwrap();
    assert_eq!(got.shape(), want.shape(), "{case}: sample shape");
    let (e, scale) = rel_err(&got.to_vec_f32().unwrap(), &want.to_vec_f32().unwrap(), 1e-12);
    println!("{case}: sample {:?} max|err|/scale = {e:.3e} (scale {scale:.3e})", got.shape());
    assert!(e <= BUDGET, "{case}: sample differs from diffusers: {e:.3e} > {BUDGET:.0e}");
}

#[test]
fn forward_sd3_matches_diffusers() {
    check_forward_matches_diffusers("sd3_basic");
}

#[test]
fn forward_flux_matches_diffusers() {
    check_forward_matches_diffusers("flux_guidance");
}

#[test]
fn wrong_model_class_is_one_line() {
    let tmp = TempDir::new("class");
    let model = copy_case("sd3_basic", &tmp, |c| {
        c["_class_name"] = "UNet2DConditionModel".into();
    });
    let out_file = tmp.join("out.safetensors");
    let out = forward(&model, &case_dir("sd3_basic").join("inputs.safetensors"), &out_file, &[]);
    let cfg = model.join("config.json");
    assert_fails(
        &out,
        &out_file,
        &[cfg.to_str().unwrap(), "_class_name", "UNet2DConditionModel", "SD3Transformer2DModel"],
    );
}

#[test]
fn config_not_matching_weights_lists_the_keys() {
    let tmp = TempDir::new("keys");
    let inputs = case_dir("sd3_basic").join("inputs.safetensors");
    let out_file = tmp.join("out.safetensors");
    // One more layer: block 2 is missing, and block 1 (no longer the context-pre-only
    // last block) misses its context output projection and feed-forward, and its
    // context norm has 6 modulation chunks instead of 2.
    let model = copy_case("sd3_basic", &tmp, |c| c["num_layers"] = 3.into());
    let err = assert_fails(
        &forward(&model, &inputs, &out_file, &[]),
        &out_file,
        &[
            model.to_str().unwrap(),
            "do not match",
            "28 missing",
            "transformer_blocks.2.",
            "transformer_blocks.1.attn.to_add_out.weight",
            "norm1_context.linear.weight [64, 32] (expected [192, 32])",
        ],
    );
    assert!(!err.contains("unexpected"), "{err}");
    // A wider pooled projection: the same keys, one of them mis-shaped.
    std::fs::remove_dir_all(&model).unwrap();
    let model = copy_case("sd3_basic", &tmp, |c| c["pooled_projection_dim"] = 21.into());
    let err = assert_fails(
        &forward(&model, &inputs, &out_file, &[]),
        &out_file,
        &["wrong shape", "time_text_embed.text_embedder.linear_1.weight", "[32, 20]", "[32, 21]"],
    );
    assert!(!err.contains("missing"), "{err}");
    // Fewer single blocks (FLUX): the checkpoint's extra block is unexpected.
    let model = copy_case("flux_guidance", &tmp, |c| c["num_single_layers"] = 1.into());
    let inputs = case_dir("flux_guidance").join("inputs.safetensors");
    assert_fails(
        &forward(&model, &inputs, &out_file, &[]),
        &out_file,
        &[model.to_str().unwrap(), "unexpected", "single_transformer_blocks.1."],
    );
    // A different head split of the same width (FLUX): the per-head norms change shape.
    let model = copy_case("flux_guidance", &tmp, |c| {
        c["attention_head_dim"] = 8.into();
        c["num_attention_heads"] = 4.into();
        c["axes_dims_rope"] = serde_json::json!([2, 2, 4]);
    });
    assert_fails(
        &forward(&model, &inputs, &out_file, &[]),
        &out_file,
        &[model.to_str().unwrap(), "wrong shape", "norm_q.weight [16] (expected [8])"],
    );
}

#[test]
fn missing_input_tensor_is_one_line() {
    let tmp = TempDir::new("missing");
    let inputs = tmp.join("inputs.safetensors");
    let out_file = tmp.join("out.safetensors");
    write_inputs("sd3_basic", &inputs, "timestep", None);
    let out = forward(&case_dir("sd3_basic"), &inputs, &out_file, &[]);
    assert_fails(&out, &out_file, &[inputs.to_str().unwrap(), "timestep", "missing"]);
    // FLUX with guidance embeddings needs `guidance`.
    write_inputs("flux_guidance", &inputs, "guidance", None);
    let out = forward(&case_dir("flux_guidance"), &inputs, &out_file, &[]);
    assert_fails(&out, &out_file, &[inputs.to_str().unwrap(), "guidance"]);
}

#[test]
fn mis_shaped_input_is_one_line() {
    let tmp = TempDir::new("shape");
    let inputs = tmp.join("inputs.safetensors");
    let out_file = tmp.join("out.safetensors");
    // sd3_basic has in_channels 4; give it 3.
    write_inputs("sd3_basic", &inputs, "hidden_states", Some(Tensor::zeros(&[2, 3, 8, 8])));
    let out = forward(&case_dir("sd3_basic"), &inputs, &out_file, &[]);
    assert_fails(&out, &out_file, &["hidden_states", "[2, 3, 8, 8]", "[B, 4, H, W]"]);
    // flux_guidance has in_channels 16; give it 12.
    write_inputs("flux_guidance", &inputs, "hidden_states", Some(Tensor::zeros(&[2, 24, 12])));
    let out = forward(&case_dir("flux_guidance"), &inputs, &out_file, &[]);
    assert_fails(&out, &out_file, &["hidden_states", "[2, 24, 12]", "[B, N, 16]"]);
}

#[test]
fn cuda_device_on_a_cpu_build_is_one_line() {
    if cfg!(feature = "cuda") {
        return;
    }
    let tmp = TempDir::new("cuda");
    let dir = case_dir("sd3_basic");
    let out_file = tmp.join("out.safetensors");
    let out = forward(&dir, &dir.join("inputs.safetensors"), &out_file, &["--device", "cuda"]);
    assert_fails(&out, &out_file, &["built without CUDA support"]);
}

#[test]
fn nonexistent_model_dir_is_one_line() {
    let tmp = TempDir::new("nodir");
    let model = tmp.join("no-such-model");
    let out_file = tmp.join("out.safetensors");
    let out = forward(&model, &case_dir("sd3_basic").join("inputs.safetensors"), &out_file, &[]);
    assert_fails(&out, &out_file, &[model.to_str().unwrap(), "no such directory"]);
    assert!(tmp.path().exists());
}
