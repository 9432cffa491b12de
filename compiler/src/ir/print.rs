//! The deterministic text form of a graph, for `kiln compile --emit ir`, snapshots and debugging.
//!
//! Values are numbered `%0, %1, ..` in print order: inputs, then params (each in insertion order),
//! then everything else in topological order with ties broken by insertion order. One op per line:
//!
//! `%12:blocks.3.attn.q = matmul[transpose_a=false, transpose_b=false] %10, %11 : f32[batch, seq, 768]`
//!
//! attributes sorted by key, the DSL name path after the number (omitted for inputs and params,
//! whose name is printed as a quoted operand), the result type last. Outputs and state updates
//! follow the ops. Nothing here iterates a hash map.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::graph::{Graph, ValueId};
use super::ops::Op;
use super::verify::VerifyError;

/// Print order; a cyclic graph (which the verifier rejects) falls back to insertion order.
pub fn print_order(g: &Graph) -> Vec<ValueId> {
    let topo = g.topo_order().unwrap_or_else(|_| g.values());
    let mut order = g.inputs();
    order.extend(g.params());
    order.extend(
        topo.into_iter()
            .filter(|v| !matches!(g.node(*v).op(), Op::Input { .. } | Op::Param { .. })),
    );
    order
}

/// The printed number (`%n`) of every value.
pub fn value_numbers(g: &Graph) -> BTreeMap<ValueId, usize> {
    print_order(g)
        .into_iter()
        .enumerate()
        .map(|(i, v)| (v, i))
        .collect()
}

pub fn print_graph(g: &Graph) -> String {
    print_with_errors(g, &[])
}

/// Prints the graph with each verifier error under the line of its value (graph-level errors at
/// the end), like Cranelift's `print_errors`.
pub fn print_with_errors(g: &Graph, errors: &[VerifyError]) -> String {
    let nums = value_numbers(g);
    let name_of = |v: &ValueId| match nums.get(v) {
        Some(n) => format!("%{n}"),
        None => format!("%missing({v})"),
    };
    let mut s = String::from("graph {\n");
    for v in print_order(g) {
        let n = g.node(v);
        let _ = write!(s, "  %{}", nums[&v]);
        let source = n.op().source_name();
        if let Some(path) = n.name() {
            if source != Some(path) {
                let _ = write!(s, ":{path}");
            }
        }
        let _ = write!(s, " = {}", n.op());
        if let Some(src) = source {
            let _ = write!(s, " {src:?}");
        }
        let operands: Vec<String> = n.inputs().iter().map(name_of).collect();
        if !operands.is_empty() {
            let _ = write!(s, " {}", operands.join(", "));
        }
        let _ = writeln!(s, " : {}", n.ty());
        for e in errors.iter().filter(|e| e.value == Some(v)) {
            let _ = writeln!(s, "  ; error: {}", e.message);
        }
    }
    for o in g.outputs() {
        let _ = writeln!(s, "  output {} = {}", o.name, name_of(&o.value));
    }
    for u in g.updates() {
        let _ = writeln!(s, "  update {} <- {}", u.target, name_of(&u.value));
    }
    for e in errors
        .iter()
        .filter(|e| e.value.is_none_or(|v| !g.contains(v)))
    {
        let _ = writeln!(s, "  ; error: {e}");
    }
    s.push_str("}\n");
    s
}

impl std::fmt::Display for Graph {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&print_graph(self))
    }
}
