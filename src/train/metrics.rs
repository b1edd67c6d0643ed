//! metrics.jsonl: one JSON object per logged step, appended and flushed line by line so
//! a killed run keeps everything logged before it died.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

pub struct MetricsLog {
    path: PathBuf,
    file: std::fs::File,
}

impl MetricsLog {
    /// `append`: keep existing lines (resuming); otherwise start a fresh file.
    pub fn open(path: impl AsRef<Path>, append: bool) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        Ok(MetricsLog { path, file })
    }

    pub fn log(&mut self, record: &serde_json::Value) -> Result<()> {
        let mut line = serde_json::to_string(record).map_err(|e| Error::format(&self.path, e.to_string()))?;
        line.push('\n');
        self.file.write_all(line.as_bytes()).map_err(|e| Error::io(&self.path, e))
    }

    /// Drops lines with `step` greater than `step` (after resuming from a checkpoint
    /// older than the last logged line) by rewriting the file atomically.
    pub fn truncate_after(path: impl AsRef<Path>, step: u64) -> Result<()> {
        let path = path.as_ref();
        if !path.exists() {
            return Ok(());
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let kept: String = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v["step"].as_u64())
                    .is_some_and(|s| s <= step)
            })
            .flat_map(|l| [l, "\n"])
            .collect();
        crate::io::atomic_write(path, |w| w.write_all(kept.as_bytes()).map_err(|e| Error::io(path, e)))
    }

    /// Reads back (step, value) pairs of one key, for plots.
    pub fn read_series(path: impl AsRef<Path>, key: &str) -> Result<Vec<(f64, f64)>> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| Some((v["step"].as_f64()?, v[key].as_f64()?)))
            .collect())
    }
}
