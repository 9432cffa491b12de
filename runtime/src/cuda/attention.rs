//! The attention kernel of the CUDA backend: memory-efficient scaled-dot-product attention,
//! forward and backward, FlashAttention-2 style — the CUDA twin of `cpu::attention`.
//!
//! Forward: one thread block per (query tile, batch·head); a tile of `BQ` queries meets one tile of
//! `BK` keys at a time in shared memory; scores are kept in base 2 (`Q` pre-scaled by
//! `scale·log2 e`, the bias by `log2 e`) with an online softmax (running max and sum in f32);
//! key tiles that the mask hides from the whole query tile are never loaded; only `O` and the
//! per-row natural-log logsumexp are written. Every supported mask gives query `i` a contiguous
//! visible key interval `[lo(i), hi(i))` whose ends never decrease with `i`, which makes tile
//! skipping two comparisons.
//!
//! Backward (three kernels, no atomics, so it is deterministic): `kiln_attn_bwd_pre` computes
//! `D = rowsum(dO ∘ O)`; `kiln_attn_bwd_dkdv` owns one key tile of one key-value head and walks the
//! query tiles (and the query heads of its group) that can see it, accumulating `dK`, `dV` in
//! registers; `kiln_attn_bwd_dq` owns one query tile and walks the visible key tiles for `dQ` (and
//! the bias gradient, for which one block owns each bias row: it loops over the batch, and over
//! the heads when the bias is shared by all heads).
//!
//! Layouts (row-major, as `kernel::AttentionKernel` states): `q`, `o`, `do`, `dq`
//! `[batch, heads, q_len, head_dim]`; `k`, `v`, `dk`, `dv` `[batch, kv_heads, kv_len, head_dim]`,
//! each of these eight either head-major like that or sequence-major (`[batch, len, heads,
//! head_dim]`, the kernel's `layout`; a compile-time choice per operand, `KILN_L_*`, so that the
//! address arithmetic folds);
//! `lse`, `D` `[batch, heads, q_len]` (f32); `bias`, `dbias` `[1 or heads, q_len, kv_len]` (f32).
//! Query `i` sits at position `i + kv_len - q_len` (bottom-right alignment, like the CPU kernel).
//! A query that sees no key gets `O = 0` and `lse = -inf`.
//!
//! This is the SIMT (CUDA-core, f32 FMA) version: 256 threads as 16×16, each computing a
//! `BQ/16 × BK/16` patch of the score tile and a `BQ/16 × DP/16` patch of the output. It is meant
//! to be right first; a tensor-core (`mma.sync` bf16) version is the next step once a GPU session
//! can measure it. **Unverified on hardware**: it compiles for sm_90 (tested in CI), and
//! `runtime/tests/cuda_conformance.rs` checks it against `cpu::attention` on a GPU.

use kiln_compiler::kernel::{
    AttentionKernel, AttentionLayout, AttentionMask, Direction, HeadLayout,
};

use super::codegen::PRELUDE;
use super::nvrtc::Source;
use super::{CudaError, Storage};

/// Entry points.
pub const FWD: &str = "kiln_attn_fwd";
pub const BWD_PRE: &str = "kiln_attn_bwd_pre";
pub const BWD_DQ: &str = "kiln_attn_bwd_dq";
pub const BWD_DKDV: &str = "kiln_attn_bwd_dkdv";

/// Threads per block of the tiled kernels (16 × 16).
pub const THREADS: u32 = 256;
/// Largest head dimension supported.
pub const MAX_HEAD_DIM: usize = 256;

/// The mask's kind; its parameter (window, prefix) is a launch argument, so one compiled module
/// serves every window or prefix length.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MaskKind {
    Full,
    Causal,
    Local,
    PrefixLm,
}

impl MaskKind {
    fn code(self) -> u32 {
        match self {
            MaskKind::Full => 0,
            MaskKind::Causal => 1,
            MaskKind::Local => 2,
            MaskKind::PrefixLm => 3,
        }
    }
}

/// What a compiled attention module depends on (everything else is a launch argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Variant {
    pub direction: Direction,
    pub head_dim: usize,
    pub mask: MaskKind,
    pub has_bias: bool,
    /// Storage of `q, k, v, o, do, dq, dk, dv`; `lse`, `D`, `bias`, `dbias` are always f32.
    pub storage: Storage,
    /// Head-major or sequence-major, per operand.
    pub layout: AttentionLayout,
}

impl Variant {
    pub fn of(k: &AttentionKernel, storage: Storage) -> Variant {
        Variant {
            direction: k.direction,
            head_dim: k.head_dim,
            mask: mask_kind(k.mask),
            has_bias: k.has_bias,
            storage,
            layout: k.layout,
        }
    }

    /// A readable, unique module name (`_l` and one letter per operand, `h`ead- or `s`equence-major,
    /// when some operand is sequence-major).
    pub fn name(&self) -> String {
        let layout = if self.layout == AttentionLayout::HEAD_MAJOR {
            String::new()
        } else {
            let letters: String = self
                .layout
                .operands()
                .iter()
                .map(|(_, l)| match l {
                    HeadLayout::HeadMajor => 'h',
                    HeadLayout::SeqMajor => 's',
                })
                .collect();
            format!("_l{letters}")
        };
        format!(
            "kiln_attn_{}_d{}_{}{}_{}{layout}",
            match self.direction {
                Direction::Forward => "fwd",
                Direction::Backward => "bwd",
            },
            self.head_dim,
            match self.mask {
                MaskKind::Full => "full",
                MaskKind::Causal => "causal",
                MaskKind::Local => "local",
                MaskKind::PrefixLm => "prefix",
            },
            if self.has_bias { "_bias" } else { "" },
            match self.storage {
                Storage::F32 => "f32",
                Storage::Bf16 => "bf16",
            }
        )
    }
}

pub fn mask_kind(m: AttentionMask) -> MaskKind {
    match m {
        AttentionMask::Full => MaskKind::Full,
        AttentionMask::Causal => MaskKind::Causal,
        AttentionMask::Local { .. } => MaskKind::Local,
        AttentionMask::PrefixLm { .. } => MaskKind::PrefixLm,
        // Per-row prefix lengths are refused by `check` (and `mask_param`) before any module is
        // built or launched; the name would be the prefix kernel's.
        AttentionMask::PrefixLmLengths => MaskKind::PrefixLm,
    }
}

/// The mask's launch parameter (window or prefix length; 0 when it has none).
pub fn mask_param(m: AttentionMask) -> Result<i32, CudaError> {
    let p = match m {
        AttentionMask::Full | AttentionMask::Causal => 0,
        AttentionMask::Local { window } => window,
        AttentionMask::PrefixLm { prefix } => prefix,
        AttentionMask::PrefixLmLengths => {
            return Err(CudaError::Launch {
                name: "attention".into(),
                message:
                    "per-row prefix lengths are not supported by the CUDA attention kernel yet \
                          (the CPU executor runs them)"
                        .into(),
            })
        }
    };
    i32::try_from(p).map_err(|_| CudaError::Launch {
        name: "attention".into(),
        message: format!("mask parameter {p} does not fit in i32"),
    })
}

/// Tile sizes for a head dimension: `BQ × BK` score tiles, head dimension padded to `dp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tiles {
    pub bq: usize,
    pub bk: usize,
    pub dp: usize,
}

pub fn tiles(head_dim: usize) -> Tiles {
    let dp = head_dim.div_ceil(16).max(1) * 16;
    // Shared memory grows with dp; halve the tiles for the largest heads so the backward's six
    // tiles stay under the 227 KiB an sm_90 block may use.
    let b = if dp <= 128 { 64 } else { 32 };
    Tiles { bq: b, bk: b, dp }
}

/// Dynamic shared memory (bytes) of one entry point.
pub fn smem_bytes(head_dim: usize, entry: &str) -> usize {
    let t = tiles(head_dim);
    let ld = t.dp + 1;
    let floats = match entry {
        FWD => (t.bq + 2 * t.bk) * ld + t.bq * (t.bk + 1),
        BWD_DQ => (2 * t.bq + 2 * t.bk) * ld + t.bq * (t.bk + 1),
        BWD_DKDV => (2 * t.bq + 2 * t.bk) * ld + 2 * t.bk * (t.bq + 1) + 2 * t.bq,
        _ => 0,
    };
    floats * 4
}

/// Checks the shapes of an attention kernel (errors, never panics).
pub fn check(k: &AttentionKernel) -> Result<(), CudaError> {
    let bad = |message: String| {
        Err(CudaError::Launch {
            name: "attention".into(),
            message,
        })
    };
    if k.head_dim == 0 || k.head_dim > MAX_HEAD_DIM {
        return bad(format!(
            "head_dim {} is outside 1..={MAX_HEAD_DIM}",
            k.head_dim
        ));
    }
    if k.kv_heads == 0 || !k.heads.is_multiple_of(k.kv_heads) {
        return bad(format!(
            "heads {} is not a multiple of kv_heads {}",
            k.heads, k.kv_heads
        ));
    }
    let fits = |x: usize| i32::try_from(x).is_ok();
    let rows = k
        .batch
        .checked_mul(k.heads)
        .and_then(|x| x.checked_mul(k.q_len));
    let elems = rows.and_then(|r| r.checked_mul(k.head_dim));
    let kv = k
        .batch
        .checked_mul(k.kv_heads)
        .and_then(|x| x.checked_mul(k.kv_len))
        .and_then(|x| x.checked_mul(k.head_dim));
    if !(fits(k.batch)
        && fits(k.heads)
        && fits(k.q_len)
        && fits(k.kv_len)
        && elems.is_some()
        && kv.is_some()
        && k.batch * k.heads <= 65_535
        && k.batch * k.kv_heads <= 65_535)
    {
        return bad("sizes too large for this kernel's grid".into());
    }
    mask_param(k.mask)?;
    if k.key_padding {
        return bad(
            "key padding (per-row key lengths) is not supported by the CUDA attention kernel yet \
             (the CPU executor runs it)"
                .into(),
        );
    }
    Ok(())
}

/// Grid of one entry point for `k` (block is always [`THREADS`]); `bias_heads` is 1 or
/// `k.heads` (how many heads the bias has), ignored without a bias.
pub fn grid(k: &AttentionKernel, entry: &str, bias_heads: usize) -> (u32, u32) {
    let t = tiles(k.head_dim);
    match entry {
        FWD => (k.q_len.div_ceil(t.bq) as u32, (k.batch * k.heads) as u32),
        BWD_PRE => {
            // One warp per row, 8 warps per block.
            let rows = k.batch * k.heads * k.q_len;
            (rows.div_ceil(8).min(1 << 20) as u32, 1)
        }
        BWD_DQ => {
            let y = if k.has_bias {
                // One block per (query tile, bias head): it owns those dbias rows.
                bias_heads as u32
            } else {
                (k.batch * k.heads) as u32
            };
            (k.q_len.div_ceil(t.bq) as u32, y)
        }
        BWD_DKDV => (
            k.kv_len.div_ceil(t.bk) as u32,
            (k.batch * k.kv_heads) as u32,
        ),
        _ => (0, 0),
    }
}

/// The module source of a variant.
pub fn source(v: &Variant) -> Result<Source, CudaError> {
    if v.head_dim == 0 || v.head_dim > MAX_HEAD_DIM {
        return Err(CudaError::Codegen {
            name: v.name(),
            message: format!("head_dim {} is outside 1..={MAX_HEAD_DIM}", v.head_dim),
        });
    }
    let t = tiles(v.head_dim);
    let mut code = format!(
        "// Generated by kiln (runtime/src/cuda/attention.rs): {}\n",
        v.name()
    );
    code.push_str(PRELUDE);
    code.push_str(&format!(
        "#define KILN_D {}\n#define KILN_DP {}\n#define KILN_BQ {}\n#define KILN_BK {}\n#define KILN_MASK {}\n#define KILN_BIAS {}\n",
        v.head_dim,
        t.dp,
        t.bq,
        t.bk,
        v.mask.code(),
        u32::from(v.has_bias)
    ));
    for (name, l) in v.layout.operands() {
        code.push_str(&format!(
            "#define KILN_L_{} {}\n",
            name.to_uppercase(),
            u32::from(l == HeadLayout::SeqMajor)
        ));
    }
    code.push_str(match v.storage {
        Storage::F32 => "typedef float kiln_t;\n#define KILN_LD(x) (x)\n#define KILN_ST(x) (x)\n",
        Storage::Bf16 => {
            "typedef kiln_bf16 kiln_t;\n#define KILN_LD(x) kiln_bf16_to_f32(x)\n#define KILN_ST(x) kiln_f32_to_bf16(x)\n"
        }
    });
    code.push_str(COMMON);
    let kernels = match v.direction {
        Direction::Forward => {
            code.push_str(FORWARD);
            vec![FWD.to_string()]
        }
        Direction::Backward => {
            code.push_str(BACKWARD);
            vec![
                BWD_PRE.to_string(),
                BWD_DQ.to_string(),
                BWD_DKDV.to_string(),
            ]
        }
    };
    Ok(Source {
        name: v.name(),
        code,
        kernels,
        fmad: true,
    })
}

const COMMON: &str = r#"
#define KILN_LDS (KILN_DP + 1)
#define KILN_TQ (KILN_BQ / 16)
#define KILN_TK (KILN_BK / 16)
#define KILN_TD (KILN_DP / 16)
#define KILN_LOG2E 1.44269504088896340736f
#define KILN_LN2 0.693147180559945309417f
#define KILN_NEG_INF __int_as_float(0xff800000)

// Visible keys of query i: [kiln_lo(i), kiln_hi(i)), both non-decreasing in i.
// off = kv_len - q_len (bottom-right alignment); mp = window (local) or prefix (prefix LM).
__device__ __forceinline__ int kiln_lo(int i, int off, int mp, int S) {
#if KILN_MASK == 2
    return min(S, max(0, i + off - mp + 1));
#else
    (void)i; (void)off; (void)mp; (void)S;
    return 0;
#endif
}
__device__ __forceinline__ int kiln_hi(int i, int off, int mp, int S) {
#if KILN_MASK == 0
    (void)i; (void)off; (void)mp;
    return S;
#elif KILN_MASK == 1 || KILN_MASK == 2
    (void)mp;
    return min(S, max(0, i + off + 1));
#else
    return min(S, max(max(0, i + off + 1), mp));
#endif
}

// Offset of row i of head h of batch row b in a [B, H, L, KILN_D] operand stored head-major
// (lay 0) or sequence-major as [B, L, H, KILN_D] (lay 1), and the distance between its rows.
#define KILN_AT(lay, b, h, i, H, L) ((lay) ? (((long long)(b) * (L) + (i)) * (H) + (h)) * KILN_D : (((long long)(b) * (H) + (h)) * (L) + (i)) * KILN_D)
#define KILN_LDR(lay, H) ((lay) ? (long long)(H) * KILN_D : (long long)KILN_D)

// Loads rows [r0, r0 + nrows) of a [len, KILN_D] matrix whose rows are `ld` apart into smem
// [nrows][KILN_LDS] as f32, multiplied by `mul`; rows past `len` and columns past KILN_D are zero.
__device__ __forceinline__ void kiln_load_tile(float* dst, const kiln_t* src, long long ld, int r0, int nrows, int len, float mul) {
    for (int e = threadIdx.x; e < nrows * KILN_DP; e += blockDim.x) {
        const int r = e / KILN_DP, d = e - r * KILN_DP;
        float x = 0.0f;
        if (r0 + r < len && d < KILN_D) x = KILN_LD(src[(long long)(r0 + r) * ld + d]) * mul;
        dst[r * KILN_LDS + d] = x;
    }
}
"#;

const FORWARD: &str = r#"
extern "C" __global__ void __launch_bounds__(256) kiln_attn_fwd(
    const kiln_t* q, const kiln_t* k, const kiln_t* v, const float* bias, kiln_t* o, float* lse,
    int B, int Hq, int Hkv, int T, int S, float scale, int mp, int bias_heads)
{
    extern __shared__ float kiln_smem[];
    float* Qs = kiln_smem;                  // [BQ][LDS], pre-scaled by scale * log2(e)
    float* Ks = Qs + KILN_BQ * KILN_LDS;     // [BK][LDS]
    float* Vs = Ks + KILN_BK * KILN_LDS;     // [BK][LDS]
    float* Ps = Vs + KILN_BK * KILN_LDS;     // [BQ][BK + 1]
    const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
    const int bh = blockIdx.y, b = bh / Hq, h = bh - b * Hq;
    const int hk = h / (Hq / Hkv);
    const int q0 = blockIdx.x * KILN_BQ;
    const int off = S - T;
    (void)B; (void)bias; (void)bias_heads;
    const kiln_t* qp = q + KILN_AT(KILN_L_Q, b, h, 0, Hq, T);
    const kiln_t* kp = k + KILN_AT(KILN_L_K, b, hk, 0, Hkv, S);
    const kiln_t* vp = v + KILN_AT(KILN_L_V, b, hk, 0, Hkv, S);
#if KILN_BIAS
    const float* bp = bias + (long long)(bias_heads == 1 ? 0 : h) * T * S;
#endif
    kiln_load_tile(Qs, qp, KILN_LDR(KILN_L_Q, Hq), q0, KILN_BQ, T, scale * KILN_LOG2E);

    float m[KILN_TQ], l[KILN_TQ], acc[KILN_TQ][KILN_TD];
    int lo[KILN_TQ], hi[KILN_TQ];
#pragma unroll
    for (int i = 0; i < KILN_TQ; ++i) {
        const int row = q0 + ty * KILN_TQ + i;
        lo[i] = kiln_lo(row, off, mp, S);
        hi[i] = row < T ? kiln_hi(row, off, mp, S) : 0;
        m[i] = KILN_NEG_INF;
        l[i] = 0.0f;
#pragma unroll
        for (int dd = 0; dd < KILN_TD; ++dd) acc[i][dd] = 0.0f;
    }
    const int last = min(T, q0 + KILN_BQ) - 1;
    const int klo = kiln_lo(q0, off, mp, S), khi = kiln_hi(last, off, mp, S);

    for (int k0 = (klo / KILN_BK) * KILN_BK; k0 < khi; k0 += KILN_BK) {
        __syncthreads();  // Qs is written (first tile); the previous tile's readers are done.
        kiln_load_tile(Ks, kp, KILN_LDR(KILN_L_K, Hkv), k0, KILN_BK, S, 1.0f);
        kiln_load_tile(Vs, vp, KILN_LDR(KILN_L_V, Hkv), k0, KILN_BK, S, 1.0f);
        __syncthreads();

        float s[KILN_TQ][KILN_TK];
#pragma unroll
        for (int i = 0; i < KILN_TQ; ++i)
#pragma unroll
            for (int j = 0; j < KILN_TK; ++j) s[i][j] = 0.0f;
        for (int d = 0; d < KILN_DP; ++d) {
            float qv[KILN_TQ], kv[KILN_TK];
#pragma unroll
            for (int i = 0; i < KILN_TQ; ++i) qv[i] = Qs[(ty * KILN_TQ + i) * KILN_LDS + d];
#pragma unroll
            for (int j = 0; j < KILN_TK; ++j) kv[j] = Ks[(tx + 16 * j) * KILN_LDS + d];
#pragma unroll
            for (int i = 0; i < KILN_TQ; ++i)
#pragma unroll
                for (int j = 0; j < KILN_TK; ++j) s[i][j] = fmaf(qv[i], kv[j], s[i][j]);
        }

#pragma unroll
        for (int i = 0; i < KILN_TQ; ++i) {
            const int row = q0 + ty * KILN_TQ + i;
            float mx = KILN_NEG_INF;
#pragma unroll
            for (int j = 0; j < KILN_TK; ++j) {
                const int col = k0 + tx + 16 * j;
                const bool vis = col >= lo[i] && col < hi[i];
                float x = s[i][j];
#if KILN_BIAS
                if (vis) x += bp[(long long)row * S + col] * KILN_LOG2E;
#endif
                x = vis ? x : KILN_NEG_INF;
                s[i][j] = x;
                mx = kiln_maxf(mx, x);
            }
            (void)row;
            // The 16 threads of a row are 16 consecutive lanes: reduce across them.
#pragma unroll
            for (int sh = 8; sh > 0; sh >>= 1) mx = kiln_maxf(mx, __shfl_xor_sync(0xffffffffu, mx, sh));
            const float mnew = kiln_maxf(m[i], mx);
            // A row that has seen no visible key yet keeps a finite reference (no inf - inf).
            const float mref = mnew == KILN_NEG_INF ? 0.0f : mnew;
            const float alpha = exp2f(m[i] - mref);
            float rs = 0.0f;
#pragma unroll
            for (int j = 0; j < KILN_TK; ++j) {
                const float p = exp2f(s[i][j] - mref);
                Ps[(ty * KILN_TQ + i) * (KILN_BK + 1) + tx + 16 * j] = p;
                rs += p;
            }
#pragma unroll
            for (int sh = 8; sh > 0; sh >>= 1) rs += __shfl_xor_sync(0xffffffffu, rs, sh);
            l[i] = l[i] * alpha + rs;
            m[i] = mnew;
#pragma unroll
            for (int dd = 0; dd < KILN_TD; ++dd) acc[i][dd] *= alpha;
        }
        __syncthreads();

        for (int kk = 0; kk < KILN_BK; ++kk) {
            float pv[KILN_TQ];
#pragma unroll
            for (int i = 0; i < KILN_TQ; ++i) pv[i] = Ps[(ty * KILN_TQ + i) * (KILN_BK + 1) + kk];
#pragma unroll
            for (int dd = 0; dd < KILN_TD; ++dd) {
                const float vv = Vs[kk * KILN_LDS + tx + 16 * dd];
#pragma unroll
                for (int i = 0; i < KILN_TQ; ++i) acc[i][dd] = fmaf(pv[i], vv, acc[i][dd]);
            }
        }
    }

#pragma unroll
    for (int i = 0; i < KILN_TQ; ++i) {
        const int row = q0 + ty * KILN_TQ + i;
        if (row >= T) continue;
        const float inv = l[i] > 0.0f ? 1.0f / l[i] : 0.0f;
        kiln_t* op = o + KILN_AT(KILN_L_O, b, h, row, Hq, T);
#pragma unroll
        for (int dd = 0; dd < KILN_TD; ++dd) {
            const int d = tx + 16 * dd;
            if (d < KILN_D) op[d] = KILN_ST(acc[i][dd] * inv);
        }
        if (tx == 0) lse[(long long)bh * T + row] = l[i] > 0.0f ? (m[i] + log2f(l[i])) * KILN_LN2 : KILN_NEG_INF;
    }
}
"#;

const BACKWARD: &str = r#"
// D[row] = sum_d dO[row, d] * O[row, d]; one warp per row.
// Rows are numbered (b, h, i) head-major, like Dv; O and dO are addressed through their layouts.
extern "C" __global__ void __launch_bounds__(256) kiln_attn_bwd_pre(
    const kiln_t* o, const kiln_t* dout, float* Dv, long long rows, int Hq, int T)
{
    const int lane = threadIdx.x & 31;
    for (long long row = (long long)blockIdx.x * 8 + (threadIdx.x >> 5); row < rows; row += (long long)gridDim.x * 8) {
        const long long bh = row / T;
        const int i = (int)(row - bh * T), b = (int)(bh / Hq), h = (int)(bh - (long long)b * Hq);
        const kiln_t* orow = o + KILN_AT(KILN_L_O, b, h, i, Hq, T);
        const kiln_t* drow = dout + KILN_AT(KILN_L_DO, b, h, i, Hq, T);
        float s = 0.0f;
        for (int d = lane; d < KILN_D; d += 32)
            s = fmaf(KILN_LD(drow[d]), KILN_LD(orow[d]), s);
        s = kiln_warp_sum(s);
        if (lane == 0) Dv[row] = s;
    }
}

// First query row in [0, T] whose interval satisfies `hi(i) > k0` (mode 0) or `lo(i) >= k1`
// (mode 1); both predicates are monotone in i.
__device__ int kiln_first_row(int mode, int kb, int T, int off, int mp, int S) {
    int a = 0, z = T;
    while (a < z) {
        const int mid = a + ((z - a) >> 1);
        const bool pred = mode == 0 ? kiln_hi(mid, off, mp, S) > kb : kiln_lo(mid, off, mp, S) >= kb;
        if (pred) z = mid; else a = mid + 1;
    }
    return a;
}

// dQ (and dbias) for one query tile. Without a bias: one (batch, head) per block. With a bias:
// block y is a bias head; it walks every (batch, head) that uses that bias row, so each dbias
// element is owned by one thread of one block (deterministic, no atomics).
extern "C" __global__ void __launch_bounds__(256) kiln_attn_bwd_dq(
    const kiln_t* q, const kiln_t* k, const kiln_t* v, const kiln_t* dout, const float* lse,
    const float* Dv, const float* bias, kiln_t* dq, float* dbias,
    int B, int Hq, int Hkv, int T, int S, float scale, int mp, int bias_heads)
{
    extern __shared__ float kiln_smem[];
    float* Qs = kiln_smem;                  // [BQ][LDS], pre-scaled by scale * log2(e)
    float* dOs = Qs + KILN_BQ * KILN_LDS;    // [BQ][LDS]
    float* Ks = dOs + KILN_BQ * KILN_LDS;    // [BK][LDS]
    float* Vs = Ks + KILN_BK * KILN_LDS;     // [BK][LDS]
    float* dSs = Vs + KILN_BK * KILN_LDS;    // [BQ][BK + 1]
    const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
    const int q0 = blockIdx.x * KILN_BQ;
    const int off = S - T;
    const int group = Hq / Hkv;
    (void)bias; (void)dbias; (void)bias_heads;
#if KILN_BIAS
    const int hb = blockIdx.y;
    const int heads_per = bias_heads == 1 ? Hq : 1;
    const int npairs = B * heads_per;
    const float* bp = bias + (long long)hb * T * S;
    float* dbp = dbias + (long long)hb * T * S;
    // This block owns dbias rows [q0, q0 + BQ) of bias head hb: zero them (tiles the mask skips
    // are never visited below).
    for (long long e = tid; e < (long long)KILN_BQ * S; e += blockDim.x) {
        const int r = (int)(e / S);
        if (q0 + r < T) dbp[(long long)q0 * S + e] = 0.0f;
    }
#else
    const int npairs = 1;
    (void)B;
#endif
    for (int pair = 0; pair < npairs; ++pair) {
#if KILN_BIAS
        const int b = pair / heads_per;
        const int h = bias_heads == 1 ? pair - b * heads_per : hb;
#else
        const int b = blockIdx.y / Hq;
        const int h = blockIdx.y - b * Hq;
        (void)pair;
#endif
        const int bh = b * Hq + h, hk = h / group;
        const kiln_t* kp = k + KILN_AT(KILN_L_K, b, hk, 0, Hkv, S);
        const kiln_t* vp = v + KILN_AT(KILN_L_V, b, hk, 0, Hkv, S);
        __syncthreads();  // The previous pair's readers of Qs/dOs are done.
        kiln_load_tile(Qs, q + KILN_AT(KILN_L_Q, b, h, 0, Hq, T), KILN_LDR(KILN_L_Q, Hq), q0, KILN_BQ, T, scale * KILN_LOG2E);
        kiln_load_tile(dOs, dout + KILN_AT(KILN_L_DO, b, h, 0, Hq, T), KILN_LDR(KILN_L_DO, Hq), q0, KILN_BQ, T, 1.0f);

        float lse2[KILN_TQ], dvr[KILN_TQ], acc[KILN_TQ][KILN_TD];
        int lo[KILN_TQ], hi[KILN_TQ];
#pragma unroll
        for (int i = 0; i < KILN_TQ; ++i) {
            const int row = q0 + ty * KILN_TQ + i;
            const bool in = row < T;
            lo[i] = kiln_lo(row, off, mp, S);
            hi[i] = in ? kiln_hi(row, off, mp, S) : 0;
            const float L = in ? lse[(long long)bh * T + row] : KILN_NEG_INF;
            // A row that saw no key (lse = -inf) has P = 0 everywhere: make it invisible.
            if (L == KILN_NEG_INF) hi[i] = 0;
            lse2[i] = L == KILN_NEG_INF ? 0.0f : L * KILN_LOG2E;
            dvr[i] = in ? Dv[(long long)bh * T + row] : 0.0f;
#pragma unroll
            for (int dd = 0; dd < KILN_TD; ++dd) acc[i][dd] = 0.0f;
        }
        const int last = min(T, q0 + KILN_BQ) - 1;
        const int klo = kiln_lo(q0, off, mp, S), khi = kiln_hi(last, off, mp, S);
        for (int k0 = (klo / KILN_BK) * KILN_BK; k0 < khi; k0 += KILN_BK) {
            __syncthreads();
            kiln_load_tile(Ks, kp, KILN_LDR(KILN_L_K, Hkv), k0, KILN_BK, S, 1.0f);
            kiln_load_tile(Vs, vp, KILN_LDR(KILN_L_V, Hkv), k0, KILN_BK, S, 1.0f);
            __syncthreads();
            float s[KILN_TQ][KILN_TK], dp[KILN_TQ][KILN_TK];
#pragma unroll
            for (int i = 0; i < KILN_TQ; ++i)
#pragma unroll
                for (int j = 0; j < KILN_TK; ++j) { s[i][j] = 0.0f; dp[i][j] = 0.0f; }
            for (int d = 0; d < KILN_DP; ++d) {
                float qv[KILN_TQ], gv[KILN_TQ], kv[KILN_TK], vv[KILN_TK];
#pragma unroll
                for (int i = 0; i < KILN_TQ; ++i) {
                    qv[i] = Qs[(ty * KILN_TQ + i) * KILN_LDS + d];
                    gv[i] = dOs[(ty * KILN_TQ + i) * KILN_LDS + d];
                }
#pragma unroll
                for (int j = 0; j < KILN_TK; ++j) {
                    kv[j] = Ks[(tx + 16 * j) * KILN_LDS + d];
                    vv[j] = Vs[(tx + 16 * j) * KILN_LDS + d];
                }
#pragma unroll
                for (int i = 0; i < KILN_TQ; ++i)
#pragma unroll
                    for (int j = 0; j < KILN_TK; ++j) {
                        s[i][j] = fmaf(qv[i], kv[j], s[i][j]);
                        dp[i][j] = fmaf(gv[i], vv[j], dp[i][j]);
                    }
            }
#pragma unroll
            for (int i = 0; i < KILN_TQ; ++i) {
                const int row = q0 + ty * KILN_TQ + i;
#pragma unroll
                for (int j = 0; j < KILN_TK; ++j) {
                    const int col = k0 + tx + 16 * j;
                    const bool vis = col >= lo[i] && col < hi[i];
                    float x = s[i][j];
#if KILN_BIAS
                    if (vis) x += bp[(long long)row * S + col] * KILN_LOG2E;
#endif
                    const float p = vis ? exp2f(x - lse2[i]) : 0.0f;
                    const float ds = p * (dp[i][j] - dvr[i]);
                    dSs[(ty * KILN_TQ + i) * (KILN_BK + 1) + tx + 16 * j] = ds;
#if KILN_BIAS
                    if (vis) dbp[(long long)row * S + col] += ds;
#endif
                }
                (void)row;
            }
            __syncthreads();
            for (int kk = 0; kk < KILN_BK; ++kk) {
                float g[KILN_TQ];
#pragma unroll
                for (int i = 0; i < KILN_TQ; ++i) g[i] = dSs[(ty * KILN_TQ + i) * (KILN_BK + 1) + kk];
#pragma unroll
                for (int dd = 0; dd < KILN_TD; ++dd) {
                    const float kv = Ks[kk * KILN_LDS + tx + 16 * dd];
#pragma unroll
                    for (int i = 0; i < KILN_TQ; ++i) acc[i][dd] = fmaf(g[i], kv, acc[i][dd]);
                }
            }
        }
#pragma unroll
        for (int i = 0; i < KILN_TQ; ++i) {
            const int row = q0 + ty * KILN_TQ + i;
            if (row >= T) continue;
            kiln_t* gp = dq + KILN_AT(KILN_L_DQ, b, h, row, Hq, T);
#pragma unroll
            for (int dd = 0; dd < KILN_TD; ++dd) {
                const int d = tx + 16 * dd;
                if (d < KILN_D) gp[d] = KILN_ST(acc[i][dd] * scale);
            }
        }
    }
}

// dK, dV for one key tile of one (batch, kv head): walks the query heads of its group and the
// query tiles that can see the tile. Scores are computed transposed (keys × queries).
extern "C" __global__ void __launch_bounds__(256) kiln_attn_bwd_dkdv(
    const kiln_t* q, const kiln_t* k, const kiln_t* v, const kiln_t* dout, const float* lse,
    const float* Dv, const float* bias, kiln_t* dk, kiln_t* dv,
    int B, int Hq, int Hkv, int T, int S, float scale, int mp, int bias_heads)
{
    extern __shared__ float kiln_smem[];
    float* Ks = kiln_smem;                   // [BK][LDS]
    float* Vs = Ks + KILN_BK * KILN_LDS;      // [BK][LDS]
    float* Qs = Vs + KILN_BK * KILN_LDS;      // [BQ][LDS], pre-scaled by scale * log2(e)
    float* dOs = Qs + KILN_BQ * KILN_LDS;     // [BQ][LDS]
    float* Ps = dOs + KILN_BQ * KILN_LDS;     // [BK][BQ + 1]
    float* dSs = Ps + KILN_BK * (KILN_BQ + 1); // [BK][BQ + 1]
    float* Ls = dSs + KILN_BK * (KILN_BQ + 1); // [BQ] lse * log2(e), or +inf for rows that saw nothing
    float* Ds = Ls + KILN_BQ;                 // [BQ]
    const int tid = threadIdx.x, ty = tid >> 4, tx = tid & 15;
    const int bhk = blockIdx.y, b = bhk / Hkv, hk = bhk - b * Hkv;
    const int group = Hq / Hkv;
    const int k0 = blockIdx.x * KILN_BK, k1 = min(S, k0 + KILN_BK);
    const int off = S - T;
    (void)B; (void)bias; (void)bias_heads;
    kiln_load_tile(Ks, k + KILN_AT(KILN_L_K, b, hk, 0, Hkv, S), KILN_LDR(KILN_L_K, Hkv), k0, KILN_BK, S, 1.0f);
    kiln_load_tile(Vs, v + KILN_AT(KILN_L_V, b, hk, 0, Hkv, S), KILN_LDR(KILN_L_V, Hkv), k0, KILN_BK, S, 1.0f);

    float akd[KILN_TK][KILN_TD], avd[KILN_TK][KILN_TD];
#pragma unroll
    for (int i = 0; i < KILN_TK; ++i)
#pragma unroll
        for (int dd = 0; dd < KILN_TD; ++dd) { akd[i][dd] = 0.0f; avd[i][dd] = 0.0f; }

    const int qa = kiln_first_row(0, k0, T, off, mp, S);
    const int qb = kiln_first_row(1, k1, T, off, mp, S);
    for (int g = 0; g < group; ++g) {
        const int h = hk * group + g, bh = b * Hq + h;
#if KILN_BIAS
        const float* bp = bias + (long long)(bias_heads == 1 ? 0 : h) * T * S;
#endif
        for (int q0 = (qa / KILN_BQ) * KILN_BQ; q0 < qb; q0 += KILN_BQ) {
            __syncthreads();  // Ks/Vs written (first tile); the previous tile's readers are done.
            kiln_load_tile(Qs, q + KILN_AT(KILN_L_Q, b, h, 0, Hq, T), KILN_LDR(KILN_L_Q, Hq), q0, KILN_BQ, T, scale * KILN_LOG2E);
            kiln_load_tile(dOs, dout + KILN_AT(KILN_L_DO, b, h, 0, Hq, T), KILN_LDR(KILN_L_DO, Hq), q0, KILN_BQ, T, 1.0f);
            for (int r = tid; r < KILN_BQ; r += blockDim.x) {
                const int row = q0 + r;
                const float L = row < T ? lse[(long long)bh * T + row] : KILN_NEG_INF;
                Ls[r] = L == KILN_NEG_INF ? __int_as_float(0x7f800000) : L * KILN_LOG2E;
                Ds[r] = row < T ? Dv[(long long)bh * T + row] : 0.0f;
            }
            __syncthreads();
            float s[KILN_TK][KILN_TQ], dp[KILN_TK][KILN_TQ];
#pragma unroll
            for (int i = 0; i < KILN_TK; ++i)
#pragma unroll
                for (int j = 0; j < KILN_TQ; ++j) { s[i][j] = 0.0f; dp[i][j] = 0.0f; }
            for (int d = 0; d < KILN_DP; ++d) {
                float kv[KILN_TK], vv[KILN_TK], qv[KILN_TQ], gv[KILN_TQ];
#pragma unroll
                for (int i = 0; i < KILN_TK; ++i) {
                    kv[i] = Ks[(ty * KILN_TK + i) * KILN_LDS + d];
                    vv[i] = Vs[(ty * KILN_TK + i) * KILN_LDS + d];
                }
#pragma unroll
                for (int j = 0; j < KILN_TQ; ++j) {
                    qv[j] = Qs[(tx + 16 * j) * KILN_LDS + d];
                    gv[j] = dOs[(tx + 16 * j) * KILN_LDS + d];
                }
#pragma unroll
                for (int i = 0; i < KILN_TK; ++i)
#pragma unroll
                    for (int j = 0; j < KILN_TQ; ++j) {
                        s[i][j] = fmaf(kv[i], qv[j], s[i][j]);
                        dp[i][j] = fmaf(vv[i], gv[j], dp[i][j]);
                    }
            }
#pragma unroll
            for (int i = 0; i < KILN_TK; ++i) {
                const int col = k0 + ty * KILN_TK + i;
#pragma unroll
                for (int j = 0; j < KILN_TQ; ++j) {
                    const int rr = tx + 16 * j, row = q0 + rr;
                    const bool vis = row < T && col >= kiln_lo(row, off, mp, S) && col < kiln_hi(row, off, mp, S);
                    float x = s[i][j];
#if KILN_BIAS
                    if (vis) x += bp[(long long)row * S + col] * KILN_LOG2E;
#endif
                    // Ls is +inf for a row that saw no key: exp2(-inf) = 0.
                    const float p = vis ? exp2f(x - Ls[rr]) : 0.0f;
                    Ps[(ty * KILN_TK + i) * (KILN_BQ + 1) + rr] = p;
                    dSs[(ty * KILN_TK + i) * (KILN_BQ + 1) + rr] = p * (dp[i][j] - Ds[rr]);
                }
            }
            __syncthreads();
            for (int qq = 0; qq < KILN_BQ; ++qq) {
                float pv[KILN_TK], gs[KILN_TK];
#pragma unroll
                for (int i = 0; i < KILN_TK; ++i) {
                    pv[i] = Ps[(ty * KILN_TK + i) * (KILN_BQ + 1) + qq];
                    gs[i] = dSs[(ty * KILN_TK + i) * (KILN_BQ + 1) + qq];
                }
#pragma unroll
                for (int dd = 0; dd < KILN_TD; ++dd) {
                    const float ov = dOs[qq * KILN_LDS + tx + 16 * dd];
                    const float qv = Qs[qq * KILN_LDS + tx + 16 * dd];
#pragma unroll
                    for (int i = 0; i < KILN_TK; ++i) {
                        avd[i][dd] = fmaf(pv[i], ov, avd[i][dd]);
                        akd[i][dd] = fmaf(gs[i], qv, akd[i][dd]);
                    }
                }
            }
        }
    }
    // Qs held q * scale * log2(e); dK = scale * sum dS q, so divide the log2(e) back out.
#pragma unroll
    for (int i = 0; i < KILN_TK; ++i) {
        const int col = k0 + ty * KILN_TK + i;
        if (col >= S) continue;
        kiln_t* kp = dk + KILN_AT(KILN_L_DK, b, hk, col, Hkv, S);
        kiln_t* vp = dv + KILN_AT(KILN_L_DV, b, hk, col, Hkv, S);
#pragma unroll
        for (int dd = 0; dd < KILN_TD; ++dd) {
            const int d = tx + 16 * dd;
            if (d < KILN_D) {
                kp[d] = KILN_ST(akd[i][dd] * (1.0f / KILN_LOG2E));
                vp[d] = KILN_ST(avd[i][dd]);
            }
        }
    }
}
"#;

#[cfg(test)]
mod tests {
    use super::*;

    fn kernel(direction: Direction, head_dim: usize, mask: AttentionMask) -> AttentionKernel {
        AttentionKernel {
            direction,
            batch: 2,
            heads: 4,
            kv_heads: 2,
            q_len: 100,
            kv_len: 100,
            head_dim,
            scale: 0.125,
            mask,
            has_bias: false,
            key_padding: false,
            layout: kiln_compiler::kernel::AttentionLayout::HEAD_MAJOR,
        }
    }

    #[test]
    fn unsupported_masks_are_errors() {
        let k = kernel(Direction::Forward, 64, AttentionMask::PrefixLmLengths);
        assert!(check(&k).is_err());
        let mut k = kernel(Direction::Forward, 64, AttentionMask::Causal);
        k.key_padding = true;
        assert!(check(&k).is_err());
    }

    #[test]
    fn shared_memory_fits_hopper() {
        // 227 KiB per block on sm_90 (opt-in).
        for d in [1, 8, 16, 32, 48, 64, 80, 96, 100, 128, 160, 192, 256] {
            for e in [FWD, BWD_DQ, BWD_DKDV] {
                let bytes = smem_bytes(d, e);
                assert!(bytes <= 227 * 1024, "d={d} {e}: {bytes} bytes");
                assert!(bytes > 0);
            }
        }
    }

    #[test]
    fn checks_are_errors() {
        let mut k = kernel(Direction::Forward, 64, AttentionMask::Causal);
        assert!(check(&k).is_ok());
        k.head_dim = 0;
        assert!(check(&k).is_err());
        k.head_dim = 257;
        assert!(check(&k).is_err());
        k.head_dim = 64;
        k.kv_heads = 3;
        assert!(check(&k).is_err());
        k.kv_heads = 0;
        assert!(check(&k).is_err());
        assert!(source(&Variant::of(
            &kernel(Direction::Forward, 300, AttentionMask::Full),
            Storage::F32
        ))
        .is_err());
    }

    #[test]
    fn grids_cover_every_row_and_key() {
        let k = kernel(Direction::Backward, 64, AttentionMask::Causal);
        assert_eq!(grid(&k, FWD, 0), (2, 8));
        assert_eq!(grid(&k, BWD_DQ, 0), (2, 8));
        assert_eq!(grid(&k, BWD_DKDV, 0), (2, 4));
        let mut kb = k;
        kb.has_bias = true;
        assert_eq!(grid(&kb, BWD_DQ, 4), (2, 4));
        assert_eq!(grid(&kb, BWD_DQ, 1), (2, 1));
        let pre = grid(&k, BWD_PRE, 0);
        assert!(pre.0 as usize * 8 >= 2 * 4 * 100);
    }

    #[test]
    fn variant_names_are_distinct() {
        let mut names = std::collections::BTreeSet::new();
        for dir in [Direction::Forward, Direction::Backward] {
            for mask in [
                AttentionMask::Full,
                AttentionMask::Causal,
                AttentionMask::Local { window: 4 },
                AttentionMask::PrefixLm { prefix: 3 },
            ] {
                for bias in [false, true] {
                    for st in [Storage::F32, Storage::Bf16] {
                        let mut k = kernel(dir, 64, mask);
                        k.has_bias = bias;
                        assert!(names.insert(Variant::of(&k, st).name()));
                    }
                }
            }
        }
    }
}
