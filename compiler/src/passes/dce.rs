//! Dead-code elimination: removes every node that no graph output and no state update depends on.
//!
//! Kept even when unused: `Input` and `Param` nodes. They are the step's interface (what the
//! runtime feeds, checkpoints and updates by name), and that contract must not depend on how well
//! the graph optimized; an unused one costs nothing at run time.

use crate::ir::{Graph, IrError, Op, ValueId};

use super::{PassResult, PassStats};

pub const NAME: &str = "dce";

pub fn run(g: &mut Graph) -> Result<PassResult, IrError> {
    let mut stats = PassStats::new();
    // Index by the raw id: dense and cheap (ids are slot numbers).
    let cap = g
        .values()
        .iter()
        .map(|v| v.index() as usize + 1)
        .max()
        .unwrap_or(0);
    let mut live = vec![false; cap];
    let mut stack: Vec<ValueId> = g
        .outputs()
        .iter()
        .map(|o| o.value)
        .chain(g.updates().iter().map(|u| u.value))
        .collect();
    while let Some(v) = stack.pop() {
        let i = v.index() as usize;
        if i >= cap || live[i] || !g.contains(v) {
            continue;
        }
        live[i] = true;
        stack.extend(g.node(v).inputs().iter().copied());
    }
    for v in g.values() {
        if live[v.index() as usize] || matches!(g.node(v).op(), Op::Input { .. } | Op::Param { .. })
        {
            continue;
        }
        g.remove(v);
        stats.bump("removed");
    }
    Ok(PassResult::from_stats(stats))
}
