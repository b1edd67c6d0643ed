//! Atomic, resumable checkpoints: named tensors (weights, optimizer moments, masters,
//! spectral-norm vectors, …) in one safetensors file plus a JSON document (step, RNG
//! offsets, counters, config) in a per-step folder.

use crate::error::{Error, Result};
use crate::io;
use crate::tensor::Tensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// What a checkpoint holds.
pub struct Checkpoint {
    pub step: u64,
    pub tensors: HashMap<String, Tensor>,
    pub meta: serde_json::Value,
}

/// The `checkpoints/` folder of a run.
pub struct CheckpointDir {
    dir: PathBuf,
}

fn step_name(step: u64) -> String {
    format!("step-{step:08}")
}

impl CheckpointDir {
    pub fn new(dir: impl AsRef<Path>) -> Self {
        CheckpointDir { dir: dir.as_ref().to_path_buf() }
    }

    /// Writes step `step` and points `latest.json` at it; keeps the newest `keep`.
    pub fn save(
        &self,
        step: u64,
        tensors: &[(String, &Tensor)],
        meta: &serde_json::Value,
        keep: usize,
    ) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let final_dir = self.dir.join(step_name(step));
        let tmp_dir = self.dir.join(format!("{}.tmp-{}", step_name(step), std::process::id()));
        if tmp_dir.exists() {
            std::fs::remove_dir_all(&tmp_dir).map_err(|e| Error::io(&tmp_dir, e))?;
        }
        std::fs::create_dir_all(&tmp_dir).map_err(|e| Error::io(&tmp_dir, e))?;
        io::save(tmp_dir.join("state.safetensors"), tensors, None)?;
        let doc = serde_json::json!({ "step": step, "meta": meta });
        io::atomic_write_json(tmp_dir.join("state.json"), &doc)?;
        if final_dir.exists() {
            std::fs::remove_dir_all(&final_dir).map_err(|e| Error::io(&final_dir, e))?;
        }
        std::fs::rename(&tmp_dir, &final_dir).map_err(|e| Error::io(&final_dir, e))?;
        sync_dir(&self.dir)?;
        io::atomic_write_json(
            self.dir.join("latest.json"),
            &serde_json::json!({ "step": step, "dir": step_name(step) }),
        )?;
        self.prune(keep)?;
        Ok(final_dir)
    }

    /// The newest complete checkpoint, if any.
    pub fn latest(&self) -> Result<Option<Checkpoint>> {
        let pointer = self.dir.join("latest.json");
        if !pointer.exists() {
            return Ok(None);
        }
        let text = std::fs::read_to_string(&pointer).map_err(|e| Error::io(&pointer, e))?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::format(&pointer, e.to_string()))?;
        let name = v["dir"].as_str().ok_or_else(|| Error::format(&pointer, "no \"dir\" entry"))?;
        self.load(&self.dir.join(name)).map(Some)
    }

    /// Loads one checkpoint folder; tensors are copied out of the file (a later save
    /// may replace it).
    pub fn load(&self, dir: &Path) -> Result<Checkpoint> {
        let json_path = dir.join("state.json");
        let text = std::fs::read_to_string(&json_path).map_err(|e| Error::io(&json_path, e))?;
        let doc: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::format(&json_path, e.to_string()))?;
        let step = doc["step"].as_u64().ok_or_else(|| Error::format(&json_path, "no \"step\""))?;
        let file = io::load(dir.join("state.safetensors"))?;
        let mut tensors = HashMap::new();
        for name in file.names().map(str::to_string).collect::<Vec<_>>() {
            let t = file.get(&name)?;
            let owned = Tensor::from_f32(t.to_vec_f32()?, t.shape(), t.dtype())?;
            tensors.insert(name, owned);
        }
        Ok(Checkpoint { step, tensors, meta: doc["meta"].clone() })
    }

    fn prune(&self, keep: usize) -> Result<()> {
        let mut steps: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map_err(|e| Error::io(&self.dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_dir()
                    && p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.starts_with("step-") && !n.contains(".tmp"))
            })
            .collect();
        steps.sort();
        let excess = steps.len().saturating_sub(keep.max(1));
        for p in &steps[..excess] {
            std::fs::remove_dir_all(p).map_err(|e| Error::io(p, e))?;
        }
        Ok(())
    }
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|f| f.sync_all()).map_err(|e| Error::io(dir, e))
}

impl Checkpoint {
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| Error::Msg(format!("checkpoint step {}: missing tensor '{name}'", self.step)))
    }

    /// Copies every tensor under `prefix` into the same-named parameters (in place).
    pub fn restore_params(&self, prefix: &str, params: &[(String, Tensor)]) -> Result<()> {
        for (name, p) in params {
            let key = format!("{prefix}{name}");
            let t = self.get(&key)?;
            if t.shape() != p.shape() {
                return Err(Error::Msg(format!(
                    "checkpoint step {}: '{key}' has shape {:?}, the model has {:?}",
                    self.step,
                    t.shape(),
                    p.shape()
                )));
            }
            p.assign_f32(&t.to_vec_f32()?)?;
        }
        Ok(())
    }

    /// The tensors under `prefix`, with the prefix removed (optimizer state).
    pub fn with_prefix(&self, prefix: &str) -> HashMap<String, Tensor> {
        self.tensors.iter().filter_map(|(k, v)| k.strip_prefix(prefix).map(|n| (n.to_string(), v.clone()))).collect()
    }
}
