//! Device memory of tensors, and copies between host and device.
//!
//! Invariants:
//! - A [`CudaStorage`] owns one block of the device's caching allocator: `len` elements of
//!   `dtype`, contiguous from the block's start. Views (offsets, strides) live in the tensor's
//!   `Layout`, as on the CPU.
//! - Dropping storage returns its block to the cache (stream-ordered reuse, see `alloc`), so
//!   storage may be dropped while kernels that read it are still queued.
//! - Copies run on the device's stream: host -> device returns once the (pageable) source has
//!   been staged, device -> host synchronizes before the host reads the data.
//! - Device copies are not recorded on the autograd tape (the op layer decides that).

use super::alloc::Allocator;
use super::device::{cuda_err, device, CudaDevice};
use crate::error::{Error, Result};
use crate::tensor::{CpuStorage, DType, Device, Layout, Storage, Tensor};
use cudarc::driver::{result, sys::CUdeviceptr, DeviceRepr};
use half::{bf16, f16};
use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::Arc;

/// One block from the caching allocator; returned to the cache on drop.
pub(crate) struct DeviceBuffer {
    ptr: CUdeviceptr,
    class: usize,
    alloc: Arc<Allocator>,
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        self.alloc.release(self.ptr, self.class);
    }
}

/// Device memory of one tensor: `len` elements of `dtype` on device `ordinal`.
pub struct CudaStorage {
    buf: DeviceBuffer,
    dtype: DType,
    len: usize,
    ordinal: usize,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage({}, {}, cuda:{})", self.dtype, self.len, self.ordinal)
    }
}

impl CudaStorage {
    /// Uninitialized storage for `len` elements (kernels overwrite it).
    pub fn alloc(dev: &CudaDevice, dtype: DType, len: usize) -> Result<Self> {
        let (ptr, class) = dev.allocator().alloc(len * dtype.size_in_bytes())?;
        Ok(Self {
            buf: DeviceBuffer { ptr, class, alloc: dev.allocator().clone() },
            dtype,
            len,
            ordinal: dev.ordinal(),
        })
    }

    /// Zero-filled storage (cuMemsetD8Async on the device's stream).
    pub fn zeros(dev: &CudaDevice, dtype: DType, len: usize) -> Result<Self> {
        let s = Self::alloc(dev, dtype, len)?;
        if len > 0 {
            dev.bind()?;
            // SAFETY: the block holds at least len * size bytes; the memset is queued on the
            // stream that orders every use of the block.
            unsafe { result::memset_d8_async(s.buf.ptr, 0, s.bytes(), dev.cu_stream()) }.map_err(cuda_err("memset"))?;
        }
        Ok(s)
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }
    pub fn device(&self) -> Device {
        Device::Cuda(self.ordinal)
    }
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    pub fn bytes(&self) -> usize {
        self.len * self.dtype.size_in_bytes()
    }

    /// Device address of element `offset` (for kernel parameter structs).
    pub(crate) fn ptr_at(&self, offset: usize) -> CUdeviceptr {
        self.buf.ptr + (offset * self.dtype.size_in_bytes()) as u64
    }

    /// Element `offset` as a kernel input pointer.
    pub(crate) fn in_ptr(&self, offset: usize) -> *const c_void {
        self.ptr_at(offset) as *const c_void
    }

    /// Element `offset` as a kernel output pointer (the `&mut` marks the storage as written).
    pub(crate) fn out_ptr(&mut self, offset: usize) -> *mut c_void {
        self.ptr_at(offset) as *mut c_void
    }

    /// Host -> device copy of little-endian element bytes.
    pub fn from_bytes(dev: &CudaDevice, dtype: DType, bytes: &[u8]) -> Result<Self> {
        if bytes.len() % dtype.size_in_bytes() != 0 {
            return Err(Error::op("to_device", format!("{} bytes are not whole {dtype} elements", bytes.len())));
        }
        let s = Self::alloc(dev, dtype, bytes.len() / dtype.size_in_bytes())?;
        if !bytes.is_empty() {
            dev.bind()?;
            // SAFETY: the destination block holds `bytes.len()` bytes; a pageable source is
            // staged before the call returns, so `bytes` may be dropped afterwards.
            unsafe { result::memcpy_htod_async(s.buf.ptr, bytes, dev.cu_stream()) }
                .map_err(cuda_err("copy to device"))?;
        }
        Ok(s)
    }

    /// f32 values stored as `dtype` on the device.
    pub fn from_f32(dev: &CudaDevice, values: &[f32], dtype: DType) -> Result<Self> {
        let bytes: Vec<u8> = match dtype {
            DType::F32 => bytemuck::cast_slice(values).to_vec(),
            DType::BF16 => values.iter().flat_map(|&v| bf16::from_f32(v).to_le_bytes()).collect(),
            DType::F16 => values.iter().flat_map(|&v| f16::from_f32(v).to_le_bytes()).collect(),
        };
        Self::from_bytes(dev, dtype, &bytes)
    }

    /// Host copy of all elements, as little-endian bytes (synchronizes the stream).
    pub fn to_bytes(&self, dev: &CudaDevice) -> Result<Vec<u8>> {
        let mut out = vec![0u8; self.bytes()];
        if !out.is_empty() {
            dev.bind()?;
            // SAFETY: the source block holds `out.len()` bytes; the stream is synchronized
            // before `out` is read or dropped.
            unsafe { result::memcpy_dtoh_async(&mut out[..], self.buf.ptr, dev.cu_stream()) }
                .map_err(cuda_err("copy to host"))?;
        }
        dev.synchronize()?;
        Ok(out)
    }

    /// Host copy of all elements as f32.
    pub fn to_vec_f32(&self, dev: &CudaDevice) -> Result<Vec<f32>> {
        Ok(self.to_cpu_storage(dev)?.gather_f32(&Layout::contiguous(&[self.len])))
    }

    fn to_cpu_storage(&self, dev: &CudaDevice) -> Result<CpuStorage> {
        let b = self.to_bytes(dev)?;
        Ok(match self.dtype {
            DType::F32 => {
                CpuStorage::F32(b.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect())
            }
            DType::BF16 => CpuStorage::BF16(b.chunks_exact(2).map(|c| bf16::from_le_bytes([c[0], c[1]])).collect()),
            DType::F16 => CpuStorage::F16(b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]])).collect()),
        })
    }

    /// Checks that every element a strided access may touch lies inside this storage:
    /// `offset + sum((shape[i] - 1) * strides[i]) < len` (nothing to check when empty).
    pub(crate) fn check_span(
        &self,
        op: &'static str,
        what: &str,
        offset: usize,
        shape: &[usize],
        strides: &[usize],
    ) -> Result<()> {
        if shape.contains(&0) {
            return Ok(());
        }
        let last = offset + shape.iter().zip(strides).map(|(&d, &s)| (d - 1) * s).sum::<usize>();
        if last >= self.len {
            return Err(Error::op(
                op,
                format!(
                    "{what}: shape {shape:?} with strides {strides:?} at offset {offset} reaches element {last}, \
                     but the storage holds {} elements",
                    self.len
                ),
            ));
        }
        Ok(())
    }

    /// Checks dtype and that `n` contiguous elements from `offset` fit.
    pub(crate) fn check(&self, op: &'static str, what: &str, dtype: DType, offset: usize, n: usize) -> Result<()> {
        if self.dtype != dtype {
            return Err(Error::op(op, format!("{what} is {}, expected {dtype}", self.dtype)));
        }
        if offset + n > self.len {
            return Err(Error::op(
                op,
                format!("{what} needs elements [{offset}, {}) but holds {}", offset + n, self.len),
            ));
        }
        Ok(())
    }
}

/// A device array of plain values that are not tensor elements: token ids, argmax indices,
/// key masks, multi-tensor tables, scratch partial sums. Same allocator as tensor storage.
pub struct DeviceVec<T: DeviceRepr> {
    buf: DeviceBuffer,
    len: usize,
    _t: PhantomData<T>,
}

impl<T: DeviceRepr> DeviceVec<T> {
    /// Uninitialized space for `len` values (kernels overwrite it).
    pub fn alloc(dev: &CudaDevice, len: usize) -> Result<Self> {
        let (ptr, class) = dev.allocator().alloc(len * size_of::<T>())?;
        Ok(Self { buf: DeviceBuffer { ptr, class, alloc: dev.allocator().clone() }, len, _t: PhantomData })
    }

    /// Host -> device copy.
    pub fn from_slice(dev: &CudaDevice, values: &[T]) -> Result<Self> {
        let v = Self::alloc(dev, values.len())?;
        if !values.is_empty() {
            dev.bind()?;
            // SAFETY: the block holds values.len() * size_of::<T>() bytes; DeviceRepr types
            // are plain data; a pageable source is staged before the call returns.
            unsafe { result::memcpy_htod_async(v.buf.ptr, values, dev.cu_stream()) }
                .map_err(cuda_err("copy to device"))?;
        }
        Ok(v)
    }

    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub(crate) fn in_ptr(&self) -> *const T {
        self.buf.ptr as *const T
    }
    pub(crate) fn out_ptr(&mut self) -> *mut T {
        self.buf.ptr as *mut T
    }
}

impl<T: DeviceRepr + Default + Clone> DeviceVec<T> {
    /// Device -> host copy (synchronizes the stream).
    pub fn to_vec(&self, dev: &CudaDevice) -> Result<Vec<T>> {
        let mut out = vec![T::default(); self.len];
        if !out.is_empty() {
            dev.bind()?;
            // SAFETY: the block holds `len` values; the stream is synchronized before `out`
            // is read.
            unsafe { result::memcpy_dtoh_async(&mut out[..], self.buf.ptr, dev.cu_stream()) }
                .map_err(cuda_err("copy to host"))?;
        }
        dev.synchronize()?;
        Ok(out)
    }
}

/// Copies a tensor to `device` (CPU <-> CUDA, or between two GPUs through the host). The
/// result is contiguous and not tracked by the tape.
pub fn to_device(t: &Tensor, device_to: Device) -> Result<Tensor> {
    match (t.device(), device_to) {
        (Device::Cpu, Device::Cuda(i)) => {
            let dev = device(i)?;
            let s = CudaStorage::from_bytes(&dev, t.dtype(), &t.to_bytes()?)?;
            Ok(Tensor::from_storage(Storage::Cuda(s), t.shape()))
        }
        (Device::Cuda(i), Device::Cpu) => {
            let dev = device(i)?;
            let host = {
                let guard = t.read_storage();
                let Storage::Cuda(c) = &*guard else {
                    return Err(Error::op("to_device", "tensor says cuda but holds cpu storage"));
                };
                c.to_cpu_storage(&dev)?
            };
            let l = t.layout();
            let s = if l.is_contiguous() && l.offset == 0 && host.len() == l.numel() { host } else { host.gather(l) };
            Ok(Tensor::from_storage(Storage::Cpu(s), t.shape()))
        }
        (Device::Cuda(_), Device::Cuda(_)) => to_device(&to_device(t, Device::Cpu)?, device_to),
        (Device::Cpu, Device::Cpu) => Ok(t.clone()),
    }
}
