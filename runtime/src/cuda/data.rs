//! Small hand-written kernels that move or combine data rather than compute a fused region: the
//! deterministic finishing of cross-block partial sums (`ColSum`/`Sum` outputs of row programs,
//! the global gradient norm), f32↔bf16 copies for mixed precision, and the embedding gather and
//! its gradient. One module, compiled once per device.
//!
//! Determinism is the rule here too: no floating-point atomics; partial sums are added in a fixed
//! order; the embedding gradient groups the step's positions by token on the host
//! ([`embedding_grad_index`]: the host has the tokens before it uploads them), so each table row
//! is summed by one block, in position order.

use super::codegen::PRELUDE;
use super::nvrtc::Source;

/// Entry points of the data module.
pub const SUM_PARTS: &str = "kiln_sum_parts";
pub const SUMSQ_PARTS: &str = "kiln_sumsq_parts";
pub const CLIP_SCALE: &str = "kiln_clip_scale";
pub const F32_TO_BF16: &str = "kiln_f32_to_bf16_copy";
pub const BF16_TO_F32: &str = "kiln_bf16_to_f32_copy";
pub const EMBEDDING_FWD_F32: &str = "kiln_embedding_fwd_f32";
pub const EMBEDDING_FWD_BF16: &str = "kiln_embedding_fwd_bf16";
pub const EMBEDDING_BWD_F32: &str = "kiln_embedding_bwd_f32";
pub const EMBEDDING_BWD_BF16: &str = "kiln_embedding_bwd_bf16";

/// Threads per block of the data kernels.
pub const BLOCK: u32 = 256;
/// Blocks of `kiln_sumsq_parts` (its partial count): fixed, so the norm is the same everywhere.
pub const SUMSQ_PARTS_COUNT: u32 = 256;

const BODY: &str = r#"
// out[j] = sum over p < nparts of parts[p * n + j], in order of p (deterministic).
extern "C" __global__ void kiln_sum_parts(const float* parts, float* out, int nparts, int n) {
    for (int j = blockIdx.x * blockDim.x + threadIdx.x; j < n; j += gridDim.x * blockDim.x) {
        float s = 0.0f;
        for (int p = 0; p < nparts; ++p) s += parts[(long long)p * n + j];
        out[j] = s;
    }
}

// parts[blockIdx.x] = sum of x[i]^2 over this block's grid-stride share of [0, n); launch with a
// fixed grid (SUMSQ_PARTS_COUNT blocks of 256 threads), then kiln_sum_parts(parts, out, grid, 1).
extern "C" __global__ void __launch_bounds__(256) kiln_sumsq_parts(const float* x, float* parts, long long n) {
    __shared__ float red[32];
    float s = 0.0f;
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float v = x[i];
        s = fmaf(v, v, s);
    }
    s = kiln_block_sum(s, red);
    if (threadIdx.x == 0) parts[blockIdx.x] = s;
}

// *scale = min(1, *max_norm / max(sqrt(*sumsq), 1e-6)): global-norm gradient clipping computed on
// the device (one thread), so the optimizer update joins the step's graph. AdamW reads it as its
// grad_scale input.
extern "C" __global__ void kiln_clip_scale(const float* sumsq, const float* max_norm, float* scale) {
    if (blockIdx.x == 0 && threadIdx.x == 0) {
        const float norm = fmaxf(sqrtf(*sumsq), 1e-6f);
        *scale = fminf(1.0f, *max_norm / norm);
    }
}

extern "C" __global__ void kiln_f32_to_bf16_copy(const float* x, kiln_bf16* y, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = kiln_f32_to_bf16(x[i]);
}

extern "C" __global__ void kiln_bf16_to_f32_copy(const kiln_bf16* x, float* y, long long n) {
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x)
        y[i] = kiln_bf16_to_f32(x[i]);
}

// out[t, :] = table[tokens[t], :]; a token outside [0, vocab) gives a zero row (never a wild read).
#define KILN_EMBEDDING_FWD(NAME, T)                                                              \
extern "C" __global__ void NAME(const int* tokens, const T* table, T* out, int n_tokens, int dim, int vocab) { \
    const long long n = (long long)n_tokens * dim;                                               \
    for (long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) { \
        const int t = (int)(i / dim), d = (int)(i - (long long)t * dim);                         \
        const int tok = tokens[t];                                                               \
        out[i] = (tok >= 0 && tok < vocab) ? table[(long long)tok * dim + d] : (T)0;             \
    }                                                                                            \
}
KILN_EMBEDDING_FWD(kiln_embedding_fwd_f32, float)
KILN_EMBEDDING_FWD(kiln_embedding_fwd_bf16, kiln_bf16)

// Embedding gradient from a token index built on the host (embedding_grad_index): block u adds,
// for unique token unique[u], the rows dout[positions[offsets[u] .. offsets[u + 1]]] to
// dtable[unique[u], :], in position order, onto what dtable holds (gradient accumulation).
// Deterministic and without atomics: every dtable row is owned by one block. *n_unique is read
// on the device, so a captured graph serves every step (buffers are sized for n_tokens).
#define KILN_EMBEDDING_BWD(NAME, T, LOAD)                                                        \
extern "C" __global__ void NAME(const int* unique, const int* offsets, const int* positions,     \
                                const int* n_unique, const T* dout, float* dtable, int dim, int vocab) { \
    const int nu = *n_unique;                                                                    \
    for (int u = blockIdx.x; u < nu; u += gridDim.x) {                                           \
        const int tok = unique[u];                                                               \
        if (tok < 0 || tok >= vocab) continue;                                                   \
        const int p0 = offsets[u], p1 = offsets[u + 1];                                          \
        for (int d = threadIdx.x; d < dim; d += blockDim.x) {                                    \
            float s = dtable[(long long)tok * dim + d];                                          \
            for (int p = p0; p < p1; ++p) s += LOAD(dout[(long long)positions[p] * dim + d]);    \
            dtable[(long long)tok * dim + d] = s;                                                \
        }                                                                                        \
    }                                                                                            \
}
#define KILN_ID(x) (x)
KILN_EMBEDDING_BWD(kiln_embedding_bwd_f32, float, KILN_ID)
KILN_EMBEDDING_BWD(kiln_embedding_bwd_bf16, kiln_bf16, kiln_bf16_to_f32)
"#;

/// The data module's source.
pub fn source() -> Source {
    let mut code = String::from("// Generated by kiln (runtime/src/cuda/data.rs): data kernels.\n");
    code.push_str(PRELUDE);
    code.push_str(BODY);
    Source {
        name: "kiln_data".into(),
        code,
        kernels: [
            SUM_PARTS,
            SUMSQ_PARTS,
            CLIP_SCALE,
            F32_TO_BF16,
            BF16_TO_F32,
            EMBEDDING_FWD_F32,
            EMBEDDING_FWD_BF16,
            EMBEDDING_BWD_F32,
            EMBEDDING_BWD_BF16,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        fmad: false,
    }
}

/// The positions of each distinct token of a step, for the embedding gradient kernels: `unique`
/// (ascending token ids within `[0, vocab)`), `offsets` (`unique.len() + 1` entries) and
/// `positions` (ascending within a token), each padded to the fixed sizes `n_tokens`,
/// `n_tokens + 1`, `n_tokens` so the device buffers (and a captured graph) never change shape.
/// Tokens outside `[0, vocab)` are left out (they get no gradient, as in the forward's zero row).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EmbeddingGradIndex {
    pub n_unique: i32,
    pub unique: Vec<i32>,
    pub offsets: Vec<i32>,
    pub positions: Vec<i32>,
}

/// Builds the [`EmbeddingGradIndex`] of `tokens`.
pub fn embedding_grad_index(tokens: &[i32], vocab: usize) -> EmbeddingGradIndex {
    let n = tokens.len();
    let mut order: Vec<usize> = (0..n)
        .filter(|&t| tokens[t] >= 0 && (tokens[t] as usize) < vocab)
        .collect();
    // Stable: positions of one token stay in ascending order.
    order.sort_by_key(|&t| tokens[t]);
    let mut unique = Vec::with_capacity(n);
    let mut offsets = Vec::with_capacity(n + 1);
    let mut positions = Vec::with_capacity(n);
    for (i, &t) in order.iter().enumerate() {
        if i == 0 || tokens[t] != tokens[order[i - 1]] {
            unique.push(tokens[t]);
            offsets.push(i as i32);
        }
        positions.push(t as i32);
    }
    offsets.push(order.len() as i32);
    let n_unique = unique.len() as i32;
    unique.resize(n, -1);
    offsets.resize(n + 1, order.len() as i32);
    positions.resize(n, 0);
    EmbeddingGradIndex {
        n_unique,
        unique,
        offsets,
        positions,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedding_index_groups_positions_by_token() {
        let idx = embedding_grad_index(&[5, 2, 5, -1, 9, 2, 5, 7], 8);
        assert_eq!(idx.n_unique, 3);
        assert_eq!(&idx.unique[..3], &[2, 5, 7]);
        assert_eq!(&idx.offsets[..4], &[0, 2, 5, 6]);
        assert_eq!(&idx.positions[..6], &[1, 5, 0, 2, 6, 7]);
        assert_eq!(idx.unique.len(), 8);
        assert_eq!(idx.offsets.len(), 9);
        assert_eq!(idx.positions.len(), 8);
        let empty = embedding_grad_index(&[], 8);
        assert_eq!(empty.n_unique, 0);
        assert_eq!(empty.offsets, vec![0]);
    }

    #[test]
    fn every_entry_point_is_defined() {
        let src = source();
        for k in &src.kernels {
            let defined = src.code.contains(&format!("void {k}("))
                || src.code.contains(&format!("({k},"))
                || src.code.contains(&format!("__launch_bounds__(256) {k}("));
            assert!(defined, "{k} is not defined in the data module");
        }
    }
}
