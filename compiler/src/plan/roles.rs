//! Who is who in a training-step graph: the phase of every value (forward, backward, optimizer),
//! the layer it belongs to, each parameter's gradient, and the kind of each forward op (linear,
//! attention core, softmax, norm, elementwise, layout).
//!
//! The planners need these facts but the graph does not store them, so they are recovered from
//! structure and from the name paths sema and autodiff give nodes:
//! - forward values are the ancestors of the step's forward outputs (`loss`, `logits`); the rest is
//!   backward, except nodes autodiff's caller named `optim...` (the optimizer update);
//! - a layer is a `repeat` instance: the name path up to its first numeric segment (`h.3`,
//!   `encoder.0`), after stripping the `bwd.` / `recompute.` / `optim.` / `opt.m.` prefixes that
//!   backward, recompute and optimizer nodes carry;
//! - a parameter's gradient is the value the optimizer squares in `optim.norm.<param>` (or the
//!   `grad.<param>` output of an autodiff-only graph);
//! - the attention core is what lies between a batched activation × activation matmul (the scores)
//!   and the next one (probabilities × values), plus the values only it uses (mask, dropout noise).

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::ir::{BinaryOp, Graph, IrError, Op, UnaryOp, ValueId};

/// When a value is computed, or that it is state that lives across steps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Phase {
    /// A trainable (or frozen, non-optimizer) parameter.
    Param,
    /// Optimizer state (`opt.m.*`, `opt.v.*`, `opt.buf.*`).
    OptState,
    /// A run input (tokens, learning rate, step).
    Input,
    Forward,
    Backward,
    Optimizer,
}

impl Phase {
    /// Params, optimizer state and inputs: present before the step starts.
    pub fn is_persistent(self) -> bool {
        matches!(self, Phase::Param | Phase::OptState | Phase::Input)
    }
    pub fn name(self) -> &'static str {
        match self {
            Phase::Param => "param",
            Phase::OptState => "optimizer state",
            Phase::Input => "input",
            Phase::Forward => "forward",
            Phase::Backward => "backward",
            Phase::Optimizer => "optimizer",
        }
    }
}

/// What a forward op is, for `keep(kinds)` policies and for `explain`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum OpKind {
    /// A matmul against a 2-d weight (`linear`).
    Linear,
    /// The attention core: scores, mask, softmax, dropout, probabilities × values.
    Attention,
    Softmax,
    /// Norm statistics, normalisation and the affine scale/shift after it.
    Norm,
    /// Other elementwise ops (activations, residual adds, dropout).
    Elementwise,
    /// Data movement: broadcast, reshape, permute, slice, pad, concat.
    Layout,
    /// Sources, embeddings, indexing, other reductions.
    Other,
}

impl OpKind {
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Linear => "matmul",
            OpKind::Attention => "attention",
            OpKind::Softmax => "softmax",
            OpKind::Norm => "norm",
            OpKind::Elementwise => "elementwise",
            OpKind::Layout => "layout",
            OpKind::Other => "other",
        }
    }
    /// The kind a `keep(...)` list names (`plancheck::KEEP_KINDS`).
    pub fn from_keep_name(s: &str) -> Option<OpKind> {
        Some(match s {
            "matmul" => OpKind::Linear,
            "attention" => OpKind::Attention,
            "norm" => OpKind::Norm,
            "elementwise" => OpKind::Elementwise,
            "softmax" => OpKind::Softmax,
            _ => return None,
        })
    }
}

/// The facts above for one graph. Every map covers every node of the graph it was built from.
#[derive(Clone, Debug)]
pub struct Roles {
    /// Topological order (the graph's own deterministic one).
    pub order: Vec<ValueId>,
    pub pos: HashMap<ValueId, usize>,
    pub phase: HashMap<ValueId, Phase>,
    /// Index into `layers`.
    pub layer: HashMap<ValueId, usize>,
    /// Layer keys (`h.0`, `h.1`, ...) in forward order.
    pub layers: Vec<String>,
    /// Parameter name → its gradient value.
    pub grads: BTreeMap<String, ValueId>,
    /// Users of each value, in topological order, without repeats.
    pub users: HashMap<ValueId, Vec<ValueId>>,
    pub kind: HashMap<ValueId, OpKind>,
}

/// The layer key of a name path: up to the first numeric segment after the first, once the
/// backward/recompute/optimizer prefixes are removed (`bwd.h.3.attn.q` → `h.3`).
pub fn layer_key(name: &str) -> Option<String> {
    let mut s = name;
    loop {
        let before = s;
        for p in [
            "recompute.",
            "bwd.",
            "optim.norm.",
            "optim.",
            "opt.m.",
            "opt.v.",
            "opt.buf.",
        ] {
            if let Some(r) = s.strip_prefix(p) {
                s = r;
            }
        }
        if s == before {
            break;
        }
    }
    let segs: Vec<&str> = s.split('.').collect();
    for i in 1..segs.len() {
        if !segs[i].is_empty() && segs[i].bytes().all(|b| b.is_ascii_digit()) {
            return Some(segs[..=i].join("."));
        }
    }
    None
}

impl Roles {
    pub fn new(g: &Graph) -> Result<Roles, IrError> {
        let order = g.topo_order()?;
        let pos: HashMap<ValueId, usize> = order.iter().enumerate().map(|(i, v)| (*v, i)).collect();
        let mut users: HashMap<ValueId, Vec<ValueId>> =
            order.iter().map(|v| (*v, Vec::new())).collect();
        for v in &order {
            let mut seen = HashSet::new();
            for u in g.node(*v).inputs() {
                if seen.insert(*u) {
                    if let Some(list) = users.get_mut(u) {
                        list.push(*v);
                    }
                }
            }
        }
        // Forward = ancestors of the forward outputs; without a loss, everything is forward.
        let fwd_outputs: Vec<ValueId> = g
            .outputs()
            .iter()
            .filter(|o| o.name == "loss" || o.name == "logits")
            .map(|o| o.value)
            .collect();
        let has_loss = g.output("loss").is_some();
        let mut forward: HashSet<ValueId> = HashSet::new();
        if has_loss {
            let mut stack = fwd_outputs;
            while let Some(v) = stack.pop() {
                if forward.insert(v) {
                    stack.extend(g.node(v).inputs().iter().copied());
                }
            }
        }
        let mut phase = HashMap::new();
        for v in &order {
            let n = g.node(*v);
            let p = match n.op() {
                Op::Param {
                    name, trainable, ..
                } => {
                    if !trainable
                        && (name.starts_with("opt.m.")
                            || name.starts_with("opt.v.")
                            || name.starts_with("opt.buf."))
                    {
                        Phase::OptState
                    } else {
                        Phase::Param
                    }
                }
                Op::Input { .. } => Phase::Input,
                _ if !has_loss || forward.contains(v) => Phase::Forward,
                _ if n
                    .name()
                    .is_some_and(|s| s == "optim" || s.starts_with("optim.")) =>
                {
                    Phase::Optimizer
                }
                _ => Phase::Backward,
            };
            phase.insert(*v, p);
        }
        let mut layers: Vec<String> = Vec::new();
        let mut layer_index: HashMap<String, usize> = HashMap::new();
        // Number layers in forward order first, so that `layers` reads like the model.
        let mut by_phase: Vec<ValueId> = order
            .iter()
            .copied()
            .filter(|v| phase[v] == Phase::Forward)
            .collect();
        by_phase.extend(order.iter().copied().filter(|v| phase[v] != Phase::Forward));
        let mut layer = HashMap::new();
        for v in by_phase {
            let key = match g.node(v).op() {
                Op::Param { name, .. } => layer_key(name),
                _ => g.node(v).name().and_then(layer_key),
            };
            if let Some(k) = key {
                let next = layers.len();
                let i = *layer_index.entry(k.clone()).or_insert_with(|| {
                    layers.push(k);
                    next
                });
                layer.insert(v, i);
            }
        }
        let mut grads = BTreeMap::new();
        for v in &order {
            let n = g.node(*v);
            if let (Op::Binary(BinaryOp::Mul), Some(name)) = (n.op(), n.name()) {
                if let Some(p) = name.strip_prefix("optim.norm.") {
                    if n.inputs().len() == 2 && n.inputs()[0] == n.inputs()[1] {
                        grads.insert(p.to_string(), n.inputs()[0]);
                    }
                }
            }
        }
        if grads.is_empty() {
            for o in g.outputs() {
                if let Some(p) = o.name.strip_prefix("grad.") {
                    grads.insert(p.to_string(), o.value);
                }
            }
        }
        let mut roles = Roles {
            order,
            pos,
            phase,
            layer,
            layers,
            grads,
            users,
            kind: HashMap::new(),
        };
        roles.kind = classify(g, &roles);
        Ok(roles)
    }

    pub fn phase(&self, v: ValueId) -> Phase {
        self.phase.get(&v).copied().unwrap_or(Phase::Backward)
    }
    pub fn is_forward(&self, v: ValueId) -> bool {
        self.phase(v) == Phase::Forward
    }
    pub fn layer_of(&self, v: ValueId) -> Option<usize> {
        self.layer.get(&v).copied()
    }
    pub fn users(&self, v: ValueId) -> &[ValueId] {
        self.users.get(&v).map(|u| u.as_slice()).unwrap_or(&[])
    }
    pub fn kind(&self, v: ValueId) -> OpKind {
        self.kind.get(&v).copied().unwrap_or(OpKind::Other)
    }
    /// The parameter whose gradient `v` is, if any.
    pub fn grad_of(&self, v: ValueId) -> Option<&str> {
        self.grads
            .iter()
            .find(|(_, g)| **g == v)
            .map(|(n, _)| n.as_str())
    }

    /// A forward value consumed by a forward op of another layer (or a layer value consumed
    /// outside it, or a value outside layers consumed inside one): where `full` recompute keeps
    /// what it keeps, and where recompute chains stop.
    pub fn is_layer_boundary(&self, v: ValueId) -> bool {
        let mine = self.layer_of(v);
        self.users(v)
            .iter()
            .any(|u| self.is_forward(*u) && self.layer_of(*u) != mine)
    }
}

/// Forward op kinds; backward and persistent values are `Other`.
fn classify(g: &Graph, r: &Roles) -> HashMap<ValueId, OpKind> {
    let mut kind: HashMap<ValueId, OpKind> = HashMap::new();
    let fwd: Vec<ValueId> = r
        .order
        .iter()
        .copied()
        .filter(|v| r.is_forward(*v))
        .collect();
    for v in &fwd {
        let n = g.node(*v);
        let k = match n.op() {
            Op::MatMul { .. } => {
                if is_batched_matmul(g, *v) {
                    OpKind::Attention
                } else {
                    OpKind::Linear
                }
            }
            Op::Broadcast { .. }
            | Op::Reshape { .. }
            | Op::Permute { .. }
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::Concat { .. } => OpKind::Layout,
            op if crate::ir::facts(op).is_elementwise => OpKind::Elementwise,
            _ => OpKind::Other,
        };
        kind.insert(*v, k);
    }
    mark_norms(g, r, &mut kind);
    mark_softmax(g, r, &mut kind);
    for v in attention_core(g, r) {
        kind.insert(v, OpKind::Attention);
    }
    kind
}

/// A matmul of two activations sharing batch dims (scores, probabilities × values).
pub fn is_batched_matmul(g: &Graph, v: ValueId) -> bool {
    let n = g.node(v);
    if !matches!(n.op(), Op::MatMul { .. }) {
        return false;
    }
    let rhs = n.inputs()[1];
    g.shape(rhs).len() > 2 && !matches!(g.node(rhs).op(), Op::Param { .. })
}

/// Skips reshapes and broadcasts backwards.
fn through_layout(g: &Graph, mut v: ValueId) -> ValueId {
    while matches!(g.node(v).op(), Op::Reshape { .. } | Op::Broadcast { .. }) {
        v = g.node(v).inputs()[0];
    }
    v
}

/// Softmax: `e = exp(x - bcast(max(x)))`, `e / bcast(sum(e))`: marks every op of it.
fn mark_softmax(g: &Graph, r: &Roles, kind: &mut HashMap<ValueId, OpKind>) {
    for v in r.order.iter().filter(|v| r.is_forward(**v)) {
        let n = g.node(*v);
        if !matches!(n.op(), Op::Binary(BinaryOp::Div)) {
            continue;
        }
        let (e, s) = (n.inputs()[0], n.inputs()[1]);
        if !matches!(g.node(e).op(), Op::Unary(UnaryOp::Exp)) {
            continue;
        }
        let red = through_layout(g, s);
        if !(matches!(g.node(red).op(), Op::ReduceSum { .. }) && g.node(red).inputs()[0] == e) {
            continue;
        }
        let mut members = vec![*v, e, red];
        let mut x = s;
        while x != red {
            members.push(x);
            x = g.node(x).inputs()[0];
        }
        let sub = g.node(e).inputs()[0];
        if matches!(g.node(sub).op(), Op::Binary(BinaryOp::Sub)) {
            let m = g.node(sub).inputs()[1];
            let mx = through_layout(g, m);
            if matches!(g.node(mx).op(), Op::ReduceMax { .. }) {
                members.push(sub);
                let mut x = m;
                while x != mx {
                    members.push(x);
                    x = g.node(x).inputs()[0];
                }
                members.push(mx);
            }
        }
        for m in members {
            if r.is_forward(m) {
                kind.insert(m, OpKind::Softmax);
            }
        }
    }
}

/// Norms: row statistics (a reduction over the last axis and the small ops after it) and the ops
/// that combine their broadcast with the full-size tensor, then any affine scale/shift by a
/// broadcast 1-d parameter that follows.
fn mark_norms(g: &Graph, r: &Roles, kind: &mut HashMap<ValueId, OpKind>) {
    let mut stats: HashSet<ValueId> = HashSet::new();
    let mut normed: HashSet<ValueId> = HashSet::new();
    for v in r.order.iter().filter(|v| r.is_forward(**v)) {
        let n = g.node(*v);
        match n.op() {
            Op::ReduceSum { axes, .. } => {
                let rank = g.shape(n.inputs()[0]).len();
                if axes.len() == 1 && axes[0] + 1 == rank && rank >= 2 {
                    stats.insert(*v);
                }
            }
            // Still row-sized (the statistic's shape), not yet broadcast back.
            Op::Unary(_) | Op::Binary(_) | Op::PowConst { .. } | Op::Reshape { .. }
                if n.inputs().iter().any(|u| stats.contains(u))
                    && n.inputs()
                        .iter()
                        .all(|u| stats.contains(u) || g.shape(*u).len() <= g.shape(*v).len()) =>
            {
                stats.insert(*v);
            }
            Op::Broadcast { .. } if stats.contains(&n.inputs()[0]) => {
                stats.insert(*v);
            }
            _ => {}
        }
        // A full-size elementwise op with a broadcast statistic as an operand normalises.
        if matches!(
            n.op(),
            Op::Binary(BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div)
        ) && n
            .inputs()
            .iter()
            .any(|u| stats.contains(u) && matches!(g.node(*u).op(), Op::Broadcast { .. }))
        {
            normed.insert(*v);
        }
        // Affine after a norm: `normed * bcast(w)` / `+ bcast(b)` with 1-d params.
        if matches!(n.op(), Op::Binary(BinaryOp::Mul | BinaryOp::Add))
            && n.inputs().iter().any(|u| normed.contains(u))
            && n.inputs().iter().any(|u| {
                let s = through_layout(g, *u);
                matches!(g.node(s).op(), Op::Param { .. }) && g.shape(s).len() == 1
            })
        {
            normed.insert(*v);
        }
    }
    for v in stats.iter().chain(normed.iter()) {
        if r.is_forward(*v) && kind.get(v) != Some(&OpKind::Linear) {
            kind.insert(*v, OpKind::Norm);
        }
    }
    // The squares feeding a statistic (`x * x` in the variance).
    for v in stats
        .iter()
        .filter(|v| matches!(g.node(**v).op(), Op::ReduceSum { .. }))
    {
        let x = g.node(*v).inputs()[0];
        if matches!(g.node(x).op(), Op::Binary(BinaryOp::Mul)) && r.is_forward(x) {
            kind.insert(x, OpKind::Norm);
        }
    }
}

/// The forward values of every attention core (see the module doc).
pub fn attention_core(g: &Graph, r: &Roles) -> HashSet<ValueId> {
    let mut core: HashSet<ValueId> = HashSet::new();
    let batched: Vec<ValueId> = r
        .order
        .iter()
        .copied()
        .filter(|v| r.is_forward(*v) && is_batched_matmul(g, *v))
        .collect();
    for s in &batched {
        // Forward descendants of the scores, stopping at any matmul.
        let mut reach: HashSet<ValueId> = HashSet::new();
        let mut stack = vec![*s];
        let mut ends = Vec::new();
        while let Some(v) = stack.pop() {
            if !reach.insert(v) {
                continue;
            }
            for u in r.users(v) {
                if !r.is_forward(*u) {
                    continue;
                }
                if matches!(g.node(*u).op(), Op::MatMul { .. }) {
                    if is_batched_matmul(g, *u) && g.node(*u).inputs()[0] == v {
                        ends.push(*u);
                    }
                } else {
                    stack.push(*u);
                }
            }
        }
        if ends.is_empty() {
            continue;
        }
        // Keep what lies on a path to a probabilities × values matmul.
        let mut on_path: HashSet<ValueId> = HashSet::new();
        let mut stack: Vec<ValueId> = ends.iter().map(|e| g.node(*e).inputs()[0]).collect();
        while let Some(v) = stack.pop() {
            if reach.contains(&v) && on_path.insert(v) && v != *s {
                stack.extend(g.node(v).inputs().iter().copied());
            }
        }
        core.extend(on_path);
    }
    // Values only the core uses and that depend on no input or parameter (mask matrices, dropout
    // noise, broadcast constants); queries, keys and values are used only by the core too but are
    // its inputs, not part of it.
    let generated = generated_values(g, r);
    for v in r.order.iter().rev() {
        if core.contains(v) || !r.is_forward(*v) || !generated.contains(v) {
            continue;
        }
        let us: Vec<&ValueId> = r.users(*v).iter().filter(|u| r.is_forward(**u)).collect();
        if !us.is_empty() && us.iter().all(|u| core.contains(*u)) {
            core.insert(*v);
        }
    }
    core
}

/// Values computed from no input and no parameter (constants, iota, noise and what follows from
/// them alone).
pub fn generated_values(g: &Graph, r: &Roles) -> HashSet<ValueId> {
    let mut out = HashSet::new();
    for v in &r.order {
        let n = g.node(*v);
        let ok = match n.op() {
            Op::Param { .. } | Op::Input { .. } => false,
            _ => n.inputs().iter().all(|u| out.contains(u)),
        };
        if ok {
            out.insert(*v);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::layer_key;

    #[test]
    fn layer_keys_strip_prefixes() {
        assert_eq!(layer_key("h.3.attn.q").as_deref(), Some("h.3"));
        assert_eq!(layer_key("bwd.h.3.attn.q").as_deref(), Some("h.3"));
        assert_eq!(
            layer_key("recompute.bwd.encoder.10.ff").as_deref(),
            Some("encoder.10")
        );
        assert_eq!(
            layer_key("opt.m.layers.0.mlp.up.weight").as_deref(),
            Some("layers.0")
        );
        assert_eq!(
            layer_key("optim.norm.h.1.ln_1.bias").as_deref(),
            Some("h.1")
        );
        assert_eq!(layer_key("ln_f"), None);
        assert_eq!(layer_key("bwd.cross_entropy"), None);
        assert_eq!(layer_key("3.x"), None);
    }
}
