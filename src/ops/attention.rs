//! Fused scaled-dot-product attention with a fused FlashAttention-2 backward.
//!
//! Conventions: torch SDPA layout, q [B, H, Nq, D], k [B, H, Nk, D], v [B, H, Nk, Dv];
//! out [B, H, Nq, Dv]. Permuted views (e.g. [B, N, H, D] transposed to [B, H, N, D])
//! and broadcast views are read in place when their last axis is contiguous f32;
//! anything else is copied once into f32. The backward saves q, k, v, the output and
//! the per-row log-sum-exp, never the N×N probabilities.

use super::{cpu_out, same_device, same_dtype};
use crate::autograd::{record, Backward};
use crate::backend::cpu::attention::{self as kernel, AttnArgs, AttnShape, HeadsRef};
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// softmax(scale · q kᵀ + mask) v over the last two axes.
///
/// - `key_mask`: [B, Nk], nonzero = attend, 0 = masked (torch:
///   `attn_mask = key_mask.bool()[:, None, None, :]`). Not differentiated.
/// - `scale`: defaults to 1/√D.
///
/// PyTorch equivalent: `F.scaled_dot_product_attention(q, k, v, attn_mask, scale=scale)`.
/// One difference: a query whose keys are all masked (a batch whose mask is all 0)
/// gets a zero output row and zero gradients, where torch returns NaN.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, key_mask: Option<&Tensor>, scale: Option<f32>) -> Result<Tensor> {
    attention_impl(q, k, v, key_mask, scale, false)
}

/// [`attention`] with a causal mask: query i attends keys j ≤ i only, aligned at the
/// top left (for Nq ≠ Nk too), on top of the optional `key_mask`. The backward is
/// the same fused pass, skipping the tiles above the diagonal.
///
/// PyTorch equivalent: `F.scaled_dot_product_attention(q, k, v, is_causal=True,
/// scale=scale)` (torch rejects `is_causal` together with a mask; here the two
/// combine: a key is attended when both allow it).
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: Option<&Tensor>,
    scale: Option<f32>,
) -> Result<Tensor> {
    attention_impl(q, k, v, key_mask, scale, true)
}

fn attention_impl(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    key_mask: Option<&Tensor>,
    scale: Option<f32>,
    causal: bool,
) -> Result<Tensor> {
    same_device("attention", &[q, k, v])?;
    let dtype = same_dtype("attention", &[q, k, v])?;
    let shape = attn_shape(q, k, v)?;
    let mask = match key_mask {
        Some(m) => {
            same_device("attention", &[q, m])?;
            if m.shape() != [shape.b, shape.nk] {
                return Err(Error::op(
                    "attention",
                    format!("key_mask has shape {:?}, expected [B, Nk] = [{}, {}]", m.shape(), shape.b, shape.nk),
                ));
            }
            Some(m.cpu_f32()?.iter().map(|&x| x != 0.0).collect::<Vec<bool>>())
        }
        None => None,
    };
    let scale = scale.unwrap_or(1.0 / (shape.d as f32).sqrt());
    if !scale.is_finite() {
        return Err(Error::op("attention", format!("scale must be finite, got {scale}")));
    }
    let (pq, pk, pv) = (readable(q)?, readable(k)?, readable(v)?);
    let (gq, gk, gv) = (pq.read_storage(), pk.read_storage(), pv.read_storage());
    let args = AttnArgs {
        shape,
        q: heads(&pq, &gq),
        k: heads(&pk, &gk),
        v: heads(&pv, &gv),
        mask: mask.as_deref(),
        scale,
        causal,
    };
    // Q Kᵀ and P V, as torch's flop counter counts SDPA.
    let pairs = (shape.b * shape.h * shape.nq * shape.nk) as u64;
    super::counters::add_flops(2 * pairs * (shape.d + shape.dv) as u64);
    let (o, lse) = kernel::attention_fwd(&args);
    // S = q kᵀ and O = P v.
    super::counters::add_flops(2 * (shape.b * shape.h * shape.nq * shape.nk * (shape.d + shape.dv)) as u64);
    drop((gq, gk, gv));
    let out = cpu_out(o, &[shape.b, shape.h, shape.nq, shape.dv], dtype);
    let saved_out = out.detach();
    Ok(record(out, &[q, k, v], || AttentionBackward {
        shape,
        q: pq,
        k: pk,
        v: pv,
        out: saved_out,
        lse: Tensor::from_vec(lse, &[shape.b, shape.h, shape.nq]).expect("lse fills [B, H, Nq]"),
        mask,
        scale,
        causal,
    }))
}

fn attn_shape(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<AttnShape> {
    let bad = |msg: &str| {
        let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
        let expected = "expected [B, H, Nq, D], [B, H, Nk, D], [B, H, Nk, Dv]";
        Error::op("attention", format!("{msg}: q {qs:?}, k {ks:?}, v {vs:?} ({expected})"))
    };
    if q.dims() != 4 || k.dims() != 4 || v.dims() != 4 {
        return Err(bad("q, k, v must be 4-D"));
    }
    let (qs, ks, vs) = (q.shape(), k.shape(), v.shape());
    if qs[..2] != ks[..2] || qs[..2] != vs[..2] {
        return Err(bad("batch and head counts differ"));
    }
    if ks[2] != vs[2] {
        return Err(bad("k and v have different sequence lengths"));
    }
    if qs[3] != ks[3] {
        return Err(bad("q and k have different head dims"));
    }
    if qs[3] == 0 || vs[3] == 0 {
        return Err(bad("head dims must be at least 1"));
    }
    Ok(AttnShape { b: qs[0], h: qs[1], nq: qs[2], nk: ks[2], d: qs[3], dv: vs[3] })
}

/// The tensor itself when the kernel can read it in place (f32 storage, contiguous
/// last axis), else a contiguous f32 copy.
fn readable(t: &Tensor) -> Result<Tensor> {
    let f32_storage = matches!(&*t.read_storage(), Storage::Cpu(c) if c.as_f32().is_some());
    if f32_storage && (t.shape()[3] == 1 || t.layout().strides[3] == 1) {
        Ok(t.detach())
    } else {
        Tensor::from_vec(t.to_vec_f32()?, t.shape())
    }
}

/// The strided view of a tensor prepared by `readable`, borrowed from its storage guard.
fn heads<'a>(t: &Tensor, storage: &'a Storage) -> HeadsRef<'a> {
    let Storage::Cpu(c) = storage else { unreachable!("same_device rejects non-cpu tensors") };
    let l = t.layout();
    HeadsRef {
        data: c.as_f32().expect("readable() checked f32 storage"),
        offset: l.offset,
        sb: l.strides[0],
        sh: l.strides[1],
        sn: l.strides[2],
    }
}

struct AttentionBackward {
    shape: AttnShape,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    out: Tensor,
    lse: Tensor, // [B, H, Nq] f32
    mask: Option<Vec<bool>>,
    scale: f32,
    causal: bool,
}

impl Backward for AttentionBackward {
    fn name(&self) -> &'static str {
        "attention"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let s = self.shape;
        // Recomputed Q Kᵀ, dP = dO Vᵀ, dV = Pᵀ dO, dQ = dS K, dK = dSᵀ Q (torch's count).
        let pairs = (s.b * s.h * s.nq * s.nk) as u64;
        super::counters::add_flops(2 * pairs * (3 * s.d + 2 * s.dv) as u64);
        let (po, pg) = (readable(&self.out)?, readable(g)?);
        let (gq, gk, gv, go, gg) =
            (self.q.read_storage(), self.k.read_storage(), self.v.read_storage(), po.read_storage(), pg.read_storage());
        let args = AttnArgs {
            shape: s,
            q: heads(&self.q, &gq),
            k: heads(&self.k, &gk),
            v: heads(&self.v, &gv),
            mask: self.mask.as_deref(),
            scale: self.scale,
            causal: self.causal,
        };
        let lse = self.lse.cpu_f32()?;
        let (dq, dk, dv) = kernel::attention_bwd(&args, heads(&po, &go), heads(&pg, &gg), &lse);
        // Recomputed S, dV, dP, dQ, dK.
        super::counters::add_flops(2 * (s.b * s.h * s.nq * s.nk * (3 * s.d + 2 * s.dv)) as u64);
        let dtype = self.out.dtype();
        Ok(vec![
            Some(cpu_out(dq, &[s.b, s.h, s.nq, s.d], dtype)),
            Some(cpu_out(dk, &[s.b, s.h, s.nk, s.d], dtype)),
            Some(cpu_out(dv, &[s.b, s.h, s.nk, s.dv], dtype)),
        ])
    }
}
