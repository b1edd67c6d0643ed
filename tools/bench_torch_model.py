"""PyTorch peer of `senseflow bench model`: times the same diffusers transformer on
random inputs of the same shapes and prints ONE JSON object with the same keys.

Inputs (as src/cli/bench.rs builds them):
  SD3 (SD3Transformer2DModel): hidden_states [B, C, H, W], encoder_hidden_states
      [B, L, joint_attention_dim], pooled_projections [B, pooled_projection_dim],
      timestep [B] = 500.
  FLUX (FluxTransformer2DModel): hidden_states [B, H/2 * W/2, in_channels] packed tokens,
      encoder_hidden_states [B, L, joint_attention_dim], pooled [B, pooled_projection_dim],
      timestep [B] = 0.5, guidance [B] = 3.5 when guidance_embeds, img_ids [N, 3] =
      (0, row, col), txt_ids [L, 3] = 0.
Forward runs under torch.no_grad(); forward+backward computes loss = mean(sample^2) and
torch.autograd.grad(loss, all parameters) (fresh gradients each step, as the engine's
backward returns them, no accumulation into .grad). One untimed warm-up each, then the
median (and the best) of --repeats timed runs. GFLOP figures come from torch.utils.flop_counter (matmuls
and attention only, as the engine's counter), measured on one extra untimed run.

    /work/venv-ref/bin/python tools/bench_torch_model.py --model runs/bench-models/tiny-mmdit \
        --threads 1 --batch 8 --height 32 --width 32 --text-len 16 --backward
"""

import argparse
import json
import os
import resource
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", help="diffusers model folder (from_pretrained)")
    src.add_argument("--config", help="config.json (random weights, diffusers init)")
    ap.add_argument("--threads", type=int, required=True, help="torch.set_num_threads(N)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--height", type=int, default=32)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--text-len", type=int, default=16)
    ap.add_argument("--backward", action="store_true")
    ap.add_argument("--dtype", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()

    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    torch.set_num_threads(a.threads)
    dtype = {"f32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    classes = {c.__name__: c for c in (SD3Transformer2DModel, FluxTransformer2DModel)}
    if a.model:
        with open(os.path.join(a.model, "config.json")) as f:
            cls = classes[json.load(f)["_class_name"]]
        model = cls.from_pretrained(a.model, torch_dtype=dtype)
    else:
        with open(a.config) as f:
            cfg = json.load(f)
        cls = classes[cfg["_class_name"]]
        model = cls.from_config(cfg).to(dtype)
    model.eval()
    c = model.config
    g = torch.Generator().manual_seed(0xBE4C)
    randn = lambda *s: torch.randn(*s, generator=g).to(dtype)
    b, l = a.batch, a.text_len
    if cls is SD3Transformer2DModel:
        kw = dict(
            hidden_states=randn(b, c.in_channels, a.height, a.width),
            encoder_hidden_states=randn(b, l, c.joint_attention_dim),
            pooled_projections=randn(b, c.pooled_projection_dim),
            timestep=torch.full((b,), 500.0, dtype=dtype),
        )
    else:
        if a.height % 2 or a.width % 2:
            sys.exit("FLUX latents pack 2x2: height and width must be even")
        gh, gw = a.height // 2, a.width // 2
        ids = torch.zeros(gh * gw, 3)
        ids[:, 1] = torch.arange(gh * gw) // gw
        ids[:, 2] = torch.arange(gh * gw) % gw
        kw = dict(
            hidden_states=randn(b, gh * gw, c.in_channels),
            encoder_hidden_states=randn(b, l, c.joint_attention_dim),
            pooled_projections=randn(b, c.pooled_projection_dim),
            timestep=torch.full((b,), 0.5, dtype=dtype),
            img_ids=ids.to(dtype),
            txt_ids=torch.zeros(l, 3, dtype=dtype),
        )
        if c.guidance_embeds:
            kw["guidance"] = torch.full((b,), 3.5, dtype=dtype)
    params = [p for p in model.parameters()]

    def forward():
        with torch.no_grad():
            model(**kw, return_dict=False)[0]

    def step():
        y = model(**kw, return_dict=False)[0]
        loss = y.square().mean()
        torch.autograd.grad(loss, params)

    def timed(fn):
        fn()  # warm-up
        ms = []
        for _ in range(a.repeats):
            t = time.perf_counter()
            fn()
            ms.append((time.perf_counter() - t) * 1e3)
        fc = FlopCounterMode(display=False)
        with fc:
            fn()
        return statistics.median(ms), min(ms), fc.get_total_flops()

    fwd_ms, fwd_min, fwd_flop = timed(forward)
    report = {
        "bench": "model",
        "engine": f"torch {torch.__version__}",
        "model": a.model or a.config,
        "class": cls.__name__,
        "parameters": sum(p.numel() for p in params),
        "device": "cpu",
        "dtype": a.dtype,
        "threads": torch.get_num_threads(),
        "batch": b,
        "height": a.height,
        "width": a.width,
        "text_len": l,
        "repeats": a.repeats,
        "forward_ms": fwd_ms,
        "forward_min_ms": fwd_min,
        "forward_gflop": fwd_flop / 1e9,
        "forward_gflops": fwd_flop / (fwd_ms * 1e6),
    }
    if a.backward:
        step_ms, step_min, step_flop = timed(step)
        report["forward_backward_ms"] = step_ms
        report["forward_backward_min_ms"] = step_min
        report["forward_backward_gflop"] = step_flop / 1e9
        report["forward_backward_gflops"] = step_flop / (step_ms * 1e6)
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(report))


if __name__ == "__main__":
    main()
