//! Rotary position embedding (FLUX layout) and its cos/sin tables.
//!
//! Conventions: x [.., N, D] (FLUX applies it to q and k as [B, H, N, D]), cos/sin
//! [N, D] with each angle repeated on the two columns of its pair; cos/sin are
//! constants (no gradient flows to them).

use super::{cpu_out, same_device};
use crate::autograd::{record, Backward};
use crate::backend::cpu::rope as kernel;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Rotates the pairs (x[2i], x[2i+1]) of every position n:
/// out[2i] = x[2i]·cos[n,2i] − x[2i+1]·sin[n,2i],
/// out[2i+1] = x[2i+1]·cos[n,2i+1] + x[2i]·sin[n,2i+1].
///
/// diffusers equivalent: `apply_rotary_emb(x, (cos, sin), use_real=True,
/// use_real_unbind_dim=-1)` with x [B, H, N, D] and cos/sin from `FluxPosEmbed`.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    same_device("rope", &[x, cos, sin])?;
    let bad = || {
        let (xs, cs, ss) = (x.shape(), cos.shape(), sin.shape());
        let expected = "expected x [.., N, D] with D even and cos = sin = [N, D]";
        Error::op("rope", format!("x {xs:?}, cos {cs:?}, sin {ss:?}: {expected}"))
    };
    if x.dims() < 2 || cos.dims() != 2 || cos.shape() != sin.shape() {
        return Err(bad());
    }
    let (n, d) = (x.shape()[x.dims() - 2], x.shape()[x.dims() - 1]);
    if cos.shape() != [n, d] || d % 2 != 0 {
        return Err(bad());
    }
    let (c, s) = (cos.detach(), sin.detach());
    let y = kernel::rope_fwd(&x.cpu_f32()?, &c.cpu_f32()?, &s.cpu_f32()?, n, d);
    let out = cpu_out(y, x.shape(), x.dtype());
    Ok(record(out, &[x], || RopeBackward { cos: c, sin: s, shape: x.shape().to_vec() }))
}

struct RopeBackward {
    cos: Tensor,
    sin: Tensor,
    shape: Vec<usize>,
}

impl Backward for RopeBackward {
    fn name(&self) -> &'static str {
        "rope"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (n, d) = (self.cos.shape()[0], self.cos.shape()[1]);
        let dx = kernel::rope_bwd(&g.cpu_f32()?, &self.cos.cpu_f32()?, &self.sin.cpu_f32()?, n, d);
        Ok(vec![Some(cpu_out(dx, &self.shape, g.dtype()))])
    }
}

/// FLUX's rotary tables for positions `ids` [N, n_axes] (f32 positions): returns
/// (cos, sin), each [N, Σ axes_dim], untracked.
///
/// diffusers equivalent: `FluxPosEmbed(theta, axes_dim)(ids)`, i.e. per axis a
/// `get_1d_rotary_pos_embed(axes_dim[a], ids[:, a], theta, repeat_interleave_real=True,
/// use_real=True, freqs_dtype=torch.float64)`, concatenated over axes: angle
/// ids[n, a]·θ^(−2k/axes_dim[a]) at columns 2k and 2k+1 of axis a's slice.
pub fn flux_rope_cos_sin(ids: &Tensor, axes_dim: &[usize], theta: f32) -> Result<(Tensor, Tensor)> {
    same_device("flux_rope_cos_sin", &[ids])?;
    if ids.dims() != 2 || ids.shape()[1] != axes_dim.len() {
        return Err(Error::op(
            "flux_rope_cos_sin",
            format!(
                "ids has shape {:?}, expected [N, {}] (one column per axis of axes_dim {:?})",
                ids.shape(),
                axes_dim.len(),
                axes_dim
            ),
        ));
    }
    if let Some(a) = axes_dim.iter().find(|&&a| a % 2 != 0) {
        return Err(Error::op(
            "flux_rope_cos_sin",
            format!("axes_dim {axes_dim:?} has odd width {a}; every axis needs whole pairs"),
        ));
    }
    let n = ids.shape()[0];
    let d: usize = axes_dim.iter().sum();
    let (c, s) = kernel::flux_cos_sin(&ids.cpu_f32()?, n, axes_dim, theta as f64);
    Ok((Tensor::from_vec(c, &[n, d])?, Tensor::from_vec(s, &[n, d])?))
}

impl Tensor {
    pub fn rope(&self, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        rope(self, cos, sin)
    }
}
