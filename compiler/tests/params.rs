//! Parameter counts of every published config against its reference: Hugging Face's
//! `num_parameters()` for GPT-2, T5 1.0 and LLaMA (exact), the papers' tables for GPT-3 (table 2.1,
//! within 2.5%: the table rounds) and PaLM (table 1, within 1%).

use std::path::Path;

use kiln_compiler::sema::{param_counts, Request, Workspace};

fn count(spec: &str, config: &str) -> u64 {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("specs").join(spec)).expect("spec file");
    let mut ws = Workspace::new();
    ws.add_file(&format!("specs/{spec}"), &text);
    assert!(
        ws.load_diagnostics.is_empty(),
        "{spec}: {:?}",
        ws.load_diagnostics
    );
    let inst = ws
        .instantiate(&Request {
            config: config.into(),
            ..Default::default()
        })
        .unwrap_or_else(|ds| {
            panic!(
                "{config}: {}",
                ds.iter()
                    .map(|d| kiln_compiler::sema::render(d))
                    .collect::<String>()
            )
        });
    param_counts(&inst.graph).total
}

#[test]
fn gpt2_matches_hugging_face_exactly() {
    assert_eq!(count("gpt2.kiln", "gpt2_small"), 124_439_808);
    assert_eq!(count("gpt2.kiln", "gpt2_medium"), 354_823_168);
    assert_eq!(count("gpt2.kiln", "gpt2_large"), 774_030_080);
    assert_eq!(count("gpt2.kiln", "gpt2_xl"), 1_557_611_200);
}

#[test]
fn llama_matches_hugging_face_exactly() {
    assert_eq!(count("llama.kiln", "llama_7b"), 6_738_415_616);
    assert_eq!(count("llama.kiln", "llama_13b"), 13_015_864_320);
    assert_eq!(count("llama.kiln", "llama_33b"), 32_528_943_616);
    assert_eq!(count("llama.kiln", "llama_65b"), 65_285_660_672);
}

#[test]
fn t5_matches_hugging_face_exactly() {
    assert_eq!(count("t5.kiln", "t5_small"), 60_506_624);
    assert_eq!(count("t5.kiln", "t5_base"), 222_903_552);
    assert_eq!(count("t5.kiln", "t5_large"), 737_668_096);
}

fn within(got: u64, paper: f64, tol: f64) -> bool {
    ((got as f64 - paper) / paper).abs() <= tol
}

#[test]
fn gpt3_matches_the_paper_table() {
    let table = [
        ("gpt3_small", 125e6),
        ("gpt3_medium", 350e6),
        ("gpt3_large", 760e6),
        ("gpt3_xl", 1.3e9),
        ("gpt3_2_7b", 2.7e9),
        ("gpt3_6_7b", 6.7e9),
        ("gpt3_13b", 13.0e9),
        ("gpt3_175b", 175.0e9),
    ];
    for (c, paper) in table {
        let got = count("gpt3.kiln", c);
        assert!(
            within(got, paper, 0.025),
            "{c}: {got} vs the paper's {paper:e}"
        );
    }
}

#[test]
fn palm_matches_the_paper_table() {
    for (c, paper) in [
        ("palm_8b", 8.63e9),
        ("palm_62b", 62.50e9),
        ("palm_540b", 540.35e9),
    ] {
        let got = count("palm.kiln", c);
        assert!(
            within(got, paper, 0.01),
            "{c}: {got} vs the paper's {paper:e}"
        );
    }
}
