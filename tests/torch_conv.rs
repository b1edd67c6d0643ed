//! Convolution, upsampling, losses and spectral norm against PyTorch (float64
//! references from tools/fixtures/ops_conv.py).

use senseflow::ops;
use senseflow::testing::{check_close, Fixture};
use senseflow::Result;

/// f32 op vs float64 torch, relative to each reference's largest magnitude.
const TOL: f32 = 1e-5;

fn fixture(family: &str, case: &str) -> Result<Fixture> {
    Fixture::load(format!("{}/tests/fixtures/ops/{family}/{case}.safetensors", env!("CARGO_MANIFEST_DIR")))
}

fn pair(f: &Fixture, key: &str) -> Result<(usize, usize)> {
    let v = &f.params[key];
    match (v[0].as_u64(), v[1].as_u64()) {
        (Some(a), Some(b)) => Ok((a as usize, b as usize)),
        _ => Err(senseflow::Error::Msg(format!("{}: params.{key} is not a pair", f.path.display()))),
    }
}

#[test]
fn conv2d_matches_torch() -> Result<()> {
    for case in [
        "s11_p00_bias",
        "s22_p11_bias",
        "s21_p10_nobias",
        "s12_p01_bias",
        "pointwise",
        "pointwise_s22",
        "batch_parallel",
        "gemm_threaded",
    ] {
        let f = fixture("conv", case)?;
        let (stride, padding) = (pair(&f, "stride")?, pair(&f, "padding")?);
        if f.param_bool("bias")? {
            f.check_op(&["x", "w", "b"], TOL, |t| ops::conv2d(&t[0], &t[1], Some(&t[2]), stride, padding))?;
        } else {
            f.check_op(&["x", "w"], TOL, |t| ops::conv2d(&t[0], &t[1], None, stride, padding))?;
        }
    }
    Ok(())
}

#[test]
fn upsample_matches_torch() -> Result<()> {
    for case in ["upsample_x2", "upsample_x3"] {
        let f = fixture("conv", case)?;
        let factor = f.param_usize("factor")?;
        f.check_op(&["x"], TOL, |t| ops::upsample_nearest2d(&t[0], factor))?;
    }
    Ok(())
}

#[test]
fn losses_match_torch() -> Result<()> {
    fixture("loss", "mse")?.check_op(&["a", "b"], TOL, |t| ops::mse_loss(&t[0], &t[1]))?;
    for case in ["pseudo_huber_c0.001", "pseudo_huber_c0.5"] {
        let f = fixture("loss", case)?;
        let c = f.param_f32("c")?;
        f.check_op(&["a", "b"], TOL, |t| ops::pseudo_huber_loss(&t[0], &t[1], c))?;
    }
    fixture("loss", "hinge_d_real")?.check_op(&["x"], TOL, |t| ops::hinge_d_real(&t[0]))?;
    fixture("loss", "hinge_d_fake")?.check_op(&["x"], TOL, |t| ops::hinge_d_fake(&t[0]))?;
    fixture("loss", "hinge_g")?.check_op(&["x"], TOL, |t| ops::hinge_g(&t[0]))?;
    Ok(())
}

#[test]
fn spectral_norm_matches_torch() -> Result<()> {
    for case in ["linear_n1", "linear_n3", "conv_n1", "conv_n3"] {
        let f = fixture("spectral_norm", case)?;
        let n_iters = f.param_usize("n_iters")?;
        let eps = f.param_f32("eps")?;
        let u0 = f.get("u")?.to_vec_f32()?;
        // Starts from torch's u before the call; keeps the updated u to compare.
        let u_after = std::cell::RefCell::new(Vec::new());
        f.check_op(&["w"], TOL, |t| {
            let mut u = u0.clone();
            let y = ops::spectral_norm_power_iteration(&t[0], &mut u, n_iters, eps)?;
            *u_after.borrow_mut() = u;
            Ok(y)
        })?;
        check_close(&format!("{case}: u_after"), &u_after.into_inner(), &f.get("u_after")?.to_vec_f32()?, TOL)?;
    }
    Ok(())
}
