//! SenseFlow building blocks against hand-computed cases: DMD gradient, ISG target
//! and prediction, IDA blend, TTUR schedule, anchors and w(τ), DiffAugment, and the
//! discriminator heads' shapes for several ViT depths.

use senseflow::diffusion::Shift;
use senseflow::nn::{ParamStore, VarBuilder};
use senseflow::rng::Philox;
use senseflow::senseflow::augment::{diff_augment, AugmentPolicy};
use senseflow::senseflow::disc::{feature_layers, DiscHeads};
use senseflow::senseflow::{self as sf, AdvWeight, Anchors};
use senseflow::testing::{check_close, GradCheck};
use senseflow::{DType, Result, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, &mut Philox::new(seed))
}

#[test]
fn dmd_gradient_is_the_normalized_score_difference() -> Result<()> {
    let (b, c, h, w) = (2, 3, 4, 5);
    let x = randn(&[b, c, h, w], 1).var();
    let x0_real = randn(&[b, c, h, w], 2);
    let x0_fake = randn(&[b, c, h, w], 3);
    let (loss, _) = sf::dmd_loss(&x, &x0_real, &x0_fake)?;
    let g = senseflow::backward(&loss)?.get(&x).unwrap().to_vec_f32()?;
    // Hand computation: grad = (p_real − p_fake)/mean|p_real| per sample, dL/dx = grad/N.
    let (xv, rv, fv) = (x.to_vec_f32()?, x0_real.to_vec_f32()?, x0_fake.to_vec_f32()?);
    let per = c * h * w;
    let n = (b * per) as f64;
    let mut want = vec![0f32; xv.len()];
    for s in 0..b {
        let r = s * per..(s + 1) * per;
        let norm: f64 = r.clone().map(|i| (xv[i] - rv[i]).abs() as f64).sum::<f64>() / per as f64;
        for i in r {
            let p_real = (xv[i] - rv[i]) as f64;
            let p_fake = (xv[i] - fv[i]) as f64;
            want[i] = ((p_real - p_fake) / norm / n) as f32;
        }
    }
    check_close("dL_DMD/dx", &g, &want, 1e-5)?;
    // The loss value is ½·mean(grad²) by construction.
    let l = loss.to_scalar()? as f64;
    let want_l: f64 = want.iter().map(|&d| (d as f64 * n).powi(2)).sum::<f64>() / n * 0.5;
    assert!((l - want_l).abs() <= 1e-5 * want_l, "loss {l} vs {want_l}");
    Ok(())
}

#[test]
fn dmd_nan_becomes_zero_gradient() -> Result<()> {
    // Both scores agree with x exactly: p_real = p_fake = 0, mean|p_real| = 0, so the
    // normalized difference is 0/0 = NaN, which nan_to_num turns into no update.
    let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[1, 4])?.var();
    let (loss, _) = sf::dmd_loss(&x, &x.detach(), &x.detach())?;
    assert_eq!(loss.to_scalar()?, 0.0);
    let g = senseflow::backward(&loss)?.get(&x).unwrap().to_vec_f32()?;
    assert_eq!(g, vec![0.0; 4]);
    Ok(())
}

#[test]
fn isg_target_and_prediction_by_hand() -> Result<()> {
    // Constant velocity fields make every Euler step exact arithmetic.
    let (tau, mid, prev) = (0.9f32, 0.8f32, 0.75f32);
    let x_tau = Tensor::from_vec(vec![1.0, -2.0, 0.5], &[1, 3])?;
    let v_teacher = Tensor::from_vec(vec![0.2, 0.4, -1.0], &[1, 3])?;
    let v_gen_mid = Tensor::from_vec(vec![1.0, 1.0, 2.0], &[1, 3])?;
    let x_mid = sf::euler_step(&x_tau, &v_teacher, tau, mid)?;
    let x_tar = sf::euler_step(&x_mid, &v_gen_mid, mid, prev)?;
    // x_mid = x + (0.8−0.9)·v_t;  x_tar = x_mid + (0.75−0.8)·v_g
    let want_tar = [1.0 - 0.1 * 0.2 - 0.05 * 1.0, -2.0 - 0.1 * 0.4 - 0.05, 0.5 + 0.1 - 0.05 * 2.0];
    check_close("ISG target", &x_tar.to_vec_f32()?, &want_tar, 1e-6)?;
    let v_g = Tensor::from_vec(vec![0.5, 0.0, -0.5], &[1, 3])?.var();
    let x_pred = sf::euler_step(&x_tau, &v_g, tau, prev)?;
    let want_pred = [1.0 - 0.15 * 0.5, -2.0, 0.5 + 0.15 * 0.5];
    check_close("ISG prediction", &x_pred.to_vec_f32()?, &want_pred, 1e-6)?;
    let c = 0.001f32;
    let loss = sf::isg_loss(&x_pred, &x_tar, c)?;
    let want_l: f32 =
        want_pred.iter().zip(&want_tar).map(|(p, t)| ((p - t).powi(2) + c * c).sqrt() - c).sum::<f32>() / 3.0;
    assert!((loss.to_scalar()? - want_l).abs() < 1e-6);
    // Gradient only to the generator's direct step: d/dv_g = (σ_prev − τ)·d/dx_pred.
    let g = senseflow::backward(&loss)?.get(&v_g).unwrap().to_vec_f32()?;
    let want_g: Vec<f32> = want_pred
        .iter()
        .zip(&want_tar)
        .map(|(p, t)| (prev - tau) * (p - t) / ((p - t).powi(2) + c * c).sqrt() / 3.0)
        .collect();
    check_close("dL_ISG/dv_g", &g, &want_g, 1e-5)
}

#[test]
fn ida_blend_is_exact() -> Result<()> {
    let phi = Tensor::from_vec(vec![1.0, 2.0, -4.0], &[3])?.var();
    let theta = Tensor::from_vec(vec![3.0, 2.0, 4.0], &[3])?;
    sf::ida_blend(&[phi.clone()], &[theta], 0.97)?;
    let got = phi.to_vec_f32()?;
    let l = 0.97f32;
    let want = [l * 1.0 + (1.0 - l) * 3.0, l * 2.0 + (1.0 - l) * 2.0, l * -4.0 + (1.0 - l) * 4.0];
    assert_eq!(got, want);
    assert!(sf::ida_blend(&[phi.clone()], &[Tensor::zeros(&[2])], 0.5).is_err());
    Ok(())
}

#[test]
fn ttur_schedule() {
    let turns: Vec<u64> = (1..=20).filter(|&i| sf::generator_turn(i, 5)).collect();
    assert_eq!(turns, vec![5, 10, 15, 20]);
    assert!((1..=7).all(|i| sf::generator_turn(i, 1)));
    assert_eq!((1..=30).filter(|&i| sf::generator_turn(i, 10)).count(), 3);
}

#[test]
fn sd35_anchors_and_weights() -> Result<()> {
    let a = Anchors::new(vec![999, 749, 499, 249], Shift::Sd3(3.0))?;
    let s = a.schedule();
    for (got, want) in s.iter().zip([1.0, 0.9, 0.75, 0.5, 0.0]) {
        assert!((got - want).abs() < 1e-6, "{s:?}");
    }
    let w: Vec<f32> = (0..4).map(|i| a.adv_weight(i, AdvWeight::Published)).collect();
    for (got, want) in w.iter().zip([8.96e-6, 0.2513, 0.5636, 0.8109]) {
        assert!((got - want).abs() < 1e-3 * want.max(1e-2), "{w:?}");
    }
    assert!((a.adv_weight(1, AdvWeight::SigmaSq) - 0.81).abs() < 1e-6);
    assert_eq!(a.adv_weight(2, AdvWeight::One), 1.0);
    // FLUX: σ from the exponential shift; published weight (1 − σ)².
    let f = Anchors::new(vec![999, 749, 499, 249], Shift::Flux { mu: 1.15 })?;
    for (i, want) in [1.0, 0.904, 0.759, 0.512].iter().enumerate() {
        assert!((f.sigma(i) - want).abs() < 2e-3);
        assert!((f.adv_weight(i, AdvWeight::Published) - (1.0 - f.sigma(i)).powi(2)).abs() < 1e-7);
    }
    // ISG's mid σ lies strictly inside the segment, margin away on the grid.
    let mut rng = Philox::new(5);
    for i in 0..4 {
        for _ in 0..200 {
            let m = a.sample_mid_sigma(i, 50, &mut rng)?;
            let lo = if i == 3 { a.sigma_at(49) } else { a.sigma_at(a.indices[i + 1] + 50) };
            assert!(m <= a.sigma_at(a.indices[i] - 50) && m >= lo, "anchor {i}: {m}");
        }
    }
    assert!(a.sample_mid_sigma(0, 200, &mut rng).is_err());
    assert!(Anchors::new(vec![500, 700], Shift::Sd3(3.0)).is_err());
    Ok(())
}

#[test]
fn diff_augment_is_differentiable_and_deterministic() -> Result<()> {
    let x = Tensor::rand(&[2, 3, 8, 8], 0.0, 1.0, &mut Philox::new(9));
    let a = diff_augment(&x, AugmentPolicy::ALL, &mut Philox::new(10))?;
    let b = diff_augment(&x, AugmentPolicy::ALL, &mut Philox::new(10))?;
    assert_eq!(a.to_vec_f32()?, b.to_vec_f32()?);
    assert_eq!(diff_augment(&x, AugmentPolicy::NONE, &mut Philox::new(10))?.to_vec_f32()?, x.to_vec_f32()?);
    // Cutout zeroes a quarter of each image's pixels (a square of half the size) at most.
    let cut = diff_augment(&x, AugmentPolicy { color: false, translation: false, cutout: true }, &mut Philox::new(11))?;
    let zeros = cut.to_vec_f32()?.iter().filter(|&&v| v == 0.0).count();
    assert!(zeros > 0 && zeros <= 2 * 3 * 16, "{zeros}");
    GradCheck::default().run("diff_augment", &[x], |t| diff_augment(&t[0], AugmentPolicy::ALL, &mut Philox::new(12)))
}

#[test]
fn discriminator_heads_for_several_vit_depths() -> Result<()> {
    assert_eq!(feature_layers(24), vec![0, 3, 6, 9, 11, 15, 20, 24]);
    assert_eq!(feature_layers(12), vec![0, 2, 3, 5, 6, 8, 10, 12]);
    assert_eq!(feature_layers(4), vec![0, 1, 2, 3, 4]);
    for (depth, dim, grid) in [(4usize, 32usize, 8usize), (6, 24, 7), (12, 16, 16)] {
        let levels = feature_layers(depth).len();
        let store = ParamStore::new();
        let heads = DiscHeads::new(&VarBuilder::fresh(&store, DType::F32, 3), &vec![dim; levels], 20, 16, 4)?;
        let feats: Vec<Tensor> = (0..levels).map(|l| randn(&[2, dim, grid, grid], 100 + l as u64)).collect();
        let refs: Vec<Tensor> = (0..levels).map(|l| randn(&[2, dim], 200 + l as u64)).collect();
        let logits = heads.forward(&feats, &randn(&[2, 20], 7), &refs, true)?;
        assert_eq!(logits.shape(), [2, levels], "depth {depth}");
        assert!(logits.to_vec_f32()?.iter().all(|v| v.is_finite()));
        // Only the heads train: every head parameter gets a gradient from the hinge loss.
        let loss = senseflow::ops::hinge_d_real(&logits)?;
        let grads = senseflow::backward(&loss)?;
        let missing: Vec<String> =
            store.named().into_iter().filter(|(_, p)| grads.get(p).is_none()).map(|(k, _)| k).collect();
        assert!(missing.is_empty() || loss.to_scalar()? == 0.0, "no gradient for {missing:?}");
    }
    Ok(())
}
