//! Graph passes, one per file, each registered by name with a one-line summary.
//!
//! A pass is a function `fn(&mut Graph) -> Result<PassResult, IrError>` that rewrites the graph in
//! place and reports whether it changed anything (that drives the pipeline's fixpoint) and a few
//! named counters. Passes see only the IR: they know nothing of sema, specs or runtimes. Which
//! passes run, in which order and how often is `pipeline::optimize`'s business, not theirs.
//!
//! Every pass keeps the graph valid (`ir::verify` passes after it; the pipeline checks this in
//! tests), keeps every `Input` and `Param` (they are the step's interface with the runtime), keeps
//! outputs and state updates by name, and is deterministic: rewrites happen in topological order
//! and no hash-map iteration order decides anything, so the printed result is the same on every
//! run and machine.
//!
//! The registry (`REGISTRY`) lists the graph-to-graph passes. Fusion (kernel formation) is written
//! separately and runs after `layout` (see `pipeline`); if it is a graph rewrite it registers here
//! like the others.

pub mod attention;
pub mod const_fold;
pub mod cse;
pub mod dce;
pub mod fusion;
pub mod layout;
pub mod simplify;
pub mod strip_stop_gradient;

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::hash::Hasher;

use crate::ir::{Dim, Graph, IrError, Op, TensorType, ValueId};

/// Named counters a pass reports (`folded: 12`), sorted by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassStats {
    counts: BTreeMap<&'static str, u64>,
}

impl PassStats {
    pub fn new() -> Self {
        Self::default()
    }
    /// Adds one to counter `key`.
    pub fn bump(&mut self, key: &'static str) {
        *self.counts.entry(key).or_insert(0) += 1;
    }
    pub fn add(&mut self, key: &'static str, n: u64) {
        if n > 0 {
            *self.counts.entry(key).or_insert(0) += n;
        }
    }
    pub fn get(&self, key: &str) -> u64 {
        self.counts.get(key).copied().unwrap_or(0)
    }
    /// Sum of all counters (how many rewrites the pass made).
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.counts.iter().map(|(k, v)| (*k, *v))
    }
    pub fn merge(&mut self, other: &PassStats) {
        for (k, v) in other.iter() {
            self.add(k, v);
        }
    }
}

impl fmt::Display for PassStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self.iter().map(|(k, v)| format!("{k}={v}")).collect();
        f.write_str(&parts.join(", "))
    }
}

/// What one run of a pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassResult {
    pub changed: bool,
    pub stats: PassStats,
}

impl PassResult {
    /// `changed` is whether any counter is non-zero: every rewrite a pass makes is counted.
    pub fn from_stats(stats: PassStats) -> Self {
        PassResult {
            changed: stats.total() > 0,
            stats,
        }
    }
}

pub type PassFn = fn(&mut Graph) -> Result<PassResult, IrError>;

/// One registered pass.
#[derive(Clone, Copy)]
pub struct Pass {
    /// Stable name (`const_fold`), used by the pipeline log and `PipelineOptions::disable`.
    pub name: &'static str,
    pub summary: &'static str,
    pub run: PassFn,
}

impl fmt::Debug for Pass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pass").field("name", &self.name).finish()
    }
}

/// Every graph pass, in the order the pipeline first runs them.
pub const REGISTRY: &[Pass] = &[
    Pass {
        name: strip_stop_gradient::NAME,
        summary:
            "remove stop_gradient (an identity) from graphs that will not be differentiated again",
        run: strip_stop_gradient::run,
    },
    Pass {
        name: const_fold::NAME,
        summary: "evaluate ops on uniform constants (scalars and their broadcasts) at compile time",
        run: const_fold::run,
    },
    Pass {
        name: simplify::NAME,
        summary:
            "algebraic identities: x*1, x+0, neg(neg x), reshape/permute/broadcast chains, ...",
        run: simplify::run,
    },
    Pass {
        name: cse::NAME,
        summary: "merge nodes with the same op, attributes, type and operands",
        run: cse::run,
    },
    Pass {
        name: dce::NAME,
        summary: "remove nodes that no output or state update depends on",
        run: dce::run,
    },
    Pass {
        name: layout::NAME,
        summary: "fold transposes of matmul operands and results into the matmul's transpose flags",
        run: layout::run,
    },
];

/// The registered pass called `name`.
pub fn lookup(name: &str) -> Option<&'static Pass> {
    REGISTRY.iter().find(|p| p.name == name)
}

// ----- helpers shared by the passes --------------------------------------------------------------

/// If every element of `v` is the same compile-time number, that number: a `Constant`, or a
/// `Broadcast` of one (the canonical form `simplify` gives every uniform tensor).
pub(crate) fn uniform_value(g: &Graph, v: ValueId) -> Option<f64> {
    let n = g.node(v);
    match n.op() {
        Op::Constant { value, .. } => Some(*value),
        Op::Broadcast { .. } => match g.node(n.inputs()[0]).op() {
            Op::Constant { value, .. } => Some(*value),
            _ => None,
        },
        _ => None,
    }
}

/// The scalar `Constant` behind a uniform value, if `v` is one or a broadcast of one.
pub(crate) fn uniform_source(g: &Graph, v: ValueId) -> Option<ValueId> {
    let n = g.node(v);
    match n.op() {
        Op::Constant { .. } => Some(v),
        Op::Broadcast { .. } => {
            let c = n.inputs()[0];
            matches!(g.node(c).op(), Op::Constant { .. }).then_some(c)
        }
        _ => None,
    }
}

/// Adds a node of type `ty` holding `value` everywhere: a scalar `Constant`, broadcast to the
/// shape when it has any axes. Both nodes carry `name`.
pub(crate) fn add_uniform(
    g: &mut Graph,
    value: f64,
    ty: &TensorType,
    name: Option<String>,
) -> ValueId {
    let c = g.add_unchecked(
        Op::Constant {
            value,
            dtype: ty.dtype,
        },
        &[],
        TensorType::new(ty.dtype, vec![]),
        name.clone(),
    );
    broadcast_scalar(g, c, ty, name)
}

/// `c` (a scalar) broadcast to `ty`'s shape; `c` itself for a scalar type.
pub(crate) fn broadcast_scalar(
    g: &mut Graph,
    c: ValueId,
    ty: &TensorType,
    name: Option<String>,
) -> ValueId {
    if ty.shape.is_empty() {
        return c;
    }
    g.add_unchecked(
        Op::Broadcast {
            shape: ty.shape.clone(),
            axes: (0..ty.shape.len()).collect(),
        },
        &[c],
        ty.clone(),
        name,
    )
}

/// Makes every use of `old` a use of `new` and removes `old`. The caller guarantees `new` has
/// the type of `old` and does not depend on it.
pub(crate) fn replace(g: &mut Graph, old: ValueId, new: ValueId) {
    if old == new {
        return;
    }
    g.replace_all_uses(old, new);
    g.remove(old);
}

/// Number of elements of a shape when every dim is constant.
pub(crate) fn const_numel(shape: &[Dim]) -> Option<i64> {
    shape
        .iter()
        .try_fold(1i64, |acc, d| d.as_const().and_then(|x| acc.checked_mul(x)))
}

/// A topological order of `g`, in O(nodes + edges) with dense tables indexed by the raw value id:
/// Kahn's algorithm, seeded with the operand-free nodes in insertion order, ready nodes first in,
/// first out. Deterministic: it depends only on the graph's history, never on hashing. (The
/// graph's own `topo_order` keeps ties in insertion order with a heap and ordered maps; the passes
/// run it several times per round on graphs of 10^5 nodes, so they use this one.)
pub(crate) fn topo(g: &Graph) -> Result<Vec<ValueId>, IrError> {
    let values = g.values();
    let Some(&any) = values.first() else {
        return Ok(Vec::new());
    };
    let bound = values
        .iter()
        .map(|v| v.index() as usize + 1)
        .max()
        .unwrap_or(0);
    // Operands that are not in the graph have no edge; the verifier reports them. A bitmap
    // answers "is it there" without touching the operand's node.
    let mut present = vec![false; bound];
    for v in &values {
        present[v.index() as usize] = true;
    }
    let here = |u: &&ValueId| present.get(u.index() as usize).copied().unwrap_or(false);
    // Users in compressed rows (one allocation, not one per node): `start[u]..start[u + 1]`.
    let mut indeg = vec![0u32; bound];
    let mut start = vec![0usize; bound + 1];
    for &v in &values {
        for u in g.node(v).inputs().iter().filter(here) {
            start[u.index() as usize + 1] += 1;
            indeg[v.index() as usize] += 1;
        }
    }
    for i in 0..bound {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut users = vec![any; start[bound]];
    let mut queue: VecDeque<ValueId> = VecDeque::new();
    for &v in &values {
        for u in g.node(v).inputs().iter().filter(here) {
            let slot = &mut fill[u.index() as usize];
            users[*slot] = v;
            *slot += 1;
        }
        if indeg[v.index() as usize] == 0 {
            queue.push_back(v);
        }
    }
    let mut order = Vec::with_capacity(values.len());
    while let Some(u) = queue.pop_front() {
        order.push(u);
        let i = u.index() as usize;
        for &v in &users[start[i]..start[i + 1]] {
            let d = &mut indeg[v.index() as usize];
            *d -= 1;
            if *d == 0 {
                queue.push_back(v);
            }
        }
    }
    if order.len() != values.len() {
        return Err(IrError::Cycle);
    }
    Ok(order)
}

/// A fast, deterministic, non-cryptographic hasher (the Fx hash of rustc) for the passes' tables:
/// keys come from the compiler itself, never from an adversary.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl FxHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

impl Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        let mut chunks = bytes.chunks_exact(8);
        for c in &mut chunks {
            let mut w = [0u8; 8];
            w.copy_from_slice(c);
            self.add(u64::from_le_bytes(w));
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut w = [0u8; 8];
            w[..rest.len()].copy_from_slice(rest);
            self.add(u64::from_le_bytes(w));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.add(u64::from(i));
    }
    fn write_u32(&mut self, i: u32) {
        self.add(u64::from(i));
    }
    fn write_u64(&mut self, i: u64) {
        self.add(i);
    }
    fn write_usize(&mut self, i: usize) {
        self.add(i as u64);
    }
    fn finish(&self) -> u64 {
        self.0
    }
}

/// `Some(v)` when the dim is the constant `v`.
pub(crate) fn is_const_dim(d: &Dim, v: i64) -> bool {
    d.as_const() == Some(v)
}
