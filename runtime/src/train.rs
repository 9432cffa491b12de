//! The training loop behind `kiln train`: nanoGPT's loop, driven through a [`Backend`].
//!
//! Per optimizer step `it` (0-based): draw a batch, run the compiled step with
//! `lr = schedule.lr_at(it)` and `step = it + 1` (Adam's bias correction), log the step's loss,
//! learning rate and gradient norm. After step `s = it + 1`:
//! - every `eval.every` steps (and at step 0, before training, and after the last step) the loss is
//!   estimated on `eval.batches` random batches of each split, as nanoGPT's `estimate_loss`, with
//!   the eval program (no dropout) holding a copy of the current parameters;
//! - after the last step with `eval.full`, the loss over the whole validation split in
//!   non-overlapping windows (a last batch with fewer than `batch_size` windows is dropped, so
//!   every batch has the program's shape; at most `batch_size - 1` windows go unscored);
//! - every `checkpoint.every` steps, after the last step, and when interrupted, a checkpoint.
//!
//! Everything that decides the numbers — parameter init, batches, dropout — comes from the seed
//! through counter-based or checkpointed random streams, so a run resumed from any checkpoint
//! writes a `metrics.jsonl` byte-identical to an uninterrupted run's. Wall-clock figures go to
//! `timings.jsonl` and the progress display only.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crate::backend::{Backend, InputTensor, StepRng};
use crate::checkpoint::{
    load_checkpoint, save_checkpoint, Checkpoint, CheckpointDir, CheckpointError, CheckpointMeta,
    ModelSignature, TensorMap, LATEST_FILE,
};
use crate::config::{ConfigErrorKind, RunConfig};
use crate::data::{load_dataset, DataError, Dataset, SamplerStream, SequentialBatches, Tokens};
use crate::metrics::{
    MetricRecord, MetricsWriter, TimingRecord, TimingsWriter, METRICS_FILE, TIMINGS_FILE,
};
use crate::objectives::choice::{choice_rows, ChoiceBatcher, ChoiceRows};
use crate::objectives::{
    EncodedExample, ObjectiveBatch, ObjectiveKind, Seq2SeqBatcher, StreamBatcher,
    StreamBatcherState, StreamObjective, TextToTextFormat,
};
use crate::progress::Progress;
use crate::session::{
    compile_run, compile_train, copy_params, load_spec, make_backend, param_shapes, CompiledRun,
    Executor, Programs, RunError, StateName,
};
use crate::tokenizer::Tokenizer;

/// Checkpoint metadata (`extra.` map) holding the spec text the run was trained from, so that
/// generation needs only the checkpoint.
pub const SPEC_TEXT_KEY: &str = "spec_text";

/// Name of the loss plot in the output folder.
pub const PLOT_FILE: &str = "loss.svg";

/// Where progress goes.
pub enum ProgressOutput {
    /// A bar on a terminal, plain lines otherwise (stderr).
    Auto,
    /// Plain lines to this writer.
    Lines(Box<dyn Write + Send>),
}

/// Where a simulated crash strikes (a test hook for crash safety: the process kills itself with
/// SIGKILL, leaving the files as a power cut or `kill -9` would).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashPoint {
    /// Halfway through writing the checkpoint file of this step (a torn temporary file).
    CheckpointFile(u64),
    /// After the checkpoint of this step is in place, halfway through updating `latest`.
    LatestPointer(u64),
}

impl std::str::FromStr for CrashPoint {
    type Err = String;
    /// `checkpoint:STEP` or `latest:STEP`.
    fn from_str(s: &str) -> Result<CrashPoint, String> {
        let (kind, step) = s
            .split_once(':')
            .ok_or_else(|| format!("expected `checkpoint:STEP` or `latest:STEP`, got `{s}`"))?;
        let step: u64 = step.parse().map_err(|_| format!("bad step in `{s}`"))?;
        match kind {
            "checkpoint" => Ok(CrashPoint::CheckpointFile(step)),
            "latest" => Ok(CrashPoint::LatestPointer(step)),
            _ => Err(format!(
                "expected `checkpoint:STEP` or `latest:STEP`, got `{s}`"
            )),
        }
    }
}

/// How to run `kiln train`.
pub struct TrainOptions {
    pub executor: Executor,
    /// Continue from the latest checkpoint in the output folder (start afresh if there is none).
    pub resume: bool,
    /// Set (by a signal handler) to stop: the current step finishes, a checkpoint is written.
    pub stop: Option<Arc<AtomicBool>>,
    pub progress: ProgressOutput,
    pub crash: Option<CrashPoint>,
    /// Time each phase of the loop and each kernel; print the breakdown at the end.
    pub profile: bool,
}

impl Default for TrainOptions {
    fn default() -> Self {
        TrainOptions {
            executor: Executor::DEFAULT,
            resume: false,
            stop: None,
            progress: ProgressOutput::Auto,
            crash: None,
            profile: false,
        }
    }
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainOutcome {
    /// All `steps` are done.
    Finished,
    /// Stopped early by the stop flag, with a checkpoint at the last completed step.
    Interrupted,
}

/// What `train` did.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub outcome: TrainOutcome,
    /// Steps completed.
    pub step: u64,
    /// Where the run resumed from (0 for a fresh run).
    pub start_step: u64,
    pub out_dir: PathBuf,
    /// The last checkpoint written.
    pub checkpoint: Option<PathBuf>,
    /// The last metrics record of the run.
    pub last: Option<MetricRecord>,
}

/// Registers SIGINT and SIGTERM to set the returned flag; a second signal while the flag is set
/// terminates the process at once (exit status 130).
pub fn interrupt_flag() -> std::io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    #[cfg(unix)]
    {
        use signal_hook::consts::{SIGINT, SIGTERM};
        for sig in [SIGINT, SIGTERM] {
            // Order matters: the conditional shutdown checks the flag before the second
            // registration sets it, so the first signal only sets it.
            signal_hook::flag::register_conditional_shutdown(sig, 130, Arc::clone(&flag))?;
            signal_hook::flag::register(sig, Arc::clone(&flag))?;
        }
    }
    Ok(flag)
}

/// The window objective batches are drawn for (`tokenizer_vocab`: span corruption's special ids
/// go above the tokenizer's).
fn stream_objective(
    config: &RunConfig,
    kind: ObjectiveKind,
    model_vocab: usize,
    tokenizer_vocab: usize,
) -> Result<StreamObjective, RunError> {
    let seq_len = config.seq_len;
    match kind {
        ObjectiveKind::PrefixLm => Ok(StreamObjective::PrefixLm { seq_len }),
        ObjectiveKind::SpanCorruption => {
            crate::session::span_corruption_objective(config, model_vocab, tokenizer_vocab)
        }
        // Example objectives do not draw windows; everything else is a causal LM window.
        ObjectiveKind::CausalLm | ObjectiveKind::Seq2Seq | ObjectiveKind::MultipleChoice => {
            Ok(StreamObjective::CausalLm { seq_len })
        }
    }
}

/// A batch as program inputs.
pub fn batch_inputs(batch: &ObjectiveBatch) -> BTreeMap<String, InputTensor> {
    batch
        .inputs
        .iter()
        .map(|(name, t)| {
            (
                name.clone(),
                InputTensor::I32 {
                    shape: t.shape().to_vec(),
                    data: t.data().to_vec(),
                },
            )
        })
        .collect()
}

fn scalar_output(
    out: &BTreeMap<String, crate::checkpoint::HostTensor>,
    name: &str,
) -> Result<f32, RunError> {
    out.get(name)
        .and_then(|t| t.data.first().copied())
        .ok_or_else(|| RunError::Backend {
            program: "train",
            source: crate::backend::BackendError::Exec(format!(
                "the program has no `{name}` output"
            )),
        })
}

/// Mean loss of `n` random batches (nanoGPT's `estimate_loss` for one split).
fn estimate_loss(
    eval: &mut dyn Backend,
    batcher: &mut Batcher,
    tokens: &Tokens,
    split: &'static str,
    n: usize,
    seed: u64,
) -> Result<f32, RunError> {
    let mut sum = 0.0f64;
    for _ in 0..n {
        let batch = batcher.next_batch(tokens, split)?;
        let out = eval
            .run(&batch_inputs(&batch), StepRng { seed, step: 0 })
            .map_err(RunError::backend("eval"))?;
        sum += f64::from(scalar_output(&out, "loss")?);
    }
    Ok((sum / n as f64) as f32)
}

/// Loss over every complete batch of non-overlapping windows of `tokens` (causal LM), and the
/// number of target tokens scored. `max_batches` stops early.
pub fn sequential_loss(
    eval: &mut dyn Backend,
    tokens: &Tokens,
    batch_size: usize,
    seq_len: usize,
    seed: u64,
    max_batches: Option<usize>,
) -> Result<Option<(f64, usize)>, RunError> {
    let mut sum = 0.0f64;
    let mut batches = 0usize;
    for batch in SequentialBatches::new(tokens, batch_size, seq_len) {
        if batch.rows < batch_size || max_batches.is_some_and(|m| batches >= m) {
            break;
        }
        let w = seq_len + 1;
        let mut ids = vec![0i32; batch.rows * w];
        for r in 0..batch.rows {
            for c in 0..seq_len {
                ids[r * w + c] = batch.inputs[r * seq_len + c] as i32;
            }
            ids[r * w + seq_len] = batch.targets[r * seq_len + seq_len - 1] as i32;
        }
        let mut inputs = BTreeMap::new();
        inputs.insert(
            "tokens".to_string(),
            InputTensor::I32 {
                shape: vec![batch.rows, w],
                data: ids,
            },
        );
        let out = eval
            .run(&inputs, StepRng { seed, step: 0 })
            .map_err(RunError::backend("eval"))?;
        sum += f64::from(scalar_output(&out, "loss")?);
        batches += 1;
    }
    if batches == 0 {
        return Ok(None);
    }
    Ok(Some((sum / batches as f64, batches * batch_size * seq_len)))
}

/// Loads the data of a run and checks it against the model: vocabulary and split lengths.
pub fn load_run_data(config: &RunConfig, compiled: &CompiledRun) -> Result<Dataset, RunError> {
    let source = config.data.source().ok_or_else(|| {
        config.error_at(
            &["data"],
            ConfigErrorKind::Invalid,
            "`data` needs `path` or `token_file`",
            "no data source",
            None,
        )
    })?;
    let data = load_dataset(&source)?;
    let vocab = data.tokenizer.vocab_size();
    if vocab > compiled.vocab {
        return Err(config
            .error_at(
                &["model"],
                ConfigErrorKind::Invalid,
                format!(
                    "the {} tokenizer has {vocab} tokens but model `{}` predicts only {}",
                    data.tokenizer.kind_name(),
                    config.model,
                    compiled.vocab
                ),
                "vocabulary too small",
                Some(format!(
                    "raise the model's vocabulary: `set: {{vocab: {vocab}}}`"
                )),
            )
            .into());
    }
    let need = config.seq_len + 1;
    for (split, tokens) in [("train", &data.train), ("validation", &data.val)] {
        let too_short = tokens.len() < need && (split == "train" || !tokens.is_empty());
        if too_short {
            return Err(DataError::TooShort {
                split,
                len: tokens.len(),
                seq_len: config.seq_len,
                need,
            }
            .into());
        }
    }
    Ok(data)
}

/// Where a batcher's batches come from: windows of the token stream, or a `seq2seq` run's
/// supervised examples.
enum Batcher {
    Stream(StreamBatcher),
    Examples(Seq2SeqBatcher),
    Choices(ChoiceBatcher),
}

impl Batcher {
    fn next_batch(
        &mut self,
        tokens: &Tokens,
        split: &'static str,
    ) -> Result<ObjectiveBatch, RunError> {
        Ok(match self {
            Batcher::Stream(b) => b.next_batch(tokens, split)?,
            Batcher::Examples(b) => loop {
                // The compiled step has a fixed batch: an epoch's short last batch is skipped
                // (the next epoch's shuffle serves those examples in another position).
                let batch = b.next_batch()?;
                let rows = batch.get("inputs").map_or(0, |t| t.shape()[0]);
                if rows == b.batch_size() {
                    break batch;
                }
            },
            Batcher::Choices(b) => b.next_batch()?,
        })
    }
}

/// The examples of a run on `data.examples`.
pub enum RunExamples {
    Seq2Seq(Examples),
    Choice {
        train: Vec<ChoiceRows>,
        val: Vec<ChoiceRows>,
        choices: usize,
    },
}

impl RunExamples {
    fn has_val(&self) -> bool {
        match self {
            RunExamples::Seq2Seq(e) => !e.val.is_empty(),
            RunExamples::Choice { val, .. } => !val.is_empty(),
        }
    }
}

/// The `data.examples` file of a run whose objective requires it (the config checks that).
fn examples_path(config: &RunConfig) -> Result<&Path, RunError> {
    config
        .data
        .examples
        .as_deref()
        .ok_or_else(|| RunError::Usage {
            message: "internal: no `data.examples`".to_string(),
            help: None,
        })
}

/// Splits off and returns the last `data.val_fraction` (rounded) of `examples`.
fn hold_out<T>(config: &RunConfig, examples: &mut Vec<T>) -> Vec<T> {
    let frac = config
        .data
        .val_fraction
        .unwrap_or(crate::config::DEFAULT_VAL_FRACTION);
    let n_val = ((examples.len() as f64) * frac).round() as usize;
    examples.split_off(examples.len() - n_val.min(examples.len()))
}

/// Reads `data.examples` for `multiple_choice` (JSONL `{"context", "choices", "label"}`), builds
/// each example's rows at `seq_len` and holds out the last `val_fraction` of them.
pub fn load_choice_examples(
    config: &RunConfig,
    tokenizer: &Tokenizer,
) -> Result<RunExamples, RunError> {
    let path = examples_path(config)?;
    let docs = crate::evaltasks::load::load_multiple_choice(path)?;
    let choices = crate::session::choice_count(config)?;
    let mut rows = Vec::with_capacity(docs.len());
    for (i, d) in docs.iter().enumerate() {
        rows.push(
            choice_rows(tokenizer, i + 1, d, choices, config.seq_len).map_err(|e| {
                RunError::Usage {
                    message: format!("`data.examples` ({}): {e}", path.display()),
                    help: Some(
                        "every example needs `objective_args.choices` choices (default 4), \
                         written in the tokenizer's characters"
                            .into(),
                    ),
                }
            })?,
        );
    }
    let val = hold_out(config, &mut rows);
    Ok(RunExamples::Choice {
        train: rows,
        val,
        choices,
    })
}

/// A `seq2seq` run's examples, encoded: training, held out, and their row format.
pub struct Examples {
    pub train: Vec<EncodedExample>,
    pub val: Vec<EncodedExample>,
    pub format: TextToTextFormat,
}

/// Reads `data.examples` (JSONL `{"input", "target"}`), encodes every example with the run's
/// tokenizer and holds out the last `val_fraction` of them.
pub fn load_examples(config: &RunConfig, tokenizer: &Tokenizer) -> Result<Examples, RunError> {
    let path = examples_path(config)?;
    // Bad lines are reported at their line of the file.
    let docs = crate::evaltasks::load::load_text_to_text(path)?;
    let format = crate::session::seq2seq_format(config, tokenizer.vocab_size())?;
    let mut encoded = Vec::with_capacity(docs.len());
    for (i, d) in docs.iter().enumerate() {
        encoded.push(
            format
                .encode(tokenizer, i, &d.input, &d.target)
                .map_err(|e| RunError::Usage {
                    message: format!("`data.examples` ({}): {e}", path.display()),
                    help: Some("the examples must use the tokenizer's characters".into()),
                })?,
        );
    }
    let val = hold_out(config, &mut encoded);
    if encoded.is_empty() {
        return Err(RunError::Usage {
            message: format!(
                "`data.examples` ({}) leaves no training example",
                path.display()
            ),
            help: Some("give more examples or a smaller `data.val_fraction`".into()),
        });
    }
    Ok(Examples {
        train: encoded,
        val,
        format,
    })
}

/// The three batchers of a run and their names in checkpoints.
struct Batchers {
    train: Batcher,
    train_eval: Batcher,
    val_eval: Batcher,
}

const SAMPLERS: [&str; 3] = ["train", "train_eval", "val_eval"];

/// The checkpoint metadata (`extra.`) key of an example batcher's position.
fn position_key(name: &str) -> String {
    format!("examples.{name}")
}

impl Batchers {
    fn new(
        config: &RunConfig,
        obj: StreamObjective,
        examples: Option<&RunExamples>,
    ) -> Result<Batchers, RunError> {
        let b = config.batch_size;
        if let Some(RunExamples::Choice {
            train,
            val,
            choices,
        }) = examples
        {
            let make = |set: &[ChoiceRows], rows: usize, stream: u64| {
                let set = if set.is_empty() { train } else { set };
                ChoiceBatcher::new(
                    set.to_vec(),
                    *choices,
                    config.seq_len,
                    rows,
                    config.seed ^ (stream << 32),
                )
                .map(Batcher::Choices)
                .map_err(|_| RunError::Usage {
                    message: format!(
                        "`data.examples` gives {} examples to a split, fewer than a batch of {rows}",
                        set.len()
                    ),
                    help: Some("lower `batch_size` or `data.val_fraction`".into()),
                })
            };
            return Ok(Batchers {
                train: make(train, b * config.grad_accum, 0)?,
                train_eval: make(train, b, 1)?,
                val_eval: make(val, b, 2)?,
            });
        }
        if let Some(RunExamples::Seq2Seq(ex)) = examples {
            let make = |set: &[EncodedExample], rows: usize, stream: u64| {
                // The held-out set may be empty (no validation): it is then never drawn from.
                let set = if set.is_empty() { &ex.train } else { set };
                if set.len() < rows {
                    return Err(RunError::Usage {
                        message: format!(
                            "`data.examples` gives {} examples to a split, fewer than a batch \
                             of {rows}",
                            set.len()
                        ),
                        help: Some(
                            "lower `batch_size`, or `data.val_fraction` if it is the held-out \
                             split"
                                .into(),
                        ),
                    });
                }
                Seq2SeqBatcher::new(
                    set.to_vec(),
                    ex.format.clone(),
                    rows,
                    false,
                    config.seed ^ (stream << 32),
                )
                .map(Batcher::Examples)
                .map_err(RunError::from)
            };
            return Ok(Batchers {
                train: make(&ex.train, b * config.grad_accum, 0)?,
                train_eval: make(&ex.train, b, 1)?,
                val_eval: make(&ex.val, b, 2)?,
            });
        }
        Ok(Batchers {
            train: Batcher::Stream(StreamBatcher::new(
                obj.clone(),
                config.seed,
                SamplerStream::Train,
                b * config.grad_accum,
            )?),
            train_eval: Batcher::Stream(StreamBatcher::new(
                obj.clone(),
                config.seed,
                SamplerStream::TrainEval,
                b,
            )?),
            val_eval: Batcher::Stream(StreamBatcher::new(
                obj,
                config.seed,
                SamplerStream::ValEval,
                b,
            )?),
        })
    }

    fn all(&self) -> [&Batcher; 3] {
        [&self.train, &self.train_eval, &self.val_eval]
    }

    fn all_mut(&mut self) -> [&mut Batcher; 3] {
        [&mut self.train, &mut self.train_eval, &mut self.val_eval]
    }

    /// Stream samplers' states (checkpoint `samplers`) and example batchers' positions
    /// (checkpoint `extra`).
    fn states(
        &self,
    ) -> (
        BTreeMap<String, crate::data::SamplerState>,
        BTreeMap<String, String>,
    ) {
        let mut samplers = BTreeMap::new();
        let mut positions = BTreeMap::new();
        for (name, b) in SAMPLERS.iter().zip(self.all()) {
            match b {
                Batcher::Stream(b) => {
                    let s = b.state();
                    samplers.insert(format!("{name}.windows"), s.windows);
                    samplers.insert(format!("{name}.objective"), s.objective);
                }
                Batcher::Examples(b) => {
                    let (epoch, next) = b.position();
                    positions.insert(position_key(name), format!("{epoch}:{next}"));
                }
                Batcher::Choices(b) => {
                    let (epoch, next) = b.position();
                    positions.insert(position_key(name), format!("{epoch}:{next}"));
                }
            }
        }
        (samplers, positions)
    }

    fn restore(
        config: &RunConfig,
        obj: StreamObjective,
        examples: Option<&RunExamples>,
        path: &Path,
        meta: &CheckpointMeta,
    ) -> Result<Batchers, RunError> {
        if examples.is_some() {
            let mut batchers = Batchers::new(config, obj, examples)?;
            for (name, b) in SAMPLERS.iter().zip(batchers.all_mut()) {
                let key = position_key(name);
                let bad = |reason: &str| CheckpointError::Metadata {
                    path: path.to_path_buf(),
                    key: format!("extra.{key}"),
                    reason: reason.to_string(),
                };
                let text = meta.extra.get(&key).ok_or_else(|| bad("absent"))?;
                let (epoch, next) = text
                    .split_once(':')
                    .and_then(|(e, n)| Some((e.parse().ok()?, n.parse().ok()?)))
                    .ok_or_else(|| bad("not `epoch:next`"))?;
                match b {
                    Batcher::Examples(b) => b.seek(epoch, next),
                    Batcher::Choices(b) => b.seek(epoch, next),
                    Batcher::Stream(_) => {}
                }
            }
            return Ok(batchers);
        }
        let get = |name: &str| -> Result<StreamBatcherState, RunError> {
            let one = |part: &str| {
                let key = format!("{name}.{part}");
                meta.samplers
                    .get(&key)
                    .cloned()
                    .ok_or_else(|| CheckpointError::Metadata {
                        path: path.to_path_buf(),
                        key: format!("sampler.{key}"),
                        reason: "absent".to_string(),
                    })
            };
            Ok(StreamBatcherState {
                windows: one("windows")?,
                objective: one("objective")?,
            })
        };
        let b = config.batch_size;
        Ok(Batchers {
            train: Batcher::Stream(StreamBatcher::from_state(
                obj.clone(),
                &get("train")?,
                b * config.grad_accum,
            )?),
            train_eval: Batcher::Stream(StreamBatcher::from_state(
                obj.clone(),
                &get("train_eval")?,
                b,
            )?),
            val_eval: Batcher::Stream(StreamBatcher::from_state(obj, &get("val_eval")?, b)?),
        })
    }
}

/// Every persistent tensor of a backend as a checkpoint (parameters and optimizer state).
pub fn snapshot(backend: &dyn Backend, meta: CheckpointMeta) -> Result<Checkpoint, RunError> {
    let mut params = TensorMap::new();
    let mut opt_m = TensorMap::new();
    let mut opt_v = TensorMap::new();
    for (name, _) in backend.state_shapes() {
        let t = backend
            .get_state(&name)
            .map_err(RunError::backend("train"))?;
        match StateName::parse(&name) {
            StateName::Param(p) => params.insert(p.to_string(), t),
            StateName::FirstMoment(p) => opt_m.insert(p.to_string(), t),
            StateName::SecondMoment(p) => opt_v.insert(p.to_string(), t),
            StateName::Cache(_) => None,
        };
    }
    Ok(Checkpoint {
        meta,
        params,
        opt_m,
        opt_v,
    })
}

/// Loads a checkpoint's tensors into a backend: parameters always, optimizer state when
/// `with_optimizer` (training resumes) and the backend has it.
pub fn restore(
    backend: &mut dyn Backend,
    ckpt: &Checkpoint,
    path: &Path,
    with_optimizer: bool,
) -> Result<(), RunError> {
    for (name, shape) in backend.state_shapes() {
        let (found, is_param) = match StateName::parse(&name) {
            StateName::Param(p) => (ckpt.params.get(p), true),
            StateName::FirstMoment(p) => (ckpt.opt_m.get(p), false),
            StateName::SecondMoment(p) => (ckpt.opt_v.get(p), false),
            // Scratch of a decode step: starts from its init.
            StateName::Cache(_) => continue,
        };
        if !is_param && !with_optimizer {
            continue;
        }
        let t = match found {
            Some(t) => t,
            None if is_param => {
                return Err(CheckpointError::MissingTensor {
                    tensor: name.clone(),
                    shape: crate::checkpoint::Shape(shape),
                }
                .into())
            }
            None => {
                return Err(RunError::MissingOptimizerState {
                    path: path.to_path_buf(),
                    name: name.clone(),
                })
            }
        };
        backend
            .set_state(&name, t)
            .map_err(RunError::backend("model"))?;
    }
    Ok(())
}

/// Copies every persistent tensor `to` shares with `from` (parameters, and the optimizer state
/// of parameters that trained before); the rest keep their init (zero moments for parameters
/// that start training now).
fn carry_state(from: &dyn Backend, to: &mut dyn Backend) -> Result<(), RunError> {
    let have: std::collections::HashSet<String> =
        from.state_shapes().into_iter().map(|(n, _)| n).collect();
    for (name, _) in to.state_shapes() {
        if have.contains(&name) {
            let t = from.get_state(&name).map_err(RunError::backend("train"))?;
            to.set_state(&name, &t)
                .map_err(RunError::backend("train"))?;
        }
    }
    Ok(())
}

/// Loads a checkpoint and checks it against a compiled run (spec text, model, parameters).
pub fn load_compatible(
    path: &Path,
    config: &RunConfig,
    compiled: &CompiledRun,
    params: BTreeMap<String, Vec<usize>>,
) -> Result<Checkpoint, RunError> {
    let ckpt = load_checkpoint(path)?;
    let signature = ModelSignature {
        spec_hash: Some(compiled.spec_hash.clone()),
        model: config.model.clone(),
        params,
    };
    if config.finetune.is_some() {
        crate::finetune::check_params_compatible(&ckpt, path, &signature)?;
    } else {
        ckpt.check_compatible(path, &signature)?;
    }
    Ok(ckpt)
}

fn check_tokenizer(data: &Dataset, ckpt: &Checkpoint) -> Result<(), RunError> {
    let expected = data.tokenizer.to_json();
    if ckpt.meta.tokenizer != expected {
        let describe = |json: &str| match crate::tokenizer::Tokenizer::from_json(json) {
            Ok(t) => format!("{} with {} tokens", t.kind_name(), t.vocab_size()),
            Err(_) => "unreadable".to_string(),
        };
        return Err(RunError::TokenizerMismatch {
            expected: describe(&expected),
            found: describe(&ckpt.meta.tokenizer),
        });
    }
    Ok(())
}

/// Refuses to start a fresh run over an existing one.
fn check_fresh_out_dir(dir: &Path) -> Result<(), RunError> {
    for name in [LATEST_FILE, METRICS_FILE] {
        if dir.join(name).exists() {
            return Err(RunError::OutDirInUse {
                dir: dir.to_path_buf(),
                found: name.to_string(),
            });
        }
    }
    Ok(())
}

/// Saves a checkpoint, or simulates a crash in the middle of saving it.
fn save(
    dir: &CheckpointDir,
    ckpt: &Checkpoint,
    crash: Option<CrashPoint>,
) -> Result<PathBuf, RunError> {
    let step = ckpt.meta.step;
    let name = CheckpointDir::file_name(step);
    match crash {
        Some(CrashPoint::CheckpointFile(s)) if s == step => {
            // The bytes the real write would produce, torn halfway, under the temporary name the
            // atomic write uses: what a crash during `write_atomic` leaves behind.
            let scratch = dir.dir().join(".crash-scratch");
            save_checkpoint(&scratch, ckpt)?;
            let bytes = std::fs::read(&scratch).map_err(|e| io(&scratch, e))?;
            let _ = std::fs::remove_file(&scratch);
            let tmp = dir.dir().join(format!(".tmp-{name}"));
            std::fs::write(&tmp, &bytes[..bytes.len() / 2]).map_err(|e| io(&tmp, e))?;
            die()
        }
        Some(CrashPoint::LatestPointer(s)) if s == step => {
            save_checkpoint(&dir.dir().join(&name), ckpt)?;
            let tmp = dir.dir().join(format!(".tmp-{LATEST_FILE}"));
            std::fs::write(&tmp, &name.as_bytes()[..name.len() / 2]).map_err(|e| io(&tmp, e))?;
            die()
        }
        _ => Ok(dir.save(ckpt)?),
    }
}

fn io(path: &Path, e: std::io::Error) -> RunError {
    RunError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    }
}

/// Ends the process as `kill -9` would: no destructors, no flushing.
fn die() -> ! {
    #[cfg(unix)]
    {
        let _ = signal_hook::low_level::raise(signal_hook::consts::SIGKILL);
    }
    std::process::abort()
}

/// Runs (or resumes) a training run.
pub fn train(config: &RunConfig, opts: TrainOptions) -> Result<TrainSummary, RunError> {
    // Everything that can fail on user input is checked before the output folder is touched.
    let spec = load_spec(config)?;
    // Gradual unfreezing: each episode trains a differently frozen step (see `episode_config`).
    let gradual = config
        .finetune
        .as_ref()
        .and_then(|f| f.gradual_unfreezing.clone());
    let episode_config = |top: usize| -> RunConfig {
        let mut c = config.clone();
        if let Some(f) = c.finetune.as_mut() {
            f.top_layers = Some(top);
        }
        c
    };
    let mut top_layers = gradual.as_ref().map(|g| g.top_layers_at(0));
    let compiled = match top_layers {
        Some(top) => compile_run(&episode_config(top), &spec, Programs::All)?,
        None => compile_run(config, &spec, Programs::All)?,
    };
    let data = load_run_data(config, &compiled)?;
    let examples = match compiled.objective {
        ObjectiveKind::Seq2Seq => {
            let need = data.tokenizer.vocab_size() + 2;
            if need > compiled.vocab {
                return Err(config
                    .error_at(
                        &["model"],
                        ConfigErrorKind::Invalid,
                        format!(
                            "seq2seq needs ids for pad and EOS above the tokenizer's {}, but \
                             model `{}` predicts only {}",
                            data.tokenizer.vocab_size(),
                            config.model,
                            compiled.vocab
                        ),
                        "vocabulary too small",
                        Some(format!(
                            "raise the model's vocabulary: `set: {{vocab: {need}}}`"
                        )),
                    )
                    .into());
            }
            Some(RunExamples::Seq2Seq(load_examples(
                config,
                &data.tokenizer,
            )?))
        }
        ObjectiveKind::MultipleChoice => Some(load_choice_examples(config, &data.tokenizer)?),
        _ => None,
    };
    let train_program = compiled.train.as_ref().ok_or_else(|| RunError::Usage {
        message: "internal: no training program was compiled".to_string(),
        help: None,
    })?;
    let mut backend = make_backend(opts.executor, train_program, config.seed, config.threads)?;
    let mut eval = make_backend(opts.executor, &compiled.eval, config.seed, config.threads)?;

    let out_dir = config.out_dir.clone();
    if !opts.resume {
        check_fresh_out_dir(&out_dir)?;
    }
    let ckpt_dir = CheckpointDir::open(&out_dir, config.checkpoint.keep)?;
    let resumed = if opts.resume {
        ckpt_dir.latest()?
    } else {
        None
    };
    let objective = stream_objective(
        config,
        compiled.objective,
        compiled.vocab,
        data.tokenizer.vocab_size(),
    )?;
    let (start, mut batchers) = match &resumed {
        Some(path) => {
            let ckpt = load_compatible(path, config, &compiled, param_shapes(backend.as_ref()))?;
            check_tokenizer(&data, &ckpt)?;
            // The checkpoint's optimizer state is that of the episode of its last step.
            if let Some(g) = &gradual {
                let top = g.top_layers_at(ckpt.meta.step.saturating_sub(1));
                if Some(top) != top_layers {
                    let program = compile_train(&episode_config(top), &spec)?;
                    backend = make_backend(opts.executor, &program, config.seed, config.threads)?;
                    top_layers = Some(top);
                }
            }
            restore(backend.as_mut(), &ckpt, path, true)?;
            let batchers =
                Batchers::restore(config, objective, examples.as_ref(), path, &ckpt.meta)?;
            (ckpt.meta.step, batchers)
        }
        None => {
            if let Some(from) = config.finetune.as_ref().and_then(|f| f.from.as_ref()) {
                crate::finetune::load_base(backend.as_mut(), from, &data.tokenizer)?;
            }
            (0, Batchers::new(config, objective, examples.as_ref())?)
        }
    };
    let metrics_path = out_dir.join(METRICS_FILE);
    let timings_path = out_dir.join(TIMINGS_FILE);
    let (mut metrics, mut timings) = if resumed.is_some() {
        (
            MetricsWriter::resume(&metrics_path, start)?,
            TimingsWriter::resume(&timings_path, start)?,
        )
    } else {
        (
            MetricsWriter::create(&metrics_path)?,
            TimingsWriter::create(&timings_path)?,
        )
    };

    let tokens_per_step = config.tokens_per_step();
    let mut progress = match opts.progress {
        ProgressOutput::Auto => {
            Progress::new(config.steps, start, tokens_per_step, config.log_every)
        }
        ProgressOutput::Lines(w) => Progress::lines(w, start, tokens_per_step, config.log_every),
    };
    if let Some(path) = &resumed {
        progress.message(&format!("resuming from {} (step {start})", path.display()));
    }
    let schedule = config.lr_schedule();
    let seed = config.seed;
    let has_val = match &examples {
        Some(ex) => ex.has_val(),
        None => !data.val.is_empty(),
    };
    let mut last_ckpt = resumed.clone();
    let mut last_record = None;

    let evaluate = |eval: &mut dyn Backend,
                    backend: &dyn Backend,
                    batchers: &mut Batchers,
                    record: &mut MetricRecord|
     -> Result<(), RunError> {
        copy_params(backend, eval)?;
        let n = config.eval.batches;
        record.train_eval_loss = Some(estimate_loss(
            eval,
            &mut batchers.train_eval,
            &data.train,
            "train",
            n,
            seed,
        )?);
        if has_val {
            record.val_loss = Some(estimate_loss(
                eval,
                &mut batchers.val_eval,
                &data.val,
                "validation",
                n,
                seed,
            )?);
        }
        Ok(())
    };

    if start == 0 && config.eval.every > 0 {
        let mut record = MetricRecord {
            step: 0,
            ..Default::default()
        };
        evaluate(eval.as_mut(), backend.as_ref(), &mut batchers, &mut record)?;
        metrics.write(&record)?;
        progress.eval(0, record.train_eval_loss, record.val_loss);
        last_record = Some(record);
    }

    if opts.profile {
        backend.set_profiling(true);
    }
    let mut phases = PhaseTimes::default();
    let segment_start = Instant::now();
    let mut step = start;
    let mut outcome = TrainOutcome::Finished;
    while step < config.steps {
        let it = step;
        if let Some(g) = &gradual {
            let top = g.top_layers_at(it);
            if Some(top) != top_layers {
                let program = compile_train(&episode_config(top), &spec)?;
                let mut next = make_backend(opts.executor, &program, config.seed, config.threads)?;
                carry_state(backend.as_ref(), next.as_mut())?;
                if opts.profile {
                    next.set_profiling(true);
                }
                backend = next;
                top_layers = Some(top);
                progress.message(&format!(
                    "step {it}: gradual unfreezing, the top {top} blocks of each stack train"
                ));
            }
        }
        let t0 = Instant::now();
        let lr = schedule.lr_at(it);
        let batch = batchers.train.next_batch(&data.train, "train")?;
        let mut inputs = batch_inputs(&batch);
        inputs.insert("lr".to_string(), InputTensor::scalar(lr as f32));
        inputs.insert("step".to_string(), InputTensor::scalar((it + 1) as f32));
        let t_run = Instant::now();
        phases.data += (t_run - t0).as_secs_f64();
        let out = backend
            .run(&inputs, StepRng { seed, step: it + 1 })
            .map_err(RunError::backend("train"))?;
        let step_secs = t0.elapsed().as_secs_f64();
        phases.step += t_run.elapsed().as_secs_f64();
        phases.steps += 1;
        let t_rest = Instant::now();
        step = it + 1;
        let mut record = MetricRecord {
            step,
            loss: Some(scalar_output(&out, "loss")?),
            lr: Some(lr),
            grad_norm: Some(scalar_output(&out, "grad_norm")?),
            tokens: Some(step * tokens_per_step),
            ..Default::default()
        };
        let last = step == config.steps;
        let eval_due = last || (config.eval.every > 0 && step.is_multiple_of(config.eval.every));
        if eval_due {
            let t = Instant::now();
            evaluate(eval.as_mut(), backend.as_ref(), &mut batchers, &mut record)?;
            phases.eval += t.elapsed().as_secs_f64();
        }
        let t_full = Instant::now();
        if last && config.eval.full && has_val {
            if compiled.objective == ObjectiveKind::CausalLm {
                copy_params(backend.as_ref(), eval.as_mut())?;
                if let Some((loss, _)) = sequential_loss(
                    eval.as_mut(),
                    &data.val,
                    config.batch_size,
                    config.seq_len,
                    seed,
                    None,
                )? {
                    record.full_val_loss = Some(loss as f32);
                }
            } else {
                progress.message("full validation loss is computed for causal_lm only; skipped");
            }
        }
        phases.eval += t_full.elapsed().as_secs_f64();
        let log_due = eval_due || step.is_multiple_of(config.log_every);
        if log_due {
            metrics.write(&record)?;
            let tokens_per_s = if step_secs > 0.0 {
                tokens_per_step as f64 / step_secs
            } else {
                0.0
            };
            timings.write(&TimingRecord {
                step,
                elapsed_s: segment_start.elapsed().as_secs_f64(),
                step_ms: step_secs * 1e3,
                tokens_per_s,
            })?;
        }
        progress.step(step, record.loss.unwrap_or(f32::NAN), lr);
        if eval_due {
            progress.eval(step, record.train_eval_loss, record.val_loss);
        }
        if let Some(full) = record.full_val_loss {
            progress.message(&format!("step {step}: full validation loss {full:.4}"));
        }
        last_record = Some(record);
        let stop = opts.stop.as_ref().is_some_and(|f| f.load(Ordering::SeqCst));
        let ckpt_due = last
            || stop
            || (config.checkpoint.every > 0 && step.is_multiple_of(config.checkpoint.every));
        if ckpt_due {
            let (samplers, mut extra) = batchers.states();
            extra.insert("objective".to_string(), config.objective.clone());
            extra.insert(SPEC_TEXT_KEY.to_string(), spec.text.clone());
            let meta = CheckpointMeta {
                spec_path: config.spec.display().to_string(),
                spec_hash: compiled.spec_hash.clone(),
                model: config.model.clone(),
                step,
                seed,
                samplers,
                tokenizer: data.tokenizer.to_json(),
                config_yaml: config.to_yaml(),
                extra,
            };
            let t = Instant::now();
            let ckpt = snapshot(backend.as_ref(), meta)?;
            last_ckpt = Some(save(&ckpt_dir, &ckpt, opts.crash)?);
            phases.checkpoint += t.elapsed().as_secs_f64();
        }
        phases.other += t_rest.elapsed().as_secs_f64();
        if stop && !last {
            outcome = TrainOutcome::Interrupted;
            break;
        }
    }

    if let Err(e) = crate::plot::plot_metrics_file(
        &metrics_path,
        &format!("{} on {}", config.model, data_name(config)),
        &out_dir.join(PLOT_FILE),
    ) {
        progress.message(&format!("warning: no loss plot: {e}"));
    }
    match outcome {
        TrainOutcome::Interrupted => progress.message(&format!(
            "interrupted after step {step}; checkpoint written; continue with `--resume`"
        )),
        TrainOutcome::Finished => {}
    }
    progress.finish();
    if opts.profile {
        phases.other -= phases.eval + phases.checkpoint;
        let total = segment_start.elapsed().as_secs_f64();
        let mut report = phases.report(total);
        match backend.profile_report() {
            Some(k) => {
                report.push_str("\ntraining step, by kernel kind:\n");
                report.push_str(&k);
            }
            None => report.push_str(&format!(
                "\n(the `{}` executor has no per-kernel profile)\n",
                opts.executor
            )),
        }
        eprint!("{report}");
    }
    Ok(TrainSummary {
        outcome,
        step,
        start_step: start,
        out_dir,
        checkpoint: last_ckpt,
        last: last_record,
    })
}

/// Wall time of each phase of the loop (`kiln train --profile`).
#[derive(Default)]
struct PhaseTimes {
    steps: u64,
    /// Batches: sampling, objective transforms, input tensors.
    data: f64,
    /// The training program.
    step: f64,
    /// Loss estimates (and the final full-validation pass).
    eval: f64,
    checkpoint: f64,
    /// Metrics, progress output and the rest of the loop body.
    other: f64,
}

impl PhaseTimes {
    fn report(&self, total: f64) -> String {
        let mut s = format!(
            "profile: {} steps in {:.2} s ({:.2} ms/step of training program)\n",
            self.steps,
            total,
            self.step * 1e3 / self.steps.max(1) as f64
        );
        let rows = [
            ("training step", self.step),
            ("data", self.data),
            ("evaluation", self.eval),
            ("checkpoints", self.checkpoint),
            ("metrics, logging", self.other.max(0.0)),
        ];
        let accounted: f64 = rows.iter().map(|r| r.1).sum();
        for (name, t) in rows
            .into_iter()
            .chain([("unaccounted", (total - accounted).max(0.0))])
        {
            s.push_str(&format!(
                "  {name:<18} {t:>9.3} s {:>6.1}%\n",
                100.0 * t / total.max(1e-12)
            ));
        }
        s
    }
}

fn data_name(config: &RunConfig) -> String {
    let p = config
        .data
        .path
        .as_ref()
        .or(config.data.token_file.as_ref());
    p.and_then(|p| p.file_stem())
        .map_or_else(|| "data".to_string(), |s| s.to_string_lossy().into_owned())
}
