//! PyTorch parity of the softmax, norm and modulate families: every fixture written
//! by tools/fixtures/ops_norm.py is loaded, dispatched on its `params.op`, and its
//! output and input gradients are compared with PyTorch (float64, inputs rounded to
//! float32 first). Budget: 1e-5 relative to each reference's scale; every case here
//! is well conditioned (rows of ≥ 6 values, softmax shifted by the row max), so f32
//! rounding stays well below it.

use senseflow::ops;
use senseflow::testing::Fixture;
use senseflow::{Error, Result, Tensor};
use std::path::PathBuf;

const TOL: f32 = 1e-5;

fn fixtures(family: &str) -> Result<Vec<Fixture>> {
    let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/ops")).join(family);
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| Error::io(&dir, e))?
        .map(|e| e.map(|e| e.path()).map_err(|e| Error::io(&dir, e)))
        .collect::<Result<_>>()?;
    paths.retain(|p| p.extension().is_some_and(|e| e == "safetensors"));
    paths.sort();
    paths.into_iter().map(Fixture::load).collect()
}

fn op_name(f: &Fixture) -> Result<&str> {
    f.params["op"].as_str().ok_or_else(|| Error::format(&f.path, "params.op missing"))
}

/// The fixture's inputs among `names`, in that order (absent optional inputs skipped).
fn present<'a>(f: &Fixture, names: &[&'a str]) -> Vec<&'a str> {
    names.iter().copied().filter(|k| f.tensors.contains_key(*k)).collect()
}

/// Optional inputs [x, weight?, bias?] by position in `xs`.
fn affine<'a>(names: &[&str], xs: &'a [Tensor]) -> (Option<&'a Tensor>, Option<&'a Tensor>) {
    let at = |k: &str| names.iter().position(|n| *n == k).map(|i| &xs[i]);
    (at("weight"), at("bias"))
}

/// Checks every fixture of `family`; at least `min_cases` must exist so that a
/// missing directory or a generator that stopped early fails the test.
fn check_family(family: &str, min_cases: usize) -> Result<()> {
    let all = fixtures(family)?;
    assert!(all.len() >= min_cases, "{family}: {} fixtures, expected at least {min_cases}", all.len());
    for f in &all {
        match op_name(f)? {
            op @ ("softmax" | "log_softmax") => {
                let dim =
                    f.params["dim"].as_i64().ok_or_else(|| Error::format(&f.path, "params.dim missing"))? as isize;
                let log = op == "log_softmax";
                f.check_op(
                    &["x"],
                    TOL,
                    |xs| {
                        if log {
                            ops::log_softmax(&xs[0], dim)
                        } else {
                            ops::softmax(&xs[0], dim)
                        }
                    },
                )?;
            }
            "layer_norm" => {
                let eps = f.param_f32("eps")?;
                let names = present(f, &["x", "weight", "bias"]);
                f.check_op(&names, TOL, |xs| {
                    let (w, b) = affine(&names, xs);
                    ops::layer_norm(&xs[0], w, b, eps)
                })?;
            }
            "rms_norm" => {
                let eps = f.param_f32("eps")?;
                let names = present(f, &["x", "weight"]);
                f.check_op(&names, TOL, |xs| ops::rms_norm(&xs[0], affine(&names, xs).0, eps))?;
            }
            "group_norm" => {
                let (eps, groups) = (f.param_f32("eps")?, f.param_usize("groups")?);
                let names = present(f, &["x", "weight", "bias"]);
                f.check_op(&names, TOL, |xs| {
                    let (w, b) = affine(&names, xs);
                    ops::group_norm(&xs[0], groups, w, b, eps)
                })?;
            }
            "modulate" => f.check_op(&["x", "shift", "scale"], TOL, |xs| ops::modulate(&xs[0], &xs[1], &xs[2]))?,
            "layer_norm_modulate" => {
                let eps = f.param_f32("eps")?;
                f.check_op(&["x", "shift", "scale"], TOL, |xs| ops::layer_norm_modulate(&xs[0], &xs[1], &xs[2], eps))?;
            }
            "gated_residual" => {
                f.check_op(&["residual", "gate", "y"], TOL, |xs| ops::gated_residual(&xs[0], &xs[1], &xs[2]))?
            }
            other => return Err(Error::format(&f.path, format!("unknown op '{other}'"))),
        }
    }
    Ok(())
}

#[test]
fn torch_softmax() -> Result<()> {
    check_family("softmax", 7)
}

#[test]
fn torch_norm() -> Result<()> {
    check_family("norm", 18)
}

#[test]
fn torch_modulate() -> Result<()> {
    check_family("modulate", 4)
}
