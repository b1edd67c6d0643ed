//! Compute backends. `cpu` is the reference for every op; `cuda` holds the kernels
//! (a stub that reports "built without CUDA support" unless built with `--features cuda`).

pub mod cpu;
pub mod cuda;
