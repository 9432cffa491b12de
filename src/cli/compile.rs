//! `kiln compile`: compile one config of a spec (optionally its training step) for a batch and a
//! sequence length, and print the result as IR, Graphviz or a JSON summary.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Args, ValueEnum};
use kiln_compiler::compile::{compile, CompileOptions, Compiled};
use kiln_compiler::ir::print::value_numbers;
use kiln_compiler::ir::Graph;
use kiln_compiler::pipeline::PipelineOptions;
use kiln_compiler::sema::{Request, SemaDiagnostic, Value, Workspace};
use kiln_compiler::train::{Optimizer, StepOptions};
use miette::{miette, IntoDiagnostic, Severity};

use super::spec::{emit, load, overrides};

#[derive(Args, Debug)]
pub struct CompileArgs {
    /// The spec file.
    pub spec: PathBuf,
    /// A named config (or model) of the spec.
    #[arg(long)]
    pub model: String,
    /// Compile the training step: forward, loss, backward, clipping and the optimizer update.
    #[arg(long)]
    pub train: bool,
    /// The objective to train (default: `causal_lm`, or `seq2seq` for encoder-decoder models).
    /// Without --train, an objective adds the loss to the forward graph.
    #[arg(long)]
    pub objective: Option<String>,
    /// Rows per batch (the symbol `batch`).
    #[arg(long, default_value_t = 1)]
    pub batch: i64,
    /// Tokens the model sees per row (the symbol `seq`; also `src`/`tgt` of encoder-decoder
    /// models). Default: the config's `ctx`.
    #[arg(long)]
    pub seq: Option<i64>,
    /// Bind another dim, `--dim tgt=128`.
    #[arg(long = "dim", value_name = "NAME=N")]
    pub dims: Vec<String>,
    /// Hyperparameter overrides, `--set layers=8`.
    #[arg(long = "set", value_name = "K=V")]
    pub set: Vec<String>,
    /// What to print.
    #[arg(long, value_enum, default_value_t = EmitKind::Ir)]
    pub emit: EmitKind,
    /// The training step's optimizer (torch defaults: AdamW betas 0.9/0.999, eps 1e-8).
    #[arg(long, value_enum, default_value_t = OptimizerKind::Adamw)]
    pub optimizer: OptimizerKind,
    /// Weight decay (AdamW's decoupled decay, SGD's L2 term).
    #[arg(long, default_value_t = 0.1)]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value.
    #[arg(long)]
    pub clip: Option<f64>,
    /// Skip the pass pipeline (the graphs as sema and autodiff produce them).
    #[arg(long)]
    pub no_opt: bool,
    /// Run the IR verifier after every pass.
    #[arg(long)]
    pub verify: bool,
    /// Print what each pass did to stderr.
    #[arg(long)]
    pub log: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum EmitKind {
    /// The printed graph.
    Ir,
    /// The fused kernel program: buffers, then one line per kernel launch in execution order.
    Kernels,
    /// Graphviz, one node per op labelled `op / type / name`.
    Dot,
    /// One JSON object: op counts, kernel counts, FLOPs, bytes, compile time.
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OptimizerKind {
    Adamw,
    Sgd,
}

pub fn run(args: &CompileArgs) -> miette::Result<ExitCode> {
    let (ws, _) = load(std::slice::from_ref(&args.spec))?;
    if emit(&ws.load_diagnostics) > 0 {
        return Ok(ExitCode::from(1));
    }
    let overrides = overrides(&args.set)?;
    let request = Request {
        config: args.model.clone(),
        overrides: overrides.clone(),
        objective: args.objective.clone().map(|o| (o, Vec::new())),
        training: args.train,
    };
    let seq = match args.seq {
        Some(s) => s,
        None => match default_seq(&ws, &args.model, &overrides) {
            Ok(s) => s,
            Err(ds) => {
                emit(&ds);
                return Ok(ExitCode::from(1));
            }
        },
    };
    let dims = args
        .dims
        .iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').ok_or_else(|| {
                miette!(
                    code = "cli::dim",
                    help = "write `--dim name=N`",
                    "`--dim {kv}` has no `=`"
                )
            })?;
            let n = v.trim().parse::<i64>().map_err(|_| {
                miette!(
                    code = "cli::dim",
                    "`--dim {kv}`: `{}` is not an integer",
                    v.trim()
                )
            })?;
            Ok((k.trim().to_string(), n))
        })
        .collect::<miette::Result<Vec<_>>>()?;
    let optimizer = match args.optimizer {
        OptimizerKind::Adamw => Optimizer::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: args.weight_decay,
        },
        OptimizerKind::Sgd => Optimizer::Sgd {
            momentum: 0.9,
            weight_decay: args.weight_decay,
        },
    };
    let opts = CompileOptions {
        train: args.train.then(|| StepOptions {
            optimizer,
            clip: args.clip,
            ..StepOptions::default()
        }),
        batch: args.batch,
        seq,
        dims,
        optimize: !args.no_opt,
        pipeline: PipelineOptions {
            verify_each: args.verify,
            ..PipelineOptions::default()
        },
        fuse: matches!(args.emit, EmitKind::Kernels | EmitKind::Json),
    };
    let compiled = match compile(&ws, &request, &opts) {
        Ok(c) => c,
        Err(ds) => {
            emit(&ds);
            return Ok(ExitCode::from(1));
        }
    };
    if args.log {
        for (stage, log) in [
            ("forward", &compiled.forward_log),
            ("training", &compiled.training_log),
        ] {
            if let Some(log) = log {
                eprintln!("# passes on the {stage} graph\n{log}");
            }
        }
    }
    let text = match args.emit {
        EmitKind::Ir => compiled.graph.to_string(),
        EmitKind::Dot => to_dot(&compiled.graph, &compiled.config),
        EmitKind::Json => {
            let mut s = serde_json::to_string_pretty(&summary(&compiled, seq)).into_diagnostic()?;
            s.push('\n');
            s
        }
        EmitKind::Kernels => match &compiled.program {
            Some(p) => p.to_string(),
            None => {
                return Err(miette!(
                    code = "cli::internal",
                    "fusion produced no program"
                ))
            }
        },
    };
    // A closed pipe (`kiln compile ... | head`) is not an error worth a panic.
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(miette!(code = "io::write", "cannot write the output: {e}"))
        }
        _ => Ok(ExitCode::SUCCESS),
    }
}

/// The config's `ctx` hyperparameter (the longest sequence it was built for).
fn default_seq(
    ws: &Workspace,
    config: &str,
    overrides: &[(String, Value)],
) -> Result<i64, Vec<SemaDiagnostic>> {
    if let Some((_, Value::Int(d))) = overrides.iter().find(|(k, _)| k == "ctx") {
        if let Some(c) = d.as_const() {
            return Ok(c);
        }
    }
    let hp = ws.config_hparams(config, None).map_err(|d| vec![d])?;
    match hp.iter().find(|(k, _)| k == "ctx") {
        Some((_, Value::Int(d))) if d.as_const().is_some() => Ok(d.as_const().unwrap_or(0)),
        _ => Err(vec![SemaDiagnostic {
            code: "cli::no_seq",
            message: format!(
                "`{config}` has no `ctx` hyperparameter to take the sequence length from"
            ),
            severity: Severity::Error,
            file_name: String::new(),
            source: Arc::from(""),
            labels: Vec::new(),
            help: Some("give --seq".into()),
            related: Vec::new(),
        }]),
    }
}

/// The JSON summary of `kiln compile --emit json`.
fn summary(c: &Compiled, seq: i64) -> serde_json::Value {
    let s = &c.stats;
    let bindings: serde_json::Map<String, serde_json::Value> = c
        .bindings
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.into()))
        .collect();
    serde_json::json!({
        "config": c.config,
        "model": c.model,
        "objective": c.objective,
        "train": c.is_training(),
        "batch": c.bindings.get("batch"),
        "seq": seq,
        "bindings": bindings,
        "ops": s.ops,
        "kernels": s.kernels,
        "flops_forward": s.flops_forward,
        "flops_backward": s.flops_backward,
        "flops_optimizer": s.flops_optimizer,
        "params": s.param_count,
        "param_bytes": s.param_bytes,
        "grad_bytes": s.grad_bytes,
        "optimizer_bytes": s.optimizer_bytes,
        "nodes_forward": {"before": s.forward_nodes.0, "after": s.forward_nodes.1},
        "nodes_training": s.training_nodes.map(|(b, a)| serde_json::json!({"before": b, "after": a})),
        "compile_ms": s.compile_ms,
    })
}

/// Graphviz text: one box per value labelled `op\ntype\nname` (numbered as in the printed IR),
/// edges from operands to users, and an ellipse per output and state update.
pub fn to_dot(g: &Graph, title: &str) -> String {
    let esc = |s: &str| s.replace('\\', "\\\\").replace('"', "\\\"");
    let nums = value_numbers(g);
    let mut s = String::new();
    let _ = writeln!(s, "digraph \"{}\" {{", esc(title));
    let _ = writeln!(
        s,
        "  node [shape=box, fontname=\"monospace\", fontsize=10];"
    );
    let mut order: Vec<_> = nums.iter().map(|(v, n)| (*n, *v)).collect();
    order.sort();
    for (n, v) in &order {
        let node = g.node(*v);
        let mut label = format!(
            "{}\\n{}",
            esc(&node.op().to_string()),
            esc(&node.ty().to_string())
        );
        if let Some(name) = node.op().source_name().or(node.name()) {
            let _ = write!(label, "\\n{}", esc(name));
        }
        let _ = writeln!(s, "  n{n} [label=\"{label}\"];");
    }
    for (n, v) in &order {
        for u in g.node(*v).inputs() {
            if let Some(m) = nums.get(u) {
                let _ = writeln!(s, "  n{m} -> n{n};");
            }
        }
    }
    for (i, o) in g.outputs().iter().enumerate() {
        let _ = writeln!(
            s,
            "  out{i} [shape=ellipse, label=\"output {}\"];",
            esc(&o.name)
        );
        if let Some(m) = nums.get(&o.value) {
            let _ = writeln!(s, "  n{m} -> out{i};");
        }
    }
    for (i, u) in g.updates().iter().enumerate() {
        let _ = writeln!(
            s,
            "  upd{i} [shape=ellipse, label=\"update {}\"];",
            esc(&u.target)
        );
        if let Some(m) = nums.get(&u.value) {
            let _ = writeln!(s, "  n{m} -> upd{i};");
        }
    }
    s.push_str("}\n");
    s
}
