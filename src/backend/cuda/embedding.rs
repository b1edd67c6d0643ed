//! Launchers for kernels/embedding.cu: table lookup, its deterministic scatter-add backward,
//! and diffusers' sinusoidal timestep embedding.

use super::device::CudaDevice;
use super::params::*;
use super::storage::{CudaStorage, DeviceVec};
use crate::error::{Error, Result};
use crate::tensor::DType;

pub(crate) const KERNELS: &[&str] = &[
    "embedding_fwd_f32",
    "embedding_fwd_bf16",
    "embedding_bwd_f32",
    "embedding_bwd_bf16",
    "timestep_embedding_fwd_f32",
    "timestep_embedding_fwd_bf16",
];

const THREADS: u32 = SF_BLOCK_THREADS;

/// out[i] = table[ids[i]]: table [vocab, dim], out [ids.len(), dim].
pub fn embedding_fwd(
    dev: &CudaDevice,
    ids: &DeviceVec<i32>,
    table: &CudaStorage,
    vocab: usize,
    dim: usize,
    out: &mut CudaStorage,
) -> Result<()> {
    const OP: &str = "embedding_fwd";
    table.check(OP, "table", table.dtype(), 0, vocab * dim)?;
    out.check(OP, "out", table.dtype(), 0, ids.len() * dim)?;
    let name = kernel_name!(OP, table.dtype(), "embedding_fwd");
    let p = sf_embedding_fwd_params {
        ids: ids.in_ptr(),
        table: table.in_ptr(0),
        out: out.out_ptr(0),
        count: ids.len() as i64,
        vocab: i32::try_from(vocab).map_err(|_| Error::op(OP, "vocab exceeds i32"))?,
        dim: dim as i32,
    };
    // SAFETY: table holds vocab * dim and out ids.len() * dim elements of one dtype; ids outside
    // the vocabulary read as zeros in the kernel.
    unsafe { dev.launch(name, (dev.grid_for(ids.len() * dim, THREADS as usize), 1, 1), THREADS, 0, &p) }
}

/// dtable[id] (+)= sum of dout[i] over the positions i with ids[i] == id. Rows of ids that do
/// not occur are left untouched (zero them first unless accumulating). `ids` are host values:
/// the grouping by id (a CSR) is built here so that the kernel needs no atomics.
pub fn embedding_bwd(
    dev: &CudaDevice,
    ids: &[i32],
    dout: &CudaStorage,
    vocab: usize,
    dim: usize,
    dtable: &mut CudaStorage,
    accumulate: bool,
) -> Result<()> {
    const OP: &str = "embedding_bwd";
    if let Some(&bad) = ids.iter().find(|&&i| i < 0 || i as usize >= vocab) {
        return Err(Error::op(OP, format!("id {bad} outside the vocabulary of {vocab}")));
    }
    dout.check(OP, "dout", dtable.dtype(), 0, ids.len() * dim)?;
    dtable.check(OP, "dtable", dtable.dtype(), 0, vocab * dim)?;
    let mut order: Vec<i32> = (0..ids.len() as i32).collect();
    order.sort_by_key(|&i| (ids[i as usize], i));
    let mut unique = Vec::new();
    let mut offsets = vec![0i32];
    for (k, &pos) in order.iter().enumerate() {
        let id = ids[pos as usize];
        if unique.last() != Some(&id) {
            if k > 0 {
                offsets.push(k as i32);
            }
            unique.push(id);
        }
    }
    offsets.push(order.len() as i32);
    if unique.is_empty() {
        return Ok(());
    }
    let name = kernel_name!(OP, dtable.dtype(), "embedding_bwd");
    let unique_d = DeviceVec::from_slice(dev, &unique)?;
    let offsets_d = DeviceVec::from_slice(dev, &offsets)?;
    let positions_d = DeviceVec::from_slice(dev, &order)?;
    let p = sf_embedding_bwd_params {
        unique_ids: unique_d.in_ptr(),
        offsets: offsets_d.in_ptr(),
        positions: positions_d.in_ptr(),
        dout: dout.in_ptr(0),
        dtable: dtable.out_ptr(0),
        num_unique: unique.len() as i32,
        dim: dim as i32,
        accumulate: accumulate as i32,
    };
    // SAFETY: ids were validated against the vocabulary and the CSR arrays built from them index
    // only positions < ids.len(); dout holds ids.len() * dim and dtable vocab * dim elements.
    unsafe { dev.launch(name, (dev.grid_for(unique.len(), 1), 1, 1), THREADS, 0, &p) }
}

/// diffusers `Timesteps` / `get_timestep_embedding` settings (SD3 and FLUX: flip true, shift
/// 0, scale 1, max_period 10000).
#[derive(Clone, Copy, Debug)]
pub struct TimestepEmbedding {
    pub dim: usize,
    pub flip_sin_to_cos: bool,
    pub downscale_freq_shift: f32,
    pub scale: f32,
    pub max_period: f32,
}

/// out [B, dim] from timesteps t (f32 [B]).
pub fn timestep_embedding(
    dev: &CudaDevice,
    t: &CudaStorage,
    cfg: &TimestepEmbedding,
    out: &mut CudaStorage,
) -> Result<()> {
    const OP: &str = "timestep_embedding";
    t.check(OP, "t", DType::F32, 0, t.len())?;
    let b = t.len();
    out.check(OP, "out", out.dtype(), 0, b * cfg.dim)?;
    let name = kernel_name!(OP, out.dtype(), "timestep_embedding_fwd");
    let p = sf_timestep_embedding_params {
        t: t.in_ptr(0) as *const f32,
        out: out.out_ptr(0),
        batch: b as i32,
        dim: cfg.dim as i32,
        flip_sin_to_cos: cfg.flip_sin_to_cos as i32,
        downscale_freq_shift: cfg.downscale_freq_shift,
        scale: cfg.scale,
        max_period: cfg.max_period,
    };
    // SAFETY: t holds B f32 timesteps and out B * dim elements.
    unsafe { dev.launch(name, (dev.grid_for(b * cfg.dim, THREADS as usize), 1, 1), THREADS, 0, &p) }
}
