//! `objective: multiple_choice` on `gpt2_tiny`: its loss is the cross-entropy of the very scores
//! `kiln eval` ranks choices by (the evaluator's log-likelihoods, recomputed here through
//! `LogitsModel`), raw and per token, and `kiln eval` without a task reports it over the held-out
//! examples; fine-tuning with it learns a rule that only the context tells, lifting held-out
//! accuracy from chance; an interrupted run resumes where its batches left off.

mod loop_common;

use std::path::{Path, PathBuf};

use kiln_runtime::eval::{evaluate, EvalOptions, EvalReport};
use kiln_runtime::evaltasks::fewshot::encode_pair;
use kiln_runtime::evaltasks::{MultipleChoiceDoc, Scorer};
use kiln_runtime::finetune::finetune;
use kiln_runtime::generate::load_inference;
use kiln_runtime::metrics::read_metrics;
use kiln_runtime::session::Executor;
use kiln_runtime::train::{train, ProgressOutput, TrainOptions, TrainOutcome};

fn options() -> TrainOptions {
    TrainOptions {
        executor: Executor::Cpu,
        progress: ProgressOutput::Lines(Box::new(std::io::sink())),
        ..TrainOptions::default()
    }
}

const KEYS: [&str; 4] = ["north", "south", "frost", "storm"];
const ANSWERS: [&str; 4] = [
    "and it is cold",
    "and it is warm",
    "and it is damp",
    "and it is wild",
];
const SPEAKERS: [&str; 5] = ["ROMEO", "JULIET", "GREMIO", "BIANCA", "CURTIS"];

/// `n` examples of a rule only the context tells: the wind's direction names the answer; every
/// answer has the same length and appears in every example, in a rotating order.
fn examples(n: usize) -> Vec<MultipleChoiceDoc> {
    (0..n)
        .map(|i| {
            let key = (i * 7 + i / 4) % 4;
            let rot = (i * 3 + 1) % 4;
            let choices: Vec<String> = (0..4).map(|c| ANSWERS[(c + rot) % 4].into()).collect();
            let label = choices.iter().position(|c| c == ANSWERS[key]).unwrap();
            MultipleChoiceDoc {
                context: format!(
                    "{}:\nThe wind is from the {}\n",
                    SPEAKERS[i % SPEAKERS.len()],
                    KEYS[key]
                ),
                choices,
                label,
            }
        })
        .collect()
}

fn write_examples(path: &Path, docs: &[MultipleChoiceDoc]) {
    let text: String = docs
        .iter()
        .map(|d| serde_json::to_string(d).unwrap() + "\n")
        .collect();
    std::fs::write(path, text).unwrap();
}

/// A `gpt2_tiny` base checkpoint trained briefly on the corpus at a 32-token window.
fn base_checkpoint(dir: &Path) -> PathBuf {
    let yaml = loop_common::write_run(dir, "");
    let base = train(
        &loop_common::load(&yaml, &["seq_len=32", "steps=8", "checkpoint.every=8"]),
        options(),
    )
    .unwrap();
    base.checkpoint.expect("base checkpoint")
}

/// A multiple-choice fine-tuning run config from `base` on `examples.jsonl` (the last quarter
/// held out), batches of 4 examples, `steps` steps, evaluated before the first and after the
/// last on 2 batches: the 8 held-out examples of 32.
fn choice_config(dir: &Path, base: &Path, args: &str, steps: usize) -> PathBuf {
    let yaml = format!(
        "spec: {}\nmodel: gpt2_tiny\nobjective: multiple_choice\nobjective_args: {{{args}}}\n\
         data:\n  path: corpus.txt\n  val_fraction: 0.25\n  examples: examples.jsonl\n\
         batch_size: 4\nseq_len: 32\noptimizer: {{lr: 1.0e-2, beta2: 0.99, weight_decay: 0.0}}\n\
         schedule: {{warmup: 0, min_lr: 1.0e-3}}\ngrad_clip: 1.0\n\
         steps: {steps}\neval: {{every: {steps}, batches: 2, full: false}}\ncheckpoint: {{every: 0}}\n\
         finetune:\n  from: {}\nout_dir: mc\n",
        loop_common::repo().join("specs/gpt2.kiln").display(),
        base.display()
    );
    let path = dir.join("mc.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// The held-out validation losses of a fine-tuning run, in order.
fn val_losses(dir: &Path) -> Vec<f32> {
    read_metrics(&dir.join("mc/metrics.jsonl"))
        .unwrap()
        .iter()
        .filter_map(|r| r.val_loss)
        .collect()
}

/// Mean cross-entropy of `scale` × each example's scores (per token when `normalize`), with the
/// scores computed by the evaluator's `loglik`.
fn reference_loss(
    scorer: &mut dyn Scorer,
    tok: &kiln_runtime::tokenizer::Tokenizer,
    docs: &[MultipleChoiceDoc],
    scale: f64,
    normalize: bool,
) -> f64 {
    let mut total = 0.0;
    for d in docs {
        let scores: Vec<f64> = d
            .choices
            .iter()
            .map(|c| {
                let (ctx, cont) = encode_pair(tok, &d.context, c).unwrap();
                let s = scorer.loglik(&ctx, &cont).unwrap();
                scale * if normalize { s / cont.len() as f64 } else { s }
            })
            .collect();
        let m = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let lse = m + scores.iter().map(|s| (s - m).exp()).sum::<f64>().ln();
        total += lse - scores[d.label];
    }
    total / docs.len() as f64
}

#[test]
fn the_loss_is_the_cross_entropy_of_the_evaluators_scores() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_checkpoint(dir.path());
    let docs = examples(32);
    write_examples(&dir.path().join("examples.jsonl"), &docs);
    let mut inf = load_inference(&base, Executor::Cpu).unwrap();
    assert_eq!(inf.model.window(), 32);
    let held_out = &docs[24..];
    for (args, scale, normalize) in [
        ("", 1.0, false),
        ("scale: 0.5", 0.5, false),
        ("normalize: true, scale: 8.0", 8.0, true),
    ] {
        let yaml = choice_config(dir.path(), &base, args, 1);
        let _ = std::fs::remove_dir_all(dir.path().join("mc"));
        finetune(&loop_common::load(&yaml, &[]), options()).unwrap();
        // Step 0's held-out loss is the base model's.
        let got = f64::from(val_losses(dir.path())[0]);
        let want = reference_loss(&mut inf.model, &inf.tokenizer, held_out, scale, normalize);
        eprintln!("{args:>28}: objective {got:.6}, evaluator {want:.6}");
        assert!(
            (got - want).abs() <= 1e-4 * want.abs().max(1.0),
            "{args}: objective {got}, evaluator {want}"
        );
        // `kiln eval` without a task: the same loss over the held-out examples, per example.
        let report = evaluate(
            &loop_common::load(&yaml, &[]),
            &EvalOptions {
                executor: Executor::Cpu,
                checkpoint: base.clone(),
                tasks: vec![],
                tasks_dir: PathBuf::new(),
                num_fewshot: 0,
                limit: None,
                max_batches: None,
            },
        )
        .unwrap();
        let EvalReport::Validation(v) = report else {
            panic!("{report:?}")
        };
        assert_eq!((v.tokens, v.unit), (8, "examples"));
        assert!((v.loss - want).abs() <= 1e-4 * want.abs().max(1.0), "{v:?}");
    }
}

#[test]
fn fine_tuning_learns_a_rule_only_the_context_tells() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_checkpoint(dir.path());
    let docs = examples(32);
    write_examples(&dir.path().join("examples.jsonl"), &docs);
    let yaml = choice_config(dir.path(), &base, "", 200);
    let summary = finetune(&loop_common::load(&yaml, &[]), options()).unwrap();
    let vals = val_losses(dir.path());
    let (first, last) = (vals[0], *vals.last().unwrap());
    // Chance is ln 4 ≈ 1.386 for a model that cannot tell the answers apart.
    assert!(
        last < 0.5 * first.min(4f32.ln()),
        "held-out loss {first} -> {last}"
    );

    // Held-out accuracy by the evaluator's ranking: from chance to (nearly) every example.
    let acc = |path: &Path| {
        let mut inf = load_inference(path, Executor::Cpu).unwrap();
        let hits = docs[24..]
            .iter()
            .filter(|d| {
                let s: Vec<f64> = d
                    .choices
                    .iter()
                    .map(|c| {
                        let (ctx, cont) = encode_pair(&inf.tokenizer, &d.context, c).unwrap();
                        inf.model.loglik(&ctx, &cont).unwrap()
                    })
                    .collect();
                kiln_runtime::evaltasks::metrics::argmax(&s) == Some(d.label)
            })
            .count();
        hits as f64 / 8.0
    };
    let tuned = summary.train.checkpoint.expect("checkpoint");
    let (before, after) = (acc(&base), acc(&tuned));
    eprintln!("held-out loss {first:.4} -> {last:.4}, accuracy {before} -> {after}");
    assert!(
        after >= 0.875 && after > before,
        "accuracy {before} -> {after}"
    );
}

#[test]
fn an_interrupted_run_resumes_its_example_order() {
    let dir = tempfile::tempdir().unwrap();
    let base = base_checkpoint(dir.path());
    write_examples(&dir.path().join("examples.jsonl"), &examples(32));
    // 14 steps of 4 examples cross two epochs of the 24 training examples.
    let yaml = choice_config(dir.path(), &base, "", 14);
    let text = std::fs::read_to_string(&yaml).unwrap().replace(
        "checkpoint: {every: 0}",
        "checkpoint: {every: 5, keep: 5}\nlog_every: 1",
    );
    std::fs::write(&yaml, text).unwrap();
    let straight = loop_common::load(&yaml, &["out_dir=straight"]);
    finetune(&straight, loop_common::interruptible(false, None)).unwrap();

    // Stopped after step 7 (checkpoint 5 is the last before it), then resumed.
    let split = loop_common::load(&yaml, &["out_dir=split"]);
    let first = finetune(&split, loop_common::interruptible(false, Some(7))).unwrap();
    assert_eq!(first.train.outcome, TrainOutcome::Interrupted);
    let rest = finetune(&split, loop_common::interruptible(true, None)).unwrap();
    assert_eq!(rest.train.outcome, TrainOutcome::Finished);
    let read = |d: &str| std::fs::read_to_string(dir.path().join(d).join("metrics.jsonl")).unwrap();
    assert_eq!(read("straight"), read("split"));
}
