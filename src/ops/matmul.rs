//! Matrix products: batched `matmul` ([..., m, k] @ [..., k, n]; a 2-D operand
//! broadcasts over the other's batch) and `linear` (x @ Wᵀ + b with W stored
//! [out, in], the PyTorch/diffusers layout). Transposed views are read in place.

use super::{cpu_out, same_device, same_dtype};
use crate::autograd::{record, Backward};
use crate::backend::cpu::matmul::{self as k, MatRef};
use crate::error::{Error, Result};
use crate::tensor::{Storage, Tensor};

/// The matrix view of the last two axes and the stride between consecutive matrices
/// of the (flattened) batch; `None` when the batch axes do not flatten to one stride.
fn mat_layout(t: &Tensor) -> Option<(isize, isize, usize, usize)> {
    let l = t.layout();
    let n = l.shape.len();
    let (rs, cs) = (l.strides[n - 2] as isize, l.strides[n - 1] as isize);
    let batch: Vec<(usize, usize)> =
        (0..n - 2).filter(|&i| l.shape[i] != 1).map(|i| (l.shape[i], l.strides[i])).collect();
    let bs = batch.last().map(|&(_, s)| s).unwrap_or(0);
    for w in batch.windows(2) {
        if w[0].1 != w[1].0 * w[1].1 {
            return None;
        }
    }
    Some((rs, cs, bs, l.offset))
}

pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (data, shape, dtype) = product(a, b, None)?;
    let out = cpu_out(data, &shape, dtype);
    Ok(record(out, &[a, b], || MatmulBackward {
        a: b.tracks_grad().then(|| a.detach()),
        b: a.tracks_grad().then(|| b.detach()),
        a_shape: a.shape().to_vec(),
        b_shape: b.shape().to_vec(),
    }))
}

/// The values of `a @ b` (+ `bias` on every row), its shape and dtype; not recorded.
fn product(a: &Tensor, b: &Tensor, bias: Option<&[f32]>) -> Result<(Vec<f32>, Vec<usize>, crate::tensor::DType)> {
    same_device("matmul", &[a, b])?;
    let dtype = same_dtype("matmul", &[a, b])?;
    let mismatch = || Error::ShapeMismatch { op: "matmul", lhs: a.shape().to_vec(), rhs: b.shape().to_vec() };
    if a.dims() < 2 || b.dims() < 2 {
        return Err(mismatch());
    }
    let (m, ka) = (a.shape()[a.dims() - 2], a.shape()[a.dims() - 1]);
    let (kb, n) = (b.shape()[b.dims() - 2], b.shape()[b.dims() - 1]);
    let (ab, bb) = (&a.shape()[..a.dims() - 2], &b.shape()[..b.dims() - 2]);
    let batch_shape: Vec<usize> = if ab == bb || bb.is_empty() {
        ab.to_vec()
    } else if ab.is_empty() {
        bb.to_vec()
    } else {
        return Err(mismatch());
    };
    if ka != kb {
        return Err(mismatch());
    }
    let batch: usize = batch_shape.iter().product();
    super::counters::add_flops(2 * (batch * m * n * ka) as u64);
    // Operands must be f32 in storage and have a single batch stride; else copy.
    let prep = |t: &Tensor| -> Result<Tensor> {
        let f32_storage = matches!(&*t.read_storage(), Storage::Cpu(c) if c.as_f32().is_some());
        if f32_storage && mat_layout(t).is_some() {
            Ok(t.detach())
        } else {
            Tensor::from_vec(t.to_vec_f32()?, t.shape())
        }
    };
    let (pa, pb) = (prep(a)?, prep(b)?);
    let (ga, gb) = (pa.read_storage(), pb.read_storage());
    let (Storage::Cpu(sa), Storage::Cpu(sb)) = (&*ga, &*gb) else { unreachable!("checked cpu above") };
    let (ar, ac, abs, ao) = mat_layout(&pa).expect("prepared");
    let (br, bc, bbs, bo) = mat_layout(&pb).expect("prepared");
    let data = k::matmul(
        batch,
        m,
        n,
        ka,
        MatRef { data: sa.as_f32().expect("prepared"), offset: ao, rs: ar, cs: ac },
        if ab.is_empty() { 0 } else { abs },
        MatRef { data: sb.as_f32().expect("prepared"), offset: bo, rs: br, cs: bc },
        if bb.is_empty() { 0 } else { bbs },
        bias,
    );
    drop((ga, gb));
    let mut shape = batch_shape;
    shape.extend([m, n]);
    Ok((data, shape, dtype))
}

struct MatmulBackward {
    a: Option<Tensor>,
    b: Option<Tensor>,
    a_shape: Vec<usize>,
    b_shape: Vec<usize>,
}

/// `xᵀ @ g` summed over batch when `x`'s partner was 2-D and broadcast.
fn flat_tn(x: &Tensor, g: &Tensor) -> Result<Tensor> {
    let k = x.shape()[x.dims() - 1];
    let n = g.shape()[g.dims() - 1];
    let x2 = x.reshape(&[x.numel() / k, k])?;
    let g2 = g.reshape(&[g.numel() / n, n])?;
    matmul(&x2.transpose(0, 1)?, &g2)
}

impl Backward for MatmulBackward {
    fn name(&self) -> &'static str {
        "matmul"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let ga = match &self.b {
            None => None,
            Some(b) if self.a_shape.len() == 2 && self.b_shape.len() > 2 => {
                // a broadcast over b's batch: dA = Σ_batch g bᵀ = (gᵀ-flattened) form.
                let gt = g.transpose(-2, -1)?;
                let bt = b.transpose(-2, -1)?;
                Some(flat_tn(&bt.contiguous()?, &gt.contiguous()?)?.transpose(0, 1)?.contiguous()?)
            }
            Some(b) => Some(matmul(g, &b.transpose(-2, -1)?)?),
        };
        let gb = match &self.a {
            None => None,
            Some(a) if self.b_shape.len() == 2 && self.a_shape.len() > 2 => Some(flat_tn(a, g)?),
            Some(a) => Some(matmul(&a.transpose(-2, -1)?, g)?),
        };
        Ok(vec![ga, gb])
    }
}

/// `x @ wᵀ + bias` with `x` [.., in], `w` [out, in] (the PyTorch/diffusers layout) and
/// `bias` [out]; torch `F.linear(x, w, bias)`. The bias is the GEMM's starting value
/// (no separate broadcast pass), and the backward is one fused rule.
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if w.dims() != 2 || x.dims() == 0 || x.shape()[x.dims() - 1] != w.shape()[1] {
        return Err(Error::ShapeMismatch { op: "linear", lhs: x.shape().to_vec(), rhs: w.shape().to_vec() });
    }
    let Some(b) = bias else { return matmul(x, &w.transpose(0, 1)?) };
    same_device("linear", &[x, w, b])?;
    same_dtype("linear", &[x, w, b])?;
    if b.shape() != [w.shape()[0]] {
        return Err(Error::ShapeMismatch { op: "linear", lhs: w.shape().to_vec(), rhs: b.shape().to_vec() });
    }
    let bv = b.cpu_f32()?;
    let (data, shape, dtype) = product(x, &w.transpose(0, 1)?, Some(&bv))?;
    drop(bv);
    let out = cpu_out(data, &shape, dtype);
    Ok(record(out, &[x, w, b], || LinearBackward {
        x: w.tracks_grad().then(|| x.detach()),
        w: x.tracks_grad().then(|| w.detach()),
        x_shape: x.shape().to_vec(),
    }))
}

struct LinearBackward {
    /// Saved for dW (only when w tracks its gradient).
    x: Option<Tensor>,
    /// Saved for dx (only when x tracks its gradient).
    w: Option<Tensor>,
    x_shape: Vec<usize>,
}

impl Backward for LinearBackward {
    fn name(&self) -> &'static str {
        "linear"
    }
    /// dx = g W, dW = Σ_rows gᵀ x, db = Σ_rows g (rows: every leading axis).
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let gx = match &self.w {
            Some(w) => Some(matmul(g, w)?),
            None => None,
        };
        let gw = match &self.x {
            Some(x) => Some(flat_tn(g, x)?),
            None => None,
        };
        let out = g.shape()[g.dims() - 1];
        let rows: Vec<isize> = (0..g.dims() as isize - 1).collect();
        let gb = if rows.is_empty() { g.clone() } else { super::sum(g, &rows, false)? };
        debug_assert_eq!(gx.as_ref().map_or(&self.x_shape[..], |t| t.shape()), &self.x_shape[..]);
        debug_assert_eq!(gb.shape(), [out]);
        Ok(vec![gx, gw, Some(gb)])
    }
}

impl Tensor {
    pub fn matmul(&self, o: &Tensor) -> Result<Tensor> {
        matmul(self, o)
    }
}
