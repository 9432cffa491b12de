//! `kiln plan` and `kiln explain`: the planners' report for one config and layout, and why a value
//! is kept or recomputed and how a parameter is sharded.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Args;
use kiln_compiler::ir::DType;
use kiln_compiler::plan::{self, analysis::gib, Analysis, PlanOptions};
use kiln_compiler::sema::plancheck::{RecomputePolicy, KEEP_KINDS};
use miette::miette;

use super::spec::{emit, load, overrides};

/// Options shared by `plan` and `explain`.
#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    /// The spec file.
    pub spec: PathBuf,
    /// A named config (or model) of the spec; without it (and without --plan), every config.
    #[arg(long)]
    pub model: Option<String>,
    /// A named plan of the spec (its config, layout, batch, recompute, device, precision).
    #[arg(long)]
    pub plan: Option<String>,
    /// Hyperparameter overrides, `--set d=512`.
    #[arg(long = "set", value_name = "K=V")]
    pub set: Vec<String>,
    /// Global batch in sequences (all data-parallel ranks together).
    #[arg(long)]
    pub batch: Option<u64>,
    /// Sequence length (binds `seq`, and `src`/`tgt` of encoder-decoders).
    #[arg(long)]
    pub seq: Option<u64>,
    /// Device preset: cpu, a100-80gb, h100-80gb, tpu-v4.
    #[arg(long)]
    pub device: Option<String>,
    /// Accounting precision: f32 (as declared) or bf16/f16 (mixed precision).
    #[arg(long)]
    pub precision: Option<String>,
    /// Recompute policy: none, full, selective, keep:KIND[,KIND..], budget:BYTES (e.g. budget:20GiB).
    #[arg(long)]
    pub recompute: Option<String>,
    #[arg(long)]
    pub data: Option<u64>,
    #[arg(long)]
    pub tensor: Option<u64>,
    #[arg(long)]
    pub pipeline: Option<u64>,
    /// Sequence parallelism (with --tensor > 1).
    #[arg(long)]
    pub sequence: Option<bool>,
    /// ZeRO stage (0 to 3) over the data-parallel group.
    #[arg(long)]
    pub zero: Option<u64>,
    /// Sequences per micro-batch.
    #[arg(long)]
    pub microbatch: Option<u64>,
    /// Count every kept op output, as an unfused op-by-op runtime does.
    #[arg(long)]
    pub unfused: bool,
}

fn parse_bytes(s: &str) -> Option<u64> {
    let t = s.trim().replace('_', "");
    let units: [(&str, f64); 8] = [
        ("KiB", 1024.0),
        ("MiB", 1048576.0),
        ("GiB", 1073741824.0),
        ("TiB", 1099511627776.0),
        ("KB", 1e3),
        ("MB", 1e6),
        ("GB", 1e9),
        ("TB", 1e12),
    ];
    for (u, m) in units {
        if let Some(n) = t.strip_suffix(u) {
            return n
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|x| *x > 0.0 && x.is_finite())
                .map(|x| (x * m) as u64);
        }
    }
    t.parse::<f64>()
        .ok()
        .filter(|x| *x > 0.0 && x.is_finite())
        .map(|x| x as u64)
}

fn parse_recompute(s: &str) -> miette::Result<RecomputePolicy> {
    let bad = || {
        miette!(
            code = "cli::recompute",
            help = "none, full, selective, keep:matmul,norm (kinds: matmul, attention, norm, elementwise, softmax), budget:20GiB",
            "unknown recompute policy `{s}`"
        )
    };
    let t = s.trim();
    let (head, arg) = match t.split_once([':', '(']) {
        Some((h, a)) => (h.trim(), Some(a.trim_end_matches(')').trim())),
        None => (t, None),
    };
    match (head, arg) {
        ("none", None) => Ok(RecomputePolicy::None),
        ("full", None) => Ok(RecomputePolicy::Full),
        ("selective", None) => Ok(RecomputePolicy::Selective),
        ("keep", Some(a)) => {
            let kinds: Vec<String> = a
                .split(',')
                .map(|k| k.trim().to_string())
                .filter(|k| !k.is_empty())
                .collect();
            if kinds.is_empty() || kinds.iter().any(|k| !KEEP_KINDS.contains(&k.as_str())) {
                return Err(bad());
            }
            Ok(RecomputePolicy::Keep(kinds))
        }
        ("budget", Some(a)) => parse_bytes(a).map(RecomputePolicy::Budget).ok_or_else(bad),
        _ => Err(bad()),
    }
}

fn options(a: &PlanArgs, model: Option<String>) -> miette::Result<PlanOptions> {
    let precision = match a.precision.as_deref() {
        None => None,
        Some("f32") => Some(DType::F32),
        Some("bf16") => Some(DType::BF16),
        Some("f16") => Some(DType::F16),
        Some(o) => {
            return Err(miette!(
                code = "cli::precision",
                help = "f32, bf16 or f16",
                "unknown precision `{o}`"
            ))
        }
    };
    Ok(PlanOptions {
        model,
        plan: a.plan.clone(),
        overrides: overrides(&a.set)?,
        batch: a.batch,
        seq: a.seq,
        device: a.device.clone(),
        precision,
        recompute: a.recompute.as_deref().map(parse_recompute).transpose()?,
        unfused: a.unfused,
        tensor: a.tensor,
        data: a.data,
        pipeline: a.pipeline,
        sequence: a.sequence,
        zero: a.zero,
        microbatch: a.microbatch,
    })
}

/// Runs the planners for one config; `Err(code)` when diagnostics were printed.
fn analyze(
    path: &Path,
    a: &PlanArgs,
    model: Option<String>,
) -> miette::Result<Result<(Analysis, usize), ExitCode>> {
    let (ws, _) = load(&[path.to_path_buf()])?;
    if emit(&ws.load_diagnostics) > 0 {
        return Ok(Err(ExitCode::from(1)));
    }
    let opts = options(a, model)?;
    let setup = match plan::setup(&ws, &opts) {
        Ok(s) => s,
        Err(ds) => {
            emit(&ds);
            return Ok(Err(ExitCode::from(1)));
        }
    };
    let analysis = match plan::analyze(&ws, &setup) {
        Ok(x) => x,
        Err(ds) => {
            emit(&ds);
            return Ok(Err(ExitCode::from(1)));
        }
    };
    let problems = plan::check(&ws, &analysis);
    let errors = emit(&problems);
    Ok(Ok((analysis, errors)))
}

pub fn plan(a: &PlanArgs, json: bool, emit_what: Option<&str>) -> miette::Result<ExitCode> {
    let configs: Vec<Option<String>> = if a.model.is_some() || a.plan.is_some() {
        vec![a.model.clone()]
    } else {
        let (ws, ids) = load(std::slice::from_ref(&a.spec))?;
        if emit(&ws.load_diagnostics) > 0 {
            return Ok(ExitCode::from(1));
        }
        ws.configs_of(ids[0]).into_iter().map(Some).collect()
    };
    let mut failed = false;
    for c in configs {
        let (analysis, errors) = match analyze(&a.spec, a, c)? {
            Ok(x) => x,
            Err(code) => return Ok(code),
        };
        failed |= errors > 0;
        let text = match emit_what {
            Some("ir") => plan::print::print_plan(&analysis),
            Some("ranks") => (0..analysis.setup.plan.pipeline.max(1))
                .map(|stage| plan::print::print_rank(&analysis, stage))
                .collect(),
            Some(o) => {
                return Err(miette!(
                    code = "cli::emit",
                    help = "--emit ir or --emit ranks",
                    "unknown --emit `{o}`"
                ))
            }
            None if json => format!(
                "{}\n",
                serde_json::to_string(&analysis.report).map_err(|e| miette!("{e}"))?
            ),
            None => human(&analysis),
        };
        if !write_out(&text) {
            return Ok(ExitCode::SUCCESS);
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

pub fn explain(a: &PlanArgs, query: &str) -> miette::Result<ExitCode> {
    let (analysis, _) = match analyze(&a.spec, a, a.model.clone())? {
        Ok(x) => x,
        Err(code) => return Ok(code),
    };
    match plan::explain::explain(&analysis, query) {
        Some(text) => {
            write_out(&text);
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let names = plan::explain::candidates(&analysis);
            let help = match kiln_compiler::sema::diag::did_you_mean(query, names.iter().map(|s| s.as_str())) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "name a parameter (`h.0.attn.q.weight`), a value's name path (`h.0.attn.sdpa`) or a printed value (`%12`)".into(),
            };
            Err(miette!(
                code = "explain::unknown",
                help = help,
                "`{query}` names no parameter or value of `{}`",
                analysis.report.config
            ))
        }
    }
}

/// Writes to stdout; `false` when the reader went away (`kiln plan | head`), which is not an error.
fn write_out(text: &str) -> bool {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())
        .and_then(|_| out.flush())
        .is_ok()
}

fn sci(x: f64) -> String {
    format!("{x:.3e}")
}

/// The human-readable report.
fn human(a: &Analysis) -> String {
    let r = &a.report;
    let pd = &r.per_device_bytes;
    let mut s = String::new();
    let plan = r
        .plan
        .as_ref()
        .map(|p| format!(" with plan {p}"))
        .unwrap_or_default();
    s += &format!(
        "{} ({}){plan} on {}, {} precision\n",
        r.config, r.model, r.device, r.precision
    );
    s += &format!(
        "layout: data {} x tensor {} x pipeline {} = {} device{}{}{}\n",
        r.data,
        r.tensor,
        r.pipeline,
        r.devices,
        if r.devices == 1 { "" } else { "s" },
        if r.sequence_parallel {
            ", sequence parallel"
        } else {
            ""
        },
        if r.zero > 0 {
            format!(", ZeRO-{}", r.zero)
        } else {
            String::new()
        }
    );
    s += &format!(
        "batch: {} sequences of {} tokens per step; micro-batches of {} ({} per data rank); {} layers, {} parameters\n",
        r.global_batch, r.seq, r.microbatch, r.micro_batches, r.layers, r.params
    );
    s += &format!(
        "recompute: {}{}\n",
        r.recompute,
        if r.fused_accounting {
            " (fused-kernel accounting)"
        } else {
            " (unfused)"
        }
    );
    let runtime = a.runtime_arena.as_ref();
    s += match runtime {
        Some(_) => "memory: the arena the CPU runtime allocates for this step (by category at its live peak; fragmentation under workspace):\n",
        None => "memory per device (most loaded stage):\n",
    };
    for (k, v) in [
        ("params", pd.params),
        ("grads", pd.grads),
        ("optimizer", pd.optimizer),
        ("activations", pd.activations),
        ("workspace", pd.workspace),
    ] {
        s += &format!("  {k:<12} {:>12}\n", gib(v));
    }
    s += &format!(
        "  {:<12} {:>12} of {} ({})\n",
        "total",
        gib(pd.total),
        gib(r.device_memory_bytes),
        if r.fits { "fits" } else { "DOES NOT FIT" }
    );
    match runtime {
        Some(ra) => {
            s += &format!(
                "  {} bytes exactly ({} layers compiled, {} kernels); live peak {} (a lower bound)\n",
                r.arena_bytes,
                r.built_layers,
                ra.schedule.steps.len(),
                gib(ra.live_peak())
            );
            s += &format!(
                "  estimated activations per layer and micro-batch: {}\n",
                gib(r.activation_bytes_per_layer)
            );
        }
        None => {
            s += &format!(
                "  activations per layer and micro-batch: {}\n",
                gib(r.activation_bytes_per_layer)
            );
            s += &format!(
                "  exact arena of the built step ({} layers): {}\n",
                r.built_layers,
                gib(r.arena_bytes)
            );
        }
    }
    s += &format!(
        "compute: {} FLOP per step (forward + backward); recompute {} (+{:.1}%)\n",
        sci(r.flops_per_step),
        sci(r.recompute_flops_per_step),
        100.0 * r.recompute_overhead
    );
    let c = &r.comm_bytes_by_group;
    s += &format!(
        "communication per device per step: {} (tensor {}, data {}, pipeline {})\n",
        gib(r.comm_bytes_per_step),
        gib(c.tensor),
        gib(c.data),
        gib(c.pipeline)
    );
    s += &format!(
        "time: {:.4} s per step, {:.0} tokens/s, MFU {:.1}%{}\n",
        r.step_time_s,
        r.tokens_per_s,
        100.0 * r.mfu,
        if r.pipeline > 1 {
            format!(", pipeline bubble {:.1}%", 100.0 * r.pipeline_bubble)
        } else {
            String::new()
        }
    );
    s
}
