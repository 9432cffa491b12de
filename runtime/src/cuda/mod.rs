//! The CUDA backend (cargo feature `cuda`): CUDA C generated from the same kernel IR as the CPU
//! JIT, compiled at run time with NVRTC for the device's architecture, GEMMs through cuBLAS
//! (cuBLASLt epilogue fusion is a later step; the library is linked and checked for), a
//! hand-written FlashAttention-2-style attention kernel, one device arena and CUDA-graph replay.
//!
//! Why everything goes through `cudarc` with dynamic loading: the workspace must build and test on
//! machines with no CUDA at all (CI, laptops). The CUDA libraries are opened on first use, and
//! cudarc panics when one is absent, so every entry point here checks presence first
//! ([`libs`]) and turns absence into a [`CudaError::LibraryMissing`] with a hint.
//!
//! What can be verified without a GPU, and is, by the tests: the generated sources (snapshots in
//! `snapshots/cuda/`, `runtime/tests/cuda_codegen.rs`); that every one of them compiles with NVRTC
//! to PTX and CUBIN for sm_90 (`cuda_nvrtc.rs`, NVRTC from PyPI wheels, see
//! `scripts/install-nvrtc.sh`); and what they compute, by compiling them for the host against a
//! shim that emulates CUDA's execution model and running the launch plans of [`exec`] against the
//! reference evaluator and the CPU attention kernel (`cuda_emulate.rs`). Everything that needs a
//! device ([`device`], [`arena`], [`gemm`], [`graph`], the `Exec` launchers) is written against the
//! driver API but **unverified until a session with a GPU** runs `scripts/gpu-check.sh`
//! (conformance against the CPU runtime and a graph-replayed training step: `cuda_conformance.rs`;
//! benchmarks: `cuda_bench.rs`).
//!
//! Module map: [`codegen`] (row program → CUDA C), [`attention`] (attention kernel sources and
//! launch geometry), [`data`] (small hand-written kernels: partial-sum finishing, bf16
//! conversions, embedding), [`catalog`] (every kernel source the backend can generate for the
//! library programs and the tiny specs' attention shapes), [`nvrtc`] (compiling),
//! [`libs`] (finding the shared libraries); on the device: [`device`] (context, stream, modules,
//! launches), [`arena`] (one allocation), [`gemm`] (cuBLAS), [`graph`] (capture and replay),
//! [`exec`] (launch plans and launchers).

pub mod arena;
pub mod attention;
pub mod catalog;
pub mod codegen;
pub mod data;
pub mod device;
pub mod exec;
pub mod gemm;
pub mod graph;
pub mod libs;
pub mod nvrtc;

/// Where a buffer's elements are stored. Arithmetic is always `f32`; `Bf16` halves the memory
/// traffic of activations and weight copies in mixed-precision runs (fp32 master weights and
/// optimizer state stay `F32`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Storage {
    F32,
    /// bfloat16 as raw `u16` bits (no CUDA headers needed): loads widen exactly, stores round to
    /// nearest even.
    Bf16,
}

impl Storage {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            Storage::F32 => 4,
            Storage::Bf16 => 2,
        }
    }
}

/// Everything that can go wrong in the CUDA backend. Never a panic: a missing library, a missing
/// device, an NVRTC error and a driver error are all values.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    #[error("CUDA library {lib} could not be loaded: {hint}")]
    LibraryMissing { lib: &'static str, hint: String },
    #[error("no CUDA device {ordinal}: {message}")]
    NoDevice { ordinal: usize, message: String },
    #[error("NVRTC could not compile `{name}` for {arch}:\n{log}")]
    Compile {
        name: String,
        arch: String,
        log: String,
    },
    #[error("NVRTC: {0}")]
    Nvrtc(String),
    #[error("CUDA driver: {call}: {message}")]
    Driver { call: &'static str, message: String },
    #[error("cuBLAS: {call}: {message}")]
    Cublas { call: &'static str, message: String },
    #[error("code generation for `{name}`: {message}")]
    Codegen { name: String, message: String },
    #[error("launch of `{name}`: {message}")]
    Launch { name: String, message: String },
    #[error("arena: {0}")]
    Arena(String),
}

/// Little helpers to turn cudarc's error types into [`CudaError`] with the call named.
pub(crate) fn driver_err(
    call: &'static str,
) -> impl FnOnce(cudarc::driver::DriverError) -> CudaError {
    move |e| CudaError::Driver {
        call,
        message: format!("{e:?}"),
    }
}

pub(crate) fn cublas_err(
    call: &'static str,
) -> impl FnOnce(cudarc::cublas::result::CublasError) -> CudaError {
    move |e| CudaError::Cublas {
        call,
        message: format!("{e:?}"),
    }
}

/// Host-side bf16 conversions with the same rounding as the device code (round to nearest even,
/// NaN kept a quiet NaN), for uploading weights and checking results.
pub fn f32_to_bf16(x: f32) -> u16 {
    let u = x.to_bits();
    if x.is_nan() {
        return ((u >> 16) as u16) | 0x0040;
    }
    let rounded = u.wrapping_add(0x7fff + ((u >> 16) & 1));
    (rounded >> 16) as u16
}

/// bf16 bits to `f32` (exact).
pub fn bf16_to_f32(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_round_trip_and_rounding() {
        // Exactly representable values survive.
        for x in [
            0.0f32,
            -0.0,
            1.0,
            -2.5,
            65536.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ] {
            assert_eq!(bf16_to_f32(f32_to_bf16(x)).to_bits(), x.to_bits(), "{x}");
        }
        // 1 + 2^-8 is halfway between 1 and 1 + 2^-7: ties go to even (1.0).
        assert_eq!(bf16_to_f32(f32_to_bf16(1.0 + 1.0 / 256.0)), 1.0);
        // 1 + 3·2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties go to even (1 + 2^-6).
        assert_eq!(
            bf16_to_f32(f32_to_bf16(1.0 + 3.0 / 256.0)),
            1.0 + 1.0 / 64.0
        );
        assert!(bf16_to_f32(f32_to_bf16(f32::NAN)).is_nan());
        // Relative error of rounding is at most half an ulp: 2^-8 (8 significant bits).
        for i in 1..1000 {
            let x = i as f32 * 0.7311;
            let y = bf16_to_f32(f32_to_bf16(x));
            assert!(((y - x) / x).abs() <= 1.0 / 256.0, "{x} -> {y}");
        }
    }
}
