//! Text conditioning for training and sampling: anything that turns captions into the
//! teacher's (per-token states, pooled vector) pair.

use crate::error::Result;
use crate::senseflow::nets::Cond;
use crate::tensor::Tensor;

pub trait TextEncoder {
    /// Per-token states [B, L, D] and pooled vectors [B, P] for `captions`.
    fn encode(&self, captions: &[String]) -> Result<Cond>;
    /// Trainable parameters by name (empty when frozen).
    fn named_params(&self) -> Vec<(String, Tensor)>;
}

use crate::data::tokenizer::Tokenizer;
use crate::error::Error;
use crate::nn::{Init, LayerNorm, Linear, VarBuilder};
use crate::ops;

/// The demo's text encoder: the CLIP text-transformer architecture (transformers
/// `CLIPTextModel`: token + learned position embeddings, pre-LN blocks with causal
/// self-attention and a quick-GELU MLP, final LayerNorm, pooled output at the end
/// token) at tiny size, over the captions' word-level vocabulary. Parameter names are
/// transformers' checkpoint keys (`text_model.…`).
pub struct DemoTextEncoder {
    pub tokenizer: Tokenizer,
    token_embedding: Tensor,
    position_embedding: Tensor,
    layers: Vec<ClipLayer>,
    final_layer_norm: LayerNorm,
    heads: usize,
    params: Vec<(String, Tensor)>,
}

struct ClipLayer {
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// Sizes of the demo text encoder.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct DemoTextConfig {
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
}

impl DemoTextEncoder {
    pub fn new(vb: &VarBuilder, tokenizer: Tokenizer, cfg: DemoTextConfig) -> Result<Self> {
        let (d, v, l) = (cfg.hidden_size, tokenizer.vocab_size(), tokenizer.max_len());
        let t = vb.pp("text_model");
        let e = t.pp("embeddings");
        let token_embedding = e.get("token_embedding.weight", &[v, d], Init::Normal(0.02))?;
        let position_embedding = e.get("position_embedding.weight", &[l, d], Init::Normal(0.01))?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|i| {
                let p = t.pp(format!("encoder.layers.{i}"));
                Ok(ClipLayer {
                    ln1: LayerNorm::new(&p.pp("layer_norm1"), d, 1e-5, true)?,
                    q: Linear::new(&p.pp("self_attn.q_proj"), d, d, true)?,
                    k: Linear::new(&p.pp("self_attn.k_proj"), d, d, true)?,
                    v: Linear::new(&p.pp("self_attn.v_proj"), d, d, true)?,
                    o: Linear::new(&p.pp("self_attn.out_proj"), d, d, true)?,
                    ln2: LayerNorm::new(&p.pp("layer_norm2"), d, 1e-5, true)?,
                    fc1: Linear::new(&p.pp("mlp.fc1"), d, cfg.intermediate_size, true)?,
                    fc2: Linear::new(&p.pp("mlp.fc2"), cfg.intermediate_size, d, true)?,
                })
            })
            .collect::<Result<_>>()?;
        let final_layer_norm = LayerNorm::new(&t.pp("final_layer_norm"), d, 1e-5, true)?;
        let params = vb.store().named();
        Ok(DemoTextEncoder {
            tokenizer,
            token_embedding,
            position_embedding,
            layers,
            final_layer_norm,
            heads: cfg.num_attention_heads,
            params,
        })
    }

    /// last_hidden_state [B, L, D] and pooled [B, D] (the state at each row's <eos>).
    pub fn forward(&self, captions: &[String]) -> Result<(Tensor, Tensor)> {
        let enc = self.tokenizer.encode_batch(captions)?;
        let (b, l) = (captions.len(), enc.max_len);
        let d = self.token_embedding.shape()[1];
        let mut h = ops::embedding_u32(&enc.ids, &[b, l], &self.token_embedding)?.add(&self.position_embedding)?;
        let hd = d / self.heads;
        for layer in &self.layers {
            let x = layer.ln1.forward(&h)?;
            let split = |t: Tensor| t.reshape(&[b, l, self.heads, hd])?.transpose(1, 2);
            let (q, k, v) = (split(layer.q.forward(&x)?)?, split(layer.k.forward(&x)?)?, split(layer.v.forward(&x)?)?);
            let a = ops::causal_attention(&q, &k, &v, None, None)?.transpose(1, 2)?.reshape(&[b, l, d])?;
            h = h.add(&layer.o.forward(&a)?)?;
            let x = layer.ln2.forward(&h)?;
            h = h.add(&layer.fc2.forward(&layer.fc1.forward(&x)?.quick_gelu()?)?)?;
        }
        let h = self.final_layer_norm.forward(&h)?;
        let rows = enc
            .eos
            .iter()
            .enumerate()
            .map(|(i, &e)| h.narrow(0, i, 1)?.narrow(1, e, 1)?.reshape(&[1, d]))
            .collect::<Result<Vec<_>>>()?;
        let pooled = ops::concat(&rows.iter().collect::<Vec<_>>(), 0)?;
        Ok((h, pooled))
    }

    pub fn hidden_size(&self) -> usize {
        self.token_embedding.shape()[1]
    }
}

impl TextEncoder for DemoTextEncoder {
    fn encode(&self, captions: &[String]) -> Result<Cond> {
        if captions.is_empty() {
            return Err(Error::Msg("text encoder: no captions".into()));
        }
        let (states, pooled) = self.forward(captions)?;
        Ok(Cond { states, pooled })
    }
    fn named_params(&self) -> Vec<(String, Tensor)> {
        self.params.iter().filter(|(_, t)| t.tracks_grad()).cloned().collect()
    }
}
