//! Memory-efficient scaled-dot-product attention for the CPU backend, forward and backward.
//!
//! Why a hand-written kernel: the naive path materialises a `[T, S]` score matrix per (batch, head)
//! and walks it several times (scores, softmax, `P·V`, and four more passes in the backward). Here the
//! work is tiled FlashAttention-2 style: a block of query rows meets one block of keys at a time, the
//! softmax is computed online (running max and sum in f32), tiles that the mask hides entirely are
//! never computed, and the forward keeps only the per-row logsumexp. The backward recomputes the
//! scores tile by tile from that logsumexp and `D = rowsum(dO ∘ O)`.
//!
//! Every mask we support (causal, full, GPT-3's local band, prefix-LM, key padding) lets query row `i`
//! see a *contiguous* key interval `[lo_i, hi_i)`. The kernel relies on that: tile skipping and the
//! "no masking needed" fast path are two comparisons per tile.
//!
//! Alignment when `T != S`: query `i` sits at absolute position `i + S - T` (bottom-right alignment,
//! as a decoder with a KV cache needs; it is the identity when `T == S`).
//!
//! Operand layouts: each `[batch, heads, len, head_dim]` tensor (`q, k, v, o, dO, dQ, dK, dV`)
//! is either head-major (`[batch, heads, len, head_dim]`, each head's rows adjacent) or
//! sequence-major (`[batch, len, heads, head_dim]`, as a projection's output holds it, so the
//! compiler needs no head-split or head-merge transpose around the kernel); see
//! [`AttentionLayout`]. A task reads its head's rows in place when they are adjacent and gathers
//! them into per-thread scratch otherwise (a `len x head_dim` copy, next to the `len² x head_dim`
//! work of the head); outputs are written row by row through [`HeadRowsMut`] in both layouts.
//!
//! Layout of the work: scores are kept transposed (`Sᵀ = K·Qᵀ`, keys by queries) so that the softmax
//! runs down columns with elementwise vector ops, and in base 2 (`Q` pre-scaled by
//! `scale·log2(e)`), so that the exponential is an exact range reduction plus a degree-6 polynomial
//! ([`exp2_approx`]). The inner loops (6x16 and 4x16 register-blocked microkernels for the five tile
//! products, the online softmax, the packing transposes) are written twice: AVX2+FMA intrinsics,
//! selected at run time, and plain scalar code used on other machines and by the tests to check the
//! SIMD path.

use rayon::prelude::*;
use thiserror::Error;

pub use kiln_compiler::kernel::{AttentionLayout, HeadLayout};

/// Which keys a query row may see (before key padding, which [`AttentionParams::key_len`] adds).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mask<'a> {
    /// Every key.
    Full,
    /// Keys at positions `<=` the query's position.
    Causal,
    /// GPT-3's locally banded layers: key `j` visible from query `i` iff `i - window < j <= i`.
    Banded { window: usize },
    /// Bidirectional inside the first `prefix_len[b]` positions, causal after them (one length per
    /// batch row): key `j` visible from query `i` iff `j <= i` or `j < prefix_len[b]`.
    PrefixLm { prefix_len: &'a [usize] },
}

/// Which implementation of the inner loops to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KernelChoice {
    /// AVX2+FMA where the CPU has it, scalar otherwise.
    #[default]
    Auto,
    /// The portable scalar loops.
    Scalar,
    /// The AVX2+FMA loops; an error on a CPU without them.
    Avx2Fma,
}

/// Shapes and options of one attention call. Tensors are contiguous row-major (the operands of
/// `[batch, heads, len, head_dim]` shape may instead be sequence-major, see
/// [`attention_forward_with`]):
/// `q`, `out`, `d_out`, `dq`: `[batch, q_heads, q_len, head_dim]`; `k`, `v`, `dk`, `dv`:
/// `[batch, kv_heads, kv_len, head_dim]`; `lse`: `[batch, q_heads, q_len]`; the optional additive
/// bias and its gradient: `[1 or q_heads, q_len, kv_len]` (shared by the batch; the head count is read
/// from its length).
///
/// Query head `h` uses key/value head `h / (q_heads / kv_heads)` (multi-query and grouped-query
/// attention); `dk`/`dv` sum over the group.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AttentionParams<'a> {
    pub batch: usize,
    pub q_heads: usize,
    pub kv_heads: usize,
    pub q_len: usize,
    pub kv_len: usize,
    pub head_dim: usize,
    /// Multiplies `q·k` before the bias is added (usually `1/sqrt(head_dim)`; T5 uses 1).
    pub scale: f32,
    pub mask: Mask<'a>,
    /// Key padding: batch row `b` sees only keys `< key_len[b]`.
    pub key_len: Option<&'a [usize]>,
    pub kernel: KernelChoice,
}

impl<'a> AttentionParams<'a> {
    /// Multi-head self-attention with `scale = 1/sqrt(head_dim)`, no padding, automatic kernel.
    pub fn new(batch: usize, heads: usize, seq: usize, head_dim: usize, mask: Mask<'a>) -> Self {
        AttentionParams {
            batch,
            q_heads: heads,
            kv_heads: heads,
            q_len: seq,
            kv_len: seq,
            head_dim,
            scale: 1.0 / (head_dim.max(1) as f32).sqrt(),
            mask,
            key_len: None,
            kernel: KernelChoice::Auto,
        }
    }
}

/// The inputs shared by the forward and the backward.
#[derive(Clone, Copy, Debug)]
pub struct AttentionInputs<'a> {
    pub q: &'a [f32],
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub bias: Option<&'a [f32]>,
}

/// Where the backward writes its gradients (overwritten, not accumulated into).
#[derive(Debug)]
pub struct AttentionGrads<'a> {
    pub dq: &'a mut [f32],
    pub dk: &'a mut [f32],
    pub dv: &'a mut [f32],
    /// Same length as the bias; `None` skips the bias gradient (it costs a buffer per thread).
    pub dbias: Option<&'a mut [f32]>,
}

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum AttentionError {
    #[error("attention: {0}")]
    InvalidParams(String),
    #[error("attention: `{name}` has {got} elements, expected {expected} ({shape})")]
    WrongLength {
        name: &'static str,
        got: usize,
        expected: usize,
        shape: String,
    },
    #[error("attention: the AVX2+FMA kernel was requested but this CPU lacks AVX2 or FMA")]
    Avx2FmaUnavailable,
}

/// True when this CPU can run the AVX2+FMA kernel.
pub fn avx2_fma_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Forward pass: writes `out` and the per-row natural-log `lse` (the backward's only saved
/// statistic). A query row that sees no key gets a zero output and `lse = -inf`.
pub fn attention_forward(
    p: &AttentionParams,
    x: &AttentionInputs,
    out: &mut [f32],
    lse: &mut [f32],
) -> Result<(), AttentionError> {
    attention_forward_with(p, &AttentionLayout::HEAD_MAJOR, x, out, lse)
}

/// [`attention_forward`] with `q`, `k`, `v` and `out` stored as `layout` says (`lse` is always
/// `[batch, q_heads, q_len]`).
pub fn attention_forward_with(
    p: &AttentionParams,
    layout: &AttentionLayout,
    x: &AttentionInputs,
    out: &mut [f32],
    lse: &mut [f32],
) -> Result<(), AttentionError> {
    let g = Geometry::check(p, x)?;
    expect_len("out", out.len(), g.q_elems(), &g.q_shape())?;
    expect_len("lse", lse.len(), g.lse_elems(), &g.lse_shape())?;
    let isa = resolve_isa(p.kernel)?;
    if g.q_elems() == 0 && g.lse_elems() == 0 {
        return Ok(());
    }
    if g.s == 0 {
        out.fill(0.0);
        lse.fill(f32::NEG_INFINITY);
        return Ok(());
    }
    let out_len = out.len();
    let out_ptr = SendPtr(out.as_mut_ptr());
    lse.par_chunks_mut(g.t)
        .enumerate()
        .for_each(|(index, lse)| {
            let (b, h) = (index / g.hq, index % g.hq);
            // SAFETY: `out` is borrowed mutably for this whole parallel loop and holds
            // `batch·q_heads·q_len·head_dim` elements (checked above); task `(b, h)` writes only
            // the rows of query head `h` of batch row `b`, which are disjoint from every other
            // task's in either layout.
            let out =
                unsafe { HeadRowsMut::new(out_ptr, out_len, layout.o, g.hq, g.t, g.dh, b, h) };
            let task = ForwardTask {
                g: &g,
                p,
                layout,
                x,
                b,
                h,
                out,
                lse,
            };
            with_scratch(|scratch| forward_head(isa, task, scratch));
        });
    Ok(())
}

/// Backward pass from the forward's `out` and `lse`: overwrites `dq`, `dk`, `dv` (and `dbias`).
pub fn attention_backward(
    p: &AttentionParams,
    x: &AttentionInputs,
    out: &[f32],
    lse: &[f32],
    d_out: &[f32],
    grads: AttentionGrads,
) -> Result<(), AttentionError> {
    attention_backward_with(p, &AttentionLayout::HEAD_MAJOR, x, out, lse, d_out, grads)
}

/// [`attention_backward`] with `q, k, v, out, d_out, dq, dk, dv` stored as `layout` says.
pub fn attention_backward_with(
    p: &AttentionParams,
    layout: &AttentionLayout,
    x: &AttentionInputs,
    out: &[f32],
    lse: &[f32],
    d_out: &[f32],
    grads: AttentionGrads,
) -> Result<(), AttentionError> {
    let g = Geometry::check(p, x)?;
    expect_len("out", out.len(), g.q_elems(), &g.q_shape())?;
    expect_len("d_out", d_out.len(), g.q_elems(), &g.q_shape())?;
    expect_len("lse", lse.len(), g.lse_elems(), &g.lse_shape())?;
    expect_len("dq", grads.dq.len(), g.q_elems(), &g.q_shape())?;
    expect_len("dk", grads.dk.len(), g.kv_elems(), &g.kv_shape())?;
    expect_len("dv", grads.dv.len(), g.kv_elems(), &g.kv_shape())?;
    match (&grads.dbias, x.bias) {
        (Some(db), Some(bias)) => expect_len("dbias", db.len(), bias.len(), "same as bias")?,
        (Some(_), None) => {
            return Err(AttentionError::InvalidParams(
                "dbias requested but the call has no bias".into(),
            ))
        }
        (None, _) => {}
    }
    let isa = resolve_isa(p.kernel)?;
    let AttentionGrads { dq, dk, dv, dbias } = grads;
    if g.s == 0 || g.t == 0 || g.b == 0 || g.hq == 0 {
        dq.fill(0.0);
        dk.fill(0.0);
        dv.fill(0.0);
        if let Some(db) = dbias {
            db.fill(0.0);
        }
        return Ok(());
    }
    let ctx = BackwardInputs {
        x,
        layout,
        out,
        lse,
        d_out,
    };
    let (dq_len, dk_len, dv_len) = (dq.len(), dk.len(), dv.len());
    let (dq_ptr, dk_ptr, dv_ptr) = (
        SendPtr(dq.as_mut_ptr()),
        SendPtr(dk.as_mut_ptr()),
        SendPtr(dv.as_mut_ptr()),
    );
    let mut tasks: Vec<BackwardTask> = (0..g.b * g.hkv)
        .map(|index| {
            let (b, kvh) = (index / g.hkv, index % g.hkv);
            // SAFETY: `dq`, `dk`, `dv` are borrowed mutably until this function returns and hold
            // `batch·q_heads·q_len·head_dim` resp. `batch·kv_heads·kv_len·head_dim` elements
            // (checked above). Task `(b, kvh)` gets the rows of key-value head `kvh` of batch
            // row `b` and of the query heads of its group, `kvh·group .. (kvh+1)·group`: in
            // either layout no two tasks (and no two heads of one task) share an element.
            unsafe {
                BackwardTask {
                    index,
                    dq: (0..g.group)
                        .map(|gh| {
                            let h = kvh * g.group + gh;
                            HeadRowsMut::new(dq_ptr, dq_len, layout.dq, g.hq, g.t, g.dh, b, h)
                        })
                        .collect(),
                    dk: HeadRowsMut::new(dk_ptr, dk_len, layout.dk, g.hkv, g.s, g.dh, b, kvh),
                    dv: HeadRowsMut::new(dv_ptr, dv_len, layout.dv, g.hkv, g.s, g.dh, b, kvh),
                }
            }
        })
        .collect();
    match dbias {
        None => tasks.par_iter_mut().for_each(|task| {
            let job = BackwardJob {
                g: &g,
                p,
                ctx: &ctx,
                task,
                dbias: None,
            };
            with_scratch(|scratch| backward_group(isa, job, scratch))
        }),
        Some(dbias) => {
            // Every (batch, head) task adds into the same bias gradient: give each thread its own
            // buffer and sum them afterwards (deterministic: fixed split, fixed summation order).
            let parts = rayon::current_num_threads().clamp(1, tasks.len());
            let per_part = tasks.len().div_ceil(parts);
            let len = dbias.len();
            let partials: Vec<Vec<f32>> = tasks
                .par_chunks_mut(per_part)
                .map(|chunk| {
                    let mut local = vec![0.0f32; len];
                    for task in chunk {
                        let job = BackwardJob {
                            g: &g,
                            p,
                            ctx: &ctx,
                            task,
                            dbias: Some(&mut local),
                        };
                        with_scratch(|scratch| backward_group(isa, job, scratch));
                    }
                    local
                })
                .collect();
            dbias.fill(0.0);
            for part in &partials {
                for (d, s) in dbias.iter_mut().zip(part) {
                    *d += s;
                }
            }
        }
    }
    Ok(())
}

/// `2^x`: the kernel's exponential. Scores are kept in base 2 (`Q` is pre-scaled by
/// `scale * log2(e)`, the bias by `log2(e)`), so the range reduction is exact (`x = n + r`,
/// `|r| <= 1/2`, `2^n` built in the exponent bits) and only `2^r` is approximated, by a degree-6
/// minimax polynomial: relative error below 2e-7 against `2^x` for `x` in `[-126, 127]` (tested).
/// Inputs at or below -127 (including the `-inf` of masked scores) give exactly 0; NaN stays NaN;
/// inputs above 127 are clamped. This scalar function is the twin of the kernel's vector version.
#[inline]
pub fn exp2_approx(x: f32) -> f32 {
    if x.is_nan() {
        return x;
    }
    let x = x.clamp(EXP2_LO, EXP2_HI);
    let n = x.round_ties_even();
    let r = x - n;
    let poly = (((((C6 * r + C5) * r + C4) * r + C3) * r + C2) * r + C1) * r + 1.0;
    // n = -127 gives exponent bits 0, i.e. the factor 0.0: underflow flushes to exactly zero.
    poly * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Applies the kernel's `2^x` to every element with the chosen implementation (for tests and for
/// callers that want the same approximation).
pub fn exp2_approx_slice(kernel: KernelChoice, xs: &mut [f32]) -> Result<(), AttentionError> {
    match resolve_isa(kernel)? {
        Isa::Scalar => xs.iter_mut().for_each(|x| *x = exp2_approx(*x)),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `resolve_isa` returned Avx2Fma only after detecting AVX2 and FMA.
        Isa::Avx2Fma => unsafe { avx2::exp2_slice(xs) },
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Geometry, masks, dispatch
// ---------------------------------------------------------------------------------------------

/// Query rows per block (a multiple of the microkernel's 4 rows).
const BR: usize = 32;
/// Keys per block (a multiple of the microkernel's 16 columns).
const BC: usize = 32;
const MR: usize = 4;
const NR: usize = 16;

const EXP2_LO: f32 = -127.0;
const EXP2_HI: f32 = 127.0;
const LOG2E: f32 = std::f32::consts::LOG2_E;
const LN2: f32 = std::f32::consts::LN_2;
// Minimax fit of (2^r - 1) / r on [-1/2, 1/2] (relative-error weighted), rounded to f32.
const C1: f32 = LN2; // the fit lands on ln 2 itself
const C2: f32 = 0.240_226_48;
const C3: f32 = 0.055_503_324;
const C4: f32 = 0.009_618_437;
const C5: f32 = 0.001_339_887_5;
const C6: f32 = 0.000_153_533_62;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Isa {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2Fma,
}

fn resolve_isa(choice: KernelChoice) -> Result<Isa, AttentionError> {
    match choice {
        KernelChoice::Scalar => Ok(Isa::Scalar),
        KernelChoice::Auto | KernelChoice::Avx2Fma => {
            #[cfg(target_arch = "x86_64")]
            if avx2_fma_available() {
                return Ok(Isa::Avx2Fma);
            }
            if choice == KernelChoice::Avx2Fma {
                Err(AttentionError::Avx2FmaUnavailable)
            } else {
                Ok(Isa::Scalar)
            }
        }
    }
}

fn expect_len(
    name: &'static str,
    got: usize,
    expected: usize,
    shape: &str,
) -> Result<(), AttentionError> {
    if got == expected {
        Ok(())
    } else {
        Err(AttentionError::WrongLength {
            name,
            got,
            expected,
            shape: shape.to_string(),
        })
    }
}

/// Validated sizes of one call.
struct Geometry {
    b: usize,
    hq: usize,
    hkv: usize,
    group: usize,
    t: usize,
    s: usize,
    dh: usize,
    /// `head_dim` rounded up to the microkernel's 16 columns.
    dhp: usize,
    /// `kv_len` rounded up to the key block.
    s_pad: usize,
    /// `q_len` rounded up to the query block.
    t_pad: usize,
    /// Heads of the bias (0: no bias, 1: shared, `hq`: per head).
    bias_heads: usize,
}

impl Geometry {
    fn check(p: &AttentionParams, x: &AttentionInputs) -> Result<Self, AttentionError> {
        let bad = |m: String| Err(AttentionError::InvalidParams(m));
        if p.head_dim == 0 {
            return bad("head_dim must be positive".into());
        }
        if p.kv_heads == 0 && p.q_heads > 0 {
            return bad("kv_heads must be positive".into());
        }
        if p.q_heads > 0 && !p.q_heads.is_multiple_of(p.kv_heads) {
            return bad(format!(
                "q_heads ({}) must be a multiple of kv_heads ({})",
                p.q_heads, p.kv_heads
            ));
        }
        if !p.scale.is_finite() {
            return bad(format!("scale must be finite, got {}", p.scale));
        }
        let too_big = || AttentionError::InvalidParams("tensor sizes overflow usize".into());
        let prod = |xs: &[usize]| {
            xs.iter()
                .try_fold(1usize, |a, &b| a.checked_mul(b))
                .ok_or_else(too_big)
        };
        let q_elems = prod(&[p.batch, p.q_heads, p.q_len, p.head_dim])?;
        let kv_elems = prod(&[p.batch, p.kv_heads, p.kv_len, p.head_dim])?;
        let bias_plane = prod(&[p.q_len, p.kv_len])?;
        if let Mask::PrefixLm { prefix_len } = p.mask {
            if prefix_len.len() != p.batch {
                return bad(format!(
                    "prefix_len has {} entries, expected one per batch row ({})",
                    prefix_len.len(),
                    p.batch
                ));
            }
            if let Some(&l) = prefix_len.iter().find(|&&l| l > p.kv_len) {
                return bad(format!("prefix_len {l} exceeds kv_len {}", p.kv_len));
            }
        }
        if let Some(key_len) = p.key_len {
            if key_len.len() != p.batch {
                return bad(format!(
                    "key_len has {} entries, expected one per batch row ({})",
                    key_len.len(),
                    p.batch
                ));
            }
            if let Some(&l) = key_len.iter().find(|&&l| l > p.kv_len) {
                return bad(format!("key_len {l} exceeds kv_len {}", p.kv_len));
            }
        }
        let q_shape = format!("[{}, {}, {}, {}]", p.batch, p.q_heads, p.q_len, p.head_dim);
        let kv_shape = format!(
            "[{}, {}, {}, {}]",
            p.batch, p.kv_heads, p.kv_len, p.head_dim
        );
        expect_len("q", x.q.len(), q_elems, &q_shape)?;
        expect_len("k", x.k.len(), kv_elems, &kv_shape)?;
        expect_len("v", x.v.len(), kv_elems, &kv_shape)?;
        let bias_heads = match x.bias {
            None => 0,
            Some(bias) => {
                if bias.len() == bias_plane {
                    1
                } else if p.q_heads > 0 && Some(bias.len()) == bias_plane.checked_mul(p.q_heads) {
                    p.q_heads
                } else {
                    return Err(AttentionError::WrongLength {
                        name: "bias",
                        got: bias.len(),
                        expected: bias_plane * p.q_heads.max(1),
                        shape: format!("[1 or {}, {}, {}]", p.q_heads, p.q_len, p.kv_len),
                    });
                }
            }
        };
        let round = |x: usize, m: usize| x.div_ceil(m) * m;
        Ok(Geometry {
            b: p.batch,
            hq: p.q_heads,
            hkv: p.kv_heads,
            group: p.q_heads.checked_div(p.kv_heads).unwrap_or(1),
            t: p.q_len,
            s: p.kv_len,
            dh: p.head_dim,
            dhp: round(p.head_dim, NR),
            s_pad: round(p.kv_len, BC),
            t_pad: round(p.q_len, BR),
            bias_heads,
        })
    }

    fn q_elems(&self) -> usize {
        self.b * self.hq * self.t * self.dh
    }
    fn kv_elems(&self) -> usize {
        self.b * self.hkv * self.s * self.dh
    }
    fn lse_elems(&self) -> usize {
        self.b * self.hq * self.t
    }
    fn q_shape(&self) -> String {
        format!("[{}, {}, {}, {}]", self.b, self.hq, self.t, self.dh)
    }
    fn kv_shape(&self) -> String {
        format!("[{}, {}, {}, {}]", self.b, self.hkv, self.s, self.dh)
    }
    fn lse_shape(&self) -> String {
        format!("[{}, {}, {}]", self.b, self.hq, self.t)
    }
}

/// The visible key interval `[lo, hi)` of query row `i` in batch row `b`; `(0, 0)` when empty.
fn row_range(p: &AttentionParams, t: usize, s: usize, b: usize, i: usize) -> (usize, usize) {
    // Absolute position of the query (bottom-right alignment); `end` = one past the last causal key.
    let pos = i as i64 + s as i64 - t as i64;
    let causal_end = (pos + 1).clamp(0, s as i64) as usize;
    let (lo, mut hi) = match p.mask {
        Mask::Full => (0, s),
        Mask::Causal => (0, causal_end),
        Mask::Banded { window } => {
            let lo = (pos - window as i64 + 1).clamp(0, s as i64) as usize;
            (lo, causal_end)
        }
        Mask::PrefixLm { prefix_len } => (0, causal_end.max(prefix_len[b])),
    };
    if let Some(key_len) = p.key_len {
        hi = hi.min(key_len[b]);
    }
    if lo < hi {
        (lo, hi)
    } else {
        (0, 0)
    }
}

/// Key ranges of one query block: the union of its rows' intervals and their intersection (a tile
/// inside the intersection needs no masking).
#[derive(Clone, Copy, Debug)]
struct BlockRange {
    /// Union `[kmin, kmax)` over non-empty rows; `kmin >= kmax` when every row is empty.
    kmin: usize,
    kmax: usize,
    /// Intersection `[max_lo, min_hi)` over all real rows.
    max_lo: usize,
    min_hi: usize,
}

impl BlockRange {
    fn of(ranges: &[(usize, usize)]) -> Self {
        let mut r = BlockRange {
            kmin: usize::MAX,
            kmax: 0,
            max_lo: 0,
            min_hi: usize::MAX,
        };
        for &(lo, hi) in ranges {
            if lo < hi {
                r.kmin = r.kmin.min(lo);
                r.kmax = r.kmax.max(hi);
            }
            r.max_lo = r.max_lo.max(lo);
            r.min_hi = r.min_hi.min(hi);
        }
        r
    }
    fn touches(&self, c0: usize) -> bool {
        self.kmin < self.kmax && self.kmin < c0 + BC && self.kmax > c0
    }
    fn fully_visible(&self, c0: usize) -> bool {
        self.max_lo <= c0 && self.min_hi >= c0 + BC
    }
    /// First key tile start that `touches` can accept.
    fn first_tile(&self) -> usize {
        if self.kmin < self.kmax {
            self.kmin / BC * BC
        } else {
            0
        }
    }
}

/// Per-thread buffers, reused across the (batch, head) tasks a thread runs.
#[derive(Default)]
struct Scratch {
    /// K and V of the task's kv head, row-major, padded to `[s_pad, dhp]`.
    kp: Vec<f32>,
    vp: Vec<f32>,
    /// `scale * Q` and `dO` transposed into 16-query panels (the B operand of `Sᵀ` and `dPᵀ`).
    qt: Vec<f32>,
    dot: Vec<f32>,
    /// Q and dO row-major, padded to `[t_pad, dhp]` (the B operand of `dK` and `dV`).
    qs: Vec<f32>,
    dop: Vec<f32>,
    dqa: Vec<f32>,
    dka: Vec<f32>,
    dva: Vec<f32>,
    /// Transposed score tile `Sᵀ` / `Pᵀ` (`[BC, BR]`) and `dPᵀ` / `dSᵀ`.
    st: Vec<f32>,
    dp: Vec<f32>,
    oacc: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    corr: Vec<f32>,
    lse: Vec<f32>,
    dsum: Vec<f32>,
    ranges: Vec<(usize, usize)>,
    blocks: Vec<BlockRange>,
    /// Rows of a sequence-major `q, k, v, o, dO` head gathered contiguous.
    gq: Vec<f32>,
    gk: Vec<f32>,
    gv: Vec<f32>,
    go: Vec<f32>,
    gdo: Vec<f32>,
}

thread_local! {
    /// Rayon's worker threads live as long as the pool, so their buffers are reused across calls
    /// and training steps instead of being allocated (and page-faulted in) for every task.
    static SCRATCH: std::cell::RefCell<Scratch> = std::cell::RefCell::new(Scratch::default());
}

fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    SCRATCH.with(|cell| match cell.try_borrow_mut() {
        Ok(mut scratch) => f(&mut scratch),
        // Only reachable if a task were re-entered on the same thread; stay correct regardless.
        Err(_) => f(&mut Scratch::default()),
    })
}

/// The `len x dh` rows of head `h` of batch row `b` of a `[batch, heads, len, dh]` operand stored
/// as `layout`, contiguous: borrowed in place when they are adjacent (head-major), else gathered
/// into `buf`.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn head_rows<'a>(
    src: &'a [f32],
    layout: HeadLayout,
    heads: usize,
    len: usize,
    dh: usize,
    b: usize,
    h: usize,
    buf: &'a mut Vec<f32>,
) -> &'a [f32] {
    let (_, _, row_stride) = layout.strides(heads, len, dh);
    let start = layout.offset(heads, len, dh, b, h, 0);
    if row_stride == dh {
        return &src[start..][..len * dh];
    }
    let dst = sized(buf, len * dh);
    for (i, row) in dst.chunks_exact_mut(dh).enumerate() {
        row.copy_from_slice(&src[start + i * row_stride..][..dh]);
    }
    dst
}

/// A raw output pointer that the tasks of one call share; each writes its own elements only.
#[derive(Clone, Copy)]
struct SendPtr(*mut f32);
// SAFETY: only used to build `HeadRowsMut`s of pairwise disjoint rows (see their constructor).
unsafe impl Send for SendPtr {}
// SAFETY: as above; the pointer itself is never written through from two tasks at one element.
unsafe impl Sync for SendPtr {}

/// The `rows` rows (each `dh` long) of one head of an output tensor, `row_stride` apart: a
/// mutable view that tasks of one call hold for pairwise disjoint heads.
struct HeadRowsMut<'a> {
    ptr: *mut f32,
    rows: usize,
    row_stride: usize,
    dh: usize,
    _out: std::marker::PhantomData<&'a mut [f32]>,
}

// SAFETY: a `HeadRowsMut` is the only handle to its elements (constructor contract), so moving
// it to another thread is like moving a `&mut [f32]`.
unsafe impl Send for HeadRowsMut<'_> {}

impl<'a> HeadRowsMut<'a> {
    /// The rows of head `h` of batch row `b` in a `[batch, heads, rows, dh]` tensor of `len`
    /// elements at `base`, stored as `layout`. Panics when they do not fit in `len`.
    ///
    /// # Safety
    /// `base` must point to `len` writable `f32`s that stay exclusively borrowed for `'a`, and no
    /// other live `HeadRowsMut` or reference may cover any of this head's elements.
    #[allow(clippy::too_many_arguments)]
    unsafe fn new(
        base: SendPtr,
        len: usize,
        layout: HeadLayout,
        heads: usize,
        rows: usize,
        dh: usize,
        b: usize,
        h: usize,
    ) -> Self {
        let (_, _, row_stride) = layout.strides(heads, rows, dh);
        let start = layout.offset(heads, rows, dh, b, h, 0);
        assert!(
            rows == 0 || start + (rows - 1) * row_stride + dh <= len,
            "head ({b}, {h}) outside the output"
        );
        HeadRowsMut {
            // SAFETY: in bounds by the assert (or an empty head, never dereferenced).
            ptr: unsafe { base.0.add(start.min(len)) },
            rows,
            row_stride,
            dh,
            _out: std::marker::PhantomData,
        }
    }

    /// Row `i` (`dh` elements).
    #[inline(always)]
    fn row(&mut self, i: usize) -> &mut [f32] {
        assert!(i < self.rows, "row {i} of {}", self.rows);
        // SAFETY: row `i < rows` lies inside the tensor (checked at construction) and belongs to
        // this head only; `&mut self` keeps the returned slice unique.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(i * self.row_stride), self.dh) }
    }
}

/// Sizes `buf` to `n` without clearing what it held (for buffers that are fully overwritten).
#[inline(always)]
fn sized(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    buf.resize(n, 0.0);
    &mut buf[..n]
}

#[inline(always)]
fn zeroed(buf: &mut Vec<f32>, n: usize) -> &mut [f32] {
    buf.clear();
    buf.resize(n, 0.0);
    buf
}

/// Copies `rows x dh` row-major `src` times `mul`, transposed into 16-row panels:
/// `dst[(j/16)*dh*16 + d*16 + j%16] = mul * src[j*dh + d]`, zero for `j >= rows` up to `rows_pad`.
#[inline(always)]
fn pack_panels_t(
    isa: Isa,
    src: &[f32],
    rows: usize,
    dh: usize,
    rows_pad: usize,
    mul: f32,
    dst: &mut Vec<f32>,
) {
    assert!(rows <= rows_pad && rows_pad.is_multiple_of(NR) && src.len() >= rows * dh);
    let dst = if rows < rows_pad {
        zeroed(dst, rows_pad * dh)
    } else {
        sized(dst, rows_pad * dh)
    };
    match isa {
        Isa::Scalar => {}
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the assert bounds `src`; `dst` holds `rows_pad * dh >= ceil(rows/16)*16*dh`.
        Isa::Avx2Fma => return unsafe { avx2::pack_panels_t(src, rows, dh, mul, dst) },
    }
    for (j, row) in src[..rows * dh].chunks_exact(dh).enumerate() {
        let panel = &mut dst[(j / NR) * dh * NR..][..dh * NR];
        let jj = j % NR;
        for (cell, &x) in panel.chunks_exact_mut(NR).zip(row) {
            cell[jj] = x * mul;
        }
    }
}

/// Copies `rows x dh` row-major `src` into `rows_pad x dhp`, zero padded.
#[inline(always)]
fn pack_rows(src: &[f32], rows: usize, dh: usize, rows_pad: usize, dhp: usize, dst: &mut Vec<f32>) {
    let dst = if rows < rows_pad || dh < dhp {
        zeroed(dst, rows_pad * dhp)
    } else {
        sized(dst, rows_pad * dhp)
    };
    for (d, s) in dst
        .chunks_exact_mut(dhp)
        .zip(src[..rows * dh].chunks_exact(dh))
    {
        d[..dh].copy_from_slice(s);
    }
}

/// Dot product with eight partial sums, so that it vectorises (a plain `sum()` must keep the
/// sequential rounding order and stays scalar).
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0.0f32; 8];
    let (ac, bc) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ac
        .remainder()
        .iter()
        .zip(bc.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ac.zip(bc) {
        for i in 0..8 {
            lanes[i] += x[i] * y[i];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Row-major `[len, dh]` operand (K, V, Q or dO of one head) read a block of `block` rows at a
/// time: straight from the input when rows need no padding (`head_dim` a multiple of 16) and the
/// block lies inside the sequence, else from `packed`, which holds either the whole padded head
/// (`direct == false`) or only the last, partial block.
#[derive(Clone, Copy)]
struct RowBlocks<'a> {
    direct: bool,
    src: &'a [f32],
    packed: &'a [f32],
    len: usize,
    block: usize,
    dh: usize,
    dhp: usize,
}

impl<'a> RowBlocks<'a> {
    #[inline(always)]
    fn at(&self, start: usize) -> &'a [f32] {
        if !self.direct {
            &self.packed[start * self.dhp..]
        } else if start + self.block <= self.len {
            &self.src[start * self.dh..]
        } else {
            self.packed
        }
    }
}

/// Fills `packed` for [`RowBlocks`]: the whole padded head, or only the partial last block.
#[inline(always)]
fn pack_row_blocks(
    direct: bool,
    src: &[f32],
    len: usize,
    block: usize,
    dh: usize,
    dhp: usize,
    packed: &mut Vec<f32>,
) {
    if !direct {
        pack_rows(src, len, dh, len.div_ceil(block) * block, dhp, packed);
    } else if !len.is_multiple_of(block) {
        let start = len / block * block;
        pack_rows(&src[start * dh..], len - start, dh, block, dhp, packed);
    }
}

/// On a transposed tile (`st[jj*BR + r]` is query `r0 + r` against key `c0 + jj`): adds the bias,
/// then writes `-inf` outside each query's interval unless the whole tile is visible.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn bias_and_mask_t(
    st: &mut [f32],
    rows: usize,
    r0: usize,
    c0: usize,
    kv_len: usize,
    bias: Option<&[f32]>,
    ranges: &[(usize, usize)],
    full: bool,
) {
    let keys = BC.min(kv_len.saturating_sub(c0));
    if let Some(bias) = bias {
        for r in 0..rows {
            let brow = &bias[(r0 + r) * kv_len + c0..][..keys];
            for (jj, b) in brow.iter().enumerate() {
                st[jj * BR + r] += b * LOG2E; // scores are in base 2
            }
        }
    }
    if !full {
        // Each query's interval relative to the tile; padding queries mask nothing. Then one
        // branch-free pass over the tile, which vectorises across the queries of a key row.
        let mut lo = [0i32; BR];
        let mut hi = [BC as i32; BR];
        for (r, &(l, h)) in ranges[r0..r0 + rows].iter().enumerate() {
            let l = l.clamp(c0, c0 + BC) - c0;
            lo[r] = l as i32;
            hi[r] = (h.clamp(c0 + l, c0 + BC) - c0) as i32;
        }
        for (jj, row) in st[..BC * BR].chunks_exact_mut(BR).enumerate() {
            let j = jj as i32;
            for ((x, &l), &h) in row.iter_mut().zip(&lo).zip(&hi) {
                // min against ±inf rather than a conditional store: LLVM turns the latter into a
                // masked store, which is slow on AMD cores.
                let cap = if j >= l && j < h {
                    f32::INFINITY
                } else {
                    f32::NEG_INFINITY
                };
                *x = x.min(cap);
            }
        }
    }
}

/// One `C[m x n] (+)= A[m x k] * B[k x n]` on packed tiles: `A(i, p) = a[i*a_rs + p*a_cs]`,
/// `B(p, j) = b[(j/16)*b_ps + p*b_rs + j%16]`, `C(i, j) = c[i*ldc + j]`; `m % 4 == 0`, `n % 16 == 0`.
#[derive(Clone, Copy, Debug)]
struct TileGemm {
    m: usize,
    n: usize,
    k: usize,
    a_rs: usize,
    a_cs: usize,
    b_rs: usize,
    b_ps: usize,
    ldc: usize,
    accumulate: bool,
}

#[inline(always)]
fn tile_gemm(isa: Isa, g: TileGemm, a: &[f32], b: &[f32], c: &mut [f32]) {
    assert!(
        g.m.is_multiple_of(MR) && g.n.is_multiple_of(NR),
        "tile shape {g:?}"
    );
    if g.m == 0 || g.n == 0 {
        return;
    }
    assert!(
        (g.m - 1) * g.ldc + g.n <= c.len(),
        "C tile out of bounds {g:?}"
    );
    if g.k > 0 {
        assert!(
            (g.m - 1) * g.a_rs + (g.k - 1) * g.a_cs < a.len(),
            "A tile {g:?}"
        );
        assert!(
            (g.n / NR - 1) * g.b_ps + (g.k - 1) * g.b_rs + NR <= b.len(),
            "B tile {g:?}"
        );
    }
    match isa {
        Isa::Scalar => scalar::tile_gemm(g, a, b, c),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the asserts above bound every index the kernel touches; Avx2Fma is only chosen
        // after runtime detection.
        Isa::Avx2Fma => unsafe { avx2::tile_gemm(g, a.as_ptr(), b.as_ptr(), c.as_mut_ptr()) },
    }
}

/// Online-softmax step on a transposed tile (`BC` keys by `BR` queries): per query column, update
/// the running max `m` and sum `l`, turn the scores into `exp(s - m_new)`, and leave in `corr` the
/// factor `exp(m_old - m_new)` by which that query's output accumulator must be rescaled. A column
/// whose max is still `-inf` (nothing visible yet) yields zeros and `corr = 0` on a zero accumulator.
#[inline(always)]
fn softmax_cols(isa: Isa, st: &mut [f32], m: &mut [f32], l: &mut [f32], corr: &mut [f32]) {
    assert!(st.len() >= BC * BR && m.len() >= BR && l.len() >= BR && corr.len() >= BR);
    match isa {
        Isa::Scalar => scalar::softmax_cols(st, m, l, corr),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: lengths asserted above; AVX2+FMA detected.
        Isa::Avx2Fma => unsafe { avx2::softmax_cols(st, m, l, corr) },
    }
}

/// `st[jj, r] = exp(st[jj, r] - lse[r])` on a transposed tile.
#[inline(always)]
fn exp_sub_cols(isa: Isa, st: &mut [f32], lse: &[f32]) {
    assert!(st.len() >= BC * BR && lse.len() >= BR);
    match isa {
        Isa::Scalar => {
            for row in st[..BC * BR].chunks_exact_mut(BR) {
                for (x, l) in row.iter_mut().zip(lse) {
                    *x = exp2_approx(*x - l);
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: lengths asserted above; AVX2+FMA detected.
        Isa::Avx2Fma => unsafe { avx2::exp_sub_cols(st, lse) },
    }
}

/// `dst = mul * src` (equal lengths). Explicit SIMD: LLVM cannot see that the scratch buffer and
/// the caller's output are disjoint once everything is inlined, and keeps the plain loop scalar.
#[inline(always)]
fn scale_into(isa: Isa, dst: &mut [f32], src: &[f32], mul: f32) {
    assert_eq!(dst.len(), src.len());
    match isa {
        Isa::Scalar => dst.iter_mut().zip(src).for_each(|(d, s)| *d = s * mul),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: equal lengths asserted above; AVX2+FMA detected.
        Isa::Avx2Fma => unsafe { avx2::scale_into(dst, src, mul) },
    }
}

/// `xs *= mul`.
#[inline(always)]
fn scale_in_place(isa: Isa, xs: &mut [f32], mul: f32) {
    match isa {
        Isa::Scalar => xs.iter_mut().for_each(|x| *x *= mul),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: AVX2+FMA detected; the kernel reads and writes only within `xs`.
        Isa::Avx2Fma => unsafe { avx2::scale_in_place(xs, mul) },
    }
}

/// `dp[jj, r] = p[jj, r] * (dp[jj, r] - dsum[r])`: the softmax backward on a transposed tile.
#[inline(always)]
fn softmax_grad_cols(isa: Isa, p: &[f32], dp: &mut [f32], dsum: &[f32]) {
    assert!(p.len() >= BC * BR && dp.len() >= BC * BR && dsum.len() >= BR);
    match isa {
        Isa::Scalar => {
            for (drow, prow) in dp[..BC * BR]
                .chunks_exact_mut(BR)
                .zip(p[..BC * BR].chunks_exact(BR))
            {
                for ((d, pv), ds) in drow.iter_mut().zip(prow).zip(dsum) {
                    *d = pv * (*d - ds);
                }
            }
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: lengths asserted above; AVX2+FMA detected. (Explicit intrinsics: once inlined,
        // LLVM cannot prove `p` and `dp` disjoint and leaves the plain loop scalar.)
        Isa::Avx2Fma => unsafe { avx2::softmax_grad_cols(p, dp, dsum) },
    }
}

// ---------------------------------------------------------------------------------------------
// Forward
// ---------------------------------------------------------------------------------------------

/// What one forward task (a (batch, query head) pair) reads and writes.
struct ForwardTask<'a, 'p> {
    g: &'a Geometry,
    p: &'a AttentionParams<'p>,
    layout: &'a AttentionLayout,
    x: &'a AttentionInputs<'a>,
    b: usize,
    h: usize,
    out: HeadRowsMut<'a>,
    lse: &'a mut [f32],
}

fn forward_head(isa: Isa, task: ForwardTask, sc: &mut Scratch) {
    match isa {
        Isa::Scalar => forward_head_impl(Isa::Scalar, task, sc),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2Fma is only chosen after runtime detection.
        Isa::Avx2Fma => unsafe { avx2::forward_head(task, sc) },
    }
}

/// The forward for one (batch, head), FlashAttention-2 order: for each block of `BR` queries, walk
/// the key tiles its rows can see, keeping the output accumulator, running max and sum in scratch.
/// Scores are kept transposed (`Sᵀ = K·(scale·log2(e)·Q)ᵀ`, keys by queries, base 2) so that the
/// softmax runs down columns: every reduction is elementwise across rows, with no horizontal shuffles.
#[inline(always)]
fn forward_head_impl(isa: Isa, task: ForwardTask, sc: &mut Scratch) {
    let ForwardTask {
        g,
        p,
        layout,
        x,
        b,
        h,
        mut out,
        lse,
    } = task;
    let (t, s, dh, dhp) = (g.t, g.s, g.dh, g.dhp);
    let kvh = h / g.group;
    let q = head_rows(x.q, layout.q, g.hq, t, dh, b, h, &mut sc.gq);
    let k = head_rows(x.k, layout.k, g.hkv, s, dh, b, kvh, &mut sc.gk);
    let v = head_rows(x.v, layout.v, g.hkv, s, dh, b, kvh, &mut sc.gv);
    let bias = x.bias.map(|bias| {
        let hb = if g.bias_heads == 1 { 0 } else { h };
        &bias[hb * t * s..][..t * s]
    });
    let direct = dh == dhp;
    pack_row_blocks(direct, k, s, BC, dh, dhp, &mut sc.kp);
    pack_row_blocks(direct, v, s, BC, dh, dhp, &mut sc.vp);
    let blocks = |src, packed| RowBlocks {
        direct,
        src,
        packed,
        len: s,
        block: BC,
        dh,
        dhp,
    };
    let (k_blocks, v_blocks) = (blocks(k, &sc.kp), blocks(v, &sc.vp));
    sc.ranges.clear();
    sc.ranges.extend((0..t).map(|i| row_range(p, t, s, b, i)));

    for r0 in (0..t).step_by(BR) {
        let rows = BR.min(t - r0);
        let blk = BlockRange::of(&sc.ranges[r0..r0 + rows]);
        let lse_blk = &mut lse[r0..r0 + rows];
        if blk.kmin >= blk.kmax {
            (r0..r0 + rows).for_each(|r| out.row(r).fill(0.0));
            lse_blk.fill(f32::NEG_INFINITY);
            continue;
        }
        pack_panels_t(
            isa,
            &q[r0 * dh..],
            rows,
            dh,
            BR,
            p.scale * LOG2E,
            &mut sc.qt,
        );
        let oacc = zeroed(&mut sc.oacc, BR * dhp);
        sc.m.clear();
        sc.m.resize(BR, f32::NEG_INFINITY);
        let l = zeroed(&mut sc.l, BR);
        let corr = zeroed(&mut sc.corr, BR);
        let st = sized(&mut sc.st, BC * BR);

        let mut c0 = blk.first_tile();
        while c0 < blk.kmax {
            // Sᵀ = K (scale·Q)ᵀ for this tile.
            tile_gemm(
                isa,
                TileGemm {
                    m: BC,
                    n: BR,
                    k: dh,
                    a_rs: dhp,
                    a_cs: 1,
                    b_rs: NR,
                    b_ps: dh * NR,
                    ldc: BR,
                    accumulate: false,
                },
                k_blocks.at(c0),
                &sc.qt,
                st,
            );
            bias_and_mask_t(st, rows, r0, c0, s, bias, &sc.ranges, blk.fully_visible(c0));
            softmax_cols(isa, st, &mut sc.m, l, corr);
            for (orow, &c) in oacc.chunks_exact_mut(dhp).zip(corr.iter()) {
                scale_in_place(isa, orow, c);
            }
            // O += P V, reading P = (Pᵀ)ᵀ through the A strides.
            tile_gemm(
                isa,
                TileGemm {
                    m: BR,
                    n: dhp,
                    k: BC,
                    a_rs: 1,
                    a_cs: BR,
                    b_rs: dhp,
                    b_ps: NR,
                    ldc: dhp,
                    accumulate: true,
                },
                st,
                v_blocks.at(c0),
                oacc,
            );
            c0 += BC;
        }
        for r in 0..rows {
            let o_row = out.row(r0 + r);
            if l[r] > 0.0 {
                scale_into(isa, o_row, &oacc[r * dhp..r * dhp + dh], 1.0 / l[r]);
                // m and l live in base 2; the saved logsumexp is natural.
                lse_blk[r] = sc.m[r] * LN2 + l[r].ln();
            } else {
                o_row.fill(0.0);
                lse_blk[r] = f32::NEG_INFINITY;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Backward
// ---------------------------------------------------------------------------------------------

struct BackwardInputs<'a> {
    x: &'a AttentionInputs<'a>,
    layout: &'a AttentionLayout,
    out: &'a [f32],
    lse: &'a [f32],
    d_out: &'a [f32],
}

/// The gradients owned by one (batch, kv head) task: `dq` of the group's query heads, `dk`, `dv`.
struct BackwardTask<'a> {
    index: usize,
    dq: Vec<HeadRowsMut<'a>>,
    dk: HeadRowsMut<'a>,
    dv: HeadRowsMut<'a>,
}

/// Everything one backward task needs besides its scratch.
struct BackwardJob<'a, 'p, 't> {
    g: &'a Geometry,
    p: &'a AttentionParams<'p>,
    ctx: &'a BackwardInputs<'a>,
    task: &'a mut BackwardTask<'t>,
    dbias: Option<&'a mut [f32]>,
}

fn backward_group(isa: Isa, job: BackwardJob, sc: &mut Scratch) {
    match isa {
        Isa::Scalar => backward_group_impl(Isa::Scalar, job, sc),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2Fma is only chosen after runtime detection.
        Isa::Avx2Fma => unsafe { avx2::backward_group(job, sc) },
    }
}

/// The backward for one (batch, kv head) and the query heads that share it. Key tiles are the outer
/// loop so each tile's dK/dV rows stay hot while the query blocks that see it stream past; dQ of the
/// current head accumulates in scratch. Owning the whole group makes dK/dV race-free without atomics.
#[inline(always)]
fn backward_group_impl(isa: Isa, job: BackwardJob, sc: &mut Scratch) {
    let BackwardJob {
        g,
        p,
        ctx,
        task,
        mut dbias,
    } = job;
    let (t, s, dh, dhp, s_pad, t_pad) = (g.t, g.s, g.dh, g.dhp, g.s_pad, g.t_pad);
    let (b, kvh) = (task.index / g.hkv, task.index % g.hkv);
    let (x, layout) = (ctx.x, ctx.layout);
    let k = head_rows(x.k, layout.k, g.hkv, s, dh, b, kvh, &mut sc.gk);
    let v = head_rows(x.v, layout.v, g.hkv, s, dh, b, kvh, &mut sc.gv);
    let direct = dh == dhp;
    pack_row_blocks(direct, k, s, BC, dh, dhp, &mut sc.kp);
    pack_row_blocks(direct, v, s, BC, dh, dhp, &mut sc.vp);
    zeroed(&mut sc.dka, s_pad * dhp);
    zeroed(&mut sc.dva, s_pad * dhp);
    sc.ranges.clear();
    sc.ranges.extend((0..t).map(|i| row_range(p, t, s, b, i)));
    sc.blocks.clear();
    for r0 in (0..t).step_by(BR) {
        let blk = BlockRange::of(&sc.ranges[r0..(r0 + BR).min(t)]);
        sc.blocks.push(blk);
    }

    for gh in 0..g.group {
        let h = kvh * g.group + gh;
        let base = (b * g.hq + h) * t;
        let q = head_rows(x.q, layout.q, g.hq, t, dh, b, h, &mut sc.gq);
        let o = head_rows(ctx.out, layout.o, g.hq, t, dh, b, h, &mut sc.go);
        let d_o = head_rows(ctx.d_out, layout.d_o, g.hq, t, dh, b, h, &mut sc.gdo);
        let hb = if g.bias_heads == 1 { 0 } else { h };
        let bias = x.bias.map(|bias| &bias[hb * t * s..][..t * s]);
        pack_panels_t(isa, q, t, dh, t_pad, p.scale * LOG2E, &mut sc.qt);
        pack_panels_t(isa, d_o, t, dh, t_pad, 1.0, &mut sc.dot);
        pack_row_blocks(direct, q, t, BR, dh, dhp, &mut sc.qs);
        pack_row_blocks(direct, d_o, t, BR, dh, dhp, &mut sc.dop);
        let blocks = |src, packed, len, block| RowBlocks {
            direct,
            src,
            packed,
            len,
            block,
            dh,
            dhp,
        };
        let k_blocks = blocks(k, &sc.kp, s, BC);
        let v_blocks = blocks(v, &sc.vp, s, BC);
        let q_blocks = blocks(q, &sc.qs, t, BR);
        let do_blocks = blocks(d_o, &sc.dop, t, BR);
        zeroed(&mut sc.dqa, t_pad * dhp);
        // Queries that saw nothing (lse = -inf) and padding queries get lse = +inf, so that
        // P = exp(s - lse) is exactly 0 there and they contribute nothing.
        sc.lse.clear();
        sc.lse.extend((0..t_pad).map(|i| {
            let l = if i < t {
                ctx.lse[base + i]
            } else {
                f32::INFINITY
            };
            if l == f32::NEG_INFINITY {
                f32::INFINITY
            } else {
                l * LOG2E // scores are in base 2
            }
        }));
        let dsum = zeroed(&mut sc.dsum, t_pad);
        for ((ds, orow), drow) in dsum
            .iter_mut()
            .zip(o.chunks_exact(dh))
            .zip(d_o.chunks_exact(dh))
        {
            *ds = dot(orow, drow);
        }
        let st = sized(&mut sc.st, BC * BR);
        let dp = sized(&mut sc.dp, BC * BR);

        for c0 in (0..s_pad).step_by(BC) {
            for (bi, blk) in sc.blocks.iter().enumerate() {
                if !blk.touches(c0) {
                    continue;
                }
                let r0 = bi * BR;
                let rows = BR.min(t - r0);
                // Pᵀ = exp(K (scale·Q)ᵀ + biasᵀ - lse).
                tile_gemm(
                    isa,
                    TileGemm {
                        m: BC,
                        n: BR,
                        k: dh,
                        a_rs: dhp,
                        a_cs: 1,
                        b_rs: NR,
                        b_ps: dh * NR,
                        ldc: BR,
                        accumulate: false,
                    },
                    k_blocks.at(c0),
                    &sc.qt[r0 * dh..],
                    st,
                );
                bias_and_mask_t(st, rows, r0, c0, s, bias, &sc.ranges, blk.fully_visible(c0));
                exp_sub_cols(isa, st, &sc.lse[r0..]);
                // dV += Pᵀ dO.
                tile_gemm(
                    isa,
                    TileGemm {
                        m: BC,
                        n: dhp,
                        k: BR,
                        a_rs: BR,
                        a_cs: 1,
                        b_rs: dhp,
                        b_ps: NR,
                        ldc: dhp,
                        accumulate: true,
                    },
                    st,
                    do_blocks.at(r0),
                    &mut sc.dva[c0 * dhp..],
                );
                // dPᵀ = V dOᵀ, then dSᵀ = Pᵀ ∘ (dPᵀ - D).
                tile_gemm(
                    isa,
                    TileGemm {
                        m: BC,
                        n: BR,
                        k: dh,
                        a_rs: dhp,
                        a_cs: 1,
                        b_rs: NR,
                        b_ps: dh * NR,
                        ldc: BR,
                        accumulate: false,
                    },
                    v_blocks.at(c0),
                    &sc.dot[r0 * dh..],
                    dp,
                );
                softmax_grad_cols(isa, st, dp, &dsum[r0..]);
                if let Some(db) = dbias.as_deref_mut() {
                    let keys = BC.min(s.saturating_sub(c0));
                    for r in 0..rows {
                        let drow = &mut db[(hb * t + r0 + r) * s + c0..][..keys];
                        for (jj, d) in drow.iter_mut().enumerate() {
                            *d += dp[jj * BR + r];
                        }
                    }
                }
                // dK += dSᵀ Q (times scale, applied once at the end).
                tile_gemm(
                    isa,
                    TileGemm {
                        m: BC,
                        n: dhp,
                        k: BR,
                        a_rs: BR,
                        a_cs: 1,
                        b_rs: dhp,
                        b_ps: NR,
                        ldc: dhp,
                        accumulate: true,
                    },
                    dp,
                    q_blocks.at(r0),
                    &mut sc.dka[c0 * dhp..],
                );
                // dQ += dS K (times scale, applied once at the end).
                tile_gemm(
                    isa,
                    TileGemm {
                        m: BR,
                        n: dhp,
                        k: BC,
                        a_rs: 1,
                        a_cs: BR,
                        b_rs: dhp,
                        b_ps: NR,
                        ldc: dhp,
                        accumulate: true,
                    },
                    dp,
                    k_blocks.at(c0),
                    &mut sc.dqa[r0 * dhp..],
                );
            }
        }
        let dq_head = &mut task.dq[gh];
        for (r, src) in sc.dqa.chunks_exact(dhp).take(t).enumerate() {
            scale_into(isa, dq_head.row(r), &src[..dh], p.scale);
        }
    }
    for (j, (ka, va)) in sc
        .dka
        .chunks_exact(dhp)
        .zip(sc.dva.chunks_exact(dhp))
        .take(s)
        .enumerate()
    {
        scale_into(isa, task.dk.row(j), &ka[..dh], p.scale);
        task.dv.row(j).copy_from_slice(&va[..dh]);
    }
}

// ---------------------------------------------------------------------------------------------
// Scalar inner loops
// ---------------------------------------------------------------------------------------------

mod scalar {
    use super::{exp2_approx, TileGemm, BC, BR, MR, NR};

    pub(super) fn tile_gemm(g: TileGemm, a: &[f32], b: &[f32], c: &mut [f32]) {
        for p in 0..g.n / NR {
            let bp = &b[p * g.b_ps..];
            for r in (0..g.m).step_by(MR) {
                let mut acc = [[0.0f32; NR]; MR];
                if g.accumulate {
                    for (i, row) in acc.iter_mut().enumerate() {
                        row.copy_from_slice(&c[(r + i) * g.ldc + p * NR..][..NR]);
                    }
                }
                for kk in 0..g.k {
                    let brow = &bp[kk * g.b_rs..][..NR];
                    for (i, row) in acc.iter_mut().enumerate() {
                        let av = a[(r + i) * g.a_rs + kk * g.a_cs];
                        for (x, bv) in row.iter_mut().zip(brow) {
                            *x += av * bv;
                        }
                    }
                }
                for (i, row) in acc.iter().enumerate() {
                    c[(r + i) * g.ldc + p * NR..][..NR].copy_from_slice(row);
                }
            }
        }
    }

    pub(super) fn softmax_cols(st: &mut [f32], m: &mut [f32], l: &mut [f32], corr: &mut [f32]) {
        let st = &mut st[..BC * BR];
        let mut mx = [f32::NEG_INFINITY; BR];
        for row in st.chunks_exact(BR) {
            for (a, &x) in mx.iter_mut().zip(row) {
                *a = a.max(x);
            }
        }
        let mut m_use = [0.0f32; BR];
        for r in 0..BR {
            let m_new = m[r].max(mx[r]);
            // Nothing visible yet: subtract 0 instead of -inf so that exp(-inf - 0) = 0, not NaN.
            m_use[r] = if m_new == f32::NEG_INFINITY {
                0.0
            } else {
                m_new
            };
            corr[r] = exp2_approx(m[r] - m_use[r]);
            m[r] = m_new;
        }
        let mut sum = [0.0f32; BR];
        for row in st.chunks_exact_mut(BR) {
            for ((x, mu), s) in row.iter_mut().zip(&m_use).zip(sum.iter_mut()) {
                *x = exp2_approx(*x - mu);
                *s += *x;
            }
        }
        for r in 0..BR {
            l[r] = l[r] * corr[r] + sum[r];
        }
    }
}

// ---------------------------------------------------------------------------------------------
// AVX2 + FMA inner loops
// ---------------------------------------------------------------------------------------------

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{BackwardJob, ForwardTask, Isa, Scratch, TileGemm, BC, BR, NR};
    use super::{C1, C2, C3, C4, C5, C6, EXP2_HI, EXP2_LO};
    use std::arch::x86_64::*;

    /// The whole per-head forward compiled with AVX2+FMA, so that its glue loops (packing,
    /// rescaling, bias) vectorise too and the tile calls inline.
    ///
    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn forward_head(task: ForwardTask, sc: &mut Scratch) {
        super::forward_head_impl(Isa::Avx2Fma, task, sc)
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn backward_group(job: BackwardJob, sc: &mut Scratch) {
        super::backward_group_impl(Isa::Avx2Fma, job, sc)
    }

    /// Eight lanes of [`super::exp2_approx`] (the same reduction and polynomial, with FMAs).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn exp2_8(x: __m256) -> __m256 {
        // Constant first: minps/maxps return the second operand when either is NaN, so NaN survives.
        let x = _mm256_max_ps(_mm256_set1_ps(EXP2_LO), x);
        let x = _mm256_min_ps(_mm256_set1_ps(EXP2_HI), x);
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(x);
        let r = _mm256_sub_ps(x, n);
        let mut poly = _mm256_set1_ps(C6);
        poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(C5));
        poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(C4));
        poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(C3));
        poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(C2));
        poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(C1));
        poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(1.0));
        // n = -127 gives exponent bits 0, i.e. the factor 0.0: underflow flushes to exactly zero.
        let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(
            _mm256_cvtps_epi32(n),
            _mm256_set1_epi32(127),
        ));
        _mm256_mul_ps(poly, _mm256_castsi256_ps(bits))
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp2_slice(xs: &mut [f32]) {
        let mut chunks = xs.chunks_exact_mut(8);
        for c in &mut chunks {
            _mm256_storeu_ps(c.as_mut_ptr(), exp2_8(_mm256_loadu_ps(c.as_ptr())));
        }
        let rest = chunks.into_remainder();
        if !rest.is_empty() {
            let mut tmp = [0.0f32; 8];
            tmp[..rest.len()].copy_from_slice(rest);
            _mm256_storeu_ps(tmp.as_mut_ptr(), exp2_8(_mm256_loadu_ps(tmp.as_ptr())));
            rest.copy_from_slice(&tmp[..rest.len()]);
        }
    }

    /// The register-blocked microkernels swept over the tile: 6x16 (12 accumulators, which keeps
    /// both FMA pipes busy despite the 4-cycle FMA latency) and 4x16 for the rows left over
    /// (`m` is a multiple of 4, and any such `m` splits into 6s and 4s).
    ///
    /// # Safety
    /// AVX2 and FMA must be available, and every index described by `g` (see
    /// [`super::TileGemm`]) must be inside the allocations behind `a`, `b` and `c`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile_gemm(g: TileGemm, a: *const f32, b: *const f32, c: *mut f32) {
        for p in 0..g.n / NR {
            let bp = b.add(p * g.b_ps);
            let cp = c.add(p * NR);
            let mut r = 0;
            while r < g.m {
                let rest = g.m - r;
                let (ar, cr) = (a.add(r * g.a_rs), cp.add(r * g.ldc));
                if rest >= 6 && (rest.is_multiple_of(6) || rest >= 10) {
                    micro::<6>(g, ar, bp, cr);
                    r += 6;
                } else {
                    micro::<4>(g, ar, bp, cr);
                    r += 4;
                }
            }
        }
    }

    /// `ROWS x 16` block of `C (+)= A B`: per step of `k`, two B vectors and `ROWS` broadcasts.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn micro<const ROWS: usize>(g: TileGemm, a: *const f32, b: *const f32, c: *mut f32) {
        let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
        if g.accumulate {
            for (i, row) in acc.iter_mut().enumerate() {
                let ci = c.add(i * g.ldc);
                *row = [_mm256_loadu_ps(ci), _mm256_loadu_ps(ci.add(8))];
            }
        }
        for kk in 0..g.k {
            let bk = b.add(kk * g.b_rs);
            let b0 = _mm256_loadu_ps(bk);
            let b1 = _mm256_loadu_ps(bk.add(8));
            let ak = a.add(kk * g.a_cs);
            for (i, row) in acc.iter_mut().enumerate() {
                let v = _mm256_broadcast_ss(&*ak.add(i * g.a_rs));
                row[0] = _mm256_fmadd_ps(v, b0, row[0]);
                row[1] = _mm256_fmadd_ps(v, b1, row[1]);
            }
        }
        for (i, row) in acc.iter().enumerate() {
            let ci = c.add(i * g.ldc);
            _mm256_storeu_ps(ci, row[0]);
            _mm256_storeu_ps(ci.add(8), row[1]);
        }
    }

    /// [`super::pack_panels_t`] with 8x8 register transposes: eight rows of eight values are loaded,
    /// scaled, transposed, and stored as eight panel rows.
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `src` holds `rows * dh` values and `dst`
    /// `ceil(rows / 16) * 16 * dh`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn pack_panels_t(
        src: &[f32],
        rows: usize,
        dh: usize,
        mul: f32,
        dst: &mut [f32],
    ) {
        let mv = _mm256_set1_ps(mul);
        let s = src.as_ptr();
        let full_rows = rows / 8 * 8;
        let full_d = dh / 8 * 8;
        for j0 in (0..full_rows).step_by(8) {
            let panel = dst.as_mut_ptr().add((j0 / NR) * dh * NR + j0 % NR);
            for d0 in (0..full_d).step_by(8) {
                let ld = |i: usize| _mm256_mul_ps(_mm256_loadu_ps(s.add((j0 + i) * dh + d0)), mv);
                let (r0, r1, r2, r3) = (ld(0), ld(1), ld(2), ld(3));
                let (r4, r5, r6, r7) = (ld(4), ld(5), ld(6), ld(7));
                let t0 = _mm256_unpacklo_ps(r0, r1);
                let t1 = _mm256_unpackhi_ps(r0, r1);
                let t2 = _mm256_unpacklo_ps(r2, r3);
                let t3 = _mm256_unpackhi_ps(r2, r3);
                let t4 = _mm256_unpacklo_ps(r4, r5);
                let t5 = _mm256_unpackhi_ps(r4, r5);
                let t6 = _mm256_unpacklo_ps(r6, r7);
                let t7 = _mm256_unpackhi_ps(r6, r7);
                let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
                let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
                let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
                let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
                let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
                let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
                let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
                let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
                let out = panel.add(d0 * NR);
                _mm256_storeu_ps(out, _mm256_permute2f128_ps::<0x20>(u0, u4));
                _mm256_storeu_ps(out.add(NR), _mm256_permute2f128_ps::<0x20>(u1, u5));
                _mm256_storeu_ps(out.add(2 * NR), _mm256_permute2f128_ps::<0x20>(u2, u6));
                _mm256_storeu_ps(out.add(3 * NR), _mm256_permute2f128_ps::<0x20>(u3, u7));
                _mm256_storeu_ps(out.add(4 * NR), _mm256_permute2f128_ps::<0x31>(u0, u4));
                _mm256_storeu_ps(out.add(5 * NR), _mm256_permute2f128_ps::<0x31>(u1, u5));
                _mm256_storeu_ps(out.add(6 * NR), _mm256_permute2f128_ps::<0x31>(u2, u6));
                _mm256_storeu_ps(out.add(7 * NR), _mm256_permute2f128_ps::<0x31>(u3, u7));
            }
            for i in 0..8 {
                for d in full_d..dh {
                    *panel.add(d * NR + i) = *s.add((j0 + i) * dh + d) * mul;
                }
            }
        }
        for j in full_rows..rows {
            let panel = dst.as_mut_ptr().add((j / NR) * dh * NR + j % NR);
            for d in 0..dh {
                *panel.add(d * NR) = *s.add(j * dh + d) * mul;
            }
        }
    }

    /// Vertical online softmax, eight query columns at a time (see [`super::softmax_cols`]).
    ///
    /// # Safety
    /// AVX2 and FMA must be available; `st` holds `BC * BR` values, the others `BR`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax_cols(
        st: &mut [f32],
        m: &mut [f32],
        l: &mut [f32],
        corr: &mut [f32],
    ) {
        let neg_inf = _mm256_set1_ps(f32::NEG_INFINITY);
        for c in (0..BR).step_by(8) {
            let col = st.as_mut_ptr().add(c);
            let mut mx = neg_inf;
            for jj in 0..BC {
                mx = _mm256_max_ps(mx, _mm256_loadu_ps(col.add(jj * BR)));
            }
            let m_old = _mm256_loadu_ps(m.as_ptr().add(c));
            let m_new = _mm256_max_ps(m_old, mx);
            // Nothing visible yet: subtract 0 instead of -inf so that exp(-inf - 0) = 0, not NaN.
            let dead = _mm256_cmp_ps::<_CMP_EQ_OQ>(m_new, neg_inf);
            let m_use = _mm256_andnot_ps(dead, m_new);
            let cr = exp2_8(_mm256_sub_ps(m_old, m_use));
            let mut sum = _mm256_setzero_ps();
            for jj in 0..BC {
                let ptr = col.add(jj * BR);
                let e = exp2_8(_mm256_sub_ps(_mm256_loadu_ps(ptr), m_use));
                _mm256_storeu_ps(ptr, e);
                sum = _mm256_add_ps(sum, e);
            }
            let l_old = _mm256_loadu_ps(l.as_ptr().add(c));
            _mm256_storeu_ps(l.as_mut_ptr().add(c), _mm256_fmadd_ps(l_old, cr, sum));
            _mm256_storeu_ps(m.as_mut_ptr().add(c), m_new);
            _mm256_storeu_ps(corr.as_mut_ptr().add(c), cr);
        }
    }

    /// # Safety
    /// AVX2 and FMA must be available; `dst` and `src` have the same length.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scale_into(dst: &mut [f32], src: &[f32], mul: f32) {
        let mv = _mm256_set1_ps(mul);
        let n8 = dst.len() / 8 * 8;
        for i in (0..n8).step_by(8) {
            let x = _mm256_loadu_ps(src.as_ptr().add(i));
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_mul_ps(x, mv));
        }
        for i in n8..dst.len() {
            dst[i] = src[i] * mul;
        }
    }

    /// # Safety
    /// AVX2 and FMA must be available.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn scale_in_place(xs: &mut [f32], mul: f32) {
        let mv = _mm256_set1_ps(mul);
        let n8 = xs.len() / 8 * 8;
        for i in (0..n8).step_by(8) {
            let p = xs.as_mut_ptr().add(i);
            _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), mv));
        }
        for x in &mut xs[n8..] {
            *x *= mul;
        }
    }

    /// # Safety
    /// AVX2 and FMA must be available; `p` and `dp` hold `BC * BR` values, `dsum` `BR`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn softmax_grad_cols(p: &[f32], dp: &mut [f32], dsum: &[f32]) {
        for c in (0..BR).step_by(8) {
            let ds = _mm256_loadu_ps(dsum.as_ptr().add(c));
            for jj in 0..BC {
                let at = jj * BR + c;
                let d = _mm256_sub_ps(_mm256_loadu_ps(dp.as_ptr().add(at)), ds);
                let pv = _mm256_loadu_ps(p.as_ptr().add(at));
                _mm256_storeu_ps(dp.as_mut_ptr().add(at), _mm256_mul_ps(pv, d));
            }
        }
    }

    /// # Safety
    /// AVX2 and FMA must be available; `st` holds `BC * BR` values and `lse` `BR`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn exp_sub_cols(st: &mut [f32], lse: &[f32]) {
        for c in (0..BR).step_by(8) {
            let lv = _mm256_loadu_ps(lse.as_ptr().add(c));
            let col = st.as_mut_ptr().add(c);
            for jj in 0..BC {
                let ptr = col.add(jj * BR);
                _mm256_storeu_ps(ptr, exp2_8(_mm256_sub_ps(_mm256_loadu_ps(ptr), lv)));
            }
        }
    }
}
