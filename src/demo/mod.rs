//! The built-in demo world: captioned-shapes images, a tiny CLIP-architecture text
//! encoder and a tiny SD3-architecture teacher trained from scratch on them, a tiny
//! DINOv2-architecture backbone for the discriminator, and a separately trained
//! evaluator. Everything runs on a 2-core CPU; the trained weights ship in
//! `assets/demo/` with the commands that remake them (assets/demo/README.md).

pub mod backbone;
pub mod classifier;
pub mod distill;
pub mod eval;
pub mod evaluator;
pub mod teacher;
pub mod text;

use crate::data::shapes::vocabulary;
use crate::data::Tokenizer;
use crate::error::{Error, Result};
use crate::io;
use crate::models::mmdit;
use crate::nn::embeddings::sincos_2d_pos_embed_crop;
use crate::nn::{ParamStore, VarBuilder};
use crate::tensor::{DType, Tensor};
use std::path::{Path, PathBuf};
use text::{DemoTextConfig, DemoTextEncoder};

/// Image side of the demo world.
pub const IMAGE_SIZE: usize = 32;
/// Tokens per caption (<bos>, up to 8 words, <eos>, padding).
pub const TEXT_LEN: usize = 12;

pub fn text_config() -> DemoTextConfig {
    DemoTextConfig { hidden_size: 64, intermediate_size: 128, num_hidden_layers: 2, num_attention_heads: 4 }
}

/// The demo teacher: SD3Transformer2DModel in pixel space (3 channels, 32×32, patch 4
/// → 64 image tokens), 4 joint blocks of width 128 with RMS qk-norm.
pub fn teacher_config() -> mmdit::Config {
    let t = text_config();
    mmdit::Config {
        sample_size: IMAGE_SIZE,
        patch_size: 4,
        in_channels: 3,
        num_layers: 4,
        attention_head_dim: 32,
        num_attention_heads: 4,
        joint_attention_dim: t.hidden_size,
        caption_projection_dim: 128,
        pooled_projection_dim: t.hidden_size,
        out_channels: Some(3),
        pos_embed_max_size: Some(IMAGE_SIZE / 4),
        dual_attention_layers: vec![],
        qk_norm: Some("rms_norm".into()),
    }
}

pub fn tokenizer() -> Result<Tokenizer> {
    Tokenizer::new(vocabulary(), TEXT_LEN)
}

/// Where the shipped demo weights live (overridable with SENSEFLOW_ASSETS).
pub fn assets_dir() -> PathBuf {
    std::env::var_os("SENSEFLOW_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/assets/demo")))
}

/// A folder's tensors as a parameter source (for models that are not diffusers classes).
pub struct TensorFile(pub io::SafeTensorsFile);

impl crate::nn::ParamSource for TensorFile {
    fn load(&self, key: &str) -> Result<Option<Tensor>> {
        if self.0.contains(key) {
            Ok(Some(self.0.get(key)?))
        } else {
            Ok(None)
        }
    }
    fn describe(&self) -> String {
        self.0.path().display().to_string()
    }
}

/// Writes named tensors as `dir/file` (stored in `dtype`) plus `dir/config.json`.
pub fn save_folder(
    dir: &Path,
    file: &str,
    params: &[(String, Tensor)],
    config: &serde_json::Value,
    dtype: DType,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let cast: Vec<(String, Tensor)> =
        params.iter().map(|(n, t)| Ok((n.clone(), t.to_dtype(dtype)?.contiguous()?))).collect::<Result<_>>()?;
    let refs: Vec<(String, &Tensor)> = cast.iter().map(|(n, t)| (n.clone(), t)).collect();
    io::save(dir.join(file), &refs, None)?;
    io::atomic_write_json(dir.join("config.json"), config)
}

/// Exports teacher parameters as a diffusers `SD3Transformer2DModel` folder (with the
/// `pos_embed.pos_embed` buffer diffusers stores), loadable by `load_transformer` and
/// by diffusers itself.
pub fn export_teacher(dir: &Path, cfg: &mmdit::Config, params: &[(String, Tensor)], dtype: DType) -> Result<()> {
    let m = cfg.pos_embed_max_size.expect("demo config sets it");
    let table =
        sincos_2d_pos_embed_crop(cfg.inner_dim(), m, (cfg.sample_size / cfg.patch_size) as f64, 1.0, 0, 0, m, m);
    let mut all = params.to_vec();
    all.push((mmdit::POS_EMBED_BUFFER.to_string(), Tensor::from_vec(table, &[1, m * m, cfg.inner_dim()])?));
    let mut config = serde_json::to_value(cfg).expect("config serializes");
    config["_class_name"] = mmdit::Config::CLASS.into();
    config["_diffusers_version"] = "0.42.1".into();
    save_folder(dir, "diffusion_pytorch_model.safetensors", &all, &config, dtype)
}

/// Loads the demo text encoder from `dir` (model.safetensors + vocab.json).
pub fn load_text_encoder(dir: &Path, trainable: bool) -> Result<DemoTextEncoder> {
    let tok = Tokenizer::load(dir.join("vocab.json"))?;
    let file = io::load(dir.join("model.safetensors"))?;
    let store = ParamStore::new();
    let mut vb = VarBuilder::from_source(&store, std::sync::Arc::new(TensorFile(file)), DType::F32);
    if !trainable {
        vb = vb.frozen();
    }
    DemoTextEncoder::new(&vb, tok, text_config())
}

pub fn save_text_encoder(dir: &Path, enc: &DemoTextEncoder, params: &[(String, Tensor)]) -> Result<()> {
    let config = serde_json::json!({
        "architectures": ["CLIPTextModel"],
        "note": "senseflow demo text encoder: CLIP text architecture over a word-level vocabulary (vocab.json)",
        "demo": text_config(),
        "max_position_embeddings": TEXT_LEN,
        "hidden_act": "quick_gelu",
        "layer_norm_eps": 1e-5,
    });
    save_folder(dir, "model.safetensors", params, &config, DType::F32)?;
    enc.tokenizer.save(dir.join("vocab.json"))
}

/// The demo world's frozen networks.
pub struct DemoWorld {
    pub teacher: crate::models::Transformer,
    pub text: DemoTextEncoder,
    pub evaluator: evaluator::Evaluator,
}

/// Loads the evaluator folder (config.json + model.safetensors).
pub fn load_evaluator(dir: &Path) -> Result<evaluator::Evaluator> {
    let file = io::load(dir.join("model.safetensors"))?;
    let store = ParamStore::new();
    let vb = VarBuilder::from_source(&store, std::sync::Arc::new(TensorFile(file)), DType::F32).frozen();
    evaluator::Evaluator::new(&vb, IMAGE_SIZE)
}

impl DemoWorld {
    /// Loads `assets/demo` (or `dir`): teacher/, text_encoder/, evaluator/.
    pub fn load(dir: &Path) -> Result<Self> {
        let (teacher, _) = crate::models::load_transformer(dir.join("teacher"), DType::F32, false)?;
        Ok(DemoWorld {
            teacher,
            text: load_text_encoder(&dir.join("text_encoder"), false)?,
            evaluator: load_evaluator(&dir.join("evaluator"))?,
        })
    }
}

/// The σ list of a few-step generator: its anchors (shifted like the teacher) then 0.
pub fn anchor_sigmas(anchors: &[usize], shift: f64) -> Result<Vec<f32>> {
    Ok(crate::senseflow::Anchors::new(anchors.to_vec(), crate::diffusion::Shift::Sd3(shift))?.schedule())
}
