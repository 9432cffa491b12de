//! The fused kernel list of GPT-2 small's training step (batch 1, seq 1024, AdamW, clipping,
//! dropout 0 as in nanoGPT's and llm.c's GPT-2 reproductions: attention dropout keeps the
//! composition because the attention kernels have no dropout), as
//! `kiln compile --emit kernels` prints it: one attention kernel per layer and direction, one norm
//! kernel per norm and direction (the weight-gradient column sums ride in the input-gradient
//! kernel), no standalone softmax or exp left, and no transpose: the head splits and merges
//! around each attention (8 per layer: `q, k, v, o` forward, `dO, dQ, dK, dV` backward) are
//! read and written sequence-major by the attention kernels instead of copied.

use std::collections::BTreeMap;
use std::path::Path;

use kiln_compiler::compile::{compile, CompileOptions};
use kiln_compiler::kernel::data::DataKernel;
use kiln_compiler::kernel::{HeadLayout, Kernel};
use kiln_compiler::program::Program;
use kiln_compiler::sema::{render, Request, Value, Workspace};
use kiln_compiler::train::StepOptions;

fn gpt2_small_program() -> Program {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("specs/gpt2.kiln")).unwrap();
    let mut ws = Workspace::new();
    ws.add_file("specs/gpt2.kiln", &text);
    let opts = CompileOptions {
        train: Some(StepOptions {
            clip: Some(1.0),
            ..StepOptions::default()
        }),
        batch: 1,
        seq: 1024,
        fuse: true,
        ..CompileOptions::default()
    };
    let req = Request {
        config: "gpt2_small".into(),
        overrides: vec![("dropout".into(), Value::Float(0.0))],
        ..Default::default()
    };
    let c = compile(&ws, &req, &opts)
        .unwrap_or_else(|ds| panic!("{}", ds.iter().map(|d| render(d)).collect::<String>()));
    c.program.expect("a fused program")
}

#[test]
fn gpt2_small_kernel_list() {
    let p = gpt2_small_program();
    let layers = 12;
    let kinds = p.kind_counts();
    assert_eq!(kinds.get("attention.fwd"), Some(&layers), "{kinds:?}");
    assert_eq!(kinds.get("attention.bwd"), Some(&layers), "{kinds:?}");
    // Each attention kernel belongs to its own layer.
    let mut per_layer: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    for s in &p.steps {
        let dir = match s.kind() {
            "attention.fwd" => 0,
            "attention.bwd" => 1,
            _ => continue,
        };
        let layer = s
            .origin
            .trim_start_matches("bwd.")
            .split(".attn")
            .next()
            .unwrap()
            .to_string();
        let e = per_layer.entry(layer).or_default();
        if dir == 0 {
            e.0 += 1
        } else {
            e.1 += 1
        }
    }
    assert_eq!(per_layer.len(), layers, "{per_layer:?}");
    assert!(per_layer.values().all(|c| *c == (1, 1)), "{per_layer:?}");

    // Norms: every norm's forward in exactly one kernel, its backward in exactly one more (the
    // forward kernel may also compute backward values, e.g. the saved reciprocal deviation).
    let mut norms: Vec<String> = (0..layers)
        .flat_map(|i| [format!("h.{i}.ln_1"), format!("h.{i}.ln_2")])
        .collect();
    norms.push("ln_f".into());
    let mut bad = Vec::new();
    for n in &norms {
        let bwd = format!("bwd.{n}");
        let has = |s: &kiln_compiler::program::Step, x: &str| s.scopes.iter().any(|o| o == x);
        let fwd_steps = p.steps.iter().filter(|s| has(s, n)).count();
        let bwd_steps = p
            .steps
            .iter()
            .filter(|s| has(s, &bwd) && !has(s, n))
            .count();
        if fwd_steps != 1 || bwd_steps != 1 {
            bad.push(format!(
                "{n}: {fwd_steps} forward, {bwd_steps} backward kernels"
            ));
        }
    }
    assert!(bad.is_empty(), "{}\n{p}", bad.join("\n"));

    // Nothing standalone: no kernel computing only softmax or exp values.
    let mut left = Vec::new();
    for (i, s) in p.steps.iter().enumerate() {
        let only = |pred: &dyn Fn(&str) -> bool| s.scopes.iter().all(|o| pred(o));
        if only(&|o: &str| o.contains("softmax") || o.ends_with(".exp")) {
            left.push(format!("s{i} {} ; {}", s.kind(), s.origin));
        }
    }
    assert!(
        left.is_empty(),
        "standalone kernels left:\n{}",
        left.join("\n")
    );
    let copies = p.steps.iter().filter(|s| s.kind() == "data.copy").count();
    let transposes: Vec<String> = p
        .steps
        .iter()
        .enumerate()
        .filter(|(_, s)| is_transpose(&s.kernel))
        .map(|(i, s)| format!("s{i} {} ; {}", s.kernel.to_string().trim_end(), s.origin))
        .collect();
    println!(
        "{kinds:?}; data.copy launches: {copies}, of which transposes: {}",
        transposes.len()
    );
    assert!(
        transposes.is_empty(),
        "transposing copies left:\n{}",
        transposes.join("\n")
    );
    let layouts = p
        .steps
        .iter()
        .filter(|s| match &s.kernel {
            Kernel::Attention(a) => a
                .layout
                .operands()
                .iter()
                .take(if s.kind() == "attention.fwd" { 4 } else { 8 })
                .all(|(_, l)| *l == HeadLayout::SeqMajor),
            _ => false,
        })
        .count();
    assert_eq!(
        layouts,
        2 * layers,
        "every attention operand sequence-major"
    );
}

/// A strided copy whose window walks memory out of order: some axis (of more than one element,
/// not broadcast) has a larger stride than an axis before it. Slices and broadcasts keep the
/// order; permutes do not.
fn is_transpose(k: &Kernel) -> bool {
    let Kernel::Data(DataKernel::Copy { src, .. }) = k else {
        return false;
    };
    let strides: Vec<usize> = src
        .shape
        .iter()
        .zip(&src.strides)
        .filter(|(n, st)| **n > 1 && **st > 0)
        .map(|(_, st)| *st)
        .collect();
    strides.windows(2).any(|w| w[0] < w[1])
}

#[test]
fn transpose_detection() {
    use kiln_compiler::kernel::data::{Window, WordType};
    let copy = |shape: Vec<usize>, strides: Vec<usize>| {
        Kernel::Data(DataKernel::Copy {
            src: Window {
                shape,
                strides,
                offset: 0,
            },
            word: WordType::F32,
        })
    };
    // The head split of the old kernel lists: [1, 12, 1024, 64] read from [1, 1024, 12, 64].
    assert!(is_transpose(&copy(
        vec![1, 12, 1024, 64],
        vec![786432, 64, 768, 1]
    )));
    // A strided slice and a broadcast are not transposes.
    assert!(!is_transpose(&copy(vec![2, 8], vec![9, 1])));
    assert!(!is_transpose(&copy(vec![4, 3, 5], vec![0, 5, 1])));
}
