//! Finite-difference checks of conv2d (every stride/padding combination of the brief,
//! with and without bias, pointwise, non-square kernels, both threading paths) and of
//! nearest upsampling; plus shape errors and low-precision storage.

use senseflow::ops;
use senseflow::rng::Philox;
use senseflow::testing::{check_close, GradCheck};
use senseflow::{DType, Result, Tensor};

/// conv and upsampling are linear in each input, so central differences carry only
/// f32 roundoff, O(u·|L|/eps) ≈ 3e-5 of the scale here: a tighter budget than the
/// default, which is sized for curvature.
const GC: GradCheck = GradCheck { eps: 1e-2, tol: 2e-4, max_probes: 64 };

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, &mut Philox::new(seed))
}

#[test]
fn conv2d_stride_padding_bias() -> Result<()> {
    let x = randn(&[2, 3, 7, 5], 1);
    let w = randn(&[4, 3, 3, 3], 2);
    let b = randn(&[4], 3);
    for stride in [(1, 1), (2, 2), (2, 1)] {
        for padding in [(0, 0), (1, 1), (1, 0)] {
            let name = format!("conv2d s{stride:?} p{padding:?}");
            GC.run(&format!("{name} bias"), &[x.clone(), w.clone(), b.clone()], |t| {
                ops::conv2d(&t[0], &t[1], Some(&t[2]), stride, padding)
            })?;
            GC.run(&name, &[x.clone(), w.clone()], |t| ops::conv2d(&t[0], &t[1], None, stride, padding))?;
        }
    }
    Ok(())
}

#[test]
fn conv2d_pointwise_and_odd_kernels() -> Result<()> {
    let x = randn(&[2, 3, 7, 5], 4);
    let b = randn(&[4], 5);
    let w1 = randn(&[4, 3, 1, 1], 6);
    GC.run("conv2d 1x1", &[x.clone(), w1.clone(), b.clone()], |t| {
        ops::conv2d(&t[0], &t[1], Some(&t[2]), (1, 1), (0, 0))
    })?;
    GC.run("conv2d 1x1 s2 p1", &[x.clone(), w1], |t| ops::conv2d(&t[0], &t[1], None, (2, 2), (1, 1)))?;
    let w23 = randn(&[4, 3, 2, 3], 7);
    GC.run("conv2d 2x3 s(1,2) p(1,2)", &[x.clone(), w23, b.clone()], |t| {
        ops::conv2d(&t[0], &t[1], Some(&t[2]), (1, 2), (1, 2))
    })?;
    // Kernel as large as the padded input: a single output position.
    let wfull = randn(&[2, 3, 9, 5], 8);
    GC.run("conv2d full-size kernel", &[x, wfull], |t| ops::conv2d(&t[0], &t[1], None, (1, 1), (1, 0)))?;
    Ok(())
}

#[test]
fn conv2d_threading_paths() -> Result<()> {
    let gc = GradCheck { max_probes: 24, ..GC };
    // Several images with enough work: images in parallel, weight gradient reduced.
    let x = randn(&[3, 6, 9, 8], 9);
    let w = randn(&[8, 6, 3, 3], 10).scale(0.2)?;
    let b = randn(&[8], 11);
    gc.run("conv2d batch-parallel", &[x, w, b], |t| ops::conv2d(&t[0], &t[1], Some(&t[2]), (1, 1), (1, 1)))?;
    // One image with a large product: threaded GEMM.
    let x = randn(&[1, 8, 16, 16], 12);
    let w = randn(&[16, 8, 3, 3], 13).scale(0.2)?;
    gc.run("conv2d one image, threaded gemm", &[x, w], |t| ops::conv2d(&t[0], &t[1], None, (2, 1), (1, 1)))?;
    Ok(())
}

#[test]
fn conv2d_matches_direct_loops() -> Result<()> {
    // An independent reference for an odd geometry: the definition, summed in f64.
    let (bn, cin, h, w, cout, kh, kw, (sh, sw), (ph, pw)) = (2, 3, 7, 5, 4, 3, 2, (2, 1), (1, 2));
    let x = randn(&[bn, cin, h, w], 14);
    let wt = randn(&[cout, cin, kh, kw], 15);
    let bias = randn(&[cout], 16);
    let y = ops::conv2d(&x, &wt, Some(&bias), (sh, sw), (ph, pw))?;
    let (ho, wo) = ((h + 2 * ph - kh) / sh + 1, (w + 2 * pw - kw) / sw + 1);
    assert_eq!(y.shape(), &[bn, cout, ho, wo]);
    let (xv, wv, bv) = (x.to_vec_f32()?, wt.to_vec_f32()?, bias.to_vec_f32()?);
    let mut want = Vec::new();
    for b in 0..bn {
        for co in 0..cout {
            for oh in 0..ho {
                for ow in 0..wo {
                    let mut s = bv[co] as f64;
                    for ci in 0..cin {
                        for i in 0..kh {
                            for j in 0..kw {
                                let (ih, iw) =
                                    ((oh * sh + i) as isize - ph as isize, (ow * sw + j) as isize - pw as isize);
                                if ih >= 0 && iw >= 0 && (ih as usize) < h && (iw as usize) < w {
                                    let xi = ((b * cin + ci) * h + ih as usize) * w + iw as usize;
                                    s += xv[xi] as f64 * wv[((co * cin + ci) * kh + i) * kw + j] as f64;
                                }
                            }
                        }
                    }
                    want.push(s as f32);
                }
            }
        }
    }
    check_close("conv2d vs direct loops", &y.to_vec_f32()?, &want, 1e-6)
}

#[test]
fn conv2d_low_precision_storage() -> Result<()> {
    // bf16 in, bf16 out; the math is the f32 conv of the stored values, rounded once.
    let x = randn(&[2, 3, 7, 5], 17);
    let w = randn(&[4, 3, 3, 3], 18);
    let (xb, wb) = (x.to_dtype(DType::BF16)?, w.to_dtype(DType::BF16)?);
    let y = ops::conv2d(&xb, &wb, None, (1, 1), (1, 1))?;
    assert_eq!(y.dtype(), DType::BF16);
    let want = ops::conv2d(&xb.to_dtype(DType::F32)?, &wb.to_dtype(DType::F32)?, None, (1, 1), (1, 1))?;
    let want: Vec<f32> = want.to_vec_f32()?.iter().map(|&v| senseflow::tensor::bf16_round(v)).collect();
    assert_eq!(y.to_vec_f32()?, want);
    Ok(())
}

#[test]
fn conv2d_shape_errors() -> Result<()> {
    let x = randn(&[2, 3, 7, 5], 19);
    let w = randn(&[4, 3, 3, 3], 20);
    assert!(ops::conv2d(&x, &randn(&[4, 2, 3, 3], 21), None, (1, 1), (0, 0)).is_err(), "channel mismatch");
    assert!(ops::conv2d(&x, &randn(&[4, 3, 9, 3], 22), None, (1, 1), (0, 0)).is_err(), "kernel taller than input");
    assert!(ops::conv2d(&x, &w, Some(&randn(&[3], 23)), (1, 1), (0, 0)).is_err(), "bias length");
    assert!(ops::conv2d(&x, &w, None, (0, 1), (0, 0)).is_err(), "zero stride");
    assert!(ops::conv2d(&randn(&[3, 7, 5], 24), &w, None, (1, 1), (0, 0)).is_err(), "3-d input");
    assert!(ops::upsample_nearest2d(&x, 0).is_err(), "zero factor");
    Ok(())
}

#[test]
fn upsample_nearest() -> Result<()> {
    let x = randn(&[2, 3, 5, 7], 25);
    for f in [1, 2, 3] {
        GC.run(&format!("upsample_nearest2d x{f}"), std::slice::from_ref(&x), |t| ops::upsample_nearest2d(&t[0], f))?;
    }
    let y = x.upsample_nearest2d(3)?;
    assert_eq!(y.shape(), &[2, 3, 15, 21]);
    let (xv, yv) = (x.to_vec_f32()?, y.to_vec_f32()?);
    // Plane 4, output (8, 20) reads input (2, 6).
    assert_eq!(yv[4 * 15 * 21 + 8 * 21 + 20], xv[4 * 35 + 2 * 7 + 6]);
    Ok(())
}
