//! Optimized vs unoptimized: for every tiny config of every spec, the training step compiled with
//! all passes and without any gives the same loss, gradient norm, updated parameters and optimizer
//! state through the reference interpreter, on random inputs and parameters.
//!
//! In f64 the two must agree to 1e-10 (relative, per tensor): the passes only make rewrites that
//! are exact in the op semantics, so the differences are summation-order noise at most. With the
//! declared f32 rounding they must agree to 1e-6 (`x^2` → `x*x` may differ in the last bit).
//! The optimizer state starts random (not zero) and the step is past the first, so the updates
//! depend on the gradients' values, not just their signs.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use kiln_compiler::compile::{compile, CompileOptions, Compiled};
use kiln_compiler::interp::{init_params, run, Precision, RunOptions, RunOutput, Tensor};
use kiln_compiler::ir::{bind_shape, DType, Op};
use kiln_compiler::pipeline::PipelineOptions;
use kiln_compiler::sema::{render, Request, Value, Workspace};
use kiln_compiler::train::{Optimizer, StepOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `(spec path, config)` for every `*_tiny` config of every spec.
fn tiny_configs() -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    let mut specs: Vec<PathBuf> = std::fs::read_dir(root().join("specs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "kiln"))
        .collect();
    specs.sort();
    for spec in specs {
        let (ws, id) = load(&spec);
        for c in ws.configs_of(id) {
            if c.ends_with("_tiny") {
                out.push((spec.clone(), c));
            }
        }
    }
    out
}

fn load(spec: &Path) -> (Workspace, usize) {
    let text = std::fs::read_to_string(spec).unwrap();
    let mut ws = Workspace::new();
    let name = format!("specs/{}", spec.file_name().unwrap().to_string_lossy());
    let id = ws.add_file(&name, &text);
    assert!(ws.load_diagnostics.is_empty());
    (ws, id)
}

fn step_options() -> StepOptions {
    StepOptions {
        optimizer: Optimizer::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.1,
        },
        clip: Some(1.0),
        ..StepOptions::default()
    }
}

fn compile_tiny(spec: &Path, config: &str, optimize: bool) -> Compiled {
    let (ws, _) = load(spec);
    let opts = CompileOptions {
        train: Some(step_options()),
        batch: 2,
        seq: 8,
        optimize,
        pipeline: PipelineOptions::verified(),
        ..CompileOptions::default()
    };
    compile(
        &ws,
        &Request {
            config: config.into(),
            ..Default::default()
        },
        &opts,
    )
    .unwrap_or_else(|ds| {
        panic!(
            "{config}: {}",
            ds.iter().map(|d| render(d)).collect::<String>()
        )
    })
}

/// Random data for every input of the step: token ids below the vocabulary (some targets set to
/// the ignore id -100), `lr` and `step`.
fn inputs(c: &Compiled, r: &mut ChaCha8Rng) -> HashMap<String, Tensor> {
    let vocab = c
        .hparams
        .iter()
        .find_map(|(k, v)| match (k.as_str(), v) {
            ("vocab", Value::Int(d)) => d.as_const(),
            _ => None,
        })
        .expect("a vocab hyperparameter");
    let mut out = HashMap::new();
    for v in c.graph.inputs() {
        let Op::Input { name, shape, dtype } = c.graph.node(v).op() else {
            unreachable!()
        };
        let shape = bind_shape(shape, &c.bindings).unwrap();
        let n: usize = shape.iter().product();
        let t = match (name.as_str(), *dtype) {
            ("lr", _) => Tensor::f64(shape, vec![1e-2]),
            ("step", _) => Tensor::f64(shape, vec![3.0]),
            // An encoder-decoder's source lengths: 1 ..= src, so some rows are padded.
            ("input_len", dt) => {
                let src = c.bindings.get("src").expect("src bound");
                Tensor::int(dt, shape, (0..n).map(|_| r.random_range(1..=src)).collect())
            }
            (_, dt) if dt.is_int() => {
                let ignore = name == "targets";
                let ids = (0..n)
                    .map(|_| {
                        if ignore && r.random_bool(0.2) {
                            -100
                        } else {
                            r.random_range(0..vocab)
                        }
                    })
                    .collect();
                Tensor::int(dt, shape, ids)
            }
            (_, DType::Bool) => Tensor::bool(shape, (0..n).map(|_| r.random_bool(0.5)).collect()),
            (_, _) => Tensor::f64(shape, (0..n).map(|_| r.random_range(-1.0..1.0)).collect()),
        };
        out.insert(name.clone(), t);
    }
    out
}

/// Model params from their inits (seeded), optimizer state random: `m` in ±1e-2, `v` in [0, 1e-4).
fn params(c: &Compiled, r: &mut ChaCha8Rng) -> HashMap<String, Tensor> {
    let mut ps = init_params(&c.graph, &c.bindings, 7).unwrap();
    let mut names: Vec<String> = ps
        .keys()
        .filter(|k| k.starts_with("opt."))
        .cloned()
        .collect();
    names.sort();
    for name in names {
        let t = ps.get_mut(&name).unwrap();
        let (lo, hi) = if name.starts_with("opt.v.") {
            (0.0, 1e-4)
        } else {
            (-1e-2, 1e-2)
        };
        *t = Tensor::f64(
            t.shape.clone(),
            (0..t.numel()).map(|_| r.random_range(lo..hi)).collect(),
        );
    }
    ps
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let norm = |v: &[f64]| v.iter().map(|x| x * x).sum::<f64>().sqrt();
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let scale = norm(a).max(norm(b));
    if scale == 0.0 {
        0.0
    } else {
        norm(&d) / scale
    }
}

/// Compares every output and update; returns the largest relative error.
fn compare(config: &str, a: &RunOutput, b: &RunOutput, tol: f64) -> f64 {
    assert_eq!(
        a.outputs.keys().collect::<Vec<_>>(),
        b.outputs.keys().collect::<Vec<_>>(),
        "{config}: outputs differ"
    );
    assert_eq!(
        a.updates.keys().collect::<Vec<_>>(),
        b.updates.keys().collect::<Vec<_>>(),
        "{config}: updates differ"
    );
    let mut worst = 0.0f64;
    for (kind, ma, mb) in [
        ("output", &a.outputs, &b.outputs),
        ("update", &a.updates, &b.updates),
    ] {
        for (name, ta) in ma {
            let tb = &mb[name];
            assert_eq!(ta.shape, tb.shape, "{config}: {kind} {name} shape");
            let (xa, xb) = (ta.to_f64_vec(), tb.to_f64_vec());
            assert!(
                xa.iter().all(|x| x.is_finite()),
                "{config}: {kind} {name} is not finite"
            );
            let e = rel_err(&xa, &xb);
            assert!(
                e <= tol,
                "{config}: {kind} `{name}` differs by {e:e} (tolerance {tol:e})"
            );
            worst = worst.max(e);
        }
    }
    worst
}

#[test]
fn optimized_training_steps_match_unoptimized_ones() {
    let configs = tiny_configs();
    let families: Vec<&str> = configs.iter().map(|(_, c)| c.as_str()).collect();
    assert!(
        configs.len() >= 5,
        "expected a tiny config per family, found {families:?}"
    );
    for (i, (spec, config)) in configs.iter().enumerate() {
        let plain = compile_tiny(spec, config, false);
        let opt = compile_tiny(spec, config, true);
        assert!(
            opt.graph.len() < plain.graph.len(),
            "{config}: the passes removed nothing"
        );
        let mut r = ChaCha8Rng::seed_from_u64(100 + i as u64);
        let ins = inputs(&plain, &mut r);
        let ps = params(&plain, &mut r);
        for (precision, tol) in [(Precision::F64, 1e-10), (Precision::Declared, 1e-6)] {
            let ro = RunOptions {
                seed: 1,
                step: 3,
                precision,
            };
            let a = run(&plain.graph, &plain.bindings, &ins, &ps, &ro).unwrap();
            let b = run(&opt.graph, &opt.bindings, &ins, &ps, &ro).unwrap();
            let worst = compare(config, &a, &b, tol);
            println!(
                "{config} {precision:?}: {} -> {} nodes, worst relative difference {worst:e}",
                plain.graph.len(),
                opt.graph.len()
            );
            // The loss must actually have been computed from the data (not trivially equal).
            let loss = a.outputs["loss"].to_f64_vec()[0];
            assert!(loss.is_finite() && loss > 0.0, "{config}: loss {loss}");
        }
        // The forward graph on its own agrees too (logits and loss).
        let ro = RunOptions {
            seed: 1,
            step: 3,
            precision: Precision::F64,
        };
        let a = run(&plain.forward, &plain.bindings, &ins, &ps, &ro).unwrap();
        let b = run(&opt.forward, &opt.bindings, &ins, &ps, &ro).unwrap();
        compare(config, &a, &b, 1e-10);
    }
}
