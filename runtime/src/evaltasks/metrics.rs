//! The metrics, written to match their reference implementations: lm-evaluation-harness's
//! `acc`, `acc_norm` and `mean_stderr`, and the SQuAD evaluation script's `normalize_answer`,
//! `exact_match` and token `f1`.

use std::collections::HashMap;

/// A metric's mean over examples and its standard error.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricValue {
    pub value: f64,
    /// Sample standard deviation (n - 1) over sqrt(n), as the harness's `mean_stderr`; NaN for
    /// fewer than two examples.
    pub stderr: f64,
}

/// Mean and standard error of per-example scores.
pub fn mean_with_stderr(scores: &[f64]) -> MetricValue {
    let n = scores.len() as f64;
    if scores.is_empty() {
        return MetricValue {
            value: f64::NAN,
            stderr: f64::NAN,
        };
    }
    let mean = scores.iter().sum::<f64>() / n;
    if scores.len() < 2 {
        return MetricValue {
            value: mean,
            stderr: f64::NAN,
        };
    }
    let var = scores.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / (n - 1.0);
    MetricValue {
        value: mean,
        stderr: (var / n).sqrt(),
    }
}

/// What `acc_norm` divides a continuation's log-likelihood by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LengthUnit {
    /// Characters of the choice (the harness: `len(choice)` of a Python string).
    #[default]
    Chars,
    /// UTF-8 bytes of the choice (the harness before v0.4 on byte strings).
    Bytes,
}

impl LengthUnit {
    pub fn length(self, text: &str) -> usize {
        match self {
            LengthUnit::Chars => text.chars().count(),
            LengthUnit::Bytes => text.len(),
        }
    }
}

/// Index of the largest value, the first among equal ones (`np.argmax`). NaN never wins.
pub fn argmax(values: &[f64]) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &v) in values.iter().enumerate() {
        if v.is_nan() {
            continue;
        }
        match best {
            Some((_, b)) if v <= b => {}
            _ => best = Some((i, v)),
        }
    }
    best.map(|(i, _)| i)
}

/// The choice `acc` picks (highest summed log-likelihood) and the one `acc_norm` picks (highest
/// log-likelihood per unit of the choice's length).
pub fn multiple_choice_predictions(
    logliks: &[f64],
    choices: &[String],
    unit: LengthUnit,
) -> (Option<usize>, Option<usize>) {
    let normed: Vec<f64> = logliks
        .iter()
        .zip(choices)
        .map(|(ll, c)| ll / unit.length(c).max(1) as f64)
        .collect();
    (argmax(logliks), argmax(&normed))
}

/// SQuAD's `normalize_answer`: lower case, drop ASCII punctuation, drop the articles a / an / the
/// (as whole words, `\b(a|an|the)\b`), collapse whitespace.
pub fn normalize_answer(text: &str) -> String {
    let lower = text.to_lowercase();
    let no_punct: String = lower
        .chars()
        .filter(|c| !c.is_ascii_punctuation())
        .collect();
    // `\b(a|an|the)\b` in Python's `re` matches a maximal run of word characters equal to an
    // article; replace those runs by a space.
    let is_word = |c: char| c.is_alphanumeric() || c == '_';
    let mut no_articles = String::with_capacity(no_punct.len());
    let mut run = String::new();
    for c in no_punct.chars().chain(std::iter::once(' ')) {
        if is_word(c) {
            run.push(c);
            continue;
        }
        if matches!(run.as_str(), "a" | "an" | "the") {
            no_articles.push(' ');
        } else {
            no_articles.push_str(&run);
        }
        run.clear();
        no_articles.push(c);
    }
    no_articles.pop();
    no_articles.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// 1.0 when the normalised prediction equals the normalised target.
pub fn exact_match(prediction: &str, target: &str) -> f64 {
    f64::from(u8::from(
        normalize_answer(prediction) == normalize_answer(target),
    ))
}

/// SQuAD token F1 of the normalised texts: harmonic mean of precision and recall of the shared
/// tokens (counted with multiplicity). If either side has no tokens, 1.0 when both have none
/// (the SQuAD 2.0 script's rule), else 0.
pub fn token_f1(prediction: &str, target: &str) -> f64 {
    let pred = normalize_answer(prediction);
    let gold = normalize_answer(target);
    let pred: Vec<&str> = pred.split_whitespace().collect();
    let gold: Vec<&str> = gold.split_whitespace().collect();
    if pred.is_empty() || gold.is_empty() {
        return f64::from(u8::from(pred.is_empty() && gold.is_empty()));
    }
    let mut counts: HashMap<&str, usize> = HashMap::new();
    for t in &gold {
        *counts.entry(t).or_default() += 1;
    }
    let mut common = 0usize;
    for t in &pred {
        if let Some(c) = counts.get_mut(t) {
            if *c > 0 {
                *c -= 1;
                common += 1;
            }
        }
    }
    if common == 0 {
        return 0.0;
    }
    let precision = common as f64 / pred.len() as f64;
    let recall = common as f64 / gold.len() as f64;
    2.0 * precision * recall / (precision + recall)
}
