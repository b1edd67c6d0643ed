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
    /// A diffusers transformer folder: forward (and forward+backward) on random inputs.
    Model(ModelArgs),
    /// AutoencoderKL decode from a preset with random weights (f32 CPU): forward, and
    /// forward + backward of Σ sample·g to the latent (decoder frozen unless --param-grads).
    Vae(VaeArgs),
}

#[derive(clap::Args)]
pub struct VaeArgs {
    /// Preset: sd3 (= SD3.5), flux or sdxl.
    #[arg(long, default_value = "sd3")]
    config: String,
    /// Latent height = width (the image is 8× larger per side).
    #[arg(long, default_value_t = 64, value_parser = positive())]
    latent: usize,
    #[arg(long, default_value_t = 1, value_parser = positive())]
    batch: usize,
    /// Also time forward + backward.
    #[arg(long)]
    backward: bool,
    /// Checkpoint the decoder's mid and up blocks (recompute in backward).
    #[arg(long)]
    recompute: bool,
    /// Backward also to every decoder parameter (default: frozen decoder, latent only).
    #[arg(long)]
    param_grads: bool,
    /// Timed runs (the median is reported).
    #[arg(long, default_value_t = 3, value_parser = positive())]
    repeats: usize,
    /// Untimed runs before the timed ones (0 for large images, where one run takes minutes).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
}

#[derive(clap::Args)]
pub struct ModelArgs {
    /// A diffusers model folder (SD3Transformer2DModel or FluxTransformer2DModel).
    #[arg(long)]
    model: std::path::PathBuf,
    #[arg(long, default_value_t = 1, value_parser = positive())]
    batch: usize,
    /// Latent height (FLUX: before 2×2 packing, so tokens = height/2 · width/2).
    #[arg(long, default_value_t = 32, value_parser = positive())]
    height: usize,
    /// Latent width.
    #[arg(long, default_value_t = 32, value_parser = positive())]
    width: usize,
    /// Text tokens in encoder_hidden_states.
    #[arg(long, default_value_t = 16, value_parser = positive())]
    text_len: usize,
    /// Also time forward + backward of Σ sample² with respect to every parameter.
    #[arg(long)]
    backward: bool,
    #[arg(long, default_value = "cpu")]
    device: senseflow::Device,
    #[arg(long, default_value = "f32")]
    dtype: senseflow::DType,
    /// Timed runs after one warm-up (the median and the best are reported).
    #[arg(long, default_value_t = 5, value_parser = positive())]
    repeats: usize,
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
        Bench::Model(a) => model(a),
        Bench::Vae(a) => vae(a),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Peak resident set size of this process in MiB (Linux /proc; None elsewhere).
fn peak_rss_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn model(a: &ModelArgs) -> anyhow::Result<()> {
    use senseflow::models::flux::FluxInputs;
    use senseflow::models::{load_transformer, Transformer};
    senseflow::backend::cuda::require(a.device)?;
    let (m, store) = load_transformer(&a.model, a.dtype, a.backward)?;
    let mut rng = Philox::new(0xbe4c);
    let (b, l) = (a.batch, a.text_len);
    let mut randn = |shape: &[usize]| Tensor::randn(shape, &mut rng).to_dtype(a.dtype);
    // One closure runs the model on fixed inputs in diffusers' conventions.
    let run: Box<dyn Fn() -> senseflow::Result<Tensor>> = match &m {
        Transformer::Mmdit(model) => {
            let c = &model.cfg;
            let x = randn(&[b, c.in_channels, a.height, a.width])?;
            let ehs = randn(&[b, l, c.joint_attention_dim])?;
            let pooled = randn(&[b, c.pooled_projection_dim])?;
            let t = Tensor::full(500.0, &[b]).to_dtype(a.dtype)?;
            Box::new(move || model.forward(&x, &ehs, &pooled, &t))
        }
        Transformer::Flux(model) => {
            let c = &model.cfg;
            anyhow::ensure!(
                a.height % 2 == 0 && a.width % 2 == 0,
                "FLUX latents pack 2×2: height and width must be even"
            );
            let (gh, gw) = (a.height / 2, a.width / 2);
            let x = randn(&[b, gh * gw, c.in_channels])?;
            let ehs = randn(&[b, l, c.joint_attention_dim])?;
            let pooled = randn(&[b, c.pooled_projection_dim])?;
            let t = Tensor::full(0.5, &[b]).to_dtype(a.dtype)?;
            let g = c.guidance_embeds.then(|| Tensor::full(3.5, &[b]).to_dtype(a.dtype)).transpose()?;
            let axes = c.axes_dims_rope.len();
            let mut ids = vec![0f32; gh * gw * axes];
            for (i, row) in ids.chunks_mut(axes).enumerate() {
                row[1] = (i / gw) as f32;
                row[2] = (i % gw) as f32;
            }
            let img_ids = Tensor::from_vec(ids, &[gh * gw, axes])?.to_dtype(a.dtype)?;
            let txt_ids = Tensor::zeros(&[l, axes]).to_dtype(a.dtype)?;
            Box::new(move || {
                model.forward(&FluxInputs {
                    hidden_states: &x,
                    encoder_hidden_states: &ehs,
                    pooled_projections: &pooled,
                    timestep: &t,
                    img_ids: &img_ids,
                    txt_ids: &txt_ids,
                    guidance: g.as_ref(),
                })
            })
        }
    };
    let time_forward = || -> anyhow::Result<(f64, u64)> {
        let _g = senseflow::no_grad();
        ops::counters::take_flops();
        let t = Instant::now();
        drop(run()?);
        Ok((t.elapsed().as_secs_f64() * 1e3, ops::counters::take_flops()))
    };
    time_forward()?;
    let mut fwd = Vec::with_capacity(a.repeats);
    let mut fwd_flops = 0;
    for _ in 0..a.repeats {
        let (ms, f) = time_forward()?;
        fwd.push(ms);
        fwd_flops = f;
    }
    // The best run is reported beside the median: on a shared machine it is the
    // figure least disturbed by other processes.
    let fwd_min = fwd.iter().copied().fold(f64::INFINITY, f64::min);
    let fwd_ms = median(fwd);
    let mut report = serde_json::json!({
        "bench": "model",
        "model": a.model.display().to_string(),
        "class": m.class_name(),
        "parameters": store.num_elements(),
        "device": a.device.to_string(),
        "dtype": a.dtype.to_string(),
        "threads": cpu::num_threads(),
        "batch": b,
        "height": a.height,
        "width": a.width,
        "text_len": l,
        "repeats": a.repeats,
        "forward_ms": fwd_ms,
        "forward_min_ms": fwd_min,
        "forward_gflop": fwd_flops as f64 / 1e9,
        "forward_gflops": fwd_flops as f64 / (fwd_ms * 1e6),
    });
    if a.backward {
        let time_step = || -> anyhow::Result<(f64, u64)> {
            ops::counters::take_flops();
            let t = Instant::now();
            let y = run()?;
            let loss = y.sqr()?.mean_all()?;
            drop(senseflow::backward(&loss)?);
            Ok((t.elapsed().as_secs_f64() * 1e3, ops::counters::take_flops()))
        };
        time_step()?;
        let mut step = Vec::with_capacity(a.repeats);
        let mut step_flops = 0;
        for _ in 0..a.repeats {
            let (ms, f) = time_step()?;
            step.push(ms);
            step_flops = f;
        }
        let step_min = step.iter().copied().fold(f64::INFINITY, f64::min);
        let step_ms = median(step);
        report["forward_backward_ms"] = step_ms.into();
        report["forward_backward_min_ms"] = step_min.into();
        report["forward_backward_gflop"] = (step_flops as f64 / 1e9).into();
        report["forward_backward_gflops"] = (step_flops as f64 / (step_ms * 1e6)).into();
    }
    report["peak_rss_mib"] = peak_rss_mib().into();
    emit(&format!("{report}\n"))
}

fn vae(a: &VaeArgs) -> anyhow::Result<()> {
    use senseflow::models::vae::{AutoencoderKL, Config};
    use senseflow::nn::{ParamStore, VarBuilder};
    let cfg = Config::preset(&a.config)?;
    let store = ParamStore::new();
    let mut vb = VarBuilder::fresh(&store, senseflow::DType::F32, 0x7ae);
    if !a.param_grads {
        vb = vb.frozen();
    }
    let mut model = AutoencoderKL::new(cfg.clone(), &vb)?;
    model.set_recompute(a.recompute);
    let decoder_params: usize = store
        .named()
        .iter()
        .filter(|(k, _)| k.starts_with("decoder.") || k.starts_with("post_quant_conv."))
        .map(|(_, t)| t.numel())
        .sum();
    let mut rng = Philox::new(0xbe4c);
    let n = a.latent;
    let z = Tensor::randn(&[a.batch, cfg.latent_channels, n, n], &mut rng);
    let side = n * cfg.downscale_factor();
    let g = Tensor::randn(&[a.batch, cfg.out_channels, side, side], &mut rng);
    let time_forward = || -> anyhow::Result<(f64, u64)> {
        let _g = senseflow::no_grad();
        ops::counters::take_flops();
        let t = Instant::now();
        drop(model.decode(&z)?);
        Ok((t.elapsed().as_secs_f64() * 1e3, ops::counters::take_flops()))
    };
    for _ in 0..a.warmup {
        time_forward()?;
    }
    let mut fwd = Vec::with_capacity(a.repeats);
    let mut fwd_flops = 0;
    for _ in 0..a.repeats {
        let (ms, f) = time_forward()?;
        fwd.push(ms);
        fwd_flops = f;
    }
    let fwd_ms = median(fwd);
    let mut report = serde_json::json!({
        "bench": "vae_decode",
        "config": a.config,
        "decoder_parameters": decoder_params,
        "device": "cpu",
        "dtype": "f32",
        "threads": cpu::num_threads(),
        "batch": a.batch,
        "latent": [cfg.latent_channels, n, n],
        "image": [cfg.out_channels, side, side],
        "repeats": a.repeats,
        "warmup": a.warmup,
        "forward_ms": fwd_ms,
        "forward_gflop": fwd_flops as f64 / 1e9,
        "forward_gflops": fwd_flops as f64 / (fwd_ms * 1e6),
    });
    if a.backward {
        let time_step = || -> anyhow::Result<(f64, u64, usize)> {
            ops::counters::take_flops();
            let t = Instant::now();
            let zv = z.var();
            let y = model.decode(&zv)?;
            let nodes = senseflow::autograd::tape_len();
            let grads = senseflow::backward(&y.mul(&g)?.sum_all()?)?;
            anyhow::ensure!(grads.get(&zv).is_some(), "no gradient reached the latent");
            drop(grads);
            Ok((t.elapsed().as_secs_f64() * 1e3, ops::counters::take_flops(), nodes))
        };
        for _ in 0..a.warmup {
            time_step()?;
        }
        let mut step = Vec::with_capacity(a.repeats);
        let (mut step_flops, mut nodes) = (0, 0);
        for _ in 0..a.repeats {
            let (ms, f, k) = time_step()?;
            step.push(ms);
            step_flops = f;
            nodes = k;
        }
        let step_ms = median(step);
        report["recompute"] = a.recompute.into();
        report["param_grads"] = a.param_grads.into();
        report["tape_nodes_after_forward"] = nodes.into();
        report["forward_backward_ms"] = step_ms.into();
        report["forward_backward_gflop"] = (step_flops as f64 / 1e9).into();
        report["forward_backward_gflops"] = (step_flops as f64 / (step_ms * 1e6)).into();
    }
    report["peak_rss_mib"] = peak_rss_mib().into();
    emit(&format!("{report}\n"))
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
    let median = if ms.len() % 2 == 1 { ms[ms.len() / 2] } else { (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) / 2.0 };
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
