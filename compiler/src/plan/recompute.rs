//! The recompute planner: which forward values the backward pass reads from memory (kept) and which
//! it recomputes, and the rewrite that puts the recompute ops into the backward schedule.
//!
//! # The problem
//!
//! Candidates are the forward values (every op but inputs, params and scalar constants). A
//! candidate is *needed* when a backward or optimizer op reads it. A plan picks a set `R` of
//! candidates to recompute; everything needed and not in `R`, and every input of a value in `R`
//! that is not itself in `R`, is *kept* (stays in memory from the forward to the backward pass).
//! Kept bytes are the "activations" of the memory report; the recompute cost is the FLOPs of `R`.
//! Two per-candidate flags, set by the policy, constrain `R`: `can_recompute` and `can_save`.
//!
//! # The policies
//!
//! - `none`: nothing may be recomputed.
//! - `full`: every value inside a layer (a `repeat` instance) must be recomputed, except the
//!   layer's boundary values (those read by another layer): each layer's input is what is kept.
//! - `selective` (Korthikanti et al. 2022): the attention core (`roles::attention_core`: scores,
//!   mask, softmax, dropout, probabilities × values) must be recomputed; it is recomputed from the
//!   queries, keys and values, which are kept.
//! - `keep(kinds)` (LLaMA's): inside layers, values of the listed op kinds may be kept and
//!   everything else must be recomputed (from the kept values and the layer's input).
//! - `budget(bytes)`: inside layers anything but the boundaries may be recomputed or kept; choose
//!   to keep at most `bytes` while recomputing the fewest FLOPs.
//!
//! With `fused` accounting (the default for `kiln plan`), values of cheap ops (elementwise, layout,
//! reductions) may also be recomputed when no backward matmul/indexing op reads them: a fused
//! backward kernel recomputes them from what it loads anyway, as Megatron's fused kernels and
//! PyTorch's min-cut partitioner do. Dropout noise is then not regenerated (its 1-byte mask is kept,
//! as frameworks do), so that counts match Korthikanti et al.'s formulas.
//!
//! # The algorithm
//!
//! For every policy but `budget`, the kept set is a minimum cut: minimise `W·bytes(kept) +
//! flops(R)` with `W = 2^60` (bytes first, FLOPs break ties) subject to the flags. As a cut: node
//! `v` on the sink side means `v ∈ R`; `s → v` costs `flops(v)` (∞ if it cannot be recomputed);
//! `v → v'` costs `W·bytes(v)` (∞ if it cannot be kept); `v' → t` is ∞ when `v` is needed and
//! `v' → u` is ∞ for every candidate user `u`, so `v` is paid for exactly when it is kept.
//!
//! `budget(B)` minimises `flops(R)` subject to `bytes(kept) ≤ B`:
//! - with at most `EXACT_LIMIT` recomputable candidates, by branch and bound over the candidates in
//!   reverse topological order (when `v` is decided all its users are, so whether `v` must be kept
//!   is known at once; branches over the budget or not better than the incumbent are cut) — exact;
//! - otherwise by Lagrangian relaxation: bisection on `λ` of the cut minimising `flops(R) +
//!   λ·bytes(kept)`, taking the cheapest cut that fits, then a greedy pass that stops recomputing
//!   the costliest values while the budget allows. Its answer is optimal among the points of the
//!   lower convex hull of the (bytes, FLOPs) trade-off, which is where the published policies lie.
//!
//! # The rewrite
//!
//! `apply` clones every value of `R` (named `recompute.<name>`, same op, operands mapped to the
//! clones) and makes every backward reader read the clone; forward readers and the step's outputs
//! keep the original. The schedule it returns places each clone just before the first backward op
//! that needs it, so a layer's recompute runs when its backward starts. Clones compute the same op
//! on the same values (noise included: `RandUniform` is a function of seed, step, stream and
//! index), so losses and gradients are bitwise those of `none`.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::maxflow::{FlowNet, INF};
use super::roles::{attention_core, OpKind, Roles};
use crate::ir::{facts, Graph, Op, ValueId};
use crate::sema::plancheck::RecomputePolicy;

/// Up to this many recomputable candidates, `budget` is solved exactly.
pub const EXACT_LIMIT: usize = 24;

/// One candidate of the abstract problem. `inputs` index earlier candidates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    pub inputs: Vec<usize>,
    pub bytes: u64,
    pub flops: u64,
    pub needed: bool,
    pub can_recompute: bool,
    pub can_save: bool,
}

/// The keep/recompute problem over candidates in topological order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Problem {
    pub nodes: Vec<Candidate>,
}

/// A feasible answer: which candidates are recomputed, and its cost.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Choice {
    pub recompute: Vec<bool>,
    pub kept: Vec<bool>,
    pub kept_bytes: u64,
    pub recompute_flops: u64,
}

impl Problem {
    fn users(&self) -> Vec<Vec<usize>> {
        let mut us = vec![Vec::new(); self.nodes.len()];
        for (i, n) in self.nodes.iter().enumerate() {
            for &j in &n.inputs {
                if !us[j].contains(&i) {
                    us[j].push(i);
                }
            }
        }
        us
    }

    /// The cost of recomputing `recompute` (useless recomputation dropped); `None` when it breaks a
    /// flag.
    pub fn evaluate(&self, recompute: &[bool]) -> Option<Choice> {
        let n = self.nodes.len();
        let users = self.users();
        let mut r = vec![false; n];
        for v in (0..n).rev() {
            r[v] = recompute[v] && (self.nodes[v].needed || users[v].iter().any(|u| r[*u]));
            if r[v] && !self.nodes[v].can_recompute {
                return None;
            }
        }
        let mut kept = vec![false; n];
        let (mut bytes, mut flops) = (0u64, 0u64);
        for v in 0..n {
            if r[v] {
                flops += self.nodes[v].flops;
            } else if self.nodes[v].needed || users[v].iter().any(|u| r[*u]) {
                if !self.nodes[v].can_save {
                    return None;
                }
                kept[v] = true;
                bytes += self.nodes[v].bytes;
            }
        }
        Some(Choice {
            recompute: r,
            kept,
            kept_bytes: bytes,
            recompute_flops: flops,
        })
    }

    /// The minimum cut of `save_weight·bytes(kept) + flop_weight·flops(R)` (module doc).
    pub fn min_cut(&self, save_weight: u128, flop_weight: u128) -> Option<Choice> {
        let n = self.nodes.len();
        let (s, t) = (2 * n, 2 * n + 1);
        let mut net = FlowNet::new(2 * n + 2);
        for (v, c) in self.nodes.iter().enumerate() {
            net.add_edge(
                s,
                v,
                if c.can_recompute {
                    (c.flops as u128).saturating_mul(flop_weight).min(INF)
                } else {
                    INF
                },
            );
            net.add_edge(
                v,
                n + v,
                if c.can_save {
                    (c.bytes as u128).saturating_mul(save_weight).min(INF)
                } else {
                    INF
                },
            );
            if c.needed {
                net.add_edge(n + v, t, INF);
            }
            for &i in &c.inputs {
                net.add_edge(n + i, v, INF);
            }
        }
        let (cut, side) = net.min_cut(s, t);
        if cut >= INF {
            return None;
        }
        let r: Vec<bool> = (0..n).map(|v| !side[v]).collect();
        self.evaluate(&r)
    }

    /// Fewest kept bytes, then fewest recompute FLOPs.
    pub fn min_bytes(&self) -> Option<Choice> {
        self.min_cut(1u128 << 60, 1)
    }

    /// Fewest recompute FLOPs with at most `budget` kept bytes (module doc). `None` when even the
    /// fewest kept bytes exceed the budget.
    pub fn budget(&self, budget: u64) -> Option<Choice> {
        let k = self.nodes.iter().filter(|c| c.can_recompute).count();
        let lag = self.lagrangian(budget);
        if k <= EXACT_LIMIT {
            return self.branch_and_bound(budget, lag);
        }
        lag.map(|c| self.greedy_repair(c, budget))
    }

    fn lagrangian(&self, budget: u64) -> Option<Choice> {
        const FW: u128 = 1 << 20;
        let free = self.min_cut(0, 1)?;
        if free.kept_bytes <= budget {
            return Some(free);
        }
        let tight = self.min_bytes()?;
        if tight.kept_bytes > budget {
            return None;
        }
        let mut best = tight;
        let (mut lo, mut hi): (u128, u128) = (0, 1u128 << 80);
        for _ in 0..96 {
            if hi - lo <= 1 {
                break;
            }
            let mid = lo + (hi - lo) / 2;
            match self.min_cut(mid, FW) {
                Some(c) if c.kept_bytes <= budget => {
                    if c.recompute_flops < best.recompute_flops {
                        best = c;
                    }
                    hi = mid;
                }
                _ => lo = mid,
            }
        }
        Some(best)
    }

    /// Stops recomputing the costliest values while the budget allows.
    fn greedy_repair(&self, mut cur: Choice, budget: u64) -> Choice {
        for _ in 0..3 {
            let mut order: Vec<usize> = (0..self.nodes.len())
                .filter(|v| cur.recompute[*v])
                .collect();
            order.sort_by(|a, b| {
                self.nodes[*b]
                    .flops
                    .cmp(&self.nodes[*a].flops)
                    .then(a.cmp(b))
            });
            let mut changed = false;
            for v in order {
                if !cur.recompute[v] || self.nodes[v].flops == 0 {
                    continue;
                }
                let mut r = cur.recompute.clone();
                r[v] = false;
                if let Some(c) = self.evaluate(&r) {
                    if c.kept_bytes <= budget && c.recompute_flops < cur.recompute_flops {
                        cur = c;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        cur
    }

    /// Exact search (module doc), seeded with the Lagrangian answer as the incumbent.
    fn branch_and_bound(&self, budget: u64, incumbent: Option<Choice>) -> Option<Choice> {
        let n = self.nodes.len();
        let users = self.users();
        struct Search<'a> {
            p: &'a Problem,
            users: Vec<Vec<usize>>,
            budget: u64,
            r: Vec<bool>,
            best: Option<(u64, Vec<bool>)>,
        }
        impl Search<'_> {
            fn go(&mut self, v: usize, bytes: u64, flops: u64) {
                if let Some((bf, _)) = &self.best {
                    if flops >= *bf {
                        return;
                    }
                }
                if v == 0 {
                    self.best = Some((flops, self.r.clone()));
                    return;
                }
                let v = v - 1;
                let c = &self.p.nodes[v];
                let wanted = c.needed || self.users[v].iter().any(|u| self.r[*u]);
                if !wanted {
                    self.r[v] = false;
                    self.go(v, bytes, flops);
                    return;
                }
                if c.can_save && bytes + c.bytes <= self.budget {
                    self.r[v] = false;
                    self.go(v, bytes + c.bytes, flops);
                }
                if c.can_recompute {
                    self.r[v] = true;
                    self.go(v, bytes, flops + c.flops);
                    self.r[v] = false;
                }
            }
        }
        let mut s = Search {
            p: self,
            users,
            budget,
            r: vec![false; n],
            best: None,
        };
        if let Some(c) = incumbent {
            // The search must find something strictly cheaper to replace it.
            s.best = Some((c.recompute_flops, c.recompute));
        }
        s.go(n, 0, 0);
        s.best.and_then(|(_, r)| self.evaluate(&r))
    }
}

/// Why a forward value is where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Kept from forward to backward.
    Kept,
    /// Recomputed in backward.
    Recomputed,
    /// Not read by backward at all (freed after its last forward use).
    Transient,
}

/// The recompute plan of one training-step graph: a side table over its forward values.
#[derive(Clone, Debug)]
pub struct RecomputePlan {
    pub policy: RecomputePolicy,
    pub fused: bool,
    /// Forward values kept for backward, with their (per-device) bytes.
    pub kept: BTreeMap<ValueId, u64>,
    /// Forward values recomputed, in topological order, with their (per-device) FLOPs.
    pub recomputed: Vec<(ValueId, u64)>,
    /// Per forward candidate: what the policy allowed (for `explain`).
    pub why: HashMap<ValueId, String>,
    pub kept_bytes: u64,
    pub recompute_flops: u64,
    /// For `budget` over its limit: the fewest kept bytes possible.
    pub over_budget: Option<u64>,
}

impl RecomputePlan {
    pub fn decision(&self, v: ValueId) -> Decision {
        if self.kept.contains_key(&v) {
            Decision::Kept
        } else if self.recomputed.iter().any(|(r, _)| *r == v) {
            Decision::Recomputed
        } else {
            Decision::Transient
        }
    }
}

/// Cheap ops a fused kernel can recompute from its loads: elementwise and layout ops. Not
/// reductions (recomputing a row statistic is another pass over the row; kernels keep the small
/// statistics instead), not matmuls or indexing, not noise (frameworks keep dropout masks).
pub fn is_cheap(op: &Op) -> bool {
    match op {
        Op::RandUniform { .. }
        | Op::MatMul { .. }
        | Op::Gather
        | Op::ScatterAdd { .. }
        | Op::TakeAlong
        | Op::PutAlong { .. } => false,
        Op::Input { .. } | Op::Param { .. } => false,
        Op::ReduceSum { .. } | Op::ReduceMax { .. } => false,
        Op::Constant { .. } | Op::DimConst { .. } | Op::Iota { .. } => true,
        Op::Broadcast { .. }
        | Op::Reshape { .. }
        | Op::Permute { .. }
        | Op::Slice { .. }
        | Op::Pad { .. }
        | Op::Concat { .. } => true,
        op => facts(op).is_elementwise,
    }
}

/// The op a backward reader of a value hands it to, when that op needs it in memory: a
/// non-cheap op, seen through reshapes and transposes (which frameworks do as views of the saved
/// tensor, so a matmul reading a transposed saved value reads the saved value).
fn hard_read(g: &Graph, roles: &Roles, u: ValueId) -> Option<ValueId> {
    let op = g.node(u).op();
    if !is_cheap(op) {
        return Some(u);
    }
    if matches!(op, Op::Reshape { .. } | Op::Permute { .. }) {
        return roles.users(u).iter().find_map(|w| hard_read(g, roles, *w));
    }
    None
}

/// Forward values computed from parameters and constants only (no input, no noise).
fn weight_derived(g: &Graph, roles: &Roles) -> HashSet<ValueId> {
    let mut out: HashSet<ValueId> = HashSet::new();
    for v in &roles.order {
        let n = g.node(*v);
        let ok = match n.op() {
            Op::Param { .. } | Op::Constant { .. } | Op::DimConst { .. } | Op::Iota { .. } => true,
            Op::Input { .. } | Op::RandUniform { .. } => false,
            _ => !n.inputs().is_empty() && n.inputs().iter().all(|u| out.contains(u)),
        };
        if ok {
            out.insert(*v);
        }
    }
    out.retain(|v| {
        roles.is_forward(*v)
            && !matches!(
                g.node(*v).op(),
                Op::Param { .. } | Op::Constant { .. } | Op::DimConst { .. } | Op::Iota { .. }
            )
    });
    out
}

/// Builds the problem for `policy` over `g` and solves it. `bytes` and `flops` give every forward
/// value's per-device cost. `budget` (for `Budget`) is the byte limit to use, which callers scale
/// when `g` holds fewer layers than the model.
pub fn plan_recompute(
    g: &Graph,
    roles: &Roles,
    bytes: &HashMap<ValueId, u64>,
    flops: &HashMap<ValueId, u64>,
    policy: &RecomputePolicy,
    fused: bool,
    budget: Option<u64>,
) -> RecomputePlan {
    let outputs: HashSet<ValueId> = g.outputs().iter().map(|o| o.value).collect();
    let core = match policy {
        RecomputePolicy::Selective => attention_core(g, roles),
        _ => HashSet::new(),
    };
    let keep_kinds: Vec<OpKind> = match policy {
        RecomputePolicy::Keep(ks) => ks
            .iter()
            .filter_map(|k| OpKind::from_keep_name(k))
            .collect(),
        _ => Vec::new(),
    };
    let cands: Vec<ValueId> = roles
        .order
        .iter()
        .copied()
        .filter(|v| {
            roles.is_forward(*v)
                && !matches!(
                    g.node(*v).op(),
                    Op::Input { .. } | Op::Param { .. } | Op::Constant { .. } | Op::DimConst { .. }
                )
        })
        .collect();
    let index: HashMap<ValueId, usize> = cands.iter().enumerate().map(|(i, v)| (*v, i)).collect();
    let weights_only = weight_derived(g, roles);
    let mut why: HashMap<ValueId, String> = HashMap::new();
    let mut nodes = Vec::with_capacity(cands.len());
    for v in &cands {
        let n = g.node(*v);
        let bwd_readers: Vec<ValueId> = roles
            .users(*v)
            .iter()
            .copied()
            .filter(|u| !roles.is_forward(*u))
            .collect();
        let needed = !bwd_readers.is_empty() && !outputs.contains(v);
        let hard_reader = bwd_readers
            .iter()
            .copied()
            .find_map(|u| hard_read(g, roles, u));
        let in_layer = roles.layer_of(*v).is_some() && !roles.is_layer_boundary(*v);
        let (mut allowed, forced, reason): (bool, bool, String) = match policy {
            RecomputePolicy::None => (false, false, "policy `none` recomputes nothing".into()),
            RecomputePolicy::Full if in_layer => (
                true,
                true,
                "inside a layer: `full` keeps only each layer's input".into(),
            ),
            RecomputePolicy::Full => (
                false,
                false,
                "a layer boundary or outside the layers: `full` keeps it".into(),
            ),
            RecomputePolicy::Selective if core.contains(v) => (
                true,
                true,
                "in the attention core: `selective` recomputes it".into(),
            ),
            RecomputePolicy::Selective => (
                false,
                false,
                "outside the attention core: `selective` keeps it".into(),
            ),
            RecomputePolicy::Keep(_) if in_layer && keep_kinds.contains(&roles.kind(*v)) => (
                false,
                false,
                format!("a {} output: `keep` keeps it", roles.kind(*v).name()),
            ),
            RecomputePolicy::Keep(ks) if in_layer => (
                true,
                true,
                format!(
                    "a {} value, not in `keep({})`: recomputed",
                    roles.kind(*v).name(),
                    ks.join(", ")
                ),
            ),
            RecomputePolicy::Keep(_) => (
                false,
                false,
                "a layer boundary or outside the layers: `keep` keeps it".into(),
            ),
            RecomputePolicy::Budget(_) if in_layer => (
                true,
                false,
                "inside a layer: `budget` may keep or recompute it".into(),
            ),
            RecomputePolicy::Budget(_) => (
                false,
                false,
                "a layer boundary or outside the layers: `budget` keeps it".into(),
            ),
        };
        let mut reason = reason;
        let cheap = is_cheap(n.op()) && !(needed && hard_reader.is_some());
        if weights_only.contains(v) && (fused || !matches!(policy, RecomputePolicy::None)) {
            // A function of the weights alone (a transposed or broadcast weight) is not an
            // activation: any pass can rebuild it from the weights.
            allowed = true;
            reason = "computed from weights and constants alone: rebuilt from them when backward needs it".into();
        } else if fused && !allowed && cheap && !roles.is_layer_boundary(*v) {
            allowed = true;
            reason = format!(
                "{reason}; a cheap {} op a fused backward kernel can recompute",
                n.op().name()
            );
        } else if fused && !allowed && needed {
            if let Some(h) = hard_reader {
                reason = format!(
                    "{reason}; read by the backward {} `{}`, which needs it in memory",
                    g.node(h).op().name(),
                    g.node(h).name().unwrap_or("?")
                );
            }
        }
        why.insert(*v, reason);
        let inputs: Vec<usize> = n
            .inputs()
            .iter()
            .filter_map(|u| index.get(u).copied())
            .collect();
        nodes.push(Candidate {
            inputs,
            bytes: if outputs.contains(v) {
                0
            } else {
                bytes.get(v).copied().unwrap_or(0)
            },
            flops: flops.get(v).copied().unwrap_or(0),
            needed,
            can_recompute: allowed && !outputs.contains(v),
            can_save: !forced,
        });
    }
    let problem = Problem { nodes };
    let mut over_budget = None;
    let choice = match policy {
        RecomputePolicy::Budget(b) => {
            let limit = budget.unwrap_or(*b);
            match problem.budget(limit) {
                Some(c) => Some(c),
                None => {
                    let c = problem.min_bytes();
                    over_budget = c.as_ref().map(|c| c.kept_bytes);
                    c
                }
            }
        }
        _ => problem.min_bytes(),
    };
    // Every policy's flags admit "recompute everything allowed", so a choice always exists; keep
    // everything needed if the cut ever reports otherwise.
    let choice = choice.unwrap_or_else(|| {
        let r = vec![false; problem.nodes.len()];
        let kept: Vec<bool> = problem.nodes.iter().map(|c| c.needed).collect();
        let kept_bytes = problem
            .nodes
            .iter()
            .filter(|c| c.needed)
            .map(|c| c.bytes)
            .sum();
        Choice {
            recompute: r,
            kept,
            kept_bytes,
            recompute_flops: 0,
        }
    });
    let mut kept = BTreeMap::new();
    let mut recomputed = Vec::new();
    for (i, v) in cands.iter().enumerate() {
        if choice.kept[i] {
            kept.insert(*v, problem.nodes[i].bytes);
        }
        if choice.recompute[i] {
            recomputed.push((*v, problem.nodes[i].flops));
        }
    }
    RecomputePlan {
        policy: policy.clone(),
        fused,
        kept,
        recomputed,
        why,
        kept_bytes: choice.kept_bytes,
        recompute_flops: choice.recompute_flops,
        over_budget,
    }
}

/// A graph with the recompute ops in it, and the schedule order to run it in.
#[derive(Clone, Debug)]
pub struct Rewritten {
    pub graph: Graph,
    /// Topological order with each clone just before its first backward reader.
    pub order: Vec<ValueId>,
    /// Original → clone.
    pub clones: BTreeMap<ValueId, ValueId>,
    /// Clone → original.
    pub original: HashMap<ValueId, ValueId>,
}

/// Puts the plan's recompute ops into the graph (module doc).
pub fn apply(g: &Graph, roles: &Roles, plan: &RecomputePlan) -> Rewritten {
    let mut out = g.clone();
    let mut clones: BTreeMap<ValueId, ValueId> = BTreeMap::new();
    let mut original = HashMap::new();
    let mut by_pos: Vec<ValueId> = plan.recomputed.iter().map(|(v, _)| *v).collect();
    by_pos.sort_by_key(|v| roles.pos[v]);
    for v in &by_pos {
        let n = g.node(*v);
        let inputs: Vec<ValueId> = n
            .inputs()
            .iter()
            .map(|u| clones.get(u).copied().unwrap_or(*u))
            .collect();
        let name = Some(match n.name() {
            Some(p) => format!("recompute.{p}"),
            None => "recompute".to_string(),
        });
        let c = out.add_unchecked(n.op().clone(), &inputs, n.ty().clone(), name);
        clones.insert(*v, c);
        original.insert(c, *v);
    }
    for b in &roles.order {
        if roles.is_forward(*b) || roles.phase(*b).is_persistent() {
            continue;
        }
        let ins = g.node(*b).inputs();
        if ins.iter().any(|u| clones.contains_key(u)) {
            let mapped: Vec<ValueId> = ins
                .iter()
                .map(|u| clones.get(u).copied().unwrap_or(*u))
                .collect();
            out.set_inputs(*b, &mapped);
        }
    }
    // Schedule: the original order, each clone emitted (with the clones it needs) right before
    // the first op that reads it.
    let mut order = Vec::with_capacity(out.len());
    let mut emitted: HashSet<ValueId> = HashSet::new();
    fn emit_clone(
        c: ValueId,
        out: &Graph,
        original: &HashMap<ValueId, ValueId>,
        emitted: &mut HashSet<ValueId>,
        order: &mut Vec<ValueId>,
    ) {
        if emitted.contains(&c) {
            return;
        }
        for u in out.node(c).inputs() {
            if original.contains_key(u) {
                emit_clone(*u, out, original, emitted, order);
            }
        }
        emitted.insert(c);
        order.push(c);
    }
    for v in &roles.order {
        for u in out.node(*v).inputs() {
            if original.contains_key(u) {
                emit_clone(*u, &out, &original, &mut emitted, &mut order);
            }
        }
        order.push(*v);
        emitted.insert(*v);
    }
    // Clones nobody reads (cannot happen after pruning, but never drop a node from the schedule).
    for c in clones.values() {
        emit_clone(*c, &out, &original, &mut emitted, &mut order);
    }
    Rewritten {
        graph: out,
        order,
        clones,
        original,
    }
}
