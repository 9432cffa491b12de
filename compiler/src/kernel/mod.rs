//! Backend-neutral kernel IR, produced by fusion and consumed by the CPU (Cranelift) and CUDA (NVRTC) code generators.
