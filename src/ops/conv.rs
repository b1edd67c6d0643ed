//! Convolution and nearest upsampling (the discriminator heads and VAE-side image ops).
//!
//! Conventions: NCHW activations, weights [Cout, Cin, kh, kw] (the PyTorch layout, so
//! checkpoint tensors load as they are); groups 1, dilation 1. The kernels live in
//! `backend::cpu::conv`; both ops have direct backward rules (col2im for the input,
//! one GEMM per image for the weight, a sum for the bias).

use super::{cpu_out, same_device, same_dtype};
use crate::autograd::{record, Backward};
use crate::backend::cpu::conv::{self as k, Conv2dGeom};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// 2-D cross-correlation, torch `F.conv2d(x, w, bias, stride, padding)` (groups 1,
/// dilation 1): x [B, Cin, H, W], w [Cout, Cin, kh, kw], bias [Cout] →
/// y [B, Cout, Ho, Wo] with Ho = (H + 2·ph − kh)/sh + 1 (floor), Wo likewise and
/// y[b, co, oh, ow] = bias[co] + Σ_{ci,i,j} w[co, ci, i, j]·x[b, ci, oh·sh + i − ph, ow·sw + j − pw]
/// (zero outside the image).
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: (usize, usize),
    padding: (usize, usize),
) -> Result<Tensor> {
    let mut inputs = vec![x, w];
    inputs.extend(bias);
    same_device("conv2d", &inputs)?;
    let dtype = same_dtype("conv2d", &inputs)?;
    let g = geometry(x, w, bias, stride, padding)?;
    let (xv, wv) = (x.cpu_f32()?, w.cpu_f32()?);
    let bv = bias.map(|b| b.cpu_f32()).transpose()?;
    let y = k::conv2d_fwd(&g, &xv, &wv, bv.as_deref());
    super::counters::add_flops(g.flops());
    drop((xv, wv, bv));
    let out = cpu_out(y, &[g.b, g.cout, g.ho, g.wo], dtype);
    Ok(record(out, &inputs, || Conv2dBackward {
        g,
        x: w.tracks_grad().then(|| x.detach()),
        w: x.tracks_grad().then(|| w.detach()),
        x_dtype: x.dtype(),
        w_dtype: w.dtype(),
        bias: bias.map(|b| b.tracks_grad()),
    }))
}

/// Validates the shapes and derives the output size.
fn geometry(
    x: &Tensor,
    w: &Tensor,
    bias: Option<&Tensor>,
    stride: (usize, usize),
    padding: (usize, usize),
) -> Result<Conv2dGeom> {
    let mismatch = || Error::ShapeMismatch { op: "conv2d", lhs: x.shape().to_vec(), rhs: w.shape().to_vec() };
    if x.dims() != 4 || w.dims() != 4 || x.shape()[1] != w.shape()[1] {
        return Err(mismatch());
    }
    if stride.0 == 0 || stride.1 == 0 {
        return Err(Error::op("conv2d", format!("stride {stride:?} must be positive")));
    }
    let (xs, ws) = (x.shape(), w.shape());
    let (hp, wp) = (xs[2] + 2 * padding.0, xs[3] + 2 * padding.1);
    if ws[2] == 0 || ws[3] == 0 || hp < ws[2] || wp < ws[3] {
        return Err(Error::op(
            "conv2d",
            format!("kernel {:?} does not fit input {xs:?} with padding {padding:?}", &ws[2..]),
        ));
    }
    if let Some(b) = bias {
        if b.shape() != [ws[0]] {
            return Err(Error::ShapeMismatch { op: "conv2d bias", lhs: b.shape().to_vec(), rhs: vec![ws[0]] });
        }
    }
    Ok(Conv2dGeom {
        b: xs[0],
        cin: xs[1],
        h: xs[2],
        w: xs[3],
        cout: ws[0],
        kh: ws[2],
        kw: ws[3],
        sh: stride.0,
        sw: stride.1,
        ph: padding.0,
        pw: padding.1,
        ho: (hp - ws[2]) / stride.0 + 1,
        wo: (wp - ws[3]) / stride.1 + 1,
    })
}

struct Conv2dBackward {
    g: Conv2dGeom,
    /// Saved only when the weight needs its gradient.
    x: Option<Tensor>,
    /// Saved only when the input needs its gradient.
    w: Option<Tensor>,
    x_dtype: DType,
    w_dtype: DType,
    /// Present when the op had a bias: whether it needs its gradient.
    bias: Option<bool>,
}

impl Backward for Conv2dBackward {
    fn name(&self) -> &'static str {
        "conv2d"
    }
    fn backward(&self, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let g = &self.g;
        let dy = grad.cpu_f32()?;
        let dx = match &self.w {
            Some(w) => Some(cpu_out(k::conv2d_bwd_input(g, &w.cpu_f32()?, &dy), &[g.b, g.cin, g.h, g.w], self.x_dtype)),
            None => None,
        };
        let dw = match &self.x {
            Some(x) => {
                Some(cpu_out(k::conv2d_bwd_weight(g, &x.cpu_f32()?, &dy), &[g.cout, g.cin, g.kh, g.kw], self.w_dtype))
            }
            None => None,
        };
        let products = self.w.is_some() as u64 + self.x.is_some() as u64;
        super::counters::add_flops(products * g.flops());
        let mut grads = vec![dx, dw];
        if let Some(needed) = self.bias {
            grads.push(needed.then(|| cpu_out(k::conv2d_bwd_bias(g, &dy), &[g.cout], self.w_dtype)));
        }
        Ok(grads)
    }
}

/// Nearest-neighbour upsampling by an integer `factor`, torch
/// `F.interpolate(x, scale_factor=factor, mode="nearest")`: x [B, C, H, W] →
/// [B, C, H·f, W·f] with y[.., oh, ow] = x[.., oh / f, ow / f]. The gradient of an
/// input pixel is the sum over its f×f block.
pub fn upsample_nearest2d(x: &Tensor, factor: usize) -> Result<Tensor> {
    same_device("upsample_nearest2d", &[x])?;
    if x.dims() != 4 || factor == 0 {
        return Err(Error::op(
            "upsample_nearest2d",
            format!("expects a [B, C, H, W] input and a positive factor, got {:?} and {factor}", x.shape()),
        ));
    }
    let s = x.shape();
    let (planes, h, w) = (s[0] * s[1], s[2], s[3]);
    let y = k::upsample_nearest2d_fwd(&x.cpu_f32()?, planes, h, w, factor);
    let out = cpu_out(y, &[s[0], s[1], h * factor, w * factor], x.dtype());
    Ok(record(out, &[x], || UpsampleBackward { shape: s.to_vec(), factor }))
}

struct UpsampleBackward {
    shape: Vec<usize>,
    factor: usize,
}

impl Backward for UpsampleBackward {
    fn name(&self) -> &'static str {
        "upsample_nearest2d"
    }
    fn backward(&self, grad: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let s = &self.shape;
        let dx = k::upsample_nearest2d_bwd(&grad.cpu_f32()?, s[0] * s[1], s[2], s[3], self.factor);
        Ok(vec![Some(cpu_out(dx, s, grad.dtype()))])
    }
}

impl Tensor {
    pub fn conv2d(
        &self,
        w: &Tensor,
        bias: Option<&Tensor>,
        stride: (usize, usize),
        padding: (usize, usize),
    ) -> Result<Tensor> {
        conv2d(self, w, bias, stride, padding)
    }
    pub fn upsample_nearest2d(&self, factor: usize) -> Result<Tensor> {
        upsample_nearest2d(self, factor)
    }
}
