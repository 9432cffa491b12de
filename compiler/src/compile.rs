//! Compile a spec: the one entry point from "config name + run sizes" to bound, optimized graphs
//! and their statistics (`kiln compile`, the snapshots and the benchmarks all come through here).
//!
//! Steps: instantiate the config (and objective) with sema → bind the run dims → (with
//! `optimize`) recognise attention (`passes::attention`: each `sdpa` composition becomes one
//! `attention` node, and softmax maxima get a stop-gradient so autodiff builds no gradient path
//! through them) → (with `train`) build the training step (autodiff, clipping, optimizer update)
//! from the bound forward graph → optimize both graphs with `pipeline::optimize` → (with `fuse`)
//! fuse the graph to run into a kernel `Program` → count.
//!
//! Dims. `batch` binds the symbol `batch`; `seq` binds `seq`, and also `src` and `tgt` (the
//! encoder and decoder lengths of encoder-decoder models) unless `dims` gives them. Objectives
//! declare their data in terms of these symbols: `causal_lm` reads `tokens: [batch, seq + 1]` and
//! feeds the model `tokens[:, :-1]`, so `seq = T` means *the model sees T tokens* (and the loss has
//! T targets per row). `dims` binds any other symbol, and overrides the defaults.
//!
//! Objective. With `train` and no objective in the request, `causal_lm` is used for models that
//! take one input and `seq2seq` for models that take two (encoder-decoder).
//!
//! Statistics (`CompileStats`), all for the bound sizes, i.e. the whole batch:
//! - `flops_forward`: `Graph::flops` of the forward graph as compiled (optimized unless
//!   `optimize` is off; with `train` it includes the loss and dropout, as the training step runs
//!   them). Conventions are `ir::ops`': a matmul is 2·m·n·k, elementwise ops 1 per element,
//!   reductions 1 per input element, data movement 0. Attention scores are counted in full; no
//!   causally skipped FLOPs are subtracted (none are reported).
//! - `flops_optimizer`: FLOPs of the training-graph nodes the training step adds after autodiff
//!   (named `optim` / `optim.*`: the global gradient norm, clipping and the update).
//! - `flops_backward` = training-graph FLOPs − `flops_forward` − `flops_optimizer`: everything a
//!   training step computes beyond one forward pass and the optimizer, i.e. the gradient ops (and
//!   any forward work the training graph does that the forward graph does not).
//! - `param_bytes`: the model's parameters (those of the forward graph) in their dtypes.
//! - `grad_bytes`: one gradient, in the parameter's dtype, per trainable parameter that receives
//!   a gradient (those the training step updates).
//! - `optimizer_bytes`: the optimizer state (parameters the training step adds: `opt.m.*`,
//!   `opt.v.*`, `opt.buf.*`).
//! - `compile_ms`: wall time of the whole `compile` call.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use kiln_grammar::ast::{BlockKind, Item, Stmt};
use miette::Severity;
use serde::Serialize;

use crate::ir::ops::flops;
use crate::ir::{bind_shape, Bindings, Graph, IrError};
use crate::passes::attention;
use crate::passes::fusion::fuse;
use crate::pipeline::{self, PipelineLog, PipelineOptions};
use crate::program::Program;
use crate::sema::{DataTransform, Request, SemaDiagnostic, Value, Workspace};
use crate::train::{self, StepOptions};

/// How to compile.
#[derive(Clone, Debug, PartialEq)]
pub struct CompileOptions {
    /// Build the training step with these options; `None`: the forward graph only.
    pub train: Option<StepOptions>,
    pub batch: i64,
    /// Tokens the model sees per row (see the module doc).
    pub seq: i64,
    /// Other symbol bindings (`src`, `tgt`, ...); they override the defaults from `seq`.
    pub dims: Vec<(String, i64)>,
    /// Recognise attention and run the pass pipeline (off: the graphs as sema and autodiff
    /// produce them).
    pub optimize: bool,
    pub pipeline: PipelineOptions,
    /// Fuse the graph to run into kernels (`Compiled::program`, `CompileStats::kernels`).
    pub fuse: bool,
}

impl Default for CompileOptions {
    fn default() -> Self {
        CompileOptions {
            train: None,
            batch: 1,
            seq: 1024,
            dims: Vec::new(),
            optimize: true,
            pipeline: PipelineOptions::default(),
            fuse: false,
        }
    }
}

/// Counts and sizes of a compiled spec (definitions in the module doc).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct CompileStats {
    /// Nodes of the compiled graph (the training step with `train`) by op kind.
    pub ops: BTreeMap<String, u64>,
    /// Kernels by kind (with `fuse`; empty otherwise).
    pub kernels: BTreeMap<String, u64>,
    pub flops_forward: u64,
    pub flops_backward: u64,
    pub flops_optimizer: u64,
    pub param_count: u64,
    pub param_bytes: u64,
    pub grad_bytes: u64,
    pub optimizer_bytes: u64,
    /// Node counts before and after the pipeline (forward graph, and training graph if any).
    pub forward_nodes: (usize, usize),
    pub training_nodes: Option<(usize, usize)>,
    pub compile_ms: f64,
}

/// A compiled spec.
#[derive(Clone, Debug)]
pub struct Compiled {
    pub config: String,
    pub model: String,
    pub objective: Option<String>,
    /// The model's hyperparameters as bound.
    pub hparams: Vec<(String, Value)>,
    /// The run dims every symbol was bound to.
    pub bindings: Bindings,
    /// The bound (and, with `optimize`, optimized) forward graph: outputs `logits`, and `loss`
    /// with an objective.
    pub forward: Graph,
    /// The graph to run: the training step with `train`, else the forward graph.
    pub graph: Graph,
    /// The objective's data-side transform (T5 span corruption), if any.
    pub data: Option<DataTransform>,
    pub forward_log: Option<PipelineLog>,
    pub training_log: Option<PipelineLog>,
    /// The fused kernel program of `graph` (with `fuse`).
    pub program: Option<Program>,
    pub stats: CompileStats,
}

impl Compiled {
    pub fn is_training(&self) -> bool {
        self.stats.training_nodes.is_some()
    }
}

/// Compiles `request` (config, overrides, objective) for the sizes in `opts`.
pub fn compile(
    ws: &Workspace,
    request: &Request,
    opts: &CompileOptions,
) -> Result<Compiled, Vec<SemaDiagnostic>> {
    let t0 = Instant::now();
    let mut req = request.clone();
    req.training = opts.train.is_some();
    if opts.train.is_some() && req.objective.is_none() {
        req.objective = Some((default_objective(ws, &req.config).to_string(), Vec::new()));
    }
    let inst = ws.instantiate(&req)?;
    let bindings = bindings(opts)?;
    let mut forward = inst
        .graph
        .bind(&bindings)
        .map_err(|e| vec![bind_diag(&e, &bindings)])?;
    if opts.optimize {
        let internal = |e: IrError| vec![diag("compile::attention", e.to_string(), None)];
        attention::recognize(&mut forward).map_err(internal)?;
        attention::stop_shift_gradients(&mut forward).map_err(internal)?;
    }
    let training = match &opts.train {
        Some(step) => Some(
            train::training_step(&forward, step)
                .map_err(|e| vec![diag("compile::training_step", e.to_string(), None)])?,
        ),
        None => None,
    };

    let fwd_before = forward.len();
    let (forward, forward_log) = optimized(forward, opts)?;
    let (training, training_log, train_nodes) = match training {
        Some(t) => {
            let before = t.len();
            let (t, log) = optimized(t, opts)?;
            let after = t.len();
            (Some(t), log, Some((before, after)))
        }
        None => (None, None, None),
    };

    let mut stats = CompileStats {
        forward_nodes: (fwd_before, forward.len()),
        training_nodes: train_nodes,
        ..CompileStats::default()
    };
    let internal = |e: IrError| vec![diag("compile::internal", e.to_string(), None)];
    stats.flops_forward = forward.flops(&bindings).map_err(internal)?;
    let model_params = param_sizes(&forward, &bindings).map_err(internal)?;
    stats.param_count = model_params.values().map(|(n, _)| n).sum();
    stats.param_bytes = model_params.values().map(|(_, b)| b).sum();
    if let Some(t) = &training {
        let total = t.flops(&bindings).map_err(internal)?;
        stats.flops_optimizer = optimizer_flops(t, &bindings).map_err(internal)?;
        stats.flops_backward = total
            .saturating_sub(stats.flops_forward)
            .saturating_sub(stats.flops_optimizer);
        let updated: BTreeSet<&str> = t.updates().iter().map(|u| u.target.as_str()).collect();
        stats.grad_bytes = model_params
            .iter()
            .filter(|(name, _)| updated.contains(name.as_str()))
            .map(|(_, (_, b))| b)
            .sum();
        let all = param_sizes(t, &bindings).map_err(internal)?;
        stats.optimizer_bytes = all
            .iter()
            .filter(|(name, _)| !model_params.contains_key(*name))
            .map(|(_, (_, b))| b)
            .sum();
    }
    let main = training.as_ref().unwrap_or(&forward);
    for v in main.values() {
        *stats
            .ops
            .entry(main.node(v).op().name().to_string())
            .or_insert(0) += 1;
    }
    let graph = training.unwrap_or_else(|| forward.clone());
    let program = if opts.fuse {
        let p = fuse(&graph).map_err(|e| vec![diag("compile::fusion", e.to_string(), None)])?;
        stats.kernels = p
            .kind_counts()
            .into_iter()
            .map(|(k, n)| (k.to_string(), n as u64))
            .collect();
        Some(p)
    } else {
        None
    };
    stats.compile_ms = t0.elapsed().as_secs_f64() * 1e3;
    Ok(Compiled {
        config: inst.config,
        model: inst.model,
        objective: req.objective.map(|(o, _)| o),
        hparams: inst.hparams,
        bindings,
        forward,
        graph,
        data: inst.data,
        forward_log,
        training_log,
        program,
        stats,
    })
}

/// The objective a training compile uses when none is named: `seq2seq` for models with two
/// inputs (encoder-decoder), `causal_lm` otherwise (also when the config cannot be resolved:
/// instantiation then reports that).
pub fn default_objective(ws: &Workspace, config: &str) -> &'static str {
    let mut cur = config.to_string();
    // Config chains are short; the bound only guards against a cycle (sema reports those).
    for _ in 0..64 {
        let Some(at) = ws.lookup_item(&cur) else {
            break;
        };
        match ws.item(at) {
            Item::Config(c) => cur = c.base.name.clone(),
            Item::Block(b) if b.kind == BlockKind::Model => {
                let inputs = b
                    .body
                    .iter()
                    .filter(|s| matches!(s, Stmt::Input { .. }))
                    .count();
                return if inputs >= 2 { "seq2seq" } else { "causal_lm" };
            }
            _ => break,
        }
    }
    "causal_lm"
}

/// The symbol bindings for `opts` (see the module doc).
pub fn bindings(opts: &CompileOptions) -> Result<Bindings, Vec<SemaDiagnostic>> {
    let mut b = Bindings::new();
    for (name, v) in [
        ("batch", opts.batch),
        ("seq", opts.seq),
        ("src", opts.seq),
        ("tgt", opts.seq),
    ] {
        b.insert(name, v);
    }
    for (name, v) in &opts.dims {
        b.insert(name, *v);
    }
    for (name, v) in b.iter() {
        if v < 1 {
            return Err(vec![diag(
                "compile::bad_dim",
                format!("dim `{name}` must be at least 1, got {v}"),
                None,
            )]);
        }
    }
    Ok(b)
}

fn optimized(
    g: Graph,
    opts: &CompileOptions,
) -> Result<(Graph, Option<PipelineLog>), Vec<SemaDiagnostic>> {
    if !opts.optimize {
        return Ok((g, None));
    }
    pipeline::optimize_with_log(g, &opts.pipeline)
        .map(|(g, log)| (g, Some(log)))
        .map_err(|e| vec![diag("compile::pipeline", e.to_string(), None)])
}

/// `name → (elements, bytes)` of every param of `g`, bound.
fn param_sizes(g: &Graph, b: &Bindings) -> Result<BTreeMap<String, (u64, u64)>, IrError> {
    let mut out = BTreeMap::new();
    for p in g.params() {
        let n = g.node(p);
        if let Some(name) = n.op().source_name() {
            let elems: u64 = bind_shape(n.shape(), b)?
                .iter()
                .map(|d| *d as u64)
                .product();
            out.insert(
                name.to_string(),
                (elems, elems * n.dtype().size_bytes() as u64),
            );
        }
    }
    Ok(out)
}

/// FLOPs of the nodes the training step adds after autodiff (named `optim` or `optim.*`).
fn optimizer_flops(g: &Graph, b: &Bindings) -> Result<u64, IrError> {
    let mut total = 0u64;
    for v in g.values() {
        let n = g.node(v);
        let is_opt = n
            .name()
            .is_some_and(|s| s == "optim" || s.starts_with("optim."));
        if !is_opt {
            continue;
        }
        let ins: Vec<Vec<usize>> = n
            .inputs()
            .iter()
            .map(|u| bind_shape(g.shape(*u), b))
            .collect::<Result<_, _>>()?;
        let refs: Vec<&[usize]> = ins.iter().map(|s| s.as_slice()).collect();
        let out = bind_shape(n.shape(), b)?;
        total = total.saturating_add(flops(n.op(), &refs, &out));
    }
    Ok(total)
}

fn bind_diag(e: &IrError, b: &Bindings) -> SemaDiagnostic {
    let help = match e {
        IrError::UnboundSymbol { symbol } => Some(format!(
            "bind it with `--dim {symbol}=N` (bound: {})",
            b.iter()
                .map(|(s, v)| format!("{s}={v}"))
                .collect::<Vec<_>>()
                .join(", ")
        )),
        IrError::BadAttribute { .. } | IrError::ShapeMismatch { .. } => Some(
            "the run dims do not fit the model: is --seq above the config's `ctx`?".to_string(),
        ),
        _ => None,
    };
    diag(
        "compile::bind",
        format!("cannot bind the run dims: {e}"),
        help,
    )
}

/// A diagnostic that points at no source (run-size and internal errors).
fn diag(code: &'static str, message: String, help: Option<String>) -> SemaDiagnostic {
    SemaDiagnostic {
        code,
        message,
        severity: Severity::Error,
        file_name: String::new(),
        source: Arc::from(""),
        labels: Vec::new(),
        help,
        related: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_binds_encoder_and_decoder_lengths_unless_given() {
        let opts = CompileOptions {
            batch: 2,
            seq: 8,
            dims: vec![("tgt".into(), 4)],
            ..CompileOptions::default()
        };
        let b = bindings(&opts).unwrap();
        assert_eq!(b.get("batch"), Some(2));
        assert_eq!(b.get("seq"), Some(8));
        assert_eq!(b.get("src"), Some(8));
        assert_eq!(b.get("tgt"), Some(4));
        let bad = CompileOptions {
            batch: 0,
            ..CompileOptions::default()
        };
        assert!(bindings(&bad).is_err());
    }
}
