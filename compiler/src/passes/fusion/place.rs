//! Row-group formation and the materialisation decisions.
//!
//! Nodes are visited in topological order. Kernel nodes get a step each (all the
//! `AttentionBackward` nodes of one attention share one). A row node joins the group of its
//! operands whose `rows × cols` space it fits (the *rule*, see [`rule`]) when no operand it would
//! read from outside comes from a step that depends on that group (that would be a cycle between
//! kernels); when its operands live in several groups of one space with no path between them,
//! those groups are merged first. Otherwise it starts a group whose space it defines. Scalar
//! nodes (elementwise on `[]`) form their own `1 × 1` groups, and consumers usually recompute
//! them instead of loading them.
//!
//! A value's *class* in a group follows from its element count: `rows·cols` is per element,
//! `rows` per row, 1 the same for the whole launch. Reductions make two more, usable only as
//! kernel outputs: `Total` (a sum of everything) and `ColTotal` (a sum over rows, per column).

use std::collections::{BTreeSet, HashMap};

use super::analyze::{Cat, Info};
use super::FusionError;
use crate::ir::{AttnSpec, DType, Op, UnaryOp};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Class {
    Elem,
    Row,
    Scalar,
    /// A `[cols]` operand (per-column broadcast); only loaded, never computed in a group.
    Col,
    Total,
    ColTotal,
}

#[derive(Clone, Debug, PartialEq)]
pub(super) enum StepKind {
    Group {
        rows: usize,
        cols: usize,
        scalar: bool,
    },
    /// One kernel node (or, for `AttentionBackward`, all nodes of one attention).
    Kernel,
}

#[derive(Clone, Debug)]
pub(super) struct StepNode {
    pub kind: StepKind,
    /// Home nodes in topological order.
    pub nodes: Vec<usize>,
    pub deps: BTreeSet<usize>,
    pub alive: bool,
}

pub(super) struct Plan {
    pub steps: Vec<StepNode>,
    /// The step computing each node (aliases inside a group: that group).
    pub home: Vec<Option<usize>>,
    pub class: Vec<Option<Class>>,
    /// Per row node: the class each operand is read with.
    pub opclass: Vec<Vec<Class>>,
    /// The node gets a buffer.
    pub mat: Vec<bool>,
    /// Constant nodes computed at compile time into a buffer.
    pub const_mat: Vec<bool>,
    /// Constant nodes with one value everywhere: that value.
    pub uniform: Vec<Option<f64>>,
    /// Constant nodes a row program can compute from its indices.
    pub inline_ok: Vec<bool>,
    /// Per step: nodes of other groups it recomputes.
    pub recompute: Vec<BTreeSet<usize>>,
    parent: Vec<usize>,
    search: std::cell::RefCell<Search>,
}

/// Scratch of [`Plan::reaches`]: visit marks (equal to `epoch` when visited in this search).
#[derive(Default)]
struct Search {
    marks: Vec<u32>,
    epoch: u32,
    stack: Vec<usize>,
}

impl Plan {
    /// The live step a (possibly merged) step id now is.
    pub fn find(&self, mut s: usize) -> usize {
        while self.parent[s] != s {
            s = self.parent[s];
        }
        s
    }

    pub fn space(&self, s: usize) -> Option<(usize, usize)> {
        match self.steps[s].kind {
            StepKind::Group { rows, cols, .. } => Some((rows, cols)),
            StepKind::Kernel => None,
        }
    }

    fn is_group(&self, s: usize) -> bool {
        matches!(self.steps[s].kind, StepKind::Group { .. })
    }
    fn is_scalar_group(&self, s: usize) -> bool {
        matches!(self.steps[s].kind, StepKind::Group { scalar: true, .. })
    }

    /// Does step `from` (transitively) depend on step `target`? A depth-first search; the visit
    /// marks and the stack are reused between calls (this runs for every placement candidate).
    fn reaches(&self, from: usize, target: usize) -> bool {
        let (from, target) = (self.find(from), self.find(target));
        let mut guard = self.search.borrow_mut();
        let Search {
            marks,
            epoch,
            stack,
        } = &mut *guard;
        *epoch = epoch.wrapping_add(1);
        if *epoch == 0 {
            marks.iter_mut().for_each(|m| *m = 0);
            *epoch = 1;
        }
        if marks.len() < self.steps.len() {
            marks.resize(self.steps.len(), 0);
        }
        stack.clear();
        stack.push(from);
        while let Some(s) = stack.pop() {
            for d in &self.steps[s].deps {
                let d = self.find(*d);
                if d == target {
                    return true;
                }
                if marks[d] != *epoch {
                    marks[d] = *epoch;
                    stack.push(d);
                }
            }
        }
        false
    }

    /// The step producing operand `u`'s data (through aliases and slice views).
    pub fn producer(&self, info: &Info, u: usize) -> Option<usize> {
        let s = src_view(info, u);
        self.home[s].map(|h| self.find(h))
    }
}

/// Follows aliases and slice views to the node that owns the data.
pub(super) fn src_view(info: &Info, mut i: usize) -> usize {
    while matches!(info.cat[i], Cat::Alias | Cat::SliceView) {
        i = info.ins[i][0];
    }
    i
}

pub(super) fn class_by_numel(n: usize, rows: usize, cols: usize) -> Option<Class> {
    if n == rows * cols {
        Some(Class::Elem)
    } else if n == 1 {
        Some(Class::Scalar)
    } else if n == rows {
        Some(Class::Row)
    } else {
        None
    }
}

/// Classes that read the same data in a group with `rows` rows (one row: per-row is scalar).
pub(super) fn same_class(a: Class, b: Class, rows: usize) -> bool {
    a == b
        || (rows == 1
            && matches!(
                (a, b),
                (Class::Row, Class::Scalar) | (Class::Scalar, Class::Row)
            ))
}

/// `axes` are the trailing `rank - k` axes; returns `k`.
fn trailing(axes: &[usize], rank: usize) -> Option<usize> {
    let k = rank.checked_sub(axes.len())?;
    (axes.iter().copied().eq(k..rank)).then_some(k)
}

/// `axes` are the leading `k` axes; returns `k`.
fn leading(axes: &[usize]) -> Option<usize> {
    (axes.iter().copied().eq(0..axes.len())).then_some(axes.len())
}

/// The class of row node `i` in a `rows × cols` group and the classes its operands are read
/// with, if the node fits that space.
pub(super) fn rule(info: &Info, i: usize, rows: usize, cols: usize) -> Option<(Class, Vec<Class>)> {
    let ins = &info.ins[i];
    let n = info.numel(i);
    let out = &info.shape[i];
    let rc = rows * cols;
    match info.op(i) {
        Op::Unary(_)
        | Op::Cast { .. }
        | Op::PowConst { .. }
        | Op::Binary(_)
        | Op::Compare(_)
        | Op::Select => {
            let c = class_by_numel(n, rows, cols)?;
            Some((c, vec![c; ins.len()]))
        }
        Op::Broadcast { axes, .. } => {
            let x = ins[0];
            let c = class_by_numel(n, rows, cols)?;
            let nx = info.numel(x);
            if nx == 1 {
                return Some((c, vec![Class::Scalar]));
            }
            if c != Class::Elem {
                return None;
            }
            if let Some(k) = trailing(axes, out.len()) {
                if out[k..].iter().product::<usize>() == cols && nx == rows {
                    return Some((c, vec![Class::Row]));
                }
            }
            if let Some(k) = leading(axes) {
                if out[k..].iter().product::<usize>() == cols && nx == cols {
                    return Some((c, vec![Class::Col]));
                }
            }
            None
        }
        Op::ReduceSum { axes, .. } | Op::ReduceMax { axes, .. } => {
            let sum = matches!(info.op(i), Op::ReduceSum { .. });
            let x = ins[0];
            let xs = &info.shape[x];
            let nx = info.numel(x);
            if nx == rc {
                if let Some(k) = trailing(axes, xs.len()) {
                    if xs[k..].iter().product::<usize>() == cols && n == rows {
                        return Some((Class::Row, vec![Class::Elem]));
                    }
                }
                if sum && axes.len() == xs.len() {
                    return Some((Class::Total, vec![Class::Elem]));
                }
                if let Some(k) = leading(axes) {
                    if sum && xs[k..].iter().product::<usize>() == cols && n == cols {
                        return Some((Class::ColTotal, vec![Class::Elem]));
                    }
                }
                None
            } else if nx == rows && sum && axes.len() == xs.len() {
                Some((Class::Total, vec![Class::Row]))
            } else {
                None
            }
        }
        Op::TakeAlong => {
            let (x, idx) = (ins[0], ins[1]);
            (info.numel(x) == rc
                && info.shape[x].last() == Some(&cols)
                && info.numel(idx) == rows
                && n == rows)
                .then(|| (Class::Row, vec![Class::Elem, Class::Row]))
        }
        Op::PutAlong { .. } => {
            let (v, idx) = (ins[0], ins[1]);
            (n == rc
                && out.last() == Some(&cols)
                && info.numel(v) == rows
                && info.numel(idx) == rows)
                .then(|| (Class::Elem, vec![Class::Row, Class::Row]))
        }
        _ => None,
    }
}

/// The space a fresh group for row node `i` gets, if any row program can compute it.
fn fresh_space(info: &Info, i: usize) -> Option<(usize, usize)> {
    let out = &info.shape[i];
    let natural = |s: &[usize]| -> (usize, usize) {
        let c = s.last().copied().unwrap_or(1);
        let n: usize = s.iter().product();
        (n.checked_div(c).unwrap_or(0), c)
    };
    let ins = &info.ins[i];
    match info.op(i) {
        Op::Broadcast { axes, .. } => {
            let nx = info.numel(ins[0]);
            if nx == 1 {
                return Some(natural(out));
            }
            if let Some(k) = trailing(axes, out.len()) {
                return Some((out[..k].iter().product(), out[k..].iter().product()));
            }
            if let Some(k) = leading(axes) {
                return Some((out[..k].iter().product(), out[k..].iter().product()));
            }
            None
        }
        Op::ReduceSum { axes, .. } | Op::ReduceMax { axes, .. } => {
            let sum = matches!(info.op(i), Op::ReduceSum { .. });
            let xs = &info.shape[ins[0]];
            if let Some(k) = trailing(axes, xs.len()) {
                return Some((xs[..k].iter().product(), xs[k..].iter().product()));
            }
            if sum && axes.len() == xs.len() {
                return Some(natural(xs));
            }
            if let Some(k) = leading(axes) {
                if sum {
                    return Some((xs[..k].iter().product(), xs[k..].iter().product()));
                }
            }
            None
        }
        Op::TakeAlong => Some((
            info.numel(ins[1]),
            info.shape[ins[0]].last().copied().unwrap_or(1),
        )),
        Op::PutAlong { .. } => Some((info.numel(ins[0]), out.last().copied().unwrap_or(1))),
        _ => Some(natural(out)),
    }
}

struct Placer<'a, 'g> {
    info: &'a Info<'g>,
    plan: Plan,
    attn_bwd: HashMap<String, usize>,
    /// Per data-owning node: the groups that read it (sibling candidates, see `row`).
    readers: HashMap<usize, Vec<usize>>,
}

pub(super) fn place(info: &Info) -> Result<Plan, FusionError> {
    let n = info.order.len();
    let mut p = Placer {
        info,
        plan: Plan {
            steps: Vec::new(),
            home: vec![None; n],
            class: vec![None; n],
            opclass: vec![Vec::new(); n],
            mat: vec![false; n],
            const_mat: vec![false; n],
            uniform: vec![None; n],
            inline_ok: vec![false; n],
            recompute: Vec::new(),
            parent: Vec::new(),
            search: Default::default(),
        },
        attn_bwd: HashMap::new(),
        readers: HashMap::new(),
    };
    for i in 0..n {
        match info.cat[i] {
            Cat::Source | Cat::SliceView => {}
            Cat::Konst => {
                p.plan.uniform[i] = uniform_value(info, &p.plan.uniform, i);
                p.plan.inline_ok[i] = inline_expressible(info, &p.plan.inline_ok, i);
            }
            Cat::Alias => {
                let s = info.src(i);
                if let Some(h) = p.plan.home[s] {
                    if p.plan.is_group(p.plan.find(h)) {
                        let g = p.plan.find(h);
                        p.plan.home[i] = Some(g);
                        p.plan.class[i] = p.plan.class[s];
                    }
                }
            }
            Cat::Kernel => p.kernel(i),
            Cat::Row => p.row(i)?,
        }
    }
    p.materialize()?;
    Ok(p.plan)
}

impl Placer<'_, '_> {
    fn new_step(&mut self, kind: StepKind) -> usize {
        let id = self.plan.steps.len();
        self.plan.steps.push(StepNode {
            kind,
            nodes: Vec::new(),
            deps: BTreeSet::new(),
            alive: true,
        });
        self.plan.recompute.push(BTreeSet::new());
        self.plan.parent.push(id);
        id
    }

    fn add_to(&mut self, s: usize, i: usize) {
        self.plan.home[i] = Some(s);
        self.plan.steps[s].nodes.push(i);
        if self.plan.is_group(s) {
            for u in &self.info.ins[i] {
                let r = self.readers.entry(src_view(self.info, *u)).or_default();
                if !r.contains(&s) {
                    r.push(s);
                }
            }
        }
        for u in self.info.ins[i].clone() {
            if let Some(p) = self.plan.producer(self.info, u) {
                if p != s {
                    self.plan.steps[s].deps.insert(p);
                }
            }
        }
    }

    fn kernel(&mut self, i: usize) {
        if let Op::AttentionBackward { spec, .. } = self.info.op(i) {
            let key = attn_key(spec, &self.info.ins[i]);
            let s = match self.attn_bwd.get(&key) {
                Some(s) => *s,
                None => {
                    let s = self.new_step(StepKind::Kernel);
                    self.attn_bwd.insert(key, s);
                    s
                }
            };
            self.add_to(s, i);
            return;
        }
        let s = self.new_step(StepKind::Kernel);
        self.add_to(s, i);
    }

    fn row(&mut self, i: usize) -> Result<(), FusionError> {
        let info = self.info;
        let scalar = info.is_scalar_node(i);
        // Candidate groups: those of the operands, most operands first, newest first.
        let mut count: HashMap<usize, usize> = HashMap::new();
        for u in &info.ins[i] {
            if let Some(p) = self.plan.producer(info, *u) {
                if self.plan.is_group(p) && self.plan.is_scalar_group(p) == scalar {
                    *count.entry(p).or_insert(0) += 1;
                }
            }
        }
        let mut cands: Vec<(usize, usize)> = count.into_iter().collect();
        cands.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
        let mut cands: Vec<usize> = cands.into_iter().map(|c| c.0).collect();
        if cands.len() >= 2 && !scalar {
            let first = cands[0];
            for other in cands.clone().into_iter().skip(1) {
                if self.can_merge(first, other) {
                    self.merge(first, other);
                }
            }
            cands.retain(|c| self.plan.find(*c) == *c);
        }
        for g in cands {
            if let Some((c, oc)) = self.try_place(i, g) {
                self.assign(i, g, c, oc);
                return Ok(());
            }
        }
        // Horizontal fusion: a group of the space this node would start that already reads one
        // of its operands (a norm's weight-gradient column sums join the kernel computing the
        // input gradient from the same incoming gradient), so the operand is read once and no
        // launch is added. `try_place` refuses a group that an operand's producer depends on.
        if !scalar {
            if let Some(space) = fresh_space(info, i) {
                let mut sibs: Vec<usize> = info.ins[i]
                    .iter()
                    .filter_map(|u| self.readers.get(&src_view(info, *u)))
                    .flatten()
                    .map(|g| self.plan.find(*g))
                    .filter(|g| {
                        self.plan.steps[*g].alive
                            && self.plan.space(*g) == Some(space)
                            && !self.plan.is_scalar_group(*g)
                    })
                    .collect();
                sibs.sort_unstable();
                sibs.dedup();
                for g in sibs.into_iter().rev() {
                    if let Some((c, oc)) = self.try_place(i, g) {
                        self.assign(i, g, c, oc);
                        return Ok(());
                    }
                }
            }
        }
        if let Some((rows, cols)) = fresh_space(info, i) {
            let g = self.new_step(StepKind::Group { rows, cols, scalar });
            if let Some((c, oc)) = self.try_place(i, g) {
                self.assign(i, g, c, oc);
                return Ok(());
            }
            // The fresh group stays empty (dead) and the node falls back below.
            self.plan.steps[g].alive = false;
        }
        match info.op(i) {
            Op::Broadcast { .. } | Op::ReduceSum { .. } | Op::ReduceMax { .. } => {
                self.kernel(i);
                Ok(())
            }
            op => Err(FusionError::Unsupported {
                value: info.name(i),
                op: op.name().to_string(),
                detail: format!(
                    "no row program computes shape {:?} from its operands",
                    info.shape[i]
                ),
            }),
        }
    }

    fn assign(&mut self, i: usize, g: usize, c: Class, oc: Vec<Class>) {
        self.plan.class[i] = Some(c);
        self.plan.opclass[i] = oc;
        self.add_to(g, i);
    }

    fn try_place(&self, i: usize, g: usize) -> Option<(Class, Vec<Class>)> {
        let (rows, cols) = self.plan.space(g)?;
        let (c, oc) = rule(self.info, i, rows, cols)?;
        for (u, want) in self.info.ins[i].iter().zip(&oc) {
            if !self.operand_ok(*u, *want, g) {
                return None;
            }
        }
        Some((c, oc))
    }

    fn operand_ok(&self, u: usize, want: Class, g: usize) -> bool {
        if self.info.konst[u] {
            return true;
        }
        match self.plan.producer(self.info, u) {
            Some(p) if p == g => {
                // Inside the group: must be a usable class, and the data must not come through
                // a slice view (views need a buffer).
                let direct = src_view(self.info, u) == self.info.src(u);
                let have = self.plan.class[u];
                direct
                    && matches!(have, Some(Class::Elem | Class::Row | Class::Scalar))
                    && have == Some(want)
            }
            Some(p) => !self.plan.reaches(p, g),
            None => true,
        }
    }

    fn can_merge(&self, a: usize, b: usize) -> bool {
        let (a, b) = (self.plan.find(a), self.plan.find(b));
        a != b
            && self.plan.space(a) == self.plan.space(b)
            && !self.plan.is_scalar_group(a)
            && !self.plan.is_scalar_group(b)
            && !self.plan.reaches(a, b)
            && !self.plan.reaches(b, a)
    }

    fn merge(&mut self, a: usize, b: usize) {
        let (a, b) = (self.plan.find(a), self.plan.find(b));
        let nodes = std::mem::take(&mut self.plan.steps[b].nodes);
        for i in &nodes {
            self.plan.home[*i] = Some(a);
        }
        // Aliases of b's nodes point at b through `find`; their `home` is fixed lazily below.
        let deps = std::mem::take(&mut self.plan.steps[b].deps);
        self.plan.steps[a].nodes.extend(nodes);
        self.plan.steps[a].nodes.sort_unstable();
        self.plan.steps[a]
            .deps
            .extend(deps.into_iter().filter(|d| *d != a));
        self.plan.steps[b].alive = false;
        self.plan.parent[b] = a;
    }

    /// Decides which values get buffers and which trees consumers recompute.
    fn materialize(&mut self) -> Result<(), FusionError> {
        let info = self.info;
        let n = info.order.len();
        // Normalise homes after merges.
        for i in 0..n {
            if let Some(h) = self.plan.home[i] {
                self.plan.home[i] = Some(self.plan.find(h));
            }
        }
        let mut candidates: Vec<(usize, usize, Class)> = Vec::new();
        for i in 0..n {
            if info.escapes[i] {
                self.demand(i);
            }
            match info.cat[i] {
                Cat::Kernel => match info.op(i) {
                    Op::MatMul { .. } => {
                        for u in info.ins[i].clone() {
                            let (base, _, _) = gemm_operand(info, u);
                            self.demand(base);
                        }
                    }
                    Op::Attention(_) | Op::AttentionBackward { .. } => {
                        for slot in 0..info.ins[i].len() {
                            self.demand(info.attention_operand(i, slot).0);
                        }
                    }
                    // A head merge that attention writes directly: its buffer, not its operand's.
                    Op::Permute { .. } if info.head_write[info.ins[i][0]] == Some(i) => {
                        self.demand(i)
                    }
                    _ => {
                        for u in info.ins[i].clone() {
                            self.demand(u);
                        }
                    }
                },
                Cat::SliceView => self.demand(info.ins[i][0]),
                Cat::Row => {
                    let Some(g) = self.plan.home[i] else { continue };
                    if !self.plan.is_group(g) {
                        // A data-kernel fallback: reads its operand from a buffer.
                        self.demand(info.ins[i][0]);
                        continue;
                    }
                    for (u, want) in info.ins[i]
                        .clone()
                        .into_iter()
                        .zip(self.plan.opclass[i].clone())
                    {
                        if info.konst[u] {
                            self.konst_operand(u);
                            continue;
                        }
                        match self.plan.producer(info, u) {
                            Some(p) if p == g => {}
                            Some(p)
                                if self.plan.is_group(p)
                                    && (matches!(want, Class::Elem | Class::Scalar)
                                        || (want == Class::Row && !info.dtype(u).is_float())) =>
                            {
                                candidates.push((u, g, want))
                            }
                            _ => self.demand(u),
                        }
                    }
                }
                Cat::Source | Cat::Konst | Cat::Alias => {}
            }
        }
        candidates.sort_unstable_by_key(|(u, g, c)| (*u, *g, *c as u8));
        candidates.dedup();
        for (u, g, want) in candidates {
            match self.recompute_tree(u, g, want) {
                Some((tree, leaves)) => {
                    for w in leaves {
                        self.demand(w);
                    }
                    for w in &tree {
                        for x in info.ins[*w].clone() {
                            if info.konst[x] {
                                self.konst_operand(x);
                            }
                        }
                    }
                    self.plan.recompute[g].extend(tree);
                }
                None => self.demand(u),
            }
        }
        Ok(())
    }

    fn konst_operand(&mut self, u: usize) {
        if self.plan.uniform[u].is_none() && !self.plan.inline_ok[u] {
            self.plan.const_mat[u] = true;
        }
    }

    /// Marks the owner of `u`'s data for a buffer.
    fn demand(&mut self, u: usize) {
        let s = src_view(self.info, u);
        if self.info.konst[s] {
            self.plan.const_mat[s] = true;
        } else {
            self.plan.mat[s] = true;
        }
    }

    /// The nodes group `g` would duplicate to compute `u` (read with class `want`) itself, and
    /// the values it would load instead (which then need buffers); `None` when that is not cheap
    /// or not possible. Every duplicated node must fit `g`'s space. Integer and boolean trees
    /// (indices, masks) have no size limit: row programs cannot read integers another row
    /// program wrote, so recomputing them is the only way.
    fn recompute_tree(&self, u: usize, g: usize, want: Class) -> Option<(Vec<usize>, Vec<usize>)> {
        let info = self.info;
        let h = self.plan.producer(info, u)?;
        let (rows, cols) = self.plan.space(g)?;
        let ints = !info.dtype(u).is_float();
        let (max_nodes, max_loads) = if ints {
            (usize::MAX, usize::MAX)
        } else if self.plan.is_scalar_group(h) {
            (16, 6)
        } else {
            (12, 3)
        };
        let mut tree = Vec::new();
        let mut leaves = Vec::new();
        let mut loads = 0;
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![(u, want)];
        while let Some((w, rc)) = stack.pop() {
            if info.konst[w] || !seen.insert((w, rc as u8)) {
                continue;
            }
            let p = self.plan.producer(info, w);
            let owner = src_view(info, w);
            let int = !info.dtype(w).is_float();
            let recomputable_class = match self.plan.class[w] {
                Some(Class::Elem | Class::Scalar) => true,
                Some(Class::Row) => int,
                _ => false,
            };
            let leaf = p != Some(h)
                || (self.plan.mat[owner] && !int)
                || !recomputable_class
                || src_view(info, w) != info.src(w);
            if leaf {
                if let Some(p) = p {
                    if p == g || self.plan.reaches(p, g) {
                        return None;
                    }
                }
                if info.numel(w) > 1 {
                    loads += 1;
                }
                leaves.push(w);
                continue;
            }
            if !class_by_numel(info.numel(w), rows, cols).is_some_and(|c| same_class(c, rc, rows)) {
                return None;
            }
            if info.cat[w] == Cat::Alias {
                // Free to duplicate, but a member so that users find it.
                tree.push(w);
                stack.push((info.ins[w][0], rc));
                continue;
            }
            match info.op(w) {
                // Transcendentals are worth storing: a consumer with several column passes would
                // evaluate them once per pass (a softmax backward recomputing `exp` twice per
                // score costs more than reading stored probabilities).
                Op::Unary(UnaryOp::Exp | UnaryOp::Log | UnaryOp::Tanh | UnaryOp::Erf) if !int => {
                    return None
                }
                Op::PowConst { p } if p.fract() != 0.0 => return None,
                Op::Unary(_)
                | Op::Cast { .. }
                | Op::PowConst { .. }
                | Op::Binary(_)
                | Op::Compare(_)
                | Op::Select
                | Op::Broadcast { .. }
                | Op::PutAlong { .. } => {}
                _ => return None,
            }
            let (c, oc) = rule(info, w, rows, cols)?;
            if !same_class(c, rc, rows) {
                return None;
            }
            tree.push(w);
            stack.extend(info.ins[w].iter().copied().zip(oc));
        }
        let cost = tree.iter().filter(|w| info.cat[**w] != Cat::Alias).count();
        if cost > max_nodes || loads > max_loads {
            return None;
        }
        tree.sort_unstable();
        tree.dedup();
        Some((tree, leaves))
    }
}

/// The grouping key of an `AttentionBackward`: its spec and operands.
fn attn_key(spec: &AttnSpec, ins: &[usize]) -> String {
    format!("{spec:?}{ins:?}")
}

/// A GEMM operand as stored: the node owning the data, whether it is read transposed (a
/// last-two-axes `Permute` folded in), and whether one matrix is broadcast over the batch.
pub(super) fn gemm_operand(info: &Info, u: usize) -> (usize, bool, bool) {
    let mut v = u;
    while matches!(info.op(v), Op::StopGradient) && !info.konst[v] {
        v = info.ins[v][0];
    }
    match info.op(v) {
        Op::Permute { perm } if !info.konst[v] => {
            let r = perm.len();
            let swap = r >= 2
                && perm[r - 2] == r - 1
                && perm[r - 1] == r - 2
                && perm[..r - 2].iter().enumerate().all(|(i, p)| i == *p);
            if swap {
                return (info.ins[v][0], true, false);
            }
            (v, false, false)
        }
        Op::Broadcast { axes, shape } if !info.konst[v] => {
            let x = info.ins[v][0];
            if info.shape[x].len() == 2
                && shape.len() > 2
                && axes.iter().copied().eq(0..shape.len() - 2)
            {
                let (base, t, _) = gemm_operand(info, x);
                return (base, t, true);
            }
            (v, false, false)
        }
        _ => (v, false, false),
    }
}

/// The single value of a constant that is the same everywhere (no iota below it).
fn uniform_value(info: &Info, uni: &[Option<f64>], i: usize) -> Option<f64> {
    let ins = &info.ins[i];
    let a = |k: usize| uni[ins[k]];
    let dt = info.dtype(i);
    let v = match info.op(i) {
        Op::Constant { value, .. } => *value,
        Op::Broadcast { .. }
        | Op::Reshape { .. }
        | Op::StopGradient
        | Op::Slice { .. }
        | Op::Permute { .. }
        | Op::Pad { .. } => {
            if matches!(info.op(i), Op::Pad { .. }) {
                // Pads add zeros: uniform only if the operand is zero too.
                return (a(0)? == 0.0).then_some(0.0);
            }
            a(0)?
        }
        Op::ReduceSum { .. } => a(0)? * (info.numel(ins[0]) / info.numel(i).max(1)) as f64,
        Op::ReduceMax { .. } => a(0)?,
        Op::Unary(u) => {
            let x = a(0)?;
            match u {
                UnaryOp::Neg => -x,
                UnaryOp::Exp => x.exp(),
                UnaryOp::Log => x.ln(),
                UnaryOp::Sqrt => x.sqrt(),
                UnaryOp::Recip => 1.0 / x,
                UnaryOp::Tanh => x.tanh(),
                UnaryOp::Erf => libm::erf(x),
                UnaryOp::Abs => x.abs(),
                UnaryOp::Sin => x.sin(),
                UnaryOp::Cos => x.cos(),
            }
        }
        Op::Cast { to } => {
            let x = a(0)?;
            match to {
                DType::Bool => f64::from(u8::from(x != 0.0)),
                t if t.is_int() => x.trunc(),
                _ => x,
            }
        }
        Op::PowConst { p } => a(0)?.powf(*p),
        Op::Binary(b) => {
            let (x, y) = (a(0)?, a(1)?);
            use crate::ir::BinaryOp::*;
            match b {
                Add => x + y,
                Sub => x - y,
                Mul => x * y,
                Div if dt.is_int() => {
                    if y == 0.0 {
                        return None;
                    }
                    (x / y).trunc()
                }
                Div => x / y,
                Max => x.max(y),
                Min => x.min(y),
            }
        }
        Op::Compare(c) => {
            let (x, y) = (a(0)?, a(1)?);
            use crate::ir::CmpOp::*;
            f64::from(u8::from(match c {
                Lt => x < y,
                Le => x <= y,
                Gt => x > y,
                Ge => x >= y,
                Eq => x == y,
                Ne => x != y,
            }))
        }
        Op::Select => {
            let c = a(0)?;
            if c != 0.0 {
                a(1)?
            } else {
                a(2)?
            }
        }
        _ => return None,
    };
    // Round as the f32 interpreter would.
    Some(if dt == DType::F32 { v as f32 as f64 } else { v })
}

/// Whether a row program can compute constant `i` from the row and column indices.
fn inline_expressible(info: &Info, ok: &[bool], i: usize) -> bool {
    let ins_ok = info.ins[i].iter().all(|u| ok[*u]);
    match info.op(i) {
        Op::Constant { .. } | Op::Iota { .. } => true,
        Op::Unary(UnaryOp::Sin | UnaryOp::Cos) => false,
        Op::Cast { to } => ins_ok && !(to.is_int() && info.dtype(info.ins[i][0]).is_float()),
        Op::Unary(_)
        | Op::PowConst { .. }
        | Op::Binary(_)
        | Op::Compare(_)
        | Op::Select
        | Op::Broadcast { .. }
        | Op::Reshape { .. }
        | Op::StopGradient
        | Op::Permute { .. }
        | Op::Slice { .. } => ins_ok,
        _ => false,
    }
}
