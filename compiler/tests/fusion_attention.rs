//! Attention recognition: every tiny spec's `sdpa` compositions become `attention` nodes (causal,
//! banded, full, prefix-LM masks; GQA, MQA; T5's bias and cross attention), and the recognised
//! graph gives the same loss and gradients as the original in the f64 interpreter.

mod fusion_support;

use std::collections::BTreeMap;

use fusion_support::{bindings, forward, forward_with, inputs, norm, vocab_of, Case, CASES};
use kiln_compiler::autodiff::grad;
use kiln_compiler::interp::{init_params, run, RunOptions};
use kiln_compiler::ir::{print_graph, verify, AttnMask, Bindings, Graph, Op};
use kiln_compiler::passes::attention::{recognize, stop_shift_gradients};

fn attention_nodes(g: &Graph) -> Vec<Op> {
    g.values()
        .into_iter()
        .map(|v| g.node(v).op().clone())
        .filter(|op| matches!(op, Op::Attention(_)))
        .collect()
}

/// Loss and every gradient of `fwd`, by name.
fn loss_and_grads(fwd: &Graph, b: &Bindings, seed: u64) -> BTreeMap<String, Vec<f64>> {
    let gg = grad(fwd, fwd.output("loss").unwrap()).expect("autodiff");
    verify(&gg.graph).unwrap_or_else(|e| panic!("backward graph fails verification: {e:?}"));
    let params = init_params(&gg.graph, b, seed).unwrap();
    let ins = inputs(&gg.graph, b, vocab_of(fwd), seed);
    let out = run(&gg.graph, b, &ins, &params, &RunOptions::default()).expect("interpreter");
    out.outputs
        .into_iter()
        .map(|(k, t)| (k, t.to_f64_vec()))
        .collect()
}

fn check_case(case: &Case, fwd: Graph) -> Vec<Op> {
    let mut rec = fwd.clone();
    let n = recognize(&mut rec).unwrap();
    verify(&rec).unwrap_or_else(|e| {
        panic!(
            "{}: recognised graph fails verification: {e:?}\n{}",
            case.config,
            print_graph(&rec)
        )
    });
    assert_eq!(
        n, case.attentions,
        "{} {}: attentions recognised",
        case.config, case.objective
    );
    let atts = attention_nodes(&rec);
    assert_eq!(atts.len(), case.attentions);
    // No score-sized exp survives: the softmax went into the attention nodes.
    let b = bindings(case);
    let want = loss_and_grads(&fwd, &b, 7);
    let got = loss_and_grads(&rec, &b, 7);
    assert_eq!(
        want.keys().collect::<Vec<_>>(),
        got.keys().collect::<Vec<_>>()
    );
    // Some gradients are exactly zero in exact arithmetic (a key bias shifts every score of a row
    // equally), so both sides hold rounding noise: errors are relative to at least a thousandth
    // of the largest gradient norm.
    let floor = want.values().map(|v| norm(v)).fold(0.0, f64::max) * 1e-3;
    for (k, w) in &want {
        let d: Vec<f64> = w.iter().zip(&got[k]).map(|(a, b)| a - b).collect();
        let e = norm(&d) / norm(w).max(norm(&got[k])).max(floor);
        assert!(
            e <= 1e-10,
            "{} {}: `{k}` differs by {e:e}",
            case.config,
            case.objective
        );
    }
    assert!(want[&format!("grad.{}", first_param(&fwd))]
        .iter()
        .any(|x| *x != 0.0));
    atts
}

fn first_param(g: &Graph) -> String {
    g.node(g.params()[0])
        .op()
        .source_name()
        .unwrap()
        .to_string()
}

fn masks(atts: &[Op]) -> Vec<AttnMask> {
    atts.iter()
        .map(|op| match op {
            Op::Attention(s) => s.mask,
            _ => unreachable!(),
        })
        .collect()
}

#[test]
fn gpt2_causal() {
    let c = &CASES[0];
    let atts = check_case(c, forward(c));
    assert_eq!(masks(&atts), vec![AttnMask::Causal; 2]);
}

#[test]
fn gpt3_alternating_causal_and_banded() {
    let c = &CASES[1];
    let atts = check_case(c, forward(c));
    assert_eq!(
        masks(&atts),
        vec![AttnMask::Causal, AttnMask::Local { window: 3 }]
    );
}

#[test]
fn llama_gqa_with_rope() {
    let c = &CASES[2];
    let fwd = forward(c);
    let atts = check_case(c, fwd.clone());
    assert_eq!(masks(&atts), vec![AttnMask::Causal; 2]);
    // GQA: the attention reads the 2 key/value heads, not the repeated 4.
    let mut rec = fwd;
    recognize(&mut rec).unwrap();
    let kv: Vec<String> = rec
        .values()
        .into_iter()
        .filter(|v| matches!(rec.node(*v).op(), Op::Attention(_)))
        .map(|v| rec.shape(rec.node(v).inputs()[1])[1].to_string())
        .collect();
    assert_eq!(kv, vec!["2", "2"]);
}

#[test]
fn palm_mqa() {
    let c = &CASES[3];
    let atts = check_case(c, forward(c));
    assert_eq!(masks(&atts), vec![AttnMask::Causal; 2]);
}

#[test]
fn t5_bias_and_cross_attention() {
    let c = &CASES[4];
    let atts = check_case(c, forward(c));
    let with_bias = atts
        .iter()
        .filter(|op| matches!(op, Op::Attention(s) if s.bias))
        .count();
    assert_eq!(
        with_bias, 4,
        "encoder and decoder self-attention carry the relative bias"
    );
    let m = masks(&atts);
    assert_eq!(m.iter().filter(|x| **x == AttnMask::Causal).count(), 2);
    assert_eq!(m.iter().filter(|x| **x == AttnMask::Full).count(), 4);
    assert!(atts
        .iter()
        .all(|op| matches!(op, Op::Attention(s) if s.scale == 1.0)));
}

#[test]
fn prefix_lm_mask() {
    let c = &CASES[5];
    let atts = check_case(c, forward(c));
    assert_eq!(masks(&atts), vec![AttnMask::Prefix; 2]);
}

/// Padding masks (alone and with causal) and a full mask, from a small spec of our own.
#[test]
fn padding_masks() {
    let spec = r#"
model padded(vocab = 17, d = 8, heads = 2, mask = causal) {
    input tokens: i32[batch, seq]
    param wte: [vocab, d] = normal(0.5)
    x = gather(wte, tokens)
    x = x + attention(x, heads, mask = mask) as attn
    return x @ transpose(wte)
}
config padded_tiny = padded()
objective pad_only() {
    input tokens: i32[batch, seq + 1]
    input lens: i32[batch]
    logits = model(tokens[:, :-1], mask = padding(lens))
    return cross_entropy(logits, tokens[:, 1:])
}
objective pad_causal() {
    input tokens: i32[batch, seq + 1]
    input lens: i32[batch]
    logits = model(tokens[:, :-1], mask = [causal, padding(lens)])
    return cross_entropy(logits, tokens[:, 1:])
}
"#;
    for (objective, mask) in [
        ("pad_only", AttnMask::Full),
        ("pad_causal", AttnMask::Causal),
    ] {
        let mut ws = kiln_compiler::sema::Workspace::new();
        ws.add_file("padded.kiln", spec);
        let req = kiln_compiler::sema::Request {
            config: "padded_tiny".into(),
            objective: Some((objective.into(), vec![])),
            training: true,
            ..Default::default()
        };
        let inst = match ws.instantiate(&req) {
            Ok(i) => i,
            Err(ds) => panic!(
                "{}",
                ds.iter()
                    .map(|d| kiln_compiler::sema::render(d))
                    .collect::<String>()
            ),
        };
        let mut fwd = inst.graph;
        let loss = fwd.output("loss").unwrap();
        fwd.clear_outputs();
        fwd.add_output("loss", loss).unwrap();
        let case = Case {
            spec: "",
            config: "padded",
            objective: "lm",
            overrides: &[],
            dims: &[("batch", 3), ("seq", 6)],
            attentions: 1,
        };
        let atts = check_case(&case, fwd);
        match &atts[0] {
            Op::Attention(s) => {
                assert_eq!(s.mask, mask, "{objective}");
                assert!(s.key_padding, "{objective}");
            }
            _ => unreachable!(),
        }
    }
    let _ = forward_with;
}

/// Attention dropout keeps the composition (the kernels have no dropout).
#[test]
fn dropout_stays_unfused() {
    let mut g = forward_with("gpt2.kiln", "gpt2_tiny", "causal_lm", &[("dropout", "0.1")]);
    assert_eq!(recognize(&mut g).unwrap(), 0);
    verify(&g).unwrap();
}

/// The softmax and logsumexp maxima get a `StopGradient` (their gradient is exactly zero), and the
/// loss and gradients do not change: two attention softmaxes and the cross entropy per GPT-2
/// graph with attention dropout (unfused), only the cross entropy once attention is fused.
#[test]
fn shift_invariant_maxima_stop_gradients() {
    let c = &CASES[0];
    let b = bindings(c);
    let fwd = forward_with("gpt2.kiln", "gpt2_tiny", "causal_lm", &[]);
    let mut marked = fwd.clone();
    assert_eq!(stop_shift_gradients(&mut marked).unwrap(), 3);
    verify(&marked).unwrap();
    let want = loss_and_grads(&fwd, &b, 3);
    let got = loss_and_grads(&marked, &b, 3);
    let floor = want.values().map(|v| norm(v)).fold(0.0, f64::max) * 1e-3;
    for (k, w) in &want {
        let d: Vec<f64> = w.iter().zip(&got[k]).map(|(a, b)| a - b).collect();
        let e = norm(&d) / norm(w).max(norm(&got[k])).max(floor);
        assert!(e <= 1e-10, "`{k}` differs by {e:e}");
    }
    // Idempotent, and after recognition only the cross entropy's maximum is left.
    assert_eq!(stop_shift_gradients(&mut marked).unwrap(), 0);
    let mut rec = fwd.clone();
    recognize(&mut rec).unwrap();
    assert_eq!(stop_shift_gradients(&mut rec).unwrap(), 1);
    // A maximum that escapes (an output) is not marked.
    let mut out = fwd;
    let m = out
        .values()
        .into_iter()
        .find(|v| matches!(out.node(*v).op(), Op::ReduceMax { .. }))
        .unwrap();
    out.add_output("max", m).unwrap();
    assert_eq!(stop_shift_gradients(&mut out).unwrap(), 2);
}
