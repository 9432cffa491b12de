//! `kiln generate`: continue a prompt with a trained checkpoint, and the model-as-a-function
//! pieces evaluation tasks share with it.
//!
//! A checkpoint carries its resolved run config, tokenizer and spec text, so generation needs
//! nothing else (the spec file may since have moved or changed): the logits program is compiled
//! from the stored spec and model name, and the parameters are loaded by name.
//!
//! Without a cache each new token recomputes the logits of the whole window (the last `seq_len`
//! tokens), right-padded to the program's fixed shape; padding after the last real token changes
//! nothing under a causal mask, which is what the stream objectives train. With the key/value
//! cache ([`LogitsModel::enable_cache`], `kiln_compiler::decode`), a context that fits the window
//! is fed one token at a time through a decode step that keeps every attention's keys and values,
//! so a new token costs one position instead of the window; a context that extends the cached one
//! feeds only the new tokens. Once the context outgrows the window, the window slides and every
//! position changes, so those tokens take the full-window path: the cache never changes what
//! is generated, only how fast.

use std::collections::BTreeMap;
use std::path::Path;

use crate::backend::{Backend, InputTensor, StepRng};
use crate::checkpoint::{load_checkpoint, Checkpoint, ModelSignature};
use crate::config::RunConfig;
use crate::evaltasks::{ModelError, Scorer};
use crate::sample::{self, Generated, SamplingConfig, TokenSampler};
use crate::session::{
    compile_run, load_spec, load_spec_text, make_backend, param_shapes, CompiledRun, Executor,
    Programs, RunError,
};
use crate::tokenizer::Tokenizer;
use crate::train::{restore, SPEC_TEXT_KEY};

/// A model as a function from tokens to next-token logits, over the logits program.
pub struct LogitsModel {
    backend: Box<dyn Backend>,
    /// Tokens the program reads.
    window: usize,
    /// Width of a logits row (the model's vocabulary).
    vocab: usize,
    seed: u64,
    decoder: Option<Decoder>,
    /// The input the context goes to: `tokens`, or an encoder-decoder's `decoder_inputs`.
    token_input: String,
    /// The other inputs, the same for every call until changed (an encoder-decoder's source).
    fixed: BTreeMap<String, InputTensor>,
}

/// The decode step and the tokens whose keys and values its caches hold (positions `0..len`).
struct Decoder {
    backend: Box<dyn Backend>,
    cached: Vec<u32>,
}

impl Decoder {
    /// Feeds `context[from..]` at their positions and returns the logits after the last.
    fn feed(
        &mut self,
        context: &[u32],
        from: usize,
        token_input: &str,
        fixed: &BTreeMap<String, InputTensor>,
        seed: u64,
    ) -> Result<Vec<f32>, String> {
        self.cached.truncate(from);
        let mut last = Vec::new();
        for (pos, &id) in context.iter().enumerate().skip(from) {
            let token =
                i32::try_from(id).map_err(|_| format!("token id {id} does not fit an i32"))?;
            let mut inputs = fixed.clone();
            inputs.insert(
                token_input.to_string(),
                InputTensor::I32 {
                    shape: vec![1, 1],
                    data: vec![token],
                },
            );
            inputs.insert(
                kiln_compiler::decode::POS_INPUT.to_string(),
                InputTensor::I32 {
                    shape: vec![1],
                    data: vec![pos as i32],
                },
            );
            let out = self
                .backend
                .run(&inputs, StepRng { seed, step: 0 })
                .map_err(|e| e.to_string())?;
            last = out
                .get("logits")
                .ok_or_else(|| "the decode step has no `logits` output".to_string())?
                .data
                .clone();
            self.cached.push(id);
        }
        Ok(last)
    }
}

impl LogitsModel {
    /// `backend` runs a logits program over `[1, window]` tokens giving `[1, window, vocab]`.
    pub fn new(backend: Box<dyn Backend>, window: usize, vocab: usize, seed: u64) -> LogitsModel {
        LogitsModel {
            backend,
            window,
            vocab,
            seed,
            decoder: None,
            token_input: "tokens".to_string(),
            fixed: BTreeMap::new(),
        }
    }

    /// An encoder-decoder's logits program: contexts go to `decoder_inputs`, the source (set
    /// with [`LogitsModel::set_source`]) to `inputs`.
    pub fn encoder_decoder(
        backend: Box<dyn Backend>,
        window: usize,
        vocab: usize,
        seed: u64,
    ) -> LogitsModel {
        let mut m = LogitsModel::new(backend, window, vocab, seed);
        m.token_input = "decoder_inputs".to_string();
        m
    }

    /// Sets an encoder-decoder's source row (`inputs` `[1, S]`, already padded to the program's
    /// length) and how many of its ids are tokens (`input_len`); the cache is dropped when
    /// either changes.
    pub fn set_source(&mut self, ids: Vec<i32>, len: usize) {
        let row = InputTensor::I32 {
            shape: vec![1, ids.len()],
            data: ids,
        };
        let len = InputTensor::I32 {
            shape: vec![1],
            data: vec![len as i32],
        };
        if self.fixed.get("inputs") != Some(&row) || self.fixed.get("input_len") != Some(&len) {
            self.fixed.insert("inputs".to_string(), row);
            self.fixed.insert("input_len".to_string(), len);
            if let Some(d) = self.decoder.as_mut() {
                d.cached.clear();
            }
        }
    }

    /// Decodes through `step` (the logits program's decode step, `session::compile_decode`) from
    /// now on, its parameters copied from the logits program's.
    pub fn enable_cache(&mut self, mut step: Box<dyn Backend>) -> Result<(), RunError> {
        crate::session::copy_params(self.backend.as_ref(), step.as_mut())?;
        self.decoder = Some(Decoder {
            backend: step,
            cached: Vec::new(),
        });
        Ok(())
    }

    /// Whether next-token logits come from the key/value cache.
    pub fn has_cache(&self) -> bool {
        self.decoder.is_some()
    }

    pub fn window(&self) -> usize {
        self.window
    }

    pub fn vocab(&self) -> usize {
        self.vocab
    }

    /// Logits at every position of `ids` (at most `window` of them), row after row.
    pub fn forward(&mut self, ids: &[u32]) -> Result<Vec<f32>, String> {
        if ids.is_empty() || ids.len() > self.window {
            return Err(format!(
                "a context of {} tokens does not fit the window of {}",
                ids.len(),
                self.window
            ));
        }
        let mut data = vec![0i32; self.window];
        for (d, &id) in data.iter_mut().zip(ids) {
            *d = i32::try_from(id).map_err(|_| format!("token id {id} does not fit an i32"))?;
        }
        let mut inputs = self.fixed.clone();
        inputs.insert(
            self.token_input.clone(),
            InputTensor::I32 {
                shape: vec![1, self.window],
                data,
            },
        );
        let out = self
            .backend
            .run(
                &inputs,
                StepRng {
                    seed: self.seed,
                    step: 0,
                },
            )
            .map_err(|e| e.to_string())?;
        let logits = out
            .get("logits")
            .ok_or_else(|| "the program has no `logits` output".to_string())?;
        let need = ids.len() * self.vocab;
        if logits.data.len() < need {
            return Err(format!(
                "the logits output has {} values, fewer than {need}",
                logits.data.len()
            ));
        }
        Ok(logits.data[..need].to_vec())
    }

    /// Logits of the token after `context` (its last `window` tokens are read).
    pub fn next_logits(&mut self, context: &[u32]) -> Result<Vec<f32>, String> {
        if context.is_empty() {
            return Err("cannot continue an empty context".to_string());
        }
        if let Some(d) = self
            .decoder
            .as_mut()
            .filter(|_| context.len() <= self.window)
        {
            // Reuse the cached prefix; the last token is always fed (its logits are the answer).
            let common = d
                .cached
                .iter()
                .zip(context)
                .take_while(|(a, b)| a == b)
                .count()
                .min(context.len() - 1);
            let mut row = d.feed(context, common, &self.token_input, &self.fixed, self.seed)?;
            if row.len() < self.vocab {
                return Err(format!(
                    "the decode step gave {} logits, fewer than {}",
                    row.len(),
                    self.vocab
                ));
            }
            row.truncate(self.vocab);
            return Ok(row);
        }
        let tail = &context[context.len().saturating_sub(self.window)..];
        let rows = self.forward(tail)?;
        Ok(rows[(tail.len() - 1) * self.vocab..].to_vec())
    }
}

/// log Σ exp(row), in f64.
fn log_sum_exp(row: &[f32]) -> f64 {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    if !max.is_finite() {
        return max;
    }
    max + row
        .iter()
        .map(|&x| (f64::from(x) - max).exp())
        .sum::<f64>()
        .ln()
}

impl Scorer for LogitsModel {
    /// Σ log P(continuation token | everything before it), reading the last `window` tokens
    /// before the continuation's end. The context must not be empty: these models have no start
    /// token to predict the first token from.
    fn loglik(&mut self, context: &[u32], continuation: &[u32]) -> Result<f64, ModelError> {
        let err = |message: String| ModelError { message };
        if continuation.is_empty() {
            return Ok(0.0);
        }
        if context.is_empty() {
            return Err(err(
                "an empty context cannot be scored: the model has no start token".to_string(),
            ));
        }
        let all: Vec<u32> = context.iter().chain(continuation).copied().collect();
        let n = all.len();
        let v = self.vocab;
        let mut total = 0.0;
        // Targets in chunks of at most `window`, each read with the `window` tokens before its
        // end (the harness's rolling windows when a continuation outgrows the window).
        let mut first = n - continuation.len();
        while first < n {
            let end = n.min(first + self.window);
            let start = (end - 1).saturating_sub(self.window);
            let rows = self.forward(&all[start..end - 1]).map_err(err)?;
            for (j, &target) in all.iter().enumerate().take(end).skip(first) {
                let pos = j - 1 - start;
                let row = &rows[pos * v..(pos + 1) * v];
                let target = target as usize;
                let logit = row.get(target).ok_or_else(|| {
                    err(format!(
                        "token id {target} is outside the model's {v} outputs"
                    ))
                })?;
                total += f64::from(*logit) - log_sum_exp(row);
            }
            first = end;
        }
        Ok(total)
    }
}

/// A checkpoint made ready for inference: its config, tokenizer and a logits model.
pub struct Inference {
    pub config: RunConfig,
    pub tokenizer: Tokenizer,
    pub model: LogitsModel,
    pub checkpoint: Checkpoint,
    /// Why the model decodes without a key/value cache (`None`: it has one, or none was asked).
    pub no_cache_reason: Option<String>,
    /// Set for an encoder-decoder: the prompt is its source, the answer its decoder's output.
    pub seq2seq: Option<Seq2SeqIds>,
}

/// How an encoder-decoder is prompted: T5's special ids as Kiln numbers them above the
/// tokenizer's (`session::span_corruption_objective`: pad, which also starts the decoder, then
/// EOS) and the encoder's length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seq2SeqIds {
    pub source_len: usize,
    pub pad: u32,
    pub eos: u32,
    pub start: u32,
}

impl Seq2SeqIds {
    /// The ids of a compiled run whose logits program has an encoder (`inputs`), numbered above
    /// `tokenizer`'s as `kiln train` numbers them; `None` for a decoder-only model.
    pub fn of(compiled: &CompiledRun, tokenizer: &Tokenizer) -> Option<Seq2SeqIds> {
        source_len(compiled).map(|source_len| {
            let (pad, eos) = crate::session::t5_special_ids(tokenizer.vocab_size());
            Seq2SeqIds {
                source_len,
                pad,
                eos,
                start: pad,
            }
        })
    }

    /// The encoder row of a prompt and its length: its ids, EOS, then padding (cut to fit,
    /// EOS kept last).
    pub fn source_row(&self, ids: &[u32]) -> (Vec<i32>, usize) {
        let keep = ids.len().min(self.source_len.saturating_sub(1));
        let mut row: Vec<i32> = ids[..keep].iter().map(|&i| i as i32).collect();
        row.push(self.eos as i32);
        let len = row.len();
        row.resize(self.source_len, self.pad as i32);
        (row, len)
    }
}

/// The encoder length of a logits program with an `inputs` input.
fn source_len(compiled: &CompiledRun) -> Option<usize> {
    let g = &compiled.logits.graph;
    let v = g.find_input("inputs")?;
    let d = g.shape(v).get(1)?.bind(&compiled.logits.bindings).ok()?;
    usize::try_from(d).ok()
}

/// The run config stored in a checkpoint (paths in it are absolute).
pub fn checkpoint_config(path: &Path, ckpt: &Checkpoint) -> Result<RunConfig, RunError> {
    Ok(RunConfig::from_yaml(
        &ckpt.meta.config_yaml,
        &format!("{} (stored run config)", path.display()),
        Path::new(""),
        &[],
    )?)
}

/// Loads `ckpt` (read from `path`) into a fresh program of `compiled`, checking that it fits.
pub fn logits_model(
    executor: Executor,
    config: &RunConfig,
    compiled: &CompiledRun,
    path: &Path,
    ckpt: &Checkpoint,
) -> Result<LogitsModel, RunError> {
    let mut backend = make_backend(executor, &compiled.logits, config.seed, config.threads)?;
    let signature = ModelSignature {
        spec_hash: Some(compiled.spec_hash.clone()),
        model: config.model.clone(),
        params: param_shapes(backend.as_ref()),
    };
    if config.finetune.is_some() {
        crate::finetune::check_params_compatible(ckpt, path, &signature)?;
    } else {
        ckpt.check_compatible(path, &signature)?;
    }
    restore(backend.as_mut(), ckpt, path, false)?;
    let (w, v, seed) = (compiled.window, compiled.vocab, config.seed);
    Ok(
        if kiln_compiler::decode::token_input(&compiled.logits.graph) == Some("decoder_inputs") {
            LogitsModel::encoder_decoder(backend, w, v, seed)
        } else {
            LogitsModel::new(backend, w, v, seed)
        },
    )
}

/// Loads a checkpoint and everything it names (spec, model config, tokenizer), decoding with a
/// key/value cache where the model has one.
pub fn load_inference(path: &Path, executor: Executor) -> Result<Inference, RunError> {
    load_inference_with(path, executor, true)
}

/// [`load_inference`], with the key/value cache on or off (`kiln generate --no-kv-cache`).
pub fn load_inference_with(
    path: &Path,
    executor: Executor,
    kv_cache: bool,
) -> Result<Inference, RunError> {
    let checkpoint = load_checkpoint(path)?;
    let config = checkpoint_config(path, &checkpoint)?;
    let tokenizer = Tokenizer::from_json(&checkpoint.meta.tokenizer)?;
    // The spec text the run was trained from travels in the checkpoint; older checkpoints
    // without it read the file (whose hash must still match).
    let spec = match checkpoint.meta.extra.get(SPEC_TEXT_KEY) {
        Some(text) => load_spec_text(&config, text)?,
        None => load_spec(&config)?,
    };
    let compiled = compile_run(&config, &spec, Programs::Inference)?;
    let mut model = logits_model(executor, &config, &compiled, path, &checkpoint)?;
    let seq2seq = Seq2SeqIds::of(&compiled, &tokenizer);
    let mut no_cache_reason = None;
    if kv_cache {
        match crate::session::compile_decode(&compiled.logits) {
            Ok(step) => {
                let backend = make_backend(executor, &step, config.seed, config.threads)?;
                model.enable_cache(backend)?;
            }
            Err(why) => no_cache_reason = Some(why),
        }
    }
    Ok(Inference {
        config,
        tokenizer,
        model,
        checkpoint,
        no_cache_reason,
        seq2seq,
    })
}

/// An encoder-decoder's answer to `prompt`: the prompt is the encoder's source (EOS appended,
/// padded), the decoder starts from its start id and stops at EOS (the only special id it may
/// draw), after `max_tokens`, or after a stop string.
pub fn generate_seq2seq(
    model: &mut LogitsModel,
    ids: Seq2SeqIds,
    tokenizer: &Tokenizer,
    sampler: &mut TokenSampler,
    prompt: &[u32],
    max_tokens: usize,
    stop: &[String],
) -> Result<Generated, sample::GenerateError> {
    let (row, len) = ids.source_row(prompt);
    model.set_source(row, len);
    let usable = tokenizer.vocab_size();
    let eos = ids.eos as usize;
    let next = |context: &[u32]| -> Result<Vec<f32>, String> {
        let mut row = model.next_logits(context)?;
        row.truncate(eos + 1);
        for x in row.iter_mut().take(eos).skip(usable) {
            *x = f32::NEG_INFINITY;
        }
        Ok(row)
    };
    sample::generate(
        next,
        tokenizer,
        sampler,
        &[ids.start],
        max_tokens,
        stop,
        Some(ids.eos),
    )
}

/// Samples up to `tokens` tokens after `prompt`, stopping early after any of the `stop` strings
/// (which are cut from the text). Tokens the tokenizer cannot decode (ids past its vocabulary,
/// when the model's output is wider) are never drawn. An encoder-decoder reads the prompt with
/// its encoder and answers from its decoder's start token, stopping at EOS.
pub fn generate(
    inference: &mut Inference,
    prompt: &str,
    tokens: usize,
    sampling: SamplingConfig,
    stop: &[String],
) -> Result<Generated, RunError> {
    let ids = inference.tokenizer.encode(prompt)?;
    if ids.is_empty() {
        return Err(RunError::Usage {
            message: "the prompt is empty".to_string(),
            help: Some("give at least one character with `--prompt`".to_string()),
        });
    }
    let mut sampler = TokenSampler::new(sampling)?;
    let usable = inference.tokenizer.vocab_size();
    let model = &mut inference.model;
    if let Some(s) = inference.seq2seq {
        return Ok(generate_seq2seq(
            model,
            s,
            &inference.tokenizer,
            &mut sampler,
            &ids,
            tokens,
            stop,
        )?);
    }
    let next = |context: &[u32]| -> Result<Vec<f32>, String> {
        let mut row = model.next_logits(context)?;
        row.truncate(usable);
        Ok(row)
    };
    Ok(sample::generate(
        next,
        &inference.tokenizer,
        &mut sampler,
        &ids,
        tokens,
        stop,
        None,
    )?)
}
