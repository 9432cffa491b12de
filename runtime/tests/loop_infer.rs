//! Evaluation and generation through the compiled programs, checked differentially: the eval
//! program's loss against log-likelihoods from the logits program, right-padded windows against
//! a program bound at the exact length, and the `kiln eval` / `kiln generate` paths end to end.

mod loop_common;

use kiln_runtime::checkpoint::CheckpointError;
use kiln_runtime::data::load_dataset;
use kiln_runtime::eval::{evaluate, EvalOptions, EvalReport};
use kiln_runtime::evaltasks::Scorer;
use kiln_runtime::generate::{generate, load_inference, LogitsModel};
use kiln_runtime::sample::SamplingConfig;
use kiln_runtime::session::{
    compile_logits, compile_run, load_spec, make_backend, Executor, Programs, RunError,
};
use kiln_runtime::train::{sequential_loss, train, ProgressOutput, TrainOptions};

fn quiet() -> TrainOptions {
    TrainOptions {
        progress: ProgressOutput::Lines(Box::new(std::io::sink())),
        ..TrainOptions::default()
    }
}

#[test]
fn eval_loss_matches_loglik_from_the_logits_program() {
    let tmp = tempfile::tempdir().unwrap();
    let path = loop_common::write_run(tmp.path(), "");
    let config = loop_common::load(&path, &[]);
    let spec = load_spec(&config).unwrap();
    let compiled = compile_run(&config, &spec, Programs::Inference).unwrap();
    let data = load_dataset(&config.data.source().unwrap()).unwrap();
    let mut eval = make_backend(Executor::Interp, &compiled.eval, 7, None).unwrap();
    let logits = make_backend(Executor::Interp, &compiled.logits, 7, None).unwrap();
    let mut model = LogitsModel::new(logits, compiled.window, compiled.vocab, 7);

    let (b, t) = (config.batch_size, config.seq_len);
    let (loss, scored) = sequential_loss(eval.as_mut(), &data.val, b, t, 7, Some(3))
        .unwrap()
        .unwrap();
    assert_eq!(scored, 3 * b * t);
    let val = data.val.to_vec();
    let mut nll = 0.0;
    for k in 0..3 * b {
        let w = &val[k * t..k * t + t + 1];
        nll -= model.loglik(&w[..1], &w[1..]).unwrap();
    }
    let reference = nll / scored as f64;
    assert!(
        (loss - reference).abs() < 1e-5 * reference.abs(),
        "eval program {loss} vs logits program {reference}"
    );
    // An untrained model is close to uniform over its 96 outputs.
    assert!((loss - (96f64).ln()).abs() < 0.5, "{loss}");
}

#[test]
fn right_padding_does_not_change_next_token_logits() {
    let tmp = tempfile::tempdir().unwrap();
    let path = loop_common::write_run(tmp.path(), "");
    let config = loop_common::load(&path, &[]);
    let spec = load_spec(&config).unwrap();
    let compiled = compile_run(&config, &spec, Programs::Inference).unwrap();
    let padded = make_backend(Executor::Interp, &compiled.logits, 3, None).unwrap();
    let mut padded = LogitsModel::new(padded, compiled.window, compiled.vocab, 3);
    let context = [5u32, 17, 3, 40, 9];
    let exact = compile_logits(&config, &spec, 1, context.len()).unwrap();
    let exact = make_backend(Executor::Interp, &exact, 3, None).unwrap();
    let mut exact = LogitsModel::new(exact, context.len(), compiled.vocab, 3);
    let a = padded.next_logits(&context).unwrap();
    let b = exact.next_logits(&context).unwrap();
    assert_eq!(a.len(), compiled.vocab);
    for (x, y) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-6 * (1.0 + y.abs()), "{x} vs {y}");
    }
    // A context longer than the window reads its last `window` tokens.
    let long: Vec<u32> = (0..20).map(|i| (i * 7 % 60) as u32).collect();
    let tail = &long[long.len() - compiled.window..];
    assert_eq!(
        padded.next_logits(&long).unwrap(),
        padded.next_logits(tail).unwrap()
    );
}

#[test]
fn eval_and_generate_from_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let path = loop_common::write_run(tmp.path(), "");
    let config = loop_common::load(&path, &["steps=3", "eval.every=0"]);
    let summary = train(&config, quiet()).unwrap();
    let ckpt = summary.checkpoint.unwrap();

    let opts = EvalOptions {
        executor: Executor::Interp,
        checkpoint: ckpt.clone(),
        tasks: vec![],
        tasks_dir: loop_common::repo().join("data/tasks"),
        num_fewshot: 0,
        limit: Some(2),
        max_batches: Some(4),
    };
    let EvalReport::Validation(v) = evaluate(&config, &opts).unwrap() else {
        panic!("expected a validation report")
    };
    assert_eq!(v.tokens, 4 * 2 * 8);
    assert!((v.perplexity - v.loss.exp()).abs() < 1e-9 * v.perplexity);

    // Tasks: multiple choice and generation, two examples each.
    let tasks = EvalOptions {
        tasks: vec![
            "shakespeare_speaker_mc".to_string(),
            "shakespeare_speaker".to_string(),
        ],
        ..opts.clone()
    };
    let EvalReport::Tasks(reports) = evaluate(&config, &tasks).unwrap() else {
        panic!("expected task reports")
    };
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0].n, 2);
    let acc = reports[0].metrics["acc"];
    assert!(acc == 0.0 || acc == 0.5 || acc == 1.0, "{acc}");
    assert!(reports[1].metrics.contains_key("exact_match"));
    let json = reports[0].to_json();
    assert_eq!(json["task"], "shakespeare_speaker_mc");
    assert_eq!(json["n"], 2);
    let unknown = EvalOptions {
        tasks: vec!["shakespeare_nextlin".to_string()],
        ..opts.clone()
    };
    assert!(matches!(
        evaluate(&config, &unknown),
        Err(RunError::Usage { .. })
    ));

    // Generation: seeded, deterministic, one character per token.
    let mut inf = load_inference(&ckpt, Executor::Interp).unwrap();
    let sampling = |seed| SamplingConfig {
        temperature: 1.0,
        top_k: Some(10),
        top_p: None,
        seed,
    };
    let a = generate(&mut inf, "First", 12, sampling(1), &[]).unwrap();
    let b = generate(&mut inf, "First", 12, sampling(1), &[]).unwrap();
    assert_eq!(a, b);
    assert_eq!(a.tokens.len(), 12);
    assert_eq!(a.text.chars().count(), 12);
    let c = generate(&mut inf, "First", 12, sampling(2), &[]).unwrap();
    assert_ne!(a.tokens, c.tokens, "different seeds draw differently");
    // Greedy decoding picks the argmax of the logits program, token after token.
    let g = generate(&mut inf, "First", 4, SamplingConfig::greedy(), &[]).unwrap();
    let mut context = inf.tokenizer.encode("First").unwrap();
    let usable = inf.tokenizer.vocab_size();
    for &tok in &g.tokens {
        let row = inf.model.next_logits(&context).unwrap();
        let best = (0..usable)
            .max_by(|&i, &j| row[i].total_cmp(&row[j]).then(j.cmp(&i)))
            .unwrap();
        assert_eq!(tok as usize, best);
        context.push(tok);
    }
    assert!(matches!(
        generate(&mut inf, "", 3, sampling(1), &[]),
        Err(RunError::Usage { .. })
    ));
    assert!(matches!(
        generate(&mut inf, "\u{263A}", 3, sampling(1), &[]),
        Err(RunError::Tokenizer(_))
    ));
}

#[test]
fn a_checkpoint_of_another_model_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = loop_common::write_run(tmp.path(), "");
    let config = loop_common::load(&path, &["steps=2", "eval.every=0"]);
    let ckpt = train(&config, quiet()).unwrap().checkpoint.unwrap();
    let llama = loop_common::repo().join("specs/llama.kiln");
    let other = loop_common::load(
        &path,
        &[&format!("spec={}", llama.display()), "model=llama_tiny"],
    );
    let opts = EvalOptions {
        executor: Executor::Interp,
        checkpoint: ckpt,
        tasks: vec![],
        tasks_dir: loop_common::repo().join("data/tasks"),
        num_fewshot: 0,
        limit: None,
        max_batches: Some(1),
    };
    match evaluate(&other, &opts) {
        Err(RunError::Checkpoint(CheckpointError::Incompatible { problems, .. })) => {
            assert!(problems
                .iter()
                .any(|p| matches!(p, CheckpointError::SpecMismatch { .. })));
            assert!(problems
                .iter()
                .any(|p| matches!(p, CheckpointError::ModelMismatch { .. })));
        }
        other => panic!("expected an incompatible checkpoint, got {other:?}"),
    }
}

#[test]
fn generation_needs_only_the_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let path = loop_common::write_run(tmp.path(), "");
    let spec = tmp.path().join("model.kiln");
    std::fs::copy(loop_common::repo().join("specs/gpt2.kiln"), &spec).unwrap();
    let set_spec = format!("spec={}", spec.display());
    let config = loop_common::load(&path, &[&set_spec, "steps=2", "eval.every=0"]);
    let ckpt = train(&config, quiet()).unwrap().checkpoint.unwrap();
    std::fs::remove_file(&spec).unwrap();
    std::fs::remove_file(tmp.path().join("corpus.txt")).unwrap();
    let mut inf = load_inference(&ckpt, Executor::Interp).unwrap();
    let g = generate(&mut inf, "ROMEO", 3, SamplingConfig::greedy(), &[]).unwrap();
    assert_eq!(g.tokens.len(), 3);
}
