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
    let batch: Vec<(usize, usize)> = (0..n - 2).filter(|&i| l.shape[i] != 1).map(|i| (l.shape[i], l.strides[i])).collect();
    let bs = batch.last().map(|&(_, s)| s).unwrap_or(0);
    for w in batch.windows(2) {
        if w[0].1 != w[1].0 * w[1].1 {
            return None;
        }
    }
    Some((rs, cs, bs, l.offset))
}

pub fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
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
    );
    drop((ga, gb));
    let mut shape = batch_shape;
    shape.extend([m, n]);
    let out = cpu_out(data, &shape, dtype);
    Ok(record(out, &[a, b], || MatmulBackward {
        a: b.tracks_grad().then(|| a.detach()),
        b: a.tracks_grad().then(|| b.detach()),
        a_shape: a.shape().to_vec(),
        b_shape: b.shape().to_vec(),
    }))
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

/// `x @ wᵀ + bias` with `w` of shape [out, in].
pub fn linear(x: &Tensor, w: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    if w.dims() != 2 || x.dims() == 0 || x.shape()[x.dims() - 1] != w.shape()[1] {
        return Err(Error::ShapeMismatch { op: "linear", lhs: x.shape().to_vec(), rhs: w.shape().to_vec() });
    }
    let y = matmul(x, &w.transpose(0, 1)?)?;
    match bias {
        Some(b) => y.add(b),
        None => Ok(y),
    }
}

impl Tensor {
    pub fn matmul(&self, o: &Tensor) -> Result<Tensor> {
        matmul(self, o)
    }
}
