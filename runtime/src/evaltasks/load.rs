//! Reading JSONL task files, with a diagnostic that points at each bad line.
//!
//! Every line is checked before any is used, so a user fixing a file sees all of its problems at
//! once (the first [`MAX_REPORTED`] of them, and how many there are). Blank lines are skipped;
//! fields other than the ones a task needs are allowed (task files often carry ids or metadata).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use miette::{Diagnostic, NamedSource, SourceSpan};
use serde::de::DeserializeOwned;

use super::{MultipleChoiceDoc, TextToTextDoc};

/// At most this many bad lines are reported in detail.
pub const MAX_REPORTED: usize = 20;

/// Why a task file could not be used.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum TaskError {
    #[error("cannot read task file `{path}`: {reason}")]
    #[diagnostic(code(task::io))]
    Io { path: PathBuf, reason: String },
    #[error("task file `{name}` has {count} bad line(s)")]
    #[diagnostic(
        code(task::bad_lines),
        help("each line must be one JSON object: {expected}")
    )]
    BadLines {
        name: String,
        count: usize,
        expected: &'static str,
        #[related]
        lines: Vec<BadLine>,
    },
    #[error("task file `{name}` has no examples")]
    #[diagnostic(code(task::empty))]
    Empty { name: String },
}

/// One bad line of a task file.
#[derive(Debug, thiserror::Error, Diagnostic)]
pub enum BadLine {
    #[error("line {line}: {message}")]
    #[diagnostic(code(task::json))]
    Json {
        line: usize,
        message: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("here")]
        at: SourceSpan,
    },
    #[error("line {line}: label {label} is out of range for {choices} choices")]
    #[diagnostic(code(task::label), help("labels count from 0"))]
    Label {
        line: usize,
        label: usize,
        choices: usize,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("this example")]
        at: SourceSpan,
    },
    #[error("line {line}: {message}")]
    #[diagnostic(code(task::choices))]
    Choices {
        line: usize,
        message: String,
        #[source_code]
        src: NamedSource<Arc<str>>,
        #[label("this example")]
        at: SourceSpan,
    },
}

/// A check of one parsed example beyond its JSON shape: which rule failed, and why.
enum Invalid {
    Label { label: usize, choices: usize },
    Choices(String),
}

fn read(path: &Path) -> Result<String, TaskError> {
    std::fs::read_to_string(path).map_err(|e| TaskError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Reads a multiple-choice task file.
pub fn load_multiple_choice(path: &Path) -> Result<Vec<MultipleChoiceDoc>, TaskError> {
    parse_multiple_choice(&path.display().to_string(), &read(path)?)
}

/// Reads a text-to-text task file.
pub fn load_text_to_text(path: &Path) -> Result<Vec<TextToTextDoc>, TaskError> {
    parse_text_to_text(&path.display().to_string(), &read(path)?)
}

/// Parses multiple-choice JSONL (`name` labels diagnostics). At least two choices, none empty
/// (an empty continuation has no length to normalise by), and a label inside them.
pub fn parse_multiple_choice(name: &str, text: &str) -> Result<Vec<MultipleChoiceDoc>, TaskError> {
    parse_jsonl(
        name,
        text,
        r#"{"context": str, "choices": [str, ...], "label": int}"#,
        |d: &MultipleChoiceDoc| {
            if d.choices.len() < 2 {
                Some(Invalid::Choices(format!(
                    "{} choice(s); multiple choice needs at least 2",
                    d.choices.len()
                )))
            } else if let Some(i) = d.choices.iter().position(|c| c.is_empty()) {
                Some(Invalid::Choices(format!("choice {i} is empty")))
            } else if d.label >= d.choices.len() {
                Some(Invalid::Label {
                    label: d.label,
                    choices: d.choices.len(),
                })
            } else {
                None
            }
        },
    )
}

/// Parses text-to-text JSONL (`name` labels diagnostics).
pub fn parse_text_to_text(name: &str, text: &str) -> Result<Vec<TextToTextDoc>, TaskError> {
    parse_jsonl(
        name,
        text,
        r#"{"input": str, "target": str}"#,
        |_: &TextToTextDoc| None,
    )
}

fn parse_jsonl<T: DeserializeOwned>(
    name: &str,
    text: &str,
    expected: &'static str,
    check: impl Fn(&T) -> Option<Invalid>,
) -> Result<Vec<T>, TaskError> {
    let source: Arc<str> = text.into();
    let src = || NamedSource::new(name, source.clone());
    let mut docs = Vec::new();
    let mut bad = Vec::new();
    let mut count = 0;
    let mut offset = 0;
    for (i, raw) in text.split_inclusive('\n').enumerate() {
        let start = offset;
        offset += raw.len();
        let line_text = raw.trim_end_matches(['\n', '\r']);
        if line_text.trim().is_empty() {
            continue;
        }
        let line = i + 1;
        let whole: SourceSpan = (start, line_text.len()).into();
        let problem = match serde_json::from_str::<T>(line_text) {
            Err(e) => {
                // serde_json counts columns from 1 within the line; point at that byte.
                let col = e
                    .column()
                    .saturating_sub(1)
                    .min(line_text.len().saturating_sub(1));
                let message = strip_position(&e.to_string());
                Some(BadLine::Json {
                    line,
                    message,
                    src: src(),
                    at: (start + col, 1).into(),
                })
            }
            Ok(doc) => match check(&doc) {
                None => {
                    docs.push(doc);
                    None
                }
                Some(Invalid::Label { label, choices }) => Some(BadLine::Label {
                    line,
                    label,
                    choices,
                    src: src(),
                    at: whole,
                }),
                Some(Invalid::Choices(message)) => Some(BadLine::Choices {
                    line,
                    message,
                    src: src(),
                    at: whole,
                }),
            },
        };
        if let Some(p) = problem {
            count += 1;
            if bad.len() < MAX_REPORTED {
                bad.push(p);
            }
        }
    }
    if count > 0 {
        return Err(TaskError::BadLines {
            name: name.to_string(),
            count,
            expected,
            lines: bad,
        });
    }
    if docs.is_empty() {
        return Err(TaskError::Empty {
            name: name.to_string(),
        });
    }
    Ok(docs)
}

/// serde_json appends " at line 1 column 7"; the diagnostic shows the position itself.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}
