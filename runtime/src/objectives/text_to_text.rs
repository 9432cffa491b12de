//! Supervised text-to-text examples (T5's format: `"<task prefix>: <input>"` → target) turned
//! into fixed-size encoder-decoder rows, one example per row (padded) or several per row (packed).
//!
//! Padded rows: `inputs` [B, S] padded with `pad_id`, `input_len` `[B]`, `targets` [B, U] padded
//! with -100 (ignored by the loss, PyTorch's `ignore_index`), and `decoder_inputs` [B, U]: the
//! targets shifted right by one with `decoder_start_id` first (T5 starts with its pad id 0) and
//! `pad_id` where the targets are padding.
//!
//! Packed rows (T5's `trim_and_pack_dataset`) add `inputs_segment_ids`, `inputs_positions`,
//! `targets_segment_ids`, `targets_positions` (segments numbered from 1, 0 = padding; positions
//! restart at 0 in each segment). The masks must then be built from the segment ids:
//! - encoder self-attention: query `i` sees key `j` iff `seg_in[i] == seg_in[j] != 0`;
//! - decoder self-attention: query `i` sees key `j` iff `j <= i` and `seg_tg[i] == seg_tg[j] != 0`;
//! - cross-attention: decoder `i` sees encoder `j` iff `seg_tg[i] == seg_in[j] != 0`;
//! - position embeddings and relative-position buckets use the `*_positions`, not the column;
//! - `decoder_inputs` restart with `decoder_start_id` at each segment's first target.
//!
//! Examples longer than the row are cut, keeping the EOS last (T5's `append_eos_after_trim`).

use miette::Diagnostic;

use super::{IntTensor, ObjectiveBatch, ObjectiveError, ObjectiveKind};
use crate::tokenizer::Tokenizer;

/// The label of positions the loss ignores.
pub const IGNORE_INDEX: i32 = -100;

/// How examples become token rows.
#[derive(Debug, Clone, PartialEq)]
pub struct TextToTextFormat {
    /// `Some("summarize")` builds `"summarize: <input>"`; None uses the input as it is.
    pub task_prefix: Option<String>,
    /// Appended to inputs and targets when set (T5 appends `</s>`).
    pub eos_id: Option<u32>,
    /// Fills padded input (and decoder-input) positions.
    pub pad_id: u32,
    /// First decoder input of each target sequence (T5: 0, its pad id).
    pub decoder_start_id: u32,
    /// S: encoder row length.
    pub inputs_len: usize,
    /// U: decoder row length.
    pub targets_len: usize,
}

/// One example as token ids, already cut to the row lengths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodedExample {
    pub input: Vec<u32>,
    pub target: Vec<u32>,
    /// Whether the input or the target was cut to fit.
    pub truncated: bool,
}

/// Why an example could not be encoded.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum TextToTextError {
    #[error("example {index}: {source}")]
    #[diagnostic(code(objective::encode))]
    Encode {
        index: usize,
        source: crate::tokenizer::TokenizerError,
    },
    #[error("inputs_len and targets_len must be at least 1 (got {inputs_len} and {targets_len})")]
    #[diagnostic(code(objective::row_length))]
    RowLength {
        inputs_len: usize,
        targets_len: usize,
    },
}

impl TextToTextFormat {
    /// The text the encoder reads.
    pub fn input_text(&self, input: &str) -> String {
        match &self.task_prefix {
            Some(p) => format!("{p}: {input}"),
            None => input.to_string(),
        }
    }

    fn check(&self) -> Result<(), TextToTextError> {
        if self.inputs_len == 0 || self.targets_len == 0 {
            return Err(TextToTextError::RowLength {
                inputs_len: self.inputs_len,
                targets_len: self.targets_len,
            });
        }
        Ok(())
    }

    /// Tokenizes one example (`index` names it in errors), appends EOS and cuts to the row
    /// lengths.
    pub fn encode(
        &self,
        tokenizer: &Tokenizer,
        index: usize,
        input: &str,
        target: &str,
    ) -> Result<EncodedExample, TextToTextError> {
        self.check()?;
        let enc = |text: &str| {
            tokenizer
                .encode(text)
                .map_err(|source| TextToTextError::Encode { index, source })
        };
        let (input, cut_in) =
            trim_with_eos(enc(&self.input_text(input))?, self.eos_id, self.inputs_len);
        let (target, cut_tg) = trim_with_eos(enc(target)?, self.eos_id, self.targets_len);
        Ok(EncodedExample {
            input,
            target,
            truncated: cut_in || cut_tg,
        })
    }
}

/// Cuts `ids` so that `ids ++ [eos]` fits `len`, then appends the EOS.
fn trim_with_eos(mut ids: Vec<u32>, eos: Option<u32>, len: usize) -> (Vec<u32>, bool) {
    let room = len - usize::from(eos.is_some());
    let cut = ids.len() > room;
    ids.truncate(room);
    ids.extend(eos);
    (ids, cut)
}

fn to_i32(id: u32) -> Result<i32, ObjectiveError> {
    i32::try_from(id).map_err(|_| ObjectiveError::IdTooLarge { id })
}

/// One example per row: `inputs`, `input_len`, `targets`, `decoder_inputs` (see the module doc).
/// Examples must already fit (as [`TextToTextFormat::encode`] makes them).
pub fn pad_batch(
    examples: &[EncodedExample],
    format: &TextToTextFormat,
    objective: ObjectiveKind,
) -> Result<ObjectiveBatch, ObjectiveError> {
    let (b, s, u) = (examples.len(), format.inputs_len, format.targets_len);
    let pad = to_i32(format.pad_id)?;
    let start = to_i32(format.decoder_start_id)?;
    let mut inputs = vec![pad; b * s];
    let mut input_len = vec![0i32; b];
    let mut targets = vec![IGNORE_INDEX; b * u];
    let mut decoder_inputs = vec![pad; b * u];
    for (r, ex) in examples.iter().enumerate() {
        if ex.input.len() > s || ex.target.len() > u {
            return Err(ObjectiveError::ExampleTooLong {
                index: r,
                input: ex.input.len(),
                target: ex.target.len(),
                inputs_len: s,
                targets_len: u,
            });
        }
        for (j, &id) in ex.input.iter().enumerate() {
            inputs[r * s + j] = to_i32(id)?;
        }
        input_len[r] = ex.input.len() as i32;
        for (j, &id) in ex.target.iter().enumerate() {
            targets[r * u + j] = to_i32(id)?;
            decoder_inputs[r * u + j] = if j == 0 {
                start
            } else {
                to_i32(ex.target[j - 1])?
            };
        }
    }
    let mut batch = ObjectiveBatch::new(objective);
    batch.insert("inputs", IntTensor::new(vec![b, s], inputs)?);
    batch.insert("input_len", IntTensor::new(vec![b], input_len)?);
    batch.insert("targets", IntTensor::new(vec![b, u], targets)?);
    batch.insert(
        "decoder_inputs",
        IntTensor::new(vec![b, u], decoder_inputs)?,
    );
    Ok(batch)
}

/// Where each example went in a packed batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packing {
    /// `(row, segment id)` of each example taken, in order.
    pub placements: Vec<(usize, i32)>,
    /// How many examples from the front of the slice were packed.
    pub consumed: usize,
}

/// Packs examples greedily in order into `rows` rows: an example joins the current row if both
/// its input and its target still fit, else it starts the next row; packing stops when the rows
/// are full or the examples run out. Returns the batch (see the module doc for its tensors and
/// masks) and where each example went.
pub fn pack_batch(
    examples: &[EncodedExample],
    rows: usize,
    format: &TextToTextFormat,
    objective: ObjectiveKind,
) -> Result<(ObjectiveBatch, Packing), ObjectiveError> {
    let (s, u) = (format.inputs_len, format.targets_len);
    let pad = to_i32(format.pad_id)?;
    let start = to_i32(format.decoder_start_id)?;
    let mut inputs = vec![pad; rows * s];
    let mut in_seg = vec![0i32; rows * s];
    let mut in_pos = vec![0i32; rows * s];
    let mut targets = vec![IGNORE_INDEX; rows * u];
    let mut decoder_inputs = vec![pad; rows * u];
    let mut tg_seg = vec![0i32; rows * u];
    let mut tg_pos = vec![0i32; rows * u];
    let mut placements = Vec::new();
    let (mut row, mut used_in, mut used_tg, mut seg) = (0usize, 0usize, 0usize, 0i32);
    for (i, ex) in examples.iter().enumerate() {
        if ex.input.len() > s || ex.target.len() > u {
            return Err(ObjectiveError::ExampleTooLong {
                index: i,
                input: ex.input.len(),
                target: ex.target.len(),
                inputs_len: s,
                targets_len: u,
            });
        }
        if used_in + ex.input.len() > s || used_tg + ex.target.len() > u {
            row += 1;
            (used_in, used_tg, seg) = (0, 0, 0);
        }
        if row >= rows {
            break;
        }
        seg += 1;
        for (j, &id) in ex.input.iter().enumerate() {
            let at = row * s + used_in + j;
            inputs[at] = to_i32(id)?;
            in_seg[at] = seg;
            in_pos[at] = j as i32;
        }
        for (j, &id) in ex.target.iter().enumerate() {
            let at = row * u + used_tg + j;
            targets[at] = to_i32(id)?;
            decoder_inputs[at] = if j == 0 {
                start
            } else {
                to_i32(ex.target[j - 1])?
            };
            tg_seg[at] = seg;
            tg_pos[at] = j as i32;
        }
        used_in += ex.input.len();
        used_tg += ex.target.len();
        placements.push((row, seg));
    }
    let consumed = placements.len();
    let mut batch = ObjectiveBatch::new(objective);
    batch.insert("inputs", IntTensor::new(vec![rows, s], inputs)?);
    batch.insert("inputs_segment_ids", IntTensor::new(vec![rows, s], in_seg)?);
    batch.insert("inputs_positions", IntTensor::new(vec![rows, s], in_pos)?);
    batch.insert("targets", IntTensor::new(vec![rows, u], targets)?);
    batch.insert(
        "decoder_inputs",
        IntTensor::new(vec![rows, u], decoder_inputs)?,
    );
    batch.insert(
        "targets_segment_ids",
        IntTensor::new(vec![rows, u], tg_seg)?,
    );
    batch.insert("targets_positions", IntTensor::new(vec![rows, u], tg_pos)?);
    Ok((
        batch,
        Packing {
            placements,
            consumed,
        },
    ))
}

/// Reference masks for a packed row (the rules of the module doc), row-major `[q][k]`:
/// `(encoder self-attention [S][S], decoder self-attention [U][U], cross-attention [U][S])`.
pub fn packed_masks(
    inputs_segment_ids: &[i32],
    targets_segment_ids: &[i32],
) -> (Vec<bool>, Vec<bool>, Vec<bool>) {
    let (si, st) = (inputs_segment_ids, targets_segment_ids);
    let enc = si
        .iter()
        .flat_map(|&q| si.iter().map(move |&k| q != 0 && q == k))
        .collect();
    let dec = st
        .iter()
        .enumerate()
        .flat_map(|(i, &q)| {
            st.iter()
                .enumerate()
                .map(move |(j, &k)| j <= i && q != 0 && q == k)
        })
        .collect();
    let cross = st
        .iter()
        .flat_map(|&q| si.iter().map(move |&k| q != 0 && q == k))
        .collect();
    (enc, dec, cross)
}
