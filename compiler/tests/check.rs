//! Data-driven checker tests: every file in `snapshots/check/err/` must produce at least one error,
//! snapshotted as the rendered diagnostic; every file in `snapshots/check/ok/`, every spec and the
//! stdlib must check clean.

use std::path::{Path, PathBuf};

use kiln_compiler::sema::{render, Workspace};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo root")
}

/// Check one file as a user would (`kiln check FILE`), returning its rendered diagnostics.
fn check_file(path: &Path) -> (usize, String) {
    let text = std::fs::read_to_string(path).expect("readable test input");
    // Snapshots name files relative to the repo root, so they are the same on every machine.
    let path = path.canonicalize().expect("test input path");
    let rel = path
        .strip_prefix(root())
        .expect("inside the repo")
        .display()
        .to_string();
    let mut ws = Workspace::new();
    let id = ws.add_file(&rel, &text);
    let diags = ws.check(&[id]);
    let errors = diags.iter().filter(|d| d.is_error()).count();
    let rendered: String = diags
        .iter()
        .map(|d| render(d))
        .collect::<Vec<_>>()
        .join("\n");
    (errors, rendered)
}

#[test]
fn invalid_specs_produce_their_diagnostics() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(root().join("snapshots/diagnostics"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.bind(|| {
        insta::glob!("../../snapshots/check/err", "*.kiln", |path| {
            let (errors, rendered) = check_file(path);
            assert!(
                errors > 0,
                "{} checked clean but must fail:\n{rendered}",
                path.display()
            );
            insta::assert_snapshot!(rendered);
        });
    });
}

#[test]
fn the_err_corpus_covers_at_least_thirty_cases() {
    let n = std::fs::read_dir(root().join("snapshots/check/err"))
        .unwrap()
        .count();
    assert!(n >= 30, "only {n} invalid specs");
}

#[test]
fn valid_specs_check_clean() {
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in ["snapshots/check/ok", "specs", "stdlib"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "kiln") {
                files.push(p);
            }
        }
    }
    files.sort();
    assert!(files.len() >= 8);
    for f in files {
        let (errors, rendered) = check_file(&f);
        assert_eq!(errors, 0, "{}:\n{rendered}", f.display());
        assert!(
            !rendered.contains("Warning") && !rendered.contains("⚠"),
            "{} has warnings:\n{rendered}",
            f.display()
        );
    }
}

#[test]
fn specs_and_stdlib_are_canonically_formatted() {
    for dir in ["specs", "stdlib"] {
        for e in std::fs::read_dir(root().join(dir)).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_none_or(|x| x != "kiln") {
                continue;
            }
            let text = std::fs::read_to_string(&p).unwrap();
            let file =
                kiln_grammar::parse(&text).unwrap_or_else(|e| panic!("{}: {e:?}", p.display()));
            let formatted = kiln_grammar::format(&file, &text);
            assert!(
                formatted == text,
                "{} is not formatted: run `kiln fmt {}`",
                p.display(),
                p.display()
            );
        }
    }
}
