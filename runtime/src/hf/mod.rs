//! Hugging Face checkpoint folders on disk: the file layer of `kiln import` / `kiln export`.
//!
//! A folder written by `save_pretrained` holds `config.json` and either one `model.safetensors`
//! or a `model.safetensors.index.json` naming shards. [`read_checkpoint`] memory-maps the files and
//! returns every tensor as f32 (f16 and bf16 widen exactly) under its Hugging Face name;
//! [`write_checkpoint`] writes a folder that `from_pretrained` loads. Which Hugging Face tensor
//! is which Kiln parameter (GPT-2's `Conv1D` layout, fused q/k/v, T5's tied head) is the model
//! mapping's business, not this module's: here names and shapes pass through untouched.
//!
//! Only safetensors is read: pickled `pytorch_model.bin` files can run code when loaded, and
//! `save_pretrained` has written safetensors by default for years.

mod config;
pub mod mapping;
pub mod model;
mod read;
mod write;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use miette::Diagnostic;

pub use config::HfConfig;
pub use read::{read_checkpoint, read_safetensors, widen_bf16, widen_f16};
pub use write::{write_checkpoint, write_safetensors};

use crate::checkpoint::{Shape, TensorMap};

/// File name of the model config.
pub const CONFIG_FILE: &str = "config.json";
/// File name of an unsharded weights file.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// File name of the index of a sharded checkpoint.
pub const INDEX_FILE: &str = "model.safetensors.index.json";

/// How a tensor was stored on disk. Floats are widened to f32 on load; integers (token ids in
/// test fixtures) are kept as i64 and only [`read_safetensors`] accepts them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum StoredDtype {
    F32,
    F16,
    Bf16,
    I32,
    I64,
}

impl StoredDtype {
    /// Whether the runtime loads this as a parameter (widened to f32).
    pub fn is_float(self) -> bool {
        match self {
            StoredDtype::F32 | StoredDtype::F16 | StoredDtype::Bf16 => true,
            StoredDtype::I32 | StoredDtype::I64 => false,
        }
    }

    /// The safetensors spelling (`F32`, `BF16`, ...).
    pub fn name(self) -> &'static str {
        match self {
            StoredDtype::F32 => "F32",
            StoredDtype::F16 => "F16",
            StoredDtype::Bf16 => "BF16",
            StoredDtype::I32 => "I32",
            StoredDtype::I64 => "I64",
        }
    }
}

impl fmt::Display for StoredDtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An integer tensor, row-major (token ids, labels).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntTensor {
    pub shape: Vec<usize>,
    pub data: Vec<i64>,
}

/// Everything in one safetensors file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorFile {
    /// Floating-point tensors, widened to f32.
    pub floats: TensorMap,
    /// Integer tensors, widened to i64.
    pub ints: BTreeMap<String, IntTensor>,
    /// The stored dtype of every tensor, floats and integers alike.
    pub dtypes: BTreeMap<String, StoredDtype>,
    /// The header's `__metadata__` string map (`{"format": "pt"}` from `save_pretrained`).
    pub metadata: BTreeMap<String, String>,
}

/// Where a checkpoint's weights came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WeightsLayout {
    /// One `model.safetensors`.
    Single,
    /// `model.safetensors.index.json` and these shard files, in name order.
    Sharded { shards: Vec<String> },
}

/// A Hugging Face checkpoint folder, loaded.
#[derive(Debug, Clone)]
pub struct HfCheckpoint {
    /// The folder it was read from.
    pub dir: PathBuf,
    pub config: HfConfig,
    /// Every tensor as f32, under its Hugging Face name.
    pub tensors: TensorMap,
    /// How each tensor was stored (all floats).
    pub dtypes: BTreeMap<String, StoredDtype>,
    pub layout: WeightsLayout,
}

/// Why a Hugging Face checkpoint folder could not be read or written.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum HfError {
    #[error("cannot read or write `{path}`: {reason}")]
    #[diagnostic(code(hf::io))]
    Io { path: PathBuf, reason: String },
    #[error("`{dir}` has no `{file}`")]
    #[diagnostic(
        code(hf::missing_file),
        help("a Hugging Face checkpoint folder, as `save_pretrained` writes it, holds `config.json` and `model.safetensors` (or `model.safetensors.index.json` and its shards)")
    )]
    MissingFile { dir: PathBuf, file: String },
    #[error("`{dir}` holds only `{found}`, a pickled PyTorch file")]
    #[diagnostic(
        code(hf::pickle),
        help("Kiln reads safetensors only; in Python, `AutoModel.from_pretrained(dir).save_pretrained(out, safe_serialization=True)` converts it")
    )]
    PickleOnly { dir: PathBuf, found: String },
    #[error("`{path}`: {reason}")]
    #[diagnostic(code(hf::config))]
    Config { path: PathBuf, reason: String },
    #[error("`{path}` is not a valid safetensors file: {reason}")]
    #[diagnostic(
        code(hf::corrupt),
        help("the file is truncated or damaged; download or export it again")
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error("the shard index `{path}` is invalid: {reason}")]
    #[diagnostic(code(hf::index))]
    Index { path: PathBuf, reason: String },
    #[error("shard `{shard}` listed in `{index}` is missing (it holds `{tensor}`{})", if *.more == 0 { String::new() } else { format!(" and {} more tensors", .more) })]
    #[diagnostic(
        code(hf::missing_shard),
        help("copy every `model-XXXXX-of-YYYYY.safetensors` file the index names into the folder")
    )]
    MissingShard {
        index: PathBuf,
        shard: String,
        tensor: String,
        more: usize,
    },
    #[error(
        "tensor `{tensor}` is listed in `{index}` under `{shard}`, but that file does not hold it"
    )]
    #[diagnostic(code(hf::index_mismatch))]
    NotInShard {
        index: PathBuf,
        shard: String,
        tensor: String,
    },
    #[error("tensor `{tensor}` in `{path}` is not listed in the shard index")]
    #[diagnostic(code(hf::index_mismatch))]
    NotInIndex { path: PathBuf, tensor: String },
    #[error("tensor `{tensor}` is in both `{first}` and `{second}`")]
    #[diagnostic(code(hf::duplicate_tensor))]
    DuplicateTensor {
        tensor: String,
        first: PathBuf,
        second: PathBuf,
    },
    #[error("tensor `{tensor}` in `{path}` is {dtype}, which Kiln does not load{}", if *.ints_allowed { "" } else { " as a parameter" })]
    #[diagnostic(
        code(hf::dtype),
        help("parameters may be F32, F16 or BF16; convert the checkpoint in Python with `model.float().save_pretrained(out)`")
    )]
    Dtype {
        path: PathBuf,
        tensor: String,
        dtype: String,
        ints_allowed: bool,
    },
    #[error("tensor `{tensor}` (shape {shape}) has {len} values; the shape needs {expected}")]
    #[diagnostic(code(hf::bad_tensor))]
    BadTensor {
        tensor: String,
        shape: Shape,
        expected: usize,
        len: usize,
    },
    #[error("`{dir}` exists and holds `{file}`, which Kiln did not write")]
    #[diagnostic(
        code(hf::exists),
        help("export into a new folder, or one holding only an earlier export (`config.json`, `model.safetensors`)")
    )]
    Exists { dir: PathBuf, file: String },
}

fn io_err(path: &std::path::Path, e: impl fmt::Display) -> HfError {
    HfError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}
