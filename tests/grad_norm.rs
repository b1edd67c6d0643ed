//! Finite-difference gradient checks of the softmax, norm and modulate families on
//! asymmetric, odd shapes (3×5×7, 97 tokens), every differentiable input checked;
//! plus shapes past the threading threshold, frozen (untracked) parameters, the
//! two-pass variance under a large offset, and the shape errors.

use senseflow::backend::cpu::PAR_THRESHOLD;
use senseflow::ops;
use senseflow::rng::Philox;
use senseflow::testing::{check_close, GradCheck};
use senseflow::{Result, Tensor};
use std::slice::from_ref;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, &mut Philox::new(seed))
}

fn rand(shape: &[usize], lo: f32, hi: f32, seed: u64) -> Tensor {
    Tensor::rand(shape, lo, hi, &mut Philox::new(seed))
}

#[test]
fn softmax_dims() -> Result<()> {
    let gc = GradCheck::default();
    let x = randn(&[3, 5, 7], 1);
    for dim in [-1, 1, 0] {
        gc.run(&format!("softmax/dim {dim}"), from_ref(&x), |t| ops::softmax(&t[0], dim))?;
        gc.run(&format!("log_softmax/dim {dim}"), from_ref(&x), |t| ops::log_softmax(&t[0], dim))?;
    }
    // Rows sum to one along the chosen axis, also for an axis in the middle.
    let y = ops::softmax(&x, 1)?.sum(&[1], false)?.to_vec_f32()?;
    check_close("softmax/dim 1 sums", &y, &vec![1.0; y.len()], 1e-6)
}

#[test]
fn layer_norm_variants() -> Result<()> {
    let gc = GradCheck::default();
    let x = randn(&[3, 5, 7], 2);
    let w = rand(&[7], 0.5, 1.5, 3);
    let b = randn(&[7], 4);
    gc.run("layer_norm/plain", from_ref(&x), |t| ops::layer_norm(&t[0], None, None, 1e-5))?;
    gc.run("layer_norm/affine", &[x.clone(), w.clone(), b.clone()], |t| {
        ops::layer_norm(&t[0], Some(&t[1]), Some(&t[2]), 1e-5)
    })?;
    gc.run("layer_norm/weight only", &[x.clone(), w.clone()], |t| ops::layer_norm(&t[0], Some(&t[1]), None, 1e-6))?;
    // Frozen affine parameters: only dx is computed, and it must still be right.
    gc.run("layer_norm/frozen affine", from_ref(&x), |t| ops::layer_norm(&t[0], Some(&w), Some(&b), 1e-5))?;
    // Parameters tracked, input not.
    gc.run("layer_norm/params only", &[w.clone(), b.clone()], |t| ops::layer_norm(&x, Some(&t[0]), Some(&t[1]), 1e-5))
}

#[test]
fn rms_norm_variants() -> Result<()> {
    let gc = GradCheck::default();
    let x = randn(&[3, 5, 7], 5);
    let w = rand(&[7], 0.5, 1.5, 6);
    gc.run("rms_norm/plain", from_ref(&x), |t| ops::rms_norm(&t[0], None, 1e-6))?;
    gc.run("rms_norm/weight", &[x.clone(), w.clone()], |t| ops::rms_norm(&t[0], Some(&t[1]), 1e-6))?;
    gc.run("rms_norm/frozen weight", from_ref(&x), |t| ops::rms_norm(&t[0], Some(&w), 1e-5))
}

#[test]
fn group_norm_variants() -> Result<()> {
    let gc = GradCheck::default();
    for (shape, groups) in [(vec![2, 6, 5, 3], 3), (vec![2, 4, 7], 2), (vec![3, 12], 3), (vec![2, 4, 3, 2, 2], 1)] {
        let c = shape[1];
        let x = randn(&shape, 7);
        let w = rand(&[c], 0.5, 1.5, 8);
        let b = randn(&[c], 9);
        let name = format!("group_norm/{shape:?} g{groups}");
        gc.run(&format!("{name} affine"), &[x.clone(), w.clone(), b.clone()], |t| {
            ops::group_norm(&t[0], groups, Some(&t[1]), Some(&t[2]), 1e-5)
        })?;
        gc.run(&format!("{name} plain"), from_ref(&x), |t| ops::group_norm(&t[0], groups, None, None, 1e-5))?;
    }
    Ok(())
}

#[test]
fn modulate_family() -> Result<()> {
    let gc = GradCheck::default();
    let x = randn(&[2, 97, 6], 10);
    let shift = randn(&[2, 6], 11).scale(0.5)?;
    let scale = randn(&[2, 6], 12).scale(0.5)?;
    gc.run("modulate", &[x.clone(), shift.clone(), scale.clone()], |t| ops::modulate(&t[0], &t[1], &t[2]))?;
    gc.run("modulate/frozen scale", &[x.clone(), shift.clone()], |t| ops::modulate(&t[0], &t[1], &scale))?;
    gc.run("modulate/shift only", from_ref(&shift), |t| ops::modulate(&x, &t[0], &scale))?;
    gc.run("layer_norm_modulate", &[x.clone(), shift.clone(), scale.clone()], |t| {
        ops::layer_norm_modulate(&t[0], &t[1], &t[2], 1e-6)
    })?;
    gc.run("layer_norm_modulate/x only", from_ref(&x), |t| ops::layer_norm_modulate(&t[0], &shift, &scale, 1e-6))?;
    let residual = randn(&[2, 97, 6], 13);
    let gate = randn(&[2, 6], 14);
    gc.run("gated_residual", &[residual.clone(), gate.clone(), x.clone()], |t| {
        ops::gated_residual(&t[0], &t[1], &t[2])
    })?;
    gc.run("gated_residual/frozen gate", &[residual, x.clone()], |t| ops::gated_residual(&t[0], &gate, &t[1]))
}

#[test]
fn layer_norm_modulate_matches_composition() -> Result<()> {
    // The fused op equals layer_norm then modulate (forward; backwards checked above).
    let x = randn(&[2, 97, 6], 15);
    let shift = randn(&[2, 6], 16);
    let scale = randn(&[2, 6], 17);
    let fused = ops::layer_norm_modulate(&x, &shift, &scale, 1e-6)?.to_vec_f32()?;
    let composed = ops::modulate(&ops::layer_norm(&x, None, None, 1e-6)?, &shift, &scale)?.to_vec_f32()?;
    check_close("layer_norm_modulate vs composition", &fused, &composed, 1e-6)
}

#[test]
fn threaded_shapes() -> Result<()> {
    // Past PAR_THRESHOLD the row maps and column sums run on rayon's pool.
    let gc = GradCheck::default();
    let x = randn(&[4, 97, 129], 18);
    assert!(x.numel() >= PAR_THRESHOLD);
    let w = rand(&[129], 0.5, 1.5, 19);
    let b = randn(&[129], 20);
    gc.run("layer_norm/threaded", &[x.clone(), w.clone(), b.clone()], |t| {
        ops::layer_norm(&t[0], Some(&t[1]), Some(&t[2]), 1e-5)
    })?;
    gc.run("rms_norm/threaded", &[x.clone(), w.clone()], |t| ops::rms_norm(&t[0], Some(&t[1]), 1e-6))?;
    gc.run("softmax/threaded dim 1", from_ref(&x), |t| ops::softmax(&t[0], 1))?;
    gc.run("log_softmax/threaded dim -1", from_ref(&x), |t| ops::log_softmax(&t[0], -1))?;
    let xg = randn(&[2, 8, 49, 50], 21);
    let (wg, bg) = (rand(&[8], 0.5, 1.5, 22), randn(&[8], 23));
    gc.run("group_norm/threaded", &[xg, wg, bg], |t| ops::group_norm(&t[0], 4, Some(&t[1]), Some(&t[2]), 1e-5))?;
    let xm = randn(&[2, 257, 72], 24);
    let (sh, sc) = (randn(&[2, 72], 25), randn(&[2, 72], 26));
    gc.run("layer_norm_modulate/threaded", &[xm.clone(), sh.clone(), sc.clone()], |t| {
        ops::layer_norm_modulate(&t[0], &t[1], &t[2], 1e-6)
    })?;
    gc.run("modulate/threaded", &[xm.clone(), sh.clone(), sc], |t| ops::modulate(&t[0], &t[1], &t[2]))?;
    gc.run("gated_residual/threaded", &[xm.clone(), sh, xm.scale(0.5)?], |t| ops::gated_residual(&t[0], &t[1], &t[2]))
}

#[test]
fn large_offset_keeps_accuracy() -> Result<()> {
    // 1e4 + noise of std 0.05: E[x²]−E[x]² would lose every digit of the variance in
    // f32; two passes with an f64 mean keep full relative accuracy.
    let (rows, d) = (5, 96);
    let noise = randn(&[rows, d], 27).to_vec_f32()?;
    let xv: Vec<f32> = noise.iter().map(|n| 1e4 + 0.05 * n).collect();
    let x = Tensor::from_vec(xv.clone(), &[rows, d])?;
    let got = ops::layer_norm(&x, None, None, 1e-6)?.to_vec_f32()?;
    let mut want = Vec::with_capacity(xv.len());
    for r in xv.chunks(d) {
        let mean = r.iter().map(|&v| v as f64).sum::<f64>() / d as f64;
        let var = r.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / d as f64;
        want.extend(r.iter().map(|&v| ((v as f64 - mean) / (var + 1e-6).sqrt()) as f32));
    }
    check_close("layer_norm/offset 1e4 vs f64", &got, &want, 1e-5)?;
    // Gradients: the norms are shift-invariant, so they must equal those at the
    // centered input (x − 1e4 is exact in f32), whose statistics are benign. Finite
    // differences cannot probe here: a 1e-2 step at 1e4 is itself rounded by ~5%.
    let centered = Tensor::from_vec(xv.iter().map(|v| v - 1e4).collect(), &[rows, d])?;
    let g = randn(&[rows, d], 28);
    let grad_at = |x: &Tensor, f: &dyn Fn(&Tensor) -> Result<Tensor>| -> Result<Vec<f32>> {
        let v = x.var();
        let l = ops::sum_all(&ops::mul(&f(&v)?, &g)?)?;
        senseflow::backward(&l)?.get(&v).unwrap().to_vec_f32()
    };
    let ln = |t: &Tensor| ops::layer_norm(t, None, None, 1e-6);
    check_close("layer_norm/offset 1e4 grad vs centered", &grad_at(&x, &ln)?, &grad_at(&centered, &ln)?, 1e-5)?;
    let gn = |t: &Tensor| ops::group_norm(&t.reshape(&[rows, 6, 16])?, 3, None, None, 1e-6)?.reshape(&[rows, d]);
    check_close("group_norm/offset 1e4 out vs centered", &gn(&x)?.to_vec_f32()?, &gn(&centered)?.to_vec_f32()?, 1e-5)?;
    check_close("group_norm/offset 1e4 grad vs centered", &grad_at(&x, &gn)?, &grad_at(&centered, &gn)?, 1e-5)
}

#[test]
fn shape_errors() {
    let x = randn(&[2, 6, 5], 29);
    let err = ops::group_norm(&x, 4, None, None, 1e-5).unwrap_err().to_string();
    assert!(err.contains("6 channels") && err.contains("4 equal groups"), "{err}");
    assert!(ops::group_norm(&x, 0, None, None, 1e-5).is_err());
    assert!(ops::group_norm(&randn(&[6], 30), 3, None, None, 1e-5).is_err());
    let err = ops::layer_norm(&x, Some(&randn(&[6], 31)), None, 1e-5).unwrap_err().to_string();
    assert!(err.contains("weight has shape [6], expected [5]"), "{err}");
    assert!(ops::rms_norm(&Tensor::scalar(1.0), None, 1e-5).is_err());
    assert!(ops::softmax(&x, 3).is_err() && ops::log_softmax(&x, -4).is_err());
    let (shift, bad) = (randn(&[2, 5], 32), randn(&[2, 6], 33));
    let err = ops::modulate(&x, &shift, &bad).unwrap_err().to_string();
    assert!(err.contains("scale has shape [2, 6], expected [2, 5]"), "{err}");
    assert!(ops::layer_norm_modulate(&randn(&[2, 5], 34), &shift, &shift, 1e-6).is_err());
    assert!(ops::gated_residual(&x, &shift, &randn(&[2, 5, 6], 35)).is_err());
}

#[test]
fn empty_and_scalar_inputs() -> Result<()> {
    // Empty rows or batches give empty outputs and zero parameter gradients, never a
    // panic. (The backward kernels are called directly: the core `sum` cannot yet
    // reduce an empty tensor to a scalar loss.)
    use senseflow::backend::cpu::{modulate, norm};
    assert_eq!(ops::layer_norm(&Tensor::zeros(&[0, 7]), None, None, 1e-5)?.shape(), &[0, 7]);
    assert_eq!(ops::rms_norm(&Tensor::zeros(&[3, 0]), None, 1e-5)?.shape(), &[3, 0]);
    assert_eq!(ops::softmax(&Tensor::zeros(&[3, 0]), -1)?.shape(), &[3, 0]);
    assert_eq!(ops::softmax(&Tensor::scalar(2.0), 0)?.to_scalar()?, 1.0);
    assert_eq!(ops::group_norm(&Tensor::zeros(&[2, 4, 0]), 2, None, None, 1e-5)?.shape(), &[2, 4, 0]);
    assert_eq!(
        ops::layer_norm_modulate(&Tensor::zeros(&[2, 0, 3]), &Tensor::zeros(&[2, 3]), &Tensor::zeros(&[2, 3]), 1e-6)?
            .shape(),
        &[2, 0, 3]
    );
    assert_eq!(norm::rms_norm_bwd_weight(&[], &[], &[], 7), vec![0.0; 7]);
    assert_eq!(norm::layer_norm_bwd_affine(&[], &[], &[], &[], 3, 2, 0), (vec![0.0; 6], vec![0.0; 6]));
    let gshape = norm::GroupNormShape { batch: 2, channels: 4, groups: 2, spatial: 0 };
    assert_eq!(norm::group_norm_bwd_affine(&[], &[], &[], &[], gshape), (vec![0.0; 4], vec![0.0; 4]));
    assert_eq!(modulate::modulate_bwd_shift_scale(Some(&[]), &[], 2, 0, 3), (vec![0.0; 6], Some(vec![0.0; 6])));
    assert_eq!(modulate::gated_residual_bwd_gate(&[], &[], 2, 0, 3), vec![0.0; 6]);
    Ok(())
}

#[test]
fn results_do_not_depend_on_thread_count() -> Result<()> {
    // Column sums add fixed-size partials in a fixed order: dweight, dshift and
    // dscale are bitwise the same on 1 and 3 threads.
    let x = randn(&[2, 257, 72], 36);
    let (w, b) = (rand(&[72], 0.5, 1.5, 37), randn(&[72], 38));
    let (shift, scale) = (randn(&[2, 72], 39), randn(&[2, 72], 40));
    let g = randn(&[2, 257, 72], 41);
    let grads = || -> Result<Vec<Vec<f32>>> {
        let (wv, bv, sh, sc) = (w.var(), b.var(), shift.var(), scale.var());
        let y = ops::add(
            &ops::layer_norm(&x, Some(&wv), Some(&bv), 1e-5)?,
            &ops::layer_norm_modulate(&x, &sh, &sc, 1e-6)?,
        )?;
        let gr = senseflow::backward(&ops::sum_all(&ops::mul(&y, &g)?)?)?;
        [&wv, &bv, &sh, &sc].iter().map(|t| gr.get(t).unwrap().to_vec_f32()).collect()
    };
    let on = |n: usize| rayon::ThreadPoolBuilder::new().num_threads(n).build().unwrap().install(grads);
    assert_eq!(on(1)?, on(3)?);
    Ok(())
}
