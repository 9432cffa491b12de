//! Attention recognition: replaces the stdlib's `sdpa` composition with one `Op::Attention` node.
//!
//! Consumes a forward graph (symbolic or bound) as sema lowers it; produces the same graph where
//! every recognised `softmax(where(mask, scale · q·kᵀ + bias, -inf)) @ v` is a single node whose
//! VJP (`AttentionBackward`) fusion turns into one memory-efficient attention kernel instead of a
//! `[t, s]` score matrix per head stored for the backward. Run it before autodiff.
//!
//! What it matches, modulo `Reshape`/`StopGradient` chains and operand order of `*` and `+`:
//! - `q @ transpose(keys)` (`MatMul` of a last-two-axes `Permute`, or `transpose_b`), where
//!   `keys` is `k` itself or `repeat_kv(k)` (reshape → broadcast of a new group axis → reshape:
//!   GQA and MQA), and `values` the same repeat of `v`;
//! - an optional `* scale` (a broadcast constant) and `+ bias` (a `[h, t, s]` tensor broadcast
//!   over the batch: T5's relative positions);
//! - an optional `Select(mask, scores, -inf)`; the mask is read as a formula over the query
//!   index `i`, key index `j` and per-batch lengths, whatever `Iota`/`Compare`/`Select`/integer
//!   arithmetic spells it (`sema::builtins::mask_matrix`'s causal, banded, full, prefix-LM and
//!   padding patterns, and conjunctions of padding with the others);
//! - the softmax `e = exp(x - max(x)) ; e / sum(e)` over the key axis (the max possibly behind a
//!   `StopGradient`);
//! - `probs @ values`.
//!
//! Deliberately left alone: attention whose probabilities go through dropout (`p > 0`: the
//! kernels have no dropout, so the composition stays and fusion runs it as a softmax row program
//! and batched GEMMs), compositions whose intermediates are used elsewhere (fusing would compute
//! the scores twice), masks that are not a per-row contiguous key interval, batch-dependent bias.

use std::collections::{BTreeSet, HashSet};

use crate::ir::ops::{AttnMask, AttnSpec, BinaryOp, CmpOp, Op, UnaryOp};
use crate::ir::{Dim, Graph, IrError, ValueId};

/// Replaces every recognised attention; returns how many.
pub fn recognize(g: &mut Graph) -> Result<usize, IrError> {
    let mut count = 0;
    for v in g.topo_order()? {
        if !g.contains(v) {
            continue;
        }
        if let Some(m) = match_sdpa(g, v) {
            rewrite(g, v, m)?;
            count += 1;
        }
    }
    Ok(count)
}

/// The pass-registry form: whether the graph changed.
pub fn run(g: &mut Graph) -> Result<bool, IrError> {
    Ok(recognize(g)? > 0)
}

/// A matched composition: the new node's spec and operands, and the nodes it replaces.
struct Match {
    spec: AttnSpec,
    operands: Vec<ValueId>,
    /// Interior nodes of the composition (all used only inside it).
    interior: Vec<ValueId>,
}

fn node_op(g: &Graph, v: ValueId) -> &Op {
    g.node(v).op()
}

fn input(g: &Graph, v: ValueId, i: usize) -> ValueId {
    g.node(v).inputs()[i]
}

/// Follows `Reshape` and `StopGradient` down to the first other node, recording the chain.
fn strip(g: &Graph, mut v: ValueId, chain: &mut Vec<ValueId>) -> ValueId {
    while matches!(node_op(g, v), Op::Reshape { .. } | Op::StopGradient) {
        chain.push(v);
        v = input(g, v, 0);
    }
    v
}

/// The scalar constant behind broadcasts and reshapes, if `v` is one.
fn constant_value(g: &Graph, v: ValueId, chain: &mut Vec<ValueId>) -> Option<f64> {
    let mut v = v;
    loop {
        match node_op(g, v) {
            Op::Reshape { .. } | Op::Broadcast { .. } | Op::StopGradient => {
                chain.push(v);
                v = input(g, v, 0);
            }
            Op::Constant { value, .. } => {
                chain.push(v);
                return Some(*value);
            }
            _ => return None,
        }
    }
}

/// `bcast` is `reduce(of, [last])` broadcast back over the last axis (keepdim or not, behind
/// reshapes and stop-gradients). Returns the reduction node.
fn row_stat(
    g: &Graph,
    bcast: ValueId,
    of: ValueId,
    max: bool,
    chain: &mut Vec<ValueId>,
) -> Option<ValueId> {
    let b = strip(g, bcast, chain);
    let rank = g.shape(of).len();
    match node_op(g, b) {
        Op::Broadcast { axes, .. } if axes == &[rank - 1] => chain.push(b),
        _ => return None,
    }
    let r = strip(g, input(g, b, 0), chain);
    let ok = match node_op(g, r) {
        Op::ReduceMax { axes, .. } if max => axes == &[rank - 1],
        Op::ReduceSum { axes, .. } if !max => axes == &[rank - 1],
        _ => false,
    };
    (ok && input(g, r, 0) == of).then(|| {
        chain.push(r);
        r
    })
}

/// `keys` as `repeat_kv(base)`: returns the base `[b, hk, s, d]` and the chain of repeat nodes.
fn unrepeat(g: &Graph, keys: ValueId, chain: &mut Vec<ValueId>) -> ValueId {
    let ks = g.shape(keys).clone();
    if let Op::Reshape { .. } = node_op(g, keys) {
        let bc = input(g, keys, 0);
        if let Op::Broadcast { shape, axes } = node_op(g, bc) {
            if shape.len() == 5 && axes == &[2] && shape[1].mul(&shape[2]) == ks[1] {
                let want = vec![
                    shape[0].clone(),
                    shape[1].clone(),
                    shape[3].clone(),
                    shape[4].clone(),
                ];
                let mut inner = Vec::new();
                let mut v = input(g, bc, 0);
                let mut base = (g.shape(v) == &want).then_some(v);
                while let Op::Reshape { .. } = node_op(g, v) {
                    inner.push(v);
                    v = input(g, v, 0);
                    if g.shape(v) == &want {
                        base = Some(v);
                    }
                }
                if let Some(base) = base {
                    chain.push(keys);
                    chain.push(bc);
                    // Only the reshapes above the base belong to the repeat.
                    for r in inner {
                        if r == base {
                            break;
                        }
                        chain.push(r);
                    }
                    return base;
                }
            }
        }
    }
    keys
}

fn match_sdpa(g: &Graph, pv: ValueId) -> Option<Match> {
    let Op::MatMul {
        transpose_a: false,
        transpose_b: false,
    } = node_op(g, pv)
    else {
        return None;
    };
    let mut interior = Vec::new();
    let (probs, values) = (input(g, pv, 0), input(g, pv, 1));
    let ps = g.shape(probs).clone();
    if ps.len() != 4 || g.shape(values).len() != 4 || !g.dtype(pv).is_float() {
        return None;
    }
    // probs = e / sum(e)
    if node_op(g, probs) != &Op::Binary(BinaryOp::Div) {
        return None;
    }
    interior.push(probs);
    let e = input(g, probs, 0);
    row_stat(g, input(g, probs, 1), e, false, &mut interior)?;
    if node_op(g, e) != &Op::Unary(UnaryOp::Exp) {
        return None;
    }
    interior.push(e);
    // e = exp(x - max(x))
    let z = input(g, e, 0);
    if node_op(g, z) != &Op::Binary(BinaryOp::Sub) {
        return None;
    }
    interior.push(z);
    let x = input(g, z, 0);
    row_stat(g, input(g, z, 1), x, true, &mut interior)?;
    // x = where(mask, scores, -inf) or the scores themselves
    let (scores, cond) = match node_op(g, x) {
        Op::Select => {
            let mut c = Vec::new();
            if constant_value(g, input(g, x, 2), &mut c) != Some(f64::NEG_INFINITY) {
                return None;
            }
            interior.push(x);
            interior.extend(c);
            (input(g, x, 1), Some(input(g, x, 0)))
        }
        _ => (x, None),
    };
    // scores = raw (* scale) (+ bias)
    let mut sc = scores;
    let mut bias = None;
    if node_op(g, sc) == &Op::Binary(BinaryOp::Add) {
        let (a, b) = (input(g, sc, 0), input(g, sc, 1));
        let is_bias = |v: ValueId| match node_op(g, v) {
            Op::Broadcast { axes, .. } if axes == &[0] => Some(input(g, v, 0)),
            _ => None,
        };
        let (rest, bb, bv) = match (is_bias(b), is_bias(a)) {
            (Some(bv), _) => (a, b, bv),
            (None, Some(bv)) => (b, a, bv),
            _ => return None,
        };
        interior.push(sc);
        interior.push(bb);
        bias = Some(bv);
        sc = rest;
    }
    let mut scale = 1.0;
    if node_op(g, sc) == &Op::Binary(BinaryOp::Mul) {
        let (a, b) = (input(g, sc, 0), input(g, sc, 1));
        let mut c = Vec::new();
        let (rest, s) = match constant_value(g, b, &mut c) {
            Some(s) => (a, s),
            None => {
                c.clear();
                (b, constant_value(g, a, &mut c)?)
            }
        };
        interior.push(sc);
        interior.extend(c);
        scale = s;
        sc = rest;
    }
    // raw = q @ transpose(keys)
    let Op::MatMul {
        transpose_a: false,
        transpose_b,
    } = node_op(g, sc)
    else {
        return None;
    };
    interior.push(sc);
    let q = input(g, sc, 0);
    let keys = if *transpose_b {
        input(g, sc, 1)
    } else {
        let kt = input(g, sc, 1);
        match node_op(g, kt) {
            Op::Permute { perm } if perm == &[0, 1, 3, 2] => {
                interior.push(kt);
                input(g, kt, 0)
            }
            _ => return None,
        }
    };
    let k = unrepeat(g, keys, &mut interior);
    let v = unrepeat(g, values, &mut interior);
    let (qs, kshape, vshape) = (g.shape(q).clone(), g.shape(k).clone(), g.shape(v).clone());
    if qs.len() != 4 || kshape != vshape || g.ty(k) != g.ty(v) || g.dtype(q) != g.dtype(k) {
        return None;
    }
    if kshape[0] != qs[0] || kshape[3] != qs[3] || g.shape(keys)[1] != qs[1] {
        return None;
    }
    if let Some(b) = bias {
        let want = vec![qs[1].clone(), qs[2].clone(), kshape[2].clone()];
        if g.shape(b) != &want || g.dtype(b) != g.dtype(q) {
            return None;
        }
    }
    let (mask, prefix, key_len) = match cond {
        None => (AttnMask::Full, None, None),
        Some(c) => classify_mask(g, c, &qs[2], &kshape[2], &mut interior)?,
    };
    // Lengths are one per batch row.
    for l in prefix.iter().chain(&key_len) {
        if g.shape(*l) != &[qs[0].clone()][..] || !g.dtype(*l).is_int() {
            return None;
        }
    }
    // Every interior node must be used only inside the composition.
    let inside: HashSet<ValueId> = interior.iter().copied().chain([pv]).collect();
    for n in &interior {
        let used_out = g.users(*n).iter().any(|u| !inside.contains(u))
            || g.outputs().iter().any(|o| o.value == *n)
            || g.updates().iter().any(|u| u.value == *n);
        let is_source = matches!(node_op(g, *n), Op::Input { .. } | Op::Param { .. });
        if (used_out && !is_shareable(g, *n)) || is_source {
            return None;
        }
    }
    let spec = AttnSpec {
        scale,
        mask,
        bias: bias.is_some(),
        key_padding: key_len.is_some(),
    };
    let mut operands = vec![q, k, v];
    operands.extend(bias);
    operands.extend(prefix);
    operands.extend(key_len);
    Some(Match {
        spec,
        operands,
        interior,
    })
}

/// Mask and constant nodes may be shared (one mask for several layers after CSE): they are
/// removed only when dead.
fn is_shareable(g: &Graph, v: ValueId) -> bool {
    let n = g.node(v);
    n.dtype() == crate::ir::DType::Bool
        || n.dtype().is_int()
        || match n.op() {
            Op::Constant { .. } => true,
            Op::Broadcast { .. } | Op::Reshape { .. } => is_shareable(g, n.inputs()[0]),
            _ => false,
        }
}

fn rewrite(g: &mut Graph, pv: ValueId, m: Match) -> Result<(), IrError> {
    let name = g.node(pv).name().map(str::to_string);
    let att = g.add(Op::Attention(m.spec), &m.operands, name)?;
    g.replace_all_uses(pv, att);
    let mut candidates: BTreeSet<ValueId> = m.interior.into_iter().collect();
    candidates.insert(pv);
    remove_dead(g, candidates);
    Ok(())
}

/// Removes the candidates (and, transitively, their operands) that no longer have users, are not
/// outputs or updates, and are not inputs or params.
fn remove_dead(g: &mut Graph, mut candidates: BTreeSet<ValueId>) {
    while let Some(v) = candidates.pop_last() {
        if !g.contains(v) || matches!(node_op(g, v), Op::Input { .. } | Op::Param { .. }) {
            continue;
        }
        let live = !g.users(v).is_empty()
            || g.outputs().iter().any(|o| o.value == v)
            || g.updates().iter().any(|u| u.value == v);
        if live {
            continue;
        }
        let ins = g.node(v).inputs().to_vec();
        g.remove(v);
        candidates.extend(ins);
    }
}

// ---- masks as formulas ------------------------------------------------------------------------

/// What an axis of a mask value means: batch, head, query index, key index, or a size-1 axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    B,
    H,
    I,
    J,
    One,
}

/// `ci·i + cj·j + k + cl·len` for an integer mask value.
#[derive(Clone, Debug, PartialEq)]
struct Lin {
    ci: i64,
    cj: i64,
    k: Dim,
    len: Option<(ValueId, i64)>,
}

impl Lin {
    fn konst(k: Dim) -> Lin {
        Lin {
            ci: 0,
            cj: 0,
            k,
            len: None,
        }
    }
    fn combine(&self, o: &Lin, sign: i64) -> Option<Lin> {
        let len = match (self.len, o.len) {
            (None, None) => None,
            (Some(l), None) => Some(l),
            (None, Some((v, c))) => Some((v, sign * c)),
            (Some((a, ca)), Some((b, cb))) if a == b => {
                Some((a, ca + sign * cb)).filter(|l| l.1 != 0)
            }
            _ => return None,
        };
        Some(Lin {
            ci: self.ci + sign * o.ci,
            cj: self.cj + sign * o.cj,
            k: if sign > 0 {
                self.k.add(&o.k)
            } else {
                self.k.sub(&o.k)
            },
            len,
        })
    }
}

/// A boolean mask formula.
#[derive(Clone, Debug, PartialEq)]
enum BoolF {
    Const(bool),
    /// `j - i <= k` (`upper`) or `j - i >= k`.
    Rel {
        upper: bool,
        k: Dim,
    },
    /// `j < len[b]`.
    Below(ValueId),
    And(Box<BoolF>, Box<BoolF>),
    Or(Box<BoolF>, Box<BoolF>),
}

/// Roles of an operand's axes, given the roles of a `Reshape`'s output axes: non-1 axes are
/// matched in order (they must agree), size-1 axes are `One`.
fn reshape_roles(g: &Graph, inp: ValueId, out_shape: &[Dim], roles: &[Role]) -> Option<Vec<Role>> {
    let one = Dim::c(1);
    let outs: Vec<(usize, &Dim)> = out_shape
        .iter()
        .enumerate()
        .filter(|(_, d)| **d != one)
        .collect();
    let ins = g.shape(inp);
    let mut k = 0;
    let mut r = Vec::with_capacity(ins.len());
    for d in ins {
        if *d == one {
            r.push(Role::One);
            continue;
        }
        let (pos, od) = outs.get(k)?;
        if *od != d {
            return None;
        }
        r.push(roles[*pos]);
        k += 1;
    }
    (k == outs.len()).then_some(r)
}

fn bcast_roles(axes: &[usize], roles: &[Role]) -> Vec<Role> {
    roles
        .iter()
        .enumerate()
        .filter(|(i, _)| !axes.contains(i))
        .map(|(_, r)| *r)
        .collect()
}

fn int_formula(g: &Graph, v: ValueId, roles: &[Role], seen: &mut Vec<ValueId>) -> Option<Lin> {
    seen.push(v);
    let n = g.node(v);
    if !n.dtype().is_int() {
        return None;
    }
    match n.op() {
        Op::Iota { axis, .. } => {
            let mut l = Lin::konst(Dim::c(0));
            match roles.get(*axis)? {
                Role::I => l.ci = 1,
                Role::J => l.cj = 1,
                Role::One => {}
                Role::B | Role::H => return None,
            }
            Some(l)
        }
        Op::Constant { value, .. } if value.fract() == 0.0 => {
            Some(Lin::konst(Dim::c(*value as i64)))
        }
        Op::DimConst { dim, .. } => Some(Lin::konst(dim.clone())),
        Op::Broadcast { axes, .. } => {
            int_formula(g, n.inputs()[0], &bcast_roles(axes, roles), seen)
        }
        Op::Reshape { shape } => {
            let r = reshape_roles(g, n.inputs()[0], shape, roles)?;
            int_formula(g, n.inputs()[0], &r, seen)
        }
        Op::Cast { .. } => int_formula(g, n.inputs()[0], roles, seen),
        Op::Binary(op @ (BinaryOp::Add | BinaryOp::Sub)) => {
            let a = int_formula(g, n.inputs()[0], roles, seen)?;
            let b = int_formula(g, n.inputs()[1], roles, seen)?;
            a.combine(&b, if *op == BinaryOp::Add { 1 } else { -1 })
        }
        // An opaque per-batch integer: a length. At batch 1 its axis reads as `One` (size 1);
        // the caller checks that it is `[batch]`.
        _ if roles == [Role::B] || roles == [Role::One] => {
            seen.pop();
            Some(Lin {
                ci: 0,
                cj: 0,
                k: Dim::c(0),
                len: Some((v, 1)),
            })
        }
        _ => None,
    }
}

fn bool_formula(g: &Graph, v: ValueId, roles: &[Role], seen: &mut Vec<ValueId>) -> Option<BoolF> {
    seen.push(v);
    let n = g.node(v);
    match n.op() {
        Op::Constant { value, .. } => Some(BoolF::Const(*value != 0.0)),
        Op::Broadcast { axes, .. } => {
            bool_formula(g, n.inputs()[0], &bcast_roles(axes, roles), seen)
        }
        Op::Reshape { shape } => {
            let r = reshape_roles(g, n.inputs()[0], shape, roles)?;
            bool_formula(g, n.inputs()[0], &r, seen)
        }
        Op::Compare(c) => {
            let a = int_formula(g, n.inputs()[0], roles, seen)?;
            let b = int_formula(g, n.inputs()[1], roles, seen)?;
            atom(*c, a.combine(&b, -1)?)
        }
        Op::Select => {
            let c = bool_formula(g, n.inputs()[0], roles, seen)?;
            let a = bool_formula(g, n.inputs()[1], roles, seen)?;
            let b = bool_formula(g, n.inputs()[2], roles, seen)?;
            match (a, b) {
                (a, BoolF::Const(false)) => Some(BoolF::And(Box::new(c), Box::new(a))),
                (BoolF::Const(true), b) => Some(BoolF::Or(Box::new(c), Box::new(b))),
                _ => None,
            }
        }
        _ => None,
    }
}

/// `lin op 0` as an atom.
fn atom(op: CmpOp, lin: Lin) -> Option<BoolF> {
    // Normalise to `lin <= c` or `lin >= c` with the sign of j positive.
    let (lin, op) = if lin.cj < 0 || (lin.cj == 0 && lin.len.is_some_and(|l| l.1 > 0)) {
        let flip = match op {
            CmpOp::Lt => CmpOp::Gt,
            CmpOp::Le => CmpOp::Ge,
            CmpOp::Gt => CmpOp::Lt,
            CmpOp::Ge => CmpOp::Le,
            o => o,
        };
        (
            Lin {
                ci: -lin.ci,
                cj: -lin.cj,
                k: Dim::c(0).sub(&lin.k),
                len: lin.len.map(|(v, c)| (v, -c)),
            },
            flip,
        )
    } else {
        (lin, op)
    };
    // Now `cj·j + ci·i + k + cl·len op 0` with cj >= 0: move k to the right.
    let rhs = Dim::c(0).sub(&lin.k);
    let (upper, bound) = match op {
        CmpOp::Le => (true, rhs),
        CmpOp::Lt => (true, rhs.sub(&Dim::c(1))),
        CmpOp::Ge => (false, rhs),
        CmpOp::Gt => (false, rhs.add(&Dim::c(1))),
        CmpOp::Eq | CmpOp::Ne => return None,
    };
    match (lin.cj, lin.ci, lin.len) {
        (1, -1, None) => Some(BoolF::Rel { upper, k: bound }),
        // j - len <= -1, i.e. j < len.
        (1, 0, Some((v, -1))) if upper && bound == Dim::c(-1) => Some(BoolF::Below(v)),
        _ => None,
    }
}

/// Flattens a conjunction.
fn conjuncts(f: BoolF, out: &mut Vec<BoolF>) {
    match f {
        BoolF::And(a, b) => {
            conjuncts(*a, out);
            conjuncts(*b, out);
        }
        BoolF::Const(true) => {}
        other => out.push(other),
    }
}

type MaskParts = (AttnMask, Option<ValueId>, Option<ValueId>);

fn classify_mask(
    g: &Graph,
    cond: ValueId,
    t: &Dim,
    s: &Dim,
    interior: &mut Vec<ValueId>,
) -> Option<MaskParts> {
    let mut seen = Vec::new();
    let f = bool_formula(g, cond, &[Role::B, Role::H, Role::I, Role::J], &mut seen)?;
    let off = s.sub(t);
    let mut terms = Vec::new();
    conjuncts(f, &mut terms);
    let (mut causal, mut lower, mut prefix, mut key_len) = (false, None, None, None);
    for term in terms {
        match term {
            BoolF::Rel { upper: true, k } if k == off && !causal => causal = true,
            BoolF::Rel { upper: false, k } if lower.is_none() => lower = Some(k),
            BoolF::Below(v) if key_len.is_none() => key_len = Some(v),
            BoolF::Or(a, b) if prefix.is_none() => match (*a, *b) {
                (BoolF::Rel { upper: true, k }, BoolF::Below(v))
                | (BoolF::Below(v), BoolF::Rel { upper: true, k })
                    if k == off =>
                {
                    prefix = Some(v)
                }
                _ => return None,
            },
            _ => return None,
        }
    }
    let mask = match (causal, lower, prefix) {
        (false, None, None) => AttnMask::Full,
        (true, None, None) => AttnMask::Causal,
        (true, Some(lo), None) => {
            let w = off.sub(&lo).add(&Dim::c(1)).as_const()?;
            if w < 1 {
                return None;
            }
            AttnMask::Local { window: w }
        }
        (false, None, Some(_)) => AttnMask::Prefix,
        _ => return None,
    };
    interior.extend(seen);
    Some((mask, prefix, key_len))
}

// ---- shift-invariant maxima ----------------------------------------------------------------------

/// Marks the row maxima that softmaxes and logsumexps subtract for stability as
/// `StopGradient`, when the graph provably does not depend on them: returns how many.
///
/// `softmax(x) = exp(x - m) / Σ exp(x - m)` and `logsumexp(x) = log Σ exp(x - m) + m` are exactly
/// invariant to the per-row `m`, so the gradient through `m` is exactly zero; autodiff would
/// still build it (a tie mask, a count and a broadcast per softmax: an extra pass over every
/// score or logit row in the backward). The proof is a small effect analysis: shifting `m` by
/// `δ` (per row) shifts `x - m` by `-δ`, scales `exp` of it by `e^-δ`, sums keep the scale, a
/// ratio of equal scales or a sum of opposite shifts cancels, `log` turns a scale back into a
/// shift; `m` is only marked when every effect cancels before reaching anything else (an
/// output, an update, any other op). Run before autodiff; attention compositions that the
/// recogniser replaced no longer have a maximum to mark, unfused ones (dropout) do.
pub fn stop_shift_gradients(g: &mut Graph) -> Result<usize, IrError> {
    let mut count = 0;
    for m in g.topo_order()? {
        if !g.contains(m) {
            continue;
        }
        let rank = g.shape(m).len();
        let (axes, keepdim) = match g.node(m).op() {
            Op::ReduceMax { axes, keepdim } => (axes.clone(), *keepdim),
            _ => continue,
        };
        let src_rank = g.shape(g.node(m).inputs()[0]).len();
        let last_only = axes == [src_rank - 1];
        if !last_only || !g.dtype(m).is_float() || (keepdim && rank == 0) {
            continue;
        }
        let users = g.users(m);
        let marked = !users.is_empty()
            && users
                .iter()
                .all(|u| matches!(g.node(*u).op(), Op::StopGradient));
        if !marked && shift_cancels(g, m) {
            let users = g.users(m);
            let name = g.node(m).name().map(str::to_string);
            let sg = g.add(Op::StopGradient, &[m], name)?;
            for u in users {
                let ins: Vec<ValueId> = g
                    .node(u)
                    .inputs()
                    .iter()
                    .map(|x| if *x == m { sg } else { *x })
                    .collect();
                g.set_inputs(u, &ins);
            }
            count += 1;
        }
    }
    Ok(count)
}

/// The effect of shifting `m` by `δ` on a value: `x + a·δ` (`Shift(a)`) or `x · e^(b·δ)`
/// (`Scale(b)`); `Shift(0)` and `Scale(0)` mean unaffected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    Shift(i64),
    Scale(i64),
}

impl Effect {
    fn is_zero(self) -> bool {
        matches!(self, Effect::Shift(0) | Effect::Scale(0))
    }
}

/// Whether every effect of shifting `m` per row cancels (see `stop_shift_gradients`).
fn shift_cancels(g: &Graph, m: ValueId) -> bool {
    let rows: Dim = g.shape(m).iter().fold(Dim::c(1), |a, d| a.mul(d));
    // Values reached, in topological order; their effects.
    let order = match g.topo_order() {
        Ok(o) => o,
        Err(_) => return false,
    };
    let pos: std::collections::HashMap<ValueId, usize> =
        order.iter().enumerate().map(|(i, v)| (*v, i)).collect();
    let mut eff: std::collections::HashMap<ValueId, Effect> = std::collections::HashMap::new();
    eff.insert(m, Effect::Shift(1));
    // Only users of affected values are visited, in topological order.
    let mut todo: BTreeSet<(usize, ValueId)> =
        g.users(m).into_iter().map(|u| (pos[&u], u)).collect();
    let mut visited = 0usize;
    while let Some((_, v)) = todo.pop_first() {
        visited += 1;
        if visited > 256 {
            return false;
        }
        let n = g.node(v);
        let ins = n.inputs();
        let e = |u: &ValueId| eff.get(u).copied().unwrap_or(Effect::Shift(0));
        let numel = |x: ValueId| g.shape(x).iter().fold(Dim::c(1), |a, d| a.mul(d));
        let last = |x: ValueId| g.shape(x).last().cloned().unwrap_or(Dim::c(1));
        // A tainted value must be per row (numel = rows) or per row and last axis.
        let per_row = |x: ValueId| numel(x) == rows || numel(x) == rows.mul(&last(x));
        let out = match n.op() {
            Op::Reshape { .. } | Op::StopGradient => {
                let x = ins[0];
                let same_layout = numel(x) == rows && numel(v) == rows || last(x) == last(v);
                if !same_layout {
                    return false;
                }
                e(&x)
            }
            Op::Slice { axis, .. } if *axis + 1 == g.shape(ins[0]).len() => e(&ins[0]),
            Op::Broadcast { axes, shape } if axes == &[shape.len() - 1] => e(&ins[0]),
            Op::Binary(b @ (BinaryOp::Add | BinaryOp::Sub)) => match (e(&ins[0]), e(&ins[1])) {
                (Effect::Shift(a), Effect::Shift(c)) => {
                    Effect::Shift(if *b == BinaryOp::Add { a + c } else { a - c })
                }
                (x, y) if y.is_zero() && x.is_zero() => Effect::Shift(0),
                _ => return false,
            },
            Op::Binary(b @ (BinaryOp::Mul | BinaryOp::Div)) => match (e(&ins[0]), e(&ins[1])) {
                (Effect::Scale(a), Effect::Scale(c)) => {
                    Effect::Scale(if *b == BinaryOp::Mul { a + c } else { a - c })
                }
                (Effect::Scale(a), y) if y.is_zero() => Effect::Scale(a),
                (x, Effect::Scale(c)) if x.is_zero() => {
                    Effect::Scale(if *b == BinaryOp::Mul { c } else { -c })
                }
                (x, y) if x.is_zero() && y.is_zero() => Effect::Shift(0),
                _ => return false,
            },
            Op::Unary(UnaryOp::Exp) => match e(&ins[0]) {
                Effect::Shift(a) => Effect::Scale(a),
                _ => return false,
            },
            Op::Unary(UnaryOp::Log) => match e(&ins[0]) {
                Effect::Scale(a) => Effect::Shift(a),
                x if x.is_zero() => Effect::Shift(0),
                _ => return false,
            },
            Op::ReduceSum { axes, .. } if axes == &[g.shape(ins[0]).len() - 1] => {
                match e(&ins[0]) {
                    Effect::Scale(a) => Effect::Scale(a),
                    x if x.is_zero() => Effect::Shift(0),
                    _ => return false,
                }
            }
            _ => {
                // Any other op may only see unaffected values.
                if ins.iter().all(|u| e(u).is_zero()) {
                    Effect::Shift(0)
                } else {
                    return false;
                }
            }
        };
        if !out.is_zero() {
            if !per_row(v) {
                return false;
            }
            todo.extend(g.users(v).into_iter().map(|u| (pos[&u], u)));
        }
        eff.insert(v, out);
    }
    // Nothing affected may escape.
    let escapes = g
        .outputs()
        .iter()
        .map(|o| o.value)
        .chain(g.updates().iter().map(|u| u.value));
    for v in escapes {
        if eff.get(&v).is_some_and(|e| !e.is_zero()) || v == m {
            return false;
        }
    }
    // Every affected value must be consumed (a dangling affected value would be an output-free
    // sink; it cannot influence anything, which is fine).
    true
}
