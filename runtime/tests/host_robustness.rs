//! No user input makes the host side panic: damaged run configs, `--set` arguments, token files,
//! checkpoints and saved tokenizers all come back as diagnostics.

use std::path::Path;

use kiln_runtime::checkpoint::load_checkpoint;
use kiln_runtime::config::{Override, RunConfig};
use kiln_runtime::data::TokenFile;
use kiln_runtime::tokenizer::Tokenizer;
use miette::{Diagnostic, GraphicalReportHandler, GraphicalTheme};
use proptest::prelude::*;

const BASE: &str = "spec: s.kiln\nmodel: m\ndata: {path: d.txt, tokenizer: char}\nsteps: 10\n\
optimizer:\n  kind: adamw\n  lr: 1.0e-3\nschedule: {warmup: 2, decay: cosine}\n\
eval: {every: 5, batches: 2}\nset: {dropout: 0.1, \"é\": x}\n";

fn render(d: &dyn Diagnostic) -> String {
    let mut out = String::new();
    GraphicalReportHandler::new_themed(GraphicalTheme::unicode_nocolor())
        .with_urls(false)
        .render_report(&mut out, d)
        .unwrap();
    out
}

/// Parses, and renders any error; the rendering must name the error's code.
fn parse_and_render(text: &str, sets: &[String]) {
    let overrides: Result<Vec<Override>, _> = sets.iter().map(|s| Override::parse(s)).collect();
    let result =
        overrides.and_then(|o| RunConfig::from_yaml(text, "fuzz.yaml", Path::new("/b"), &o));
    match result {
        Ok(c) => {
            // A config that loads also round-trips.
            let again = RunConfig::from_yaml(&c.to_yaml(), "again.yaml", Path::new("/b"), &[]);
            assert_eq!(again.ok(), Some(c));
        }
        Err(e) => {
            let shown = render(&e);
            assert!(shown.contains(e.kind().code()), "{shown}");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, .. ProptestConfig::default() })]

    #[test]
    fn edited_configs_never_panic(
        cut in 0usize..BASE.len(),
        len in 0usize..12,
        insert in "[ -~\n\té]{0,8}",
    ) {
        let mut text: Vec<char> = BASE.chars().collect();
        let cut = cut.min(text.len());
        let end = (cut + len).min(text.len());
        text.splice(cut..end, insert.chars());
        let text: String = text.into_iter().collect();
        parse_and_render(&text, &[]);
    }

    #[test]
    fn set_arguments_never_panic(
        args in proptest::collection::vec(
            "(seed|steps|eval|optimizer|set|data|é|)([.](lr|every|kind|x|path|))?(=)?[ -~é]{0,6}",
            0..4,
        ),
    ) {
        parse_and_render(BASE, &args);
    }

    #[test]
    fn damaged_binary_files_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut with_magic = b"KILNTOK\0".to_vec();
        with_magic.extend_from_slice(&bytes);
        for content in [&bytes, &with_magic] {
            std::fs::write(&path, content).unwrap();
            prop_assert!(TokenFile::open(&path).is_err());
            prop_assert!(load_checkpoint(&path).is_err());
        }
        let _ = Tokenizer::from_json(&String::from_utf8_lossy(&bytes));
    }
}
