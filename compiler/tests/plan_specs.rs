//! `kiln plan` over every named config of every spec: each plans (in under a second in an
//! optimised build), the JSON report has the documented fields, and the named plans' reports are
//! snapshotted (their numbers are the project's record of the published layouts).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kiln_compiler::plan::{self, PlanOptions};
use kiln_compiler::sema::{render, Workspace};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repo root")
}

fn load(spec: &str) -> (Workspace, usize) {
    let text = std::fs::read_to_string(root().join("specs").join(spec)).unwrap();
    let mut ws = Workspace::new();
    let id = ws.add_file(&format!("specs/{spec}"), &text);
    (ws, id)
}

const SPECS: [&str; 5] = [
    "gpt2.kiln",
    "gpt3.kiln",
    "llama.kiln",
    "palm.kiln",
    "t5.kiln",
];

#[test]
fn every_named_config_of_every_spec_plans_quickly() {
    // The budget is one second in an optimised build; this test also runs unoptimised.
    let limit = if cfg!(debug_assertions) {
        Duration::from_secs(6)
    } else {
        Duration::from_secs(1)
    };
    let mut n = 0;
    for spec in SPECS {
        let (ws, id) = load(spec);
        for config in ws.configs_of(id) {
            let t0 = Instant::now();
            let o = PlanOptions {
                model: Some(config.clone()),
                ..Default::default()
            };
            let s = plan::setup(&ws, &o).unwrap_or_else(|d| {
                panic!(
                    "{config}: {}",
                    d.iter().map(|x| render(x)).collect::<String>()
                )
            });
            let a = plan::analyze(&ws, &s).unwrap_or_else(|d| {
                panic!(
                    "{config}: {}",
                    d.iter().map(|x| render(x)).collect::<String>()
                )
            });
            let took = t0.elapsed();
            eprintln!(
                "{config}: {took:?}, {} layers ({} built), {:.2} GiB per device ({:?})",
                a.report.layers,
                a.report.built_layers,
                a.report.per_device_bytes.total as f64 / 1073741824.0,
                a.report.memory_source
            );
            assert!(took < limit, "{config} took {took:?}");
            let r = &a.report;
            let pd = r.per_device_bytes;
            assert_eq!(
                pd.total,
                pd.params + pd.grads + pd.optimizer + pd.activations + pd.workspace
            );
            assert!(
                r.flops_per_step > 0.0 && r.step_time_s > 0.0 && r.mfu > 0.0 && r.mfu < 1.0,
                "{config}: {r:?}"
            );
            assert!(r.params > 0 && pd.params > 0);
            n += 1;
        }
    }
    assert!(n >= 25, "{n} configs");
}

#[test]
fn the_json_report_has_the_documented_fields() {
    let (ws, _) = load("gpt2.kiln");
    let o = PlanOptions {
        model: Some("gpt2_small".into()),
        ..Default::default()
    };
    let a = plan::analyze(&ws, &plan::setup(&ws, &o).unwrap()).unwrap();
    let j = serde_json::to_value(&a.report).unwrap();
    for k in [
        "params",
        "grads",
        "optimizer",
        "activations",
        "workspace",
        "total",
    ] {
        assert!(j["per_device_bytes"][k].is_u64(), "per_device_bytes.{k}");
    }
    for k in ["activation_bytes_per_layer", "comm_bytes_per_step"] {
        assert!(j[k].is_u64(), "{k}");
    }
    for k in [
        "flops_per_step",
        "recompute_flops_per_step",
        "step_time_s",
        "mfu",
    ] {
        assert!(j[k].is_f64(), "{k}");
    }
    // GPT-2 small: forward + backward ≈ 6 · parameters · tokens plus attention.
    let tokens = 1024.0;
    let six_n = 6.0 * 124_439_808.0 * tokens;
    let ratio = a.report.flops_per_step / six_n;
    assert!(ratio > 1.0 && ratio < 1.3, "{ratio}");
}

#[test]
fn named_plans_reports() {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(root().join("snapshots/plan"));
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| {
        for (spec, plan_name) in [
            ("gpt3.kiln", "gpt3_175b_megatron"),
            ("gpt3.kiln", "gpt3_175b_korthikanti"),
            ("palm.kiln", "palm_540b_paper"),
            ("llama.kiln", "llama_65b_a100"),
        ] {
            let (ws, _) = load(spec);
            let o = PlanOptions {
                plan: Some(plan_name.into()),
                ..Default::default()
            };
            let a = plan::analyze(&ws, &plan::setup(&ws, &o).unwrap()).unwrap();
            assert!(a.report.fits, "{plan_name}");
            assert!(plan::check(&ws, &a).is_empty());
            insta::assert_json_snapshot!(plan_name, a.report);
        }
    });
}
