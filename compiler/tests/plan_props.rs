//! No layout, batch, sequence or policy a user can ask for makes the planners panic: each either
//! plans (and then the arena is valid and the numbers are consistent) or returns a diagnostic.

use std::path::Path;

use kiln_compiler::plan::{self, validate, PlanOptions};
use kiln_compiler::sema::plancheck::RecomputePolicy;
use kiln_compiler::sema::Workspace;
use proptest::prelude::*;

fn workspace() -> Workspace {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut ws = Workspace::new();
    for spec in ["gpt2.kiln", "llama.kiln"] {
        let text = std::fs::read_to_string(root.join("specs").join(spec)).unwrap();
        ws.add_file(&format!("specs/{spec}"), &text);
    }
    ws
}

fn policy() -> impl Strategy<Value = RecomputePolicy> {
    prop_oneof![
        Just(RecomputePolicy::None),
        Just(RecomputePolicy::Full),
        Just(RecomputePolicy::Selective),
        Just(RecomputePolicy::Keep(vec!["matmul".into()])),
        (0u64..200_000).prop_map(RecomputePolicy::Budget),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn planning_never_panics(
        llama in any::<bool>(),
        tensor in 0u64..6,
        pipeline in 0u64..4,
        data in 0u64..4,
        zero in 0u64..5,
        sequence in any::<bool>(),
        batch in 0u64..9,
        seq in 0u64..40,
        microbatch in proptest::option::of(0u64..4),
        recompute in policy(),
        unfused in any::<bool>(),
    ) {
        let ws = workspace();
        let o = PlanOptions {
            model: Some(if llama { "llama_tiny" } else { "gpt2_tiny" }.into()),
            batch: Some(batch),
            seq: Some(seq),
            tensor: Some(tensor),
            pipeline: Some(pipeline),
            data: Some(data),
            zero: Some(zero),
            sequence: Some(sequence),
            microbatch,
            recompute: Some(recompute),
            unfused,
            ..Default::default()
        };
        if let Ok(s) = plan::setup(&ws, &o) {
            if let Ok(a) = plan::analyze(&ws, &s) {
                let pd = a.report.per_device_bytes;
                prop_assert_eq!(pd.total, pd.params + pd.grads + pd.optimizer + pd.activations + pd.workspace);
                prop_assert!(validate(&a.schedule, &a.memory_input, &a.memory.arena).is_empty());
                let _ = plan::check(&ws, &a);
                let _ = plan::print::print_rank(&a, 0);
            }
        }
    }
}
