//! Kiln's compiler: from a parsed `.kiln` file to an optimized, planned training step.
//!
//! Data path: `sema` (resolve, expand stdlib blocks, shape/dtype inference, lowering to the op
//! graph) → `ir` (closed `Op` enum, graph, verifier, printer) → `autodiff` → `passes` → `kernel`
//! (backend-neutral kernel IR) → `plan` (recompute, memory, sharding side tables). `interp` is the
//! reference interpreter used as the oracle in tests. `compile` is the entry point that runs the
//! whole path for one config and run size. The compiler knows nothing of any runtime.

pub mod autodiff;
pub mod compile;
pub mod decode;
pub mod finetune;
pub mod interp;
pub mod ir;
pub mod kernel;
pub mod passes;
pub mod pipeline;
pub mod plan;
pub mod program;
pub mod sema;
pub mod train;
