//! The registry and the pipeline: every registered pass is named, summarised and keeps real
//! graphs valid; `optimize` reaches a fixpoint (running it again changes nothing); a pass that
//! breaks the IR is reported with the printed graph and the errors inline; options work.

use std::collections::BTreeSet;
use std::path::Path;

use kiln_compiler::compile::{compile, CompileOptions};
use kiln_compiler::ir::{shape_of, verify, Builder, DType, Graph, IrError, Op};
use kiln_compiler::passes::{self, Pass, PassResult, PassStats, REGISTRY};
use kiln_compiler::pipeline::{
    optimize, optimize_with_log, run_pass, PipelineError, PipelineOptions,
};
use kiln_compiler::sema::{render, Request, Workspace};
use kiln_compiler::train::StepOptions;

/// The unoptimized training step of a tiny config (batch 2, seq 8).
fn training_graph(spec: &str, config: &str) -> Graph {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("specs").join(spec)).unwrap();
    let mut ws = Workspace::new();
    ws.add_file(&format!("specs/{spec}"), &text);
    let opts = CompileOptions {
        train: Some(StepOptions {
            clip: Some(1.0),
            ..StepOptions::default()
        }),
        batch: 2,
        seq: 8,
        optimize: false,
        ..CompileOptions::default()
    };
    compile(
        &ws,
        &Request {
            config: config.into(),
            ..Default::default()
        },
        &opts,
    )
    .unwrap_or_else(|ds| panic!("{}", ds.iter().map(|d| render(d)).collect::<String>()))
    .graph
}

#[test]
fn registry_names_are_unique_and_summarised() {
    let names: BTreeSet<&str> = REGISTRY.iter().map(|p| p.name).collect();
    assert_eq!(names.len(), REGISTRY.len());
    for want in [
        "const_fold",
        "simplify",
        "cse",
        "dce",
        "layout",
        "strip_stop_gradient",
    ] {
        let p = passes::lookup(want).unwrap_or_else(|| panic!("{want} is not registered"));
        assert!(p.summary.len() > 20, "{want}: summary too short");
    }
    assert!(passes::lookup("fusion_that_does_not_exist").is_none());
}

#[test]
fn every_registered_pass_alone_keeps_a_training_graph_valid() {
    let g = training_graph("llama.kiln", "llama_tiny");
    for pass in REGISTRY {
        let mut h = g.clone();
        run_pass(&mut h, pass, true, 0).unwrap_or_else(|e| panic!("{}: {e}", pass.name));
    }
}

#[test]
fn optimize_reaches_a_fixpoint() {
    for (spec, config) in [("gpt2.kiln", "gpt2_tiny"), ("t5.kiln", "t5_tiny")] {
        let g = training_graph(spec, config);
        let (once, log) = optimize_with_log(g, &PipelineOptions::verified()).unwrap();
        assert!(log.converged, "{config}: {log}");
        assert!(log.nodes_after < log.nodes_before);
        let (twice, log2) = optimize_with_log(once.clone(), &PipelineOptions::verified()).unwrap();
        assert!(
            log2.runs.iter().all(|r| !r.result.changed),
            "{config}: a second run still changed the graph:\n{log2}"
        );
        assert_eq!(once.to_string(), twice.to_string());
        // The log prints without timings (it may go into reports).
        let text = log.to_string();
        assert!(text.contains("cse") && text.contains("nodes"), "{text}");
    }
}

fn break_the_graph(g: &mut Graph) -> Result<PassResult, IrError> {
    // Retype the first matmul as if it had one more row: the verifier must notice.
    let v = g
        .values()
        .into_iter()
        .find(|v| matches!(g.node(*v).op(), Op::MatMul { .. }));
    let v = v.expect("a matmul");
    let mut ty = g.ty(v).clone();
    ty.shape[0] = ty.shape[0].add(&kiln_compiler::ir::Dim::c(1));
    let op = g.node(v).op().clone();
    g.set_op(v, op, ty);
    let mut s = PassStats::new();
    s.bump("broken");
    Ok(PassResult::from_stats(s))
}

#[test]
fn a_pass_that_breaks_the_ir_is_reported_with_the_graph_and_inline_errors() {
    let mut g = training_graph("gpt2.kiln", "gpt2_tiny");
    let bad = Pass {
        name: "breaker",
        summary: "breaks the first matmul's type",
        run: break_the_graph,
    };
    let err = run_pass(&mut g, &bad, true, 3).unwrap_err();
    match &err {
        PipelineError::Verify {
            pass,
            round,
            errors,
            ir,
        } => {
            assert_eq!((*pass, *round), ("breaker", 3));
            assert!(!errors.is_empty());
            assert!(ir.contains("; error: matmul is typed"), "{ir}");
            // The error sits right under the offending line.
            let lines: Vec<&str> = ir.lines().collect();
            let at = lines
                .iter()
                .position(|l| l.contains("; error: matmul"))
                .unwrap();
            assert!(lines[at - 1].contains("= matmul"), "{}", lines[at - 1]);
        }
        other => panic!("expected a verify error, got {other}"),
    }
    assert!(err
        .to_string()
        .contains("pass `breaker` (round 3) broke the IR"));
    // Without verification the same pass goes through unnoticed: that is what the option is for.
    let mut g = training_graph("gpt2.kiln", "gpt2_tiny");
    assert!(run_pass(&mut g, &bad, false, 0).is_ok());
    assert!(verify(&g).is_err());
    // And an invalid input is reported as such before any pass runs.
    match optimize(g, &PipelineOptions::verified()) {
        Err(PipelineError::InvalidInput { ir, .. }) => assert!(ir.contains("; error:")),
        other => panic!("expected InvalidInput, got {:?}", other.map(|g| g.len())),
    }
}

#[test]
fn options_disable_passes_and_keep_stop_gradient() {
    let mut b = Builder::new();
    let x = b.input("x", shape_of(&[4]), DType::F32).unwrap();
    let s = b.op(Op::StopGradient, &[x]).unwrap();
    let e1 = b.exp(s).unwrap();
    let e2 = b.exp(s).unwrap();
    let y = b.add(e1, e2).unwrap();
    b.output("y", y).unwrap();
    let g = b.finish();
    let count = |g: &Graph, name: &str| {
        g.values()
            .iter()
            .filter(|v| g.node(**v).op().name() == name)
            .count()
    };

    let all = optimize(g.clone(), &PipelineOptions::verified()).unwrap();
    assert_eq!((count(&all, "stop_gradient"), count(&all, "exp")), (0, 1));

    let keep = PipelineOptions {
        keep_stop_gradient: true,
        ..PipelineOptions::verified()
    };
    let kept = optimize(g.clone(), &keep).unwrap();
    assert_eq!(count(&kept, "stop_gradient"), 1);

    let no_cse = PipelineOptions {
        disable: vec!["cse".into()],
        ..PipelineOptions::verified()
    };
    let dup = optimize(g.clone(), &no_cse).unwrap();
    assert_eq!(count(&dup, "exp"), 2);

    let unknown = PipelineOptions {
        disable: vec!["fuse_everything".into()],
        ..PipelineOptions::default()
    };
    assert!(
        matches!(optimize(g, &unknown), Err(PipelineError::UnknownPass(n)) if n == "fuse_everything")
    );
}
