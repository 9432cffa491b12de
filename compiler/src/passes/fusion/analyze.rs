//! Per-node facts fusion needs: the needed nodes in topological order, concrete shapes, which
//! values are compile-time constants, users, and each node's category.

use std::collections::{HashMap, HashSet};

use super::FusionError;
use crate::ir::{AttnGrad, DType, Graph, Op, ValueId};
use crate::kernel::HeadLayout;

/// What kind of lowering a node gets (before row-group placement refines it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cat {
    /// `Input` or `Param`: a buffer of its own.
    Source,
    /// Depends only on constants and iotas: inlined into kernels or computed at compile time.
    Konst,
    /// `Reshape`, `StopGradient`, an identity `Slice`, an empty reduction: same data as operand 0.
    Alias,
    /// A `Slice` that selects one contiguous range: a view into operand 0's buffer.
    SliceView,
    /// Elementwise, broadcast, reduction, take/put-along: a row-group candidate.
    Row,
    /// Always its own kernel (GEMM, attention, data movement, noise).
    Kernel,
}

pub(super) struct Info<'g> {
    pub g: &'g Graph,
    /// Needed nodes in topological order; node `i` is `order[i]`.
    pub order: Vec<ValueId>,
    pub idx: HashMap<ValueId, usize>,
    pub shape: Vec<Vec<usize>>,
    pub konst: Vec<bool>,
    pub cat: Vec<Cat>,
    /// Operands (node indices).
    pub ins: Vec<Vec<usize>>,
    /// Needed users (node indices, sorted, distinct).
    pub users: Vec<Vec<usize>>,
    /// Read by a graph output or a state update.
    pub escapes: Vec<bool>,
    /// An attention result (forward `o`, backward `dq`, `dk`, `dv`) that the kernel writes
    /// sequence-major straight into the buffer of its only user, the head-merge permute given
    /// here; see [`Info::attention_operand`].
    pub head_write: Vec<Option<usize>>,
}

impl<'g> Info<'g> {
    pub fn new(g: &'g Graph) -> Result<Info<'g>, FusionError> {
        let mut needed: HashSet<ValueId> = HashSet::new();
        let mut stack: Vec<ValueId> = g
            .outputs()
            .iter()
            .map(|o| o.value)
            .chain(g.updates().iter().map(|u| u.value))
            .collect();
        while let Some(v) = stack.pop() {
            if needed.insert(v) {
                stack.extend(g.node(v).inputs().iter().copied());
            }
        }
        let order: Vec<ValueId> = g
            .topo_order()?
            .into_iter()
            .filter(|v| needed.contains(v))
            .collect();
        let idx: HashMap<ValueId, usize> = order.iter().enumerate().map(|(i, v)| (*v, i)).collect();
        let n = order.len();
        let mut shape = Vec::with_capacity(n);
        let mut ins = Vec::with_capacity(n);
        let mut konst = vec![false; n];
        let mut cat = vec![Cat::Row; n];
        let mut users = vec![Vec::new(); n];
        for (i, v) in order.iter().enumerate() {
            let node = g.node(*v);
            let s: Option<Vec<usize>> = node
                .shape()
                .iter()
                .map(|d| d.as_const().and_then(|c| usize::try_from(c).ok()))
                .collect();
            let name = value_name(g, *v);
            shape.push(s.ok_or_else(|| FusionError::Unbound {
                value: name.clone(),
                shape: crate::ir::shape_str(node.shape()),
            })?);
            match node.dtype() {
                DType::F32 | DType::I32 | DType::I64 | DType::Bool => {}
                d => {
                    return Err(FusionError::DType {
                        value: name,
                        dtype: d.to_string(),
                    })
                }
            }
            let operands: Vec<usize> = node.inputs().iter().map(|u| idx[u]).collect();
            for u in &operands {
                users[*u].push(i);
            }
            konst[i] = match node.op() {
                Op::Input { .. } | Op::Param { .. } | Op::RandUniform { .. } => false,
                _ => operands.iter().all(|u| konst[*u]),
            };
            ins.push(operands);
        }
        for u in &mut users {
            u.dedup();
        }
        let mut escapes = vec![false; n];
        for v in g
            .outputs()
            .iter()
            .map(|o| o.value)
            .chain(g.updates().iter().map(|u| u.value))
        {
            escapes[idx[&v]] = true;
        }
        let mut info = Info {
            g,
            order,
            idx,
            shape,
            konst,
            cat: Vec::new(),
            ins,
            users,
            escapes,
            head_write: Vec::new(),
        };
        for (i, c) in cat.iter_mut().enumerate() {
            *c = info.categorize(i);
        }
        info.cat = cat;
        info.head_write = (0..n).map(|i| info.head_write_target(i)).collect();
        Ok(info)
    }

    pub fn op(&self, i: usize) -> &Op {
        self.g.node(self.order[i]).op()
    }
    pub fn dtype(&self, i: usize) -> DType {
        self.g.node(self.order[i]).dtype()
    }
    pub fn numel(&self, i: usize) -> usize {
        self.shape[i].iter().product()
    }
    pub fn name(&self, i: usize) -> String {
        value_name(self.g, self.order[i])
    }
    /// The name path of a node, or its op when it has none.
    pub fn origin(&self, i: usize) -> String {
        let n = self.g.node(self.order[i]);
        n.name()
            .map(str::to_string)
            .unwrap_or_else(|| n.op().name().to_string())
    }

    fn categorize(&self, i: usize) -> Cat {
        let op = self.op(i);
        if matches!(op, Op::Input { .. } | Op::Param { .. }) {
            return Cat::Source;
        }
        if self.konst[i] {
            return Cat::Konst;
        }
        match op {
            Op::Reshape { .. } | Op::StopGradient => Cat::Alias,
            Op::ReduceSum { axes, .. } | Op::ReduceMax { axes, .. } if axes.is_empty() => {
                Cat::Alias
            }
            Op::Slice {
                axis,
                start,
                end,
                step,
            } => {
                let x = &self.shape[self.ins[i][0]];
                let (s, e) = (
                    start.as_const().unwrap_or(0) as usize,
                    end.as_const().unwrap_or(0) as usize,
                );
                if s == 0 && e == x[*axis] && (*step == 1 || x[*axis] <= 1) {
                    Cat::Alias
                } else if *step == 1 && x[..*axis].iter().product::<usize>() == 1 {
                    Cat::SliceView
                } else {
                    Cat::Kernel
                }
            }
            Op::Unary(_)
            | Op::Cast { .. }
            | Op::PowConst { .. }
            | Op::Binary(_)
            | Op::Compare(_)
            | Op::Select
            | Op::Broadcast { .. }
            | Op::ReduceSum { .. }
            | Op::ReduceMax { .. }
            | Op::TakeAlong
            | Op::PutAlong { .. } => Cat::Row,
            Op::MatMul { .. }
            | Op::Attention(_)
            | Op::AttentionBackward { .. }
            | Op::Gather
            | Op::ScatterAdd { .. }
            | Op::Permute { .. }
            | Op::Pad { .. }
            | Op::Concat { .. }
            | Op::RandUniform { .. } => Cat::Kernel,
            // Sources and constants are categorised above (a constant is always `Konst`).
            Op::Input { .. }
            | Op::Param { .. }
            | Op::Constant { .. }
            | Op::DimConst { .. }
            | Op::Iota { .. } => Cat::Konst,
        }
    }

    /// Follows aliases (not slice views) to the node that owns the data.
    pub fn src(&self, mut i: usize) -> usize {
        while self.cat[i] == Cat::Alias {
            i = self.ins[i][0];
        }
        i
    }

    /// The operand of a head swap: a `Permute [0, 2, 1, 3]` of a rank-4 computed value, i.e.
    /// `split_heads`' `[b, t, h, d] -> [b, h, t, d]` or `merge_heads`' way back.
    pub fn head_swap_operand(&self, u: usize) -> Option<usize> {
        match self.op(u) {
            Op::Permute { perm } if perm[..] == [0, 2, 1, 3] && !self.konst[u] => {
                Some(self.ins[u][0])
            }
            _ => None,
        }
    }

    /// Where attention node `i` (`Attention` or `AttentionBackward`) reads operand `slot` from,
    /// and in which layout. The head-split and head-merge transposes around attention cost no
    /// copy: an operand `q`, `k`, `v` or `do` that is a head swap of `x` is read from `x`'s
    /// buffer sequence-major, and the backward reads `o` from wherever the forward wrote it.
    /// Everything else (bias, lengths, `lse`, an operand that is no head swap) is read as it is.
    pub fn attention_operand(&self, i: usize, slot: usize) -> (usize, HeadLayout) {
        let u = self.ins[i][slot];
        let swappable = match self.op(i) {
            Op::Attention(_) => slot < 3,
            Op::AttentionBackward { .. } => slot < 3 || slot == 4,
            _ => false,
        };
        if swappable {
            if let Some(x) = self.head_swap_operand(u) {
                return (x, HeadLayout::SeqMajor);
            }
        }
        if matches!(self.op(i), Op::AttentionBackward { .. }) && slot == 3 {
            if let Some(p) = self.head_write[u] {
                return (p, HeadLayout::SeqMajor);
            }
        }
        (u, HeadLayout::HeadMajor)
    }

    /// The head-merge permute that attention result `i` can be written into: `i` is a forward
    /// `o` or a backward `dq`/`dk`/`dv`, does not escape, and its users are exactly one head swap
    /// plus (for `o`) backward kernels that read it as their `o` operand only.
    fn head_write_target(&self, i: usize) -> Option<usize> {
        match self.op(i) {
            Op::Attention(_) => {}
            Op::AttentionBackward { wrt, .. } if *wrt != AttnGrad::Bias => {}
            _ => return None,
        }
        if self.escapes[i] || self.shape[i].len() != 4 {
            return None;
        }
        let mut target = None;
        for u in &self.users[i] {
            let is_o_read = matches!(self.op(*u), Op::AttentionBackward { .. })
                && matches!(self.op(i), Op::Attention(_))
                && self.ins[*u]
                    .iter()
                    .enumerate()
                    .all(|(slot, x)| (*x == i) == (slot == 3));
            if is_o_read {
                continue;
            }
            if self.head_swap_operand(*u) == Some(i) && target.is_none() {
                target = Some(*u);
                continue;
            }
            return None;
        }
        target
    }

    /// A scalar elementwise node: numel 1 and elementwise (its own small scalar kernels).
    pub fn is_scalar_node(&self, i: usize) -> bool {
        self.cat[i] == Cat::Row
            && self.numel(i) == 1
            && matches!(
                self.op(i),
                Op::Unary(_)
                    | Op::Cast { .. }
                    | Op::PowConst { .. }
                    | Op::Binary(_)
                    | Op::Compare(_)
                    | Op::Select
            )
    }
}

pub(super) fn value_name(g: &Graph, v: ValueId) -> String {
    let n = g.node(v);
    match (n.op().source_name(), n.name()) {
        (Some(s), _) => s.to_string(),
        (None, Some(p)) => format!("{p} ({v})"),
        (None, None) => format!("{} ({v})", n.op().name()),
    }
}

/// Row-major strides of a shape.
pub(super) fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}
