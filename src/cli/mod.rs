//! Subcommand definitions (clap) and their dispatch.

mod plan;
mod spec;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "kiln", version, about = "Kiln: write a language model as a spec, compile it, train it")]
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
}

pub fn run(cli: Cli) -> miette::Result<ExitCode> {
    match cli.command {
        Command::Check { files } => spec::check(&files),
        Command::Fmt { check, files } => spec::fmt(&files, check),
        Command::Params { spec, model, set, json } => spec::params(&spec, model.as_deref(), &set, json),
        Command::Plan { args, json, emit } => plan::plan(&args, json, emit.as_deref()),
        Command::Explain { args, query } => plan::explain(&args, &query),
    }
}
