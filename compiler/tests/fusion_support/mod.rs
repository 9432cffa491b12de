//! Shared support for the fusion tests: instantiate a spec's training step, random inputs, and
//! relative-error helpers.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;

use kiln_compiler::interp::Tensor;
use kiln_compiler::ir::{bind_shape, Bindings, DType, Graph, Op};
use kiln_compiler::sema::{parse_value, Request, Workspace};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One case: a spec file, a config, an objective with its arguments, overrides, run dims.
pub struct Case {
    pub spec: &'static str,
    pub config: &'static str,
    pub objective: &'static str,
    pub overrides: &'static [(&'static str, &'static str)],
    pub dims: &'static [(&'static str, i64)],
    /// Attention layers the recognizer must find.
    pub attentions: usize,
}

pub const CASES: &[Case] = &[
    Case {
        spec: "gpt2.kiln",
        config: "gpt2_tiny",
        objective: "causal_lm",
        overrides: &[],
        dims: &[("batch", 2), ("seq", 8)],
        attentions: 2,
    },
    Case {
        spec: "gpt3.kiln",
        config: "gpt3_tiny",
        objective: "causal_lm",
        overrides: &[("band", "3")],
        dims: &[("batch", 2), ("seq", 8)],
        attentions: 2,
    },
    Case {
        spec: "llama.kiln",
        config: "llama_tiny",
        objective: "causal_lm",
        overrides: &[],
        dims: &[("batch", 2), ("seq", 8)],
        attentions: 2,
    },
    Case {
        spec: "palm.kiln",
        config: "palm_tiny",
        objective: "causal_lm",
        overrides: &[],
        dims: &[("batch", 2), ("seq", 8)],
        attentions: 2,
    },
    Case {
        spec: "t5.kiln",
        config: "t5_tiny",
        objective: "seq2seq",
        overrides: &[],
        dims: &[("batch", 2), ("src", 7), ("tgt", 5)],
        attentions: 6,
    },
    Case {
        spec: "gpt2.kiln",
        config: "gpt2_tiny",
        objective: "prefix_lm",
        overrides: &[],
        dims: &[("batch", 2), ("seq", 8)],
        attentions: 2,
    },
];

pub fn root() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The forward graph (loss output) of a case, training mode.
pub fn forward(case: &Case) -> Graph {
    forward_with(case.spec, case.config, case.objective, case.overrides)
}

pub fn forward_with(
    spec: &str,
    config: &str,
    objective: &str,
    overrides: &[(&str, &str)],
) -> Graph {
    let text = std::fs::read_to_string(root().join("specs").join(spec)).expect("spec file");
    let mut ws = Workspace::new();
    ws.add_file(&format!("specs/{spec}"), &text);
    let req = Request {
        config: config.into(),
        overrides: overrides
            .iter()
            .map(|(k, v)| (k.to_string(), parse_value(v)))
            .collect(),
        objective: Some((objective.into(), vec![])),
        training: true,
    };
    let inst = ws.instantiate(&req).unwrap_or_else(|ds| {
        panic!(
            "{config}: {}",
            ds.iter()
                .map(|d| kiln_compiler::sema::render(d))
                .collect::<String>()
        )
    });
    let mut g = inst.graph;
    // Keep only the loss (logits would keep forward values alive as outputs).
    let loss = g.output("loss").expect("loss");
    g.clear_outputs();
    g.add_output("loss", loss).unwrap();
    g
}

pub fn bindings(case: &Case) -> Bindings {
    let mut b = Bindings::new();
    for (k, v) in case.dims {
        b.insert(k, *v);
    }
    b
}

/// Random token inputs for every int input (ids below `vocab`; lengths within the sequence),
/// plus `lr` and `step` when the graph has them.
pub fn inputs(g: &Graph, b: &Bindings, vocab: i64, seed: u64) -> HashMap<String, Tensor> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let mut out = HashMap::new();
    for v in g.inputs() {
        if let Op::Input { name, shape, dtype } = g.node(v).op() {
            let shape = bind_shape(shape, b).unwrap();
            let n: usize = shape.iter().product();
            let t = match (name.as_str(), *dtype) {
                ("lr", _) => Tensor::f32(shape, vec![1e-3]),
                ("step", _) => Tensor::f32(shape, vec![1.0]),
                ("prefix_len" | "lens", d) => {
                    let hi = b.get("seq").unwrap_or(4);
                    Tensor::int(d, shape, (0..n).map(|_| r.random_range(1..hi)).collect())
                }
                // An encoder-decoder's source lengths: 1 ..= src (padding after).
                ("input_len", d) => {
                    let hi = b.get("src").unwrap_or(4);
                    Tensor::int(d, shape, (0..n).map(|_| r.random_range(1..=hi)).collect())
                }
                (_, d) if d.is_int() => {
                    Tensor::int(d, shape, (0..n).map(|_| r.random_range(0..vocab)).collect())
                }
                (_, DType::F32) => Tensor::f32(
                    shape,
                    (0..n).map(|_| r.random_range(-1.0..1.0f32)).collect(),
                ),
                (_, d) => panic!("input {name} of dtype {d}"),
            };
            out.insert(name.clone(), t);
        }
    }
    out
}

pub fn vocab_of(g: &Graph) -> i64 {
    // The token table is the param read by the first gather.
    for v in g.values() {
        let n = g.node(v);
        if let Op::Gather = n.op() {
            return g.shape(n.inputs()[0])[0].as_const().unwrap();
        }
    }
    panic!("no embedding")
}

pub fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// `||a - b|| / max(||a||, ||b||)`; 0 when both vanish.
pub fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let s = norm(a).max(norm(b));
    if s < 1e-30 {
        0.0
    } else {
        norm(&d) / s
    }
}

/// Compares one training step of an executor (`got` outputs, `state` after the step) with the
/// interpreter's (`want`), from the same initial `params`. Outputs within `tol` relative;
/// optimizer moments within `tol`; parameters within `10·tol` (Adam divides by the gradient's
/// magnitude, which amplifies the f32 rounding of tiny gradient elements).
///
/// A parameter whose gradient is zero in exact arithmetic (GPT-2's key biases: they shift every
/// score of a row equally) gets rounding noise as gradient, and Adam turns the noise's sign into
/// a full step: any two implementations disagree there. Such parameters (first moment below 1e-6
/// of the largest) are only checked to move by at most one learning rate (1e-3).
pub fn compare_step(
    label: &str,
    want: &kiln_compiler::interp::RunOutput,
    got: &std::collections::BTreeMap<String, Vec<f32>>,
    state: &HashMap<String, Vec<f32>>,
    params: &HashMap<String, Tensor>,
    tol: f64,
) {
    for (k, t) in &want.outputs {
        let g: Vec<f64> = got[k].iter().map(|x| f64::from(*x)).collect();
        let e = rel_err(&t.to_f64_vec(), &g);
        assert!(
            e <= tol,
            "{label}: output `{k}` differs by {e:e}: {:?} vs {:?}",
            t.to_f64_vec(),
            got[k]
        );
    }
    let m_norm = |k: &str| {
        want.updates
            .get(&format!("opt.m.{k}"))
            .map(|t| norm(&t.to_f64_vec()))
    };
    let m_max = want
        .updates
        .keys()
        .filter_map(|k| k.strip_prefix("opt.m."))
        .filter_map(m_norm)
        .fold(0.0, f64::max);
    let noise = |k: &str| {
        let base = k
            .strip_prefix("opt.m.")
            .or(k.strip_prefix("opt.v."))
            .unwrap_or(k);
        m_norm(base).is_some_and(|m| m < 1e-6 * m_max)
    };
    let mut changed = 0;
    let mut noisy = 0;
    for (k, t) in &want.updates {
        let w = t.to_f64_vec();
        let g: Vec<f64> = state[k].iter().map(|x| f64::from(*x)).collect();
        let before = params[k].to_f64_vec();
        changed += usize::from(w != before);
        if noise(k) {
            noisy += 1;
            if !k.starts_with("opt.") {
                let step = g
                    .iter()
                    .zip(&before)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                assert!(step <= 1.01e-3, "{label}: `{k}` moved by {step}");
            }
            continue;
        }
        let t = if k.starts_with("opt.") {
            tol
        } else {
            10.0 * tol
        };
        let e = rel_err(&w, &g);
        assert!(e <= t, "{label}: update `{k}` differs by {e:e}");
    }
    assert!(
        noisy * 4 < want.updates.len(),
        "{label}: too many noise-gradient tensors ({noisy})"
    );
    assert!(
        changed > want.updates.len() / 2,
        "{label}: the step barely changed the state"
    );
}
