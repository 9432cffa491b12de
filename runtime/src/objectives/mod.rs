//! Objectives on the data side: turning text into the integer inputs each training objective
//! feeds to a compiled program, by input name.
//!
//! | objective | tensors (i32) |
//! |---|---|
//! | `causal_lm` | `tokens` [B, T+1] (model reads `[:, :-1]`, predicts `[:, 1:]`) |
//! | `prefix_lm` | `tokens` [B, T+1], `prefix_len` `[B]` (see [`prefix_lm`] for mask and loss) |
//! | `seq2seq` | `inputs` [B, S], `input_len` `[B]`, `targets` [B, U] (-100 = ignored), |
//! | | `decoder_inputs` [B, U]; packed: plus segment ids and positions ([`text_to_text`]) |
//! | `span_corruption` | same as `seq2seq` (unpacked) |
//!
//! The model and its losses live in the compiled program; this module only builds batches,
//! deterministically from a seed. Windows are drawn with `data::BatchSampler` (nanoGPT's uniform
//! offsets); the objective's own randomness (prefix lengths, noise masks) comes from a second
//! ChaCha8 stream so both positions can be saved in a checkpoint.

pub mod choice;
pub mod prefix_lm;
pub mod span_corruption;
pub mod text_to_text;

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use miette::Diagnostic;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::{BatchSampler, DataError, SamplerState, SamplerStream, Tokens};
pub use span_corruption::{SpanCorruption, SpanCorruptionError};
pub use text_to_text::{EncodedExample, TextToTextError, TextToTextFormat, IGNORE_INDEX};

/// Why a batch could not be built.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum ObjectiveError {
    #[error("unknown objective `{name}`")]
    #[diagnostic(
        code(objective::unknown),
        help("known objectives: causal_lm, prefix_lm, seq2seq, span_corruption")
    )]
    Unknown { name: String },
    #[error("tensor of shape {shape:?} needs {expected} values, got {got}")]
    #[diagnostic(code(objective::shape))]
    Shape {
        shape: Vec<usize>,
        expected: usize,
        got: usize,
    },
    #[error("token id {id} does not fit an i32 input")]
    #[diagnostic(code(objective::id_too_large))]
    IdTooLarge { id: u32 },
    #[error(
        "prefix_lm needs seq_len >= 2 (a non-empty prefix and something to predict), got {seq_len}"
    )]
    #[diagnostic(code(objective::seq_len))]
    SeqLen { seq_len: usize },
    #[error("example {index} has {input} input and {target} target tokens; rows hold {inputs_len} and {targets_len}")]
    #[diagnostic(
        code(objective::too_long),
        help("encode examples with `TextToTextFormat::encode`, which cuts them")
    )]
    ExampleTooLong {
        index: usize,
        input: usize,
        target: usize,
        inputs_len: usize,
        targets_len: usize,
    },
    #[error("span corruption of inputs_len {inputs_len} produces targets of {needed} tokens, but targets_len is {targets_len}")]
    #[diagnostic(
        code(objective::targets_len),
        help("set targets_len to at least {needed} (T5's random_spans_helper)")
    )]
    TargetsLen {
        inputs_len: usize,
        targets_len: usize,
        needed: usize,
    },
    #[error("there are no examples to batch")]
    #[diagnostic(code(objective::no_examples))]
    NoExamples,
    #[error(transparent)]
    #[diagnostic(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    SpanCorruption(#[from] SpanCorruptionError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    TextToText(#[from] TextToTextError),
}

/// The objectives whose inputs this module builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ObjectiveKind {
    CausalLm,
    PrefixLm,
    Seq2Seq,
    SpanCorruption,
    MultipleChoice,
}

impl ObjectiveKind {
    pub const ALL: [ObjectiveKind; 5] = [
        ObjectiveKind::CausalLm,
        ObjectiveKind::PrefixLm,
        ObjectiveKind::Seq2Seq,
        ObjectiveKind::SpanCorruption,
        ObjectiveKind::MultipleChoice,
    ];

    /// The name used in specs and run configs.
    pub fn name(self) -> &'static str {
        match self {
            ObjectiveKind::CausalLm => "causal_lm",
            ObjectiveKind::PrefixLm => "prefix_lm",
            ObjectiveKind::Seq2Seq => "seq2seq",
            ObjectiveKind::SpanCorruption => "span_corruption",
            ObjectiveKind::MultipleChoice => "multiple_choice",
        }
    }
}

impl fmt::Display for ObjectiveKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ObjectiveKind {
    type Err = ObjectiveError;
    fn from_str(s: &str) -> Result<Self, ObjectiveError> {
        ObjectiveKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| ObjectiveError::Unknown {
                name: s.to_string(),
            })
    }
}

/// A dense row-major i32 tensor: what a program's integer inputs take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IntTensor {
    shape: Vec<usize>,
    data: Vec<i32>,
}

impl IntTensor {
    /// A tensor; `data.len()` must be the product of `shape`.
    pub fn new(shape: Vec<usize>, data: Vec<i32>) -> Result<IntTensor, ObjectiveError> {
        let expected = shape.iter().product::<usize>();
        if expected != data.len() {
            return Err(ObjectiveError::Shape {
                shape,
                expected,
                got: data.len(),
            });
        }
        Ok(IntTensor { shape, data })
    }

    /// A tensor of token ids.
    pub fn from_ids(shape: Vec<usize>, ids: &[u32]) -> Result<IntTensor, ObjectiveError> {
        let data = ids
            .iter()
            .map(|&id| i32::try_from(id).map_err(|_| ObjectiveError::IdTooLarge { id }))
            .collect::<Result<Vec<_>, _>>()?;
        IntTensor::new(shape, data)
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn data(&self) -> &[i32] {
        &self.data
    }

    pub fn into_data(self) -> Vec<i32> {
        self.data
    }

    /// Row `r` of a tensor of rank ≥ 1 (None when out of range).
    pub fn row(&self, r: usize) -> Option<&[i32]> {
        let rows = *self.shape.first()?;
        if r >= rows {
            return None;
        }
        let width = self.data.len() / rows.max(1);
        Some(&self.data[r * width..(r + 1) * width])
    }
}

/// The integer inputs of one training step, by the names a compiled program declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectiveBatch {
    pub objective: ObjectiveKind,
    pub inputs: BTreeMap<String, IntTensor>,
}

impl ObjectiveBatch {
    pub fn new(objective: ObjectiveKind) -> ObjectiveBatch {
        ObjectiveBatch {
            objective,
            inputs: BTreeMap::new(),
        }
    }

    pub fn insert(&mut self, name: &str, tensor: IntTensor) {
        self.inputs.insert(name.to_string(), tensor);
    }

    pub fn get(&self, name: &str) -> Option<&IntTensor> {
        self.inputs.get(name)
    }

    /// Rows in the batch (the first dimension of its tensors).
    pub fn rows(&self) -> usize {
        self.inputs
            .values()
            .next()
            .and_then(|t| t.shape().first().copied())
            .unwrap_or(0)
    }
}

/// An objective trained on windows of a token stream.
#[derive(Debug, Clone, PartialEq)]
pub enum StreamObjective {
    /// `tokens` [B, T+1].
    CausalLm { seq_len: usize },
    /// `tokens` [B, T+1], `prefix_len` `[B]` uniform in [1, T-1].
    PrefixLm { seq_len: usize },
    /// Windows of the raw length [`span_corruption::random_spans_helper`] picks for
    /// `inputs_len` (one sentinel per span, one EOS), corrupted and padded to [B, S] / [B, U].
    SpanCorruption {
        config: SpanCorruption,
        inputs_len: usize,
        targets_len: usize,
        pad_id: u32,
        decoder_start_id: u32,
    },
}

impl StreamObjective {
    pub fn kind(&self) -> ObjectiveKind {
        match self {
            StreamObjective::CausalLm { .. } => ObjectiveKind::CausalLm,
            StreamObjective::PrefixLm { .. } => ObjectiveKind::PrefixLm,
            StreamObjective::SpanCorruption { .. } => ObjectiveKind::SpanCorruption,
        }
    }

    /// Tokens per window drawn from the stream.
    pub fn window_len(&self) -> Result<usize, ObjectiveError> {
        match self {
            StreamObjective::CausalLm { seq_len } => Ok(seq_len + 1),
            StreamObjective::PrefixLm { seq_len } => {
                if *seq_len < 2 {
                    return Err(ObjectiveError::SeqLen { seq_len: *seq_len });
                }
                Ok(seq_len + 1)
            }
            StreamObjective::SpanCorruption {
                config,
                inputs_len,
                targets_len,
                ..
            } => {
                let (raw, needed) = span_corruption_lengths(config, *inputs_len)?;
                if needed > *targets_len {
                    return Err(ObjectiveError::TargetsLen {
                        inputs_len: *inputs_len,
                        targets_len: *targets_len,
                        needed,
                    });
                }
                Ok(raw)
            }
        }
    }
}

/// Span corruption of windows whose corrupted inputs fill `inputs_len`: the raw window length
/// drawn from the stream and the targets length corruption then produces (sentinels and EOS
/// included), T5's `random_spans_helper` checked against what [`SpanCorruption::apply`] makes.
pub fn span_corruption_lengths(
    config: &SpanCorruption,
    inputs_len: usize,
) -> Result<(usize, usize), ObjectiveError> {
    config.validate()?;
    let (mut raw, _) = span_corruption::random_spans_helper(
        inputs_len,
        config.noise_density,
        config.mean_noise_span_length,
        1,
        1,
    )?;
    // The helper rounds in float64 and the mask in float32 (as T5's do); at a tie the two can
    // differ by one, so check what corruption really produces.
    while raw > 2 && span_corruption::corrupted_lengths(config, raw).0 > inputs_len {
        raw -= 1;
    }
    Ok((raw, span_corruption::corrupted_lengths(config, raw).1))
}

/// Positions of both random streams of a [`StreamBatcher`], for checkpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamBatcherState {
    pub windows: SamplerState,
    pub objective: SamplerState,
}

/// Draws objective batches from a token stream.
#[derive(Debug, Clone)]
pub struct StreamBatcher {
    objective: StreamObjective,
    window_len: usize,
    batch_size: usize,
    windows: BatchSampler,
    rng: ChaCha8Rng,
}

/// The objective stream's id: distinct from `BatchSampler`'s window streams (0, 1, 2).
fn objective_stream_id(stream: SamplerStream) -> u64 {
    match stream {
        SamplerStream::Train => 100,
        SamplerStream::TrainEval => 101,
        SamplerStream::ValEval => 102,
    }
}

impl StreamBatcher {
    pub fn new(
        objective: StreamObjective,
        seed: u64,
        stream: SamplerStream,
        batch_size: usize,
    ) -> Result<StreamBatcher, ObjectiveError> {
        let window_len = objective.window_len()?;
        // A window of W tokens is a `BatchSampler` window of seq_len W - 1 (inputs ++ last target).
        let windows = BatchSampler::new(seed, stream, batch_size, window_len.saturating_sub(1));
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(objective_stream_id(stream));
        Ok(StreamBatcher {
            objective,
            window_len,
            batch_size,
            windows,
            rng,
        })
    }

    /// A batcher continuing exactly where `state` was taken.
    pub fn from_state(
        objective: StreamObjective,
        state: &StreamBatcherState,
        batch_size: usize,
    ) -> Result<StreamBatcher, ObjectiveError> {
        let window_len = objective.window_len()?;
        let windows =
            BatchSampler::from_state(&state.windows, batch_size, window_len.saturating_sub(1));
        let mut rng = ChaCha8Rng::from_seed(state.objective.seed);
        rng.set_stream(state.objective.stream);
        rng.set_word_pos(state.objective.word_pos);
        Ok(StreamBatcher {
            objective,
            window_len,
            batch_size,
            windows,
            rng,
        })
    }

    pub fn state(&self) -> StreamBatcherState {
        StreamBatcherState {
            windows: self.windows.state(),
            objective: SamplerState {
                seed: self.rng.get_seed(),
                stream: self.rng.get_stream(),
                word_pos: self.rng.get_word_pos(),
            },
        }
    }

    /// Tokens per window drawn from the stream.
    pub fn window_len(&self) -> usize {
        self.window_len
    }

    /// The next batch from `tokens` (`split` names it in errors).
    pub fn next_batch(
        &mut self,
        tokens: &Tokens,
        split: &'static str,
    ) -> Result<ObjectiveBatch, ObjectiveError> {
        let raw = self.windows.next_batch(tokens, split)?;
        let (b, w) = (self.batch_size, self.window_len);
        let mut windows = vec![0u32; b * w];
        for r in 0..b {
            let row = &mut windows[r * w..(r + 1) * w];
            row[..w - 1].copy_from_slice(&raw.inputs[r * (w - 1)..(r + 1) * (w - 1)]);
            row[w - 1] = raw.targets[(r + 1) * (w - 1) - 1];
        }
        let kind = self.objective.kind();
        match &self.objective {
            StreamObjective::CausalLm { .. } => {
                let mut batch = ObjectiveBatch::new(kind);
                batch.insert("tokens", IntTensor::from_ids(vec![b, w], &windows)?);
                Ok(batch)
            }
            StreamObjective::PrefixLm { seq_len } => {
                let prefix: Vec<i32> = (0..b)
                    .map(|_| prefix_lm::random_prefix_len(*seq_len, &mut self.rng) as i32)
                    .collect();
                let mut batch = ObjectiveBatch::new(kind);
                batch.insert("tokens", IntTensor::from_ids(vec![b, w], &windows)?);
                batch.insert("prefix_len", IntTensor::new(vec![b], prefix)?);
                Ok(batch)
            }
            StreamObjective::SpanCorruption {
                config,
                inputs_len,
                targets_len,
                pad_id,
                decoder_start_id,
            } => {
                let mut examples = Vec::with_capacity(b);
                for r in 0..b {
                    let (input, target) =
                        config.apply(&windows[r * w..(r + 1) * w], &mut self.rng)?;
                    examples.push(EncodedExample {
                        input,
                        target,
                        truncated: false,
                    });
                }
                let format = TextToTextFormat {
                    task_prefix: None,
                    eos_id: None,
                    pad_id: *pad_id,
                    decoder_start_id: *decoder_start_id,
                    inputs_len: *inputs_len,
                    targets_len: *targets_len,
                };
                text_to_text::pad_batch(&examples, &format, kind)
            }
        }
    }
}

/// A seeded order over `len` examples for epoch-based batchers: each epoch visits every index
/// once, in an order shuffled by `seed` (epoch `e` uses ChaCha8 stream `e`), and the order
/// knows how much of the current epoch has been served, so a run can save and restore it.
#[derive(Debug, Clone)]
pub struct EpochOrder {
    seed: u64,
    epoch: u64,
    order: Vec<usize>,
    next: usize,
}

impl EpochOrder {
    pub fn new(len: usize, seed: u64) -> EpochOrder {
        let mut o = EpochOrder {
            seed,
            epoch: 0,
            order: (0..len).collect(),
            next: 0,
        };
        o.shuffle();
        o
    }

    fn shuffle(&mut self) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(self.epoch);
        self.order.sort_unstable();
        self.order.shuffle(&mut rng);
        self.next = 0;
    }

    /// Epochs completed.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// `(epoch, indices of the epoch's order already served)`.
    pub fn position(&self) -> (u64, usize) {
        (self.epoch, self.next)
    }

    /// Continues from a [`EpochOrder::position`] (a resumed run).
    pub fn seek(&mut self, epoch: u64, next: usize) {
        self.epoch = epoch;
        self.shuffle();
        self.next = next.min(self.order.len());
    }

    /// The current epoch's indices not served yet, in order.
    pub fn remaining(&self) -> &[usize] {
        &self.order[self.next..]
    }

    /// Marks the first `n` remaining indices served.
    pub fn advance(&mut self, n: usize) {
        self.next = (self.next + n).min(self.order.len());
    }

    /// Starts the next epoch (whatever is left of this one is skipped).
    pub fn next_epoch(&mut self) {
        self.epoch += 1;
        self.shuffle();
    }
}

/// Batches of supervised examples for `seq2seq`: each epoch visits every example once in an
/// order shuffled by the seed (epoch `e` uses its own shuffle), padded or packed.
#[derive(Debug, Clone)]
pub struct Seq2SeqBatcher {
    examples: Vec<EncodedExample>,
    format: TextToTextFormat,
    batch_size: usize,
    pack: bool,
    order: EpochOrder,
}

impl Seq2SeqBatcher {
    /// `pack`: several examples per row (see [`text_to_text::pack_batch`]).
    pub fn new(
        examples: Vec<EncodedExample>,
        format: TextToTextFormat,
        batch_size: usize,
        pack: bool,
        seed: u64,
    ) -> Result<Seq2SeqBatcher, ObjectiveError> {
        if examples.is_empty() || batch_size == 0 {
            return Err(ObjectiveError::NoExamples);
        }
        Ok(Seq2SeqBatcher {
            order: EpochOrder::new(examples.len(), seed),
            examples,
            format,
            batch_size,
            pack,
        })
    }

    /// Epochs completed.
    pub fn epoch(&self) -> u64 {
        self.order.epoch()
    }

    /// Rows per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }

    /// Where the batcher is: `(epoch, examples of the epoch's order already served)`.
    pub fn position(&self) -> (u64, usize) {
        self.order.position()
    }

    /// Continues from a [`Seq2SeqBatcher::position`] (a resumed run).
    pub fn seek(&mut self, epoch: u64, next: usize) {
        self.order.seek(epoch, next);
    }

    /// The next batch; a batch never spans two epochs, so the last one of an epoch may have
    /// fewer (padded) or emptier (packed) rows.
    pub fn next_batch(&mut self) -> Result<ObjectiveBatch, ObjectiveError> {
        if self.order.remaining().is_empty() {
            self.order.next_epoch();
        }
        let rest: Vec<EncodedExample> = self
            .order
            .remaining()
            .iter()
            // A packed row holds at most S + U examples (each brings at least one token, EOS
            // included); the cap keeps a batch from copying the whole epoch.
            .take(if self.pack {
                self.batch_size
                    .saturating_mul(self.format.inputs_len + self.format.targets_len + 1)
            } else {
                self.batch_size
            })
            .map(|&i| self.examples[i].clone())
            .collect();
        if self.pack {
            let (batch, packing) = text_to_text::pack_batch(
                &rest,
                self.batch_size,
                &self.format,
                ObjectiveKind::Seq2Seq,
            )?;
            self.order.advance(packing.consumed.max(1));
            Ok(batch)
        } else {
            self.order.advance(rest.len());
            text_to_text::pad_batch(&rest, &self.format, ObjectiveKind::Seq2Seq)
        }
    }
}
