//! Hugging Face checkpoint folders: every fixture `scripts/make_fixtures.py` wrote with
//! `transformers` reads back with the names and shapes Python listed, sharded equals unsharded,
//! f16/bf16 widen exactly as torch widens them, exports round-trip bit-exactly, damaged folders
//! give the right diagnostics, and (where torch is installed) `from_pretrained` loads an export
//! and reproduces the reference logits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_runtime::checkpoint::{HostTensor, TensorMap};
use kiln_runtime::hf::{
    read_checkpoint, read_safetensors, write_checkpoint, write_safetensors, HfError, StoredDtype,
    WeightsLayout,
};
use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme};

const MODELS: [&str; 3] = ["gpt2", "llama", "t5"];

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures")
}

fn code(e: &dyn Diagnostic) -> String {
    e.code().map(|c| c.to_string()).unwrap_or_default()
}

fn render(d: &dyn Diagnostic) -> String {
    let mut out = String::new();
    GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_urls(false)
        .with_width(200)
        .render_report(&mut out, d)
        .unwrap();
    out
}

/// The "Saved tensors" section of `tensors.txt`, as Python listed it: name → (dtype, shape).
fn python_listing(model: &str) -> BTreeMap<String, (String, Vec<usize>)> {
    let text = std::fs::read_to_string(fixtures().join(model).join("tensors.txt")).unwrap();
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1) {
        if line.is_empty() {
            break;
        }
        let (name, rest) = line.split_once(' ').unwrap();
        let (dtype, shape) = rest.split_once(' ').unwrap();
        let shape = shape
            .trim_matches(['[', ']'])
            .split(", ")
            .filter(|s| !s.is_empty())
            .map(|s| s.parse().unwrap())
            .collect();
        out.insert(name.to_string(), (dtype.to_string(), shape));
    }
    assert!(out.len() > 10, "{model}: listing too short");
    out
}

fn assert_bits_eq(a: &TensorMap, b: &TensorMap, what: &str) {
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "{what}: names differ"
    );
    for (name, x) in a {
        let y = &b[name];
        assert_eq!(x.shape, y.shape, "{what}: {name} shape");
        let same = x
            .data
            .iter()
            .zip(&y.data)
            .all(|(p, q)| p.to_bits() == q.to_bits());
        assert!(same, "{what}: {name} values differ");
    }
}

#[test]
fn every_fixture_reads_with_the_names_and_shapes_python_listed() {
    for model in MODELS {
        let ckpt = read_checkpoint(&fixtures().join(model)).unwrap();
        assert_eq!(ckpt.layout, WeightsLayout::Single);
        let listing = python_listing(model);
        let got: BTreeMap<String, Vec<usize>> = ckpt
            .tensors
            .iter()
            .map(|(k, t)| (k.clone(), t.shape.clone()))
            .collect();
        let want: BTreeMap<String, Vec<usize>> = listing
            .iter()
            .map(|(k, (_, s))| (k.clone(), s.clone()))
            .collect();
        assert_eq!(got, want, "{model}");
        assert!(ckpt.dtypes.values().all(|d| *d == StoredDtype::F32));
        for (name, t) in &ckpt.tensors {
            assert_eq!(
                t.data.len(),
                t.shape.iter().product::<usize>(),
                "{model} {name}"
            );
            assert!(t.data.iter().all(|x| x.is_finite()), "{model} {name}");
            assert!(
                t.data.iter().any(|x| *x != 0.0),
                "{model} {name} is all zeros"
            );
        }

        // The io fixture holds one gradient per saved parameter, shaped like it.
        let io = read_safetensors(&fixtures().join(model).join("io.safetensors")).unwrap();
        for (name, shape) in &want {
            let g = &io.floats[&format!("grad.{name}")];
            assert_eq!(&g.shape, shape, "{model} grad.{name}");
        }
        let grads = io.floats.keys().filter(|k| k.starts_with("grad.")).count();
        assert_eq!(grads, want.len(), "{model}");
        assert_eq!(io.metadata.get("format").map(String::as_str), Some("pt"));
    }
}

#[test]
fn config_accessors_read_each_family() {
    let gpt2 = read_checkpoint(&fixtures().join("gpt2")).unwrap().config;
    assert_eq!(gpt2.model_type().unwrap(), "gpt2");
    assert_eq!(gpt2.architectures(), vec!["GPT2LMHeadModel"]);
    assert_eq!(
        (
            gpt2.vocab_size().unwrap(),
            gpt2.hidden_size().unwrap(),
            gpt2.num_layers().unwrap(),
            gpt2.num_heads().unwrap()
        ),
        (96, 32, 2, 4)
    );
    assert_eq!(gpt2.opt_usize("n_inner").unwrap(), None);
    assert_eq!(gpt2.usize("n_positions").unwrap(), 32);
    assert_eq!(gpt2.norm_eps().unwrap(), 1e-5);
    assert!(gpt2.tie_word_embeddings().unwrap());

    let llama = read_checkpoint(&fixtures().join("llama")).unwrap().config;
    assert_eq!(llama.num_kv_heads().unwrap(), 2);
    assert_eq!(llama.num_heads().unwrap(), 4);
    assert_eq!(llama.usize("intermediate_size").unwrap(), 88);
    assert_eq!(llama.rope_theta().unwrap(), Some(10000.0));
    assert_eq!(llama.norm_eps().unwrap(), 1e-6);
    assert!(!llama.tie_word_embeddings().unwrap());

    let t5 = read_checkpoint(&fixtures().join("t5")).unwrap().config;
    assert_eq!(t5.hidden_size().unwrap(), 32);
    assert_eq!(t5.num_layers().unwrap(), 2);
    assert_eq!(t5.num_kv_heads().unwrap(), 4);
    assert_eq!(t5.usize("relative_attention_num_buckets").unwrap(), 8);
    assert_eq!(t5.usize("relative_attention_max_distance").unwrap(), 16);
    assert_eq!(t5.str("feed_forward_proj").unwrap(), "relu");
    assert_eq!(t5.opt_bool("scale_decoder_outputs").unwrap(), Some(true));
}

#[test]
fn sharded_checkpoint_equals_the_single_file() {
    let sharded = read_checkpoint(&fixtures().join("llama_sharded")).unwrap();
    let WeightsLayout::Sharded { shards } = &sharded.layout else {
        panic!("expected a sharded layout, got {:?}", sharded.layout);
    };
    assert_eq!(shards.len(), 4);
    assert_eq!(shards[0], "model-00001-of-00004.safetensors");
    let single = read_checkpoint(&fixtures().join("llama")).unwrap();
    assert_bits_eq(&sharded.tensors, &single.tensors, "sharded vs single");
}

/// f32 → bf16 with round-to-nearest-even, as torch's `.to(torch.bfloat16)` does.
fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    let r = b.wrapping_add(0x7fff + ((b >> 16) & 1));
    f32::from_bits(r & 0xffff_0000)
}

#[test]
fn bf16_checkpoint_widens_to_the_rounded_f32_weights() {
    let bf16 = read_checkpoint(&fixtures().join("gpt2_bf16")).unwrap();
    assert!(bf16.dtypes.values().all(|d| *d == StoredDtype::Bf16));
    let f32s = read_checkpoint(&fixtures().join("gpt2")).unwrap();
    let rounded: TensorMap = f32s
        .tensors
        .iter()
        .map(|(k, t)| {
            let data = t.data.iter().map(|x| round_bf16(*x)).collect();
            (k.clone(), HostTensor::new(t.shape.clone(), data).unwrap())
        })
        .collect();
    assert_bits_eq(&bf16.tensors, &rounded, "bf16 vs rounded f32");
    // Not vacuous: rounding changed most weights.
    let changed = f32s.tensors["transformer.wte.weight"]
        .data
        .iter()
        .zip(&bf16.tensors["transformer.wte.weight"].data)
        .filter(|(a, b)| a != b)
        .count();
    assert!(changed > 1000, "{changed}");
}

#[test]
fn half_floats_widen_exactly_as_torch_widens_them() {
    let file = read_safetensors(&fixtures().join("dtypes.safetensors")).unwrap();
    assert_eq!(file.dtypes["f16"], StoredDtype::F16);
    assert_eq!(file.dtypes["bf16"], StoredDtype::Bf16);
    for name in ["f16", "bf16"] {
        let ours = &file.floats[name];
        let torch = &file.floats[&format!("{name}.widened")];
        assert_eq!(ours.shape, torch.shape);
        for (i, (a, b)) in ours.data.iter().zip(&torch.data).enumerate() {
            assert_eq!(a.to_bits(), b.to_bits(), "{name}[{i}]: {a} vs torch {b}");
        }
    }
    // The reference holds the hard cases: subnormals, infinities, signed zero.
    let f16 = &file.floats["f16.widened"].data;
    assert!(f16.iter().any(|x| x.is_infinite()));
    assert!(f16.iter().any(|x| *x != 0.0 && x.abs() < 6.1e-5));
    assert!(f16.iter().any(|x| *x == 0.0 && x.is_sign_negative()));
    assert_eq!(file.ints["i32"].data, vec![-3, -2, -1, 0, 1, 2]);
    assert_eq!(file.ints["i32"].shape, vec![2, 3]);
}

/// Mean cross-entropy of `logits` [b, s, v] against `labels` [b, l], predicting label `t + shift`
/// from position `t`, in f64.
fn cross_entropy(logits: &HostTensor, labels: &[i64], label_len: usize, shift: usize) -> f64 {
    let (b, s, v) = (logits.shape[0], logits.shape[1], logits.shape[2]);
    let mut total = 0.0;
    let mut count = 0;
    for i in 0..b {
        for t in 0..s - shift {
            let row = &logits.data[(i * s + t) * v..(i * s + t + 1) * v];
            let max = row
                .iter()
                .fold(f64::NEG_INFINITY, |m, x| m.max(f64::from(*x)));
            let lse = max
                + row
                    .iter()
                    .map(|x| (f64::from(*x) - max).exp())
                    .sum::<f64>()
                    .ln();
            let target = labels[i * label_len + t + shift] as usize;
            total += lse - f64::from(row[target]);
            count += 1;
        }
    }
    total / count as f64
}

#[test]
fn saved_losses_follow_from_saved_logits_and_labels() {
    // Pins down what `loss` means in each io fixture (the causal LMs shift inside transformers;
    // T5 does not), so a model mapping compares like with like.
    for (model, shift, seq) in [("gpt2", 1, 8), ("llama", 1, 8), ("t5", 0, 6)] {
        let io = read_safetensors(&fixtures().join(model).join("io.safetensors")).unwrap();
        let logits = &io.floats["logits"];
        assert_eq!(logits.shape, vec![2, seq, 96], "{model}");
        let labels = &io.ints["labels"];
        assert_eq!(labels.shape, vec![2, seq], "{model}");
        assert_eq!(io.ints["input_ids"].shape, vec![2, 8], "{model}");
        let loss = &io.floats["loss"];
        assert_eq!(loss.shape, Vec::<usize>::new());
        let ours = cross_entropy(logits, &labels.data, seq, shift);
        let theirs = f64::from(loss.data[0]);
        assert!(
            (ours - theirs).abs() < 1e-5,
            "{model}: {ours} vs saved {theirs}"
        );
        // And the wrong convention would be caught.
        let wrong = cross_entropy(logits, &labels.data, seq, 1 - shift);
        assert!((wrong - theirs).abs() > 1e-3, "{model}: shift undetectable");
    }
    let t5 = read_safetensors(&fixtures().join("t5").join("io.safetensors")).unwrap();
    let dec = &t5.ints["decoder_input_ids"].data;
    let labels = &t5.ints["labels"].data;
    for i in 0..2 {
        assert_eq!(dec[i * 6], 0, "decoder starts with decoder_start_token_id");
        assert_eq!(&dec[i * 6 + 1..i * 6 + 6], &labels[i * 6..i * 6 + 5]);
    }
}

#[test]
fn exports_round_trip_bit_exactly_and_deterministically() {
    let tmp = tempfile::tempdir().unwrap();
    for model in MODELS {
        let ckpt = read_checkpoint(&fixtures().join(model)).unwrap();
        let out = tmp.path().join("exports").join(model);
        write_checkpoint(&out, &ckpt.config.value, &ckpt.tensors).unwrap();
        let back = read_checkpoint(&out).unwrap();
        assert_bits_eq(&back.tensors, &ckpt.tensors, model);
        assert_eq!(back.config.value, ckpt.config.value);
        let file = read_safetensors(&out.join("model.safetensors")).unwrap();
        assert_eq!(file.metadata.get("format").map(String::as_str), Some("pt"));

        // Writing again replaces the earlier export with identical bytes.
        let first = std::fs::read(out.join("model.safetensors")).unwrap();
        write_checkpoint(&out, &ckpt.config.value, &ckpt.tensors).unwrap();
        assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), first);
    }
    // No temporary folders are left beside the exports.
    let left: Vec<_> = std::fs::read_dir(tmp.path().join("exports"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let mut left = left;
    left.sort();
    assert_eq!(left, vec!["gpt2", "llama", "t5"]);
}

#[test]
fn export_never_deletes_foreign_files_or_writes_bad_tensors() {
    let tmp = tempfile::tempdir().unwrap();
    let ckpt = read_checkpoint(&fixtures().join("gpt2")).unwrap();
    let out = tmp.path().join("mine");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("tokenizer.json"), "{}").unwrap();
    let e = write_checkpoint(&out, &ckpt.config.value, &ckpt.tensors).unwrap_err();
    assert_eq!(code(&e), "hf::exists");
    assert!(render(&e).contains("tokenizer.json"));
    assert_eq!(
        std::fs::read_to_string(out.join("tokenizer.json")).unwrap(),
        "{}"
    );
    assert!(!out.join("model.safetensors").exists());

    let mut bad = ckpt.tensors.clone();
    bad.get_mut("transformer.ln_f.bias").unwrap().data.pop();
    let e = write_checkpoint(&tmp.path().join("bad"), &ckpt.config.value, &bad).unwrap_err();
    assert_eq!(code(&e), "hf::bad_tensor");
    assert!(e.to_string().contains("transformer.ln_f.bias"));
    assert!(!tmp.path().join("bad").exists());

    let e =
        write_checkpoint(&tmp.path().join("c"), &serde_json::json!([]), &ckpt.tensors).unwrap_err();
    assert_eq!(code(&e), "hf::config");
}

/// A copy of a fixture folder to damage.
fn copy_fixture(model: &str, to: &Path) -> PathBuf {
    let dst = to.join(model);
    std::fs::create_dir_all(&dst).unwrap();
    for entry in std::fs::read_dir(fixtures().join(model)).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), dst.join(entry.file_name())).unwrap();
    }
    dst
}

fn read_err(dir: &Path) -> HfError {
    match read_checkpoint(dir) {
        Ok(_) => panic!("`{}` should not read", dir.display()),
        Err(e) => e,
    }
}

#[test]
fn damaged_folders_give_diagnostics_naming_file_and_tensor() {
    let tmp = tempfile::tempdir().unwrap();

    let e = read_err(&tmp.path().join("nowhere"));
    assert_eq!(code(&e), "hf::io");

    // No config.
    let d = copy_fixture("gpt2", &tmp.path().join("a"));
    std::fs::remove_file(d.join("config.json")).unwrap();
    let e = read_err(&d);
    assert_eq!(code(&e), "hf::missing_file");
    assert!(render(&e).contains("config.json"));

    // Config that is not JSON.
    let d = copy_fixture("gpt2", &tmp.path().join("b"));
    std::fs::write(d.join("config.json"), "{\"n_embd\": ").unwrap();
    let e = read_err(&d);
    assert_eq!(code(&e), "hf::config");
    assert!(render(&e).contains("config.json"));

    // No weights; then only a pickle.
    let d = copy_fixture("gpt2", &tmp.path().join("c"));
    std::fs::remove_file(d.join("model.safetensors")).unwrap();
    assert_eq!(code(&read_err(&d)), "hf::missing_file");
    std::fs::write(d.join("pytorch_model.bin"), b"PK").unwrap();
    let e = read_err(&d);
    assert_eq!(code(&e), "hf::pickle");
    assert!(render(&e).contains("safe_serialization"));

    // Truncated weights, a garbage header, a file shorter than the length prefix.
    let d = copy_fixture("gpt2", &tmp.path().join("d"));
    let weights = d.join("model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    for damaged in [
        bytes[..bytes.len() - 3].to_vec(),
        [&bytes[..8], b"{not json at all".as_slice(), &bytes[24..]].concat(),
        bytes[..5].to_vec(),
        Vec::new(),
    ] {
        std::fs::write(&weights, &damaged).unwrap();
        let e = read_err(&d);
        assert_eq!(code(&e), "hf::corrupt", "{e}");
        assert!(render(&e).contains("model.safetensors"), "{}", render(&e));
    }

    // A tensor of a dtype Kiln does not load (f64), and token ids where parameters belong.
    for (dtype, elem) in [(safetensors::Dtype::F64, 8), (safetensors::Dtype::I64, 8)] {
        let d = copy_fixture("gpt2", &tmp.path().join(format!("e{elem}{dtype:?}")));
        let data = vec![0u8; 4 * elem];
        let view = safetensors::tensor::TensorView::new(dtype, vec![4], &data).unwrap();
        let bytes = safetensors::serialize([("odd.tensor", view)], None).unwrap();
        std::fs::write(d.join("model.safetensors"), bytes).unwrap();
        let e = read_err(&d);
        assert_eq!(code(&e), "hf::dtype");
        let shown = render(&e);
        assert!(
            shown.contains("odd.tensor") && shown.contains("model.safetensors"),
            "{shown}"
        );
        assert!(shown.contains(&format!("{dtype:?}")), "{shown}");
    }
}

#[test]
fn inconsistent_shard_indexes_are_diagnosed() {
    let tmp = tempfile::tempdir().unwrap();
    let index_of = |d: &Path| -> serde_json::Value {
        serde_json::from_str(
            &std::fs::read_to_string(d.join("model.safetensors.index.json")).unwrap(),
        )
        .unwrap()
    };
    let write_index = |d: &Path, v: &serde_json::Value| {
        std::fs::write(
            d.join("model.safetensors.index.json"),
            serde_json::to_string(v).unwrap(),
        )
        .unwrap()
    };

    // A shard the index names is missing.
    let d = copy_fixture("llama_sharded", &tmp.path().join("a"));
    std::fs::remove_file(d.join("model-00003-of-00004.safetensors")).unwrap();
    let e = read_err(&d);
    assert_eq!(code(&e), "hf::missing_shard");
    let shown = render(&e);
    assert!(
        shown.contains("model-00003-of-00004.safetensors")
            && shown.contains("model.layers.1.input_layernorm.weight"),
        "{shown}"
    );

    // The index puts a tensor in a shard that lacks it.
    let d = copy_fixture("llama_sharded", &tmp.path().join("b"));
    let mut index = index_of(&d);
    index["weight_map"]["model.norm.weight"] = "model-00001-of-00004.safetensors".into();
    write_index(&d, &index);
    let e = read_err(&d);
    assert_eq!(code(&e), "hf::index_mismatch");
    assert!(render(&e).contains("model.norm.weight"));

    // A shard holds a tensor the index does not list. (A shard the index never names is not
    // read at all, as `from_pretrained` ignores it too.)
    let d = copy_fixture("llama_sharded", &tmp.path().join("c"));
    let mut index = index_of(&d);
    index["weight_map"]
        .as_object_mut()
        .unwrap()
        .remove("model.norm.weight");
    write_index(&d, &index);
    let e = read_err(&d);
    assert_eq!(code(&e), "hf::index_mismatch");
    assert!(render(&e).contains("model.norm.weight"));

    // A tensor in two shards.
    let d = copy_fixture("llama_sharded", &tmp.path().join("dup"));
    let s1 = read_safetensors(&d.join("model-00001-of-00004.safetensors")).unwrap();
    let mut both = s1.floats.clone();
    let norm = read_safetensors(&d.join("model-00003-of-00004.safetensors"))
        .unwrap()
        .floats["model.norm.weight"]
        .clone();
    both.insert("model.norm.weight".into(), norm);
    write_safetensors(
        &d.join("model-00001-of-00004.safetensors"),
        &both,
        &BTreeMap::new(),
    )
    .unwrap();
    let e = read_err(&d);
    assert_eq!(code(&e), "hf::duplicate_tensor");
    assert!(render(&e).contains("model.norm.weight"));

    // Shard names may not leave the folder; the index must be JSON with a weight map.
    let d = copy_fixture("llama_sharded", &tmp.path().join("e"));
    let mut index = index_of(&d);
    index["weight_map"]["model.norm.weight"] = "../llama/model.safetensors".into();
    write_index(&d, &index);
    assert_eq!(code(&read_err(&d)), "hf::index");
    for text in [
        "[",
        "{}",
        "{\"weight_map\": {}}",
        "{\"weight_map\": {\"a\": 3}}",
    ] {
        std::fs::write(d.join("model.safetensors.index.json"), text).unwrap();
        let e = read_err(&d);
        assert_eq!(code(&e), "hf::index", "{text}");
        assert!(render(&e).contains("model.safetensors.index.json"));
    }
}

fn python_with_torch() -> Option<String> {
    let python = std::env::var("KILN_PYTHON").unwrap_or_else(|_| "python3".to_string());
    let ok = Command::new(&python)
        .args(["-c", "import torch, transformers, safetensors"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    ok.then_some(python)
}

const FROM_PRETRAINED: &str = r#"
import sys
import torch
import transformers
from safetensors.torch import load_file

classes = {
    "gpt2": transformers.GPT2LMHeadModel,
    "llama": transformers.LlamaForCausalLM,
    "t5": transformers.T5ForConditionalGeneration,
}
fixtures, exports = sys.argv[1], sys.argv[2]
failed = False
for name, cls in classes.items():
    model, info = cls.from_pretrained(f"{exports}/{name}", output_loading_info=True,
                                      attn_implementation="eager")
    problems = {k: v for k, v in info.items() if v}
    io = load_file(f"{fixtures}/{name}/io.safetensors")
    inputs = {k: io[k] for k in ("input_ids", "decoder_input_ids", "labels") if k in io}
    model = model.double().eval()
    with torch.no_grad():
        out = model(**inputs)
    err = (out.logits.float() - io["logits"]).abs().max().item()
    loss_err = abs(out.loss.item() - io["loss"].item())
    print(f"{name}: max |logits - reference| = {err:.3g}, |loss - reference| = {loss_err:.3g}, loading problems {problems}")
    if problems or not err < 1e-5 or not loss_err < 1e-5:
        failed = True
sys.exit(1 if failed else 0)
"#;

#[test]
fn transformers_loads_an_export_and_reproduces_the_logits() {
    let Some(python) = python_with_torch() else {
        println!("skipped: torch not installed (no `python3` that imports torch and transformers; set KILN_PYTHON to choose one)");
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    for model in MODELS {
        let ckpt = read_checkpoint(&fixtures().join(model)).unwrap();
        write_checkpoint(&tmp.path().join(model), &ckpt.config.value, &ckpt.tensors).unwrap();
    }
    let out = Command::new(python)
        .args(["-c", FROM_PRETRAINED])
        .arg(fixtures())
        .arg(tmp.path())
        .env("HF_HUB_OFFLINE", "1")
        .env("TRANSFORMERS_VERBOSITY", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "from_pretrained check failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        stdout.lines().filter(|l| l.contains("max |logits")).count(),
        3
    );
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, .. Default::default() })]

    /// Any bytes damaged anywhere in a real file (header or data) read as a value or an error,
    /// never a panic; a damaged header length or JSON is always an error.
    #[test]
    fn damaged_safetensors_never_panic(
        edits in proptest::collection::vec((0usize..4096, proptest::prelude::any::<u8>()), 1..6),
        cut in proptest::option::of(0usize..130_000),
    ) {
        let mut bytes = std::fs::read(fixtures().join("dtypes.safetensors")).unwrap();
        let mut header_damaged = false;
        for (at, byte) in edits {
            let at = at % bytes.len();
            header_damaged |= at < 8 && bytes[at] != byte;
            bytes[at] = byte;
        }
        if let Some(cut) = cut {
            bytes.truncate(cut % bytes.len());
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.safetensors");
        std::fs::write(&path, &bytes).unwrap();
        let result = read_safetensors(&path);
        if header_damaged || cut.is_some() {
            proptest::prop_assert!(result.is_err());
        }
        if let Err(e) = result {
            proptest::prop_assert!(render(&e).contains("x.safetensors"));
        }
    }
}
