//! `kiln train`, `kiln finetune`, `kiln eval`, `kiln generate`, `kiln data prepare`: the commands
//! that run models.
//!
//! Each is a thin shell over a runtime call; every failure is a miette diagnostic and exit
//! code 1. An interrupted training run (SIGINT, SIGTERM) finishes its step, writes a checkpoint
//! and exits with code 130.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use kiln_runtime::config::{RunConfig, TokenizerConfig};
use kiln_runtime::data::prepare_token_file;
use kiln_runtime::eval::{evaluate, EvalOptions, EvalReport};
use kiln_runtime::generate::{generate as generate_tokens, load_inference_with};
use kiln_runtime::sample::SamplingConfig;
use kiln_runtime::session::Executor;
use kiln_runtime::train::{
    interrupt_flag, train as run_train, CrashPoint, ProgressOutput, TrainOptions, TrainOutcome,
    TrainSummary,
};
use miette::miette;

/// Environment variable of the crash-safety test hook: `checkpoint:STEP` or `latest:STEP` makes
/// `kiln train` kill itself in the middle of writing that step's checkpoint or `latest` pointer.
pub const CRASH_ENV: &str = "KILN_TEST_CRASH";

fn executor(name: Option<&str>) -> miette::Result<Executor> {
    match name {
        None => Ok(Executor::DEFAULT),
        Some(n) => n
            .parse()
            .map_err(|e: String| miette!(code = "cli::executor", "{e}")),
    }
}

fn load_config(config: &Path, set: &[String], out: Option<&Path>) -> miette::Result<RunConfig> {
    // A bare file name has an empty parent, which would leave the config's paths relative to
    // the current folder; checkpoints store them, so anchor them now.
    let config = match config.parent() {
        Some(p) if p.as_os_str().is_empty() => Path::new(".").join(config),
        _ => config.to_path_buf(),
    };
    let mut cfg = RunConfig::load(&config, set)?;
    if let Some(out) = out {
        cfg.out_dir = std::path::absolute(out).unwrap_or_else(|_| out.to_path_buf());
    }
    Ok(cfg)
}

/// The options `kiln train` and `kiln finetune` run with: Ctrl-C stops after the current step
/// with a checkpoint, and the crash hook (`KILN_CRASH_AT`, for the kill tests) when asked.
fn train_options(
    executor: Executor,
    resume: bool,
    crash_hook: bool,
    profile: bool,
) -> miette::Result<TrainOptions> {
    let crash = match std::env::var(CRASH_ENV) {
        Ok(v) if crash_hook => Some(
            v.parse::<CrashPoint>()
                .map_err(|e| miette!(code = "cli::crash_hook", "{CRASH_ENV}: {e}"))?,
        ),
        _ => None,
    };
    let stop = interrupt_flag().map_err(|e| {
        miette!(
            code = "cli::signals",
            "cannot install the interrupt handler: {e}"
        )
    })?;
    Ok(TrainOptions {
        executor,
        resume,
        stop: Some(stop),
        progress: ProgressOutput::Auto,
        crash,
        profile,
    })
}

/// The last record and the checkpoint of a run, on stderr; the exit code (130 when interrupted).
fn report_run(summary: &TrainSummary, extra: &[String]) -> ExitCode {
    if let Some(r) = &summary.last {
        let mut parts = vec![format!("step {}", r.step)];
        if let Some(l) = r.loss {
            parts.push(format!("train loss {l:.4}"));
        }
        if let Some(l) = r.val_loss {
            parts.push(format!("val loss {l:.4}"));
        }
        if let Some(l) = r.full_val_loss {
            parts.push(format!("full val loss {l:.4}"));
        }
        eprintln!("{}", parts.join(", "));
    }
    if let Some(c) = &summary.checkpoint {
        eprintln!("checkpoint: {}", c.display());
    }
    for line in extra {
        eprintln!("{line}");
    }
    match summary.outcome {
        TrainOutcome::Finished => ExitCode::SUCCESS,
        TrainOutcome::Interrupted => ExitCode::from(130),
    }
}

pub fn train(
    config: &Path,
    set: &[String],
    out: Option<&Path>,
    resume: bool,
    exec: Option<&str>,
    profile: bool,
) -> miette::Result<ExitCode> {
    let executor = executor(exec)?;
    let cfg = load_config(config, set, out)?;
    let opts = train_options(executor, resume, true, profile)?;
    let summary = run_train(&cfg, opts)?;
    let folder = format!("run folder: {}", summary.out_dir.display());
    Ok(report_run(&summary, &[folder]))
}

pub fn finetune(
    config: &Path,
    set: &[String],
    out: Option<&Path>,
    resume: bool,
    exec: Option<&str>,
) -> miette::Result<ExitCode> {
    let executor = executor(exec)?;
    let cfg = load_config(config, set, out)?;
    let opts = train_options(executor, resume, false, false)?;
    let summary = kiln_runtime::finetune::finetune(&cfg, opts)?;
    let pct = if summary.total > 0 {
        100.0 * summary.trainable as f64 / summary.total as f64
    } else {
        0.0
    };
    eprintln!(
        "trainable parameters: {} of {} ({pct:.2}%)",
        summary.trainable, summary.total
    );
    let adapter = summary
        .adapter
        .iter()
        .map(|a| format!("LoRA weights: {}", a.display()))
        .collect::<Vec<_>>();
    Ok(report_run(&summary.train, &adapter))
}

/// Where `kiln eval` reports: JSON lines or text on stdout, and optionally per-example files.
pub struct EvalOutput<'a> {
    pub json: bool,
    pub log_samples: Option<&'a Path>,
}

#[allow(clippy::too_many_arguments)]
pub fn eval(
    config: &Path,
    set: &[String],
    checkpoint: &Path,
    tasks: &[String],
    tasks_dir: &Path,
    output: EvalOutput<'_>,
    num_fewshot: usize,
    limit: Option<usize>,
    max_batches: Option<usize>,
    exec: Option<&str>,
) -> miette::Result<ExitCode> {
    let executor = executor(exec)?;
    let cfg = load_config(config, set, None)?;
    let json = output.json;
    if output.log_samples.is_some() && tasks.is_empty() {
        return Err(miette!(
            code = "cli::usage",
            help = "name tasks with --task",
            "--log-samples records the examples of evaluation tasks; none was given"
        ));
    }
    let opts = EvalOptions {
        executor,
        checkpoint: checkpoint.to_path_buf(),
        tasks: tasks.to_vec(),
        tasks_dir: tasks_dir.to_path_buf(),
        num_fewshot,
        limit,
        max_batches,
    };
    match evaluate(&cfg, &opts)? {
        EvalReport::Validation(v) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({"split": "val", "loss": v.loss, "perplexity": v.perplexity, v.unit: v.tokens})
                );
            } else {
                println!(
                    "val loss {:.4}, perplexity {:.4} ({} {})",
                    v.loss, v.perplexity, v.tokens, v.unit
                );
            }
        }
        EvalReport::Tasks(reports) => {
            if let Some(dir) = output.log_samples {
                std::fs::create_dir_all(dir).map_err(|e| {
                    miette!(code = "cli::io", "cannot create {}: {e}", dir.display())
                })?;
                for r in &reports {
                    let text: String = r.samples.iter().map(|v| format!("{v}\n")).collect();
                    super::spec::write_atomic(&dir.join(format!("{}.jsonl", r.task)), &text)?;
                }
            }
            for r in reports {
                if json {
                    println!("{}", r.to_json());
                } else {
                    let metrics: Vec<String> = r
                        .metrics
                        .iter()
                        .filter(|(k, _)| !k.ends_with("_stderr"))
                        .map(|(k, v)| format!("{k} {v:.4}"))
                        .collect();
                    println!("{}: {} (n = {})", r.task, metrics.join(", "), r.n);
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// How `kiln generate` samples.
pub struct GenerateFlags {
    pub sampling: SamplingConfig,
    pub stop: Vec<String>,
    pub kv_cache: bool,
}

pub fn generate(
    checkpoint: &Path,
    prompt: &str,
    tokens: usize,
    flags: GenerateFlags,
    exec: Option<&str>,
) -> miette::Result<ExitCode> {
    let executor = executor(exec)?;
    let mut inference = load_inference_with(checkpoint, executor, flags.kv_cache)?;
    if let Some(why) = &inference.no_cache_reason {
        eprintln!("note: decoding without a key/value cache ({why})");
    }
    let out = generate_tokens(&mut inference, prompt, tokens, flags.sampling, &flags.stop)?;
    if inference.seq2seq.is_some() {
        // An encoder-decoder answers the prompt rather than continuing it.
        println!("{}", out.text);
    } else {
        println!("{prompt}{}", out.text);
    }
    Ok(ExitCode::SUCCESS)
}

pub fn data_prepare(
    input: &Path,
    output: &Path,
    tokenizer: &str,
    val_fraction: f64,
) -> miette::Result<ExitCode> {
    let tok = match tokenizer {
        "char" => TokenizerConfig::Char,
        "byte" => TokenizerConfig::Byte,
        path => TokenizerConfig::TokenizerJson(PathBuf::from(path)),
    };
    let report = prepare_token_file(input, &tok, val_fraction, output)?;
    eprintln!(
        "{}: {} train + {} validation tokens, vocabulary {}, {} bytes per token",
        output.display(),
        report.train_tokens,
        report.val_tokens,
        report.vocab_size,
        report.token_bytes
    );
    Ok(ExitCode::SUCCESS)
}
