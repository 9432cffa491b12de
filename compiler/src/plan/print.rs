//! The plan in text: the rewritten step graph followed by `recompute`, `memory` and `sharding`
//! sections (`print_plan`), and one rank's program with its collectives (`print_rank`).
//!
//! Values are named by their printed number in the rewritten graph (`%12`), so the sections read
//! against the graph above them. Everything is sorted; nothing iterates a hash map.

use std::collections::BTreeMap;
use std::fmt::Write;

use super::analysis::{gib, policy_name, Analysis};
use super::memory::Category;
use super::roles::Phase;
use super::schedule::BufKey;
use super::stages;
use crate::ir::print::{print_graph, value_numbers};
use crate::ir::{Op, ValueId};

fn value_name(nums: &BTreeMap<ValueId, usize>, a: &Analysis, v: ValueId) -> String {
    let g = &a.rewritten.graph;
    let n = g.node(v);
    let num = nums
        .get(&v)
        .map(|x| format!("%{x}"))
        .unwrap_or_else(|| format!("{v}"));
    match (n.op(), n.name()) {
        (Op::Param { name, .. } | Op::Input { name, .. }, _) => format!("{num} \"{name}\""),
        (_, Some(p)) => format!("{num}:{p}"),
        (_, None) => num,
    }
}

fn buf_name(nums: &BTreeMap<ValueId, usize>, a: &Analysis, k: BufKey) -> String {
    match k {
        BufKey::Value(v) => value_name(nums, a, v),
        BufKey::Extra(i) => {
            let c = &a.sharding.collectives[i as usize];
            format!("{} of {}", c.kind.name(), value_name(nums, a, c.value))
        }
        // The analysed graph's schedule has no program buffers.
        BufKey::Buffer(b) => format!("b{b}"),
    }
}

/// The category of a buffer, as the memory report counts it.
pub fn category(a: &Analysis, k: BufKey) -> Category {
    match k {
        BufKey::Extra(_) | BufKey::Buffer(_) => Category::Workspace,
        BufKey::Value(v) => match a.roles2.phase(v) {
            Phase::Param => Category::Params,
            Phase::OptState => Category::Optimizer,
            _ if a.roles2.grads.values().any(|g| *g == v) => Category::Grads,
            _ if a.recompute.kept.contains_key(&v) => Category::Activations,
            _ => Category::Workspace,
        },
    }
}

/// The rewritten graph and the plan's sections.
pub fn print_plan(a: &Analysis) -> String {
    let g = &a.rewritten.graph;
    let nums = value_numbers(g);
    let mut s = print_graph(g);
    let r = &a.recompute;
    let _ = writeln!(
        s,
        "recompute policy={} fused={} kept_bytes={} recompute_flops={} {{",
        policy_name(&r.policy),
        r.fused,
        r.kept_bytes,
        r.recompute_flops
    );
    for (v, b) in &r.kept {
        let _ = writeln!(
            s,
            "  keep {} : {} ({b} bytes)",
            value_name(&nums, a, *v),
            g.ty(*v)
        );
    }
    for (v, f) in &r.recomputed {
        let c = a.rewritten.clones[v];
        let _ = writeln!(
            s,
            "  recompute {} as %{} ({f} flops)",
            value_name(&nums, a, *v),
            nums[&c]
        );
    }
    s.push_str("}\n");
    let m = &a.memory;
    let _ = writeln!(
        s,
        "memory arena={} live_peak={} alignment={} steps={} {{",
        m.arena.total, m.live_peak, m.arena.alignment, m.steps
    );
    let mut rows: Vec<(u64, String)> = Vec::new();
    for (k, slot) in &m.arena.slots {
        let l = m.lifetimes[k];
        let order = match k {
            BufKey::Value(v) => nums.get(v).copied().unwrap_or(usize::MAX) as u64,
            BufKey::Extra(i) => (1u64 << 40) + *i as u64,
            BufKey::Buffer(i) => (1u64 << 41) + *i as u64,
        };
        rows.push((
            order,
            format!(
                "  {} [{}, {}) live {}..={} {}",
                buf_name(&nums, a, *k),
                slot.offset,
                slot.offset + slot.size,
                l.first,
                l.last,
                category(a, *k).name()
            ),
        ));
    }
    rows.sort();
    for (_, row) in rows {
        s.push_str(&row);
        s.push('\n');
    }
    for u in &m.arena.updates {
        let _ = writeln!(
            s,
            "  update {} <- {}{}",
            u.target,
            buf_name(&nums, a, u.value),
            if u.in_place { " in place" } else { " by copy" }
        );
    }
    s.push_str("}\n");
    let sh = &a.sharding;
    let _ = writeln!(
        s,
        "sharding tensor={} sequence={} collectives={} {{",
        sh.degree,
        sh.sequence,
        sh.collectives.len()
    );
    if sh.degree > 1 {
        for v in g.params() {
            let _ = writeln!(
                s,
                "  {} {} local {:?}",
                value_name(&nums, a, v),
                sh.layout_of(v),
                sh.local_shape[&v]
            );
        }
        let mut cs: Vec<(usize, String)> = sh
            .collectives
            .iter()
            .map(|c| {
                let readers: Vec<String> =
                    c.readers.iter().map(|r| format!("%{}", nums[r])).collect();
                (
                    nums[&c.value],
                    format!(
                        "  {} {} {} -> {} for {}: {} bytes, {} sent per rank ({})",
                        c.kind.name(),
                        value_name(&nums, a, c.value),
                        c.from,
                        c.to,
                        readers.join(", "),
                        c.full_bytes,
                        c.wire_bytes,
                        c.phase.name()
                    ),
                )
            })
            .collect();
        cs.sort();
        for (_, row) in cs {
            s.push_str(&row);
            s.push('\n');
        }
    }
    s.push_str("}\n");
    s
}

/// One tensor-parallel rank's program for pipeline stage `stage`: its ops with per-rank types, the
/// collectives before the ops that need them, and the pipeline sends and receives at the stage's
/// edges. Built layers are assigned to stages in order, in proportion.
pub fn print_rank(a: &Analysis, stage: u64) -> String {
    let g = &a.rewritten.graph;
    let nums = value_numbers(g);
    let sh = &a.sharding;
    let p = a.setup.plan.pipeline.max(1);
    let nl = a.roles2.layers.len().max(1) as u64;
    let stage_of_layer = |i: usize| (i as u64 * p / nl).min(p - 1);
    let stage_of = |v: ValueId| -> u64 {
        match a.roles2.layer_of(v) {
            Some(i) => stage_of_layer(i),
            None if a.pre.contains(&v) => 0,
            None => p - 1,
        }
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "rank stage={stage}/{p} tensor={} sequence={} data={} zero={} {{",
        sh.degree, sh.sequence, a.setup.plan.data, a.setup.plan.zero
    );
    let m = a.setup.micro_batches();
    if p > 1 {
        let order = stages::one_f_one_b(p, stage, m);
        let shown: Vec<String> = order.iter().take(24).map(|x| x.to_string()).collect();
        let _ = writeln!(
            s,
            "  ; 1F1B over {m} micro-batches: {}{} (at most {} in flight; bubble {:.1}%)",
            shown.join(" "),
            if order.len() > 24 { " ..." } else { "" },
            stages::in_flight(&order),
            100.0 * stages::bubble(p, m)
        );
    }
    let _ = writeln!(
        s,
        "  ; one micro-batch, forward then backward, then the optimizer once per step:"
    );
    let mut done = std::collections::HashSet::new();
    for v in &a.rewritten.order {
        let n = g.node(*v);
        if matches!(n.op(), Op::Param { .. } | Op::Input { .. }) || stage_of(*v) != stage {
            continue;
        }
        for (i, u) in n.inputs().iter().enumerate() {
            if p > 1
                && stage_of(*u) != stage
                && !matches!(g.node(*u).op(), Op::Param { .. } | Op::Input { .. })
            {
                let _ = writeln!(
                    s,
                    "  recv {} from stage {}",
                    value_name(&nums, a, *u),
                    stage_of(*u)
                );
            }
            if let Some(c) = sh.edges.get(&(*v, i)) {
                if done.insert(*c) {
                    let col = &sh.collectives[*c];
                    let _ = writeln!(
                        s,
                        "  {} {} {} -> {} ({} bytes sent)",
                        col.kind.name(),
                        value_name(&nums, a, col.value),
                        col.from,
                        col.to,
                        col.wire_bytes
                    );
                }
            }
        }
        let ins: Vec<String> = n.inputs().iter().map(|u| format!("%{}", nums[u])).collect();
        let local: Vec<String> = sh.local_shape[v].iter().map(|d| d.to_string()).collect();
        let _ = writeln!(
            s,
            "  {} = {} {} : {}[{}] {}",
            value_name(&nums, a, *v),
            n.op(),
            ins.join(", "),
            n.dtype(),
            local.join(", "),
            sh.layout_of(*v)
        );
        if p > 1 && a.roles2.users(*v).iter().any(|u| stage_of(*u) != stage) {
            let to: Vec<u64> = a
                .roles2
                .users(*v)
                .iter()
                .map(|u| stage_of(*u))
                .filter(|x| *x != stage)
                .collect();
            let _ = writeln!(
                s,
                "  send {} to stage {} ({} bytes)",
                value_name(&nums, a, *v),
                to[0],
                sh.local_numel(*v) * g.dtype(*v).size_bytes() as u64
            );
        }
    }
    let d = a.setup.plan.data;
    let data = a.report.comm_bytes_by_group.data;
    if d > 1 {
        let what = match a.setup.plan.zero {
            0 => "all-reduce of the gradients",
            1 | 2 => "reduce-scatter of the gradients, all-gather of the updated parameters",
            _ => "reduce-scatter of the gradients; all-gather of the parameters before forward and backward",
        };
        let _ = writeln!(
            s,
            "  ; data group ({d}-way), once per step: {what} ({data} bytes sent per rank)"
        );
    }
    let _ = writeln!(s, "}}");
    let _ = writeln!(
        s,
        "; arena {} for this rank's micro-batch",
        gib(a.memory.arena.total)
    );
    s
}
