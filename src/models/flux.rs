//! FLUX.1 — the equivalent of diffusers `FluxTransformer2DModel` (transformer_flux.py).
//!
//! Conventions (as diffusers): `hidden_states` [B, N, in_channels] packed latent tokens
//! (2×2 latent patches packed by the pipeline), `encoder_hidden_states` [B, L,
//! joint_attention_dim], `pooled_projections` [B, pooled_projection_dim], `timestep`
//! [B] = σ in [0, 1] (multiplied by 1000 inside, as diffusers does), `img_ids` [N, 3],
//! `txt_ids` [L, 3], `guidance` [B] (FLUX.1-dev only; also ×1000 inside). Output
//! `sample` [B, N, out_channels·p²]. Attention runs on [text, image] tokens with 3-axis
//! RoPE built from `cat(txt_ids, img_ids)`.

use super::config::parse_config;
use crate::error::{Error, Result};
use crate::nn::embeddings::{sd3_time_proj, TextProjection, TimestepEmbedding};
use crate::nn::norm::AdaProjection;
use crate::nn::{AdaLayerNormContinuous, AdaLayerNormZero, FeedForward, Linear, RmsNorm, VarBuilder};
use crate::ops;
use crate::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// diffusers `FluxTransformer2DModel` config (defaults as in diffusers).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub patch_size: usize,
    pub in_channels: usize,
    pub out_channels: Option<usize>,
    pub num_layers: usize,
    pub num_single_layers: usize,
    pub attention_head_dim: usize,
    pub num_attention_heads: usize,
    pub joint_attention_dim: usize,
    pub pooled_projection_dim: usize,
    pub guidance_embeds: bool,
    pub axes_dims_rope: Vec<usize>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            patch_size: 1,
            in_channels: 64,
            out_channels: None,
            num_layers: 19,
            num_single_layers: 38,
            attention_head_dim: 128,
            num_attention_heads: 24,
            joint_attention_dim: 4096,
            pooled_projection_dim: 768,
            guidance_embeds: false,
            axes_dims_rope: vec![16, 56, 56],
        }
    }
}

impl Config {
    pub const CLASS: &'static str = "FluxTransformer2DModel";

    /// black-forest-labs/FLUX.1-dev transformer/config.json.
    pub fn flux_dev() -> Self {
        Config { guidance_embeds: true, ..Default::default() }
    }

    /// black-forest-labs/FLUX.1-schnell transformer/config.json.
    pub fn flux_schnell() -> Self {
        Config::default()
    }

    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "flux-dev" => Ok(Self::flux_dev()),
            "flux-schnell" => Ok(Self::flux_schnell()),
            _ => Err(Error::Msg(format!("unknown FLUX preset '{name}' (known: flux-dev, flux-schnell)"))),
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
        let rope: usize = self.axes_dims_rope.iter().sum();
        if rope != self.attention_head_dim {
            return Err(format!(
                "axes_dims_rope {:?} sums to {rope}, but attention_head_dim is {}",
                self.axes_dims_rope, self.attention_head_dim
            ));
        }
        if self.axes_dims_rope.iter().any(|d| d % 2 != 0) {
            return Err(format!("axes_dims_rope {:?} must all be even", self.axes_dims_rope));
        }
        Ok(())
    }
}

/// diffusers `FluxAttention` + `FluxAttnProcessor`: RMS qk-norm per head always;
/// `joint` adds the context projections; `pre_only` (single blocks) has no to_out.
#[derive(Clone, Debug)]
pub struct FluxAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    to_out: Option<Linear>,
    context: Option<FluxContextProj>,
    heads: usize,
    head_dim: usize,
}

#[derive(Clone, Debug)]
struct FluxContextProj {
    add_q_proj: Linear,
    add_k_proj: Linear,
    add_v_proj: Linear,
    norm_added_q: RmsNorm,
    norm_added_k: RmsNorm,
    to_add_out: Linear,
}

impl FluxAttention {
    fn new(vb: &VarBuilder, cfg: &Config, joint: bool, pre_only: bool) -> Result<Self> {
        let (d, hd) = (cfg.inner_dim(), cfg.attention_head_dim);
        let context = if joint {
            Some(FluxContextProj {
                add_q_proj: Linear::new(&vb.pp("add_q_proj"), d, d, true)?,
                add_k_proj: Linear::new(&vb.pp("add_k_proj"), d, d, true)?,
                add_v_proj: Linear::new(&vb.pp("add_v_proj"), d, d, true)?,
                norm_added_q: RmsNorm::new(&vb.pp("norm_added_q"), hd, 1e-6, true)?,
                norm_added_k: RmsNorm::new(&vb.pp("norm_added_k"), hd, 1e-6, true)?,
                to_add_out: Linear::new(&vb.pp("to_add_out"), d, d, true)?,
            })
        } else {
            None
        };
        Ok(FluxAttention {
            to_q: Linear::new(&vb.pp("to_q"), d, d, true)?,
            to_k: Linear::new(&vb.pp("to_k"), d, d, true)?,
            to_v: Linear::new(&vb.pp("to_v"), d, d, true)?,
            norm_q: RmsNorm::new(&vb.pp("norm_q"), hd, 1e-6, true)?,
            norm_k: RmsNorm::new(&vb.pp("norm_k"), hd, 1e-6, true)?,
            to_out: if pre_only { None } else { Some(Linear::new(&vb.pp("to_out.0"), d, d, true)?) },
            context,
            heads: cfg.num_attention_heads,
            head_dim: hd,
        })
    }

    /// [B, N, D] → [B, N, H, hd], a free view: tokens stay outermost so the per-head
    /// norms and the text/image concat work on contiguous rows.
    fn heads_of(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n) = (x.shape()[0], x.shape()[1]);
        x.reshape(&[b, n, self.heads, self.head_dim])
    }

    /// Joint form: returns (image out, context out); single form: (all tokens, None).
    fn forward(&self, x: &Tensor, ctx: Option<&Tensor>, rope: &(Tensor, Tensor)) -> Result<(Tensor, Option<Tensor>)> {
        let (b, n) = (x.shape()[0], x.shape()[1]);
        let mut q = self.norm_q.forward(&self.heads_of(&self.to_q.forward(x)?)?)?;
        let mut k = self.norm_k.forward(&self.heads_of(&self.to_k.forward(x)?)?)?;
        let mut v = self.heads_of(&self.to_v.forward(x)?)?;
        let mut l = 0;
        if let (Some(c), Some(cp)) = (ctx, &self.context) {
            l = c.shape()[1];
            let cq = cp.norm_added_q.forward(&self.heads_of(&cp.add_q_proj.forward(c)?)?)?;
            let ck = cp.norm_added_k.forward(&self.heads_of(&cp.add_k_proj.forward(c)?)?)?;
            let cv = self.heads_of(&cp.add_v_proj.forward(c)?)?;
            q = ops::concat(&[&cq, &q], 1)?;
            k = ops::concat(&[&ck, &k], 1)?;
            v = ops::concat(&[&cv, &v], 1)?;
        }
        // RoPE takes [.., N, hd]: it reads the [B, H, N, hd] view and writes it contiguous.
        let q = ops::rope(&q.transpose(1, 2)?, &rope.0, &rope.1)?;
        let k = ops::rope(&k.transpose(1, 2)?, &rope.0, &rope.1)?;
        let o = ops::attention(&q, &k, &v.transpose(1, 2)?, None, None)?;
        // [B, H, N+L, hd] → per-stream [B, tokens, D]: one copy of each stream's rows.
        let o = o.transpose(1, 2)?;
        let d = self.heads * self.head_dim;
        match (&self.context, ctx) {
            (Some(cp), Some(_)) => {
                let img = o.narrow(1, l, n)?.reshape(&[b, n, d])?;
                let img = self.to_out.as_ref().expect("joint attention has to_out").forward(&img)?;
                Ok((img, Some(cp.to_add_out.forward(&o.narrow(1, 0, l)?.reshape(&[b, l, d])?)?)))
            }
            _ => {
                let o = o.reshape(&[b, n + l, d])?;
                match &self.to_out {
                    Some(p) => Ok((p.forward(&o)?, None)),
                    None => Ok((o, None)),
                }
            }
        }
    }
}

/// diffusers `FluxTransformerBlock` (double stream).
#[derive(Clone, Debug)]
pub struct FluxTransformerBlock {
    norm1: AdaLayerNormZero,
    norm1_context: AdaLayerNormZero,
    attn: FluxAttention,
    ff: FeedForward,
    ff_context: FeedForward,
}

impl FluxTransformerBlock {
    fn new(vb: &VarBuilder, cfg: &Config) -> Result<Self> {
        let d = cfg.inner_dim();
        Ok(FluxTransformerBlock {
            norm1: AdaLayerNormZero::new(&vb.pp("norm1"), d, false)?,
            norm1_context: AdaLayerNormZero::new(&vb.pp("norm1_context"), d, false)?,
            attn: FluxAttention::new(&vb.pp("attn"), cfg, true, false)?,
            ff: FeedForward::new(&vb.pp("ff"), d, d, 4)?,
            ff_context: FeedForward::new(&vb.pp("ff_context"), d, d, 4)?,
        })
    }

    fn forward(&self, x: &Tensor, ctx: &Tensor, temb: &Tensor, rope: &(Tensor, Tensor)) -> Result<(Tensor, Tensor)> {
        let n1 = self.norm1.forward(x, temb)?;
        let c1 = self.norm1_context.forward(ctx, temb)?;
        let (a, ca) = self.attn.forward(&n1.x, Some(&c1.x), rope)?;
        let ca = ca.expect("joint attention returns the context stream");
        let h = ops::gated_residual(x, &n1.gate_msa, &a)?;
        let hin = ops::layer_norm_modulate(&h, &n1.shift_mlp, &n1.scale_mlp, 1e-6)?;
        let h = ops::gated_residual(&h, &n1.gate_mlp, &self.ff.forward(&hin)?)?;
        let c = ops::gated_residual(ctx, &c1.gate_msa, &ca)?;
        let cin = ops::layer_norm_modulate(&c, &c1.shift_mlp, &c1.scale_mlp, 1e-6)?;
        let c = ops::gated_residual(&c, &c1.gate_mlp, &self.ff_context.forward(&cin)?)?;
        Ok((c, h))
    }
}

/// diffusers `FluxSingleTransformerBlock`: one stream over [text, image] tokens,
/// attention and MLP in parallel, one output projection of their concatenation.
#[derive(Clone, Debug)]
pub struct FluxSingleTransformerBlock {
    norm: AdaProjection,
    proj_mlp: Linear,
    proj_out: Linear,
    attn: FluxAttention,
}

impl FluxSingleTransformerBlock {
    fn new(vb: &VarBuilder, cfg: &Config) -> Result<Self> {
        let d = cfg.inner_dim();
        let mlp = 4 * d;
        Ok(FluxSingleTransformerBlock {
            norm: AdaProjection::new(&vb.pp("norm"), d, d, 3)?,
            proj_mlp: Linear::new(&vb.pp("proj_mlp"), d, mlp, true)?,
            proj_out: Linear::new(&vb.pp("proj_out"), d + mlp, d, true)?,
            attn: FluxAttention::new(&vb.pp("attn"), cfg, false, true)?,
        })
    }

    /// `x` is the concatenated [text, image] stream.
    fn forward(&self, x: &Tensor, temb: &Tensor, rope: &(Tensor, Tensor)) -> Result<Tensor> {
        // AdaLayerNormZeroSingle chunks: (shift_msa, scale_msa, gate_msa).
        let c = self.norm.forward(temb)?;
        let nx = ops::layer_norm_modulate(x, &c[0], &c[1], 1e-6)?;
        let mlp = self.proj_mlp.forward(&nx)?.gelu_tanh()?;
        let (a, _) = self.attn.forward(&nx, None, rope)?;
        let y = self.proj_out.forward(&ops::concat(&[&a, &mlp], 2)?)?;
        ops::gated_residual(x, &c[2], &y)
    }
}

/// diffusers `CombinedTimestepTextProjEmbeddings` or, with guidance,
/// `CombinedTimestepGuidanceTextProjEmbeddings`.
#[derive(Clone, Debug)]
struct FluxTimeTextEmbed {
    timestep_embedder: TimestepEmbedding,
    guidance_embedder: Option<TimestepEmbedding>,
    text_embedder: TextProjection,
}

/// diffusers `FluxTransformer2DModel`.
#[derive(Clone, Debug)]
pub struct FluxTransformer2DModel {
    pub cfg: Config,
    x_embedder: Linear,
    context_embedder: Linear,
    time_text_embed: FluxTimeTextEmbed,
    transformer_blocks: Vec<FluxTransformerBlock>,
    single_transformer_blocks: Vec<FluxSingleTransformerBlock>,
    norm_out: AdaLayerNormContinuous,
    proj_out: Linear,
}

/// Inputs of one FLUX forward, named like diffusers' keyword arguments.
pub struct FluxInputs<'a> {
    pub hidden_states: &'a Tensor,
    pub encoder_hidden_states: &'a Tensor,
    pub pooled_projections: &'a Tensor,
    pub timestep: &'a Tensor,
    pub img_ids: &'a Tensor,
    pub txt_ids: &'a Tensor,
    pub guidance: Option<&'a Tensor>,
}

impl FluxTransformer2DModel {
    pub fn new(cfg: Config, vb: &VarBuilder) -> Result<Self> {
        cfg.validate().map_err(Error::Msg)?;
        let d = cfg.inner_dim();
        let tvb = vb.pp("time_text_embed");
        Ok(FluxTransformer2DModel {
            x_embedder: Linear::new(&vb.pp("x_embedder"), cfg.in_channels, d, true)?,
            context_embedder: Linear::new(&vb.pp("context_embedder"), cfg.joint_attention_dim, d, true)?,
            time_text_embed: FluxTimeTextEmbed {
                timestep_embedder: TimestepEmbedding::new(&tvb.pp("timestep_embedder"), 256, d)?,
                guidance_embedder: if cfg.guidance_embeds {
                    Some(TimestepEmbedding::new(&tvb.pp("guidance_embedder"), 256, d)?)
                } else {
                    None
                },
                text_embedder: TextProjection::new(&tvb.pp("text_embedder"), cfg.pooled_projection_dim, d)?,
            },
            transformer_blocks: (0..cfg.num_layers)
                .map(|i| FluxTransformerBlock::new(&vb.pp(format!("transformer_blocks.{i}")), &cfg))
                .collect::<Result<_>>()?,
            single_transformer_blocks: (0..cfg.num_single_layers)
                .map(|i| FluxSingleTransformerBlock::new(&vb.pp(format!("single_transformer_blocks.{i}")), &cfg))
                .collect::<Result<_>>()?,
            norm_out: AdaLayerNormContinuous::new(&vb.pp("norm_out"), d, d, 1e-6)?,
            proj_out: Linear::new(&vb.pp("proj_out"), d, cfg.patch_size * cfg.patch_size * cfg.out_channels(), true)?,
            cfg,
        })
    }

    pub fn forward(&self, inp: &FluxInputs) -> Result<Tensor> {
        self.check_inputs(inp)?;
        let x = self.x_embedder.forward(inp.hidden_states)?;
        let te = &self.time_text_embed;
        let mut temb = te.timestep_embedder.forward(&sd3_time_proj(&inp.timestep.scale(1000.0)?)?)?;
        if let Some(ge) = &te.guidance_embedder {
            let g = inp.guidance.expect("checked");
            temb = temb.add(&ge.forward(&sd3_time_proj(&g.scale(1000.0)?)?)?)?;
        }
        let temb = temb.add(&te.text_embedder.forward(inp.pooled_projections)?)?;
        let mut ctx = self.context_embedder.forward(inp.encoder_hidden_states)?;
        let ids = ops::concat(&[inp.txt_ids, inp.img_ids], 0)?;
        let rope = ops::flux_rope_cos_sin(&ids, &self.cfg.axes_dims_rope, 10000.0)?;
        let mut h = x;
        for block in &self.transformer_blocks {
            let (c, x2) = block.forward(&h, &ctx, &temb, &rope)?;
            ctx = c;
            h = x2;
        }
        let l = ctx.shape()[1];
        let n = h.shape()[1];
        let mut s = ops::concat(&[&ctx, &h], 1)?;
        for block in &self.single_transformer_blocks {
            s = block.forward(&s, &temb, &rope)?;
        }
        let h = s.narrow(1, l, n)?;
        self.proj_out.forward(&self.norm_out.forward(&h, &temb)?)
    }

    fn check_inputs(&self, i: &FluxInputs) -> Result<()> {
        let c = &self.cfg;
        let bad = |name: &str, got: &[usize], want: String| {
            Err(Error::Msg(format!("input '{name}' has shape {got:?}, expected {want}")))
        };
        let x = i.hidden_states;
        if x.dims() != 3 || x.shape()[2] != c.in_channels {
            return bad("hidden_states", x.shape(), format!("[B, N, {}]", c.in_channels));
        }
        let (b, n) = (x.shape()[0], x.shape()[1]);
        let e = i.encoder_hidden_states;
        if e.dims() != 3 || e.shape()[0] != b || e.shape()[2] != c.joint_attention_dim {
            return bad("encoder_hidden_states", e.shape(), format!("[{b}, L, {}]", c.joint_attention_dim));
        }
        let l = e.shape()[1];
        let axes = c.axes_dims_rope.len();
        if i.pooled_projections.shape() != [b, c.pooled_projection_dim] {
            return bad(
                "pooled_projections",
                i.pooled_projections.shape(),
                format!("[{b}, {}]", c.pooled_projection_dim),
            );
        }
        if i.timestep.shape() != [b] {
            return bad("timestep", i.timestep.shape(), format!("[{b}]"));
        }
        if i.img_ids.shape() != [n, axes] {
            return bad("img_ids", i.img_ids.shape(), format!("[{n}, {axes}]"));
        }
        if i.txt_ids.shape() != [l, axes] {
            return bad("txt_ids", i.txt_ids.shape(), format!("[{l}, {axes}]"));
        }
        match (c.guidance_embeds, i.guidance) {
            (true, None) => {
                Err(Error::Msg("input 'guidance' is required: the model has guidance_embeds = true".into()))
            }
            (true, Some(g)) if g.shape() != [b] => bad("guidance", g.shape(), format!("[{b}]")),
            (false, Some(_)) => {
                Err(Error::Msg("input 'guidance' given, but the model has guidance_embeds = false".into()))
            }
            _ => Ok(()),
        }
    }
}
