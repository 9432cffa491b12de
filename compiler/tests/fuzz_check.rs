//! A mutation fuzzer for the front end: real inputs (`specs/`, `stdlib/`, `snapshots/check/`, the
//! examples of `docs/language.md`) are mutated — byte flips, token deletions and duplications,
//! splices between files, numbers made huge, zero or negative, identifier swaps — and each variant
//! goes through parse, `kiln fmt`'s formatter, `Workspace::check` and, when it checks clean, the
//! instantiation and parameter count of every config (what `kiln params` does).
//!
//! The invariant under test is the architecture's "no user input can make any stage panic or
//! hang": every case runs under `catch_unwind` on a worker thread with the default 2 MiB stack,
//! and a case that panics, needs more than `case_limit()` (5 s) of CPU time, or reports nothing
//! for `hang_limit()` (60 s, wall clock) fails the test, printing the seed,
//! the case number and the (greedily minimised) input.
//!
//! `KILN_FUZZ_ITERS` sets the number of cases (default `DEFAULT_ITERS`, sized for the debug test
//! profile); `KILN_FUZZ_SEED` the base seed; `KILN_FUZZ_MAX_FAILURES` how many failures to collect
//! before stopping (a hang stops at once: its thread cannot be cancelled); `KILN_FUZZ_MAX_SECS` a
//! time budget after which the run stops early and reports how many cases it ran. Cases are a pure
//! function of (seed, case number), so any failure replays, printing its input, with
//! `KILN_FUZZ_SEED=S KILN_FUZZ_FROM=N KILN_FUZZ_ITERS=1`. The long run:
//! `CARGO_PROFILE_RELEASE_OVERFLOW_CHECKS=true CARGO_PROFILE_RELEASE_DEBUG_ASSERTIONS=true
//! KILN_FUZZ_ITERS=1000000 cargo test --release -p kiln-compiler --test fuzz_check -- --nocapture`
//! (overflow checks on, so that release finds the arithmetic panics a debug build would).

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Mutex, Once};
use std::time::{Duration, Instant};

use kiln_compiler::sema::{param_counts, Request, Workspace};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A case that needs more CPU time than this is a failure: the checker must reject hostile input
/// quickly (`KILN_FUZZ_CASE_LIMIT_S` changes it, e.g. to measure the slowest inputs).
fn case_limit() -> Duration {
    Duration::from_secs(env_u64("KILN_FUZZ_CASE_LIMIT_S", 5))
}

/// A case that reports nothing for this long (wall clock) hangs. Generous, because the machines
/// this runs on are shared: CPU time decides "slow", this only catches cases that never end.
fn hang_limit() -> Duration {
    Duration::from_secs(env_u64("KILN_FUZZ_HANG_S", 60)).max(case_limit())
}

/// CPU time of the calling thread, where the OS reports it (Linux: `/proc/thread-self/schedstat`,
/// in nanoseconds). On a loaded machine wall time says little about the checker's own cost.
fn thread_cpu_time() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace()
        .next()?
        .parse()
        .ok()
        .map(Duration::from_nanos)
}

/// Runs `f`, returning its result and its cost: thread CPU time if known, else wall time.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let (c0, t0) = (thread_cpu_time(), Instant::now());
    let r = f();
    let cost = match (c0, thread_cpu_time()) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => t0.elapsed(),
    };
    (r, cost)
}
const DEFAULT_ITERS: u64 = 400;
const DEFAULT_SEED: u64 = 0x6b69_6c6e_f022;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// One seed input: where it came from, its text, and whether it is a stdlib module.
#[derive(Clone, Debug)]
struct Seed {
    name: String,
    text: String,
}

fn kiln_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            kiln_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "kiln") {
            out.push(p);
        }
    }
}

fn corpus() -> Vec<Seed> {
    let root = root();
    let mut paths = Vec::new();
    for dir in ["specs", "stdlib", "snapshots/check"] {
        kiln_files(&root.join(dir), &mut paths);
    }
    paths.sort();
    let mut seeds: Vec<Seed> = paths
        .iter()
        .map(|p| Seed {
            name: p.strip_prefix(&root).unwrap_or(p).display().to_string(),
            text: std::fs::read_to_string(p).expect("corpus file"),
        })
        .collect();
    // The ```kiln blocks of the language reference.
    if let Ok(doc) = std::fs::read_to_string(root.join("docs/language.md")) {
        let mut block: Option<(usize, String)> = None;
        for (i, line) in doc.lines().enumerate() {
            match &mut block {
                None if line.starts_with("```kiln") => block = Some((i + 1, String::new())),
                Some((start, text)) if line.starts_with("```") => {
                    seeds.push(Seed {
                        name: format!("docs/language.md:{start}"),
                        text: std::mem::take(text),
                    });
                    block = None;
                }
                Some((_, text)) => {
                    text.push_str(line);
                    text.push('\n');
                }
                None => {}
            }
        }
    }
    assert!(seeds.len() >= 50, "corpus too small: {} files", seeds.len());
    seeds
}

// ----- tokens ---------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Word,
    Number,
    Str,
    Punct,
    Space,
    Comment,
}

#[derive(Clone, Copy, Debug)]
struct Tok {
    kind: Kind,
    start: usize,
    end: usize,
}

/// A forgiving lexer: every byte of the text belongs to exactly one token.
fn tokenize(s: &str) -> Vec<Tok> {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        let (kind, mut j) = if c.is_ascii_whitespace() {
            (Kind::Space, i + 1)
        } else if c == b'#' {
            (Kind::Comment, i + 1)
        } else if c == b'"' {
            (Kind::Str, i + 1)
        } else if c.is_ascii_digit() {
            (Kind::Number, i + 1)
        } else if c.is_ascii_alphabetic() || c == b'_' {
            (Kind::Word, i + 1)
        } else {
            (Kind::Punct, i + 1)
        };
        match kind {
            Kind::Space => {
                while j < b.len() && b[j].is_ascii_whitespace() {
                    j += 1;
                }
            }
            Kind::Comment => {
                while j < b.len() && b[j] != b'\n' {
                    j += 1;
                }
            }
            Kind::Str => {
                while j < b.len() && b[j] != b'"' && b[j] != b'\n' {
                    j += if b[j] == b'\\' { 2 } else { 1 };
                }
                j = (j + 1).min(b.len());
            }
            Kind::Number => {
                while j < b.len()
                    && (b[j].is_ascii_alphanumeric()
                        || b[j] == b'_'
                        || b[j] == b'.' && b.get(j + 1).is_some_and(u8::is_ascii_digit)
                        || (b[j] == b'-' || b[j] == b'+') && matches!(b[j - 1], b'e' | b'E'))
                {
                    j += 1;
                }
            }
            Kind::Word => {
                while j < b.len() && (b[j].is_ascii_alphanumeric() || b[j] == b'_') {
                    j += 1;
                }
            }
            Kind::Punct => {
                // Multi-byte characters stay whole.
                while j < b.len() && !s.is_char_boundary(j) {
                    j += 1;
                }
            }
        }
        out.push(Tok {
            kind,
            start: i,
            end: j.min(b.len()),
        });
        i = j.min(b.len());
    }
    out
}

// ----- mutations --------------------------------------------------------------------------------

const NUMBERS: &[&str] = &[
    "0",
    "1",
    "-1",
    "2",
    "3",
    "7",
    "64",
    "65536",
    "2147483648",
    "4294967296",
    "99999999",
    "1000000007",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775807 - 1",
    "(-9223372036854775807 - 1)",
    "99999999999999999999",
    "0.0",
    "-0.0",
    "1e308",
    "1e-308",
    "1e999",
    "-1e308",
    "0.5",
    "1e-5",
    "123456789.0",
    "1_000_000_000",
    "-0",
    "00",
    "1e",
    "2.",
    ".5",
    "0x10",
];

const PUNCT: &[&str] = &[
    "(", ")", "[", "]", "{", "}", ",", ":", ";", ".", "...", "=", "==", "!=", "<", "<=", ">", ">=",
    "+", "-", "*", "**", "/", "//", "%", "@", "\"", "#", "\n", " ", "\\", "$", "é", "\u{0}",
];

/// A token-ish string from anywhere in the corpus (for splices and swaps).
fn random_word<'a>(rng: &mut ChaCha8Rng, words: &'a [String]) -> &'a str {
    &words[rng.random_range(0..words.len())]
}

fn pick_tok(rng: &mut ChaCha8Rng, toks: &[Tok], kind: Option<Kind>) -> Option<Tok> {
    let cands: Vec<&Tok> = toks
        .iter()
        .filter(|t| kind.map_or(t.kind != Kind::Space, |k| t.kind == k))
        .collect();
    if cands.is_empty() {
        None
    } else {
        Some(*cands[rng.random_range(0..cands.len())])
    }
}

fn replace(s: &str, start: usize, end: usize, with: &str) -> String {
    format!("{}{}{}", &s[..start], with, &s[end..])
}

/// The kinds of mutation, with weights: grammar-preserving ones (numbers, names, whole lines,
/// operators) dominate so that most mutants reach the checker; byte- and token-level ones keep the
/// parser's error paths covered.
#[derive(Clone, Copy, Debug)]
enum Mutation {
    ByteFlip,
    DeleteTokens,
    DuplicateTokens,
    SpliceTokens,
    Number,
    SwapName,
    DeleteLine,
    DuplicateLine,
    SpliceLine,
    SwapOperator,
    Punctuation,
}

const MUTATIONS: &[(Mutation, u32)] = &[
    (Mutation::ByteFlip, 2),
    (Mutation::DeleteTokens, 2),
    (Mutation::DuplicateTokens, 2),
    (Mutation::SpliceTokens, 2),
    (Mutation::Number, 6),
    (Mutation::SwapName, 6),
    (Mutation::DeleteLine, 3),
    (Mutation::DuplicateLine, 3),
    (Mutation::SpliceLine, 3),
    (Mutation::SwapOperator, 2),
    (Mutation::Punctuation, 1),
];

const OPERATORS: &[&str] = &[
    "+", "-", "*", "/", "//", "%", "**", "@", "==", "!=", "<", ">=", "and", "or",
];

fn pick_mutation(rng: &mut ChaCha8Rng) -> Mutation {
    let total: u32 = MUTATIONS.iter().map(|(_, w)| w).sum();
    let mut r = rng.random_range(0..total);
    for (m, w) in MUTATIONS {
        if r < *w {
            return *m;
        }
        r -= w;
    }
    Mutation::Number
}

/// A random whole line of a random corpus file.
fn random_line<'a>(rng: &mut ChaCha8Rng, corpus: &'a [Seed]) -> &'a str {
    let text = &corpus[rng.random_range(0..corpus.len())].text;
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    if lines.is_empty() {
        return "";
    }
    lines[rng.random_range(0..lines.len())]
}

/// One random mutation of `s`.
fn mutate(rng: &mut ChaCha8Rng, s: &str, corpus: &[Seed], words: &[String]) -> String {
    let toks = tokenize(s);
    if toks.is_empty() {
        return random_word(rng, words).to_string();
    }
    let lines: Vec<&str> = s.split_inclusive('\n').collect();
    match pick_mutation(rng) {
        // A random byte, or a byte that means something to the grammar.
        Mutation::ByteFlip => {
            let mut bytes = s.as_bytes().to_vec();
            let i = rng.random_range(0..bytes.len());
            const MEANINGFUL: &[u8] = b"()[]{},:;.=+-*/%@<>\"#\n 0123456789_aAzZ\\!";
            bytes[i] = if rng.random_bool(0.5) {
                rng.random()
            } else {
                MEANINGFUL[rng.random_range(0..MEANINGFUL.len())]
            };
            String::from_utf8_lossy(&bytes).into_owned()
        }
        Mutation::DeleteTokens => {
            let i = rng.random_range(0..toks.len());
            let j = (i + rng.random_range(1..=4)).min(toks.len());
            replace(s, toks[i].start, toks[j - 1].end, "")
        }
        // Sometimes many times over: deep nesting, long chains.
        Mutation::DuplicateTokens => {
            let i = rng.random_range(0..toks.len());
            let j = (i + rng.random_range(1..=8)).min(toks.len());
            let run = &s[toks[i].start..toks[j - 1].end];
            let times = if rng.random_bool(0.1) {
                rng.random_range(2..200)
            } else {
                1
            };
            replace(s, toks[i].start, toks[i].start, &run.repeat(times))
        }
        // A run of tokens from another file, inserted or replacing a run here.
        Mutation::SpliceTokens => {
            let other = &corpus[rng.random_range(0..corpus.len())].text;
            let ot = tokenize(other);
            if ot.is_empty() {
                return s.to_string();
            }
            let a = rng.random_range(0..ot.len());
            let b = (a + rng.random_range(1..=40)).min(ot.len());
            let piece = &other[ot[a].start..ot[b - 1].end];
            let i = rng.random_range(0..toks.len());
            let j = if rng.random_bool(0.5) {
                i
            } else {
                (i + rng.random_range(1..=10)).min(toks.len())
            };
            let end = if j == i {
                toks[i].start
            } else {
                toks[j - 1].end
            };
            replace(s, toks[i].start, end, piece)
        }
        // Huge, zero, negative, malformed, or scaled.
        Mutation::Number => {
            let Some(t) = pick_tok(rng, &toks, Some(Kind::Number)) else {
                return s.to_string();
            };
            let orig = &s[t.start..t.end];
            let new = match rng.random_range(0..5) {
                0 => format!("{orig}{orig}"),
                1 => format!("-{orig}"),
                2 => format!("{orig}000000"),
                3 => rng.random_range(0..20).to_string(),
                _ => NUMBERS[rng.random_range(0..NUMBERS.len())].to_string(),
            };
            replace(s, t.start, t.end, &new)
        }
        // Any word of the corpus (names, keywords, builtins), or two names of this file swapped.
        Mutation::SwapName => {
            let Some(t) = pick_tok(rng, &toks, Some(Kind::Word)) else {
                return s.to_string();
            };
            if rng.random_bool(0.3) {
                if let Some(u) = pick_tok(rng, &toks, Some(Kind::Word)) {
                    let (a, b) = if t.start < u.start { (t, u) } else { (u, t) };
                    if a.start != b.start {
                        let (wa, wb) = (&s[a.start..a.end], &s[b.start..b.end]);
                        return format!(
                            "{}{}{}{}{}",
                            &s[..a.start],
                            wb,
                            &s[a.end..b.start],
                            wa,
                            &s[b.end..]
                        );
                    }
                }
            }
            replace(s, t.start, t.end, random_word(rng, words))
        }
        Mutation::DeleteLine => {
            let i = rng.random_range(0..lines.len());
            lines
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, l)| *l)
                .collect()
        }
        Mutation::DuplicateLine => {
            let i = rng.random_range(0..lines.len());
            let times = if rng.random_bool(0.1) {
                rng.random_range(2..50)
            } else {
                2
            };
            lines
                .iter()
                .enumerate()
                .map(|(j, l)| {
                    if j == i {
                        l.repeat(times)
                    } else {
                        l.to_string()
                    }
                })
                .collect()
        }
        // A line of another file, inserted or replacing one here.
        Mutation::SpliceLine => {
            let i = rng.random_range(0..lines.len());
            let line = random_line(rng, corpus);
            let keep = rng.random_bool(0.5);
            lines
                .iter()
                .enumerate()
                .map(|(j, l)| {
                    if j == i {
                        if keep {
                            format!("{line}{l}")
                        } else {
                            line.to_string()
                        }
                    } else {
                        l.to_string()
                    }
                })
                .collect()
        }
        Mutation::SwapOperator => {
            let ops: Vec<&Tok> = toks
                .iter()
                .filter(|t| {
                    OPERATORS.contains(&&s[t.start..t.end])
                        || t.kind == Kind::Punct
                            && OPERATORS.iter().any(|o| o.starts_with(&s[t.start..t.end]))
                })
                .collect();
            if ops.is_empty() {
                return s.to_string();
            }
            let t = ops[rng.random_range(0..ops.len())];
            replace(
                s,
                t.start,
                t.end,
                &format!(" {} ", OPERATORS[rng.random_range(0..OPERATORS.len())]),
            )
        }
        Mutation::Punctuation => {
            let i = rng.random_range(0..toks.len());
            let p = PUNCT[rng.random_range(0..PUNCT.len())];
            if rng.random_bool(0.5) {
                replace(s, toks[i].start, toks[i].start, p)
            } else {
                replace(s, toks[i].start, toks[i].end, p)
            }
        }
    }
}

/// Every word and number of the corpus, deduplicated (the vocabulary of identifier swaps).
fn vocabulary(corpus: &[Seed]) -> Vec<String> {
    let mut words = std::collections::BTreeSet::new();
    for s in corpus {
        for t in tokenize(&s.text) {
            if matches!(t.kind, Kind::Word) {
                words.insert(s.text[t.start..t.end].to_string());
            }
        }
    }
    words.into_iter().collect()
}

/// Case `n`: which seed file, and its mutated text. Depends only on (seed, n).
struct Case {
    seed_index: usize,
    text: String,
    /// For a mutated stdlib module: the spec (corpus index) it is checked through.
    spec_index: Option<usize>,
}

fn make_case(base_seed: u64, n: u64, corpus: &[Seed], words: &[String]) -> Case {
    let mut rng = ChaCha8Rng::seed_from_u64(base_seed ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let seed_index = rng.random_range(0..corpus.len());
    let mut text = corpus[seed_index].text.clone();
    let rounds = match rng.random_range(0..20) {
        0..11 => 1,
        11..16 => 2,
        _ => rng.random_range(3..=6),
    };
    for _ in 0..rounds {
        text = mutate(&mut rng, &text, corpus, words);
    }
    let specs: Vec<usize> = (0..corpus.len())
        .filter(|&i| corpus[i].name.starts_with("specs/"))
        .collect();
    let spec_index = (corpus[seed_index].name.starts_with("stdlib/") && !specs.is_empty())
        .then(|| specs[rng.random_range(0..specs.len())]);
    Case {
        seed_index,
        text,
        spec_index,
    }
}

// ----- running one case -----------------------------------------------------------------------

/// The front end on one input, as the CLI runs it: parse and format, check, and (when the file
/// checks clean) instantiate and count every config. A stdlib file is installed as the stdlib
/// module it replaces and checked through the given specs that use it.
fn run_front_end(name: &str, text: &str, specs: &[&Seed]) -> Outcome {
    let parsed = match kiln_grammar::parse(text) {
        Ok(file) => {
            let _ = kiln_grammar::format(&file, text);
            true
        }
        Err(_) => false,
    };
    let mut ws = Workspace::new();
    let mut ids = vec![ws.add_file(name, text)];
    if name.starts_with("stdlib/") {
        for s in specs {
            ids.push(ws.add_file(&s.name, &s.text));
        }
    }
    let diags = ws.check(&ids);
    if !parsed {
        return Outcome::SyntaxError;
    }
    if diags.iter().any(|d| d.is_error()) {
        return Outcome::CheckError;
    }
    for id in ids {
        for c in ws.configs_of(id) {
            if let Ok(inst) = ws.instantiate(&Request {
                config: c,
                ..Default::default()
            }) {
                let _ = param_counts(&inst.graph);
            }
        }
    }
    Outcome::Clean
}

/// How far a case got: the fuzzer is only useful if many mutants get past the parser.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Outcome {
    SyntaxError,
    CheckError,
    Clean,
}

static LAST_PANIC: Mutex<Option<String>> = Mutex::new(None);

thread_local! {
    /// Set while a fuzz case runs: its panics are recorded, not printed.
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
}

/// A panic hook that records panics of fuzz cases and leaves every other panic (a failing
/// assertion of the test itself) to the default hook.
fn install_quiet_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if IN_CASE.with(Cell::get) {
                if let Ok(mut slot) = LAST_PANIC.lock() {
                    *slot = Some(info.to_string());
                }
            } else {
                default(info);
            }
        }));
    });
}

/// The front end's outcome on this input, or `Err(message)` when it panics.
fn run_case(name: &str, text: &str, specs: &[&Seed]) -> Result<Outcome, String> {
    IN_CASE.with(|c| c.set(true));
    let r = catch_unwind(AssertUnwindSafe(|| run_front_end(name, text, specs)));
    IN_CASE.with(|c| c.set(false));
    r.map_err(|_| {
        LAST_PANIC
            .lock()
            .ok()
            .and_then(|mut s| s.take())
            .unwrap_or_else(|| "panic".into())
    })
}

/// `Some(message)` when the front end panics on this input.
fn panics(name: &str, text: &str, specs: &[&Seed]) -> Option<String> {
    run_case(name, text, specs).err()
}

/// Greedy minimisation of a panicking input: drop lines, then tokens, while it still panics.
fn minimise(name: &str, text: &str, specs: &[&Seed]) -> String {
    let start = Instant::now();
    let budget = Duration::from_secs(60);
    let mut cur = text.to_string();
    let mut changed = true;
    while changed && start.elapsed() < budget {
        changed = false;
        let lines: Vec<&str> = cur.split_inclusive('\n').collect();
        for i in 0..lines.len() {
            let cand: String = lines
                .iter()
                .enumerate()
                .filter(|(j, _)| *j != i)
                .map(|(_, l)| *l)
                .collect();
            if panics(name, &cand, specs).is_some() {
                cur = cand;
                changed = true;
                break;
            }
        }
        if changed {
            continue;
        }
        let toks = tokenize(&cur);
        for t in toks.iter().filter(|t| t.kind != Kind::Space) {
            let cand = replace(&cur, t.start, t.end, "");
            if panics(name, &cand, specs).is_some() {
                cur = cand;
                changed = true;
                break;
            }
            if start.elapsed() > budget {
                break;
            }
        }
    }
    cur
}

/// What the worker reports after each case.
struct Report {
    n: u64,
    /// CPU time of the case (wall time where the OS does not report it).
    elapsed: Duration,
    result: Result<Outcome, String>,
}

#[test]
fn mutated_inputs_never_panic_or_hang() {
    let iters = env_u64("KILN_FUZZ_ITERS", DEFAULT_ITERS);
    let base_seed = env_u64("KILN_FUZZ_SEED", DEFAULT_SEED);
    let from = env_u64("KILN_FUZZ_FROM", 0);
    let max_failures = env_u64("KILN_FUZZ_MAX_FAILURES", 5);
    // A time budget for long runs: stop (and report the count) after this many seconds.
    let max_secs = env_u64("KILN_FUZZ_MAX_SECS", u64::MAX);
    let corpus = corpus();
    let words = vocabulary(&corpus);
    install_quiet_hook();

    let (tx, rx) = mpsc::channel();
    let (wc, ww) = (corpus.clone(), words.clone());
    // The default spawned-thread stack (2 MiB), as the test harness and `kiln` give the checker.
    let worker = std::thread::spawn(move || {
        for n in from..from + iters {
            let case = make_case(base_seed, n, &wc, &ww);
            let name = &wc[case.seed_index].name;
            let name = if name.starts_with("stdlib/") {
                name.clone()
            } else {
                format!("fuzz/{}", name.replace('/', "_"))
            };
            let specs: Vec<&Seed> = case.spec_index.iter().map(|&i| &wc[i]).collect();
            let (result, elapsed) = timed(|| run_case(&name, &case.text, &specs));
            if tx.send(Report { n, elapsed, result }).is_err() {
                return;
            }
        }
    });

    if iters == 1 {
        // Replaying one case: show it.
        let c = make_case(base_seed, from, &corpus, &words);
        eprintln!(
            "case {from}, from {}:\n{}",
            corpus[c.seed_index].name, c.text
        );
    }
    let started = Instant::now();
    let mut slowest = (Duration::ZERO, 0u64);
    let mut failures = Vec::new();
    let mut outcomes = [0u64; 3];
    let mut reported = 0;
    let mut next = from;
    while next < from + iters {
        match rx.recv_timeout(hang_limit()) {
            Ok(Report { n, elapsed, result }) => {
                next = n + 1;
                let panic = match result {
                    Ok(outcome) => {
                        outcomes[outcome as usize] += 1;
                        None
                    }
                    Err(msg) => Some(msg),
                };
                if elapsed > slowest.0 {
                    slowest = (elapsed, n);
                }
                let case = || make_case(base_seed, n, &corpus, &words);
                if let Some(msg) = panic {
                    let c = case();
                    let name = &corpus[c.seed_index].name;
                    let specs: Vec<&Seed> = c.spec_index.iter().map(|&i| &corpus[i]).collect();
                    let small = minimise(
                        if name.starts_with("stdlib/") {
                            name
                        } else {
                            "fuzz.kiln"
                        },
                        &c.text,
                        &specs,
                    );
                    failures.push(format!(
                        "case {n} (KILN_FUZZ_SEED={base_seed} KILN_FUZZ_FROM={n} KILN_FUZZ_ITERS=1), from {name}, panics: {msg}\n--- minimised input:\n{small}\n--- full input:\n{}",
                        c.text
                    ));
                } else if elapsed > case_limit() {
                    let c = case();
                    failures.push(format!(
                        "case {n} (KILN_FUZZ_SEED={base_seed} KILN_FUZZ_FROM={n} KILN_FUZZ_ITERS=1), from {}, took {elapsed:?}:\n{}",
                        corpus[c.seed_index].name, c.text
                    ));
                }
                if let Some(f) = failures.last().filter(|_| failures.len() > reported) {
                    eprintln!("fuzz: FAILURE\n{f}\n");
                    reported = failures.len();
                }
                if failures.len() as u64 >= max_failures || started.elapsed().as_secs() >= max_secs
                {
                    break;
                }
                if n > from && (n - from) % 10_000 == 0 {
                    eprintln!(
                        "fuzz: {} cases in {:.1?}, slowest {:?} (case {})",
                        n - from,
                        started.elapsed(),
                        slowest.0,
                        slowest.1
                    );
                }
            }
            Err(_) => {
                let c = make_case(base_seed, next, &corpus, &words);
                panic!(
                    "case {next} (KILN_FUZZ_SEED={base_seed} KILN_FUZZ_FROM={next} KILN_FUZZ_ITERS=1), from {}, hangs (no result after {:?}):\n{}",
                    corpus[c.seed_index].name,
                    hang_limit(),
                    c.text
                );
            }
        }
    }
    drop(rx);
    eprintln!(
        "fuzz: {} cases from {from} (seed {base_seed}) in {:.1?}; slowest case {} took {:?} of CPU; \
         syntax errors {}, check errors {}, clean {}",
        next - from,
        started.elapsed(),
        slowest.1,
        slowest.0,
        outcomes[0],
        outcomes[1],
        outcomes[2]
    );
    // Mutants must reach the checker, or the fuzzer only tests the parser.
    if iters >= 200 && failures.is_empty() {
        assert!(
            outcomes[1] + outcomes[2] >= (next - from) / 4,
            "too few mutants get past the parser: {outcomes:?}"
        );
        assert!(outcomes[2] > 0, "no mutant checks clean: {outcomes:?}");
    }
    assert!(
        failures.is_empty(),
        "{} failing case(s):\n\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    worker.join().expect("fuzz worker");
}

#[test]
fn mutations_change_inputs_and_keep_them_deterministic() {
    let corpus = corpus();
    let words = vocabulary(&corpus);
    let mut changed = 0;
    for n in 0..200 {
        let a = make_case(7, n, &corpus, &words);
        let b = make_case(7, n, &corpus, &words);
        assert_eq!(a.text, b.text, "case {n} is not deterministic");
        if a.text != corpus[a.seed_index].text {
            changed += 1;
        }
    }
    assert!(
        changed > 150,
        "only {changed} of 200 mutants differ from their seed"
    );
}

#[test]
fn the_harness_catches_a_panic() {
    install_quiet_hook();
    // A panic inside a case is reported, not propagated: the fuzzer can see failures.
    IN_CASE.with(|c| c.set(true));
    let r = catch_unwind(AssertUnwindSafe(|| panic!("boom")));
    IN_CASE.with(|c| c.set(false));
    assert!(r.is_err());
    assert!(panics(
        "fuzz.kiln",
        "model m(d = 4) {\n input x: f32[batch, d]\n return x\n}\n",
        &[]
    )
    .is_none());
}

/// Inputs that once made the front end panic or hang (minimised), kept as regressions.
const REGRESSIONS: &[(&str, &str)] = &[
    ("i64::MIN // -1", "fn f() = (-9223372036854775807 - 1) // -1\nmodel m(k = f()) {\n input x: f32[2]\n return x\n}\n"),
    ("i64::MIN % -1", "fn f() = (-9223372036854775807 - 1) % -1\nmodel m(k = f()) {\n input x: f32[2]\n return x\n}\n"),
    ("i64::MIN / -1", "fn f() = (-9223372036854775807 - 1) / -1\nmodel m(k = f()) {\n input x: f32[2]\n return x\n}\n"),
    ("abs(i64::MIN)", "fn f() = abs(-9223372036854775807 - 1)\nmodel m(k = f()) {\n input x: f32[2]\n return x\n}\n"),
    ("empty repeat of 10^12", "model m() {\n input x: f32[2]\n repeat 1000000000000 {\n }\n return x\n}\n"),
    (
        "8 million layers (quadratic parameter-name checks, then `MAX_NODES`)",
        "model stack(d = 16, layers = 4) {\n input x: f32[batch, d]\n repeat layers {\n  x = x + linear(x, d) as ff\n }\n return x\n}\nconfig wide_deep = stack(layers = 8000000)\n",
    ),
    ("parameter count beyond u64", "model m() {\n input x: f32[2]\n param w: [4294967296, 4294967296, 4] = zeros\n return x\n}\nconfig c = m()\n"),
    // Found by the long parse+check run once `kiln check` planned named plans: the planners'
    // FLOP and byte counts overflowed u64 (now `plan::too_large` and saturating counts).
    (
        "a planned model with d = 2^31",
        "model m(vocab = 32000, d = 4096, layers = 8, heads = 32) {\n input tokens: i32[batch, seq]\n param e: [vocab, d] = normal(0.02)\n x = gather(e, tokens)\n repeat layers {\n  x = x + attention(rmsnorm(x) as n, heads) as a\n }\n return linear(x, vocab, bias = false) as head\n}\nconfig big = m(d = 2147483648, heads = 64)\nplan p for big {\n data = 256\n tensor = 8\n batch = 2048\n seq = 2048\n recompute = full\n}\n",
    ),
    (
        "a planned model with 2^40 layers",
        "model m(vocab = 64, d = 32, layers = 8, heads = 4) {\n input tokens: i32[batch, seq]\n param e: [vocab, d] = normal(0.02)\n x = gather(e, tokens)\n repeat layers {\n  x = x + attention(rmsnorm(x) as n, heads) as a\n }\n return linear(x, vocab, bias = false) as head\n}\nconfig big = m(layers = 1099511627776)\nplan p for big {\n data = 4\n batch = 64\n seq = 128\n}\n",
    ),
    (
        "a strided slice of an axis of length i64::MAX",
        "model m(d = 9223372036854775807) {\n input x: f32[batch, seq, d]\n even = x[:, :, ::2]\n return even\n}\nconfig c = m()\n",
    ),
    (
        "a plan with 2^50 data-parallel ranks",
        "model m(vocab = 64, d = 32, layers = 2, heads = 4) {\n input tokens: i32[batch, seq]\n param e: [vocab, d] = normal(0.02)\n x = gather(e, tokens)\n repeat layers {\n  x = x + attention(rmsnorm(x) as n, heads) as a\n }\n return linear(x, vocab, bias = false) as head\n}\nconfig c = m()\nplan p for c {\n data = 1125899906842624\n batch = 1125899906842624\n seq = 128\n}\n",
    ),
];

#[test]
fn known_hostile_inputs_neither_panic_nor_hang() {
    install_quiet_hook();
    let mut failures = Vec::new();
    for (what, text) in REGRESSIONS {
        let (panic, cost) = timed(|| panics("fuzz.kiln", text, &[]));
        if let Some(msg) = panic {
            failures.push(format!("{what}: panics: {msg}"));
        }
        if cost > case_limit() {
            failures.push(format!("{what}: took {cost:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
