//! Tensor (and sequence) parallelism: how every value is laid out over the tensor-parallel group,
//! and the collectives that layout needs, with their byte counts.
//!
//! A layout says what one rank of a `t`-way group holds: the whole value (`Replicated`), one of `t`
//! contiguous blocks along an axis (`Split`), a summand of it (`Partial`: the ranks' values add up
//! to it, or take their maximum), or nothing yet (`Free`: a constant, noise, a parameter not yet
//! placed; any rank can produce any block of it without communication).
//!
//! Layouts propagate through the training graph in topological order by one rule per op; where an
//! op needs an operand in another layout than its producer gave, the edge gets a collective:
//! `Split → Replicated` all-gather, `Partial → Replicated` all-reduce, `Partial → Split`
//! reduce-scatter, `Split(a) → Split(b)` all-to-all; `Replicated → Split` is a local slice.
//! Megatron-LM's layout follows from the rules rather than being written down:
//! - a matmul whose weight is still free and whose input is whole splits the weight by output
//!   features (column parallel: queries, keys, values, the MLP's first layers, the LM head);
//!   one whose input is split by features splits the weight by input features (row parallel: the
//!   attention output and the MLP's last layer), giving a `Partial` result;
//! - a `Partial` is reduced at its first consumer that is not an addition of partials: all-reduce,
//!   or with sequence parallelism a reduce-scatter along the sequence axis (then the norms, dropout
//!   and residual adds run on sequence blocks, and the next column-parallel matmul all-gathers);
//! - an embedding table is split by rows (vocabulary parallel: a `Partial` lookup), so a tied
//!   output projection is column parallel over the vocabulary, and cross entropy reduces its max,
//!   sum and picked logit with three small all-reduces instead of gathering the logits;
//! - heads follow from reshapes: a split feature axis `heads × head_dim` becomes a split head axis.
//!
//! Parameters take the layout their users ask for (a first pass places them; the second fixes
//! them and records collectives). Backward ops are ordinary ops here, so the backward collectives
//! (the all-reduce of an input gradient of a column-parallel layer, the all-reduce of norm weight
//! gradients under sequence parallelism) come out of the same rules.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::roles::{Phase, Roles};
use crate::ir::{facts, BinaryOp, Graph, Op, ValueId};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reduce {
    Sum,
    Max,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Layout {
    Replicated,
    Split(usize),
    Partial(Reduce),
    Free,
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Layout::Replicated => f.write_str("replicated"),
            Layout::Split(a) => write!(f, "split({a})"),
            Layout::Partial(Reduce::Sum) => f.write_str("partial(sum)"),
            Layout::Partial(Reduce::Max) => f.write_str("partial(max)"),
            Layout::Free => f.write_str("free"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CollectiveKind {
    AllReduce(Reduce),
    AllGather,
    ReduceScatter,
    AllToAll,
    /// Pipeline: a stage sends an activation (forward) or its gradient (backward) to the next.
    SendRecv,
}

impl CollectiveKind {
    pub fn name(self) -> &'static str {
        match self {
            CollectiveKind::AllReduce(Reduce::Sum) => "all-reduce",
            CollectiveKind::AllReduce(Reduce::Max) => "all-reduce(max)",
            CollectiveKind::AllGather => "all-gather",
            CollectiveKind::ReduceScatter => "reduce-scatter",
            CollectiveKind::AllToAll => "all-to-all",
            CollectiveKind::SendRecv => "send/recv",
        }
    }
    /// Bytes one rank sends for a tensor of `full` bytes over a ring of `t` ranks.
    pub fn wire_bytes(self, full: u64, t: u64) -> u64 {
        if t <= 1 {
            return 0;
        }
        let f = full as u128;
        let t128 = t as u128;
        (match self {
            CollectiveKind::AllReduce(_) => 2 * (t128 - 1) * f / t128,
            CollectiveKind::AllGather | CollectiveKind::ReduceScatter => (t128 - 1) * f / t128,
            CollectiveKind::AllToAll => (t128 - 1) * f / (t128 * t128),
            CollectiveKind::SendRecv => f,
        }) as u64
    }
}

/// One collective on an edge of the graph (the tensor-parallel group).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Collective {
    pub kind: CollectiveKind,
    /// The value converted.
    pub value: ValueId,
    pub from: Layout,
    pub to: Layout,
    /// The ops that read the converted value.
    pub readers: Vec<ValueId>,
    /// Size of the whole (unsharded) tensor.
    pub full_bytes: u64,
    /// Bytes each rank sends.
    pub wire_bytes: u64,
    /// Phase of the first reader (forward, backward — recompute included — or optimizer).
    pub phase: Phase,
    /// Bytes of the converted copy each rank holds while its readers run.
    pub local_bytes: u64,
}

/// Layouts of every value of one graph over a `degree`-way tensor-parallel group.
#[derive(Clone, Debug)]
pub struct Sharding {
    pub degree: u64,
    pub sequence: bool,
    /// Concrete layout of every value (`Free` resolved to what its users need).
    pub layout: HashMap<ValueId, Layout>,
    /// Each rank's shape of every value.
    pub local_shape: HashMap<ValueId, Vec<usize>>,
    pub collectives: Vec<Collective>,
    /// `(reader, operand position)` → index into `collectives`.
    pub edges: BTreeMap<(ValueId, usize), usize>,
}

/// What the rules need to know about the graph.
pub struct ShardInput<'a> {
    /// A graph with every dim bound.
    pub graph: &'a Graph,
    pub roles: &'a Roles,
    /// The sequence axis of each value that has one (for sequence parallelism).
    pub seq_axis: &'a HashMap<ValueId, usize>,
    /// Bytes per element of each value (the accounting precision).
    pub elem_bytes: &'a dyn Fn(ValueId) -> u64,
    /// The order to propagate in (topological; a recompute schedule works).
    pub order: &'a [ValueId],
}

fn dims(g: &Graph, v: ValueId) -> Vec<usize> {
    g.shape(v)
        .iter()
        .map(|d| d.as_const().unwrap_or(0).max(0) as usize)
        .collect()
}

struct Ctx<'a> {
    inp: &'a ShardInput<'a>,
    t: u64,
    sp: bool,
    /// Parameters and layout ops of parameters alone: placed by their users, while other free
    /// values (constants, whole-operand ops) are computed in whatever block a user wants.
    weights: HashSet<ValueId>,
}

impl Ctx<'_> {
    fn g(&self) -> &Graph {
        self.inp.graph
    }
    /// Where a `Partial` value goes when something needs it whole: replicated (all-reduce), or
    /// with sequence parallelism a `[batch, seq, features]` sum is scattered along the sequence.
    fn resolved(&self, v: ValueId, kind: Reduce) -> Layout {
        if self.sp && kind == Reduce::Sum {
            if let Some(&a) = self.inp.seq_axis.get(&v) {
                let d = dims(self.g(), v);
                if d.len() == 3 && a == 1 && d[2] > 1 && (d[a] as u64).is_multiple_of(self.t) {
                    return Layout::Split(a);
                }
            }
        }
        Layout::Replicated
    }
    fn splittable(&self, v: ValueId, axis: usize) -> bool {
        dims(self.g(), v)
            .get(axis)
            .is_some_and(|d| *d as u64 >= self.t)
    }

    /// The rule of `v`'s op: (required operand layouts, output layout).
    fn rule(&self, v: ValueId, ins: &[Layout]) -> (Vec<Layout>, Layout) {
        let g = self.g();
        let n = g.node(v);
        let x = n.inputs();
        let mut req: Vec<Layout> = ins.to_vec();
        // Partials are reduced at their first consumer, except additions of partials and sums.
        // Backward gradient accumulation adds partial sums and reduces once (the three
        // contributions to a norm output's gradient from queries, keys and values); in the
        // forward pass a residual stream of partial sums would hold whole tensors on every rank, so
        // partials are reduced right away, as Megatron does.
        let keeps_partial = match n.op() {
            Op::Binary(BinaryOp::Add) => {
                !self.inp.roles.is_forward(v)
                    && ins
                        .iter()
                        .all(|l| matches!(l, Layout::Partial(Reduce::Sum)))
            }
            Op::StopGradient => true,
            _ => false,
        };
        if !keeps_partial {
            for (i, l) in ins.iter().enumerate() {
                if let Layout::Partial(k) = l {
                    req[i] = self.resolved(x[i], *k);
                }
            }
        }
        let cur = req.clone();
        match n.op() {
            Op::Input { .. } => (req, Layout::Replicated),
            Op::Param { .. }
            | Op::Constant { .. }
            | Op::DimConst { .. }
            | Op::Iota { .. }
            | Op::RandUniform { .. } => (req, Layout::Free),
            Op::Binary(BinaryOp::Add) if keeps_partial => (req, Layout::Partial(Reduce::Sum)),
            Op::Unary(_)
            | Op::Cast { .. }
            | Op::PowConst { .. }
            | Op::Binary(_)
            | Op::Compare(_)
            | Op::Select
            | Op::StopGradient => {
                let split = cur.iter().find_map(|l| {
                    if let Layout::Split(a) = l {
                        Some(*a)
                    } else {
                        None
                    }
                });
                match split {
                    Some(a) => (vec![Layout::Split(a); cur.len()], Layout::Split(a)),
                    None if matches!(n.op(), Op::StopGradient)
                        && matches!(cur[0], Layout::Partial(_)) =>
                    {
                        (req, cur[0])
                    }
                    None => (req, Layout::Free),
                }
            }
            Op::Broadcast { axes, shape } => {
                let out = match cur[0] {
                    Layout::Split(j) => {
                        let kept: Vec<usize> =
                            (0..shape.len()).filter(|i| !axes.contains(i)).collect();
                        Layout::Split(kept[j])
                    }
                    l => local(l),
                };
                (req, out)
            }
            Op::Reshape { .. } => match cur[0] {
                Layout::Split(a) => {
                    match map_reshape_axis(&dims(g, x[0]), &dims(g, v), a, self.t) {
                        Some(b) => (req, Layout::Split(b)),
                        None => (vec![Layout::Replicated], Layout::Replicated),
                    }
                }
                l => (req, local(l)),
            },
            Op::Permute { perm } => match cur[0] {
                Layout::Split(a) => (
                    req,
                    Layout::Split(perm.iter().position(|p| *p == a).unwrap_or(0)),
                ),
                l => (req, local(l)),
            },
            Op::Slice { axis, .. } | Op::Pad { axis, .. } => match cur[0] {
                Layout::Split(a) if a == *axis => (vec![Layout::Replicated], Layout::Replicated),
                l => (req, local(l)),
            },
            Op::Concat { axis } => {
                let split = cur.iter().find_map(|l| {
                    if let Layout::Split(a) = l {
                        Some(*a)
                    } else {
                        None
                    }
                });
                match split {
                    Some(a) if a != *axis => (vec![Layout::Split(a); cur.len()], Layout::Split(a)),
                    Some(_) => (vec![Layout::Replicated; cur.len()], Layout::Replicated),
                    None => (req, Layout::Free),
                }
            }
            Op::ReduceSum { axes, keepdim } | Op::ReduceMax { axes, keepdim } => {
                let kind = if matches!(n.op(), Op::ReduceSum { .. }) {
                    Reduce::Sum
                } else {
                    Reduce::Max
                };
                let out = match cur[0] {
                    Layout::Split(a) if axes.contains(&a) => Layout::Partial(kind),
                    Layout::Split(a) => Layout::Split(if *keepdim {
                        a
                    } else {
                        a - axes.iter().filter(|x| **x < a).count()
                    }),
                    l => l,
                };
                (req, out)
            }
            Op::MatMul {
                transpose_a,
                transpose_b,
            } => self.matmul(v, &cur, *transpose_a, *transpose_b),
            Op::Gather => {
                let rows_ok = self.splittable(x[0], 0);
                let idx_rank = g.shape(x[1]).len();
                match cur[0] {
                    Layout::Free if rows_ok && self.weights.contains(&x[0]) => (
                        vec![Layout::Split(0), Layout::Replicated],
                        Layout::Partial(Reduce::Sum),
                    ),
                    Layout::Split(0) => (
                        vec![Layout::Split(0), Layout::Replicated],
                        Layout::Partial(Reduce::Sum),
                    ),
                    Layout::Split(j) => (
                        vec![Layout::Split(j), Layout::Replicated],
                        Layout::Split(idx_rank + j - 1),
                    ),
                    _ => match cur[1] {
                        Layout::Split(a) => {
                            (vec![Layout::Replicated, Layout::Split(a)], Layout::Split(a))
                        }
                        _ => (vec![Layout::Replicated, cur[1]], Layout::Replicated),
                    },
                }
            }
            Op::ScatterAdd { .. } => {
                let idx_rank = g.shape(x[1]).len();
                match cur[0] {
                    // Values split by token (sequence parallel): gather them, then each rank sums
                    // the rows its users want (its vocabulary block) rather than a whole-table
                    // partial sum.
                    Layout::Split(a) if a < idx_rank => {
                        (vec![Layout::Replicated, Layout::Replicated], Layout::Free)
                    }
                    Layout::Split(a) => (
                        vec![Layout::Split(a), Layout::Replicated],
                        Layout::Split(a - idx_rank + 1),
                    ),
                    l => (req, local(l)),
                }
            }
            Op::TakeAlong => {
                let last = g.shape(x[0]).len() - 1;
                match cur[0] {
                    Layout::Split(a) if a == last => (
                        vec![Layout::Split(a), Layout::Replicated],
                        Layout::Partial(Reduce::Sum),
                    ),
                    Layout::Split(a) => {
                        (vec![Layout::Split(a), Layout::Split(a)], Layout::Split(a))
                    }
                    l => (
                        vec![l, Layout::Replicated],
                        if l == Layout::Free {
                            Layout::Free
                        } else {
                            Layout::Replicated
                        },
                    ),
                }
            }
            Op::Attention(spec) | Op::AttentionBackward { spec, .. } => {
                // Heads (axis 1) or batch (axis 0) split carries through attention unchanged, as
                // in Megatron's column-parallel QKV; any other split needs whole operands.
                let tensors = if matches!(n.op(), Op::Attention(_)) {
                    3
                } else {
                    5
                };
                let split = cur[..tensors].iter().find_map(|l| match l {
                    Layout::Split(a) if *a <= 1 => Some(*a),
                    _ => None,
                });
                let split = split.filter(|a| (0..3).all(|i| self.splittable(x[i], *a)));
                let (bias_at, prefix_at, klen_at) = spec.extra_positions();
                let mut want = vec![Layout::Replicated; x.len()];
                let out = match split {
                    Some(a) => {
                        want[..tensors].fill(Layout::Split(a));
                        for (pos, axis) in
                            [(bias_at, 0), (prefix_at, usize::MAX), (klen_at, usize::MAX)]
                        {
                            if let Some(p) = pos {
                                // bias [h, t, s] follows a head split; lengths [b] a batch split.
                                want[tensors + p] = match (a, axis) {
                                    (1, 0) => Layout::Split(0),
                                    (0, usize::MAX) => Layout::Split(0),
                                    _ => Layout::Replicated,
                                };
                            }
                        }
                        match n.op() {
                            Op::AttentionBackward {
                                wrt: crate::ir::AttnGrad::Bias,
                                ..
                            } => {
                                if a == 1 {
                                    Layout::Split(0)
                                } else {
                                    Layout::Partial(Reduce::Sum)
                                }
                            }
                            _ => Layout::Split(a),
                        }
                    }
                    None => Layout::Replicated,
                };
                (want, out)
            }
            Op::PutAlong { .. } => match cur[0] {
                Layout::Split(a) => (vec![Layout::Split(a), Layout::Split(a)], Layout::Split(a)),
                _ => (vec![cur[0], Layout::Replicated], Layout::Free),
            },
        }
    }

    fn matmul(&self, v: ValueId, cur: &[Layout], ta: bool, tb: bool) -> (Vec<Layout>, Layout) {
        let g = self.g();
        let (a, b) = (g.node(v).inputs()[0], g.node(v).inputs()[1]);
        let (ra, rb) = (g.shape(a).len(), g.shape(b).len());
        let (m_a, k_a) = if ta {
            (ra - 1, ra - 2)
        } else {
            (ra - 2, ra - 1)
        };
        let (k_b, n_b) = if tb {
            (rb - 1, rb - 2)
        } else {
            (rb - 2, rb - 1)
        };
        #[derive(PartialEq, Clone, Copy)]
        enum Ax {
            Whole,
            Free,
            Batch(usize),
            M,
            K,
            N,
        }
        let class_a = match cur[0] {
            Layout::Split(x) if x == m_a => Ax::M,
            Layout::Split(x) if x == k_a => Ax::K,
            Layout::Split(x) => Ax::Batch(x),
            Layout::Free => Ax::Free,
            _ => Ax::Whole,
        };
        let class_b = match cur[1] {
            Layout::Split(x) if x == k_b => Ax::K,
            Layout::Split(x) if x == n_b => Ax::N,
            Layout::Split(x) => Ax::Batch(x),
            Layout::Free => Ax::Free,
            _ => Ax::Whole,
        };
        let out_m = ra - 2;
        let out_n = ra - 1;
        let split = Layout::Split;
        let whole = Layout::Replicated;
        let free_or = |c: Ax, l: Layout| if c == Ax::Free { Layout::Free } else { l };
        match (class_a, class_b) {
            (Ax::K, Ax::K) => (cur.to_vec(), Layout::Partial(Reduce::Sum)),
            (Ax::K, Ax::Whole | Ax::Free) => {
                (vec![cur[0], split(k_b)], Layout::Partial(Reduce::Sum))
            }
            (Ax::Whole | Ax::Free | Ax::M, Ax::N) => {
                (vec![free_or(class_a, whole), cur[1]], split(out_n))
            }
            (Ax::Whole | Ax::Free | Ax::M, Ax::Free)
                if rb == 2 && self.weights.contains(&b) && self.splittable(b, n_b) =>
            {
                (vec![free_or(class_a, whole), split(n_b)], split(out_n))
            }
            (Ax::M, Ax::Free | Ax::Whole) => (vec![cur[0], whole], split(out_m)),
            (Ax::Batch(i), Ax::Batch(j)) if i == j => (cur.to_vec(), split(i)),
            (Ax::Batch(i), Ax::Whole | Ax::Free) => (
                vec![cur[0], if rb > 2 { split(i) } else { whole }],
                split(i),
            ),
            (Ax::Whole | Ax::Free, Ax::Batch(j)) if rb > 2 => (vec![split(j), cur[1]], split(j)),
            (Ax::Whole, Ax::Whole | Ax::Free) | (Ax::Free, Ax::Whole) => {
                (vec![whole, whole], whole)
            }
            (Ax::Free, Ax::Free) => (cur.to_vec(), Layout::Free),
            (Ax::K, Ax::N) => (vec![whole, cur[1]], split(out_n)),
            (Ax::M, Ax::K) => (vec![cur[0], whole], split(out_m)),
            (Ax::Batch(i), _) if rb > 2 => (vec![cur[0], split(i)], split(i)),
            _ => (vec![whole, whole], whole),
        }
    }
}

/// A layout op or elementwise op of whole (or free) operands: every rank has all it needs, so it
/// computes whatever block its users want (materialised only as that block).
fn local(l: Layout) -> Layout {
    match l {
        Layout::Replicated => Layout::Free,
        l => l,
    }
}

/// Maps a split of input axis `a` through a row-major reshape: the output axis with the same
/// product of leading dims that is the same axis (same extent), or that starts the split axis and
/// is divisible by `t` when `a` is; `None` if there is none (the reshape then needs the whole).
pub fn map_reshape_axis(input: &[usize], output: &[usize], a: usize, t: u64) -> Option<usize> {
    let da = *input.get(a)?;
    let prefix: u128 = input[..a].iter().map(|d| *d as u128).product();
    let mut p: u128 = 1;
    for (b, d) in output.iter().enumerate() {
        if p == prefix && *d > 1 {
            // The same axis: blocks are unchanged even when `t` does not divide it.
            if *d == da {
                return Some(b);
            }
            if (da as u64).is_multiple_of(t) && (*d as u64).is_multiple_of(t) {
                return Some(b);
            }
        }
        p *= *d as u128;
        if p > prefix {
            break;
        }
    }
    None
}

/// Converting a value from one layout to another: the collective, if one is needed.
pub fn conversion(from: Layout, to: Layout) -> Option<CollectiveKind> {
    match (from, to) {
        (Layout::Free, _) | (_, Layout::Free) => None,
        (Layout::Replicated, Layout::Replicated | Layout::Split(_)) => None,
        (Layout::Split(_), Layout::Replicated) => Some(CollectiveKind::AllGather),
        (Layout::Split(a), Layout::Split(b)) if a == b => None,
        (Layout::Split(_), Layout::Split(_)) => Some(CollectiveKind::AllToAll),
        (Layout::Partial(r), Layout::Replicated) => Some(CollectiveKind::AllReduce(r)),
        (Layout::Partial(_), Layout::Split(_)) => Some(CollectiveKind::ReduceScatter),
        (_, Layout::Partial(_)) => None,
    }
}

fn local_dims(d: &[usize], l: Layout, t: u64) -> Vec<usize> {
    let mut d = d.to_vec();
    if let Layout::Split(a) = l {
        if a < d.len() {
            d[a] = (d[a] as u64).div_ceil(t) as usize;
        }
    }
    d
}

/// Propagates layouts over a `tensor`-way group (`sequence`: sequence parallelism). With
/// `tensor == 1` every value is replicated and there is no collective.
pub fn shard(inp: &ShardInput, tensor: u64, sequence: bool) -> Sharding {
    let g = inp.graph;
    let t = tensor.max(1);
    let mut weights: HashSet<ValueId> = HashSet::new();
    for v in inp.order {
        let n = g.node(*v);
        let view = matches!(
            n.op(),
            Op::Broadcast { .. } | Op::Reshape { .. } | Op::Permute { .. } | Op::Slice { .. }
        ) && n.inputs().iter().all(|u| weights.contains(u));
        if matches!(n.op(), Op::Param { .. }) || view {
            weights.insert(*v);
        }
    }
    let ctx = Ctx {
        inp,
        t,
        sp: sequence && t > 1,
        weights,
    };
    if t == 1 {
        let layout: HashMap<ValueId, Layout> =
            inp.order.iter().map(|v| (*v, Layout::Replicated)).collect();
        let local_shape = inp.order.iter().map(|v| (*v, dims(g, *v))).collect();
        return Sharding {
            degree: 1,
            sequence: false,
            layout,
            local_shape,
            collectives: Vec::new(),
            edges: BTreeMap::new(),
        };
    }
    // Parameters (and layout ops of parameters alone) are unplaced until the first op that
    // needs them in a particular layout places them there; later users convert if they must.
    let mut layout: HashMap<ValueId, Layout> = HashMap::new();
    let mut reqs: HashMap<ValueId, Vec<Layout>> = HashMap::new();
    let mut unplaced: HashSet<ValueId> = HashSet::new();
    fn place(
        g: &Graph,
        u: ValueId,
        l: Layout,
        t: u64,
        layout: &mut HashMap<ValueId, Layout>,
        unplaced: &mut HashSet<ValueId>,
    ) {
        if !unplaced.remove(&u) {
            return;
        }
        layout.insert(u, l);
        for (i, w) in g.node(u).inputs().iter().enumerate() {
            if unplaced.contains(w) {
                let lw = back_through(g, u, i, l, t);
                place(g, *w, lw, t, layout, unplaced);
            }
        }
    }
    for v in inp.order {
        let n = g.node(*v);
        let ins: Vec<Layout> = n
            .inputs()
            .iter()
            .map(|u| layout.get(u).copied().unwrap_or(Layout::Replicated))
            .collect();
        let (req, out) = ctx.rule(*v, &ins);
        for (i, u) in n.inputs().iter().enumerate() {
            if unplaced.contains(u) && matches!(req[i], Layout::Split(_) | Layout::Replicated) {
                place(g, *u, req[i], t, &mut layout, &mut unplaced);
            }
        }
        let is_view_of_unplaced = matches!(
            n.op(),
            Op::Broadcast { .. } | Op::Reshape { .. } | Op::Permute { .. } | Op::Slice { .. }
        ) && n.inputs().iter().all(|u| unplaced.contains(u));
        if matches!(n.op(), Op::Param { .. }) || is_view_of_unplaced {
            unplaced.insert(*v);
            layout.insert(*v, Layout::Free);
        } else {
            layout.insert(*v, out);
        }
        reqs.insert(*v, req);
    }
    // What is still unplaced (optimizer state, weights only read elementwise) is placed like any
    // free value below: as its users need it.
    let layout = resolve_free(g, inp.order, &layout, &reqs, t);
    // Collectives on edges, one per (value, target layout).
    let mut collectives: Vec<Collective> = Vec::new();
    let mut by_target: HashMap<(ValueId, Layout), usize> = HashMap::new();
    let mut edges = BTreeMap::new();
    for v in inp.order {
        let n = g.node(*v);
        for (i, u) in n.inputs().iter().enumerate() {
            let to = reqs[v][i];
            let from = layout[u];
            let Some(kind) = conversion(from, to) else {
                continue;
            };
            let c = *by_target.entry((*u, to)).or_insert_with(|| {
                let full =
                    dims(g, *u).iter().map(|d| *d as u64).product::<u64>() * (inp.elem_bytes)(*u);
                let local = local_dims(&dims(g, *u), to, t)
                    .iter()
                    .map(|d| *d as u64)
                    .product::<u64>()
                    * (inp.elem_bytes)(*u);
                collectives.push(Collective {
                    kind,
                    value: *u,
                    from,
                    to,
                    readers: Vec::new(),
                    full_bytes: full,
                    wire_bytes: kind.wire_bytes(full, t),
                    phase: inp.roles.phase(*v),
                    local_bytes: local,
                });
                collectives.len() - 1
            });
            if !collectives[c].readers.contains(v) {
                collectives[c].readers.push(*v);
            }
            edges.insert((*v, i), c);
        }
    }
    let local_shape = inp
        .order
        .iter()
        .map(|v| (*v, local_dims(&dims(g, *v), layout[v], t)))
        .collect();
    Sharding {
        degree: t,
        sequence: ctx.sp,
        layout,
        local_shape,
        collectives,
        edges,
    }
}

/// Resolves `Free` values (reverse topological order): the layout their users need, if all users
/// agree on one split; whole otherwise.
fn resolve_free(
    g: &Graph,
    order: &[ValueId],
    layout: &HashMap<ValueId, Layout>,
    reqs: &HashMap<ValueId, Vec<Layout>>,
    t: u64,
) -> HashMap<ValueId, Layout> {
    let mut users: HashMap<ValueId, Vec<(ValueId, usize)>> = HashMap::new();
    for v in order {
        for (i, u) in g.node(*v).inputs().iter().enumerate() {
            users.entry(*u).or_default().push((*v, i));
        }
    }
    let mut concrete = layout.clone();
    for v in order.iter().rev() {
        if layout[v] != Layout::Free {
            continue;
        }
        let mut want: Option<Layout> = None;
        let mut conflict = false;
        for (u, i) in users.get(v).map(|x| x.as_slice()).unwrap_or(&[]) {
            let r = if layout[u] == Layout::Free {
                back_through(g, *u, *i, concrete[u], t)
            } else {
                reqs[u][*i]
            };
            let r = match r {
                Layout::Split(a) => Layout::Split(a),
                _ => Layout::Replicated,
            };
            match want {
                None => want = Some(r),
                Some(w) if w != r => conflict = true,
                _ => {}
            }
        }
        concrete.insert(
            *v,
            if conflict {
                Layout::Replicated
            } else {
                want.unwrap_or(Layout::Replicated)
            },
        );
    }
    concrete
}

/// The layout operand `i` of `u` must have for `u` to come out as `out` (for free values).
fn back_through(g: &Graph, u: ValueId, i: usize, out: Layout, t: u64) -> Layout {
    let Layout::Split(b) = out else {
        return Layout::Replicated;
    };
    let n = g.node(u);
    let x = n.inputs()[i];
    match n.op() {
        op if facts(op).is_elementwise => out,
        Op::Broadcast { axes, .. } => {
            if axes.contains(&b) {
                Layout::Replicated
            } else {
                Layout::Split(b - axes.iter().filter(|a| **a < b).count())
            }
        }
        Op::Reshape { .. } => match map_reshape_axis(&dims(g, u), &dims(g, x), b, t) {
            Some(a) => Layout::Split(a),
            None => Layout::Replicated,
        },
        Op::Permute { perm } => Layout::Split(perm[b]),
        Op::Slice { axis, .. } | Op::Pad { axis, .. } | Op::Concat { axis } if *axis != b => out,
        Op::ReduceSum { axes, keepdim } | Op::ReduceMax { axes, keepdim } => {
            if *keepdim {
                out
            } else {
                let mut a = b;
                for ax in axes {
                    if *ax <= a {
                        a += 1;
                    }
                }
                Layout::Split(a)
            }
        }
        _ => Layout::Replicated,
    }
}

impl Sharding {
    pub fn local_numel(&self, v: ValueId) -> u64 {
        self.local_shape
            .get(&v)
            .map(|d| d.iter().map(|x| *x as u64).product())
            .unwrap_or(0)
    }
    pub fn layout_of(&self, v: ValueId) -> Layout {
        self.layout.get(&v).copied().unwrap_or(Layout::Replicated)
    }
    /// Per-rank bytes sent by the tensor group's collectives, by phase.
    pub fn wire_bytes_by_phase(&self) -> BTreeMap<Phase, u64> {
        let mut out = BTreeMap::new();
        for c in &self.collectives {
            *out.entry(c.phase).or_insert(0) += c.wire_bytes;
        }
        out
    }
}

/// The sequence axis of every value of an unbound graph: the first axis whose size involves a
/// symbol other than `batch`.
pub fn seq_axes(unbound: &Graph) -> HashMap<ValueId, usize> {
    let mut out = HashMap::new();
    for v in unbound.values() {
        let s = unbound.shape(v);
        if let Some(a) = s
            .iter()
            .position(|d| d.symbols().iter().any(|x| x.as_str() != "batch"))
        {
            out.insert(v, a);
        }
    }
    out
}
