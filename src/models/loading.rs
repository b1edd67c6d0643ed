//! Building models from diffusers folders: the expected keys come from a shapes-only
//! (meta) build of the model, so a checkpoint is compared with the config before any
//! weight is read, and every missing, unexpected or mis-shaped key is reported at once.

use super::{flux, mmdit};
use crate::error::{Error, Result};
use crate::io::ModelFolder;
use crate::nn::{ParamSource, ParamStore, VarBuilder};
use crate::tensor::{DType, Tensor};
use std::path::Path;
use std::sync::Arc;

impl ParamSource for ModelFolder {
    fn load(&self, key: &str) -> Result<Option<Tensor>> {
        if self.contains(key) {
            Ok(Some(self.get(key)?))
        } else {
            Ok(None)
        }
    }
    fn describe(&self) -> String {
        self.dir().display().to_string()
    }
}

/// A diffusion transformer of either supported class.
pub enum Transformer {
    Mmdit(mmdit::SD3Transformer2DModel),
    Flux(flux::FluxTransformer2DModel),
}

impl Transformer {
    pub fn class_name(&self) -> &'static str {
        match self {
            Transformer::Mmdit(_) => mmdit::Config::CLASS,
            Transformer::Flux(_) => flux::Config::CLASS,
        }
    }
}

/// Parsed config of a diffusion transformer folder.
#[derive(Clone, Debug)]
pub enum TransformerConfig {
    Mmdit(mmdit::Config),
    Flux(flux::Config),
}

impl TransformerConfig {
    pub fn from_folder(folder: &ModelFolder) -> Result<Self> {
        let cfg_path = folder.dir().join("config.json");
        let value = folder.config()?;
        match folder.class_name() {
            Some(mmdit::Config::CLASS) => Ok(Self::Mmdit(mmdit::Config::from_json(value, &cfg_path)?)),
            Some(flux::Config::CLASS) => Ok(Self::Flux(flux::Config::from_json(value, &cfg_path)?)),
            Some(other) => Err(Error::format(
                &cfg_path,
                format!(
                    "_class_name '{other}' is not supported here (expected {} or {})",
                    mmdit::Config::CLASS,
                    flux::Config::CLASS
                ),
            )),
            None => Err(Error::format(&cfg_path, "config.json has no _class_name; cannot tell which model this is")),
        }
    }

    /// Parameter names and shapes, plus checkpoint buffers, without allocating.
    pub fn expected_keys(&self) -> Result<Vec<(String, Vec<usize>)>> {
        let store = ParamStore::new();
        let vb = VarBuilder::meta(&store);
        let mut keys: Vec<(String, Vec<usize>)>;
        match self {
            TransformerConfig::Mmdit(c) => {
                mmdit::SD3Transformer2DModel::new(c.clone(), &vb)?;
                keys = store.named().into_iter().map(|(k, t)| (k, t.shape().to_vec())).collect();
                let m = c.pos_embed_max_size.unwrap_or(0);
                keys.push((mmdit::POS_EMBED_BUFFER.to_string(), vec![1, m * m, c.inner_dim()]));
            }
            TransformerConfig::Flux(c) => {
                flux::FluxTransformer2DModel::new(c.clone(), &vb)?;
                keys = store.named().into_iter().map(|(k, t)| (k, t.shape().to_vec())).collect();
            }
        }
        Ok(keys)
    }

    /// Number of trainable parameters (buffers excluded), from a meta build.
    pub fn num_parameters(&self) -> Result<usize> {
        let store = ParamStore::new();
        let vb = VarBuilder::meta(&store);
        match self {
            TransformerConfig::Mmdit(c) => drop(mmdit::SD3Transformer2DModel::new(c.clone(), &vb)?),
            TransformerConfig::Flux(c) => drop(flux::FluxTransformer2DModel::new(c.clone(), &vb)?),
        }
        Ok(store.num_elements())
    }
}

/// Loads a diffusers transformer folder, computing in `dtype`. `trainable` decides
/// whether the tape tracks the parameters (generator, fake score) or not (teacher).
pub fn load_transformer(dir: impl AsRef<Path>, dtype: DType, trainable: bool) -> Result<(Transformer, ParamStore)> {
    let folder = ModelFolder::open(dir.as_ref())?;
    let cfg = TransformerConfig::from_folder(&folder)?;
    folder.check_keys(&cfg.expected_keys()?)?;
    let store = ParamStore::new();
    let source: Arc<dyn ParamSource> = Arc::new(folder);
    let mut vb = VarBuilder::from_source(&store, source, dtype);
    if !trainable {
        vb = vb.frozen();
    }
    let model = match cfg {
        TransformerConfig::Mmdit(c) => Transformer::Mmdit(mmdit::SD3Transformer2DModel::new(c, &vb)?),
        TransformerConfig::Flux(c) => Transformer::Flux(flux::FluxTransformer2DModel::new(c, &vb)?),
    };
    Ok((model, store))
}
