//! `senseflow forward --op encode|decode` on AutoencoderKL folders and `senseflow bench vae`,
//! as a user meets them: outputs equal to the diffusers fixtures, one-line errors (exit 1)
//! for a missing --op, --op on another model class, a missing or mis-shaped input.

use senseflow::testing::rel_err;
use senseflow::{io, DType, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn senseflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_senseflow")).args(args).output().expect("running the senseflow binary")
}

fn fixture(case: &str) -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures")).join(case)
}

fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("senseflow-cli-vae-{}-{name}", std::process::id()))
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Exit code 1 and exactly one `error: ` line containing every needle.
fn assert_one_line_error(out: &Output, needles: &[&str]) {
    let err = stderr(out);
    println!("stderr: {err}");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("error: ") && !err.contains("panicked") && !err.contains("internal error"), "{err}");
    for n in needles {
        assert!(err.contains(n), "missing '{n}' in: {err}");
    }
}

fn run_op(op: &str, out: &Path) -> Output {
    let dir = fixture("vae/vae_sd3_like");
    senseflow(&[
        "forward",
        "--model",
        dir.to_str().unwrap(),
        "--inputs",
        dir.join("inputs.safetensors").to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--op",
        op,
    ])
}

#[test]
fn encode_and_decode_match_diffusers() {
    let want = io::load(fixture("vae/vae_sd3_like/outputs.safetensors")).unwrap();
    for (op, names) in [("encode", &["latent_mean", "latent_logvar"][..]), ("decode", &["sample"][..])] {
        let out_path = temp_path(&format!("{op}.safetensors"));
        let out = run_op(op, &out_path);
        assert!(out.status.success(), "{}", stderr(&out));
        let got = io::load(&out_path).unwrap();
        for name in names {
            let (g, w) = (got.get_as(name, DType::F32).unwrap(), want.get_as(name, DType::F32).unwrap());
            assert_eq!(g.shape(), w.shape());
            let (e, _) = rel_err(&g.to_vec_f32().unwrap(), &w.to_vec_f32().unwrap(), 1e-12);
            println!("forward --op {op}: {name} {:?} max|err|/scale = {e:.3e}", g.shape());
            assert!(e < 1e-4, "{name}: {e}");
        }
        assert_eq!(got.tensors().count(), names.len());
        std::fs::remove_file(&out_path).unwrap();
    }
}

#[test]
fn vae_without_op_is_an_error() {
    let dir = fixture("vae/vae_sd3_like");
    let out = senseflow(&[
        "forward",
        "--model",
        dir.to_str().unwrap(),
        "--inputs",
        dir.join("inputs.safetensors").to_str().unwrap(),
        "--out",
        temp_path("none.safetensors").to_str().unwrap(),
    ]);
    assert_one_line_error(&out, &["vae_sd3_like", "--op encode or --op decode"]);
}

#[test]
fn op_on_a_transformer_is_an_error() {
    let dir = fixture("models/sd3_basic");
    let out = senseflow(&[
        "forward",
        "--model",
        dir.to_str().unwrap(),
        "--inputs",
        dir.join("inputs.safetensors").to_str().unwrap(),
        "--out",
        temp_path("t.safetensors").to_str().unwrap(),
        "--op",
        "decode",
    ]);
    assert_one_line_error(&out, &["sd3_basic", "--op applies to AutoencoderKL", "SD3Transformer2DModel"]);
    let out = senseflow(&["forward", "--model", "x", "--inputs", "y", "--out", "z", "--op", "sample"]);
    assert_eq!(out.status.code(), Some(2), "an unknown --op value is a usage error");
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let dir = fixture("vae/vae_sd3_like");
    let inputs = temp_path("bad-inputs.safetensors");
    // A latent with 4 channels for a 16-channel VAE, and no `sample`.
    let z = Tensor::zeros(&[1, 4, 6, 6]);
    io::save(&inputs, &[("z".to_string(), &z)], None).unwrap();
    let run = |op: &str| {
        senseflow(&[
            "forward",
            "--model",
            dir.to_str().unwrap(),
            "--inputs",
            inputs.to_str().unwrap(),
            "--out",
            temp_path("bad-out.safetensors").to_str().unwrap(),
            "--op",
            op,
        ])
    };
    assert_one_line_error(&run("decode"), &["vae_sd3_like", "decode", "'z'", "[1, 4, 6, 6]", "[B, 16, H, W]"]);
    assert_one_line_error(&run("encode"), &["bad-inputs.safetensors", "missing input tensor 'sample'"]);
    std::fs::remove_file(&inputs).unwrap();
}

#[test]
fn bench_vae_prints_one_json_object() {
    let out = senseflow(&[
        "--threads",
        "1",
        "bench",
        "vae",
        "--config",
        "sdxl",
        "--latent",
        "2",
        "--backward",
        "--recompute",
        "--repeats",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s = String::from_utf8_lossy(&out.stdout);
    println!("{s}");
    assert_eq!(s.lines().count(), 1);
    let v: serde_json::Value = serde_json::from_str(s.trim()).unwrap();
    assert_eq!(v["bench"], "vae_decode");
    assert_eq!(v["image"], serde_json::json!([3, 16, 16]));
    assert_eq!(v["decoder_parameters"], 49_490_199);
    assert_eq!(v["recompute"], true);
    assert_eq!(v["threads"], 1);
    for key in ["forward_ms", "forward_backward_ms", "forward_gflop", "peak_rss_mib", "tape_nodes_after_forward"] {
        assert!(v[key].as_f64().is_some_and(|x| x > 0.0), "{key}: {}", v[key]);
    }
    let out = senseflow(&["bench", "vae", "--config", "sd2"]);
    assert_one_line_error(&out, &["unknown AutoencoderKL preset 'sd2'"]);
}
