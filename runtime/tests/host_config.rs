//! Run config: parsing, defaults, round trip, `--set`, and every diagnostic kind rendered.

use std::path::{Path, PathBuf};

use kiln_runtime::config::{
    ConfigError, ConfigErrorKind, DataSource, Decay, Device, HyperValue, Optimizer, OptimizerKind,
    Override, Precision, RunConfig, TokenizerConfig,
};
use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme};

const FULL: &str = "\
spec: ../specs/gpt2.kiln        # path relative to the YAML file
model: gpt2_char_tiny
set: {dropout: 0.0, layers: 4, act: gelu, bias: false}
objective: causal_lm
data: {path: ../data/tinyshakespeare.txt, val_fraction: 0.1, tokenizer: char}
batch_size: 12
seq_len: 64
steps: 2000
optimizer: {kind: adamw, lr: 1.0e-3, beta1: 0.9, beta2: 0.99, eps: 1.0e-8, weight_decay: 0.1}
schedule: {warmup: 100, decay: cosine, min_lr: 1.0e-4, decay_steps: 2000}
grad_clip: 1.0
eval: {every: 250, batches: 20}
checkpoint: {every: 500, keep: 2}
seed: 1337
threads: 2
device: cpu
precision: f32
";

fn base() -> PathBuf {
    PathBuf::from("/work/examples")
}

fn parse(text: &str, sets: &[&str]) -> Result<RunConfig, ConfigError> {
    let overrides = sets
        .iter()
        .map(|s| Override::parse(s))
        .collect::<Result<Vec<_>, _>>()?;
    RunConfig::from_yaml(text, "run.yaml", &base(), &overrides)
}

fn render(d: &dyn Diagnostic) -> String {
    let mut out = String::new();
    GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_urls(false)
        .with_width(120)
        .render_report(&mut out, d)
        .unwrap();
    out
}

/// Asserts the error's kind, that the rendering carries the code, and returns the rendering.
fn expect_err(text: &str, sets: &[&str], kind: ConfigErrorKind) -> String {
    let err = match parse(text, sets) {
        Ok(c) => panic!("expected {kind:?}, got a config: {c:?}"),
        Err(e) => e,
    };
    let shown = render(&err);
    assert_eq!(err.kind(), kind, "{shown}");
    assert!(shown.contains(kind.code()), "{shown}");
    shown
}

#[test]
fn full_example_parses_with_every_field() {
    let c = parse(FULL, &[]).unwrap();
    assert_eq!(c.spec, Path::new("/work/examples/../specs/gpt2.kiln"));
    assert_eq!(c.model, "gpt2_char_tiny");
    assert_eq!(c.set["dropout"], HyperValue::Float(0.0));
    assert_eq!(c.set["layers"], HyperValue::Int(4));
    assert_eq!(c.set["act"], HyperValue::Str("gelu".into()));
    assert_eq!(c.set["bias"], HyperValue::Bool(false));
    assert_eq!(
        c.data.source(),
        Some(DataSource::Text {
            path: PathBuf::from("/work/examples/../data/tinyshakespeare.txt"),
            val_fraction: 0.1,
            tokenizer: TokenizerConfig::Char,
        })
    );
    assert_eq!((c.batch_size, c.seq_len, c.steps), (12, 64, 2000));
    assert_eq!(
        c.optimizer.resolved(),
        Optimizer::AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1
        }
    );
    assert_eq!(c.schedule.decay, Decay::Cosine);
    assert_eq!(c.schedule.warmup, 100);
    assert_eq!(c.lr_schedule().min_lr, 1e-4);
    assert_eq!((c.eval.every, c.eval.batches), (250, 20));
    assert_eq!((c.checkpoint.every, c.checkpoint.keep), (500, 2));
    assert_eq!(
        (c.seed, c.threads, c.device, c.precision),
        (1337, Some(2), Device::Cpu, Precision::F32)
    );
    assert_eq!(c.tokens_per_step(), 12 * 64);
}

#[test]
fn defaults_follow_nanogpt() {
    let c = parse(
        "spec: s.kiln\nmodel: m\ndata: {path: d.txt}\nsteps: 10\n",
        &[],
    )
    .unwrap();
    assert_eq!(c.objective, "causal_lm");
    assert_eq!((c.batch_size, c.seq_len, c.grad_accum), (12, 256, 1));
    assert_eq!(c.optimizer.kind, OptimizerKind::Adamw);
    assert_eq!(
        c.optimizer.resolved(),
        Optimizer::AdamW {
            lr: 6e-4,
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1
        }
    );
    let s = c.lr_schedule();
    assert_eq!((s.warmup, s.decay_steps, s.decay), (0, 10, Decay::Cosine));
    assert!((s.min_lr - 6e-5).abs() < 1e-18);
    assert_eq!(c.grad_clip, 1.0);
    assert_eq!(c.seed, 1337);
    assert_eq!(c.threads, None);
    assert_eq!(c.out_dir, Path::new("/work/examples/out"));
    assert_eq!(
        c.data.source(),
        Some(DataSource::Text {
            path: PathBuf::from("/work/examples/d.txt"),
            val_fraction: 0.1,
            tokenizer: TokenizerConfig::Char
        })
    );
}

#[test]
fn round_trip_through_yaml_is_identity() {
    let sgd = "spec: /abs/s.kiln\nmodel: m\nsteps: 5\n\
               data: {path: d.bin, tokenizer: {tokenizer_json: tok/tokenizer.json}}\n\
               optimizer: {kind: sgd, lr: 0.1, momentum: 0.5, nesterov: true}\n\
               schedule: {decay: linear}\n";
    for text in [FULL, sgd] {
        let c = parse(text, &[]).unwrap();
        let yaml = c.to_yaml();
        let back = RunConfig::from_yaml(&yaml, "again.yaml", Path::new("/elsewhere"), &[])
            .unwrap_or_else(|e| panic!("{}\n{yaml}", render(&e)));
        assert_eq!(back, c, "{yaml}");
    }
    let c = parse(sgd, &[]).unwrap();
    assert_eq!(
        c.data.tokenizer,
        Some(TokenizerConfig::TokenizerJson(PathBuf::from(
            "/work/examples/tok/tokenizer.json"
        )))
    );
    assert_eq!(c.spec, Path::new("/abs/s.kiln"));
    assert_eq!(
        c.optimizer.resolved(),
        Optimizer::Sgd {
            lr: 0.1,
            momentum: 0.5,
            nesterov: true,
            weight_decay: 0.0
        }
    );
}

#[test]
fn set_overrides_edit_the_tree_before_deserializing() {
    let c = parse(
        FULL,
        &[
            "optimizer.lr=3e-4",
            "schedule.decay=linear",
            "set.dropout=0.2",
            "set.new_param=7",
            "batch_size=4",
            "data.path=other.txt",
            "eval.full=true",
            "threads=1",
        ],
    )
    .unwrap();
    assert_eq!(c.optimizer.lr, 3e-4);
    assert_eq!(c.schedule.decay, Decay::Linear);
    assert_eq!(c.set["dropout"], HyperValue::Float(0.2));
    assert_eq!(c.set["new_param"], HyperValue::Int(7));
    assert_eq!(c.batch_size, 4);
    assert_eq!(c.data.path, Some(PathBuf::from("/work/examples/other.txt")));
    assert!(c.eval.full);
    assert_eq!(c.threads, Some(1));
    // A section absent from the file is created.
    let c = parse(
        "spec: s\nmodel: m\ndata: {path: d}\nsteps: 9\n",
        &["eval.every=3", "checkpoint.keep=5"],
    )
    .unwrap();
    assert_eq!((c.eval.every, c.checkpoint.keep), (3, 5));
    // The last override of a path wins.
    let c = parse(FULL, &["seed=1", "seed=2"]).unwrap();
    assert_eq!(c.seed, 2);
}

#[test]
fn syntax_error_points_at_the_line() {
    let text = "spec: s\nmodel: m\ndata: {path: d\nsteps: 5\n";
    let shown = expect_err(text, &[], ConfigErrorKind::Syntax);
    assert!(shown.contains("invalid YAML"), "{shown}");
    assert!(shown.contains("[run.yaml:"), "{shown}");
    let shown = expect_err("a: b: c\n", &[], ConfigErrorKind::Syntax);
    assert!(shown.contains("[run.yaml:1:5]"), "{shown}");
}

#[test]
fn unknown_field_suggests_the_nearest_name() {
    let text = FULL.replace("weight_decay: 0.1}", "wieght_decay: 0.1}");
    let shown = expect_err(&text, &[], ConfigErrorKind::UnknownField);
    assert!(
        shown.contains("unknown field `wieght_decay` in `optimizer`"),
        "{shown}"
    );
    assert!(shown.contains("did you mean `weight_decay`?"), "{shown}");
    // Line 9, at the key inside the flow mapping.
    let col = FULL.lines().nth(8).unwrap().find("weight_decay").unwrap() + 1;
    assert!(shown.contains(&format!("[run.yaml:9:{col}]")), "{shown}");

    let text = "spec: s\nmodel: m\ndata: {path: d}\nsteps: 5\nbatchsize: 3\n";
    let shown = expect_err(text, &[], ConfigErrorKind::UnknownField);
    assert!(shown.contains("did you mean `batch_size`?"), "{shown}");
    assert!(shown.contains("[run.yaml:5:1]"), "{shown}");
    assert!(shown.contains("5 │ batchsize: 3"), "{shown}");
}

#[test]
fn missing_field_is_named() {
    let shown = expect_err(
        "spec: s\nmodel: m\ndata: {path: d}\n",
        &[],
        ConfigErrorKind::MissingField,
    );
    assert!(shown.contains("missing field `steps`"), "{shown}");
    let shown = expect_err("", &[], ConfigErrorKind::MissingField);
    assert!(shown.contains("the run config is empty"), "{shown}");
}

#[test]
fn wrong_type_points_at_the_value() {
    let text = FULL.replace("batch_size: 12", "batch_size: twelve");
    let shown = expect_err(&text, &[], ConfigErrorKind::Type);
    assert!(shown.contains("[run.yaml:6:13]"), "{shown}");
    assert!(shown.contains("expected usize"), "{shown}");
    let text = FULL.replace("steps: 2000", "steps: -3");
    let shown = expect_err(&text, &[], ConfigErrorKind::Type);
    assert!(shown.contains("[run.yaml:8:8]"), "{shown}");
    let shown = expect_err("- a\n- b\n", &[], ConfigErrorKind::Type);
    assert!(shown.contains("a list"), "{shown}");
}

#[test]
fn unknown_choice_suggests_the_nearest() {
    let text = FULL.replace("decay: cosine", "decay: cosin");
    let shown = expect_err(&text, &[], ConfigErrorKind::UnknownVariant);
    assert!(shown.contains("unknown value `cosin`"), "{shown}");
    assert!(shown.contains("did you mean `cosine`?"), "{shown}");
    assert!(shown.contains("[run.yaml:10:"), "{shown}");
    let text = FULL.replace("tokenizer: char", "tokenizer: chars");
    let shown = expect_err(&text, &[], ConfigErrorKind::UnknownVariant);
    assert!(shown.contains("did you mean `char`?"), "{shown}");
    let text = FULL.replace("device: cpu", "device: tpu");
    let shown = expect_err(&text, &[], ConfigErrorKind::UnknownVariant);
    assert!(shown.contains("[run.yaml:16:9]"), "{shown}");
}

#[test]
fn invalid_values_point_at_their_line_and_all_are_reported() {
    let text = FULL
        .replace("val_fraction: 0.1", "val_fraction: 1.5")
        .replace("keep: 2", "keep: 0");
    let err = parse(&text, &[]).unwrap_err();
    let shown = render(&err);
    assert_eq!(err.kind(), ConfigErrorKind::Invalid, "{shown}");
    assert!(
        shown.contains("`val_fraction` must be in [0, 1), got 1.5"),
        "{shown}"
    );
    assert!(
        shown.contains("`checkpoint.keep` must be at least 1"),
        "{shown}"
    );
    assert_eq!(err.others().len(), 1);
    assert!(shown.contains("[run.yaml:5:"), "{shown}");
    assert!(shown.contains("[run.yaml:13:"), "{shown}");

    let text = FULL.replace("eps: 1.0e-8,", "eps: 1.0e-8, momentum: 0.9,");
    let shown = expect_err(&text, &[], ConfigErrorKind::Invalid);
    assert!(
        shown.contains("`optimizer.momentum` does not apply to `kind: adamw`"),
        "{shown}"
    );

    let text = FULL.replace(
        "data: {path: ../data/tinyshakespeare.txt, val_fraction: 0.1, tokenizer: char}",
        "data:\n  path: a.txt\n  token_file: a.bin",
    );
    let shown = expect_err(&text, &[], ConfigErrorKind::Invalid);
    assert!(shown.contains("both `path` and `token_file`"), "{shown}");
    assert!(shown.contains("[run.yaml:7:15]"), "{shown}");

    let text = FULL.replace("warmup: 100", "warmup: 3000");
    let shown = expect_err(&text, &[], ConfigErrorKind::Invalid);
    assert!(shown.contains("decay must end after warmup"), "{shown}");
}

#[test]
fn missing_files_are_reported_at_their_field() {
    let tmp = tempdir();
    let dir = tmp.path();
    std::fs::write(dir.join("d.txt"), "hello").unwrap();
    let yaml = dir.join("run.yaml");
    std::fs::write(
        &yaml,
        "spec: nope.kiln\nmodel: m\ndata: {path: d.txt}\nsteps: 3\n",
    )
    .unwrap();
    let err = RunConfig::load(&yaml, &[]).unwrap_err();
    let shown = render(&err);
    assert_eq!(err.kind(), ConfigErrorKind::MissingFile, "{shown}");
    assert!(shown.contains("nope.kiln"), "{shown}");
    assert!(shown.contains("run.yaml:1:7]"), "{shown}");

    std::fs::write(dir.join("nope.kiln"), "model m() {}").unwrap();
    let c = RunConfig::load(&yaml, &["seed=5".to_string()]).unwrap();
    assert_eq!(c.spec, dir.join("nope.kiln"));
    assert_eq!(c.seed, 5);

    let err = RunConfig::load(&dir.join("absent.yaml"), &[]).unwrap_err();
    assert_eq!(err.kind(), ConfigErrorKind::Io);
    assert!(render(&err).contains("absent.yaml"));
}

#[test]
fn set_errors_point_into_the_argument() {
    let shown = expect_err(FULL, &["optimizer.lr"], ConfigErrorKind::SetSyntax);
    assert!(shown.contains("has no `=`"), "{shown}");
    let shown = expect_err(FULL, &["optimizer..lr=1"], ConfigErrorKind::SetSyntax);
    assert!(shown.contains("empty path segment"), "{shown}");

    let shown = expect_err(FULL, &["seed.x=1"], ConfigErrorKind::SetPath);
    assert!(shown.contains("`seed` is a number"), "{shown}");
    assert!(shown.contains("[--set:1:6]"), "{shown}");

    // A bad value given on the command line is blamed on the command line, not the file.
    let shown = expect_err(FULL, &["seed=1", "batch_size=many"], ConfigErrorKind::Type);
    assert!(shown.contains("[--set:1:12]"), "{shown}");
    assert!(shown.contains("batch_size=many"), "{shown}");

    let shown = expect_err(FULL, &["optimizer.lrr=1e-3"], ConfigErrorKind::UnknownField);
    assert!(shown.contains("did you mean `lr`?"), "{shown}");
    assert!(shown.contains("[--set:1:11]"), "{shown}");

    let shown = expect_err(FULL, &["dropout=0.1"], ConfigErrorKind::UnknownField);
    assert!(shown.contains("--set set.dropout=..."), "{shown}");

    let shown = expect_err(
        FULL,
        &["schedule.decay=cosin"],
        ConfigErrorKind::UnknownVariant,
    );
    assert!(shown.contains("did you mean `cosine`?"), "{shown}");

    // Range checks after loading also blame the override that set the value.
    let shown = expect_err(FULL, &["data.val_fraction=2"], ConfigErrorKind::Invalid);
    assert!(shown.contains("[--set:1:19]"), "{shown}");

    // An error already in the file is reported in the file even when overrides are given.
    let text = FULL.replace("seq_len: 64", "seq_len: x");
    let shown = expect_err(&text, &["seed=3"], ConfigErrorKind::Type);
    assert!(shown.contains("[run.yaml:7:10]"), "{shown}");
}

#[test]
fn later_checks_can_point_at_fields() {
    let c = parse(FULL, &[]).unwrap();
    let err = c.error_at(
        &["seq_len"],
        ConfigErrorKind::Invalid,
        "seq_len 64 exceeds the model's context 32",
        "too long",
        None,
    );
    let shown = render(&err);
    assert!(shown.contains("[run.yaml:7:10]"), "{shown}");
    assert!(shown.contains("too long"), "{shown}");
    // A field absent from the file points at its section's key.
    let err = c.error_at(
        &["eval", "full"],
        ConfigErrorKind::Invalid,
        "full evaluation is not supported here",
        "not supported",
        None,
    );
    assert!(render(&err).contains("[run.yaml:12:1]"), "{}", render(&err));
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// `docs/run-config.md` is generated from the doc comments of the config structs, so every
/// field a user can write must have one that states its default (or that it is required).
#[test]
fn every_config_field_documents_its_default() {
    let source = include_str!("../src/config.rs");
    let lines: Vec<&str> = source.lines().collect();
    let mut in_config_struct = false;
    let mut checked = 0;
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("pub struct ") && i > 0 && lines[i - 1].contains("deny_unknown_fields")
        {
            in_config_struct = true;
            continue;
        }
        if *line == "}" {
            in_config_struct = false;
        }
        let field = line.trim_start();
        if !in_config_struct || !field.starts_with("pub ") || !field.contains(':') {
            continue;
        }
        let mut doc = String::new();
        for prev in lines[..i].iter().rev() {
            let prev = prev.trim_start();
            if let Some(text) = prev.strip_prefix("///") {
                doc = format!("{text} {doc}");
            } else if !prev.starts_with("#[") {
                break;
            }
        }
        assert!(
            doc.contains("Default") || doc.contains("Required"),
            "field `{field}` (config.rs line {}) lacks a doc comment stating its default",
            i + 1
        );
        checked += 1;
    }
    // RunConfig 22, DataConfig 5, OptimizerConfig 8, ScheduleConfig 4, EvalConfig 3,
    // CheckpointConfig 2, FinetuneConfig 9, GradualUnfreezing 2.
    assert_eq!(checked, 55);
}

/// `seq2seq` and `multiple_choice` train on `data.examples`, and only they do: either mistake
/// points at the field to change.
#[test]
fn seq2seq_and_examples_go_together() {
    let base = "spec: s.kiln\nmodel: m\ndata:\n  path: t.txt\nsteps: 7\n";
    let shown = expect_err(
        &format!("{base}objective: seq2seq\n"),
        &[],
        ConfigErrorKind::Invalid,
    );
    assert!(
        shown.contains("data.examples") && shown.contains("run.yaml:6:"),
        "{shown}"
    );
    let shown = expect_err(
        &base.replace("  path: t.txt\n", "  path: t.txt\n  examples: e.jsonl\n"),
        &[],
        ConfigErrorKind::Invalid,
    );
    assert!(
        shown.contains("not `causal_lm`") && shown.contains("run.yaml:5:"),
        "{shown}"
    );
    let c = parse(
        &format!("{base}objective: seq2seq\n"),
        &["data.examples=e.jsonl"],
    )
    .unwrap();
    assert_eq!(
        c.data.examples,
        Some(PathBuf::from("/work/examples/e.jsonl"))
    );
    // `multiple_choice` trains on examples too.
    let shown = expect_err(
        &format!("{base}objective: multiple_choice\n"),
        &[],
        ConfigErrorKind::Invalid,
    );
    assert!(
        shown.contains("`objective: multiple_choice` trains on examples")
            && shown.contains("run.yaml:6:"),
        "{shown}"
    );
    parse(
        &format!("{base}objective: multiple_choice\n"),
        &["data.examples=e.jsonl"],
    )
    .unwrap();
}
