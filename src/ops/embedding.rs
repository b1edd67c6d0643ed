//! Embedding lookups and sinusoidal timestep embeddings.
//!
//! Conventions: a table is [V, D]; ids come as a tensor of integer-valued f32 (the
//! form token ids take after loading) or as a `&[u32]` slice with its shape. Only
//! the table is differentiated; its gradient scatter-adds, so repeated ids sum.

use super::{cpu_out, same_device};
use crate::autograd::{record, Backward};
use crate::backend::cpu::embedding::{self as kernel, TimestepParams};
use crate::error::{Error, Result};
use crate::tensor::Tensor;

/// Rows of `table` [V, D] picked by `ids` [..]: out [.., D], out[i] = table[ids[i]].
/// Every id must be an integer in [0, V).
///
/// PyTorch equivalent: `F.embedding(ids, table)`.
pub fn embedding(ids: &Tensor, table: &Tensor) -> Result<Tensor> {
    same_device("embedding", &[ids, table])?;
    let v = table_rows(table)?;
    let idx = ids
        .cpu_f32()?
        .iter()
        .enumerate()
        .map(|(i, &x)| {
            if x >= 0.0 && x.fract() == 0.0 && (x as usize) < v {
                Ok(x as usize)
            } else {
                Err(bad_id(&format!("{x}"), i, ids.shape(), v))
            }
        })
        .collect::<Result<Vec<_>>>()?;
    lookup(idx, ids.shape(), table)
}

/// [`embedding`] with ids given as a slice laid out row-major in `ids_shape`.
pub fn embedding_u32(ids: &[u32], ids_shape: &[usize], table: &Tensor) -> Result<Tensor> {
    same_device("embedding", &[table])?;
    if ids.len() != ids_shape.iter().product::<usize>() {
        return Err(Error::op("embedding", format!("{} ids do not fill shape {:?}", ids.len(), ids_shape)));
    }
    let v = table_rows(table)?;
    let idx = ids
        .iter()
        .enumerate()
        .map(|(i, &x)| if (x as usize) < v { Ok(x as usize) } else { Err(bad_id(&x.to_string(), i, ids_shape, v)) })
        .collect::<Result<Vec<_>>>()?;
    lookup(idx, ids_shape, table)
}

fn table_rows(table: &Tensor) -> Result<usize> {
    if table.dims() != 2 {
        return Err(Error::op("embedding", format!("table has shape {:?}, expected [V, D]", table.shape())));
    }
    Ok(table.shape()[0])
}

fn bad_id(id: &str, flat: usize, shape: &[usize], v: usize) -> Error {
    let msg = format!("id {id} at flat position {flat} of ids {shape:?} is not a row of the table");
    Error::op("embedding", format!("{msg} (ids must be integers in 0..{v}; the table has {v} rows)"))
}

fn lookup(idx: Vec<usize>, ids_shape: &[usize], table: &Tensor) -> Result<Tensor> {
    let (v, d) = (table.shape()[0], table.shape()[1]);
    let out = kernel::gather_rows(&idx, &table.cpu_f32()?, d);
    let mut shape = ids_shape.to_vec();
    shape.push(d);
    let out = cpu_out(out, &shape, table.dtype());
    Ok(record(out, &[table], || EmbeddingBackward { idx, v, d }))
}

struct EmbeddingBackward {
    idx: Vec<usize>,
    v: usize,
    d: usize,
}

impl Backward for EmbeddingBackward {
    fn name(&self) -> &'static str {
        "embedding"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let grad = kernel::scatter_add_rows(&self.idx, &g.cpu_f32()?, self.v, self.d);
        Ok(vec![Some(cpu_out(grad, &[self.v, self.d], g.dtype()))])
    }
}

/// Sinusoidal embedding of timesteps `t` [B]: out [B, dim] with, for k < dim/2,
/// freq_k = exp(−ln(max_period)·k / (dim/2 − downscale_freq_shift)),
/// a = scale·t·freq_k, out = [sin a | cos a] (or [cos a | sin a] when
/// `flip_sin_to_cos`), plus a zero column when dim is odd. Differentiable in t.
///
/// diffusers equivalent: `get_timestep_embedding(t, dim, flip_sin_to_cos,
/// downscale_freq_shift, scale, max_period)`, including its float32 evaluation of
/// the argument a (see `backend::cpu::embedding::timestep_fwd`); the gradient in t
/// is evaluated in f64.
pub fn timestep_embedding(
    t: &Tensor,
    dim: usize,
    flip_sin_to_cos: bool,
    downscale_freq_shift: f32,
    scale: f32,
    max_period: f32,
) -> Result<Tensor> {
    same_device("timestep_embedding", &[t])?;
    if t.dims() != 1 {
        return Err(Error::op("timestep_embedding", format!("t has shape {:?}, expected [B]", t.shape())));
    }
    let p = TimestepParams {
        dim,
        flip_sin_to_cos,
        downscale_freq_shift: downscale_freq_shift as f64,
        scale: scale as f64,
        max_period: max_period as f64,
    };
    if dim >= 2 && (dim / 2) as f64 == p.downscale_freq_shift {
        let msg = format!("dim/2 − downscale_freq_shift is 0 (dim {dim}, shift {downscale_freq_shift})");
        return Err(Error::op("timestep_embedding", format!("{msg}: the frequencies are undefined")));
    }
    let td = t.detach();
    let out = cpu_out(kernel::timestep_fwd(&td.cpu_f32()?, &p), &[t.shape()[0], dim], t.dtype());
    Ok(record(out, &[t], || TimestepBackward { t: td, p }))
}

struct TimestepBackward {
    t: Tensor,
    p: TimestepParams,
}

impl Backward for TimestepBackward {
    fn name(&self) -> &'static str {
        "timestep_embedding"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let dt = kernel::timestep_bwd(&self.t.cpu_f32()?, &g.cpu_f32()?, &self.p);
        Ok(vec![Some(cpu_out(dt, self.t.shape(), g.dtype()))])
    }
}
