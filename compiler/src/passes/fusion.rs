//! Fusion: a bound training graph → a [`Program`] of kernels over flat buffers.
//!
//! Consumes a verified graph whose dims are all constant (`Graph::bind`), usually a whole
//! training step (forward, loss, backward, optimizer update) after attention recognition and the
//! cleanup passes. Produces a `Program`; the graph is left alone.
//!
//! How each op lands:
//! - `MatMul` → `Kernel::Gemm`: batch dims folded into `m` when the right operand is a shared
//!   matrix, transposes (a `Permute` that swaps the last two axes) and batch broadcasts (a
//!   2-d operand broadcast over the batch) folded into the operand, never copied.
//! - `Attention` → a forward attention kernel (which also writes the per-row logsumexp), and all
//!   `AttentionBackward` nodes over the same operands → one backward kernel.
//! - `Reshape`, `StopGradient` and slices that pick a contiguous range → views of the same
//!   buffer (no copy).
//! - `Gather`, `ScatterAdd`, `Permute`, strided `Slice`, `Pad`, `Concat`, broadcasts and
//!   reductions that no row program can express, `RandUniform` → data kernels (`kernel::data`).
//! - Everything else — elementwise ops, reductions over trailing axes (per-row values), over
//!   leading axes (column sums: bias and gain gradients) or over everything (loss and norm
//!   sums), per-row/per-column/scalar broadcasts, `TakeAlong`/`PutAlong` (as a compare with the
//!   column index) — → row programs, grown greedily (see `place`): a node joins the row group of
//!   its operands when it fits that group's `rows × cols` space and joining creates no cycle
//!   between kernels; groups of one space with no path between them are merged when a node
//!   needs both. So a LayerNorm is one kernel forward and one backward, the cross-entropy
//!   forward and its backward are one kernel (its `[tokens, vocab]` probabilities never touch
//!   memory), and each parameter's AdamW update is one kernel that writes `p`, `m`, `v` in place.
//! - Values that only depend on constants and iotas (masks, position tables, the loss seed) are
//!   computed inside the kernels that use them from the row and column indices, or, when that is
//!   impossible (sines, gathers), once at compile time into a `Const` buffer.
//!
//! Materialisation: a value gets a buffer only when another kernel, an output or an update reads
//! it. A row group that needs a cheap elementwise value computed in another group recomputes it
//! from that group's inputs (LayerNorm's normalised input in the backward, the GELU
//! pre-activation, integer index arithmetic) instead of storing and loading it; per-row
//! statistics and sums are never recomputed, only stored (they are small), and neither are
//! transcendentals (a multi-pass consumer would evaluate them once per pass: the backward of an
//! unfused softmax reads stored probabilities). Divisions by a per-row or constant denominator
//! become a reciprocal (once per row) and a multiplication.
//!
//! Deliberately absent: memory planning (the program lists buffers; a planner or the runtime
//! assigns offsets), any notion of threads or vector widths, and dtypes other than f32 for
//! floats (an error names the value).

mod analyze;
mod emit;
mod lower;
mod place;

use crate::ir::{Graph, IrError};
use crate::program::Program;

/// Why a graph could not be turned into a program.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FusionError {
    #[error(transparent)]
    Ir(#[from] IrError),
    #[error("fusion needs a bound graph: `{value}` has symbolic shape {shape}")]
    Unbound { value: String, shape: String },
    #[error("fusion supports f32 floats only: `{value}` is {dtype}")]
    DType { value: String, dtype: String },
    #[error("fusion cannot lower `{value}` ({op}): {detail}")]
    Unsupported {
        value: String,
        op: String,
        detail: String,
    },
    #[error("fusion produced an invalid kernel for `{value}`: {detail}")]
    Internal { value: String, detail: String },
}

/// Fuses a bound graph (see the module doc).
pub fn fuse(graph: &Graph) -> Result<Program, FusionError> {
    let info = analyze::Info::new(graph)?;
    let plan = place::place(&info)?;
    lower::lower(&info, &plan)
}
