//! Typed shape errors, the verifier catching each broken invariant, and the printer showing
//! verifier errors under the offending line.

use kiln_compiler::ir::print::print_with_errors;
use kiln_compiler::ir::{
    shape_of, verify, BinaryOp, Bindings, Builder, DType, Dim, Graph, Init, IrError, Op, TensorType,
};

fn f32(shape: Vec<Dim>) -> TensorType {
    TensorType::new(DType::F32, shape)
}

#[test]
fn elementwise_shape_mismatch_names_op_and_both_shapes() {
    let mut b = Builder::new();
    let x = b
        .input("x", vec![Dim::sym("batch"), Dim::c(3)], DType::F32)
        .unwrap();
    let y = b
        .input("y", vec![Dim::sym("batch"), Dim::c(4)], DType::F32)
        .unwrap();
    let err = b.add(x, y).unwrap_err();
    match &err {
        IrError::ShapeMismatch { op, lhs, rhs, .. } => {
            assert_eq!(op, "add");
            assert_eq!(lhs, &f32(vec![Dim::sym("batch"), Dim::c(3)]));
            assert_eq!(rhs, &f32(vec![Dim::sym("batch"), Dim::c(4)]));
        }
        e => panic!("unexpected error {e:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.starts_with("add:") && msg.contains("f32[batch, 3]") && msg.contains("f32[batch, 4]"),
        "{msg}"
    );
}

#[test]
fn matmul_mismatch_names_both_shapes() {
    let mut b = Builder::new();
    let x = b
        .input("x", vec![Dim::sym("batch"), Dim::c(8)], DType::F32)
        .unwrap();
    let w = b
        .param("w", shape_of(&[7, 16]), DType::F32, Init::Zeros)
        .unwrap();
    let err = b.matmul(x, w, false, false).unwrap_err();
    let IrError::ShapeMismatch {
        op,
        lhs,
        rhs,
        detail,
    } = &err
    else {
        panic!("{err:?}")
    };
    assert_eq!(op, "matmul");
    assert_eq!(lhs.to_string(), "f32[batch, 8]");
    assert_eq!(rhs.to_string(), "f32[7, 16]");
    assert!(detail.contains("8 vs 7"), "{detail}");
    // With the transpose flag the same operands are fine when the contraction dims agree.
    let w2 = b
        .param("w2", shape_of(&[16, 8]), DType::F32, Init::Zeros)
        .unwrap();
    let y = b.matmul(x, w2, false, true).unwrap();
    assert_eq!(b.ty(y).to_string(), "f32[batch, 16]");
    // Batched rhs must share the lhs batch dims.
    let a = b
        .input("a", vec![Dim::c(2), Dim::c(3), Dim::c(4)], DType::F32)
        .unwrap();
    let c = b
        .input("c", vec![Dim::c(5), Dim::c(4), Dim::c(6)], DType::F32)
        .unwrap();
    assert!(matches!(
        b.matmul(a, c, false, false),
        Err(IrError::ShapeMismatch { .. })
    ));
}

#[test]
fn broadcast_errors_and_successes() {
    let mut b = Builder::new();
    let x = b
        .input("x", vec![Dim::sym("seq"), Dim::c(1)], DType::F32)
        .unwrap();
    let y = b
        .input("y", vec![Dim::c(2), Dim::sym("seq"), Dim::c(5)], DType::F32)
        .unwrap();
    let z = b.binary_broadcast(Op::Binary(BinaryOp::Mul), x, y).unwrap();
    assert_eq!(b.ty(z).to_string(), "f32[2, seq, 5]");
    let w = b
        .input("w", vec![Dim::sym("batch"), Dim::c(5)], DType::F32)
        .unwrap();
    let err = b
        .binary_broadcast(Op::Binary(BinaryOp::Add), w, y)
        .unwrap_err();
    assert!(
        matches!(&err, IrError::ShapeMismatch { op, .. } if op == "add"),
        "{err:?}"
    );
    // Symbolic dims are only equal when structurally equal: seq vs seq - 1 does not broadcast.
    let s1 = b
        .input("s1", vec![Dim::sym("seq") - 1], DType::F32)
        .unwrap();
    let s2 = b.input("s2", vec![Dim::sym("seq")], DType::F32).unwrap();
    assert!(b
        .binary_broadcast(Op::Binary(BinaryOp::Add), s1, s2)
        .is_err());
}

#[test]
fn dtype_arity_and_attribute_errors() {
    let mut b = Builder::new();
    let i = b.input("i", shape_of(&[3]), DType::I32).unwrap();
    let f = b.input("f", shape_of(&[3]), DType::F32).unwrap();
    assert!(matches!(b.exp(i), Err(IrError::DTypeError { .. })));
    assert!(b.neg(i).is_ok(), "neg is defined on ints");
    assert!(
        matches!(b.add(i, f), Err(IrError::ShapeMismatch { .. })),
        "dtype mismatch"
    );
    assert!(matches!(
        b.op(Op::Binary(BinaryOp::Add), &[f]),
        Err(IrError::Arity { .. })
    ));
    assert!(matches!(
        b.permute(f, vec![1]),
        Err(IrError::BadAttribute { .. })
    ));
    assert!(matches!(
        b.slice(f, 0, Dim::c(2), Dim::c(5), 1),
        Err(IrError::BadAttribute { .. })
    ));
    assert!(matches!(
        b.slice(f, 0, Dim::c(0), Dim::c(3), 0),
        Err(IrError::BadAttribute { .. })
    ));
    assert!(matches!(
        b.reduce_sum(f, vec![1], false),
        Err(IrError::BadAttribute { .. })
    ));
    assert!(matches!(b.gather(f, f), Err(IrError::DTypeError { .. })));
    let x2 = b.input("x2", shape_of(&[2, 3]), DType::F32).unwrap();
    assert!(matches!(
        b.reshape(x2, shape_of(&[7])),
        Err(IrError::ShapeMismatch { .. })
    ));
    assert!(matches!(
        b.input("i", shape_of(&[1]), DType::I32),
        Err(IrError::DuplicateName { kind: "input", .. })
    ));
    assert!(matches!(
        b.param("p", shape_of(&[1]), DType::I32, Init::Zeros),
        Err(IrError::DTypeError { .. })
    ));
}

#[test]
fn bind_checks_symbolic_slices() {
    let mut b = Builder::new();
    let x = b.input("x", vec![Dim::sym("seq")], DType::F32).unwrap();
    // Fine for seq >= 4, an error at bind time otherwise.
    let y = b.slice(x, 0, Dim::c(0), Dim::c(4), 1).unwrap();
    b.output("y", y).unwrap();
    let g = b.finish();
    assert!(g.bind(&Bindings::new().with("seq", 8)).is_ok());
    assert!(matches!(
        g.bind(&Bindings::new().with("seq", 3)),
        Err(IrError::BadAttribute { .. })
    ));
    assert!(matches!(
        g.bind(&Bindings::new()),
        Err(IrError::UnboundSymbol { .. })
    ));
}

fn small_graph() -> (Graph, [kiln_compiler::ir::ValueId; 3]) {
    let mut b = Builder::new();
    let x = b.input("x", shape_of(&[2, 3]), DType::F32).unwrap();
    let w = b
        .param("w", shape_of(&[3, 4]), DType::F32, Init::Zeros)
        .unwrap();
    let y = b.matmul(x, w, false, false).unwrap();
    b.output("y", y).unwrap();
    (b.finish(), [x, w, y])
}

#[test]
fn verifier_accepts_a_good_graph_and_catches_each_broken_invariant() {
    let (g, [x, w, y]) = small_graph();
    assert_eq!(verify(&g), Ok(()));

    // Wrong stored type.
    let mut bad = g.clone();
    bad.add_unchecked(
        Op::Unary(kiln_compiler::ir::UnaryOp::Exp),
        &[y],
        f32(shape_of(&[2, 5])),
        None,
    );
    let errs = verify(&bad).unwrap_err();
    assert!(errs[0].message.contains("rule gives f32[2, 4]"), "{errs:?}");
    let text = print_with_errors(&bad, &errs);
    assert!(
        text.contains("exp %2 : f32[2, 5]\n  ; error: exp is typed f32[2, 5]"),
        "{text}"
    );

    // Wrong arity, and a shape rule violation.
    let mut bad = g.clone();
    bad.add_unchecked(
        Op::Binary(BinaryOp::Add),
        &[x],
        f32(shape_of(&[2, 3])),
        None,
    );
    bad.add_unchecked(
        Op::Binary(BinaryOp::Add),
        &[x, y],
        f32(shape_of(&[2, 3])),
        None,
    );
    let errs = verify(&bad).unwrap_err();
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert!(errs[0].message.contains("takes 2 operands"));
    assert!(
        errs[1]
            .message
            .contains("add: incompatible operands f32[2, 3] and f32[2, 4]"),
        "{errs:?}"
    );

    // A cycle.
    let mut bad = g.clone();
    let e = bad
        .add(Op::Unary(kiln_compiler::ir::UnaryOp::Neg), &[y], None)
        .unwrap();
    bad.set_inputs(y, &[e, w]);
    assert!(verify(&bad)
        .unwrap_err()
        .iter()
        .any(|e| e.message.contains("cycle")));

    // A removed operand and a dangling output.
    let mut bad = g.clone();
    bad.remove(x);
    let errs = verify(&bad).unwrap_err();
    assert!(
        errs.iter().any(|e| e.message.contains("missing values")),
        "{errs:?}"
    );
    let mut bad = g.clone();
    bad.remove(y);
    assert!(verify(&bad)
        .unwrap_err()
        .iter()
        .any(|e| e.message.contains("output `y`")));

    // Duplicate param names (only possible without the builder's checks).
    let mut bad = g.clone();
    let dup = Op::Param {
        name: "w".into(),
        shape: shape_of(&[1]),
        dtype: DType::F32,
        init: Init::Zeros,
        trainable: true,
    };
    bad.add_unchecked(dup, &[], f32(shape_of(&[1])), None);
    assert!(verify(&bad)
        .unwrap_err()
        .iter()
        .any(|e| e.message.contains("duplicate param name `w`")));

    // An update of the wrong type.
    let mut bad = g.clone();
    bad.add_update("w", y).unwrap();
    assert!(verify(&bad)
        .unwrap_err()
        .iter()
        .any(|e| e.message.contains("update of `w`")));
}

#[test]
fn replace_all_uses_keeps_the_graph_valid() {
    let (mut g, [x, _, y]) = small_graph();
    let x2 = g
        .add(Op::Unary(kiln_compiler::ir::UnaryOp::Neg), &[x], None)
        .unwrap();
    g.replace_all_uses(x, x2);
    // x2 itself used x: replace_all_uses rewrote it to itself, a cycle the verifier must see.
    assert!(verify(&g).is_err());
    g.set_inputs(x2, &[x]);
    assert_eq!(verify(&g), Ok(()));
    assert_eq!(g.node(y).inputs()[0], x2);
    assert_eq!(g.users(x), vec![x2]);
}
