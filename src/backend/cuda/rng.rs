//! Launchers for kernels/rng.cu: Philox fills that reproduce `crate::rng::Philox` element for
//! element (uniforms bit for bit, normals within 1 ulp). Each fill takes and advances the
//! same stream position as the CPU fill of the same length.

use super::device::CudaDevice;
use super::params::*;
use super::storage::CudaStorage;
use crate::error::Result;
use crate::rng::Philox;

pub(crate) const KERNELS: &[&str] = &[
    "rng_uniform_f32",
    "rng_uniform_bf16",
    "rng_normal_f32",
    "rng_normal_bf16",
    "rng_logit_normal_f32",
    "rng_logit_normal_bf16",
];

const THREADS: u32 = SF_BLOCK_THREADS;

/// The distribution of a fill.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Distribution {
    /// lo + (hi - lo) * u, u in (0, 1): `Tensor::rand`.
    Uniform { lo: f32, hi: f32 },
    /// N(0, 1): `Tensor::randn`.
    Normal,
    /// sigmoid(mean + std * z): SenseFlow's sigma sampler.
    LogitNormal { mean: f32, std: f32 },
}

/// Fills all of `out` from `rng`'s current position and advances it by ceil(len / 4).
pub fn fill(dev: &CudaDevice, rng: &mut Philox, dist: Distribution, out: &mut CudaStorage) -> Result<()> {
    const OP: &str = "rng_fill";
    let n = out.len();
    let (name, lo, hi, mean, std_dev) = match dist {
        Distribution::Uniform { lo, hi } => (kernel_name!(OP, out.dtype(), "rng_uniform"), lo, hi, 0.0, 0.0),
        Distribution::Normal => (kernel_name!(OP, out.dtype(), "rng_normal"), 0.0, 0.0, 0.0, 0.0),
        Distribution::LogitNormal { mean, std } => {
            (kernel_name!(OP, out.dtype(), "rng_logit_normal"), 0.0, 0.0, mean, std)
        }
    };
    let p =
        sf_rng_params { out: out.out_ptr(0), n: n as i64, seed: rng.seed, offset: rng.offset, lo, hi, mean, std_dev };
    // SAFETY: the kernel writes elements [0, n) of `out`, which holds n elements of its dtype.
    unsafe { dev.launch(name, (dev.grid_for(n.div_ceil(4), THREADS as usize), 1, 1), THREADS, 0, &p) }?;
    rng.offset = rng.offset.wrapping_add(n.div_ceil(4) as u64);
    Ok(())
}
