//! Launchers for kernels/attention.cu: fused attention forward (saving the log-sum-exp) and
//! backward.
//!
//! Kernel choice ([`AttnImpl::Auto`]): bf16 with head_dim 64 or 128 and 16-byte aligned rows
//! runs the tensor-core kernels (FlashAttention-2 style); everything else (f32, other head
//! dims up to 512, misaligned views) runs the SIMT kernels. Each operand has its own
//! batch / head / row strides ([`Heads`]), so [B, N, H, D] projections need no transpose.

use super::device::CudaDevice;
use super::params::*;
use super::storage::{CudaStorage, DeviceVec};
use super::views::Heads;
use crate::error::{Error, Result};
use crate::tensor::DType;

pub(crate) const KERNELS: &[&str] = &[
    "attn_fwd_bf16_d64",
    "attn_fwd_bf16_d128",
    "attn_bwd_dq_bf16_d64",
    "attn_bwd_dq_bf16_d128",
    "attn_bwd_dkdv_bf16_d64",
    "attn_bwd_dkdv_bf16_d128",
    "attn_fwd_f32",
    "attn_bwd_dq_f32",
    "attn_bwd_dkdv_f32",
    "attn_fwd_bf16_simt",
    "attn_bwd_dq_bf16_simt",
    "attn_bwd_dkdv_bf16_simt",
    "attn_bwd_preprocess_f32",
    "attn_bwd_preprocess_bf16",
];

const TC_BLOCK_M: usize = SF_ATTN_TC_BLOCK_M as usize;
const TC_BLOCK_N: usize = SF_ATTN_TC_BLOCK_N as usize;
const SIMT_WARPS: usize = SF_ATTN_SIMT_WARPS as usize;

/// Which kernels run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttnImpl {
    /// Tensor cores when eligible, SIMT otherwise.
    Auto,
    /// Tensor-core kernels (bf16, head_dim 64 / 128, aligned rows); an error otherwise.
    TensorCore,
    /// SIMT kernels (any dtype, head_dim <= 512).
    Simt,
}

/// Problem size: q [B, H, Nq, D], k and v [B, H, Nk, D].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttnShape {
    pub batch: usize,
    pub heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
}

/// An attention operand: storage and its [B, H, N, D] strides.
#[derive(Clone, Copy)]
pub struct AttnIn<'a> {
    pub data: &'a CudaStorage,
    pub view: Heads,
}

/// An attention result written through its [B, H, N, D] strides.
pub struct AttnOut<'a> {
    pub data: &'a mut CudaStorage,
    pub view: Heads,
}

/// Per-key mask [B, Nk] (nonzero = attend): (b, j) at `offset + b * batch_stride + j`.
#[derive(Clone, Copy)]
pub struct KeyMask<'a> {
    pub mask: &'a DeviceVec<u8>,
    pub offset: usize,
    pub batch_stride: usize,
}

fn strides(h: &Heads) -> sf_attn_strides {
    sf_attn_strides { batch: h.batch_stride as i64, head: h.head_stride as i64, row: h.row_stride as i64 }
}

/// Rows start on 16-byte boundaries (bf16: offsets and strides multiples of 8 elements).
fn aligned(h: &Heads) -> bool {
    [h.offset, h.batch_stride, h.head_stride, h.row_stride].iter().all(|v| v % 8 == 0)
}

/// Decides the kernels and checks what every kernel needs.
fn choose(op: &'static str, shape: &AttnShape, dtype: DType, views: &[Heads], imp: AttnImpl) -> Result<AttnImpl> {
    if !matches!(dtype, DType::F32 | DType::BF16) {
        return Err(Error::DType { op, got: dtype, expected: "f32 or bf16" });
    }
    if shape.batch * shape.heads > 65535 {
        return Err(Error::op(op, format!("batch * heads = {} exceeds the grid's 65535", shape.batch * shape.heads)));
    }
    let tc_ok = dtype == DType::BF16 && matches!(shape.head_dim, 64 | 128) && views.iter().all(aligned);
    match imp {
        AttnImpl::TensorCore if !tc_ok => Err(Error::op(
            op,
            format!(
                "tensor-core attention needs bf16, head_dim 64 or 128 and 16-byte aligned rows (got {dtype}, d={})",
                shape.head_dim
            ),
        )),
        AttnImpl::Auto | AttnImpl::TensorCore if tc_ok => Ok(AttnImpl::TensorCore),
        _ if shape.head_dim > SF_ATTN_SIMT_MAX_D as usize || shape.head_dim == 0 => {
            Err(Error::op(op, format!("head_dim {} outside 1..={SF_ATTN_SIMT_MAX_D}", shape.head_dim)))
        }
        _ => Ok(AttnImpl::Simt),
    }
}

fn check_in(op: &'static str, what: &str, x: &AttnIn, dtype: DType, shape: &AttnShape, len: usize) -> Result<()> {
    if x.data.dtype() != dtype {
        return Err(Error::op(op, format!("{what} is {}, q is {dtype}", x.data.dtype())));
    }
    x.view.check(op, what, x.data, [shape.batch, shape.heads, len, shape.head_dim])
}

fn check_out(op: &'static str, what: &str, x: &AttnOut, dtype: DType, shape: &AttnShape, len: usize) -> Result<()> {
    if x.data.dtype() != dtype {
        return Err(Error::op(op, format!("{what} is {}, q is {dtype}", x.data.dtype())));
    }
    x.view.check(op, what, x.data, [shape.batch, shape.heads, len, shape.head_dim])
}

fn mask_parts(op: &'static str, m: Option<KeyMask>, shape: &AttnShape) -> Result<(*const u8, i64)> {
    let Some(m) = m else {
        return Ok((std::ptr::null(), 0));
    };
    if shape.batch > 0 && shape.kv_len > 0 {
        let last = m.offset + (shape.batch - 1) * m.batch_stride + shape.kv_len - 1;
        if last >= m.mask.len() {
            return Err(Error::op(op, format!("key mask reaches element {last} but holds {}", m.mask.len())));
        }
    }
    Ok((m.mask.in_ptr().wrapping_add(m.offset), m.batch_stride as i64))
}

/// Dynamic shared memory of the tensor-core kernels (layouts in kernels/attention.cu).
fn tc_smem(kind: &str, d: usize) -> u32 {
    let bf16 = 2;
    (match kind {
        "fwd" => (TC_BLOCK_M + 2 * TC_BLOCK_N) * d * bf16,
        "dq" => (2 * TC_BLOCK_M + 2 * TC_BLOCK_N) * d * bf16,
        _ => {
            // DkdvTraits<D>::kInnerM queries per step, plus their lse and delta (f32).
            let inner = if d == 64 { 64 } else { 32 };
            (2 * TC_BLOCK_N + 2 * inner) * d * bf16 + 2 * inner * 4
        }
    }) as u32
}

fn tc_name(kind: &str, d: usize) -> &'static str {
    match (kind, d) {
        ("fwd", 64) => "attn_fwd_bf16_d64",
        ("fwd", _) => "attn_fwd_bf16_d128",
        ("dq", 64) => "attn_bwd_dq_bf16_d64",
        ("dq", _) => "attn_bwd_dq_bf16_d128",
        (_, 64) => "attn_bwd_dkdv_bf16_d64",
        _ => "attn_bwd_dkdv_bf16_d128",
    }
}

fn simt_name(kind: &str, dtype: DType) -> &'static str {
    match (kind, dtype) {
        ("fwd", DType::F32) => "attn_fwd_f32",
        ("fwd", _) => "attn_fwd_bf16_simt",
        ("dq", DType::F32) => "attn_bwd_dq_f32",
        ("dq", _) => "attn_bwd_dq_bf16_simt",
        (_, DType::F32) => "attn_bwd_dkdv_f32",
        _ => "attn_bwd_dkdv_bf16_simt",
    }
}

/// o = softmax(scale * q k^T, key mask) v; lse [B, H, Nq] (f32, natural log). Returns the
/// kernels that ran.
#[allow(clippy::too_many_arguments)]
pub fn attn_fwd(
    dev: &CudaDevice,
    shape: AttnShape,
    scale: f32,
    q: AttnIn,
    k: AttnIn,
    v: AttnIn,
    key_mask: Option<KeyMask>,
    o: AttnOut,
    lse: &mut CudaStorage,
    imp: AttnImpl,
) -> Result<AttnImpl> {
    const OP: &str = "attn_fwd";
    let dt = q.data.dtype();
    let imp = choose(OP, &shape, dt, &[q.view, k.view, v.view, o.view], imp)?;
    check_in(OP, "q", &q, dt, &shape, shape.q_len)?;
    check_in(OP, "k", &k, dt, &shape, shape.kv_len)?;
    check_in(OP, "v", &v, dt, &shape, shape.kv_len)?;
    check_out(OP, "o", &o, dt, &shape, shape.q_len)?;
    lse.check(OP, "lse", DType::F32, 0, shape.batch * shape.heads * shape.q_len)?;
    let (mask, mask_stride) = mask_parts(OP, key_mask, &shape)?;
    let p = sf_attn_fwd_params {
        q: q.data.in_ptr(q.view.offset),
        k: k.data.in_ptr(k.view.offset),
        v: v.data.in_ptr(v.view.offset),
        o: o.data.out_ptr(o.view.offset),
        lse: lse.out_ptr(0) as *mut f32,
        key_mask: mask,
        q_strides: strides(&q.view),
        k_strides: strides(&k.view),
        v_strides: strides(&v.view),
        o_strides: strides(&o.view),
        mask_batch_stride: mask_stride,
        batch: shape.batch as i32,
        heads: shape.heads as i32,
        q_len: shape.q_len as i32,
        kv_len: shape.kv_len as i32,
        head_dim: shape.head_dim as i32,
        scale,
    };
    let bh = (shape.batch * shape.heads) as u32;
    if imp == AttnImpl::TensorCore {
        let d = shape.head_dim;
        // SAFETY: q, k, v, o were bounds-checked through their [B, H, N, D] strides and lse holds B
        // * H * Nq f32 (check_in / check_out / lse.check); tensor-core eligibility (bf16, d in {64,
        // 128}, 16-byte rows) was established by `choose`; the shared memory size matches the
        // kernel's tile layout.
        unsafe {
            dev.launch(
                tc_name("fwd", d),
                (shape.q_len.div_ceil(TC_BLOCK_M) as u32, bh, 1),
                SF_ATTN_TC_THREADS,
                tc_smem("fwd", d),
                &p,
            )
        }?;
    } else {
        // SAFETY: as above; the SIMT kernels read head_dim <= SF_ATTN_SIMT_MAX_D elements per row
        // (`choose`).
        unsafe {
            dev.launch(
                simt_name("fwd", dt),
                (shape.q_len.div_ceil(SIMT_WARPS) as u32, bh, 1),
                (SIMT_WARPS * 32) as u32,
                0,
                &p,
            )
        }?;
    }
    Ok(imp)
}

/// Gradients dq, dk, dv of [`attn_fwd`] from dout, the forward's o and lse. Returns the
/// kernels that ran.
#[allow(clippy::too_many_arguments)]
pub fn attn_bwd(
    dev: &CudaDevice,
    shape: AttnShape,
    scale: f32,
    q: AttnIn,
    k: AttnIn,
    v: AttnIn,
    o: AttnIn,
    dout: AttnIn,
    lse: &CudaStorage,
    key_mask: Option<KeyMask>,
    dq: AttnOut,
    dk: AttnOut,
    dv: AttnOut,
    imp: AttnImpl,
) -> Result<AttnImpl> {
    const OP: &str = "attn_bwd";
    let dt = q.data.dtype();
    let imp = choose(OP, &shape, dt, &[q.view, k.view, v.view, o.view, dout.view, dq.view, dk.view, dv.view], imp)?;
    check_in(OP, "q", &q, dt, &shape, shape.q_len)?;
    check_in(OP, "k", &k, dt, &shape, shape.kv_len)?;
    check_in(OP, "v", &v, dt, &shape, shape.kv_len)?;
    check_in(OP, "o", &o, dt, &shape, shape.q_len)?;
    check_in(OP, "dout", &dout, dt, &shape, shape.q_len)?;
    check_out(OP, "dq", &dq, dt, &shape, shape.q_len)?;
    check_out(OP, "dk", &dk, dt, &shape, shape.kv_len)?;
    check_out(OP, "dv", &dv, dt, &shape, shape.kv_len)?;
    let rows = shape.batch * shape.heads * shape.q_len;
    lse.check(OP, "lse", DType::F32, 0, rows)?;
    let (mask, mask_stride) = mask_parts(OP, key_mask, &shape)?;
    let mut delta = DeviceVec::<f32>::alloc(dev, rows)?;
    let p = sf_attn_bwd_params {
        q: q.data.in_ptr(q.view.offset),
        k: k.data.in_ptr(k.view.offset),
        v: v.data.in_ptr(v.view.offset),
        o: o.data.in_ptr(o.view.offset),
        dout: dout.data.in_ptr(dout.view.offset),
        lse: lse.in_ptr(0) as *const f32,
        delta: delta.out_ptr(),
        dq: dq.data.out_ptr(dq.view.offset),
        dk: dk.data.out_ptr(dk.view.offset),
        dv: dv.data.out_ptr(dv.view.offset),
        key_mask: mask,
        q_strides: strides(&q.view),
        k_strides: strides(&k.view),
        v_strides: strides(&v.view),
        o_strides: strides(&o.view),
        do_strides: strides(&dout.view),
        dq_strides: strides(&dq.view),
        dk_strides: strides(&dk.view),
        dv_strides: strides(&dv.view),
        mask_batch_stride: mask_stride,
        batch: shape.batch as i32,
        heads: shape.heads as i32,
        q_len: shape.q_len as i32,
        kv_len: shape.kv_len as i32,
        head_dim: shape.head_dim as i32,
        scale,
    };
    let bh = (shape.batch * shape.heads) as u32;
    let simt_block = (SIMT_WARPS * 32) as u32;
    let pre = if dt == DType::F32 { "attn_bwd_preprocess_f32" } else { "attn_bwd_preprocess_bf16" };
    // SAFETY: every operand was bounds-checked through its strides, lse holds B * H * Nq f32 and
    // delta (this function's scratch) as many; the mask span was checked by mask_parts.
    unsafe { dev.launch(pre, (shape.q_len.div_ceil(SIMT_WARPS) as u32, bh, 1), simt_block, 0, &p) }?;
    if imp == AttnImpl::TensorCore {
        let d = shape.head_dim;
        let t = SF_ATTN_TC_THREADS;
        // SAFETY: as for the preprocess launch; tensor-core eligibility was established by
        // `choose`, and the shared memory size matches the dq kernel's tile layout.
        unsafe {
            dev.launch(tc_name("dq", d), (shape.q_len.div_ceil(TC_BLOCK_M) as u32, bh, 1), t, tc_smem("dq", d), &p)
        }?;
        // SAFETY: as above, for the dK/dV pass and its tile layout.
        unsafe {
            dev.launch(tc_name("dkdv", d), (shape.kv_len.div_ceil(TC_BLOCK_N) as u32, bh, 1), t, tc_smem("dkdv", d), &p)
        }?;
    } else {
        // SAFETY: as for the preprocess launch; head_dim <= SF_ATTN_SIMT_MAX_D (`choose`).
        unsafe {
            dev.launch(simt_name("dq", dt), (shape.q_len.div_ceil(SIMT_WARPS) as u32, bh, 1), simt_block, 0, &p)
        }?;
        // SAFETY: as above.
        unsafe {
            dev.launch(simt_name("dkdv", dt), (shape.kv_len.div_ceil(SIMT_WARPS) as u32, bh, 1), simt_block, 0, &p)
        }?;
    }
    Ok(imp)
}
