//! The op set: each op checks its inputs, runs the forward on the tensors' backend,
//! and records its backward rule on the tape (see `autograd`). One file per op family,
//! named like the backend and kernel files of the same family.
//!
//! Invariants:
//! - Forward never mutates inputs; outputs are fresh contiguous tensors (view ops
//!   excepted: they share storage and change only the layout).
//! - On the CPU every op computes in f32 and stores its output in the dtype of its
//!   first floating input, so bf16/f16 tensors behave like low-precision storage.
//! - Every backward rule returns gradients with exactly its input's shape.

pub mod attention;
pub mod binary;
pub mod conv;
pub mod counters;
pub mod embedding;
pub mod loss;
pub mod matmul;
pub mod modulate;
pub mod norm;
pub mod reduce;
pub mod rope;
pub mod shape;
pub mod softmax;
pub mod spectral_norm;
pub mod unary;

pub use attention::*;
pub use binary::*;
pub use conv::*;
pub use embedding::*;
pub use loss::*;
pub use matmul::*;
pub use modulate::*;
pub use norm::*;
pub use reduce::*;
pub use rope::*;
pub use shape::*;
pub use softmax::*;
pub use spectral_norm::*;
pub use unary::*;

use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};

/// Checks that all tensors are on one device and returns it. CUDA tensors cannot
/// exist without the `cuda` feature, so on such builds this is always the CPU.
pub(crate) fn same_device(op: &'static str, ts: &[&Tensor]) -> Result<Device> {
    let d = ts[0].device();
    for t in &ts[1..] {
        if t.device() != d {
            return Err(Error::DeviceMismatch { op, lhs: d, rhs: t.device() });
        }
    }
    if d != Device::Cpu {
        return Err(Error::NoCuda);
    }
    Ok(d)
}

/// Checks that all tensors share one dtype and returns it.
pub(crate) fn same_dtype(op: &'static str, ts: &[&Tensor]) -> Result<DType> {
    let d = ts[0].dtype();
    for t in &ts[1..] {
        if t.dtype() != d {
            return Err(Error::op(op, format!("dtype mismatch: {} vs {}", d, t.dtype())));
        }
    }
    Ok(d)
}

/// A fresh CPU tensor from f32 results, stored in `dtype`.
pub(crate) fn cpu_out(data: Vec<f32>, shape: &[usize], dtype: DType) -> Tensor {
    Tensor::from_f32(data, shape, dtype).expect("op produced a buffer matching its output shape")
}

/// Sums `g` over the dimensions that broadcasting stretched, giving `shape`.
pub fn reduce_to_shape(g: &Tensor, shape: &[usize]) -> Result<Tensor> {
    if g.shape() == shape {
        return Ok(g.clone());
    }
    let pad = g.dims() - shape.len();
    let dims: Vec<isize> =
        (0..g.dims()).filter(|&i| i < pad || (shape[i - pad] == 1 && g.shape()[i] != 1)).map(|i| i as isize).collect();
    let s = if dims.is_empty() { g.clone() } else { sum(g, &dims, true)? };
    reshape(&s, shape)
}
