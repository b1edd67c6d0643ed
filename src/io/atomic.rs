//! Atomic file replacement: write `<name>.tmp-<pid>-<seq>` in the target's directory,
//! flush and fsync it, rename it over the target, then fsync the directory so the rename
//! itself survives a crash. Readers (and memory maps of the old file) keep seeing the old
//! contents until the rename; a failed write removes its temp file and leaves the target
//! untouched.
//!
//! The temp file lives in the same directory because rename is only atomic within one
//! file system. The sequence number keeps concurrent writers in one process apart.

use crate::error::{Error, Result};
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `path` atomically with the bytes `write` produces. I/O errors inside `write`
/// should be reported against `path` (the temp name is an implementation detail).
pub fn atomic_write<T>(path: impl AsRef<Path>, write: impl FnOnce(&mut BufWriter<File>) -> Result<T>) -> Result<T> {
    let path = path.as_ref();
    let tmp = temp_path(path)?;
    let result = write_and_publish(path, &tmp, write);
    if result.is_err() {
        // Best effort: the temp file may not exist if creating it failed.
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes `value` as pretty JSON (with a trailing newline) atomically.
pub fn atomic_write_json<T: serde::Serialize + ?Sized>(path: impl AsRef<Path>, value: &T) -> Result<()> {
    let path = path.as_ref();
    atomic_write(path, |w| {
        serde_json::to_writer_pretty(&mut *w, value).map_err(|e| Error::format(path, format!("JSON: {e}")))?;
        w.write_all(b"\n").map_err(|e| Error::io(path, e))
    })
}

fn temp_path(path: &Path) -> Result<PathBuf> {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| Error::format(path, "cannot write here: the path has no file name"))?;
    let mut tmp = name.to_os_string();
    tmp.push(format!(".tmp-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
    Ok(path.with_file_name(tmp))
}

fn write_and_publish<T>(path: &Path, tmp: &Path, write: impl FnOnce(&mut BufWriter<File>) -> Result<T>) -> Result<T> {
    let file = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let out = write(&mut w)?;
    let file = w.into_inner().map_err(|e| Error::io(path, e.into_error()))?;
    file.sync_all().map_err(|e| Error::io(path, e))?;
    drop(file);
    std::fs::rename(tmp, path).map_err(|e| Error::io(path, e))?;
    sync_dir(path)?;
    Ok(out)
}

/// Makes the rename durable. Only meaningful (and possible) on Unix: elsewhere a
/// directory cannot be opened as a file, and the rename is already as durable as it gets.
fn sync_dir(path: &Path) -> Result<()> {
    if cfg!(unix) {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        File::open(dir).and_then(|d| d.sync_all()).map_err(|e| Error::io(dir, e))?;
    }
    Ok(())
}
