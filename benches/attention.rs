//! Fused attention on the CPU backend: forward, and forward + backward, at the
//! tiny-demo MMDiT shapes and one longer sequence. The kernels are called directly
//! (the op layer only wraps them; going through the tape would add the loss's own
//! elementwise ops to the timing).
//!
//! FLOPs (the FlashAttention convention): forward 4·B·H·Nq·Nk·D, backward 2.5× that,
//! so forward + backward counts 3.5×. Criterion's throughput line reports them as
//! elem/s; each benchmark also prints its mean GFLOP/s over every timed iteration.
//! Measurement is short (10 samples, 2 s) so the bench fits a shared 2-core machine.
//!
//! Allocator note (measured on the 2-core dev VM): glibc trims the heap after each
//! iteration frees its megabyte-sized outputs, and with two rayon threads the trims'
//! TLB-shootdown IPIs took ~35% of the fwd+bwd time, making 2 threads slower than 1.
//! `GLIBC_TUNABLES=glibc.malloc.trim_threshold=536870912:glibc.malloc.mmap_threshold=33554432`
//! removes that: 2 threads then ran 1.4–2× faster than 1 instead of slower.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use senseflow::backend::cpu::attention::{attention_bwd, attention_fwd, AttnArgs, AttnShape, HeadsRef};
use senseflow::rng::Philox;
use std::cell::Cell;
use std::time::{Duration, Instant};

const SHAPES: [(usize, usize, usize, usize); 3] = [(8, 4, 80, 32), (8, 4, 272, 32), (2, 4, 1024, 64)];

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("attention");
    for (b, h, n, d) in SHAPES {
        let mut rng = Philox::new(7);
        let [q, k, v, g] = [(); 4].map(|_| rng.normal_vec(b * h * n * d));
        let shape = AttnShape { b, h, nq: n, nk: n, d, dv: d };
        let args = AttnArgs {
            shape,
            q: HeadsRef::contiguous(&q, h, n, d),
            k: HeadsRef::contiguous(&k, h, n, d),
            v: HeadsRef::contiguous(&v, h, n, d),
            mask: None,
            scale: 1.0 / (d as f32).sqrt(),
            causal: false,
        };
        let fwd_flops = 4 * b * h * n * n * d;
        let label = format!("B{b}_H{h}_N{n}_D{d}");
        for (kind, flops) in [("fwd", fwd_flops), ("fwd+bwd", fwd_flops * 7 / 2)] {
            let timed = Cell::new((0u64, Duration::ZERO));
            group.throughput(Throughput::Elements(flops as u64));
            group.bench_function(BenchmarkId::new(kind, &label), |bencher| {
                bencher.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        let (o, lse) = attention_fwd(&args);
                        if kind == "fwd+bwd" {
                            std::hint::black_box(attention_bwd(
                                &args,
                                HeadsRef::contiguous(&o, h, n, d),
                                HeadsRef::contiguous(&g, h, n, d),
                                &lse,
                            ));
                        }
                        std::hint::black_box((o, lse));
                    }
                    let dt = start.elapsed();
                    let (i, t) = timed.get();
                    timed.set((i + iters, t + dt));
                    dt
                })
            });
            let (iters, total) = timed.get();
            if iters > 0 {
                let secs = total.as_secs_f64() / iters as f64;
                let gflops = flops as f64 / secs / 1e9;
                println!("attention {kind} {label}: {:.3} ms/iter, {gflops:.1} GFLOP/s", secs * 1e3);
            }
        }
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .measurement_time(Duration::from_secs(2))
        .warm_up_time(Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
