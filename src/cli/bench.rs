//! `senseflow bench <kernel>`: times one engine op and prints ONE JSON object (median and
//! best wall time, throughput, thread count), so runs can be collected and compared by
//! scripts. Inputs come from a fixed Philox seed; the op runs under no-grad after one
//! untimed warm-up call.

use super::emit;
use senseflow::backend::cpu;
use senseflow::rng::Philox;
use senseflow::{ops, Tensor};
use std::time::Instant;

fn positive() -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
}

#[derive(clap::Subcommand)]
pub enum Bench {
    /// CPU GEMM (ops::matmul): [batch, m, k] @ [batch, k, n] in f32.
    Matmul(MatmulArgs),
}

#[derive(clap::Args)]
pub struct MatmulArgs {
    #[arg(long, default_value_t = 512, value_parser = positive())]
    m: usize,
    #[arg(long, default_value_t = 512, value_parser = positive())]
    n: usize,
    #[arg(long, default_value_t = 512, value_parser = positive())]
    k: usize,
    /// Independent products in one batched call (1: plain 2-D matmul).
    #[arg(long, default_value_t = 1, value_parser = positive())]
    batch: usize,
    /// Timed calls (the median is reported).
    #[arg(long, default_value_t = 10, value_parser = positive())]
    repeats: usize,
}

pub fn run(b: &Bench) -> anyhow::Result<()> {
    match b {
        Bench::Matmul(a) => matmul(a),
    }
}

fn matmul(a: &MatmulArgs) -> anyhow::Result<()> {
    let _g = senseflow::no_grad();
    let (sa, sb) = if a.batch == 1 {
        (vec![a.m, a.k], vec![a.k, a.n])
    } else {
        (vec![a.batch, a.m, a.k], vec![a.batch, a.k, a.n])
    };
    let mut rng = Philox::new(0xbe4c);
    let (x, y) = (Tensor::randn(&sa, &mut rng), Tensor::randn(&sb, &mut rng));
    ops::matmul(&x, &y)?;
    let mut ms = Vec::with_capacity(a.repeats);
    for _ in 0..a.repeats {
        let t = Instant::now();
        let z = ops::matmul(&x, &y)?;
        ms.push(t.elapsed().as_secs_f64() * 1e3);
        drop(z);
    }
    ms.sort_by(f64::total_cmp);
    let median = if ms.len() % 2 == 1 {
        ms[ms.len() / 2]
    } else {
        (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) / 2.0
    };
    let flops = 2.0 * (a.batch * a.m * a.n * a.k) as f64;
    let report = serde_json::json!({
        "bench": "matmul",
        "device": "cpu",
        "dtype": "f32",
        "batch": a.batch,
        "m": a.m,
        "n": a.n,
        "k": a.k,
        "threads": cpu::num_threads(),
        "repeats": a.repeats,
        "median_ms": median,
        "min_ms": ms[0],
        "gflops": flops / (median * 1e6),
    });
    emit(&format!("{report}\n"))
}
