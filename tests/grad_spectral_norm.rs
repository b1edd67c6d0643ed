//! Gradient checks of spectral normalization.
//!
//! The op's gradient treats u and v as constants (torch runs the power iteration under
//! no_grad). Finite differences instead see u and v move with W, and the two agree
//! only once the iteration has converged (then Wᵀu ∥ v and the extra term
//! (Wᵀu)ᵀ·dv vanishes because v stays unit-norm). So:
//! - GradCheck runs with enough iterations to converge, each probe starting from the
//!   same copy of u;
//! - for a single iteration the op's gradient is compared with the autograd gradient
//!   of W / (uᵀWv) composed from core ops with the same (constant) u and v.

use senseflow::ops::{self, spectral_norm_init_u, spectral_norm_power_iteration, SPECTRAL_NORM_EPS};
use senseflow::rng::Philox;
use senseflow::testing::{check_close, GradCheck};
use senseflow::{Result, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, &mut Philox::new(seed))
}

#[test]
fn converged_gradient_matches_finite_differences() -> Result<()> {
    let gc = GradCheck { eps: 1e-3, ..GradCheck::default() };
    for (shape, seed) in [(vec![5, 7], 1), (vec![4, 3, 3, 3], 2), (vec![7, 3], 3)] {
        let u0 = spectral_norm_init_u(shape[0], &mut Philox::new(seed + 100), SPECTRAL_NORM_EPS);
        let w = randn(&shape, seed);
        gc.run(&format!("spectral_norm {shape:?} (converged)"), &[w], |t| {
            let mut u = u0.clone();
            spectral_norm_power_iteration(&t[0], &mut u, 200, SPECTRAL_NORM_EPS)
        })?;
    }
    Ok(())
}

/// The (u, v) after `n` power iterations from `u0`, in f64 (test reference).
fn power_iteration(w: &[f32], rows: usize, u0: &[f32], n: usize) -> (Vec<f32>, Vec<f32>) {
    let cols = w.len() / rows;
    let normalize = |x: Vec<f64>| {
        let norm = x.iter().map(|v| v * v).sum::<f64>().sqrt().max(1e-12);
        x.into_iter().map(|v| (v / norm) as f32).collect::<Vec<f32>>()
    };
    let mut u = u0.to_vec();
    let mut v = Vec::new();
    for _ in 0..n {
        v = normalize((0..cols).map(|j| (0..rows).map(|i| w[i * cols + j] as f64 * u[i] as f64).sum()).collect());
        u = normalize((0..rows).map(|i| (0..cols).map(|j| w[i * cols + j] as f64 * v[j] as f64).sum()).collect());
    }
    (u, v)
}

#[test]
fn gradient_treats_u_and_v_as_constants() -> Result<()> {
    for (n_iters, seed) in [(1, 4), (2, 5)] {
        let (rows, cols) = (6, 5);
        let w = randn(&[rows, cols], seed).var();
        let gout = randn(&[rows, cols], seed + 10);
        let u0 = spectral_norm_init_u(rows, &mut Philox::new(seed + 20), SPECTRAL_NORM_EPS);

        let mut u = u0.clone();
        let y = spectral_norm_power_iteration(&w, &mut u, n_iters, SPECTRAL_NORM_EPS)?;
        let g_op = senseflow::backward(&ops::sum_all(&y.mul(&gout)?)?)?.get(&w).unwrap().to_vec_f32()?;

        let (ur, vr) = power_iteration(&w.to_vec_f32()?, rows, &u0, n_iters);
        check_close(&format!("spectral_norm n={n_iters}: updated u"), &u, &ur, 1e-6)?;
        let ut = Tensor::from_vec(ur, &[1, rows])?;
        let vt = Tensor::from_vec(vr, &[cols, 1])?;
        let sigma = ut.matmul(&w)?.matmul(&vt)?; // [1, 1]
        let y_ref = w.div(&sigma)?;
        check_close(&format!("spectral_norm n={n_iters}: W/σ"), &y.to_vec_f32()?, &y_ref.to_vec_f32()?, 1e-6)?;
        let g_ref = senseflow::backward(&ops::sum_all(&y_ref.mul(&gout)?)?)?.get(&w).unwrap().to_vec_f32()?;
        check_close(&format!("spectral_norm n={n_iters}: dW vs composed ops"), &g_op, &g_ref, 1e-5)?;
    }
    Ok(())
}

#[test]
fn u_persists_and_init_is_unit() -> Result<()> {
    let u0 = spectral_norm_init_u(9, &mut Philox::new(7), SPECTRAL_NORM_EPS);
    assert_eq!(u0.len(), 9);
    let norm: f64 = u0.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-6);
    assert_eq!(u0, spectral_norm_init_u(9, &mut Philox::new(7), SPECTRAL_NORM_EPS), "deterministic");
    // Repeated calls continue the power iteration: σ rises to the top singular value.
    let w = randn(&[9, 4, 2], 8);
    let mut u = u0.clone();
    let mut sigmas = Vec::new();
    for _ in 0..30 {
        let y = spectral_norm_power_iteration(&w, &mut u, 1, SPECTRAL_NORM_EPS)?;
        // y = W/σ, so σ = ΣW² / Σ W·y.
        let (wv, yv) = (w.to_vec_f32()?, y.to_vec_f32()?);
        let (ww, wy) =
            wv.iter().zip(&yv).fold((0f64, 0f64), |(a, b), (&p, &q)| (a + (p * p) as f64, b + (p * q) as f64));
        sigmas.push(ww / wy);
    }
    assert_ne!(u, u0);
    assert!(sigmas.windows(2).all(|p| p[1] >= p[0] * (1.0 - 1e-6)), "σ estimates rise monotonically: {sigmas:?}");
    // Errors, not panics.
    assert!(spectral_norm_power_iteration(&w, &mut [0.0; 4], 1, SPECTRAL_NORM_EPS).is_err());
    assert!(spectral_norm_power_iteration(&w, &mut u, 0, SPECTRAL_NORM_EPS).is_err());
    Ok(())
}
