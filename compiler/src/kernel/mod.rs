//! Backend-neutral kernel IR, produced by fusion and consumed by the CPU (Cranelift) and CUDA (NVRTC) code generators.
//!
//! A [`Kernel`] is one of a closed set of kinds. [`RowProgram`] is the one code generators
//! compile: elementwise chains, row reductions and optimizer updates fused into one pass structure
//! over a `rows × cols` space (see [`row`]). GEMM and attention are library calls on every
//! backend, so their kinds only carry parameters.
//!
//! What lives here: the types ([`row`]), the validator ([`validate`]), the phase schedule shared by
//! code generators ([`schedule`]), the printer ([`print`]) and its parser ([`parse`]), the
//! structural hash used as the
//! compiled-kernel cache key ([`hash`]), the counter-based RNG that every backend must reproduce
//! bit-exactly ([`rng`]), the reference evaluator that is every backend's oracle ([`eval`]), and
//! hand-written programs for the standard fused regions ([`library`]). Deliberately absent:
//! anything about vector widths, threads, memory addresses or a particular backend.

pub mod data;
pub mod eval;
pub mod hash;
pub mod library;
pub mod parse;
pub mod print;
pub mod rng;
pub mod row;
pub mod schedule;
pub mod validate;

pub use eval::{evaluate, BufferRef, LaunchError};
pub use hash::{structural_hash, structurally_equal};
pub use parse::{parse_row_program, ParseError};
pub use row::{
    BinaryOp, CmpOp, DType, IndexKind, InputAccess, InputDecl, Inst, Level, OutputAccess,
    OutputDecl, ReduceOp, RowBuilder, RowProgram, UnaryOp, ValueId, ValueType,
};
pub use schedule::{schedule, Schedule};
pub use validate::{validate, ValidateError};

use std::fmt;

/// One kernel of the kernel graph. Buffers are bound by the kernel graph, not named here.
#[derive(Clone, Debug, PartialEq)]
pub enum Kernel {
    /// A fused elementwise / row-reduction program, compiled by each backend.
    Row(RowProgram),
    /// A (batched) matrix product, executed by a GEMM library.
    Gemm(GemmKernel),
    /// Fused scaled-dot-product attention, executed by a hand-written or library kernel.
    Attention(AttentionKernel),
    /// Layout and indexing work (permute, slice, pad, concat, gather, scatter-add, general
    /// reductions, dropout noise); see [`data`].
    Data(data::DataKernel),
}

/// One operand of a GEMM as stored: row-major `[batch?, rows, cols]`, optionally read transposed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GemmOperand {
    /// Read as its transpose (`A^T`), i.e. stored `[k, m]` for A or `[n, k]` for B.
    pub transposed: bool,
    /// Elements between consecutive batch entries; 0 broadcasts one matrix over the batch.
    pub batch_stride: usize,
}

/// `D[b] = alpha * op(A[b]) @ op(B[b]) (+ D[b] when accumulate)` with `op(A)` `m×k` and `op(B)`
/// `k×n`, all `f32`, `D` row-major dense `[batch, m, n]`. Inputs: `A`, `B`; output: `D`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmKernel {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub a: GemmOperand,
    pub b: GemmOperand,
    pub alpha: f32,
    /// Add into `D` instead of overwriting it (gradient accumulation).
    pub accumulate: bool,
}

/// Which keys each query may attend to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AttentionMask {
    /// Every key.
    Full,
    /// Query `i` sees keys `j <= i + kv_len - q_len`.
    Causal,
    /// Causal, and only the last `window` keys (GPT-3's locally banded layers).
    Local { window: usize },
    /// Keys `j < prefix` are visible to every query; causal after that (prefix LM).
    PrefixLm { prefix: usize },
    /// Prefix LM with one prefix length per batch row, read from an extra `i32` input `[batch]`.
    PrefixLmLengths,
}

/// Forward or backward of attention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    Forward,
    Backward,
}

/// Scaled-dot-product attention over `[batch, heads, seq, head_dim]` tensors with grouped
/// key-value heads (`heads % kv_heads == 0`; 1 is MQA, `heads` is MHA).
/// Forward: inputs `q, k, v` (+ `bias` `[heads, q_len, kv_len]` when `has_bias`, for T5 relative
/// positions; + `prefix_len` `[batch]` for `PrefixLmLengths`; + `key_len` `[batch]` when
/// `key_padding`); outputs `o` and the per-row logsumexp `[batch, heads, q_len]` for backward.
/// Backward: inputs `q, k, v, o, do, lse` (+ the same extras); outputs `dq, dk, dv` (+ `dbias`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionKernel {
    pub direction: Direction,
    pub batch: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
    /// Usually `1 / sqrt(head_dim)`.
    pub scale: f32,
    pub mask: AttentionMask,
    pub has_bias: bool,
    /// Batch row `b` sees only keys `j < key_len[b]` (an extra `[batch]` input).
    pub key_padding: bool,
}

impl fmt::Display for Kernel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Kernel::Row(p) => write!(f, "{p}"),
            Kernel::Gemm(g) => writeln!(
                f,
                "gemm batch={} m={} n={} k={} a{} b{} alpha={} accumulate={}",
                g.batch,
                g.m,
                g.n,
                g.k,
                operand_text(g.a),
                operand_text(g.b),
                print::f32_literal(g.alpha),
                g.accumulate
            ),
            Kernel::Data(d) => writeln!(f, "{d}"),
            Kernel::Attention(a) => writeln!(
                f,
                "attention.{} batch={} heads={} kv_heads={} q_len={} kv_len={} head_dim={} scale={} mask={} bias={} key_padding={}",
                match a.direction {
                    Direction::Forward => "fwd",
                    Direction::Backward => "bwd",
                },
                a.batch,
                a.heads,
                a.kv_heads,
                a.q_len,
                a.kv_len,
                a.head_dim,
                print::f32_literal(a.scale),
                match a.mask {
                    AttentionMask::Full => "full".to_string(),
                    AttentionMask::Causal => "causal".to_string(),
                    AttentionMask::Local { window } => format!("local({window})"),
                    AttentionMask::PrefixLm { prefix } => format!("prefix_lm({prefix})"),
                    AttentionMask::PrefixLmLengths => "prefix_lm(lengths)".to_string(),
                },
                a.has_bias,
                a.key_padding
            ),
        }
    }
}

fn operand_text(o: GemmOperand) -> String {
    format!(
        "[{}batch_stride={}]",
        if o.transposed { "T " } else { "" },
        o.batch_stride
    )
}
