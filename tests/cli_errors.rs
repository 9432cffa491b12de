//! `kiln train` / `kiln eval` on bad input: each failure is a diagnostic with exit code 1, and a
//! failing command leaves an existing run folder byte for byte as it was.

mod cli_common;

use cli_common::{assert_fails, fingerprint, kiln, write_run};

/// A run folder with files a failing command must not touch.
fn occupied_out(dir: &std::path::Path) {
    let out = dir.join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("metrics.jsonl"), "{\"step\":0,\"val_loss\":4.5}\n").unwrap();
    std::fs::write(out.join("notes.txt"), "keep me").unwrap();
}

#[test]
fn a_missing_data_file_is_a_diagnostic() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), "");
    std::fs::remove_file(tmp.path().join("corpus.txt")).unwrap();
    occupied_out(tmp.path());
    let before = fingerprint(tmp.path());
    let o = kiln(tmp.path(), &["train", "run.yaml", "--resume"]);
    assert_fails(
        &o,
        &["config::missing_file", "corpus.txt", "does not exist"],
    );
    assert_eq!(fingerprint(tmp.path()), before);
}

#[test]
fn an_empty_data_file_is_a_diagnostic() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), "");
    std::fs::write(tmp.path().join("corpus.txt"), "").unwrap();
    occupied_out(tmp.path());
    let before = fingerprint(tmp.path());
    let o = kiln(tmp.path(), &["train", "run.yaml", "--resume"]);
    assert_fails(&o, &["data::empty", "is empty"]);
    assert_eq!(fingerprint(tmp.path()), before);
}

#[test]
fn a_yaml_typo_points_at_its_line_with_a_suggestion() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), "log_evry: 10\n");
    occupied_out(tmp.path());
    let before = fingerprint(tmp.path());
    let o = kiln(tmp.path(), &["train", "run.yaml"]);
    assert_fails(
        &o,
        &[
            "config::unknown_field",
            "unknown field `log_evry`",
            "did you mean `log_every`?",
            "log_evry: 10",
        ],
    );
    assert_eq!(fingerprint(tmp.path()), before);
    // The same kind of typo through `--set`.
    let o = kiln(
        tmp.path(),
        &[
            "train",
            "run.yaml",
            "--resume",
            "--set",
            "log_evry=2",
            "--set",
            "optimizer.lrr=0.1",
        ],
    );
    assert_fails(&o, &["unknown field"]);
    assert_eq!(fingerprint(tmp.path()), before);
}

#[test]
fn a_fresh_run_refuses_an_occupied_folder() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), "");
    occupied_out(tmp.path());
    let before = fingerprint(tmp.path());
    let o = kiln(tmp.path(), &["train", "run.yaml"]);
    assert_fails(&o, &["run::out_dir_in_use", "--resume"]);
    assert_eq!(fingerprint(tmp.path()), before);
}

#[test]
fn an_unknown_executor_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), "");
    let o = kiln(tmp.path(), &["train", "run.yaml", "--executor", "gpu"]);
    assert_fails(&o, &["unknown executor `gpu`"]);
}

#[test]
fn a_checkpoint_of_another_spec_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let spec = tmp.path().join("model.kiln");
    std::fs::copy(cli_common::repo().join("specs/gpt2.kiln"), &spec).unwrap();
    write_run(tmp.path(), "");
    let set_spec = format!("spec={}", spec.display());
    let o = kiln(
        tmp.path(),
        &[
            "train",
            "run.yaml",
            "--set",
            &set_spec,
            "--set",
            "steps=2",
            "--set",
            "eval.every=0",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", cli_common::stderr(&o));

    // The spec is edited: resuming would train another model under the old weights.
    let mut text = std::fs::read_to_string(&spec).unwrap();
    text.push_str("\nconfig gpt2_other = gpt2(vocab = 96, ctx = 32, d = 32, layers = 2, heads = 4, dropout = 0.0)\n");
    std::fs::write(&spec, text).unwrap();
    let before = fingerprint(tmp.path());
    let o = kiln(
        tmp.path(),
        &[
            "train",
            "run.yaml",
            "--set",
            &set_spec,
            "--set",
            "steps=3",
            "--set",
            "eval.every=0",
            "--resume",
        ],
    );
    assert_fails(&o, &["checkpoint::incompatible", "spec now hashes to"]);
    assert_eq!(fingerprint(tmp.path()), before);

    // Evaluating it as another family's model lists what does not fit.
    let llama = format!(
        "spec={}",
        cli_common::repo().join("specs/llama.kiln").display()
    );
    let ckpt = tmp.path().join("out/ckpt-00000002.safetensors");
    let o = kiln(
        tmp.path(),
        &[
            "eval",
            "run.yaml",
            "--checkpoint",
            ckpt.to_str().unwrap(),
            "--set",
            &llama,
            "--set",
            "model=llama_tiny",
        ],
    );
    assert_fails(
        &o,
        &[
            "checkpoint::incompatible",
            "llama_tiny",
            "checkpoint::missing_tensor",
        ],
    );
    assert_eq!(fingerprint(tmp.path()), before);
}

#[test]
fn a_typo_in_a_spec_name_points_at_the_yaml() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), "set:\n  dropuot: 0.1\n");
    let o = kiln(tmp.path(), &["train", "run.yaml"]);
    assert_fails(
        &o,
        &[
            "no hyperparameter `dropuot`",
            "did you mean `dropout`?",
            "run.yaml:",
        ],
    );
    write_run(tmp.path(), "");
    let o = kiln(
        tmp.path(),
        &["train", "run.yaml", "--set", "model=gpt2_tnyi"],
    );
    assert_fails(
        &o,
        &["`gpt2_tnyi` is not a config", "did you mean `gpt2_tiny`?"],
    );
    assert!(!tmp.path().join("out").exists());
}
