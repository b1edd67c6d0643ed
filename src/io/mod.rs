//! Reading and writing weights: safetensors files (memory-mapped, zero-copy), diffusers
//! and transformers model folders, and crash-safe atomic writes.
//!
//! Invariants:
//! - Loading never reads tensor data up front: opening a file parses and validates the
//!   header only; a tensor's bytes are touched when an op reads them.
//! - Every error names the file (or folder), and where relevant the key, dtype and shapes,
//!   on one line.
//! - Every write is atomic: a reader sees the old file or the complete new one, never a
//!   partial one (temp file in the same directory, fsync, rename, fsync of the directory).

pub mod atomic;
pub mod diffusers;
pub mod safetensors;

pub use self::atomic::{atomic_write, atomic_write_json};
pub use self::diffusers::ModelFolder;
pub use self::safetensors::{load, save, SafeTensorsFile, TensorMeta};
