//! `kiln compile --emit kernels|json`: the fused kernel program of a training step, printed the
//! same way every time, with one attention kernel per layer and direction.

mod cli_common;

use cli_common::{kiln, repo, stdout};

fn kernels(model: &str, spec: &str, emit: &str) -> String {
    let spec = repo().join(spec);
    let o = kiln(
        &repo(),
        &[
            "compile",
            spec.to_str().unwrap(),
            "--model",
            model,
            "--train",
            "--batch",
            "2",
            "--seq",
            "8",
            "--emit",
            emit,
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    stdout(&o)
}

#[test]
fn kernel_listing_is_deterministic_and_fuses_attention() {
    let a = kernels("gpt2_tiny", "specs/gpt2.kiln", "kernels");
    assert_eq!(a, kernels("gpt2_tiny", "specs/gpt2.kiln", "kernels"));
    assert!(a.starts_with("program: "), "{a}");
    let launches = |k: &str| a.lines().filter(|l| l.contains(&format!(" {k} "))).count();
    assert_eq!(launches("attention.fwd"), 2, "{a}");
    assert_eq!(launches("attention.bwd"), 2, "{a}");
}

#[test]
fn json_summary_counts_kernels() {
    let j: serde_json::Value =
        serde_json::from_str(&kernels("llama_tiny", "specs/llama.kiln", "json")).unwrap();
    assert_eq!(j["kernels"]["attention.fwd"], 2, "{j}");
    assert_eq!(j["kernels"]["attention.bwd"], 2, "{j}");
    assert!(j["kernels"]["gemm"].as_u64().unwrap() > 0, "{j}");
}
