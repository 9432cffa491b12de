//! The executor's arena plan never lets two buffers that are live in the same step share words
//! (except an output written over a dying input where the JIT allows it), the executor allocates
//! exactly the planned bytes, and dropout noise is bit-exact with the interpreter's `RandUniform`.

#[path = "../../compiler/tests/fusion_support/mod.rs"]
mod fusion_support;

use std::collections::BTreeMap;

use fusion_support::{bindings, forward, CASES};
use kiln_compiler::interp::{run, RunOptions};
use kiln_compiler::ir::{Bindings, Builder, Dim};
use kiln_compiler::kernel::{schedule, InputAccess, Kernel, OutputAccess};
use kiln_compiler::passes::attention::{recognize, stop_shift_gradients};
use kiln_compiler::passes::fusion::fuse;
use kiln_compiler::program::{BufferKind, Program, View};
use kiln_compiler::train::{training_step, StepOptions};
use kiln_runtime::backend::{Backend, StepRng};
use kiln_runtime::cpu::exec::arena::plan_arena;
use kiln_runtime::cpu::CpuBackend;

/// Whether step `s` may write output `o` over input buffer `b` under the JIT's aliasing contract:
/// a row program with at most one column pass, a `Full` output over a buffer read only through
/// whole-buffer `Full` inputs of the same length.
fn jit_may_alias(p: &Program, s: usize, o: usize, b: usize) -> bool {
    let st = &p.steps[s];
    let Kernel::Row(prog) = &st.kernel else {
        return false;
    };
    let single_pass = schedule(prog)
        .map(|x| x.passes().count() <= 1)
        .unwrap_or(false);
    let out = &st.outputs[o];
    let whole = |v: &View| v.offset == 0 && v.len == p.buffers[v.buf.index()].len;
    let reads: Vec<(usize, &View)> = st
        .inputs
        .iter()
        .enumerate()
        .filter(|(_, v)| v.buf.index() == b)
        .collect();
    single_pass
        && prog.outputs[o].access == OutputAccess::Full
        && whole(out)
        && !reads.is_empty()
        && reads.iter().all(|(i, v)| {
            prog.inputs[*i].access == InputAccess::Full && whole(v) && v.len == out.len
        })
}

/// Checks the executor's arena against a liveness model of its own (times: 0 before the first
/// step, `s + 1` for step `s`, `end` after the last): state and constants live the whole step
/// (updated state until its last use when its new value was placed in its slot), inputs until
/// their last read, outputs and new state from their first write to the end, temporaries from
/// first write to last use. Two buffers alive at a common time may share a word only where one
/// dies at a step that writes the other over it as the JIT allows. Returns how many pairs share.
fn check_plan(label: &str, p: &Program) -> usize {
    let plan = plan_arena(p);
    let n = p.buffers.len();
    let end = p.steps.len() + 1;
    let mut first = vec![usize::MAX; n];
    let mut last = vec![0; n];
    for (s, st) in p.steps.iter().enumerate() {
        for v in st.inputs.iter().chain(&st.outputs) {
            first[v.buf.index()] = first[v.buf.index()].min(s + 1);
            last[v.buf.index()] = last[v.buf.index()].max(s + 1);
        }
    }
    let home_of: Vec<Option<usize>> = (0..n)
        .map(|b| {
            p.updates.iter().find_map(|u| {
                let home = p.state_decl(&u.target)?.buffer.index();
                (u.view.buf.index() == b && home != b).then_some(home)
            })
        })
        .collect();
    for (i, b) in p.buffers.iter().enumerate() {
        match &b.kind {
            BufferKind::State(_) => {
                first[i] = 0;
                let value_at_home = home_of
                    .iter()
                    .enumerate()
                    .any(|(v, h)| *h == Some(i) && plan.offsets[v] == plan.offsets[i]);
                if !value_at_home {
                    last[i] = end;
                }
            }
            BufferKind::Const(_) => {
                first[i] = 0;
                last[i] = end;
            }
            BufferKind::Input(_) => first[i] = 0,
            BufferKind::Output(_) => last[i] = end,
            BufferKind::Temp => {}
        }
        if home_of[i].is_some() || p.outputs.iter().any(|o| o.view.buf.index() == i) {
            last[i] = end;
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
            assert!(oa + la <= plan.words && ob + lb <= plan.words, "{label}");
            let space = oa < ob + lb && ob < oa + la;
            shared += usize::from(space);
            let time = first[a] <= last[b] && first[b] <= last[a];
            if !(space && time) {
                continue;
            }
            // One dies at the step that first writes the other over it.
            let handover = |dying: usize, new: usize| {
                last[dying] == first[new] && first[new] >= 1 && first[new] <= p.steps.len() && {
                    let s = first[new] - 1;
                    p.steps[s]
                        .outputs
                        .iter()
                        .enumerate()
                        .any(|(o, v)| v.buf.index() == new && jit_may_alias(p, s, o, dying))
                        && p.steps[s + 1..]
                            .iter()
                            .all(|st| st.outputs.iter().all(|v| v.buf.index() != new))
                }
            };
            assert!(
                handover(a, b) || handover(b, a),
                "{label}: b{a} (live {}..={}) and b{b} (live {}..={}) share words",
                first[a],
                last[a],
                first[b],
                last[b]
            );
        }
    }
    assert!(
        shared > 0,
        "{label}: no buffers share memory: the planner is not exercised"
    );
    shared
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
        let planned = plan_arena(&p).planned_bytes();
        let backend = CpuBackend::new(p, 0).unwrap();
        assert_eq!(
            backend.arena_bytes() as u64,
            planned,
            "{}: allocated bytes differ from the plan",
            case.config
        );
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
