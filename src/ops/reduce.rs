//! Reductions over axes: sum, mean, max (gradient to the first maximum, like
//! `torch.max(dim)`).

use super::{cpu_out, same_device};
use crate::autograd::{record, Backward};
use crate::backend::cpu;
use crate::error::Result;
use crate::tensor::Tensor;

/// Normalized, sorted, deduplicated axes; empty `dims` means all axes.
fn axes(x: &Tensor, dims: &[isize]) -> Result<Vec<usize>> {
    if dims.is_empty() {
        return Ok((0..x.dims()).collect());
    }
    let mut a = dims.iter().map(|&d| x.axis(d)).collect::<Result<Vec<_>>>()?;
    a.sort_unstable();
    a.dedup();
    Ok(a)
}

/// Moves reduced axes last, so each output element reduces one contiguous row.
/// Returns the row-major data, the row length and the output shape (keepdim or not).
fn rows_last(x: &Tensor, ax: &[usize], keepdim: bool) -> Result<(Vec<f32>, usize, Vec<usize>)> {
    let kept: Vec<usize> = (0..x.dims()).filter(|d| !ax.contains(d)).collect();
    let perm: Vec<usize> = kept.iter().chain(ax).copied().collect();
    let view = x.detach().view_with(x.layout().permuted(&perm), false);
    let data = view.to_vec_f32()?;
    let r = ax.iter().map(|&d| x.shape()[d]).product();
    let shape = if keepdim {
        (0..x.dims()).map(|d| if ax.contains(&d) { 1 } else { x.shape()[d] }).collect()
    } else {
        kept.iter().map(|&d| x.shape()[d]).collect()
    };
    Ok((data, r, shape))
}

/// Sums over `ax` (r > 0), the reduced length r and the output shape. Leading axes of
/// contiguous data (bias gradients: Σ over batch and tokens) are summed as columns in
/// place; anything else goes through `rows_last`. Both accumulate in f64 in the same
/// order, so the result does not depend on the path.
fn sums(x: &Tensor, ax: &[usize], keepdim: bool) -> Result<(Vec<f32>, usize, Vec<usize>)> {
    let leading = !ax.is_empty() && ax.len() < x.dims() && ax.iter().enumerate().all(|(i, &a)| a == i);
    let r: usize = ax.iter().map(|&d| x.shape()[d]).product();
    if leading && x.is_contiguous() && r > 0 {
        let cols: usize = x.shape()[ax.len()..].iter().product();
        let shape = if keepdim { keep_shape(x.shape(), ax) } else { x.shape()[ax.len()..].to_vec() };
        return Ok((cpu::reduce::sum_cols(&x.cpu_f32()?, cols), r, shape));
    }
    let (data, r, shape) = rows_last(x, ax, keepdim)?;
    let v = if r == 0 { vec![0.0; shape.iter().product()] } else { cpu::reduce::sum_rows(&data, r) };
    Ok((v, r, shape))
}

/// Shape of the output with reduced axes kept as size 1 (for broadcasting back).
fn keep_shape(in_shape: &[usize], ax: &[usize]) -> Vec<usize> {
    (0..in_shape.len()).map(|d| if ax.contains(&d) { 1 } else { in_shape[d] }).collect()
}

pub fn sum(x: &Tensor, dims: &[isize], keepdim: bool) -> Result<Tensor> {
    same_device("sum", &[x])?;
    let ax = axes(x, dims)?;
    let (v, _, shape) = sums(x, &ax, keepdim)?;
    let out = cpu_out(v, &shape, x.dtype());
    Ok(record(out, &[x], || SumBackward { in_shape: x.shape().to_vec(), keep: keep_shape(x.shape(), &ax), scale: 1.0 }))
}

pub fn mean(x: &Tensor, dims: &[isize], keepdim: bool) -> Result<Tensor> {
    same_device("mean", &[x])?;
    let ax = axes(x, dims)?;
    let (v, r, shape) = sums(x, &ax, keepdim)?;
    let inv = 1.0 / r as f32;
    // The mean of nothing is NaN, as in torch.
    let v = if r == 0 { vec![f32::NAN; shape.iter().product()] } else { v.into_iter().map(|s| s * inv).collect() };
    let out = cpu_out(v, &shape, x.dtype());
    Ok(record(out, &[x], || SumBackward { in_shape: x.shape().to_vec(), keep: keep_shape(x.shape(), &ax), scale: inv }))
}

struct SumBackward {
    in_shape: Vec<usize>,
    keep: Vec<usize>,
    scale: f32,
}

impl Backward for SumBackward {
    fn name(&self) -> &'static str {
        "sum"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let g = g.reshape(&self.keep)?;
        let g = if self.scale != 1.0 { g.scale(self.scale)? } else { g };
        Ok(vec![Some(g.broadcast_to(&self.in_shape)?.contiguous()?)])
    }
}

pub fn max(x: &Tensor, dims: &[isize], keepdim: bool) -> Result<Tensor> {
    same_device("max", &[x])?;
    let ax = axes(x, dims)?;
    let (data, r, shape) = rows_last(x, &ax, keepdim)?;
    if r == 0 {
        return Err(crate::error::Error::op("max", format!("reduction over an empty axis of shape {:?}", x.shape())));
    }
    let (vals, idx) = cpu::reduce::max_rows(&data, r);
    let out = cpu_out(vals, &shape, x.dtype());
    Ok(record(out, &[x], || MaxBackward { in_shape: x.shape().to_vec(), ax, idx }))
}

struct MaxBackward {
    in_shape: Vec<usize>,
    ax: Vec<usize>,
    /// For each output element, the position of its maximum inside its row.
    idx: Vec<usize>,
}

impl Backward for MaxBackward {
    fn name(&self) -> &'static str {
        "max"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        // Scatter into the permuted [kept..., reduced...] layout, then permute back.
        let r: usize = self.ax.iter().map(|&d| self.in_shape[d]).product();
        let gv = g.to_vec_f32()?;
        let mut dx = vec![0f32; gv.len() * r];
        for (o, (&j, &gval)) in self.idx.iter().zip(&gv).enumerate() {
            dx[o * r + j] = gval;
        }
        let kept: Vec<usize> = (0..self.in_shape.len()).filter(|d| !self.ax.contains(d)).collect();
        let perm: Vec<usize> = kept.iter().chain(&self.ax).copied().collect();
        let pshape: Vec<usize> = perm.iter().map(|&p| self.in_shape[p]).collect();
        let mut inverse = vec![0; perm.len()];
        for (i, &p) in perm.iter().enumerate() {
            inverse[p] = i;
        }
        let t = cpu_out(dx, &pshape, g.dtype());
        Ok(vec![Some(t.permute(&inverse)?.contiguous()?)])
    }
}

pub fn sum_all(x: &Tensor) -> Result<Tensor> {
    sum(x, &[], false)
}

pub fn mean_all(x: &Tensor) -> Result<Tensor> {
    mean(x, &[], false)
}

impl Tensor {
    pub fn sum(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        sum(self, dims, keepdim)
    }
    pub fn mean(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        mean(self, dims, keepdim)
    }
    pub fn max(&self, dims: &[isize], keepdim: bool) -> Result<Tensor> {
        max(self, dims, keepdim)
    }
    pub fn sum_all(&self) -> Result<Tensor> {
        sum_all(self)
    }
    pub fn mean_all(&self) -> Result<Tensor> {
        mean_all(self)
    }
}
