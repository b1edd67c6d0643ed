//! SD3 / SD3.5 MMDiT — the equivalent of diffusers `SD3Transformer2DModel`
//! (transformer_sd3.py), including MMDiT-X dual attention (SD3.5 Medium).
//!
//! Conventions (as diffusers): `hidden_states` [B, C, H, W] latents, `timestep` [B]
//! in [0, 1000] (= 1000·σ), `encoder_hidden_states` [B, L, joint_attention_dim],
//! `pooled_projections` [B, pooled_projection_dim]; output `sample` [B, C_out, H, W]
//! is the velocity prediction. Joint attention concatenates [image, text] tokens.

use super::config::parse_config;
use crate::error::{Error, Result};
use crate::nn::embeddings::{sd3_time_proj, sincos_2d_pos_embed_crop, TextProjection, TimestepEmbedding};
use crate::nn::{AdaLayerNormContinuous, AdaLayerNormZero, FeedForward, Init, Linear, RmsNorm, VarBuilder};
use crate::ops;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// diffusers `SD3Transformer2DModel` config (defaults as in diffusers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub sample_size: usize,
    pub patch_size: usize,
    pub in_channels: usize,
    pub num_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    pub joint_attention_dim: usize,
    pub caption_projection_dim: usize,
    pub pooled_projection_dim: usize,
    pub out_channels: Option<usize>,
    pub pos_embed_max_size: Option<usize>,
    pub dual_attention_layers: Vec<usize>,
    pub qk_norm: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            sample_size: 128,
            patch_size: 2,
            in_channels: 16,
            num_layers: 18,
            attention_head_dim: 64,
            num_attention_heads: 18,
            joint_attention_dim: 4096,
            caption_projection_dim: 1152,
            pooled_projection_dim: 2048,
            out_channels: Some(16),
            pos_embed_max_size: Some(96),
            dual_attention_layers: vec![],
            qk_norm: None,
        }
    }
}

impl Config {
    pub const CLASS: &'static str = "SD3Transformer2DModel";

    /// stabilityai/stable-diffusion-3.5-large transformer/config.json.
    pub fn sd35_large() -> Self {
        Config {
            num_layers: 38,
            num_attention_heads: 38,
            caption_projection_dim: 2432,
            pos_embed_max_size: Some(192),
            qk_norm: Some("rms_norm".into()),
            ..Default::default()
        }
    }

    /// stabilityai/stable-diffusion-3.5-medium transformer/config.json (MMDiT-X).
    pub fn sd35_medium() -> Self {
        Config {
            num_layers: 24,
            num_attention_heads: 24,
            caption_projection_dim: 1536,
            pos_embed_max_size: Some(384),
            dual_attention_layers: (0..=12).collect(),
            qk_norm: Some("rms_norm".into()),
            ..Default::default()
        }
    }

    /// stabilityai/stable-diffusion-3-medium-diffusers transformer/config.json.
    pub fn sd3_medium() -> Self {
        Config {
            num_layers: 24,
            num_attention_heads: 24,
            caption_projection_dim: 1536,
            pos_embed_max_size: Some(192),
            ..Default::default()
        }
    }

    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "sd35-large" => Ok(Self::sd35_large()),
            "sd35-medium" => Ok(Self::sd35_medium()),
            "sd3-medium" => Ok(Self::sd3_medium()),
            _ => Err(Error::Msg(format!("unknown MMDiT preset '{name}' (known: sd35-large, sd35-medium, sd3-medium)"))),
        }
    }

    pub fn from_json(value: &serde_json::Value, origin: &Path) -> Result<Self> {
        let cfg: Config = parse_config(value, &[Self::CLASS], origin)?;
        cfg.validate().map_err(|m| Error::format(origin, m))?;
        Ok(cfg)
    }

    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if let Some(q) = &self.qk_norm {
            if q != "rms_norm" {
                return Err(format!("qk_norm '{q}' is not supported (SD3 checkpoints use null or \"rms_norm\")"));
            }
        }
        if self.caption_projection_dim != self.inner_dim() {
            return Err(format!(
                "caption_projection_dim {} must equal num_attention_heads·attention_head_dim = {} (the joint blocks share one width)",
                self.caption_projection_dim,
                self.inner_dim()
            ));
        }
        if self.pos_embed_max_size.is_none() {
            return Err(
                "pos_embed_max_size null (uncropped position embeddings) is not supported; SD3 checkpoints set it"
                    .into(),
            );
        }
        if let Some(&l) = self.dual_attention_layers.iter().find(|&&l| l >= self.num_layers) {
            return Err(format!("dual_attention_layers names layer {l}, but num_layers is {}", self.num_layers));
        }
        if self.patch_size == 0 || self.attention_head_dim % 2 != 0 || self.inner_dim() % 4 != 0 {
            return Err("patch_size must be > 0 and the inner dim a multiple of 4 (2-D sin-cos embedding)".into());
        }
        Ok(())
    }
}

/// diffusers `PatchEmbed` with SD3 cropping: a stride-p conv (done as a linear map of
/// flattened p×p patches, identical arithmetic) plus the cropped 2-D sin-cos table.
#[derive(Clone, Debug)]
pub struct PatchEmbed {
    pub weight: Tensor, // [D, C, p, p]
    pub bias: Tensor,   // [D]
    patch: usize,
    max_size: usize,
    dim: usize,
    /// Grid units per patch of the sin-cos table (`sample_size / patch_size`).
    base_size: f64,
    /// The checkpoint's `pos_embed.pos_embed` buffer [1, max², D] when it has one;
    /// diffusers uses the stored (possibly bf16-rounded) values, so we do too.
    stored_table: Option<Tensor>,
}

impl PatchEmbed {
    fn new(vb: &VarBuilder, cfg: &Config) -> Result<Self> {
        let (d, c, p) = (cfg.inner_dim(), cfg.in_channels, cfg.patch_size);
        let max_size = cfg.pos_embed_max_size.expect("validated");
        let bound = 1.0 / ((c * p * p) as f32).sqrt();
        let base_size = (cfg.sample_size / p) as f64;
        Ok(PatchEmbed {
            weight: vb.get("proj.weight", &[d, c, p, p], Init::Uniform(bound))?,
            bias: vb.get("proj.bias", &[d], Init::Uniform(bound))?,
            patch: p,
            max_size,
            dim: d,
            base_size,
            stored_table: vb.buffer("pos_embed", &[1, max_size * max_size, d])?,
        })
    }

    /// [B, C, H, W] → [B, (H/p)·(W/p), D] with position embeddings added.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let &[b, c, h, w] = x.shape() else {
            return Err(Error::op("PatchEmbed", format!("hidden_states must be [B, C, H, W], got {:?}", x.shape())));
        };
        let p = self.patch;
        let (hp, wp) = (h / p, w / p);
        if h % p != 0 || w % p != 0 {
            return Err(Error::op("PatchEmbed", format!("latent size {h}×{w} is not a multiple of patch_size {p}")));
        }
        if hp > self.max_size || wp > self.max_size {
            return Err(Error::op(
                "PatchEmbed",
                format!("latent of {hp}×{wp} patches exceeds pos_embed_max_size {}", self.max_size),
            ));
        }
        let patches =
            x.reshape(&[b, c, hp, p, wp, p])?.permute(&[0, 2, 4, 1, 3, 5])?.reshape(&[b, hp * wp, c * p * p])?;
        let w2 = self.weight.reshape(&[self.dim, c * p * p])?;
        let tokens = ops::linear(&patches, &w2, Some(&self.bias))?;
        tokens.add(&self.cropped_pos_embed(hp, wp)?)
    }

    fn cropped_pos_embed(&self, hp: usize, wp: usize) -> Result<Tensor> {
        let (top, left) = ((self.max_size - hp) / 2, (self.max_size - wp) / 2);
        if let Some(t) = &self.stored_table {
            let m = self.max_size;
            let grid = t.reshape(&[m, m, self.dim])?.narrow(0, top, hp)?.narrow(1, left, wp)?;
            return grid.reshape(&[1, hp * wp, self.dim]);
        }
        let v = sincos_2d_pos_embed_crop(self.dim, self.max_size, self.base_size, 1.0, top, left, hp, wp);
        Tensor::from_vec(v, &[1, hp * wp, self.dim])
    }
}

/// diffusers `CombinedTimestepTextProjEmbeddings`.
#[derive(Clone, Debug)]
pub struct TimeTextEmbed {
    pub timestep_embedder: TimestepEmbedding,
    pub text_embedder: TextProjection,
}

impl TimeTextEmbed {
    fn new(vb: &VarBuilder, dim: usize, pooled_dim: usize) -> Result<Self> {
        Ok(TimeTextEmbed {
            timestep_embedder: TimestepEmbedding::new(&vb.pp("timestep_embedder"), 256, dim)?,
            text_embedder: TextProjection::new(&vb.pp("text_embedder"), pooled_dim, dim)?,
        })
    }
    fn forward(&self, timestep: &Tensor, pooled: &Tensor) -> Result<Tensor> {
        let t = self.timestep_embedder.forward(&sd3_time_proj(timestep)?)?;
        t.add(&self.text_embedder.forward(pooled)?)
    }
}

/// diffusers `Attention` with `JointAttnProcessor2_0`: image projections, optional
/// context projections (`add_*_proj`), optional RMS qk-norm per head.
#[derive(Clone, Debug)]
pub struct JointAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    norm_q: Option<RmsNorm>,
    norm_k: Option<RmsNorm>,
    context: Option<ContextProj>,
    heads: usize,
    head_dim: usize,
}

#[derive(Clone, Debug)]
struct ContextProj {
    add_q_proj: Linear,
    add_k_proj: Linear,
    add_v_proj: Linear,
    /// Absent in the context-pre-only last block.
    to_add_out: Option<Linear>,
    norm_added_q: Option<RmsNorm>,
    norm_added_k: Option<RmsNorm>,
}

impl JointAttention {
    /// `joint`: with context projections; `context_pre_only`: no context output.
    fn new(vb: &VarBuilder, cfg: &Config, joint: bool, context_pre_only: bool) -> Result<Self> {
        let (d, hd) = (cfg.inner_dim(), cfg.attention_head_dim);
        let qk = cfg.qk_norm.is_some();
        let norm = |name: &str| -> Result<Option<RmsNorm>> {
            if qk {
                Ok(Some(RmsNorm::new(&vb.pp(name), hd, 1e-6, true)?))
            } else {
                Ok(None)
            }
        };
        let context = if joint {
            Some(ContextProj {
                add_q_proj: Linear::new(&vb.pp("add_q_proj"), d, d, true)?,
                add_k_proj: Linear::new(&vb.pp("add_k_proj"), d, d, true)?,
                add_v_proj: Linear::new(&vb.pp("add_v_proj"), d, d, true)?,
                to_add_out: if context_pre_only { None } else { Some(Linear::new(&vb.pp("to_add_out"), d, d, true)?) },
                norm_added_q: norm("norm_added_q")?,
                norm_added_k: norm("norm_added_k")?,
            })
        } else {
            None
        };
        Ok(JointAttention {
            to_q: Linear::new(&vb.pp("to_q"), d, d, true)?,
            to_k: Linear::new(&vb.pp("to_k"), d, d, true)?,
            to_v: Linear::new(&vb.pp("to_v"), d, d, true)?,
            to_out: Linear::new(&vb.pp("to_out.0"), d, d, true)?,
            norm_q: norm("norm_q")?,
            norm_k: norm("norm_k")?,
            context,
            heads: cfg.num_attention_heads,
            head_dim: hd,
        })
    }

    /// [B, N, D] → [B, N, H, hd] (a free view), then the optional per-head RMS norm.
    /// Tokens stay outermost so the norm and the image/context concat work on
    /// contiguous rows; attention reads the [B, H, N, hd] transpose in place.
    fn heads_of(&self, x: &Tensor, norm: Option<&RmsNorm>) -> Result<Tensor> {
        let (b, n) = (x.shape()[0], x.shape()[1]);
        let t = x.reshape(&[b, n, self.heads, self.head_dim])?;
        match norm {
            Some(nm) => nm.forward(&t),
            None => Ok(t),
        }
    }

    /// Returns the image output and, when the block keeps its context stream, the
    /// context output.
    fn forward(&self, x: &Tensor, ctx: Option<&Tensor>) -> Result<(Tensor, Option<Tensor>)> {
        let (b, n) = (x.shape()[0], x.shape()[1]);
        let mut q = self.heads_of(&self.to_q.forward(x)?, self.norm_q.as_ref())?;
        let mut k = self.heads_of(&self.to_k.forward(x)?, self.norm_k.as_ref())?;
        let mut v = self.heads_of(&self.to_v.forward(x)?, None)?;
        let mut l = 0;
        if let (Some(c), Some(cp)) = (ctx, &self.context) {
            l = c.shape()[1];
            let cq = self.heads_of(&cp.add_q_proj.forward(c)?, cp.norm_added_q.as_ref())?;
            let ck = self.heads_of(&cp.add_k_proj.forward(c)?, cp.norm_added_k.as_ref())?;
            let cv = self.heads_of(&cp.add_v_proj.forward(c)?, None)?;
            q = ops::concat(&[&q, &cq], 1)?;
            k = ops::concat(&[&k, &ck], 1)?;
            v = ops::concat(&[&v, &cv], 1)?;
        }
        let o = ops::attention(&q.transpose(1, 2)?, &k.transpose(1, 2)?, &v.transpose(1, 2)?, None, None)?;
        // [B, H, N+L, hd] → per-stream [B, tokens, D]: one copy of each stream's rows.
        let o = o.transpose(1, 2)?;
        let d = self.heads * self.head_dim;
        if l == 0 {
            return Ok((self.to_out.forward(&o.reshape(&[b, n, d])?)?, None));
        }
        let img = self.to_out.forward(&o.narrow(1, 0, n)?.reshape(&[b, n, d])?)?;
        let ctx_out = match self.context.as_ref().and_then(|c| c.to_add_out.as_ref()) {
            Some(p) => Some(p.forward(&o.narrow(1, n, l)?.reshape(&[b, l, d])?)?),
            None => None,
        };
        Ok((img, ctx_out))
    }
}

/// diffusers `JointTransformerBlock`.
#[derive(Clone, Debug)]
pub struct JointTransformerBlock {
    norm1: AdaLayerNormZero,
    norm1_context: ContextNorm,
    attn: JointAttention,
    attn2: Option<JointAttention>,
    ff: FeedForward,
    ff_context: Option<FeedForward>,
}

#[derive(Clone, Debug)]
enum ContextNorm {
    Zero(AdaLayerNormZero),
    /// The last block only pre-processes the context (`context_pre_only`).
    Continuous(AdaLayerNormContinuous),
}

impl JointTransformerBlock {
    fn new(vb: &VarBuilder, cfg: &Config, index: usize) -> Result<Self> {
        let d = cfg.inner_dim();
        let pre_only = index == cfg.num_layers - 1;
        let dual = cfg.dual_attention_layers.contains(&index);
        Ok(JointTransformerBlock {
            norm1: AdaLayerNormZero::new(&vb.pp("norm1"), d, dual)?,
            norm1_context: if pre_only {
                ContextNorm::Continuous(AdaLayerNormContinuous::new(&vb.pp("norm1_context"), d, d, 1e-6)?)
            } else {
                ContextNorm::Zero(AdaLayerNormZero::new(&vb.pp("norm1_context"), d, false)?)
            },
            attn: JointAttention::new(&vb.pp("attn"), cfg, true, pre_only)?,
            attn2: if dual { Some(JointAttention::new(&vb.pp("attn2"), cfg, false, false)?) } else { None },
            ff: FeedForward::new(&vb.pp("ff"), d, d, 4)?,
            ff_context: if pre_only { None } else { Some(FeedForward::new(&vb.pp("ff_context"), d, d, 4)?) },
        })
    }

    /// Returns (encoder_hidden_states (None after the last block), hidden_states).
    fn forward(&self, x: &Tensor, ctx: &Tensor, temb: &Tensor) -> Result<(Option<Tensor>, Tensor)> {
        let n1 = self.norm1.forward(x, temb)?;
        let (ctx_normed, ctx_mod) = match &self.norm1_context {
            ContextNorm::Zero(nz) => {
                let o = nz.forward(ctx, temb)?;
                (o.x.clone(), Some(o))
            }
            ContextNorm::Continuous(nc) => (nc.forward(ctx, temb)?, None),
        };
        let (attn_out, ctx_attn_out) = self.attn.forward(&n1.x, Some(&ctx_normed))?;
        let mut h = ops::gated_residual(x, &n1.gate_msa, &attn_out)?;
        if let (Some(attn2), Some(x2), Some(g2)) = (&self.attn2, &n1.x2, &n1.gate_msa2) {
            let (o2, _) = attn2.forward(x2, None)?;
            h = ops::gated_residual(&h, g2, &o2)?;
        }
        let ffin = ops::layer_norm_modulate(&h, &n1.shift_mlp, &n1.scale_mlp, 1e-6)?;
        h = ops::gated_residual(&h, &n1.gate_mlp, &self.ff.forward(&ffin)?)?;
        let ctx_out = match (ctx_mod, ctx_attn_out, &self.ff_context) {
            (Some(m), Some(ca), Some(ffc)) => {
                let c = ops::gated_residual(ctx, &m.gate_msa, &ca)?;
                let cin = ops::layer_norm_modulate(&c, &m.shift_mlp, &m.scale_mlp, 1e-6)?;
                Some(ops::gated_residual(&c, &m.gate_mlp, &ffc.forward(&cin)?)?)
            }
            _ => None,
        };
        Ok((ctx_out, h))
    }
}

/// diffusers `SD3Transformer2DModel`.
#[derive(Clone, Debug)]
pub struct SD3Transformer2DModel {
    pub cfg: Config,
    pos_embed: PatchEmbed,
    time_text_embed: TimeTextEmbed,
    context_embedder: Linear,
    transformer_blocks: Vec<JointTransformerBlock>,
    norm_out: AdaLayerNormContinuous,
    proj_out: Linear,
}

/// The checkpoint key of the sin-cos position table (a buffer, not a parameter).
pub const POS_EMBED_BUFFER: &str = "pos_embed.pos_embed";

impl SD3Transformer2DModel {
    pub fn new(cfg: Config, vb: &VarBuilder) -> Result<Self> {
        cfg.validate().map_err(Error::Msg)?;
        let d = cfg.inner_dim();
        let p = cfg.patch_size;
        Ok(SD3Transformer2DModel {
            pos_embed: PatchEmbed::new(&vb.pp("pos_embed"), &cfg)?,
            time_text_embed: TimeTextEmbed::new(&vb.pp("time_text_embed"), d, cfg.pooled_projection_dim)?,
            context_embedder: Linear::new(
                &vb.pp("context_embedder"),
                cfg.joint_attention_dim,
                cfg.caption_projection_dim,
                true,
            )?,
            transformer_blocks: (0..cfg.num_layers)
                .map(|i| JointTransformerBlock::new(&vb.pp(format!("transformer_blocks.{i}")), &cfg, i))
                .collect::<Result<_>>()?,
            norm_out: AdaLayerNormContinuous::new(&vb.pp("norm_out"), d, d, 1e-6)?,
            proj_out: Linear::new(&vb.pp("proj_out"), d, p * p * cfg.out_channels(), true)?,
            cfg,
        })
    }

    /// The velocity prediction `sample` [B, C_out, H, W].
    pub fn forward(
        &self,
        hidden_states: &Tensor,
        encoder_hidden_states: &Tensor,
        pooled_projections: &Tensor,
        timestep: &Tensor,
    ) -> Result<Tensor> {
        self.check_inputs(hidden_states, encoder_hidden_states, pooled_projections, timestep)?;
        let &[b, _, h, w] = hidden_states.shape() else { unreachable!("checked") };
        let p = self.cfg.patch_size;
        let mut x = self.pos_embed.forward(hidden_states)?;
        let temb = self.time_text_embed.forward(timestep, pooled_projections)?;
        let mut ctx = Some(self.context_embedder.forward(encoder_hidden_states)?);
        for block in &self.transformer_blocks {
            let c = ctx.take().ok_or_else(|| Error::Msg("a block after the context-pre-only block".into()))?;
            let (c2, x2) = block.forward(&x, &c, &temb)?;
            ctx = c2;
            x = x2;
        }
        let x = self.proj_out.forward(&self.norm_out.forward(&x, &temb)?)?;
        let co = self.cfg.out_channels();
        x.reshape(&[b, h / p, w / p, p, p, co])?.permute(&[0, 5, 1, 3, 2, 4])?.reshape(&[b, co, h, w])
    }

    fn check_inputs(&self, x: &Tensor, ehs: &Tensor, pooled: &Tensor, t: &Tensor) -> Result<()> {
        let c = &self.cfg;
        let bad = |name: &str, got: &[usize], want: String| {
            Err(Error::Msg(format!("input '{name}' has shape {got:?}, expected {want}")))
        };
        if x.dims() != 4 || x.shape()[1] != c.in_channels {
            return bad("hidden_states", x.shape(), format!("[B, {}, H, W]", c.in_channels));
        }
        let b = x.shape()[0];
        if ehs.dims() != 3 || ehs.shape()[0] != b || ehs.shape()[2] != c.joint_attention_dim {
            return bad("encoder_hidden_states", ehs.shape(), format!("[{b}, L, {}]", c.joint_attention_dim));
        }
        if pooled.shape() != [b, c.pooled_projection_dim] {
            return bad("pooled_projections", pooled.shape(), format!("[{b}, {}]", c.pooled_projection_dim));
        }
        if t.shape() != [b] {
            return bad("timestep", t.shape(), format!("[{b}]"));
        }
        Ok(())
    }
}
