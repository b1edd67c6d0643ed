//! Softmax and log-softmax along any axis, each with a fused backward from the saved
//! output (no saved input): softmax dx = y·(g − Σ g·y), log-softmax dx = g − e^y·Σ g.
//! Rows are shifted by their maximum before exp, so large logits do not overflow.

use super::{cpu_out, same_device};
use crate::autograd::{record, Backward};
use crate::backend::cpu;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// `torch.softmax(x, dim)`: y = exp(x − max) / Σ exp(x − max) along `dim` (negative
/// counts from the end). Output has the shape and dtype of `x`.
pub fn softmax(x: &Tensor, dim: isize) -> Result<Tensor> {
    softmax_impl(x, dim, false)
}

/// `torch.log_softmax(x, dim)`: y = (x − max) − ln Σ exp(x − max) along `dim`.
pub fn log_softmax(x: &Tensor, dim: isize) -> Result<Tensor> {
    softmax_impl(x, dim, true)
}

fn softmax_impl(x: &Tensor, dim: isize, log: bool) -> Result<Tensor> {
    let name = if log { "log_softmax" } else { "softmax" };
    same_device(name, &[x])?;
    let ax =
        x.axis(dim).map_err(|_| Error::op(name, format!("dim {dim} is out of range for shape {:?}", x.shape())))?;
    // A 0-d tensor is one row of one element.
    let n = x.shape().get(ax).copied().unwrap_or(1);
    let inner: usize = x.shape().iter().skip(ax + 1).product();
    let y = cpu::softmax::softmax_fwd(&x.cpu_f32()?, n, inner, log);
    let out = cpu_out(y, x.shape(), x.dtype());
    let saved = out.detach();
    Ok(record(out, &[x], || SoftmaxBackward { y: saved, n, inner, log }))
}

struct SoftmaxBackward {
    /// The forward output (softmax or log-softmax), shape of x.
    y: Tensor,
    n: usize,
    inner: usize,
    log: bool,
}

impl Backward for SoftmaxBackward {
    fn name(&self) -> &'static str {
        if self.log {
            "log_softmax"
        } else {
            "softmax"
        }
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let dx = cpu::softmax::softmax_bwd(&self.y.cpu_f32()?, &g.cpu_f32()?, self.n, self.inner, self.log);
        Ok(vec![Some(cpu_out(dx, self.y.shape(), g.dtype()))])
    }
}

impl Tensor {
    pub fn softmax(&self, dim: isize) -> Result<Tensor> {
        softmax(self, dim)
    }
    pub fn log_softmax(&self, dim: isize) -> Result<Tensor> {
        log_softmax(self, dim)
    }
}
