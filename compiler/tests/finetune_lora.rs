//! LoRA and freezing as forward-graph transforms, differentially: the adapted `gpt2_tiny` computes
//! exactly the base model with `W + A·B·(alpha/rank)` in place of each adapted `W` (checked through
//! the reference interpreter against the untransformed graph fed the merged weight), and the
//! training step of a frozen graph has no gradient, update or optimizer state for frozen weights.

use std::collections::HashMap;
use std::path::Path;

use kiln_compiler::finetune::{apply, apply_lora, freeze, param_elements, FinetuneError};
use kiln_compiler::finetune::{FinetuneSpec, LoraSpec};
use kiln_compiler::interp::{init_params, run, Precision, RunOptions, Tensor};
use kiln_compiler::ir::{Bindings, DType, Graph};
use kiln_compiler::sema::{Request, Workspace};
use kiln_compiler::train::{training_step, StepOptions};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn forward() -> Graph {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../specs/gpt2.kiln");
    let text = std::fs::read_to_string(&path).unwrap();
    let mut ws = Workspace::new();
    ws.add_file("specs/gpt2.kiln", &text);
    let req = Request {
        config: "gpt2_tiny".into(),
        overrides: vec![],
        objective: Some(("causal_lm".into(), vec![])),
        training: false,
    };
    match ws.instantiate(&req) {
        Ok(i) => i.graph,
        Err(d) => panic!("{d:?}"),
    }
}

fn bindings() -> Bindings {
    Bindings::new().with("batch", 2).with("seq", 8)
}

fn tokens() -> HashMap<String, Tensor> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let ids: Vec<i64> = (0..2 * 9).map(|_| rng.random_range(0..96)).collect();
    HashMap::from([(
        "tokens".to_string(),
        Tensor::int(DType::I32, vec![2, 9], ids),
    )])
}

fn loss(g: &Graph, params: &HashMap<String, Tensor>) -> f64 {
    let opts = RunOptions {
        seed: 1,
        step: 0,
        precision: Precision::F64,
    };
    let out = run(g, &bindings(), &tokens(), params, &opts).unwrap();
    out.outputs["loss"].as_f64().unwrap()[0]
}

fn floats(t: &Tensor) -> Vec<f64> {
    t.as_f64().unwrap().to_vec()
}

fn lora_spec() -> LoraSpec {
    LoraSpec {
        targets: vec!["*.attn.q.weight".into(), "*.mlp.fc.weight".into()],
        rank: 2,
        alpha: 4.0,
    }
}

#[test]
fn lora_is_the_base_model_with_merged_weights() {
    let base = forward();
    let mut adapted = base.clone();
    let names = apply_lora(&mut adapted, &lora_spec()).unwrap();
    assert_eq!(names.len(), 4, "{names:?}");
    let mut params = init_params(&adapted, &bindings(), 3).unwrap();
    // B starts at zero: the adapted model is the base model.
    let base_params: HashMap<String, Tensor> = params
        .iter()
        .filter(|(n, _)| !n.contains(".lora_"))
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    assert_eq!(loss(&adapted, &params), loss(&base, &base_params));

    // Random B: the adapted model equals the base one with W + A·B·(alpha/rank).
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let mut merged = base_params.clone();
    for w in &names {
        let b_name = format!("{w}.lora_b");
        let b = params[&b_name].clone();
        let b_data: Vec<f64> = (0..floats(&b).len())
            .map(|_| rng.random_range(-0.5..0.5))
            .collect();
        let b = Tensor::float(b.dtype, b.shape.clone(), b_data);
        params.insert(b_name, b.clone());
        let a = &params[&format!("{w}.lora_a")];
        let wt = &base_params[w];
        let (k, n, r) = (wt.shape[0], wt.shape[1], 2);
        let (a, bd, wd) = (floats(a), floats(&b), floats(wt));
        let m: Vec<f64> = (0..k * n)
            .map(|i| {
                let (row, col) = (i / n, i % n);
                wd[i]
                    + (0..r)
                        .map(|j| a[row * r + j] * bd[j * n + col])
                        .sum::<f64>()
                        * 2.0
            })
            .collect();
        merged.insert(w.clone(), Tensor::float(wt.dtype, wt.shape.clone(), m));
    }
    let (got, want) = (loss(&adapted, &params), loss(&base, &merged));
    // The merged weight is rounded to the parameters' f32; the rest is exact (f64 interpreter).
    assert!((got - want).abs() < 1e-7, "{got} vs {want}");
    assert!((got - loss(&base, &base_params)).abs() > 1e-3);
}

#[test]
fn frozen_weights_get_no_gradient_update_or_optimizer_state() {
    let mut g = forward();
    apply(
        &mut g,
        &FinetuneSpec {
            freeze: vec!["*".into()],
            lora: Some(lora_spec()),
            adapters: None,
            top_layers: None,
        },
    )
    .unwrap();
    let (trainable, total) = param_elements(&g.bind(&bindings()).unwrap());
    // 4 adapted weights: 2 of [32, 32] and 2 of [32, 128], rank 2.
    assert_eq!(trainable, 2 * (32 * 2 + 2 * 32) + 2 * (32 * 2 + 2 * 128));
    assert!(trainable * 20 < total, "{trainable} of {total}");
    let step = training_step(&g, &StepOptions::default()).unwrap();
    let updated: Vec<&str> = step.updates().iter().map(|u| u.target.as_str()).collect();
    assert_eq!(updated.len(), 3 * 8, "{updated:?}");
    assert!(updated
        .iter()
        .all(|t| t.ends_with(".lora_a") || t.ends_with(".lora_b")));
    assert!(step.find_param("opt.m.h.0.attn.q.weight").is_none());
    assert!(step.find_param("opt.m.wte").is_none());
    assert!(step.find_param("opt.v.h.0.attn.q.weight.lora_a").is_some());
    assert!(step.outputs().iter().all(|o| !o.name.starts_with("grad.")));

    // Freezing by pattern alone: the matched weights drop out of the step, the rest stay.
    let mut g = forward();
    let frozen = freeze(&mut g, &["h.0.*".into()]).unwrap();
    assert_eq!(frozen.len(), 16, "{frozen:?}");
    let step = training_step(&g, &StepOptions::default()).unwrap();
    assert!(step.find_param("opt.m.h.0.mlp.fc.weight").is_none());
    assert!(step.find_param("opt.m.h.1.mlp.fc.weight").is_some());
    assert!(step.updates().iter().all(|u| !u.target.starts_with("h.0.")));
}

#[test]
fn bad_targets_are_errors() {
    let mut g = forward();
    let err = freeze(&mut g, &["nothing.*".into()]).unwrap_err();
    assert!(matches!(err, FinetuneError::NoMatch { .. }), "{err}");
    // The tied embedding is read by gather and a transposed matmul: not a plain `x @ W`.
    let mut g = forward();
    let spec = LoraSpec {
        targets: vec!["wte".into()],
        rank: 2,
        alpha: 1.0,
    };
    let err = apply_lora(&mut g, &spec).unwrap_err();
    assert!(matches!(err, FinetuneError::UnsupportedUse { .. }), "{err}");
    let mut g = forward();
    let spec = LoraSpec {
        targets: vec!["h.0.ln_1.weight".into()],
        rank: 2,
        alpha: 1.0,
    };
    assert!(matches!(
        apply_lora(&mut g, &spec).unwrap_err(),
        FinetuneError::NotMatrix { .. }
    ));
}

#[test]
fn adapters_start_as_the_base_model_and_train_alone() {
    use kiln_compiler::finetune::{apply_adapters, AdapterSpec};
    let base = forward();
    let mut adapted = base.clone();
    let spec = AdapterSpec {
        targets: vec!["*.mlp.proj.weight".into()],
        dim: 4,
    };
    assert_eq!(apply_adapters(&mut adapted, &spec).unwrap().len(), 2);
    let mut params = init_params(&adapted, &bindings(), 3).unwrap();
    let base_params: HashMap<String, Tensor> = params
        .iter()
        .filter(|(n, _)| !n.contains(".adapter_"))
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    let base_loss = loss(&base, &base_params);
    assert_eq!(loss(&adapted, &params), base_loss);
    // A non-zero up-projection changes the model.
    let up = params["h.1.mlp.proj.weight.adapter_up"].clone();
    let data: Vec<f64> = (0..floats(&up).len())
        .map(|i| (i % 7) as f64 * 20.0)
        .collect();
    params.insert(
        "h.1.mlp.proj.weight.adapter_up".into(),
        Tensor::float(up.dtype, up.shape.clone(), data),
    );
    assert!((loss(&adapted, &params) - base_loss).abs() > 1e-4);

    apply(
        &mut adapted,
        &FinetuneSpec {
            freeze: vec!["*".into()],
            ..FinetuneSpec::default()
        },
    )
    .unwrap();
    let step = training_step(&adapted, &StepOptions::default()).unwrap();
    let updated: Vec<&str> = step.updates().iter().map(|u| u.target.as_str()).collect();
    assert_eq!(updated.len(), 3 * 4, "{updated:?}");
    assert!(updated.iter().all(|t| t.contains(".adapter_")));
}

#[test]
fn blocks_are_read_from_parameter_names() {
    use kiln_compiler::finetune::layer_of;
    assert_eq!(layer_of("h.3.attn.q.weight"), Some(("h", 3)));
    assert_eq!(layer_of("decoder.12.ff.wo.weight"), Some(("decoder", 12)));
    assert_eq!(layer_of("model.layers.7.mlp.w1"), Some(("model.layers", 7)));
    assert_eq!(layer_of("wte"), None);
    assert_eq!(layer_of("ln_f.weight"), None);
    assert_eq!(layer_of("3.x"), None);
}
