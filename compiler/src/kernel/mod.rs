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

/// How one `[batch, heads, len, head_dim]` attention operand is laid out in its buffer (the last
/// axis is always contiguous).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum HeadLayout {
    /// Row-major `[batch, heads, len, head_dim]`: each head's rows are adjacent.
    #[default]
    HeadMajor,
    /// Row-major `[batch, len, heads, head_dim]`: the heads of one position are adjacent, as a
    /// projection's `[batch·len, heads·head_dim]` output holds them. Reading and writing this
    /// layout directly is what removes the head-split and head-merge transposes around attention.
    SeqMajor,
}

impl HeadLayout {
    /// Element strides `(batch, head, row)` of a tensor with `heads` heads of `len` rows of
    /// `head_dim` (the `head_dim` stride is 1). Both layouts span `batch·heads·len·head_dim`
    /// elements, so buffer sizes do not depend on the layout.
    pub fn strides(self, heads: usize, len: usize, head_dim: usize) -> (usize, usize, usize) {
        match self {
            HeadLayout::HeadMajor => (heads * len * head_dim, len * head_dim, head_dim),
            HeadLayout::SeqMajor => (len * heads * head_dim, head_dim, heads * head_dim),
        }
    }

    /// Offset of element `(b, h, i, 0)`.
    pub fn offset(
        self,
        heads: usize,
        len: usize,
        head_dim: usize,
        b: usize,
        h: usize,
        i: usize,
    ) -> usize {
        let (sb, sh, sr) = self.strides(heads, len, head_dim);
        b * sb + h * sh + i * sr
    }

    /// The name in kernel listings: the axis order as stored.
    pub fn name(self) -> &'static str {
        match self {
            HeadLayout::HeadMajor => "bhtd",
            HeadLayout::SeqMajor => "bthd",
        }
    }

    /// A head-major `[batch, heads, len, head_dim]` tensor stored in this layout, or (`back`)
    /// this layout's tensor as head-major: what tests and hosts use to feed and read operands.
    pub fn relayout(
        self,
        x: &[f32],
        (batch, heads, len, head_dim): (usize, usize, usize, usize),
        back: bool,
    ) -> Vec<f32> {
        let mut y = vec![f32::NAN; x.len()];
        for b in 0..batch {
            for h in 0..heads {
                for i in 0..len {
                    let at = self.offset(heads, len, head_dim, b, h, i);
                    let plain = ((b * heads + h) * len + i) * head_dim;
                    let (from, to) = if back { (at, plain) } else { (plain, at) };
                    y[to..to + head_dim].copy_from_slice(&x[from..from + head_dim]);
                }
            }
        }
        y
    }
}

/// The layout of every `[batch, heads, len, head_dim]` operand of an attention kernel. The forward
/// uses `q, k, v, o`; the backward all eight. `dq` has `q`'s shape, `dk`/`dv` have `k`'s.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AttentionLayout {
    pub q: HeadLayout,
    pub k: HeadLayout,
    pub v: HeadLayout,
    pub o: HeadLayout,
    pub d_o: HeadLayout,
    pub dq: HeadLayout,
    pub dk: HeadLayout,
    pub dv: HeadLayout,
}

impl AttentionLayout {
    /// Every operand head-major (`[batch, heads, len, head_dim]`).
    pub const HEAD_MAJOR: AttentionLayout = AttentionLayout {
        q: HeadLayout::HeadMajor,
        k: HeadLayout::HeadMajor,
        v: HeadLayout::HeadMajor,
        o: HeadLayout::HeadMajor,
        d_o: HeadLayout::HeadMajor,
        dq: HeadLayout::HeadMajor,
        dk: HeadLayout::HeadMajor,
        dv: HeadLayout::HeadMajor,
    };

    /// `(name, layout)` of each operand, in the order above.
    pub fn operands(&self) -> [(&'static str, HeadLayout); 8] {
        [
            ("q", self.q),
            ("k", self.k),
            ("v", self.v),
            ("o", self.o),
            ("do", self.d_o),
            ("dq", self.dq),
            ("dk", self.dk),
            ("dv", self.dv),
        ]
    }
}

/// Scaled-dot-product attention over `[batch, heads, seq, head_dim]` tensors with grouped
/// key-value heads (`heads % kv_heads == 0`; 1 is MQA, `heads` is MHA). Each of those tensors is
/// stored head-major or sequence-major as `layout` says (fusion picks sequence-major where the
/// operand is a head split of a projection or the result feeds a head merge, so no transpose is
/// copied).
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
    /// How `q, k, v, o, do, dq, dk, dv` are stored (see [`AttentionKernel::check`]).
    pub layout: AttentionLayout,
}

impl AttentionKernel {
    /// The invariants every executor relies on: grouped heads divide, and a forward kernel leaves
    /// the layouts of the operands it does not have (`do, dq, dk, dv`) head-major, so that equal
    /// kernels print and compare equal.
    pub fn check(&self) -> Result<(), String> {
        if self.kv_heads == 0 && self.heads > 0
            || self.kv_heads > 0 && !self.heads.is_multiple_of(self.kv_heads)
        {
            return Err(format!(
                "heads ({}) is not a multiple of kv_heads ({})",
                self.heads, self.kv_heads
            ));
        }
        let l = self.layout;
        if self.direction == Direction::Forward
            && [l.d_o, l.dq, l.dk, l.dv]
                .iter()
                .any(|x| *x != HeadLayout::HeadMajor)
        {
            return Err("a forward attention kernel has no do, dq, dk or dv to lay out".into());
        }
        Ok(())
    }
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
                "attention.{} batch={} heads={} kv_heads={} q_len={} kv_len={} head_dim={} scale={} mask={} bias={} key_padding={}{}",
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
                a.key_padding,
                layout_text(&a.layout),
            ),
        }
    }
}

/// ` layout=q:bthd,...` naming the operands that are not head-major; empty when none is.
fn layout_text(l: &AttentionLayout) -> String {
    let seq: Vec<String> = l
        .operands()
        .iter()
        .filter(|(_, x)| *x != HeadLayout::HeadMajor)
        .map(|(n, x)| format!("{n}:{}", x.name()))
        .collect();
    if seq.is_empty() {
        String::new()
    } else {
        format!(" layout={}", seq.join(","))
    }
}

fn operand_text(o: GemmOperand) -> String {
    format!(
        "[{}batch_stride={}]",
        if o.transposed { "T " } else { "" },
        o.batch_stride
    )
}
