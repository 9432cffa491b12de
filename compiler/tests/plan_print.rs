//! The plan in text, snapshotted: the planned step of a one-layer model with its `recompute`,
//! `memory` and `sharding` sections, one rank's program, and `kiln explain` answers.

use std::path::{Path, PathBuf};

use kiln_compiler::plan::{self, PlanOptions};
use kiln_compiler::sema::Workspace;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo root")
}

#[test]
fn the_planned_step_prints_with_its_plan_sections() {
    let text = std::fs::read_to_string(root().join("snapshots/plan/ok/mini.kiln")).unwrap();
    let mut ws = Workspace::new();
    ws.add_file("snapshots/plan/ok/mini.kiln", &text);
    let o = PlanOptions {
        plan: Some("mini_tp".into()),
        ..Default::default()
    };
    let a = plan::analyze(&ws, &plan::setup(&ws, &o).unwrap()).unwrap();
    let printed = plan::print::print_plan(&a);
    for section in [
        "\nrecompute policy=selective",
        "\nmemory arena=",
        "\nsharding tensor=2 sequence=true",
    ] {
        assert!(printed.contains(section), "missing {section}");
    }
    // Every recompute op of the section is in the graph above it, in the backward pass.
    assert!(printed.contains("recompute.h.0.attn.sdpa = rand_uniform"));
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(root().join("snapshots/plan"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.bind(|| {
        insta::assert_snapshot!("mini_planned_step", printed);
        insta::assert_snapshot!("mini_rank_0", plan::print::print_rank(&a, 0));
        let mut explained = String::new();
        for q in [
            "h.0.attn.q.weight",
            "h.0.attn.o.weight",
            "wte",
            "h.0.ln_1",
            "%1",
        ] {
            explained += &format!(
                "$ kiln explain {q}\n{}\n",
                plan::explain::explain(&a, q).expect("known")
            );
        }
        insta::assert_snapshot!("mini_explain", explained);
    });
    assert!(plan::explain::explain(&a, "h.0.attn.nothing").is_none());
}
