//! Checkpoints: round trip, determinism, atomic writes, retention, corrupt files and
//! model-mismatch diagnostics.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_runtime::checkpoint::{
    load_checkpoint, save_checkpoint, spec_hash, write_atomic, Checkpoint, CheckpointDir,
    CheckpointMeta, HostTensor, ModelSignature, TensorMap,
};
use kiln_runtime::data::{BatchSampler, SamplerStream};
use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme};

fn code(e: &dyn Diagnostic) -> String {
    e.code().map(|c| c.to_string()).unwrap_or_default()
}

fn render(d: &dyn Diagnostic) -> String {
    let mut out = String::new();
    GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_urls(false)
        .with_width(160)
        .render_report(&mut out, d)
        .unwrap();
    out
}

fn tensor(shape: &[usize], seed: f32) -> HostTensor {
    let n: usize = shape.iter().product();
    HostTensor::new(
        shape.to_vec(),
        (0..n).map(|i| seed + i as f32 * 0.25 - 3.0).collect(),
    )
    .unwrap()
}

fn sample(step: u64) -> Checkpoint {
    let mut params = TensorMap::new();
    params.insert("wte".into(), tensor(&[65, 8], 1.0));
    params.insert("h.0.attn.w".into(), tensor(&[8, 24], 2.0));
    params.insert("ln_f.b".into(), tensor(&[8], 3.0));
    let opt_m = params
        .iter()
        .map(|(k, t)| (k.clone(), tensor(&t.shape, -1.0)))
        .collect();
    let opt_v = params
        .iter()
        .map(|(k, t)| (k.clone(), tensor(&t.shape, 0.5)))
        .collect();
    let mut sampler = BatchSampler::new(1337, SamplerStream::Train, 2, 4);
    let tokens = kiln_runtime::data::Tokens::from_vec((0..100).collect());
    sampler.next_batch(&tokens, "train").unwrap();
    let mut samplers = BTreeMap::new();
    samplers.insert("train".to_string(), sampler.state());
    let mut extra = BTreeMap::new();
    extra.insert("dropout_rng".to_string(), "12345".to_string());
    Checkpoint {
        meta: CheckpointMeta {
            spec_path: "specs/gpt2.kiln".into(),
            spec_hash: spec_hash("model gpt2() {}"),
            model: "gpt2_char_tiny".into(),
            step,
            seed: 1337,
            samplers,
            tokenizer: r#"{"kind":"byte"}"#.into(),
            config_yaml: "spec: specs/gpt2.kiln\nmodel: gpt2_char_tiny\n".into(),
            extra,
        },
        params,
        opt_m,
        opt_v,
    }
}

fn signature(c: &Checkpoint) -> ModelSignature {
    ModelSignature {
        spec_hash: Some(c.meta.spec_hash.clone()),
        model: c.meta.model.clone(),
        params: c
            .params
            .iter()
            .map(|(k, t)| (k.clone(), t.shape.clone()))
            .collect(),
    }
}

#[test]
fn round_trip_is_exact_and_bytes_are_deterministic() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.safetensors");
    let b = dir.path().join("b.safetensors");
    let c = sample(500);
    save_checkpoint(&a, &c).unwrap();
    save_checkpoint(&b, &c).unwrap();
    assert_eq!(std::fs::read(&a).unwrap(), std::fs::read(&b).unwrap());
    let back = load_checkpoint(&a).unwrap();
    assert_eq!(back, c);
    back.check_compatible(&a, &signature(&c)).unwrap();

    // The file is plain safetensors: the reference reader sees the names and values.
    let bytes = std::fs::read(&a).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut names = st.names();
    names.sort();
    assert_eq!(
        names,
        vec![
            "h.0.attn.w",
            "ln_f.b",
            "opt.m.h.0.attn.w",
            "opt.m.ln_f.b",
            "opt.m.wte",
            "opt.v.h.0.attn.w",
            "opt.v.ln_f.b",
            "opt.v.wte",
            "wte"
        ]
    );
    let wte = st.tensor("wte").unwrap();
    assert_eq!(wte.shape(), &[65, 8]);
    assert_eq!(&wte.data()[4..8], &(1.0f32 + 0.25 - 3.0).to_le_bytes());
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = meta.metadata().clone().unwrap();
    assert_eq!(meta["step"], "500");
    assert_eq!(meta["model"], "gpt2_char_tiny");
    assert!(meta["sampler.train"].starts_with("chacha8:"));
}

#[test]
fn a_failed_or_interrupted_write_never_replaces_the_good_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let ckpts = CheckpointDir::open(dir.path(), 2).unwrap();
    let good = ckpts.save(&sample(100)).unwrap();
    let good_bytes = std::fs::read(&good).unwrap();

    // A write that fails halfway leaves the target as it was and no temporary file behind.
    let result = write_atomic(&good, |w| {
        w.write_all(b"partial garbage")?;
        Err(std::io::Error::other("disk full"))
    });
    assert_eq!(code(&result.unwrap_err()), "checkpoint::io");
    assert_eq!(std::fs::read(&good).unwrap(), good_bytes);
    assert!(!dir.path().join(".tmp-ckpt-00000100.safetensors").exists());

    // A crash after writing the temporary file but before the rename: the stale temp is
    // ignored by `latest`, and removed when the folder is opened again.
    let stale = dir.path().join(".tmp-ckpt-00000200.safetensors");
    std::fs::write(&stale, b"torn write").unwrap();
    let stale_latest = dir.path().join(".tmp-latest");
    std::fs::write(&stale_latest, b"ckpt-00000200.safetensors\n").unwrap();
    let (path, loaded) = ckpts.load_latest().unwrap().unwrap();
    assert_eq!(path, good);
    assert_eq!(loaded.meta.step, 100);
    let reopened = CheckpointDir::open(dir.path(), 2).unwrap();
    assert!(!stale.exists() && !stale_latest.exists());
    assert_eq!(reopened.latest().unwrap(), Some(good.clone()));

    // Writing the same step again goes through a fresh temp file and replaces atomically.
    std::fs::write(dir.path().join(".tmp-ckpt-00000100.safetensors"), b"junk").unwrap();
    reopened.save(&sample(100)).unwrap();
    assert_eq!(std::fs::read(&good).unwrap(), good_bytes);
}

#[test]
fn the_folder_keeps_the_newest_and_points_at_the_latest() {
    let dir = tempfile::tempdir().unwrap();
    let ckpts = CheckpointDir::open(dir.path(), 2).unwrap();
    assert_eq!(ckpts.latest().unwrap(), None);
    for step in [100, 200, 300] {
        ckpts.save(&sample(step)).unwrap();
    }
    let steps: Vec<u64> = ckpts.list().unwrap().into_iter().map(|(s, _)| s).collect();
    assert_eq!(steps, vec![200, 300]);
    assert_eq!(
        std::fs::read_to_string(dir.path().join("latest")).unwrap(),
        "ckpt-00000300.safetensors\n"
    );
    let (_, c) = ckpts.load_latest().unwrap().unwrap();
    assert_eq!(c.meta.step, 300);

    std::fs::write(dir.path().join("latest"), "ckpt-00000900.safetensors\n").unwrap();
    let err = ckpts.latest().unwrap_err();
    assert_eq!(code(&err), "checkpoint::latest");
    assert!(err.to_string().contains("latest"));
}

#[test]
fn corrupt_files_are_diagnostics() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.safetensors");
    save_checkpoint(&good, &sample(1)).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    let bad = dir.path().join("bad.safetensors");

    let mut huge_header = bytes.clone();
    huge_header[..8].copy_from_slice(&u64::MAX.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", vec![]),
        ("text", b"definitely not safetensors".to_vec()),
        ("truncated", bytes[..bytes.len() - 10].to_vec()),
        ("header length", huge_header),
    ];
    for (what, content) in cases {
        std::fs::write(&bad, content).unwrap();
        let err = load_checkpoint(&bad).unwrap_err();
        assert_eq!(code(&err), "checkpoint::corrupt", "{what}: {err}");
        assert!(render(&err).contains("bad.safetensors"), "{what}");
    }

    let err = load_checkpoint(&dir.path().join("absent.safetensors")).unwrap_err();
    assert_eq!(code(&err), "checkpoint::io");

    // A valid safetensors file from elsewhere: no Kiln metadata, or a non-f32 tensor.
    let data = vec![0u8; 8];
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![4], &data).unwrap();
    let foreign = safetensors::serialize(vec![("w", view.clone())], None).unwrap();
    std::fs::write(&bad, foreign).unwrap();
    let err = load_checkpoint(&bad).unwrap_err();
    assert_eq!(code(&err), "checkpoint::metadata");
    assert!(err.to_string().contains("kiln.format"));

    let mut meta = std::collections::HashMap::new();
    for (k, v) in [
        ("kiln.format", "1"),
        ("spec_path", "s"),
        ("spec_hash", "h"),
        ("model", "m"),
        ("step", "1"),
        ("seed", "1"),
        ("tokenizer", "{}"),
        ("config", ""),
    ] {
        meta.insert(k.to_string(), v.to_string());
    }
    let half = safetensors::serialize(vec![("w", view)], Some(meta)).unwrap();
    std::fs::write(&bad, half).unwrap();
    let err = load_checkpoint(&bad).unwrap_err();
    assert_eq!(code(&err), "checkpoint::dtype");
    assert!(err.to_string().contains("`w`"));
}

#[test]
fn mismatches_name_every_tensor_and_both_shapes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ckpt.safetensors");
    let c = sample(7);
    save_checkpoint(&path, &c).unwrap();
    let loaded = load_checkpoint(&path).unwrap();

    let mut expected = signature(&c);
    expected.params.insert("h.0.attn.w".into(), vec![8, 32]);
    expected.params.remove("ln_f.b");
    expected.params.insert("lm_head.w".into(), vec![8, 65]);
    expected.model = "gpt2_small".into();
    expected.spec_hash = Some(spec_hash("model gpt2(d = 768) {}"));
    let err = loaded.check_compatible(&path, &expected).unwrap_err();
    assert_eq!(code(&err), "checkpoint::incompatible");
    let shown = render(&err);
    for needle in [
        "checkpoint::shape_mismatch",
        "tensor `h.0.attn.w` has shape [8, 24] in the checkpoint but [8, 32] in the model",
        "tensor `opt.m.h.0.attn.w` has shape [8, 24]",
        "checkpoint::missing_tensor",
        "tensor `lm_head.w` (shape [8, 65]) is missing",
        "checkpoint::extra_tensor",
        "tensor `ln_f.b` (shape [8]) in the checkpoint is not a parameter",
        "tensor `opt.v.ln_f.b`",
        "checkpoint::model_mismatch",
        "checkpoint::spec_mismatch",
        "ckpt.safetensors",
    ] {
        assert!(shown.contains(needle), "missing {needle:?} in\n{shown}");
    }

    // No optimizer state at all is fine (fine-tuning with a fresh optimizer); partial is not.
    let mut fresh = loaded.clone();
    fresh.opt_m.clear();
    fresh.opt_v.clear();
    fresh.check_compatible(&path, &signature(&c)).unwrap();
    let mut partial = loaded.clone();
    partial.opt_v.remove("wte");
    let err = partial.check_compatible(&path, &signature(&c)).unwrap_err();
    assert!(render(&err).contains("`opt.v.wte`"));

    // Skipping the spec check (an edited spec) still checks the rest.
    let mut relaxed = signature(&c);
    relaxed.spec_hash = None;
    let mut edited = loaded;
    edited.meta.spec_hash = "fnv1a64:0000000000000000".into();
    edited.check_compatible(&path, &relaxed).unwrap();
}

#[test]
fn bad_tensors_are_refused_at_save() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let mut c = sample(1);
    c.params.insert(
        "bad".into(),
        HostTensor {
            shape: vec![2, 2],
            data: vec![0.0; 3],
        },
    );
    let err = save_checkpoint(&path, &c).unwrap_err();
    assert_eq!(code(&err), "checkpoint::bad_tensor");
    let mut c = sample(1);
    c.params.insert("opt.m.x".into(), tensor(&[1], 0.0));
    assert_eq!(
        code(&save_checkpoint(&path, &c).unwrap_err()),
        "checkpoint::reserved_name"
    );
    assert!(!Path::new(&path).exists());
}
