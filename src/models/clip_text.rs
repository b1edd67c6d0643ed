//! CLIP text encoders: the equivalent of transformers `CLIPTextModel` and
//! `CLIPTextModelWithProjection` (modeling_clip.py), and the CLIP BPE tokenizer as the
//! SD3/FLUX pipelines call it.
//!
//! Conventions (as transformers):
//! - `input_ids` [B, L] token ids, L ≤ max_position_embeddings; positions 0..L.
//! - Causal self-attention (query i sees tokens ≤ i) through the fused attention op;
//!   no padding mask: the pipelines pass none, and with right padding causality
//!   already keeps the pads out of every real token's state.
//! - `pooler_output` is the final-layer-normed state at the EOS token of each row. With
//!   the legacy `eos_token_id == 2` (OpenAI CLIP-L/G configs) it is the first position of
//!   the row's largest id (CLIP's EOS is the last vocabulary entry); otherwise the first
//!   position holding `eos_token_id`, or position 0 when a row has none (transformers'
//!   argmax over an all-false row).
//! - `hidden_states[n]` is the input of layer n+1 (index 0 = embeddings, N = last layer's
//!   output before the final layer norm). SD3 takes `hidden_states[N−1]` (penultimate),
//!   FLUX the `pooler_output` of CLIP-L.
//! - Checkpoint keys: `text_model.embeddings.token_embedding.weight`, ...,
//!   `text_projection.weight`. Every published `CLIPTextModel` (transformers 4.x) has
//!   the `text_model.` prefix; transformers 5 saves `CLIPTextModel` without it and
//!   accepts both, and so do we ([`KeyLayout`]). An old checkpoint's
//!   `embeddings.position_ids` buffer is accepted and ignored (it is always 0..P).
//! - Eval mode: attention/hidden dropout rates are accepted and not applied.

use super::transformers::{self as hf, HiddenAct};
use crate::error::{Error, Result};
use crate::io::ModelFolder;
use crate::nn::{Init, LayerNorm, Linear, ParamStore, VarBuilder};
use crate::ops;
use crate::tensor::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// transformers `CLIPTextConfig` (defaults as there).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// From `architectures[0]` (or the checkpoint's keys), not a key of its own.
    #[serde(skip)]
    pub with_projection: bool,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    /// Width of `text_embeds` (WithProjection only).
    pub projection_dim: Option<usize>,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub max_position_embeddings: usize,
    pub hidden_act: HiddenAct,
    pub layer_norm_eps: f64,
    /// Decides the pooling rule (module doc); a list of ids is not supported.
    pub eos_token_id: Option<i64>,
    /// Training-mode only (module doc); `dropout` is the transformers 4.x key.
    pub attention_dropout: f64,
    pub dropout: f64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            with_projection: false,
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            projection_dim: Some(512),
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: HiddenAct::QuickGelu,
            layer_norm_eps: 1e-5,
            eos_token_id: Some(49407),
            attention_dropout: 0.0,
            dropout: 0.0,
        }
    }
}

/// Config keys that do not change the text encoder's forward, besides
/// [`hf::GENERIC_METADATA`]: the pad/bos ids (the tokenizer's business) and the
/// weight-init scales.
const IGNORED_KEYS: &[&str] = &["pad_token_id", "bos_token_id", "initializer_range", "initializer_factor"];

impl Config {
    pub const MODEL_TYPE: &'static str = "clip_text_model";
    pub const CLASSES: [&'static str; 2] = ["CLIPTextModel", "CLIPTextModelWithProjection"];

    /// openai/clip-vit-large-patch14's text tower as SD3 (`text_encoder`) and FLUX
    /// (`text_encoder`) ship it: `with_projection` for SD3's CLIPTextModelWithProjection.
    pub fn clip_l(with_projection: bool) -> Self {
        Config {
            with_projection,
            hidden_size: 768,
            intermediate_size: 3072,
            projection_dim: Some(768),
            num_attention_heads: 12,
            eos_token_id: Some(2),
            ..Default::default()
        }
    }

    /// laion/CLIP-ViT-bigG-14-laion2B-39B-b160k's text tower, SD3's `text_encoder_2`.
    pub fn clip_g() -> Self {
        Config {
            with_projection: true,
            hidden_size: 1280,
            intermediate_size: 5120,
            projection_dim: Some(1280),
            num_hidden_layers: 32,
            num_attention_heads: 20,
            hidden_act: HiddenAct::Gelu,
            eos_token_id: Some(2),
            ..Default::default()
        }
    }

    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "clip-l" => Ok(Self::clip_l(false)),
            "clip-l-projection" => Ok(Self::clip_l(true)),
            "clip-g-projection" => Ok(Self::clip_g()),
            _ => Err(Error::Msg(format!(
                "unknown CLIP text preset '{name}' (known: clip-l, clip-l-projection, clip-g-projection)"
            ))),
        }
    }

    /// Parses a transformers config.json. The class comes from `architectures[0]`;
    /// without it, `with_projection` stays false (see [`load`] for folders).
    pub fn from_json(value: &serde_json::Value, origin: &Path) -> Result<Self> {
        let with_projection = match hf::architecture(value) {
            None | Some("CLIPTextModel") => false,
            Some("CLIPTextModelWithProjection") => true,
            Some(other) => {
                return Err(Error::format(
                    origin,
                    format!("architectures[0] '{other}' is not CLIPTextModel or CLIPTextModelWithProjection"),
                ))
            }
        };
        if hf::model_type(value).is_none() && hf::architecture(value).is_none() {
            return Err(Error::format(origin, "config has neither model_type nor architectures"));
        }
        let mut cfg: Config = hf::parse_hf_config(value, &[Self::MODEL_TYPE], IGNORED_KEYS, origin)?;
        cfg.with_projection = with_projection;
        cfg.validate().map_err(|m| Error::format(origin, m))?;
        Ok(cfg)
    }

    pub fn class_name(&self) -> &'static str {
        Self::CLASSES[self.with_projection as usize]
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Trainable parameter count (what transformers' `num_parameters()` reports).
    pub fn num_parameters(&self) -> Result<usize> {
        hf::count_params(|vb| ClipTextModel::new(self.clone(), vb, KeyLayout::Prefixed))
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.num_attention_heads == 0 || self.hidden_size % self.num_attention_heads != 0 {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.eos_token_id.is_none() {
            return Err("eos_token_id is null: the pooled output needs it".into());
        }
        if self.with_projection && self.projection_dim.is_none() {
            return Err("CLIPTextModelWithProjection needs projection_dim".into());
        }
        if self.vocab_size == 0 || self.max_position_embeddings == 0 {
            return Err("vocab_size and max_position_embeddings must be positive".into());
        }
        Ok(())
    }
}

/// Where a checkpoint keeps the text transformer's weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyLayout {
    /// `text_model.embeddings...`: every published checkpoint, and always the
    /// WithProjection class.
    Prefixed,
    /// `embeddings...`: `CLIPTextModel` saved by transformers 5.
    Bare,
}

/// transformers `CLIPAttention` with the causal mask of the text tower.
#[derive(Clone, Debug)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub out_proj: Linear,
    heads: usize,
    head_dim: usize,
}

impl Attention {
    fn new(vb: &VarBuilder, cfg: &Config) -> Result<Self> {
        let d = cfg.hidden_size;
        Ok(Attention {
            q_proj: Linear::new(&vb.pp("q_proj"), d, d, true)?,
            k_proj: Linear::new(&vb.pp("k_proj"), d, d, true)?,
            v_proj: Linear::new(&vb.pp("v_proj"), d, d, true)?,
            out_proj: Linear::new(&vb.pp("out_proj"), d, d, true)?,
            heads: cfg.num_attention_heads,
            head_dim: cfg.head_dim(),
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, n) = (x.shape()[0], x.shape()[1]);
        let split = |t: Tensor| t.reshape(&[b, n, self.heads, self.head_dim])?.transpose(1, 2);
        let q = split(self.q_proj.forward(x)?)?;
        let k = split(self.k_proj.forward(x)?)?;
        let v = split(self.v_proj.forward(x)?)?;
        // scale = head_dim^-½, the op's default.
        let o = ops::causal_attention(&q, &k, &v, None, None)?;
        self.out_proj.forward(&o.transpose(1, 2)?.reshape(&[b, n, self.heads * self.head_dim])?)
    }
}

/// transformers `CLIPEncoderLayer`: x + attn(ln1(x)), then + mlp(ln2(·)).
#[derive(Clone, Debug)]
pub struct EncoderLayer {
    pub layer_norm1: LayerNorm,
    pub self_attn: Attention,
    pub layer_norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    act: HiddenAct,
}

impl EncoderLayer {
    fn new(vb: &VarBuilder, cfg: &Config) -> Result<Self> {
        let (d, eps) = (cfg.hidden_size, cfg.layer_norm_eps as f32);
        Ok(EncoderLayer {
            layer_norm1: LayerNorm::new(&vb.pp("layer_norm1"), d, eps, true)?,
            self_attn: Attention::new(&vb.pp("self_attn"), cfg)?,
            layer_norm2: LayerNorm::new(&vb.pp("layer_norm2"), d, eps, true)?,
            fc1: Linear::new(&vb.pp("mlp.fc1"), d, cfg.intermediate_size, true)?,
            fc2: Linear::new(&vb.pp("mlp.fc2"), cfg.intermediate_size, d, true)?,
            act: cfg.hidden_act,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let h = x.add(&self.self_attn.forward(&self.layer_norm1.forward(x)?)?)?;
        let m = self.fc2.forward(&self.act.forward(&self.fc1.forward(&self.layer_norm2.forward(&h)?)?)?)?;
        h.add(&m)
    }
}

/// The outputs of [`ClipTextModel::forward`] (transformers `CLIPTextModelOutput` /
/// `BaseModelOutputWithPooling` with `output_hidden_states=True`).
#[derive(Clone, Debug)]
pub struct ClipTextOutput {
    /// [B, L, D] after the final layer norm.
    pub last_hidden_state: Tensor,
    /// [B, D]: `last_hidden_state` at each row's EOS token (module doc).
    pub pooler_output: Tensor,
    /// num_hidden_layers + 1 tensors [B, L, D]: 0 = embeddings, n = output of layer n.
    pub hidden_states: Vec<Tensor>,
    /// [B, projection_dim] = text_projection(pooler_output): WithProjection only.
    pub text_embeds: Option<Tensor>,
}

/// transformers `CLIPTextModel`, or `CLIPTextModelWithProjection` when
/// `cfg.with_projection`.
#[derive(Clone, Debug)]
pub struct ClipTextModel {
    pub cfg: Config,
    pub token_embedding: Tensor,    // [V, D]
    pub position_embedding: Tensor, // [P, D]
    pub layers: Vec<EncoderLayer>,
    pub final_layer_norm: LayerNorm,
    pub text_projection: Option<Linear>,
}

impl ClipTextModel {
    /// `vb` is the checkpoint root; `layout` says where the text tower's keys live.
    pub fn new(cfg: Config, vb: &VarBuilder, layout: KeyLayout) -> Result<Self> {
        cfg.validate().map_err(Error::Msg)?;
        let t = match layout {
            KeyLayout::Prefixed => vb.pp("text_model"),
            KeyLayout::Bare if cfg.with_projection => {
                return Err(Error::Msg("CLIPTextModelWithProjection keeps its text tower under text_model.".into()))
            }
            KeyLayout::Bare => vb.clone(),
        };
        let d = cfg.hidden_size;
        Ok(ClipTextModel {
            token_embedding: t.get("embeddings.token_embedding.weight", &[cfg.vocab_size, d], Init::Normal(0.02))?,
            position_embedding: t.get(
                "embeddings.position_embedding.weight",
                &[cfg.max_position_embeddings, d],
                Init::Normal(0.01),
            )?,
            layers: (0..cfg.num_hidden_layers)
                .map(|i| EncoderLayer::new(&t.pp(format!("encoder.layers.{i}")), &cfg))
                .collect::<Result<_>>()?,
            final_layer_norm: LayerNorm::new(&t.pp("final_layer_norm"), d, cfg.layer_norm_eps as f32, true)?,
            text_projection: match (cfg.with_projection, cfg.projection_dim) {
                (true, Some(p)) => Some(Linear::new(&vb.pp("text_projection"), d, p, false)?),
                _ => None,
            },
            cfg,
        })
    }

    /// `input_ids`: B·L ids, row-major [B, L] (`shape`).
    pub fn forward(&self, input_ids: &[i64], shape: [usize; 2]) -> Result<ClipTextOutput> {
        let [b, l] = shape;
        let (v, p) = (self.cfg.vocab_size, self.cfg.max_position_embeddings);
        if b * l != input_ids.len() || l == 0 {
            return Err(Error::Msg(format!(
                "input_ids: {} ids do not make a non-empty [B, L] = {shape:?}",
                input_ids.len()
            )));
        }
        if l > p {
            return Err(Error::Msg(format!("input_ids has {l} tokens per row, more than max_position_embeddings {p}")));
        }
        let ids = input_ids
            .iter()
            .enumerate()
            .map(|(i, &id)| {
                u32::try_from(id).ok().filter(|&u| (u as usize) < v).ok_or_else(|| {
                    Error::Msg(format!("input_ids[{}, {}] = {id} is outside the vocabulary 0..{v}", i / l, i % l))
                })
            })
            .collect::<Result<Vec<u32>>>()?;
        let d = self.cfg.hidden_size;
        let tokens = ops::embedding_u32(&ids, &[b, l], &self.token_embedding)?;
        let pos = self.position_embedding.narrow(0, 0, l)?.reshape(&[1, l, d])?;
        let mut x = tokens.add(&pos)?;
        let mut hidden_states = Vec::with_capacity(self.layers.len() + 1);
        hidden_states.push(x.clone());
        for layer in &self.layers {
            x = layer.forward(&x)?;
            hidden_states.push(x.clone());
        }
        let last_hidden_state = self.final_layer_norm.forward(&x)?;
        let rows = self
            .eos_positions(input_ids, l)
            .into_iter()
            .enumerate()
            .map(|(bi, pos)| last_hidden_state.narrow(0, bi, 1)?.narrow(1, pos, 1))
            .collect::<Result<Vec<_>>>()?;
        let pooler_output = ops::concat(&rows.iter().collect::<Vec<_>>(), 0)?.reshape(&[b, d])?;
        let text_embeds = match &self.text_projection {
            Some(proj) => Some(proj.forward(&pooler_output)?),
            None => None,
        };
        Ok(ClipTextOutput { last_hidden_state, pooler_output, hidden_states, text_embeds })
    }

    /// The pooled position of each row (module doc).
    fn eos_positions(&self, ids: &[i64], l: usize) -> Vec<usize> {
        let eos = self.cfg.eos_token_id.expect("validated");
        ids.chunks_exact(l)
            .map(|row| {
                if eos == 2 {
                    // torch argmax: the first maximal entry (ids cast to int32 first,
                    // exact for any vocabulary id).
                    let max = row.iter().copied().max().unwrap_or(0);
                    row.iter().position(|&x| x == max).unwrap_or(0)
                } else {
                    row.iter().position(|&x| x == eos).unwrap_or(0)
                }
            })
            .collect()
    }
}

/// The checkpoint key of the old `position_ids` buffer.
fn position_ids_key(layout: KeyLayout) -> &'static str {
    match layout {
        KeyLayout::Prefixed => "text_model.embeddings.position_ids",
        KeyLayout::Bare => "embeddings.position_ids",
    }
}

/// Loads a transformers CLIP text-encoder folder (config.json + model.safetensors,
/// possibly sharded), computing in `dtype`, frozen unless `trainable`. The key layout
/// is read off the checkpoint; without `architectures` in the config, a
/// `text_projection.weight` tensor makes it a CLIPTextModelWithProjection.
pub fn load(dir: impl AsRef<Path>, dtype: DType, trainable: bool) -> Result<(ClipTextModel, ParamStore)> {
    let folder = ModelFolder::open(dir.as_ref())?;
    let config = folder.config()?;
    let mut cfg = Config::from_json(config, &folder.dir().join("config.json"))?;
    if hf::architecture(config).is_none() && folder.contains("text_projection.weight") {
        cfg.with_projection = true;
        cfg.validate().map_err(|m| Error::format(folder.dir(), m))?;
    }
    let layout = if folder.contains("text_model.embeddings.token_embedding.weight") {
        KeyLayout::Prefixed
    } else {
        KeyLayout::Bare
    };
    let pos_ids = position_ids_key(layout);
    let extra: Vec<(String, Vec<usize>)> =
        folder.meta(pos_ids).map(|m| (pos_ids.to_string(), m.shape.clone())).into_iter().collect();
    hf::load_checked(folder, dtype, trainable, &extra, |vb| ClipTextModel::new(cfg.clone(), vb, layout))
}

/// The CLIP BPE tokenizer of a checkpoint folder (HF `tokenizers`), configured as the
/// SD3/FLUX pipelines call it: `tokenizer(texts, padding="max_length",
/// max_length=n, truncation=True)` — BOS, the text's tokens truncated to n − 2, EOS,
/// then the pad token up to n.
///
/// Loading: `tokenizer.json` when the folder has one (its pipeline as stored;
/// transformers 5 rebuilds CLIPTokenizer's standard pipeline around the file's vocabulary
/// and merges, which is the same for CLIP tokenizer.json files); otherwise `vocab.json` +
/// `merges.txt` (the SD3 tokenizer folders) assembled exactly as transformers'
/// `CLIPTokenizer` does: NFC → collapse whitespace → lowercase; split on CLIP's regex,
/// then byte-level (no prefix space, GPT-2 regex); BPE with `</w>` word ends and the
/// unk token; BOS … EOS around each text. The special tokens come from
/// `tokenizer_config.json`, and, in transformers' legacy case (no
/// `added_tokens_decoder` there), `special_tokens_map.json` overrides them; the
/// defaults are CLIPTokenizer's (`<|startoftext|>`, `<|endoftext|>` for eos/unk/pad).
/// The pad token differs between checkpoints: CLIP-L pads with `<|endoftext|>`, SD3's
/// CLIP-G tokenizer with `!`.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    pad_token: String,
    pad_id: u32,
    model_max_length: Option<usize>,
}

/// The special tokens of a tokenizer folder.
struct SpecialTokens {
    bos: String,
    eos: String,
    unk: String,
    pad: String,
    model_max_length: Option<usize>,
}

impl SpecialTokens {
    fn read(dir: &Path) -> Result<Self> {
        let read_json = |name: &str| -> Result<Option<serde_json::Value>> {
            let path = dir.join(name);
            if !path.is_file() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&path).map_err(|e| Error::format(&path, e.to_string()))?;
            serde_json::from_str(&text).map(Some).map_err(|e| Error::format(&path, e.to_string()))
        };
        let config = read_json("tokenizer_config.json")?.unwrap_or(serde_json::Value::Null);
        let map = match config.get("added_tokens_decoder") {
            None => read_json("special_tokens_map.json")?,
            Some(_) => None,
        };
        // A token is a string or an AddedToken object {"content": ...}.
        let token = |key: &str, default: &str| -> String {
            let pick = |v: Option<&serde_json::Value>| -> Option<String> {
                let v = v?;
                v.as_str().or_else(|| v.get("content")?.as_str()).map(str::to_string)
            };
            pick(map.as_ref().and_then(|m| m.get(key)))
                .or_else(|| pick(config.get(key)))
                .unwrap_or_else(|| default.to_string())
        };
        // transformers writes a huge sentinel (1e30) when a tokenizer has no limit.
        let model_max_length = config
            .get("model_max_length")
            .and_then(|v| v.as_f64())
            .filter(|n| (1.0..1e9).contains(n))
            .map(|n| n as usize);
        Ok(SpecialTokens {
            bos: token("bos_token", "<|startoftext|>"),
            eos: token("eos_token", "<|endoftext|>"),
            unk: token("unk_token", "<|endoftext|>"),
            pad: token("pad_token", "<|endoftext|>"),
            model_max_length,
        })
    }
}

/// transformers `CLIPTokenizer(vocab, merges)`'s pipeline (see [`Tokenizer`]).
fn clip_bpe(vocab: &Path, merges: &Path, special: &SpecialTokens) -> tokenizers::Result<tokenizers::Tokenizer> {
    use tokenizers::models::bpe::BPE;
    use tokenizers::normalizers::{replace::ReplacePattern, Lowercase, Replace, Sequence, NFC};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
    use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
    use tokenizers::processors::roberta::RobertaProcessing;
    use tokenizers::{AddedToken, SplitDelimiterBehavior};

    let to_str = |p: &Path| p.to_string_lossy().into_owned();
    let bpe = BPE::from_file(&to_str(vocab), &to_str(merges))
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix("</w>".into())
        .unk_token(special.unk.clone())
        .fuse_unk(false)
        .build()?;
    let mut tk = tokenizers::Tokenizer::new(bpe);
    tk.with_normalizer(Some(Sequence::new(vec![
        NFC.into(),
        Replace::new(ReplacePattern::Regex(r"\s+".into()), " ")?.into(),
        Lowercase.into(),
    ])))?;
    let clip_split = r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";
    tk.with_pre_tokenizer(Some(PreSequence::new(vec![
        Split::new(SplitPattern::Regex(clip_split.into()), SplitDelimiterBehavior::Removed, true)?.into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tk.with_decoder(Some(ByteLevel::default()));
    // transformers registers its named special tokens as added (special) tokens.
    let specials = [&special.bos, &special.eos, &special.unk, &special.pad];
    tk.add_special_tokens(specials.iter().map(|s| AddedToken::from(s.as_str(), true)))?;
    let id = |t: &str| tk.token_to_id(t).ok_or_else(|| format!("special token '{t}' is not in the vocabulary"));
    let (bos_id, eos_id) = (id(&special.bos)?, id(&special.eos)?);
    tk.with_post_processor(Some(
        RobertaProcessing::new((special.eos.clone(), eos_id), (special.bos.clone(), bos_id))
            .trim_offsets(false)
            .add_prefix_space(false),
    ));
    Ok(tk)
}

impl Tokenizer {
    /// Loads the tokenizer of a checkpoint folder (see the type doc).
    pub fn from_folder(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let special = SpecialTokens::read(dir)?;
        let json = dir.join("tokenizer.json");
        let (vocab, merges) = (dir.join("vocab.json"), dir.join("merges.txt"));
        let inner = if json.is_file() {
            tokenizers::Tokenizer::from_file(&json).map_err(|e| Error::format(&json, e.to_string()))?
        } else if vocab.is_file() && merges.is_file() {
            clip_bpe(&vocab, &merges, &special).map_err(|e| Error::format(dir, e.to_string()))?
        } else {
            return Err(Error::format(dir, "no tokenizer.json, nor vocab.json + merges.txt"));
        };
        let pad_id = inner
            .token_to_id(&special.pad)
            .ok_or_else(|| Error::format(dir, format!("pad token '{}' is not in the vocabulary", special.pad)))?;
        Ok(Tokenizer { inner, pad_token: special.pad, pad_id, model_max_length: special.model_max_length })
    }

    /// `model_max_length` from tokenizer_config.json (77 for CLIP), the length the
    /// pipelines pad and truncate to.
    pub fn model_max_length(&self) -> Option<usize> {
        self.model_max_length
    }

    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// `input_ids` [texts.len(), max_length] row-major (see the type doc).
    pub fn encode(&self, texts: &[&str], max_length: usize) -> Result<Vec<i64>> {
        use tokenizers::{PaddingDirection, PaddingParams, PaddingStrategy, TruncationParams};
        if max_length < 2 {
            return Err(Error::Msg(format!("max_length {max_length} leaves no room for BOS and EOS")));
        }
        let mut tk = self.inner.clone();
        tk.with_truncation(Some(TruncationParams { max_length, ..Default::default() }))
            .map_err(|e| Error::Msg(format!("tokenizer: {e}")))?;
        tk.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id: self.pad_id,
            pad_type_id: 0,
            pad_token: self.pad_token.clone(),
        }));
        let encodings = tk.encode_batch(texts.to_vec(), true).map_err(|e| Error::Msg(format!("tokenizer: {e}")))?;
        Ok(encodings.iter().flat_map(|e| e.get_ids().iter().map(|&id| id as i64)).collect())
    }
}
