//! Subcommand definitions (clap) and their dispatch.

mod compile;
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
    /// Compile a config (and with --train its training step) and print the IR, Graphviz or a
    /// JSON summary (op counts, FLOPs, bytes).
    Compile(compile::CompileArgs),
}

pub fn run(cli: Cli) -> miette::Result<ExitCode> {
    match cli.command {
        Command::Check { files } => spec::check(&files),
        Command::Fmt { check, files } => spec::fmt(&files, check),
        Command::Params { spec, model, set, json } => spec::params(&spec, model.as_deref(), &set, json),
        Command::Compile(args) => compile::run(&args),
    }
}
