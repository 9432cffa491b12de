//! The CPU backend: Cranelift-JIT kernels, GEMM calls, the attention kernel.

pub mod attention;
pub mod gemm;
pub mod jit;
