//! The arena the CPU runtime allocates is the one `kiln plan` reports, byte for byte, for every
//! tiny and character-level config of every spec: the plan comes from `plan::setup` +
//! `plan::analyze` (what `kiln plan --json` prints as `per_device_bytes.total`), the runtime is
//! built the way `kiln train` builds it (`session::compile_run` + `session::make_backend`; T5
//! through the same `session::prepare` / `compile_step` with the `seq2seq` objective `kiln plan`
//! plans), and its size is read from the executor's allocation. One step of each runtime then
//! matches the plain reference executor on the same program (loss and every updated state), so
//! the shared bytes do not change what is computed.
//!
//! `cargo test -p kiln-runtime --test exec_arena_plan -- --nocapture` prints the table: planned
//! and allocated bytes, the live peak (a lower bound on any placement), and what the runtime's
//! previous policy (dedicated slots for everything but temporaries, temporaries packed greedily
//! by size over step intervals) allocated for the same program.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use kiln_compiler::ir::Bindings;
use kiln_compiler::kernel::data::WordType;
use kiln_compiler::plan::{self, cpu, MemorySource, PlanOptions};
use kiln_compiler::program::{reference, BufferKind, Program};
use kiln_compiler::sema::{render, Request, Workspace};
use kiln_runtime::backend::{Backend, InputTensor, StepRng};
use kiln_runtime::config::RunConfig;
use kiln_runtime::cpu::CpuBackend;
use kiln_runtime::session::{self, Programs};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("runtime has a parent")
        .to_path_buf()
}

/// (spec, config, batch, seq): the tiny configs the other tests use and the character-level
/// ones at the other tests' sizes, and two at sizes where activations dominate.
const CONFIGS: [(&str, &str, u64, u64); 12] = [
    ("gpt2.kiln", "gpt2_tiny", 2, 8),
    ("gpt3.kiln", "gpt3_tiny", 2, 8),
    ("llama.kiln", "llama_tiny", 2, 8),
    ("palm.kiln", "palm_tiny", 2, 8),
    ("t5.kiln", "t5_tiny", 2, 8),
    ("gpt2.kiln", "gpt2_char", 2, 8),
    ("gpt3.kiln", "gpt3_char", 2, 8),
    ("llama.kiln", "llama_char", 2, 8),
    ("palm.kiln", "palm_char", 2, 8),
    ("t5.kiln", "t5_char", 2, 8),
    ("gpt2.kiln", "gpt2_tiny", 16, 32),
    ("llama.kiln", "llama_char", 8, 64),
];

fn run_config(spec: &str, config: &str, batch: u64, seq: u64) -> RunConfig {
    let yaml = format!(
        "spec: {}\nmodel: {config}\ndata: {{path: unused.txt}}\nbatch_size: {batch}\n\
         seq_len: {seq}\nsteps: 1\n",
        repo().join("specs").join(spec).display()
    );
    RunConfig::from_yaml(&yaml, "test.yaml", &repo(), &[])
        .unwrap_or_else(|e| panic!("run config: {e:?}"))
}

/// The training backend as `kiln train` builds it.
fn runtime(spec: &str, config: &str, batch: u64, seq: u64, ws: &Workspace) -> CpuBackend {
    let cfg = run_config(spec, config, batch, seq);
    if spec == "t5.kiln" {
        // `kiln train` trains T5 on span corruption; `kiln plan` plans the `seq2seq` objective at
        // src = tgt = seq. Same session functions, that objective.
        let inst = ws
            .instantiate(&Request {
                config: config.into(),
                overrides: vec![],
                objective: Some(("seq2seq".into(), vec![])),
                training: true,
            })
            .unwrap_or_else(|d| panic!("{}", d.iter().map(|x| render(x)).collect::<String>()));
        let fwd = session::prepare(inst.graph).unwrap();
        let step = session::compile_step(&fwd, &session::step_options(&cfg)).unwrap();
        let b = Bindings::new()
            .with("batch", batch as i64)
            .with("seq", seq as i64)
            .with("src", seq as i64)
            .with("tgt", seq as i64);
        return CpuBackend::from_graph(&step, &b, 0).unwrap();
    }
    let spec_text = std::fs::read_to_string(&cfg.spec).unwrap();
    let loaded = session::load_spec_text(&cfg, &spec_text).unwrap();
    let run = session::compile_run(&cfg, &loaded, Programs::All).unwrap();
    let train = run.train.expect("a train program");
    // What `session::make_backend(Executor::Cpu, ..)` builds, as the concrete type.
    CpuBackend::from_graph(&train.graph, &train.bindings, 0).unwrap()
}

/// Words the runtime's previous policy allocated: every non-temporary buffer in its own slot,
/// temporaries packed greedily by size over their step intervals, 16-word alignment.
fn old_policy_bytes(p: &Program) -> u64 {
    let align = |n: usize| n.div_ceil(16) * 16;
    let nb = p.buffers.len();
    let mut top = 0usize;
    for b in &p.buffers {
        if b.kind != BufferKind::Temp {
            top += align(b.len.max(1));
        }
    }
    let mut first = vec![usize::MAX; nb];
    let mut last = vec![0usize; nb];
    for (s, st) in p.steps.iter().enumerate() {
        for v in st.inputs.iter().chain(&st.outputs) {
            let b = v.buf.index();
            first[b] = first[b].min(s);
            last[b] = last[b].max(s);
        }
    }
    let mut temps: Vec<usize> = (0..nb)
        .filter(|i| {
            p.buffers[*i].kind == BufferKind::Temp
                && p.buffers[*i].len > 0
                && first[*i] != usize::MAX
        })
        .collect();
    temps.sort_by(|a, b| p.buffers[*b].len.cmp(&p.buffers[*a].len).then(a.cmp(b)));
    let mut placed: Vec<(usize, usize, usize, usize)> = Vec::new();
    let mut end = 0usize;
    for i in temps {
        let size = align(p.buffers[i].len);
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|(_, _, f, l)| *f <= last[i] && first[i] <= *l)
            .map(|(o, s, _, _)| (*o, *s))
            .collect();
        busy.sort_unstable();
        let mut at = 0usize;
        for (o, s) in busy {
            if o >= at + size {
                break;
            }
            at = at.max(o + s);
        }
        placed.push((at, size, first[i], last[i]));
        end = end.max(at + size);
    }
    ((top + end).max(16) * 4) as u64
}

/// Deterministic inputs for one step: small token ids, `lr` 1e-3, `step` 1.
fn inputs(p: &Program) -> BTreeMap<String, InputTensor> {
    // An encoder-decoder's source lengths stay within its rows (`inputs` is [b, src]).
    let src = p
        .inputs
        .iter()
        .find(|d| d.name == "inputs")
        .map_or(1, |d| d.shape[1]);
    p.inputs
        .iter()
        .map(|d| {
            let n: usize = d.shape.iter().product();
            let t = match p.buffer(d.buffer).word {
                WordType::I32 if d.name == "input_len" => InputTensor::I32 {
                    shape: d.shape.clone(),
                    data: (0..n).map(|i| (src - i % src) as i32).collect(),
                },
                WordType::I32 => InputTensor::I32 {
                    shape: d.shape.clone(),
                    data: (0..n).map(|i| ((i * 7 + 3) % 60) as i32).collect(),
                },
                WordType::F32 => InputTensor::F32 {
                    shape: d.shape.clone(),
                    data: vec![if d.name == "lr" { LR } else { 1.0 }; n],
                },
            };
            (d.name.clone(), t)
        })
        .collect()
}

fn host_inputs(ins: &BTreeMap<String, InputTensor>) -> HashMap<String, reference::HostInput> {
    ins.iter()
        .map(|(k, v)| {
            let h = match v {
                InputTensor::I32 { data, .. } => reference::HostInput::I32(data.clone()),
                InputTensor::F32 { data, .. } => reference::HostInput::F32(data.clone()),
            };
            (k.clone(), h)
        })
        .collect()
}

/// `‖a − b‖ / max(‖a‖, 1e-12)`.
fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).powi(2))
        .sum();
    let n: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum();
    d.sqrt() / n.sqrt().max(1e-12)
}

const LR: f32 = 1e-3;

#[test]
fn kiln_plan_compiles_with_kiln_trains_default_optimizer() {
    let cfg = run_config("gpt2.kiln", "gpt2_tiny", 2, 8);
    assert_eq!(session::step_options(&cfg), cpu::train_defaults());
}

#[test]
fn the_runtime_allocates_exactly_the_planned_arena() {
    println!(
        "{:<12} {:>6} {:>12} {:>12} {:>12} {:>12} {:>6}  params/grads/optimizer/activations/workspace",
        "config", "BxT", "planned", "allocated", "live peak", "old policy", "steps"
    );
    for (spec, config, batch, seq) in CONFIGS {
        let text = std::fs::read_to_string(repo().join("specs").join(spec)).unwrap();
        let mut ws = Workspace::new();
        ws.add_file(&format!("specs/{spec}"), &text);
        let o = PlanOptions {
            model: Some(config.into()),
            batch: Some(batch),
            seq: Some(seq),
            ..Default::default()
        };
        let s = plan::setup(&ws, &o)
            .unwrap_or_else(|d| panic!("{}", d.iter().map(|x| render(x)).collect::<String>()));
        let a = plan::analyze(&ws, &s)
            .unwrap_or_else(|d| panic!("{}", d.iter().map(|x| render(x)).collect::<String>()));
        let r = &a.report;
        assert_eq!(
            r.memory_source,
            MemorySource::CpuRuntimeArena,
            "{config}: kiln plan did not report the runtime's arena"
        );
        let pd = r.per_device_bytes;
        assert_eq!(
            pd.total,
            pd.params + pd.grads + pd.optimizer + pd.activations + pd.workspace
        );
        let planned = pd.total;
        let live_peak = a.runtime_arena.as_ref().map(|x| x.live_peak()).unwrap();

        let mut backend = runtime(spec, config, batch, seq, &ws);
        let allocated = backend.arena_bytes() as u64;
        let program = backend.program().clone();
        println!(
            "{config:<12} {:>6} {planned:>12} {allocated:>12} {live_peak:>12} {:>12} {:>6}  {}/{}/{}/{}/{}",
            format!("{batch}x{seq}"),
            old_policy_bytes(&program),
            program.steps.len(),
            pd.params,
            pd.grads,
            pd.optimizer,
            pd.activations,
            pd.workspace
        );
        assert_eq!(
            allocated, planned,
            "{config}: the runtime allocated {allocated} bytes, kiln plan reports {planned}"
        );
        assert!(live_peak <= planned && live_peak > 0, "{config}");
        // The parameters and optimizer state are what the program declares, to the alignment.
        let state_bytes = |opt: bool| -> u64 {
            program
                .state
                .iter()
                .filter(|d| d.name.starts_with("opt.") == opt)
                .map(|d| (program.buffer(d.buffer).len as u64 * 4).div_ceil(64) * 64)
                .sum()
        };
        assert_eq!(pd.params, state_bytes(false), "{config}: params");
        assert_eq!(pd.optimizer, state_bytes(true), "{config}: optimizer state");
        // With clipping every gradient is alive when the norm is known: the peak holds them.
        assert!(pd.grads > 0, "{config}: {pd:?}");

        // One step through the shared arena equals the reference executor on the same program.
        let ins = inputs(&program);
        let mut state: reference::State = program
            .state
            .iter()
            .map(|d| (d.name.clone(), backend.get_state(&d.name).unwrap().data))
            .collect();
        let want = reference::run(&program, &host_inputs(&ins), &mut state, 5, 1).unwrap();
        let got = backend.run(&ins, StepRng { seed: 5, step: 1 }).unwrap();
        // The reference accumulates in f64: outputs and optimizer moments agree to rounding;
        // AdamW's first step moves each weight by about `lr` in the gradient's sign, which
        // rounding may flip where a gradient is ~0, so weights agree to within 2·lr.
        for (name, w) in &want {
            let e = rel_err(w, &got[name].data);
            assert!(e < 1e-4, "{config}: output `{name}` differs by {e:e}");
        }
        // A gradient that is zero in exact arithmetic (a key bias under softmax) is rounding
        // noise in both: its moments are compared only for being finite.
        let norm = |v: &[f32]| v.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>().sqrt();
        let m_max = state
            .iter()
            .filter(|(k, _)| k.starts_with("opt.m."))
            .map(|(_, v)| norm(v))
            .fold(0.0, f64::max);
        let noise = |name: &str| {
            let base = name
                .strip_prefix("opt.m.")
                .or(name.strip_prefix("opt.v."))
                .unwrap_or(name);
            state
                .get(&format!("opt.m.{base}"))
                .is_some_and(|m| norm(m) < 1e-6 * m_max)
        };
        for (name, w) in &state {
            let g = backend.get_state(name).unwrap().data;
            if name.starts_with("opt.") && noise(name) {
                assert!(g.iter().all(|x| x.is_finite()), "{config}: `{name}`");
            } else if name.starts_with("opt.") {
                let e = rel_err(w, &g);
                assert!(
                    e < 1e-3,
                    "{config}: `{name}` differs by {e:e} after one step"
                );
            } else {
                let d = w
                    .iter()
                    .zip(&g)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0f32, f32::max);
                assert!(d <= 2.0 * LR + 1e-5, "{config}: `{name}` moved {d} apart");
            }
        }
    }
}
