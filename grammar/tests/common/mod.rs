//! Helpers shared by the grammar's integration tests.
#![allow(dead_code)]

use kiln_grammar::ast_eq::without_spans;
use kiln_grammar::{format, parse, SyntaxError};

/// Renders diagnostics the way the CLI does, without colours or links, for snapshots.
pub fn render(errors: &[SyntaxError], name: &str, source: &str) -> String {
    let handler =
        miette::GraphicalReportHandler::new_themed(miette::GraphicalTheme::unicode_nocolor())
            .with_urls(false)
            .with_width(100);
    let mut out = String::new();
    for e in errors {
        let report = e
            .clone()
            .with_source(miette::NamedSource::new(name, source.to_string()));
        handler
            .render_report(&mut out, report.as_ref())
            .expect("rendering to a String cannot fail");
    }
    out
}

/// The formatter's notion of "the same file": equal items ignoring spans, and the same comments.
/// Comments are compared as a multiset because a statement with both a comment between list
/// elements (kept in place) and one between operands (moved before the statement) reorders them.
pub fn same_modulo_spans(a: &kiln_grammar::ast::File, b: &kiln_grammar::ast::File) -> bool {
    let (a, b) = (without_spans(a), without_spans(b));
    let texts = |f: &kiln_grammar::ast::File| {
        let mut t: Vec<String> = f.comments.iter().map(|c| c.text.clone()).collect();
        t.sort();
        t
    };
    a.items == b.items && texts(&a) == texts(&b)
}

/// Checks the formatter's two promises on a file that parses; returns the formatted text.
/// Panics with a readable message when either is broken.
pub fn check_format_roundtrip(source: &str) -> String {
    let file = parse(source).expect("check_format_roundtrip needs a file that parses");
    let formatted = format(&file, source);
    let reparsed = match parse(&formatted) {
        Ok(f) => f,
        Err(errors) => panic!(
            "formatted output does not parse:\n{}\n--- formatted ---\n{formatted}\n--- input ---\n{source}",
            render(&errors, "formatted.kiln", &formatted)
        ),
    };
    assert!(
        same_modulo_spans(&reparsed, &file),
        "formatting changed the meaning\n--- formatted ---\n{formatted}\n--- input ---\n{source}\n\
         --- trees ---\n{:#?}\n{:#?}",
        without_spans(&reparsed),
        without_spans(&file)
    );
    let twice = format(&reparsed, &formatted);
    assert_eq!(
        twice, formatted,
        "formatting is not idempotent\n--- input ---\n{source}"
    );
    formatted
}
