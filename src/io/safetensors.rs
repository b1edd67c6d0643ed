//! safetensors files: memory-mapped loading and atomic saving.
//!
//! Format: an 8-byte little-endian header length `n`, `n` bytes of JSON (name →
//! `{dtype, shape, data_offsets}` plus an optional `__metadata__` string map), then the
//! data section; offsets are relative to its start, tensors are contiguous, row-major,
//! little-endian, and together cover the data section exactly.
//!
//! Invariants:
//! - `load` maps the file and validates the whole header (through the `safetensors`
//!   crate) before returning; it never reads tensor data. A `Tensor` from `get` is a
//!   zero-copy view (`CpuStorage::Mapped`) sharing the map, in the file's dtype. f32 data
//!   at a 4-aligned address is read in place; otherwise readers copy (see `CpuF32`).
//! - The engine's tensor dtypes are F32, BF16 and F16; other dtypes can be listed but not
//!   loaded as tensors, except I64 through `get_i64` (token ids).
//! - `save` writes each tensor in its own dtype, f32 tensors first, so every f32 tensor
//!   starts 4-aligned in the file (the header is padded to a multiple of 8 bytes, and
//!   maps are page-aligned): a saved f32 checkpoint loads without copies.

use super::atomic::atomic_write;
use crate::error::{Error, Result};
use crate::tensor::{CpuStorage, DType, Storage, Tensor};
use ::safetensors::tensor::{Metadata, TensorInfo};
pub use ::safetensors::Dtype;
use ::safetensors::{SafeTensorError, SafeTensors};
use memmap2::Mmap;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The 8-byte header length that starts every file.
const N_LEN: usize = 8;

/// Header entry of one tensor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TensorMeta {
    /// The dtype on disk (may be one the engine cannot load as a tensor).
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    /// Absolute byte range within the file.
    pub bytes: Range<usize>,
}

impl TensorMeta {
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
    /// The engine dtype this tensor loads as, if it is a floating type the engine stores.
    pub fn engine_dtype(&self) -> Option<DType> {
        engine_dtype(self.dtype)
    }
}

/// A validated, memory-mapped safetensors file.
pub struct SafeTensorsFile {
    path: PathBuf,
    map: Arc<Mmap>,
    tensors: BTreeMap<String, TensorMeta>,
    metadata: HashMap<String, String>,
}

/// Maps and validates `path`. Tensor data is not read.
pub fn load(path: impl AsRef<Path>) -> Result<SafeTensorsFile> {
    SafeTensorsFile::open(path)
}

impl SafeTensorsFile {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        if len < N_LEN as u64 {
            // Also keeps empty files away from mmap, which rejects zero-length maps.
            return Err(Error::format(
                path,
                format!("truncated file: {len} bytes, shorter than the 8-byte header length"),
            ));
        }
        // SAFETY: the map is read-only and shared; the engine never writes a file it has
        // mapped in place (`save` renames a new file over the old one, which leaves existing
        // maps on the old inode). Another process truncating the file while it is mapped
        // would fault on access; that is outside the engine's control, as with any mmap.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
        let (n, meta) = SafeTensors::read_metadata(&map).map_err(|e| header_error(path, &map, e))?;
        let start = N_LEN + n;
        let tensors = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| {
                let (s, e) = info.data_offsets;
                let m = TensorMeta { dtype: info.dtype, shape: info.shape.clone(), bytes: start + s..start + e };
                (name, m)
            })
            .collect();
        let metadata = meta.metadata().clone().unwrap_or_default();
        Ok(SafeTensorsFile { path: path.to_path_buf(), map: Arc::new(map), tensors, metadata })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor names, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(|k| k.as_str())
    }

    /// (name, header entry) for every tensor, sorted by name.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &TensorMeta)> {
        self.tensors.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    pub fn meta(&self, name: &str) -> Option<&TensorMeta> {
        self.tensors.get(name)
    }

    /// The `__metadata__` string map (empty when the file has none).
    pub fn metadata(&self) -> &HashMap<String, String> {
        &self.metadata
    }

    fn entry(&self, name: &str) -> Result<&TensorMeta> {
        self.tensors.get(name).ok_or_else(|| Error::MissingKey { path: self.path.clone(), key: name.to_string() })
    }

    /// The tensor `name` as a zero-copy view of the map, in its file dtype (f32, bf16, f16).
    pub fn get(&self, name: &str) -> Result<Tensor> {
        let m = self.entry(name)?;
        let dtype = m.engine_dtype().ok_or_else(|| Error::KeyDType {
            path: self.path.clone(),
            key: name.to_string(),
            got: m.dtype.to_string(),
            expected: "F32, BF16 or F16",
        })?;
        let storage = CpuStorage::Mapped { map: self.map.clone(), bytes: m.bytes.clone(), dtype };
        Ok(Tensor::from_storage(Storage::Cpu(storage), &m.shape))
    }

    /// Like [`get`](Self::get), failing with [`Error::KeyShape`] unless the shape is `expected`.
    pub fn get_checked(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let m = self.entry(name)?;
        if m.shape != expected {
            return Err(Error::KeyShape {
                path: self.path.clone(),
                key: name.to_string(),
                got: m.shape.clone(),
                expected: expected.to_vec(),
            });
        }
        self.get(name)
    }

    /// The tensor converted to `dtype` (zero-copy when it already has that dtype).
    pub fn get_as(&self, name: &str, dtype: DType) -> Result<Tensor> {
        self.get(name)?.to_dtype(dtype)
    }

    /// An I64 tensor (token ids) as a flat vector in row-major order.
    pub fn get_i64(&self, name: &str) -> Result<Vec<i64>> {
        let m = self.entry(name)?;
        if m.dtype != Dtype::I64 {
            return Err(Error::KeyDType {
                path: self.path.clone(),
                key: name.to_string(),
                got: m.dtype.to_string(),
                expected: "I64",
            });
        }
        let b = &self.map[m.bytes.clone()];
        Ok(b.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("chunks of 8"))).collect())
    }

    /// Fails unless the file holds exactly the `expected` (name, shape) pairs; the error
    /// lists every missing, unexpected and mismatched key (see [`check_keys`]).
    pub fn check_keys(&self, expected: &[(String, Vec<usize>)]) -> Result<()> {
        check_keys(&self.path, self.tensors().map(|(k, m)| (k, m.shape.as_slice())), expected)
    }
}

impl std::fmt::Debug for SafeTensorsFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SafeTensorsFile({}, {} tensors)", self.path.display(), self.tensors.len())
    }
}

fn engine_dtype(d: Dtype) -> Option<DType> {
    match d {
        Dtype::F32 => Some(DType::F32),
        Dtype::BF16 => Some(DType::BF16),
        Dtype::F16 => Some(DType::F16),
        _ => None,
    }
}

fn file_dtype(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::BF16 => Dtype::BF16,
        DType::F16 => Dtype::F16,
    }
}

/// How many names of each kind a key report lists before summarizing.
const REPORT_LIMIT: usize = 20;

/// Compares the (name, shape) pairs a checkpoint `have`s with those `expected`, failing with
/// one line that lists all missing keys, unexpected keys and shape mismatches (the first 20
/// of each kind, with counts). `path` names the file or folder in the message.
pub fn check_keys<'a>(
    path: &Path,
    have: impl Iterator<Item = (&'a str, &'a [usize])>,
    expected: &[(String, Vec<usize>)],
) -> Result<()> {
    let have: BTreeMap<&str, &[usize]> = have.collect();
    let want: BTreeMap<&str, &[usize]> = expected.iter().map(|(k, s)| (k.as_str(), s.as_slice())).collect();
    let missing: Vec<String> = want.keys().filter(|k| !have.contains_key(*k)).map(|k| k.to_string()).collect();
    let unexpected: Vec<String> = have.keys().filter(|k| !want.contains_key(*k)).map(|k| k.to_string()).collect();
    let mismatched: Vec<String> = want
        .iter()
        .filter_map(|(k, w)| match have.get(k) {
            Some(h) if h != w => Some(format!("{k} {h:?} (expected {w:?})")),
            _ => None,
        })
        .collect();
    if missing.is_empty() && unexpected.is_empty() && mismatched.is_empty() {
        return Ok(());
    }
    let list = |what: &str, v: &[String]| -> Option<String> {
        if v.is_empty() {
            return None;
        }
        let mut s = format!("{} {what}: {}", v.len(), v[..v.len().min(REPORT_LIMIT)].join(", "));
        if v.len() > REPORT_LIMIT {
            s.push_str(&format!(", ... and {} more", v.len() - REPORT_LIMIT));
        }
        Some(s)
    };
    let parts: Vec<String> =
        [list("missing", &missing), list("unexpected", &unexpected), list("with wrong shape", &mismatched)]
            .into_iter()
            .flatten()
            .collect();
    Err(Error::format(path, format!("weights do not match the model: {}", parts.join("; "))))
}

/// Writes `tensors` (CPU, any layout) to `path` atomically, each in its own dtype, with
/// an optional `__metadata__` string map.
pub fn save(
    path: impl AsRef<Path>,
    tensors: &[(String, &Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<()> {
    let path = path.as_ref();
    let mut seen = HashSet::new();
    for (name, _) in tensors {
        if !seen.insert(name.as_str()) {
            return Err(Error::format(path, format!("cannot save: tensor name '{name}' appears twice")));
        }
    }
    // f32 first (4-aligned offsets for in-place reads), then by name for a stable layout.
    let mut order: Vec<&(String, &Tensor)> = tensors.iter().collect();
    order.sort_by(|a, b| b.1.dtype().size_in_bytes().cmp(&a.1.dtype().size_in_bytes()).then_with(|| a.0.cmp(&b.0)));
    let mut infos = Vec::with_capacity(order.len());
    let mut offset = 0;
    for (name, t) in &order {
        let size = t.numel() * t.dtype().size_in_bytes();
        let info = TensorInfo {
            dtype: file_dtype(t.dtype()),
            shape: t.shape().to_vec(),
            data_offsets: (offset, offset + size),
        };
        infos.push((name.clone(), info));
        offset += size;
    }
    let meta = Metadata::new(metadata, infos).map_err(|e| Error::format(path, format!("cannot save: {e}")))?;
    let mut header =
        serde_json::to_vec(&meta).map_err(|e| Error::format(path, format!("cannot save: header JSON: {e}")))?;
    // Pad with spaces (valid JSON whitespace) so the data section starts 8-aligned.
    header.resize((N_LEN + header.len()).next_multiple_of(8) - N_LEN, b' ');
    atomic_write(path, |w| {
        let io = |e| Error::io(path, e);
        w.write_all(&(header.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&header).map_err(io)?;
        for (name, t) in &order {
            let bytes = t.to_bytes().map_err(|e| Error::format(path, format!("cannot save tensor '{name}': {e}")))?;
            w.write_all(&bytes).map_err(io)?;
        }
        Ok(())
    })
}

/// Turns a header validation failure into a message naming what is wrong and, where the
/// crate's error does not say, which tensor.
fn header_error(path: &Path, file: &[u8], err: SafeTensorError) -> Error {
    let len = file.len();
    let n = u64::from_le_bytes(file[..N_LEN].try_into().expect("length checked before mapping"));
    let msg = match err {
        SafeTensorError::HeaderTooSmall => {
            format!("truncated file: {len} bytes, shorter than the 8-byte header length")
        }
        SafeTensorError::HeaderTooLarge | SafeTensorError::InvalidHeaderLength if n.saturating_add(8) > len as u64 => {
            format!("header length {n} bytes runs past the end of the file ({len} bytes): truncated, or not a safetensors file")
        }
        SafeTensorError::HeaderTooLarge => {
            format!("header length {n} bytes is over the 100 MB limit: corrupt header length")
        }
        SafeTensorError::InvalidHeader(e) => format!("corrupt header: not UTF-8 ({e})"),
        SafeTensorError::InvalidHeaderDeserialization(e) | SafeTensorError::JsonError(e) => {
            format!("corrupt header JSON: {e}")
        }
        other => {
            let data_len = len - N_LEN - n as usize;
            find_bad_tensor(&file[N_LEN..N_LEN + n as usize], data_len)
                .unwrap_or_else(|| format!("invalid header: {other}"))
        }
    };
    Error::format(path, msg)
}

/// Finds the first tensor (in data order) whose offsets are inconsistent: out of order,
/// not matching its shape and dtype, or past the end of the data section.
fn find_bad_tensor(header: &[u8], data_len: usize) -> Option<String> {
    let v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header).ok()?;
    let mut entries: Vec<(String, TensorInfo)> = v
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| Some((k, serde_json::from_value::<TensorInfo>(v).ok()?)))
        .collect::<Option<_>>()?;
    entries.sort_by_key(|(_, i)| i.data_offsets);
    let mut expected_start = 0;
    for (k, i) in &entries {
        let (s, e) = i.data_offsets;
        let what = format!("tensor '{k}' ({} {:?}) has data offsets [{s}, {e})", i.dtype, i.shape);
        if s != expected_start || e < s {
            return Some(format!("{what}, expected to start at {expected_start}: offsets overlap or leave a gap"));
        }
        let need = i.shape.iter().try_fold(i.dtype.bitsize(), |a, &d| a.checked_mul(d)).map(|b| b / 8);
        if need != Some(e - s) {
            let need = need.map_or("an overflowing number of".to_string(), |b| b.to_string());
            return Some(format!("{what} = {} bytes, but its shape and dtype need {need} bytes", e - s));
        }
        if e > data_len {
            return Some(format!(
                "{what} past the end of the data section ({data_len} bytes): file truncated by {} bytes",
                entries.last().map_or(e, |(_, l)| l.data_offsets.1) - data_len
            ));
        }
        expected_start = e;
    }
    (expected_start < data_len).then(|| {
        format!("{} bytes after the last tensor's data: not a valid safetensors file", data_len - expected_start)
    })
}
