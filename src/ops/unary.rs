//! Elementwise activations and math functions, each with its derivative.

use super::{cpu_out, same_device};
use crate::autograd::{record, Backward};
use crate::backend::cpu;
use crate::backend::cpu::fastmath::exp_fast;
use crate::error::Result;
use crate::tensor::Tensor;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const INV_SQRT_2: f32 = std::f32::consts::FRAC_1_SQRT_2;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryOp {
    Exp,
    Log,
    Sqrt,
    Rsqrt,
    Tanh,
    Sigmoid,
    Silu,
    /// 0.5·x·(1 + erf(x/√2)) — torch `gelu(approximate="none")`.
    GeluErf,
    /// 0.5·x·(1 + tanh(√(2/π)(x + 0.044715x³))) — torch `gelu(approximate="tanh")`.
    GeluTanh,
    /// x·σ(1.702x) — CLIP's quick_gelu.
    QuickGelu,
    Relu,
    LeakyRelu(f32),
    Sqr,
    Abs,
    /// torch.nan_to_num: NaN → 0, ±∞ → ±f32::MAX; gradient 1 where x is finite.
    NanToNum,
}

/// σ(x) through the vectorizable `exp_fast` (a few ulp; libm's expf kept the SiLU and
/// GELU loops scalar).
#[inline(always)]
fn sigmoid_f(x: f32) -> f32 {
    1.0 / (1.0 + exp_fast(-x))
}

/// GELU-tanh's inner argument 2·√(2/π)(x + 0.044715x³): 0.5(1 + tanh(u)) = σ(2u), so
/// gelu_tanh(x) = x·σ(2u) with no cancellation anywhere.
#[inline(always)]
fn gelu_tanh_2u(x: f32) -> f32 {
    2.0 * SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)
}

impl UnaryOp {
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Silu => "silu",
            UnaryOp::GeluErf => "gelu",
            UnaryOp::GeluTanh => "gelu_tanh",
            UnaryOp::QuickGelu => "quick_gelu",
            UnaryOp::Relu => "relu",
            UnaryOp::LeakyRelu(_) => "leaky_relu",
            UnaryOp::Sqr => "sqr",
            UnaryOp::Abs => "abs",
            UnaryOp::NanToNum => "nan_to_num",
        }
    }

    #[inline(always)]
    pub fn f(self, x: f32) -> f32 {
        match self {
            UnaryOp::Exp => x.exp(),
            UnaryOp::Log => x.ln(),
            UnaryOp::Sqrt => x.sqrt(),
            UnaryOp::Rsqrt => 1.0 / x.sqrt(),
            UnaryOp::Tanh => x.tanh(),
            UnaryOp::Sigmoid => sigmoid_f(x),
            UnaryOp::Silu => x * sigmoid_f(x),
            UnaryOp::GeluErf => 0.5 * x * (1.0 + libm::erff(x * INV_SQRT_2)),
            UnaryOp::GeluTanh => x * sigmoid_f(gelu_tanh_2u(x)),
            UnaryOp::QuickGelu => x * sigmoid_f(1.702 * x),
            UnaryOp::Relu => x.max(0.0),
            UnaryOp::LeakyRelu(s) => {
                if x > 0.0 {
                    x
                } else {
                    s * x
                }
            }
            UnaryOp::Sqr => x * x,
            UnaryOp::Abs => x.abs(),
            UnaryOp::NanToNum => {
                if x.is_nan() {
                    0.0
                } else {
                    x.clamp(f32::MIN, f32::MAX)
                }
            }
        }
    }

    /// dy/dx given the input `x` and the output `y = f(x)`.
    #[inline(always)]
    pub fn df(self, x: f32, y: f32) -> f32 {
        match self {
            UnaryOp::Exp => y,
            UnaryOp::Log => 1.0 / x,
            UnaryOp::Sqrt => 0.5 / y,
            UnaryOp::Rsqrt => -0.5 * y * y * y,
            UnaryOp::Tanh => 1.0 - y * y,
            UnaryOp::Sigmoid => y * (1.0 - y),
            UnaryOp::Silu => {
                let s = sigmoid_f(x);
                s * (1.0 + x * (1.0 - s))
            }
            UnaryOp::GeluErf => {
                let cdf = 0.5 * (1.0 + libm::erff(x * INV_SQRT_2));
                let pdf = (-0.5 * x * x).exp() * (SQRT_2_OVER_PI * 0.5);
                cdf + x * pdf
            }
            UnaryOp::GeluTanh => {
                // With s = σ(2u) = 0.5(1 + tanh u): 1 − tanh²u = 4s(1 − s), so
                // d/dx = s + 0.5·x·(1 − tanh²u)·u' = s + 2x·s(1 − s)·u'.
                let s = sigmoid_f(gelu_tanh_2u(x));
                let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x);
                s + 2.0 * x * s * (1.0 - s) * du
            }
            UnaryOp::QuickGelu => {
                let s = sigmoid_f(1.702 * x);
                s + 1.702 * x * s * (1.0 - s)
            }
            UnaryOp::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            UnaryOp::LeakyRelu(s) => {
                if x > 0.0 {
                    1.0
                } else {
                    s
                }
            }
            UnaryOp::Sqr => 2.0 * x,
            UnaryOp::Abs => x.signum() * (x != 0.0) as i32 as f32,
            UnaryOp::NanToNum => x.is_finite() as i32 as f32,
        }
    }
}

/// Runs `$body` with `$o` bound to `$op` as a constant, one arm per variant, so each
/// loop is compiled for one function: closures that use the const capture nothing,
/// the per-element `match` folds away and the loop vectorizes.
macro_rules! specialized {
    ($op:expr, $o:ident => $body:expr) => {
        match $op {
            UnaryOp::Exp => {
                const $o: UnaryOp = UnaryOp::Exp;
                $body
            }
            UnaryOp::Log => {
                const $o: UnaryOp = UnaryOp::Log;
                $body
            }
            UnaryOp::Sqrt => {
                const $o: UnaryOp = UnaryOp::Sqrt;
                $body
            }
            UnaryOp::Rsqrt => {
                const $o: UnaryOp = UnaryOp::Rsqrt;
                $body
            }
            UnaryOp::Tanh => {
                const $o: UnaryOp = UnaryOp::Tanh;
                $body
            }
            UnaryOp::Sigmoid => {
                const $o: UnaryOp = UnaryOp::Sigmoid;
                $body
            }
            UnaryOp::Silu => {
                const $o: UnaryOp = UnaryOp::Silu;
                $body
            }
            UnaryOp::GeluErf => {
                const $o: UnaryOp = UnaryOp::GeluErf;
                $body
            }
            UnaryOp::GeluTanh => {
                const $o: UnaryOp = UnaryOp::GeluTanh;
                $body
            }
            UnaryOp::QuickGelu => {
                const $o: UnaryOp = UnaryOp::QuickGelu;
                $body
            }
            UnaryOp::Relu => {
                const $o: UnaryOp = UnaryOp::Relu;
                $body
            }
            UnaryOp::Sqr => {
                const $o: UnaryOp = UnaryOp::Sqr;
                $body
            }
            UnaryOp::Abs => {
                const $o: UnaryOp = UnaryOp::Abs;
                $body
            }
            UnaryOp::NanToNum => {
                const $o: UnaryOp = UnaryOp::NanToNum;
                $body
            }
            UnaryOp::LeakyRelu(_) => {
                #[allow(non_snake_case)]
                let $o = $op;
                $body
            }
        }
    };
}

pub fn unary(op: UnaryOp, x: &Tensor) -> Result<Tensor> {
    same_device(op.name(), &[x])?;
    let xs = x.cpu_f32()?;
    let y = specialized!(op, OP => cpu::unary::map(&xs, |v| OP.f(v)));
    drop(xs);
    let out = cpu_out(y, x.shape(), x.dtype());
    let saved_y = out.detach();
    Ok(record(out, &[x], || UnaryBackward { op, x: x.detach(), y: saved_y }))
}

struct UnaryBackward {
    op: UnaryOp,
    x: Tensor,
    y: Tensor,
}

impl Backward for UnaryBackward {
    fn name(&self) -> &'static str {
        self.op.name()
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let op = self.op;
        let (x, y, gv) = (self.x.cpu_f32()?, self.y.cpu_f32()?, g.cpu_f32()?);
        let dx = specialized!(op, OP => cpu::unary::map3(&x, &y, &gv, |x, y, g| g * OP.df(x, y)));
        Ok(vec![Some(cpu_out(dx, self.x.shape(), g.dtype()))])
    }
}

macro_rules! unary_fns {
    ($($name:ident => $op:expr),* $(,)?) => {
        $(pub fn $name(x: &Tensor) -> Result<Tensor> { unary($op, x) })*
        impl Tensor {
            $(pub fn $name(&self) -> Result<Tensor> { unary($op, self) })*
        }
    };
}

unary_fns! {
    exp => UnaryOp::Exp,
    log => UnaryOp::Log,
    sqrt => UnaryOp::Sqrt,
    rsqrt => UnaryOp::Rsqrt,
    tanh => UnaryOp::Tanh,
    sigmoid => UnaryOp::Sigmoid,
    silu => UnaryOp::Silu,
    gelu => UnaryOp::GeluErf,
    gelu_tanh => UnaryOp::GeluTanh,
    quick_gelu => UnaryOp::QuickGelu,
    relu => UnaryOp::Relu,
    sqr => UnaryOp::Sqr,
    abs => UnaryOp::Abs,
    nan_to_num => UnaryOp::NanToNum,
}

pub fn leaky_relu(x: &Tensor, slope: f32) -> Result<Tensor> {
    unary(UnaryOp::LeakyRelu(slope), x)
}
