//! `kiln finetune` from the command line: a LoRA run from a trained checkpoint reports the share
//! of trained parameters and writes the adapter file; a config without a `finetune` section or
//! with a target that names nothing is a diagnostic.

mod cli_common;

use cli_common::{assert_fails, kiln, stderr, write_run};

#[test]
fn lora_finetune_from_a_checkpoint() {
    let tmp = tempfile::tempdir().unwrap();
    write_run(tmp.path(), "");
    let o = kiln(tmp.path(), &["train", "run.yaml", "--executor", "cpu"]);
    assert!(o.status.success(), "{}", stderr(&o));

    let o = kiln(tmp.path(), &["finetune", "run.yaml", "--out", "ft"]);
    assert_fails(&o, &["config::invalid", "needs a `finetune` section"]);

    let yaml = std::fs::read_to_string(tmp.path().join("run.yaml")).unwrap();
    let with = |targets: &str| {
        format!(
            "{yaml}finetune:\n  from: out/ckpt-00000012.safetensors\n  freeze: [\"*\"]\n  \
             lora_targets: [\"{targets}\"]\n  lora_rank: 2\n"
        )
    };
    std::fs::write(tmp.path().join("bad.yaml"), with("nothing.*")).unwrap();
    let o = kiln(tmp.path(), &["finetune", "bad.yaml", "--out", "ft"]);
    assert_fails(&o, &["config::invalid", "matches no parameter"]);

    std::fs::write(tmp.path().join("ft.yaml"), with("*.mlp.fc.weight")).unwrap();
    let args = [
        "finetune",
        "ft.yaml",
        "--out",
        "ft",
        "--executor",
        "cpu",
        "--set",
        "steps=4",
    ];
    let o = kiln(tmp.path(), &args);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    // 2 blocks, rank 2, fc weights [32, 128]: 2 · 2 · (32 + 128) = 640 trained elements.
    assert!(err.contains("trainable parameters: 640 of"), "{err}");
    assert!(tmp.path().join("ft/adapter.safetensors").is_file());
}
