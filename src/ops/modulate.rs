//! adaLN modulation for the MMDiT/FLUX blocks: x [B, N, D] token activations and
//! per-sample [B, D] conditioning vectors broadcast over the N tokens, following
//! diffusers' AdaLayerNormZero (`norm(x) * (1 + scale[:, None]) + shift[:, None]`)
//! and its gated residual (`x + gate[:, None] * attn_out`).
//!
//! Conventions:
//! - `layer_norm_modulate` is one op with one fused backward (the CUDA kernel fuses
//!   the same), never layer_norm followed by modulate.
//! - Gradients of the [B, D] vectors reduce over N (column sums in f64); gradients
//!   are computed only for inputs that track them.
//! - All inputs share one dtype; the output has it too.

use super::{cpu_out, same_device, same_dtype};
use crate::autograd::{record, Backward};
use crate::backend::cpu;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// [B, N, D] of the token tensor `x`, after checking that every per-sample vector
/// in `vecs` (named for errors) is [B, D] and every token tensor in `tokens` is [B, N, D].
fn bnd(
    op: &'static str,
    x: &Tensor,
    vecs: &[(&str, &Tensor)],
    tokens: &[(&str, &Tensor)],
) -> Result<(usize, usize, usize)> {
    let &[b, n, d] = x.shape() else {
        return Err(Error::op(op, format!("expects token activations [B, N, D], got {:?}", x.shape())));
    };
    for (name, v) in vecs {
        if v.shape() != [b, d] {
            return Err(Error::op(
                op,
                format!("{name} has shape {:?}, expected [{b}, {d}] for x {:?}", v.shape(), x.shape()),
            ));
        }
    }
    for (name, t) in tokens {
        if t.shape() != x.shape() {
            return Err(Error::op(op, format!("{name} has shape {:?}, expected {:?}", t.shape(), x.shape())));
        }
    }
    Ok((b, n, d))
}

fn check_inputs(op: &'static str, ts: &[&Tensor]) -> Result<()> {
    same_device(op, ts)?;
    same_dtype(op, ts)?;
    Ok(())
}

/// adaLN modulation: `x * (1 + scale[:, None]) + shift[:, None]`.
///
/// x: [B, N, D]; shift, scale: [B, D]. Output [B, N, D].
pub fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    const OP: &str = "modulate";
    check_inputs(OP, &[x, shift, scale])?;
    let (b, n, d) = bnd(OP, x, &[("shift", shift), ("scale", scale)], &[])?;
    let y = cpu::modulate::modulate_fwd(&x.cpu_f32()?, &shift.cpu_f32()?, &scale.cpu_f32()?, n, d);
    let out = cpu_out(y, x.shape(), x.dtype());
    Ok(record(out, &[x, shift, scale], || ModulateBackward {
        // x is needed only for dscale, scale only for dx.
        x: scale.tracks_grad().then(|| x.detach()),
        scale: x.tracks_grad().then(|| scale.detach()),
        need_vecs: shift.tracks_grad() || scale.tracks_grad(),
        bnd: (b, n, d),
    }))
}

struct ModulateBackward {
    x: Option<Tensor>,     // [B, N, D]
    scale: Option<Tensor>, // [B, D]
    need_vecs: bool,
    bnd: (usize, usize, usize),
}

impl Backward for ModulateBackward {
    fn name(&self) -> &'static str {
        "modulate"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (b, n, d) = self.bnd;
        let gv = g.cpu_f32()?;
        let dx = match &self.scale {
            Some(s) => Some(cpu_out(cpu::modulate::modulate_bwd_dx(&gv, &s.cpu_f32()?, n, d), &[b, n, d], g.dtype())),
            None => None,
        };
        let (mut dshift, mut dscale) = (None, None);
        if self.need_vecs {
            let xv = self.x.as_ref().map(|x| x.cpu_f32()).transpose()?;
            let (sh, sc) = cpu::modulate::modulate_bwd_shift_scale(xv.as_deref(), &gv, b, n, d);
            dshift = Some(cpu_out(sh, &[b, d], g.dtype()));
            dscale = sc.map(|sc| cpu_out(sc, &[b, d], g.dtype()));
        }
        Ok(vec![dx, dshift, dscale])
    }
}

/// Fused adaLN: `layer_norm(x, (D,), eps=eps) * (1 + scale[:, None]) + shift[:, None]`
/// with a layer norm without affine parameters (diffusers `AdaLayerNormZero`,
/// `elementwise_affine=False`), as one op with one fused backward.
///
/// x: [B, N, D]; shift, scale: [B, D]. Output [B, N, D].
pub fn layer_norm_modulate(x: &Tensor, shift: &Tensor, scale: &Tensor, eps: f32) -> Result<Tensor> {
    const OP: &str = "layer_norm_modulate";
    check_inputs(OP, &[x, shift, scale])?;
    let (b, n, d) = bnd(OP, x, &[("shift", shift), ("scale", scale)], &[])?;
    let (y, mean, rstd) =
        cpu::modulate::layer_norm_modulate_fwd(&x.cpu_f32()?, &shift.cpu_f32()?, &scale.cpu_f32()?, n, d, eps);
    let out = cpu_out(y, x.shape(), x.dtype());
    Ok(record(out, &[x, shift, scale], || LayerNormModulateBackward {
        x: x.detach(),
        scale: scale.detach(),
        need: [x.tracks_grad(), shift.tracks_grad() || scale.tracks_grad()],
        bnd: (b, n, d),
        mean,
        rstd,
    }))
}

struct LayerNormModulateBackward {
    x: Tensor,     // [B, N, D]
    scale: Tensor, // [B, D]
    /// Whether to compute dx, and (dshift, dscale).
    need: [bool; 2],
    bnd: (usize, usize, usize),
    mean: Vec<f64>, // [B·N]
    rstd: Vec<f32>, // [B·N]
}

impl Backward for LayerNormModulateBackward {
    fn name(&self) -> &'static str {
        "layer_norm_modulate"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (b, n, d) = self.bnd;
        let (x, gv) = (self.x.cpu_f32()?, g.cpu_f32()?);
        let dx = if self.need[0] {
            let sc = self.scale.cpu_f32()?;
            let dx = cpu::modulate::layer_norm_modulate_bwd_dx(&x, &gv, &self.mean, &self.rstd, &sc, n, d);
            Some(cpu_out(dx, &[b, n, d], g.dtype()))
        } else {
            None
        };
        let (mut dshift, mut dscale) = (None, None);
        if self.need[1] {
            let (sh, sc) = cpu::modulate::layer_norm_modulate_bwd_shift_scale(&x, &gv, &self.mean, &self.rstd, b, n, d);
            dshift = Some(cpu_out(sh, &[b, d], g.dtype()));
            dscale = Some(cpu_out(sc, &[b, d], g.dtype()));
        }
        Ok(vec![dx, dshift, dscale])
    }
}

/// Gated residual: `residual + gate[:, None] * y`.
///
/// residual, y: [B, N, D]; gate: [B, D]. Output [B, N, D].
pub fn gated_residual(residual: &Tensor, gate: &Tensor, y: &Tensor) -> Result<Tensor> {
    const OP: &str = "gated_residual";
    check_inputs(OP, &[residual, gate, y])?;
    let (b, n, d) = bnd(OP, residual, &[("gate", gate)], &[("y", y)])?;
    let o = cpu::modulate::gated_residual_fwd(&residual.cpu_f32()?, &gate.cpu_f32()?, &y.cpu_f32()?, n, d);
    let out = cpu_out(o, residual.shape(), residual.dtype());
    Ok(record(out, &[residual, gate, y], || {
        GatedResidualBackward {
            // gate is needed only for dy, y only for dgate.
            gate: y.tracks_grad().then(|| gate.detach()),
            y: gate.tracks_grad().then(|| y.detach()),
            bnd: (b, n, d),
        }
    }))
}

struct GatedResidualBackward {
    gate: Option<Tensor>, // [B, D]
    y: Option<Tensor>,    // [B, N, D]
    bnd: (usize, usize, usize),
}

impl Backward for GatedResidualBackward {
    fn name(&self) -> &'static str {
        "gated_residual"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (b, n, d) = self.bnd;
        let gv = g.cpu_f32()?;
        let dgate = match &self.y {
            Some(y) => {
                Some(cpu_out(cpu::modulate::gated_residual_bwd_gate(&gv, &y.cpu_f32()?, b, n, d), &[b, d], g.dtype()))
            }
            None => None,
        };
        let dy = match &self.gate {
            Some(gt) => {
                Some(cpu_out(cpu::modulate::gated_residual_bwd_dy(&gv, &gt.cpu_f32()?, n, d), &[b, n, d], g.dtype()))
            }
            None => None,
        };
        Ok(vec![Some(g.clone()), dgate, dy])
    }
}
