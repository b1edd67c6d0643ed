//! Finite-difference checks of the scalar losses (both operands of the regression
//! losses; hinge logits kept away from the kinks at ±1), plus values on hand-made inputs.

use senseflow::ops;
use senseflow::rng::Philox;
use senseflow::testing::GradCheck;
use senseflow::{Result, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, &mut Philox::new(seed))
}

/// Moves values within `margin` of `kink` out to `kink ± margin`.
fn away_from(t: &Tensor, kink: f32, margin: f32) -> Result<Tensor> {
    let v =
        t.to_vec_f32()?.into_iter().map(
            |x| {
                if (x - kink).abs() < margin {
                    kink + margin.copysign(x - kink)
                } else {
                    x
                }
            },
        );
    Tensor::from_vec(v.collect(), t.shape())
}

#[test]
fn regression_losses() -> Result<()> {
    let gc = GradCheck::default();
    let a = randn(&[3, 5, 7], 1);
    let b = randn(&[3, 5, 7], 2);
    gc.run("mse_loss", &[a.clone(), b.clone()], |t| ops::mse_loss(&t[0], &t[1]))?;
    gc.run("pseudo_huber_loss c=0.5", &[a.clone(), b.clone()], |t| ops::pseudo_huber_loss(&t[0], &t[1], 0.5))?;
    // c = 0.001 (ISG): curvature ~c²/|d|³ explodes near d = 0, so the probes stay at
    // |d| ≥ 0.05 ≫ eps; the tiny-|d| regime is checked against torch in torch_conv.rs.
    let d = away_from(&a.sub(&b)?, 0.0, 0.05)?;
    let b_far = a.sub(&d)?;
    gc.run("pseudo_huber_loss c=0.001", &[a, b_far], |t| ops::pseudo_huber_loss(&t[0], &t[1], 0.001))?;
    Ok(())
}

#[test]
fn hinge_losses() -> Result<()> {
    let gc = GradCheck::default();
    let x = randn(&[4, 1, 5, 7], 3).scale(1.5)?;
    let x = away_from(&away_from(&x, 1.0, 0.05)?, -1.0, 0.05)?;
    gc.run("hinge_d_real", std::slice::from_ref(&x), |t| ops::hinge_d_real(&t[0]))?;
    gc.run("hinge_d_fake", std::slice::from_ref(&x), |t| ops::hinge_d_fake(&t[0]))?;
    gc.run("hinge_g", &[x], |t| ops::hinge_g(&t[0]))?;
    Ok(())
}

#[test]
fn loss_values() -> Result<()> {
    let a = Tensor::from_vec(vec![0.0, 2.0, -1.0, 3.0], &[2, 2])?;
    let b = Tensor::from_vec(vec![1.0, 2.0, 1.0, 0.0], &[2, 2])?;
    assert_eq!(ops::mse_loss(&a, &b)?.to_scalar()?, (1.0 + 0.0 + 4.0 + 9.0) / 4.0);
    assert_eq!(ops::mse_loss(&a, &b)?.shape(), &[] as &[usize]);
    // Pseudo-Huber with c = 3: sqrt(d² + 9) − 3 for d = −1, 0, −2, 3.
    let want = [10f64.sqrt() - 3.0, 0.0, 13f64.sqrt() - 3.0, 18f64.sqrt() - 3.0].iter().sum::<f64>() / 4.0;
    assert!((ops::pseudo_huber_loss(&a, &b, 3.0)?.to_scalar()? as f64 - want).abs() < 1e-7);
    // Tiny differences keep their digits: d = 1e-6, c = 1e-3 gives d²/2c = 5e-10.
    let t = Tensor::from_vec(vec![1.0 + 1e-6 * 8.0], &[1])?;
    let one = Tensor::from_vec(vec![1.0], &[1])?;
    let d = (1.0f32 + 8e-6) as f64 - 1.0;
    let v = ops::pseudo_huber_loss(&t, &one, 1e-3)?.to_scalar()? as f64;
    assert!((v - d * d / 2e-3).abs() < 1e-3 * v, "{v} vs {}", d * d / 2e-3);
    let logits = Tensor::from_vec(vec![-2.0, -0.5, 0.5, 2.0], &[4])?;
    assert_eq!(ops::hinge_d_real(&logits)?.to_scalar()?, (3.0 + 1.5 + 0.5 + 0.0) / 4.0);
    assert_eq!(ops::hinge_d_fake(&logits)?.to_scalar()?, (0.0 + 0.5 + 1.5 + 3.0) / 4.0);
    assert_eq!(ops::hinge_g(&logits)?.to_scalar()?, 0.0);
    // Shape and parameter errors.
    assert!(ops::mse_loss(&a, &one).is_err());
    assert!(ops::pseudo_huber_loss(&a, &b, 0.0).is_err());
    Ok(())
}

#[test]
fn loss_gradient_reaches_only_tracked_inputs() -> Result<()> {
    let a = randn(&[3, 5], 4).var();
    let b = randn(&[3, 5], 5);
    let l = ops::mse_loss(&a, &b)?;
    let g = senseflow::backward(&l)?;
    let (ga, av, bv) = (g.get(&a).unwrap().to_vec_f32()?, a.to_vec_f32()?, b.to_vec_f32()?);
    for i in 0..15 {
        assert!((ga[i] - 2.0 * (av[i] - bv[i]) / 15.0).abs() < 1e-6);
    }
    assert_eq!(g.len(), 1);
    Ok(())
}
