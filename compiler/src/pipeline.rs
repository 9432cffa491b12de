//! The whole pass order in one readable function (`optimize`), with a comment wherever the order
//! matters.
//!
//! Passes come from `passes::REGISTRY` by name. With `PipelineOptions::verify_each` (on in tests)
//! the IR verifier (`verify_graph`) runs on the input and after every pass; a pass that breaks the graph stops the
//! pipeline with the printed IR and the verifier's errors inline under the offending lines.
//! `optimize_with_log` also returns what each pass did, for `kiln compile` and for debugging.

use std::fmt;
use std::time::Instant;

use crate::ir::print::print_with_errors;
use crate::ir::{verify, Graph, IrError, VerifyError};
use crate::passes::{
    self, const_fold, cse, dce, layout, simplify, strip_stop_gradient, Pass, PassResult,
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PipelineOptions {
    /// Run `ir::verify` on the input and after every pass.
    pub verify_each: bool,
    /// At most this many rounds of the cleanup fixpoint (fold, simplify, CSE, DCE).
    pub max_rounds: usize,
    /// Keep `stop_gradient`: set it when the optimized graph will be differentiated again.
    pub keep_stop_gradient: bool,
    /// Registry names of passes to skip (to bisect a miscompile).
    pub disable: Vec<String>,
}

impl Default for PipelineOptions {
    fn default() -> Self {
        PipelineOptions {
            verify_each: false,
            max_rounds: 8,
            keep_stop_gradient: false,
            disable: Vec::new(),
        }
    }
}

impl PipelineOptions {
    /// The options tests use: verify after every pass.
    pub fn verified() -> Self {
        PipelineOptions {
            verify_each: true,
            ..Self::default()
        }
    }
}

/// One run of one pass.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PassRun {
    pub pass: &'static str,
    /// Cleanup round (0 outside the fixpoint loop).
    pub round: usize,
    pub result: PassResult,
    pub nodes_after: usize,
    /// Wall time of the pass (not deterministic: never print it into snapshots).
    pub micros: u128,
}

/// What the pipeline did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PipelineLog {
    pub runs: Vec<PassRun>,
    pub nodes_before: usize,
    pub nodes_after: usize,
    /// Cleanup rounds run.
    pub rounds: usize,
    /// The cleanup loop reached a fixpoint (rather than `max_rounds`).
    pub converged: bool,
}

impl fmt::Display for PipelineLog {
    /// One line per pass run that changed something, then a summary; no timings.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for r in self.runs.iter().filter(|r| r.result.changed) {
            writeln!(
                f,
                "{:<20} round {}: {} nodes after ({})",
                r.pass, r.round, r.nodes_after, r.result.stats
            )?;
        }
        writeln!(
            f,
            "{} -> {} nodes in {} cleanup round(s){}",
            self.nodes_before,
            self.nodes_after,
            self.rounds,
            if self.converged {
                ""
            } else {
                " (round limit reached)"
            }
        )
    }
}

#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum PipelineError {
    #[error("the graph given to the pipeline does not verify ({} error(s)):\n{ir}", errors.len())]
    InvalidInput {
        errors: Vec<VerifyError>,
        ir: String,
    },
    #[error("pass `{pass}` (round {round}) broke the IR ({} error(s)):\n{ir}", errors.len())]
    Verify {
        pass: &'static str,
        round: usize,
        errors: Vec<VerifyError>,
        /// The graph after the pass, errors inline.
        ir: String,
    },
    #[error("pass `{pass}`: {error}")]
    Ir {
        pass: &'static str,
        error: Box<IrError>,
    },
    #[error("no pass named `{0}` in the registry")]
    UnknownPass(String),
}

/// Optimizes `graph` with every pass, in the order below.
pub fn optimize(graph: Graph, opts: &PipelineOptions) -> Result<Graph, PipelineError> {
    optimize_with_log(graph, opts).map(|(g, _)| g)
}

pub fn optimize_with_log(
    graph: Graph,
    opts: &PipelineOptions,
) -> Result<(Graph, PipelineLog), PipelineError> {
    let mut p = Runner::new(graph, opts)?;

    // stop_gradient first: it is an identity once autodiff has run, and it hides equal values
    // from CSE (softmax's max is used both under it and bare).
    if !opts.keep_stop_gradient {
        p.run(strip_stop_gradient::NAME, 0)?;
    }

    // Cleanup to a fixpoint. Folding first makes the uniform constants that simplify's identities
    // (x*1, x+0) recognise; simplify's forwarding exposes duplicates to CSE; DCE runs last in a
    // round because the other three orphan nodes. Each can enable the others, hence the loop.
    let mut round = 0;
    let mut converged = false;
    while round < opts.max_rounds {
        round += 1;
        let mut changed = false;
        changed |= p.run(const_fold::NAME, round)?;
        changed |= p.run(simplify::NAME, round)?;
        changed |= p.run(cse::NAME, round)?;
        changed |= p.run(dce::NAME, round)?;
        if !changed {
            converged = true;
            break;
        }
    }

    // Layout after cleanup: simplify has composed permute chains by now, so layout sees the
    // final permutation of every matmul operand. It can leave duplicate leftover permutes (CSE)
    // and permutes nobody reads (DCE).
    p.run(layout::NAME, 0)?;
    p.run(cse::NAME, 0)?;
    p.run(dce::NAME, 0)?;

    // Fusion slots in here: after layout (transposes are matmul flags by then) on the final,
    // cleaned-up graph.

    let Runner { graph, mut log, .. } = p;
    log.rounds = round;
    log.converged = converged;
    log.nodes_after = graph.len();
    Ok((graph, log))
}

/// The IR verifier, as every pass boundary runs it.
pub fn verify_graph(g: &Graph) -> Result<(), Vec<VerifyError>> {
    verify(g)
}

/// Runs one pass and, with `verify`, the verifier after it (errors name the pass and the round).
pub fn run_pass(
    g: &mut Graph,
    pass: &Pass,
    verify: bool,
    round: usize,
) -> Result<PassResult, PipelineError> {
    let result = (pass.run)(g).map_err(|error| PipelineError::Ir {
        pass: pass.name,
        error: Box::new(error),
    })?;
    if verify {
        if let Err(errors) = verify_graph(g) {
            let ir = print_with_errors(g, &errors);
            return Err(PipelineError::Verify {
                pass: pass.name,
                round,
                errors,
                ir,
            });
        }
    }
    Ok(result)
}

struct Runner<'o> {
    graph: Graph,
    opts: &'o PipelineOptions,
    log: PipelineLog,
}

impl<'o> Runner<'o> {
    fn new(graph: Graph, opts: &'o PipelineOptions) -> Result<Self, PipelineError> {
        for name in &opts.disable {
            if passes::lookup(name).is_none() {
                return Err(PipelineError::UnknownPass(name.clone()));
            }
        }
        if opts.verify_each {
            if let Err(errors) = verify_graph(&graph) {
                let ir = print_with_errors(&graph, &errors);
                return Err(PipelineError::InvalidInput { errors, ir });
            }
        }
        let log = PipelineLog {
            nodes_before: graph.len(),
            ..PipelineLog::default()
        };
        Ok(Runner { graph, opts, log })
    }

    /// Runs the registered pass `name` (unless disabled); returns whether it changed the graph.
    fn run(&mut self, name: &'static str, round: usize) -> Result<bool, PipelineError> {
        if self.opts.disable.iter().any(|d| d == name) {
            return Ok(false);
        }
        let pass = passes::lookup(name).ok_or_else(|| PipelineError::UnknownPass(name.into()))?;
        let t = Instant::now();
        let result = run_pass(&mut self.graph, pass, self.opts.verify_each, round)?;
        let micros = t.elapsed().as_micros();
        let changed = result.changed;
        self.log.runs.push(PassRun {
            pass: pass.name,
            round,
            result,
            nodes_after: self.graph.len(),
            micros,
        });
        Ok(changed)
    }
}
