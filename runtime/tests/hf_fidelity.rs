//! Numerical fidelity against `transformers`: each fixture in `fixtures/{gpt2,llama,t5}` is
//! imported through its family's mapping and run on the batch `scripts/make_fixtures.py` saved;
//! logits, loss and every parameter's gradient are compared with the reference (computed in f64
//! by PyTorch, stored as f32). Also: export round-trips bit-exactly, sharded and bf16 folders
//! import, and a broken folder's diagnostics name the tensor and both shapes.

use std::path::{Path, PathBuf};

use kiln_runtime::checkpoint::{HostTensor, TensorMap};
use kiln_runtime::hf::model::{export, import, reference_outputs, SpecModel};
use kiln_runtime::hf::{read_checkpoint, read_safetensors, write_checkpoint};
use kiln_runtime::session::Executor;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn max_abs_diff(a: &HostTensor, b: &HostTensor) -> f64 {
    assert_eq!(a.shape, b.shape);
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
        .fold(0.0, f64::max)
}

fn rel_err(g: &HostTensor, r: &HostTensor) -> f64 {
    assert_eq!(g.shape, r.shape);
    let num: f64 = g
        .data
        .iter()
        .zip(&r.data)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    let den: f64 = r.data.iter().map(|y| f64::from(*y).powi(2)).sum();
    num.sqrt() / den.sqrt().max(1e-30)
}

/// Imports `fixtures/<name>`, runs it on `executor` and checks every figure; prints them.
fn check_fixture(name: &str, executor: Executor) {
    let dir = root().join("fixtures").join(name);
    let spec = root().join("specs").join(format!("{name}.kiln"));
    let ckpt = import(&spec, name, &dir).unwrap_or_else(|e| panic!("{name}: import: {e:?}"));
    let io = read_safetensors(&dir.join("io.safetensors")).unwrap();
    let model = SpecModel::of_checkpoint(Path::new("imported"), &ckpt).unwrap();
    let out = reference_outputs(&model, &ckpt.params, &io, true, executor)
        .unwrap_or_else(|e| panic!("{name}: run: {e:?}"));
    let out = out.tensors;
    let logit_diff = max_abs_diff(&out["logits"], &io.floats["logits"]);
    let loss = f64::from(out["loss"].data[0]);
    let loss_ref = f64::from(io.floats["loss"].data[0]);
    let loss_rel = (loss - loss_ref).abs() / loss_ref.abs();
    let mut worst = (String::new(), 0.0f64);
    let mut count = 0;
    for (k, r) in &io.floats {
        let Some(p) = k.strip_prefix("grad.") else {
            continue;
        };
        let g = out
            .get(k)
            .unwrap_or_else(|| panic!("{name}: no gradient for `{p}`"));
        let e = rel_err(g, r);
        count += 1;
        assert!(
            e <= 1e-4,
            "{name} ({executor}): grad of `{p}` rel error {e:e}"
        );
        if e > worst.1 {
            worst = (p.to_string(), e);
        }
    }
    let produced = out.keys().filter(|k| k.starts_with("grad.")).count();
    assert_eq!(
        produced, count,
        "{name}: gradient names differ from the reference's"
    );
    println!(
        "{name} ({executor}): logits max abs diff {logit_diff:.3e}, loss {loss:.7} vs {loss_ref:.7} (rel {loss_rel:.3e}), {count} gradients, worst rel error {:.3e} (`{}`)",
        worst.1, worst.0
    );
    assert!(
        logit_diff <= 1e-4,
        "{name}: logits differ by {logit_diff:e}"
    );
    assert!(loss_rel <= 1e-5, "{name}: loss rel diff {loss_rel:e}");
}

#[test]
fn gpt2_matches_transformers() {
    check_fixture("gpt2", Executor::Interp);
}

#[test]
fn llama_gqa_matches_transformers() {
    check_fixture("llama", Executor::Interp);
}

#[test]
fn t5_matches_transformers() {
    check_fixture("t5", Executor::Interp);
}

#[test]
fn export_round_trips_bit_exactly() {
    let tmp = std::env::temp_dir().join(format!("kiln-hf-rt-{}", std::process::id()));
    for name in ["gpt2", "llama", "t5"] {
        let dir = root().join("fixtures").join(name);
        let spec = root().join("specs").join(format!("{name}.kiln"));
        let ckpt = import(&spec, name, &dir).unwrap();
        let (config, tensors) = export(Path::new("imported"), &ckpt).unwrap();
        let original = read_checkpoint(&dir).unwrap();
        assert_eq!(config, original.config.value, "{name}: config.json differs");
        assert_eq!(tensors.len(), original.tensors.len(), "{name}");
        for (k, t) in &original.tensors {
            let e = &tensors[k];
            assert_eq!(e.shape, t.shape, "{name}: {k}");
            let same = e
                .data
                .iter()
                .zip(&t.data)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same, "{name}: `{k}` is not bit-exact after the round trip");
        }
        // And through the files: written, read back, imported again, same parameters.
        let out = tmp.join(name);
        write_checkpoint(&out, &config, &tensors).unwrap();
        let again = import(&spec, name, &out).unwrap();
        assert_eq!(again.params, ckpt.params, "{name}: re-import differs");
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn sharded_and_bf16_folders_import() {
    let spec = root().join("specs/llama.kiln");
    let single = import(&spec, "llama", &root().join("fixtures/llama")).unwrap();
    let sharded = import(&spec, "llama", &root().join("fixtures/llama_sharded")).unwrap();
    assert_eq!(single.params, sharded.params);
    let spec = root().join("specs/gpt2.kiln");
    let f32 = import(&spec, "gpt2", &root().join("fixtures/gpt2")).unwrap();
    let bf16 = import(&spec, "gpt2", &root().join("fixtures/gpt2_bf16")).unwrap();
    for (k, t) in &f32.params {
        // bf16 keeps 8 significant bits: within 2^-8 relative of the f32 weights.
        let b = &bf16.params[k];
        for (x, y) in t.data.iter().zip(&b.data) {
            assert!((x - y).abs() <= x.abs() / 256.0 + 1e-30, "{k}: {x} vs {y}");
        }
    }
}

/// The error and every related diagnostic, one per line, unwrapped.
fn flat(e: &dyn miette::Diagnostic) -> String {
    let mut out = e.to_string();
    if let Some(rel) = e.related() {
        for r in rel {
            out.push('\n');
            out.push_str(&flat(r));
        }
    }
    out
}

fn copy_fixture(name: &str, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(root().join("fixtures").join(name).join(f), to.join(f)).unwrap();
    }
}

#[test]
fn broken_folders_name_the_tensor_and_both_shapes() {
    let tmp = std::env::temp_dir().join(format!("kiln-hf-bad-{}", std::process::id()));
    let spec = root().join("specs/gpt2.kiln");
    let good = read_checkpoint(&root().join("fixtures/gpt2")).unwrap();
    let mut tensors: TensorMap = good.tensors.clone();
    tensors.remove("transformer.h.1.ln_2.bias");
    tensors.insert(
        "transformer.h.0.attn.c_attn.weight".into(),
        HostTensor {
            shape: vec![96, 32],
            data: vec![0.0; 96 * 32],
        },
    );
    tensors.insert(
        "transformer.h.2.ln_1.weight".into(),
        HostTensor {
            shape: vec![32],
            data: vec![1.0; 32],
        },
    );
    let dir = tmp.join("bad");
    write_checkpoint(&dir, &good.config.value, &tensors).unwrap();
    let e = import(&spec, "gpt2", &dir).unwrap_err();
    let text = flat(&e);
    for want in [
        "3 problems",
        "`transformer.h.1.ln_2.bias` (shape [32], for Kiln `h.1.ln_2.bias`) is missing",
        "`transformer.h.0.attn.c_attn.weight` has shape [96, 32] in the checkpoint but the model needs [32, 96]",
        "`transformer.h.2.ln_1.weight` (shape [32]) in the checkpoint is not a parameter",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // A config.json of another family, and one with an unsupported variant.
    let other = tmp.join("other");
    copy_fixture("llama", &other);
    let e = import(&spec, "gpt2", &other).unwrap_err();
    let text = flat(&e);
    assert!(text.contains("`model_type` is `llama`"), "{text}");
    let variant = tmp.join("variant");
    copy_fixture("gpt2", &variant);
    let cfg = std::fs::read_to_string(variant.join("config.json")).unwrap();
    std::fs::write(
        variant.join("config.json"),
        cfg.replace("\"gelu_new\"", "\"relu\""),
    )
    .unwrap();
    let e = import(&spec, "gpt2", &variant).unwrap_err();
    let text = flat(&e);
    assert!(text.contains("`activation_function` is \"relu\""), "{text}");
    let _ = std::fs::remove_dir_all(&tmp);
}

#[test]
fn fused_cpu_backend_matches_transformers() {
    for name in ["gpt2", "llama", "t5"] {
        check_fixture(name, Executor::Cpu);
    }
}
