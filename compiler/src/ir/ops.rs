//! The closed set of primitive ops and the one table of facts about them.
//!
//! Everything a model does lowers to these ops; every later stage (autodiff, passes, fusion, the
//! interpreter, the runtimes) matches on them exhaustively, so the set is kept small:
//!
//! - sources: `Input`, `Param`, `Constant` (a scalar), `Iota` (indices along an axis, for masks and
//!   positions), `RandUniform` (counter-based uniform noise, for dropout; see `ir::rng`);
//! - elementwise unary: `Unary(Neg|Exp|Log|Sqrt|Recip|Tanh|Erf|Abs)`, `Cast`, `PowConst`;
//! - elementwise binary on EQUAL shapes (broadcasting is always an explicit `Broadcast`):
//!   `Binary(Add|Sub|Mul|Div|Max|Min)`, `Compare(Lt|Le|Gt|Ge|Eq|Ne)` → bool, ternary `Select`;
//! - layout: `Broadcast`, `Reshape`, `Permute`, `Slice`, `Pad`, `Concat`;
//! - reductions: `ReduceSum`, `ReduceMax`;
//! - `MatMul`;
//! - indexing: `Gather` / `ScatterAdd` (embedding lookup and its VJP), `TakeAlong` / `PutAlong`
//!   (pick one element of the last axis, for cross entropy, and its VJP);
//! - fused attention: `Attention` and its VJP `AttentionBackward`. Sema never emits them: the
//!   `passes::attention` rewrite replaces the stdlib's `sdpa` composition (scores, mask, softmax,
//!   weighted sum) with one `Attention` node so that fusion can hand it to an attention kernel.
//!
//! Sources carry their own type (shape, dtype) so that `infer` can type every op from its
//! attributes and operand types alone; the verifier re-runs `infer` on every node.
//!
//! `Broadcast` is XLA's broadcast-in-dim restricted to *new* axes: `axes` lists the output axes
//! that the operand lacks, and the operand's shape equals the output shape with those axes removed.
//! Its VJP is then exactly `ReduceSum{axes, keepdim: false}`, and `ReduceSum`'s is a `Broadcast`.
//! Numpy-style broadcasting (expanding size-1 axes) is `Reshape` (drop the 1s) + `Broadcast`; the
//! builder's `broadcast_to` does that.
//!
//! FLOPs (`flops`): elementwise unary, binary, compare, select and cast count 1 per output element
//! (transcendentals too: it is a count of ops, not of cycles); reductions 1 per input element;
//! `MatMul` 2·m·n·k per batch element; `ScatterAdd` 1 per value element (one add each); sources,
//! layout ops, `Gather`, `TakeAlong` and `PutAlong` move data and count 0. `Attention` and
//! `AttentionBackward` count what the composition they replace counts (see `attention_flops`), so
//! MFU figures do not change when the rewrite fires.

use std::fmt;

use super::shape::{numel, DType, Dim, Shape, TensorType};
use super::IrError;

/// How a parameter is initialised (the runtime draws it; see `interp::init_param`).
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    Normal { std: f64 },
    Zeros,
    Ones,
    Uniform { low: f64, high: f64 },
    Const(f64),
}

impl fmt::Display for Init {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Init::Normal { std } => write!(f, "normal(std={})", fmt_f64(*std)),
            Init::Zeros => f.write_str("zeros"),
            Init::Ones => f.write_str("ones"),
            Init::Uniform { low, high } => {
                write!(f, "uniform(high={}, low={})", fmt_f64(*high), fmt_f64(*low))
            }
            Init::Const(v) => write!(f, "const({})", fmt_f64(*v)),
        }
    }
}

/// Shortest text that round-trips (Rust's `{:?}` for floats), so the printer is deterministic.
pub fn fmt_f64(v: f64) -> String {
    format!("{v:?}")
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnaryOp {
    Neg,
    Exp,
    Log,
    Sqrt,
    Recip,
    Tanh,
    Erf,
    Abs,
    /// Sine and cosine: sinusoidal and rotary position tables.
    Sin,
    Cos,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Max,
    Min,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum CmpOp {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
    Ne,
}

impl UnaryOp {
    pub const ALL: [UnaryOp; 10] = [
        UnaryOp::Neg,
        UnaryOp::Exp,
        UnaryOp::Log,
        UnaryOp::Sqrt,
        UnaryOp::Recip,
        UnaryOp::Tanh,
        UnaryOp::Erf,
        UnaryOp::Abs,
        UnaryOp::Sin,
        UnaryOp::Cos,
    ];
    pub fn name(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Recip => "recip",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Erf => "erf",
            UnaryOp::Abs => "abs",
            UnaryOp::Sin => "sin",
            UnaryOp::Cos => "cos",
        }
    }
    /// Ops that are defined on integers too (the rest need floats).
    fn allows_int(self) -> bool {
        matches!(self, UnaryOp::Neg | UnaryOp::Abs)
    }
}

impl BinaryOp {
    pub const ALL: [BinaryOp; 6] = [
        BinaryOp::Add,
        BinaryOp::Sub,
        BinaryOp::Mul,
        BinaryOp::Div,
        BinaryOp::Max,
        BinaryOp::Min,
    ];
    pub fn name(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Max => "max",
            BinaryOp::Min => "min",
        }
    }
}

impl CmpOp {
    pub const ALL: [CmpOp; 6] = [
        CmpOp::Lt,
        CmpOp::Le,
        CmpOp::Gt,
        CmpOp::Ge,
        CmpOp::Eq,
        CmpOp::Ne,
    ];
    pub fn name(self) -> &'static str {
        match self {
            CmpOp::Lt => "lt",
            CmpOp::Le => "le",
            CmpOp::Gt => "gt",
            CmpOp::Ge => "ge",
            CmpOp::Eq => "eq",
            CmpOp::Ne => "ne",
        }
    }
}

/// Which keys query `i` of an `Attention` may see. Queries are aligned with the *last* `t` of the
/// `s` keys (query `i` sits at key position `i + s - t`), as `sema`'s `mask_matrix` builds them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttnMask {
    /// Every key.
    Full,
    /// Keys `j <= i + s - t`.
    Causal,
    /// Causal, and only the last `window` keys: `i + s - t - window < j <= i + s - t`.
    Local { window: i64 },
    /// Causal, plus every key `j < prefix_len[b]` (prefix LM); `prefix_len` is an extra operand.
    Prefix,
}

impl fmt::Display for AttnMask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttnMask::Full => f.write_str("full"),
            AttnMask::Causal => f.write_str("causal"),
            AttnMask::Local { window } => write!(f, "local({window})"),
            AttnMask::Prefix => f.write_str("prefix"),
        }
    }
}

/// The attributes of a fused attention: `softmax(mask(scale · q·kᵀ + bias)) · v`.
///
/// Operands, in order: `q [b, h, t, d]`, `k [b, hk, s, d]`, `v [b, hk, s, d]` (`h % hk == 0`:
/// query head `n` reads key/value head `n / (h / hk)`; `hk == 1` is MQA), then `bias [h, t, s]`
/// when `bias`, `prefix_len` int `[b]` when the mask is `Prefix`, `key_len` int `[b]` when
/// `key_padding` (batch row `b` sees only keys `j < key_len[b]`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttnSpec {
    pub scale: f64,
    pub mask: AttnMask,
    pub bias: bool,
    pub key_padding: bool,
}

impl AttnSpec {
    /// Operands after `q, k, v`: bias, prefix lengths, key lengths (those present).
    pub fn extra_operands(&self) -> usize {
        usize::from(self.bias)
            + usize::from(self.mask == AttnMask::Prefix)
            + usize::from(self.key_padding)
    }
    /// Positions of the optional operands relative to the first extra one:
    /// `(bias, prefix_len, key_len)`.
    pub fn extra_positions(&self) -> (Option<usize>, Option<usize>, Option<usize>) {
        let mut i = 0;
        let mut next = |present: bool| {
            present.then(|| {
                i += 1;
                i - 1
            })
        };
        let b = next(self.bias);
        let p = next(self.mask == AttnMask::Prefix);
        let k = next(self.key_padding);
        (b, p, k)
    }
    fn attrs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("bias", self.bias.to_string()),
            ("key_padding", self.key_padding.to_string()),
            ("mask", self.mask.to_string()),
            ("scale", fmt_f64(self.scale)),
        ]
    }
}

/// Which operand's gradient an `AttentionBackward` computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AttnGrad {
    Q,
    K,
    V,
    Bias,
}

impl AttnGrad {
    pub fn name(self) -> &'static str {
        match self {
            AttnGrad::Q => "q",
            AttnGrad::K => "k",
            AttnGrad::V => "v",
            AttnGrad::Bias => "bias",
        }
    }
}

/// The primitive ops. See the module doc for the set and its conventions.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// A named run input (tokens, targets, masks).
    Input {
        name: String,
        shape: Shape,
        dtype: DType,
    },
    /// A named learnable (or frozen, `trainable: false`) parameter.
    Param {
        name: String,
        shape: Shape,
        dtype: DType,
        init: Init,
        trainable: bool,
    },
    /// A scalar (shape `[]`) of `dtype`; bools are `value != 0`.
    Constant {
        value: f64,
        dtype: DType,
    },
    /// A scalar whose value is a dim (`batch * seq` for a mean over tokens); binding the graph's
    /// symbols turns it into a `Constant`.
    DimConst {
        dim: Dim,
        dtype: DType,
    },
    /// Identity forward, zero gradient (the max subtracted inside softmax and logsumexp).
    StopGradient,
    /// out[i_0, .., i_n] = i_axis, as `dtype` (int or float).
    Iota {
        shape: Shape,
        axis: usize,
        dtype: DType,
    },
    /// f32 uniform in [0, 1): `rng::uniform_f32(rng::stream_key(seed, step, stream), flat index)`.
    RandUniform {
        shape: Shape,
        stream: u64,
    },
    Unary(UnaryOp),
    Cast {
        to: DType,
    },
    /// x^p for a constant p (x > 0 unless p is an integer).
    PowConst {
        p: f64,
    },
    Binary(BinaryOp),
    Compare(CmpOp),
    /// select(cond: bool, a, b) = cond ? a : b, all shapes equal.
    Select,
    /// Adds the output axes `axes` (sorted, distinct); the operand's shape is `shape` without them.
    Broadcast {
        shape: Shape,
        axes: Vec<usize>,
    },
    /// Same element count, row-major order.
    Reshape {
        shape: Shape,
    },
    /// out.shape[i] = in.shape[perm[i]].
    Permute {
        perm: Vec<usize>,
    },
    /// Elements start, start+step, .. < end of `axis`; step >= 1.
    Slice {
        axis: usize,
        start: Dim,
        end: Dim,
        step: i64,
    },
    /// Zeros before and after `axis` (the VJP of a step-1 `Slice`).
    Pad {
        axis: usize,
        before: Dim,
        after: Dim,
    },
    /// n-ary concatenation along `axis`.
    Concat {
        axis: usize,
    },
    ReduceSum {
        axes: Vec<usize>,
        keepdim: bool,
    },
    ReduceMax {
        axes: Vec<usize>,
        keepdim: bool,
    },
    /// lhs `[.., m, k]` (`[.., k, m]` when transposed); rhs `[k, n]` (weights, shared over the
    /// lhs batch dims) or `[.., k, n]` with the same batch dims (`[.., n, k]` when transposed).
    MatMul {
        transpose_a: bool,
        transpose_b: bool,
    },
    /// gather(table `[V, d..]`, idx int `[..]`) → `[.., d..]`: out[i.., j..] = table[idx[i..], j..].
    Gather,
    /// scatter_add(values `[.., d..]`, idx int `[..]`) → `[rows, d..]`, summing collisions.
    ScatterAdd {
        rows: Dim,
    },
    /// take_along(x `[.., V]`, idx int `[..]`) → `[..]`: out[i..] = x[i.., idx[i..]].
    TakeAlong,
    /// put_along(values `[..]`, idx int `[..]`) → `[.., size]`, zero except out[i.., idx[i..]].
    PutAlong {
        size: Dim,
    },
    /// Fused scaled-dot-product attention (see [`AttnSpec`] for the operands); output `[b, h, t, d]`.
    Attention(AttnSpec),
    /// One gradient of an `Attention` with the same spec. Operands: `q, k, v`, the attention's
    /// output `o`, its incoming gradient `do`, then the same extra operands as the forward. The
    /// output has the type of the operand named by `wrt` (the bias gradient is summed over the
    /// batch). The gradients of one attention are separate nodes over the same operands so that
    /// each has its natural shape and only the needed ones exist; fusion runs them as one kernel
    /// (the shared recomputation of the scores happens once), the interpreter recomputes per node.
    AttentionBackward {
        spec: AttnSpec,
        wrt: AttnGrad,
    },
}

/// How many operands an op takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arity {
    Exactly(usize),
    AtLeast(usize),
}

impl Arity {
    pub fn accepts(self, n: usize) -> bool {
        match self {
            Arity::Exactly(k) => n == k,
            Arity::AtLeast(k) => n >= k,
        }
    }
}

impl fmt::Display for Arity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Arity::Exactly(k) => write!(f, "{k}"),
            Arity::AtLeast(k) => write!(f, "at least {k}"),
        }
    }
}

/// The static facts about an op kind (the type rule is `infer`, FLOPs are `flops`, the VJP rule is
/// in `autodiff`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OpFacts {
    /// The printed name (`matmul`, `reduce_sum`).
    pub name: &'static str,
    pub arity: Arity,
    /// Takes no operands (Input, Param, Constant, Iota, RandUniform).
    pub is_source: bool,
    /// out[i] depends only on the operands' [i] (unary, binary, compare, select, cast, pow).
    pub is_elementwise: bool,
    /// Has a VJP rule for (some of) its float operands. Non-differentiable: sources, comparisons
    /// (bool output), and the integer index operands of the indexing ops.
    pub differentiable: bool,
}

/// The fact table: one arm per op.
pub fn facts(op: &Op) -> OpFacts {
    let f = |name, arity, is_source, is_elementwise, differentiable| OpFacts {
        name,
        arity,
        is_source,
        is_elementwise,
        differentiable,
    };
    use Arity::*;
    match op {
        Op::Input { .. } => f("input", Exactly(0), true, false, false),
        Op::Param { .. } => f("param", Exactly(0), true, false, false),
        Op::Constant { .. } => f("constant", Exactly(0), true, false, false),
        Op::DimConst { .. } => f("dim_const", Exactly(0), true, false, false),
        Op::StopGradient => f("stop_gradient", Exactly(1), false, true, false),
        Op::Iota { .. } => f("iota", Exactly(0), true, false, false),
        Op::RandUniform { .. } => f("rand_uniform", Exactly(0), true, false, false),
        Op::Unary(u) => f(u.name(), Exactly(1), false, true, true),
        Op::Cast { .. } => f("cast", Exactly(1), false, true, true),
        Op::PowConst { .. } => f("pow_const", Exactly(1), false, true, true),
        Op::Binary(b) => f(b.name(), Exactly(2), false, true, true),
        Op::Compare(c) => f(c.name(), Exactly(2), false, true, false),
        Op::Select => f("select", Exactly(3), false, true, true),
        Op::Broadcast { .. } => f("broadcast", Exactly(1), false, false, true),
        Op::Reshape { .. } => f("reshape", Exactly(1), false, false, true),
        Op::Permute { .. } => f("permute", Exactly(1), false, false, true),
        Op::Slice { .. } => f("slice", Exactly(1), false, false, true),
        Op::Pad { .. } => f("pad", Exactly(1), false, false, true),
        Op::Concat { .. } => f("concat", AtLeast(1), false, false, true),
        Op::ReduceSum { .. } => f("reduce_sum", Exactly(1), false, false, true),
        Op::ReduceMax { .. } => f("reduce_max", Exactly(1), false, false, true),
        Op::MatMul { .. } => f("matmul", Exactly(2), false, false, true),
        Op::Gather => f("gather", Exactly(2), false, false, true),
        Op::ScatterAdd { .. } => f("scatter_add", Exactly(2), false, false, true),
        Op::TakeAlong => f("take_along", Exactly(2), false, false, true),
        Op::PutAlong { .. } => f("put_along", Exactly(2), false, false, true),
        Op::Attention(_) => f("attention", AtLeast(3), false, false, true),
        Op::AttentionBackward { .. } => f("attention_backward", AtLeast(5), false, false, false),
    }
}

impl Op {
    pub fn name(&self) -> &'static str {
        facts(self).name
    }

    /// The attributes as sorted `(key, value)` text pairs, for the printer. Source names are not
    /// attributes (the printer shows them as a quoted operand).
    pub fn attrs(&self) -> Vec<(&'static str, String)> {
        let list = |v: &[usize]| {
            let p: Vec<String> = v.iter().map(|x| x.to_string()).collect();
            format!("[{}]", p.join(", "))
        };
        let mut a: Vec<(&'static str, String)> = match self {
            Op::Input { .. } => vec![],
            Op::Param {
                init, trainable, ..
            } => {
                vec![
                    ("init", init.to_string()),
                    ("trainable", trainable.to_string()),
                ]
            }
            Op::Constant { value, .. } => vec![("value", fmt_f64(*value))],
            Op::DimConst { dim, .. } => vec![("dim", dim.to_string())],
            Op::StopGradient => vec![],
            Op::Iota { axis, .. } => vec![("axis", axis.to_string())],
            Op::RandUniform { stream, .. } => vec![("stream", stream.to_string())],
            Op::Unary(_) | Op::Binary(_) | Op::Compare(_) | Op::Select => vec![],
            Op::Cast { to } => vec![("to", to.to_string())],
            Op::PowConst { p } => vec![("p", fmt_f64(*p))],
            Op::Broadcast { axes, .. } => vec![("axes", list(axes))],
            Op::Reshape { .. } => vec![],
            Op::Permute { perm } => vec![("perm", list(perm))],
            Op::Slice {
                axis,
                start,
                end,
                step,
            } => vec![
                ("axis", axis.to_string()),
                ("end", end.to_string()),
                ("start", start.to_string()),
                ("step", step.to_string()),
            ],
            Op::Pad {
                axis,
                before,
                after,
            } => vec![
                ("after", after.to_string()),
                ("axis", axis.to_string()),
                ("before", before.to_string()),
            ],
            Op::Concat { axis } => vec![("axis", axis.to_string())],
            Op::ReduceSum { axes, keepdim } | Op::ReduceMax { axes, keepdim } => {
                vec![("axes", list(axes)), ("keepdim", keepdim.to_string())]
            }
            Op::MatMul {
                transpose_a,
                transpose_b,
            } => vec![
                ("transpose_a", transpose_a.to_string()),
                ("transpose_b", transpose_b.to_string()),
            ],
            Op::Gather | Op::TakeAlong => vec![],
            Op::ScatterAdd { rows } => vec![("rows", rows.to_string())],
            Op::PutAlong { size } => vec![("size", size.to_string())],
            Op::Attention(spec) => spec.attrs(),
            Op::AttentionBackward { spec, wrt } => {
                let mut a = spec.attrs();
                a.push(("wrt", wrt.name().to_string()));
                a
            }
        };
        a.sort_by(|x, y| x.0.cmp(y.0));
        a
    }

    /// The name of a source (`Input`/`Param`), if it is one.
    pub fn source_name(&self) -> Option<&str> {
        match self {
            Op::Input { name, .. } | Op::Param { name, .. } => Some(name),
            _ => None,
        }
    }
}

fn mismatch(op: &Op, lhs: &TensorType, rhs: &TensorType, detail: impl Into<String>) -> IrError {
    IrError::ShapeMismatch {
        op: op.name().to_string(),
        lhs: lhs.clone(),
        rhs: rhs.clone(),
        detail: detail.into(),
    }
}

fn bad_attr(op: &Op, input: &TensorType, detail: impl Into<String>) -> IrError {
    IrError::BadAttribute {
        op: op.name().to_string(),
        input: Some(input.clone()),
        detail: detail.into(),
    }
}

fn want_dtype(op: &Op, t: &TensorType, expected: &'static str, ok: bool) -> Result<(), IrError> {
    if ok {
        Ok(())
    } else {
        Err(IrError::DTypeError {
            op: op.name().to_string(),
            got: t.clone(),
            expected,
        })
    }
}

fn check_axis(op: &Op, t: &TensorType, axis: usize) -> Result<(), IrError> {
    if axis < t.rank() {
        Ok(())
    } else {
        Err(bad_attr(
            op,
            t,
            format!("axis {axis} out of range for rank {}", t.rank()),
        ))
    }
}

/// A constant dim must be >= 0; symbolic dims are checked when bound.
fn nonneg(op: &Op, t: &TensorType, d: &Dim, what: &str) -> Result<(), IrError> {
    match d.as_const() {
        Some(v) if v < 0 => Err(bad_attr(op, t, format!("{what} is negative ({v})"))),
        _ => Ok(()),
    }
}

/// `a <= b` when both are constant (or their difference is); unknown otherwise (accepted).
fn le(op: &Op, t: &TensorType, a: &Dim, b: &Dim, what: &str) -> Result<(), IrError> {
    match b.sub(a).as_const() {
        Some(v) if v < 0 => Err(bad_attr(op, t, format!("{what}: {a} > {b}"))),
        _ => Ok(()),
    }
}

/// The shape and dtype rule of every op. `inputs` are the operand types in order.
pub fn infer(op: &Op, inputs: &[&TensorType]) -> Result<TensorType, IrError> {
    let fa = facts(op);
    if !fa.arity.accepts(inputs.len()) {
        return Err(IrError::Arity {
            op: fa.name.to_string(),
            expected: fa.arity,
            got: inputs.len(),
        });
    }
    match op {
        Op::Input { shape, dtype, .. } | Op::Param { shape, dtype, .. } => {
            let t = TensorType::new(*dtype, shape.clone());
            for d in shape {
                nonneg(op, &t, d, "dim")?;
            }
            if let Op::Param { .. } = op {
                want_dtype(op, &t, "a float", dtype.is_float())?;
            }
            Ok(t)
        }
        Op::Constant { dtype, .. } | Op::DimConst { dtype, .. } => {
            Ok(TensorType::new(*dtype, vec![]))
        }
        Op::StopGradient => Ok(inputs[0].clone()),
        Op::Iota { shape, axis, dtype } => {
            let t = TensorType::new(*dtype, shape.clone());
            check_axis(op, &t, *axis)?;
            want_dtype(op, &t, "an int or float", *dtype != DType::Bool)?;
            Ok(t)
        }
        Op::RandUniform { shape, .. } => Ok(TensorType::new(DType::F32, shape.clone())),
        Op::Unary(u) => {
            let x = inputs[0];
            let ok = x.dtype.is_float() || (u.allows_int() && x.dtype.is_int());
            want_dtype(
                op,
                x,
                if u.allows_int() {
                    "a number"
                } else {
                    "a float"
                },
                ok,
            )?;
            Ok(x.clone())
        }
        Op::Cast { to } => Ok(TensorType::new(*to, inputs[0].shape.clone())),
        Op::PowConst { .. } => {
            want_dtype(op, inputs[0], "a float", inputs[0].dtype.is_float())?;
            Ok(inputs[0].clone())
        }
        Op::Binary(_) | Op::Compare(_) => {
            let (a, b) = (inputs[0], inputs[1]);
            if a.shape != b.shape {
                return Err(mismatch(op, a, b, "elementwise operands need equal shapes"));
            }
            if a.dtype != b.dtype {
                return Err(mismatch(op, a, b, "elementwise operands need equal dtypes"));
            }
            if let Op::Compare(_) = op {
                Ok(TensorType::new(DType::Bool, a.shape.clone()))
            } else {
                want_dtype(op, a, "a number", a.dtype != DType::Bool)?;
                Ok(a.clone())
            }
        }
        Op::Select => {
            let (c, a, b) = (inputs[0], inputs[1], inputs[2]);
            want_dtype(op, c, "bool (the condition)", c.dtype == DType::Bool)?;
            if a.shape != b.shape || a.dtype != b.dtype {
                return Err(mismatch(op, a, b, "select branches need equal types"));
            }
            if c.shape != a.shape {
                return Err(mismatch(
                    op,
                    c,
                    a,
                    "select condition and branches need equal shapes",
                ));
            }
            Ok(a.clone())
        }
        Op::Broadcast { shape, axes } => {
            let x = inputs[0];
            let out = TensorType::new(x.dtype, shape.clone());
            if axes.windows(2).any(|w| w[0] >= w[1]) || axes.iter().any(|a| *a >= shape.len()) {
                return Err(bad_attr(
                    op,
                    x,
                    format!("axes {axes:?} must be sorted, distinct, < {}", shape.len()),
                ));
            }
            let kept: Shape = (0..shape.len())
                .filter(|i| !axes.contains(i))
                .map(|i| shape[i].clone())
                .collect();
            if kept != x.shape {
                return Err(mismatch(
                    op,
                    x,
                    &out,
                    format!("operand must equal the output without axes {axes:?}"),
                ));
            }
            Ok(out)
        }
        Op::Reshape { shape } => {
            let x = inputs[0];
            let out = TensorType::new(x.dtype, shape.clone());
            if numel(shape) != numel(&x.shape) {
                return Err(mismatch(op, x, &out, "element counts differ"));
            }
            Ok(out)
        }
        Op::Permute { perm } => {
            let x = inputs[0];
            let mut seen = vec![false; x.rank()];
            let ok = perm.len() == x.rank()
                && perm
                    .iter()
                    .all(|p| *p < x.rank() && !std::mem::replace(&mut seen[*p], true));
            if !ok {
                return Err(bad_attr(
                    op,
                    x,
                    format!("{perm:?} is not a permutation of 0..{}", x.rank()),
                ));
            }
            Ok(TensorType::new(
                x.dtype,
                perm.iter().map(|p| x.shape[*p].clone()).collect(),
            ))
        }
        Op::Slice {
            axis,
            start,
            end,
            step,
        } => {
            let x = inputs[0];
            check_axis(op, x, *axis)?;
            if *step < 1 {
                return Err(bad_attr(op, x, format!("step {step} must be >= 1")));
            }
            nonneg(op, x, start, "start")?;
            le(op, x, start, end, "slice start after end")?;
            le(op, x, end, &x.shape[*axis], "slice end past the axis")?;
            let len = end.sub(start);
            let n = if *step == 1 {
                len
            } else if let Some(l) = len.as_const() {
                // Ceiling division without `l + step - 1` (which overflows near i64::MAX).
                Dim::c(l / step + i64::from(l % step != 0))
            } else if let Some(q) = len.div_exact(*step) {
                q
            } else {
                return Err(bad_attr(
                    op,
                    x,
                    format!("symbolic length {len} not divisible by step {step}"),
                ));
            };
            let mut shape = x.shape.clone();
            shape[*axis] = n;
            Ok(TensorType::new(x.dtype, shape))
        }
        Op::Pad {
            axis,
            before,
            after,
        } => {
            let x = inputs[0];
            check_axis(op, x, *axis)?;
            nonneg(op, x, before, "before")?;
            nonneg(op, x, after, "after")?;
            let mut shape = x.shape.clone();
            shape[*axis] = before.add(&shape[*axis]).add(after);
            Ok(TensorType::new(x.dtype, shape))
        }
        Op::Concat { axis } => {
            let first = inputs[0];
            check_axis(op, first, *axis)?;
            let mut total = Dim::c(0);
            for t in inputs {
                let same_rest = t.rank() == first.rank()
                    && (0..t.rank()).all(|i| i == *axis || t.shape[i] == first.shape[i]);
                if !same_rest || t.dtype != first.dtype {
                    return Err(mismatch(
                        op,
                        first,
                        t,
                        format!("operands must agree except on axis {axis}"),
                    ));
                }
                total = total.add(&t.shape[*axis]);
            }
            let mut shape = first.shape.clone();
            shape[*axis] = total;
            Ok(TensorType::new(first.dtype, shape))
        }
        Op::ReduceSum { axes, keepdim } | Op::ReduceMax { axes, keepdim } => {
            let x = inputs[0];
            want_dtype(op, x, "a number", x.dtype != DType::Bool)?;
            if axes.windows(2).any(|w| w[0] >= w[1]) || axes.iter().any(|a| *a >= x.rank()) {
                return Err(bad_attr(
                    op,
                    x,
                    format!("axes {axes:?} must be sorted, distinct, < {}", x.rank()),
                ));
            }
            let mut shape = Shape::new();
            for (i, d) in x.shape.iter().enumerate() {
                if !axes.contains(&i) {
                    shape.push(d.clone());
                } else if *keepdim {
                    shape.push(Dim::c(1));
                }
            }
            Ok(TensorType::new(x.dtype, shape))
        }
        Op::MatMul {
            transpose_a,
            transpose_b,
        } => {
            let (a, b) = (inputs[0], inputs[1]);
            if !a.dtype.is_float() || a.dtype != b.dtype {
                return Err(mismatch(op, a, b, "matmul needs equal float dtypes"));
            }
            if a.rank() < 2 || b.rank() < 2 {
                return Err(mismatch(op, a, b, "matmul operands need rank >= 2"));
            }
            let (ra, rb) = (a.rank(), b.rank());
            let (m, ka) = if *transpose_a {
                (&a.shape[ra - 1], &a.shape[ra - 2])
            } else {
                (&a.shape[ra - 2], &a.shape[ra - 1])
            };
            let (kb, n) = if *transpose_b {
                (&b.shape[rb - 1], &b.shape[rb - 2])
            } else {
                (&b.shape[rb - 2], &b.shape[rb - 1])
            };
            if ka != kb {
                return Err(mismatch(
                    op,
                    a,
                    b,
                    format!("contraction dims differ ({ka} vs {kb})"),
                ));
            }
            if rb != 2 && a.shape[..ra - 2] != b.shape[..rb - 2] {
                return Err(mismatch(
                    op,
                    a,
                    b,
                    "batch dims differ (rhs must be 2-d or share lhs batch dims)",
                ));
            }
            let mut shape: Shape = a.shape[..ra - 2].to_vec();
            shape.push(m.clone());
            shape.push(n.clone());
            Ok(TensorType::new(a.dtype, shape))
        }
        Op::Gather => {
            let (table, idx) = (inputs[0], inputs[1]);
            want_dtype(op, idx, "an int (the indices)", idx.dtype.is_int())?;
            if table.rank() < 1 {
                return Err(mismatch(op, table, idx, "table needs rank >= 1"));
            }
            let mut shape = idx.shape.clone();
            shape.extend(table.shape[1..].iter().cloned());
            Ok(TensorType::new(table.dtype, shape))
        }
        Op::ScatterAdd { rows } => {
            let (vals, idx) = (inputs[0], inputs[1]);
            want_dtype(op, idx, "an int (the indices)", idx.dtype.is_int())?;
            want_dtype(op, vals, "a number", vals.dtype != DType::Bool)?;
            nonneg(op, vals, rows, "rows")?;
            if vals.rank() < idx.rank() || vals.shape[..idx.rank()] != idx.shape[..] {
                return Err(mismatch(
                    op,
                    vals,
                    idx,
                    "values must start with the index shape",
                ));
            }
            let mut shape = vec![rows.clone()];
            shape.extend(vals.shape[idx.rank()..].iter().cloned());
            Ok(TensorType::new(vals.dtype, shape))
        }
        Op::TakeAlong => {
            let (x, idx) = (inputs[0], inputs[1]);
            want_dtype(op, idx, "an int (the indices)", idx.dtype.is_int())?;
            if x.rank() != idx.rank() + 1 || x.shape[..idx.rank()] != idx.shape[..] {
                return Err(mismatch(
                    op,
                    x,
                    idx,
                    "index shape must be the operand shape without its last axis",
                ));
            }
            Ok(TensorType::new(x.dtype, idx.shape.clone()))
        }
        Op::PutAlong { size } => {
            let (vals, idx) = (inputs[0], inputs[1]);
            want_dtype(op, idx, "an int (the indices)", idx.dtype.is_int())?;
            nonneg(op, vals, size, "size")?;
            if vals.shape != idx.shape {
                return Err(mismatch(
                    op,
                    vals,
                    idx,
                    "values and indices need equal shapes",
                ));
            }
            let mut shape = vals.shape.clone();
            shape.push(size.clone());
            Ok(TensorType::new(vals.dtype, shape))
        }
        Op::Attention(spec) => {
            check_attention(op, spec, inputs, 3)?;
            Ok(inputs[0].clone())
        }
        Op::AttentionBackward { spec, wrt } => {
            check_attention(op, spec, inputs, 5)?;
            let (q, o, dout) = (inputs[0], inputs[3], inputs[4]);
            if o != q || dout != q {
                return Err(mismatch(
                    op,
                    q,
                    if o != q { o } else { dout },
                    "the output and its gradient must have the type of q",
                ));
            }
            let bias_at = spec.extra_positions().0.map(|i| 5 + i);
            Ok(match wrt {
                AttnGrad::Q => inputs[0].clone(),
                AttnGrad::K => inputs[1].clone(),
                AttnGrad::V => inputs[2].clone(),
                AttnGrad::Bias => match bias_at {
                    Some(i) => inputs[i].clone(),
                    None => return Err(bad_attr(op, q, "wrt=bias without a bias operand")),
                },
            })
        }
    }
}

/// Operand rules shared by `Attention` and `AttentionBackward`; `first_extra` is where the
/// optional operands start.
fn check_attention(
    op: &Op,
    spec: &AttnSpec,
    inputs: &[&TensorType],
    first_extra: usize,
) -> Result<(), IrError> {
    let (q, k, v) = (inputs[0], inputs[1], inputs[2]);
    if inputs.len() != first_extra + spec.extra_operands() {
        return Err(IrError::Arity {
            op: op.name().to_string(),
            expected: Arity::Exactly(first_extra + spec.extra_operands()),
            got: inputs.len(),
        });
    }
    want_dtype(op, q, "a float", q.dtype.is_float())?;
    if q.rank() != 4 || k.rank() != 4 || v.rank() != 4 {
        return Err(mismatch(
            op,
            q,
            k,
            "q, k, v must be [batch, heads, seq, head_dim]",
        ));
    }
    if k != v || k.dtype != q.dtype {
        return Err(mismatch(
            op,
            k,
            v,
            "k and v need equal types (and q's dtype)",
        ));
    }
    if q.shape[0] != k.shape[0] || q.shape[3] != k.shape[3] {
        return Err(mismatch(op, q, k, "batch and head_dim of q and k differ"));
    }
    if let (Some(h), Some(hk)) = (q.shape[1].as_const(), k.shape[1].as_const()) {
        if hk == 0 || h % hk != 0 {
            return Err(mismatch(
                op,
                q,
                k,
                "query heads must be a multiple of key/value heads",
            ));
        }
    }
    if let AttnMask::Local { window } = spec.mask {
        if window < 1 {
            return Err(bad_attr(op, q, format!("window {window} must be >= 1")));
        }
    }
    let (bias, prefix, key_len) = spec.extra_positions();
    if let Some(i) = bias {
        let b = inputs[first_extra + i];
        let want = vec![q.shape[1].clone(), q.shape[2].clone(), k.shape[2].clone()];
        if b.shape != want || b.dtype != q.dtype {
            return Err(mismatch(
                op,
                q,
                b,
                "the bias must be [heads, q_len, kv_len] of q's dtype",
            ));
        }
    }
    for i in [prefix, key_len].into_iter().flatten() {
        let l = inputs[first_extra + i];
        want_dtype(op, l, "an int (lengths)", l.dtype.is_int())?;
        if l.shape != vec![q.shape[0].clone()] {
            return Err(mismatch(op, q, l, "lengths must be [batch]"));
        }
    }
    Ok(())
}

/// FLOPs of one op for bound shapes (conventions in the module doc).
pub fn flops(op: &Op, inputs: &[&[usize]], output: &[usize]) -> u64 {
    // Saturating: absurd sizes in a user's spec must not panic a count.
    let n = |s: &[usize]| s.iter().fold(1u64, |a, d| a.saturating_mul(*d as u64));
    match op {
        Op::Input { .. }
        | Op::Param { .. }
        | Op::Constant { .. }
        | Op::DimConst { .. }
        | Op::StopGradient
        | Op::Iota { .. }
        | Op::RandUniform { .. } => 0,
        Op::Unary(_)
        | Op::Cast { .. }
        | Op::PowConst { .. }
        | Op::Binary(_)
        | Op::Compare(_)
        | Op::Select => n(output),
        Op::Broadcast { .. }
        | Op::Reshape { .. }
        | Op::Permute { .. }
        | Op::Slice { .. }
        | Op::Pad { .. }
        | Op::Concat { .. } => 0,
        Op::ReduceSum { .. } | Op::ReduceMax { .. } => inputs.first().map_or(0, |s| n(s)),
        Op::MatMul { transpose_a, .. } => {
            let a = inputs[0];
            let k = if *transpose_a {
                a[a.len() - 2]
            } else {
                a[a.len() - 1]
            };
            2u64.saturating_mul(n(output)).saturating_mul(k as u64)
        }
        Op::ScatterAdd { .. } => inputs.first().map_or(0, |s| n(s)),
        Op::Gather | Op::TakeAlong | Op::PutAlong { .. } => 0,
        Op::Attention(spec) => attention_flops(spec, None, inputs),
        Op::AttentionBackward { spec, wrt } => attention_flops(spec, Some(*wrt), inputs),
    }
}

/// FLOPs of the composition an attention node replaces, by this module's conventions, with
/// `P = b·h·t·s` score elements and `M = 2·P·d` per score-sized matmul. Forward: `q·kᵀ` and
/// `p·v` (2M), the scale, bias, select and the five softmax ops (max, sub, exp, sum, div): 7-8 P.
/// The composition's backward is split over the gradient nodes: `q` carries `dP = dO·vᵀ`, the
/// softmax VJP (about 9 P) and `dS·k`; `k` carries `dSᵀ·q`; `v` carries `Pᵀ·dO`; the bias its
/// batch sum (P).
pub fn attention_flops(spec: &AttnSpec, wrt: Option<AttnGrad>, inputs: &[&[usize]]) -> u64 {
    let (q, k) = match (inputs.first(), inputs.get(1)) {
        (Some(q), Some(k)) if q.len() == 4 && k.len() == 4 => (*q, *k),
        _ => return 0,
    };
    let mul = |a: u64, b: u64| a.saturating_mul(b);
    let p = [q[0], q[1], q[2], k[2]]
        .iter()
        .fold(1u64, |a, d| mul(a, *d as u64));
    let m = mul(mul(2, p), q[3] as u64);
    match wrt {
        None => mul(2, m).saturating_add(mul(7 + u64::from(spec.bias), p)),
        Some(AttnGrad::Q) => mul(2, m).saturating_add(mul(9, p)),
        Some(AttnGrad::K) | Some(AttnGrad::V) => m,
        Some(AttnGrad::Bias) => p,
    }
}

impl fmt::Display for Op {
    /// `name[attr=value, ..]`, attributes sorted by key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())?;
        let attrs = self.attrs();
        if !attrs.is_empty() {
            let parts: Vec<String> = attrs.iter().map(|(k, v)| format!("{k}={v}")).collect();
            write!(f, "[{}]", parts.join(", "))?;
        }
        Ok(())
    }
}

/// Used in error messages.
pub fn type_list(ts: &[&TensorType]) -> String {
    let parts: Vec<String> = ts.iter().map(|t| t.to_string()).collect();
    parts.join(", ")
}
