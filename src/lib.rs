//! senseflow: a CUDA kernel engine with Rust host code for SenseFlow distillation of
//! flow-matching text-to-image models. Layers, top to bottom (data flows down):
//! `tensor` → `backend` (cpu reference, cuda kernels) → `ops` → `autograd` → `nn`,
//! `optim` → `io` → models and training. See docs/ARCHITECTURE.md.

pub mod autograd;
pub mod backend;
pub mod data;
pub mod demo;
pub mod diffusion;
pub mod error;
pub mod eval;
pub mod io;
pub mod models;
pub mod nn;
pub mod ops;
pub mod optim;
pub mod rng;
pub mod senseflow;
pub mod tensor;
pub mod testing;
pub mod train;

pub use autograd::{backward, no_grad, Grads};
pub use error::{Error, Result};
pub use tensor::{DType, Device, Tensor};
