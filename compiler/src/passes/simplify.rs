//! Algebraic simplification: local rewrites that make a node cheaper or remove it, each one an
//! identity of the op's semantics (the interpreter's), named and counted in the pass stats.
//!
//! Rules (counter name: rewrite):
//! - `mul_one`: `x * 1`, `1 * x` → `x`; `div_one`: `x / 1` → `x`; `sub_zero`: `x - 0` → `x`;
//!   `add_zero`: `x + 0`, `0 + x` → `x` ("1" and "0" are uniform constants: a `Constant` or a
//!   `Broadcast` of one). `x + 0` and `x - 0` can turn a `-0.0` into `+0.0` and back; like XLA we
//!   accept that (the values compare equal and nothing in the op set observes the sign of a zero
//!   except `recip`/`div` of it, which real models do not rely on).
//! - `neg_neg`: `neg(neg x)` → `x` (exact, ints wrap both ways).
//! - `pow_one`: `x^1` → `x`; `pow_two`: `x^2` → `x * x`; `pow_zero`: `x^0` → 1 (`powf` gives 1
//!   even for NaN).
//! - `cast_identity`: a cast to the operand's dtype → the operand.
//! - `reshape_reshape`: `reshape(reshape x)` → `reshape x`; `permute_permute`: two permutes compose
//!   into one; `broadcast_broadcast`: two broadcasts compose into one.
//! - `reshape_identity`, `permute_identity`, `broadcast_identity`, `slice_identity`,
//!   `pad_identity`, `concat_single`, `reduce_identity` (no axes): an op that returns its
//!   operand unchanged → the operand.
//! - `uniform_layout`: a reshape/permute/broadcast/slice of a uniform value, a pad of a uniform
//!   zero, a concat of equal uniform values → one `Broadcast` of the scalar `Constant` (the canonical
//!   form `const_fold` reads), however long the chain was.
//! - `select_const`: `select(c, a, b)` with a uniform condition → `a` or `b`; `select_same`:
//!   `select(c, a, a)` → `a`.
//!
//! Refused on purpose, because they are wrong for NaN or infinity: `x - x` → 0, `x * 0` → 0,
//! `x / x` → 1, `x == x` → true, `max(x, x)` is fine but not worth a rule. Also refused:
//! `cast(cast x)` (a narrowing cast in between rounds), `(x * c1) * c2` reassociation (changes
//! rounding). `stop_gradient` removal is its own pass (`strip_stop_gradient`) because it is only
//! sound once nothing will differentiate the graph again.

use crate::ir::{BinaryOp, Graph, IrError, Op, Shape, UnaryOp, ValueId};

use super::{
    add_uniform, broadcast_scalar, is_const_dim, replace, topo, uniform_source, uniform_value,
    PassResult, PassStats,
};

pub const NAME: &str = "simplify";

/// What to do with one node.
enum Rewrite {
    /// Every use of the node becomes a use of this (existing, same-typed) value.
    Forward(ValueId),
    /// The node keeps its id, name and type and becomes `op(inputs)`.
    Become(Op, Vec<ValueId>),
    /// The node becomes the uniform `value` (a new constant, broadcast).
    Uniform(f64),
    /// The node becomes a broadcast of this existing scalar constant.
    Spread(ValueId),
}

pub fn run(g: &mut Graph) -> Result<PassResult, IrError> {
    let mut stats = PassStats::new();
    for v in topo(g)? {
        // A rewrite can enable another on the same node (compose, then identity): bounded loop.
        for _ in 0..8 {
            if !g.contains(v) {
                break;
            }
            let Some((rule, rw)) = rule_for(g, v) else {
                break;
            };
            stats.bump(rule);
            match rw {
                Rewrite::Forward(x) => {
                    replace(g, v, x);
                    break;
                }
                Rewrite::Become(op, inputs) => {
                    let ty = g.ty(v).clone();
                    g.set_op(v, op, ty);
                    g.set_inputs(v, &inputs);
                }
                Rewrite::Uniform(value) => {
                    let ty = g.ty(v).clone();
                    let name = g.node(v).name().map(str::to_string);
                    let new = add_uniform(g, value, &ty, name);
                    replace(g, v, new);
                    break;
                }
                Rewrite::Spread(c) => {
                    let ty = g.ty(v).clone();
                    if ty.shape.is_empty() {
                        replace(g, v, c);
                        break;
                    }
                    let name = g.node(v).name().map(str::to_string);
                    let new = broadcast_scalar(g, c, &ty, name);
                    replace(g, v, new);
                    break;
                }
            }
        }
    }
    Ok(PassResult::from_stats(stats))
}

fn is_uniform(g: &Graph, v: ValueId, x: f64) -> bool {
    uniform_value(g, v) == Some(x)
}

/// The first rule that applies to `v`, with its counter name.
fn rule_for(g: &Graph, v: ValueId) -> Option<(&'static str, Rewrite)> {
    let node = g.node(v);
    let ins = node.inputs();
    let same_shape = |x: ValueId| g.shape(x) == node.shape();
    match node.op() {
        Op::Binary(b) => {
            let (x, y) = (ins[0], ins[1]);
            match b {
                BinaryOp::Mul if is_uniform(g, y, 1.0) => Some(("mul_one", Rewrite::Forward(x))),
                BinaryOp::Mul if is_uniform(g, x, 1.0) => Some(("mul_one", Rewrite::Forward(y))),
                BinaryOp::Div if is_uniform(g, y, 1.0) => Some(("div_one", Rewrite::Forward(x))),
                BinaryOp::Add if is_uniform(g, y, 0.0) => Some(("add_zero", Rewrite::Forward(x))),
                BinaryOp::Add if is_uniform(g, x, 0.0) => Some(("add_zero", Rewrite::Forward(y))),
                BinaryOp::Sub if is_uniform(g, y, 0.0) => Some(("sub_zero", Rewrite::Forward(x))),
                _ => None,
            }
        }
        Op::Unary(UnaryOp::Neg) => {
            let inner = g.node(ins[0]);
            match inner.op() {
                Op::Unary(UnaryOp::Neg) => Some(("neg_neg", Rewrite::Forward(inner.inputs()[0]))),
                _ => None,
            }
        }
        Op::PowConst { p } => {
            let x = ins[0];
            if *p == 1.0 {
                Some(("pow_one", Rewrite::Forward(x)))
            } else if *p == 2.0 {
                Some((
                    "pow_two",
                    Rewrite::Become(Op::Binary(BinaryOp::Mul), vec![x, x]),
                ))
            } else if *p == 0.0 {
                Some(("pow_zero", Rewrite::Uniform(1.0)))
            } else {
                None
            }
        }
        Op::Cast { to } if g.dtype(ins[0]) == *to => {
            Some(("cast_identity", Rewrite::Forward(ins[0])))
        }
        Op::Select => {
            let (c, a, b) = (ins[0], ins[1], ins[2]);
            if a == b {
                Some(("select_same", Rewrite::Forward(a)))
            } else {
                uniform_value(g, c).map(|cv| {
                    (
                        "select_const",
                        Rewrite::Forward(if cv != 0.0 { a } else { b }),
                    )
                })
            }
        }
        Op::Reshape { shape } => {
            let x = ins[0];
            if let Some(c) = uniform_source(g, x) {
                return Some(("uniform_layout", Rewrite::Spread(c)));
            }
            if same_shape(x) {
                return Some(("reshape_identity", Rewrite::Forward(x)));
            }
            match g.node(x).op() {
                Op::Reshape { .. } => Some((
                    "reshape_reshape",
                    Rewrite::Become(
                        Op::Reshape {
                            shape: shape.clone(),
                        },
                        vec![g.node(x).inputs()[0]],
                    ),
                )),
                _ => None,
            }
        }
        Op::Permute { perm } => {
            let x = ins[0];
            if let Some(c) = uniform_source(g, x) {
                return Some(("uniform_layout", Rewrite::Spread(c)));
            }
            if perm.iter().enumerate().all(|(i, p)| i == *p) {
                return Some(("permute_identity", Rewrite::Forward(x)));
            }
            match g.node(x).op() {
                Op::Permute { perm: inner } => {
                    // out[i] = mid[perm[i]] = x[inner[perm[i]]].
                    let composed: Vec<usize> = perm.iter().map(|p| inner[*p]).collect();
                    Some((
                        "permute_permute",
                        Rewrite::Become(
                            Op::Permute { perm: composed },
                            vec![g.node(x).inputs()[0]],
                        ),
                    ))
                }
                _ => None,
            }
        }
        Op::Broadcast { shape, axes } => {
            let x = ins[0];
            if axes.is_empty() {
                return Some(("broadcast_identity", Rewrite::Forward(x)));
            }
            let inner = g.node(x);
            match inner.op() {
                // A broadcast of a scalar constant is the canonical uniform form: leave it.
                Op::Constant { .. } => None,
                Op::Broadcast {
                    axes: inner_axes, ..
                } => {
                    if let Some(c) = uniform_source(g, x) {
                        return Some(("uniform_layout", Rewrite::Spread(c)));
                    }
                    Some((
                        "broadcast_broadcast",
                        Rewrite::Become(
                            Op::Broadcast {
                                shape: shape.clone(),
                                axes: compose_broadcast(shape, axes, inner_axes),
                            },
                            vec![inner.inputs()[0]],
                        ),
                    ))
                }
                _ => None,
            }
        }
        Op::Slice {
            axis,
            start,
            end,
            step,
        } => {
            let x = ins[0];
            if let Some(c) = uniform_source(g, x) {
                return Some(("uniform_layout", Rewrite::Spread(c)));
            }
            let full = &g.shape(x)[*axis];
            let identity = is_const_dim(start, 0)
                && end == full
                && (*step == 1 || is_const_dim(full, 1) || is_const_dim(full, 0));
            identity.then_some(("slice_identity", Rewrite::Forward(x)))
        }
        Op::Pad { before, after, .. } => {
            let x = ins[0];
            if is_const_dim(before, 0) && is_const_dim(after, 0) {
                return Some(("pad_identity", Rewrite::Forward(x)));
            }
            match (uniform_source(g, x), uniform_value(g, x)) {
                // Padding adds zeros: only a uniform zero stays uniform. Bitwise, so -0.0 stays.
                (Some(c), Some(val)) if val.to_bits() == 0 => {
                    Some(("uniform_layout", Rewrite::Spread(c)))
                }
                _ => None,
            }
        }
        Op::Concat { .. } => {
            if ins.len() == 1 {
                return Some(("concat_single", Rewrite::Forward(ins[0])));
            }
            let first = uniform_value(g, ins[0])?;
            let all_same = ins
                .iter()
                .all(|u| uniform_value(g, *u).is_some_and(|x| x.to_bits() == first.to_bits()));
            if all_same {
                uniform_source(g, ins[0]).map(|c| ("uniform_layout", Rewrite::Spread(c)))
            } else {
                None
            }
        }
        Op::ReduceSum { axes, .. } | Op::ReduceMax { axes, .. } if axes.is_empty() => {
            Some(("reduce_identity", Rewrite::Forward(ins[0])))
        }
        _ => None,
    }
}

/// The axes of `broadcast[outer](broadcast[inner](x))` as one broadcast to `shape`: the outer
/// axes, plus the positions in `shape` that the inner broadcast added.
fn compose_broadcast(shape: &Shape, outer: &[usize], inner: &[usize]) -> Vec<usize> {
    let kept: Vec<usize> = (0..shape.len()).filter(|i| !outer.contains(i)).collect();
    let mut axes: Vec<usize> = outer.to_vec();
    for a in inner {
        axes.push(kept[*a]);
    }
    axes.sort_unstable();
    axes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::Dim;

    #[test]
    fn broadcast_axes_compose() {
        // x: [3] → inner broadcast axes [0] → [2, 3] → outer axes [1] → [2, 5, 3].
        let shape: Shape = vec![Dim::c(2), Dim::c(5), Dim::c(3)];
        assert_eq!(compose_broadcast(&shape, &[1], &[0]), vec![0, 1]);
        // inner adds axis 1 of [3, 4]: x [3]; outer adds axis 0: [2, 3, 4] → axes [0, 2].
        let shape: Shape = vec![Dim::c(2), Dim::c(3), Dim::c(4)];
        assert_eq!(compose_broadcast(&shape, &[0], &[1]), vec![0, 2]);
    }
}
