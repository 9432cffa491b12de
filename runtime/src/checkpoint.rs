//! Checkpoints: parameters, optimizer state and run metadata in one safetensors file.
//!
//! A checkpoint holds everything a bitwise resume needs: f32 parameters under their own names,
//! AdamW moments (or SGD momentum) as `opt.m.<name>` / `opt.v.<name>`, and a `__metadata__`
//! string map with the spec path and hash, model name, step, seed, sampler stream positions, the
//! tokenizer (so generation needs no data) and the resolved run config.
//!
//! The file is written by hand rather than with `safetensors::serialize` because that takes the
//! metadata as a `HashMap`, whose iteration order would make two identical checkpoints differ
//! byte for byte; here the header is sorted. Reading uses the `safetensors` crate, which
//! validates the layout. Writes are atomic (temporary file, fsync, rename, fsync of the folder),
//! so a crash leaves the previous checkpoint intact; [`CheckpointDir`] keeps the last `keep`
//! checkpoints and a `latest` pointer file.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use miette::Diagnostic;
use safetensors::{Dtype, SafeTensors};

use crate::data::SamplerState;

/// A tensor shape, printed as `[64, 192]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shape(pub Vec<usize>);

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{d}")?;
        }
        f.write_str("]")
    }
}

/// Why a checkpoint could not be written, read, or used for this model.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum CheckpointError {
    #[error("cannot read or write `{path}`: {reason}")]
    #[diagnostic(code(checkpoint::io))]
    Io { path: PathBuf, reason: String },
    #[error("`{path}` is not a valid checkpoint: {reason}")]
    #[diagnostic(
        code(checkpoint::corrupt),
        help("the file is damaged or not a safetensors file; an older checkpoint in the same folder may be intact")
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("tensor `{tensor}` in `{path}` is {dtype}, but checkpoints hold f32 tensors")]
    #[diagnostic(code(checkpoint::dtype))]
    Dtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
    },
    #[error("checkpoint `{path}` has no usable metadata `{key}`: {reason}")]
    #[diagnostic(
        code(checkpoint::metadata),
        help("Kiln checkpoints carry a `__metadata__` map written by `kiln train`")
    )]
    Metadata {
        path: PathBuf,
        key: String,
        reason: String,
    },
    #[error("tensor `{tensor}` has shape {shape} ({expected} values) but {len} values")]
    #[diagnostic(code(checkpoint::bad_tensor))]
    BadTensor {
        tensor: String,
        shape: Shape,
        expected: usize,
        len: usize,
    },
    #[error("parameter name `{tensor}` is reserved for optimizer state")]
    #[diagnostic(code(checkpoint::reserved_name))]
    ReservedName { tensor: String },
    #[error("checkpoint `{path}` does not fit model `{model}` ({count} problem{})", if *.count == 1 { "" } else { "s" })]
    #[diagnostic(
        code(checkpoint::incompatible),
        help("resume with the spec, model and `set:` overrides the checkpoint was trained with")
    )]
    Incompatible {
        path: PathBuf,
        model: String,
        count: usize,
        #[related]
        problems: Vec<CheckpointError>,
    },
    #[error("the checkpoint was written from spec text with hash {found}, but the spec now hashes to {expected}")]
    #[diagnostic(code(checkpoint::spec_mismatch))]
    SpecMismatch { expected: String, found: String },
    #[error("the checkpoint is of model `{found}`, not `{expected}`")]
    #[diagnostic(code(checkpoint::model_mismatch))]
    ModelMismatch { expected: String, found: String },
    #[error("tensor `{tensor}` (shape {shape}) is missing from the checkpoint")]
    #[diagnostic(code(checkpoint::missing_tensor))]
    MissingTensor { tensor: String, shape: Shape },
    #[error("tensor `{tensor}` (shape {shape}) in the checkpoint is not a parameter of the model")]
    #[diagnostic(code(checkpoint::extra_tensor))]
    ExtraTensor { tensor: String, shape: Shape },
    #[error("tensor `{tensor}` has shape {found} in the checkpoint but {expected} in the model")]
    #[diagnostic(code(checkpoint::shape_mismatch))]
    ShapeMismatch {
        tensor: String,
        found: Shape,
        expected: Shape,
    },
    #[error("the `latest` pointer in `{dir}` is unusable: {reason}")]
    #[diagnostic(
        code(checkpoint::latest),
        help("delete the `latest` file to start over, or point it at an existing checkpoint file")
    )]
    Latest { dir: PathBuf, reason: String },
}

fn io_err(path: &Path, e: impl fmt::Display) -> CheckpointError {
    CheckpointError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// An f32 tensor on the host, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

impl HostTensor {
    /// A tensor; `data.len()` must equal the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Result<HostTensor, CheckpointError> {
        let t = HostTensor { shape, data };
        t.check("tensor")?;
        Ok(t)
    }

    fn check(&self, name: &str) -> Result<(), CheckpointError> {
        let expected: usize = self.shape.iter().product();
        if expected != self.data.len() {
            return Err(CheckpointError::BadTensor {
                tensor: name.to_string(),
                shape: Shape(self.shape.clone()),
                expected,
                len: self.data.len(),
            });
        }
        Ok(())
    }
}

/// Tensors by name, in name order.
pub type TensorMap = BTreeMap<String, HostTensor>;

/// Prefix of first-moment (AdamW `m`, SGD momentum) tensors.
pub const OPT_M_PREFIX: &str = "opt.m.";
/// Prefix of second-moment (AdamW `v`) tensors.
pub const OPT_V_PREFIX: &str = "opt.v.";
/// Version of the metadata layout below.
pub const FORMAT_VERSION: u32 = 1;

/// What a checkpoint says about the run that wrote it.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointMeta {
    /// The spec file, as the run config named it.
    pub spec_path: String,
    /// [`spec_hash`] of the spec text.
    pub spec_hash: String,
    /// The spec's named config.
    pub model: String,
    /// Optimizer steps completed.
    pub step: u64,
    /// The run seed.
    pub seed: u64,
    /// Positions of the batch samplers' random streams, by name (`train`, `val_eval`, ...).
    pub samplers: BTreeMap<String, SamplerState>,
    /// The tokenizer's saved form ([`crate::tokenizer::Tokenizer::to_json`]).
    pub tokenizer: String,
    /// The resolved run config as YAML.
    pub config_yaml: String,
    /// Further strings owned by the runtime (dropout RNG position, backend notes).
    pub extra: BTreeMap<String, String>,
}

/// A whole checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct Checkpoint {
    pub meta: CheckpointMeta,
    /// Parameters by name.
    pub params: TensorMap,
    /// First moments by parameter name (stored as `opt.m.<name>`); empty for plain SGD.
    pub opt_m: TensorMap,
    /// Second moments by parameter name (stored as `opt.v.<name>`); empty for SGD.
    pub opt_v: TensorMap,
}

/// What a model expects of a checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSignature {
    /// Hash of the spec text; `None` skips the check (fine-tuning from an edited spec).
    pub spec_hash: Option<String>,
    pub model: String,
    /// Parameter shapes by name.
    pub params: BTreeMap<String, Vec<usize>>,
}

/// FNV-1a (64-bit) of the spec text as `fnv1a64:<16 hex digits>`: detects an edited spec;
/// not a cryptographic hash.
pub fn spec_hash(text: &str) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("fnv1a64:{h:016x}")
}

// Metadata keys.
const K_FORMAT: &str = "kiln.format";
const K_SPEC_PATH: &str = "spec_path";
const K_SPEC_HASH: &str = "spec_hash";
const K_MODEL: &str = "model";
const K_STEP: &str = "step";
const K_SEED: &str = "seed";
const K_TOKENIZER: &str = "tokenizer";
const K_CONFIG: &str = "config";
const SAMPLER_PREFIX: &str = "sampler.";
const EXTRA_PREFIX: &str = "extra.";

impl CheckpointMeta {
    fn to_map(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        m.insert(K_FORMAT.to_string(), FORMAT_VERSION.to_string());
        m.insert(K_SPEC_PATH.to_string(), self.spec_path.clone());
        m.insert(K_SPEC_HASH.to_string(), self.spec_hash.clone());
        m.insert(K_MODEL.to_string(), self.model.clone());
        m.insert(K_STEP.to_string(), self.step.to_string());
        m.insert(K_SEED.to_string(), self.seed.to_string());
        m.insert(K_TOKENIZER.to_string(), self.tokenizer.clone());
        m.insert(K_CONFIG.to_string(), self.config_yaml.clone());
        for (k, v) in &self.samplers {
            m.insert(format!("{SAMPLER_PREFIX}{k}"), v.to_string());
        }
        for (k, v) in &self.extra {
            m.insert(format!("{EXTRA_PREFIX}{k}"), v.clone());
        }
        m
    }

    fn from_map(
        path: &Path,
        m: &std::collections::HashMap<String, String>,
    ) -> Result<CheckpointMeta, CheckpointError> {
        let err = |key: &str, reason: &str| CheckpointError::Metadata {
            path: path.to_path_buf(),
            key: key.to_string(),
            reason: reason.to_string(),
        };
        let get = |key: &str| m.get(key).cloned().ok_or_else(|| err(key, "absent"));
        let num = |key: &str| -> Result<u64, CheckpointError> {
            get(key)?
                .parse::<u64>()
                .map_err(|_| err(key, "not an unsigned integer"))
        };
        let format = num(K_FORMAT)?;
        if format != u64::from(FORMAT_VERSION) {
            return Err(err(
                K_FORMAT,
                &format!("format {format}; this build reads format {FORMAT_VERSION}"),
            ));
        }
        let mut samplers = BTreeMap::new();
        let mut extra = BTreeMap::new();
        for (k, v) in m {
            if let Some(name) = k.strip_prefix(SAMPLER_PREFIX) {
                let state = v
                    .parse::<SamplerState>()
                    .map_err(|e| err(k, &e.to_string()))?;
                samplers.insert(name.to_string(), state);
            } else if let Some(name) = k.strip_prefix(EXTRA_PREFIX) {
                extra.insert(name.to_string(), v.clone());
            }
        }
        Ok(CheckpointMeta {
            spec_path: get(K_SPEC_PATH)?,
            spec_hash: get(K_SPEC_HASH)?,
            model: get(K_MODEL)?,
            step: num(K_STEP)?,
            seed: num(K_SEED)?,
            samplers,
            tokenizer: get(K_TOKENIZER)?,
            config_yaml: get(K_CONFIG)?,
            extra,
        })
    }
}

/// Writes `path` atomically: `<dir>/.tmp-<name>` is written and fsynced, renamed over `path`,
/// and the folder is fsynced so the rename itself survives a crash.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut dyn Write) -> std::io::Result<()>,
) -> Result<(), CheckpointError> {
    let name = path
        .file_name()
        .ok_or_else(|| io_err(path, "the path has no file name"))?;
    let dir = path.parent().unwrap_or(Path::new(""));
    let tmp = dir.join(format!(".tmp-{}", name.to_string_lossy()));
    let result = (|| -> std::io::Result<()> {
        let file = File::create(&tmp)?;
        let mut w = BufWriter::new(file);
        write(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_err(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| io_err(path, e))?;
    sync_dir(dir).map_err(|e| io_err(dir, e))
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    let dir = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
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

/// Saves a checkpoint to `path` atomically. The bytes depend only on the checkpoint's content.
pub fn save_checkpoint(path: &Path, ckpt: &Checkpoint) -> Result<(), CheckpointError> {
    let mut all: BTreeMap<String, &HostTensor> = BTreeMap::new();
    for (name, t) in &ckpt.params {
        if name.starts_with(OPT_M_PREFIX) || name.starts_with(OPT_V_PREFIX) {
            return Err(CheckpointError::ReservedName {
                tensor: name.clone(),
            });
        }
        t.check(name)?;
        all.insert(name.clone(), t);
    }
    for (prefix, map) in [(OPT_M_PREFIX, &ckpt.opt_m), (OPT_V_PREFIX, &ckpt.opt_v)] {
        for (name, t) in map {
            let full = format!("{prefix}{name}");
            t.check(&full)?;
            all.insert(full, t);
        }
    }

    // Header: serde_json's map is ordered by key, so the header is deterministic.
    let mut header = serde_json::Map::new();
    header.insert(
        "__metadata__".to_string(),
        serde_json::to_value(ckpt.meta.to_map()).unwrap_or_default(),
    );
    let mut offset = 0usize;
    for (name, t) in &all {
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
    let mut header =
        serde_json::to_vec(&serde_json::Value::Object(header)).map_err(|e| io_err(path, e))?;
    // The data must start 8-byte aligned; safetensors pads the header with spaces.
    header.resize(header.len().next_multiple_of(8), b' ');

    write_atomic(path, |w| {
        w.write_all(&(header.len() as u64).to_le_bytes())?;
        w.write_all(&header)?;
        let mut buf = Vec::with_capacity(64 * 1024);
        for t in all.values() {
            for chunk in t.data.chunks(16 * 1024) {
                buf.clear();
                for v in chunk {
                    buf.extend_from_slice(&v.to_le_bytes());
                }
                w.write_all(&buf)?;
            }
        }
        Ok(())
    })
}

/// Loads and checks a checkpoint file (layout, dtypes, metadata).
pub fn load_checkpoint(path: &Path) -> Result<Checkpoint, CheckpointError> {
    let bytes = std::fs::read(path).map_err(|e| io_err(path, e))?;
    let corrupt = |reason: String| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        reason,
    };
    let (_, metadata) =
        SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(format!("{e:?}")))?;
    let tensors = SafeTensors::deserialize(&bytes).map_err(|e| corrupt(format!("{e:?}")))?;
    let empty = std::collections::HashMap::new();
    let meta = CheckpointMeta::from_map(path, metadata.metadata().as_ref().unwrap_or(&empty))?;

    let mut ckpt = Checkpoint {
        meta,
        params: TensorMap::new(),
        opt_m: TensorMap::new(),
        opt_v: TensorMap::new(),
    };
    for (name, view) in tensors.iter() {
        if view.dtype() != Dtype::F32 {
            return Err(CheckpointError::Dtype {
                path: path.to_path_buf(),
                tensor: name.to_string(),
                dtype: format!("{:?}", view.dtype()),
            });
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let t = HostTensor {
            shape: view.shape().to_vec(),
            data,
        };
        if let Some(p) = name.strip_prefix(OPT_M_PREFIX) {
            ckpt.opt_m.insert(p.to_string(), t);
        } else if let Some(p) = name.strip_prefix(OPT_V_PREFIX) {
            ckpt.opt_v.insert(p.to_string(), t);
        } else {
            ckpt.params.insert(name.to_string(), t);
        }
    }
    Ok(ckpt)
}

impl Checkpoint {
    /// Checks that this checkpoint (read from `path`) fits a model: spec hash, model name, and
    /// every tensor's presence and shape, parameters and optimizer state alike. Reports every
    /// problem at once.
    pub fn check_compatible(
        &self,
        path: &Path,
        expected: &ModelSignature,
    ) -> Result<(), CheckpointError> {
        let mut problems = Vec::new();
        if let Some(hash) = &expected.spec_hash {
            if *hash != self.meta.spec_hash {
                problems.push(CheckpointError::SpecMismatch {
                    expected: hash.clone(),
                    found: self.meta.spec_hash.clone(),
                });
            }
        }
        if expected.model != self.meta.model {
            problems.push(CheckpointError::ModelMismatch {
                expected: expected.model.clone(),
                found: self.meta.model.clone(),
            });
        }
        compare(&self.params, &expected.params, "", false, &mut problems);
        compare(
            &self.opt_m,
            &expected.params,
            OPT_M_PREFIX,
            true,
            &mut problems,
        );
        compare(
            &self.opt_v,
            &expected.params,
            OPT_V_PREFIX,
            true,
            &mut problems,
        );
        if problems.is_empty() {
            Ok(())
        } else {
            Err(CheckpointError::Incompatible {
                path: path.to_path_buf(),
                model: expected.model.clone(),
                count: problems.len(),
                problems,
            })
        }
    }
}

/// Compares stored tensors with expected shapes. Optimizer maps may be wholly empty (a fresh
/// optimizer, or SGD without momentum) but not partly filled.
fn compare(
    found: &TensorMap,
    expected: &BTreeMap<String, Vec<usize>>,
    prefix: &str,
    may_be_empty: bool,
    problems: &mut Vec<CheckpointError>,
) {
    if may_be_empty && found.is_empty() {
        return;
    }
    for (name, shape) in expected {
        match found.get(name) {
            None => problems.push(CheckpointError::MissingTensor {
                tensor: format!("{prefix}{name}"),
                shape: Shape(shape.clone()),
            }),
            Some(t) if t.shape != *shape => problems.push(CheckpointError::ShapeMismatch {
                tensor: format!("{prefix}{name}"),
                found: Shape(t.shape.clone()),
                expected: Shape(shape.clone()),
            }),
            Some(_) => {}
        }
    }
    for (name, t) in found {
        if !expected.contains_key(name) {
            problems.push(CheckpointError::ExtraTensor {
                tensor: format!("{prefix}{name}"),
                shape: Shape(t.shape.clone()),
            });
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A folder of checkpoints
// ---------------------------------------------------------------------------------------------

/// Name of the pointer file naming the newest checkpoint.
pub const LATEST_FILE: &str = "latest";

/// A folder holding `ckpt-<step>.safetensors` files and a `latest` pointer.
#[derive(Debug, Clone)]
pub struct CheckpointDir {
    dir: PathBuf,
    keep: usize,
}

impl CheckpointDir {
    /// Opens (creating) the folder; removes temporary files a crash may have left.
    pub fn open(dir: &Path, keep: usize) -> Result<CheckpointDir, CheckpointError> {
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let entries = std::fs::read_dir(dir).map_err(|e| io_err(dir, e))?;
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let ours = name == format!(".tmp-{LATEST_FILE}")
                || name
                    .strip_prefix(".tmp-")
                    .is_some_and(|n| parse_step(n).is_some());
            if ours {
                std::fs::remove_file(entry.path()).map_err(|e| io_err(&entry.path(), e))?;
            }
        }
        Ok(CheckpointDir {
            dir: dir.to_path_buf(),
            keep: keep.max(1),
        })
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// File name of the checkpoint at `step`.
    pub fn file_name(step: u64) -> String {
        format!("ckpt-{step:08}.safetensors")
    }

    /// Writes the checkpoint, points `latest` at it, then deletes all but the newest `keep`.
    pub fn save(&self, ckpt: &Checkpoint) -> Result<PathBuf, CheckpointError> {
        let name = CheckpointDir::file_name(ckpt.meta.step);
        let path = self.dir.join(&name);
        save_checkpoint(&path, ckpt)?;
        write_atomic(&self.dir.join(LATEST_FILE), |w| {
            w.write_all(format!("{name}\n").as_bytes())
        })?;
        let all = self.list()?;
        let excess = all.len().saturating_sub(self.keep);
        for (_, old) in all.into_iter().take(excess) {
            if old != path {
                std::fs::remove_file(&old).map_err(|e| io_err(&old, e))?;
            }
        }
        Ok(path)
    }

    /// Checkpoint files present, oldest step first.
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io_err(&self.dir, e))?;
        let mut out: Vec<(u64, PathBuf)> = entries
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                parse_step(&name).map(|s| (s, e.path()))
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// The checkpoint `latest` points at; `None` when there is no pointer yet.
    pub fn latest(&self) -> Result<Option<PathBuf>, CheckpointError> {
        let pointer = self.dir.join(LATEST_FILE);
        let text = match std::fs::read_to_string(&pointer) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(&pointer, e)),
        };
        let name = text.trim();
        let bad = |reason: String| CheckpointError::Latest {
            dir: self.dir.clone(),
            reason,
        };
        if parse_step(name).is_none() {
            return Err(bad(format!("it names `{name}`, not a checkpoint file")));
        }
        let path = self.dir.join(name);
        if !path.is_file() {
            return Err(bad(format!("it names `{name}`, which does not exist")));
        }
        Ok(Some(path))
    }

    /// Loads the checkpoint `latest` points at.
    pub fn load_latest(&self) -> Result<Option<(PathBuf, Checkpoint)>, CheckpointError> {
        match self.latest()? {
            None => Ok(None),
            Some(path) => {
                let ckpt = load_checkpoint(&path)?;
                Ok(Some((path, ckpt)))
            }
        }
    }
}

/// The step of a `ckpt-<step>.safetensors` file name.
fn parse_step(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("ckpt-")?.strip_suffix(".safetensors")?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_matches_reference_vectors() {
        // Published FNV-1a 64 test vectors.
        assert_eq!(spec_hash(""), "fnv1a64:cbf29ce484222325");
        assert_eq!(spec_hash("a"), "fnv1a64:af63dc4c8601ec8c");
        assert_eq!(spec_hash("foobar"), "fnv1a64:85944171f73967e8");
    }

    #[test]
    fn step_names_parse() {
        assert_eq!(parse_step("ckpt-00000500.safetensors"), Some(500));
        assert_eq!(parse_step(&CheckpointDir::file_name(7)), Some(7));
        assert_eq!(parse_step("ckpt-.safetensors"), None);
        assert_eq!(parse_step("ckpt-1x.safetensors"), None);
        assert_eq!(parse_step(".tmp-ckpt-1.safetensors"), None);
    }

    #[test]
    fn shapes_print_like_lists() {
        assert_eq!(Shape(vec![64, 192]).to_string(), "[64, 192]");
        assert_eq!(Shape(vec![]).to_string(), "[]");
    }
}
