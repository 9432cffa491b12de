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
            "6",
            "--json",
            "--tasks-dir",
            tasks.to_str().unwrap(),
            "--log-samples",
            "samples",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: serde_json::Value = serde_json::from_str(stdout(&o).trim()).unwrap();
    assert_eq!(r["task"], "shakespeare_nextline");
    assert_eq!(r["n"], 6);
    assert!(
        r["metrics"]["acc"].is_number() && r["metrics"]["acc_norm"].is_number(),
        "{r}"
    );
    // One record per example, in order, agreeing with the reported accuracy and the task file.
    let text =
        std::fs::read_to_string(tmp.path().join("samples/shakespeare_nextline.jsonl")).unwrap();
    let docs: Vec<serde_json::Value> =
        std::fs::read_to_string(tasks.join("shakespeare_nextline.jsonl"))
            .unwrap()
            .lines()
            .take(6)
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    let recs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 6);
    let mut hits = 0.0;
    for (i, (rec, doc)) in recs.iter().zip(&docs).enumerate() {
        assert_eq!(rec["doc"], i);
        assert_eq!(rec["label"], doc["label"]);
        let ll: Vec<f64> = rec["logliks"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap())
            .collect();
        assert_eq!(ll.len(), 4);
        let best = (0..4).fold(0, |b, j| if ll[j] > ll[b] { j } else { b });
        assert_eq!(rec["pred"], best);
        assert_eq!(rec["acc"], u8::from(rec["pred"] == rec["label"]));
        hits += rec["acc"].as_f64().unwrap();
    }
    assert!(
        (r["metrics"]["acc"].as_f64().unwrap() - hits / 6.0).abs() < 1e-12,
        "{r}"
    );
    // Without a task there are no examples to record.
    let o = kiln(
        tmp.path(),
        &[
            "eval",
            "run.yaml",
            "--checkpoint",
            ckpt,
            "--log-samples",
            "s2",
        ],
    );
    assert_fails(&o, &["cli::usage", "--task"]);
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
