//! Reverse-mode autodiff as a graph rewrite: appends the backward ops to a copy of the forward
//! graph and names each gradient as an output `grad.<param name>`.
//!
//! The rule table is `vjp`: one arm per op, exhaustive, each building the vector-Jacobian product
//! with the same `Builder` sema uses (so backward ops are typed and verified like forward ones).
//! Only values that both depend on a differentiated source and reach the loss get a gradient, so
//! branches that do not matter emit no ops. Fan-out contributions are summed in the order they
//! were produced (deterministic). Non-float values (ints, bools) never carry gradients.
//!
//! Ops with no VJP: sources (they are leaves), comparisons (bool output), the integer index
//! operands of `Gather`, `ScatterAdd`, `TakeAlong`, `PutAlong` and the lengths of `Attention`,
//! and `AttentionBackward` (no second derivatives); `Iota` and `RandUniform` are
//! constants with respect to every param. At non-differentiable points the rules pick a
//! subgradient: `abs'(0) = 1`, `max`/`min` send the gradient to the first operand on ties, and
//! `reduce_max` splits it evenly among tied maxima.

use std::collections::{HashMap, HashSet};

use crate::ir::ops::{AttnGrad, BinaryOp, CmpOp, Op, UnaryOp};
use crate::ir::shape::{Dim, Shape, TensorType};
use crate::ir::{Builder, Graph, IrError, ValueId};

/// The forward graph extended with backward ops.
#[derive(Clone, Debug)]
pub struct Gradients {
    /// Forward + backward; gradients are the outputs `grad.<name>` (existing outputs kept).
    pub graph: Graph,
    /// `(source name, gradient value)` in the order of `wrt`.
    pub grads: Vec<(String, ValueId)>,
    /// Sources asked for whose gradient is identically zero (the loss does not depend on them);
    /// they get no output and no ops.
    pub zero: Vec<String>,
}

/// Gradients of the scalar float `loss` with respect to every trainable float param (frozen params
/// get none).
pub fn grad(graph: &Graph, loss: ValueId) -> Result<Gradients, IrError> {
    let wrt: Vec<ValueId> = graph
        .params()
        .into_iter()
        .filter(|p| matches!(graph.node(*p).op(), Op::Param { trainable: true, dtype, .. } if dtype.is_float()))
        .collect();
    grad_wrt(graph, loss, &wrt)
}

/// Gradients of the scalar float `loss` with respect to `wrt`, which must be float inputs or params.
pub fn grad_wrt(graph: &Graph, loss: ValueId, wrt: &[ValueId]) -> Result<Gradients, IrError> {
    let fail = |detail: String| IrError::Autodiff { detail };
    if !graph.contains(loss) {
        return Err(IrError::UnknownValue { value: loss });
    }
    let lt = graph.ty(loss).clone();
    if !lt.dtype.is_float() || lt.rank() != 0 {
        return Err(fail(format!("the loss must be a float scalar, got {lt}")));
    }
    let mut names = Vec::new();
    for w in wrt {
        if !graph.contains(*w) {
            return Err(IrError::UnknownValue { value: *w });
        }
        let n = graph.node(*w);
        match n.op().source_name() {
            Some(name) if n.dtype().is_float() => names.push(name.to_string()),
            _ => {
                return Err(fail(format!(
                    "can only differentiate w.r.t. float inputs and params, not {w} ({})",
                    n.ty()
                )))
            }
        }
    }
    let topo = graph.topo_order()?;
    let wrt_set: HashSet<ValueId> = wrt.iter().copied().collect();

    // Forward: which float values depend on a differentiated source.
    let mut active: HashSet<ValueId> = HashSet::new();
    for v in &topo {
        let n = graph.node(*v);
        if wrt_set.contains(v)
            || (n.dtype().is_float() && n.inputs().iter().any(|u| active.contains(u)))
        {
            active.insert(*v);
        }
    }
    // Backward: which values the loss depends on.
    let mut reaches: HashSet<ValueId> = HashSet::new();
    let mut stack = vec![loss];
    while let Some(v) = stack.pop() {
        if reaches.insert(v) {
            stack.extend(graph.node(v).inputs().iter().copied());
        }
    }
    let needed = |v: &ValueId| active.contains(v) && reaches.contains(v);

    let mut b = Builder::from_graph(graph.clone());
    let mut adj: HashMap<ValueId, Vec<ValueId>> = HashMap::new();
    let mut grads: HashMap<ValueId, ValueId> = HashMap::new();
    if needed(&loss) {
        b.set_scope_path(Some("bwd"));
        adj.insert(loss, vec![b.constant(1.0, lt.dtype)]);
    }
    for v in topo.iter().rev() {
        if !needed(v) {
            continue;
        }
        let Some(parts) = adj.remove(v) else { continue };
        let node = graph.node(*v).clone();
        let scope = match node.name() {
            Some(p) => format!("bwd.{p}"),
            None => "bwd".to_string(),
        };
        b.set_scope_path(Some(&scope));
        let mut gy = parts[0];
        for p in &parts[1..] {
            gy = b.add(gy, *p)?;
        }
        if wrt_set.contains(v) {
            grads.insert(*v, gy);
            continue;
        }
        let need: Vec<bool> = node.inputs().iter().map(needed).collect();
        if !need.iter().any(|x| *x) {
            continue;
        }
        let contribs = vjp(&mut b, *v, gy, &need)?;
        for ((u, c), nd) in node.inputs().iter().zip(contribs).zip(&need) {
            if let (Some(c), true) = (c, nd) {
                adj.entry(*u).or_default().push(c);
            }
        }
    }
    b.set_scope_path(None);
    let mut out = Gradients {
        graph: Graph::new(),
        grads: Vec::new(),
        zero: Vec::new(),
    };
    for (w, name) in wrt.iter().zip(names) {
        match grads.get(w) {
            Some(g) => {
                b.output(&format!("grad.{name}"), *g)?;
                out.grads.push((name, *g));
            }
            None => out.zero.push(name),
        }
    }
    out.graph = b.finish();
    Ok(out)
}

/// The VJP table: for `v = op(inputs)` and the incoming gradient `gy` (same type as `v`), the
/// gradient contribution for each operand (`None` where not needed or not differentiable).
fn vjp(
    b: &mut Builder,
    v: ValueId,
    gy: ValueId,
    need: &[bool],
) -> Result<Vec<Option<ValueId>>, IrError> {
    let node = b.graph().node(v).clone();
    let ins = node.inputs().to_vec();
    let ty = |b: &Builder, i: usize| -> TensorType { b.ty(ins[i]).clone() };
    let one = |x: ValueId| Some(x);
    Ok(match node.op() {
        Op::Input { .. }
        | Op::Param { .. }
        | Op::Constant { .. }
        | Op::DimConst { .. }
        | Op::Iota { .. }
        | Op::RandUniform { .. } => vec![],
        Op::StopGradient => vec![None],
        Op::Unary(u) => {
            let x = ins[0];
            let g = match u {
                UnaryOp::Neg => b.neg(gy)?,
                UnaryOp::Exp => b.mul(gy, v)?,
                UnaryOp::Log => b.div(gy, x)?,
                UnaryOp::Sqrt => {
                    let t = b.div(gy, v)?;
                    let half = b.full_like(0.5, t)?;
                    b.mul(t, half)?
                }
                UnaryOp::Recip => {
                    let yy = b.mul(v, v)?;
                    let t = b.mul(gy, yy)?;
                    b.neg(t)?
                }
                UnaryOp::Tanh => {
                    let yy = b.mul(v, v)?;
                    let ones = b.full_like(1.0, yy)?;
                    let d = b.sub(ones, yy)?;
                    b.mul(gy, d)?
                }
                UnaryOp::Erf => {
                    let xx = b.mul(x, x)?;
                    let nxx = b.neg(xx)?;
                    let e = b.exp(nxx)?;
                    let c = b.full_like(std::f64::consts::FRAC_2_SQRT_PI, e)?;
                    let d = b.mul(c, e)?;
                    b.mul(gy, d)?
                }
                UnaryOp::Sin => {
                    let c = b.unary(UnaryOp::Cos, x)?;
                    b.mul(gy, c)?
                }
                UnaryOp::Cos => {
                    let s = b.unary(UnaryOp::Sin, x)?;
                    let ns = b.neg(s)?;
                    b.mul(gy, ns)?
                }
                UnaryOp::Abs => {
                    let zero = b.full_like(0.0, x)?;
                    let pos = b.compare(CmpOp::Ge, x, zero)?;
                    let ng = b.neg(gy)?;
                    b.select(pos, gy, ng)?
                }
            };
            vec![one(g)]
        }
        Op::Cast { .. } => {
            let from = ty(b, 0).dtype;
            vec![if from.is_float() {
                one(b.cast(gy, from)?)
            } else {
                None
            }]
        }
        Op::PowConst { p } => {
            let x = ins[0];
            if *p == 1.0 {
                vec![one(gy)]
            } else {
                let xp = b.pow_const(x, p - 1.0)?;
                let c = b.full_like(*p, xp)?;
                let d = b.mul(c, xp)?;
                vec![one(b.mul(gy, d)?)]
            }
        }
        Op::Binary(op) => {
            let (x, y) = (ins[0], ins[1]);
            match op {
                BinaryOp::Add => vec![one(gy), one(gy)],
                BinaryOp::Sub => vec![one(gy), if need[1] { one(b.neg(gy)?) } else { None }],
                BinaryOp::Mul => vec![
                    if need[0] { one(b.mul(gy, y)?) } else { None },
                    if need[1] { one(b.mul(gy, x)?) } else { None },
                ],
                BinaryOp::Div => {
                    let gx = b.div(gy, y)?;
                    let gyy = if need[1] {
                        let t = b.mul(gx, v)?;
                        one(b.neg(t)?)
                    } else {
                        None
                    };
                    vec![one(gx), gyy]
                }
                BinaryOp::Max | BinaryOp::Min => {
                    let c = if *op == BinaryOp::Max {
                        CmpOp::Ge
                    } else {
                        CmpOp::Le
                    };
                    let first = b.compare(c, x, y)?;
                    let zero = b.full_like(0.0, gy)?;
                    vec![
                        if need[0] {
                            one(b.select(first, gy, zero)?)
                        } else {
                            None
                        },
                        if need[1] {
                            one(b.select(first, zero, gy)?)
                        } else {
                            None
                        },
                    ]
                }
            }
        }
        Op::Compare(_) => vec![None, None],
        Op::Select => {
            let c = ins[0];
            let zero = b.full_like(0.0, gy)?;
            vec![
                None,
                if need[1] {
                    one(b.select(c, gy, zero)?)
                } else {
                    None
                },
                if need[2] {
                    one(b.select(c, zero, gy)?)
                } else {
                    None
                },
            ]
        }
        Op::Broadcast { axes, .. } => vec![one(b.reduce_sum(gy, axes.clone(), false)?)],
        Op::Reshape { .. } => {
            let s = ty(b, 0).shape;
            vec![one(b.reshape(gy, s)?)]
        }
        Op::Permute { perm } => {
            let mut inv = vec![0; perm.len()];
            for (i, p) in perm.iter().enumerate() {
                inv[*p] = i;
            }
            vec![one(b.permute(gy, inv)?)]
        }
        Op::Slice {
            axis,
            start,
            end,
            step,
        } => {
            let xt = ty(b, 0);
            vec![one(slice_vjp(b, gy, &xt, *axis, start, end, *step)?)]
        }
        Op::Pad { axis, before, .. } => {
            let d = ty(b, 0).shape[*axis].clone();
            vec![one(b.slice(
                gy,
                *axis,
                before.clone(),
                before.add(&d),
                1,
            )?)]
        }
        Op::Concat { axis } => {
            let mut off = Dim::c(0);
            let mut out = Vec::with_capacity(ins.len());
            for (i, nd) in need.iter().enumerate() {
                let d = ty(b, i).shape[*axis].clone();
                let end = off.add(&d);
                out.push(if *nd {
                    one(b.slice(gy, *axis, off.clone(), end.clone(), 1)?)
                } else {
                    None
                });
                off = end;
            }
            out
        }
        Op::ReduceSum { axes, keepdim } => {
            let xs = ty(b, 0).shape;
            vec![one(unreduce(b, gy, &xs, axes, *keepdim)?)]
        }
        Op::ReduceMax { axes, keepdim } => {
            let x = ins[0];
            let xt = ty(b, 0);
            let yb = unreduce(b, v, &xt.shape, axes, *keepdim)?;
            let hit = b.compare(CmpOp::Eq, x, yb)?;
            let mask = b.cast(hit, xt.dtype)?;
            let count = b.reduce_sum(mask, axes.clone(), *keepdim)?;
            let share = b.div(gy, count)?;
            let back = unreduce(b, share, &xt.shape, axes, *keepdim)?;
            vec![one(b.mul(back, mask)?)]
        }
        Op::MatMul {
            transpose_a: ta,
            transpose_b: tb,
        } => {
            let (ta, tb) = (*ta, *tb);
            let (a, w) = (ins[0], ins[1]);
            let (at, wt) = (ty(b, 0), ty(b, 1));
            // C = op(A) op(B). dop(A) = dC op(B)^T, dop(B) = op(A)^T dC.
            let ga = if need[0] {
                let t = b.matmul(gy, w, false, !tb)?;
                one(if ta {
                    b.transpose(t, at.rank() - 2, at.rank() - 1)?
                } else {
                    t
                })
            } else {
                None
            };
            let gw = if !need[1] {
                None
            } else if wt.rank() > 2 {
                one(if tb {
                    b.matmul(gy, a, true, ta)?
                } else {
                    b.matmul(a, gy, !ta, false)?
                })
            } else {
                // Shared 2-d weights: fold the lhs batch dims into m.
                let r = at.rank();
                let a_mk = if ta { b.transpose(a, r - 2, r - 1)? } else { a };
                let (a2, g2) = if r > 2 {
                    let k = wt.shape[if tb { 1 } else { 0 }].clone();
                    let n = wt.shape[if tb { 0 } else { 1 }].clone();
                    let rows: Dim = b.shape(a_mk)[..r - 1]
                        .iter()
                        .fold(Dim::c(1), |acc, d| acc.mul(d));
                    (
                        b.reshape(a_mk, vec![rows.clone(), k])?,
                        b.reshape(gy, vec![rows, n])?,
                    )
                } else {
                    (a_mk, gy)
                };
                one(if tb {
                    b.matmul(g2, a2, true, false)?
                } else {
                    b.matmul(a2, g2, true, false)?
                })
            };
            vec![ga, gw]
        }
        Op::Gather => {
            let rows = ty(b, 0).shape[0].clone();
            vec![one(b.scatter_add(gy, ins[1], rows)?), None]
        }
        Op::ScatterAdd { .. } => vec![one(b.gather(gy, ins[1])?), None],
        Op::TakeAlong => {
            let xs = ty(b, 0).shape;
            let size = xs.last().cloned().unwrap_or_else(|| Dim::c(0));
            vec![one(b.put_along(gy, ins[1], size)?), None]
        }
        Op::PutAlong { .. } => vec![one(b.take_along(gy, ins[1])?), None],
        Op::Attention(spec) => {
            // One backward node per needed gradient, over (q, k, v, o, do, extras..): fusion runs
            // them as one kernel. Lengths (int operands) get none.
            let mut operands = vec![ins[0], ins[1], ins[2], v, gy];
            operands.extend_from_slice(&ins[3..]);
            let bias_at = spec.extra_positions().0.map(|i| 3 + i);
            let mut out = Vec::with_capacity(ins.len());
            for (i, nd) in need.iter().enumerate() {
                let wrt = match i {
                    0 => Some(AttnGrad::Q),
                    1 => Some(AttnGrad::K),
                    2 => Some(AttnGrad::V),
                    _ if Some(i) == bias_at => Some(AttnGrad::Bias),
                    _ => None,
                };
                out.push(match (wrt, nd) {
                    (Some(wrt), true) => {
                        one(b.op(Op::AttentionBackward { spec: *spec, wrt }, &operands)?)
                    }
                    _ => None,
                });
            }
            out
        }
        Op::AttentionBackward { .. } => return Err(IrError::Autodiff {
            detail:
                "attention_backward has no VJP (second derivatives of attention are not supported)"
                    .into(),
        }),
    })
}

/// Broadcasts a reduction result (with or without its kept size-1 axes) back to `shape`.
fn unreduce(
    b: &mut Builder,
    g: ValueId,
    shape: &Shape,
    axes: &[usize],
    keepdim: bool,
) -> Result<ValueId, IrError> {
    let g = if keepdim {
        let kept: Shape = (0..shape.len())
            .filter(|a| !axes.contains(a))
            .map(|a| shape[a].clone())
            .collect();
        b.reshape(g, kept)?
    } else {
        g
    };
    if axes.is_empty() {
        return Ok(g);
    }
    b.broadcast_in(g, shape.clone(), axes.to_vec())
}

/// VJP of `Slice`: step 1 is a `Pad`; a step s > 1 interleaves s - 1 zeros after each element
/// (reshape to `[.., L, 1, ..]`, pad to `[.., L, s, ..]`, merge, trim the trailing zeros) and
/// then pads to the operand's extent.
fn slice_vjp(
    b: &mut Builder,
    gy: ValueId,
    xt: &TensorType,
    axis: usize,
    start: &Dim,
    end: &Dim,
    step: i64,
) -> Result<ValueId, IrError> {
    let full = xt.shape[axis].clone();
    if step == 1 {
        return b.pad(gy, axis, start.clone(), full.sub(end));
    }
    let gs = b.shape(gy).clone();
    let len = gs[axis].clone();
    if len.as_const() == Some(0) {
        return b.full(0.0, &xt.shape, xt.dtype);
    }
    let mut s1 = gs.clone();
    s1.insert(axis + 1, Dim::c(1));
    let t = b.reshape(gy, s1)?;
    let t = b.pad(t, axis + 1, Dim::c(0), Dim::c(step - 1))?;
    let mut s2 = gs.clone();
    s2[axis] = len.mul(&Dim::c(step));
    let t = b.reshape(t, s2)?;
    let span = (len - 1) * step + 1;
    let t = b.slice(t, axis, Dim::c(0), span.clone(), 1)?;
    b.pad(t, axis, start.clone(), full.sub(start).sub(&span))
}
