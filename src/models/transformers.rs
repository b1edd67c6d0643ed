//! Shared pieces of the models that mirror transformers-library classes (DINOv2, CLIP
//! text): reading `config.json` as transformers writes it, the `hidden_act` activations,
//! and building a model from a transformers folder with its keys checked first.
//!
//! Config strictness: every key must be a field of the model's `Config` or appear in an
//! explicit ignore list (metadata that never changes the eval-mode forward); anything
//! else is an error, so an unsupported option cannot be silently dropped. Keys with a
//! leading underscore (`_name_or_path`, `_commit_hash`, `_attn_implementation_autoset`)
//! are bookkeeping and always dropped.

use crate::error::{Error, Result};
use crate::io::ModelFolder;
use crate::nn::{ParamSource, ParamStore, VarBuilder};
use crate::tensor::{DType, Tensor};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;
use std::sync::Arc;

/// Keys `PreTrainedConfig` writes for any model (transformers 4.x and 5.x), none of
/// which touches the forward of an encoder in eval mode: provenance (`architectures`,
/// `model_type`, `transformers_version`), the checkpoint's storage dtype (`dtype`,
/// `torch_dtype`: we compute in the dtype asked for), classification-head labels,
/// output switches (every output is always returned here), TorchScript/TF/bf16 flags,
/// and `chunk_size_feed_forward` (chunking the MLP over tokens gives the same values).
pub const GENERIC_METADATA: &[&str] = &[
    "architectures",
    "model_type",
    "transformers_version",
    "dtype",
    "torch_dtype",
    "id2label",
    "label2id",
    "problem_type",
    "finetuning_task",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    "torchscript",
    "use_bfloat16",
    "tf_legacy_loss",
    "chunk_size_feed_forward",
];

/// `config["architectures"][0]`, the class transformers instantiates for the folder.
pub fn architecture(config: &serde_json::Value) -> Option<&str> {
    config.get("architectures")?.as_array()?.first()?.as_str()
}

/// `config["model_type"]`.
pub fn model_type(config: &serde_json::Value) -> Option<&str> {
    config.get("model_type")?.as_str()
}

/// Deserializes a transformers `config.json` into `T` (which should use
/// `deny_unknown_fields`) after checking `model_type` (when present) against
/// `model_types` and dropping underscore keys, [`GENERIC_METADATA`] and `ignored`.
pub fn parse_hf_config<T: DeserializeOwned>(
    value: &serde_json::Value,
    model_types: &[&str],
    ignored: &[&str],
    origin: &Path,
) -> Result<T> {
    let obj = value.as_object().ok_or_else(|| Error::format(origin, "config is not a JSON object"))?;
    if let Some(mt) = model_type(value) {
        if !model_types.contains(&mt) {
            return Err(Error::format(origin, format!("model_type '{mt}' is not {}", model_types.join(" or "))));
        }
    }
    let kept: serde_json::Map<String, serde_json::Value> = obj
        .iter()
        .filter(|(k, _)| {
            !k.starts_with('_') && !GENERIC_METADATA.contains(&k.as_str()) && !ignored.contains(&k.as_str())
        })
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    serde_json::from_value(serde_json::Value::Object(kept))
        .map_err(|e| Error::format(origin, format!("unsupported or invalid config: {e}")))
}

/// transformers `ACT2FN[hidden_act]` for the activations these models use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum HiddenAct {
    /// Exact GELU, 0.5·x·(1 + erf(x/√2)).
    #[serde(rename = "gelu")]
    Gelu,
    /// x·σ(1.702·x) (OpenAI CLIP).
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// The tanh approximation of GELU (`gelu_new` is the same formula).
    #[serde(rename = "gelu_pytorch_tanh", alias = "gelu_new")]
    GeluTanh,
    #[serde(rename = "relu")]
    Relu,
    /// x·σ(x) (`swish` is the same function).
    #[serde(rename = "silu", alias = "swish")]
    Silu,
}

impl HiddenAct {
    pub fn forward(self, x: &Tensor) -> Result<Tensor> {
        match self {
            HiddenAct::Gelu => x.gelu(),
            HiddenAct::QuickGelu => x.quick_gelu(),
            HiddenAct::GeluTanh => x.gelu_tanh(),
            HiddenAct::Relu => x.relu(),
            HiddenAct::Silu => x.silu(),
        }
    }
}

/// The (name, shape) pairs a model built by `build` asks its `VarBuilder` for, from a
/// shapes-only build (no allocation, so multi-billion-parameter configs are cheap).
pub fn expected_params<M>(build: impl FnOnce(&VarBuilder) -> Result<M>) -> Result<Vec<(String, Vec<usize>)>> {
    let store = ParamStore::new();
    build(&VarBuilder::meta(&store))?;
    Ok(store.named().into_iter().map(|(k, t)| (k, t.shape().to_vec())).collect())
}

/// Number of parameter elements of the model `build` makes, from a shapes-only build.
pub fn count_params<M>(build: impl FnOnce(&VarBuilder) -> Result<M>) -> Result<usize> {
    let store = ParamStore::new();
    build(&VarBuilder::meta(&store))?;
    Ok(store.num_elements())
}

/// Builds a model from `folder` in `dtype`: first compares the checkpoint's keys with
/// those of a shapes-only build plus `extra_keys` (checkpoint buffers the model does not
/// read), then loads. `trainable` decides whether the tape tracks the parameters; a
/// frozen encoder still passes gradients through to its inputs.
pub fn load_checked<M>(
    folder: ModelFolder,
    dtype: DType,
    trainable: bool,
    extra_keys: &[(String, Vec<usize>)],
    build: impl Fn(&VarBuilder) -> Result<M>,
) -> Result<(M, ParamStore)> {
    let mut keys = expected_params(&build)?;
    keys.extend_from_slice(extra_keys);
    folder.check_keys(&keys)?;
    let store = ParamStore::new();
    let source: Arc<dyn ParamSource> = Arc::new(folder);
    let mut vb = VarBuilder::from_source(&store, source, dtype);
    if !trainable {
        vb = vb.frozen();
    }
    let model = build(&vb)?;
    Ok((model, store))
}
