//! `kiln import`, `kiln export` and `kiln logits`: a spec model meets a Hugging Face folder.
//!
//! The spec (its text, model name and hyperparameter overrides) says which parameters exist and
//! their shapes; the spec's `hf` item (as a [`Family`]) says where each lives in the file. An imported
//! checkpoint is an ordinary Kiln checkpoint that also carries the spec text, the overrides read
//! from `config.json` and `config.json` itself, so that an export writes back exactly what was
//! read. A checkpoint written by `kiln train` exports too: its run config names the spec and
//! overrides, and `config.json` is generated from the bound hyperparameters.
//!
//! The reference computation compiles the model with an objective that computes the loss as
//! `transformers` does from `labels` (shift for decoder-only models, -100 ignored), takes its
//! gradient with the compiler's autodiff, and runs it on the chosen executor.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use kiln_compiler::autodiff;
use kiln_compiler::ir::{bind_shape, Bindings, Dim, Op};
use kiln_compiler::sema::{self, Instance, Request, Value, Workspace};

use super::mapping::{Family, HfHyper, LossKind, MappingError};
use super::{read_checkpoint, HfConfig, HfError, IntTensor, TensorFile};
use crate::backend::InputTensor;
use crate::checkpoint::{load_checkpoint, spec_hash, Checkpoint, CheckpointMeta, TensorMap};
use crate::config::HyperValue;
use crate::generate::checkpoint_config;
use crate::session::{make_backend, Executor, Program, RunError};
use crate::train::SPEC_TEXT_KEY;

/// Checkpoint metadata (`extra.`) keys of an imported checkpoint.
pub const HF_CONFIG_KEY: &str = "hf.config";
pub const HF_SET_KEY: &str = "hf.set";

/// Objectives that compute the loss exactly as `transformers` does from `labels`. They are added
/// to the workspace of the reference computation only (never to a user's spec).
pub const HF_OBJECTIVES: &str = "\
# The loss of transformers' *ForCausalLM: labels shifted inside, -100 ignored.
objective hf_causal_lm() {
    input input_ids: i32[batch, seq]
    input labels: i32[batch, seq]
    logits = model(input_ids)
    return cross_entropy(logits[:, :-1], labels[:, 1:], ignore = -100)
}

# The loss of transformers' *ForConditionalGeneration: no shift, -100 ignored, no padding in
# the source (every row is `src` tokens long).
objective hf_seq2seq() {
    input input_ids: i32[batch, src]
    input decoder_input_ids: i32[batch, tgt]
    input labels: i32[batch, tgt]
    logits = model(input_ids, full([batch], 1, i32) + arange(src)[-1:], decoder_input_ids)
    return cross_entropy(logits, labels, ignore = -100)
}
";

/// A spec model: what import, export and the reference computation instantiate.
#[derive(Debug, Clone)]
pub struct SpecModel {
    pub spec_path: String,
    pub spec_text: String,
    /// A named config or model of the spec.
    pub model: String,
    /// Hyperparameter overrides on top of `model`.
    pub overrides: Vec<(String, HfHyper)>,
}

fn sema_value(v: &HfHyper) -> Value {
    match v {
        HfHyper::Int(n) => Value::Int(Dim::c(*n)),
        HfHyper::Float(x) => Value::Float(*x),
        HfHyper::Str(s) => sema::parse_value(s),
    }
}

fn usage(message: impl Into<String>, help: Option<&str>) -> RunError {
    RunError::Usage {
        message: message.into(),
        help: help.map(str::to_string),
    }
}

/// Why an import, export or reference run failed.
#[derive(Debug, thiserror::Error, miette::Diagnostic)]
pub enum HfRunError {
    #[error(transparent)]
    #[diagnostic(transparent)]
    Run(#[from] RunError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Files(#[from] HfError),
    #[error(transparent)]
    #[diagnostic(transparent)]
    Mapping(#[from] MappingError),
}

impl From<crate::checkpoint::CheckpointError> for HfRunError {
    fn from(e: crate::checkpoint::CheckpointError) -> Self {
        HfRunError::Run(RunError::from(e))
    }
}

impl SpecModel {
    /// A workspace with the spec and (with `objectives`) the reference objectives.
    fn workspace(&self, objectives: bool) -> Result<Workspace, RunError> {
        let mut ws = Workspace::new();
        ws.add_file(&self.spec_path, &self.spec_text);
        if objectives {
            ws.add_file("<hf objectives>", HF_OBJECTIVES);
        }
        let errors: Vec<_> = ws
            .load_diagnostics
            .iter()
            .filter(|d| d.is_error())
            .cloned()
            .collect();
        if !errors.is_empty() {
            return Err(RunError::Spec {
                path: PathBuf::from(&self.spec_path),
                count: errors.len(),
                diagnostics: errors,
            });
        }
        Ok(ws)
    }

    /// Instantiates the model, with `objective` around it when given.
    pub fn instantiate(&self, objective: Option<&str>) -> Result<Instance, RunError> {
        let ws = self.workspace(objective.is_some())?;
        let req = Request {
            config: self.model.clone(),
            overrides: self
                .overrides
                .iter()
                .map(|(k, v)| (k.clone(), sema_value(v)))
                .collect(),
            objective: objective.map(|o| (o.to_string(), vec![])),
            training: false,
        };
        ws.instantiate(&req).map_err(|ds| RunError::Spec {
            path: PathBuf::from(&self.spec_path),
            count: ds.len().max(1),
            diagnostics: ds,
        })
    }

    /// The model (without objective) and the Hugging Face layout its spec declares for it
    /// (the `hf` item whose target is the model block).
    pub fn family(&self) -> Result<(Instance, Family), RunError> {
        let inst = self.instantiate(None)?;
        let ws = self.workspace(false)?;
        match ws.hf_layout(&inst.model) {
            None => Err(usage(
                format!(
                    "model `{}` of `{}` declares no Hugging Face layout",
                    inst.model, self.spec_path
                ),
                Some(
                    "add an `hf NAME for MODEL { ... }` item to the spec (see docs/language.md, \"Hugging Face layouts\")",
                ),
            )),
            Some(Err(ds)) => Err(RunError::Spec {
                path: PathBuf::from(&self.spec_path),
                count: ds.len().max(1),
                diagnostics: ds,
            }),
            Some(Ok(layout)) => {
                let family = Family::from_layout(&layout, &inst.hparams);
                Ok((inst, family))
            }
        }
    }

    /// The model's parameters and their shapes.
    pub fn param_shapes(instance: &Instance) -> Result<BTreeMap<String, Vec<usize>>, RunError> {
        let g = &instance.graph;
        let mut out = BTreeMap::new();
        for p in g.params() {
            if let Op::Param { name, shape, .. } = g.node(p).op() {
                let s = bind_shape(shape, &Bindings::new()).map_err(|e| RunError::Compile {
                    program: "model",
                    source: Box::new(e),
                })?;
                out.insert(name.clone(), s);
            }
        }
        Ok(out)
    }

    /// The spec model a checkpoint was imported as or trained with.
    pub fn of_checkpoint(path: &Path, ckpt: &Checkpoint) -> Result<SpecModel, RunError> {
        let spec_text = ckpt.meta.extra.get(SPEC_TEXT_KEY).cloned();
        if let Some(set) = ckpt.meta.extra.get(HF_SET_KEY) {
            let overrides = parse_set(set).map_err(|e| {
                usage(
                    format!("`{}`: metadata `{HF_SET_KEY}`: {e}", path.display()),
                    None,
                )
            })?;
            let spec_text = spec_text
                .ok_or_else(|| usage(format!("`{}` carries no spec text", path.display()), None))?;
            return Ok(SpecModel {
                spec_path: ckpt.meta.spec_path.clone(),
                spec_text,
                model: ckpt.meta.model.clone(),
                overrides,
            });
        }
        let config = checkpoint_config(path, ckpt)?;
        let spec_text = match spec_text {
            Some(t) => t,
            None => std::fs::read_to_string(&config.spec).map_err(|e| RunError::Io {
                path: config.spec.clone(),
                reason: e.to_string(),
            })?,
        };
        let overrides = config
            .set
            .iter()
            .map(|(k, v)| {
                let h = match v {
                    HyperValue::Int(n) => HfHyper::Int(*n),
                    HyperValue::Float(x) => HfHyper::Float(*x),
                    HyperValue::Bool(b) => HfHyper::Str(b.to_string()),
                    HyperValue::Str(s) => HfHyper::Str(s.clone()),
                };
                (k.clone(), h)
            })
            .collect();
        Ok(SpecModel {
            spec_path: config.spec.display().to_string(),
            spec_text,
            model: config.model.clone(),
            overrides,
        })
    }
}

fn set_json(overrides: &[(String, HfHyper)]) -> String {
    let mut m = serde_json::Map::new();
    for (k, v) in overrides {
        let j = match v {
            HfHyper::Int(n) => serde_json::json!(n),
            HfHyper::Float(x) => serde_json::json!({ "float": x }),
            HfHyper::Str(s) => serde_json::json!(s),
        };
        m.insert(k.clone(), j);
    }
    serde_json::Value::Object(m).to_string()
}

fn parse_set(text: &str) -> Result<Vec<(String, HfHyper)>, String> {
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let mut out = Vec::new();
    for (k, v) in obj {
        let h = if let Some(n) = v.as_i64() {
            HfHyper::Int(n)
        } else if let Some(x) = v.get("float").and_then(serde_json::Value::as_f64) {
            HfHyper::Float(x)
        } else if let Some(s) = v.as_str() {
            HfHyper::Str(s.to_string())
        } else {
            return Err(format!("`{k}` is {v}"));
        };
        out.push((k.clone(), h));
    }
    Ok(out)
}

/// Reads a Hugging Face folder as `model` of the spec at `spec_path`: `config.json` sets the
/// hyperparameters, the spec's `hf` layout places the tensors. Every missing, extra or mis-shaped
/// tensor is reported.
pub fn import(spec_path: &Path, model: &str, hf_dir: &Path) -> Result<Checkpoint, HfRunError> {
    let spec_text = std::fs::read_to_string(spec_path).map_err(|e| RunError::Io {
        path: spec_path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let hf = read_checkpoint(hf_dir)?;
    // The family comes from the model block `model` names, instantiated as it is first.
    let plain = SpecModel {
        spec_path: spec_path.display().to_string(),
        spec_text: spec_text.clone(),
        model: model.to_string(),
        overrides: vec![],
    };
    let (_, family) = plain.family()?;
    let overrides = family.hyperparameters(&hf.config)?;
    let spec = SpecModel { overrides, ..plain };
    let inst = spec.instantiate(None)?;
    let shapes = SpecModel::param_shapes(&inst)?;
    let params = family.from_hf(&hf.tensors, &shapes)?;
    let config_text =
        serde_json::to_string(&hf.config.value).map_err(|e| usage(e.to_string(), None))?;
    let extra = BTreeMap::from([
        (SPEC_TEXT_KEY.to_string(), spec.spec_text.clone()),
        (HF_SET_KEY.to_string(), set_json(&spec.overrides)),
        (HF_CONFIG_KEY.to_string(), config_text),
    ]);
    Ok(Checkpoint {
        meta: CheckpointMeta {
            spec_path: spec.spec_path.clone(),
            spec_hash: spec_hash(&spec.spec_text),
            model: spec.model.clone(),
            step: 0,
            seed: 0,
            samplers: BTreeMap::new(),
            tokenizer: String::new(),
            config_yaml: String::new(),
            extra,
        },
        params,
        opt_m: TensorMap::new(),
        opt_v: TensorMap::new(),
    })
}

/// Hyperparameter values of an instance, as `config.json` values.
fn bound_hparams(inst: &Instance) -> Vec<(String, HfHyper)> {
    inst.hparams
        .iter()
        .filter_map(|(k, v)| {
            let h = match v {
                Value::Int(d) => HfHyper::Int(d.as_const()?),
                Value::Float(x) => HfHyper::Float(*x),
                Value::Str(s) => HfHyper::Str(s.clone()),
                _ => return None,
            };
            Some((k.clone(), h))
        })
        .collect()
}

/// The Hugging Face `config.json` and tensors of a checkpoint: the imported `config.json` when
/// there is one, else one generated from the spec's bound hyperparameters.
pub fn export(
    path: &Path,
    ckpt: &Checkpoint,
) -> Result<(serde_json::Value, TensorMap), HfRunError> {
    let spec = SpecModel::of_checkpoint(path, ckpt)?;
    let (inst, family) = spec.family()?;
    let tensors = family.to_hf(&ckpt.params)?;
    let config = match ckpt.meta.extra.get(HF_CONFIG_KEY) {
        Some(text) => serde_json::from_str(text).map_err(|e| {
            usage(
                format!("`{}`: metadata `{HF_CONFIG_KEY}`: {e}", path.display()),
                None,
            )
        })?,
        None => family.config_json(&bound_hparams(&inst)),
    };
    // The config must describe the tensors: read it back through the same table.
    let cfg = HfConfig::from_value(Path::new("config.json"), config.clone())?;
    family.hyperparameters(&cfg)?;
    Ok((config, tensors))
}

/// Loads a checkpoint file and exports it (see [`export`]).
pub fn export_file(path: &Path) -> Result<(serde_json::Value, TensorMap), HfRunError> {
    let ckpt = load_checkpoint(path)?;
    export(path, &ckpt)
}

fn ints<'a>(io: &'a TensorFile, name: &str) -> Option<&'a IntTensor> {
    io.ints.get(name)
}

fn to_i32(name: &str, t: &IntTensor) -> Result<InputTensor, RunError> {
    let data = t
        .data
        .iter()
        .map(|&x| i32::try_from(x))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| usage(format!("`{name}` holds a value outside i32"), None))?;
    Ok(InputTensor::I32 {
        shape: t.shape.clone(),
        data,
    })
}

/// What [`reference_outputs`] computes.
#[derive(Debug, Clone)]
pub struct ReferenceOutputs {
    /// `logits`, with labels `loss`, with grads `grad.<hf name>`.
    pub tensors: TensorMap,
}

/// Logits, loss and gradients of `spec` with `params` on the batch of `io`, as `transformers`
/// would compute them (Hugging Face tensor names for gradients).
pub fn reference_outputs(
    spec: &SpecModel,
    params: &TensorMap,
    io: &TensorFile,
    grads: bool,
    executor: Executor,
) -> Result<ReferenceOutputs, HfRunError> {
    let (_, family) = spec.family()?;
    let input_ids = ints(io, "input_ids")
        .ok_or_else(|| usage("the input file has no integer tensor `input_ids`", None))?;
    if input_ids.shape.len() != 2 {
        return Err(HfRunError::Run(usage(
            format!("`input_ids` must be [batch, seq], is {:?}", input_ids.shape),
            None,
        )));
    }
    let (b, s) = (input_ids.shape[0], input_ids.shape[1]);
    let labels = ints(io, "labels");
    if grads && labels.is_none() {
        return Err(HfRunError::Run(usage(
            "`--grads` needs `labels` in the input file",
            Some("gradients are of the loss, which is computed from `labels`"),
        )));
    }
    let mut inputs = BTreeMap::new();
    inputs.insert("input_ids".to_string(), to_i32("input_ids", input_ids)?);
    let (objective, bindings, label_shape) = match family.loss {
        LossKind::CausalShifted => (
            "hf_causal_lm",
            Bindings::new()
                .with("batch", b as i64)
                .with("seq", s as i64),
            vec![b, s],
        ),
        LossKind::Seq2Seq => {
            let dec = ints(io, "decoder_input_ids").ok_or_else(|| {
                usage(
                    "an encoder-decoder model needs `decoder_input_ids` in the input file",
                    None,
                )
            })?;
            if dec.shape.len() != 2 || dec.shape[0] != b {
                return Err(HfRunError::Run(usage(
                    format!("`decoder_input_ids` must be [{b}, tgt], is {:?}", dec.shape),
                    None,
                )));
            }
            inputs.insert(
                "decoder_input_ids".to_string(),
                to_i32("decoder_input_ids", dec)?,
            );
            let t = dec.shape[1];
            (
                "hf_seq2seq",
                Bindings::new()
                    .with("batch", b as i64)
                    .with("src", s as i64)
                    .with("tgt", t as i64),
                vec![b, t],
            )
        }
    };
    match labels {
        Some(l) => {
            if l.shape != label_shape {
                return Err(HfRunError::Run(usage(
                    format!("`labels` must be {label_shape:?}, is {:?}", l.shape),
                    None,
                )));
            }
            inputs.insert("labels".to_string(), to_i32("labels", l)?);
        }
        None => {
            // The loss needs labels to be computed at all; zeros are valid ids and the loss is
            // then not reported.
            let n = label_shape.iter().product();
            inputs.insert(
                "labels".to_string(),
                InputTensor::I32 {
                    shape: label_shape.clone(),
                    data: vec![0; n],
                },
            );
        }
    }
    let inst = spec.instantiate(Some(objective))?;
    let loss = inst
        .loss
        .ok_or_else(|| usage("the reference objective has no loss", None))?;
    let graph = if grads {
        autodiff::grad(&inst.graph, loss)
            .map_err(|e| RunError::Compile {
                program: "gradient",
                source: Box::new(e),
            })?
            .graph
    } else {
        inst.graph
    };
    graph.bind(&bindings).map_err(|e| RunError::Compile {
        program: "reference",
        source: Box::new(e),
    })?;
    let program = Program { graph, bindings };
    let mut backend = make_backend(executor, &program, 0, None)?;
    let backend_err = |source| RunError::Backend {
        program: "reference",
        source,
    };
    for (name, t) in params {
        backend.set_state(name, t).map_err(backend_err)?;
    }
    let out = backend
        .run(&inputs, Default::default())
        .map_err(backend_err)?;
    let mut tensors = TensorMap::new();
    let logits = out
        .get("logits")
        .ok_or_else(|| usage("the program has no `logits` output", None))?;
    tensors.insert("logits".to_string(), logits.clone());
    if labels.is_some() {
        if let Some(l) = out.get("loss") {
            tensors.insert("loss".to_string(), l.clone());
        }
    }
    if grads {
        let kiln_grads: TensorMap = out
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("grad.").map(|p| (p.to_string(), v.clone())))
            .collect();
        // A parameter the loss does not reach has no gradient output; it is zero.
        let mut all = TensorMap::new();
        for (name, p) in params {
            let g =
                kiln_grads
                    .get(name)
                    .cloned()
                    .unwrap_or_else(|| crate::checkpoint::HostTensor {
                        shape: p.shape.clone(),
                        data: vec![0.0; p.data.len()],
                    });
            all.insert(name.clone(), g);
        }
        let hf = family.to_hf(&all)?;
        for (k, v) in hf {
            tensors.insert(format!("grad.{k}"), v);
        }
    }
    Ok(ReferenceOutputs { tensors })
}
