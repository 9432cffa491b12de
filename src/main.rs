//! The `kiln` command line: check, format and inspect specs; compile, plan, train, evaluate.
//!
//! Each subcommand is a thin shell over a library call; diagnostics are miette reports on stderr,
//! and the exit code is 0 on success, 1 on user errors (diagnostics), 2 on usage errors (clap).

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(report) => {
            eprintln!("{report:?}");
            ExitCode::from(1)
        }
    }
}
