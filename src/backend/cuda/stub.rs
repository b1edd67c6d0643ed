//! The CUDA backend of a build without the `cuda` feature: every entry reports that the
//! binary was built without CUDA support; everything else in the engine builds and runs on
//! the CPU.

use crate::error::{Error, Result};
use crate::tensor::{DType, Device, Tensor};

/// Device memory of one tensor. Uninhabited without the `cuda` feature: no value of it
/// can exist, so every match arm on it is statically dead.
pub enum CudaStorage {}

impl CudaStorage {
    pub fn dtype(&self) -> DType {
        match *self {}
    }
    pub fn device(&self) -> Device {
        match *self {}
    }
    pub fn len(&self) -> usize {
        match *self {}
    }
    pub fn is_empty(&self) -> bool {
        match *self {}
    }
}

/// Whether a usable CUDA device is present.
pub fn is_available() -> bool {
    false
}

pub fn to_device(_t: &Tensor, device: Device) -> Result<Tensor> {
    match device {
        Device::Cpu => Err(Error::op("to_device", "tensor is already on the cpu")),
        Device::Cuda(_) => Err(Error::NoCuda),
    }
}
