//! Reference models with no training loop: a uniform model (the chance floor) and a bigram model
//! counted from a token stream (the floor any trained model should beat). They test the task
//! machinery end to end, and `kiln eval` can print them next to a real model's numbers.

use std::collections::HashMap;

use miette::Diagnostic;

use super::{Generator, ModelError, Scorer};
use crate::sample::{generate, TokenSampler};
use crate::tokenizer::Tokenizer;

/// Largest vocabulary the dense bigram table accepts (4M counts, 16 MiB).
pub const MAX_BIGRAM_VOCAB: usize = 2048;

/// Why a baseline model could not be built.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Diagnostic)]
pub enum BaselineError {
    #[error("the bigram baseline supports vocabularies up to {max} tokens, got {vocab_size}")]
    #[diagnostic(code(task::bigram_vocab), help("use a char or byte tokenizer"))]
    Vocab { vocab_size: usize, max: usize },
    #[error("token id {id} is outside the vocabulary of {vocab_size}")]
    #[diagnostic(code(task::bigram_id))]
    Id { id: u32, vocab_size: usize },
    #[error("the cache weight must be in [0, 1], got {lambda}")]
    #[diagnostic(code(task::cache_lambda))]
    Lambda { lambda: f64 },
    #[error("smoothing must be finite and > 0, got {alpha}")]
    #[diagnostic(code(task::bigram_alpha))]
    Alpha { alpha: f64 },
}

/// Every token equally likely: log P = -len · ln V whatever the context.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UniformScorer {
    pub vocab_size: usize,
}

impl Scorer for UniformScorer {
    fn loglik(&mut self, _context: &[u32], continuation: &[u32]) -> Result<f64, ModelError> {
        Ok(-(continuation.len() as f64) * (self.vocab_size.max(1) as f64).ln())
    }
}

/// A bigram model with add-α smoothing: P(b | a) = (count(a b) + α) / (count(a) + α V). With no
/// previous token (an empty context) the first token uses the smoothed unigram distribution.
#[derive(Debug, Clone, PartialEq)]
pub struct BigramModel {
    vocab_size: usize,
    /// `[a * V + b]`: log P(b | a).
    logp: Vec<f64>,
    /// log P(b) for the first token.
    unigram: Vec<f64>,
}

impl BigramModel {
    /// Counts bigrams of `tokens`.
    pub fn train(tokens: &[u32], vocab_size: usize, alpha: f64) -> Result<Self, BaselineError> {
        if vocab_size == 0 || vocab_size > MAX_BIGRAM_VOCAB {
            return Err(BaselineError::Vocab {
                vocab_size,
                max: MAX_BIGRAM_VOCAB,
            });
        }
        if !(alpha.is_finite() && alpha > 0.0) {
            return Err(BaselineError::Alpha { alpha });
        }
        if let Some(&id) = tokens.iter().find(|&&t| t as usize >= vocab_size) {
            return Err(BaselineError::Id { id, vocab_size });
        }
        let v = vocab_size;
        let mut pair = vec![0u64; v * v];
        let mut single = vec![0u64; v];
        for w in tokens.windows(2) {
            pair[w[0] as usize * v + w[1] as usize] += 1;
        }
        for &t in tokens {
            single[t as usize] += 1;
        }
        let vf = v as f64;
        let mut logp = vec![0.0; v * v];
        for a in 0..v {
            let row_total: u64 = pair[a * v..(a + 1) * v].iter().sum();
            let denom = (row_total as f64 + alpha * vf).ln();
            for b in 0..v {
                logp[a * v + b] = (pair[a * v + b] as f64 + alpha).ln() - denom;
            }
        }
        let denom = (tokens.len() as f64 + alpha * vf).ln();
        let unigram = single
            .iter()
            .map(|&c| (c as f64 + alpha).ln() - denom)
            .collect();
        Ok(BigramModel {
            vocab_size,
            logp,
            unigram,
        })
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab_size
    }

    /// log P(next | prev); ids outside the vocabulary are a model error.
    pub fn logprob(&self, prev: Option<u32>, next: u32) -> Result<f64, ModelError> {
        let v = self.vocab_size;
        let bad = |id: u32| ModelError {
            message: format!("token id {id} is outside the bigram vocabulary of {v}"),
        };
        if next as usize >= v {
            return Err(bad(next));
        }
        match prev {
            None => Ok(self.unigram[next as usize]),
            Some(p) if (p as usize) < v => Ok(self.logp[p as usize * v + next as usize]),
            Some(p) => Err(bad(p)),
        }
    }

    /// Next-token logits (log-probabilities) after `context`.
    pub fn logits(&self, context: &[u32]) -> Result<Vec<f32>, ModelError> {
        (0..self.vocab_size as u32)
            .map(|b| self.logprob(context.last().copied(), b).map(|x| x as f32))
            .collect()
    }
}

impl Scorer for BigramModel {
    fn loglik(&mut self, context: &[u32], continuation: &[u32]) -> Result<f64, ModelError> {
        let mut prev = context.last().copied();
        let mut total = 0.0;
        for &t in continuation {
            total += self.logprob(prev, t)?;
            prev = Some(t);
        }
        Ok(total)
    }
}

/// A bigram model adapted to its context (a cache model, Kuhn & De Mori 1990):
/// P(b | a) = (1 - λ) P_bigram(b | a) + λ count(a b) / count(a), the counts taken over the context
/// and the continuation so far. The static bigram sees only the last context token; the cache
/// lets the words and style of the context raise the likelihood of a continuation that shares
/// them, the cheapest model that uses the whole context.
#[derive(Debug, Clone, PartialEq)]
pub struct CacheBigram {
    base: BigramModel,
    lambda: f64,
}

impl CacheBigram {
    /// `lambda`: weight of the cache, in [0, 1].
    pub fn new(base: BigramModel, lambda: f64) -> Result<CacheBigram, BaselineError> {
        if !(0.0..=1.0).contains(&lambda) {
            return Err(BaselineError::Lambda { lambda });
        }
        Ok(CacheBigram { base, lambda })
    }
}

impl Scorer for CacheBigram {
    fn loglik(&mut self, context: &[u32], continuation: &[u32]) -> Result<f64, ModelError> {
        let mut cache = PairCounts::default();
        for w in context.windows(2) {
            cache.observe(w[0], w[1]);
        }
        let mut prev = context.last().copied();
        let mut total = 0.0;
        for &t in continuation {
            let p_base = self.base.logprob(prev, t)?.exp();
            let p_cache = prev.map_or(0.0, |a| cache.prob(a, t));
            total += ((1.0 - self.lambda) * p_base + self.lambda * p_cache).ln();
            if let Some(a) = prev {
                cache.observe(a, t);
            }
            prev = Some(t);
        }
        Ok(total)
    }
}

/// Bigram counts of a short text: `pair[(a, b)]` and `from[a]` (a followed by anything).
#[derive(Default)]
struct PairCounts {
    pair: HashMap<(u32, u32), u32>,
    from: HashMap<u32, u32>,
}

impl PairCounts {
    fn observe(&mut self, a: u32, b: u32) {
        *self.pair.entry((a, b)).or_default() += 1;
        *self.from.entry(a).or_default() += 1;
    }

    /// count(a b) / count(a), 0 when `a` was never seen.
    fn prob(&self, a: u32, b: u32) -> f64 {
        match self.from.get(&a) {
            Some(&d) if d > 0 => {
                f64::from(self.pair.get(&(a, b)).copied().unwrap_or(0)) / f64::from(d)
            }
            _ => 0.0,
        }
    }
}

/// A [`Generator`] from any next-token logits function, decoding with a [`TokenSampler`].
pub struct SamplingGenerator<F> {
    pub logits: F,
    pub tokenizer: Tokenizer,
    pub sampler: TokenSampler,
    pub eos: Option<u32>,
}

impl<F> Generator for SamplingGenerator<F>
where
    F: FnMut(&[u32]) -> Result<Vec<f32>, String>,
{
    fn generate(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        stop: &[String],
    ) -> Result<String, ModelError> {
        generate(
            &mut self.logits,
            &self.tokenizer,
            &mut self.sampler,
            prompt,
            max_tokens,
            stop,
            self.eos,
        )
        .map(|g| g.text)
        .map_err(|e| ModelError {
            message: e.to_string(),
        })
    }
}
