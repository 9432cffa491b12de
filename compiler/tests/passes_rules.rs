//! Every rewrite rule of every pass, on small graphs built by hand: the rule fires (its counter
//! moves and the graph changes shape as expected), the graph still verifies, and the interpreter
//! gives the same outputs before and after on random inputs that include the awkward values
//! (`±0`, `±inf`, NaN, ints near the i32 limits), in f64 and in declared precision. Rules the
//! passes refuse on purpose are checked not to fire.

use std::collections::HashMap;

use kiln_compiler::interp::{run, Precision, RunOptions, Tensor};
use kiln_compiler::ir::print::print_with_errors;
use kiln_compiler::ir::{
    bind_shape, shape_of, verify, BinaryOp, Bindings, Builder, CmpOp, DType, Dim, Graph, Init,
    IrError, Op, ValueId,
};
use kiln_compiler::passes::{
    const_fold, cse, dce, layout, simplify, strip_stop_gradient, PassFn, PassResult,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

// ----- harness ------------------------------------------------------------------------------------

/// A graph from a builder closure that returns its output values (named `out0`, `out1`, ..).
fn build(f: impl FnOnce(&mut Builder) -> Result<Vec<ValueId>, IrError>) -> Graph {
    let mut b = Builder::new();
    let outs = f(&mut b).expect("test graph builds");
    for (i, v) in outs.into_iter().enumerate() {
        b.output(&format!("out{i}"), v).unwrap();
    }
    let g = b.finish();
    verify(&g)
        .unwrap_or_else(|e| panic!("test graph does not verify:\n{}", print_with_errors(&g, &e)));
    g
}

/// Runs `pass` on a copy, verifies the result, and checks it computes what the original does.
fn apply(g: &Graph, pass: PassFn) -> (Graph, PassResult) {
    let mut h = g.clone();
    let r = pass(&mut h).expect("pass runs");
    if let Err(e) = verify(&h) {
        panic!("the pass broke the graph:\n{}", print_with_errors(&h, &e));
    }
    same_outputs(g, &h);
    (h, r)
}

/// `apply`, and the counter `rule` must have moved.
fn fires(g: &Graph, pass: PassFn, rule: &str) -> Graph {
    let (h, r) = apply(g, pass);
    assert!(
        r.stats.get(rule) > 0,
        "`{rule}` did not fire ({}):\n{g}",
        r.stats
    );
    assert!(r.changed);
    h
}

/// `apply`, and the pass must have changed nothing.
fn refuses(g: &Graph, pass: PassFn) {
    let (h, r) = apply(g, pass);
    assert!(!r.changed, "the pass rewrote ({}):\n{g}\n->\n{h}", r.stats);
    assert_eq!(g.to_string(), h.to_string());
}

fn count(g: &Graph, name: &str) -> usize {
    g.values()
        .iter()
        .filter(|v| g.node(**v).op().name() == name)
        .count()
}

const SPECIAL: [f64; 8] = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    f64::INFINITY,
    f64::NEG_INFINITY,
    f64::NAN,
    1e30,
];

/// Random data for every input and param, with special values mixed in.
fn data(g: &Graph, seed: u64) -> HashMap<String, Tensor> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let mut out = HashMap::new();
    let b = Bindings::new();
    for v in g.inputs().into_iter().chain(g.params()) {
        let n = g.node(v);
        let name = n.op().source_name().unwrap().to_string();
        let shape = bind_shape(n.shape(), &b).unwrap();
        let len: usize = shape.iter().product();
        let t = match n.dtype() {
            DType::Bool => Tensor::bool(shape, (0..len).map(|_| r.random_bool(0.5)).collect()),
            dt if dt.is_int() => {
                let edge = [0, 1, -1, i32::MAX as i64, i32::MIN as i64];
                let vals = (0..len)
                    .map(|i| {
                        if i % 4 == 0 {
                            edge[i / 4 % edge.len()]
                        } else {
                            r.random_range(-5..5)
                        }
                    })
                    .collect();
                Tensor::int(dt, shape, vals)
            }
            dt => {
                let special = name.starts_with("s");
                let vals = (0..len)
                    .map(|i| {
                        if special && i % 3 == 0 {
                            SPECIAL[i / 3 % SPECIAL.len()]
                        } else {
                            r.random_range(-2.0..2.0)
                        }
                    })
                    .collect();
                Tensor::float(dt, shape, vals)
            }
        };
        out.insert(name, t);
    }
    out
}

/// Equal element by element: NaN matches NaN, `-0` matches `0`, otherwise a relative 1e-12.
fn close(a: f64, b: f64) -> bool {
    (a.is_nan() && b.is_nan()) || a == b || (a - b).abs() <= 1e-12 * a.abs().max(b.abs())
}

fn same_outputs(a: &Graph, b: &Graph) {
    let feed = data(a, 9);
    let (inputs, params): (HashMap<_, _>, HashMap<_, _>) = feed
        .into_iter()
        .partition(|(k, _)| a.find_input(k).is_some());
    for precision in [Precision::F64, Precision::Declared] {
        let o = RunOptions {
            seed: 3,
            step: 1,
            precision,
        };
        let ra = run(a, &Bindings::new(), &inputs, &params, &o).expect("run before");
        let rb = run(b, &Bindings::new(), &inputs, &params, &o).expect("run after");
        assert_eq!(
            ra.outputs.keys().collect::<Vec<_>>(),
            rb.outputs.keys().collect::<Vec<_>>()
        );
        for (k, ta) in ra.outputs.iter().chain(ra.updates.iter()) {
            let tb = rb.outputs.get(k).or_else(|| rb.updates.get(k)).unwrap();
            assert_eq!((ta.dtype, &ta.shape), (tb.dtype, &tb.shape), "{k}");
            let (xa, xb) = (ta.to_f64_vec(), tb.to_f64_vec());
            for (i, (x, y)) in xa.iter().zip(&xb).enumerate() {
                assert!(
                    close(*x, *y),
                    "{precision:?} {k}[{i}]: {x} before, {y} after\n{a}\n->\n{b}"
                );
            }
        }
    }
}

fn f32s(dims: &[i64]) -> Vec<Dim> {
    shape_of(dims)
}

fn input(b: &mut Builder, name: &str, dims: &[i64], dt: DType) -> ValueId {
    b.input(name, shape_of(dims), dt).unwrap()
}

fn uniform(g: &Graph, v: ValueId) -> Option<f64> {
    let n = g.node(v);
    match n.op() {
        Op::Constant { value, .. } => Some(*value),
        Op::Broadcast { .. } => match g.node(n.inputs()[0]).op() {
            Op::Constant { value, .. } => Some(*value),
            _ => None,
        },
        _ => None,
    }
}

fn out(g: &Graph, i: usize) -> ValueId {
    g.output(&format!("out{i}")).unwrap()
}

// ----- const_fold ---------------------------------------------------------------------------------

#[test]
fn fold_exact_float_arithmetic_without_materialising() {
    let g = build(|b| {
        let one = b.full(1.0, &f32s(&[1000, 1000]), DType::F32)?;
        let sixteen = b.full(16.0, &f32s(&[1000, 1000]), DType::F32)?;
        let q = b.div(one, sixteen)?;
        let n = b.neg(q)?;
        Ok(vec![n])
    });
    let h = fires(&g, const_fold::run, "folded");
    assert_eq!(uniform(&h, out(&h, 0)), Some(-0.0625));
    // One scalar constant and one broadcast carry the million elements.
    assert!(matches!(h.node(out(&h, 0)).op(), Op::Broadcast { .. }));
    let (h, _) = apply(&h, dce::run);
    assert_eq!(h.len(), 2);
}

#[test]
fn fold_refuses_inexact_f32_but_folds_f64() {
    let mk = |dt: DType| {
        build(move |b| {
            let one = b.constant(1.0, dt);
            let c = b.constant(0.9, dt);
            Ok(vec![b.sub(one, c)?])
        })
    };
    refuses(&mk(DType::F32), const_fold::run);
    let h = fires(&mk(DType::F64), const_fold::run, "folded");
    assert_eq!(uniform(&h, out(&h, 0)), Some(1.0 - 0.9));
    // An f32 overflow is not folded either (f64 would give 1e60, f32 gives inf).
    let big = build(|b| {
        let x = b.constant(1e30, DType::F32);
        let x = b.mul(x, x)?;
        let y = b.constant(1e30, DType::F32);
        Ok(vec![b.div(x, y)?])
    });
    refuses(&big, const_fold::run);
}

#[test]
fn fold_ints_wrap_and_division_by_zero_stays() {
    let g = build(|b| {
        let max = b.constant(i32::MAX as f64, DType::I32);
        let one = b.constant(1.0, DType::I32);
        let wrapped = b.add(max, one)?;
        let m7 = b.constant(-7.0, DType::I32);
        let two = b.constant(2.0, DType::I32);
        let q = b.div(m7, two)?;
        let min = b.constant(i32::MIN as f64, DType::I32);
        let neg_min = b.neg(min)?;
        Ok(vec![wrapped, q, neg_min])
    });
    let h = fires(&g, const_fold::run, "folded");
    assert_eq!(uniform(&h, out(&h, 0)), Some(i32::MIN as f64));
    assert_eq!(uniform(&h, out(&h, 1)), Some(-3.0));
    assert_eq!(uniform(&h, out(&h, 2)), Some(i32::MIN as f64));
    let by_zero = build(|b| {
        let x = b.constant(5.0, DType::I32);
        let z = b.constant(0.0, DType::I32);
        Ok(vec![b.div(x, z)?])
    });
    let mut h = by_zero.clone();
    assert!(!const_fold::run(&mut h).unwrap().changed);
}

#[test]
fn fold_bools_casts_selects_and_comparisons() {
    let g = build(|b| {
        let two = b.constant(2.5, DType::F32);
        let three = b.constant(3.0, DType::F32);
        let lt = b.compare(CmpOp::Lt, two, three)?;
        let as_i = b.cast(two, DType::I32)?;
        let back = b.cast(as_i, DType::F32)?;
        let pick = b.select(lt, two, three)?;
        let ne = b.compare(CmpOp::Ne, lt, lt)?;
        Ok(vec![lt, as_i, back, pick, ne])
    });
    let h = fires(&g, const_fold::run, "folded");
    assert_eq!(uniform(&h, out(&h, 0)), Some(1.0));
    assert_eq!(uniform(&h, out(&h, 1)), Some(2.0));
    assert_eq!(uniform(&h, out(&h, 2)), Some(2.0));
    assert_eq!(uniform(&h, out(&h, 3)), Some(2.5));
    assert_eq!(uniform(&h, out(&h, 4)), Some(0.0));
}

#[test]
fn fold_reductions_of_uniform_values_when_every_partial_sum_is_exact() {
    let g = build(|b| {
        let half = b.full(0.5, &f32s(&[4, 8]), DType::F32)?;
        let s = b.reduce_sum(half, vec![1], false)?;
        let m = b.reduce_max(half, vec![0, 1], true)?;
        let ints = b.full(3.0, &f32s(&[5]), DType::I32)?;
        let si = b.reduce_sum(ints, vec![0], false)?;
        Ok(vec![s, m, si])
    });
    let h = fires(&g, const_fold::run, "folded");
    assert_eq!(uniform(&h, out(&h, 0)), Some(4.0));
    assert_eq!(uniform(&h, out(&h, 1)), Some(0.5));
    assert_eq!(uniform(&h, out(&h, 2)), Some(15.0));
    // 0.1 is not an f32 value: summing it in f32 and in f64 differ, so it stays.
    let tenth = build(|b| {
        let x = b.full(0.1, &f32s(&[10]), DType::F32)?;
        Ok(vec![b.reduce_sum(x, vec![0], false)?])
    });
    refuses(&tenth, const_fold::run);
}

#[test]
fn fold_leaves_transcendentals_iota_and_noise_except_where_exact() {
    let g = build(|b| {
        let one = b.constant(1.0, DType::F32);
        let e = b.exp(one)?;
        let io = b.iota(f32s(&[4]), 0, DType::F32)?;
        let io2 = b.mul(io, io)?;
        let r = b.rand_uniform(f32s(&[4]), 1)?;
        let r2 = b.add(r, r)?;
        Ok(vec![e, io2, r2])
    });
    refuses(&g, const_fold::run);
    let zero = build(|b| {
        let z = b.constant(0.0, DType::F32);
        let one = b.constant(1.0, DType::F32);
        Ok(vec![b.exp(z)?, b.log(one)?, b.tanh(z)?])
    });
    let h = fires(&zero, const_fold::run, "folded");
    assert_eq!(uniform(&h, out(&h, 0)), Some(1.0));
    assert_eq!(uniform(&h, out(&h, 1)), Some(0.0));
    assert_eq!(uniform(&h, out(&h, 2)), Some(0.0));
}

#[test]
fn fold_dim_consts_with_constant_dims() {
    let g = build(|b| {
        let d = b.op(
            Op::DimConst {
                dim: Dim::c(16),
                dtype: DType::F32,
            },
            &[],
        )?;
        let one = b.constant(1.0, DType::F32);
        Ok(vec![b.div(one, d)?])
    });
    let (h, _) = apply(&g, const_fold::run);
    // DimConst → 16, then 1/16 in the same sweep (topological order).
    assert_eq!(uniform(&h, out(&h, 0)), Some(0.0625));
}

// ----- simplify -----------------------------------------------------------------------------------

/// `op(x, uniform c)` and the reverse, for the identity rules with a constant operand.
fn with_const(op: BinaryOp, c: f64, const_first: bool) -> Graph {
    build(move |b| {
        let x = input(b, "sx", &[3, 4], DType::F32);
        let k = b.full(c, &f32s(&[3, 4]), DType::F32)?;
        let y = if const_first {
            b.binary(op, k, x)?
        } else {
            b.binary(op, x, k)?
        };
        Ok(vec![y])
    })
}

#[test]
fn simplify_identity_elements() {
    for (op, c, first, rule) in [
        (BinaryOp::Mul, 1.0, false, "mul_one"),
        (BinaryOp::Mul, 1.0, true, "mul_one"),
        (BinaryOp::Div, 1.0, false, "div_one"),
        (BinaryOp::Add, 0.0, false, "add_zero"),
        (BinaryOp::Add, 0.0, true, "add_zero"),
        (BinaryOp::Sub, 0.0, false, "sub_zero"),
    ] {
        let g = with_const(op, c, first);
        let h = fires(&g, simplify::run, rule);
        assert!(
            matches!(h.node(out(&h, 0)).op(), Op::Input { .. }),
            "{rule}"
        );
    }
    // Not identities: 1/x, 0 - x, x * 2.
    for (op, c, first) in [
        (BinaryOp::Div, 1.0, true),
        (BinaryOp::Sub, 0.0, true),
        (BinaryOp::Mul, 2.0, false),
    ] {
        refuses(&with_const(op, c, first), simplify::run);
    }
}

#[test]
fn simplify_refuses_rules_that_are_wrong_for_nan_and_inf() {
    let g = build(|b| {
        let x = input(b, "sx", &[8], DType::F32);
        let zero = b.full(0.0, &f32s(&[8]), DType::F32)?;
        Ok(vec![
            b.sub(x, x)?,
            b.mul(x, zero)?,
            b.div(x, x)?,
            b.compare(CmpOp::Eq, x, x)?,
        ])
    });
    refuses(&g, simplify::run);
}

#[test]
fn simplify_neg_neg_and_powers() {
    let g = build(|b| {
        let x = input(b, "sx", &[6], DType::F32);
        let i = input(b, "i", &[6], DType::I32);
        let nn = b.neg(x)?;
        let nn = b.neg(nn)?;
        let ni = b.neg(i)?;
        let ni = b.neg(ni)?;
        Ok(vec![nn, ni])
    });
    let h = fires(&g, simplify::run, "neg_neg");
    assert_eq!(
        count(&h, "neg"),
        2,
        "the inner negations are only dead, not gone (DCE's job)"
    );
    assert!(matches!(h.node(out(&h, 0)).op(), Op::Input { .. }));
    let p = build(|b| {
        let x = input(b, "x", &[6], DType::F32);
        Ok(vec![
            b.pow_const(x, 1.0)?,
            b.pow_const(x, 2.0)?,
            b.pow_const(x, 0.0)?,
            b.pow_const(x, 3.0)?,
        ])
    });
    let (h, r) = apply(&p, simplify::run);
    assert_eq!(
        (
            r.stats.get("pow_one"),
            r.stats.get("pow_two"),
            r.stats.get("pow_zero")
        ),
        (1, 1, 1)
    );
    assert!(matches!(h.node(out(&h, 1)).op(), Op::Binary(BinaryOp::Mul)));
    assert_eq!(uniform(&h, out(&h, 2)), Some(1.0));
    assert!(matches!(h.node(out(&h, 3)).op(), Op::PowConst { .. }));
}

#[test]
fn simplify_identity_layout_ops_and_casts() {
    let g = build(|b| {
        let x = input(b, "sx", &[2, 3], DType::F32);
        Ok(vec![
            b.cast(x, DType::F32)?,
            b.reshape(x, f32s(&[2, 3]))?,
            b.permute(x, vec![0, 1])?,
            b.broadcast_in(x, f32s(&[2, 3]), vec![])?,
            b.slice(x, 1, Dim::c(0), Dim::c(3), 1)?,
            b.pad(x, 0, Dim::c(0), Dim::c(0))?,
            b.concat(&[x], 1)?,
            b.reduce_sum(x, vec![], false)?,
        ])
    });
    let (h, r) = apply(&g, simplify::run);
    for rule in [
        "cast_identity",
        "reshape_identity",
        "permute_identity",
        "broadcast_identity",
        "slice_identity",
        "pad_identity",
        "concat_single",
        "reduce_identity",
    ] {
        assert_eq!(r.stats.get(rule), 1, "{rule}: {}", r.stats);
    }
    for i in 0..8 {
        assert!(matches!(h.node(out(&h, i)).op(), Op::Input { .. }));
    }
    // Not identities: a real slice, a strided slice, a real pad, a narrowing cast.
    let other = build(|b| {
        let x = input(b, "sx", &[2, 3], DType::F32);
        Ok(vec![
            b.slice(x, 1, Dim::c(1), Dim::c(3), 1)?,
            b.slice(x, 1, Dim::c(0), Dim::c(3), 2)?,
            b.pad(x, 0, Dim::c(1), Dim::c(0))?,
            b.cast(x, DType::BF16)?,
        ])
    });
    refuses(&other, simplify::run);
}

#[test]
fn simplify_composes_reshape_permute_and_broadcast_chains() {
    let g = build(|b| {
        let x = input(b, "x", &[2, 3, 4], DType::F32);
        let r1 = b.reshape(x, f32s(&[6, 4]))?;
        let r2 = b.reshape(r1, f32s(&[4, 6]))?;
        let p1 = b.permute(x, vec![1, 2, 0])?;
        let p2 = b.permute(p1, vec![2, 0, 1])?; // identity overall
        let p3 = b.permute(p1, vec![0, 2, 1])?; // [1, 0, 2] overall
        let v = input(b, "v", &[3], DType::F32);
        let b1 = b.broadcast_in(v, f32s(&[3, 4]), vec![1])?;
        let b2 = b.broadcast_in(b1, f32s(&[2, 3, 4]), vec![0])?;
        Ok(vec![r2, p2, p3, b2])
    });
    let (h, r) = apply(&g, simplify::run);
    assert_eq!(r.stats.get("reshape_reshape"), 1);
    assert_eq!(r.stats.get("permute_permute"), 2);
    assert_eq!(r.stats.get("permute_identity"), 1);
    assert_eq!(r.stats.get("broadcast_broadcast"), 1);
    let x = h.find_input("x").unwrap();
    assert_eq!(h.node(out(&h, 0)).inputs(), &[x]);
    assert_eq!(out(&h, 1), x);
    assert_eq!(
        h.node(out(&h, 2)).op(),
        &Op::Permute {
            perm: vec![1, 0, 2]
        }
    );
    assert_eq!(
        h.node(out(&h, 3)).op(),
        &Op::Broadcast {
            shape: f32s(&[2, 3, 4]),
            axes: vec![0, 2]
        }
    );
}

#[test]
fn simplify_collapses_layout_chains_of_uniform_values() {
    let g = build(|b| {
        let c = b.full(2.0, &f32s(&[3, 4]), DType::F32)?;
        let r = b.reshape(c, f32s(&[12]))?;
        let r = b.reshape(r, f32s(&[4, 3]))?;
        let p = b.permute(r, vec![1, 0])?;
        let s = b.slice(p, 0, Dim::c(1), Dim::c(3), 1)?;
        let bb = b.broadcast_in(s, f32s(&[5, 2, 4]), vec![0])?;
        let z = b.full(0.0, &f32s(&[2]), DType::F32)?;
        let pz = b.pad(z, 0, Dim::c(1), Dim::c(1))?;
        let cc = b.concat(&[c, c], 0)?;
        let two = b.full(2.0, &f32s(&[2]), DType::F32)?;
        let pn = b.pad(two, 0, Dim::c(1), Dim::c(0))?; // not uniform: a zero then twos
        Ok(vec![bb, pz, cc, pn])
    });
    let (h, r) = apply(&g, simplify::run);
    assert!(r.stats.get("uniform_layout") >= 4, "{}", r.stats);
    assert_eq!(uniform(&h, out(&h, 0)), Some(2.0));
    assert_eq!(uniform(&h, out(&h, 1)), Some(0.0));
    assert_eq!(uniform(&h, out(&h, 2)), Some(2.0));
    assert!(matches!(h.node(out(&h, 3)).op(), Op::Pad { .. }));
}

#[test]
fn simplify_selects() {
    let g = build(|b| {
        let x = input(b, "sx", &[4], DType::F32);
        let y = input(b, "y", &[4], DType::F32);
        let c = input(b, "c", &[4], DType::Bool);
        let t = b.full(1.0, &f32s(&[4]), DType::Bool)?;
        let f = b.full(0.0, &f32s(&[4]), DType::Bool)?;
        Ok(vec![
            b.select(t, x, y)?,
            b.select(f, x, y)?,
            b.select(c, x, x)?,
            b.select(c, x, y)?,
        ])
    });
    let (h, r) = apply(&g, simplify::run);
    assert_eq!(
        (r.stats.get("select_const"), r.stats.get("select_same")),
        (2, 1)
    );
    let (x, y) = (h.find_input("sx").unwrap(), h.find_input("y").unwrap());
    assert_eq!((out(&h, 0), out(&h, 1), out(&h, 2)), (x, y, x));
    assert!(matches!(h.node(out(&h, 3)).op(), Op::Select));
}

// ----- cse ----------------------------------------------------------------------------------------

#[test]
fn cse_merges_equal_nodes_and_commuted_operands() {
    let g = build(|b| {
        let x = input(b, "x", &[4], DType::F32);
        let y = input(b, "y", &[4], DType::F32);
        b.push_scope("first");
        let a1 = b.add(x, y)?;
        b.pop_scope();
        let a2 = b.add(y, x)?;
        let e1 = b.exp(a1)?;
        let e2 = b.exp(a2)?;
        let s1 = b.sub(x, y)?;
        let s2 = b.sub(y, x)?; // not commutative: stays
        Ok(vec![e1, e2, s1, s2])
    });
    let h = fires(&g, cse::run, "merged");
    assert_eq!(
        out(&h, 0),
        out(&h, 1),
        "a chain of duplicates collapses in one run"
    );
    assert_ne!(out(&h, 2), out(&h, 3));
    assert_eq!(count(&h, "add"), 1);
    let add = h.node(out(&h, 0)).inputs()[0];
    assert_eq!(
        h.node(add).name(),
        Some("first"),
        "the first node survives with its name"
    );
}

#[test]
fn cse_keys_floats_by_bits_and_never_merges_sources_or_streams() {
    let g = build(|b| {
        let z = b.constant(0.0, DType::F32);
        let nz = b.constant(-0.0, DType::F32);
        let r1 = b.rand_uniform(f32s(&[4]), 1)?;
        let r2 = b.rand_uniform(f32s(&[4]), 2)?;
        let p1 = b.param("p", f32s(&[4]), DType::F32, Init::Zeros)?;
        let p2 = b.param("q", f32s(&[4]), DType::F32, Init::Zeros)?;
        Ok(vec![z, nz, r1, r2, p1, p2])
    });
    refuses(&g, cse::run);
    let same = build(|b| {
        let r1 = b.rand_uniform(f32s(&[4]), 1)?;
        let r2 = b.rand_uniform(f32s(&[4]), 1)?;
        let c1 = b.constant(f64::NAN, DType::F32);
        let c2 = b.constant(f64::NAN, DType::F32);
        Ok(vec![r1, r2, c1, c2])
    });
    let (h, r) = apply(&same, cse::run);
    assert_eq!(
        r.stats.get("merged"),
        2,
        "same stream, same numbers; same NaN bits"
    );
    assert_eq!(out(&h, 0), out(&h, 1));
    assert_eq!(out(&h, 2), out(&h, 3));
}

// ----- dce ----------------------------------------------------------------------------------------

#[test]
fn dce_keeps_what_outputs_and_updates_need_and_every_source() {
    let mut b = Builder::new();
    let x = b.input("x", f32s(&[4]), DType::F32).unwrap();
    let unused_in = b.input("unused", f32s(&[4]), DType::F32).unwrap();
    let p = b.param("p", f32s(&[4]), DType::F32, Init::Zeros).unwrap();
    let unused_p = b.param("q", f32s(&[4]), DType::F32, Init::Zeros).unwrap();
    let dead = b.exp(x).unwrap();
    let dead2 = b.mul(dead, dead).unwrap();
    let y = b.add(x, p).unwrap();
    let upd = b.sub(p, x).unwrap();
    b.output("y", y).unwrap();
    b.update("p", upd).unwrap();
    let g = b.finish();
    let (h, r) = apply(&g, dce::run);
    assert_eq!(r.stats.get("removed"), 2);
    assert!(!h.contains(dead) && !h.contains(dead2));
    for v in [x, unused_in, p, unused_p, y, upd] {
        assert!(h.contains(v));
    }
    refuses(&h, dce::run);
}

// ----- layout -------------------------------------------------------------------------------------

#[test]
fn layout_folds_operand_transposes_into_matmul_flags() {
    let g = build(|b| {
        let h = input(b, "h", &[2, 5, 8], DType::F32);
        let wte = input(b, "wte", &[11, 8], DType::F32);
        let wt = b.transpose(wte, 0, 1)?;
        let logits = b.matmul(h, wt, false, false)?; // the tied output projection
        let a = input(b, "a", &[2, 8, 5], DType::F32);
        let at = b.transpose(a, 1, 2)?;
        let w = input(b, "w", &[8, 3], DType::F32);
        let y = b.matmul(at, w, false, false)?;
        let c = input(b, "c", &[2, 5, 7], DType::F32);
        let z = b.matmul(at, c, true, false)?; // (at)ᵀ with the flag set: at → a, flag off
        Ok(vec![logits, y, z])
    });
    let (h, r) = apply(&g, layout::run);
    assert_eq!((r.stats.get("operand_a"), r.stats.get("operand_b")), (2, 1));
    let wte = h.find_input("wte").unwrap();
    let a = h.find_input("a").unwrap();
    assert_eq!(
        h.node(out(&h, 0)).op(),
        &Op::MatMul {
            transpose_a: false,
            transpose_b: true
        }
    );
    assert_eq!(h.node(out(&h, 0)).inputs()[1], wte);
    assert_eq!(
        h.node(out(&h, 1)).op(),
        &Op::MatMul {
            transpose_a: true,
            transpose_b: false
        }
    );
    assert_eq!(
        h.node(out(&h, 2)).op(),
        &Op::MatMul {
            transpose_a: false,
            transpose_b: false
        }
    );
    assert_eq!(
        h.node(out(&h, 2)).inputs(),
        &[a, h.find_input("c").unwrap()]
    );
    let (h, _) = apply(&h, dce::run);
    assert_eq!(count(&h, "permute"), 0);
}

#[test]
fn layout_keeps_a_permute_that_other_users_read() {
    let g = build(|b| {
        let x = input(b, "x", &[4, 6], DType::F32);
        let xt = b.transpose(x, 0, 1)?;
        let w = input(b, "w", &[4, 3], DType::F32);
        let y = b.matmul(xt, w, false, false)?;
        let e = b.exp(xt)?;
        Ok(vec![y, e])
    });
    let (h, r) = apply(&g, layout::run);
    assert_eq!(r.stats.get("operand_a"), 1);
    let (h, _) = apply(&h, dce::run);
    assert_eq!(count(&h, "permute"), 1, "exp still reads the transpose");
    assert!(matches!(
        h.node(h.node(out(&h, 1)).inputs()[0]).op(),
        Op::Permute { .. }
    ));
}

#[test]
fn layout_attention_keys_keep_a_row_permute_and_set_transpose_b() {
    let g = build(|b| {
        let q = input(b, "q", &[2, 3, 5, 4], DType::F32); // [b, h, t, hd]
        let k = input(b, "k", &[2, 5, 3, 4], DType::F32); // [b, s, h, hd]
        let kt = b.permute(k, vec![0, 2, 3, 1])?; // [b, h, hd, s]: moves the innermost axis
        Ok(vec![b.matmul(q, kt, false, false)?])
    });
    let (h, r) = apply(&g, layout::run);
    assert_eq!(r.stats.get("operand_b"), 1);
    let s = out(&h, 0);
    assert_eq!(
        h.node(s).op(),
        &Op::MatMul {
            transpose_a: false,
            transpose_b: true
        }
    );
    assert_eq!(
        h.node(h.node(s).inputs()[1]).op(),
        &Op::Permute {
            perm: vec![0, 2, 1, 3]
        }
    );
    // A permute that keeps the innermost axis is left alone (nothing to gain).
    let rows = build(|b| {
        let q = input(b, "q", &[2, 3, 5, 4], DType::F32);
        let v = input(b, "v", &[2, 5, 3, 4], DType::F32);
        let vp = b.permute(v, vec![0, 2, 1, 3])?;
        let p = b.matmul(q, vp, false, true)?;
        Ok(vec![p])
    });
    refuses(&rows, layout::run);
}

#[test]
fn layout_turns_a_transposed_result_into_the_swapped_matmul() {
    let g = build(|b| {
        let a = input(b, "a", &[16, 8], DType::F32);
        let gy = input(b, "g", &[16, 11], DType::F32);
        let gw = b.matmul(a, gy, true, false)?; // [8, 11]
        Ok(vec![b.transpose(gw, 0, 1)?]) // [11, 8]: the tied table's layout
    });
    let (h, r) = apply(&g, layout::run);
    assert_eq!(r.stats.get("transposed_result"), 1);
    let y = out(&h, 0);
    assert_eq!(
        h.node(y).op(),
        &Op::MatMul {
            transpose_a: true,
            transpose_b: false
        }
    );
    assert_eq!(
        h.node(y).inputs(),
        &[h.find_input("g").unwrap(), h.find_input("a").unwrap()]
    );
    // Not when the matmul result is used elsewhere too (that would compute it twice).
    let shared = build(|b| {
        let a = input(b, "a", &[16, 8], DType::F32);
        let gy = input(b, "g", &[16, 11], DType::F32);
        let gw = b.matmul(a, gy, true, false)?;
        Ok(vec![b.transpose(gw, 0, 1)?, gw])
    });
    refuses(&shared, layout::run);
}

// ----- strip_stop_gradient ------------------------------------------------------------------------

#[test]
fn strip_stop_gradient_removes_the_identity() {
    let g = build(|b| {
        let x = input(b, "x", &[4], DType::F32);
        let m = b.reduce_max(x, vec![0], true)?;
        let s = b.op(Op::StopGradient, &[m])?;
        let s = b.op(Op::StopGradient, &[s])?;
        let r = b.reshape(s, f32s(&[]))?;
        let sb = b.broadcast_in(r, f32s(&[4]), vec![0])?;
        Ok(vec![b.sub(x, sb)?])
    });
    let (h, r) = apply(&g, strip_stop_gradient::run);
    assert_eq!(r.stats.get("removed"), 2);
    assert_eq!(count(&h, "stop_gradient"), 0);
}

// ----- the graph's source index (ir/graph.rs), which the passes and the training step rely on ------

#[test]
fn graph_finds_sources_by_name_through_removal_and_rewrites() {
    let mut b = Builder::new();
    let x = input(&mut b, "x", &[2], DType::F32);
    let z = input(&mut b, "z", &[2], DType::F32);
    let p = b.param("p", f32s(&[2]), DType::F32, Init::Zeros).unwrap();
    let y = b.add(x, p).unwrap();
    b.output("y", y).unwrap();
    let mut g = b.finish();
    assert_eq!((g.find_input("x"), g.find_param("p")), (Some(x), Some(p)));
    assert_eq!((g.find_param("x"), g.find_input("p")), (None, None));
    // A duplicate name is refused by `add` (the index answers that check too).
    let dup = Op::Param {
        name: "p".into(),
        shape: f32s(&[2]),
        dtype: DType::F32,
        init: Init::Zeros,
        trainable: true,
    };
    assert!(matches!(
        g.add(dup, &[], None),
        Err(IrError::DuplicateName { .. })
    ));
    // Renaming through `set_op` moves the entry; removing drops it.
    let renamed = Op::Param {
        name: "q".into(),
        shape: f32s(&[2]),
        dtype: DType::F32,
        init: Init::Zeros,
        trainable: true,
    };
    let ty = g.ty(p).clone();
    g.set_op(p, renamed, ty);
    assert_eq!((g.find_param("p"), g.find_param("q")), (None, Some(p)));
    g.remove(z);
    assert_eq!((g.find_input("z"), g.find_input("x")), (None, Some(x)));
    // A bound copy keeps the index.
    let bound = g.bind(&Bindings::new()).unwrap();
    assert_eq!(bound.find_param("q"), Some(p));
}
