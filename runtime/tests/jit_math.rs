//! Accuracy of the JIT's polynomial transcendentals against libm in f64, over each function's
//! working range, with the bound stated per function (the table in `cpu/jit/math.rs`), plus IEEE
//! edge cases (infinities, zeros, NaN, subnormals).

use kiln_compiler::kernel::{DType, InputAccess, OutputAccess, RowBuilder, RowProgram, UnaryOp};
use kiln_runtime::cpu::jit::{JitKernel, KernelInput};

fn unary_program(op: UnaryOp) -> RowProgram {
    let mut b = RowBuilder::new(op.mnemonic());
    let x = b.load_input("x", DType::F32, InputAccess::Full);
    let y = b.unary(op, x);
    b.output("y", OutputAccess::Full, y);
    b.finish().unwrap()
}

fn jit_apply(op: UnaryOp, xs: &[f32]) -> Vec<f32> {
    let k = JitKernel::compile(&unary_program(op)).unwrap();
    let mut y = vec![f32::NAN; xs.len()];
    // One row of odd length: exercises the unrolled loop, the vector loop and the tail.
    k.run(&[KernelInput::F32(xs)], &mut [&mut y], 1, xs.len())
        .unwrap();
    y
}

/// `n` points spread evenly over `[lo, hi]`, plus their f32 neighbours at the ends.
fn sweep(lo: f32, hi: f32, n: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..n)
        .map(|i| lo + (hi - lo) * (i as f32 / (n - 1) as f32))
        .collect();
    v.push(lo);
    v.push(hi);
    v
}

/// Checks `|got - want| <= max(rel * |want|, abs)` everywhere and returns the worst relative
/// error (where `|want| > abs / rel`) and the worst absolute error (elsewhere).
fn check(
    name: &str,
    xs: &[f32],
    got: &[f32],
    f: impl Fn(f64) -> f64,
    rel: f64,
    abs: f64,
) -> (f64, f64) {
    let mut worst_rel: f64 = 0.0;
    let mut worst_abs: f64 = 0.0;
    for (&x, &g) in xs.iter().zip(got) {
        let w = f(x as f64);
        let err = (g as f64 - w).abs();
        assert!(
            err <= (rel * w.abs()).max(abs),
            "{name}({x:e}) = {g:e}, libm {w:e}: error {err:e}"
        );
        if w.abs() * rel > abs {
            worst_rel = worst_rel.max(err / w.abs());
        } else {
            worst_abs = worst_abs.max(err);
        }
    }
    println!("{name}: max rel err {worst_rel:.2e}, max abs err (small results) {worst_abs:.2e}");
    (worst_rel, worst_abs)
}

fn sigmoid64(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

#[test]
fn exp_relative_error_below_1e_6() {
    let xs = sweep(-87.3, 88.7, 400_001);
    let got = jit_apply(UnaryOp::Exp, &xs);
    check("exp", &xs, &got, f64::exp, 1e-6, 0.0);
    // Subnormal results: within a unit in the last place of the subnormal grid, plus 1e-6.
    let xs = sweep(-103.0, -87.4, 10_001);
    let got = jit_apply(UnaryOp::Exp, &xs);
    check(
        "exp (subnormal results)",
        &xs,
        &got,
        f64::exp,
        1e-6,
        2.0 * 1.4e-45,
    );
}

#[test]
fn log_relative_error_below_1e_6() {
    // Log-uniform over all positive normal and subnormal floats, plus a dense sweep around 1.
    let mut xs: Vec<f32> = (0..200_000)
        .map(|i| 2f64.powf(-149.0 + 276.9 * i as f64 / 199_999.0) as f32)
        .collect();
    xs.extend(sweep(0.5, 2.0, 200_001));
    let got = jit_apply(UnaryOp::Log, &xs);
    check("log", &xs, &got, f64::ln, 1e-6, 1e-7);
}

#[test]
fn tanh_error_below_1e_6_rel_or_1e_7_abs() {
    let mut xs = sweep(-10.0, 10.0, 400_001);
    xs.extend(sweep(-0.7, 0.7, 100_001));
    let got = jit_apply(UnaryOp::Tanh, &xs);
    check("tanh", &xs, &got, f64::tanh, 1e-6, 1e-7);
}

#[test]
fn erf_error_below_1e_6_rel_or_1e_7_abs() {
    let mut xs = sweep(-6.0, 6.0, 400_001);
    xs.extend(sweep(-1.0, 1.0, 100_001));
    let got = jit_apply(UnaryOp::Erf, &xs);
    check("erf", &xs, &got, libm::erf, 1e-6, 1e-7);
}

#[test]
fn sigmoid_relative_error_below_1e_6() {
    let xs = sweep(-69.0, 40.0, 400_001);
    let got = jit_apply(UnaryOp::Sigmoid, &xs);
    check("sigmoid", &xs, &got, sigmoid64, 1e-6, 0.0);
}

#[test]
fn sqrt_rsqrt_recip_are_correctly_rounded_or_close() {
    let xs: Vec<f32> = (1..100_000).map(|i| i as f32 * 0.013).collect();
    let got = jit_apply(UnaryOp::Sqrt, &xs);
    check("sqrt", &xs, &got, f64::sqrt, 6e-8, 0.0);
    let got = jit_apply(UnaryOp::Rsqrt, &xs);
    check("rsqrt", &xs, &got, |x| 1.0 / x.sqrt(), 2e-7, 0.0);
    let got = jit_apply(UnaryOp::Recip, &xs);
    check("recip", &xs, &got, |x| 1.0 / x, 6e-8, 0.0);
}

#[test]
fn ieee_edge_cases() {
    let inf = f32::INFINITY;
    let cases: &[(UnaryOp, f32, f32)] = &[
        (UnaryOp::Exp, -inf, 0.0),
        (UnaryOp::Exp, inf, inf),
        (UnaryOp::Exp, -200.0, 0.0),
        (UnaryOp::Exp, 89.0, inf),
        (UnaryOp::Exp, 0.0, 1.0),
        (UnaryOp::Log, 0.0, -inf),
        (UnaryOp::Log, -0.0, -inf),
        (UnaryOp::Log, inf, inf),
        (UnaryOp::Log, 1.0, 0.0),
        (UnaryOp::Tanh, inf, 1.0),
        (UnaryOp::Tanh, -inf, -1.0),
        (UnaryOp::Tanh, 0.0, 0.0),
        (UnaryOp::Erf, inf, 1.0),
        (UnaryOp::Erf, -inf, -1.0),
        (UnaryOp::Erf, 0.0, 0.0),
        (UnaryOp::Sigmoid, inf, 1.0),
        (UnaryOp::Sigmoid, 0.0, 0.5),
    ];
    for &(op, x, want) in cases {
        let got = jit_apply(op, &[x, x, x, x, x])[4];
        assert_eq!(got, want, "{}({x})", op.mnemonic());
    }
    let nan_cases = [
        (UnaryOp::Exp, f32::NAN),
        (UnaryOp::Log, f32::NAN),
        (UnaryOp::Log, -1.0),
        (UnaryOp::Log, -inf),
        (UnaryOp::Tanh, f32::NAN),
        (UnaryOp::Erf, f32::NAN),
        (UnaryOp::Sigmoid, f32::NAN),
    ];
    for (op, x) in nan_cases {
        let got = jit_apply(op, &[x; 6]);
        assert!(
            got.iter().all(|g| g.is_nan()),
            "{}({x}) = {got:?}",
            op.mnemonic()
        );
    }
    // Subnormal log input: exact handling, not flushed to -inf.
    let x = f32::from_bits(1);
    let got = jit_apply(UnaryOp::Log, &[x; 4])[0] as f64;
    let want = (x as f64).ln();
    assert!(
        (got - want).abs() <= 1e-6 * want.abs(),
        "log(min subnormal) = {got}"
    );
}
