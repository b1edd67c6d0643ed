//! Modules and the parameter store.
//!
//! Parameters are named by their checkpoint keys (diffusers/transformers), so loading
//! a model is a lookup: a module asks its `VarBuilder` for `"attn.to_q.weight"` with
//! an expected shape, and the builder either loads it from the source (checking the
//! shape) or initializes it. Every parameter lands in the `ParamStore`, which the
//! optimizer, checkpoints and IDA enumerate in a stable (sorted) order.

pub mod embeddings;
mod linear;
pub mod mlp;
pub mod norm;
mod store;

pub use linear::Linear;
pub use mlp::FeedForward;
pub use norm::{AdaLayerNormContinuous, AdaLayerNormZero, LayerNorm, RmsNorm};
pub use store::{Init, ParamSource, ParamStore, VarBuilder};
