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
