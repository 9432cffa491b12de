//! `kiln eval`: a checkpoint's validation loss and perplexity, or its scores on evaluation tasks.
//!
//! The validation loss is over the whole validation split in non-overlapping windows of
//! `seq_len` (each token after the first is a target once), in batches of `batch_size` windows;
//! a last batch with fewer windows is dropped, so every batch has the compiled shape and at most
//! `batch_size - 1` windows go unscored. Perplexity is `exp(loss)`.
//!
//! Tasks (`--task NAME`) are the shipped ones of [`crate::evaltasks::shipped_tasks`], scored the
//! lm-evaluation-harness way through the logits program: multiple choice by log-likelihood,
//! generation greedily up to the task's stop strings.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::RunConfig;
use crate::evaltasks::baseline::SamplingGenerator;
use crate::evaltasks::{self, load, shipped_tasks, McConfig, MetricValue, TaskKind, TaskSpec};
use crate::evaltasks::{Generator, ModelError};
use crate::generate::{generate_seq2seq, logits_model, LogitsModel, Seq2SeqIds};
use crate::sample::{SamplingConfig, TokenSampler};
use crate::session::{compile_run, load_spec, make_backend, Executor, Programs, RunError};
use crate::tokenizer::Tokenizer;
use crate::train::{load_compatible, load_run_data, restore, sequential_loss};

/// How to run `kiln eval`.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub executor: Executor,
    pub checkpoint: PathBuf,
    /// Task names; empty means the validation loss.
    pub tasks: Vec<String>,
    /// Folder holding the task files (`data/tasks`).
    pub tasks_dir: PathBuf,
    pub num_fewshot: usize,
    /// Evaluate only the first `limit` examples of each task.
    pub limit: Option<usize>,
    /// Score only the first `max_batches` validation batches.
    pub max_batches: Option<usize>,
}

/// The validation loss of a checkpoint.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ValReport {
    pub loss: f64,
    pub perplexity: f64,
    /// Target tokens scored (examples, when `unit` says so).
    pub tokens: usize,
    /// What `tokens` counts: `"tokens"`, or `"examples"` for `multiple_choice`, whose loss is
    /// per example.
    pub unit: &'static str,
}

/// One task's scores: `{"task": ..., "metrics": {...}, "n": ...}` in JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskReport {
    pub task: String,
    pub n: usize,
    /// Metric values and their standard errors (`acc`, `acc_stderr`, ...).
    pub metrics: BTreeMap<String, f64>,
    /// One record per evaluated example, in task order (`kiln eval --log-samples`): for multiple
    /// choice `{"doc", "label", "logliks", "pred", "pred_norm", "acc", "acc_norm"}`, for
    /// generation `{"doc", "prediction", "target", "exact_match", "f1"}`.
    pub samples: Vec<serde_json::Value>,
}

impl TaskReport {
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"task": self.task, "metrics": self.metrics, "n": self.n})
    }
}

/// What `kiln eval` measured.
#[derive(Debug, Clone, PartialEq)]
pub enum EvalReport {
    Validation(ValReport),
    Tasks(Vec<TaskReport>),
}

fn task_spec(name: &str) -> Result<TaskSpec, RunError> {
    let tasks = shipped_tasks();
    if let Some(t) = tasks.iter().find(|t| t.name == name) {
        return Ok(t.clone());
    }
    let names: Vec<&str> = tasks.iter().map(|t| t.name).collect();
    Err(RunError::Usage {
        message: format!("unknown task `{name}`"),
        help: Some(format!("tasks: {}", names.join(", "))),
    })
}

fn insert(metrics: &mut BTreeMap<String, f64>, name: &str, v: MetricValue) {
    metrics.insert(name.to_string(), v.value);
    metrics.insert(format!("{name}_stderr"), v.stderr);
}

/// An encoder-decoder as a [`Generator`]: the prompt is its source.
struct Seq2SeqGenerator<'a> {
    model: &'a mut LogitsModel,
    ids: Seq2SeqIds,
    tokenizer: Tokenizer,
    sampler: TokenSampler,
}

impl Generator for Seq2SeqGenerator<'_> {
    fn generate(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        stop: &[String],
    ) -> Result<String, ModelError> {
        generate_seq2seq(
            self.model,
            self.ids,
            &self.tokenizer,
            &mut self.sampler,
            prompt,
            max_tokens,
            stop,
        )
        .map(|g| g.text)
        .map_err(|e| ModelError {
            message: e.to_string(),
        })
    }
}

/// Runs one shipped task against a model.
/// An encoder-decoder (`seq2seq` set) answers generation tasks from its decoder with the prompt
/// as its source; multiple-choice scoring needs a decoder-only model.
pub fn run_task(
    spec: &TaskSpec,
    dir: &Path,
    tokenizer: &Tokenizer,
    model: &mut LogitsModel,
    seq2seq: Option<Seq2SeqIds>,
    num_fewshot: usize,
    limit: Option<usize>,
) -> Result<TaskReport, RunError> {
    let fewshot = spec.fewshot(num_fewshot, 1234);
    let cut = |n: usize| limit.map_or(n, |l| l.min(n));
    let mut metrics = BTreeMap::new();
    let samples;
    let n = match spec.kind {
        TaskKind::MultipleChoice if seq2seq.is_some() => {
            return Err(RunError::Usage {
                message: format!(
                    "task `{}` scores continuations of a context: it needs a decoder-only model",
                    spec.name
                ),
                help: Some("an encoder-decoder takes the generation tasks".to_string()),
            })
        }
        TaskKind::MultipleChoice => {
            let docs = load::load_multiple_choice(&dir.join(spec.file))?;
            let pool = load::load_multiple_choice(&dir.join(spec.train_file))?;
            let docs = &docs[..cut(docs.len())];
            let report = evaltasks::evaluate_multiple_choice(
                docs,
                &pool,
                &fewshot,
                tokenizer,
                model,
                McConfig::default(),
            )?;
            insert(&mut metrics, "acc", report.acc);
            insert(&mut metrics, "acc_norm", report.acc_norm);
            metrics.insert("chance".to_string(), report.chance);
            samples = report
                .docs
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    serde_json::json!({
                        "doc": i, "label": d.label, "logliks": d.logliks, "pred": d.pred,
                        "pred_norm": d.pred_norm, "acc": u8::from(d.pred == d.label),
                        "acc_norm": u8::from(d.pred_norm == d.label),
                    })
                })
                .collect();
            report.n
        }
        TaskKind::Generation => {
            let docs = load::load_text_to_text(&dir.join(spec.file))?;
            let pool = load::load_text_to_text(&dir.join(spec.train_file))?;
            let docs = &docs[..cut(docs.len())];
            let usable = tokenizer.vocab_size();
            // Only one of the two is built; each borrows the model.
            let (mut s2s, mut lm);
            let generator: &mut dyn Generator = match seq2seq {
                Some(ids) => {
                    s2s = Seq2SeqGenerator {
                        model,
                        ids,
                        tokenizer: tokenizer.clone(),
                        sampler: TokenSampler::new(SamplingConfig::greedy())?,
                    };
                    &mut s2s
                }
                None => {
                    lm = SamplingGenerator {
                        logits: |context: &[u32]| -> Result<Vec<f32>, String> {
                            let mut row = model.next_logits(context)?;
                            row.truncate(usable);
                            Ok(row)
                        },
                        tokenizer: tokenizer.clone(),
                        sampler: TokenSampler::new(SamplingConfig::greedy())?,
                        eos: None,
                    };
                    &mut lm
                }
            };
            let report = evaltasks::evaluate_generation(
                docs,
                &pool,
                &fewshot,
                tokenizer,
                generator,
                spec.max_tokens,
                &spec.stop_strings(),
            )?;
            insert(&mut metrics, "exact_match", report.exact_match);
            insert(&mut metrics, "f1", report.f1);
            samples = report
                .docs
                .iter()
                .enumerate()
                .map(|(i, d)| {
                    serde_json::json!({
                        "doc": i, "prediction": d.prediction, "target": d.target,
                        "exact_match": d.exact_match, "f1": d.f1,
                    })
                })
                .collect();
            report.n
        }
    };
    Ok(TaskReport {
        task: spec.name.to_string(),
        n,
        metrics,
        samples,
    })
}

/// Evaluates a checkpoint against a run config's data (or tasks).
pub fn evaluate(config: &RunConfig, opts: &EvalOptions) -> Result<EvalReport, RunError> {
    // Unknown task names fail before anything is loaded.
    let specs = opts
        .tasks
        .iter()
        .map(|t| task_spec(t))
        .collect::<Result<Vec<_>, _>>()?;
    let spec = load_spec(config)?;
    let compiled = compile_run(config, &spec, Programs::Inference)?;
    let data = load_run_data(config, &compiled)?;
    let path = &opts.checkpoint;
    let mut eval = make_backend(opts.executor, &compiled.eval, config.seed, config.threads)?;
    let ckpt = load_compatible(
        path,
        config,
        &compiled,
        crate::session::param_shapes(eval.as_ref()),
    )?;
    if ckpt.meta.tokenizer != data.tokenizer.to_json() {
        return Err(RunError::TokenizerMismatch {
            expected: format!(
                "{} with {} tokens",
                data.tokenizer.kind_name(),
                data.tokenizer.vocab_size()
            ),
            found: Tokenizer::from_json(&ckpt.meta.tokenizer).map_or_else(
                |_| "unreadable".to_string(),
                |t| format!("{} with {} tokens", t.kind_name(), t.vocab_size()),
            ),
        });
    }
    if !specs.is_empty() {
        let mut model = logits_model(opts.executor, config, &compiled, path, &ckpt)?;
        let seq2seq = Seq2SeqIds::of(&compiled, &data.tokenizer);
        if specs.iter().any(|s| s.kind == TaskKind::Generation) {
            // Generation answers token by token: decode through the key/value cache (the same
            // tokens as without it; multiple choice scores whole windows and does not use it).
            if let Ok(step) = crate::session::compile_decode(&compiled.logits) {
                let backend = make_backend(opts.executor, &step, config.seed, config.threads)?;
                model.enable_cache(backend)?;
            }
        }
        let mut reports = Vec::new();
        for s in &specs {
            reports.push(run_task(
                s,
                &opts.tasks_dir,
                &data.tokenizer,
                &mut model,
                seq2seq,
                opts.num_fewshot,
                opts.limit,
            )?);
        }
        return Ok(EvalReport::Tasks(reports));
    }
    restore(eval.as_mut(), &ckpt, path, false)?;
    if data.val.is_empty() {
        return Err(config
            .error_at(
                &["data", "val_fraction"],
                crate::config::ConfigErrorKind::Invalid,
                "there is no validation split to evaluate",
                "no validation data",
                Some("set `data.val_fraction` above 0".to_string()),
            )
            .into());
    }
    if compiled.objective == crate::objectives::ObjectiveKind::SpanCorruption {
        return span_corruption_val_loss(config, &compiled, &data, eval.as_mut(), opts);
    }
    if compiled.objective == crate::objectives::ObjectiveKind::Seq2Seq {
        return seq2seq_val_loss(config, &data, eval.as_mut(), opts);
    }
    if compiled.objective == crate::objectives::ObjectiveKind::MultipleChoice {
        return choice_val_loss(config, &data, eval.as_mut(), opts);
    }
    let scored = sequential_loss(
        eval.as_mut(),
        &data.val,
        config.batch_size,
        config.seq_len,
        config.seed,
        opts.max_batches,
    )?;
    let Some((loss, tokens)) = scored else {
        return Err(RunError::Usage {
            message: format!(
                "the validation split ({} tokens) holds fewer than batch_size = {} windows of seq_len = {}",
                data.val.len(),
                config.batch_size,
                config.seq_len
            ),
            help: Some("lower `batch_size` (`--set batch_size=1`) or `seq_len`".to_string()),
        });
    };
    Ok(EvalReport::Validation(ValReport {
        loss,
        perplexity: loss.exp(),
        tokens,
        unit: "tokens",
    }))
}

/// Span corruption's validation loss: the mean over target tokens of `max_batches` (default
/// `eval.batches`) batches of windows drawn by the validation stream of the run seed, so the
/// same checkpoint always gets the same figure. (Corruption is random, so there is no fixed
/// tiling of the split as for causal LM.)
fn span_corruption_val_loss(
    config: &RunConfig,
    compiled: &crate::session::CompiledRun,
    data: &crate::data::Dataset,
    eval: &mut dyn crate::backend::Backend,
    opts: &EvalOptions,
) -> Result<EvalReport, RunError> {
    let objective = crate::session::span_corruption_objective(
        config,
        compiled.vocab,
        data.tokenizer.vocab_size(),
    )?;
    let mut batcher = crate::objectives::StreamBatcher::new(
        objective,
        config.seed,
        crate::data::SamplerStream::ValEval,
        config.batch_size,
    )?;
    let n = opts.max_batches.unwrap_or(config.eval.batches).max(1);
    let mut batches = Vec::with_capacity(n);
    for _ in 0..n {
        batches.push(batcher.next_batch(&data.val, "validation")?);
    }
    weighted_loss(config, eval, &batches)
}

/// A `seq2seq` run's validation loss: every full batch of its held-out examples, in order
/// (`max_batches` stops early), per target token.
fn seq2seq_val_loss(
    config: &RunConfig,
    data: &crate::data::Dataset,
    eval: &mut dyn crate::backend::Backend,
    opts: &EvalOptions,
) -> Result<EvalReport, RunError> {
    let examples = crate::train::load_examples(config, &data.tokenizer)?;
    let batches = held_out_batches(config, &examples.val, opts, |chunk| {
        crate::objectives::text_to_text::pad_batch(
            chunk,
            &examples.format,
            crate::objectives::ObjectiveKind::Seq2Seq,
        )
    })?;
    weighted_loss(config, eval, &batches)
}

/// The mean loss per held-out example of a `multiple_choice` run, over whole batches in file
/// order (the training loop's `val_loss` estimates it from `eval.batches` shuffled batches).
fn choice_val_loss(
    config: &RunConfig,
    data: &crate::data::Dataset,
    eval: &mut dyn crate::backend::Backend,
    opts: &EvalOptions,
) -> Result<EvalReport, RunError> {
    let crate::train::RunExamples::Choice { val, choices, .. } =
        crate::train::load_choice_examples(config, &data.tokenizer)?
    else {
        return Err(RunError::Usage {
            message: "internal: multiple_choice examples expected".to_string(),
            help: None,
        });
    };
    let batches = held_out_batches(config, &val, opts, |chunk| {
        crate::objectives::choice::choice_batch(chunk, choices, config.seq_len)
    })?;
    weighted_loss(config, eval, &batches)
}

/// Whole batches of `batch_size` held-out examples, in file order, at most `max_batches`.
fn held_out_batches<T>(
    config: &RunConfig,
    examples: &[T],
    opts: &EvalOptions,
    batch: impl Fn(&[T]) -> Result<crate::objectives::ObjectiveBatch, crate::objectives::ObjectiveError>,
) -> Result<Vec<crate::objectives::ObjectiveBatch>, RunError> {
    let b = config.batch_size;
    let mut batches = Vec::new();
    for chunk in examples.chunks_exact(b) {
        if opts.max_batches.is_some_and(|m| batches.len() >= m) {
            break;
        }
        batches.push(batch(chunk)?);
    }
    if batches.is_empty() {
        return Err(config
            .error_at(
                &["data", "val_fraction"],
                crate::config::ConfigErrorKind::Invalid,
                format!("fewer held-out examples than one batch of {b}"),
                "too few validation examples",
                Some("raise `data.val_fraction` or lower `batch_size`".to_string()),
            )
            .into());
    }
    Ok(batches)
}

/// The mean loss per target token over `batches` (the program's loss is the mean over a
/// batch's target tokens: each batch is weighted by their count), or per example when the
/// batches have no `targets`.
fn weighted_loss(
    config: &RunConfig,
    eval: &mut dyn crate::backend::Backend,
    batches: &[crate::objectives::ObjectiveBatch],
) -> Result<EvalReport, RunError> {
    let (mut sum, mut tokens) = (0.0f64, 0usize);
    for batch in batches {
        // Without `targets` (multiple choice) the loss is a mean over the batch's examples.
        let count = batch.get("targets").map_or(batch.rows(), |t| {
            t.data().iter().filter(|&&x| x >= 0).count()
        });
        let out = eval
            .run(
                &crate::train::batch_inputs(batch),
                crate::backend::StepRng {
                    seed: config.seed,
                    step: 0,
                },
            )
            .map_err(RunError::backend("eval"))?;
        let loss = out
            .get("loss")
            .and_then(|t| t.data.first().copied())
            .ok_or_else(|| RunError::Backend {
                program: "eval",
                source: crate::backend::BackendError::Exec(
                    "the program has no `loss` output".to_string(),
                ),
            })?;
        // The program's loss is the mean over the batch's target tokens: weight by their count.
        sum += f64::from(loss) * count as f64;
        tokens += count;
    }
    let loss = sum / tokens.max(1) as f64;
    let unit = match batches.first().map(|b| b.get("targets").is_some()) {
        Some(false) => "examples",
        _ => "tokens",
    };
    Ok(EvalReport::Validation(ValReport {
        loss,
        perplexity: loss.exp(),
        tokens,
        unit,
    }))
}
