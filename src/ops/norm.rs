//! Normalizations: layer_norm and rms_norm over the last axis, group_norm over
//! channel groups of [B, C, *spatial].
//!
//! Conventions:
//! - Statistics are two-pass in f64 with the biased variance (÷n), as torch computes
//!   them; never E[x²]−E[x]² (see backend::cpu::norm).
//! - The forward saves x, the per-row mean (f64) and rstd; the fused backward
//!   recomputes x̂ from them. Affine parameters are saved only when present.
//! - Gradients are computed only for inputs that track them (frozen norm weights
//!   cost no column sums).
//! - All inputs share one dtype; the output has it too.

use super::{cpu_out, same_device, same_dtype};
use crate::autograd::{record, Backward};
use crate::backend::cpu;
use crate::backend::cpu::norm::GroupNormShape;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Checks device and dtype of `x` and the optional parameters; returns them as a list
/// in recording order.
fn gather_inputs<'a>(op: &'static str, x: &'a Tensor, params: &[Option<&'a Tensor>]) -> Result<Vec<&'a Tensor>> {
    let inputs: Vec<&Tensor> = std::iter::once(x).chain(params.iter().flatten().copied()).collect();
    same_device(op, &inputs)?;
    same_dtype(op, &inputs)?;
    Ok(inputs)
}

/// Size of the last axis of `x`, which must have at least one dimension.
fn last_dim(op: &'static str, x: &Tensor) -> Result<usize> {
    x.shape().last().copied().ok_or_else(|| Error::op(op, "needs an input with at least one dimension, got a scalar"))
}

/// Checks that an optional parameter is a vector of `len` values.
fn check_vector(op: &'static str, what: &str, p: Option<&Tensor>, len: usize, x: &Tensor, axis: &str) -> Result<()> {
    match p {
        Some(p) if p.shape() != [len] => Err(Error::op(
            op,
            format!("{what} has shape {:?}, expected [{len}] (the {axis} of x {:?})", p.shape(), x.shape()),
        )),
        _ => Ok(()),
    }
}

fn tracks(p: Option<&Tensor>) -> bool {
    p.is_some_and(|p| p.tracks_grad())
}

/// The gradient list for inputs [x, weight?, bias?]: absent parameters get no entry.
fn grads_for(
    dx: Option<Tensor>,
    dw: Option<Tensor>,
    db: Option<Tensor>,
    has_w: bool,
    has_b: bool,
) -> Vec<Option<Tensor>> {
    let mut v = vec![dx];
    if has_w {
        v.push(dw);
    }
    if has_b {
        v.push(db);
    }
    v
}

/// Layer normalization over the last axis:
/// `torch.nn.functional.layer_norm(x, (D,), weight, bias, eps)`.
///
/// x: [..., D]; weight, bias: [D], each optional. Per row of D values,
/// y = (x − mean)·rsqrt(var + eps)·weight + bias with the biased variance.
pub fn layer_norm(x: &Tensor, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    const OP: &str = "layer_norm";
    let inputs = gather_inputs(OP, x, &[weight, bias])?;
    let d = last_dim(OP, x)?;
    check_vector(OP, "weight", weight, d, x, "last dim")?;
    check_vector(OP, "bias", bias, d, x, "last dim")?;
    let rows = x.numel() / d.max(1);
    let wv = weight.map(|w| w.cpu_f32()).transpose()?;
    let bv = bias.map(|b| b.cpu_f32()).transpose()?;
    let (y, mean, rstd) = cpu::norm::layer_norm_fwd(&x.cpu_f32()?, d, wv.as_deref(), bv.as_deref(), rows.max(1), eps);
    let out = cpu_out(y, x.shape(), x.dtype());
    Ok(record(out, &inputs, || LayerNormBackward {
        x: x.detach(),
        weight: weight.map(|w| w.detach()),
        has_bias: bias.is_some(),
        need: [x.tracks_grad(), tracks(weight), tracks(bias)],
        mean,
        rstd,
    }))
}

struct LayerNormBackward {
    x: Tensor,              // [..., D]
    weight: Option<Tensor>, // [D]
    has_bias: bool,
    /// Which of dx, dweight, dbias to compute.
    need: [bool; 3],
    mean: Vec<f64>, // [rows]
    rstd: Vec<f32>, // [rows]
}

impl Backward for LayerNormBackward {
    fn name(&self) -> &'static str {
        "layer_norm"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let shape = self.x.shape();
        let d = shape[shape.len() - 1];
        let rows = self.x.numel() / d.max(1);
        let (x, gv) = (self.x.cpu_f32()?, g.cpu_f32()?);
        let w = self.weight.as_ref().map(|w| w.cpu_f32()).transpose()?;
        let dx = self.need[0].then(|| {
            let dx = cpu::norm::layer_norm_bwd_dx(&x, &gv, &self.mean, &self.rstd, d, w.as_deref(), rows.max(1));
            cpu_out(dx, shape, g.dtype())
        });
        let (mut dw, mut db) = (None, None);
        if self.need[1] || self.need[2] {
            let (w_sum, b_sum) = cpu::norm::layer_norm_bwd_affine(&x, &gv, &self.mean, &self.rstd, d, 1, rows);
            dw = self.need[1].then(|| cpu_out(w_sum, &[d], g.dtype()));
            db = self.need[2].then(|| cpu_out(b_sum, &[d], g.dtype()));
        }
        Ok(grads_for(dx, dw, db, self.weight.is_some(), self.has_bias))
    }
}

/// RMS normalization over the last axis: `torch.nn.functional.rms_norm(x, (D,),
/// weight, eps)`, diffusers `RMSNorm`.
///
/// x: [..., D]; weight: [D], optional. y = x·rsqrt(mean(x²) + eps)·weight per row.
pub fn rms_norm(x: &Tensor, weight: Option<&Tensor>, eps: f32) -> Result<Tensor> {
    const OP: &str = "rms_norm";
    let inputs = gather_inputs(OP, x, &[weight])?;
    let d = last_dim(OP, x)?;
    check_vector(OP, "weight", weight, d, x, "last dim")?;
    let wv = weight.map(|w| w.cpu_f32()).transpose()?;
    let (y, rstd) = cpu::norm::rms_norm_fwd(&x.cpu_f32()?, d, wv.as_deref(), eps);
    let out = cpu_out(y, x.shape(), x.dtype());
    Ok(record(out, &inputs, || RmsNormBackward {
        x: x.detach(),
        weight: weight.map(|w| w.detach()),
        need: [x.tracks_grad(), tracks(weight)],
        rstd,
    }))
}

struct RmsNormBackward {
    x: Tensor,              // [..., D]
    weight: Option<Tensor>, // [D]
    /// Which of dx, dweight to compute.
    need: [bool; 2],
    rstd: Vec<f32>, // [rows]
}

impl Backward for RmsNormBackward {
    fn name(&self) -> &'static str {
        "rms_norm"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let shape = self.x.shape();
        let d = shape[shape.len() - 1];
        let (x, gv) = (self.x.cpu_f32()?, g.cpu_f32()?);
        let w = self.weight.as_ref().map(|w| w.cpu_f32()).transpose()?;
        let dx = self.need[0]
            .then(|| cpu_out(cpu::norm::rms_norm_bwd_dx(&x, &gv, &self.rstd, d, w.as_deref()), shape, g.dtype()));
        let dw = self.need[1].then(|| cpu_out(cpu::norm::rms_norm_bwd_weight(&x, &gv, &self.rstd, d), &[d], g.dtype()));
        Ok(grads_for(dx, dw, None, self.weight.is_some(), false))
    }
}

/// Group normalization: `torch.nn.functional.group_norm(x, num_groups, weight, bias,
/// eps)`.
///
/// x: [B, C, *spatial] (any number of trailing dims, including none); weight, bias:
/// [C], optional. The C channels split into `num_groups` groups of C/num_groups
/// consecutive channels; each (sample, group) slab is normalized with its own mean
/// and biased variance, then y = x̂·weight[c] + bias[c] per channel c.
pub fn group_norm(
    x: &Tensor,
    num_groups: usize,
    weight: Option<&Tensor>,
    bias: Option<&Tensor>,
    eps: f32,
) -> Result<Tensor> {
    const OP: &str = "group_norm";
    let inputs = gather_inputs(OP, x, &[weight, bias])?;
    if x.dims() < 2 {
        return Err(Error::op(OP, format!("expects x of shape [B, C, *spatial], got {:?}", x.shape())));
    }
    let channels = x.shape()[1];
    if num_groups == 0 || channels % num_groups != 0 {
        return Err(Error::op(
            OP,
            format!("{channels} channels (x {:?}) do not split into {num_groups} equal groups", x.shape()),
        ));
    }
    check_vector(OP, "weight", weight, channels, x, "channel dim")?;
    check_vector(OP, "bias", bias, channels, x, "channel dim")?;
    let s =
        GroupNormShape { batch: x.shape()[0], channels, groups: num_groups, spatial: x.shape()[2..].iter().product() };
    let wv = weight.map(|w| w.cpu_f32()).transpose()?;
    let bv = bias.map(|b| b.cpu_f32()).transpose()?;
    let (y, mean, rstd) = cpu::norm::group_norm_fwd(&x.cpu_f32()?, s, wv.as_deref(), bv.as_deref(), eps);
    let out = cpu_out(y, x.shape(), x.dtype());
    Ok(record(out, &inputs, || GroupNormBackward {
        x: x.detach(),
        weight: weight.map(|w| w.detach()),
        has_bias: bias.is_some(),
        need: [x.tracks_grad(), tracks(weight), tracks(bias)],
        shape: s,
        mean,
        rstd,
    }))
}

struct GroupNormBackward {
    x: Tensor,              // [B, C, *spatial]
    weight: Option<Tensor>, // [C]
    has_bias: bool,
    /// Which of dx, dweight, dbias to compute.
    need: [bool; 3],
    shape: GroupNormShape,
    mean: Vec<f64>, // [B, groups]
    rstd: Vec<f32>, // [B, groups]
}

impl Backward for GroupNormBackward {
    fn name(&self) -> &'static str {
        "group_norm"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (x, gv) = (self.x.cpu_f32()?, g.cpu_f32()?);
        let w = self.weight.as_ref().map(|w| w.cpu_f32()).transpose()?;
        let s = self.shape;
        let dx = self.need[0].then(|| {
            let dx = cpu::norm::group_norm_bwd_dx(&x, &gv, &self.mean, &self.rstd, s, w.as_deref());
            cpu_out(dx, self.x.shape(), g.dtype())
        });
        let (mut dw, mut db) = (None, None);
        if self.need[1] || self.need[2] {
            let (w_sum, b_sum) = cpu::norm::group_norm_bwd_affine(&x, &gv, &self.mean, &self.rstd, s);
            dw = self.need[1].then(|| cpu_out(w_sum, &[s.channels], g.dtype()));
            db = self.need[2].then(|| cpu_out(b_sum, &[s.channels], g.dtype()));
        }
        Ok(grads_for(dx, dw, db, self.weight.is_some(), self.has_bias))
    }
}

impl Tensor {
    pub fn layer_norm(&self, weight: Option<&Tensor>, bias: Option<&Tensor>, eps: f32) -> Result<Tensor> {
        layer_norm(self, weight, bias, eps)
    }
    pub fn rms_norm(&self, weight: Option<&Tensor>, eps: f32) -> Result<Tensor> {
        rms_norm(self, weight, eps)
    }
}
