//! Named parameter store and the builder modules use to obtain their parameters.

use crate::error::{Error, Result};
use crate::rng::Philox;
use crate::tensor::{DType, Tensor};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// Where parameters come from when a model is built from a checkpoint.
pub trait ParamSource: Send + Sync {
    /// The tensor stored under `key`, or `None` if the checkpoint lacks it.
    fn load(&self, key: &str) -> Result<Option<Tensor>>;
    /// Names the source for error messages (a file or folder path).
    fn describe(&self) -> String;
}

/// How a freshly created parameter is initialized.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Init {
    Zeros,
    Ones,
    Const(f32),
    /// N(0, std²).
    Normal(f32),
    /// U(−bound, bound); `Uniform(1/√fan_in)` is PyTorch's default for Linear/Conv.
    Uniform(f32),
}

/// All parameters of one network (or several), by name.
#[derive(Clone, Default)]
pub struct ParamStore {
    inner: Arc<Mutex<BTreeMap<String, Tensor>>>,
}

impl ParamStore {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn insert(&self, name: &str, t: Tensor) {
        self.inner.lock().expect("param store lock").insert(name.to_string(), t);
    }
    pub fn get(&self, name: &str) -> Option<Tensor> {
        self.inner.lock().expect("param store lock").get(name).cloned()
    }
    /// (name, tensor) pairs in sorted name order.
    pub fn named(&self) -> Vec<(String, Tensor)> {
        self.inner.lock().expect("param store lock").iter().map(|(k, v)| (k.clone(), v.clone())).collect()
    }
    pub fn tensors(&self) -> Vec<Tensor> {
        self.inner.lock().expect("param store lock").values().cloned().collect()
    }
    pub fn len(&self) -> usize {
        self.inner.lock().expect("param store lock").len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn num_elements(&self) -> usize {
        self.inner.lock().expect("param store lock").values().map(|t| t.numel()).sum()
    }
}

/// Hands parameters to modules under a dotted name prefix.
#[derive(Clone)]
pub struct VarBuilder {
    prefix: String,
    store: ParamStore,
    source: Option<Arc<dyn ParamSource>>,
    dtype: DType,
    trainable: bool,
    seed: u64,
    /// Shapes only: parameters are zero-stride views of one element (counting
    /// parameters and listing expected keys of multi-billion-parameter configs).
    meta: bool,
}

impl VarBuilder {
    /// Parameters initialized from `seed` (training from scratch).
    pub fn fresh(store: &ParamStore, dtype: DType, seed: u64) -> Self {
        VarBuilder {
            prefix: String::new(),
            store: store.clone(),
            source: None,
            dtype,
            trainable: true,
            seed,
            meta: false,
        }
    }

    /// Parameters loaded from a checkpoint; every requested key must exist there.
    pub fn from_source(store: &ParamStore, source: Arc<dyn ParamSource>, dtype: DType) -> Self {
        VarBuilder {
            prefix: String::new(),
            store: store.clone(),
            source: Some(source),
            dtype,
            trainable: true,
            seed: 0,
            meta: false,
        }
    }

    /// Records names and shapes without allocating (see `meta`).
    pub fn meta(store: &ParamStore) -> Self {
        VarBuilder {
            prefix: String::new(),
            store: store.clone(),
            source: None,
            dtype: DType::F32,
            trainable: false,
            seed: 0,
            meta: true,
        }
    }

    /// Frozen parameters: the tape never tracks them (teachers, VFM backbones).
    pub fn frozen(mut self) -> Self {
        self.trainable = false;
        self
    }

    /// Builder for the sub-module `name` (`"transformer_blocks.3"`).
    pub fn pp(&self, name: impl std::fmt::Display) -> Self {
        let mut vb = self.clone();
        vb.prefix = self.path(&name.to_string());
        vb
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn store(&self) -> &ParamStore {
        &self.store
    }

    fn path(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    /// The parameter `name` with `shape`: reused if the store already has it, loaded
    /// from the source, or initialized with `init`.
    pub fn get(&self, name: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let key = self.path(name);
        if let Some(t) = self.store.get(&key) {
            if t.shape() != shape {
                return Err(Error::op(
                    "params",
                    format!("'{key}' already exists with shape {:?}, requested {shape:?}", t.shape()),
                ));
            }
            return Ok(t);
        }
        let t = match &self.source {
            _ if self.meta => Tensor::scalar(0.0).broadcast_to(shape)?,
            Some(src) => {
                let t = src.load(&key)?.ok_or_else(|| {
                    Error::Msg(format!("{}: missing tensor '{key}' (expected shape {shape:?})", src.describe()))
                })?;
                if t.shape() != shape {
                    return Err(Error::Msg(format!(
                        "{}: tensor '{key}' has shape {:?}, the config expects {shape:?}",
                        src.describe(),
                        t.shape()
                    )));
                }
                t.to_dtype(self.dtype)?.contiguous_untracked()?
            }
            None => self.init(&key, shape, init)?,
        };
        let t = if self.trainable { t.var() } else { t.detach() };
        self.store.insert(&key, t.clone());
        Ok(t)
    }

    /// A non-trainable buffer stored in checkpoints (e.g. SD3's `pos_embed.pos_embed`):
    /// loaded when the source has it (shape checked), otherwise `None` so the module
    /// computes it. Buffers are not parameters: they never enter the store.
    pub fn buffer(&self, name: &str, shape: &[usize]) -> Result<Option<Tensor>> {
        let key = self.path(name);
        let Some(src) = self.source.as_ref().filter(|_| !self.meta) else { return Ok(None) };
        match src.load(&key)? {
            None => Ok(None),
            Some(t) if t.shape() != shape => Err(Error::Msg(format!(
                "{}: buffer '{key}' has shape {:?}, the config expects {shape:?}",
                src.describe(),
                t.shape()
            ))),
            Some(t) => Ok(Some(t.to_dtype(DType::F32)?.contiguous_untracked()?.detach())),
        }
    }

    fn init(&self, key: &str, shape: &[usize], init: Init) -> Result<Tensor> {
        let n: usize = shape.iter().product();
        // Each parameter draws from its own stream, keyed by its name, so adding a
        // parameter never changes the initial values of the others.
        let mut rng = Philox::at(self.seed ^ fnv1a(key), 0);
        let v = match init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Const(c) => vec![c; n],
            Init::Normal(std) => rng.normal_vec(n).into_iter().map(|z| z * std).collect(),
            Init::Uniform(b) => rng.uniform_vec(n).into_iter().map(|u| (2.0 * u - 1.0) * b).collect(),
        };
        Tensor::from_f32(v, shape, self.dtype)
    }
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3))
}
