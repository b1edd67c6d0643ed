//! Fused attention: finite-difference gradient checks of q, k and v (with and without
//! a key mask, Nq ≠ Nk, sequence 97, odd head counts, non-default scale, causal), and
//! the fused forward/backward against a naive materialized-softmax reference in f64 at
//! awkward sizes (1, 97, 257 tokens, partial tiles, a fully masked batch, causal
//! masks crossing and skipping tiles).

use senseflow::ops;
use senseflow::rng::Philox;
use senseflow::testing::{check_close, rel_err, GradCheck};
use senseflow::{backward, Result, Tensor};

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, &mut Philox::new(seed))
}

/// [B, Nk] mask with a different masked set per batch (never a whole batch).
fn key_mask(b: usize, nk: usize) -> Tensor {
    let v = (0..b * nk)
        .map(|i| if (i % nk) % (3 + i / nk) == 1 || (i / nk == 1 && i % nk >= nk - 2) { 0.0 } else { 1.0 })
        .collect();
    Tensor::from_vec(v, &[b, nk]).unwrap()
}

/// Output and q/k/v gradients of L = Σ out ⊙ g.
struct Reference {
    out: Vec<f32>,
    dq: Vec<f32>,
    dk: Vec<f32>,
    dv: Vec<f32>,
}

/// Naive attention in f64: the full softmax per query row, then its textbook
/// backward. A query with no attended key gives a zero row and zero gradients.
/// `causal`: query i sees keys j ≤ i only.
#[allow(clippy::too_many_arguments)]
fn attention_naive(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: f64,
    g: &Tensor,
    causal: bool,
) -> Result<Reference> {
    let [b, h, nq, d] = q.shape().try_into().unwrap();
    let (nk, dv) = (k.shape()[2], v.shape()[3]);
    let (qv, kv, vv, gv) = (q.to_vec_f32()?, k.to_vec_f32()?, v.to_vec_f32()?, g.to_vec_f32()?);
    let mv = match mask {
        Some(m) => m.to_vec_f32()?,
        None => vec![1.0; b * nk],
    };
    let mut r = Reference {
        out: vec![0.0; b * h * nq * dv],
        dq: vec![0.0; b * h * nq * d],
        dk: vec![0.0; b * h * nk * d],
        dv: vec![0.0; b * h * nk * dv],
    };
    let (mut dk, mut dvv) = (vec![0f64; r.dk.len()], vec![0f64; r.dv.len()]);
    for bi in 0..b {
        for hi in 0..h {
            let bh = bi * h + hi;
            let qr = |i: usize| &qv[(bh * nq + i) * d..(bh * nq + i + 1) * d];
            let kr = |j: usize| &kv[(bh * nk + j) * d..(bh * nk + j + 1) * d];
            let vr = |j: usize| &vv[(bh * nk + j) * dv..(bh * nk + j + 1) * dv];
            for i in 0..nq {
                let keys: Vec<usize> = (0..nk).filter(|&j| mv[bi * nk + j] != 0.0 && (!causal || j <= i)).collect();
                if keys.is_empty() {
                    continue;
                }
                let s: Vec<f64> = keys
                    .iter()
                    .map(|&j| scale * qr(i).iter().zip(kr(j)).map(|(&a, &b)| a as f64 * b as f64).sum::<f64>())
                    .collect();
                let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|x| (x - mx).exp()).collect();
                let z: f64 = e.iter().sum();
                let p: Vec<f64> = e.iter().map(|x| x / z).collect();
                let gi = &gv[(bh * nq + i) * dv..(bh * nq + i + 1) * dv];
                for c in 0..dv {
                    r.out[(bh * nq + i) * dv + c] =
                        keys.iter().zip(&p).map(|(&j, &pj)| pj * vr(j)[c] as f64).sum::<f64>() as f32;
                }
                let dp: Vec<f64> =
                    keys.iter().map(|&j| gi.iter().zip(vr(j)).map(|(&a, &b)| a as f64 * b as f64).sum()).collect();
                let di: f64 = p.iter().zip(&dp).map(|(a, b)| a * b).sum();
                let mut dqi = vec![0f64; d];
                for (t, &j) in keys.iter().enumerate() {
                    let ds = p[t] * (dp[t] - di) * scale;
                    for c in 0..dv {
                        dvv[(bh * nk + j) * dv + c] += p[t] * gi[c] as f64;
                    }
                    for c in 0..d {
                        dqi[c] += ds * kr(j)[c] as f64;
                        dk[(bh * nk + j) * d + c] += ds * qr(i)[c] as f64;
                    }
                }
                let row = &mut r.dq[(bh * nq + i) * d..(bh * nq + i + 1) * d];
                row.iter_mut().zip(&dqi).for_each(|(o, &x)| *o = x as f32);
            }
        }
    }
    r.dk = dk.iter().map(|&x| x as f32).collect();
    r.dv = dvv.iter().map(|&x| x as f32).collect();
    Ok(r)
}

/// Runs the fused op (causal or not) and its backward with upstream gradient g.
fn fused(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    mask: Option<&Tensor>,
    scale: Option<f32>,
    g: &Tensor,
    causal: bool,
) -> Result<Reference> {
    senseflow::autograd::clear_tape();
    let (qv, kv, vv) = (q.var(), k.var(), v.var());
    let out = if causal {
        ops::causal_attention(&qv, &kv, &vv, mask, scale)?
    } else {
        ops::attention(&qv, &kv, &vv, mask, scale)?
    };
    let grads = backward(&out.mul(g)?.sum_all()?)?;
    let get = |t: &Tensor| grads.get(t).expect("gradient reached the input").to_vec_f32();
    Ok(Reference { out: out.to_vec_f32()?, dq: get(&qv)?, dk: get(&kv)?, dv: get(&vv)? })
}

fn compare(name: &str, got: &Reference, want: &Reference, tol: f32) -> Result<()> {
    check_close(&format!("{name}: out"), &got.out, &want.out, tol)?;
    check_close(&format!("{name}: dv"), &got.dv, &want.dv, tol)?;
    // dq and dk vanish exactly with a single attended key (dS = P(dP − Dᵢ) = 0), so
    // their budget is relative to the output's scale (|v|-sized, like each
    // query's dP terms) when their own scale is smaller.
    let out_scale = want.out.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (what, g, w) in [("dq", &got.dq, &want.dq), ("dk", &got.dk, &want.dk)] {
        let (rel, scale) = rel_err(g, w, out_scale);
        println!("{name}: {what} max|err|/scale = {rel:.3e} (scale {scale:.3e}, budget {tol:.1e})");
        if rel > tol {
            return Err(senseflow::Error::Msg(format!("{name}: {what}: {rel:.3e} exceeds {tol:.1e}")));
        }
    }
    Ok(())
}

#[test]
fn grad_self_attention() -> Result<()> {
    let (q, k, v) = (randn(&[2, 3, 17, 8], 1), randn(&[2, 3, 17, 8], 2), randn(&[2, 3, 17, 8], 3));
    GradCheck::default().run("attention/self", &[q, k, v], |x| ops::attention(&x[0], &x[1], &x[2], None, None))
}

#[test]
fn grad_cross_attention_scale_dv() -> Result<()> {
    // Nq ≠ Nk, Dv ≠ D, non-default scale.
    let (q, k, v) = (randn(&[2, 3, 13, 16], 4), randn(&[2, 3, 29, 16], 5), randn(&[2, 3, 29, 6], 6));
    GradCheck::default()
        .run("attention/cross+scale", &[q, k, v], |x| ops::attention(&x[0], &x[1], &x[2], None, Some(0.37)))
}

#[test]
fn grad_masked_attention() -> Result<()> {
    let (q, k, v) = (randn(&[2, 3, 11, 8], 7), randn(&[2, 3, 23, 8], 8), randn(&[2, 3, 23, 8], 9));
    let m = key_mask(2, 23);
    GradCheck::default().run("attention/masked", &[q, k, v], |x| ops::attention(&x[0], &x[1], &x[2], Some(&m), None))
}

#[test]
fn grad_sequence_97() -> Result<()> {
    // 97 tokens: two query tiles and two key tiles, the second partial.
    let (q, k, v) = (randn(&[1, 3, 97, 16], 10), randn(&[1, 3, 97, 16], 11), randn(&[1, 3, 97, 16], 12));
    let m = key_mask(1, 97);
    let gc = GradCheck::default();
    gc.run("attention/97", &[q.clone(), k.clone(), v.clone()], |x| {
        ops::attention(&x[0], &x[1], &x[2], None, Some(0.3))
    })?;
    gc.run("attention/97 masked", &[q, k, v], |x| ops::attention(&x[0], &x[1], &x[2], Some(&m), Some(0.3)))
}

#[test]
fn fused_matches_naive() -> Result<()> {
    // (B, H, Nq, Nk, D, Dv, masked, scale): single tokens, exact and partial tiles,
    // several key tiles (128 keys each), Dv ≠ D.
    type Case = (usize, usize, usize, usize, usize, usize, bool, Option<f32>);
    let cases: [Case; 8] = [
        (1, 1, 1, 1, 8, 8, false, None),
        (2, 3, 1, 97, 16, 16, true, None),
        (2, 3, 97, 1, 8, 8, false, Some(0.5)),
        (1, 3, 97, 97, 16, 16, true, None),
        (1, 2, 64, 128, 32, 32, false, None),
        (2, 3, 257, 257, 8, 8, true, Some(0.2)),
        (1, 2, 257, 130, 32, 24, false, None),
        (2, 1, 65, 193, 64, 64, true, None),
    ];
    for (i, &(b, h, nq, nk, d, dv, masked, scale)) in cases.iter().enumerate() {
        let s = 100 * i as u64;
        let (q, k, v) = (randn(&[b, h, nq, d], s + 1), randn(&[b, h, nk, d], s + 2), randn(&[b, h, nk, dv], s + 3));
        let g = randn(&[b, h, nq, dv], s + 4);
        let m = masked.then(|| key_mask(b, nk));
        let got = fused(&q, &k, &v, m.as_ref(), scale, &g, false)?;
        let want = attention_naive(&q, &k, &v, m.as_ref(), scale.unwrap_or(1.0 / (d as f32).sqrt()) as f64, &g, false)?;
        // f32 tiles against f64: observed ≤ 2.4e-6 relative; the project's 1e-5 budget.
        compare(&format!("fused vs naive B{b} H{h} Nq{nq} Nk{nk} D{d} Dv{dv} mask={masked}"), &got, &want, 1e-5)?;
    }
    Ok(())
}

#[test]
fn grad_causal_attention() -> Result<()> {
    let gc = GradCheck::default();
    // Self attention over 37 tokens, odd head count.
    let (q, k, v) = (randn(&[2, 3, 37, 8], 60), randn(&[2, 3, 37, 8], 61), randn(&[2, 3, 37, 8], 62));
    gc.run("causal/self", &[q, k, v], |x| ops::causal_attention(&x[0], &x[1], &x[2], None, None))?;
    // Nq < Nk and Nq > Nk (top-left aligned), Dv ≠ D, with a key mask and a scale.
    let (q, k, v) = (randn(&[2, 1, 7, 8], 63), randn(&[2, 1, 13, 8], 64), randn(&[2, 1, 13, 5], 65));
    let m = key_mask(2, 13);
    gc.run("causal/nq<nk masked", &[q, k, v], |x| ops::causal_attention(&x[0], &x[1], &x[2], Some(&m), Some(0.4)))?;
    let (q, k, v) = (randn(&[1, 2, 15, 8], 66), randn(&[1, 2, 6, 8], 67), randn(&[1, 2, 6, 8], 68));
    gc.run("causal/nq>nk", &[q, k, v], |x| ops::causal_attention(&x[0], &x[1], &x[2], None, None))
}

#[test]
fn causal_fused_matches_naive() -> Result<()> {
    // (B, H, Nq, Nk, D, Dv, masked): the diagonal inside one tile, crossing query
    // tiles (64) and key tiles (128), whole key tiles above it skipped (Nq < Nk),
    // queries past the last key (Nq > Nk), CLIP's 77 tokens.
    type Case = (usize, usize, usize, usize, usize, usize, bool);
    let cases: [Case; 7] = [
        (1, 1, 1, 1, 8, 8, false),
        (2, 3, 77, 77, 16, 16, false),
        (2, 3, 77, 77, 16, 16, true),
        (1, 2, 257, 257, 8, 8, true),
        (1, 2, 70, 300, 16, 12, false),
        (2, 1, 200, 65, 8, 8, true),
        (1, 1, 129, 129, 32, 32, false),
    ];
    for (i, &(b, h, nq, nk, d, dv, masked)) in cases.iter().enumerate() {
        let s = 1000 + 100 * i as u64;
        let (q, k, v) = (randn(&[b, h, nq, d], s + 1), randn(&[b, h, nk, d], s + 2), randn(&[b, h, nk, dv], s + 3));
        let g = randn(&[b, h, nq, dv], s + 4);
        let m = masked.then(|| key_mask(b, nk));
        let got = fused(&q, &k, &v, m.as_ref(), None, &g, true)?;
        let want = attention_naive(&q, &k, &v, m.as_ref(), 1.0 / (d as f64).sqrt(), &g, true)?;
        // f32 tiles against f64, as in fused_matches_naive: the project's 1e-5 budget.
        compare(
            &format!("causal fused vs naive B{b} H{h} Nq{nq} Nk{nk} D{d} Dv{dv} mask={masked}"),
            &got,
            &want,
            1e-5,
        )?;
    }
    Ok(())
}

#[test]
fn fully_masked_batch_gives_zeros() -> Result<()> {
    // Batch 1 masks every key: its rows are zero with zero gradients (torch: NaN);
    // batch 0 is unaffected.
    let (b, h, n, d) = (2, 3, 70, 8);
    let (q, k, v, g) =
        (randn(&[b, h, n, d], 20), randn(&[b, h, n, d], 21), randn(&[b, h, n, d], 22), randn(&[b, h, n, d], 23));
    let mut mv = vec![1.0; b * n];
    mv[n..].fill(0.0);
    mv[3] = 0.0;
    let m = Tensor::from_vec(mv, &[b, n])?;
    let got = fused(&q, &k, &v, Some(&m), None, &g, false)?;
    let want = attention_naive(&q, &k, &v, Some(&m), 1.0 / (d as f64).sqrt(), &g, false)?;
    let half = h * n * d;
    for (name, x) in [("out", &got.out), ("dq", &got.dq), ("dk", &got.dk), ("dv", &got.dv)] {
        assert!(x.iter().all(|v| v.is_finite()), "{name} has non-finite values");
        assert!(x[half..].iter().all(|&v| v == 0.0), "{name} of the fully masked batch is not zero");
    }
    compare("fully masked batch", &got, &want, 1e-5)
}

#[test]
fn strided_and_broadcast_views() -> Result<()> {
    // q, k, v as [B, N, H, D] buffers transposed to [B, H, N, D] (read in place), and a
    // k broadcast over heads; both must equal the contiguous computation.
    let (b, h, n, d) = (2, 3, 41, 8);
    let (qs, ks, vs) = (randn(&[b, n, h, d], 30), randn(&[b, n, h, d], 31), randn(&[b, n, h, d], 32));
    let (q, k, v) = (qs.transpose(1, 2)?, ks.transpose(1, 2)?, vs.transpose(1, 2)?);
    let g = randn(&[b, h, n, d], 33);
    let strided = fused(&q, &k, &v, None, None, &g, false)?;
    let contiguous = fused(&q.contiguous()?, &k.contiguous()?, &v.contiguous()?, None, None, &g, false)?;
    compare("transposed views vs contiguous", &strided, &contiguous, 0.0)?;

    let k1 = randn(&[b, 1, n, d], 34);
    let kb = k1.broadcast_to(&[b, h, n, d])?;
    let y = ops::attention(&q, &kb, &v, None, None)?.to_vec_f32()?;
    let want = ops::attention(&q, &kb.contiguous()?, &v, None, None)?.to_vec_f32()?;
    check_close("broadcast k vs materialized", &y, &want, 0.0)?;
    GradCheck::default().run("attention/broadcast k", &[q.contiguous()?, k1, v.contiguous()?], |x| {
        ops::attention(&x[0], &x[1].broadcast_to(&[b, h, n, d])?, &x[2], None, None)
    })
}

#[test]
fn bf16_inputs_follow_f32() -> Result<()> {
    let (q, k, v) = (randn(&[1, 2, 33, 16], 40), randn(&[1, 2, 33, 16], 41), randn(&[1, 2, 33, 16], 42));
    let [qb, kb, vb] = [&q, &k, &v].map(|t| t.to_dtype(senseflow::DType::BF16).unwrap());
    let y = ops::attention(&qb, &kb, &vb, None, None)?;
    assert_eq!(y.dtype(), senseflow::DType::BF16);
    let want = ops::attention(
        &qb.to_dtype(senseflow::DType::F32)?,
        &kb.to_dtype(senseflow::DType::F32)?,
        &vb.to_dtype(senseflow::DType::F32)?,
        None,
        None,
    )?;
    // Same f32 computation; only the output rounding to bf16 differs.
    check_close("bf16 attention", &y.to_vec_f32()?, &want.to_vec_f32()?, 2f32.powi(-8))
}

#[test]
fn shape_errors() {
    let q = randn(&[2, 3, 5, 8], 50);
    let k = randn(&[2, 3, 7, 8], 51);
    let bad = [
        ops::attention(&q, &randn(&[2, 3, 7, 4], 52), &k, None, None),
        ops::attention(&q, &k, &randn(&[2, 3, 6, 8], 53), None, None),
        ops::attention(&q, &randn(&[2, 2, 7, 8], 54), &k, None, None),
        ops::attention(&q.reshape(&[6, 5, 8]).unwrap(), &k, &k, None, None),
        ops::attention(&q, &k, &k, Some(&Tensor::ones(&[2, 5])), None),
    ];
    for r in bad {
        let e = r.expect_err("bad shapes are rejected");
        println!("{e}");
        assert!(e.to_string().starts_with("attention:"));
    }
}
