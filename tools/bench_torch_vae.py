"""PyTorch peer of `senseflow bench vae`: diffusers AutoencoderKL decode from a published
config with random weights, float32 on the CPU, the same thread count, latent size and loss.

Prints ONE JSON object with the fields of `senseflow bench vae`:
  forward_ms             median wall time of vae.decode(z) under torch.no_grad()
  forward_backward_ms    median wall time of decode + backward of sum(sample * g) to z
                         (decoder frozen: requires_grad False; --param-grads trains it)
  peak_rss_mib           the process's peak resident set (ru_maxrss)
--recompute turns on diffusers' own gradient checkpointing (vae.enable_gradient_checkpointing():
the decoder's mid block and each up block are checkpointed, the same segments as senseflow's).
`--warmup` untimed runs (default 1) precede the timed repeats of each measurement.

    /work/venv-ref/bin/python tools/bench_torch_vae.py --config sd3 --latent 32 --threads 2 --backward
"""

import argparse
import json
import resource
import statistics
import time

import torch
from diffusers import AutoencoderKL

PRESETS = {
    "sd3": dict(latent_channels=16, scaling_factor=1.5305, shift_factor=0.0609,
                use_quant_conv=False, use_post_quant_conv=False),
    "flux": dict(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159,
                 use_quant_conv=False, use_post_quant_conv=False),
    "sdxl": dict(latent_channels=4, scaling_factor=0.13025),
}
COMMON = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
              up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512),
              layers_per_block=2, norm_num_groups=32, sample_size=1024)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="sd3", choices=sorted(PRESETS))
    ap.add_argument("--latent", type=int, default=64)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backward", action="store_true")
    ap.add_argument("--recompute", action="store_true")
    ap.add_argument("--param-grads", action="store_true")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    vae = AutoencoderKL(**COMMON, **PRESETS[a.config]).eval()
    vae.requires_grad_(a.param_grads)
    if a.recompute:
        vae.enable_gradient_checkpointing()
    lat = vae.config.latent_channels
    z = torch.randn(a.batch, lat, a.latent, a.latent)
    side = a.latent * 2 ** (len(vae.config.block_out_channels) - 1)
    g = torch.randn(a.batch, 3, side, side)
    dec_params = sum(p.numel() for n, p in vae.named_parameters() if n.startswith(("decoder.", "post_quant_conv.")))

    def fwd():
        with torch.no_grad():
            t = time.perf_counter()
            vae.decode(z).sample
            return (time.perf_counter() - t) * 1e3

    def step():
        t = time.perf_counter()
        zv = z.clone().requires_grad_(True)
        y = vae.decode(zv).sample
        (y * g).sum().backward()
        assert zv.grad is not None
        vae.zero_grad(set_to_none=True)
        return (time.perf_counter() - t) * 1e3

    for _ in range(a.warmup):
        fwd()
    report = {
        "bench": "vae_decode_torch",
        "config": a.config,
        "decoder_parameters": dec_params,
        "device": "cpu",
        "dtype": "f32",
        "threads": torch.get_num_threads(),
        "batch": a.batch,
        "latent": [lat, a.latent, a.latent],
        "image": [3, side, side],
        "repeats": a.repeats,
        "warmup": a.warmup,
        "forward_ms": statistics.median(fwd() for _ in range(a.repeats)),
        "torch": torch.__version__,
    }
    if a.backward:
        for _ in range(a.warmup):
            step()
        report["recompute"] = a.recompute
        report["param_grads"] = a.param_grads
        report["forward_backward_ms"] = statistics.median(step() for _ in range(a.repeats))
    report["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(report))


if __name__ == "__main__":
    main()
