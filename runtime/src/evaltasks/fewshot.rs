//! k-shot prompts, as lm-evaluation-harness builds them: an optional description, then `k`
//! examples from a training pool, each `text + target_delimiter + target`, each followed by the
//! few-shot delimiter, then the example being asked.
//!
//! The shots for example `i` are drawn without replacement from the pool by a ChaCha8 stream
//! seeded by `seed` and numbered `i`, so a prompt does not depend on which other examples are
//! evaluated or in what order (the harness uses one stream across examples; ours gives the same
//! distribution and survives subsetting).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::{MultipleChoiceDoc, TextToTextDoc};
use crate::tokenizer::{Tokenizer, TokenizerError};

/// How prompts are built. Defaults: 0 shots, seed 1234 (the harness's), no description,
/// `"\n\n"` between examples, `" "` between a text and its target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FewShotConfig {
    pub num_fewshot: usize,
    pub seed: u64,
    /// Put before everything (the harness's `description`), e.g. an instruction.
    pub description: String,
    pub fewshot_delimiter: String,
    pub target_delimiter: String,
}

impl Default for FewShotConfig {
    fn default() -> Self {
        FewShotConfig {
            num_fewshot: 0,
            seed: 1234,
            description: String::new(),
            fewshot_delimiter: "\n\n".to_string(),
            target_delimiter: " ".to_string(),
        }
    }
}

/// An example as a prompt sees it: the text asked, and the answer a shot shows.
pub trait PromptDoc {
    fn prompt_text(&self) -> &str;
    fn prompt_target(&self) -> &str;
}

impl PromptDoc for MultipleChoiceDoc {
    fn prompt_text(&self) -> &str {
        &self.context
    }
    fn prompt_target(&self) -> &str {
        // Loading guarantees `label < choices.len()`; a hand-built doc that breaks it shows no
        // answer rather than panicking.
        self.choices.get(self.label).map_or("", String::as_str)
    }
}

impl PromptDoc for TextToTextDoc {
    fn prompt_text(&self) -> &str {
        &self.input
    }
    fn prompt_target(&self) -> &str {
        &self.target
    }
}

/// Indices of the shots for example `doc_index`: `min(k, pool_len)` distinct pool indices.
pub fn fewshot_indices(config: &FewShotConfig, doc_index: usize, pool_len: usize) -> Vec<usize> {
    let k = config.num_fewshot.min(pool_len);
    if k == 0 {
        return Vec::new();
    }
    let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
    rng.set_stream(doc_index as u64);
    rand::seq::index::sample(&mut rng, pool_len, k).into_vec()
}

/// The prompt for `doc` (example number `doc_index`) with shots from `pool`. If the pool holds
/// fewer than `num_fewshot` examples, all of them are used (callers that care check first).
pub fn fewshot_context<D: PromptDoc>(
    doc: &D,
    doc_index: usize,
    pool: &[D],
    config: &FewShotConfig,
) -> String {
    let mut out = config.description.clone();
    for i in fewshot_indices(config, doc_index, pool.len()) {
        let shot = &pool[i];
        out.push_str(shot.prompt_text());
        out.push_str(&config.target_delimiter);
        out.push_str(shot.prompt_target());
        out.push_str(&config.fewshot_delimiter);
    }
    out.push_str(doc.prompt_text());
    out
}

/// Tokenizes a (context, continuation) pair as the harness's `_encode_pair`: trailing whitespace
/// of the context moves to the front of the continuation (so BPE tokenizers see " word" as one
/// token), the whole string is encoded, and the continuation is what follows the context's
/// tokens.
pub fn encode_pair(
    tokenizer: &Tokenizer,
    context: &str,
    continuation: &str,
) -> Result<(Vec<u32>, Vec<u32>), TokenizerError> {
    let trimmed = context.trim_end();
    let (context, continuation) = if trimmed.len() < context.len() {
        (
            trimmed,
            format!("{}{}", &context[trimmed.len()..], continuation),
        )
    } else {
        (context, continuation.to_string())
    };
    let whole = tokenizer.encode(&format!("{context}{continuation}"))?;
    let context_ids = tokenizer.encode(context)?;
    let split = context_ids.len().min(whole.len());
    Ok((context_ids, whole[split..].to_vec()))
}
