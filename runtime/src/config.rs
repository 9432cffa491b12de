//! The run config: the YAML file that says how to train (`kiln train CONFIG.yaml`).
//!
//! The spec says *what* the model is; this says which named model to take, on what data, with
//! which optimizer, schedule, evaluation and checkpoint cadence. Every field is documented here and
//! `docs/run-config.md` is generated from these doc comments, so each doc comment states the
//! field's meaning and its default.
//!
//! Loading is: parse YAML → apply `--set a.b=value` overrides to the value tree → deserialize
//! (`deny_unknown_fields` everywhere) → resolve relative paths against the YAML file's directory →
//! validate ranges and combinations. Every failure is a [`ConfigError`], a miette diagnostic with a
//! `config::*` code and a label at the offending spot: in the YAML file, or in the `--set` argument
//! that introduced the bad value.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{Diagnostic, LabeledSpan, NamedSource, SourceSpan};
use serde::de::{self, Deserializer, MapAccess, Visitor};
use serde::ser::{SerializeMap, Serializer};
use serde::{Deserialize, Serialize};

use crate::yaml::{self, Location, Value};

// ---------------------------------------------------------------------------------------------
// The config types
// ---------------------------------------------------------------------------------------------

/// A training run: which model to train, on what data, and how.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Path to the `.kiln` spec file, relative to this YAML file. Required.
    pub spec: PathBuf,
    /// Name of a `config` in the spec to train (for example `gpt2_char_tiny`). Required.
    pub model: String,
    /// Hyperparameter overrides for the spec's model, applied on top of the named config
    /// (for example `{dropout: 0.0, layers: 4}`). Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, HyperValue>,
    /// Name of the spec's objective to minimise. Default: `causal_lm`.
    #[serde(default = "default_objective")]
    pub objective: String,
    /// Arguments of the objective (`{z_loss: 1.0e-4, label_smoothing: 0.1}`), passed to the
    /// spec's objective as named arguments. Default: none (the objective's own defaults).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub objective_args: BTreeMap<String, HyperValue>,
    /// Training and validation data. Required.
    pub data: DataConfig,
    /// Sequences per micro-batch (nanoGPT's `batch_size`). Default: 12.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Tokens per sequence (nanoGPT's `block_size`); at most the model's context. Default: 256.
    #[serde(default = "default_seq_len")]
    pub seq_len: usize,
    /// Micro-batches whose gradients are summed into one optimizer step (nanoGPT's
    /// `gradient_accumulation_steps`). Default: 1.
    #[serde(default = "one_usize")]
    pub grad_accum: usize,
    /// Optimizer steps to train for (nanoGPT's `max_iters`). Required.
    pub steps: u64,
    /// The optimizer and its hyperparameters. Default: AdamW with nanoGPT's defaults.
    #[serde(default)]
    pub optimizer: OptimizerConfig,
    /// The learning-rate schedule (warmup, then decay). Default: no warmup, cosine decay over
    /// `steps` to `lr / 10`.
    #[serde(default)]
    pub schedule: ScheduleConfig,
    /// Clip the global L2 norm of the gradients to this value before the update; `0` disables
    /// clipping. Default: 1.0.
    #[serde(default = "default_grad_clip")]
    pub grad_clip: f64,
    /// When and how much to evaluate on the validation split. Default: every 250 steps,
    /// 200 batches.
    #[serde(default)]
    pub eval: EvalConfig,
    /// When to write checkpoints and how many to keep. Default: every 500 steps, keep 2.
    #[serde(default)]
    pub checkpoint: CheckpointConfig,
    /// Fine-tuning (`kiln finetune`): the base checkpoint, frozen parameters, LoRA. Default:
    /// absent (train every parameter from its init).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finetune: Option<FinetuneConfig>,
    /// Write a `metrics.jsonl` line (and a progress line) every this many steps. Default: 1.
    #[serde(default = "one_u64")]
    pub log_every: u64,
    /// Seed of every random stream of the run (initialisation, batch sampling, dropout).
    /// Default: 1337.
    #[serde(default = "default_seed")]
    pub seed: u64,
    /// Worker threads for the CPU backend; absent means all available cores. Default: absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads: Option<usize>,
    /// Where to run: `cpu` or `cuda`. Default: `cpu`.
    #[serde(default)]
    pub device: Device,
    /// Floating-point format of parameters and activations: `f32`, `bf16` or `f16`
    /// (backends reject those they lack). Default: `f32`.
    #[serde(default)]
    pub precision: Precision,
    /// Folder for checkpoints, `metrics.jsonl`, `timings.jsonl` and plots, relative to this YAML
    /// file; `kiln train --out DIR` replaces it. Default: `out`.
    #[serde(default = "default_out_dir")]
    pub out_dir: PathBuf,
    /// Where this config came from, so later checks can point at the offending line.
    #[serde(skip)]
    origin: Origin,
}

/// A value in the `set:` section: whatever a spec hyperparameter can hold.
#[derive(Debug, Clone, PartialEq)]
pub enum HyperValue {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

/// Where the training data comes from. Give exactly one of `path` and `token_file`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// A UTF-8 text corpus (or any bytes, with `tokenizer: byte`), relative to this YAML file.
    /// Default: absent (give this or `token_file`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathBuf>,
    /// A token file written by `kiln data prepare`, relative to this YAML file; it carries its own
    /// tokenizer and train/validation split, so `tokenizer` and `val_fraction` must be absent.
    /// Default: absent (give this or `path`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// Fraction of the corpus held out for validation: the last `val_fraction` of its characters
    /// (bytes for `tokenizer: byte`), as nanoGPT's `prepare.py`. In `[0, 1)`; `0` means no
    /// validation. Default: 0.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub val_fraction: Option<f64>,
    /// How text becomes tokens: `char` (vocabulary = the corpus's sorted unique characters, as
    /// nanoGPT's shakespeare_char), `byte` (256 byte values) or `{tokenizer_json: PATH}` (a
    /// Hugging Face `tokenizer.json`, relative to this YAML file). Default: `char`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<TokenizerConfig>,
    /// Supervised examples for `objective: seq2seq`: a JSONL file of `{"input": ..., "target":
    /// ...}` lines (the shipped text-to-text task format), relative to this YAML file. The last
    /// `val_fraction` of the examples are held out for the validation loss; `path` or
    /// `token_file` still gives the tokenizer (the base model's vocabulary). Default: absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub examples: Option<PathBuf>,
}

/// The default validation fraction (nanoGPT's 90/10 split).
pub const DEFAULT_VAL_FRACTION: f64 = 0.1;

/// What [`DataConfig`] means once validated.
#[derive(Debug, Clone, PartialEq)]
pub enum DataSource {
    /// Tokenize a text file at load time.
    Text {
        path: PathBuf,
        val_fraction: f64,
        tokenizer: TokenizerConfig,
    },
    /// Read a prepared token file.
    TokenFile { path: PathBuf },
}

impl DataConfig {
    /// The data source with defaults filled in. Call on a validated config (for an invalid one,
    /// `path` wins over `token_file`, and `None` means neither was given).
    pub fn source(&self) -> Option<DataSource> {
        match (&self.path, &self.token_file) {
            (Some(path), _) => Some(DataSource::Text {
                path: path.clone(),
                val_fraction: self.val_fraction.unwrap_or(DEFAULT_VAL_FRACTION),
                tokenizer: self.tokenizer.clone().unwrap_or(TokenizerConfig::Char),
            }),
            (None, Some(path)) => Some(DataSource::TokenFile { path: path.clone() }),
            (None, None) => None,
        }
    }
}

/// How text becomes token ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenizerConfig {
    /// One token per Unicode character; the vocabulary is the corpus's sorted unique characters.
    Char,
    /// One token per byte; vocabulary 256.
    Byte,
    /// A Hugging Face `tokenizer.json` file on disk.
    TokenizerJson(PathBuf),
}

/// The optimizer. Fields that belong to the other kind must be absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimizerConfig {
    /// `adamw` or `sgd`. Default: `adamw`.
    #[serde(default)]
    pub kind: OptimizerKind,
    /// Peak learning rate (nanoGPT's `learning_rate`). Default: 6.0e-4.
    #[serde(default = "default_lr")]
    pub lr: f64,
    /// Decoupled weight decay (AdamW) or L2 penalty added to the gradient (SGD), applied to
    /// parameters of two or more dimensions only, as nanoGPT. Default: 0.1 for AdamW, 0 for SGD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight_decay: Option<f64>,
    /// AdamW's first-moment decay. Default: 0.9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta1: Option<f64>,
    /// AdamW's second-moment decay. Default: 0.95 (nanoGPT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub beta2: Option<f64>,
    /// AdamW's denominator epsilon. Default: 1.0e-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eps: Option<f64>,
    /// SGD's momentum; `0` is plain SGD. Default: 0.9.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub momentum: Option<f64>,
    /// SGD with Nesterov momentum. Default: false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nesterov: Option<bool>,
}

/// Which optimizer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    #[default]
    Adamw,
    Sgd,
}

/// A fully specified optimizer, defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Optimizer {
    AdamW {
        lr: f64,
        beta1: f64,
        beta2: f64,
        eps: f64,
        weight_decay: f64,
    },
    Sgd {
        lr: f64,
        momentum: f64,
        nesterov: bool,
        weight_decay: f64,
    },
}

impl Default for OptimizerConfig {
    fn default() -> Self {
        OptimizerConfig {
            kind: OptimizerKind::Adamw,
            lr: default_lr(),
            weight_decay: None,
            beta1: None,
            beta2: None,
            eps: None,
            momentum: None,
            nesterov: None,
        }
    }
}

impl OptimizerConfig {
    /// The optimizer with every default filled in.
    pub fn resolved(&self) -> Optimizer {
        match self.kind {
            OptimizerKind::Adamw => Optimizer::AdamW {
                lr: self.lr,
                beta1: self.beta1.unwrap_or(0.9),
                beta2: self.beta2.unwrap_or(0.95),
                eps: self.eps.unwrap_or(1e-8),
                weight_decay: self.weight_decay.unwrap_or(0.1),
            },
            OptimizerKind::Sgd => Optimizer::Sgd {
                lr: self.lr,
                momentum: self.momentum.unwrap_or(0.9),
                nesterov: self.nesterov.unwrap_or(false),
                weight_decay: self.weight_decay.unwrap_or(0.0),
            },
        }
    }
}

/// The learning-rate schedule: linear warmup, then decay to `min_lr` by `decay_steps`
/// (nanoGPT's `get_lr`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Steps of linear warmup (nanoGPT's `warmup_iters`). Default: 0.
    #[serde(default)]
    pub warmup: u64,
    /// Shape of the decay after warmup: `cosine`, `linear` or `constant` (no decay).
    /// Default: `cosine`.
    #[serde(default)]
    pub decay: Decay,
    /// Learning rate reached at `decay_steps` and kept after. Default: `optimizer.lr / 10`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_lr: Option<f64>,
    /// Step at which the decay reaches `min_lr` (nanoGPT's `lr_decay_iters`). Default: `steps`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decay_steps: Option<u64>,
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            warmup: 0,
            decay: Decay::Cosine,
            min_lr: None,
            decay_steps: None,
        }
    }
}

/// Shape of the learning-rate decay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decay {
    #[default]
    Cosine,
    Linear,
    Constant,
}

/// Evaluation on the validation split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Estimate train and validation loss when `step % every == 0` (step 0 included, as
    /// nanoGPT's `eval_interval`) and after the last step; `0` evaluates only after the last
    /// step. Default: 250.
    #[serde(default = "default_eval_every")]
    pub every: u64,
    /// Random batches averaged per estimate (nanoGPT's `eval_iters`). Default: 200.
    #[serde(default = "default_eval_batches")]
    pub batches: usize,
    /// After the last step, also compute the loss over the whole validation split in
    /// non-overlapping windows. Default: false.
    #[serde(default)]
    pub full: bool,
}

impl Default for EvalConfig {
    fn default() -> Self {
        EvalConfig {
            every: default_eval_every(),
            batches: default_eval_batches(),
            full: false,
        }
    }
}

/// Fine-tuning: start from a checkpoint's parameters, freeze some, adapt others with LoRA.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    /// The base checkpoint (written by `kiln train` for the same spec and model), relative to
    /// this YAML file; a fresh run loads its parameters (LoRA weights keep their init). Default:
    /// absent (start from the init).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<PathBuf>,
    /// Name patterns (`*` matches any run of characters) of parameters to freeze: no gradient, no
    /// update, no optimizer state. `["*"]` with LoRA trains the LoRA weights only. Default: none.
    #[serde(default)]
    pub freeze: Vec<String>,
    /// Name patterns of 2-D weights (`x @ W`) to adapt with LoRA; each is frozen and gets
    /// `W.lora_a`, `W.lora_b`. Default: none (no LoRA).
    #[serde(default)]
    pub lora_targets: Vec<String>,
    /// LoRA rank. Default: 8.
    #[serde(default = "default_lora_rank")]
    pub lora_rank: usize,
    /// LoRA scale numerator: the update is `x·A·B·(alpha/rank)`. Default: 16.
    #[serde(default = "default_lora_alpha")]
    pub lora_alpha: f64,
    /// Name patterns of 2-D weights after whose product a bottleneck adapter goes (T5's adapter
    /// layers: the feed-forward output weight of each block). Default: none (no adapters).
    #[serde(default)]
    pub adapter_targets: Vec<String>,
    /// Adapter bottleneck width. Default: 32.
    #[serde(default = "default_adapter_dim")]
    pub adapter_dim: usize,
    /// T5's gradual unfreezing: training starts with the top `layers_per_episode` blocks of
    /// every repeated stack (plus the parameters outside the stacks) and unfreezes the next
    /// `layers_per_episode` blocks every `every` steps. Default: absent (no unfreezing schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gradual_unfreezing: Option<GradualUnfreezing>,
    /// The episode's count of training top blocks, set by the training loop (not a YAML field).
    /// Default: absent (every block that is not frozen trains).
    #[serde(skip)]
    pub top_layers: Option<usize>,
}

/// When gradual unfreezing unfreezes the next blocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GradualUnfreezing {
    /// Steps per episode. Required.
    pub every: u64,
    /// Blocks of each stack unfrozen per episode. Default: 1.
    #[serde(default = "default_layers_per_episode")]
    pub layers_per_episode: usize,
}

fn default_layers_per_episode() -> usize {
    1
}

impl GradualUnfreezing {
    /// Top blocks of each stack that train at `step` (0-based) of the run.
    pub fn top_layers_at(&self, step: u64) -> usize {
        let episode = step / self.every.max(1);
        (episode as usize)
            .saturating_add(1)
            .saturating_mul(self.layers_per_episode)
    }
}

fn default_adapter_dim() -> usize {
    32
}

fn default_lora_rank() -> usize {
    8
}

fn default_lora_alpha() -> f64 {
    16.0
}

impl FinetuneConfig {
    /// The compiler's transform.
    pub fn spec(&self) -> kiln_compiler::finetune::FinetuneSpec {
        kiln_compiler::finetune::FinetuneSpec {
            freeze: self.freeze.clone(),
            lora: (!self.lora_targets.is_empty()).then(|| kiln_compiler::finetune::LoraSpec {
                targets: self.lora_targets.clone(),
                rank: self.lora_rank,
                alpha: self.lora_alpha,
            }),
            adapters: (!self.adapter_targets.is_empty()).then(|| {
                kiln_compiler::finetune::AdapterSpec {
                    targets: self.adapter_targets.clone(),
                    dim: self.adapter_dim,
                }
            }),
            top_layers: self.top_layers,
        }
    }
}

/// Checkpointing cadence and retention.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// Write a checkpoint every this many steps and after the last step; `0` writes only after
    /// the last step. Default: 500.
    #[serde(default = "default_ckpt_every")]
    pub every: u64,
    /// How many most recent checkpoints to keep on disk (at least 1). Default: 2.
    #[serde(default = "default_ckpt_keep")]
    pub keep: usize,
}

impl Default for CheckpointConfig {
    fn default() -> Self {
        CheckpointConfig {
            every: default_ckpt_every(),
            keep: default_ckpt_keep(),
        }
    }
}

/// Where to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Device {
    #[default]
    Cpu,
    Cuda,
}

/// Floating-point format of parameters and activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    Bf16,
    F16,
}

fn default_objective() -> String {
    "causal_lm".to_string()
}
fn default_batch_size() -> usize {
    12
}
fn default_seq_len() -> usize {
    256
}
fn one_usize() -> usize {
    1
}
fn one_u64() -> u64 {
    1
}
fn default_grad_clip() -> f64 {
    1.0
}
fn default_seed() -> u64 {
    1337
}
fn default_out_dir() -> PathBuf {
    PathBuf::from("out")
}
fn default_lr() -> f64 {
    6e-4
}
fn default_eval_every() -> u64 {
    250
}
fn default_eval_batches() -> usize {
    200
}
fn default_ckpt_every() -> u64 {
    500
}
fn default_ckpt_keep() -> usize {
    2
}

// `HyperValue` and `TokenizerConfig` have hand-written serde impls: YAML scalars map onto the
// closest variant, and serde_yaml 0.9 reads enums only from `!tags`, not from `{key: value}`.

impl Serialize for HyperValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            HyperValue::Int(v) => s.serialize_i64(*v),
            HyperValue::Float(v) => s.serialize_f64(*v),
            HyperValue::Bool(v) => s.serialize_bool(*v),
            HyperValue::Str(v) => s.serialize_str(v),
        }
    }
}

impl<'de> Deserialize<'de> for HyperValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = HyperValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a number, boolean or string")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<HyperValue, E> {
                Ok(HyperValue::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<HyperValue, E> {
                Ok(HyperValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<HyperValue, E> {
                i64::try_from(v)
                    .map(HyperValue::Int)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &"an i64"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<HyperValue, E> {
                Ok(HyperValue::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HyperValue, E> {
                Ok(HyperValue::Str(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

impl fmt::Display for HyperValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HyperValue::Int(v) => write!(f, "{v}"),
            HyperValue::Float(v) => write!(f, "{v:?}"),
            HyperValue::Bool(v) => write!(f, "{v}"),
            HyperValue::Str(v) => write!(f, "{v}"),
        }
    }
}

const TOKENIZER_NAMES: &[&str] = &["char", "byte", "tokenizer_json"];

impl Serialize for TokenizerConfig {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            TokenizerConfig::Char => s.serialize_str("char"),
            TokenizerConfig::Byte => s.serialize_str("byte"),
            TokenizerConfig::TokenizerJson(path) => {
                let mut map = s.serialize_map(Some(1))?;
                map.serialize_entry("tokenizer_json", path)?;
                map.end()
            }
        }
    }
}

impl<'de> Deserialize<'de> for TokenizerConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TokenizerConfig;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("`char`, `byte` or `{tokenizer_json: PATH}`")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TokenizerConfig, E> {
                match v {
                    "char" => Ok(TokenizerConfig::Char),
                    "byte" => Ok(TokenizerConfig::Byte),
                    other => Err(E::unknown_variant(other, &TOKENIZER_NAMES[..2])),
                }
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TokenizerConfig, A::Error> {
                let mut path: Option<PathBuf> = None;
                while let Some(key) = map.next_key::<String>()? {
                    if key != "tokenizer_json" {
                        return Err(de::Error::unknown_field(&key, &TOKENIZER_NAMES[2..]));
                    }
                    if path.is_some() {
                        return Err(de::Error::duplicate_field("tokenizer_json"));
                    }
                    path = Some(map.next_value()?);
                }
                path.map(TokenizerConfig::TokenizerJson)
                    .ok_or_else(|| de::Error::missing_field("tokenizer_json"))
            }
        }
        d.deserialize_any(V)
    }
}

// ---------------------------------------------------------------------------------------------
// Diagnostics
// ---------------------------------------------------------------------------------------------

/// What went wrong; each kind is one diagnostic code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigErrorKind {
    /// The YAML file could not be read (`config::io`).
    Io,
    /// The YAML is not well-formed (`config::syntax`).
    Syntax,
    /// A key that is not a field of its section (`config::unknown_field`).
    UnknownField,
    /// A required field is absent (`config::missing_field`).
    MissingField,
    /// A value of the wrong type or out of the type's range (`config::type`).
    Type,
    /// A name that is not one of the allowed choices (`config::unknown_variant`).
    UnknownVariant,
    /// Well-typed but invalid: out of range, or contradicting another field (`config::invalid`).
    Invalid,
    /// A file named by the config does not exist (`config::missing_file`).
    MissingFile,
    /// A `--set` argument that is not `path=value` (`config::set_syntax`).
    SetSyntax,
    /// A `--set` path that runs through a value that has no fields (`config::set_path`).
    SetPath,
}

impl ConfigErrorKind {
    /// The diagnostic code.
    pub fn code(self) -> &'static str {
        match self {
            ConfigErrorKind::Io => "config::io",
            ConfigErrorKind::Syntax => "config::syntax",
            ConfigErrorKind::UnknownField => "config::unknown_field",
            ConfigErrorKind::MissingField => "config::missing_field",
            ConfigErrorKind::Type => "config::type",
            ConfigErrorKind::UnknownVariant => "config::unknown_variant",
            ConfigErrorKind::Invalid => "config::invalid",
            ConfigErrorKind::MissingFile => "config::missing_file",
            ConfigErrorKind::SetSyntax => "config::set_syntax",
            ConfigErrorKind::SetPath => "config::set_path",
        }
    }
}

/// A run-config error: message, code, and a label in the YAML file or a `--set` argument.
/// Boxed: configs are loaded once, and a small `Result` keeps every caller cheap.
#[derive(Debug, Clone)]
pub struct ConfigError(Box<ErrorData>);

#[derive(Debug, Clone)]
struct ErrorData {
    kind: ConfigErrorKind,
    message: String,
    label: String,
    help: Option<String>,
    src: Option<NamedSource<String>>,
    span: Option<SourceSpan>,
    related: Vec<ConfigError>,
}

impl ConfigError {
    fn new(kind: ConfigErrorKind, message: impl Into<String>) -> Self {
        ConfigError(Box::new(ErrorData {
            kind,
            message: message.into(),
            label: String::new(),
            help: None,
            src: None,
            span: None,
            related: Vec::new(),
        }))
    }

    fn with_help(mut self, help: Option<String>) -> Self {
        self.0.help = help;
        self
    }

    fn at(mut self, src: &SourceText, span: Option<SourceSpan>, label: impl Into<String>) -> Self {
        self.0.src = Some(src.named());
        self.0.span = span;
        self.0.label = label.into();
        self
    }

    /// Which kind of error this is.
    pub fn kind(&self) -> ConfigErrorKind {
        self.0.kind
    }

    /// The main message (without code, label or help).
    pub fn message(&self) -> &str {
        &self.0.message
    }

    /// The help text, if any (for unknown names: "did you mean ...").
    pub fn help_text(&self) -> Option<&str> {
        self.0.help.as_deref()
    }

    /// Further problems found in the same pass (validation reports all of them).
    pub fn others(&self) -> &[ConfigError] {
        &self.0.related
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.message)
    }
}

impl std::error::Error for ConfigError {}

impl Diagnostic for ConfigError {
    fn code<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        Some(Box::new(self.0.kind.code()))
    }
    fn help<'a>(&'a self) -> Option<Box<dyn fmt::Display + 'a>> {
        self.0
            .help
            .as_ref()
            .map(|h| Box::new(h) as Box<dyn fmt::Display>)
    }
    fn source_code(&self) -> Option<&dyn miette::SourceCode> {
        self.0.src.as_ref().map(|s| s as &dyn miette::SourceCode)
    }
    fn labels(&self) -> Option<Box<dyn Iterator<Item = LabeledSpan> + '_>> {
        let span = self.0.span?;
        Some(Box::new(std::iter::once(LabeledSpan::new_with_span(
            Some(self.0.label.clone()),
            span,
        ))))
    }
    fn related<'a>(&'a self) -> Option<Box<dyn Iterator<Item = &'a dyn Diagnostic> + 'a>> {
        if self.0.related.is_empty() {
            None
        } else {
            Some(Box::new(
                self.0.related.iter().map(|e| e as &dyn Diagnostic),
            ))
        }
    }
}

/// A named text that diagnostics point into: the YAML file or one `--set` argument.
#[derive(Debug, Clone, PartialEq)]
struct SourceText {
    name: String,
    text: String,
}

impl SourceText {
    fn named(&self) -> NamedSource<String> {
        NamedSource::new(&self.name, self.text.clone())
    }

    /// A span covering the token that starts at `loc`.
    fn span_at(&self, loc: Location) -> SourceSpan {
        let start = loc.byte_offset(&self.text);
        SourceSpan::new(start.into(), token_len(&self.text, start))
    }
}

/// Length of the YAML token starting at `start`: a quoted string, a bracketed flow collection on
/// one line, or a plain scalar / key up to `: `, `,`, a closing bracket, a comment or the line end.
fn token_len(text: &str, start: usize) -> usize {
    let rest = &text[start..];
    let line = rest.split('\n').next().unwrap_or("");
    let mut chars = line.char_indices();
    let Some((_, first)) = chars.next() else {
        return 0;
    };
    if first == '"' || first == '\'' {
        let mut escaped = false;
        for (i, c) in chars {
            if first == '"' && c == '\\' && !escaped {
                escaped = true;
                continue;
            }
            if c == first && !escaped {
                return i + 1;
            }
            escaped = false;
        }
        return line.len();
    }
    if first == '{' || first == '[' {
        let close = if first == '{' { '}' } else { ']' };
        let mut depth = 0i32;
        for (i, c) in line.char_indices() {
            if c == first {
                depth += 1;
            } else if c == close {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
        }
        return line.len();
    }
    let bytes = line.as_bytes();
    let mut end = line.len();
    for (i, c) in line.char_indices() {
        let next_is_space = bytes.get(i + 1).is_none_or(|b| *b == b' ');
        let prev_is_space = i > 0 && bytes[i - 1] == b' ';
        if (c == ':' && next_is_space) || c == ',' || c == '}' || c == ']' {
            end = i;
            break;
        }
        if c == '#' && prev_is_space {
            end = i;
            break;
        }
    }
    line[..end].trim_end().len().max(1).min(line.len())
}

/// Levenshtein distance, for "did you mean" suggestions.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The closest candidate within a distance that scales with the word's length.
fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1) + 1;
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

/// A serde error message, classified.
#[derive(Debug, PartialEq)]
struct Classified {
    kind: ConfigErrorKind,
    /// Dotted path of the enclosing section, when serde_yaml reported one.
    section: Option<String>,
    /// The message without the path prefix.
    bare: String,
    /// The offending name for unknown fields/variants and missing fields.
    name: Option<String>,
    /// The allowed names listed in the message.
    expected: Vec<String>,
}

const SERDE_STARTS: &[(&str, ConfigErrorKind)] = &[
    ("unknown field `", ConfigErrorKind::UnknownField),
    ("missing field `", ConfigErrorKind::MissingField),
    ("unknown variant `", ConfigErrorKind::UnknownVariant),
    ("invalid type: ", ConfigErrorKind::Type),
    ("invalid value: ", ConfigErrorKind::Type),
    ("invalid length ", ConfigErrorKind::Type),
    ("duplicate field `", ConfigErrorKind::Syntax),
    ("duplicate entry", ConfigErrorKind::Syntax),
];

fn classify(message: &str) -> Classified {
    let mut section = None;
    let mut bare = message.to_string();
    let starts = |s: &str| SERDE_STARTS.iter().find(|(p, _)| s.starts_with(p)).copied();
    let mut found = starts(message);
    if found.is_none() {
        // serde_yaml writes `path.to.section: message` for errors below the root.
        if let Some(pos) = message.find(": ") {
            let rest = &message[pos + 2..];
            if let Some(hit) = starts(rest) {
                section = Some(message[..pos].to_string());
                bare = rest.to_string();
                found = Some(hit);
            }
        }
    }
    let kind = found.map_or(ConfigErrorKind::Type, |(_, k)| k);
    let name = match kind {
        ConfigErrorKind::UnknownField
        | ConfigErrorKind::MissingField
        | ConfigErrorKind::UnknownVariant => backticked(&bare).into_iter().next(),
        _ => None,
    };
    let expected = match bare.find("expected ") {
        Some(pos) if name.is_some() => backticked(&bare[pos..]),
        _ => Vec::new(),
    };
    Classified {
        kind,
        section,
        bare,
        name,
        expected,
    }
}

/// The `backticked` words in a serde message, in order.
fn backticked(s: &str) -> Vec<String> {
    s.split('`')
        .enumerate()
        .filter(|(i, _)| i % 2 == 1)
        .map(|(_, w)| w.to_string())
        .collect()
}

fn did_you_mean(name: &str, expected: &[String]) -> Option<String> {
    let refs: Vec<&str> = expected.iter().map(String::as_str).collect();
    closest(name, &refs).map(|c| format!("did you mean `{c}`?"))
}

/// Builds the diagnostic for a classified serde error.
fn serde_diagnostic(c: &Classified, in_set: bool) -> ConfigError {
    let within = match &c.section {
        Some(s) => format!(" in `{s}`"),
        None => String::new(),
    };
    let name = c.name.clone().unwrap_or_default();
    match c.kind {
        ConfigErrorKind::UnknownField => {
            let mut help = did_you_mean(&name, &c.expected);
            if help.is_none() && in_set {
                help = Some(format!(
                    "to override a hyperparameter of the spec, write `--set set.{name}=...`"
                ));
            }
            if help.is_none() && !c.expected.is_empty() {
                help = Some(format!("expected one of: {}", c.expected.join(", ")));
            }
            ConfigError::new(c.kind, format!("unknown field `{name}`{within}")).with_help(help)
        }
        ConfigErrorKind::UnknownVariant => {
            let help = did_you_mean(&name, &c.expected).or_else(|| {
                (!c.expected.is_empty())
                    .then(|| format!("expected one of: {}", c.expected.join(", ")))
            });
            ConfigError::new(c.kind, format!("unknown value `{name}`{within}")).with_help(help)
        }
        ConfigErrorKind::MissingField => {
            ConfigError::new(c.kind, format!("missing field `{name}`{within}"))
        }
        _ => {
            let rest = ["invalid type: ", "invalid value: "]
                .iter()
                .find_map(|p| c.bare.strip_prefix(p));
            match (rest, &c.section) {
                (Some(rest), Some(s)) => {
                    ConfigError::new(c.kind, format!("invalid value for `{s}`: {rest}"))
                }
                _ => ConfigError::new(c.kind, c.bare.clone()),
            }
        }
    }
}

fn label_for(c: &Classified) -> String {
    match c.kind {
        ConfigErrorKind::UnknownField => "unknown field".to_string(),
        ConfigErrorKind::UnknownVariant => "not an allowed value".to_string(),
        ConfigErrorKind::MissingField => match &c.section {
            Some(_) => format!(
                "this section has no `{}`",
                c.name.as_deref().unwrap_or_default()
            ),
            None => format!(
                "the run config has no `{}`",
                c.name.as_deref().unwrap_or_default()
            ),
        },
        _ => match c.bare.find("expected ") {
            Some(pos) => c.bare[pos..].to_string(),
            None => "here".to_string(),
        },
    }
}

// ---------------------------------------------------------------------------------------------
// `--set` overrides
// ---------------------------------------------------------------------------------------------

/// One `--set path.to.field=value` argument.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The argument as given.
    pub arg: String,
    /// The dotted path, split.
    pub path: Vec<String>,
    /// The value text after `=`, parsed as a YAML scalar when applied.
    pub value: String,
    /// Byte range of each path segment in `arg`.
    segment_spans: Vec<(usize, usize)>,
}

impl Override {
    /// Parses `a.b.c=value`.
    pub fn parse(arg: &str) -> Result<Override, ConfigError> {
        let src = SourceText {
            name: "--set".to_string(),
            text: arg.to_string(),
        };
        let Some(eq) = arg.find('=') else {
            return Err(ConfigError::new(
                ConfigErrorKind::SetSyntax,
                format!("`--set {arg}` has no `=`"),
            )
            .at(
                &src,
                Some(SourceSpan::new(0.into(), arg.len())),
                "expected `path=value`",
            )
            .with_help(Some("write `--set optimizer.lr=3e-4`".to_string())));
        };
        let mut path = Vec::new();
        let mut segment_spans = Vec::new();
        let mut start = 0;
        for seg in arg[..eq].split('.') {
            let trimmed = seg.trim();
            if trimmed.is_empty() {
                return Err(ConfigError::new(
                    ConfigErrorKind::SetSyntax,
                    format!("`--set {arg}` has an empty path segment"),
                )
                .at(
                    &src,
                    Some(SourceSpan::new(start.into(), seg.len())),
                    "empty name",
                )
                .with_help(Some("write `--set optimizer.lr=3e-4`".to_string())));
            }
            let lead = seg.len() - seg.trim_start().len();
            segment_spans.push((start + lead, trimmed.len()));
            path.push(trimmed.to_string());
            start += seg.len() + 1;
        }
        Ok(Override {
            arg: arg.to_string(),
            path,
            value: arg[eq + 1..].to_string(),
            segment_spans,
        })
    }

    fn source(&self) -> SourceText {
        SourceText {
            name: "--set".to_string(),
            text: self.arg.clone(),
        }
    }

    fn value_span(&self) -> SourceSpan {
        let eq = self.arg.len() - self.value.len();
        SourceSpan::new(eq.into(), self.value.len())
    }

    fn segment_span(&self, index: usize) -> SourceSpan {
        let (s, l) = self.segment_spans[index.min(self.segment_spans.len() - 1)];
        SourceSpan::new(s.into(), l)
    }

    /// The span of the path segment named `name`, searching from the end.
    fn span_of_segment(&self, name: &str) -> Option<SourceSpan> {
        self.path
            .iter()
            .rposition(|s| s == name)
            .map(|i| self.segment_span(i))
    }
}

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

/// Where a config came from: its YAML text and the overrides applied to it.
#[derive(Debug, Clone, Default)]
struct Origin(Option<Arc<OriginData>>);

#[derive(Debug)]
struct OriginData {
    yaml: SourceText,
    overrides: Vec<Override>,
}

// Two configs are equal when their settings are; where they came from does not matter.
impl PartialEq for Origin {
    fn eq(&self, _: &Origin) -> bool {
        true
    }
}

impl RunConfig {
    /// Reads, overrides, checks and resolves a run config file; also checks that the files it
    /// names exist. `overrides` are raw `--set` arguments (`optimizer.lr=3e-4`).
    pub fn load(path: &Path, overrides: &[String]) -> Result<RunConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                ConfigErrorKind::Io,
                format!("cannot read run config `{}`: {e}", path.display()),
            )
        })?;
        let overrides = overrides
            .iter()
            .map(|a| Override::parse(a))
            .collect::<Result<Vec<_>, _>>()?;
        let dir = path.parent().unwrap_or(Path::new(""));
        let base = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let config = RunConfig::from_yaml(&text, &path.display().to_string(), &base, &overrides)?;
        config.check_files()?;
        Ok(config)
    }

    /// Parses a run config from text. `name` is shown in diagnostics; relative paths are joined
    /// to `base_dir`. Does not touch the file system.
    pub fn from_yaml(
        text: &str,
        name: &str,
        base_dir: &Path,
        overrides: &[Override],
    ) -> Result<RunConfig, ConfigError> {
        let yaml_src = SourceText {
            name: name.to_string(),
            text: text.to_string(),
        };
        let mut tree = yaml::parse_value(text).map_err(|e| {
            let span = e.location.map(|l| yaml_src.span_at(l));
            ConfigError::new(
                ConfigErrorKind::Syntax,
                format!("invalid YAML: {}", e.message),
            )
            .at(&yaml_src, span, "here")
            .with_help(e.context.clone())
        })?;
        if tree.is_null() {
            return Err(
                ConfigError::new(ConfigErrorKind::MissingField, "the run config is empty")
                    .at(&yaml_src, None, "")
                    .with_help(Some(
                        "a run config needs at least `spec`, `model`, `data` and `steps`"
                            .to_string(),
                    )),
            );
        }
        if !matches!(tree, Value::Mapping(_)) {
            let span = Some(SourceSpan::new(0.into(), token_len(text, 0)));
            return Err(ConfigError::new(
                ConfigErrorKind::Type,
                format!(
                    "a run config is a mapping of fields, but this file holds {}",
                    yaml::kind_name(&tree)
                ),
            )
            .at(&yaml_src, span, "expected `field: value` lines"));
        }

        let mut config: RunConfig = if overrides.is_empty() {
            yaml::from_str(text).map_err(|e| located_in_yaml(&yaml_src, &e))?
        } else {
            let original = tree.clone();
            for o in overrides {
                apply_override(&mut tree, o)?;
            }
            match yaml::from_value::<RunConfig>(tree) {
                Ok(c) => c,
                Err(e) => return Err(blame(&yaml_src, original, overrides, &e)),
            }
        };
        config.origin = Origin(Some(Arc::new(OriginData {
            yaml: yaml_src,
            overrides: overrides.to_vec(),
        })));
        config.resolve_paths(base_dir);
        config.validate()?;
        Ok(config)
    }

    /// The config as YAML (every field, paths as resolved); parsing it back gives an equal config.
    pub fn to_yaml(&self) -> String {
        // Only plain data is serialized; serde_yaml fails only on maps with non-string keys or
        // nested enums, which these types do not have.
        yaml::to_string(self).unwrap_or_else(|e| format!("# cannot serialize: {e}\n"))
    }

    /// The learning-rate schedule with defaults filled in.
    pub fn lr_schedule(&self) -> crate::schedule::LrSchedule {
        crate::schedule::LrSchedule::from_config(&self.optimizer, &self.schedule, self.steps)
    }

    /// Tokens consumed per optimizer step.
    pub fn tokens_per_step(&self) -> u64 {
        (self.batch_size as u64) * (self.seq_len as u64) * (self.grad_accum as u64)
    }

    fn resolve_paths(&mut self, base: &Path) {
        let join = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        join(&mut self.spec);
        join(&mut self.out_dir);
        if let Some(p) = &mut self.data.path {
            join(p);
        }
        if let Some(p) = &mut self.data.token_file {
            join(p);
        }
        if let Some(TokenizerConfig::TokenizerJson(p)) = &mut self.data.tokenizer {
            join(p);
        }
        if let Some(p) = &mut self.data.examples {
            join(p);
        }
        if let Some(p) = self.finetune.as_mut().and_then(|f| f.from.as_mut()) {
            join(p);
        }
    }

    /// Checks that the files this config reads exist (spec, data, tokenizer).
    pub fn check_files(&self) -> Result<(), ConfigError> {
        let mut files: Vec<(&[&str], &Path)> = vec![(&["spec"], &self.spec)];
        if let Some(p) = &self.data.path {
            files.push((&["data", "path"], p));
        }
        if let Some(p) = &self.data.token_file {
            files.push((&["data", "token_file"], p));
        }
        if let Some(TokenizerConfig::TokenizerJson(p)) = &self.data.tokenizer {
            files.push((&["data", "tokenizer", "tokenizer_json"], p));
        }
        if let Some(p) = &self.data.examples {
            files.push((&["data", "examples"], p));
        }
        if let Some(p) = self.finetune.as_ref().and_then(|f| f.from.as_ref()) {
            files.push((&["finetune", "from"], p));
        }
        let problems: Vec<ConfigError> = files
            .into_iter()
            .filter(|(_, p)| !p.is_file())
            .map(|(field, p)| {
                self.error_at(
                    field,
                    ConfigErrorKind::MissingFile,
                    format!("file `{}` does not exist", p.display()),
                    "no such file",
                    Some("paths are relative to the run config's folder".to_string()),
                )
            })
            .collect();
        first_with_others(problems)
    }

    /// A diagnostic pointing at field `path` where the user wrote it: the `--set` argument that
    /// set it last, else its line in the YAML file, else the nearest enclosing section present.
    /// For checks made after loading (say, `seq_len` above the model's context).
    pub fn error_at(
        &self,
        path: &[&str],
        kind: ConfigErrorKind,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) -> ConfigError {
        let err = ConfigError::new(kind, message).with_help(help);
        let Some(origin) = &self.origin.0 else {
            return err;
        };
        let path: Vec<String> = path.iter().map(|s| s.to_string()).collect();
        let by_override = origin
            .overrides
            .iter()
            .rev()
            .find(|o| path.starts_with(&o.path));
        if let Some(o) = by_override {
            return err.at(&o.source(), Some(o.value_span()), label);
        }
        for depth in (1..=path.len()).rev() {
            let at_key = depth < path.len();
            if let Some(loc) = yaml::locate(&origin.yaml.text, &path[..depth], at_key) {
                let label = label.into();
                let label = if at_key {
                    format!(
                        "{label} (`{}` is not set; this is its section)",
                        path.join(".")
                    )
                } else {
                    label
                };
                return err.at(&origin.yaml, Some(origin.yaml.span_at(loc)), label);
            }
        }
        err.at(&origin.yaml, None, label)
    }

    /// Range and consistency checks that serde's types cannot express.
    fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Vec::new();
        let mut bad = |path: &[&str], message: String, label: &str, help: Option<&str>| {
            problems.push(self.error_at(
                path,
                ConfigErrorKind::Invalid,
                message,
                label,
                help.map(str::to_string),
            ));
        };
        let positive = [
            (&["batch_size"][..], self.batch_size as u64),
            (&["seq_len"][..], self.seq_len as u64),
            (&["grad_accum"][..], self.grad_accum as u64),
            (&["steps"][..], self.steps),
            (&["log_every"][..], self.log_every),
            (&["eval", "batches"][..], self.eval.batches as u64),
            (&["checkpoint", "keep"][..], self.checkpoint.keep as u64),
        ];
        for (path, v) in positive {
            if v == 0 {
                bad(
                    path,
                    format!("`{}` must be at least 1", path.join(".")),
                    "is 0",
                    None,
                );
            }
        }
        if self.threads == Some(0) {
            bad(
                &["threads"],
                "`threads` must be at least 1".to_string(),
                "is 0",
                Some("leave `threads` out to use every core"),
            );
        }
        if self.model.trim().is_empty() {
            bad(&["model"], "`model` is empty".to_string(), "empty", None);
        }
        if !(self.grad_clip.is_finite() && self.grad_clip >= 0.0) {
            bad(
                &["grad_clip"],
                format!("`grad_clip` must be >= 0, got {}", self.grad_clip),
                "out of range",
                Some("use 0 to disable clipping"),
            );
        }
        for (key, value) in &self.set {
            if key.trim().is_empty() {
                bad(
                    &["set"],
                    "`set` has an empty name".to_string(),
                    "here",
                    None,
                );
            }
            if let HyperValue::Float(v) = value {
                if !v.is_finite() {
                    bad(
                        &["set", key],
                        format!("`set.{key}` is not a finite number"),
                        "not finite",
                        None,
                    );
                }
            }
        }

        for (key, value) in &self.objective_args {
            if key.trim().is_empty() {
                bad(
                    &["objective_args"],
                    "`objective_args` has an empty name".to_string(),
                    "here",
                    None,
                );
            }
            if let HyperValue::Float(v) = value {
                if !v.is_finite() {
                    bad(
                        &["objective_args", key],
                        format!("`objective_args.{key}` is not a finite number"),
                        "not finite",
                        None,
                    );
                }
            }
        }

        if let Some(f) = &self.finetune {
            if !f.lora_targets.is_empty() && f.lora_rank == 0 {
                bad(
                    &["finetune", "lora_rank"],
                    "`lora_rank` must be at least 1".to_string(),
                    "out of range",
                    None,
                );
            }
            if !f.adapter_targets.is_empty() && f.adapter_dim == 0 {
                bad(
                    &["finetune", "adapter_dim"],
                    "`adapter_dim` must be at least 1".to_string(),
                    "out of range",
                    None,
                );
            }
            if let Some(g) = &f.gradual_unfreezing {
                if g.every == 0 {
                    bad(
                        &["finetune", "gradual_unfreezing", "every"],
                        "`every` must be at least 1 step".to_string(),
                        "out of range",
                        None,
                    );
                }
                if g.layers_per_episode == 0 {
                    bad(
                        &["finetune", "gradual_unfreezing", "layers_per_episode"],
                        "`layers_per_episode` must be at least 1".to_string(),
                        "out of range",
                        None,
                    );
                }
            }
            if !(f.lora_alpha.is_finite() && f.lora_alpha > 0.0) {
                bad(
                    &["finetune", "lora_alpha"],
                    format!("`lora_alpha` must be > 0, got {}", f.lora_alpha),
                    "out of range",
                    None,
                );
            }
        }

        // Data.
        let d = &self.data;
        match (&d.path, &d.token_file) {
            (Some(_), Some(_)) => bad(
                &["data", "token_file"],
                "`data` has both `path` and `token_file`".to_string(),
                "second data source",
                Some("give a text file in `path` or a prepared token file in `token_file`"),
            ),
            (None, None) => bad(
                &["data"],
                "`data` needs `path` (a text file) or `token_file` (a prepared token file)"
                    .to_string(),
                "no data source",
                None,
            ),
            (None, Some(_)) => {
                if d.tokenizer.is_some() {
                    bad(
                        &["data", "tokenizer"],
                        "`tokenizer` cannot be set with `token_file`".to_string(),
                        "not used",
                        Some("a token file carries the tokenizer it was prepared with"),
                    );
                }
                if d.val_fraction.is_some() {
                    bad(
                        &["data", "val_fraction"],
                        "`val_fraction` cannot be set with `token_file`".to_string(),
                        "not used",
                        Some("a token file carries the split it was prepared with"),
                    );
                }
            }
            (Some(_), None) => {}
        }
        if let Some(f) = d.val_fraction {
            if !(f.is_finite() && (0.0..1.0).contains(&f)) {
                bad(
                    &["data", "val_fraction"],
                    format!("`val_fraction` must be in [0, 1), got {f}"),
                    "out of range",
                    None,
                );
            }
        }
        let on_examples = ["seq2seq", "multiple_choice"].contains(&self.objective.as_str());
        match (on_examples, d.examples.is_some()) {
            (true, false) => bad(
                &["objective"],
                format!(
                    "`objective: {}` trains on examples: `data.examples` is missing",
                    self.objective
                ),
                "needs data.examples",
                Some("give a JSONL file of examples in `data.examples`"),
            ),
            (false, true) => bad(
                &["data", "examples"],
                format!(
                    "`data.examples` is for `objective: seq2seq` or `multiple_choice`, not `{}`",
                    self.objective
                ),
                "not used",
                None,
            ),
            _ => {}
        }

        // Optimizer.
        let o = &self.optimizer;
        if !(o.lr.is_finite() && o.lr > 0.0) {
            bad(
                &["optimizer", "lr"],
                format!("`optimizer.lr` must be > 0, got {}", o.lr),
                "out of range",
                None,
            );
        }
        let unit = |v: Option<f64>| v.is_none_or(|v| v.is_finite() && (0.0..1.0).contains(&v));
        let (foreign, kind): (&[(&str, bool)], &str) = match o.kind {
            OptimizerKind::Adamw => (
                &[
                    ("momentum", o.momentum.is_some()),
                    ("nesterov", o.nesterov.is_some()),
                ],
                "adamw",
            ),
            OptimizerKind::Sgd => (
                &[
                    ("beta1", o.beta1.is_some()),
                    ("beta2", o.beta2.is_some()),
                    ("eps", o.eps.is_some()),
                ],
                "sgd",
            ),
        };
        for (field, present) in foreign {
            if *present {
                let help = match o.kind {
                    OptimizerKind::Adamw => "momentum and nesterov are SGD settings",
                    OptimizerKind::Sgd => "beta1, beta2 and eps are AdamW settings",
                };
                bad(
                    &["optimizer", field],
                    format!("`optimizer.{field}` does not apply to `kind: {kind}`"),
                    "not used by this optimizer",
                    Some(help),
                );
            }
        }
        for (field, v) in [
            ("beta1", o.beta1),
            ("beta2", o.beta2),
            ("momentum", o.momentum),
        ] {
            if !unit(v) {
                bad(
                    &["optimizer", field],
                    format!("`optimizer.{field}` must be in [0, 1)"),
                    "out of range",
                    None,
                );
            }
        }
        if let Some(eps) = o.eps {
            if !(eps.is_finite() && eps > 0.0) {
                bad(
                    &["optimizer", "eps"],
                    format!("`optimizer.eps` must be > 0, got {eps}"),
                    "out of range",
                    None,
                );
            }
        }
        if let Some(wd) = o.weight_decay {
            if !(wd.is_finite() && wd >= 0.0) {
                bad(
                    &["optimizer", "weight_decay"],
                    format!("`optimizer.weight_decay` must be >= 0, got {wd}"),
                    "out of range",
                    None,
                );
            }
        }

        // Schedule.
        let s = &self.schedule;
        if let Some(min_lr) = s.min_lr {
            if !(min_lr.is_finite() && min_lr >= 0.0 && min_lr <= o.lr) {
                bad(
                    &["schedule", "min_lr"],
                    format!(
                        "`schedule.min_lr` must be in [0, optimizer.lr = {}], got {min_lr}",
                        o.lr
                    ),
                    "out of range",
                    None,
                );
            }
        }
        let decay_steps = s.decay_steps.unwrap_or(self.steps);
        if s.decay != Decay::Constant && decay_steps <= s.warmup {
            let at: &[&str] = if s.decay_steps.is_some() {
                &["schedule", "decay_steps"]
            } else {
                &["schedule", "warmup"]
            };
            bad(
                at,
                format!(
                    "the decay must end after warmup: decay_steps = {decay_steps}, warmup = {}",
                    s.warmup
                ),
                "decay ends before warmup does",
                Some("lower `warmup`, raise `decay_steps`, or use `decay: constant`"),
            );
        }
        first_with_others(problems)
    }
}

fn first_with_others(mut problems: Vec<ConfigError>) -> Result<(), ConfigError> {
    if problems.is_empty() {
        return Ok(());
    }
    // Report in reading order: the file's lines first, top to bottom, then `--set` arguments.
    problems.sort_by_key(|p| {
        let in_set = p.0.src.as_ref().is_some_and(|s| s.name() == "--set");
        (in_set, p.0.span.map_or(usize::MAX, |s| s.offset()))
    });
    let mut first = problems.remove(0);
    first.0.related = problems;
    Err(first)
}

fn apply_override(tree: &mut Value, o: &Override) -> Result<(), ConfigError> {
    yaml::set_path(tree, &o.path, yaml::parse_scalar(&o.value)).map_err(|e| match e {
        yaml::SetPathError::NotAMapping { depth, found } => {
            let parent = o.path[..depth].join(".");
            ConfigError::new(
                ConfigErrorKind::SetPath,
                format!(
                    "`--set {}`: `{parent}` is {found}, which has no fields",
                    o.arg
                ),
            )
            .at(
                &o.source(),
                Some(o.segment_span(depth)),
                format!("`{parent}` has no field `{}`", o.path[depth]),
            )
        }
    })
}

/// Turns a serde error on the file's text into a diagnostic pointing into the file.
fn located_in_yaml(src: &SourceText, e: &yaml::YamlError) -> ConfigError {
    let c = classify(&e.message);
    let span = e.location.map(|l| src.span_at(l));
    serde_diagnostic(&c, false).at(src, span, label_for(&c))
}

/// Finds who caused a deserialization error on the overridden tree: the file itself, or the first
/// `--set` whose application reproduces the same message.
fn blame(
    src: &SourceText,
    original: Value,
    overrides: &[Override],
    err: &yaml::YamlError,
) -> ConfigError {
    let c = classify(&err.message);
    if let Err(file_err) = yaml::from_str::<RunConfig>(&src.text) {
        if classify(&file_err.message).bare == c.bare {
            return located_in_yaml(src, &file_err);
        }
    }
    let mut tree = original;
    for o in overrides {
        if apply_override(&mut tree, o).is_err() {
            break;
        }
        if let Err(e) = yaml::from_value::<RunConfig>(tree.clone()) {
            if classify(&e.message).bare == c.bare {
                // Values have no path in serde_yaml's errors; the override's path says it.
                let mut c = classify(&e.message);
                c.section = match (&c.kind, &c.name) {
                    (ConfigErrorKind::UnknownField, Some(n)) => o
                        .path
                        .iter()
                        .rposition(|s| s == n)
                        .filter(|&i| i > 0)
                        .map(|i| o.path[..i].join(".")),
                    _ => Some(o.path.join(".")),
                };
                let in_set_root = c.section.is_none();
                let span = match (&c.kind, &c.name) {
                    (ConfigErrorKind::UnknownField, Some(n)) => o.span_of_segment(n),
                    (ConfigErrorKind::MissingField, _) => Some(o.segment_span(0)),
                    _ => None,
                }
                .unwrap_or_else(|| o.value_span());
                let diag = serde_diagnostic(&c, in_set_root);
                return diag.at(&o.source(), Some(span), label_for(&c));
            }
        }
    }
    serde_diagnostic(&c, false).at(src, None, "")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_reads_serde_messages() {
        let c = classify("optimizer: unknown field `lrr`, expected one of `kind`, `lr`, `eps`");
        assert_eq!(c.kind, ConfigErrorKind::UnknownField);
        assert_eq!(c.section.as_deref(), Some("optimizer"));
        assert_eq!(c.name.as_deref(), Some("lrr"));
        assert_eq!(c.expected, vec!["kind", "lr", "eps"]);
        let c = classify("invalid type: string \"x\", expected usize");
        assert_eq!(c.kind, ConfigErrorKind::Type);
        assert_eq!(c.section, None);
        assert!(c.expected.is_empty());
    }

    #[test]
    fn suggestions_pick_the_nearest_name() {
        assert_eq!(closest("lrr", &["kind", "lr", "eps"]), Some("lr"));
        assert_eq!(
            closest("wieght_decay", &["weight_decay", "lr"]),
            Some("weight_decay")
        );
        assert_eq!(closest("zzzzzz", &["kind", "lr"]), None);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn token_len_stops_at_yaml_punctuation() {
        assert_eq!(token_len("lr: 3e-4  # peak\n", 4), 4);
        assert_eq!(token_len("lrr: 1\n", 0), 3);
        assert_eq!(token_len("{a: 1, b: 2}\n", 0), 12);
        assert_eq!(token_len("\"a, b\" # x\n", 0), 6);
        assert_eq!(token_len("{kind: adamw, lr: x}", 18), 1);
    }
}
