//! `kiln finetune`: training that starts from a checkpoint, with frozen parameters and LoRA.
//!
//! The graph side is the compiler's (`kiln_compiler::finetune`): the run config's `finetune`
//! section rewrites every program's forward graph (train, eval, logits) the same way, so a
//! fine-tuned checkpoint loads into `kiln eval` and `kiln generate` like any other (its stored
//! config carries the section). This module holds the host side: loading the base parameters
//! into a fresh program, and saving and loading the LoRA weights on their own (an adapter file a
//! few kilobytes large, applied to the base checkpoint it was trained from).

use std::path::Path;

use kiln_compiler::finetune::{self as cfinetune, is_lora_param};
use kiln_compiler::ir::Graph;

use crate::backend::Backend;
use crate::checkpoint::{
    load_checkpoint, save_checkpoint, Checkpoint, CheckpointError, CheckpointMeta, Shape, TensorMap,
};
use crate::config::{ConfigErrorKind, FinetuneConfig, RunConfig};
use crate::session::{RunError, StateName};
use crate::tokenizer::Tokenizer;

/// File name of the LoRA and adapter weights in a fine-tuning run's output folder.
pub const ADAPTER_FILE: &str = "adapter.safetensors";

/// Applies the run config's fine-tuning section to a forward graph.
pub fn transform(
    config: &RunConfig,
    f: &FinetuneConfig,
    graph: &mut Graph,
) -> Result<(), RunError> {
    cfinetune::apply(graph, &f.spec()).map_err(|e| {
        let field = match &e {
            cfinetune::FinetuneError::Rank => "lora_rank",
            cfinetune::FinetuneError::Alpha { .. } => "lora_alpha",
            cfinetune::FinetuneError::AdapterDim => "adapter_dim",
            cfinetune::FinetuneError::NoMatch { pattern }
                if f.adapter_targets.contains(pattern) =>
            {
                "adapter_targets"
            }
            cfinetune::FinetuneError::NoMatch { pattern } if f.freeze.contains(pattern) => "freeze",
            _ => "lora_targets",
        };
        config
            .error_at(
                &["finetune", field],
                ConfigErrorKind::Invalid,
                format!("cannot fine-tune `{}`: {e}", config.model),
                "here",
                Some(
                    "parameter names are printed by `kiln compile SPEC --model M --emit ir`".into(),
                ),
            )
            .into()
    })
}

/// Checks a checkpoint's parameters against a model, leaving its optimizer state out: a
/// fine-tuning run's checkpoints hold optimizer state for the trained parameters only, which the
/// whole-model check would call partly missing. (Resuming still needs every piece of state the
/// training program has: `train::restore` reports what is absent.)
pub fn check_params_compatible(
    ckpt: &Checkpoint,
    path: &Path,
    signature: &crate::checkpoint::ModelSignature,
) -> Result<(), CheckpointError> {
    let params_only = Checkpoint {
        meta: ckpt.meta.clone(),
        params: ckpt.params.clone(),
        opt_m: TensorMap::new(),
        opt_v: TensorMap::new(),
    };
    params_only.check_compatible(path, signature)
}

/// Trainable and total parameter elements of a bound program (optimizer state left out).
pub fn trainable_params(graph: &Graph) -> (u64, u64) {
    cfinetune::param_elements(graph)
}

/// Loads every base parameter of `backend` (all but LoRA weights, which keep their init) from
/// the checkpoint at `from`, which must have been trained with the same tokenizer.
pub fn load_base(
    backend: &mut dyn Backend,
    from: &Path,
    tokenizer: &Tokenizer,
) -> Result<(), RunError> {
    let ckpt = load_checkpoint(from)?;
    if ckpt.meta.tokenizer != tokenizer.to_json() {
        let found = Tokenizer::from_json(&ckpt.meta.tokenizer)
            .map(|t| format!("{} with {} tokens", t.kind_name(), t.vocab_size()))
            .unwrap_or_else(|_| "unreadable".to_string());
        return Err(RunError::TokenizerMismatch {
            expected: format!(
                "{} with {} tokens",
                tokenizer.kind_name(),
                tokenizer.vocab_size()
            ),
            found,
        });
    }
    for (name, shape) in backend.state_shapes() {
        let StateName::Param(p) = StateName::parse(&name) else {
            continue;
        };
        if is_lora_param(p) {
            continue;
        }
        let t = ckpt
            .params
            .get(p)
            .ok_or_else(|| CheckpointError::MissingTensor {
                tensor: p.to_string(),
                shape: Shape(shape.clone()),
            })?;
        backend
            .set_state(&name, t)
            .map_err(RunError::backend("model"))?;
    }
    Ok(())
}

/// Writes the LoRA weights of `backend` alone to `path` (with `meta` describing the run).
/// Returns how many tensors were written.
pub fn save_adapter(
    backend: &dyn Backend,
    meta: CheckpointMeta,
    path: &Path,
) -> Result<usize, RunError> {
    let mut params = TensorMap::new();
    for (name, _) in backend.state_shapes() {
        if let StateName::Param(p) = StateName::parse(&name) {
            if is_lora_param(p) {
                let t = backend
                    .get_state(&name)
                    .map_err(RunError::backend("model"))?;
                params.insert(p.to_string(), t);
            }
        }
    }
    let n = params.len();
    save_checkpoint(
        path,
        &Checkpoint {
            meta,
            params,
            opt_m: TensorMap::new(),
            opt_v: TensorMap::new(),
        },
    )?;
    Ok(n)
}

/// Loads an adapter file's LoRA weights into `backend`; every LoRA weight of the program must be
/// in the file, and the file must hold nothing else.
pub fn load_adapter(backend: &mut dyn Backend, path: &Path) -> Result<(), RunError> {
    let ckpt = load_checkpoint(path)?;
    let mut wanted = 0;
    for (name, shape) in backend.state_shapes() {
        let StateName::Param(p) = StateName::parse(&name) else {
            continue;
        };
        if !is_lora_param(p) {
            continue;
        }
        wanted += 1;
        let t = ckpt
            .params
            .get(p)
            .ok_or_else(|| CheckpointError::MissingTensor {
                tensor: p.to_string(),
                shape: Shape(shape.clone()),
            })?;
        backend
            .set_state(&name, t)
            .map_err(RunError::backend("model"))?;
    }
    if let Some((name, t)) = ckpt.params.iter().find(|(n, _)| !is_lora_param(n)) {
        return Err(CheckpointError::ExtraTensor {
            tensor: name.clone(),
            shape: Shape(t.shape.clone()),
        }
        .into());
    }
    if wanted != ckpt.params.len() {
        return Err(RunError::Usage {
            message: format!(
                "`{}` holds {} LoRA weights but the program has {wanted}",
                path.display(),
                ckpt.params.len()
            ),
            help: Some("use the run config the adapter was trained with".to_string()),
        });
    }
    Ok(())
}

/// What `kiln finetune` did.
#[derive(Debug, Clone)]
pub struct FinetuneSummary {
    pub train: crate::train::TrainSummary,
    /// Parameter elements the step trains, and all of the model's.
    pub trainable: u64,
    pub total: u64,
    /// The LoRA weights alone (absent without LoRA).
    pub adapter: Option<std::path::PathBuf>,
}

/// Writes the LoRA weights of the checkpoint at `ckpt_path` alone to `adapter_path`; returns how
/// many tensors it wrote.
pub fn adapter_from_checkpoint(ckpt_path: &Path, adapter_path: &Path) -> Result<usize, RunError> {
    let ckpt = load_checkpoint(ckpt_path)?;
    let params: TensorMap = ckpt
        .params
        .iter()
        .filter(|(n, _)| is_lora_param(n))
        .map(|(n, t)| (n.clone(), t.clone()))
        .collect();
    let n = params.len();
    save_checkpoint(
        adapter_path,
        &Checkpoint {
            meta: ckpt.meta,
            params,
            opt_m: TensorMap::new(),
            opt_v: TensorMap::new(),
        },
    )?;
    Ok(n)
}

/// Runs a fine-tuning run: `kiln train` of a config with a `finetune` section that names its base
/// checkpoint, then the LoRA weights on their own in [`ADAPTER_FILE`].
pub fn finetune(
    config: &RunConfig,
    opts: crate::train::TrainOptions,
) -> Result<FinetuneSummary, RunError> {
    let Some(f) = &config.finetune else {
        return Err(config
            .error_at(
                &["finetune"],
                ConfigErrorKind::Invalid,
                "`kiln finetune` needs a `finetune` section",
                "absent",
                Some("add `finetune: {from: CHECKPOINT}` (see docs/run-config.md)".to_string()),
            )
            .into());
    };
    if f.from.is_none() {
        return Err(config
            .error_at(
                &["finetune", "from"],
                ConfigErrorKind::Invalid,
                "`kiln finetune` needs the base checkpoint in `finetune.from`",
                "absent",
                None,
            )
            .into());
    }
    let spec = crate::session::load_spec(config)?;
    let compiled = crate::session::compile_run(config, &spec, crate::session::Programs::All)?;
    let (trainable, total) = match &compiled.train {
        Some(p) => trainable_params(&p.graph.bind(&p.bindings).map_err(|e| RunError::Compile {
            program: "train",
            source: Box::new(e),
        })?),
        None => (0, 0),
    };
    let train = crate::train::train(config, opts)?;
    let adds_weights = !(f.lora_targets.is_empty() && f.adapter_targets.is_empty());
    let adapter = match (&train.checkpoint, !adds_weights) {
        (Some(ckpt), false) => {
            let path = train.out_dir.join(ADAPTER_FILE);
            adapter_from_checkpoint(ckpt, &path)?;
            Some(path)
        }
        _ => None,
    };
    Ok(FinetuneSummary {
        train,
        trainable,
        total,
        adapter,
    })
}
