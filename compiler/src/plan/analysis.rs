//! The whole planning pipeline for one config and one parallel layout, and the report `kiln plan`
//! prints: per-device memory by category, FLOPs, communication, recompute overhead, step time, MFU.
//!
//! Order (each step's output is kept in `Analysis` for `kiln explain` and the printed plan):
//! 1. instantiate the config with its objective (a training step: dropout on), keep only the loss
//!    output, and append backward and optimizer (`train::training_step`);
//! 2. bind `batch` to the micro-batch and the sequence symbols to the sequence length;
//! 3. shard over the tensor group (`shard`) to get each rank's bytes and FLOPs of every value;
//! 4. choose what to keep and what to recompute (`recompute`), rewrite the graph, shard it again
//!    (recompute ops repeat their collectives);
//! 5. schedule it with each collective's output as an extra buffer, and plan the arena (`memory`);
//! 6. tally bytes, FLOPs, communication and roofline time per layer, extrapolate to all layers,
//!    and apply data parallelism (ZeRO) and pipeline parallelism (1F1B) arithmetically;
//! 7. for a small step on one `cpu` device in f32 without recomputation (the rule is in
//!    `plan::cpu`), compile the fused program the CPU runtime runs at full depth and report its
//!    arena (`plan::arena`) as the per-device memory instead of the estimate: then the number
//!    `kiln plan` prints is the byte count the runtime allocates (`memory_source`).
//!
//! Models with more than two layers per `repeat` are built with two (the first of each kind, e.g.
//! GPT-3's dense and banded layers) and every per-layer quantity is scaled to the real count:
//! layers of one `repeat` are identical in shapes, so additive quantities are exact, and the
//! transient workspace of one layer's backward does not depend on the layer count. A 175B model
//! therefore plans in milliseconds, not by materialising 96 layers.
//!
//! What is counted:
//! - per-device bytes of a value are its elements on one rank (split axes rounded up) times the
//!   element size of the accounting precision: declared dtypes, or for mixed precision (`bf16`)
//!   2 bytes per float activation/weight/gradient and 1 per bool (dropout masks), with optimizer
//!   state in f32 plus an f32 master copy of every weight (12 bytes per parameter for AdamW, as in
//!   ZeRO's accounting);
//! - `activations` are the forward values kept for backward (the recompute plan's kept set) of
//!   every micro-batch in flight (1F1B: `min(pipeline, micro-batches)` on the first stage);
//! - `workspace` is the largest sum of transient buffers alive at once in one micro-batch's
//!   schedule (backward temporaries, gathered copies, new state before it is committed);
//! - parameters, gradients and optimizer state are those of the most loaded stage, split by the
//!   tensor layout and by ZeRO over the data group (stage 1: optimizer state, 2: + gradients,
//!   3: + parameters);
//! - FLOPs follow `ir::ops::flops` (matmuls 2mnk, elementwise 1 per element); `flops_per_step`
//!   is forward + backward for the global batch, `recompute_flops_per_step` the extra recompute;
//! - communication is bytes each device sends per step: ring collectives in the tensor group
//!   (`2(t-1)/t` of the tensor for an all-reduce, `(t-1)/t` for all-gather/reduce-scatter), the
//!   gradient all-reduce (or reduce-scatter + all-gather) over the data group, parameter
//!   all-gathers under ZeRO-3, and pipeline sends of boundary activations and their gradients;
//! - time is a roofline per op (`max(FLOPs / peak, bytes / bandwidth)`, matmuls at the device's
//!   GEMM efficiency; with fused accounting a chain of elementwise/layout/reduction ops counts the
//!   bytes of one kernel: what it loads from non-fusible producers and what it must store), plus
//!   communication at link bandwidth, not overlapped (tensor group inside a node, data and
//!   pipeline groups across nodes), `(m + p - 1)` micro-batch slots for 1F1B, then the gradient
//!   sync and the optimizer step; MFU is forward + backward FLOPs over time × devices × peak.

use std::collections::{BTreeMap, HashMap, HashSet};

use kiln_grammar::ast::{self, ExprKind, Item, Stmt};
use miette::Severity;

use super::arena::{plan_program, ProgramArena};
use super::cpu;
use super::device::{self, Device};
use super::memory::{plan_memory, Category, MemoryInput, MemoryPlan};
use super::recompute::{apply, is_cheap, plan_recompute, RecomputePlan, Rewritten};
use super::roles::{Phase, Roles};
use super::schedule::{BufKey, Schedule, Step};
use super::shard::{self, seq_axes, ShardInput, Sharding};
use super::stages;
use crate::ir::ops::flops as op_flops;
use crate::ir::{Bindings, DType, Graph, Op, ValueId};
use crate::sema::diag::Label;
use crate::sema::plancheck::{self, ParallelPlan, RecomputePolicy};
use crate::sema::{Loc, Request, SemaDiagnostic, Value, Workspace};
use crate::train::{training_step, Optimizer, StepOptions};

/// How bytes are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precision {
    /// Every value at its declared dtype (what the CPU runtime allocates).
    Declared,
    /// Mixed precision: floats at this 16-bit dtype, optimizer state and master weights in f32.
    Mixed(DType),
}

impl Precision {
    pub fn name(self) -> String {
        match self {
            Precision::Declared => "declared".into(),
            Precision::Mixed(d) => format!("mixed {d}"),
        }
    }
}

/// What to plan.
#[derive(Clone, Debug)]
pub struct Setup {
    pub config: String,
    pub overrides: Vec<(String, Value)>,
    /// The layout (a named plan or one made from the command line).
    pub plan: ParallelPlan,
    /// Sequences per micro-batch on one data-parallel rank.
    pub microbatch: u64,
    /// Sequences per step, all ranks together.
    pub global_batch: u64,
    pub seq: u64,
    pub device: Device,
    pub precision: Precision,
    /// Count kept activations as fused kernels do (see `recompute`).
    pub fused: bool,
    pub step: StepOptions,
    /// Build two layers per `repeat` and scale (see the module doc); off builds every layer.
    pub reduce_layers: bool,
    pub alignment: u64,
}

impl Setup {
    pub fn micro_batches(&self) -> u64 {
        (self.global_batch / (self.plan.data.max(1) * self.microbatch.max(1))).max(1)
    }
    pub fn devices(&self) -> u64 {
        self.plan.data.max(1) * self.plan.tensor.max(1) * self.plan.pipeline.max(1)
    }
}

/// Command-line choices that make a `Setup`.
#[derive(Clone, Debug, Default)]
pub struct PlanOptions {
    pub model: Option<String>,
    pub plan: Option<String>,
    pub overrides: Vec<(String, Value)>,
    pub batch: Option<u64>,
    pub seq: Option<u64>,
    pub device: Option<String>,
    pub precision: Option<DType>,
    pub recompute: Option<RecomputePolicy>,
    /// Count every kept value, as an unfused op-by-op runtime does.
    pub unfused: bool,
    pub tensor: Option<u64>,
    pub data: Option<u64>,
    pub pipeline: Option<u64>,
    pub sequence: Option<bool>,
    pub zero: Option<u64>,
    pub microbatch: Option<u64>,
}

/// Per-device numbers, the shape of `kiln plan --json`.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct PlanReport {
    pub config: String,
    pub model: String,
    pub plan: Option<String>,
    pub device: String,
    pub precision: String,
    pub recompute: String,
    pub fused_accounting: bool,
    pub data: u64,
    pub tensor: u64,
    pub pipeline: u64,
    pub sequence_parallel: bool,
    pub zero: u64,
    pub devices: u64,
    pub microbatch: u64,
    pub micro_batches: u64,
    pub global_batch: u64,
    pub seq: u64,
    pub layers: u64,
    pub params: u64,
    pub per_device_bytes: PerDeviceBytes,
    pub device_memory_bytes: u64,
    pub fits: bool,
    /// Kept activations of one layer, one micro-batch, one device.
    pub activation_bytes_per_layer: u64,
    pub flops_per_step: f64,
    pub recompute_flops_per_step: f64,
    /// Recompute FLOPs over forward + backward FLOPs.
    pub recompute_overhead: f64,
    pub comm_bytes_per_step: u64,
    pub comm_bytes_by_group: CommBytes,
    pub step_time_s: f64,
    pub mfu: f64,
    pub tokens_per_s: f64,
    pub pipeline_bubble: f64,
    /// Exact arena of the built graph (one micro-batch, one tensor-parallel rank); with
    /// `memory_source` `cpu_runtime_arena`, the bytes the CPU runtime allocates.
    pub arena_bytes: u64,
    pub built_layers: u64,
    /// Where `per_device_bytes` comes from.
    pub memory_source: MemorySource,
}

/// Where a report's memory figures come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MemorySource {
    /// The planners' estimate: a two-layer build scaled to every layer, with sharding,
    /// recomputation, ZeRO and pipeline stages applied arithmetically.
    Analytic,
    /// The arena of the fused program the CPU runtime allocates for this step, byte for byte
    /// (`plan::cpu`); `total` includes the arena's fragmentation under `workspace`.
    CpuRuntimeArena,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct PerDeviceBytes {
    pub params: u64,
    pub grads: u64,
    pub optimizer: u64,
    pub activations: u64,
    pub workspace: u64,
    pub total: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct CommBytes {
    pub tensor: u64,
    pub data: u64,
    pub pipeline: u64,
}

/// Everything the pipeline produced.
pub struct Analysis {
    pub setup: Setup,
    pub model: String,
    /// The step graph after binding (before recompute).
    pub graph: Graph,
    pub roles: Roles,
    pub recompute: RecomputePlan,
    pub rewritten: Rewritten,
    /// Roles of the rewritten graph.
    pub roles2: Roles,
    pub sharding: Sharding,
    pub schedule: Schedule,
    pub memory_input: MemoryInput,
    pub memory: MemoryPlan,
    /// `repeat` label → (built, real) layer counts.
    pub repeats: BTreeMap<String, (u64, u64)>,
    /// Values outside the layers that come before them (`pre_layers`).
    pub pre: HashSet<ValueId>,
    pub report: PlanReport,
    /// The arena of the fused program the CPU runtime runs, when the report gives it (see
    /// `plan::cpu`).
    pub runtime_arena: Option<ProgramArena>,
}

pub(super) fn plain_diag(
    code: &'static str,
    message: String,
    help: Option<String>,
) -> SemaDiagnostic {
    SemaDiagnostic {
        code,
        message,
        severity: Severity::Error,
        file_name: String::new(),
        source: std::sync::Arc::from(""),
        labels: Vec::new(),
        help,
        related: Vec::new(),
    }
}

fn at_plan(
    ws: &Workspace,
    plan: &ParallelPlan,
    key: Option<&str>,
    code: &'static str,
    message: String,
    help: Option<String>,
) -> SemaDiagnostic {
    let loc = key
        .and_then(|k| {
            plan.entry_locs
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, l)| *l)
        })
        .or(plan.loc);
    match loc {
        Some(l) => {
            let mut d = ws.simple_diag(code, l, message);
            d.help = help;
            d
        }
        None => plain_diag(code, message, help),
    }
}

/// The model definition behind a config name (following base configs).
fn model_def<'w>(ws: &'w Workspace, config: &str) -> Option<&'w ast::BlockDef> {
    let mut cur = config.to_string();
    for _ in 0..1000 {
        match ws.item(ws.lookup_item(&cur)?) {
            Item::Config(c) => cur = c.base.name.clone(),
            Item::Block(b) if b.kind == ast::BlockKind::Model => return Some(b),
            _ => return None,
        }
    }
    None
}

fn int_of(v: &Value) -> Option<i64> {
    match v {
        Value::Int(d) => d.as_const(),
        _ => None,
    }
}

/// Top-level `repeat COUNT as LABEL` statements of a model whose count is one hyperparameter:
/// (label, hyperparameter). `None` when some repeat is not of that form.
fn repeats_of(def: &ast::BlockDef) -> Option<Vec<(String, String)>> {
    fn walk(stmts: &[Stmt], out: &mut Vec<(String, String)>) -> bool {
        for s in stmts {
            match s {
                Stmt::Repeat {
                    count, label, body, ..
                } => {
                    let (ExprKind::Name(hp), Some(l)) = (&count.kind, label) else {
                        return false;
                    };
                    out.push((l.name.clone(), hp.name.clone()));
                    let mut inner = Vec::new();
                    if !walk(body, &mut inner) || !inner.is_empty() {
                        return false;
                    }
                }
                Stmt::If {
                    then_body,
                    else_body,
                    ..
                } if !walk(then_body, out) || !else_body.as_ref().is_none_or(|e| walk(e, out)) => {
                    return false;
                }
                _ => {}
            }
        }
        true
    }
    let mut out = Vec::new();
    walk(&def.body, &mut out).then_some(out)
}

/// Makes a `Setup` from the command line and, if named, a plan item.
pub fn setup(ws: &Workspace, o: &PlanOptions) -> Result<Setup, Vec<SemaDiagnostic>> {
    let mut plan = match &o.plan {
        Some(name) => {
            let found = ws
                .lookup_item(name)
                .filter(|at| matches!(ws.item(*at), Item::Plan(_)));
            let Some(at) = found else {
                let plans: Vec<String> = ws
                    .item_names()
                    .filter(|n| {
                        ws.lookup_item(n)
                            .is_some_and(|at| matches!(ws.item(at), Item::Plan(_)))
                    })
                    .map(|s| s.to_string())
                    .collect();
                let help =
                    match crate::sema::diag::did_you_mean(name, plans.iter().map(|s| s.as_str())) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None if plans.is_empty() => "this spec has no plans".into(),
                        None => format!("plans: {}", plans.join(", ")),
                    };
                return Err(vec![plain_diag(
                    "plan::unknown_plan",
                    format!("unknown plan `{name}`"),
                    Some(help),
                )]);
            };
            let Item::Plan(p) = ws.item(at) else {
                unreachable!("filtered to plans")
            };
            plancheck::read_plan(ws, at.0, p)?
        }
        None => ParallelPlan {
            name: String::new(),
            target: o.model.clone().unwrap_or_default(),
            data: 1,
            tensor: 1,
            pipeline: 1,
            sequence: false,
            zero: 0,
            microbatch: 1,
            batch: None,
            seq: None,
            recompute: RecomputePolicy::None,
            device: None,
            precision: None,
            loc: None,
            entry_locs: Vec::new(),
        },
    };
    let named = o.plan.is_some();
    let config = match (&o.model, named) {
        (Some(m), true) if *m != plan.target => {
            return Err(vec![at_plan(
                ws,
                &plan,
                None,
                "plan::wrong_model",
                format!("plan `{}` is for `{}`, not `{m}`", plan.name, plan.target),
                Some("leave out --model, or pick a plan for that config".into()),
            )])
        }
        (Some(m), _) => m.clone(),
        (None, true) => plan.target.clone(),
        (None, false) => {
            return Err(vec![plain_diag(
                "plan::no_model",
                "name a config with --model (or a plan with --plan)".into(),
                None,
            )])
        }
    };
    for (slot, v) in [
        (&mut plan.tensor, o.tensor),
        (&mut plan.data, o.data),
        (&mut plan.pipeline, o.pipeline),
        (&mut plan.zero, o.zero),
    ] {
        if let Some(v) = v {
            *slot = v;
        }
    }
    if let Some(s) = o.sequence {
        plan.sequence = s;
    }
    if let Some(r) = &o.recompute {
        plan.recompute = r.clone();
    }
    for (k, v) in [
        ("tensor", plan.tensor),
        ("data", plan.data),
        ("pipeline", plan.pipeline),
    ] {
        if v == 0 {
            return Err(vec![plain_diag(
                "plan::degree",
                format!("`{k}` must be at least 1"),
                None,
            )]);
        }
    }
    if plan.zero > 3 {
        return Err(vec![plain_diag(
            "plan::zero",
            format!("ZeRO has stages 0 to 3, found {}", plan.zero),
            None,
        )]);
    }
    let microbatch_set =
        o.microbatch.is_some() || plan.entry_locs.iter().any(|(k, _)| k == "microbatch");
    if let Some(m) = o.microbatch {
        plan.microbatch = m.max(1);
    }
    let global_batch = o
        .batch
        .or(plan.batch)
        .unwrap_or(plan.data * plan.microbatch);
    let microbatch = if microbatch_set || plan.pipeline > 1 {
        plan.microbatch
    } else {
        (global_batch / plan.data).max(1)
    };
    if global_batch == 0 || !global_batch.is_multiple_of(plan.data * microbatch) {
        return Err(vec![at_plan(
            ws,
            &plan,
            Some("batch"),
            "plan::not_divisible",
            format!(
                "batch ({global_batch}) is not divisible by data × microbatch ({} × {microbatch})",
                plan.data
            ),
            Some("every data-parallel rank takes whole micro-batches".into()),
        )]);
    }
    let hparams = ws.config_hparams(&config, None).map_err(|d| vec![d])?;
    let ctx = hparams
        .iter()
        .find(|(k, _)| k == "ctx")
        .and_then(|(_, v)| int_of(v))
        .map(|c| c as u64);
    let seq = o.seq.or(plan.seq).or(ctx).unwrap_or(512);
    if seq == 0 {
        return Err(vec![plain_diag(
            "plan::seq",
            "the sequence length must be at least 1".into(),
            None,
        )]);
    }
    // Degrees given on the command line get the checks a plan item gets in sema.
    let hp = |k: &str| {
        hparams
            .iter()
            .find(|(n, _)| n == k)
            .and_then(|(_, v)| int_of(v))
    };
    for (key, what, value, degree) in [
        ("tensor", "heads", hp("heads"), plan.tensor),
        ("pipeline", "layers", hp("layers"), plan.pipeline),
    ] {
        if let Some(v) = value {
            if degree > 1 && v % degree as i64 != 0 {
                return Err(vec![at_plan(
                    ws,
                    &plan,
                    Some(key),
                    "plan::not_divisible",
                    format!("{what} ({v}) is not divisible by the {key} degree ({degree})"),
                    Some(format!("`{config}` has {what} = {v}")),
                )]);
            }
        }
    }
    let device_name = o
        .device
        .clone()
        .or(plan.device.clone())
        .unwrap_or_else(|| "cpu".into());
    let Some(device) = device::preset(&device_name) else {
        let names = device::preset_names();
        let msg = format!("unknown device `{device_name}`");
        let help = Some(format!("devices: {}", names.join(", ")));
        return Err(vec![if o.device.is_some() {
            plain_diag("plan::unknown_device", msg, help)
        } else {
            at_plan(ws, &plan, Some("device"), "plan::unknown_device", msg, help)
        }]);
    };
    let precision = match o.precision.or(plan.precision) {
        Some(d @ (DType::BF16 | DType::F16)) => Precision::Mixed(d),
        _ => Precision::Declared,
    };
    Ok(Setup {
        config,
        overrides: o.overrides.clone(),
        plan,
        microbatch,
        global_batch,
        seq,
        device,
        precision,
        fused: !o.unfused,
        step: StepOptions::default(),
        reduce_layers: true,
        alignment: 64,
    })
}

/// Which part of the model a value belongs to, for tallies.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Bucket {
    Layer(usize),
    /// Before the layers (embeddings) and its backward.
    Pre,
    /// After the layers (final norm, head, loss) and its backward.
    Post,
}

/// Additive quantities of one bucket, for one micro-batch on one device.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    kept: u64,
    fwd_flops: u64,
    bwd_flops: u64,
    recompute_flops: u64,
    opt_flops: u64,
    /// Unsharded forward + backward FLOPs (the model FLOPs of one micro-batch).
    model_flops: u64,
    tp_wire: u64,
    /// Roofline seconds of compute, and of tensor-group communication.
    time: f64,
    comm_time: f64,
    /// Trainable parameters (unsharded count) and their per-device element count.
    params: u64,
    local_params: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally, w: f64) {
        // Saturating: `check_sizes` keeps real plans far from u64's range; this keeps absurd
        // ones from panicking.
        let s = |x: u64| (x as f64 * w).round() as u64;
        self.kept = self.kept.saturating_add(s(o.kept));
        self.fwd_flops = self.fwd_flops.saturating_add(s(o.fwd_flops));
        self.bwd_flops = self.bwd_flops.saturating_add(s(o.bwd_flops));
        self.recompute_flops = self.recompute_flops.saturating_add(s(o.recompute_flops));
        self.opt_flops = self.opt_flops.saturating_add(s(o.opt_flops));
        self.model_flops = self.model_flops.saturating_add(s(o.model_flops));
        self.tp_wire = self.tp_wire.saturating_add(s(o.tp_wire));
        self.time += o.time * w;
        self.comm_time += o.comm_time * w;
        self.params = self.params.saturating_add(s(o.params));
        self.local_params = self.local_params.saturating_add(s(o.local_params));
    }
}

fn numel(d: &[usize]) -> u64 {
    d.iter().map(|x| *x as u64).product()
}

/// Runs the pipeline of the module doc.
pub fn analyze(ws: &Workspace, s: &Setup) -> Result<Analysis, Vec<SemaDiagnostic>> {
    let internal = |e: String| vec![plain_diag("plan::internal", e, None)];
    let Some(def) = model_def(ws, &s.config) else {
        // Let instantiate report the unknown config with its suggestions.
        return Err(ws
            .instantiate(&Request {
                config: s.config.clone(),
                ..Default::default()
            })
            .err()
            .unwrap_or_default());
    };
    check_plan_numbers(s)?;
    let mut hparams = ws.config_hparams(&s.config, None).map_err(|d| vec![d])?;
    for (k, v) in &s.overrides {
        hparams.retain(|(n, _)| n != k);
        hparams.push((k.clone(), v.clone()));
    }
    // Layer counts, and the overrides for a two-layer build.
    let mut repeats: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut overrides = s.overrides.clone();
    if let Some(reps) = repeats_of(def) {
        let mut reduce = Vec::new();
        for (label, hp) in &reps {
            let full = hparams
                .iter()
                .find(|(k, _)| k == hp)
                .and_then(|(_, v)| int_of(v))
                .unwrap_or(0)
                .max(0) as u64;
            if full > MAX_PLAN_DEGREE {
                return Err(too_large(&s.config, format!("`{hp}` is {full}")));
            }
            let built = if s.reduce_layers { full.min(2) } else { full };
            repeats.insert(label.clone(), (built, full));
            if built != full {
                reduce.push((hp.clone(), built));
            }
        }
        for (hp, n) in reduce {
            overrides.retain(|(k, _)| *k != hp);
            overrides.push((hp, Value::Int(crate::ir::Dim::c(n as i64))));
        }
    }
    let inputs = def
        .body
        .iter()
        .filter(|st| matches!(st, Stmt::Input { .. }))
        .count();
    let objective = if inputs >= 2 { "seq2seq" } else { "causal_lm" };
    let inst = ws.instantiate(&Request {
        config: s.config.clone(),
        overrides,
        objective: Some((objective.to_string(), vec![])),
        training: true,
    })?;
    let mut fwd = inst.graph;
    let loss = fwd
        .output("loss")
        .ok_or_else(|| internal("the objective produced no loss".into()))?;
    // The step needs the loss only; keeping the logits as an output would hold them to the end.
    fwd.clear_outputs();
    fwd.add_output("loss", loss)
        .map_err(|e| internal(e.to_string()))?;
    let step = training_step(&fwd, &s.step).map_err(|e| {
        vec![plain_diag(
            "plan::training_step",
            format!("cannot build the training step of `{}`: {e}", s.config),
            Some("the planners plan a whole training step (forward, backward, optimizer)".into()),
        )]
    })?;
    // Bind the run dims.
    let mut syms: Vec<String> = Vec::new();
    for v in step.values() {
        for d in step.shape(v) {
            for x in d.symbols() {
                if !syms.contains(&x.as_str().to_string()) {
                    syms.push(x.as_str().to_string());
                }
            }
        }
        if let Op::DimConst { dim, .. } = step.node(v).op() {
            for x in dim.symbols() {
                if !syms.contains(&x.as_str().to_string()) {
                    syms.push(x.as_str().to_string());
                }
            }
        }
    }
    let mut b = Bindings::new();
    for x in &syms {
        match x.as_str() {
            "batch" => b.insert(x, s.microbatch as i64),
            "seq" | "src" | "tgt" => b.insert(x, s.seq as i64),
            other => {
                return Err(vec![plain_diag(
                    "plan::unbound_dim",
                    format!("the step has a run dim `{other}` that kiln plan cannot size"),
                    None,
                )])
            }
        }
    }
    let g = step.bind(&b).map_err(|e| internal(e.to_string()))?;
    let layer_scale = repeats
        .values()
        .map(|(built, full)| *full as f64 / (*built).max(1) as f64)
        .fold(1.0, f64::max);
    let work = check_sizes(&g, &s.config, layer_scale)?;
    let roles = Roles::new(&g).map_err(|e| internal(e.to_string()))?;
    let mut seq_axis = seq_axes(&step);
    let prec = s.precision;
    // New parameter values are committed as 16-bit weights (their f32 master copy is counted
    // with the optimizer state).
    let new_params: HashSet<ValueId> = g
        .updates()
        .iter()
        .filter(|u| {
            g.find_param(&u.target)
                .is_some_and(|p| roles.phase(p) == Phase::Param)
        })
        .map(|u| u.value)
        .collect();
    let elem = |g: &Graph, roles: &Roles, v: ValueId| -> u64 {
        let dt = g.dtype(v);
        match prec {
            Precision::Mixed(d) if dt.is_float() && new_params.contains(&v) => {
                d.size_bytes() as u64
            }
            // The optimizer computes in f32, on f32 state and master weights.
            Precision::Mixed(d)
                if dt.is_float()
                    && !matches!(roles.phase(v), Phase::OptState | Phase::Optimizer) =>
            {
                d.size_bytes() as u64
            }
            _ => dt.size_bytes() as u64,
        }
    };
    // 3. Shard the plain step for per-device sizes.
    let e1 = |v: ValueId| elem(&g, &roles, v);
    let sh1 = shard::shard(
        &ShardInput {
            graph: &g,
            roles: &roles,
            seq_axis: &seq_axis,
            elem_bytes: &e1,
            order: &roles.order,
        },
        s.plan.tensor,
        s.plan.sequence,
    );
    let mut bytes: HashMap<ValueId, u64> = HashMap::new();
    let mut flops: HashMap<ValueId, u64> = HashMap::new();
    for v in &roles.order {
        bytes.insert(*v, kept_size(&sh1, *v, e1(*v)));
        flops.insert(*v, local_flops(&g, &sh1, *v));
    }
    // 4. Recompute. A byte budget is per device for all layers in flight; the built graph holds
    // fewer layers and one micro-batch, so it gets the matching share.
    let layers_full: u64 = repeats.values().map(|(_, f)| *f).sum();
    let layers_built: u64 = repeats.values().map(|(b, _)| *b).sum();
    let in_flight = stages::in_flight(&stages::one_f_one_b(
        s.plan.pipeline.max(1),
        0,
        s.micro_batches(),
    ))
    .max(1);
    let budget = match &s.plan.recompute {
        RecomputePolicy::Budget(bb) if layers_full > 0 => {
            let per_stage_layers = (layers_full as f64 / s.plan.pipeline as f64).max(1.0);
            Some(
                (*bb as f64 * layers_built.max(1) as f64 / (per_stage_layers * in_flight as f64))
                    as u64,
            )
        }
        _ => None,
    };
    let rplan = plan_recompute(
        &g,
        &roles,
        &bytes,
        &flops,
        &s.plan.recompute,
        s.fused,
        budget,
    );
    let rw = apply(&g, &roles, &rplan);
    let g2 = &rw.graph;
    let roles2 = Roles::new(g2).map_err(|e| internal(e.to_string()))?;
    for (o, c) in &rw.clones {
        if let Some(a) = seq_axis.get(o).copied() {
            seq_axis.insert(*c, a);
        }
    }
    let e2 = |v: ValueId| elem(g2, &roles2, v);
    let sh = shard::shard(
        &ShardInput {
            graph: g2,
            roles: &roles2,
            seq_axis: &seq_axis,
            elem_bytes: &e2,
            order: &rw.order,
        },
        s.plan.tensor,
        s.plan.sequence,
    );
    // 5. Schedule and arena.
    let (schedule, minput) = sharded_schedule(g2, &roles2, &sh, &rw.order, &e2, s.alignment);
    let memory = plan_memory(&schedule, &minput);
    // 6. Tallies.
    let mut report = tally_and_report(
        ws,
        s,
        &inst.model,
        &g,
        &roles,
        g2,
        &roles2,
        &rw,
        &rplan,
        &sh,
        &schedule,
        &memory,
        &repeats,
        &e2,
    )?;
    // 7. A step the CPU runtime runs: its fused program's arena replaces the estimate.
    let layers_full: u64 = if repeats.is_empty() {
        report.layers
    } else {
        repeats.values().map(|(_, f)| *f).sum()
    };
    let runtime_arena = if cpu::uses_runtime_arena(s, layers_full, work * layer_scale) {
        cpu::training_program(
            ws,
            &s.config,
            &s.overrides,
            objective,
            s.microbatch,
            s.seq,
            &cpu::train_defaults(),
        )
        .ok()
        .map(|p| plan_program(&p))
    } else {
        None
    };
    if let Some(a) = &runtime_arena {
        let b = a.bytes;
        report.per_device_bytes = PerDeviceBytes {
            params: b.params,
            grads: b.grads,
            optimizer: b.optimizer,
            activations: b.activations,
            workspace: b.workspace,
            total: a.total(),
        };
        report.fits = a.total() <= s.device.memory_bytes;
        report.arena_bytes = a.total();
        report.built_layers = layers_full;
        report.memory_source = MemorySource::CpuRuntimeArena;
    }
    let pre_set = pre_layers(&rw.graph, &roles2);
    Ok(Analysis {
        setup: s.clone(),
        model: inst.model,
        graph: g,
        roles,
        recompute: rplan,
        rewritten: rw,
        roles2,
        sharding: sh,
        schedule,
        memory_input: minput,
        memory,
        pre: pre_set,
        repeats,
        report,
        runtime_arena,
    })
}

/// Bytes of keeping `v` for backward on one rank. A partial sum is kept as it is after its
/// reduction (what every reader uses), as Megatron keeps a row-parallel layer's reduced output.
fn kept_size(sh: &Sharding, v: ValueId, elem: u64) -> u64 {
    let own = sh.local_numel(v) * elem;
    if !matches!(sh.layout_of(v), shard::Layout::Partial(_)) {
        return own;
    }
    let targets: Vec<&shard::Collective> = sh.collectives.iter().filter(|c| c.value == v).collect();
    match targets.as_slice() {
        [c] => c.local_bytes.min(own),
        _ => own,
    }
}

fn local_flops(g: &Graph, sh: &Sharding, v: ValueId) -> u64 {
    let n = g.node(v);
    let ins: Vec<Vec<usize>> = n
        .inputs()
        .iter()
        .enumerate()
        .map(|(i, u)| {
            // An operand converted for this op has the converted layout's shape.
            match sh.edges.get(&(v, i)) {
                Some(c) => {
                    let col = &sh.collectives[*c];
                    let full: Vec<usize> = g
                        .shape(*u)
                        .iter()
                        .map(|d| d.as_const().unwrap_or(0).max(0) as usize)
                        .collect();
                    let mut d = full;
                    if let shard::Layout::Split(a) = col.to {
                        d[a] = (d[a] as u64).div_ceil(sh.degree) as usize;
                    }
                    d
                }
                None => sh.local_shape.get(u).cloned().unwrap_or_default(),
            }
        })
        .collect();
    let refs: Vec<&[usize]> = ins.iter().map(|x| x.as_slice()).collect();
    let out = sh.local_shape.get(&v).cloned().unwrap_or_default();
    op_flops(n.op(), &refs, &out)
}

fn full_flops(g: &Graph, v: ValueId) -> u64 {
    let dims = |u: ValueId| -> Vec<usize> {
        g.shape(u)
            .iter()
            .map(|d| d.as_const().unwrap_or(0).max(0) as usize)
            .collect()
    };
    let n = g.node(v);
    let ins: Vec<Vec<usize>> = n.inputs().iter().map(|u| dims(*u)).collect();
    let refs: Vec<&[usize]> = ins.iter().map(|x| x.as_slice()).collect();
    op_flops(n.op(), &refs, &dims(v))
}

/// One step per op, each collective a step of its own (reading the producer, writing an extra
/// buffer) just before its first reader; sizes are per-device.
fn sharded_schedule(
    g: &Graph,
    roles: &Roles,
    sh: &Sharding,
    order: &[ValueId],
    elem: &dyn Fn(ValueId) -> u64,
    alignment: u64,
) -> (Schedule, MemoryInput) {
    let mut base = Schedule::from_ops(g, order);
    let mut sizes: HashMap<BufKey, u64> = HashMap::new();
    for v in order {
        sizes.insert(BufKey::Value(*v), sh.local_numel(*v) * elem(*v));
    }
    let mut steps: Vec<Step> = Vec::with_capacity(base.steps.len() + sh.collectives.len());
    let mut done: HashSet<usize> = HashSet::new();
    for mut st in base.steps.drain(..) {
        if let Some(v) = st.node {
            let mut remap: Vec<(BufKey, BufKey)> = Vec::new();
            for (i, u) in g.node(v).inputs().iter().enumerate() {
                let Some(&c) = sh.edges.get(&(v, i)) else {
                    continue;
                };
                let extra = BufKey::Extra(c as u32);
                if done.insert(c) {
                    sizes.insert(extra, sh.collectives[c].local_bytes);
                    steps.push(Step {
                        reads: vec![BufKey::Value(*u)],
                        writes: vec![extra],
                        ..Default::default()
                    });
                }
                remap.push((BufKey::Value(*u), extra));
            }
            if !remap.is_empty() {
                // An op whose operand is converted reads the converted copy; if another operand
                // position reads the same value unconverted, it reads both.
                let mut reads: Vec<BufKey> = Vec::new();
                for (i, u) in g.node(v).inputs().iter().enumerate() {
                    let k = match sh.edges.get(&(v, i)) {
                        Some(c) => BufKey::Extra(*c as u32),
                        None => BufKey::Value(*u),
                    };
                    if !reads.contains(&k) {
                        reads.push(k);
                    }
                }
                st.reads = reads;
                st.in_place.retain(|(_, r)| st.reads.contains(r));
                st.views.retain(|(_, r)| st.reads.contains(r));
            }
            // Views only where the layout keeps the same bytes.
            if sh.degree > 1 {
                st.views.retain(|(w, r)| sizes.get(w) == sizes.get(r));
            }
        }
        steps.push(st);
    }
    let mut minput = MemoryInput {
        sizes,
        alignment,
        ..Default::default()
    };
    for v in order {
        if roles.phase(*v).is_persistent() {
            minput.preloaded.push(BufKey::Value(*v));
        }
    }
    for u in g.updates() {
        if let Some(h) = g.find_param(&u.target) {
            minput
                .updates
                .push((u.target.clone(), BufKey::Value(h), BufKey::Value(u.value)));
        }
    }
    for o in g.outputs() {
        minput.outputs.push(BufKey::Value(o.value));
    }
    (Schedule { steps }, minput)
}

#[allow(clippy::too_many_arguments)]
fn tally_and_report(
    ws: &Workspace,
    s: &Setup,
    model: &str,
    g: &Graph,
    roles: &Roles,
    g2: &Graph,
    roles2: &Roles,
    rw: &Rewritten,
    rplan: &RecomputePlan,
    sh: &Sharding,
    schedule: &Schedule,
    memory: &MemoryPlan,
    repeats: &BTreeMap<String, (u64, u64)>,
    elem: &dyn Fn(ValueId) -> u64,
) -> Result<PlanReport, Vec<SemaDiagnostic>> {
    let dev = &s.device;
    let t = s.plan.tensor.max(1);
    let (d, p) = (s.plan.data.max(1), s.plan.pipeline.max(1));
    let m = s.micro_batches();
    let compute_dtype = match s.precision {
        Precision::Mixed(dt) => dt,
        Precision::Declared => DType::F32,
    };
    let peak = dev.peak_flops(compute_dtype);
    let tp_bw = if t <= dev.devices_per_node {
        dev.intra_node_bandwidth
    } else {
        dev.inter_node_bandwidth
    };
    // Buckets: layers by name; the rest before or after the layers by dataflow.
    let pre = pre_layers(g2, roles2);
    let bucket = |v: ValueId| -> Bucket {
        match roles2.layer_of(v) {
            Some(i) => Bucket::Layer(i),
            None if pre.contains(&v) => Bucket::Pre,
            None => Bucket::Post,
        }
    };
    // Parameters used on both sides of the layers (tied embeddings) live on both end stages.
    let mut param_buckets: HashMap<ValueId, Vec<Bucket>> = HashMap::new();
    for v in g2.params() {
        let mut bs: Vec<Bucket> = Vec::new();
        if let Some(i) = roles2.layer_of(v) {
            bs.push(Bucket::Layer(i));
        } else {
            for u in roles2.users(v) {
                if roles2.is_forward(*u) {
                    let bu = bucket(*u);
                    if !bs.contains(&bu) {
                        bs.push(bu);
                    }
                }
            }
        }
        if bs.is_empty() {
            bs.push(Bucket::Post);
        }
        param_buckets.insert(v, bs);
    }
    let outputs: HashSet<ValueId> = g2.outputs().iter().map(|o| o.value).collect();
    let mut tallies: BTreeMap<Bucket, Tally> = BTreeMap::new();
    let local_bytes = |v: ValueId| sh.local_numel(v) * elem(v);
    for v in &roles2.order {
        let n = g2.node(*v);
        let ph = roles2.phase(*v);
        if let Op::Param {
            trainable: true, ..
        } = n.op()
        {
            let bs = &param_buckets[v];
            for b in bs {
                let tl = tallies.entry(*b).or_default();
                tl.params += numel(
                    &g2.shape(*v)
                        .iter()
                        .map(|x| x.as_const().unwrap_or(0) as usize)
                        .collect::<Vec<_>>(),
                );
                tl.local_params += sh.local_numel(*v);
            }
            continue;
        }
        if ph.is_persistent() {
            continue;
        }
        let tl = tallies.entry(bucket(*v)).or_default();
        let f = local_flops(g2, sh, *v);
        let is_clone = rw.original.contains_key(v);
        match ph {
            Phase::Forward => {
                tl.fwd_flops += f;
                tl.model_flops += full_flops(g2, *v);
            }
            Phase::Backward if is_clone => tl.recompute_flops += f,
            Phase::Backward => {
                tl.bwd_flops += f;
                tl.model_flops += full_flops(g2, *v);
            }
            Phase::Optimizer => tl.opt_flops += f,
            _ => {}
        }
        if ph != Phase::Optimizer {
            // With fused accounting a chain of elementwise, layout and reduction ops is one
            // kernel: it loads what non-fusible ops (and sources) made and stores what they, the
            // backward pass or the step's end read. Otherwise every op loads and stores.
            let fusible = |u: ValueId| {
                let op = g2.node(u).op();
                s.fused
                    && (is_cheap(op) || matches!(op, Op::ReduceSum { .. } | Op::ReduceMax { .. }))
            };
            let moved: u64 = if fusible(*v) {
                let loads: u64 = n
                    .inputs()
                    .iter()
                    .filter(|u| !fusible(**u))
                    .map(|u| local_bytes(*u))
                    .sum();
                let stored = roles2
                    .users(*v)
                    .iter()
                    .any(|u| !fusible(*u) || roles2.phase(*u) != ph)
                    || outputs.contains(v);
                loads + if stored { local_bytes(*v) } else { 0 }
            } else {
                n.inputs().iter().map(|u| local_bytes(*u)).sum::<u64>() + local_bytes(*v)
            };
            let is_mm = matches!(n.op(), Op::MatMul { .. });
            let fl = if is_mm {
                f as f64 / (peak * dev.gemm_efficiency)
            } else {
                f as f64 / peak
            };
            tl.time += fl.max(moved as f64 / dev.memory_bandwidth);
        }
    }
    for (v, b) in &rplan.kept {
        // A layer's input belongs to the layer that reads it (as in Korthikanti et al.'s counts).
        let consumer = roles2
            .users(*v)
            .iter()
            .filter(|u| roles2.is_forward(**u))
            .map(|u| bucket(*u))
            .find(|bu| matches!(bu, Bucket::Layer(_)) && *bu != bucket(*v));
        let home = if roles2.is_layer_boundary(*v) {
            consumer.unwrap_or(bucket(*v))
        } else {
            bucket(*v)
        };
        tallies.entry(home).or_default().kept += *b;
    }
    for c in &sh.collectives {
        let Some(r) = c.readers.first() else { continue };
        if roles2.phase(*r) == Phase::Optimizer {
            // Optimizer-side conversions happen once per step; counted with the data group below.
            continue;
        }
        let tl = tallies.entry(bucket(*r)).or_default();
        tl.tp_wire += c.wire_bytes;
        tl.comm_time += c.wire_bytes as f64 / tp_bw;
    }
    // Extrapolate layers: each repeat's built layers stand for its real count.
    let mut layers_total = Tally::default();
    let mut built_layers = 0u64;
    let mut full_layers = 0u64;
    for (i, key) in roles2.layers.iter().enumerate() {
        let group = key.rsplit_once('.').map(|(g, _)| g).unwrap_or(key);
        let (built, full) = repeats.get(group).copied().unwrap_or((1, 1));
        let w = if built == 0 {
            0.0
        } else {
            full as f64 / built as f64
        };
        if let Some(tl) = tallies.get(&Bucket::Layer(i)) {
            layers_total.add(tl, w);
        }
        built_layers += 1;
    }
    for (b, f) in repeats.values() {
        full_layers += if *b == 0 { 0 } else { *f };
    }
    if repeats.is_empty() {
        full_layers = built_layers;
    }
    let pre_t = tallies.get(&Bucket::Pre).copied().unwrap_or_default();
    let post_t = tallies.get(&Bucket::Post).copied().unwrap_or_default();
    let mut whole = Tally::default();
    whole.add(&layers_total, 1.0);
    whole.add(&pre_t, 1.0);
    whole.add(&post_t, 1.0);
    // Stages: the first holds the embeddings, the last the head and loss; layers split evenly.
    let stage_of = |first: bool, last: bool| -> Tally {
        let mut st = Tally::default();
        st.add(&layers_total, 1.0 / p as f64);
        if first {
            st.add(&pre_t, 1.0);
        }
        if last {
            st.add(&post_t, 1.0);
        }
        st
    };
    // Micro-batches whose activations a stage holds at once under 1F1B.
    let flight = |st: u64| stages::in_flight(&stages::one_f_one_b(p, st, m)).max(1);
    let stage_list: Vec<(Tally, u64)> = if p == 1 {
        vec![(stage_of(true, true), 1)]
    } else {
        vec![
            (stage_of(true, false), flight(0)),
            (stage_of(false, true), flight(p - 1)),
        ]
    };
    // The optimizer: per parameter, state in f32 (+ an f32 master copy under mixed precision).
    let (opt_per_param, grad_per_param, param_bytes) = {
        let f32b = 4u64;
        let state = match &s.step.optimizer {
            Optimizer::AdamW { .. } => 2 * f32b,
            Optimizer::Sgd { momentum, .. } => {
                if *momentum != 0.0 {
                    f32b
                } else {
                    0
                }
            }
        };
        match s.precision {
            Precision::Mixed(dt) => (state + f32b, dt.size_bytes() as u64, dt.size_bytes() as u64),
            Precision::Declared => (state, f32b, f32b),
        }
    };
    // Workspace: the most transient bytes alive at once in the built step.
    let kept_set: HashSet<ValueId> = rplan.kept.keys().copied().collect();
    let grad_set: HashSet<ValueId> = roles2.grads.values().copied().collect();
    let category = |k: BufKey| -> Category {
        match k {
            BufKey::Extra(_) | BufKey::Buffer(_) => Category::Workspace,
            BufKey::Value(v) => match roles2.phase(v) {
                Phase::Param => Category::Params,
                Phase::OptState => Category::Optimizer,
                _ if grad_set.contains(&v) => Category::Grads,
                _ if kept_set.contains(&v) => Category::Activations,
                _ => Category::Workspace,
            },
        }
    };
    let curve = memory.breakdown_curve(category);
    let workspace = curve.iter().map(|b| b.workspace).max().unwrap_or(0);
    // Per-device memory of each stage; report the fullest.
    let zero = s.plan.zero;
    let mut best: Option<(PerDeviceBytes, usize)> = None;
    for (i, (st, flight)) in stage_list.iter().enumerate() {
        let params = st.local_params * param_bytes / if zero >= 3 { d } else { 1 };
        let grads = st.local_params * grad_per_param / if zero >= 2 { d } else { 1 };
        let optimizer = st.local_params * opt_per_param / if zero >= 1 { d } else { 1 };
        let activations = st.kept * *flight;
        let total = params + grads + optimizer + activations + workspace;
        let pd = PerDeviceBytes {
            params,
            grads,
            optimizer,
            activations,
            workspace,
            total,
        };
        if best.as_ref().is_none_or(|(b, _)| pd.total > b.total) {
            best = Some((pd, i));
        }
    }
    let (per_device, worst) = best.unwrap_or_default();
    // Communication per device per step.
    let worst_stage = &stage_list[worst].0;
    let tp_comm = worst_stage.tp_wire * m;
    let grad_bytes_local = worst_stage.local_params * grad_per_param;
    let param_bytes_local = worst_stage.local_params * param_bytes;
    let ring = |bytes: u64, n: u64| {
        if n <= 1 {
            0
        } else {
            (2 * (n as u128 - 1) * bytes as u128 / n as u128) as u64
        }
    };
    let mut dp_comm = ring(grad_bytes_local, d);
    if zero >= 3 && d > 1 {
        // Parameters gathered for the forward and again for the backward.
        dp_comm += 2 * ((d as u128 - 1) * param_bytes_local as u128 / d as u128) as u64;
    }
    // Pipeline: boundary activations forward and their gradients backward, per micro-batch.
    let boundary = boundary_bytes(g2, roles2, sh, elem);
    let mut pp_comm = if p > 1 { 2 * m * boundary } else { 0 };
    if p > 1 {
        // Tied parameters are held by the first and last stage; their gradients are summed.
        let tied: u64 = param_buckets
            .iter()
            .filter(|(_, bs)| bs.contains(&Bucket::Pre) && bs.contains(&Bucket::Post))
            .map(|(v, _)| sh.local_numel(*v) * grad_per_param)
            .sum();
        pp_comm += 2 * tied;
    }
    let comm_total = tp_comm + dp_comm + pp_comm;
    // Time.
    let dp_bw = if t * d <= dev.devices_per_node {
        dev.intra_node_bandwidth
    } else {
        dev.inter_node_bandwidth
    };
    let mb_time = stage_list
        .iter()
        .map(|(st, _)| {
            st.time
                + st.comm_time
                + if p > 1 {
                    2.0 * boundary as f64 / dev.inter_node_bandwidth
                } else {
                    0.0
                }
        })
        .fold(0.0, f64::max);
    let slots = m + p - 1;
    let pipeline_time = slots as f64 * mb_time;
    let dp_time = dp_comm as f64 / dp_bw;
    let opt_time = 2.0 * (per_device.params + per_device.grads + per_device.optimizer) as f64
        / dev.memory_bandwidth;
    let step_time = pipeline_time + dp_time + opt_time;
    let micro_total = m * d;
    let flops_per_step = whole.model_flops as f64 * micro_total as f64;
    let recompute_flops_per_step = whole.recompute_flops as f64 * (t as f64) * micro_total as f64;
    let devices = s.devices();
    let mfu = if step_time > 0.0 {
        flops_per_step / (step_time * devices as f64 * peak)
    } else {
        0.0
    };
    let tokens = s.global_batch as f64 * s.seq as f64;
    let per_layer = layers_total.kept.checked_div(full_layers).unwrap_or(0);
    let fwd_bwd_local = whole.fwd_flops + whole.bwd_flops;
    let fits = per_device.total <= dev.memory_bytes;
    let report = PlanReport {
        config: s.config.clone(),
        model: model.to_string(),
        plan: if s.plan.name.is_empty() {
            None
        } else {
            Some(s.plan.name.clone())
        },
        device: dev.name.to_string(),
        precision: s.precision.name(),
        recompute: policy_name(&s.plan.recompute),
        fused_accounting: s.fused,
        data: d,
        tensor: t,
        pipeline: p,
        sequence_parallel: sh.sequence,
        zero,
        devices,
        microbatch: s.microbatch,
        micro_batches: m,
        global_batch: s.global_batch,
        seq: s.seq,
        layers: full_layers,
        params: whole.params,
        per_device_bytes: per_device,
        device_memory_bytes: dev.memory_bytes,
        fits,
        activation_bytes_per_layer: per_layer,
        flops_per_step,
        recompute_flops_per_step,
        recompute_overhead: if fwd_bwd_local > 0 {
            whole.recompute_flops as f64 / fwd_bwd_local as f64
        } else {
            0.0
        },
        comm_bytes_per_step: comm_total,
        comm_bytes_by_group: CommBytes {
            tensor: tp_comm,
            data: dp_comm,
            pipeline: pp_comm,
        },
        step_time_s: step_time,
        mfu,
        tokens_per_s: if step_time > 0.0 {
            tokens / step_time
        } else {
            0.0
        },
        pipeline_bubble: stages::bubble(p, m),
        arena_bytes: memory.arena.total,
        built_layers,
        memory_source: MemorySource::Analytic,
    };
    let _ = (g, roles, schedule, ws);
    Ok(report)
}

/// Values outside the layers that belong before them: forward ancestors of layer values (the
/// embeddings) and backward descendants of layer backward values (the embeddings' gradients).
/// The rest of what lies outside the layers (final norm, head, loss) comes after them.
pub fn pre_layers(g2: &Graph, roles2: &Roles) -> HashSet<ValueId> {
    let layer_vals: Vec<ValueId> = roles2
        .order
        .iter()
        .copied()
        .filter(|v| roles2.layer_of(*v).is_some())
        .collect();
    let mut pre: HashSet<ValueId> = HashSet::new();
    {
        // Forward ancestors of layer values, and non-forward descendants of layer backward values.
        let mut stack: Vec<ValueId> = layer_vals
            .iter()
            .copied()
            .filter(|v| roles2.is_forward(*v))
            .collect();
        let mut seen = HashSet::new();
        while let Some(v) = stack.pop() {
            for u in g2.node(v).inputs() {
                if seen.insert(*u) {
                    if roles2.layer_of(*u).is_none() {
                        pre.insert(*u);
                    }
                    stack.push(*u);
                }
            }
        }
        let mut stack: Vec<ValueId> = layer_vals
            .iter()
            .copied()
            .filter(|v| !roles2.is_forward(*v) && !roles2.phase(*v).is_persistent())
            .collect();
        let mut seen = HashSet::new();
        while let Some(v) = stack.pop() {
            for u in roles2.users(v) {
                if seen.insert(*u) {
                    if roles2.layer_of(*u).is_none() {
                        pre.insert(*u);
                    }
                    stack.push(*u);
                }
            }
        }
    }
    pre
}

/// Bytes one device sends per micro-batch across a pipeline boundary: the largest value made
/// before the layers and read by the first layer (the residual stream entering it).
fn boundary_bytes(g: &Graph, roles: &Roles, sh: &Sharding, elem: &dyn Fn(ValueId) -> u64) -> u64 {
    let mut best = 0;
    for v in &roles.order {
        if !roles.is_forward(*v)
            || roles.layer_of(*v).is_some()
            || matches!(g.node(*v).op(), Op::Param { .. })
        {
            continue;
        }
        if roles
            .users(*v)
            .iter()
            .any(|u| roles.is_forward(*u) && roles.layer_of(*u) == Some(0))
        {
            best = best.max(sh.local_numel(*v) * elem(*v));
        }
    }
    best
}

pub fn policy_name(p: &RecomputePolicy) -> String {
    match p {
        RecomputePolicy::None => "none".into(),
        RecomputePolicy::Full => "full".into(),
        RecomputePolicy::Selective => "selective".into(),
        RecomputePolicy::Keep(k) => format!("keep({})", k.join(", ")),
        RecomputePolicy::Budget(b) => format!("budget({b})"),
    }
}

/// Impossible plans: per-device memory over the device's capacity, or a budget no plan can meet.
/// The diagnostic points at the plan's line and its help gives the breakdown.
pub fn check(ws: &Workspace, a: &Analysis) -> Vec<SemaDiagnostic> {
    let mut out = Vec::new();
    let r = &a.report;
    let pd = &r.per_device_bytes;
    if !r.fits {
        let help = format!(
            "per device: params {} + grads {} + optimizer {} + activations {} + workspace {} = {} (device {}: {}); try more tensor/pipeline parallelism, ZeRO, or recompute",
            gib(pd.params),
            gib(pd.grads),
            gib(pd.optimizer),
            gib(pd.activations),
            gib(pd.workspace),
            gib(pd.total),
            r.device,
            gib(r.device_memory_bytes)
        );
        let msg = format!(
            "`{}` needs {} per device, over the {} of one {}",
            r.config,
            gib(pd.total),
            gib(r.device_memory_bytes),
            r.device
        );
        let mut d = at_plan(
            ws,
            &a.setup.plan,
            None,
            "plan::out_of_memory",
            msg,
            Some(help),
        );
        if let Some(l) = d.labels.first_mut() {
            l.text = "this layout does not fit".into();
        }
        if let Some((_, loc)) = a.setup.plan.entry_locs.iter().find(|(k, _)| k == "device") {
            push_label(&mut d, *loc, "on this device");
        }
        out.push(d);
    }
    if a.recompute.over_budget.is_some() {
        let budget = match &a.setup.plan.recompute {
            RecomputePolicy::Budget(b) => *b,
            _ => 0,
        };
        let msg = format!(
            "no recompute plan keeps activations within {} per device; the fewest it can keep is {}",
            gib(budget),
            gib(a.report.per_device_bytes.activations)
        );
        out.push(at_plan(
            ws,
            &a.setup.plan,
            Some("recompute"),
            "plan::over_budget",
            msg,
            Some("raise the budget or use `full`".into()),
        ));
    }
    out
}

/// Largest tensor (elements) and largest dim the planners accept. Real models are far below
/// (GPT-3 175B's largest activation at batch 2048 × 2048 tokens is about 2^35.5 elements); the
/// bound keeps every FLOP and byte count of the analysis (products of a few of these, summed over
/// the nodes) inside u64.
const MAX_PLAN_ELEMENTS: u64 = 1 << 36;
const MAX_PLAN_DIM: u64 = 1 << 22;
/// Bound on the whole step's work estimate (elements, times the contraction length of matmuls,
/// times the layer scale-up): every count the analysis forms is a small multiple of it.
const MAX_PLAN_WORK: f64 = (1u64 << 56) as f64;
/// Bounds on the plan's own numbers (degrees, batch, layers).
const MAX_PLAN_DEGREE: u64 = 1 << 20;

fn too_large(config: &str, what: String) -> Vec<SemaDiagnostic> {
    vec![plain_diag(
        "plan::too_large",
        format!("`{config}` is too large to plan: {what}"),
        Some(
            "the planners take tensors of at most 2^36 elements, dims of at most 2^22, and \
             degrees, batches and layer counts of at most 2^20"
                .into(),
        ),
    )]
}

/// Refuses plan numbers beyond [`MAX_PLAN_DEGREE`] (their products would overflow the counts).
fn check_plan_numbers(s: &Setup) -> Result<(), Vec<SemaDiagnostic>> {
    let p = &s.plan;
    for (name, x) in [
        ("data", p.data),
        ("tensor", p.tensor),
        ("pipeline", p.pipeline),
        ("microbatch", p.microbatch),
        ("micro-batch size", s.microbatch),
        ("batch", s.global_batch),
        ("seq", s.seq),
        (
            "devices",
            p.data.saturating_mul(p.tensor).saturating_mul(p.pipeline),
        ),
    ] {
        if x > MAX_PLAN_DEGREE {
            return Err(too_large(&s.config, format!("{name} is {x}")));
        }
    }
    Ok(())
}

/// Refuses a bound step with a tensor beyond [`MAX_PLAN_ELEMENTS`], a dim beyond
/// [`MAX_PLAN_DIM`], or total work beyond [`MAX_PLAN_WORK`] once scaled by `layer_scale` (the
/// sizes would overflow the planners' counts). Returns the step's work (multiply-adds, unscaled).
fn check_sizes(g: &Graph, config: &str, layer_scale: f64) -> Result<f64, Vec<SemaDiagnostic>> {
    let mut work = 0.0f64;
    for v in g.values() {
        let numel: f64 = g
            .shape(v)
            .iter()
            .map(|d| d.as_const().unwrap_or(0).max(0) as f64)
            .product();
        let k = match g.node(v).op() {
            Op::MatMul { transpose_a, .. } => {
                let a = g.shape(g.node(v).inputs()[0]);
                let r = a.len();
                let axis = if *transpose_a {
                    r.saturating_sub(2)
                } else {
                    r.saturating_sub(1)
                };
                a.get(axis).and_then(|d| d.as_const()).unwrap_or(1).max(1) as f64
            }
            _ => 1.0,
        };
        work += numel * k;
        let mut n: u64 = 1;
        for d in g.shape(v) {
            let x = d.as_const().unwrap_or(0).max(0) as u64;
            let too_big = x > MAX_PLAN_DIM;
            n = n.saturating_mul(x);
            if too_big || n > MAX_PLAN_ELEMENTS {
                let name = g.node(v).name().unwrap_or("a value").to_string();
                let shape: Vec<String> = g.shape(v).iter().map(|d| d.to_string()).collect();
                return Err(too_large(
                    config,
                    format!("`{name}` has shape [{}]", shape.join(", ")),
                ));
            }
        }
    }
    if work * layer_scale > MAX_PLAN_WORK {
        return Err(too_large(
            config,
            format!(
                "its step does about {:.1e} multiply-adds",
                work * layer_scale
            ),
        ));
    }
    Ok(work)
}

/// The impossible-plan checks of a named plan, for `kiln check`: runs the planners on it and
/// returns `check`'s diagnostics. A plan whose step cannot be built is left to the stages that
/// report that (sema for the model, `kiln plan` for the step), so `check` stays about the layout.
pub fn check_named(ws: &Workspace, plan: &ParallelPlan) -> Vec<SemaDiagnostic> {
    let o = PlanOptions {
        plan: Some(plan.name.clone()),
        ..Default::default()
    };
    let s = match setup(ws, &o) {
        Ok(s) => s,
        Err(ds) => return ds,
    };
    match analyze(ws, &s) {
        Ok(a) => check(ws, &a),
        Err(_) => Vec::new(),
    }
}

fn push_label(d: &mut SemaDiagnostic, loc: Loc, text: &str) {
    if d.file_name.is_empty() {
        return;
    }
    d.labels.push(Label {
        span: loc.span,
        text: text.into(),
    });
}

/// `12.34 GiB`, `5.00 MiB`, `1.00 KiB`, `12 B`.
pub fn gib(b: u64) -> String {
    let x = b as f64;
    if b >= 1 << 30 {
        format!("{:.2} GiB", x / (1u64 << 30) as f64)
    } else if b >= 1 << 20 {
        format!("{:.2} MiB", x / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.2} KiB", x / 1024.0)
    } else {
        format!("{b} B")
    }
}
