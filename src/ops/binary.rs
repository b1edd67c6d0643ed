//! Broadcasting binary arithmetic and scalar affine maps.

use super::{cpu_out, reduce_to_shape, same_device, same_dtype};
use crate::autograd::{record, Backward};
use crate::backend::cpu;
use crate::error::{Error, Result};
use crate::tensor::Tensor;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
}

impl BinaryOp {
    fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
        }
    }
}

fn binary(op: BinaryOp, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let name = op.name();
    same_device(name, &[a, b])?;
    let dtype = same_dtype(name, &[a, b])?;
    let out_shape = cpu::binary::broadcast_shape(a.shape(), b.shape()).ok_or_else(|| Error::ShapeMismatch {
        op: name,
        lhs: a.shape().to_vec(),
        rhs: b.shape().to_vec(),
    })?;
    let (xa, xb) = (a.cpu_f32()?, b.cpu_f32()?);
    // One instantiation per op, so the element loop has no branch in it.
    let (sa, sb, so) = (a.shape(), b.shape(), out_shape.as_slice());
    let data = match op {
        BinaryOp::Add => cpu::binary::map_broadcast(&xa, sa, &xb, sb, so, |x, y| x + y),
        BinaryOp::Sub => cpu::binary::map_broadcast(&xa, sa, &xb, sb, so, |x, y| x - y),
        BinaryOp::Mul => cpu::binary::map_broadcast(&xa, sa, &xb, sb, so, |x, y| x * y),
        BinaryOp::Div => cpu::binary::map_broadcast(&xa, sa, &xb, sb, so, |x, y| x / y),
    };
    drop((xa, xb));
    let out = cpu_out(data, &out_shape, dtype);
    let needs_a = matches!(op, BinaryOp::Mul | BinaryOp::Div) && b.tracks_grad();
    let needs_b = matches!(op, BinaryOp::Mul | BinaryOp::Div) && a.tracks_grad();
    Ok(record(out, &[a, b], || BinaryBackward {
        op,
        a_shape: a.shape().to_vec(),
        b_shape: b.shape().to_vec(),
        a: (needs_a || op == BinaryOp::Div).then(|| a.detach()),
        b: (needs_b || op == BinaryOp::Div).then(|| b.detach()),
    }))
}

struct BinaryBackward {
    op: BinaryOp,
    a_shape: Vec<usize>,
    b_shape: Vec<usize>,
    a: Option<Tensor>,
    b: Option<Tensor>,
}

impl Backward for BinaryBackward {
    fn name(&self) -> &'static str {
        self.op.name()
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let (ga, gb) = match self.op {
            BinaryOp::Add => (g.clone(), g.clone()),
            BinaryOp::Sub => (g.clone(), neg(g)?),
            BinaryOp::Mul => {
                let ga = match &self.b {
                    Some(b) => mul(g, b)?,
                    None => g.clone(),
                };
                let gb = match &self.a {
                    Some(a) => mul(g, a)?,
                    None => g.clone(),
                };
                (ga, gb)
            }
            BinaryOp::Div => {
                let (a, b) = (self.a.as_ref().unwrap(), self.b.as_ref().unwrap());
                let ga = div(g, b)?;
                // d(a/b)/db = -a/b²
                let gb = neg(&div(&mul(&ga, a)?, b)?)?;
                (ga, gb)
            }
        };
        Ok(vec![Some(reduce_to_shape(&ga, &self.a_shape)?), Some(reduce_to_shape(&gb, &self.b_shape)?)])
    }
}

pub fn add(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Add, a, b)
}
pub fn sub(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Sub, a, b)
}
pub fn mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Mul, a, b)
}
pub fn div(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    binary(BinaryOp::Div, a, b)
}

/// `x * mul + add` with scalar constants.
pub fn affine(x: &Tensor, mul: f32, add: f32) -> Result<Tensor> {
    same_device("affine", &[x])?;
    let data = cpu::unary::map(&x.cpu_f32()?, |v| v * mul + add);
    let out = cpu_out(data, x.shape(), x.dtype());
    Ok(record(out, &[x], || AffineBackward { mul }))
}

struct AffineBackward {
    mul: f32,
}

impl Backward for AffineBackward {
    fn name(&self) -> &'static str {
        "affine"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        Ok(vec![Some(affine(g, self.mul, 0.0)?)])
    }
}

pub fn scale(x: &Tensor, s: f32) -> Result<Tensor> {
    affine(x, s, 0.0)
}
pub fn add_scalar(x: &Tensor, s: f32) -> Result<Tensor> {
    affine(x, 1.0, s)
}
pub fn neg(x: &Tensor) -> Result<Tensor> {
    affine(x, -1.0, 0.0)
}

impl Tensor {
    pub fn add(&self, o: &Tensor) -> Result<Tensor> {
        add(self, o)
    }
    pub fn sub(&self, o: &Tensor) -> Result<Tensor> {
        sub(self, o)
    }
    pub fn mul(&self, o: &Tensor) -> Result<Tensor> {
        mul(self, o)
    }
    pub fn div(&self, o: &Tensor) -> Result<Tensor> {
        div(self, o)
    }
    pub fn affine(&self, mul: f32, add: f32) -> Result<Tensor> {
        affine(self, mul, add)
    }
    pub fn scale(&self, s: f32) -> Result<Tensor> {
        scale(self, s)
    }
}
