//! Running a task against a model: prompts, model calls, per-example scores and their means.

use miette::Diagnostic;

use super::fewshot::{encode_pair, fewshot_context, FewShotConfig};
use super::metrics::{
    argmax, exact_match, mean_with_stderr, multiple_choice_predictions, token_f1, LengthUnit,
    MetricValue,
};
use super::{Generator, ModelError, MultipleChoiceDoc, Scorer, TextToTextDoc};
use crate::sample::truncate_at_stop;
use crate::tokenizer::{Tokenizer, TokenizerError};

/// Why an evaluation failed.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum EvalError {
    #[error("there are no examples to evaluate")]
    #[diagnostic(code(task::no_examples))]
    NoExamples,
    #[error("{num_fewshot} shots were asked for but the few-shot pool holds {pool}")]
    #[diagnostic(code(task::fewshot), help("lower `num_fewshot` or use a larger pool"))]
    FewShotPool { num_fewshot: usize, pool: usize },
    #[error("example {index}: the model returned {got} scores for {expected} choices")]
    #[diagnostic(code(task::model_scores))]
    ScoreCount {
        index: usize,
        expected: usize,
        got: usize,
    },
    #[error("example {index}: no choice has a usable score (all NaN)")]
    #[diagnostic(code(task::nan_scores))]
    NanScores { index: usize },
    #[error("example {index}: {source}")]
    #[diagnostic(code(task::tokenize))]
    Tokenize {
        index: usize,
        source: TokenizerError,
    },
    #[error(transparent)]
    #[diagnostic(transparent)]
    Model(#[from] ModelError),
}

/// Which multiple-choice metrics to compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct McConfig {
    /// What `acc_norm` divides by. Default: characters (the harness).
    pub length_unit: LengthUnit,
    /// Also compute `acc_mutual_info` (the harness's): argmax of
    /// `loglik(choice | context) - loglik(choice | "")`, one more model call per choice.
    /// Default: off.
    pub mutual_info: bool,
}

/// Scores of one multiple-choice example.
#[derive(Debug, Clone, PartialEq)]
pub struct McDocResult {
    /// Summed log-likelihood of each choice's continuation.
    pub logliks: Vec<f64>,
    pub label: usize,
    /// What `acc` picked.
    pub pred: usize,
    /// What `acc_norm` picked.
    pub pred_norm: usize,
    /// Log-likelihood of each choice with an empty context (when `mutual_info` is on).
    pub unconditional: Option<Vec<f64>>,
    /// What `acc_mutual_info` picked.
    pub pred_mutual_info: Option<usize>,
}

/// A multiple-choice task's results.
#[derive(Debug, Clone, PartialEq)]
pub struct McReport {
    pub n: usize,
    pub acc: MetricValue,
    pub acc_norm: MetricValue,
    pub acc_mutual_info: Option<MetricValue>,
    /// Expected accuracy of guessing: the mean of 1 / (number of choices).
    pub chance: f64,
    pub docs: Vec<McDocResult>,
}

/// One generated answer and its scores.
#[derive(Debug, Clone, PartialEq)]
pub struct GenDocResult {
    pub prediction: String,
    pub target: String,
    pub exact_match: f64,
    pub f1: f64,
}

/// A generation task's results.
#[derive(Debug, Clone, PartialEq)]
pub struct GenReport {
    pub n: usize,
    pub exact_match: MetricValue,
    pub f1: MetricValue,
    pub docs: Vec<GenDocResult>,
}

fn check_pool(docs: usize, pool: usize, config: &FewShotConfig) -> Result<(), EvalError> {
    if docs == 0 {
        return Err(EvalError::NoExamples);
    }
    if config.num_fewshot > pool {
        return Err(EvalError::FewShotPool {
            num_fewshot: config.num_fewshot,
            pool,
        });
    }
    Ok(())
}

/// Scores every choice of every example as `target_delimiter + choice` after the k-shot context
/// and reports `acc`, `acc_norm` and, if asked, `acc_mutual_info`.
pub fn evaluate_multiple_choice(
    docs: &[MultipleChoiceDoc],
    pool: &[MultipleChoiceDoc],
    config: &FewShotConfig,
    tokenizer: &Tokenizer,
    scorer: &mut dyn Scorer,
    metrics: McConfig,
) -> Result<McReport, EvalError> {
    check_pool(docs.len(), pool.len(), config)?;
    let mut results = Vec::with_capacity(docs.len());
    for (index, doc) in docs.iter().enumerate() {
        let context = fewshot_context(doc, index, pool, config);
        let mut score = |context: &str| -> Result<Vec<f64>, EvalError> {
            let requests = doc
                .choices
                .iter()
                .map(|c| {
                    encode_pair(
                        tokenizer,
                        context,
                        &format!("{}{c}", config.target_delimiter),
                    )
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|source| EvalError::Tokenize { index, source })?;
            let logliks = scorer.loglik_batch(&requests)?;
            if logliks.len() != doc.choices.len() {
                return Err(EvalError::ScoreCount {
                    index,
                    expected: doc.choices.len(),
                    got: logliks.len(),
                });
            }
            Ok(logliks)
        };
        let logliks = score(&context)?;
        let unconditional = if metrics.mutual_info {
            Some(score("")?)
        } else {
            None
        };
        let (pred, pred_norm) =
            multiple_choice_predictions(&logliks, &doc.choices, metrics.length_unit);
        let (Some(pred), Some(pred_norm)) = (pred, pred_norm) else {
            return Err(EvalError::NanScores { index });
        };
        let pred_mutual_info = match &unconditional {
            Some(u) => {
                let mi: Vec<f64> = logliks.iter().zip(u).map(|(c, u)| c - u).collect();
                Some(argmax(&mi).ok_or(EvalError::NanScores { index })?)
            }
            None => None,
        };
        results.push(McDocResult {
            logliks,
            label: doc.label,
            pred,
            pred_norm,
            unconditional,
            pred_mutual_info,
        });
    }
    let hit = |f: fn(&McDocResult) -> usize| -> Vec<f64> {
        results
            .iter()
            .map(|r| f64::from(u8::from(f(r) == r.label)))
            .collect()
    };
    let acc = mean_with_stderr(&hit(|r| r.pred));
    let acc_norm = mean_with_stderr(&hit(|r| r.pred_norm));
    let acc_mutual_info = metrics
        .mutual_info
        .then(|| mean_with_stderr(&hit(|r| r.pred_mutual_info.unwrap_or(usize::MAX))));
    let chance = docs
        .iter()
        .map(|d| 1.0 / d.choices.len() as f64)
        .sum::<f64>()
        / docs.len() as f64;
    Ok(McReport {
        n: docs.len(),
        acc,
        acc_norm,
        acc_mutual_info,
        chance,
        docs: results,
    })
}

/// Generates an answer for every example after its k-shot prompt and reports exact match and
/// token F1. The prompt ends with the target delimiter, so the model continues where a shot's
/// target starts; the answer is cut at the first stop string (whether or not the generator did).
pub fn evaluate_generation(
    docs: &[TextToTextDoc],
    pool: &[TextToTextDoc],
    config: &FewShotConfig,
    tokenizer: &Tokenizer,
    generator: &mut dyn Generator,
    max_tokens: usize,
    stop: &[String],
) -> Result<GenReport, EvalError> {
    check_pool(docs.len(), pool.len(), config)?;
    let mut results = Vec::with_capacity(docs.len());
    for (index, doc) in docs.iter().enumerate() {
        let prompt = format!(
            "{}{}",
            fewshot_context(doc, index, pool, config),
            config.target_delimiter
        );
        let ids = tokenizer
            .encode(&prompt)
            .map_err(|source| EvalError::Tokenize { index, source })?;
        let text = generator.generate(&ids, max_tokens, stop)?;
        let (prediction, _) = truncate_at_stop(&text, stop);
        results.push(GenDocResult {
            prediction: prediction.to_string(),
            target: doc.target.clone(),
            exact_match: exact_match(prediction, &doc.target),
            f1: token_f1(prediction, &doc.target),
        });
    }
    let em: Vec<f64> = results.iter().map(|r| r.exact_match).collect();
    let f1: Vec<f64> = results.iter().map(|r| r.f1).collect();
    Ok(GenReport {
        n: docs.len(),
        exact_match: mean_with_stderr(&em),
        f1: mean_with_stderr(&f1),
        docs: results,
    })
}
