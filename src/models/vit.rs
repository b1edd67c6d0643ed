//! DINOv2 vision transformers: the equivalent of transformers `Dinov2Model`
//! (modeling_dinov2.py) and `Dinov2WithRegistersModel` (modeling_dinov2_with_registers.py).
//!
//! Conventions (as transformers):
//! - `pixel_values` [B, C, H, W], already normalized by the image processor. H and W
//!   need not be multiples of the patch size: the stride-p patch conv drops the
//!   remainder rows/columns, and so do we.
//! - Tokens [B, T, D], T = 1 + R + (H/p)·(W/p): CLS, then the R register tokens
//!   (with-registers variant only), then the patches row-major.
//! - Parameter names are the keys of the published checkpoints
//!   (`encoder.layer.N.attention.attention.query.weight`, `mlp.fc1`, SwiGLU's fused
//!   `mlp.weights_in`), which transformers 5 still writes on save; it renames them
//!   (q_proj, gate_proj/up_proj, ...) only in memory.
//! - Eval mode: dropout and drop-path are identities (the frozen VFM backbone never runs
//!   in training mode), so their rates are accepted and not applied.
//! - `embeddings.mask_token` is loaded (it is a checkpoint parameter) but unused: the
//!   forward takes no `bool_masked_pos` (masked-image pre-training only).
//!
//! Position embeddings are stored for a G×G patch grid (G = image_size / patch_size) and
//! resized to the input's grid as transformers' `interpolate_pos_encoding` does: torch
//! `F.interpolate(mode="bicubic", align_corners=False)` with `size=(H/p, W/p)`, computed
//! in float32, and with `antialias=True` in the with-registers variant (Keys' cubic with
//! a = −0.5, kernel widened by the scale when shrinking, weights renormalized) but not in
//! plain DINOv2 (a = −0.75, clamped border taps). Both are separable linear maps, so the
//! resize is two f32 matmuls with constant weight matrices ([`bicubic_matrix`]), which
//! also carry the gradient to `position_embeddings`. At the stored grid size the table is
//! used as is (torch's resize is then the identity). The float32 island itself moves the
//! float64 reference by ≤ 2.7e-7 (fixtures' `transformers_f32_islands_rel_err`).

use super::transformers::{self as hf, HiddenAct};
use crate::error::{Error, Result};
use crate::io::ModelFolder;
use crate::nn::{Init, LayerNorm, Linear, ParamStore, VarBuilder};
use crate::ops;
use crate::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Which transformers class a config describes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Variant {
    /// `Dinov2Model`, model_type "dinov2".
    #[default]
    Dinov2,
    /// `Dinov2WithRegistersModel`, model_type "dinov2_with_registers".
    WithRegisters,
}

impl Variant {
    pub fn class_name(self) -> &'static str {
        match self {
            Variant::Dinov2 => "Dinov2Model",
            Variant::WithRegisters => "Dinov2WithRegistersModel",
        }
    }
    pub fn model_type(self) -> &'static str {
        match self {
            Variant::Dinov2 => "dinov2",
            Variant::WithRegisters => "dinov2_with_registers",
        }
    }
}

/// An `image_size` / `patch_size` entry: an int or an [h, w] pair.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Extent {
    Square(usize),
    Rect([usize; 2]),
}

impl Extent {
    /// The side length; a non-square pair is rejected (see `Config::validate`).
    fn square(self) -> Option<usize> {
        match self {
            Extent::Square(s) => Some(s),
            Extent::Rect([h, w]) => (h == w).then_some(h),
        }
    }
}

/// transformers `Dinov2Config` / `Dinov2WithRegistersConfig` (defaults as there).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// From `model_type` (or `architectures[0]`), not a key of its own.
    #[serde(skip)]
    pub variant: Variant,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// MLP width = int(hidden_size · mlp_ratio).
    pub mlp_ratio: f64,
    pub hidden_act: HiddenAct,
    pub layer_norm_eps: f64,
    /// The pre-training resolution: fixes the stored position grid.
    pub image_size: Extent,
    pub patch_size: Extent,
    pub num_channels: usize,
    pub qkv_bias: bool,
    /// The initial LayerScale λ (fresh models only; checkpoints store λ).
    pub layerscale_value: f64,
    /// SwiGLU MLP (dinov2-giant) instead of fc1 → act → fc2.
    pub use_swiglu_ffn: bool,
    /// `Dinov2Config` only (default true): whether `embeddings.mask_token` exists.
    pub use_mask_token: Option<bool>,
    /// `Dinov2WithRegistersConfig` only (default 4).
    pub num_register_tokens: Option<usize>,
    /// Training-mode regularizers: accepted, identities in eval mode (module doc).
    pub hidden_dropout_prob: f64,
    pub attention_probs_dropout_prob: f64,
    pub drop_path_rate: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            variant: Variant::Dinov2,
            hidden_size: 768,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            mlp_ratio: 4.0,
            hidden_act: HiddenAct::Gelu,
            layer_norm_eps: 1e-6,
            image_size: Extent::Square(224),
            patch_size: Extent::Square(14),
            num_channels: 3,
            qkv_bias: true,
            layerscale_value: 1.0,
            use_swiglu_ffn: false,
            use_mask_token: None,
            num_register_tokens: None,
            hidden_dropout_prob: 0.0,
            attention_probs_dropout_prob: 0.0,
            drop_path_rate: 0.0,
        }
    }
}

/// Config keys that do not change `Dinov2Model`'s forward, besides
/// [`hf::GENERIC_METADATA`]: the `Dinov2Backbone` options (which stages to return,
/// whether to layer-norm / reshape them; the base model reads none of them) and the
/// weight-init scale.
const IGNORED_KEYS: &[&str] =
    &["apply_layernorm", "reshape_hidden_states", "out_features", "out_indices", "stage_names", "initializer_range"];

impl Config {
    /// The architectures this file implements, by transformers class name.
    pub const CLASSES: [&'static str; 2] = ["Dinov2Model", "Dinov2WithRegistersModel"];
    pub const MODEL_TYPES: [&'static str; 2] = ["dinov2", "dinov2_with_registers"];

    fn published(variant: Variant, hidden: usize, layers: usize, heads: usize, swiglu: bool) -> Self {
        Config {
            variant,
            hidden_size: hidden,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            image_size: Extent::Square(518),
            patch_size: Extent::Square(14),
            use_swiglu_ffn: swiglu,
            use_mask_token: (variant == Variant::Dinov2).then_some(true),
            num_register_tokens: (variant == Variant::WithRegisters).then_some(4),
            ..Default::default()
        }
    }

    /// facebook/dinov2-{small,base,large,giant} and
    /// facebook/dinov2-with-registers-{small,base,large,giant} config.json
    /// (all: patch 14, image_size 518 → a 37×37 position grid, 4 registers).
    pub fn preset(name: &str) -> Result<Self> {
        let (variant, size) = match name.strip_prefix("dinov2-with-registers-") {
            Some(size) => (Variant::WithRegisters, size),
            None => (Variant::Dinov2, name.strip_prefix("dinov2-").unwrap_or("")),
        };
        match size {
            "small" => Ok(Self::published(variant, 384, 12, 6, false)),
            "base" => Ok(Self::published(variant, 768, 12, 12, false)),
            "large" => Ok(Self::published(variant, 1024, 24, 16, false)),
            "giant" => Ok(Self::published(variant, 1536, 40, 24, true)),
            _ => Err(Error::Msg(format!(
                "unknown DINOv2 preset '{name}' (known: dinov2-{{small,base,large,giant}}, \
                 dinov2-with-registers-{{small,base,large,giant}})"
            ))),
        }
    }

    /// Parses a transformers config.json; the variant comes from `model_type`, or from
    /// `architectures[0]` when model_type is absent.
    pub fn from_json(value: &serde_json::Value, origin: &Path) -> Result<Self> {
        let variant = match (hf::model_type(value), hf::architecture(value)) {
            (Some("dinov2"), _) | (None, Some("Dinov2Model")) => Variant::Dinov2,
            (Some("dinov2_with_registers"), _) | (None, Some("Dinov2WithRegistersModel")) => Variant::WithRegisters,
            (mt, arch) => {
                return Err(Error::format(
                    origin,
                    format!(
                        "not a DINOv2 config (model_type {mt:?}, architectures[0] {arch:?}; \
                         expected model_type dinov2 or dinov2_with_registers)"
                    ),
                ))
            }
        };
        if let Some(arch) = hf::architecture(value) {
            if arch != variant.class_name() {
                return Err(Error::format(
                    origin,
                    format!(
                        "architectures[0] '{arch}' is not supported (model_type {} is served as {}; \
                         heads such as classifiers are not)",
                        variant.model_type(),
                        variant.class_name()
                    ),
                ));
            }
        }
        let mut cfg: Config = hf::parse_hf_config(value, &Self::MODEL_TYPES, IGNORED_KEYS, origin)?;
        cfg.variant = variant;
        cfg.validate().map_err(|m| Error::format(origin, m))?;
        Ok(cfg)
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    pub fn patch(&self) -> usize {
        self.patch_size.square().expect("validated")
    }

    /// Side of the stored position grid, G = image_size / patch_size.
    pub fn grid(&self) -> usize {
        self.image_size.square().expect("validated") / self.patch()
    }

    pub fn num_register_tokens(&self) -> usize {
        match self.variant {
            Variant::Dinov2 => 0,
            Variant::WithRegisters => self.num_register_tokens.unwrap_or(4),
        }
    }

    /// Tokens before the patches: CLS plus the registers.
    pub fn num_prefix_tokens(&self) -> usize {
        1 + self.num_register_tokens()
    }

    fn has_mask_token(&self) -> bool {
        match self.variant {
            Variant::Dinov2 => self.use_mask_token.unwrap_or(true),
            // The registers model always creates it (its config has no switch).
            Variant::WithRegisters => true,
        }
    }

    /// The MLP hidden width: int(D·mlp_ratio), and for SwiGLU two thirds of it rounded
    /// up to a multiple of 8 (transformers `Dinov2SwiGLUFFN`).
    pub fn mlp_hidden(&self) -> usize {
        let h = (self.hidden_size as f64 * self.mlp_ratio) as usize;
        if self.use_swiglu_ffn {
            (h * 2 / 3).div_ceil(8) * 8
        } else {
            h
        }
    }

    /// Trainable parameter count (what transformers' `num_parameters()` reports).
    pub fn num_parameters(&self) -> Result<usize> {
        hf::count_params(|vb| Dinov2Model::new(self.clone(), vb))
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let (Some(image), Some(patch)) = (self.image_size.square(), self.patch_size.square()) else {
            return Err(format!(
                "non-square image_size {:?} / patch_size {:?}: the position grid is square",
                self.image_size, self.patch_size
            ));
        };
        if patch == 0 || image / patch.max(1) < 2 {
            return Err(format!("image_size {image} / patch_size {patch} must give a position grid of at least 2×2"));
        }
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.mlp_ratio.is_nan() || self.mlp_ratio <= 0.0 || self.mlp_hidden() == 0 {
            return Err(format!("mlp_ratio {} gives an empty MLP", self.mlp_ratio));
        }
        match self.variant {
            Variant::Dinov2 if self.num_register_tokens.is_some() => {
                return Err("num_register_tokens is a dinov2_with_registers option; \
                            model_type dinov2 has no register tokens"
                    .into())
            }
            Variant::WithRegisters if self.use_mask_token.is_some() => {
                return Err("use_mask_token is a dinov2 option; dinov2_with_registers \
                            always has a mask token"
                    .into())
            }
            _ => {}
        }
        Ok(())
    }
}

/// The [n_out, n_in] row-major matrix of torch `F.interpolate(mode="bicubic",
/// align_corners=False, size=...)` along one axis (row o: the weights of output o).
///
/// - `antialias = false` (upsample_bicubic2d): source x = (n_in/n_out)·(o + ½) − ½,
///   taps ⌊x⌋−1 … ⌊x⌋+2 clamped to the border, Keys' cubic with a = −0.75.
/// - `antialias = true` (_upsample_bicubic2d_aa): center c = s·(o + ½) with s = n_in/n_out,
///   support 2·max(s, 1), taps j in [⌊c − support + ½⌋, ⌊c + support + ½⌋) ∩ [0, n_in),
///   weight cubic((j − c + ½)/max(s, 1)) with a = −0.5, normalized to sum 1.
///
/// Computed in f64 and rounded once: torch evaluates the same formulas in f32, so its
/// weights differ from these by its own rounding (≤ 1.2e-6 over all sizes 2…12, tested),
/// a relative change of ~1e-6 in the resized table. One torch quirk is not reproduced:
/// its antialiased kernel, given a 1-wide input, returns the first output row
/// everywhere; DINOv2 grids are ≥ 2×2 (validated).
pub fn bicubic_matrix(n_in: usize, n_out: usize, antialias: bool) -> Vec<f32> {
    // torch's cubic_convolution1 (|x| ≤ 1) and cubic_convolution2 (1 < |x| < 2).
    fn cc1(x: f64, a: f64) -> f64 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    }
    fn cc2(x: f64, a: f64) -> f64 {
        ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    }
    let mut w = vec![0f64; n_out * n_in];
    let scale = n_in as f64 / n_out as f64;
    for (o, row) in w.chunks_exact_mut(n_in).enumerate() {
        if antialias {
            let support = if scale >= 1.0 { 2.0 * scale } else { 2.0 };
            let invscale = if scale >= 1.0 { 1.0 / scale } else { 1.0 };
            let center = scale * (o as f64 + 0.5);
            // `as i64` truncates toward zero, like torch's static_cast<int64_t>.
            let lo = ((center - support + 0.5) as i64).max(0) as usize;
            let hi = ((center + support + 0.5) as i64).min(n_in as i64).max(0) as usize;
            let filter = |x: f64| {
                let x = x.abs();
                if x < 1.0 {
                    cc1(x, -0.5)
                } else if x < 2.0 {
                    cc2(x, -0.5)
                } else {
                    0.0
                }
            };
            let mut total = 0f64;
            for (j, wj) in row.iter_mut().enumerate().take(hi).skip(lo) {
                *wj = filter((j as f64 - center + 0.5) * invscale);
                total += *wj;
            }
            if total != 0.0 {
                row[lo..hi].iter_mut().for_each(|x| *x /= total);
            }
        } else {
            let a = -0.75;
            let real = scale * (o as f64 + 0.5) - 0.5;
            let base = real.floor();
            let t = real - base;
            let coeffs = [cc2(t + 1.0, a), cc1(t, a), cc1(1.0 - t, a), cc2(2.0 - t, a)];
            for (k, c) in coeffs.into_iter().enumerate() {
                let idx = (base as i64 - 1 + k as i64).clamp(0, n_in as i64 - 1) as usize;
                row[idx] += c;
            }
        }
    }
    w.into_iter().map(|x| x as f32).collect()
}

/// transformers `Dinov2Embeddings` / `Dinov2WithRegistersEmbeddings`.
#[derive(Clone, Debug)]
pub struct Embeddings {
    pub cls_token: Tensor,               // [1, 1, D]
    pub mask_token: Option<Tensor>,      // [1, D]; loaded, unused (module doc)
    pub register_tokens: Option<Tensor>, // [1, R, D]
    pub position_embeddings: Tensor,     // [1, 1 + G², D]
    pub proj_weight: Tensor,             // [D, C, p, p]
    pub proj_bias: Tensor,               // [D]
    patch: usize,
    grid: usize,
    dim: usize,
    antialias: bool,
}

impl Embeddings {
    fn new(vb: &VarBuilder, cfg: &Config) -> Result<Self> {
        let (d, c, p, g) = (cfg.hidden_size, cfg.num_channels, cfg.patch(), cfg.grid());
        let bound = 1.0 / ((c * p * p) as f32).sqrt();
        Ok(Embeddings {
            cls_token: vb.get("cls_token", &[1, 1, d], Init::Normal(0.02))?,
            mask_token: if cfg.has_mask_token() { Some(vb.get("mask_token", &[1, d], Init::Zeros)?) } else { None },
            register_tokens: match cfg.variant {
                Variant::WithRegisters => {
                    Some(vb.get("register_tokens", &[1, cfg.num_register_tokens(), d], Init::Zeros)?)
                }
                Variant::Dinov2 => None,
            },
            position_embeddings: vb.get("position_embeddings", &[1, 1 + g * g, d], Init::Normal(0.02))?,
            proj_weight: vb.get("patch_embeddings.projection.weight", &[d, c, p, p], Init::Uniform(bound))?,
            proj_bias: vb.get("patch_embeddings.projection.bias", &[d], Init::Uniform(bound))?,
            patch: p,
            grid: g,
            dim: d,
            antialias: cfg.variant == Variant::WithRegisters,
        })
    }

    /// [B, C, H, W] → [B, 1 + R + (H/p)(W/p), D].
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let &[b, c, h, w] = x.shape() else { unreachable!("checked by Dinov2Model::forward") };
        let (p, d) = (self.patch, self.dim);
        let (hp, wp) = (h / p, w / p);
        // The stride-p conv ignores the last H mod p rows and W mod p columns.
        let x = x.narrow(2, 0, hp * p)?.narrow(3, 0, wp * p)?;
        let patches =
            x.reshape(&[b, c, hp, p, wp, p])?.permute(&[0, 2, 4, 1, 3, 5])?.reshape(&[b, hp * wp, c * p * p])?;
        let w2 = self.proj_weight.reshape(&[d, c * p * p])?;
        let tokens = ops::linear(&patches, &w2, Some(&self.proj_bias))?;
        let cls = self.cls_token.broadcast_to(&[b, 1, d])?;
        let emb = ops::concat(&[&cls, &tokens], 1)?.add(&self.position_table(hp, wp)?)?;
        match &self.register_tokens {
            Some(r) => {
                let r = r.broadcast_to(&[b, r.shape()[1], d])?;
                let n = emb.shape()[1];
                ops::concat(&[&emb.narrow(1, 0, 1)?, &r, &emb.narrow(1, 1, n - 1)?], 1)
            }
            None => Ok(emb),
        }
    }

    /// The position table for an hp×wp patch grid: [1, 1 + hp·wp, D] (module doc).
    fn position_table(&self, hp: usize, wp: usize) -> Result<Tensor> {
        let (g, d) = (self.grid, self.dim);
        let table = &self.position_embeddings;
        if (hp, wp) == (g, g) {
            return Ok(table.clone());
        }
        // transformers resizes in float32 and casts back. Our cast is not on the tape,
        // so below f32 the resized table is a constant: refuse when it must be trained.
        let dtype = table.dtype();
        if dtype != DType::F32 && table.tracks_grad() {
            return Err(Error::Msg(format!(
                "Dinov2: resizing trainable position embeddings in {dtype} is not supported \
                 (load the model frozen, or compute in f32)"
            )));
        }
        let patch_part = table.narrow(1, 1, g * g)?.to_dtype(DType::F32)?.reshape(&[g, g * d])?;
        let wy = Tensor::from_vec(bicubic_matrix(g, hp, self.antialias), &[hp, g])?;
        let wx = Tensor::from_vec(bicubic_matrix(g, wp, self.antialias), &[wp, g])?;
        // Rows first ([hp, G·D] → [hp, G, D]), then columns, batched over the hp rows.
        let rows = wy.matmul(&patch_part)?.reshape(&[hp, g, d])?;
        let grid = wx.matmul(&rows)?.reshape(&[1, hp * wp, d])?.to_dtype(dtype)?;
        ops::concat(&[&table.narrow(1, 0, 1)?, &grid], 1)
    }
}

/// transformers `Dinov2Attention` (checkpoint keys `attention.attention.{query,key,value}`
/// and `attention.output.dense`).
#[derive(Clone, Debug)]
pub struct Attention {
    pub query: Linear,
    pub key: Linear,
    pub value: Linear,
    pub dense: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(vb: &VarBuilder, cfg: &Config) -> Result<Self> {
        let d = cfg.hidden_size;
        let a = vb.pp("attention");
        Ok(Attention {
            query: Linear::new(&a.pp("query"), d, d, cfg.qkv_bias)?,
            key: Linear::new(&a.pp("key"), d, d, cfg.qkv_bias)?,
            value: Linear::new(&a.pp("value"), d, d, cfg.qkv_bias)?,
            dense: Linear::new(&vb.pp("output.dense"), d, d, true)?,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n) = (x.shape()[0], x.shape()[1]);
        let split = |t: Tensor| t.reshape(&[b, n, self.heads, self.head_dim])?.transpose(1, 2);
        let q = split(self.query.forward(x)?)?;
        let k = split(self.key.forward(x)?)?;
        let v = split(self.value.forward(x)?)?;
        // scale = head_dim^-½, the op's default.
        let o = ops::attention(&q, &k, &v, None, None)?;
        self.dense.forward(&o.transpose(1, 2)?.reshape(&[b, n, self.heads * self.head_dim])?)
    }
}

/// transformers `Dinov2MLP` (fc1 → act → fc2) or `Dinov2SwiGLUFFN` (checkpoint:
/// `weights_in` = [gate; up] stacked on the output axis, `weights_out`).
#[derive(Clone, Debug)]
pub enum Mlp {
    Plain { fc1: Linear, fc2: Linear, act: HiddenAct },
    SwiGlu { weights_in: Linear, weights_out: Linear },
}

impl Mlp {
    fn new(vb: &VarBuilder, cfg: &Config) -> Result<Self> {
        let (d, h) = (cfg.hidden_size, cfg.mlp_hidden());
        Ok(if cfg.use_swiglu_ffn {
            Mlp::SwiGlu {
                weights_in: Linear::new(&vb.pp("weights_in"), d, 2 * h, true)?,
                weights_out: Linear::new(&vb.pp("weights_out"), h, d, true)?,
            }
        } else {
            Mlp::Plain {
                fc1: Linear::new(&vb.pp("fc1"), d, h, true)?,
                fc2: Linear::new(&vb.pp("fc2"), h, d, true)?,
                act: cfg.hidden_act,
            }
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Mlp::Plain { fc1, fc2, act } => fc2.forward(&act.forward(&fc1.forward(x)?)?),
            Mlp::SwiGlu { weights_in, weights_out } => {
                // SwiGLU is SiLU-gated whatever hidden_act says (transformers ignores it too).
                let gu = ops::chunk(&weights_in.forward(x)?, 2, -1)?;
                weights_out.forward(&gu[0].silu()?.mul(&gu[1])?)
            }
        }
    }
}

/// transformers `Dinov2Layer`: x + λ₁·attn(norm1(x)), then + λ₂·mlp(norm2(·)).
#[derive(Clone, Debug)]
pub struct Layer {
    pub norm1: LayerNorm,
    pub attention: Attention,
    pub lambda1: Tensor, // [D]
    pub norm2: LayerNorm,
    pub mlp: Mlp,
    pub lambda2: Tensor, // [D]
}

impl Layer {
    fn new(vb: &VarBuilder, cfg: &Config) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps as f32);
        let ls = Init::Const(cfg.layerscale_value as f32);
        Ok(Layer {
            norm1: LayerNorm::new(&vb.pp("norm1"), d, eps, true)?,
            attention: Attention::new(&vb.pp("attention"), cfg)?,
            lambda1: vb.get("layer_scale1.lambda1", &[d], ls)?,
            norm2: LayerNorm::new(&vb.pp("norm2"), d, eps, true)?,
            mlp: Mlp::new(&vb.pp("mlp"), cfg)?,
            lambda2: vb.get("layer_scale2.lambda1", &[d], ls)?,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, d) = (x.shape()[0], x.shape()[2]);
        let a = self.attention.forward(&self.norm1.forward(x)?)?;
        let h = ops::gated_residual(x, &self.lambda1.broadcast_to(&[b, d])?, &a)?;
        let m = self.mlp.forward(&self.norm2.forward(&h)?)?;
        ops::gated_residual(&h, &self.lambda2.broadcast_to(&[b, d])?, &m)
    }
}

/// The outputs of [`Dinov2Model::forward`] (transformers `BaseModelOutputWithPooling`
/// with `output_hidden_states=True`).
#[derive(Clone, Debug)]
pub struct Dinov2Output {
    /// [B, T, D]: the last layer's output after the final layernorm.
    pub last_hidden_state: Tensor,
    /// [B, D]: the CLS token of `last_hidden_state`.
    pub pooler_output: Tensor,
    /// num_hidden_layers + 1 tensors [B, T, D]: index 0 is the embeddings, index n the
    /// output of layer n (without the final layernorm), as transformers numbers them.
    pub hidden_states: Vec<Tensor>,
}

/// transformers `Dinov2Model` / `Dinov2WithRegistersModel`.
#[derive(Clone, Debug)]
pub struct Dinov2Model {
    pub cfg: Config,
    pub embeddings: Embeddings,
    pub layers: Vec<Layer>,
    pub layernorm: LayerNorm,
}

impl Dinov2Model {
    pub fn new(cfg: Config, vb: &VarBuilder) -> Result<Self> {
        cfg.validate().map_err(Error::Msg)?;
        let eps = cfg.layer_norm_eps as f32;
        Ok(Dinov2Model {
            embeddings: Embeddings::new(&vb.pp("embeddings"), &cfg)?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| Layer::new(&vb.pp(format!("encoder.layer.{i}")), &cfg))
                .collect::<Result<_>>()?,
            layernorm: LayerNorm::new(&vb.pp("layernorm"), cfg.hidden_size, eps, true)?,
            cfg,
        })
    }

    /// `pixel_values` [B, num_channels, H, W] with H, W ≥ patch_size, in the model's
    /// dtype (the cast transformers does here would not be on the tape).
    pub fn forward(&self, pixel_values: &Tensor) -> Result<Dinov2Output> {
        let (c, p) = (self.cfg.num_channels, self.cfg.patch());
        let dtype = self.embeddings.proj_weight.dtype();
        match pixel_values.shape() {
            &[_, ch, h, w] if ch == c && h >= p && w >= p => {}
            s => {
                return Err(Error::Msg(format!(
                    "pixel_values has shape {s:?}, expected [B, {c}, H, W] with H, W ≥ {p}"
                )))
            }
        }
        if pixel_values.dtype() != dtype {
            return Err(Error::Msg(format!(
                "pixel_values is {}, the model computes in {dtype}: convert the input first",
                pixel_values.dtype()
            )));
        }
        let mut x = self.embeddings.forward(pixel_values)?;
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        hidden_states.push(x.clone());
        for layer in &self.layers {
            x = layer.forward(&x)?;
            hidden_states.push(x.clone());
        }
        let last_hidden_state = self.layernorm.forward(&x)?;
        let (b, d) = (x.shape()[0], x.shape()[2]);
        let pooler_output = last_hidden_state.narrow(1, 0, 1)?.reshape(&[b, d])?;
        Ok(Dinov2Output { last_hidden_state, pooler_output, hidden_states })
    }
}

/// Loads a transformers DINOv2 folder (config.json + model.safetensors, possibly
/// sharded), computing in `dtype`; `trainable` = whether the tape tracks the weights
/// (a frozen backbone still passes gradients to `pixel_values`).
pub fn load(dir: impl AsRef<Path>, dtype: DType, trainable: bool) -> Result<(Dinov2Model, ParamStore)> {
    let folder = ModelFolder::open(dir.as_ref())?;
    let cfg = Config::from_json(folder.config()?, &folder.dir().join("config.json"))?;
    hf::load_checked(folder, dtype, trainable, &[], |vb| Dinov2Model::new(cfg.clone(), vb))
}
