//! Structural identity of row programs, the key under which backends cache compiled kernels.
//!
//! Two programs are structurally equal when they differ at most in names: same inputs (dtype,
//! access), same instructions (constants compared by bits), same outputs. The hash is FNV-1a over
//! a canonical word encoding, so it is stable across runs, platforms and Rust versions (unlike
//! `std`'s `DefaultHasher`). Caches must still compare [`canonical_words`] on a hit: a 64-bit hash
//! can collide.

use super::row::{
    BinaryOp, CmpOp, DType, IndexKind, InputAccess, Inst, OutputAccess, ReduceOp, RowProgram,
    UnaryOp,
};

/// Bumped whenever the encoding or the semantics of an instruction changes, so stale on-disk
/// caches keyed by the hash cannot match.
const ENCODING_VERSION: u64 = 1;

fn dtype_code(d: DType) -> u64 {
    match d {
        DType::F32 => 0,
        DType::I32 => 1,
    }
}

fn input_access_code(a: InputAccess) -> u64 {
    match a {
        InputAccess::Full => 0,
        InputAccess::PerRow => 1,
        InputAccess::PerCol => 2,
        InputAccess::Scalar => 3,
    }
}

fn output_access_code(a: OutputAccess) -> u64 {
    match a {
        OutputAccess::Full => 0,
        OutputAccess::PerRow => 1,
        OutputAccess::ColSum => 2,
        OutputAccess::Sum => 3,
    }
}

fn unary_code(op: UnaryOp) -> u64 {
    match op {
        UnaryOp::Neg => 0,
        UnaryOp::Abs => 1,
        UnaryOp::Exp => 2,
        UnaryOp::Log => 3,
        UnaryOp::Sqrt => 4,
        UnaryOp::Rsqrt => 5,
        UnaryOp::Recip => 6,
        UnaryOp::Tanh => 7,
        UnaryOp::Erf => 8,
        UnaryOp::Sigmoid => 9,
        UnaryOp::Not => 10,
    }
}

fn binary_code(op: BinaryOp) -> u64 {
    match op {
        BinaryOp::Add => 0,
        BinaryOp::Sub => 1,
        BinaryOp::Mul => 2,
        BinaryOp::Div => 3,
        BinaryOp::Rem => 4,
        BinaryOp::Max => 5,
        BinaryOp::Min => 6,
        BinaryOp::And => 7,
        BinaryOp::Or => 8,
    }
}

fn cmp_code(op: CmpOp) -> u64 {
    match op {
        CmpOp::Eq => 0,
        CmpOp::Ne => 1,
        CmpOp::Lt => 2,
        CmpOp::Le => 3,
        CmpOp::Gt => 4,
        CmpOp::Ge => 5,
    }
}

fn reduce_code(op: ReduceOp) -> u64 {
    match op {
        ReduceOp::Sum => 0,
        ReduceOp::Max => 1,
    }
}

fn index_code(k: IndexKind) -> u64 {
    match k {
        IndexKind::Row => 0,
        IndexKind::Col => 1,
        IndexKind::Rows => 2,
        IndexKind::Cols => 3,
    }
}

/// The canonical encoding: everything but names, one instruction per word group.
pub fn canonical_words(prog: &RowProgram) -> Vec<u64> {
    let mut w =
        Vec::with_capacity(4 + prog.inputs.len() + 4 * prog.body.len() + prog.outputs.len());
    w.push(ENCODING_VERSION);
    w.push(prog.inputs.len() as u64);
    for input in &prog.inputs {
        w.push(dtype_code(input.dtype) << 8 | input_access_code(input.access));
    }
    w.push(prog.body.len() as u64);
    for inst in &prog.body {
        let v = |x: super::row::ValueId| x.0 as u64;
        match *inst {
            Inst::Load(i) => w.extend([0, i.0 as u64]),
            Inst::ConstF32(c) => w.extend([1, c.to_bits() as u64]),
            Inst::ConstI32(c) => w.extend([2, c as u32 as u64]),
            Inst::Index(k) => w.extend([3, index_code(k)]),
            Inst::Unary(op, a) => w.extend([4, unary_code(op), v(a)]),
            Inst::Binary(op, a, b) => w.extend([5, binary_code(op), v(a), v(b)]),
            Inst::Fma(a, b, c) => w.extend([6, v(a), v(b), v(c)]),
            Inst::Cmp(op, a, b) => w.extend([7, cmp_code(op), v(a), v(b)]),
            Inst::Select(m, a, b) => w.extend([8, v(m), v(a), v(b)]),
            Inst::I32ToF32(a) => w.extend([9, v(a)]),
            Inst::RandUniform { seed, step, stream } => {
                w.extend([10, v(seed), v(step), stream as u64])
            }
            Inst::Reduce(op, a) => w.extend([11, reduce_code(op), v(a)]),
        }
    }
    w.push(prog.outputs.len() as u64);
    for out in &prog.outputs {
        w.push(output_access_code(out.access) << 32 | out.value.0 as u64);
    }
    w
}

/// FNV-1a (64-bit) over the little-endian bytes of the canonical words.
pub fn structural_hash(prog: &RowProgram) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for word in canonical_words(prog) {
        for byte in word.to_le_bytes() {
            h ^= byte as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// Equal up to names.
pub fn structurally_equal(a: &RowProgram, b: &RowProgram) -> bool {
    canonical_words(a) == canonical_words(b)
}
