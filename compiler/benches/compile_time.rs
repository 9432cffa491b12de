//! Compile time of LLaMA-65B's training step (AdamW, clipping) at 8, 16, 32, 64 and 80 layers:
//! the whole `compile::compile` call, and its parts (sema, bind, training step, pass pipeline on
//! the training graph). Prints a table; it asserts nothing (timings are not tests).
//!
//! Run: `cargo bench -p kiln-compiler --bench compile_time` (release profile). Each size is
//! compiled `REPEATS` times and the fastest run is reported.

use std::path::Path;
use std::time::Instant;

use kiln_compiler::compile::{bindings, compile, CompileOptions};
use kiln_compiler::ir::Dim;
use kiln_compiler::pipeline::{optimize_with_log, PipelineOptions};
use kiln_compiler::sema::{render, Request, Value, Workspace};
use kiln_compiler::train::{training_step, StepOptions};

const REPEATS: usize = 3;

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
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
        ..CompileOptions::default()
    };
    println!("LLaMA-65B training step (AdamW, clip 1.0, batch 1, seq 2048), best of {REPEATS}");
    println!(
        "{:>6} {:>8} {:>8} {:>9} {:>9} {:>9} {:>10} {:>11} {:>9}",
        "layers",
        "nodes",
        "after",
        "sema ms",
        "step ms",
        "passes ms",
        "compile ms",
        "ms / layer",
        "TFLOP"
    );
    for layers in [8i64, 16, 32, 64, 80] {
        let req = Request {
            config: "llama_65b".into(),
            overrides: vec![("layers".into(), Value::Int(Dim::c(layers)))],
            objective: Some(("causal_lm".into(), vec![])),
            training: true,
        };
        let mut best = [f64::INFINITY; 4];
        let (mut before, mut after, mut flops) = (0, 0, 0u64);
        for _ in 0..REPEATS {
            // The parts, as `compile` runs them.
            let t = Instant::now();
            let inst = ws.instantiate(&req).unwrap_or_else(|ds| {
                panic!("{}", ds.iter().map(|d| render(d)).collect::<String>())
            });
            let fwd = inst.graph.bind(&bindings(&opts).unwrap()).unwrap();
            let sema = ms(t);
            let t = Instant::now();
            let train = training_step(&fwd, &step).unwrap();
            let step_ms = ms(t);
            before = train.len();
            let t = Instant::now();
            let (opt, _) = optimize_with_log(train, &PipelineOptions::default()).unwrap();
            let passes = ms(t);
            after = opt.len();
            // The whole entry point (it also optimizes the forward graph and counts).
            let t = Instant::now();
            let c = compile(&ws, &req, &opts).unwrap_or_else(|ds| {
                panic!("{}", ds.iter().map(|d| render(d)).collect::<String>())
            });
            let total = ms(t);
            flops = c.stats.flops_forward + c.stats.flops_backward + c.stats.flops_optimizer;
            for (b, x) in best.iter_mut().zip([sema, step_ms, passes, total]) {
                *b = b.min(x);
            }
        }
        println!(
            "{:>6} {:>8} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>11.2} {:>9.1}",
            layers,
            before,
            after,
            best[0],
            best[1],
            best[2],
            best[3],
            best[3] / layers as f64,
            flops as f64 / 1e12
        );
    }
}
