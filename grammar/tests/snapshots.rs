//! Data-driven tests: every `tests/data/ok/*.kiln` must parse, and its snapshot is the formatted
//! text (checked to be idempotent and to preserve the tree); every `tests/data/err/*.kiln` must fail,
//! and its snapshot is the rendered diagnostics.

mod common;

use std::fs;

#[test]
fn ok_files_parse_and_format() {
    insta::glob!("data/ok/*.kiln", |path| {
        let source = fs::read_to_string(path).expect("readable test input");
        if let Err(errors) = kiln_grammar::parse(&source) {
            panic!(
                "{} should parse:\n{}",
                path.display(),
                common::render(&errors, "input.kiln", &source)
            );
        }
        let formatted = common::check_format_roundtrip(&source);
        insta::with_settings!({
            prepend_module_to_snapshot => false,
            omit_expression => true,
        }, {
            insta::assert_snapshot!(formatted);
        });
    });
}

#[test]
fn err_files_report_diagnostics() {
    insta::glob!("data/err/*.kiln", |path| {
        let source = fs::read_to_string(path).expect("readable test input");
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("input.kiln");
        let errors = match kiln_grammar::parse(&source) {
            Ok(_) => panic!("{} should not parse", path.display()),
            Err(errors) => errors,
        };
        assert!(
            !errors.is_empty(),
            "a failed parse reports at least one error"
        );
        let codes: Vec<&str> = errors.iter().map(|e| e.code()).collect();
        assert!(
            !codes.contains(&"syntax::internal"),
            "internal error on {}",
            path.display()
        );
        let rendered = common::render(&errors, name, &source);
        insta::with_settings!({
            prepend_module_to_snapshot => false,
            omit_expression => true,
        }, {
            insta::assert_snapshot!(rendered);
        });
    });
}
