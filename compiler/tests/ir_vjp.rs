//! Every VJP rule against central finite differences in f64, on random shapes and inputs.
//!
//! Each case builds `y = op(params..)` through the builder, differentiates `sum(y * proj)` for a
//! random `proj`, and compares with finite differences of the interpreter (rel. error <= 1e-6).

mod ir_support;

use ir_support::{check_grad, param, rand_index, rng, TestRng};
use kiln_compiler::ir::{BinaryOp, Bindings, CmpOp, DType, Dim, Op, Shape, UnaryOp};
use rand::seq::SliceRandom;
use rand::Rng;

fn dims(r: &mut TestRng, rank: usize) -> Vec<i64> {
    (0..rank).map(|_| r.random_range(1..=4)).collect()
}

fn cs(d: &[i64]) -> Shape {
    d.iter().map(|x| Dim::c(*x)).collect()
}

fn none() -> Bindings {
    Bindings::new()
}

#[test]
fn unary_ops() {
    let mut r = rng(1);
    for u in UnaryOp::ALL {
        // Domains keep away from poles and branch cuts.
        let (lo, hi) = match u {
            UnaryOp::Log | UnaryOp::Sqrt | UnaryOp::Recip => (0.5, 2.0),
            _ => (-1.5, 1.5),
        };
        for _ in 0..3 {
            let rank = r.random_range(0..=3);
            let s = dims(&mut r, rank);
            check_grad(u.name(), &mut r, &none(), |b, _, _| {
                let x = param(b, "x", &s, lo, hi);
                b.unary(u, x)
            });
        }
    }
}

#[test]
fn pow_const_and_cast() {
    let mut r = rng(2);
    for p in [2.0, 3.0, 0.5, -1.5, 1.0] {
        let s = dims(&mut r, 2);
        check_grad("pow_const", &mut r, &none(), |b, _, _| {
            let x = param(b, "x", &s, 0.5, 2.0);
            b.pow_const(x, p)
        });
    }
    let s = dims(&mut r, 2);
    check_grad("cast f64->f32->f64", &mut r, &none(), |b, _, _| {
        let x = param(b, "x", &s, -1.0, 1.0);
        let y = b.cast(x, DType::F32)?;
        let y2 = b.exp(y)?;
        b.cast(y2, DType::F64)
    });
}

#[test]
fn binary_ops_equal_shapes() {
    let mut r = rng(3);
    for op in BinaryOp::ALL {
        for _ in 0..3 {
            let rank = r.random_range(0..=3);
            let s = dims(&mut r, rank);
            let (lo, hi) = if op == BinaryOp::Div {
                (0.5, 2.0)
            } else {
                (-1.0, 1.0)
            };
            check_grad(op.name(), &mut r, &none(), |b, _, _| {
                let x = param(b, "x", &s, -1.0, 1.0);
                let y = param(b, "y", &s, lo, hi);
                b.binary(op, x, y)
            });
        }
        // The same operand on both sides: fan-out contributions must be summed (x - x and x / x
        // are constant, so their gradient is zero and the check would be vacuous).
        if matches!(op, BinaryOp::Sub | BinaryOp::Div) {
            continue;
        }
        let s = dims(&mut r, 2);
        check_grad("x op x", &mut r, &none(), |b, _, _| {
            let x = param(b, "x", &s, 0.5, 2.0);
            b.binary(op, x, x)
        });
    }
}

#[test]
fn binary_broadcast_cases() {
    let mut r = rng(4);
    let cases: [(&[i64], &[i64]); 5] = [
        (&[3, 1, 4], &[2, 1]),
        (&[4], &[2, 3, 4]),
        (&[], &[2, 3]),
        (&[2, 1], &[1, 3]),
        (&[2, 3], &[2, 3]),
    ];
    for (sa, sb) in cases {
        for op in [BinaryOp::Add, BinaryOp::Mul, BinaryOp::Div, BinaryOp::Max] {
            check_grad("binary_broadcast", &mut r, &none(), |b, _, _| {
                let x = param(b, "x", sa, 0.5, 2.0);
                let y = param(b, "y", sb, 0.5, 2.0);
                b.binary_broadcast(Op::Binary(op), x, y)
            });
        }
    }
}

#[test]
fn select_and_comparisons_have_no_gradient_through_the_condition() {
    let mut r = rng(5);
    for c in CmpOp::ALL {
        let s = dims(&mut r, 2);
        check_grad(c.name(), &mut r, &none(), |b, _, _| {
            let x = param(b, "x", &s, -1.0, 1.0);
            let y = param(b, "y", &s, -1.0, 1.0);
            let z = param(b, "z", &s, -1.0, 1.0);
            let cond = b.compare(c, x, z)?;
            b.select(cond, x, y)
        });
    }
}

#[test]
fn sources_iota_constant_rand_uniform() {
    let mut r = rng(6);
    let s = dims(&mut r, 3);
    check_grad("iota", &mut r, &none(), |b, _, _| {
        let x = param(b, "x", &s, -1.0, 1.0);
        let i = b.iota(cs(&s), 1, DType::I64)?;
        let fi = b.cast(i, DType::F64)?;
        b.mul(x, fi)
    });
    check_grad("constant", &mut r, &none(), |b, _, _| {
        let x = param(b, "x", &s, -1.0, 1.0);
        let c = b.full(2.5, &cs(&s), DType::F64)?;
        b.mul(x, c)
    });
    check_grad("dropout-like", &mut r, &none(), |b, _, _| {
        let x = param(b, "x", &s, -1.0, 1.0);
        let u = b.rand_uniform(cs(&s), 7)?;
        let u = b.cast(u, DType::F64)?;
        let half = b.full(0.5, &cs(&s), DType::F64)?;
        let keep = b.compare(CmpOp::Lt, u, half)?;
        let zero = b.full(0.0, &cs(&s), DType::F64)?;
        let two = b.full(2.0, &cs(&s), DType::F64)?;
        let scaled = b.mul(x, two)?;
        b.select(keep, scaled, zero)
    });
}

#[test]
fn layout_ops() {
    let mut r = rng(7);
    for _ in 0..4 {
        let s = dims(&mut r, 3);
        // Broadcast (raw): new axes 0 and 2.
        check_grad("broadcast", &mut r, &none(), |b, _, _| {
            let x = param(b, "x", &s[..2], -1.0, 1.0);
            b.broadcast_in(x, cs(&[2, s[0], 3, s[1]]), vec![0, 2])
        });
        check_grad("reshape", &mut r, &none(), |b, _, _| {
            let x = param(b, "x", &s, -1.0, 1.0);
            b.reshape(x, cs(&[s[0] * s[1], s[2]]))
        });
        let mut perm = vec![0usize, 1, 2];
        perm.shuffle(&mut r);
        check_grad("permute", &mut r, &none(), |b, _, _| {
            let x = param(b, "x", &s, -1.0, 1.0);
            b.permute(x, perm.clone())
        });
        let axis = r.random_range(0..3);
        let len = s[axis] + 3;
        for step in [1, 2, 3] {
            let start = r.random_range(0..2);
            let end = r.random_range(start + 1..=len);
            let mut ps = s.clone();
            ps[axis] = len;
            check_grad("slice", &mut r, &none(), |b, _, _| {
                let x = param(b, "x", &ps, -1.0, 1.0);
                b.slice(x, axis, Dim::c(start), Dim::c(end), step)
            });
        }
        check_grad("pad", &mut r, &none(), |b, _, _| {
            let x = param(b, "x", &s, -1.0, 1.0);
            b.pad(x, axis, Dim::c(1), Dim::c(2))
        });
        check_grad("concat", &mut r, &none(), |b, _, _| {
            let mut s2 = s.clone();
            s2[axis] += 1;
            let x = param(b, "x", &s, -1.0, 1.0);
            let y = param(b, "y", &s2, -1.0, 1.0);
            b.concat(&[x, y, x], axis)
        });
    }
}

#[test]
fn symbolic_slice_and_bind() {
    // tokens[:, :-1] with a symbolic seq; the graph is bound at run time.
    let mut r = rng(8);
    let b = Bindings::new().with("seq", 5).with("batch", 2);
    check_grad("slice seq-1", &mut r, &b, |bl, _, _| {
        let x = bl.param(
            "x",
            vec![Dim::sym("batch"), Dim::sym("seq")],
            DType::F64,
            kiln_compiler::ir::Init::Uniform {
                low: -1.0,
                high: 1.0,
            },
        )?;
        let end = Dim::sym("seq") - 1;
        let y = bl.slice(x, 1, Dim::c(0), end, 1)?;
        let z = bl.slice(x, 1, Dim::c(1), Dim::sym("seq"), 1)?;
        bl.mul(y, z)
    });
}

#[test]
fn reductions() {
    let mut r = rng(9);
    let axes_sets: [&[usize]; 5] = [&[0], &[2], &[0, 2], &[0, 1, 2], &[]];
    for axes in axes_sets {
        for keepdim in [false, true] {
            let s = dims(&mut r, 3);
            check_grad("reduce_sum", &mut r, &none(), |b, _, _| {
                let x = param(b, "x", &s, -1.0, 1.0);
                b.reduce_sum(x, axes.to_vec(), keepdim)
            });
            check_grad("reduce_max", &mut r, &none(), |b, _, _| {
                let x = param(b, "x", &s, -1.0, 1.0);
                b.reduce_max(x, axes.to_vec(), keepdim)
            });
        }
    }
}

#[test]
fn matmul_all_forms() {
    let mut r = rng(10);
    for batch in [vec![], vec![2], vec![2, 3]] {
        for shared_rhs in [false, true] {
            if batch.is_empty() && !shared_rhs {
                continue;
            }
            for ta in [false, true] {
                for tb in [false, true] {
                    let (m, k, n) = (
                        r.random_range(1..=4),
                        r.random_range(1..=4),
                        r.random_range(1..=4),
                    );
                    let mut sa = batch.clone();
                    sa.extend(if ta { [k, m] } else { [m, k] });
                    let mut sb = if shared_rhs { vec![] } else { batch.clone() };
                    sb.extend(if tb { [n, k] } else { [k, n] });
                    let label =
                        format!("matmul batch={batch:?} shared={shared_rhs} ta={ta} tb={tb}");
                    check_grad(&label, &mut r, &none(), |b, _, _| {
                        let x = param(b, "a", &sa, -1.0, 1.0);
                        let w = param(b, "b", &sb, -1.0, 1.0);
                        b.matmul(x, w, ta, tb)
                    });
                }
            }
        }
    }
}

#[test]
fn indexing_ops() {
    let mut r = rng(11);
    for _ in 0..3 {
        let (v, d) = (r.random_range(2..=5), r.random_range(1..=3));
        let ishape = dims(&mut r, 2);
        let iu: Vec<usize> = ishape.iter().map(|x| *x as usize).collect();
        check_grad("gather", &mut r, &none(), |b, r, inputs| {
            let t = param(b, "table", &[v, d], -1.0, 1.0);
            let idx = b.input("idx", cs(&ishape), DType::I64)?;
            inputs.insert("idx".into(), rand_index(r, &iu, v));
            b.gather(t, idx)
        });
        check_grad("scatter_add", &mut r, &none(), |b, r, inputs| {
            let mut vs = ishape.clone();
            vs.push(d);
            let x = param(b, "x", &vs, -1.0, 1.0);
            let idx = b.input("idx", cs(&ishape), DType::I64)?;
            inputs.insert("idx".into(), rand_index(r, &iu, v));
            b.scatter_add(x, idx, Dim::c(v))
        });
        check_grad("take_along", &mut r, &none(), |b, r, inputs| {
            let mut xs = ishape.clone();
            xs.push(v);
            let x = param(b, "x", &xs, -1.0, 1.0);
            let idx = b.input("idx", cs(&ishape), DType::I64)?;
            inputs.insert("idx".into(), rand_index(r, &iu, v));
            b.take_along(x, idx)
        });
        check_grad("put_along", &mut r, &none(), |b, r, inputs| {
            let x = param(b, "x", &ishape, -1.0, 1.0);
            let idx = b.input("idx", cs(&ishape), DType::I64)?;
            inputs.insert("idx".into(), rand_index(r, &iu, v));
            b.put_along(x, idx, Dim::c(v))
        });
    }
}

#[test]
fn unreachable_and_frozen_params_get_no_ops() {
    use kiln_compiler::autodiff::grad;
    use kiln_compiler::ir::{Builder, Init};
    let mut b = Builder::new();
    let x = b.param("x", cs(&[3]), DType::F64, Init::Zeros).unwrap();
    let unused = b
        .param("unused", cs(&[3]), DType::F64, Init::Zeros)
        .unwrap();
    let frozen = b
        .param_with("frozen", cs(&[3]), DType::F64, Init::Zeros, false)
        .unwrap();
    let side = b.exp(unused).unwrap(); // a branch that does not reach the loss
    b.output("side", side).unwrap();
    let y = b.mul(x, frozen).unwrap();
    let loss = b.reduce_sum(y, vec![0], false).unwrap();
    let fwd = b.finish();
    let g = grad(&fwd, loss).unwrap();
    assert_eq!(
        g.grads.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["x"]
    );
    assert_eq!(g.zero, ["unused"]);
    assert!(g.graph.output("grad.frozen").is_none());
    // Backward ops: seed, broadcast of the seed, mul by frozen. Nothing for `side` or `unused`.
    let added = g.graph.len() - fwd.len();
    assert_eq!(added, 3, "{}", g.graph);
}
