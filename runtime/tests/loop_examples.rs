//! The shipped run configs load, compile and fit their data; the Shakespeare one is nanoGPT's
//! CPU example setting for setting.

mod loop_common;

use kiln_compiler::train::{decays, Optimizer as StepOptimizer};
use kiln_runtime::config::{Decay, Optimizer, TokenizerConfig};
use kiln_runtime::session::{compile_run, load_spec, step_options, Programs};
use kiln_runtime::train::load_run_data;

#[test]
fn shakespeare_char_is_nanogpts_cpu_example() {
    let path = loop_common::repo().join("examples/shakespeare_char.yaml");
    let c = loop_common::load(&path, &[]);
    assert_eq!(c.model, "gpt2_char");
    assert_eq!(
        (c.batch_size, c.seq_len, c.steps, c.grad_accum),
        (12, 64, 2000, 1)
    );
    assert_eq!(
        c.optimizer.resolved(),
        Optimizer::AdamW {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.99,
            eps: 1e-8,
            weight_decay: 0.1
        }
    );
    let s = c.lr_schedule();
    assert_eq!(
        (s.warmup, s.decay_steps, s.min_lr, s.decay),
        (100, 2000, 1e-4, Decay::Cosine)
    );
    assert_eq!(c.grad_clip, 1.0);
    assert_eq!((c.eval.every, c.eval.batches), (250, 20));
    assert_eq!(c.data.tokenizer, Some(TokenizerConfig::Char));
    assert_eq!(c.data.val_fraction, Some(0.1));

    let spec = load_spec(&c).unwrap();
    let compiled = compile_run(&c, &spec, Programs::Inference).unwrap();
    assert_eq!((compiled.vocab, compiled.window), (65, 64));
    let data = load_run_data(&c, &compiled).unwrap();
    assert_eq!(data.tokenizer.vocab_size(), 65);
    // nanoGPT's split of the 1,115,394 characters.
    assert_eq!((data.train.len(), data.val.len()), (1_003_854, 111_540));

    // nanoGPT decays every parameter of two or more dimensions, embeddings included.
    let opts = step_options(&c);
    assert!(
        matches!(opts.optimizer, StepOptimizer::AdamW { weight_decay, .. } if weight_decay == 0.1)
    );
    assert_eq!(opts.clip, Some(1.0));
    let g = &compiled.eval.graph;
    let wte = g.find_param("wte").expect("wte");
    assert!(decays(g, wte, opts.decay));
    let bias = g
        .params()
        .into_iter()
        .find(|&p| g.shape(p).len() == 1)
        .expect("a 1-D parameter");
    assert!(!decays(g, bias, opts.decay));
}

#[test]
fn smoke_config_compiles_every_program() {
    let path = loop_common::repo().join("examples/smoke.yaml");
    let c = loop_common::load(&path, &[]);
    let spec = load_spec(&c).unwrap();
    let compiled = compile_run(&c, &spec, Programs::All).unwrap();
    let train = compiled.train.expect("train program");
    for name in ["tokens", "lr", "step"] {
        assert!(train.graph.find_input(name).is_some(), "{name}");
    }
    assert!(train.graph.output("grad_norm").is_some());
    assert!(train.graph.find_param("opt.v.wte").is_some());
    assert_eq!(compiled.vocab, 96);
}
