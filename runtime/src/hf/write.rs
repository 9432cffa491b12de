//! Writing a checkpoint folder that `transformers`' `from_pretrained` loads.
//!
//! `transformers` 4.x's `from_pretrained` refuses a safetensors file whose `__metadata__` lacks
//! `"format": "pt"` (5.x no longer checks), so every file written here carries it. The folder
//! appears whole or not at all: it is built under a temporary name beside the target and renamed
//! into place, so an interrupted export never leaves a folder with a config but half the weights.
//! Tensors are written as f32 in name order with a sorted header, so the bytes depend only on
//! the content.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{io_err, HfError, CONFIG_FILE, WEIGHTS_FILE};
use crate::checkpoint::{write_atomic, CheckpointError, HostTensor, Shape, TensorMap};

fn check(name: &str, t: &HostTensor) -> Result<(), HfError> {
    let expected: usize = t.shape.iter().product();
    if expected != t.data.len() {
        return Err(HfError::BadTensor {
            tensor: name.to_string(),
            shape: Shape(t.shape.clone()),
            expected,
            len: t.data.len(),
        });
    }
    Ok(())
}

/// The safetensors bytes of `tensors` (all f32) with a `__metadata__` string map.
fn encode(
    tensors: &TensorMap,
    metadata: &BTreeMap<String, String>,
    w: &mut dyn Write,
) -> std::io::Result<()> {
    // serde_json's map iterates by key (no `preserve_order` here), so the header is sorted.
    let mut header = serde_json::Map::new();
    if !metadata.is_empty() {
        header.insert(
            "__metadata__".to_string(),
            serde_json::to_value(metadata).unwrap_or_default(),
        );
    }
    let mut offset = 0usize;
    for (name, t) in tensors {
        let n = t.data.len() * 4;
        header.insert(
            name.clone(),
            serde_json::json!({
                "dtype": "F32",
                "shape": t.shape,
                "data_offsets": [offset, offset + n],
            }),
        );
        offset += n;
    }
    let mut header = serde_json::to_vec(&Value::Object(header))?;
    // Tensor data must start 8-byte aligned; the format pads the header with spaces.
    header.resize(header.len().next_multiple_of(8), b' ');
    w.write_all(&(header.len() as u64).to_le_bytes())?;
    w.write_all(&header)?;
    let mut buf = Vec::with_capacity(64 * 1024);
    for t in tensors.values() {
        for chunk in t.data.chunks(16 * 1024) {
            buf.clear();
            for v in chunk {
                buf.extend_from_slice(&v.to_le_bytes());
            }
            w.write_all(&buf)?;
        }
    }
    Ok(())
}

/// Writes one safetensors file of f32 tensors atomically (temporary file, fsync, rename).
pub fn write_safetensors(
    path: &Path,
    tensors: &TensorMap,
    metadata: &BTreeMap<String, String>,
) -> Result<(), HfError> {
    for (name, t) in tensors {
        check(name, t)?;
    }
    write_atomic(path, |w| encode(tensors, metadata, w)).map_err(|e| match e {
        CheckpointError::Io { path, reason } => HfError::Io { path, reason },
        other => io_err(path, other),
    })
}

fn write_synced(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> std::io::Result<()> {
    let mut w = BufWriter::new(File::create(path)?);
    write(&mut w)?;
    w.into_inner().map_err(|e| e.into_error())?.sync_all()
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        // Folders cannot be opened for fsync here; the rename is as durable as the OS makes it.
        let _ = dir;
        Ok(())
    }
}

/// Writes `dir` as a Hugging Face checkpoint folder: `config.json` (the given object) and
/// `model.safetensors` (f32, `{"format": "pt"}`). An existing `dir` is replaced only when it
/// holds nothing but those two files (an earlier export); anything else there is an error, so
/// an export never deletes a user's files.
pub fn write_checkpoint(dir: &Path, config: &Value, tensors: &TensorMap) -> Result<(), HfError> {
    if !config.is_object() {
        return Err(HfError::Config {
            path: dir.join(CONFIG_FILE),
            reason: "the config to write is not a JSON object".to_string(),
        });
    }
    for (name, t) in tensors {
        check(name, t)?;
    }
    let name = dir
        .file_name()
        .ok_or_else(|| io_err(dir, "the path has no folder name"))?
        .to_string_lossy()
        .into_owned();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let exists = match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => true,
        Ok(_) => return Err(io_err(dir, "it exists and is not a folder")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(e) => return Err(io_err(dir, e)),
    };
    if exists {
        for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
            let entry = entry.map_err(|e| io_err(dir, e))?;
            let file = entry.file_name().to_string_lossy().into_owned();
            let ours = (file == CONFIG_FILE || file == WEIGHTS_FILE)
                && entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            if !ours {
                return Err(HfError::Exists {
                    dir: dir.to_path_buf(),
                    file,
                });
            }
        }
    }
    std::fs::create_dir_all(&parent).map_err(|e| io_err(&parent, e))?;

    let pid = std::process::id();
    let tmp = parent.join(format!(".tmp-{name}-{pid}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    }
    let build = || -> Result<(), HfError> {
        std::fs::create_dir(&tmp).map_err(|e| io_err(&tmp, e))?;
        let config_path = tmp.join(CONFIG_FILE);
        write_synced(&config_path, |w| {
            serde_json::to_writer_pretty(&mut *w, config)?;
            w.write_all(b"\n")
        })
        .map_err(|e| io_err(&config_path, e))?;
        let weights = tmp.join(WEIGHTS_FILE);
        let metadata = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        write_synced(&weights, |w| encode(tensors, &metadata, w))
            .map_err(|e| io_err(&weights, e))?;
        sync_dir(&tmp).map_err(|e| io_err(&tmp, e))
    };
    if let Err(e) = build() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }

    if exists {
        // A folder cannot be renamed over a non-empty one: move the old export aside first.
        let old = parent.join(format!(".old-{name}-{pid}"));
        std::fs::rename(dir, &old).map_err(|e| io_err(dir, e))?;
        if let Err(e) = std::fs::rename(&tmp, dir) {
            let _ = std::fs::rename(&old, dir);
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(io_err(dir, e));
        }
        std::fs::remove_dir_all(&old).map_err(|e| io_err(&old, e))?;
    } else {
        std::fs::rename(&tmp, dir).map_err(|e| {
            let _ = std::fs::remove_dir_all(&tmp);
            io_err(dir, e)
        })?;
    }
    sync_dir(&parent).map_err(|e| io_err(&parent, e))
}
