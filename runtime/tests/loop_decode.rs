//! Key/value-cached decoding against the full-window logits program, for every decoder-only
//! family (learned positions, banded-sparse layers, RoPE with GQA, MQA with a parallel block):
//! the cached step's next-token logits equal the full program's at every context length, and
//! greedy and sampled generation give the same tokens with and without the cache, also past the
//! window (where the cached model falls back to the sliding window).

mod loop_common;

use std::path::Path;

use kiln_runtime::backend::Backend;
use kiln_runtime::checkpoint::HostTensor;
use kiln_runtime::generate::LogitsModel;
use kiln_runtime::sample::{generate, SamplingConfig, TokenSampler};
use kiln_runtime::session::{
    compile_decode, compile_run, load_spec, make_backend, param_shapes, Executor, Programs,
};
use kiln_runtime::tokenizer::Tokenizer;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Seq length of the logits program: short enough that generation crosses the window.
const WINDOW: usize = 12;

fn write_run(dir: &Path, spec: &str, model: &str) -> std::path::PathBuf {
    std::fs::write(dir.join("corpus.txt"), loop_common::corpus(4_000)).unwrap();
    let yaml = format!(
        "spec: {}\nmodel: {model}\ndata:\n  path: corpus.txt\n  val_fraction: 0.1\n\
         batch_size: 2\nseq_len: {WINDOW}\nsteps: 2\nout_dir: out\n",
        loop_common::repo().join("specs").join(spec).display()
    );
    let path = dir.join("run.yaml");
    std::fs::write(&path, yaml).unwrap();
    path
}

/// Parameters with a wide spread, so that logits are far apart and the greedy choice is not a
/// near-tie that float rounding could flip.
fn randomise(backend: &mut dyn Backend, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    for (name, shape) in param_shapes(backend) {
        let n: usize = shape.iter().product();
        let data = (0..n).map(|_| rng.random_range(-0.5f32..0.5)).collect();
        backend
            .set_state(&name, &HostTensor { shape, data })
            .unwrap();
    }
}

fn models(spec: &str, model: &str, executor: Executor) -> (LogitsModel, LogitsModel, Tokenizer) {
    let tmp = tempfile::tempdir().unwrap();
    let config = loop_common::load(&write_run(tmp.path(), spec, model), &[]);
    let loaded = load_spec(&config).unwrap();
    let compiled = compile_run(&config, &loaded, Programs::Inference).unwrap();
    let mut full = make_backend(executor, &compiled.logits, 1, None).unwrap();
    randomise(full.as_mut(), 99);
    let mut plain = make_backend(executor, &compiled.logits, 1, None).unwrap();
    randomise(plain.as_mut(), 99);
    let step =
        compile_decode(&compiled.logits).unwrap_or_else(|e| panic!("{model}: no decode step: {e}"));
    let step = make_backend(executor, &step, 1, None).unwrap();
    let mut cached = LogitsModel::new(full, compiled.window, compiled.vocab, 1);
    cached.enable_cache(step).unwrap();
    let plain = LogitsModel::new(plain, compiled.window, compiled.vocab, 1);
    // The tiny configs have 96 outputs: ASCII bytes, which the byte tokenizer decodes.
    (cached, plain, Tokenizer::Byte)
}

fn check(spec: &str, model: &str, executor: Executor) {
    let (mut cached, mut plain, tok) = models(spec, model, executor);
    assert!(cached.has_cache());
    let vocab = cached.vocab();
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let context: Vec<u32> = (0..WINDOW)
        .map(|_| rng.random_range(0..vocab as u32))
        .collect();
    // Every prefix, in order (the cache grows one token at a time), then a context that
    // diverges after 4 tokens (the cache rewinds).
    let mut worst = 0f32;
    let mut probes: Vec<Vec<u32>> = (1..=WINDOW).map(|n| context[..n].to_vec()).collect();
    let mut branch = context[..4].to_vec();
    branch.extend([3, 1, 4]);
    probes.push(branch);
    for probe in &probes {
        let a = cached.next_logits(probe).unwrap();
        let b = plain.next_logits(probe).unwrap();
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
        for (x, y) in a.iter().zip(&b) {
            worst = worst.max((x - y).abs() / scale);
        }
    }
    assert!(
        worst < 1e-5,
        "{model} ({executor:?}): cached logits differ from the full window's by {worst:e}"
    );
    // Generation: greedy and sampled, past the window.
    for sampling in [
        SamplingConfig::greedy(),
        SamplingConfig {
            temperature: 0.8,
            top_k: Some(20),
            top_p: Some(0.9),
            seed: 3,
        },
    ] {
        let prompt = &context[..3];
        let run = |m: &mut LogitsModel| {
            let mut sampler = TokenSampler::new(sampling.clone()).unwrap();
            generate(
                |c: &[u32]| m.next_logits(c),
                &tok,
                &mut sampler,
                prompt,
                2 * WINDOW,
                &[],
                None,
            )
            .unwrap()
            .tokens
        };
        let a = run(&mut cached);
        let b = run(&mut plain);
        assert_eq!(
            a, b,
            "{model} ({executor:?}): cached and uncached tokens differ"
        );
    }
    println!("{model} ({executor:?}): worst relative logit difference {worst:.2e}");
}

#[test]
fn cached_decoding_matches_the_full_window_for_every_decoder_family() {
    check("gpt2.kiln", "gpt2_tiny", Executor::Interp);
    for (spec, model) in [
        ("gpt2.kiln", "gpt2_tiny"),
        ("gpt3.kiln", "gpt3_tiny"),
        ("llama.kiln", "llama_tiny"),
        ("palm.kiln", "palm_tiny"),
    ] {
        check(spec, model, Executor::Cpu);
    }
}

/// T5: the encoder's source is fixed per sequence and the decoder is cached; changing the
/// source drops the cache.
#[test]
fn cached_decoding_matches_the_full_window_for_an_encoder_decoder() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write_run(tmp.path(), "t5.kiln", "t5_tiny");
    let config = loop_common::load(&path, &["objective=span_corruption", "seq_len=24"]);
    let loaded = load_spec(&config).unwrap();
    let compiled = compile_run(&config, &loaded, Programs::Inference).unwrap();
    let src = compiled
        .logits
        .graph
        .find_input("inputs")
        .map(|v| {
            compiled.logits.graph.shape(v)[1]
                .bind(&compiled.logits.bindings)
                .unwrap()
        })
        .unwrap() as usize;
    let mut full = make_backend(Executor::Cpu, &compiled.logits, 1, None).unwrap();
    randomise(full.as_mut(), 7);
    let mut plain = make_backend(Executor::Cpu, &compiled.logits, 1, None).unwrap();
    randomise(plain.as_mut(), 7);
    let step = compile_decode(&compiled.logits).unwrap();
    let step = make_backend(Executor::Cpu, &step, 1, None).unwrap();
    let (w, v) = (compiled.window, compiled.vocab);
    let mut cached = LogitsModel::encoder_decoder(full, w, v, 1);
    cached.enable_cache(step).unwrap();
    let mut plain = LogitsModel::encoder_decoder(plain, w, v, 1);
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut worst = 0f32;
    for _source in 0..2 {
        let source: Vec<i32> = (0..src).map(|_| rng.random_range(0..65)).collect();
        // Padding after a random length: the masked source keys must not matter either way.
        let len = rng.random_range(1..=src);
        cached.set_source(source.clone(), len);
        plain.set_source(source, len);
        let context: Vec<u32> = std::iter::once(65)
            .chain((1..w).map(|_| rng.random_range(0..65)))
            .collect();
        for n in 1..=w {
            let a = cached.next_logits(&context[..n]).unwrap();
            let b = plain.next_logits(&context[..n]).unwrap();
            let scale = b.iter().fold(0f32, |m, x| m.max(x.abs())).max(1.0);
            for (x, y) in a.iter().zip(&b) {
                worst = worst.max((x - y).abs() / scale);
            }
        }
    }
    assert!(
        worst < 1e-5,
        "t5_tiny: cached logits differ from the full window's by {worst:e}"
    );
    // The mask: ids past `input_len` change nothing (T5's attention mask over the padding).
    let source: Vec<i32> = (0..src).map(|_| rng.random_range(0..65)).collect();
    let mut other = source.clone();
    for x in &mut other[src / 2..] {
        *x = (*x + 7) % 65;
    }
    let ctx = [65u32, 3, 9];
    plain.set_source(source, src / 2);
    let a = plain.next_logits(&ctx).unwrap();
    plain.set_source(other.clone(), src / 2);
    assert_eq!(
        a,
        plain.next_logits(&ctx).unwrap(),
        "padding is attended to"
    );
    plain.set_source(other, src);
    assert_ne!(a, plain.next_logits(&ctx).unwrap(), "the source is ignored");
    println!(
        "t5_tiny (Cpu): worst relative logit difference {worst:.2e} over {w} decoder positions"
    );
}

/// `kiln generate` on a trained T5 checkpoint: the prompt is the encoder's source and the answer
/// comes from the decoder; cached and uncached decoding print the same text, and sampling with a
/// fixed seed repeats.
#[test]
fn an_encoder_decoder_checkpoint_generates_the_same_with_and_without_the_cache() {
    use kiln_runtime::generate::{generate as generate_text, load_inference_with};
    use kiln_runtime::train::{train, ProgressOutput, TrainOptions};
    let tmp = tempfile::tempdir().unwrap();
    let path = write_run(tmp.path(), "t5.kiln", "t5_tiny");
    let config = loop_common::load(
        &path,
        &[
            "objective=span_corruption",
            "seq_len=32",
            "steps=8",
            "eval.every=0",
        ],
    );
    let summary = train(
        &config,
        TrainOptions {
            executor: Executor::Cpu,
            progress: ProgressOutput::Lines(Box::new(std::io::sink())),
            ..TrainOptions::default()
        },
    )
    .unwrap();
    let ckpt = summary.checkpoint.expect("checkpoint");
    let mut cached = load_inference_with(&ckpt, Executor::Cpu, true).unwrap();
    let mut plain = load_inference_with(&ckpt, Executor::Cpu, false).unwrap();
    assert!(cached.model.has_cache(), "{:?}", cached.no_cache_reason);
    assert!(cached.seq2seq.is_some());
    for sampling in [
        SamplingConfig::greedy(),
        SamplingConfig {
            temperature: 1.0,
            top_k: None,
            top_p: None,
            seed: 4,
        },
    ] {
        let a = generate_text(&mut cached, "First Citizen:", 20, sampling.clone(), &[]).unwrap();
        let b = generate_text(&mut plain, "First Citizen:", 20, sampling.clone(), &[]).unwrap();
        let c = generate_text(&mut cached, "First Citizen:", 20, sampling, &[]).unwrap();
        assert_eq!(a.tokens, b.tokens);
        assert_eq!(a.tokens, c.tokens);
        assert!(a.tokens.iter().all(|&t| t < 65), "{:?}", a.tokens);
    }
}
