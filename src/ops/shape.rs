//! Shape ops. reshape (of contiguous data), permute, transpose, narrow and
//! broadcast_to are views; concat and contiguous copy.

use super::{cpu_out, reduce_to_shape, same_device, same_dtype};
use crate::autograd::{record, Backward};
use crate::error::{Error, Result};
use crate::tensor::{Layout, Tensor};

fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
}

pub fn reshape(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if numel(shape) != x.numel() {
        return Err(Error::ShapeMismatch { op: "reshape", lhs: x.shape().to_vec(), rhs: shape.to_vec() });
    }
    let base = x.contiguous_untracked()?;
    let mut layout = Layout::contiguous(shape);
    layout.offset = base.layout().offset;
    let out = base.view_with(layout, false);
    Ok(record(out, &[x], || ReshapeBackward { shape: x.shape().to_vec() }))
}

struct ReshapeBackward {
    shape: Vec<usize>,
}

impl Backward for ReshapeBackward {
    fn name(&self) -> &'static str {
        "reshape"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(reshape(g, &self.shape)?)])
    }
}

/// Materializes a row-major copy; the identity when already contiguous.
pub fn contiguous(x: &Tensor) -> Result<Tensor> {
    if x.is_contiguous() {
        return Ok(x.clone());
    }
    let out = x.contiguous_untracked()?.with_track(false);
    Ok(record(out, &[x], || IdentityBackward))
}

struct IdentityBackward;

impl Backward for IdentityBackward {
    fn name(&self) -> &'static str {
        "identity"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(g.clone())])
    }
}

pub fn permute(x: &Tensor, perm: &[usize]) -> Result<Tensor> {
    let n = x.dims();
    let mut seen = vec![false; n];
    if perm.len() != n || perm.iter().any(|&p| p >= n || std::mem::replace(&mut seen[p], true)) {
        return Err(Error::op("permute", format!("{perm:?} is not a permutation of the axes of {:?}", x.shape())));
    }
    let out = x.view_with(x.layout().permuted(perm), false);
    let mut inverse = vec![0; n];
    for (i, &p) in perm.iter().enumerate() {
        inverse[p] = i;
    }
    Ok(record(out, &[x], || PermuteBackward { inverse }))
}

struct PermuteBackward {
    inverse: Vec<usize>,
}

impl Backward for PermuteBackward {
    fn name(&self) -> &'static str {
        "permute"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(permute(g, &self.inverse)?)])
    }
}

pub fn transpose(x: &Tensor, d0: isize, d1: isize) -> Result<Tensor> {
    let (a, b) = (x.axis(d0)?, x.axis(d1)?);
    let mut perm: Vec<usize> = (0..x.dims()).collect();
    perm.swap(a, b);
    permute(x, &perm)
}

/// `len` entries of axis `dim` starting at `start` (a view).
pub fn narrow(x: &Tensor, dim: isize, start: usize, len: usize) -> Result<Tensor> {
    let d = x.axis(dim)?;
    if start + len > x.shape()[d] {
        return Err(Error::op(
            "narrow",
            format!("range {start}..{} outside axis {d} of shape {:?}", start + len, x.shape()),
        ));
    }
    let mut layout = x.layout().clone();
    layout.offset += start * layout.strides[d];
    layout.shape[d] = len;
    let out = x.view_with(layout, false);
    Ok(record(out, &[x], || NarrowBackward { shape: x.shape().to_vec(), dim: d, start }))
}

struct NarrowBackward {
    shape: Vec<usize>,
    dim: usize,
    start: usize,
}

impl Backward for NarrowBackward {
    fn name(&self) -> &'static str {
        "narrow"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let mut parts = Vec::with_capacity(3);
        let before = self.start;
        let after = self.shape[self.dim] - self.start - g.shape()[self.dim];
        let zeros = |n: usize| {
            let mut s = self.shape.clone();
            s[self.dim] = n;
            Tensor::zeros(&s).to_dtype(g.dtype())
        };
        if before > 0 {
            parts.push(zeros(before)?);
        }
        parts.push(g.clone());
        if after > 0 {
            parts.push(zeros(after)?);
        }
        Ok(vec![Some(concat(&parts.iter().collect::<Vec<_>>(), self.dim as isize)?)])
    }
}

/// Splits axis `dim` into consecutive pieces of the given sizes (views).
pub fn split(x: &Tensor, dim: isize, sizes: &[usize]) -> Result<Vec<Tensor>> {
    let d = x.axis(dim)?;
    if sizes.iter().sum::<usize>() != x.shape()[d] {
        return Err(Error::op("split", format!("sizes {sizes:?} do not add up to axis {d} of {:?}", x.shape())));
    }
    let mut start = 0;
    sizes
        .iter()
        .map(|&n| {
            let t = narrow(x, dim, start, n);
            start += n;
            t
        })
        .collect()
}

/// `n` equal pieces along `dim`.
pub fn chunk(x: &Tensor, n: usize, dim: isize) -> Result<Vec<Tensor>> {
    let len = x.dim(dim)?;
    if n == 0 || len % n != 0 {
        return Err(Error::op("chunk", format!("axis of size {len} does not split into {n} equal chunks")));
    }
    split(x, dim, &vec![len / n; n])
}

pub fn concat(ts: &[&Tensor], dim: isize) -> Result<Tensor> {
    let Some(first) = ts.first() else {
        return Err(Error::op("concat", "no tensors"));
    };
    same_device("concat", ts)?;
    let dtype = same_dtype("concat", ts)?;
    let d = first.axis(dim)?;
    for t in &ts[1..] {
        let ok = t.dims() == first.dims() && (0..t.dims()).all(|i| i == d || t.shape()[i] == first.shape()[i]);
        if !ok {
            return Err(Error::ShapeMismatch { op: "concat", lhs: first.shape().to_vec(), rhs: t.shape().to_vec() });
        }
    }
    let mut shape = first.shape().to_vec();
    shape[d] = ts.iter().map(|t| t.shape()[d]).sum();
    let outer: usize = shape[..d].iter().product();
    let inner: usize = shape[d + 1..].iter().product();
    let datas = ts.iter().map(|t| t.cpu_f32()).collect::<Result<Vec<_>>>()?;
    let mut out = Vec::with_capacity(numel(&shape));
    for o in 0..outer {
        for (t, v) in ts.iter().zip(&datas) {
            let run = t.shape()[d] * inner;
            out.extend_from_slice(&v[o * run..(o + 1) * run]);
        }
    }
    drop(datas);
    let out = cpu_out(out, &shape, dtype);
    let sizes: Vec<usize> = ts.iter().map(|t| t.shape()[d]).collect();
    Ok(record(out, ts, || ConcatBackward { dim: d, sizes }))
}

struct ConcatBackward {
    dim: usize,
    sizes: Vec<usize>,
}

impl Backward for ConcatBackward {
    fn name(&self) -> &'static str {
        "concat"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(split(g, self.dim as isize, &self.sizes)?.into_iter().map(Some).collect())
    }
}

/// Stacks equal-shaped tensors along a new axis `dim`.
pub fn stack(ts: &[&Tensor], dim: usize) -> Result<Tensor> {
    let expanded = ts.iter().map(|t| unsqueeze(t, dim)).collect::<Result<Vec<_>>>()?;
    concat(&expanded.iter().collect::<Vec<_>>(), dim as isize)
}

/// A view that repeats size-1 (or missing leading) axes to `shape` (stride 0).
pub fn broadcast_to(x: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if x.shape() == shape {
        return Ok(x.clone());
    }
    let bad = || Error::ShapeMismatch { op: "broadcast_to", lhs: x.shape().to_vec(), rhs: shape.to_vec() };
    if shape.len() < x.dims() {
        return Err(bad());
    }
    let pad = shape.len() - x.dims();
    let l = x.layout();
    let mut strides = vec![0; shape.len()];
    for i in 0..x.dims() {
        match (x.shape()[i], shape[pad + i]) {
            (a, b) if a == b => strides[pad + i] = l.strides[i],
            (1, _) => {}
            _ => return Err(bad()),
        }
    }
    let out = x.view_with(Layout { shape: shape.to_vec(), strides, offset: l.offset }, false);
    Ok(record(out, &[x], || BroadcastBackward { shape: x.shape().to_vec() }))
}

struct BroadcastBackward {
    shape: Vec<usize>,
}

impl Backward for BroadcastBackward {
    fn name(&self) -> &'static str {
        "broadcast_to"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(reduce_to_shape(g, &self.shape)?)])
    }
}

pub fn unsqueeze(x: &Tensor, dim: usize) -> Result<Tensor> {
    if dim > x.dims() {
        return Err(Error::op("unsqueeze", format!("axis {dim} out of range for shape {:?}", x.shape())));
    }
    let mut s = x.shape().to_vec();
    s.insert(dim, 1);
    reshape(x, &s)
}

pub fn squeeze(x: &Tensor, dim: isize) -> Result<Tensor> {
    let d = x.axis(dim)?;
    if x.shape()[d] != 1 {
        return Err(Error::op("squeeze", format!("axis {d} of shape {:?} is not 1", x.shape())));
    }
    let mut s = x.shape().to_vec();
    s.remove(d);
    reshape(x, &s)
}

/// Merges axes `start..=end` into one.
pub fn flatten(x: &Tensor, start: isize, end: isize) -> Result<Tensor> {
    let (a, b) = (x.axis(start)?, x.axis(end)?);
    let mut s: Vec<usize> = x.shape()[..a].to_vec();
    s.push(x.shape()[a..=b].iter().product());
    s.extend_from_slice(&x.shape()[b + 1..]);
    reshape(x, &s)
}

impl Tensor {
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        reshape(self, shape)
    }
    pub fn permute(&self, perm: &[usize]) -> Result<Tensor> {
        permute(self, perm)
    }
    pub fn transpose(&self, d0: isize, d1: isize) -> Result<Tensor> {
        transpose(self, d0, d1)
    }
    pub fn narrow(&self, dim: isize, start: usize, len: usize) -> Result<Tensor> {
        narrow(self, dim, start, len)
    }
    pub fn contiguous(&self) -> Result<Tensor> {
        contiguous(self)
    }
    pub fn broadcast_to(&self, shape: &[usize]) -> Result<Tensor> {
        broadcast_to(self, shape)
    }
    pub fn unsqueeze(&self, dim: usize) -> Result<Tensor> {
        unsqueeze(self, dim)
    }
    pub fn squeeze(&self, dim: isize) -> Result<Tensor> {
        squeeze(self, dim)
    }
    pub fn flatten(&self, start: isize, end: isize) -> Result<Tensor> {
        flatten(self, start, end)
    }
}
