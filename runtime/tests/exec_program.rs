//! The fused CPU executor (`CpuBackend`) against the interpreter: one training step of every tiny
//! spec (forward, loss, backward, clipping, AdamW), with fused attention and without, with
//! dropout noise; initial state equal to `interp::init_params`; two steps in a row.

#[path = "../../compiler/tests/fusion_support/mod.rs"]
mod fusion_support;

use std::collections::{BTreeMap, HashMap};

use fusion_support::{bindings, forward, forward_with, inputs, vocab_of, Case, CASES};
use kiln_compiler::interp::{init_params, run, Precision, RunOptions, Tensor, TensorData};
use kiln_compiler::ir::{Bindings, Graph};
use kiln_compiler::passes::attention::{recognize, stop_shift_gradients};
use kiln_compiler::train::{training_step, StepOptions};
use kiln_runtime::backend::{Backend, InputTensor, StepRng};
use kiln_runtime::cpu::CpuBackend;

fn step_graph(mut fwd: Graph, fused_attention: bool) -> Graph {
    if fused_attention {
        recognize(&mut fwd).unwrap();
    }
    stop_shift_gradients(&mut fwd).unwrap();
    let opts = StepOptions {
        clip: Some(1.0),
        ..Default::default()
    };
    training_step(&fwd, &opts).unwrap()
}

fn to_inputs(ins: &HashMap<String, Tensor>) -> BTreeMap<String, InputTensor> {
    ins.iter()
        .map(|(k, t)| {
            let v = match &t.data {
                TensorData::Float(v) => InputTensor::F32 {
                    shape: t.shape.clone(),
                    data: v.iter().map(|x| *x as f32).collect(),
                },
                TensorData::Int(v) => InputTensor::I32 {
                    shape: t.shape.clone(),
                    data: v.iter().map(|x| *x as i32).collect(),
                },
                TensorData::Bool(v) => InputTensor::I32 {
                    shape: t.shape.clone(),
                    data: v.iter().map(|x| i32::from(*x)).collect(),
                },
            };
            (k.clone(), v)
        })
        .collect()
}

fn state_of(b: &CpuBackend) -> HashMap<String, Vec<f32>> {
    b.state_shapes()
        .into_iter()
        .map(|(n, _)| (n.clone(), b.get_state(&n).unwrap().data))
        .collect()
}

/// Runs `steps` training steps on the CPU backend and in the interpreter, comparing each.
fn check(label: &str, step: &Graph, b: &Bindings, steps: u64) {
    let seed = 9;
    let mut backend =
        CpuBackend::from_graph(step, b, seed).unwrap_or_else(|e| panic!("{label}: {e}"));
    let mut params = init_params(step, b, seed).unwrap();
    let initial = state_of(&backend);
    for (k, t) in &params {
        assert_eq!(
            initial[k],
            t.to_f32_vec(),
            "{label}: initial `{k}` differs from interp::init_params"
        );
    }
    let vocab = vocab_of(step);
    for s in 1..=steps {
        let mut ins = inputs(step, b, vocab, seed + s);
        ins.insert("step".into(), Tensor::f32(vec![], vec![s as f32]));
        let opts = RunOptions {
            seed,
            step: s,
            precision: Precision::Declared,
        };
        let want = run(step, b, &ins, &params, &opts).unwrap();
        let got = backend
            .run(&to_inputs(&ins), StepRng { seed, step: s })
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let got: BTreeMap<String, Vec<f32>> = got.into_iter().map(|(k, t)| (k, t.data)).collect();
        let state = state_of(&backend);
        fusion_support::compare_step(
            &format!("{label} step {s}"),
            &want,
            &got,
            &state,
            &params,
            2e-5,
        );
        // Continue both from the interpreter's state so that errors do not compound.
        for (k, t) in &want.updates {
            params.insert(k.clone(), t.clone());
            backend
                .set_state(
                    k,
                    &kiln_runtime::checkpoint::HostTensor {
                        shape: t.shape.clone(),
                        data: t.to_f32_vec(),
                    },
                )
                .unwrap();
        }
    }
}

fn check_case(case: &Case, steps: u64) {
    let step = step_graph(forward(case), true);
    check(
        &format!("{} {}", case.config, case.objective),
        &step,
        &bindings(case),
        steps,
    );
}

#[test]
fn gpt2_tiny_two_steps() {
    check_case(&CASES[0], 2);
}

#[test]
fn gpt3_tiny_banded() {
    check_case(&CASES[1], 1);
}

#[test]
fn llama_tiny_gqa() {
    check_case(&CASES[2], 1);
}

#[test]
fn palm_tiny_mqa() {
    check_case(&CASES[3], 1);
}

#[test]
fn t5_tiny_seq2seq() {
    check_case(&CASES[4], 1);
}

#[test]
fn gpt2_tiny_prefix_lm() {
    check_case(&CASES[5], 1);
}

/// Dropout (noise bit-exact with the interpreter) and the unfused attention path.
#[test]
fn gpt2_tiny_dropout() {
    let fwd = forward_with(
        "gpt2.kiln",
        "gpt2_tiny",
        "causal_lm",
        &[("dropout", "0.25")],
    );
    let step = step_graph(fwd, true);
    check("gpt2_tiny dropout", &step, &bindings(&CASES[0]), 2);
}

/// The program's listing names every kernel with its kind and origin.
#[test]
fn gpt2_char_program_lists_kernels() {
    let fwd = forward_with("gpt2.kiln", "gpt2_char", "causal_lm", &[]);
    let step = step_graph(fwd, true);
    let b = Bindings::new().with("batch", 12).with("seq", 64);
    let backend = CpuBackend::from_graph(&step, &b, 1).unwrap();
    let text = backend.program().to_string();
    assert!(text.contains("attention.fwd batch=12 heads=4 kv_heads=4 q_len=64"));
    assert!(text.contains("; h.3.attn.sdpa"));
    assert!(backend.executor().arena_bytes() > 0);
}
