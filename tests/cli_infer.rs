//! `kiln generate`, `kiln eval` and `kiln data prepare` through the built binary.

mod cli_common;

use cli_common::{assert_fails, kiln, stderr, stdout, write_run};

#[test]
fn generate_and_eval_a_trained_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), "");
    let o = kiln(
        tmp.path(),
        &[
            "train",
            "run.yaml",
            "--set",
            "steps=3",
            "--set",
            "eval.every=0",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let ckpt = tmp.path().join("out/ckpt-00000003.safetensors");
    let ckpt = ckpt.to_str().unwrap();

    let gen = |seed: &str| {
        let o = kiln(
            tmp.path(),
            &[
                "generate", ckpt, "--prompt", "ROMEO:", "--tokens", "16", "--top-k", "8", "--seed",
                seed,
            ],
        );
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        stdout(&o)
    };
    let a = gen("5");
    assert_eq!(a, gen("5"), "seeded generation repeats");
    assert!(a.starts_with("ROMEO:"), "{a}");
    assert_eq!(
        a.trim_end_matches('\n').chars().count(),
        "ROMEO:".len() + 16,
        "{a:?}"
    );
    // A prompt character the tokenizer never saw.
    let o = kiln(
        tmp.path(),
        &["generate", ckpt, "--prompt", "\u{263A}", "--tokens", "4"],
    );
    assert_fails(&o, &["tokenizer::unknown_char"]);

    let o = kiln(
        tmp.path(),
        &[
            "eval",
            "run.yaml",
            "--checkpoint",
            ckpt,
            "--json",
            "--max-batches",
            "3",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    let loss = v["loss"].as_f64().unwrap();
    assert!(loss > 0.0 && loss < 6.0, "{v}");
    assert!((v["perplexity"].as_f64().unwrap() - loss.exp()).abs() < 1e-9 * loss.exp());
    assert_eq!(v["tokens"], 3 * 2 * 8);

    let tasks = cli_common::repo().join("data/tasks");
    let o = kiln(
        tmp.path(),
        &[
            "eval",
            "run.yaml",
            "--checkpoint",
            ckpt,
            "--task",
            "shakespeare_nextline",
            "--limit",
            "2",
            "--json",
            "--tasks-dir",
            tasks.to_str().unwrap(),
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(r["task"], "shakespeare_nextline");
    assert_eq!(r["n"], 2);
    assert!(
        r["metrics"]["acc"].is_number() && r["metrics"]["acc_norm"].is_number(),
        "{r}"
    );
}

#[test]
fn a_prepared_token_file_trains_like_the_text_it_came_from() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), "");
    let o = kiln(
        tmp.path(),
        &["data", "prepare", "corpus.txt", "--out", "corpus.tok"],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("vocabulary"), "{}", stderr(&o));
    let short = ["--set", "steps=2", "--set", "eval.every=1"];
    let o = kiln(
        tmp.path(),
        &[&["train", "run.yaml", "--out", "text"][..], &short].concat(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = kiln(
        tmp.path(),
        &[
            &[
                "train",
                "run.yaml",
                "--out",
                "tok",
                "--set",
                "data.path=null",
                "--set",
                "data.val_fraction=null",
                "--set",
                "data.token_file=corpus.tok",
            ][..],
            &short,
        ]
        .concat(),
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let a = std::fs::read_to_string(tmp.path().join("text/metrics.jsonl")).unwrap();
    let b = std::fs::read_to_string(tmp.path().join("tok/metrics.jsonl")).unwrap();
    assert_eq!(a.lines().count(), 3);
    assert_eq!(a, b);
    // A missing input is a diagnostic.
    let o = kiln(
        tmp.path(),
        &["data", "prepare", "nothing.txt", "--out", "x.tok"],
    );
    assert_fails(&o, &["data::missing_file"]);
    assert!(!tmp.path().join("x.tok").exists());
}
