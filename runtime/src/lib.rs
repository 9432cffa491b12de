//! Kiln's runtime: executes compiled programs and runs the train / eval / generate loops.
//!
//! `cpu` holds the CPU backend (Cranelift-JIT elementwise kernels, GEMM, attention). The host-side
//! pieces (run config, data, tokenizers, checkpoints, metrics, plots, schedules) are backend-neutral.

pub mod backend;
pub mod checkpoint;
pub mod config;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod data;
pub mod eval;
pub mod evaltasks;
pub mod finetune;
pub mod generate;
pub mod hf;
pub mod interp_backend;
pub mod metrics;
pub mod objectives;
pub mod plot;
pub mod progress;
pub mod sample;
pub mod schedule;
pub mod session;
pub mod tokenizer;
pub mod train;
pub mod unigram;
pub mod yaml;
