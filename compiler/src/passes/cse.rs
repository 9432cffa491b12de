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
//! produce the same numbers and do merge). Nodes are visited in topological order, so chains of
//! duplicates collapse in one run.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use crate::ir::{BinaryOp, CmpOp, Graph, Init, IrError, Op, TensorType, ValueId};

use super::{replace, PassResult, PassStats};

pub const NAME: &str = "cse";

pub fn run(g: &mut Graph) -> Result<PassResult, IrError> {
    let mut stats = PassStats::new();
    let mut table: HashMap<Key, ValueId> = HashMap::new();
    for v in g.topo_order()? {
        let node = g.node(v);
        if matches!(node.op(), Op::Input { .. } | Op::Param { .. }) {
            continue;
        }
        let mut inputs = node.inputs().to_vec();
        if commutative(node.op()) {
            inputs.sort();
        }
        let key = Key {
            op: OpKey(node.op().clone()),
            ty: node.ty().clone(),
            inputs,
        };
        match table.get(&key) {
            Some(&first) => {
                replace(g, v, first);
                stats.bump("merged");
            }
            None => {
                table.insert(key, v);
            }
        }
    }
    Ok(PassResult::from_stats(stats))
}

fn commutative(op: &Op) -> bool {
    matches!(
        op,
        Op::Binary(BinaryOp::Add | BinaryOp::Mul | BinaryOp::Max | BinaryOp::Min)
            | Op::Compare(CmpOp::Eq | CmpOp::Ne)
    )
}

#[derive(PartialEq, Eq, Hash)]
struct Key {
    op: OpKey,
    ty: TensorType,
    inputs: Vec<ValueId>,
}

/// An op with equality and hashing that compare floats by bits.
struct OpKey(Op);

fn init_bits(i: &Init) -> (u8, u64, u64) {
    match i {
        Init::Normal { std } => (0, std.to_bits(), 0),
        Init::Zeros => (1, 0, 0),
        Init::Ones => (2, 0, 0),
        Init::Uniform { low, high } => (3, low.to_bits(), high.to_bits()),
        Init::Const(c) => (4, c.to_bits(), 0),
    }
}

impl PartialEq for OpKey {
    fn eq(&self, other: &Self) -> bool {
        use Op::*;
        match (&self.0, &other.0) {
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

impl Eq for OpKey {}

impl Hash for OpKey {
    fn hash<H: Hasher>(&self, h: &mut H) {
        use Op::*;
        std::mem::discriminant(&self.0).hash(h);
        match &self.0 {
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
