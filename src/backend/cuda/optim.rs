//! Launchers for kernels/optim.cu: multi-tensor AdamW on fp32 master weights, the global
//! gradient norm with its clipping scale (left on the device), and the IDA blend.
//!
//! Each call uploads a small table of device pointers and the prefix sums of the tensors'
//! chunk counts, then one launch covers every tensor. The table lives in allocator blocks, so
//! a training step allocates nothing from the driver once warm.

use super::device::CudaDevice;
use super::params::*;
use super::storage::{CudaStorage, DeviceVec};
use crate::error::{Error, Result};
use crate::tensor::DType;

pub(crate) const KERNELS: &[&str] = &[
    "adamw_step_f32",
    "adamw_step_bf16",
    "adamw_step_bf16_f32grad",
    "grad_sumsq_f32",
    "grad_sumsq_bf16",
    "clip_scale_f32",
    "ida_blend_f32",
    "ida_blend_bf16",
];

const THREADS: u32 = SF_BLOCK_THREADS;
const CHUNK: usize = SF_MULTI_TENSOR_CHUNK as usize;

/// Prefix sums of ceil(n / CHUNK) over the tensors' lengths: [0, c0, c0 + c1, ...].
fn chunk_starts(lens: impl Iterator<Item = usize>) -> Vec<i64> {
    let mut v = vec![0i64];
    for n in lens {
        v.push(v[v.len() - 1] + n.div_ceil(CHUNK) as i64);
    }
    v
}

fn grid(op: &'static str, total_chunks: i64) -> Result<u32> {
    u32::try_from(total_chunks).map_err(|_| Error::op(op, format!("{total_chunks} chunks exceed one launch")))
}

/// One parameter of an AdamW step.
pub struct AdamwTensor<'a> {
    /// fp32 master weights (the parameter itself in f32 runs).
    pub master: &'a mut CudaStorage,
    /// The bf16 model copy rounded from the master after the update, if any.
    pub param: Option<&'a mut CudaStorage>,
    /// Gradient: bf16 or f32.
    pub grad: &'a CudaStorage,
    pub exp_avg: &'a mut CudaStorage,
    pub exp_avg_sq: &'a mut CudaStorage,
}

/// torch.optim.AdamW hyperparameters; `step` counts from 1 (bias corrections).
#[derive(Clone, Copy, Debug)]
pub struct AdamwConfig {
    pub lr: f32,
    pub beta1: f32,
    pub beta2: f32,
    pub eps: f32,
    pub weight_decay: f32,
    pub step: u64,
}

/// One AdamW step over every tensor. `grad_scale` (f32 [1] on the device, e.g. from
/// [`grad_norm_clip`]) multiplies all gradients. All tensors share one param / grad dtype pair.
pub fn adamw_step(
    dev: &CudaDevice,
    tensors: &mut [AdamwTensor],
    cfg: &AdamwConfig,
    grad_scale: Option<&CudaStorage>,
) -> Result<()> {
    const OP: &str = "adamw_step";
    let Some(first) = tensors.first() else {
        return Ok(());
    };
    if cfg.step == 0 {
        return Err(Error::op(OP, "steps count from 1"));
    }
    let pdt = first.param.as_ref().map(|p| p.dtype());
    let gdt = first.grad.dtype();
    let name = match (pdt, gdt) {
        (None, DType::F32) => "adamw_step_f32",
        (Some(DType::BF16), DType::BF16) => "adamw_step_bf16",
        (Some(DType::BF16), DType::F32) => "adamw_step_bf16_f32grad",
        (p, g) => return Err(Error::op(OP, format!("no AdamW kernel for param {p:?} with grad {g}"))),
    };
    let mut table = Vec::with_capacity(tensors.len());
    for (i, t) in tensors.iter_mut().enumerate() {
        let n = t.master.len();
        let what = format!("tensor {i}");
        t.master.check(OP, &format!("{what} master"), DType::F32, 0, n)?;
        t.exp_avg.check(OP, &format!("{what} exp_avg"), DType::F32, 0, n)?;
        t.exp_avg_sq.check(OP, &format!("{what} exp_avg_sq"), DType::F32, 0, n)?;
        t.grad.check(OP, &format!("{what} grad"), gdt, 0, n)?;
        let param = match t.param.as_deref_mut() {
            Some(p) if Some(p.dtype()) == pdt => {
                p.check(OP, &format!("{what} param"), p.dtype(), 0, n)?;
                p.out_ptr(0)
            }
            None if pdt.is_none() => std::ptr::null_mut(),
            _ => return Err(Error::op(OP, format!("{what}: every tensor needs the same kind of model copy"))),
        };
        table.push(sf_adamw_tensor {
            master: t.master.out_ptr(0) as *mut f32,
            param,
            grad: t.grad.in_ptr(0),
            exp_avg: t.exp_avg.out_ptr(0) as *mut f32,
            exp_avg_sq: t.exp_avg_sq.out_ptr(0) as *mut f32,
            n: n as i64,
        });
    }
    let grad_scale = match grad_scale {
        Some(s) => {
            s.check(OP, "grad_scale", DType::F32, 0, 1)?;
            s.in_ptr(0) as *const f32
        }
        None => std::ptr::null(),
    };
    let starts = chunk_starts(tensors.iter().map(|t| t.master.len()));
    let total = grid(OP, starts[starts.len() - 1])?;
    let table = DeviceVec::from_slice(dev, &table)?;
    let starts = DeviceVec::from_slice(dev, &starts)?;
    let step = cfg.step as f64;
    let p = sf_adamw_params {
        tensors: table.in_ptr(),
        chunk_starts: starts.in_ptr(),
        grad_scale,
        num_tensors: tensors.len() as i32,
        lr: cfg.lr,
        beta1: cfg.beta1,
        beta2: cfg.beta2,
        eps: cfg.eps,
        weight_decay: cfg.weight_decay,
        bias_correction1: (1.0 - f64::from(cfg.beta1).powf(step)) as f32,
        bias_correction2: (1.0 - f64::from(cfg.beta2).powf(step)) as f32,
    };
    // SAFETY: every table entry's tensors were checked to hold n elements of the kernel's dtypes,
    // the table and chunk_starts are live device copies, and the grid is the total chunk count.
    unsafe { dev.launch(name, (total, 1, 1), THREADS, 0, &p) }
}

/// Global L2 norm of all gradients (any mix of f32 and bf16) into `norm` (f32 [1]) and the
/// clipping factor min(1, max_norm / (norm + 1e-6)) into `scale` (f32 [1]), as
/// torch.nn.utils.clip_grad_norm_; both stay on the device.
pub fn grad_norm_clip(
    dev: &CudaDevice,
    grads: &[&CudaStorage],
    max_norm: f32,
    norm: &mut CudaStorage,
    scale: &mut CudaStorage,
) -> Result<()> {
    const OP: &str = "grad_norm_clip";
    norm.check(OP, "norm", DType::F32, 0, 1)?;
    scale.check(OP, "scale", DType::F32, 0, 1)?;
    let groups: Vec<(DType, Vec<&CudaStorage>)> = [DType::F32, DType::BF16]
        .into_iter()
        .map(|dt| (dt, grads.iter().copied().filter(|g| g.dtype() == dt).collect::<Vec<_>>()))
        .filter(|(_, v)| !v.is_empty())
        .collect();
    if let Some(g) = grads.iter().find(|g| !matches!(g.dtype(), DType::F32 | DType::BF16)) {
        return Err(Error::DType { op: OP, got: g.dtype(), expected: "f32 or bf16" });
    }
    let totals: Vec<i64> =
        groups.iter().map(|(_, v)| *chunk_starts(v.iter().map(|g| g.len())).last().unwrap_or(&0)).collect();
    let count: i64 = totals.iter().sum();
    let mut partial = DeviceVec::<f32>::alloc(dev, count.max(1) as usize)?;
    let mut at = 0i64;
    for ((dt, v), total) in groups.iter().zip(&totals) {
        let table: Vec<sf_tensor_ref> =
            v.iter().map(|g| sf_tensor_ref { data: g.in_ptr(0), n: g.len() as i64 }).collect();
        let starts = chunk_starts(v.iter().map(|g| g.len()));
        let table = DeviceVec::from_slice(dev, &table)?;
        let starts = DeviceVec::from_slice(dev, &starts)?;
        let name = if *dt == DType::F32 { "grad_sumsq_f32" } else { "grad_sumsq_bf16" };
        // Each group writes its own slice of the partial buffer.
        let p = sf_grad_sumsq_params {
            tensors: table.in_ptr(),
            chunk_starts: starts.in_ptr(),
            partial: partial.out_ptr().wrapping_add(at as usize), // at + total <= count
            num_tensors: v.len() as i32,
        };
        // SAFETY: each table entry points at a whole gradient storage of the kernel's dtype; this
        // group writes partial[at, at + total) and the buffer holds `count` >= at + total floats.
        unsafe { dev.launch(name, (grid(OP, *total)?, 1, 1), THREADS, 0, &p) }?;
        at += total;
    }
    if count == 0 {
        partial = DeviceVec::from_slice(dev, &[0.0f32])?;
    }
    let p = sf_clip_scale_params {
        partial: partial.in_ptr(),
        count: count.max(1),
        max_norm,
        norm: norm.out_ptr(0) as *mut f32,
        scale: scale.out_ptr(0) as *mut f32,
    };
    // SAFETY: partial holds `count` floats (at least 1); norm and scale hold one f32 each.
    unsafe { dev.launch("clip_scale_f32", (1, 1, 1), THREADS, 0, &p) }
}

/// One IDA pair: the fake score's parameter (fp32 master, optional bf16 copy) and the
/// generator's fp32 master weights of the same shape.
pub struct BlendPair<'a> {
    pub dst_master: &'a mut CudaStorage,
    pub dst_param: Option<&'a mut CudaStorage>,
    pub src: &'a CudaStorage,
}

/// phi <- lambda * phi + (1 - lambda) * theta for every pair (SenseFlow's IDA).
pub fn ida_blend(dev: &CudaDevice, pairs: &mut [BlendPair], lambda: f32) -> Result<()> {
    const OP: &str = "ida_blend";
    let Some(first) = pairs.first() else {
        return Ok(());
    };
    let pdt = first.dst_param.as_ref().map(|p| p.dtype());
    let name = match pdt {
        None => "ida_blend_f32",
        Some(DType::BF16) => "ida_blend_bf16",
        Some(DType::F32) => "ida_blend_f32",
        Some(d) => return Err(Error::DType { op: OP, got: d, expected: "f32 or bf16" }),
    };
    let mut table = Vec::with_capacity(pairs.len());
    for (i, t) in pairs.iter_mut().enumerate() {
        let n = t.dst_master.len();
        t.dst_master.check(OP, &format!("pair {i} dst_master"), DType::F32, 0, n)?;
        t.src.check(OP, &format!("pair {i} src"), DType::F32, 0, n)?;
        let param = match t.dst_param.as_deref_mut() {
            Some(p) if Some(p.dtype()) == pdt => {
                p.check(OP, &format!("pair {i} dst_param"), p.dtype(), 0, n)?;
                p.out_ptr(0)
            }
            None if pdt.is_none() => std::ptr::null_mut(),
            _ => return Err(Error::op(OP, format!("pair {i}: every pair needs the same kind of model copy"))),
        };
        table.push(sf_blend_tensor {
            dst_master: t.dst_master.out_ptr(0) as *mut f32,
            dst_param: param,
            src: t.src.in_ptr(0) as *const f32,
            n: n as i64,
        });
    }
    let starts = chunk_starts(pairs.iter().map(|t| t.dst_master.len()));
    let total = grid(OP, starts[starts.len() - 1])?;
    let table = DeviceVec::from_slice(dev, &table)?;
    let starts = DeviceVec::from_slice(dev, &starts)?;
    let p = sf_ida_blend_params {
        tensors: table.in_ptr(),
        chunk_starts: starts.in_ptr(),
        num_tensors: pairs.len() as i32,
        lambda,
    };
    // SAFETY: every pair was checked to hold n f32 (and n elements in its copy); the grid is the
    // total chunk count of the uploaded table.
    unsafe { dev.launch(name, (total, 1, 1), THREADS, 0, &p) }
}
