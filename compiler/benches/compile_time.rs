//! Compile time of LLaMA-65B's training step (AdamW, clipping) at 8, 16, 32, 64 and 80 layers:
//! the whole `compile::compile` call with fusion, and its parts (sema + bind + attention
//! recognition, the training step, the pass pipeline on the training graph, fusion into kernels). Prints a table; it asserts nothing (timings are not tests).
//!
//! Run: `cargo bench -p kiln-compiler --bench compile_time` (release profile);
//! `KILN_BENCH_LAYERS=80` runs one size (for profiling). Each size is compiled `REPEATS` times and
//! the fastest run is reported. Times are the thread's CPU time (Linux `/proc/thread-self/
//! schedstat`), so other work on a shared machine does not inflate them; the last column is the
//! wall time of `compile`, for comparison. Elsewhere both columns are wall time.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use kiln_compiler::compile::{bindings, compile, CompileOptions};
use kiln_compiler::ir::Dim;
use kiln_compiler::passes::attention::{recognize, stop_shift_gradients};
use kiln_compiler::passes::fusion::fuse;
use kiln_compiler::pipeline::{optimize_with_log, PipelineOptions};
use kiln_compiler::sema::{render, Request, Value, Workspace};
use kiln_compiler::train::{training_step, StepOptions};

const REPEATS: usize = 3;

/// A clock: the thread's CPU time where Linux reports it, wall time otherwise.
struct Clock {
    wall: Instant,
    cpu: Option<u64>,
}

fn cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

impl Clock {
    fn start() -> Clock {
        Clock {
            wall: Instant::now(),
            cpu: cpu_ns(),
        }
    }
    /// (CPU or wall ms, wall ms).
    fn ms(&self) -> (f64, f64) {
        let wall = self.wall.elapsed().as_secs_f64() * 1e3;
        let cpu = match (self.cpu, cpu_ns()) {
            (Some(a), Some(b)) => (b - a) as f64 / 1e6,
            _ => wall,
        };
        (cpu, wall)
    }
}

fn main() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("specs/llama.kiln")).expect("specs/llama.kiln");
    let mut ws = Workspace::new();
    ws.add_file("specs/llama.kiln", &text);
    let step = StepOptions {
        clip: Some(1.0),
        ..StepOptions::default()
    };
    let opts = CompileOptions {
        train: Some(step.clone()),
        batch: 1,
        seq: 2048,
        fuse: true,
        ..CompileOptions::default()
    };
    let sizes: Vec<i64> = match std::env::var("KILN_BENCH_LAYERS") {
        Ok(s) => s.split(',').filter_map(|x| x.trim().parse().ok()).collect(),
        Err(_) => vec![8, 16, 32, 64, 80],
    };
    let clock = if cpu_ns().is_some() { "CPU" } else { "wall" };
    println!(
        "LLaMA-65B training step (AdamW, clip 1.0, batch 1, seq 2048), best of {REPEATS}, {clock} ms"
    );
    println!(
        "{:>6} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>9} {:>9} {:>8}",
        "layers",
        "nodes",
        "after",
        "kernels",
        "sema",
        "step",
        "passes",
        "fuse",
        "compile",
        "/ layer",
        "wall",
        "TFLOP"
    );
    for layers in sizes {
        let req = Request {
            config: "llama_65b".into(),
            overrides: vec![("layers".into(), Value::Int(Dim::c(layers)))],
            objective: Some(("causal_lm".into(), vec![])),
            training: true,
        };
        let mut best = [f64::INFINITY; 6];
        let (mut before, mut after, mut kernels, mut flops) = (0, 0, 0, 0u64);
        let mut per_pass: BTreeMap<&str, f64> = BTreeMap::new();
        for _ in 0..REPEATS {
            // The parts, as `compile` runs them.
            let t = Clock::start();
            let inst = ws.instantiate(&req).unwrap_or_else(|ds| {
                panic!("{}", ds.iter().map(|d| render(d)).collect::<String>())
            });
            let mut fwd = inst.graph.bind(&bindings(&opts).unwrap()).unwrap();
            recognize(&mut fwd).unwrap();
            stop_shift_gradients(&mut fwd).unwrap();
            let sema = t.ms().0;
            let t = Clock::start();
            let train = training_step(&fwd, &step).unwrap();
            let step_ms = t.ms().0;
            before = train.len();
            let t = Clock::start();
            let (opt, log) = optimize_with_log(train, &PipelineOptions::default()).unwrap();
            let passes = t.ms().0;
            after = opt.len();
            let t = Clock::start();
            let program = fuse(&opt).unwrap();
            let fuse_ms = t.ms().0;
            kernels = program.steps.len();
            drop(program);
            per_pass.clear();
            for r in &log.runs {
                *per_pass.entry(r.pass).or_insert(0.0) += r.micros as f64 / 1e3;
            }
            drop((inst, fwd, opt));
            // The whole entry point (it also optimizes the forward graph and counts).
            let t = Clock::start();
            let c = compile(&ws, &req, &opts).unwrap_or_else(|ds| {
                panic!("{}", ds.iter().map(|d| render(d)).collect::<String>())
            });
            let (total, wall) = t.ms();
            flops = c.stats.flops_forward + c.stats.flops_backward + c.stats.flops_optimizer;
            for (b, x) in best
                .iter_mut()
                .zip([sema, step_ms, passes, fuse_ms, total, wall])
            {
                *b = b.min(x);
            }
        }
        println!(
            "{:>6} {:>8} {:>8} {:>8} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9.1} {:>9.2} {:>9.1} {:>8.1}",
            layers,
            before,
            after,
            kernels,
            best[0],
            best[1],
            best[2],
            best[3],
            best[4],
            best[4] / layers as f64,
            best[5],
            flops as f64 / 1e12
        );
        let parts: Vec<String> = per_pass
            .iter()
            .map(|(k, v)| format!("{k} {v:.0}"))
            .collect();
        println!(
            "{:>6} pipeline on the training graph, wall ms by pass (last run): {}",
            "",
            parts.join(", ")
        );
    }
}
