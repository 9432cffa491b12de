//! Evaluation tasks: loading diagnostics, prompts, metrics against hand-computed references, the
//! shipped Tiny Shakespeare files, and baseline models on them.
//!
//! `KILN_WRITE_TASKS=1 cargo test -p kiln-runtime --test evaltask_tasks` rewrites `data/tasks/`
//! from the generator; without it, the test fails when the shipped files differ.

use std::path::{Path, PathBuf};

use kiln_runtime::data::split_text;
use kiln_runtime::evaltasks::baseline::{
    BigramModel, CacheBigram, SamplingGenerator, UniformScorer,
};
use kiln_runtime::evaltasks::fewshot::{encode_pair, fewshot_context, fewshot_indices};
use kiln_runtime::evaltasks::load::{parse_multiple_choice, parse_text_to_text, MAX_REPORTED};
use kiln_runtime::evaltasks::metrics::{
    argmax, exact_match, mean_with_stderr, multiple_choice_predictions, normalize_answer, token_f1,
};
use kiln_runtime::evaltasks::shakespeare::{build_all, parse_speeches, BuildConfig};
use kiln_runtime::evaltasks::{
    evaluate_generation, evaluate_multiple_choice, shipped_tasks, BadLine, EvalError,
    FewShotConfig, Generator, LengthUnit, McConfig, ModelError, MultipleChoiceDoc, Scorer,
    TaskError, TaskKind, TextToTextDoc,
};
use kiln_runtime::sample::{SamplingConfig, TokenSampler};
use kiln_runtime::tokenizer::{CharTokenizer, Tokenizer};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn corpus() -> String {
    std::fs::read_to_string(repo().join("data/tinyshakespeare.txt")).unwrap()
}

fn render(e: &dyn miette::Diagnostic) -> String {
    let mut out = String::new();
    miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
        .with_urls(false)
        .render_report(&mut out, e)
        .unwrap();
    out
}

// ------------------------------------------------------------------------------------------
// Loading
// ------------------------------------------------------------------------------------------

#[test]
fn bad_lines_are_reported_with_line_numbers_and_codes() {
    let text = concat!(
        r#"{"context": "a", "choices": ["b", "c"], "label": 1}"#,
        "\n\n",
        r#"{"context": "a", "choices": ["b", "c"], "label": 2}"#,
        "\n",
        r#"{"context": "a", "choices": ["b"], "label": 0}"#,
        "\n",
        r#"{"context": "a", "choices": ["b", "c"] "label": 0}"#,
        "\n",
        r#"{"context": "a", "choices": ["", "c"], "label": 0}"#,
        "\n",
        r#"{"context": "a", "label": 0}"#,
        "\n",
    );
    let err = parse_multiple_choice("t.jsonl", text).unwrap_err();
    let TaskError::BadLines { count, lines, .. } = &err else {
        panic!("expected BadLines, got {err:?}");
    };
    assert_eq!(*count, 5);
    let summary: Vec<(usize, &str)> = lines
        .iter()
        .map(|l| match l {
            BadLine::Json { line, .. } => (*line, "json"),
            BadLine::Label { line, .. } => (*line, "label"),
            BadLine::Choices { line, .. } => (*line, "choices"),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (3, "label"),
            (4, "choices"),
            (5, "json"),
            (6, "choices"),
            (7, "json")
        ]
    );
    let shown = render(&err);
    assert!(shown.contains("task::bad_lines"), "{shown}");
    assert!(
        shown.contains("line 3: label 2 is out of range for 2 choices"),
        "{shown}"
    );
    assert!(shown.contains("line 7: missing field `choices`"), "{shown}");
    assert!(shown.contains("t.jsonl"), "{shown}");
    // The JSON error points into line 5, at the offending `"label"`.
    let BadLine::Json { at, .. } = &lines[2] else {
        unreachable!()
    };
    assert_eq!(&text[at.offset()..at.offset() + 1], "\"");
    assert_eq!(text[..at.offset()].matches('\n').count(), 4);
}

#[test]
fn good_files_parse_and_crlf_blank_lines_and_extra_fields_are_fine() {
    let text = "{\"input\": \"x\", \"target\": \"y\", \"id\": 7}\r\n\r\n{\"input\": \"p\", \"target\": \"q\"}";
    let docs = parse_text_to_text("t", text).unwrap();
    assert_eq!(
        docs,
        vec![
            TextToTextDoc {
                input: "x".into(),
                target: "y".into()
            },
            TextToTextDoc {
                input: "p".into(),
                target: "q".into()
            }
        ]
    );
    assert!(matches!(
        parse_text_to_text("t", "\n  \n"),
        Err(TaskError::Empty { .. })
    ));
    let many: String = (0..50).map(|_| "nope\n").collect();
    let Err(TaskError::BadLines { count, lines, .. }) = parse_text_to_text("t", &many) else {
        panic!()
    };
    assert_eq!((count, lines.len()), (50, MAX_REPORTED));
}

// ------------------------------------------------------------------------------------------
// Prompts
// ------------------------------------------------------------------------------------------

fn t2t(i: &str, t: &str) -> TextToTextDoc {
    TextToTextDoc {
        input: i.into(),
        target: t.into(),
    }
}

#[test]
fn fewshot_prompt_layout_matches_the_harness() {
    let pool = vec![t2t("q0", "a0"), t2t("q1", "a1"), t2t("q2", "a2")];
    let cfg = FewShotConfig {
        num_fewshot: 2,
        seed: 7,
        description: "Answer.\n\n".into(),
        fewshot_delimiter: "\n\n".into(),
        target_delimiter: " => ".into(),
    };
    let doc = t2t("Q", "A");
    let idx = fewshot_indices(&cfg, 5, pool.len());
    assert_eq!(idx.len(), 2);
    assert_ne!(idx[0], idx[1]);
    let expected = format!(
        "Answer.\n\nq{0} => a{0}\n\nq{1} => a{1}\n\nQ",
        idx[0], idx[1]
    );
    assert_eq!(fewshot_context(&doc, 5, &pool, &cfg), expected);
    // Deterministic per (seed, example index), and the examples differ across indices.
    assert_eq!(fewshot_indices(&cfg, 5, 3), idx);
    let all: std::collections::BTreeSet<Vec<usize>> =
        (0..40).map(|i| fewshot_indices(&cfg, i, 3)).collect();
    assert!(all.len() > 3, "shots should vary across examples: {all:?}");
    let zero = FewShotConfig::default();
    assert_eq!(fewshot_context(&doc, 0, &pool, &zero), "Q");
}

#[test]
fn encode_pair_moves_trailing_space_into_the_continuation() {
    let tok = Tokenizer::Byte;
    let (ctx, cont) = encode_pair(&tok, "Q: x ", "yes").unwrap();
    assert_eq!(
        ctx,
        b"Q: x".iter().map(|&b| u32::from(b)).collect::<Vec<_>>()
    );
    assert_eq!(
        cont,
        b" yes".iter().map(|&b| u32::from(b)).collect::<Vec<_>>()
    );
}

// ------------------------------------------------------------------------------------------
// Metrics
// ------------------------------------------------------------------------------------------

#[test]
fn stderr_is_sample_std_over_sqrt_n() {
    let m = mean_with_stderr(&[1.0, 0.0, 1.0, 1.0]);
    assert!((m.value - 0.75).abs() < 1e-12);
    // sample std = sqrt(((0.25^2 * 3) + 0.75^2) / 3) = 0.5; / sqrt(4) = 0.25
    assert!((m.stderr - 0.25).abs() < 1e-12, "{}", m.stderr);
    assert!(mean_with_stderr(&[1.0]).stderr.is_nan());
}

#[test]
fn acc_norm_divides_by_the_choice_length() {
    let choices: Vec<String> = vec!["ab".into(), "abcdef".into(), "x".into()];
    // Sums: -4, -6, -3  → acc picks "x". Per char: -2, -1, -3 → acc_norm picks "abcdef".
    let (acc, norm) = multiple_choice_predictions(&[-4.0, -6.0, -3.0], &choices, LengthUnit::Chars);
    assert_eq!((acc, norm), (Some(2), Some(1)));
    // Bytes vs chars differ on non-ASCII: "éé" is 2 chars, 4 bytes.
    let c2: Vec<String> = vec!["éé".into(), "abc".into()];
    let ll = [-2.2, -3.0];
    assert_eq!(
        multiple_choice_predictions(&ll, &c2, LengthUnit::Chars).1,
        Some(1)
    );
    assert_eq!(
        multiple_choice_predictions(&ll, &c2, LengthUnit::Bytes).1,
        Some(0)
    );
    // Ties go to the first, NaN never wins.
    assert_eq!(argmax(&[1.0, 1.0]), Some(0));
    assert_eq!(argmax(&[f64::NAN, -1.0]), Some(1));
    assert_eq!(argmax(&[f64::NAN]), None);
}

#[test]
fn squad_normalisation_exact_match_and_f1() {
    assert_eq!(normalize_answer("The  Cat's hat!"), "cats hat");
    assert_eq!(normalize_answer("an apple a day"), "apple day");
    assert_eq!(normalize_answer("theatre"), "theatre");
    assert_eq!(exact_match("  PETRUCHIO.", "Petruchio"), 1.0);
    assert_eq!(exact_match("Petruchio said", "Petruchio"), 0.0);
    // pred: [first, citizen, speaks], gold: [first, citizen] → P = 2/3, R = 1, F1 = 0.8
    assert!((token_f1("First Citizen speaks", "First Citizen") - 0.8).abs() < 1e-12);
    // Repeated tokens count with multiplicity: pred [a1, a1], gold [a1] → P = 1/2, R = 1.
    assert!((token_f1("go go", "go") - 2.0 / 3.0).abs() < 1e-12);
    assert_eq!(token_f1("the", "a"), 1.0);
    assert_eq!(token_f1("the", "cat"), 0.0);
    assert_eq!(token_f1("dog", "cat"), 0.0);
}

/// A scorer that returns fixed scores, to check the bookkeeping of the evaluation loop.
struct Fixed(Vec<Vec<f64>>, usize);
impl Scorer for Fixed {
    fn loglik(&mut self, _c: &[u32], _k: &[u32]) -> Result<f64, ModelError> {
        unreachable!("loglik_batch is overridden")
    }
    fn loglik_batch(&mut self, r: &[(Vec<u32>, Vec<u32>)]) -> Result<Vec<f64>, ModelError> {
        let out = self.0[self.1].clone();
        assert_eq!(out.len(), r.len());
        self.1 += 1;
        Ok(out)
    }
}

#[test]
fn multiple_choice_report_counts_hits() {
    let doc = |label| MultipleChoiceDoc {
        context: "c".into(),
        choices: vec!["aaaa".into(), "b".into()],
        label,
    };
    let docs = vec![doc(0), doc(1), doc(1)];
    // doc0: acc picks 1 (miss), norm picks 0 (hit: -2/4 > -1/1).
    // doc1: acc picks 1 (hit), norm picks 1 (hit). doc2: acc 0 (miss), norm 0 (miss).
    let mut s = Fixed(
        vec![vec![-2.0, -1.0], vec![-9.0, -1.0], vec![-1.0, -5.0]],
        0,
    );
    let r = evaluate_multiple_choice(
        &docs,
        &[],
        &FewShotConfig::default(),
        &Tokenizer::Byte,
        &mut s,
        McConfig::default(),
    )
    .unwrap();
    assert!((r.acc.value - 1.0 / 3.0).abs() < 1e-12);
    assert!((r.acc_norm.value - 2.0 / 3.0).abs() < 1e-12);
    assert!((r.chance - 0.5).abs() < 1e-12);
    assert_eq!(r.docs[0].pred, 1);
    assert_eq!(r.docs[0].pred_norm, 0);
    let too_many = FewShotConfig {
        num_fewshot: 1,
        ..FewShotConfig::default()
    };
    assert!(matches!(
        evaluate_multiple_choice(
            &docs,
            &[],
            &too_many,
            &Tokenizer::Byte,
            &mut s,
            McConfig::default()
        ),
        Err(EvalError::FewShotPool { .. })
    ));
}

/// Answers from a fixed list, with trailing junk after a newline that the stop string removes.
struct Canned(Vec<&'static str>, usize);
impl Generator for Canned {
    fn generate(&mut self, _p: &[u32], _m: usize, _s: &[String]) -> Result<String, ModelError> {
        self.1 += 1;
        Ok(format!("{}\nJUNK", self.0[self.1 - 1]))
    }
}

#[test]
fn generation_report_applies_stops_and_metrics() {
    let docs = vec![
        t2t("speaker: x", "GREMIO"),
        t2t("speaker: y", "First Citizen"),
    ];
    let mut g = Canned(vec![" gremio", "Citizen"], 0);
    let r = evaluate_generation(
        &docs,
        &[],
        &FewShotConfig::default(),
        &Tokenizer::Byte,
        &mut g,
        8,
        &["\n".to_string()],
    )
    .unwrap();
    assert_eq!(r.docs[0].prediction, " gremio");
    assert_eq!(r.exact_match.value, 0.5);
    // doc1: P = 1, R = 1/2 → F1 = 2/3; mean with doc0's 1.0.
    assert!((r.f1.value - (1.0 + 2.0 / 3.0) / 2.0).abs() < 1e-12);
}

// ------------------------------------------------------------------------------------------
// The shipped Tiny Shakespeare tasks
// ------------------------------------------------------------------------------------------

#[test]
fn shipped_task_files_equal_the_generator_output() {
    let files = build_all(&corpus(), &BuildConfig::default());
    let dir = repo().join("data/tasks");
    if std::env::var_os("KILN_WRITE_TASKS").is_some() {
        std::fs::create_dir_all(&dir).unwrap();
        for (name, text) in &files {
            std::fs::write(dir.join(name), text).unwrap();
        }
    }
    for (name, text) in &files {
        let shipped = std::fs::read_to_string(dir.join(name))
            .unwrap_or_else(|e| panic!("{name}: {e} (regenerate with KILN_WRITE_TASKS=1)"));
        assert!(
            shipped == *text,
            "{name} differs from the generator (regenerate with KILN_WRITE_TASKS=1)"
        );
        // Next-line: up to 3 examples per validation speech; the training pool, also
        // `objective: multiple_choice`'s fine-tuning set (examples/gpt2_lora.yaml), one per
        // eligible speech of the training split.
        let (bytes, count) = match *name {
            "shakespeare_nextline.jsonl" => (400_000, 600..=900),
            "shakespeare_nextline_train.jsonl" => (1_000_000, 2000..=2500),
            _ => (300_000, 150..=400),
        };
        assert!(text.len() < bytes, "{name} is {} bytes", text.len());
        let n = text.lines().count();
        assert!(count.contains(&n), "{name} has {n} examples");
    }
    // Every shipped task parses with the loaders, and its files exist.
    for spec in shipped_tasks() {
        for f in [spec.file, spec.train_file] {
            let text = std::fs::read_to_string(dir.join(f)).unwrap();
            match spec.kind {
                TaskKind::MultipleChoice => {
                    let docs = parse_multiple_choice(f, &text).unwrap();
                    assert!(docs.iter().all(|d| d.choices.len() == 4));
                }
                TaskKind::Generation => {
                    parse_text_to_text(f, &text).unwrap();
                }
            }
        }
    }
}

#[test]
fn evaluated_examples_come_from_the_validation_split_and_pools_from_train() {
    let text = corpus();
    let (train, val) = split_text(&text, 0.1);
    let files = build_all(&text, &BuildConfig::default());
    let get = |n: &str| files.iter().find(|f| f.0 == n).unwrap().1.clone();
    let nl = parse_multiple_choice("nl", &get("shakespeare_nextline.jsonl")).unwrap();
    let nl_train = parse_multiple_choice("nlt", &get("shakespeare_nextline_train.jsonl")).unwrap();
    let mut labels = [0usize; 4];
    for d in &nl {
        // The context's lines and the true line are a verbatim stretch of the validation split.
        let (header, body) = d.context.split_once('\n').unwrap();
        assert!(header.ends_with(':'));
        let truth = format!("{body}{}\n", d.choices[d.label]);
        assert!(val.contains(&truth), "not in val: {truth:?}");
        for c in &d.choices {
            assert!(
                val.contains(&format!("\n{c}\n")),
                "choice not a val line: {c:?}"
            );
        }
        labels[d.label] += 1;
    }
    // Labels are shuffled: each position holds the answer about a quarter of the time.
    assert!(labels.iter().all(|&c| c > nl.len() / 8), "{labels:?}");
    for d in &nl_train {
        let (_, body) = d.context.split_once('\n').unwrap();
        assert!(train.contains(&format!("{body}{}\n", d.choices[d.label])));
    }
    // Every choice has its true line's length, so no scoring wins by length alone.
    for d in nl.iter().chain(&nl_train) {
        let len = d.choices[d.label].chars().count();
        assert!(d.choices.iter().all(|c| c.chars().count() == len), "{d:?}");
    }
    let sp = parse_text_to_text("sp", &get("shakespeare_speaker.jsonl")).unwrap();
    let speeches = parse_speeches(val);
    for d in &sp {
        let line = d.input.strip_prefix("speaker: ").unwrap();
        assert!(
            speeches
                .iter()
                .any(|s| s.speaker == d.target && s.lines.iter().any(|l| l == line)),
            "{d:?}"
        );
    }
    let mc = parse_multiple_choice("mc", &get("shakespeare_speaker_mc.jsonl")).unwrap();
    assert_eq!(mc.len(), sp.len());
    for (m, t) in mc.iter().zip(&sp) {
        assert_eq!(m.context, t.input);
        assert_eq!(m.choices[m.label], t.target);
        let unique: std::collections::BTreeSet<&String> = m.choices.iter().collect();
        assert_eq!(unique.len(), 4);
    }
}

fn char_tokenizer() -> Tokenizer {
    Tokenizer::Char(CharTokenizer::from_text(&corpus()).unwrap())
}

fn load_task(name: &str) -> (Vec<MultipleChoiceDoc>, Vec<MultipleChoiceDoc>) {
    let spec = shipped_tasks()
        .into_iter()
        .find(|s| s.name == name)
        .unwrap();
    let dir = repo().join("data/tasks");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    (
        parse_multiple_choice(spec.file, &read(spec.file)).unwrap(),
        parse_multiple_choice(spec.train_file, &read(spec.train_file)).unwrap(),
    )
}

#[test]
fn context_free_models_are_at_chance_and_a_cache_bigram_is_above_it() {
    let tok = char_tokenizer();
    let text = corpus();
    let (train_text, _) = split_text(&text, 0.1);
    let train_ids = tok.encode(train_text).unwrap();
    let bigram = BigramModel::train(&train_ids, tok.vocab_size(), 1.0).unwrap();
    let (docs, pool) = load_task("shakespeare_nextline");
    let spec = shipped_tasks()
        .into_iter()
        .find(|s| s.name == "shakespeare_nextline")
        .unwrap();
    let cfg = spec.fewshot(0, 1234);
    let metrics = McConfig {
        length_unit: LengthUnit::Chars,
        mutual_info: true,
    };
    let run = |scorer: &mut dyn Scorer, name: &str| {
        let r = evaluate_multiple_choice(&docs, &pool, &cfg, &tok, scorer, metrics).unwrap();
        let mi = r.acc_mutual_info.unwrap();
        eprintln!(
            "nextline {name:>12}: n={} acc={:.3}±{:.3} acc_norm={:.3}±{:.3} acc_mutual_info={:.3}±{:.3}",
            r.n, r.acc.value, r.acc.stderr, r.acc_norm.value, r.acc_norm.stderr, mi.value, mi.stderr
        );
        assert!((r.chance - 0.25).abs() < 1e-12);
        r
    };
    // The distractors are drawn like the true lines, so a model blind to the context is at
    // chance; a static bigram sees only the context's last character.
    let uniform = run(
        &mut UniformScorer {
            vocab_size: tok.vocab_size(),
        },
        "uniform",
    );
    let plain = run(&mut bigram.clone(), "bigram");
    for m in [uniform.acc, uniform.acc_norm, plain.acc, plain.acc_norm] {
        assert!((m.value - 0.25).abs() < 2.0 * m.stderr, "{m:?}");
    }
    // A bigram adapted to the context, scored by mutual information (which cancels how likely
    // a line is on its own), is well above chance.
    let mut cache = CacheBigram::new(bigram, 0.3).unwrap();
    let c = run(&mut cache, "cache bigram");
    let mi = c.acc_mutual_info.unwrap();
    assert!(mi.value > 0.25 + 3.0 * mi.stderr, "{mi:?}");
}

#[test]
fn a_bigram_generator_runs_the_speaker_task_deterministically() {
    let tok = char_tokenizer();
    let text = corpus();
    let (train_text, _) = split_text(&text, 0.1);
    let bigram =
        BigramModel::train(&tok.encode(train_text).unwrap(), tok.vocab_size(), 1.0).unwrap();
    let spec = shipped_tasks()
        .into_iter()
        .find(|s| s.name == "shakespeare_speaker")
        .unwrap();
    let dir = repo().join("data/tasks");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
    let docs = parse_text_to_text(spec.file, &read(spec.file)).unwrap();
    let pool = parse_text_to_text(spec.train_file, &read(spec.train_file)).unwrap();
    let docs = &docs[..40];
    let run = |seed: u64| {
        let model = bigram.clone();
        let mut g = SamplingGenerator {
            logits: move |ctx: &[u32]| model.logits(ctx).map_err(|e| e.to_string()),
            tokenizer: tok.clone(),
            sampler: TokenSampler::new(SamplingConfig {
                temperature: 1.0,
                top_k: Some(5),
                seed,
                ..SamplingConfig::default()
            })
            .unwrap(),
            eos: None,
        };
        evaluate_generation(
            docs,
            &pool,
            &spec.fewshot(2, 1234),
            &tok,
            &mut g,
            spec.max_tokens,
            &spec.stop_strings(),
        )
        .unwrap()
    };
    let a = run(1);
    assert_eq!(a, run(1));
    assert_ne!(
        a.docs.iter().map(|d| &d.prediction).collect::<Vec<_>>(),
        run(2)
            .docs
            .iter()
            .map(|d| &d.prediction)
            .collect::<Vec<_>>()
    );
    for d in &a.docs {
        assert!(!d.prediction.contains('\n'));
        assert!(d.prediction.chars().count() <= spec.max_tokens);
    }
}

// ------------------------------------------------------------------------------------------
// No input panics
// ------------------------------------------------------------------------------------------

mod robustness {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn task_parsing_never_panics(text in "(\\{|\\}|\"|:|,|\\[|\\]|label|choices|context|input|target|-?[0-9]{1,3}|[a-z ]|\n){0,80}") {
            let _ = parse_multiple_choice("p", &text);
            let _ = parse_text_to_text("p", &text);
        }

        #[test]
        fn sampling_never_panics(
            logits in proptest::collection::vec(prop_oneof![
                -1e30f32..1e30,
                Just(f32::NEG_INFINITY),
                Just(f32::INFINITY),
                Just(f32::NAN),
            ], 0..20),
            temperature in prop_oneof![Just(0.0f32), 0.01f32..10.0, Just(-1.0)],
            top_k in proptest::option::of(0usize..25),
            top_p in proptest::option::of(-0.5f32..1.5),
            seed in 0u64..4,
        ) {
            if let Ok(mut s) = TokenSampler::new(SamplingConfig { temperature, top_k, top_p, seed }) {
                if let Ok(id) = s.sample(&logits) {
                    prop_assert!((id as usize) < logits.len());
                    prop_assert!(logits[id as usize] != f32::NEG_INFINITY);
                }
            }
        }

        #[test]
        fn metrics_never_panic(a in "\\PC{0,30}", b in "\\PC{0,30}") {
            let f = token_f1(&a, &b);
            prop_assert!((0.0..=1.0).contains(&f));
            prop_assert!(exact_match(&a, &b) <= f + 1e-12 || normalize_answer(&a).is_empty());
        }
    }
}
