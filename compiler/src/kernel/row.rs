//! The row program: the kernel kind that fused elementwise chains, row reductions (norms, softmax,
//! cross-entropy) and optimizer updates lower to.
//!
//! A row program runs over a 2-D iteration space `rows × cols` whose sizes are given at launch, not
//! at compile time, so one compiled kernel serves every batch and sequence length. Its body is an
//! SSA list of scalar instructions; instruction `i` defines value `%i`. Every value has a type
//! ([`ValueType`]) and a *level* ([`Level`]): it is the same for the whole launch, the same along a
//! row, or different per element. A row reduction turns a per-element value into a per-row value
//! that later instructions may use, which makes the body a multi-phase per-row program (LayerNorm:
//! mean, then variance, then normalize). Backends recompute per-element values in each column pass
//! that needs them (see [`super::schedule`]), so the IR never names temporaries or memory.
//!
//! Deliberately absent: memory addresses, vector widths, thread or block indices, strides. How the
//! column loop is vectorised or split over threads is each backend's business.

use std::fmt;

/// The id of a value defined by the body: `%i` is defined by `body[i]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ValueId(pub u32);

impl ValueId {
    /// The position of the defining instruction in the body.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ValueId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "%{}", self.0)
    }
}

/// The id of an input buffer: `in<i>` is `inputs[i]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InputId(pub u32);

impl InputId {
    /// The position of the declaration in `inputs`.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for InputId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "in{}", self.0)
    }
}

/// Element type of an input buffer. Outputs are always `f32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    I32,
}

/// Type of an SSA value. `Mask` is a per-lane boolean produced by comparisons; it never touches
/// memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ValueType {
    F32,
    I32,
    Mask,
}

impl From<DType> for ValueType {
    fn from(d: DType) -> Self {
        match d {
            DType::F32 => ValueType::F32,
            DType::I32 => ValueType::I32,
        }
    }
}

/// How often a value changes over the iteration space. Ordered: `Kernel < Row < Elem`, and an
/// instruction's level is the maximum of its operands' levels (except where noted on [`Inst`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Level {
    /// The same for the whole launch: constants, `Scalar` inputs, `rows`, `cols`.
    Kernel,
    /// The same along one row: `PerRow` inputs, the row index, row reductions.
    Row,
    /// Different per element: `Full`/`PerCol` inputs, the column index, random numbers.
    Elem,
}

/// How an input buffer is indexed at element `(r, c)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum InputAccess {
    /// `[rows, cols]`, row-major, dense: element `r * cols + c`.
    Full,
    /// `[rows]`: element `r` (a per-row statistic, a label).
    PerRow,
    /// `[cols]`: element `c` (a bias, a norm's gain).
    PerCol,
    /// `[1]`: element `0` (a hyperparameter, a seed).
    Scalar,
}

impl InputAccess {
    /// The level of a value loaded through this access.
    pub fn level(self) -> Level {
        match self {
            InputAccess::Full | InputAccess::PerCol => Level::Elem,
            InputAccess::PerRow => Level::Row,
            InputAccess::Scalar => Level::Kernel,
        }
    }

    /// The number of elements the buffer must hold for a `rows × cols` launch (`None` on overflow).
    pub fn len(self, rows: usize, cols: usize) -> Option<usize> {
        match self {
            InputAccess::Full => rows.checked_mul(cols),
            InputAccess::PerRow => Some(rows),
            InputAccess::PerCol => Some(cols),
            InputAccess::Scalar => Some(1),
        }
    }
}

/// How an output buffer is written. Outputs are `f32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OutputAccess {
    /// `[rows, cols]`: `out[r * cols + c] = v(r, c)`. A row- or kernel-level value is broadcast.
    Full,
    /// `[rows]`: `out[r] = v(r)`. The value must be row- or kernel-level.
    PerRow,
    /// `[cols]`: `out[c] = Σ_r v(r, c)` (bias and gain gradients). Overwrites; the summation order
    /// over rows is backend-defined.
    ColSum,
    /// `[1]`: `out[0] = Σ_r v(r)` (a loss summed over rows). The value must be row- or
    /// kernel-level. Overwrites; summation order backend-defined.
    Sum,
}

impl OutputAccess {
    /// The number of elements the buffer must hold for a `rows × cols` launch (`None` on overflow).
    pub fn len(self, rows: usize, cols: usize) -> Option<usize> {
        match self {
            OutputAccess::Full => rows.checked_mul(cols),
            OutputAccess::PerRow => Some(rows),
            OutputAccess::ColSum => Some(cols),
            OutputAccess::Sum => Some(1),
        }
    }
}

/// One input buffer. `name` is for printing and debugging only: it is not part of the structural
/// hash.
#[derive(Clone, Debug, PartialEq)]
pub struct InputDecl {
    pub name: String,
    pub dtype: DType,
    pub access: InputAccess,
}

/// One output buffer and the value written to it. `name` is not part of the structural hash.
#[derive(Clone, Debug, PartialEq)]
pub struct OutputDecl {
    pub name: String,
    pub access: OutputAccess,
    pub value: ValueId,
}

/// Unary operations. Typing: `Neg`/`Abs` on `f32` or `i32` (i32 wraps: `abs(MIN) = MIN`); `Not` on
/// `mask`; all others `f32 → f32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UnaryOp {
    Neg,
    Abs,
    Exp,
    /// Natural logarithm (`log(0) = -inf`, `log(x<0) = NaN`).
    Log,
    Sqrt,
    /// `1 / sqrt(x)`.
    Rsqrt,
    /// `1 / x`.
    Recip,
    Tanh,
    Erf,
    /// `1 / (1 + exp(-x))`.
    Sigmoid,
    Not,
}

/// Binary operations; both operands have the same type, which is the result type.
/// `f32`: `Add Sub Mul Div Max Min`. `i32`: `Add Sub Mul Div Rem Max Min` (wrapping; `Div`
/// truncates; `x / 0 = 0`, `x % 0 = 0`, `MIN / -1 = MIN`, so no input can trap). `mask`: `And Or`.
/// `Max(a, b)` is exactly `if a > b { a } else { b }` and `Min(a, b)` is `if a < b { a } else { b }`:
/// with a NaN operand the result is `b` (what x86 `maxps`/`minps` and a CUDA ternary both do).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BinaryOp {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
    Max,
    Min,
    And,
    Or,
}

/// Comparisons of two `f32` or two `i32` values, giving a `mask`. Ordered (IEEE) for `f32`: every
/// comparison with NaN is false except `Ne`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CmpOp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Row reductions over the columns of one row, of an `f32` value.
/// `Sum` starts from `+0.0`; `Max` starts from `-inf` and uses `BinaryOp::Max`. The order in
/// which the columns are combined is backend-defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ReduceOp {
    Sum,
    Max,
}

/// Positions and sizes of the iteration space, all `i32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IndexKind {
    /// The row index `r` (row-level).
    Row,
    /// The column index `c` (element-level).
    Col,
    /// The number of rows of the launch (kernel-level).
    Rows,
    /// The number of columns of the launch (kernel-level).
    Cols,
}

/// One instruction; it defines the value whose id is its position in the body.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Inst {
    /// The input's element at `(r, c)` through its access pattern; type from its dtype.
    Load(InputId),
    ConstF32(f32),
    ConstI32(i32),
    Index(IndexKind),
    Unary(UnaryOp, ValueId),
    Binary(BinaryOp, ValueId, ValueId),
    /// `a * b + c` with one rounding (`f32` only).
    Fma(ValueId, ValueId, ValueId),
    Cmp(CmpOp, ValueId, ValueId),
    /// `if mask { a } else { b }`; `a` and `b` are both `f32` or both `i32`.
    Select(ValueId, ValueId, ValueId),
    /// `i32 → f32`, rounding to nearest.
    I32ToF32(ValueId),
    /// A uniform `f32` in `[0, 1)` that depends only on `(seed, step, stream, r * cols + c)`;
    /// `seed` and `step` are `i32` values of level at most `Row`, reinterpreted as `u32`. Always
    /// element-level. Defined bit-exactly by [`super::rng::rand_uniform`].
    RandUniform {
        seed: ValueId,
        step: ValueId,
        stream: u32,
    },
    /// A row reduction of an `f32` value (any level: a row-uniform operand is summed `cols` times).
    /// Always row-level, even when its operand is kernel-level.
    Reduce(ReduceOp, ValueId),
}

impl Inst {
    /// The operands, in order.
    /// The values it reads, in order (at most three; no allocation: schedulers, validators and
    /// code generators call this for every instruction).
    pub fn operands(&self) -> Operands {
        let z = ValueId(0);
        let (v, n) = match *self {
            Inst::Load(_) | Inst::ConstF32(_) | Inst::ConstI32(_) | Inst::Index(_) => ([z; 3], 0),
            Inst::Unary(_, a) | Inst::I32ToF32(a) | Inst::Reduce(_, a) => ([a, z, z], 1),
            Inst::Binary(_, a, b) | Inst::Cmp(_, a, b) => ([a, b, z], 2),
            Inst::RandUniform { seed, step, .. } => ([seed, step, z], 2),
            Inst::Fma(a, b, c) | Inst::Select(a, b, c) => ([a, b, c], 3),
        };
        Operands { v, n }
    }
}

/// The operands of an [`Inst`]: a slice of at most three values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Operands {
    v: [ValueId; 3],
    n: usize,
}

impl std::ops::Deref for Operands {
    type Target = [ValueId];
    fn deref(&self) -> &[ValueId] {
        &self.v[..self.n]
    }
}

impl IntoIterator for Operands {
    type Item = ValueId;
    type IntoIter = std::iter::Take<std::array::IntoIter<ValueId, 3>>;
    fn into_iter(self) -> Self::IntoIter {
        self.v.into_iter().take(self.n)
    }
}

/// A row program: inputs, an SSA body, outputs. Build one with [`RowBuilder`] or by hand, then
/// check it with [`super::validate::validate`].
#[derive(Clone, Debug, PartialEq)]
pub struct RowProgram {
    /// For printing and debugging; not part of the structural hash.
    pub name: String,
    pub inputs: Vec<InputDecl>,
    pub body: Vec<Inst>,
    pub outputs: Vec<OutputDecl>,
}

/// Appends instructions to a row program and returns their value ids; [`RowBuilder::finish`]
/// validates. Methods do not check types: the validator does, once, with precise errors.
#[derive(Clone, Debug)]
pub struct RowBuilder {
    prog: RowProgram,
}

impl RowBuilder {
    pub fn new(name: impl Into<String>) -> Self {
        RowBuilder {
            prog: RowProgram {
                name: name.into(),
                inputs: vec![],
                body: vec![],
                outputs: vec![],
            },
        }
    }

    /// Declares an input buffer.
    pub fn input(&mut self, name: impl Into<String>, dtype: DType, access: InputAccess) -> InputId {
        self.prog.inputs.push(InputDecl {
            name: name.into(),
            dtype,
            access,
        });
        InputId(self.prog.inputs.len() as u32 - 1)
    }

    /// Declares an input and loads it.
    pub fn load_input(
        &mut self,
        name: impl Into<String>,
        dtype: DType,
        access: InputAccess,
    ) -> ValueId {
        let id = self.input(name, dtype, access);
        self.load(id)
    }

    /// Declares an output written with `value`.
    pub fn output(&mut self, name: impl Into<String>, access: OutputAccess, value: ValueId) {
        self.prog.outputs.push(OutputDecl {
            name: name.into(),
            access,
            value,
        });
    }

    /// Appends any instruction.
    pub fn push(&mut self, inst: Inst) -> ValueId {
        self.prog.body.push(inst);
        ValueId(self.prog.body.len() as u32 - 1)
    }

    pub fn load(&mut self, input: InputId) -> ValueId {
        self.push(Inst::Load(input))
    }
    pub fn f32(&mut self, c: f32) -> ValueId {
        self.push(Inst::ConstF32(c))
    }
    pub fn i32(&mut self, c: i32) -> ValueId {
        self.push(Inst::ConstI32(c))
    }
    pub fn index(&mut self, kind: IndexKind) -> ValueId {
        self.push(Inst::Index(kind))
    }
    /// `cols` as `f32` (for means).
    pub fn cols_f32(&mut self) -> ValueId {
        let c = self.index(IndexKind::Cols);
        self.i32_to_f32(c)
    }
    pub fn unary(&mut self, op: UnaryOp, a: ValueId) -> ValueId {
        self.push(Inst::Unary(op, a))
    }
    pub fn binary(&mut self, op: BinaryOp, a: ValueId, b: ValueId) -> ValueId {
        self.push(Inst::Binary(op, a, b))
    }
    pub fn add(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.binary(BinaryOp::Add, a, b)
    }
    pub fn sub(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.binary(BinaryOp::Sub, a, b)
    }
    pub fn mul(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.binary(BinaryOp::Mul, a, b)
    }
    pub fn div(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.binary(BinaryOp::Div, a, b)
    }
    pub fn max(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.binary(BinaryOp::Max, a, b)
    }
    pub fn min(&mut self, a: ValueId, b: ValueId) -> ValueId {
        self.binary(BinaryOp::Min, a, b)
    }
    pub fn neg(&mut self, a: ValueId) -> ValueId {
        self.unary(UnaryOp::Neg, a)
    }
    pub fn exp(&mut self, a: ValueId) -> ValueId {
        self.unary(UnaryOp::Exp, a)
    }
    pub fn log(&mut self, a: ValueId) -> ValueId {
        self.unary(UnaryOp::Log, a)
    }
    pub fn sqrt(&mut self, a: ValueId) -> ValueId {
        self.unary(UnaryOp::Sqrt, a)
    }
    pub fn rsqrt(&mut self, a: ValueId) -> ValueId {
        self.unary(UnaryOp::Rsqrt, a)
    }
    pub fn recip(&mut self, a: ValueId) -> ValueId {
        self.unary(UnaryOp::Recip, a)
    }
    pub fn tanh(&mut self, a: ValueId) -> ValueId {
        self.unary(UnaryOp::Tanh, a)
    }
    pub fn erf(&mut self, a: ValueId) -> ValueId {
        self.unary(UnaryOp::Erf, a)
    }
    pub fn sigmoid(&mut self, a: ValueId) -> ValueId {
        self.unary(UnaryOp::Sigmoid, a)
    }
    pub fn fma(&mut self, a: ValueId, b: ValueId, c: ValueId) -> ValueId {
        self.push(Inst::Fma(a, b, c))
    }
    pub fn cmp(&mut self, op: CmpOp, a: ValueId, b: ValueId) -> ValueId {
        self.push(Inst::Cmp(op, a, b))
    }
    pub fn select(&mut self, mask: ValueId, a: ValueId, b: ValueId) -> ValueId {
        self.push(Inst::Select(mask, a, b))
    }
    pub fn i32_to_f32(&mut self, a: ValueId) -> ValueId {
        self.push(Inst::I32ToF32(a))
    }
    pub fn rand_uniform(&mut self, seed: ValueId, step: ValueId, stream: u32) -> ValueId {
        self.push(Inst::RandUniform { seed, step, stream })
    }
    pub fn row_sum(&mut self, a: ValueId) -> ValueId {
        self.push(Inst::Reduce(ReduceOp::Sum, a))
    }
    pub fn row_max(&mut self, a: ValueId) -> ValueId {
        self.push(Inst::Reduce(ReduceOp::Max, a))
    }

    /// The program so far, unvalidated.
    pub fn program(&self) -> &RowProgram {
        &self.prog
    }

    /// Validates and returns the program.
    pub fn finish(self) -> Result<RowProgram, super::validate::ValidateError> {
        super::validate::validate(&self.prog)?;
        Ok(self.prog)
    }
}
