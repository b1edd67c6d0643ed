//! Finite-difference gradient checks of the core op set (arithmetic, activations,
//! matmul, reductions, shape ops) on asymmetric, odd shapes.

use senseflow::ops::{self, UnaryOp};
use senseflow::rng::Philox;
use senseflow::testing::GradCheck;
use senseflow::{Result, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, &mut Philox::new(seed))
}

fn rand(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Tensor {
    Tensor::rand(shape, lo, hi, &mut Philox::new(seed))
}

#[test]
fn binary_broadcast() -> Result<()> {
    let gc = GradCheck::default();
    let a = randn(&[3, 5, 7], 1);
    for (bshape, name) in [(vec![3, 5, 7], "same"), (vec![7], "row"), (vec![3, 1, 7], "mid"), (vec![5, 1], "col")] {
        let b = rand(&bshape, 0.5, 1.5, 2);
        gc.run(&format!("add/{name}"), &[a.clone(), b.clone()], |x| ops::add(&x[0], &x[1]))?;
        gc.run(&format!("sub/{name}"), &[b.clone(), a.clone()], |x| ops::sub(&x[0], &x[1]))?;
        gc.run(&format!("mul/{name}"), &[a.clone(), b.clone()], |x| ops::mul(&x[0], &x[1]))?;
        gc.run(&format!("div/{name}"), &[a.clone(), b.clone()], |x| ops::div(&x[0], &x[1]))?;
    }
    gc.run("affine", &[a.clone()], |x| ops::affine(&x[0], -1.7, 0.3))?;
    Ok(())
}

#[test]
fn unary_activations() -> Result<()> {
    let gc = GradCheck::default();
    let x = randn(&[3, 5, 7], 3);
    // Keep probes away from kinks (relu, abs at 0) by more than eps.
    let away: Vec<f32> =
        x.to_vec_f32()?.iter().map(|v| if v.abs() < 0.05 { v.signum() * 0.05 + v } else { *v }).collect();
    let x = Tensor::from_vec(away, x.shape())?;
    let pos = rand(&[3, 5, 7], 0.5, 2.0, 4);
    for op in [
        UnaryOp::Exp,
        UnaryOp::Tanh,
        UnaryOp::Sigmoid,
        UnaryOp::Silu,
        UnaryOp::GeluErf,
        UnaryOp::GeluTanh,
        UnaryOp::QuickGelu,
        UnaryOp::Relu,
        UnaryOp::LeakyRelu(0.2),
        UnaryOp::Sqr,
        UnaryOp::Abs,
    ] {
        gc.run(op.name(), &[x.clone()], |t| ops::unary(op, &t[0]))?;
    }
    for op in [UnaryOp::Log, UnaryOp::Sqrt, UnaryOp::Rsqrt] {
        gc.run(op.name(), &[pos.clone()], |t| ops::unary(op, &t[0]))?;
    }
    Ok(())
}

#[test]
fn matmul_variants() -> Result<()> {
    let gc = GradCheck::default();
    let a = randn(&[3, 5, 7], 5);
    let b = randn(&[3, 7, 4], 6);
    gc.run("matmul/batched", &[a.clone(), b.clone()], |x| ops::matmul(&x[0], &x[1]))?;
    let w = randn(&[7, 4], 7);
    gc.run("matmul/rhs-2d", &[a.clone(), w.clone()], |x| ops::matmul(&x[0], &x[1]))?;
    let m = randn(&[5, 7], 8);
    gc.run("matmul/lhs-2d", &[m.clone(), b.clone()], |x| ops::matmul(&x[0], &x[1]))?;
    let bt = randn(&[3, 4, 7], 9);
    gc.run("matmul/transposed-view", &[a.clone(), bt], |x| ops::matmul(&x[0], &x[1].transpose(-2, -1)?))?;
    let lw = randn(&[6, 7], 10);
    let lb = randn(&[6], 11);
    gc.run("linear", &[a, lw, lb], |x| ops::linear(&x[0], &x[1], Some(&x[2])))?;
    Ok(())
}

#[test]
fn matmul_matches_naive() -> Result<()> {
    // Shapes past gemm's blocking and the threading threshold, with a transposed view.
    let (b, m, k, n) = (2, 67, 129, 53);
    let a = randn(&[b, m, k], 12);
    let w = randn(&[b, n, k], 13);
    let y = ops::matmul(&a, &w.transpose(-2, -1)?)?.to_vec_f32()?;
    let (av, wv) = (a.to_vec_f32()?, w.to_vec_f32()?);
    let mut want = vec![0f32; b * m * n];
    for bi in 0..b {
        for i in 0..m {
            for j in 0..n {
                let s: f64 =
                    (0..k).map(|p| av[bi * m * k + i * k + p] as f64 * wv[bi * n * k + j * k + p] as f64).sum();
                want[bi * m * n + i * n + j] = s as f32;
            }
        }
    }
    // f32 accumulation over k terms: error ≲ k·u relative to Σ|a||b| ≈ √k·scale.
    senseflow::testing::check_close("matmul vs f64 naive", &y, &want, 1e-5)
}

#[test]
fn reductions() -> Result<()> {
    let gc = GradCheck::default();
    let x = randn(&[3, 5, 7], 14);
    gc.run("sum/all", &[x.clone()], |t| ops::sum_all(&t[0]))?;
    gc.run("sum/1", &[x.clone()], |t| ops::sum(&t[0], &[1], false))?;
    gc.run("mean/0,2 keepdim", &[x.clone()], |t| ops::mean(&t[0], &[0, 2], true))?;
    gc.run("max/-1", &[x.clone()], |t| ops::max(&t[0], &[-1], false))?;
    gc.run("max/0", &[x.clone()], |t| ops::max(&t[0], &[0], true))?;
    let v = ops::max(&x, &[1], false)?.to_vec_f32()?;
    let xv = x.to_vec_f32()?;
    for i in 0..3 {
        for k in 0..7 {
            let m = (0..5).map(|j| xv[i * 35 + j * 7 + k]).fold(f32::MIN, f32::max);
            assert_eq!(v[i * 7 + k], m);
        }
    }
    Ok(())
}

#[test]
fn shape_ops() -> Result<()> {
    let gc = GradCheck::default();
    let x = randn(&[3, 5, 7], 15);
    let y = randn(&[3, 2, 7], 16);
    gc.run("permute", &[x.clone()], |t| t[0].permute(&[2, 0, 1]))?;
    gc.run("transpose+reshape", &[x.clone()], |t| t[0].transpose(0, 2)?.reshape(&[7, 15]))?;
    gc.run("narrow", &[x.clone()], |t| t[0].narrow(1, 1, 3))?;
    gc.run("concat", &[x.clone(), y.clone()], |t| ops::concat(&[&t[0], &t[1]], 1))?;
    gc.run("split", &[x.clone()], |t| {
        let p = ops::split(&t[0], -1, &[2, 5])?;
        ops::mul(&p[0].sum(&[-1], true)?, &p[1])
    })?;
    gc.run("broadcast_to", &[randn(&[5, 1], 17)], |t| t[0].broadcast_to(&[3, 5, 7]))?;
    gc.run("stack", &[x.clone(), x.scale(0.5)?], |t| ops::stack(&[&t[0], &t[1]], 1))?;
    // Views share storage and read the right elements.
    let xv = x.to_vec_f32()?;
    let n = x.narrow(2, 3, 2)?.permute(&[1, 0, 2])?.to_vec_f32()?;
    assert_eq!(n[0], xv[3]);
    assert_eq!(n[2], xv[35 + 3]);
    Ok(())
}

#[test]
fn tape_semantics() -> Result<()> {
    let w = randn(&[4, 3], 18).var();
    let x = randn(&[2, 4], 19);
    // Gradient accumulation: two backward passes into one Grads add up.
    let mut grads = senseflow::Grads::new();
    for _ in 0..2 {
        let l = ops::sum_all(&ops::matmul(&x, &w)?)?;
        senseflow::autograd::backward_into(&l, &mut grads)?;
    }
    let g = grads.get(&w).unwrap().to_vec_f32()?;
    let l = ops::sum_all(&ops::matmul(&x, &w)?)?;
    let single = senseflow::backward(&l)?.get(&w).unwrap().to_vec_f32()?;
    for (a, b) in g.iter().zip(&single) {
        assert!((a - 2.0 * b).abs() < 1e-5);
    }
    // Stop-grad: nothing flows through a detached branch.
    let l = ops::sum_all(&ops::matmul(&x, &w.detach())?)?;
    assert!(!l.tracks_grad());
    // No-grad scope records nothing.
    {
        let _g = senseflow::no_grad();
        let y = ops::matmul(&x, &w)?;
        assert!(!y.tracks_grad());
        assert_eq!(senseflow::autograd::tape_len(), 0);
    }
    // Several parameter sets in one step; backward drains the tape.
    let v = randn(&[3, 2], 20).var();
    let l = ops::sum_all(&ops::matmul(&ops::matmul(&x, &w)?, &v)?)?;
    assert!(senseflow::autograd::tape_len() > 0);
    let g = senseflow::backward(&l)?;
    assert!(g.get(&w).is_some() && g.get(&v).is_some());
    assert_eq!(senseflow::autograd::tape_len(), 0);
    Ok(())
}

#[test]
fn saved_activations_are_released() -> Result<()> {
    let w = randn(&[8, 8], 21).var();
    let x = randn(&[4, 8], 22);
    let h = ops::tanh(&ops::matmul(&x, &w)?)?;
    let probe = h.detach(); // shares storage with the output tanh saved for backward
    let l = ops::sum_all(&h)?;
    drop(h);
    let before = probe.storage_ref_count();
    senseflow::backward(&l)?;
    let after = probe.storage_ref_count();
    assert_eq!(after, 1, "backward must free the saved activation ({before} holders before, {after} after)");
    assert!(before > 1);
    Ok(())
}
