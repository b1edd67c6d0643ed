//! `senseflow inspect PATH`: what a checkpoint holds, read from the headers only (no
//! tensor data is touched, so it is instant even for multi-GB models).

use super::emit;
use senseflow::io::{ModelFolder, SafeTensorsFile, TensorMeta};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::PathBuf;

#[derive(clap::Args)]
pub struct Args {
    /// A .safetensors file, or a folder with config.json and (possibly sharded) weights.
    path: PathBuf,
    /// Only list tensors whose name contains this text.
    #[arg(long, value_name = "SUBSTR")]
    filter: Option<String>,
    /// List at most N tensors.
    #[arg(long, value_name = "N")]
    limit: Option<usize>,
}

pub fn run(a: &Args) -> anyhow::Result<()> {
    let mut out = String::new();
    writeln!(out, "path        {}", a.path.display())?;
    let rows: Vec<(String, TensorMeta)> = if a.path.is_dir() {
        let folder = ModelFolder::open(&a.path)?;
        writeln!(out, "class       {}", folder.class_name().unwrap_or("(no config class)"))?;
        let names: Vec<String> = folder
            .files()
            .iter()
            .map(|f| f.path().file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned()))
            .collect();
        writeln!(out, "files       {} ({})", names.len(), names.join(", "))?;
        folder.tensors().map(|(k, m)| (k.to_string(), m.clone())).collect()
    } else {
        let file = SafeTensorsFile::open(&a.path)?;
        if !file.metadata().is_empty() {
            let mut keys: Vec<&str> = file.metadata().keys().map(|k| k.as_str()).collect();
            keys.sort_unstable();
            writeln!(out, "metadata    {}", keys.join(", "))?;
        }
        file.tensors().map(|(k, m)| (k.to_string(), m.clone())).collect()
    };
    summarize(&mut out, &rows)?;
    table(&mut out, &rows, a)?;
    emit(&out)
}

fn summarize(out: &mut String, rows: &[(String, TensorMeta)]) -> anyhow::Result<()> {
    let total: usize = rows.iter().map(|(_, m)| m.numel()).sum();
    writeln!(out, "tensors     {}", rows.len())?;
    writeln!(out, "parameters  {} ({total})", human(total))?;
    let mut by_dtype: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for (_, m) in rows {
        let e = by_dtype.entry(m.dtype.to_string()).or_default();
        e.0 += 1;
        e.1 += m.numel();
    }
    let hist: Vec<String> =
        by_dtype.iter().map(|(d, (n, p))| format!("{d}: {n} {}, {} params", plural(*n, "tensor"), human(*p))).collect();
    writeln!(out, "dtypes      {}", if hist.is_empty() { "-".to_string() } else { hist.join("; ") })?;
    Ok(())
}

fn table(out: &mut String, rows: &[(String, TensorMeta)], a: &Args) -> anyhow::Result<()> {
    let matching: Vec<&(String, TensorMeta)> =
        rows.iter().filter(|(k, _)| a.filter.as_deref().is_none_or(|f| k.contains(f))).collect();
    let shown = &matching[..a.limit.unwrap_or(usize::MAX).min(matching.len())];
    if shown.is_empty() {
        if a.filter.is_some() {
            writeln!(out, "\n(no tensor matches the filter)")?;
        }
        return Ok(());
    }
    let w = shown.iter().map(|(k, _)| k.len()).max().unwrap_or(0).max(4);
    writeln!(out, "\n{:<w$}  {:<5}  shape", "name", "dtype")?;
    for (k, m) in shown {
        writeln!(out, "{k:<w$}  {:<5}  {:?}", m.dtype.to_string(), m.shape)?;
    }
    if shown.len() < rows.len() {
        let what = if a.filter.is_some() { " matching" } else { "" };
        writeln!(out, "({} of {}{what} tensors shown; {} in total)", shown.len(), matching.len(), rows.len())?;
    }
    Ok(())
}

/// A count with a K/M/B suffix for reading at a glance.
fn human(n: usize) -> String {
    let x = n as f64;
    match n {
        0..1_000 => n.to_string(),
        1_000..1_000_000 => format!("{:.2} K", x / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2} M", x / 1e6),
        _ => format!("{:.2} B", x / 1e9),
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        word.to_string()
    } else {
        format!("{word}s")
    }
}
