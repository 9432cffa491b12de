//! Impossible plans are diagnostics at the plan: every file in `snapshots/plan/err/` must give at
//! least one `plan::` error from `kiln check`, snapshotted as rendered; every named plan of the
//! specs must check clean (it fits its device).

use std::path::{Path, PathBuf};

use kiln_compiler::sema::{render, Workspace};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo root")
}

fn check_file(path: &Path) -> (Vec<&'static str>, String) {
    let text = std::fs::read_to_string(path).expect("readable");
    let path = path.canonicalize().expect("path");
    let rel = path
        .strip_prefix(root())
        .expect("inside the repo")
        .display()
        .to_string();
    let mut ws = Workspace::new();
    let id = ws.add_file(&rel, &text);
    let diags = ws.check(&[id]);
    let codes = diags
        .iter()
        .filter(|d| d.is_error())
        .map(|d| d.code)
        .collect();
    (
        codes,
        diags
            .iter()
            .map(|d| render(d))
            .collect::<Vec<_>>()
            .join("\n"),
    )
}

#[test]
fn impossible_plans_point_at_the_plan() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(root().join("snapshots/plan"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.bind(|| {
        insta::glob!("../../snapshots/plan/err", "*.kiln", |path| {
            let (codes, rendered) = check_file(path);
            assert!(
                !codes.is_empty() && codes.iter().all(|c| c.starts_with("plan::")),
                "{}: {codes:?}\n{rendered}",
                path.display()
            );
            insta::assert_snapshot!(rendered);
        });
    });
}

#[test]
fn the_named_plans_of_the_specs_fit() {
    for spec in ["gpt3.kiln", "palm.kiln", "llama.kiln"] {
        let (codes, rendered) = check_file(&root().join("specs").join(spec));
        assert!(codes.is_empty(), "{spec}:\n{rendered}");
    }
}
