//! Recompute plans against `none`, on the reference interpreter: for every tiny spec (dropout on
//! where the spec has it, so recomputed dropout must regenerate the same noise) and every policy,
//! the rewritten training step gives bitwise the loss, gradient norm and every parameter and
//! optimizer-state update of the unplanned step; and the planned activation memory drops as each
//! policy says.

use std::collections::HashMap;
use std::path::Path;

use kiln_compiler::interp::{
    init_params, run, Precision as InterpPrecision, RunOptions, RunOutput, Tensor,
};
use kiln_compiler::ir::{verify, Bindings, DType, Graph, Op};
use kiln_compiler::plan::{self, Analysis, PlanOptions};
use kiln_compiler::sema::plancheck::RecomputePolicy;
use kiln_compiler::sema::{render, Value, Workspace};

fn workspace(spec: &str) -> Workspace {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("specs").join(spec)).expect("spec");
    let mut ws = Workspace::new();
    ws.add_file(&format!("specs/{spec}"), &text);
    ws
}

fn analysis(
    ws: &Workspace,
    config: &str,
    dropout: bool,
    policy: RecomputePolicy,
    unfused: bool,
) -> Analysis {
    let overrides = if dropout {
        vec![("dropout".to_string(), Value::Float(0.1))]
    } else {
        vec![]
    };
    let o = PlanOptions {
        model: Some(config.into()),
        overrides,
        batch: Some(2),
        seq: Some(5),
        recompute: Some(policy),
        unfused,
        ..Default::default()
    };
    let s = plan::setup(ws, &o)
        .unwrap_or_else(|d| panic!("{}", d.iter().map(|x| render(x)).collect::<String>()));
    plan::analyze(ws, &s)
        .unwrap_or_else(|d| panic!("{}", d.iter().map(|x| render(x)).collect::<String>()))
}

/// Deterministic inputs: token ids below 64 (every tiny vocabulary is larger), lr and step.
fn inputs(g: &Graph) -> HashMap<String, Tensor> {
    let mut out = HashMap::new();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    // An encoder-decoder's source lengths must be 1 ..= src (its `inputs` row length).
    let src = g
        .find_input("inputs")
        .and_then(|v| g.shape(v).get(1).and_then(|d| d.as_const()))
        .unwrap_or(64) as u64;
    for v in g.inputs() {
        if let Op::Input { name, shape, dtype } = g.node(v).op() {
            let shape: Vec<usize> = shape
                .iter()
                .map(|d| d.as_const().expect("bound") as usize)
                .collect();
            let n: usize = shape.iter().product();
            let t = if dtype.is_int() {
                Tensor::int(
                    *dtype,
                    shape,
                    (0..n)
                        .map(|_| {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            if name == "input_len" {
                                (x % src + 1) as i64
                            } else {
                                (x % 64) as i64
                            }
                        })
                        .collect(),
                )
            } else {
                Tensor::float(
                    *dtype,
                    shape,
                    vec![if name == "lr" { 1e-3 } else { 1.0 }; n],
                )
            };
            out.insert(name.clone(), t);
        }
    }
    out
}

fn execute(g: &Graph) -> RunOutput {
    let b = Bindings::new();
    let params = init_params(g, &b, 11).expect("params");
    let opts = RunOptions {
        seed: 5,
        step: 3,
        precision: InterpPrecision::Declared,
    };
    run(g, &b, &inputs(g), &params, &opts).expect("interpreter")
}

fn assert_bitwise(a: &RunOutput, b: &RunOutput, what: &str) {
    assert_eq!(
        a.outputs.keys().collect::<Vec<_>>(),
        b.outputs.keys().collect::<Vec<_>>(),
        "{what}: outputs"
    );
    assert_eq!(a.updates.len(), b.updates.len(), "{what}: updates");
    let bits = |t: &Tensor| {
        t.to_f64_vec()
            .iter()
            .map(|x| x.to_bits())
            .collect::<Vec<u64>>()
    };
    for (k, t) in &a.outputs {
        assert_eq!(bits(t), bits(&b.outputs[k]), "{what}: output {k} differs");
    }
    for (k, t) in &a.updates {
        assert_eq!(bits(t), bits(&b.updates[k]), "{what}: update {k} differs");
    }
}

fn policies() -> Vec<(RecomputePolicy, bool)> {
    vec![
        (RecomputePolicy::None, false),
        (RecomputePolicy::Selective, false),
        (RecomputePolicy::Full, false),
        (RecomputePolicy::Keep(vec!["matmul".into()]), false),
        (
            RecomputePolicy::Keep(vec!["norm".into(), "softmax".into(), "attention".into()]),
            false,
        ),
        (RecomputePolicy::Budget(3000), false),
    ]
}

/// Every policy is bitwise the unplanned step, and the kept bytes drop as each policy says.
fn check_spec(spec: &str, config: &str, dropout: bool) {
    let ws = workspace(spec);
    let base = analysis(&ws, config, dropout, RecomputePolicy::None, true);
    assert!(
        base.rewritten.clones.is_empty(),
        "{config}: unfused none recomputes nothing"
    );
    let want = execute(&base.graph);
    assert!(want.outputs["loss"].to_f64_vec()[0].is_finite());
    let mut kept = Vec::new();
    for (policy, unfused) in policies() {
        let a = analysis(&ws, config, dropout, policy.clone(), unfused);
        let what = format!("{config} {policy:?} unfused={unfused}");
        if let Err(errs) = verify(&a.rewritten.graph) {
            panic!("{what}: {errs:?}");
        }
        // The recompute ops are really in the backward schedule.
        if !matches!(policy, RecomputePolicy::None) {
            assert!(!a.rewritten.clones.is_empty(), "{what}: nothing recomputed");
        }
        for c in a.rewritten.clones.values() {
            assert!(
                a.roles2.users(*c).iter().all(|u| !a.roles2.is_forward(*u)),
                "{what}: a forward op reads a recompute"
            );
        }
        assert_bitwise(&execute(&a.rewritten.graph), &want, &what);
        kept.push((a.recompute.kept_bytes, a.recompute.recompute_flops));
    }
    let none_unfused = base.recompute.kept_bytes;
    let [(none, _), (selective, _), (full, full_flops), (keep_mm, _), _, _] = kept[..] else {
        unreachable!("six policies")
    };
    eprintln!("{config}: kept bytes none(unfused) {none_unfused}, none {none}, selective {selective}, keep(matmul) {keep_mm}, full {full}");
    assert!(
        none < none_unfused,
        "{config}: fused kernels keep less than op-by-op"
    );
    assert!(
        selective < none,
        "{config}: selective drops the attention core"
    );
    assert!(full < selective, "{config}: full keeps only layer inputs");
    assert!(
        keep_mm < none && full <= keep_mm,
        "{config}: keep(matmul) lies between full and none"
    );
    // A budget is met, and spending it recomputes no more than `full` does.
    for budget in [full, (full + none) / 2] {
        let a = analysis(&ws, config, dropout, RecomputePolicy::Budget(budget), false);
        assert!(
            a.recompute.kept_bytes <= budget,
            "{config}: budget {budget} kept {}",
            a.recompute.kept_bytes
        );
        assert!(
            a.recompute.recompute_flops <= full_flops,
            "{config}: budget {budget} recomputes more than full"
        );
    }
}

#[test]
fn gpt2_tiny_every_policy_is_bitwise_none_and_keeps_less() {
    check_spec("gpt2.kiln", "gpt2_tiny", true);
}

#[test]
fn gpt3_tiny_every_policy_is_bitwise_none_and_keeps_less() {
    check_spec("gpt3.kiln", "gpt3_tiny", true);
}

#[test]
fn llama_tiny_every_policy_is_bitwise_none_and_keeps_less() {
    check_spec("llama.kiln", "llama_tiny", false);
}

#[test]
fn palm_tiny_every_policy_is_bitwise_none_and_keeps_less() {
    check_spec("palm.kiln", "palm_tiny", false);
}

#[test]
fn t5_tiny_every_policy_is_bitwise_none_and_keeps_less() {
    check_spec("t5.kiln", "t5_tiny", true);
}

#[test]
fn full_recompute_runs_each_layer_forward_again_in_backward() {
    let ws = workspace("gpt2.kiln");
    let a = analysis(&ws, "gpt2_tiny", true, RecomputePolicy::Full, false);
    // The layers' matmuls are recomputed (all but the MLP's output projection, whose output no
    // backward op needs); none outside the layers.
    let g = &a.graph;
    let mut per_layer = vec![0; a.roles.layers.len()];
    for v in a
        .roles
        .order
        .iter()
        .filter(|v| a.roles.is_forward(**v) && matches!(g.node(**v).op(), Op::MatMul { .. }))
    {
        match a.roles.layer_of(*v) {
            Some(l) if a.rewritten.clones.contains_key(v) => per_layer[l] += 1,
            Some(_) => assert_eq!(
                g.node(*v).name(),
                Some(
                    format!("{}.mlp.proj", a.roles.layers[a.roles.layer_of(*v).unwrap()]).as_str()
                )
            ),
            None => assert!(
                !a.rewritten.clones.contains_key(v),
                "{:?} is outside the layers",
                g.node(*v).name()
            ),
        }
    }
    assert_eq!(
        per_layer,
        vec![7, 7],
        "q, k, v, scores, probabilities x values, o, fc"
    );
    // Recompute FLOPs are the layers' forward matmul FLOPs (and their cheap ops).
    assert!(
        a.report.recompute_overhead > 0.2 && a.report.recompute_overhead < 0.5,
        "{}",
        a.report.recompute_overhead
    );
    // The schedule puts each clone after every forward op.
    let last_fwd = a
        .rewritten
        .order
        .iter()
        .rposition(|v| a.roles.is_forward(*v))
        .expect("forward ops");
    let first_clone = a
        .rewritten
        .order
        .iter()
        .position(|v| a.rewritten.original.contains_key(v))
        .expect("clones");
    assert!(first_clone > last_fwd);
    let _ = DType::F32;
}
