//! `kiln finetune` end to end on `gpt2_tiny`: LoRA on the query and value weights of a trained
//! base checkpoint, with every base parameter frozen. The base parameters come out bitwise
//! unchanged and without optimizer state, the LoRA weights train, and the adapter file applied to
//! the base checkpoint gives the same logits as the fine-tuned checkpoint.

mod loop_common;

use std::path::{Path, PathBuf};

use kiln_runtime::finetune::{finetune, load_adapter, load_base};
use kiln_runtime::generate::{load_inference, LogitsModel};
use kiln_runtime::session::{compile_run, load_spec, make_backend, Executor, Programs};
use kiln_runtime::tokenizer::Tokenizer;
use kiln_runtime::train::{train, ProgressOutput, TrainOptions};

fn options() -> TrainOptions {
    TrainOptions {
        executor: Executor::Cpu,
        progress: ProgressOutput::Lines(Box::new(std::io::sink())),
        ..TrainOptions::default()
    }
}

/// Trains the tiny base run in `dir`, then writes `<name>.yaml`: the same run into `<name>/`
/// with a `finetune` section from the base checkpoint plus `section` (its further lines).
/// Returns the base checkpoint and the fine-tuning config.
fn base_and_finetune(dir: &Path, name: &str, section: &str) -> (PathBuf, PathBuf) {
    let base_yaml = loop_common::write_run(dir, "");
    let base = train(&loop_common::load(&base_yaml, &[]), options()).unwrap();
    let base_ckpt = base.checkpoint.expect("base checkpoint");
    let text = std::fs::read_to_string(&base_yaml)
        .unwrap()
        .replace("out_dir: out", &format!("out_dir: {name}"));
    let ft_yaml = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &ft_yaml,
        format!(
            "{text}finetune:\n  from: {}\n  {section}\n",
            base_ckpt.display()
        ),
    )
    .unwrap();
    (base_ckpt, ft_yaml)
}

#[test]
fn lora_trains_only_its_weights_and_the_adapter_reproduces_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let (base_ckpt, ft_yaml) = base_and_finetune(
        dir.path(),
        "ft",
        "freeze: [\"*\"]\n  lora_targets: [\"*.attn.q.weight\", \"*.attn.v.weight\"]\n  \
         lora_rank: 2\n  lora_alpha: 4.0",
    );
    let config = loop_common::load(&ft_yaml, &[]);
    let summary = finetune(&config, options()).unwrap();
    // 4 adapted [32, 32] weights at rank 2: 4 · (32·2 + 2·32) of gpt2_tiny's parameters.
    assert_eq!(summary.trainable, 4 * (32 * 2 + 2 * 32));
    assert!(summary.trainable * 20 < summary.total, "{summary:?}");

    let before = kiln_runtime::checkpoint::load_checkpoint(&base_ckpt).unwrap();
    let after_path = summary.train.checkpoint.clone().expect("checkpoint");
    let after = kiln_runtime::checkpoint::load_checkpoint(&after_path).unwrap();
    for (name, t) in &before.params {
        assert_eq!(&after.params[name], t, "{name} changed");
    }
    assert!(after.opt_m.keys().all(|n| n.contains(".lora_")));
    assert_eq!(after.opt_m.len(), 8);
    let b = &after.params["h.0.attn.q.weight.lora_b"];
    assert!(b.data.iter().any(|x| *x != 0.0), "lora_b did not train");

    // Base checkpoint + adapter file = the fine-tuned checkpoint.
    let adapter = summary.adapter.expect("adapter file");
    let adapter_ckpt = kiln_runtime::checkpoint::load_checkpoint(&adapter).unwrap();
    assert_eq!(adapter_ckpt.params.len(), 8);
    let ids: Vec<u32> = (1..9).collect();
    let mut tuned = load_inference(&after_path, Executor::Cpu).unwrap();
    let want = tuned.model.forward(&ids).unwrap();

    let spec = load_spec(&config).unwrap();
    let compiled = compile_run(&config, &spec, Programs::Inference).unwrap();
    let mut backend = make_backend(Executor::Cpu, &compiled.logits, 99, None).unwrap();
    let tokenizer = Tokenizer::from_json(&before.meta.tokenizer).unwrap();
    load_base(backend.as_mut(), &base_ckpt, &tokenizer).unwrap();
    load_adapter(backend.as_mut(), &adapter).unwrap();
    let mut model = LogitsModel::new(backend, compiled.window, compiled.vocab, 0);
    assert_eq!(model.forward(&ids).unwrap(), want);

    // Without the adapter (every LoRA B at its zero init) the program is the base model, which
    // the fine-tuning changed.
    let mut plain = make_backend(Executor::Cpu, &compiled.logits, 99, None).unwrap();
    load_base(plain.as_mut(), &base_ckpt, &tokenizer).unwrap();
    let mut plain = LogitsModel::new(plain, compiled.window, compiled.vocab, 0);
    let mut base_model = load_inference(&base_ckpt, Executor::Cpu).unwrap();
    let base_logits = base_model.model.forward(&ids).unwrap();
    let plain_logits = plain.forward(&ids).unwrap();
    let close = base_logits
        .iter()
        .zip(&plain_logits)
        .all(|(a, b)| (a - b).abs() <= 1e-5 * (1.0 + a.abs()));
    assert!(close, "LoRA at init is not the base model");
    assert_ne!(base_logits, want);
}

/// T5's gradual unfreezing on `gpt2_tiny` (blocks `h.0`, `h.1`), one block per episode of 3
/// steps: after the first episode the lower block is bitwise the base's and has no optimizer
/// state while the top block and the parameters outside the stack (embeddings, final norm) have
/// trained; after the second both blocks have.
#[test]
fn gradual_unfreezing_trains_the_top_block_first() {
    let dir = tempfile::tempdir().unwrap();
    let (base_ckpt, ft_yaml) =
        base_and_finetune(dir.path(), "gu", "gradual_unfreezing: {every: 3}");
    let config = loop_common::load(&ft_yaml, &["steps=6", "checkpoint.every=3"]);
    finetune(&config, options()).unwrap();
    let load = |step: u64| {
        let p = dir.path().join(format!("gu/ckpt-{step:08}.safetensors"));
        kiln_runtime::checkpoint::load_checkpoint(&p).unwrap()
    };
    let before = kiln_runtime::checkpoint::load_checkpoint(&base_ckpt).unwrap();
    let (first, second) = (load(3), load(6));
    let changed = |c: &kiln_runtime::checkpoint::Checkpoint, name: &str| {
        c.params[name] != before.params[name]
    };
    for name in before.params.keys() {
        if name.starts_with("h.0.") {
            assert!(
                !changed(&first, name),
                "{name} trained in the first episode"
            );
            assert!(changed(&second, name), "{name} did not train in the second");
        } else {
            assert!(
                changed(&first, name),
                "{name} did not train in the first episode"
            );
        }
    }
    assert!(first.opt_m.keys().all(|n| !n.starts_with("h.0.")));
    assert!(second.opt_m.keys().any(|n| n.starts_with("h.0.")));
    assert_eq!(second.opt_m.len(), before.params.len());
}
