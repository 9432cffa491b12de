//! Constant folding: evaluates ops whose operands are all *uniform* compile-time values (a scalar
//! `Constant`, or a `Broadcast` of one) and replaces them by the result, as a `Constant` for a
//! scalar or a `Broadcast` of a new `Constant` for a tensor. Big tensors are never materialised:
//! the folded result is one number, however large its shape.
//!
//! What folds: elementwise ops (`Unary`, `Cast`, `PowConst` with p in {0, 1, 2}, `Binary`,
//! `Compare`, `Select`, `StopGradient`), `ReduceSum`/`ReduceMax` of a uniform value over constant
//! extents, and `DimConst` whose dim is constant.
//!
//! Soundness with dtypes. Ints are evaluated as the interpreter does (i64, wrapping, then wrapped
//! to i32 for `i32`; integer division truncates and a division by zero is left alone), bools are
//! 0/1. A float op is folded only when its operands *and* its result are exactly representable in
//! their declared dtypes (always true for f64): then rounding after every op (a real f32 kernel,
//! the interpreter's `Declared` precision) and computing in f64 (its `F64` precision) give the
//! same number, so folding changes no result in either. `1/16` folds; `1 - 0.9` in f32 does not,
//! and neither does an overflow to infinity. A `ReduceSum` of `k` copies of `c` folds only when
//! every partial sum is exact in f32 (odd mantissa of `c` times `k` below 2^24), so the summation
//! order of a runtime cannot matter.
//!
//! Deliberately not folded: transcendentals (`exp`, `log`, `tanh`, `erf`, `sin`, `cos`) except at
//! the points where every libm agrees (`exp(0) = 1`, `log(1) = 0`, `sin/tanh/erf(0) = 0`,
//! `cos(0) = 1`), because libm results differ between platforms and snapshots must not; `Iota`
//! and anything computed from it (that would materialise a tensor); `RandUniform`; layout ops of
//! uniform values (`simplify` turns those into the canonical `Broadcast` of a `Constant`).

use crate::interp::round_to;
use crate::ir::{BinaryOp, CmpOp, DType, Graph, IrError, Op, UnaryOp};

use super::{add_uniform, const_numel, replace, topo, uniform_value, PassResult, PassStats};

pub const NAME: &str = "const_fold";

pub fn run(g: &mut Graph) -> Result<PassResult, IrError> {
    let mut stats = PassStats::new();
    for v in topo(g)? {
        if !g.contains(v) {
            continue;
        }
        let node = g.node(v);
        let out_dtype = node.dtype();
        let folded: Option<f64> = match node.op() {
            Op::DimConst { dim, dtype } => dim.as_const().and_then(|c| {
                let x = c as f64;
                // Same value the binder gives (`Graph::bind`), kept only if exact in the dtype.
                (representable(*dtype, x) && (x.abs() < 9.0e15)).then_some(x)
            }),
            Op::Unary(_)
            | Op::Cast { .. }
            | Op::PowConst { .. }
            | Op::Binary(_)
            | Op::Compare(_)
            | Op::Select
            | Op::StopGradient
            | Op::ReduceSum { .. }
            | Op::ReduceMax { .. } => {
                let ins = node.inputs().to_vec();
                let vals: Option<Vec<f64>> = ins.iter().map(|u| uniform_value(g, *u)).collect();
                match vals {
                    Some(vals) => {
                        let dts: Vec<DType> = ins.iter().map(|u| g.dtype(*u)).collect();
                        let in_shape = g.shape(ins[0]);
                        fold(node.op(), &vals, &dts, out_dtype, in_shape)
                    }
                    None => None,
                }
            }
            Op::Input { .. }
            | Op::Param { .. }
            | Op::Constant { .. }
            | Op::Iota { .. }
            | Op::RandUniform { .. }
            | Op::Broadcast { .. }
            | Op::Reshape { .. }
            | Op::Permute { .. }
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::Concat { .. }
            | Op::MatMul { .. }
            | Op::Gather
            | Op::ScatterAdd { .. }
            | Op::TakeAlong
            | Op::PutAlong { .. }
            | Op::Attention(_)
            | Op::AttentionBackward { .. } => None,
        };
        if let Some(value) = folded {
            let ty = g.ty(v).clone();
            let name = g.node(v).name().map(str::to_string);
            let new = add_uniform(g, value, &ty, name);
            replace(g, v, new);
            stats.bump("folded");
        }
    }
    Ok(PassResult::from_stats(stats))
}

/// Is `x` exactly a value of the float dtype `dt` (NaN counts: it is NaN in every dtype)?
fn representable(dt: DType, x: f64) -> bool {
    x.is_nan() || round_to(dt, x) == x
}

/// Wraps an integer to its dtype, as the interpreter does.
fn wrap(dt: DType, x: i64) -> i64 {
    match dt {
        DType::I32 => x as i32 as i64,
        _ => x,
    }
}

/// An integer constant's value as the interpreter reads it.
fn int_of(dt: DType, x: f64) -> i64 {
    wrap(dt, x as i64)
}

/// An i64 result as a `Constant` value; `None` where f64 cannot hold it exactly.
fn int_result(x: i64) -> Option<f64> {
    (x.unsigned_abs() <= 1 << 53).then_some(x as f64)
}

fn bool_result(b: bool) -> Option<f64> {
    Some(if b { 1.0 } else { 0.0 })
}

/// The folded value of `op` on uniform operands `vals` (dtypes `dts`), or `None` to leave it.
fn fold(
    op: &Op,
    vals: &[f64],
    dts: &[DType],
    out: DType,
    in_shape: &[crate::ir::Dim],
) -> Option<f64> {
    let float_ok = |vals: &[f64], dts: &[DType]| {
        vals.iter()
            .zip(dts)
            .all(|(x, dt)| !dt.is_float() || representable(*dt, *x))
    };
    let float_result = |r: f64| representable(out, r).then_some(r);
    match op {
        Op::StopGradient => Some(vals[0]),
        Op::Unary(u) => {
            let (x, dt) = (vals[0], dts[0]);
            if dt.is_int() {
                let a = int_of(dt, x);
                return match u {
                    UnaryOp::Neg => int_result(wrap(dt, a.wrapping_neg())),
                    UnaryOp::Abs => int_result(wrap(dt, a.wrapping_abs())),
                    _ => None,
                };
            }
            if !float_ok(vals, dts) {
                return None;
            }
            let r = match u {
                UnaryOp::Neg => -x,
                UnaryOp::Abs => x.abs(),
                UnaryOp::Sqrt => x.sqrt(),
                UnaryOp::Recip => 1.0 / x,
                // Only the points where every libm is exact (see the module doc).
                UnaryOp::Exp if x == 0.0 => 1.0,
                UnaryOp::Log if x == 1.0 => 0.0,
                UnaryOp::Cos if x == 0.0 => 1.0,
                UnaryOp::Sin | UnaryOp::Tanh | UnaryOp::Erf if x == 0.0 => x,
                UnaryOp::Exp
                | UnaryOp::Log
                | UnaryOp::Tanh
                | UnaryOp::Erf
                | UnaryOp::Sin
                | UnaryOp::Cos => return None,
            };
            float_result(r)
        }
        Op::Cast { to } => {
            let (x, from) = (vals[0], dts[0]);
            if from.is_float() && !representable(from, x) {
                return None;
            }
            // The value as the source dtype holds it.
            enum V {
                F(f64),
                I(i64),
                B(bool),
            }
            let v = if from.is_float() {
                V::F(x)
            } else if from.is_int() {
                V::I(int_of(from, x))
            } else {
                V::B(x != 0.0)
            };
            match (v, *to) {
                (V::F(f), t) if t.is_float() => representable(t, f).then_some(f),
                // Truncation toward zero, saturating; NaN → 0 (Rust's `as`, as the interpreter).
                (V::F(f), t) if t.is_int() => int_result(wrap(t, f as i64)),
                (V::F(f), _) => bool_result(f != 0.0),
                (V::I(i), t) if t.is_float() => {
                    let f = i as f64;
                    (f as i64 == i && representable(t, f)).then_some(f)
                }
                (V::I(i), t) if t.is_int() => int_result(wrap(t, i)),
                (V::I(i), _) => bool_result(i != 0),
                (V::B(b), DType::Bool) => bool_result(b),
                (V::B(b), _) => Some(if b { 1.0 } else { 0.0 }),
            }
        }
        Op::PowConst { p } => {
            if !float_ok(vals, dts) {
                return None;
            }
            let x = vals[0];
            let r = if *p == 0.0 {
                1.0
            } else if *p == 1.0 {
                x
            } else if *p == 2.0 {
                x * x
            } else {
                return None;
            };
            float_result(r)
        }
        Op::Binary(b) => {
            let dt = dts[0];
            if dt.is_int() {
                let (a, c) = (int_of(dt, vals[0]), int_of(dt, vals[1]));
                let r = match b {
                    BinaryOp::Add => a.wrapping_add(c),
                    BinaryOp::Sub => a.wrapping_sub(c),
                    BinaryOp::Mul => a.wrapping_mul(c),
                    BinaryOp::Div if c == 0 => return None,
                    BinaryOp::Div => a.wrapping_div(c),
                    BinaryOp::Max => a.max(c),
                    BinaryOp::Min => a.min(c),
                };
                return int_result(wrap(dt, r));
            }
            if !float_ok(vals, dts) {
                return None;
            }
            let (a, c) = (vals[0], vals[1]);
            let r = match b {
                BinaryOp::Add => a + c,
                BinaryOp::Sub => a - c,
                BinaryOp::Mul => a * c,
                BinaryOp::Div => a / c,
                BinaryOp::Max if a.is_nan() || c.is_nan() => f64::NAN,
                BinaryOp::Max => a.max(c),
                BinaryOp::Min if a.is_nan() || c.is_nan() => f64::NAN,
                BinaryOp::Min => a.min(c),
            };
            float_result(r)
        }
        Op::Compare(c) => {
            let dt = dts[0];
            fn cmp<T: PartialOrd>(c: CmpOp, a: T, b: T) -> bool {
                match c {
                    CmpOp::Lt => a < b,
                    CmpOp::Le => a <= b,
                    CmpOp::Gt => a > b,
                    CmpOp::Ge => a >= b,
                    CmpOp::Eq => a == b,
                    CmpOp::Ne => a != b,
                }
            }
            if dt.is_int() {
                bool_result(cmp(*c, int_of(dt, vals[0]), int_of(dt, vals[1])))
            } else if dt == DType::Bool {
                bool_result(cmp(*c, vals[0] != 0.0, vals[1] != 0.0))
            } else if float_ok(vals, dts) {
                bool_result(cmp(*c, vals[0], vals[1]))
            } else {
                None
            }
        }
        Op::Select => {
            let pick = if vals[0] != 0.0 { 1 } else { 2 };
            // The picked branch is itself a constant of the output dtype: exact by construction
            // unless it was not exact to begin with (then leave it: see the module doc).
            if out.is_float() && !representable(out, vals[pick]) {
                return None;
            }
            Some(vals[pick])
        }
        Op::ReduceSum { axes, .. } | Op::ReduceMax { axes, .. } => {
            let reduced: Vec<crate::ir::Dim> = axes.iter().map(|a| in_shape[*a].clone()).collect();
            let k = const_numel(&reduced)?;
            let (c, dt) = (vals[0], dts[0]);
            if matches!(op, Op::ReduceMax { .. }) {
                // An empty reduction gives the identity (-inf / i64::MIN); leave those alone.
                return if k == 0 {
                    None
                } else if dt.is_int() {
                    int_result(int_of(dt, c))
                } else {
                    representable(dt, c).then_some(c)
                };
            }
            if dt.is_int() {
                return int_result(wrap(dt, int_of(dt, c).wrapping_mul(k)));
            }
            if !representable(dt, c) || !c.is_finite() {
                return None;
            }
            if c == 0.0 || k == 0 {
                return Some(0.0);
            }
            // Every partial sum j·c (j <= k) must be exact in f32: odd mantissa · k < 2^24.
            let bits = c.abs().to_bits();
            let frac = bits & ((1u64 << 52) - 1);
            // Subnormals have no implicit leading bit.
            let mant = if bits >> 52 == 0 {
                frac
            } else {
                frac | (1u64 << 52)
            };
            let odd = mant >> mant.trailing_zeros();
            let limit = 1u64 << 24;
            if odd.checked_mul(k as u64).is_none_or(|m| m >= limit) {
                return None;
            }
            float_result(c * k as f64)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn representability() {
        assert!(representable(DType::F32, 0.0625));
        assert!(!representable(DType::F32, 0.1));
        assert!(representable(DType::F64, 0.1));
        assert!(representable(DType::F32, f64::NAN));
        assert!(!representable(DType::F32, 1e60));
    }
}
