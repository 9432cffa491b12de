//! The training loop on the reference interpreter, end to end on `gpt2_tiny`: an interrupted and
//! resumed run writes the same `metrics.jsonl` and the same final state as an uninterrupted one,
//! training lowers the loss, and a fresh run never overwrites an existing one.

mod loop_common;

use std::path::Path;

use kiln_runtime::checkpoint::{load_checkpoint, CheckpointDir};
use kiln_runtime::metrics::read_metrics;
use kiln_runtime::session::RunError;
use kiln_runtime::train::{train, TrainOptions, TrainOutcome, PLOT_FILE};

fn options(resume: bool, stop_at: Option<u64>) -> TrainOptions {
    loop_common::interruptible(resume, stop_at)
}

fn final_state(dir: &Path) -> kiln_runtime::checkpoint::Checkpoint {
    let d = CheckpointDir::open(dir, 10).unwrap();
    load_checkpoint(&d.latest().unwrap().expect("a checkpoint")).unwrap()
}

#[test]
fn interrupted_and_resumed_run_matches_an_uninterrupted_one() {
    let tmp = tempfile::tempdir().unwrap();
    let path = loop_common::write_run(tmp.path(), "");
    let straight = loop_common::load(&path, &["out_dir=straight"]);
    let s = train(&straight, options(false, None)).unwrap();
    assert_eq!(s.outcome, TrainOutcome::Finished);
    assert_eq!(s.step, 12);

    // Interrupted after step 6 (between checkpoints 4 and 8), then resumed.
    let split = loop_common::load(&path, &["out_dir=split"]);
    let s = train(&split, options(false, Some(6))).unwrap();
    assert_eq!(s.outcome, TrainOutcome::Interrupted);
    assert_eq!(s.step, 6);
    let ckpt = s.checkpoint.expect("interrupt writes a checkpoint");
    assert!(
        ckpt.ends_with(CheckpointDir::file_name(6)),
        "{}",
        ckpt.display()
    );
    let s = train(&split, options(true, None)).unwrap();
    assert_eq!(
        (s.outcome, s.start_step, s.step),
        (TrainOutcome::Finished, 6, 12)
    );

    let a = std::fs::read(straight.out_dir.join("metrics.jsonl")).unwrap();
    let b = std::fs::read(split.out_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(String::from_utf8_lossy(&a), String::from_utf8_lossy(&b));
    // Steps 0..=12 all logged (log_every 1), evaluations at 0, 4, 8, 12.
    let records = read_metrics(&straight.out_dir.join("metrics.jsonl")).unwrap();
    assert_eq!(records.len(), 13);
    let evals: Vec<u64> = records
        .iter()
        .filter(|r| r.val_loss.is_some())
        .map(|r| r.step)
        .collect();
    assert_eq!(evals, vec![0, 4, 8, 12]);

    let (x, y) = (final_state(&straight.out_dir), final_state(&split.out_dir));
    assert_eq!(x.meta.step, 12);
    assert_eq!(x.params, y.params);
    assert_eq!(x.opt_m, y.opt_m);
    assert_eq!(x.opt_v, y.opt_v);
    assert_eq!(x.meta.samplers, y.meta.samplers);
    assert!(!x.opt_v.is_empty(), "AdamW state is checkpointed");

    // Training learned something: the estimated loss fell.
    let first = records[0].val_loss.unwrap();
    let last = records[12].train_eval_loss.unwrap();
    assert!(last < first - 0.3, "loss {first} -> {last}");
    let svg = std::fs::read_to_string(straight.out_dir.join(PLOT_FILE)).unwrap();
    assert!(svg.contains("<svg"));
}

#[test]
fn resuming_from_the_previous_checkpoint_repeats_the_same_steps() {
    // A crash after checkpoint 8 but before `latest` moved would resume from 4: still identical.
    let tmp = tempfile::tempdir().unwrap();
    let path = loop_common::write_run(tmp.path(), "");
    let config = loop_common::load(&path, &["steps=8", "checkpoint.keep=3", "eval.every=0"]);
    train(&config, options(false, None)).unwrap();
    let reference = std::fs::read(config.out_dir.join("metrics.jsonl")).unwrap();
    let reference_state = final_state(&config.out_dir);
    std::fs::write(config.out_dir.join("latest"), "ckpt-00000004.safetensors\n").unwrap();
    let s = train(&config, options(true, None)).unwrap();
    assert_eq!(s.start_step, 4);
    assert_eq!(
        std::fs::read(config.out_dir.join("metrics.jsonl")).unwrap(),
        reference
    );
    assert_eq!(final_state(&config.out_dir).params, reference_state.params);
}

#[test]
fn sgd_with_momentum_resumes_bitwise() {
    let tmp = tempfile::tempdir().unwrap();
    let path = loop_common::write_run(tmp.path(), "");
    let set = [
        "optimizer.kind=sgd",
        "optimizer.beta2=null",
        "steps=6",
        "eval.every=0",
        "checkpoint.every=3",
    ];
    // `beta2` belongs to AdamW: `null` unsets it.
    let straight = loop_common::load(&path, &[&set[..], &["out_dir=a"]].concat());
    train(&straight, options(false, None)).unwrap();
    let split = loop_common::load(&path, &[&set[..], &["out_dir=b"]].concat());
    assert_eq!(
        train(&split, options(false, Some(2))).unwrap().outcome,
        TrainOutcome::Interrupted
    );
    train(&split, options(true, None)).unwrap();
    assert_eq!(
        std::fs::read(straight.out_dir.join("metrics.jsonl")).unwrap(),
        std::fs::read(split.out_dir.join("metrics.jsonl")).unwrap()
    );
    let x = final_state(&straight.out_dir);
    assert!(
        !x.opt_m.is_empty() && x.opt_v.is_empty(),
        "SGD keeps one buffer"
    );
    assert_eq!(x.opt_m, final_state(&split.out_dir).opt_m);
}

#[test]
fn a_fresh_run_does_not_overwrite_an_existing_one() {
    let tmp = tempfile::tempdir().unwrap();
    let path = loop_common::write_run(tmp.path(), "");
    let config = loop_common::load(&path, &["steps=2", "eval.every=0"]);
    train(&config, options(false, None)).unwrap();
    let before = std::fs::read(config.out_dir.join("metrics.jsonl")).unwrap();
    let err = train(&config, options(false, None)).unwrap_err();
    assert!(matches!(err, RunError::OutDirInUse { .. }), "{err:?}");
    assert_eq!(
        std::fs::read(config.out_dir.join("metrics.jsonl")).unwrap(),
        before
    );
}
