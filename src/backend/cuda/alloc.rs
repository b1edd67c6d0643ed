//! Caching device allocator: size-class free lists, so a training loop in steady state
//! allocates nothing from the driver.
//!
//! Invariants:
//! - A request is rounded up to its size class: at least 512 bytes, then a quarter-power-of-2
//!   step (1, 1.25, 1.5, 1.75 x 2^k), so at most 25% is wasted and repeated shapes reuse
//!   blocks. A freed block goes back to its class's free list, never to the driver.
//! - Reuse is stream-ordered: every kernel and copy runs on the device's one stream, so a block
//!   released while kernels that use it are still queued is only handed to work queued after
//!   them. (Several streams would need an event per released block.)
//! - When cuMemAlloc fails, the cache is returned to the driver and the allocation retried once.
//! - Zero-byte requests get a null pointer and touch neither the driver nor the stats.

use crate::error::{Error, Result};
use cudarc::driver::{result, sys::CUdeviceptr, CudaContext};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Counters since the allocator was created (bytes are size-class bytes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllocStats {
    /// Bytes in blocks handed out and not yet released.
    pub bytes_in_use: usize,
    /// Highest `bytes_in_use` seen.
    pub peak_bytes_in_use: usize,
    /// Bytes held from the driver: in use plus cached.
    pub bytes_reserved: usize,
    /// cuMemAlloc calls: flat in steady state.
    pub driver_allocs: u64,
    /// Requests served (from the cache or the driver).
    pub requests: u64,
}

pub(crate) struct Allocator {
    ctx: Arc<CudaContext>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    free: HashMap<usize, Vec<CUdeviceptr>>,
    stats: AllocStats,
}

/// The size class of a request: see the module doc.
pub(crate) fn size_class(bytes: usize) -> usize {
    const MIN: usize = 512;
    if bytes <= MIN {
        return MIN;
    }
    let pow = bytes.next_power_of_two();
    let step = (pow / 8).max(1); // quarter steps between pow / 2 and pow
    bytes.div_ceil(step) * step
}

impl Allocator {
    pub(crate) fn new(ctx: Arc<CudaContext>) -> Self {
        Self { ctx, state: Mutex::new(State::default()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().expect("allocator lock poisoned")
    }

    pub(crate) fn stats(&self) -> AllocStats {
        self.lock().stats
    }

    /// A block of at least `bytes` bytes; returns (pointer, class bytes).
    pub(crate) fn alloc(&self, bytes: usize) -> Result<(CUdeviceptr, usize)> {
        if bytes == 0 {
            return Ok((0, 0));
        }
        let class = size_class(bytes);
        let mut st = self.lock();
        st.stats.requests += 1;
        let cached = st.free.get_mut(&class).and_then(Vec::pop);
        let ptr = match cached {
            Some(p) => p,
            None => {
                let p = match self.driver_alloc(class) {
                    Ok(p) => p,
                    Err(_) => {
                        self.release_cache(&mut st)?;
                        self.driver_alloc(class).map_err(|e| {
                            Error::Cuda(format!(
                                "out of device memory allocating {class} bytes ({} in use, peak {}): {e:?}",
                                st.stats.bytes_in_use, st.stats.peak_bytes_in_use
                            ))
                        })?
                    }
                };
                st.stats.driver_allocs += 1;
                st.stats.bytes_reserved += class;
                p
            }
        };
        st.stats.bytes_in_use += class;
        st.stats.peak_bytes_in_use = st.stats.peak_bytes_in_use.max(st.stats.bytes_in_use);
        Ok((ptr, class))
    }

    /// Returns a block to its free list.
    pub(crate) fn release(&self, ptr: CUdeviceptr, class: usize) {
        if class == 0 {
            return;
        }
        let mut st = self.lock();
        st.stats.bytes_in_use -= class;
        st.free.entry(class).or_default().push(ptr);
    }

    /// Frees every cached (unused) block back to the driver, after the stream's queued work
    /// that may still use them has finished.
    pub(crate) fn empty_cache(&self) -> Result<()> {
        let mut st = self.lock();
        self.release_cache(&mut st)
    }

    fn release_cache(&self, st: &mut State) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| Error::Cuda(format!("bind context: {e:?}")))?;
        self.ctx.synchronize().map_err(|e| Error::Cuda(format!("synchronize before freeing the cache: {e:?}")))?;
        for (class, ptrs) in st.free.drain() {
            for p in ptrs {
                // SAFETY: `p` came from cuMemAlloc in this context, is in no free list any more
                // and no queued work uses it (synchronized above).
                unsafe { result::free_sync(p) }.map_err(|e| Error::Cuda(format!("cuMemFree: {e:?}")))?;
                st.stats.bytes_reserved -= class;
            }
        }
        Ok(())
    }

    fn driver_alloc(&self, bytes: usize) -> std::result::Result<CUdeviceptr, result::DriverError> {
        self.ctx.bind_to_thread()?;
        // SAFETY: a plain cuMemAlloc in the bound context; the block is owned by this
        // allocator until freed in `release_cache` or `drop`.
        unsafe { result::malloc_sync(bytes) }
    }
}

impl Drop for Allocator {
    fn drop(&mut self) {
        // Every DeviceBuffer holds an Arc to the allocator, so all blocks are cached now.
        let st = self.state.get_mut().expect("allocator lock poisoned");
        if self.ctx.bind_to_thread().is_ok() && self.ctx.synchronize().is_ok() {
            for p in st.free.drain().flat_map(|(_, v)| v) {
                // SAFETY: as in `release_cache`; nothing can use the block any more.
                let _ = unsafe { result::free_sync(p) };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_round_up_by_at_most_a_quarter() {
        assert_eq!(size_class(1), 512);
        assert_eq!(size_class(512), 512);
        assert_eq!(size_class(513), 640);
        assert_eq!(size_class(1024), 1024);
        assert_eq!(size_class(1025), 1280);
        assert_eq!(size_class(3 << 20), 3 << 20);
        for b in [700usize, 4097, 1 << 20 | 1, 123_456_789] {
            let c = size_class(b);
            assert!(c >= b && (c - b) * 4 <= b, "{b} -> {c}");
            assert_eq!(size_class(c), c, "a class is its own class");
        }
    }
}
