//! The op graph and the builder sema lowers into.
//!
//! Storage is a petgraph `StableDiGraph` so passes can delete nodes without invalidating the
//! `ValueId`s that side tables (planners) hold. Each node also keeps its operands in order (edges
//! carry the operand position); the two are kept in sync by `Graph`'s methods, which is why node
//! fields are only readable from outside. Every node records its insertion sequence number, which
//! breaks ties in the topological order so that printing never depends on hash or slot order.
//!
//! Besides nodes a graph has named outputs (`loss`, `logits`, `grad.wte`) and state updates
//! (`param or optimizer-state name ← value`), so one training step, parameter update included, is
//! one graph.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashSet};
use std::fmt;

use petgraph::stable_graph::{NodeIndex, StableDiGraph};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use super::ops::{flops, infer, BinaryOp, CmpOp, Init, Op, UnaryOp};
use super::shape::{bind_shape, numel, Bindings, DType, Dim, Shape, TensorType};
use super::IrError;

/// A value (= the node producing it) in a `Graph`. Stable across node removals and `bind`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(u32);

impl ValueId {
    fn idx(self) -> NodeIndex<u32> {
        NodeIndex::new(self.0 as usize)
    }
    fn from_idx(i: NodeIndex<u32>) -> Self {
        ValueId(i.index() as u32)
    }
    /// The raw index, for side tables that want a dense key. Not the printed `%n` number.
    pub fn index(self) -> u32 {
        self.0
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}
impl fmt::Debug for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// One op application.
#[derive(Clone, Debug)]
pub struct Node {
    op: Op,
    inputs: Vec<ValueId>,
    ty: TensorType,
    name: Option<String>,
    seq: u64,
}

impl Node {
    pub fn op(&self) -> &Op {
        &self.op
    }
    /// Operands in order.
    pub fn inputs(&self) -> &[ValueId] {
        &self.inputs
    }
    pub fn ty(&self) -> &TensorType {
        &self.ty
    }
    pub fn shape(&self) -> &Shape {
        &self.ty.shape
    }
    pub fn dtype(&self) -> DType {
        self.ty.dtype
    }
    /// The DSL name path (`blocks.3.attn.q`), if any.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
    /// Insertion sequence number (breaks topological-order ties).
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

/// A named graph output (`loss`, `logits`, `grad.wte`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NamedValue {
    pub name: String,
    pub value: ValueId,
}

/// `target ← value` at the end of the step: `target` names a param or optimizer state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StateUpdate {
    pub target: String,
    pub value: ValueId,
}

#[derive(Clone, Debug, Default)]
pub struct Graph {
    g: StableDiGraph<Node, u32, u32>,
    next_seq: u64,
    outputs: Vec<NamedValue>,
    updates: Vec<StateUpdate>,
    /// `(is_param, name)` → the first-inserted `Input`/`Param` of that name, so that `find_param`,
    /// `find_input` and `add`'s duplicate check are not scans (the training step looks up every
    /// param by name: quadratic on an 80-layer model otherwise).
    sources: BTreeMap<(bool, String), ValueId>,
}

/// The index key of a source op.
fn source_key(op: &Op) -> Option<(bool, String)> {
    match op {
        Op::Input { name, .. } => Some((false, name.clone())),
        Op::Param { name, .. } => Some((true, name.clone())),
        _ => None,
    }
}

impl Graph {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.g.node_count()
    }
    pub fn is_empty(&self) -> bool {
        self.g.node_count() == 0
    }
    pub fn contains(&self, v: ValueId) -> bool {
        self.g.contains_node(v.idx())
    }
    pub fn get(&self, v: ValueId) -> Option<&Node> {
        self.g.node_weight(v.idx())
    }
    /// The node of `v`. Panics if `v` was removed: ids come from code, never from user input.
    pub fn node(&self, v: ValueId) -> &Node {
        match self.g.node_weight(v.idx()) {
            Some(n) => n,
            None => panic!("{v} is not in the graph"),
        }
    }
    pub fn ty(&self, v: ValueId) -> &TensorType {
        &self.node(v).ty
    }
    pub fn shape(&self, v: ValueId) -> &Shape {
        &self.node(v).ty.shape
    }
    pub fn dtype(&self, v: ValueId) -> DType {
        self.node(v).ty.dtype
    }

    /// Adds a node after checking operands exist, the op's type rule, and (for inputs and params)
    /// that the name is new.
    pub fn add(
        &mut self,
        op: Op,
        inputs: &[ValueId],
        name: Option<String>,
    ) -> Result<ValueId, IrError> {
        for v in inputs {
            if !self.contains(*v) {
                return Err(IrError::UnknownValue { value: *v });
            }
        }
        match &op {
            Op::Input { name, .. } if self.find_input(name).is_some() => {
                return Err(IrError::DuplicateName {
                    kind: "input",
                    name: name.clone(),
                })
            }
            Op::Param { name, .. } if self.find_param(name).is_some() => {
                return Err(IrError::DuplicateName {
                    kind: "param",
                    name: name.clone(),
                })
            }
            _ => {}
        }
        let types: Vec<&TensorType> = inputs.iter().map(|v| self.ty(*v)).collect();
        let ty = infer(&op, &types)?;
        Ok(self.add_unchecked(op, inputs, ty, name))
    }

    /// Adds a node with a given type and no checks at all; for passes and for testing the verifier.
    /// Operands that do not exist get no edge (the verifier reports them).
    pub fn add_unchecked(
        &mut self,
        op: Op,
        inputs: &[ValueId],
        ty: TensorType,
        name: Option<String>,
    ) -> ValueId {
        let seq = self.next_seq;
        self.next_seq += 1;
        let key = source_key(&op);
        let idx = self.g.add_node(Node {
            op,
            inputs: inputs.to_vec(),
            ty,
            name,
            seq,
        });
        for (pos, v) in inputs.iter().enumerate() {
            if self.contains(*v) {
                self.g.add_edge(v.idx(), idx, pos as u32);
            }
        }
        let v = ValueId::from_idx(idx);
        if let Some(key) = key {
            self.sources.entry(key).or_insert(v);
        }
        v
    }

    /// Drops `v` from the source index (re-pointing the entry at another source of the same
    /// name, if a malformed graph has one).
    fn unindex(&mut self, v: ValueId) {
        let Some(key) = self.get(v).and_then(|n| source_key(&n.op)) else {
            return;
        };
        if self.sources.get(&key) != Some(&v) {
            return;
        }
        self.sources.remove(&key);
        let other = self
            .values()
            .into_iter()
            .find(|u| *u != v && source_key(&self.node(*u).op).as_ref() == Some(&key));
        if let Some(u) = other {
            self.sources.insert(key, u);
        }
    }

    /// All values in insertion order.
    pub fn values(&self) -> Vec<ValueId> {
        // Sort (seq, id) pairs: looking nodes up inside the comparisons is n log n cache misses.
        let mut vs: Vec<(u64, ValueId)> = self
            .g
            .node_indices()
            .map(|i| (self.g[i].seq, ValueId::from_idx(i)))
            .collect();
        vs.sort_unstable();
        vs.into_iter().map(|(_, v)| v).collect()
    }

    /// Topological order; among ready nodes the earliest inserted goes first, so the order is a
    /// function of the graph's history only.
    pub fn topo_order(&self) -> Result<Vec<ValueId>, IrError> {
        let mut indeg: BTreeMap<ValueId, usize> = BTreeMap::new();
        let mut heap = BinaryHeap::new();
        for i in self.g.node_indices() {
            let v = ValueId::from_idx(i);
            let d = self.g.edges_directed(i, Direction::Incoming).count();
            indeg.insert(v, d);
            if d == 0 {
                heap.push(Reverse((self.node(v).seq, v)));
            }
        }
        let mut order = Vec::with_capacity(self.len());
        while let Some(Reverse((_, v))) = heap.pop() {
            order.push(v);
            for e in self.g.edges_directed(v.idx(), Direction::Outgoing) {
                let u = ValueId::from_idx(e.target());
                let d = indeg.get_mut(&u).expect("edge target exists");
                *d -= 1;
                if *d == 0 {
                    heap.push(Reverse((self.node(u).seq, u)));
                }
            }
        }
        if order.len() != self.len() {
            return Err(IrError::Cycle);
        }
        Ok(order)
    }

    /// The nodes that use `v` as an operand, in insertion order, without repeats.
    pub fn users(&self, v: ValueId) -> Vec<ValueId> {
        let mut us: Vec<ValueId> = self
            .g
            .edges_directed(v.idx(), Direction::Outgoing)
            .map(|e| ValueId::from_idx(e.target()))
            .collect();
        us.sort_by_key(|u| self.node(*u).seq);
        us.dedup();
        us
    }

    /// Replaces the operands of `v` (no type check; run the verifier).
    pub fn set_inputs(&mut self, v: ValueId, inputs: &[ValueId]) {
        let old: Vec<_> = self
            .g
            .edges_directed(v.idx(), Direction::Incoming)
            .map(|e| e.id())
            .collect();
        for e in old {
            self.g.remove_edge(e);
        }
        for (pos, u) in inputs.iter().enumerate() {
            if self.contains(*u) {
                self.g.add_edge(u.idx(), v.idx(), pos as u32);
            }
        }
        if let Some(n) = self.g.node_weight_mut(v.idx()) {
            n.inputs = inputs.to_vec();
        }
    }

    /// Replaces the op and type of `v`, keeping its operands (no check; run the verifier).
    pub fn set_op(&mut self, v: ValueId, op: Op, ty: TensorType) {
        let key = source_key(&op);
        let same_key = self.get(v).map(|n| source_key(&n.op)) == Some(key.clone());
        if !same_key {
            self.unindex(v);
        }
        if let Some(n) = self.g.node_weight_mut(v.idx()) {
            n.op = op;
            n.ty = ty;
            if let (false, Some(key)) = (same_key, key) {
                self.sources.entry(key).or_insert(v);
            }
        }
    }

    pub fn set_name(&mut self, v: ValueId, name: Option<String>) {
        if let Some(n) = self.g.node_weight_mut(v.idx()) {
            n.name = name;
        }
    }

    /// Makes every use of `old` (operands, outputs, updates) a use of `new`.
    pub fn replace_all_uses(&mut self, old: ValueId, new: ValueId) {
        for u in self.users(old) {
            let inputs: Vec<ValueId> = self
                .node(u)
                .inputs
                .iter()
                .map(|x| if *x == old { new } else { *x })
                .collect();
            self.set_inputs(u, &inputs);
        }
        for o in &mut self.outputs {
            if o.value == old {
                o.value = new;
            }
        }
        for s in &mut self.updates {
            if s.value == old {
                s.value = new;
            }
        }
    }

    /// Removes `v` and its edges. Users of `v` are left with a dangling operand the verifier reports.
    pub fn remove(&mut self, v: ValueId) -> Option<Node> {
        self.unindex(v);
        self.g.remove_node(v.idx())
    }

    pub fn add_output(&mut self, name: &str, value: ValueId) -> Result<(), IrError> {
        if !self.contains(value) {
            return Err(IrError::UnknownValue { value });
        }
        if self.output(name).is_some() {
            return Err(IrError::DuplicateName {
                kind: "output",
                name: name.to_string(),
            });
        }
        self.outputs.push(NamedValue {
            name: name.to_string(),
            value,
        });
        Ok(())
    }

    /// Records `target ← value`; `target` must not be updated twice.
    pub fn add_update(&mut self, target: &str, value: ValueId) -> Result<(), IrError> {
        if !self.contains(value) {
            return Err(IrError::UnknownValue { value });
        }
        if self.updates.iter().any(|u| u.target == target) {
            return Err(IrError::DuplicateName {
                kind: "update target",
                name: target.to_string(),
            });
        }
        self.updates.push(StateUpdate {
            target: target.to_string(),
            value,
        });
        Ok(())
    }

    pub fn outputs(&self) -> &[NamedValue] {
        &self.outputs
    }
    pub fn output(&self, name: &str) -> Option<ValueId> {
        self.outputs
            .iter()
            .find(|o| o.name == name)
            .map(|o| o.value)
    }
    pub fn updates(&self) -> &[StateUpdate] {
        &self.updates
    }
    /// Removes every output (e.g. to keep only the loss before autodiff).
    pub fn clear_outputs(&mut self) {
        self.outputs.clear();
    }

    /// Params in insertion order.
    pub fn params(&self) -> Vec<ValueId> {
        self.values()
            .into_iter()
            .filter(|v| matches!(self.node(*v).op, Op::Param { .. }))
            .collect()
    }
    /// Inputs in insertion order.
    pub fn inputs(&self) -> Vec<ValueId> {
        self.values()
            .into_iter()
            .filter(|v| matches!(self.node(*v).op, Op::Input { .. }))
            .collect()
    }
    pub fn find_param(&self, name: &str) -> Option<ValueId> {
        self.sources.get(&(true, name.to_string())).copied()
    }
    pub fn find_input(&self, name: &str) -> Option<ValueId> {
        self.sources.get(&(false, name.to_string())).copied()
    }

    /// Number of parameter elements (all params, frozen included), as a dim.
    pub fn param_count(&self) -> Dim {
        self.params()
            .iter()
            .fold(Dim::c(0), |acc, v| acc.add(&numel(self.shape(*v))))
    }
    /// Number of trainable parameter elements.
    pub fn trainable_param_count(&self) -> Dim {
        self.params()
            .iter()
            .filter(|v| {
                matches!(
                    self.node(**v).op,
                    Op::Param {
                        trainable: true,
                        ..
                    }
                )
            })
            .fold(Dim::c(0), |acc, v| acc.add(&numel(self.shape(*v))))
    }
    /// Bytes of parameter storage in their dtypes.
    pub fn param_bytes(&self) -> Dim {
        self.params().iter().fold(Dim::c(0), |acc, v| {
            acc.add(&numel(self.shape(*v)).mul(&Dim::c(self.dtype(*v).size_bytes() as i64)))
        })
    }

    /// Total FLOPs of one evaluation of every node (conventions in `ops`).
    pub fn flops(&self, b: &Bindings) -> Result<u64, IrError> {
        let mut total: u64 = 0;
        for v in self.values() {
            let n = self.node(v);
            let ins: Vec<Vec<usize>> = n
                .inputs
                .iter()
                .map(|u| bind_shape(self.shape(*u), b))
                .collect::<Result<_, _>>()?;
            let ins_ref: Vec<&[usize]> = ins.iter().map(|s| s.as_slice()).collect();
            let out = bind_shape(&n.ty.shape, b)?;
            total = total.saturating_add(flops(&n.op, &ins_ref, &out));
        }
        Ok(total)
    }

    /// A copy with every symbol substituted; every type is re-inferred (so a slice that runs past
    /// its axis for these sizes is an error here), and every dim must end up constant. Value ids
    /// are preserved.
    pub fn bind(&self, b: &Bindings) -> Result<Graph, IrError> {
        let mut out = self.clone();
        for v in self.topo_order()? {
            let op = map_dims(&self.node(v).op, &|d| d.substitute(b));
            let types: Vec<TensorType> = self
                .node(v)
                .inputs
                .iter()
                .map(|u| out.ty(*u).clone())
                .collect();
            let refs: Vec<&TensorType> = types.iter().collect();
            let ty = infer(&op, &refs)?;
            for d in &ty.shape {
                if let Some(s) = d.symbols().first() {
                    return Err(IrError::UnboundSymbol {
                        symbol: s.as_str().to_string(),
                    });
                }
                if let Some(c) = d.as_const() {
                    if c < 0 {
                        return Err(IrError::NegativeDim {
                            dim: d.to_string(),
                            value: c,
                        });
                    }
                }
            }
            out.set_op(v, op, ty);
        }
        Ok(out)
    }
}

/// Applies `f` to every dim inside an op's attributes.
pub fn map_dims(op: &Op, f: &dyn Fn(&Dim) -> Dim) -> Op {
    let shape = |s: &Shape| -> Shape { s.iter().map(f).collect() };
    match op {
        Op::Input {
            name,
            shape: s,
            dtype,
        } => Op::Input {
            name: name.clone(),
            shape: shape(s),
            dtype: *dtype,
        },
        Op::Param {
            name,
            shape: s,
            dtype,
            init,
            trainable,
        } => Op::Param {
            name: name.clone(),
            shape: shape(s),
            dtype: *dtype,
            init: init.clone(),
            trainable: *trainable,
        },
        Op::Iota {
            shape: s,
            axis,
            dtype,
        } => Op::Iota {
            shape: shape(s),
            axis: *axis,
            dtype: *dtype,
        },
        Op::RandUniform { shape: s, stream } => Op::RandUniform {
            shape: shape(s),
            stream: *stream,
        },
        Op::Broadcast { shape: s, axes } => Op::Broadcast {
            shape: shape(s),
            axes: axes.clone(),
        },
        Op::Reshape { shape: s } => Op::Reshape { shape: shape(s) },
        Op::Slice {
            axis,
            start,
            end,
            step,
        } => Op::Slice {
            axis: *axis,
            start: f(start),
            end: f(end),
            step: *step,
        },
        Op::Pad {
            axis,
            before,
            after,
        } => Op::Pad {
            axis: *axis,
            before: f(before),
            after: f(after),
        },
        Op::ScatterAdd { rows } => Op::ScatterAdd { rows: f(rows) },
        Op::PutAlong { size } => Op::PutAlong { size: f(size) },
        Op::DimConst { dim, dtype } => {
            // Folded to a constant once its symbols are bound.
            let d = f(dim);
            match d.as_const() {
                Some(c) => Op::Constant {
                    value: c as f64,
                    dtype: *dtype,
                },
                None => Op::DimConst {
                    dim: d,
                    dtype: *dtype,
                },
            }
        }
        Op::Constant { .. }
        | Op::StopGradient
        | Op::Unary(_)
        | Op::Cast { .. }
        | Op::PowConst { .. }
        | Op::Binary(_)
        | Op::Compare(_)
        | Op::Select
        | Op::Permute { .. }
        | Op::Concat { .. }
        | Op::ReduceSum { .. }
        | Op::ReduceMax { .. }
        | Op::MatMul { .. }
        | Op::Gather
        | Op::TakeAlong
        | Op::Attention(_)
        | Op::AttentionBackward { .. } => op.clone(),
    }
}

/// Builds a graph op by op, typing each op as it is added, and names new nodes after the current
/// scope path (`push_scope("blocks.3")`, `push_scope("attn")` → `blocks.3.attn`).
#[derive(Clone, Debug, Default)]
pub struct Builder {
    graph: Graph,
    scopes: Vec<String>,
}

impl Builder {
    pub fn new() -> Self {
        Self::default()
    }
    /// Continues building on an existing graph (autodiff and passes do this).
    pub fn from_graph(graph: Graph) -> Self {
        Builder {
            graph,
            scopes: Vec::new(),
        }
    }
    pub fn finish(self) -> Graph {
        self.graph
    }
    pub fn graph(&self) -> &Graph {
        &self.graph
    }
    pub fn graph_mut(&mut self) -> &mut Graph {
        &mut self.graph
    }
    pub fn ty(&self, v: ValueId) -> &TensorType {
        self.graph.ty(v)
    }
    pub fn shape(&self, v: ValueId) -> &Shape {
        self.graph.shape(v)
    }
    pub fn dtype(&self, v: ValueId) -> DType {
        self.graph.dtype(v)
    }

    pub fn push_scope(&mut self, segment: impl Into<String>) {
        self.scopes.push(segment.into());
    }
    pub fn pop_scope(&mut self) -> Option<String> {
        self.scopes.pop()
    }
    /// The current name path (`blocks.3.attn`), `None` at top level.
    pub fn scope_path(&self) -> Option<String> {
        if self.scopes.is_empty() {
            None
        } else {
            Some(self.scopes.join("."))
        }
    }
    /// Replaces the scope stack (autodiff names backward nodes after their forward node).
    pub fn set_scope_path(&mut self, path: Option<&str>) {
        self.scopes = path.map(|p| vec![p.to_string()]).unwrap_or_default();
    }
    /// Names `v` `<scope>.<leaf>` (or `leaf` at top level).
    pub fn label(&mut self, v: ValueId, leaf: &str) {
        let name = match self.scope_path() {
            Some(p) => format!("{p}.{leaf}"),
            None => leaf.to_string(),
        };
        self.graph.set_name(v, Some(name));
    }

    /// Adds any op; its node is named after the current scope.
    pub fn op(&mut self, op: Op, inputs: &[ValueId]) -> Result<ValueId, IrError> {
        let name = self.scope_path();
        self.graph.add(op, inputs, name)
    }

    pub fn input(&mut self, name: &str, shape: Shape, dtype: DType) -> Result<ValueId, IrError> {
        let v = self.op(
            Op::Input {
                name: name.to_string(),
                shape,
                dtype,
            },
            &[],
        )?;
        self.graph.set_name(v, Some(name.to_string()));
        Ok(v)
    }
    /// A trainable param; its node's name path is the param name.
    pub fn param(
        &mut self,
        name: &str,
        shape: Shape,
        dtype: DType,
        init: Init,
    ) -> Result<ValueId, IrError> {
        self.param_with(name, shape, dtype, init, true)
    }
    pub fn param_with(
        &mut self,
        name: &str,
        shape: Shape,
        dtype: DType,
        init: Init,
        trainable: bool,
    ) -> Result<ValueId, IrError> {
        let v = self.op(
            Op::Param {
                name: name.to_string(),
                shape,
                dtype,
                init,
                trainable,
            },
            &[],
        )?;
        self.graph.set_name(v, Some(name.to_string()));
        Ok(v)
    }
    /// A scalar constant (shape `[]`).
    pub fn constant(&mut self, value: f64, dtype: DType) -> ValueId {
        let name = self.scope_path();
        self.graph.add_unchecked(
            Op::Constant { value, dtype },
            &[],
            TensorType::new(dtype, vec![]),
            name,
        )
    }
    /// `value` broadcast to `shape`.
    pub fn full(&mut self, value: f64, shape: &[Dim], dtype: DType) -> Result<ValueId, IrError> {
        let c = self.constant(value, dtype);
        if shape.is_empty() {
            return Ok(c);
        }
        self.op(
            Op::Broadcast {
                shape: shape.to_vec(),
                axes: (0..shape.len()).collect(),
            },
            &[c],
        )
    }
    /// `value` with the type of `like`.
    pub fn full_like(&mut self, value: f64, like: ValueId) -> Result<ValueId, IrError> {
        let t = self.ty(like).clone();
        self.full(value, &t.shape, t.dtype)
    }
    pub fn iota(&mut self, shape: Shape, axis: usize, dtype: DType) -> Result<ValueId, IrError> {
        self.op(Op::Iota { shape, axis, dtype }, &[])
    }
    pub fn rand_uniform(&mut self, shape: Shape, stream: u64) -> Result<ValueId, IrError> {
        self.op(Op::RandUniform { shape, stream }, &[])
    }

    pub fn unary(&mut self, u: UnaryOp, x: ValueId) -> Result<ValueId, IrError> {
        self.op(Op::Unary(u), &[x])
    }
    pub fn neg(&mut self, x: ValueId) -> Result<ValueId, IrError> {
        self.unary(UnaryOp::Neg, x)
    }
    pub fn exp(&mut self, x: ValueId) -> Result<ValueId, IrError> {
        self.unary(UnaryOp::Exp, x)
    }
    pub fn log(&mut self, x: ValueId) -> Result<ValueId, IrError> {
        self.unary(UnaryOp::Log, x)
    }
    pub fn sqrt(&mut self, x: ValueId) -> Result<ValueId, IrError> {
        self.unary(UnaryOp::Sqrt, x)
    }
    pub fn recip(&mut self, x: ValueId) -> Result<ValueId, IrError> {
        self.unary(UnaryOp::Recip, x)
    }
    pub fn tanh(&mut self, x: ValueId) -> Result<ValueId, IrError> {
        self.unary(UnaryOp::Tanh, x)
    }
    pub fn erf(&mut self, x: ValueId) -> Result<ValueId, IrError> {
        self.unary(UnaryOp::Erf, x)
    }
    pub fn abs(&mut self, x: ValueId) -> Result<ValueId, IrError> {
        self.unary(UnaryOp::Abs, x)
    }
    pub fn cast(&mut self, x: ValueId, to: DType) -> Result<ValueId, IrError> {
        self.op(Op::Cast { to }, &[x])
    }
    pub fn pow_const(&mut self, x: ValueId, p: f64) -> Result<ValueId, IrError> {
        self.op(Op::PowConst { p }, &[x])
    }

    /// Equal-shape binary op.
    pub fn binary(&mut self, b: BinaryOp, x: ValueId, y: ValueId) -> Result<ValueId, IrError> {
        self.op(Op::Binary(b), &[x, y])
    }
    pub fn add(&mut self, x: ValueId, y: ValueId) -> Result<ValueId, IrError> {
        self.binary(BinaryOp::Add, x, y)
    }
    pub fn sub(&mut self, x: ValueId, y: ValueId) -> Result<ValueId, IrError> {
        self.binary(BinaryOp::Sub, x, y)
    }
    pub fn mul(&mut self, x: ValueId, y: ValueId) -> Result<ValueId, IrError> {
        self.binary(BinaryOp::Mul, x, y)
    }
    pub fn div(&mut self, x: ValueId, y: ValueId) -> Result<ValueId, IrError> {
        self.binary(BinaryOp::Div, x, y)
    }
    pub fn max(&mut self, x: ValueId, y: ValueId) -> Result<ValueId, IrError> {
        self.binary(BinaryOp::Max, x, y)
    }
    pub fn min(&mut self, x: ValueId, y: ValueId) -> Result<ValueId, IrError> {
        self.binary(BinaryOp::Min, x, y)
    }
    pub fn compare(&mut self, c: CmpOp, x: ValueId, y: ValueId) -> Result<ValueId, IrError> {
        self.op(Op::Compare(c), &[x, y])
    }
    pub fn select(&mut self, cond: ValueId, a: ValueId, b: ValueId) -> Result<ValueId, IrError> {
        self.op(Op::Select, &[cond, a, b])
    }

    /// Numpy-style broadcast of two operands to their common shape, then `op` (a `Binary` or
    /// `Compare` op). Dims match when equal or when one is the constant 1.
    pub fn binary_broadcast(&mut self, op: Op, x: ValueId, y: ValueId) -> Result<ValueId, IrError> {
        if !matches!(op, Op::Binary(_) | Op::Compare(_)) {
            return Err(IrError::BadAttribute {
                op: op.name().to_string(),
                input: None,
                detail: "binary_broadcast takes a binary or comparison op".into(),
            });
        }
        let (tx, ty) = (self.ty(x).clone(), self.ty(y).clone());
        let shape =
            broadcast_shapes(&tx.shape, &ty.shape).ok_or_else(|| IrError::ShapeMismatch {
                op: op.name().to_string(),
                lhs: tx.clone(),
                rhs: ty.clone(),
                detail: "shapes do not broadcast".into(),
            })?;
        let bx = self.broadcast_to(x, &shape)?;
        let by = self.broadcast_to(y, &shape)?;
        self.op(op, &[bx, by])
    }

    /// Numpy-style `broadcast_to`: prepends axes and expands size-1 axes, emitting a `Reshape`
    /// (dropping the expanded 1s) and a `Broadcast`; returns `x` itself when nothing changes.
    pub fn broadcast_to(&mut self, x: ValueId, shape: &[Dim]) -> Result<ValueId, IrError> {
        let t = self.ty(x).clone();
        let err = || IrError::ShapeMismatch {
            op: "broadcast".to_string(),
            lhs: t.clone(),
            rhs: TensorType::new(t.dtype, shape.to_vec()),
            detail: "operand does not broadcast to the target shape".into(),
        };
        if t.rank() > shape.len() {
            return Err(err());
        }
        let off = shape.len() - t.rank();
        let mut axes: Vec<usize> = (0..off).collect();
        let mut kept = Shape::new();
        for (i, d) in t.shape.iter().enumerate() {
            let o = &shape[off + i];
            if d == o {
                kept.push(d.clone());
            } else if d.as_const() == Some(1) {
                axes.push(off + i);
            } else {
                return Err(err());
            }
        }
        if axes.is_empty() {
            return Ok(x);
        }
        let src = if kept.len() == t.rank() {
            x
        } else {
            self.reshape(x, kept)?
        };
        self.op(
            Op::Broadcast {
                shape: shape.to_vec(),
                axes,
            },
            &[src],
        )
    }

    /// Adds new axes `axes` of the output `shape` (the raw `Broadcast` op).
    pub fn broadcast_in(
        &mut self,
        x: ValueId,
        shape: Shape,
        axes: Vec<usize>,
    ) -> Result<ValueId, IrError> {
        self.op(Op::Broadcast { shape, axes }, &[x])
    }
    pub fn reshape(&mut self, x: ValueId, shape: Shape) -> Result<ValueId, IrError> {
        self.op(Op::Reshape { shape }, &[x])
    }
    pub fn permute(&mut self, x: ValueId, perm: Vec<usize>) -> Result<ValueId, IrError> {
        self.op(Op::Permute { perm }, &[x])
    }
    /// Swaps two axes.
    pub fn transpose(&mut self, x: ValueId, a: usize, b: usize) -> Result<ValueId, IrError> {
        let r = self.ty(x).rank();
        let mut perm: Vec<usize> = (0..r).collect();
        if a >= r || b >= r {
            return Err(IrError::BadAttribute {
                op: "permute".into(),
                input: Some(self.ty(x).clone()),
                detail: format!("transpose axes {a}, {b} out of range"),
            });
        }
        perm.swap(a, b);
        self.permute(x, perm)
    }
    pub fn slice(
        &mut self,
        x: ValueId,
        axis: usize,
        start: Dim,
        end: Dim,
        step: i64,
    ) -> Result<ValueId, IrError> {
        self.op(
            Op::Slice {
                axis,
                start,
                end,
                step,
            },
            &[x],
        )
    }
    pub fn pad(
        &mut self,
        x: ValueId,
        axis: usize,
        before: Dim,
        after: Dim,
    ) -> Result<ValueId, IrError> {
        self.op(
            Op::Pad {
                axis,
                before,
                after,
            },
            &[x],
        )
    }
    pub fn concat(&mut self, xs: &[ValueId], axis: usize) -> Result<ValueId, IrError> {
        self.op(Op::Concat { axis }, xs)
    }
    pub fn reduce_sum(
        &mut self,
        x: ValueId,
        axes: Vec<usize>,
        keepdim: bool,
    ) -> Result<ValueId, IrError> {
        self.op(Op::ReduceSum { axes, keepdim }, &[x])
    }
    pub fn reduce_max(
        &mut self,
        x: ValueId,
        axes: Vec<usize>,
        keepdim: bool,
    ) -> Result<ValueId, IrError> {
        self.op(Op::ReduceMax { axes, keepdim }, &[x])
    }
    pub fn matmul(
        &mut self,
        a: ValueId,
        b: ValueId,
        transpose_a: bool,
        transpose_b: bool,
    ) -> Result<ValueId, IrError> {
        self.op(
            Op::MatMul {
                transpose_a,
                transpose_b,
            },
            &[a, b],
        )
    }
    pub fn gather(&mut self, table: ValueId, idx: ValueId) -> Result<ValueId, IrError> {
        self.op(Op::Gather, &[table, idx])
    }
    pub fn scatter_add(
        &mut self,
        values: ValueId,
        idx: ValueId,
        rows: Dim,
    ) -> Result<ValueId, IrError> {
        self.op(Op::ScatterAdd { rows }, &[values, idx])
    }
    pub fn take_along(&mut self, x: ValueId, idx: ValueId) -> Result<ValueId, IrError> {
        self.op(Op::TakeAlong, &[x, idx])
    }
    pub fn put_along(
        &mut self,
        values: ValueId,
        idx: ValueId,
        size: Dim,
    ) -> Result<ValueId, IrError> {
        self.op(Op::PutAlong { size }, &[values, idx])
    }

    pub fn output(&mut self, name: &str, v: ValueId) -> Result<(), IrError> {
        self.graph.add_output(name, v)
    }
    pub fn update(&mut self, target: &str, v: ValueId) -> Result<(), IrError> {
        self.graph.add_update(target, v)
    }
}

/// The numpy broadcast of two shapes (aligned right; equal dims or a constant 1).
pub fn broadcast_shapes(a: &[Dim], b: &[Dim]) -> Option<Shape> {
    let r = a.len().max(b.len());
    let one = Dim::c(1);
    let mut out = Shape::with_capacity(r);
    for i in 0..r {
        let da = if i + a.len() >= r {
            &a[i + a.len() - r]
        } else {
            &one
        };
        let db = if i + b.len() >= r {
            &b[i + b.len() - r]
        } else {
            &one
        };
        if da == db || db.as_const() == Some(1) {
            out.push(da.clone());
        } else if da.as_const() == Some(1) {
            out.push(db.clone());
        } else {
            return None;
        }
    }
    Some(out)
}

/// Names of all sources, for the verifier's uniqueness check.
pub(crate) fn duplicate_source_names(g: &Graph) -> Vec<(&'static str, String)> {
    let mut seen: HashSet<(&'static str, String)> = HashSet::new();
    let mut dups = Vec::new();
    for v in g.values() {
        let key = match &g.node(v).op {
            Op::Input { name, .. } => ("input", name.clone()),
            Op::Param { name, .. } => ("param", name.clone()),
            _ => continue,
        };
        if !seen.insert(key.clone()) {
            dups.push(key);
        }
    }
    dups
}
