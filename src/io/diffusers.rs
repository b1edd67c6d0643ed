//! Model folders as diffusers and transformers save them: `config.json` plus weights in
//! one safetensors file or in shards listed by a `*.safetensors.index.json`.
//!
//! Which weights a folder holds, in order of preference:
//! 1. `diffusion_pytorch_model.safetensors` (diffusers) or `model.safetensors` (transformers);
//! 2. a sharded set: `diffusion_pytorch_model.safetensors.index.json`,
//!    `model.safetensors.index.json`, or the folder's only `*.safetensors.index.json`,
//!    whose `weight_map` sends each tensor name to a shard file in the same folder;
//! 3. the folder's only `*.safetensors` file (e.g. a `.fp16.safetensors` variant).
//!
//! Each shard is opened (mapped and validated) once; tensor names are the checkpoint keys
//! exactly as stored, so a model looks its parameters up by their diffusers names.

use super::safetensors::{check_keys, SafeTensorsFile, TensorMeta};
use crate::error::{Error, Result};
use crate::tensor::{DType, Tensor};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const SINGLE_FILES: [&str; 2] = ["diffusion_pytorch_model.safetensors", "model.safetensors"];
const INDEX_FILES: [&str; 2] = ["diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json"];

pub struct ModelFolder {
    dir: PathBuf,
    /// `config.json`, when the folder has one.
    config: Option<serde_json::Value>,
    files: Vec<SafeTensorsFile>,
    /// Tensor name → index into `files`.
    index: BTreeMap<String, usize>,
}

impl ModelFolder {
    /// Reads `config.json` (if present) and opens the folder's weights (see the module doc).
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            let msg = if dir.exists() { "not a directory" } else { "no such directory" };
            return Err(Error::format(dir, msg));
        }
        let config_path = dir.join("config.json");
        let config = if config_path.is_file() { Some(read_json(&config_path)?) } else { None };
        let (files, index) = match find_weights(dir)? {
            Weights::Single(path) => {
                let f = SafeTensorsFile::open(path)?;
                let index = f.names().map(|k| (k.to_string(), 0)).collect();
                (vec![f], index)
            }
            Weights::Sharded(index_path) => open_shards(dir, &index_path)?,
        };
        Ok(ModelFolder { dir: dir.to_path_buf(), config, files, index })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The parsed `config.json`.
    pub fn config(&self) -> Result<&serde_json::Value> {
        self.config.as_ref().ok_or_else(|| Error::format(self.dir.join("config.json"), "not found"))
    }

    /// The model class the config names: diffusers' `_class_name`, or the first of
    /// transformers' `architectures`.
    pub fn class_name(&self) -> Option<&str> {
        let c = self.config.as_ref()?;
        c.get("_class_name").and_then(|v| v.as_str()).or_else(|| c.get("architectures")?.get(0)?.as_str())
    }

    /// The opened weight files (one, or the shards in name order).
    pub fn files(&self) -> &[SafeTensorsFile] {
        &self.files
    }

    /// Tensor names, sorted.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.index.keys().map(|k| k.as_str())
    }

    /// (name, header entry) for every tensor, sorted by name.
    pub fn tensors(&self) -> impl Iterator<Item = (&str, &TensorMeta)> {
        self.index.iter().map(|(k, &f)| (k.as_str(), self.files[f].meta(k).expect("indexed keys exist in their shard")))
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    pub fn contains(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }

    pub fn meta(&self, name: &str) -> Option<&TensorMeta> {
        self.files[*self.index.get(name)?].meta(name)
    }

    fn file(&self, name: &str) -> Result<&SafeTensorsFile> {
        match self.index.get(name) {
            Some(&f) => Ok(&self.files[f]),
            None => Err(Error::MissingKey { path: self.dir.clone(), key: name.to_string() }),
        }
    }

    /// The tensor `name`, zero-copy, in its file dtype.
    pub fn get(&self, name: &str) -> Result<Tensor> {
        self.file(name)?.get(name)
    }

    /// Like [`get`](Self::get), failing with [`Error::KeyShape`] unless the shape is `expected`.
    pub fn get_checked(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        self.file(name)?.get_checked(name, expected)
    }

    /// The tensor converted to `dtype`.
    pub fn get_as(&self, name: &str, dtype: DType) -> Result<Tensor> {
        self.file(name)?.get_as(name, dtype)
    }

    /// Fails unless the folder holds exactly the `expected` (name, shape) pairs; one error
    /// lists all missing keys, unexpected keys and shape mismatches (first 20 of each).
    pub fn check_keys(&self, expected: &[(String, Vec<usize>)]) -> Result<()> {
        check_keys(&self.dir, self.tensors().map(|(k, m)| (k, m.shape.as_slice())), expected)
    }
}

impl std::fmt::Debug for ModelFolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ModelFolder({}, {} tensors in {} files)", self.dir.display(), self.index.len(), self.files.len())
    }
}

enum Weights {
    Single(PathBuf),
    Sharded(PathBuf),
}

fn find_weights(dir: &Path) -> Result<Weights> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    let has = |n: &str| names.iter().any(|m| m == n);
    if let Some(n) = SINGLE_FILES.iter().find(|n| has(n)) {
        return Ok(Weights::Single(dir.join(n)));
    }
    if let Some(n) = INDEX_FILES.iter().find(|n| has(n)) {
        return Ok(Weights::Sharded(dir.join(n)));
    }
    let indexes: Vec<&String> = names.iter().filter(|n| n.ends_with(".safetensors.index.json")).collect();
    match indexes.as_slice() {
        [one] => return Ok(Weights::Sharded(dir.join(one))),
        [] => {}
        many => return Err(Error::format(dir, format!("several weight indexes, cannot choose: {}", join(many)))),
    }
    let files: Vec<&String> = names.iter().filter(|n| n.ends_with(".safetensors")).collect();
    match files.as_slice() {
        [one] => Ok(Weights::Single(dir.join(one))),
        [] => Err(Error::format(
            dir,
            "no weights: expected diffusion_pytorch_model.safetensors, model.safetensors, \
             a *.safetensors.index.json, or a single *.safetensors file",
        )),
        many => Err(Error::format(
            dir,
            format!("{} .safetensors files and no index to choose between them: {}", many.len(), join(many)),
        )),
    }
}

fn join(names: &[&String]) -> String {
    names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_slice(&bytes).map_err(|e| Error::format(path, format!("corrupt JSON: {e}")))
}

/// Opens every shard named in the index's `weight_map` once and checks that each listed
/// tensor is in the shard the index names.
fn open_shards(dir: &Path, index_path: &Path) -> Result<(Vec<SafeTensorsFile>, BTreeMap<String, usize>)> {
    let json = read_json(index_path)?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| Error::format(index_path, "no \"weight_map\" object"))?;
    let mut shard_names: Vec<&str> = Vec::new();
    let mut key_shard: Vec<(&String, &str)> = Vec::with_capacity(map.len());
    for (key, v) in map {
        let shard = v
            .as_str()
            .ok_or_else(|| Error::format(index_path, format!("weight_map entry '{key}' is not a file name")))?;
        // Shards live beside the index; a path elsewhere is a corrupt or hostile index.
        if Path::new(shard).file_name().and_then(|f| f.to_str()) != Some(shard) {
            return Err(Error::format(
                index_path,
                format!("weight_map entry '{key}': '{shard}' is not a file name in this folder"),
            ));
        }
        key_shard.push((key, shard));
        shard_names.push(shard);
    }
    shard_names.sort_unstable();
    shard_names.dedup();
    let files = shard_names.iter().map(|s| SafeTensorsFile::open(dir.join(s))).collect::<Result<Vec<_>>>()?;
    let mut index = BTreeMap::new();
    for (key, shard) in key_shard {
        let f = shard_names.binary_search(&shard).expect("every shard name was collected");
        if !files[f].contains(key) {
            return Err(Error::format(
                index_path,
                format!("weight_map puts '{key}' in {shard}, which has no such tensor"),
            ));
        }
        index.insert(key.clone(), f);
    }
    Ok((files, index))
}
