//! The prefix-LM split (T5 §3.2.3, PaLM/UL2's "S-denoiser"): a decoder-only model reads a window
//! whose first `prefix_len` tokens are a prefix seen with full (bidirectional) attention and is
//! trained to predict only the rest.
//!
//! Conventions, for a row `tokens[0..=T]` whose model input is `tokens[..T]` and whose targets are
//! `tokens[1..]` (the causal-LM layout):
//! - attention: query position `q` may see key position `k` iff `k <= q` or `k < prefix_len`;
//! - loss: output position `t` (predicting `tokens[t + 1]`) counts iff the predicted token lies
//!   outside the prefix: `t + 1 >= prefix_len`. The last prefix position predicts the first
//!   non-prefix token, as in T5's prefix LM where the targets start right after the inputs.
//!
//! These two functions are the plain reference that compiled masks are tested against.

use rand::Rng;

/// A prefix length drawn uniformly from `[1, seq_len - 1]`, so the prefix and the predicted part
/// are both non-empty. `seq_len` must be at least 2 (callers validate it).
pub fn random_prefix_len<R: Rng>(seq_len: usize, rng: &mut R) -> usize {
    rng.random_range(1..seq_len.max(2))
}

/// May query position `q` attend to key position `k` in a row with this prefix?
pub fn attention_allowed(prefix_len: usize, q: usize, k: usize) -> bool {
    k <= q || k < prefix_len
}

/// Does output position `t` (predicting token `t + 1`) count in the loss?
pub fn loss_counts(prefix_len: usize, t: usize) -> bool {
    t + 1 >= prefix_len
}
