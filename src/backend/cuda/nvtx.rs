//! NVTX ranges for profilers (Nsight Systems / Compute): `let _r = nvtx::range("attn_fwd");`.
//!
//! libnvToolsExt is opened at run time on first use. When it is absent every range is a
//! no-op costing one atomic load, so launchers and layers can open ranges unconditionally.
//! Names longer than 127 bytes are cut (the name is copied into a stack buffer, so a range
//! allocates nothing).

use std::ffi::{c_char, c_int};
use std::sync::OnceLock;

struct Nvtx {
    push: unsafe extern "C" fn(*const c_char) -> c_int,
    pop: unsafe extern "C" fn() -> c_int,
    // Keeps the library mapped while the function pointers above are in use.
    _lib: libloading::Library,
}

fn nvtx() -> Option<&'static Nvtx> {
    static LIB: OnceLock<Option<Nvtx>> = OnceLock::new();
    LIB.get_or_init(|| {
        ["libnvToolsExt.so.1", "libnvToolsExt.so"].iter().find_map(|name| {
            // SAFETY: loading the NVTX library runs no initialisation with preconditions;
            // the two symbols have the C signatures of nvToolsExt.h.
            unsafe {
                let lib = libloading::Library::new(*name).ok()?;
                let push = *lib.get::<unsafe extern "C" fn(*const c_char) -> c_int>(b"nvtxRangePushA\0").ok()?;
                let pop = *lib.get::<unsafe extern "C" fn() -> c_int>(b"nvtxRangePop\0").ok()?;
                Some(Nvtx { push, pop, _lib: lib })
            }
        })
    })
    .as_ref()
}

/// Whether ranges reach a profiler (libnvToolsExt was found).
pub fn enabled() -> bool {
    nvtx().is_some()
}

/// An open NVTX range; closed when dropped.
#[must_use = "the range closes when this guard is dropped"]
pub struct Range {
    open: bool,
}

/// Opens a range named `name` (a no-op without libnvToolsExt).
pub fn range(name: &str) -> Range {
    let Some(n) = nvtx() else {
        return Range { open: false };
    };
    let mut buf = [0u8; 128];
    let len = name.len().min(buf.len() - 1);
    buf[..len].copy_from_slice(&name.as_bytes()[..len]);
    // SAFETY: `buf` is NUL-terminated and outlives the call (NVTX copies the string).
    unsafe { (n.push)(buf.as_ptr().cast()) };
    Range { open: true }
}

impl Drop for Range {
    fn drop(&mut self) {
        if let (true, Some(n)) = (self.open, nvtx()) {
            // SAFETY: pops the range this guard pushed.
            unsafe { (n.pop)() };
        }
    }
}
