//! Training infrastructure shared by `train-teacher`, the demo's auxiliary networks and
//! `distill`: run folders, metrics, checkpoints, progress.
//!
//! A run lives in `runs/NAME/`: `config.json` (the effective configuration),
//! `metrics.jsonl` (one JSON object per logged step), `checkpoints/step-NNNNNNNN/`
//! (`state.safetensors` + `state.json`) with `checkpoints/latest.json` naming the newest
//! complete one, and images (loss curve, sample grids).
//!
//! Checkpoints are atomic: a step's folder is written under a temporary name, fsynced
//! and renamed, and only then does `latest.json` (itself written atomically) point to
//! it. A run killed at any moment resumes from the last complete checkpoint.

pub mod checkpoint;
pub mod metrics;
pub mod progress;

pub use checkpoint::{Checkpoint, CheckpointDir};
pub use metrics::MetricsLog;
pub use progress::Progress;

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// `runs/NAME/` with its standard sub-paths.
#[derive(Clone, Debug)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    /// Creates (or reopens, for resuming) the run folder.
    pub fn create(root: impl AsRef<Path>) -> Result<Self> {
        let root = root.as_ref().to_path_buf();
        std::fs::create_dir_all(root.join("checkpoints")).map_err(|e| Error::io(&root, e))?;
        Ok(RunDir { root })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub fn checkpoints(&self) -> CheckpointDir {
        CheckpointDir::new(self.root.join("checkpoints"))
    }

    pub fn metrics(&self, append: bool) -> Result<MetricsLog> {
        MetricsLog::open(self.path("metrics.jsonl"), append)
    }

    /// Writes the effective configuration (atomically).
    pub fn save_config<T: serde::Serialize>(&self, cfg: &T) -> Result<()> {
        crate::io::atomic_write_json(self.path("config.json"), cfg)
    }
}
