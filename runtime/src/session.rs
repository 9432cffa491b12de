//! From a run config to runnable programs: load the spec, instantiate the named model with the
//! config's objective, build the training step, bind the run dims, and hand each program to an
//! executor.
//!
//! Three programs share one set of parameter names, so state moves between them by name:
//! - `train`: forward + loss + backward + clipping + optimizer update, batch
//!   `batch_size × grad_accum` (gradient accumulation is a larger batch: the mean loss over
//!   `grad_accum` equal micro-batches is the mean over their rows), inputs `tokens`, `lr`, `step`;
//! - `eval`: forward + loss without dropout at batch `batch_size` (loss estimates, `kiln eval`);
//! - `logits`: the model alone at batch 1 over a window of `seq_len` tokens (generation and task
//!   scoring; shorter contexts are right-padded, which a causal mask makes invisible).
//!
//! Two choices live here and nowhere else: [`prepare`] + [`compile_step`] (attention recognition,
//! then `train::training_step`, then the pass pipeline) and [`make_backend`] (which executor runs
//! a program).

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use kiln_compiler::ir::{Bindings, Graph, IrError};
use kiln_compiler::sema::{self, Request, SemaDiagnostic, Value, Workspace};
use kiln_compiler::train::{self as ctrain, DecayRule, StepOptions};
use miette::Diagnostic;

use crate::backend::{Backend, BackendError};
use crate::checkpoint::{spec_hash, CheckpointError};
use crate::config::{
    ConfigError, ConfigErrorKind, Device, HyperValue, Optimizer, Precision, RunConfig,
};
use crate::data::DataError;
use crate::evaltasks::{EvalError, TaskError};
use crate::interp_backend::InterpBackend;
use crate::metrics::MetricsError;
use crate::objectives::{ObjectiveError, ObjectiveKind};
use crate::sample::{GenerateError, SampleError};
use crate::tokenizer::TokenizerError;

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

/// Why a train, eval or generate run could not start or stopped with an error.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum RunError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Objective(#[from] ObjectiveError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Tokenizer(#[from] TokenizerError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Sample(#[from] SampleError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Generate(#[from] GenerateError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Task(#[from] TaskError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    TaskEval(#[from] EvalError),
    #[error("spec `{path}` has {count} error{}", if *.count == 1 { "" } else { "s" })]
    #[diagnostic(code(run::spec))]
    Spec {
        path: PathBuf,
        count: usize,
        #[related]
        diagnostics: Vec<SemaDiagnostic>,
    },
    #[error("cannot read `{path}`: {reason}")]
    #[diagnostic(code(run::io))]
    Io { path: PathBuf, reason: String },
    #[error("cannot build the {program} program: {source}")]
    #[diagnostic(code(run::compile))]
    Compile {
        program: &'static str,
        source: Box<IrError>,
    },
    #[error("the {program} program failed: {source}")]
    #[diagnostic(code(run::backend))]
    Backend {
        program: &'static str,
        source: BackendError,
    },
    #[error("the `{name}` executor is not available yet")]
    #[diagnostic(
        code(run::executor),
        help("use `--executor interp` (the reference interpreter: slow, for tiny models)")
    )]
    ExecutorUnavailable { name: String },
    #[error("`{dir}` already holds a run (`{found}`)")]
    #[diagnostic(
        code(run::out_dir_in_use),
        help("pass `--resume` to continue it, or `--out DIR` to start a new run elsewhere")
    )]
    OutDirInUse { dir: PathBuf, found: String },
    #[error("the checkpoint was trained with a different tokenizer ({found}) than this data gives ({expected})")]
    #[diagnostic(
        code(run::tokenizer_mismatch),
        help("use the data (and tokenizer) the checkpoint was trained on")
    )]
    TokenizerMismatch { expected: String, found: String },
    #[error("checkpoint `{path}` has no optimizer state `{name}`")]
    #[diagnostic(
        code(run::optimizer_state),
        help("resume with the optimizer the checkpoint was trained with")
    )]
    MissingOptimizerState { path: PathBuf, name: String },
    #[error("{message}")]
    #[diagnostic(code(run::usage))]
    Usage {
        message: String,
        #[help]
        help: Option<String>,
    },
}

impl RunError {
    pub(crate) fn backend(program: &'static str) -> impl Fn(BackendError) -> RunError {
        move |source| RunError::Backend { program, source }
    }
}

// ---------------------------------------------------------------------------------------------
// Executors
// ---------------------------------------------------------------------------------------------

/// What executes a compiled program.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Executor {
    /// The reference interpreter ([`InterpBackend`]): slow and obviously right.
    Interp,
    /// The fused CPU program (`cpu::CpuBackend`).
    Cpu,
}

impl Executor {
    /// The executor used when none is named: the fused CPU program.
    pub const DEFAULT: Executor = Executor::Cpu;

    pub fn name(self) -> &'static str {
        match self {
            Executor::Interp => "interp",
            Executor::Cpu => "cpu",
        }
    }
}

impl fmt::Display for Executor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Executor {
    type Err = String;
    fn from_str(s: &str) -> Result<Executor, String> {
        match s {
            "interp" => Ok(Executor::Interp),
            "cpu" => Ok(Executor::Cpu),
            other => Err(format!(
                "unknown executor `{other}` (expected `interp` or `cpu`)"
            )),
        }
    }
}

/// A graph with its run dims bound.
#[derive(Debug, Clone)]
pub struct Program {
    pub graph: Graph,
    pub bindings: Bindings,
}

/// Builds the executor for `program`, its persistent state initialised from `seed` (the init
/// every backend shares: `ir::rng::init_element`). The only place that picks an executor.
pub fn make_backend(
    executor: Executor,
    program: &Program,
    seed: u64,
    threads: Option<usize>,
) -> Result<Box<dyn Backend>, RunError> {
    // The interpreter is single-threaded; `threads` is for the CPU executor.
    let _ = threads;
    match executor {
        Executor::Interp => Ok(Box::new(
            InterpBackend::new(&program.graph, &program.bindings, seed)
                .map_err(RunError::backend("model"))?,
        )),
        Executor::Cpu => Ok(Box::new(
            crate::cpu::CpuBackend::from_graph(&program.graph, &program.bindings, seed)
                .map_err(RunError::backend("model"))?,
        )),
    }
}

/// What every program's forward graph goes through before it is differentiated or run (each
/// `sdpa` composition becomes one `attention` node; softmax maxima get a stop-gradient), and the
/// training step through the pass pipeline: the compiler's definitions, which `kiln plan` uses
/// to plan exactly the program this runtime runs.
pub use kiln_compiler::plan::cpu::{compile_step, prepare};

// ---------------------------------------------------------------------------------------------
// Persistent state names
// ---------------------------------------------------------------------------------------------

/// What a persistent tensor of a training program is, by its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateName<'a> {
    Param(&'a str),
    /// AdamW's first moment or SGD's momentum buffer of a parameter.
    FirstMoment(&'a str),
    /// AdamW's second moment of a parameter.
    SecondMoment(&'a str),
    /// A decode step's key/value cache (`kv_cache.N.k`): scratch that persists between tokens,
    /// never saved or loaded.
    Cache(&'a str),
}

impl<'a> StateName<'a> {
    /// Classifies `opt.m.X`, `opt.buf.X` (SGD momentum, stored with the first moments),
    /// `opt.v.X`, key/value caches, and parameters.
    pub fn parse(name: &'a str) -> StateName<'a> {
        if name.starts_with(kiln_compiler::decode::CACHE_PREFIX) {
            StateName::Cache(name)
        } else if let Some(p) = name.strip_prefix("opt.m.") {
            StateName::FirstMoment(p)
        } else if let Some(p) = name.strip_prefix("opt.buf.") {
            StateName::FirstMoment(p)
        } else if let Some(p) = name.strip_prefix("opt.v.") {
            StateName::SecondMoment(p)
        } else {
            StateName::Param(name)
        }
    }
}

/// Parameter shapes of a backend, by name (optimizer state left out).
pub fn param_shapes(backend: &dyn Backend) -> BTreeMap<String, Vec<usize>> {
    backend
        .state_shapes()
        .into_iter()
        .filter(|(n, _)| matches!(StateName::parse(n), StateName::Param(_)))
        .collect()
}

/// Copies every parameter `to` has from `from` (train → eval before an evaluation).
pub fn copy_params(from: &dyn Backend, to: &mut dyn Backend) -> Result<(), RunError> {
    for (name, _) in to.state_shapes() {
        if let StateName::Param(_) = StateName::parse(&name) {
            let t = from.get_state(&name).map_err(RunError::backend("train"))?;
            to.set_state(&name, &t).map_err(RunError::backend("eval"))?;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The spec and its programs
// ---------------------------------------------------------------------------------------------

/// A run config's spec, loaded and checked for syntax.
pub struct LoadedSpec {
    pub path: PathBuf,
    pub text: String,
    pub hash: String,
    workspace: Workspace,
    /// The config's `set:` overrides as sema values.
    overrides: Vec<(String, Value)>,
}

impl fmt::Debug for LoadedSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedSpec")
            .field("path", &self.path)
            .field("hash", &self.hash)
            .finish()
    }
}

fn hyper_value(v: &HyperValue) -> Value {
    match v {
        HyperValue::Int(n) => Value::Int(kiln_compiler::ir::Dim::c(*n)),
        HyperValue::Float(x) => Value::Float(*x),
        HyperValue::Bool(b) => Value::Bool(*b),
        // Strings may name masks, dtypes and other constants (`mask: causal`).
        HyperValue::Str(s) => sema::parse_value(s),
    }
}

/// Reads the spec a config names and checks its syntax.
pub fn load_spec(config: &RunConfig) -> Result<LoadedSpec, RunError> {
    let path = config.spec.clone();
    let bytes = std::fs::read(&path).map_err(|e| RunError::Io {
        path: path.clone(),
        reason: e.to_string(),
    })?;
    let text = String::from_utf8(bytes).map_err(|e| RunError::Io {
        path: path.clone(),
        reason: format!(
            "not UTF-8 text (invalid byte at offset {})",
            e.utf8_error().valid_up_to()
        ),
    })?;
    load_spec_text(config, &text)
}

/// Checks the syntax of spec `text` (the file `config.spec` names, or a copy of it that a
/// checkpoint carries).
pub fn load_spec_text(config: &RunConfig, text: &str) -> Result<LoadedSpec, RunError> {
    let path = config.spec.clone();
    let mut workspace = Workspace::new();
    workspace.add_file(&path.display().to_string(), text);
    let errors: Vec<SemaDiagnostic> = workspace
        .load_diagnostics
        .iter()
        .filter(|d| d.is_error())
        .cloned()
        .collect();
    if !errors.is_empty() {
        return Err(spec_error(&path, errors));
    }
    Ok(LoadedSpec {
        text: text.to_string(),
        hash: spec_hash(text),
        path,
        workspace,
        overrides: config
            .set
            .iter()
            .map(|(k, v)| (k.clone(), hyper_value(v)))
            .collect(),
    })
}

fn spec_error(path: &Path, diagnostics: Vec<SemaDiagnostic>) -> RunError {
    RunError::Spec {
        path: path.to_path_buf(),
        count: diagnostics.iter().filter(|d| d.is_error()).count().max(1),
        diagnostics,
    }
}

/// Objectives whose batches `kiln train` can build from a token stream.
fn stream_objective(config: &RunConfig) -> Result<ObjectiveKind, RunError> {
    let unsupported = |help: &str| {
        config.error_at(
            &["objective"],
            ConfigErrorKind::Invalid,
            format!(
                "objective `{}` cannot be trained by `kiln train` yet",
                config.objective
            ),
            "not supported",
            Some(help.to_string()),
        )
    };
    match config.objective.parse::<ObjectiveKind>() {
        Ok(
            k @ (ObjectiveKind::CausalLm | ObjectiveKind::PrefixLm | ObjectiveKind::SpanCorruption),
        ) => Ok(k),
        // Their rows come from `data.examples` (the config requires them).
        Ok(k @ (ObjectiveKind::Seq2Seq | ObjectiveKind::MultipleChoice)) => Ok(k),
        Err(_) => Err(unsupported(
            "known objectives: causal_lm, prefix_lm, span_corruption, seq2seq, multiple_choice",
        )
        .into()),
    }
}

/// Checks the settings the interpreter and the loops cannot honour.
fn check_runnable(config: &RunConfig) -> Result<(), RunError> {
    if config.device != Device::Cpu {
        return Err(config
            .error_at(
                &["device"],
                ConfigErrorKind::Invalid,
                "`device: cuda` is not available in this build",
                "not available",
                Some("use `device: cpu`".to_string()),
            )
            .into());
    }
    if config.precision != Precision::F32 {
        return Err(config
            .error_at(
                &["precision"],
                ConfigErrorKind::Invalid,
                "only `precision: f32` can be trained yet",
                "not available",
                Some("use `precision: f32`".to_string()),
            )
            .into());
    }
    if let Optimizer::Sgd { nesterov: true, .. } = config.optimizer.resolved() {
        return Err(config
            .error_at(
                &["optimizer", "nesterov"],
                ConfigErrorKind::Invalid,
                "Nesterov momentum is not implemented in the compiled optimizer yet",
                "not available",
                Some("use `nesterov: false`".to_string()),
            )
            .into());
    }
    Ok(())
}

/// The training step's options from the run config. Weight decay follows nanoGPT: every
/// parameter of two or more dimensions decays, embeddings included; biases and norm scales don't.
pub fn step_options(config: &RunConfig) -> StepOptions {
    let optimizer = match config.optimizer.resolved() {
        Optimizer::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
            ..
        } => ctrain::Optimizer::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
        },
        Optimizer::Sgd {
            momentum,
            weight_decay,
            ..
        } => ctrain::Optimizer::Sgd {
            momentum,
            weight_decay,
        },
    };
    StepOptions {
        optimizer,
        decay: DecayRule { embeddings: true },
        clip: (config.grad_clip > 0.0).then_some(config.grad_clip),
    }
}

/// The three programs of a run.
#[derive(Debug)]
pub struct CompiledRun {
    pub spec_path: PathBuf,
    pub spec_hash: String,
    pub objective: ObjectiveKind,
    /// Output width of the model (its vocabulary).
    pub vocab: usize,
    /// Tokens the logits program reads (`seq_len`; an encoder-decoder's decoder length).
    pub window: usize,
    pub train: Option<Program>,
    pub eval: Program,
    pub logits: Program,
}

/// Which programs to build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Programs {
    /// Train, eval and logits (`kiln train`).
    All,
    /// Eval and logits (`kiln eval`, `kiln generate`).
    Inference,
}

impl LoadedSpec {
    fn instantiate(
        &self,
        config: &RunConfig,
        objective: Option<&str>,
        training: bool,
    ) -> Result<Graph, RunError> {
        let req = Request {
            config: config.model.clone(),
            overrides: self.overrides.clone(),
            objective: objective.map(|o| {
                let args = config
                    .objective_args
                    .iter()
                    .map(|(k, v)| (k.clone(), hyper_value(v)))
                    .collect();
                (o.to_string(), args)
            }),
            training,
        };
        let mut graph = self
            .workspace
            .instantiate(&req)
            .map(|i| i.graph)
            .map_err(|ds| spec_error(&self.path, ds))?;
        if let Some(f) = &config.finetune {
            crate::finetune::transform(config, f, &mut graph)?;
        }
        prepare(graph).map_err(|source| RunError::Compile {
            program: if training { "train" } else { "eval" },
            source: Box::new(source),
        })
    }
}

/// Binds `graph` at `batch`/`seq` and checks that it binds (a `seq_len` beyond the model's
/// context fails here, pointed at `seq_len`).
fn bind(
    config: &RunConfig,
    graph: Graph,
    batch: usize,
    seq: usize,
    program: &'static str,
) -> Result<Program, RunError> {
    let mut bindings = Bindings::new()
        .with("batch", batch as i64)
        .with("seq", seq as i64);
    for (name, value) in objective_dims(config)? {
        bindings = bindings.with(name, value);
    }
    match graph.bind(&bindings) {
        Ok(_) => Ok(Program { graph, bindings }),
        Err(e) => Err(config
            .error_at(
                &["seq_len"],
                ConfigErrorKind::Invalid,
                format!("the {program} program does not fit seq_len {seq}: {e}"),
                "does not fit the model",
                Some("`seq_len` must be at most the model's context".to_string()),
            )
            .into()),
    }
}

/// Checks the names the run config gives the spec (`model`, the keys of `set:`), so a typo is
/// reported at its line in the YAML rather than inside the spec.
fn check_model_names(config: &RunConfig, spec: &LoadedSpec) -> Result<(), RunError> {
    let hparams = match spec.workspace.config_hparams(&config.model, None) {
        Ok(h) => h,
        Err(d) if d.code == "sema::unknown_config" => {
            return Err(config
                .error_at(
                    &["model"],
                    ConfigErrorKind::Invalid,
                    format!(
                        "`{}` is not a config or model of `{}`",
                        config.model,
                        spec.path.display()
                    ),
                    "not in the spec",
                    d.help.clone(),
                )
                .into())
        }
        Err(d) => return Err(spec_error(&spec.path, vec![d])),
    };
    let names: Vec<&str> = hparams.iter().map(|(n, _)| n.as_str()).collect();
    for key in config.set.keys() {
        if !names.contains(&key.as_str()) {
            let help = sema::diag::did_you_mean(key, names.iter().copied())
                .map(|s| format!("did you mean `{s}`?"))
                .or_else(|| Some(format!("hyperparameters: {}", names.join(", "))));
            return Err(config
                .error_at(
                    &["set", key],
                    ConfigErrorKind::UnknownField,
                    format!("model `{}` has no hyperparameter `{key}`", config.model),
                    "not a hyperparameter",
                    help,
                )
                .into());
        }
    }
    Ok(())
}

/// Compiles the programs of a run config.
pub fn compile_run(
    config: &RunConfig,
    spec: &LoadedSpec,
    which: Programs,
) -> Result<CompiledRun, RunError> {
    check_runnable(config)?;
    check_model_names(config, spec)?;
    let objective = stream_objective(config)?;
    let (b, t) = (config.batch_size, config.seq_len);
    let train = match which {
        Programs::All => Some(compile_train(config, spec)?),
        Programs::Inference => None,
    };
    let eval = bind(
        config,
        spec.instantiate(config, Some(&config.objective), false)?,
        b,
        t,
        "eval",
    )?;
    let logits = compile_logits(config, spec, 1, t)?;
    let vocab = logits_width(&logits).ok_or_else(|| RunError::Compile {
        program: "logits",
        source: Box::new(IrError::NotFound {
            kind: "output",
            name: "logits".to_string(),
        }),
    })?;
    // The decoder's length for an encoder-decoder (its `tgt`), else `seq_len`.
    let window = kiln_compiler::decode::token_input(&logits.graph)
        .and_then(|name| logits.graph.find_input(name))
        .and_then(|v| logits.graph.shape(v).get(1).cloned())
        .and_then(|d| d.bind(&logits.bindings).ok())
        .and_then(|d| usize::try_from(d).ok())
        .unwrap_or(t);
    Ok(CompiledRun {
        spec_path: spec.path.clone(),
        spec_hash: spec.hash.clone(),
        objective,
        vocab,
        window,
        train,
        eval,
        logits,
    })
}

/// The training step of a run config (forward, backward, optimizer), bound at its batch.
pub fn compile_train(config: &RunConfig, spec: &LoadedSpec) -> Result<Program, RunError> {
    let forward = spec.instantiate(config, Some(&config.objective), true)?;
    let step =
        compile_step(&forward, &step_options(config)).map_err(|source| RunError::Compile {
            program: "train",
            source: Box::new(source),
        })?;
    bind(
        config,
        step,
        config.batch_size * config.grad_accum,
        config.seq_len,
        "train",
    )
}

/// The model alone (output `logits`) at `batch` rows of `seq` tokens, without dropout.
pub fn compile_logits(
    config: &RunConfig,
    spec: &LoadedSpec,
    batch: usize,
    seq: usize,
) -> Result<Program, RunError> {
    let graph = spec.instantiate(config, None, false)?;
    bind(config, graph, batch, seq, "logits")
}

/// The one-token decode step with a key/value cache of a logits program of batch 1
/// (`kiln_compiler::decode`); an error says why the model has none.
pub fn compile_decode(logits: &Program) -> Result<Program, String> {
    let bound = logits
        .graph
        .bind(&logits.bindings)
        .map_err(|e| e.to_string())?;
    let step = kiln_compiler::decode::incremental(&bound).map_err(|e| e.to_string())?;
    Ok(Program {
        graph: step.graph,
        bindings: Bindings::new(),
    })
}

/// The last dimension of the `logits` output, bound.
fn logits_width(p: &Program) -> Option<usize> {
    let v = p.graph.output("logits")?;
    let dim = p.graph.shape(v).last()?;
    dim.bind(&p.bindings)
        .ok()
        .and_then(|d| usize::try_from(d).ok())
}

// ---------------------------------------------------------------------------------------------
// Encoder-decoder pretraining (span corruption)
// ---------------------------------------------------------------------------------------------

/// T5's special ids as Kiln numbers them, just above a tokenizer's `tokenizer_vocab` ids:
/// `(pad, eos)`; pad also starts the decoder (as T5's pad 0 does). Span corruption's sentinels
/// count down from the model's top id. Pretraining, fine-tuning and generation all read them here.
pub fn t5_special_ids(tokenizer_vocab: usize) -> (u32, u32) {
    let pad = tokenizer_vocab as u32;
    (pad, pad + 1)
}

/// The decoder's row length of a `seq2seq` run (`objective_args.targets_len`, default 32).
pub fn seq2seq_targets_len(config: &RunConfig) -> Result<usize, RunError> {
    whole_objective_arg(config, "targets_len", 32, 1)
}

/// The choices per example of a `multiple_choice` run (`objective_args.choices`, default 4).
pub fn choice_count(config: &RunConfig) -> Result<usize, RunError> {
    whole_objective_arg(config, "choices", 4, 2)
}

/// `objective_args.<name>` as a whole number ≥ `min` (`default` when absent).
fn whole_objective_arg(
    config: &RunConfig,
    name: &str,
    default: usize,
    min: usize,
) -> Result<usize, RunError> {
    let n = objective_number(config, name, default as f64)?;
    if !(n >= min as f64 && n.fract() == 0.0 && n <= 1e6) {
        return Err(config
            .error_at(
                &["objective_args", name],
                ConfigErrorKind::Invalid,
                format!("`objective_args.{name}` must be a whole number ≥ {min}, got {n}"),
                "out of range",
                None,
            )
            .into());
    }
    Ok(n as usize)
}

/// How a `seq2seq` run turns its examples into rows: `objective_args.task_prefix` (a string:
/// the encoder reads `"<prefix>: <input>"`), rows of `seq_len` source and `targets_len` target
/// ids, and T5's special ids numbered above the tokenizer's as span corruption numbers them (pad,
/// which also starts the decoder, then EOS), so a span-corruption checkpoint fine-tunes as is.
pub fn seq2seq_format(
    config: &RunConfig,
    tokenizer_vocab: usize,
) -> Result<crate::objectives::TextToTextFormat, RunError> {
    let task_prefix = match config.objective_args.get("task_prefix") {
        None => None,
        Some(HyperValue::Str(p)) => Some(p.clone()),
        Some(other) => {
            return Err(config
                .error_at(
                    &["objective_args", "task_prefix"],
                    ConfigErrorKind::Invalid,
                    format!("`objective_args.task_prefix` must be a string, got `{other}`"),
                    "not a string",
                    None,
                )
                .into())
        }
    };
    let (pad, eos) = t5_special_ids(tokenizer_vocab);
    Ok(crate::objectives::TextToTextFormat {
        task_prefix,
        eos_id: Some(eos),
        pad_id: pad,
        decoder_start_id: pad,
        inputs_len: config.seq_len,
        targets_len: seq2seq_targets_len(config)?,
    })
}

/// A number from `objective_args` (`default` when absent).
fn objective_number(config: &RunConfig, name: &str, default: f64) -> Result<f64, RunError> {
    match config.objective_args.get(name) {
        None => Ok(default),
        Some(HyperValue::Int(n)) => Ok(*n as f64),
        Some(HyperValue::Float(x)) => Ok(*x),
        Some(other) => Err(config
            .error_at(
                &["objective_args", name],
                ConfigErrorKind::Invalid,
                format!("`objective_args.{name}` must be a number, got `{other}`"),
                "not a number",
                None,
            )
            .into()),
    }
}

/// The span-corruption setting of a run: T5's noise (`objective_args.noise_density`, default
/// 0.15; `objective_args.mean_span`, default 3) over a model vocabulary of `model_vocab` ids whose
/// first `tokenizer_vocab` are the tokenizer's. The ids above the tokenizer's are T5's special
/// tokens: pad (also the decoder's start token, as T5), EOS, then sentinels counting down from
/// the top id. `tokenizer_vocab` 0 gives the lengths only (sentinel ids then are placeholders).
pub fn span_corruption_objective(
    config: &RunConfig,
    model_vocab: usize,
    tokenizer_vocab: usize,
) -> Result<crate::objectives::StreamObjective, RunError> {
    use crate::objectives::{span_corruption_lengths, SpanCorruption, StreamObjective};
    let noise_density = objective_number(config, "noise_density", 0.15)?;
    let mean_span = objective_number(config, "mean_span", 3.0)?;
    let (pad, eos) = t5_special_ids(tokenizer_vocab);
    let Some(num_sentinels) = model_vocab
        .checked_sub(tokenizer_vocab + 2)
        .filter(|n| *n > 0)
    else {
        return Err(config
            .error_at(
                &["model"],
                ConfigErrorKind::Invalid,
                format!(
                    "span corruption needs ids for pad, EOS and sentinels above the tokenizer's \
                     {tokenizer_vocab}, but the model predicts only {model_vocab}"
                ),
                "vocabulary too small",
                Some(format!(
                    "raise the model's vocabulary: `set: {{vocab: {}}}`",
                    tokenizer_vocab + 2 + 32
                )),
            )
            .into());
    };
    let corruption = SpanCorruption {
        noise_density,
        mean_noise_span_length: mean_span,
        sentinel_start: (model_vocab - 1) as u32,
        num_sentinels: num_sentinels as u32,
        inputs_eos: Some(eos),
        targets_eos: Some(eos),
    };
    let (_, targets_len) = span_corruption_lengths(&corruption, config.seq_len)?;
    Ok(StreamObjective::SpanCorruption {
        config: corruption,
        inputs_len: config.seq_len,
        targets_len,
        pad_id: pad,
        decoder_start_id: pad,
    })
}

/// Run dims an objective adds to `batch` and `seq`: span corruption's encoder length `src`
/// (`seq_len`) and decoder length `tgt` (what corruption of such windows produces).
fn objective_dims(config: &RunConfig) -> Result<Vec<(&'static str, i64)>, RunError> {
    match config.objective.parse::<ObjectiveKind>() {
        Ok(ObjectiveKind::SpanCorruption) => {
            // The lengths do not depend on the special ids: any vocabulary with room will do.
            match span_corruption_objective(config, 3, 0)? {
                crate::objectives::StreamObjective::SpanCorruption {
                    inputs_len,
                    targets_len,
                    ..
                } => Ok(vec![
                    ("src", inputs_len as i64),
                    ("tgt", targets_len as i64),
                ]),
                crate::objectives::StreamObjective::CausalLm { .. }
                | crate::objectives::StreamObjective::PrefixLm { .. } => Ok(vec![]),
            }
        }
        Ok(ObjectiveKind::Seq2Seq) => Ok(vec![
            ("src", config.seq_len as i64),
            ("tgt", seq2seq_targets_len(config)? as i64),
        ]),
        Ok(ObjectiveKind::CausalLm | ObjectiveKind::PrefixLm | ObjectiveKind::MultipleChoice)
        | Err(_) => Ok(vec![]),
    }
}
