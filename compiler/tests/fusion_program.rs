//! Fusion end to end: every tiny spec's whole training step (forward, loss, backward, clipping,
//! AdamW) fused into a `Program`, run by the plain reference executor, against the interpreter
//! on the unfused graph (f32 per op): loss, gradient norm, and every updated parameter and
//! optimizer state within 1e-5 relative (norm-wise per tensor). The attention kernels read and
//! write their operands where the projections keep them (sequence-major, no head-split or merge
//! copies; RoPE's `q`, `k` stay head-major), so these runs check those layouts too.

mod fusion_support;

use std::collections::HashMap;

use fusion_support::{bindings, forward, forward_with, inputs, vocab_of, Case, CASES};
use kiln_compiler::interp::{init_params, run, Precision, RunOptions, TensorData};
use kiln_compiler::ir::{verify, Bindings, Graph};
use kiln_compiler::kernel::data::DataKernel;
use kiln_compiler::kernel::{HeadLayout, Kernel};
use kiln_compiler::passes::attention::{recognize, stop_shift_gradients};
use kiln_compiler::passes::fusion::fuse;
use kiln_compiler::program::reference::{self, HostInput};
use kiln_compiler::program::Program;
use kiln_compiler::train::{training_step, StepOptions};

fn step_graph(mut fwd: Graph, fused_attention: bool) -> Graph {
    if fused_attention {
        recognize(&mut fwd).unwrap();
    }
    stop_shift_gradients(&mut fwd).unwrap();
    let opts = StepOptions {
        clip: Some(1.0),
        ..Default::default()
    };
    verify(&fwd).unwrap();
    let step = training_step(&fwd, &opts).unwrap();
    verify(&step).unwrap();
    step
}

fn host_inputs(ins: &HashMap<String, kiln_compiler::interp::Tensor>) -> HashMap<String, HostInput> {
    ins.iter()
        .map(|(k, t)| {
            let v = match &t.data {
                TensorData::Float(v) => HostInput::F32(v.iter().map(|x| *x as f32).collect()),
                TensorData::Int(v) => HostInput::I32(v.iter().map(|x| *x as i32).collect()),
                TensorData::Bool(v) => HostInput::I32(v.iter().map(|x| i32::from(*x)).collect()),
            };
            (k.clone(), v)
        })
        .collect()
}

/// Fuses `step` bound by `b`, runs one step both ways, returns the program.
fn check(label: &str, step: &Graph, b: &Bindings, vocab: i64, seed: u64) -> Program {
    let bound = step.bind(b).unwrap();
    let prog = fuse(&bound).unwrap_or_else(|e| panic!("{label}: fusion failed: {e}"));
    prog.validate()
        .unwrap_or_else(|e| panic!("{label}: invalid program: {e}\n{prog}"));
    let ins = inputs(step, b, vocab, seed);
    let params = init_params(step, b, seed).unwrap();
    let opts = RunOptions {
        seed,
        step: 3,
        precision: Precision::Declared,
    };
    let want = run(step, b, &ins, &params, &opts).unwrap();
    let mut state = reference::init_state(&prog, seed);
    for (k, t) in &params {
        let v: Vec<f32> = t.to_f32_vec();
        assert_eq!(
            state[k], v,
            "{label}: initial `{k}` differs from interp::init_params"
        );
    }
    let got = reference::run(&prog, &host_inputs(&ins), &mut state, seed, 3)
        .unwrap_or_else(|e| panic!("{label}: reference run failed: {e}\n{}", prog.listing()));
    fusion_support::compare_step(label, &want, &got, &state, &params, 1e-5);
    prog
}

fn case_program(case: &Case) -> Program {
    let step = step_graph(forward(case), true);
    let b = bindings(case);
    let label = format!("{} {}", case.config, case.objective);
    check(&label, &step, &b, vocab_of(&step), 11)
}

fn count_kind(p: &Program, kind: &str) -> usize {
    p.steps.iter().filter(|s| s.kind() == kind).count()
}

/// Which operands every attention kernel of `p` reads or writes sequence-major: checks that
/// `seq` (names as in `AttentionLayout::operands`) are and the others are not, and that no copy
/// swaps axes 1 and 2 of a rank-4 tensor (a head split or merge) when `q` is among `seq`.
fn assert_seq_major(p: &Program, seq: &[&str]) {
    let mut attentions = 0;
    for s in &p.steps {
        let Kernel::Attention(a) = &s.kernel else {
            continue;
        };
        attentions += 1;
        let present = if s.kind() == "attention.fwd" { 4 } else { 8 };
        for (name, l) in a.layout.operands().iter().take(present) {
            let want = if seq.contains(name) {
                HeadLayout::SeqMajor
            } else {
                HeadLayout::HeadMajor
            };
            assert_eq!(*l, want, "{name} of {}: {}", s.origin, s.kernel);
        }
    }
    assert!(attentions > 0);
    if seq.contains(&"q") {
        let swaps: Vec<String> = p
            .steps
            .iter()
            .filter(|s| match &s.kernel {
                Kernel::Data(DataKernel::Copy { src, .. }) => {
                    src.shape.len() == 4 && src.strides[1] < src.strides[2]
                }
                _ => false,
            })
            .map(|s| format!("{} ; {}", s.kernel.to_string().trim_end(), s.origin))
            .collect();
        assert!(swaps.is_empty(), "head swaps copied:\n{}", swaps.join("\n"));
    }
}

const ALL: &[&str] = &["q", "k", "v", "o", "do", "dq", "dk", "dv"];
/// RoPE rotates `q` and `k` between the head split and attention.
const ROPE: &[&str] = &["v", "o", "do", "dv"];

#[test]
fn gpt2_tiny_step() {
    let p = case_program(&CASES[0]);
    assert_eq!(count_kind(&p, "attention.fwd"), 2);
    assert_eq!(count_kind(&p, "attention.bwd"), 2);
    assert_seq_major(&p, ALL);
    // Every AdamW update writes in place.
    assert!(p
        .updates
        .iter()
        .all(|u| p.state_decl(&u.target).unwrap().buffer == u.view.buf));
}

#[test]
fn gpt3_tiny_step() {
    assert_seq_major(&case_program(&CASES[1]), ALL);
}

#[test]
fn llama_tiny_step() {
    assert_seq_major(&case_program(&CASES[2]), ROPE);
}

#[test]
fn palm_tiny_step() {
    assert_seq_major(&case_program(&CASES[3]), ROPE);
}

#[test]
fn t5_tiny_step() {
    assert_seq_major(&case_program(&CASES[4]), ALL);
}

#[test]
fn prefix_lm_step() {
    assert_seq_major(&case_program(&CASES[5]), ALL);
}

/// Dropout everywhere, attention unfused (score matrices, softmax row programs, batched GEMMs):
/// the noise must match the interpreter's bit for bit for the results to agree.
#[test]
fn gpt2_tiny_with_dropout_step() {
    let fwd = forward_with(
        "gpt2.kiln",
        "gpt2_tiny",
        "causal_lm",
        &[("dropout", "0.25")],
    );
    let step = step_graph(fwd, true);
    let b = bindings(&CASES[0]);
    let p = check("gpt2_tiny dropout", &step, &b, vocab_of(&step), 5);
    assert_eq!(count_kind(&p, "attention.fwd"), 0);
    assert!(count_kind(&p, "data.rand_uniform") > 0);
}

/// The unfused attention path without dropout (recognition off).
#[test]
fn gpt2_tiny_unrecognized_step() {
    let step = step_graph(forward(&CASES[0]), false);
    let b = bindings(&CASES[0]);
    check("gpt2_tiny unfused", &step, &b, vocab_of(&step), 2);
}

/// The kernel structure of a GPT-2 step: LayerNorm forward in one row program and the
/// cross-entropy forward and backward in one.
#[test]
fn gpt2_kernel_structure() {
    let p = case_program(&CASES[0]);
    let rows: Vec<&str> = p
        .steps
        .iter()
        .filter_map(|s| match &s.kernel {
            Kernel::Row(r) => Some(r.name.as_str()),
            _ => None,
        })
        .collect();
    assert!(!rows.is_empty());
    eprintln!("{p}");
}

/// The printed kernel list (what `kiln compile --emit kernels` shows) is stable.
#[test]
fn gpt2_tiny_kernel_listing_snapshot() {
    let step = step_graph(forward(&CASES[0]), true);
    let p = fuse(&step.bind(&bindings(&CASES[0])).unwrap()).unwrap();
    let again = fuse(&step.bind(&bindings(&CASES[0])).unwrap()).unwrap();
    assert_eq!(
        p.to_string(),
        again.to_string(),
        "fusion is not deterministic"
    );
    insta::assert_snapshot!("gpt2_tiny_kernels", p.to_string());
}

/// Attention on head splits of `[b, t, h·d]` inputs (GQA: 4 query heads on 2 key-value heads),
/// its output merged back; `extra_users` gives the split `q` and the unmerged `o` another reader
/// (a graph output), which must keep their head-major copies while the rest stays folded. The
/// fused program must match the interpreter either way.
fn split_attention_program(extra_users: bool) -> Program {
    use kiln_compiler::interp::Tensor;
    use kiln_compiler::ir::{AttnMask, AttnSpec, Builder, DType, Dim, Op};
    let (b, t, h, hk, d) = (2i64, 5i64, 4i64, 2i64, 3i64);
    let dims = |xs: &[i64]| xs.iter().map(|x| Dim::c(*x)).collect::<Vec<_>>();
    let mut g = Builder::new();
    let split = |g: &mut Builder, name: &str, heads: i64| {
        let x = g.input(name, dims(&[b, t, heads * d]), DType::F32).unwrap();
        let x = g.reshape(x, dims(&[b, t, heads, d])).unwrap();
        g.permute(x, vec![0, 2, 1, 3]).unwrap()
    };
    let q = split(&mut g, "xq", h);
    let k = split(&mut g, "xk", hk);
    let v = split(&mut g, "xv", hk);
    let spec = AttnSpec {
        scale: 0.5,
        mask: AttnMask::Causal,
        bias: false,
        key_padding: false,
    };
    let o = g.op(Op::Attention(spec), &[q, k, v]).unwrap();
    let merged = g.permute(o, vec![0, 2, 1, 3]).unwrap();
    let y = g.reshape(merged, dims(&[b, t, h * d])).unwrap();
    g.output("y", y).unwrap();
    if extra_users {
        g.output("q", q).unwrap();
        g.output("o", o).unwrap();
    }
    let graph = g.finish();
    verify(&graph).unwrap();
    let prog = fuse(&graph).unwrap();
    prog.validate().unwrap();
    let mut ins = HashMap::new();
    for (name, heads) in [("xq", h), ("xk", hk), ("xv", hk)] {
        let n = (b * t * heads * d) as usize;
        let data = (0..n)
            .map(|i| ((i * 37 + name.len() * 11) % 17) as f64 / 8.0 - 1.0)
            .collect();
        ins.insert(
            name.to_string(),
            Tensor::float(
                DType::F32,
                vec![b as usize, t as usize, (heads * d) as usize],
                data,
            ),
        );
    }
    let want = run(
        &graph,
        &Bindings::new(),
        &ins,
        &HashMap::new(),
        &RunOptions::default(),
    )
    .unwrap();
    let mut state = reference::init_state(&prog, 0);
    let got = reference::run(&prog, &host_inputs(&ins), &mut state, 0, 0).unwrap();
    for (name, t) in &want.outputs {
        let w = t.to_f64_vec();
        let g = &got[name];
        assert_eq!(g.len(), w.len(), "{name}");
        for (i, (a, e)) in g.iter().zip(&w).enumerate() {
            assert!(
                (f64::from(*a) - e).abs() <= 1e-5 * (1.0 + e.abs()),
                "{name}[{i}]: {a} vs {e}\n{prog}"
            );
        }
    }
    prog
}

#[test]
fn head_swaps_fold_unless_another_reader_needs_them() {
    let attention = |p: &Program| {
        p.steps
            .iter()
            .find_map(|s| match &s.kernel {
                Kernel::Attention(a) => Some(a.layout),
                _ => None,
            })
            .unwrap()
    };
    let folded = split_attention_program(false);
    let l = attention(&folded);
    assert_eq!([l.q, l.k, l.v, l.o], [HeadLayout::SeqMajor; 4], "{folded}");
    assert_eq!(count_kind(&folded, "data.copy"), 0, "{folded}");
    // `q` is also an output: its copy stays (the kernel still reads the projection in place);
    // `o` is read unmerged: written head-major, merged by a copy.
    let kept = split_attention_program(true);
    let l = attention(&kept);
    assert_eq!(
        [l.q, l.k, l.v, l.o],
        [
            HeadLayout::SeqMajor,
            HeadLayout::SeqMajor,
            HeadLayout::SeqMajor,
            HeadLayout::HeadMajor
        ],
        "{kept}"
    );
    assert_eq!(count_kind(&kept, "data.copy"), 2, "{kept}");
}
