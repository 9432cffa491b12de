//! The sequence of steps the memory planner plans over: each step reads and writes buffers.
//!
//! Two producers: [`Schedule::from_ops`] makes one step per op of the (recompute-rewritten)
//! training graph, in the graph's topological order (what `kiln plan` scales to large models), and
//! `plan::arena::program_schedule` makes one step per kernel of a fused `Program` (what the CPU
//! runtime allocates): a kernel reads and writes only the buffers it materialises, so values
//! internal to a kernel simply never appear. Whatever produces the steps also says which writes
//! may reuse a dying read in place (elementwise, same size) and which writes are views of a read
//! (a reshape: same bytes, no copy).
//!
//! Buffers are keyed by `BufKey`: a graph value, an extra buffer that is no graph value (the
//! gathered copy a collective produces in a sharded step), or a buffer of a fused program.

use std::collections::HashMap;

use crate::ir::{facts, Graph, Op, ValueId};

/// A buffer the arena must hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BufKey {
    Value(ValueId),
    /// An extra buffer numbered by whoever builds the schedule (collective outputs).
    Extra(u32),
    /// Buffer `b<n>` of a fused `Program` (see `plan::arena`).
    Buffer(u32),
}

impl std::fmt::Display for BufKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BufKey::Value(v) => write!(f, "{v}"),
            BufKey::Extra(i) => write!(f, "extra{i}"),
            BufKey::Buffer(i) => write!(f, "b{i}"),
        }
    }
}

/// One unit of execution.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Step {
    pub reads: Vec<BufKey>,
    pub writes: Vec<BufKey>,
    /// `(write, read)`: the write may take the read's buffer if the read dies here.
    pub in_place: Vec<(BufKey, BufKey)>,
    /// `(write, read)`: the write *is* the read's buffer (a view; legal whether the read dies or not).
    pub views: Vec<(BufKey, BufKey)>,
    /// The graph node this step computes, when it is one op.
    pub node: Option<ValueId>,
}

/// Steps in execution order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Schedule {
    pub steps: Vec<Step>,
}

impl Schedule {
    /// One step per non-source op, in `order` (which must be topological). Sources (inputs,
    /// params) get no step: they are in the arena before the first step. Constants, iota and noise
    /// are computed by a step like any other op.
    pub fn from_ops(g: &Graph, order: &[ValueId]) -> Schedule {
        let mut steps = Vec::with_capacity(order.len());
        for v in order {
            let n = g.node(*v);
            if matches!(n.op(), Op::Input { .. } | Op::Param { .. }) {
                continue;
            }
            let mut reads: Vec<BufKey> = Vec::new();
            for u in n.inputs() {
                let k = BufKey::Value(*u);
                if !reads.contains(&k) {
                    reads.push(k);
                }
            }
            let me = BufKey::Value(*v);
            let mut step = Step {
                reads,
                writes: vec![me],
                node: Some(*v),
                ..Default::default()
            };
            match n.op() {
                // A row-major reshape is the same bytes.
                Op::Reshape { .. } => step.views.push((me, BufKey::Value(n.inputs()[0]))),
                op if facts(op).is_elementwise => {
                    let my_bytes = g.ty(*v).dtype.size_bytes();
                    for u in n.inputs() {
                        let t = g.ty(*u);
                        if t.shape == n.ty().shape
                            && t.dtype.size_bytes() == my_bytes
                            && !step.in_place.iter().any(|(_, r)| *r == BufKey::Value(*u))
                        {
                            step.in_place.push((me, BufKey::Value(*u)));
                        }
                    }
                }
                _ => {}
            }
            steps.push(step);
        }
        Schedule { steps }
    }

    /// Index of the first step that writes each buffer.
    pub fn first_writers(&self) -> HashMap<BufKey, usize> {
        let mut w = HashMap::new();
        for (i, s) in self.steps.iter().enumerate() {
            for b in &s.writes {
                w.entry(*b).or_insert(i);
            }
        }
        w
    }

    /// Index of the (last) step that writes each buffer.
    pub fn writers(&self) -> HashMap<BufKey, usize> {
        let mut w = HashMap::new();
        for (i, s) in self.steps.iter().enumerate() {
            for b in &s.writes {
                w.insert(*b, i);
            }
        }
        w
    }
}
