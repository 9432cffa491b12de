//! Snapshots of the compiled graphs of every `*_tiny` config of every spec in `specs/`: the
//! optimized inference forward graph and the optimized training step (AdamW, clip 1.0), both for
//! batch 2 and seq 8, printed by `ir::print_graph` under a one-line header. They live in
//! `snapshots/compile/`; a change in sema, autodiff, the training step or any pass shows up here
//! as a diff to review.
//!
//! Each graph is compiled twice and the two printouts must be identical: nothing may depend on
//! hash or allocation order. The printed form has no hash-map iteration in it, so equal text here
//! means equal text on every machine.

use std::path::{Path, PathBuf};

use kiln_compiler::compile::{compile, CompileOptions, Compiled};
use kiln_compiler::pipeline::PipelineOptions;
use kiln_compiler::sema::{render, Request, Workspace};
use kiln_compiler::train::{Optimizer, StepOptions};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .unwrap()
}

fn compile_one(ws: &Workspace, config: &str, train: bool) -> Compiled {
    let opts = CompileOptions {
        train: train.then(|| StepOptions {
            optimizer: Optimizer::AdamW {
                beta1: 0.9,
                beta2: 0.999,
                eps: 1e-8,
                weight_decay: 0.1,
            },
            clip: Some(1.0),
            ..StepOptions::default()
        }),
        batch: 2,
        seq: 8,
        pipeline: PipelineOptions::verified(),
        ..CompileOptions::default()
    };
    compile(
        ws,
        &Request {
            config: config.into(),
            ..Default::default()
        },
        &opts,
    )
    .unwrap_or_else(|ds| {
        panic!(
            "{config}: {}",
            ds.iter().map(|d| render(d)).collect::<String>()
        )
    })
}

fn printed(ws: &Workspace, config: &str, train: bool) -> String {
    let c = compile_one(ws, config, train);
    let (stage, (before, after)) = match c.stats.training_nodes {
        Some(n) => (
            format!("training step ({})", c.objective.as_deref().unwrap_or("?")),
            n,
        ),
        None => ("forward".to_string(), c.stats.forward_nodes),
    };
    format!(
        "# {config}: {stage}, batch=2, seq=8, optimized: {before} -> {after} nodes\n{}",
        c.graph
    )
}

#[test]
fn compiled_graphs_of_tiny_configs() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(root().join("snapshots/compile"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    let mut seen = 0;
    settings.bind(|| {
        insta::glob!("../../specs", "*.kiln", |path| {
            let text = std::fs::read_to_string(path).unwrap();
            let mut ws = Workspace::new();
            let name = format!("specs/{}", path.file_name().unwrap().to_string_lossy());
            let id = ws.add_file(&name, &text);
            for config in ws
                .configs_of(id)
                .into_iter()
                .filter(|c| c.ends_with("_tiny"))
            {
                for (train, stage) in [(false, "forward"), (true, "train")] {
                    let first = printed(&ws, &config, train);
                    let again = printed(&ws, &config, train);
                    assert_eq!(
                        first, again,
                        "{config} {stage}: printing is not deterministic"
                    );
                    insta::assert_snapshot!(format!("{config}.{stage}"), first);
                }
                seen += 1;
            }
        });
    });
    assert!(
        seen >= 5,
        "expected a tiny config in each of the five specs, found {seen}"
    );
}
