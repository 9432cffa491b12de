//! Planners: memory, recomputation and parallelism, decided at compile time. They read a training
//! step graph and return side tables keyed by value id; the one rewrite here is `recompute::apply`,
//! which duplicates forward ops into the backward schedule as a recompute plan says.
//!
//! - `roles`: phases, layers, gradients and op kinds recovered from a step graph;
//! - `schedule`: the steps (ops today, kernels later) the memory planner plans over;
//! - `memory`: liveness, in-place reuse, one arena with offsets, peak bytes by category;
//! - `arena`: the memory planner over a fused program's kernels: the arena the CPU runtime
//!   allocates;
//! - `cpu`: the training step as the CPU runtime compiles it, and when `kiln plan` reports its
//!   arena;
//! - `recompute`: the policies (`none`, `full`, `selective`, `keep`, `budget`) as minimum cuts and
//!   an exact/Lagrangian budget search, and the rewrite;
//! - `shard`: tensor/sequence-parallel layouts and the collectives they need, with byte counts;
//! - `stages`: pipeline parallelism's 1F1B schedule, its bubble and micro-batches in flight;
//! - `device`: device presets for time and capacity;
//! - `analysis`: the whole pipeline for one config and layout, data and pipeline parallelism, the
//!   `kiln plan` report and the impossible-plan diagnostics;
//! - `print`: the plan as trailing sections of the printed IR, and each rank's program;
//! - `explain`: why a value is kept, recomputed or transient, how a parameter is sharded.

pub mod analysis;
pub mod arena;
pub mod cpu;
pub mod device;
pub mod explain;
pub mod maxflow;
pub mod memory;
pub mod print;
pub mod recompute;
pub mod roles;
pub mod schedule;
pub mod shard;
pub mod stages;

pub use analysis::{
    analyze, check, setup, Analysis, MemorySource, PlanOptions, PlanReport, Precision, Setup,
};
pub use arena::{plan_program, ProgramArena};
pub use memory::{plan_memory, validate, ArenaPlan, Category, MemoryInput, MemoryPlan, Slot};
pub use recompute::{apply, plan_recompute, RecomputePlan, Rewritten};
pub use roles::Roles;
pub use schedule::{BufKey, Schedule, Step};
