//! The arena plan is valid for every tiny spec, policy and layout: every buffer has a slot inside
//! the arena and no two buffers alive at the same time share a byte (except a view and its source,
//! and an in-place write over the read that dies at that step). Independently of that checker, the
//! step is *executed* through the arena: each op reads its operands from their planned bytes and
//! writes its result to its planned bytes in one `Vec<u8>` of the planned size; the loss and every
//! state update read from the arena at the end equal the interpreter's.

use std::collections::HashMap;
use std::path::Path;

use kiln_compiler::interp::{
    init_params, run, Precision as InterpPrecision, RunOptions, Tensor, TensorData,
};
use kiln_compiler::ir::{Bindings, DType, Graph, Op};
use kiln_compiler::plan::{self, validate, Analysis, BufKey, PlanOptions};
use kiln_compiler::sema::plancheck::RecomputePolicy;
use kiln_compiler::sema::{render, Value, Workspace};

fn workspace(spec: &str) -> Workspace {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("specs").join(spec)).expect("spec");
    let mut ws = Workspace::new();
    ws.add_file(&format!("specs/{spec}"), &text);
    ws
}

fn analysis(
    ws: &Workspace,
    config: &str,
    policy: RecomputePolicy,
    tensor: u64,
    dropout: bool,
) -> Analysis {
    let overrides = if dropout {
        vec![("dropout".to_string(), Value::Float(0.1))]
    } else {
        vec![]
    };
    let o = PlanOptions {
        model: Some(config.into()),
        overrides,
        batch: Some(2),
        seq: Some(8),
        recompute: Some(policy),
        tensor: Some(tensor),
        sequence: Some(tensor > 1),
        ..Default::default()
    };
    let s = plan::setup(ws, &o)
        .unwrap_or_else(|d| panic!("{}", d.iter().map(|x| render(x)).collect::<String>()));
    plan::analyze(ws, &s)
        .unwrap_or_else(|d| panic!("{}", d.iter().map(|x| render(x)).collect::<String>()))
}

const TINY: [(&str, &str, bool); 5] = [
    ("gpt2.kiln", "gpt2_tiny", true),
    ("gpt3.kiln", "gpt3_tiny", true),
    ("llama.kiln", "llama_tiny", false),
    ("palm.kiln", "palm_tiny", false),
    ("t5.kiln", "t5_tiny", true),
];

#[test]
fn arena_plans_are_valid_for_every_tiny_spec_policy_and_layout() {
    for (spec, config, dropout) in TINY {
        let ws = workspace(spec);
        for (policy, tensor) in [
            (RecomputePolicy::None, 1),
            (RecomputePolicy::Full, 1),
            (RecomputePolicy::Selective, 2),
        ] {
            {
                let a = analysis(&ws, config, policy.clone(), tensor, dropout);
                let what = format!("{config} {policy:?} tensor={tensor}");
                let errs = validate(&a.schedule, &a.memory_input, &a.memory.arena);
                assert!(
                    errs.is_empty(),
                    "{what}: {}",
                    errs[..errs.len().min(5)].join("\n")
                );
                // Every value of the planned graph has a slot.
                for v in a.rewritten.graph.values() {
                    assert!(a.memory.arena.slot(v).is_some(), "{what}: {v} has no slot");
                }
                assert!(a.memory.arena.total >= a.memory.live_peak, "{what}");
                let sum: u64 = a
                    .memory
                    .arena
                    .slots
                    .values()
                    .map(|s| s.size.div_ceil(64) * 64)
                    .sum();
                assert!(
                    a.memory.arena.total < sum,
                    "{what}: the arena reuses nothing"
                );
            }
        }
    }
}

#[test]
fn the_checker_rejects_overlapping_live_buffers() {
    let ws = workspace("gpt2.kiln");
    let a = analysis(&ws, "gpt2_tiny", RecomputePolicy::None, 1, false);
    // Two big buffers alive at the peak: put the second onto the first.
    let t = a.memory.peak_time;
    let mut live: Vec<(BufKey, u64)> = a
        .memory
        .lifetimes
        .iter()
        .filter(|(_, l)| l.first <= t && t <= l.last)
        .map(|(k, _)| (*k, a.memory.arena.slots[k].size))
        .filter(|(k, _)| a.memory.class_of[k] != usize::MAX)
        .collect();
    live.sort_by_key(|(k, s)| (std::cmp::Reverse(*s), *k));
    let (x, y) = live
        .iter()
        .flat_map(|a1| live.iter().map(move |b1| (*a1, *b1)))
        .find(|((k1, _), (k2, _))| k1 != k2 && a.memory.class_of[k1] != a.memory.class_of[k2])
        .map(|((k1, _), (k2, _))| (k1, k2))
        .expect("two live classes");
    let mut bad = a.memory.arena.clone();
    let off = bad.slots[&x].offset;
    bad.slots.get_mut(&y).expect("slot").offset = off;
    assert!(!validate(&a.schedule, &a.memory_input, &bad).is_empty());
    // Dropping a slot is caught too.
    let mut missing = a.memory.arena.clone();
    missing.slots.remove(&x);
    assert!(!validate(&a.schedule, &a.memory_input, &missing).is_empty());
}

fn encode(t: &Tensor, dtype: DType) -> Vec<u8> {
    let mut out = Vec::new();
    match (&t.data, dtype) {
        (TensorData::Float(v), DType::F32) => {
            v.iter().for_each(|x| out.extend((*x as f32).to_le_bytes()))
        }
        (TensorData::Float(v), DType::F64) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        (TensorData::Int(v), DType::I32) => {
            v.iter().for_each(|x| out.extend((*x as i32).to_le_bytes()))
        }
        (TensorData::Int(v), DType::I64) => v.iter().for_each(|x| out.extend(x.to_le_bytes())),
        (TensorData::Bool(v), DType::Bool) => v.iter().for_each(|x| out.push(u8::from(*x))),
        (d, t) => panic!("cannot encode {d:?} as {t}"),
    }
    out
}

fn decode(bytes: &[u8], dtype: DType, shape: Vec<usize>) -> Tensor {
    let n: usize = shape.iter().product();
    match dtype {
        DType::F32 => Tensor::float(
            dtype,
            shape,
            (0..n)
                .map(|i| f32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()) as f64)
                .collect(),
        ),
        DType::F64 => Tensor::float(
            dtype,
            shape,
            (0..n)
                .map(|i| f64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().unwrap()))
                .collect(),
        ),
        DType::I32 => Tensor::int(
            dtype,
            shape,
            (0..n)
                .map(|i| i32::from_le_bytes(bytes[4 * i..4 * i + 4].try_into().unwrap()) as i64)
                .collect(),
        ),
        DType::I64 => Tensor::int(
            dtype,
            shape,
            (0..n)
                .map(|i| i64::from_le_bytes(bytes[8 * i..8 * i + 8].try_into().unwrap()))
                .collect(),
        ),
        DType::Bool => Tensor::bool(shape, bytes[..n].iter().map(|b| *b != 0).collect()),
        DType::BF16 | DType::F16 => panic!("tiny specs are f32"),
    }
}

fn dims(g: &Graph, v: kiln_compiler::ir::ValueId) -> Vec<usize> {
    g.shape(v)
        .iter()
        .map(|d| d.as_const().unwrap() as usize)
        .collect()
}

/// Runs the step op by op through one byte arena laid out as planned.
fn execute_in_arena(
    a: &Analysis,
    inputs: &HashMap<String, Tensor>,
    params: &HashMap<String, Tensor>,
    opts: &RunOptions,
) -> (Tensor, HashMap<String, Tensor>) {
    let g = &a.rewritten.graph;
    let arena = &a.memory.arena;
    let mut mem = vec![0xA5u8; arena.total as usize];
    let store = |mem: &mut Vec<u8>, v, t: &Tensor| {
        let s = arena.slot(v).expect("slot");
        let b = encode(t, g.dtype(v));
        assert_eq!(b.len() as u64, s.size);
        mem[s.offset as usize..s.offset as usize + b.len()].copy_from_slice(&b);
    };
    let load = |mem: &Vec<u8>, v| {
        let s = arena.slot(v).expect("slot");
        decode(
            &mem[s.offset as usize..(s.offset + s.size) as usize],
            g.dtype(v),
            dims(g, v),
        )
    };
    for v in g.values() {
        match g.node(v).op() {
            Op::Param { name, .. } => store(&mut mem, v, &params[name]),
            Op::Input { name, .. } => store(&mut mem, v, &inputs[name]),
            _ => {}
        }
    }
    for step in &a.schedule.steps {
        let v = step.node.expect("t = 1 schedules are one op per step");
        let n = g.node(v);
        // A graph of this one op over placeholders holding its operands' arena bytes.
        let mut one = Graph::new();
        let mut feed = HashMap::new();
        let mut args = Vec::new();
        for (i, u) in n.inputs().iter().enumerate() {
            let name = format!("x{i}");
            let t = load(&mem, *u);
            let x = one
                .add(
                    Op::Input {
                        name: name.clone(),
                        shape: g.shape(*u).clone(),
                        dtype: g.dtype(*u),
                    },
                    &[],
                    None,
                )
                .unwrap();
            feed.insert(name, t);
            args.push(x);
        }
        let y = one.add(n.op().clone(), &args, None).unwrap();
        one.add_output("y", y).unwrap();
        let out = run(&one, &Bindings::new(), &feed, &HashMap::new(), opts).expect("op runs");
        store(&mut mem, v, &out.outputs["y"]);
    }
    let loss = load(&mem, g.output("loss").unwrap());
    let mut updates = HashMap::new();
    for u in &arena.updates {
        let BufKey::Value(v) = u.value else {
            panic!("updates are values")
        };
        updates.insert(u.target.clone(), load(&mem, v));
    }
    (loss, updates)
}

#[test]
fn the_step_runs_through_the_planned_arena_bitwise() {
    for (spec, config, policy) in [
        ("gpt2.kiln", "gpt2_tiny", RecomputePolicy::None),
        ("gpt2.kiln", "gpt2_tiny", RecomputePolicy::Full),
        ("llama.kiln", "llama_tiny", RecomputePolicy::Selective),
    ] {
        let ws = workspace(spec);
        let a = analysis(&ws, config, policy.clone(), 1, config.starts_with("gpt2"));
        let g = &a.rewritten.graph;
        let b = Bindings::new();
        let params = init_params(g, &b, 3).unwrap();
        let mut inputs = HashMap::new();
        for v in g.inputs() {
            if let Op::Input { name, dtype, .. } = g.node(v).op() {
                let shape = dims(g, v);
                let n: usize = shape.iter().product();
                let t = if dtype.is_int() {
                    Tensor::int(
                        *dtype,
                        shape,
                        (0..n as i64).map(|i| (i * 7 + 3) % 50).collect(),
                    )
                } else {
                    Tensor::float(*dtype, shape, vec![1e-3; n])
                };
                inputs.insert(name.clone(), t);
            }
        }
        let opts = RunOptions {
            seed: 9,
            step: 1,
            precision: InterpPrecision::Declared,
        };
        let want = run(g, &b, &inputs, &params, &opts).unwrap();
        let (loss, updates) = execute_in_arena(&a, &inputs, &params, &opts);
        assert_eq!(
            loss.to_f64_vec(),
            want.outputs["loss"].to_f64_vec(),
            "{config} {policy:?}: loss"
        );
        assert_eq!(updates.len(), want.updates.len());
        for (k, t) in &want.updates {
            assert_eq!(
                updates[k].to_f64_vec(),
                t.to_f64_vec(),
                "{config} {policy:?}: update {k}"
            );
        }
        let in_place = a.memory.arena.updates.iter().filter(|u| u.in_place).count();
        assert!(
            in_place * 2 > a.memory.arena.updates.len(),
            "{config}: most updates commit in place"
        );
    }
}
