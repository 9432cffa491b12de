//! The reference interpreter against hand-computed values and against independent naive code.

mod ir_support;

use std::collections::HashMap;

use ir_support::{rand_tensor, rng};
use kiln_compiler::interp::{eval, round_to, run, InterpError, Precision, RunOptions, Tensor};
use kiln_compiler::ir::{
    rng as krng, shape_of, Bindings, Builder, DType, Dim, Graph, IrError, ValueId,
};

/// Builds a graph with float inputs of the given shapes, runs `body` and returns its f64 output.
fn run1(
    ins: &[(&str, Tensor)],
    body: impl FnOnce(&mut Builder, &[ValueId]) -> Result<ValueId, IrError>,
) -> Result<Tensor, InterpError> {
    let mut b = Builder::new();
    let mut vs = Vec::new();
    let mut map = HashMap::new();
    for (name, t) in ins {
        vs.push(
            b.input(
                name,
                shape_of(&t.shape.iter().map(|d| *d as i64).collect::<Vec<_>>()),
                t.dtype,
            )
            .unwrap(),
        );
        map.insert(name.to_string(), t.clone());
    }
    let y = body(&mut b, &vs).unwrap();
    b.output("y", y).unwrap();
    let g = b.finish();
    let out = run(
        &g,
        &Bindings::new(),
        &map,
        &HashMap::new(),
        &RunOptions::default(),
    )?;
    Ok(out.outputs["y"].clone())
}

fn t(shape: &[usize], data: &[f64]) -> Tensor {
    Tensor::f64(shape.to_vec(), data.to_vec())
}

#[test]
fn matmul_known_values() {
    let a = t(&[2, 3], &[1., 2., 3., 4., 5., 6.]);
    let b = t(&[3, 2], &[7., 8., 9., 10., 11., 12.]);
    let y = run1(&[("a", a), ("b", b)], |bl, v| {
        bl.matmul(v[0], v[1], false, false)
    })
    .unwrap();
    assert_eq!(y.shape, vec![2, 2]);
    assert_eq!(y.to_f64_vec(), vec![58., 64., 139., 154.]);
}

/// Naive batched matmul with explicit transposes, written independently of the interpreter.
fn naive_matmul(a: &Tensor, b: &Tensor, ta: bool, tb: bool) -> Vec<f64> {
    let (av, bv) = (a.to_f64_vec(), b.to_f64_vec());
    let ra = a.shape.len();
    let (d0, d1) = (a.shape[ra - 2], a.shape[ra - 1]);
    let (m, k) = if ta { (d1, d0) } else { (d0, d1) };
    let rb = b.shape.len();
    let (e0, e1) = (b.shape[rb - 2], b.shape[rb - 1]);
    let n = if tb { e0 } else { e1 };
    let batch: usize = a.shape[..ra - 2].iter().product();
    let mut out = Vec::new();
    for bi in 0..batch {
        let at = |i: usize, p: usize| {
            if ta {
                av[bi * d0 * d1 + p * d1 + i]
            } else {
                av[bi * d0 * d1 + i * d1 + p]
            }
        };
        let boff = if rb == 2 { 0 } else { bi * e0 * e1 };
        let bt = |p: usize, j: usize| {
            if tb {
                bv[boff + j * e1 + p]
            } else {
                bv[boff + p * e1 + j]
            }
        };
        for i in 0..m {
            for j in 0..n {
                out.push((0..k).map(|p| at(i, p) * bt(p, j)).sum());
            }
        }
    }
    out
}

#[test]
fn matmul_transposes_and_batches_against_naive() {
    let mut r = rng(1);
    for (sa, sb, ta, tb) in [
        (vec![2, 3, 4], vec![4, 5], false, false),
        (vec![2, 4, 3], vec![5, 4], true, true),
        (vec![2, 3, 4], vec![2, 5, 4], false, true),
        (vec![2, 4, 3], vec![2, 4, 5], true, false),
    ] {
        let a = rand_tensor(&mut r, &sa, -1.0, 1.0);
        let b = rand_tensor(&mut r, &sb, -1.0, 1.0);
        let want = naive_matmul(&a, &b, ta, tb);
        let y = run1(&[("a", a), ("b", b)], |bl, v| bl.matmul(v[0], v[1], ta, tb)).unwrap();
        let got = y.to_f64_vec();
        assert!(
            got.iter().zip(&want).all(|(x, y)| (x - y).abs() < 1e-12),
            "{got:?} vs {want:?}"
        );
    }
}

#[test]
fn layout_ops_known_values() {
    let x = t(&[2, 3], &[0., 1., 2., 3., 4., 5.]);
    let y = run1(&[("x", x.clone())], |b, v| b.permute(v[0], vec![1, 0])).unwrap();
    assert_eq!(y.to_f64_vec(), vec![0., 3., 1., 4., 2., 5.]);
    let y = run1(&[("x", x.clone())], |b, v| {
        b.slice(v[0], 1, Dim::c(0), Dim::c(3), 2)
    })
    .unwrap();
    assert_eq!(
        (y.shape.clone(), y.to_f64_vec()),
        (vec![2, 2], vec![0., 2., 3., 5.])
    );
    let y = run1(&[("x", x.clone())], |b, v| {
        b.pad(v[0], 0, Dim::c(1), Dim::c(0))
    })
    .unwrap();
    assert_eq!(y.to_f64_vec(), vec![0., 0., 0., 0., 1., 2., 3., 4., 5.]);
    let y = run1(&[("x", x.clone())], |b, v| b.concat(&[v[0], v[0]], 1)).unwrap();
    assert_eq!(
        y.to_f64_vec(),
        vec![0., 1., 2., 0., 1., 2., 3., 4., 5., 3., 4., 5.]
    );
    let y = run1(&[("x", x.clone())], |b, v| {
        b.broadcast_in(v[0], shape_of(&[2, 2, 3]), vec![1])
    })
    .unwrap();
    assert_eq!(
        y.to_f64_vec(),
        vec![0., 1., 2., 0., 1., 2., 3., 4., 5., 3., 4., 5.]
    );
    let col = t(&[2, 1], &[10., 20.]);
    let y = run1(&[("c", col)], |b, v| {
        b.broadcast_to(v[0], &shape_of(&[2, 3]))
    })
    .unwrap();
    assert_eq!(y.to_f64_vec(), vec![10., 10., 10., 20., 20., 20.]);
    let y = run1(&[("x", x.clone())], |b, v| {
        b.reduce_max(v[0], vec![0], true)
    })
    .unwrap();
    assert_eq!(
        (y.shape.clone(), y.to_f64_vec()),
        (vec![1, 3], vec![3., 4., 5.])
    );
    let y = run1(&[("x", x)], |b, v| b.reduce_sum(v[0], vec![1], false)).unwrap();
    assert_eq!(y.to_f64_vec(), vec![3., 12.]);
}

#[test]
fn indexing_ops_known_values_and_range_errors() {
    let table = t(&[3, 2], &[0., 1., 10., 11., 20., 21.]);
    let idx = Tensor::int(DType::I32, vec![2, 2], vec![2, 0, 2, 1]);
    let y = run1(&[("t", table.clone()), ("i", idx.clone())], |b, v| {
        b.gather(v[0], v[1])
    })
    .unwrap();
    assert_eq!(y.shape, vec![2, 2, 2]);
    assert_eq!(y.to_f64_vec(), vec![20., 21., 0., 1., 20., 21., 10., 11.]);
    let vals = t(&[2, 2, 1], &[1., 2., 3., 4.]);
    let y = run1(&[("v", vals), ("i", idx.clone())], |b, v| {
        b.scatter_add(v[0], v[1], Dim::c(3))
    })
    .unwrap();
    assert_eq!(y.to_f64_vec(), vec![2., 4., 4.]);
    let y = run1(
        &[
            ("t", table.clone()),
            ("i", Tensor::int(DType::I64, vec![3], vec![1, 0, 1])),
        ],
        |b, v| b.take_along(v[0], v[1]),
    )
    .unwrap();
    assert_eq!(y.to_f64_vec(), vec![1., 10., 21.]);
    let y = run1(
        &[
            ("v", t(&[2], &[5., 6.])),
            ("i", Tensor::int(DType::I64, vec![2], vec![2, 0])),
        ],
        |b, v| b.put_along(v[0], v[1], Dim::c(3)),
    )
    .unwrap();
    assert_eq!(y.to_f64_vec(), vec![0., 0., 5., 6., 0., 0.]);
    let bad = Tensor::int(DType::I32, vec![2, 2], vec![0, 3, 0, 0]);
    let e = run1(&[("t", table), ("i", bad)], |b, v| b.gather(v[0], v[1])).unwrap_err();
    assert_eq!(
        e,
        InterpError::IndexOutOfRange {
            op: "gather",
            index: 3,
            size: 3
        }
    );
}

#[test]
fn casts_iota_and_int_wrapping() {
    let x = t(&[4], &[-1.7, -0.2, 0.0, 2.9]);
    let y = run1(&[("x", x.clone())], |b, v| b.cast(v[0], DType::I32)).unwrap();
    assert_eq!(y.to_f64_vec(), vec![-1., 0., 0., 2.]);
    let y = run1(&[("x", x)], |b, v| b.cast(v[0], DType::Bool)).unwrap();
    assert_eq!(y.to_f64_vec(), vec![1., 1., 0., 1.]);
    let big = Tensor::int(DType::I32, vec![1], vec![i32::MAX as i64]);
    let y = run1(&[("a", big.clone()), ("b", big)], |b, v| b.add(v[0], v[1])).unwrap();
    assert_eq!(y.to_f64_vec(), vec![-2.0], "i32 addition wraps");
    let y = run1(&[], |b, _| b.iota(shape_of(&[2, 3]), 1, DType::I64)).unwrap();
    assert_eq!(y.to_f64_vec(), vec![0., 1., 2., 0., 1., 2.]);
    let e = run1(
        &[
            ("a", Tensor::int(DType::I64, vec![1], vec![1])),
            ("b", Tensor::int(DType::I64, vec![1], vec![0])),
        ],
        |b, v| b.div(v[0], v[1]),
    )
    .unwrap_err();
    assert_eq!(e, InterpError::DivByZero { op: "div" });
}

#[test]
fn rounding_to_small_floats() {
    let p = |e: i32| 2f64.powi(e);
    assert_eq!(round_to(DType::BF16, 1.0 + p(-8)), 1.0, "tie to even");
    assert_eq!(
        round_to(DType::BF16, 1.0 + 3.0 * p(-8)),
        1.0 + p(-6),
        "tie to even (up)"
    );
    assert_eq!(round_to(DType::BF16, 1.0 + 0.6 * p(-7)), 1.0 + p(-7));
    assert_eq!(round_to(DType::F16, 65519.0), 65504.0);
    assert_eq!(round_to(DType::F16, 65520.0), f64::INFINITY);
    assert_eq!(
        round_to(DType::F16, p(-25)),
        0.0,
        "half the smallest subnormal ties to 0"
    );
    assert_eq!(round_to(DType::F16, 0.75 * p(-24)), p(-24));
    assert_eq!(round_to(DType::F16, -3.0 * p(-25)), -p(-23), "tie to even");
    assert_eq!(round_to(DType::F32, 0.1), 0.1f32 as f64);
    // Against f32's own conversion, which is correctly rounded, on random values.
    let mut r = rng(5);
    let v = rand_tensor(&mut r, &[1000], -1e3, 1e3).to_f64_vec();
    for x in v {
        // Start from f32 values so the bit-level reference rounds exactly once.
        let x = x as f32 as f64;
        let bf = round_to(DType::BF16, x);
        let bits = (x as f32).to_bits();
        // bf16 = the top 16 bits of f32, rounded to nearest even.
        let rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF_0000;
        assert_eq!(bf, f32::from_bits(rounded) as f64, "{x}");
    }
}

#[test]
fn rand_uniform_is_the_shared_hash_and_depends_on_seed_and_step() {
    let mut b = Builder::new();
    let u = b.rand_uniform(vec![Dim::c(2), Dim::sym("n")], 9).unwrap();
    b.output("u", u).unwrap();
    let g: Graph = b.finish();
    let bind = Bindings::new().with("n", 3);
    let go = |seed, step| {
        let opts = RunOptions {
            seed,
            step,
            precision: Precision::Declared,
        };
        run(&g, &bind, &HashMap::new(), &HashMap::new(), &opts)
            .unwrap()
            .outputs["u"]
            .to_f64_vec()
    };
    let a = go(1, 0);
    let key = krng::stream_key(1, 0, 9);
    let want: Vec<f64> = (0..6).map(|i| krng::uniform_f32(key, i) as f64).collect();
    assert_eq!(a, want);
    assert_eq!(a, go(1, 0));
    assert_ne!(a, go(1, 1));
    assert_ne!(a, go(2, 0));
}

#[test]
fn missing_and_malformed_inputs_are_errors() {
    let mut b = Builder::new();
    let x = b.input("x", vec![Dim::sym("n")], DType::F32).unwrap();
    b.output("x", x).unwrap();
    let g = b.finish();
    let bind = Bindings::new().with("n", 2);
    let e = run(
        &g,
        &bind,
        &HashMap::new(),
        &HashMap::new(),
        &RunOptions::default(),
    )
    .unwrap_err();
    assert!(matches!(e, InterpError::Missing { kind: "input", .. }));
    let mut ins = HashMap::new();
    ins.insert("x".to_string(), Tensor::f32(vec![3], vec![1.0, 2.0, 3.0]));
    let e = run(&g, &bind, &ins, &HashMap::new(), &RunOptions::default()).unwrap_err();
    assert!(matches!(e, InterpError::BadTensor { .. }), "{e:?}");
    let e = eval(
        &g,
        &Bindings::new(),
        &ins,
        &HashMap::new(),
        &RunOptions::default(),
        &[x],
    )
    .unwrap_err();
    assert!(
        matches!(e, InterpError::Ir(IrError::UnboundSymbol { .. })),
        "{e:?}"
    );
}
