//! CPU reference backend: kernels over contiguous f32 slices (lower-precision storage
//! is widened on read and rounded on write by the op layer). Work above
//! `PAR_THRESHOLD` elements is split over rayon's pool; results do not depend on the
//! thread count except for the summation order of reductions.

pub mod attention;
pub mod binary;
pub mod conv;
pub mod embedding;
pub mod loss;
pub mod matmul;
pub mod modulate;
pub mod norm;
pub mod optim;
pub mod reduce;
pub mod rope;
pub mod softmax;
pub mod spectral_norm;
pub mod unary;

/// Below this many elements threading costs more than it saves.
pub const PAR_THRESHOLD: usize = 1 << 15;

/// Number of threads the CPU backend uses (rayon's global pool).
pub fn num_threads() -> usize {
    rayon::current_num_threads()
}

/// Sets the thread count once, before any parallel work; later calls are ignored.
pub fn init_threads(n: usize) {
    let _ = rayon::ThreadPoolBuilder::new().num_threads(n.max(1)).build_global();
}
