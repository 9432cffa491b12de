//! Matrix products for the CPU backend: a checked, strided front end over the `gemm` crate.
//!
//! Every matmul in a training step (projections, MLPs, their weight and input gradients, the naive
//! attention path) comes through here, so this module owns three decisions: how a transpose is
//! expressed (as strides, never as a copy), how a batch is walked (a batch stride, 0 for a rhs shared
//! by every batch element), and when to spend the second core (`GemmThreads::Auto`, a rule measured on
//! the shapes of the small GPTs we train; see `AUTO_THREADS_MIN_FLOPS`). All index arithmetic is
//! checked against the slices before the `unsafe` call, so a bad shape is an error, not a crash.

use rayon::prelude::*;
use thiserror::Error;

/// How a matrix operand lies in its slice: element `(i, j)` of batch element `b` is at
/// `offset + b * batch_stride + i * row_stride + j * col_stride`.
///
/// The view describes the operand *as it enters the product* (`op(A)` is `[m, k]`), so a transpose
/// is the same storage with the two strides swapped ([`MatView::t`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatView {
    pub offset: usize,
    pub row_stride: usize,
    pub col_stride: usize,
    pub batch_stride: usize,
}

impl MatView {
    /// A contiguous row-major `[rows, cols]` matrix; consecutive batch elements follow each other.
    pub const fn row_major(rows: usize, cols: usize) -> Self {
        MatView {
            offset: 0,
            row_stride: cols,
            col_stride: 1,
            batch_stride: rows * cols,
        }
    }

    /// The transpose of this view (same storage).
    pub const fn t(self) -> Self {
        MatView {
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// The same matrix for every batch element (batch stride 0).
    pub const fn broadcast(self) -> Self {
        MatView {
            batch_stride: 0,
            ..self
        }
    }

    pub const fn with_offset(self, offset: usize) -> Self {
        MatView { offset, ..self }
    }

    pub const fn with_batch_stride(self, batch_stride: usize) -> Self {
        MatView {
            batch_stride,
            ..self
        }
    }
}

/// BLAS-style operand flag for [`sgemm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trans {
    /// Use the stored row-major matrix as is.
    No,
    /// Use the transpose of the stored row-major matrix.
    Yes,
}

/// How many threads a product may use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum GemmThreads {
    /// Let the size rule decide (see [`AUTO_THREADS_MIN_FLOPS`]).
    #[default]
    Auto,
    /// One thread, no rayon involvement (use this from inside an already-parallel region).
    Single,
    /// Up to this many rayon threads (0 = the pool's size).
    Rayon(usize),
}

/// Shape and scalars of `C[b] = alpha * op(A)[b] * op(B)[b] + beta * C[b]` for `b < batch`, with
/// `op(A)` of shape `[m, k]`, `op(B)` `[k, n]` and `C` `[m, n]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmParams {
    pub batch: usize,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    /// `beta == 0` overwrites `C` without reading it (NaNs already in `C` do not leak through).
    pub beta: f32,
    pub threads: GemmThreads,
}

impl GemmParams {
    /// `C = op(A) * op(B)` for a single matrix, threads chosen automatically.
    pub const fn new(m: usize, n: usize, k: usize) -> Self {
        GemmParams {
            batch: 1,
            m,
            n,
            k,
            alpha: 1.0,
            beta: 0.0,
            threads: GemmThreads::Auto,
        }
    }

    pub const fn batched(self, batch: usize) -> Self {
        GemmParams { batch, ..self }
    }

    pub const fn scaled(self, alpha: f32, beta: f32) -> Self {
        GemmParams {
            alpha,
            beta,
            ..self
        }
    }

    pub const fn with_threads(self, threads: GemmThreads) -> Self {
        GemmParams { threads, ..self }
    }

    /// Floating-point operations of the whole (batched) product.
    pub fn flops(&self) -> f64 {
        2.0 * self.batch as f64 * self.m as f64 * self.n as f64 * self.k as f64
    }
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum GemmError {
    #[error(
        "gemm: operand {operand} ([{batch} x {rows} x {cols}], view {view:?}) reaches index {needed} but its slice has {len} elements"
    )]
    OutOfBounds {
        operand: &'static str,
        batch: usize,
        rows: usize,
        cols: usize,
        view: MatView,
        needed: usize,
        len: usize,
    },
    #[error(
        "gemm: output C ([{batch} x {rows} x {cols}], view {view:?}) has overlapping elements; every output element needs its own storage"
    )]
    OverlappingOutput {
        batch: usize,
        rows: usize,
        cols: usize,
        view: MatView,
    },
    #[error("gemm: index arithmetic overflows for operand {operand}")]
    Overflow { operand: &'static str },
}

/// Below this many flops per matrix (`2*m*n*k`), `Auto` keeps one matrix on one thread. Measured on
/// the 2-core Zen machine (`cargo bench -p kiln-runtime --bench cpu_kernels -- gemm`, fastest call,
/// GFLOP/s with 1 -> 2 threads): [768x128]x[128x384] 112 -> 207, [768x128]x[128x128] 113 -> 189,
/// dY[768x384]x Wᵀ 113 -> 196; a batch of 48 [64x32]x[32x64] products 79 -> 127 with one matrix per
/// task. The gemm crate itself declines to split products below about 1.2 MFLOP.
pub const AUTO_THREADS_MIN_FLOPS: f64 = 4.0e6;

/// `C = alpha * op(A) * op(B) + beta * C` on strided, possibly batched views. See [`GemmParams`].
///
/// Errors (never panics) when a view reaches outside its slice or when `C`'s view maps two output
/// elements to the same storage (including a `C` batch stride of 0 with `batch > 1`).
pub fn gemm(
    p: &GemmParams,
    a: &[f32],
    a_view: MatView,
    b: &[f32],
    b_view: MatView,
    c: &mut [f32],
    c_view: MatView,
) -> Result<(), GemmError> {
    let GemmParams { batch, m, n, k, .. } = *p;
    if batch == 0 || m == 0 || n == 0 {
        return Ok(());
    }
    check_bounds("C", c.len(), batch, m, n, c_view)?;
    check_no_overlap(batch, m, n, c_view)?;
    if k == 0 {
        // The gemm crate is not documented for k = 0; the product is empty, so only beta acts.
        for bi in 0..batch {
            for i in 0..m {
                for j in 0..n {
                    let idx = c_view.offset
                        + bi * c_view.batch_stride
                        + i * c_view.row_stride
                        + j * c_view.col_stride;
                    c[idx] = if p.beta == 0.0 { 0.0 } else { p.beta * c[idx] };
                }
            }
        }
        return Ok(());
    }
    check_bounds("A", a.len(), batch, m, k, a_view)?;
    check_bounds("B", b.len(), batch, k, n, b_view)?;

    let per_matrix_flops = 2.0 * m as f64 * n as f64 * k as f64;
    let pool = rayon::current_num_threads().max(1);
    let (batch_parallel, inner) = match p.threads {
        GemmThreads::Single => (false, gemm::Parallelism::None),
        GemmThreads::Rayon(t) => {
            let t = if t == 0 { pool } else { t };
            if t <= 1 {
                (false, gemm::Parallelism::None)
            } else if batch >= 2 * t && per_matrix_flops < AUTO_THREADS_MIN_FLOPS {
                // Many small matrices: one matrix per task beats splitting each one.
                (true, gemm::Parallelism::None)
            } else {
                (false, gemm::Parallelism::Rayon(t))
            }
        }
        GemmThreads::Auto => {
            if pool <= 1 {
                (false, gemm::Parallelism::None)
            } else if per_matrix_flops >= AUTO_THREADS_MIN_FLOPS {
                (false, gemm::Parallelism::Rayon(pool))
            } else if batch >= 2 && per_matrix_flops * batch as f64 >= AUTO_THREADS_MIN_FLOPS / 4.0
            {
                (true, gemm::Parallelism::None)
            } else {
                (false, gemm::Parallelism::None)
            }
        }
    };

    let cptr = SendPtr(c.as_mut_ptr());
    #[allow(clippy::redundant_locals)]
    let one = |bi: usize, par: gemm::Parallelism| {
        // Capture the whole `SendPtr` (Send + Sync), not just its raw-pointer field.
        let cptr = cptr;
        // SAFETY: `check_bounds` proved that every element of batch `bi` of A, B and C addressed
        // through these strides lies inside its slice; `check_no_overlap` proved that distinct
        // (batch, i, j) of C map to distinct elements, so concurrent calls for different `bi` write
        // disjoint memory; A and B are shared borrows that cannot alias the exclusive `c`.
        unsafe {
            gemm::gemm(
                m,
                n,
                k,
                cptr.0.add(c_view.offset + bi * c_view.batch_stride),
                c_view.col_stride as isize,
                c_view.row_stride as isize,
                p.beta != 0.0,
                a.as_ptr().add(a_view.offset + bi * a_view.batch_stride),
                a_view.col_stride as isize,
                a_view.row_stride as isize,
                b.as_ptr().add(b_view.offset + bi * b_view.batch_stride),
                b_view.col_stride as isize,
                b_view.row_stride as isize,
                // The crate computes dst := alpha*dst + beta*lhs*rhs: its alpha is our beta.
                p.beta,
                p.alpha,
                false,
                false,
                false,
                par,
            )
        }
    };
    if batch_parallel && batch > 1 {
        (0..batch)
            .into_par_iter()
            .for_each(|bi| one(bi, gemm::Parallelism::None));
    } else {
        for bi in 0..batch {
            one(bi, inner);
        }
    }
    Ok(())
}

/// BLAS-style row-major `C = alpha * op(A) * op(B) + beta * C` with leading dimensions: `A` is stored
/// `[m, k]` (or `[k, m]` when `trans_a`), `B` `[k, n]` (or `[n, k]`), `C` `[m, n]`.
#[allow(clippy::too_many_arguments)]
pub fn sgemm(
    trans_a: Trans,
    trans_b: Trans,
    m: usize,
    n: usize,
    k: usize,
    alpha: f32,
    a: &[f32],
    lda: usize,
    b: &[f32],
    ldb: usize,
    beta: f32,
    c: &mut [f32],
    ldc: usize,
) -> Result<(), GemmError> {
    let stored = |ld: usize| MatView {
        offset: 0,
        row_stride: ld,
        col_stride: 1,
        batch_stride: 0,
    };
    let a_view = match trans_a {
        Trans::No => stored(lda),
        Trans::Yes => stored(lda).t(),
    };
    let b_view = match trans_b {
        Trans::No => stored(ldb),
        Trans::Yes => stored(ldb).t(),
    };
    gemm(
        &GemmParams::new(m, n, k).scaled(alpha, beta),
        a,
        a_view,
        b,
        b_view,
        c,
        stored(ldc),
    )
}

#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used to hand disjoint output blocks (proved by `check_no_overlap`) to rayon tasks.
unsafe impl Send for SendPtr {}
// SAFETY: as above; the pointer is only read to compute per-task addresses.
unsafe impl Sync for SendPtr {}

fn check_bounds(
    operand: &'static str,
    len: usize,
    batch: usize,
    rows: usize,
    cols: usize,
    view: MatView,
) -> Result<(), GemmError> {
    let overflow = || GemmError::Overflow { operand };
    let last = (batch - 1)
        .checked_mul(view.batch_stride)
        .and_then(|x| x.checked_add((rows - 1).checked_mul(view.row_stride)?))
        .and_then(|x| x.checked_add((cols - 1).checked_mul(view.col_stride)?))
        .and_then(|x| x.checked_add(view.offset))
        .ok_or_else(overflow)?;
    // The gemm crate converts strides to isize.
    if view.row_stride > isize::MAX as usize
        || view.col_stride > isize::MAX as usize
        || view.batch_stride > isize::MAX as usize
    {
        return Err(overflow());
    }
    if last >= len {
        return Err(GemmError::OutOfBounds {
            operand,
            batch,
            rows,
            cols,
            view,
            needed: last,
            len,
        });
    }
    Ok(())
}

/// Proves that `(b, i, j) -> offset + b*bs + i*rs + j*cs` is injective, by ordering the three axes by
/// stride and requiring each stride to step over the whole extent of the smaller ones (axes of extent
/// 1 never move and are ignored).
fn check_no_overlap(batch: usize, rows: usize, cols: usize, v: MatView) -> Result<(), GemmError> {
    let mut axes: Vec<(usize, usize)> = [
        (v.batch_stride, batch),
        (v.row_stride, rows),
        (v.col_stride, cols),
    ]
    .into_iter()
    .filter(|&(_, extent)| extent > 1)
    .collect();
    axes.sort_unstable();
    let mut span = 1usize; // one past the largest offset reachable by the smaller axes
    for (stride, extent) in axes {
        if stride < span {
            return Err(GemmError::OverlappingOutput {
                batch,
                rows,
                cols,
                view: v,
            });
        }
        span = stride
            .checked_mul(extent - 1)
            .and_then(|x| x.checked_add(span))
            .ok_or(GemmError::Overflow { operand: "C" })?;
    }
    Ok(())
}
