//! `senseflow forward` on transformers folders (DINOv2, CLIP text): the written outputs
//! equal the transformers reference of the parity fixtures, and bad inputs are one-line
//! errors (exit code 1) that name the offending file.

use senseflow::io;
use senseflow::testing::rel_err;
use senseflow::{DType, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn senseflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_senseflow")).args(args).output().expect("running the senseflow binary")
}

fn fixture(case: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models")).join(case)
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("senseflow-cli-vit-{}-{name}", std::process::id()))
}

fn forward(model: &Path, inputs: &Path, out: &Path) -> Output {
    senseflow(&[
        "forward",
        "--model",
        model.to_str().unwrap(),
        "--inputs",
        inputs.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ])
}

/// Runs `forward` on a fixture case and compares every written tensor with the
/// reference (1e-4 of each tensor's scale, the parity budget).
fn forward_matches_reference(case: &str, expected: &[&str]) {
    let dir = fixture(case);
    let out = temp_path(&format!("{case}.safetensors"));
    let run = forward(&dir, &dir.join("inputs.safetensors"), &out);
    let stderr = String::from_utf8_lossy(&run.stderr).into_owned();
    println!("{stderr}");
    assert!(run.status.success(), "{stderr}");
    let got = io::load(&out).unwrap();
    let want = io::load(dir.join("outputs.safetensors")).unwrap();
    let mut names: Vec<&str> = got.tensors().map(|(k, _)| k).collect();
    names.sort();
    for name in expected {
        assert!(names.contains(name), "{case}: no '{name}' in {names:?}");
    }
    for name in &names {
        let (g, w) = (got.get_as(name, DType::F32).unwrap(), want.get_as(name, DType::F32).unwrap());
        assert_eq!(g.shape(), w.shape(), "{case}: {name}");
        let (e, _) = rel_err(&g.to_vec_f32().unwrap(), &w.to_vec_f32().unwrap(), 1e-12);
        println!("{case}: {name} max|err|/scale = {e:.3e}");
        assert!(e <= 1e-4, "{case}: {name} {e:e}");
    }
    std::fs::remove_file(&out).unwrap();
}

#[test]
fn forward_dinov2_with_registers() {
    forward_matches_reference(
        "dinov2_registers_swiglu",
        &["last_hidden_state", "pooler_output", "hidden_states.0", "hidden_states.2"],
    );
}

#[test]
fn forward_clip_text_with_projection() {
    forward_matches_reference(
        "clip_text_projection_gelu",
        &["last_hidden_state", "pooler_output", "text_embeds", "hidden_states.0", "hidden_states.2"],
    );
}

/// Exit code 1, one stderr line `error: ...` naming `path` and containing `what`.
fn assert_error(out: &Output, path: &Path, what: &str) {
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    println!("{err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && !err.contains("panicked"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains(what), "{err}");
}

#[test]
fn forward_bad_inputs_are_one_line_errors() {
    let out = temp_path("bad.safetensors");
    // A CLIP folder given DINOv2's inputs: no input_ids.
    let vit_inputs = fixture("dinov2_native_nobias").join("inputs.safetensors");
    let run = forward(&fixture("clip_text_quick_gelu"), &vit_inputs, &out);
    assert_error(&run, &vit_inputs, "missing input tensor 'input_ids' (a CLIPTextModel needs it)");

    // Token ids stored as floats.
    let ids = temp_path("float_ids.safetensors");
    io::save(&ids, &[("input_ids".to_string(), &Tensor::zeros(&[1, 4]))], None).unwrap();
    let run = forward(&fixture("clip_text_quick_gelu"), &ids, &out);
    assert_error(&run, &ids, "input_ids");

    // pixel_values with the wrong channel count.
    let px = temp_path("pixels.safetensors");
    io::save(&px, &[("pixel_values".to_string(), &Tensor::zeros(&[1, 4, 42, 42]))], None).unwrap();
    let model = fixture("dinov2_native_nobias");
    let run = forward(&model, &px, &out);
    assert_error(&run, &model, "pixel_values has shape [1, 4, 42, 42]");

    // A transformers folder of a model forward does not serve.
    let dir = temp_path("bert");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), r#"{"model_type": "bert", "architectures": ["BertModel"]}"#).unwrap();
    let run = forward(&dir, &px, &out);
    assert_error(&run, &dir, "model_type Some(\"bert\")");

    std::fs::remove_dir_all(&dir).unwrap();
    for f in [&ids, &px] {
        std::fs::remove_file(f).unwrap();
    }
    assert!(!out.exists(), "no output on failure");
}
