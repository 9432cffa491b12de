//! The reference evaluator of row programs: plain Rust loops, in `f32` or `f64`; the oracle that
//! every backend (CPU JIT, CUDA) is tested against.
//!
//! It follows the IR's definitions literally and in the most obvious order: for each row, every
//! instruction in body order, each value held as a whole row (or one number when it is row- or
//! kernel-level). It has no phases, no vectors and no threads, so that it can be read and
//! trusted. Transcendentals come from `std`/`libm`, correctly rounded or nearly so; in `f64` mode
//! inputs are widened and the result is the best available estimate of the exact answer.

use super::rng;
use super::row::{
    BinaryOp, CmpOp, DType, IndexKind, Inst, Level, OutputAccess, ReduceOp, RowProgram, UnaryOp,
};
use super::validate::{validate, ValidateError};

/// An input buffer for a launch.
#[derive(Clone, Copy, Debug)]
pub enum BufferRef<'a> {
    F32(&'a [f32]),
    I32(&'a [i32]),
}

impl BufferRef<'_> {
    pub fn dtype(&self) -> DType {
        match self {
            BufferRef::F32(_) => DType::F32,
            BufferRef::I32(_) => DType::I32,
        }
    }
    pub fn len(&self) -> usize {
        match self {
            BufferRef::F32(s) => s.len(),
            BufferRef::I32(s) => s.len(),
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why a launch's arguments do not fit the program.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LaunchError {
    #[error("invalid program: {0}")]
    Invalid(#[from] ValidateError),
    #[error("the program takes {expected} inputs, {found} were given")]
    InputCount { expected: usize, found: usize },
    #[error("the program writes {expected} outputs, {found} were given")]
    OutputCount { expected: usize, found: usize },
    #[error("input {index} `{name}` must be {expected:?}, a {found:?} buffer was given")]
    InputDType {
        index: usize,
        name: String,
        expected: DType,
        found: DType,
    },
    #[error(
        "input {index} `{name}` must hold {expected} elements for {rows}×{cols}, it holds {found}"
    )]
    InputLen {
        index: usize,
        name: String,
        expected: usize,
        found: usize,
        rows: usize,
        cols: usize,
    },
    #[error(
        "output {index} `{name}` must hold {expected} elements for {rows}×{cols}, it holds {found}"
    )]
    OutputLen {
        index: usize,
        name: String,
        expected: usize,
        found: usize,
        rows: usize,
        cols: usize,
    },
    #[error(
        "a {rows}×{cols} launch is too large (rows and cols must fit in i32, rows×cols in usize)"
    )]
    TooLarge { rows: usize, cols: usize },
}

/// Checks buffer counts, dtypes and lengths of a launch against a program: the one rule all
/// backends share.
pub fn check_launch(
    prog: &RowProgram,
    inputs: &[(DType, usize)],
    output_lens: &[usize],
    rows: usize,
    cols: usize,
) -> Result<(), LaunchError> {
    if rows > i32::MAX as usize || cols > i32::MAX as usize || rows.checked_mul(cols).is_none() {
        return Err(LaunchError::TooLarge { rows, cols });
    }
    if inputs.len() != prog.inputs.len() {
        return Err(LaunchError::InputCount {
            expected: prog.inputs.len(),
            found: inputs.len(),
        });
    }
    if output_lens.len() != prog.outputs.len() {
        return Err(LaunchError::OutputCount {
            expected: prog.outputs.len(),
            found: output_lens.len(),
        });
    }
    for (index, (decl, &(dtype, len))) in prog.inputs.iter().zip(inputs).enumerate() {
        if dtype != decl.dtype {
            return Err(LaunchError::InputDType {
                index,
                name: decl.name.clone(),
                expected: decl.dtype,
                found: dtype,
            });
        }
        let expected = decl
            .access
            .len(rows, cols)
            .ok_or(LaunchError::TooLarge { rows, cols })?;
        if len != expected {
            return Err(LaunchError::InputLen {
                index,
                name: decl.name.clone(),
                expected,
                found: len,
                rows,
                cols,
            });
        }
    }
    for (index, (decl, &len)) in prog.outputs.iter().zip(output_lens).enumerate() {
        let expected = decl
            .access
            .len(rows, cols)
            .ok_or(LaunchError::TooLarge { rows, cols })?;
        if len != expected {
            return Err(LaunchError::OutputLen {
                index,
                name: decl.name.clone(),
                expected,
                found: len,
                rows,
                cols,
            });
        }
    }
    Ok(())
}

/// The arithmetic the evaluator is generic over: `f32` (what a backend computes, up to rounding
/// order) and `f64` (the oracle).
pub trait Real:
    Copy
    + PartialOrd
    + std::fmt::Debug
    + std::ops::Add<Output = Self>
    + std::ops::Sub<Output = Self>
    + std::ops::Mul<Output = Self>
    + std::ops::Div<Output = Self>
    + std::ops::Neg<Output = Self>
{
    fn from_f32(x: f32) -> Self;
    fn from_i32(x: i32) -> Self;
    fn zero() -> Self;
    fn one() -> Self;
    fn neg_infinity() -> Self;
    fn abs(self) -> Self;
    fn exp(self) -> Self;
    fn ln(self) -> Self;
    fn sqrt(self) -> Self;
    fn tanh(self) -> Self;
    fn erf(self) -> Self;
    fn mul_add(self, b: Self, c: Self) -> Self;
}

impl Real for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
    fn from_i32(x: i32) -> Self {
        x as f32
    }
    fn zero() -> Self {
        0.0
    }
    fn one() -> Self {
        1.0
    }
    fn neg_infinity() -> Self {
        f32::NEG_INFINITY
    }
    fn abs(self) -> Self {
        f32::abs(self)
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    fn tanh(self) -> Self {
        f32::tanh(self)
    }
    fn erf(self) -> Self {
        libm::erff(self)
    }
    fn mul_add(self, b: Self, c: Self) -> Self {
        f32::mul_add(self, b, c)
    }
}

impl Real for f64 {
    fn from_f32(x: f32) -> Self {
        x as f64
    }
    fn from_i32(x: i32) -> Self {
        x as f64
    }
    fn zero() -> Self {
        0.0
    }
    fn one() -> Self {
        1.0
    }
    fn neg_infinity() -> Self {
        f64::NEG_INFINITY
    }
    fn abs(self) -> Self {
        f64::abs(self)
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    fn tanh(self) -> Self {
        f64::tanh(self)
    }
    fn erf(self) -> Self {
        libm::erf(self)
    }
    fn mul_add(self, b: Self, c: Self) -> Self {
        f64::mul_add(self, b, c)
    }
}

/// One value over one row: a single entry when row- or kernel-level, `cols` entries otherwise.
#[derive(Clone, Debug)]
enum RowVal<T> {
    F(Vec<T>),
    I(Vec<i32>),
    M(Vec<bool>),
}

fn at<X: Copy>(v: &[X], c: usize) -> X {
    if v.len() == 1 {
        v[0]
    } else {
        v[c]
    }
}

/// `max` and `min` exactly as the IR defines them (the NaN behaviour included).
fn ir_max<T: PartialOrd>(a: T, b: T) -> T {
    if a > b {
        a
    } else {
        b
    }
}
fn ir_min<T: PartialOrd>(a: T, b: T) -> T {
    if a < b {
        a
    } else {
        b
    }
}

fn cmp<T: PartialOrd>(op: CmpOp, a: T, b: T) -> bool {
    match op {
        CmpOp::Eq => a == b,
        CmpOp::Ne => a != b,
        CmpOp::Lt => a < b,
        CmpOp::Le => a <= b,
        CmpOp::Gt => a > b,
        CmpOp::Ge => a >= b,
    }
}

fn unary_f<T: Real>(op: UnaryOp, x: T) -> T {
    match op {
        UnaryOp::Neg => -x,
        UnaryOp::Abs => x.abs(),
        UnaryOp::Exp => x.exp(),
        UnaryOp::Log => x.ln(),
        UnaryOp::Sqrt => x.sqrt(),
        UnaryOp::Rsqrt => T::one() / x.sqrt(),
        UnaryOp::Recip => T::one() / x,
        UnaryOp::Tanh => x.tanh(),
        UnaryOp::Erf => x.erf(),
        UnaryOp::Sigmoid => T::one() / (T::one() + (-x).exp()),
        // The validator only lets `Not` see masks.
        UnaryOp::Not => x,
    }
}

fn binary_f<T: Real>(op: BinaryOp, a: T, b: T) -> T {
    match op {
        BinaryOp::Add => a + b,
        BinaryOp::Sub => a - b,
        BinaryOp::Mul => a * b,
        BinaryOp::Div => a / b,
        BinaryOp::Max => ir_max(a, b),
        BinaryOp::Min => ir_min(a, b),
        // Not typable on f32 (validator).
        BinaryOp::Rem | BinaryOp::And | BinaryOp::Or => a,
    }
}

/// The IR's integer arithmetic: wrapping, and division by zero gives zero.
pub fn binary_i32(op: BinaryOp, a: i32, b: i32) -> i32 {
    match op {
        BinaryOp::Add => a.wrapping_add(b),
        BinaryOp::Sub => a.wrapping_sub(b),
        BinaryOp::Mul => a.wrapping_mul(b),
        BinaryOp::Div => {
            if b == 0 {
                0
            } else {
                a.wrapping_div(b)
            }
        }
        BinaryOp::Rem => {
            if b == 0 {
                0
            } else {
                a.wrapping_rem(b)
            }
        }
        BinaryOp::Max => ir_max(a, b),
        BinaryOp::Min => ir_min(a, b),
        // Not typable on i32 (validator).
        BinaryOp::And | BinaryOp::Or => a,
    }
}

fn map1<X: Copy, Y>(a: &[X], f: impl Fn(X) -> Y) -> Vec<Y> {
    a.iter().map(|&x| f(x)).collect()
}

/// Element-wise over operands that are each either one entry (broadcast) or `n` entries.
fn map_n<Y>(lens: &[usize], f: impl Fn(usize) -> Y) -> Vec<Y> {
    let n = lens.iter().copied().filter(|&l| l != 1).max().unwrap_or(1);
    (0..n).map(f).collect()
}

/// Evaluates `prog` over `rows × cols`. Returns one vector per output, sized by its access
/// (`Full`: rows·cols, `PerRow`: rows, `ColSum`: cols, `Sum`: 1).
pub fn evaluate<T: Real>(
    prog: &RowProgram,
    inputs: &[BufferRef<'_>],
    rows: usize,
    cols: usize,
) -> Result<Vec<Vec<T>>, LaunchError> {
    let typing = validate(prog)?;
    let out_lens: Vec<usize> = prog
        .outputs
        .iter()
        .map(|o| o.access.len(rows, cols).unwrap_or(usize::MAX))
        .collect();
    let in_shapes: Vec<(DType, usize)> = inputs.iter().map(|b| (b.dtype(), b.len())).collect();
    check_launch(prog, &in_shapes, &out_lens, rows, cols)?;

    let mut outs: Vec<Vec<T>> = out_lens.iter().map(|&n| vec![T::zero(); n]).collect();
    for r in 0..rows {
        let mut vals: Vec<RowVal<T>> = Vec::with_capacity(prog.body.len());
        for (i, inst) in prog.body.iter().enumerate() {
            let elem = typing.level[i] == Level::Elem;
            let n = if elem { cols } else { 1 };
            let f = |v: super::row::ValueId| match &vals[v.index()] {
                RowVal::F(x) => x.as_slice(),
                _ => &[],
            };
            let iv = |v: super::row::ValueId| match &vals[v.index()] {
                RowVal::I(x) => x.as_slice(),
                _ => &[],
            };
            let mv = |v: super::row::ValueId| match &vals[v.index()] {
                RowVal::M(x) => x.as_slice(),
                _ => &[],
            };
            let val = match *inst {
                Inst::Load(input) => {
                    use super::row::InputAccess;
                    let access = prog.inputs[input.index()].access;
                    let idx = |c: usize| match access {
                        InputAccess::Full => r * cols + c,
                        InputAccess::PerRow => r,
                        InputAccess::PerCol => c,
                        InputAccess::Scalar => 0,
                    };
                    match inputs[input.index()] {
                        BufferRef::F32(s) => {
                            RowVal::F((0..n).map(|c| T::from_f32(s[idx(c)])).collect())
                        }
                        BufferRef::I32(s) => RowVal::I((0..n).map(|c| s[idx(c)]).collect()),
                    }
                }
                Inst::ConstF32(c) => RowVal::F(vec![T::from_f32(c)]),
                Inst::ConstI32(c) => RowVal::I(vec![c]),
                Inst::Index(kind) => match kind {
                    IndexKind::Row => RowVal::I(vec![r as i32]),
                    IndexKind::Col => RowVal::I((0..cols).map(|c| c as i32).collect()),
                    IndexKind::Rows => RowVal::I(vec![rows as i32]),
                    IndexKind::Cols => RowVal::I(vec![cols as i32]),
                },
                Inst::Unary(op, a) => match &vals[a.index()] {
                    RowVal::F(x) => RowVal::F(map1(x, |x| unary_f(op, x))),
                    RowVal::I(x) => RowVal::I(map1(x, |x| match op {
                        UnaryOp::Abs => x.wrapping_abs(),
                        _ => x.wrapping_neg(),
                    })),
                    RowVal::M(x) => RowVal::M(map1(x, |x| !x)),
                },
                Inst::Binary(op, a, b) => match (&vals[a.index()], &vals[b.index()]) {
                    (RowVal::F(x), RowVal::F(y)) => RowVal::F(map_n(&[x.len(), y.len()], |c| {
                        binary_f(op, at(x, c), at(y, c))
                    })),
                    (RowVal::I(x), RowVal::I(y)) => RowVal::I(map_n(&[x.len(), y.len()], |c| {
                        binary_i32(op, at(x, c), at(y, c))
                    })),
                    (RowVal::M(x), RowVal::M(y)) => RowVal::M(map_n(&[x.len(), y.len()], |c| {
                        let (p, q) = (at(x, c), at(y, c));
                        match op {
                            BinaryOp::Or => p || q,
                            _ => p && q,
                        }
                    })),
                    _ => unreachable!("validated: binary operands have one type"),
                },
                Inst::Fma(a, b, c) => {
                    let (x, y, z) = (f(a), f(b), f(c));
                    RowVal::F(map_n(&[x.len(), y.len(), z.len()], |k| {
                        at(x, k).mul_add(at(y, k), at(z, k))
                    }))
                }
                Inst::Cmp(op, a, b) => match (&vals[a.index()], &vals[b.index()]) {
                    (RowVal::F(x), RowVal::F(y)) => {
                        RowVal::M(map_n(&[x.len(), y.len()], |c| cmp(op, at(x, c), at(y, c))))
                    }
                    (RowVal::I(x), RowVal::I(y)) => {
                        RowVal::M(map_n(&[x.len(), y.len()], |c| cmp(op, at(x, c), at(y, c))))
                    }
                    _ => unreachable!("validated: compare operands are two f32 or two i32"),
                },
                Inst::Select(m, a, b) => {
                    let m = mv(m);
                    match (&vals[a.index()], &vals[b.index()]) {
                        (RowVal::F(x), RowVal::F(y)) => {
                            RowVal::F(map_n(&[m.len(), x.len(), y.len()], |c| {
                                if at(m, c) {
                                    at(x, c)
                                } else {
                                    at(y, c)
                                }
                            }))
                        }
                        (RowVal::I(x), RowVal::I(y)) => {
                            RowVal::I(map_n(&[m.len(), x.len(), y.len()], |c| {
                                if at(m, c) {
                                    at(x, c)
                                } else {
                                    at(y, c)
                                }
                            }))
                        }
                        _ => unreachable!("validated: select arms are two f32 or two i32"),
                    }
                }
                Inst::I32ToF32(a) => RowVal::F(map1(iv(a), T::from_i32)),
                Inst::RandUniform { seed, step, stream } => {
                    let (s, t) = (iv(seed)[0] as u32, iv(step)[0] as u32);
                    RowVal::F(
                        (0..cols)
                            .map(|c| {
                                T::from_f32(rng::rand_uniform(
                                    s,
                                    t,
                                    stream,
                                    rng::flat_index(r, c, cols),
                                ))
                            })
                            .collect(),
                    )
                }
                Inst::Reduce(op, a) => {
                    let x = f(a);
                    let mut acc = match op {
                        ReduceOp::Sum => T::zero(),
                        ReduceOp::Max => T::neg_infinity(),
                    };
                    for c in 0..cols {
                        acc = match op {
                            ReduceOp::Sum => acc + at(x, c),
                            ReduceOp::Max => ir_max(acc, at(x, c)),
                        };
                    }
                    RowVal::F(vec![acc])
                }
            };
            vals.push(val);
        }
        for (o, decl) in prog.outputs.iter().enumerate() {
            let RowVal::F(v) = &vals[decl.value.index()] else {
                unreachable!("validated: outputs are f32")
            };
            let out = &mut outs[o];
            match decl.access {
                OutputAccess::Full => {
                    for c in 0..cols {
                        out[r * cols + c] = at(v, c);
                    }
                }
                OutputAccess::PerRow => out[r] = v[0],
                OutputAccess::ColSum => {
                    for (c, slot) in out.iter_mut().enumerate() {
                        *slot = *slot + at(v, c);
                    }
                }
                OutputAccess::Sum => out[0] = out[0] + v[0],
            }
        }
    }
    Ok(outs)
}
