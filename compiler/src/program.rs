//! The executable form of a compiled step: flat buffers and a schedule of kernels over them.
//!
//! Fusion (`passes::fusion::fuse`) turns a bound training graph into a `Program`; a runtime
//! executes it (`runtime::cpu::exec`), and [`reference`] executes it with plain loops as the
//! oracle. Everything is concrete: buffer lengths, kernel sizes, launch grids. Views (a buffer, an
//! offset, a length) let reshapes and contiguous slices share storage instead of copying.
//!
//! Buffers are arrays of 4-byte words, `f32` or `i32` ([`WordType`]). `Input` buffers are filled
//! from the run's named inputs, `State` buffers persist across steps (parameters and optimizer
//! state, initialised by the runtime from their `Init`), `Const` buffers hold compile-time data
//! (tables derived from iotas), `Output` buffers hold a named result at the end of the step, and
//! `Temp` buffers are scratch that a memory planner may overlap when their lifetimes do not.
//!
//! After the steps run, each update `target ← view` copies the view into the state buffer of
//! `target`, unless the view *is* that buffer (fusion makes the optimizer write in place when no
//! later step reads the old value).
//!
//! The printed form (`Display`) is what `kiln compile --emit kernels` shows and the snapshots
//! hold: a buffer table, then one line per step with its kernel kind, sizes, buffers and the
//! spec name path it came from; [`Program::listing`] adds the row-program bodies.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write};

use crate::ir::Init;
use crate::kernel::data::{self, WordType};
use crate::kernel::{AttentionKernel, AttentionMask, Direction, GemmKernel, Kernel};

/// A buffer of a program: `b<n>` in listings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BufferId(pub u32);

impl BufferId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for BufferId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b{}", self.0)
    }
}

/// Compile-time contents of a `Const` buffer.
#[derive(Clone, Debug, PartialEq)]
pub enum ConstData {
    F32(Vec<f32>),
    I32(Vec<i32>),
}

impl ConstData {
    /// The contents as 4-byte words.
    pub fn words(&self) -> Vec<u32> {
        match self {
            ConstData::F32(v) => v.iter().map(|x| x.to_bits()).collect(),
            ConstData::I32(v) => v.iter().map(|x| *x as u32).collect(),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum BufferKind {
    /// Filled from the named run input at the start of every step.
    Input(String),
    /// Persistent: a parameter or optimizer state tensor of this name.
    State(String),
    /// Holds the named output when the step ends (never reused within the step).
    Output(String),
    /// Scratch: live from its first write to its last read.
    Temp,
    /// Known at compile time; written once before the first step.
    Const(ConstData),
}

#[derive(Clone, Debug, PartialEq)]
pub struct BufferDecl {
    pub len: usize,
    pub word: WordType,
    pub kind: BufferKind,
    /// The logical shape (for listings and host transfers).
    pub shape: Vec<usize>,
    /// What it holds: the IR value's name path, or a description.
    pub origin: String,
}

/// `len` words of `buf` starting at `offset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct View {
    pub buf: BufferId,
    pub offset: usize,
    pub len: usize,
}

impl View {
    pub fn whole(buf: BufferId, len: usize) -> View {
        View {
            buf,
            offset: 0,
            len,
        }
    }
    pub fn end(&self) -> usize {
        self.offset + self.len
    }
}

impl fmt::Display for View {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.offset == 0 {
            write!(f, "{}", self.buf)
        } else {
            write!(f, "{}[{}..{}]", self.buf, self.offset, self.end())
        }
    }
}

/// How a kernel is launched: row programs over a grid, everything else once (its sizes are in
/// the kernel).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Launch {
    Grid { rows: usize, cols: usize },
    Once,
}

/// One kernel launch: reads `inputs`, writes `outputs`, in the kernel's operand order.
#[derive(Clone, Debug, PartialEq)]
pub struct Step {
    pub kernel: Kernel,
    pub inputs: Vec<View>,
    pub outputs: Vec<View>,
    pub launch: Launch,
    /// The spec name path of the IR values it computes (`h.0.attn`, `bwd.h.0.mlp.fc`).
    pub origin: String,
    /// Every distinct name path of the IR nodes the step computes (outputs and interior values),
    /// in graph order: which norms, attentions, ... a kernel covers.
    pub scopes: Vec<String>,
}

impl Step {
    /// Kind name for profiles and listings (`row`, `gemm`, `attention.fwd`, `data.copy`).
    pub fn kind(&self) -> &'static str {
        match &self.kernel {
            Kernel::Row(_) => "row",
            Kernel::Gemm(_) => "gemm",
            Kernel::Attention(a) => match a.direction {
                Direction::Forward => "attention.fwd",
                Direction::Backward => "attention.bwd",
            },
            Kernel::Data(d) => match d {
                data::DataKernel::Copy { .. } => "data.copy",
                data::DataKernel::Assemble { .. } => "data.assemble",
                data::DataKernel::Gather { .. } => "data.gather",
                data::DataKernel::ScatterAdd { .. } => "data.scatter_add",
                data::DataKernel::Reduce { .. } => "data.reduce",
                data::DataKernel::RandUniform { .. } => "data.rand_uniform",
            },
        }
    }

    /// Floating-point operations of one launch (GEMM: 2mnk per batch element; attention: the
    /// `q·kᵀ` and `p·v` products, five in the backward, counting every score even where masked;
    /// row programs: arithmetic instructions per element; data kernels: 0).
    pub fn flops(&self) -> u64 {
        match (&self.kernel, self.launch) {
            (Kernel::Gemm(g), _) => 2 * (g.batch * g.m * g.n * g.k) as u64,
            (Kernel::Attention(a), _) => {
                let per = 2 * (a.batch * a.heads * a.q_len * a.kv_len * a.head_dim) as u64;
                match a.direction {
                    Direction::Forward => 2 * per,
                    Direction::Backward => 5 * per,
                }
            }
            (Kernel::Row(p), Launch::Grid { rows, cols }) => {
                let arith = p
                    .body
                    .iter()
                    .filter(|i| {
                        !matches!(
                            i,
                            crate::kernel::Inst::Load(_)
                                | crate::kernel::Inst::ConstF32(_)
                                | crate::kernel::Inst::ConstI32(_)
                                | crate::kernel::Inst::Index(_)
                        )
                    })
                    .count();
                (arith * rows * cols) as u64
            }
            _ => 0,
        }
    }
}

/// A named run input and its buffer.
#[derive(Clone, Debug, PartialEq)]
pub struct InputDecl {
    pub name: String,
    pub buffer: BufferId,
    pub shape: Vec<usize>,
}

/// A persistent tensor: how it starts and where it lives.
#[derive(Clone, Debug, PartialEq)]
pub struct StateDecl {
    pub name: String,
    pub buffer: BufferId,
    pub shape: Vec<usize>,
    pub init: Init,
    pub trainable: bool,
}

/// A named result.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputDecl {
    pub name: String,
    pub view: View,
    pub shape: Vec<usize>,
}

/// `target ← view` after the steps (nothing to do when `view` is the target's own buffer).
#[derive(Clone, Debug, PartialEq)]
pub struct UpdateDecl {
    pub target: String,
    pub view: View,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Program {
    pub buffers: Vec<BufferDecl>,
    pub steps: Vec<Step>,
    pub inputs: Vec<InputDecl>,
    pub state: Vec<StateDecl>,
    pub outputs: Vec<OutputDecl>,
    pub updates: Vec<UpdateDecl>,
}

/// A broken invariant of a program (a fusion bug or a hand-built program's mistake).
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ProgramError {
    #[error("step {step} ({kind}): {detail}")]
    Step {
        step: usize,
        kind: &'static str,
        detail: String,
    },
    #[error("{0}")]
    Other(String),
}

impl Program {
    pub fn buffer(&self, b: BufferId) -> &BufferDecl {
        &self.buffers[b.index()]
    }

    pub fn state_decl(&self, name: &str) -> Option<&StateDecl> {
        self.state.iter().find(|s| s.name == name)
    }

    /// Total FLOPs of one step (see [`Step::flops`]).
    pub fn flops(&self) -> u64 {
        self.steps.iter().map(Step::flops).sum()
    }

    /// Step counts by kind, sorted by kind.
    pub fn kind_counts(&self) -> BTreeMap<&'static str, usize> {
        let mut m = BTreeMap::new();
        for s in &self.steps {
            *m.entry(s.kind()).or_insert(0) += 1;
        }
        m
    }

    /// Checks views against buffers, operand counts and sizes against kernels, and that every
    /// `Temp`/`Output` word a step reads was written by an earlier step.
    pub fn validate(&self) -> Result<(), ProgramError> {
        let nb = self.buffers.len();
        let view_ok = |v: &View| v.buf.index() < nb && v.end() <= self.buffers[v.buf.index()].len;
        let mut written = vec![false; nb];
        for (i, b) in self.buffers.iter().enumerate() {
            written[i] = !matches!(b.kind, BufferKind::Temp | BufferKind::Output(_));
        }
        for (si, s) in self.steps.iter().enumerate() {
            let err = |detail: String| ProgramError::Step {
                step: si,
                kind: s.kind(),
                detail,
            };
            for v in s.inputs.iter().chain(&s.outputs) {
                if !view_ok(v) {
                    return Err(err(format!("view {v} outside its buffer")));
                }
            }
            for v in &s.inputs {
                if !written[v.buf.index()] {
                    return Err(err(format!("reads {v} before any step writes it")));
                }
            }
            let (ins, outs) = expected_lens(s).map_err(&err)?;
            if ins.len() != s.inputs.len() || outs.len() != s.outputs.len() {
                return Err(err(format!(
                    "takes {} inputs and {} outputs, has {} and {}",
                    ins.len(),
                    outs.len(),
                    s.inputs.len(),
                    s.outputs.len()
                )));
            }
            for (v, n) in s.inputs.iter().zip(&ins) {
                if v.len < *n {
                    return Err(err(format!("input {v} holds {} words, needs {n}", v.len)));
                }
            }
            for (v, n) in s.outputs.iter().zip(&outs) {
                if v.len != *n {
                    return Err(err(format!("output {v} holds {} words, needs {n}", v.len)));
                }
                written[v.buf.index()] = true;
            }
        }
        for o in &self.outputs {
            if !view_ok(&o.view) || !written[o.view.buf.index()] {
                return Err(ProgramError::Other(format!(
                    "output `{}` is never written",
                    o.name
                )));
            }
        }
        for u in &self.updates {
            let Some(s) = self.state_decl(&u.target) else {
                return Err(ProgramError::Other(format!(
                    "update of unknown state `{}`",
                    u.target
                )));
            };
            if !view_ok(&u.view) || u.view.len != self.buffer(s.buffer).len {
                return Err(ProgramError::Other(format!(
                    "update of `{}` has the wrong size",
                    u.target
                )));
            }
        }
        Ok(())
    }

    /// The step lines with each row program's body under its line.
    pub fn listing(&self) -> String {
        let mut s = self.to_string();
        s.push_str("\nrow programs:\n");
        for (i, st) in self.steps.iter().enumerate() {
            if let Kernel::Row(p) = &st.kernel {
                let _ = writeln!(s, "s{i}:");
                for line in p.to_string().lines() {
                    let _ = writeln!(s, "    {line}");
                }
            }
        }
        s
    }
}

/// Input and output lengths a step's kernel needs (inputs: at least; outputs: exactly).
fn expected_lens(s: &Step) -> Result<(Vec<usize>, Vec<usize>), String> {
    Ok(match (&s.kernel, s.launch) {
        (Kernel::Row(p), Launch::Grid { rows, cols }) => {
            let ins = p
                .inputs
                .iter()
                .map(|d| d.access.len(rows, cols).ok_or("too large"))
                .collect::<Result<_, _>>()?;
            let outs = p
                .outputs
                .iter()
                .map(|d| d.access.len(rows, cols).ok_or("too large"))
                .collect::<Result<_, _>>()?;
            (ins, outs)
        }
        (Kernel::Row(_), Launch::Once) => return Err("a row program needs a grid".into()),
        (Kernel::Gemm(g), _) => (
            vec![gemm_operand_len(g, true), gemm_operand_len(g, false)],
            vec![g.batch * g.m * g.n],
        ),
        (Kernel::Attention(a), _) => {
            a.check()?;
            attention_lens(a)
        }
        (Kernel::Data(d), _) => (d.input_lens(), vec![d.output_len()]),
    })
}

/// Words an operand of a GEMM spans.
pub fn gemm_operand_len(g: &GemmKernel, a: bool) -> usize {
    let (op, rows, cols) = if a { (g.a, g.m, g.k) } else { (g.b, g.k, g.n) };
    let one = rows * cols;
    if g.batch == 0 || one == 0 {
        0
    } else {
        op.batch_stride * (g.batch - 1) + one
    }
}

/// Input and output lengths of an attention kernel, in operand order.
pub fn attention_lens(a: &AttentionKernel) -> (Vec<usize>, Vec<usize>) {
    let q = a.batch * a.heads * a.q_len * a.head_dim;
    let kv = a.batch * a.kv_heads * a.kv_len * a.head_dim;
    let lse = a.batch * a.heads * a.q_len;
    let bias = a.heads * a.q_len * a.kv_len;
    let mut extras = vec![];
    if a.has_bias {
        extras.push(bias);
    }
    if a.mask == AttentionMask::PrefixLmLengths {
        extras.push(a.batch);
    }
    if a.key_padding {
        extras.push(a.batch);
    }
    match a.direction {
        Direction::Forward => {
            let mut ins = vec![q, kv, kv];
            ins.extend(extras);
            (ins, vec![q, lse])
        }
        Direction::Backward => {
            let mut ins = vec![q, kv, kv, q, q, lse];
            ins.extend(extras);
            let mut outs = vec![q, kv, kv];
            if a.has_bias {
                outs.push(bias);
            }
            (ins, outs)
        }
    }
}

fn kernel_summary(k: &Kernel, launch: Launch) -> String {
    match k {
        Kernel::Row(p) => {
            let (r, c) = match launch {
                Launch::Grid { rows, cols } => (rows, cols),
                Launch::Once => (0, 0),
            };
            format!("row {r}x{c} insts={}", p.body.len())
        }
        other => other.to_string().trim_end().to_string(),
    }
}

impl fmt::Display for Program {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let temp: usize = self
            .buffers
            .iter()
            .filter(|b| b.kind == BufferKind::Temp)
            .map(|b| b.len * 4)
            .sum();
        writeln!(
            f,
            "program: {} steps, {} buffers ({} bytes of temporaries before planning), {} flops",
            self.steps.len(),
            self.buffers.len(),
            temp,
            self.flops()
        )?;
        for (i, b) in self.buffers.iter().enumerate() {
            let kind = match &b.kind {
                BufferKind::Input(n) => format!("input {n}"),
                BufferKind::State(n) => format!("state {n}"),
                BufferKind::Output(n) => format!("output {n}"),
                BufferKind::Temp => "temp".to_string(),
                BufferKind::Const(_) => "const".to_string(),
            };
            writeln!(f, "  b{i} {kind} {}{:?} ; {}", b.word, b.shape, b.origin)?;
        }
        for (i, s) in self.steps.iter().enumerate() {
            let ins: Vec<String> = s.inputs.iter().map(|v| v.to_string()).collect();
            let outs: Vec<String> = s.outputs.iter().map(|v| v.to_string()).collect();
            writeln!(
                f,
                "  s{i} {} ({}) -> ({}) ; {}",
                kernel_summary(&s.kernel, s.launch),
                ins.join(", "),
                outs.join(", "),
                s.origin
            )?;
        }
        for o in &self.outputs {
            writeln!(f, "  output {} = {}", o.name, o.view)?;
        }
        for u in &self.updates {
            writeln!(f, "  update {} <- {}", u.target, u.view)?;
        }
        Ok(())
    }
}

/// A plain-loop executor of programs: row programs through `kernel::eval` (in `f64`, rounded to
/// `f32` when stored), GEMMs and attention as textbook loops with `f64` accumulation, data
/// kernels through `kernel::data::eval`. The oracle of fusion and of every runtime executor.
pub mod reference {
    use super::*;
    use crate::kernel::eval::{evaluate, BufferRef};

    /// Persistent state by name, as f32 words.
    pub type State = HashMap<String, Vec<f32>>;

    /// A run input: f32 or i32 data (shape is the program's).
    #[derive(Clone, Debug, PartialEq)]
    pub enum HostInput {
        F32(Vec<f32>),
        I32(Vec<i32>),
    }

    /// Initial state: every state tensor drawn as `interp::init_params` draws it.
    pub fn init_state(p: &Program, seed: u64) -> State {
        p.state
            .iter()
            .map(|s| {
                let key = crate::ir::rng::param_key(seed, &s.name);
                let n: usize = s.shape.iter().product();
                let v = (0..n as u64)
                    .map(|i| crate::ir::rng::init_element(&s.init, key, i) as f32)
                    .collect();
                (s.name.clone(), v)
            })
            .collect()
    }

    fn f32s(w: &[u32]) -> Vec<f32> {
        w.iter().map(|x| f32::from_bits(*x)).collect()
    }
    fn i32s(w: &[u32]) -> Vec<i32> {
        w.iter().map(|x| *x as i32).collect()
    }

    /// Runs one step: returns the outputs by name and applies the updates to `state`.
    pub fn run(
        p: &Program,
        inputs: &HashMap<String, HostInput>,
        state: &mut State,
        seed: u64,
        step: u64,
    ) -> Result<BTreeMap<String, Vec<f32>>, ProgramError> {
        p.validate()?;
        let mut mem: Vec<Vec<u32>> = p.buffers.iter().map(|b| vec![0u32; b.len]).collect();
        for (i, b) in p.buffers.iter().enumerate() {
            match &b.kind {
                BufferKind::Const(d) => mem[i] = d.words(),
                BufferKind::State(n) => {
                    let v = state
                        .get(n)
                        .ok_or_else(|| ProgramError::Other(format!("missing state `{n}`")))?;
                    if v.len() != b.len {
                        return Err(ProgramError::Other(format!(
                            "state `{n}` has the wrong size"
                        )));
                    }
                    mem[i] = v.iter().map(|x| x.to_bits()).collect();
                }
                _ => {}
            }
        }
        for d in &p.inputs {
            let x = inputs
                .get(&d.name)
                .ok_or_else(|| ProgramError::Other(format!("missing input `{}`", d.name)))?;
            let b = &p.buffers[d.buffer.index()];
            let words: Vec<u32> = match (x, b.word) {
                (HostInput::F32(v), WordType::F32) => v.iter().map(|x| x.to_bits()).collect(),
                (HostInput::I32(v), WordType::I32) => v.iter().map(|x| *x as u32).collect(),
                (HostInput::I32(v), WordType::F32) => {
                    v.iter().map(|x| (*x as f32).to_bits()).collect()
                }
                (HostInput::F32(_), WordType::I32) => {
                    return Err(ProgramError::Other(format!(
                        "input `{}` must be integers",
                        d.name
                    )))
                }
            };
            if words.len() != b.len {
                return Err(ProgramError::Other(format!(
                    "input `{}` has the wrong size",
                    d.name
                )));
            }
            mem[d.buffer.index()] = words;
        }
        for (si, s) in p.steps.iter().enumerate() {
            let err = |detail: String| ProgramError::Step {
                step: si,
                kind: s.kind(),
                detail,
            };
            let read = |v: &View| mem[v.buf.index()][v.offset..v.end()].to_vec();
            let ins: Vec<Vec<u32>> = s.inputs.iter().map(read).collect();
            let outs: Vec<Vec<u32>> = match (&s.kernel, s.launch) {
                (Kernel::Row(prog), Launch::Grid { rows, cols }) => {
                    let fl: Vec<Vec<f32>> = ins.iter().map(|w| f32s(w)).collect();
                    let il: Vec<Vec<i32>> = ins.iter().map(|w| i32s(w)).collect();
                    let refs: Vec<BufferRef> = prog
                        .inputs
                        .iter()
                        .enumerate()
                        .map(|(i, d)| match d.dtype {
                            crate::kernel::DType::F32 => BufferRef::F32(&fl[i]),
                            crate::kernel::DType::I32 => BufferRef::I32(&il[i]),
                        })
                        .collect();
                    let r =
                        evaluate::<f64>(prog, &refs, rows, cols).map_err(|e| err(e.to_string()))?;
                    r.into_iter()
                        .map(|v| v.into_iter().map(|x| (x as f32).to_bits()).collect())
                        .collect()
                }
                (Kernel::Gemm(g), _) => vec![gemm(g, &f32s(&ins[0]), &f32s(&ins[1]))
                    .into_iter()
                    .map(f32::to_bits)
                    .collect()],
                (Kernel::Attention(a), _) => {
                    let f: Vec<Vec<f32>> = ins.iter().map(|w| f32s(w)).collect();
                    let lens: Vec<Vec<i64>> = s
                        .inputs
                        .iter()
                        .zip(&ins)
                        .map(|(v, w)| {
                            let word = p.buffer(v.buf).word;
                            (0..w.len()).map(|i| data::index_at(w, word, i)).collect()
                        })
                        .collect();
                    attention(a, &f, &lens)
                        .into_iter()
                        .map(|v| v.into_iter().map(f32::to_bits).collect())
                        .collect()
                }
                (Kernel::Data(d), _) => {
                    let mut out = vec![0u32; d.output_len()];
                    let refs: Vec<&[u32]> = ins.iter().map(|v| v.as_slice()).collect();
                    data::eval(d, &refs, &mut out, seed, step).map_err(|e| err(e.to_string()))?;
                    vec![out]
                }
                (Kernel::Row(_), Launch::Once) => {
                    return Err(err("a row program needs a grid".into()))
                }
            };
            for (v, o) in s.outputs.iter().zip(outs) {
                mem[v.buf.index()][v.offset..v.end()].copy_from_slice(&o[..v.len]);
            }
        }
        let mut out = BTreeMap::new();
        for o in &p.outputs {
            out.insert(
                o.name.clone(),
                f32s(&mem[o.view.buf.index()][o.view.offset..o.view.end()]),
            );
        }
        for u in &p.updates {
            let v = f32s(&mem[u.view.buf.index()][u.view.offset..u.view.end()]);
            state.insert(u.target.clone(), v);
        }
        Ok(out)
    }

    /// `D[b] = alpha · op(A[b]) · op(B[b]) (+ D[b])`; the accumulate flag is not used by fusion.
    fn gemm(g: &GemmKernel, a: &[f32], b: &[f32]) -> Vec<f32> {
        let mut d = vec![0f32; g.batch * g.m * g.n];
        for bi in 0..g.batch {
            let (ao, bo) = (bi * g.a.batch_stride, bi * g.b.batch_stride);
            for i in 0..g.m {
                for j in 0..g.n {
                    let mut s = 0f64;
                    for p in 0..g.k {
                        let x = if g.a.transposed {
                            a[ao + p * g.m + i]
                        } else {
                            a[ao + i * g.k + p]
                        };
                        let y = if g.b.transposed {
                            b[bo + j * g.k + p]
                        } else {
                            b[bo + p * g.n + j]
                        };
                        s += f64::from(x) * f64::from(y);
                    }
                    d[(bi * g.m + i) * g.n + j] = (s * f64::from(g.alpha)) as f32;
                }
            }
        }
        d
    }

    /// Textbook attention: forward writes `o` and the natural-log `lse`; backward recomputes the
    /// probabilities from `lse` and returns `dq, dk, dv (, dbias)`. Every `[batch, heads, len,
    /// head_dim]` operand is addressed through its layout.
    fn attention(a: &AttentionKernel, ins: &[Vec<f32>], lens: &[Vec<i64>]) -> Vec<Vec<f32>> {
        let (nb, nh, nhk, t, s, d) = (a.batch, a.heads, a.kv_heads, a.q_len, a.kv_len, a.head_dim);
        let group = (nh / nhk.max(1)).max(1);
        let fwd = a.direction == Direction::Forward;
        let first_extra = if fwd { 3 } else { 6 };
        let mut at = first_extra;
        let bias = a.has_bias.then(|| {
            at += 1;
            &ins[at - 1]
        });
        let prefix = (a.mask == AttentionMask::PrefixLmLengths).then(|| {
            at += 1;
            &lens[at - 1]
        });
        let key_len = a.key_padding.then(|| {
            at += 1;
            &lens[at - 1]
        });
        let (q, k, v) = (&ins[0], &ins[1], &ins[2]);
        let off = s as i64 - t as i64;
        let visible = |b: usize, i: usize, j: usize| {
            let (i, j) = (i as i64 + off, j as i64);
            let m = match a.mask {
                AttentionMask::Full => true,
                AttentionMask::Causal => j <= i,
                AttentionMask::Local { window } => j <= i && j > i - window as i64,
                AttentionMask::PrefixLm { prefix } => j <= i || j < prefix as i64,
                AttentionMask::PrefixLmLengths => j <= i || prefix.is_some_and(|p| j < p[b]),
            };
            m && key_len.is_none_or(|l| j < l[b])
        };
        let mut o = vec![0f32; nb * nh * t * d];
        let mut lse = vec![0f32; nb * nh * t];
        let mut dq = vec![0f32; nb * nh * t * d];
        let mut dk = vec![0f32; nb * nhk * s * d];
        let mut dv = vec![0f32; nb * nhk * s * d];
        let mut dbias = vec![0f32; nh * t * s];
        let mut p = vec![0f64; s];
        let l = a.layout;
        // Offsets of row `i` of query head `h` and of row `j` of key-value head `hk`.
        let qrow = |x: crate::kernel::HeadLayout, b: usize, h: usize, i: usize| {
            x.offset(nh, t, d, b, h, i)
        };
        let kvrow = |x: crate::kernel::HeadLayout, b: usize, hk: usize, j: usize| {
            x.offset(nhk, s, d, b, hk, j)
        };
        for b in 0..nb {
            for h in 0..nh {
                let hk = h / group;
                for i in 0..t {
                    let qo = qrow(l.q, b, h, i);
                    let mut m = f64::NEG_INFINITY;
                    for (j, pj) in p.iter_mut().enumerate() {
                        let ko = kvrow(l.k, b, hk, j);
                        let mut x = 0f64;
                        for c in 0..d {
                            x += f64::from(q[qo + c]) * f64::from(k[ko + c]);
                        }
                        x *= f64::from(a.scale);
                        if let Some(bias) = bias {
                            x += f64::from(bias[(h * t + i) * s + j]);
                        }
                        *pj = if visible(b, i, j) {
                            x
                        } else {
                            f64::NEG_INFINITY
                        };
                        m = m.max(*pj);
                    }
                    let sum: f64 = p.iter().map(|x| (x - m).exp()).sum();
                    let row_lse = if fwd {
                        m + sum.ln()
                    } else {
                        f64::from(ins[5][(b * nh + h) * t + i])
                    };
                    for pj in p.iter_mut() {
                        *pj = if row_lse == f64::NEG_INFINITY {
                            0.0
                        } else {
                            (*pj - row_lse).exp()
                        };
                    }
                    if fwd {
                        lse[(b * nh + h) * t + i] = row_lse as f32;
                        let oo = qrow(l.o, b, h, i);
                        for c in 0..d {
                            o[oo + c] = (0..s)
                                .map(|j| p[j] * f64::from(v[kvrow(l.v, b, hk, j) + c]))
                                .sum::<f64>() as f32;
                        }
                        continue;
                    }
                    let (out, dout) = (&ins[3], &ins[4]);
                    let (oo, doo, dqo) = (
                        qrow(l.o, b, h, i),
                        qrow(l.d_o, b, h, i),
                        qrow(l.dq, b, h, i),
                    );
                    let dd: f64 = (0..d)
                        .map(|c| f64::from(dout[doo + c]) * f64::from(out[oo + c]))
                        .sum();
                    for j in 0..s {
                        let (ko, vo) = (kvrow(l.k, b, hk, j), kvrow(l.v, b, hk, j));
                        let (dko, dvo) = (kvrow(l.dk, b, hk, j), kvrow(l.dv, b, hk, j));
                        let dp: f64 = (0..d)
                            .map(|c| f64::from(dout[doo + c]) * f64::from(v[vo + c]))
                            .sum();
                        let ds = p[j] * (dp - dd);
                        for c in 0..d {
                            dq[dqo + c] += (f64::from(a.scale) * ds * f64::from(k[ko + c])) as f32;
                            dk[dko + c] += (f64::from(a.scale) * ds * f64::from(q[qo + c])) as f32;
                            dv[dvo + c] += (p[j] * f64::from(dout[doo + c])) as f32;
                        }
                        dbias[(h * t + i) * s + j] += ds as f32;
                    }
                }
            }
        }
        if fwd {
            vec![o, lse]
        } else if a.has_bias {
            vec![dq, dk, dv, dbias]
        } else {
            vec![dq, dk, dv]
        }
    }
}
