//! Text conditioning for training and sampling: anything that turns captions into the
//! teacher's (per-token states, pooled vector) pair.

use crate::error::Result;
use crate::senseflow::nets::Cond;
use crate::tensor::Tensor;

pub trait TextEncoder {
    /// Per-token states [B, L, D] and pooled vectors [B, P] for `captions`.
    fn encode(&self, captions: &[String]) -> Result<Cond>;
    /// Trainable parameters by name (empty when frozen).
    fn named_params(&self) -> Vec<(String, Tensor)>;
}
