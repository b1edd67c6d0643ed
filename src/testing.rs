//! Test support shared by unit tests, integration tests and the GPU bundle:
//! finite-difference gradient checks, closeness reports that print the error next to
//! its budget, and the reader for PyTorch-generated fixture files.
//!
//! Tolerances are relative to the reference's largest magnitude ("scale"), the rule
//! the model-parity tests use too, and every check prints `err / scale` and the budget.

use crate::error::{Error, Result};
use crate::rng::Philox;
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::path::Path;

/// Max-abs error of `got` against `want`, relative to the largest |want| (at least `floor`).
pub fn rel_err(got: &[f32], want: &[f32], floor: f32) -> (f32, f32) {
    assert_eq!(got.len(), want.len(), "length mismatch");
    let scale = want.iter().fold(floor, |m, v| m.max(v.abs()));
    let err = got
        .iter()
        .zip(want)
        .fold(0f32, |m, (a, b)| if (a - b).is_nan() { f32::INFINITY } else { m.max((a - b).abs()) });
    (err / scale, scale)
}

/// Checks `got` against `want` within `tol` relative to the reference scale, printing
/// the figures either way; returns an error describing the miss.
pub fn check_close(what: &str, got: &[f32], want: &[f32], tol: f32) -> Result<()> {
    if got.len() != want.len() {
        return Err(Error::Msg(format!("{what}: {} values, expected {}", got.len(), want.len())));
    }
    let (rel, scale) = rel_err(got, want, 1e-6);
    println!("{what:<48} max|err|/scale = {rel:.3e} (scale {scale:.3e}, budget {tol:.1e})");
    if rel <= tol {
        Ok(())
    } else {
        Err(Error::Msg(format!("{what}: max|err|/scale = {rel:.3e} exceeds {tol:.1e}")))
    }
}

/// Finite-difference gradient check of `f` at `inputs`.
///
/// The scalar checked is L = Σ f(x)·r with fixed random weights r, so every output
/// element contributes. Analytic gradients come from the tape; numeric ones from
/// central differences with step `eps`, L accumulated in f64. At most `max_probes`
/// entries per input are probed (chosen by a fixed Philox stream), so large shapes
/// stay cheap. Central differences in f32 have truncation error O(eps²) and roundoff
/// O(u·|L|/eps); `tol` is relative to the largest numeric gradient.
pub struct GradCheck {
    pub eps: f32,
    pub tol: f32,
    pub max_probes: usize,
}

impl Default for GradCheck {
    fn default() -> Self {
        GradCheck { eps: 1e-2, tol: 2e-3, max_probes: 64 }
    }
}

impl GradCheck {
    pub fn run(&self, name: &str, inputs: &[Tensor], f: impl Fn(&[Tensor]) -> Result<Tensor>) -> Result<()> {
        crate::autograd::clear_tape();
        let vars: Vec<Tensor> = inputs.iter().map(|t| t.var()).collect();
        let y = f(&vars)?;
        let mut rng = Philox::new(0x5eed);
        let r = Tensor::randn(y.shape(), &mut rng);
        let loss = crate::ops::sum_all(&crate::ops::mul(&y, &r)?)?;
        let grads = crate::autograd::backward(&loss)?;
        let rv = r.to_vec_f32()?;
        let eval = |xs: &[Tensor]| -> Result<f64> {
            let _g = crate::autograd::no_grad();
            let y = f(xs)?.to_vec_f32()?;
            Ok(y.iter().zip(&rv).map(|(&a, &b)| a as f64 * b as f64).sum())
        };
        for (i, x) in inputs.iter().enumerate() {
            let analytic = match grads.get(&vars[i]) {
                Some(g) => g.to_vec_f32()?,
                None => vec![0.0; x.numel()],
            };
            if analytic.len() != x.numel() {
                return Err(Error::Msg(format!(
                    "{name}: gradient of input {i} has {} values, input has {}",
                    analytic.len(),
                    x.numel()
                )));
            }
            let base = x.to_vec_f32()?;
            let n = base.len();
            let probes: Vec<usize> = if n <= self.max_probes {
                (0..n).collect()
            } else {
                rng.next_u32s(self.max_probes).into_iter().map(|u| u as usize % n).collect()
            };
            let mut num = Vec::with_capacity(probes.len());
            let mut ana = Vec::with_capacity(probes.len());
            for &j in &probes {
                let at = |d: f32| -> Result<f64> {
                    let mut v = base.clone();
                    v[j] += d;
                    let mut xs: Vec<Tensor> = inputs.to_vec();
                    xs[i] = Tensor::from_vec(v, x.shape())?;
                    eval(&xs)
                };
                let (lp, lm) = (at(self.eps)?, at(-self.eps)?);
                num.push(((lp - lm) / (2.0 * self.eps as f64)) as f32);
                ana.push(analytic[j]);
            }
            check_close(&format!("{name}: d/d(input {i}) {:?}", x.shape()), &ana, &num, self.tol)?;
        }
        Ok(())
    }
}

/// One fixture file written by `tools/fixtures/*.py`: named f32 tensors plus the
/// JSON metadata (`__metadata__["params"]`) describing the case.
pub struct Fixture {
    pub tensors: HashMap<String, Tensor>,
    pub params: serde_json::Value,
    pub path: std::path::PathBuf,
}

impl Fixture {
    pub fn load(path: impl AsRef<Path>) -> Result<Fixture> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| Error::format(path, e.to_string()))?;
        let params = meta
            .metadata()
            .as_ref()
            .and_then(|m| m.get("params"))
            .map(|s| serde_json::from_str(s))
            .transpose()
            .map_err(|e| Error::format(path, format!("bad params metadata: {e}")))?
            .unwrap_or(serde_json::Value::Null);
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::format(path, e.to_string()))?;
        let mut tensors = HashMap::new();
        for (name, view) in st.tensors() {
            let data: Vec<f32> = match view.dtype() {
                safetensors::Dtype::F32 => {
                    view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
                }
                safetensors::Dtype::I64 => view
                    .data()
                    .chunks_exact(8)
                    .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32)
                    .collect(),
                d => {
                    return Err(Error::format(
                        path,
                        format!("fixture tensor '{name}' has dtype {d:?}; fixtures are f32 or i64"),
                    ))
                }
            };
            tensors.insert(name.to_string(), Tensor::from_vec(data, view.shape())?);
        }
        Ok(Fixture { tensors, params, path: path.to_path_buf() })
    }

    pub fn get(&self, key: &str) -> Result<&Tensor> {
        self.tensors.get(key).ok_or_else(|| Error::MissingKey { path: self.path.clone(), key: key.to_string() })
    }

    pub fn param_f32(&self, key: &str) -> Result<f32> {
        self.params[key]
            .as_f64()
            .map(|v| v as f32)
            .ok_or_else(|| Error::format(&self.path, format!("params.{key} missing or not a number")))
    }

    pub fn param_usize(&self, key: &str) -> Result<usize> {
        self.params[key]
            .as_u64()
            .map(|v| v as usize)
            .ok_or_else(|| Error::format(&self.path, format!("params.{key} missing or not an integer")))
    }

    pub fn param_bool(&self, key: &str) -> Result<bool> {
        self.params[key]
            .as_bool()
            .ok_or_else(|| Error::format(&self.path, format!("params.{key} missing or not a bool")))
    }

    /// Runs `f` on the named inputs (as tracked leaves), compares its output with
    /// `out`, backpropagates `grad_out`, and compares each input gradient with
    /// `grad.<name>` when the fixture has it. `tol` is relative to each reference's scale.
    pub fn check_op(&self, inputs: &[&str], tol: f32, f: impl Fn(&[Tensor]) -> Result<Tensor>) -> Result<()> {
        crate::autograd::clear_tape();
        let case = self.path.file_stem().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        let vars = inputs.iter().map(|k| Ok(self.get(k)?.var())).collect::<Result<Vec<_>>>()?;
        let y = f(&vars)?;
        let want = self.get("out")?;
        if y.shape() != want.shape() {
            return Err(Error::Msg(format!("{case}: output shape {:?}, torch has {:?}", y.shape(), want.shape())));
        }
        check_close(&format!("{case}: out"), &y.to_vec_f32()?, &want.to_vec_f32()?, tol)?;
        let Some(gout) = self.tensors.get("grad_out") else { return Ok(()) };
        let loss = crate::ops::sum_all(&crate::ops::mul(&y, gout)?)?;
        let grads = crate::autograd::backward(&loss)?;
        for (k, v) in inputs.iter().zip(&vars) {
            if let Some(want) = self.tensors.get(&format!("grad.{k}")) {
                let got = grads.get(v).ok_or_else(|| Error::Msg(format!("{case}: no gradient reached '{k}'")))?;
                check_close(&format!("{case}: grad.{k}"), &got.to_vec_f32()?, &want.to_vec_f32()?, tol)?;
            }
        }
        Ok(())
    }
}
