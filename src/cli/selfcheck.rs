//! `senseflow selfcheck`: a quick end-to-end check that this build computes correctly on
//! this machine: the RNG against published and recorded known answers, finite-difference
//! gradient checks through the tape for the core ops and a small MLP, and a safetensors
//! save/load round trip. One line per check (the gradient checks also print their error
//! against its budget); exits 1 if any check fails.

use senseflow::io;
use senseflow::rng::{philox4x32_10, Philox};
use senseflow::testing::GradCheck;
use senseflow::{ops, DType, Error, Result, Tensor};
use std::time::Instant;

type Check = (&'static str, fn() -> Result<()>);

const CHECKS: [Check; 8] = [
    ("rng: Philox4x32-10 known answers", rng_known_answers),
    ("grad: add/mul/div with broadcasting", grad_binary),
    ("grad: activations (tanh, silu, gelu, sigmoid)", grad_unary),
    ("grad: matmul (2-D, batched, broadcast)", grad_matmul),
    ("grad: linear with bias", grad_linear),
    ("grad: sum/mean/max reductions", grad_reduce),
    ("grad: two-layer MLP, end to end", grad_mlp),
    ("io: safetensors save/load round trip", io_round_trip),
];

pub fn run() -> anyhow::Result<()> {
    let mut failed = Vec::new();
    for (name, check) in CHECKS {
        let t = Instant::now();
        match check() {
            Ok(()) => println!("ok    {name} ({:.0} ms)", t.elapsed().as_secs_f64() * 1e3),
            Err(e) => {
                println!("FAIL  {name}: {e}");
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        anyhow::bail!("selfcheck: {} of {} checks failed: {}", failed.len(), CHECKS.len(), failed.join("; "));
    }
    println!("selfcheck: all {} checks passed", CHECKS.len());
    Ok(())
}

fn fail(msg: String) -> Error {
    Error::Msg(msg)
}

/// Random123's published vector for a zero counter and key, and the first outputs of
/// stream (seed 42, offset 7) as recorded in the rng module's golden test: raw lanes and
/// uniforms bit for bit, normals within 1 ulp (they go through the platform libm).
fn rng_known_answers() -> Result<()> {
    if philox4x32_10([0; 4], [0; 2]) != [0x6627_e8d5, 0xe169_c58d, 0xbc57_ac4c, 0x9b00_dbd8] {
        return Err(fail("philox4x32_10(0, 0) differs from Random123's known answer".into()));
    }
    let raw = [0x5bbd83b1, 0x68784c85, 0x172067aa, 0x2e6b75b7];
    let uniform = [0x3eb77b06, 0x3ed0f09a, 0x3db90338, 0x3e39add4];
    let normal = [0xbf99a318u32, 0x3f483a0c, 0x3f6ac550, 0x3ffef420];
    if Philox::at(42, 7).next_u32s(4) != raw {
        return Err(fail("raw stream (seed 42, offset 7) differs from the recorded values".into()));
    }
    let u: Vec<u32> = Philox::at(42, 7).uniform_vec(4).iter().map(|x| x.to_bits()).collect();
    if u != uniform {
        return Err(fail(format!("uniforms (seed 42, offset 7) are {u:x?}, expected {uniform:x?}")));
    }
    for (i, (z, w)) in Philox::at(42, 7).normal_vec(4).into_iter().zip(normal).enumerate() {
        if z.to_bits().abs_diff(w) > 1 {
            return Err(fail(format!("normal {i} (seed 42, offset 7) is {z}, expected {}", f32::from_bits(w))));
        }
    }
    Ok(())
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, &mut Philox::new(seed))
}

fn grad_binary() -> Result<()> {
    let gc = GradCheck::default();
    let a = randn(&[3, 5, 7], 1);
    let b = Tensor::rand(&[5, 1], 0.5, 1.5, &mut Philox::new(2));
    gc.run("add", &[a.clone(), b.clone()], |x| ops::add(&x[0], &x[1]))?;
    gc.run("mul", &[a.clone(), b.clone()], |x| ops::mul(&x[0], &x[1]))?;
    gc.run("div", &[a, b], |x| ops::div(&x[0], &x[1]))
}

fn grad_unary() -> Result<()> {
    let gc = GradCheck::default();
    let x = randn(&[3, 5, 7], 3);
    gc.run("tanh", std::slice::from_ref(&x), |x| ops::tanh(&x[0]))?;
    gc.run("silu", std::slice::from_ref(&x), |x| ops::silu(&x[0]))?;
    gc.run("gelu", std::slice::from_ref(&x), |x| ops::gelu(&x[0]))?;
    gc.run("sigmoid", &[x], |x| ops::sigmoid(&x[0]))
}

fn grad_matmul() -> Result<()> {
    let gc = GradCheck::default();
    gc.run("matmul 2-D", &[randn(&[3, 5], 4), randn(&[5, 7], 5)], |x| ops::matmul(&x[0], &x[1]))?;
    gc.run("matmul batched", &[randn(&[2, 3, 5], 6), randn(&[2, 5, 4], 7)], |x| ops::matmul(&x[0], &x[1]))?;
    gc.run("matmul broadcast", &[randn(&[2, 3, 5], 8), randn(&[5, 4], 9)], |x| ops::matmul(&x[0], &x[1]))
}

fn grad_linear() -> Result<()> {
    let gc = GradCheck::default();
    let inputs = [randn(&[2, 3, 6], 10), randn(&[5, 6], 11), randn(&[5], 12)];
    gc.run("linear", &inputs, |x| ops::linear(&x[0], &x[1], Some(&x[2])))
}

fn grad_reduce() -> Result<()> {
    let gc = GradCheck::default();
    let x = randn(&[3, 5, 7], 13);
    gc.run("sum", std::slice::from_ref(&x), |x| ops::sum(&x[0], &[1], false))?;
    gc.run("mean", std::slice::from_ref(&x), |x| ops::mean(&x[0], &[0, 2], true))?;
    // max is not differentiable at ties: distinct values 0.05 apart (> 2·eps) keep every
    // finite-difference probe on one side of the kink.
    let spread: Vec<f32> = (0..105).map(|i| ((i * 37) % 105) as f32 * 0.05 - 2.6).collect();
    gc.run("max", &[Tensor::from_vec(spread, &[3, 5, 7])?], |x| ops::max(&x[0], &[-1], false))
}

/// mean(W2 · gelu(W1 x + b1) + b2): every input and parameter checked at once.
fn grad_mlp() -> Result<()> {
    let gc = GradCheck::default();
    let inputs = [randn(&[4, 6], 14), randn(&[9, 6], 15), randn(&[9], 16), randn(&[3, 9], 17), randn(&[3], 18)];
    gc.run("mlp", &inputs, |x| {
        let h = ops::gelu(&ops::linear(&x[0], &x[1], Some(&x[2]))?)?;
        ops::mean(&ops::linear(&h, &x[3], Some(&x[4]))?, &[1], false)
    })
}

/// Saves f32/bf16/f16 tensors to a temp folder, loads them back, and compares the bytes.
fn io_round_trip() -> Result<()> {
    let dir = std::env::temp_dir().join(format!("senseflow-selfcheck-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let path = dir.join("round_trip.safetensors");
    let result = (|| {
        let x = randn(&[3, 5, 7], 19);
        let tensors = [
            ("f32".to_string(), x.clone()),
            ("bf16".to_string(), x.to_dtype(DType::BF16)?),
            ("f16".to_string(), x.to_dtype(DType::F16)?),
        ];
        let refs: Vec<(String, &Tensor)> = tensors.iter().map(|(k, t)| (k.clone(), t)).collect();
        io::save(&path, &refs, None)?;
        let file = io::load(&path)?;
        for (name, t) in &tensors {
            let back = file.get_checked(name, t.shape())?;
            if back.dtype() != t.dtype() || back.to_bytes()? != t.to_bytes()? {
                return Err(fail(format!("{}: tensor '{name}' changed in the round trip", path.display())));
            }
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    result
}
