//! The executor's arena plan never lets two buffers that are live in the same step share words,
//! and dropout noise is bit-exact with the interpreter's `RandUniform`.

#[path = "../../compiler/tests/fusion_support/mod.rs"]
mod fusion_support;

use std::collections::BTreeMap;

use fusion_support::{bindings, forward, CASES};
use kiln_compiler::interp::{run, RunOptions};
use kiln_compiler::ir::{Bindings, Builder, Dim};
use kiln_compiler::passes::attention::{recognize, stop_shift_gradients};
use kiln_compiler::passes::fusion::fuse;
use kiln_compiler::program::{BufferKind, Program};
use kiln_compiler::train::{training_step, StepOptions};
use kiln_runtime::backend::{Backend, StepRng};
use kiln_runtime::cpu::exec::arena::plan_arena;
use kiln_runtime::cpu::CpuBackend;

fn check_plan(label: &str, p: &Program) {
    let plan = plan_arena(p);
    let n = p.buffers.len();
    let mut first = vec![usize::MAX; n];
    let mut last = vec![0; n];
    for (s, st) in p.steps.iter().enumerate() {
        for v in st.inputs.iter().chain(&st.outputs) {
            first[v.buf.index()] = first[v.buf.index()].min(s);
            last[v.buf.index()] = last[v.buf.index()].max(s);
        }
    }
    // Non-temporaries live for the whole step.
    for (i, b) in p.buffers.iter().enumerate() {
        if b.kind != BufferKind::Temp {
            first[i] = 0;
            last[i] = usize::MAX;
        }
    }
    let mut shared = 0;
    for a in 0..n {
        for b in a + 1..n {
            let (la, lb) = (p.buffers[a].len, p.buffers[b].len);
            if la == 0 || lb == 0 || first[a] == usize::MAX || first[b] == usize::MAX {
                continue;
            }
            let (oa, ob) = (plan.offsets[a], plan.offsets[b]);
            let space = oa < ob + lb && ob < oa + la;
            let time = first[a] <= last[b] && first[b] <= last[a];
            assert!(
                !(space && time),
                "{label}: b{a} and b{b} overlap while both live"
            );
            shared += usize::from(space);
            assert!(oa + la <= plan.words && ob + lb <= plan.words);
        }
    }
    assert!(
        shared > 0,
        "{label}: no temporaries share memory: the planner is not exercised"
    );
}

#[test]
fn arena_plans_never_overlap_live_buffers() {
    for case in CASES {
        let mut fwd = forward(case);
        recognize(&mut fwd).unwrap();
        stop_shift_gradients(&mut fwd).unwrap();
        let step = training_step(&fwd, &StepOptions::default()).unwrap();
        let p = fuse(&step.bind(&bindings(case)).unwrap()).unwrap();
        check_plan(case.config, &p);
    }
}

#[test]
fn rand_uniform_is_bit_exact() {
    let mut b = Builder::new();
    let u = b.rand_uniform(vec![Dim::c(3), Dim::sym("n")], 7).unwrap();
    let w = b.rand_uniform(vec![Dim::sym("n")], 8).unwrap();
    b.output("u", u).unwrap();
    b.output("w", w).unwrap();
    let g = b.finish();
    let bind = Bindings::new().with("n", 40_000);
    let mut backend = CpuBackend::from_graph(&g, &bind, 0).unwrap();
    for (seed, step) in [(5u64, 9u64), (6, 9), (5, 10)] {
        let got = backend
            .run(&BTreeMap::new(), StepRng { seed, step })
            .unwrap();
        let opts = RunOptions {
            seed,
            step,
            ..Default::default()
        };
        let want = run(&g, &bind, &Default::default(), &Default::default(), &opts).unwrap();
        for k in ["u", "w"] {
            let a: Vec<u32> = want.outputs[k]
                .to_f32_vec()
                .iter()
                .map(|x| x.to_bits())
                .collect();
            let b: Vec<u32> = got[k].data.iter().map(|x| x.to_bits()).collect();
            assert_eq!(a, b, "noise `{k}` differs at seed {seed} step {step}");
        }
    }
}
