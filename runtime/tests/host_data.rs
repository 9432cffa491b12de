//! Data: nanoGPT's char vocabulary and split on Tiny Shakespeare, corpus diagnostics, token
//! files, tokenizer.json, and the batch sampler's determinism and resume.

use std::path::{Path, PathBuf};

use kiln_runtime::config::{DataSource, TokenizerConfig};
use kiln_runtime::data::{
    load_dataset, prepare_token_file, tokenize_corpus, BatchSampler, DataError, SamplerState,
    SamplerStream, SequentialBatches, TokenFile, Tokens,
};
use kiln_runtime::tokenizer::Tokenizer;
use miette::Diagnostic;

fn shakespeare() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../data/tinyshakespeare.txt")
}

fn code(e: &dyn Diagnostic) -> String {
    e.code().map(|c| c.to_string()).unwrap_or_default()
}

#[test]
fn char_tokenizer_matches_nanogpt_on_tiny_shakespeare() {
    let (tok, train, val) = tokenize_corpus(&shakespeare(), &TokenizerConfig::Char, 0.1).unwrap();
    let Tokenizer::Char(c) = &tok else {
        panic!("expected a char tokenizer")
    };
    // nanoGPT's data/shakespeare_char/prepare.py prints these.
    let vocab: String = c.chars().iter().collect();
    assert_eq!(
        vocab,
        "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
    );
    assert_eq!(tok.vocab_size(), 65);
    assert_eq!(train.len(), 1_003_854);
    assert_eq!(val.len(), 111_540);
    // The ids of "First Citizen:\n" and "hii there" in Karpathy's notebook.
    assert_eq!(
        &train[..15],
        &[18, 47, 56, 57, 58, 1, 15, 47, 58, 47, 64, 43, 52, 10, 0]
    );
    assert_eq!(
        tok.encode("hii there").unwrap(),
        vec![46, 47, 47, 1, 58, 46, 43, 56, 43]
    );
    // The saved form restores the same vocabulary.
    let back = Tokenizer::from_json(&tok.to_json()).unwrap();
    assert_eq!(back, tok);
    assert_eq!(back.decode(&train[..14]).unwrap(), "First Citizen:");
}

#[test]
fn corpus_problems_are_diagnostics_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.txt");
    let err = tokenize_corpus(&missing, &TokenizerConfig::Char, 0.1).unwrap_err();
    assert_eq!(code(&err), "data::missing_file");
    assert!(err.to_string().contains("missing.txt"));

    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let err = tokenize_corpus(&empty, &TokenizerConfig::Char, 0.1).unwrap_err();
    assert_eq!(code(&err), "data::empty");
    assert!(err.to_string().contains("empty.txt"));

    let binary = dir.path().join("bin.txt");
    std::fs::write(&binary, b"ab\ncd\xffef").unwrap();
    let err = tokenize_corpus(&binary, &TokenizerConfig::Char, 0.1).unwrap_err();
    assert_eq!(code(&err), "data::invalid_utf8");
    assert!(matches!(
        err,
        DataError::InvalidUtf8 {
            offset: 5,
            line: 2,
            column: 3,
            ..
        }
    ));
    assert!(err.to_string().contains("bin.txt"));
    // Bytes need no UTF-8; the split is on bytes.
    let (tok, train, val) = tokenize_corpus(&binary, &TokenizerConfig::Byte, 0.25).unwrap();
    assert_eq!(tok.vocab_size(), 256);
    assert_eq!(train, vec![97, 98, 10, 99, 100, 255]);
    assert_eq!(val, vec![101, 102]);

    let err = tokenize_corpus(&binary, &TokenizerConfig::Byte, 1.0).unwrap_err();
    assert_eq!(code(&err), "data::val_fraction");
}

#[test]
fn token_file_round_trips_and_rejects_damage() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("shakespeare.tok");
    let report = prepare_token_file(&shakespeare(), &TokenizerConfig::Char, 0.1, &out).unwrap();
    assert_eq!(
        (
            report.vocab_size,
            report.train_tokens,
            report.val_tokens,
            report.token_bytes
        ),
        (65, 1_003_854, 111_540, 2)
    );
    assert!(!dir.path().join(".tmp-shakespeare.tok").exists());

    let mapped = load_dataset(&DataSource::TokenFile { path: out.clone() }).unwrap();
    let direct = load_dataset(&DataSource::Text {
        path: shakespeare(),
        val_fraction: 0.1,
        tokenizer: TokenizerConfig::Char,
    })
    .unwrap();
    assert_eq!(mapped.tokenizer, direct.tokenizer);
    assert_eq!(mapped.train.to_vec(), direct.train.to_vec());
    assert_eq!(mapped.val.to_vec(), direct.val.to_vec());

    // Batches from the mapped file equal batches from memory.
    let mut a = BatchSampler::new(3, SamplerStream::Train, 4, 16);
    let mut b = BatchSampler::new(3, SamplerStream::Train, 4, 16);
    for _ in 0..5 {
        assert_eq!(
            a.next_batch(&mapped.train, "train").unwrap(),
            b.next_batch(&direct.train, "train").unwrap()
        );
    }

    let bytes = std::fs::read(&out).unwrap();
    let damaged = dir.path().join("damaged.tok");
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("not a token file", b"hello world, this is text".to_vec()),
        ("truncated", bytes[..bytes.len() - 3].to_vec()),
        ("bad version", {
            let mut b = bytes.clone();
            b[8] = 9;
            b
        }),
        ("id out of range", {
            let mut b = bytes.clone();
            let n = b.len();
            b[n - 2] = 200; // the last token becomes 200 (little-endian u16)
            b[n - 1] = 0;
            b
        }),
    ];
    for (what, content) in cases {
        std::fs::write(&damaged, content).unwrap();
        let err = TokenFile::open(&damaged).unwrap_err();
        assert_eq!(code(&err), "data::token_file", "{what}: {err}");
        assert!(err.to_string().contains("damaged.tok"), "{what}: {err}");
    }
}

#[test]
fn tokenizer_json_loads_from_disk_and_saves() {
    let dir = tempfile::tempdir().unwrap();
    let json = r#"{
      "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
      "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
      "decoder": null,
      "model": {"type": "WordLevel", "vocab": {"[UNK]": 0, "hello": 1, "world": 2, "!": 3},
                "unk_token": "[UNK]"}
    }"#;
    let path = dir.path().join("tokenizer.json");
    std::fs::write(&path, json).unwrap();
    let corpus = dir.path().join("c.txt");
    std::fs::write(&corpus, "hello world ! hello hello world world !").unwrap();
    let (tok, train, val) =
        tokenize_corpus(&corpus, &TokenizerConfig::TokenizerJson(path.clone()), 0.2).unwrap();
    assert_eq!(tok.vocab_size(), 4);
    // 39 characters: the split is at character int(39 * 0.8) = 31, after the second "world".
    assert_eq!(train, vec![1, 2, 3, 1, 1, 2]);
    assert_eq!(val, vec![2, 3]);
    let back = Tokenizer::from_json(&tok.to_json()).unwrap();
    assert_eq!(back.encode("world hello").unwrap(), vec![2, 1]);

    std::fs::write(&path, "{not json").unwrap();
    let err = tokenize_corpus(&corpus, &TokenizerConfig::TokenizerJson(path), 0.2).unwrap_err();
    assert_eq!(code(&err), "tokenizer::load");
}

#[test]
fn sampler_draws_nanogpt_windows_deterministically() {
    // Tokens equal to their positions make each row's offset visible.
    let n = 40;
    let t = 8;
    let tokens = Tokens::from_vec((0..n as u32).collect());
    let mut s = BatchSampler::new(1337, SamplerStream::Train, 4, t);
    let mut offsets = std::collections::BTreeSet::new();
    for _ in 0..100 {
        let b = s.next_batch(&tokens, "train").unwrap();
        assert_eq!((b.rows, b.seq_len), (4, t));
        for r in 0..4 {
            let x = &b.inputs[r * t..(r + 1) * t];
            let y = &b.targets[r * t..(r + 1) * t];
            let i = x[0] as usize;
            assert!(i < n - t, "offset {i} outside randint(len - T)");
            assert_eq!(x, (i as u32..(i + t) as u32).collect::<Vec<_>>());
            assert_eq!(y, (i as u32 + 1..(i + t + 1) as u32).collect::<Vec<_>>());
            offsets.insert(i);
        }
    }
    // 400 draws from 32 offsets reach every one of them.
    assert_eq!(offsets.len(), n - t);

    // Same seed and stream → same batches; another stream or seed → different ones.
    let draw = |seed, stream| {
        let mut s = BatchSampler::new(seed, stream, 4, t);
        (0..3)
            .map(|_| s.next_batch(&tokens, "train").unwrap().inputs)
            .collect::<Vec<_>>()
    };
    assert_eq!(draw(1, SamplerStream::Train), draw(1, SamplerStream::Train));
    assert_ne!(
        draw(1, SamplerStream::Train),
        draw(1, SamplerStream::ValEval)
    );
    assert_ne!(draw(1, SamplerStream::Train), draw(2, SamplerStream::Train));

    let short = Tokens::from_vec(vec![1; t]);
    let err = s.next_batch(&short, "val").unwrap_err();
    assert_eq!(code(&err), "data::too_short");
    assert!(err.to_string().contains("val split has 8 tokens"));
}

#[test]
fn sampler_state_restores_the_exact_stream() {
    let tokens = Tokens::from_vec((0..10_000u32).map(|i| i * 7 % 65).collect());
    let mut run = BatchSampler::new(42, SamplerStream::Train, 3, 16);
    for _ in 0..17 {
        run.next_batch(&tokens, "train").unwrap();
    }
    let saved = run.state().to_string();
    let rest: Vec<_> = (0..20)
        .map(|_| run.next_batch(&tokens, "train").unwrap())
        .collect();

    let state: SamplerState = saved.parse().unwrap();
    let mut resumed = BatchSampler::from_state(&state, 3, 16);
    let again: Vec<_> = (0..20)
        .map(|_| resumed.next_batch(&tokens, "train").unwrap())
        .collect();
    assert_eq!(again, rest);
    assert_eq!(resumed.state(), run.state());
}

#[test]
fn sequential_batches_cover_the_split_once() {
    let tokens = Tokens::from_vec((0..103u32).collect());
    let seq = SequentialBatches::new(&tokens, 4, 10);
    assert_eq!(seq.windows(), 10);
    let batches: Vec<_> = seq.collect();
    assert_eq!(
        batches.iter().map(|b| b.rows).collect::<Vec<_>>(),
        vec![4, 4, 2]
    );
    let inputs: Vec<u32> = batches.iter().flat_map(|b| b.inputs.clone()).collect();
    let targets: Vec<u32> = batches.iter().flat_map(|b| b.targets.clone()).collect();
    assert_eq!(inputs, (0..100).collect::<Vec<_>>());
    assert_eq!(targets, (1..101).collect::<Vec<_>>());
    assert_eq!(
        SequentialBatches::new(&Tokens::from_vec(vec![1; 10]), 4, 10).count(),
        0
    );
}
