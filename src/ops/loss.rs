//! Scalar training losses with fused backward rules: regression (MSE, pseudo-Huber for
//! ISG) and the hinge terms of the adversarial discriminator/generator losses.
//!
//! Conventions: every loss is a mean over all elements and returns a 0-d tensor in the
//! dtype of its first input; the two operands of a regression loss must have the same
//! shape (no broadcasting: a silent broadcast of a target is a bug, not a feature).
//! Values are summed in f64; gradients are written in one pass from the saved inputs.
//! An empty input gives NaN, like torch's mean of nothing.

use super::{cpu_out, same_device, same_dtype};
use crate::autograd::{record, Backward};
use crate::backend::cpu::loss as k;
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Which regression loss a [`RegressionBackward`] differentiates.
#[derive(Clone, Copy)]
enum Regression {
    Mse,
    PseudoHuber(f32),
}

impl Regression {
    fn name(self) -> &'static str {
        match self {
            Regression::Mse => "mse_loss",
            Regression::PseudoHuber(_) => "pseudo_huber_loss",
        }
    }
}

fn regression(kind: Regression, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    let name = kind.name();
    same_device(name, &[a, b])?;
    let dtype = same_dtype(name, &[a, b])?;
    if a.shape() != b.shape() {
        return Err(Error::ShapeMismatch { op: name, lhs: a.shape().to_vec(), rhs: b.shape().to_vec() });
    }
    let (av, bv) = (a.cpu_f32()?, b.cpu_f32()?);
    let total = match kind {
        Regression::Mse => k::mse_sum(&av, &bv),
        Regression::PseudoHuber(c) => k::pseudo_huber_sum(&av, &bv, c),
    };
    drop((av, bv));
    let out = cpu_out(vec![(total / a.numel() as f64) as f32], &[], dtype);
    Ok(record(out, &[a, b], || RegressionBackward {
        kind,
        a: a.detach(),
        b: b.detach(),
        needs: (a.tracks_grad(), b.tracks_grad()),
    }))
}

struct RegressionBackward {
    kind: Regression,
    a: Tensor,
    b: Tensor,
    needs: (bool, bool),
}

impl Backward for RegressionBackward {
    fn name(&self) -> &'static str {
        self.kind.name()
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let scale = g.to_scalar()? / self.a.numel() as f32;
        let (av, bv) = (self.a.cpu_f32()?, self.b.cpu_f32()?);
        let ga = match self.kind {
            Regression::Mse => k::mse_grad(&av, &bv, scale),
            Regression::PseudoHuber(c) => k::pseudo_huber_grad(&av, &bv, c, scale),
        };
        let shape = self.a.shape();
        let gb = self.needs.1.then(|| cpu_out(ga.iter().map(|v| -v).collect(), shape, self.b.dtype()));
        let ga = self.needs.0.then(|| cpu_out(ga, shape, self.a.dtype()));
        Ok(vec![ga, gb])
    }
}

/// Mean squared error, torch `F.mse_loss(a, b)` (reduction "mean"): mean((a − b)²).
/// Gradients flow to both operands (detach a target that must not move).
pub fn mse_loss(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    regression(Regression::Mse, a, b)
}

/// Pseudo-Huber loss mean(sqrt((a − b)² + c²) − c) with c > 0 (SenseFlow's ISG uses
/// c = 0.001): quadratic (≈ d²/2c) for |d| ≪ c, linear (≈ |d|) for |d| ≫ c.
/// Gradients flow to both operands.
pub fn pseudo_huber_loss(a: &Tensor, b: &Tensor, c: f32) -> Result<Tensor> {
    if !(c > 0.0 && c.is_finite()) {
        return Err(Error::op("pseudo_huber_loss", format!("c must be positive and finite, got {c}")));
    }
    regression(Regression::PseudoHuber(c), a, b)
}

/// Which hinge term a [`HingeBackward`] differentiates.
#[derive(Clone, Copy)]
enum Hinge {
    /// mean(relu(1 − x)).
    Real,
    /// mean(relu(1 + x)).
    Fake,
    /// −mean(x).
    Gen,
}

impl Hinge {
    fn name(self) -> &'static str {
        match self {
            Hinge::Real => "hinge_d_real",
            Hinge::Fake => "hinge_d_fake",
            Hinge::Gen => "hinge_g",
        }
    }
    /// The sign s in relu(1 + s·x).
    fn sign(self) -> f32 {
        match self {
            Hinge::Real => -1.0,
            Hinge::Fake | Hinge::Gen => 1.0,
        }
    }
}

fn hinge(kind: Hinge, x: &Tensor) -> Result<Tensor> {
    same_device(kind.name(), &[x])?;
    let xv = x.cpu_f32()?;
    let total = match kind {
        Hinge::Gen => -k::sum(&xv),
        Hinge::Real | Hinge::Fake => k::hinge_sum(&xv, kind.sign()),
    };
    drop(xv);
    let out = cpu_out(vec![(total / x.numel() as f64) as f32], &[], x.dtype());
    // The generator term's gradient is a constant: nothing to save.
    Ok(record(out, &[x], || HingeBackward {
        kind,
        x: (!matches!(kind, Hinge::Gen)).then(|| x.detach()),
        shape: x.shape().to_vec(),
        dtype: x.dtype(),
    }))
}

struct HingeBackward {
    kind: Hinge,
    x: Option<Tensor>,
    shape: Vec<usize>,
    dtype: DType,
}

impl Backward for HingeBackward {
    fn name(&self) -> &'static str {
        self.kind.name()
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let n: usize = self.shape.iter().product();
        let scale = g.to_scalar()? / n as f32;
        let gx = match &self.x {
            Some(x) => k::hinge_grad(&x.cpu_f32()?, self.kind.sign(), scale),
            None => vec![-scale; n],
        };
        Ok(vec![Some(cpu_out(gx, &self.shape, self.dtype))])
    }
}

/// Discriminator hinge loss on real samples: mean(relu(1 − logits)).
pub fn hinge_d_real(logits: &Tensor) -> Result<Tensor> {
    hinge(Hinge::Real, logits)
}

/// Discriminator hinge loss on generated samples: mean(relu(1 + logits)).
pub fn hinge_d_fake(logits: &Tensor) -> Result<Tensor> {
    hinge(Hinge::Fake, logits)
}

/// Generator hinge (adversarial) loss: −mean(logits).
pub fn hinge_g(logits: &Tensor) -> Result<Tensor> {
    hinge(Hinge::Gen, logits)
}
