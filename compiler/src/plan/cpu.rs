//! The training step as the CPU runtime compiles it, and the rule for when `kiln plan` reports that
//! program's arena (what the runtime allocates, byte for byte) instead of the analytic estimate.
//!
//! The runtime (`runtime::session`, then `CpuBackend::from_graph`) instantiates the config with
//! its objective and dropout on, runs [`prepare`] (each `sdpa` composition becomes one `attention`
//! node; softmax maxima get a stop-gradient) and [`compile_step`] (`train::training_step`, then
//! the pass pipeline with default options), binds the run dims, fuses the graph into a `Program`
//! and allocates the arena `plan::arena::plan_program` plans for it. [`training_program`] does
//! the same in one call; `runtime/tests/exec_arena_plan.rs` checks that both paths allocate the
//! same bytes for every tiny config.
//!
//! When the runtime arena is reported ([`uses_runtime_arena`]): one device (no data, tensor or
//! pipeline parallelism) of the `cpu` preset, declared precision (f32, what the runtime runs), no
//! recomputation and fused accounting (the runtime neither recomputes nor runs op by op), and a
//! step small enough to compile at full depth quickly: at most [`MAX_LAYERS`] layers and at most
//! [`MAX_WORK`] multiply-adds per step (the tiny and character-level configs, GPT-2 small, T5
//! small and base at their context; the larger published configs keep the analytic
//! two-layer estimate, which plans a 175B model in milliseconds). A step that does not compile
//! for the runtime (a dtype it does not run) keeps the estimate too. The optimizer is
//! `kiln train`'s default ([`train_defaults`]); the report's `memory_source` says which applies.

use crate::ir::{Bindings, Graph, IrError};
use crate::passes::attention::{recognize, stop_shift_gradients};
use crate::passes::fusion::fuse;
use crate::pipeline::{optimize, PipelineOptions};
use crate::program::Program;
use crate::sema::{Request, SemaDiagnostic, Value, Workspace};
use crate::train::{training_step, DecayRule, Optimizer, StepOptions};

use super::analysis::{Precision, Setup};
use crate::sema::plancheck::RecomputePolicy;

/// Most layers (all `repeat`s together) a step may have for `kiln plan` to compile it at full
/// depth: compiling and fusing costs about 10 ms per layer in an optimised build.
pub const MAX_LAYERS: u64 = 24;
/// Most multiply-adds (the analysis's work estimate, scaled to every layer) a step may take for
/// `kiln plan` to compile it at full depth: bounds the tables fusion evaluates at compile time
/// (some grow with the square of the sequence), and keeps the rule to steps a CPU can train.
pub const MAX_WORK: f64 = 2e12;

/// Recognises attention and stops gradients through softmax maxima: what every forward graph
/// the runtime differentiates or runs goes through first.
pub fn prepare(mut forward: Graph) -> Result<Graph, IrError> {
    recognize(&mut forward)?;
    stop_shift_gradients(&mut forward)?;
    Ok(forward)
}

/// The training step of a prepared forward graph with a `loss` output, through the pass pipeline.
pub fn compile_step(forward: &Graph, opts: &StepOptions) -> Result<Graph, IrError> {
    let step = training_step(forward, opts)?;
    optimize(step, &PipelineOptions::default()).map_err(|e| IrError::BadAttribute {
        op: "pass pipeline".into(),
        input: None,
        detail: e.to_string(),
    })
}

/// The optimizer settings of a run config that gives none (`runtime::config`): AdamW with
/// β = (0.9, 0.95), ε = 1e-8, weight decay 0.1 on every parameter of two or more dimensions
/// (embeddings included), and the global gradient norm clipped at 1.0.
pub fn train_defaults() -> StepOptions {
    StepOptions {
        optimizer: Optimizer::AdamW {
            beta1: 0.9,
            beta2: 0.95,
            eps: 1e-8,
            weight_decay: 0.1,
        },
        decay: DecayRule { embeddings: true },
        clip: Some(1.0),
    }
}

/// The fused training program of `config` with `objective` at `batch` sequences of `seq` tokens
/// (`seq` also binds an encoder-decoder's `src` and `tgt`), as the CPU runtime builds it.
pub fn training_program(
    ws: &Workspace,
    config: &str,
    overrides: &[(String, Value)],
    objective: &str,
    batch: u64,
    seq: u64,
    opts: &StepOptions,
) -> Result<Program, Vec<SemaDiagnostic>> {
    let inst = ws.instantiate(&Request {
        config: config.to_string(),
        overrides: overrides.to_vec(),
        objective: Some((objective.to_string(), Vec::new())),
        training: true,
    })?;
    let internal = |what: &str, e: String| {
        vec![super::analysis::plain_diag(
            "plan::runtime_program",
            format!("cannot build the CPU runtime's {what} of `{config}`: {e}"),
            None,
        )]
    };
    let fwd = prepare(inst.graph).map_err(|e| internal("forward graph", e.to_string()))?;
    let step = compile_step(&fwd, opts).map_err(|e| internal("training step", e.to_string()))?;
    let mut b = Bindings::new();
    b.insert("batch", batch as i64);
    for s in ["seq", "src", "tgt"] {
        b.insert(s, seq as i64);
    }
    let bound = step
        .bind(&b)
        .map_err(|e| internal("bound step", e.to_string()))?;
    fuse(&bound).map_err(|e| internal("program", e.to_string()))
}

/// Whether `kiln plan` reports the CPU runtime's arena for `s` (see the module doc); `layers` is
/// the full layer count and `work` the full-depth step's multiply-adds.
pub fn uses_runtime_arena(s: &Setup, layers: u64, work: f64) -> bool {
    let p = &s.plan;
    p.data == 1
        && p.tensor == 1
        && p.pipeline == 1
        && s.device.name == "cpu"
        && s.precision == Precision::Declared
        && p.recompute == RecomputePolicy::None
        && s.fused
        && layers <= MAX_LAYERS
        && work <= MAX_WORK
}
