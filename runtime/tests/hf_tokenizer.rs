//! The GPT-2 tokenizer in `data/gpt2/tokenizer.json`, loaded through the runtime's tokenizer
//! module, gives the ids that Python's `transformers` gave (and OpenAI's `encoder.py`, which
//! `scripts/make_fixtures.py` checked them against) for Tiny Shakespeare and tricky text, and
//! decodes them back to the text.

use std::path::{Path, PathBuf};

use kiln_runtime::tokenizer::Tokenizer;
use serde::Deserialize;

#[derive(Deserialize)]
struct Fixture {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    kind: String,
    text: String,
    ids: Vec<u32>,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn gpt2() -> Tokenizer {
    Tokenizer::from_tokenizer_json(&root().join("data/gpt2/tokenizer.json")).unwrap()
}

#[test]
fn gpt2_ids_match_the_python_reference_and_round_trip() {
    let tok = gpt2();
    assert_eq!(tok.vocab_size(), 50257);
    let text = std::fs::read_to_string(root().join("fixtures/gpt2_tokenizer_ids.json")).unwrap();
    let fixture: Fixture = serde_json::from_str(&text).unwrap();
    let lines = fixture
        .cases
        .iter()
        .filter(|c| c.kind == "shakespeare_line")
        .count();
    assert!(lines >= 300, "{lines}");
    assert!(fixture.cases.iter().filter(|c| c.kind == "tricky").count() >= 20);
    let mut mismatches = Vec::new();
    for case in &fixture.cases {
        let ids = tok.encode(&case.text).unwrap();
        if ids != case.ids {
            mismatches.push(format!(
                "{:?}: ours {:?}, python {:?}",
                case.text, ids, case.ids
            ));
            continue;
        }
        let back = tok.decode(&ids).unwrap();
        if back != case.text {
            mismatches.push(format!("{:?} decodes to {back:?}", case.text));
        }
    }
    assert!(mismatches.is_empty(), "{}", mismatches.join("\n"));
}

#[test]
fn gpt2_published_examples() {
    // The ids in transformers' GPT-2 tokenizer documentation, independent of our fixture.
    let tok = gpt2();
    assert_eq!(tok.encode("Hello world").unwrap(), vec![15496, 995]);
    assert_eq!(tok.encode(" Hello world").unwrap(), vec![18435, 995]);
    assert_eq!(tok.encode("<|endoftext|>").unwrap(), vec![50256]);
    assert!(tok.decode(&[50257]).is_err());
}
