//! CUDA kernels against the CPU: every kernel family on random inputs at awkward shapes
//! (odd sizes, sequence tails that are not tile multiples, broadcasts, strided views).
//!
//! Tolerance rule (FlashAttention's): the kernel's max error against an f64 reference
//! computed from the same (dtype-rounded) inputs must be at most 2x (3x for gradients) the
//! error of the naive computation at the same precision, plus one rounding of the output
//! (`dtype.epsilon() * scale`, so an exact naive result does not demand an exact kernel).
//! "Naive" is the CPU backend's op where the engine has one (unary, binary, reduce,
//! matmul), otherwise a straightforward f32 implementation below, rounded to the dtype at
//! the op boundaries. Each check prints kernel error, naive error and budget.
//!
//! Bit-exact checks where the contract says so: Philox uniforms, the IDA blend, lookups,
//! argmax indices.
//!
//! Without a usable GPU every test prints "SKIPPED: no CUDA device" and returns: on such a
//! machine these tests are skipped, not passed.
#![cfg(feature = "cuda")]

use senseflow::backend::cuda::attention::{self, AttnImpl, AttnIn, AttnOut, AttnShape, KeyMask};
use senseflow::backend::cuda::conv::{self, ConvGeometry};
use senseflow::backend::cuda::elementwise::{self, BinaryOp, UnaryOp as KUnary};
use senseflow::backend::cuda::embedding::{self, TimestepEmbedding};
use senseflow::backend::cuda::gemm::{self, GemmSpec, MatIn, MatOut};
use senseflow::backend::cuda::loss::{self, Loss};
use senseflow::backend::cuda::norm::{self, BatchGrad, GroupNormShape, ParamGrad};
use senseflow::backend::cuda::optim::{self, AdamwConfig, AdamwTensor, BlendPair};
use senseflow::backend::cuda::reduce::{self, ReduceOp};
use senseflow::backend::cuda::rng::{self, Distribution};
use senseflow::backend::cuda::rope::{self, RopeShape, RopeTables};
use senseflow::backend::cuda::views::{Heads, PerBatch, Rows, Tokens};
use senseflow::backend::cuda::{self as cuda, softmax, upsample, CudaDevice, CudaStorage, DeviceVec};
use senseflow::ops::UnaryOp;
use senseflow::rng::Philox;
use senseflow::tensor::{DType, Device, Layout, Tensor};
use std::ops::{Add, AddAssign, Div, Mul, Neg, Sub};
use std::sync::Arc;

// ---- harness ---------------------------------------------------------------------------------

fn gpu() -> Option<Arc<CudaDevice>> {
    if !cuda::is_available() {
        println!("SKIPPED: no CUDA device");
        return None;
    }
    let dev = cuda::device(0).expect("cuda:0 is visible but could not be initialized");
    println!("device: {dev:?}");
    Some(dev)
}

macro_rules! gpu_or_skip {
    () => {
        match gpu() {
            Some(d) => d,
            None => return,
        }
    };
}

const DTYPES: [DType; 2] = [DType::F32, DType::BF16];

fn q(v: f32, dt: DType) -> f32 {
    match dt {
        DType::BF16 => half::bf16::from_f32(v).to_f32(),
        DType::F16 => half::f16::from_f32(v).to_f32(),
        DType::F32 => v,
    }
}

fn qv(v: &[f32], dt: DType) -> Vec<f32> {
    v.iter().map(|&x| q(x, dt)).collect()
}

/// Standard normal values, already rounded to `dt` (what the kernel sees).
fn randn(n: usize, seed: u64, dt: DType) -> Vec<f32> {
    qv(&Philox::new(seed).normal_vec(n), dt)
}

fn up(dev: &CudaDevice, v: &[f32], dt: DType) -> CudaStorage {
    CudaStorage::from_f32(dev, v, dt).expect("host -> device")
}

fn down(dev: &CudaDevice, s: &CudaStorage) -> Vec<f32> {
    s.to_vec_f32(dev).expect("device -> host")
}

fn zeros(dev: &CudaDevice, dt: DType, n: usize) -> CudaStorage {
    CudaStorage::zeros(dev, dt, n).expect("alloc")
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| f64::from(x)).collect()
}

fn max_err(got: &[f32], want: &[f64]) -> f64 {
    assert_eq!(got.len(), want.len(), "length mismatch");
    got.iter().zip(want).fold(0.0, |m, (&g, &w)| {
        let e = (f64::from(g) - w).abs();
        if e.is_nan() {
            f64::INFINITY
        } else {
            m.max(e)
        }
    })
}

/// The rule from the module doc; `factor` is 2 for outputs, 3 for gradients.
fn check(name: &str, dt: DType, got: &[f32], naive: &[f32], reference: &[f64], factor: f64) {
    let scale = reference.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    let err = max_err(got, reference);
    let base = max_err(naive, reference);
    let budget = factor * base + f64::from(dt.epsilon()) * scale;
    println!(
        "{name:<44} {dt:>4}: err {err:.3e}  naive {base:.3e}  budget {budget:.3e}  ({:.0}% of budget, scale {scale:.2e})",
        100.0 * err / budget
    );
    assert!(err <= budget, "{name} ({dt}): error {err:.3e} exceeds {budget:.3e}");
}

/// Arithmetic for references written once and run in f32 (naive) and f64 (reference).
trait Real:
    Copy
    + PartialOrd
    + Add<Output = Self>
    + Sub<Output = Self>
    + Mul<Output = Self>
    + Div<Output = Self>
    + Neg<Output = Self>
    + AddAssign
{
    fn of(v: f64) -> Self;
    fn f(self) -> f64;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn zero() -> Self {
        Self::of(0.0)
    }
    fn one() -> Self {
        Self::of(1.0)
    }
}

macro_rules! real {
    ($t:ty) => {
        impl Real for $t {
            fn of(v: f64) -> Self {
                v as $t
            }
            fn f(self) -> f64 {
                self as f64
            }
            fn exp(self) -> Self {
                <$t>::exp(self)
            }
            fn ln(self) -> Self {
                <$t>::ln(self)
            }
            fn sqrt(self) -> Self {
                <$t>::sqrt(self)
            }
        }
    };
}
real!(f32);
real!(f64);

fn conv<R: Real>(v: &[f32]) -> Vec<R> {
    v.iter().map(|&x| R::of(f64::from(x))).collect()
}

// ---- allocator, copies, device -------------------------------------------------------------------

#[test]
fn copies_round_trip_and_steady_state_allocates_nothing() {
    let dev = gpu_or_skip!();
    for dt in DTYPES {
        let v = randn(1001, 1, dt);
        let t = Tensor::from_f32(v.clone(), &[7, 11, 13], dt).unwrap();
        let on = t.to_device(Device::Cuda(0)).unwrap();
        assert_eq!(on.device(), Device::Cuda(0));
        assert_eq!(on.to_device(Device::Cpu).unwrap().to_vec_f32().unwrap(), v);
        // A non-contiguous view comes back gathered.
        let tv = senseflow::ops::transpose(&on, 0, 2).unwrap();
        let back = tv.to_device(Device::Cpu).unwrap().to_vec_f32().unwrap();
        let want = senseflow::ops::transpose(&t, 0, 2).unwrap().to_vec_f32().unwrap();
        assert_eq!(back, want);
    }
    for _ in 0..3 {
        let a = CudaStorage::alloc(&dev, DType::F32, 12345).unwrap();
        let b = CudaStorage::alloc(&dev, DType::BF16, 999).unwrap();
        drop((a, b));
    }
    let before = dev.alloc_stats();
    for _ in 0..100 {
        let a = CudaStorage::alloc(&dev, DType::F32, 12345).unwrap();
        let b = CudaStorage::alloc(&dev, DType::BF16, 999).unwrap();
        drop((a, b));
    }
    let after = dev.alloc_stats();
    println!("allocator: {before:?} -> {after:?}");
    assert_eq!(after.driver_allocs, before.driver_allocs, "steady state must not call cuMemAlloc");
    assert_eq!(after.bytes_in_use, before.bytes_in_use);
}

// ---- elementwise ---------------------------------------------------------------------------------

const UNARY: [UnaryOp; 14] = [
    UnaryOp::Exp,
    UnaryOp::Log,
    UnaryOp::Sqrt,
    UnaryOp::Rsqrt,
    UnaryOp::Tanh,
    UnaryOp::Sigmoid,
    UnaryOp::Silu,
    UnaryOp::GeluErf,
    UnaryOp::GeluTanh,
    UnaryOp::QuickGelu,
    UnaryOp::Relu,
    UnaryOp::LeakyRelu(0.2),
    UnaryOp::Sqr,
    UnaryOp::Abs,
];

fn kernel_unary(op: UnaryOp) -> (KUnary, f32) {
    match op {
        UnaryOp::Exp => (KUnary::SF_UNARY_EXP, 0.0),
        UnaryOp::Log => (KUnary::SF_UNARY_LOG, 0.0),
        UnaryOp::Sqrt => (KUnary::SF_UNARY_SQRT, 0.0),
        UnaryOp::Rsqrt => (KUnary::SF_UNARY_RSQRT, 0.0),
        UnaryOp::Tanh => (KUnary::SF_UNARY_TANH, 0.0),
        UnaryOp::Sigmoid => (KUnary::SF_UNARY_SIGMOID, 0.0),
        UnaryOp::Silu => (KUnary::SF_UNARY_SILU, 0.0),
        UnaryOp::GeluErf => (KUnary::SF_UNARY_GELU_ERF, 0.0),
        UnaryOp::GeluTanh => (KUnary::SF_UNARY_GELU_TANH, 0.0),
        UnaryOp::QuickGelu => (KUnary::SF_UNARY_QUICK_GELU, 0.0),
        UnaryOp::Relu => (KUnary::SF_UNARY_RELU, 0.0),
        UnaryOp::LeakyRelu(s) => (KUnary::SF_UNARY_LEAKY_RELU, s),
        UnaryOp::Sqr => (KUnary::SF_UNARY_SQR, 0.0),
        UnaryOp::Abs => (KUnary::SF_UNARY_ABS, 0.0),
        // Not in UNARY_OPS: elementwise.cu has no nan_to_num kernel yet (docs/CUDA.md).
        UnaryOp::NanToNum => panic!("nan_to_num has no CUDA kernel yet"),
    }
}

fn sig(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// f and f' in f64.
fn unary64(op: UnaryOp, x: f64) -> (f64, f64) {
    let k = (2.0 / std::f64::consts::PI).sqrt();
    match op {
        UnaryOp::Exp => (x.exp(), x.exp()),
        UnaryOp::Log => (x.ln(), 1.0 / x),
        UnaryOp::Sqrt => (x.sqrt(), 0.5 / x.sqrt()),
        UnaryOp::Rsqrt => (1.0 / x.sqrt(), -0.5 * x.powf(-1.5)),
        UnaryOp::Tanh => (x.tanh(), 1.0 - x.tanh().powi(2)),
        UnaryOp::Sigmoid => (sig(x), sig(x) * (1.0 - sig(x))),
        UnaryOp::Silu => (x * sig(x), sig(x) * (1.0 + x * (1.0 - sig(x)))),
        UnaryOp::GeluErf => {
            let cdf = 0.5 * (1.0 + libm::erf(x / 2f64.sqrt()));
            (x * cdf, cdf + x * (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt())
        }
        UnaryOp::GeluTanh => {
            let u = k * (x + 0.044715 * x.powi(3));
            let t = u.tanh();
            (0.5 * x * (1.0 + t), 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * k * (1.0 + 3.0 * 0.044715 * x * x))
        }
        UnaryOp::QuickGelu => {
            let s = sig(1.702 * x);
            (x * s, s + 1.702 * x * s * (1.0 - s))
        }
        UnaryOp::Relu => (x.max(0.0), if x > 0.0 { 1.0 } else { 0.0 }),
        UnaryOp::LeakyRelu(s) => (if x > 0.0 { x } else { f64::from(s) * x }, if x > 0.0 { 1.0 } else { f64::from(s) }),
        UnaryOp::Sqr => (x * x, 2.0 * x),
        UnaryOp::NanToNum => (if x.is_nan() { 0.0 } else { x.clamp(f32::MIN as f64, f32::MAX as f64) }, 1.0),
        UnaryOp::Abs => (
            x.abs(),
            if x > 0.0 {
                1.0
            } else if x < 0.0 {
                -1.0
            } else {
                0.0
            },
        ),
    }
}

#[test]
fn unary_fwd_bwd() {
    let dev = gpu_or_skip!();
    let n = 100_003; // not a multiple of any vector width
    for dt in DTYPES {
        for op in UNARY {
            let mut x = randn(n, 2, dt);
            if matches!(op, UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Rsqrt) {
                x = qv(&x.iter().map(|v| v.abs() + 0.1).collect::<Vec<_>>(), dt);
            }
            let g = randn(n, 3, dt);
            let (kop, alpha) = kernel_unary(op);
            let xd = up(&dev, &x, dt);
            let gd = up(&dev, &g, dt);
            let mut yd = zeros(&dev, dt, n);
            let mut dxd = zeros(&dev, dt, n);
            elementwise::unary_fwd(&dev, kop, alpha, &xd, &mut yd).unwrap();
            elementwise::unary_bwd(&dev, kop, alpha, &xd, &gd, &mut dxd).unwrap();
            // Naive: the CPU backend's op (f32 math, output stored in dt) and its backward rule.
            let xt = Tensor::from_f32(x.clone(), &[n], dt).unwrap();
            let y_cpu = senseflow::ops::unary(op, &xt).unwrap().to_vec_f32().unwrap();
            let dx_cpu: Vec<f32> = x.iter().zip(&y_cpu).zip(&g).map(|((&x, &y), &g)| q(g * op.df(x, y), dt)).collect();
            let (y64, dx64): (Vec<f64>, Vec<f64>) = x
                .iter()
                .zip(&g)
                .map(|(&x, &g)| {
                    let (f, d) = unary64(op, f64::from(x));
                    (f, f64::from(g) * d)
                })
                .unzip();
            check(&format!("unary_fwd {}", op.name()), dt, &down(&dev, &yd), &y_cpu, &y64, 2.0);
            check(&format!("unary_bwd {}", op.name()), dt, &down(&dev, &dxd), &dx_cpu, &dx64, 3.0);
        }
    }
}

#[test]
fn affine_and_cast() {
    let dev = gpu_or_skip!();
    let n = 4099;
    for dt in DTYPES {
        let x = randn(n, 4, dt);
        let xd = up(&dev, &x, dt);
        let mut yd = zeros(&dev, dt, n);
        elementwise::affine(&dev, &xd, &mut yd, 1.7, -0.3).unwrap();
        let naive = senseflow::ops::affine(&Tensor::from_f32(x.clone(), &[n], dt).unwrap(), 1.7, -0.3)
            .unwrap()
            .to_vec_f32()
            .unwrap();
        let want: Vec<f64> = x.iter().map(|&v| f64::from(v) * f64::from(1.7f32) + f64::from(-0.3f32)).collect();
        check("affine", dt, &down(&dev, &yd), &naive, &want, 2.0);
    }
    // Casts: bf16 -> f32 is exact; f32 -> bf16 rounds to nearest even, as the CPU does.
    let x = Philox::new(5).normal_vec(n);
    let f = up(&dev, &x, DType::F32);
    let mut b = zeros(&dev, DType::BF16, n);
    elementwise::cast(&dev, &f, &mut b).unwrap();
    assert_eq!(down(&dev, &b), qv(&x, DType::BF16), "cast f32 -> bf16");
    let mut f2 = zeros(&dev, DType::F32, n);
    elementwise::cast(&dev, &b, &mut f2).unwrap();
    assert_eq!(down(&dev, &f2), qv(&x, DType::BF16), "cast bf16 -> f32");
    println!("cast f32 <-> bf16: bit-exact");
}

fn strides_of(shape: &[usize]) -> Vec<usize> {
    Layout::contiguous(shape).strides
}

/// Value of a broadcast operand at output index `idx` (right-aligned shapes).
fn at(v: &[f32], l: &Layout, out: &[usize], idx: &[usize]) -> f32 {
    let pad = out.len() - l.shape.len();
    let off: usize = (0..l.shape.len()).map(|i| if l.shape[i] == 1 { 0 } else { idx[pad + i] * l.strides[i] }).sum();
    v[l.offset + off]
}

fn unravel(mut i: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for d in (0..shape.len()).rev() {
        idx[d] = i % shape[d];
        i /= shape[d];
    }
    idx
}

#[test]
fn binary_broadcast_fwd_bwd() {
    let dev = gpu_or_skip!();
    // a: a transposed [3, 1, 7, 5] view of a [5, 7, 1, 3] buffer; b: [4, 1, 5] contiguous.
    let a_buf_shape = [5usize, 7, 1, 3];
    let a_layout = Layout { shape: vec![3, 1, 7, 5], strides: vec![1, 3, 3, 21], offset: 0 };
    let b_layout = Layout::contiguous(&[4, 1, 5]);
    let out = [3usize, 4, 7, 5];
    let n: usize = out.iter().product();
    for dt in DTYPES {
        let av = randn(a_buf_shape.iter().product(), 6, dt);
        let bv: Vec<f32> = qv(&randn(20, 7, DType::F32).iter().map(|v| v.abs() + 0.5).collect::<Vec<_>>(), dt);
        let g = randn(n, 8, dt);
        let (ad, bd, gd) = (up(&dev, &av, dt), up(&dev, &bv, dt), up(&dev, &g, dt));
        for (op, name) in [
            (BinaryOp::SF_BINARY_ADD, "add"),
            (BinaryOp::SF_BINARY_SUB, "sub"),
            (BinaryOp::SF_BINARY_MUL, "mul"),
            (BinaryOp::SF_BINARY_DIV, "div"),
        ] {
            let mut od = zeros(&dev, dt, n);
            elementwise::binary_fwd(&dev, op, &ad, &a_layout, &bd, &b_layout, &mut od).unwrap();
            let mut da = zeros(&dev, dt, a_layout.numel());
            let mut db = zeros(&dev, dt, b_layout.numel());
            elementwise::binary_bwd(&dev, op, &ad, &a_layout, &bd, &b_layout, &gd, Some(&mut da), Some(&mut db))
                .unwrap();

            // Naive forward: the CPU op on the same (viewed) tensors.
            let at_ = senseflow::ops::permute(&Tensor::from_f32(av.clone(), &a_buf_shape, dt).unwrap(), &[3, 2, 1, 0])
                .unwrap();
            let at_ = senseflow::ops::transpose(&at_, 1, 2).unwrap();
            let bt = Tensor::from_f32(bv.clone(), &[4, 1, 5], dt).unwrap();
            let naive = match name {
                "add" => senseflow::ops::add(&at_, &bt),
                "sub" => senseflow::ops::sub(&at_, &bt),
                "mul" => senseflow::ops::mul(&at_, &bt),
                _ => senseflow::ops::div(&at_, &bt),
            }
            .unwrap()
            .to_vec_f32()
            .unwrap();
            let mut want = vec![0f64; n];
            let mut want_da = vec![0f64; a_layout.numel()];
            let mut want_db = vec![0f64; b_layout.numel()];
            let mut naive_da = vec![0f32; a_layout.numel()];
            let mut naive_db = vec![0f32; b_layout.numel()];
            for (i, w) in want.iter_mut().enumerate() {
                let idx = unravel(i, &out);
                let (a, b) = (f64::from(at(&av, &a_layout, &out, &idx)), f64::from(at(&bv, &b_layout, &out, &idx)));
                let gi = f64::from(g[i]);
                let (val, ga, gb) = match name {
                    "add" => (a + b, gi, gi),
                    "sub" => (a - b, gi, -gi),
                    "mul" => (a * b, gi * b, gi * a),
                    _ => (a / b, gi / b, -gi * a / (b * b)),
                };
                *w = val;
                // Gradient positions: contiguous index in each operand's own shape.
                let ia: usize = {
                    let s = strides_of(&a_layout.shape);
                    (0..4).map(|d| if a_layout.shape[d] == 1 { 0 } else { idx[d] * s[d] }).sum()
                };
                let ib: usize = {
                    let s = strides_of(&b_layout.shape);
                    (0..3).map(|d| if b_layout.shape[d] == 1 { 0 } else { idx[d + 1] * s[d] }).sum()
                };
                want_da[ia] += ga;
                want_db[ib] += gb;
                naive_da[ia] += q(ga as f32, dt);
                naive_db[ib] += q(gb as f32, dt);
            }
            check(&format!("binary_fwd {name}"), dt, &down(&dev, &od), &naive, &want, 2.0);
            check(&format!("binary_bwd {name} da"), dt, &down(&dev, &da), &qv(&naive_da, dt), &want_da, 3.0);
            check(&format!("binary_bwd {name} db"), dt, &down(&dev, &db), &qv(&naive_db, dt), &want_db, 3.0);
        }
    }
}

// ---- reduce / softmax ------------------------------------------------------------------------------

#[test]
fn reduce_sum_mean_max() {
    let dev = gpu_or_skip!();
    let (rows, cols) = (97, 1025);
    for dt in DTYPES {
        let x = randn(rows * cols, 9, dt);
        let xd = up(&dev, &x, dt);
        let xt = Tensor::from_f32(x.clone(), &[rows, cols], dt).unwrap();
        for (op, name) in
            [(ReduceOp::SF_REDUCE_SUM, "sum"), (ReduceOp::SF_REDUCE_MEAN, "mean"), (ReduceOp::SF_REDUCE_MAX, "max")]
        {
            let mut out = zeros(&dev, dt, rows);
            let mut argmax = DeviceVec::<i32>::alloc(&dev, rows).unwrap();
            let am = (op == ReduceOp::SF_REDUCE_MAX).then_some(&mut argmax);
            reduce::reduce_fwd(&dev, op, &xd, Rows::contiguous(rows, cols), &mut out, am).unwrap();
            let naive = match name {
                "sum" => xt.sum(&[-1], false),
                "mean" => xt.mean(&[-1], false),
                _ => xt.max(&[-1], false),
            }
            .unwrap()
            .to_vec_f32()
            .unwrap();
            let want: Vec<f64> = x
                .chunks(cols)
                .map(|r| match name {
                    "sum" => r.iter().map(|&v| f64::from(v)).sum(),
                    "mean" => r.iter().map(|&v| f64::from(v)).sum::<f64>() / cols as f64,
                    _ => r.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(f64::from(v))),
                })
                .collect();
            check(&format!("reduce_fwd {name}"), dt, &down(&dev, &out), &naive, &want, 2.0);
            if name == "max" {
                let (_, idx) = senseflow::backend::cpu::reduce::max_rows(&x, cols);
                let got: Vec<usize> = argmax.to_vec(&dev).unwrap().iter().map(|&i| i as usize).collect();
                assert_eq!(got, idx, "argmax must match the CPU's first maximum");
            }
            // Backward: exact (a broadcast, a scaling by 1/cols, or a routing).
            let g = randn(rows, 10, dt);
            let gd = up(&dev, &g, dt);
            let mut dx = zeros(&dev, dt, rows * cols);
            reduce::reduce_bwd(&dev, op, &gd, (name == "max").then_some(&argmax), rows, cols, &mut dx).unwrap();
            let (_, idx) = senseflow::backend::cpu::reduce::max_rows(&x, cols);
            let want: Vec<f64> = (0..rows * cols)
                .map(|i| {
                    let (r, c) = (i / cols, i % cols);
                    let gr = f64::from(g[r]);
                    match name {
                        "sum" => gr,
                        "mean" => gr / cols as f64,
                        _ => {
                            if c == idx[r] {
                                gr
                            } else {
                                0.0
                            }
                        }
                    }
                })
                .collect();
            let naive: Vec<f32> = want.iter().map(|&v| q(v as f32, dt)).collect();
            check(&format!("reduce_bwd {name}"), dt, &down(&dev, &dx), &naive, &want, 3.0);
        }
    }
}

fn softmax_ref<R: Real>(x: &[f32], cols: usize) -> Vec<R> {
    let mut out = Vec::with_capacity(x.len());
    for r in x.chunks(cols) {
        let r: Vec<R> = conv(r);
        let m = r.iter().fold(r[0], |m, &v| if v > m { v } else { m });
        let e: Vec<R> = r.iter().map(|&v| (v - m).exp()).collect();
        let mut s = R::zero();
        for &v in &e {
            s += v;
        }
        out.extend(e.into_iter().map(|v| v / s));
    }
    out
}

#[test]
fn softmax_fwd_bwd() {
    let dev = gpu_or_skip!();
    let (rows, cols, stride) = (97, 1029, 1040); // strided rows
    for dt in DTYPES {
        let buf = qv(&randn(rows * stride, 11, DType::F32).iter().map(|v| 3.0 * v).collect::<Vec<_>>(), dt);
        let x: Vec<f32> = (0..rows).flat_map(|r| buf[r * stride..r * stride + cols].to_vec()).collect();
        let xd = up(&dev, &buf, dt);
        let mut yd = zeros(&dev, dt, rows * cols);
        softmax::softmax_fwd(&dev, &xd, Rows { offset: 0, rows, cols, row_stride: stride }, &mut yd).unwrap();
        let y32: Vec<f32> = qv(&softmax_ref::<f32>(&x, cols), dt);
        let y64: Vec<f64> = softmax_ref::<f64>(&x, cols);
        let y = down(&dev, &yd);
        check("softmax_fwd", dt, &y, &y32, &y64, 2.0);

        let g = randn(rows * cols, 12, dt);
        let gd = up(&dev, &g, dt);
        let mut dx = zeros(&dev, dt, rows * cols);
        softmax::softmax_bwd(&dev, &yd, &gd, rows, cols, &mut dx).unwrap();
        // The backward sees the stored y; both references start from it.
        let bwd = |yy: &[f64], gg: &[f64]| -> Vec<f64> {
            yy.chunks(cols)
                .zip(gg.chunks(cols))
                .flat_map(|(yr, gr)| {
                    let dot: f64 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                    yr.iter().zip(gr).map(move |(a, b)| a * (b - dot)).collect::<Vec<_>>()
                })
                .collect()
        };
        let want = bwd(&f64s(&y), &f64s(&g));
        let naive: Vec<f32> = y
            .chunks(cols)
            .zip(g.chunks(cols))
            .flat_map(|(yr, gr)| {
                let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                yr.iter().zip(gr).map(move |(a, b)| q(a * (b - dot), dt)).collect::<Vec<_>>()
            })
            .collect();
        check("softmax_bwd", dt, &down(&dev, &dx), &naive, &want, 3.0);
    }
}

// ---- norms -------------------------------------------------------------------------------------------

/// layer_norm (or rms_norm) forward and backward on rows of `dim`; returns (y, dx, dw, db).
#[allow(clippy::type_complexity)]
fn norm_ref<R: Real>(
    x: &[f32],
    w: &[f32],
    b: &[f32],
    g: &[f32],
    dim: usize,
    eps: f64,
    rms: bool,
) -> (Vec<R>, Vec<R>, Vec<R>, Vec<R>) {
    let (w, b): (Vec<R>, Vec<R>) = (conv(w), conv(b));
    let mut y = Vec::new();
    let mut dx = Vec::new();
    let mut dw = vec![R::zero(); dim];
    let mut db = vec![R::zero(); dim];
    let n = R::of(dim as f64);
    for (xr, gr) in x.chunks(dim).zip(g.chunks(dim)) {
        let (xr, gr): (Vec<R>, Vec<R>) = (conv(xr), conv(gr));
        let mut mean = R::zero();
        if !rms {
            for &v in &xr {
                mean += v;
            }
            mean = mean / n;
        }
        let mut var = R::zero();
        for &v in &xr {
            var += (v - mean) * (v - mean);
        }
        let rstd = R::one() / (var / n + R::of(eps)).sqrt();
        let xhat: Vec<R> = xr.iter().map(|&v| (v - mean) * rstd).collect();
        let (mut a, mut c) = (R::zero(), R::zero());
        for d in 0..dim {
            y.push(xhat[d] * w[d] + if rms { R::zero() } else { b[d] });
            let dyw = gr[d] * w[d];
            a += dyw * xhat[d];
            c += dyw;
            dw[d] += gr[d] * xhat[d];
            db[d] += gr[d];
        }
        let (a, c) = (a / n, if rms { R::zero() } else { c / n });
        for d in 0..dim {
            dx.push(rstd * (gr[d] * w[d] - c - xhat[d] * a));
        }
    }
    (y, dx, dw, db)
}

#[test]
fn layer_norm_and_rms_norm() {
    let dev = gpu_or_skip!();
    let (rows, dim, stride) = (131, 1030, 1031); // > one backward block of rows, strided input
    let eps = 1e-5f32;
    for dt in DTYPES {
        let buf = randn(rows * stride, 13, dt);
        let x: Vec<f32> = (0..rows).flat_map(|r| buf[r * stride..r * stride + dim].to_vec()).collect();
        let w = qv(&randn(dim, 14, DType::F32).iter().map(|v| 1.0 + 0.3 * v).collect::<Vec<_>>(), dt);
        let b = randn(dim, 15, dt);
        let g = randn(rows * dim, 16, dt);
        let view = Rows { offset: 0, rows, cols: dim, row_stride: stride };
        let (xd, wd, bd, gd) = (up(&dev, &buf, dt), up(&dev, &w, dt), up(&dev, &b, dt), up(&dev, &g, dt));
        for rms in [false, true] {
            let name = if rms { "rms_norm" } else { "layer_norm" };
            let mut y = zeros(&dev, dt, rows * dim);
            let mut mean = zeros(&dev, DType::F32, rows);
            let mut rstd = zeros(&dev, DType::F32, rows);
            let mut dx = zeros(&dev, dt, rows * dim);
            let mut dw = zeros(&dev, dt, dim);
            let mut db = zeros(&dev, dt, dim);
            if rms {
                norm::rms_norm_fwd(&dev, &xd, view, Some(&wd), eps, &mut y, &mut rstd).unwrap();
                norm::rms_norm_bwd(
                    &dev,
                    &xd,
                    view,
                    Some(&wd),
                    &gd,
                    &rstd,
                    &mut dx,
                    Some(ParamGrad { out: &mut dw, accumulate: false }),
                )
                .unwrap();
            } else {
                norm::layer_norm_fwd(&dev, &xd, view, Some(&wd), Some(&bd), eps, &mut y, &mut mean, &mut rstd).unwrap();
                norm::layer_norm_bwd(
                    &dev,
                    &xd,
                    view,
                    Some(&wd),
                    &gd,
                    &mean,
                    &rstd,
                    &mut dx,
                    Some(ParamGrad { out: &mut dw, accumulate: false }),
                    Some(ParamGrad { out: &mut db, accumulate: false }),
                )
                .unwrap();
            }
            let (y32, dx32, dw32, db32) = norm_ref::<f32>(&x, &w, &b, &g, dim, f64::from(eps), rms);
            let (y64, dx64, dw64, db64) = norm_ref::<f64>(&x, &w, &b, &g, dim, f64::from(eps), rms);
            check(&format!("{name}_fwd"), dt, &down(&dev, &y), &qv(&y32, dt), &y64, 2.0);
            check(&format!("{name}_bwd dx"), dt, &down(&dev, &dx), &qv(&dx32, dt), &dx64, 3.0);
            check(&format!("{name}_bwd dweight"), dt, &down(&dev, &dw), &qv(&dw32, dt), &dw64, 3.0);
            if !rms {
                check(&format!("{name}_bwd dbias"), dt, &down(&dev, &db), &qv(&db32, dt), &db64, 3.0);
            }
        }
    }
}

#[test]
fn layer_norm_modulate_fwd_bwd() {
    let dev = gpu_or_skip!();
    let (bsz, tokens, dim) = (3, 97, 72);
    let eps = 1e-6f32;
    for dt in DTYPES {
        let x = randn(bsz * tokens * dim, 17, dt);
        // shift and scale are chunks 1 and 4 of a [B, 6 * D] modulation tensor.
        let m = randn(bsz * 6 * dim, 18, dt);
        let shift_v = PerBatch { offset: dim, batch_stride: 6 * dim };
        let scale_v = PerBatch { offset: 4 * dim, batch_stride: 6 * dim };
        let g = randn(bsz * tokens * dim, 19, dt);
        let (xd, md, gd) = (up(&dev, &x, dt), up(&dev, &m, dt), up(&dev, &g, dt));
        let xv = Tokens::contiguous(bsz, tokens, dim);
        let n = bsz * tokens * dim;
        let mut y = zeros(&dev, dt, n);
        let mut mean = zeros(&dev, DType::F32, bsz * tokens);
        let mut rstd = zeros(&dev, DType::F32, bsz * tokens);
        norm::layer_norm_modulate_fwd(&dev, &xd, xv, &md, shift_v, &md, scale_v, eps, &mut y, &mut mean, &mut rstd)
            .unwrap();
        let mut dx = zeros(&dev, dt, n);
        // dshift accumulates into chunk 1 of a [B, 6 D] gradient that already holds `prior`
        // (a strided, accumulating write); dscale goes to its own [B, D] buffer.
        let prior = randn(bsz * 6 * dim, 190, dt);
        let mut dmod = up(&dev, &prior, dt);
        let mut dscale = zeros(&dev, dt, bsz * dim);
        norm::layer_norm_modulate_bwd(
            &dev,
            &xd,
            xv,
            &md,
            scale_v,
            &gd,
            &mean,
            &rstd,
            &mut dx,
            BatchGrad { out: &mut dmod, view: shift_v, accumulate: true },
            BatchGrad { out: &mut dscale, view: PerBatch { offset: 0, batch_stride: dim }, accumulate: false },
        )
        .unwrap();
        #[allow(clippy::type_complexity)]
        fn reference<R: Real>(
            x: &[f32],
            m: &[f32],
            g: &[f32],
            bsz: usize,
            tokens: usize,
            dim: usize,
            eps: f64,
        ) -> (Vec<R>, Vec<R>, Vec<R>, Vec<R>) {
            let mut y = Vec::new();
            let mut dx = Vec::new();
            let mut dshift = vec![R::zero(); bsz * dim];
            let mut dscale = vec![R::zero(); bsz * dim];
            for b in 0..bsz {
                let shift: Vec<R> = conv(&m[b * 6 * dim + dim..b * 6 * dim + 2 * dim]);
                let scale: Vec<R> = conv(&m[b * 6 * dim + 4 * dim..b * 6 * dim + 5 * dim]);
                let w: Vec<f32> = scale.iter().map(|&s| (s.f() + 1.0) as f32).collect();
                let zero = vec![0f32; dim];
                let rows = &x[b * tokens * dim..(b + 1) * tokens * dim];
                let grows = &g[b * tokens * dim..(b + 1) * tokens * dim];
                // layer_norm with weight 1 + scale (no bias) gives xhat * (1 + scale) and the dx.
                let (yn, _, _, _) = norm_ref::<R>(rows, &vec![1.0; dim], &zero, grows, dim, eps, false);
                let (_, dxw, _, _) = norm_ref::<R>(rows, &w, &zero, grows, dim, eps, false);
                for t in 0..tokens {
                    for d in 0..dim {
                        let xhat = yn[t * dim + d];
                        y.push(xhat * (R::one() + scale[d]) + shift[d]);
                        let gg = R::of(f64::from(grows[t * dim + d]));
                        dshift[b * dim + d] += gg;
                        dscale[b * dim + d] += gg * xhat;
                    }
                }
                dx.extend(dxw);
            }
            (y, dx, dshift, dscale)
        }
        let (y32, dx32, ds32, dc32) = reference::<f32>(&x, &m, &g, bsz, tokens, dim, f64::from(eps));
        let (y64, dx64, ds64, dc64) = reference::<f64>(&x, &m, &g, bsz, tokens, dim, f64::from(eps));
        check("layer_norm_modulate_fwd", dt, &down(&dev, &y), &qv(&y32, dt), &y64, 2.0);
        check("layer_norm_modulate_bwd dx", dt, &down(&dev, &dx), &qv(&dx32, dt), &dx64, 3.0);
        check("layer_norm_modulate_bwd dscale", dt, &down(&dev, &dscale), &qv(&dc32, dt), &dc64, 3.0);
        // dshift landed in chunk 1 on top of `prior`; every other element is untouched.
        let got = down(&dev, &dmod);
        let (mut w64, mut w32, mut g1) = (vec![], vec![], vec![]);
        for bb in 0..bsz {
            for d in 0..dim {
                let i = bb * 6 * dim + dim + d;
                w64.push(f64::from(prior[i]) + ds64[bb * dim + d]);
                w32.push(q(prior[i] + ds32[bb * dim + d], dt));
                g1.push(got[i]);
            }
        }
        check("layer_norm_modulate_bwd dshift (+=, strided)", dt, &g1, &w32, &w64, 3.0);
        for (i, (&a, &b)) in got.iter().zip(&prior).enumerate() {
            if (i % (6 * dim)) / dim != 1 {
                assert_eq!(a, b, "element {i} outside the dshift chunk was written");
            }
        }
    }
}

#[test]
fn group_norm_fwd_bwd() {
    let dev = gpu_or_skip!();
    let shape = GroupNormShape { batch: 2, channels: 12, spatial: 7 * 9, groups: 4 };
    let eps = 1e-6f32;
    let (bsz, c, s, gr) = (shape.batch, shape.channels, shape.spatial, shape.groups);
    for dt in DTYPES {
        let n = bsz * c * s;
        let x = randn(n, 20, dt);
        let w = qv(&randn(c, 21, DType::F32).iter().map(|v| 1.0 + 0.3 * v).collect::<Vec<_>>(), dt);
        let b = randn(c, 22, dt);
        let g = randn(n, 23, dt);
        let (xd, wd, bd, gd) = (up(&dev, &x, dt), up(&dev, &w, dt), up(&dev, &b, dt), up(&dev, &g, dt));
        let mut y = zeros(&dev, dt, n);
        let mut mean = zeros(&dev, DType::F32, bsz * gr);
        let mut rstd = zeros(&dev, DType::F32, bsz * gr);
        norm::group_norm_fwd(&dev, &xd, shape, Some(&wd), Some(&bd), eps, &mut y, &mut mean, &mut rstd).unwrap();
        let mut dx = zeros(&dev, dt, n);
        let mut dw = zeros(&dev, dt, c);
        let mut db = zeros(&dev, dt, c);
        norm::group_norm_bwd(
            &dev,
            &xd,
            shape,
            Some(&wd),
            &gd,
            &mean,
            &rstd,
            &mut dx,
            Some(ParamGrad { out: &mut dw, accumulate: false }),
            Some(ParamGrad { out: &mut db, accumulate: false }),
        )
        .unwrap();
        // Reference: a group is one layer_norm row of cpg * s elements with a per-channel affine.
        #[allow(clippy::type_complexity)]
        fn reference<R: Real>(
            x: &[f32],
            w: &[f32],
            b: &[f32],
            g: &[f32],
            dims: (usize, usize, usize, usize),
            eps: f64,
        ) -> (Vec<R>, Vec<R>, Vec<R>, Vec<R>) {
            let (bsz, c, s, gr) = dims;
            let cpg = c / gr;
            let m = cpg * s;
            let (mut y, mut dx) = (Vec::new(), Vec::new());
            let (mut dw, mut db) = (vec![R::zero(); c], vec![R::zero(); c]);
            for bg in 0..bsz * gr {
                let grp = bg % gr;
                let wg: Vec<f32> = (0..m).map(|i| w[grp * cpg + i / s]).collect();
                let bgv: Vec<f32> = (0..m).map(|i| b[grp * cpg + i / s]).collect();
                let (yy, dxx, dww, dbb) =
                    norm_ref::<R>(&x[bg * m..(bg + 1) * m], &wg, &bgv, &g[bg * m..(bg + 1) * m], m, eps, false);
                y.extend(yy);
                dx.extend(dxx);
                for i in 0..m {
                    dw[grp * cpg + i / s] += dww[i];
                    db[grp * cpg + i / s] += dbb[i];
                }
            }
            (y, dx, dw, db)
        }
        let dims = (bsz, c, s, gr);
        let (y32, dx32, dw32, db32) = reference::<f32>(&x, &w, &b, &g, dims, f64::from(eps));
        let (y64, dx64, dw64, db64) = reference::<f64>(&x, &w, &b, &g, dims, f64::from(eps));
        check("group_norm_fwd", dt, &down(&dev, &y), &qv(&y32, dt), &y64, 2.0);
        check("group_norm_bwd dx", dt, &down(&dev, &dx), &qv(&dx32, dt), &dx64, 3.0);
        check("group_norm_bwd dweight", dt, &down(&dev, &dw), &qv(&dw32, dt), &dw64, 3.0);
        check("group_norm_bwd dbias", dt, &down(&dev, &db), &qv(&db32, dt), &db64, 3.0);
    }
}

#[test]
fn gated_residual_fwd_bwd() {
    let dev = gpu_or_skip!();
    let (bsz, tokens, dim) = (2, 131, 40);
    for dt in DTYPES {
        let n = bsz * tokens * dim;
        let x = randn(n, 24, dt);
        let y = randn(n, 25, dt);
        let gate_buf = randn(bsz * 3 * dim, 26, dt); // chunk 2 of [B, 3 D]
        let gv = PerBatch { offset: 2 * dim, batch_stride: 3 * dim };
        let g = randn(n, 27, dt);
        let (xd, yd, gated, gd) = (up(&dev, &x, dt), up(&dev, &y, dt), up(&dev, &gate_buf, dt), up(&dev, &g, dt));
        let tv = Tokens::contiguous(bsz, tokens, dim);
        let mut out = zeros(&dev, dt, n);
        norm::gated_residual_fwd(&dev, &xd, tv, &yd, tv, &gated, gv, &mut out).unwrap();
        let mut dy = zeros(&dev, dt, n);
        let mut dgate = zeros(&dev, dt, bsz * dim);
        norm::gated_residual_bwd(
            &dev,
            &yd,
            tv,
            &gated,
            gv,
            &gd,
            &mut dy,
            BatchGrad { out: &mut dgate, view: PerBatch { offset: 0, batch_stride: dim }, accumulate: false },
        )
        .unwrap();
        let gate = |b: usize, d: usize| gate_buf[b * 3 * dim + 2 * dim + d];
        let (mut o64, mut o32, mut dy64, mut dy32) = (vec![], vec![], vec![], vec![]);
        let (mut dg64, mut dg32) = (vec![0f64; bsz * dim], vec![0f32; bsz * dim]);
        for i in 0..n {
            let (b, d) = (i / (tokens * dim), i % dim);
            o64.push(f64::from(x[i]) + f64::from(gate(b, d)) * f64::from(y[i]));
            o32.push(q(x[i] + gate(b, d) * y[i], dt));
            dy64.push(f64::from(g[i]) * f64::from(gate(b, d)));
            dy32.push(q(g[i] * gate(b, d), dt));
            dg64[b * dim + d] += f64::from(g[i]) * f64::from(y[i]);
            dg32[b * dim + d] += g[i] * y[i];
        }
        check("gated_residual_fwd", dt, &down(&dev, &out), &o32, &o64, 2.0);
        check("gated_residual_bwd dy", dt, &down(&dev, &dy), &dy32, &dy64, 3.0);
        check("gated_residual_bwd dgate", dt, &down(&dev, &dgate), &qv(&dg32, dt), &dg64, 3.0);
    }
}

// ---- rope ----------------------------------------------------------------------------------------------

#[test]
fn rope_fwd_bwd() {
    let dev = gpu_or_skip!();
    let shape = RopeShape { batch: 2, heads: 3, tokens: 97, dim: 64 };
    let (b, h, n, d) = (shape.batch, shape.heads, shape.tokens, shape.dim);
    let half = d / 2;
    // Angles like FLUX's: position * theta^(-2i/d), one table per batch entry.
    let mut cos = vec![0f32; b * n * half];
    let mut sin = vec![0f32; b * n * half];
    for bb in 0..b {
        for t in 0..n {
            for i in 0..half {
                let a = (t + 7 * bb) as f64 * 10000f64.powf(-2.0 * i as f64 / d as f64);
                cos[(bb * n + t) * half + i] = a.cos() as f32;
                sin[(bb * n + t) * half + i] = a.sin() as f32;
            }
        }
    }
    let (cd, sd) = (up(&dev, &cos, DType::F32), up(&dev, &sin, DType::F32));
    let tables = RopeTables { cos: &cd, sin: &sd, batch_stride: n * half };
    for dt in DTYPES {
        // x given as [B, N, H, D] memory read through [B, H, N, D] strides.
        let buf = randn(b * n * h * d, 28, dt);
        let xv = Heads::bnhd(h, n, d);
        let xd = up(&dev, &buf, dt);
        for inverse in [false, true] {
            let mut out = zeros(&dev, dt, b * h * n * d);
            rope::rope(&dev, &xd, xv, shape, &tables, inverse, &mut out).unwrap();
            let (mut r64, mut r32) = (Vec::new(), Vec::new());
            for bb in 0..b {
                for hh in 0..h {
                    for t in 0..n {
                        for i in 0..half {
                            let base = ((bb * n + t) * h + hh) * d + 2 * i;
                            let (x0, x1) = (buf[base], buf[base + 1]);
                            let (c, s0) = (cos[(bb * n + t) * half + i], sin[(bb * n + t) * half + i]);
                            let s = if inverse { -s0 } else { s0 };
                            r64.push(f64::from(c) * f64::from(x0) - f64::from(s) * f64::from(x1));
                            r64.push(f64::from(s) * f64::from(x0) + f64::from(c) * f64::from(x1));
                            r32.push(q(c * x0 - s * x1, dt));
                            r32.push(q(s * x0 + c * x1, dt));
                        }
                    }
                }
            }
            check(if inverse { "rope_bwd" } else { "rope_fwd" }, dt, &down(&dev, &out), &r32, &r64, 2.0);
        }
    }
}

// ---- losses -----------------------------------------------------------------------------------------------

#[test]
fn losses_fwd_bwd() {
    let dev = gpu_or_skip!();
    let (rows, cols) = (5, 1001);
    for dt in DTYPES {
        let p = randn(rows * cols, 29, dt);
        let t = randn(rows * cols, 30, dt);
        let dl = randn(rows, 31, DType::F32);
        let (pd, td, dld) = (up(&dev, &p, dt), up(&dev, &t, dt), up(&dev, &dl, DType::F32));
        let view = Rows::contiguous(rows, cols);
        for loss_kind in
            [Loss::Mse, Loss::PseudoHuber { c: 0.03 }, Loss::Hinge { sign: 1.0 }, Loss::Hinge { sign: -1.0 }]
        {
            let target = (!matches!(loss_kind, Loss::Hinge { .. })).then_some((&td, view));
            let mut out = zeros(&dev, DType::F32, rows);
            loss::loss_fwd(&dev, loss_kind, &pd, view, target, &mut out).unwrap();
            let mut dp = zeros(&dev, dt, rows * cols);
            let mut dtt = zeros(&dev, dt, rows * cols);
            let dtarget = target.is_some().then_some(&mut dtt);
            loss::loss_bwd(&dev, loss_kind, &pd, view, target, &dld, Some(&mut dp), dtarget).unwrap();
            let lv = |pp: f64, tt: f64| -> (f64, f64) {
                match loss_kind {
                    Loss::Mse => ((pp - tt).powi(2), 2.0 * (pp - tt)),
                    Loss::PseudoHuber { c } => {
                        let c = f64::from(c);
                        let r = ((pp - tt).powi(2) + c * c).sqrt();
                        (r - c, (pp - tt) / r)
                    }
                    Loss::Hinge { sign } => {
                        let s = f64::from(sign);
                        ((1.0 - s * pp).max(0.0), if 1.0 - s * pp > 0.0 { -s } else { 0.0 })
                    }
                }
            };
            let lv32 = |pp: f32, tt: f32| -> (f32, f32) {
                match loss_kind {
                    Loss::Mse => ((pp - tt) * (pp - tt), 2.0 * (pp - tt)),
                    Loss::PseudoHuber { c } => {
                        let r = ((pp - tt) * (pp - tt) + c * c).sqrt();
                        (r - c, (pp - tt) / r)
                    }
                    Loss::Hinge { sign } => {
                        ((1.0 - sign * pp).max(0.0), if 1.0 - sign * pp > 0.0 { -sign } else { 0.0 })
                    }
                }
            };
            let (mut l64, mut l32) = (vec![0f64; rows], vec![0f32; rows]);
            let (mut g64, mut g32) = (vec![], vec![]);
            for i in 0..rows * cols {
                let r = i / cols;
                let (v, d) = lv(f64::from(p[i]), f64::from(t[i]));
                let (v32, d32) = lv32(p[i], t[i]);
                l64[r] += v / cols as f64;
                l32[r] += v32 / cols as f32;
                g64.push(f64::from(dl[r]) / cols as f64 * d);
                g32.push(q(dl[r] / cols as f32 * d32, dt));
            }
            let name = format!("{loss_kind:?}");
            check(&format!("loss_fwd {name}"), DType::F32, &down(&dev, &out), &l32, &l64, 2.0);
            check(&format!("loss_bwd {name} dpred"), dt, &down(&dev, &dp), &g32, &g64, 3.0);
            if target.is_some() {
                let neg: Vec<f64> = g64.iter().map(|v| -v).collect();
                let neg32: Vec<f32> = g32.iter().map(|v| -v).collect();
                check(&format!("loss_bwd {name} dtarget"), dt, &down(&dev, &dtt), &neg32, &neg, 3.0);
            }
        }
    }
}

// ---- rng ----------------------------------------------------------------------------------------------------

fn ulps(a: f32, b: f32) -> u32 {
    let o = |f: f32| {
        let u = f.to_bits() as i64;
        if u & 0x8000_0000 != 0 {
            0x8000_0000 - u
        } else {
            u
        }
    };
    (o(a) - o(b)).unsigned_abs() as u32
}

#[test]
fn rng_matches_cpu_philox() {
    let dev = gpu_or_skip!();
    let n = 100_003;
    let (seed, offset) = (42u64, u64::MAX - 100); // crosses the 64-bit counter wrap
    for dt in DTYPES {
        for dist in [
            Distribution::Uniform { lo: -2.0, hi: 3.0 },
            Distribution::Normal,
            Distribution::LogitNormal { mean: 0.5, std: 1.3 },
        ] {
            let mut g = Philox::at(seed, offset);
            let mut out = zeros(&dev, dt, n);
            rng::fill(&dev, &mut g, dist, &mut out).unwrap();
            let mut c = Philox::at(seed, offset);
            let want: Vec<f32> = match dist {
                Distribution::Uniform { lo, hi } => c.uniform_vec(n).into_iter().map(|u| lo + (hi - lo) * u).collect(),
                Distribution::Normal => c.normal_vec(n),
                Distribution::LogitNormal { mean, std } => c.logit_normal_vec(n, mean, std),
            };
            assert_eq!(g, c, "the GPU fill advances the stream like the CPU fill");
            let got = down(&dev, &out);
            let worst = got.iter().zip(&want).map(|(&a, &b)| ulps(a, q(b, dt))).max().unwrap_or(0);
            println!("rng {dist:?} {dt}: worst {worst} ulp (of {dt})");
            match (dist, dt) {
                (Distribution::Uniform { .. }, _) => assert_eq!(worst, 0, "uniforms are bit-exact"),
                // Normals are within 1 f32 ulp of the CPU; a bf16 rounding can turn that into
                // 1 bf16 ulp at a tie.
                (Distribution::Normal, DType::F32) => assert!(worst <= 2, "normal: {worst} ulp"),
                (Distribution::Normal, _) => assert!(worst <= 1, "normal bf16: {worst} ulp"),
                // Logit-normals inherit the normal's error scaled by |std * z| (contract).
                (_, DType::F32) => assert!(worst <= 16, "logit-normal: {worst} ulp"),
                _ => assert!(worst <= 1, "logit-normal bf16: {worst} ulp"),
            }
        }
    }
}

// ---- optimizer ------------------------------------------------------------------------------------------------

#[test]
fn adamw_clip_and_ida_blend() {
    let dev = gpu_or_skip!();
    let sizes = [70_001usize, 3, 65_536]; // crosses chunk boundaries, tiny, exact chunk
    let cfg = AdamwConfig { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01, step: 3 };
    // (gradient dtype, bf16 model copy): adamw_step_f32, adamw_step_bf16, adamw_step_bf16_f32grad.
    for (grad_dt, use_param) in [(DType::F32, false), (DType::BF16, true), (DType::F32, true)] {
        let mut masters: Vec<CudaStorage> = Vec::new();
        let mut params: Vec<CudaStorage> = Vec::new();
        let mut grads: Vec<CudaStorage> = Vec::new();
        let mut m1: Vec<CudaStorage> = Vec::new();
        let mut m2: Vec<CudaStorage> = Vec::new();
        let mut host = Vec::new();
        for (i, &n) in sizes.iter().enumerate() {
            let w = randn(n, 40 + i as u64, DType::F32);
            let g = randn(n, 50 + i as u64, grad_dt);
            let a: Vec<f32> = randn(n, 60 + i as u64, DType::F32).iter().map(|v| 0.1 * v).collect();
            let b: Vec<f32> = randn(n, 70 + i as u64, DType::F32).iter().map(|v| 0.01 * v * v).collect();
            masters.push(up(&dev, &w, DType::F32));
            params.push(zeros(&dev, DType::BF16, n));
            grads.push(up(&dev, &g, grad_dt));
            m1.push(up(&dev, &a, DType::F32));
            m2.push(up(&dev, &b, DType::F32));
            host.push((w, g, a, b));
        }
        // Global norm and clipping scale, left on the device.
        let mut norm_d = zeros(&dev, DType::F32, 1);
        let mut scale_d = zeros(&dev, DType::F32, 1);
        let grad_refs: Vec<&CudaStorage> = grads.iter().collect();
        let max_norm = 100.0f32;
        optim::grad_norm_clip(&dev, &grad_refs, max_norm, &mut norm_d, &mut scale_d).unwrap();
        let norm64: f64 = host.iter().flat_map(|h| h.1.iter()).map(|&g| f64::from(g).powi(2)).sum::<f64>().sqrt();
        let norm_got = f64::from(down(&dev, &norm_d)[0]);
        println!("grad norm {grad_dt}: {norm_got} vs {norm64} (rel {:.2e})", (norm_got - norm64).abs() / norm64);
        assert!((norm_got - norm64).abs() <= 1e-5 * norm64);
        let clip = (f64::from(max_norm) / (norm64 + 1e-6)).min(1.0);
        assert!((f64::from(down(&dev, &scale_d)[0]) - clip).abs() <= 1e-5 * clip);

        let mut tensors: Vec<AdamwTensor> = Vec::new();
        for ((((mw, p), g), a), b) in
            masters.iter_mut().zip(params.iter_mut()).zip(&grads).zip(m1.iter_mut()).zip(m2.iter_mut())
        {
            tensors.push(AdamwTensor { master: mw, param: use_param.then_some(p), grad: g, exp_avg: a, exp_avg_sq: b });
        }
        optim::adamw_step(&dev, &mut tensors, &cfg, Some(&scale_d)).unwrap();
        drop(tensors);
        let gs = down(&dev, &scale_d)[0];
        for (i, (w, g, a, b)) in host.iter().enumerate() {
            let step = f64::from(cfg.step as u32);
            let (b1, b2) = (f64::from(cfg.beta1), f64::from(cfg.beta2));
            let (bc1, bc2) = (1.0 - b1.powf(step), 1.0 - b2.powf(step));
            let (mut w64, mut w32) = (vec![], vec![]);
            for j in 0..w.len() {
                let g64 = f64::from(g[j]) * f64::from(gs);
                let m = b1 * f64::from(a[j]) + (1.0 - b1) * g64;
                let v = b2 * f64::from(b[j]) + (1.0 - b2) * g64 * g64;
                let ww = f64::from(w[j]) * (1.0 - f64::from(cfg.lr) * f64::from(cfg.weight_decay));
                w64.push(ww - f64::from(cfg.lr) / bc1 * m / ((v / bc2).sqrt() + f64::from(cfg.eps)));
                // Naive f32, torch's single-tensor order.
                let g32 = g[j] * gs;
                let m32 = a[j] + (1.0 - cfg.beta1) * (g32 - a[j]);
                let v32 = b[j] * cfg.beta2 + (1.0 - cfg.beta2) * g32 * g32;
                let mut w_ = w[j] * (1.0 - cfg.lr * cfg.weight_decay);
                w_ -= (cfg.lr / bc1 as f32) * (m32 / (v32.sqrt() / (bc2 as f32).sqrt() + cfg.eps));
                w32.push(w_);
            }
            check(
                &format!("adamw_step master[{i}] (grad {grad_dt}, copy {use_param})"),
                DType::F32,
                &down(&dev, &masters[i]),
                &w32,
                &w64,
                2.0,
            );
            if use_param {
                let got = down(&dev, &params[i]);
                let want = qv(&down(&dev, &masters[i]), DType::BF16);
                assert_eq!(got, want, "the bf16 copy is the rounded master");
            }
        }
    }

    // IDA blend: bit-exact against the plain f32 expression.
    let lambda = 0.97f32;
    let n = 70_001;
    let phi = randn(n, 80, DType::F32);
    let theta = randn(n, 81, DType::F32);
    let mut phi_d = up(&dev, &phi, DType::F32);
    let mut phi_p = zeros(&dev, DType::BF16, n);
    let theta_d = up(&dev, &theta, DType::F32);
    optim::ida_blend(
        &dev,
        &mut [BlendPair { dst_master: &mut phi_d, dst_param: Some(&mut phi_p), src: &theta_d }],
        lambda,
    )
    .unwrap();
    let want: Vec<f32> = phi.iter().zip(&theta).map(|(&p, &t)| lambda * p + (1.0 - lambda) * t).collect();
    assert_eq!(down(&dev, &phi_d), want, "ida_blend master");
    assert_eq!(down(&dev, &phi_p), qv(&want, DType::BF16), "ida_blend bf16 copy");
    println!("ida_blend: bit-exact");
}

// ---- embedding ---------------------------------------------------------------------------------------------------

#[test]
fn embedding_and_timesteps() {
    let dev = gpu_or_skip!();
    let (vocab, dim) = (101, 77);
    let ids: Vec<i32> = (0..333i32).map(|i| (i * 37 + i / 5) % 23).collect(); // repeats
    for dt in DTYPES {
        let table = randn(vocab * dim, 90, dt);
        let td = up(&dev, &table, dt);
        let idd = DeviceVec::from_slice(&dev, &ids).unwrap();
        let mut out = zeros(&dev, dt, ids.len() * dim);
        embedding::embedding_fwd(&dev, &idd, &td, vocab, dim, &mut out).unwrap();
        let want: Vec<f32> =
            ids.iter().flat_map(|&i| table[i as usize * dim..(i as usize + 1) * dim].to_vec()).collect();
        assert_eq!(down(&dev, &out), want, "lookup is a copy");
        let g = randn(ids.len() * dim, 91, dt);
        let gd = up(&dev, &g, dt);
        let mut dtab = zeros(&dev, dt, vocab * dim);
        embedding::embedding_bwd(&dev, &ids, &gd, vocab, dim, &mut dtab, false).unwrap();
        let (mut w64, mut w32) = (vec![0f64; vocab * dim], vec![0f32; vocab * dim]);
        for (pos, &id) in ids.iter().enumerate() {
            for d in 0..dim {
                w64[id as usize * dim + d] += f64::from(g[pos * dim + d]);
                w32[id as usize * dim + d] += g[pos * dim + d];
            }
        }
        check("embedding_bwd", dt, &down(&dev, &dtab), &qv(&w32, dt), &w64, 3.0);
    }
    // diffusers Timesteps(256, flip_sin_to_cos=True, downscale_freq_shift=0) on sigma * 1000.
    let t: Vec<f32> = vec![0.0, 1.5, 250.0, 999.0, 517.25];
    let cfg = TimestepEmbedding {
        dim: 257,
        flip_sin_to_cos: true,
        downscale_freq_shift: 0.0,
        scale: 1.0,
        max_period: 10000.0,
    };
    let tdv = up(&dev, &t, DType::F32);
    for dt in DTYPES {
        let mut out = zeros(&dev, dt, t.len() * cfg.dim);
        embedding::timestep_embedding(&dev, &tdv, &cfg, &mut out).unwrap();
        let half = cfg.dim / 2;
        let (mut r64, mut r32) = (vec![], vec![]);
        let c32 = (-(10000f64.ln())) as f32;
        for &tt in &t {
            for j in 0..cfg.dim {
                if j >= 2 * half {
                    r64.push(0.0);
                    r32.push(0.0);
                    continue;
                }
                let k = if j < half { j } else { j - half };
                let use_cos = j < half; // flipped
                let e64 = f64::from(tt) * (-(10000f64.ln()) * k as f64 / half as f64).exp();
                let e32 = tt * (c32 * k as f32 / half as f32).exp();
                r64.push(if use_cos { e64.cos() } else { e64.sin() });
                r32.push(q(if use_cos { e32.cos() } else { e32.sin() }, dt));
            }
        }
        check("timestep_embedding", dt, &down(&dev, &out), &r32, &r64, 2.0);
    }
}

// ---- conv / upsample ----------------------------------------------------------------------------------------------

#[test]
fn conv_im2col_gemm_and_col2im() {
    let dev = gpu_or_skip!();
    let g = ConvGeometry {
        batch: 2,
        channels: 5,
        height: 11,
        width: 9,
        kernel: (3, 3),
        stride: (2, 1),
        padding: (1, 1),
        dilation: (1, 2),
    };
    let (oh, ow) = g.out_hw().unwrap();
    let cout = 7;
    let ckk = g.channels * 9;
    for dt in DTYPES {
        let x = randn(g.batch * g.channels * g.height * g.width, 92, dt);
        let w = randn(cout * ckk, 93, dt);
        let (xd, wd) = (up(&dev, &x, dt), up(&dev, &w, dt));
        let mut col = zeros(&dev, dt, g.col_len().unwrap());
        conv::im2col(&dev, &xd, &Layout::contiguous(&[g.batch, g.channels, g.height, g.width]), &g, &mut col).unwrap();
        // y[b] = W [cout, ckk] @ col[b] [ckk, oh*ow]; W broadcast over the batch (stride 0).
        let mut y = zeros(&dev, dt, g.batch * cout * oh * ow);
        let spec = GemmSpec {
            m: cout,
            n: oh * ow,
            k: ckk,
            trans_a: false,
            trans_b: false,
            batch: g.batch,
            alpha: 1.0,
            beta: 0.0,
        };
        gemm::gemm(
            &dev,
            &spec,
            MatIn { data: &wd, offset: 0, ld: ckk, batch_stride: 0 },
            MatIn { data: &col, offset: 0, ld: oh * ow, batch_stride: ckk * oh * ow },
            MatOut { data: &mut y, offset: 0, ld: oh * ow, batch_stride: cout * oh * ow },
        )
        .unwrap();
        let xat = |b: usize, c: usize, ih: isize, iw: isize| -> f32 {
            if ih < 0 || iw < 0 || ih >= g.height as isize || iw >= g.width as isize {
                0.0
            } else {
                x[((b * g.channels + c) * g.height + ih as usize) * g.width + iw as usize]
            }
        };
        let (mut r64, mut r32) = (vec![], vec![]);
        for b in 0..g.batch {
            for co in 0..cout {
                for yy in 0..oh {
                    for xx in 0..ow {
                        let (mut s64, mut s32) = (0f64, 0f32);
                        for c in 0..g.channels {
                            for kh in 0..3 {
                                for kw in 0..3 {
                                    let ih = (yy * g.stride.0) as isize - g.padding.0 as isize
                                        + (kh * g.dilation.0) as isize;
                                    let iw = (xx * g.stride.1) as isize - g.padding.1 as isize
                                        + (kw * g.dilation.1) as isize;
                                    let wv = w[co * ckk + c * 9 + kh * 3 + kw];
                                    s64 += f64::from(wv) * f64::from(xat(b, c, ih, iw));
                                    s32 += wv * xat(b, c, ih, iw);
                                }
                            }
                        }
                        r64.push(s64);
                        r32.push(q(s32, dt));
                    }
                }
            }
        }
        check("conv2d (im2col + gemm)", dt, &down(&dev, &y), &r32, &r64, 2.0);

        // col2im is the adjoint of im2col: <im2col(x), c> = <x, col2im(c)>, checked elementwise.
        let dcol = randn(g.col_len().unwrap(), 94, dt);
        let dcd = up(&dev, &dcol, dt);
        let mut dx = zeros(&dev, dt, x.len());
        conv::col2im(&dev, &dcd, &g, &mut dx).unwrap();
        let (mut a64, mut a32) = (vec![0f64; x.len()], vec![0f32; x.len()]);
        for b in 0..g.batch {
            for c in 0..g.channels {
                for kh in 0..3 {
                    for kw in 0..3 {
                        for yy in 0..oh {
                            for xx in 0..ow {
                                let ih =
                                    (yy * g.stride.0) as isize - g.padding.0 as isize + (kh * g.dilation.0) as isize;
                                let iw =
                                    (xx * g.stride.1) as isize - g.padding.1 as isize + (kw * g.dilation.1) as isize;
                                if ih < 0 || iw < 0 || ih >= g.height as isize || iw >= g.width as isize {
                                    continue;
                                }
                                let v = dcol[((b * ckk) + c * 9 + kh * 3 + kw) * oh * ow + yy * ow + xx];
                                let i = ((b * g.channels + c) * g.height + ih as usize) * g.width + iw as usize;
                                a64[i] += f64::from(v);
                                a32[i] += v;
                            }
                        }
                    }
                }
            }
        }
        check("col2im", dt, &down(&dev, &dx), &qv(&a32, dt), &a64, 3.0);
    }
}

#[test]
fn upsample_nearest_fwd_bwd() {
    let dev = gpu_or_skip!();
    let (b, c, h, w, sh, sw) = (2, 3, 5, 7, 2, 3);
    for dt in DTYPES {
        let x = randn(b * c * h * w, 95, dt);
        let xd = up(&dev, &x, dt);
        let mut y = zeros(&dev, dt, b * c * h * sh * w * sw);
        upsample::upsample_nearest_fwd(&dev, &xd, &Layout::contiguous(&[b, c, h, w]), (sh, sw), &mut y).unwrap();
        let want: Vec<f32> = (0..b * c * h * sh * w * sw)
            .map(|i| {
                let (xx, r) = (i % (w * sw), i / (w * sw));
                let (yy, bc) = (r % (h * sh), r / (h * sh));
                x[(bc * h + yy / sh) * w + xx / sw]
            })
            .collect();
        assert_eq!(down(&dev, &y), want, "upsample is a copy");
        let g = randn(want.len(), 96, dt);
        let gd = up(&dev, &g, dt);
        let mut dx = zeros(&dev, dt, x.len());
        upsample::upsample_nearest_bwd(&dev, &gd, [b, c, h, w], (sh, sw), &mut dx).unwrap();
        let (mut r64, mut r32) = (vec![0f64; x.len()], vec![0f32; x.len()]);
        for (i, &gv) in g.iter().enumerate() {
            let (xx, r) = (i % (w * sw), i / (w * sw));
            let (yy, bc) = (r % (h * sh), r / (h * sh));
            let j = (bc * h + yy / sh) * w + xx / sw;
            r64[j] += f64::from(gv);
            r32[j] += gv;
        }
        check("upsample_nearest_bwd", dt, &down(&dev, &dx), &qv(&r32, dt), &r64, 3.0);
    }
}

// ---- gemm ------------------------------------------------------------------------------------------------------------

#[test]
fn gemm_cublas_and_cublaslt() {
    let dev = gpu_or_skip!();
    let (m, n, k, batch) = (97, 131, 203, 3);
    let cases = [(DType::F32, DType::F32), (DType::BF16, DType::BF16), (DType::BF16, DType::F32)];
    for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
        for (dt, ct) in cases {
            let (ar, ac) = if ta { (k, m) } else { (m, k) };
            let (br, bc) = if tb { (n, k) } else { (k, n) };
            let a = randn(batch * ar * ac, 100, dt);
            let bm = randn(br * bc, 101, dt); // one B for every batch entry (stride 0)
            let c0 = randn(batch * m * n, 102, ct);
            let bias = randn(n, 103, ct);
            let (ad, bd, biasd) = (up(&dev, &a, dt), up(&dev, &bm, dt), up(&dev, &bias, ct));
            let beta = if ct == DType::F32 { 1.0 } else { 0.0 }; // fp32 accumulation into C
            let spec = GemmSpec { m, n, k, trans_a: ta, trans_b: tb, batch, alpha: 0.75, beta };
            let aget = |bb: usize, i: usize, p: usize| {
                if ta {
                    a[bb * ar * ac + p * ac + i]
                } else {
                    a[bb * ar * ac + i * ac + p]
                }
            };
            let bget = |p: usize, j: usize| if tb { bm[j * bc + p] } else { bm[p * bc + j] };
            for lt in [false, true] {
                let mut cd = up(&dev, &c0, ct);
                let ain = MatIn { data: &ad, offset: 0, ld: ac, batch_stride: ar * ac };
                let bin = MatIn { data: &bd, offset: 0, ld: bc, batch_stride: 0 };
                let cout = MatOut { data: &mut cd, offset: 0, ld: n, batch_stride: m * n };
                if lt {
                    gemm::lt_matmul(&dev, &spec, ain, bin, cout, Some(&biasd)).unwrap();
                } else {
                    gemm::gemm(&dev, &spec, ain, bin, cout).unwrap();
                }
                let (mut r64, mut r32) = (vec![], vec![]);
                for bb in 0..batch {
                    for i in 0..m {
                        for j in 0..n {
                            let (mut s64, mut s32) = (0f64, 0f32);
                            for p in 0..k {
                                s64 += f64::from(aget(bb, i, p)) * f64::from(bget(p, j));
                                s32 += aget(bb, i, p) * bget(p, j);
                            }
                            let cij = c0[(bb * m + i) * n + j];
                            let extra64 = f64::from(beta) * f64::from(cij) + if lt { f64::from(bias[j]) } else { 0.0 };
                            let extra32 = beta * cij + if lt { bias[j] } else { 0.0 };
                            r64.push(0.75 * s64 + extra64);
                            r32.push(q(0.75 * s32 + extra32, ct));
                        }
                    }
                }
                let name = format!("{} ta={ta} tb={tb} {dt}->{ct}", if lt { "lt_matmul+bias" } else { "gemm" });
                check(&name, ct, &down(&dev, &cd), &r32, &r64, 2.0);
            }
        }
    }
}

// ---- attention ----------------------------------------------------------------------------------------------------------

struct AttnRef {
    o: Vec<f64>,
    lse: Vec<f64>,
    dq: Vec<f64>,
    dk: Vec<f64>,
    dv: Vec<f64>,
}

/// softmax(scale q k^T + mask) v and its gradients on contiguous [B, H, N, D] data, with
/// `round` applied at the op boundaries a naive low-precision implementation has (scores,
/// probabilities, outputs, dP, dS, gradients); identity for the f64 reference.
#[allow(clippy::too_many_arguments, clippy::type_complexity)]
fn attn_ref<R: Real>(
    s: &AttnShape,
    scale: f64,
    qv_: &[f32],
    kv: &[f32],
    vv: &[f32],
    gv: &[f32],
    mask: &[u8],
    round: &dyn Fn(R) -> R,
) -> (Vec<R>, Vec<R>, Vec<R>, Vec<R>, Vec<R>) {
    let (nq, nk, d) = (s.q_len, s.kv_len, s.head_dim);
    let (mut o, mut lse) = (vec![R::zero(); s.batch * s.heads * nq * d], vec![R::zero(); s.batch * s.heads * nq]);
    let mut dq = vec![R::zero(); o.len()];
    let mut dk = vec![R::zero(); s.batch * s.heads * nk * d];
    let mut dv = vec![R::zero(); dk.len()];
    let sc = R::of(scale);
    for b in 0..s.batch {
        for h in 0..s.heads {
            let qb = (b * s.heads + h) * nq * d;
            let kb = (b * s.heads + h) * nk * d;
            let q: Vec<R> = conv(&qv_[qb..qb + nq * d]);
            let k: Vec<R> = conv(&kv[kb..kb + nk * d]);
            let v: Vec<R> = conv(&vv[kb..kb + nk * d]);
            let g: Vec<R> = conv(&gv[qb..qb + nq * d]);
            for i in 0..nq {
                let mut sc_row = vec![R::zero(); nk];
                let mut mx = R::of(f64::NEG_INFINITY);
                for j in 0..nk {
                    if mask[b * nk + j] == 0 {
                        continue;
                    }
                    let mut acc = R::zero();
                    for c in 0..d {
                        acc += q[i * d + c] * k[j * d + c];
                    }
                    sc_row[j] = round(acc) * sc;
                    if sc_row[j] > mx {
                        mx = sc_row[j];
                    }
                }
                let mut sum = R::zero();
                let mut p = vec![R::zero(); nk];
                for j in 0..nk {
                    if mask[b * nk + j] != 0 {
                        p[j] = (sc_row[j] - mx).exp();
                        sum += p[j];
                    }
                }
                lse[(b * s.heads + h) * nq + i] = mx + sum.ln();
                for pj in p.iter_mut() {
                    *pj = round(*pj / sum);
                }
                let mut orow = vec![R::zero(); d];
                for j in 0..nk {
                    for c in 0..d {
                        orow[c] += p[j] * v[j * d + c];
                    }
                }
                let orow: Vec<R> = orow.into_iter().map(round).collect();
                // delta = rowsum(dO * O) with the stored O.
                let mut delta = R::zero();
                for c in 0..d {
                    delta += g[i * d + c] * orow[c];
                    o[qb + i * d + c] = orow[c];
                }
                for j in 0..nk {
                    if mask[b * nk + j] == 0 {
                        continue;
                    }
                    let mut dp = R::zero();
                    for c in 0..d {
                        dp += g[i * d + c] * v[j * d + c];
                        dv[kb + j * d + c] += p[j] * g[i * d + c];
                    }
                    let ds = round(p[j] * (round(dp) - delta));
                    for c in 0..d {
                        dq[qb + i * d + c] += ds * k[j * d + c] * sc;
                        dk[kb + j * d + c] += ds * q[i * d + c] * sc;
                    }
                }
            }
        }
    }
    let r = |v: Vec<R>| v.into_iter().map(round).collect::<Vec<R>>();
    (o, lse, r(dq), r(dk), r(dv))
}

fn attn_reference(s: &AttnShape, scale: f32, q: &[f32], k: &[f32], v: &[f32], g: &[f32], mask: &[u8]) -> AttnRef {
    let (o, lse, dq, dk, dv) = attn_ref::<f64>(s, f64::from(scale), q, k, v, g, mask, &|x| x);
    AttnRef { o, lse, dq, dk, dv }
}

/// Copies [B, H, N, D] data into the given layout's memory (or back with `inverse`).
fn relayout(data: &[f32], shape: (usize, usize, usize, usize), view: Heads, total: usize, inverse: bool) -> Vec<f32> {
    let (b, h, n, d) = shape;
    let mut out = vec![0f32; if inverse { b * h * n * d } else { total }];
    for bb in 0..b {
        for hh in 0..h {
            for t in 0..n {
                for c in 0..d {
                    let lin = ((bb * h + hh) * n + t) * d + c;
                    let strided =
                        view.offset + bb * view.batch_stride + hh * view.head_stride + t * view.row_stride + c;
                    if inverse {
                        out[lin] = data[strided];
                    } else {
                        out[strided] = data[lin];
                    }
                }
            }
        }
    }
    out
}

fn attention_case(dev: &CudaDevice, dt: DType, head_dim: usize, bnhd: bool, imp: AttnImpl, masked: bool) {
    let shape = AttnShape { batch: 2, heads: 3, q_len: 97, kv_len: 203, head_dim };
    let (b, h, nq, nk, d) = (shape.batch, shape.heads, shape.q_len, shape.kv_len, shape.head_dim);
    let scale = 1.0 / (d as f32).sqrt();
    let qh = randn(b * h * nq * d, 110, dt);
    let k = randn(b * h * nk * d, 111, dt);
    let v = randn(b * h * nk * d, 112, dt);
    let g = randn(b * h * nq * d, 113, dt);
    let mut mask = vec![1u8; b * nk];
    if masked {
        // Mask a scattered 20% of keys and the whole tail of batch 1 (a padded prompt).
        for (j, m) in mask.iter_mut().enumerate() {
            if (j * 7919) % 5 == 0 || (j >= nk && j % nk > 150) {
                *m = 0;
            }
        }
    }
    let (qview, kview) = if bnhd {
        (Heads::bnhd(h, nq, d), Heads::bnhd(h, nk, d))
    } else {
        (Heads::bhnd(h, nq, d), Heads::bhnd(h, nk, d))
    };
    let qn = b * h * nq * d;
    let kn = b * h * nk * d;
    let put = |x: &[f32], view: Heads, total: usize| {
        up(dev, &relayout(x, (b, h, x.len() / (b * h * d), d), view, total, false), dt)
    };
    let (qd, kd, vd, gd) = (put(&qh, qview, qn), put(&k, kview, kn), put(&v, kview, kn), put(&g, qview, qn));
    let maskd = DeviceVec::from_slice(dev, &mask).unwrap();
    let km = masked.then_some(KeyMask { mask: &maskd, offset: 0, batch_stride: nk });
    let mut od = zeros(dev, dt, qn);
    let mut lse = zeros(dev, DType::F32, b * h * nq);
    let used = attention::attn_fwd(
        dev,
        shape,
        scale,
        AttnIn { data: &qd, view: qview },
        AttnIn { data: &kd, view: kview },
        AttnIn { data: &vd, view: kview },
        km,
        AttnOut { data: &mut od, view: qview },
        &mut lse,
        imp,
    )
    .unwrap();
    let (mut dqd, mut dkd, mut dvd) = (zeros(dev, dt, qn), zeros(dev, dt, kn), zeros(dev, dt, kn));
    attention::attn_bwd(
        dev,
        shape,
        scale,
        AttnIn { data: &qd, view: qview },
        AttnIn { data: &kd, view: kview },
        AttnIn { data: &vd, view: kview },
        AttnIn { data: &od, view: qview },
        AttnIn { data: &gd, view: qview },
        &lse,
        km,
        AttnOut { data: &mut dqd, view: qview },
        AttnOut { data: &mut dkd, view: kview },
        AttnOut { data: &mut dvd, view: kview },
        imp,
    )
    .unwrap();
    let back = |s: &CudaStorage, view: Heads, n: usize| relayout(&down(dev, s), (b, h, n, d), view, 0, true);
    let r = attn_reference(&shape, scale, &qh, &k, &v, &g, &mask);
    let lowp = |x: f32| q(x, dt);
    let (o32, lse32, dq32, dk32, dv32) = attn_ref::<f32>(&shape, f64::from(scale), &qh, &k, &v, &g, &mask, &lowp);
    let tag = format!("attn {used:?} d={d}{}{}", if bnhd { " bnhd" } else { "" }, if masked { " masked" } else { "" });
    check(&format!("{tag} fwd o"), dt, &back(&od, qview, nq), &o32, &r.o, 2.0);
    check(&format!("{tag} fwd lse"), DType::F32, &down(dev, &lse), &lse32, &r.lse, 2.0);
    check(&format!("{tag} bwd dq"), dt, &back(&dqd, qview, nq), &dq32, &r.dq, 3.0);
    check(&format!("{tag} bwd dk"), dt, &back(&dkd, kview, nk), &dk32, &r.dk, 3.0);
    check(&format!("{tag} bwd dv"), dt, &back(&dvd, kview, nk), &dv32, &r.dv, 3.0);
}

#[test]
fn attention_f32_simt() {
    let dev = gpu_or_skip!();
    attention_case(&dev, DType::F32, 64, false, AttnImpl::Auto, true);
    attention_case(&dev, DType::F32, 80, true, AttnImpl::Auto, false);
}

#[test]
fn attention_bf16_tensor_cores() {
    let dev = gpu_or_skip!();
    for d in [64, 128] {
        attention_case(&dev, DType::BF16, d, false, AttnImpl::TensorCore, false);
        attention_case(&dev, DType::BF16, d, true, AttnImpl::TensorCore, true);
    }
}

#[test]
fn attention_bf16_simt() {
    let dev = gpu_or_skip!();
    attention_case(&dev, DType::BF16, 64, false, AttnImpl::Simt, true);
    attention_case(&dev, DType::BF16, 72, true, AttnImpl::Auto, false);
}
