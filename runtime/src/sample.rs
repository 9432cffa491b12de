//! Choosing the next token from a row of logits, and cutting generated text at stop strings.
//!
//! Generation (`kiln generate`, generation tasks in evaluation) needs the decoding rules users know
//! from nanoGPT and Hugging Face: greedy, temperature, top-k and top-p (nucleus), seeded so a run
//! can be repeated exactly. The order of the filters is Hugging Face's: divide by the temperature,
//! keep the `k` most likely tokens, then keep the smallest most-likely set whose probability
//! reaches `p`, renormalise and draw.
//!
//! Two choices differ from some implementations and are deliberate:
//! - top-k keeps exactly `k` tokens; ties at the boundary are broken by the lower token id (nanoGPT
//!   and Hugging Face keep every token tied with the k-th logit). So top-k = 1 is always greedy.
//! - greedy breaks ties by the lower token id (`torch.argmax` returns the first maximum).

use miette::Diagnostic;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Deserialize;

/// Why a token could not be chosen.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Diagnostic)]
pub enum SampleError {
    #[error("cannot sample from an empty row of logits")]
    #[diagnostic(code(sample::empty))]
    Empty,
    #[error("logit {index} is {value}; logits must be finite or -inf")]
    #[diagnostic(
        code(sample::non_finite),
        help("a NaN or +inf logit usually means the model diverged")
    )]
    NonFinite { index: usize, value: f32 },
    #[error("every logit is -inf: no token can be chosen")]
    #[diagnostic(code(sample::no_candidates))]
    NoCandidates,
    #[error("temperature must be finite and >= 0, got {value}")]
    #[diagnostic(code(sample::temperature), help("use 0 for greedy decoding"))]
    Temperature { value: f32 },
    #[error("top_k must be at least 1")]
    #[diagnostic(code(sample::top_k), help("leave `top_k` unset to keep every token"))]
    TopK,
    #[error("top_p must be in (0, 1], got {value}")]
    #[diagnostic(code(sample::top_p), help("leave `top_p` unset to keep every token"))]
    TopP { value: f32 },
}

/// How to choose tokens. Defaults: temperature 1, no top-k, no top-p, seed 0.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SamplingConfig {
    /// Logits are divided by this before the softmax; 0 means greedy (argmax). Default: 1.0.
    #[serde(default = "default_temperature")]
    pub temperature: f32,
    /// Keep only the `k` most likely tokens. Default: unset (all tokens).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Keep the smallest most-likely set of tokens whose probability reaches `p`. Default: unset.
    #[serde(default)]
    pub top_p: Option<f32>,
    /// Seed of the ChaCha8 stream the draws come from. Default: 0.
    #[serde(default)]
    pub seed: u64,
}

fn default_temperature() -> f32 {
    1.0
}

impl Default for SamplingConfig {
    fn default() -> Self {
        SamplingConfig {
            temperature: default_temperature(),
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }
}

impl SamplingConfig {
    /// Greedy decoding.
    pub fn greedy() -> Self {
        SamplingConfig {
            temperature: 0.0,
            ..SamplingConfig::default()
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), SampleError> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(SampleError::Temperature {
                value: self.temperature,
            });
        }
        if self.top_k == Some(0) {
            return Err(SampleError::TopK);
        }
        if let Some(p) = self.top_p {
            if !(p > 0.0 && p <= 1.0) {
                return Err(SampleError::TopP { value: p });
            }
        }
        Ok(())
    }
}

/// Index of the largest logit (the lowest index among equal ones). `-inf` logits are allowed;
/// NaN and `+inf` are errors.
pub fn argmax(logits: &[f32]) -> Result<u32, SampleError> {
    check_logits(logits)?;
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in logits.iter().enumerate() {
        if v == f32::NEG_INFINITY {
            continue;
        }
        match best {
            Some((_, b)) if v <= b => {}
            _ => best = Some((i, v)),
        }
    }
    best.map(|(i, _)| i as u32).ok_or(SampleError::NoCandidates)
}

fn check_logits(logits: &[f32]) -> Result<(), SampleError> {
    if logits.is_empty() {
        return Err(SampleError::Empty);
    }
    if let Some((index, &value)) = logits
        .iter()
        .enumerate()
        .find(|(_, v)| v.is_nan() || **v == f32::INFINITY)
    {
        return Err(SampleError::NonFinite { index, value });
    }
    Ok(())
}

/// A seeded next-token chooser.
#[derive(Debug, Clone)]
pub struct TokenSampler {
    config: SamplingConfig,
    rng: ChaCha8Rng,
}

impl TokenSampler {
    /// A sampler for `config`, its random stream seeded by `config.seed`.
    pub fn new(config: SamplingConfig) -> Result<TokenSampler, SampleError> {
        config.validate()?;
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        Ok(TokenSampler { config, rng })
    }

    pub fn config(&self) -> &SamplingConfig {
        &self.config
    }

    /// The distribution a draw comes from after temperature, top-k and top-p: `(token, prob)`
    /// pairs, most likely first (lower id first among equals), probabilities summing to 1.
    /// Greedy decoding gives the single argmax with probability 1.
    pub fn distribution(&self, logits: &[f32]) -> Result<Vec<(u32, f64)>, SampleError> {
        check_logits(logits)?;
        if self.config.temperature == 0.0 {
            return Ok(vec![(argmax(logits)?, 1.0)]);
        }
        let mut cands = self.scaled_candidates(logits)?;
        cands.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if let Some(k) = self.config.top_k {
            cands.truncate(k);
        }
        softmax_in_place(&mut cands);
        if let Some(p) = self.config.top_p {
            let keep = nucleus_size(&cands, f64::from(p));
            cands.truncate(keep);
            let total: f64 = cands.iter().map(|c| c.1).sum();
            for c in &mut cands {
                c.1 /= total;
            }
        }
        Ok(cands)
    }

    /// Chooses the next token. Greedy decoding does not advance the random stream.
    pub fn sample(&mut self, logits: &[f32]) -> Result<u32, SampleError> {
        check_logits(logits)?;
        if self.config.temperature == 0.0 {
            return argmax(logits);
        }
        let cands = if self.config.top_k.is_none() && self.config.top_p.is_none() {
            // Plain temperature sampling needs no sort: draw over the ids in order.
            let mut cands = self.scaled_candidates(logits)?;
            softmax_in_place(&mut cands);
            cands
        } else {
            self.distribution(logits)?
        };
        let u: f64 = self.rng.random();
        let mut acc = 0.0;
        for &(id, p) in &cands {
            acc += p;
            if u < acc {
                return Ok(id);
            }
        }
        // Rounding can leave the sum a hair below 1; the draw then belongs to the last token.
        cands.last().map(|c| c.0).ok_or(SampleError::NoCandidates)
    }

    /// `(id, logit / temperature)` for every token whose logit is not -inf.
    fn scaled_candidates(&self, logits: &[f32]) -> Result<Vec<(u32, f64)>, SampleError> {
        let t = f64::from(self.config.temperature);
        let cands: Vec<(u32, f64)> = logits
            .iter()
            .enumerate()
            .filter(|(_, v)| **v != f32::NEG_INFINITY)
            .map(|(i, &v)| (i as u32, f64::from(v) / t))
            .collect();
        if cands.is_empty() {
            return Err(SampleError::NoCandidates);
        }
        Ok(cands)
    }
}

/// Turns `(id, scaled logit)` into `(id, probability)`.
fn softmax_in_place(cands: &mut [(u32, f64)]) {
    let max = cands.iter().map(|c| c.1).fold(f64::NEG_INFINITY, f64::max);
    let mut total = 0.0;
    for c in cands.iter_mut() {
        c.1 = (c.1 - max).exp();
        total += c.1;
    }
    for c in cands.iter_mut() {
        c.1 /= total;
    }
}

/// How many of the sorted candidates the nucleus keeps: the fewest whose mass reaches `p`.
fn nucleus_size(sorted: &[(u32, f64)], p: f64) -> usize {
    let mut acc = 0.0;
    for (i, c) in sorted.iter().enumerate() {
        acc += c.1;
        // Logits are f32, so probabilities carry ~1e-7 relative error: a set whose mass is p up
        // to that precision (p = 0.8 from 0.5 + 0.3) reaches p.
        if acc >= p - 1e-6 {
            return i + 1;
        }
    }
    sorted.len()
}

/// Cuts `text` at the first occurrence of any stop string; says whether one was found.
/// Empty stop strings are ignored (they would match everywhere).
pub fn truncate_at_stop<'a>(text: &'a str, stops: &[String]) -> (&'a str, bool) {
    let first = stops
        .iter()
        .filter(|s| !s.is_empty())
        .filter_map(|s| text.find(s.as_str()))
        .min();
    match first {
        Some(i) => (&text[..i], true),
        None => (text, false),
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// `max_tokens` tokens were generated.
    MaxTokens,
    /// A stop string appeared in the decoded text.
    StopString,
    /// The end-of-sequence token was drawn.
    Eos,
}

/// What [`generate`] produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Decoded continuation, cut before the first stop string.
    pub text: String,
    /// Every token drawn (including those past a stop string's start, excluding EOS).
    pub tokens: Vec<u32>,
    pub reason: StopReason,
}

/// Why [`generate`] failed.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum GenerateError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Sample(#[from] SampleError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Tokenizer(#[from] crate::tokenizer::TokenizerError),
    #[error("the model failed: {0}")]
    #[diagnostic(code(sample::model))]
    Model(String),
}

/// The decoding loop: asks `next_logits(prompt ++ generated)` for a row of logits, draws a
/// token, and stops after `max_tokens`, at `eos`, or once the decoded continuation contains a
/// stop string. Decoding the whole continuation each step keeps multi-token stop strings and
/// multi-byte characters right at the price of O(n²) decoding, fine for eval-sized outputs.
pub fn generate<F>(
    mut next_logits: F,
    tokenizer: &crate::tokenizer::Tokenizer,
    sampler: &mut TokenSampler,
    prompt: &[u32],
    max_tokens: usize,
    stop: &[String],
    eos: Option<u32>,
) -> Result<Generated, GenerateError>
where
    F: FnMut(&[u32]) -> Result<Vec<f32>, String>,
{
    let mut context = prompt.to_vec();
    let mut tokens = Vec::new();
    for _ in 0..max_tokens {
        let logits = next_logits(&context).map_err(GenerateError::Model)?;
        let id = sampler.sample(&logits)?;
        if Some(id) == eos {
            let text = tokenizer.decode(&tokens)?;
            let (cut, _) = truncate_at_stop(&text, stop);
            return Ok(Generated {
                text: cut.to_string(),
                tokens,
                reason: StopReason::Eos,
            });
        }
        tokens.push(id);
        context.push(id);
        let text = tokenizer.decode(&tokens)?;
        let (cut, found) = truncate_at_stop(&text, stop);
        if found {
            return Ok(Generated {
                text: cut.to_string(),
                tokens,
                reason: StopReason::StopString,
            });
        }
    }
    Ok(Generated {
        text: tokenizer.decode(&tokens)?,
        tokens,
        reason: StopReason::MaxTokens,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::Tokenizer;

    fn sampler(
        temperature: f32,
        top_k: Option<usize>,
        top_p: Option<f32>,
        seed: u64,
    ) -> TokenSampler {
        TokenSampler::new(SamplingConfig {
            temperature,
            top_k,
            top_p,
            seed,
        })
        .unwrap()
    }

    fn random_logits(rng: &mut ChaCha8Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.random_range(-5.0f32..5.0)).collect()
    }

    /// Draw frequencies over `n` samples.
    fn frequencies(s: &mut TokenSampler, logits: &[f32], n: usize) -> Vec<f64> {
        let mut counts = vec![0usize; logits.len()];
        for _ in 0..n {
            counts[s.sample(logits).unwrap() as usize] += 1;
        }
        counts.iter().map(|&c| c as f64 / n as f64).collect()
    }

    #[test]
    fn top_k_one_is_greedy() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut greedy = TokenSampler::new(SamplingConfig::greedy()).unwrap();
        for i in 0..200 {
            let logits = random_logits(&mut rng, 50);
            let mut k1 = sampler(1.5, Some(1), None, i);
            assert_eq!(k1.sample(&logits).unwrap(), greedy.sample(&logits).unwrap());
        }
        // Ties: the lower id, for both.
        let tied = [0.0, 3.0, 3.0, -1.0];
        assert_eq!(argmax(&tied).unwrap(), 1);
        assert_eq!(sampler(1.0, Some(1), None, 0).sample(&tied).unwrap(), 1);
        assert_eq!(
            sampler(1.0, Some(2), None, 0)
                .distribution(&tied)
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn temperature_sampling_matches_the_softmax() {
        let logits = [1.0f32, 2.0, 0.0, -1.0];
        for t in [0.5f32, 1.0, 2.0] {
            let mut s = sampler(t, None, None, 3);
            let f = frequencies(&mut s, &logits, 40_000);
            let z: f64 = logits
                .iter()
                .map(|&l| (f64::from(l) / f64::from(t)).exp())
                .sum();
            for (i, &l) in logits.iter().enumerate() {
                let p = (f64::from(l) / f64::from(t)).exp() / z;
                assert!((f[i] - p).abs() < 0.01, "T={t} token {i}: {} vs {p}", f[i]);
            }
        }
    }

    #[test]
    fn top_p_keeps_the_smallest_set_reaching_p() {
        // Probabilities 0.5, 0.3, 0.15, 0.05 (in a shuffled id order).
        let probs = [0.15f64, 0.5, 0.05, 0.3];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln() as f32).collect();
        let d = sampler(1.0, None, Some(0.7), 0)
            .distribution(&logits)
            .unwrap();
        let ids: Vec<u32> = d.iter().map(|c| c.0).collect();
        assert_eq!(ids, vec![1, 3]);
        assert!(
            (d[0].1 - 0.625).abs() < 1e-6 && (d[1].1 - 0.375).abs() < 1e-6,
            "{d:?}"
        );
        // p = 0.8 is reached exactly by 0.5 + 0.3; p = 0.81 needs the third token.
        assert_eq!(
            sampler(1.0, None, Some(0.8), 0)
                .distribution(&logits)
                .unwrap()
                .len(),
            2
        );
        assert_eq!(
            sampler(1.0, None, Some(0.81), 0)
                .distribution(&logits)
                .unwrap()
                .len(),
            3
        );
        assert_eq!(
            sampler(1.0, None, Some(1.0), 0)
                .distribution(&logits)
                .unwrap()
                .len(),
            4
        );
        assert_eq!(
            sampler(1.0, None, Some(0.1), 0)
                .distribution(&logits)
                .unwrap()
                .len(),
            1
        );
        // Draws follow the renormalised nucleus and never leave it.
        let mut s = sampler(1.0, None, Some(0.7), 11);
        let f = frequencies(&mut s, &logits, 40_000);
        assert_eq!((f[0], f[2]), (0.0, 0.0));
        assert!(
            (f[1] - 0.625).abs() < 0.01 && (f[3] - 0.375).abs() < 0.01,
            "{f:?}"
        );
        // top-k then top-p: k = 3 renormalises over 0.95, so 0.5/0.95 + 0.3/0.95 = 0.842 >= 0.8.
        let d = sampler(1.0, Some(3), Some(0.8), 0)
            .distribution(&logits)
            .unwrap();
        assert_eq!(d.len(), 2);
    }

    #[test]
    fn draws_are_deterministic_by_seed() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let logits = random_logits(&mut rng, 30);
        let run = |seed| {
            let mut s = sampler(1.0, Some(10), Some(0.9), seed);
            (0..100)
                .map(|_| s.sample(&logits).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }

    #[test]
    fn masked_and_bad_logits() {
        let logits = [f32::NEG_INFINITY, 0.0, f32::NEG_INFINITY, 0.0];
        let mut s = sampler(1.0, None, None, 0);
        for _ in 0..100 {
            assert!(matches!(s.sample(&logits).unwrap(), 1 | 3));
        }
        assert_eq!(
            s.sample(&[f32::NEG_INFINITY; 3]),
            Err(SampleError::NoCandidates)
        );
        assert_eq!(s.sample(&[]), Err(SampleError::Empty));
        assert!(matches!(
            s.sample(&[0.0, f32::NAN]),
            Err(SampleError::NonFinite { index: 1, .. })
        ));
        assert!(matches!(
            argmax(&[f32::INFINITY]),
            Err(SampleError::NonFinite { .. })
        ));
        for bad in [
            SamplingConfig {
                temperature: -1.0,
                ..SamplingConfig::default()
            },
            SamplingConfig {
                temperature: f32::NAN,
                ..SamplingConfig::default()
            },
            SamplingConfig {
                top_k: Some(0),
                ..SamplingConfig::default()
            },
            SamplingConfig {
                top_p: Some(0.0),
                ..SamplingConfig::default()
            },
            SamplingConfig {
                top_p: Some(1.5),
                ..SamplingConfig::default()
            },
        ] {
            assert!(TokenSampler::new(bad).is_err());
        }
    }

    #[test]
    fn stop_strings_cut_at_the_earliest_match() {
        let stops = vec!["\n\n".to_string(), "END".to_string(), String::new()];
        assert_eq!(truncate_at_stop("abc END x\n\n", &stops), ("abc ", true));
        assert_eq!(truncate_at_stop("a\n\nb END", &stops), ("a", true));
        assert_eq!(truncate_at_stop("no stop", &stops), ("no stop", false));
        assert_eq!(truncate_at_stop("x", &[]), ("x", false));
    }

    #[test]
    fn generate_stops_at_stop_strings_eos_and_max_tokens() {
        // A "model" that always prefers the byte after the last one: "a" → "bcdef...".
        let next = |ctx: &[u32]| -> Result<Vec<f32>, String> {
            let mut l = vec![0.0f32; 256];
            l[(*ctx.last().unwrap() as usize + 1) % 256] = 10.0;
            Ok(l)
        };
        let tok = Tokenizer::Byte;
        let mut greedy = TokenSampler::new(SamplingConfig::greedy()).unwrap();
        let g = generate(
            next,
            &tok,
            &mut greedy,
            &[u32::from(b'a')],
            10,
            &["de".into()],
            None,
        )
        .unwrap();
        assert_eq!((g.text.as_str(), g.reason), ("bc", StopReason::StopString));
        assert_eq!(g.tokens.len(), 4);
        let g = generate(next, &tok, &mut greedy, &[u32::from(b'a')], 3, &[], None).unwrap();
        assert_eq!((g.text.as_str(), g.reason), ("bcd", StopReason::MaxTokens));
        let g = generate(
            next,
            &tok,
            &mut greedy,
            &[u32::from(b'a')],
            10,
            &[],
            Some(u32::from(b'e')),
        )
        .unwrap();
        assert_eq!((g.text.as_str(), g.reason), ("bcd", StopReason::Eos));
        let failing = |_: &[u32]| -> Result<Vec<f32>, String> { Err("boom".into()) };
        assert!(matches!(
            generate(failing, &tok, &mut greedy, &[0], 3, &[], None),
            Err(GenerateError::Model(_))
        ));
    }

    #[test]
    fn nucleus_keeps_the_fewest_reaching_p() {
        let s = [(0, 0.5), (1, 0.3), (2, 0.15), (3, 0.05)];
        assert_eq!(nucleus_size(&s, 0.4), 1);
        assert_eq!(nucleus_size(&s, 0.5), 1);
        assert_eq!(nucleus_size(&s, 0.8), 2);
        assert_eq!(nucleus_size(&s, 0.81), 3);
        assert_eq!(nucleus_size(&s, 1.0), 4);
    }
}
