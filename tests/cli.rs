//! The `senseflow` binary as a user meets it: help, `inspect` on good and broken input
//! (errors are one line on stderr, exit code 1, never a panic), and `bench matmul` JSON.

use senseflow::rng::Philox;
use senseflow::{io, DType, Tensor};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn senseflow(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_senseflow")).args(args).output().expect("running the senseflow binary")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A fresh file path under the system temp dir (the caller removes it).
fn temp_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("senseflow-cli-{}-{name}", std::process::id()))
}

/// Checks the failure contract: exit code 1, exactly one stderr line `error: ...` that
/// names `path`, and no panic.
fn assert_one_line_error(out: &Output, path: &Path) -> String {
    let err = text(&out.stderr);
    println!("stderr: {err}");
    assert_eq!(out.status.code(), Some(1), "exit code; stderr: {err}");
    assert_eq!(err.lines().count(), 1, "stderr is not one line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert!(err.contains(&path.display().to_string()), "error does not name the file: {err}");
    assert!(!err.contains("panicked") && !err.contains("internal error"), "{err}");
    err
}

#[test]
fn help_lists_the_subcommands() {
    let out = senseflow(&["--help"]);
    assert!(out.status.success());
    let s = text(&out.stdout);
    for cmd in ["inspect", "bench", "selfcheck", "--threads"] {
        assert!(s.contains(cmd), "--help does not mention {cmd}:\n{s}");
    }
    // Usage errors keep clap's exit code.
    let out = senseflow(&["no-such-command"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn inspect_prints_summary_and_table() {
    let path = temp_path("inspect.safetensors");
    let mut rng = Philox::new(1);
    let w = Tensor::randn(&[6, 4], &mut rng);
    let b = Tensor::randn(&[6], &mut rng).to_dtype(DType::BF16).unwrap();
    let e = Tensor::randn(&[10, 3], &mut rng);
    let tensors =
        vec![("proj.weight".to_string(), &w), ("proj.bias".to_string(), &b), ("embed.weight".to_string(), &e)];
    io::save(&path, &tensors, None).unwrap();

    let out = senseflow(&["inspect", path.to_str().unwrap()]);
    let s = text(&out.stdout);
    println!("{s}");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(s.contains("tensors     3"), "{s}");
    assert!(s.contains("parameters  60 (60)"), "{s}");
    assert!(s.contains("dtypes      BF16: 1 tensor, 6 params; F32: 2 tensors, 54 params"), "{s}");
    assert!(s.lines().any(|l| l.starts_with("proj.weight") && l.contains("F32") && l.ends_with("[6, 4]")), "{s}");

    let out = senseflow(&["inspect", path.to_str().unwrap(), "--filter", "proj", "--limit", "1"]);
    let s = text(&out.stdout);
    assert!(out.status.success());
    assert!(!s.contains("embed.weight") && s.contains("proj.bias") && !s.contains("proj.weight"), "{s}");
    assert!(s.contains("(1 of 2 matching tensors shown; 3 in total)"), "{s}");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn inspect_missing_path_is_one_line_error() {
    let path = temp_path("does-not-exist.safetensors");
    let err = assert_one_line_error(&senseflow(&["inspect", path.to_str().unwrap()]), &path);
    assert!(err.contains("No such file"), "{err}");
}

#[test]
fn inspect_corrupt_file_is_one_line_error() {
    let path = temp_path("corrupt.safetensors");
    let mut bytes = 40u64.to_le_bytes().to_vec();
    bytes.extend(b"{\"w\": {\"dtype\": \"F32\",\n\"shape\": oops}}    ");
    std::fs::write(&path, &bytes).unwrap();
    let out = senseflow(&["inspect", path.to_str().unwrap()]);
    std::fs::remove_file(&path).unwrap();
    let err = assert_one_line_error(&out, &path);
    assert!(err.contains("corrupt header JSON"), "{err}");
}

#[test]
fn bench_matmul_prints_one_json_object() {
    let out = senseflow(&[
        "--threads",
        "1",
        "bench",
        "matmul",
        "--m",
        "24",
        "--n",
        "20",
        "--k",
        "16",
        "--batch",
        "3",
        "--repeats",
        "3",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let s = text(&out.stdout);
    println!("{s}");
    assert_eq!(s.trim().lines().count(), 1, "{s}");
    let v: serde_json::Value = serde_json::from_str(&s).expect("valid JSON");
    assert_eq!(v["bench"], "matmul");
    assert_eq!(
        (v["m"].as_u64(), v["n"].as_u64(), v["k"].as_u64(), v["batch"].as_u64()),
        (Some(24), Some(20), Some(16), Some(3))
    );
    assert_eq!(v["threads"], 1);
    assert!(v["median_ms"].as_f64().unwrap() > 0.0 && v["gflops"].as_f64().unwrap() > 0.0, "{s}");
}

#[test]
fn inspect_model_folder_shows_the_config_class() {
    let dir = temp_path("folder");
    std::fs::create_dir_all(&dir).unwrap();
    let w = Tensor::randn(&[3, 2], &mut Philox::new(2));
    io::save(dir.join("diffusion_pytorch_model.safetensors"), &[("w".to_string(), &w)], None).unwrap();
    let config = serde_json::json!({"_class_name": "SD3Transformer2DModel"});
    io::atomic_write_json(dir.join("config.json"), &config).unwrap();
    let out = senseflow(&["inspect", dir.to_str().unwrap()]);
    std::fs::remove_dir_all(&dir).unwrap();
    let s = text(&out.stdout);
    println!("{s}");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(s.contains("class       SD3Transformer2DModel"), "{s}");
    assert!(s.contains("files       1 (diffusion_pytorch_model.safetensors)"), "{s}");
    assert!(s.contains("parameters  6 (6)"), "{s}");
}
