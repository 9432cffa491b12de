//! The CPU backend: Cranelift-JIT kernels, GEMM calls, the attention kernel, the fused executor.

pub mod attention;
pub mod backend;
pub mod exec;
pub mod gemm;
pub mod jit;

pub use backend::CpuBackend;
