//! Builds the shipped Tiny Shakespeare tasks (`data/tasks/`, described in `docs/tasks.md`).
//!
//! Evaluated examples come from the validation split (the last 10% of characters, nanoGPT's
//! split), few-shot pools from the training split, so a model trained on the training split never
//! saw an evaluated line. The corpus is a sequence of speeches, `NAME:` on its own line followed
//! by the lines spoken, separated by blank lines.
//!
//! Everything is a pure function of the corpus text and a seed (ChaCha8 streams, one per file),
//! so re-running the builder reproduces the shipped files byte for byte; a test checks that.

use std::collections::BTreeMap;
use std::path::Path;

use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{MultipleChoiceDoc, TextToTextDoc};
use crate::data::{corpus_text, read_corpus, split_text, DataError};

/// Seed of the shipped files.
pub const TASKS_SEED: u64 = 1234;
/// nanoGPT's validation fraction.
pub const VAL_FRACTION: f64 = 0.1;

/// Sizes and thresholds of the shipped files.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildConfig {
    pub seed: u64,
    pub val_fraction: f64,
    /// Next-line examples: speeches used from the validation split and from the training split
    /// (the pool), and examples per speech (at distinct lines) in each.
    pub nextline_val: usize,
    pub nextline_train: usize,
    pub nextline_per_speech_val: usize,
    pub nextline_per_speech_train: usize,
    /// A speaker qualifies with at least this many speeches in the split.
    pub min_speeches_val: usize,
    pub min_speeches_train: usize,
    /// Examples per qualifying speaker (at most one per speech).
    pub per_speaker_val: usize,
    pub per_speaker_train: usize,
    /// A dialogue line for the speaker task has at least this many words.
    pub min_words: usize,
}

impl Default for BuildConfig {
    fn default() -> Self {
        BuildConfig {
            seed: TASKS_SEED,
            val_fraction: VAL_FRACTION,
            nextline_val: 300,
            nextline_train: 2500,
            nextline_per_speech_val: 3,
            nextline_per_speech_train: 1,
            min_speeches_val: 20,
            min_speeches_train: 30,
            per_speaker_val: 16,
            per_speaker_train: 4,
            min_words: 4,
        }
    }
}

/// One speech: who speaks, and the lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speech {
    pub speaker: String,
    pub lines: Vec<String>,
}

/// The speeches of a stretch of corpus: blocks separated by blank lines whose first line is
/// `NAME:` and which have at least one line after it. Blocks cut by the split (the validation
/// split starts mid-speech) have no header and are skipped.
pub fn parse_speeches(text: &str) -> Vec<Speech> {
    text.split("\n\n")
        .filter_map(|block| {
            let mut lines = block.trim_matches('\n').split('\n');
            let header = lines.next()?;
            let speaker = header.strip_suffix(':')?;
            if speaker.is_empty() || speaker.contains(':') {
                return None;
            }
            let lines: Vec<String> = lines
                .filter(|l| !l.trim().is_empty())
                .map(str::to_string)
                .collect();
            (!lines.is_empty()).then(|| Speech {
                speaker: speaker.to_string(),
                lines,
            })
        })
        .collect()
}

fn rng_for(seed: u64, stream: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    rng
}

/// Next-line multiple choice: the context is `NAME:\n` and 2–4 consecutive lines of a speech
/// (each ending in a newline), the choices are the line that follows and 3 lines drawn from
/// other speeches, in random order. True lines and distractors are drawn alike (a speech of ≥ 3
/// lines, then a line at a uniform index ≥ 2 of it), so a model that ignores the context is at
/// chance; and every distractor has the true line's length in characters, so summed and
/// per-character log-likelihood (`acc` and `acc_norm`) rank the choices alike and neither can
/// win by preferring short or long lines (with lengths left free, "pick the shortest line"
/// scored 0.301 on the validation examples, exactly what a 4-layer character model scored). An
/// example whose line has too rare a length for 3 distractors is left out. `count` speeches are
/// used, with up to `per_speech` examples each (at distinct true lines).
pub fn build_nextline(
    speeches: &[Speech],
    count: usize,
    per_speech: usize,
    rng: &mut ChaCha8Rng,
) -> Vec<MultipleChoiceDoc> {
    let eligible: Vec<usize> = (0..speeches.len())
        .filter(|&i| speeches[i].lines.len() >= 3)
        .collect();
    if eligible.len() < 2 {
        return Vec::new();
    }
    let mut chosen = eligible.clone();
    chosen.shuffle(rng);
    chosen.truncate(count);
    chosen.sort_unstable();
    // Up to `per_speech` true lines of each chosen speech, at distinct indices uniform in
    // [2, n - 1] as a distractor's is; then 2–4 lines before each. (Drawing the window first
    // would favour last lines, which are short.)
    let mut picks = Vec::with_capacity(chosen.len() * per_speech);
    for &si in &chosen {
        let mut at: Vec<usize> = (2..speeches[si].lines.len()).collect();
        at.shuffle(rng);
        at.truncate(per_speech);
        at.sort_unstable();
        picks.extend(at.into_iter().map(|a| (si, a)));
    }
    let mut docs = Vec::with_capacity(picks.len());
    for (si, truth_at) in picks {
        let sp = &speeches[si];
        let k = rng.random_range(2..=4.min(truth_at));
        let start = truth_at - k;
        let mut context = format!("{}:\n", sp.speaker);
        for l in &sp.lines[start..start + k] {
            context.push_str(l);
            context.push('\n');
        }
        let truth = sp.lines[start + k].clone();
        let mut choices = vec![truth.clone()];
        // Every choice has the true line's length in characters.
        let len = truth.chars().count();
        // Bounded retries: a corpus of near-identical lines must not loop forever.
        for _ in 0..5000 {
            if choices.len() == 4 {
                break;
            }
            let other = eligible[rng.random_range(0..eligible.len())];
            if other == si {
                continue;
            }
            let lines = &speeches[other].lines;
            let line = &lines[rng.random_range(2..lines.len())];
            let n = line.chars().count();
            if n == len && !choices.contains(line) {
                choices.push(line.clone());
            }
        }
        if choices.len() < 4 {
            continue;
        }
        choices.shuffle(rng);
        let label = choices.iter().position(|c| *c == truth).unwrap_or(0);
        docs.push(MultipleChoiceDoc {
            context,
            choices,
            label,
        });
    }
    docs
}

/// One dialogue line with its speaker, for the speaker tasks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerLine {
    pub speaker: String,
    pub line: String,
}

/// For each speaker with at least `min_speeches` speeches: up to `per_speaker` lines of at least
/// `min_words` words, from different speeches; returned in corpus order. Also returns the
/// qualifying speakers (sorted), from which multiple-choice distractors are drawn.
pub fn speaker_lines(
    speeches: &[Speech],
    min_speeches: usize,
    per_speaker: usize,
    min_words: usize,
    rng: &mut ChaCha8Rng,
) -> (Vec<SpeakerLine>, Vec<String>) {
    let mut by_speaker: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, sp) in speeches.iter().enumerate() {
        by_speaker.entry(&sp.speaker).or_default().push(i);
    }
    let mut names = Vec::new();
    let mut picked: Vec<(usize, SpeakerLine)> = Vec::new();
    for (name, mut idx) in by_speaker {
        if idx.len() < min_speeches {
            continue;
        }
        names.push(name.to_string());
        idx.shuffle(rng);
        let mut taken = 0;
        for si in idx {
            if taken == per_speaker {
                break;
            }
            let good: Vec<&String> = speeches[si]
                .lines
                .iter()
                .filter(|l| l.split_whitespace().count() >= min_words)
                .collect();
            if good.is_empty() {
                continue;
            }
            let line = good[rng.random_range(0..good.len())].clone();
            picked.push((
                si,
                SpeakerLine {
                    speaker: name.to_string(),
                    line,
                },
            ));
            taken += 1;
        }
    }
    picked.sort_by_key(|(si, _)| *si);
    (picked.into_iter().map(|(_, l)| l).collect(), names)
}

/// The text-to-text input of a speaker example.
pub fn speaker_input(line: &str) -> String {
    format!("speaker: {line}")
}

/// Speaker as text-to-text: `"speaker: <line>"` → the speaker's name as the corpus writes it.
pub fn build_speaker(lines: &[SpeakerLine]) -> Vec<TextToTextDoc> {
    lines
        .iter()
        .map(|l| TextToTextDoc {
            input: speaker_input(&l.line),
            target: l.speaker.clone(),
        })
        .collect()
}

/// Speaker as multiple choice: the same input as context; the true name and 3 other qualifying
/// names, in random order.
pub fn build_speaker_mc(
    lines: &[SpeakerLine],
    names: &[String],
    rng: &mut ChaCha8Rng,
) -> Vec<MultipleChoiceDoc> {
    if names.len() < 4 {
        return Vec::new();
    }
    lines
        .iter()
        .map(|l| {
            let others: Vec<&String> = names.iter().filter(|n| **n != l.speaker).collect();
            let mut choices = vec![l.speaker.clone()];
            choices.extend(
                rand::seq::index::sample(rng, others.len(), 3)
                    .into_iter()
                    .map(|i| others[i].clone()),
            );
            choices.shuffle(rng);
            let label = choices.iter().position(|c| *c == l.speaker).unwrap_or(0);
            MultipleChoiceDoc {
                context: speaker_input(&l.line),
                choices,
                label,
            }
        })
        .collect()
}

/// Every shipped file: `(file name, JSONL contents)`, in a fixed order.
pub fn build_all(corpus: &str, config: &BuildConfig) -> Vec<(&'static str, String)> {
    let (train_text, val_text) = split_text(corpus, config.val_fraction);
    let val = parse_speeches(val_text);
    let train = parse_speeches(train_text);
    let seed = config.seed;

    let nextline = build_nextline(
        &val,
        config.nextline_val,
        config.nextline_per_speech_val,
        &mut rng_for(seed, 1),
    );
    let nextline_train = build_nextline(
        &train,
        config.nextline_train,
        config.nextline_per_speech_train,
        &mut rng_for(seed, 2),
    );

    let (val_lines, val_names) = speaker_lines(
        &val,
        config.min_speeches_val,
        config.per_speaker_val,
        config.min_words,
        &mut rng_for(seed, 3),
    );
    let (train_lines, train_names) = speaker_lines(
        &train,
        config.min_speeches_train,
        config.per_speaker_train,
        config.min_words,
        &mut rng_for(seed, 4),
    );
    let speaker_mc = build_speaker_mc(&val_lines, &val_names, &mut rng_for(seed, 5));
    let speaker_mc_train = build_speaker_mc(&train_lines, &train_names, &mut rng_for(seed, 6));

    vec![
        ("shakespeare_nextline.jsonl", to_jsonl(&nextline)),
        (
            "shakespeare_nextline_train.jsonl",
            to_jsonl(&nextline_train),
        ),
        (
            "shakespeare_speaker.jsonl",
            to_jsonl(&build_speaker(&val_lines)),
        ),
        (
            "shakespeare_speaker_train.jsonl",
            to_jsonl(&build_speaker(&train_lines)),
        ),
        ("shakespeare_speaker_mc.jsonl", to_jsonl(&speaker_mc)),
        (
            "shakespeare_speaker_mc_train.jsonl",
            to_jsonl(&speaker_mc_train),
        ),
    ]
}

/// One JSON object per line, fields in declaration order.
pub fn to_jsonl<T: serde::Serialize>(docs: &[T]) -> String {
    let mut out = String::new();
    for d in docs {
        // Structs of strings and integers always serialize.
        out.push_str(&serde_json::to_string(d).unwrap_or_default());
        out.push('\n');
    }
    out
}

/// Reads the corpus and writes every shipped file into `out_dir`.
pub fn write_all(
    corpus_path: &Path,
    out_dir: &Path,
    config: &BuildConfig,
) -> Result<Vec<String>, DataError> {
    let corpus = corpus_text(corpus_path, read_corpus(corpus_path)?)?;
    let io = |path: &Path, e: std::io::Error| DataError::Io {
        path: path.to_path_buf(),
        reason: e.to_string(),
    };
    std::fs::create_dir_all(out_dir).map_err(|e| io(out_dir, e))?;
    let mut written = Vec::new();
    for (name, text) in build_all(&corpus, config) {
        let path = out_dir.join(name);
        std::fs::write(&path, text).map_err(|e| io(&path, e))?;
        written.push(name.to_string());
    }
    Ok(written)
}
