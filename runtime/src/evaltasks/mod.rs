//! Evaluation tasks: task files, k-shot prompts, and the metrics users compare across toolkits.
//!
//! The habits follow EleutherAI's lm-evaluation-harness so numbers line up with published ones:
//! few-shot examples joined by a delimiter ahead of the question, multiple choice scored by the
//! log-likelihood of each continuation (`acc`; `acc_norm` dividing by the continuation's length
//! in characters; `acc_mutual_info` subtracting its likelihood without context), standard errors
//! as sample std / sqrt(n), and SQuAD's exact match and token F1 for generation. The model is behind two small traits, [`Scorer`] and [`Generator`], so the tasks
//! and metrics are tested with tiny counted models ([`baseline`]) and run unchanged on a compiled
//! program.
//!
//! Task files are JSONL, one example per line: multiple choice
//! `{"context": str, "choices": [str], "label": int}` and text-to-text
//! `{"input": str, "target": str}`. [`shakespeare`] builds the shipped Tiny Shakespeare tasks.

pub mod baseline;
pub mod fewshot;
pub mod load;
pub mod metrics;
pub mod run;
pub mod shakespeare;

use miette::Diagnostic;
use serde::{Deserialize, Serialize};

pub use fewshot::FewShotConfig;
pub use load::{BadLine, TaskError};
pub use metrics::{LengthUnit, MetricValue};
pub use run::{
    evaluate_generation, evaluate_multiple_choice, EvalError, GenReport, McConfig, McReport,
};

/// A model failure while scoring or generating (a runtime error, not a task problem).
#[derive(Debug, Clone, PartialEq, thiserror::Error, Diagnostic)]
#[error("the model failed: {message}")]
#[diagnostic(code(task::model))]
pub struct ModelError {
    pub message: String,
}

/// A model that scores continuations: log P(continuation | context), summed over the
/// continuation's tokens (natural log).
pub trait Scorer {
    fn loglik(&mut self, context: &[u32], continuation: &[u32]) -> Result<f64, ModelError>;

    /// Several requests at once; a compiled model overrides this to fill a batch.
    fn loglik_batch(&mut self, requests: &[(Vec<u32>, Vec<u32>)]) -> Result<Vec<f64>, ModelError> {
        requests
            .iter()
            .map(|(context, continuation)| self.loglik(context, continuation))
            .collect()
    }
}

/// A model that continues a prompt: at most `max_tokens` tokens, stopping at (and leaving out)
/// the first stop string.
pub trait Generator {
    fn generate(
        &mut self,
        prompt: &[u32],
        max_tokens: usize,
        stop: &[String],
    ) -> Result<String, ModelError>;
}

/// A multiple-choice example: the right continuation of `context` is `choices[label]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MultipleChoiceDoc {
    pub context: String,
    pub choices: Vec<String>,
    pub label: usize,
}

/// A text-to-text example: `input` should produce `target`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TextToTextDoc {
    pub input: String,
    pub target: String,
}

/// How a task is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskKind {
    /// Scored with `acc` / `acc_norm` through a [`Scorer`].
    MultipleChoice,
    /// Generated through a [`Generator`], scored with exact match and F1.
    Generation,
}

/// A shipped task: its files and the prompt format it is meant to be run with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskSpec {
    pub name: &'static str,
    pub kind: TaskKind,
    /// Examples to evaluate, relative to `data/tasks/`.
    pub file: &'static str,
    /// Few-shot pool, relative to `data/tasks/`.
    pub train_file: &'static str,
    pub target_delimiter: &'static str,
    pub fewshot_delimiter: &'static str,
    /// Stop strings and token budget for generation tasks.
    pub stop: &'static [&'static str],
    pub max_tokens: usize,
}

impl TaskSpec {
    /// The few-shot settings this task is meant to use, with `num_fewshot` shots.
    pub fn fewshot(&self, num_fewshot: usize, seed: u64) -> FewShotConfig {
        FewShotConfig {
            num_fewshot,
            seed,
            description: String::new(),
            fewshot_delimiter: self.fewshot_delimiter.to_string(),
            target_delimiter: self.target_delimiter.to_string(),
        }
    }

    pub fn stop_strings(&self) -> Vec<String> {
        self.stop.iter().map(|s| s.to_string()).collect()
    }
}

/// The tasks shipped in `data/tasks/` (see `docs/tasks.md`).
pub fn shipped_tasks() -> Vec<TaskSpec> {
    vec![
        TaskSpec {
            name: "shakespeare_nextline",
            kind: TaskKind::MultipleChoice,
            file: "shakespeare_nextline.jsonl",
            train_file: "shakespeare_nextline_train.jsonl",
            // The context ends with a newline: the next line follows directly.
            target_delimiter: "",
            // Speeches are separated by a blank line in the corpus.
            fewshot_delimiter: "\n\n",
            stop: &[],
            max_tokens: 0,
        },
        TaskSpec {
            name: "shakespeare_speaker_mc",
            kind: TaskKind::MultipleChoice,
            file: "shakespeare_speaker_mc.jsonl",
            train_file: "shakespeare_speaker_mc_train.jsonl",
            target_delimiter: " ",
            fewshot_delimiter: "\n\n",
            stop: &[],
            max_tokens: 0,
        },
        TaskSpec {
            name: "shakespeare_speaker",
            kind: TaskKind::Generation,
            file: "shakespeare_speaker.jsonl",
            train_file: "shakespeare_speaker_train.jsonl",
            target_delimiter: " ",
            fewshot_delimiter: "\n\n",
            stop: &["\n"],
            max_tokens: 24,
        },
    ]
}
