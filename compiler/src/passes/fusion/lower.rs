//! From a placement to a `Program`: buffers and views, kernels for every live step, the step
//! order, outputs and updates (in place where safe).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};

use super::analyze::{strides, Cat, Info};
use super::emit::emit_group;
use super::place::{gemm_operand, Plan, StepKind};
use super::FusionError;
use crate::interp::{self, Precision, RunOptions, TensorData};
use crate::ir::{AttnGrad, AttnMask, Bindings, DType, Op};
use crate::kernel::data::{DataKernel, ReduceKind, Window, WordType};
use crate::kernel::{
    schedule, AttentionKernel, AttentionLayout, AttentionMask, Direction, GemmKernel, GemmOperand,
    HeadLayout, Kernel,
};
use crate::program::{
    BufferDecl, BufferId, BufferKind, ConstData, InputDecl, Launch, OutputDecl, Program, StateDecl,
    Step, UpdateDecl, View,
};

struct Lowerer<'a, 'g> {
    info: &'a Info<'g>,
    plan: &'a Plan,
    p: Program,
    /// Storage of nodes that own data.
    store: Vec<Option<View>>,
    /// The logsumexp buffer of each attention forward node.
    lse: HashMap<usize, View>,
    /// Sort key of each step (smallest output node).
    keys: Vec<usize>,
}

pub(super) fn lower(info: &Info, plan: &Plan) -> Result<Program, FusionError> {
    let mut l = Lowerer {
        info,
        plan,
        p: Program::default(),
        store: vec![None; info.order.len()],
        lse: HashMap::new(),
        keys: Vec::new(),
    };
    l.sources()?;
    l.constants()?;
    l.temps()?;
    l.steps()?;
    l.order();
    l.results()?;
    l.in_place();
    Ok(l.p)
}

fn word_of_dtype(d: DType) -> WordType {
    if d.is_float() {
        WordType::F32
    } else {
        WordType::I32
    }
}

impl Lowerer<'_, '_> {
    fn buffer(
        &mut self,
        len: usize,
        word: WordType,
        kind: BufferKind,
        shape: Vec<usize>,
        origin: String,
    ) -> BufferId {
        let id = BufferId(self.p.buffers.len() as u32);
        self.p.buffers.push(BufferDecl {
            len,
            word,
            kind,
            shape,
            origin,
        });
        id
    }

    fn temp_for(&mut self, i: usize, word: WordType) -> View {
        let n = self.info.numel(i);
        let b = self.buffer(
            n,
            word,
            BufferKind::Temp,
            self.info.shape[i].clone(),
            self.info.origin(i),
        );
        let v = View::whole(b, n);
        self.store[i] = Some(v);
        v
    }

    /// Inputs and params (all of the graph's, needed or not, so the interface is stable).
    fn sources(&mut self) -> Result<(), FusionError> {
        let g = self.info.g;
        for v in g.inputs().into_iter().chain(g.params()) {
            let node = g.node(v);
            let shape: Vec<usize> = node
                .shape()
                .iter()
                .map(|d| d.as_const().unwrap_or(0).max(0) as usize)
                .collect();
            let n: usize = shape.iter().product();
            let word = word_of_dtype(node.dtype());
            let (kind, name) = match node.op() {
                Op::Input { name, .. } => (BufferKind::Input(name.clone()), name.clone()),
                Op::Param { name, .. } => (BufferKind::State(name.clone()), name.clone()),
                _ => continue,
            };
            if node.dtype().is_float() && node.dtype() != DType::F32 || node.dtype() == DType::Bool
            {
                return Err(FusionError::DType {
                    value: name,
                    dtype: node.dtype().to_string(),
                });
            }
            let b = self.buffer(n, word, kind, shape.clone(), name.clone());
            match node.op() {
                Op::Input { .. } => self.p.inputs.push(InputDecl {
                    name,
                    buffer: b,
                    shape,
                }),
                Op::Param {
                    init, trainable, ..
                } => self.p.state.push(StateDecl {
                    name,
                    buffer: b,
                    shape,
                    init: init.clone(),
                    trainable: *trainable,
                }),
                _ => {}
            }
            if let Some(i) = self.info.idx.get(&v) {
                self.store[*i] = Some(View::whole(b, n));
            }
        }
        Ok(())
    }

    /// Compile-time buffers, computed by the interpreter in f32.
    fn constants(&mut self) -> Result<(), FusionError> {
        let wanted: Vec<usize> = (0..self.info.order.len())
            .filter(|i| self.plan.const_mat[*i])
            .collect();
        if wanted.is_empty() {
            return Ok(());
        }
        let ids: Vec<_> = wanted.iter().map(|i| self.info.order[*i]).collect();
        let opts = RunOptions {
            precision: Precision::Declared,
            ..Default::default()
        };
        let vals = interp::eval(
            self.info.g,
            &Bindings::new(),
            &HashMap::new(),
            &HashMap::new(),
            &opts,
            &ids,
        )
        .map_err(|e| FusionError::Unsupported {
            value: self.info.name(wanted[0]),
            op: "constant".into(),
            detail: format!("compile-time evaluation failed: {e}"),
        })?;
        for i in wanted {
            let t = &vals[&self.info.order[i]];
            let (data, word) = match &t.data {
                TensorData::Float(v) => (
                    ConstData::F32(v.iter().map(|x| *x as f32).collect()),
                    WordType::F32,
                ),
                TensorData::Int(v) => (
                    ConstData::I32(v.iter().map(|x| *x as i32).collect()),
                    WordType::I32,
                ),
                TensorData::Bool(v) => (
                    ConstData::I32(v.iter().map(|x| i32::from(*x)).collect()),
                    WordType::I32,
                ),
            };
            let n = t.data.len();
            let b = self.buffer(
                n,
                word,
                BufferKind::Const(data),
                t.shape.clone(),
                self.info.origin(i),
            );
            self.store[i] = Some(View::whole(b, n));
        }
        Ok(())
    }

    /// Buffers for materialised row values and kernel outputs.
    fn temps(&mut self) -> Result<(), FusionError> {
        let info = self.info;
        for i in 0..info.order.len() {
            if self.store[i].is_some() || !self.plan.mat[i] {
                continue;
            }
            let Some(h) = self.plan.home[i] else { continue };
            let word = match (&self.plan.steps[h].kind, info.cat[i]) {
                (StepKind::Group { .. }, _) => WordType::F32,
                (StepKind::Kernel, _) => self.kernel_word(i),
            };
            self.temp_for(i, word);
        }
        Ok(())
    }

    /// Word type of a kernel node's output.
    fn kernel_word(&self, i: usize) -> WordType {
        let info = self.info;
        match info.op(i) {
            Op::Gather => self.word(info.ins[i][0]),
            Op::Permute { .. }
            | Op::Slice { .. }
            | Op::Pad { .. }
            | Op::Concat { .. }
            | Op::Broadcast { .. } => self.word(info.ins[i][0]),
            _ => WordType::F32,
        }
    }

    /// Word type of the buffer holding node `u`'s data.
    fn word(&self, u: usize) -> WordType {
        let s = super::place::src_view(self.info, u);
        if let Some(v) = self.store[s] {
            return self.p.buffers[v.buf.index()].word;
        }
        match self.plan.home[s] {
            Some(h) if matches!(self.plan.steps[h].kind, StepKind::Kernel) => self.kernel_word(s),
            Some(_) => WordType::F32,
            None => word_of_dtype(self.info.dtype(s)),
        }
    }

    /// The view of node `u`'s data (through aliases and slice views).
    fn view(&self, u: usize) -> Result<View, FusionError> {
        let info = self.info;
        match info.cat[u] {
            Cat::Alias => {
                let v = self.view(info.ins[u][0])?;
                Ok(View {
                    len: info.numel(u),
                    ..v
                })
            }
            Cat::SliceView => {
                let x = info.ins[u][0];
                let v = self.view(x)?;
                let Op::Slice { axis, start, .. } = info.op(u) else {
                    unreachable!("slice views are slices")
                };
                let inner: usize = info.shape[x][axis + 1..].iter().product();
                let start = start.as_const().unwrap_or(0) as usize;
                Ok(View {
                    buf: v.buf,
                    offset: v.offset + start * inner,
                    len: info.numel(u),
                })
            }
            _ => self.store[u].ok_or_else(|| FusionError::Internal {
                value: info.name(u),
                detail: "read without a buffer".into(),
            }),
        }
    }

    fn push(
        &mut self,
        kernel: Kernel,
        inputs: Vec<View>,
        outputs: Vec<View>,
        launch: Launch,
        origin: String,
        key: usize,
    ) {
        let mut scopes: Vec<String> = Vec::new();
        if let Some(s) = self.plan.home[key] {
            for n in &self.plan.steps[s].nodes {
                let o = self.info.origin(*n);
                if !scopes.contains(&o) {
                    scopes.push(o);
                }
            }
        }
        if scopes.is_empty() {
            scopes.push(origin.clone());
        }
        self.p.steps.push(Step {
            kernel,
            inputs,
            outputs,
            launch,
            origin,
            scopes,
        });
        self.keys.push(key);
    }

    fn steps(&mut self) -> Result<(), FusionError> {
        let plan = self.plan;
        for s in 0..plan.steps.len() {
            let st = &plan.steps[s];
            if !st.alive || st.nodes.is_empty() {
                continue;
            }
            match st.kind {
                StepKind::Group { .. } => self.group_step(s)?,
                StepKind::Kernel => self.kernel_step(s)?,
            }
        }
        Ok(())
    }

    fn group_step(&mut self, g: usize) -> Result<(), FusionError> {
        let word = |u: usize| self.word(u);
        let Some(code) = emit_group(self.info, self.plan, g, &word)? else {
            return Ok(());
        };
        let inputs = code
            .inputs
            .iter()
            .map(|u| self.view(*u))
            .collect::<Result<Vec<_>, _>>()?;
        let outputs = code
            .outputs
            .iter()
            .map(|o| self.view(*o))
            .collect::<Result<Vec<_>, _>>()?;
        let origin = origins(self.info, &code.outputs);
        let key = code.outputs[0];
        self.push(
            Kernel::Row(code.program),
            inputs,
            outputs,
            Launch::Grid {
                rows: code.rows,
                cols: code.cols,
            },
            origin,
            key,
        );
        Ok(())
    }

    fn kernel_step(&mut self, s: usize) -> Result<(), FusionError> {
        let info = self.info;
        let nodes = self.plan.steps[s].nodes.clone();
        let i = nodes[0];
        if let Op::AttentionBackward { .. } = info.op(i) {
            return self.attention_backward(&nodes);
        }
        // A head merge whose operand the attention kernel writes into its buffer directly.
        if matches!(info.op(i), Op::Permute { .. }) && info.head_write[info.ins[i][0]] == Some(i) {
            return Ok(());
        }
        // Kernels nobody reads are dropped (a permute folded into a GEMM, for instance).
        let needs_lse = matches!(info.op(i), Op::Attention(_)) && self.attention_feeds_backward(i);
        let writes_merge = info.head_write[i];
        if !self.plan.mat[i] && !needs_lse && writes_merge.is_none() {
            return Ok(());
        }
        let out = match writes_merge {
            Some(p) => self.view(p)?,
            None => {
                if self.store[i].is_none() {
                    let w = self.kernel_word(i);
                    self.temp_for(i, w);
                }
                self.view(i)?
            }
        };
        let ins = info.ins[i].clone();
        let shape = |u: usize| info.shape[u].clone();
        let origin = info.origin(i);
        match info.op(i) {
            Op::MatMul {
                transpose_a,
                transpose_b,
            } => {
                let (a, b) = (ins[0], ins[1]);
                let (abase, at, abc) = gemm_operand(info, a);
                let (bbase, bt, bbc) = gemm_operand(info, b);
                let (sa, sb) = (shape(a), shape(b));
                let (ra, rb) = (sa.len(), sb.len());
                let (m, kk) = if *transpose_a {
                    (sa[ra - 1], sa[ra - 2])
                } else {
                    (sa[ra - 2], sa[ra - 1])
                };
                let nn = if *transpose_b { sb[rb - 2] } else { sb[rb - 1] };
                let batch: usize = sa[..ra - 2].iter().product();
                let mut g = GemmKernel {
                    batch,
                    m,
                    n: nn,
                    k: kk,
                    a: GemmOperand {
                        transposed: transpose_a ^ at,
                        batch_stride: if abc { 0 } else { m * kk },
                    },
                    b: GemmOperand {
                        transposed: transpose_b ^ bt,
                        batch_stride: if rb == 2 || bbc { 0 } else { kk * nn },
                    },
                    alpha: 1.0,
                    accumulate: false,
                };
                if g.batch > 1
                    && g.b.batch_stride == 0
                    && !g.a.transposed
                    && g.a.batch_stride == m * kk
                {
                    g.m *= g.batch;
                    g.batch = 1;
                }
                let inputs = vec![self.view(abase)?, self.view(bbase)?];
                self.push(Kernel::Gemm(g), inputs, vec![out], Launch::Once, origin, i);
            }
            Op::Attention(spec) => {
                let mut a = self.attention_kernel(spec, i, Direction::Forward);
                let mut inputs = Vec::new();
                let mut layouts = Vec::new();
                for slot in 0..ins.len() {
                    let (u, layout) = info.attention_operand(i, slot);
                    inputs.push(self.view(u)?);
                    layouts.push(layout);
                }
                (a.layout.q, a.layout.k, a.layout.v) = (layouts[0], layouts[1], layouts[2]);
                if writes_merge.is_some() {
                    a.layout.o = HeadLayout::SeqMajor;
                }
                let lse_n = a.batch * a.heads * a.q_len;
                let b = self.buffer(
                    lse_n,
                    WordType::F32,
                    BufferKind::Temp,
                    vec![a.batch, a.heads, a.q_len],
                    format!("{origin}.lse"),
                );
                let lse = View::whole(b, lse_n);
                self.lse.insert(i, lse);
                self.push(
                    Kernel::Attention(a),
                    inputs,
                    vec![out, lse],
                    Launch::Once,
                    origin,
                    i,
                );
            }
            Op::Permute { perm } => {
                let st = strides(&shape(ins[0]));
                let src = Window {
                    shape: shape(i),
                    strides: perm.iter().map(|p| st[*p]).collect(),
                    offset: 0,
                };
                self.data(
                    DataKernel::Copy {
                        src,
                        word: self.word(ins[0]),
                    },
                    &[ins[0]],
                    out,
                    origin,
                    i,
                )?;
            }
            Op::Slice {
                axis, start, step, ..
            } => {
                let st = strides(&shape(ins[0]));
                let mut strides_v = st.clone();
                strides_v[*axis] *= *step as usize;
                let src = Window {
                    shape: shape(i),
                    strides: strides_v,
                    offset: start.as_const().unwrap_or(0) as usize * st[*axis],
                };
                self.data(
                    DataKernel::Copy {
                        src,
                        word: self.word(ins[0]),
                    },
                    &[ins[0]],
                    out,
                    origin,
                    i,
                )?;
            }
            Op::Broadcast { axes, .. } => {
                let st = strides(&shape(ins[0]));
                let mut it = st.iter();
                let strides_v: Vec<usize> = (0..shape(i).len())
                    .map(|a| {
                        if axes.contains(&a) {
                            0
                        } else {
                            *it.next().unwrap_or(&0)
                        }
                    })
                    .collect();
                let src = Window {
                    shape: shape(i),
                    strides: strides_v,
                    offset: 0,
                };
                self.data(
                    DataKernel::Copy {
                        src,
                        word: self.word(ins[0]),
                    },
                    &[ins[0]],
                    out,
                    origin,
                    i,
                )?;
            }
            Op::Pad { axis, before, .. } => {
                let ost = strides(&shape(i));
                let part = Window {
                    shape: shape(ins[0]),
                    strides: ost.clone(),
                    offset: before.as_const().unwrap_or(0) as usize * ost[*axis],
                };
                let k = DataKernel::Assemble {
                    len: info.numel(i),
                    fill: Some(0.0),
                    parts: vec![part],
                    word: self.word(ins[0]),
                };
                self.data(k, &[ins[0]], out, origin, i)?;
            }
            Op::Concat { axis } => {
                let ost = strides(&shape(i));
                let mut off = 0;
                let mut parts = Vec::new();
                let word = self.word(ins[0]);
                for u in &ins {
                    if self.word(*u) != word {
                        return Err(FusionError::Unsupported {
                            value: info.name(i),
                            op: "concat".into(),
                            detail: "operands stored with different word types".into(),
                        });
                    }
                    parts.push(Window {
                        shape: shape(*u),
                        strides: ost.clone(),
                        offset: off * ost[*axis],
                    });
                    off += info.shape[*u][*axis];
                }
                let k = DataKernel::Assemble {
                    len: info.numel(i),
                    fill: None,
                    parts,
                    word,
                };
                self.data(k, &ins, out, origin, i)?;
            }
            Op::Gather => {
                let (t, ix) = (ins[0], ins[1]);
                let ts = shape(t);
                let k = DataKernel::Gather {
                    n: info.numel(ix),
                    rows: ts[0],
                    width: ts[1..].iter().product(),
                    idx: self.word(ix),
                    word: self.word(t),
                };
                self.data(k, &[t, ix], out, origin, i)?;
            }
            Op::ScatterAdd { .. } => {
                let (v, ix) = (ins[0], ins[1]);
                let n = info.numel(ix);
                let k = DataKernel::ScatterAdd {
                    n,
                    rows: shape(i)[0],
                    width: info.numel(v).checked_div(n).unwrap_or(0),
                    idx: self.word(ix),
                };
                self.data(k, &[v, ix], out, origin, i)?;
            }
            Op::ReduceSum { axes, .. } | Op::ReduceMax { axes, .. } => {
                let op = if matches!(info.op(i), Op::ReduceSum { .. }) {
                    ReduceKind::Sum
                } else {
                    ReduceKind::Max
                };
                let k = DataKernel::Reduce {
                    shape: shape(ins[0]),
                    axes: axes.clone(),
                    op,
                };
                self.data(k, &[ins[0]], out, origin, i)?;
            }
            Op::RandUniform { stream, .. } => {
                let k = DataKernel::RandUniform {
                    len: info.numel(i),
                    stream: *stream,
                };
                self.data(k, &[], out, origin, i)?;
            }
            op => {
                return Err(FusionError::Internal {
                    value: info.name(i),
                    detail: format!("`{}` reached the kernel lowering", op.name()),
                })
            }
        }
        Ok(())
    }

    fn data(
        &mut self,
        k: DataKernel,
        ins: &[usize],
        out: View,
        origin: String,
        key: usize,
    ) -> Result<(), FusionError> {
        let inputs = ins
            .iter()
            .map(|u| self.view(*u))
            .collect::<Result<Vec<_>, _>>()?;
        self.push(
            Kernel::Data(k),
            inputs,
            vec![out],
            Launch::Once,
            origin,
            key,
        );
        Ok(())
    }

    fn attention_feeds_backward(&self, i: usize) -> bool {
        self.info.users[i].iter().any(|u| {
            matches!(self.info.op(*u), Op::AttentionBackward { .. }) && self.info.ins[*u][3] == i
        })
    }

    fn attention_kernel(
        &self,
        spec: &crate::ir::AttnSpec,
        i: usize,
        direction: Direction,
    ) -> AttentionKernel {
        let info = self.info;
        let (q, k) = (&info.shape[info.ins[i][0]], &info.shape[info.ins[i][1]]);
        AttentionKernel {
            direction,
            batch: q[0],
            heads: q[1],
            kv_heads: k[1],
            q_len: q[2],
            kv_len: k[2],
            head_dim: q[3],
            scale: spec.scale as f32,
            mask: match spec.mask {
                AttnMask::Full => AttentionMask::Full,
                AttnMask::Causal => AttentionMask::Causal,
                AttnMask::Local { window } => AttentionMask::Local {
                    window: window.max(1) as usize,
                },
                AttnMask::Prefix => AttentionMask::PrefixLmLengths,
            },
            has_bias: spec.bias,
            key_padding: spec.key_padding,
            layout: AttentionLayout::HEAD_MAJOR,
        }
    }

    fn attention_backward(&mut self, nodes: &[usize]) -> Result<(), FusionError> {
        let info = self.info;
        let i = nodes[0];
        let Op::AttentionBackward { spec, .. } = info.op(i) else {
            unreachable!("checked by the caller")
        };
        let ins = info.ins[i].clone();
        let o = info.src(ins[3]);
        let lse = match (info.op(o), self.lse.get(&o)) {
            (Op::Attention(fs), Some(l)) if fs == spec && info.ins[o][..3] == ins[..3] => *l,
            _ => {
                return Err(FusionError::Unsupported {
                    value: info.name(i),
                    op: "attention_backward".into(),
                    detail: "its output operand is not the forward attention of the same operands"
                        .into(),
                })
            }
        };
        let mut a = self.attention_kernel(spec, i, Direction::Backward);
        let mut inputs = Vec::new();
        let mut layouts = Vec::new();
        for slot in 0..5 {
            let (u, layout) = info.attention_operand(i, slot);
            inputs.push(self.view(u)?);
            layouts.push(layout);
        }
        a.layout = AttentionLayout {
            q: layouts[0],
            k: layouts[1],
            v: layouts[2],
            o: layouts[3],
            d_o: layouts[4],
            ..AttentionLayout::HEAD_MAJOR
        };
        inputs.push(lse);
        for u in &ins[5..] {
            inputs.push(self.view(*u)?);
        }
        let mut wanted: Vec<AttnGrad> = vec![AttnGrad::Q, AttnGrad::K, AttnGrad::V];
        if spec.bias {
            wanted.push(AttnGrad::Bias);
        }
        let mut outputs = Vec::new();
        let origin = info.origin(i);
        for w in wanted {
            let node = nodes.iter().copied().find(|n| {
                matches!(info.op(*n), Op::AttentionBackward { wrt, .. } if *wrt == w)
                    && (self.plan.mat[*n] || info.head_write[*n].is_some())
            });
            let v = match node {
                Some(n) => match (info.head_write[n], self.store[n]) {
                    (Some(p), _) => {
                        let seq = HeadLayout::SeqMajor;
                        match w {
                            AttnGrad::Q => a.layout.dq = seq,
                            AttnGrad::K => a.layout.dk = seq,
                            AttnGrad::V => a.layout.dv = seq,
                            AttnGrad::Bias => {
                                return Err(FusionError::Internal {
                                    value: info.name(n),
                                    detail: "a bias gradient written into a head merge".into(),
                                })
                            }
                        }
                        self.view(p)?
                    }
                    (None, Some(v)) => v,
                    (None, None) => self.temp_for(n, WordType::F32),
                },
                None => {
                    let like = match w {
                        AttnGrad::Q => ins[0],
                        AttnGrad::K => ins[1],
                        AttnGrad::V => ins[2],
                        AttnGrad::Bias => ins[5],
                    };
                    let n = info.numel(like);
                    let b = self.buffer(
                        n,
                        WordType::F32,
                        BufferKind::Temp,
                        info.shape[like].clone(),
                        format!("{origin}.unused_d{}", w.name()),
                    );
                    View::whole(b, n)
                }
            };
            outputs.push(v);
        }
        self.push(
            Kernel::Attention(a),
            inputs,
            outputs,
            Launch::Once,
            origin,
            i,
        );
        Ok(())
    }

    /// Orders steps so that each runs after the writers of what it reads; among ready steps the
    /// one whose first output comes earliest in the graph goes first.
    fn order(&mut self) {
        let n = self.p.steps.len();
        let mut writer: HashMap<BufferId, usize> = HashMap::new();
        for (s, st) in self.p.steps.iter().enumerate() {
            for v in &st.outputs {
                writer.insert(v.buf, s);
            }
        }
        let mut indeg = vec![0usize; n];
        let mut succ: Vec<Vec<usize>> = vec![Vec::new(); n];
        for (s, st) in self.p.steps.iter().enumerate() {
            let mut preds: Vec<usize> = st
                .inputs
                .iter()
                .filter_map(|v| writer.get(&v.buf).copied())
                .filter(|w| *w != s)
                .collect();
            preds.sort_unstable();
            preds.dedup();
            indeg[s] = preds.len();
            for p in preds {
                succ[p].push(s);
            }
        }
        let mut heap: BinaryHeap<Reverse<(usize, usize)>> = (0..n)
            .filter(|s| indeg[*s] == 0)
            .map(|s| Reverse((self.keys[s], s)))
            .collect();
        let mut order = Vec::with_capacity(n);
        while let Some(Reverse((_, s))) = heap.pop() {
            order.push(s);
            for t in succ[s].clone() {
                indeg[t] -= 1;
                if indeg[t] == 0 {
                    heap.push(Reverse((self.keys[t], t)));
                }
            }
        }
        // A cycle would leave steps out; placement prevents it, and validation would report it.
        let mut steps: Vec<Option<Step>> = std::mem::take(&mut self.p.steps)
            .into_iter()
            .map(Some)
            .collect();
        let keys = std::mem::take(&mut self.keys);
        for s in order {
            if let Some(st) = steps[s].take() {
                self.p.steps.push(st);
                self.keys.push(keys[s]);
            }
        }
    }

    fn results(&mut self) -> Result<(), FusionError> {
        let g = self.info.g;
        for o in g.outputs() {
            let i = self.info.idx[&o.value];
            let view = self.view(i)?;
            let b = &mut self.p.buffers[view.buf.index()];
            if b.kind == BufferKind::Temp {
                b.kind = BufferKind::Output(o.name.clone());
            }
            self.p.outputs.push(OutputDecl {
                name: o.name.clone(),
                view,
                shape: self.info.shape[i].clone(),
            });
        }
        for u in g.updates() {
            let i = self.info.idx[&u.value];
            let view = self.view(i)?;
            self.p.updates.push(UpdateDecl {
                target: u.target.clone(),
                view,
            });
        }
        Ok(())
    }

    /// Lets the step that computes an update write the state buffer directly when it is a
    /// single-pass row program, the new value is read by nobody else, and every other reader of
    /// the old value runs before it.
    fn in_place(&mut self) {
        let mut readers: BTreeMap<BufferId, Vec<usize>> = BTreeMap::new();
        for (s, st) in self.p.steps.iter().enumerate() {
            for v in &st.inputs {
                readers.entry(v.buf).or_default().push(s);
            }
        }
        for ui in 0..self.p.updates.len() {
            let u = self.p.updates[ui].clone();
            let Some(state) = self.p.state_decl(&u.target).map(|s| s.buffer) else {
                continue;
            };
            let len = self.p.buffers[state.index()].len;
            if u.view.buf == state || u.view.offset != 0 || u.view.len != len {
                continue;
            }
            if self.p.buffers[u.view.buf.index()].kind != BufferKind::Temp
                || readers.get(&u.view.buf).is_some_and(|r| !r.is_empty())
                || self
                    .p
                    .updates
                    .iter()
                    .filter(|x| x.view.buf == u.view.buf)
                    .count()
                    != 1
            {
                continue;
            }
            let Some(w) = self
                .p
                .steps
                .iter()
                .position(|st| st.outputs.iter().any(|v| v.buf == u.view.buf))
            else {
                continue;
            };
            let single_pass = match &self.p.steps[w].kernel {
                Kernel::Row(prog) => schedule(prog)
                    .map(|s| s.passes().count() <= 1)
                    .unwrap_or(false),
                _ => false,
            };
            let late_reader = readers
                .get(&state)
                .is_some_and(|r| r.iter().any(|s| *s > w));
            if !single_pass || late_reader {
                continue;
            }
            for v in &mut self.p.steps[w].outputs {
                if v.buf == u.view.buf {
                    *v = View::whole(state, len);
                }
            }
            // The temporary is now unused; keep it declared (empty) so buffer ids stay stable.
            self.p.buffers[u.view.buf.index()].len = 0;
            self.p.buffers[u.view.buf.index()].shape = vec![0];
            self.p.updates[ui].view = View::whole(state, len);
        }
    }
}

fn origins(info: &Info, nodes: &[usize]) -> String {
    let mut names: Vec<String> = Vec::new();
    for n in nodes {
        let o = info.origin(*n);
        if !names.contains(&o) {
            names.push(o);
        }
    }
    match names.len() {
        0 => String::new(),
        1..=2 => names.join(", "),
        k => format!("{}, {} (+{})", names[0], names[1], k - 2),
    }
}
