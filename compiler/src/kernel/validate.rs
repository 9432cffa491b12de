//! The row-program validator: SSA order, operand types, levels, and what each output may hold.
//!
//! Every consumer (evaluator, CPU JIT, CUDA generator) validates first and then relies on these
//! facts without re-checking them, so a program that passes here can be compiled without any
//! backend panicking. The validator also returns each value's type and level, which the
//! scheduler and the backends need.

use super::row::{BinaryOp, Inst, Level, OutputAccess, RowProgram, UnaryOp, ValueId, ValueType};

/// Why a row program is invalid. Positions are value ids (`%i` is `body[i]`) or output indices.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum ValidateError {
    #[error("{at}: operand {operand} is not defined before its use")]
    ForwardReference { at: ValueId, operand: ValueId },
    #[error("{at}: load of undeclared input in{input}")]
    UnknownInput { at: ValueId, input: u32 },
    #[error("{at}: `{op}` expects {expected}, found {found}")]
    Type {
        at: ValueId,
        op: &'static str,
        expected: &'static str,
        found: String,
    },
    #[error("{at}: the seed and step of `rand_uniform` must be at most row-level")]
    RandKeyLevel { at: ValueId },
    #[error("output {index} `{name}` refers to undefined value {value}")]
    OutputUndefined {
        index: usize,
        name: String,
        value: ValueId,
    },
    #[error("output {index} `{name}` must be f32, {value} is {found:?}")]
    OutputType {
        index: usize,
        name: String,
        value: ValueId,
        found: ValueType,
    },
    #[error("output {index} `{name}` ({access:?}) needs a row- or kernel-level value, {value} is element-level")]
    OutputLevel {
        index: usize,
        name: String,
        access: OutputAccess,
        value: ValueId,
    },
    #[error("the program has more than {max} instructions, inputs or outputs")]
    TooLarge { max: usize },
}

/// The facts the validator established: type and level of every value.
#[derive(Clone, Debug, PartialEq)]
pub struct Typing {
    pub ty: Vec<ValueType>,
    pub level: Vec<Level>,
}

/// Limit on body length, inputs and outputs: far beyond any fused kernel, and it keeps ids in `u32`
/// and generated code bounded.
pub const MAX_ITEMS: usize = 1 << 16;

/// Checks `prog` and returns the type and level of every value.
pub fn validate(prog: &RowProgram) -> Result<Typing, ValidateError> {
    if prog.body.len() > MAX_ITEMS
        || prog.inputs.len() > MAX_ITEMS
        || prog.outputs.len() > MAX_ITEMS
    {
        return Err(ValidateError::TooLarge { max: MAX_ITEMS });
    }
    let mut ty: Vec<ValueType> = Vec::with_capacity(prog.body.len());
    let mut level: Vec<Level> = Vec::with_capacity(prog.body.len());
    for (i, inst) in prog.body.iter().enumerate() {
        let at = ValueId(i as u32);
        for operand in inst.operands() {
            if operand.index() >= i {
                return Err(ValidateError::ForwardReference { at, operand });
            }
        }
        let t = |v: ValueId| ty[v.index()];
        let lv = |v: ValueId| level[v.index()];
        let max_level = inst
            .operands()
            .iter()
            .map(|&v| lv(v))
            .max()
            .unwrap_or(Level::Kernel);
        let type_err =
            |op: &'static str, expected: &'static str, found: String| ValidateError::Type {
                at,
                op,
                expected,
                found,
            };
        let (vt, vl) = match *inst {
            Inst::Load(input) => {
                let decl = prog
                    .inputs
                    .get(input.index())
                    .ok_or(ValidateError::UnknownInput { at, input: input.0 })?;
                (ValueType::from(decl.dtype), decl.access.level())
            }
            Inst::ConstF32(_) => (ValueType::F32, Level::Kernel),
            Inst::ConstI32(_) => (ValueType::I32, Level::Kernel),
            Inst::Index(kind) => {
                use super::row::IndexKind;
                let l = match kind {
                    IndexKind::Row => Level::Row,
                    IndexKind::Col => Level::Elem,
                    IndexKind::Rows | IndexKind::Cols => Level::Kernel,
                };
                (ValueType::I32, l)
            }
            Inst::Unary(op, a) => {
                let ok = match op {
                    UnaryOp::Neg | UnaryOp::Abs => matches!(t(a), ValueType::F32 | ValueType::I32),
                    UnaryOp::Not => t(a) == ValueType::Mask,
                    UnaryOp::Exp
                    | UnaryOp::Log
                    | UnaryOp::Sqrt
                    | UnaryOp::Rsqrt
                    | UnaryOp::Recip
                    | UnaryOp::Tanh
                    | UnaryOp::Erf
                    | UnaryOp::Sigmoid => t(a) == ValueType::F32,
                };
                if !ok {
                    let expected = match op {
                        UnaryOp::Neg | UnaryOp::Abs => "f32 or i32",
                        UnaryOp::Not => "mask",
                        _ => "f32",
                    };
                    return Err(type_err(op.mnemonic(), expected, format!("{:?}", t(a))));
                }
                (t(a), max_level)
            }
            Inst::Binary(op, a, b) => {
                let allowed: &[ValueType] = match op {
                    BinaryOp::Add | BinaryOp::Sub | BinaryOp::Mul | BinaryOp::Div => {
                        &[ValueType::F32, ValueType::I32]
                    }
                    BinaryOp::Max | BinaryOp::Min => &[ValueType::F32, ValueType::I32],
                    BinaryOp::Rem => &[ValueType::I32],
                    BinaryOp::And | BinaryOp::Or => &[ValueType::Mask],
                };
                if t(a) != t(b) || !allowed.contains(&t(a)) {
                    let expected = match op {
                        BinaryOp::Rem => "two i32",
                        BinaryOp::And | BinaryOp::Or => "two masks",
                        _ => "two f32 or two i32",
                    };
                    return Err(type_err(
                        op.mnemonic(),
                        expected,
                        format!("{:?}, {:?}", t(a), t(b)),
                    ));
                }
                (t(a), max_level)
            }
            Inst::Fma(a, b, c) => {
                if [a, b, c].iter().any(|&v| t(v) != ValueType::F32) {
                    return Err(type_err(
                        "fma",
                        "three f32",
                        format!("{:?}, {:?}, {:?}", t(a), t(b), t(c)),
                    ));
                }
                (ValueType::F32, max_level)
            }
            Inst::Cmp(op, a, b) => {
                if t(a) != t(b) || t(a) == ValueType::Mask {
                    return Err(type_err(
                        op.mnemonic(),
                        "two f32 or two i32",
                        format!("{:?}, {:?}", t(a), t(b)),
                    ));
                }
                (ValueType::Mask, max_level)
            }
            Inst::Select(m, a, b) => {
                if t(m) != ValueType::Mask || t(a) != t(b) || t(a) == ValueType::Mask {
                    return Err(type_err(
                        "select",
                        "a mask and two f32 or two i32",
                        format!("{:?}, {:?}, {:?}", t(m), t(a), t(b)),
                    ));
                }
                (t(a), max_level)
            }
            Inst::I32ToF32(a) => {
                if t(a) != ValueType::I32 {
                    return Err(type_err("i32_to_f32", "i32", format!("{:?}", t(a))));
                }
                (ValueType::F32, max_level)
            }
            Inst::RandUniform { seed, step, .. } => {
                if t(seed) != ValueType::I32 || t(step) != ValueType::I32 {
                    return Err(type_err(
                        "rand_uniform",
                        "an i32 seed and an i32 step",
                        format!("{:?}, {:?}", t(seed), t(step)),
                    ));
                }
                if max_level > Level::Row {
                    return Err(ValidateError::RandKeyLevel { at });
                }
                (ValueType::F32, Level::Elem)
            }
            Inst::Reduce(op, a) => {
                if t(a) != ValueType::F32 {
                    return Err(type_err(op.mnemonic(), "f32", format!("{:?}", t(a))));
                }
                (ValueType::F32, Level::Row)
            }
        };
        ty.push(vt);
        level.push(vl);
    }
    for (index, out) in prog.outputs.iter().enumerate() {
        let Some(&vt) = ty.get(out.value.index()) else {
            return Err(ValidateError::OutputUndefined {
                index,
                name: out.name.clone(),
                value: out.value,
            });
        };
        if vt != ValueType::F32 {
            return Err(ValidateError::OutputType {
                index,
                name: out.name.clone(),
                value: out.value,
                found: vt,
            });
        }
        let needs_row = match out.access {
            OutputAccess::Full | OutputAccess::ColSum => false,
            OutputAccess::PerRow | OutputAccess::Sum => true,
        };
        if needs_row && level[out.value.index()] == Level::Elem {
            return Err(ValidateError::OutputLevel {
                index,
                name: out.name.clone(),
                access: out.access,
                value: out.value,
            });
        }
    }
    Ok(Typing { ty, level })
}
