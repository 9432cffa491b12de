//! Mutation fuzzing and property tests: no input may make the parser or the formatter panic or
//! hang, and every mutated input that still parses must satisfy the formatter's promises
//! (idempotent, meaning-preserving).
//!
//! The corpus is every `tests/data/{ok,err}/*.kiln` plus any `specs/*.kiln` and `stdlib/*.kiln` in
//! the repository at test time. Mutations: byte flips, token deletions, token duplications, splices
//! between files, insertions of `([{}])"#=,:.`, stacked one to four deep.
//!
//! `KILN_FUZZ_ITERS` sets the number of mutated inputs (default 5 000, two to four seconds in a
//! debug build); `KILN_FUZZ_SEED` the seed. The long run:
//! `KILN_FUZZ_ITERS=1000000 cargo test --release -p kiln-grammar --test fuzz`.

mod common;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_grammar::{format, parse, SyntaxErrorKind};
use proptest::prelude::*;

/// SplitMix64: tiny, deterministic across platforms and crate versions.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

fn corpus() -> Vec<(String, Vec<u8>)> {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dirs = [
        manifest.join("tests/data/ok"),
        manifest.join("tests/data/err"),
        manifest.join("../specs"),
        manifest.join("../stdlib"),
    ];
    let mut files = Vec::new();
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<_> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "kiln"))
            .collect();
        paths.sort();
        for p in paths {
            if let Ok(bytes) = std::fs::read(&p) {
                files.push((p.display().to_string(), bytes));
            }
        }
    }
    files
}

/// Token boundaries for mutation: runs of word bytes (non-ASCII counts as word, so UTF-8
/// sequences stay whole), runs of whitespace, single punctuation bytes.
fn token_spans(text: &[u8]) -> Vec<(usize, usize)> {
    let class = |b: u8| {
        if b.is_ascii_alphanumeric() || b == b'_' || b >= 0x80 {
            0
        } else if b.is_ascii_whitespace() {
            1
        } else {
            2
        }
    };
    let mut spans = Vec::new();
    let mut i = 0;
    while i < text.len() {
        let c = class(text[i]);
        let mut j = i + 1;
        if c != 2 {
            while j < text.len() && class(text[j]) == c {
                j += 1;
            }
        }
        spans.push((i, j));
        i = j;
    }
    spans
}

const INSERTABLE: &[u8] = b"([{}])\"#=,:.";

fn mutate(rng: &mut Rng, corpus: &[(String, Vec<u8>)], valid: &[usize]) -> Vec<u8> {
    // Mostly start from a file that parses: mutants of those reach deeper.
    let start = if !valid.is_empty() && rng.below(8) != 0 {
        valid[rng.below(valid.len())]
    } else {
        rng.below(corpus.len())
    };
    let mut text = corpus[start].1.clone();
    // Mostly one mutation, so that many inputs still parse and reach the formatter.
    let rounds = match rng.below(20) {
        0..=11 => 1,
        12..=16 => 2,
        _ => 3 + rng.below(2),
    };
    for _ in 0..rounds {
        let spans = token_spans(&text);
        match rng.below(5) {
            0 if !text.is_empty() => {
                let i = rng.below(text.len());
                text[i] = match rng.below(3) {
                    0 => text[i] ^ (1 << rng.below(8)),
                    1 => b' ' + rng.below(95) as u8,
                    _ => INSERTABLE[rng.below(INSERTABLE.len())],
                };
            }
            1 if !spans.is_empty() => {
                let (s, e) = spans[rng.below(spans.len())];
                text.drain(s..e);
            }
            2 if !spans.is_empty() => {
                let (s, e) = spans[rng.below(spans.len())];
                let tok = text[s..e].to_vec();
                let times = 1 + rng.below(3);
                for _ in 0..times {
                    text.splice(e..e, tok.iter().copied());
                }
            }
            3 => {
                let other = &corpus[rng.below(corpus.len())].1;
                let other_spans = token_spans(other);
                let cut_here = spans.get(rng.below(spans.len().max(1))).map_or(0, |s| s.0);
                let cut_there = other_spans
                    .get(rng.below(other_spans.len().max(1)))
                    .map_or(0, |s| s.0);
                text.truncate(cut_here);
                text.extend_from_slice(&other[cut_there..]);
            }
            _ => {
                let at = spans.get(rng.below(spans.len().max(1))).map_or(0, |s| s.0);
                let c = INSERTABLE[rng.below(INSERTABLE.len())];
                text.insert(at, c);
            }
        }
    }
    text
}

/// The properties every input must satisfy. Returns an error message instead of panicking where
/// it can, so the report names the property.
fn check_one(source: &str, render: bool) -> Result<bool, String> {
    match parse(source) {
        Ok(file) => {
            let formatted = format(&file, source);
            let reparsed = parse(&formatted).map_err(|e| {
                format!(
                    "formatted output does not parse: {}\n--- formatted ---\n{formatted}",
                    e[0].message
                )
            })?;
            if !common::same_modulo_spans(&reparsed, &file) {
                return Err(format!(
                    "formatting changed the meaning\n--- formatted ---\n{formatted}"
                ));
            }
            // A source that does not match the tree degrades the layout but must not panic.
            let mut cut = source.len() / 2;
            while !source.is_char_boundary(cut) {
                cut -= 1;
            }
            let _ = format(&file, &source[..cut]);
            let _ = format(&file, "");
            let twice = format(&reparsed, &formatted);
            if twice != formatted {
                return Err(format!(
                    "formatting is not idempotent\n--- once ---\n{formatted}\n--- twice ---\n{twice}"
                ));
            }
            Ok(true)
        }
        Err(errors) => {
            if errors.is_empty() {
                return Err("a failed parse reported no error".into());
            }
            for e in &errors {
                if e.kind == SyntaxErrorKind::Internal {
                    return Err(format!("internal error: {}", e.message));
                }
                for span in std::iter::once(e.span).chain(e.labels.iter().map(|l| l.0)) {
                    let ok = span.start <= span.end
                        && span.end <= source.len()
                        && source.is_char_boundary(span.start)
                        && source.is_char_boundary(span.end);
                    if !ok {
                        return Err(format!(
                            "span {span:?} out of the source for `{}`",
                            e.message
                        ));
                    }
                }
            }
            if render {
                let _ = common::render(&errors, "fuzz.kiln", source);
            }
            Ok(false)
        }
    }
}

#[test]
fn mutated_inputs_never_panic_or_hang() {
    let iters: usize = std::env::var("KILN_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5_000);
    let seed: u64 = std::env::var("KILN_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x6B69_6C6E);
    let corpus = corpus();
    assert!(
        corpus.len() >= 10,
        "the fuzz corpus should hold the test data files"
    );
    let corpus_len = corpus.len();
    let valid: Vec<usize> = (0..corpus.len())
        .filter(|&i| std::str::from_utf8(&corpus[i].1).is_ok_and(|s| parse(s).is_ok()))
        .collect();

    let progress = Arc::new(AtomicUsize::new(0));
    let current = Arc::new(Mutex::new(Vec::<u8>::new()));
    let (done_tx, done_rx) = mpsc::channel();
    let (progress_w, current_w) = (progress.clone(), current.clone());
    // The default 2 MiB thread stack, like a test thread: the parser must fit in it.
    let worker = std::thread::Builder::new()
        .name("fuzz".into())
        .stack_size(2 << 20)
        .spawn(move || {
            let started = Instant::now();
            let mut parsed = 0usize;
            let mut slowest = Duration::ZERO;
            let mut slowest_input = String::new();
            let mut failure = None;
            for i in 0..iters {
                // One generator per iteration, so a failure is reproduced by its iteration alone.
                let mut rng = Rng(seed ^ (i as u64).wrapping_mul(0xD6E8_FEB8_6659_FD93));
                let bytes = mutate(&mut rng, &corpus, &valid);
                *current_w.lock().unwrap() = bytes.clone();
                let source = String::from_utf8_lossy(&bytes).into_owned();
                let one = Instant::now();
                let outcome = catch_unwind(AssertUnwindSafe(|| check_one(&source, i % 16 == 0)));
                if one.elapsed() > slowest {
                    slowest = one.elapsed();
                    slowest_input.clone_from(&source);
                }
                match outcome {
                    Ok(Ok(true)) => parsed += 1,
                    Ok(Ok(false)) => {}
                    Ok(Err(msg)) => failure = Some((i, msg, source)),
                    Err(_) => failure = Some((i, "panicked".to_string(), source)),
                }
                if failure.is_some() {
                    break;
                }
                progress_w.store(i + 1, Ordering::Relaxed);
            }
            let slowest_path = std::env::temp_dir().join(format!("kiln-fuzz-{seed}-slowest.kiln"));
            let _ = std::fs::write(&slowest_path, &slowest_input);
            let _ = done_tx.send((parsed, started.elapsed(), slowest, failure));
        })
        .expect("spawn the fuzz thread");

    let mut last_seen = (0usize, Instant::now());
    let (parsed, elapsed, slowest, failure) = loop {
        match done_rx.recv_timeout(Duration::from_millis(500)) {
            Ok(result) => break result,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let now = progress.load(Ordering::Relaxed);
                if now != last_seen.0 {
                    last_seen = (now, Instant::now());
                } else if last_seen.1.elapsed() > Duration::from_secs(20) {
                    let input = String::from_utf8_lossy(&current.lock().unwrap()).into_owned();
                    panic!(
                        "no progress for 20 s at iteration {now} (KILN_FUZZ_SEED={seed}): a hang on\n{input}"
                    );
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                let input = String::from_utf8_lossy(&current.lock().unwrap()).into_owned();
                panic!(
                    "the fuzz thread died (stack overflow?) on (KILN_FUZZ_SEED={seed}):\n{input}"
                );
            }
        }
    };
    let _ = worker.join();
    if let Some((i, msg, source)) = failure {
        let dump = std::env::temp_dir().join(format!("kiln-fuzz-{seed}-{i}.kiln"));
        let _ = std::fs::write(&dump, &source);
        panic!(
            "fuzz failure at iteration {i} (KILN_FUZZ_SEED={seed}; input saved to {}): {msg}\n--- input ---\n{source}",
            dump.display()
        );
    }
    eprintln!(
        "fuzz: {iters} inputs ({parsed} parsed) from {corpus_len} files in {elapsed:.2?} \
         (slowest input {slowest:.2?}), seed {seed}"
    );
    // The property must be exercised: some mutated inputs have to parse.
    assert!(
        iters < 100 || parsed > iters / 50,
        "only {parsed} of {iters} mutated inputs parsed"
    );
}

/// Kiln tokens for the token-soup property: random sequences of real tokens reach much deeper
/// into the grammar than random characters.
const TOKENS: &[&str] = &[
    "fn",
    "block",
    "model",
    "objective",
    "config",
    "plan",
    "for",
    "input",
    "param",
    "return",
    "repeat",
    "in",
    "as",
    "if",
    "then",
    "else",
    "assert",
    "data",
    "and",
    "or",
    "not",
    "true",
    "false",
    "none",
    "x",
    "y",
    "d",
    "f",
    "g",
    "layers",
    "0",
    "1",
    "2.5",
    "1e-5",
    "50_257",
    "\"s\"",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    ";",
    ".",
    "...",
    "=",
    "==",
    "!=",
    "<",
    "<=",
    "+",
    "-",
    "*",
    "/",
    "//",
    "%",
    "@",
    "**",
    "# c\n",
    "\n",
];

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: Some(Box::new(
            proptest::test_runner::FileFailurePersistence::WithSource("proptest-regressions"),
        )),
        ..ProptestConfig::default()
    })]

    #[test]
    fn arbitrary_strings_never_panic(s in "\\PC*") {
        check_one(&s, false).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let s = String::from_utf8_lossy(&bytes);
        check_one(&s, false).map_err(TestCaseError::fail)?;
    }

    #[test]
    fn token_soup_never_panics(toks in proptest::collection::vec(proptest::sample::select(TOKENS), 0..80)) {
        let s = toks.join(" ");
        check_one(&s, true).map_err(TestCaseError::fail)?;
    }

    /// Soup wrapped in a body: many more of these parse, exercising the formatter.
    #[test]
    fn statement_soup_never_panics(toks in proptest::collection::vec(proptest::sample::select(TOKENS), 0..40)) {
        let s = format!("block b(x) {{\n    y = {}\n}}\n", toks.join(" "));
        check_one(&s, false).map_err(TestCaseError::fail)?;
    }
}
