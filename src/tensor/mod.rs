//! Tensor: shape, dtype, device, and a reference-counted storage with a strided layout.
//!
//! Invariants:
//! - `Layout` strides are in elements; a view (permute, transpose, narrow, broadcast)
//!   shares its parent's storage and only changes the layout.
//! - Storage is behind `Arc<RwLock<_>>` so optimizers can update parameters in place;
//!   ops never write into their inputs.
//! - Every tensor has a unique `TensorId`; views get a new id (the tape links them).
//! - `track` marks tensors whose gradient the tape follows (parameters and everything
//!   computed from them while recording).

mod layout;
mod storage;

pub use layout::Layout;
pub use storage::{CpuF32, CpuStorage, Storage};

use crate::error::{Error, Result};
use half::{bf16, f16};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    F16,
}

impl DType {
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
        }
    }
    /// Unit roundoff of the storage format: the error budget of one rounding.
    pub fn epsilon(self) -> f32 {
        match self {
            DType::F32 => f32::EPSILON / 2.0,
            DType::BF16 => 2f32.powi(-8),
            DType::F16 => 2f32.powi(-11),
        }
    }
}

impl std::fmt::Display for DType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
        })
    }
}

impl std::str::FromStr for DType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" | "float32" => Ok(DType::F32),
            "bf16" | "bfloat16" => Ok(DType::BF16),
            "f16" | "float16" => Ok(DType::F16),
            _ => Err(Error::Msg(format!("unknown dtype '{s}' (expected f32, bf16 or f16)"))),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Device {
    Cpu,
    Cuda(usize),
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").and_then(|i| i.parse().ok()) {
                Some(i) => Ok(Device::Cuda(i)),
                None => Err(Error::Msg(format!("unknown device '{s}' (expected cpu, cuda or cuda:N)"))),
            },
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TensorId(u64);

impl TensorId {
    fn fresh() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(1);
        TensorId(NEXT.fetch_add(1, Ordering::Relaxed))
    }
}

struct Inner {
    id: TensorId,
    storage: Arc<RwLock<Storage>>,
    layout: Layout,
    dtype: DType,
    device: Device,
    track: bool,
}

#[derive(Clone)]
pub struct Tensor(Arc<Inner>);

impl std::fmt::Debug for Tensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Tensor[{:?}, {}, {}{}]",
            self.shape(),
            self.dtype(),
            self.device(),
            if self.tracks_grad() { ", grad" } else { "" }
        )
    }
}

impl Tensor {
    // ---- construction -------------------------------------------------------------

    pub(crate) fn from_parts(
        storage: Arc<RwLock<Storage>>,
        layout: Layout,
        dtype: DType,
        device: Device,
        track: bool,
    ) -> Self {
        Tensor(Arc::new(Inner { id: TensorId::fresh(), storage, layout, dtype, device, track }))
    }

    pub fn from_storage(storage: Storage, shape: &[usize]) -> Self {
        let dtype = storage.dtype();
        let device = storage.device();
        debug_assert_eq!(storage.len(), shape.iter().product::<usize>());
        Self::from_parts(Arc::new(RwLock::new(storage)), Layout::contiguous(shape), dtype, device, false)
    }

    /// f32 data on the CPU.
    pub fn from_vec(data: Vec<f32>, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if data.len() != n {
            return Err(Error::Op {
                op: "from_vec",
                msg: format!("{} values do not fill shape {:?} ({} elements)", data.len(), shape, n),
            });
        }
        Ok(Self::from_storage(Storage::Cpu(CpuStorage::F32(data)), shape))
    }

    /// f32 values stored as `dtype` (rounded to nearest even).
    pub fn from_f32(data: Vec<f32>, shape: &[usize], dtype: DType) -> Result<Self> {
        let n: usize = shape.iter().product();
        if data.len() != n {
            return Err(Error::Op {
                op: "from_f32",
                msg: format!("{} values do not fill shape {:?} ({} elements)", data.len(), shape, n),
            });
        }
        Ok(Self::from_storage(Storage::Cpu(CpuStorage::from_f32(data, dtype)), shape))
    }

    pub fn from_slice(data: &[f32], shape: &[usize]) -> Result<Self> {
        Self::from_vec(data.to_vec(), shape)
    }

    pub fn scalar(v: f32) -> Self {
        Self::from_storage(Storage::Cpu(CpuStorage::F32(vec![v])), &[])
    }

    pub fn full(v: f32, shape: &[usize]) -> Self {
        Self::from_storage(Storage::Cpu(CpuStorage::F32(vec![v; shape.iter().product()])), shape)
    }

    pub fn zeros(shape: &[usize]) -> Self {
        Self::full(0.0, shape)
    }

    pub fn ones(shape: &[usize]) -> Self {
        Self::full(1.0, shape)
    }

    /// Standard normal samples from the counter-based generator at (seed, offset).
    pub fn randn(shape: &[usize], rng: &mut crate::rng::Philox) -> Self {
        let n = shape.iter().product();
        Self::from_storage(Storage::Cpu(CpuStorage::F32(rng.normal_vec(n))), shape)
    }

    /// Uniform samples in (lo, hi).
    pub fn rand(shape: &[usize], lo: f32, hi: f32, rng: &mut crate::rng::Philox) -> Self {
        let n = shape.iter().product();
        let v = rng.uniform_vec(n).into_iter().map(|u| lo + (hi - lo) * u).collect();
        Self::from_storage(Storage::Cpu(CpuStorage::F32(v)), shape)
    }

    // ---- accessors ----------------------------------------------------------------

    pub fn id(&self) -> TensorId {
        self.0.id
    }
    pub fn shape(&self) -> &[usize] {
        &self.0.layout.shape
    }
    pub fn dims(&self) -> usize {
        self.0.layout.shape.len()
    }
    pub fn dim(&self, d: isize) -> Result<usize> {
        Ok(self.shape()[self.axis(d)?])
    }
    pub fn numel(&self) -> usize {
        self.0.layout.numel()
    }
    pub fn layout(&self) -> &Layout {
        &self.0.layout
    }
    pub fn dtype(&self) -> DType {
        self.0.dtype
    }
    pub fn device(&self) -> Device {
        self.0.device
    }
    pub fn is_contiguous(&self) -> bool {
        self.0.layout.is_contiguous()
    }
    /// Whether the tape follows this tensor's gradient.
    pub fn tracks_grad(&self) -> bool {
        self.0.track
    }
    /// How many tensors share this storage (diagnostics: saved-activation release).
    pub fn storage_ref_count(&self) -> usize {
        Arc::strong_count(&self.0.storage)
    }
    pub fn same_storage(&self, other: &Tensor) -> bool {
        Arc::ptr_eq(&self.0.storage, &other.0.storage)
    }

    /// Normalizes a possibly negative axis.
    pub fn axis(&self, d: isize) -> Result<usize> {
        let n = self.dims() as isize;
        let a = if d < 0 { d + n } else { d };
        if a < 0 || a >= n.max(1) && !(n == 0 && a == 0) {
            return Err(Error::op("axis", format!("axis {d} out of range for shape {:?}", self.shape())));
        }
        Ok(a as usize)
    }

    // ---- grad tracking --------------------------------------------------------------

    /// A leaf whose gradient the tape computes (a parameter or an input under test).
    pub fn var(&self) -> Tensor {
        Self::from_parts(self.0.storage.clone(), self.0.layout.clone(), self.dtype(), self.device(), true)
    }

    /// Same data, cut from the tape: gradients stop here (stop-grad).
    pub fn detach(&self) -> Tensor {
        Self::from_parts(self.0.storage.clone(), self.0.layout.clone(), self.dtype(), self.device(), false)
    }

    /// A new tensor sharing storage with `self` under another layout; used by view ops.
    pub(crate) fn view_with(&self, layout: Layout, track: bool) -> Tensor {
        Self::from_parts(self.0.storage.clone(), layout, self.dtype(), self.device(), track)
    }

    pub(crate) fn with_track(self, track: bool) -> Tensor {
        if self.0.track == track {
            return self;
        }
        Self::from_parts(self.0.storage.clone(), self.0.layout.clone(), self.dtype(), self.device(), track)
    }

    // ---- data access ------------------------------------------------------------------

    /// Contiguous f32 view of a CPU tensor: borrows when the storage already is
    /// contiguous f32, otherwise converts into a fresh buffer.
    pub fn cpu_f32(&self) -> Result<CpuF32<'_>> {
        if self.device() != Device::Cpu {
            return Err(Error::op("cpu_f32", format!("tensor is on {}; copy it to the cpu first", self.device())));
        }
        let guard = self.0.storage.read().expect("tensor storage lock poisoned");
        let l = &self.0.layout;
        if l.is_contiguous() && guard.dtype() == DType::F32 {
            return Ok(CpuF32::borrowed(guard, l.offset, l.numel()));
        }
        let out = match &*guard {
            Storage::Cpu(c) => c.gather_f32(l),
            Storage::Cuda(_) => unreachable!("device checked above"),
        };
        Ok(CpuF32::Owned(out))
    }

    /// A copy of the values as contiguous f32.
    pub fn to_vec_f32(&self) -> Result<Vec<f32>> {
        Ok(self.cpu_f32()?.to_vec())
    }

    pub fn to_scalar(&self) -> Result<f32> {
        if self.numel() != 1 {
            return Err(Error::op("to_scalar", format!("tensor of shape {:?} is not a scalar", self.shape())));
        }
        Ok(self.cpu_f32()?[0])
    }

    /// Raw little-endian bytes of the values in `self.dtype()`, contiguous.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let c = self.contiguous_untracked()?;
        let guard = c.0.storage.read().expect("tensor storage lock poisoned");
        match &*guard {
            Storage::Cpu(s) => Ok(s.bytes(c.0.layout.offset, c.numel())),
            Storage::Cuda(_) => Err(Error::op("to_bytes", "copy the tensor to the cpu first")),
        }
    }

    /// Materializes a contiguous copy without recording on the tape.
    pub(crate) fn contiguous_untracked(&self) -> Result<Tensor> {
        if self.is_contiguous() {
            return Ok(self.clone());
        }
        let guard = self.0.storage.read().expect("tensor storage lock poisoned");
        let s = match &*guard {
            Storage::Cpu(c) => Storage::Cpu(c.gather(&self.0.layout)),
            Storage::Cuda(_) => return Err(Error::NoCuda),
        };
        drop(guard);
        Ok(Self::from_storage(s, self.shape()).with_track(self.tracks_grad()))
    }

    /// Converts the stored dtype (not recorded on the tape: used for loading, saving
    /// and mixed-precision casts of parameters).
    pub fn to_dtype(&self, dtype: DType) -> Result<Tensor> {
        if dtype == self.dtype() {
            return Ok(self.clone());
        }
        let v = self.to_vec_f32()?;
        Tensor::from_f32(v, self.shape(), dtype)
    }

    pub fn to_device(&self, device: Device) -> Result<Tensor> {
        if device == self.device() {
            return Ok(self.clone());
        }
        crate::backend::cuda::to_device(self, device)
    }

    /// Overwrites this tensor's values in place (optimizer updates, IDA blends).
    /// The tensor must be contiguous; `values` is rounded to the tensor's dtype.
    pub fn assign_f32(&self, values: &[f32]) -> Result<()> {
        if !self.is_contiguous() || values.len() != self.numel() {
            return Err(Error::op(
                "assign",
                format!(
                    "{} values into tensor {:?} (contiguous: {})",
                    values.len(),
                    self.shape(),
                    self.is_contiguous()
                ),
            ));
        }
        let mut guard = self.0.storage.write().expect("tensor storage lock poisoned");
        match &mut *guard {
            Storage::Cpu(c) => c.write_f32(self.0.layout.offset, values),
            Storage::Cuda(_) => Err(Error::NoCuda),
        }
    }

    /// Raw storage access for backends and I/O.
    pub fn read_storage(&self) -> std::sync::RwLockReadGuard<'_, Storage> {
        self.0.storage.read().expect("tensor storage lock poisoned")
    }
}

pub fn bf16_round(x: f32) -> f32 {
    bf16::from_f32(x).to_f32()
}
pub fn f16_round(x: f32) -> f32 {
    f16::from_f32(x).to_f32()
}
