//! `kiln explain`: why a value is kept, recomputed or transient, and how a parameter is sharded and
//! which collectives touch it, in the spec's own names.
//!
//! The query is a parameter name (`h.0.attn.q.weight`), a name path (`h.0.attn.sdpa.softmax`,
//! every op of that scope is explained), or a printed value number of the planned graph (`%166`).

use std::collections::BTreeSet;
use std::fmt::Write;

use super::analysis::{gib, Analysis};
use super::print::category;
use super::recompute::Decision;
use super::roles::Phase;
use super::schedule::BufKey;
use super::shard::Layout;
use crate::ir::print::value_numbers;
use crate::ir::{Op, ValueId};

/// The explanation, or `None` when nothing matches the query.
pub fn explain(a: &Analysis, query: &str) -> Option<String> {
    let g = &a.rewritten.graph;
    let nums = value_numbers(g);
    let q = query.trim();
    if let Some(p) = g.find_param(q) {
        return Some(explain_param(a, p));
    }
    let mut hits: Vec<ValueId> = Vec::new();
    if let Some(n) = q.strip_prefix('%').and_then(|x| x.parse::<usize>().ok()) {
        hits.extend(nums.iter().filter(|(_, k)| **k == n).map(|(v, _)| *v));
    } else {
        let mut order: Vec<ValueId> = a.rewritten.order.clone();
        order.sort_by_key(|v| nums.get(v).copied().unwrap_or(usize::MAX));
        hits.extend(
            order
                .into_iter()
                .filter(|v| g.node(*v).name() == Some(q) && a.roles2.is_forward(*v)),
        );
        if hits.is_empty() {
            hits.extend(
                a.rewritten
                    .order
                    .iter()
                    .copied()
                    .filter(|v| g.node(*v).name() == Some(q)),
            );
        }
    }
    if hits.is_empty() {
        return None;
    }
    let mut s = String::new();
    for v in hits {
        s.push_str(&explain_value(a, v));
    }
    Some(s)
}

/// Names that `explain` accepts and that resemble `query` (for "did you mean").
pub fn candidates(a: &Analysis) -> Vec<String> {
    let g = &a.rewritten.graph;
    let mut out: BTreeSet<String> = BTreeSet::new();
    for v in g.values() {
        let n = g.node(v);
        match n.op() {
            Op::Param { name, .. } => {
                out.insert(name.clone());
            }
            _ => {
                if let Some(p) = n.name() {
                    out.insert(p.to_string());
                }
            }
        }
    }
    out.into_iter().collect()
}

fn num(a: &Analysis, v: ValueId) -> String {
    let nums = value_numbers(&a.rewritten.graph);
    let g = &a.rewritten.graph;
    let n = g.node(v);
    let k = nums.get(&v).map(|x| format!("%{x}")).unwrap_or_default();
    match (n.op(), n.name()) {
        (Op::Param { name, .. } | Op::Input { name, .. }, _) => format!("{k} \"{name}\""),
        (_, Some(p)) => format!("{k}:{p}"),
        _ => k,
    }
}

fn explain_value(a: &Analysis, v: ValueId) -> String {
    let g = &a.rewritten.graph;
    let sh = &a.sharding;
    let n = g.node(v);
    let mut s = String::new();
    let ph = a.roles2.phase(v);
    let _ = writeln!(
        s,
        "{} = {} : {} ({}, {})",
        num(a, v),
        n.op(),
        n.ty(),
        ph.name(),
        a.roles2.kind(v).name()
    );
    let local = sh.local_shape.get(&v).cloned().unwrap_or_default();
    let bytes = a
        .memory_input
        .sizes
        .get(&BufKey::Value(v))
        .copied()
        .unwrap_or(0);
    if sh.degree > 1 {
        let _ = writeln!(
            s,
            "  layout over the {}-way tensor group: {} (each rank holds {:?}, {bytes} bytes)",
            sh.degree,
            sh.layout_of(v),
            local
        );
    }
    if let Some(orig) = a.rewritten.original.get(&v) {
        let _ = writeln!(s, "  recompute of {} in the backward pass", num(a, *orig));
    }
    if ph == Phase::Forward && matches!(n.op(), Op::Constant { .. } | Op::DimConst { .. }) {
        let _ = writeln!(
            s,
            "  a scalar constant: every op that needs it (forward, backward, recompute) reads it"
        );
    } else if ph == Phase::Forward {
        let r = &a.recompute;
        let why = r.why.get(&v).cloned().unwrap_or_default();
        // Backward readers in the planned graph (recompute ops included).
        let bwd: Vec<String> = a
            .roles2
            .users(v)
            .iter()
            .filter(|u| !a.roles2.is_forward(**u))
            .map(|u| num(a, *u))
            .collect();
        match r.decision(v) {
            Decision::Kept => {
                let choice =
                    if why.contains("can recompute") || why.contains("may keep or recompute") {
                        "; keeping it costs fewer bytes than keeping what recomputing it needs"
                    } else {
                        ""
                    };
                let _ = writeln!(
                    s,
                    "  kept for backward ({} bytes per device): {why}{choice}",
                    r.kept[&v]
                );
                if !bwd.is_empty() {
                    let _ = writeln!(s, "  read in the backward pass by {}", bwd.join(", "));
                }
            }
            Decision::Recomputed => {
                let c = a.rewritten.clones[&v];
                let _ = writeln!(s, "  recomputed in backward as {}: {why}", num(a, c));
            }
            Decision::Transient if bwd.is_empty() => {
                let _ = writeln!(s, "  transient: no backward op reads it, so it is freed after its last forward use");
            }
            Decision::Transient => {
                let _ = writeln!(s, "  transient: {why}");
            }
        }
    }
    if let Some(slot) = a.memory.arena.slot(v) {
        let l = a.memory.lifetimes[&BufKey::Value(v)];
        let _ = writeln!(
            s,
            "  arena [{}, {}) live from time {} to {} of {} ({})",
            slot.offset,
            slot.offset + slot.size,
            l.first,
            l.last,
            a.memory.steps + 1,
            category(a, BufKey::Value(v)).name()
        );
    }
    for c in sh
        .collectives
        .iter()
        .filter(|c| c.value == v || c.readers.contains(&v))
    {
        let what = if c.value == v { "its" } else { "an operand's" };
        let _ = writeln!(
            s,
            "  {} {} {} -> {} ({} bytes, {} sent per rank) [{}]",
            what,
            c.kind.name(),
            c.from,
            c.to,
            c.full_bytes,
            c.wire_bytes,
            num(a, c.value)
        );
    }
    s
}

fn explain_param(a: &Analysis, p: ValueId) -> String {
    let g = &a.rewritten.graph;
    let sh = &a.sharding;
    let plan = &a.setup.plan;
    let n = g.node(p);
    let Op::Param {
        name, trainable, ..
    } = n.op()
    else {
        return String::new();
    };
    let mut s = String::new();
    let count: u64 = g
        .shape(p)
        .iter()
        .map(|d| d.as_const().unwrap_or(0) as u64)
        .product();
    let layer = a.roles2.layer_of(p).map(|i| a.roles2.layers[i].clone());
    let _ = writeln!(
        s,
        "param {name}: {} ({count} elements{}{})",
        n.ty(),
        layer.map(|l| format!(", layer {l}")).unwrap_or_default(),
        if *trainable { "" } else { ", frozen" }
    );
    let users: Vec<ValueId> = a.roles2.users(p).to_vec();
    let fwd_users: Vec<&ValueId> = users.iter().filter(|u| a.roles2.is_forward(**u)).collect();
    let role = match sh.layout_of(p) {
        Layout::Split(ax) => {
            let rank = g.shape(p).len();
            let mm = fwd_users
                .iter()
                .any(|u| matches!(g.node(**u).op(), Op::MatMul { .. }));
            let gather = fwd_users
                .iter()
                .any(|u| matches!(g.node(**u).op(), Op::Gather));
            if gather && ax == 0 {
                "vocabulary-parallel: each rank holds a block of rows (token ids); lookups are partial sums all-reduced across the group".to_string()
            } else if mm && rank == 2 && ax == 1 {
                "column-parallel: each rank holds a block of output features and computes its slice of the output".to_string()
            } else if mm && rank == 2 && ax == 0 {
                "row-parallel: each rank holds a block of input features; the partial outputs are summed across the group".to_string()
            } else {
                format!("split along axis {ax}, following the layer it belongs to")
            }
        }
        _ => "replicated: every rank holds all of it".to_string(),
    };
    if sh.degree > 1 {
        let _ = writeln!(
            s,
            "  tensor parallel ({}-way): {} — {role}; each rank holds {:?}",
            sh.degree,
            sh.layout_of(p),
            sh.local_shape[&p]
        );
    } else {
        let _ = writeln!(s, "  tensor parallel: none (one rank holds all of it)");
    }
    if plan.data > 1 {
        let how = match plan.zero {
            0 => "gradients all-reduced across the data group; parameters and optimizer state replicated",
            1 => "ZeRO-1: optimizer state sharded across the data group; gradients reduce-scattered, updated parameters all-gathered",
            2 => "ZeRO-2: gradients and optimizer state sharded across the data group",
            _ => "ZeRO-3: parameters, gradients and optimizer state sharded across the data group; parameters all-gathered before use in forward and backward",
        };
        let _ = writeln!(s, "  data parallel ({}-way): {how}", plan.data);
    }
    if plan.pipeline > 1 {
        let nl = a.roles2.layers.len().max(1) as u64;
        let stage = match a.roles2.layer_of(p) {
            Some(i) => format!(
                "stage {} of {} (built layer {i} of {nl}, layers split evenly)",
                (i as u64 * plan.pipeline / nl).min(plan.pipeline - 1),
                plan.pipeline
            ),
            None => "held by the first or last stage (outside the layers)".into(),
        };
        let _ = writeln!(s, "  pipeline: {stage}");
    }
    let _ = writeln!(
        s,
        "  used by: {}",
        users
            .iter()
            .map(|u| num(a, *u))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if let Some(gv) = a.roles2.grads.get(name) {
        let _ = writeln!(s, "  gradient: {}", num(a, *gv));
    }
    // Collectives on the parameter, its users' outputs, operands of its users, and its gradient.
    let mut touched: BTreeSet<usize> = BTreeSet::new();
    let mut related: Vec<ValueId> = vec![p];
    related.extend(users.iter().copied());
    if let Some(gv) = a.roles2.grads.get(name) {
        related.push(*gv);
        related.extend(a.roles2.users(*gv).iter().copied());
    }
    for (i, c) in sh.collectives.iter().enumerate() {
        if related.contains(&c.value) || c.readers.iter().any(|r| users.contains(r)) {
            touched.insert(i);
        }
    }
    if touched.is_empty() {
        let _ = writeln!(s, "  collectives in the tensor group: none touch it");
    } else {
        let _ = writeln!(s, "  collectives in the tensor group:");
        for i in touched {
            let c = &sh.collectives[i];
            let readers: Vec<String> = c.readers.iter().map(|r| num(a, *r)).collect();
            let _ = writeln!(
                s,
                "    {} of {} ({} -> {}) for {}: {} bytes, {} sent per rank, {}",
                c.kind.name(),
                num(a, c.value),
                c.from,
                c.to,
                readers.join(", "),
                c.full_bytes,
                c.wire_bytes,
                c.phase.name()
            );
        }
    }
    if *trainable && plan.data > 1 {
        let local = sh.local_numel(p);
        let gb = local
            * match a.setup.precision {
                super::analysis::Precision::Mixed(d) => d.size_bytes() as u64,
                super::analysis::Precision::Declared => n.dtype().size_bytes() as u64,
            };
        let _ = writeln!(
            s,
            "  data group: its gradient ({}) is {} once per step",
            gib(gb),
            if plan.zero >= 1 {
                "reduce-scattered"
            } else {
                "all-reduced"
            }
        );
    }
    s
}
