//! Small hand-written kernels that move or combine data rather than compute a fused region: the
//! deterministic finishing of cross-block partial sums (`ColSum`/`Sum` outputs of row programs,
//! the global gradient norm), f32↔bf16 copies for mixed precision, and the embedding gather and
//! its gradient. One module, compiled once per device.
//!
//! Determinism is the rule here too: no floating-point atomics; partial sums are added in a fixed
//! order; the embedding gradient walks the tokens in order for each column (simple and
//! deterministic, but serial in the token count: a sort-based version is future work once a GPU
//! can measure it).

use super::codegen::PRELUDE;
use super::nvrtc::Source;

/// Entry points of the data module.
pub const SUM_PARTS: &str = "kiln_sum_parts";
pub const SUMSQ_PARTS: &str = "kiln_sumsq_parts";
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

// dtable[tokens[t], d] += dout[t, d] for every t, in token order (one thread per column d:
// deterministic, no atomics). Tokens outside [0, vocab) are skipped. dtable is f32 (master grads).
#define KILN_EMBEDDING_BWD(NAME, T, LOAD)                                                        \
extern "C" __global__ void NAME(const int* tokens, const T* dout, float* dtable, int n_tokens, int dim, int vocab) { \
    for (int d = blockIdx.x * blockDim.x + threadIdx.x; d < dim; d += gridDim.x * blockDim.x) {  \
        for (int t = 0; t < n_tokens; ++t) {                                                     \
            const int tok = tokens[t];                                                           \
            if (tok < 0 || tok >= vocab) continue;                                               \
            dtable[(long long)tok * dim + d] += LOAD(dout[(long long)t * dim + d]);              \
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

#[cfg(test)]
mod tests {
    use super::*;

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
