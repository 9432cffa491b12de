//! End to end through the builder: an embedding + LayerNorm + GELU MLP with softmax cross entropy.
//! Autodiff against finite differences, the verifier on forward and backward graphs, printer
//! determinism and a snapshot of a tiny training step's printed IR.

mod ir_support;

use std::collections::HashMap;

use ir_support::{ad_and_fd, draw_params, rand_index, rel_err, rng};
use kiln_compiler::autodiff::grad;
use kiln_compiler::interp::{init_params, run, Precision, RunOptions, Tensor};
use kiln_compiler::ir::{
    print_graph, verify, BinaryOp, Bindings, Builder, DType, Dim, Graph, Init, IrError, Op, ValueId,
};

const V: i64 = 5;

/// Mean over every element, for symbolic shapes: the count is itself a reduction of ones, which a
/// later constant-folding pass turns into a constant once shapes are bound.
fn mean_all(b: &mut Builder, x: ValueId) -> Result<ValueId, IrError> {
    let t = b.ty(x).clone();
    let axes: Vec<usize> = (0..t.rank()).collect();
    let s = b.reduce_sum(x, axes.clone(), false)?;
    let ones = b.full(1.0, &t.shape, t.dtype)?;
    let n = b.reduce_sum(ones, axes, false)?;
    b.div(s, n)
}

/// Softmax cross entropy over the last axis, averaged: logits `[.., V]`, targets int `[..]`.
fn cross_entropy(b: &mut Builder, logits: ValueId, targets: ValueId) -> Result<ValueId, IrError> {
    b.push_scope("ce");
    let r = b.ty(logits).rank();
    let m = b.reduce_max(logits, vec![r - 1], true)?;
    let z = b.binary_broadcast(Op::Binary(BinaryOp::Sub), logits, m)?;
    let e = b.exp(z)?;
    let s = b.reduce_sum(e, vec![r - 1], false)?;
    let lse = b.log(s)?;
    let picked = b.take_along(z, targets)?;
    let nll = b.sub(lse, picked)?;
    let loss = mean_all(b, nll)?;
    b.label(loss, "loss");
    b.pop_scope();
    Ok(loss)
}

fn layer_norm(b: &mut Builder, x: ValueId, d: i64, dtype: DType) -> Result<ValueId, IrError> {
    b.push_scope("ln");
    let g = b.param("ln.g", vec![Dim::c(d)], dtype, Init::Ones)?;
    let beta = b.param("ln.b", vec![Dim::c(d)], dtype, Init::Zeros)?;
    let r = b.ty(x).rank();
    let inv_d = b.full(1.0 / d as f64, &[], dtype)?;
    let s = b.reduce_sum(x, vec![r - 1], true)?;
    let mean = b.binary_broadcast(Op::Binary(BinaryOp::Mul), s, inv_d)?;
    let xc = b.binary_broadcast(Op::Binary(BinaryOp::Sub), x, mean)?;
    let sq = b.mul(xc, xc)?;
    let ss = b.reduce_sum(sq, vec![r - 1], true)?;
    let var = b.binary_broadcast(Op::Binary(BinaryOp::Mul), ss, inv_d)?;
    let eps = b.full(1e-5, &[], dtype)?;
    let ve = b.binary_broadcast(Op::Binary(BinaryOp::Add), var, eps)?;
    let sd = b.sqrt(ve)?;
    let inv = b.recip(sd)?;
    let xn = b.binary_broadcast(Op::Binary(BinaryOp::Mul), xc, inv)?;
    let y = b.binary_broadcast(Op::Binary(BinaryOp::Mul), xn, g)?;
    let y = b.binary_broadcast(Op::Binary(BinaryOp::Add), y, beta)?;
    b.pop_scope();
    Ok(y)
}

/// 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
fn gelu_tanh(b: &mut Builder, x: ValueId) -> Result<ValueId, IrError> {
    let c = |b: &mut Builder, v: f64| b.full_like(v, x);
    let x3 = b.pow_const(x, 3.0)?;
    let k = c(b, 0.044715)?;
    let t = b.mul(k, x3)?;
    let t = b.add(x, t)?;
    let k = c(b, (2.0 / std::f64::consts::PI).sqrt())?;
    let t = b.mul(k, t)?;
    let t = b.tanh(t)?;
    let one = c(b, 1.0)?;
    let t = b.add(one, t)?;
    let half = c(b, 0.5)?;
    let hx = b.mul(half, x)?;
    b.mul(hx, t)
}

fn linear(
    b: &mut Builder,
    x: ValueId,
    name: &str,
    din: i64,
    dout: i64,
    dtype: DType,
) -> Result<ValueId, IrError> {
    b.push_scope(name);
    let w = b.param(
        &format!("{name}.w"),
        vec![Dim::c(din), Dim::c(dout)],
        dtype,
        Init::Normal { std: 0.02 },
    )?;
    let bias = b.param(&format!("{name}.b"), vec![Dim::c(dout)], dtype, Init::Zeros)?;
    let y = b.matmul(x, w, false, false)?;
    let y = b.binary_broadcast(Op::Binary(BinaryOp::Add), y, bias)?;
    b.pop_scope();
    Ok(y)
}

/// tokens i64[batch, seq] → wte → LayerNorm → fc1 → GELU → fc2 → CE against targets.
fn build_mlp(dtype: DType) -> Result<Graph, IrError> {
    let (d, hidden) = (4, 6);
    let mut b = Builder::new();
    let bs = vec![Dim::sym("batch"), Dim::sym("seq")];
    let tokens = b.input("tokens", bs.clone(), DType::I64)?;
    let targets = b.input("targets", bs, DType::I64)?;
    let wte = b.param(
        "wte",
        vec![Dim::c(V), Dim::c(d)],
        dtype,
        Init::Normal { std: 0.02 },
    )?;
    b.push_scope("embed");
    let x = b.gather(wte, tokens)?;
    b.pop_scope();
    let x = layer_norm(&mut b, x, d, dtype)?;
    b.push_scope("mlp");
    let h = linear(&mut b, x, "fc1", d, hidden, dtype)?;
    let h = gelu_tanh(&mut b, h)?;
    let logits = linear(&mut b, h, "fc2", hidden, V, dtype)?;
    b.pop_scope();
    b.output("logits", logits)?;
    let loss = cross_entropy(&mut b, logits, targets)?;
    b.output("loss", loss)?;
    Ok(b.finish())
}

fn bindings() -> Bindings {
    Bindings::new().with("batch", 2).with("seq", 3)
}

#[test]
fn mlp_gradient_matches_finite_differences() {
    let fwd = build_mlp(DType::F64).unwrap();
    verify(&fwd).unwrap();
    let b = bindings();
    let mut r = rng(42);
    let mut inputs = HashMap::new();
    inputs.insert("tokens".to_string(), rand_index(&mut r, &[2, 3], V));
    inputs.insert("targets".to_string(), rand_index(&mut r, &[2, 3], V));
    let params = draw_params(&mut r, &fwd, &b);
    let results = ad_and_fd(&fwd, &b, &inputs, &params);
    assert_eq!(results.len(), 7);
    for (name, ad, fd) in results {
        let e = rel_err(&ad, &fd);
        assert!(e <= 1e-6, "{name}: rel err {e:e}\n ad {ad:?}\n fd {fd:?}");
        assert!(
            ir_support::norm(&fd) > 1e-6,
            "{name}: zero gradient makes the check vacuous"
        );
    }
}

#[test]
fn backward_graph_verifies_and_prints_deterministically() {
    let fwd = build_mlp(DType::F32).unwrap();
    let loss = fwd.output("loss").unwrap();
    let g1 = grad(&fwd, loss).unwrap();
    verify(&g1.graph).unwrap();
    let g2 = grad(&build_mlp(DType::F32).unwrap(), loss).unwrap();
    assert_eq!(print_graph(&g1.graph), print_graph(&g2.graph));
    assert_eq!(
        print_graph(&fwd),
        print_graph(&build_mlp(DType::F32).unwrap())
    );
    // Bound, every dim is constant and the graph still verifies.
    let bound = g1.graph.bind(&bindings()).unwrap();
    verify(&bound).unwrap();
    assert!(bound
        .values()
        .iter()
        .all(|v| bound.shape(*v).iter().all(|d| d.is_const())));
    assert!(g1.graph.bind(&Bindings::new().with("batch", 2)).is_err());
}

#[test]
fn counts_and_flops() {
    let fwd = build_mlp(DType::F32).unwrap();
    // wte 5*4, ln 4+4, fc1 4*6+6, fc2 6*5+5.
    assert_eq!(fwd.param_count(), Dim::c(20 + 8 + 30 + 35));
    assert_eq!(fwd.param_bytes(), Dim::c(4 * 93));
    let flops = fwd.flops(&bindings()).unwrap();
    // The two matmuls alone: 2*6*4*6 + 2*6*6*5 = 648; elementwise work adds more.
    assert!(flops > 648, "{flops}");
    let flops_bigger = fwd
        .flops(&Bindings::new().with("batch", 4).with("seq", 3))
        .unwrap();
    assert_eq!(
        flops_bigger,
        2 * flops - count_fixed_flops(&fwd),
        "flops scale with batch"
    );
}

/// FLOPs of nodes whose shapes do not depend on batch or seq (LayerNorm's 1/d scalar work etc.).
fn count_fixed_flops(g: &Graph) -> u64 {
    let b = bindings();
    g.values()
        .into_iter()
        .filter(|v| {
            g.shape(*v).iter().all(|d| d.is_const())
                && g.node(*v)
                    .inputs()
                    .iter()
                    .all(|u| g.shape(*u).iter().all(|d| d.is_const()))
        })
        .map(|v| {
            let n = g.node(v);
            let ins: Vec<Vec<usize>> = n
                .inputs()
                .iter()
                .map(|u| kiln_compiler::ir::bind_shape(g.shape(*u), &b).unwrap())
                .collect();
            let refs: Vec<&[usize]> = ins.iter().map(|s| s.as_slice()).collect();
            kiln_compiler::ir::ops::flops(
                n.op(),
                &refs,
                &kiln_compiler::ir::bind_shape(n.shape(), &b).unwrap(),
            )
        })
        .sum()
}

#[test]
fn f32_run_is_close_to_f64_run() {
    let fwd = build_mlp(DType::F32).unwrap();
    let b = bindings();
    let mut r = rng(7);
    let mut inputs = HashMap::new();
    inputs.insert("tokens".to_string(), rand_index(&mut r, &[2, 3], V));
    inputs.insert("targets".to_string(), rand_index(&mut r, &[2, 3], V));
    let params = init_params(&fwd, &b, 1234).unwrap();
    assert_eq!(params["ln.g"].to_f64_vec(), vec![1.0; 4]);
    let f64_run = run(&fwd, &b, &inputs, &params, &RunOptions::default()).unwrap();
    let f32_opts = RunOptions {
        precision: Precision::Declared,
        ..RunOptions::default()
    };
    let f32_run = run(&fwd, &b, &inputs, &params, &f32_opts).unwrap();
    let (l64, l32) = (
        f64_run.outputs["loss"].to_f64_vec()[0],
        f32_run.outputs["loss"].to_f64_vec()[0],
    );
    // Near-uniform predictions at init: loss ≈ ln(V).
    assert!((l64 - (V as f64).ln()).abs() < 0.05, "{l64}");
    assert!((l64 - l32).abs() < 1e-5 && l64 != l32, "{l64} vs {l32}");
    assert_eq!(l32, l32 as f32 as f64, "declared precision rounds to f32");
}

/// Adds `p ← p - lr * grad.p` for every gradient output (a plain SGD step as a graph).
fn sgd(b: &mut Builder, grads: &[(String, ValueId)], lr: f64) -> Result<(), IrError> {
    for (name, g) in grads {
        let p = b.graph().find_param(name).unwrap();
        b.push_scope(format!("sgd.{name}"));
        let lr = b.full_like(lr, *g)?;
        let step = b.mul(lr, *g)?;
        let new = b.sub(p, step)?;
        b.pop_scope();
        b.update(name, new)?;
    }
    Ok(())
}

/// tokens → embedding → linear (no bias) → CE, plus SGD updates.
fn tiny_training_step() -> Graph {
    let mut b = Builder::new();
    let bs = vec![Dim::sym("batch"), Dim::sym("seq") - 1];
    let tokens = b.input("tokens", bs.clone(), DType::I32).unwrap();
    let targets = b.input("targets", bs, DType::I32).unwrap();
    let wte = b
        .param(
            "wte",
            vec![Dim::c(8), Dim::c(4)],
            DType::F32,
            Init::Normal { std: 0.02 },
        )
        .unwrap();
    let head = b
        .param(
            "head",
            vec![Dim::c(8), Dim::c(4)],
            DType::F32,
            Init::Normal { std: 0.02 },
        )
        .unwrap();
    b.push_scope("embed");
    let x = b.gather(wte, tokens).unwrap();
    b.pop_scope();
    b.push_scope("head");
    let logits = b.matmul(x, head, false, true).unwrap();
    b.pop_scope();
    let loss = cross_entropy(&mut b, logits, targets).unwrap();
    b.output("loss", loss).unwrap();
    let g = grad(b.graph(), loss).unwrap();
    let mut b = Builder::from_graph(g.graph);
    sgd(&mut b, &g.grads, 0.1).unwrap();
    b.finish()
}

#[test]
fn snapshot_tiny_training_step() {
    let g = tiny_training_step();
    verify(&g).unwrap();
    let text = print_graph(&g);
    assert_eq!(text, print_graph(&tiny_training_step()));
    insta::assert_snapshot!("tiny_training_step", text);
}

#[test]
fn training_step_lowers_the_loss() {
    let g = tiny_training_step();
    let b = Bindings::new().with("batch", 2).with("seq", 5);
    let mut r = rng(3);
    let mut inputs = HashMap::new();
    let toks = rand_index(&mut r, &[2, 4], 8)
        .to_f64_vec()
        .iter()
        .map(|x| *x as i64)
        .collect();
    let tgts = rand_index(&mut r, &[2, 4], 8)
        .to_f64_vec()
        .iter()
        .map(|x| *x as i64)
        .collect();
    inputs.insert(
        "tokens".to_string(),
        Tensor::int(DType::I32, vec![2, 4], toks),
    );
    inputs.insert(
        "targets".to_string(),
        Tensor::int(DType::I32, vec![2, 4], tgts),
    );
    let mut params: HashMap<String, Tensor> = draw_params(&mut r, &g, &b);
    let opts = RunOptions {
        precision: Precision::Declared,
        ..RunOptions::default()
    };
    let mut losses = Vec::new();
    for _ in 0..5 {
        let out = run(&g, &b, &inputs, &params, &opts).unwrap();
        losses.push(out.outputs["loss"].to_f64_vec()[0]);
        for (name, t) in out.updates {
            params.insert(name, t);
        }
    }
    assert!(losses.windows(2).all(|w| w[1] < w[0]), "{losses:?}");
}

/// `train::training_step` on a graph with a frozen weight: the frozen weight gets no update and
/// no optimizer state, the trainable one gets both, and the verifier accepts the step (it allows
/// updates of frozen params because optimizer state is held in them).
#[test]
fn training_step_leaves_frozen_weights_alone() {
    use kiln_compiler::train::{training_step, StepOptions};
    let mut b = Builder::new();
    let bs = vec![Dim::sym("batch"), Dim::sym("seq")];
    let tokens = b.input("tokens", bs.clone(), DType::I32).unwrap();
    let targets = b.input("targets", bs, DType::I32).unwrap();
    let wte = b
        .param_with(
            "wte",
            vec![Dim::c(8), Dim::c(4)],
            DType::F32,
            Init::Normal { std: 0.02 },
            false,
        )
        .unwrap();
    let head = b
        .param(
            "head",
            vec![Dim::c(8), Dim::c(4)],
            DType::F32,
            Init::Normal { std: 0.02 },
        )
        .unwrap();
    let x = b.gather(wte, tokens).unwrap();
    let logits = b.matmul(x, head, false, true).unwrap();
    let loss = cross_entropy(&mut b, logits, targets).unwrap();
    b.output("loss", loss).unwrap();
    let step = training_step(b.graph(), &StepOptions::default()).unwrap();
    verify(&step).unwrap();
    let targets: Vec<&str> = step.updates().iter().map(|u| u.target.as_str()).collect();
    assert!(targets.contains(&"head"), "{targets:?}");
    assert!(
        targets.iter().all(|t| !t.ends_with("wte")),
        "a frozen weight or its state is updated: {targets:?}"
    );
    let params: Vec<String> = step
        .params()
        .into_iter()
        .filter_map(|p| match step.node(p).op() {
            Op::Param { name, .. } => Some(name.clone()),
            _ => None,
        })
        .collect();
    assert!(params.iter().any(|n| n == "opt.m.head"), "{params:?}");
    assert!(
        !params
            .iter()
            .any(|n| n.starts_with("opt.") && n.ends_with("wte")),
        "optimizer state for a frozen weight: {params:?}"
    );
}
