//! Subcommand definitions (clap) and their dispatch.

mod compile;
mod hf;
mod plan;
mod run;
mod spec;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "kiln",
    version,
    about = "Kiln: write a language model as a spec, compile it, train it"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Check specs: syntax, names, shapes, dtypes, divisibility, plans. Exit 1 on any error.
    Check {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Format specs canonically (comments kept). With --check, only report files that would change.
    Fmt {
        #[arg(long)]
        check: bool,
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// Parameter counts of a spec's named configs (total and non-embedding).
    Params {
        spec: PathBuf,
        /// A named config (or model) of the spec; without it, every config of the file.
        #[arg(long)]
        model: Option<String>,
        /// Hyperparameter overrides, `--set d=512`.
        #[arg(long = "set", value_name = "K=V")]
        set: Vec<String>,
        /// One JSON object per config.
        #[arg(long)]
        json: bool,
    },
    /// Compile a config (and with --train its training step) and print the IR, Graphviz or a
    /// JSON summary (op counts, FLOPs, bytes).
    Compile(compile::CompileArgs),
    /// Train a model as a run config (YAML) says; writes metrics, checkpoints and a loss plot.
    Train {
        /// The run config (YAML).
        config: PathBuf,
        /// Run-config overrides, `--set optimizer.lr=3e-4`.
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
        /// Output folder (replaces the config's `out_dir`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue from the latest checkpoint in the output folder.
        #[arg(long)]
        resume: bool,
        /// What executes the programs: `cpu` (fused kernels, the default) or `interp` (the
        /// reference interpreter).
        #[arg(long)]
        executor: Option<String>,
        /// Print where the time went at the end: loop phases (training step, data, evaluation,
        /// checkpoints) and, with the cpu executor, time and GFLOP/s per kernel kind and the
        /// slowest kernels.
        #[arg(long)]
        profile: bool,
    },
    /// Fine-tune a checkpoint as the run config's `finetune` section says (its base checkpoint,
    /// frozen parameters, LoRA); writes the LoRA weights alone to `adapter.safetensors`.
    Finetune {
        /// The run config (YAML) with a `finetune` section.
        config: PathBuf,
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
        /// Output folder (replaces the config's `out_dir`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Continue from the latest checkpoint in the output folder.
        #[arg(long)]
        resume: bool,
        #[arg(long)]
        executor: Option<String>,
    },
    /// Validation loss and perplexity of a checkpoint, or its scores on evaluation tasks.
    Eval {
        /// The run config the checkpoint was trained with (data, spec, model).
        config: PathBuf,
        /// A checkpoint written by `kiln train`.
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long = "set", value_name = "PATH=VALUE")]
        set: Vec<String>,
        /// An evaluation task (repeatable): shakespeare_nextline, shakespeare_speaker_mc, shakespeare_speaker.
        #[arg(long = "task", value_name = "NAME")]
        tasks: Vec<String>,
        /// Folder of the task files.
        #[arg(long, default_value = "data/tasks")]
        tasks_dir: PathBuf,
        /// Few-shot examples per prompt.
        #[arg(long, default_value_t = 0)]
        fewshot: usize,
        /// Only the first N examples of each task.
        #[arg(long)]
        limit: Option<usize>,
        /// Only the first N validation batches.
        #[arg(long)]
        max_batches: Option<usize>,
        /// One JSON object per result.
        #[arg(long)]
        json: bool,
        /// Write each task's per-example results to DIR/<task>.jsonl (scores, prediction, hit),
        /// for paired comparisons of two checkpoints.
        #[arg(long, value_name = "DIR")]
        log_samples: Option<PathBuf>,
        #[arg(long)]
        executor: Option<String>,
    },
    /// Continue a prompt with a trained checkpoint.
    Generate {
        /// A checkpoint written by `kiln train` (it carries its spec, config and tokenizer).
        checkpoint: PathBuf,
        #[arg(long)]
        prompt: String,
        /// Tokens to generate.
        #[arg(long, default_value_t = 200)]
        tokens: usize,
        /// 0 is greedy.
        #[arg(long, default_value_t = 1.0)]
        temperature: f32,
        #[arg(long)]
        top_k: Option<usize>,
        #[arg(long)]
        top_p: Option<f32>,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Stop after this string (repeatable); it is cut from the output.
        #[arg(long)]
        stop: Vec<String>,
        /// Recompute the whole window for every token instead of decoding with the key/value
        /// cache (same tokens, slower; for comparison).
        #[arg(long)]
        no_kv_cache: bool,
        #[arg(long)]
        executor: Option<String>,
    },
    /// Plan memory, recomputation and parallelism: per-device memory by category, FLOPs,
    /// communication, recompute overhead, estimated step time and MFU.
    Plan {
        #[command(flatten)]
        args: plan::PlanArgs,
        /// One JSON object per config.
        #[arg(long)]
        json: bool,
        /// Print the planned IR with its plan sections (`ir`) or each rank's program (`ranks`).
        #[arg(long)]
        emit: Option<String>,
    },
    /// Why a value is kept or recomputed, and how a parameter is sharded and communicated.
    Explain {
        #[command(flatten)]
        args: plan::PlanArgs,
        /// A parameter name, a value's name path, or a printed value number (`%12`).
        #[arg(value_name = "VALUE_OR_PARAM")]
        query: String,
    },
    /// Read a Hugging Face folder (`config.json` + safetensors) as a model of a spec.
    Import {
        /// The spec whose model the folder holds.
        #[arg(long)]
        spec: PathBuf,
        /// A named config or model of the spec; `config.json` sets its hyperparameters.
        #[arg(long)]
        model: String,
        /// The folder `save_pretrained` wrote.
        hf_dir: PathBuf,
        /// The Kiln checkpoint to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a checkpoint as a Hugging Face folder that `from_pretrained` loads.
    Export {
        /// A checkpoint from `kiln import` or `kiln train`.
        checkpoint: PathBuf,
        /// The folder to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Logits (and with labels the loss, with --grads every gradient) of a checkpoint on a batch,
    /// as `transformers` computes them: for comparison with a reference.
    Logits {
        checkpoint: PathBuf,
        /// safetensors with `input_ids` (and `decoder_input_ids`, `labels`) as integers.
        #[arg(long)]
        input: PathBuf,
        /// safetensors to write: `logits`, `loss`, `grad.<Hugging Face name>`.
        #[arg(long)]
        out: PathBuf,
        /// Also write the gradient of the loss for every parameter.
        #[arg(long)]
        grads: bool,
        /// `cpu` (default) or `interp`.
        #[arg(long)]
        executor: Option<String>,
    },
    /// Data preparation.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Tokenize a corpus once into a memory-mapped token file (`data.token_file` in a run config).
    Prepare {
        /// A text corpus.
        input: PathBuf,
        /// The token file to write.
        #[arg(long, short)]
        out: PathBuf,
        /// `char`, `byte`, or the path of a Hugging Face tokenizer.json.
        #[arg(long, default_value = "char")]
        tokenizer: String,
        /// Fraction held out for validation (the end of the corpus).
        #[arg(long, default_value_t = 0.1)]
        val_fraction: f64,
    },
}

pub fn run(cli: Cli) -> miette::Result<ExitCode> {
    match cli.command {
        Command::Check { files } => spec::check(&files),
        Command::Fmt { check, files } => spec::fmt(&files, check),
        Command::Params {
            spec,
            model,
            set,
            json,
        } => spec::params(&spec, model.as_deref(), &set, json),
        Command::Compile(args) => compile::run(&args),
        Command::Train {
            config,
            set,
            out,
            resume,
            executor,
            profile,
        } => run::train(
            &config,
            &set,
            out.as_deref(),
            resume,
            executor.as_deref(),
            profile,
        ),
        Command::Finetune {
            config,
            set,
            out,
            resume,
            executor,
        } => run::finetune(&config, &set, out.as_deref(), resume, executor.as_deref()),
        Command::Eval {
            config,
            checkpoint,
            set,
            tasks,
            tasks_dir,
            fewshot,
            limit,
            max_batches,
            json,
            log_samples,
            executor,
        } => run::eval(
            &config,
            &set,
            &checkpoint,
            &tasks,
            &tasks_dir,
            run::EvalOutput {
                json,
                log_samples: log_samples.as_deref(),
            },
            fewshot,
            limit,
            max_batches,
            executor.as_deref(),
        ),
        Command::Generate {
            checkpoint,
            prompt,
            tokens,
            temperature,
            top_k,
            top_p,
            seed,
            stop,
            no_kv_cache,
            executor,
        } => run::generate(
            &checkpoint,
            &prompt,
            tokens,
            run::GenerateFlags {
                sampling: kiln_runtime::sample::SamplingConfig {
                    temperature,
                    top_k,
                    top_p,
                    seed,
                },
                stop,
                kv_cache: !no_kv_cache,
            },
            executor.as_deref(),
        ),
        Command::Data {
            command:
                DataCommand::Prepare {
                    input,
                    out,
                    tokenizer,
                    val_fraction,
                },
        } => run::data_prepare(&input, &out, &tokenizer, val_fraction),
        Command::Import {
            spec,
            model,
            hf_dir,
            out,
        } => hf::import(&spec, &model, &hf_dir, &out),
        Command::Export { checkpoint, out } => hf::export(&checkpoint, &out),
        Command::Logits {
            checkpoint,
            input,
            out,
            grads,
            executor,
        } => hf::logits(&checkpoint, &input, &out, grads, executor.as_deref()),
        Command::Plan { args, json, emit } => plan::plan(&args, json, emit.as_deref()),
        Command::Explain { args, query } => plan::explain(&args, &query),
    }
}
