"""Writes a small diffusers transformer folder with random weights, for benchmarks.

The default is the "tiny demo-scale" MMDiT, shaped like the demo teacher this project
trains: pixel-space 32x32 RGB images (in/out channels 3, patch 2 -> 16x16 = 256 image
tokens), 4 joint blocks of 4 heads x 32 (width 128), RMS qk-norm, a 64-wide text
encoder and pooled vector. Any field can be overridden with --set key=json_value, and
--class flux writes a FluxTransformer2DModel instead.

The folder is exactly what `model.save_pretrained(dir)` writes (config.json +
diffusion_pytorch_model.safetensors), so both `senseflow bench model --model DIR` and
`tools/bench_torch_model.py --model DIR` load the same weights. Weights: diffusers'
default initialization under a fixed seed, then every parameter (diffusers zero-inits
the adaLN-Zero modulations and proj_out) re-drawn as randn/sqrt(fan_in) for matrices and
0.05*randn for vectors, so no branch of the model is trivially zero.

    /work/venv-ref/bin/python tools/make_tiny_model.py runs/bench-models/tiny-mmdit
"""

import argparse
import json

import torch

TINY_MMDIT = dict(
    sample_size=32,  # pixels; with patch 2 the sin-cos grid is 16x16 (base size 16)
    patch_size=2,
    in_channels=3,
    out_channels=3,
    num_layers=4,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=64,
    caption_projection_dim=128,  # = heads * head_dim
    pooled_projection_dim=64,
    pos_embed_max_size=16,
    qk_norm="rms_norm",
    dual_attention_layers=(),
)

TINY_FLUX = dict(
    patch_size=1,
    in_channels=12,  # 2x2-packed RGB pixels
    out_channels=None,
    num_layers=2,
    num_single_layers=4,
    attention_head_dim=32,
    num_attention_heads=4,
    joint_attention_dim=64,
    pooled_projection_dim=64,
    guidance_embeds=False,
    axes_dims_rope=(8, 12, 12),
)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", help="output folder (created)")
    ap.add_argument("--class", dest="cls", choices=["mmdit", "flux"], default="mmdit")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=JSON",
                    help="override a config field, e.g. --set num_layers=8")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    cls, cfg = (SD3Transformer2DModel, dict(TINY_MMDIT)) if a.cls == "mmdit" else (FluxTransformer2DModel, dict(TINY_FLUX))
    for kv in a.set:
        k, v = kv.split("=", 1)
        if k not in cfg:
            ap.error(f"unknown config field {k!r} for {cls.__name__}")
        cfg[k] = json.loads(v)
    torch.manual_seed(a.seed)
    model = cls(**cfg).float().eval()
    with torch.no_grad():
        for _, p in model.named_parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn_like(p) / p[0].numel() ** 0.5)
            else:
                p.copy_(0.05 * torch.randn_like(p))
    model.save_pretrained(a.out, safe_serialization=True)
    n = sum(p.numel() for p in model.parameters())
    print(json.dumps({"out": a.out, "class": cls.__name__, "parameters": n, "config": cfg}))


if __name__ == "__main__":
    main()
