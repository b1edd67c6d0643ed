//! cuBLAS and cuBLASLt GEMMs in row-major terms:
//! `C[b] = alpha * op(A[b]) @ op(B[b]) + beta * C[b]`, A, B, C row-major with leading
//! dimensions and batch strides (0 broadcasts an operand, e.g. a weight over the batch).
//!
//! Invariants:
//! - bf16 inputs always accumulate in fp32 (CUBLAS_COMPUTE_32F); C may be bf16 or f32, so
//!   weight gradients can accumulate in fp32 with beta = 1. f32 inputs use full-fp32 compute
//!   (no TF32) so that parity tests compare like with like.
//! - Row-major C = A B is column-major C^T = B^T A^T: the wrappers swap the operands and
//!   dimensions, callers never think in column-major.
//! - Handles are created on first use with the device's stream, and cuBLAS gets a fixed
//!   32 MiB workspace from the allocator (its own cudaMalloc would break CUDA graph capture).
//!   A mutex serializes use of the handles.
//! - cuBLASLt algorithm choices are cached per problem, so a steady-state step makes no
//!   heuristic queries.

use super::device::{cuda_err, CudaDevice};
use super::storage::{CudaStorage, DeviceVec};
use crate::error::{Error, Result};
use crate::tensor::DType;
use cudarc::cublas::sys as blas_sys;
use cudarc::cublaslt::sys as lt_sys;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

const WORKSPACE_BYTES: usize = 32 << 20;

/// Problem size and scalars (row-major terms).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmSpec {
    /// Rows of C.
    pub m: usize,
    /// Columns of C.
    pub n: usize,
    /// The contracted dimension.
    pub k: usize,
    /// A is stored [k, m] and used transposed (else stored [m, k]).
    pub trans_a: bool,
    /// B is stored [n, k] and used transposed (else stored [k, n]).
    pub trans_b: bool,
    pub batch: usize,
    pub alpha: f32,
    pub beta: f32,
}

/// A row-major input matrix (batch entry b at `offset + b * batch_stride`).
#[derive(Clone, Copy)]
pub struct MatIn<'a> {
    pub data: &'a CudaStorage,
    pub offset: usize,
    pub ld: usize,
    pub batch_stride: usize,
}

/// A row-major output matrix.
pub struct MatOut<'a> {
    pub data: &'a mut CudaStorage,
    pub offset: usize,
    pub ld: usize,
    pub batch_stride: usize,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct LtKey {
    dims: [usize; 3],
    trans: (bool, bool),
    batch: usize,
    ld: [usize; 3],
    strides: [usize; 3],
    types: (DType, DType),
    bias: bool,
}

struct Handles {
    blas: blas_sys::cublasHandle_t,
    lt: Option<lt_sys::cublasLtHandle_t>,
    workspace: DeviceVec<u8>,
    algos: HashMap<LtKey, lt_sys::cublasLtMatmulAlgo_t>,
}

/// The device's cuBLAS and cuBLASLt handles.
pub struct Blas {
    handles: Mutex<Handles>,
}

// SAFETY: the raw handles are only used under the mutex, on the device's one stream.
unsafe impl Send for Blas {}
// SAFETY: as above.
unsafe impl Sync for Blas {}

impl Blas {
    pub(crate) fn new(dev: &CudaDevice) -> Result<Self> {
        // SAFETY: only probes whether the library can be dlopened.
        if !unsafe { blas_sys::is_culib_present() } {
            return Err(Error::Cuda(
                "libcublas.so.13 not found: put the CUDA 13 toolkit's lib64 (or a pip nvidia/cu13/lib) on LD_LIBRARY_PATH".into(),
            ));
        }
        let blas = cudarc::cublas::result::create_handle().map_err(cuda_err("cublasCreate"))?;
        let mut workspace = DeviceVec::<u8>::alloc(dev, WORKSPACE_BYTES)?;
        // SAFETY: a fresh handle; the stream outlives the device's Blas; the workspace is held
        // by `Handles` as long as the handle exists.
        unsafe {
            cudarc::cublas::result::set_stream(blas, dev.cu_stream() as _).map_err(cuda_err("cublasSetStream"))?;
            blas_sys::cublasSetWorkspace_v2(blas, workspace.out_ptr() as *mut c_void, WORKSPACE_BYTES)
                .result()
                .map_err(cuda_err("cublasSetWorkspace"))?;
        }
        // SAFETY: only probes whether the library can be dlopened.
        let lt = if unsafe { lt_sys::is_culib_present() } {
            Some(cudarc::cublaslt::result::create_handle().map_err(cuda_err("cublasLtCreate"))?)
        } else {
            None
        };
        Ok(Self { handles: Mutex::new(Handles { blas, lt, workspace, algos: HashMap::new() }) })
    }
}

impl Drop for Blas {
    fn drop(&mut self) {
        let h = self.handles.get_mut().expect("blas lock poisoned");
        // SAFETY: the handles were created in `new` and are destroyed once.
        unsafe {
            let _ = cudarc::cublas::result::destroy_handle(h.blas);
            if let Some(lt) = h.lt {
                let _ = cudarc::cublaslt::result::destroy_handle(lt);
            }
        }
    }
}

/// Stored (rows, cols) of A and B.
fn stored_shapes(s: &GemmSpec) -> ((usize, usize), (usize, usize)) {
    let a = if s.trans_a { (s.k, s.m) } else { (s.m, s.k) };
    let b = if s.trans_b { (s.n, s.k) } else { (s.k, s.n) };
    (a, b)
}

/// Checks a row-major [batch, rows, cols] operand at (offset, ld, batch_stride).
fn check_mat(
    op: &'static str,
    what: &str,
    data: &CudaStorage,
    at: (usize, usize, usize),
    dims: [usize; 3],
) -> Result<()> {
    let (offset, ld, batch_stride) = at;
    let cols = dims[2];
    if ld < cols.max(1) {
        return Err(Error::op(op, format!("{what}: leading dimension {ld} < {cols} columns")));
    }
    data.check_span(op, what, offset, &dims, &[batch_stride, ld, 1])
}

fn check(op: &'static str, s: &GemmSpec, a: &MatIn, b: &MatIn, c: &MatOut) -> Result<()> {
    let ((ar, ac), (br, bc)) = stored_shapes(s);
    check_mat(op, "A", a.data, (a.offset, a.ld, a.batch_stride), [s.batch, ar, ac])?;
    check_mat(op, "B", b.data, (b.offset, b.ld, b.batch_stride), [s.batch, br, bc])?;
    check_mat(op, "C", c.data, (c.offset, c.ld, c.batch_stride), [s.batch, s.m, s.n])?;
    match (a.data.dtype(), b.data.dtype(), c.data.dtype()) {
        (DType::BF16, DType::BF16, DType::BF16 | DType::F32) | (DType::F32, DType::F32, DType::F32) => {}
        (x, y, z) => {
            return Err(Error::op(op, format!("no GEMM for A {x}, B {y} -> C {z} (bf16 x bf16 -> bf16/f32, or f32)")))
        }
    }
    for v in [s.m, s.n, s.k, s.batch, a.ld, b.ld, c.ld] {
        if v > i32::MAX as usize {
            return Err(Error::op(op, format!("dimension {v} exceeds cuBLAS's i32")));
        }
    }
    Ok(())
}

fn blas_type(d: DType) -> blas_sys::cudaDataType {
    if d == DType::BF16 {
        blas_sys::cudaDataType::CUDA_R_16BF
    } else {
        blas_sys::cudaDataType::CUDA_R_32F
    }
}

fn lt_type(d: DType) -> lt_sys::cudaDataType {
    if d == DType::BF16 {
        lt_sys::cudaDataType::CUDA_R_16BF
    } else {
        lt_sys::cudaDataType::CUDA_R_32F
    }
}

fn op_of(t: bool) -> blas_sys::cublasOperation_t {
    if t {
        blas_sys::cublasOperation_t::CUBLAS_OP_T
    } else {
        blas_sys::cublasOperation_t::CUBLAS_OP_N
    }
}

/// Strided-batched GEMM through cublasGemmStridedBatchedEx.
pub fn gemm(dev: &CudaDevice, s: &GemmSpec, a: MatIn, b: MatIn, c: MatOut) -> Result<()> {
    const OP: &str = "gemm";
    check(OP, s, &a, &b, &c)?;
    if s.m == 0 || s.n == 0 || s.batch == 0 {
        return Ok(());
    }
    let blas = dev.blas()?;
    let h = blas.handles.lock().expect("blas lock poisoned");
    dev.bind()?;
    let _range = super::nvtx::range("gemm");
    let (alpha, beta) = (s.alpha, s.beta);
    // SAFETY: operand spans were checked against their storages above; alpha and beta are
    // host scalars (the handle's default pointer mode) that outlive the call; the handle is
    // bound to the device's stream, which orders the GEMM with every other use of the buffers.
    unsafe {
        cudarc::cublas::result::gemm_strided_batched_ex(
            h.blas,
            op_of(s.trans_b),
            op_of(s.trans_a),
            s.n as i32,
            s.m as i32,
            s.k as i32,
            (&alpha as *const f32).cast(),
            b.data.in_ptr(b.offset),
            blas_type(b.data.dtype()),
            b.ld as i32,
            b.batch_stride as i64,
            a.data.in_ptr(a.offset),
            blas_type(a.data.dtype()),
            a.ld as i32,
            a.batch_stride as i64,
            (&beta as *const f32).cast(),
            c.data.out_ptr(c.offset),
            blas_type(c.data.dtype()),
            c.ld as i32,
            c.batch_stride as i64,
            s.batch as i32,
            blas_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
            blas_sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
        )
    }
    .map_err(cuda_err("cublasGemmStridedBatchedEx"))
}

/// RAII for cuBLASLt descriptors.
struct LtDescs {
    op: lt_sys::cublasLtMatmulDesc_t,
    layouts: Vec<lt_sys::cublasLtMatrixLayout_t>,
    pref: Option<lt_sys::cublasLtMatmulPreference_t>,
}

impl Drop for LtDescs {
    fn drop(&mut self) {
        // SAFETY: each descriptor was created once and is destroyed once.
        unsafe {
            for l in self.layouts.drain(..) {
                let _ = cudarc::cublaslt::result::destroy_matrix_layout(l);
            }
            if let Some(p) = self.pref.take() {
                let _ = cudarc::cublaslt::result::destroy_matmul_pref(p);
            }
            let _ = cudarc::cublaslt::result::destroy_matmul_desc(self.op);
        }
    }
}

/// A column-major cuBLASLt layout with batch count and stride.
fn lt_layout(
    d: DType,
    rows: usize,
    cols: usize,
    ld: usize,
    batch: usize,
    stride: usize,
) -> Result<lt_sys::cublasLtMatrixLayout_t> {
    let l = cudarc::cublaslt::result::create_matrix_layout(lt_type(d), rows as u64, cols as u64, ld as i64)
        .map_err(cuda_err("cublasLtMatrixLayoutCreate"))?;
    let count = batch as i32;
    let stride = stride as i64;
    // SAFETY: attribute buffers match the attribute types (int32 count, int64 stride).
    unsafe {
        cudarc::cublaslt::result::set_matrix_layout_attribute(
            l,
            lt_sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_BATCH_COUNT,
            (&count as *const i32).cast(),
            4,
        )
        .map_err(cuda_err("layout batch count"))?;
        cudarc::cublaslt::result::set_matrix_layout_attribute(
            l,
            lt_sys::cublasLtMatrixLayoutAttribute_t::CUBLASLT_MATRIX_LAYOUT_STRIDED_BATCH_OFFSET,
            (&stride as *const i64).cast(),
            8,
        )
        .map_err(cuda_err("layout batch stride"))?;
    }
    Ok(l)
}

/// GEMM through cuBLASLt with an optional fused bias: `C = alpha op(A) op(B) + beta C + bias`,
/// bias [n] (C's dtype) added to every row of C.
pub fn lt_matmul(
    dev: &CudaDevice,
    s: &GemmSpec,
    a: MatIn,
    b: MatIn,
    c: MatOut,
    bias: Option<&CudaStorage>,
) -> Result<()> {
    const OP: &str = "lt_matmul";
    check(OP, s, &a, &b, &c)?;
    if let Some(bias) = bias {
        bias.check(OP, "bias", c.data.dtype(), 0, s.n)?;
    }
    if s.m == 0 || s.n == 0 || s.batch == 0 {
        return Ok(());
    }
    let blas = dev.blas()?;
    let mut guard = blas.handles.lock().expect("blas lock poisoned");
    let h = &mut *guard;
    let lt = h.lt.ok_or_else(|| Error::Cuda("libcublasLt.so.13 not found: see LD_LIBRARY_PATH".into()))?;
    dev.bind()?;
    let _range = super::nvtx::range("lt_matmul");

    // Column-major view: C^T [n x m] = op(B)^T [n x k] op(A)^T [k x m].
    let ((ar, ac), (br, bc)) = stored_shapes(s);
    let op_desc = cudarc::cublaslt::result::create_matmul_desc(
        lt_sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
        lt_sys::cudaDataType::CUDA_R_32F,
    )
    .map_err(cuda_err("cublasLtMatmulDescCreate"))?;
    let mut descs = LtDescs { op: op_desc, layouts: Vec::new(), pref: None };
    let (ta, tb) = (s.trans_b as i32, s.trans_a as i32); // CUBLAS_OP_N = 0, CUBLAS_OP_T = 1
    let epilogue = if bias.is_some() {
        lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_BIAS
    } else {
        lt_sys::cublasLtEpilogue_t::CUBLASLT_EPILOGUE_DEFAULT
    };
    let bias_ptr: *const c_void = bias.map_or(std::ptr::null(), |b| b.in_ptr(0));
    // SAFETY: attribute buffers match the attribute types (int32 ops, enum epilogue, pointer).
    unsafe {
        use lt_sys::cublasLtMatmulDescAttributes_t as A;
        let set = |attr: A, p: *const c_void, n: usize| {
            cudarc::cublaslt::result::set_matmul_desc_attribute(descs.op, attr, p, n)
                .map_err(cuda_err("cublasLtMatmulDescSetAttribute"))
        };
        set(A::CUBLASLT_MATMUL_DESC_TRANSA, (&ta as *const i32).cast(), 4)?;
        set(A::CUBLASLT_MATMUL_DESC_TRANSB, (&tb as *const i32).cast(), 4)?;
        set(
            A::CUBLASLT_MATMUL_DESC_EPILOGUE,
            (&epilogue as *const lt_sys::cublasLtEpilogue_t).cast(),
            std::mem::size_of::<lt_sys::cublasLtEpilogue_t>(),
        )?;
        if bias.is_some() {
            set(
                A::CUBLASLT_MATMUL_DESC_BIAS_POINTER,
                (&bias_ptr as *const *const c_void).cast(),
                std::mem::size_of::<*const c_void>(),
            )?;
        }
    }
    // Column-major layouts of the stored matrices: a row-major [r, c] with ld is [c, r] col-major.
    let lb = lt_layout(b.data.dtype(), bc, br, b.ld, s.batch, b.batch_stride)?;
    descs.layouts.push(lb);
    let la = lt_layout(a.data.dtype(), ac, ar, a.ld, s.batch, a.batch_stride)?;
    descs.layouts.push(la);
    let lc = lt_layout(c.data.dtype(), s.n, s.m, c.ld, s.batch, c.batch_stride)?;
    descs.layouts.push(lc);

    let key = LtKey {
        dims: [s.m, s.n, s.k],
        trans: (s.trans_a, s.trans_b),
        batch: s.batch,
        ld: [a.ld, b.ld, c.ld],
        strides: [a.batch_stride, b.batch_stride, c.batch_stride],
        types: (a.data.dtype(), c.data.dtype()),
        bias: bias.is_some(),
    };
    let algo = match h.algos.get(&key) {
        Some(a) => *a,
        None => {
            let pref =
                cudarc::cublaslt::result::create_matmul_pref().map_err(cuda_err("cublasLtMatmulPreferenceCreate"))?;
            descs.pref = Some(pref);
            let ws = WORKSPACE_BYTES as u64;
            // SAFETY: a u64 buffer for the workspace-size attribute; all descriptors are live.
            let found = unsafe {
                cudarc::cublaslt::result::set_matmul_pref_attribute(
                    pref,
                    lt_sys::cublasLtMatmulPreferenceAttributes_t::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                    (&ws as *const u64).cast(),
                    8,
                )
                .map_err(cuda_err("preference workspace"))?;
                cudarc::cublaslt::result::get_matmul_algo_heuristic(lt, descs.op, lb, la, lc, lc, pref)
                    .map_err(cuda_err("cublasLtMatmulAlgoGetHeuristic"))?
            };
            h.algos.insert(key, found.algo);
            found.algo
        }
    };
    let (alpha, beta) = (s.alpha, s.beta);
    let ws_ptr = h.workspace.out_ptr() as *mut c_void;
    // SAFETY: spans checked above; C is both the beta input and the output (in place is
    // allowed when layouts match); scalars are host values outliving the call; the workspace
    // is the device's and only used under the mutex; the stream orders all buffer uses.
    unsafe {
        cudarc::cublaslt::result::matmul(
            lt,
            descs.op,
            (&alpha as *const f32).cast(),
            (&beta as *const f32).cast(),
            b.data.in_ptr(b.offset),
            lb,
            a.data.in_ptr(a.offset),
            la,
            c.data.in_ptr(c.offset),
            lc,
            c.data.out_ptr(c.offset),
            lc,
            &algo,
            ws_ptr,
            WORKSPACE_BYTES,
            dev.cu_stream() as _,
        )
    }
    .map_err(cuda_err("cublasLtMatmul"))
}
