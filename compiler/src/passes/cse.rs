//! Common-subexpression elimination by hash-consing: two nodes with the same op, the same
//! attributes, the same result type and the same operands compute the same value, so every use of
//! the later one becomes a use of the earlier one (which keeps its name) and the later one goes.
//!
//! Keys compare float attributes by their bits (so `0.0` and `-0.0` stay apart, and two `NaN`
//! constants with the same bits merge) and dims structurally. The operands of commutative ops
//! (`add`, `mul`, `max`, `min`, `eq`, `ne`) are keyed in sorted order, so `a + b` and `b + a`
//! merge; the surviving node keeps its own operand order.
//!
//! Never merged: `Input` and `Param` (each is a distinct interface slot, even with equal types);
//! `RandUniform` with different streams (their keys differ; two with the same stream and shape
//! produce the same numbers and do merge). Nodes are visited in topological order with each
//! operand replaced by its survivor, so chains of duplicates collapse in one run; the graph itself
//! is rewritten once at the end (re-linking users per merge is quadratic on high fan-out nodes).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};

use crate::ir::{BinaryOp, CmpOp, Graph, Init, IrError, Op, ValueId};

use super::{topo, FxHasher, PassResult, PassStats};

pub const NAME: &str = "cse";

pub fn run(g: &mut Graph) -> Result<PassResult, IrError> {
    let mut stats = PassStats::new();
    let order = topo(g)?;
    let bound = order
        .iter()
        .map(|v| v.index() as usize + 1)
        .max()
        .unwrap_or(0);
    // The survivor each merged node is replaced by. The graph is only rewritten at the end, in
    // one sweep: rewriting as we go would re-link every user once per merge.
    let mut survivor: Vec<Option<ValueId>> = vec![None; bound];
    // Hash of (op, canonical operands) → a chain of survivors with that hash. Their keyed operands
    // live in one arena; ops are compared in the graph, so nothing else is copied.
    let mut heads: HashMap<u64, u32, BuildHasherDefault<FxHasher>> =
        HashMap::with_capacity_and_hasher(order.len(), BuildHasherDefault::default());
    let mut entries: Vec<Entry> = Vec::with_capacity(order.len());
    let mut arena: Vec<ValueId> = Vec::with_capacity(2 * order.len());
    let mut canon: Vec<ValueId> = Vec::new();
    let mut key: Vec<ValueId> = Vec::new();
    let mut relink: Vec<(ValueId, Vec<ValueId>)> = Vec::new();
    let mut merged: Vec<(ValueId, ValueId)> = Vec::new();
    for v in order {
        let node = g.node(v);
        if matches!(node.op(), Op::Input { .. } | Op::Param { .. }) {
            continue;
        }
        canon.clear();
        canon.extend(node.inputs().iter().map(|u| {
            survivor
                .get(u.index() as usize)
                .copied()
                .flatten()
                .unwrap_or(*u)
        }));
        key.clear();
        key.extend_from_slice(&canon);
        if commutative(node.op()) {
            key.sort_unstable();
        }
        let mut h = FxHasher::default();
        OpKey(node.op()).hash(&mut h);
        key.hash(&mut h);
        let hash = h.finish();
        // The result type is a function of the op and the operand types, so equal ops on equal
        // operands have equal types; comparing them too costs little and guards the invariant.
        let mut at = heads.get(&hash).copied();
        let mut first = None;
        while let Some(i) = at {
            let e = &entries[i as usize];
            let other = g.node(e.v);
            if arena[e.start as usize..(e.start + e.len) as usize] == key[..]
                && OpKey(other.op()) == OpKey(node.op())
                && other.ty() == node.ty()
            {
                first = Some(e.v);
                break;
            }
            at = e.next;
        }
        match first {
            Some(first) => {
                survivor[v.index() as usize] = Some(first);
                merged.push((v, first));
            }
            None => {
                if canon.as_slice() != node.inputs() {
                    relink.push((v, canon.clone()));
                }
                let next = heads.insert(hash, entries.len() as u32);
                entries.push(Entry {
                    v,
                    start: arena.len() as u32,
                    len: key.len() as u32,
                    next,
                });
                arena.extend_from_slice(&key);
            }
        }
    }
    // Survivors first read their operands' survivors; then merged nodes hand their outputs and
    // state updates over and go (they have no users left but other merged nodes).
    for (v, ins) in relink {
        g.set_inputs(v, &ins);
    }
    let named: std::collections::HashSet<ValueId> = g
        .outputs()
        .iter()
        .map(|o| o.value)
        .chain(g.updates().iter().map(|u| u.value))
        .collect();
    for (v, first) in merged {
        if named.contains(&v) {
            g.replace_all_uses(v, first);
        }
        g.remove(v);
        stats.bump("merged");
    }
    Ok(PassResult::from_stats(stats))
}

/// One survivor in a hash chain: its keyed operands are `arena[start..start + len]`.
struct Entry {
    v: ValueId,
    start: u32,
    len: u32,
    next: Option<u32>,
}

fn commutative(op: &Op) -> bool {
    matches!(
        op,
        Op::Binary(BinaryOp::Add | BinaryOp::Mul | BinaryOp::Max | BinaryOp::Min)
            | Op::Compare(CmpOp::Eq | CmpOp::Ne)
    )
}

/// An op with equality and hashing that compare floats by bits.
struct OpKey<'a>(&'a Op);

fn init_bits(i: &Init) -> (u8, u64, u64) {
    match i {
        Init::Normal { std } => (0, std.to_bits(), 0),
        Init::Zeros => (1, 0, 0),
        Init::Ones => (2, 0, 0),
        Init::Uniform { low, high } => (3, low.to_bits(), high.to_bits()),
        Init::Const(c) => (4, c.to_bits(), 0),
    }
}

impl PartialEq for OpKey<'_> {
    fn eq(&self, other: &Self) -> bool {
        use Op::*;
        match (self.0, other.0) {
            (
                Param {
                    name: n1,
                    shape: s1,
                    dtype: d1,
                    init: i1,
                    trainable: t1,
                },
                Param {
                    name: n2,
                    shape: s2,
                    dtype: d2,
                    init: i2,
                    trainable: t2,
                },
            ) => n1 == n2 && s1 == s2 && d1 == d2 && init_bits(i1) == init_bits(i2) && t1 == t2,
            (
                Constant {
                    value: a,
                    dtype: d1,
                },
                Constant {
                    value: b,
                    dtype: d2,
                },
            ) => a.to_bits() == b.to_bits() && d1 == d2,
            (PowConst { p: a }, PowConst { p: b }) => a.to_bits() == b.to_bits(),
            // Every other op has no float attribute: the derived equality is exact.
            (a, b) => a == b,
        }
    }
}

impl Eq for OpKey<'_> {}

impl Hash for OpKey<'_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        use Op::*;
        std::mem::discriminant(self.0).hash(h);
        match self.0 {
            Input { name, shape, dtype } => (name, shape, dtype).hash(h),
            Param {
                name,
                shape,
                dtype,
                init,
                trainable,
            } => (name, shape, dtype, init_bits(init), trainable).hash(h),
            Constant { value, dtype } => (value.to_bits(), dtype).hash(h),
            DimConst { dim, dtype } => (dim, dtype).hash(h),
            StopGradient | Select | Gather | TakeAlong => {}
            Iota { shape, axis, dtype } => (shape, axis, dtype).hash(h),
            RandUniform { shape, stream } => (shape, stream).hash(h),
            Unary(u) => u.hash(h),
            Cast { to } => to.hash(h),
            PowConst { p } => p.to_bits().hash(h),
            Binary(b) => b.hash(h),
            Compare(c) => c.hash(h),
            Broadcast { shape, axes } => (shape, axes).hash(h),
            Reshape { shape } => shape.hash(h),
            Permute { perm } => perm.hash(h),
            Slice {
                axis,
                start,
                end,
                step,
            } => (axis, start, end, step).hash(h),
            Pad {
                axis,
                before,
                after,
            } => (axis, before, after).hash(h),
            Concat { axis } => axis.hash(h),
            ReduceSum { axes, keepdim } | ReduceMax { axes, keepdim } => (axes, keepdim).hash(h),
            MatMul {
                transpose_a,
                transpose_b,
            } => (transpose_a, transpose_b).hash(h),
            ScatterAdd { rows } => rows.hash(h),
            PutAlong { size } => size.hash(h),
            // Equality is `Op`'s own; the printed attributes are a faithful, deterministic key.
            Attention(_) | AttentionBackward { .. } => self.0.attrs().hash(h),
        }
    }
}
