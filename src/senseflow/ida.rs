//! Implicit distribution alignment: after each generator step the fake score is pulled
//! toward the generator, φ ← λ·φ + (1 − λ)·θ, over every trainable parameter (both
//! networks start as copies of the teacher, so parameters pair up by name).

use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// In-place blend of `fake` toward `gen` (paired in order, equal shapes). The blend
/// is computed in f32 and rounded once into each parameter's storage dtype.
pub fn ida_blend(fake: &[Tensor], gen: &[Tensor], lambda: f32) -> Result<()> {
    if fake.len() != gen.len() {
        return Err(Error::op(
            "ida_blend",
            format!("{} fake-score tensors vs {} generator tensors", fake.len(), gen.len()),
        ));
    }
    for (i, (phi, theta)) in fake.iter().zip(gen).enumerate() {
        if phi.shape() != theta.shape() {
            return Err(Error::op("ida_blend", format!("pair {i}: shapes {:?} and {:?}", phi.shape(), theta.shape())));
        }
        let (p, t) = (phi.to_vec_f32()?, theta.to_vec_f32()?);
        let blended: Vec<f32> = p.iter().zip(&t).map(|(&a, &b)| lambda * a + (1.0 - lambda) * b).collect();
        phi.assign_f32(&blended)?;
    }
    Ok(())
}
