//! The latent autoencoder of SD3 / SD3.5 / FLUX.1 / SDXL — the equivalent of diffusers
//! `AutoencoderKL` (autoencoders/autoencoder_kl.py, autoencoders/vae.py `Encoder` /
//! `Decoder`, resnet.py `ResnetBlock2D`, unet_2d_blocks.py `DownEncoderBlock2D` /
//! `UpDecoderBlock2D` / `UNetMidBlock2D`, downsampling.py / upsampling.py, and the mid
//! block's `Attention` with `AttnProcessor2_0`).
//!
//! Conventions (as diffusers):
//! - Images `sample` [B, in_channels, H, W] in [-1, 1] (the pipelines' `VaeImageProcessor`
//!   maps pixels p ∈ [0, 1] to 2p − 1 and decoded images back with (x/2 + 0.5).clamp(0, 1)).
//!   H and W need not be equal; the encoder halves them (len(block_out_channels) − 1) times,
//!   each time as ⌊(n − 2)/2⌋ + 1 (a 3×3 stride-2 conv after padding one zero row and column
//!   at the bottom/right), so multiples of 2^(blocks−1) map exactly.
//! - Latents `z` [B, latent_channels, h, w] are the RAW autoencoder latents. Diffusion
//!   models see `latents = (z − shift_factor)·scaling_factor` (see [`AutoencoderKL::latents_from_z`]).
//! - `encode` returns the posterior's (mean, logvar), each [B, latent_channels, h, w]:
//!   the moments split along channels, logvar clamped to [−30, 20]
//!   (`DiagonalGaussianDistribution`). `z = mean` is the posterior mode; pipelines that
//!   encode images draw `z = mean + exp(logvar/2)·ε` ([`posterior_sample`]).
//! - Every GroupNorm has eps 1e-6 and `norm_num_groups` groups; the mid-block attention is
//!   single-head with head dim = channels (`attention_head_dim = block_out_channels[-1]`
//!   in `Encoder`/`Decoder`), scale 1/√channels, biases on q/k/v/out, a residual
//!   connection and `rescale_output_factor` 1.
//! - Decoder recompute ([`AutoencoderKL::set_recompute`]): the mid block and each up block
//!   run under [`autograd::checkpoint`], so a backward through the decoder holds only the
//!   block boundaries between forward and backward (the 1024² activations of the last up
//!   blocks dominate otherwise). Results are identical either way.
//!
//! Float32 islands: none. Under `.double()` the diffusers VAE computes every op in
//! float64 (GroupNorm, SDPA, nearest interpolation and conv all follow the input dtype),
//! so the float64 fixtures are a pure float64 reference.

use super::config::parse_config;
use crate::autograd;
use crate::error::{Error, Result};
use crate::io::ModelFolder;
use crate::nn::{Init, Linear, ParamSource, ParamStore, VarBuilder};
use crate::ops;
use crate::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

/// GroupNorm epsilon of every norm in the autoencoder (`resnet_eps`, `conv_norm_out`).
const EPS: f32 = 1e-6;
/// `DiagonalGaussianDistribution` clamps the log-variance to this range.
pub const LOGVAR_MIN: f32 = -30.0;
pub const LOGVAR_MAX: f32 = 20.0;

const DOWN_BLOCK: &str = "DownEncoderBlock2D";
const UP_BLOCK: &str = "UpDecoderBlock2D";

/// diffusers `AutoencoderKL` config (defaults as in diffusers' `__init__`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub in_channels: usize,
    pub out_channels: usize,
    /// Only "DownEncoderBlock2D" (what every AutoencoderKL checkpoint uses).
    pub down_block_types: Vec<String>,
    /// Only "UpDecoderBlock2D".
    pub up_block_types: Vec<String>,
    pub block_out_channels: Vec<usize>,
    /// Resnets per encoder block; decoder blocks have one more.
    pub layers_per_block: usize,
    /// "silu" (or its alias "swish"); the resnets' activation.
    pub act_fn: String,
    pub latent_channels: usize,
    pub norm_num_groups: usize,
    /// Tile size of diffusers' optional tiled encode/decode (off by default there, not
    /// implemented here): recorded, it does not change the computation.
    pub sample_size: usize,
    pub scaling_factor: f64,
    /// SD3/FLUX: latents = (z − shift)·scale. Null for SDXL (shift 0).
    pub shift_factor: Option<f64>,
    /// Per-channel latent statistics (SDXL pipeline form: latents = (z − mean)·scale/std);
    /// null in every checkpoint this engine targets.
    pub latents_mean: Option<Vec<f64>>,
    pub latents_std: Option<Vec<f64>>,
    /// Pipelines run the VAE in float32 when asked for float16 (see [`Config::compute_dtype`]).
    pub force_upcast: bool,
    /// 1×1 conv on the encoder's moments (SDXL: true; SD3/FLUX: false).
    pub use_quant_conv: bool,
    /// 1×1 conv on z before the decoder (SDXL: true; SD3/FLUX: false).
    pub use_post_quant_conv: bool,
    /// Self-attention between the two mid-block resnets of encoder and decoder.
    pub mid_block_add_attention: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec![DOWN_BLOCK.into()],
            up_block_types: vec![UP_BLOCK.into()],
            block_out_channels: vec![64],
            layers_per_block: 1,
            act_fn: "silu".into(),
            latent_channels: 4,
            norm_num_groups: 32,
            sample_size: 32,
            scaling_factor: 0.18215,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: true,
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
        }
    }
}

impl Config {
    pub const CLASS: &'static str = "AutoencoderKL";

    /// The 4-block, 128/256/512/512-channel, 2-layer VAE the published configs share.
    fn published(latent_channels: usize, scaling_factor: f64, shift_factor: Option<f64>, quant: bool) -> Self {
        Config {
            down_block_types: vec![DOWN_BLOCK.into(); 4],
            up_block_types: vec![UP_BLOCK.into(); 4],
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            latent_channels,
            sample_size: 1024,
            scaling_factor,
            shift_factor,
            use_quant_conv: quant,
            use_post_quant_conv: quant,
            ..Default::default()
        }
    }

    /// stabilityai/stable-diffusion-3-medium and stable-diffusion-3.5-{large,medium}
    /// vae/config.json (identical): 16 latent channels, no quant convs.
    pub fn sd3() -> Self {
        Self::published(16, 1.5305, Some(0.0609), false)
    }

    /// black-forest-labs/FLUX.1-{dev,schnell} vae/config.json.
    pub fn flux() -> Self {
        Self::published(16, 0.3611, Some(0.1159), false)
    }

    /// stabilityai/stable-diffusion-xl-base-1.0 vae/config.json (= stabilityai/sdxl-vae):
    /// 4 latent channels, quant convs, no shift.
    pub fn sdxl() -> Self {
        Self::published(4, 0.13025, None, true)
    }

    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "sd3" | "sd35" => Ok(Self::sd3()),
            "flux" => Ok(Self::flux()),
            "sdxl" => Ok(Self::sdxl()),
            _ => Err(Error::Msg(format!("unknown AutoencoderKL preset '{name}' (known: sd3, flux, sdxl)"))),
        }
    }

    pub fn from_json(value: &serde_json::Value, origin: &Path) -> Result<Self> {
        let cfg: Config = parse_config(value, &[Self::CLASS], origin)?;
        cfg.validate().map_err(|m| Error::format(origin, m))?;
        Ok(cfg)
    }

    /// Image pixels per latent pixel along each axis: 2^(len(block_out_channels) − 1)
    /// (the pipelines' `vae_scale_factor`).
    pub fn downscale_factor(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    /// The dtype diffusers' pipelines decode in when asked for `requested`: float32 for
    /// float16 when `force_upcast` is set (pipeline_stable_diffusion_xl.py:
    /// `needs_upcasting = vae.dtype == float16 and vae.config.force_upcast`), else as asked.
    pub fn compute_dtype(&self, requested: DType) -> DType {
        if self.force_upcast && requested == DType::F16 {
            DType::F32
        } else {
            requested
        }
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let n = self.block_out_channels.len();
        if n == 0 {
            return Err("block_out_channels is empty".into());
        }
        if self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(format!(
                "down_block_types ({}) and up_block_types ({}) must have one entry per block_out_channels ({n})",
                self.down_block_types.len(),
                self.up_block_types.len()
            ));
        }
        if let Some(t) = self.down_block_types.iter().find(|t| *t != DOWN_BLOCK) {
            return Err(format!("down block type '{t}' is not supported (AutoencoderKL checkpoints use {DOWN_BLOCK})"));
        }
        if let Some(t) = self.up_block_types.iter().find(|t| *t != UP_BLOCK) {
            return Err(format!("up block type '{t}' is not supported (AutoencoderKL checkpoints use {UP_BLOCK})"));
        }
        if self.act_fn != "silu" && self.act_fn != "swish" {
            return Err(format!("act_fn '{}' is not supported (AutoencoderKL checkpoints use silu)", self.act_fn));
        }
        if self.layers_per_block == 0 {
            return Err("layers_per_block must be at least 1".into());
        }
        if self.in_channels == 0 || self.out_channels == 0 || self.latent_channels == 0 {
            return Err("in_channels, out_channels and latent_channels must be positive".into());
        }
        let g = self.norm_num_groups;
        if let Some(c) = self.block_out_channels.iter().find(|&&c| g == 0 || c == 0 || c % g != 0) {
            return Err(format!("block channel count {c} does not split into norm_num_groups = {g} groups"));
        }
        if !(self.scaling_factor.is_finite() && self.scaling_factor != 0.0) {
            return Err(format!("scaling_factor {} must be finite and non-zero", self.scaling_factor));
        }
        match (&self.latents_mean, &self.latents_std) {
            (None, None) => {}
            (Some(m), Some(s)) => {
                if m.len() != self.latent_channels || s.len() != self.latent_channels {
                    return Err(format!(
                        "latents_mean ({}) and latents_std ({}) need one value per latent channel ({})",
                        m.len(),
                        s.len(),
                        self.latent_channels
                    ));
                }
                if s.iter().any(|&v| v == 0.0 || !v.is_finite()) {
                    return Err("latents_std values must be finite and non-zero".into());
                }
                if self.shift_factor.is_some() {
                    return Err("latents_mean/latents_std together with shift_factor: no pipeline defines \
                                that latent normalization"
                        .into());
                }
            }
            _ => return Err("latents_mean and latents_std must be given together".into()),
        }
        Ok(())
    }
}

// ---- layers ----------------------------------------------------------------------------

/// torch `nn.Conv2d(cin, cout, k, stride, padding)` with bias (keys `weight`, `bias`).
#[derive(Clone, Debug)]
struct Conv2d {
    weight: Tensor, // [Cout, Cin, k, k]
    bias: Tensor,   // [Cout]
    stride: usize,
    padding: usize,
}

impl Conv2d {
    fn new(vb: &VarBuilder, cin: usize, cout: usize, k: usize, stride: usize, padding: usize) -> Result<Self> {
        // PyTorch's default init bound for both weight and bias.
        let bound = 1.0 / ((cin * k * k) as f32).sqrt();
        Ok(Conv2d {
            weight: vb.get("weight", &[cout, cin, k, k], Init::Uniform(bound))?,
            bias: vb.get("bias", &[cout], Init::Uniform(bound))?,
            stride,
            padding,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (s, p) = (self.stride, self.padding);
        ops::conv2d(x, &self.weight, Some(&self.bias), (s, s), (p, p))
    }
    fn params(&self, out: &mut Vec<Tensor>) {
        out.extend([self.weight.clone(), self.bias.clone()]);
    }
}

/// torch `nn.GroupNorm(groups, channels, eps=1e-6, affine=True)`.
#[derive(Clone, Debug)]
struct GroupNorm {
    weight: Tensor, // [C]
    bias: Tensor,   // [C]
    groups: usize,
}

impl GroupNorm {
    fn new(vb: &VarBuilder, groups: usize, channels: usize) -> Result<Self> {
        Ok(GroupNorm {
            weight: vb.get("weight", &[channels], Init::Ones)?,
            bias: vb.get("bias", &[channels], Init::Zeros)?,
            groups,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        ops::group_norm(x, self.groups, Some(&self.weight), Some(&self.bias), EPS)
    }
    fn params(&self, out: &mut Vec<Tensor>) {
        out.extend([self.weight.clone(), self.bias.clone()]);
    }
}

fn linear_params(l: &Linear, out: &mut Vec<Tensor>) {
    out.push(l.weight.clone());
    out.extend(l.bias.clone());
}

/// diffusers `ResnetBlock2D` without time embedding (`temb_channels=None`, output scale 1):
/// x + conv2(silu(norm2(conv1(silu(norm1(x)))))), the skip through a 1×1 `conv_shortcut`
/// when the channel count changes. Dropout is 0.
#[derive(Clone, Debug)]
struct ResnetBlock2D {
    norm1: GroupNorm,
    conv1: Conv2d,
    norm2: GroupNorm,
    conv2: Conv2d,
    conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock2D {
    fn new(vb: &VarBuilder, groups: usize, cin: usize, cout: usize) -> Result<Self> {
        Ok(ResnetBlock2D {
            norm1: GroupNorm::new(&vb.pp("norm1"), groups, cin)?,
            conv1: Conv2d::new(&vb.pp("conv1"), cin, cout, 3, 1, 1)?,
            norm2: GroupNorm::new(&vb.pp("norm2"), groups, cout)?,
            conv2: Conv2d::new(&vb.pp("conv2"), cout, cout, 3, 1, 1)?,
            conv_shortcut: if cin != cout {
                Some(Conv2d::new(&vb.pp("conv_shortcut"), cin, cout, 1, 1, 0)?)
            } else {
                None
            },
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.conv1.forward(&self.norm1.forward(x)?.silu()?)?;
        let h = self.conv2.forward(&self.norm2.forward(&h)?.silu()?)?;
        let skip = match &self.conv_shortcut {
            Some(c) => c.forward(x)?,
            None => x.clone(),
        };
        skip.add(&h)
    }
    fn params(&self, out: &mut Vec<Tensor>) {
        self.norm1.params(out);
        self.conv1.params(out);
        self.norm2.params(out);
        self.conv2.params(out);
        if let Some(c) = &self.conv_shortcut {
            c.params(out);
        }
    }
}

/// diffusers `Attention` as built by `UNetMidBlock2D` for the VAE, run by
/// `AttnProcessor2_0`: GroupNorm → tokens [B, HW, C] → q, k, v (with bias) → SDPA over
/// `heads` heads of C/heads → to_out.0 → back to [B, C, H, W] → + residual.
#[derive(Clone, Debug)]
struct VaeAttention {
    group_norm: GroupNorm,
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    heads: usize,
}

impl VaeAttention {
    fn new(vb: &VarBuilder, groups: usize, channels: usize) -> Result<Self> {
        Ok(VaeAttention {
            group_norm: GroupNorm::new(&vb.pp("group_norm"), groups, channels)?,
            to_q: Linear::new(&vb.pp("to_q"), channels, channels, true)?,
            to_k: Linear::new(&vb.pp("to_k"), channels, channels, true)?,
            to_v: Linear::new(&vb.pp("to_v"), channels, channels, true)?,
            to_out: Linear::new(&vb.pp("to_out.0"), channels, channels, true)?,
            // Encoder/Decoder pass attention_head_dim = channels: one head.
            heads: 1,
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let &[b, c, h, w] = x.shape() else { unreachable!("checked by the model") };
        let n = h * w;
        let hd = c / self.heads;
        let tokens = self.group_norm.forward(x)?.reshape(&[b, c, n])?.transpose(1, 2)?; // [B, N, C]
        let heads_of = |t: Tensor| t.reshape(&[b, n, self.heads, hd])?.transpose(1, 2); // [B, heads, N, hd]
        let q = heads_of(self.to_q.forward(&tokens)?)?;
        let k = heads_of(self.to_k.forward(&tokens)?)?;
        let v = heads_of(self.to_v.forward(&tokens)?)?;
        let o = ops::attention(&q, &k, &v, None, None)?.transpose(1, 2)?.reshape(&[b, n, c])?;
        let o = self.to_out.forward(&o)?.transpose(1, 2)?.reshape(&[b, c, h, w])?;
        o.add(x)
    }
    fn params(&self, out: &mut Vec<Tensor>) {
        self.group_norm.params(out);
        for l in [&self.to_q, &self.to_k, &self.to_v, &self.to_out] {
            linear_params(l, out);
        }
    }
}

/// diffusers `UNetMidBlock2D` (num_layers 1): resnet → [attention] → resnet.
#[derive(Clone, Debug)]
struct MidBlock {
    resnets: [ResnetBlock2D; 2],
    attention: Option<VaeAttention>,
}

impl MidBlock {
    fn new(vb: &VarBuilder, cfg: &Config, channels: usize) -> Result<Self> {
        let g = cfg.norm_num_groups;
        let r = vb.pp("resnets");
        Ok(MidBlock {
            resnets: [
                ResnetBlock2D::new(&r.pp(0), g, channels, channels)?,
                ResnetBlock2D::new(&r.pp(1), g, channels, channels)?,
            ],
            attention: if cfg.mid_block_add_attention {
                Some(VaeAttention::new(&vb.pp("attentions.0"), g, channels)?)
            } else {
                None
            },
        })
    }
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.resnets[0].forward(x)?;
        if let Some(a) = &self.attention {
            h = a.forward(&h)?;
        }
        self.resnets[1].forward(&h)
    }
    fn params(&self, out: &mut Vec<Tensor>) {
        self.resnets[0].params(out);
        if let Some(a) = &self.attention {
            a.params(out);
        }
        self.resnets[1].params(out);
    }
}

/// diffusers `DownEncoderBlock2D`: resnets, then (except in the last block)
/// `Downsample2D(use_conv=True, padding=0)`: zero-pad one row/column at the bottom/right
/// (F.pad(x, (0, 1, 0, 1))) and a 3×3 stride-2 conv without padding.
#[derive(Clone, Debug)]
struct DownEncoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    downsampler: Option<Conv2d>,
}

impl DownEncoderBlock2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h)?;
        }
        match &self.downsampler {
            Some(conv) => conv.forward(&pad_bottom_right(&h)?),
            None => Ok(h),
        }
    }
}

/// F.pad(x, (0, 1, 0, 1)): one zero column on the right, one zero row at the bottom.
fn pad_bottom_right(x: &Tensor) -> Result<Tensor> {
    let &[b, c, h, w] = x.shape() else { unreachable!("4-D activations") };
    let col = Tensor::zeros(&[b, c, h, 1]).to_dtype(x.dtype())?;
    let x = ops::concat(&[x, &col], 3)?;
    let row = Tensor::zeros(&[b, c, 1, w + 1]).to_dtype(x.dtype())?;
    ops::concat(&[&x, &row], 2)
}

/// diffusers `UpDecoderBlock2D`: layers_per_block + 1 resnets, then (except in the last
/// block) `Upsample2D(use_conv=True)`: nearest ×2, 3×3 conv.
#[derive(Clone, Debug)]
struct UpDecoderBlock2D {
    resnets: Vec<ResnetBlock2D>,
    upsampler: Option<Conv2d>,
}

impl UpDecoderBlock2D {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h)?;
        }
        match &self.upsampler {
            Some(conv) => conv.forward(&h.upsample_nearest2d(2)?),
            None => Ok(h),
        }
    }
    fn params(&self, out: &mut Vec<Tensor>) {
        for r in &self.resnets {
            r.params(out);
        }
        if let Some(c) = &self.upsampler {
            c.params(out);
        }
    }
}

/// diffusers `Encoder` with double_z: conv_in → down blocks → mid block →
/// GroupNorm → SiLU → conv_out to 2·latent_channels moments.
#[derive(Clone, Debug)]
pub struct Encoder {
    conv_in: Conv2d,
    down_blocks: Vec<DownEncoderBlock2D>,
    mid_block: MidBlock,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Encoder {
    fn new(vb: &VarBuilder, cfg: &Config) -> Result<Self> {
        let ch = &cfg.block_out_channels;
        let g = cfg.norm_num_groups;
        let last = *ch.last().expect("validated non-empty");
        let mut down_blocks = Vec::with_capacity(ch.len());
        let mut cin = ch[0];
        for (i, &cout) in ch.iter().enumerate() {
            let bvb = vb.pp(format!("down_blocks.{i}"));
            let resnets = (0..cfg.layers_per_block)
                .map(|j| ResnetBlock2D::new(&bvb.pp(format!("resnets.{j}")), g, if j == 0 { cin } else { cout }, cout))
                .collect::<Result<_>>()?;
            let downsampler = if i + 1 < ch.len() {
                Some(Conv2d::new(&bvb.pp("downsamplers.0.conv"), cout, cout, 3, 2, 0)?)
            } else {
                None
            };
            down_blocks.push(DownEncoderBlock2D { resnets, downsampler });
            cin = cout;
        }
        Ok(Encoder {
            conv_in: Conv2d::new(&vb.pp("conv_in"), cfg.in_channels, ch[0], 3, 1, 1)?,
            down_blocks,
            mid_block: MidBlock::new(&vb.pp("mid_block"), cfg, last)?,
            conv_norm_out: GroupNorm::new(&vb.pp("conv_norm_out"), g, last)?,
            conv_out: Conv2d::new(&vb.pp("conv_out"), last, 2 * cfg.latent_channels, 3, 1, 1)?,
        })
    }

    /// [B, in_channels, H, W] → moments [B, 2·latent_channels, h, w].
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(x)?;
        for b in &self.down_blocks {
            h = b.forward(&h)?;
        }
        h = self.mid_block.forward(&h)?;
        self.conv_out.forward(&self.conv_norm_out.forward(&h)?.silu()?)
    }
}

/// diffusers `Decoder` (norm_type "group"): conv_in → mid block → up blocks →
/// GroupNorm → SiLU → conv_out.
#[derive(Clone, Debug)]
pub struct Decoder {
    conv_in: Conv2d,
    mid_block: Arc<MidBlock>,
    up_blocks: Vec<Arc<UpDecoderBlock2D>>,
    conv_norm_out: GroupNorm,
    conv_out: Conv2d,
}

impl Decoder {
    fn new(vb: &VarBuilder, cfg: &Config) -> Result<Self> {
        let rev: Vec<usize> = cfg.block_out_channels.iter().rev().copied().collect();
        let g = cfg.norm_num_groups;
        let mut up_blocks = Vec::with_capacity(rev.len());
        let mut cin = rev[0];
        for (i, &cout) in rev.iter().enumerate() {
            let bvb = vb.pp(format!("up_blocks.{i}"));
            let resnets = (0..=cfg.layers_per_block)
                .map(|j| ResnetBlock2D::new(&bvb.pp(format!("resnets.{j}")), g, if j == 0 { cin } else { cout }, cout))
                .collect::<Result<_>>()?;
            let upsampler = if i + 1 < rev.len() {
                Some(Conv2d::new(&bvb.pp("upsamplers.0.conv"), cout, cout, 3, 1, 1)?)
            } else {
                None
            };
            up_blocks.push(Arc::new(UpDecoderBlock2D { resnets, upsampler }));
            cin = cout;
        }
        let first = *cfg.block_out_channels.first().expect("validated non-empty");
        Ok(Decoder {
            conv_in: Conv2d::new(&vb.pp("conv_in"), cfg.latent_channels, rev[0], 3, 1, 1)?,
            mid_block: Arc::new(MidBlock::new(&vb.pp("mid_block"), cfg, rev[0])?),
            up_blocks,
            conv_norm_out: GroupNorm::new(&vb.pp("conv_norm_out"), g, first)?,
            conv_out: Conv2d::new(&vb.pp("conv_out"), first, cfg.out_channels, 3, 1, 1)?,
        })
    }

    /// [B, latent_channels, h, w] → [B, out_channels, h·f, w·f]; with `recompute` the
    /// mid block and every up block are checkpointed.
    pub fn forward(&self, z: &Tensor, recompute: bool) -> Result<Tensor> {
        let mut h = self.conv_in.forward(z)?;
        h = if recompute {
            let (blk, mut params) = (self.mid_block.clone(), Vec::new());
            blk.params(&mut params);
            checkpointed(&h, &params, move |x| blk.forward(x))?
        } else {
            self.mid_block.forward(&h)?
        };
        for b in &self.up_blocks {
            h = if recompute {
                let (blk, mut params) = (b.clone(), Vec::new());
                blk.params(&mut params);
                checkpointed(&h, &params, move |x| blk.forward(x))?
            } else {
                b.forward(&h)?
            };
        }
        self.conv_out.forward(&self.conv_norm_out.forward(&h)?.silu()?)
    }
}

/// One-input, one-output [`autograd::checkpoint`] over a block with parameters `params`.
fn checkpointed(x: &Tensor, params: &[Tensor], f: impl Fn(&Tensor) -> Result<Tensor> + 'static) -> Result<Tensor> {
    let captured: Vec<&Tensor> = params.iter().collect();
    let mut out = autograd::checkpoint(&[x], &captured, move |xs| Ok(vec![f(&xs[0])?]))?;
    Ok(out.remove(0))
}

// ---- the model --------------------------------------------------------------------------

/// diffusers `AutoencoderKL` (no tiling, no slicing: whole images at once).
#[derive(Clone, Debug)]
pub struct AutoencoderKL {
    pub cfg: Config,
    pub encoder: Encoder,
    pub decoder: Decoder,
    quant_conv: Option<Conv2d>,
    post_quant_conv: Option<Conv2d>,
    recompute: bool,
}

impl AutoencoderKL {
    pub fn new(cfg: Config, vb: &VarBuilder) -> Result<Self> {
        cfg.validate().map_err(Error::Msg)?;
        let l = cfg.latent_channels;
        Ok(AutoencoderKL {
            encoder: Encoder::new(&vb.pp("encoder"), &cfg)?,
            decoder: Decoder::new(&vb.pp("decoder"), &cfg)?,
            quant_conv: if cfg.use_quant_conv {
                Some(Conv2d::new(&vb.pp("quant_conv"), 2 * l, 2 * l, 1, 1, 0)?)
            } else {
                None
            },
            post_quant_conv: if cfg.use_post_quant_conv {
                Some(Conv2d::new(&vb.pp("post_quant_conv"), l, l, 1, 1, 0)?)
            } else {
                None
            },
            recompute: false,
            cfg,
        })
    }

    /// Decoder activation recompute: the mid block and each up block keep only their
    /// input between forward and backward and re-run in backward (see the module doc).
    /// Off by default; no effect on values or gradients, nor under no-grad.
    pub fn set_recompute(&mut self, on: bool) {
        self.recompute = on;
    }

    pub fn recompute(&self) -> bool {
        self.recompute
    }

    /// Posterior moments of images `sample` [B, in_channels, H, W]:
    /// (mean, logvar), each [B, latent_channels, h, w], logvar clamped to [−30, 20].
    pub fn encode(&self, sample: &Tensor) -> Result<(Tensor, Tensor)> {
        self.check_input("sample", sample, self.cfg.in_channels)?;
        let mut moments = self.encoder.forward(sample)?;
        if let Some(q) = &self.quant_conv {
            moments = q.forward(&moments)?;
        }
        let parts = ops::chunk(&moments, 2, 1)?;
        let logvar = clamp(&parts[1], LOGVAR_MIN, LOGVAR_MAX)?;
        Ok((parts[0].clone(), logvar))
    }

    /// Images [B, out_channels, h·f, w·f] from raw latents `z` [B, latent_channels, h, w]
    /// (f = [`Config::downscale_factor`]). Diffusion latents must first go through
    /// [`Self::z_from_latents`].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.check_input("z", z, self.cfg.latent_channels)?;
        let z = match &self.post_quant_conv {
            Some(p) => p.forward(z)?,
            None => z.clone(),
        };
        self.decoder.forward(&z, self.recompute)
    }

    /// Diffusion-space latents from raw latents z (a posterior mean or sample), as the
    /// pipelines do after `vae.encode`:
    /// - SD3/SD3.5 (pipeline_stable_diffusion_3_img2img.py) and FLUX (pipeline_flux_img2img.py,
    ///   before `_pack_latents`): `latents = (z − shift_factor)·scaling_factor`;
    /// - SDXL (shift_factor null): `latents = z·scaling_factor`; with latents_mean/std set,
    ///   `(z − mean)·scaling_factor/std` per channel (pipeline_stable_diffusion_xl_img2img.py).
    ///
    /// Those pipelines encode with `latent_dist.sample()` ([`posterior_sample`]);
    /// `latent_dist.mode()` is the mean.
    pub fn latents_from_z(&self, z: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        let s = c.scaling_factor as f32;
        match (&c.latents_mean, &c.latents_std) {
            (Some(m), Some(sd)) => {
                let (m, sd) = (self.channel_vector(z, m)?, self.channel_vector(z, sd)?);
                z.sub(&m)?.scale(s)?.div(&sd)
            }
            _ => z.affine(1.0, -(c.shift_factor.unwrap_or(0.0) as f32))?.scale(s),
        }
    }

    /// [`Self::latents_from_z`] named for its deterministic use: the latents of the
    /// posterior mode (the mean from [`Self::encode`]).
    pub fn latents_from_mean(&self, mean: &Tensor) -> Result<Tensor> {
        self.latents_from_z(mean)
    }

    /// Raw latents for [`Self::decode`] from diffusion-space latents, as the pipelines do
    /// right before `vae.decode`:
    /// - SD3/SD3.5 (pipeline_stable_diffusion_3.py) and FLUX (pipeline_flux.py, after
    ///   `_unpack_latents`): `z = latents/scaling_factor + shift_factor`;
    /// - SDXL (pipeline_stable_diffusion_xl.py): `z = latents/scaling_factor`, or
    ///   `latents·std/scaling_factor + mean` with latents_mean/std set.
    pub fn z_from_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let c = &self.cfg;
        let s = Tensor::scalar(c.scaling_factor as f32).to_dtype(latents.dtype())?;
        match (&c.latents_mean, &c.latents_std) {
            (Some(m), Some(sd)) => {
                let (m, sd) = (self.channel_vector(latents, m)?, self.channel_vector(latents, sd)?);
                latents.mul(&sd)?.div(&s)?.add(&m)
            }
            _ => {
                let z = latents.div(&s)?;
                match c.shift_factor {
                    Some(shift) => z.affine(1.0, shift as f32),
                    None => Ok(z),
                }
            }
        }
    }

    /// A [1, C, 1, 1] tensor of per-channel constants in `like`'s dtype.
    fn channel_vector(&self, like: &Tensor, v: &[f64]) -> Result<Tensor> {
        if like.dims() != 4 || like.shape()[1] != v.len() {
            return Err(Error::Msg(format!("latents of shape {:?} do not have {} channels", like.shape(), v.len())));
        }
        Tensor::from_vec(v.iter().map(|&x| x as f32).collect(), &[1, v.len(), 1, 1])?.to_dtype(like.dtype())
    }

    fn check_input(&self, name: &str, x: &Tensor, channels: usize) -> Result<()> {
        if x.dims() != 4 || x.shape()[1] != channels || x.shape()[2] == 0 || x.shape()[3] == 0 {
            return Err(Error::Msg(format!(
                "input '{name}' has shape {:?}, expected [B, {channels}, H, W] for this AutoencoderKL",
                x.shape()
            )));
        }
        // Each Downsample2D needs at least 2 rows/columns after its padding.
        if name == "sample" && self.cfg.block_out_channels.len() > 1 {
            let min = self.cfg.downscale_factor();
            if x.shape()[2] < min || x.shape()[3] < min {
                return Err(Error::Msg(format!(
                    "input 'sample' of {}×{} pixels is smaller than the encoder's downscale factor {min}",
                    x.shape()[2],
                    x.shape()[3]
                )));
            }
        }
        Ok(())
    }

    /// All parameters (diffusers names): encoder, decoder, quant convs.
    pub fn num_parameters(cfg: &Config) -> Result<usize> {
        let store = ParamStore::new();
        AutoencoderKL::new(cfg.clone(), &VarBuilder::meta(&store))?;
        Ok(store.num_elements())
    }

    /// Checkpoint keys and shapes from a shapes-only build.
    pub fn expected_keys(cfg: &Config) -> Result<Vec<(String, Vec<usize>)>> {
        let store = ParamStore::new();
        AutoencoderKL::new(cfg.clone(), &VarBuilder::meta(&store))?;
        Ok(store.named().into_iter().map(|(k, t)| (k, t.shape().to_vec())).collect())
    }
}

/// `DiagonalGaussianDistribution.sample`: z = mean + exp(logvar/2)·noise, with `noise`
/// standard normal of mean's shape (diffusers draws it with `randn_tensor`).
pub fn posterior_sample(mean: &Tensor, logvar: &Tensor, noise: &Tensor) -> Result<Tensor> {
    mean.add(&logvar.scale(0.5)?.exp()?.mul(noise)?)
}

/// torch.clamp(x, lo, hi); the gradient passes where lo ≤ x ≤ hi (torch's rule, bounds
/// included) and is 0 elsewhere.
pub fn clamp(x: &Tensor, lo: f32, hi: f32) -> Result<Tensor> {
    ops::same_device("clamp", &[x])?;
    let v = x.cpu_f32()?;
    let y: Vec<f32> = v.iter().map(|&a| a.clamp(lo, hi)).collect();
    let pass: Vec<bool> = v.iter().map(|&a| (lo..=hi).contains(&a)).collect();
    drop(v);
    let out = ops::cpu_out(y, x.shape(), x.dtype());
    Ok(autograd::record(out, &[x], || ClampBackward { pass }))
}

struct ClampBackward {
    /// Where the input lay inside [lo, hi].
    pass: Vec<bool>,
}

impl autograd::Backward for ClampBackward {
    fn name(&self) -> &'static str {
        "clamp"
    }
    fn backward(&self, g: &Tensor) -> Result<Vec<Option<Tensor>>> {
        let gv = g.cpu_f32()?;
        let d: Vec<f32> = gv.iter().zip(&self.pass).map(|(&v, &p)| if p { v } else { 0.0 }).collect();
        Ok(vec![Some(ops::cpu_out(d, g.shape(), g.dtype()))])
    }
}

// ---- loading ----------------------------------------------------------------------------

/// The pre-0.14 diffusers names of the mid-block attention projections, which old
/// checkpoints (e.g. SD 1.x VAEs) still store and diffusers renames on load
/// (`ModelMixin._fix_state_dict_keys_on_load`): query/key/value/proj_attn.
const LEGACY_ATTN_NAMES: [(&str, &str); 4] =
    [(".to_q.", ".query."), (".to_k.", ".key."), (".to_v.", ".value."), (".to_out.0.", ".proj_attn.")];

/// The stored key for the diffusers key `key`: itself, or its legacy attention name
/// when only that is in the folder.
fn stored_key(folder: &ModelFolder, key: &str) -> String {
    if folder.contains(key) || !key.contains(".attentions.") {
        return key.to_string();
    }
    for (new, old) in LEGACY_ATTN_NAMES {
        if key.contains(new) {
            let legacy = key.replacen(new, old, 1);
            if folder.contains(&legacy) {
                return legacy;
            }
        }
    }
    key.to_string()
}

/// A model folder read under diffusers' current key names.
struct RenamedFolder {
    folder: ModelFolder,
    /// diffusers key → stored key, for the keys stored under a legacy name.
    renames: HashMap<String, String>,
}

impl ParamSource for RenamedFolder {
    fn load(&self, key: &str) -> Result<Option<Tensor>> {
        let k = self.renames.get(key).map(String::as_str).unwrap_or(key);
        if self.folder.contains(k) {
            Ok(Some(self.folder.get(k)?))
        } else {
            Ok(None)
        }
    }
    fn describe(&self) -> String {
        self.folder.dir().display().to_string()
    }
}

/// Loads an `AutoencoderKL` folder (config.json + safetensors) computing in `dtype`;
/// `trainable` decides whether the tape tracks the parameters. Every key is checked
/// against the config before any weight is read.
pub fn load_vae(dir: impl AsRef<Path>, dtype: DType, trainable: bool) -> Result<(AutoencoderKL, ParamStore)> {
    load_vae_folder(ModelFolder::open(dir.as_ref())?, dtype, trainable)
}

/// [`load_vae`] on an opened folder.
pub fn load_vae_folder(folder: ModelFolder, dtype: DType, trainable: bool) -> Result<(AutoencoderKL, ParamStore)> {
    let cfg_path = folder.dir().join("config.json");
    let cfg = Config::from_json(folder.config()?, &cfg_path)?;
    let mut renames = HashMap::new();
    let mut expected = AutoencoderKL::expected_keys(&cfg)?;
    for (key, _) in expected.iter_mut() {
        let stored = stored_key(&folder, key);
        if stored != *key {
            renames.insert(key.clone(), stored.clone());
            *key = stored;
        }
    }
    folder.check_keys(&expected)?;
    let store = ParamStore::new();
    let source: Arc<dyn ParamSource> = Arc::new(RenamedFolder { folder, renames });
    let mut vb = VarBuilder::from_source(&store, source, dtype);
    if !trainable {
        vb = vb.frozen();
    }
    Ok((AutoencoderKL::new(cfg, &vb)?, store))
}
