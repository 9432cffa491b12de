//! The stable text form of kernels, used by `kiln compile --emit kernels`, snapshots and error
//! messages.
//!
//! One instruction per line, `%i = mnemonic operands`, followed (when the program validates) by a
//! comment with the value's type and level. Constants print with Rust's shortest round-trip
//! formatting, so two programs print the same iff they are equal up to NaN payloads (which print
//! as bits). Nothing depends on hash-map order.

use std::fmt::{self, Write};

use super::row::{
    BinaryOp, CmpOp, DType, IndexKind, InputAccess, Inst, Level, OutputAccess, ReduceOp,
    RowProgram, UnaryOp, ValueType,
};

impl UnaryOp {
    pub fn mnemonic(self) -> &'static str {
        match self {
            UnaryOp::Neg => "neg",
            UnaryOp::Abs => "abs",
            UnaryOp::Exp => "exp",
            UnaryOp::Log => "log",
            UnaryOp::Sqrt => "sqrt",
            UnaryOp::Rsqrt => "rsqrt",
            UnaryOp::Recip => "recip",
            UnaryOp::Tanh => "tanh",
            UnaryOp::Erf => "erf",
            UnaryOp::Sigmoid => "sigmoid",
            UnaryOp::Not => "not",
        }
    }
}

impl BinaryOp {
    pub fn mnemonic(self) -> &'static str {
        match self {
            BinaryOp::Add => "add",
            BinaryOp::Sub => "sub",
            BinaryOp::Mul => "mul",
            BinaryOp::Div => "div",
            BinaryOp::Rem => "rem",
            BinaryOp::Max => "max",
            BinaryOp::Min => "min",
            BinaryOp::And => "and",
            BinaryOp::Or => "or",
        }
    }
}

impl CmpOp {
    pub fn mnemonic(self) -> &'static str {
        match self {
            CmpOp::Eq => "cmp.eq",
            CmpOp::Ne => "cmp.ne",
            CmpOp::Lt => "cmp.lt",
            CmpOp::Le => "cmp.le",
            CmpOp::Gt => "cmp.gt",
            CmpOp::Ge => "cmp.ge",
        }
    }
}

impl ReduceOp {
    pub fn mnemonic(self) -> &'static str {
        match self {
            ReduceOp::Sum => "row_sum",
            ReduceOp::Max => "row_max",
        }
    }
}

impl IndexKind {
    pub fn mnemonic(self) -> &'static str {
        match self {
            IndexKind::Row => "index.row",
            IndexKind::Col => "index.col",
            IndexKind::Rows => "index.rows",
            IndexKind::Cols => "index.cols",
        }
    }
}

fn dtype_name(d: DType) -> &'static str {
    match d {
        DType::F32 => "f32",
        DType::I32 => "i32",
    }
}

fn type_name(t: ValueType) -> &'static str {
    match t {
        ValueType::F32 => "f32",
        ValueType::I32 => "i32",
        ValueType::Mask => "mask",
    }
}

fn level_name(l: Level) -> &'static str {
    match l {
        Level::Kernel => "kernel",
        Level::Row => "row",
        Level::Elem => "elem",
    }
}

fn input_shape(a: InputAccess) -> &'static str {
    match a {
        InputAccess::Full => "[rows, cols]",
        InputAccess::PerRow => "[rows]",
        InputAccess::PerCol => "[cols]",
        InputAccess::Scalar => "[1]",
    }
}

fn output_shape(a: OutputAccess) -> &'static str {
    match a {
        OutputAccess::Full => "[rows, cols]",
        OutputAccess::PerRow => "[rows]",
        OutputAccess::ColSum => "[cols] col_sum",
        OutputAccess::Sum => "[1] sum",
    }
}

/// Names print bare when they are plain identifiers or paths, quoted otherwise.
fn name(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if plain {
        s.to_string()
    } else {
        format!("{s:?}")
    }
}

/// An `f32` constant in a form that parses back to the same bits.
pub fn f32_literal(c: f32) -> String {
    if c.is_nan() {
        format!("nan(0x{:08x})", c.to_bits())
    } else {
        format!("{c:?}")
    }
}

fn inst_text(inst: &Inst) -> String {
    match *inst {
        Inst::Load(i) => format!("load {i}"),
        Inst::ConstF32(c) => format!("const.f32 {}", f32_literal(c)),
        Inst::ConstI32(c) => format!("const.i32 {c}"),
        Inst::Index(k) => k.mnemonic().to_string(),
        Inst::Unary(op, a) => format!("{} {a}", op.mnemonic()),
        Inst::Binary(op, a, b) => format!("{} {a}, {b}", op.mnemonic()),
        Inst::Fma(a, b, c) => format!("fma {a}, {b}, {c}"),
        Inst::Cmp(op, a, b) => format!("{} {a}, {b}", op.mnemonic()),
        Inst::Select(m, a, b) => format!("select {m}, {a}, {b}"),
        Inst::I32ToF32(a) => format!("i32_to_f32 {a}"),
        Inst::RandUniform { seed, step, stream } => {
            format!("rand_uniform {seed}, {step}, stream {stream}")
        }
        Inst::Reduce(op, a) => format!("{} {a}", op.mnemonic()),
    }
}

/// The text form of a row program.
pub fn print_row_program(prog: &RowProgram) -> String {
    let typing = super::validate::validate(prog).ok();
    let mut s = String::new();
    let _ = writeln!(s, "row_kernel {} {{", name(&prog.name));
    for (i, input) in prog.inputs.iter().enumerate() {
        let _ = writeln!(
            s,
            "  in{i} {}: {}{}",
            name(&input.name),
            dtype_name(input.dtype),
            input_shape(input.access)
        );
    }
    for (i, inst) in prog.body.iter().enumerate() {
        let line = format!("  %{i} = {}", inst_text(inst));
        match &typing {
            Some(t) => {
                let _ = writeln!(
                    s,
                    "{line:<40} ; {} {}",
                    type_name(t.ty[i]),
                    level_name(t.level[i])
                );
            }
            None => {
                let _ = writeln!(s, "{line}");
            }
        }
    }
    for (i, out) in prog.outputs.iter().enumerate() {
        let _ = writeln!(
            s,
            "  out{i} {}: f32{} = {}",
            name(&out.name),
            output_shape(out.access),
            out.value
        );
    }
    s.push_str("}\n");
    s
}

impl fmt::Display for RowProgram {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&print_row_program(self))
    }
}
