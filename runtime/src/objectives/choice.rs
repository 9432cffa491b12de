//! Rows for `objective: multiple_choice`: each `{"context", "choices", "label"}` example becomes
//! one row per choice, tokenized exactly as `kiln eval` scores it (the context's trailing
//! whitespace moves into the continuation, `evaltasks::fewshot::encode_pair`), cut to the last
//! `seq + 1` tokens of context + choice the way the scorer's window reads them, or left-aligned
//! and right-padded when shorter (padding after the last token changes nothing under a causal
//! mask); `mask` marks the targets that are choice tokens.
//!
//! Batches visit every example once per epoch in a seeded order (epoch `e` has its own shuffle);
//! the compiled step has a fixed batch, so an epoch's short remainder is skipped.

use super::{EpochOrder, IntTensor, ObjectiveBatch, ObjectiveError, ObjectiveKind};
use crate::evaltasks::fewshot::encode_pair;
use crate::evaltasks::MultipleChoiceDoc;
use crate::tokenizer::{Tokenizer, TokenizerError};

/// One example as rows: `tokens` `[choices, seq + 1]`, `mask` `[choices, seq]`, row-major.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChoiceRows {
    pub tokens: Vec<i32>,
    pub mask: Vec<i32>,
    pub label: i32,
}

/// Why an example has no rows.
#[derive(Debug, thiserror::Error)]
pub enum ChoiceError {
    #[error("example {index}: {source}")]
    Tokenize {
        index: usize,
        source: TokenizerError,
    },
    #[error("example {index} has {got} choices; the objective takes {want}")]
    Choices {
        index: usize,
        got: usize,
        want: usize,
    },
    #[error("example {index}: a choice has no tokens")]
    EmptyChoice { index: usize },
}

/// The rows of `doc` (`index` names it in errors: the example's number in its file, from 1) for
/// windows of `seq + 1` tokens.
pub fn choice_rows(
    tokenizer: &Tokenizer,
    index: usize,
    doc: &MultipleChoiceDoc,
    choices: usize,
    seq: usize,
) -> Result<ChoiceRows, ChoiceError> {
    if doc.choices.len() != choices {
        return Err(ChoiceError::Choices {
            index,
            got: doc.choices.len(),
            want: choices,
        });
    }
    let w = seq + 1;
    let mut tokens = vec![0i32; choices * w];
    let mut mask = vec![0i32; choices * seq];
    for (c, choice) in doc.choices.iter().enumerate() {
        let (ctx, cont) = encode_pair(tokenizer, &doc.context, choice)
            .map_err(|source| ChoiceError::Tokenize { index, source })?;
        if cont.is_empty() {
            return Err(ChoiceError::EmptyChoice { index });
        }
        let all: Vec<u32> = ctx.iter().chain(&cont).copied().collect();
        // The scorer reads the `seq + 1` tokens ending at the continuation's end; a longer
        // continuation keeps its last `seq` targets (the first ones would need another window).
        let start = all.len().saturating_sub(w);
        let row = &all[start..];
        let first_target = (all.len() - cont.len()).max(start + 1) - start;
        for (j, &id) in row.iter().enumerate() {
            tokens[c * w + j] = id as i32;
        }
        for j in first_target..row.len() {
            mask[c * seq + j - 1] = 1;
        }
    }
    Ok(ChoiceRows {
        tokens,
        mask,
        label: doc.label as i32,
    })
}

/// Batches of examples, `batch_size` per batch, epoch after epoch ([`EpochOrder`]); a batch
/// never spans two epochs: an epoch's short remainder is skipped.
#[derive(Debug, Clone)]
pub struct ChoiceBatcher {
    rows: Vec<ChoiceRows>,
    choices: usize,
    seq: usize,
    batch_size: usize,
    order: EpochOrder,
}

impl ChoiceBatcher {
    pub fn new(
        rows: Vec<ChoiceRows>,
        choices: usize,
        seq: usize,
        batch_size: usize,
        seed: u64,
    ) -> Result<ChoiceBatcher, ObjectiveError> {
        if rows.len() < batch_size.max(1) {
            return Err(ObjectiveError::NoExamples);
        }
        Ok(ChoiceBatcher {
            order: EpochOrder::new(rows.len(), seed),
            rows,
            choices,
            seq,
            batch_size,
        })
    }

    /// `(epoch, examples of the epoch's order already served)`.
    pub fn position(&self) -> (u64, usize) {
        self.order.position()
    }

    /// Continues from a [`ChoiceBatcher::position`].
    pub fn seek(&mut self, epoch: u64, next: usize) {
        self.order.seek(epoch, next);
    }

    pub fn next_batch(&mut self) -> Result<ObjectiveBatch, ObjectiveError> {
        if self.order.remaining().len() < self.batch_size {
            self.order.next_epoch();
        }
        let rows: Vec<ChoiceRows> = self.order.remaining()[..self.batch_size]
            .iter()
            .map(|&i| self.rows[i].clone())
            .collect();
        self.order.advance(self.batch_size);
        choice_batch(&rows, self.choices, self.seq)
    }
}

/// The batch of `rows` (each of `choices` rows of `seq + 1` tokens), in order.
pub fn choice_batch(
    rows: &[ChoiceRows],
    choices: usize,
    seq: usize,
) -> Result<ObjectiveBatch, ObjectiveError> {
    let (b, c, s) = (rows.len(), choices, seq);
    let mut tokens = Vec::with_capacity(b * c * (s + 1));
    let mut mask = Vec::with_capacity(b * c * s);
    let mut label = Vec::with_capacity(b);
    for r in rows {
        tokens.extend_from_slice(&r.tokens);
        mask.extend_from_slice(&r.mask);
        label.push(r.label);
    }
    let mut batch = ObjectiveBatch::new(ObjectiveKind::MultipleChoice);
    batch.insert("tokens", IntTensor::new(vec![b, c, s + 1], tokens)?);
    batch.insert("mask", IntTensor::new(vec![b, c, s], mask)?);
    batch.insert("label", IntTensor::new(vec![b], label)?);
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::CharTokenizer;

    /// Characters `\n a b c d e`: ids 0..6 in sorted order.
    fn tok() -> Tokenizer {
        Tokenizer::Char(CharTokenizer::from_text("\nabcde").unwrap())
    }

    fn doc(context: &str, choices: &[&str], label: usize) -> MultipleChoiceDoc {
        MultipleChoiceDoc {
            context: context.into(),
            choices: choices.iter().map(|c| c.to_string()).collect(),
            label,
        }
    }

    #[test]
    fn short_rows_are_left_aligned_and_mask_the_choice_targets() {
        // Context "ab\n", choice "c": the newline moves into the continuation, so the row is
        // a b \n c and the targets \n (predicted from b) and c (from \n) are the choice's.
        let r = choice_rows(&tok(), 0, &doc("ab\n", &["c", "dd"], 1), 2, 5).unwrap();
        assert_eq!(r.label, 1);
        assert_eq!(&r.tokens[..6], &[1, 2, 0, 3, 0, 0]);
        assert_eq!(&r.mask[..5], &[0, 1, 1, 0, 0]);
        assert_eq!(&r.tokens[6..], &[1, 2, 0, 4, 4, 0]);
        assert_eq!(&r.mask[5..], &[0, 1, 1, 1, 0]);
    }

    #[test]
    fn long_rows_keep_the_last_window_as_the_scorer_reads_it() {
        // 7 context tokens + 2 continuation tokens in a window of seq + 1 = 4: the row is the
        // last 4 tokens, and only the 2 continuation targets count.
        let r = choice_rows(&tok(), 0, &doc("abcdeab\n", &["e"], 0), 1, 3).unwrap();
        assert_eq!(r.tokens, vec![1, 2, 0, 5]);
        assert_eq!(r.mask, vec![0, 1, 1]);
        // A continuation longer than the window keeps its last `seq` targets.
        let r = choice_rows(&tok(), 0, &doc("a", &["bcdeab"], 0), 1, 3).unwrap();
        assert_eq!(r.tokens, vec![4, 5, 1, 2]);
        assert_eq!(r.mask, vec![1, 1, 1]);
    }

    #[test]
    fn bad_examples_say_which_and_why() {
        let t = tok();
        let e = choice_rows(&t, 7, &doc("a", &["b", "c", "d"], 0), 4, 8).unwrap_err();
        assert_eq!(
            e.to_string(),
            "example 7 has 3 choices; the objective takes 4"
        );
        let e = choice_rows(&t, 2, &doc("a", &["b", "z"], 0), 2, 8).unwrap_err();
        assert!(e.to_string().starts_with("example 2: "), "{e}");
    }

    #[test]
    fn batches_visit_every_example_once_per_epoch_and_resume_from_a_position() {
        let t = tok();
        let rows: Vec<ChoiceRows> = (0..5)
            .map(|i| choice_rows(&t, i, &doc("ab\n", &["c", "d"], i % 2), 2, 4).unwrap())
            .collect();
        let labels = |b: &ObjectiveBatch| b.get("label").unwrap().data().to_vec();
        let mut a = ChoiceBatcher::new(rows.clone(), 2, 4, 2, 9).unwrap();
        let first = labels(&a.next_batch().unwrap());
        let b1 = a.next_batch().unwrap();
        assert_eq!(b1.get("tokens").unwrap().shape(), &[2, 2, 5]);
        assert_eq!(b1.get("mask").unwrap().shape(), &[2, 2, 4]);
        // Two batches of 2 from 5 examples: 4 distinct examples of the epoch's order.
        let (_, served) = a.order.position();
        assert_eq!(served, 4);
        let mut seen = a.order.order[..4].to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 4);
        let (epoch, next) = a.position();
        assert_eq!((epoch, next), (0, 4));
        // The remainder (1 example) is left for the next epoch's order.
        let third = labels(&a.next_batch().unwrap());
        assert_eq!(a.position(), (1, 2));
        let mut resumed = ChoiceBatcher::new(rows.clone(), 2, 4, 2, 9).unwrap();
        resumed.seek(epoch, next);
        assert_eq!(labels(&resumed.next_batch().unwrap()), third);
        let mut again = ChoiceBatcher::new(rows.clone(), 2, 4, 2, 9).unwrap();
        assert_eq!(labels(&again.next_batch().unwrap()), first);
        assert!(ChoiceBatcher::new(rows[..1].to_vec(), 2, 4, 2, 9).is_err());
    }
}
