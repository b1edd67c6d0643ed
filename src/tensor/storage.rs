//! Storage: the bytes behind a tensor. CPU storage is owned f32/bf16/f16 vectors or a
//! read-only memory map of a safetensors file (zero-copy loading).

use super::{DType, Device, Layout};
use crate::error::Result;
use half::{bf16, f16};
use std::ops::{Deref, Range};
use std::sync::{Arc, RwLockReadGuard};

pub enum CpuStorage {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    /// Little-endian values inside a memory-mapped file; `bytes` is the tensor's range.
    Mapped {
        map: Arc<memmap2::Mmap>,
        bytes: Range<usize>,
        dtype: DType,
    },
}

pub enum Storage {
    Cpu(CpuStorage),
    Cuda(crate::backend::cuda::CudaStorage),
}

impl Storage {
    pub fn dtype(&self) -> DType {
        match self {
            Storage::Cpu(c) => c.dtype(),
            Storage::Cuda(c) => c.dtype(),
        }
    }
    pub fn device(&self) -> Device {
        match self {
            Storage::Cpu(_) => Device::Cpu,
            Storage::Cuda(c) => c.device(),
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Storage::Cpu(c) => c.len(),
            Storage::Cuda(c) => c.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl CpuStorage {
    pub fn from_f32(v: Vec<f32>, dtype: DType) -> Self {
        match dtype {
            DType::F32 => CpuStorage::F32(v),
            DType::BF16 => CpuStorage::BF16(v.into_iter().map(bf16::from_f32).collect()),
            DType::F16 => CpuStorage::F16(v.into_iter().map(f16::from_f32).collect()),
        }
    }

    pub fn dtype(&self) -> DType {
        match self {
            CpuStorage::F32(_) => DType::F32,
            CpuStorage::BF16(_) => DType::BF16,
            CpuStorage::F16(_) => DType::F16,
            CpuStorage::Mapped { dtype, .. } => *dtype,
        }
    }

    pub fn len(&self) -> usize {
        match self {
            CpuStorage::F32(v) => v.len(),
            CpuStorage::BF16(v) => v.len(),
            CpuStorage::F16(v) => v.len(),
            CpuStorage::Mapped { bytes, dtype, .. } => bytes.len() / dtype.size_in_bytes(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The f32 slice when the storage holds f32 values readable in place.
    pub fn as_f32(&self) -> Option<&[f32]> {
        match self {
            CpuStorage::F32(v) => Some(v),
            CpuStorage::Mapped { map, bytes, dtype: DType::F32 } => bytemuck::try_cast_slice(&map[bytes.clone()]).ok(),
            _ => None,
        }
    }

    /// Element `i` as f32.
    #[inline]
    pub fn get_f32(&self, i: usize) -> f32 {
        match self {
            CpuStorage::F32(v) => v[i],
            CpuStorage::BF16(v) => v[i].to_f32(),
            CpuStorage::F16(v) => v[i].to_f32(),
            CpuStorage::Mapped { map, bytes, dtype } => {
                let s = dtype.size_in_bytes();
                let b = &map[bytes.start + i * s..bytes.start + (i + 1) * s];
                match dtype {
                    DType::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                    DType::BF16 => bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                    DType::F16 => f16::from_le_bytes([b[0], b[1]]).to_f32(),
                }
            }
        }
    }

    /// Values at a layout's positions as a contiguous f32 vector.
    pub fn gather_f32(&self, layout: &Layout) -> Vec<f32> {
        match self.as_f32() {
            Some(s) if layout.is_contiguous() => s[layout.offset..layout.offset + layout.numel()].to_vec(),
            Some(s) => gather_rows_f32(s, layout),
            None => layout.offsets().map(|o| self.get_f32(o)).collect(),
        }
    }

    /// Values at a layout's positions, contiguous, same dtype (mapped storage is copied
    /// into an owned vector).
    pub fn gather(&self, layout: &Layout) -> CpuStorage {
        match self {
            CpuStorage::BF16(v) => CpuStorage::BF16(layout.offsets().map(|o| v[o]).collect()),
            CpuStorage::F16(v) => CpuStorage::F16(layout.offsets().map(|o| v[o]).collect()),
            _ => CpuStorage::from_f32(self.gather_f32(layout), self.dtype()),
        }
    }

    /// Little-endian bytes of elements [offset, offset + n).
    pub fn bytes(&self, offset: usize, n: usize) -> Vec<u8> {
        match self {
            CpuStorage::F32(v) => bytemuck::cast_slice(&v[offset..offset + n]).to_vec(),
            CpuStorage::BF16(v) => v[offset..offset + n].iter().flat_map(|x| x.to_le_bytes()).collect(),
            CpuStorage::F16(v) => v[offset..offset + n].iter().flat_map(|x| x.to_le_bytes()).collect(),
            CpuStorage::Mapped { map, bytes, dtype } => {
                let s = dtype.size_in_bytes();
                map[bytes.start + offset * s..bytes.start + (offset + n) * s].to_vec()
            }
        }
    }

    pub fn write_f32(&mut self, offset: usize, values: &[f32]) -> Result<()> {
        let n = values.len();
        match self {
            CpuStorage::F32(v) => v[offset..offset + n].copy_from_slice(values),
            CpuStorage::BF16(v) => {
                v[offset..offset + n].iter_mut().zip(values).for_each(|(d, &s)| *d = bf16::from_f32(s))
            }
            CpuStorage::F16(v) => {
                v[offset..offset + n].iter_mut().zip(values).for_each(|(d, &s)| *d = f16::from_f32(s))
            }
            CpuStorage::Mapped { .. } => {
                // A mapped tensor becomes owned on its first write.
                let mut owned = CpuStorage::from_f32((0..self.len()).map(|i| self.get_f32(i)).collect(), self.dtype());
                owned.write_f32(offset, values)?;
                *self = owned;
            }
        }
        Ok(())
    }
}

/// A contiguous f32 view of CPU data: borrowed from the storage when possible.
pub enum CpuF32<'a> {
    Borrowed { guard: RwLockReadGuard<'a, Storage>, range: Range<usize> },
    Owned(Vec<f32>),
}

impl<'a> CpuF32<'a> {
    pub(crate) fn borrowed(guard: RwLockReadGuard<'a, Storage>, offset: usize, n: usize) -> Self {
        let readable = matches!(&*guard, Storage::Cpu(c) if c.as_f32().is_some());
        if readable {
            CpuF32::Borrowed { guard, range: offset..offset + n }
        } else {
            // Unaligned mapped f32 data: copy.
            let v = match &*guard {
                Storage::Cpu(c) => (offset..offset + n).map(|i| c.get_f32(i)).collect(),
                Storage::Cuda(_) => unreachable!("cpu_f32 checks the device"),
            };
            CpuF32::Owned(v)
        }
    }
}

impl Deref for CpuF32<'_> {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        match self {
            CpuF32::Borrowed { guard, range } => match &**guard {
                Storage::Cpu(c) => &c.as_f32().expect("checked at construction")[range.clone()],
                Storage::Cuda(_) => unreachable!("cpu_f32 checks the device"),
            },
            CpuF32::Owned(v) => v,
        }
    }
}

impl std::fmt::Debug for CpuStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuStorage({}, {})", self.dtype(), self.len())
    }
}

/// Strided f32 gather one innermost row at a time: a slice copy when the last axis is
/// contiguous (permuted views such as [B, N, H, D] → [B, H, N, D]), a strided loop
/// otherwise. The per-element `StridedIter` walk costs several times more.
fn gather_rows_f32(s: &[f32], layout: &Layout) -> Vec<f32> {
    let numel = layout.numel();
    let mut out = Vec::with_capacity(numel);
    let Some((&n, outer)) = layout.shape.split_last() else {
        out.push(s[layout.offset]);
        return out;
    };
    if numel == 0 {
        return out;
    }
    let st = *layout.strides.last().expect("same rank as shape");
    let mut index = vec![0usize; outer.len()];
    let mut base = layout.offset;
    loop {
        if st == 1 {
            out.extend_from_slice(&s[base..base + n]);
        } else {
            out.extend((0..n).map(|j| s[base + j * st]));
        }
        // Odometer over the outer axes, last fastest.
        let mut d = outer.len();
        loop {
            if d == 0 {
                return out;
            }
            d -= 1;
            index[d] += 1;
            base += layout.strides[d];
            if index[d] < outer[d] {
                break;
            }
            base -= layout.strides[d] * outer[d];
            index[d] = 0;
        }
    }
}
