//! T5's span-corruption objective, as in the paper (Raffel et al. 2020, §3.1.4) and the reference
//! code (`t5.data.preprocessors`: `random_spans_noise_mask`, `_random_segmentation`,
//! `noise_span_to_unique_sentinel`, `nonnoise_span_to_unique_sentinel`, `random_spans_helper`).
//!
//! A token sequence of length L gets `round(L * density)` noise tokens (at least 1, at most L - 1)
//! in `max(1, round(noise / mean_span))` spans. The noise tokens and the non-noise tokens are each
//! split into that many non-empty spans by a uniformly random segmentation, and the spans are
//! interleaved starting with a non-noise span (so the sequence always ends in noise). The inputs
//! keep the non-noise tokens and replace each noise span by one sentinel; the targets hold each
//! sentinel followed by the span it replaced. Sentinels count down from `sentinel_start`
//! (T5: `<extra_id_0>` = vocab_size - 1, then vocab_size - 2, ...).
//!
//! Rounding follows the reference: `tf.round` on float32 in the mask (round half to even) and
//! Python's `round` on float64 in the helper (also half to even). The random draws are ours
//! (ChaCha8, not TensorFlow's stateless shuffle): the distribution is the same, the bits are not.
//! Where the reference would fail (more spans than non-noise tokens, which needs a density above
//! about 0.75 with mean span 1) we use fewer spans.

use miette::Diagnostic;
use rand::Rng;

/// Why span corruption cannot be set up or applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Diagnostic)]
pub enum SpanCorruptionError {
    #[error("noise_density must be in (0, 1), got {value}")]
    #[diagnostic(code(objective::noise_density), help("T5 uses 0.15"))]
    NoiseDensity { value: f64 },
    #[error("mean_noise_span_length must be finite and >= 1, got {value}")]
    #[diagnostic(code(objective::mean_span), help("T5 uses 3"))]
    MeanSpan { value: f64 },
    #[error("{needed} sentinels are needed but only {available} are configured (ids {lowest}..={start})")]
    #[diagnostic(
        code(objective::sentinels),
        help("raise `num_sentinels` (T5 uses 100) or shorten the sequences")
    )]
    Sentinels {
        needed: usize,
        available: u32,
        start: u32,
        lowest: u32,
    },
    #[error("sentinel_start {start} with {count} sentinels would go below id 0")]
    #[diagnostic(code(objective::sentinels))]
    SentinelRange { start: u32, count: u32 },
    #[error("noise mask of length {mask} does not match {tokens} tokens")]
    #[diagnostic(code(objective::mask_length))]
    MaskLength { mask: usize, tokens: usize },
    #[error("inputs_length {inputs_length} is too small for span corruption")]
    #[diagnostic(code(objective::inputs_length), help("use at least 2"))]
    InputsLength { inputs_length: usize },
}

/// Settings of span corruption.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanCorruption {
    /// Fraction of tokens that are noise. T5: 0.15.
    pub noise_density: f64,
    /// Mean length of a noise span. T5: 3.
    pub mean_noise_span_length: f64,
    /// Id of the first sentinel; later ones count down from it.
    pub sentinel_start: u32,
    /// How many sentinel ids exist (`sentinel_start - num_sentinels + 1` is the lowest).
    pub num_sentinels: u32,
    /// Appended to the inputs (T5 appends EOS). None: nothing.
    pub inputs_eos: Option<u32>,
    /// Appended to the targets: EOS in T5, or a final sentinel in the paper's figure. None: nothing.
    pub targets_eos: Option<u32>,
}

impl SpanCorruption {
    /// T5's setting for a vocabulary whose top `num_sentinels` ids are sentinels: density 0.15,
    /// mean span 3, first sentinel `vocab_size - 1`, `eos` appended to inputs and targets.
    pub fn t5(vocab_size: u32, num_sentinels: u32, eos: Option<u32>) -> SpanCorruption {
        SpanCorruption {
            noise_density: 0.15,
            mean_noise_span_length: 3.0,
            sentinel_start: vocab_size.saturating_sub(1),
            num_sentinels,
            inputs_eos: eos,
            targets_eos: eos,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<(), SpanCorruptionError> {
        check_rates(self.noise_density, self.mean_noise_span_length)?;
        if self.num_sentinels == 0 || self.num_sentinels - 1 > self.sentinel_start {
            return Err(SpanCorruptionError::SentinelRange {
                start: self.sentinel_start,
                count: self.num_sentinels,
            });
        }
        Ok(())
    }

    /// Lowest sentinel id.
    pub fn lowest_sentinel(&self) -> u32 {
        self.sentinel_start + 1 - self.num_sentinels.max(1)
    }

    /// Draws a noise mask for `tokens` and corrupts them: `(inputs, targets)`.
    pub fn apply<R: Rng>(
        &self,
        tokens: &[u32],
        rng: &mut R,
    ) -> Result<(Vec<u32>, Vec<u32>), SpanCorruptionError> {
        let mask = random_spans_noise_mask(
            tokens.len(),
            self.noise_density,
            self.mean_noise_span_length,
            rng,
        )?;
        self.corrupt_with_mask(tokens, &mask)
    }

    /// Corrupts `tokens` with a given noise mask (`true` = noise): inputs are the non-noise
    /// tokens with each noise span replaced by its sentinel; targets are each sentinel followed by
    /// the span it replaced. A mask starting with noise or ending with non-noise is handled as
    /// the reference does (a non-noise span in the targets also gets a sentinel).
    pub fn corrupt_with_mask(
        &self,
        tokens: &[u32],
        noise: &[bool],
    ) -> Result<(Vec<u32>, Vec<u32>), SpanCorruptionError> {
        self.validate()?;
        if noise.len() != tokens.len() {
            return Err(SpanCorruptionError::MaskLength {
                mask: noise.len(),
                tokens: tokens.len(),
            });
        }
        let not_noise: Vec<bool> = noise.iter().map(|&n| !n).collect();
        let spans = span_starts(noise).max(span_starts(&not_noise));
        if spans > self.num_sentinels as usize {
            return Err(SpanCorruptionError::Sentinels {
                needed: spans,
                available: self.num_sentinels,
                start: self.sentinel_start,
                lowest: self.lowest_sentinel(),
            });
        }
        let mut inputs = replace_spans(tokens, noise, self.sentinel_start);
        let mut targets = replace_spans(tokens, &not_noise, self.sentinel_start);
        inputs.extend(self.inputs_eos);
        targets.extend(self.targets_eos);
        Ok((inputs, targets))
    }
}

fn check_rates(density: f64, mean_span: f64) -> Result<(), SpanCorruptionError> {
    if !(density > 0.0 && density < 1.0) {
        return Err(SpanCorruptionError::NoiseDensity { value: density });
    }
    if !(mean_span.is_finite() && mean_span >= 1.0) {
        return Err(SpanCorruptionError::MeanSpan { value: mean_span });
    }
    Ok(())
}

/// Number of spans of `true` in `mask`.
fn span_starts(mask: &[bool]) -> usize {
    (0..mask.len())
        .filter(|&i| mask[i] && (i == 0 || !mask[i - 1]))
        .count()
}

/// `noise_span_to_unique_sentinel`: the first token of each masked span becomes the next
/// sentinel (counting down), later tokens of the span are dropped.
fn replace_spans(tokens: &[u32], mask: &[bool], sentinel_start: u32) -> Vec<u32> {
    let mut out = Vec::with_capacity(tokens.len());
    let mut next_sentinel = sentinel_start;
    for i in 0..tokens.len() {
        if !mask[i] {
            out.push(tokens[i]);
        } else if i == 0 || !mask[i - 1] {
            out.push(next_sentinel);
            next_sentinel = next_sentinel.wrapping_sub(1);
        }
    }
    out
}

/// `_random_segmentation`: a uniformly random partition of `num_items` items into
/// `num_segments` non-empty consecutive segments; returns the segment lengths. The reference
/// shuffles an indicator of `num_segments - 1` cut points among the `num_items - 1` gaps; drawing
/// that many distinct gaps is the same distribution.
pub fn random_segmentation<R: Rng>(
    num_items: usize,
    num_segments: usize,
    rng: &mut R,
) -> Vec<usize> {
    if num_items == 0 || num_segments == 0 {
        return Vec::new();
    }
    let segments = num_segments.min(num_items);
    let mut cuts: Vec<usize> = rand::seq::index::sample(rng, num_items - 1, segments - 1)
        .into_iter()
        .map(|g| g + 1)
        .collect();
    cuts.sort_unstable();
    let mut lengths = Vec::with_capacity(segments);
    let mut prev = 0;
    for c in cuts.into_iter().chain(std::iter::once(num_items)) {
        lengths.push(c - prev);
        prev = c;
    }
    lengths
}

/// How many noise tokens and spans a sequence of `length` gets, as `random_spans_noise_mask`
/// computes them (float32, round half to even): `(num_noise_tokens, num_noise_spans)`. The
/// length is raised to 2 first, as the reference does "to avoid degeneracy".
pub fn noise_counts(
    length: usize,
    noise_density: f64,
    mean_noise_span_length: f64,
) -> (usize, usize) {
    let length = length.max(2);
    let noise = ((length as f32) * (noise_density as f32)).round_ties_even() as usize;
    let noise = noise.clamp(1, length - 1);
    let spans = ((noise as f32) / (mean_noise_span_length as f32)).round_ties_even() as usize;
    // The reference needs as many non-empty non-noise spans as noise spans; see the module doc.
    let spans = spans.max(1).min(noise).min(length - noise);
    (noise, spans)
}

/// Lengths of the inputs and targets that corrupting `length` tokens produces with these
/// settings (sentinels and EOS included), exactly as [`SpanCorruption::apply`] makes them.
pub fn corrupted_lengths(config: &SpanCorruption, length: usize) -> (usize, usize) {
    let eos_in = usize::from(config.inputs_eos.is_some());
    let eos_tg = usize::from(config.targets_eos.is_some());
    if length < 2 {
        // One token is never noise (the mask of the padded length 2 is [keep, noise]), and its
        // kept span still gets a sentinel in the targets.
        return (length + eos_in, length + eos_tg);
    }
    let (noise, spans) = noise_counts(length, config.noise_density, config.mean_noise_span_length);
    // The mask starts with a kept span and ends with a noise span: one sentinel per noise span
    // in the inputs, one per kept span (as many) in the targets.
    (length - noise + spans + eos_in, noise + spans + eos_tg)
}

/// `random_spans_noise_mask`: which of `length` tokens are noise.
pub fn random_spans_noise_mask<R: Rng>(
    length: usize,
    noise_density: f64,
    mean_noise_span_length: f64,
    rng: &mut R,
) -> Result<Vec<bool>, SpanCorruptionError> {
    check_rates(noise_density, mean_noise_span_length)?;
    if length == 0 {
        return Ok(Vec::new());
    }
    let padded = length.max(2);
    let (num_noise, num_spans) = noise_counts(length, noise_density, mean_noise_span_length);
    let noise_lengths = random_segmentation(num_noise, num_spans, rng);
    let nonnoise_lengths = random_segmentation(padded - num_noise, num_spans, rng);
    let mut mask = Vec::with_capacity(padded);
    for (keep, drop) in nonnoise_lengths.iter().zip(&noise_lengths) {
        mask.extend(std::iter::repeat_n(false, *keep));
        mask.extend(std::iter::repeat_n(true, *drop));
    }
    mask.truncate(length);
    Ok(mask)
}

/// `random_spans_helper`: the raw token length whose corrupted inputs (with
/// `extra_tokens_per_span_inputs` per span and one EOS) fit `inputs_length`, and the targets
/// length that corruption then produces (with `extra_tokens_per_span_targets` per span and one
/// EOS): `(tokens_length, targets_length)`. T5's default, `(512, 0.15, 3, 1, 1)`, gives
/// `(568, 114)`. Includes the reference's tweak for density 0.5 (targets no longer than inputs).
pub fn random_spans_helper(
    inputs_length: usize,
    noise_density: f64,
    mean_noise_span_length: f64,
    extra_tokens_per_span_inputs: usize,
    extra_tokens_per_span_targets: usize,
) -> Result<(usize, usize), SpanCorruptionError> {
    check_rates(noise_density, mean_noise_span_length)?;
    if inputs_length < 2 {
        return Err(SpanCorruptionError::InputsLength { inputs_length });
    }
    let lengths = |tokens_length: usize| {
        let noise = ((tokens_length as f64) * noise_density).round_ties_even() as usize;
        let nonnoise = tokens_length - noise;
        let spans = ((noise as f64) / mean_noise_span_length).round_ties_even() as usize;
        (
            nonnoise + spans * extra_tokens_per_span_inputs + 1,
            noise + spans * extra_tokens_per_span_targets + 1,
        )
    };
    let mut tokens_length = inputs_length - 1;
    // Inputs grow by at least one token per (1 - density)^-1 raw tokens, so this ends; the bound
    // only guards against float surprises.
    let bound = inputs_length.saturating_mul(1000);
    while lengths(tokens_length + 1).0 <= inputs_length {
        tokens_length += 1;
        if tokens_length > bound {
            return Err(SpanCorruptionError::InputsLength { inputs_length });
        }
    }
    let (_, mut targets_length) = lengths(tokens_length);
    let inputs_len = lengths(tokens_length).0;
    if noise_density == 0.5 && targets_length > inputs_len {
        tokens_length -= 1;
        targets_length -= 1;
    }
    Ok((tokens_length, targets_length))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helper_matches_t5_default() {
        assert_eq!(
            random_spans_helper(512, 0.15, 3.0, 1, 1).unwrap(),
            (568, 114)
        );
    }

    #[test]
    fn counts_round_half_to_even_in_f32() {
        // 10 * 0.15f32 = 1.5000001 rounds to 2 (as TensorFlow's float32 does).
        assert_eq!(noise_counts(10, 0.15, 3.0), (2, 1));
        // 0 and 1 tokens still get one noise token of a length-2 sequence.
        assert_eq!(noise_counts(1, 0.15, 3.0), (1, 1));
        assert_eq!(noise_counts(100, 0.15, 3.0), (15, 5));
    }
}
