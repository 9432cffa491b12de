//! Training-step benchmark of the fused CPU executor: nanoGPT's Shakespeare configs.
//!
//! `cargo bench -p kiln-runtime --bench step [-- char|large]` prints, per config: compile time
//! (fusion + JIT), ms/step (mean and best over the measured steps), model FLOPs and the
//! per-kernel-kind breakdown from a profiled run (time per step, share, GFLOP/s).

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use kiln_compiler::ir::{Bindings, Graph};
use kiln_compiler::passes::attention::{recognize, stop_shift_gradients};
use kiln_compiler::sema::{Request, Workspace};
use kiln_compiler::train::{training_step, Optimizer, StepOptions};
use kiln_runtime::backend::{Backend, InputTensor, StepRng};
use kiln_runtime::cpu::CpuBackend;

fn step_graph(config: &str) -> Graph {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("specs/gpt2.kiln")).expect("spec");
    let mut ws = Workspace::new();
    ws.add_file("specs/gpt2.kiln", &text);
    let req = Request {
        config: config.into(),
        objective: Some(("causal_lm".into(), vec![])),
        training: true,
        ..Default::default()
    };
    let Ok(inst) = ws.instantiate(&req) else {
        panic!("cannot instantiate {config}")
    };
    let mut fwd = inst.graph;
    let loss = fwd.output("loss").expect("loss");
    fwd.clear_outputs();
    fwd.add_output("loss", loss).expect("output");
    let n = recognize(&mut fwd).expect("attention recognition");
    stop_shift_gradients(&mut fwd).expect("softmax maxima");
    eprintln!("{config}: {n} attention layers recognised (0 when attention dropout keeps the composition)");
    // nanoGPT's settings: AdamW(betas 0.9, 0.99, wd 0.1), clip 1.0.
    let opts = StepOptions {
        optimizer: Optimizer::AdamW {
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1,
        },
        clip: Some(1.0),
        ..Default::default()
    };
    training_step(&fwd, &opts).expect("training step")
}

/// User + system CPU seconds of this process (all threads), from /proc (0 where unavailable).
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else {
        return 0.0;
    };
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map(|r| r.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

fn tokens(b: usize, t: usize, seed: u64) -> Vec<i32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..b * (t + 1))
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % 65) as i32
        })
        .collect()
}

fn bench(config: &str, batch: usize, seq: usize, warmup: u64, steps: u64) {
    let t0 = Instant::now();
    let g = step_graph(config);
    let b = Bindings::new()
        .with("batch", batch as i64)
        .with("seq", seq as i64);
    let mut backend = CpuBackend::from_graph(&g, &b, 1337).expect("backend");
    let compile = t0.elapsed();
    let p = backend.program();
    let counts = p.kind_counts();
    let plan = backend.executor().arena_plan();
    eprintln!(
        "{config}: {} steps {:?}, arena {:.1} MiB (temporaries {:.1} MiB unshared), step flops {:.2} GFLOP",
        p.steps.len(),
        counts,
        backend.executor().arena_bytes() as f64 / (1 << 20) as f64,
        plan.temp_words_unshared as f64 * 4.0 / (1 << 20) as f64,
        p.flops() as f64 / 1e9
    );
    let mut run = |s: u64| {
        let mut ins = BTreeMap::new();
        ins.insert(
            "tokens".to_string(),
            InputTensor::I32 {
                shape: vec![batch, seq + 1],
                data: tokens(batch, seq, s),
            },
        );
        ins.insert("lr".to_string(), InputTensor::scalar(1e-3));
        ins.insert("step".to_string(), InputTensor::scalar(s as f32));
        backend
            .run(
                &ins,
                StepRng {
                    seed: 1337,
                    step: s,
                },
            )
            .expect("step")
    };
    for s in 1..=warmup {
        run(s);
    }
    let mut times = Vec::new();
    let mut last_loss = 0.0;
    let cpu0 = cpu_seconds();
    for s in warmup + 1..=warmup + steps {
        let t = Instant::now();
        let out = run(s);
        times.push(t.elapsed().as_secs_f64() * 1e3);
        last_loss = out["loss"].data[0];
    }
    let cpu = (cpu_seconds() - cpu0) * 1e3 / steps as f64;
    let mean = times.iter().sum::<f64>() / times.len() as f64;
    let best = times.iter().copied().fold(f64::INFINITY, f64::min);
    println!(
        "{config:<16} B={batch:<3} T={seq:<4} compile {:>7.0} ms   step mean {:>8.2} ms   best {:>8.2} ms   cpu {:>8.2} ms/step   loss {:.4}",
        compile.as_secs_f64() * 1e3,
        mean,
        best,
        cpu,
        last_loss
    );
    drop(run);
    backend.set_profiling(true);
    backend.reset_profile();
    for s in 0..steps.min(30) {
        let mut ins = BTreeMap::new();
        ins.insert(
            "tokens".to_string(),
            InputTensor::I32 {
                shape: vec![batch, seq + 1],
                data: tokens(batch, seq, 1000 + s),
            },
        );
        ins.insert("lr".to_string(), InputTensor::scalar(1e-3));
        ins.insert(
            "step".to_string(),
            InputTensor::scalar((warmup + steps + s + 1) as f32),
        );
        backend
            .run(
                &ins,
                StepRng {
                    seed: 1337,
                    step: s,
                },
            )
            .expect("step");
    }
    println!("{}", backend.profile());
    let fastest = backend.executor().fastest_by_kind();
    let total: f64 = fastest.iter().map(|(_, t)| t.as_secs_f64()).sum();
    println!(
        "sum of each kernel's fastest launch: {:.2} ms/step",
        total * 1e3
    );
    for (k, t) in fastest {
        println!("  {:<20} {:>9.3} ms", k, t.as_secs_f64() * 1e3);
    }
    println!("slowest kernels (fastest launch, ms):");
    for (i, t) in backend.executor().slowest_steps(40) {
        let st = &backend.program().steps[i];
        let size = match st.launch {
            kiln_compiler::program::Launch::Grid { rows, cols } => format!("{rows}x{cols}"),
            kiln_compiler::program::Launch::Once => match &st.kernel {
                kiln_compiler::kernel::Kernel::Gemm(g) => format!(
                    "b{} {}x{}x{}{}{}",
                    g.batch,
                    g.m,
                    g.n,
                    g.k,
                    if g.a.transposed { " At" } else { "" },
                    if g.b.transposed { " Bt" } else { "" }
                ),
                k => k
                    .to_string()
                    .split_whitespace()
                    .take(3)
                    .collect::<Vec<_>>()
                    .join(" "),
            },
        };
        println!(
            "  {:>8.3}  s{:<4} {:<14} {:<28} {}",
            t.as_secs_f64() * 1e3,
            i,
            st.kind(),
            size,
            st.origin
        );
    }
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let want = |name: &str| args.is_empty() || args.iter().any(|a| a == name);
    println!("rayon threads: {}", rayon::current_num_threads());
    if want("char") && !args.iter().any(|a| a == "dump") {
        bench("gpt2_char", 12, 64, 5, 30);
    }
    if want("dump") {
        dump("gpt2_char", 12, 64);
        dump("gpt2_char_large", 8, 256);
    }
    if want("large") {
        bench("gpt2_char_large", 8, 256, 1, 4);
    }
}

#[allow(dead_code)]
fn dump(config: &str, batch: usize, seq: usize) {
    let g = step_graph(config);
    let b = Bindings::new()
        .with("batch", batch as i64)
        .with("seq", seq as i64);
    let backend = CpuBackend::from_graph(&g, &b, 1337).expect("backend");
    std::fs::write(
        format!("/tmp/{config}.kernels.txt"),
        backend.program().listing(),
    )
    .expect("write");
}
