//! One CUDA device: its context, its one stream, the loaded kernels, the allocator and the
//! BLAS handles.
//!
//! Invariants:
//! - libcuda's presence is checked before any driver call (cudarc panics without it), and
//!   [`is_available`] is true only when libcuda loads and reports a device.
//! - One non-default stream per device (the legacy default stream cannot be captured into a
//!   CUDA graph); everything (kernels, copies, memsets, cuBLAS) is queued on it, which is what
//!   makes the allocator's stream-ordered reuse safe.
//! - cudarc's per-buffer event tracking is off: the allocator hands out raw blocks and the
//!   single stream orders all work.
//! - Every kernel of every family is looked up once at device creation ([`KERNEL_FAMILIES`]
//!   lists them); a missing name fails there, not at the first launch.
//! - Launches go through [`CudaDevice::launch`], which raises a kernel's dynamic shared memory
//!   limit when a launch asks for more than the default 48 KB.

use super::alloc::{AllocStats, Allocator};
use super::gemm::Blas;
use super::{
    attention, conv, elementwise, embedding, kernels, loss, norm, nvtx, optim, reduce, rng, rope, softmax, upsample,
};
use crate::error::{Error, Result};
use cudarc::driver::sys::{CUdevice_attribute, CUfunction_attribute, CUstream};
use cudarc::driver::{CudaContext, CudaFunction, CudaStream, DeviceRepr, LaunchConfig, PushKernelArg};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Every kernel, by family (= kernels/<family>.cu = backend/cuda/<family>.rs).
pub const KERNEL_FAMILIES: &[(&str, &[&str])] = &[
    ("attention", attention::KERNELS),
    ("conv", conv::KERNELS),
    ("elementwise", elementwise::KERNELS),
    ("embedding", embedding::KERNELS),
    ("loss", loss::KERNELS),
    ("norm", norm::KERNELS),
    ("optim", optim::KERNELS),
    ("reduce", reduce::KERNELS),
    ("rng", rng::KERNELS),
    ("rope", rope::KERNELS),
    ("softmax", softmax::KERNELS),
    ("upsample", upsample::KERNELS),
];

/// Shared memory a block may use without opting in.
const DEFAULT_SMEM_LIMIT: u32 = 48 * 1024;

/// Maps a cudarc error to [`Error::Cuda`], naming what was being done.
pub(crate) fn cuda_err<E: std::fmt::Debug>(what: &'static str) -> impl Fn(E) -> Error {
    move |e| Error::Cuda(format!("{what}: {e:?}"))
}

/// Whether libcuda loads and at least one device is visible.
pub fn is_available() -> bool {
    // SAFETY: only tries to dlopen libcuda; no driver call is made when it is absent.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return false;
    }
    matches!(CudaContext::device_count(), Ok(n) if n > 0)
}

/// The device with this ordinal, created (context, stream, kernels) on first use.
pub fn device(ordinal: usize) -> Result<Arc<CudaDevice>> {
    static DEVICES: OnceLock<Mutex<HashMap<usize, Arc<CudaDevice>>>> = OnceLock::new();
    let mut map = DEVICES.get_or_init(Default::default).lock().expect("device registry lock poisoned");
    if let Some(d) = map.get(&ordinal) {
        return Ok(d.clone());
    }
    let d = Arc::new(CudaDevice::new(ordinal)?);
    map.insert(ordinal, d.clone());
    Ok(d)
}

struct Kernel {
    func: CudaFunction,
    /// The dynamic shared memory limit set on the function so far.
    smem_limit: AtomicU32,
}

pub struct CudaDevice {
    ordinal: usize,
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    alloc: Arc<Allocator>,
    kernels: HashMap<&'static str, Kernel>,
    blas: Mutex<Option<Arc<Blas>>>,
    sm_count: u32,
    max_smem_optin: u32,
    name: String,
    compute_capability: (i32, i32),
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CudaDevice(cuda:{}, {}, sm_{}{})",
            self.ordinal, self.name, self.compute_capability.0, self.compute_capability.1
        )
    }
}

impl CudaDevice {
    fn new(ordinal: usize) -> Result<Self> {
        // SAFETY: only tries to dlopen libcuda.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(Error::Cuda("libcuda.so not found: this machine has no NVIDIA driver".into()));
        }
        let count = CudaContext::device_count().map_err(cuda_err("cuDeviceGetCount"))?;
        if ordinal >= count.max(0) as usize {
            return Err(Error::Cuda(format!("cuda:{ordinal} requested but {count} device(s) are visible")));
        }
        let ctx = CudaContext::new(ordinal).map_err(cuda_err("create context"))?;
        // SAFETY: single-stream use: the stream orders every access to every buffer, and no
        // CudaSlice of cudarc's is ever created (the allocator works with raw blocks).
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx.new_stream().map_err(cuda_err("create stream"))?;
        let attr = |a: CUdevice_attribute| ctx.attribute(a).map_err(cuda_err("cuDeviceGetAttribute"));
        let sm_count = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)? as u32;
        let max_smem_optin = attr(CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)? as u32;
        let compute_capability = ctx.compute_capability().map_err(cuda_err("compute capability"))?;
        let name = ctx.name().map_err(cuda_err("device name"))?;

        let mut loaded = HashMap::new();
        for &(family, names) in KERNEL_FAMILIES {
            let image =
                kernels::FATBINS.iter().find(|(stem, _)| *stem == family).map(|(_, b)| *b).ok_or_else(|| {
                    Error::Cuda(format!("no embedded fatbin for kernel family '{family}' (kernels/{family}.cu)"))
                })?;
            let module = ctx.load_module(Ptx::from_binary(image.to_vec())).map_err(|e| {
                Error::Cuda(format!(
                    "loading kernels/{family}.cu on {name} (sm_{}{}): {e:?}; the binary carries cubins for the \
                     architectures in SENSEFLOW_CUDA_ARCHS at build time (default sm_90a,sm_80)",
                    compute_capability.0, compute_capability.1
                ))
            })?;
            for &kname in names {
                let func = module
                    .load_function(kname)
                    .map_err(|e| Error::Cuda(format!("kernel '{kname}' not found in kernels/{family}.cu: {e:?}")))?;
                loaded.insert(kname, Kernel { func, smem_limit: AtomicU32::new(DEFAULT_SMEM_LIMIT) });
            }
        }
        Ok(Self {
            ordinal,
            alloc: Arc::new(Allocator::new(ctx.clone())),
            ctx,
            stream,
            kernels: loaded,
            blas: Mutex::new(None),
            sm_count,
            max_smem_optin,
            name,
            compute_capability,
        })
    }

    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn compute_capability(&self) -> (i32, i32) {
        self.compute_capability
    }
    pub fn sm_count(&self) -> u32 {
        self.sm_count
    }
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }
    pub(crate) fn cu_stream(&self) -> CUstream {
        self.stream.cu_stream()
    }
    pub(crate) fn allocator(&self) -> &Arc<Allocator> {
        &self.alloc
    }

    /// Allocator counters (bytes in use, peak, cuMemAlloc calls).
    pub fn alloc_stats(&self) -> AllocStats {
        self.alloc.stats()
    }

    /// Returns every cached block to the driver (synchronizes).
    pub fn empty_cache(&self) -> Result<()> {
        self.alloc.empty_cache()
    }

    /// Binds the context to the calling thread (needed before raw driver calls).
    pub(crate) fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(cuda_err("bind context"))
    }

    /// Waits for all queued work and reports any asynchronous error.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(cuda_err("synchronize"))?;
        self.ctx.check_err().map_err(cuda_err("deferred error"))
    }

    /// The cuBLAS / cuBLASLt handles, created on first use (so kernels work without libcublas).
    pub(crate) fn blas(&self) -> Result<Arc<Blas>> {
        let mut b = self.blas.lock().expect("blas lock poisoned");
        if let Some(b) = &*b {
            return Ok(b.clone());
        }
        self.bind()?;
        let blas = Arc::new(Blas::new(self)?);
        *b = Some(blas.clone());
        Ok(blas)
    }

    /// Blocks for a grid-stride kernel over `items` work items, `per_block` per block per
    /// step: enough to fill the GPU, never more than the work needs.
    pub(crate) fn grid_for(&self, items: usize, per_block: usize) -> u32 {
        let needed = items.div_ceil(per_block.max(1));
        needed.clamp(1, self.sm_count as usize * 32) as u32
    }

    /// Launches kernel `name` with `params` as its only argument.
    ///
    /// # Safety
    ///
    /// `params` must be the parameter struct kernel `name` takes (from params.h), and every
    /// device pointer in it must point into live device memory large enough for every element
    /// the kernel touches with that grid (callers check this against their storages). Memory
    /// may be released right after the call: blocks are only reused by later work on the
    /// same stream.
    pub(crate) unsafe fn launch<P: DeviceRepr>(
        &self,
        name: &'static str,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        params: &P,
    ) -> Result<()> {
        let k =
            self.kernels.get(name).ok_or_else(|| Error::Cuda(format!("kernel '{name}' is not in KERNEL_FAMILIES")))?;
        if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
            return Ok(()); // empty work
        }
        if smem > k.smem_limit.load(Ordering::Relaxed) {
            if smem > self.max_smem_optin {
                return Err(Error::Cuda(format!(
                    "{name} needs {smem} bytes of shared memory per block; {} allows {}",
                    self.name, self.max_smem_optin
                )));
            }
            k.func
                .set_attribute(CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES, smem as i32)
                .map_err(cuda_err("cuFuncSetAttribute(max dynamic shared memory)"))?;
            k.smem_limit.store(smem, Ordering::Relaxed);
        }
        let _range = nvtx::range(name);
        let cfg = LaunchConfig { grid_dim: grid, block_dim: (block, 1, 1), shared_mem_bytes: smem };
        let mut builder = self.stream.launch_builder(&k.func);
        builder.arg(params);
        // SAFETY: the caller guarantees `params` matches the kernel and its pointers cover
        // every access (this function's contract); `params` itself is copied by the driver
        // during the call.
        unsafe { builder.launch(cfg) }.map_err(|e| Error::Cuda(format!("launch {name}: {e:?}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every launcher's kernel name is a symbol of its family's fatbin (build.rs compiles
    /// with --no-compress so the ELF string tables are readable), and every fatbin has a
    /// family: a renamed or missing kernel fails here, without a GPU.
    #[test]
    fn every_kernel_name_is_in_its_fatbin() {
        for &(family, names) in KERNEL_FAMILIES {
            let (_, image) = kernels::FATBINS.iter().find(|(stem, _)| *stem == family).expect("fatbin for family");
            for name in names {
                let mut needle = name.as_bytes().to_vec();
                needle.push(0);
                assert!(image.windows(needle.len()).any(|w| w == needle), "{name} not in kernels/{family}.cu");
            }
        }
        for (stem, _) in kernels::FATBINS {
            assert!(KERNEL_FAMILIES.iter().any(|(f, _)| f == stem), "kernels/{stem}.cu has no launcher family");
        }
    }

    /// Without a driver the backend reports itself unavailable and errors instead of panicking.
    #[test]
    fn no_driver_is_an_error_not_a_panic() {
        if is_available() {
            return;
        }
        assert!(device(0).is_err());
        let t = crate::tensor::Tensor::zeros(&[3]);
        assert!(t.to_device(crate::tensor::Device::Cuda(0)).is_err());
    }
}
