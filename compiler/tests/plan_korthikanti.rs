//! GPT-3 175B's planned activation memory per layer against Korthikanti et al. 2022 ("Reducing
//! Activation Recomputation in Large Transformer Models", table 2), printed side by side:
//!
//! | layout | no recompute | selective | full |
//! |---|---|---|---|
//! | no parallelism | sbh(34 + 5as/h) | 34sbh | 2sbh |
//! | tensor parallel t | sbh(10 + 24/t + 5as/(ht)) | sbh(10 + 24/t) | 2sbh |
//! | tensor + sequence parallel | sbh/t (34 + 5as/h) | 34sbh/t | 2sbh/t |
//!
//! bytes, with s = 2048, b = 1 (micro-batch), h = 12288, a = 96. The paper counts 16-bit
//! activations and 1-byte dropout masks with dropout on, so the plan uses mixed bf16 accounting
//! and `dropout = 0.1`. What the plan counts: every forward value that a backward op (or a
//! recompute op) reads, with fused-kernel accounting (`recompute` module doc); per layer means the
//! layer's own kept values plus its input. The few extra bytes over the formulas are the row
//! statistics of the norms and softmax ([b, s] and [b, a, s] sized), which the formulas omit.

use std::path::Path;

use kiln_compiler::ir::DType;
use kiln_compiler::plan::{self, PlanOptions};
use kiln_compiler::sema::plancheck::RecomputePolicy;
use kiln_compiler::sema::{render, Value, Workspace};

#[test]
fn gpt3_175b_activation_memory_per_layer_matches_korthikanti_2022() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let text = std::fs::read_to_string(root.join("specs/gpt3.kiln")).unwrap();
    let mut ws = Workspace::new();
    ws.add_file("specs/gpt3.kiln", &text);
    let (s, b, h, a) = (2048.0, 1.0, 12288.0, 96.0);
    let sbh = s * b * h;
    let t = 8.0;
    let cases: Vec<(&str, RecomputePolicy, u64, bool, f64)> = vec![
        (
            "no recompute",
            RecomputePolicy::None,
            1,
            false,
            sbh * (34.0 + 5.0 * a * s / h),
        ),
        (
            "no recompute, tensor 8",
            RecomputePolicy::None,
            8,
            false,
            sbh * (10.0 + 24.0 / t + 5.0 * a * s / (h * t)),
        ),
        (
            "no recompute, tensor 8 + sequence",
            RecomputePolicy::None,
            8,
            true,
            sbh / t * (34.0 + 5.0 * a * s / h),
        ),
        (
            "selective",
            RecomputePolicy::Selective,
            1,
            false,
            sbh * 34.0,
        ),
        (
            "selective, tensor 8",
            RecomputePolicy::Selective,
            8,
            false,
            sbh * (10.0 + 24.0 / t),
        ),
        (
            "selective, tensor 8 + sequence",
            RecomputePolicy::Selective,
            8,
            true,
            sbh * 34.0 / t,
        ),
        ("full", RecomputePolicy::Full, 1, false, 2.0 * sbh),
        (
            "full, tensor 8 + sequence",
            RecomputePolicy::Full,
            8,
            true,
            2.0 * sbh / t,
        ),
    ];
    eprintln!(
        "{:<36} {:>14} {:>14} {:>8}",
        "GPT-3 175B, bytes per layer", "planned", "Korthikanti", "ratio"
    );
    for (what, policy, tensor, sequence, formula) in cases {
        let o = PlanOptions {
            model: Some("gpt3_175b".into()),
            overrides: vec![("dropout".into(), Value::Float(0.1))],
            batch: Some(1),
            seq: Some(2048),
            device: Some("a100-80gb".into()),
            precision: Some(DType::BF16),
            recompute: Some(policy),
            tensor: Some(tensor),
            sequence: Some(sequence),
            ..Default::default()
        };
        let setup = plan::setup(&ws, &o)
            .unwrap_or_else(|d| panic!("{}", d.iter().map(|x| render(x)).collect::<String>()));
        let an = plan::analyze(&ws, &setup)
            .unwrap_or_else(|d| panic!("{}", d.iter().map(|x| render(x)).collect::<String>()));
        let got = an.report.activation_bytes_per_layer as f64;
        let ratio = got / formula;
        eprintln!("{what:<36} {got:>14.4e} {formula:>14.4e} {ratio:>8.4}");
        assert!(
            (ratio - 1.0).abs() <= 0.05,
            "{what}: planned {got:e} vs formula {formula:e}"
        );
        assert_eq!(an.report.layers, 96);
        assert_eq!(an.report.built_layers, 2, "planned from two built layers");
    }
}
