//! RoPE (FLUX layout), FLUX's rotary tables, embedding lookups and timestep
//! embeddings: finite-difference gradient checks on odd shapes, formula checks
//! against direct f64 evaluations, and the errors for bad ids and shapes.

use senseflow::ops;
use senseflow::rng::Philox;
use senseflow::testing::{check_close, GradCheck};
use senseflow::{Result, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, &mut Philox::new(seed))
}

/// FLUX-style position ids [N, 3]: (0, row, col) of an image grid, col-major so the
/// three axes all vary.
fn grid_ids(n: usize) -> Tensor {
    let v = (0..n).flat_map(|i| [0.0, (i % 5) as f32, (i / 5) as f32 + 0.5]).collect();
    Tensor::from_vec(v, &[n, 3]).unwrap()
}

#[test]
fn rope_grad() -> Result<()> {
    let gc = GradCheck::default();
    // Arbitrary (not unit-norm) cos/sin with distinct values in each pair's two
    // columns, so a swapped index cannot cancel out.
    let (x, cos, sin) = (randn(&[3, 5, 7, 6], 1), randn(&[7, 6], 2), randn(&[7, 6], 3));
    gc.run("rope/random tables", &[x], |t| ops::rope(&t[0], &cos, &sin))?;
    let (cos, sin) = ops::flux_rope_cos_sin(&grid_ids(11), &[4, 6, 6], 10000.0)?;
    gc.run("rope/flux tables", &[randn(&[2, 3, 11, 16], 4)], |t| t[0].rope(&cos, &sin))
}

#[test]
fn rope_matches_formula() -> Result<()> {
    let (x, cos, sin) = (randn(&[2, 3, 7, 6], 5), randn(&[7, 6], 6), randn(&[7, 6], 7));
    let y = ops::rope(&x, &cos, &sin)?.to_vec_f32()?;
    let (xv, c, s) = (x.to_vec_f32()?, cos.to_vec_f32()?, sin.to_vec_f32()?);
    let mut want = vec![0f32; xv.len()];
    for (r, (o, xr)) in want.chunks_exact_mut(6).zip(xv.chunks_exact(6)).enumerate() {
        let t = (r % 7) * 6;
        for i in (0..6).step_by(2) {
            o[i] = xr[i] * c[t + i] - xr[i + 1] * s[t + i];
            o[i + 1] = xr[i + 1] * c[t + i + 1] + xr[i] * s[t + i + 1];
        }
    }
    check_close("rope vs formula", &y, &want, 0.0)?;
    // A permuted (non-contiguous) x gives the same rows.
    let xt = x.transpose(0, 1)?;
    let yt = ops::rope(&xt, &cos, &sin)?;
    check_close(
        "rope of a transposed view",
        &yt.to_vec_f32()?,
        &ops::rope(&xt.contiguous()?, &cos, &sin)?.to_vec_f32()?,
        0.0,
    )
}

#[test]
fn flux_tables_match_formula() -> Result<()> {
    let axes = [16, 56, 56];
    let ids = grid_ids(9);
    let (cos, sin) = ops::flux_rope_cos_sin(&ids, &axes, 10000.0)?;
    assert_eq!(cos.shape(), [9, 128]);
    let (c, s, idv) = (cos.to_vec_f32()?, sin.to_vec_f32()?, ids.to_vec_f32()?);
    let mut col = 0;
    for (a, &dim) in axes.iter().enumerate() {
        for k in 0..dim / 2 {
            for n in 0..9 {
                let angle = idv[n * 3 + a] as f64 / 10000f64.powf(2.0 * k as f64 / dim as f64);
                for j in [col + 2 * k, col + 2 * k + 1] {
                    assert_eq!(c[n * 128 + j], angle.cos() as f32, "cos at n {n} col {j}");
                    assert_eq!(s[n * 128 + j], angle.sin() as f32, "sin at n {n} col {j}");
                }
            }
        }
        col += dim;
    }
    assert!(ops::flux_rope_cos_sin(&ids, &[16, 56], 10000.0).is_err());
    assert!(ops::flux_rope_cos_sin(&ids, &[16, 55, 57], 10000.0).is_err());
    Ok(())
}

#[test]
fn rope_shape_errors() {
    let x = randn(&[2, 3, 7, 6], 8);
    for (c, s) in [
        (randn(&[7, 4], 9), randn(&[7, 4], 9)),
        (randn(&[6, 6], 9), randn(&[6, 6], 9)),
        (randn(&[7, 6], 9), randn(&[7, 4], 9)),
    ] {
        let e = ops::rope(&x, &c, &s).expect_err("mismatched tables are rejected");
        assert!(e.to_string().starts_with("rope:"), "{e}");
    }
    let odd = randn(&[2, 7, 5], 10);
    assert!(ops::rope(&odd, &randn(&[7, 5], 11), &randn(&[7, 5], 12)).is_err());
}

#[test]
fn embedding_grad() -> Result<()> {
    // Repeated ids: the table gradient must sum their rows.
    let ids =
        Tensor::from_vec(vec![3.0, 0.0, 10.0, 3.0, 7.0, 3.0, 1.0, 10.0, 0.0, 5.0, 2.0, 9.0, 3.0, 4.0, 6.0], &[3, 5])?;
    let table = randn(&[11, 6], 13);
    GradCheck::default().run("embedding", std::slice::from_ref(&table), |t| ops::embedding(&ids, &t[0]))?;
    let y = ops::embedding(&ids, &table)?;
    assert_eq!(y.shape(), [3, 5, 6]);
    let (yv, tv) = (y.to_vec_f32()?, table.to_vec_f32()?);
    assert_eq!(&yv[12..18], &tv[60..66], "position 2 holds row 10");
    let u: Vec<u32> = ids.to_vec_f32()?.iter().map(|&x| x as u32).collect();
    check_close("embedding_u32 vs embedding", &ops::embedding_u32(&u, &[3, 5], &table)?.to_vec_f32()?, &yv, 0.0)
}

#[test]
fn embedding_rejects_bad_ids() {
    let table = randn(&[11, 6], 14);
    let e = ops::embedding(&Tensor::from_vec(vec![1.0, 11.0], &[2]).unwrap(), &table).unwrap_err().to_string();
    println!("{e}");
    assert!(e.contains("id 11") && e.contains("0..11"), "{e}");
    for bad in [-1.0, 2.5, f32::NAN] {
        assert!(ops::embedding(&Tensor::from_vec(vec![bad], &[1]).unwrap(), &table).is_err(), "id {bad}");
    }
    let e = ops::embedding_u32(&[0, 12], &[2], &table).unwrap_err().to_string();
    assert!(e.contains("id 12"), "{e}");
    assert!(ops::embedding_u32(&[0, 1, 2], &[2], &table).is_err());
    assert!(ops::embedding(&Tensor::ones(&[2]), &randn(&[11], 15)).is_err());
}

#[test]
fn timestep_embedding_grad_and_formula() -> Result<()> {
    let t = Tensor::from_vec(vec![0.3, 1.7, 0.0, 2.9, 0.85], &[5])?;
    let gc = GradCheck::default();
    gc.run("timestep_embedding/flip", std::slice::from_ref(&t), |x| {
        ops::timestep_embedding(&x[0], 33, true, 0.0, 1.0, 10000.0)
    })?;
    gc.run("timestep_embedding/shift+scale", std::slice::from_ref(&t), |x| {
        ops::timestep_embedding(&x[0], 32, false, 1.0, 2.5, 5000.0)
    })?;

    // Large timesteps (σ·1000): diffusers' float32 recipe exactly (the argument is
    // formed in f32), and within the f32 rounding of the argument of the f64 formula.
    let big = Tensor::from_vec(vec![999.0, 500.25, 1.0], &[3])?;
    let y = ops::timestep_embedding(&big, 33, true, 0.0, 1.0, 10000.0)?;
    assert_eq!(y.shape(), [3, 33]);
    let yv = y.to_vec_f32()?;
    let half = 16;
    for (b, &tb) in [999.0f32, 500.25, 1.0].iter().enumerate() {
        for k in 0..half {
            let exponent = -(10000f64.ln() as f32) * k as f32 / half as f32;
            let a32 = tb * (exponent as f64).exp() as f32;
            assert_eq!(yv[b * 33 + k], (a32 as f64).cos() as f32, "flip puts cos first");
            assert_eq!(yv[b * 33 + half + k], (a32 as f64).sin() as f32);
            let a = tb as f64 * (-(10000f64).ln() * k as f64 / half as f64).exp();
            let budget = a.abs() * 2f64.powi(-22) + 2f64.powi(-24);
            assert!((yv[b * 33 + k] as f64 - a.cos()).abs() <= budget, "t={tb} k={k}");
        }
        assert_eq!(yv[b * 33 + 32], 0.0, "odd dim pads a zero column");
    }
    assert!(ops::timestep_embedding(&big, 2, false, 1.0, 1.0, 10000.0).is_err(), "dim/2 − shift = 0");
    assert!(ops::timestep_embedding(&big.reshape(&[3, 1])?, 8, false, 1.0, 1.0, 10000.0).is_err());
    Ok(())
}
