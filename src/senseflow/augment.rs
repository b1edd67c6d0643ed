//! DiffAugment (Zhao et al. 2020) on the discriminator's input only: color (brightness,
//! saturation, contrast), translation (±1/8 of the size, zero fill) and cutout (a
//! square of half the size zeroed). Every transform is built from differentiable ops
//! so the generator's adversarial gradient flows through it. Random draws come from
//! the caller's Philox stream, one set per sample.

use crate::error::{Error, Result};
use crate::ops;
use crate::rng::Philox;
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AugmentPolicy {
    pub color: bool,
    pub translation: bool,
    pub cutout: bool,
}

impl AugmentPolicy {
    pub const ALL: AugmentPolicy = AugmentPolicy { color: true, translation: true, cutout: true };
    pub const NONE: AugmentPolicy = AugmentPolicy { color: false, translation: false, cutout: false };
}

/// Augments images `x` [B, C, H, W] (values in [0, 1]).
pub fn diff_augment(x: &Tensor, policy: AugmentPolicy, rng: &mut Philox) -> Result<Tensor> {
    let &[b, c, h, w] = x.shape() else {
        return Err(Error::op("diff_augment", format!("expected [B, C, H, W], got {:?}", x.shape())));
    };
    let mut x = x.clone();
    let per_sample = |rng: &mut Philox| -> Result<Tensor> { Tensor::from_vec(rng.uniform_vec(b), &[b, 1, 1, 1]) };
    if policy.color {
        // brightness: x + (u − 0.5)
        x = x.add(&per_sample(rng)?.affine(1.0, -0.5)?)?;
        // saturation: (x − mean_c)·2u + mean_c
        let m = x.mean(&[1], true)?;
        x = x.sub(&m)?.mul(&per_sample(rng)?.scale(2.0)?)?.add(&m)?;
        // contrast: (x − mean_chw)·(u + 0.5) + mean_chw
        let m = x.mean(&[1, 2, 3], true)?;
        x = x.sub(&m)?.mul(&per_sample(rng)?.affine(1.0, 0.5)?)?.add(&m)?;
    }
    if policy.translation {
        let (sh, sw) = (h / 8, w / 8);
        let zeros_rows = Tensor::zeros(&[b, c, sh, w]).to_dtype(x.dtype())?;
        let padded = ops::concat(&[&zeros_rows, &x, &zeros_rows], 2)?;
        let zeros_cols = Tensor::zeros(&[b, c, h + 2 * sh, sw]).to_dtype(x.dtype())?;
        let padded = ops::concat(&[&zeros_cols, &padded, &zeros_cols], 3)?;
        let shifts = rng.next_u32s(2 * b);
        let mut rows = Vec::with_capacity(b);
        for i in 0..b {
            let dy = (shifts[2 * i] as usize) % (2 * sh + 1);
            let dx = (shifts[2 * i + 1] as usize) % (2 * sw + 1);
            rows.push(padded.narrow(0, i, 1)?.narrow(2, dy, h)?.narrow(3, dx, w)?);
        }
        x = ops::concat(&rows.iter().collect::<Vec<_>>(), 0)?;
    }
    if policy.cutout {
        let (ch, cw) = (h / 2, w / 2);
        let centers = rng.next_u32s(2 * b);
        let mut mask = vec![1f32; b * h * w];
        for i in 0..b {
            let cy = (centers[2 * i] as usize) % (h + 1 - ch % 2);
            let cx = (centers[2 * i + 1] as usize) % (w + 1 - cw % 2);
            for y in cy.saturating_sub(ch / 2)..(cy + ch - ch / 2).min(h) {
                for xx in cx.saturating_sub(cw / 2)..(cx + cw - cw / 2).min(w) {
                    mask[i * h * w + y * w + xx] = 0.0;
                }
            }
        }
        let mask = Tensor::from_vec(mask, &[b, 1, h, w])?.to_dtype(x.dtype())?;
        x = x.mul(&mask)?;
    }
    Ok(x)
}
