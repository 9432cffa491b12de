//! FLOP counts against the PaLM paper's model-FLOPs formula (Chowdhery et al. 2022, appendix B):
//! a training step costs `6N + 12·L·H·Q·T` FLOPs per token, one third of it forward, where `N`
//! counts the parameters with the tied embedding once (as the output projection) and without the
//! position embedding. For GPT-2 small at T = 1024 our forward count (whole batch, loss and
//! dropout included) must be within 1% of that third, and the backward count within 1% of twice
//! the forward.

use std::path::Path;

use kiln_compiler::compile::{compile, CompileOptions, Compiled};
use kiln_compiler::sema::{render, Request, Workspace};
use kiln_compiler::train::StepOptions;

fn gpt2(config: &str, batch: i64, seq: i64, train: bool) -> Compiled {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("specs/gpt2.kiln")).unwrap();
    let mut ws = Workspace::new();
    ws.add_file("specs/gpt2.kiln", &text);
    let opts = CompileOptions {
        train: train.then(|| StepOptions {
            clip: Some(1.0),
            ..StepOptions::default()
        }),
        batch,
        seq,
        ..CompileOptions::default()
    };
    compile(
        &ws,
        &Request {
            config: config.into(),
            ..Default::default()
        },
        &opts,
    )
    .unwrap_or_else(|ds| panic!("{}", ds.iter().map(|d| render(d)).collect::<String>()))
}

/// PaLM's per-token training FLOPs for GPT-2 small: (N, L, H, Q).
fn palm_per_token(c: &Compiled, seq: i64) -> f64 {
    let wpe = c.forward.find_param("wpe").expect("wpe");
    let wpe_n: i64 = c
        .forward
        .shape(wpe)
        .iter()
        .map(|d| d.as_const().unwrap())
        .product();
    let n = (c.stats.param_count as i64 - wpe_n) as f64;
    let (l, h, q) = (12.0, 12.0, 64.0);
    6.0 * n + 12.0 * l * h * q * seq as f64
}

#[test]
fn gpt2_small_forward_and_backward_flops_match_the_palm_formula() {
    let (batch, seq) = (1, 1024);
    let c = gpt2("gpt2_small", batch, seq, true);
    assert_eq!(c.stats.param_count, 124_439_808);
    let expected_fwd = palm_per_token(&c, seq) / 3.0 * (batch * seq) as f64;
    let fwd = c.stats.flops_forward as f64;
    let bwd = c.stats.flops_backward as f64;
    println!(
        "forward {fwd:e} vs PaLM {expected_fwd:e} ({:+.3}%); backward / forward = {:.4}; optimizer {:e}",
        (fwd / expected_fwd - 1.0) * 100.0,
        bwd / fwd,
        c.stats.flops_optimizer as f64
    );
    assert!(
        (fwd / expected_fwd - 1.0).abs() <= 0.01,
        "forward {fwd} vs {expected_fwd}"
    );
    assert!(
        (bwd / (2.0 * fwd) - 1.0).abs() <= 0.01,
        "backward {bwd} vs 2 x {fwd}"
    );
    // The optimizer is a per-parameter cost, small against 6N per token for 1024 tokens.
    assert!(c.stats.flops_optimizer > 10 * c.stats.param_count);
    assert!((c.stats.flops_optimizer as f64) < 0.01 * fwd);
}

#[test]
fn flops_scale_with_the_batch_and_sizes_are_reported() {
    let one = gpt2("gpt2_tiny", 1, 16, true);
    let four = gpt2("gpt2_tiny", 4, 16, true);
    // Nearly 4x: the causal mask ([seq, seq] compare), the loss's final division and the sum of
    // a tied table's two gradient contributions do not depend on the batch.
    for (a, b) in [
        (one.stats.flops_forward, four.stats.flops_forward),
        (one.stats.flops_backward, four.stats.flops_backward),
    ] {
        let ratio = b as f64 / a as f64;
        assert!((ratio / 4.0 - 1.0).abs() < 0.01, "scaled by {ratio}");
        assert!(b < 4 * a);
    }
    // The optimizer does not depend on the batch.
    assert_eq!(four.stats.flops_optimizer, one.stats.flops_optimizer);
    // f32 everywhere: 4 bytes per param, one gradient each, AdamW's m and v.
    let s = &one.stats;
    assert_eq!(s.param_bytes, 4 * s.param_count);
    assert_eq!(s.grad_bytes, s.param_bytes);
    assert_eq!(s.optimizer_bytes, 2 * s.param_bytes);
    let inference = gpt2("gpt2_tiny", 1, 16, false);
    assert_eq!(inference.stats.flops_backward, 0);
    assert_eq!(inference.stats.grad_bytes, 0);
    assert_eq!(inference.stats.optimizer_bytes, 0);
    assert!(inference.stats.kernels.is_empty());
}
