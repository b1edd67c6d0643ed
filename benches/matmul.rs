//! CPU GEMM path: `ops::matmul` and `ops::linear` (x @ Wᵀ + b, W stored [out, in]) at the
//! tiny demo model's shapes, plus a 512³ square product as a machine-to-machine reference.
//!
//! Criterion's throughput is set to the FLOP count (2·batch·m·n·k; the bias add of
//! `linear` is not counted), so its "elem/s" reads as FLOP/s. After each group the bench
//! also prints one `GFLOP/s` line per case from the median of criterion's own measurement
//! samples (not the warm-up), because that is the number performance reports quote.
//!
//! Run: `cargo bench --bench matmul` (add a name filter to run one case). Everything runs
//! under no-grad: the tape is not part of the GEMM cost.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use senseflow::rng::Philox;
use senseflow::{ops, Result, Tensor};
use std::cell::RefCell;
use std::hint::black_box;
use std::time::{Duration, Instant};

const SAMPLES: usize = 10;

/// One benchmarked product: [batch, m, k] @ [batch, k, n] (batch 1: plain 2-D), named
/// `m x k x n` in the output.
struct Case {
    name: &'static str,
    batch: usize,
    m: usize,
    n: usize,
    k: usize,
}

impl Case {
    fn flops(&self) -> u64 {
        2 * (self.batch * self.m * self.n * self.k) as u64
    }
    fn id(&self) -> String {
        if self.batch == 1 {
            format!("{}/{}x{}x{}", self.name, self.m, self.k, self.n)
        } else {
            format!("{}/{}x[{}x{}x{}]", self.name, self.batch, self.m, self.k, self.n)
        }
    }
}

const MATMUL: [Case; 4] = [
    // Demo model (8 images): patch tokens × hidden 128 → MLP 512.
    Case { name: "tokens_mlp", batch: 1, m: 8 * 80, n: 512, k: 128 },
    // Demo model with text tokens (8 × 272 tokens), hidden 192 → 768.
    Case { name: "joint_mlp", batch: 1, m: 8 * 272, n: 768, k: 192 },
    // Attention scores per head: [heads·batch, tokens, head_dim] @ [.., head_dim, tokens].
    Case { name: "attn_scores", batch: 32, m: 80, n: 80, k: 32 },
    Case { name: "square", batch: 1, m: 512, n: 512, k: 512 },
];

/// `linear` cases as (m, in, out): x [m, in], W [out, in], bias [out].
const LINEAR: [Case; 3] = [
    Case { name: "tokens_mlp", batch: 1, m: 8 * 80, n: 512, k: 128 },
    Case { name: "joint_mlp", batch: 1, m: 8 * 272, n: 768, k: 192 },
    Case { name: "square", batch: 1, m: 512, n: 512, k: 512 },
];

fn randn(shape: &[usize], seed: u64) -> Tensor {
    Tensor::randn(shape, &mut Philox::new(seed))
}

/// Benchmarks `f` under criterion and records the per-call time of every sample, so the
/// median of the measurement phase can be printed as GFLOP/s afterwards.
fn run_case(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    op: &str,
    case: &Case,
    f: impl Fn() -> Result<Tensor>,
) {
    let per_call: RefCell<Vec<f64>> = RefCell::new(Vec::new());
    group.throughput(Throughput::Elements(case.flops()));
    group.bench_function(BenchmarkId::from_parameter(case.id()), |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                black_box(f().expect("benchmark op failed"));
            }
            let d = t.elapsed();
            per_call.borrow_mut().push(d.as_secs_f64() / iters as f64);
            d
        })
    });
    let mut s = per_call.into_inner();
    if s.is_empty() {
        return; // filtered out
    }
    // Criterion calls the routine once per measurement sample after its warm-up calls.
    let mut s = s.split_off(s.len().saturating_sub(SAMPLES));
    s.sort_by(f64::total_cmp);
    let median = if s.len() % 2 == 1 { s[s.len() / 2] } else { (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0 };
    println!(
        "GFLOP/s {:<40} {:>8.2} GFLOP/s  median {:.3} ms  ({} threads)",
        format!("{op}/{}", case.id()),
        case.flops() as f64 / median / 1e9,
        median * 1e3,
        senseflow::backend::cpu::num_threads()
    );
}

fn bench_matmul(c: &mut Criterion) {
    let _g = senseflow::no_grad();
    let mut group = c.benchmark_group("matmul");
    for case in &MATMUL {
        let (sa, sb) = if case.batch == 1 {
            (vec![case.m, case.k], vec![case.k, case.n])
        } else {
            (vec![case.batch, case.m, case.k], vec![case.batch, case.k, case.n])
        };
        let (a, b) = (randn(&sa, 1), randn(&sb, 2));
        run_case(&mut group, "matmul", case, || ops::matmul(&a, &b));
    }
    group.finish();
}

fn bench_linear(c: &mut Criterion) {
    let _g = senseflow::no_grad();
    let mut group = c.benchmark_group("linear");
    for case in &LINEAR {
        let (x, w, bias) = (randn(&[case.m, case.k], 3), randn(&[case.n, case.k], 4), randn(&[case.n], 5));
        run_case(&mut group, "linear", case, || ops::linear(&x, &w, Some(&bias)));
    }
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .sample_size(SAMPLES)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
}

criterion_group! {
    name = benches;
    config = config();
    targets = bench_matmul, bench_linear
}
criterion_main!(benches);
